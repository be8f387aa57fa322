"""Defects of the scanpy face found by the twelfth hostile pass, each pinned by the case that
showed it: a dominant-factor column outliving its fit, a fit of a deleted ``.raw`` written
with ``.var``'s genes, a dot plot reading genes where they are not, a UMAP colour checked
after the work, and a projection's message pointing away from the AnnData at hand."""

from __future__ import annotations

import re
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import vbsnmf
from vbsnmf import pl, tl

TINY_FIT = {"max_iter": 10, "n_threads": 1}


def _quiet_nmf(adata, n_components, **kwargs):
    """tl.nmf at a few iterations, where not converging is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, n_components, **TINY_FIT, **kwargs)


@pytest.fixture(scope="module")
def fitted():
    """200 cells and 300 genes of pbmc_tiny with a K=3 fit under the default key."""
    adata = vbsnmf.datasets.pbmc_tiny()[:200, :300].copy()
    _quiet_nmf(adata, 3)
    return adata


@pytest.fixture(scope="module")
def raw_fitted():
    """A fit of ``.raw`` (300 genes) whose X holds 150 of them."""
    adata = vbsnmf.datasets.pbmc_tiny()[:200, :300].copy()
    adata.raw = adata.copy()
    adata = adata[:, 50:200].copy()
    _quiet_nmf(adata, 3, use_raw=True)
    return adata


# -- 1: the dominant-factor column of a replaced fit -----------------------------------------
def test_refit_drops_the_dominant_factor_column_umap_wrote(fitted):
    """pl.umap wrote .obs['nmf_dominant_factor'] and scanpy its colours; a new fit under
    'nmf' with another K dropped every other entry of the old fit but left these, naming
    factors the new fit does not have."""
    adata = fitted.copy()
    pl.umap(adata, show=False)
    assert "nmf_dominant_factor" in adata.obs
    assert "nmf_dominant_factor_colors" in adata.uns
    _quiet_nmf(adata, 2)
    assert "nmf_dominant_factor" not in adata.obs
    assert "nmf_dominant_factor_colors" not in adata.uns


def test_refit_keeps_a_dominant_factor_column_umap_did_not_write(fitted):
    """Only the column pl.umap wrote for the fit goes with it: another tool's column of
    the same name, which the fit's record does not name, is kept with its colours."""
    adata = fitted.copy()
    theirs = pd.Categorical(np.where(np.arange(adata.n_obs) % 2, "a", "b"))
    adata.obs["nmf_dominant_factor"] = theirs
    adata.uns["nmf_dominant_factor_colors"] = ["#000000", "#ffffff"]
    _quiet_nmf(adata, 2)
    assert list(adata.obs["nmf_dominant_factor"]) == list(theirs)
    assert list(adata.uns["nmf_dominant_factor_colors"]) == ["#000000", "#ffffff"]


# -- 2: write_nmf_tables of a fit of a deleted .raw -----------------------------------------
def test_write_nmf_tables_refuses_a_raw_fit_whose_raw_is_gone(raw_fitted, tmp_path):
    """With .raw deleted after a use_raw fit, write_nmf_tables wrote X's 150 genes as the
    loadings' rows (zeros, the fitted raw-only genes dropped) without a word, while
    tl.top_genes refused the same AnnData. It is refused as they refuse it, before any
    file is written."""
    adata = raw_fitted.copy()
    del adata.raw
    message = "the fit 'nmf' was of adata.raw, which adata no longer has"
    with pytest.raises(ValueError, match=re.escape(message)):
        tl.top_genes(adata)
    with pytest.raises(ValueError, match=re.escape(message)):
        vbsnmf.io.write_nmf_tables(adata, tmp_path)
    assert list(tmp_path.iterdir()) == []


