"""The twelfth hostile review's defects of the Dask path, each against an independent
computation (the same counts in memory, plain numpy) on an in-process cluster."""

from __future__ import annotations

import gc
import time

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from test_dask import local_client

import vbsnmf
from vbsnmf import tl

pytestmark = pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")

FAST = dict(max_iter=3, tol=0.0, random_state=0, n_threads=1)


@pytest.fixture(scope="module")
def client():
    """One in-process worker with one thread: quick to start, enough for every test here."""
    with local_client(1, processes=False) as dask_client:
        yield dask_client


def _counts(n_cells: int = 120, n_genes: int = 30, seed: int = 0) -> np.ndarray:
    counts = np.random.default_rng(seed).poisson(0.8, (n_cells, n_genes)).astype(np.float64)
    counts[:, 0] += 1  # no empty cell
    return counts


# -- 1: float16 chunks ----------------------------------------------------------------------
def test_nmf_sums_the_gene_totals_of_float16_chunks_in_float64(client):
    """tl.nmf summed each dask chunk in its own dtype: float16 rounded a gene's total of
    80,000 to 79,488 (and overflows above 65504), where the same counts in memory gave the
    exact totals. They are now numpy's float64 sums, as in memory."""
    counts = np.random.default_rng(0).poisson(3.0, (400, 12)).astype(np.float16)
    counts[:, 0] = 200  # total 80,000: above float16's largest value
    adata = ad.AnnData(da.from_array(counts, chunks=(100, -1)))
    tl.nmf(adata, 2, **FAST)
    expected = counts.astype(np.float64).sum(axis=0)
    np.testing.assert_array_equal(adata.var["nmf_total_counts"].to_numpy(), expected)


# -- 2: blocks that hold fewer cells than their chunk declares ------------------------------
def _drop_first_cell_of_third_chunk(block, block_info=None):
    return block[1:] if block_info[0]["chunk-location"][0] == 2 else block


def test_transform_and_project_refuse_a_block_of_fewer_cells_than_declared(client):
    """VBNMF.transform computed such an X and returned one row too few, every later cell
    on the row of the one after it; tl.project failed in anndata. Both now give the fit's
    error naming the chunk, and an honest X still gives the in-memory numbers."""
    counts = _counts()
    model = vbsnmf.VBNMF(3, **FAST).fit(counts)
    reference = ad.AnnData(counts.copy())
    tl.nmf(reference, 3, **FAST)
    honest = da.from_array(counts, chunks=(30, -1))
    lying = honest.map_blocks(_drop_first_cell_of_third_chunk, dtype=np.float64)
    declared = "chunk of cells starting at cell 60: the block is 29 x 30, its chunk declares"
    with pytest.raises(ValueError, match=declared):
        model.transform(lying)
    new = ad.AnnData(np.zeros(counts.shape))
    new.X = lying
    with pytest.raises(ValueError, match=declared):
        tl.project(new, reference, max_iter=3)
    np.testing.assert_array_equal(model.transform(honest), model.transform(counts))


# -- 3: a start whose gene side is a dask array ---------------------------------------------
@pytest.mark.parametrize(
    "options",
    [dict(prior="hierarchical"), dict(prior="gamma", accelerate=True)],
    ids=["learned", "gamma, accelerated"],
)
def test_a_start_with_a_lazy_gene_side_fits_as_in_memory(client, options):
    """The driver kept the start's gene side lazy: SQUAREM's Numba kernels failed to type a
    dask array (TypingError), and with max_iter=0 gene_shape_ was left a dask array. Now the
    gene side is computed on the client: the same trace as in memory, numpy attributes."""
    counts = sp.csr_matrix(_counts())
    options = {**FAST, **options}
    fitted = vbsnmf.VBNMF(3, **options).fit(counts)
    init = dict(
        cell_shape=fitted.cell_shape_,
        cell_rate=fitted.cell_rate_,
        gene_shape=da.from_array(fitted.gene_shape_, chunks=10),
        gene_rate=fitted.gene_rate_,
    )
    expected = vbsnmf.VBNMF(3, **options).fit(counts, init=init)
    lazy = da.from_array(counts, chunks=(50, -1))
    got = vbsnmf.VBNMF(3, **options).fit(lazy, init=init)
    np.testing.assert_allclose(got.elbo_trace_, expected.elbo_trace_, rtol=1e-9)
    unfitted = vbsnmf.VBNMF(3, **{**options, "max_iter": 0}).fit(lazy, init=init)
    assert type(unfitted.gene_shape_) is np.ndarray
    np.testing.assert_allclose(unfitted.gene_shape_, fitted.gene_shape_, rtol=1e-12)


