"""Multiplicative updates: Lee-Seung Frobenius and KL, the
beta-divergence, the AB-divergence update with exponent omega(alpha, beta), the
epsilon-modified update ``max(eps, ...)`` (Gillis-Glineur 2012), entry weights, factor masks,
and the Poisson form of Lee and Seung's KL update with per-sample totals.

Every named loss except l1 is ``scale * d_AB(alpha, beta)``, so one update serves all:

    W <- max(eps, W * ((w X**alpha Q**(beta-1)) H^T / (w Q**(alpha+beta-1)) H^T) ** omega)

and the same for H with X transposed. Order: W, then H, as scikit-learn's solver="mu" (the
lecture notes on the AB family update H first; the order only changes which factor sees the
initial value first).

Poisson form (rows are the samples here): ``X_ij ~ Poisson(c_i (W H)_ij)`` with
``c_i`` the row total, rows of H summing to one. It is KL on ``W~ = diag(c) W``; after each H
step the rows of H are normalised and the scale moved into ``W~`` (the course notes that
derive it drop it, which changes ``W H``; moving it keeps ``W H`` and hence the monotone
decrease). At a fixed point
the rows of ``W`` then sum to one (module proportions per sample). With epsilon the bound
is on the returned W (``diag(c) W >= epsilon c``) and H, and a module's rescaling is held
to the range that keeps both above it (`_normalise_modules`).
"""

from __future__ import annotations

import numpy as np

from ._data import ClassicData
from .losses import LossSpec

# Zero denominators of a ratio are replaced by this, as scikit-learn does (its EPSILON).
_SAFE = float(np.finfo(np.float32).eps)


def omega(alpha: float, beta: float) -> float:
    """Exponent of the AB multiplicative update (Cichocki et al. 2011).

    ``1 / (1 - beta)`` if ``beta / alpha < 1 / alpha - 1``; ``1 / alpha`` if
    ``beta / alpha`` lies in ``[1 / alpha - 1, 1 / alpha]``; ``1 / (alpha + beta - 1)`` if
    ``beta / alpha > 1 / alpha``. Negative for alpha < 0 (numerator and denominator swap
    roles there).
    """
    if alpha == 0.0:
        raise ValueError(
            "the AB multiplicative update needs alpha != 0 (alpha = 0 is the logarithmic "
            "limit, which has no power-form update); use a small alpha instead"
        )
    ratio = beta / alpha
    if ratio < 1.0 / alpha - 1.0:
        return 1.0 / (1.0 - beta)
    if ratio <= 1.0 / alpha:
        return 1.0 / alpha
    return 1.0 / (alpha + beta - 1.0)


def multiplicative_step(
    factor: np.ndarray,
    numerator: np.ndarray,
    denominator: np.ndarray,
    exponent: float,
    epsilon: float,
    mask: np.ndarray | None,
) -> np.ndarray:
    """``mask * max(epsilon, factor * (numerator / denominator) ** exponent)``.

    ``epsilon`` is a number, or a column (one bound per row of ``factor``: the Poisson
    form's ``epsilon c_i``, `fit_multiplicative`). ``numerator`` and ``denominator`` are
    scratch: overwritten (each half-step makes them
    afresh, and in place saves three factor-sized temporaries per half-step).
    """
    denominator[denominator == 0.0] = _SAFE
    if exponent < 0:
        numerator[numerator == 0.0] = _SAFE
    ratio = np.divide(numerator, denominator, out=numerator)
    if exponent != 1.0:
        ratio **= exponent
    factor = factor * ratio
    if np.ndim(epsilon) or epsilon > 0:
        np.maximum(factor, epsilon, out=factor)
    if mask is not None:
        factor *= mask
    return factor


