"""Defects of the scanpy face on real AnnData workflows found by the nineteenth hostile
pass: a re-projection keeping the dominant factors drawn from the cells it replaced, a
projection refused for per-cell arrays of the reference it never reads, and the record
``anndata.concat(uns_merge="same")`` leaves of AnnData fitted apart passing as one fit."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import vbsnmf
from vbsnmf import tl

TINY_FIT = {"max_iter": 10, "n_threads": 1}


def _quiet_nmf(adata, n_components, **kwargs):
    """tl.nmf at a few iterations, where not converging is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, n_components, **{**TINY_FIT, **kwargs})


def _quiet_project(adata_new, adata_ref, **kwargs):
    """tl.project at a few iterations per cell, where not converging is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return tl.project(adata_new, adata_ref, max_iter=20, n_threads=1, **kwargs)


@pytest.fixture(scope="module")
def cells():
    """300 cells and 300 genes of pbmc_tiny with unique names."""
    adata = vbsnmf.datasets.pbmc_tiny()[:300, :300].copy()
    adata.obs_names_make_unique()
    return adata


@pytest.fixture(scope="module")
def reference(cells):
    """A K=3 fit of the first 200 cells."""
    adata = cells[:200].copy()
    _quiet_nmf(adata, 3)
    return adata


def _draw_dominant_factors(adata, key: str = "nmf") -> None:
    """The column of dominant factors and its colours as vbsnmf.pl.umap writes them (without
    the minutes of a UMAP): "factor l" of each cell's largest usage."""
    usages = adata.obsm[f"X_{key}_usage"]
    names = [f"factor {factor}" for factor in range(usages.shape[1])]
    column = f"{key}_dominant_factor"
    adata.obs[column] = pd.Categorical.from_codes(usages.argmax(axis=1), categories=names)
    adata.uns[f"{column}_colors"] = ["#1f77b4", "#ff7f0e", "#2ca02c"][: len(names)]


def test_a_new_projection_drops_the_dominant_factors_drawn_from_the_last(cells, reference):
    new = cells[200:].copy()
    _quiet_project(new, reference)
    _draw_dominant_factors(new)
    other = cells[:200].copy()
    _quiet_nmf(other, 3, random_state=5)
    _quiet_project(new, other)  # new cell factors: the drawn column described the old ones
    assert "nmf_dominant_factor" not in new.obs
    assert "nmf_dominant_factor_colors" not in new.uns


def test_a_projection_over_the_references_copy_drops_its_dominant_factors(reference):
    copy = reference.copy()
    _draw_dominant_factors(copy)
    copy.uns["nmf"] = {**copy.uns["nmf"], "dominant_factor_key": "nmf_dominant_factor"}
    _quiet_project(copy, reference, copy=False)  # its own cells, projected over the fit's
    assert "nmf_dominant_factor" not in copy.obs


def test_a_projection_keeps_a_column_of_the_same_name_it_replaces_nothing_of(cells, reference):
    new = cells[200:].copy()
    new.obs["nmf_dominant_factor"] = pd.Categorical(["factor 0"] * new.n_obs)
    _quiet_project(new, reference)  # no earlier projection: the column is the user's
    assert "nmf_dominant_factor" in new.obs


def test_a_projection_reads_no_per_cell_array_of_the_reference(cells, reference):
    query, later = cells[200:250].copy(), cells[250:].copy()
    expected = _quiet_project(later, reference, copy=True).obsm["X_nmf"]
    _quiet_project(query, reference)
    # the reference with its projected query, as for a joint embedding: the query has no
    # per-cell Gamma parameters of the fit, so the concatenation keeps none
    atlas = ad.concat([reference, query], uns_merge="first", merge="first")
    assert "nmf_cell_shape" not in atlas.obsm and "nmf_gene_shape" in atlas.varm
    got = _quiet_project(later, atlas, copy=True).obsm["X_nmf"]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_a_concatenation_of_anndata_fitted_apart_is_not_taken_for_one_fit(cells):
    first, second = cells[:150].copy(), cells[150:].copy()
    _quiet_nmf(first, 3)
    _quiet_nmf(second, 3, random_state=7)
    both = ad.concat([first, second], uns_merge="same", merge="first")
    # what the fits share survives, which looked like a whole record over two fits' cells
    assert "params" in both.uns["nmf"] and "X_nmf_usage" in both.obsm
    with pytest.raises(KeyError, match="concat of AnnData fitted apart"):
        tl.top_genes(both, 3)
    with pytest.raises(KeyError, match="factor_share"):
        vbsnmf.pl.umap(both)
    _quiet_nmf(both, 3)  # fitted again under the same key, as the message says
    assert both.uns["nmf"]["factor_share"].shape == (3,)


def test_pieces_of_one_fit_concatenated_keep_a_usable_fit(reference):
    both = ad.concat([reference[:120], reference[120:]], uns_merge="same", merge="same")
    assert both.uns["nmf"]["factor_share"].shape == (3,)
    table = tl.top_genes(both, 3)
    expected = tl.top_genes(reference, 3)
    pd.testing.assert_frame_equal(table, expected)
