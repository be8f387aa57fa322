"""Batch VB (`vbsnmf._batch`, through `VBNMF`): an ascending, exact ELBO trace, the
stopping rule, reproducibility, recovery of a simulated mean."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from simulated import poisson_gamma_counts

import vbsnmf


@pytest.mark.parametrize("prior_shape", [1e-3, 0.3, 1.0])
def test_elbo_never_decreases_over_300_iterations(prior_shape, _pbmc_tiny):
    simulated, _ = poisson_gamma_counts(np.random.default_rng(5), 120, 90, 4)
    for X in (_pbmc_tiny.X, simulated):
        model = vbsnmf.VBNMF(
            5,
            prior_shape=prior_shape,
            max_iter=300,
            tol=0.0,
            random_state=0,
            n_threads=2,
            prior="gamma",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            model.fit(X)
        trace = model.elbo_trace_
        assert trace.shape == (300,)
        assert np.all(np.isfinite(trace))
        steps = np.diff(trace)
        assert np.all(steps >= -1e-9 * np.abs(trace[1:])), steps.min()


def test_recovers_simulated_mean():
    rng = np.random.default_rng(11)
    X, true_mean = poisson_gamma_counts(rng, 300, 200, 3, shape=1.0)
    model = vbsnmf.VBNMF(3, max_iter=500, tol=1e-7, random_state=0, n_init=2, prior="gamma")
    cell_factors = model.fit_transform(X)
    fitted_mean = cell_factors @ model.components_
    correlation = np.corrcoef(fitted_mean.ravel(), true_mean.ravel())[0, 1]
    assert correlation > 0.95, correlation


def test_same_seed_and_threads_bitwise_identical(_pbmc_tiny):
    traces = []
    for _ in range(2):
        model = vbsnmf.VBNMF(4, max_iter=40, tol=0, random_state=42, n_threads=2, prior="gamma")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            model.fit(_pbmc_tiny.X)
        traces.append((model.elbo_trace_, model.cell_shape_))
    assert traces[0][0].tobytes() == traces[1][0].tobytes()
    assert traces[0][1].tobytes() == traces[1][1].tobytes()


def test_thread_counts_agree(_pbmc_tiny):
    fits = []
    for n_threads in (1, 2):
        model = vbsnmf.VBNMF(
            4, max_iter=20, tol=0, random_state=3, n_threads=n_threads, prior="gamma"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            model.fit(_pbmc_tiny.X)
        fits.append(model.elbo_trace_)
    np.testing.assert_allclose(fits[0], fits[1], rtol=1e-10)


def test_huge_counts_and_tiny_prior_stay_finite():
    rng = np.random.default_rng(2)
    X = sp.random(60, 40, density=0.2, random_state=rng, format="csr")
    X.data = np.round(X.data * 1e6)
    X.eliminate_zeros()
    model = vbsnmf.VBNMF(5, prior_shape=1e-3, max_iter=50, random_state=0, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        factors = model.fit_transform(X)
    for array in (factors, model.components_, model.elbo_trace_, model.cell_shape_):
        assert np.all(np.isfinite(array))
    assert np.all(np.diff(model.elbo_trace_) >= -1e-9 * np.abs(model.elbo_trace_[1:]))


def test_converges_and_stops_on_tol(_pbmc_tiny):
    model = vbsnmf.VBNMF(3, max_iter=2000, tol=1e-4, random_state=0, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("error", vbsnmf.ConvergenceWarning)
        model.fit(_pbmc_tiny.X)
    trace = model.elbo_trace_
    assert model.converged_ and model.n_iter_ == len(trace) < 2000
    assert abs(trace[-1] - trace[-2]) <= 1e-4 * abs(trace[-2])
    assert abs(trace[-2] - trace[-3]) > 1e-4 * abs(trace[-3])


def test_max_iter_warns():
    X = np.random.default_rng(0).poisson(2.0, (30, 20))
    with pytest.warns(vbsnmf.ConvergenceWarning, match="max_iter=3"):
        model = vbsnmf.VBNMF(2, max_iter=3, tol=0, random_state=0, prior="gamma").fit(X)
    assert model.n_iter_ == 3


def test_empty_rows_keep_prior_shape():
    X = np.random.default_rng(0).poisson(1.0, (20, 15)).astype(float)
    X[4] = 0
    model = vbsnmf.VBNMF(3, prior_shape=0.5, max_iter=10, tol=0, random_state=0, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(X)
    np.testing.assert_array_equal(model.cell_shape_[4], 0.5)


def test_float32_halves_factor_memory(_pbmc_tiny):
    model = vbsnmf.VBNMF(4, max_iter=30, tol=0, random_state=0, dtype=np.float32, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(_pbmc_tiny.X)
    assert model.cell_shape_.dtype == np.float32 and model.components_.dtype == np.float32
    assert np.all(np.isfinite(model.elbo_trace_))
    double = vbsnmf.VBNMF(4, max_iter=30, tol=0, random_state=0, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        double.fit(_pbmc_tiny.X)
    assert model.cell_shape_.nbytes * 2 == double.cell_shape_.nbytes
    np.testing.assert_allclose(model.elbo_trace_, double.elbo_trace_, rtol=1e-3)
