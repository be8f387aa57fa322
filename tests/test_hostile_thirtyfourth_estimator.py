"""Thirty-fourth hostile pass: `VBNMF`'s options in combination.

A warm start (``fit(X, init=...)``) with ``resume=True`` on the checkpoint of a fit from its
own start resumed that checkpoint and dropped the warm start silently (and a warm-started
fit's checkpoint was continued by a fit given no start); an accelerated fit saved its
checkpoint only at cycle starts on a multiple of ``checkpoint_every``, so from the hold's end
it saved every 15 passes for 5 and none at all for 3 when the hold released off a multiple
of 3; ``verbose`` with ``n_init`` > 1 printed the starts' ELBOs run together, not saying where
each began nor which was kept. Each test fails on the code before unless its docstring says
it is a guard.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import VBNMF, CheckpointMismatchError
from vbsnmf import _checkpoint as checkpoint_module
from vbsnmf._checkpoint import read_checkpoint_meta


def _counts(seed: int = 0, shape=(200, 60), density=0.2, scale=5) -> sp.csr_array:
    matrix = sp.random(*shape, density=density, random_state=seed, format="csr")
    matrix.data = np.ceil(matrix.data * scale)
    return sp.csr_array(matrix)


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return function(*args, **kwargs)


SOLVERS = [
    pytest.param({}, id="squarem"),
    pytest.param({"accelerate": False}, id="plain"),
    pytest.param({"prior": "gamma"}, id="gamma"),
    pytest.param({"solver": "svi", "n_epochs": 6}, id="svi-cells"),
    pytest.param(
        {"solver": "svi", "prior": "gamma", "svi_form": "nonzeros", "n_epochs": 6},
        id="svi-nonzeros",
    ),
]


def _limit(kw: dict, n: int) -> dict:
    """``kw`` run to ``n`` iterations (batch) or epochs (SVI)."""
    return {**kw, ("n_epochs" if kw.get("solver") == "svi" else "max_iter"): n}


# -- a warm start and a checkpoint of another start ----------------------------------------
@pytest.mark.parametrize("kw", SOLVERS)
def test_a_warm_start_refuses_the_checkpoint_of_a_fit_from_its_own_start(tmp_path, kw):
    """``VBNMF(checkpoint=path, resume=True).fit(X, init=B)`` on the checkpoint of a fit
    from a random start resumed that checkpoint and dropped B silently: its result
    continued the other fit, far below B's ELBO. Refused now, by name, before any pass."""
    X = _counts()
    path = tmp_path / "fit.ckpt"
    prior = {key: value for key, value in kw.items() if key == "prior"}
    start = _quiet(VBNMF(3, random_state=5, max_iter=40, **prior).fit, X)
    _quiet(VBNMF(3, random_state=0, checkpoint=path, **_limit(kw, 3)).fit, X)
    saved = path.read_bytes()
    resumed = VBNMF(3, random_state=0, checkpoint=path, resume=True, **_limit(kw, 5))
    with pytest.raises(
        CheckpointMismatchError, match=r"this fit at a warm start \(VBNMF.fit's init"
    ):
        resumed.fit(X, init=start)
    assert path.read_bytes() == saved  # the checkpoint left as it was
    assert not hasattr(resumed, "components_")


@pytest.mark.parametrize("kw", SOLVERS)
def test_a_warm_started_fits_checkpoint_is_not_resumed_without_its_start(tmp_path, kw):
    """The reverse: the checkpoint of an interrupted ``fit(X, init=B)`` was continued by
    ``fit(X)`` with ``resume=True``, a fit asked to start at random ending as B's
    continuation (its record, e.g. ``tl.nmf``'s, saying no warm start). Refused, with
    the advice to pass the same start."""
    X = _counts()
    path = tmp_path / "fit.ckpt"
    prior = {key: value for key, value in kw.items() if key == "prior"}
    start = _quiet(VBNMF(3, random_state=5, max_iter=40, **prior).fit, X)
    _quiet(VBNMF(3, random_state=0, checkpoint=path, **_limit(kw, 3)).fit, X, init=start)
    resumed = VBNMF(3, random_state=0, checkpoint=path, resume=True, **_limit(kw, 5))
    with pytest.raises(CheckpointMismatchError, match="give the same start to resume it"):
        resumed.fit(X)


