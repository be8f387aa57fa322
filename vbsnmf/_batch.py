"""Batch variational Bayes: coordinate ascent on all the data, in model.md's order.

A loop over the model's steps (`_model`): one pass over the nonzeros gives the statistics
for the update and, for free, the ELBO of the q it was computed under, so every entry of the
trace is the exact ELBO of a q the fit actually held.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._data import CountData
from ._model import (
    FitResult,
    GammaPrior,
    VariationalParams,
    elbo_terms,
    global_step,
    has_converged,
    shape_statistics,
    warn_not_converged,
)

IterationCallback = Callable[[int, VariationalParams, list[float]], None]


def fit_batch(
    data: CountData,
    start: VariationalParams,
    prior: GammaPrior,
    *,
    max_iter: int,
    tol: float,
    n_parts: int = 1,
    elbo_trace: list[float] | None = None,
    callback: IterationCallback | None = None,
    verbose: bool = False,
) -> FitResult:
    """Batch coordinate ascent from ``start`` until the relative ELBO change is below
    ``tol`` or ``max_iter`` iterations are done (then a `ConvergenceWarning`).

    ``elbo_trace`` continues a previous fit's trace (resume from a checkpoint of the
    parameters after ``len(elbo_trace)`` iterations); ``callback(n_iter, params, trace)``
    runs after every iteration with the ELBO of ``params`` already in ``trace``;
    ``n_parts`` is the number of parallel parts of the pass (normally the thread count).
    """
    params = start
    trace = list(elbo_trace or [])
    n_done = len(trace)  # iterations already applied to ``start``; its ELBO is trace[-1]
    converged = False
    while True:
        row_stat, col_stat, data_term = shape_statistics(data, params, n_parts)
        if n_done > len(trace):
            trace.append(elbo_terms(data_term, params, prior).value())
            if verbose:
                print(f"iteration {n_done:4d}  ELBO {trace[-1]:.10g}", flush=True)
            if callback is not None:
                callback(n_done, params, trace)
            if has_converged(trace, tol):
                converged = True
                break
        if n_done >= max_iter:
            break
        params = global_step(params, row_stat, col_stat, prior)
        n_done += 1
    if not converged and max_iter > 0:
        warn_not_converged("max_iter", max_iter, tol)
    return FitResult(params, np.asarray(trace, dtype=np.float64), len(trace), converged)
