"""vbsnmf: sparse variational Bayesian non-negative matrix factorisation of count data.

The engine visits only the nonzeros of the count matrix, so cost and memory grow with the
nonzeros, not with genes x cells. See ``docs/model.md`` in the repository for the model.
"""

from . import datasets
from ._estimator import VBNMF, fit_triplets
from ._validation import NonCountWarning
from ._vb import ConvergenceWarning, VariationalParams

__version__ = "0.1.0"

__all__ = [
    "VBNMF",
    "ConvergenceWarning",
    "NonCountWarning",
    "VariationalParams",
    "datasets",
    "fit_triplets",
]
