"""vbsnmf: sparse variational Bayesian non-negative matrix factorisation of count data.

The engine visits only the nonzeros of the count matrix, so cost and memory grow with the
nonzeros, not with genes x cells. See ``docs/model.md`` in the repository for the model.

The names below are imported on first use (PEP 562): ``import vbsnmf`` itself loads
nothing heavy, so the ``vbsnmf`` command can handle Ctrl-C while numpy, scipy, Numba and
scikit-learn load (seconds on a busy machine).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from ._version import __version__ as __version__  # re-exported: vbsnmf.__version__

# name -> (module, attribute); attribute None for a subpackage.
_LAZY = {
    "NMF": (".classic", "NMF"),
    "CheckpointError": ("._checkpoint", "CheckpointError"),
    "CheckpointInUseError": ("._checkpoint", "CheckpointInUseError"),
    "CheckpointMismatchError": ("._checkpoint", "CheckpointMismatchError"),
    "VBNMF": ("._estimator", "VBNMF"),
    "VBNTF": ("._tensor_estimator", "VBNTF"),
    "ConvergenceWarning": ("._model", "ConvergenceWarning"),
    "DaskFitResult": ("._dask", "DaskFitResult"),
    "NonCountWarning": ("._validation", "NonCountWarning"),
    "VariationalParams": ("._model", "VariationalParams"),
    "classic": (".classic", None),
    "datasets": (".datasets", None),
    "fit_dask": ("._estimator", "fit_dask"),
    "fit_svi_dask": ("._estimator", "fit_svi_dask"),
    "fit_triplets": ("._estimator", "fit_triplets"),
    "io": (".io", None),
    "pl": (".pl", None),
    "tl": (".tl", None),
}

__all__ = [
    "NMF",
    "VBNMF",
    "VBNTF",
    "CheckpointError",
    "CheckpointInUseError",
    "CheckpointMismatchError",
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

if TYPE_CHECKING:  # what static tools see
    from . import classic, datasets, io, pl, tl
    from ._checkpoint import CheckpointError, CheckpointInUseError, CheckpointMismatchError
    from ._dask import DaskFitResult
    from ._estimator import VBNMF, fit_dask, fit_svi_dask, fit_triplets
    from ._model import ConvergenceWarning, VariationalParams
    from ._tensor_estimator import VBNTF
    from ._validation import NonCountWarning
    from .classic import NMF


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