# -- 4: a failed fit's futures ---------------------------------------------------------------
def _held(client) -> int:
    return sum(client.run(lambda dask_worker: len(dask_worker.data)).values())


def _settled_held(client, before: int) -> int:
    """What the worker holds once the event loop has dropped its last exception (distributed
    keeps the one that ended a gather for a turn of its loop): polled for a few seconds."""
    for _ in range(10):
        gc.collect()
        held = _held(client)
        if held <= before:
            return held
        time.sleep(0.5)
    return held


@pytest.mark.parametrize("solver", ["batch", "svi"])
def test_a_failed_fit_releases_its_chunks_on_the_cluster(client, solver):
    """A fit refused for a NaN in one chunk left the other chunks' counts held on the
    worker for as long as the client lived (the exception's traceback held the driver's
    frame, and with it the futures). Now the worker holds what it held before the fit."""
    counts = _counts(240)
    counts[200, 2] = np.nan  # in the last chunk
    before = _settled_held(client, 0)  # what earlier tests left, once released
    with pytest.raises(ValueError, match="NaN"):
        vbsnmf.VBNMF(3, solver=solver, **FAST).fit(da.from_array(counts, chunks=(30, -1)))
    assert _settled_held(client, before) <= before


# -- 5: SVI's NonCountWarning on Dask ----------------------------------------------------------
def test_svi_on_dask_warns_on_non_integer_values_as_in_memory(client):
    """SVI on a dask X fitted log-normalised values silently; the same values in memory,
    and batch VB on the same dask X, warn NonCountWarning. Now the same warning, attributed
    to the caller's line."""
    values = np.log1p(_counts())
    options = dict(n_epochs=2, batch_size=40, random_state=0, n_threads=1, max_iter=5)
    with pytest.warns(vbsnmf.NonCountWarning) as in_memory:
        vbsnmf.VBNMF(3, solver="svi", **options).fit(values)
    lazy = da.from_array(values, chunks=(40, -1))
    for fit in (
        lambda: vbsnmf.VBNMF(3, solver="svi", **options).fit(lazy),
        lambda: vbsnmf.fit_svi_dask(lazy, 3, **options),
    ):
        with pytest.warns(vbsnmf.NonCountWarning) as on_dask:
            fit()
        warned = [w for w in on_dask if issubclass(w.category, vbsnmf.NonCountWarning)]
        assert len(warned) == 1
        assert str(warned[0].message) == str(in_memory[0].message)
        assert warned[0].filename == __file__


# -- 6: warm_start with SVI on Dask ----------------------------------------------------------
def test_svi_warm_start_on_dask_is_refused_by_name(client, pbmc_tiny):
    """tl.nmf(solver='svi', warm_start=True) on a dask X said "init is not supported for
    solver='svi' on a dask X": the caller passed no init. The message now names warm_start
    and the ways on; the batch solver's warm start on the same X works, as it says."""
    adata = pbmc_tiny[:200].copy()
    adata.X = da.from_array(sp.csr_matrix(adata.X), chunks=(70, -1))
    options = dict(n_epochs=2, batch_size=64, random_state=0, n_threads=1)
    tl.nmf(adata, 3, solver="svi", **options)
    with pytest.raises(ValueError, match="warm_start") as caught:
        tl.nmf(adata, 3, solver="svi", warm_start=True, **options)
    assert "init" not in str(caught.value)
    assert "solver='batch'" in str(caught.value) and "compute" in str(caught.value)
    tl.nmf(adata, 3, solver="batch", warm_start=True, max_iter=2, n_threads=1)


