"""Numba kernels: every loop over nonzeros or matrix entries in vbsnmf lives here.

Notation of ``docs/model.md``. The variational-Bayes kernels see the count matrix as
compressed sparse rows along a *major* axis (``indptr``, ``indices``, ``counts``); the
other axis is the *minor* one. Which of cells and genes is major is the caller's choice
(`_data.as_count_data` takes the longer axis, so the per-part accumulators are on the
shorter one).

Race-free parallel scatter-add: the major axis is cut into ``n_parts`` contiguous ranges
of about equal nonzeros; one part owns its major rows outright and writes its minor-side
statistics into its own slab ``minor_partial[part]``, summed afterwards in part order.
The result therefore depends on the number of parts (normally the thread count) but not
on how the threads are scheduled: a fixed ``random_state`` and thread count give
bitwise-identical fits.

Cache tiling: the minor side's rows are read and accumulated at random for every nonzero.
When its tables outgrow the per-core cache (33,514 genes x 16 doubles is 4 MiB per table
at the shape of the Bischoff et al. 2021 lung atlas) `update_shapes` walks the minor axis
in blocks of `minor_block_rows` rows, one sweep over the part's major rows per block, which
measured 2x faster there.

Log-space safety: rows of ``exp(E[log z])`` are stored divided by their maximum
(``*_scaled`` times ``exp(*_logmax)``), so the fast path multiplies numbers in (0, 1].
When the normaliser of one nonzero still falls below ``tiny`` (the two rows peak on
different components and everything else underflowed, which happens for prior shapes
near 1e-3), that nonzero is redone by log-sum-exp from ``E[log]`` itself.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.caching import Cache
from numba.extending import intrinsic, overload
from scipy.special import gammaln

# Every parallel kernel is a `ParallelKernel`: one launch at a time under Numba's workqueue
# layer, and a clear error in a child forked from a GNU OpenMP process.
from ._utils import ParallelKernel


def _cache_probe() -> None:
    """Never called: `_disk_cache_available` wraps it to ask Numba for a cache folder."""


def _disk_cache_available() -> bool:
    """Whether Numba can keep this file's compiled kernels on disk: in ``__pycache__``
    beside it, or in its user-wide cache (``NUMBA_CACHE_DIR``, else ``~/.cache/numba``).
    Where neither is writable (a read-only install in a container whose HOME is read-only)
    Numba raised "cannot cache function ...: no locator available" when wrapping each
    ``cache=True`` kernel, so importing this module, and every fit, failed."""
    try:
        njit(cache=True)(_cache_probe)
    except RuntimeError:
        return False
    return True


# Without a writable cache folder the kernels are compiled in every process instead.
DISK_CACHE = _disk_cache_available()

# No flag assumes away NaN or inf. Not "reassoc": with it, LLVM chose a different
# summation order when it compiled a kernel in the running process than when it wrote the
# same kernel to Numba's on-disk cache, so a fit's bits depended on whether the kernels
# were cached (tests/test_reproducibility.py). A sum that should run in vector lanes is
# written out lane by lane instead (`row_dot_add_scaled`).
_FASTMATH = {"contract", "arcp", "nsz"}

# Numba's default ("python") error model puts a ZeroDivisionError check on every float
# division, and that branch kept LLVM from vectorising any loop that divides: the
# polynomial of `weighted_log_sum` and the digamma recurrence ran one scalar division at
# a time. The VB kernels divide only by numbers they know to be positive, so they take
# numpy's model (IEEE results, no check): 7.3 -> 3.9 ns per logarithm on the 2-core EPYC.
_ERRORS = "numpy"

# Numba's ``float(x)`` of a float32 stays a float32: a quotient meant in float64 widens its
# operands with ``np.float64`` (``float(shape) / float(rate)`` of float32 tables divided in
# float32, and `learned_side` summed those quotients as if they were float64's).

# The K-long loops vectorise completely only when K is a multiple of the SIMD width (one
# 32-byte AVX2 register: 4 doubles or 8 floats); otherwise a scalar remainder runs for every
# nonzero. Padding the factor tables with zero columns measured 1.3-1.8x faster for
# update_shapes at K=15 on the lung-atlas shape and 1.2-2x for classic_sparse_dot at K=10,
# in same-process A/B runs on the 2-core machine.
SIMD_BYTES = 32


def simd_width(dtype) -> int:
    """Entries of ``dtype`` in one SIMD register (4 for float64, 8 for float32)."""
    return SIMD_BYTES // np.dtype(dtype).itemsize


# Bytes of one minor-side table block (scaled factors; the accumulator is as large):
# two blocks fit the 1 MiB per-core L2 of the 2-core EPYC machine we measure on.
MINOR_BLOCK_BYTES = 1 << 19


def minor_block_rows(n_components: int, itemsize: int = 8) -> int:
    """Rows of a minor-side block of `update_shapes` for (padded) ``n_components`` entries
    of ``itemsize`` bytes."""
    return max(1, MINOR_BLOCK_BYTES // (itemsize * n_components))


def padded_width(n_components: int, dtype) -> int:
    """``n_components`` rounded up to a multiple of `simd_width` of ``dtype``."""
    width = simd_width(dtype)
    return -(-n_components // width) * width


def pad_components(table: np.ndarray) -> np.ndarray:
    """``table`` (n x K) as a C-contiguous n x K' array, ``K'`` the `padded_width` of its
    dtype, the new columns zero. Returned as is when nothing needs to change."""
    n_rows, n_components = table.shape
    padded = padded_width(n_components, table.dtype)
    if padded == n_components and table.flags.c_contiguous:
        return table
    # np.empty, not np.zeros: a large calloc maps fresh pages, faulted in on every call.
    out = np.empty((n_rows, padded), dtype=table.dtype)
    out[:, :n_components] = table
    out[:, n_components:] = 0.0
    return out


# -- digamma and lgamma --------------------------------------------------------------------
# The pass needs exp(digamma) and the ELBO digamma and lgamma of every entry of both factor
# tables every iteration, O((rows + columns) K): with scipy's ufuncs, on one thread and
# through numpy temporaries, that was 15-25 % of an iteration at K=10-50 on pbmc_facs
# (benchmarks/bench_iteration.py). Here they share one recurrence, written without branches
# so that the loops over a row's K entries vectorise, and the few transcendental functions
# left (`gamma_moments` takes exp(digamma(x)) as z exp(-(digamma's other terms)) without a
# log of z; `gamma_terms` takes the logs of z and of the recurrence's product) run a chunk
# of rows at a time in loops that vectorise too (`checked_logs`, `buffer_exps`: libm's,
# called per entry, do not). Largest error of `digamma` against scipy over 1e-8..1e8:
# 3e-15 relative to max(1, |value|) (tests/test_kernels.py).
_SHIFT = 8.0  # x < 8 is moved to x + 8 by the recurrence; the asymptotic series from there
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _shifted(x):
    """``(z, s, p)`` with ``z = x + 8``, ``s / p = sum_k 1 / (x + k)`` and
    ``p = prod_k (x + k)``, k = 0..7, when ``x < 8``; ``(x, 0, 1)`` otherwise. No branch:
    a loop over entries calling it vectorises."""
    step = 1.0 if x < _SHIFT else 0.0
    numerator, denominator, z = 0.0, 1.0, x
    for _ in range(8):
        factor = z if step != 0.0 else 1.0
        numerator = numerator * factor + denominator * step
        denominator *= factor
        z += step
    return z, numerator, denominator


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _digamma_series(inv, inv2):
    """``sum_k B_2k / (2k z^2k)``, k = 1..8, of the asymptotic digamma series."""
    return inv2 * (
        1 / 12
        - inv2
        * (
            1 / 120
            - inv2
            * (
                1 / 252
                - inv2
                * (
                    1 / 240
                    - inv2
                    * (1 / 132 - inv2 * (691 / 32760 - inv2 * (1 / 12 - inv2 * (3617 / 8160))))
                )
            )
        )
    )


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _lgamma_series(inv, inv2):
    """``sum_k B_2k / (2k (2k - 1) z^(2k - 1))``, k = 1..8, of Stirling's series."""
    return inv * (
        1 / 12
        - inv2
        * (
            1 / 360
            - inv2
            * (
                1 / 1260
                - inv2
                * (
                    1 / 1680
                    - inv2
                    * (1 / 1188 - inv2 * (691 / 360360 - inv2 * (1 / 156 - inv2 * (3617 / 122400))))
                )
            )
        )
    )


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _digamma_rest(x):
    """``(z, log z - digamma(x), p, 1 / z)`` with `_shifted`'s ``z`` and ``p``: digamma
    without its log, and the recurrence's parts that `gamma_terms`' lgamma needs too (one
    formula for `gamma_moments`' and `gamma_terms`' tables, so they agree bit for bit)."""
    z, numerator, denominator = _shifted(x)
    inv = 1.0 / z
    rest = numerator / denominator + 0.5 * inv + _digamma_series(inv, inv * inv)
    return z, rest, denominator, inv


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def digamma(x):
    """digamma(x) for x > 0."""
    z, rest, _, _ = _digamma_rest(x)
    return math.log(z) - rest


# -- one side of q: what the pass needs, and its share of the ELBO -------------------------
MOMENT_BLOCK_ROWS = 64  # rows per parallel task of `gamma_moments`


