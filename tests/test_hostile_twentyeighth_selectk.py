"""Twenty-eighth hostile pass over choosing K and the outputs a biologist reads:
``pl.umap``'s dominant factors listing factors no cell is dominated by (a legend of colours
no cell has, a column scanpy's ``rank_genes_groups`` and ``pl.top_genes`` refused to group
by) and naming factor 0 the dominant factor of cells without usage; ``select_k``'s reason
saying "tolerance 0" when the best K is suggested, nothing of why the smaller Ks were not,
nor that some of the suggested K's factors are switched off; ``pl.select_k`` counting
active factors in halves, and leaving a given tolerance undrawn; the plots' advice when
no factor is active."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

import vbsnmf
from vbsnmf import pl, tl


def _quiet(call, *args, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **options)


@pytest.fixture
def no_umap(monkeypatch):
    """sc.tl.umap as a random embedding: the dominant factors, not the layout, are tested."""

    def embed(adata, random_state=0, **_):
        adata.obsm["X_umap"] = np.random.default_rng(0).normal(size=(adata.n_obs, 2))

    monkeypatch.setattr(sc.tl, "umap", embed)


def _dominant_active(adata) -> list:
    """Each cell's dominant active factor by numpy, None for a cell without usage."""
    active = np.flatnonzero(adata.uns["nmf"]["active"])
    usage = np.asarray(adata.obsm["X_nmf_usage"])[:, active]
    return [f"factor {active[row.argmax()]}" if row.max() > 0 else None for row in usage]


def test_umap_dominant_factors_are_the_factors_some_cell_has(pbmc_tiny, no_umap):
    adata = pbmc_tiny[:400].copy()
    _quiet(tl.nmf, adata, 8, max_iter=40, n_threads=1)
    ax = _quiet(pl.umap, adata, show=False)
    column = adata.obs["nmf_dominant_factor"]
    expected = _dominant_active(adata)
    assert column.astype(object).tolist() == expected
    assert len(set(expected)) < int(adata.uns["nmf"]["active"].sum())  # some dominate none
    assert set(column.cat.categories) == set(expected)
    assert {text.get_text() for text in ax.get_legend().get_texts()} == set(expected)
    normalised = adata.copy()
    sc.pp.normalize_total(normalised)
    sc.pp.log1p(normalised)
    _quiet(sc.tl.rank_genes_groups, normalised, "nmf_dominant_factor")  # groups of no cell
    _quiet(pl.top_genes, adata, "nmf_dominant_factor", show=False)


def test_umap_gives_cells_without_usage_no_dominant_factor(pbmc_tiny, no_umap):
    adata = pbmc_tiny[:300].copy()
    kept = np.ones(adata.n_obs)
    kept[:5] = 0  # five cells without counts
    adata.X = sp.csr_matrix(sp.diags(kept) @ sp.csr_matrix(adata.X))
    adata.X.eliminate_zeros()
    _quiet(tl.nmf, adata, 3, solver="mu", max_iter=50)
    assert (adata.obsm["X_nmf_usage"][:5] == 0).all()
    _quiet(pl.umap, adata, show=False)
    column = adata.obs["nmf_dominant_factor"]
    assert column[:5].isna().all()  # was "factor 0", argmax of zeros
    assert column.astype(object).where(column.notna(), None).tolist() == _dominant_active(adata)


@pytest.fixture(scope="module")
def selected():
    adata = vbsnmf.datasets.pbmc_tiny()
    table = _quiet(tl.select_k, adata, [2, 3], max_iter=10, min_share=0.34, n_threads=1)
    return table


def test_select_k_reason_says_why_the_smaller_k_lost_not_tolerance_0(selected):
    table, reason = selected, selected.attrs["reason"]
    assert selected.attrs["suggested_k"] == 3  # the best, whose own standard error is 0
    assert table.loc[3, "heldout_se"] == 0
    assert "tolerance 0)" not in reason
    gap = table.loc[3, "heldout_ll_per_count"] - table.loc[2, "heldout_ll_per_count"]
    assert gap > table.loc[2, "tolerance"]
    said = f"K=2 is {gap:.3g} below the best, beyond its tolerance {table.loc[2, 'tolerance']:.3g}"
    assert said in reason
    assert reason.startswith("K=3: the smallest K")


def test_select_k_reason_says_how_many_of_its_factors_are_active(selected):
    n_active = int(selected.loc[3, "n_active"])
    assert n_active < 3  # min_share=0.34: at most two of three shares exceed it
    assert f"; {n_active} of its 3 factors are active" in selected.attrs["reason"]


def test_select_k_plot_counts_active_factors_in_whole_numbers(pbmc_tiny):
    _quiet(tl.select_k, pbmc_tiny, [2, 3, 5], max_iter=5, n_threads=1)
    axes = pl.select_k(pbmc_tiny, show=False)
    axes[2].figure.canvas.draw()
    low, high = axes[2].get_ylim()
    ticks = [tick for tick in axes[2].get_yticks() if low <= tick <= high]
    assert len(ticks) >= 2
    assert all(float(tick).is_integer() for tick in ticks)


@pytest.fixture(scope="module")
def inactive():
    """200 cells with a K=3 fit none of whose factors is active."""
    adata = vbsnmf.datasets.pbmc_tiny()[:200, :300].copy()
    _quiet(tl.nmf, adata, 3, max_iter=10, min_share=0.99, n_threads=1)
    assert not adata.uns["nmf"]["active"].any()
    adata.obsm["X_umap"] = np.random.default_rng(0).normal(size=(adata.n_obs, 2))
    adata.obs["group"] = pd.Categorical(["a", "b"] * 100)
    return adata


@pytest.mark.parametrize(
    "plot",
    [
        lambda adata: pl.factors(adata, show=False),
        lambda adata: pl.top_genes(adata, "group", show=False),
    ],
    ids=["factors", "top_genes"],
)
def test_plots_without_an_active_factor_name_include_inactive(inactive, plot):
    with pytest.raises(ValueError, match=r"none is active; pass include_inactive=True"):
        plot(inactive.copy())


def test_top_genes_plot_blames_min_counts_only_when_factors_are_active(inactive):
    adata = inactive.copy()
    adata.uns["nmf"]["active"] = np.ones(3, dtype=bool)
    with pytest.raises(ValueError, match=r"min_counts=1000000000 counts or more; lower") as caught:
        pl.top_genes(adata, "group", min_counts=10**9, show=False)
    assert "active" not in str(caught.value)
    assert pl.top_genes(inactive.copy(), "group", include_inactive=True, show=False)


def test_select_k_plot_draws_a_given_tolerance(pbmc_tiny):
    table = _quiet(tl.select_k, pbmc_tiny, [2, 3], max_iter=10, tolerance=0.05, n_threads=1)
    assert table.attrs["suggested_k"] == 2  # further below the best than its error bar
    assert (
        table.loc[2, "heldout_se"]
        < table.loc[3, "heldout_ll_per_count"] - table.loc[2, "heldout_ll_per_count"]
    )
    axes = pl.select_k(pbmc_tiny, show=False)
    line = table["heldout_ll_per_count"].max() - 0.05
    assert [ln for ln in axes[0].lines if np.allclose(ln.get_ydata(), line)]
    labels = [text.get_text() for text in axes[0].get_legend().get_texts()]
    assert labels == ["best - tolerance 0.05"]
