"""Defects of the scanpy face found by the tenth hostile pass, each pinned by the case that
showed it: writing a backed AnnData, plotting a projection, keys that overwrote scanpy's
entries, cells fitted on the prior alone, a fit's missing entry."""

from __future__ import annotations

import re
import warnings

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

import vbsnmf
from vbsnmf import pl, tl

TINY_FIT = {"max_iter": 5, "n_threads": 1}


def _quiet_nmf(adata, n_components, **kwargs):
    """tl.nmf at a few iterations, where not converging is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, n_components, **TINY_FIT, **kwargs)


def test_write_result_refuses_a_view_of_a_backed_anndata(pbmc_tiny, tmp_path):
    """A view of a backed AnnData was written with the obs of its 100 cells and the X of
    the file's 1,107: an .h5ad that anndata cannot read. It is refused before anything is
    written, saying to read the view into memory, which writes."""
    pbmc_tiny.write_h5ad(tmp_path / "in.h5ad")
    backed = ad.read_h5ad(tmp_path / "in.h5ad", backed="r")
    view = backed[:100]
    with pytest.raises(ValueError, match=r"view of a backed AnnData.*\.to_memory\(\)"):
        vbsnmf.io.write_result(view, tmp_path / "out.h5ad")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.h5ad"]
    vbsnmf.io.write_result(view.to_memory(), tmp_path / "out.h5ad")
    written = ad.read_h5ad(tmp_path / "out.h5ad")
    assert written.shape == (100, pbmc_tiny.n_vars)
    np.testing.assert_array_equal(written.X.toarray(), pbmc_tiny.X[:100].toarray())
    backed.file.close()


def test_write_result_leaves_out_a_raw_deleted_from_a_backed_anndata(pbmc_tiny, tmp_path):
    """``del adata.raw`` on a backed AnnData (to save without it) failed with
    AttributeError: 'NoneType' object has no attribute 'var', as the file still holds it."""
    pbmc_tiny.raw = pbmc_tiny.copy()
    pbmc_tiny.write_h5ad(tmp_path / "in.h5ad")
    backed = ad.read_h5ad(tmp_path / "in.h5ad", backed="r")
    del backed.raw
    vbsnmf.io.write_result(backed, tmp_path / "out.h5ad")
    written = ad.read_h5ad(tmp_path / "out.h5ad")
    assert written.raw is None
    np.testing.assert_array_equal(written.X.toarray(), pbmc_tiny.X.toarray())
    backed.file.close()


def test_factor_plots_draw_a_projection(pbmc_tiny):
    """After tl.project the new cells hold their factors in the reference's space, but
    pl.factors and pl.umap read only a fit's record: KeyError "holds no NMF fit". They draw
    the projection, leaving out the reference's inactive factors, which the projection now
    records; pl.elbo, which needs the fit itself, says the AnnData holds a projection."""
    reference, new = pbmc_tiny[:800].copy(), pbmc_tiny[800:].copy()
    _quiet_nmf(reference, 3)
    reference.uns["nmf"]["active"] = np.array([True, False, True])
    tl.project(new, reference, n_threads=1)
    new.obsm["X_umap"] = np.random.default_rng(0).normal(size=(new.n_obs, 2))
    axes = pl.factors(new, basis="umap", show=False)
    assert [ax.get_title() for ax in axes] == ["factor 0", "factor 2"]
    pl.umap(new, show=False)
    assert list(new.obs["nmf_dominant_factor"].cat.categories) == ["factor 0", "factor 2"]
    np.testing.assert_array_equal(new.uns["nmf_projection"]["active"], [True, False, True])
    del new.uns["nmf_projection"]["active"]  # a projection that did not record them: all K
    assert len(pl.factors(new, basis="umap", show=False)) == 3
    with pytest.raises(KeyError, match=r"projection .*adata_ref"):
        pl.elbo(new, show=False)


def test_key_added_refuses_to_overwrite_entries_vbsnmf_did_not_write(pbmc_tiny):
    """tl.nmf(key_added="pca") replaced scanpy's .obsm['X_pca'] and .uns['pca'] silently,
    leaving .varm['PCs'] beside a record that was no longer PCA's; tl.project likewise.
    Both refuse, naming the entries, before anything is written; each tool still replaces
    its own result under the same key."""
    adata = pbmc_tiny
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=5)
    pca, variance = adata.obsm["X_pca"].copy(), adata.uns["pca"]["variance_ratio"].copy()
    message = re.escape(".obsm['X_pca'], .uns['pca']") + r".*choose another key_added"
    with pytest.raises(ValueError, match=message):
        tl.nmf(adata, 3, layer="counts", key_added="pca", **TINY_FIT)
    reference = pbmc_tiny[:300].copy()
    reference.X = reference.layers["counts"]
    _quiet_nmf(reference, 3)
    with pytest.raises(ValueError, match=re.escape(".obsm['X_pca']")):
        tl.project(adata, reference, layer="counts", key_added="pca", n_threads=1)
    np.testing.assert_array_equal(adata.obsm["X_pca"], pca)
    np.testing.assert_array_equal(adata.uns["pca"]["variance_ratio"], variance)
    assert "pca" not in adata.varm and "pca_projection" not in adata.uns
    for _ in range(2):  # a second run replaces the first
        _quiet_nmf(adata, 2, layer="counts", key_added="mine")
        tl.project(adata, reference, layer="counts", key_added="theirs", n_threads=1)
    assert adata.obsm["X_mine"].shape[1] == 2 and adata.obsm["X_theirs"].shape[1] == 3


def test_nmf_warns_of_cells_without_counts_in_the_fitted_genes(pbmc_tiny):
    """Cells with no counts in the fitted genes got the prior's usages (the same for each)
    without a word; tl.project warns of such cells. tl.nmf says how many and what to do."""
    counts = pbmc_tiny.X.tolil()
    counts[:5, :] = 0
    pbmc_tiny.X = counts.tocsr()
    with pytest.warns(UserWarning, match=r"5 of the 1107 cells have no counts in the fitted"):
        _quiet_nmf(pbmc_tiny, 2)
    usages = pbmc_tiny.obsm["X_nmf_usage"]
    np.testing.assert_allclose(usages[:5], np.broadcast_to(usages[0], (5, 2)))
    mask = np.zeros(pbmc_tiny.n_vars, dtype=bool)
    mask[:20] = True
    n_without = int(np.count_nonzero(sp.csr_matrix(pbmc_tiny.X)[:, mask].sum(axis=1) == 0))
    # sc.pp.filter_cells counts every gene: the warning gives a line over the masked genes
    hint = r"adata\.X\[:, mask\].*sc\.pp\.filter_cells counts every gene.*\(a wider mask_var\)"
    with pytest.warns(UserWarning, match=rf"{n_without} of the 1107 cells .*{hint}"):
        _quiet_nmf(pbmc_tiny, 2, mask_var=mask)


@pytest.mark.parametrize("where, name", [("obsm", "X_nmf"), ("varm", "NMF")])
def test_write_nmf_tables_names_a_missing_entry_and_writes_nothing(
    pbmc_tiny, tmp_path, where, name
):
    """A fit whose .obsm entry was dropped failed with anndata's bare KeyError: 'X_nmf'.
    The missing entry is named with what to do, as tl.top_genes does, before any table."""
    _quiet_nmf(pbmc_tiny, 2)
    del getattr(pbmc_tiny, where)[name]
    with pytest.raises(KeyError, match=rf"no \.{where}\['{name}'\].*Fit again"):
        vbsnmf.io.write_nmf_tables(pbmc_tiny, tmp_path)
    assert list(tmp_path.iterdir()) == []
