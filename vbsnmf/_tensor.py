"""Poisson tensor factorisation by variational Bayes: the model of ``docs/model.md``
("Tensors") for a D-way count tensor given by its nonzero entries.

    y_n = sum_l u_nl,   u_nl ~ Poisson(prod_d v^(d)_{i_nd, l}),   v^(d)_il ~ Gamma(a, b)

with q(v^(d)_il) = Gamma(shape^(d)[i, l], rate^(d)[l]). The matrix engine (`_batch`) is the
case D = 2 (mode 0 = rows ``z``, mode 1 = columns ``w``), and this module gives its ELBO
trace from the same start. One iteration (`update_modes` after `shape_statistics`):

1. updateA, one pass over the nonzeros (`_kernels.tensor_update_shapes`) from the current
   q: ``phi_nl`` proportional to ``exp(sum_d E[log v^(d)_{i_nd, l}])`` gives every mode's
   statistic ``sum_{n: i_nd = i} y_n phi_nl`` and the ELBO's data term;
2. modes d = 0, 1, ..., D - 1 in turn: ``shape^(d) = a + stat^(d)`` and
   ``rate^(d) = b + prod_{e != d} sum_i E[v^(e)_il]``, the column sums of the modes
   before d taken from their new q and those after d from their old one. Each step is the
   exact optimum of its block given the others, so the ELBO never decreases; for D = 2
   this is model.md's matrix order (row rate from the old column means, column rate from
   the new row means).

The model's pieces are the matrix engine's, from `_model`, one mode ("side") at a time:
`_model.side_shape` and `_model.side_rate` (a mode's rate takes the product of the other
modes' column sums where a matrix side takes the other side's), `_model.side_terms` (a
mode's column sums and KL), `_model.side_moments` (the tables of the pass),
`_model.random_shapes` and `_model.start_rate` (the start), `_model.has_converged` and
`_model.warn_not_converged` (the stopping rule). Under the learned prior
(`_model.HierarchicalPrior`; batch VB and the slices form of SVI) each mode is a side of
the matrix model with its own scales: `_model.update_side_learned`,
`_model.learn_hyperparameters`, the learned start, and `fix_gauge`, the matrix gauge for
D modes; the slices form is `_svi`'s cells form for D modes.

The ELBO of q_t comes out of the pass that produces q_{t+1}, as in `_batch.fit_batch`: every
entry of a trace is the exact ELBO of a q the engine held. `fit_batch_accelerated` runs the
matrix engine's SQUAREM (`_batch.squarem`) on this pass and step.

Stochastic VB (`fit_svi`) in two forms, both blending with ``rho_t = min(1, (t + tau)^-kappa)``
(t in epochs, as `_svi.learning_rate`; stopping rule `_svi.svi_has_converged`):

- ``"slices"``: minibatches of slices of one mode (the *local* mode, by default the
  longest). Each batch's local factors are fitted to convergence with the other modes
  fixed (`fit_local`), then every other mode takes a natural-gradient step with the
  batch's statistics scaled by n_local / |batch|. Its full-ELBO evaluation refits every
  slice's local factors, as the matrix cells form does.
- ``"nonzeros"``: minibatches of nonzeros, all of q global: statistics scaled by N / S
  and exact rates (the matrix "textbook" form).

In both, the global modes step one after another in mode order (`_step_modes`), each rate
from the current column sums of the others, so that with all the data in one batch and
``rho = 1`` a step is the batch sweep. The slices form is the default: see docs/model.md
for the measurement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product

import numpy as np
from scipy.special import digamma

from . import _kernels, _model
from ._batch import AcceleratedState, plain_ascent, squarem, trace_arrays
from ._checkpoint import (
    CheckpointError,
    check_accelerated_progress,
    check_elbo_iter,
    check_scale_sums,
    check_step_statistics,
    check_svi_progress,
    checked_trace,
    last_iteration,
    rounding_of_elbo,
)
from ._model import GammaPrior
from ._quoting import quoted_path
from ._svi import (
    close_owed_epoch,
    end_of_epoch,
    evaluations_judged,
    holding,
    learning_rate,
    progress_from_arrays,
    progress_to_arrays,
    relearn_global_side,
    steps_per_epoch,
    warn_if_not_converged,
)
from ._svi import default_batch_size as matrix_default_batch_size
from ._svi import default_n_epochs as matrix_default_n_epochs
from ._utils import fields_repr
from ._validation import combine_fingerprints

SVI_FORMS = ("slices", "nonzeros")


# -- data and parameters ------------------------------------------------------------------
@dataclass
class TensorParams:
    """Parameters of q: ``q(v^(d)_il) = Gamma(shapes[d][i, l], rates[d][l])``; under the
    learned prior the rates are per entry, ``rates[d][i, l]``, and ``scales[d]`` holds q of
    mode d's scales and its learned hyperparameters (`_model.ScaleState`; None under the
    fixed prior)."""

    shapes: list[np.ndarray]
    rates: list[np.ndarray]
    scales: list[_model.ScaleState] | None = None

    def __repr__(self) -> str:  # shapes, not every number (`_utils.fields_repr`)
        return fields_repr(self)

    @property
    def n_modes(self) -> int:
        return len(self.shapes)

    def copy(self) -> TensorParams:
        scales = None if self.scales is None else [scale.copy() for scale in self.scales]
        return TensorParams([s.copy() for s in self.shapes], [r.copy() for r in self.rates], scales)

    def as_tuple(self) -> tuple[np.ndarray, ...]:
        """Every mode's shapes and rates, mode by mode (for D = 2 the matrix q's
        ``row_shape, row_rate, col_shape, col_rate``)."""
        return tuple(a for pair in zip(self.shapes, self.rates) for a in pair)

    def positive_arrays(self) -> list[np.ndarray]:
        """`as_tuple`, then every mode's scales and hyperparameters: what SQUAREM moves in
        log space (`_batch.squarem`), in `_model.VariationalParams.positive_arrays`' order."""
        arrays = list(self.as_tuple())
        for scale in self.scales or []:
            arrays += [scale.shape, scale.rate, scale.factor_shape]
            arrays.append(np.array([scale.prior_shape, scale.prior_mean]))
        return arrays

    def with_positive_arrays(self, arrays: list[np.ndarray]) -> TensorParams:
        """A q of this structure and dtype from `positive_arrays`' list."""
        dtype = self.shapes[0].dtype
        n_modes = self.n_modes
        main = [np.asarray(a).astype(dtype, copy=False) for a in arrays[: 2 * n_modes]]
        scales = None
        if self.scales is not None:
            rest = arrays[2 * n_modes :]
            scales = [
                _model.ScaleState.extrapolated(shape, rate, factor, pair)
                for shape, rate, factor, pair in zip(*(rest[i::4] for i in range(4)))
            ]
        return TensorParams(main[0::2], main[1::2], scales)

    def means(self) -> list[np.ndarray]:
        """Posterior means ``E[v^(d)]`` (n_d x K), one per mode."""
        return [shape / rate for shape, rate in zip(self.shapes, self.rates)]

    def column_sums(self) -> list[np.ndarray]:
        """``sum_i E[v^(d)_il]`` (K,), one per mode."""
        return [(shape / rate).sum(axis=0) for shape, rate in zip(self.shapes, self.rates)]


