"""Defects of `vbsnmf.pl` found by the thirty-second hostile pass, each pinned by the case
that showed it: a refused ``save=`` leaving its drawn figure open, `factors`' percentile
scale taken over cells ``mask_obs`` leaves grey, ``mask_obs`` as a list, and ``ax=`` with
several factors. Guards pin what the plots draw against the stored numbers."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.colors

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import vbsnmf
from vbsnmf import pl

pytestmark = pytest.mark.usefixtures("no_open_figures")


_PLOTS = {
    "elbo": lambda adata, save: pl.elbo(adata, show=False, save=save),
    "factors": lambda adata, save: pl.factors(adata, show=False, save=save),
    "top_genes": lambda adata, save: pl.top_genes(adata, "cluster", show=False, save=save),
    "select_k": lambda adata, save: pl.select_k(adata, show=False, save=save),
}


@pytest.mark.parametrize("plot", sorted(_PLOTS))
@pytest.mark.parametrize(
    ("save", "error"),
    [
        (Path("missing-folder") / "figure.png", FileNotFoundError),
        (Path("figure.xyz"), ValueError),
        ("folder/figure.png", ValueError),
        (3, TypeError),
    ],
    ids=["missing-folder", "unknown-suffix", "string-path", "number"],
)
def test_refused_save_leaves_no_figure_open(
    plotted_selection, tmp_path, monkeypatch, plot, save, error
):
    # the save was checked once the figure was drawn: refused, the figure stayed open in
    # pyplot (drawn under the error in a notebook, piling up in a loop)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error):
        _PLOTS[plot](plotted_selection, save)
    assert plt.get_fignums() == []
    assert list(tmp_path.iterdir()) == []


def test_factors_percentile_scale_of_the_cells_mask_obs_keeps(plotted_selection):
    # the percentile was of every cell, masked ones too, where scanpy (and the docstring:
    # "the values of all drawn panels") takes it of the cells drawn in colour
    keep = np.arange(plotted_selection.n_obs) % 3 == 0
    active = np.flatnonzero(plotted_selection.uns["nmf"]["active"])
    usage = plotted_selection.obsm["X_nmf_usage"][:, active]
    assert not np.isclose(np.percentile(usage[keep], 99), np.percentile(usage, 99))
    axes = pl.factors(plotted_selection, mask_obs=keep, vmax="p99", show=False)
    for ax in axes:
        assert ax.collections[0].get_clim() == pytest.approx((0.0, np.percentile(usage[keep], 99)))
    # the same cells named by a boolean .obs column
    adata = plotted_selection.copy()
    adata.obs["keep"] = keep
    by_name = pl.factors(adata, mask_obs="keep", vmax="p90", show=False)
    assert by_name[0].collections[0].get_clim()[1] == pytest.approx(np.percentile(usage[keep], 90))


def test_factors_percentile_scale_with_a_mask_keeping_no_cell(plotted_selection):
    # numpy's bare IndexError once the percentile was of the kept cells; a number as vmax
    # still draws every cell grey, as scanpy does
    nothing = np.zeros(plotted_selection.n_obs, dtype=bool)
    with pytest.raises(ValueError, match=r"mask_obs= keeps no cell, so vmax='p99'"):
        pl.factors(plotted_selection, mask_obs=nothing, show=False)
    assert len(pl.factors(plotted_selection, mask_obs=nothing, vmax=1.0, show=False)) == 3


def test_factors_mask_obs_as_a_list(plotted_selection):
    # scanpy read the mask's dtype: its bare AttributeError "'list' object has no
    # attribute 'dtype'"
    keep = np.arange(plotted_selection.n_obs) % 2 == 0
    by_list = pl.factors(plotted_selection, mask_obs=[bool(cell) for cell in keep], show=False)
    by_array = pl.factors(plotted_selection, mask_obs=keep, show=False)
    for listed, given in zip(by_list, by_array, strict=True):
        assert np.array_equal(
            listed.collections[0].get_offsets(), given.collections[0].get_offsets()
        )
        assert listed.collections[0].get_clim() == given.collections[0].get_clim()


def test_factors_ax_with_several_factors_names_components(plotted_selection):
    # scanpy's refusal named 'color', which the plot sets, not the user
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match=r"ax= holds one panel, and 3 factors .*components="):
        pl.factors(plotted_selection, ax=ax, show=False)
    drawn = pl.factors(plotted_selection, components=[1], ax=ax, show=False)
    assert drawn == [ax]
    assert ax.get_title() == "factor 1"


def _cells_of(offsets: np.ndarray, embedding: np.ndarray) -> np.ndarray:
    """The row of ``embedding`` each drawn point of ``offsets`` sits at (scanpy draws the
    cells in its own order); points at shared coordinates have equal values here."""
    distances = np.abs(offsets[:, None, :] - embedding[None, :, :]).sum(axis=2)
    return distances.argmin(axis=1)


@pytest.mark.parametrize("values", ["usage", "factors"])
def test_factors_draw_the_stored_values_at_each_cell(plotted_selection, values):
    """Guard (passes on the base code too): each panel's points sit at the cells'
    embedding and carry their stored value; inactive factors left out by default, drawn
    when asked."""
    adata = plotted_selection.copy()
    adata.uns["nmf"] = {**adata.uns["nmf"], "active": np.array([True, False, True])}
    stored = adata.obsm["X_nmf_usage" if values == "usage" else "X_nmf"]
    embedding = adata.obsm["X_umap"]
    axes = pl.factors(adata, values=values, vmax=None, show=False)
    assert [ax.get_title() for ax in axes] == ["factor 0", "factor 2"]
    for ax, factor in zip(axes, [0, 2], strict=True):
        points = ax.collections[0]
        offsets = np.asarray(points.get_offsets(), dtype=np.float64)
        cells = _cells_of(offsets, embedding)
        assert np.abs(offsets - embedding[cells]).max() < 1e-6
        drawn = np.asarray(points.get_array(), dtype=np.float64)
        assert np.allclose(np.sort(drawn), np.sort(stored[:, factor]), rtol=1e-6)
    every = pl.factors(adata, values=values, include_inactive=True, show=False)
    assert [ax.get_title() for ax in every] == ["factor 0", "factor 1", "factor 2"]


def test_top_genes_dot_plot_holds_the_group_means_of_the_listed_genes(plotted_selection):
    """Guard (passes on the base code too): the dot plot's columns are `tl.top_genes`'
    genes in order, its colours the groups' mean counts scaled to [0, 1] per gene and its
    sizes the share of the groups' cells that express each gene, computed in numpy."""
    dot_plot = pl.top_genes(plotted_selection, "cluster", return_fig=True)
    table = vbsnmf.tl.top_genes(plotted_selection, 5, min_counts=2)
    genes = list(table["gene"])
    assert list(dot_plot.var_names) == genes
    counts = pd.DataFrame(plotted_selection[:, genes].X.toarray(), columns=genes)
    groups = plotted_selection.obs["cluster"].to_numpy()
    means = counts.groupby(groups).mean().to_numpy()
    low, high = means.min(axis=0), means.max(axis=0)
    scaled = (means - low) / np.where(high > low, high - low, 1)
    assert np.allclose(dot_plot.dot_color_df.to_numpy(), scaled)
    expressed = (counts > 0).groupby(groups).mean().to_numpy()
    assert np.allclose(dot_plot.dot_size_df.to_numpy(), expressed)


