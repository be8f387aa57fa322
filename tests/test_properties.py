"""Property-based tests of the engine (hypothesis): any small sparse count matrix.

The matrices are drawn as COO triplets (so duplicates occur and are summed), on shapes
from 1 x 1 up, with empty rows and columns, a single nonzero, all-zero matrices and
counts up to 1e9; K ranges from 1 to min(shape). Every fit must give finite, positive
parameters, a non-decreasing ELBO, shapes at least the prior shape, and shape statistics
that add up to the total count (the responsibilities of each nonzero sum to one).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import digamma, gammaln, logsumexp

import vbsnmf
from vbsnmf import _model
from vbsnmf._data import as_count_data

pytestmark = [
    pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::vbsnmf.NonCountWarning"),
]


def property_settings(max_examples: int):
    """Fixed examples (CI sees the same every run), no per-example deadline: Numba's
    thread launches make small fits' timing vary on a shared machine."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )


# Counts: mostly small, as in single-cell data, with some very large ones.
counts_strategy = st.one_of(
    st.integers(1, 20),
    st.integers(1, 10**9),
    st.sampled_from([1, 10**6, 10**9]),
)


@st.composite
def count_matrices(draw, max_side: int = 9, max_entries: int = 40):
    """(COO matrix with possible duplicates, K) with K in [1, min(shape)]."""
    n_rows = draw(st.integers(1, max_side))
    n_cols = draw(st.integers(1, max_side))
    n_entries = draw(st.integers(0, max_entries))
    rows = draw(st.lists(st.integers(0, n_rows - 1), min_size=n_entries, max_size=n_entries))
    cols = draw(st.lists(st.integers(0, n_cols - 1), min_size=n_entries, max_size=n_entries))
    counts = draw(st.lists(counts_strategy, min_size=n_entries, max_size=n_entries))
    matrix = sp.coo_array(
        (np.array(counts, dtype=np.float64), (np.array(rows, int), np.array(cols, int))),
        shape=(n_rows, n_cols),
    )
    smallest = min(n_rows, n_cols)
    n_components = draw(st.one_of(st.just(1), st.just(smallest), st.integers(1, smallest)))
    return matrix, n_components


def _dense_reference(matrix) -> np.ndarray:
    """Duplicates summed by plain numpy, independent of scipy's conversion."""
    dense = np.zeros(matrix.shape)
    np.add.at(dense, (matrix.row, matrix.col), matrix.data)
    return dense