@pytest.mark.parametrize("kw", SOLVERS)
def test_an_interrupted_warm_start_resumes_bit_for_bit(tmp_path, kw):
    """Guard (passes on the code before too): the checkpoint of an interrupted warm start,
    resumed with the same ``init``, ends as the uninterrupted warm start, bit for bit."""
    X = _counts()
    path = tmp_path / "fit.ckpt"
    prior = {key: value for key, value in kw.items() if key == "prior"}
    start = _quiet(VBNMF(3, random_state=5, max_iter=20, **prior).fit, X)
    whole = _quiet(VBNMF(3, random_state=0, **_limit(kw, 12)).fit, X, init=start)

    def interrupt(n_iter, params, trace):
        if n_iter >= 4:
            raise KeyboardInterrupt

    model = VBNMF(3, random_state=0, checkpoint=path, checkpoint_every=2, **_limit(kw, 12))
    with pytest.raises(KeyboardInterrupt):
        _quiet(model.fit, X, init=start, callback=interrupt)
    _quiet(model.set_params(resume=True).fit, X, init=start)
    np.testing.assert_array_equal(model.elbo_trace_, whole.elbo_trace_)
    np.testing.assert_array_equal(model.components_, whole.components_)
    assert model.n_iter_ == whole.n_iter_


def _without_config_key(path, key: str) -> None:
    """Rewrite the checkpoint at ``path`` as a version that did not record ``key`` wrote it."""
    with np.load(path) as stored:
        arrays = {name: stored[name] for name in stored.files}
    meta = json.loads(str(arrays["__meta__"]))
    del meta["config"][key]
    arrays["__meta__"] = np.array(json.dumps(meta))
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def test_a_checkpoint_written_before_the_start_was_recorded_still_resumes(tmp_path):
    """Guard (passes on the code before too, which records no start): a checkpoint that
    holds no record of its start (written by an earlier version) is resumed, with a warm
    start or without, as that version resumed it."""
    X = _counts()
    path = tmp_path / "fit.ckpt"
    whole = _quiet(VBNMF(3, random_state=0, max_iter=8).fit, X)
    _quiet(VBNMF(3, random_state=0, max_iter=4, checkpoint=path).fit, X)
    config = read_checkpoint_meta(path)["config"]
    if "warm_start" in config:  # the fixed code records it; the code before did not
        _without_config_key(path, "warm_start")
    assert zipfile.is_zipfile(path)
    resumed = _quiet(VBNMF(3, random_state=0, max_iter=8, checkpoint=path, resume=True).fit, X)
    np.testing.assert_array_equal(resumed.elbo_trace_, whole.elbo_trace_)


# -- an accelerated fit's checkpoints at its interval ----------------------------------------
def _saved_passes(monkeypatch) -> list[int]:
    """The passes (``n_passes``) of every checkpoint an accelerated fit saves from now on."""
    saved = []
    save = checkpoint_module.save_checkpoint

    def recording(path, arrays, meta):
        saved.append(meta["n_passes"])
        return save(path, arrays, meta)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", recording)
    return saved


@pytest.mark.parametrize("every", [2, 3, 5])
@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({"n_components": 4, "random_state": 4}, id="learned-prior"),
        pytest.param(
            {"n_components": 3, "prior": "gamma", "accelerate": True, "random_state": 0},
            id="fixed-prior",
        ),
    ],
)
def test_an_accelerated_fit_saves_within_its_checkpoint_interval(tmp_path, monkeypatch, kw, every):
    """An accelerated fit saved only at the cycle starts whose pass was a multiple of
    ``checkpoint_every``. Its cycles start every three passes from where the hold of the
    factor shapes released (pass 5 on these counts): for 3 no save from pass 3 to the
    fit's end at 60, for 5 one every 15 passes (the fixed prior too, which does not hold),
    so a fit killed late resumed from its beginning. Now the first cycle start
    ``checkpoint_every`` passes or more after the last save is saved: no gap longer than
    ``checkpoint_every`` + 2 (a cycle's three passes, less the one that made it due).
    The fixed prior at 3 is a guard (its cycles start at multiples of 3: it saved every
    cycle on the code before too)."""
    X = _counts(4, shape=(300, 80), density=0.3, scale=13)
    saved = _saved_passes(monkeypatch)
    model = VBNMF(max_iter=60, checkpoint=tmp_path / "fit.ckpt", checkpoint_every=every, **kw)
    _quiet(model.fit, X)
    assert saved[-1] >= model.n_iter_ - 2, saved  # the end (or its last cycle's start)
    gaps = np.diff(saved)
    assert gaps.max() <= every + 2, saved


