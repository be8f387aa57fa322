"""Checkpoints: atomic writes, and a fit killed at a random point then resumed ends with
exactly (bitwise) the ELBO trace of an uninterrupted fit, for batch VB and SVI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import vbsnmf
from vbsnmf import _checkpoint
from vbsnmf._model import hold_released

ROOT = Path(__file__).resolve().parents[1]

FITS = {
    "batch": dict(prior="gamma", max_iter=300, tol=0.0),
    "svi-cells": dict(
        prior="gamma", solver="svi", n_epochs=14, batch_size=200, tol=0.0, max_iter=40
    ),
    "svi-textbook": dict(prior="gamma", solver="svi", svi_form="nonzeros", n_epochs=200, tol=0.0),
    # The learned prior: SQUAREM-accelerated batch, and the cells form with its scales.
    "batch-learned": dict(max_iter=300, tol=0.0),
    "batch-nndsvda": dict(init="nndsvda", max_iter=300, tol=0.0),
    "svi-cells-learned": dict(solver="svi", n_epochs=8, batch_size=200, tol=0.0, max_iter=40),
}
# The killed child pauses this long after every iteration (batch) or epoch (SVI), which
# leaves its numbers alone but makes it last at least 4 s whatever the machine's speed:
# the kill, within 1 s of the first checkpoint, always lands mid-fit.
CHILD_PAUSE = {
    "batch": 0.015,
    "svi-cells": 0.3,
    "svi-textbook": 0.02,
    "batch-learned": 0.015,
    "batch-nndsvda": 0.015,
    "svi-cells-learned": 0.5,
}


def _model(kind: str, checkpoint=None, resume=False) -> vbsnmf.VBNMF:
    return vbsnmf.VBNMF(
        4,
        random_state=11,
        n_threads=1,
        checkpoint=checkpoint,
        resume=resume,
        **FITS[kind],
    )


def _fit(model, callback=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(vbsnmf.datasets.pbmc_tiny().X, callback=callback)


def test_save_is_atomic_and_round_trips(tmp_path, monkeypatch):
    path = tmp_path / "fit.ckpt"
    first = {"values": np.arange(5.0)}
    _checkpoint.save_checkpoint(path, first, {"epoch": 1})
    arrays, meta = _checkpoint.load_checkpoint(path)
    assert_array_equal(arrays["values"], first["values"]) and meta == {"epoch": 1}

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        _checkpoint.save_checkpoint(path, {"values": np.zeros(5)}, {"epoch": 2})
    monkeypatch.undo()
    arrays, meta = _checkpoint.load_checkpoint(path)  # the old checkpoint is intact
    assert_array_equal(arrays["values"], first["values"]) and meta["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.ckpt"]  # no temp file left


def test_generator_state_round_trips():
    rng = np.random.default_rng(5)
    rng.random(7)
    restored = _checkpoint.rng_from_json(_checkpoint.rng_state_json(rng))
    assert_array_equal(restored.permutation(1000), rng.permutation(1000))


def test_checkpoint_of_another_fit_is_refused(tmp_path, pbmc_tiny):
    path = tmp_path / "fit.ckpt"
    _fit(vbsnmf.VBNMF(3, random_state=0, max_iter=3, n_threads=1, checkpoint=path, prior="gamma"))
    other = vbsnmf.VBNMF(
        4, random_state=0, max_iter=3, n_threads=1, checkpoint=path, resume=True, prior="gamma"
    )
    with pytest.raises(_checkpoint.CheckpointMismatchError, match="n_components"):
        other.fit(pbmc_tiny.X)


def test_resume_without_a_checkpoint_is_a_fresh_fit(tmp_path):
    fresh = _fit(vbsnmf.VBNMF(3, random_state=2, max_iter=15, tol=0.0, n_threads=1, prior="gamma"))
    resumed = _fit(
        vbsnmf.VBNMF(
            3,
            random_state=2,
            max_iter=15,
            tol=0.0,
            n_threads=1,
            checkpoint=tmp_path / "new.ckpt",
            resume=True,
            prior="gamma",
        )
    )
    assert_array_equal(resumed.elbo_trace_, fresh.elbo_trace_)
    assert (tmp_path / "new.ckpt").exists()


_CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_checkpoint import CHILD_PAUSE, _fit, _model
    pause = CHILD_PAUSE[{kind!r}]
    _fit(_model({kind!r}, checkpoint={path!r}), callback=lambda *_: time.sleep(pause))
    """
)


