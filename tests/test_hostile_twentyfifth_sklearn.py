"""Hostile pass 25, scikit-learn face and model numerics: see each test's docstring."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import digamma

from vbsnmf import VBNMF
from vbsnmf._data import as_count_data
from vbsnmf._model import GammaPrior, VariationalParams, fit_rows, shape_statistics

# q of one cell and one gene (shape, rate, shape, rate), stored in float32, whose table
# entries' product underflows, so that their nonzero takes the pass's log-sum-exp path:
# as SVI's nonzeros form reached them under prior_shape=1e-30 (E[log] near -1e11 in two
# components of each side: every phi fell to 0, a 0/0 step), and with log rho near -1e7 in
# all three components, where float32 rounds them by up to 0.5 (phi came out 1/3 each)
TINY_SHAPES = {
    "underflow": (
        [[1.1421657e-11, 1.9818295e-11, 74.786591]],
        [10.614086, 2.6882677, 8.147574],
        [[19.340305, 1.9902318e-11, 1.1563310e-11]],
        [18.989931, 1.0614265, 14.199796],
    ),
    "rounding": (
        [[1e-7, 1.0 / (1e7 - 0.7), 30.0]],
        [1.0, 1.0, 1.0],
        [[20.0, 20.0, 1e-7]],
        [1.0] * 3,
    ),
}


def _stored(case: str, dtype) -> list[np.ndarray]:
    """The case's four arrays as float32 stores them, in ``dtype``."""
    return [np.asarray(a, dtype=np.float32).astype(dtype) for a in TINY_SHAPES[case]]


def _responsibilities(case: str) -> np.ndarray:
    """phi of the nonzero in float64 by scipy from q as stored, independently of the
    kernels."""
    row_shape, row_rate, col_shape, col_rate = _stored(case, np.float64)
    log_rho = digamma(row_shape[0]) - np.log(row_rate) + digamma(col_shape[0]) - np.log(col_rate)
    phi = np.exp(log_rho - log_rho.max())
    return phi / phi.sum()


