"""scanpy-style tools: `nmf` (factorise an AnnData), `top_genes`, `project`, `fit_info`
(the stored fit, or an error saying to run `nmf`), `select_k` (the number of factors by
held-out likelihood), `count_split`; `SOLVERS` lists what ``nmf`` accepts."""

from ._nmf import SOLVERS, nmf
from ._project import project
from ._select_k import select_k
from ._split import count_split
from ._stored import fit_info
from ._top_genes import gene_specificity, top_genes

__all__ = [
    "SOLVERS",
    "count_split",
    "fit_info",
    "gene_specificity",
    "nmf",
    "project",
    "select_k",
    "top_genes",
]
