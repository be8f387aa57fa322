"""Solvers for the squared Frobenius loss ``||X - W H||_F^2`` (seeds 003 and 004).

Each solver alternates a W half-step and an H half-step; a half-step of the row factor R
(W, or H transposed) sees only ``XC = X @ C`` (sparse times dense, a Numba kernel) and the
Gram matrix ``G = C^T C`` of the fixed factor C, so nothing n x m is formed:

- ``hals``: fast HALS (Cichocki-Phan), exact minimisation over one column of R at a time,
  ``R[:, k] <- max(0, R[:, k] + (XC[:, k] - R G[:, k]) / G[k, k])``; the same coordinate
  descent as scikit-learn's solver="cd" without shuffling;
- ``als``: alternating least squares with truncation, ``R <- max(0, XC G^+)``, each
  module's scale shared equally between W and H after each iteration (`balance_modules`);
- ``pg``: projected gradient with the oblique projected Landweber (OPL) step
  ``1 / rowsum(G)`` per component (``diag(rowsum(G)) >= G`` for ``G >= 0``, so the step
  minimises a separable majoriser: the loss does not increase);
- ``ipg``: interior point gradient: scaled direction ``-R / (R G) * grad``, exact line
  search, cut to ``tau = 0.99`` of the largest step that stays non-negative, per row of
  R (each row is its own non-negative least squares problem);
- ``gd``: projected gradient descent with the fixed step ``1 / L``, L the largest
  eigenvalue of G (the Lipschitz constant of the gradient: sufficient decrease).

The gradient of the half-step is ``R G - XC`` (half the loss's gradient).
"""

from __future__ import annotations

import numpy as np

from ._data import ClassicData
from ._mu import exact_row_losses, should_stop, still_moving, unsettled_rows

IPG_TAU = 0.99