@dataclass
class TensorData:
    """The nonzeros of a count tensor sorted by its ``major`` mode, then by the others.

    ``indptr`` (n_major + 1) delimits each major slice's nonzeros; ``minor_rows`` holds,
    for each other mode in the order of ``minor_modes`` (longest first: the kernel walks
    the first in cache blocks), an array of every nonzero's row in the stacked tables of
    those modes (index plus `minor_offsets`). ``log_factorial`` is
    ``sum_n lgamma(y_n + 1)``.
    """

    shape: tuple[int, ...]
    major: int
    minor_modes: tuple[int, ...]
    indptr: np.ndarray
    minor_rows: tuple[np.ndarray, ...]
    counts: np.ndarray
    log_factorial: float = 0.0

    @property
    def n_modes(self) -> int:
        return len(self.shape)

    @property
    def nnz(self) -> int:
        return int(self.counts.shape[0])

    @property
    def minor_offsets(self) -> np.ndarray:
        """Start of each minor mode's rows in the stacked tables, and their total."""
        sizes = [self.shape[d] for d in self.minor_modes]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def chunk_bounds(self, n_chunks: int) -> np.ndarray:
        """Major-slice boundaries of ``n_chunks`` ranges with about equal nonzeros."""
        n_major = self.shape[self.major]
        n_chunks = max(1, min(n_chunks, n_major))
        targets = np.linspace(0, self.nnz, n_chunks + 1)
        bounds = np.searchsorted(self.indptr, targets, side="left").astype(np.int64)
        bounds[0], bounds[-1] = 0, n_major
        return np.maximum.accumulate(bounds)

    def subset(self, positions: np.ndarray) -> TensorData:
        """The nonzeros at sorted ``positions``, in a tensor of the same shape."""
        n_major = self.shape[self.major]
        major_of = np.searchsorted(self.indptr, positions, side="right") - 1
        indptr = np.zeros(n_major + 1, dtype=np.int64)
        np.cumsum(np.bincount(major_of, minlength=n_major), out=indptr[1:])
        return self._with(indptr, positions, self.shape)

    def slices(self, slices: np.ndarray) -> TensorData:
        """The nonzeros of the sorted major ``slices``, in a tensor whose major mode has
        ``len(slices)`` slices (renumbered in order)."""
        starts = self.indptr[slices]
        lengths = self.indptr[slices + 1] - starts
        indptr = np.zeros(len(slices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        positions = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        shape = list(self.shape)
        shape[self.major] = len(slices)
        return self._with(indptr, positions, tuple(shape))

    def _with(self, indptr, positions, shape) -> TensorData:
        counts = self.counts[positions]
        return TensorData(
            shape=shape,
            major=self.major,
            minor_modes=self.minor_modes,
            indptr=indptr,
            minor_rows=tuple(rows[positions] for rows in self.minor_rows),
            counts=counts,
            log_factorial=float(_kernels.log_factorial_sum(counts, 1 << 16)),
        )


def as_tensor_data(
    coords: np.ndarray, counts: np.ndarray, shape: tuple[int, ...], major: int | None = None
) -> TensorData:
    """`TensorData` of validated coordinates (nnz x D, in range) and counts (non-negative,
    finite): sorted, duplicates summed, zeros dropped.

    ``major`` defaults to the longest mode (the first of equals), so the per-chunk slabs of
    the kernel are on the shorter ones; for D = 2 this is the matrix engine's choice. The
    other modes follow longest first (the first of equals first).
    """
    shape = tuple(int(n) for n in shape)
    n_modes = len(shape)
    major = int(np.argmax(shape)) if major is None else int(major)
    minor_modes = sorted((d for d in range(n_modes) if d != major), key=lambda d: -shape[d])
    coords = np.asarray(coords, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.float64)
    # np.lexsort: the last key is the primary one.
    order = np.lexsort([coords[:, d] for d in reversed(minor_modes)] + [coords[:, major]])
    coords, counts = coords[order], counts[order]
    if coords.shape[0] > 1:
        starts = np.flatnonzero(np.any(coords[1:] != coords[:-1], axis=1)) + 1
        starts = np.concatenate([[0], starts])
        if starts.size < coords.shape[0]:  # duplicates: sum them
            # a sum beyond float64 is refused by the caller (`_check_largest_count`) as a
            # count of inf: no numpy warning first, which warnings as errors would raise
            with np.errstate(over="ignore"):
                counts = np.add.reduceat(counts, starts)
            coords = coords[starts]
    keep = counts != 0
    if not np.all(keep):
        coords, counts = coords[keep], counts[keep]
    offsets = np.concatenate([[0], np.cumsum([shape[d] for d in minor_modes])])
    row_dtype = np.int32 if offsets[-1] < 2**31 else np.int64
    minor_rows = tuple(
        (coords[:, d] + offsets[m]).astype(row_dtype) for m, d in enumerate(minor_modes)
    )
    indptr = np.zeros(shape[major] + 1, dtype=np.int64)
    np.cumsum(np.bincount(coords[:, major], minlength=shape[major]), out=indptr[1:])
    return TensorData(
        shape=shape,
        major=major,
        minor_modes=tuple(minor_modes),
        indptr=indptr,
        minor_rows=minor_rows,
        counts=counts,
        log_factorial=float(_kernels.log_factorial_sum(counts, 1 << 16)),
    )


def data_fingerprint(data: TensorData) -> str:
    """The fingerprint of the tensor's nonzeros (`_kernels.tensor_fingerprint`), formatted
    as `_validation.data_fingerprint` formats a matrix's: what a checkpoint records of its
    data. For D = 2 it is the matrix's."""
    fingerprint = _kernels.tensor_fingerprint(
        data.indptr,
        data.minor_rows,
        np.asarray(data.minor_modes, dtype=np.int64),
        data.minor_offsets,
        data.major,
        data.counts,
    )
    return combine_fingerprints(int(fingerprint))


# -- the pass over the nonzeros -----------------------------------------------------------
def mode_moments(shape: np.ndarray, rate: np.ndarray) -> tuple[np.ndarray, ...]:
    """The tensor kernel's tables of one mode: ``E[log]`` (its log-space path), then
    `_model.side_moments`' ``exp(E[log])`` over its row maximum (padded) and that maximum."""
    scaled, logmax, _, _ = _model.side_moments(shape, rate)
    elog = digamma(shape) - np.log(np.asarray(rate, dtype=np.float64))
    elog = elog.astype(shape.dtype, copy=False)
    return elog, scaled, logmax


def stack_moments(moments: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """The `_model.side_moments` of several modes as one stacked table each (the kernel's
    minor tables: ``E[log]``, scaled ``exp(E[log])``, row maxima)."""
    return tuple(np.concatenate([m[part] for m in moments]) for part in range(3))


def _pass(data: TensorData, major_moments, minor_moments, n_chunks: int):
    """The kernel's pass from the major mode's `_model.side_moments` and the minor modes'
    `stack_moments`; returns ``(stats per mode in mode order, data term)``."""
    major_elog, major_scaled, major_logmax = major_moments
    minor_elog, minor_scaled, minor_logmax = minor_moments
    dtype = major_elog.dtype
    n_components = major_elog.shape[1]
    bounds = data.chunk_bounds(n_chunks)
    major_stat = np.empty_like(major_scaled)
    minor_partial = np.empty((len(bounds) - 1, *minor_scaled.shape), dtype=dtype)
    data_partial = np.zeros(len(bounds) - 1, dtype=np.float64)
    _kernels.tensor_update_shapes(
        data.indptr,
        data.minor_rows,
        data.counts,
        bounds,
        major_scaled,
        major_logmax,
        major_elog,
        minor_scaled,
        minor_logmax,
        minor_elog,
        _model._TINY[np.dtype(dtype)],
        data.shape[data.minor_modes[0]],
        _kernels.minor_block_rows(minor_scaled.shape[1], minor_scaled.dtype.itemsize),
        major_stat,
        minor_partial,
        data_partial,
    )
    minor_stat = minor_partial.sum(axis=0)  # in chunk order: reproducible
    offsets = data.minor_offsets
    stats: list[np.ndarray] = [None] * data.n_modes  # type: ignore[list-item]
    stats[data.major] = np.ascontiguousarray(major_stat[:, :n_components])
    for m, d in enumerate(data.minor_modes):
        stats[d] = np.ascontiguousarray(minor_stat[offsets[m] : offsets[m + 1], :n_components])
    return stats, float(data_partial.sum()) - data.log_factorial


def shape_statistics(
    data: TensorData, params: TensorParams, n_chunks: int = 1
) -> tuple[list[np.ndarray], float]:
    """updateA's pass: ``sum y phi`` per mode (n_d x K each) and the data term
    ``sum_n y_n log sum_l exp(sum_d E[log v^(d)]) - lgamma(y_n + 1)`` under ``params``."""
    moments = [mode_moments(s, r) for s, r in zip(params.shapes, params.rates)]
    minor = stack_moments([moments[d] for d in data.minor_modes])
    return _pass(data, moments[data.major], minor, n_chunks)


# -- the model ----------------------------------------------------------------------------
def _product_except(column_sums: list[np.ndarray], skip) -> np.ndarray:
    """``prod_{e not in skip} column_sums[e]`` (K,), in mode order."""
    skip = {skip} if isinstance(skip, (int, np.integer)) else set(skip)
    product = None
    for e, sums in enumerate(column_sums):
        if e not in skip:
            product = sums if product is None else product * sums
    return np.ones_like(column_sums[0]) if product is None else product


def update_modes(
    params: TensorParams, stats: list[np.ndarray], prior: _model.Prior
) -> TensorParams:
    """updateA's shapes from the pass statistics, then the rates mode by mode in order, each
    from the current column sums of the other modes (new before it, old after it).

    Under the learned prior each mode's q and its scales' q follow in the same order
    (`_model.update_side_learned`), then every mode's hyperparameters are learned and the
    scales are pinned (`fix_gauge`), as `_model.global_step` does for two sides."""
    dtype = params.shapes[0].dtype
    column_sums = params.column_sums()
    shapes, rates = [], []
    if isinstance(prior, _model.HierarchicalPrior):
        scales = []
        for d in range(params.n_modes):
            shape, rate, scale, column_sums[d] = _model.update_side_learned(
                stats[d], params.scales[d], _product_except(column_sums, d), dtype
            )
            shapes.append(shape)
            rates.append(rate)
            scales.append(scale)
        scales = [
            _model.learn_hyperparameters(_model.scale_sums(shape, rate, scale), scale, prior)
            for shape, rate, scale in zip(shapes, rates, scales)
        ]
        return fix_gauge(TensorParams(shapes, rates, scales))
    for d in range(params.n_modes):
        rate = _model.side_rate(prior, _product_except(column_sums, d), dtype)
        shape = _model.side_shape(prior, stats[d], dtype)
        column_sums[d] = (shape / rate).sum(axis=0)
        shapes.append(shape)
        rates.append(rate)
    return TensorParams(shapes, rates)


def gauge(scales: list[_model.ScaleState]) -> tuple[list[float], float]:
    """`fix_gauge`'s ``s_d`` of every mode (its rates of q(v) are divided by ``s_d``) and
    the common prior mean G it leaves: for D = 2 `_model.gauge`'s ``s`` and ``1 / s``,
    else ``b'_d / G`` with G the geometric mean of the b'_d."""
    if len(scales) == 2:
        factor, prior_mean = _model.gauge(scales[0], scales[1])
        return [factor, 1.0 / factor], prior_mean
    prior_means = np.array([scale.prior_mean for scale in scales])
    middle = float(np.exp(np.log(prior_means).mean()))
    return [scale.prior_mean / middle for scale in scales], middle


def fix_gauge(params: TensorParams) -> TensorParams:
    """`_model.fix_gauge` for D modes: the learned prior's ELBO is unchanged by
    ``v^(d) -> s_d v^(d), xi^(d) -> xi^(d) / s_d, b'_d -> b'_d / s_d`` with ``prod_d s_d =
    1`` (the likelihood sees the product of the modes, each prior term v xi and xi / b'), so
    each step pins every b'_d to their geometric mean G (``s_d = b'_d / G``, `gauge`).
    For D = 2 it is `_model.fix_gauge`, the matrix engine's arithmetic."""
    if params.n_modes == 2:
        pair = _model.fix_gauge(
            _model.VariationalParams(
                params.shapes[0], params.rates[0], params.shapes[1], params.rates[1], *params.scales
            )
        )
        return TensorParams(
            [pair.row_shape, pair.col_shape],
            [pair.row_rate, pair.col_rate],
            [pair.row_scale, pair.col_scale],
        )
    factors, middle = gauge(params.scales)
    rates, scales = [], []
    for rate, scale, factor in zip(params.rates, params.scales, factors):
        rate, scale = _model.rescale_side(rate, scale, factor, middle)
        rates.append(rate)
        scales.append(scale)
    return TensorParams(params.shapes, rates, scales)


def expected_total(params: TensorParams) -> float:
    """``sum over all entries of the tensor of sum_l prod_d E[v^(d)_{i_d l}]``, which is
    ``sum_l prod_d sum_i E[v^(d)_il]``: the total term, without visiting an entry."""
    return float(_product_except(params.column_sums(), ()).sum())


def elbo_rest(params: TensorParams, prior: _model.Prior) -> float:
    """The ELBO without its data term: minus the total term ``sum_l prod_d sum_i
    E[v^(d)_il]``, minus every mode's KL (`_model.side_terms` gives both of a mode; under
    the learned prior the KL of q(v, xi) from p(v | xi) p(xi))."""
    scales = params.scales or [None] * params.n_modes
    sides = [
        _model.side_terms(s, r, prior, scale)
        for s, r, scale in zip(params.shapes, params.rates, scales)
    ]
    value = -float(_product_except([mean_sum for mean_sum, _ in sides], ()).sum())
    for _, kl in sides:
        value -= kl
    return value


def elbo(data: TensorData, params: TensorParams, prior: _model.Prior, n_chunks: int = 1) -> float:
    """The ELBO of ``params`` (nats), with the responsibilities at their optimum."""
    _, data_term = shape_statistics(data, params, n_chunks)
    return data_term + elbo_rest(params, prior)


def mode_totals(data: TensorData) -> list[np.ndarray]:
    """Every mode's totals ``sum_{n: i_nd = i} y_n`` (n_d,), in mode order, in float64:
    `_kernels.csr_totals` once per minor mode (into the stacked tables' rows), so nothing
    of the size of the nonzeros is made."""
    totals = [None] * data.n_modes
    offsets = data.minor_offsets
    major, stacked = np.empty(data.shape[data.major]), np.empty(int(offsets[-1]))
    for m, d in enumerate(data.minor_modes):
        _kernels.csr_totals(data.indptr, data.minor_rows[m], data.counts, major, stacked)
        totals[d] = stacked[offsets[m] : offsets[m + 1]].copy()
    totals[data.major] = major
    return totals


def random_start(
    data: TensorData,
    n_components: int,
    entropy: int,
    dtype=np.float64,
    start: int = 0,
    prior: _model.Prior | None = None,
) -> TensorParams:
    """Random q whose mean rate matches the tensor's mean count (start ``start`` of
    ``entropy``).

    Mode d's shapes are ``1 + U(0, 1)`` (mean 1.5) drawn as `_model.random_shapes` draws
    side d, and every rate is `_model.start_rate`'s ``1.5 / (mean / K)^(1/D)``, so
    ``E[v^(d)_il]`` is about ``(mean / K)^(1/D)`` and ``sum_l prod_d E[v^(d)]`` about the
    mean count ``sum y / prod_d n_d`` (floored, the start's expected total bounded:
    `_model.start_factor_mean`). Under the learned ``prior`` each index's rates come
    from its total instead (`_model.learned_start_rates` for D modes: the start's mean is
    the independence fit divided by ``K^(D - 1)``; a tensor without counts:
    `learned_start_total`) with its scales
    at their optimum (`_model.learned_start_scale`). For D = 2 this is
    `_model.random_start`, bitwise, under either prior.
    """
    total = float(data.counts.sum())
    shapes = [
        _model.random_shapes(entropy, d, 0, n_rows, n_components, dtype, start)
        for d, n_rows in enumerate(data.shape)
    ]
    if not isinstance(prior, _model.HierarchicalPrior):
        rate = _model.start_rate(data.shape, total, n_components, dtype)
        return TensorParams(shapes, [rate.copy() for _ in data.shape])
    n_modes = data.n_modes
    total = learned_start_total(data, n_components)
    rates, scales = [], []
    for shape, totals in zip(shapes, mode_totals(data)):
        rate = _model.learned_start_rates(totals, total, n_components, dtype, n_sides=n_modes)
        rates.append(rate)
        scales.append(
            _model.learned_start_scale(shape, rate, totals, total, prior, n_sides=n_modes)
        )
    return TensorParams(shapes, rates, scales)


def learned_start_total(data: TensorData, n_components: int) -> float:
    """The grand total T the learned prior's start divides each index's total by
    (`_model.learned_start_rates`): the tensor's, or for a tensor of 3 or more modes
    without counts the T that puts every factor's mean where the fixed prior's start puts
    it (`_model.start_factor_mean`, bounded). Each index's total is then 1
    (`_model.TotalsSummary.floor`), so its factors' mean is ``1 / (K T^((D - 1) / D))``;
    from T's floor of 1e-12 that start expected some 1e49 counts of a 4 x 4 x 4 x 4 x 4
    tensor, beyond float32, and the fit ended in a FloatingPointError. A matrix keeps
    `VBNMF`'s start."""
    total = float(data.counts.sum())
    n_modes = data.n_modes
    if total > 0 or n_modes == 2:
        return total
    mean = _model.start_factor_mean(data.shape, total, n_components)
    return (1.0 / (n_components * mean)) ** (n_modes / (n_modes - 1))


def learned_slices_start(
    data: TensorData,
    n_components: int,
    entropy: int,
    dtype,
    prior: _model.HierarchicalPrior,
) -> TensorSVIState:
    """The slices form's start under the learned prior (`_svi.init_cells_state` for D
    modes, the local mode ``data.major``): every other mode as `random_start` draws it;
    the local mode where `fit_local` starts, shapes `_model.local_start_shape` and q(xi)
    at the prior mean b' of `_model.start_scale_template`, with the rates that go with
    them; the sums its hyperparameters are learned from; the minibatch generator."""
    local, n_modes = data.major, data.n_modes
    total = learned_start_total(data, n_components)
    totals = mode_totals(data)
    shapes, rates, scales = [None] * n_modes, [None] * n_modes, [None] * n_modes
    for d, n_rows in enumerate(data.shape):
        if d == local:
            continue
        shapes[d] = _model.random_shapes(entropy, d, 0, n_rows, n_components, dtype)
        rates[d] = _model.learned_start_rates(
            totals[d], total, n_components, dtype, n_sides=n_modes
        )
        scales[d] = _model.learned_start_scale(
            shapes[d], rates[d], totals[d], total, prior, n_sides=n_modes
        )
    template = _model.start_scale_template(
        _model.totals_summary(totals[local]), total, n_components, prior, n_sides=n_modes
    )
    n_local = data.shape[local]
    q_shape = np.full(n_local, template.prior_shape + template.factor_shape.sum())
    scales[local] = template.with_q(q_shape, q_shape / template.prior_mean)
    shapes[local] = _model.local_start_shape(prior, n_local, n_components, dtype)
    sums = [None if d == local else (shapes[d] / rates[d]).sum(axis=0) for d in range(n_modes)]
    rates[local] = (scales[local].mean[:, None] + _product_except(sums, local)).astype(dtype)
    state = TensorSVIState(TensorParams(shapes, rates, scales), _model.minibatch_generator(entropy))
    state.local_sums = _model.scale_sums(shapes[local], rates[local], scales[local])
    state.held = _model.held_prior(prior) is not None
    return state


def fixed_slices_start(
    data: TensorData, n_components: int, entropy: int, dtype, prior: GammaPrior
) -> TensorSVIState:
    """The slices form's start under the fixed prior (`_svi.init_cells_state` for D modes,
    the local mode ``data.major``): every other mode as `random_start` draws it; the local
    mode where `fit_local` starts, shapes `_model.local_start_shape` (a + 1), with the
    rates that go with them; the minibatch generator.

    The local mode started at `random_start`'s random shapes, where the cells form of
    `VBNMF` starts its cells at a + 1: each minibatch's local fit then began elsewhere, so
    at D = 2 with ``tol=0`` the two ran their ``max_iter`` local passes from different
    starts and differed (300 x 80 counts, K = 3, batches of 50: by 0.6 % of the ELBO after
    two epochs of 20 local passes)."""
    params = random_start(data, n_components, entropy, dtype)
    local = data.major
    params.shapes[local] = _model.local_start_shape(prior, data.shape[local], n_components, dtype)
    others = _product_except(params.column_sums(), local)
    params.rates[local] = _model.side_rate(prior, others, dtype)
    return TensorSVIState(params, _model.minibatch_generator(entropy))


# -- batch VB -----------------------------------------------------------------------------
@dataclass
class TensorFitResult:
    """The final q, its ELBO trace (the ELBO after each iteration, kept q or evaluated
    epoch) and the iteration (pass, epoch) of each value, the number of iterations
    (epochs) and whether ``tol`` was met."""

    params: TensorParams
    elbo_trace: np.ndarray
    elbo_iter: np.ndarray
    n_iter: int
    converged: bool


def fit_batch(
    data: TensorData,
    init: TensorParams,
    *,
    prior: _model.Prior,
    max_iter: int,
    tol: float,
    n_chunks: int = 1,
    elbo_trace: list[float] | None = None,
    elbo_iter: list[int] | None = None,
    callback: Callable[[int, TensorParams, list[float]], None] | None = None,
    verbose: bool = False,
    hold_shapes: bool = False,
) -> TensorFitResult:
    """Batch coordinate ascent from ``init`` until `_model.has_converged` (relative ELBO change
    at most ``tol``) or ``max_iter`` iterations: `_batch.plain_ascent` (the matrix's loop)
    on the tensor's pass and step (`tensor_model`), with its hold of a random start's factor
    shapes (``hold_shapes``), its continued ``elbo_trace`` and ``elbo_iter`` and its
    ``callback``.
    """
    scored, step = tensor_model(data, prior, n_chunks)
    params, trace, iters, converged = plain_ascent(
        init, scored, step, prior, max_iter=max_iter, tol=tol, elbo_trace=elbo_trace,
        elbo_iter=elbo_iter, hold_shapes=hold_shapes, callback=callback, verbose=verbose,
    )  # fmt: skip
    return TensorFitResult(params, *trace_arrays(trace, iters), len(trace), converged)


def tensor_model(data: TensorData, prior: _model.Prior, n_chunks: int = 1):
    """The tensor model's ``(scored, step)`` for `_batch.plain_ascent` and
    `_batch.squarem`: one pass (`shape_statistics`, with `elbo_rest` the exact ELBO of its
    q) and the coordinate-ascent step (`update_modes`)."""

    def scored(params: TensorParams):
        stats, data_term = shape_statistics(data, params, n_chunks)
        return stats, data_term + elbo_rest(params, prior)

    def step(params: TensorParams, stats, step_prior: _model.Prior) -> TensorParams:
        return update_modes(params, stats, step_prior)

    return scored, step


def fit_batch_accelerated(
    data: TensorData,
    state: AcceleratedState,
    *,
    prior: _model.Prior,
    n_chunks: int = 1,
    **options,
) -> tuple[TensorFitResult, AcceleratedState]:
    """`fit_batch` accelerated by SQUAREM: `_batch.squarem` on this module's pass
    (`shape_statistics` and `elbo_rest`) and step (`update_modes`), as `VBNMF` accelerates
    the matrix (for D = 2 the same arithmetic); ``options`` are `_batch.squarem`'s
    (``max_iter``, which bounds the passes, ``tol``, ``callback``, ...). The trace never
    decreases; ``state`` (`_batch.start_accelerated`, or a checkpoint's) is where the fit
    goes on from and, returned, where it stands."""
    state = squarem(state, *tensor_model(data, prior, n_chunks), prior, **options)
    return TensorFitResult(*state.outcome()), state


# -- stochastic VB ------------------------------------------------------------------------
@dataclass
class TensorSVISettings:
    """The knobs of `fit_svi` (see `VBNTF` for their meaning)."""

    prior: GammaPrior
    form: str
    batch_size: int
    tau: float
    kappa: float
    n_epochs: int
    tol: float
    local_max_iter: int
    local_tol: float
    n_chunks: int = 1
    eval_every: int = 1  # the full ELBO every this many epochs and the last (`_svi.end_of_epoch`)
    verbose: bool = False


@dataclass
class TensorSVIState:
    """What an SVI fit needs to continue bitwise: parameters, counters, trace, generator.

    For the slices form the local mode's shapes are every slice's latest local optimum,
    where its next local fit starts; under the learned prior so are its rates and scales,
    and ``local_sums`` are the sums over all slices that the local mode's hyperparameters
    are learned from, kept up to date step by step (`_svi.SVIState.cell_sums`).
    ``step_statistics``: every mode's statistics from the last evaluation while the exact
    step of the other modes they give (`full_data_step`) is still to be taken
    (`_svi.SVIState.gene_statistics`). ``held``: `_svi.SVIState.held`."""

    params: TensorParams
    rng: np.random.Generator
    step: int = 0
    epoch: int = 0
    elbo_trace: list[float] = field(default_factory=list)
    elbo_iter: list[int] = field(default_factory=list)
    converged: bool = False
    finished: bool = False
    local_sums: _model.ScaleSums | None = None
    step_statistics: list[np.ndarray] | None = None
    held: bool = False

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays and JSON metadata for `_checkpoint.Checkpointer.save`."""
        arrays = params_to_arrays(self.params)
        for d, stat in enumerate(self.step_statistics or []):
            arrays[f"step_stat_{d}"] = stat
        return progress_to_arrays(self, arrays, self.local_sums, LOCAL_SUMS)

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], meta: dict, eval_every: int
    ) -> TensorSVIState:
        """The inverse of `to_arrays` (``eval_every``: `_svi.progress_from_arrays`'s)."""
        progress, local_sums = progress_from_arrays(arrays, meta, LOCAL_SUMS, eval_every)
        n_stats = sum(1 for name in arrays if name.startswith("step_stat_"))
        statistics = [arrays[f"step_stat_{d}"] for d in range(n_stats)] or None
        return cls(
            params=params_from_arrays(arrays),
            local_sums=local_sums,
            step_statistics=statistics,
            **progress,
        )


# Checkpoint keys of the slices form's stored sums (as `_svi.CELL_SUMS`).
LOCAL_SUMS = ("local_sums", "local_sums_factor_log")


SCALE_ARRAYS = ("scale_shape", "scale_rate", "factor_shape", "scale_prior")


def params_to_arrays(params: TensorParams) -> dict[str, np.ndarray]:
    """``shape_0, rate_0, shape_1, ...`` for a checkpoint; under the learned prior also
    every mode's ``scale_shape_d, scale_rate_d, factor_shape_d`` and ``scale_prior_d``
    (a', b')."""
    arrays = {}
    for d, (shape, rate) in enumerate(zip(params.shapes, params.rates)):
        arrays[f"shape_{d}"], arrays[f"rate_{d}"] = shape, rate
    for d, scale in enumerate(params.scales or []):
        arrays[f"scale_shape_{d}"], arrays[f"scale_rate_{d}"] = scale.shape, scale.rate
        arrays[f"factor_shape_{d}"] = scale.factor_shape
        arrays[f"scale_prior_{d}"] = np.array([scale.prior_shape, scale.prior_mean])
    return arrays


def params_from_arrays(arrays: dict[str, np.ndarray]) -> TensorParams:
    """The inverse of `params_to_arrays`."""
    n_modes = sum(1 for name in arrays if name.startswith("shape_"))
    scales = None
    if "scale_shape_0" in arrays:
        scales = [
            _model.ScaleState(
                arrays[f"scale_shape_{d}"],
                arrays[f"scale_rate_{d}"],
                arrays[f"factor_shape_{d}"],
                float(arrays[f"scale_prior_{d}"][0]),
                float(arrays[f"scale_prior_{d}"][1]),
            )
            for d in range(n_modes)
        ]
    return TensorParams(
        [arrays[f"shape_{d}"] for d in range(n_modes)],
        [arrays[f"rate_{d}"] for d in range(n_modes)],
        scales,
    )


def check_checkpoint(arrays: dict[str, np.ndarray], meta: dict, config: dict, path) -> None:
    """Raise `_checkpoint.CheckpointError` unless a loaded checkpoint is a state the fit of
    ``config`` could have saved (`_checkpoint.check_state` for tensors): every mode's
    shapes (n_d x K) and rate (K,) present, of the fit's dtype, positive and finite; a
    finite ELBO trace and the iterations of its values (`_checkpoint.check_elbo_iter`);
    the ``finished`` flag; for SVI whole counters and a readable
    generator state; under the learned prior rates per entry and every mode's scales and
    hyperparameters (and for SVI the local mode's sums), under the fixed prior none of
    them (read when present, they failed with numpy's unpacking error); for an
    accelerated fit two such q (``current_`` and ``kept_``) and whole SQUAREM counters.
    Its config was checked first, so a kernel never reads a damaged one."""
    k, dtype = config["n_components"], np.dtype(config["dtype"])
    learned = config.get("prior") == "hierarchical"

    def damaged(what: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {quoted_path(path)} is damaged: {what}; remove it to start over"
        )

    accelerated = config.get("accelerate") is True  # what the fit saved, whatever is there
    prefixes = ("current_", "kept_") if accelerated else ("",)
    n_modes = len(config["shape"])
    for prefix in prefixes:  # `params_from_arrays` counts the modes and finds the scales
        modes = {f"{prefix}shape_{d}" for d in range(n_modes)}
        extra = sorted(n for n in arrays if n.startswith(prefix + "shape_") and n not in modes)
        if extra:
            raise damaged(f"it holds {extra[0]}, and the tensor has {n_modes} modes")
        if not learned and any(name.startswith(prefix + "scale_") for name in arrays):
            raise damaged(f"it holds {prefix}scale arrays, which the fixed prior has not")
    if not learned and any(name in LOCAL_SUMS for name in arrays):  # read when present
        raise damaged(
            "it holds sums over slices of the learned prior, which the fixed prior has not"
        )
    for prefix, (d, n_rows) in product(prefixes, enumerate(config["shape"])):
        wanted = [(f"shape_{d}", (n_rows, k), dtype)]
        wanted.append((f"rate_{d}", (n_rows, k) if learned else (k,), dtype))
        if learned:
            wanted += [
                (f"scale_shape_{d}", (n_rows,), np.float64),
                (f"scale_rate_{d}", (n_rows,), np.float64),
                (f"factor_shape_{d}", (k,), np.float64),
                (f"scale_prior_{d}", (2,), np.float64),
            ]
        for name, shape, kind in ((prefix + name, shape, kind) for name, shape, kind in wanted):
            array = arrays.get(name)
            if array is None:
                raise damaged(f"{name} is missing")
            if array.shape != shape or array.dtype != np.dtype(kind):
                raise damaged(f"{name} is not {np.dtype(kind)} of shape {shape}")
            if not np.all(np.isfinite(array)) or not np.all(array > 0):
                raise damaged(f"{name} holds values that are not positive and finite")
    if learned and config["solver"] == "svi":
        for name, shape in zip(LOCAL_SUMS, ((3,), (k,))):
            array = arrays.get(name)
            if array is None:
                raise damaged(f"{name} is missing")
            if array.shape != shape or not np.all(np.isfinite(array)):
                raise damaged(f"{name} is not a finite array of shape {shape}")
        if config.get("svi_mode") is not None:  # the slices form: sums over its slices
            n_slices = config["shape"][config["svi_mode"]]
            check_scale_sums(arrays[LOCAL_SUMS[0]], n_slices, "slices", damaged)
    check_step_statistics(
        arrays,
        "step_stat_",
        {f"step_stat_{d}": (n_rows, k) for d, n_rows in enumerate(config["shape"])},
        damaged,
    )
    batch = config["solver"] == "batch"
    trace = checked_trace(arrays, meta, damaged, batch, rounding_of_elbo(config))
    if accelerated:
        check_accelerated_progress(meta, trace, damaged)
    if config["solver"] == "svi":
        can_hold = config["prior"] == "hierarchical" and config.get("prior_shape") is None
        check_svi_progress(meta, trace, damaged, can_hold)
    last = last_iteration(meta, trace, accelerated, config["solver"] == "svi")
    check_elbo_iter(arrays, trace, last, damaged)


def _blend(old: np.ndarray, new: np.ndarray, rho: float, name: str) -> np.ndarray:
    """``(1 - rho) old + rho new`` (linear in the Gamma natural parameters), checked finite."""
    blended = ((1.0 - rho) * old + rho * new).astype(old.dtype, copy=False)
    if not np.all(np.isfinite(blended)):
        raise FloatingPointError(
            f"an SVI step produced non-finite {name}; raise tau or use a larger batch_size"
        )
    return blended


def fit_local(
    batch: TensorData,
    params: TensorParams,
    local_shape: np.ndarray,
    prior: _model.Prior,
    max_iter: int,
    tol: float,
    n_chunks: int = 1,
    local_scale: _model.ScaleState | None = None,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], float, _model.ScaleState | None]:
    """q of the local (major) mode's slices in ``batch`` with every other mode of
    ``params`` fixed, from ``local_shape`` (not modified); under the learned prior with
    ``local_scale``'s q(xi) of those slices and the mode's hyperparameters
    (`_model.fit_rows` for D modes).

    The other modes' column sums do not change, so coordinate ascent alternates the
    responsibilities and the local q (the shapes; under the learned prior the shapes and
    rates, then the scales, `_model.update_side_learned`) until the local ELBO (data term,
    the batch's share of the total term, the local prior terms) changes by at most ``tol``
    relative, or ``max_iter`` updates. Returns ``(local_shape, local_rate, stats,
    data_term, local_scale)``, the statistics and data term under the returned local q.
    """
    local = batch.major
    dtype = local_shape.dtype
    others = _product_except(params.column_sums(), local)
    learned = local_scale is not None
    if learned:
        local_rate = (local_scale.mean[:, None] + others).astype(dtype)
    else:
        local_rate = _model.side_rate(prior, others, dtype)
    minor = stack_moments(
        [mode_moments(params.shapes[d], params.rates[d]) for d in batch.minor_modes]
    )
    shape = np.array(local_shape, dtype=dtype)
    previous = None
    for iteration in range(max_iter + 1):
        stats, data_term = _pass(batch, mode_moments(shape, local_rate), minor, n_chunks)
        local_mean_sum, local_kl = _model.side_terms(shape, local_rate, prior, local_scale)
        current = data_term - float((local_mean_sum * others).sum()) - local_kl
        if iteration == max_iter or (
            previous is not None and _model.has_converged([previous, current], tol)
        ):
            break
        previous = current
        if learned:
            shape, local_rate, local_scale, _ = _model.update_side_learned(
                stats[local], local_scale, others, dtype
            )
        else:
            shape = _model.side_shape(prior, stats[local], dtype)
    return shape, local_rate, stats, data_term, local_scale


def _step_modes(
    params: TensorParams,
    modes,
    stats: list[np.ndarray],
    scale: float,
    column_sums: list[np.ndarray],
    rho: float,
    prior: GammaPrior | None,
) -> TensorParams:
    """The global step of SVI on ``modes``, in order: each mode blended from its q towards
    ``a + scale * stat`` and ``b + prod_{e != d} column_sums[e]``, then its column sum
    refreshed, so later modes see it (with ``rho = 1`` this is `update_modes`' sweep).

    Under the learned prior (``prior`` None, ``params.scales`` set) the targets are
    ``a_l + scale * stat`` and ``E[xi_i] + prod_{e != d} column_sums[e]`` (`_svi.step_cols`);
    `learned_global_update` then relearns each mode's prior."""
    shapes, rates = list(params.shapes), list(params.rates)
    scales = None if params.scales is None else list(params.scales)
    dtype = shapes[0].dtype
    for d in modes:
        others = _product_except(column_sums, d)
        if scales is None:
            target_rate = _model.side_rate(prior, others, dtype)
            target_shape = _model.side_shape(prior, scale * stats[d], dtype)
        else:
            target_shape = scales[d].factor_shape + scale * stats[d]
            target_rate = scales[d].mean[:, None] + others
        shapes[d] = _blend(params.shapes[d], target_shape, rho, f"shape of mode {d}")
        rates[d] = _blend(params.rates[d], target_rate, rho, f"rate of mode {d}")
        column_sums[d] = (shapes[d] / rates[d]).sum(axis=0)
    return TensorParams(shapes, rates, scales)


def svi_step_slices(
    data: TensorData,
    slices: np.ndarray,
    params: TensorParams,
    rho: float,
    settings,
    state: TensorSVIState | None = None,
) -> TensorParams:
    """One slices-form step: local fit of ``slices`` (written back into the local mode's
    shapes, in place), then `_step_modes` on every other mode with the batch's statistics
    and local column sums scaled by ``n_local / |batch|``.

    Under the learned prior (``state`` needed, whose ``params`` these are) the local fit
    starts from the slices' stored q and scales, its optimum is stored with `store_slices`,
    and `learned_global_update` follows the step (`_svi.svi_step_cells` for D modes)."""
    local = data.major
    batch = data.slices(slices)
    local_scale = None
    if params.scales is not None:
        scale = params.scales[local]
        local_scale = scale.with_q(scale.shape[slices], scale.rate[slices])
    shape, local_rate, stats, _, local_scale = fit_local(
        batch,
        params,
        params.shapes[local][slices],
        settings.prior,
        settings.local_max_iter,
        settings.local_tol,
        settings.n_chunks,
        local_scale,
    )
    scale = data.shape[local] / len(slices)
    column_sums = params.column_sums()
    column_sums[local] = scale * (shape / local_rate).sum(axis=0)
    if params.scales is None:
        params.shapes[local][slices] = shape
    else:
        store_slices(state, local, slices, shape, local_rate, local_scale)
    return step_global_modes(params, local, stats, scale, column_sums, rho, settings.prior, state)


def step_global_modes(
    params: TensorParams,
    local: int,
    stats: list[np.ndarray],
    scale: float,
    column_sums: list[np.ndarray],
    rho: float,
    prior: _model.Prior,
    state: TensorSVIState | None = None,
) -> TensorParams:
    """`_step_modes` on every mode but ``local``; under the learned prior (``state``
    needed, whose ``params`` these are) `learned_global_update` follows. Every slices-form
    step ends here: a minibatch's (`svi_step_slices`), an evaluation's (`full_data_step`);
    `_svi.set_gene_side` for D = 2."""
    modes = [d for d in range(params.n_modes) if d != local]
    if params.scales is None:
        return _step_modes(params, modes, stats, scale, column_sums, rho, prior)
    state.params = _step_modes(params, modes, stats, scale, column_sums, rho, None)
    return learned_global_update(state, local, prior)


def store_slices(state: TensorSVIState, local: int, slices, shape, rate, scale) -> None:
    """Write a minibatch's local optimum into the learned-prior state, keeping the sums
    over all slices that the local mode's hyperparameters are learned from up to date
    (`_svi.store_rows`)."""
    params = state.params
    stored = params.scales[local]
    stored_scale = stored.with_q(stored.shape[slices], stored.rate[slices])
    state.local_sums = (
        state.local_sums
        - _model.scale_sums(params.shapes[local][slices], params.rates[local][slices], stored_scale)
        + _model.scale_sums(shape, rate, scale)
    )
    params.shapes[local][slices], params.rates[local][slices] = shape, rate
    stored.shape[slices], stored.rate[slices] = scale.shape, scale.rate


def learned_global_update(
    state: TensorSVIState, local: int, prior: _model.HierarchicalPrior
) -> TensorParams:
    """After the other modes' step under the learned prior: every other mode relearned
    (`_svi.relearn_global_side`), the local mode's hyperparameters learned from every
    slice's stored optimum (`state.local_sums`), then the gauge (`fix_gauge`), whose
    rescaling of the local mode is carried into the stored sums
    (`_svi.learned_global_update`; the factor shapes held while `_svi.holding`)."""
    if holding(state):
        prior = _model.held_prior(prior)
    params = state.params
    shapes, rates, scales = list(params.shapes), list(params.rates), list(params.scales)
    for d in range(params.n_modes):
        if d != local:
            shapes[d], rates[d], scales[d] = relearn_global_side(
                shapes[d], rates[d], scales[d], prior
            )
    scales[local] = _model.learn_hyperparameters(state.local_sums, scales[local], prior)
    learned = TensorParams(shapes, rates, scales)
    state.local_sums = state.local_sums.gauged(gauge(scales)[0][local])
    state.params = fix_gauge(learned)
    return state.params


def full_data_step(state: TensorSVIState, data: TensorData, settings) -> None:
    """The other modes' exact step given every slice at its optimum, from the last
    evaluation's statistics (`state.step_statistics`): `step_global_modes` with scale 1
    and weight 1 (batch VB's sweep; `_svi.full_data_gene_step` for D modes)."""
    params = state.params
    stats, state.step_statistics = state.step_statistics, None
    state.params = step_global_modes(
        params, data.major, stats, 1.0, params.column_sums(), 1.0, settings.prior, state
    )


def evaluate_slices(
    data: TensorData, params: TensorParams, settings
) -> tuple[float, list[np.ndarray]]:
    """The full ELBO with every slice's local q at its optimum given the other modes (each
    fit starts from the stored local q, which it replaces, in place), and every mode's
    statistics under it (for `full_data_step`)."""
    local = data.major
    prior = settings.prior
    local_scale = None if params.scales is None else params.scales[local]
    shape, local_rate, stats, data_term, local_scale = fit_local(
        data,
        params,
        params.shapes[local],
        prior,
        settings.local_max_iter,
        settings.local_tol,
        settings.n_chunks,
        local_scale,
    )
    params.shapes[local], params.rates[local] = shape, local_rate
    if local_scale is not None:
        params.scales[local] = local_scale
    return data_term + elbo_rest(params, prior), stats


def svi_step_nonzeros(
    data: TensorData, minibatch: TensorData, params: TensorParams, rho: float, settings
) -> TensorParams:
    """One nonzeros-form step: `_step_modes` on every mode with the statistics of
    ``minibatch`` scaled by N / S and the exact column sums."""
    stats, _ = shape_statistics(minibatch, params, settings.n_chunks)
    scale = data.nnz / max(minibatch.nnz, 1)
    modes = range(data.n_modes)
    return _step_modes(params, modes, stats, scale, params.column_sums(), rho, settings.prior)


def default_batch_size(form: str, data: TensorData) -> int:
    """``batch_size`` when not given: the matrix cells form's rule
    (`_svi.default_batch_size`) on the slices of the local mode, or an eighth of the
    nonzeros."""
    if form == "slices":
        return matrix_default_batch_size("cells", data.shape[data.major], data.nnz)
    return max(1, data.nnz // 8)


def default_n_epochs(form: str, data: TensorData, batch_given: bool = False) -> int:
    """``n_epochs`` when not given: the matrix cells form's rule
    (`_svi.default_n_epochs`) on the slices of the local mode, for the nonzeros form the
    matrix nonzero forms'."""
    matrix_form = "cells" if form == "slices" else form
    return matrix_default_n_epochs(matrix_form, data.shape[data.major], batch_given)


def evaluate_epoch(state: TensorSVIState, data: TensorData, settings: TensorSVISettings) -> float:
    """The full ELBO at the end of an epoch. The slices form's evaluation also keeps every
    mode's statistics for the exact step of the other modes (`full_data_step`) and takes
    the local sums exact again, whatever the steps rounded."""
    if settings.form != "slices":
        return elbo(data, state.params, settings.prior, settings.n_chunks)
    value, state.step_statistics = evaluate_slices(data, state.params, settings)
    if state.local_sums is not None:
        local, params = data.major, state.params
        state.local_sums = _model.scale_sums(
            params.shapes[local], params.rates[local], params.scales[local]
        )
    return value


def fit_svi(
    data: TensorData,
    state: TensorSVIState,
    settings: TensorSVISettings,
    *,
    callback: Callable[[int, TensorParams, list[float]], None] | None = None,
    on_epoch: Callable[[TensorSVIState], None] | None = None,
) -> TensorSVIState:
    """SVI from ``state`` (a fresh start or a checkpoint) until the relative change of the
    full ELBO, evaluated every ``eval_every`` epochs and after the last, is at most ``tol``
    three evaluations in a row, or ``n_epochs`` epochs.

    For ``form="slices"`` the local mode is ``data.major``. Every epoch visits the slices
    (or the nonzeros) in a fresh random order, in batches of ``settings.batch_size``.
    ``callback(epoch, params, trace)`` and ``on_epoch(state)`` run after every epoch. The
    slices form's evaluation is followed, unless the fit ends there, by the other modes'
    exact step from its statistics (`full_data_step`; a fit that ended at ``n_epochs``
    takes it first when resumed with more).
    """
    slices_form = settings.form == "slices"
    n_items = data.shape[data.major] if slices_form else data.nnz
    batch_size = min(settings.batch_size, max(n_items, 1))
    n_steps = steps_per_epoch(n_items, batch_size)
    if state.step_statistics is not None and not state.finished:
        full_data_step(state, data, settings)
    close_owed_epoch(
        state,
        lambda: evaluate_epoch(state, data, settings),
        settings,
        callback,
        on_epoch,
        verbose=settings.verbose,
    )
    while not state.finished and state.epoch < settings.n_epochs:
        order = state.rng.permutation(n_items)
        for start in range(0, n_items, batch_size):
            items = np.sort(order[start : start + batch_size])
            state.step += 1
            rho = learning_rate(state.step, settings.tau, settings.kappa, n_steps)
            if slices_form:
                state.params = svi_step_slices(data, items, state.params, rho, settings, state)
            else:
                minibatch = data.subset(items)
                state.params = svi_step_nonzeros(data, minibatch, state.params, rho, settings)
        end_of_epoch(
            state,
            lambda: evaluate_epoch(state, data, settings),
            settings,
            callback,
            on_epoch,
            (lambda: full_data_step(state, data, settings)) if slices_form else None,
            verbose=settings.verbose,
        )
    warn_if_not_converged(
        state.converged, settings, state.epoch, holding(state), evaluations_judged(state)
    )
    return state


__all__ = [
    "SVI_FORMS",
    "TensorData",
    "TensorFitResult",
    "TensorParams",
    "TensorSVISettings",
    "TensorSVIState",
    "as_tensor_data",
    "check_checkpoint",
    "data_fingerprint",
    "elbo",
    "elbo_rest",
    "expected_total",
    "fit_batch",
    "fit_local",
    "fit_svi",
    "fix_gauge",
    "fixed_slices_start",
    "gauge",
    "learned_slices_start",
    "mode_totals",
    "random_start",
    "shape_statistics",
    "update_modes",
]
