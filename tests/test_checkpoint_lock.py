"""Two fits on one checkpoint: each would overwrite the other's saves, and a resume would
continue whichever saved last (or be refused for the other's settings). A fit holds a lock
file beside its checkpoint from start to end, and a second fit, or a command about to start
one, is refused while it runs."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import vbsnmf
import vbsnmf.cli
from vbsnmf import _atomic
from vbsnmf._checkpoint import Checkpointer

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")

# A fit with a checkpoint, stopped in its callback after the first save: it prints its
# process id, then waits until killed.
_FITTING = """
import os, sys, time
import numpy as np, scipy.sparse as sp
import vbsnmf

def wait(n_iter, params, trace):
    if n_iter == 2:
        print(os.getpid(), flush=True)
        time.sleep(600)

counts = sp.random(60, 40, density=0.3, format="csr", random_state=0)
counts.data = np.ceil(counts.data * 5)
vbsnmf.VBNMF(2, checkpoint=sys.argv[1], checkpoint_every=1, n_threads=1,
             random_state=0).fit(counts, callback=wait)
"""


def _counts() -> sp.csr_matrix:
    counts = sp.random(60, 40, density=0.3, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 5)
    return counts


def _fit(checkpoint, **kwargs) -> vbsnmf.VBNMF:
    model = vbsnmf.VBNMF(2, checkpoint=checkpoint, n_threads=1, random_state=0, max_iter=5)
    with pytest.warns(vbsnmf.ConvergenceWarning):
        return model.fit(_counts(), **kwargs)


def _lock(checkpoint) -> os.PathLike:
    return checkpoint.with_name(f".{checkpoint.name}.lock")


@pytest.fixture
def fitting(tmp_path):
    """A fit in another process, stopped after saving tmp_path/fit.npz; its process."""
    checkpoint = tmp_path / "fit.npz"
    process = subprocess.Popen(
        [sys.executable, "-c", _FITTING, str(checkpoint)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == str(process.pid)
        yield process, checkpoint
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def test_a_second_fit_on_a_checkpoint_in_use_is_refused_and_saves_nothing(fitting, capfd):
    process, checkpoint = fitting
    saved = checkpoint.read_bytes()
    expected = f"process {process.pid} holds .fit.npz.lock beside it"
    with pytest.raises(vbsnmf.CheckpointInUseError, match=expected):
        vbsnmf.VBNMF(2, checkpoint=checkpoint, random_state=1, max_iter=5).fit(_counts())
    with pytest.raises(vbsnmf.CheckpointInUseError, match="belongs to a fit running now"):
        vbsnmf.io.check_checkpoint_path(checkpoint)
    # the command line, before its fit: one line, exit 2
    counts = checkpoint.parent / "counts.mtx"
    scipy.io.mmwrite(counts, _counts().T.tocoo())
    argv = ["fit", str(counts), "-k", "2", "--checkpoint", str(checkpoint), "--quiet"]
    assert vbsnmf.cli.main([*argv, "-o", str(checkpoint.parent / "out")]) == 2
    err = capfd.readouterr().err
    assert err.startswith(f"vbsnmf: error: checkpoint {checkpoint} belongs to a fit running now")
    assert err.count("\n") == 1
    assert checkpoint.read_bytes() == saved
    assert not (checkpoint.parent / "out").exists()


def test_a_killed_fits_lock_file_is_taken_over_and_removed(fitting):
    process, checkpoint = fitting
    process.kill()
    process.wait()
    assert _lock(checkpoint).is_file()  # the kernel dropped its lock; the file stays
    model = _fit(checkpoint)
    assert model.n_iter_ == 5
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["fit.npz"]
    # and the command line's check removes one left behind
    _lock(checkpoint).touch()
    vbsnmf.io.check_checkpoint_path(checkpoint)
    assert not _lock(checkpoint).exists()


def test_the_lock_is_held_for_the_whole_fit_and_dropped_however_it_ends(tmp_path):
    checkpoint = tmp_path / "new folder" / "fit.npz"  # made by the first save
    seen = []

    def look(n_iter, params, trace):
        seen.append(_lock(checkpoint).is_file())
        if n_iter == 3:
            with pytest.raises(vbsnmf.CheckpointInUseError):
                with Checkpointer(checkpoint, 1, {}):
                    pass
            raise KeyboardInterrupt

    model = vbsnmf.VBNMF(2, checkpoint=checkpoint, checkpoint_every=1, n_threads=1)
    with pytest.raises(KeyboardInterrupt):
        model.fit(_counts(), callback=look)
    assert seen[-1] and not _lock(checkpoint).exists()
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["fit.npz"]
    # resumed, it runs to its end and leaves only its checkpoint
    _fit(checkpoint, callback=lambda *args: seen.append(_lock(checkpoint).is_file()))
    assert all(seen[-3:]) and sorted(os.listdir(checkpoint.parent)) == ["fit.npz"]


def test_a_lock_file_removed_by_its_finishing_holder_is_made_anew(tmp_path, monkeypatch):
    """The holder removes the file as it ends: a run that opened it just before must not
    lock the removed file (a third run would make and lock a new one beside it)."""
    lock = tmp_path / ".fit.npz.lock"
    holder = _atomic.take_lock_file(lock)
    real_flock = _atomic.fcntl.flock
    calls = []

    def holder_finishes_first(descriptor, operation):
        if not calls:  # the holder removes the file this run has just opened
            os.unlink(lock)
        calls.append(descriptor)
        return real_flock(descriptor, operation)

    monkeypatch.setattr(_atomic.fcntl, "flock", holder_finishes_first)
    taken = _atomic.take_lock_file(lock)
    monkeypatch.undo()
    try:
        assert len(calls) == 2  # refused on the old file, then locked a new one
        assert os.path.samestat(os.fstat(taken), os.stat(lock))
        assert lock.read_text().partition("@")[0] == str(os.getpid())  # and the machine
    finally:
        _atomic.drop_lock_file(lock, taken)
        os.close(holder)
    assert not lock.exists()


def test_where_no_lock_can_be_had_the_fit_runs_as_before(tmp_path, monkeypatch):
    """A file system without advisory locks (flock fails, as on some NFS mounts). Something
    not a file at the lock file's name is refused instead: it is the user's
    (tests/test_hostile_ninth_cli.py)."""

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(_atomic.fcntl, "flock", no_locks)
    checkpoint = tmp_path / "fit.npz"
    _fit(checkpoint)
    assert checkpoint.is_file()


def _tensor():
    rng = np.random.default_rng(17)
    tensor = rng.poisson(2.0, (30, 12, 8)) * (rng.random((30, 12, 8)) < 0.2)
    coords = np.argwhere(tensor)
    return coords, tensor[tuple(coords.T)].astype(float)


# Every route that saves checkpoints, each to 3 iterations or epochs.
_ROUTES = {
    "matrix-svi": lambda path, **fit: vbsnmf.VBNMF(
        2, solver="svi", batch_size=20, n_epochs=3, checkpoint=path, checkpoint_every=1
    ).fit(_counts(), **fit),
    "tensor-batch": lambda path, **fit: vbsnmf.VBNTF(
        2, max_iter=3, checkpoint=path, checkpoint_every=1
    ).fit(*_tensor(), **fit),
    "tensor-svi": lambda path, **fit: vbsnmf.VBNTF(
        2, solver="svi", batch_size=7, n_epochs=3, checkpoint=path, checkpoint_every=1
    ).fit(*_tensor(), **fit),
}


@pytest.mark.parametrize("route", list(_ROUTES))
def test_every_route_that_saves_holds_the_lock(route, tmp_path):
    checkpoint = tmp_path / "fit.npz"
    refused = []

    def try_a_second(n_iter, params, trace):
        try:
            with Checkpointer(checkpoint, 1, {}):
                refused.append(False)
        except vbsnmf.CheckpointInUseError:
            refused.append(True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        _ROUTES[route](checkpoint, callback=try_a_second)
    assert refused and all(refused)
    assert sorted(os.listdir(tmp_path)) == ["fit.npz"]