def test_an_accelerated_fit_killed_late_resumes_from_a_late_save(tmp_path):
    """The user's view of the test above: with ``checkpoint_every=3`` a fit stopped at pass
    50 of 60 had left a checkpoint of pass 3 (the hold's end at 5); it leaves one of pass
    47 or later now, and the resumed fit still ends bit for bit as the uninterrupted one."""
    X = _counts(4, shape=(300, 80), density=0.3, scale=13)
    path = tmp_path / "fit.ckpt"
    whole = _quiet(VBNMF(4, random_state=4, max_iter=60).fit, X)

    def killed_at_50(n_iter, params, trace):
        if n_iter >= 50:
            raise KeyboardInterrupt

    model = VBNMF(4, random_state=4, max_iter=60, checkpoint=path, checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):
        _quiet(model.fit, X, callback=killed_at_50)
    assert read_checkpoint_meta(path)["n_passes"] >= 47
    _quiet(model.set_params(resume=True).fit, X)
    np.testing.assert_array_equal(model.elbo_trace_, whole.elbo_trace_)
    np.testing.assert_array_equal(model.elbo_iter_, whole.elbo_iter_)
    np.testing.assert_array_equal(model.components_, whole.components_)


def test_an_accelerated_tensor_fit_saves_within_its_checkpoint_interval(tmp_path, monkeypatch):
    """`VBNTF` shares the accelerated saves: with ``checkpoint_every=5`` it saved every 15
    passes."""
    X = _counts(1, shape=(120, 40), density=0.3).tocoo()
    coords = np.stack([X.row, X.col], axis=1)
    saved = _saved_passes(monkeypatch)
    model = vbsnmf.VBNTF(
        3,
        prior="gamma",
        accelerate=True,
        random_state=0,
        max_iter=45,
        checkpoint=tmp_path / "fit.ckpt",
        checkpoint_every=5,
    )
    _quiet(model.fit, coords, X.data, X.shape)
    assert len(saved) > 2 and np.diff(saved).max() <= 7, saved


# -- verbose with several starts ------------------------------------------------------------
def test_verbose_names_each_start_and_the_one_kept():
    """``verbose`` with ``n_init=3`` printed three runs of ELBOs, each counting its passes
    from the start again, and said neither where a start began nor which was kept. Each
    start is headed now, and the kept one named with its final ELBO (the fit's)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        model = _quiet(
            VBNMF(3, n_init=3, max_iter=6, random_state=0, verbose=True, accelerate=False).fit,
            _counts(),
        )
    lines = printed.getvalue().splitlines()
    headers = [line for line in lines if line.startswith("start ")]
    assert headers == ["start 1 of 3", "start 2 of 3", "start 3 of 3"]
    assert lines[0] == "start 1 of 3"
    assert sum(line.startswith("iteration") for line in lines) == 3 * 6
    kept = lines[-1].split()
    assert kept[:2] == ["kept", "start"] and kept[-2] == "ELBO"
    assert float(kept[-1]) == pytest.approx(model.elbo_trace_[-1], rel=1e-9)
    # the kept start's lines are the fit's trace
    index = int(kept[2]) - 1
    block = lines[lines.index(headers[index]) + 1 :][:6]
    np.testing.assert_allclose([float(line.split()[-1]) for line in block], model.elbo_trace_)


def test_verbose_one_start_prints_no_start_headers():
    """Guard (passes on the code before too): one start, or a warm start with ``n_init``
    > 1 (which runs one), prints its ELBOs alone, as before."""
    X = _counts()
    for model, init in (
        (VBNMF(3, max_iter=3, random_state=0, verbose=True), None),
        (VBNMF(3, n_init=3, max_iter=3, random_state=0, verbose=True), "fitted"),
    ):
        start = _quiet(VBNMF(3, max_iter=3, random_state=1).fit, X) if init else None
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            _quiet(model.fit, X, init=start)
        text = printed.getvalue()
        assert "start" not in text and text.count("ELBO") >= 1


def test_verbose_names_the_start_kept_when_no_start_records_an_elbo():
    """``max_iter=1`` under SQUAREM (``0`` plain) records no ELBO in any start: the kept
    start is named without an ELBO, not as ``ELBO -inf``, which read as a failed fit."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        model = _quiet(VBNMF(3, n_init=2, max_iter=1, random_state=0, verbose=True).fit, _counts())
    assert len(model.elbo_trace_) == 0
    lines = printed.getvalue().splitlines()
    assert lines == ["start 1 of 2", "start 2 of 2", "kept start 1 of 2  no ELBO recorded"]
