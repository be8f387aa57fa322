"""Batch variational Bayes for Poisson-Gamma NMF, in the order of ``docs/model.md``.

The engine is orientation-free: it fits ``X`` (n_rows x n_cols) given as a `CountData`
(triplets stored CSR along one axis). Row factors are ``z`` and column factors ``w`` in
model.md's notation; the estimator in `_estimator.py` names them for AnnData (obs = rows,
var = columns).

One iteration (`vb_iteration`):

1. updateA, one pass over the nonzeros (`_kernels.update_shapes`), from the current q:
   ``row_shape = a + sum_j x phi``, ``col_shape = a + sum_i x phi``;
2. updateB: ``row_rate = b + sum_j E_old[w]`` (E[w] from before the iteration), then
   ``col_rate = b + sum_i E_new[z]``.

The ELBO of a given q needs the same pass as its update (the data term is
``sum x log sum_l exp(E[log z] + E[log w])``), so the engine computes the ELBO of q_t in
the pass that produces q_{t+1}, and one more pass at the end gives the ELBO of what it
returns. Every entry of the trace is the exact ELBO of a q the engine actually held.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.special import digamma, gammaln
from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning

from . import _kernels
from ._validation import warn_user

# Normalisers of the fast path below these fall back to log-sum-exp (see _kernels).
_TINY = {np.dtype(np.float64): 1e-200, np.dtype(np.float32): 1e-30}


class ConvergenceWarning(SklearnConvergenceWarning):
    """The fit stopped at ``max_iter`` before the relative change of its objective fell
    below ``tol``. A scikit-learn ``ConvergenceWarning`` too, so either filter catches it."""


@dataclass
class VariationalParams:
    """Parameters of q: ``q(z_il) = Gamma(row_shape[i, l], row_rate[l])`` and
    ``q(w_jl) = Gamma(col_shape[j, l], col_rate[l])``."""

    row_shape: np.ndarray
    row_rate: np.ndarray
    col_shape: np.ndarray
    col_rate: np.ndarray

    def copy(self) -> VariationalParams:
        return VariationalParams(*(np.array(a, copy=True) for a in self.as_tuple()))

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.row_shape, self.row_rate, self.col_shape, self.col_rate

    @property
    def row_mean(self) -> np.ndarray:
        return self.row_shape / self.row_rate

    @property
    def col_mean(self) -> np.ndarray:
        return self.col_shape / self.col_rate


@dataclass
class CountData:
    """A count matrix as CSR along its ``major`` axis (0 = rows, 1 = columns).

    ``chunks`` cuts the major axis into ranges of about equal nonzeros, one per parallel
    task; ``log_factorial`` is the constant ``sum_n lgamma(x_n + 1)``.
    """

    shape: tuple[int, int]
    major: int
    indptr: np.ndarray
    indices: np.ndarray
    counts: np.ndarray
    log_factorial: float = field(default=0.0)

    @property
    def nnz(self) -> int:
        return int(self.counts.shape[0])

    def chunk_bounds(self, n_chunks: int) -> np.ndarray:
        """Major-axis boundaries of ``n_chunks`` ranges with about equal nonzeros."""
        n_major = self.shape[self.major]
        n_chunks = max(1, min(n_chunks, n_major))
        targets = np.linspace(0, self.nnz, n_chunks + 1)
        bounds = np.searchsorted(self.indptr, targets, side="left").astype(np.int64)
        bounds[0], bounds[-1] = 0, n_major
        return np.maximum.accumulate(bounds)

    @classmethod
    def from_csr(cls, matrix: sp.csr_matrix | sp.csr_array, major: int, shape) -> CountData:
        """Wrap a canonical CSR matrix whose rows are the ``major`` axis of ``shape``."""
        counts = matrix.data
        data = cls(
            shape=(int(shape[0]), int(shape[1])),
            major=major,
            indptr=matrix.indptr,
            indices=matrix.indices,
            counts=counts,
        )
        data.log_factorial = float(_kernels.log_factorial_sum(counts, 1 << 16))
        return data


def as_count_data(matrix, counts_dtype=np.float64) -> CountData:
    """Canonical CSR of ``matrix`` (already validated) along its longer axis.

    The longer axis is major so that the per-chunk accumulators, one n_minor x K slab per
    thread, are on the shorter axis.
    """
    matrix = sp.csr_array(matrix) if not sp.issparse(matrix) else matrix
    shape = matrix.shape
    major = 0 if shape[0] >= shape[1] else 1
    csr = sp.csr_array(matrix if major == 0 else matrix.T)  # may share the caller's arrays
    if not csr.has_canonical_format or not np.all(csr.data):
        # Sorting, summing duplicates and dropping zeros work in place: never on the
        # caller's matrix.
        csr = csr.copy()
        csr.sum_duplicates()
        csr.eliminate_zeros()
    if csr.data.dtype != counts_dtype:
        csr.data = csr.data.astype(counts_dtype)
    return CountData.from_csr(csr, major, shape)


def expected_log(shape: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """``E[log z] = digamma(shape) - log(rate)`` for Gamma(shape, rate)."""
    return digamma(shape) - np.log(rate)


def gamma_kl(shape, rate, prior_shape: float, prior_rate: float) -> float:
    """``sum KL(Gamma(shape, rate) || Gamma(prior_shape, prior_rate))`` over all entries."""
    shape = np.asarray(shape, dtype=np.float64)
    rate = np.broadcast_to(np.asarray(rate, dtype=np.float64), shape.shape)
    kl = (
        (shape - prior_shape) * digamma(shape)
        - gammaln(shape)
        + gammaln(prior_shape)
        + prior_shape * (np.log(rate) - np.log(prior_rate))
        + shape * (prior_rate - rate) / rate
    )
    return float(kl.sum())


def _scaled_exp(elog: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``exp(elog)`` row-wise divided by its maximum, and the row maxima (log scale)."""
    logmax = elog.max(axis=1)
    return np.exp(elog - logmax[:, None]), logmax


