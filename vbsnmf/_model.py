"""The Poisson-Gamma model and its variational family, written once (``docs/model.md``).

    x_ij ~ Poisson(sum_l z_il w_jl),   z_il ~ Gamma(a, b),   w_jl ~ Gamma(a, b)
    q(z_il) = Gamma(row_shape[i, l], row_rate[l]),  q(w_jl) = Gamma(col_shape[j, l], col_rate[l])

The engine is orientation-free: rows are ``z`` and columns ``w`` of whatever matrix it is
given (cells and genes for AnnData; the estimator names them). Everything a driver needs of
the model is here, and a new prior or likelihood is added here and nowhere else:

- the family and the prior: `VariationalParams`, `GammaPrior`;
- the only step that visits the data, updateA's pass over the nonzeros
  (`shape_statistics`, `pass_statistics`; `scored_statistics` adds the ELBO of the q it
  was computed under, both sides' tables and ELBO terms from one kernel);
- the steps: `update_side` (one side's q, `side_shape` and `side_rate`, from its pass
  statistic and the other side's mean column sums), `global_step` (both sides in
  model.md's order), `fit_rows` (the local step: q of some rows with the columns held
  fixed, as ``transform`` and cell-minibatch SVI use);
- the start: `random_start`, drawn per fixed block of rows from a seed sequence
  (`random_shapes`), so any split of the rows (Dask chunks, files read in blocks) draws
  the same numbers; `local_start_shape` for local fits; `init_params` for given starts;
- the ELBO from its summed terms (`ElboTerms`; `side_terms` gives one side's share), and
  the stopping rule with its warning (`has_converged`, `warn_not_converged`), and the hold
  of a random start's factor shapes (`held_prior`, `hold_released`).

The drivers (batch `_batch.py`, stochastic `_svi.py`, distributed `_dask/`) are loops that
call these over their own data layout and sum the statistics.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.special import digamma, gammaln, zeta

from . import _kernels, _nndsvd
from ._data import CountData, as_count_data, compressed_totals
from ._utils import compute_dask, counted, fields_repr, is_dask_array, is_integer, warn_user
from ._validation import PRIOR_SHAPE_RANGE, numbers_from_objects, refuse_masked

# Normalisers of the pass's fast path below these fall back to log-sum-exp (see _kernels).
_TINY = {np.dtype(np.float64): 1e-200, np.dtype(np.float32): 1e-30}

# Rows per block of the random start: block b of a side is drawn from its own seed, so
# the start of any range of rows is the same however the rows are split.
START_BLOCK_ROWS = 4096

# Seed-sequence spawn keys of what a start draws: (start index, part, block...); a
# tensor's modes past the first two draw under (start index, _MODES, mode, block).
_ROWS, _COLS, _MINIBATCHES, _MODES, _SVD = 0, 1, 2, 3, 4


class ConvergenceWarning(UserWarning):
    """The fit stopped at ``max_iter`` (or ``n_epochs``) before the relative change of its
    ELBO fell below ``tol``. Issued as a scikit-learn ``ConvergenceWarning`` too whenever
    scikit-learn is loaded (`_utils.sklearn_flavoured`), so either filter catches it."""

    __module__ = "vbsnmf"  # as tracebacks show it: its public name, not the private module

    _sklearn_name = "ConvergenceWarning"


# The largest shape a learned hyperparameter takes: that of a given prior shape (and the
# smallest a scale's prior shape a' takes).
SMALLEST_SHAPE, LARGEST_SHAPE = PRIOR_SHAPE_RANGE


# -- the variational family and the prior --------------------------------------------------
@dataclass
class ScaleState:
    """One side's part of the learned prior (`HierarchicalPrior`): ``q(xi_i) =
    Gamma(shape[i], rate[i])`` of each row's scale, and the hyperparameters learned by
    empirical Bayes, ``z_il | xi_i ~ Gamma(factor_shape[l], xi_i)`` and
    ``xi_i ~ Gamma(prior_shape, prior_shape / prior_mean)`` (model.md's a_l, a', b' for
    the rows; c_l, c', d' for the columns)."""

    shape: np.ndarray
    rate: np.ndarray
    factor_shape: np.ndarray
    prior_shape: float
    prior_mean: float

    def __repr__(self) -> str:  # shapes, not every number (`_utils.fields_repr`)
        return fields_repr(self)

    @property
    def mean(self) -> np.ndarray:
        return self.shape / self.rate

    def copy(self) -> ScaleState:
        return ScaleState(
            self.shape.copy(),
            self.rate.copy(),
            self.factor_shape.copy(),
            self.prior_shape,
            self.prior_mean,
        )

    def with_q(self, shape: np.ndarray, rate: np.ndarray) -> ScaleState:
        """The same hyperparameters with another q(xi) (e.g. of a subset of the rows)."""
        return ScaleState(shape, rate, self.factor_shape, self.prior_shape, self.prior_mean)

    @classmethod
    def extrapolated(cls, shape, rate, factor_shape, pair) -> ScaleState:
        """A scale's q and hyperparameters from an extrapolation in log space (SQUAREM),
        the shapes held to `LARGEST_SHAPE` as `learn_hyperparameters` holds them: a
        larger one scored above what the next step, which lowers it, could keep."""
        return cls(
            shape,
            rate,
            np.minimum(factor_shape, LARGEST_SHAPE),
            min(float(pair[0]), LARGEST_SHAPE),
            float(pair[1]),
        )


@dataclass
class VariationalParams:
    """Parameters of q: ``q(z_il) = Gamma(row_shape[i, l], row_rate[l])`` and
    ``q(w_jl) = Gamma(col_shape[j, l], col_rate[l])``; under the learned prior the rates
    are per entry, ``row_rate[i, l]``, and ``row_scale`` / ``col_scale`` hold q of the
    scales and the learned hyperparameters (None under the fixed prior). ``rate_parts``:
    how a learned-prior step made the two rates (`FactoredRate`), which a *compacted* q
    (`compact`, inside SQUAREM's cycle only) holds in their place."""

    row_shape: np.ndarray
    row_rate: np.ndarray
    col_shape: np.ndarray
    col_rate: np.ndarray
    row_scale: ScaleState | None = None
    col_scale: ScaleState | None = None
    # how a step made the rates: bookkeeping, not shown (the rates are)
    rate_parts: tuple[FactoredRate, FactoredRate] | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # shapes, not every number (`_utils.fields_repr`)
        return fields_repr(self)

    def copy(self) -> VariationalParams:
        arrays = (np.array(a, copy=True) for a in self.as_tuple())
        scales = (None if s is None else s.copy() for s in (self.row_scale, self.col_scale))
        return VariationalParams(*arrays, *scales)

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.row_shape, self.row_rate, self.col_shape, self.col_rate

    def positive_arrays(self) -> list[np.ndarray]:
        """Every parameter of q and every learned hyperparameter, each a positive array
        (what an extrapolation in log space moves; `with_positive_arrays` inverts it)."""
        arrays = list(self.as_tuple())
        for scale in (self.row_scale, self.col_scale):
            if scale is not None:
                arrays += [scale.shape, scale.rate, scale.factor_shape]
                arrays.append(np.array([scale.prior_shape, scale.prior_mean]))
        return arrays

    def with_positive_arrays(self, arrays: list[np.ndarray]) -> VariationalParams:
        """A q of this structure and dtype from `positive_arrays`' list."""
        dtype = self.row_shape.dtype
        main = [np.asarray(a).astype(dtype, copy=False) for a in arrays[:4]]
        scales, rest = [], arrays[4:]
        for scale in (self.row_scale, self.col_scale):
            if scale is None:
                scales.append(None)
                continue
            shape, rate, factor, pair, rest = *rest[:4], rest[4:]
            scales.append(ScaleState.extrapolated(shape, rate, factor, pair))
        return VariationalParams(*main, *scales)

    @property
    def row_mean(self) -> np.ndarray:
        return self.row_shape / self.row_rate

    @property
    def col_mean(self) -> np.ndarray:
        return self.col_shape / self.col_rate


@dataclass(frozen=True)
class FactoredRate:
    """One side's per-entry rates as a learned-prior step makes them, ``rate[i, l] =
    (scale_mean[i] + other_sum[l]) / divisor``: summed in float64, stored in ``dtype``,
    then divided there (`update_side_learned`, then `fix_gauge`), which ``np.asarray``
    repeats bit for bit. n + K numbers for the n x K array: what `compact` keeps of a q
    that waits through a SQUAREM cycle (issue 18's peak memory)."""

    scale_mean: np.ndarray
    other_sum: np.ndarray
    divisor: float  # a Python float, so that numpy divides in ``dtype`` as fix_gauge did
    dtype: np.dtype

    def __repr__(self) -> str:  # shapes, not every number (`_utils.fields_repr`)
        return fields_repr(self)

    @property
    def shape(self) -> tuple[int, int]:
        return self.scale_mean.shape[0], self.other_sum.shape[0]

    def rows(self, first: int, stop: int) -> np.ndarray:
        """Rows ``first .. stop`` of the rates, made alone."""
        sums = np.add.outer(self.scale_mean[first:stop], self.other_sum)
        rate = sums.astype(self.dtype, copy=False)
        np.divide(rate, self.divisor, out=rate)
        return rate

    def flat_entries(self, start: int, stop: int) -> np.ndarray:
        """Entries ``start .. stop`` of the flat (row-major) rates, made with their rows."""
        width = self.other_sum.shape[0]
        first = start // width
        made = self.rows(first, -(-stop // width)).ravel()
        return made[start - first * width : stop - first * width]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rate = self.rows(0, self.shape[0])
        return rate if dtype is None else rate.astype(dtype, copy=False)


def compact(params):
    """``params`` with the rates its step made as `FactoredRate` (the same q; a q of
    another kind, or one no learned-prior step made, as it is). Its arrays are
    ``params``', so ``params`` itself is left whole for whoever holds it."""
    if not isinstance(params, VariationalParams) or params.rate_parts is None:
        return params
    row_rate, col_rate = params.rate_parts
    return VariationalParams(
        params.row_shape, row_rate, params.col_shape, col_rate, params.row_scale, params.col_scale
    )


def expanded(params):
    """The inverse of `compact`: the rates as arrays again."""
    if not isinstance(params, VariationalParams) or not isinstance(params.row_rate, FactoredRate):
        return params
    return VariationalParams(
        params.row_shape,
        np.asarray(params.row_rate),
        params.col_shape,
        np.asarray(params.col_rate),
        params.row_scale,
        params.col_scale,
    )


@dataclass(frozen=True)
class GammaPrior:
    """The fixed prior of Cemgil (2009): every entry of both factor matrices is
    Gamma(``shape``, ``rate``) (shape a, rate b)."""

    shape: float = 1.0
    rate: float = 1.0


@dataclass(frozen=True)
class HierarchicalPrior:
    """The learned prior of hierarchical Poisson factorisation (Gopalan, Hofman and Blei
    2015; the model behind scHPF), ``docs/model.md``:

        xi_i ~ Gamma(a', a'/b'),  z_il | xi_i ~ Gamma(a_l, xi_i)
        eta_j ~ Gamma(c', c'/d'), w_jl | eta_j ~ Gamma(c_l, eta_j)

    Each cell's scale xi_i absorbs its depth, each gene's eta_j its activity. a', b', c',
    d' are learned by empirical Bayes (each update the exact maximiser of the ELBO, so the
    fit is still coordinate ascent), and so are the factor shapes a_l, c_l, one per
    component, unless ``factor_shape`` fixes them all (scHPF fixes 0.3).
    """

    factor_shape: float | None = None


Prior = GammaPrior | HierarchicalPrior


def fixed_prior_least_log_rate(shape: tuple[int, ...], prior: GammaPrior) -> tuple[int, float]:
    """The shortest mode m (of a matrix: its shorter side) and the log of a lower bound on
    the rates the fit reaches in mode m or, when other modes are as short, in one of them:
    ``sum log(a (n_d - n_m) / b)`` over the modes d longer than m; 0 when no mode is
    longer (a square matrix, a cube: no bound).

    At an optimum each mode's rate is ``b + prod_{e != d} u_e`` with u_e = sum_i E[v^(e)_il],
    so ``b u_d = A_d - P`` (P = prod_d u_d, A_d = sum_i shape^(d)_il = a n_d + the
    component's count, the same count in every mode): P < A_m and A_d - P > a (n_d - n_m).
    The rate of mode m, ``b + prod_{d != m} u_d``, is then above ``prod_{d != m} a (n_d -
    n_m) / b``, of the order of ``b^-(D-1)``: under a tiny b (or at many long modes) the
    ascent drives one mode's factors towards 0 and the others' towards their prior mean a
    / b, and that rate leaves the float range (float32 at D = 3, b = 1e-20). No gauge pins
    this: the fixed prior, unlike the learned one, changes with the modes' scales.

    When k modes tie for the shortest, their u are equal at the exact optimum, which puts
    their rates near a k-th root of that product; but coordinate ascent does not go there:
    from a random start, in each component one of the tied modes takes the whole scale of
    the longer modes, the others' rates staying at 0.8 to 330 (converged float64 fits of 5
    x 5 x 2 x 2, 8 x 3 x 3, 6 x 6 x 3 x 3 x 3 and 10 x 4 x 4 x 4 at b = 1e-8, K = 2, four
    seeds, plain and accelerated: that rate 1.3 to 14 times the product over the longer
    modes). The bound then takes the longer modes only: with a tie it was taken as none,
    and a float32 fit of 5 x 5 x 2 x 2 at b = 1e-20 (that product 9e40) ended after 130
    passes in a `FloatingPointError`.
    """
    shortest = int(np.argmin(shape))
    gaps = [n - shape[shortest] for n in shape if n > shape[shortest]]
    logs = [np.log(prior.shape * gap) - np.log(prior.rate) for gap in gaps]
    return shortest, float(np.sum(logs))


def check_fixed_prior_range(
    shape: tuple[int, ...],
    prior: Prior,
    dtype: np.dtype,
    kind: str = "matrix",
    observed: float = 1.0,
    observed_shape: tuple[int, ...] | None = None,
) -> None:
    """`ValueError` before any pass when the fixed prior's optimum has a rate beyond the
    largest number of ``dtype`` (`fixed_prior_least_log_rate`; ``kind``: "matrix" or
    "tensor", for the message): the ascent went there and ended in a `FloatingPointError`
    (a 5 x 5 x 2 tensor, float32, ``prior_rate`` 1e-20, after about 100 passes; a 1000 x
    10 matrix at 1e-36; a 5 x 5 x 2 x 2 tensor, its shortest modes tied, at 1e-20).

    ``observed``: for a matrix with missing entries, the least share of the shorter side's
    entries observed in a line of the longer side (`observed_extent`). The bound on the sum
    ``u`` of the longer side's means still holds (its proof takes the total term over the
    observed entries as well), but each rate of the shorter side sums the means of its
    observed entries only: their mean over the shorter side is at least ``observed * u``.
    ``observed_shape``: the shape the bound is taken on, when not ``shape`` (a matrix
    without the lines a mask leaves out whole, `observed_extent`); messages name ``shape``.
    """
    if not isinstance(prior, GammaPrior) or observed <= 0:
        return
    bounded = shape if observed_shape is None else observed_shape
    mode, log_rate = fixed_prior_least_log_rate(bounded, prior)
    log_rate += np.log(observed)
    largest = float(np.finfo(dtype).max)
    if log_rate <= np.log(largest):
        return
    # the bound falls as b^-(the number of longer modes, D - 1 without a tie): the least
    # rate that brings it down to the largest float
    n_others = sum(n > min(shape) for n in shape)
    least_rate = prior.rate * np.exp((log_rate - np.log(largest)) / n_others)
    in_float64 = dtype == np.float32 and log_rate <= np.log(np.finfo(np.float64).max)
    other = " or fit with dtype=np.float64" if in_float64 else ""
    bound = f"10^{log_rate / np.log(10):.1f}"
    side = f"mode {mode}'s" if kind == "tensor" else ("the cells'", "the genes'")[mode]
    rates = f"{side} rates"
    others = "the other modes'" if kind == "tensor" else "the other side's"
    tied = [d for d, n in enumerate(shape) if n == shape[mode]]
    if len(tied) > 1:  # one of them takes the scale (`fixed_prior_least_log_rate`)
        rates = f"the rates of one of modes {', '.join(map(str, tied[:-1]))} and {tied[-1]}"
        others = "the longer modes'"
    raise ValueError(
        f"under the fixed prior Gamma({prior.shape:g}, {prior.rate:g}) the fit of a {kind} "
        f"of shape {tuple(shape)} has its optimum beyond {np.dtype(dtype).name}'s range: "
        f"{rates} would exceed {bound} (its factors near 0, {others} near their prior "
        f"mean; the bound grows as prior_rate^-{n_others}); raise prior_rate to at least "
        f"{least_rate:.3g}{other}, or use prior='hierarchical'"
    )


def observed_extent(shape: tuple[int, int], mask: Mask) -> tuple[tuple[int, int], float]:
    """The shape of the matrix of the rows and columns in which ``mask`` leaves an entry
    observed, and the least share of that matrix's shorter side that ``mask`` leaves
    observed in a line of its longer side (a cell's genes when the genes are fewer): the
    ``observed_shape`` and ``observed`` of `check_fixed_prior_range` for a fit with ``mask``.

    A line masked whole is fitted to no count and enters no rate of the other side (its
    q is the fixed prior's own), so the bound holds for the matrix without it
    (`fixed_prior_least_log_rate`, whose proof sums only the lines left). Its share of 0
    had switched the check off: a 1000 x 10 float32 fit at ``prior_rate`` 1e-36 with one
    cell masked whole ran until its ELBO was -inf (`FloatingPointError`), where the fit
    without that cell is refused before any pass."""
    n_rows, n_cols = shape
    row_missing, col_missing = np.diff(mask.rows.indptr), np.diff(mask.cols.indptr)
    whole_rows, whole_cols = row_missing == n_cols, col_missing == n_rows
    n_whole_rows, n_whole_cols = int(whole_rows.sum()), int(whole_cols.sum())
    extent = (n_rows - n_whole_rows, n_cols - n_whole_cols)
    shortest = int(np.argmin(extent))
    # a line left misses every line of the other side masked whole: not counted again
    if shortest == 1:
        missing = row_missing[~whole_rows] - n_whole_cols
    else:
        missing = col_missing[~whole_cols] - n_whole_rows
    if extent[shortest] == 0:  # nothing observed (refused before the fit: `_checked_mask`)
        return extent, 0.0
    return extent, 1.0 - float(missing.max(initial=0)) / extent[shortest]


def expected_log(shape: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """``E[log z] = digamma(shape) - log(rate)`` for Gamma(shape, rate)."""
    return _elementwise(digamma, shape) - np.log(rate)


def _elementwise(function, values) -> np.ndarray:
    """``function(values)`` of an elementwise ``function`` (scipy's digamma, gammaln),
    called once when all the entries are equal, as q(xi)'s shapes are after its update
    (``a' + sum_l a_l`` for every row, `scale_optimum`): the same numbers, one call
    instead of one per row."""
    values = np.asarray(values)
    if values.size > 1 and values.min() == values.max():
        return np.full(values.shape, function(values.flat[0]))
    return function(values)


def gamma_kl(
    shape, rate, prior_shape: float, prior_rate: float, digamma_shape=None, log_rate=None
) -> float:
    """``sum KL(Gamma(shape, rate) || Gamma(prior_shape, prior_rate))`` over all entries
    (``rate`` broadcastable to ``shape``), in numpy: for small arrays such as the scales'
    q, where a parallel kernel's start costs more than the work (a side's n x K factors go
    through `_kernels.gamma_sums`). ``digamma_shape`` and ``log_rate``: those functions of
    ``shape`` and ``rate`` if the caller has them already (`expected_log`'s)."""
    entries = gamma_kl_entries(shape, rate, prior_shape, prior_rate, digamma_shape, log_rate)
    with np.errstate(over="ignore", invalid="ignore"):  # as in `gamma_kl_entries`
        return float(entries.sum())


def gamma_kl_entries(
    shape, rate, prior_shape: float, prior_rate: float, digamma_shape=None, log_rate=None
) -> np.ndarray:
    """`gamma_kl`'s terms, entry by entry (``shape``'s shape)."""
    shape = np.asarray(shape, dtype=np.float64)
    rate = np.broadcast_to(np.asarray(rate, dtype=np.float64), shape.shape)
    digamma_shape = _elementwise(digamma, shape) if digamma_shape is None else digamma_shape
    # Beyond the float range (a damaged checkpoint's q, a rate of 0 learned from counts near
    # 1e-250) the KL is inf or NaN, which the fit then refuses in one message
    # (`finite_elbo`), not after numpy's warning.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        log_rate = np.log(rate) if log_rate is None else log_rate
        return (
            (shape - prior_shape) * digamma_shape
            - _elementwise(gammaln, shape)
            + gammaln(prior_shape)
            + prior_shape * (log_rate - np.log(prior_rate))
            + shape * (prior_rate - rate) / rate
        )


# -- missing entries ---------------------------------------------------------------------------
@dataclass
class Mask:
    """Entries of X that were not observed (model.md, "Missing entries"): their terms
    leave the likelihood. The pass never sees them (the caller drops them from the data);
    what remains is each row's sum of the other side's means over its *observed* entries,
    ``sum_{j not in M_i} E[w_jl]`` for row i and ``sum_{i not in M_j} E[z_il]`` for
    column j, in the rates and the expected product (`observed_sums`). ``rows`` is the mask
    as canonical CSR (rows x columns, ones, indices sorted), ``cols`` its transpose."""

    rows: sp.csr_array
    cols: sp.csr_array
    # The last `observed_row_sums` and the column q they are of: a batch iteration asks
    # for the same q's twice (its ELBO, then its step's row rates).
    _row_sums_memo: tuple | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, matrix) -> Mask:
        """The mask of the nonzero entries of ``matrix`` (rows x columns)."""
        rows = sp.csr_array(matrix, dtype=np.float64, copy=True)
        rows.sum_duplicates()
        rows.eliminate_zeros()
        rows.data[:] = 1.0
        cols = sp.csr_array(rows.T)
        cols.sort_indices()
        return cls(rows, cols)

    def observed_row_sums(self, col_shape: np.ndarray, col_rate) -> np.ndarray:
        """``sum_{j not in M_i} E[w_j]`` for every row (rows x K, float64, read only)."""
        col_rate = np.asarray(col_rate)
        memo = self._row_sums_memo
        if memo is not None and all(map(_same_array, memo[:2], (col_shape, col_rate))):
            return memo[2]
        sums = observed_sums(self.rows, self.cols, col_shape, col_rate)
        sums.flags.writeable = False  # shared with the memo
        self._row_sums_memo = (col_shape.copy(), col_rate.copy(), sums)
        return sums

    def observed_col_sums(self, row_shape: np.ndarray, row_rate) -> np.ndarray:
        """``sum_{i not in M_j} E[z_i]`` for every column (columns x K, float64)."""
        return observed_sums(self.cols, self.rows, row_shape, row_rate)

    def unobserved_cols(self) -> np.ndarray:
        """Which columns are masked in every row (bool, one per column): the fit never
        observes them (under the fixed prior their q stays the prior's)."""
        return np.diff(self.cols.indptr) == self.rows.shape[0]

    def observed_product(self, params: VariationalParams) -> float:
        """``sum_{(i, j) not in M} sum_l E[z_il] E[w_jl]``, the expected product of the
        observed entries, as ``sum_i E[z_i] . observed_row_sums_i``: a sum of nonnegative
        terms, so it keeps its precision however large the masked entries' means are
        (the full product less the masked one cancelled when they dwarf it)."""
        row_sums = self.observed_row_sums(params.col_shape, params.col_rate)
        row_rate = _kernels.rows_or_row(params.row_rate, params.row_shape.shape)
        return float(_kernels.mean_weighted_sum(params.row_shape, row_rate, row_sums))


def _same_array(kept: np.ndarray, given: np.ndarray) -> bool:
    """Whether ``given`` holds what ``kept`` does (dtype, shape, values)."""
    return kept.dtype == given.dtype and np.array_equal(kept, given)


def observed_sums(masked: sp.csr_array, masked_t: sp.csr_array, other_shape, other_rate):
    """``sum_{j not in masked_i} E[w_j]`` for every row i of ``masked`` (n x K, float64),
    the other side's q being ``(other_shape, other_rate)`` and ``masked_t`` ``masked``'s
    transpose as CSR (its rows' lengths tell the other side's entries masked in every row).

    Formed as the sum over the whole other side less the row's masked sum, in
    O(masked entries x K + n_other x K), and directly, in O(n_other x K), for the rows
    where that difference would cancel: those whose masked entries carry more than half
    the total (`_kernels.observed_mean_sums`, which says why half)."""
    if not masked.has_sorted_indices:
        masked.sort_indices()  # the kernel walks each row's indices in order
    never_observed = np.diff(masked_t.indptr) == masked.shape[0]
    rate = _kernels.rows_or_row(other_rate, other_shape.shape)
    sums = np.empty((masked.shape[0], other_shape.shape[1]))
    _kernels.observed_mean_sums(
        masked.indptr, masked.indices, never_observed, other_shape, rate, sums
    )
    return sums


# -- the pass over the nonzeros (updateA) -------------------------------------------------
def side_moments(shape: np.ndarray, rate: np.ndarray) -> tuple[np.ndarray, ...]:
    """What the pass needs of one side of q: ``exp(E[log])`` divided by its row maximum
    (padded with zero columns to `_kernels.padded_width`), that maximum (log scale), and
    the shapes and rates (as `_kernels.rows_or_row` gives them: n rows, or one row for all
    when they are per component) for the pass's log-space path; ``rate`` per component or
    any array broadcastable to ``shape``. The rates are float64 unless q is float32 and so
    are they: then they stay as they are (the kernels widen each rate as they read it), not
    copied to n x K float64."""
    shape = np.asarray(shape)
    n_rows, n_components = shape.shape
    rate = np.asarray(rate)
    if not (shape.dtype == rate.dtype == np.float32):
        rate = rate.astype(np.float64, copy=False)
    rate = _kernels.rows_or_row(rate, shape.shape)
    shape = _kernels.read_only(shape)  # the kernels only read it
    scaled = np.empty((n_rows, _kernels.padded_width(n_components, shape.dtype)), shape.dtype)
    logmax = np.empty(n_rows)
    _kernels.gamma_moments(shape, rate, scaled, logmax)
    return scaled, logmax, shape, rate


def shape_statistics(
    data: CountData, params: VariationalParams, n_parts: int, block_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """updateA's pass: ``sum_j x phi`` (rows), ``sum_i x phi`` (columns) and the data term
    ``sum_n x_n log sum_l exp(E[log z] + E[log w]) - lgamma(x_n + 1)`` under ``params``.

    ``n_parts`` parallel parts (normally the thread count); ``block_rows`` minor-axis rows
    per cache block of the kernel (default `_kernels.minor_block_rows`, sized for L2).
    """
    return pass_statistics(
        data,
        side_moments(params.row_shape, params.row_rate),
        side_moments(params.col_shape, params.col_rate),
        n_parts,
        block_rows,
    )


def pass_statistics(
    data: CountData, row_moments, col_moments, n_parts: int, block_rows: int | None = None
):
    """`shape_statistics` from each side's `side_moments` (a side held fixed over many
    passes, as in `fit_rows`, computes its moments once)."""
    major_scaled, major_logmax, major_shape, major_rate = (row_moments, col_moments)[data.major]
    minor_scaled, minor_logmax, minor_shape, minor_rate = (row_moments, col_moments)[1 - data.major]
    dtype = major_scaled.dtype
    bounds = data.part_bounds(n_parts)
    n_components = minor_shape.shape[1]
    # Statistics and the data term in float64 whatever the tables' dtype; the per-part
    # accumulators in the tables' dtype, summed in float64.
    major_stat = np.empty((major_scaled.shape[0], n_components))
    minor_partial = np.empty((len(bounds) - 1, *minor_scaled.shape), dtype=dtype)
    data_partial = np.zeros(len(bounds) - 1)
    _kernels.update_shapes(
        data.indptr,
        data.indices,
        data.counts,
        bounds,
        major_scaled,
        major_logmax,
        major_shape,
        major_rate,
        minor_scaled,
        minor_logmax,
        minor_shape,
        minor_rate,
        _TINY[np.dtype(dtype)],
        block_rows or _kernels.minor_block_rows(minor_scaled.shape[1], dtype.itemsize),
        major_stat,
        minor_partial,
        data_partial,
    )
    minor_stat = np.empty((minor_scaled.shape[0], n_components))
    _kernels.sum_parts(minor_partial, minor_stat)  # in part order
    stats = (major_stat, minor_stat) if data.major == 0 else (minor_stat, major_stat)
    # The tables' row maxima of every nonzero's log normaliser, sum_n x_n (logmax_i +
    # logmax_j), as totals: one load and one add less per nonzero in the pass.
    major_totals, minor_totals = data.totals()
    logmax_term = np.sum(major_totals * major_logmax) + np.sum(minor_totals * minor_logmax)
    return stats[0], stats[1], float(data_partial.sum() + logmax_term) - data.log_factorial


# -- the steps ----------------------------------------------------------------------------
def side_shape(prior: GammaPrior, statistic: np.ndarray, dtype=None) -> np.ndarray:
    """One side's shapes given its pass statistic: ``a + sum x phi`` (cast to ``dtype``
    when given, otherwise left in the arithmetic's dtype: SVI blends them first)."""
    shape = prior.shape + statistic
    return shape if dtype is None else shape.astype(dtype, copy=False)


def side_rate(prior: GammaPrior, other_mean_sum: np.ndarray, dtype=None) -> np.ndarray:
    """One side's rates given the other side's ``sum E[.]`` per component:
    ``b + other_mean_sum`` (cast to ``dtype`` when given)."""
    rate = prior.rate + other_mean_sum
    return rate if dtype is None else rate.astype(dtype)


def update_side(
    prior: GammaPrior, statistic: np.ndarray, other_mean_sum: np.ndarray, dtype=None
) -> tuple[np.ndarray, np.ndarray]:
    """One side's q, ``(side_shape, side_rate)``: rows and columns alike (the prior is
    the same on both sides)."""
    return side_shape(prior, statistic, dtype), side_rate(prior, other_mean_sum, dtype)


def global_step(
    params: VariationalParams,
    row_stat: np.ndarray,
    col_stat: np.ndarray,
    prior: Prior,
    rate_scale: float = 1.0,
    mask: Mask | None = None,
) -> VariationalParams:
    """updateA's shapes from the pass statistics, then updateB in model.md's order: the
    row rate from ``E_old[w]``, the column rate from ``E_new[z]``. Each is the exact optimum
    of its block given the rest, so the step never lowers the ELBO.

    Under the learned prior each side's scales follow its factors (`update_side_learned`),
    then both sides' hyperparameters are learned (`learn_hyperparameters`) and the scale
    of the two sides is pinned (`fix_gauge`); all exact coordinate ascent.

    ``rate_scale`` multiplies the other side's sums in both rates (1 for VB; Abe and
    Shimamura's minibatch form, fixed prior only, scales them by S / (R C)). With a
    ``mask`` of missing entries each row's rate leaves out the masked columns (and each
    column's the masked rows), so the rates are per entry.
    """
    dtype = params.row_shape.dtype
    if mask is None:  # the columns' means are needed only summed: not held (memory)
        row_sums = mean_sums(params.col_shape, params.col_rate)
    else:
        row_sums = mask.observed_row_sums(params.col_shape, params.col_rate)
    if isinstance(prior, HierarchicalPrior):
        row_scale_mean, col_scale_mean = params.row_scale.mean, params.col_scale.mean
        # sum_i E[log z_il] of each new side, for its a_l (none when the prior fixes a_l)
        n_logs = row_stat.shape[1] if prior.factor_shape is None else 0
        row_log, col_log = np.zeros(n_logs), np.zeros(n_logs)
        row_shape, row_rate, row_scale, row_mean_sum = update_side_learned(
            row_stat, params.row_scale, row_sums, dtype, row_scale_mean, row_log
        )
        if mask is None:
            col_sums = row_mean_sum
        else:
            col_sums = mask.observed_col_sums(row_shape, row_rate)
        col_shape, col_rate, col_scale, _ = update_side_learned(
            col_stat, params.col_scale, col_sums, dtype, col_scale_mean, col_log
        )
        row_scale_sums = _scale_sums(row_shape.shape[0], row_scale, row_log)
        col_scale_sums = _scale_sums(col_shape.shape[0], col_scale, col_log)
        row_scale = learn_hyperparameters(row_scale_sums, row_scale, prior)
        col_scale = learn_hyperparameters(col_scale_sums, col_scale, prior)
        stepped = fix_gauge(  # the rates are this step's own: rescaled where they are
            VariationalParams(row_shape, row_rate, col_shape, col_rate, row_scale, col_scale),
            in_place=True,
        )
        if mask is None:  # the rates in n + K numbers a side (with a mask they are not)
            factor = gauge(row_scale, col_scale)[0]  # fix_gauge's: rows / s, columns * s
            stepped.rate_parts = (
                FactoredRate(row_scale_mean, row_sums, factor, row_rate.dtype),
                FactoredRate(col_scale_mean, row_mean_sum, 1.0 / factor, col_rate.dtype),
            )
        return stepped
    row_rate = side_rate(prior, rate_scale * row_sums, dtype)
    row_shape, row_mean_sum = gamma_side(prior, row_stat, row_rate, dtype)
    if mask is None:
        col_sums = row_mean_sum
    else:
        col_sums = mask.observed_col_sums(row_shape, row_rate)
    col_rate = side_rate(prior, rate_scale * col_sums, dtype)
    col_shape, _ = gamma_side(prior, col_stat, col_rate, dtype)
    return VariationalParams(row_shape, row_rate, col_shape, col_rate)


def mean_sums(shape: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """``sum_i E[z_il]`` per component (float64) of one side, ``rate`` broadcastable to
    ``shape``, with no n x K temporary (`_kernels.mean_sums`)."""
    out = np.empty(shape.shape[1])
    _kernels.mean_sums(shape, _kernels.rows_or_row(rate, shape.shape), out)
    return out


def gamma_side(
    prior: GammaPrior, statistic: np.ndarray, rate: np.ndarray, dtype
) -> tuple[np.ndarray, np.ndarray]:
    """`side_shape` of one side under the fixed prior, in ``dtype``, and its ``sum_i
    E[z_il]`` per component (float64) with ``rate`` (`side_rate`), in one pass
    (`_kernels.gamma_side`)."""
    shape, mean_sum = np.empty(statistic.shape, dtype), np.empty(statistic.shape[1])
    rate = _kernels.rows_or_row(rate, statistic.shape)
    _kernels.gamma_side(statistic, float(prior.shape), rate, shape, mean_sum)
    return shape, mean_sum


# -- the learned prior ----------------------------------------------------------------------
def update_side_learned(
    statistic: np.ndarray,
    scale: ScaleState,
    other_mean_sum: np.ndarray,
    dtype=None,
    scale_mean: np.ndarray | None = None,
    log_sum: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, ScaleState, np.ndarray]:
    """One side's q under the learned prior, then q of its scales, each at its optimum:
    ``shape = a_l + sum x phi``, ``rate = E[xi_i] + other_mean_sum_l``; then
    ``q(xi_i) = Gamma(a' + sum_l a_l, a'/b' + sum_l E[z_il])`` with the new q(z). Also
    returns the side's ``sum_i E[z_il]`` (float64), which the other side's rates need.
    ``other_mean_sum``: per component, or per entry (n x K) when entries are masked;
    ``scale_mean``: ``E[xi_i]`` of ``scale`` if the caller has it (`global_step` keeps it
    for the rates' `FactoredRate`); ``log_sum``: if given (K, float64), filled with the
    new q's ``sum_i E[log z_il]`` (`scale_sums`' factor logs), in the same pass."""
    dtype = np.result_type(statistic, scale.factor_shape) if dtype is None else dtype
    scale_mean = scale.mean if scale_mean is None else scale_mean
    shape, rate = np.empty(statistic.shape, dtype), np.empty(statistic.shape, dtype)
    row_mean_sum, mean_sum = np.empty(statistic.shape[0]), np.empty(statistic.shape[1])
    other = _kernels.rows_or_row(other_mean_sum, statistic.shape, np.float64)
    log_sum = np.empty(0) if log_sum is None else log_sum
    _kernels.learned_side(
        statistic, scale.factor_shape, scale_mean, other, shape, rate, row_mean_sum, mean_sum,
        log_sum,
    )  # fmt: skip
    return shape, rate, _scale_at_optimum(row_mean_sum, scale), mean_sum


def scale_optimum(shape: np.ndarray, rate: np.ndarray, scale: ScaleState) -> ScaleState:
    """q(xi) at its optimum given q(z) and the hyperparameters."""
    return _scale_at_optimum(_mean_row_sums(shape, rate), scale)


def _scale_at_optimum(row_mean_sum: np.ndarray, scale: ScaleState) -> ScaleState:
    """q(xi) at its optimum given each row's ``sum_l E[z_il]``."""
    q_shape = np.full(row_mean_sum.shape[0], scale.prior_shape + scale.factor_shape.sum())
    q_rate = scale.prior_shape / scale.prior_mean + row_mean_sum
    return scale.with_q(q_shape, q_rate)


_SUM_BLOCK_ROWS = 1024


def _mean_row_sums(shape: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """``(shape / rate).sum(axis=1)`` in float64, a block of rows at a time: no n x K
    temporary beside a step's new q (each row's sum is its own, whatever the blocks)."""
    rate = np.broadcast_to(rate, shape.shape)
    sums = np.empty(shape.shape[0])
    for first in range(0, shape.shape[0], _SUM_BLOCK_ROWS):
        rows = slice(first, first + _SUM_BLOCK_ROWS)
        sums[rows] = (shape[rows] / rate[rows]).sum(axis=1, dtype=np.float64)
    return sums


@dataclass
class ScaleSums:
    """What learning one side's hyperparameters needs of its rows, as sums over them (so
    pieces of the rows can be summed): the number of rows, ``sum_i E[xi_i]``,
    ``sum_i E[log xi_i]`` and ``sum_i E[log z_il]`` per component."""

    n_rows: int
    scale_mean: float
    scale_log: float
    factor_log: np.ndarray

    def __add__(self, other: ScaleSums) -> ScaleSums:
        return ScaleSums(
            self.n_rows + other.n_rows,
            self.scale_mean + other.scale_mean,
            self.scale_log + other.scale_log,
            self.factor_log + other.factor_log,
        )

    def __sub__(self, other: ScaleSums) -> ScaleSums:
        return ScaleSums(
            self.n_rows - other.n_rows,
            self.scale_mean - other.scale_mean,
            self.scale_log - other.scale_log,
            self.factor_log - other.factor_log,
        )

    def gauged(self, factor: float) -> ScaleSums:
        """The sums after `fix_gauge` divided the rows' rates by ``factor`` (and so
        multiplied their scales' rates by it)."""
        shift = self.n_rows * float(np.log(factor))
        return ScaleSums(
            self.n_rows, self.scale_mean / factor, self.scale_log - shift, self.factor_log + shift
        )


def scale_sums(shape, rate, scale: ScaleState, factor_log: np.ndarray | None = None) -> ScaleSums:
    """`ScaleSums` of some rows; ``factor_log``: their ``sum_i E[log z_il]`` if the caller
    has it (`update_side_learned` takes it in its pass), else taken here."""
    if factor_log is None:
        factor_log = _kernels.expected_log_sums(shape, rate)
    return _scale_sums(shape.shape[0], scale, factor_log)


def _scale_sums(n_rows: int, scale: ScaleState, factor_log: np.ndarray) -> ScaleSums:
    """`ScaleSums` of ``n_rows`` rows with q(xi) ``scale`` and ``sum_i E[log z_il]``."""
    return ScaleSums(
        n_rows,
        float(scale.mean.sum()),
        float(expected_log(scale.shape, scale.rate).sum()),
        factor_log,
    )


# ``log a - digamma(a)`` at the ends of the range: it decreases in a, so a gap outside
# theirs has its root outside the range, where `gamma_shape_mle` is not solved (from a
# start with a' = 1e15 it never returned; with a' = 1e-20 it gave NaN).
_LARGEST_SHAPE_GAP = float(np.log(LARGEST_SHAPE) - digamma(LARGEST_SHAPE))
_SMALLEST_SHAPE_GAP = float(np.log(SMALLEST_SHAPE) - digamma(SMALLEST_SHAPE))


def learn_hyperparameters(sums: ScaleSums, scale: ScaleState, prior: HierarchicalPrior):
    """Empirical Bayes for one side, q held fixed; each value the exact maximiser:

    - ``(a', b')`` jointly: ``b' = mean_i E[xi_i]`` and ``log a' - digamma(a') =
      log b' - mean_i E[log xi_i]`` (the Gamma maximum-likelihood equations on q's
      moments; the right side is positive by Jensen's inequality);
    - ``digamma(a_l) = mean_i (E[log z_il] + E[log xi_i])``, unless the prior fixes a_l.

    Each within (0, `LARGEST_SHAPE`], a' within [`SMALLEST_SHAPE`, `LARGEST_SHAPE`]: on
    rows all alike a' grew without end (4e7 after 6,000 passes), where the ELBO's terms
    outgrow its changes and its trace fell by rounding. Each objective is concave in its
    shape, so the bound is the maximiser over the range, and the steps stay coordinate
    ascent.
    """
    prior_mean = sums.scale_mean / sums.n_rows
    mean_log = sums.scale_log / sums.n_rows
    gap = np.log(prior_mean) - mean_log
    if not gap > 0:  # no root (rounding of rows all alike): a' kept
        prior_shape = scale.prior_shape
    elif gap <= _LARGEST_SHAPE_GAP:
        prior_shape = LARGEST_SHAPE
    elif gap >= _SMALLEST_SHAPE_GAP:
        prior_shape = SMALLEST_SHAPE
    else:
        prior_shape = min(gamma_shape_mle(gap), LARGEST_SHAPE)
    if prior.factor_shape is None:
        factor_shape = inverse_digamma(sums.factor_log / sums.n_rows + mean_log)
        factor_shape = np.minimum(factor_shape, LARGEST_SHAPE)
    else:
        factor_shape = np.full_like(scale.factor_shape, prior.factor_shape)
    return ScaleState(scale.shape, scale.rate, factor_shape, float(prior_shape), float(prior_mean))


def fix_gauge(params: VariationalParams, in_place: bool = False) -> VariationalParams:
    """Move q along the one direction that leaves the ELBO exactly unchanged, to b' = d'.

    ``(z, xi, b', w, eta, d') -> (s z, xi / s, b' / s, w / s, s eta, s d')`` changes no
    term of the ELBO (the likelihood sees z w, each prior term z xi, w eta, xi / b',
    eta / d'); with both b' and d' learned, coordinate ascent would drift along it for
    ever. ``s = sqrt(b' / d')`` leaves ``b' = d' = sqrt(b' d')`` (`gauge`).
    ``in_place``: divide the rates of ``params`` where they are (no new pair of them).
    """
    factor, prior_mean = gauge(params.row_scale, params.col_scale)
    row_rate, row_scale = rescale_side(
        params.row_rate, params.row_scale, factor, prior_mean, in_place
    )
    col_rate, col_scale = rescale_side(
        params.col_rate, params.col_scale, 1.0 / factor, prior_mean, in_place
    )
    return VariationalParams(
        params.row_shape, row_rate, params.col_shape, col_rate, row_scale, col_scale
    )


def gauge(row_scale: ScaleState, col_scale: ScaleState) -> tuple[float, float]:
    """`fix_gauge`'s ``s = sqrt(b' / d')`` (the rows' factor) and the common prior mean
    ``sqrt(b' d')`` it leaves on both sides, from the two sides' hyperparameters."""
    factor = float(np.sqrt(row_scale.prior_mean / col_scale.prior_mean))
    return factor, float(np.sqrt(row_scale.prior_mean * col_scale.prior_mean))


def rescale_side(
    rate: np.ndarray, scale: ScaleState, factor: float, prior_mean: float, in_place=False
) -> tuple[np.ndarray, ScaleState]:
    """One side's share of `fix_gauge`: ``z -> factor z`` (its rates of q(z) divided by
    ``factor``, those of q(xi) multiplied by it) and its prior mean set to ``prior_mean``.
    Rows held elsewhere (Dask chunks) apply it to their own q with the same ``factor``;
    ``in_place``: the rates (C-contiguous) divided where they are."""
    scale = ScaleState(
        scale.shape, scale.rate * factor, scale.factor_shape, scale.prior_shape, prior_mean
    )
    if not in_place:
        return rate / factor, scale
    _kernels.divide_in_place(rate, rate.dtype.type(factor))  # numpy's quotients, in parallel
    return rate, scale


def gauge_factor(params: VariationalParams) -> float:
    """`fix_gauge`'s ``s = sqrt(b' / d')``: it divides the rows' rates by s."""
    return gauge(params.row_scale, params.col_scale)[0]


def inverse_digamma(y, n_newton: int = 8) -> np.ndarray:
    """``x > 0`` with ``digamma(x) = y``, elementwise (Minka 2000's start, then Newton:
    digamma is increasing and concave, so Newton from it converges in a few steps)."""
    y = np.asarray(y, dtype=np.float64)
    x = np.where(y >= -2.22, np.exp(y) + 0.5, -1.0 / (y - digamma(1.0)))
    for _ in range(n_newton):
        x = x - (digamma(x) - y) / zeta(2, x)  # trigamma: scipy's polygamma(1, x)
    return x


def gamma_shape_mle(gap: float, n_newton: int = 10) -> float:
    """``a > 0`` with ``log a - digamma(a) = gap`` (``gap > 0``): the Gamma maximum-
    likelihood shape, by Minka (2002)'s start and generalised Newton step on 1/a. Above
    gap 3 the start is taken in its form without cancellation (``3 - gap + root`` lost
    every digit from gap 1e16, and the square overflowed from 1e154)."""
    if gap > 3.0:
        a = 2.0 / (math.hypot(gap - 3.0, math.sqrt(24.0 * gap)) + gap - 3.0)
    else:
        a = (3.0 - gap + np.sqrt((gap - 3.0) ** 2 + 24.0 * gap)) / (12.0 * gap)
    for _ in range(n_newton):
        excess = np.log(a) - digamma(a) - gap
        a = 1.0 / (1.0 / a + excess / (a * a * (1.0 / a - zeta(2, a))))
    return float(a)


def _prior_terms(prior: Prior, scale: ScaleState | None):
    """What one side's KL needs of its prior: ``(prior_shape, prior_rate,
    log_prior_rate, scale_kl)`` for `_kernels.gamma_sums`. Under the learned prior the KL
    of q(z, xi) from p(z | xi) p(xi) is that of q(z) from p(z | xi) in expectation over
    q(xi) (linear in ``E[xi]`` and ``E[log xi]``, which stand for the prior's rate and its
    log) plus ``KL(q(xi) || p(xi))``, the ``scale_kl``."""
    if not isinstance(prior, HierarchicalPrior):
        return prior.shape, prior.rate, None, 0.0
    xi_digamma, xi_log_rate = _elementwise(digamma, scale.shape), np.log(scale.rate)
    xi_log = xi_digamma - xi_log_rate  # expected_log, its two parts shared with the KL
    rate0 = scale.prior_shape / scale.prior_mean
    scale_kl = gamma_kl(scale.shape, scale.rate, scale.prior_shape, rate0, xi_digamma, xi_log_rate)
    return scale.factor_shape, scale.mean[:, None], xi_log[:, None], scale_kl


def local_start_shape(prior: Prior, n_rows: int, n_components: int, dtype) -> np.ndarray:
    """Where a local fit of rows with no earlier optimum starts: ``shape = a + 1``
    everywhere (deterministic, the same for every row); the fixed prior's a, or for the
    learned prior 1 (the exponential case)."""
    shape = prior.shape if isinstance(prior, GammaPrior) else 1.0
    return np.full((n_rows, n_components), shape + 1.0, dtype=dtype)


# Nats by which float32 tables round each count's data term, per count: an ELBO of N
# counts is held to about N times this (`warn_elbo_rounding`, `warn_local_rounding`, and
# each row's local fit in `fit_rows`).
FLOAT32_ROUNDING_PER_COUNT = 2.0**-24


@dataclass
class RowFit:
    """What `fit_rows` returns: the rows' q, q of their scales under the learned prior
    (else None), the passes it took, and how many rows were still moving when it stopped
    (at ``max_iter``)."""

    shape: np.ndarray
    rate: np.ndarray
    n_passes: int
    scale: ScaleState | None = None
    n_unsettled: int = 0
    n_rounded: int = 0

    def warn_unsettled(
        self, tol: float, max_iter: int | None = None, refit: str = "fit with dtype=np.float64"
    ) -> None:
        """The `ConvergenceWarning` of `transform` and `tl.project` when rows stopped at
        ``max_iter`` (SVI's local steps, a fit's inner loop, stay quiet), or, in float32,
        stopped on a change below their ELBO's rounding (``refit``: the advice; a float32
        transform of pseudobulk-scale rows stayed about twice as far from the optimum as
        float64's, quietly). ``max_iter``: the caller's setting, when it asked for fewer
        passes than the one a projection runs."""
        if self.n_rounded:
            warn_user(
                f"float32 rounds the ELBO of {self.n_rounded} of the {self.shape.shape[0]} "
                f"cells by more than the change tol={tol} resolves (it holds each count's "
                f"term to about 2**-24 nats), so their local fits may have stopped early: "
                f"{refit}",
                ConvergenceWarning,
            )
        if self.n_unsettled:
            limit = f"max_iter={self.n_passes} passes"
            if max_iter is not None and max_iter < self.n_passes:
                limit = f"{self.n_passes} pass (max_iter={max_iter} still runs one)"
            warn_user(
                f"the local fit stopped {self.n_unsettled} of {self.shape.shape[0]} cells after "
                f"{limit} before their relative ELBO change fell below "
                f"tol={tol}; raise max_iter or tol.",
                ConvergenceWarning,
            )


def fit_rows(
    data: CountData,
    col_shape: np.ndarray,
    col_rate: np.ndarray,
    prior: Prior,
    *,
    max_iter: int,
    tol: float,
    init_shape: np.ndarray | None = None,
    row_scale: ScaleState | None = None,
) -> RowFit:
    """The local step: q(z) of the rows of ``data`` with q(w) held fixed (``transform``,
    projection of new cells, cell-minibatch SVI).

    Each row is fitted on its own: coordinate ascent alternates its responsibilities and
    its q (under the learned prior: q(z), then its scale's q(xi), with the fitted
    hyperparameters of ``row_scale``) and stops when the row's ELBO (its data term,
    expected product and KL) changes by less than ``tol`` relative, or after ``max_iter``
    passes (with ``tol=0`` every row takes ``max_iter``); rows that stopped leave the
    passes. So a row's q does not depend on the other rows of ``data``, nor on the
    caller's Numba threads (`_kernels.local_rows_pass` sums each row's terms over its own
    nonzeros). Starts from ``init_shape`` (not modified; with ``row_scale``'s q(xi) under
    the learned prior) or else from `local_start_shape` (and q(xi) at its prior mean).
    ``n_passes``: the passes of the row that took the most; ``n_unsettled``: the rows
    still moving at ``max_iter`` (`RowFit.warn_unsettled`).
    """
    dtype = col_shape.dtype
    n_rows, n_components = data.shape[0], col_shape.shape[1]
    if data.major != 0:  # each row's nonzeros together
        data = as_count_data(data.rows_by_columns(), major=0)
    col_shape = np.asarray(col_shape, dtype=dtype)
    col_rate = np.asarray(col_rate, dtype=dtype)
    col_mean_sum = (col_shape / col_rate).sum(axis=0)
    col_moments = side_moments(col_shape, col_rate)  # fixed: computed once
    learned = isinstance(prior, HierarchicalPrior)
    if init_shape is None:
        row_shape = local_start_shape(prior, n_rows, n_components, dtype)
        if learned:  # q(xi) at the prior mean b'
            q_shape = np.full(n_rows, row_scale.prior_shape + row_scale.factor_shape.sum())
            row_scale = row_scale.with_q(q_shape, q_shape / row_scale.prior_mean)
    else:
        row_shape = np.array(init_shape, dtype=dtype)  # a copy: the caller's stays
    if learned:
        row_rate = (row_scale.mean[:, None] + col_mean_sum).astype(dtype)
        scale_shape, scale_rate = row_scale.shape.copy(), row_scale.rate.copy()
    else:
        row_rate = side_rate(prior, col_mean_sum, dtype)
    log_factorials = np.empty(n_rows)
    _kernels.row_log_factorials(data.indptr, data.counts, log_factorials)
    active = np.arange(n_rows)
    previous = np.full(n_rows, np.nan)  # each row's ELBO at its last pass
    n_passes = 0
    # float32 rounds a row's ELBO by about its counts x FLOAT32_ROUNDING_PER_COUNT: a row of
    # many counts can stop on that rounding
    rounding, rounded = None, 0
    if dtype == np.float32:
        row_totals, _ = compressed_totals(
            data.indptr, data.indices, data.counts, n_rows, data.shape[1]
        )
        rounding = row_totals * FLOAT32_ROUNDING_PER_COUNT
    while n_passes < max_iter and active.size:
        shape = row_shape[active]
        rate = row_rate[active] if learned else np.broadcast_to(row_rate, shape.shape)
        scale = row_scale.with_q(scale_shape[active], scale_rate[active]) if learned else None
        statistic, current = _local_pass(data, active, shape, rate, col_moments)
        current += _local_row_terms(shape, rate, prior, scale, col_mean_sum)
        current -= log_factorials[active]
        n_passes += 1
        last = previous[active]
        # NaN at the first pass; with tol = 0 no row stops before max_iter (a row's ELBO
        # can repeat to the last bit while its q still moves in the last digits)
        moving = ~(np.abs(current - last) <= tol * np.abs(last)) | (tol == 0)
        previous[active] = current
        if rounding is not None:  # rows stopped where their ELBO's rounding exceeds tol
            rounded += int(np.count_nonzero(~moving & (rounding[active] > tol * np.abs(last))))
        active, statistic = active[moving], statistic[moving]
        if learned:
            moved_shape, moved_rate, moved_scale, _ = update_side_learned(
                statistic, row_scale.with_q(scale_shape[active], scale_rate[active]),
                col_mean_sum, dtype,
            )  # fmt: skip
            row_shape[active], row_rate[active] = moved_shape, moved_rate
            scale_shape[active], scale_rate[active] = moved_scale.shape, moved_scale.rate
        else:
            row_shape[active] = side_shape(prior, statistic, dtype)
    if learned:
        row_scale = row_scale.with_q(scale_shape, scale_rate)
    return RowFit(
        row_shape, row_rate, n_passes, row_scale if learned else None, active.size, rounded
    )


def _local_pass(data: CountData, rows, shape, rate, col_moments):
    """`_kernels.local_rows_pass` over ``rows`` of rows-major ``data``, whose q is
    ``(shape, rate)`` (compacted to those rows): their statistics and data terms."""
    scaled, logmax, shape, rate = side_moments(shape, rate)
    col_scaled, col_logmax, col_shape, col_rate = col_moments
    statistic = np.empty(shape.shape)
    data_term = np.empty(rows.shape[0])
    _kernels.local_rows_pass(
        data.indptr, data.indices, data.counts, rows, scaled, logmax, shape, rate,
        col_scaled, col_logmax, col_shape, col_rate, _TINY[scaled.dtype], statistic,
        data_term,
    )  # fmt: skip
    return statistic, data_term


def _local_row_terms(shape, rate, prior: Prior, scale: ScaleState | None, col_mean_sum):
    """Each row's ELBO terms but the data term: ``-E[z_i] . col_mean_sum - KL`` (under the
    learned prior the KL of q(z_i) from p(z_i | xi_i) in expectation over q(xi_i), plus
    ``KL(q(xi_i) || p(xi_i))``)."""
    n_rows, n_components = shape.shape
    terms = np.empty(n_rows)
    if isinstance(prior, HierarchicalPrior):
        xi_digamma, xi_log_rate = _elementwise(digamma, scale.shape), np.log(scale.rate)
        prior_shape, prior_rate = scale.factor_shape, scale.mean
        log_prior_rate = xi_digamma - xi_log_rate
        rate0 = scale.prior_shape / scale.prior_mean
        scale_kl = gamma_kl_entries(
            scale.shape, scale.rate, scale.prior_shape, rate0, xi_digamma, xi_log_rate
        )
    else:
        prior_shape = np.full(n_components, float(prior.shape))
        prior_rate = np.full(n_rows, float(prior.rate))
        log_prior_rate = np.log(prior_rate)
        scale_kl = 0.0
    _kernels.local_row_terms(
        shape, _kernels.rows_or_row(rate, shape.shape), np.asarray(prior_shape, dtype=np.float64),
        prior_rate, log_prior_rate,
        np.asarray(col_mean_sum, dtype=np.float64), terms,
    )  # fmt: skip
    return terms - scale_kl


# -- the ELBO -------------------------------------------------------------------------------
@dataclass
class ElboTerms:
    """The ELBO as model.md writes it, from terms that are sums: over the nonzeros
    (``data_term``, with the responsibilities at their optimum), over rows
    (``row_mean_sum`` = ``sum_i E[z_i]``, ``row_kl``) and over columns. A driver that sees
    the data in pieces adds the pieces' terms (`__add__` sums the row and data terms)."""

    data_term: float
    row_mean_sum: np.ndarray
    row_kl: float
    col_mean_sum: np.ndarray | None = None
    col_kl: float = 0.0
    observed_product: float | None = None

    def value(self) -> float:
        """``data - sum_l (sum_i E[z_il])(sum_j E[w_jl]) - KL(q(z)) - KL(q(w))`` (nats);
        with missing entries the expected product is the observed entries' own,
        ``observed_product`` (`Mask.observed_product`)."""
        if self.observed_product is None:
            expected_product = float(self.row_mean_sum @ self.col_mean_sum)
        else:
            expected_product = self.observed_product
        return self.data_term - expected_product - self.row_kl - self.col_kl

    def __add__(self, other: ElboTerms) -> ElboTerms:
        return ElboTerms(
            self.data_term + other.data_term,
            self.row_mean_sum + other.row_mean_sum,
            self.row_kl + other.row_kl,
            self.col_mean_sum,
            self.col_kl,
        )

    def with_cols(self, col_shape, col_rate, prior: Prior, col_scale: ScaleState | None = None):
        """These row and data terms completed with the column side's."""
        col_mean_sum, col_kl = side_terms(col_shape, col_rate, prior, col_scale)
        return ElboTerms(self.data_term, self.row_mean_sum, self.row_kl, col_mean_sum, col_kl)


def side_terms(
    shape: np.ndarray, rate: np.ndarray, prior: Prior, scale: ScaleState | None = None
) -> tuple[np.ndarray, float]:
    """One side's share of the ELBO: ``sum E[.]`` per component (for the expected
    product) and the KL of its q from the prior (under the learned prior, of q(z) and
    q(xi) from p(z | xi) p(xi), with ``scale``: `_prior_terms`)."""
    *prior_arguments, scale_kl = _prior_terms(prior, scale)
    mean_sum, kl = _kernels.gamma_sums(shape, rate, *prior_arguments)
    return mean_sum, kl + scale_kl


def moments_and_terms(params: VariationalParams, prior: Prior):
    """`side_moments` and `side_terms` of both sides of the same q, by one kernel:
    ``((row_moments, row_terms), (col_moments, col_terms))``."""
    *row_prior, row_scale_kl = _prior_terms(prior, params.row_scale)
    *col_prior, col_scale_kl = _prior_terms(prior, params.col_scale)
    row_outputs, col_outputs = _kernels.gamma_moments_sums_of_sides(
        (params.row_shape, params.row_rate, *row_prior),
        (params.col_shape, params.col_rate, *col_prior),
    )
    return (
        _moments_and_terms(params.row_shape, *row_outputs, row_scale_kl),
        _moments_and_terms(params.col_shape, *col_outputs, col_scale_kl),
    )


def _moments_and_terms(shape, scaled, logmax, rate, mean_sum, kl, scale_kl):
    """One side's `side_moments` and `side_terms` from `moments_and_terms`' kernel."""
    return (scaled, logmax, _kernels.read_only(shape), rate), (mean_sum, kl + scale_kl)


def elbo_terms(
    data_term: float, params: VariationalParams, prior: Prior, mask: Mask | None = None
) -> ElboTerms:
    """The ELBO's terms for ``params`` whose pass gave ``data_term`` (with ``mask``, the
    missing entries' expected counts out of the total term)."""
    row_terms = side_terms(params.row_shape, params.row_rate, prior, params.row_scale)
    col_terms = side_terms(params.col_shape, params.col_rate, prior, params.col_scale)
    return _with_mask(ElboTerms(data_term, *row_terms, *col_terms), params, mask)


def _with_mask(terms: ElboTerms, params: VariationalParams, mask: Mask | None) -> ElboTerms:
    if mask is not None:
        terms.observed_product = mask.observed_product(params)
    return terms


def scored_statistics(
    data: CountData,
    params: VariationalParams,
    prior: Prior,
    n_parts: int,
    mask: Mask | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """`shape_statistics` and the ELBO of ``params`` (`elbo_terms`): what an iteration of
    a batch fit needs, both sides' tables and ELBO terms from one kernel
    (`moments_and_terms`)."""
    (row_moments, row_terms), (col_moments, col_terms) = moments_and_terms(params, prior)
    row_stat, col_stat, data_term = pass_statistics(data, row_moments, col_moments, n_parts)
    terms = _with_mask(ElboTerms(data_term, *row_terms, *col_terms), params, mask)
    return row_stat, col_stat, terms.value()


def elbo(
    data: CountData, params: VariationalParams, prior: Prior, n_parts: int = 1, mask=None
) -> float:
    """The ELBO of ``params`` (nats), with the responsibilities at their optimum."""
    _, _, data_term = shape_statistics(data, params, n_parts)
    return elbo_terms(data_term, params, prior, mask).value()


# -- the stopping rule ----------------------------------------------------------------------
def finite_elbo(value: float) -> float:
    """``value``, the exact ELBO of a q a batch fit keeps; `FloatingPointError` when it is
    not finite (q or its hyperparameters beyond the float range: a damaged checkpoint's,
    an extreme start or prior), so that no trace ends in an infinite or NaN ELBO."""
    if not math.isfinite(value):
        raise FloatingPointError(
            f"the ELBO of the fit's parameters is {value}: they hold values beyond the float "
            "range (from a damaged checkpoint, an extreme start or prior, or counts on an "
            "extreme scale: the model is for counts, and values far below 1 leave its range)"
        )
    return value


def has_converged(trace, tol: float) -> bool:
    """The stopping rule of every VB fit: the last two ELBOs differ by at most ``tol``
    relative to the earlier one. An earlier ELBO that is not finite (a start's -inf: means
    beyond the float range, or a prior rate a'/b' that underflows to 0) measures no
    change: ``|v - (-inf)| <= tol * inf`` held, and SQUAREM, which compares a start with
    its plain step, stopped "converged" after one step."""
    if len(trace) < 2 or not math.isfinite(trace[-2]):
        return False
    return abs(trace[-1] - trace[-2]) <= tol * abs(trace[-2])


# -- holding the factor shapes of a random start ---------------------------------------------
# The factor shapes a_l, c_l of a random start (`start_scale_template`): 1, the exponential.
START_FACTOR_SHAPE = 1.0
# A batch fit from a random start holds them there until the ELBO's relative change per pass
# first falls to HOLD_TOL, then learns them. Learned from the first pass, from a q that is
# still the independence fit plus noise, they can take the fit to a far poorer optimum
# (Reuters news at K = 20: 6.5 % lower ELBO, docs/model.md). HOLD_TOL is the square root of
# the default tol 1e-5, halfway to the stopping rule on a log scale: a few passes.
HOLD_TOL = 1e-5**0.5


def held_prior(prior: Prior) -> HierarchicalPrior | None:
    """The prior a random start is fitted under until `hold_released`: the learned prior
    with its factor shapes held at `START_FACTOR_SHAPE` (the other hyperparameters still
    learned); None when no factor shape is learned (the fixed prior, or shapes fixed)."""
    if isinstance(prior, HierarchicalPrior) and prior.factor_shape is None:
        return HierarchicalPrior(factor_shape=START_FACTOR_SHAPE)
    return None


def release_index(trace) -> int | None:
    """The position in a held fit's ELBO ``trace`` of the first value that changed the ELBO
    by at most `HOLD_TOL` (relative) from the one before: the value that released its
    factor shapes; None while they are held."""
    for i in range(1, len(trace)):
        if has_converged(trace[i - 1 : i + 1], HOLD_TOL):
            return i
    return None


def hold_released(trace) -> bool:
    """Whether a held fit with this ELBO trace has released its factor shapes: some pass
    changed the ELBO by at most `HOLD_TOL` (relative, `release_index`)."""
    return release_index(trace) is not None


def still_held(held: bool, trace) -> bool:
    """Whether a fit that started ``held`` (a random start's factor shapes held at
    `START_FACTOR_SHAPE`) holds them still after the ELBO ``trace``: not `hold_released`."""
    return bool(held) and not hold_released(trace)


def plain_stop(trace, tol: float, held: Prior | None) -> tuple[Prior | None, bool]:
    """The stopping rule of plain coordinate ascent with a hold, after a q's ELBO joined
    ``trace``: ``(held, converged)``. While ``held`` (`held_prior`), a change of at most
    `HOLD_TOL` releases it, and the stopping rule waits for the pass after."""
    if held is not None:
        return (None if has_converged(trace, HOLD_TOL) else held), False
    return None, has_converged(trace, tol)


def resumed_converged(trace, tol: float, held: bool) -> bool:
    """Whether the plain fit whose checkpoint holds ``trace`` had stopped (``held``: it
    started with a hold): `plain_stop`'s rule, from the trace."""
    released_before_last = not held or hold_released(trace[:-1])
    return released_before_last and has_converged(trace, tol)


# How `warn_not_converged`'s message starts: `tl.select_k` silences it in its fits by this
# (the other `ConvergenceWarning`s, e.g. `warn_elbo_rounding`'s, pass), reads whether each fit
# was held from its `FitOutcome` and gives one warning of its own.
NOT_CONVERGED_MESSAGE = r"(VB|SVI) stopped after "


def warn_not_converged(
    limit_name: str, limit: int, tol: float, holding: bool = False, untestable: str | None = None
) -> None:
    """The `ConvergenceWarning` of a fit that ran out of ``max_iter`` or ``n_epochs``;
    ``holding``: still holding a random start's factor shapes (`hold_released` not yet),
    which no ``tol`` stops: its ELBO changes may have fallen below ``tol`` already.
    ``untestable``: why the stopping rule could not have been met whatever ``tol`` (too few
    ELBO values to judge, `_svi.too_few_evaluations`), said instead of advising ``tol``;
    batch VB's at ``max_iter=1`` is said here."""
    if limit_name == "max_iter" and limit == 1 and untestable is None:
        # "raise max_iter or tol" advised a tol that could not have stopped it (tol=1e9 too)
        untestable = (
            "and no tol could have stopped it: its stopping rule compares the ELBOs of two "
            "passes in a row"
        )
    outcome = _FIT_OUTCOME.get()
    if outcome is not None:  # told also when the warning is silenced (`recording_outcome`)
        outcome.held = holding
        outcome.untestable = untestable is not None and not holding
    what, unit = ("SVI", "epoch") if limit_name == "n_epochs" else ("VB", "iteration")
    ran = f"{limit_name}={counted(limit, unit)}"
    if untestable is not None and not holding:
        warn_user(
            f"{what} stopped after {ran} {untestable}; raise {limit_name}.", ConvergenceWarning
        )
        return
    if holding:
        warn_user(
            f"{what} stopped after {ran} while it still held its factor "
            f"shapes at {START_FACTOR_SHAPE:g}, which it learns once an ELBO change is at most "
            f"HOLD_TOL={HOLD_TOL:.2g} relative, whatever the stopping tolerance "
            f'(docs/model.md, "The hold"); raise {limit_name}.',
            ConvergenceWarning,
        )
        return
    warn_user(
        f"{what} stopped after {ran} before the relative ELBO change "
        f"fell below tol={tol}; raise {limit_name} or tol.",
        ConvergenceWarning,
    )


@contextlib.contextmanager
def quiet_convergence(quiet: bool):
    """A block whose `ConvergenceWarning` is silenced when ``quiet`` (only then are the
    warning filters touched: they are global, shared by threads fitting meanwhile)."""
    if not quiet:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        yield


@dataclass
class FitOutcome:
    """What `warn_not_converged` told, or would have told, of the fit run under
    `recording_outcome`: ``held``, whether it ran out while it still held its factor
    shapes. `warn_kept_start` says so of the start kept of several (it advised "raise
    max_iter or tol", and no tol stops a held fit), and `tl.select_k` records it.
    ``untestable``: it ran out with too few ELBO values for the stopping rule to judge, so
    no ``tol`` could have stopped it either (`tl.select_k`'s warning says so)."""

    held: bool = False
    untestable: bool = False


# The outcome of the fit `recording_outcome` runs (None outside one): per context, as fits
# run in threads meanwhile.
_FIT_OUTCOME: contextvars.ContextVar[FitOutcome | None] = contextvars.ContextVar(
    "fit_outcome", default=None
)


@contextlib.contextmanager
def recording_outcome():
    """A block whose fit's `FitOutcome` is recorded; yields it (the innermost such block
    records a fit's own `warn_not_converged`)."""
    outcome = FitOutcome()
    token = _FIT_OUTCOME.set(outcome)
    try:
        yield outcome
    finally:
        _FIT_OUTCOME.reset(token)


@contextlib.contextmanager
def one_of_starts(n_starts: int):
    """The context of one of ``n_starts`` fits, of which the best is kept: with more than
    one, their own `ConvergenceWarning` is silenced and `warn_kept_start` gives the kept
    fit's (each start warned that it stopped at max_iter, also when the fit kept had
    converged, and a fit of three starts warned three times). Yields the start's
    `FitOutcome`, for `warn_kept_start`."""
    if n_starts <= 1:  # its own warning stands, and a caller's `recording_outcome` hears it
        yield FitOutcome()
        return
    with recording_outcome() as outcome, quiet_convergence(True):
        yield outcome


def warn_kept_start(best, n_starts: int, max_iter: int, tol: float, held: bool = False) -> None:
    """The `ConvergenceWarning` of the start kept of several, had it stopped at max_iter
    (``held``: its `FitOutcome`'s)."""
    if n_starts > 1 and not best.converged and max_iter > 0:
        warn_not_converged("max_iter", max_iter, tol, holding=held)


def print_start(verbose: bool, index: int, n_starts: int) -> None:
    """With ``verbose``, the start whose ELBOs follow, when there are several (``n_init``):
    each start's lines counted their passes from 1 again, and which one was kept was not
    said."""
    if verbose and n_starts > 1:
        print(f"start {index + 1} of {n_starts}", flush=True)


def print_kept(verbose: bool, best, index: int, n_starts: int) -> None:
    """With ``verbose``, which of several starts the fit keeps (the highest final ELBO)."""
    if verbose and n_starts > 1:
        # a start of max_iter=0 (SQUAREM: 1) records no ELBO: "-inf" read as a failed fit
        value = f"ELBO {best.elbo_trace[-1]:.10g}" if len(best.elbo_trace) else "no ELBO recorded"
        print(f"kept start {index + 1} of {n_starts}  {value}", flush=True)


def final_elbo(result) -> float:
    """The last ELBO of a fit's ``elbo_trace``, -inf when it recorded none: what the
    starts of ``n_init`` are compared by, the highest kept."""
    return result.elbo_trace[-1] if len(result.elbo_trace) else -np.inf


def warn_elbo_rounding(
    elbo_trace, converged: bool, dtype, tol: float, total_count: float, largest_count: float
) -> None:
    """The `ConvergenceWarning` of a batch fit (matrix or tensor) that met ``tol`` although
    its ELBO's rounding may be larger than the change ``tol`` resolves. float32 tables hold
    each count's data term to about 2**-24 nats, so counts in the hundreds of millions
    (pseudobulk) round the ELBO by more than a pass changes it near the end, and the
    stopping rule can fire early (counts near 1e6: 1.3 % below float64's ELBO). In float64
    each count's terms (``x log(sum_l ...)``, ``lgamma(x + 1)``, of size ``x log x``) are
    held to 2**-53 relative: a cell of twelve counts of 1e12 (each below the count limit)
    rounded an ELBO of -1,000 by 0.1 nats, its trace fell and the fit stopped on the
    rounding (``largest_count``: the largest count, for that ``log x``)."""
    if not converged or not len(elbo_trace):
        return
    if tol == 0:  # asked to run until the ELBO repeats exactly: only rounding ends that, in
        return  # either dtype (float32's warned every such fit, of 3 counts too)
    last = abs(float(elbo_trace[-1]))
    resolved = tol * last
    if np.dtype(dtype) == np.float32:
        rounding = total_count * FLOAT32_ROUNDING_PER_COUNT
        advice = "fit these counts with dtype=np.float64"
    else:
        rounding = total_count * math.log(max(largest_count, math.e)) * 2.0**-53
        advice = f"raise tol to at least {rounding / max(last, rounding):.1g}"
    if rounding > resolved:
        warn_user(
            f"{np.dtype(dtype).name} holds this fit's ELBO to about {rounding:.2g} nats "
            f"({total_count:.3g} counts), more than the {resolved:.2g} nats that tol={tol} "
            f"resolves, so its trace can fall by rounding and the fit may have stopped "
            f"early: {advice}",
            ConvergenceWarning,
        )


def warn_local_rounding(
    elbo_trace, dtype, tol: float, total_count: float, local: str = "cells"
) -> None:
    """The `ConvergenceWarning` of a float32 fit by cell-minibatch SVI whose cells' local
    fits (`fit_rows`, stopped by ``tol`` on each cell's ELBO) may have stopped on rounding:
    `warn_elbo_rounding`'s measure, each cell's share of the rounding against its share of
    the ELBO, whether or not the fit met ``tol``. On pseudobulk-scale counts (40 x 30,
    counts near 1e6) such a fit ended 0.3 to 0.5 % below float64's ELBO after 300 epochs,
    quietly, where the same fits with ``tol=0`` agree to 4e-6 (`VBNTF`'s slices form,
    ``local="slices"``: 1.4 % on a 30 x 15 x 6 tensor of counts up to 7.7e6, 60 epochs)."""
    if np.dtype(dtype) != np.float32 or tol == 0 or not len(elbo_trace):
        return
    resolved = tol * abs(float(elbo_trace[-1]))
    rounding = total_count * FLOAT32_ROUNDING_PER_COUNT
    if rounding > resolved:
        warn_user(
            f"float32 holds this fit's ELBO to about {rounding:.2g} nats ({total_count:.3g} "
            f"counts), more than the {resolved:.2g} nats that tol={tol} resolves, so the local "
            f"fits of its {local}, which stop on tol, may have stopped early: fit these counts "
            "with dtype=np.float64",
            ConvergenceWarning,
        )


@dataclass
class FitResult:
    """A finished fit: the final q, its ELBO trace (one value per kept q or evaluated
    epoch), the iteration (pass, or epoch) at which each value was taken (int64, strictly
    increasing, at most ``n_iter``), the number of iterations or epochs, and whether
    ``tol`` was met. ``unobserved_cols``: a fit with a mask's columns masked in every row
    (`Mask.unobserved_cols`), None for a fit without one."""

    params: VariationalParams
    elbo_trace: np.ndarray
    elbo_iter: np.ndarray
    n_iter: int
    converged: bool
    unobserved_cols: np.ndarray | None = None


# -- the start ------------------------------------------------------------------------------
def seed_entropy(random_state) -> int:
    """The integer from which every random draw of a fit derives (the start and SVI's
    minibatch order): ``random_state`` itself when it is a non-negative integer, fresh
    entropy for None, and one draw from a `numpy.random.Generator` or ``RandomState``."""
    if random_state is None:
        return int(np.random.SeedSequence().entropy)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**62))
    if not is_integer(random_state):
        raise TypeError(
            "random_state must be None, a non-negative integer, a numpy Generator or a "
            f"RandomState, got {random_state!r}"
        )
    if random_state < 0:
        raise ValueError(f"random_state must be non-negative, got {random_state}")
    return int(random_state)


@contextlib.contextmanager
def kept_if_failed(random_state):
    """Leave a `numpy.random.Generator` or ``RandomState`` ``random_state`` in the state it
    had before the block (in which a fit draws its `seed_entropy`) when the block raises.

    A fit that fails or is interrupted then leaves the generator as it found it: fitted
    again (an interrupted fit resumed from its checkpoint by the same estimator, or a
    fit retried after a refused X) it draws the entropy the first attempt drew, as a
    fresh generator of the same seed does. Advanced by the failed attempt, the resume was
    refused as "written by a different fit" and the retry was another fit.
    """
    if isinstance(random_state, np.random.Generator):
        state = random_state.bit_generator.state
    elif isinstance(random_state, np.random.RandomState):
        state = random_state.get_state()
    else:
        yield
        return
    try:
        yield
    except BaseException:
        if isinstance(random_state, np.random.Generator):
            random_state.bit_generator.state = state
        else:
            random_state.set_state(state)
        raise


def _generator(entropy: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=key))


def minibatch_generator(entropy: int, start: int = 0) -> np.random.Generator:
    """The generator of SVI's minibatch order for start ``start`` of ``entropy``."""
    return _generator(entropy, start, _MINIBATCHES)


def random_shapes(
    entropy: int, side: int, first: int, last: int, n_components: int, dtype, start: int = 0
) -> np.ndarray:
    """Starting shapes ``1 + U(0, 1)`` of rows ``first:last`` of one side (0 rows, 1
    columns; mode d of a tensor is side d), so every component starts distinct.

    Block b (rows ``b * START_BLOCK_ROWS`` onwards) is drawn from its own seed, so the
    result does not depend on how the rows are split between callers.
    """
    out = np.empty((last - first, n_components), dtype=dtype)
    part = (_ROWS,) if side == 0 else (_COLS,) if side == 1 else (_MODES, side)
    for block in range(first // START_BLOCK_ROWS, -(-last // START_BLOCK_ROWS)):
        block_first = block * START_BLOCK_ROWS
        low, high = max(first, block_first), min(last, block_first + START_BLOCK_ROWS)
        # the block's rows up to the last one needed, which are the first rows of the whole
        # block's draw (a generator fills row after row): the whole block, drawn for a
        # side of a few rows, took 4096 x K float64s (26 MB at K=800) beside its tables
        values = _generator(entropy, start, *part, block).random((high - block_first, n_components))
        out[low - first : high - first] = 1.0 + values[low - block_first : high - block_first]
    return out


def start_rate(shape: tuple[int, ...], total_count: float, n_components: int, dtype) -> np.ndarray:
    """The starting rate of every side: with shapes ``1 + U(0, 1)`` (mean 1.5) it puts
    ``E[z] = E[w] = sqrt(mean count / K)``, so ``sum_l E[z] E[w]`` is the mean count; for
    a tensor with D modes every mode's mean is ``(mean count / K)^(1/D)``."""
    return np.full(n_components, 1.5 / start_factor_mean(shape, total_count, n_components), dtype)


def start_factor_mean(shape: tuple[int, ...], total_count: float, n_components: int) -> float:
    """``(mean count / K)^(1/D)``, the mean of every factor at the start (`start_rate`), with
    `start_mean_count`'s floor on the mean count.

    A tensor's start expects at most the total count plus K times its shortest mode, an
    upper bound of the expected total at the optimum of the default fixed prior
    (`fixed_prior_least_log_rate`: below ``a n_m`` plus the count per component), taken in
    logs (the product of a tensor's modes may be beyond the float range: 30^60). From the
    floor alone the start of 60 modes of 30 with 200 nonzeros expected 1e-12 * 30^60, and
    the product of the other modes' column sums in its first rates overflowed float32. A
    matrix keeps its arithmetic: `VBNMF`'s start, which `VBNTF` reproduces at D = 2.
    """
    n_modes = len(shape)
    mean_count = start_mean_count(shape, total_count)
    if n_modes == 2:
        return _root(mean_count / n_components, n_modes)
    log_size = sum(math.log(n) for n in shape)
    log_bound = math.log(total_count + n_components * min(shape))
    if math.log(mean_count) + log_size <= log_bound:
        return _root(mean_count / n_components, n_modes)
    return math.exp((log_bound - log_size - math.log(n_components)) / n_modes)


def start_mean_count(shape: tuple[int, ...], total_count: float) -> float:
    """The mean count per entry a start scales itself by, at least `START_MEAN_FLOOR` so
    that counts without a nonzero start finite."""
    return max(total_count / math.prod(float(n) for n in shape), START_MEAN_FLOOR)


START_MEAN_FLOOR = 1e-12


def _root(value: float, n_sides: int) -> float:
    """``value^(1/D)``; ``np.sqrt`` for D = 2, the matrix engine's arithmetic."""
    return float(np.sqrt(value)) if n_sides == 2 else value ** (1.0 / n_sides)


def random_start(
    shape: tuple[int, int],
    n_components: int,
    total_count: float,
    entropy: int,
    dtype,
    start: int = 0,
    prior: Prior | None = None,
    totals: tuple[np.ndarray, np.ndarray] | None = None,
) -> VariationalParams:
    """The random q a fit starts from (start number ``start`` of ``entropy``): shapes
    from `random_shapes` on both sides; rates from `start_rate` (fixed prior) or, under the
    learned prior, from each row's and column's total (``totals``, see
    `learned_start_rates`) with the scales' q at its optimum (`learned_start_scale`)."""
    row_shape = random_shapes(entropy, 0, 0, shape[0], n_components, dtype, start)
    col_shape = random_shapes(entropy, 1, 0, shape[1], n_components, dtype, start)
    if not isinstance(prior, HierarchicalPrior):
        rate = start_rate(shape, total_count, n_components, dtype)
        return VariationalParams(row_shape, rate, col_shape, rate.copy())
    row_rate = learned_start_rates(totals[0], total_count, n_components, dtype)
    col_rate = learned_start_rates(totals[1], total_count, n_components, dtype)
    return _with_start_scales(row_shape, row_rate, col_shape, col_rate, totals, total_count, prior)


def _with_start_scales(
    row_shape, row_rate, col_shape, col_rate, totals, total_count: float, prior
) -> VariationalParams:
    """The learned prior's start q: these factors' q and each side's `learned_start_scale`
    from its ``totals``."""
    return VariationalParams(
        row_shape,
        row_rate,
        col_shape,
        col_rate,
        learned_start_scale(row_shape, row_rate, totals[0], total_count, prior),
        learned_start_scale(col_shape, col_rate, totals[1], total_count, prior),
    )


def svd_start(
    data: CountData,
    n_components: int,
    total_count: float,
    entropy: int,
    dtype,
    prior: HierarchicalPrior,
) -> VariationalParams:
    """The learned prior's start from NNDSVDa (`_nndsvd.nndsvda_means`) of the counts:
    each q(z_il) and q(w_jl) an exponential (shape 1) with NNDSVDa's factor as its mean,
    the scales' q as in `random_start`. Any common shape gives the same first
    responsibilities (``exp(E[log z])`` is the mean times a constant), so only the means
    matter; the SVD's test matrix is drawn from ``entropy``. Means are floored at the mean
    count times the dtype's epsilon, so that every rate is finite in ``dtype``. The SVD
    reads the engine's counts as they are stored; scipy's products widen them to float64
    one product at a time (8 bytes a nonzero while a product runs)."""
    n_rows = data.shape[0]
    floor = start_mean_count(data.shape, total_count) * float(np.finfo(dtype).eps)
    row_mean, col_mean = _nndsvd.nndsvda_means(
        data.rows_by_columns(), n_components, _generator(entropy, 0, _SVD), floor
    )
    row_shape, col_shape = np.ones((n_rows, n_components), dtype), np.ones_like(col_mean, dtype)
    row_rate, col_rate = (1.0 / row_mean).astype(dtype), (1.0 / col_mean).astype(dtype)
    return _with_start_scales(
        row_shape, row_rate, col_shape, col_rate, side_totals(data), total_count, prior
    )


@dataclass
class TotalsSummary:
    """What the learned prior's start needs of one side's totals (`totals_summary`), as
    sums over its rows, so that pieces of the rows (Dask chunks) can be summed: the number
    of rows and of empty ones, the smallest positive total, ``sum 1 / total`` over the
    positive totals."""

    n_rows: int
    n_empty: int
    smallest: float
    inverse_sum: float

    def __add__(self, other: TotalsSummary) -> TotalsSummary:
        return TotalsSummary(
            self.n_rows + other.n_rows,
            self.n_empty + other.n_empty,
            min(self.smallest, other.smallest),
            self.inverse_sum + other.inverse_sum,
        )

    @property
    def floor(self) -> float:
        """The total an empty row is given, so that every rate is finite: the smallest
        positive total (1 if there is none)."""
        return self.smallest if np.isfinite(self.smallest) else 1.0


def totals_summary(side_totals) -> TotalsSummary:
    """`TotalsSummary` of some rows' totals."""
    totals = np.asarray(side_totals, dtype=np.float64)
    positive = totals[totals > 0]
    return TotalsSummary(
        int(totals.size),
        int(totals.size - positive.size),
        float(positive.min()) if positive.size else np.inf,
        float(np.sum(1.0 / positive)),
    )


def _total_share(total_count: float, n_sides: int):
    """``T^((D - 1) / D)``, what each side's start divides its totals by (``np.sqrt`` for
    D = 2, the matrix engine's arithmetic)."""
    total = max(total_count, 1e-12)
    return np.sqrt(total) if n_sides == 2 else total ** ((n_sides - 1) / n_sides)


def learned_start_rates(
    side_totals,
    total_count: float,
    n_components: int,
    dtype,
    floor: float | None = None,
    n_sides: int = 2,
) -> np.ndarray:
    """Per-row starting rates under the learned prior: with shapes of mean 1.5 each row's
    factors sum to ``r_i / sqrt(T)`` (r_i its total, T the grand total), ``r_i / (K
    sqrt(T))`` each, so the start's mean ``sum_l E[z_il] E[w_jl]`` is ``r_i c_j / (K T)``:
    the independence fit ``r_i c_j / T`` (the rank-one Poisson maximum-likelihood fit)
    divided by K (for a tensor's ``n_sides`` = D modes each factor is ``r_i / (K T^((D -
    1) / D))`` and the mean the independence fit divided by ``K^(D - 1)``).
    An empty row is given the total ``floor`` (default: the smallest positive total of these
    rows; pass the whole side's `TotalsSummary.floor` for a piece of the rows)."""
    totals = np.asarray(side_totals, dtype=np.float64)
    if floor is None:
        floor = totals_summary(totals).floor
    rate = 1.5 * n_components * _total_share(total_count, n_sides) / np.maximum(totals, floor)
    return np.repeat(rate[:, None], n_components, axis=1).astype(dtype)


def start_scale_template(
    summary: TotalsSummary, total_count: float, n_components: int, prior, n_sides: int = 2
) -> ScaleState:
    """The hyperparameters one side's scales start from (q(xi) left empty): a_l = 1 (or
    the prior's fixed a_l) and a' = 1, the exponential case; b' the mean over rows of
    ``1 / mean_l E[z_il]`` at the start's mean shape 1.5 (`learned_start_rates`), so the
    prior mean ``a_l / xi_i`` matches the start. Every value is replaced after the first
    iteration."""
    factor = START_FACTOR_SHAPE if prior.factor_shape is None else prior.factor_shape
    inverse_sum = summary.inverse_sum + summary.n_empty / summary.floor
    share = _total_share(total_count, n_sides)
    prior_mean = n_components * share * inverse_sum / summary.n_rows
    empty = np.empty(0)
    return ScaleState(empty, empty, np.full(n_components, factor), 1.0, float(prior_mean))


def learned_start_scale(
    shape, rate, side_totals, total_count: float, prior, n_sides: int = 2
) -> ScaleState:
    """The start of one side's scales: the hyperparameters of `start_scale_template`, q(xi)
    at its optimum given them."""
    summary = totals_summary(side_totals)
    template = start_scale_template(summary, total_count, shape.shape[1], prior, n_sides)
    return scale_optimum(shape, rate, template)


def side_totals(data: CountData) -> tuple[np.ndarray, np.ndarray]:
    """Each row's and each column's total count."""
    major, minor = data.totals()
    return (major, minor) if data.major == 0 else (minor, major)


def csr_totals(csr) -> tuple[np.ndarray, np.ndarray]:
    """Each row's and each column's total count of a CSR matrix (any index order,
    duplicates added), without copying its arrays."""
    return compressed_totals(csr.indptr, csr.indices, csr.data, *csr.shape)


INIT_KEYS = ("cell_shape", "cell_rate", "gene_shape", "gene_rate")
# Optional keys of a start under the learned prior: q of the scales and the hyperparameters
# (missing ones are set as `complete_learned` sets them).
SCALE_KEYS = ("cell_scale_shape", "cell_scale_rate", "gene_scale_shape", "gene_scale_rate")
HYPER_KEYS = (
    "cell_factor_shape",
    "cell_scale_prior_shape",
    "cell_scale_prior_mean",
    "gene_factor_shape",
    "gene_scale_prior_shape",
    "gene_scale_prior_mean",
)


# The keys a start's mapping may hold: `tl.nmf`'s stored fits add the fixed prior's.
_READ_INIT_KEYS = frozenset(INIT_KEYS + SCALE_KEYS + HYPER_KEYS + ("prior_shape", "prior_rate"))


def init_params(
    init,
    shape: tuple[int, int],
    n_components: int,
    dtype,
    prior: Prior | None = None,
    lazy: bool = False,
    masked: bool = False,
) -> VariationalParams:
    """A given start as `VariationalParams` (rows = cells), checked.

    ``init`` is a `VariationalParams` (or a distributed fit's result, whose ``params``
    is one), a mapping with keys ``cell_shape``, ``cell_rate``, ``gene_shape``,
    ``gene_rate``, or a fitted estimator with attributes of those names plus ``_``. Rates
    are per component (K,) or, for the learned prior or a fit with missing entries
    (``masked``, whose rates are per entry under any prior), per entry (n x K).
    Under the learned ``prior`` the mapping (or estimator) may also hold q of the scales
    (`SCALE_KEYS`) and the hyperparameters (`HYPER_KEYS`); what is missing is completed by
    `complete_learned`. The arrays are copied; dask arrays (a distributed fit's) are
    computed, or with ``lazy`` (a start for a distributed fit) kept lazy and checked block
    by block when computed.

    Raises
    ------
    TypeError
        ``init`` is none of these, or an array holds other than real numbers (text,
        dates, complex numbers) or is a masked array with masked entries.
    ValueError
        A key is missing, or an array has the wrong shape or non-positive or non-finite
        entries, or gives means of q (shape / rate) beyond the float range, or a given
        factor or scale prior shape lies outside `PRIOR_SHAPE_RANGE`.
    """
    if isinstance(getattr(init, "params", None), VariationalParams):  # a `DaskFitResult`
        init = init.params
    if isinstance(init, VariationalParams):
        arrays, extra = init.as_tuple(), _scale_entries(init)
    elif isinstance(init, Mapping):
        try:
            arrays = tuple(init[key] for key in INIT_KEYS)
        except KeyError as missing:
            raise ValueError(f"init is missing {missing}") from None
        extra = {key: init[key] for key in SCALE_KEYS + HYPER_KEYS if init.get(key) is not None}
        unread = [key for key in init if key not in _READ_INIT_KEYS]
        if unread:  # a misspelt key ("cell_scale_shpe") left its value out without a word
            warn_user(
                f"init has keys it does not read: {', '.join(map(repr, unread[:5]))}"
                f"{', ...' if len(unread) > 5 else ''} (it reads {', '.join(INIT_KEYS)}, "
                "and under the learned prior the scales' and hyperparameters' keys: "
                "vbsnmf._model.SCALE_KEYS, HYPER_KEYS)",
                UserWarning,
            )
    elif all(hasattr(init, key + "_") for key in INIT_KEYS):
        arrays = tuple(getattr(init, key + "_") for key in INIT_KEYS)
        extra = {
            key: getattr(init, key + "_")
            for key in SCALE_KEYS
            if getattr(init, key + "_", None) is not None
        }
        extra.update(getattr(init, "hyperparameters_", None) or {})
    else:
        raise TypeError(
            "init must be a fitted VBNMF, a VariationalParams, a DaskFitResult or a mapping "
            "with keys "
            f"{', '.join(INIT_KEYS)}; got {type(init).__name__}"
        )
    n_rows, n_cols = shape
    _check_init_not_transposed(arrays, shape, n_components)
    learned = isinstance(prior, HierarchicalPrior)
    entry_rates = learned or masked
    checked = []
    for name, array, side in zip(INIT_KEYS, arrays, (n_rows, n_rows, n_cols, n_cols)):
        wants = [(side, n_components)]
        if name.endswith("rate"):
            wants = [(n_components,), (side, n_components)] if entry_rates else [(n_components,)]
        try:
            given_shape = np.shape(array)
        except ValueError:  # numpy's "inhomogeneous shape" names no key
            raise ValueError(
                f"init {name} is a ragged sequence (rows of different lengths); give an array"
            ) from None
        if any(np.isnan(n) for n in given_shape):  # "(nan, 3), expected (60, 3)" before
            raise ValueError(
                f"init {name} is a dask array of unknown chunk sizes; call its "
                "compute_chunk_sizes() first"
            )
        if tuple(given_shape) not in wants:
            raise ValueError(
                f"init {name} has shape {tuple(given_shape)}, expected "
                + " or ".join(map(str, wants))
                + _entry_rates_advice(name, given_shape, (side, n_components), bool(extra))
            )
        checked.append(_checked_array(array, name, dtype))
    params = VariationalParams(*checked)
    params = complete_learned(params, prior, extra) if learned else params
    _check_finite_means(params)
    return params if lazy else _computed(params)


def _check_finite_means(params: VariationalParams) -> None:
    """A `ValueError` naming the keys for a start whose means of q (shape / rate) are
    infinite, a rate far below its shape (a subnormal 1e-320): under the fixed prior its
    first pass gave numpy's "invalid value encountered in scalar add" RuntimeWarning (inf
    minus inf), and then a fit or a `FloatingPointError` by the side it was on. The learned
    prior's start refuses most such starts by its derived hyperparameters
    (`complete_learned`); a lazy start is checked by its fit."""
    for side, shape, rate in (
        ("cell", params.row_shape, params.row_rate),
        ("gene", params.col_shape, params.col_rate),
    ):
        if is_dask_array(shape) or is_dask_array(rate):
            continue
        with np.errstate(over="ignore", divide="ignore"):  # named below
            finite = np.all(np.isfinite(shape / rate))
        if not finite:
            raise ValueError(
                f"init {side}_shape / {side}_rate give means of q beyond the float range "
                f"(a {side}_shape / {side}_rate is inf: a rate too small for its shape); give "
                "a start whose means are finite"
            )


def _check_init_not_transposed(arrays, shape, n_components: int) -> None:
    """A `ValueError` for a warm start whose cells are X's genes and genes X's cells (X the
    transpose of the data it was fitted on, ``shape`` not square): "init cell_shape has
    shape (80, 3), expected (30, 3)" did not say so."""
    n_rows, n_cols = shape
    try:
        cells, genes = np.shape(arrays[0]), np.shape(arrays[2])
    except ValueError:  # ragged: named by the caller's checks
        return
    if n_rows != n_cols and cells == (n_cols, n_components) and genes == (n_rows, n_components):
        raise ValueError(
            f"init holds {n_cols} cells and {n_rows} genes, X {n_rows} cells and {n_cols} "
            "genes: X is the transpose of the data init was fitted on (genes x cells); "
            "pass X.T"
        )


def _entry_rates_advice(name: str, given: tuple, per_entry: tuple, learned: bool) -> str:
    """Why per-entry rates were refused, if they were: a start from the learned prior
    (``learned``: it came with scales or hyperparameters) or a masked fit's under the fixed
    prior; only the learned prior and a fit with missing entries keep rates per entry."""
    if not name.endswith("rate") or tuple(given) != per_entry:
        return ""
    if learned:
        return (
            " (init is a fit under the learned prior, prior='hierarchical', whose rates are "
            "per cell and gene: it starts only another fit under that prior)"
        )
    return (
        " (per-entry rates under prior='gamma', as a fit with mask= leaves them, start only "
        "another batch fit with a mask=)"
    )


def _computed(params: VariationalParams) -> VariationalParams:
    """``params`` with every dask array computed into memory (the kernels read numpy)."""

    def value(array):
        return compute_dask(array)[0] if is_dask_array(array) else array

    scales = []
    for scale in (params.row_scale, params.col_scale):
        if scale is not None:
            arrays = (value(a) for a in (scale.shape, scale.rate, scale.factor_shape))
            scale = ScaleState(*arrays, scale.prior_shape, scale.prior_mean)
        scales.append(scale)
    return VariationalParams(*(value(a) for a in params.as_tuple()), *scales)


def _scale_entries(params: VariationalParams) -> dict:
    """`SCALE_KEYS` and `HYPER_KEYS` entries of ``params`` (empty under the fixed prior)."""
    entries = {}
    for side, scale in (("cell", params.row_scale), ("gene", params.col_scale)):
        if scale is not None:
            entries[f"{side}_scale_shape"] = scale.shape
            entries[f"{side}_scale_rate"] = scale.rate
            entries.update(_hyper_entries(side, scale))
    return entries


def _hyper_entries(side: str, scale: ScaleState) -> dict:
    return {
        f"{side}_factor_shape": scale.factor_shape,
        f"{side}_scale_prior_shape": scale.prior_shape,
        f"{side}_scale_prior_mean": scale.prior_mean,
    }


def hyperparameters(params: VariationalParams) -> dict | None:
    """The learned hyperparameters by name (`HYPER_KEYS`), or None under the fixed prior."""
    if params.row_scale is None:
        return None
    return {**_hyper_entries("cell", params.row_scale), **_hyper_entries("gene", params.col_scale)}


def complete_learned(
    params: VariationalParams, prior: HierarchicalPrior, given: dict | None = None
) -> VariationalParams:
    """``params`` as a start under the learned prior: rates per entry; the hyperparameters
    and q of the scales from ``given`` (`SCALE_KEYS`, `HYPER_KEYS`) where there, else as
    `learned_start_scale` sets them from the means of q: a_l = 1, a' = 1, b' the mean of
    ``1 / mean_l E[z_il]``, q(xi) at its optimum. A prior that fixes the factor shapes
    a_l, c_l sets them whatever ``given`` holds (a given value is still checked)."""
    given = given or {}
    sides = []
    for side, shape, rate in (
        ("cell", params.row_shape, params.row_rate),
        ("gene", params.col_shape, params.col_rate),
    ):
        rate = np.broadcast_to(rate, shape.shape).astype(shape.dtype)  # a copy, per entry
        n_rows, n_components = shape.shape
        default_factor = START_FACTOR_SHAPE if prior.factor_shape is None else prior.factor_shape
        factor_key = f"{side}_factor_shape"
        factor = _hyper_numbers(given.get(factor_key, default_factor), factor_key)
        if factor.shape not in ((), (n_components,)):
            raise ValueError(
                f"init {factor_key} has shape {factor.shape}, expected ({n_components},)"
            )
        factor = _checked_block(np.broadcast_to(factor, (n_components,)).copy(), factor_key)
        _check_shape_range(factor, factor_key)
        if prior.factor_shape is not None:
            # the prior fixes them: a start from a fit that learned them (its
            # hyperparameters_) scored its first pass under those, and SQUAREM's
            # max_iter=1, which returns the start, returned them as the fit's
            factor = np.full(n_components, float(prior.factor_shape))
        prior_mean = given.get(f"{side}_scale_prior_mean")
        given_q = f"{side}_scale_shape" in given and f"{side}_scale_rate" in given
        row_mean_sum = None  # a lazy start's sum_l E[z_il] per row, computed once if needed
        lazy = is_dask_array(shape) or is_dask_array(rate)
        if lazy and (prior_mean is None or not given_q):
            # by the client holding the futures it reads (a distributed fit's cells): dask's
            # default scheduler may be another ("Missing dependency")
            (row_mean_sum,) = compute_dask((shape / rate).sum(axis=1, dtype=np.float64))
        derived = prior_mean is None
        with np.errstate(over="ignore", divide="ignore"):  # checked below, by name
            if derived and row_mean_sum is not None:
                prior_mean = float(np.mean(n_components / row_mean_sum))
            elif derived:
                prior_mean = float(np.mean(1.0 / (shape / rate).mean(axis=1)))
        if derived and not (math.isfinite(prior_mean) and prior_mean > 0):
            # b' is the start's, not a key given: name the keys it came from
            raise ValueError(
                f"init {side}_shape / {side}_rate give means of q beyond the float range "
                f"(their prior mean of the scales, the mean of 1 / mean_l E[z_il], is "
                f"{prior_mean:g}); give a start whose means are finite and positive"
            )
        prior_shape_key = f"{side}_scale_prior_shape"
        prior_mean_key = f"{side}_scale_prior_mean"
        scale = ScaleState(
            np.empty(0),
            np.empty(0),
            factor,
            _check_shape_range(
                check_positive_number(given.get(prior_shape_key, 1.0), prior_shape_key),
                prior_shape_key,
            ),
            check_positive_number(prior_mean, prior_mean_key),
        )
        if not math.isfinite(scale.prior_shape / scale.prior_mean):
            # the scales' prior rate a'/b' overflowed: q(xi) at its optimum would have an
            # infinite rate, E[xi] = 0, and the first step's gauge divided by zero
            raise ValueError(
                f"init {prior_mean_key}={scale.prior_mean:g} is too small for "
                f"{prior_shape_key}={scale.prior_shape:g}: the scales' prior rate a'/b' is "
                "beyond the float range"
            )
        if scale.prior_shape / scale.prior_mean == 0.0:
            # it underflowed: an improper prior of the scales, whose term a' log(a'/b') made
            # the start's ELBO -inf (and SQUAREM stopped "converged" after one step)
            raise ValueError(
                f"init {prior_mean_key}={scale.prior_mean:g} is too large for "
                f"{prior_shape_key}={scale.prior_shape:g}: the scales' prior rate a'/b' "
                "underflows to 0"
            )
        if given_q:
            q = [
                _checked_array(given[key], key, np.float64)
                for key in (f"{side}_scale_shape", f"{side}_scale_rate")
            ]
            if any(a.shape != (n_rows,) for a in q):
                raise ValueError(f"init {side}_scale_shape/_rate must have shape ({n_rows},)")
            scale = scale.with_q(*q)
        elif row_mean_sum is not None:
            scale = _scale_at_optimum(row_mean_sum, scale)
        else:
            scale = scale_optimum(shape, rate, scale)
        sides.append((shape, rate, scale))
    (row_shape, row_rate, row_scale), (col_shape, col_rate, col_scale) = sides
    return VariationalParams(row_shape, row_rate, col_shape, col_rate, row_scale, col_scale)


def _check_shape_range(shapes, key: str):
    """``shapes`` of an init hyperparameter ``key`` (a', a_l), within `PRIOR_SHAPE_RANGE`
    as every learned one is: from a' = 1e15 the first step's ELBO was off by hundreds of
    nats (its terms outgrow its precision) and the trace fell, and the next update of a'
    (held to the range) could not keep the ELBO either."""
    low, high = PRIOR_SHAPE_RANGE
    if np.any(np.asarray(shapes) < low) or np.any(np.asarray(shapes) > high):
        raise ValueError(
            f"init {key} must be between {low:g} and {high:g}, as a learned shape is "
            f"(beyond, the ELBO's terms cannot be computed to the precision of its changes), "
            f"got {np.ravel(shapes)[:3]!r:.80}"
        )
    return shapes


def check_positive_number(value, key: str) -> float:
    """The number an init hyperparameter ``key`` holds, positive and finite."""
    array = _hyper_numbers(value, key)
    if array.size != 1:  # float() of a longer array is numpy's error
        raise ValueError(f"init {key} must be one number, got shape {array.shape}")
    number = float(array.reshape(()))
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"init {key} must be positive and finite, got {number}")
    return number


def _hyper_numbers(value, key: str) -> np.ndarray:
    """``value`` of an init hyperparameter ``key`` as float64; a `TypeError` naming it
    unless it holds real numbers (text or booleans would be converted by numpy)."""
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"init {key} must hold real numbers, got {value!r:.80}")
    return array.astype(np.float64)


def params_to_arrays(params: VariationalParams) -> dict[str, np.ndarray]:
    """``params`` as named arrays (checkpoints): the four of q, and under the learned prior
    q of the scales and the hyperparameters."""
    names = ("row_shape", "row_rate", "col_shape", "col_rate")
    arrays = {name: np.asarray(array) for name, array in zip(names, params.as_tuple())}
    for side, scale in (("row", params.row_scale), ("col", params.col_scale)):
        if scale is not None:
            arrays[f"{side}_scale_shape"] = scale.shape
            arrays[f"{side}_scale_rate"] = scale.rate
            arrays[f"{side}_factor_shape"] = scale.factor_shape
            arrays[f"{side}_scale_prior"] = np.array([scale.prior_shape, scale.prior_mean])
    return arrays


def params_from_arrays(arrays: Mapping[str, np.ndarray]) -> VariationalParams:
    """The inverse of `params_to_arrays`."""
    main = [arrays[name] for name in ("row_shape", "row_rate", "col_shape", "col_rate")]
    scales = []
    for side in ("row", "col"):
        if f"{side}_scale_shape" not in arrays:
            scales.append(None)
            continue
        pair = arrays[f"{side}_scale_prior"]
        scales.append(
            ScaleState(
                arrays[f"{side}_scale_shape"],
                arrays[f"{side}_scale_rate"],
                arrays[f"{side}_factor_shape"],
                float(pair[0]),
                float(pair[1]),
            )
        )
    return VariationalParams(*main, *scales)


def _checked_array(array, name: str, dtype):
    """A copy of ``array`` in ``dtype``, positive and finite; a dask array (too large for
    one machine: a distributed fit's) stays lazy and is checked block by block."""
    if is_dask_array(array):
        # refused here as in memory: numpy's messages when the blocks are computed name no key
        if array.dtype.kind not in "biuf" or sp.issparse(array._meta):
            kind = "sparse chunks" if sp.issparse(array._meta) else f"dtype {array.dtype}"
            raise TypeError(f"init {name} must hold real numbers in dense chunks, got {kind}")
        return array.astype(dtype).map_blocks(_checked_block, name, dtype=dtype)
    # np.asarray drops the mask: the hidden values would be the start, and the counts'
    # masked arrays are refused as such too
    refuse_masked(array, f"init {name}", "give the values to start from as a plain array")
    try:
        given = np.asarray(array)
    except (TypeError, ValueError):  # numpy's message names no key
        raise TypeError(f"init {name} must hold real numbers, got {array!r:.80}") from None
    if given.dtype == object:  # text in it is refused; numbers are read as float64
        given = numbers_from_objects(given, f"init {name}")
    # complex: numpy would drop the imaginary parts, with a ComplexWarning only; text
    # ("1.0") was parsed as a number, dates as their ticks
    if given.dtype.kind not in "biuf":
        raise TypeError(f"init {name} must hold real numbers, got dtype {given.dtype}")
    copy = np.array(given, dtype=dtype, copy=True)
    if copy.dtype == np.float32 and given.dtype != np.float32:
        _refuse_beyond_float32(given, copy, name)
    return _checked_block(copy, name)


def _refuse_beyond_float32(given, copy: np.ndarray, name: str) -> None:
    """Refuse a start ``given`` positive and finite whose float32 ``copy`` is not: a
    float64 fit's rates of 1e-50 (a tiny ``prior_rate``) became 0 and were refused as not
    "positive and finite", which they were."""
    if np.all(np.isfinite(copy)) and not np.any(copy <= 0):
        return
    wide = np.asarray(given, dtype=np.float64)
    if not (np.all(np.isfinite(wide)) and not np.any(wide <= 0)):
        return  # not positive and finite as given either: `_checked_block` says so
    info = np.finfo(np.float32)
    outside = wide[(wide < info.smallest_subnormal) | (wide > info.max)]
    raise ValueError(
        f"init {name} holds values beyond what dtype=np.float32 holds ({outside.flat[0]:.3g}; "
        f"float32 reaches {info.tiny:.3g} to {info.max:.3g}), which would be 0 or inf: fit "
        "with dtype=np.float64, or give a start within that range"
    )


def _checked_block(block: np.ndarray, name: str) -> np.ndarray:
    block = np.asarray(block)
    if not np.all(np.isfinite(block)) or np.any(block <= 0):
        raise ValueError(f"init {name} must be positive and finite")
    return block
