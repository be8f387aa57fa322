"""Hostile pass 17 on the tensor model (`vbsnmf.VBNTF`, `vbsnmf._tensor`): the random start
of a sparse tensor whose floored mean count expects far more than the fixed prior's optimum
(and overflowed float32 at many modes); counts beyond float64, summed or longdouble."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import vbsnmf
from vbsnmf import _model, _tensor


def _sparse_many_mode_tensor(n_modes, n_indices, nnz=100, seed=0):
    rng = np.random.default_rng(seed)
    coords = rng.integers(0, n_indices, (nnz, n_modes))
    values = (rng.poisson(2.0, nnz) + 1).astype(float)
    return coords, values, (n_indices,) * n_modes


@pytest.mark.parametrize("n_modes, n_indices", [(4, 10**5), (20, 1000), (101, 10**4)])
def test_the_start_of_a_sparse_tensor_expects_at_most_its_fixed_prior_bound(n_modes, n_indices):
    """The start floored the mean count at 1e-12: a 20-mode tensor of 1000 indices per mode
    with 100 nonzeros started with an expected total of 1e-12 * 1000^20 = 1e48, where the
    fixed prior's optimum expects less than the total count plus K times the shortest mode
    (here about 3,300); at 101 modes of 10**4 the product is beyond float64 itself."""
    coords, values, shape = _sparse_many_mode_tensor(n_modes, n_indices)
    data = _tensor.as_tensor_data(coords, values, shape)
    start = _tensor.random_start(data, 3, entropy=0, dtype=np.float64)
    bound = values.sum() + 3 * n_indices
    # sum_l prod_d sum_i E[v^(d)_il] in logs (the product may be beyond float64)
    log_sums = np.array([np.log((s / r).sum(axis=0)) for s, r in zip(start.shapes, start.rates)])
    expected = np.exp(log_sums.sum(axis=0)).sum()
    # the random shapes' means scatter the product around the bound by a few percent a mode
    assert 0.2 * bound < expected < 5 * bound
    # (bound / prod n_d / K)^(1/D) from the exact product of the modes (an int)
    log_mean = math.log(bound) - math.log(math.prod(shape))
    np.testing.assert_allclose(start.rates[0], 1.5 / math.exp((log_mean - math.log(3)) / n_modes))


def test_a_matrix_and_a_tensor_within_the_bound_keep_their_start():
    """Passes before the fix too: the floor still starts an all-zero tensor, a matrix
    (`VBNMF`'s start, bitwise that of `VBNTF` at D = 2) keeps it, and so does a tensor whose
    floored start is within the bound (a million per mode, 3 modes: 1e6 against 3e6)."""
    assert _model.start_rate((4, 3, 2), 0.0, 2, np.float64)[0] == 1.5 / (1e-12 / 2) ** (1 / 3)
    assert _model.start_rate((10**6, 10**7), 1.0, 2, np.float64)[0] == 1.5 / np.sqrt(1e-12 / 2)
    assert _model.start_rate((5, 4, 3), 60.0, 2, np.float64)[0] == 1.5 / 0.5 ** (1 / 3)
    assert _model.start_rate((10**6,) * 3, 9.0, 3, np.float64)[0] == 1.5 / (1e-12 / 3) ** (1 / 3)


def test_a_sparse_float32_tensor_of_many_modes_fits_finite():
    """From the floored start the first rates of a 20-mode tensor of 1000 indices per mode
    were the product of 19 column sums of about 240 each (1e45): float32 overflowed and the
    fit failed with a FloatingPointError that blamed a damaged checkpoint or an extreme
    start, on counts and settings that are neither."""
    coords, values, shape = _sparse_many_mode_tensor(20, 1000)
    model = vbsnmf.VBNTF(3, random_state=0, dtype=np.float32, max_iter=5, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(coords, values, shape)
    assert all(np.all(np.isfinite(factor)) for factor in model.factors_)
    assert np.all(np.isfinite(model.elbo_trace_)) and np.all(np.diff(model.elbo_trace_) >= 0)


def test_repeated_coordinates_summed_beyond_float64_are_refused_without_a_numpy_warning():
    """Two counts of 1.5e308 at one coordinate are refused as a count of inf, but numpy's
    "overflow encountered in reduceat" came first: under warnings as errors (``python -W
    error``, pytest's ``filterwarnings = error``) that raw numpy RuntimeWarning was raised
    instead of the ValueError."""
    coords = np.array([[0, 0, 0], [0, 0, 0], [1, 1, 1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="count of inf"):
            vbsnmf.VBNTF(2).fit(coords, np.array([1.5e308, 1.5e308, 1.0]))


def test_longdouble_values_beyond_float64_are_refused_without_a_numpy_warning():
    """A longdouble count of 1e400 became inf in the cast to float64 and was refused, after
    numpy's "overflow encountered in cast" (raised instead under warnings as errors)."""
    values = np.array([np.longdouble("1e400"), 1.0], dtype=np.longdouble)
    if np.isinf(values[0]):
        pytest.skip("this platform's longdouble is float64")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="1 infinite value at"):
            vbsnmf.VBNTF(2).fit(np.array([[0, 0, 0], [1, 1, 1]]), values)