@pytest.mark.parametrize("kind", sorted(FITS))
def test_killed_fit_resumes_to_the_uninterrupted_trace(tmp_path, kind):
    path = tmp_path / f"{kind}.ckpt"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(tests=str(ROOT / "tests"), kind=kind, path=str(path))],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while not path.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.exists(), "the child wrote no checkpoint"
        delay = np.random.default_rng(zlib.crc32(kind.encode())).uniform(0.0, 1.0)
        time.sleep(delay)
    finally:
        child.kill()
        child.wait()
    assert child.returncode != 0, "the child finished before it was killed; lengthen the fit"
    _, meta = _checkpoint.load_checkpoint(path)
    assert not meta["finished"]
    resumed = _fit(_model(kind, checkpoint=path, resume=True))
    uninterrupted = _fit(_model(kind))
    assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)
    assert_array_equal(resumed.gene_shape_, uninterrupted.gene_shape_)
    assert_array_equal(resumed.cell_shape_, uninterrupted.cell_shape_)
    # Resuming a finished fit returns it unchanged.
    again = _fit(_model(kind, checkpoint=path, resume=True))
    assert_array_equal(again.elbo_trace_, uninterrupted.elbo_trace_)


# -- damaged checkpoints and other data (issue 14) -------------------------------------------
def _small_counts(seed=0):
    import scipy.sparse as sp

    return sp.csr_matrix(np.random.default_rng(seed).poisson(1.5, (60, 40)).astype(float))


def _rewrite(path: Path, change) -> None:
    """The checkpoint at ``path`` with its arrays passed through ``change``, meta kept."""
    arrays, meta = _checkpoint.load_checkpoint(path)
    change(arrays)
    _checkpoint.save_checkpoint(path, arrays, meta)


def _set(name, value):
    return lambda arrays: arrays.__setitem__(name, value(arrays[name]))


def _with_nan(array):
    array = array.copy()
    array.flat[3] = np.nan
    return array


DAMAGED = {
    "row_shape cut to 10 rows": (_set("row_shape", lambda a: a[:10]), "row_shape"),
    "NaN in col_shape": (_set("col_shape", _with_nan), "col_shape"),
    "negative col_rate": (_set("col_rate", lambda a: -a), "col_rate"),
    "zero row_rate": (_set("row_rate", np.zeros_like), "row_rate"),
    "arrays of another K": (
        lambda arrays: arrays.update(
            {name: arrays[name][..., :2] for name in ("row_shape", "col_shape")}
        ),
        "row_shape",
    ),
    "col_rate missing": (lambda arrays: arrays.pop("col_rate"), "col_rate"),
    "infinite ELBO": (_set("elbo_trace", lambda a: np.append(a, np.inf)), "elbo_trace"),
}


@pytest.mark.parametrize("kind", ["batch", "svi-cells"])
@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path, damage, kind):
    path = tmp_path / "fit.ckpt"
    settings = dict(FITS[kind], max_iter=3, n_epochs=2)
    X = _small_counts()
    _fit_on(vbsnmf.VBNMF(3, random_state=0, n_threads=1, checkpoint=path, **settings), X)
    change, array_name = DAMAGED[damage]
    _rewrite(path, change)
    resumed = vbsnmf.VBNMF(
        3, random_state=0, n_threads=1, checkpoint=path, resume=True, prior="gamma"
    )
    resumed.set_params(**settings)
    with pytest.raises(ValueError, match=array_name) as caught:
        _fit_on(resumed, X)
    assert str(path) in str(caught.value)
    assert not hasattr(resumed, "components_")


