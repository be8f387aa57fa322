"""scanpy-style tools: `nmf` (factorise an AnnData), `top_genes` (with `gene_specificity`,
each factor's share of a gene's expected counts), `project`, `fit_info` (the stored fit,
or an error saying to run `nmf`), `select_k` (the number of factors by held-out
likelihood), `count_split`; `SOLVERS` lists what ``nmf`` accepts.

The names are imported on first use (PEP 562), as in the package's ``__init__``: the
command line builds its options from `SOLVERS` without loading the other tools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# name -> module that defines it
_LAZY = {
    "SOLVERS": "._nmf",
    "count_split": "._split",
    "fit_info": "._stored",
    "gene_specificity": "._top_genes",
    "nmf": "._nmf",
    "project": "._project",
    "select_k": "._select_k",
    "top_genes": "._top_genes",
}

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

if TYPE_CHECKING:  # what static tools see
    from ._nmf import SOLVERS, nmf
    from ._project import project
    from ._select_k import select_k
    from ._split import count_split
    from ._stored import fit_info
    from ._top_genes import gene_specificity, top_genes


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
