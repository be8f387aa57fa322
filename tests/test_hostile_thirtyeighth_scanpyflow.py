"""The thirty-eighth hostile pass over the scanpy workflow around ``tl.nmf``: scanpy's
``sc.pp.neighbors(adata, use_rep="X_nmf_sqrt_usage", key_added="nmf")`` (or ``sc.tl.umap``
under ``key_added="nmf"``) stores its own record in ``.uns['nmf']`` over the fit's; the
tools then said the key held "an entry no vbsnmf tool wrote", and a refit under the default
key called the fit's own arrays "held from elsewhere (not from an earlier vbsnmf.tl.nmf
under this key)"."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from vbsnmf import pl, tl


def _adata(n_cells: int = 80, n_genes: int = 24) -> ad.AnnData:
    counts = np.random.default_rng(0).poisson(1.5, (n_cells, n_genes)).astype(np.int32)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    return adata


@pytest.fixture(scope="module")
def fitted() -> ad.AnnData:
    """One fit under the default key, counts in ``.layers['counts']`` and log-normalised X
    as scanpy leaves it; each test works on a copy."""
    adata = _adata()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 3, layer="counts", max_iter=5)
    return adata


def _neighbors_record_over_the_fit(adata: ad.AnnData) -> None:
    """What ``sc.pp.neighbors(adata, use_rep="X_nmf_sqrt_usage", key_added="nmf")`` leaves
    (scanpy 1.11): its graph in ``.obsp`` and its record in ``.uns['nmf']``. Written here
    as scanpy writes it: its first run compiles UMAP's kernels (20 s)."""
    graph = sp.csr_matrix((adata.n_obs, adata.n_obs))
    adata.obsp["nmf_distances"], adata.obsp["nmf_connectivities"] = graph, graph.copy()
    adata.uns["nmf"] = {
        "connectivities_key": "nmf_connectivities",
        "distances_key": "nmf_distances",
        "params": {
            "n_neighbors": 15,
            "method": "umap",
            "random_state": 0,
            "metric": "euclidean",
            "use_rep": "X_nmf_sqrt_usage",
        },
    }


def _leiden_over_the_fit(adata: ad.AnnData) -> None:
    """``sc.tl.leiden(adata, key_added="nmf")`` itself, on a graph of the usages built by
    scikit-learn (as ``sc.pp.neighbors`` stores one, without its UMAP kernels): the
    clusters in ``.obs['nmf']``, its record in ``.uns['nmf']``."""
    from sklearn.neighbors import kneighbors_graph

    graph = kneighbors_graph(adata.obsm["X_nmf_sqrt_usage"], 5, include_self=False)
    adata.obsp["connectivities"] = ((graph + graph.T) > 0).astype(np.float64).tocsr()
    adata.obsp["distances"] = graph.tocsr()
    adata.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "distances_key": "distances",
        "params": {"n_neighbors": 5, "method": "umap"},
    }
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2, directed=False, key_added="nmf")
    assert set(adata.uns["nmf"]) == {"params"}


def test_a_fit_whose_record_scanpys_leiden_replaced_is_said_so(fitted):
    adata = fitted.copy()
    _leiden_over_the_fit(adata)
    with pytest.raises(KeyError) as refused:
        pl.factors(adata, basis="nmf_usage", show=False)
    message = str(refused.value)
    assert "sc.tl.leiden" in message and "was one of them given 'nmf'" in message
    with pytest.raises(ValueError, match=r"without their record: another tool stored"):
        tl.nmf(adata, 3, layer="counts", max_iter=2)


@pytest.mark.parametrize(
    "read",
    [
        lambda adata: tl.top_genes(adata),
        lambda adata: pl.elbo(adata, show=False),
        lambda adata: tl.project(adata[:10].copy(), adata, layer="counts", key_added="new"),
    ],
    ids=["top_genes", "pl.elbo", "project"],
)
def test_a_fit_whose_record_scanpys_neighbors_replaced_is_said_so(fitted, read):
    adata = fitted.copy()
    _neighbors_record_over_the_fit(adata)
    with pytest.raises(KeyError) as refused:
        read(adata)
    message = str(refused.value)
    assert "sc.pp.neighbors" in message and "was one of them given 'nmf'" in message
    assert "X_nmf_usage" in message  # the arrays whose record is gone


def test_a_refit_over_them_does_not_call_the_fits_arrays_from_elsewhere(fitted):
    adata = fitted.copy()
    _neighbors_record_over_the_fit(adata)
    neighbors = adata.uns["nmf"]
    with pytest.raises(ValueError) as refused:
        tl.nmf(adata, 3, layer="counts", max_iter=2)
    message = str(refused.value)
    assert "not from an earlier vbsnmf.tl.nmf" not in message
    assert "sc.pp.neighbors" in message and "was one of them given 'nmf'" in message
    assert adata.uns["nmf"] is neighbors  # scanpy's record kept


def test_a_fit_under_another_key_as_advised_goes_on(fitted):
    """A guard (passes on the base code too): the advice, a fit under another key_added,
    is taken beside scanpy's record."""
    adata = fitted.copy()
    _neighbors_record_over_the_fit(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 3, layer="counts", max_iter=2, key_added="nmf_counts")
    assert tl.top_genes(adata, key="nmf_counts").shape[0] > 0
    assert set(adata.uns["nmf"]) == {"connectivities_key", "distances_key", "params"}
