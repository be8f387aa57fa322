"""Plots of an NMF fit, scanpy style: `elbo`, `factors`, `top_genes`, `umap`."""

from ._plots import elbo, factors, top_genes
from ._umap import umap

__all__ = ["elbo", "factors", "top_genes", "umap"]
