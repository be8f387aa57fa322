"""Every Numba kernel of `vbsnmf._kernels`, one by one, against a plain numpy version.

The kernels are called directly with hand-made inputs (not through the model or the
solvers), so a failure names the loop that is wrong.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import reference_cavi
import scipy.sparse as sp
from numba import njit
from scipy import stats
from scipy.special import digamma, gammaln, logsumexp

from vbsnmf import VBNMF, ConvergenceWarning, _kernels


def _csr(rng, n_rows, n_cols, density, max_count=6):
    dense = rng.integers(1, max_count, (n_rows, n_cols)) * (rng.random((n_rows, n_cols)) < density)
    dense[1] = 0  # an empty row
    return sp.csr_matrix(dense.astype(np.float64))


def _scaled(elog):
    logmax = elog.max(axis=1)
    return _kernels.pad_components(np.exp(elog - logmax[:, None])), logmax.astype(np.float64)


def _engine_arrays(X):
    """X's arrays as the engine hands them to the passes (`_data.as_count_data`): int64
    row pointers, whatever scipy gave."""
    return X.indptr.astype(np.int64), X.indices, X.data


def _side(shape, rate, dtype):
    """A side's shapes and rates as the passes take them (`_model.side_moments`): the
    shapes read-only, the rates as `rows_or_row` gives them, in q's dtype."""
    return _kernels.read_only(shape), _kernels.rows_or_row(rate, shape.shape, dtype)


