"""The thirty-sixth hostile pass over the command line in a shell pipeline and a hostile
process environment (area pipes).

Three defects, each with tests that fail on the code before the fix:

- A full disk, an exceeded quota or a file-size limit where Numba keeps its cache (the
  install's ``__pycache__``, a conda environment in a full HOME) failed the first call of
  every kernel that had to be compiled: `VBNMF.fit` raised, and ``vbsnmf fit`` said
  "vbsnmf: error: [Errno 27] File too large" (or 28, 122) naming no file, though the
  kernel was compiled and OUTDIR lay on another disk. The kernels now run from memory when
  their cache cannot be written.
- A SIGTERM, SIGHUP or Ctrl-C whose Python handler ran while the main thread was inside a
  finalizer (a ``__del__``, a weakref callback: llvmlite's while Numba compiles, h5py's,
  the garbage collector's) was lost once the command had started: its exception cannot
  leave a finalizer, `vbsnmf.cli`'s unraisable hook kept it, and only the start-up code
  raised what was kept. The fit ran on and exited 0 (seen once: an SVI fit ran for ten
  minutes after ``kill -TERM``, and stopped at the second). The kept signal is now sent to
  the main thread again once the hook has returned.
- ``-o /dev/stdout`` (or ``--checkpoint``, or any ``/proc/self/fd/N``) where stdout is a
  log file deleted while open: the link was followed as text, and the whole OUTDIR was
  written as a new folder "log.txt (deleted)" beside it, exit 0; where stdout is a pipe,
  "cannot create /dev/stdout: No such file or directory (in /proc/PID/fd)". Both are now
  refused by name before the fit.

Guards (pass on the base code too, said in their docstrings) pin what the pass checked and
found to hold: inputs given as '-', /dev/stdin, a FIFO or /dev/null, and OUTDIR as
/dev/null or a FIFO, refused in one line; a dangling link still followed; other exceptions
in finalizers still reach the default hook.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import sys
import threading
import time

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from cli_output import without_compile_notice
from numba.core import caching

import vbsnmf._kernels as kernels
from vbsnmf import cli

main_thread_only = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers are set in the main thread only",
)


def _run(argv, capsys):
    code = cli.main([str(argument) for argument in argv])
    out, err = capsys.readouterr()
    return code, out, without_compile_notice(err)


@pytest.fixture
def counts_h5ad(tmp_path):
    rng = np.random.default_rng(7)
    counts = sp.csr_matrix(rng.poisson(1.0, size=(40, 12)).astype(np.float32))
    path = tmp_path / "in.h5ad"
    ad.AnnData(counts).write_h5ad(path)
    return path


# -- a kernel cache that cannot be written ---------------------------------------------------


@pytest.mark.parametrize(
    "number, index_dtype",
    [(errno.EFBIG, np.int16), (errno.ENOSPC, np.uint16), (errno.EDQUOT, np.int8)],
    ids=["EFBIG", "ENOSPC", "EDQUOT"],
)
def test_a_kernel_runs_when_its_cache_cannot_be_written(monkeypatch, number, index_dtype):
    """`csr_totals` compiled for a signature no fit uses (narrow indices, one dtype per
    case, so each compile happens here), its cache write failing as on a file-size limit,
    a full disk or an exceeded quota: the call returns the totals (against numpy). Before,
    the OSError of the cache write ended the call, so the first fit after installing vbsnmf
    on a full or over-quota disk failed."""

    def full(self, key, data):
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(caching.IndexDataCacheFile, "save", full)
    dispatcher = kernels.csr_totals
    monkeypatch.setattr(dispatcher._cache, "load_overload", lambda *args, **kwargs: None)
    matrix = sp.random(9, 7, density=0.4, random_state=number, format="csr", dtype=np.float32)
    indptr, indices = matrix.indptr.astype(index_dtype), matrix.indices.astype(index_dtype)
    major, minor = np.empty(9), np.empty(7)
    dispatcher(indptr, indices, matrix.data, major, minor)
    dense = matrix.toarray().astype(np.float64)
    np.testing.assert_allclose(major, dense.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(minor, dense.sum(axis=0), rtol=1e-12)


def test_every_kernel_keeps_going_when_its_cache_write_fails():
    """Every cached kernel of `vbsnmf._kernels` (each `ParallelKernel` by its dispatcher)
    has its cache save wrapped, and a failed save returns quietly: the wrapping reaches all
    of them, not only the kernel tried above."""
    wrapped = []
    for name, value in vars(kernels).items():
        dispatcher = value.dispatcher if isinstance(value, kernels.ParallelKernel) else value
        cache = getattr(dispatcher, "_cache", None)
        if isinstance(cache, caching.Cache):
            assert getattr(cache.save_overload, "func", None) is kernels._save_if_written, name
            wrapped.append(name)
    assert "update_shapes" in wrapped and "csr_totals" in wrapped and len(wrapped) > 30

    def full(signature, compiled):
        raise OSError(errno.ENOSPC, "No space left on device")

    kernels._save_if_written(full, None, None)  # returns: nothing raised

    def broken(signature, compiled):
        raise RuntimeError("not a write failure")

    with pytest.raises(RuntimeError):  # only a failed write is let go
        kernels._save_if_written(broken, None, None)


# -- a stop signal whose handler runs in a finalizer ------------------------------------------


class _StoppedWhileFinalized:
    """Sends ``number`` to this process from its ``__del__``: the handler runs there."""

    def __init__(self, number: int) -> None:
        self.number = number

    def __del__(self) -> None:
        signal.raise_signal(self.number)
        for _ in range(100):  # the handler runs between these bytecodes
            pass


def _long_command(number, started):
    def command(args):
        _StoppedWhileFinalized(number)  # finalized at once, its handler's exception kept
        started.append(time.monotonic())
        deadline = time.monotonic() + 8  # "the fit": the stop should end it at once
        while time.monotonic() < deadline:
            time.sleep(0.005)
        return 0

    return command


@main_thread_only
@pytest.mark.parametrize(
    "name, code, said",
    [
        ("SIGTERM", 143, "terminated (SIGTERM)"),
        ("SIGHUP", 129, "hung up (SIGHUP)"),
        ("SIGINT", 130, "interrupted"),
    ],
)
def test_a_stop_whose_handler_ran_in_a_finalizer_stops_the_fit(
    tmp_path, monkeypatch, capsys, name, code, said
):
    """The signal's handler runs inside a ``__del__`` as the fit begins: the command stops
    within a second with its exit code and one line. Before, the stop was kept by the
    unraisable hook and never raised: the fit ran its 8 s and the command exited 0."""
    number = getattr(signal, name)
    started: list[float] = []
    monkeypatch.setattr(cli, "_run_reporting_warnings", _long_command(number, started))
    previous = signal.getsignal(number)
    returned, out, err = _run(
        ["fit", tmp_path / "in.h5ad", "-k", "2", "-o", tmp_path / "out"], capsys
    )
    took = time.monotonic() - started[0]
    assert (returned, out, err) == (code, "", f"vbsnmf: {said}; no output written\n")
    assert took < 4, took
    assert signal.getsignal(number) is previous
    assert not isinstance(sys.unraisablehook, cli._KeptStops)  # the caller's hook is back


@main_thread_only
def test_a_stop_kept_in_the_last_finalizer_is_raised_inside_main(tmp_path, monkeypatch, capsys):
    """A stop kept as the command returns (its finalizer the command's last step) is raised
    in `main`, with its exit code and line, not after `main` has restored the handlers
    (where a Ctrl-C would print a traceback and a SIGTERM end the process without a
    word). Before, it was dropped and the command exited 0."""

    def command(args):
        _StoppedWhileFinalized(signal.SIGTERM)
        return 0

    monkeypatch.setattr(cli, "_run_reporting_warnings", command)
    returned, _, err = _run(
        ["fit", tmp_path / "in.h5ad", "-k", "2", "-o", tmp_path / "out"], capsys
    )
    assert (returned, err) == (143, "vbsnmf: terminated (SIGTERM); no output written\n")


@main_thread_only
def test_other_unraisable_exceptions_still_reach_the_default_hook(tmp_path, monkeypatch, capsys):
    """Guard (passes on the base code too): an exception other than a stop raised in a
    finalizer during the command goes to the hook that was set before (printed as Python
    prints it), and the command's result is unchanged."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_type))

    class Faulty:
        def __del__(self):
            raise ValueError("in a finalizer")

    def command(args):
        Faulty()
        gc.collect()
        return 0

    monkeypatch.setattr(cli, "_run_reporting_warnings", command)
    returned, _, err = _run(
        ["fit", tmp_path / "in.h5ad", "-k", "2", "-o", tmp_path / "out"], capsys
    )
    assert (returned, err, seen) == (0, "", [ValueError])


# -- guards: inputs and outputs that are not regular files ------------------------------------


@pytest.mark.parametrize("kind", ["dash", "stdin", "fifo", "devnull"])
def test_inputs_that_are_not_files_are_refused_in_one_line(tmp_path, capsys, monkeypatch, kind):
    """Guard (passes on the base code too): '-' (no such file), /dev/stdin, a FIFO named
    like a Matrix Market file and /dev/null are refused in one line naming the path, exit
    code 2, nothing written and the FIFO never opened (opening it would hang)."""
    monkeypatch.chdir(tmp_path)
    if kind == "fifo":
        os.mkfifo(tmp_path / "in.mtx")
    source = {"dash": "-", "stdin": "/dev/stdin", "fifo": "in.mtx", "devnull": "/dev/null"}[kind]
    extra = ["--genes-as-rows"] if kind == "fifo" else []
    code, out, err = _run(["fit", source, "-k", "2", "-o", "out", *extra], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"vbsnmf: error: {source}"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("outdir", ["/dev/null", "fifo"])
def test_outdirs_that_are_not_folders_are_refused_before_the_fit(
    tmp_path, counts_h5ad, capsys, monkeypatch, outdir
):
    """Guard (passes on the base code too): OUTDIR as /dev/null (also with --force) or a
    FIFO is refused in one line before any fit, the node left as it was."""
    monkeypatch.chdir(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    for force in ([], ["--force"]):
        code, out, err = _run(["fit", counts_h5ad, "-k", "2", "-o", outdir, *force], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert "not a folder" in err, err
    assert os.path.exists("/dev/null") and (tmp_path / "fifo").is_fifo()


# -- /dev/stdout and /proc/self/fd links to a pipe or a deleted file --------------------------

needs_proc_fd = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="links to open files under /proc/self/fd"
)


@pytest.fixture(params=["deleted file", "pipe"])
def stream_link(request, tmp_path):
    """``/proc/self/fd/N`` (what /dev/stdout leads to) of a log file removed while open (a
    rotated log; pytest's own capture file), or of a pipe (``| tee``)."""
    if request.param == "deleted file":
        log = open(tmp_path / "log.txt", "w")  # closed below
        os.unlink(log.name)
        yield f"/proc/self/fd/{log.fileno()}"
        log.close()
        return
    descriptors = os.pipe()
    yield f"/proc/self/fd/{descriptors[1]}"
    for descriptor in descriptors:
        os.close(descriptor)


@needs_proc_fd
def test_outdir_through_a_link_to_an_open_stream_is_refused(
    tmp_path, counts_h5ad, capsys, monkeypatch, stream_link
):
    """``-o /dev/stdout`` where stdout is a deleted log file or a pipe: refused in one line
    naming OUTDIR and what it leads to, exit code 2, before the fit, nothing made. Before,
    a deleted log file's link was followed as text: the whole OUTDIR was written as a new
    folder "log.txt (deleted)" beside it, exit 0; a pipe's gave "cannot create ...: No
    such file or directory (in /proc/PID/fd)"."""
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(["fit", counts_h5ad, "-k", "2", "-o", stream_link], capsys)
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert err.startswith(f"vbsnmf: error: OUTDIR {stream_link}: leads to an open pipe"), err
    assert "name a path" in err and "No such file" not in err
    assert sorted(os.listdir(tmp_path)) == ["in.h5ad"]


@needs_proc_fd
def test_checkpoint_through_a_link_to_an_open_stream_is_refused(
    tmp_path, counts_h5ad, capsys, monkeypatch, stream_link
):
    """``--checkpoint /dev/stdout`` likewise: refused by name before the fit. Before, a
    deleted log file's link saved the checkpoint as a new file "log.txt (deleted)" (and its
    lock file) beside it, and a pipe's failed as "cannot write checkpoint"."""
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(
        ["fit", counts_h5ad, "-k", "2", "-o", "out", "--checkpoint", stream_link], capsys
    )
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert err.startswith(f"vbsnmf: error: checkpoint {stream_link}: leads to an open"), err
    assert sorted(os.listdir(tmp_path)) == ["in.h5ad"]


@needs_proc_fd
def test_python_checkpoint_through_a_link_to_an_open_stream_is_refused(tmp_path, stream_link):
    """`VBNMF(checkpoint=...)` of such a link is refused naming it before any pass,
    nothing written beside the log. Before, a deleted log file's checkpoint was saved at
    "log.txt (deleted)"."""
    from vbsnmf import VBNMF

    counts = sp.random(30, 10, density=0.5, random_state=0, format="csr") * 5
    counts.data = np.ceil(counts.data)
    model = VBNMF(n_components=2, max_iter=3, checkpoint=stream_link, n_threads=1)
    from vbsnmf.io import UnsafePathError

    with pytest.raises(UnsafePathError, match="leads to an open pipe, socket or deleted file"):
        model.fit(counts)
    assert sorted(os.listdir(tmp_path)) == []


def test_a_dangling_link_is_still_followed(tmp_path):
    """Guard (passes on the base code too): a symbolic link to a path not made yet (no
    stream behind it) is still followed, as documented: the output goes where it points."""
    from vbsnmf._atomic import link_followed

    (tmp_path / "link").symlink_to(tmp_path / "later")
    assert link_followed(tmp_path / "link") == tmp_path / "later"