@njit(cache=DISK_CACHE, inline="always")
def _chunk_rows(n_components):
    """Rows per chunk of the kernels that take their logs and exps a buffer at a time
    (`checked_logs`, `buffer_exps`): about `LOG_BUFFER` entries, at least one row."""
    return max(1, LOG_BUFFER // n_components)


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _chunk_values(values, start, rows, flat):
    """Rows ``start .. start + rows`` of the n x K ``values`` into ``flat`` (float64), a row
    after another: a broadcast view (a prior's scalar, a rate per row) read in a loop over
    entries had LLVM take that loop's scalar version (its vector one assumes unit strides:
    `_terms_entries` took 9.2 instead of 4.4 ns an entry at K = 100)."""
    n_components = values.shape[1]
    for r in range(rows):
        for l in range(n_components):
            flat[r * n_components + l] = float(values[start + r, l])


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _rate_logs(rate, scratch):
    """``(row, logs)``: when ``rate`` is one row read for every row (`rows_or_row`: the
    fixed prior's rates per component), that row (float64) and its logs, taken once for a
    block instead of once per entry in `_chunk_logs` (``scratch``: at least K entries);
    otherwise two empty arrays. The same logs either way: `checked_logs` gives a value's
    log whatever its place in the buffer."""
    if rate.shape[0] != 1:
        return np.empty(0), np.empty(0)
    n_components = rate.shape[1]
    row, logs = np.empty(n_components), np.empty(n_components)
    _chunk_values(rate, 0, 1, row)
    checked_logs(row, n_components, logs, scratch)
    return row, logs


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _repeat_row(row, rows, flat):
    """``row`` (K entries) copied ``rows`` times into ``flat``, one after another: a chunk
    of a 1 x K array (`rows_or_row`) as `_chunk_values` lays out an n x K one."""
    n_components = row.shape[0]
    for r in range(rows):
        for l in range(n_components):
            flat[r * n_components + l] = row[l]


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _chunk_row_values(values, start, rows, flat):
    """`_chunk_values` of ``values`` as `rows_or_row` gives them: n rows, or one for every
    row (copied ``rows`` times)."""
    if values.shape[0] > 1:
        _chunk_values(values, start, rows, flat)
        return
    n_components = values.shape[1]
    for r in range(rows):
        for l in range(n_components):
            flat[r * n_components + l] = float(values[0, l])


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _chunk_logs(values, start, rows, flat, logs, scratch, one_row):
    """``logs`` of rows ``start .. start + rows`` of the n x K ``values``, a row after
    another, and the values themselves in ``flat`` (`_chunk_values`, `checked_logs`;
    ``scratch`` is scratch). ``one_row``: `_rate_logs`' ``(row, logs)`` of ``values``,
    copied for every row when ``values`` has one row."""
    n_components = values.shape[1]
    if values.shape[0] == 1:
        _repeat_row(one_row[0], rows, flat)
        _repeat_row(one_row[1], rows, logs)
    else:
        _chunk_values(values, start, rows, flat)
        checked_logs(flat, rows * n_components, logs, scratch)


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _chunk_digamma_rests(shape, start, rows, log_rates, shifted, rest):
    """Per entry of rows ``start .. start + rows`` of ``shape``, a row after another:
    `_digamma_rest`'s ``z`` into ``shifted`` and ``(log z - digamma) + log(rate)`` (the
    rates' logs in ``log_rates``) into ``rest``. The shapes are copied into ``shifted``
    first, so that one loop runs over the whole chunk (rows of K = 10 are short for a
    vector loop of their own)."""
    _chunk_values(shape, start, rows, shifted)
    for q in range(rows * shape.shape[1]):  # no call: vectorises
        z, digamma_rest, _, _ = _digamma_rest(shifted[q])
        shifted[q] = z
        rest[q] = digamma_rest + log_rates[q]


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _scaled_rows(start, rows, n_components, shifted, exponent, value, low, high, scaled, logmax):
    """Rows ``start .. start + rows`` of `gamma_moments`' outputs from their entries' ``z``
    (``shifted``) and ``exponent = (log z - digamma) + log_rate``, the chunk's rows one
    after another in these flat buffers; ``value``, ``low`` and ``high`` are scratch."""
    count = rows * n_components
    for q in range(count):
        value[q] = -exponent[q]
    buffer_exps(value, count, value, low, high)
    for r in range(rows):
        i = start + r
        offset = r * n_components
        peak = 0.0
        for l in range(n_components):
            value[offset + l] *= shifted[offset + l]
            peak = max(peak, value[offset + l])
        if peak >= 1e-290:
            for l in range(n_components):
                scaled[i, l] = value[offset + l] / peak
            logmax[i] = math.log(peak)
        else:
            peak = -np.inf
            for l in range(n_components):
                value[offset + l] = math.log(shifted[offset + l]) - exponent[offset + l]
                peak = max(peak, value[offset + l])
            for l in range(n_components):
                scaled[i, l] = math.exp(value[offset + l] - peak)
            logmax[i] = peak
        for l in range(n_components, scaled.shape[1]):
            scaled[i, l] = 0.0


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def gamma_moments(shape, rate, scaled, logmax):
    """What the pass needs of one side of q, in one pass over its rows.

    With ``E[log z] = digamma(shape) - log(rate)``: ``logmax`` its row maxima (float64)
    and ``scaled = exp(E[log z] - logmax)`` (n x K', zero past column K; see
    `pad_components`). ``exp(E[log z])`` is taken as ``z exp(-(log z - digamma) -
    log(rate))`` (one exp, no log of ``z``), the logs and exps a chunk of rows at a time
    (`checked_logs`, `buffer_exps`), as `gamma_terms` takes them, so the two give the same
    tables; a row whose largest such value falls below 1e-290 (prior shapes near 1e-3) is
    redone in log space. ``rate`` is n x K or 1 x K, as `rows_or_row` gives it (rates per
    component, whose logs are then taken once a block); ``shape`` read-only (`read_only`).
    """
    n_rows, n_components = shape.shape
    n_blocks = (n_rows + MOMENT_BLOCK_ROWS - 1) // MOMENT_BLOCK_ROWS
    chunk = _chunk_rows(n_components)
    for block in prange(n_blocks):
        size = chunk * n_components
        shifted = np.empty(size)
        exponent = np.empty(size)  # -(E[log z] - log z)
        log_rates = np.empty(size)
        value, low, high = np.empty(size), np.empty(size), np.empty(size)
        one_row = _rate_logs(rate, low)
        stop = min(n_rows, (block + 1) * MOMENT_BLOCK_ROWS)
        for start in range(block * MOMENT_BLOCK_ROWS, stop, chunk):
            rows = min(chunk, stop - start)
            _chunk_logs(rate, start, rows, value, log_rates, low, one_row)
            _chunk_digamma_rests(shape, start, rows, log_rates, shifted, exponent)
            _scaled_rows(
                start, rows, n_components, shifted, exponent, value, low, high, scaled, logmax
            )


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _terms_entries(
    count, shape, rate, log_rate, prior_shape, prior_rate, lgamma_prior_shape, log_prior_rate,
    mean, shifted, exponent, log_weight, rest, factors,
):  # fmt: skip
    """`gamma_terms`' work on a chunk's ``count`` entries, every argument a contiguous
    buffer of them (`_chunk_values`; ``log_rate`` the logs of the rates, the prior's
    four as in `gamma_terms`): per entry ``mean = shape / rate``, ``z`` (``shifted``),
    ``exponent = (log z - digamma) + log_rate`` (what `_scaled_rows` needs), and the KL as
    ``log_weight * log z + rest`` plus ``log`` of ``factors`` (`_kl_of_entries`)."""
    for q in range(count):  # no call: vectorises
        alpha = shape[q]
        a = prior_shape[q]
        z, not_log, denominator, inv = _digamma_rest(alpha)
        inv2 = inv * inv
        mean[q] = alpha / rate[q]
        shifted[q] = z
        exponent[q] = not_log + log_rate[q]
        factors[q] = denominator
        log_weight[q] = (alpha - a) - (z - 0.5)
        # -(alpha - a) d + z - log(2 pi) / 2 - Stirling(z) + lgamma(a)
        # + a (log beta - log b) + b E[z] - alpha
        rest[q] = (
            z
            - alpha
            - (alpha - a) * not_log
            - _HALF_LOG_2PI
            - _lgamma_series(inv, inv2)
            + lgamma_prior_shape[q]
            + a * (log_rate[q] - log_prior_rate[q])
            + prior_rate[q] * mean[q]
        )


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _kl_of_entries(count, log_shifted, log_weight, rest, log_factors, lanes):
    """A chunk of `_terms_entries`' KL, ``log_weight * log z + rest + log p`` (``log_shifted``
    and ``log_factors`` the logs of their ``z`` and ``p``), added to the four ``lanes``
    (one chain of adds ran at the adder's latency)."""
    for q in range(count):
        lanes[q & 3] += log_weight[q] * log_shifted[q] + rest[q] + log_factors[q]


# The blocks' bodies take their kernel's arguments as one tuple, so that the two-sided
# kernels pass a side's as they got them. Not inline="always": a body inlined into a
# prange loop lost its writes to the arrays it unpacked from the tuple (Numba 0.68's
# parfor pass took them for dead stores); called, it costs a call per block.
@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def _gamma_terms_block(block, arguments):
    """Block ``block`` of `gamma_terms`, ``arguments`` the tuple of its arguments: the one
    body of it and of `gamma_terms_of_sides`, so both make the same sums."""
    (
        shape, rate, prior_shape, prior_rate, lgamma_prior_shape,
        log_prior_rate, block_rows, mean_partial, kl_partial, scaled, logmax,
    ) = arguments  # fmt: skip
    n_rows, n_components = shape.shape
    tables = scaled.shape[0] > 0
    # A chunk of rows at a time, its entries one after another in flat buffers, so that
    # the logs and exps run in loops that vectorise (`checked_logs`, `buffer_exps`)
    chunk = _chunk_rows(n_components)
    size = chunk * n_components
    log_rates = np.empty(size)
    shapes, rates, means = np.empty(size), np.empty(size), np.empty(size)
    prior_shapes, prior_rates = np.empty(size), np.empty(size)
    lgamma_prior_shapes, log_prior_rates = np.empty(size), np.empty(size)
    shifted = np.empty(size)
    log_shifted = np.empty(size)
    exponent = np.empty(size)
    log_weight = np.empty(size)  # coefficient of log z
    rest = np.empty(size)
    factors, log_factors = np.empty(size), np.empty(size)  # p, log p
    value, low, high = np.empty(size), np.empty(size), np.empty(size)
    one_row = _rate_logs(rate, low)
    mean_row = mean_partial[block]
    mean_row[:] = 0.0
    lanes = np.zeros(4)
    stop = min(n_rows, (block + 1) * block_rows)
    for start in range(block * block_rows, stop, chunk):
        rows = min(chunk, stop - start)
        count = rows * n_components
        _chunk_values(shape, start, rows, shapes)
        _chunk_logs(rate, start, rows, rates, log_rates, low, one_row)
        _chunk_row_values(prior_shape, start, rows, prior_shapes)
        _chunk_row_values(prior_rate, start, rows, prior_rates)
        _chunk_row_values(lgamma_prior_shape, start, rows, lgamma_prior_shapes)
        _chunk_row_values(log_prior_rate, start, rows, log_prior_rates)
        _terms_entries(
            count, shapes, rates, log_rates, prior_shapes, prior_rates, lgamma_prior_shapes,
            log_prior_rates, means, shifted, exponent, log_weight, rest, factors,
        )  # fmt: skip
        for r in range(rows):
            for l in range(n_components):
                mean_row[l] += means[r * n_components + l]
        checked_logs(shifted, count, log_shifted, low)
        checked_logs(factors, count, log_factors, low)
        _kl_of_entries(count, log_shifted, log_weight, rest, log_factors, lanes)
        if tables:
            _scaled_rows(
                start, rows, n_components, shifted, exponent, value, low, high, scaled, logmax
            )
    kl_partial[block] = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def gamma_terms(
    shape,
    rate,
    prior_shape,
    prior_rate,
    lgamma_prior_shape,
    log_prior_rate,
    block_rows,
    mean_partial,
    kl_partial,
    scaled,
    logmax,
):
    """One side's share of the ELBO, per block of ``block_rows`` rows.

    ``mean_partial[b, l] = sum_i shape[i, l] / rate[i, l]`` and ``kl_partial[b] =
    sum_il KL(Gamma(shape, rate) || Gamma(prior_shape, prior_rate))`` over the rows of
    block ``b``, in float64. Every argument after ``shape`` up to ``log_prior_rate`` is n x K
    or 1 x K, as `rows_or_row` gives it (one row for every row: rates per component, whose
    logs are then taken once a block); ``lgamma_prior_shape`` and ``log_prior_rate`` are
    those functions of the prior's.
    The blocks are fixed, so the sums do not depend on the number of threads.

    The logs of the rates are taken here, a chunk of rows at a time, in parallel, into
    scratch (`checked_logs`, as `gamma_moments` takes them): numpy's ``np.log`` of rates
    per entry, on one thread, took 1.3 ms of every scoring of pbmc_facs' 16,791 genes at
    K=10, and a table of them would be one more n x K float64 array alive through the
    pass (the pass's log-space path takes its own logs of the rates).

    Per entry, with ``z``, ``s / p`` and ``p`` of the recurrence (`_shifted`) and
    ``d = log z - digamma(alpha)``: ``digamma(alpha) = log z - d`` and ``lgamma(alpha) =
    (z - 1/2) log z - z + log(2 pi) / 2 + Stirling(z) - log p``, so the KL is
    ``(alpha - a - z + 1/2) log z + log p + (terms without a log)``.

    With ``scaled`` and ``logmax`` of n rows (as `gamma_moments`' outputs) the pass's tables
    of the same q come out too, from the same recurrence of every entry (a batch fit scores
    both sides at once, `gamma_terms_of_sides`). With 0 rows, the sums alone.
    """
    arguments = (
        shape, rate, prior_shape, prior_rate, lgamma_prior_shape,
        log_prior_rate, block_rows, mean_partial, kl_partial, scaled, logmax,
    )  # fmt: skip
    for block in prange(kl_partial.shape[0]):
        _gamma_terms_block(np.int64(block), arguments)  # as `gamma_terms_of_sides` calls it


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def gamma_terms_of_sides(row_arguments, col_arguments):
    """`gamma_terms` of the rows and of the columns in one parallel region:
    ``row_arguments`` and ``col_arguments`` are each side's arguments of `gamma_terms`, as
    tuples. Task ``b`` is the rows' block ``b`` while ``b`` is below their number of blocks,
    the columns' block ``b - n_row_blocks`` after; each block makes the same sums as there.

    Why one region: starting one was measured at ~8 ms when another process holds the
    other core (the worker thread waits for its time slice), against microseconds idle.
    """
    row_kl_partial, col_kl_partial = row_arguments[8], col_arguments[8]  # one per block
    n_row_blocks = row_kl_partial.shape[0]
    for task in prange(n_row_blocks + col_kl_partial.shape[0]):
        # Numba types a prange index as int64, then compiles the loop as a gufunc whose
        # index is uint64: a body called with it is compiled for both (5.6 s more of a
        # first fit). One type for every call; the other prange loops do the same.
        block = np.int64(task)
        if block < n_row_blocks:
            _gamma_terms_block(block, row_arguments)
        else:
            _gamma_terms_block(block - n_row_blocks, col_arguments)


# Rows per block of `gamma_terms`: fixed, so its sums are the same for any thread count.
TERMS_BLOCK_ROWS = 1024


def _terms_arguments(shape, rate, prior_shape, prior_rate, log_prior_rate):
    """`gamma_terms`' arguments from ``rate`` to ``log_prior_rate`` as `rows_or_row` gives
    them for ``shape``'s shape (the prior's in float64, the rate in its own dtype: a float32
    q's n x K rates copied to float64 were 15 MiB of a float32 fit's peak at K = 100 on
    pbmc_facs), and its two outputs (see `gamma_sums`)."""
    full = shape.shape

    def rows(values):
        # one layout whatever the prior (per component, per row, per entry): one compile
        return rows_or_row(values, full, np.float64)

    prior_shape = np.asarray(prior_shape, dtype=np.float64)
    prior_rate = np.asarray(prior_rate, dtype=np.float64)
    log_prior_rate = np.log(prior_rate) if log_prior_rate is None else log_prior_rate
    arguments = (
        rows_or_row(rate, full),  # in q's dtype: the kernels widen each value as they read it
        rows(prior_shape), rows(prior_rate), rows(gammaln(prior_shape)), rows(log_prior_rate),
    )  # fmt: skip
    n_blocks = max(1, -(-full[0] // TERMS_BLOCK_ROWS))
    return arguments, np.empty((n_blocks, full[1])), np.empty(n_blocks)


def gamma_sums(
    shape, rate, prior_shape, prior_rate, log_prior_rate=None
) -> tuple[np.ndarray, float]:
    """``(sum_i shape / rate per component, sum KL(Gamma(shape, rate) || prior))`` in
    float64 by `gamma_terms`; ``rate`` and the prior's shape and rate are scalars or arrays
    broadcastable to ``shape`` (n x K).

    ``log_prior_rate`` (default ``log(prior_rate)``) lets the prior's rate be random: the
    KL is linear in the rate and its log, so with ``prior_rate = E[xi]`` and
    ``log_prior_rate = E[log xi]`` it is the KL from Gamma(prior_shape, xi) in expectation
    over q(xi) (the learned prior's q(z) from p(z | xi)).
    """
    shape = read_only(np.ascontiguousarray(shape))
    arguments, mean_partial, kl_partial = _terms_arguments(
        shape, rate, prior_shape, prior_rate, log_prior_rate
    )
    no_tables = np.empty((0, 1), shape.dtype), np.empty(0)
    gamma_terms(shape, *arguments, TERMS_BLOCK_ROWS, mean_partial, kl_partial, *no_tables)
    return mean_partial.sum(axis=0), float(kl_partial.sum())


def _moments_terms_arguments(shape, rate, prior_shape, prior_rate, log_prior_rate=None):
    """`gamma_terms`' arguments for one side with tables (`gamma_moments_sums_of_sides`), its
    outputs included."""
    shape = read_only(np.ascontiguousarray(shape))
    arguments, mean_partial, kl_partial = _terms_arguments(
        shape, rate, prior_shape, prior_rate, log_prior_rate
    )
    n_rows, n_components = shape.shape
    scaled = np.empty((n_rows, padded_width(n_components, shape.dtype)), shape.dtype)
    logmax = np.empty(n_rows)
    return (shape, *arguments, TERMS_BLOCK_ROWS, mean_partial, kl_partial, scaled, logmax)


def _moments_sums(arguments):
    """`gamma_moments_sums_of_sides`' outputs of one side from `gamma_terms`' arguments, after the
    kernel ran."""
    rate, (mean_partial, kl_partial, scaled, logmax) = arguments[1], arguments[-4:]
    return scaled, logmax, rate, mean_partial.sum(axis=0), float(kl_partial.sum())


def gamma_moments_sums_of_sides(row_side, col_side):
    """`gamma_moments`' outputs and `gamma_sums`' sums of the rows and of the columns by
    one kernel (`gamma_terms_of_sides`): each side's arguments as `gamma_sums`' in a tuple
    ``(shape, rate, prior_shape, prior_rate, log_prior_rate)``; per side ``(scaled, logmax,
    rate, mean_sum, kl)``, ``rate`` the rates the tables came from, in their dtype, as
    `rows_or_row` gives them (n rows, or one for all), as the pass reads them."""
    row_arguments = _moments_terms_arguments(*row_side)
    col_arguments = _moments_terms_arguments(*col_side)
    gamma_terms_of_sides(row_arguments, col_arguments)
    return _moments_sums(row_arguments), _moments_sums(col_arguments)


@njit(cache=DISK_CACHE, inline="always")
def _log_buffers(n_components):
    """`_add_expected_logs`' scratch, a chunk of rows' entries each: the rates, the
    shifted shapes over them, those quotients' logs, ``log z - digamma``, the shifted
    shapes, and scratch."""
    size = _chunk_rows(n_components) * n_components
    return (
        np.empty(size), np.empty(size), np.empty(size), np.empty(size), np.empty(size),
        np.empty(size),
    )  # fmt: skip


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _add_expected_logs(shape, rate, start, rows, buffers, one_row, sums):
    """``sums[l] += E[log z_il] = digamma(shape[i, l]) - log(rate[i, l])`` (float64) over
    rows ``start .. start + rows`` (at most `_chunk_rows`), a row after another; ``rate``
    as `rows_or_row` gives it, ``one_row`` its `_rate_logs`.

    Taken as ``log(z / rate) - (log z - digamma)`` with `_shifted`'s ``z``: one log an
    entry instead of two (``z >= 8``, so the quotient stays a normal number unless a
    rate is below 1e-300)."""
    n_components = shape.shape[1]
    rates, quotients, log_quotients, rest, shifted, scratch = buffers
    count = rows * n_components
    if rate.shape[0] == 1:
        _repeat_row(one_row[0], rows, rates)
    else:
        _chunk_values(rate, start, rows, rates)
    _chunk_values(shape, start, rows, shifted)
    for q in range(count):  # no call: vectorises
        z, digamma_rest, _, _ = _digamma_rest(shifted[q])
        rest[q] = digamma_rest
        quotients[q] = z / rates[q]
    checked_logs(quotients, count, log_quotients, scratch)
    for r in range(rows):
        for l in range(n_components):
            sums[l] += log_quotients[r * n_components + l] - rest[r * n_components + l]


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def _expected_log_block(block, arguments):
    """Block ``block`` of `expected_log_terms`, ``arguments`` the tuple of its arguments."""
    shape, rate, block_rows, partial = arguments
    n_rows, n_components = shape.shape
    chunk = _chunk_rows(n_components)
    buffers = _log_buffers(n_components)
    one_row = _rate_logs(rate, buffers[5])
    for l in range(n_components):
        partial[block, l] = 0.0
    stop = min(n_rows, (block + 1) * block_rows)
    for start in range(block * block_rows, stop, chunk):
        _add_expected_logs(
            shape, rate, start, min(chunk, stop - start), buffers, one_row, partial[block]
        )


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def expected_log_terms(shape, rate, block_rows, partial):
    """``partial[b, l] = sum_i E[log z_il] = sum_i digamma(shape[i, l]) - log(rate[i, l])``
    over the rows of block ``b`` (float64; ``rate`` as in `gamma_terms`; its logs are
    taken here, a chunk of rows at a time, so no n x K array of them is made).
    Fixed blocks: the sums do not depend on the number of threads."""
    arguments = (shape, rate, block_rows, partial)
    for block in prange(partial.shape[0]):
        _expected_log_block(np.int64(block), arguments)  # see `gamma_terms_of_sides`


def _expected_log_arguments(shape, rate):
    """`expected_log_terms`' arguments for ``shape`` and ``rate`` (as `expected_log_sums`),
    its output last."""
    shape = read_only(np.ascontiguousarray(shape))
    rate = rows_or_row(rate, shape.shape, np.float64)
    partial = np.empty((max(1, -(-shape.shape[0] // TERMS_BLOCK_ROWS)), shape.shape[1]))
    return shape, rate, TERMS_BLOCK_ROWS, partial


def expected_log_sums(shape, rate) -> np.ndarray:
    """``sum_i E[log z_il]`` per component for ``q(z_il) = Gamma(shape, rate)`` (float64,
    by `expected_log_terms`); ``rate`` broadcastable to ``shape`` (n x K)."""
    arguments = _expected_log_arguments(shape, rate)
    expected_log_terms(*arguments)
    return arguments[-1].sum(axis=0)


SIDE_BLOCK_ROWS = 256  # rows per parallel task of `learned_side` and `sum_parts`


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def learned_side(
    statistic, factor_shape, scale_mean, other_mean_sum, shape, rate, row_mean_sum, mean_sum,
    log_sum,
):  # fmt: skip
    """One side's q under the learned prior into ``shape`` and ``rate`` (n x K, stored in
    their dtype): ``shape[i, l] = factor_shape[l] + statistic[i, l]``, ``rate[i, l] =
    scale_mean[i] + other_mean_sum[i, l]`` (``other_mean_sum`` as `rows_or_row` gives it:
    n x K, or 1 x K when the other side's sums are the same for every row); and from the
    values stored, in float64, ``row_mean_sum[i] = sum_l E[z_il]``, ``mean_sum[l] =
    sum_i E[z_il]`` and, unless ``log_sum`` is empty, ``log_sum[l] = sum_i E[log z_il]``
    (what learning a_l needs: `expected_log_sums`' terms, taken while the rows are in
    cache instead of in a pass of their own).

    One pass (numpy took six, with their n x K temporaries), over blocks of
    `SIDE_BLOCK_ROWS` rows in parallel: the sums are the blocks' sums added in block
    order, so they do not depend on the number of threads. Serial, and without the logs,
    this pass cost 6.3 ms for pbmc_facs' genes at K = 100 (new output arrays: most of it
    their first touch) and twice that in CPU time while the other thread spun; in
    parallel 4.1 ms."""
    n_rows, n_components = statistic.shape
    per_row = other_mean_sum.shape[0] > 1
    with_logs = log_sum.shape[0] > 0
    n_blocks = max(1, -(-n_rows // SIDE_BLOCK_ROWS))
    chunk = _chunk_rows(n_components)
    partial = np.zeros((n_blocks, n_components))
    log_partial = np.zeros((n_blocks if with_logs else 0, n_components))
    for block in prange(n_blocks):
        block_sum = partial[block]
        buffers = _log_buffers(n_components)
        one_row = _rate_logs(rate, buffers[5])  # rate is n x K: none unless n = 1 ...
        stop = min(n_rows, (block + 1) * SIDE_BLOCK_ROWS)
        for start in range(block * SIDE_BLOCK_ROWS, stop, chunk):
            rows = min(chunk, stop - start)
            for i in range(start, start + rows):
                r = i if per_row else 0
                row_total = 0.0
                for l in range(n_components):
                    shape[i, l] = factor_shape[l] + statistic[i, l]
                    rate[i, l] = scale_mean[i] + other_mean_sum[r, l]
                    mean = np.float64(shape[i, l]) / np.float64(rate[i, l])
                    row_total += mean
                    block_sum[l] += mean
                row_mean_sum[i] = row_total
            if with_logs:
                if n_rows == 1:  # ... and then of the row just stored
                    one_row = _rate_logs(rate, buffers[5])
                _add_expected_logs(shape, rate, start, rows, buffers, one_row, log_partial[block])
    for l in range(n_components):
        mean_sum[l] = 0.0
        if with_logs:
            log_sum[l] = 0.0
    for block in range(n_blocks):
        for l in range(n_components):
            mean_sum[l] += partial[block, l]
            if with_logs:
                log_sum[l] += log_partial[block, l]


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def gamma_side(statistic, prior_shape, rate, shape, mean_sum):
    """One side's q under the fixed prior, its shapes into ``shape`` (n x K, stored in its
    dtype): ``shape[i, l] = prior_shape + statistic[i, l]``; and from the values stored, in
    float64, ``mean_sum[l] = sum_i shape[i, l] / rate[i, l]`` (rows in order; ``rate`` as
    `rows_or_row` gives it). One serial pass (the sums in row order, as they always were:
    the fixed prior's bits): numpy's sum, cast, quotient and sum made n x K temporaries
    (5.3 against 1.9 ms for pbmc_facs' genes at K = 100, 1.5 against 0.19 at K = 10)."""
    n_rows, n_components = statistic.shape
    per_row = rate.shape[0] > 1
    for l in range(n_components):
        mean_sum[l] = 0.0
    for i in range(n_rows):
        r = i if per_row else 0
        for l in range(n_components):
            shape[i, l] = prior_shape + statistic[i, l]
            mean_sum[l] += np.float64(shape[i, l]) / np.float64(rate[r, l])


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def mean_sums(shape, rate, mean_sum):
    """``mean_sum[l] = sum_i shape[i, l] / rate[i, l]`` in float64, rows in order, with no
    n x K temporary (``rate`` as `rows_or_row` gives it)."""
    n_rows, n_components = shape.shape
    per_row = rate.shape[0] > 1
    for l in range(n_components):
        mean_sum[l] = 0.0
    for i in range(n_rows):
        r = i if per_row else 0
        for l in range(n_components):
            mean_sum[l] += np.float64(shape[i, l]) / np.float64(rate[r, l])


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def observed_mean_sums(mask_indptr, mask_indices, never_observed, other_shape, other_rate, out):
    """``out[i, l] = sum_j E[w_jl]`` over the columns ``j`` observed in row ``i``, those not
    in the row of the mask (CSR ``mask_indptr``, ``mask_indices``, indices sorted within
    each row), in float64: ``E[w_jl] = other_shape[j, l] / other_rate[j or 0, l]`` (``rate``
    as `rows_or_row` gives it), zero where ``never_observed[j]`` (masked in every row).

    Each row's sum is the total less its masked sum, T_l - m_il, unless that cancels:
    T_l and m_il are each rounded by about eps T_l and eps m_il, which relative to the
    difference is (T_l + m_il) / (T_l - m_il) times a direct sum's error (the subtraction's
    condition number): at most 3, under two bits, while m_il <= T_l / 2, and without bound
    as m_il -> T_l. A row past half in any component is summed directly over its observed
    columns, O(n_other x K) for that row instead of O(its masked entries x K): only rows
    dominated by their masked entries (most of the row masked, or masked entries of far
    larger means than the observed ones) pay it. The other side's entries masked in every
    row (a gene with nothing observed, whose mean is the prior's) are in no row's sum and
    are left out of T and m_i alike, so they make no row cancel. Serial (rows in order):
    scipy's product of the mask and the means it replaces was serial too."""
    n_rows = mask_indptr.shape[0] - 1
    n_other, n_components = other_shape.shape
    per_row = other_rate.shape[0] > 1
    means = np.zeros((n_other, n_components))
    total = np.zeros(n_components)
    for j in range(n_other):
        if never_observed[j]:
            continue
        r = j if per_row else 0
        for l in range(n_components):
            means[j, l] = np.float64(other_shape[j, l]) / np.float64(other_rate[r, l])
            total[l] += means[j, l]
    row_sum = np.empty(n_components)  # a row's sum, apart from ``out`` (no aliasing)
    for i in range(n_rows):
        start, stop = mask_indptr[i], mask_indptr[i + 1]
        row_sum[:] = 0.0
        for position in range(start, stop):
            mean = means[mask_indices[position]]
            for l in range(n_components):
                row_sum[l] += mean[l]
        cancelling = False
        for l in range(n_components):
            cancelling |= 2.0 * row_sum[l] > total[l]
        if cancelling:
            row_sum[:] = 0.0
            position = start
            for j in range(n_other):
                if position < stop and mask_indices[position] == j:
                    position += 1  # masked in this row
                    continue
                mean = means[j]
                for l in range(n_components):
                    row_sum[l] += mean[l]
            out[i] = row_sum
        else:
            for l in range(n_components):
                out[i, l] = max(total[l] - row_sum[l], 0.0)  # max: a guard against rounding


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def mean_weighted_sum(shape, rate, weights):
    """``sum_il E[z_il] weights[i, l]`` in float64, ``E[z_il] = shape[i, l] / rate[i or 0,
    l]`` (``rate`` as `rows_or_row` gives it), rows in order, with no n x K temporary."""
    n_rows, n_components = shape.shape
    per_row = rate.shape[0] > 1
    result = 0.0
    for i in range(n_rows):
        r = i if per_row else 0
        for l in range(n_components):
            result += np.float64(shape[i, l]) / np.float64(rate[r, l]) * weights[i, l]
    return result


def rows_or_row(values, shape: tuple[int, int], dtype=None) -> np.ndarray:
    """``values`` broadcastable to ``shape`` (n x K) as a C-contiguous 2-D array for the
    side kernels, which read row ``i``, or row 0 for every ``i`` when it has one: its n
    rows (copied only if they are not C-contiguous), or the one row they all are (the
    fixed prior's rates per component, the other side's sums). A broadcast view's zero
    stride kept the serial kernels' loops scalar (LLVM vectorises unit strides it can see:
    `gamma_side` took 2.4 instead of 0.8 ms for pbmc_facs' genes at K = 100, the same
    sums), and one row lets the parallel ones take its K logs once a block (`_rate_logs`).
    Read-only (`read_only`), as the kernels read it."""
    full = np.broadcast_to(np.asarray(values, dtype=dtype), shape)
    return read_only(np.ascontiguousarray(full[:1] if full.strides[0] == 0 else full))


def read_only(values: np.ndarray) -> np.ndarray:
    """A read-only view of ``values``. The kernels take every array they only read so,
    whatever its owner's flag: Numba compiles a kernel once per writeable flag of each
    argument, and the ELBO's terms take about 7.5 s to compile (docs/performance.md)."""
    view = values.view()
    view.flags.writeable = False
    return view


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE)  # no fastmath: a true quotient (arcp may use 1 / divisor)
def divide_in_place(values, divisor):
    """``values /= divisor`` (n x K, C-contiguous), rows in parallel: numpy's bits when
    ``divisor`` has ``values``' dtype (numpy divides a float32 array by a Python float in
    float32). For `_model.fix_gauge`, whose numpy division ran on one thread while the
    other spun: 0.61 against 0.32 ms for pbmc_facs' genes at K = 100."""
    for i in prange(values.shape[0]):
        for l in range(values.shape[1]):
            values[i, l] = values[i, l] / divisor


# -- the pass over the nonzeros ------------------------------------------------------------
@njit(cache=DISK_CACHE, inline="always")
def _rate_row(rate, i):
    """Row ``i`` of rates given as `rows_or_row` gives them: n rows, or one for all (the
    fixed prior's rates per component). One layout for both priors, where a broadcast view
    had Numba compile the passes again for it."""
    return rate[i] if rate.shape[0] > 1 else rate[0]


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def _exp_shifted_log_rho(major_shape, major_rate, minor_shape, minor_rate, phi):
    """Slow path of one nonzero: ``phi_l = exp(log rho_l - max_l log rho_l)`` with
    ``log rho_l = E[log z_il] + E[log w_jl]``, ``E[log] = digamma(shape) - log(rate)``
    from the two rows' shapes and rates; returns (max, sum_l phi_l). Entries of
    ``phi`` past the K of the rows (the padding of `pad_components`) are set to zero."""
    n_components = major_shape.shape[0]
    for l in range(n_components, phi.shape[0]):
        phi[l] = 0.0
    peak = -np.inf
    for l in range(n_components):
        value = (  # rates widened: Numba's float() keeps a float32 one in float32
            digamma(float(major_shape[l]))
            - math.log(np.float64(major_rate[l]))
            + digamma(float(minor_shape[l]))
            - math.log(np.float64(minor_rate[l]))
        )
        phi[l] = value
        peak = max(peak, value)
    total = 0.0
    for l in range(n_components):
        phi[l] = math.exp(phi[l] - peak)
        total += phi[l]
    return peak, total


# -- the data term's logs, a buffer at a time ---------------------------------------------
# The data term needs log(normaliser) of every nonzero. A call to libm's log per nonzero was
# a third of the pass at K=5-10 (about 20 of 60 cycles per nonzero on the 2-core EPYC, and
# it made the compiler spill around the call); `weighted_log_sum` takes the logs of a buffer
# of normalisers in loops that vectorise (fdlibm's algorithm, error below one ulp, with the
# bit manipulation done on an integer view of the buffer), in the precision of the
# normalisers: float32 tables give float32 normalisers, whose logs in float32 (eight lanes,
# a shorter polynomial) took 2.4 instead of 3.9 ns each; the weighted sum is float64.
LOG_BUFFER = 256  # normalisers per call of `weighted_log_sum`
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
# FreeBSD's e_logf.c (float32 constants: a Python float would widen the arithmetic).
_LN2_HI_32 = np.float32(6.9313812256e-01)
_LN2_LO_32 = np.float32(9.0580006145e-06)
_LG1_32 = np.float32(float.fromhex("0xaaaaaa.0p-24"))
_LG2_32 = np.float32(float.fromhex("0xccce13.0p-25"))
_LG3_32 = np.float32(float.fromhex("0x91e9ee.0p-25"))
_LG4_32 = np.float32(float.fromhex("0xf89e26.0p-26"))
_ONE_32, _TWO_32, _HALF_32 = np.float32(1.0), np.float32(2.0), np.float32(0.5)


def _logs64(values, count, scratch, exponent):
    """fdlibm's ``__ieee754_log`` for normal arguments: ``x = 2^k (1 + f)`` with
    ``1 + f`` in [sqrt(2)/2, sqrt(2)), ``log(1 + f) = f - s (f - R(s^2))`` with
    ``s = f / (2 + f)``."""
    bits = values.view(np.int64)
    reduced = scratch.view(np.int64)
    for q in range(count):  # integer work only: vectorises
        word = bits[q]
        high = (word >> 32) & 0x000FFFFF
        half = (high + 0x95F64) & 0x100000  # 1 when the mantissa is at least sqrt(2)
        reduced[q] = (word & 0x000FFFFFFFFFFFFF) | ((half ^ 0x3FF00000) << 32)
        exponent[q] = float(((word >> 52) & 0x7FF) - 1023 + (half >> 20))
    for q in range(count):  # the polynomial: vectorises
        f = scratch[q] - 1.0
        s = f / (2.0 + f)
        z = s * s
        w = z * z
        r = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7))) + w * (_LG2 + w * (_LG4 + w * _LG6))
        half_f2 = 0.5 * f * f
        k = exponent[q]
        scratch[q] = k * _LN2_HI - ((half_f2 - (s * (half_f2 + r) + k * _LN2_LO)) - f)


def _logs32(values, count, scratch, exponent):
    """FreeBSD's ``logf`` for normal arguments, the same reduction in float32."""
    bits = values.view(np.int32)
    reduced = scratch.view(np.int32)
    for q in range(count):  # integer work only: vectorises
        word = bits[q] + (0x3F800000 - 0x3F3504F3)  # the exponent of x / (sqrt(2) / 2)
        exponent[q] = np.float32((word >> 23) - 0x7F)
        reduced[q] = (word & 0x007FFFFF) + 0x3F3504F3
    for q in range(count):  # the polynomial: vectorises
        f = scratch[q] - _ONE_32
        s = f / (_TWO_32 + f)
        z = s * s
        w = z * z
        r = z * (_LG1_32 + w * _LG3_32) + w * (_LG2_32 + w * _LG4_32)
        half_f2 = _HALF_32 * f * f
        k = exponent[q]
        scratch[q] = s * (half_f2 + r) + k * _LN2_LO_32 - half_f2 + f + k * _LN2_HI_32


def _buffer_logs(values, count, scratch, exponent):
    """``scratch[q] = log(values[q])`` for ``q < count`` in the precision of ``values``
    (``scratch`` and ``exponent`` of its dtype): `_logs64` or `_logs32`."""


@overload(_buffer_logs, jit_options={"fastmath": _FASTMATH, "error_model": _ERRORS})
def _buffer_logs_typed(values, count, scratch, exponent):
    return _logs32 if values.dtype == types.float32 else _logs64


# fdlibm's e_exp.c, for `buffer_exps`.
_INV_LN2 = 1.44269504088896338700e00
_ROUND = 6755399441055744.0  # 1.5 * 2**52: x + _ROUND rounds x to an integer in its low bits
_ROUND_BITS = 0x4338000000000000  # its bits
_EXP_P1 = 1.66666666666666019037e-01
_EXP_P2 = -2.77777777770155933842e-03
_EXP_P3 = 6.61375632143793436117e-05
_EXP_P4 = -1.65339022054652515390e-06
_EXP_P5 = 4.13813679705723846039e-08


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def buffer_exps(values, count, out, low, high):
    """``out[q] = exp(values[q])`` for ``q < count`` (float64 buffers; ``low`` and ``high``
    float64 scratch of the same length), in loops that vectorise: fdlibm's algorithm
    (``x = k ln 2 + r``, a rational approximation of ``exp(r)``, error below one ulp)
    without its branches. ``2^k`` is applied as two factors ``2^(k // 2)`` and
    ``2^(k - k // 2)``, each a normal number, so results under- and overflow as libm's do
    (subnormals, 0, inf); NaN stays NaN. libm's exp, called per entry, does not vectorise
    (3.1 against ~1 ns an entry here)."""
    low_bits = low.view(np.int64)
    high_bits = high.view(np.int64)
    for q in range(count):  # no call: vectorises
        x = values[q]
        clamped = x if x > -746.0 else -746.0  # |k| <= 1076 keeps both factors normal
        clamped = clamped if clamped < 710.0 else 710.0
        rounded = clamped * _INV_LN2 + _ROUND
        k = rounded - _ROUND
        hi = clamped - k * _LN2_HI
        lo = k * _LN2_LO
        r = hi - lo
        t = r * r
        c = r - t * (_EXP_P1 + t * (_EXP_P2 + t * (_EXP_P3 + t * (_EXP_P4 + t * _EXP_P5))))
        y = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi)
        out[q] = y if x == x else x
        low[q] = rounded
    for q in range(count):  # integer work only: vectorises
        k = low_bits[q] - _ROUND_BITS
        half = k >> 1
        low_bits[q] = (half + 1023) << 52
        high_bits[q] = (k - half + 1023) << 52
    for q in range(count):
        out[q] = out[q] * low[q] * high[q]


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def weighted_log_sum(values, weights, count, scratch, exponent):
    """``sum_q weights[q] * log(values[q])`` over the first ``count`` entries (positive
    normal float64 or float32 values, float64 weights), in four float64 lanes summed as
    ``(0 + 1) + (2 + 3)``.

    ``scratch`` and ``exponent`` are arrays of ``values``' dtype and length, overwritten;
    the logs are taken in that dtype (`_buffer_logs`: below one ulp of it).
    """
    _buffer_logs(values, count, scratch, exponent)
    lane0 = lane1 = lane2 = lane3 = 0.0
    q = 0
    while q + 4 <= count:
        lane0 += weights[q] * float(scratch[q])
        lane1 += weights[q + 1] * float(scratch[q + 1])
        lane2 += weights[q + 2] * float(scratch[q + 2])
        lane3 += weights[q + 3] * float(scratch[q + 3])
        q += 4
    if q < count:
        lane0 += weights[q] * float(scratch[q])
    if q + 1 < count:
        lane1 += weights[q + 1] * float(scratch[q + 1])
    if q + 2 < count:
        lane2 += weights[q + 2] * float(scratch[q + 2])
    return (lane0 + lane1) + (lane2 + lane3)


# -- explicit SIMD rows --------------------------------------------------------------------
# Numba leaves LLVM's SLP vectoriser off and the loop vectoriser may not reorder a sum
# without "reassoc", so the pass's K-long dot product ran one scalar add after another (or
# in eight scalar chains). The pass's primitive (`row_dot_add_scaled`, the tensor's
# `row_products_add_scaled`, and `add_scaled_rows`) is written as LLVM vector IR instead: each SIMD
# register's lanes add element-wise across blocks of the row, and the lanes are summed in a
# fixed tree, an order the compiler may not change, cached or not. In same-process A/B runs
# on pbmc_facs (one thread, CPU time) the dot product and the scatter-adds so written took
# 0.70-0.90x the time of the scalar chains in float64 and 0.43-0.63x in float32 at K=5-100
# (benchmarks/bench_iteration.py); holding the products in registers between the two cut
# the pass to 0.76x more (2 threads, K = 10, float64, 2026-12-03).
# Rows must be C-contiguous with a width that is a multiple of `simd_width`
# (`pad_components`).


def _simd_row(context, builder, array_type, array, row):
    """The array's struct and a pointer to the start of its row ``row`` (2-D, C order)."""
    values = context.make_array(array_type)(context, builder, array)
    zero = context.get_constant(types.intp, 0)
    return values, cgutils.get_item_pointer(context, builder, array_type, values, [row, zero])


def _simd_blocks(context, builder, values, dtype):
    """The vector type of one SIMD register of ``dtype`` and the row's number of them."""
    lanes = SIMD_BYTES // (dtype.bitwidth // 8)
    vector = ir.VectorType(context.get_value_type(dtype), lanes)
    width = cgutils.unpack_tuple(builder, values.shape, 2)[1]
    return vector, lanes, builder.udiv(width, context.get_constant(types.intp, lanes))


def _simd_load(builder, row, offset, vector, dtype):
    pointer = builder.bitcast(builder.gep(row, [offset]), vector.as_pointer())
    return pointer, builder.load(pointer, align=dtype.bitwidth // 8)


def _simd_rows_ok(*arrays) -> bool:
    return all(
        isinstance(a, types.Array)
        and a.ndim == 2
        and a.layout == "C"
        and a.dtype == arrays[0].dtype
        and a.dtype in (types.float32, types.float64)
        for a in arrays
    )


# Rows of up to this many SIMD registers keep their products in registers between the sum
# and the scatter-adds of `row_dot_add_scaled` (K <= 64 in float64, 128 in float32; the
# compiler spills some to the stack, still cheaper than reading the rows again), rows of
# up to `_BUFFERED_BLOCKS` in a buffer on the stack (K <= 256 in float64, 512 in float32).
# Measured with `benchmarks/ab_engine.py` (2 threads, CPU time, 2026-12-03): 16 held
# blocks against 4, K = 20 / 50: 0.78 / 0.82 in float64, 0.98 / 0.86 in float32; the
# buffer against reading again, K = 100 in float64: 0.87.
_HELD_BLOCKS = 16
_BUFFERED_BLOCKS = 64


def _lane_tree(builder, sums, lanes):
    """The lanes of ``sums`` added in a fixed tree: ((0 + 1) + (2 + 3)) + ..."""
    terms = [builder.extract_element(sums, ir.Constant(ir.IntType(32), q)) for q in range(lanes)]
    while len(terms) > 1:  # ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7))
        terms = [builder.fadd(terms[q], terms[q + 1]) for q in range(0, len(terms), 2)]
    return terms[0]


def _held_products_add_scaled(
    context, builder, dtype, values, major_row, minor_rows, own_row, acc_rows, x, tiny
):
    """The code of `row_dot_add_scaled` and `row_products_add_scaled`: the products
    ``major_row * minor_rows[0] * minor_rows[1] * ...`` (in that order) a SIMD register at
    a time, their sum, and when it exceeds ``tiny`` the products times ``x / sum`` added to
    ``own_row`` and to every row of ``acc_rows``; returns the sum. ``values`` is the major
    table's struct (its width), ``x`` and ``tiny`` float64 values."""
    vector, lanes, n_blocks = _simd_blocks(context, builder, values, dtype)
    scalar = context.get_value_type(dtype)
    double = ir.DoubleType()
    align = dtype.bitwidth // 8
    total_slot = cgutils.alloca_once(builder, scalar)

    def offset_of(block):
        return builder.mul(block, context.get_constant(types.intp, lanes))

    def product(offset):
        _, value = _simd_load(builder, major_row, offset, vector, dtype)
        for row in minor_rows:
            value = builder.fmul(value, _simd_load(builder, row, offset, vector, dtype)[1])
        return value

    def scale_of(total):
        if dtype == types.float64:
            quotient = builder.fdiv(x, total)
        else:
            # float32 when x is a float32 (a count below 2^24): the same bits as the
            # division in float64 rounded to float32 (double rounding is harmless for a
            # quotient when 53 >= 2 * 24 + 2), at float32's latency (0.94-0.96x the
            # iteration at K = 5-20)
            narrow = builder.fptrunc(x, scalar)
            exact = builder.fcmp_ordered("==", builder.fpext(narrow, double), x)
            with builder.if_else(exact) as (in_float32, in_float64):
                with in_float32:
                    narrow_block = builder.basic_block
                    narrow_quotient = builder.fdiv(narrow, total)
                with in_float64:
                    wide_block = builder.basic_block
                    wide_quotient = builder.fptrunc(
                        builder.fdiv(x, builder.fpext(total, double)), scalar
                    )
            quotient = builder.phi(scalar)
            quotient.add_incoming(narrow_quotient, narrow_block)
            quotient.add_incoming(wide_quotient, wide_block)
        splat = ir.Constant(vector, ir.Undefined)
        for q in range(lanes):
            splat = builder.insert_element(splat, quotient, ir.Constant(ir.IntType(32), q))
        return splat

    def above_tiny(total):
        wide = total if dtype == types.float64 else builder.fpext(total, double)
        return builder.fcmp_ordered(">", wide, tiny)

    def add_scaled(offset, contribution):
        for row in (own_row, *acc_rows):
            pointer, current = _simd_load(builder, row, offset, vector, dtype)
            builder.store(builder.fadd(current, contribution), pointer, align=align)

    for held in range(1, _HELD_BLOCKS + 1):
        count = context.get_constant(types.intp, held)
        with builder.if_then(builder.icmp_unsigned("==", n_blocks, count)):
            offsets = [context.get_constant(types.intp, q * lanes) for q in range(held)]
            products = [product(offset) for offset in offsets]
            sums = ir.Constant(vector, [0.0] * lanes)
            for block_product in products:
                sums = builder.fadd(sums, block_product)
            total = _lane_tree(builder, sums, lanes)
            builder.store(total, total_slot)
            with builder.if_then(above_tiny(total)):
                scale = scale_of(total)
                for offset, block_product in zip(offsets, products):
                    add_scaled(offset, builder.fmul(block_product, scale))
    held = context.get_constant(types.intp, _HELD_BLOCKS)
    buffered = context.get_constant(types.intp, _BUFFERED_BLOCKS)
    buffer = cgutils.alloca_once(builder, ir.ArrayType(vector, _BUFFERED_BLOCKS))
    zero = context.get_constant(types.intp, 0)
    with builder.if_then(builder.icmp_unsigned(">", n_blocks, held)):
        in_buffer = builder.icmp_unsigned("<=", n_blocks, buffered)
        lane_sums = cgutils.alloca_once_value(builder, ir.Constant(vector, [0.0] * lanes))
        with cgutils.for_range(builder, n_blocks) as loop:
            block_product = product(offset_of(loop.index))
            with builder.if_then(in_buffer):
                builder.store(block_product, builder.gep(buffer, [zero, loop.index]))
            builder.store(builder.fadd(builder.load(lane_sums), block_product), lane_sums)
        total = _lane_tree(builder, builder.load(lane_sums), lanes)
        builder.store(total, total_slot)
        with builder.if_then(above_tiny(total)):
            scale = scale_of(total)
            with cgutils.for_range(builder, n_blocks) as loop:
                offset = offset_of(loop.index)
                with builder.if_else(in_buffer) as (kept, again):
                    with kept:
                        block_product = builder.load(builder.gep(buffer, [zero, loop.index]))
                        add_scaled(offset, builder.fmul(block_product, scale))
                    with again:
                        add_scaled(offset, builder.fmul(product(offset), scale))
    return builder.load(total_slot)


@intrinsic
def row_dot_add_scaled(typingctx, major, i, minor, j, x, tiny, row_acc, minor_acc):
    """The pass's work on one nonzero: ``total = sum_l major[i, l] * minor[j, l]`` (the
    products added lane-wise across the row's SIMD blocks, then the lanes in a fixed tree)
    and, when ``total > tiny``, ``row_acc[l] += major[i, l] * minor[j, l] * scale`` and the
    same to ``minor_acc[j, l]`` with ``scale = x / total`` (``x`` and ``tiny`` float64; the
    quotient rounded once to the rows' dtype, as a division in that dtype rounds: in float32
    when the rows and ``x`` are float32's); returns the total. Rows are a multiple of
    `simd_width` long, ``row_acc`` 1-D, all one dtype.

    For rows of up to `_HELD_BLOCKS` SIMD registers the products are formed once and held
    in registers between the sum and the scatter-adds (each row is read once), up to
    `_BUFFERED_BLOCKS` in a buffer on the stack; longer rows are read again for the
    scatter-adds. Plain IEEE arithmetic in this order: no fast-math flag applies to it.

    ``minor_acc`` None: ``row_acc`` alone (local fits, whose columns are held fixed)."""
    own_only = isinstance(minor_acc, types.NoneType)
    if not (
        _simd_rows_ok(major, minor, *(() if own_only else (minor_acc,)))
        and isinstance(i, types.Integer)
        and isinstance(row_acc, types.Array)
        and row_acc.ndim == 1
        and row_acc.dtype == major.dtype
    ):
        return None
    dtype = major.dtype

    def codegen(context, builder, signature, args):
        major_type, _, minor_type, _, _, _, acc_type, minor_acc_type = signature.args
        values, major_row = _simd_row(context, builder, major_type, args[0], args[1])
        _, minor_row = _simd_row(context, builder, minor_type, args[2], args[3])
        acc_rows = []
        if not own_only:
            acc_rows.append(_simd_row(context, builder, minor_acc_type, args[7], args[3])[1])
        own_row = context.make_array(acc_type)(context, builder, args[6]).data
        return _held_products_add_scaled(
            context, builder, dtype, values, major_row, [minor_row], own_row, acc_rows,
            args[4], args[5],
        )  # fmt: skip

    signature = dtype(
        major, types.intp, minor, types.intp, types.float64, types.float64, row_acc, minor_acc
    )
    return signature, codegen


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def local_rows_pass(
    indptr,
    indices,
    counts,
    rows,
    row_scaled,
    row_logmax,
    row_shape,
    row_rate,
    col_scaled,
    col_logmax,
    col_shape,
    col_rate,
    tiny,
    row_stat,
    row_data,
):
    """`update_shapes` for a local fit, row by row: for each ``q``, row ``rows[q]`` of the
    CSR arrays (rows major) with its tables at row ``q`` of ``row_scaled``, ``row_logmax``,
    ``row_shape`` and ``row_rate`` (the rows still fitted, compacted; rates of one row
    are every row's, as in `update_shapes`), the columns' tables whole; writes
    ``row_stat[q] = sum_j x phi`` (float64, K columns) and ``row_data[q] = sum_j x log
    sum_l exp(E[log z] + E[log w])``, the row's whole data term less its log-factorials.
    No column statistics (the columns are held fixed).

    Each row's sums run over its own nonzeros in storage order, whichever rows are given
    and however they are split between threads: a row's results depend on that row alone.
    Its work per nonzero is `update_shapes`', written again: one inlined function for
    both cost the batch pass up to 8 % (medians 1.00-1.09 over two `benchmarks/ab_engine.py`
    runs, K = 5-50, 2026-12-03);
    `tests/test_kernels.py` checks both against dense responsibilities.
    """
    width = row_scaled.shape[1]
    if width % (SIMD_BYTES // row_scaled.itemsize):
        raise ValueError("local_rows_pass: tables must be padded (pad_components)")
    n_components = row_stat.shape[1]
    n_active = rows.shape[0]
    n_chunks = min(n_active, 64)  # buffers allocated once per chunk, not per row
    for chunk in prange(n_chunks):
        # the log-sum-exp path's phi in float64, as `tensor_update_shapes` keeps it: log rho
        # near -1e11 (shapes near 1e-11) rounded to float32 by thousands, and every phi
        # fell to 0 (a 0/0 step)
        phi = np.empty(width, dtype=np.float64)
        row_acc = np.empty(width, dtype=row_scaled.dtype)
        norms = np.empty(LOG_BUFFER, dtype=row_scaled.dtype)
        weights = np.empty(LOG_BUFFER)
        scratch = np.empty(LOG_BUFFER, dtype=row_scaled.dtype)
        exponents = np.empty(LOG_BUFFER, dtype=row_scaled.dtype)
        for q in range(chunk * n_active // n_chunks, (chunk + 1) * n_active // n_chunks):
            i = rows[q]
            row_acc[:] = 0.0
            row_logmax_q = float(row_logmax[q])
            n_buffered = np.int64(0)
            data = 0.0
            total_count = 0.0
            for n in range(indptr[i], indptr[i + 1]):
                j = indices[n]
                x = counts[n]
                total_count += float(x)
                data += float(x) * float(col_logmax[j])
                total = row_dot_add_scaled(
                    row_scaled, q, col_scaled, j, float(x), tiny, row_acc, None
                )
                if total > tiny:
                    norms[n_buffered] = total
                    weights[n_buffered] = x
                    n_buffered += 1
                    if n_buffered == LOG_BUFFER:
                        data += weighted_log_sum(norms, weights, n_buffered, scratch, exponents)
                        n_buffered = 0
                else:
                    peak, exact = _exp_shifted_log_rho(
                        row_shape[q], _rate_row(row_rate, q), col_shape[j],
                        _rate_row(col_rate, j), phi,
                    )  # fmt: skip
                    maxima = float(col_logmax[j]) + row_logmax_q
                    data += float(x) * (math.log(exact) + peak - maxima)
                    scale = float(x) / exact
                    for l in range(width):
                        row_acc[l] += phi[l] * scale
            data += weighted_log_sum(norms, weights, n_buffered, scratch, exponents)
            row_data[q] = data + total_count * row_logmax_q
            for l in range(n_components):
                row_stat[q, l] = row_acc[l]


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def local_row_terms(shape, rate, prior_shape, prior_rate, log_prior_rate, col_mean_sum, out):
    """Each row's ELBO terms but its data term: ``out[i] = -sum_l (E[z_il] col_mean_sum[l]
    + KL(Gamma(shape, rate) || Gamma(prior_shape[l], prior_rate[i])))``, the prior's rate
    possibly random (``log_prior_rate[i]`` its expected log, as in `gamma_sums`); ``rate``
    as `rows_or_row` gives it (one row for rates per component). A row at a time, for the stopping
    rule of a local fit: `_model.gamma_kl_entries`' formula, here so that a local fit of a
    streamed block holds no n x K temporaries (`gamma_terms` sums whole blocks of rows)."""
    n_rows, n_components = shape.shape
    for i in prange(n_rows):
        total = 0.0
        b, log_b = float(prior_rate[i]), float(log_prior_rate[i])
        rate_row = _rate_row(rate, i)
        for l in range(n_components):
            alpha, beta, a = np.float64(shape[i, l]), np.float64(rate_row[l]), prior_shape[l]
            kl = (
                (alpha - a) * digamma(alpha)
                - math.lgamma(alpha)
                + math.lgamma(a)
                + a * (math.log(beta) - log_b)
                + alpha * (b - beta) / beta
            )
            total += alpha / beta * col_mean_sum[l] + kl
        out[i] = -total


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def update_shapes(
    indptr,
    indices,
    counts,
    part_bounds,
    major_scaled,
    major_logmax,
    major_shape,
    major_rate,
    minor_scaled,
    minor_logmax,
    minor_shape,
    minor_rate,
    tiny,
    minor_block,
    major_stat,
    minor_partial,
    data_term_partial,
):
    """updateA in one pass over the nonzeros.

    For each nonzero (i, j, x): responsibilities ``phi_l`` proportional to
    ``exp(E[log z_il] + E[log w_jl])``; ``x * phi`` is added to ``major_stat[i]`` and to
    ``minor_partial[part, j]``; ``x * log(sum_l exp(...))``, less ``x`` times the two rows'
    maxima ``major_logmax[i] + minor_logmax[j]``, to ``data_term_partial[part]``: the
    caller adds those back as totals, ``sum_i T_i major_logmax[i] + sum_j T_j
    minor_logmax[j]`` (`_model.pass_statistics`), one load and one add less per nonzero.

    Parameters
    ----------
    indptr, indices, counts
        CSR arrays along the major axis, indices sorted within each row; the counts in any
        float or integer dtype (widened as they are read).
    part_bounds
        ``n_parts + 1`` major-row boundaries; part ``c`` owns rows
        ``part_bounds[c]:part_bounds[c + 1]``.
    major_scaled, major_logmax, major_shape, major_rate
        ``exp(E[log]) / exp(max_l E[log])`` (n_major x K', K' a multiple of
        `simd_width`, zero past column K: see `pad_components`) and its row maxima
        (n_major,) of the major-side factors (`gamma_moments`), and the shapes and rates
        they came from (n_major x K; the rates n_major x K or 1 x K, as `rows_or_row`
        gives them) for the log-sum-exp path, which takes the rates' logs itself (a table
        of them would be one more n x K array through the pass); likewise ``minor_*``.
        The arithmetic of the responsibilities, and the logs of their normalisers
        (`weighted_log_sum`), is in the tables' dtype; the log-sum-exp path's in float64.
    tiny
        Normalisers below this take the log-sum-exp path, which recomputes ``E[log]``
        of the two rows.
    minor_block
        Minor rows per cache block (`minor_block_rows`); the nonzeros of block ``b`` of
        every major row of a part are visited before those of block ``b + 1``.
    major_stat
        Output, n_major x K float64, overwritten: ``sum_j x_ij phi_ijl``.
    minor_partial
        Output, n_parts x n_minor x K' in the tables' dtype, overwritten: per-part
        ``sum_i x_ij phi_ijl`` (zero past column K).
    data_term_partial
        Output, n_parts float64: per-part ``sum x log(sum_l exp(E[log z] + E[log w]))``
        less the maxima's part (above).

    Returns
    -------
    int
        Number of nonzeros that took the log-sum-exp path.
    """
    n_parts = part_bounds.shape[0] - 1
    width = major_scaled.shape[1]
    if width % (SIMD_BYTES // major_scaled.itemsize):
        raise ValueError("update_shapes: tables must be padded (pad_components)")
    n_components = major_stat.shape[1]
    n_minor = minor_scaled.shape[0]
    fallbacks = np.zeros(n_parts, dtype=np.int64)
    for part in prange(n_parts):
        first, last = part_bounds[part], part_bounds[part + 1]
        # the log-sum-exp path's phi in float64 (`local_rows_pass` says why)
        phi = np.empty(width, dtype=np.float64)
        row_acc = np.empty(width, dtype=major_scaled.dtype)
        minor_acc = minor_partial[part]
        minor_acc[:] = 0.0
        major_stat[first:last] = 0.0
        next_entry = indptr[first:last].copy()  # per row: first nonzero not yet visited
        # normalisers whose logs the data term still needs, in the tables' dtype
        norms = np.empty(LOG_BUFFER, dtype=major_scaled.dtype)
        weights = np.empty(LOG_BUFFER)
        scratch = np.empty(LOG_BUFFER, dtype=major_scaled.dtype)
        exponents = np.empty(LOG_BUFFER, dtype=major_scaled.dtype)
        # int64 from the start: a literal 0 got `weighted_log_sum` compiled for
        # Literal[int](0) as well as for int64 (the call after the loop)
        n_buffered = np.int64(0)
        data = 0.0  # sum x log(normaliser / maxima): the log-space path's, then the buffers
        n_fallback = 0
        for block_start in range(0, n_minor, minor_block):
            block_stop = block_start + minor_block
            for i in range(first, last):
                n = next_entry[i - first]
                stop = indptr[i + 1]
                if n == stop or indices[n] >= block_stop:
                    continue
                row_logmax = float(major_logmax[i])  # for the log-space path
                row_acc[:] = 0.0
                while n < stop and indices[n] < block_stop:
                    j = indices[n]
                    x = counts[n]
                    total = row_dot_add_scaled(
                        major_scaled, i, minor_scaled, j, float(x), tiny, row_acc, minor_acc
                    )
                    if total > tiny:
                        norms[n_buffered] = total
                        weights[n_buffered] = x
                        n_buffered += 1
                        if n_buffered == LOG_BUFFER:
                            data += weighted_log_sum(norms, weights, n_buffered, scratch, exponents)
                            n_buffered = 0
                    else:
                        n_fallback += 1
                        peak, exact = _exp_shifted_log_rho(
                            major_shape[i],
                            _rate_row(major_rate, i),
                            minor_shape[j],
                            _rate_row(minor_rate, j),
                            phi,
                        )
                        maxima = float(minor_logmax[j]) + row_logmax
                        data += float(x) * (math.log(exact) + peak - maxima)
                        scale = float(x) / exact
                        for l in range(width):
                            contribution = phi[l] * scale
                            row_acc[l] += contribution
                            minor_acc[j, l] += contribution
                    n += 1
                next_entry[i - first] = n
                for l in range(n_components):
                    major_stat[i, l] += row_acc[l]
        data_term_partial[part] = data + weighted_log_sum(
            norms, weights, n_buffered, scratch, exponents
        )
        fallbacks[part] = n_fallback
    return fallbacks.sum()


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH)
def sum_parts(partial, out):
    """``out[j, l] = sum_c partial[c, j, l]`` for the first ``out.shape[1]`` components, in
    part order and in float64 (``out`` is float64).

    Blocks of `SIDE_BLOCK_ROWS` rows in parallel, a part's slab of a block at a time, so
    that the loop over a row vectorises: with the part innermost it took 2.9 ms of CPU
    for pbmc_facs' 3,774 x 104 x 2 parts on the loaded 2-core machine, one thread over
    the slabs 0.19 ms; the blocks took pbmc_facs' genes (16,791 x 104 x 2) from 2.0 to
    0.9 ms at K = 100. Every entry's sum is in part order: the same bits either way."""
    n_rows, n_components = out.shape
    for block in prange(-(-n_rows // SIDE_BLOCK_ROWS)):
        first = block * SIDE_BLOCK_ROWS
        stop = min(n_rows, first + SIDE_BLOCK_ROWS)
        for j in range(first, stop):
            for l in range(n_components):
                out[j, l] = 0.0
        for part in range(partial.shape[0]):
            slab = partial[part]
            for j in range(first, stop):
                for l in range(n_components):
                    out[j, l] += float(slab[j, l])


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE)
def csr_is_canonical(indptr, indices, data):
    """Whether a CSR matrix has strictly increasing indices within every row (sorted, no
    duplicates) and no stored zeros. scipy's ``has_canonical_format`` first copies
    ``indices`` to ``indptr``'s dtype when they differ (8 bytes per nonzero for the int32
    indices and int64 pointers of a large ``.h5ad``)."""
    n_rows = indptr.shape[0] - 1
    bad = 0
    for i in prange(n_rows):
        for n in range(indptr[i], indptr[i + 1]):
            if data[n] == 0 or (n > indptr[i] and indices[n] <= indices[n - 1]):
                bad += 1
    return bad == 0


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE)
def indices_increase(indptr, indices):
    """Whether the indices of every row of a CSR (column of a CSC) strictly increase:
    sorted and none repeated (stored zeros allowed, unlike `csr_is_canonical`)."""
    n_rows = indptr.shape[0] - 1
    bad = 0
    for i in prange(n_rows):
        for n in range(indptr[i] + 1, indptr[i + 1]):
            if indices[n] <= indices[n - 1]:
                bad += 1
    return bad == 0


@njit(cache=DISK_CACHE, inline="always")
def _compensated_add(total, compensation, term):
    """Neumaier's step: ``total + term`` and the running sum of what that rounding lost.
    (No fastmath here: it would cancel the compensation away.)"""
    summed = total + term
    if abs(total) >= abs(term):
        compensation += (total - summed) + term
    else:
        compensation += (term - summed) + total
    return summed, compensation


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE)
def log_factorial_sum(counts, block_size):
    """``sum_n lgamma(x_n + 1)``, the constant part of the ELBO's data term.

    Summed in fixed blocks so the result does not depend on thread scheduling, each block
    with Neumaier's compensation: six counts of 1e12 among 400 small ones put the plain
    running sum at 1.6e14, where each small term added lost up to 0.016 nats, 0.69 nats in
    all (the ELBO that far off, 37 times the rounding `_model.warn_elbo_rounding` allows).
    """
    n = counts.shape[0]
    n_blocks = (n + block_size - 1) // block_size
    partial = np.zeros(max(n_blocks, 1), dtype=np.float64)
    for block in prange(n_blocks):
        total, compensation = 0.0, 0.0
        for k in range(block * block_size, min(n, (block + 1) * block_size)):
            total, compensation = _compensated_add(
                total, compensation, math.lgamma(float(counts[k]) + 1.0)
            )
        partial[block] = total + compensation
    return partial.sum()


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE)
def row_log_factorials(indptr, counts, out):
    """``out[i] = sum_n lgamma(x_n + 1)`` over the nonzeros of CSR row ``i`` (compensated,
    as `log_factorial_sum`)."""
    for i in prange(indptr.shape[0] - 1):
        total, compensation = 0.0, 0.0
        for n in range(indptr[i], indptr[i + 1]):
            total, compensation = _compensated_add(
                total, compensation, math.lgamma(float(counts[n]) + 1.0)
            )
        out[i] = total + compensation


@njit(cache=DISK_CACHE)
def csr_totals(indptr, indices, counts, major_totals, minor_totals):
    """Each major row's and each minor index's total count, in float64, over the CSR
    arrays in storage order on one thread (outputs overwritten).

    numpy's ``bincount`` with the counts as weights and ``add.reduceat`` in float64 copy
    the counts as float64 and the indices as int64 first: 3.6 GiB at the lung-atlas shape
    (240M nonzeros), above everything else a batch fit holds."""
    minor_totals[:] = 0.0
    for i in range(indptr.shape[0] - 1):
        total = 0.0
        for n in range(indptr[i], indptr[i + 1]):
            x = np.float64(counts[n])
            total += x
            minor_totals[indices[n]] += x
        major_totals[i] = total


# --- classical NMF kernels (vbsnmf.classic) ---
# Notation of vbsnmf.classic: X (n x m) ~ Q = W H. Every kernel updates or evaluates the
# *row* side: ``row_factor`` is W (n x K) and ``col_factor`` is H transposed (m x K), so the
# H half-step runs the same kernel on the CSR of X transposed with the roles swapped.
# q = dot(W[i], H[:, j]) is computed at the stored entries only; nothing n x m is formed.


# d_AB written as a divided difference of exp. With a = alpha, b = beta, s = a + b and
# L = ln(q / p), the general formula
#     d_AB = (a/s p**s + b/s q**s - p**a q**b) / (a b)
# equals, after factoring p**s and multiplying through by L**2,
#     d_AB = L**2 exp[s ln p, a ln p + b ln q, s ln q]
#          = L**2 p**s exp[0, b L, s L],
# where exp[y0, y1, y2] is the second divided difference of exp at the three nodes (the
# logarithms of p**s, p**a q**b and q**s). Nothing divides by a, b or s any more: every
# limit (a -> 0, b -> 0, s -> 0, a = b = 0) is just nodes coming together, where the
# divided difference tends to exp''/2 smoothly, and the Hermite-Genocchi formula
# (exp[y0, y1, y2] = the integral of exp over a simplex) shows it is positive, so d_AB >= 0.
# The divided difference is evaluated two ways, both accurate to a few ulps:
# - nodes spread out (range R >= _AB_SERIES_RANGE), sorted lo <= mid <= hi and shifted by hi:
#       exp[lo, mid, hi] = e**hi (phi(mid - hi) - e**(mid - hi) phi(lo - mid)) / R,
#   phi(z) = (e**z - 1)/z = expm1(z)/z on z <= 0 (values in (0, 1], no overflow); the
#   difference loses at most about log2(2e/R) bits (6 at R = 0.1);
# - nodes close together: the Taylor series about their mean c, with deviations d_i,
#       exp[y0, y1, y2] = e**c sum_k h_k(d_0, d_1, d_2) / (k + 2)!,
#   h_k the complete homogeneous symmetric polynomials (h_1 = 0 about the mean); with
#   |d_i| <= 2R/3 < 0.067 the terms past k = _AB_SERIES_TERMS are below 1e-17 of the sum.
_AB_SERIES_RANGE = 0.1
_AB_SERIES_TERMS = 9


@njit(cache=DISK_CACHE)
def _phi_scalar(z):
    """``(e**z - 1) / z`` (1 at z = 0)."""
    if z == 0.0:
        return 1.0
    return math.expm1(z) / z


@njit(cache=DISK_CACHE)
def _exp_divided_difference(y0, y1, y2):
    """``(shift, core)`` with ``exp[y0, y1, y2] = e**shift * core``, accurate to a few
    ulps however close the nodes are (differences when spread, Taylor series when close)."""
    lo = min(y0, y1, y2)
    hi = max(y0, y1, y2)
    mid = max(min(y0, y1), min(max(y0, y1), y2))
    spread = hi - lo
    if spread >= _AB_SERIES_RANGE:
        upper = mid - hi  # <= 0
        lower = lo - mid  # <= 0
        expm1_upper = math.expm1(upper)
        phi_upper = expm1_upper / upper if upper != 0.0 else 1.0
        return hi, (phi_upper - (expm1_upper + 1.0) * _phi_scalar(lower)) / spread
    centre = (y0 + y1 + y2) / 3.0
    d0 = y0 - centre
    d1 = y1 - centre
    d2 = y2 - centre
    # The complete homogeneous symmetric polynomials h_k of the deviations follow
    # h_k = e1 h_(k-1) - e2 h_(k-2) + e3 h_(k-3) (elementary e_i), with e1 = 0 about the mean.
    e2 = -0.5 * (d0 * d0 + d1 * d1 + d2 * d2)
    e3 = d0 * d1 * d2
    h_km3, h_km2, h_km1 = 0.0, 1.0, 0.0  # h_(k-3), h_(k-2), h_(k-1) at k = 2 (h_(-1) = 0)
    series = 0.5
    factorial = 6.0  # (k + 2)! at k = 1
    for k in range(2, _AB_SERIES_TERMS + 1):
        h_k = e3 * h_km3 - e2 * h_km2
        factorial *= k + 2
        series += h_k / factorial
        h_km3, h_km2, h_km1 = h_km2, h_km1, h_k
    return centre, series


@njit(cache=DISK_CACHE)
def ab_divergence_scalar(p, q, alpha, beta):
    """The alpha-beta divergence ``d_AB(p, q)`` (Cichocki et al. 2011) with its limits,
    continuous in (alpha, beta) and accurate near every limit.

    ``inf`` where it is undefined (p = 0 with alpha <= 0 or alpha + beta <= 0; q = 0 with
    beta <= 0 or alpha + beta <= 0).
    """
    # In float64 whatever the caller passes: the counts arrive as float32 from the tiles,
    # and math.log of a float32 is a float32 in Numba (1e-8 relative in d_AB).
    p = np.float64(p)
    q = np.float64(q)
    total = alpha + beta
    if p == 0.0:
        if alpha > 0.0 and total > 0.0:
            return q**total / (alpha * total)
        return math.inf
    if q == 0.0:
        if beta > 0.0 and total > 0.0:
            return p**total / (beta * total)
        return math.inf
    # ln(q / p): log1p((q - p) / p) from q / p >= 1/2 on (q - p exact, Sterbenz) keeps the
    # digits that log(q / p) rounds away near 1; logarithms apart if q / p under/overflows.
    ratio = q / p
    if ratio == 0.0 or ratio == math.inf:
        log_ratio = math.log(q) - math.log(p)
    elif ratio < 0.5:
        log_ratio = math.log(ratio)
    else:
        log_ratio = math.log1p((q - p) / p)
    if log_ratio == 0.0:  # p = q (below, 0 times an overflowed power would be NaN)
        return 0.0
    shift, core = _exp_divided_difference(0.0, beta * log_ratio, total * log_ratio)
    exponent = total * math.log(p) + shift
    value = log_ratio * log_ratio * math.exp(exponent) * core
    if value == math.inf or (value == 0.0 and core > 0.0):
        # A factor over- or underflowed where the product need not: the product in logs
        # (fewer digits: the exponent's rounding scales with its size), kept for these cases.
        return math.exp(2.0 * math.log(abs(log_ratio)) + exponent + math.log(core))
    return value


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE)
def ab_divergence_array(p, q, alpha, beta, out):
    """``out[i] = d_AB(p[i], q[i])`` (`ab_divergence_scalar`); NaN where p or q is
    negative or NaN (`vbsnmf.classic.losses.ab_divergence`)."""
    for index in prange(p.size):
        if p[index] >= 0.0 and q[index] >= 0.0:
            out[index] = ab_divergence_scalar(p[index], q[index], alpha, beta)
        else:
            out[index] = math.nan


# ---- classical NMF ----------------------------------------------------------------------
#
# The classical kernels read X as column tiles: ``indptr`` is (n_tiles, n_rows + 1) and tile
# ``t`` is a CSR matrix of the stored entries whose column lies in
# ``[t * TILE_COLUMNS, (t + 1) * TILE_COLUMNS)``, the tiles one after another in
# ``indices``/``data``. A product X @ table then gathers from one 2048-row slice of the
# table at a time (192 KiB at K=12, in L2), where a CSR pass gathers from all of it: the
# 16,791 x 12 gene table of pbmc_facs (1.6 MB) measured 0.73-0.81x the time tiled (2
# threads, same-process A/B). Narrow matrices are one tile (a split table that fits L2
# anyway measured 1.06-1.2x slower).

TILE_COLUMNS = 2048


def tile_count(n_cols: int) -> int:
    """Column tiles for a matrix of ``n_cols`` columns (one up to two tiles' width)."""
    return 1 if n_cols <= 2 * TILE_COLUMNS else -(-n_cols // TILE_COLUMNS)


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE)
def tile_run_lengths(indptr, indices, counts):
    """``counts[t, i]``: stored entries of CSR row ``i`` in column tile ``t`` (column
    indices sorted within rows; ``counts.shape[0]`` tiles of `TILE_COLUMNS`)."""
    n_rows = indptr.shape[0] - 1
    n_tiles = counts.shape[0]
    for i in prange(n_rows):
        n = indptr[i]
        stop = indptr[i + 1]
        for t in range(n_tiles):
            start = n
            end_col = (t + 1) * TILE_COLUMNS if t < n_tiles - 1 else np.iinfo(np.int64).max
            while n < stop and indices[n] < end_col:
                n += 1
            counts[t, i] = n - start


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE)
def tile_values(indptr, tiled_indptr, source, target):
    """Copy each CSR row's runs of ``source`` to their places in the tiles."""
    n_rows = indptr.shape[0] - 1
    for i in prange(n_rows):
        n = indptr[i]
        for t in range(tiled_indptr.shape[0]):
            start = tiled_indptr[t, i]
            for k in range(tiled_indptr[t, i + 1] - start):
                target[start + k] = source[n + k]
            n += tiled_indptr[t, i + 1] - start


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH)
def classic_sparse_dot(indptr, indices, data, col_factor, out):
    """``out = X @ col_factor`` for X in column tiles (n x m) and a dense m x K table.

    Four stored entries per pass over the K components: the row of ``out`` is a chain of
    dependent load-add-stores, and one entry per pass left the kernel waiting on it
    (0.6-0.87x the time on pbmc_facs at K=12, 1 and 2 threads, same-process A/B)."""
    n_rows = indptr.shape[1] - 1
    n_components = col_factor.shape[1]
    for i in prange(n_rows):
        for l in range(n_components):
            out[i, l] = 0.0
    for t in range(indptr.shape[0]):
        for i in prange(n_rows):
            n = indptr[t, i]
            stop = indptr[t, i + 1]
            while n + 4 <= stop:
                x0, x1 = float(data[n]), float(data[n + 1])
                x2, x3 = float(data[n + 2]), float(data[n + 3])
                j0, j1, j2, j3 = indices[n], indices[n + 1], indices[n + 2], indices[n + 3]
                for l in range(n_components):
                    out[i, l] += (x0 * col_factor[j0, l] + x1 * col_factor[j1, l]) + (
                        x2 * col_factor[j2, l] + x3 * col_factor[j3, l]
                    )
                n += 4
            for rest in range(n, stop):
                x = float(data[rest])
                j = indices[rest]
                for l in range(n_components):
                    out[i, l] += x * col_factor[j, l]


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH)
def classic_wh_at_nonzeros(indptr, indices, row_factor, col_factor, out):
    """``out[n] = dot(W[i], H[:, j])`` for the stored entry ``n`` at (i, j)."""
    n_rows = indptr.shape[1] - 1
    n_components = row_factor.shape[1]
    for i in prange(n_rows):
        for t in range(indptr.shape[0]):
            for n in range(indptr[t, i], indptr[t, i + 1]):
                j = indices[n]
                q = 0.0
                for l in range(n_components):
                    q += row_factor[i, l] * col_factor[j, l]
                out[n] = q


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH)
def classic_frobenius_stored(indptr, indices, data, row_factor, col_factor, residual, squares):
    """The stored entries' part of ``||X - W H||^2``, per row of X (in column tiles).

    For row ``i`` and its stored entries (j, x) with ``q = dot(W[i], H[:, j])``:
    ``residual[i] = sum (x - q)**2`` and ``squares[i] = sum q**2`` (both overwritten).

    Four entries' dot products per pass over the K components: one alone is a chain of
    dependent adds that left the kernel at 2.5x the time of `classic_sparse_dot`.
    """
    n_rows = indptr.shape[1] - 1
    n_components = row_factor.shape[1]
    for i in prange(n_rows):
        row_residual = 0.0
        row_squares = 0.0
        for t in range(indptr.shape[0]):
            n = indptr[t, i]
            stop = indptr[t, i + 1]
            while n < stop:
                count = min(4, stop - n)
                j0 = indices[n]
                j1 = indices[n + 1] if count > 1 else j0
                j2 = indices[n + 2] if count > 2 else j0
                j3 = indices[n + 3] if count > 3 else j0
                q0, q1, q2, q3 = 0.0, 0.0, 0.0, 0.0
                for l in range(n_components):
                    w = row_factor[i, l]
                    q0 += w * col_factor[j0, l]
                    q1 += w * col_factor[j1, l]
                    q2 += w * col_factor[j2, l]
                    q3 += w * col_factor[j3, l]
                for offset, q in enumerate((q0, q1, q2, q3)):
                    if offset < count:
                        difference = float(data[n + offset]) - q
                        row_residual += difference * difference
                        row_squares += q * q
                n += count
        residual[i] = row_residual
        squares[i] = row_squares


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH)
def classic_zero_squares(indptr, indices, row_factor, col_factor, rows, out):
    """``out[r] = sum q_ij**2`` over the columns j *not* stored in row ``i = rows[r]`` of X
    (in column tiles), ``q_ij = dot(W[i], H[:, j])``: the zeros' part of ``||X - W H||^2``
    of single rows, summed term by term (m K per row)."""
    n_cols = col_factor.shape[0]
    n_components = row_factor.shape[1]
    for r in prange(rows.shape[0]):
        i = rows[r]
        stored = np.zeros(n_cols, dtype=np.bool_)
        for t in range(indptr.shape[0]):
            for n in range(indptr[t, i], indptr[t, i + 1]):
                stored[indices[n]] = True
        total = 0.0
        for j in range(n_cols):
            if stored[j]:
                continue
            q = 0.0
            for l in range(n_components):
                q += row_factor[i, l] * col_factor[j, l]
            total += q * q
        out[r] = total


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH)
def classic_ab_mu_terms(
    indptr,
    indices,
    data,
    weights,
    row_factor,
    col_factor,
    alpha,
    beta,
    floor,
    pattern_only,
    with_loss,
    numerator,
    denominator,
    row_loss,
):
    """The stored-entry terms of one AB multiplicative half-step for the rows of X (in
    column tiles).

    For each stored entry (i, j, x) with weight w (1 when ``weights`` is empty) and
    ``q = dot(W[i], H[:, j])``, floored under a negative power or a logarithm only (as
    scikit-learn does: under a positive one the floor overstated the terms of a small q, and
    the sparse route's Gram form has none); in the numerator and the loss at ``floor *
    min(x, 1)`` for x > 0 (`losses.entry_floor`: the floor scales with data below 1):

    - ``numerator[i] += w x**alpha q**(beta - 1) H[:, j]``;
    - if ``pattern_only`` (only the stored entries count): ``denominator[i] +=
      w q**(alpha + beta - 1) H[:, j]`` and ``row_loss[i] += w d_AB(x, q)``, with q floored
      where x > 0 and d_AB(x, 0) is infinite only (`losses.loss_is_floored`);
    - otherwise (every entry of X counts, the zeros are handled in closed form by the
      caller): ``row_loss[i] += d_AB(x, q) - d_AB(0, q)``; ``denominator`` (if it has rows:
      alpha + beta - 1 < 0) gets the stored entries' correction ``(max(q, floor min(x,
      1))**gamma - max(q, floor)**gamma) H[:, j]`` of `classic_dense_power_pass`'s sum, which
      floors every entry at ``floor``.

    ``numerator`` and ``row_loss`` (and ``denominator`` if ``pattern_only``) are overwritten;
    ``row_loss`` is left at zero unless ``with_loss``.
    """
    n_rows = indptr.shape[1] - 1
    n_components = row_factor.shape[1]
    weighted = weights.shape[0] > 0
    gamma = alpha + beta - 1.0
    kl = alpha == 1.0 and beta == 0.0
    # d_AB(x, 0) is infinite for beta <= 0 or alpha + beta <= 0 (`losses.loss_is_floored`)
    singular = beta <= 0.0 or alpha + beta <= 0.0
    correction = not pattern_only and denominator.shape[0] > 0
    for i in prange(n_rows):
        numerator_row = np.zeros(n_components, dtype=np.float64)
        denominator_row = np.zeros(n_components, dtype=np.float64)
        loss = 0.0
        for t in range(indptr.shape[0]):
            for n in range(indptr[t, i], indptr[t, i + 1]):
                j = indices[n]
                x = float(data[n])
                q = 0.0
                for l in range(n_components):
                    q += row_factor[i, l] * col_factor[j, l]
                x_floor = floor * min(x, 1.0) if x > 0.0 else floor
                q_safe = max(q, x_floor)
                q_loss = q_safe if x > 0.0 and singular else max(q, 0.0)
                weight = weights[n] if weighted else 1.0
                if kl:
                    ratio = weight * x / q_safe
                else:
                    x_alpha = x if alpha == 1.0 else x**alpha
                    if beta == 1.0:
                        ratio = weight * x_alpha
                    else:
                        q_ratio = q_safe if beta < 1.0 else max(q, 0.0)
                        ratio = weight * x_alpha * q_ratio ** (beta - 1.0)
                for l in range(n_components):
                    numerator_row[l] += ratio * col_factor[j, l]
                if pattern_only:
                    if gamma == 0.0:
                        q_gamma = weight
                    elif gamma == 1.0:
                        q_gamma = weight * max(q, 0.0)
                    else:
                        q_gamma = weight * (q_safe if gamma < 0.0 else max(q, 0.0)) ** gamma
                    for l in range(n_components):
                        denominator_row[l] += q_gamma * col_factor[j, l]
                elif correction:
                    q_gamma = q_safe**gamma - max(q, floor) ** gamma
                    for l in range(n_components):
                        denominator_row[l] += q_gamma * col_factor[j, l]
                if not with_loss:
                    continue
                if pattern_only:
                    # at a stored zero d(0, q) is finite: a floor would overstate it (the
                    # dense route's loss floors q at X's nonzeros only)
                    loss += weight * ab_divergence_scalar(x, q_loss, alpha, beta)
                elif kl:
                    # d(x, q) - d(0, q) of KL in one log: the hot case, kept free of powers.
                    loss += x * math.log(x / q_loss) - x + (q_loss - q)
                else:
                    loss += ab_divergence_scalar(x, q_loss, alpha, beta) - ab_divergence_scalar(
                        0.0, q, alpha, beta
                    )
        for l in range(n_components):
            numerator[i, l] = numerator_row[l]
            if pattern_only or correction:
                denominator[i, l] = denominator_row[l]
        row_loss[i] = loss


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH)
def classic_dense_power_pass(row_factor, col_factor, gamma, floor, denominator, row_power_sum):
    """Sums over *every* entry, one row of Q = W H at a time (memory: K per thread).

    ``denominator[i] = sum_j q_ij**gamma H[:, j]``, q floored at ``floor`` for a negative
    gamma only (skipped when ``denominator`` has no rows), and
    ``row_power_sum[i] = sum_j q_ij**(gamma + 1)``.
    Used where no closed form exists (the AB denominator for alpha + beta - 1 not in
    {0, 1}); costs n m K like the dense update, without the n x m matrix.
    """
    n_rows = row_factor.shape[0]
    n_cols = col_factor.shape[0]
    n_components = row_factor.shape[1]
    with_denominator = denominator.shape[0] > 0
    power_floor = floor if gamma < 0.0 else 0.0
    for i in prange(n_rows):
        acc = np.zeros(n_components, dtype=np.float64)
        power_sum = 0.0
        for j in range(n_cols):
            q = 0.0
            for l in range(n_components):
                q += row_factor[i, l] * col_factor[j, l]
            q = max(q, 0.0)
            power_sum += q ** (gamma + 1.0)
            if with_denominator:
                q_gamma = max(q, power_floor) ** gamma
                for l in range(n_components):
                    acc[l] += q_gamma * col_factor[j, l]
        if with_denominator:
            for l in range(n_components):
                denominator[i, l] = acc[l]
        row_power_sum[i] = power_sum


