"""Thirty-third hostile pass: projecting new cells onto a fit (`VBNMF.transform`,
`tl.project`, classic `NMF.transform`).

One defect: `tl.project`'s errors from the key and record checks it shares with the other
tools named "adata", neither of its two AnnData arguments. The other tests are guards
(they pass on the base code too): the projection against a numpy coordinate ascent, its
independence of the other cells and of how the counts are stored, and backed new cells.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.special import digamma
from simulated import poisson_gamma_array

import vbsnmf
from vbsnmf import tl
from vbsnmf.classic import NMF
from vbsnmf.tl._stored import variational_params

N_CELLS, N_GENES, K = 80, 24, 3
GENES = [f"g{i}" for i in range(N_GENES)]


def _counts(seed: int = 0, n_cells: int = N_CELLS) -> np.ndarray:
    return poisson_gamma_array(n_cells=n_cells, n_genes=N_GENES, k=K, seed=seed)


def _anndata(counts, genes=GENES) -> ad.AnnData:
    return ad.AnnData(counts, var=pd.DataFrame(index=list(genes)))


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.fixture(scope="module", params=["gamma", "hierarchical"])
def reference(request):
    adata = _anndata(sp.csr_matrix(_counts()))
    _quiet(tl.nmf, adata, K, prior=request.param, random_state=0, dtype=np.float64, n_threads=1)
    return adata


# -- 1: tl.project's errors name adata_new and adata_ref, not "adata" -------------------------
def test_a_key_clash_in_the_new_cells_names_adata_new(reference):
    """Before: "would overwrite .obsm['X_nmf'], which adata holds from elsewhere ...; choose
    another key_added, or delete it from adata first": project has no argument "adata"."""
    new = _anndata(_counts(1, 20))
    new.obsm["X_nmf"] = np.zeros((20, 2))  # another tool's array
    with pytest.raises(ValueError, match="which adata_new holds from elsewhere") as raised:
        tl.project(new, reference, n_threads=1)
    assert "delete it from adata_new first" in str(raised.value)
    # another fit in the new cells under the key: its record named in adata_new
    _quiet(tl.nmf, new, 2, key_added="own", random_state=0, max_iter=5, n_threads=1)
    with pytest.raises(ValueError, match=r"of the fit adata_new\.uns\['own'\]"):
        tl.project(new, reference, key_added="own", n_threads=1)


def test_a_missing_reference_fit_names_adata_ref(reference):
    """Before: "adata.uns['other'] holds no NMF fit; run vbsnmf.tl.nmf(adata, ...)" for the
    reference, as if the new cells were to be fitted."""
    with pytest.raises(KeyError) as raised:
        tl.project(_anndata(_counts(1, 10)), reference, key="other", n_threads=1)
    message = raised.value.args[0]
    assert message.startswith("adata_ref.uns['other'] holds no NMF fit"), message
    assert "vbsnmf.tl.nmf(adata_ref, key_added='other')" in message, message
    assert "one adata_ref holds: 'nmf'" in message, message


def test_a_reference_holding_only_a_projection_is_named_adata_ref(reference):
    """Before: "adata holds a projection onto a reference fit (adata.uns['nmf_projection']
    ...)" of the adata_ref given."""
    projected = tl.project(_anndata(_counts(2, 15)), reference, copy=True, n_threads=1)
    with pytest.raises(KeyError) as raised:
        tl.project(_anndata(_counts(1, 10)), projected, n_threads=1)
    message = raised.value.args[0]
    assert message.startswith("adata_ref holds a projection onto a reference fit"), message
    assert "adata_ref.uns['nmf_projection']" in message, message