@pytest.mark.parametrize("accelerate", [False, True])
def test_a_checkpoint_beyond_the_float_range_stops_the_fit_not_its_trace(
    tmp_path, capsys, accelerate
):
    """A checkpoint whose factor shapes were multiplied by 1e300 (positive and finite, so
    it passes the checks on load) scores far below its trace's last ELBO in the resumed
    fit's first pass: refused as damaged (it went on to an infinite ELBO and a
    FloatingPointError), without numpy's overflow warning first, and the command line says
    so in one line, exit 2."""
    import anndata

    from vbsnmf import cli

    path = tmp_path / "fit.ckpt"
    model = vbsnmf.VBNMF(3, accelerate=accelerate, max_iter=5, random_state=0, n_threads=1)
    X = _small_counts()
    _fit_on(model.set_params(checkpoint=path), X)
    name = ("current_" if accelerate else "") + "row_factor_shape"
    _rewrite(path, _set(name, lambda shapes: shapes * 1e300))
    with warnings.catch_warnings():  # one message: no numpy overflow warning before it
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(_checkpoint.CheckpointError, match="checkpoint is damaged"):
            _fit_on(model.set_params(resume=True, max_iter=9), X)
    if not accelerate:  # the command line fits the default, accelerated
        return
    counts = tmp_path / "counts.h5ad"
    anndata.AnnData(X).write_h5ad(counts)
    argv = ["fit", counts, "-k", "3", "--max-iter", "9", "--seed", "0", "--threads", "1"]
    argv += ["--quiet", "--checkpoint", path, "--resume", "-o", tmp_path / "out"]
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "checkpoint is damaged" in err, err


@pytest.mark.parametrize("accelerate", [False, True])
def test_a_batch_checkpoint_whose_trace_decreases_is_refused(tmp_path, accelerate):
    """Coordinate ascent's trace never decreases: a stored one that does is not the fit's
    (it was resumed, and the fit's trace then decreased)."""
    path = tmp_path / "fit.ckpt"
    model = vbsnmf.VBNMF(3, accelerate=accelerate, max_iter=6, random_state=0, n_threads=1)
    _fit_on(model.set_params(checkpoint=path), _small_counts())
    _rewrite(path, _set("elbo_trace", lambda trace: trace[::-1].copy()))
    with pytest.raises(_checkpoint.CheckpointError, match="ELBO trace decreases"):
        _fit_on(model.set_params(resume=True, max_iter=9), _small_counts())


@pytest.mark.parametrize("passes", [10**30, 0, "trace"])
def test_an_accelerated_checkpoint_with_an_impossible_pass_count_is_refused(tmp_path, passes):
    """A pass counter that no SQUAREM fit reaches with the stored trace (T values need
    T + 1 to 1.5 (T + 1) passes): 10**30 returned at once as a fit of max_iter passes."""
    path = tmp_path / "fit.ckpt"
    model = vbsnmf.VBNMF(3, accelerate=True, max_iter=12, random_state=0, n_threads=1)
    _fit_on(model.set_params(checkpoint=path), _small_counts())
    arrays, meta = _checkpoint.load_checkpoint(path)
    n_kept = arrays["elbo_trace"].size
    assert n_kept + 1 <= meta["n_passes"] <= 1.5 * (n_kept + 1)
    meta["n_passes"] = n_kept if passes == "trace" else passes
    _checkpoint.save_checkpoint(path, arrays, meta)
    with pytest.raises(_checkpoint.CheckpointError, match=f"for {meta['n_passes']} passes"):
        _fit_on(model.set_params(resume=True, max_iter=20), _small_counts())


def test_a_checkpoint_holding_the_other_ascents_arrays_is_refused(tmp_path):
    """An accelerated fit's checkpoint with a plain fit's arrays, and the other way round
    (each with its own settings): refused as damaged, naming the array its fit saves (it
    was a KeyError from inside the resume)."""
    X = _small_counts()
    paths, stored = {}, {}
    for accelerate in (True, False):
        paths[accelerate] = tmp_path / f"{accelerate}.ckpt"
        model = vbsnmf.VBNMF(
            3, prior="gamma", accelerate=accelerate, max_iter=4, random_state=0, n_threads=1
        )
        _fit_on(model.set_params(checkpoint=paths[accelerate]), X)
        stored[accelerate] = _checkpoint.load_checkpoint(paths[accelerate])
    for accelerate, missing in ((True, "current_row_shape"), (False, "row_shape")):
        arrays, meta = stored[not accelerate][0], stored[accelerate][1]
        _checkpoint.save_checkpoint(paths[accelerate], arrays, meta)
        model = vbsnmf.VBNMF(
            3, prior="gamma", accelerate=accelerate, max_iter=8, random_state=0, n_threads=1
        )
        with pytest.raises(_checkpoint.CheckpointError, match=f"{missing} is missing"):
            _fit_on(model.set_params(checkpoint=paths[accelerate], resume=True), X)