# --- validation of sparse input (vbsnmf._validation) ---
# A fingerprint of a count matrix is the sum, modulo 2**64, of a 64-bit hash of every
# nonzero entry (row, column, value): independent of the entries' storage order and of how
# the pass is split into chunks or blocks of rows, so the in-memory and the streamed
# matrix, CSR, CSC and COO all give the same number for the same entries.
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MANTISSA = 9007199254740992.0  # 2**53: frexp's mantissa times this is an exact integer


@njit(cache=DISK_CACHE)
def _mix64(value):
    """splitmix64's finaliser: a bijection of uint64 whose every output bit depends on
    every input bit."""
    value = (value ^ (value >> np.uint64(30))) * _MIX_1
    value = (value ^ (value >> np.uint64(27))) * _MIX_2
    return value ^ (value >> np.uint64(31))


@njit(cache=DISK_CACHE)
def _entry_hash(row, col, x):
    """The hash of one nonzero entry (``x`` finite)."""
    mantissa, exponent = math.frexp(x)
    value_bits = np.uint64(np.int64(mantissa * _MANTISSA)) ^ (
        np.uint64(exponent + 2048) << np.uint64(54)
    )
    key = _mix64(np.uint64(row) * _GOLDEN + np.uint64(col))
    return _mix64(key ^ value_bits)


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE)
def check_compressed(indptr, indices, data, n_minor, first_row, major_is_row, fingerprinted):
    """One pass over compressed sparse rows (CSR, or CSC with rows and columns swapped).

    Checks that ``indptr`` starts at 0, never decreases and ends within ``indices`` and
    ``data``, and that every index lies in ``[0, n_minor)``; if ``fingerprinted``, sums the
    fingerprint of the nonzero entries (see above), the rows numbered from ``first_row``
    (the minor axis of a CSC matrix: before, its columns were, so a CSC block of a streamed
    matrix had another fingerprint than the same block in CSR). The hash is most of the
    pass's time (`check_counts` of pbmc_facs' 2.7M nonzeros took 43.8 ms of CPU time with
    it, 18.1 without), and only checkpoints and streamed fits use the fingerprint.

    Returns
    -------
    problem, position, fingerprint
        ``problem`` 0 (valid), 1 (``indptr[0] != 0``), 2 (``indptr`` decreases after
        major row ``position``), 3 (``indptr[-1]`` beyond the stored entries) or 4 (the
        index at stored position ``position`` is out of range); ``fingerprint`` is
        meaningful for a valid matrix only, and 0 unless ``fingerprinted``.
    """
    n_major = indptr.shape[0] - 1
    n_stored = min(indices.shape[0], data.shape[0])
    if indptr[0] != 0:
        return 1, 0, np.uint64(0)
    if indptr[n_major] > n_stored:
        return 3, n_major, np.uint64(0)
    chunk = 4096
    n_chunks = (n_major + chunk - 1) // chunk
    first_decrease = np.full(max(n_chunks, 1), n_major, dtype=np.int64)
    for c in prange(n_chunks):
        for i in range(c * chunk, min(n_major, (c + 1) * chunk)):
            if indptr[i + 1] < indptr[i]:
                first_decrease[c] = i
                break
    for c in range(n_chunks):
        if first_decrease[c] < n_major:
            return 2, first_decrease[c], np.uint64(0)
    first_bad = np.full(max(n_chunks, 1), n_stored, dtype=np.int64)
    hashes = np.zeros(max(n_chunks, 1), dtype=np.uint64)
    for c in prange(n_chunks):
        total = np.uint64(0)
        for i in range(c * chunk, min(n_major, (c + 1) * chunk)):
            for n in range(indptr[i], indptr[i + 1]):
                j = np.int64(indices[n])
                if j < 0 or j >= n_minor:
                    if n < first_bad[c]:
                        first_bad[c] = n
                    break
                if not fingerprinted:
                    continue
                x = float(data[n])
                if x != 0.0:
                    if major_is_row:
                        total += _entry_hash(first_row + i, j, x)
                    else:
                        total += _entry_hash(first_row + j, i, x)
        hashes[c] = total
    fingerprint = np.uint64(0)
    for c in range(n_chunks):
        if first_bad[c] < n_stored:
            return 4, first_bad[c], np.uint64(0)
        fingerprint += hashes[c]
    return 0, 0, fingerprint


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE)
def check_coordinates(rows, cols, data, n_rows, n_cols, first_row, fingerprinted):
    """`check_compressed` for coordinates (COO): the first stored position whose row or
    column is out of range (``len(data)`` when none) and the fingerprint (if
    ``fingerprinted``, else 0)."""
    n_stored = data.shape[0]
    chunk = 1 << 16
    n_chunks = (n_stored + chunk - 1) // chunk
    first_bad = np.full(max(n_chunks, 1), n_stored, dtype=np.int64)
    hashes = np.zeros(max(n_chunks, 1), dtype=np.uint64)
    for c in prange(n_chunks):
        total = np.uint64(0)
        for n in range(c * chunk, min(n_stored, (c + 1) * chunk)):
            i, j = np.int64(rows[n]), np.int64(cols[n])
            if i < 0 or i >= n_rows or j < 0 or j >= n_cols:
                first_bad[c] = n
                break
            if not fingerprinted:
                continue
            x = float(data[n])
            if x != 0.0:
                total += _entry_hash(first_row + i, j, x)
        hashes[c] = total
    fingerprint = np.uint64(0)
    for c in range(n_chunks):
        if first_bad[c] < n_stored:
            return first_bad[c], np.uint64(0)
        fingerprint += hashes[c]
    return n_stored, fingerprint