# -- 2: guards --------------------------------------------------------------------------------
def _numpy_projection(counts: np.ndarray, params: dict, genes: np.ndarray) -> np.ndarray:
    """Coordinate ascent of one cell's q(z) (and q(xi) under the learned prior) with the
    reference's q(w) of ``genes`` held fixed, run to its fixed point."""
    gene_shape, gene_rate = params["gene_shape"][genes], np.asarray(params["gene_rate"])
    # per gene and factor under the learned prior, one per factor under the fixed one
    gene_rate = gene_rate[genes] if gene_rate.ndim == 2 else gene_rate[None, :]
    mean_w = (gene_shape / gene_rate).sum(axis=0)
    log_w = digamma(gene_shape) - np.log(gene_rate)
    learned = "cell_factor_shape" in params
    if learned:
        factor_shape = np.asarray(params["cell_factor_shape"], dtype=np.float64)
        prior_shape = float(params["cell_scale_prior_shape"])
        prior_mean = float(params["cell_scale_prior_mean"])
        start = 1.0
    else:
        prior_shape_z, prior_rate_z = float(params["prior_shape"]), float(params["prior_rate"])
        start = prior_shape_z
    result = []
    for x in counts:
        shape = np.full(K, start + 1.0)
        if learned:
            scale_shape = prior_shape + factor_shape.sum()
            scale_rate = scale_shape / prior_mean
        for _ in range(5000):
            rate = (scale_shape / scale_rate if learned else prior_rate_z) + mean_w
            weights = np.exp(digamma(shape) - np.log(rate) + log_w)
            statistic = (x[:, None] * weights / weights.sum(axis=1, keepdims=True)).sum(axis=0)
            shape = (factor_shape if learned else prior_shape_z) + statistic
            if learned:
                scale_rate = prior_shape / prior_mean + (shape / rate).sum()
        rate = (scale_shape / scale_rate if learned else prior_rate_z) + mean_w
        result.append(shape / rate)
    return np.array(result)


def test_projection_with_genes_missing_reordered_and_extra_matches_numpy(reference):
    """A guard: new cells holding 15 of the reference's genes in another order, one gene
    the reference lacks, and a cell whose counts all lie in that gene, projected at tol=0
    equal a numpy coordinate ascent over the shared genes (both priors)."""
    rng = np.random.default_rng(5)
    shared = rng.permutation(N_GENES)[:15]
    counts = np.hstack([rng.poisson(3.0, (6, 15)), rng.poisson(2.0, (6, 1)) + 1.0])
    counts[5, :15] = 0
    new = _anndata(counts, [GENES[i] for i in shared] + ["not_in_reference"])
    with warnings.catch_warnings(record=True) as caught:  # tol=0: every cell runs max_iter
        warnings.simplefilter("always")
        projected = tl.project(new, reference, copy=True, tol=0, max_iter=3000, n_threads=1)
    assert any("1 of the 6 cells have no counts" in str(w.message) for w in caught)
    expected = _numpy_projection(
        counts[:, :15], variational_params(reference, "nmf", cells=False), shared
    )
    np.testing.assert_allclose(projected.obsm["X_nmf"], expected, rtol=1e-9)
    record = projected.uns["nmf_projection"]
    assert (record["n_genes_used"], record["n_genes_missing"]) == (15, N_GENES - 15)
    assert record["n_cells_without_counts"] == 1


def _stored_alike(counts: np.ndarray) -> dict:
    """The same counts in other forms: sparse formats, int64 and unsigned indices, a CSR
    with each count split over two unsorted entries, integers, float32."""
    coo = sp.coo_matrix(counts)
    rows, cols = np.r_[coo.row, coo.row], np.r_[coo.col, coo.col]
    halves = np.r_[coo.data - np.floor(coo.data / 2), np.floor(coo.data / 2)]
    order = np.lexsort((np.random.default_rng(0).random(rows.size), rows))
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=counts.shape[0]))]
    split = sp.csr_matrix((halves[order], cols[order], indptr), shape=counts.shape)
    assert not split.has_canonical_format
    int64 = sp.coo_array(
        (coo.data, (coo.row.astype(np.int64), coo.col.astype(np.int64))), shape=counts.shape
    )
    return {
        "csc": sp.csc_matrix(counts),
        "coo int64": int64,
        "split entries": split,
        "int64": counts.astype(np.int64),
        "float32": counts.astype(np.float32),
    }


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_transform_of_a_cell_depends_neither_on_its_batch_nor_on_its_storage(prior):
    """A guard: `VBNMF.transform` gives each cell the same factors alone, among others, in
    another order, and from every storage of the same counts (dask too)."""
    import dask.array as da

    counts = _counts()
    model = vbsnmf.VBNMF(n_components=K, prior=prior, random_state=0, n_threads=1, tol=1e-6)
    _quiet(model.fit, counts)
    together = model.transform(counts)
    for cell in (0, 7, 41):
        np.testing.assert_array_equal(model.transform(counts[cell : cell + 1])[0], together[cell])
    shuffled = np.random.default_rng(1).permutation(N_CELLS)
    np.testing.assert_array_equal(model.transform(counts[shuffled]), together[shuffled])
    for name, stored in _stored_alike(counts).items():
        np.testing.assert_array_equal(model.transform(stored), together, err_msg=name)
    chunked = da.from_array(counts, chunks=(30, 10)).map_blocks(sp.csr_matrix)
    np.testing.assert_array_equal(model.transform(chunked), together)