# -- 3: a dot plot of a fit of .raw read from X ---------------------------------------------
def test_top_genes_plot_of_a_raw_fit_with_use_raw_false_names_the_genes_x_lacks(raw_fitted):
    """pl.top_genes(..., use_raw=False) on a fit of .raw whose genes are not all in X
    failed in scanpy with a bare KeyError listing np.str_ names. It is refused before
    drawing: the fit's genes are .raw's, X lacks some of them, drop use_raw=False."""
    adata = raw_fitted.copy()
    adata.obs["grp"] = pd.Categorical((np.arange(adata.n_obs) % 3).astype(str))
    listed = set(tl.top_genes(adata, 5)["gene"])  # pl.top_genes' n_genes
    absent = listed - set(adata.var_names)
    assert absent  # the case: some top genes are .raw's only
    with pytest.raises(ValueError, match=r"adata\.raw's") as refused:
        pl.top_genes(adata, "grp", show=False, use_raw=False)
    message = str(refused.value)
    assert f"lacks {len(absent)} of its top genes" in message
    assert "drop use_raw=False" in message
    assert any(gene in message for gene in absent)
    assert not plt.get_fignums()  # refused before drawing


# -- 4: pl.umap's colour checked after the work ---------------------------------------------
@pytest.fixture
def neighbour_calls(monkeypatch):
    """The calls of sc.pp.neighbors during a test."""
    calls = []
    real = sc.pp.neighbors

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sc.pp, "neighbors", counted)
    return calls


def test_umap_refuses_an_unknown_color_before_the_graph_and_leaves_a_view(fitted, neighbour_calls):
    """pl.umap(color=<no .obs column, no gene>) built the neighbour graph and the UMAP
    before scanpy refused the colour, and on a view the failed call made the view its own
    AnnData (its .uns['neighbors'] popped). The colour is checked first, naming it."""
    view = fitted[:100]
    with pytest.raises(KeyError, match="no_such_column"):
        pl.umap(view, color="no_such_column", show=False)
    assert not neighbour_calls
    assert view.is_view


def test_umap_refuses_a_gene_of_x_missing_from_raw_as_scanpy_looks_there(
    raw_fitted, neighbour_calls
):
    """With .raw, scanpy colours by .raw's genes: a gene of X that .raw lacks failed after
    the graph and the UMAP. It is refused first, saying where scanpy looks."""
    adata = raw_fitted.copy()
    adata.raw = adata.raw.to_adata()[:, 100:].copy()  # .raw now lacks X's first 50 genes
    gene = adata.var_names[0]
    assert gene not in adata.raw.var_names
    with pytest.raises(KeyError, match=re.escape(f"{gene!r} in adata.var_names")):
        pl.umap(adata, color=gene, show=False)
    assert not neighbour_calls


# -- 5: a projection of the reference onto itself -------------------------------------------
@pytest.mark.parametrize(
    "read",
    [
        lambda adata, folder: tl.top_genes(adata, key="self"),
        lambda adata, folder: pl.elbo(adata, key="self", show=False),
        lambda adata, folder: vbsnmf.io.write_nmf_tables(adata, folder, key="self"),
    ],
    ids=["tl.top_genes", "pl.elbo", "io.write_nmf_tables"],
)
def test_a_self_projection_points_to_the_reference_key(fitted, tmp_path, read):
    """After tl.project(R, R, key_added='self'), as tl.project's docstring advises, reading
    the fit under 'self' said "pass the reference AnnData (tl.project's adata_ref)
    instead", though R is that AnnData. It says to pass key='nmf', the projection's
    reference_key, under which R holds the reference's fit."""
    reference = fitted.copy()
    tl.project(reference, reference, key_added="self", n_threads=1)
    with pytest.raises(KeyError, match=re.escape("pass key='nmf' instead")):
        read(reference, tmp_path)


def test_a_projection_without_the_reference_fit_still_points_to_the_reference(fitted):
    """New cells that do not hold the reference's fit are still told to pass the
    reference AnnData (no key of theirs would do)."""
    new = fitted[:50].copy()
    del new.uns["nmf"]
    tl.project(new, fitted, key_added="mapped", n_threads=1)
    with pytest.raises(KeyError, match=re.escape("pass the reference AnnData")):
        tl.top_genes(new, key="mapped")
