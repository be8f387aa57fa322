"""Choosing (alpha, beta) of the AB-divergence by score matching.

The model ``p(P) proportional to exp(-D_AB(P, Q))`` has an unknown normaliser
``Z(alpha, beta)``; score matching for non-negative data (Hyvarinen 2007) needs only the
derivative of ``log p`` in P and gives

    J = 1/beta sum p^a (p^a (p^b - q^b)^2 / (2 beta) - p^b (a + b + 1) + q^b (a + 1)),
    J = sum p^a (ln(q/p) (p^a ln(q/p) / 2 + a + 1) - 1)                  (beta = 0),

with a = alpha, b = beta. The pair minimising J is the estimate. J is evaluated over the
positive entries of P: at p = 0 every term has the factor p^alpha, which vanishes for
alpha > 0 and is outside the support of the continuous model otherwise. The sum is divided
by the number of entries (a mean; the argmin is the same).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

from .. import _kernels
from .._utils import fields_repr
from .._validation import check_flag, small_dense
from ._data import check_data
from .losses import check_factors, check_parameter

# Below this |beta| the beta = 0 limit is used: the general formula divides by beta, and is
# accurate down to here (`score_matching_objective`); the limit's error is of order beta.
_BETA_ZERO = 1e-300


@dataclass(frozen=True)
class ScoreMatchingResult:
    """Best ``alpha``, ``beta`` and ``objective``; ``surface[i, j]`` is J at
    ``(alphas[i], betas[j])`` (``inf`` where J overflows)."""

    alpha: float
    beta: float
    objective: float
    alphas: np.ndarray
    betas: np.ndarray
    surface: np.ndarray

    def __repr__(self) -> str:  # the grid's shapes, not its numbers (`_utils.fields_repr`)
        return fields_repr(self)


def score_matching_objective(p: np.ndarray, q: np.ndarray, alpha: float, beta: float) -> float:
    """Mean of the score-matching terms J over entries with ``p > 0``.

    Parameters
    ----------
    p, q
        Data and model values at the same entries (any shape); entries with ``p <= 0``
        are left out.
    alpha, beta
        The AB-divergence parameters: finite real numbers (`losses.check_parameter`).

    Raises
    ------
    TypeError
        alpha or beta is not a real number (a string, an array, a bool).
    ValueError
        p and q have different numbers of entries, or no entry of p is positive; alpha or
        beta is NaN or infinite (J was ``inf`` for them, as where it overflows).
    """
    # True was taken as 1, NaN gave inf, and an int beyond floats Python's "int too large
    # to convert to float"
    alpha, beta = check_parameter(alpha, "alpha"), check_parameter(beta, "beta")
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    if p.size != q.size:
        raise ValueError(f"p has {p.size} entries and q {q.size}: they must be paired")
    positive = p > 0
    p, q = p[positive], np.maximum(q[positive], np.finfo(np.float64).tiny)
    if p.size == 0:
        raise ValueError("score matching needs at least one positive entry of P")
    with np.errstate(over="ignore", invalid="ignore"):
        p_alpha = p**alpha
        # J = mean of p^a (p^a d^2 / 2 - (a + 1) d - p^b), d = (p^b - q^b) / b: the general
        # formula regrouped, d = ln(p / q) at b = 0 (the limit). Where p^b and q^b are
        # close, d = q^b expm1(b ln(p / q)) / b: their difference cancelled, and J lost
        # digits as 1e-16 / b (5e-7 of its value at b = 2e-10) around b = 0, KL, where the
        # refinement looks. Where they are far apart the difference is exact enough, and
        # expm1 would overflow where q^b underflows (q floored at the smallest float).
        log_ratio = np.log(p) - np.log(q)
        if abs(beta) < _BETA_ZERO:
            p_beta, gap = np.ones_like(p), log_ratio
        else:
            p_beta, q_beta = p**beta, q**beta
            exponent = beta * log_ratio
            gap = np.where(
                np.abs(exponent) < 1.0,
                q_beta * np.expm1(exponent) / beta,
                (p_beta - q_beta) / beta,
            )
        terms = p_alpha * (0.5 * p_alpha * gap**2 - (alpha + 1.0) * gap - p_beta)
        value = float(np.mean(terms))
    return value if np.isfinite(value) else np.inf


def choose_alpha_beta(
    X,
    W: np.ndarray | None = None,
    H: np.ndarray | None = None,
    *,
    Q: np.ndarray | None = None,
    alphas: np.ndarray | None = None,
    betas: np.ndarray | None = None,
    refine: bool = True,
) -> ScoreMatchingResult:
    """Minimise J(P, alpha, beta) over a grid, then locally (Nelder-Mead from the best point).

    Parameters
    ----------
    X
        The data P (n x m), dense or sparse; only its positive entries enter J.
    W, H
        Factors with ``Q = W H`` (q is computed at the positive entries only), or
    Q
        The model matrix itself (dense, X's shape).
    alphas, betas
        Grid (default ``linspace(-2, 3, 21)`` for both).
    refine
        Run the local optimiser from the best grid point.

    Returns
    -------
    ScoreMatchingResult

    Raises
    ------
    ValueError
        X negative, NaN or infinite; W and H not finite, non-negative factors of X
        (`losses.check_factors`), or Q not finite, non-negative and of X's shape; a grid
        empty or not finite.
    TypeError
        W, H or Q not an array of real numbers; a grid not of real numbers (booleans
        included); ``refine`` not True or False.
    """
    refine = check_flag(refine, "refine")  # a string such as "no" would mean True
    p, q = _values(X, W, H, Q)
    alphas = _grid(alphas, "alphas")
    betas = _grid(betas, "betas")
    surface = np.array([[score_matching_objective(p, q, a, b) for b in betas] for a in alphas])
    if not np.isfinite(surface).any():
        raise ValueError("J is not finite anywhere on the grid; narrow alphas/betas")
    best = np.unravel_index(int(np.argmin(surface)), surface.shape)
    alpha, beta, objective = alphas[best[0]], betas[best[1]], surface[best]
    if refine:
        result = minimize(
            lambda point: score_matching_objective(p, q, point[0], point[1]),
            x0=np.array([alpha, beta]),
            method="Nelder-Mead",
            options={"xatol": 1e-4, "fatol": 1e-10, "maxiter": 400},
        )
        if np.isfinite(result.fun) and result.fun < objective:
            alpha, beta, objective = float(result.x[0]), float(result.x[1]), float(result.fun)
    return ScoreMatchingResult(float(alpha), float(beta), float(objective), alphas, betas, surface)


def _grid(values, name: str) -> np.ndarray:
    """A grid of ``alphas`` or ``betas``: the default, or finite numbers, at least one."""
    if values is None:
        return np.linspace(-2.0, 3.0, 21)
    try:
        grid = np.asarray(values)
    except ValueError:  # numpy's words for a ragged sequence
        raise ValueError(f"{name} must be a 1-D grid, not a ragged sequence") from None
    # text or complex: said here, not by numpy's float(); booleans, as `check_parameter`
    # refuses them, not taken as 0 and 1
    if grid.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a 1-D grid of real numbers, got {values!r}")
    grid = grid.astype(np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)):
        raise ValueError(f"{name} must be a non-empty 1-D grid of finite numbers, got {values!r}")
    return grid


def _values(X, W, H, Q) -> tuple[np.ndarray, np.ndarray]:
    """(p, q) at the positive entries of X."""
    X = check_data(X)
    if (Q is None) == (W is None or H is None):
        raise ValueError("give either W and H, or Q")
    if Q is not None:
        Q = _model_matrix(Q)
        if Q.shape != X.shape:
            raise ValueError(f"Q has shape {Q.shape}, X has shape {X.shape}")
        if sp.issparse(X):
            rows, cols = X.nonzero()
            return X.data, Q[rows, cols]
        return X[X > 0], Q[X > 0]
    # The kernel indexes W and H by X's rows and columns without bounds checks.
    W, H = check_factors(W, H, X.shape)
    X_csr = sp.csr_matrix(X)
    q = np.empty(X_csr.nnz)
    _kernels.classic_wh_at_nonzeros(
        X_csr.indptr.astype(np.int64)[None, :],  # one column tile
        np.asarray(X_csr.indices, dtype=np.int32),
        W,
        np.ascontiguousarray(H.T),
        q,
    )
    return X_csr.data, q


def _model_matrix(Q) -> np.ndarray:
    """Q as a dense float64 array, checked as `losses.check_factors` checks W and H (J
    floors q at the smallest float, which would take a negative Q silently)."""
    if sp.issparse(Q):
        Q = small_dense(Q, "Q")
    array = np.asarray(Q)
    if array.dtype.kind not in "biuf":  # complex would lose its imaginary part silently
        raise TypeError(f"Q must be an array of real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)) or array.min(initial=0.0) < 0:
        raise ValueError("Q must be finite and non-negative (the model matrix W H)")
    return array