def hals_step(
    R: np.ndarray,
    XC: np.ndarray,
    G: np.ndarray,
    epsilon: float = 0.0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """One sweep of exact column-wise minimisation (fast HALS).

    Parameters
    ----------
    R, XC, G
        The row factor, ``X @ C`` and ``C^T C`` of the half-step (module docstring).
    epsilon
        Lower bound of the entries of R.
    mask
        0/1 array of R's shape or None: masked entries are held at zero.

    Returns
    -------
    ndarray
        R after the sweep. Each column is the exact minimiser over ``[epsilon, inf)`` (0
        where masked) given the others, the bound and the mask applied within the column's
        update: the next columns are fitted against the values R keeps, so the loss does
        not increase (applied after the sweep, they were fitted against values then
        discarded).
    """
    R = R.copy()
    for k in range(R.shape[1]):
        if G[k, k] > 0:
            column = R[:, k] + (XC[:, k] - R @ G[:, k]) / G[k, k]
            column = np.maximum(column, epsilon)
        else:  # C's column k is zero: R's column k does not change the loss
            column = np.maximum(R[:, k], epsilon)
        if mask is not None:
            column = column * mask[:, k]
        R[:, k] = column
    return R


def als_step(R: np.ndarray, XC: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Unconstrained least squares, then negative entries set to zero."""
    return np.maximum(XC @ np.linalg.pinv(G, hermitian=True), 0.0)


def pg_step(R: np.ndarray, XC: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Projected gradient step with the OPL learning rates ``1 / rowsum(G)``."""
    row_sums = G.sum(axis=1)
    rates = np.divide(1.0, row_sums, out=np.zeros_like(row_sums), where=row_sums > 0)
    return np.maximum(R - (R @ G - XC) * rates, 0.0)


def ipg_step(R: np.ndarray, XC: np.ndarray, G: np.ndarray, epsilon: float = 0.0) -> np.ndarray:
    """Interior point gradient step (Merritt-Zhang), one step length per row.

    Given the fixed factor the loss is a sum over the rows of R, each a non-negative
    least squares problem of its own: each row takes its own exact line search and
    boundary cut, so a row's step does not depend on the other rows (`NMF.transform`).

    The boundary cut is at ``epsilon``: the step stays on ``[epsilon, inf)`` and the loss
    does not increase (cut at 0 and then projected onto ``[epsilon, inf)``, the step left
    its line search and could raise the loss). An entry at the bound moves only up, so
    the cut does not stop its row. An entry that moves down is scaled by its distance to
    the bound, ``R - epsilon`` (what ``R`` is for the bound 0): scaled by ``R``, an entry
    near the bound cut the whole row's step to a sliver of it, and the iterations stalled
    about 1 % above the optimum.
    """
    gradient = R @ G - XC
    scale_denominator = R @ G
    slack = R - epsilon
    # down as far as the bound (a masked entry, 0 below it, not at all), or up without limit;
    # still a descent direction: each entry is its negative gradient scaled by room >= 0
    room = np.where(gradient > 0, np.maximum(slack, 0.0), R)
    scaling = np.divide(room, scale_denominator, out=np.zeros_like(R), where=scale_denominator > 0)
    direction = -scaling * gradient
    curvature = np.einsum("ik,ik->i", direction @ G, direction)
    descent = -np.einsum("ik,ik->i", direction, gradient)
    curved = curvature > 0  # elsewhere the direction is zero: the row stays
    best_step = np.divide(descent, curvature, out=np.zeros_like(curvature), where=curved)
    ratios = np.divide(-slack, direction, out=np.full_like(R, np.inf), where=direction < 0)
    step = np.minimum(IPG_TAU * ratios.min(axis=1), best_step)
    return np.maximum(R + step[:, None] * direction, epsilon)


def gd_step(R: np.ndarray, XC: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Projected gradient step ``1 / L``, L the largest eigenvalue of G."""
    lipschitz = float(np.linalg.eigvalsh(G)[-1])
    if lipschitz <= 0:
        return R
    return np.maximum(R - (R @ G - XC) / lipschitz, 0.0)


STEPS = {"hals": hals_step, "als": als_step, "pg": pg_step, "ipg": ipg_step, "gd": gd_step}


def fit_frobenius(
    data: ClassicData,
    solver: str,
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
    """Alternate half-steps of ``solver`` until the relative loss change is below ``tol``
    (``scale``: the stopping rule's loss of the data's scale; ``exact``: the loss of an
    exact factorisation, which stops; `_mu.converged`).

    ``epsilon > 0`` projects onto ``[epsilon, inf)`` instead of ``[0, inf)`` after each
    half-step; masks zero the masked entries after each half-step. HALS applies both within
    each column's update (`hals_step`), where the projection after it changes nothing.
    Without ``update_h`` every row of W stops on its own loss (`still_moving`).

    Returns
    -------
    W, H, loss_trace, n_iter, unsettled
        ``loss_trace[t]``: ``||X - W H||_F^2`` after ``t`` iterations; ``unsettled`` as
        `vbsnmf.classic._mu.fit_multiplicative`'s.
    """
    if data.is_weighted:
        raise ValueError(f"entry weights are supported by solver='mu' only, not {solver!r}")
    # HALS takes the bound and the mask into each column's update (`hals_step`), IPG the
    # bound into its interior (`ipg_step`)
    if solver == "hals":

        def step(R, XC, G, mask):
            return hals_step(R, XC, G, epsilon, mask)

    elif solver == "ipg":

        def step(R, XC, G, mask):
            return ipg_step(R, XC, G, epsilon)

    else:
        plain_step = STEPS[solver]

        def step(R, XC, G, mask):
            return plain_step(R, XC, G)

    W = np.ascontiguousarray(W, dtype=np.float64)
    H_t = np.ascontiguousarray(H.T, dtype=np.float64)
    # the modules whose other factor is held at zero: by the masks, or (H fixed) a profile
    # of zeros (`_idle_at_bound`)
    w_idle = _masked_everywhere(h_mask)
    if not update_h:
        w_idle = ~H_t.any(axis=0) if w_idle is None else w_idle | ~H_t.any(axis=0)
    h_idle = _masked_everywhere(w_mask)
    loss_trace: list[float] = []
    moving, previous, start = np.ones(W.shape[0], dtype=bool), None, None
    for _ in range(max_iter):
        XC = data.data_times(H_t, "rows")
        row_losses = data.squared_residuals(W, H_t, data_times=XC)
        loss_trace.append(float(row_losses.sum()))
        if update_h:
            W = _project(
                _idle_at_bound(step(W, XC, H_t.T @ H_t, w_mask), w_idle, epsilon), epsilon, w_mask
            )
            XC = data.data_times(W, "cols")
            H_t = _project(
                _idle_at_bound(step(H_t, XC, W.T @ W, h_mask), h_idle, epsilon), epsilon, h_mask
            )
            if solver == "als":  # nothing else holds its modules' scale (`balance_modules`)
                W, H_t = balance_modules(W, H_t, epsilon)
        else:
            if start is None:  # the rows' first losses, and each row's exact loss
                start = row_losses  # (`_mu.fit_multiplicative`)
                exact_rows = exact_row_losses(data.squared_residuals(2.0 * W, H_t))
            moving = still_moving(moving, previous, row_losses, tol, start, exact_rows)
            previous = row_losses
            if not moving.any():
                break
            mask = None if w_mask is None else w_mask[moving]
            stepped = _idle_at_bound(
                step(W[moving], XC[moving], H_t.T @ H_t, mask), w_idle, epsilon
            )
            W[moving] = _project(stepped, epsilon, mask)
        if should_stop(loss_trace, tol, update_h, scale, exact):
            break
    n_iter = len(loss_trace)
    unsettled = unsettled_rows(moving, loss_trace, tol, update_h, scale, exact)
    loss_trace.append(float(data.squared_residuals(W, H_t).sum()))
    return W, np.ascontiguousarray(H_t.T), loss_trace, n_iter, unsettled


def balance_modules(
    W: np.ndarray, H_t: np.ndarray, epsilon: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """W and ``H_t`` (H transposed) with each module's scale shared equally: column k of W
    times ``s_k``, column k of ``H_t`` divided by it, ``s_k = sqrt(|H_t[:, k]| / |W[:, k]|)``
    (both columns then have one norm; 1 for a module whose column is zero in either).
    ``W H`` is unchanged, but for the entries at ``epsilon``: those stay at it (where the
    projection put them, and where ``thin`` finds them), and entries scaled below it are
    raised to it. Masked entries (zero) stay zero.

    ALS solves each half-step's least squares afresh, and its result scales inversely
    with the fixed factor's modules: nothing held a module's scale, which drifted (in 2000
    iterations a row of H grew to 1e15 times the norm of its column of W), until the Gram
    matrices' conditioning cost accuracy, and under ``epsilon`` the bound, fixed while a
    factor shrank, weighed ever more against it: the fits ended at 1.1 (``epsilon=1e-9``)
    to 3.4 (``epsilon=1e-3``) times the lowest loss of their own iterations.
    """
    w_norms = np.linalg.norm(W, axis=0)
    h_norms = np.linalg.norm(H_t, axis=0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scales = np.sqrt(h_norms / w_norms)
    usable = (w_norms > 0) & (h_norms > 0) & np.isfinite(scales) & (scales > 0)
    scales = np.where(usable, scales, 1.0)
    return _rescaled(W, scales, epsilon), _rescaled(H_t, 1.0 / scales, epsilon)


def _rescaled(factor: np.ndarray, scales: np.ndarray, epsilon: float) -> np.ndarray:
    """``factor``'s columns times ``scales``; with ``epsilon > 0`` the entries at it left
    there and the others held at or above it (zeros, masked, stay zero)."""
    scaled = factor * scales
    if epsilon > 0:
        scaled = np.where(factor <= epsilon, factor, np.maximum(scaled, epsilon))
    return scaled


def _masked_everywhere(mask: np.ndarray | None) -> np.ndarray | None:
    """Per component, whether the factor ``mask`` (n x K or m x K) holds it at zero in
    every row: the other factor's column of that component is then idle."""
    if mask is None:
        return None
    return ~mask.any(axis=0)


def _idle_at_bound(R: np.ndarray, idle: np.ndarray | None, epsilon: float) -> np.ndarray:
    """R with the ``idle`` components' columns at the bound: those whose other factor is
    held at zero (a row of H masked over every gene, a column of W over every cell, or in
    `NMF.transform` a profile of zeros).

    Such a column does not change the loss, and the Frobenius steps left it as it started:
    usage of a module of no genes, or a profile never fitted, which `NMF.transform` then
    gave new rows usage of. At the bound it is what the multiplicative updates and ALS
    make of it. Only where a mask or the fixed H holds the other factor at zero: a column
    that is zero for one half-step of a fit (clipped there) can come back, and a stale
    profile is what lets it (HALS then fits the next sweep from it).
    """
    if idle is None or not idle.any():
        return R
    R = R.copy()
    R[:, idle] = epsilon
    return R


def _project(factor: np.ndarray, epsilon: float, mask: np.ndarray | None) -> np.ndarray:
    if epsilon > 0:
        factor = np.maximum(factor, epsilon)
    if mask is not None:
        factor = factor * mask
    return np.ascontiguousarray(factor)
