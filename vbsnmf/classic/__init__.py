"""Classical non-negative matrix factorisation, sparse-aware (seeds 000, 002, 003, 004).

Losses and their sparse evaluation (`losses`), multiplicative updates for every AB-family
loss with epsilon-modification, weights and factor masks, HALS, ALS, projected gradient
(OPL), interior point gradient, projected gradient descent, and the choice of
(alpha, beta) by score matching. One estimator, `NMF`, with the scikit-learn contract.

The names are imported on first use (PEP 562), as in the package's ``__init__``: the
solvers load scikit-learn, which `tl.nmf` and the command line need only for a classical
solver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# name -> (module, attribute); attribute None for the module itself
_LAZY = {
    "NMF": ("._nmf", "NMF"),
    "ScoreMatchingResult": ("._score_matching", "ScoreMatchingResult"),
    "choose_alpha_beta": ("._score_matching", "choose_alpha_beta"),
    "factor_loss": ("._data", "factor_loss"),
    "losses": (".losses", None),
    "score_matching_objective": ("._score_matching", "score_matching_objective"),
}

__all__ = [
    "NMF",
    "ScoreMatchingResult",
    "choose_alpha_beta",
    "factor_loss",
    "losses",
    "score_matching_objective",
]

if TYPE_CHECKING:  # what static tools see
    from . import losses
    from ._data import factor_loss
    from ._nmf import NMF
    from ._score_matching import (
        ScoreMatchingResult,
        choose_alpha_beta,
        score_matching_objective,
    )


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