# ---- tensor (Poisson tensor factorisation, vbsnmf._tensor) ------------------------------
#
# A D-way count tensor is held as its nonzeros sorted by one *major* mode (CSR-like
# ``indptr`` over that mode's slices), then by the other (*minor*) modes. The minor modes'
# factor tables are stacked into one table, and ``minor_rows[m][n]`` is the row of that
# stacked table that minor mode ``m`` of nonzero ``n`` reads (its index plus the mode's
# offset), so one kernel serves every D (compiled once per D, with the loops over the modes
# unrolled). Race-free as `update_shapes`: a chunk of major slices owns their rows of
# ``major_stat`` and writes the minor modes' statistics into its own slab of the stacked
# shape, summed afterwards in chunk order. `_tensor` makes the longest mode major and
# stacks the minor modes longest first; the first minor mode (which starts the stack and is
# the secondary sort key) is walked in cache blocks as the minor
# axis of `update_shapes` is.


def _index_rows_ok(rows, n) -> bool:
    return (
        isinstance(rows, types.UniTuple)
        and isinstance(rows.dtype, types.Array)
        and rows.dtype.ndim == 1
        and isinstance(rows.dtype.dtype, types.Integer)
        and isinstance(n, types.Integer)
    )


def _minor_rows(context, builder, table_type, table, rows_type, rows, n):
    """Pointers to the start of rows ``rows[m][n]``, m = 0, 1, ..., of the 2-D ``table``
    (``rows`` a tuple of 1-D index arrays: one pointer per minor mode, unrolled)."""
    table = context.make_array(table_type)(context, builder, table)
    zero = context.get_constant(types.intp, 0)
    index_type = rows_type.dtype
    pointers = []
    for m in range(rows_type.count):
        column = context.make_array(index_type)(context, builder, builder.extract_value(rows, m))
        index = builder.load(cgutils.get_item_pointer(context, builder, index_type, column, [n]))
        index = context.cast(builder, index, index_type.dtype, types.intp)
        pointers.append(
            cgutils.get_item_pointer(context, builder, table_type, table, [index, zero])
        )
    return pointers


