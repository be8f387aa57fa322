"""Thirty-first hostile pass, SVI's hold (docs/model.md, "The hold"): a random start's
factor shapes held at 1 under the learned prior until an evaluation changes the ELBO by at
most HOLD_TOL, in memory, streamed from a file, on Dask and in `VBNTF`'s slices form.

Independent references: the rule restated here from the trace (`_released`), and the fits
of the other routes, which must agree with the in-memory cells form step for step.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_array_equal

import vbsnmf
from vbsnmf import _checkpoint
from vbsnmf._model import HOLD_TOL


def _released(trace) -> int | None:
    """The index of the first ELBO value whose change from the one before is at most
    HOLD_TOL relative (restated from docs/model.md); None if none is."""
    for i in range(1, len(trace)):
        if abs(trace[i] - trace[i - 1]) <= HOLD_TOL * abs(trace[i - 1]):
            return i
    return None


def _spread(n_cells=160, n_genes=60, seed=0) -> sp.csr_array:
    """A Poisson NMF draw (K = 3) whose cells' depths span about three orders of magnitude."""
    rng = np.random.default_rng(seed)
    cells = rng.gamma(0.5, 1.0, (n_cells, 3)) * np.exp(rng.uniform(-2, 4, (n_cells, 1)))
    genes = rng.gamma(0.3, 1.0, (3, n_genes)) * np.exp(rng.uniform(-2, 2, (1, n_genes)))
    X = rng.poisson(cells @ genes).astype(np.float64)
    return sp.csr_array(X[X.sum(axis=1) > 0][:, X.sum(axis=0) > 0])


