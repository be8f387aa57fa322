"""Twentieth hostile pass, the estimator: what `VBNMF` gives a user, checked against
independent computations."""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pytest

from vbsnmf import VBNMF


@pytest.fixture(scope="module")
def learned_fit():
    X = np.random.default_rng(0).poisson(1.5, size=(20, 8)).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = VBNMF(3, random_state=0, max_iter=30).fit(X)
    return model, X


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("cell_factor_shape", [1.0, 2.0], "3 real numbers, one per factor"),
        ("cell_factor_shape", [[1.0, 2.0, 3.0]], "3 real numbers, one per factor"),
        ("cell_factor_shape", ["a", "b", "c"], "3 real numbers, one per factor"),
        ("cell_factor_shape", [np.nan, 1.0, 1.0], "positive and finite"),
        ("cell_factor_shape", [1e300, 1.0, 1.0], "at most 1e+06"),
        ("cell_scale_prior_shape", np.nan, "positive and finite"),
        ("cell_scale_prior_shape", 0.0, "positive and finite"),
        ("cell_scale_prior_mean", -2.0, "positive and finite"),
        ("cell_scale_prior_mean", [1.0, 2.0], "one real number"),
        ("cell_scale_prior_mean", None, "has no 'cell_scale_prior_mean'"),
    ],
)
def test_transform_refuses_hyperparameters_a_fit_never_leaves(learned_fit, key, value, message):
    # Set by hand, a factor shape of the wrong length made the kernels read past its end
    # (silently wrong factors), a NaN one NaN factors, others raw numba/numpy errors.
    model, X = learned_fit
    model = copy.deepcopy(model)
    if value is None:
        del model.hyperparameters_[key]
    else:
        model.hyperparameters_[key] = value
    with pytest.raises(ValueError, match=r"hyperparameters_.*" + re.escape(message)):
        model.transform(X)


def test_transform_takes_the_hyperparameters_a_fit_leaves_in_any_plain_form(learned_fit):
    # as saved and read back (JSON): lists and Python floats give the same cells
    model, X = learned_fit
    expected = model.transform(X)
    rebuilt = copy.deepcopy(model)
    rebuilt.hyperparameters_ = {
        key: np.asarray(value).tolist() for key, value in model.hyperparameters_.items()
    }
    np.testing.assert_array_equal(rebuilt.transform(X), expected)


def _rebinding(n_iter, params, trace):
    """A callback that uses the q it is given as scratch: rebinds its fields."""
    params.row_shape = params.row_shape / params.row_rate
    if params.row_scale is not None:
        params.row_scale.prior_shape = 1e5


@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
@pytest.mark.parametrize("accelerate", [True, False])
def test_a_callback_rebinding_the_fields_of_q_leaves_the_fit_as_it_was(prior, accelerate):
    # The arrays were read-only, but a field bound anew became the fit's q: the result held
    # the callback's arrays and the trace fell.
    X = np.random.default_rng(0).poisson(1.5, size=(20, 8)).astype(float)
    settings = dict(prior=prior, accelerate=accelerate, max_iter=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = VBNMF(3, **settings).fit(X)
        watched = VBNMF(3, **settings).fit(X, callback=_rebinding)
    np.testing.assert_array_equal(watched.cell_shape_, plain.cell_shape_)
    np.testing.assert_array_equal(watched.elbo_trace_, plain.elbo_trace_)
    assert np.all(np.diff(watched.elbo_trace_) >= 0)


@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_a_tensor_callback_rebinding_a_modes_arrays_leaves_the_fit_as_it_was(prior):
    from vbsnmf import VBNTF

    counts = np.random.default_rng(0).poisson(1.0, size=(6, 5, 4)).astype(float)
    coords, values = np.argwhere(counts), counts[counts != 0]

    def rebinding(n_iter, params, trace):
        params.shapes[0] = np.full_like(params.shapes[0], 50.0)
        if params.scales is not None:
            params.scales[0].prior_shape = 1e5

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = VBNTF(2, prior=prior, random_state=0, max_iter=15).fit(coords, values, counts.shape)
        watched = VBNTF(2, prior=prior, random_state=0, max_iter=15).fit(
            coords, values, counts.shape, callback=rebinding
        )
    np.testing.assert_array_equal(watched.elbo_trace_, plain.elbo_trace_)
    for got, expected in zip(watched.shapes_, plain.shapes_):
        np.testing.assert_array_equal(got, expected)