@intrinsic
def row_products_add_scaled(typingctx, major, i, minor, rows, n, x, tiny, row_acc, minor_acc):
    """`row_dot_add_scaled` for D modes: ``total = sum_l major[i, l] * prod_m
    minor[rows[m][n], l]`` (the product in that order) and, when ``total > tiny``, the
    products times ``x / total`` added to ``row_acc`` and to ``minor_acc[rows[m][n]]`` for
    every minor mode m; returns the total. The products are held between the sum and the
    scatter-adds as there (`_held_products_add_scaled`); ``rows`` is a tuple of 1-D index
    arrays, one per minor mode, so the loops over the modes are unrolled at compile time.
    For one minor mode this is `row_dot_add_scaled`, bit for bit."""
    if not (
        _simd_rows_ok(major, minor, minor_acc)
        and isinstance(i, types.Integer)
        and _index_rows_ok(rows, n)
        and isinstance(row_acc, types.Array)
        and row_acc.ndim == 1
        and row_acc.dtype == major.dtype
    ):
        return None
    dtype = major.dtype

    def codegen(context, builder, signature, args):
        major_type, _, minor_type, rows_type, _, _, _, acc_type, minor_acc_type = signature.args
        values, major_row = _simd_row(context, builder, major_type, args[0], args[1])
        minor_rows = _minor_rows(context, builder, minor_type, args[2], rows_type, args[3], args[4])
        acc_rows = _minor_rows(
            context, builder, minor_acc_type, args[8], rows_type, args[3], args[4]
        )
        own_row = context.make_array(acc_type)(context, builder, args[7]).data
        return _held_products_add_scaled(
            context, builder, dtype, values, major_row, minor_rows, own_row, acc_rows,
            args[5], args[6],
        )  # fmt: skip

    signature = dtype(
        major, types.intp, minor, rows, types.intp, types.float64, types.float64, row_acc,
        minor_acc,
    )  # fmt: skip
    return signature, codegen


