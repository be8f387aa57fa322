"""Leftovers the tenth hostile pass noted and left: messages on projections that said to fit
again or that no fit was there, `tl.select_k` repeating the empty-cells warning of each
inner fit, and a foreign ``.var['<key>_total_counts']`` that `tl.nmf` overwrote."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import pl, tl

TINY_FIT = {"max_iter": 5, "n_threads": 1}


def _quiet(function, *args, **kwargs):
    """A tool at a few iterations, where not converging is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return function(*args, **kwargs)


@pytest.fixture
def projected(pbmc_tiny):
    reference, new = pbmc_tiny[:800].copy(), pbmc_tiny[800:].copy()
    _quiet(tl.nmf, reference, 3, **TINY_FIT)
    tl.project(new, reference, n_threads=1)
    new.obsm["X_umap"] = np.random.default_rng(0).normal(size=(new.n_obs, 2))
    return reference, new


def test_damaged_projection_says_to_project_again(projected):
    """pl.factors and pl.umap on projected cells whose factors were edited said "which no
    vbsnmf fit writes; fit again": the cells hold no fit to redo, tl.project wrote them."""
    _, new = projected
    new.obsm["X_nmf_usage"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"vbsnmf\.tl\.project never writes; project again"):
        pl.factors(new, basis="umap", show=False)
    with pytest.raises(ValueError, match=r"vbsnmf\.tl\.project never writes; project again"):
        pl.umap(new, show=False)
    new.obsm["X_nmf_usage"] = new.obsm["X_nmf_usage"][:, 1:]  # finite, a column short
    with pytest.raises(ValueError, match=r"shape .*tl\.project never writes; project again"):
        pl.umap(new, show=False)
    del new.obsm["X_nmf"]
    with pytest.raises(KeyError, match=r"'X_nmf', which vbsnmf\.tl\.project writes"):
        pl.factors(new, basis="umap", values="factors", show=False)


def test_a_damaged_fit_still_says_to_fit_again(pbmc_tiny):
    _quiet(tl.nmf, pbmc_tiny, 3, **TINY_FIT)
    pbmc_tiny.obsm["X_umap"] = np.zeros((pbmc_tiny.n_obs, 2))
    pbmc_tiny.obsm["X_nmf_usage"][0, 0] = np.inf
    with pytest.raises(ValueError, match=r"vbsnmf\.tl\.nmf never writes; fit again"):
        pl.factors(pbmc_tiny, basis="umap", show=False)


def test_gene_side_tools_on_a_projection_point_to_the_reference(projected, tmp_path):
    """tl.top_genes and io.write_nmf_tables on projected cells said "holds no NMF fit; run
    vbsnmf.tl.nmf first", which would fit the new cells anew: the gene side is the
    reference's, and the message says to pass it."""
    reference, new = projected
    with pytest.raises(KeyError, match=r"projection .*adata_ref"):
        tl.top_genes(new)
    with pytest.raises(KeyError, match=r"projection .*adata_ref"):
        vbsnmf.io.write_nmf_tables(new, tmp_path / "tables")
    assert not (tmp_path / "tables").exists()
    assert len(tl.top_genes(reference, n_genes=3)) > 0  # the reference answers