def test_project_of_backed_new_cells_equals_in_memory(reference, tmp_path):
    """A guard: new cells read backed (sparse and dense X), projected with copy=True, as a
    view with copy=True, and in place in 'r+' mode, get the factors of the same cells in
    memory; a view of them in place is refused naming copy=True."""
    counts = _counts(3, 30)
    in_memory = tl.project(_anndata(counts), reference, copy=True, n_threads=1).obsm["X_nmf"]
    for name, stored in (("sparse", sp.csr_matrix(counts)), ("dense", counts)):
        path = tmp_path / f"{name}.h5ad"
        _anndata(stored).write_h5ad(path)
        backed = ad.read_h5ad(path, backed="r")
        try:
            copied = tl.project(backed, reference, copy=True, n_threads=1)
            np.testing.assert_array_equal(copied.obsm["X_nmf"], in_memory)
            part = tl.project(backed[5:20], reference, copy=True, n_threads=1)
            np.testing.assert_array_equal(part.obsm["X_nmf"], in_memory[5:20])
            with pytest.raises(ValueError, match="pass copy=True"):
                tl.project(backed[5:20], reference, n_threads=1)
        finally:
            backed.file.close()
        writable = ad.read_h5ad(path, backed="r+")
        try:
            tl.project(writable, reference, n_threads=1)
            np.testing.assert_array_equal(writable.obsm["X_nmf"], in_memory)
        finally:
            writable.file.close()


def test_project_does_not_depend_on_gene_order_extra_genes_or_batch(reference):
    """A guard: the reference's cells projected with their genes reversed, with genes the
    reference lacks, or seven at a time get the same factors; each stays near
    its fitted ones here within 2 % of the largest (the docstring promises no more)."""
    counts = _counts()
    base = tl.project(_anndata(counts), reference, copy=True, n_threads=1).obsm["X_nmf"]
    reversed_genes = _anndata(counts[:, ::-1], GENES[::-1])
    reversed_genes = tl.project(reversed_genes, reference, copy=True, n_threads=1)
    np.testing.assert_array_equal(reversed_genes.obsm["X_nmf"], base)
    extra = np.hstack([counts, np.ones((N_CELLS, 2))])
    extra = tl.project(_anndata(extra, [*GENES, "x1", "x2"]), reference, copy=True, n_threads=1)
    np.testing.assert_array_equal(extra.obsm["X_nmf"], base)
    seven = tl.project(_anndata(counts[10:17]), reference, copy=True, n_threads=1)
    np.testing.assert_array_equal(seven.obsm["X_nmf"], base[10:17])
    fitted = reference.obsm["X_nmf"]
    assert np.abs(base - fitted).max() < 0.02 * fitted.max()


@pytest.mark.parametrize(("solver", "loss"), [("mu", "kullback-leibler"), ("hals", "frobenius")])
def test_classic_transform_rows_do_not_depend_on_their_batch(solver, loss):
    """A guard: classic `NMF.transform` gives a row the same W (to round-off) alone, among
    others and from a non-canonical CSR of the same values."""
    counts = _counts()
    model = NMF(n_components=K, solver=solver, loss=loss, random_state=0, max_iter=300)
    _quiet(model.fit, counts)
    together = _quiet(model.transform, counts)
    alone = _quiet(model.transform, counts[[4, 0, 2]])
    np.testing.assert_allclose(alone, together[[4, 0, 2]], rtol=1e-10, atol=1e-12)
    split = _stored_alike(counts)["split entries"]
    np.testing.assert_allclose(_quiet(model.transform, split), together, rtol=1e-10, atol=1e-12)
