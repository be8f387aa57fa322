"""`vbsnmf.pl`: every plot renders, draws the fit's numbers, and saves as scanpy's do."""

from __future__ import annotations

import re
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import vbsnmf
from vbsnmf import pl, tl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fitted():
    """pbmc_tiny with a K=4 fit, a 2-D embedding (the first two factors, for speed), a
    cluster column, and factor 2 marked inactive."""
    adata = vbsnmf.datasets.pbmc_tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, 4, max_iter=15, n_threads=2, min_share=0.0)
    adata.uns["nmf"]["active"] = np.array([True, True, False, True])
    adata.obsm["X_umap"] = np.log1p(adata.obsm["X_nmf"][:, :2])
    dominant = adata.obsm["X_nmf"].argmax(axis=1)
    adata.obs["cluster"] = pd.Categorical([f"c{f}" for f in dominant])
    return adata


@pytest.fixture
def figdir(tmp_path):
    """scanpy's figure folder pointed at a temporary one."""
    before = sc.settings.figdir
    sc.settings.figdir = tmp_path / "figures"
    yield sc.settings.figdir
    sc.settings.figdir = before


def _assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.02  # not a blank canvas


def test_elbo_plot(fitted, tmp_path, figdir):
    axes = pl.elbo(fitted, save=tmp_path / "elbo.png", show=False)
    _assert_png(tmp_path / "elbo.png")
    trace = fitted.uns["nmf"]["elbo_trace"]
    line = axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), trace)
    gap_line = axes[1].get_lines()[0]
    # The gap panel: final - ELBO_t for every iteration before the last (all positive,
    # since the ELBO rises every iteration), on a log axis.
    np.testing.assert_allclose(gap_line.get_ydata(), trace[-1] - trace[:-1])
    assert axes[1].get_yscale() == "log"
    # scanpy's rule for a string: appended to the plot's name, in sc.settings.figdir.
    pl.elbo(fitted, save="_run1.png", show=False)
    _assert_png(figdir / "elbo_run1.png")


def test_factors_plot_shares_one_scale_and_leaves_out_inactive(fitted, tmp_path, figdir):
    axes = pl.factors(fitted, basis="umap", ncols=2, save=tmp_path / "factors.png", show=False)
    _assert_png(tmp_path / "factors.png")
    assert [ax.get_title() for ax in axes] == ["factor 0", "factor 1", "factor 3"]
    usage = fitted.obsm["X_nmf_usage"]
    shared_top = np.percentile(usage[:, [0, 1, 3]], 99)
    for factor, ax in zip((0, 1, 3), axes):
        points = ax.collections[0]
        np.testing.assert_allclose(np.sort(points.get_array()), np.sort(usage[:, factor]))
        np.testing.assert_allclose(points.get_clim(), (0, shared_top))
    assert "factor 0" not in fitted.obs  # drawn from a frame of its own

    everything = pl.factors(fitted, include_inactive=True, values="factors", vmax=2.5, show=False)
    assert [ax.get_title() for ax in everything] == [f"factor {f}" for f in range(4)]
    for factor, ax in enumerate(everything):
        points = ax.collections[0]
        np.testing.assert_allclose(
            np.sort(points.get_array()), np.sort(fitted.obsm["X_nmf"][:, factor])
        )
        assert points.get_clim() == (0, 2.5)
    two = pl.factors(fitted, components=[1, 2], show=False)
    assert [ax.get_title() for ax in two] == ["factor 1", "factor 2"]

    pl.factors(fitted, save="_nmf.png", show=False)  # scanpy's rule: writekey is the basis
    _assert_png(figdir / "umap_nmf.png")
    with pytest.raises(KeyError, match="X_tsne"):
        pl.factors(fitted, basis="tsne", show=False)
    with pytest.raises(ValueError, match="percentile"):
        pl.factors(fitted, vmax="max", show=False)


def test_top_genes_dotplot_across_groups(fitted, tmp_path, figdir):
    table = tl.top_genes(fitted, 3)
    assert list(table.index.unique("factor")) == [0, 1, 3]
    dot_plot = pl.top_genes(fitted, "cluster", 3, return_fig=True)
    assert isinstance(dot_plot, sc.pl.DotPlot)
    assert list(dot_plot.var_names) == list(table["gene"])
    assert list(dot_plot.var_groups.labels) == ["factor 0", "factor 1", "factor 3"]
    # Colour: each gene's mean count per cluster, scaled to [0, 1] over the clusters.
    genes = list(table["gene"])
    counts = pd.DataFrame(
        fitted[:, genes].X.toarray(), columns=genes, index=fitted.obs_names
    ).groupby(fitted.obs["cluster"], observed=True)
    means = counts.mean()
    scaled = (means - means.min()) / (means.max() - means.min())
    colours = dot_plot.dot_color_df.loc[scaled.index, genes]
    np.testing.assert_allclose(colours.to_numpy(), scaled.to_numpy(), atol=1e-6)

    axes = pl.top_genes(fitted, "cluster", 3, save=tmp_path / "dots.png", show=False)
    _assert_png(tmp_path / "dots.png")
    labels = [label.get_text() for label in axes["mainplot_ax"].get_xticklabels()]
    assert labels == genes
    pl.top_genes(fitted, "cluster", 3, save=True, show=False)  # scanpy's name and format
    written = figdir / f"dotplot_.{sc.settings.file_format_figs}"
    assert written.stat().st_size > 1000
    with pytest.raises(KeyError, match="no column 'leiden'"):
        pl.top_genes(fitted, "leiden", show=False)