def test_select_k_draws_its_table(plotted_selection):
    """Guard (passes on the base code too): the held-out line and its error bars, the
    ELBO and the active factors are the table's, the suggested K marked on each panel."""
    record = plotted_selection.uns["nmf_k_selection"]
    table, suggested = record["table"], record["suggested_k"]
    axes = pl.select_k(plotted_selection, show=False)
    bars = axes[0].containers[0]
    assert np.allclose(bars.lines[0].get_xdata(), table.index)
    assert np.allclose(bars.lines[0].get_ydata(), table["heldout_ll_per_count"])
    spans = [segment[1, 1] - segment[0, 1] for segment in bars.lines[2][0].get_segments()]
    assert np.allclose(spans, 2 * table["heldout_se"].to_numpy())
    assert np.allclose(axes[1].lines[0].get_ydata(), table["elbo"])
    active = next(line for line in axes[2].lines if line.get_label() == "active")
    assert np.array_equal(active.get_ydata(), table["n_active"].to_numpy())
    for ax in axes:
        marks = [line for line in ax.lines if line.get_linestyle() == "--"]
        assert [list(line.get_xdata()) for line in marks] == [[suggested, suggested]]


_UNCOLOURABLE_COLUMNS = {
    "flag-or-none": lambda n: pd.Series([True if c % 3 else None for c in range(n)], dtype=object),
    "number-or-none": lambda n: pd.Series([1.5 if c % 3 else None for c in range(n)], dtype=object),
    "number-or-text": lambda n: pd.Series([1 if c % 3 else "ctrl" for c in range(n)], dtype=object),
    "bytes": lambda n: pd.Series([b"a" if c % 3 else b"b" for c in range(n)], dtype=object),
    "nullable-boolean": lambda n: pd.Series([c % 3 > 0 for c in range(n)], dtype="boolean"),
    "dates": lambda n: pd.Series(pd.date_range("2020-01-01", periods=n)),
    "periods": lambda n: pd.Series(pd.period_range("2020-01-01", periods=n, freq="D")),
}