def fit_multiplicative(
    data: ClassicData,
    spec: LossSpec,
    W: np.ndarray,
    H: np.ndarray,
    *,
    update_h: bool = True,
    epsilon: float = 0.0,
    w_mask: np.ndarray | None = None,
    h_mask: np.ndarray | None = None,
    max_iter: int = 200,
    tol: float = 1e-4,
    scale: float | None = None,
    exact: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, list[float], int, np.ndarray]:
    """Multiplicative updates until the relative change of the loss is below ``tol``;
    without ``update_h`` every row of W stops on its own loss (`still_moving`). ``scale``:
    a loss of the data's own scale for the stopping rule's floor (`converged`), or None;
    ``exact``: the loss at or below which the fit is exact and stops (`converged`).

    Returns
    -------
    W, H, loss_trace, n_iter, unsettled
        ``loss_trace[t]`` is the loss after ``t`` iterations (``loss_trace[0]``: at the
        start). For ``spec.name == "poisson"``, ``W`` is ``diag(c) W`` (the caller divides).
        ``unsettled``: per row of W, whether it stopped at ``max_iter`` before its loss (the
        whole loss, with ``update_h``) settled (`unsettled_rows`).
    """
    if spec.alpha is None:
        raise ValueError("loss 'l1' has no multiplicative update (nor another solver here)")
    alpha, beta = spec.alpha, spec.beta
    exponent = omega(alpha, beta)
    poisson = spec.name == "poisson"
    W = np.ascontiguousarray(W, dtype=np.float64)
    H_t = np.ascontiguousarray(H.T, dtype=np.float64)
    w_epsilon = epsilon
    if poisson and epsilon > 0:
        # The solver's W is diag(c) W: W >= epsilon is diag(c) W >= epsilon c, row by row.
        w_epsilon = poisson_bound(data.row_totals, epsilon)
        W = _floored(W, w_epsilon)
    if poisson and (update_h or not epsilon > 0):
        # Not with H held fixed under a bound: rows of components_ that the bound kept from
        # summing one would be rescaled, and W returned for another H.
        W, H_t = _normalise_modules(W, H_t, w_epsilon, epsilon)
    loss_trace: list[float] = []
    moving, previous, start = np.ones(W.shape[0], dtype=bool), None, None
    for _ in range(max_iter):
        numerator, denominator, row_losses = data.ab_terms(alpha, beta, W, H_t, "rows")
        row_losses *= spec.scale
        loss_trace.append(float(row_losses.sum()))
        if update_h:
            W = multiplicative_step(W, numerator, denominator, exponent, w_epsilon, w_mask)
            numerator, denominator, _ = data.ab_terms(alpha, beta, H_t, W, "cols", False)
            H_t = multiplicative_step(H_t, numerator, denominator, exponent, epsilon, h_mask)
            if poisson:
                W, H_t = _normalise_modules(W, H_t, w_epsilon, epsilon)
        else:
            if start is None:  # the rows' first losses, and each row's exact loss (that of
                start = row_losses  # twice its flat start is one of the row's size)
                doubled = data.ab_terms(alpha, beta, 2.0 * W, H_t, "rows")[2]
                exact_rows = exact_row_losses(spec.scale * doubled)
            moving = still_moving(moving, previous, row_losses, tol, start, exact_rows)
            previous = row_losses
            if not moving.any():
                break
            W[moving] = multiplicative_step(
                W[moving],
                numerator[moving],
                denominator[moving],
                exponent,
                w_epsilon[moving] if np.ndim(w_epsilon) else w_epsilon,
                None if w_mask is None else w_mask[moving],
            )
        if should_stop(loss_trace, tol, update_h, scale, exact):
            break
    n_iter = len(loss_trace)
    # The final loss by the same route as the trace (no nonzero-sized temporaries).
    unsettled = unsettled_rows(moving, loss_trace, tol, update_h, scale, exact)
    loss_trace.append(spec.scale * float(data.ab_terms(alpha, beta, W, H_t, "rows")[2].sum()))
    return W, np.ascontiguousarray(H_t.T), loss_trace, n_iter, unsettled


# A loss below this fraction of the start's (an exact factorisation, whose loss falls
# towards 0 at a steady relative rate) is settled by its change relative to the start's.
_START_FRACTION = float(np.finfo(np.float32).eps)

# Losses at most this fraction of a loss of the data's size are exact factorisations
# (`converged`, `still_moving`): float32's precision squared (residuals within float32's
# rounding of the data), far above float64's rounding of the loss (at most 6e-16 of it,
# measured) and far below any inexact fit's.
_EXACT_FRACTION = _START_FRACTION**2


def converged(
    loss_trace: list[float], tol: float, scale: float | None = None, exact: float = 0.0
) -> bool:
    """Relative change of the last two losses at most ``tol`` (`_settled`, ``loss_trace[0]``
    the start); never for a loss out of the float range (``|inf - x| <= tol * inf`` would
    read as converged).

    ``scale``, if given, is a loss of the data's own scale (`vbsnmf.classic._nmf.
    independence_loss`): the floor is taken from the smaller of it and the start's loss. A
    start far off the data's scale (``nndsvda`` on counts of 1e4, a custom start 1000 times
    too large) has a loss 1e10 times the fitted one or more, and a floor from it alone
    stopped every solver after 3 or 4 iterations at up to 11 times the converged loss.

    A last loss at most ``exact`` (`vbsnmf.classic._nmf.exact_loss`) is an exact
    factorisation, settled whatever its change: its losses are rounding, and so are their
    changes (the floor does not catch them when the start or the data's scale is itself
    exact, as on X of rank one).
    """
    if len(loss_trace) < 2:
        return False
    previous, current, start = (np.float64(loss_trace[i]) for i in (-2, -1, 0))
    if current <= exact:
        return True
    if scale is not None and np.isfinite(scale):
        start = min(start, np.float64(scale))
    return bool(_settled(previous, current, tol, start))