def _pass(X, bounds, major_elog, minor_elog, block_rows, tiny, dtype=np.float64):
    """`update_shapes` on X (CSR, rows major) with tables in ``dtype``: shapes 2 (1e-3
    where ``E[log]`` is below -100, so that its rate stays a float) and the rates that
    make ``E[log] = digamma(shape) - log(rate)`` the given ones. Each part's data term
    gets back the part the kernel leaves to its caller, ``sum x (logmax_i + logmax_j)``
    over the part's nonzeros (computed here from X)."""
    major_scaled, major_logmax = _scaled(major_elog.astype(dtype))
    minor_scaled, minor_logmax = _scaled(minor_elog.astype(dtype))
    major_shape = np.where(major_elog < -100, 1e-3, 2.0).astype(dtype)
    minor_shape = np.where(minor_elog < -100, 1e-3, 2.0).astype(dtype)
    k = major_elog.shape[1]
    major_stat = np.full((X.shape[0], k), np.nan)  # overwritten
    minor_partial = np.full((len(bounds) - 1, *minor_scaled.shape), np.nan, dtype=dtype)
    data_partial = np.zeros(len(bounds) - 1)
    n_fallback = _kernels.update_shapes(
        *_engine_arrays(X), np.asarray(bounds, dtype=np.int64), major_scaled, major_logmax,
        *_side(major_shape, np.exp(digamma(major_shape) - major_elog), dtype),
        minor_scaled, minor_logmax,
        *_side(minor_shape, np.exp(digamma(minor_shape) - minor_elog), dtype),
        tiny, block_rows, major_stat, minor_partial, data_partial,
    )  # fmt: skip
    coo = X.tocoo()
    maxima = coo.data * (major_logmax[coo.row] + minor_logmax[coo.col])
    for part in range(len(bounds) - 1):
        data_partial[part] += maxima[(coo.row >= bounds[part]) & (coo.row < bounds[part + 1])].sum()
    return major_stat, minor_partial, data_partial, n_fallback


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("underflow", [False, True])
def test_local_rows_pass_matches_dense_responsibilities_row_by_row(dtype, underflow):
    """`local_rows_pass` over some rows, compacted and in another order: each row's
    ``sum_j x phi`` and ``sum_j x log sum_l exp(E[log z] + E[log w])`` from dense
    responsibilities; with ``underflow`` some rows' products underflow on every component
    (the log-space path)."""
    rng = np.random.default_rng(4)
    X = _csr(rng, 12, 9, 0.6)
    X.data = X.data.astype(np.float32)  # whole counts: stored so by the engine
    k = 5
    row_elog, col_elog = rng.normal(0.0, 1.0, (12, k)), rng.normal(0.0, 1.0, (9, k))
    if underflow:  # rows 3 and 7 peaked where the columns are not
        row_elog[[3, 7]] = np.where(np.arange(k) == 0, 0.0, -900.0)
        col_elog[:, 0] = -900.0
    rows = np.array([7, 0, 3, 11, 1, 5])
    row_scaled, row_logmax = _scaled(row_elog[rows].astype(dtype))
    col_scaled, col_logmax = _scaled(col_elog.astype(dtype))
    row_shape = np.where(row_elog[rows] < -100, 1e-3, 2.0).astype(dtype)
    col_shape = np.where(col_elog < -100, 1e-3, 2.0).astype(dtype)
    row_rate = np.exp(digamma(row_shape.astype(np.float64)) - row_elog[rows])
    col_rate = np.exp(digamma(col_shape.astype(np.float64)) - col_elog)
    statistic, data = np.full((len(rows), k), np.nan), np.full(len(rows), np.nan)
    _kernels.local_rows_pass(
        *_engine_arrays(X), rows, row_scaled, row_logmax, *_side(row_shape, row_rate, dtype),
        col_scaled, col_logmax, *_side(col_shape, col_rate, dtype),
        1e-200 if dtype == np.float64 else 1e-30, statistic, data,
    )  # fmt: skip
    tolerance = 1e-12 if dtype == np.float64 else 2e-5
    for q, row in enumerate(rows):
        cols, counts = X[[row]].indices, X[[row]].data
        log_rho = row_elog[row] + col_elog[cols]
        phi = np.exp(log_rho - logsumexp(log_rho, axis=1, keepdims=True))
        np.testing.assert_allclose(statistic[q], counts @ phi, rtol=tolerance, atol=1e-12)
        expected = counts @ logsumexp(log_rho, axis=1)
        np.testing.assert_allclose(data[q], expected, rtol=tolerance, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_passes_read_rates_of_one_row_as_every_rows(dtype):
    """Rates per component (the fixed prior's) reach the passes as one row
    (`_model.side_moments`, `rows_or_row`), not as a broadcast view, which had Numba
    compile the passes a second time for its layout: the log-space path (every product
    underflows here) reads that row for every row, and both passes give the bits of the
    same rates written out row by row."""
    from vbsnmf import _model

    rng = np.random.default_rng(8)
    X = sp.csr_array(_csr(rng, 10, 6, 0.7))
    k = 4
    # each row's mass on one component, each column's on another: products underflow
    row_shape = np.where(np.arange(k) == np.arange(10)[:, None] % k, 5.0, 1e-3).astype(dtype)
    col_shape = np.where(np.arange(k) == (np.arange(6)[:, None] + 1) % k, 5.0, 1e-3)
    col_shape = col_shape.astype(dtype)
    row_rate, col_rate = rng.uniform(0.5, 2.0, k), rng.uniform(0.5, 2.0, k)
    outputs = []
    for rates in ((row_rate, col_rate), (np.tile(row_rate, (10, 1)), np.tile(col_rate, (6, 1)))):
        row_moments = _model.side_moments(row_shape, rates[0].astype(dtype))
        col_moments = _model.side_moments(col_shape, rates[1].astype(dtype))
        assert row_moments[3].shape[0] == (1 if rates[0].ndim == 1 else 10)
        statistic = np.empty((10, k))
        minor_partial = np.empty((1, *col_moments[0].shape), dtype=dtype)
        data_partial = np.zeros(1)
        n_fallback = _kernels.update_shapes(
            *_engine_arrays(X), np.array([0, 10]), *row_moments, *col_moments,
            _model._TINY[np.dtype(dtype)], 64, statistic, minor_partial, data_partial,
        )  # fmt: skip
        assert n_fallback > X.nnz // 2  # all but where a row and a column share a component
        rows = np.array([6, 0, 3])
        local_rate = rates[0] if rates[0].ndim == 1 else rates[0][rows]
        local_moments = _model.side_moments(row_shape[rows], local_rate.astype(dtype))
        local_statistic, local_data = np.empty((3, k)), np.empty(3)
        _kernels.local_rows_pass(
            *_engine_arrays(X), rows, *local_moments, *col_moments,
            _model._TINY[np.dtype(dtype)], local_statistic, local_data,
        )  # fmt: skip
        outputs.append((statistic, minor_partial, data_partial, local_statistic, local_data))
    for one_row, every_row in zip(*outputs):
        np.testing.assert_array_equal(one_row, every_row)
    assert np.isfinite(outputs[0][2]).all() and outputs[0][0].sum() > 0


def test_both_priors_run_the_pass_compiled_for_one_layout_of_rates():
    """A fit under the fixed prior and one under the learned prior call the pass with the
    same types (the engine's copy of the same counts, float64 tables): the rates as
    `rows_or_row` gives them, C-contiguous either way. A broadcast view of the fixed
    prior's rates per component was another layout, and the pass was compiled again for
    it (about 6 s)."""
    from vbsnmf._data import as_count_data

    X = sp.random_array((40, 25), density=0.4, rng=6, data_sampler=lambda size: np.ones(size))
    for prior in ("gamma", "hierarchical"):
        with pytest.warns(ConvergenceWarning):
            VBNMF(2, max_iter=2, prior=prior, random_state=0).fit(X)
    data = as_count_data(X)
    arrays = tuple(numba.typeof(a) for a in (data.indptr, data.indices, data.counts))
    layouts = {
        (signature[7], signature[11])
        for signature in _kernels.update_shapes.signatures
        if tuple(signature[:3]) == arrays and signature[4].dtype == numba.types.float64
    }
    assert len(layouts) == 1, layouts


def test_local_row_terms_and_row_log_factorials_match_scipy():
    """Each row's ``-sum_l (E[z_il] m_l + KL)`` with a prior rate per row and its expected
    log, and each CSR row's ``sum lgamma(x + 1)``."""
    rng = np.random.default_rng(5)
    shape, rate = rng.gamma(2.0, 1.0, (6, 4)) + 0.05, rng.gamma(2.0, 1.0, (6, 4)) + 0.05
    prior_shape, prior_rate = rng.uniform(0.2, 2.0, 4), rng.uniform(0.5, 2.0, 6)
    log_prior_rate = np.log(prior_rate) - rng.uniform(0.0, 0.3, 6)  # E[log xi] < log E[xi]
    mean_sum = rng.uniform(1.0, 30.0, 4)
    out = np.full(6, np.nan)
    _kernels.local_row_terms(shape, rate, prior_shape, prior_rate, log_prior_rate, mean_sum, out)
    kl = (
        (shape - prior_shape) * digamma(shape)
        - gammaln(shape)
        + gammaln(prior_shape)
        + prior_shape * (np.log(rate) - log_prior_rate[:, None])
        + shape * (prior_rate[:, None] - rate) / rate
    )
    np.testing.assert_allclose(out, -((shape / rate) @ mean_sum + kl.sum(axis=1)), rtol=1e-12)
    X = _csr(rng, 7, 5, 0.7, max_count=40)
    factorials = np.full(7, np.nan)
    _kernels.row_log_factorials(X.indptr, X.data, factorials)
    expected = [gammaln(X[[i]].data + 1.0).sum() for i in range(7)]
    np.testing.assert_allclose(factorials, expected, rtol=1e-13)


@pytest.mark.parametrize("n_parts", [1, 3])
@pytest.mark.parametrize("block_rows", [1, 2, 64])
@pytest.mark.parametrize("k", [3, 9])
def test_update_shapes_matches_dense_responsibilities(n_parts, block_rows, k):
    """K=3 pads to one block of four lanes, K=9 to eight lanes and a block of four."""
    rng = np.random.default_rng(0)
    X = _csr(rng, 11, 7, 0.5)
    major_elog = rng.normal(0.0, 1.0, (11, k))
    minor_elog = rng.normal(0.0, 1.0, (7, k))
    bounds = [0, 4, 9, 11] if n_parts == 3 else [0, 11]
    major_stat, minor_partial, data_partial, n_fallback = _pass(
        X, bounds, major_elog, minor_elog, block_rows, 1e-200
    )
    rows, cols = X.nonzero()
    counts = np.asarray(X[rows, cols]).ravel()
    log_rho = major_elog[rows] + minor_elog[cols]
    weighted = counts[:, None] * np.exp(log_rho - logsumexp(log_rho, axis=1, keepdims=True))
    expected_major, expected_minor = np.zeros((11, k)), np.zeros((7, k))
    np.add.at(expected_major, rows, weighted)
    np.add.at(expected_minor, cols, weighted)
    np.testing.assert_allclose(major_stat, expected_major, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(minor_partial.sum(axis=0)[:, :k], expected_minor, rtol=1e-12)
    assert np.all(minor_partial[:, :, k:] == 0)  # the padding stays zero
    data_term = np.sum(counts * logsumexp(log_rho, axis=1))
    np.testing.assert_allclose(data_partial.sum(), data_term, rtol=1e-12)
    assert n_fallback == 0


@njit
def _dot_add_scaled_each(major, minor, rows, cols, xs, tiny, totals, row_acc, minor_acc):
    for n in range(rows.shape[0]):
        totals[n] = _kernels.row_dot_add_scaled(
            major, rows[n], minor, cols[n], xs[n], tiny, row_acc, minor_acc
        )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [3, 8, 13, 17, 40, 100, 300])
def test_row_dot_add_scaled_is_plain_ieee_arithmetic(dtype, k):
    """The pass's primitive against numpy in its stated order, bit for bit: products in
    the rows' dtype, lane sums across SIMD blocks, the lanes in a fixed tree, the scale
    ``x / total`` rounded once to the dtype (x a float32 or not), the scaled products added
    to both rows; rows
    of one to 16 SIMD registers (held in registers), of 17 to 64 (in a buffer) and of
    more (read twice). A total at most ``tiny`` adds nothing."""
    rng = np.random.default_rng(31)
    lanes = _kernels.simd_width(dtype)
    major = _kernels.pad_components(rng.random((4, k)).astype(dtype))
    minor = _kernels.pad_components(rng.random((6, k)).astype(dtype))
    rows, cols = rng.integers(0, 4, 40), rng.integers(0, 6, 40)
    xs = rng.integers(1, 30, 40).astype(np.float64)
    xs[::7] += 0.1  # not a float32: float32 rows divide these in float64
    xs[3] = 2.0**25 + 1.0
    tiny = float(np.quantile([np.dot(major[i], minor[j]) for i, j in zip(rows, cols)], 0.2))
    totals = np.empty(40, dtype)
    row_acc, minor_acc = np.zeros(major.shape[1], dtype), np.zeros(minor.shape, dtype)
    _dot_add_scaled_each(major, minor, rows, cols, xs, tiny, totals, row_acc, minor_acc)
    expected_row, expected_minor = np.zeros_like(row_acc), np.zeros_like(minor_acc)
    skipped = 0
    for n, (i, j) in enumerate(zip(rows, cols)):
        products = major[i] * minor[j]
        lane_sums = np.zeros(lanes, dtype)
        for start in range(0, products.size, lanes):
            lane_sums = lane_sums + products[start : start + lanes]
        terms = list(lane_sums)
        while len(terms) > 1:
            terms = [terms[q] + terms[q + 1] for q in range(0, len(terms), 2)]
        assert totals[n] == terms[0]
        if float(terms[0]) <= tiny:
            skipped += 1
            continue
        contribution = products * dtype(xs[n] / float(terms[0]))
        expected_row += contribution
        expected_minor[j] += contribution
    assert 0 < skipped < 40
    np.testing.assert_array_equal(row_acc, expected_row)
    np.testing.assert_array_equal(minor_acc, expected_minor)


def test_update_shapes_float32_tables_and_counts():
    """float32 tables (eight lanes) and float32 counts: float32's precision, float64
    outputs."""
    rng = np.random.default_rng(4)
    X = _csr(rng, 30, 20, 0.4, max_count=50)
    X.data = X.data.astype(np.float32)
    major_elog = rng.normal(0.0, 1.0, (30, 5))
    minor_elog = rng.normal(0.0, 1.0, (20, 5))
    got = _pass(X, [0, 13, 30], major_elog, minor_elog, 4, 1e-30, np.float32)
    X64 = X.astype(np.float64)
    expected = _pass(X64, [0, 13, 30], major_elog, minor_elog, 4, 1e-200)
    assert got[0].dtype == np.float64 and got[1].dtype == np.float32
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1].sum(axis=0)[:, :5], expected[1].sum(axis=0)[:, :5], rtol=1e-5)
    np.testing.assert_allclose(got[2].sum(), expected[2].sum(), rtol=1e-6)


