"""Classical non-negative matrix factorisation, sparse-aware (seeds 000, 002, 003, 004).

Losses and their sparse evaluation (`losses`), multiplicative updates for every AB-family
loss with epsilon-modification, weights and factor masks, HALS, ALS, projected gradient
(OPL), interior point gradient, projected gradient descent, and the choice of
(alpha, beta) by score matching. One estimator, `NMF`, with the scikit-learn contract.
"""

from . import losses
from ._data import factor_loss
from ._nmf import NMF
from ._score_matching import ScoreMatchingResult, choose_alpha_beta, score_matching_objective

__all__ = [
    "NMF",
    "ScoreMatchingResult",
    "choose_alpha_beta",
    "factor_loss",
    "losses",
    "score_matching_objective",
]