def test_select_k_warns_once_about_cells_without_counts(pbmc_tiny):
    """select_k fits every K twice (all the counts and a train half): the empty-cells
    warning of tl.nmf came once per fit, 2 x len(ks) times, and the train half's count
    (more cells empty after the split) is not the data's. It now comes once, with the
    data's count."""
    counts = sp.csr_matrix(pbmc_tiny.X, dtype=np.float64)
    counts = sp.vstack([counts, sp.csr_matrix((3, counts.shape[1]))]).tocsr()
    import anndata as ad

    adata = ad.AnnData(counts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tl.select_k(adata, [2, 3], random_state=0, **TINY_FIT)
    empty = [str(w.message) for w in caught if "no counts in the fitted genes" in str(w.message)]
    assert empty == [
        f"3 of the {adata.n_obs} cells have no counts in the fitted genes; "
        "their factors are the prior's (the same for each): drop them with "
        "sc.pp.filter_cells(adata, min_counts=1)"
    ]
    assert issubclass(caught[0].category, UserWarning)


def test_tl_nmf_warns_about_empty_cells_at_the_callers_line(pbmc_tiny):
    keep = np.ones(pbmc_tiny.n_obs)
    keep[:2] = 0
    pbmc_tiny.X = sp.csr_matrix(sp.diags(keep) @ pbmc_tiny.X)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tl.nmf(pbmc_tiny, 2, **TINY_FIT)
    (empty,) = [w for w in caught if "no counts in the fitted genes" in str(w.message)]
    assert empty.filename == __file__
    assert isinstance(empty.message, UserWarning)


def test_foreign_total_counts_column_is_not_overwritten(pbmc_tiny):
    """tl.nmf wrote .var['<key>_total_counts'] over a column it had not written (the user's
    own, or another tool's): every other entry of a fit was protected by check_key_added."""
    mine = pd.Series(np.arange(pbmc_tiny.n_vars, dtype=float), index=pbmc_tiny.var_names)
    pbmc_tiny.var["nmf_total_counts"] = mine
    with pytest.raises(ValueError, match=r"\.var\['nmf_total_counts'\].*from elsewhere"):
        tl.nmf(pbmc_tiny, 2, **TINY_FIT)
    pd.testing.assert_series_equal(pbmc_tiny.var["nmf_total_counts"], mine, check_names=False)
    assert "nmf" not in pbmc_tiny.uns and "X_nmf" not in pbmc_tiny.obsm
    del pbmc_tiny.var["nmf_total_counts"]
    _quiet(tl.nmf, pbmc_tiny, 2, **TINY_FIT)
    _quiet(tl.nmf, pbmc_tiny, 3, **TINY_FIT)  # a fit replaces its own column
    totals = np.asarray(pbmc_tiny.X.sum(axis=0)).ravel()
    np.testing.assert_allclose(pbmc_tiny.var["nmf_total_counts"].to_numpy(), totals)


def test_foreign_total_counts_column_of_raw_is_not_overwritten(pbmc_tiny):
    pbmc_tiny.raw = pbmc_tiny.copy()
    pbmc_tiny.raw.var["mine_total_counts"] = 1.0
    with pytest.raises(ValueError, match=r"\.var\['mine_total_counts'\]"):
        tl.nmf(pbmc_tiny, 2, use_raw=True, key_added="mine", **TINY_FIT)


@pytest.mark.parametrize(("solver", "max_iter"), [("mu", 30), ("gd", 20)])
def test_classic_transform_warns_for_the_rows_that_did_not_settle(solver, max_iter):
    """classic.NMF.transform stops each row on its own loss, but its ConvergenceWarning
    judged the batch's total loss: whether a row was reported depended on the rows beside
    it. A batch now warns exactly when one of its rows, transformed alone, would, and
    counts them."""
    rng = np.random.default_rng(0)
    X = rng.poisson(rng.gamma(0.5, 2, (40, 3)) @ rng.gamma(0.5, 2, (3, 25))).astype(float)
    model = vbsnmf.classic.NMF(3, solver=solver, random_state=0, max_iter=500).fit(X)
    model.set_params(max_iter=max_iter)

    def warned(rows):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            transformed = model.transform(rows)
        messages = [
            str(w.message) for w in caught if issubclass(w.category, vbsnmf.ConvergenceWarning)
        ]
        return transformed, messages

    alone = [warned(X[i : i + 1]) for i in range(X.shape[0])]
    n_unsettled = sum(bool(messages) for _, messages in alone)
    assert 0 < n_unsettled < X.shape[0]  # the case that tells the rules apart
    batch, messages = warned(X)
    assert messages == [
        f"NMF stopped after max_iter={max_iter} iterations for {n_unsettled} of {X.shape[0]} "
        "rows before the relative loss change fell below tol=0.0001; raise max_iter or tol."
    ]
    np.testing.assert_allclose(batch, np.vstack([W for W, _ in alone]), rtol=1e-10, atol=1e-12)
