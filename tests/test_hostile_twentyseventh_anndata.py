"""The twenty-seventh hostile pass over ``tl.nmf`` and the AnnData it writes: a classical fit
with ``epsilon`` and a ``factor_mask`` over W set every factor of a cell without counts to
epsilon, the factors the mask holds at zero too; a backed AnnData with ``solver="svi"`` and
a nonzeros form of SVI (which fits counts in memory, as batch VB does) was streamed into
it and refused with a TypeError about VBNMF's X; on a backed AnnData a K out of range was
refused only after a pass over the whole file; and genes whose index is named as the
column of total counts the fit adds were fitted, leaving an AnnData anndata cannot write
(the command line refused them before the fit); a K beyond the genes of ``mask_var`` was
refused naming "a matrix of shape (n, 4)", which the user never passed."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf.tl._nmf as nmf_module
from vbsnmf import tl


def _counts(n_cells: int = 40, n_genes: int = 12) -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    return sp.csr_matrix(rng.poisson(2.0, (n_cells, n_genes)).astype(np.float32))


@pytest.fixture
def backed(tmp_path):
    path = tmp_path / "cells.h5ad"
    ad.AnnData(_counts(60, 20)).write_h5ad(path)
    adata = ad.read_h5ad(path, backed="r")
    yield adata
    adata.file.close()


@pytest.mark.parametrize("as_dict", [True, False])
def test_a_classical_fits_empty_cell_keeps_the_factors_its_mask_holds_at_zero(as_dict):
    X = _counts().toarray()
    X[5] = 0  # a cell without counts
    adata = ad.AnnData(X)
    w_mask = np.ones((40, 3))
    w_mask[:, 2] = 0  # factor 2 held at zero in every cell
    w_mask[7, 0] = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tl.nmf(
            adata,
            3,
            solver="mu",
            epsilon=1e-3,
            factor_mask={"W": w_mask} if as_dict else w_mask,
            max_iter=20,
        )
    # the empty-cell warning says so too (added by the session, after the pass)
    (empty,) = [w for w in caught if "have no counts" in str(w.message)]
    assert "(entries factor_mask holds at zero stay zero)" in str(empty.message)
    W = adata.obsm["X_nmf"]
    assert np.all(W[w_mask == 0] == 0)
    # the unmasked factors of the empty cell are at the bound, as before
    np.testing.assert_array_equal(W[5], [1e-3, 1e-3, 0.0])
    assert np.all(W[w_mask == 1] >= 1e-3)


@pytest.mark.parametrize("form", ["nonzeros", "abe-shimamura"])
def test_a_backed_anndata_is_fitted_by_a_nonzeros_form_of_svi_in_memory(backed, form):
    settings = dict(solver="svi", svi_form=form, prior="gamma", n_epochs=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(backed, 3, **settings)
        memory = ad.AnnData(_counts(60, 20))
        tl.nmf(memory, 3, **settings)
    np.testing.assert_allclose(backed.obsm["X_nmf"], memory.obsm["X_nmf"])
    np.testing.assert_allclose(backed.varm["NMF"], memory.varm["NMF"])


def test_a_backed_anndatas_k_out_of_range_is_refused_before_the_file_is_read(backed, monkeypatch):
    def unread(*args, **kwargs):
        raise AssertionError("the file was read before K was checked")

    monkeypatch.setattr(nmf_module, "open_source", unread)
    with pytest.raises(ValueError, match="n_components=50 is out of range"):
        tl.nmf(backed, 50, solver="svi", n_epochs=1)


@pytest.mark.parametrize("use_raw", [False, True])
def test_genes_indexed_under_the_totals_column_name_are_refused_before_the_fit(tmp_path, use_raw):
    adata = ad.AnnData(_counts())
    if use_raw:
        adata.raw = adata.copy()
        adata.raw.var.index.name = "mine_total_counts"
    else:
        adata.var.index.name = "mine_total_counts"
    where = r"adata\.raw\.var" if use_raw else r"adata\.var"
    with pytest.raises(ValueError, match=rf"{where}'s index is named 'mine_total_counts'"):
        tl.nmf(adata, 2, key_added="mine", use_raw=use_raw, max_iter=3)
    assert "mine" not in adata.uns
    # under another key the fit adds another column, and the AnnData can be written
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 2, use_raw=use_raw, max_iter=3)
    adata.write_h5ad(tmp_path / "fitted.h5ad")
    assert "nmf" in ad.read_h5ad(tmp_path / "fitted.h5ad").uns


@pytest.mark.parametrize("solver", ["batch", "mu"])
def test_a_k_only_the_mask_var_puts_out_of_range_is_said_to_be_the_masks(solver):
    adata = ad.AnnData(_counts().toarray())
    mask = np.zeros(12, bool)
    mask[:4] = True
    with pytest.raises(ValueError, match=r"the cells x the 4 genes mask_var selects \(of 12\)"):
        tl.nmf(adata, 6, mask_var=mask, solver=solver)
    # beyond every gene the mask is not the reason: said as for any matrix
    with pytest.raises(ValueError, match=r"shape \(40, 4\)$"):
        tl.nmf(adata, 13, mask_var=mask, solver=solver)