# -- 7: svi_form advice on Dask --------------------------------------------------------------
@pytest.mark.parametrize(
    "fit",
    [
        lambda X: vbsnmf.VBNMF(3, solver="svi", svi_form="nonzeros", max_iter=2).fit(X),
        lambda X: vbsnmf.fit_svi_dask(X, 3, svi_form="nonzeros", max_iter=2),
    ],
    ids=["VBNMF", "fit_svi_dask"],
)
def test_svi_form_advice_on_dask_names_the_cells_form_only(client, fit):
    """Under the learned prior the answer was "use prior='gamma' or the cells form"; the
    first half only led to a second refusal (a dask X is fitted by the cells form). The
    answer is now that refusal, pointing to svi_form='cells'."""
    lazy = da.from_array(_counts(), chunks=(30, -1))
    with pytest.raises(ValueError, match="cells form") as caught:
        fit(lazy)
    assert "prior='gamma'" not in str(caught.value)
    assert "svi_form='cells'" in str(caught.value)


# -- 8: fit_dask on an AnnData in memory -----------------------------------------------------
def test_fit_dask_names_an_anndata_in_memory():
    """fit_dask(adata) said "expected a dask array or an AnnData with a dask X, got <class
    'numpy.ndarray'>": a type the caller never passed, and no word of the fit for counts in
    memory. It now says the AnnData's X is in memory and where such counts go."""
    adata = ad.AnnData(_counts(60, 20))
    with pytest.raises(TypeError, match="the AnnData's X is in memory") as caught:
        vbsnmf.fit_dask(adata, 3)
    assert "tl.nmf" in str(caught.value) and "VBNMF.fit" in str(caught.value)
    with pytest.raises(TypeError, match=r"counts in memory are fitted by VBNMF\.fit"):
        vbsnmf.fit_dask(_counts(60, 20), 3)


# -- 9: pydata sparse arrays -----------------------------------------------------------------
def test_pydata_sparse_arrays_are_refused_with_the_conversion_that_works(client):
    """pydata `sparse` chunks (and such an array in memory) got pydata's "Cannot convert a
    sparse array to dense automatically ... use the todense method". Now a TypeError
    naming the type and the conversion to scipy; that conversion fits as in memory."""
    sparse = pytest.importorskip("sparse")
    counts = _counts()
    # pydata sparse chunks made per block: slicing one COO (da.from_array of it) runs
    # sparse's Numba indexing, 3 s to load from its cache, 10 to 20 s to compile it
    lazy = da.from_array(counts, chunks=(40, -1)).map_blocks(sparse.COO.from_numpy)
    with pytest.raises(TypeError, match=r"pydata sparse array \(sparse\.") as on_dask:
        vbsnmf.fit_dask(lazy, 3, max_iter=2)
    assert "map_blocks(lambda b: b.tocsr())" in str(on_dask.value)
    assert "chunk of cells starting at cell" in str(on_dask.value)
    with pytest.raises(TypeError, match=r"X\.tocsr\(\) in memory"):
        vbsnmf.VBNMF(3, **FAST).fit(sparse.COO.from_numpy(counts))
    converted = vbsnmf.VBNMF(3, **FAST).fit(lazy.map_blocks(lambda b: b.tocsr()))
    expected = vbsnmf.VBNMF(3, **FAST).fit(counts)
    np.testing.assert_allclose(converted.elbo_trace_, expected.elbo_trace_, rtol=1e-9)
