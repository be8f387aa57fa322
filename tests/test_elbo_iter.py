"""``elbo_iter_``: the iteration (pass or epoch) at which each ELBO of ``elbo_trace_`` was
taken, for every fit that records a trace, through checkpoints old and new."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_array_equal

import vbsnmf
from vbsnmf import _checkpoint


class Stop(Exception):
    pass


def _counts(seed=0, shape=(60, 40)):
    return sp.csr_matrix(np.random.default_rng(seed).poisson(1.5, shape).astype(float))


def _fit(model, X, callback=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(X, callback=callback)


def _recording():
    """A callback that records the ``n_iter`` it got whenever the trace grew (the values
    appended since its last call, one per call for every fit here)."""
    seen: list[int] = []
    lengths: list[int] = []

    def callback(n_iter, params, trace):
        if len(trace) > (lengths[-1] if lengths else 0):
            assert len(trace) == len(lengths) + 1  # one value per call
            seen.append(n_iter)
            lengths.append(len(trace))

    return callback, seen


def _assert_consistent(model):
    iters = model.elbo_iter_
    assert isinstance(iters, np.ndarray) and iters.dtype == np.int64
    assert iters.shape == model.elbo_trace_.shape
    assert np.all(np.diff(iters) > 0)
    if iters.size:
        assert iters[0] >= 1 and iters[-1] <= model.n_iter_


# -- batch, plain and accelerated ----------------------------------------------------------
def test_plain_ascent_numbers_every_iteration():
    model = vbsnmf.VBNMF(3, accelerate=False, max_iter=9, tol=0.0, random_state=0, n_threads=1)
    _fit(model, _counts())
    _assert_consistent(model)
    assert model.n_iter_ == 9
    assert_array_equal(model.elbo_iter_, np.arange(1, 10))
    # a fit stopped by tol too: one value per iteration run
    loose = vbsnmf.VBNMF(3, accelerate=False, max_iter=500, tol=1e-3, random_state=0, n_threads=1)
    _fit(loose, _counts())
    assert loose.converged_ and loose.n_iter_ < 500
    assert_array_equal(loose.elbo_iter_, np.arange(1, loose.n_iter_ + 1))


@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_squarem_records_the_pass_the_callback_got(prior):
    """The accelerated trace keeps fewer values than passes (the start's pass and refused
    extrapolations keep none): each value's iteration is the ``n_iter`` the callback
    received when that value was appended, not its position in the trace."""
    callback, seen = _recording()
    model = vbsnmf.VBNMF(
        3, prior=prior, accelerate=True, max_iter=40, tol=0.0, random_state=3, n_threads=1
    )
    _fit(model, _counts(), callback)
    _assert_consistent(model)
    assert len(model.elbo_trace_) < model.n_iter_ == 40
    assert_array_equal(model.elbo_iter_, seen)
    assert model.elbo_iter_[0] == 2  # the start's pass keeps no q
    assert model.elbo_iter_[-1] == model.n_iter_
    assert np.any(np.diff(model.elbo_iter_) > 1)  # this fit refuses some extrapolations


def test_squarem_after_one_pass_has_no_values():
    model = vbsnmf.VBNMF(3, accelerate=True, max_iter=1, random_state=0, n_threads=1)
    _fit(model, _counts())
    assert model.elbo_trace_.size == 0 and model.elbo_iter_.shape == (0,)
    assert model.elbo_iter_.dtype == np.int64


# -- SVI ------------------------------------------------------------------------------------
SVI_FORMS = {
    "cells": dict(solver="svi", max_iter=20),
    "cells-gamma": dict(solver="svi", prior="gamma", max_iter=20),
    "nonzeros": dict(solver="svi", svi_form="nonzeros", prior="gamma"),
}


@pytest.mark.parametrize("form", sorted(SVI_FORMS))
def test_svi_numbers_the_evaluated_epochs(form):
    callback, seen = _recording()
    model = vbsnmf.VBNMF(
        3, n_epochs=7, eval_every=3, tol=0.0, random_state=0, n_threads=1, **SVI_FORMS[form]
    )
    _fit(model, _counts(), callback)
    _assert_consistent(model)
    assert model.n_iter_ == 7
    assert_array_equal(model.elbo_iter_, [3, 6, 7])
    assert_array_equal(seen, [3, 6, 7])


def test_svi_streamed_from_a_file_numbers_the_evaluated_epochs(tmp_path):
    import anndata

    path = tmp_path / "counts.h5ad"
    anndata.AnnData(_counts()).write_h5ad(path)
    model = vbsnmf.VBNMF(
        3, solver="svi", n_epochs=5, eval_every=2, tol=0.0, random_state=0, n_threads=1
    )
    _fit(model, str(path))
    assert_array_equal(model.elbo_iter_, [2, 4, 5])


# -- checkpoints ------------------------------------------------------------------------------
RESUMABLE = {
    "plain": dict(prior="gamma", accelerate=False, max_iter=30, tol=0.0),
    "squarem": dict(accelerate=True, max_iter=30, tol=0.0),
    "svi": dict(solver="svi", n_epochs=8, eval_every=3, tol=0.0, max_iter=20),
}
# where the callback stops the first run (iterations, passes or epochs): the SVI fit's
# checkpoint is then of epoch 7, between two evaluations
STOP_AT = {"plain": 11, "squarem": 14, "svi": 8}


def _model(kind, **extra):
    return vbsnmf.VBNMF(3, random_state=11, n_threads=1, **{**RESUMABLE[kind], **extra})


def _interrupted(kind, path):
    """A checkpointed fit of ``kind`` stopped by its callback at `STOP_AT`; returns the
    checkpoint's ``(arrays, meta)``."""

    def stop(n_iter, params, trace):
        if n_iter >= STOP_AT[kind]:
            raise Stop

    with pytest.raises(Stop):
        _fit(_model(kind, checkpoint=path, checkpoint_every=1), _counts(), stop)
    arrays, meta = _checkpoint.load_checkpoint(path)
    assert not meta["finished"] and arrays["elbo_trace"].size > 0
    return arrays, meta