@pytest.mark.parametrize("case", TINY_SHAPES)
def test_the_pass_takes_tiny_shapes_responsibilities_in_float64(case):
    """The pass's log-sum-exp path held log rho in the tables' dtype before subtracting its
    float64 maximum: in float32 every phi could fall to 0 (statistics 0/0 = NaN; SVI's
    nonzeros form raised FloatingPointError) or be rounded to other values silently."""
    params = VariationalParams(*_stored(case, np.float32))
    data = as_count_data(sp.csr_array(np.array([[3.0]])))
    row_stat, col_stat, _ = shape_statistics(data, params, 1)
    expected = 3.0 * _responsibilities(case)
    np.testing.assert_allclose(row_stat[0], expected, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(col_stat[0], expected, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("case", TINY_SHAPES)
def test_a_local_fit_takes_tiny_shapes_responsibilities_in_float64(case):
    """The same in the local fit's pass (`transform`, the cells form of SVI): one pass from
    the same q in float32 and in float64 gives the same shapes (float32 gave NaN, or 1/3
    of the count in each component)."""
    data = as_count_data(sp.csr_array(np.array([[3.0]])), major=0)
    prior = GammaPrior(1e-30, 1.0)
    fits = []
    for dtype in (np.float32, np.float64):
        row_shape, _, col_shape, col_rate = _stored(case, dtype)
        fits.append(
            fit_rows(
                data, col_shape, col_rate, prior, max_iter=1, tol=0.0, init_shape=row_shape
            ).shape
        )
    assert np.all(np.isfinite(fits[0]))
    np.testing.assert_allclose(fits[0], fits[1], rtol=1e-5)


def test_svi_nonzeros_in_float32_fits_under_the_smallest_prior_shape():
    """The user's view: a valid prior_shape, float32, SVI over nonzeros raised
    FloatingPointError ("an SVI step produced non-finite row_shape")."""
    X = np.random.default_rng(0).poisson(1.0, size=(25, 10)).astype(float)
    model = VBNMF(
        n_components=3, solver="svi", svi_form="nonzeros", prior="gamma", prior_shape=1e-30,
        dtype=np.float32, n_epochs=6, batch_size=7, random_state=0, n_threads=1,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X)
    assert np.all(np.isfinite(model.elbo_trace_))
    assert np.all(np.isfinite(model.components_))


@pytest.mark.parametrize("shape", [(5,), (6, 5, 1)])
def test_classic_nmf_refuses_a_sparse_array_that_is_not_2d_by_name(shape):
    """A 1-D or 3-D scipy ``coo_array``: the index check unpacked its shape and raised
    Python's "not enough values to unpack (expected 2, got 1)"."""
    from vbsnmf import NMF

    X = sp.coo_array(np.ones(shape))
    with pytest.raises(ValueError, match=f"X must be 2-D, got {len(shape)}-D"):
        NMF(n_components=1).fit(X)
    fitted = NMF(n_components=1, max_iter=20, tol=0).fit(np.ones((6, 5)))
    with pytest.raises(ValueError, match=f"X must be 2-D, got {len(shape)}-D"):
        fitted.transform(X)


def test_classic_nmf_leaves_the_callers_sparse_weights_as_they_were():
    """scipy's ``count_nonzero`` sums repeated coordinates and sorts indices in place: a
    COO of weights with a repeat lost an entry from its arrays, a CSR with unsorted
    indices was sorted. The fit is the one of the summed weights, as before."""
    from vbsnmf import NMF

    X = np.random.default_rng(0).poisson(2.0, size=(4, 3)).astype(float) + 1
    coo = sp.coo_matrix(
        (np.array([1.0, 2.0, 0.0, 3.0]), (np.array([0, 0, 1, 2]), np.array([0, 0, 1, 2]))),
        shape=(4, 3),
    )
    csr = sp.csr_matrix(
        (np.array([1.0, 2.0]), np.array([2, 0]), np.array([0, 2, 2, 2, 2])), shape=(4, 3)
    )
    csr.has_sorted_indices = False
    held = [(coo.data, coo.row, coo.col), (csr.data, csr.indices, csr.indptr)]
    copies = [[a.copy() for a in arrays] for arrays in held]
    fits = [
        NMF(n_components=2, max_iter=5, tol=0, weights=w).fit(X).components_ for w in (coo, csr)
    ]
    for arrays, originals in zip(held, copies):
        for array, original in zip(arrays, originals):
            np.testing.assert_array_equal(array, original)
    # the same fits as from the summed, sorted weights built independently
    summed = [sp.coo_matrix(w.toarray()) for w in (coo, csr)]
    for fit, weights in zip(fits, summed):
        expected = NMF(n_components=2, max_iter=5, tol=0, weights=weights).fit(X).components_
        np.testing.assert_allclose(fit, expected, rtol=1e-12)


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_classic_nmf_reads_weights_of_sparse_columns_of_any_fill_value(fill):
    """A 0/1 mask as a DataFrame of sparse columns stored around its ones (fill value 1)
    was refused in pandas' words ("fill value must be 0 when converting to COO matrix"),
    which X in the same form is not; the fit is the one of the same weights dense."""
    import pandas as pd

    from vbsnmf import NMF

    X = np.random.default_rng(0).poisson(2.0, (8, 4)).astype(float)
    dense = np.where(X > 2, 0.0, 1.0)
    frame = pd.DataFrame(
        {f"g{i}": pd.arrays.SparseArray(dense[:, i], fill_value=fill) for i in range(4)}
    )
    got = NMF(n_components=1, max_iter=5, tol=0, weights=frame).fit(X).components_
    expected = NMF(n_components=1, max_iter=5, tol=0, weights=dense).fit(X).components_
    np.testing.assert_allclose(got, expected, rtol=1e-12)
