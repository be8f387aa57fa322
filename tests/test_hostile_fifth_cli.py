"""A hostile user's fifth pass, the command line's part: a closed or full stderr, a
broken or full stdout, a figure cut short by a file-size limit, a 10x folder that cannot
be searched and a MemoryError. Each case says what went wrong before its fix.

Cases that need real file descriptors run ``python -m vbsnmf`` in a subprocess; the
others call `vbsnmf.cli.main` as tests/test_hostile.py does."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_output import without_compile_notice
from test_hostile import FIT, OUTPUTS, _fitted, _main, h5ad, tenx

import vbsnmf
from vbsnmf import cli

# FIT without --quiet (the progress bar and the summary are what these cases break), and
# converged (6 iterations), so that no ConvergenceWarning adds a line.
LOUD_FIT = ["-k", "2", "--max-iter", "50", "--tol", "1", "--threads", "1"]


def _vbsnmf(folder: Path, argv, **options) -> subprocess.CompletedProcess:
    """``python -m vbsnmf ARGV`` in ``folder`` (the entry point a shell runs)."""
    return subprocess.run(
        [sys.executable, "-m", "vbsnmf", *map(str, argv)], cwd=folder, timeout=300, **options
    )


def _messages(err: bytes) -> list[str]:
    """The lines of ``err`` but the progress bar's (each redrawn after a carriage return,
    which text mode would read as a line break)."""
    return [line for line in err.decode().split("\n") if line and "\r" not in line]


def _complete(outdir: Path) -> bool:
    return outdir.is_dir() and OUTPUTS <= {path.name for path in outdir.iterdir()}


def _close_stderr() -> None:
    os.close(2)


class _Failing:
    """A stream whose every write fails as a full disk's does."""

    def __init__(self, error: type[OSError] = OSError, number: int = errno.ENOSPC):
        self.error, self.number = error, number

    def write(self, text: str) -> int:
        raise self.error(self.number, os.strerror(self.number))

    def flush(self) -> None:
        raise self.error(self.number, os.strerror(self.number))


# -- 8: stderr closed or full -----------------------------------------------------------------
@pytest.mark.parametrize("stderr", ["closed", "full"])
def test_a_closed_or_full_stderr_does_not_stop_the_fit(stderr, tmp_path):
    """The progress bar's first write failed (EBADF / ENOSPC): the fit was abandoned,
    exit 1 and no OUTDIR; with --quiet the same fit succeeded."""
    h5ad(tmp_path)
    argv = ["fit", "small.h5ad", *LOUD_FIT, "-o", "out"]
    with open(os.devnull if stderr == "closed" else "/dev/full", "w") as full:
        options = {"preexec_fn": _close_stderr} if stderr == "closed" else {"stderr": full}
        done = _vbsnmf(tmp_path, argv, stdout=subprocess.PIPE, text=True, **options)
    assert done.returncode == 0
    assert done.stdout.startswith("wrote out: 40 cells x 25 genes, K=2, 6 iterations (converged)")
    assert _complete(tmp_path / "out")


@pytest.mark.parametrize("stderr", ["closed", "full"])
def test_an_error_line_that_cannot_be_printed_keeps_exit_code_2(stderr, tmp_path):
    """A closed stderr sent the error line to stdout (print(file=None) writes there); a
    full one made printing it fail too: a traceback and exit 1."""
    with open(os.devnull if stderr == "closed" else "/dev/full", "w") as full:
        options = {"preexec_fn": _close_stderr} if stderr == "closed" else {"stderr": full}
        argv = ["fit", "missing.h5ad", *FIT, "-o", "out"]
        done = _vbsnmf(tmp_path, argv, stdout=subprocess.PIPE, text=True, **options)
    assert (done.returncode, done.stdout) == (2, "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (cli.Stopped(signal.SIGTERM), 143),
        (KeyboardInterrupt(), 130),
        (ValueError("bad input"), 2),
        (RuntimeError("a bug"), 1),
    ],
    ids=["SIGTERM", "Ctrl-C", "error", "internal"],
)
def test_the_exit_code_stands_when_stderr_fails(raised, code, tmp_path, monkeypatch):
    """Printing the last line raised OSError out of `main`, in place of its exit code."""

    def fail(args):
        raise raised

    monkeypatch.setattr(cli, "_run_fit", fail)
    monkeypatch.setattr(sys, "stderr", _Failing())
    assert cli.main(["fit", str(tmp_path / "small.h5ad"), *FIT, "-o", "out"]) == code


