"""Plots of an NMF fit, drawn by scanpy where scanpy has the plot: `elbo`, `factors`
(`sc.pl.embedding`), `top_genes` (`sc.pl.dotplot`), `umap` (`sc.pl.umap`); `select_k`
(the K grid of `vbsnmf.tl.select_k`)."""

from ._plots import elbo, factors, select_k, top_genes
from ._umap import umap

__all__ = ["elbo", "factors", "select_k", "top_genes", "umap"]
