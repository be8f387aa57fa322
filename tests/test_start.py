"""The NNDSVDa start (`VBNMF(init="nndsvda")`): its SVD, its factors, its q and its fits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from simulated import poisson_gamma_counts

import vbsnmf
from vbsnmf import _model, _nndsvd
from vbsnmf._data import as_count_data


def _counts(n_rows=40, n_cols=12, seed=0, rank=3):
    return poisson_gamma_counts(np.random.default_rng(seed), n_rows, n_cols, rank)[0]


def test_truncated_svd_is_numpys_when_its_subspace_spans_the_matrix():
    """With K + 10 >= the smaller dimension the randomized subspace is the whole row space,
    so the triplets are the exact SVD's (numpy's, up to each pair's sign)."""
    matrix = _counts()
    left, values, right = _nndsvd.truncated_svd(matrix, 3, np.random.default_rng(0))
    u, s, vt = np.linalg.svd(matrix.toarray(), full_matrices=False)
    np.testing.assert_allclose(values, s[:3], rtol=1e-12)
    for component in range(3):
        sign = np.sign(left[:, component] @ u[:, component])
        np.testing.assert_allclose(left[:, component], sign * u[:, component], atol=1e-10)
        np.testing.assert_allclose(right[component], sign * vt[component], atol=1e-10)


def test_truncated_svd_finds_the_leading_singular_values_of_a_larger_matrix():
    """On counts of rank 4 plus Poisson noise, 300 x 200 (the subspace far smaller than
    the matrix), the four leading singular values to 1e-6."""
    matrix = _counts(300, 200, seed=3, rank=4)
    _, values, _ = _nndsvd.truncated_svd(matrix, 4, np.random.default_rng(1))
    exact = np.linalg.svd(matrix.toarray(), compute_uv=False)[:4]
    np.testing.assert_allclose(values, exact, rtol=1e-6)


def test_nndsvda_factors_are_scikit_learns():
    """The factors equal scikit-learn's ``init="nndsvda"`` (an independent implementation
    of Boutsidis and Gallopoulos' algorithm) where both SVDs are exact."""
    from sklearn.decomposition._nmf import _initialize_nmf

    matrix = _counts(seed=4)
    rows, cols = _nndsvd.nndsvda_means(matrix, 4, np.random.default_rng(0), floor=0.0)
    expected_rows, expected_cols = _initialize_nmf(matrix, 4, init="nndsvda", random_state=0)
    np.testing.assert_allclose(rows, expected_rows, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cols, expected_cols.T, rtol=1e-9, atol=1e-12)
    assert np.all(rows > 0) and np.all(cols > 0)


def test_components_past_the_rank_take_the_mean_count():
    matrix = sp.csr_matrix(np.outer([1.0, 2.0, 3.0], [1.0, 1.0, 2.0, 0.0]))
    rows, cols = _nndsvd.nndsvda_means(matrix, 5, np.random.default_rng(0), floor=1e-9)
    mean_count = matrix.sum() / 12
    assert rows.shape == (3, 5) and cols.shape == (4, 5)
    np.testing.assert_allclose(rows[:, 3:], mean_count)
    np.testing.assert_allclose(cols[:, 3:], mean_count)
    np.testing.assert_allclose(cols[3, 0], mean_count)  # an exact zero filled, NNDSVDa's 'a'


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_svd_start_has_nndsvdas_factors_as_its_means(transposed, dtype):
    """The start's means are NNDSVDa's of the cells x genes counts whichever axis the
    engine stores as major, its shapes 1, every rate finite, its scales at their optimum."""
    counts = _counts(30, 50, seed=5)  # more genes than cells: stored genes-major
    matrix = counts.T.tocsr() if transposed else counts
    data = as_count_data(matrix)
    prior = _model.HierarchicalPrior()
    start = _model.svd_start(data, 4, float(matrix.sum()), 7, np.dtype(dtype), prior)
    rows, cols = _nndsvd.nndsvda_means(matrix, 4, _model._generator(7, 0, _model._SVD), 0.0)
    np.testing.assert_allclose(start.row_shape / start.row_rate, rows, rtol=1e-6)
    np.testing.assert_allclose(start.col_shape / start.col_rate, cols, rtol=1e-6)
    for array in start.as_tuple():
        assert array.dtype == dtype and np.all(np.isfinite(array)) and np.all(array > 0)
    np.testing.assert_array_equal(start.row_shape, 1.0)
    optimum = _model.scale_optimum(start.row_shape, start.row_rate, start.row_scale)
    np.testing.assert_allclose(start.row_scale.rate, optimum.rate, rtol=1e-12)


def test_an_nndsvda_fit_is_monotone_reproducible_and_converged(pbmc_tiny):
    X = sp.csr_matrix(pbmc_tiny.X)
    fits = [vbsnmf.VBNMF(5, init="nndsvda", random_state=3, n_threads=2).fit(X) for _ in "ab"]
    trace = fits[0].elbo_trace_
    assert fits[0].converged_ and np.all(np.diff(trace) >= 0) and np.all(np.isfinite(trace))
    np.testing.assert_array_equal(fits[0].elbo_trace_, fits[1].elbo_trace_)
    np.testing.assert_array_equal(fits[0].components_, fits[1].components_)
    # the start is not random_state's random start: the first kept q differs
    random = vbsnmf.VBNMF(5, random_state=3, n_threads=2).fit(X)
    assert trace[0] != random.elbo_trace_[0]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"init": "nndsvd"}, "init must be one of"),
        ({"init": None}, "init must be one of"),
        ({"init": "nndsvda", "solver": "svi"}, "SVI starts at random"),
        ({"init": "nndsvda", "n_init": 2}, "n_init must be 1"),
        ({"init": "nndsvda", "prior": "gamma"}, "prior='gamma' starts at random"),
    ],
)
def test_init_is_checked(options, message):
    with pytest.raises(ValueError, match=message):
        vbsnmf.VBNMF(2, **options).fit(np.arange(12.0).reshape(4, 3))


def test_nndsvda_on_a_dask_array_is_refused():
    import dask.array as da

    X = da.from_array(np.arange(1.0, 13.0).reshape(4, 3), chunks=2)
    with pytest.raises(ValueError, match="starts batch VB on a matrix in memory"):
        vbsnmf.VBNMF(2, init="nndsvda").fit(X)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_counts_without_a_nonzero_or_with_empty_rows_start_finite(dtype):
    """All-zero counts and empty cells and genes: every start mean and the fit finite (a
    mean count of zero once gave infinite rates)."""
    empty = np.zeros((5, 4))
    sparse_rows = np.array([[0, 0, 0], [1, 2, 0], [0, 3, 1.0], [0, 0, 0]])
    for X in (empty, sparse_rows):
        data = as_count_data(sp.csr_matrix(X))
        prior = _model.HierarchicalPrior()
        start = _model.svd_start(data, 2, float(X.sum()), 0, np.dtype(dtype), prior)
        for array in start.positive_arrays():
            assert np.all(np.isfinite(array)) and np.all(np.asarray(array) > 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            model = vbsnmf.VBNMF(2, init="nndsvda", random_state=0, dtype=dtype).fit(X)
        assert np.all(np.isfinite(model.components_)) and np.all(np.isfinite(model.elbo_trace_))