@intrinsic
def add_scaled_rows(typingctx, phi, scale, row_acc, minor_acc, rows, n):
    """``row_acc[l] += phi[l] * scale`` and the same to ``minor_acc[rows[m][n], l]`` for
    every minor mode m, for the whole row, a SIMD register at a time (``phi`` and
    ``row_acc`` 1-D, ``minor_acc`` 2-D, as wide, all of one dtype): the tensor pass's
    log-space path."""
    if not (
        _simd_rows_ok(minor_acc)
        and _index_rows_ok(rows, n)
        and all(
            isinstance(a, types.Array) and a.ndim == 1 and a.dtype == minor_acc.dtype
            for a in (phi, row_acc)
        )
    ):
        return None
    dtype = minor_acc.dtype

    def codegen(context, builder, signature, args):
        phi_type, _, acc_type, minor_acc_type, rows_type, _ = signature.args
        source = context.make_array(phi_type)(context, builder, args[0]).data
        own_row = context.make_array(acc_type)(context, builder, args[2]).data
        table = context.make_array(minor_acc_type)(context, builder, args[3])
        minor_rows = _minor_rows(
            context, builder, minor_acc_type, args[3], rows_type, args[4], args[5]
        )
        targets = [own_row, *minor_rows]
        vector, lanes, n_blocks = _simd_blocks(context, builder, table, dtype)
        scale = ir.Constant(vector, ir.Undefined)
        for q in range(lanes):
            scale = builder.insert_element(scale, args[1], ir.Constant(ir.IntType(32), q))
        align = dtype.bitwidth // 8
        with cgutils.for_range(builder, n_blocks) as loop:
            offset = builder.mul(loop.index, context.get_constant(types.intp, lanes))
            contribution = builder.fmul(
                _simd_load(builder, source, offset, vector, dtype)[1], scale
            )
            for row in targets:
                pointer, current = _simd_load(builder, row, offset, vector, dtype)
                builder.store(builder.fadd(current, contribution), pointer, align=align)
        return context.get_dummy_value()

    signature = types.void(phi, dtype, row_acc, minor_acc, rows, types.intp)
    return signature, codegen


