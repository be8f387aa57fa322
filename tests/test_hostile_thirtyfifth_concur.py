"""Thirty-fifth hostile pass, concurrency and odd paths: two runs on one OUTDIR or one
checkpoint, lock files on a folder several machines share (NFS), a process whose current
folder changes during a fit, and an OUTDIR that --force could not replace.

Each test of a fix failed on the code before it; guards that pass on both say so."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import vbsnmf
import vbsnmf.cli
from vbsnmf import _atomic
from vbsnmf._checkpoint import read_checkpoint_meta

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")

_AN_HOUR_AGO = time.time() - 3600


def _counts() -> sp.csr_matrix:
    counts = sp.random(60, 30, density=0.3, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 5)
    return counts


def _mtx(folder: Path) -> Path:
    path = folder / "in.mtx"
    scipy.io.mmwrite(path, _counts().tocoo())
    return path


# -- OUTDIR that --force would refuse ------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "folder of the user's"])
def test_an_outdir_force_would_refuse_is_not_sent_to_force(tmp_path, capfd, monkeypatch, kind):
    """An OUTDIR that is a file, or a folder holding files vbsnmf does not write, was told
    "already exists (use --force to replace it)", and --force was then refused at once."""
    monkeypatch.chdir(tmp_path)
    _mtx(tmp_path)
    outdir = tmp_path / "out"
    if kind == "file":
        outdir.write_text("notes\n")
    else:
        outdir.mkdir()
        (outdir / "notes.txt").write_text("notes\n")
    argv = ["fit", "in.mtx", "--cells-as-rows", "-k", "2", "--max-iter", "2", "--quiet"]
    assert vbsnmf.cli.main([*argv, "-o", "out"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "use --force" not in err
    expected = "exists and is not a folder" if kind == "file" else "notes.txt"
    assert expected in err and "name another OUTDIR" in err
    assert vbsnmf.cli.main([*argv, "-o", "out", "--force"]) == 2  # refused for the same reason
    assert expected in capfd.readouterr().err


def test_an_earlier_output_without_force_is_still_sent_to_force(tmp_path, capfd, monkeypatch):
    """Guard (passes on both): an OUTDIR holding an earlier output, or nothing, is told to
    take --force, which replaces it."""
    monkeypatch.chdir(tmp_path)
    _mtx(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "params.json").write_text("{}\n")
    (tmp_path / "empty").mkdir()
    argv = ["fit", "in.mtx", "--cells-as-rows", "-k", "2", "--max-iter", "2", "--quiet"]
    for outdir in ("out", "empty"):
        assert vbsnmf.cli.main([*argv, "-o", outdir]) == 2
        assert "already exists (use --force to replace it)" in capfd.readouterr().err


# -- a second run started while the first reads its input ---------------------------------


def test_a_second_run_while_the_first_reads_its_input_is_refused(tmp_path, monkeypatch):
    """OUTDIR's temporary folder was made only once the input was read (minutes for a large
    .mtx): another run into the same OUTDIR started meanwhile passed its check, and with
    --force the later of the two deleted the other's output at its end. It is made before
    the read now, as the streamed route makes it before its conversion."""
    monkeypatch.chdir(tmp_path)
    _mtx(tmp_path)
    read = vbsnmf.io.read
    checked = []

    def reading(*args, **kwargs):  # the second run's check, while this one reads
        with pytest.raises(vbsnmf.io.UnsafePathError) as refused:
            vbsnmf.io.check_outdir(tmp_path / "out", force=True)
        checked.append(str(refused.value))
        return read(*args, **kwargs)

    monkeypatch.setattr(vbsnmf.io, "read", reading)
    argv = ["fit", "in.mtx", "--cells-as-rows", "-k", "2", "--max-iter", "3", "--quiet"]
    assert vbsnmf.cli.main([*argv, "-o", "out"]) == 0
    assert len(checked) == 1 and "another run is writing OUTDIR" in checked[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mtx", "out"]
    assert (tmp_path / "out" / "result.h5ad").is_file()


def test_a_failed_read_leaves_no_outdir_nor_temporary(tmp_path, capfd, monkeypatch):
    """Guard (passes on both): an input that cannot be read, now read inside OUTDIR's
    writer, leaves neither OUTDIR nor its temporary folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.mtx").write_text("%%MatrixMarket matrix coordinate integer general\n2 2 5\n")
    argv = ["fit", "in.mtx", "--cells-as-rows", "-k", "1", "--quiet", "-o", "out"]
    assert vbsnmf.cli.main(argv) == 2
    assert capfd.readouterr().err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mtx"]