def side_moments(shape: np.ndarray, rate: np.ndarray) -> tuple[np.ndarray, ...]:
    """What the kernel needs of one side of q: ``E[log]``, ``exp(E[log])`` divided by its
    row maximum (padded with zero columns by `_kernels.pad_components`), and that maximum
    (log scale)."""
    elog = expected_log(shape, rate).astype(shape.dtype, copy=False)
    scaled, logmax = _scaled_exp(elog)
    return elog, _kernels.pad_components(scaled.astype(shape.dtype, copy=False)), logmax


def shape_statistics(
    data: CountData, params: VariationalParams, n_chunks: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """updateA's pass: ``sum_j x phi`` (rows), ``sum_i x phi`` (columns) and the data term
    ``sum_n x_n log sum_l exp(E[log z] + E[log w]) - lgamma(x_n + 1)`` under ``params``."""
    return _pass(
        data,
        side_moments(params.row_shape, params.row_rate),
        side_moments(params.col_shape, params.col_rate),
        n_chunks,
    )


def _pass(data: CountData, row_moments, col_moments, n_chunks: int):
    """`shape_statistics` from each side's `side_moments`."""
    major_elog, major_scaled, major_logmax = (row_moments, col_moments)[data.major]
    minor_elog, minor_scaled, minor_logmax = (row_moments, col_moments)[1 - data.major]
    dtype = major_elog.dtype
    bounds = data.chunk_bounds(n_chunks)
    n_components = minor_elog.shape[1]
    major_stat = np.empty_like(major_scaled)
    minor_partial = np.empty((len(bounds) - 1, *minor_scaled.shape), dtype=dtype)
    data_partial = np.zeros(len(bounds) - 1, dtype=np.float64)
    _kernels.update_shapes(
        data.indptr,
        data.indices,
        data.counts,
        bounds,
        major_scaled,
        major_logmax,
        major_elog,
        minor_scaled,
        minor_logmax,
        minor_elog,
        _TINY[np.dtype(dtype)],
        _kernels.minor_block_rows(minor_scaled.shape[1]),
        major_stat,
        minor_partial,
        data_partial,
    )
    minor_stat = np.ascontiguousarray(minor_partial.sum(axis=0)[:, :n_components])  # fixed order
    major_stat = np.ascontiguousarray(major_stat[:, :n_components])
    stats = (major_stat, minor_stat) if data.major == 0 else (minor_stat, major_stat)
    return stats[0], stats[1], float(data_partial.sum()) - data.log_factorial


def elbo_rest(params: VariationalParams, prior_shape: float, prior_rate: float) -> float:
    """The ELBO without its data term: ``- sum_l (sum_i E[z_il])(sum_j E[w_jl])`` minus the
    KL divergences of q from the prior on both sides."""
    expected_product = float(params.row_mean.sum(axis=0) @ params.col_mean.sum(axis=0))
    return (
        -expected_product
        - gamma_kl(params.row_shape, params.row_rate, prior_shape, prior_rate)
        - gamma_kl(params.col_shape, params.col_rate, prior_shape, prior_rate)
    )


def elbo(
    data: CountData, params: VariationalParams, prior_shape: float, prior_rate: float, n_chunks=1
) -> float:
    """The ELBO of ``params`` (nats), with the responsibilities at their optimum."""
    _, _, data_term = shape_statistics(data, params, n_chunks)
    return data_term + elbo_rest(params, prior_shape, prior_rate)


def apply_update(
    params: VariationalParams,
    row_stat: np.ndarray,
    col_stat: np.ndarray,
    prior_shape: float,
    prior_rate: float,
) -> VariationalParams:
    """updateA's shapes from the pass statistics, then updateB in model.md's order."""
    dtype = params.row_shape.dtype
    row_rate = (prior_rate + params.col_mean.sum(axis=0)).astype(dtype)  # E_old[w]
    row_shape = (prior_shape + row_stat).astype(dtype, copy=False)
    col_shape = (prior_shape + col_stat).astype(dtype, copy=False)
    col_rate = (prior_rate + (row_shape / row_rate).sum(axis=0)).astype(dtype)  # E_new[z]
    return VariationalParams(row_shape, row_rate, col_shape, col_rate)


def vb_iteration(
    data: CountData, params: VariationalParams, prior_shape: float, prior_rate: float, n_chunks=1
) -> tuple[VariationalParams, float]:
    """One batch iteration; returns the new parameters and the ELBO of the *old* ones."""
    row_stat, col_stat, data_term = shape_statistics(data, params, n_chunks)
    old_elbo = data_term + elbo_rest(params, prior_shape, prior_rate)
    return apply_update(params, row_stat, col_stat, prior_shape, prior_rate), old_elbo


def random_init(
    data: CountData, n_components: int, rng: np.random.Generator, dtype=np.float64
) -> VariationalParams:
    """Random q whose mean product matches the data's mean count.

    Shapes are ``1 + U(0, 1)`` so every component starts distinct; rates put
    ``E[z] = E[w] = sqrt(mean / K)``, so ``sum_l E[z] E[w]`` is the mean count.
    """
    n_rows, n_cols = data.shape
    mean_count = max(float(data.counts.sum()) / (n_rows * n_cols), 1e-12)
    rate = 1.5 / np.sqrt(mean_count / n_components)
    row_shape = 1.0 + rng.random((n_rows, n_components))
    col_shape = 1.0 + rng.random((n_cols, n_components))
    full = np.full(n_components, rate)
    return VariationalParams(
        row_shape.astype(dtype), full.astype(dtype), col_shape.astype(dtype), full.astype(dtype)
    )


def has_converged(trace, tol: float) -> bool:
    """The stopping rule of every VB fit: the last two ELBOs differ by at most ``tol``
    relative to the earlier one."""
    return len(trace) >= 2 and abs(trace[-1] - trace[-2]) <= tol * abs(trace[-2])


@dataclass
class FitResult:
    """What `fit_vb` returns: the final q, its ELBO trace (one value per iteration, the
    ELBO of the parameters after that iteration), and whether ``tol`` was met."""

    params: VariationalParams
    elbo_trace: np.ndarray
    n_iter: int
    converged: bool


def fit_vb(
    data: CountData,
    init: VariationalParams,
    *,
    prior_shape: float,
    prior_rate: float,
    max_iter: int,
    tol: float,
    n_chunks: int = 1,
    elbo_trace: list[float] | None = None,
    callback: Callable[[int, VariationalParams, list[float]], None] | None = None,
    verbose: bool = False,
) -> FitResult:
    """Batch coordinate ascent from ``init`` until the relative ELBO change is below ``tol``.

    ``elbo_trace`` continues a previous fit's trace (resume from a checkpoint of the
    parameters after ``len(elbo_trace)`` iterations); ``callback(n_iter, params, trace)``
    runs after every iteration with the ELBO of ``params`` already in ``trace``.
    """
    params = init
    trace = list(elbo_trace or [])
    n_done = len(trace)  # iterations already applied to ``init``; its ELBO is trace[-1]
    converged = False
    while True:
        row_stat, col_stat, data_term = shape_statistics(data, params, n_chunks)
        if n_done > len(trace):
            trace.append(data_term + elbo_rest(params, prior_shape, prior_rate))
            if verbose:
                print(f"iteration {n_done:4d}  ELBO {trace[-1]:.10g}", flush=True)
            if callback is not None:
                callback(n_done, params, trace)
            if has_converged(trace, tol):
                converged = True
                break
        if n_done >= max_iter:
            break
        params = apply_update(params, row_stat, col_stat, prior_shape, prior_rate)
        n_done += 1
    if not converged and max_iter > 0:
        warn_user(
            f"VB stopped after max_iter={max_iter} iterations before the relative ELBO "
            f"change fell below tol={tol}; raise max_iter or tol.",
            ConvergenceWarning,
        )
    return FitResult(params, np.asarray(trace, dtype=np.float64), len(trace), converged)


def fit_rows(
    data: CountData,
    col_shape: np.ndarray,
    col_rate: np.ndarray,
    *,
    prior_shape: float,
    prior_rate: float,
    max_iter: int,
    tol: float,
    n_chunks: int = 1,
    init_shape: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """q(z) of the rows of ``data`` with q(w) held fixed (``transform``, projection of new
    cells, the local step of cell-minibatch SVI).

    The rate ``b + sum_j E[w_jl]`` does not change, so coordinate ascent alternates the
    responsibilities and the shapes; it stops when the row-side ELBO (data term, expected
    product, KL of q(z)) changes by less than ``tol`` relative, or after ``max_iter``
    passes. Starts from ``init_shape`` (not modified) or else ``shape = a + 1`` for every
    row, so the result is deterministic.
    """
    dtype = col_shape.dtype
    n_rows, n_components = data.shape[0], col_shape.shape[1]
    col_shape = np.asarray(col_shape, dtype=dtype)
    col_rate = np.asarray(col_rate, dtype=dtype)
    col_mean_sum = (col_shape / col_rate).sum(axis=0)
    row_rate = (prior_rate + col_mean_sum).astype(dtype)
    col_moments = side_moments(col_shape, col_rate)  # fixed: computed once
    if init_shape is None:
        row_shape = np.full((n_rows, n_components), prior_shape + 1.0, dtype=dtype)
    else:
        row_shape = np.array(init_shape, dtype=dtype)  # a copy: the caller's stays
    previous = None
    for _ in range(max_iter):
        row_stat, _, data_term = _pass(
            data, side_moments(row_shape, row_rate), col_moments, n_chunks
        )
        current = data_term - float((row_shape / row_rate).sum(axis=0) @ col_mean_sum)
        current -= gamma_kl(row_shape, row_rate, prior_shape, prior_rate)
        if previous is not None and abs(current - previous) <= tol * abs(previous):
            break
        previous = current
        row_shape = (prior_shape + row_stat).astype(dtype, copy=False)
    return row_shape, row_rate


__all__ = [
    "ConvergenceWarning",
    "CountData",
    "FitResult",
    "VariationalParams",
    "apply_update",
    "as_count_data",
    "elbo",
    "fit_rows",
    "fit_vb",
    "random_init",
]
