"""vbsnmf: sparse variational Bayesian non-negative matrix factorisation of count data.

The engine visits only the nonzeros of the count matrix, so cost and memory grow with the
nonzeros, not with genes x cells. See ``docs/model.md`` in the repository for the model.
"""

from . import classic, datasets, io, pl, tl
from ._dask import DaskFitResult, fit_dask, fit_svi_dask
from ._estimator import VBNMF, fit_triplets
from ._tensor_estimator import VBNTF
from ._validation import NonCountWarning
from ._vb import ConvergenceWarning, VariationalParams
from .classic import NMF

__version__ = "0.1.0"

__all__ = [
    "NMF",
    "VBNMF",
    "VBNTF",
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
