"""A thirteenth hostile pass (2026-12-05), the tensor model under the fixed prior: each
test here failed on the code before its fix, unless its docstring says otherwise.

Under the fixed prior Gamma(a, b) the ELBO of a component is not flat along the modes'
scales: its optimum puts every mode but the shortest near the prior mean a / b and the
shortest mode's rates above ``prod_{d != m} a (n_d - n_m) / b``, of the order of
``b^-(D-1)`` (`_model.fixed_prior_least_log_rate`). With a tiny ``prior_rate`` (float32 at
D = 3, b = 1e-20; float64 at b = 1e-200) the ascent went there and ended, after about a
hundred passes, in a `FloatingPointError`; a fit whose optimum lies beyond its dtype's
range is now refused with a `ValueError` before any pass.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.special import digamma, gammaln

import vbsnmf
from vbsnmf import _model

ONE_COUNT = np.array([[1, 2, 0]])


def _fit(model, coords, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(coords, np.ones(len(coords)), shape=shape)


@pytest.mark.parametrize(
    "dtype, prior_rate, shape, least",
    [
        # (3 / b)^2 above float32's 3.4e38: b below 3 / sqrt(3.4e38) = 1.63e-19
        (np.float32, 1e-20, (5, 5, 2), "1.63e-19"),
        (np.float64, 1e-200, (5, 5, 2), "2.24e-154"),
        # D = 2 as well: (1000 - 10) / b above 3.4e38 (VBNMF's arithmetic, the same failure)
        (np.float32, 1e-36, (1000, 10), "2.91e-36"),
    ],
)
def test_a_fixed_prior_whose_optimum_is_beyond_the_dtype_is_refused_before_any_pass(
    dtype, prior_rate, shape, least
):
    passes = []
    model = vbsnmf.VBNTF(2, prior_rate=prior_rate, dtype=dtype, random_state=0, n_threads=1)
    coords = ONE_COUNT[:, : len(shape)] if len(shape) == 3 else np.array([[3, 1]])
    with pytest.raises(ValueError, match=f"raise prior_rate to at least {least}"):
        model.fit(coords, np.ones(1), shape=shape, callback=lambda *_: passes.append(1))
    assert passes == []
    assert not hasattr(model, "factors_")


def test_the_refusal_names_float64_only_where_it_holds_the_optimum():
    with pytest.raises(ValueError, match=r"or fit with dtype=np\.float64"):
        vbsnmf.VBNTF(2, prior_rate=1e-20, dtype=np.float32).fit(ONE_COUNT, shape=(5, 5, 2))
    # (3 / b)^9 at b = 2e-38: beyond float64 as well
    ten_modes = (5,) * 9 + (2,)
    with pytest.raises(ValueError, match=r"at least [0-9.e-]+, or use prior='hierarchical'"):
        vbsnmf.VBNTF(2, prior_rate=2e-38, dtype=np.float32).fit(
            np.zeros((1, 10), dtype=int), shape=ten_modes
        )


@pytest.mark.parametrize("solver", ["svi", "batch"])
def test_the_slices_form_and_an_accelerated_fit_are_refused_alike(solver):
    model = vbsnmf.VBNTF(2, prior_rate=1e-20, dtype=np.float32, solver=solver, accelerate=True)
    with pytest.raises(ValueError, match="beyond float32's range: mode 2's rates"):
        model.fit(ONE_COUNT, shape=(5, 5, 2))


def test_just_inside_the_bound_the_fit_ends_finite_at_the_predicted_rate():
    """Passed before the fix too: the refusal leaves this fit alone. Its shortest mode's
    rates reach the bound (3 / b)^2 = 3.3e38, within float32's 3.4e38, and the trace's
    last value is the ELBO of the q returned (checked against numpy in float64)."""
    rate = 1.65e-19
    model = vbsnmf.VBNTF(
        2, prior_rate=rate, dtype=np.float32, random_state=0, n_threads=1, tol=1e-12
    )
    model = _fit(model, ONE_COUNT, (5, 5, 2))
    bound = (3.0 / rate) ** 2
    assert all(np.all(np.isfinite(r)) for r in model.rates_)
    largest = float(np.max(model.rates_[2]))
    assert bound * (1 - 1e-5) <= largest <= float(np.finfo(np.float32).max)
    shapes = [np.asarray(s, np.float64) for s in model.shapes_]
    rates = [np.asarray(r, np.float64) for r in model.rates_]
    means = [s / r for s, r in zip(shapes, rates)]
    elog = [digamma(s) - np.log(r) for s, r in zip(shapes, rates)]
    data = np.log(np.exp(elog[0][1] + elog[1][2] + elog[2][0]).sum())  # count 1: lgamma(2) = 0
    total = np.einsum("il,jl,kl->", *means)
    kl = sum(_gamma_kl(s, r, 1.0, rate) for s, r in zip(shapes, rates))
    assert model.elbo_trace_[-1] == pytest.approx(data - total - kl, rel=1e-6)


@pytest.mark.parametrize(
    "shape, factor_shape, prior_rate",
    [((7, 4, 2), 1.0, 1e-3), ((6, 3, 2, 5), 0.5, 1e-2), ((9, 3), 2.0, 1e-4)],
)
def test_the_shortest_modes_rates_sit_at_the_bound_at_an_optimum(shape, factor_shape, prior_rate):
    """The derivation, checked on converged float64 fits: every component's rate of the
    shortest mode sits at prod_{d != m} a (n_d - n_m) / b (numpy; above it at the exact
    optimum, which the ascent approaches from below), and the function gives its log; a
    tie for the shortest mode gives the bound over the longer modes only (the thirty-fourth
    pass: one of the tied modes takes it, `test_hostile_thirtyfourth_tensor.py`)."""
    rng = np.random.default_rng(3)
    coords = np.stack([rng.integers(0, n, 12) for n in shape], axis=1)
    model = vbsnmf.VBNTF(
        2, prior_shape=factor_shape, prior_rate=prior_rate, random_state=0, n_threads=1,
        tol=1e-12, max_iter=20000,
    )  # fmt: skip
    model = _fit(model, coords, shape)
    shortest = int(np.argmin(shape))
    bound = np.prod([factor_shape * (n - shape[shortest]) / prior_rate for d, n in
                     enumerate(shape) if d != shortest])  # fmt: skip
    prior = _model.GammaPrior(factor_shape, prior_rate)
    mode, log_bound = _model.fixed_prior_least_log_rate(shape, prior)
    assert mode == shortest
    assert log_bound == pytest.approx(np.log(bound), rel=1e-12)
    assert model.rates_[shortest] == pytest.approx(np.full(2, bound), rel=1e-4)
    longer_only = np.log(factor_shape * 3 / prior_rate)
    assert _model.fixed_prior_least_log_rate((5, 2, 2), prior)[1] == pytest.approx(longer_only)


def test_a_tie_for_the_shortest_mode_is_not_refused():
    """Passed before the fix too. One of the two shortest modes takes the longer mode's
    scale, 4 / b = 4e30 here, within float32's range: a float32 fit at b = 1e-30 is
    finite."""
    model = vbsnmf.VBNTF(2, prior_rate=1e-30, dtype=np.float32, random_state=0, n_threads=1)
    model = _fit(model, np.array([[1, 0, 1]]), (6, 2, 2))
    assert all(np.all(np.isfinite(r)) for r in model.rates_)
    assert np.all(np.diff(model.elbo_trace_) >= -1e-6 * np.abs(model.elbo_trace_[1:]))


def _gamma_kl(shape, rate, prior_shape, prior_rate) -> float:
    """KL(Gamma(shape, rate) || Gamma(prior_shape, prior_rate)) summed, by scipy's
    special functions, written so that a rate near the float range does not overflow."""
    return float(
        np.sum(
            (shape - prior_shape) * digamma(shape)
            - gammaln(shape)
            + gammaln(prior_shape)
            + prior_shape * (np.log(rate) - np.log(prior_rate))
            + shape * (prior_rate / rate - 1.0)
        )
    )


@pytest.mark.parametrize("ndim, error", [(3, ValueError), (2, TypeError)])
def test_a_dense_array_of_counts_is_refused_with_how_to_give_it(ndim, error):
    """A dense numpy tensor (or float matrix) passed as coordinates: the message said only
    that coords must be (nnz, D) integer indices; it now says how to pass a dense array, and
    its advice fits it (numpy's own entries, no further change)."""
    dense = np.random.default_rng(0).poisson(0.7, (4, 3, 5)).astype(float)
    if ndim == 2:
        dense = dense[:, :, 0]
    with pytest.raises(error, match=r"np\.argwhere\(T\) with values T\[T != 0\]"):
        vbsnmf.VBNTF(2).fit(dense)
    model = vbsnmf.VBNTF(2, max_iter=3, random_state=0, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(np.argwhere(dense), dense[dense != 0], shape=dense.shape)
    assert model.shape_ == dense.shape


@pytest.mark.parametrize("svi_form", ["slices", "nonzeros"])
def test_an_svi_resume_beyond_n_epochs_is_not_said_to_stop_at_it(tmp_path, svi_form):
    """A checkpoint of 4 epochs resumed with n_epochs=2 is returned as it is (and says so);
    it warned that the fit stopped "after n_epochs=2", as VBNMF's SVI did."""
    rng = np.random.default_rng(0)
    coords = np.unique(rng.integers(0, (6, 5, 4), size=(40, 3)), axis=0)
    values = rng.integers(1, 5, len(coords)).astype(np.float64)
    path = tmp_path / "fit.npz"

    def model(n_epochs, **options):
        return vbsnmf.VBNTF(
            2, solver="svi", svi_form=svi_form, n_epochs=n_epochs, tol=0, random_state=0,
            checkpoint=path, **options,
        )  # fmt: skip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        fitted = model(4).fit(coords, values, shape=(6, 5, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = model(2, resume=True).fit(coords, values, shape=(6, 5, 4))
    messages = [str(w.message) for w in caught]
    assert not [w for w in caught if issubclass(w.category, vbsnmf.ConvergenceWarning)], messages
    assert any("its fit is returned as it is" in m for m in messages)
    np.testing.assert_array_equal(resumed.elbo_trace_, fitted.elbo_trace_)
