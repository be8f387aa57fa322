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
and the factor), which is what the multiplicative updates and the sparse evaluation use
(Hellinger's values by its direct formula: d_AB is twice it and overflows first).

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
import scipy.sparse as sp

from .. import _kernels
from .._utils import is_integer
from .._validation import refuse_masked, small_dense

# Q is floored here at the stored entries, as scikit-learn does (its EPSILON), so that a
# loss never divides by an exactly zero reconstruction; at an entry x < 1 the floor is
# Q_FLOOR * x (`entry_floor`).
Q_FLOOR = float(np.finfo(np.float32).eps)


def entry_floor(x: np.ndarray) -> np.ndarray:
    """The floor of ``q`` at each entry ``x`` of X under a negative power or a logarithm of
    q: `Q_FLOOR` times ``min(x, 1)`` at x > 0, `Q_FLOOR` at x = 0.

    Scaled with the entry, as the losses are with the data (``d(c x, c q) = c**s d(x, q)``):
    a fixed floor above the entries of data of scale 1e-8 made the fit collapse to
    ``W H = 0``. Entries of 1 and more (counts) keep scikit-learn's floor.
    """
    return np.where(x > 0, Q_FLOOR * np.minimum(x, 1.0), Q_FLOOR)


def loss_is_floored(alpha: float | None, beta: float | None) -> bool:
    """Whether the loss ``d_AB(x, q)`` floors q at X's nonzeros (`entry_floor`): only where
    ``d(x, 0)`` is infinite (a logarithm or a negative power of q: beta <= 0 or
    alpha + beta <= 0). Where ``d(x, 0)`` is finite a floor only overstates the loss of a
    small q: the Frobenius loss of data of scale 1e-8 read 30 times ``||X||^2``. ``alpha``
    None (l1) has no singularity."""
    return alpha is not None and (beta <= 0.0 or alpha + beta <= 0.0)


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
    """Generalised Kullback-Leibler ``p ln(p / q) - p + q``: ``q`` at p = 0 (``0 ln 0 = 0``),
    ``inf`` at q = 0 < p; accurate where p and q are close."""

    def both_positive(p, q):
        value = p * _log_ratio_gap(q, p)
        # Where q > 2 p, q / p may overflow: there the terms apart (p ln(q / p) <= q - p, so
        # neither overflows where d(p, q) is finite), which cancel little (ln 2 < 1).
        far = q > 2.0 * p
        p, q = p[far], q[far]
        value[far] = (q - p) - p * _log_of_ratio(q, p)
        return value

    return _by_cases(p, q, both_positive, at_zero_p=lambda q: q, at_zero_q=_infinite)


def itakura_saito(p, q):
    """Itakura-Saito ``ln(q / p) + p / q - 1`` (undefined at p = 0 or q = 0: ``inf``);
    accurate where p and q are close."""
    return _by_cases(p, q, _log_ratio_gap, at_zero_p=_infinite, at_zero_q=_infinite)


def hellinger(p, q):
    """Squared Hellinger distance ``(sqrt(p) - sqrt(q))**2``, as
    ``((p - q) / (sqrt(p) + sqrt(q)))**2``: the difference of the roots cancels where p and q
    are close, ``p - q`` is exact there."""

    def both_positive(p, q):
        return np.square((p - q) / (np.sqrt(p) + np.sqrt(q)))

    return _by_cases(p, q, both_positive, at_zero_p=lambda q: q, at_zero_q=lambda p: p)


def pearson(p, q):
    """Pearson chi-squared ``(p - q)**2 / q``: ``q`` at p = 0 (0 at p = q = 0), ``inf`` at
    q = 0 < p."""

    def both_positive(p, q):
        # not (p - q)**2 / q: the square or the quotient can overflow where d(p, q) does not
        return np.square((p - q) / np.sqrt(q))

    return _by_cases(p, q, both_positive, at_zero_p=lambda q: q, at_zero_q=_infinite)


def neyman(p, q):
    """Neyman chi-squared ``(p - q)**2 / p`` (undefined at p = 0: ``inf``), ``p`` at q = 0."""

    def both_positive(p, q):
        # not (p - q)**2 / p: the square or the quotient can overflow where d(p, q) does not
        return np.square((p - q) / np.sqrt(p))

    return _by_cases(p, q, both_positive, at_zero_p=_infinite, at_zero_q=lambda p: p)


def _infinite(values: np.ndarray) -> np.ndarray:
    return np.full(values.shape, np.inf)


def _by_cases(p, q, both_positive, at_zero_p, at_zero_q):
    """``d(p, q)`` over the broadcast p and q, case by case as `ab_divergence` evaluates it.

    ``both_positive(p, q)`` gives it where p, q > 0, ``at_zero_p(q)`` where p = 0 <= q,
    ``at_zero_q(p)`` where q = 0 < p (each on 1-D arrays); NaN where p or q is negative or
    NaN.
    """
    p, q = np.broadcast_arrays(np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64))
    value = np.full(p.shape, np.nan)
    with np.errstate(all="ignore"):  # overflow to inf is the value where d(p, q) overflows
        positive = (p > 0) & (q > 0)
        value[positive] = both_positive(p[positive], q[positive])
        zero_p = (p == 0) & (q >= 0)
        value[zero_p] = at_zero_p(q[zero_p])
        zero_q = (q == 0) & (p > 0)
        value[zero_q] = at_zero_q(p[zero_q])
    return value[()] if value.ndim == 0 else value


