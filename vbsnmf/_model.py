"""The Poisson-Gamma model and its variational family, written once (``docs/model.md``).

    x_ij ~ Poisson(sum_l z_il w_jl),   z_il ~ Gamma(a, b),   w_jl ~ Gamma(a, b)
    q(z_il) = Gamma(row_shape[i, l], row_rate[l]),  q(w_jl) = Gamma(col_shape[j, l], col_rate[l])

The engine is orientation-free: rows are ``z`` and columns ``w`` of whatever matrix it is
given (cells and genes for AnnData; the estimator names them). Everything a driver needs of
the model is here, and a new prior or likelihood is added here and nowhere else:

- the family and the prior: `VariationalParams`, `GammaPrior`;
- the only step that visits the data, updateA's pass over the nonzeros
  (`shape_statistics`, `pass_statistics`);
- the steps: `update_side` (one side's q, `side_shape` and `side_rate`, from its pass
  statistic and the other side's mean column sums), `global_step` (both sides in
  model.md's order), `fit_rows` (the local step: q of some rows with the columns held
  fixed, as ``transform`` and cell-minibatch SVI use);
- the start: `random_start`, drawn per fixed block of rows from a seed sequence
  (`random_shapes`), so any split of the rows (Dask chunks, files read in blocks) draws
  the same numbers; `local_start_shape` for local fits; `init_params` for given starts;
- the ELBO from its summed terms (`ElboTerms`; `side_terms` gives one side's share), and
  the stopping rule with its warning (`has_converged`, `warn_not_converged`).

The drivers (batch `_batch.py`, stochastic `_svi.py`, distributed `_dask/`) are loops that
call these over their own data layout and sum the statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.special import digamma
from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning

from . import _kernels
from ._data import CountData
from ._utils import is_dask_array, warn_user

# Normalisers of the pass's fast path below these fall back to log-sum-exp (see _kernels).
_TINY = {np.dtype(np.float64): 1e-200, np.dtype(np.float32): 1e-30}

# Rows per block of the random start: block b of a side is drawn from its own seed, so
# the start of any range of rows is the same however the rows are split.
START_BLOCK_ROWS = 4096

# Seed-sequence spawn keys of what a start draws: (start index, part, block...).
_ROWS, _COLS, _MINIBATCHES = 0, 1, 2


class ConvergenceWarning(SklearnConvergenceWarning):
    """The fit stopped at ``max_iter`` (or ``n_epochs``) before the relative change of its
    ELBO fell below ``tol``. A scikit-learn ``ConvergenceWarning`` too, so either filter
    catches it."""


# -- the variational family and the prior --------------------------------------------------
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


@dataclass(frozen=True)
class GammaPrior:
    """The fixed prior of Cemgil (2009): every entry of both factor matrices is
    Gamma(``shape``, ``rate``) (shape a, rate b)."""

    shape: float = 1.0
    rate: float = 1.0


def expected_log(shape: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """``E[log z] = digamma(shape) - log(rate)`` for Gamma(shape, rate)."""
    return digamma(shape) - np.log(rate)


def gamma_kl(shape, rate, prior_shape: float, prior_rate: float) -> float:
    """``sum KL(Gamma(shape, rate) || Gamma(prior_shape, prior_rate))`` over all entries
    (``rate`` and the prior's parameters broadcastable to ``shape``)."""
    return _kernels.gamma_sums(shape, rate, prior_shape, prior_rate)[1]


# -- the pass over the nonzeros (updateA) -------------------------------------------------
def side_moments(shape: np.ndarray, rate: np.ndarray) -> tuple[np.ndarray, ...]:
    """What the pass needs of one side of q: ``exp(E[log])`` divided by its row maximum
    (padded with zero columns to `_kernels.padded_width`), that maximum (log scale), and
    the shapes and log rates for the pass's log-space path; ``rate`` per component or
    any array broadcastable to ``shape``."""
    shape = np.asarray(shape)
    n_rows, n_components = shape.shape
    log_rate = np.broadcast_to(np.log(np.asarray(rate, dtype=np.float64)), shape.shape)
    scaled = np.empty((n_rows, _kernels.padded_width(n_components, shape.dtype)), shape.dtype)
    logmax = np.empty(n_rows)
    _kernels.gamma_moments(shape, log_rate, scaled, logmax)
    return scaled, logmax, shape, log_rate


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
    major_scaled, major_logmax, major_shape, major_log_rate = (row_moments, col_moments)[data.major]
    minor_scaled, minor_logmax, minor_shape, minor_log_rate = (row_moments, col_moments)[
        1 - data.major
    ]
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
        major_log_rate,
        minor_scaled,
        minor_logmax,
        minor_shape,
        minor_log_rate,
        _TINY[np.dtype(dtype)],
        block_rows or _kernels.minor_block_rows(minor_scaled.shape[1], dtype.itemsize),
        major_stat,
        minor_partial,
        data_partial,
    )
    minor_stat = np.empty((minor_scaled.shape[0], n_components))
    _kernels.sum_parts(minor_partial, minor_stat)  # in part order
    stats = (major_stat, minor_stat) if data.major == 0 else (minor_stat, major_stat)
    return stats[0], stats[1], float(data_partial.sum()) - data.log_factorial


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
    prior: GammaPrior,
    rate_scale: float = 1.0,
) -> VariationalParams:
    """updateA's shapes from the pass statistics, then updateB in model.md's order: the
    row rate from ``E_old[w]``, the column rate from ``E_new[z]``. Each is the exact optimum
    of its block given the rest, so the step never lowers the ELBO.

    ``rate_scale`` multiplies the other side's sums in both rates (1 for VB; Abe and
    Shimamura's minibatch form scales them by S / (R C)).
    """
    dtype = params.row_shape.dtype
    row_shape, row_rate = update_side(
        prior, row_stat, rate_scale * params.col_mean.sum(axis=0), dtype
    )
    col_shape, col_rate = update_side(
        prior, col_stat, rate_scale * (row_shape / row_rate).sum(axis=0), dtype
    )
    return VariationalParams(row_shape, row_rate, col_shape, col_rate)


