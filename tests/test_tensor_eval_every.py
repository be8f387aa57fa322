"""`VBNTF(eval_every=...)`: SVI evaluates the full ELBO every this many epochs, as `VBNMF`."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import vbsnmf
from vbsnmf import _checkpoint, _model, _tensor


def _tensor_entries(shape=(30, 12, 8), density=0.2, seed=17):
    rng = np.random.default_rng(seed)
    tensor = rng.poisson(2.0, shape) * (rng.random(shape) < density)
    coords = np.argwhere(tensor)
    return coords, tensor[tuple(coords.T)].astype(float)


def _fit(coords, values, **params) -> vbsnmf.VBNTF:
    model = vbsnmf.VBNTF(3, solver="svi", random_state=11, n_threads=1, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(coords, values)


def test_the_nonzeros_form_evaluates_every_eval_every_epochs_and_fits_the_same():
    """Its evaluation changes nothing, so the factors at a given epoch are the every-epoch
    fit's bit for bit, and the trace is that fit's at the evaluated epochs and the last."""
    coords, values = _tensor_entries()
    common = dict(svi_form="nonzeros", n_epochs=8, tol=0.0)
    every = _fit(coords, values, **common)
    third = _fit(coords, values, eval_every=3, **common)
    np.testing.assert_array_equal(third.elbo_iter_, [3, 6, 8])
    np.testing.assert_array_equal(third.elbo_trace_, every.elbo_trace_[[2, 5, 7]])
    for mine, theirs in zip(third.shapes_, every.shapes_):
        np.testing.assert_array_equal(mine, theirs)
    assert third.n_iter_ == every.n_iter_ == 8


def test_the_last_value_of_the_trace_is_the_elbo_of_the_fitted_factors():
    coords, values = _tensor_entries()
    for form in ("nonzeros", "slices"):
        model = _fit(coords, values, svi_form=form, n_epochs=7, eval_every=2, tol=0.0)
        np.testing.assert_array_equal(model.elbo_iter_, [2, 4, 6, 7])
        data = _tensor.as_tensor_data(coords, values, (30, 12, 8))
        params = _tensor.TensorParams(list(model.shapes_), list(model.rates_))
        expected = _tensor.elbo(data, params, _model.GammaPrior(1.0, 1.0))
        assert model.elbo_trace_[-1] == pytest.approx(expected, rel=1e-12)


def test_the_stopping_rule_counts_evaluations():
    """Three changes within tol in a row: the fourth evaluation, epoch 4 evaluating every
    epoch and epoch 8 every second one (tol=1 holds any change of an ELBO this size)."""
    coords, values = _tensor_entries()
    every = _fit(coords, values, svi_form="nonzeros", n_epochs=30, tol=1.0)
    second = _fit(coords, values, svi_form="nonzeros", n_epochs=30, tol=1.0, eval_every=2)
    assert (every.n_iter_, second.n_iter_) == (4, 8)
    np.testing.assert_array_equal(second.elbo_iter_, [2, 4, 6, 8])


@pytest.mark.parametrize("form", ["nonzeros", "slices"])
def test_a_resumed_fit_evaluating_every_second_epoch_ends_bitwise(form, tmp_path):
    coords, values = _tensor_entries()
    path = tmp_path / "fit.ckpt"
    common = dict(svi_form=form, n_epochs=7, eval_every=2, tol=0.0, batch_size=7, max_iter=20)
    uninterrupted = _fit(coords, values, **common)

    def crash(epoch, params, trace):
        if epoch == 5:
            raise KeyboardInterrupt

    model = vbsnmf.VBNTF(3, solver="svi", random_state=11, n_threads=1, checkpoint=path, **common)
    with pytest.raises(KeyboardInterrupt):
        model.fit(coords, values, callback=crash)
    resumed = _fit(coords, values, checkpoint=path, resume=True, **common)
    np.testing.assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)
    np.testing.assert_array_equal(resumed.elbo_iter_, [2, 4, 6, 7])
    for mine, theirs in zip(resumed.shapes_, uninterrupted.shapes_):
        np.testing.assert_array_equal(mine, theirs)
    other = {**common, "eval_every": 1}
    with pytest.raises(_checkpoint.CheckpointMismatchError, match="eval_every"):
        _fit(coords, values, checkpoint=path, resume=True, **other)


def test_a_tensor_checkpoint_written_before_the_option_resumes_as_evaluating_every_epoch(
    tmp_path,
):
    """Such a checkpoint's config has no ``eval_every``; the fit it records evaluated every
    epoch, which ``eval_every=1`` (the default) continues bitwise."""
    coords, values = _tensor_entries()
    path = tmp_path / "fit.ckpt"
    common = dict(svi_form="nonzeros", n_epochs=6, tol=0.0)
    uninterrupted = _fit(coords, values, **common)
    _fit(coords, values, checkpoint=path, **{**common, "n_epochs": 3})
    arrays, meta = _checkpoint.load_checkpoint(path)
    del meta["config"]["eval_every"]
    _checkpoint.save_checkpoint(path, arrays, meta)
    resumed = _fit(coords, values, checkpoint=path, resume=True, **common)
    np.testing.assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_a_bad_eval_every_is_refused_before_any_pass(value, error):
    coords, values = _tensor_entries()
    with pytest.raises(error, match="eval_every"):
        vbsnmf.VBNTF(3, solver="svi", eval_every=value).fit(coords, values)