def _log_of_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``ln(a / b)`` (a, b > 0): ``ln a - ln b`` only where ``a / b`` under- or overflows (a
    difference of large logarithms keeps fewer digits)."""
    with np.errstate(all="ignore"):
        ratio = a / b
        normal = (ratio >= np.finfo(np.float64).tiny) & (ratio < np.inf)
        return np.where(normal, np.log(ratio), np.log(a) - np.log(b))


# Terms of the series of u - log1p(u) below: the tail after them is under 1e-17 relative
# for |z| <= 1/3 ((1/9)**16 / 35).
_GAP_TERMS = 16


def _log_ratio_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``r - 1 - ln r`` for ``r = a / b`` (a, b > 0, 1-D), accurate where r is near 1.

    There the three terms cancel, so for r in [1/2, 2] it is ``u - log1p(u)`` with
    ``u = (a - b) / b`` (``a - b`` exact, Sterbenz) summed as
    ``u**2 / (2 + u) - 2 z**3 (1/3 + z**2/5 + z**4/7 + ...)``, ``z = u / (2 + u)`` (from
    ``log1p(u) = 2 atanh(z)``; |z| <= 1/3). Elsewhere `_log_of_ratio`.
    """
    with np.errstate(all="ignore"):
        ratio = a / b
        value = ratio - 1.0 - _log_of_ratio(a, b)
        near = (ratio >= 0.5) & (ratio <= 2.0)
        u = (a[near] - b[near]) / b[near]
        z = u / (2.0 + u)
        z_squared = z * z
        series = np.zeros_like(z)
        for k in range(_GAP_TERMS, 0, -1):
            series = series * z_squared + 1.0 / (2 * k + 1)
        value[near] = u * u / (2.0 + u) - 2.0 * z * z_squared * series
    return value


def alpha_divergence(p, q, alpha: float):
    """Amari's alpha-divergence, with the limits alpha = 1 (KL) and alpha = 0 (KL(q, p)).

    Raises
    ------
    TypeError, ValueError
        alpha is not a finite real number (`check_parameter`).
    """
    alpha = check_parameter(alpha, "alpha")
    if alpha == 1.0:
        return kullback_leibler(p, q)
    if alpha == 0.0:
        return kullback_leibler(q, p)
    return ab_divergence(p, q, alpha, 1.0 - alpha)