def _settled(previous, current, tol: float, start):
    """`converged`'s test, elementwise: finite losses whose relative change is at most
    ``tol``, relative to at least `_START_FRACTION` of the ``start`` loss (a floor of the
    data's scale: a fixed one stopped every fit of data scaled to a total loss below it
    after 2 or 3 iterations)."""
    finite = np.isfinite(previous) & np.isfinite(current)
    with np.errstate(invalid="ignore"):  # inf - inf: not finite, never settled
        change = np.abs(previous - current)
    floor = _START_FRACTION * np.abs(start)
    return finite & (change <= tol * np.maximum(np.abs(previous), floor))


def should_stop(
    loss_trace: list[float],
    tol: float,
    whole: bool = True,
    scale: float | None = None,
    exact: float = 0.0,
) -> bool:
    """The last loss out of the float range (the caller raises: further iterations would
    not bring it back), or, for a ``whole`` run (not rows stopping on their own,
    `still_moving`), `converged` (with ``scale`` and ``exact``)."""
    return not np.isfinite(loss_trace[-1]) or (whole and converged(loss_trace, tol, scale, exact))


def exact_row_losses(doubled: np.ndarray) -> np.ndarray:
    """Each row's exact loss (`still_moving`) from ``doubled``, its loss at twice its
    start: `_EXACT_FRACTION` of it, 0 (only a loss of 0 is exact) where it is out of the
    float range (a loss of high power on large values)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(np.isfinite(doubled), _EXACT_FRACTION * doubled, 0.0)


def still_moving(
    moving: np.ndarray,
    previous: np.ndarray | None,
    current: np.ndarray,
    tol: float,
    start: np.ndarray,
    exact: np.ndarray | float = 0.0,
) -> np.ndarray:
    """The rows of W that go on iterating when H is held fixed (`NMF.transform`):
    ``moving`` less the rows whose own loss changed by at most ``tol`` relative from
    ``previous`` to ``current`` (`converged`, row by row, ``start`` the rows' first losses)
    or is at most their ``exact`` loss (an exact factorisation of the row: rounding, whose
    changes no ``tol`` resolves; on X of rank one they ran to ``max_iter``).

    Given H the rows are separate problems, and a row that stops stays as it is: so a row's
    result does not depend on the rows transformed with it (a stop on the batch's loss,
    and one start for the batch, moved a row's factors by up to 10 %).
    """
    if previous is None:
        return moving
    return moving & ~(_settled(previous, current, tol, start) | (current <= exact))


def unsettled_rows(
    moving: np.ndarray,
    loss_trace: list[float],
    tol: float,
    update_h: bool,
    scale: float | None = None,
    exact: float = 0.0,
) -> np.ndarray:
    """The rows of W whose loss had not settled when the iterations stopped: with
    ``update_h`` all or none, as the whole loss's last change (`converged`, with
    ``scale`` and ``exact``); without it (`NMF.transform`) the rows still ``moving``
    (`still_moving`), each judged on its own."""
    if update_h:
        return np.full(moving.shape, not converged(loss_trace, tol, scale, exact))
    return moving.copy()


def poisson_bound(row_totals: np.ndarray, epsilon: float) -> np.ndarray:
    """The lower bound of the Poisson solver's ``diag(c) W`` for ``W >= epsilon``: the
    column ``epsilon c`` (0 in rows of total 0, where W does not enter the model)."""
    return epsilon * row_totals[:, None]


def _floored(factor: np.ndarray, bound) -> np.ndarray:
    """``factor`` raised to ``bound`` where it is nonzero (zeros are masked entries: every
    other entry is at or above the bound already, up to the rounding of a rescaling)."""
    return np.where(factor > 0, np.maximum(factor, bound), factor)


def _normalise_modules(
    W: np.ndarray, H_t: np.ndarray, w_epsilon=0.0, h_epsilon: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of H (columns of ``H_t``) to sum one, the scale moved into W: W H unchanged.

    With lower bounds (``w_epsilon``, a number or a column, for W; ``h_epsilon`` for H) a
    module's scale is held to the range that keeps both factors above their bounds: the row
    sums one where the bounds allow it (a row of H of total t > 1 divided by t could fall
    below epsilon). The factors stay feasible and W H unchanged, so the epsilon-modified
    updates stay monotone.
    """
    totals = H_t.sum(axis=0)
    totals = np.where(totals > 0, totals, 1.0)
    if not (np.ndim(w_epsilon) or w_epsilon > 0 or h_epsilon > 0):
        return W * totals, H_t / totals
    with np.errstate(divide="ignore", invalid="ignore"):
        # scale s of module k: W[:, k] s >= w_epsilon and H_t[:, k] / s >= h_epsilon at the
        # entries not masked (nonzero)
        lowest = np.where(W > 0, np.broadcast_to(w_epsilon, W.shape) / W, 0.0).max(axis=0)
        highest = np.where(H_t > 0, H_t / h_epsilon, np.inf).min(axis=0)
    scales = np.clip(totals, np.maximum(lowest, 0.0), np.maximum(highest, lowest))
    scales = np.where((scales > 0) & np.isfinite(scales), scales, 1.0)
    return _floored(W * scales, w_epsilon), _floored(H_t / scales, h_epsilon)
