"""The fortieth hostile review of the Dask path on tiny and edge shapes: 1 x 1, one cell,
one gene, 2 x 2, a single nonzero, empty cells and genes, a chunk of zeros, chunks of one
cell, chunks larger than the array, uneven chunks, K beyond the shape, float32, and dense,
CSR and COO chunks, against the same counts in memory, on an in-process cluster (the
``client`` fixture of conftest)."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf

pytestmark = pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")

FIT = {"max_iter": 6, "tol": 0.0, "random_state": 0}
SVI = {"solver": "svi", "n_epochs": 3, "random_state": 0}


def _counts(n_cells: int = 12, n_genes: int = 7) -> np.ndarray:
    return np.random.default_rng(0).poisson(1.0, (n_cells, n_genes)).astype(np.float64)


def _single_nonzero() -> np.ndarray:
    counts = np.zeros((6, 5))
    counts[4, 2] = 2.0
    return counts


def _empty_cells_and_genes() -> np.ndarray:
    counts = _counts()
    counts[::4] = 0  # cells 0, 4, 8
    counts[:, ::3] = 0  # genes 0, 3, 6
    return counts


def _zero_chunk() -> np.ndarray:
    return np.vstack([_counts(6), np.zeros((4, 7)), _counts(6)])


def _chunked(counts: np.ndarray, chunks, block_format) -> da.Array:
    """``counts`` as a dask array of ``chunks``, each block dense or made ``block_format``."""
    X = da.from_array(counts, chunks=chunks)
    return X if block_format is None else X.map_blocks(block_format, dtype=X.dtype)


def _never_computed(shape, chunks) -> da.Array:
    """A dask array whose blocks raise when computed: what is refused before any compute."""

    def computed(block):
        raise RuntimeError("a chunk was computed")

    return da.zeros(shape, chunks=chunks).map_blocks(computed, dtype=np.float64)


# (counts, chunks, K, block format): each shape once, the formats spread over them
CASES = {
    "1x1-coo": (np.array([[3.0]]), (1, 1), 1, sp.coo_matrix),
    "one-cell-csr": (_counts(1), (1, 3), 1, sp.csr_matrix),
    "one-gene-dense": (_counts()[:, :1], (5, -1), 1, None),
    "2x2-K2-coo": (_counts(2, 2), (1, -1), 2, sp.coo_matrix),
    "single-nonzero-csr": (_single_nonzero(), (4, 2), 2, sp.csr_matrix),
    "empty-cells-and-genes-dense": (_empty_cells_and_genes(), (3, -1), 2, None),
    "zero-chunk-coo": (_zero_chunk(), ((6, 4, 6), -1), 2, sp.coo_matrix),
    "one-cell-chunks-csr": (_counts(), (1, -1), 2, sp.csr_matrix),
    "chunks-beyond-the-array-dense": (_counts(), (100, 100), 2, None),
    "uneven-coo": (_counts(), ((5, 1, 6), (3, 4)), 2, sp.coo_matrix),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_batch_vb_of_a_tiny_dask_x_is_the_fit_in_memory(client, case):
    """Guard (passes on both): batch VB of each tiny or odd dask X is `VBNMF.fit` of the
    same counts in memory (same random_state): finite, the same iterations, ELBO trace and
    loadings to 1e-12 relative (as tests/test_hostile_thirtysecond_dask.py compares)."""
    counts, chunks, n_components, block_format = CASES[case]
    in_memory = vbsnmf.VBNMF(n_components, **FIT).fit(counts)
    on_dask = vbsnmf.VBNMF(n_components, **FIT).fit(_chunked(counts, chunks, block_format))
    assert np.isfinite(on_dask.components_).all() and np.isfinite(on_dask.elbo_trace_).all()
    np.testing.assert_array_equal(on_dask.elbo_iter_, in_memory.elbo_iter_)
    np.testing.assert_allclose(on_dask.elbo_trace_, in_memory.elbo_trace_, rtol=1e-12)
    np.testing.assert_allclose(on_dask.components_, in_memory.components_, rtol=1e-12)
    np.testing.assert_allclose(
        np.asarray(on_dask.cell_shape_), in_memory.cell_shape_, rtol=1e-12, atol=0
    )


@pytest.mark.filterwarnings("ignore:4 of the 16 cells have no counts")
@pytest.mark.parametrize("case", ["1x1-coo", "one-gene-dense", "zero-chunk-coo"])
def test_svi_and_tl_nmf_of_a_tiny_dask_x_are_the_fits_in_memory(client, case):
    """Guard (passes on both): SVI's cells form (`VBNMF(solver="svi")` and `fit_svi_dask`)
    and `tl.nmf` of a tiny dask X give the fits of the same counts in memory."""
    counts, chunks, n_components, block_format = CASES[case]
    X = _chunked(counts, chunks, block_format)
    in_memory = vbsnmf.VBNMF(n_components, **SVI).fit(counts)
    on_dask = vbsnmf.VBNMF(n_components, **SVI).fit(X)
    np.testing.assert_allclose(on_dask.elbo_trace_, in_memory.elbo_trace_, rtol=1e-12)
    np.testing.assert_allclose(on_dask.components_, in_memory.components_, rtol=1e-12)
    svi_options = {key: value for key, value in SVI.items() if key != "solver"}
    result = vbsnmf.fit_svi_dask(X, n_components, **svi_options)
    np.testing.assert_allclose(result.elbo_trace, in_memory.elbo_trace_, rtol=1e-12)
    lazy, eager = ad.AnnData(X), ad.AnnData(sp.csr_matrix(counts))
    vbsnmf.tl.nmf(lazy, n_components, **FIT)
    vbsnmf.tl.nmf(eager, n_components, **FIT)
    np.testing.assert_allclose(lazy.varm["NMF"], eager.varm["NMF"], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(lazy.obsm["X_nmf"]), eager.obsm["X_nmf"], rtol=1e-12)


@pytest.mark.parametrize("block_format", [None, sp.coo_matrix], ids=["dense", "coo"])
def test_a_float32_fit_of_a_tiny_dask_x_is_the_float32_fit_in_memory(client, block_format):
    """Guard (passes on both): ``dtype=float32`` on float32 chunks of one cell is the
    float32 fit in memory up to float32's order of sums (1e-5 relative), finite and of
    float32 loadings."""
    counts = _counts(3, 4).astype(np.float32)
    options = {**FIT, "dtype": np.float32}
    in_memory = vbsnmf.VBNMF(2, **options).fit(counts)
    on_dask = vbsnmf.VBNMF(2, **options).fit(_chunked(counts, (1, -1), block_format))
    assert on_dask.components_.dtype == np.float32
    assert np.isfinite(on_dask.components_).all()
    np.testing.assert_allclose(on_dask.elbo_trace_, in_memory.elbo_trace_, rtol=1e-5)
    np.testing.assert_allclose(on_dask.components_, in_memory.components_, rtol=1e-5)


def test_an_all_zero_dask_x_is_fitted_by_vbnmf_and_refused_by_tl_nmf_as_in_memory(client):
    """Guard (passes on both): a dask X of zeros in COO chunks is fitted by `VBNMF` as in
    memory (finite, the same loadings), and refused by `tl.nmf` as in memory."""
    zeros = np.zeros((4, 3))
    X = _chunked(zeros, (2, -1), sp.coo_matrix)
    in_memory = vbsnmf.VBNMF(2, **FIT).fit(zeros)
    on_dask = vbsnmf.VBNMF(2, **FIT).fit(X)
    assert np.isfinite(on_dask.components_).all()
    np.testing.assert_allclose(on_dask.components_, in_memory.components_, rtol=1e-12)
    with pytest.raises(ValueError, match="holds no nonzero count") as lazy:
        vbsnmf.tl.nmf(ad.AnnData(X), 2)
    with pytest.raises(ValueError, match="holds no nonzero count") as eager:
        vbsnmf.tl.nmf(ad.AnnData(zeros), 2)
    assert str(lazy.value) == str(eager.value)


FITS = {
    "VBNMF.fit": lambda X, k: vbsnmf.VBNMF(k).fit(X),
    "VBNMF-svi.fit": lambda X, k: vbsnmf.VBNMF(k, solver="svi").fit(X),
    "fit_dask": lambda X, k: vbsnmf.fit_dask(X, k),
    "fit_svi_dask": lambda X, k: vbsnmf.fit_svi_dask(X, k),
    "tl.nmf": lambda X, k: vbsnmf.tl.nmf(ad.AnnData(X), k),
}


@pytest.mark.parametrize("name", list(FITS))
def test_k_beyond_a_tiny_dask_x_is_refused_before_any_chunk_is_computed(client, name):
    """K above min(shape) of a 2 x 7 dask X is the ValueError the same shape gets in
    memory at every entry point, before a chunk is computed: `tl.nmf` checked the counts
    of every chunk on the cluster first (a large X read through before K was refused)."""
    with pytest.raises(ValueError, match=r"n_components=3 is out of range.*shape \(2, 7\)"):
        FITS[name](_never_computed((2, 7), (1, -1)), 3)


@pytest.mark.parametrize("shape", [(3, 0), (0, 3)])
@pytest.mark.parametrize("name", list(FITS))
def test_an_empty_dask_x_is_refused_by_its_shape_before_any_chunk_is_computed(client, name, shape):
    """`tl.nmf` of a dask X without cells or genes checked its chunks on the cluster
    first: the refusal came from a worker (which logged a traceback), named a chunk's
    shape ((1, 0) for a 3 x 0 X in chunks of one cell), and a chunk that fails to compute
    hid it. Now every entry point refuses it by the whole shape, as in memory, before any
    chunk is computed."""
    axis = "sample" if shape[0] == 0 else "feature"
    with pytest.raises(ValueError, match=rf"0 {axis}\(s\) \(shape=\({shape[0]}, {shape[1]}\)\)"):
        FITS[name](_never_computed(shape, (1, 1)), 1)
    if name == "tl.nmf":  # the message the same AnnData in memory gets
        with pytest.raises(ValueError) as eager:
            vbsnmf.tl.nmf(ad.AnnData(np.zeros(shape)), 1)
        with pytest.raises(ValueError) as lazy:
            vbsnmf.tl.nmf(ad.AnnData(da.zeros(shape, chunks=(1, 1))), 1)
        assert str(lazy.value) == str(eager.value)


def test_tl_project_of_a_dask_x_without_cells_is_refused_before_it_is_computed(client):
    """`tl.project` of a dask X of no cells computed every chunk into memory before the
    in-memory check refused it (a chunk that fails to compute hid the refusal); now it is
    the in-memory message, before any chunk is computed."""
    reference = ad.AnnData(_counts())
    vbsnmf.tl.nmf(reference, 2, **FIT)
    lazy = ad.AnnData(_never_computed((0, 7), (1, -1)))
    eager = ad.AnnData(np.zeros((0, 7)))
    lazy.var_names = eager.var_names = reference.var_names
    with pytest.raises(ValueError, match=r"0 sample\(s\) \(shape=\(0, 7\)\)") as refused:
        vbsnmf.tl.project(lazy, reference)
    with pytest.raises(ValueError) as expected:
        vbsnmf.tl.project(eager, reference)
    assert str(refused.value) == str(expected.value)
