"""Defects of `vbsnmf.pl` found by the thirty-seventh hostile pass: a plot failing while
drawing or saving (a keyword argument matplotlib refuses, a title it cannot typeset, a
save that fails) left its half-drawn figure open in pyplot; `umap` coloured by a column
whose stored colours are not a list failed inside scanpy after the graph and the UMAP.
Guards pin that a failure never closes the user's own figure, nor replaces a file, and
that plots saved to a path in a loop leave no figure open."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from cli_output import without_compile_notice
from matplotlib.figure import Figure

from vbsnmf import pl

pytestmark = pytest.mark.usefixtures("no_open_figures")


_BAD_TITLE = r"$\notacommand$"  # mathtext matplotlib cannot typeset, met at the draw


@pytest.mark.parametrize(
    ("plot", "error"),
    [
        (lambda adata: pl.factors(adata, size="big", show=False), ValueError),
        # a keyword no one takes: refused before drawing since the 39th pass (a TypeError
        # naming the plot, not matplotlib's AttributeError from the half-drawn figure)
        (lambda adata: pl.factors(adata, not_a_property=1, show=False), TypeError),
        (
            lambda adata: pl.top_genes(adata, "cluster", not_a_property=1, show=False),
            TypeError,
        ),
    ],
    ids=["factors-size", "factors-keyword", "top_genes-keyword"],
)
def test_a_keyword_matplotlib_refuses_leaves_no_figure_open(plotted_selection, plot, error):
    # scanpy's figure stayed open under the error: drawn below it in a notebook, piling up
    # in a loop (a refused save= closes it since the thirty-second pass)
    with pytest.raises(error):
        plot(plotted_selection)
    assert plt.get_fignums() == []


def test_factors_failed_save_to_a_path_leaves_the_file_and_no_figure(plotted_selection, tmp_path):
    # a title matplotlib cannot typeset fails at the save: the old file is kept whole (the
    # save is atomic), no temporary is left, and the figure was left open
    target = tmp_path / "factors.png"
    target.write_bytes(b"old figure")
    with pytest.raises(ValueError, match="notacommand"):
        pl.factors(plotted_selection, title=[_BAD_TITLE] * 3, show=False, save=target)
    assert plt.get_fignums() == []
    assert target.read_bytes() == b"old figure"
    assert [path.name for path in tmp_path.iterdir()] == ["factors.png"]


def test_factors_failed_save_by_scanpy_leaves_no_figure(plotted_selection, tmp_path):
    import scanpy as sc

    # scanpy's settings are properties of its class, which monkeypatch cannot restore
    before = sc.settings.figdir
    sc.settings.figdir = tmp_path
    try:
        with pytest.raises(ValueError, match="notacommand"):
            pl.factors(plotted_selection, title=[_BAD_TITLE] * 3, show=False, save="_bad.png")
    finally:
        sc.settings.figdir = before
    assert plt.get_fignums() == []


@pytest.mark.parametrize("plot", ["elbo", "select_k"])
def test_failed_save_to_a_path_leaves_no_figure(plotted_selection, tmp_path, monkeypatch, plot):
    # a save that fails (a full disk) left the figure drawn for it open
    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(OSError, match="No space left"):
        getattr(pl, plot)(plotted_selection, show=False, save=tmp_path / f"{plot}.png")
    assert plt.get_fignums() == []
    assert list(tmp_path.iterdir()) == []


def test_a_failure_keeps_the_users_own_figure(plotted_selection):
    """Guard (passes on the base code too): a failure closes only the figures the plot
    opened, never the one of the axes the user gave."""
    figure, ax = plt.subplots()
    with pytest.raises(ValueError):
        pl.factors(plotted_selection, components=[0], ax=ax, size="big", show=False)
    assert plt.get_fignums() == [figure.number]
    figure, axes = plt.subplots(1, 2)
    drawn = pl.elbo(plotted_selection, axes=axes, show=False)
    assert list(drawn) == list(axes)
    assert axes[0].get_title() == "ELBO"
    assert figure.number in plt.get_fignums()


def test_repeated_plots_saved_to_a_path_open_no_figure(plotted_selection, tmp_path):
    """Guard (passes on the base code too): a figure saved to a path is closed, so plots
    saved in a loop do not pile up in pyplot; the axes are still returned."""
    for round_ in range(2):
        assert len(pl.elbo(plotted_selection, show=False, save=tmp_path / f"elbo{round_}.png")) == 2
        assert (
            len(pl.select_k(plotted_selection, show=False, save=tmp_path / f"k{round_}.pdf")) == 3
        )
        axes = pl.factors(plotted_selection, show=False, save=tmp_path / f"f{round_}.svg")
        assert [ax.get_title() for ax in axes] == ["factor 0", "factor 1", "factor 2"]
    assert plt.get_fignums() == []
    assert len(list(tmp_path.iterdir())) == 6


@pytest.mark.parametrize(
    "stored",
    [5, 1.5, None, True, np.array("#1f77b4")],
    ids=["int", "float", "none", "bool", "0-d-array"],
)
def test_umap_column_whose_stored_colours_are_no_list(plotted_selection, stored):
    # scanpy read len() of them: its bare TypeError "object of type 'int' has no len()"
    # came after the graph and the UMAP, the figure left open (and, from 'vbsnmf umap',
    # the one line named neither the column nor its colours)
    adata = plotted_selection.copy()
    adata.uns["cluster_colors"] = stored
    before = set(adata.obsm)
    with pytest.raises(ValueError, match=r"adata\.uns\['cluster_colors'\] .*not a list of colours"):
        pl.umap(adata, color="cluster", show=False)
    assert plt.get_fignums() == []
    assert set(adata.obsm) == before  # refused before the graph and the UMAP


def test_cli_umap_column_whose_stored_colours_are_no_list(plotted_selection, tmp_path, capsys):
    # 'vbsnmf umap --color' said only "error: object of type 'int' has no len()", after
    # the graph and the UMAP, naming neither the column nor its colours
    from vbsnmf.cli import main

    adata = plotted_selection.copy()
    adata.uns["cluster_colors"] = 5
    result = tmp_path / "result.h5ad"
    adata.write_h5ad(result)
    output = tmp_path / "umap.png"
    assert main(["umap", str(result), "-o", str(output), "--color", "cluster"]) == 2
    error = without_compile_notice(capsys.readouterr().err)
    assert error.count("\n") == 1
    assert "result.h5ad: --color 'cluster': adata.uns['cluster_colors'] is 5" in error
    assert not output.exists()


@pytest.mark.parametrize(("plot", "count"), [("elbo", 2), ("select_k", 3)])
def test_the_same_axes_given_twice(plotted_selection, plot, count):
    # the panels were drawn over each other without a word: `elbo`'s ELBO on the log
    # scale of its gap, where its negative values have no points, so the ELBO vanished
    _, ax = plt.subplots()
    _, other = plt.subplots()
    given = [ax, ax] + [other] * (count - 2)  # select_k: a third, distinct one
    with pytest.raises(ValueError, match=rf"axes must be {count} distinct axes, one per panel"):
        getattr(pl, plot)(plotted_selection, axes=given, show=False)
    assert len(ax.lines) == 0  # refused before any drawing
    # as a numpy array of axes (plt.subplots' own), distinct ones are drawn into
    _, row = plt.subplots(1, count)
    assert list(getattr(pl, plot)(plotted_selection, axes=row, show=False)) == list(row)