def test_update_shapes_falls_back_to_log_sum_exp():
    """Rows peaked on different components: every product underflows, the log-space path
    gives the exact responsibilities and counts each such nonzero."""
    major_elog = np.array([[0.0, -800.0], [-800.0, 0.0]])
    minor_elog = np.array([[-800.0, 0.0], [0.0, -800.0]])
    X = sp.csr_matrix(np.array([[2.0, 0.0], [0.0, 3.0]]))
    major_stat, _, data_partial, n_fallback = _pass(X, [0, 2], major_elog, minor_elog, 8, 1e-200)
    assert n_fallback == 2
    np.testing.assert_allclose(major_stat, [[1.0, 1.0], [1.5, 1.5]], rtol=1e-12)
    expected = 2 * logsumexp([-800.0, -800.0]) + 3 * logsumexp([-800.0, -800.0])
    np.testing.assert_allclose(data_partial[0], expected, rtol=1e-12)


def test_weighted_log_sum_matches_numpy_to_an_ulp():
    """Every binade from 1e-300 to 1e300, mantissas on both sides of sqrt(2), and counts
    that leave one to three lanes of the last block."""
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [np.logspace(-300, 300, 5_001), rng.uniform(0.5, 2.0, 5_000), [1.0, 2.0, np.sqrt(2.0)]]
    )
    size = _kernels.LOG_BUFFER
    scratch, exponent = np.empty(size), np.empty(size)
    for value in values[::7]:  # one at a time: the log itself to an ulp
        buffer = np.array([value] + [1.0] * (size - 1))
        got = _kernels.weighted_log_sum(buffer, np.ones(size), 1, scratch, exponent)
        assert abs(got - np.log(value)) <= np.spacing(abs(np.log(value))) or got == np.log(value)
    for count in (size, size - 1, size - 2, size - 3, 5, 0):
        chunk = values[:count].copy()
        weights = rng.integers(1, 9, count).astype(np.float64)
        buffer, weight_buffer = np.ones(size), np.zeros(size)
        buffer[:count], weight_buffer[:count] = chunk, weights
        got = _kernels.weighted_log_sum(buffer, weight_buffer, count, scratch, exponent)
        np.testing.assert_allclose(got, np.sum(weights * np.log(chunk)), rtol=1e-14, atol=1e-12)


def test_buffer_exps_matches_numpy_to_an_ulp():
    """The whole range of float64's exp: results to an ulp where normal, libm's subnormals
    (to the last one), zeros and infinities at the ends, NaN kept, in buffers whose
    lengths leave one to three lanes of the last block."""
    rng = np.random.default_rng(17)
    values = np.concatenate(
        [
            rng.uniform(-750.0, 712.0, 20_000),
            rng.uniform(-1.0, 1.0, 2_000),
            rng.normal(0.0, 1e-10, 500),
            [0.0, -0.0, np.nan, np.inf, -np.inf, 709.78, 709.79, -708.4, -745.13, -745.14],
        ]
    )
    with np.errstate(over="ignore"):
        expected = np.exp(values)
    size = _kernels.LOG_BUFFER
    out, low, high = np.empty(size), np.empty(size), np.empty(size)
    got = np.empty_like(values)
    for first in range(0, values.size, size - 3):
        count = min(size - 3, values.size - first)
        buffer = values[first : first + count].copy()
        _kernels.buffer_exps(buffer, count, out, low, high)
        got[first : first + count] = out[:count]
    normal = np.isfinite(expected) & (expected >= np.finfo(np.float64).tiny)
    assert np.all(np.abs(got[normal] - expected[normal]) <= np.spacing(expected[normal]))
    tail = ~normal & np.isfinite(expected)  # subnormals and zeros
    assert np.all(np.abs(got[tail] - expected[tail]) <= 5e-324) and tail.sum() > 500
    infinite = np.isinf(expected)
    np.testing.assert_array_equal(got[infinite], expected[infinite])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))