def _assert_valid_fit(model, dense, prior_shape, prior_rate):
    for name in ("cell_shape_", "cell_rate_", "gene_shape_", "gene_rate_", "components_"):
        array = getattr(model, name)
        assert np.all(np.isfinite(array)), name
    assert np.all(model.cell_shape_ >= prior_shape)
    assert np.all(model.gene_shape_ >= prior_shape)
    assert np.all(model.cell_rate_ >= prior_rate)
    assert np.all(model.gene_rate_ >= prior_rate)
    trace = model.elbo_trace_
    assert np.all(np.isfinite(trace))
    # Coordinate ascent: every step is exact, so the ELBO cannot fall beyond round-off.
    # Round-off is relative to the ELBO's largest terms, sum x log(rate) and
    # sum lgamma(x + 1), which cancel to a far smaller ELBO when counts reach 1e9.
    term_scale = np.sum(dense * np.log1p(dense)) + np.sum(gammaln(dense + 1))
    allowed_drop = 1e-9 * np.abs(trace[1:]) + 16 * np.finfo(np.float64).eps * term_scale
    assert np.all(np.diff(trace) >= -allowed_drop), np.diff(trace)
    # sum_l phi_nl = 1 for each nonzero, so the shape statistics add up to the counts,
    # row by row and column by column; empty rows and columns keep the prior shape.
    row_totals = (model.cell_shape_ - prior_shape).sum(axis=1)
    col_totals = (model.gene_shape_ - prior_shape).sum(axis=1)
    np.testing.assert_allclose(row_totals, dense.sum(axis=1), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(col_totals, dense.sum(axis=0), rtol=1e-9, atol=1e-6)
    assert np.all(model.cell_shape_[dense.sum(axis=1) == 0] == prior_shape)
    assert np.all(model.gene_shape_[dense.sum(axis=0) == 0] == prior_shape)


@property_settings(30)
@given(
    case=count_matrices(),
    prior_shape=st.sampled_from([1e-3, 0.3, 1.0, 10.0]),
    prior_rate=st.sampled_from([1e-3, 1.0, 1e3]),
    n_threads=st.sampled_from([1, 2]),
)
def test_any_count_matrix_gives_a_valid_fit(case, prior_shape, prior_rate, n_threads):
    matrix, n_components = case
    dense = _dense_reference(matrix)
    model = vbsnmf.VBNMF(
        n_components,
        prior_shape=prior_shape,
        prior_rate=prior_rate,
        max_iter=20,
        tol=0,
        random_state=0,
        n_threads=n_threads,
        prior="gamma",
    )
    cell_factors = model.fit_transform(matrix)
    assert cell_factors.shape == (matrix.shape[0], n_components)
    assert np.all(np.isfinite(cell_factors)) and np.all(cell_factors > 0)
    # tol=0 stops early only when the ELBO repeats exactly (e.g. an all-zero matrix).
    assert model.elbo_trace_.shape == (model.n_iter_,)
    assert model.n_iter_ == 20 or (
        model.converged_ and model.elbo_trace_[-1] == model.elbo_trace_[-2]
    )
    _assert_valid_fit(model, dense, prior_shape, prior_rate)

    projected = model.transform(matrix)
    assert projected.shape == cell_factors.shape
    assert np.all(np.isfinite(projected)) and np.all(projected > 0)


@property_settings(20)
@given(case=count_matrices(max_side=7, max_entries=25))
def test_duplicates_and_layout_do_not_change_the_fit(case):
    """COO with duplicates, its summed CSR, CSC and dense form: bitwise-equal fits."""
    matrix, n_components = case
    dense = _dense_reference(matrix)
    fits = []
    for layout in (matrix, sp.csr_array(dense), sp.csc_matrix(dense), dense):
        model = vbsnmf.VBNMF(
            n_components, max_iter=8, tol=0, random_state=5, n_threads=1, prior="gamma"
        )
        model.fit(layout)
        fits.append((model.elbo_trace_, model.cell_shape_, model.gene_shape_))
    for other in fits[1:]:
        for first, second in zip(fits[0], other):
            assert first.tobytes() == second.tobytes()


@property_settings(20)
@given(case=count_matrices(max_side=8, max_entries=30))
def test_engine_elbo_equals_the_sum_of_its_terms(case):
    """The ELBO in the trace equals the closed form of model.md evaluated in plain numpy
    on the returned parameters (dense, log-sum-exp responsibilities)."""
    matrix, n_components = case
    dense = _dense_reference(matrix)
    a, b = 0.5, 2.0
    model = vbsnmf.VBNMF(
        n_components, prior_shape=a, prior_rate=b, max_iter=6, tol=0, random_state=1, prior="gamma"
    )
    model.fit(matrix)
    elog_z = digamma(model.cell_shape_) - np.log(model.cell_rate_)
    elog_w = digamma(model.gene_shape_) - np.log(model.gene_rate_)
    rows, cols = np.nonzero(dense)
    x = dense[rows, cols]
    data_term = np.sum(x * logsumexp(elog_z[rows] + elog_w[cols], axis=1) - gammaln(x + 1))
    mean_z = model.cell_shape_ / model.cell_rate_
    mean_w = model.gene_shape_ / model.gene_rate_

    def kl(shape, rate):
        rate = np.broadcast_to(rate, shape.shape)
        return np.sum(
            (shape - a) * digamma(shape)
            - gammaln(shape)
            + gammaln(a)
            + a * (np.log(rate) - np.log(b))
            + shape * (b - rate) / rate
        )

    reference = (
        data_term
        - mean_z.sum(axis=0) @ mean_w.sum(axis=0)
        - kl(model.cell_shape_, model.cell_rate_)
        - kl(model.gene_shape_, model.gene_rate_)
    )
    np.testing.assert_allclose(model.elbo_trace_[-1], reference, rtol=1e-9, atol=1e-7)


@property_settings(30)
@given(
    case=count_matrices(max_side=8, max_entries=30),
    n_parts=st.integers(1, 6),
)
def test_splitting_the_pass_only_reorders_sums(case, n_parts):
    """The pass statistics with any number of parallel parts agree with one part to
    round-off."""
    matrix, n_components = case
    data = as_count_data(matrix)
    total = float(data.counts.sum())
    params = _model.random_start(data.shape, n_components, total, 0, np.float64)
    reference = _model.shape_statistics(data, params, 1)
    chunked = _model.shape_statistics(data, params, n_parts)
    np.testing.assert_allclose(chunked[0], reference[0], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(chunked[1], reference[1], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(chunked[2], reference[2], rtol=1e-12, atol=1e-6)


def test_strategy_reaches_the_edge_cases():
    """The generator produces every case the properties are meant for within 30
    examples, as many as the main property test runs."""
    seen = set()

    @settings(max_examples=30, deadline=None, derandomize=True, database=None)
    @given(count_matrices())
    def collect(case):
        matrix, n_components = case
        dense = _dense_reference(matrix)
        if matrix.nnz == 0:
            seen.add("all zero")
        if np.count_nonzero(dense) == 1:
            seen.add("single nonzero")
        if matrix.shape[0] == 1:
            seen.add("one row")
        if np.any(dense.sum(axis=1) == 0) and matrix.nnz:
            seen.add("empty row")
        if np.any(dense.sum(axis=0) == 0) and matrix.nnz:
            seen.add("empty column")
        if len(set(zip(matrix.row, matrix.col))) < matrix.nnz:
            seen.add("duplicates")
        if matrix.nnz and matrix.data.max() >= 1e8:
            seen.add("huge count")
        if n_components == 1:
            seen.add("K=1")
        if n_components == min(matrix.shape) > 1:
            seen.add("K=min(shape)")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collect()
    expected = {
        "all zero",
        "single nonzero",
        "one row",
        "empty row",
        "empty column",
        "duplicates",
        "huge count",
        "K=1",
        "K=min(shape)",
    }
    assert expected <= seen, expected - seen
