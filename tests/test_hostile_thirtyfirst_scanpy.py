"""The thirty-first hostile pass over the scanpy workflow around ``tl.nmf``: a
``warm_start`` whose ``mask_var`` left out genes the stored fit had fitted (the stored fit
over every gene, continued on the highly variable ones) was accepted, and the continued
fit's ELBO, over fewer genes' counts, was joined to the stored trace without a word (a
mask naming genes the stored fit never fitted was already refused)."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vbsnmf import pl, tl


def _adata(n_cells: int = 60, n_genes: int = 20) -> ad.AnnData:
    counts = np.random.default_rng(0).poisson(1.5, (n_cells, n_genes)).astype(np.int32)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    adata.var["highly_variable"] = np.arange(n_genes) < 12
    return adata


def _fit(adata, n_components: int = 3, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, n_components, max_iter=5, **kwargs)


@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
@pytest.mark.parametrize("stored_mask", [None, "wide"])
def test_a_warm_start_on_fewer_genes_than_the_stored_fit_is_refused(prior, stored_mask):
    adata = _adata()
    adata.var["wide"] = np.arange(adata.n_vars) < 16
    _fit(adata, prior=prior, mask_var=stored_mask)
    record = adata.uns["nmf"]
    trace, loadings = record["elbo_trace"].copy(), adata.varm["NMF"].copy()
    with pytest.raises(ValueError) as refused:
        _fit(adata, warm_start=True, mask_var="highly_variable")
    message = str(refused.value)
    left_out = 8 if stored_mask is None else 4
    assert f"mask_var leaves out {left_out} of the" in message
    assert "joined" in message
    if stored_mask is not None:
        assert "mask_var='wide'" in message
    # the stored fit is kept as it was
    assert adata.uns["nmf"] is record
    np.testing.assert_array_equal(adata.uns["nmf"]["elbo_trace"], trace)
    np.testing.assert_array_equal(adata.varm["NMF"], loadings)


def test_a_warm_start_on_the_stored_fits_mask_still_continues():
    """A guard (passes on the base code too): the same mask (by name, or as the boolean
    array it holds) continues the fit, its trace extended."""
    adata = _adata()
    _fit(adata, mask_var="highly_variable")
    n_stored = len(adata.uns["nmf"]["elbo_trace"])
    _fit(adata, warm_start=True, mask_var="highly_variable")
    _fit(adata, warm_start=True, mask_var=adata.var["highly_variable"].to_numpy())
    assert len(adata.uns["nmf"]["elbo_trace"]) > n_stored
    assert (adata.varm["NMF"][~adata.var["highly_variable"].to_numpy()] == 0).all()


def _grouped(matrix_type) -> ad.AnnData:
    adata = _adata(80, 30)
    adata.X = matrix_type(adata.X)
    adata.obs["group"] = pd.Categorical([str(i % 3) for i in range(adata.n_obs)])
    _fit(adata)
    return adata


@pytest.mark.parametrize("where", ["X", "layer", "raw"])
def test_top_genes_plot_of_a_sparse_array_names_it(where):
    adata = _grouped(sp.csr_matrix)
    kwds = {}
    if where == "X":
        adata.X = sp.csr_array(adata.X)
        named = "adata.X is a scipy sparse array (csr_array)"
    elif where == "layer":
        adata.layers["counts"] = sp.csc_array(adata.X)
        kwds["layer"] = "counts"
        named = "adata.layers['counts'] is a scipy sparse array (csc_array)"
    else:
        raw = adata.copy()
        raw.X = sp.csr_array(raw.X)
        adata.raw = raw
        if not isinstance(adata.raw.X, sp.sparray):
            pytest.skip("this anndata keeps .raw.X as a sparse matrix")
        named = "adata.raw.X is a scipy sparse array (csr_array)"
    with pytest.raises(ValueError, match=re.escape(named)) as refused:
        pl.top_genes(adata, "group", show=False, **kwds)
    assert "csr_matrix(" in str(refused.value)


def test_top_genes_plot_of_a_sparse_matrix_still_draws():
    """A guard (passes on the base code too): the same counts as a sparse matrix are
    drawn, one column per listed gene."""
    adata = _grouped(sp.csr_matrix)
    listed = tl.top_genes(adata, 5)
    dot_plot = pl.top_genes(adata, "group", return_fig=True)
    assert list(dot_plot.var_names) == list(listed["gene"])