def beta_divergence(p, q, beta: float):
    """Minami-Eguchi beta-divergence: beta = 0 KL, beta = -1 Itakura-Saito.

    Raises
    ------
    TypeError, ValueError
        beta is not a finite real number (`check_parameter`).
    """
    beta = check_parameter(beta, "beta")
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

    Raises
    ------
    TypeError
        alpha or beta is not a real number (`check_parameter`).
    ValueError
        alpha or beta is NaN or infinite (the kernel's comparisons read NaN as "undefined"
        at p = 0 and an infinite alpha gave d(0, q) = 0); alpha, beta, s, ``alpha s`` or
        ``beta s`` is nonzero but below the smallest normal float (e.g. alpha = beta =
        1e-200): the divisions by them would be by zero.
    """
    alpha, beta = check_parameter(alpha, "alpha"), check_parameter(beta, "beta")
    _check_divisors("ab", alpha, beta)
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
        if self.name == "hellinger":
            # d_AB(1/2, 1/2) is twice the squared Hellinger distance: it overflows where the
            # distance does not (both near the largest float); the direct formula does not.
            return hellinger(p, q)
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
        if value is not None:
            check_parameter(value, parameter)
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
    if a is not None:  # l1 is no AB-divergence
        _check_divisors(name, a, b)
    return LossSpec(name, a, b, scale)


def check_parameter(value, name: str) -> float:
    """``value`` of the loss parameter ``name`` (alpha or beta) as a float: a real number,
    not a bool, and finite.

    Raises
    ------
    TypeError
        Not a real number (a string, an array, a bool).
    ValueError
        NaN or infinite, or an int beyond the float range.
    """
    if not (is_integer(value) or isinstance(value, (float, np.floating))):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond floats: np.isfinite gave numpy's TypeError
        raise ValueError(f"{name} must be finite, got one beyond floats") from None
    if not np.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _check_divisors(name: str, alpha: float, beta: float) -> None:
    """Refuse an (alpha, beta) whose divisors underflow.

    ``d_AB(0, q) = q**s / (alpha s)`` and ``d_AB(p, 0) = p**s / (beta s)`` (s = alpha +
    beta), and the multiplicative update's exponent is ``1 / alpha`` or ``1 / (alpha + beta -
    1)``: each of alpha, beta, s and these products is either exactly zero (a limit, handled
    apart) or must be a normal float, else the division by it is by zero or overflows (a
    subnormal's reciprocal exceeds the largest float).
    """
    total = alpha + beta
    # each divisor with the factors it is the product of: a product of nonzero factors
    # that is zero underflowed too
    divisors = {
        "alpha": (alpha, (alpha,)),
        "beta": (beta, (beta,)),
        "alpha + beta": (total, (total,)),
        "alpha * (alpha + beta)": (alpha * total, (alpha, total)),
        "beta * (alpha + beta)": (beta * total, (beta, total)),
    }
    tiny = np.finfo(np.float64).tiny
    for label, (value, factors) in divisors.items():
        if all(factor != 0.0 for factor in factors) and abs(value) < tiny:
            raise ValueError(
                f"loss={name!r} with alpha={alpha!r}, beta={beta!r}: {label} = {value!r} "
                f"underflows (below the smallest normal float, {tiny:.3g}), and the loss "
                "divides by it; give alpha and beta of larger magnitude, or exactly 0 for the "
                "limiting case"
            )


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
    TypeError
        P or Q is a scipy sparse matrix (use `vbsnmf.classic.factor_loss` for a sparse X
        and its factors, or pass ``P.toarray()``), or does not hold real numbers.
    ValueError
        P and Q differ in shape (no broadcasting), an entry is negative, NaN or infinite,
        or the loss is undefined at some entry (e.g. Itakura-Saito where P has zeros) or
        its sum is past the float range; an unknown loss, or ``alpha`` / ``beta`` missing
        or given where the loss has none (`resolve_loss`).
    """
    P = _dense_operand(P, "P")
    Q = _dense_operand(Q, "Q")
    if P.shape != Q.shape:
        raise ValueError(f"P has shape {P.shape} and Q has shape {Q.shape}: they must match")
    with np.errstate(over="ignore", invalid="ignore"):
        value = float(np.sum(divergence(P, Q, loss, alpha, beta)))
    if not np.isfinite(value):
        # both ways: Frobenius on entries of 1e160 overflowed, and was said to be undefined
        raise ValueError(
            f"loss {loss!r} is undefined or past the float range at some entries of P, Q "
            "(p = 0 or q = 0 where the loss needs them positive, or values too large for the "
            "loss's power: scale P and Q down)"
        )
    return value


def _dense_operand(array, name: str) -> np.ndarray:
    """``array`` as a float64 ndarray of `total_divergence`, with the checks it needs."""
    if sp.issparse(array):
        raise TypeError(
            f"{name} is a scipy sparse matrix; total_divergence takes dense arrays: use "
            f"{name}.toarray(), or vbsnmf.classic.factor_loss(X, W, H) for a sparse X"
        )
    try:
        values = np.asarray(array)
    except ValueError:  # numpy's words for a ragged sequence
        raise ValueError(f"{name} must be an array, not a ragged sequence") from None
    if values.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {values.dtype}")
    values = values.astype(np.float64, copy=False)
    if np.isnan(values).any():
        raise ValueError(f"{name} has NaN entries")
    if np.isinf(values).any():  # d(p, q) is NaN there, which read as "p = 0 or q = 0"
        raise ValueError(f"{name} has infinite entries; the divergences take finite p, q")
    if (values < 0).any():
        raise ValueError(f"{name} has negative entries; the divergences take p, q >= 0")
    return values


# ---- D(X, W H) without forming W H ------------------------------------------------------


class UndefinedAtZeroError(ValueError):
    """The data has zeros that count, and the loss is undefined at p = 0."""


def check_defined_at_zeros(spec: LossSpec, has_zeros: bool) -> None:
    """Raise `UndefinedAtZeroError` if the data has zeros that count and the loss is
    undefined at p = 0."""
    if has_zeros and spec.zero_power is None:
        raise UndefinedAtZeroError(
            f"loss {spec.name!r} (alpha={spec.alpha}, beta={spec.beta}) is undefined where "
            "the data is zero (p = 0): it needs alpha > 0 and alpha + beta > 0; use weights "
            "to exclude the zeros or choose another loss"
        )


def check_factors(W, H, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """W (n x K) and H (K x m) as float64 copies, finite and non-negative.

    Parameters
    ----------
    W, H
        The factors, dense or scipy.sparse.
    shape
        ``(n, m)`` of the X they factor, or None to check only that they multiply.

    Raises
    ------
    TypeError
        A factor does not hold real numbers, or is a masked array with masked entries.
    ValueError
        A factor is not 2-D, the shapes do not match, or an entry is negative, NaN or
        infinite.
    """
    factors = []
    for name, factor in (("W", W), ("H", H)):
        if sp.issparse(factor):  # factor-sized (n x K, K x m): dense costs nothing
            factor = small_dense(factor, name)
        # np.asarray drops the mask: its hidden values would be the factor's
        refuse_masked(factor, name, f"pass the values to use, e.g. {name}.filled(0)")
        try:
            array = np.asarray(factor)
        except ValueError:  # numpy's words for a ragged sequence
            raise ValueError(f"{name} must be a 2-D array, not a ragged sequence") from None
        if array.dtype.kind not in "biuf":
            raise TypeError(
                f"{name} must be an array of real numbers, got {type(factor).__name__} "
                f"of dtype {array.dtype}"
            )
        factors.append(np.array(array, dtype=np.float64, copy=True))
    W, H = factors
    if W.ndim != 2 or H.ndim != 2:
        raise ValueError(f"W {W.shape} and H {H.shape} must both be 2-D")
    if W.shape[1] != H.shape[0]:
        raise ValueError(f"W has {W.shape[1]} components, H has {H.shape[0]}")
    if shape is not None and (W.shape[0], H.shape[1]) != tuple(shape):
        raise ValueError(f"W {W.shape} and H {H.shape} do not factor X of shape {tuple(shape)}")
    for name, factor in (("W", W), ("H", H)):
        if not np.all(np.isfinite(factor)) or factor.min(initial=0.0) < 0:
            raise ValueError(f"{name} must be finite and non-negative")
    return W, H


def sum_q_power(W: np.ndarray, H: np.ndarray, power: float) -> float:
    """``sum_ij (W H)_ij**power`` over every entry; closed form for power 1 and 2.

    Raises
    ------
    TypeError
        ``power`` is not a real number (a string, an array, a bool: True was taken as 1).
    ValueError
        W and H are not non-negative factors that multiply (`check_factors`), or ``power``
        is not a finite number > 0.
    """
    W, H = check_factors(W, H)
    power = check_parameter(power, "power")
    if not power > 0:
        raise ValueError(f"power must be a finite number > 0, got {power!r}")
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