def test_umap_uses_the_usages(fitted, tmp_path):
    adata = fitted.copy()
    axes = pl.umap(adata, n_neighbors=10, save=tmp_path / "umap.png", show=False)
    _assert_png(tmp_path / "umap.png")
    assert adata.uns["neighbors"]["params"]["use_rep"] == "X_nmf_sqrt_usage"
    assert list(adata.obs["nmf_dominant_factor"].cat.categories) == [
        "factor 0",
        "factor 1",
        "factor 3",
    ]
    usage = adata.obsm["X_nmf_usage"][:, [0, 1, 3]]
    np.testing.assert_array_equal(adata.obs["nmf_dominant_factor"].cat.codes, usage.argmax(axis=1))
    assert axes.get_title().endswith("nmf_dominant_factor")


@pytest.mark.parametrize("fill", [np.nan, "a"])
def test_umap_of_edited_usages_names_them(fitted, fill):
    """Strings in the usages (an edited result) gave numpy's "ufunc 'isfinite' not
    supported" (a hostile pass, 2026-12-03); NaN was already named."""
    adata = fitted.copy()
    key = "X_nmf_sqrt_usage"
    adata.obsm[key] = np.full(adata.obsm[key].shape, fill)
    with pytest.raises(ValueError, match=re.escape(f"adata.obsm[{key!r}] holds")):
        pl.umap(adata, show=False)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"components": [7]}, ValueError, r"distinct factor indices in 0\.\.3"),
        ({"components": [-1]}, ValueError, "distinct factor indices"),  # drew factor 3
        ({"components": [0, 0]}, ValueError, "distinct factor indices"),
        ({"components": [1.7]}, TypeError, "list of factor indices"),  # drew factor 1
        ({"components": 1}, TypeError, "list of factor indices"),
        ({"ncols": 0}, ValueError, "ncols"),  # scanpy's ZeroDivisionError
        ({"vmax": -1.0}, ValueError, "vmax must be positive"),
        ({"vmax": float("nan")}, ValueError, "vmax must be positive"),
        ({"vmax": "p150"}, ValueError, "vmax must be a number or 'pNN'"),
        ({"vmax": [1.0]}, TypeError, "vmax"),
    ],
)
def test_factors_plot_refuses_bad_arguments(fitted, options, error, message):
    with pytest.raises(error, match=message):
        pl.factors(fitted, show=False, **options)


def test_factors_plot_takes_a_boolean_mask_and_refuses_a_flat_embedding(fitted):
    mask = np.array([True, False, False, True])
    axes = pl.factors(fitted, components=mask, show=False)
    assert [ax.get_title() for ax in axes] == ["factor 0", "factor 3"]
    flat = fitted.copy()
    flat.obsm["X_line"] = flat.obsm["X_umap"][:, :1]
    with pytest.raises(ValueError, match="not a 2-D embedding"):
        pl.factors(flat, basis="line", show=False)


def test_elbo_plot_refuses_wrong_axes_and_says_why_a_trace_is_empty(fitted):
    _, one = plt.subplots()
    with pytest.raises(ValueError, match="sequence of 2 matplotlib axes"):
        pl.elbo(fitted, axes=[one])
    short = fitted[:300].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(short, 2, max_iter=1)  # SQUAREM (the default) keeps no q in one pass
    assert short.uns["nmf"]["n_iter"] == 1
    with pytest.raises(ValueError, match=r"recorded no ELBO in its 1 pass\(es\)"):
        pl.elbo(short)
    with pytest.raises(ValueError, match="SQUAREM's first pass, which scores only its start"):
        tl.select_k(short, ks=[2], max_iter=1)  # refused before any fit


def test_factors_plot_takes_vmax_none_as_scanpy_does(fitted):
    assert len(pl.factors(fitted, vmax=None, show=False)) == 3


def test_top_genes_dotplot_calls_a_boolean_groupby_boolean(fitted):
    flagged = fitted.copy()
    flagged.obs["doublet"] = flagged.obs["cluster"] == "c0"
    with pytest.raises(ValueError, match="is boolean; make it categorical"):
        pl.top_genes(flagged, "doublet", show=False)


def test_top_genes_dotplot_refuses_a_numeric_groupby(fitted):
    """scanpy bins a numeric column and then fails with a KeyError on its Interval bins."""
    numbered = fitted.copy()
    numbered.obs["cluster_id"] = numbered.obs["cluster"].cat.codes.astype(int)
    with pytest.raises(ValueError, match="is numeric; make it categorical"):
        pl.top_genes(numbered, "cluster_id", show=False)
    numbered.obs["cluster_id"] = numbered.obs["cluster_id"].astype("category")
    assert pl.top_genes(numbered, "cluster_id", show=False)