@pytest.mark.parametrize("kind", sorted(RESUMABLE))
def test_a_resumed_fit_numbers_its_trace_as_an_uninterrupted_one(tmp_path, kind):
    path = tmp_path / "fit.ckpt"
    arrays, _ = _interrupted(kind, path)
    assert arrays["elbo_iter"].dtype == np.int64
    assert arrays["elbo_iter"].shape == arrays["elbo_trace"].shape
    resumed = _fit(_model(kind, checkpoint=path, checkpoint_every=1, resume=True), _counts())
    uninterrupted = _fit(_model(kind), _counts())
    assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)
    assert_array_equal(resumed.elbo_iter_, uninterrupted.elbo_iter_)
    assert resumed.n_iter_ == uninterrupted.n_iter_
    _assert_consistent(resumed)
    # a finished checkpoint returns the fit as it is
    again = _fit(_model(kind, checkpoint=path, resume=True), _counts())
    assert_array_equal(again.elbo_iter_, uninterrupted.elbo_iter_)


def _without_elbo_iter(path):
    """The checkpoint at ``path`` as the version before ``elbo_iter`` wrote it."""
    arrays, meta = _checkpoint.load_checkpoint(path)
    del arrays["elbo_iter"]
    _checkpoint.save_checkpoint(path, arrays, meta)
    return arrays


@pytest.mark.parametrize("kind", sorted(RESUMABLE))
def test_a_checkpoint_without_elbo_iter_resumes(tmp_path, kind):
    """Written before the iterations were recorded: the resumed fit is bitwise the same,
    its stored part numbered as derived (exactly for plain ascent and this SVI fit; for
    SQUAREM as the passes up to the checkpoint's), what follows as recorded."""
    path = tmp_path / "fit.ckpt"
    _interrupted(kind, path)
    n_stored = _without_elbo_iter(path)["elbo_trace"].size
    resumed = _fit(_model(kind, checkpoint=path, resume=True), _counts())
    uninterrupted = _fit(_model(kind), _counts())
    _assert_consistent(resumed)
    assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)
    if kind == "squarem":
        assert_array_equal(resumed.elbo_iter_[n_stored:], uninterrupted.elbo_iter_[n_stored:])
    else:
        assert_array_equal(resumed.elbo_iter_, uninterrupted.elbo_iter_)


def test_an_svi_checkpoint_without_elbo_iter_that_ended_off_the_schedule_resumes(tmp_path):
    """n_epochs=7 with eval_every=3 evaluated epochs 3, 6 and 7 (the last); resumed with
    more epochs the old checkpoint numbers them as the new one does."""
    numbered = {}
    for old in (False, True):
        path = tmp_path / f"{old}.ckpt"
        _fit(_model("svi", checkpoint=path, n_epochs=7), _counts())
        if old:
            _without_elbo_iter(path)
        numbered[old] = _fit(_model("svi", checkpoint=path, resume=True, n_epochs=10), _counts())
    assert_array_equal(numbered[False].elbo_iter_, [3, 6, 7, 9, 10])
    assert_array_equal(numbered[True].elbo_iter_, numbered[False].elbo_iter_)
    assert_array_equal(numbered[True].elbo_trace_, numbered[False].elbo_trace_)


