"""`vbsnmf.pl`: every plot renders to a PNG and draws the fit's numbers."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

import vbsnmf
from vbsnmf import pl, tl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fitted():
    """pbmc_tiny with a K=4 fit and a 2-D embedding (the first two factors, for speed)."""
    adata = vbsnmf.datasets.pbmc_tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, 4, max_iter=15, n_threads=2)
    adata.obsm["X_umap"] = np.log1p(adata.obsm["X_nmf"][:, :2])
    return adata


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.02  # not a blank canvas


def test_elbo_plot(fitted, tmp_path):
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


def test_factors_plot(fitted, tmp_path):
    axes = pl.factors(fitted, basis="umap", ncols=2, save=tmp_path / "factors.png", show=False)
    _assert_png(tmp_path / "factors.png")
    assert [ax.get_title() for ax in axes] == [f"factor {f}" for f in range(4)]
    for factor, ax in enumerate(axes):
        colours = np.sort(ax.collections[0].get_array())
        np.testing.assert_allclose(colours, np.sort(fitted.obsm["X_nmf"][:, factor]))
    two = pl.factors(fitted, components=[1, 3], show=False)
    assert [ax.get_title() for ax in two] == ["factor 1", "factor 3"]
    with pytest.raises(KeyError, match="X_tsne"):
        pl.factors(fitted, basis="tsne", show=False)


@pytest.mark.parametrize("kind", ["dotplot", "heatmap"])
def test_top_genes_plot(fitted, tmp_path, kind):
    path = tmp_path / f"top_{kind}.png"
    ax = pl.top_genes(fitted, 3, kind=kind, save=path, show=False)
    _assert_png(path)
    genes = [label.get_text() for label in ax.get_xticklabels()]
    expected = list(dict.fromkeys(tl.top_genes(fitted, 3)["gene"]))
    assert genes == expected
    # Colour: each gene's loading relative to its largest loading over factors.
    loadings = fitted.varm["NMF"][fitted.var_names.get_indexer(genes)].T
    relative = loadings / loadings.max(axis=0)
    drawn = ax.images[0].get_array() if kind == "heatmap" else ax.collections[0].get_array()
    np.testing.assert_allclose(np.asarray(drawn).reshape(relative.shape), relative)


def test_top_genes_plot_rejects_an_unknown_kind(fitted):
    with pytest.raises(ValueError, match="kind must be"):
        pl.top_genes(fitted, kind="violin", show=False)