@pytest.mark.parametrize("kind", sorted(_UNCOLOURABLE_COLUMNS))
def test_umap_refuses_a_column_scanpy_cannot_colour_by(plotted_selection, kind):
    # scanpy's bare TypeError ("bad operand type for unary -: 'NoneType'", "The numpy
    # boolean negative, the `-` operator, is not supported") came after the graph and the
    # UMAP; made categorical, as the message says, the column is drawn
    adata = plotted_selection.copy()
    del adata.obsm["X_umap"]
    adata.obs["flag"] = _UNCOLOURABLE_COLUMNS[kind](adata.n_obs).set_axis(adata.obs_names)
    with pytest.raises(ValueError, match=r"color 'flag': adata\.obs\['flag'\] holds .*astype\("):
        pl.umap(adata, color="flag", show=False)
    assert "X_umap" not in adata.obsm
    assert "neighbors" not in adata.uns
    adata.obs["flag"] = adata.obs["flag"].astype("category")
    assert pl.umap(adata, color="flag", show=False).get_title() == "UMAP of NMF usages: flag"


def test_umap_draws_object_columns_of_text_or_of_numbers(plotted_selection):
    """Guard (passes on the base code too): object columns scanpy colours by, text with
    missing values (made categorical) and numbers with NaN (a colour scale), are drawn."""
    adata = plotted_selection.copy()
    del adata.obsm["X_umap"]
    cells = range(adata.n_obs)
    adata.obs["text"] = pd.Series(["a" if c % 2 else None for c in cells], dtype=object).values
    adata.obs["number"] = pd.Series([c if c % 2 else np.nan for c in cells], dtype=object).values
    axes = pl.umap(adata, color=["text", "number"], show=False)
    assert [ax.get_title() for ax in axes] == [
        "UMAP of NMF usages: text",
        "UMAP of NMF usages: number",
    ]


@pytest.mark.parametrize(
    ("plot", "passed"),
    [
        ("factors", {"color_map": "magma"}),
        ("factors", {"norm": matplotlib.colors.LogNorm()}),
        ("top_genes", {"var_group_labels": ["a"]}),
        ("top_genes", {"var_group_positions": [(0, 1)]}),
    ],
    ids=["color_map", "norm", "var_group_labels", "var_group_positions"],
)
def test_plots_name_more_keywords_they_set_themselves(plotted_selection, plot, passed):
    # scanpy's own refusals named the plot's cmap, vmin/vmax or var_names dict as the
    # user's: "Cannot specify both `color_map` and `cmap`", "Passing both norm and
    # vmin/vmax/vcenter is not allowed", "cannot be set if var_names is a dict"
    (name,) = passed
    args = (plotted_selection,) if plot == "factors" else (plotted_selection, "cluster")
    with pytest.raises(TypeError, match=rf"vbsnmf\.pl\.{plot} sets '{name}' itself: "):
        getattr(pl, plot)(*args, show=False, **passed)
    assert plt.get_fignums() == []


def test_top_genes_dendrogram_of_a_backed_anndata(plotted_selection, tmp_path):
    # scanpy's dendrogram reads X, and said only "dendrogram is not implemented for
    # matrices of type <class '..._CSRDataset'>" (a NotImplementedError)
    plotted_selection.write_h5ad(tmp_path / "fit.h5ad")
    backed = ad.read_h5ad(tmp_path / "fit.h5ad", backed="r")
    try:
        with pytest.raises(ValueError, match=r"cannot read the X of a backed AnnData.*to_memory"):
            pl.top_genes(backed, "cluster", dendrogram=True, show=False)
        assert "dendrogram_cluster" not in backed.uns
        assert plt.get_fignums() == []
        # without the dendrogram, the backed AnnData is drawn
        assert "mainplot_ax" in pl.top_genes(backed, "cluster", show=False)
    finally:
        backed.file.close()