@njit(cache=DISK_CACHE)
def _tensor_exp_shifted_log_rho(major_elog_row, minor_elog, minor_rows, n, phi):
    """Slow path of nonzero ``n``: ``phi_l = exp(log rho_l - max_l log rho_l)`` with
    ``log rho_l = E[log v^(major)_l] + sum_m E[log v^(m)_l]`` (rows ``minor_rows[m][n]``
    of the stacked minor tables); returns (max, sum_l phi_l). Padding entries of ``phi``
    are zero."""
    n_components = major_elog_row.shape[0]
    for l in range(n_components, phi.shape[0]):
        phi[l] = 0.0
    for l in range(n_components):
        phi[l] = float(major_elog_row[l])
    for m in range(len(minor_rows)):
        g = minor_rows[m][n]
        for l in range(n_components):
            phi[l] += float(minor_elog[g, l])
    peak = -np.inf
    for l in range(n_components):
        peak = max(peak, phi[l])
    total = 0.0
    for l in range(n_components):
        phi[l] = math.exp(phi[l] - peak)
        total += phi[l]
    return peak, total


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH)
def tensor_update_shapes(
    indptr,
    minor_rows,
    counts,
    chunk_bounds,
    major_scaled,
    major_logmax,
    major_elog,
    minor_scaled,
    minor_logmax,
    minor_elog,
    tiny,
    n_first_minor,
    minor_block,
    major_stat,
    minor_partial,
    data_term_partial,
):
    """updateA of the D-mode model in one pass over the nonzeros (D >= 2).

    For each nonzero n with count x, major index i and stacked minor rows g_1..g_{D-1}:
    responsibilities ``phi_l`` proportional to ``exp(E[log v_il] + sum_m E[log v_{g_m l}])``
    (from the scaled tables: ``S[i, l] prod_m S[g_m, l]`` times ``exp`` of the row maxima);
    ``x * phi`` is added to ``major_stat[i]`` and to ``minor_partial[chunk, g_m]`` for every
    m; ``x * log(sum_l exp(...))`` to ``data_term_partial[chunk]``.

    The arithmetic is `update_shapes`' for D modes: `row_products_add_scaled` forms the
    rows' product (in the tables' dtype) and the normaliser, and adds the contributions to
    the slice's accumulator and to every minor row's; the normalisers' logs are taken a
    buffer at a time (`weighted_log_sum`). For D = 2 every product and sum is
    `update_shapes`'.

    Parameters
    ----------
    indptr
        ``n_major + 1`` offsets: the nonzeros of major slice ``i`` are
        ``indptr[i]:indptr[i + 1]``, sorted by ``minor_rows[:, 0]`` within the slice.
    minor_rows
        A tuple of D - 1 arrays of nnz, one per minor mode: per nonzero, its row in the
        stacked minor tables (the first minor mode's rows are ``0 .. n_first_minor - 1``).
        A tuple, so that each D compiles its own kernel with the loops over the modes
        unrolled.
    counts
        nnz counts.
    chunk_bounds
        ``n_chunks + 1`` major-slice boundaries; chunk ``c`` owns slices
        ``chunk_bounds[c]:chunk_bounds[c + 1]``.
    major_scaled, major_logmax, major_elog
        ``exp(E[log]) / exp(max_l E[log])`` (n_major x K', K' a multiple of `simd_width`,
        zero past column K: see `pad_components`), the row maxima (n_major,) and ``E[log]``
        (n_major x K) of the major mode; ``minor_*`` the same for the stacked minor modes.
    tiny
        Normalisers below this take the log-sum-exp path.
    n_first_minor, minor_block
        Rows of the first minor mode, and its rows per cache block (`minor_block_rows`):
        the nonzeros of block ``b`` of every major slice of a chunk are visited before
        those of block ``b + 1``.
    major_stat
        Output, n_major x K', overwritten: ``sum x phi`` per major slice.
    minor_partial
        Output, n_chunks x n_stacked x K', overwritten: per-chunk ``sum x phi`` per minor row.
    data_term_partial
        Output, n_chunks: per-chunk ``sum x log(sum_l exp(sum_d E[log v^(d)]))``.

    Returns
    -------
    int
        Number of nonzeros that took the log-sum-exp path.
    """
    n_chunks = chunk_bounds.shape[0] - 1
    width = major_scaled.shape[1]
    if width % (SIMD_BYTES // major_scaled.itemsize):
        raise ValueError("tensor_update_shapes: tables must be padded (pad_components)")
    n_minor_modes = len(minor_rows)
    first_rows = minor_rows[0]
    fallbacks = np.zeros(n_chunks, dtype=np.int64)
    for chunk in prange(n_chunks):
        first, stop_slice = chunk_bounds[chunk], chunk_bounds[chunk + 1]
        phi = np.empty(width, dtype=major_scaled.dtype)  # the products of the rows
        exact_phi = np.empty(width, dtype=np.float64)  # the log-sum-exp path's
        row_acc = np.empty(width, dtype=major_scaled.dtype)
        narrow = np.empty(1, dtype=major_scaled.dtype)
        minor_acc = minor_partial[chunk]
        minor_acc[:] = 0.0
        major_stat[first:stop_slice] = 0.0
        next_entry = indptr[first:stop_slice].copy()  # per slice: first nonzero not visited
        norms = np.empty(LOG_BUFFER)  # normalisers whose logs the data term still needs
        weights = np.empty(LOG_BUFFER)
        scratch = np.empty(LOG_BUFFER)
        exponents = np.empty(LOG_BUFFER)
        n_buffered = np.int64(0)
        data = 0.0  # sum x log(normaliser): the terms outside the logs, then the buffers
        # compensated (`_compensated_add`): the shifts of counts of 1e12 put the running sum
        # at 6e12, where the plain sum lost up to 5e-4 nats on every other count
        data_lost = 0.0
        n_fallback = 0
        for block_start in range(0, n_first_minor, minor_block):
            block_stop = block_start + minor_block
            for i in range(first, stop_slice):
                n = next_entry[i - first]
                stop = indptr[i + 1]
                if n == stop or first_rows[n] >= block_stop:
                    continue
                row_logmax = float(major_logmax[i])
                row_acc[:] = 0.0
                while n < stop and first_rows[n] < block_stop:
                    x = counts[n]
                    log_shift = row_logmax
                    for m in range(n_minor_modes):
                        log_shift += float(minor_logmax[minor_rows[m][n]])
                    total = row_products_add_scaled(
                        major_scaled, i, minor_scaled, minor_rows, n, float(x), tiny, row_acc,
                        minor_acc,
                    )  # fmt: skip
                    if total > tiny:
                        data, data_lost = _compensated_add(data, data_lost, float(x) * log_shift)
                        norms[n_buffered] = total
                        weights[n_buffered] = x
                        n_buffered += 1
                        if n_buffered == LOG_BUFFER:
                            data, data_lost = _compensated_add(
                                data,
                                data_lost,
                                weighted_log_sum(norms, weights, n_buffered, scratch, exponents),
                            )
                            n_buffered = 0
                    else:
                        n_fallback += 1
                        peak, exact = _tensor_exp_shifted_log_rho(
                            major_elog[i], minor_elog, minor_rows, n, exact_phi
                        )
                        data, data_lost = _compensated_add(
                            data, data_lost, float(x) * (math.log(exact) + peak)
                        )
                        for l in range(width):
                            phi[l] = exact_phi[l]
                        narrow[0] = float(x) / exact
                        add_scaled_rows(phi, narrow[0], row_acc, minor_acc, minor_rows, n)
                    n += 1
                next_entry[i - first] = n
                for l in range(width):
                    major_stat[i, l] += row_acc[l]
        data, data_lost = _compensated_add(
            data, data_lost, weighted_log_sum(norms, weights, n_buffered, scratch, exponents)
        )
        data_term_partial[chunk] = data + data_lost
        fallbacks[chunk] = n_fallback
    return fallbacks.sum()


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE)
def tensor_fingerprint(indptr, minor_rows, minor_modes, minor_offsets, major, counts):
    """The fingerprint of a tensor's nonzeros (`check_compressed`'s, for D modes): the sum
    modulo 2**64 of a hash of every entry, its coordinates in mode order
    ``(c_0, ..., c_{D-1})`` folded as ``h = c_0``, ``h = _mix64(h * golden + c_d)`` for
    d = 1 .. D - 2, then ``_entry_hash(h, c_{D-1}, y)``. Independent of the order of the
    entries and of which mode is major; for D = 2 the matrix's fingerprint.

    ``minor_rows`` as in `tensor_update_shapes`, ``minor_modes[m]`` the mode of its m-th
    array and ``minor_offsets[m]`` that mode's first stacked row; ``major`` the mode of
    ``indptr``'s slices."""
    n_major = indptr.shape[0] - 1
    n_modes = len(minor_rows) + 1
    chunk = 4096
    n_chunks = (n_major + chunk - 1) // chunk
    hashes = np.zeros(max(n_chunks, 1), dtype=np.uint64)
    for c in prange(n_chunks):
        coords = np.empty(n_modes, dtype=np.int64)
        total = np.uint64(0)
        for i in range(c * chunk, min(n_major, (c + 1) * chunk)):
            coords[major] = i
            for n in range(indptr[i], indptr[i + 1]):
                for m in range(n_modes - 1):
                    coords[minor_modes[m]] = np.int64(minor_rows[m][n]) - minor_offsets[m]
                key = np.uint64(coords[0])
                for d in range(1, n_modes - 1):
                    key = _mix64(key * _GOLDEN + np.uint64(coords[d]))
                total += _entry_hash(key, coords[n_modes - 1], float(counts[n]))
        hashes[c] = total
    fingerprint = np.uint64(0)
    for c in range(n_chunks):
        fingerprint += hashes[c]
    return fingerprint


