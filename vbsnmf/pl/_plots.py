"""Plots of a `vbsnmf.tl.nmf` fit: ELBO trace, factors on an embedding, top genes.

Each function returns its axes and takes ``show`` and ``save`` as scanpy's plots do, except
that ``save`` is the output path itself (the format follows its suffix), written
atomically. matplotlib is imported on first use, so ``import vbsnmf`` stays light.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from ..io._atomic import atomic_file
from ..tl._stored import fit_info
from ..tl._top_genes import gene_specificity
from ..tl._top_genes import top_genes as top_genes_table


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _finish(figure, axes, show: bool | None, save: str | os.PathLike | None):
    """Save (atomically) and/or show ``figure``; return ``axes``.

    ``show=None`` shows only in an interactive session (never under a non-interactive
    backend, where ``plt.show`` would only warn).
    """
    plt = _pyplot()
    if save is not None:
        with atomic_file(save) as temporary:
            figure.savefig(temporary, dpi=150, bbox_inches="tight")
    if show or (show is None and plt.isinteractive()):
        plt.show()
    return axes


def elbo(
    adata,
    key: str = "nmf",
    *,
    axes: Sequence | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
):
    """The ELBO per iteration and, log-scaled, its gap to the final value.

    Parameters
    ----------
    adata
        AnnData after a variational `vbsnmf.tl.nmf` fit.
    key
        ``key_added`` of the fit.
    axes
        Two matplotlib axes to draw into (trace, gap); new ones by default.
    show
        Show the figure (default: only in an interactive session).
    save
        Write the figure to this path (``.png``, ``.pdf``, ``.svg``, ...).

    Returns
    -------
    The two axes.
    """
    info = fit_info(adata, key)
    trace = np.asarray(info.get("elbo_trace", []), dtype=np.float64)
    if trace.size == 0:
        raise ValueError(f"adata.uns[{key!r}] has no ELBO trace (not a variational fit?)")
    plt = _pyplot()
    if axes is None:
        figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    else:
        figure = axes[0].figure
    iterations = np.arange(1, trace.size + 1)
    axes[0].plot(iterations, trace, marker=".", markersize=3)
    axes[0].set(xlabel="iteration", ylabel="ELBO (nats)", title="ELBO")
    gap = trace[-1] - trace
    positive = gap > 0  # the final value has no gap; a non-increase would have none either
    axes[1].plot(iterations[positive], gap[positive], marker=".", markersize=3)
    if positive.any():
        axes[1].set_yscale("log")
    axes[1].set(xlabel="iteration", ylabel="final ELBO - ELBO (nats)", title="gap to final")
    figure.tight_layout()
    return _finish(figure, axes, show, save)


def factors(
    adata,
    basis: str = "umap",
    key: str = "nmf",
    *,
    components: Sequence[int] | None = None,
    ncols: int = 5,
    cmap: str = "viridis",
    point_size: float | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
):
    """One panel per factor: the cells on an embedding, coloured by their factor loading.

    Parameters
    ----------
    adata
        AnnData after `vbsnmf.tl.nmf` and an embedding (e.g. ``sc.tl.umap``).
    basis
        The embedding: ``.obsm['X_' + basis]`` (its first two columns are drawn).
    key
        ``key_added`` of the fit.
    components
        The factors to draw (default: all).
    ncols
        Panels per row.
    cmap
        Colour map of the loadings; each panel's scale ends at its 99th percentile so
        a few extreme cells do not wash out the rest.
    point_size
        Marker size (default: scaled to the number of cells).
    show, save
        As in `elbo`.

    Returns
    -------
    List of axes, one per factor drawn.
    """
    info = fit_info(adata, key)
    basis_key = basis if basis in adata.obsm else f"X_{basis}"
    if basis_key not in adata.obsm:
        raise KeyError(f"adata.obsm has no {basis_key!r}; compute the embedding first")
    coordinates = np.asarray(adata.obsm[basis_key])[:, :2]
    cell_factors = np.asarray(adata.obsm[info["obsm_key"]])
    components = list(range(cell_factors.shape[1])) if components is None else list(components)
    ncols = max(1, min(ncols, len(components)))
    nrows = math.ceil(len(components) / ncols)
    plt = _pyplot()
    figure, grid = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.4 * nrows), squeeze=False)
    size = point_size if point_size is not None else max(0.5, min(20.0, 6000 / adata.n_obs))
    axes = []
    for panel, factor in zip(grid.flat, components):
        loading = cell_factors[:, factor]
        order = np.argsort(loading, kind="stable")  # highest loadings drawn last, on top
        vmax = float(np.quantile(loading, 0.99)) or None
        points = panel.scatter(
            coordinates[order, 0],
            coordinates[order, 1],
            c=loading[order],
            s=size,
            cmap=cmap,
            vmin=0,
            vmax=vmax,
            linewidths=0,
            rasterized=True,
        )
        figure.colorbar(points, ax=panel, shrink=0.8)
        panel.set(title=f"factor {factor}", xticks=[], yticks=[])
        axes.append(panel)
    for unused in list(grid.flat)[len(components) :]:
        unused.set_visible(False)
    figure.tight_layout()
    return _finish(figure, axes, show, save)


def top_genes(
    adata,
    n_genes: int = 5,
    key: str = "nmf",
    *,
    kind: str = "dotplot",
    sort_by: str = "specificity",
    ax=None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
):
    """The top genes of every factor against all factors, as a dot plot or heatmap.

    Columns are the top ``n_genes`` genes of each factor (`vbsnmf.tl.top_genes`), rows
    the factors. Colour: the gene's loading in that factor divided by its largest loading
    over factors; dot size (dot plot): the factor's share of the gene's expected counts.

    Parameters
    ----------
    adata
        AnnData after `vbsnmf.tl.nmf`.
    n_genes
        Genes per factor.
    key
        ``key_added`` of the fit.
    kind
        ``"dotplot"`` or ``"heatmap"``.
    sort_by
        How genes are ranked, as in `vbsnmf.tl.top_genes`.
    ax
        Axes to draw into; new by default.
    show, save
        As in `elbo`.

    Returns
    -------
    The axes.
    """
    if kind not in ("dotplot", "heatmap"):
        raise ValueError(f"kind must be 'dotplot' or 'heatmap', got {kind!r}")
    table = top_genes_table(adata, n_genes, key, sort_by=sort_by)
    genes = list(dict.fromkeys(table["gene"]))  # in factor order, each gene once
    info = fit_info(adata, key)
    positions = adata.var_names.get_indexer(genes)
    gene_loadings = np.asarray(adata.varm[info["varm_key"]], dtype=np.float64)
    cell_factors = np.asarray(adata.obsm[info["obsm_key"]], dtype=np.float64)
    loadings = gene_loadings[positions].T  # factors x genes
    peak = loadings.max(axis=0, keepdims=True)
    relative = np.divide(loadings, peak, out=np.zeros_like(loadings), where=peak > 0)
    n_factors = loadings.shape[0]
    plt = _pyplot()
    if ax is None:
        figure, ax = plt.subplots(
            figsize=(max(4.0, 0.2 * len(genes) + 1.5), max(2.5, 0.3 * n_factors + 1.2))
        )
    else:
        figure = ax.figure
    if kind == "heatmap":
        image = ax.imshow(relative, aspect="auto", cmap="Reds", vmin=0, vmax=1)
    else:
        share = gene_specificity(gene_loadings, cell_factors)[positions].T
        columns, rows = np.meshgrid(np.arange(len(genes)), np.arange(n_factors))
        image = ax.scatter(
            columns.ravel(),
            rows.ravel(),
            s=120 * share.ravel(),
            c=relative.ravel(),
            cmap="Reds",
            vmin=0,
            vmax=1,
            edgecolors="grey",
            linewidths=0.3,
        )
        ax.set_title("dot size: the factor's share of the gene's expected counts", fontsize=8)
        ax.set_xlim(-0.5, len(genes) - 0.5)
        ax.set_ylim(n_factors - 0.5, -0.5)
    ax.set_xticks(np.arange(len(genes)), genes, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(n_factors), [f"factor {f}" for f in range(n_factors)], fontsize=7)
    figure.colorbar(image, ax=ax, shrink=0.6, label="loading / max over factors")
    figure.tight_layout()
    return _finish(figure, ax, show, save)