def test_checked_logs_to_an_ulp_and_libm_for_special_values():
    """Normal values by the vectorised log, to an ulp; a buffer holding a zero, a
    subnormal, inf or NaN entirely by libm's, so those come out as numpy's."""
    size = _kernels.LOG_BUFFER
    logs, scratch = np.empty(size), np.empty(size)
    normal = np.logspace(-300, 300, size)
    _kernels.checked_logs(normal.copy(), size, logs, scratch)
    assert np.all(np.abs(logs - np.log(normal)) <= np.spacing(np.abs(np.log(normal))))
    for special in (0.0, 5e-324, 1e-310, np.inf, np.nan):
        values = normal.copy()
        values[size // 2] = special
        _kernels.checked_logs(values, size, logs, scratch)
        with np.errstate(divide="ignore"):
            np.testing.assert_array_equal(logs, np.log(values))


@pytest.mark.parametrize("n", [5, _kernels.SQUAREM_BLOCK + 7, 9 * _kernels.SQUAREM_BLOCK + 11])
def test_squarem_kernels_match_numpy(n):
    """SQUAREM's step sums and extrapolation against numpy's logs, arrays in one block, in
    two, and over the size that runs their blocks in parallel (same blocks, same sums as
    one thread would make); an entry driven to 0 is counted."""
    rng = np.random.default_rng(21)
    theta0 = rng.gamma(2.0, 1.0, n)
    theta1 = theta0 * rng.uniform(0.9, 1.2, n)
    theta2 = theta1 * rng.uniform(0.9, 1.2, n)
    r = np.log(theta1) - np.log(theta0)
    v = np.log(theta2) - 2 * np.log(theta1) + np.log(theta0)
    r2, v2 = _kernels.squarem_sums(theta0, theta1, theta2)
    np.testing.assert_allclose([r2, v2], [np.sum(r * r), np.sum(v * v)], rtol=1e-12)
    out = np.empty(n)
    assert _kernels.squarem_extrapolate(theta0, theta1, theta2, 2.5, out) == 0
    np.testing.assert_allclose(out, np.exp(np.log(theta0) + 5.0 * r + 6.25 * v), rtol=1e-13)
    partial = np.empty((_kernels._squarem_blocks(n), 2))
    _kernels._squarem_sums_serial(theta0, theta1, theta2, partial)
    assert (r2, v2) == (partial[:, 0].sum(), partial[:, 1].sum())
    theta2[n // 2] = 1e-300  # its extrapolation underflows to 0
    assert _kernels.squarem_extrapolate(theta0, theta1, theta2, 4.0, out) == 1


def test_weighted_log_sum_float32_logs_to_an_ulp():
    """float32 normalisers: their logs in float32 within one float32 ulp of the exact log
    (every binade of the normal floats, mantissas on both sides of sqrt(2)), summed with
    float64 weights in float64."""
    rng = np.random.default_rng(17)
    values = np.concatenate(
        [np.logspace(-37, 38, 20_000), rng.uniform(0.5, 2.0, 20_000), [1.0, 2.0, np.sqrt(2.0)]]
    ).astype(np.float32)
    size = _kernels.LOG_BUFFER
    scratch, exponent = np.empty(size, np.float32), np.empty(size, np.float32)
    exact = np.log(values.astype(np.float64))
    for first in range(0, values.size - size, size):
        chunk = values[first : first + size]
        _kernels.weighted_log_sum(chunk, np.ones(size), size, scratch, exponent)
        expected = exact[first : first + size]
        ulp = np.spacing(np.abs(expected).astype(np.float32)).astype(np.float64)
        assert np.all(np.abs(scratch - expected) <= ulp)
    weights = rng.integers(1, 9, size).astype(np.float64)
    got = _kernels.weighted_log_sum(values[:size], weights, size - 3, scratch, exponent)
    expected = np.sum(weights[: size - 3] * exact[: size - 3])
    np.testing.assert_allclose(got, expected, rtol=1e-7 * np.abs(exact[:size]).max())


def test_sum_parts_sums_in_float64_up_to_k():
    partial = np.random.default_rng(2).random((3, 5, 8)).astype(np.float32)
    out = np.full((5, 6), np.nan)
    _kernels.sum_parts(partial, out)
    np.testing.assert_allclose(out, partial.astype(np.float64).sum(axis=0)[:, :6], rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sum_parts_adds_the_parts_in_order_in_every_block(dtype):
    """Rows in several `SIDE_BLOCK_ROWS` blocks, run in parallel: every entry is the parts
    added one after another, bit for bit what numpy's in-order additions give."""
    n = 2 * _kernels.SIDE_BLOCK_ROWS + 37
    partial = np.random.default_rng(3).gamma(0.5, 3.0, (3, n, 12)).astype(dtype)
    out = np.full((n, 10), np.nan)
    _kernels.sum_parts(partial, out)
    expected = np.zeros((n, 10))
    for slab in partial:
        expected += slab[:, :10].astype(np.float64)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_divide_in_place_gives_numpys_quotients(dtype):
    values = np.random.default_rng(4).gamma(2.0, 50.0, (_kernels.SIDE_BLOCK_ROWS + 3, 7))
    values = values.astype(dtype)
    expected = values / 1.37  # numpy: a float32 array over a Python float stays float32
    _kernels.divide_in_place(values, values.dtype.type(1.37))
    assert expected.dtype == dtype
    np.testing.assert_array_equal(values, expected)


def test_digamma_matches_scipy():
    x = np.concatenate(
        [np.logspace(-8, 8, 20_001), np.linspace(0.5, 20.0, 10_001), np.arange(1.0, 30.0)]
    )
    psi = np.array([_kernels.digamma(v) for v in x])
    assert np.max(np.abs(psi - digamma(x)) / np.maximum(1.0, np.abs(digamma(x)))) < 1e-14


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("per_entry_rate", [False, True])
def test_gamma_moments_match_numpy(dtype, per_entry_rate):
    """Shapes from 1e-3 to tens (both sides of the recurrence's threshold), rates per
    component (one row for every row, as `rows_or_row` gives them) or per entry."""
    rng = np.random.default_rng(3)
    n, k = 2 * _kernels.MOMENT_BLOCK_ROWS + 9, 5
    shape = (rng.gamma(1.0, 3.0, (n, k)) + 1e-3).astype(dtype)
    rate = rng.uniform(0.1, 5.0, (n, k) if per_entry_rate else k)
    width = _kernels.padded_width(k, dtype)
    logmax = np.empty(n)
    scaled = np.full((n, width), np.nan, dtype)
    rates = _kernels.rows_or_row(rate, shape.shape)
    _kernels.gamma_moments(_kernels.read_only(shape), rates, scaled, logmax)
    elog = digamma(shape.astype(np.float64)) - np.log(rate)
    np.testing.assert_allclose(logmax, elog.max(axis=1), rtol=1e-14, atol=1e-14)
    rtol = 1e-13 if dtype == np.float64 else 1e-6
    expected = np.exp(elog - elog.max(1)[:, None])  # float32 underflows below its tiny
    np.testing.assert_allclose(scaled[:, :k], expected, rtol=rtol, atol=np.finfo(dtype).tiny)
    assert np.all(scaled[:, k:] == 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [3, 10, 130])
def test_rates_per_component_as_one_row_give_the_same_bits(dtype, k):
    """A rate per component handed over as one row (`rows_or_row`), its logs taken once a
    block, gives the tables, mean sums, KL and sums of E[log z] of the same rates written
    out row by row, whose logs are taken per entry, bit for bit (blocks and partial blocks
    and chunks; one rate of 1e-300 sends its row of logs to libm). So do the prior's
    arrays, one row or n rows."""
    rng = np.random.default_rng(12)
    n = _kernels.TERMS_BLOCK_ROWS + 2 * _kernels.MOMENT_BLOCK_ROWS + 7
    shape = _kernels.read_only((rng.gamma(1.0, 3.0, (n, k)) + 1e-3).astype(dtype))
    for rate in (rng.uniform(0.1, 5.0, k), np.r_[1e-300, rng.uniform(0.1, 5.0, k - 1)]):
        every_row = _kernels.rows_or_row(np.tile(rate, (n, 1)), (n, k))
        row = _kernels.rows_or_row(rate, (n, k))
        assert row.shape == (1, k) and every_row.shape == (n, k)
        tables = []
        for rates in (every_row, row):
            scaled = np.empty((n, _kernels.padded_width(k, dtype)), dtype)
            logmax = np.empty(n)
            _kernels.gamma_moments(shape, rates, scaled, logmax)
            tables.append((scaled, logmax))
        for got, expected in zip(tables[1], tables[0]):
            np.testing.assert_array_equal(got, expected)
        arguments = _kernels._moments_terms_arguments(shape, rate, 0.7, 1.3)
        assert arguments[1].shape == (1, k) and arguments[2].shape == (1, k)
        prior = (_kernels.rows_or_row(np.tile(a, (n, 1)), (n, k)) for a in arguments[2:6])
        by_rows = (
            shape, every_row, *prior, arguments[6], *(np.empty_like(a) for a in arguments[7:]),
        )  # fmt: skip
        _kernels.gamma_terms(*arguments)
        _kernels.gamma_terms(*by_rows)
        for got, expected in zip(arguments[7:], by_rows[7:]):
            np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(arguments[-2], tables[0][0])  # the same tables
        summed = []
        for rates in (every_row, row):
            partial = np.empty((-(-n // _kernels.TERMS_BLOCK_ROWS), k))
            _kernels.expected_log_terms(shape, rates, _kernels.TERMS_BLOCK_ROWS, partial)
            summed.append(partial)
        np.testing.assert_array_equal(summed[1], summed[0])


def test_gamma_moments_log_space_rows():
    """Shapes near 1e-4: exp(E[log]) underflows float64, the row is redone in log space."""
    shape = np.array([[1e-4, 2e-4, 5.0], [1e-4, 1e-4, 1e-4]])
    rate = np.array([1.0, 2.0, 1e300])
    scaled, logmax = np.empty((2, 4)), np.empty(2)
    _kernels.gamma_moments(
        _kernels.read_only(shape), _kernels.rows_or_row(rate, shape.shape), scaled, logmax
    )
    elog = digamma(shape) - np.log(rate)
    assert elog.max() < np.log(1e-290)  # the regime of the test
    np.testing.assert_allclose(logmax, elog.max(axis=1), rtol=1e-14)
    np.testing.assert_allclose(scaled[:, :3], np.exp(elog - elog.max(1)[:, None]), rtol=1e-12)


def test_reference_gamma_entropy_is_scipys():
    """The tests' reference KL takes the Gamma entropy in closed form: it is scipy.stats'
    over the shapes the kernels' tests draw and beyond (1e-4 .. 1e3, rates 1e-3 .. 1e300;
    past 1e5 the two part by 1e-10, scipy's series for large shapes against cancellation)."""
    rng = np.random.default_rng(2)
    shape = np.concatenate([10.0 ** rng.uniform(-4, 3, 400), [1e-4, 1e-3, 0.5, 1.0, 8.0, 1e3]])
    rate = 10.0 ** rng.uniform(-3, 3, shape.shape)
    rate[:3] = 1e300
    expected = stats.gamma(a=shape, scale=1.0 / rate).entropy()
    np.testing.assert_allclose(
        reference_cavi.gamma_entropy(shape, rate), expected, rtol=1e-12, atol=1e-11
    )


@pytest.mark.parametrize("per_entry", [False, True])
def test_gamma_sums_match_numpy(per_entry):
    """Mean sums and the Gamma KL over blocks of rows (three blocks and a partial one), with
    the rate and the prior per component or per entry."""
    rng = np.random.default_rng(5)
    n, k = 3 * _kernels.TERMS_BLOCK_ROWS + 17, 4
    shape = rng.gamma(1.0, 3.0, (n, k)) + 1e-3
    rate = rng.uniform(0.1, 5.0, (n, k) if per_entry else k)
    prior_shape = rng.uniform(0.1, 3.0, (n, 1)) if per_entry else 0.7
    prior_rate = rng.uniform(0.1, 3.0, (n, k)) if per_entry else 1.3
    mean_sum, kl = _kernels.gamma_sums(shape, rate, prior_shape, prior_rate)
    expected_kl = reference_cavi.gamma_kl(shape, rate, prior_shape, prior_rate)
    np.testing.assert_allclose(mean_sum, (shape / rate).sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(kl, expected_kl, rtol=1e-12)
    assert mean_sum.dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("per_entry", [False, True])
def test_gamma_side_and_mean_sums_match_numpy(dtype, per_entry):
    """The fixed prior's side step: shapes ``a + statistic`` stored in the side's dtype (as
    numpy's sum and cast), and ``sum_i shape / rate`` of the stored shapes in float64, with
    the rate per component (a broadcast view) or per entry; `mean_sums` the same sums."""
    rng = np.random.default_rng(8)
    n, k = 301, 7
    statistic = rng.gamma(0.5, 40.0, (n, k))
    rate = rng.uniform(10.0, 500.0, (n, k) if per_entry else k).astype(dtype)
    rates = np.broadcast_to(rate, (n, k))
    shape, mean_sum = np.empty((n, k), dtype), np.empty(k)
    _kernels.gamma_side(statistic, 0.3, rates, shape, mean_sum)
    expected = (0.3 + statistic).astype(dtype)
    np.testing.assert_array_equal(shape, expected)
    reference = (expected.astype(np.float64) / rates.astype(np.float64)).sum(axis=0)
    np.testing.assert_allclose(mean_sum, reference, rtol=1e-13)
    again = np.full(k, np.nan)
    _kernels.mean_sums(shape, rates, again)
    np.testing.assert_array_equal(again, mean_sum)
    # as `_model` hands them over: one row for a rate per component, read for every row
    compact = _kernels.rows_or_row(rate, (n, k))
    assert compact.shape == ((n, k) if per_entry else (1, k)) and compact.flags.c_contiguous
    shape_again, from_compact = np.empty((n, k), dtype), np.full(k, np.nan)
    _kernels.gamma_side(statistic, 0.3, compact, shape_again, from_compact)
    np.testing.assert_array_equal(shape_again, shape)
    np.testing.assert_array_equal(from_compact, mean_sum)
    _kernels.mean_sums(shape, compact, again)
    np.testing.assert_array_equal(again, mean_sum)


def test_learned_side_sums_stored_float32_values_in_float64():
    """`learned_side` with float32 q: shapes and rates stored in float32, their quotients
    taken and summed in float64 (Numba's ``float()`` of a float32 does not widen it)."""
    rng = np.random.default_rng(9)
    n, k = 211, 6
    statistic = rng.gamma(0.5, 40.0, (n, k))
    factor_shape, scale_mean = rng.uniform(0.1, 1.0, k), rng.uniform(0.5, 2.0, n)
    other_row = rng.uniform(10.0, 500.0, k)
    other = _kernels.rows_or_row(np.tile(other_row, (n, 1)), (n, k))  # n rows, as masked
    shape, rate = np.empty((n, k), np.float32), np.empty((n, k), np.float32)
    row_mean_sum, mean_sum, log_sum = np.empty(n), np.empty(k), np.empty(k)
    _kernels.learned_side(
        statistic, factor_shape, scale_mean, other, shape, rate, row_mean_sum, mean_sum, log_sum
    )
    np.testing.assert_array_equal(shape, (factor_shape + statistic).astype(np.float32))
    np.testing.assert_array_equal(rate, (scale_mean[:, None] + other).astype(np.float32))
    shape64, rate64 = shape.astype(np.float64), rate.astype(np.float64)
    quotients = shape64 / rate64
    np.testing.assert_allclose(mean_sum, quotients.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(row_mean_sum, quotients.sum(axis=1), rtol=1e-13)
    expected_logs = (digamma(shape64) - np.log(rate64)).sum(axis=0)  # of the stored values
    np.testing.assert_allclose(log_sum, expected_logs, rtol=1e-12)
    # the other side's sums as one row (`rows_or_row`), read for every row: the same bits
    outputs = np.empty_like(shape), np.empty_like(rate), np.empty(n), np.empty(k), np.empty(k)
    one_row = _kernels.rows_or_row(other_row, (n, k), np.float64)
    assert one_row.shape == (1, k)
    _kernels.learned_side(statistic, factor_shape, scale_mean, one_row, *outputs)
    for again, first in zip(outputs, (shape, rate, row_mean_sum, mean_sum, log_sum)):
        np.testing.assert_array_equal(again, first)


def test_learned_side_sums_its_blocks_in_order_whatever_the_threads():
    """Rows in blocks of `SIDE_BLOCK_ROWS` in parallel: ``mean_sum`` is each block's rows
    summed in order, then the blocks in order (a plain loop here), on one thread or two."""
    rng = np.random.default_rng(10)
    n, k = 2 * _kernels.SIDE_BLOCK_ROWS + 45, 5
    statistic = rng.gamma(0.5, 40.0, (n, k))
    factor_shape, scale_mean = rng.uniform(0.1, 1.0, k), rng.uniform(0.5, 2.0, n)
    other = _kernels.rows_or_row(rng.uniform(10.0, 500.0, k), (n, k))
    quotients = (factor_shape + statistic) / (scale_mean[:, None] + other)
    expected = np.zeros(k)
    for first in range(0, n, _kernels.SIDE_BLOCK_ROWS):
        block_sum = np.zeros(k)
        for row in quotients[first : first + _kernels.SIDE_BLOCK_ROWS]:
            block_sum += row
        expected += block_sum
    threads = numba.get_num_threads()
    results = []
    try:
        for n_threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(n_threads)
            outputs = np.empty((n, k)), np.empty((n, k)), np.empty(n), np.empty(k), np.empty(k)
            _kernels.learned_side(statistic, factor_shape, scale_mean, other, *outputs)
            results.append(outputs)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(results[0][3], expected)
    for again, first in zip(results[1], results[0]):
        np.testing.assert_array_equal(again, first)
    # E[log z]'s sums: those `expected_log_sums` takes in its own pass (other blocks)
    shape, rate = results[0][:2]
    np.testing.assert_allclose(
        results[0][4], _kernels.expected_log_sums(shape, rate), rtol=1e-13, atol=0
    )
    # asked for no logs (an empty ``log_sum``): the rest bit for bit
    outputs = np.empty((n, k)), np.empty((n, k)), np.empty(n), np.empty(k), np.empty(0)
    _kernels.learned_side(statistic, factor_shape, scale_mean, other, *outputs)
    for again, first in zip(outputs[:4], results[0][:4]):
        np.testing.assert_array_equal(again, first)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_learned_side_takes_the_logs_of_a_single_row_it_just_stored(dtype):
    """One row: its rates, one row as `rows_or_row` gives a rate per component, have their
    logs taken once stored (not before)."""
    rng = np.random.default_rng(11)
    k = 37
    statistic = rng.gamma(0.5, 40.0, (1, k))
    factor_shape, scale_mean = rng.uniform(0.1, 1.0, k), rng.uniform(0.5, 2.0, 1)
    other = _kernels.rows_or_row(rng.uniform(10.0, 500.0, k), (1, k))
    shape, rate = np.full((1, k), np.nan, dtype), np.full((1, k), np.nan, dtype)
    log_sum = np.empty(k)
    _kernels.learned_side(
        statistic, factor_shape, scale_mean, other, shape, rate, np.empty(1), np.empty(k), log_sum
    )
    expected = digamma(shape.astype(np.float64)) - np.log(rate.astype(np.float64))
    np.testing.assert_allclose(log_sum, expected[0], rtol=1e-13)


def test_gamma_sums_expected_over_a_random_prior_rate():
    """With ``E[xi]`` for the prior's rate and ``E[log xi]`` for its log, the KL is the
    expected KL from Gamma(a_l, xi_i) over q(xi_i) = Gamma(u_i, v_i): the learned prior's
    q(z) term, against ``-E[log p(z | xi)] - H[q(z)]`` written out in numpy."""
    rng = np.random.default_rng(8)
    n, k = _kernels.TERMS_BLOCK_ROWS + 9, 3
    shape, rate = rng.gamma(1.0, 3.0, (n, k)) + 1e-2, rng.uniform(0.1, 5.0, (n, k))
    a = rng.uniform(0.2, 2.0, k)
    u, v = rng.uniform(0.5, 20.0, n), rng.uniform(0.5, 5.0, n)
    xi_mean, xi_log = u / v, digamma(u) - np.log(v)
    mean_sum, kl = _kernels.gamma_sums(shape, rate, a, xi_mean[:, None], xi_log[:, None])
    elog = digamma(shape) - np.log(rate)
    log_prior = a * xi_log[:, None] - gammaln(a) + (a - 1) * elog - xi_mean[:, None] * shape / rate
    entropy = shape - np.log(rate) + gammaln(shape) + (1 - shape) * digamma(shape)
    np.testing.assert_allclose(kl, -(log_prior + entropy).sum(), rtol=1e-12)
    np.testing.assert_allclose(mean_sum, (shape / rate).sum(axis=0), rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("per_entry", [False, True])
@pytest.mark.parametrize("k", [5, _kernels.LOG_BUFFER + 3])
def test_gamma_moments_sums_match_numpy(dtype, per_entry, k):
    """The fused kernel of an iteration's tables and ELBO terms against numpy: tables as
    `gamma_moments` (rows in the log-space regime included), sums as `gamma_sums`, over
    two blocks and a partial one, rates and prior per component or per entry; chunks of
    51 rows (K = 5, the last one partial) or of one row longer than the log buffer."""
    rng = np.random.default_rng(11)
    n = 2 * _kernels.TERMS_BLOCK_ROWS + 13
    shape = (rng.gamma(1.0, 3.0, (n, k)) + 1e-3).astype(dtype)
    shape[:2] = 1e-4  # exp(E[log]) below 1e-290 with the rate below: the log-space rows
    rate = rng.uniform(0.1, 5.0, (n, k) if per_entry else k)
    rate[:2] = 1e300
    prior_shape = rng.uniform(0.1, 3.0, (n, 1)) if per_entry else 0.7
    prior_rate = rng.uniform(0.1, 3.0, (n, k)) if per_entry else 1.3
    alpha = shape.astype(np.float64)
    elog = digamma(alpha) - np.log(rate)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    expected = np.exp(elog - elog.max(1)[:, None])
    expected_kl = reference_cavi.gamma_kl(alpha, rate, prior_shape, prior_rate)
    side = (shape, rate, prior_shape, prior_rate)
    for scaled, logmax, rates, mean_sum, kl in _kernels.gamma_moments_sums_of_sides(
        side, side
    ):  # the same q as rows and as columns: both places of the kernel
        np.testing.assert_allclose(logmax, elog.max(axis=1), rtol=1e-13, atol=1e-14)
        atol = np.finfo(dtype).tiny
        np.testing.assert_allclose(scaled[:, :k], expected, rtol=rtol, atol=atol)
        assert scaled.dtype == dtype and scaled.shape[1] == _kernels.padded_width(k, dtype)
        assert np.all(scaled[:, k:] == 0)
        # the rates as the pass reads them (`rows_or_row`): n rows, or one for every row
        assert rates.flags.c_contiguous and rates.shape == (n if per_entry else 1, k)
        full = shape.shape
        np.testing.assert_array_equal(np.broadcast_to(rates, full), np.broadcast_to(rate, full))
        np.testing.assert_allclose(mean_sum, (alpha / rate).sum(axis=0), rtol=1e-13)
        np.testing.assert_allclose(kl, expected_kl, rtol=1e-12)


def _learned_prior_side(rng, n_rows, k, dtype):
    """Arguments of `_kernels.gamma_sums` for one side of ``n_rows`` rows under the learned
    prior (rates and the prior's rate per row), two rows in the log-space regime."""
    shape = (rng.gamma(1.0, 3.0, (n_rows, k)) + 1e-3).astype(dtype)
    rate = rng.uniform(0.1, 5.0, (n_rows, k))
    shape[:2], rate[:2] = 1e-4, 1e300
    xi_mean = rng.uniform(0.1, 3.0, (n_rows, 1))
    return shape, rate, rng.uniform(0.1, 3.0, k), xi_mean, np.log(xi_mean) - 0.1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "n_rows, n_cols",
    [(2 * _kernels.TERMS_BLOCK_ROWS + 13, 700), (1, 3 * _kernels.TERMS_BLOCK_ROWS), (5, 1)],
)
def test_two_sided_kernels_equal_the_one_sided(dtype, n_rows, n_cols):
    """`gamma_terms_of_sides` gives exactly the per-side kernel's outputs (every block's
    sums, the tables, the logs taken), with sides of several blocks, under one block and
    of one row, in either place."""
    rng = np.random.default_rng(12)
    row_side = _learned_prior_side(rng, n_rows, 5, dtype)
    col_side = _learned_prior_side(rng, n_cols, 5, dtype)
    both = [_kernels._moments_terms_arguments(*side) for side in (row_side, col_side)]
    _kernels.gamma_terms_of_sides(*both)
    for side, fused in zip((row_side, col_side), both):
        alone = _kernels._moments_terms_arguments(*side)
        _kernels.gamma_terms(*alone)
        for got, expected in zip(fused, alone):
            np.testing.assert_array_equal(got, expected, strict=True)


@pytest.mark.parametrize("per_entry", [False, True])
@pytest.mark.parametrize("rate_range", [(0.1, 5.0), (1e-250, 1e250)])
def test_expected_log_sums_match_scipy(per_entry, rate_range):
    """``sum_i digamma(shape) - log(rate)`` per component over three blocks and a partial
    one, shapes from 1e-3 (the recurrence) to 1e4 (the series alone), rates of every
    magnitude (the kernel takes ``log(z / rate)`` of the shifted shape ``z``)."""
    rng = np.random.default_rng(9)
    n, k = 3 * _kernels.TERMS_BLOCK_ROWS + 5, 4
    shape = np.exp(rng.uniform(np.log(1e-3), np.log(1e4), (n, k)))
    low, high = np.log(rate_range)
    rate = np.exp(rng.uniform(low, high, (n, k) if per_entry else k))
    got = _kernels.expected_log_sums(shape, rate)
    expected = (digamma(shape) - np.log(rate)).sum(axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got.dtype == np.float64 and got.shape == (k,)


def test_csr_is_canonical_matches_scipy():
    rng = np.random.default_rng(6)
    X = _csr(rng, 40, 30, 0.3)
    cases = {"canonical": X}
    unsorted = X.copy()
    unsorted.indices[unsorted.indptr[2] : unsorted.indptr[3]] = unsorted.indices[
        unsorted.indptr[2] : unsorted.indptr[3]
    ][::-1]
    cases["unsorted"] = unsorted
    duplicated = sp.csr_matrix(
        (np.ones(3), np.array([1, 1, 4]), np.array([0, 3] + [3] * 39)), shape=(40, 30)
    )
    cases["duplicate"] = duplicated
    zero = X.copy()
    zero.data[5] = 0.0
    cases["stored zero"] = zero
    for name, matrix in cases.items():
        expected = matrix.has_canonical_format and bool(np.all(matrix.data))
        got = _kernels.csr_is_canonical(matrix.indptr, matrix.indices, matrix.data)
        assert got == expected == (name == "canonical"), name


def test_log_factorial_sum_matches_gammaln():
    counts = np.random.default_rng(1).integers(1, 500, 10_001).astype(np.float64)
    for chunk in (1, 7, 1 << 16):
        got = _kernels.log_factorial_sum(counts, chunk)
        np.testing.assert_allclose(got, gammaln(counts + 1).sum(), rtol=1e-13)
    assert _kernels.log_factorial_sum(np.empty(0), 16) == 0.0


def test_pad_components_pads_with_zero_columns():
    table = np.arange(15.0).reshape(5, 3)
    padded = _kernels.pad_components(table)
    assert padded.shape == (5, 4) and padded.flags.c_contiguous  # four doubles
    np.testing.assert_array_equal(padded[:, :3], table)
    assert np.all(padded[:, 3:] == 0)
    assert _kernels.pad_components(table.astype(np.float32)).shape == (5, 8)  # eight floats
    aligned = np.ones((2, 8))
    assert _kernels.pad_components(aligned) is aligned  # nothing to do: no copy


def _tiled(X: sp.csr_matrix):
    """X (sorted CSR) in the column tiles of the classical kernels, built by the kernels."""
    n_tiles = _kernels.tile_count(X.shape[1])
    counts = np.empty((n_tiles, X.shape[0]), dtype=np.int64)
    _kernels.tile_run_lengths(X.indptr, X.indices, counts)
    indptr = np.zeros((n_tiles, X.shape[0] + 1), dtype=np.int64)
    indptr[:, 1:] = np.cumsum(counts, axis=None).reshape(n_tiles, -1)
    indptr[1:, 0] = indptr[:-1, -1]
    indices = np.empty_like(X.indices)
    data = np.empty_like(X.data)
    _kernels.tile_values(X.indptr, indptr, X.indices, indices)
    _kernels.tile_values(X.indptr, indptr, X.data, data)
    return indptr, indices, data


def test_tiles_hold_each_rows_entries_of_each_column_range():
    rng = np.random.default_rng(2)
    n_cols = 3 * _kernels.TILE_COLUMNS + 100
    X = sp.random(9, n_cols, density=0.01, random_state=rng, format="csr")
    X.sort_indices()
    indptr, indices, data = _tiled(X)
    assert indptr.shape == (4, 10)
    for t in range(4):
        low, high = t * _kernels.TILE_COLUMNS, (t + 1) * _kernels.TILE_COLUMNS
        for i in range(9):
            piece = slice(indptr[t, i], indptr[t, i + 1])
            row = X[i].toarray().ravel()
            wanted = np.flatnonzero(row[low:high] if t < 3 else row[low:]) + low
            np.testing.assert_array_equal(indices[piece], wanted)
            np.testing.assert_array_equal(data[piece], row[wanted])


@pytest.fixture(scope="module")
def wide_problem():
    rng = np.random.default_rng(3)
    X = sp.random(20, 2 * _kernels.TILE_COLUMNS + 700, density=0.02, random_state=rng)
    X = X.tocsr()
    X.sort_indices()
    W = rng.random((20, 4))
    H = rng.random((X.shape[1], 4))  # the column side, m x K
    return X, W, H, _tiled(X)


def test_classic_sparse_dot_is_x_times_the_table(wide_problem):
    X, _, H, (indptr, indices, data) = wide_problem
    out = np.empty((X.shape[0], H.shape[1]))
    _kernels.classic_sparse_dot(indptr, indices, data, H, out)
    np.testing.assert_allclose(out, X @ H, rtol=1e-12)


def test_classic_wh_at_nonzeros_is_the_product_at_each_entry(wide_problem):
    _, W, H, (indptr, indices, data) = wide_problem
    out = np.empty(data.shape[0])
    _kernels.classic_wh_at_nonzeros(indptr, indices, W, H, out)
    product = W @ H.T
    rows = np.concatenate([np.repeat(np.arange(20), np.diff(indptr[t])) for t in range(3)])
    np.testing.assert_allclose(out, product[rows, indices], rtol=1e-12)


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (1.0, 1.0), (0.5, 0.5), (2.0, -0.5)])
@pytest.mark.parametrize("pattern_only", [True, False])
def test_classic_ab_mu_terms_match_numpy(wide_problem, alpha, beta, pattern_only):
    _, W, H, (indptr, indices, data) = wide_problem
    k = W.shape[1]
    weights = np.random.default_rng(4).random(data.shape[0])
    numerator, denominator = np.empty((20, k)), np.empty((20, k))
    row_loss = np.empty(20)
    _kernels.classic_ab_mu_terms(
        indptr, indices, data, weights, W, H, alpha, beta, 1e-12, pattern_only, True,
        numerator, denominator, row_loss,
    )  # fmt: skip
    rows = np.concatenate([np.repeat(np.arange(20), np.diff(indptr[t])) for t in range(3)])
    q = np.maximum(np.einsum("nk,nk->n", W[rows], H[indices]), 1e-12)
    scale = weights * data**alpha * q ** (beta - 1.0)
    expected = np.zeros((20, k))
    np.add.at(expected, rows, scale[:, None] * H[indices])
    np.testing.assert_allclose(numerator, expected, rtol=1e-11)

    def divergence(p, q):
        total = alpha + beta
        if beta == 0.0:
            return (p**alpha * alpha * np.log(p / q) - p**alpha + q**alpha) / alpha**2
        return (alpha / total * p**total + beta / total * q**total - p**alpha * q**beta) / (
            alpha * beta
        )

    if pattern_only:
        expected_denominator = np.zeros((20, k))
        power = weights * q ** (alpha + beta - 1.0)
        np.add.at(expected_denominator, rows, power[:, None] * H[indices])
        np.testing.assert_allclose(denominator, expected_denominator, rtol=1e-11)
        losses = weights * divergence(data, q)
    else:  # d(x, q) - d(0, q), unweighted: the zeros are added in closed form by the caller
        losses = divergence(data, q) - q ** (alpha + beta) / (alpha * (alpha + beta))
    expected_loss = np.zeros(20)
    np.add.at(expected_loss, rows, losses)
    np.testing.assert_allclose(row_loss, expected_loss, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("gamma", [0.5, 1.5])
def test_classic_dense_power_pass_sums_every_entry(gamma):
    rng = np.random.default_rng(5)
    W, H = rng.random((6, 3)), rng.random((9, 3))  # H: the column side, m x K
    denominator, row_sums = np.empty((6, 3)), np.empty(6)
    _kernels.classic_dense_power_pass(W, H, gamma, 1e-12, denominator, row_sums)
    Q = W @ H.T
    np.testing.assert_allclose(row_sums, (Q ** (gamma + 1)).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(denominator, (Q**gamma) @ H, rtol=1e-12)
