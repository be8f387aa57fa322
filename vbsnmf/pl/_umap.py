"""`umap`: the UMAP of the NMF cell factors, drawn (what ``vbsnmf umap`` does)."""

from __future__ import annotations

import os

from ..tl._stored import fit_info
from ._plots import _finish


def umap(
    adata,
    *,
    key: str = "nmf",
    color: str | None = None,
    n_neighbors: int = 15,
    random_state: int = 0,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
):
    """Neighbour graph on the NMF cell factors, UMAP, and a scatter of it.

    Runs ``sc.pp.neighbors(adata, use_rep=<the fit's .obsm key>)`` and ``sc.tl.umap`` (so
    ``adata`` gains what they set: ``.obsp['distances']``, ``.obsp['connectivities']``,
    ``.obsm['X_umap']``) and draws ``sc.pl.umap`` coloured by ``color``.

    Parameters
    ----------
    adata
        AnnData after `vbsnmf.tl.nmf`.
    key
        ``key_added`` of the fit.
    color
        An ``.obs`` column or a gene; default: each cell's dominant factor, stored as
        ``.obs[key + '_dominant_factor']``.
    n_neighbors
        Neighbours per cell (at most the number of cells minus one).
    random_state
        Seed of the neighbour search and of UMAP.
    show, save
        As in the other `vbsnmf.pl` functions: ``save`` is the output path (format from its
        suffix), written atomically.

    Returns
    -------
    The matplotlib axes.
    """
    import pandas as pd
    import scanpy as sc

    info = fit_info(adata, key)
    cell_factors = adata.obsm[info["obsm_key"]]
    if color is None:
        color = f"{key}_dominant_factor"
        dominant = cell_factors.argmax(axis=1)
        adata.obs[color] = pd.Categorical(
            [f"factor {f}" for f in dominant],
            categories=[f"factor {f}" for f in range(cell_factors.shape[1])],
        )
    n_neighbors = min(n_neighbors, adata.n_obs - 1)
    sc.pp.neighbors(
        adata, n_neighbors=n_neighbors, use_rep=info["obsm_key"], random_state=random_state
    )
    sc.tl.umap(adata, random_state=random_state)
    axes = sc.pl.umap(adata, color=color, show=False, title=f"UMAP of NMF cell factors: {color}")
    return _finish(axes.figure, axes, show, save)
