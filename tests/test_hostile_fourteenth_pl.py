"""Defects of `vbsnmf.pl` found by the fourteenth hostile pass, each pinned by the case that
showed it: axes of a figure pyplot does not hold or of a subfigure, a dot plot with
``gene_symbols`` or a ``layer`` beside ``.raw``, a UMAP colour that is both a column and a
gene, and figures left open after saving to a path."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from matplotlib.figure import Figure

from vbsnmf import pl, tl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fitted(plotted_fit):
    """`conftest.plotted_fit`: pbmc_tiny cells with a K=3 fit, an embedding and clusters."""
    return plotted_fit


def test_elbo_draws_into_axes_of_a_figure_pyplot_does_not_hold(fitted, tmp_path):
    axes = Figure().subplots(1, 2)
    output = tmp_path / "elbo.png"
    assert pl.elbo(fitted, axes=axes, show=False, save=output) is axes
    assert output.read_bytes()[:8] == PNG_MAGIC
    np.testing.assert_array_equal(
        axes[0].get_lines()[0].get_ydata(), fitted.uns["nmf"]["elbo_trace"]
    )
    # scanpy's save=True writes pyplot's current figure, another one: refused, not misfiled
    with pytest.raises(ValueError, match=r"pathlib\.Path"):
        pl.elbo(fitted, axes=Figure().subplots(1, 2), show=False, save=True)


def test_elbo_and_select_k_draw_into_axes_of_a_subfigure(fitted):
    left, right = plt.figure().subfigures(1, 2)
    axes = left.subplots(1, 2)
    assert pl.elbo(fitted, axes=axes, show=False) is axes
    assert len(axes[0].get_lines()) == 1 and axes[1].get_title() == "gap to final"
    table = pd.DataFrame(
        {"heldout_ll_per_count": [-2.0, -1.9], "heldout_se": [0.1, 0.1], "elbo": [-9.0, -8.0]}
        | {"n_active": [2, 3]},
        index=pd.Index([2, 3], name="k"),
    )
    selected = fitted.copy()
    selected.uns["nmf_k_selection"] = {"table": table, "suggested_k": 3}
    three = right.subplots(1, 3)
    assert pl.select_k(selected, axes=three, show=False) is three
    np.testing.assert_array_equal(three[1].get_lines()[0].get_ydata(), [-9.0, -8.0])
    plt.close("all")


def test_top_genes_with_gene_symbols_shows_the_genes_by_their_symbols(fitted):
    adata = fitted.copy()
    adata.var["symbol"] = adata.var_names.astype(str)
    adata.var_names = adata.var["gene_ids"].astype(str).to_numpy()
    dot_plot = pl.top_genes(adata, "cluster", gene_symbols="symbol", return_fig=True)
    expected = adata.var.loc[tl.top_genes(adata, 5)["gene"], "symbol"]
    assert list(dot_plot.var_names) == list(expected)
    plt.close("all")


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (lambda var: var.drop(columns="symbol"), KeyError, "no column 'symbol'"),
        (lambda var: var.assign(symbol="same"), ValueError, "other genes share"),
        (lambda var: var.assign(symbol=np.nan), ValueError, "no name"),
    ],
)
def test_top_genes_with_unusable_gene_symbols_says_why(fitted, edit, error, match):
    adata = fitted.copy()
    adata.var["symbol"] = adata.var_names.astype(str)
    adata.var = edit(adata.var)
    with pytest.raises(error, match=match):
        pl.top_genes(adata, "cluster", gene_symbols="symbol", show=False)


def test_top_genes_of_a_layer_reads_adatas_genes_not_raws(fitted):
    adata = fitted.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.raw = adata[:, 100:].copy()  # .raw lacks some of the fitted genes, the layer not
    axes = pl.top_genes(adata, "cluster", layer="counts", show=False)
    assert set(axes) >= {"mainplot_ax"}
    plt.close("all")


def test_umap_refuses_a_colour_both_column_and_gene_before_the_graph(fitted, monkeypatch):
    adata = fitted.copy()
    gene = adata.var_names[0]
    adata.obs[gene] = np.arange(adata.n_obs, dtype=float)
    calls = []
    monkeypatch.setattr(sc.pp, "neighbors", lambda *args, **kwargs: calls.append(args))
    with pytest.raises(ValueError, match=f"{gene!r}: both a column of adata.obs and a gene"):
        pl.umap(adata, color=["cluster", gene], show=False)
    assert calls == [] and "distances" not in adata.obsp


def test_a_plot_saved_to_a_path_is_closed_as_scanpys_saved_plots_are(fitted, tmp_path):
    plt.close("all")
    pl.elbo(fitted, show=False, save=tmp_path / "elbo.png")
    pl.factors(fitted, show=False, save=tmp_path / "factors.pdf")
    pl.top_genes(fitted, "cluster", show=False, save=tmp_path / "dots.svg")
    assert plt.get_fignums() == []
    assert all(
        (tmp_path / name).stat().st_size > 0 for name in ("elbo.png", "factors.pdf", "dots.svg")
    )
    # not saved: left open for the caller to style, as scanpy leaves it
    axes = pl.elbo(fitted, show=False)
    assert plt.fignum_exists(axes[0].figure.number)
    plt.close("all")


@pytest.mark.parametrize("with_raw", [False, True])
def test_top_genes_refuses_a_top_gene_that_is_also_an_obs_column(fitted, with_raw):
    """scanpy's dot plot failed with a bare KeyError ("found in both adata.obs and
    adata.var_names"), of .raw's names too; now a ValueError naming the gene."""
    adata = fitted.copy()
    if with_raw:
        adata.raw = adata.copy()
    gene = tl.top_genes(adata, n_genes=3)["gene"].iloc[0]
    adata.obs[gene] = 1.0
    with pytest.raises(ValueError, match=f"'{gene}': among the fit's top genes and a column"):
        pl.top_genes(adata, groupby="cluster", n_genes=3, show=False)
    # the same genes by their symbols are other names: no clash to refuse
    adata.var["symbol"] = [f"sym_{name}" for name in adata.var_names]
    if with_raw:
        adata.raw = adata.copy()
    assert pl.top_genes(adata, groupby="cluster", n_genes=3, show=False, gene_symbols="symbol")
