"""Loss functions of non-negative matrix factorisation, pointwise and summed, sparse-aware.

A loss is a separable divergence ``D(P, Q) = sum_ij d(p_ij, q_ij)`` with ``d >= 0`` and
``d(p, q) = 0`` iff ``p = q``. The families use these conventions:

- alpha-divergence (Amari) ``d_alpha``, with the limits alpha = 1 (Kullback-Leibler) and
  alpha = 0 (reverse Kullback-Leibler);
- beta-divergence (Minami-Eguchi) ``d_beta``: beta = 0 is Kullback-Leibler, beta = -1
  Itakura-Saito, beta = 1 half the squared Frobenius norm (scikit-learn's ``beta_loss`` is
  this beta plus one);
- alpha-beta divergence (Cichocki et al. 2011) ``d_AB`` with its limits alpha + beta = 0,
  alpha = 0, beta = 0 and alpha = beta = 0.

Every named loss except l1 is a multiple of one AB-divergence (`resolve_loss` gives the pair
and the factor), which is what the multiplicative updates and the sparse evaluation use.

Sparse evaluation (`factor_loss`): for X sparse and Q = W H the loss is the sum over the
nonzeros of ``d(x, q) - d(0, q)`` plus the zeros' part ``sum_ij d(0, q_ij)`` over every
entry. For the families where ``d(0, q) = c q**g`` that part has a closed form when g = 1
(``sum(W, 0) @ sum(H, 1)``) or g = 2 (Gram matrices); otherwise it is summed one row of Q
at a time. Where ``d(0, q)`` is undefined (Itakura-Saito, Neyman, alpha <= 0, ...) a
`ValueError` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy

from .. import _kernels

# Q is floored here at the stored entries, as scikit-learn does (its EPSILON), so that a
# loss never divides by an exactly zero reconstruction.
Q_FLOOR = float(np.finfo(np.float32).eps)

LOSS_NAMES = (
    "l1",
    "frobenius",
    "kl",
    "poisson",
    "itakura-saito",
    "hellinger",
    "pearson",
    "neyman",
    "alpha",
    "beta",
    "ab",
)
_ALIASES = {
    "kullback-leibler": "kl",
    "is": "itakura-saito",
    "euclidean": "frobenius",
    "alpha-beta": "ab",
}


# ---- pointwise divergences d(p, q), vectorised -------------------------------------------


def l1(p, q):
    """``|p - q|``."""
    return np.abs(np.subtract(p, q))


def frobenius(p, q):
    """Squared Frobenius term ``(p - q)**2``."""
    return np.square(np.subtract(p, q))


def kullback_leibler(p, q):
    """Generalised Kullback-Leibler ``p ln(p / q) - p + q`` (``0 ln 0 = 0``)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return xlogy(p, p) - xlogy(p, q) - p + q


def itakura_saito(p, q):
    """Itakura-Saito ``ln(q / p) + p / q - 1`` (undefined at p = 0: ``inf``)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(q) - np.log(p) + p / q - 1.0


def hellinger(p, q):
    """Squared Hellinger distance ``(sqrt(p) - sqrt(q))**2``."""
    return np.square(np.sqrt(p) - np.sqrt(q))


def pearson(p, q):
    """Pearson chi-squared ``(p - q)**2 / q``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.square(np.subtract(p, q)) / np.asarray(q, dtype=np.float64)


def neyman(p, q):
    """Neyman chi-squared ``(p - q)**2 / p`` (undefined at p = 0: ``inf``)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, np.square(p - q) / np.where(p > 0, p, 1.0), np.inf)


def alpha_divergence(p, q, alpha: float):
    """Amari's alpha-divergence, with the limits alpha = 1 (KL) and alpha = 0 (KL(q, p))."""
    if alpha == 1.0:
        return kullback_leibler(p, q)
    if alpha == 0.0:
        return kullback_leibler(q, p)
    return ab_divergence(p, q, alpha, 1.0 - alpha)


def beta_divergence(p, q, beta: float):
    """Minami-Eguchi beta-divergence: beta = 0 KL, beta = -1 Itakura-Saito."""
    if beta == 0.0:
        return kullback_leibler(p, q)
    if beta == -1.0:
        return itakura_saito(p, q)
    return ab_divergence(p, q, 1.0, beta)


def ab_divergence(p, q, alpha: float, beta: float):
    """Alpha-beta divergence (Cichocki, Cruces, Amari 2011) with all its limiting cases.

    ``d_AB = (a/s p**s + b/s q**s - p**a q**b) / (a b)`` (a = alpha, b = beta, s = a + b)
    and its limits at a = 0, b = 0, s = 0 and a = b = 0, evaluated by one formula that is
    continuous in (alpha, beta) and accurate near every limit
    (`vbsnmf._kernels.ab_divergence_scalar`, entry by entry, as the sparse solvers do).

    ``inf`` where undefined: p = 0 with alpha <= 0 or alpha + beta <= 0 (and q = 0 with
    beta <= 0 or alpha + beta <= 0, p > 0). ``d_AB(0, q) = q**s / (a s)``,
    ``d_AB(p, 0) = p**s / (b s)``; NaN where p or q is negative or NaN.
    """
    p, q = np.broadcast_arrays(np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64))
    value = np.empty(p.shape)
    _kernels.ab_divergence_array(
        np.ascontiguousarray(p).ravel(),
        np.ascontiguousarray(q).ravel(),
        float(alpha),
        float(beta),
        value.ravel(),
    )
    return value[()] if value.ndim == 0 else value


# ---- loss specifications ---------------------------------------------------------------