def _fit_on(model, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(X)


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, bytes(range(256)) * 4, b"PK\x05\x06"])
def test_unreadable_checkpoint_names_the_file(tmp_path, content):
    path = tmp_path / "fit.ckpt"
    path.write_bytes(content)
    model = vbsnmf.VBNMF(3, max_iter=2, checkpoint=path, resume=True, prior="gamma")
    with pytest.raises(ValueError, match="not a vbsnmf checkpoint") as caught:
        _fit_on(model, _small_counts())
    assert str(path) in str(caught.value)
    assert path.read_bytes() == content


def test_npz_without_metadata_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, row_shape=np.ones((60, 3)))
    with pytest.raises(ValueError, match="not a vbsnmf checkpoint") as caught:
        _fit_on(
            vbsnmf.VBNMF(3, max_iter=2, checkpoint=path, resume=True, prior="gamma"),
            _small_counts(),
        )
    assert str(path) in str(caught.value)
    with pytest.raises(ValueError, match="not a vbsnmf checkpoint"):  # nor overwritten
        _fit_on(vbsnmf.VBNMF(3, max_iter=2, checkpoint=path, prior="gamma"), _small_counts())


@pytest.mark.parametrize("kind", ["batch", "svi-cells", "svi-textbook"])
def test_checkpoint_of_other_data_with_the_same_summary_is_refused(tmp_path, kind):
    """The same cells in another order: same shape, nonzeros and total count."""
    path = tmp_path / "fit.ckpt"
    settings = dict(FITS[kind], max_iter=3, n_epochs=2)
    X = _small_counts()
    _fit_on(vbsnmf.VBNMF(3, random_state=0, n_threads=1, checkpoint=path, **settings), X)
    shuffled = X[np.random.default_rng(1).permutation(X.shape[0])]
    model = vbsnmf.VBNMF(
        3, random_state=0, n_threads=1, checkpoint=path, resume=True, prior="gamma"
    )
    model.set_params(**settings)
    with pytest.raises(_checkpoint.CheckpointMismatchError, match="other data"):
        _fit_on(model, shuffled)
    resumed = _fit_on(model, X)  # the same data resumes
    assert len(resumed.elbo_trace_) >= 1


@pytest.mark.parametrize("accelerate", [True, False])
def test_a_fit_stopped_while_its_factor_shapes_are_held_resumes_bitwise(tmp_path, accelerate):
    """A learned fit stopped during its random start's hold of the factor shapes resumes
    to the uninterrupted fit bit for bit: the checkpoint records the hold."""
    path = tmp_path / "held.ckpt"
    options = dict(accelerate=accelerate, max_iter=60, tol=0.0, checkpoint_every=1)

    class Stop(Exception):
        pass

    def stop_at_the_second_pass(n_iter, params, trace):
        if n_iter >= 2:
            raise Stop

    def model(**more):
        return vbsnmf.VBNMF(4, random_state=11, n_threads=1, **options, **more)

    with pytest.raises(Stop):
        _fit(model(checkpoint=path), callback=stop_at_the_second_pass)
    arrays, meta = _checkpoint.load_checkpoint(path)
    if accelerate:
        assert meta["holding"]
    else:
        assert meta["hold_shapes"] and not hold_released(list(arrays["elbo_trace"]))
    resumed = _fit(model(checkpoint=path, resume=True))
    uninterrupted = _fit(model())
    assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)
    for name in ("cell_factor_shape", "gene_factor_shape"):
        assert_array_equal(resumed.hyperparameters_[name], uninterrupted.hyperparameters_[name])
    # the hold was released within the 60 passes: the shapes were learned
    assert not np.all(uninterrupted.hyperparameters_["gene_factor_shape"] == 1.0)