def local_start_shape(prior: GammaPrior, n_rows: int, n_components: int, dtype) -> np.ndarray:
    """Where a local fit of rows with no earlier optimum starts: ``shape = a + 1``
    everywhere (deterministic, the same for every row)."""
    return np.full((n_rows, n_components), prior.shape + 1.0, dtype=dtype)


@dataclass
class RowFit:
    """What `fit_rows` returns: the rows' q (rate per component) and the passes it took."""

    shape: np.ndarray
    rate: np.ndarray
    n_passes: int


def fit_rows(
    data: CountData,
    col_shape: np.ndarray,
    col_rate: np.ndarray,
    prior: GammaPrior,
    *,
    max_iter: int,
    tol: float,
    n_parts: int = 1,
    init_shape: np.ndarray | None = None,
) -> RowFit:
    """The local step: q(z) of the rows of ``data`` with q(w) held fixed (``transform``,
    projection of new cells, cell-minibatch SVI).

    The row rate ``b + sum_j E[w_jl]`` does not change, so coordinate ascent alternates the
    responsibilities and the row shapes; it stops when the rows' ELBO (data term, expected
    product, KL of q(z)) changes by less than ``tol`` relative, or after ``max_iter``
    passes. Starts from ``init_shape`` (not modified) or else `local_start_shape`.
    """
    dtype = col_shape.dtype
    n_rows, n_components = data.shape[0], col_shape.shape[1]
    col_shape = np.asarray(col_shape, dtype=dtype)
    col_rate = np.asarray(col_rate, dtype=dtype)
    col_mean_sum = (col_shape / col_rate).sum(axis=0)
    row_rate = side_rate(prior, col_mean_sum, dtype)
    col_moments = side_moments(col_shape, col_rate)  # fixed: computed once
    if init_shape is None:
        row_shape = local_start_shape(prior, n_rows, n_components, dtype)
    else:
        row_shape = np.array(init_shape, dtype=dtype)  # a copy: the caller's stays
    previous, n_passes = None, 0
    for _ in range(max_iter):
        row_stat, _, data_term = pass_statistics(
            data, side_moments(row_shape, row_rate), col_moments, n_parts
        )
        n_passes += 1
        row_mean_sum, row_kl = side_terms(row_shape, row_rate, prior)
        current = ElboTerms(data_term, row_mean_sum, row_kl, col_mean_sum, 0.0).value()
        if previous is not None and abs(current - previous) <= tol * abs(previous):
            break
        previous = current
        row_shape = side_shape(prior, row_stat, dtype)
    return RowFit(row_shape, row_rate, n_passes)


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

    def value(self) -> float:
        """``data - sum_l (sum_i E[z_il])(sum_j E[w_jl]) - KL(q(z)) - KL(q(w))`` (nats)."""
        expected_product = float(self.row_mean_sum @ self.col_mean_sum)
        return self.data_term - expected_product - self.row_kl - self.col_kl

    def __add__(self, other: ElboTerms) -> ElboTerms:
        return ElboTerms(
            self.data_term + other.data_term,
            self.row_mean_sum + other.row_mean_sum,
            self.row_kl + other.row_kl,
            self.col_mean_sum,
            self.col_kl,
        )

    def with_cols(self, col_shape: np.ndarray, col_rate: np.ndarray, prior: GammaPrior):
        """These row and data terms completed with the column side's."""
        col_mean_sum, col_kl = side_terms(col_shape, col_rate, prior)
        return ElboTerms(self.data_term, self.row_mean_sum, self.row_kl, col_mean_sum, col_kl)