# -- 9: stdout a broken pipe or full ----------------------------------------------------------
@pytest.mark.parametrize("stdout", ["broken pipe", "full"])
def test_a_summary_that_cannot_be_printed_says_the_output_is_complete(stdout, tmp_path):
    """``| head -c0`` and ``>/dev/full``: OUTDIR was complete, yet the one line said only
    "[Errno 32] Broken pipe" or "[Errno 28] No space left on device"."""
    h5ad(tmp_path)
    argv = ["fit", "small.h5ad", *LOUD_FIT, "-o", "out"]
    if stdout == "full":
        with open("/dev/full", "w") as full:
            done = _vbsnmf(tmp_path, argv, stdout=full, stderr=subprocess.PIPE)
        reason = "[Errno 28] No space left on device"
    else:
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the summary is printed
        try:
            done = _vbsnmf(tmp_path, argv, stdout=write_end, stderr=subprocess.PIPE)
        finally:
            os.close(write_end)
        reason = "[Errno 32] Broken pipe"
    assert done.returncode == 2
    assert _messages(done.stderr) == [
        f"vbsnmf: error: cannot print the summary ({reason}); out was written in full"
    ]
    assert _complete(tmp_path / "out")


def test_umap_whose_summary_cannot_be_printed_keeps_the_figure(tmp_path, capfd, monkeypatch):
    """``umap -o u.png >/dev/full``: "[Errno 28] No space left on device", though u.png
    was written."""
    _fitted(tmp_path)
    monkeypatch.setattr(sys, "stdout", _Failing(BrokenPipeError, errno.EPIPE))
    code, _, err, _ = _main(["umap", "r.h5ad", "-o", "u.png"], capfd, tmp_path)
    assert code == 2
    assert err == (
        "vbsnmf: error: cannot print the summary ([Errno 32] Broken pipe); "
        "u.png was written in full\n"
    )
    assert (tmp_path / "u.png").stat().st_size > 0


# -- 11: a figure cut short ---------------------------------------------------------------------
def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply


def test_a_pdf_cut_short_by_a_file_size_limit_is_a_clean_error(tmp_path):
    """matplotlib's PDF writer raised zlib.error after its write failed (EFBIG): "vbsnmf:
    internal error (error: Error -2 while flushing: buffer error)", exit 1."""
    _fitted(tmp_path)
    done = _vbsnmf(
        tmp_path,
        ["umap", "r.h5ad", "-o", "u.pdf"],
        preexec_fn=_file_size_limit(3000),
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert (
        without_compile_notice(done.stderr) == "vbsnmf: error: [Errno 27] File too large: 'u.pdf'\n"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["r.h5ad"]


# -- 13: a 10x folder that cannot be searched -------------------------------------------------
@pytest.mark.parametrize("solver", [[], ["--solver", "svi", "--epochs", "1"]], ids=["batch", "svi"])
def test_a_folder_without_search_permission_is_named(solver, tmp_path, capfd, monkeypatch):
    """Mode 644 read by another user: "[Errno 13] Permission denied: '…/tenx/.zgroup'",
    a zarr file that is not there. Tests run as root, who may search any folder, so the
    folder's refusals are simulated: its files cannot be looked at, os.access says no."""
    folder = tenx(tmp_path)
    stat, access = os.stat, os.access

    def refusing_stat(path, *args, **kwargs):
        if Path(path).parent == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return stat(path, *args, **kwargs)

    def refusing_access(path, mode, *args, **kwargs):
        if Path(path) == folder and mode & os.X_OK:
            return False
        return access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "stat", refusing_stat)
    monkeypatch.setattr(os, "access", refusing_access)
    code, out, err, _ = _main(["fit", folder, *FIT, *solver, "-o", "out"], capfd, tmp_path)
    assert (code, out) == (2, "")
    assert err == f"vbsnmf: error: {folder}: cannot read this folder (permission denied)\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tenx"]


# -- 6b: out of memory --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("owner", "name", "error", "line"),
    [
        (vbsnmf.io, "read", MemoryError(), "out of memory while reading small.h5ad"),
        (vbsnmf.tl, "nmf", MemoryError(), "out of memory while fitting"),
        (
            vbsnmf.tl,
            "nmf",
            MemoryError("Unable to allocate 8.00 GiB for an array"),
            "out of memory while fitting: Unable to allocate 8.00 GiB for an array",
        ),
        (vbsnmf.io, "write_result", MemoryError(), "out of memory while writing out"),
    ],
    ids=["reading", "fitting", "fitting-numpy", "writing"],
)
def test_out_of_memory_says_what_was_being_done(
    owner, name, error, line, tmp_path, capfd, monkeypatch
):
    """A MemoryError from a failed allocation has no message: "vbsnmf: error: MemoryError"."""

    def fail(*args, **kwargs):
        raise error

    h5ad(tmp_path)
    monkeypatch.setattr(owner, name, fail)
    code, out, err, _ = _main(["fit", "small.h5ad", *FIT, "-o", "out"], capfd, tmp_path)
    assert (code, out, err) == (2, "", f"vbsnmf: error: {line}\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["small.h5ad"]
