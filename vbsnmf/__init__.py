"""vbsnmf: sparse variational Bayesian non-negative matrix factorisation of count data.

The engine visits only the nonzeros of the count matrix, so cost and memory grow with the
nonzeros, not with genes x cells. See ``docs/model.md`` in the repository for the model.
"""

from . import classic, datasets, io, pl, tl
from ._dask import DaskFitResult
from ._estimator import VBNMF, fit_dask, fit_svi_dask, fit_triplets
from ._model import ConvergenceWarning, VariationalParams
from ._validation import NonCountWarning
from .classic import NMF

__version__ = "0.1.0"

__all__ = [
    "NMF",
    "VBNMF",
    "ConvergenceWarning",
    "DaskFitResult",
    "NonCountWarning",
    "VariationalParams",
    "classic",
    "datasets",
    "fit_dask",
    "fit_svi_dask",
    "fit_triplets",
    "io",
    "pl",
    "tl",
]