def side_terms(shape: np.ndarray, rate: np.ndarray, prior: GammaPrior) -> tuple[np.ndarray, float]:
    """One side's share of the ELBO: ``sum E[.]`` per component (for the expected
    product) and the KL of its q from the prior."""
    return _kernels.gamma_sums(shape, rate, prior.shape, prior.rate)


def elbo_terms(data_term: float, params: VariationalParams, prior: GammaPrior) -> ElboTerms:
    """The ELBO's terms for ``params`` whose pass gave ``data_term``."""
    row_mean_sum, row_kl = side_terms(params.row_shape, params.row_rate, prior)
    col_mean_sum, col_kl = side_terms(params.col_shape, params.col_rate, prior)
    return ElboTerms(data_term, row_mean_sum, row_kl, col_mean_sum, col_kl)


def elbo(data: CountData, params: VariationalParams, prior: GammaPrior, n_parts: int = 1) -> float:
    """The ELBO of ``params`` (nats), with the responsibilities at their optimum."""
    _, _, data_term = shape_statistics(data, params, n_parts)
    return elbo_terms(data_term, params, prior).value()


# -- the stopping rule ----------------------------------------------------------------------
def has_converged(trace, tol: float) -> bool:
    """The stopping rule of every VB fit: the last two ELBOs differ by at most ``tol``
    relative to the earlier one."""
    return len(trace) >= 2 and abs(trace[-1] - trace[-2]) <= tol * abs(trace[-2])


def warn_not_converged(limit_name: str, limit: int, tol: float) -> None:
    """The `ConvergenceWarning` of a fit that ran out of ``max_iter`` or ``n_epochs``."""
    what, unit = ("SVI", "epochs") if limit_name == "n_epochs" else ("VB", "iterations")
    warn_user(
        f"{what} stopped after {limit_name}={limit} {unit} before the relative ELBO change "
        f"fell below tol={tol}; raise {limit_name} or tol.",
        ConvergenceWarning,
    )


@dataclass
class FitResult:
    """A finished fit: the final q, its ELBO trace (one value per iteration or evaluated
    epoch), the number of iterations or epochs, and whether ``tol`` was met."""

    params: VariationalParams
    elbo_trace: np.ndarray
    n_iter: int
    converged: bool


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
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise TypeError(
            f"random_state must be None, a non-negative integer or a numpy Generator, "
            f"got {random_state!r}"
        )
    if random_state < 0:
        raise ValueError(f"random_state must be non-negative, got {random_state}")
    return int(random_state)


def _generator(entropy: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=key))


def minibatch_generator(entropy: int, start: int = 0) -> np.random.Generator:
    """The generator of SVI's minibatch order for start ``start`` of ``entropy``."""
    return _generator(entropy, start, _MINIBATCHES)


