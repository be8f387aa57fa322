"""Plots of an NMF fit, drawn by scanpy where scanpy has the plot: `elbo`, `factors`
(`sc.pl.embedding`), `top_genes` (`sc.pl.dotplot`), `umap` (`sc.pl.umap`)."""

from ._plots import elbo, factors, top_genes
from ._umap import umap

__all__ = ["elbo", "factors", "top_genes", "umap"]