# -- a relative checkpoint and a change of folder ------------------------------------------


def test_a_relative_checkpoint_stays_where_the_fit_began(tmp_path, monkeypatch):
    """A fit run in a thread of a notebook whose folder changed meanwhile (``%cd``) saved
    its later iterations into the new folder, and left the checkpoint named at the start
    stale, with its lock file."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)

    def move(n_iter, params, trace):
        if n_iter == 2:
            os.chdir(second)

    model = vbsnmf.VBNMF(2, max_iter=5, tol=0, checkpoint="fit.npz", checkpoint_every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.set_params(random_state=0, n_threads=1).fit(_counts(), callback=move)
    assert sorted(p.name for p in first.iterdir()) == ["fit.npz"]
    assert list(second.iterdir()) == []
    assert read_checkpoint_meta(first / "fit.npz")["finished"]


# -- lock files that name their machine ----------------------------------------------------


def test_a_lock_file_names_its_process_and_machine(tmp_path):
    """A lock file held the process id alone, which on a folder several machines share
    named a process the user looked for (or killed) on their own machine."""
    lock = tmp_path / ".fit.npz.lock"
    taken = _atomic.take_lock_file(lock)
    try:
        assert lock.read_text() == f"{os.getpid()}@{socket.gethostname()}"
    finally:
        _atomic.drop_lock_file(lock, taken)
    assert not lock.exists()


def _held(lock: Path, text: str) -> int:
    """``lock`` holding ``text``, locked through a descriptor of its own (as by another
    process); the descriptor, to close."""
    lock.write_text(text)
    descriptor = os.open(lock, os.O_RDWR)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def test_a_lock_held_on_another_machine_is_told_so(tmp_path):
    """A fit on another machine holding the lock is named with its machine; one of this
    machine, or of an earlier version (an id alone), as before."""
    checkpoint = tmp_path / "fit.npz"
    lock = _atomic.lock_file_of(checkpoint)
    for text, told in (
        ("4242@node17.cluster", "(process 4242 on the machine node17.cluster holds .fit.npz"),
        (f"4242@{socket.gethostname()}", "(process 4242 holds .fit.npz.lock"),
        ("4242", "(process 4242 holds .fit.npz.lock"),
    ):
        holder = _held(lock, text)
        try:
            with pytest.raises(vbsnmf.CheckpointInUseError) as refused:
                vbsnmf.io.check_checkpoint_path(checkpoint)
            assert told in str(refused.value)
        finally:
            os.close(holder)


def test_a_fit_in_another_thread_is_told_as_this_process(tmp_path):
    """A second fit on a checkpoint that a fit in another thread of the same process holds
    (a notebook's) was told "process N holds ...", N the notebook's own kernel."""
    checkpoint = tmp_path / "fit.npz"
    lock = _atomic.lock_file_of(checkpoint)
    taken = _atomic.take_lock_file(lock)  # as the other thread's fit takes it
    try:
        with pytest.raises(vbsnmf.CheckpointInUseError) as refused:
            vbsnmf.VBNMF(2, checkpoint=checkpoint, max_iter=2).fit(_counts())
        told = f"(a fit in this very process, {os.getpid()}, holds .fit.npz.lock beside it)"
        assert told in str(refused.value)
    finally:
        _atomic.drop_lock_file(lock, taken)


@pytest.mark.parametrize("text", ["", "4242", "4242@node17.cluster"])
def test_a_killed_fits_lock_file_of_either_form_is_removed(tmp_path, text):
    """Guard (the id-only forms pass on both): a lock file nobody holds, of this version or
    an earlier one, is a killed fit's: the check removes it, and a fit takes it over."""
    checkpoint = tmp_path / "fit.npz"
    lock = _atomic.lock_file_of(checkpoint)
    lock.write_text(text)
    vbsnmf.io.check_checkpoint_path(checkpoint)
    assert not lock.exists()
    lock.write_text(text)
    taken = _atomic.take_lock_file(lock)
    assert taken is not None
    _atomic.drop_lock_file(lock, taken)


@pytest.mark.parametrize("text", ["4242@", "@node17", "4242@node 17", "notes"])
def test_a_file_of_other_content_at_the_lock_files_name_is_left(tmp_path, text):
    """Guard: what is not a lock file's content (an ``@`` without a process id or a
    machine, a name with a space, text) is the user's: refused, never removed."""
    checkpoint = tmp_path / "fit.npz"
    lock = _atomic.lock_file_of(checkpoint)
    lock.write_text(text)
    with pytest.raises(vbsnmf.io.UnsafePathError, match="not a lock file of vbsnmf's"):
        vbsnmf.io.check_checkpoint_path(checkpoint)
    assert lock.read_text() == text


# -- NFS: flock emulated by byte-range locks -----------------------------------------------


@pytest.fixture
def nfs_locks(monkeypatch):
    """flock as NFS emulates it: an exclusive lock needs a descriptor open for writing."""
    real_flock = fcntl.flock

    def flock(descriptor, operation):
        access = fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_ACCMODE
        if operation & fcntl.LOCK_EX and access == os.O_RDONLY:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return real_flock(descriptor, operation)

    monkeypatch.setattr(_atomic.fcntl, "flock", flock)


def test_on_nfs_a_checkpoint_in_use_is_refused_by_the_check(tmp_path, nfs_locks):
    """The check opened the lock file read-only, could not lock it, and took a running fit
    for none: the command started, read or converted its input, and only then was refused.
    A killed fit's lock file was never removed either."""
    checkpoint = tmp_path / "fit.npz"
    lock = _atomic.lock_file_of(checkpoint)
    held = _atomic.take_lock_file(lock)  # a fit running now
    assert held is not None
    try:
        with pytest.raises(vbsnmf.CheckpointInUseError, match="belongs to a fit running now"):
            vbsnmf.io.check_checkpoint_path(checkpoint)
    finally:
        os.close(held)  # killed: its lock file stays
    assert lock.is_file()
    vbsnmf.io.check_checkpoint_path(checkpoint)
    assert not lock.exists()


def test_on_nfs_a_live_save_is_refused_a_killed_ones_removed(tmp_path, nfs_locks):
    """A checkpoint's temporary being saved was taken for an interrupted run's (reported,
    and the check passed), and a killed save's never removed."""
    checkpoint = tmp_path / "fit.npz"
    with _atomic.atomic_file(checkpoint, lock=True) as temporary:
        temporary.write_bytes(b"PK\x03\x04 a save in progress")
        with pytest.raises(vbsnmf.io.UnsafePathError, match="another run is saving checkpoint"):
            vbsnmf.io.check_checkpoint_path(checkpoint)
    checkpoint.unlink()  # what the save wrote, not a checkpoint
    killed = tmp_path / ".fit.npz.ab12cd34.tmp.npz"
    killed.write_bytes(b"PK\x03\x04 a killed save's first bytes")
    os.utime(killed, (_AN_HOUR_AGO, _AN_HOUR_AGO))
    with pytest.warns(UserWarning, match="removed 1 leftover of killed runs"):
        vbsnmf.io.check_checkpoint_path(checkpoint)
    assert not killed.exists()