def random_shapes(
    entropy: int, side: int, first: int, last: int, n_components: int, dtype, start: int = 0
) -> np.ndarray:
    """Starting shapes ``1 + U(0, 1)`` of rows ``first:last`` of one side (0 rows, 1
    columns), so every component starts distinct.

    Block b (rows ``b * START_BLOCK_ROWS`` onwards) is drawn from its own seed, so the
    result does not depend on how the rows are split between callers.
    """
    out = np.empty((last - first, n_components), dtype=dtype)
    part = _ROWS if side == 0 else _COLS
    for block in range(first // START_BLOCK_ROWS, -(-last // START_BLOCK_ROWS)):
        block_first = block * START_BLOCK_ROWS
        values = _generator(entropy, start, part, block).random((START_BLOCK_ROWS, n_components))
        low, high = max(first, block_first), min(last, block_first + START_BLOCK_ROWS)
        out[low - first : high - first] = 1.0 + values[low - block_first : high - block_first]
    return out


def start_rate(shape: tuple[int, int], total_count: float, n_components: int, dtype) -> np.ndarray:
    """The starting rate of both sides: with shapes ``1 + U(0, 1)`` (mean 1.5) it puts
    ``E[z] = E[w] = sqrt(mean count / K)``, so ``sum_l E[z] E[w]`` is the mean count."""
    mean_count = max(total_count / (float(shape[0]) * float(shape[1])), 1e-12)
    return np.full(n_components, 1.5 / np.sqrt(mean_count / n_components), dtype=dtype)


def random_start(
    shape: tuple[int, int], n_components: int, total_count: float, entropy: int, dtype, start=0
) -> VariationalParams:
    """The random q a fit starts from (start number ``start`` of ``entropy``)."""
    rate = start_rate(shape, total_count, n_components, dtype)
    return VariationalParams(
        random_shapes(entropy, 0, 0, shape[0], n_components, dtype, start),
        rate,
        random_shapes(entropy, 1, 0, shape[1], n_components, dtype, start),
        rate.copy(),
    )


INIT_KEYS = ("cell_shape", "cell_rate", "gene_shape", "gene_rate")


def init_params(init, shape: tuple[int, int], n_components: int, dtype) -> VariationalParams:
    """A given start as `VariationalParams` (rows = cells), checked.

    ``init`` is a `VariationalParams`, a mapping with keys ``cell_shape``, ``cell_rate``,
    ``gene_shape``, ``gene_rate``, or a fitted estimator with attributes of those names
    plus ``_``. The arrays are copied; a dask array of cell shapes (a distributed fit's) is
    kept lazy and checked block by block when computed.

    Raises
    ------
    TypeError
        ``init`` is none of these.
    ValueError
        A key is missing, or an array has the wrong shape or non-positive or non-finite
        entries.
    """
    if isinstance(init, VariationalParams):
        arrays = init.as_tuple()
    elif isinstance(init, Mapping):
        try:
            arrays = tuple(init[key] for key in INIT_KEYS)
        except KeyError as missing:
            raise ValueError(f"init is missing {missing}") from None
    elif all(hasattr(init, key + "_") for key in INIT_KEYS):
        arrays = tuple(getattr(init, key + "_") for key in INIT_KEYS)
    else:
        raise TypeError(
            "init must be a fitted VBNMF, a VariationalParams or a mapping with keys "
            f"{', '.join(INIT_KEYS)}; got {type(init).__name__}"
        )
    n_rows, n_cols = shape
    expected = ((n_rows, n_components), (n_components,), (n_cols, n_components), (n_components,))
    checked = []
    for name, array, want in zip(INIT_KEYS, arrays, expected):
        if tuple(np.shape(array)) != want:
            raise ValueError(f"init {name} has shape {tuple(np.shape(array))}, expected {want}")
        if is_dask_array(array):  # too large for one machine: checked block by block
            checked.append(array.astype(dtype).map_blocks(_checked_block, name, dtype=dtype))
            continue
        checked.append(_checked_block(np.array(array, dtype=dtype, copy=True), name))
    return VariationalParams(*checked)


def _checked_block(block: np.ndarray, name: str) -> np.ndarray:
    block = np.asarray(block)
    if not np.all(np.isfinite(block)) or np.any(block <= 0):
        raise ValueError(f"init {name} must be positive and finite")
    return block