def test_restored_elbo_iter_derives_what_old_checkpoints_lack():
    def old(n_values):
        return {"elbo_trace": -np.arange(1.0, n_values + 1.0)}

    assert _checkpoint.restored_elbo_iter(old(4), 4) == [1, 2, 3, 4]  # plain ascent
    assert _checkpoint.restored_elbo_iter(old(4), 6) == [3, 4, 5, 6]  # SQUAREM's passes
    assert _checkpoint.restored_elbo_iter(old(0), 1) == []
    assert _checkpoint.restored_elbo_iter(old(1), 4, eval_every=3) == [3]  # mid-fit
    assert _checkpoint.restored_elbo_iter(old(3), 7, eval_every=3) == [3, 6, 7]
    assert _checkpoint.restored_elbo_iter(old(2), 6, eval_every=3) == [3, 6]
    # more values than the schedule (an earlier run ended off it): the latest epochs
    assert _checkpoint.restored_elbo_iter(old(5), 10, eval_every=3) == [6, 7, 8, 9, 10]
    stored = {**old(2), "elbo_iter": np.array([2, 5])}
    assert _checkpoint.restored_elbo_iter(stored, 6) == [2, 5]


@pytest.mark.parametrize(
    "damage",
    [
        lambda iters: iters[::-1].copy(),
        lambda iters: iters[:-1],
        lambda iters: iters + 100,
        lambda iters: iters.astype(float),
        lambda iters: iters - iters[0],
    ],
)
@pytest.mark.parametrize("kind", ["plain", "squarem", "svi"])
def test_a_damaged_elbo_iter_is_refused(tmp_path, kind, damage):
    path = tmp_path / "fit.ckpt"
    _interrupted(kind, path)
    arrays, meta = _checkpoint.load_checkpoint(path)
    arrays["elbo_iter"] = damage(arrays["elbo_iter"])
    _checkpoint.save_checkpoint(path, arrays, meta)
    with pytest.raises(_checkpoint.CheckpointError, match="elbo_iter"):
        _fit(_model(kind, checkpoint=path, resume=True), _counts())


# -- the tensor estimator ---------------------------------------------------------------------
def _tensor(seed=17, shape=(20, 12, 8)):
    rng = np.random.default_rng(seed)
    tensor = rng.poisson(2.0, shape) * (rng.random(shape) < 0.25)
    coords = np.argwhere(tensor)
    return coords, tensor[tuple(coords.T)].astype(float)


def _tensor_fit(model, callback=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(*_tensor(), callback=callback)


TENSOR_FITS = {
    "plain": dict(accelerate=False, max_iter=12, tol=0.0),
    "squarem": dict(accelerate=True, max_iter=25, tol=0.0),
    "svi": dict(solver="svi", n_epochs=4, batch_size=5, tol=0.0, max_iter=10),
}


@pytest.mark.parametrize("kind", sorted(TENSOR_FITS))
def test_vbntf_numbers_its_trace(kind):
    callback, seen = _recording()
    model = vbsnmf.VBNTF(3, random_state=0, n_threads=1, **TENSOR_FITS[kind])
    _tensor_fit(model, callback)
    _assert_consistent(model)
    assert_array_equal(model.elbo_iter_, seen)
    if kind == "squarem":
        assert model.elbo_iter_[0] == 2 and len(model.elbo_trace_) < model.n_iter_
    else:  # one value per iteration, or per epoch (evaluated after every one)
        assert_array_equal(model.elbo_iter_, np.arange(1, model.n_iter_ + 1))


@pytest.mark.parametrize("kind", sorted(TENSOR_FITS))
@pytest.mark.parametrize("old", [False, True])
def test_vbntf_resumed_numbers_its_trace_as_an_uninterrupted_one(tmp_path, kind, old):
    path = tmp_path / "fit.ckpt"
    stop_at = 3 if kind == "svi" else 8

    def model(**extra):
        return vbsnmf.VBNTF(3, random_state=11, n_threads=1, **TENSOR_FITS[kind], **extra)

    def stop(n_iter, params, trace):
        if n_iter >= stop_at:
            raise Stop

    with pytest.raises(Stop):
        _tensor_fit(model(checkpoint=path, checkpoint_every=1), stop)
    n_stored = _without_elbo_iter(path)["elbo_trace"].size if old else 0
    resumed = _tensor_fit(model(checkpoint=path, resume=True))
    uninterrupted = _tensor_fit(model())
    _assert_consistent(resumed)
    assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)
    assert_array_equal(resumed.elbo_iter_[n_stored:], uninterrupted.elbo_iter_[n_stored:])
    if not (old and kind == "squarem"):  # derived exactly
        assert_array_equal(resumed.elbo_iter_, uninterrupted.elbo_iter_)