def _quiet(fit, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return fit(*args, **kwargs)


def _svi(**options) -> vbsnmf.VBNMF:
    settings = {"random_state": 0, "n_threads": 1, "solver": "svi", "n_epochs": 20, **options}
    return vbsnmf.VBNMF(3, **settings)


def _held_epochs(**options):
    """Fit `_spread` by SVI; for each epoch whether every factor shape (cells and genes) is
    exactly 1 as the callback sees it, and the final model."""
    held = []

    def record(epoch, params, trace):
        sides = (params.row_scale.factor_shape, params.col_scale.factor_shape)
        held.append(all(np.all(side == 1.0) for side in sides))

    model = _quiet(_svi(**options).fit, _spread(), callback=record)
    return held, model


# -- a hand-edited hold flag -----------------------------------------------------------------
@pytest.mark.parametrize("flag", ["false", None, 0])
def test_an_svi_checkpoint_whose_hold_flag_is_not_a_bool_is_damaged(tmp_path, flag):
    """Read with bool(), "false" held the fit and None or 0 released it: the flag is
    checked as the batch fit's is, and the checkpoint refused as damaged, naming it."""
    path = tmp_path / "svi.ckpt"
    _quiet(_svi(n_epochs=2, checkpoint=path).fit, _spread())
    arrays, meta = _checkpoint.load_checkpoint(path)
    assert meta["held"] is True
    _checkpoint.save_checkpoint(path, arrays, {**meta, "held": flag})
    with pytest.raises(vbsnmf.CheckpointError, match=r"damaged: its hold flag is .*'held'"):
        _quiet(_svi(n_epochs=4, checkpoint=path, resume=True).fit, _spread())


def test_a_plain_batch_checkpoint_whose_hold_flag_is_not_a_bool_is_damaged(tmp_path):
    path = tmp_path / "batch.ckpt"
    model = {"random_state": 0, "n_threads": 1, "checkpoint": path, "accelerate": False}
    _quiet(vbsnmf.VBNMF(3, max_iter=2, **model).fit, _spread())
    arrays, meta = _checkpoint.load_checkpoint(path)
    assert meta["hold_shapes"] is True
    _checkpoint.save_checkpoint(path, arrays, {**meta, "hold_shapes": "no"})
    with pytest.raises(vbsnmf.CheckpointError, match=r"its hold flag is 'no' \('hold_shapes'\)"):
        _quiet(vbsnmf.VBNMF(3, max_iter=4, resume=True, **model).fit, _spread())


@pytest.mark.parametrize("options", [{"prior_shape": 0.3}, {"prior": "gamma"}])
def test_an_svi_checkpoint_held_under_a_prior_without_shapes_to_learn_is_damaged(tmp_path, options):
    """ "held": true set by hand where the prior learns no factor shapes: resumed, an
    AttributeError ('NoneType' object has no attribute 'factor_shape') under prior_shape,
    and under the fixed prior a fit whose stopping rule waited for a release."""
    path = tmp_path / "svi.ckpt"
    _quiet(_svi(n_epochs=2, checkpoint=path, **options).fit, _spread())
    arrays, meta = _checkpoint.load_checkpoint(path)
    assert meta["held"] is False
    _checkpoint.save_checkpoint(path, arrays, {**meta, "held": True})
    with pytest.raises(vbsnmf.CheckpointError, match=r"is true \('held'\), but its prior has no"):
        _quiet(_svi(n_epochs=6, checkpoint=path, resume=True, **options).fit, _spread())


def test_a_tensor_checkpoint_held_under_prior_shape_is_damaged(tmp_path):
    X = _spread().tocoo()
    coords = np.stack([X.row, X.col], axis=1)
    path = tmp_path / "t.ckpt"
    common = dict(prior="hierarchical", prior_shape=0.3, solver="svi", random_state=0)
    common.update(n_threads=1, checkpoint=path)
    _quiet(vbsnmf.VBNTF(3, n_epochs=2, **common).fit, coords, X.data, X.shape)
    arrays, meta = _checkpoint.load_checkpoint(path)
    _checkpoint.save_checkpoint(path, arrays, {**meta, "held": True})
    with pytest.raises(vbsnmf.CheckpointError, match=r"is true \('held'\), but its prior has no"):
        _quiet(vbsnmf.VBNTF(3, n_epochs=4, resume=True, **common).fit, coords, X.data, X.shape)


# -- a fit that ends while it still holds ------------------------------------------------------
def test_an_svi_fit_that_ends_while_held_says_so_not_raise_tol():
    """tol=0.05 is met three times in a row while the shapes are still held: the stopping
    rule waits for the release, so "before the relative ELBO change fell below tol; raise
    n_epochs or tol" was wrong twice over. The warning names the hold and n_epochs."""
    tol = 0.05
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _svi(n_epochs=8, tol=tol).fit(_spread())
    trace = model.elbo_trace_
    changes = np.abs(np.diff(trace)) / np.abs(trace[:-1])
    assert _released(trace) is None and np.sum(changes <= tol) >= 3, changes
    assert not model.converged_
    (message,) = [
        str(w.message) for w in caught if issubclass(w.category, vbsnmf.ConvergenceWarning)
    ]
    assert message.startswith("SVI stopped after n_epochs=8 epochs while it still held")
    assert message.endswith("raise n_epochs.") and "raise n_epochs or tol" not in message


def test_a_batch_fit_that_ends_while_held_says_so():
    with pytest.warns(vbsnmf.ConvergenceWarning, match="still held its factor shapes") as caught:
        vbsnmf.VBNMF(3, max_iter=2, random_state=0, n_threads=1).fit(_spread())
    assert "raise max_iter." in str(caught[0].message)


def test_a_released_fit_that_ends_unconverged_names_its_evaluations():
    """After the release the warning does not speak of the hold; with fewer than four
    evaluations since the release no tol could have stopped the fit, so it advises
    n_epochs alone (the thirty-third pass: it advised "raise n_epochs or tol" here)."""
    held, model = _held_epochs()
    assert held[0] and not held[-1]
    release = _released(model.elbo_trace_)
    n_epochs = release + 2  # released, fewer than three evaluations after it
    with pytest.warns(vbsnmf.ConvergenceWarning, match="since its factor shapes were") as caught:
        _svi(n_epochs=n_epochs).fit(_spread())
    message = str(caught[0].message)
    assert "held" not in message and message.endswith(
        "no tol could have stopped it; raise n_epochs."
    )


# -- the rule, on every route -------------------------------------------------------------------
def test_the_hold_follows_the_rule_restated_from_the_docs():
    """A guard: held exactly while no earlier evaluation released it, with eval_every=2
    too (the release waits for an evaluation)."""
    for options in ({}, {"eval_every": 2}):
        held, model = _held_epochs(**options)
        every = options.get("eval_every", 1)
        release = _released(model.elbo_trace_)
        assert release is not None
        released_at_epoch = int(model.elbo_iter_[release])
        expected = [epoch <= released_at_epoch for epoch in range(1, len(held) + 1)]
        assert held == expected, (every, held)


def test_a_streamed_svi_fit_holds_and_resumes_as_the_in_memory_one(tmp_path):
    """A guard: from an .h5ad, the same trace as in memory through the release, and a
    checkpoint saved during the hold resumes bitwise."""
    X = _spread()
    file = tmp_path / "x.h5ad"
    ad.AnnData(X).write_h5ad(file)
    memory = _quiet(_svi().fit, X)
    streamed = _quiet(_svi().fit, str(file))
    assert _released(memory.elbo_trace_) is not None
    assert_array_equal(streamed.elbo_trace_, memory.elbo_trace_)

    class Stop(Exception):
        pass

    def stop(epoch, params, trace):
        if epoch >= 2:
            raise Stop

    path = tmp_path / "s.ckpt"
    with pytest.raises(Stop):
        _quiet(_svi(checkpoint=path).fit, str(file), callback=stop)
    assert _checkpoint.load_checkpoint(path)[1]["held"] is True
    resumed = _quiet(_svi(checkpoint=path, resume=True).fit, str(file))
    assert_array_equal(resumed.elbo_trace_, streamed.elbo_trace_)
    assert_array_equal(resumed.components_, streamed.components_)


def test_two_mode_slices_svi_holds_as_the_cells_form_through_the_release():
    """A guard: test_tensor's equality at D = 2, run past the release (tol=0 and few local
    passes: the two forms' local stopping rules differ otherwise)."""
    X = _spread().tocoo()
    coords = np.stack([X.row, X.col], axis=1)
    common = dict(prior="hierarchical", solver="svi", batch_size=32, n_epochs=20)
    common.update(tol=0.0, max_iter=6, random_state=0, n_threads=1)
    nmf = _quiet(vbsnmf.VBNMF(3, **common).fit, X.tocsr())
    ntf = _quiet(vbsnmf.VBNTF(3, svi_mode=0, **common).fit, coords, X.data, X.shape)
    release = _released(nmf.elbo_trace_)
    assert release is not None and release < len(nmf.elbo_trace_) - 3
    np.testing.assert_allclose(ntf.elbo_trace_, nmf.elbo_trace_, rtol=1e-11, atol=0)
    np.testing.assert_allclose(
        ntf.hyperparameters_[1]["factor_shape"], nmf.hyperparameters_["gene_factor_shape"]
    )


def test_a_three_mode_slices_fit_held_resumes_bitwise(tmp_path):
    """A guard: a VBNTF slices-form checkpoint saved during the hold records it and
    resumes to the uninterrupted fit."""
    rng = np.random.default_rng(0)
    shape = (50, 20, 12)
    factors = [rng.gamma(0.5, 1.0, (n, 3)) for n in shape]
    factors[0] *= np.exp(rng.uniform(-2, 3, (shape[0], 1)))
    counts = rng.poisson(np.einsum("ik,jk,lk->ijl", *factors))
    coords, values = np.argwhere(counts > 0), counts[counts > 0].astype(np.float64)
    common = dict(prior="hierarchical", solver="svi", n_epochs=15, random_state=0, n_threads=1)
    full = _quiet(vbsnmf.VBNTF(3, **common).fit, coords, values, shape)
    assert _released(full.elbo_trace_) is not None

    class Stop(Exception):
        pass

    def stop(epoch, params, trace):
        if epoch >= 2:
            raise Stop

    path = tmp_path / "t.ckpt"
    with pytest.raises(Stop):
        _quiet(vbsnmf.VBNTF(3, checkpoint=path, **common).fit, coords, values, shape, callback=stop)
    assert _checkpoint.load_checkpoint(path)[1]["held"] is True
    resumed = _quiet(
        vbsnmf.VBNTF(3, checkpoint=path, resume=True, **common).fit, coords, values, shape
    )
    assert_array_equal(resumed.elbo_trace_, full.elbo_trace_)
    for got, expected in zip(resumed.factors_, full.factors_):
        assert_array_equal(got, expected)


def test_svi_on_dask_holds_as_in_memory_and_warns_of_the_hold():
    """A guard for the hold on Dask (`fit_svi_dask`, in-process cluster): the same trace as
    in memory through the release, shapes exactly 1 until the epoch after it; and a fit
    that ends while held warns of the hold (this part fails before the fix)."""
    distributed = pytest.importorskip("distributed")
    da = pytest.importorskip("dask.array")
    X = _spread()
    memory = _quiet(_svi().fit, X)
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    try:
        with distributed.Client(cluster) as client:
            chunks = da.from_array(X.toarray(), chunks=(60, X.shape[1]))
            held = []

            def record(epoch, params, trace):
                held.append(bool(np.all(params.col_scale.factor_shape == 1.0)))

            fitted = _quiet(
                vbsnmf.fit_svi_dask,
                chunks,
                3,
                client=client,
                callback=record,
                random_state=0,
                n_threads=1,
                n_epochs=20,
            )
            with pytest.warns(vbsnmf.ConvergenceWarning, match="still held its factor shapes"):
                vbsnmf.fit_svi_dask(chunks, 3, client=client, random_state=0, n_epochs=2)
    finally:
        cluster.close()
    np.testing.assert_allclose(fitted.elbo_trace, memory.elbo_trace_, rtol=1e-10)
    release_epoch = int(memory.elbo_iter_[_released(memory.elbo_trace_)])
    assert held == [epoch <= release_epoch for epoch in range(1, len(held) + 1)]