# -- SQUAREM's extrapolation ----------------------------------------------------------------
# In log parameters, entry by entry, without the three n x K arrays of logs (and the
# temporaries of the expression) that numpy needs: at K = 50 on pbmc_facs those were
# 50 MiB of a fit's peak. The logs are taken twice (for the step, then for the
# extrapolation), a buffer at a time by `_buffer_logs` (vectorised: 1.6 ns a log against
# libm's and numpy's 4.7 on the 2-core EPYC), in float64 whatever the parameters' dtype.
# The buffers are separate 1-D arrays: as rows of one 2-D array the loops over them did not
# vectorise (22 instead of 9 ns an entry for `squarem_sums`). Large arrays run their fixed
# blocks in parallel, small ones on one thread (`squarem_in_parallel`).


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def checked_logs(values, count, logs, exponent):
    """``logs[q] = log(values[q])`` for ``q < count`` (float64 buffers, ``exponent``
    scratch): `_logs64` when every value is a normal number, libm's log otherwise (zeros,
    subnormals, inf, NaN)."""
    bits = values.view(np.int64)
    n_special = 0
    for q in range(count):  # exponent field 0 or 0x7FF: vectorises
        field = (bits[q] >> 52) & 0x7FF
        n_special += (field == 0) | (field == 0x7FF)
    if n_special == 0:
        _buffer_logs(values, count, logs, exponent)
    else:
        for q in range(count):
            logs[q] = math.log(values[q])


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _widened_logs(theta, first, count, widened, logs, exponent):
    """``logs[q] = log(theta[first + q])`` in float64 for ``q < count`` (`checked_logs`
    of the values widened into ``widened``)."""
    for q in range(count):
        widened[q] = np.float64(theta[first + q])
    checked_logs(widened, count, logs, exponent)


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS, inline="always")
def _squarem_directions(theta0, theta1, theta2, first, count, log0, r, v, widened, exponent):
    """``log0 = log theta0``, ``r = log theta1 - log theta0``, ``v = log theta2 -
    2 log theta1 + log theta0`` for entries ``first .. first + count`` (into buffers;
    ``widened`` and ``exponent``: scratch)."""
    _widened_logs(theta0, first, count, widened, log0, exponent)
    _widened_logs(theta1, first, count, widened, r, exponent)
    _widened_logs(theta2, first, count, widened, v, exponent)
    for q in range(count):
        r[q] -= log0[q]
        v[q] -= log0[q] + 2.0 * r[q]


# Entries per block of the SQUAREM kernels: fixed, so their sums are the same for any
# number of threads, and whether an array's blocks run in parallel (`squarem_in_parallel`)
# does not change them either.
SQUAREM_BLOCK = 8 * LOG_BUFFER


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def _squarem_sums_block(block, theta0, theta1, theta2, partial):
    """``partial[block] = (sum r^2, sum v^2)`` over block ``block``'s entries, each sum in
    four lanes added as ``(0 + 1) + (2 + 3)`` (one chain of adds ran at the adder's
    latency)."""
    n = theta0.shape[0]
    log0, r, v = np.empty(LOG_BUFFER), np.empty(LOG_BUFFER), np.empty(LOG_BUFFER)
    widened, exponent = np.empty(LOG_BUFFER), np.empty(LOG_BUFFER)
    r_lanes = np.zeros(4)
    v_lanes = np.zeros(4)
    stop = min(n, (block + 1) * SQUAREM_BLOCK)
    for first in range(block * SQUAREM_BLOCK, stop, LOG_BUFFER):
        count = min(LOG_BUFFER, stop - first)
        _squarem_directions(theta0, theta1, theta2, first, count, log0, r, v, widened, exponent)
        for q in range(count):
            r_lanes[q & 3] += r[q] * r[q]
            v_lanes[q & 3] += v[q] * v[q]
    partial[block, 0] = (r_lanes[0] + r_lanes[1]) + (r_lanes[2] + r_lanes[3])
    partial[block, 1] = (v_lanes[0] + v_lanes[1]) + (v_lanes[2] + v_lanes[3])


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def _squarem_extrapolate_block(block, theta0, theta1, theta2, step, out, bad):
    """Block ``block`` of `squarem_extrapolate`; ``bad[block]`` its count."""
    n = theta0.shape[0]
    twice = 2.0 * step
    square = step * step
    log0, r, v = np.empty(LOG_BUFFER), np.empty(LOG_BUFFER), np.empty(LOG_BUFFER)
    widened, exponent = np.empty(LOG_BUFFER), np.empty(LOG_BUFFER)
    unchanged = np.empty(LOG_BUFFER, dtype=np.bool_)
    n_bad = 0
    stop = min(n, (block + 1) * SQUAREM_BLOCK)
    for first in range(block * SQUAREM_BLOCK, stop, LOG_BUFFER):
        count = min(LOG_BUFFER, stop - first)
        _squarem_directions(theta0, theta1, theta2, first, count, log0, r, v, widened, exponent)
        for q in range(count):
            unchanged[q] = r[q] == 0.0 and v[q] == 0.0
            log0[q] += twice * r[q] + square * v[q]
        buffer_exps(log0, count, r, widened, exponent)
        for q in range(count):
            # an entry both steps left as it was (a prior_shape the learned prior holds
            # fixed) is theta0 itself: exp(log 0.3) is 0.29999999999999993
            value = out.dtype.type(theta0[first + q] if unchanged[q] else r[q])
            out[first + q] = value
            n_bad += not (value > 0.0 and value < np.inf)
    bad[block] = n_bad


def _squarem_blocks(n: int) -> int:
    return max(1, -(-n // SQUAREM_BLOCK))


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def _squarem_sums_serial(theta0, theta1, theta2, partial):
    for block in range(partial.shape[0]):
        _squarem_sums_block(block, theta0, theta1, theta2, partial)


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def _squarem_sums_parallel(theta0, theta1, theta2, partial):
    for block in prange(partial.shape[0]):
        _squarem_sums_block(np.int64(block), theta0, theta1, theta2, partial)  # as the serial


@njit(cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def _squarem_extrapolate_serial(theta0, theta1, theta2, step, out, bad):
    for block in range(bad.shape[0]):
        _squarem_extrapolate_block(block, theta0, theta1, theta2, step, out, bad)


@ParallelKernel
@njit(parallel=True, cache=DISK_CACHE, fastmath=_FASTMATH, error_model=_ERRORS)
def _squarem_extrapolate_parallel(theta0, theta1, theta2, step, out, bad):
    for block in prange(bad.shape[0]):
        _squarem_extrapolate_block(np.int64(block), theta0, theta1, theta2, step, out, bad)


def squarem_in_parallel(n: int) -> bool:
    """Whether an array of ``n`` entries is worth a parallel region: a cycle has a dozen
    arrays, mostly small, and on a busy machine a region costs milliseconds to start (a
    loaded core delays the wake-up of its thread)."""
    return n >= 8 * SQUAREM_BLOCK


def squarem_sums(theta0, theta1, theta2) -> tuple[float, float]:
    """``(sum r^2, sum v^2)`` over three flat positive arrays, with ``r = log theta1 -
    log theta0`` and ``v = log theta2 - 2 log theta1 + log theta0`` (float64), by fixed
    blocks summed in order."""
    return block_sums_total(squarem_block_sums(theta0, theta1, theta2))


def squarem_block_sums(theta0, theta1, theta2) -> np.ndarray:
    """`squarem_sums`' ``(sum r^2, sum v^2)`` of each fixed block (blocks x 2, in order):
    arrays read a run of whole blocks at a time give the blocks of the whole."""
    partial = np.empty((_squarem_blocks(theta0.shape[0]), 2))
    kernel = (
        _squarem_sums_parallel if squarem_in_parallel(theta0.shape[0]) else _squarem_sums_serial
    )
    kernel(theta0, theta1, theta2, partial)
    return partial


def block_sums_total(partial: np.ndarray) -> tuple[float, float]:
    """`squarem_sums` from its blocks' sums."""
    return float(partial[:, 0].sum()), float(partial[:, 1].sum())


def squarem_extrapolate(theta0, theta1, theta2, step: float, out) -> int:
    """``out = exp(log theta0 + 2 s r + s^2 v)`` entry by entry (``r``, ``v`` as in
    `squarem_sums`, ``s = step``), stored in ``out``'s dtype, and ``theta0`` itself where
    ``r = v = 0``; returns the number of entries of ``out`` that are not finite and
    positive."""
    bad = np.empty(_squarem_blocks(theta0.shape[0]), dtype=np.int64)
    parallel = squarem_in_parallel(theta0.shape[0])
    kernel = _squarem_extrapolate_parallel if parallel else _squarem_extrapolate_serial
    kernel(theta0, theta1, theta2, float(step), out, bad)
    return int(bad.sum())


def _save_if_written(save, signature, compiled) -> None:
    """A kernel's ``save_overload`` (``save``) that lets a failed write go: a full disk or
    an exceeded quota where Numba keeps its cache (the install's ``__pycache__``, a conda
    environment in a full HOME) raised from the first call of every kernel compiled, so
    each fit failed with "[Errno 122] Disk quota exceeded" (or 28, or 27 under a file-size
    limit) naming no file, though the kernel was compiled and OUTDIR on another disk. The
    kernel runs from memory; the next process compiles it again."""
    try:
        save(signature, compiled)
    except OSError:
        pass


def _keep_kernels_when_cache_writes_fail(namespace: dict) -> None:
    """Wrap the on-disk cache of every kernel in ``namespace`` (this module's, each
    `ParallelKernel` by its dispatcher) with `_save_if_written`. Per kernel, not Numba's
    `Cache` class: the user's own cached functions keep Numba's behaviour."""
    for value in list(namespace.values()):
        dispatcher = value.dispatcher if isinstance(value, ParallelKernel) else value
        cache = getattr(dispatcher, "_cache", None)
        if isinstance(cache, Cache):
            cache.save_overload = partial(_save_if_written, cache.save_overload)


_keep_kernels_when_cache_writes_fail(globals())