@dataclass(frozen=True)
class LossSpec:
    """A named loss as ``scale * d_AB(alpha, beta)`` (``alpha is None`` for l1).

    ``name`` is the canonical name; ``poisson`` is KL against ``diag(row totals) W H``.
    """

    name: str
    alpha: float | None
    beta: float | None
    scale: float

    @property
    def zero_power(self) -> float | None:
        """``g`` with ``d(0, q) = c q**g``, or None where ``d(0, q)`` is undefined."""
        if self.alpha is None:
            return 1.0
        if self.alpha > 0.0 and self.alpha + self.beta > 0.0:
            return self.alpha + self.beta
        return None

    @property
    def zero_coef(self) -> float:
        """``c`` with ``d(0, q) = c q**g`` (including ``scale``)."""
        if self.alpha is None:
            return 1.0
        return self.scale / (self.alpha * (self.alpha + self.beta))

    def pointwise(self, p, q):
        """``d(p, q)`` of this loss, vectorised."""
        if self.alpha is None:
            return l1(p, q)
        return self.scale * ab_divergence(p, q, self.alpha, self.beta)


def resolve_loss(loss: str, alpha: float | None = None, beta: float | None = None) -> LossSpec:
    """The `LossSpec` of a loss name and its parameters.

    Parameters
    ----------
    loss
        One of ``LOSS_NAMES`` (or an alias: ``"kullback-leibler"``, ``"is"``).
    alpha, beta
        ``alpha`` for ``"alpha"``, ``beta`` for ``"beta"`` (Minami-Eguchi convention), both for
        ``"ab"``; must be None for the other losses.

    Raises
    ------
    ValueError
        Unknown loss, or a parameter missing or given where it has no meaning.
    """
    if not isinstance(loss, str):
        raise ValueError(f"loss must be a string, one of {LOSS_NAMES}; got {loss!r}")
    name = _ALIASES.get(loss.lower(), loss.lower())
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSS_NAMES)}")
    needs = {"alpha": ("alpha",), "beta": ("beta",), "ab": ("alpha", "beta")}.get(name, ())
    given = {"alpha": alpha, "beta": beta}
    for parameter, value in given.items():
        if parameter in needs and value is None:
            raise ValueError(f"loss={name!r} needs {parameter}")
        if parameter not in needs and value is not None:
            raise ValueError(f"{parameter} has no meaning for loss={name!r}")
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
        ):
            raise TypeError(f"{parameter} must be a number, got {value!r}")
        if value is not None and not np.isfinite(value):
            raise ValueError(f"{parameter} must be finite, got {value!r}")
    fixed = {
        "l1": (None, None, 1.0),
        "frobenius": (1.0, 1.0, 2.0),
        "kl": (1.0, 0.0, 1.0),
        "poisson": (1.0, 0.0, 1.0),
        "itakura-saito": (1.0, -1.0, 1.0),
        "hellinger": (0.5, 0.5, 0.5),
        "pearson": (2.0, -1.0, 2.0),
        "neyman": (-1.0, 2.0, 2.0),
    }
    if name in fixed:
        a, b, scale = fixed[name]
    elif name == "alpha":
        a, b, scale = float(alpha), 1.0 - float(alpha), 1.0
    elif name == "beta":
        a, b, scale = 1.0, float(beta), 1.0
    else:
        a, b, scale = float(alpha), float(beta), 1.0
    return LossSpec(name, a, b, scale)


def divergence(p, q, loss: str = "kl", alpha: float | None = None, beta: float | None = None):
    """Pointwise ``d(p, q)`` of a named loss (vectorised over arrays)."""
    spec = resolve_loss(loss, alpha, beta)
    return spec.pointwise(p, q)


def total_divergence(
    P, Q, loss: str = "kl", alpha: float | None = None, beta: float | None = None
) -> float:
    """``D(P, Q) = sum_ij d(p_ij, q_ij)`` for dense P and Q of the same shape.

    Raises
    ------
    ValueError
        The loss is undefined at some entry (e.g. Itakura-Saito where P has zeros).
    """
    value = float(np.sum(divergence(np.asarray(P), np.asarray(Q), loss, alpha, beta)))
    if not np.isfinite(value):
        raise ValueError(f"loss {loss!r} is undefined at some entries of P, Q (p = 0 or q = 0)")
    return value


# ---- D(X, W H) without forming W H ------------------------------------------------------


def check_defined_at_zeros(spec: LossSpec, has_zeros: bool) -> None:
    """Raise if the data has zeros that count and the loss is undefined at p = 0."""
    if has_zeros and spec.zero_power is None:
        raise ValueError(
            f"loss {spec.name!r} (alpha={spec.alpha}, beta={spec.beta}) is undefined where "
            "the data is zero (p = 0): it needs alpha > 0 and alpha + beta > 0; use weights "
            "to exclude the zeros or choose another loss"
        )


def sum_q_power(W: np.ndarray, H: np.ndarray, power: float) -> float:
    """``sum_ij (W H)_ij**power`` over every entry; closed form for power 1 and 2."""
    if power == 1.0:
        return float(W.sum(axis=0) @ H.sum(axis=1))
    if power == 2.0:
        return float(np.sum((W.T @ W) * (H @ H.T)))
    row_sums = np.empty(W.shape[0])
    empty = np.empty((0, W.shape[1]))
    _kernels.classic_dense_power_pass(
        np.ascontiguousarray(W), np.ascontiguousarray(H.T), power - 1.0, Q_FLOOR, empty, row_sums
    )
    return float(row_sums.sum())


__all__ = [
    "LOSS_NAMES",
    "LossSpec",
    "ab_divergence",
    "alpha_divergence",
    "beta_divergence",
    "divergence",
    "frobenius",
    "hellinger",
    "itakura_saito",
    "kullback_leibler",
    "l1",
    "neyman",
    "pearson",
    "resolve_loss",
    "sum_q_power",
    "total_divergence",
]
