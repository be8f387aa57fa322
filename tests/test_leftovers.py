"""Leftovers of killed runs: a run killed with SIGKILL leaves its temporary OUTDIR folder
(a converted counts.h5ad in it: 34 MB a run on pbmc_facs; 564 MB piled up beside one
OUTDIR in the sixth hostile pass). They were only reported, as a run still writing could
own them; now every writer locks its temporary folders, and `check_outdir` removes the
ones whose lock is free."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from cli_output import without_compile_notice

import vbsnmf
from vbsnmf import _atomic

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")

_AN_HOUR_AGO = time.time() - 3600

# A run that writes OUTDIR and stops half-way: it prints its temporary folder, then waits.
_WRITER = """
import sys, time
from vbsnmf.io import atomic_directory
with atomic_directory(sys.argv[1], overwrite=True) as folder:
    (folder / "counts.h5ad").write_bytes(b"x" * 2**20)
    print(folder, flush=True)
    time.sleep(600)
"""


def _aged(entry: Path) -> None:
    """As a temporary untouched for an hour (a run killed long ago, or a slow one)."""
    os.utime(entry, (_AN_HOUR_AGO, _AN_HOUR_AGO))


def _check(outdir: Path, **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vbsnmf.io.check_outdir(outdir, **kwargs)
    return [str(warning.message) for warning in caught]


@pytest.fixture
def writer(tmp_path):
    """A run writing tmp_path/out, stopped inside its atomic_directory; its temporary."""
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, Path(process.stdout.readline().strip())
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def test_a_killed_runs_temporary_is_removed_a_running_ones_refused(tmp_path, writer):
    """A temporary that a live run holds means that run writes OUTDIR now: a second run
    would fit to the end, then fail, or with --force delete the first's output."""
    process, temporary = writer
    assert temporary.name.startswith(".out.") and temporary.name.endswith(".tmp")
    _aged(temporary)  # a fit can run for hours: age alone says nothing
    for force in (False, True):
        with pytest.raises(vbsnmf.io.UnsafePathError, match="another run is writing OUTDIR"):
            _check(tmp_path / "out", force=force)
    assert temporary.is_dir(), "the folder of a run still writing was deleted"
    assert _check(tmp_path / "elsewhere") == []  # other OUTDIRs beside it are free

    process.send_signal(signal.SIGKILL)
    process.wait()
    messages = _check(tmp_path / "out")
    assert not temporary.exists()
    assert len(messages) == 1
    assert messages[0].startswith("removed 1 leftover of killed runs beside")
    assert "(1.0 MiB: " in messages[0] and temporary.name in messages[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_temporary_this_process_is_writing_is_in_use(tmp_path):
    """A lock is held per open file, so a check in the writer's own process (a notebook
    running two commands) sees it held too."""
    with vbsnmf.io.atomic_directory(tmp_path / "out") as temporary:
        with pytest.raises(vbsnmf.io.UnsafePathError, match=temporary.name):
            _check(tmp_path / "out")
        assert temporary.is_dir()
    assert (tmp_path / "out").is_dir()


def test_the_old_output_being_deleted_is_in_use_too(tmp_path, monkeypatch):
    """--force's old output, moved aside and being deleted (a large one takes a while),
    is locked until it is gone."""
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "result.h5ad").write_text("earlier output\n")
    seen = []
    remove_retired = _atomic._remove_retired

    def checked_meanwhile(retired, lock, target):
        with pytest.raises(vbsnmf.io.UnsafePathError, match=retired.name):
            _check(outdir, force=True)
        seen.append(retired.name)
        remove_retired(retired, lock, target)

    monkeypatch.setattr(_atomic, "_remove_retired", checked_meanwhile)
    with vbsnmf.io.atomic_directory(outdir, overwrite=True) as temporary:
        (temporary / "result.h5ad").write_text("new output\n")
    assert len(seen) == 1 and seen[0].endswith(".old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_new_unlocked_folder_is_kept_for_a_minute(tmp_path):
    """Between mkdtemp and its lock a writer's folder is unlocked for an instant: a folder
    changed less than a minute ago is never removed."""
    (tmp_path / ".out.ab12cd34.tmp").mkdir()
    messages = _check(tmp_path / "out")
    assert (tmp_path / ".out.ab12cd34.tmp").is_dir()
    assert len(messages) == 1 and "1 leftover of interrupted runs" in messages[0]
    _aged(tmp_path / ".out.ab12cd34.tmp")
    assert _check(tmp_path / "out")[0].startswith("removed 1 leftover")
    assert not (tmp_path / ".out.ab12cd34.tmp").exists()


def test_an_earlier_output_left_hidden_is_kept_while_outdir_is_missing(tmp_path):
    """Killed between the two renames of --force where the swap is not available, the old
    output is in ``.out.XXXX.old/previous`` and OUTDIR is missing: that is the user's
    output, kept (and named) with everything else of the run. Once OUTDIR exists again
    (the new output, or the old one put back), the hidden copy is a leftover."""
    retired = tmp_path / ".out.ef56gh78.old"
    (retired / "previous").mkdir(parents=True)
    (retired / "previous" / "result.h5ad").write_text("earlier output\n")
    new = tmp_path / ".out.ab12cd34.tmp"
    new.mkdir()
    for entry in (retired, new):
        _aged(entry)
    messages = _check(tmp_path / "out")
    assert retired.is_dir() and new.is_dir()
    assert len(messages) == 1 and "2 leftovers of interrupted runs" in messages[0]
    assert "previous holds the output a run was replacing" in messages[0]

    os.replace(retired / "previous", tmp_path / "out")  # the user puts it back
    _aged(retired)
    messages = _check(tmp_path / "out", force=True)
    assert not retired.exists() and not new.exists()
    assert len(messages) == 1 and messages[0].startswith("removed 2 leftovers")
    assert (tmp_path / "out" / "result.h5ad").read_text() == "earlier output\n"


# A save stopped half-way: it prints its temporary file, then waits.
_SAVING = """
import sys, time
from vbsnmf._atomic import atomic_file
with atomic_file(sys.argv[1], lock=True) as temporary:
    temporary.write_bytes(b"PK\x03\x04" + b"x" * (2**20 - 4))  # an .npz begins so
    print(temporary, flush=True)
    time.sleep(600)
"""


def test_a_killed_checkpoint_saves_temporary_is_removed_a_running_ones_refused(tmp_path):
    """A checkpoint is saved by `atomic_file(lock=True)`: its temporary file is locked as
    OUTDIR's folders are. A save in progress means another run uses the checkpoint."""
    process = subprocess.Popen(
        [sys.executable, "-c", _SAVING, str(tmp_path / "fit.npz")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        temporary = Path(process.stdout.readline().strip())
        assert temporary.name.startswith(".fit.npz.") and temporary.name.endswith(".tmp.npz")
        _aged(temporary)
        with pytest.raises(vbsnmf.io.UnsafePathError, match="another run is saving checkpoint"):
            vbsnmf.io.check_checkpoint_path(tmp_path / "fit.npz")
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    with pytest.warns(UserWarning, match=r"removed 1 leftover of killed runs.*1\.0 MiB"):
        vbsnmf.io.check_checkpoint_path(tmp_path / "fit.npz")
    assert list(tmp_path.iterdir()) == []


def test_only_a_checkpoints_kind_of_temporary_is_removed_beside_it(tmp_path):
    """Beside a checkpoint the temporaries are files: an old one that nothing locks is a
    killed save's (of this version or an earlier one, which did not lock) and goes; a
    folder or a FIFO of such a name is not vbsnmf's and is only reported."""
    file = tmp_path / ".fit.npz.ij90kl12.tmp.npz"
    file.write_bytes(b"PK\x03\x04 a killed save's first bytes")
    folder = tmp_path / ".fit.npz.mn34op56.tmp.npz"
    folder.mkdir()
    fifo = tmp_path / ".fit.npz.qr78st90.tmp.npz"
    os.mkfifo(fifo)  # opened to be locked, it would wait for a writer
    for entry in (file, folder, fifo):
        _aged(entry)
    caught = []

    def check():
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            vbsnmf.io.check_checkpoint_path(tmp_path / "fit.npz")
        caught.extend(seen)

    checking = threading.Thread(target=check, daemon=True)  # a hang fails, not stalls
    checking.start()
    checking.join(timeout=60)
    assert not checking.is_alive(), "the check is waiting on the FIFO"
    assert not file.exists() and folder.is_dir() and fifo.exists()
    removed, left = [str(warning.message) for warning in caught]
    assert removed.startswith("removed 1 leftover") and file.name in removed
    assert left.startswith("2 leftovers of interrupted runs") and folder.name in left


def test_force_over_an_old_output_leaves_nothing_locked_or_behind(tmp_path):
    """The swap's folders (the new output, the old one moved aside) are locked while
    they exist and released after: no descriptor is left open."""
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "result.h5ad").write_text("earlier output\n")
    before = set(os.listdir("/proc/self/fd"))
    for replace in (True, False):  # the swap, and the two renames of other systems
        exchange = _atomic._exchange
        if not replace:
            _atomic._exchange = lambda first, second: False
        try:
            with vbsnmf.io.atomic_directory(outdir, overwrite=True) as temporary:
                (temporary / "result.h5ad").write_text(f"new output {replace}\n")
        finally:
            _atomic._exchange = exchange
        assert (outdir / "result.h5ad").read_text() == f"new output {replace}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert set(os.listdir("/proc/self/fd")) == before


# The command line, stopped in its fit: the streamed route has converted the input into
# OUTDIR's temporary folder by then.
_HUNG_COMMAND = """
import sys, time
import vbsnmf.cli

def hang(*args, **kwargs):
    print("fitting", flush=True)
    time.sleep(600)

vbsnmf.cli._fit = hang
sys.exit(vbsnmf.cli.main(sys.argv[1:]))
"""


def test_the_next_command_removes_what_a_killed_one_left(tmp_path, capfd, monkeypatch):
    from test_hostile import FIT, SVI, h5ad, tenx

    source = tenx(tmp_path)
    h5ad(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-c", _HUNG_COMMAND, "fit", str(source), *FIT, *SVI, "-o", "out"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    monkeypatch.chdir(tmp_path)
    loud = [option for option in FIT if option != "--quiet"]
    try:
        assert process.stdout.readline() == "fitting\n"
        (left,) = tmp_path.glob(".out.*.tmp")
        _aged(left)
        # while it runs, a second command into the same OUTDIR is refused before its fit
        assert vbsnmf.cli.main(["fit", "small.h5ad", *loud, "-o", "out", "--force"]) == 2
        err = without_compile_notice(capfd.readouterr().err)
        assert err.startswith("vbsnmf: error: another run is writing OUTDIR out now"), err
        assert err.count("\n") == 1
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    assert (left / "counts.h5ad").is_file()
    assert vbsnmf.cli.main(["fit", "small.h5ad", *loud, "-o", "out"]) == 0
    err = capfd.readouterr().err
    assert "vbsnmf: warning: removed 1 leftover of killed runs beside out " in err, err
    assert not left.exists() and (tmp_path / "out" / "result.h5ad").is_file()


def test_a_folder_that_cannot_be_locked_for_want_of_descriptors_is_not_left(tmp_path, monkeypatch):
    """Out of file descriptors, the new folder could not be opened to lock it: left
    unlocked, a later run would take it for a killed run's a minute on. It is removed and
    the error raised before any work."""
    import errno

    def no_descriptors(path, flags, *args, **kwargs):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    with pytest.raises(OSError, match="Too many open files"):
        with monkeypatch.context() as patched:
            patched.setattr(os, "open", no_descriptors)
            with vbsnmf.io.atomic_directory(tmp_path / "out"):
                pytest.fail("the block ran with its folder unlocked")
    assert list(tmp_path.iterdir()) == []


def test_where_folders_cannot_be_locked_leftovers_are_only_reported(tmp_path, monkeypatch):
    """NFS emulates flock with byte-range locks, which a folder's read-only descriptor
    cannot take (EBADF): the writer goes on unlocked, and a check that cannot lock either
    cannot tell a live run's folder from a killed one's, so it removes nothing."""
    import errno

    def unsupported(descriptor, operation):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(_atomic.fcntl, "flock", unsupported)
    with vbsnmf.io.atomic_directory(tmp_path / "out") as temporary:
        (temporary / "result.h5ad").write_text("new output\n")
        _aged(temporary)
        messages = _check(tmp_path / "out")  # a live run's, but it cannot be told
        assert temporary.is_dir()
        assert len(messages) == 1 and "1 leftover of interrupted runs" in messages[0]
    assert (tmp_path / "out" / "result.h5ad").read_text() == "new output\n"