@pytest.mark.parametrize("accelerate", [False, True])
def test_a_converged_fit_resumed_with_a_tighter_tol_goes_on(tmp_path, accelerate):
    """A checkpoint of a fit converged at a loose tol, resumed with a tighter one, fits on
    to the tighter rule (the accelerated fit returned at once, its stored state marked
    converged); with the same tol it returns the stored fit."""
    path = tmp_path / "loose.ckpt"

    def model(tol, **more):
        options = dict(random_state=11, n_threads=1, accelerate=accelerate, max_iter=2000)
        return vbsnmf.VBNMF(4, tol=tol, checkpoint=path, **options, **more)

    loose = _fit(model(1e-3))
    again = _fit(model(1e-3, resume=True))
    assert again.n_iter_ == loose.n_iter_
    assert_array_equal(again.elbo_trace_, loose.elbo_trace_)
    tight = _fit(model(1e-6, resume=True))
    assert tight.n_iter_ > loose.n_iter_ + 10
    assert_array_equal(tight.elbo_trace_[: loose.elbo_trace_.size], loose.elbo_trace_)
    assert np.all(np.diff(tight.elbo_trace_) >= 0)
    last, before = tight.elbo_trace_[-1], tight.elbo_trace_[-2]
    assert abs(last - before) <= 1e-6 * abs(before)


@pytest.mark.parametrize("kind", ["svi-cells", "svi-cells-learned"])
def test_an_svi_fit_that_ended_at_n_epochs_resumes_with_more_as_the_longer_fit(tmp_path, kind):
    """The cells form takes its exact gene step after an evaluation only if the fit goes
    on; a fit that ended at ``n_epochs`` keeps the step's statistics in its checkpoint and,
    resumed with more epochs, takes the step first: bitwise the fit that ran them all.
    Statistics that are missing or not finite are refused as damage."""
    path = tmp_path / "fit.ckpt"

    def model(n_epochs, **extra):
        settings = {**FITS[kind], "n_epochs": n_epochs}
        return vbsnmf.VBNMF(4, random_state=11, n_threads=1, checkpoint=path, **settings, **extra)

    _fit(model(2))
    arrays, meta = _checkpoint.load_checkpoint(path)
    assert meta["finished"] and arrays["gene_step_stat"].shape == (arrays["col_shape"].shape)
    resumed = _fit(model(4, resume=True))
    longer = _fit(vbsnmf.VBNMF(4, random_state=11, n_threads=1, **{**FITS[kind], "n_epochs": 4}))
    assert_array_equal(resumed.elbo_trace_, longer.elbo_trace_)
    assert_array_equal(resumed.gene_shape_, longer.gene_shape_)
    one_missing = {name: a for name, a in arrays.items() if name != "gene_step_cell_mean_sum"}
    _checkpoint.save_checkpoint(path, one_missing, meta)
    with pytest.raises(_checkpoint.CheckpointError, match="statistics of its next step are"):
        _fit(model(4, resume=True))
    arrays["gene_step_stat"] = np.full_like(arrays["gene_step_stat"], np.nan)
    _checkpoint.save_checkpoint(path, arrays, meta)
    with pytest.raises(
        _checkpoint.CheckpointError, match="gene_step_stat, a statistic of its next step"
    ):
        _fit(model(4, resume=True))


def test_a_checkpoint_with_a_positive_elbo_is_refused(tmp_path):
    """The ELBO bounds the log-probability of the counts, so it is never positive; a hand-
    edited trace of [1, 2] was resumed and reported as the fit's."""
    path = tmp_path / "fit.ckpt"
    model = vbsnmf.VBNMF(3, max_iter=4, random_state=0, n_threads=1, accelerate=False)
    _fit_on(model.set_params(checkpoint=path), _small_counts())
    _rewrite(path, _set("elbo_trace", lambda trace: np.arange(1.0, trace.size + 1.0)))
    with pytest.raises(_checkpoint.CheckpointError, match="positive values"):
        _fit_on(model.set_params(resume=True, max_iter=6), _small_counts())


@pytest.mark.parametrize("changed", [{"max_iter": 1}, {"tol": 0.5}, {"eval_every": 2}])
def test_svi_cells_checkpoint_refuses_other_local_fit_settings(tmp_path, pbmc_tiny, changed):
    """In the cells form max_iter and tol set each cell's local fit, and eval_every the
    epochs scored: a resume with others mixed two fits' arithmetic without a word."""
    path = tmp_path / "svi.ckpt"
    options = {"solver": "svi", "n_epochs": 2, "random_state": 0, "n_threads": 1}
    _fit(vbsnmf.VBNMF(2, checkpoint=path, **options))
    resumed = {"checkpoint": path, "resume": True, **options, "n_epochs": 3}
    with pytest.raises(_checkpoint.CheckpointMismatchError, match=r"max_iter|tol|eval_every"):
        _fit(vbsnmf.VBNMF(2, **resumed, **changed))
    assert _fit(vbsnmf.VBNMF(2, **resumed)).n_iter_ == 3  # the same settings resume


