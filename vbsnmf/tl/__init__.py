"""scanpy-style tools: `nmf` (factorise an AnnData), `top_genes`, `project`."""

from ._nmf import nmf
from ._project import project
from ._top_genes import gene_specificity, top_genes

__all__ = ["gene_specificity", "nmf", "project", "top_genes"]
