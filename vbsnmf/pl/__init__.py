"""Plots of an NMF fit, scanpy style: `elbo`, `factors`, `top_genes`."""

from ._plots import elbo, factors, top_genes

__all__ = ["elbo", "factors", "top_genes"]