# -- Dask -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    with distributed.Client(cluster) as dask_client:
        yield dask_client
    cluster.close()


DASK_FITS = {
    "plain": dict(prior="gamma", accelerate=False, max_iter=10, tol=0.0),
    "squarem": dict(accelerate=True, max_iter=20, tol=0.0),
    "svi": dict(solver="svi", n_epochs=7, eval_every=3, tol=0.0, max_iter=20),
}


@pytest.mark.parametrize("kind", sorted(DASK_FITS))
def test_a_dask_fit_numbers_its_trace(client, kind):
    import dask.array as da

    X = da.from_array(_counts(), chunks=(25, -1))
    callback, seen = _recording()
    model = vbsnmf.VBNMF(3, random_state=0, n_threads=1, **DASK_FITS[kind])
    _fit(model, X, callback)
    _assert_consistent(model)
    assert_array_equal(model.elbo_iter_, seen)
    expected = {"plain": np.arange(1, 11), "svi": [3, 6, 7]}
    if kind in expected:
        assert_array_equal(model.elbo_iter_, expected[kind])
    else:
        assert model.elbo_iter_[0] == 2 and model.elbo_iter_[-1] <= model.n_iter_ == 20
    fit = vbsnmf.fit_svi_dask if kind == "svi" else vbsnmf.fit_dask
    options = {k: v for k, v in DASK_FITS[kind].items() if k != "solver"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        result = fit(X, 3, client=client, random_state=0, n_threads=1, **options)
    assert_array_equal(result.elbo_iter, model.elbo_iter_)
    assert result.elbo_iter.dtype == np.int64


# -- the tools: tl.nmf's record, pl.elbo's axis, io's elbo.tsv ------------------------------
def _tool_fit(adata, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, 3, random_state=0, n_threads=1, **options)
    return adata.uns["nmf"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [({"solver": "svi", "n_epochs": 10, "eval_every": 5}, [5, 10]), ({"max_iter": 20}, None)],
)
def test_the_elbo_plot_and_table_put_each_value_at_its_iteration(
    pbmc_tiny, tmp_path, options, expected
):
    """`pl.elbo` and ``elbo.tsv`` numbered the values 1, 2, ...: SVI's two evaluations of
    ten epochs were drawn at iterations 1 and 2, SQUAREM's 18 values of 20 passes ended at
    18. They now sit at the pass (epoch) `tl.nmf` records for each."""
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    info = _tool_fit(pbmc_tiny, **options)
    iterations = np.asarray(info["elbo_iter"])
    assert iterations.shape == np.shape(info["elbo_trace"]) and iterations[-1] == info["n_iter"]
    assert np.all(np.diff(iterations) > 0)
    if expected is not None:
        assert_array_equal(iterations, expected)
    else:  # SQUAREM: fewer values than passes
        assert iterations.size < info["n_iter"]
    axes = vbsnmf.pl.elbo(pbmc_tiny, show=False)
    assert_array_equal(axes[0].lines[0].get_xdata(), iterations)
    vbsnmf.io.write_nmf_tables(pbmc_tiny, tmp_path)
    table = pd.read_csv(tmp_path / "elbo.tsv", sep="\t")
    assert_array_equal(table["iteration"], iterations)
    matplotlib.pyplot.close("all")


def test_a_warm_start_counts_its_iterations_on_from_the_stored_fit(pbmc_tiny):
    """`tl.nmf(warm_start=True)` joins the traces and adds the stored passes to ``n_iter``;
    the continued fit's iterations count on from there too."""
    first = _tool_fit(pbmc_tiny, max_iter=6, accelerate=False)
    stored_iter, stored_passes = np.asarray(first["elbo_iter"]), int(first["n_iter"])
    assert_array_equal(stored_iter, np.arange(1, 7))
    again = _tool_fit(pbmc_tiny, max_iter=4, accelerate=False, warm_start=True)
    assert again["n_iter"] == stored_passes + 4
    assert_array_equal(again["elbo_iter"], np.arange(1, 11))
    assert len(again["elbo_trace"]) == 10


def test_a_record_from_before_elbo_iter_numbers_its_values_from_one(pbmc_tiny):
    """An AnnData fitted by a version that kept no ``elbo_iter`` still plots: its values
    numbered 1, 2, ..., as that version drew them."""
    from vbsnmf._utils import elbo_iterations

    info = dict(_tool_fit(pbmc_tiny, max_iter=8, accelerate=False))
    info.pop("elbo_iter")
    assert_array_equal(elbo_iterations(info), np.arange(1, len(info["elbo_trace"]) + 1))
