"""scanpy-style tools: `nmf` (factorise an AnnData), `top_genes`, `project`, `fit_info`
(the stored fit, or an error saying to run `nmf`); `SOLVERS` lists what ``nmf`` accepts."""

from ._nmf import SOLVERS, nmf
from ._project import project
from ._stored import fit_info
from ._top_genes import gene_specificity, top_genes

__all__ = ["SOLVERS", "fit_info", "gene_specificity", "nmf", "project", "top_genes"]