def test_a_checkpoint_from_before_the_local_fit_was_recorded_resumes(tmp_path, pbmc_tiny):
    """Yesterday's SVI checkpoints hold no local_fit or eval_every: refused as "a different
    fit", they would have cost their progress for settings that were the same."""
    path = tmp_path / "svi.ckpt"
    options = {"solver": "svi", "n_epochs": 2, "random_state": 0, "n_threads": 1}
    _fit(vbsnmf.VBNMF(2, checkpoint=path, **options))
    arrays, meta = _checkpoint.load_checkpoint(path)
    meta["config"] = {k: v for k, v in meta["config"].items() if k not in _checkpoint.LATER_KEYS}
    _checkpoint.save_checkpoint(path, arrays, meta)
    resumed = {**options, "n_epochs": 3, "checkpoint": path, "resume": True}
    straight = _fit(vbsnmf.VBNMF(2, **{**options, "n_epochs": 3}))
    assert_array_equal(_fit(vbsnmf.VBNMF(2, **resumed)).elbo_trace_, straight.elbo_trace_)


def test_a_generator_state_other_than_pcg64_is_damage():
    """Every fit draws from numpy's default PCG64; an SVI checkpoint holding another
    generator's state was accepted, then failed at the next save (an ndarray in JSON)."""
    other = np.random.Generator(np.random.MT19937(0)).bit_generator.state
    other["state"]["key"] = other["state"]["key"].tolist()
    meta = {"step": 1, "epoch": 1, "converged": False, "rng": json.dumps(other)}

    def damaged(what):
        return _checkpoint.CheckpointError(what)

    with pytest.raises(_checkpoint.CheckpointError, match="not PCG64's"):
        _checkpoint.check_svi_progress(meta, np.array([-1.0]), damaged)
    meta["rng"] = _checkpoint.rng_state_json(np.random.default_rng(0))
    _checkpoint.check_svi_progress(meta, np.array([-1.0]), damaged)


def test_a_loop_of_links_as_output_is_an_oserror_naming_it(tmp_path):
    """Python 3.11's resolve() raises RuntimeError on a loop; writers let it through."""
    import errno

    from vbsnmf import _atomic

    (tmp_path / "a.h5ad").symlink_to(tmp_path / "b.h5ad")
    (tmp_path / "b.h5ad").symlink_to(tmp_path / "a.h5ad")
    with pytest.raises(OSError, match="a loop of symbolic links") as raised:
        with _atomic.atomic_file(tmp_path / "a.h5ad"):
            pass
    assert raised.value.errno == errno.ELOOP and raised.value.filename.endswith("a.h5ad")


def test_a_symlinked_checkpoint_is_written_where_it_points(tmp_path):
    """The rename replaced the link by a regular file: a large checkpoint landed beside the
    link (on the wrong disk) and the file it pointed to stayed old."""
    elsewhere = tmp_path / "big_disk"
    elsewhere.mkdir()
    real = elsewhere / "fit.ckpt"
    link = tmp_path / "fit.ckpt"
    model = vbsnmf.VBNMF(2, max_iter=2, random_state=0, n_threads=1, accelerate=False)
    _fit_on(model.set_params(checkpoint=real), _small_counts())
    link.symlink_to(real)
    _fit_on(model.set_params(checkpoint=link, max_iter=5), _small_counts())
    assert link.is_symlink() and link.resolve() == real
    assert _checkpoint.load_checkpoint(real)[0]["elbo_trace"].size == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big_disk", "fit.ckpt"]


def test_resuming_with_fewer_iterations_than_stored_warns(tmp_path):
    """The checkpoint's longer fit came back without a word."""
    path = tmp_path / "fit.ckpt"
    model = vbsnmf.VBNMF(2, max_iter=6, tol=0, random_state=0, n_threads=1, accelerate=False)
    _fit_on(model.set_params(checkpoint=path), _small_counts())
    with pytest.warns(UserWarning, match="already holds 6 iterations, more than the 3"):
        resumed = model.set_params(resume=True, max_iter=3).fit(_small_counts())
    assert resumed.n_iter_ == 6
