"""The thirty-sixth hostile pass's second wave over the command line's leftovers (area
clifollow): standard streams named as paths, a low limit on open files, ``--version``.

Four defects, each with tests that fail on the code before the fix:

- ``vbsnmf fit -`` (and ``umap -``, ``--row-names -``, ``--col-names -``) said "-: no such
  file or directory", as if piped data had not arrived; it now says that vbsnmf does not
  read the standard input and to write the data to a file.
- Under a low ``ulimit -n`` an ``.h5ad`` input failed with "vbsnmf: error: [Errno 24] Too
  many open files", naming no file (the pipes of the child process that checks its HDF5
  structure). The file and the step are now named, and any "Too many open files" the
  command reports says the limit and advises raising ``ulimit -n``.
- ``--checkpoint /dev/stdout`` (or ``/dev/stderr``, ``/dev/fd/N``) where the stream is a
  log file was refused as "/path/log.txt is not a vbsnmf checkpoint ...; name another path
  or remove it": advice to delete the user's log. It, and ``-o /dev/stdout`` (which said
  "already exists and is not a folder"), now say that the path leads to the standard
  output of this process and to name a checkpoint file (a new folder).
- ``vbsnmf --version`` built the whole parser, importing numpy, scipy, Numba and
  scikit-learn (about a second here) to print one line; it now answers without them.

Guards (pass on the base code too, said in their docstrings): a file really named ``-``
is taken as a file; ``--version``'s text and its failure on a full disk are unchanged; a
link to a regular file that is no stream is still followed.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from cli_output import without_compile_notice

from vbsnmf import __version__, cli

needs_proc_fd = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="links to open files under /proc/self/fd"
)
# the clone's vbsnmf in the child processes, whatever is installed
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": str(Path(cli.__file__).resolve().parents[1]),
    "NUMBA_NUM_THREADS": "1",
}


def _run(argv, capsys):
    code = cli.main([str(argument) for argument in argv])
    out, err = capsys.readouterr()
    return code, out, without_compile_notice(err)


def _counts() -> ad.AnnData:
    rng = np.random.default_rng(7)
    return ad.AnnData(sp.csr_matrix(rng.poisson(1.0, size=(40, 12)).astype(np.float32)))


@pytest.fixture
def counts_h5ad(tmp_path):
    path = tmp_path / "in.h5ad"
    _counts().write_h5ad(path)
    return path


# -- '-' for the standard input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, label",
    [
        (["fit", "-", "-k", "2", "-o", "out"], "INPUT"),
        (["fit", "in.mtx", "--row-names", "-", "-k", "2", "-o", "out"], "--row-names"),
        (["fit", "in.mtx", "--col-names", "-", "-k", "2", "-o", "out"], "--col-names"),
        (["umap", "-", "-o", "umap.png"], "RESULT.h5ad"),
    ],
    ids=["fit", "row-names", "col-names", "umap"],
)
def test_dash_says_the_standard_input_is_not_read(tmp_path, capsys, monkeypatch, argv, label):
    """'-' where no file of that name is: one line saying that the standard input is not
    read and to write the data to a file, naming the option, exit 2, nothing written.
    Before: "-: no such file or directory" (as if piped data had not arrived)."""
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(argv, capsys)
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert err.startswith("vbsnmf: error: -: vbsnmf does not read the standard input"), err
    assert f"({label} '-')" in err and "write the data to a file" in err, err
    assert "no such file" not in err
    assert os.listdir(tmp_path) == []


def test_a_file_named_dash_is_taken_as_a_file(tmp_path, capsys, monkeypatch):
    """Guard (passes on the base code too): a file really named ``-`` is taken as a file,
    not as the standard input: refused as any input whose name gives no format."""
    monkeypatch.chdir(tmp_path)
    _counts().write_h5ad(tmp_path / "-")
    code, out, err = _run(["fit", "-", "-k", "2", "-o", "out"], capsys)
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert err.startswith("vbsnmf: error: -: unrecognised input"), err
    assert "standard input" not in err


# -- too many open files -------------------------------------------------------------------------


def test_too_many_open_files_in_the_hdf5_probe_names_the_file_and_the_limit(
    counts_h5ad, tmp_path, capsys, monkeypatch
):
    """The child process that checks an .h5ad's structure cannot start (EMFILE from its
    pipes): one line naming the file, the step, the limit and ``ulimit -n``, exit 2.
    Before: "vbsnmf: error: [Errno 24] Too many open files", naming nothing."""
    import resource

    def refused(*args, **kwargs):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(subprocess, "run", refused)
    code, out, err = _run(["fit", counts_h5ad, "-k", "2", "-o", "out"], capsys)
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert err.startswith(f"vbsnmf: error: {counts_h5ad}: could not be checked"), err
    assert "Too many open files" in err and "HDF5 structure" in err, err
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert f"at most {limit} files open" in err and "'ulimit -n " in err, err
    assert sorted(os.listdir(tmp_path)) == ["in.h5ad"]


def test_too_many_open_files_anywhere_advises_raising_the_limit(tmp_path, capsys, monkeypatch):
    """Any "Too many open files" the command reports (here one raised as the options are
    checked) says the limit and advises ``ulimit -n``. Before: the bare system message."""

    def refused(args):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), "out/elbo.tsv")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_check_options", refused)
    code, out, err = _run(["fit", "in.h5ad", "-k", "2", "-o", "out"], capsys)
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert "Too many open files: 'out/elbo.tsv'; this command may hold at most" in err, err
    assert "raise it (e.g. 'ulimit -n " in err, err


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash for ulimit")
def test_a_real_low_ulimit_names_the_input(counts_h5ad, tmp_path):
    """The command under ``ulimit -n 9`` (a child process): the .h5ad named, with the
    advice. Before: "vbsnmf: error: [Errno 24] Too many open files"."""
    child = subprocess.run(
        ["bash", "-c", f"ulimit -n 9 && exec {sys.executable} -m vbsnmf fit in.h5ad -k 2 -o out"],
        cwd=tmp_path,
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = without_compile_notice(child.stderr)
    assert child.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith("vbsnmf: error: in.h5ad: could not be checked"), err
    assert "at most 9 files open" in child.stderr, child.stderr
    assert not (tmp_path / "out").exists()


# -- /dev/stdout, /dev/stderr and /proc/self/fd/N leading to a regular file ----------------------


@pytest.fixture
def open_log(tmp_path):
    """``/proc/self/fd/N`` of a log file open for appending, as ``>> log.txt`` leaves
    stdout; yields the link and the log's path."""
    log = tmp_path / "log.txt"
    log.write_text("my log\n")
    with open(log, "a") as handle:
        yield f"/proc/self/fd/{handle.fileno()}", log


@needs_proc_fd
def test_checkpoint_through_an_open_log_is_refused_without_advice_to_remove_it(
    tmp_path, counts_h5ad, capsys, monkeypatch, open_log
):
    """``--checkpoint /proc/self/fd/N`` of an open log: refused naming the link, what it
    leads to (the open descriptor) and the file, advising to name a checkpoint file; the
    log untouched. Before: "/path/log.txt is not a vbsnmf checkpoint ...; name another
    path or remove it", advice to delete the user's log."""
    link, log = open_log
    monkeypatch.chdir(tmp_path)
    argv = ["fit", counts_h5ad, "-k", "2", "-o", "out", "--checkpoint", link]
    code, out, err = _run(argv, capsys)
    assert (code, out, err.count("\n")) == (2, "", 1), err
    descriptor = link.rsplit("/", 1)[1]
    assert err.startswith(
        f"vbsnmf: error: checkpoint {link} leads to the open file descriptor {descriptor} of "
        f"this process ({log}), not to a path of its own; name a checkpoint file"
    ), err
    assert "remove" not in err and "not a vbsnmf checkpoint" not in err
    assert log.read_text() == "my log\n"
    assert sorted(os.listdir(tmp_path)) == ["in.h5ad", "log.txt"]


@needs_proc_fd
def test_outdir_through_an_open_log_says_it_is_a_stream(
    tmp_path, counts_h5ad, capsys, monkeypatch, open_log
):
    """``-o /proc/self/fd/N`` of an open log: the same words, naming a new folder. Before:
    "... already exists and is not a folder; --force replaces only a folder holding an
    earlier output", of a path the user never created."""
    link, log = open_log
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(["fit", counts_h5ad, "-k", "2", "-o", link], capsys)
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert f"OUTDIR {link} leads to the open file descriptor" in err, err
    assert err.rstrip().endswith("name a new folder"), err
    assert log.read_text() == "my log\n"


@needs_proc_fd
def test_python_checkpoint_through_an_open_log_is_refused(tmp_path, open_log):
    """`VBNMF(checkpoint=...)` through such a link: the same refusal, naming the stream,
    before any pass. Before: `CheckpointError` advising to remove the log."""
    from vbsnmf import VBNMF
    from vbsnmf.io import UnsafePathError

    link, log = open_log
    model = VBNMF(n_components=2, max_iter=3, checkpoint=link, n_threads=1)
    with pytest.raises(UnsafePathError, match="leads to the open file descriptor"):
        model.fit(_counts().X)
    assert log.read_text() == "my log\n"


@needs_proc_fd
@pytest.mark.parametrize(
    "argv, stream",
    [
        (["--checkpoint", "/dev/stdout", "-o", "out"], "output"),
        (["--checkpoint", "/dev/stderr", "-o", "out"], "error"),
        (["-o", "/dev/stdout"], "output"),
    ],
    ids=["checkpoint-stdout", "checkpoint-stderr", "outdir-stdout"],
)
def test_standard_streams_redirected_to_a_log_are_named(counts_h5ad, tmp_path, argv, stream):
    """The command with its stdout (or stderr) appended to a log (``>> log.txt``): the
    refusal names "the standard output" (error) and the log, never advises removing it,
    and the log keeps what it held. Before: "... log.txt is not a vbsnmf checkpoint ...;
    name another path or remove it" (checkpoint) or "/dev/stdout already exists" (OUTDIR)."""
    log = tmp_path / "log.txt"
    log.write_text("my log\n")
    with open(log, "a") as handle:
        streams = {"stdout": handle} if stream == "output" else {"stderr": handle}
        child = subprocess.run(
            [sys.executable, "-m", "vbsnmf", "fit", "in.h5ad", "-k", "2", *argv],
            cwd=tmp_path,
            env=CHILD_ENV,
            text=True,
            stdout=streams.get("stdout", subprocess.PIPE),
            stderr=streams.get("stderr", subprocess.PIPE),
            timeout=120,
        )
    err = child.stderr if stream == "output" else log.read_text().split("my log\n", 1)[1]
    err = without_compile_notice(err)
    assert child.returncode == 2 and err.count("\n") == 1, err
    assert f"leads to the standard {stream} of this process ({log})" in err, err
    assert "remove" not in err
    assert log.read_text().startswith("my log\n")
    assert not (tmp_path / "out").exists()


@needs_proc_fd
def test_a_link_to_a_regular_file_is_still_followed(tmp_path):
    """Guard (passes on the base code too): a symbolic link to a regular file that is no
    open stream is still followed, as documented: the output goes where it points."""
    from vbsnmf.io._paths import check_output_file

    (tmp_path / "real.png").write_bytes(b"")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    assert check_output_file("-o", tmp_path / "link.png") == tmp_path / "real.png"


# -- --version ---------------------------------------------------------------------------------


def test_version_does_not_build_the_parser(capsys, monkeypatch):
    """``--version`` answers without the parser (whose choices import numpy, scipy, Numba
    and scikit-learn). Before: the parser was built first."""

    def refused():
        raise AssertionError("the parser was built")

    monkeypatch.setattr(cli, "build_parser", refused)
    code, out, err = _run(["--version"], capsys)
    assert (code, out, err) == (0, f"vbsnmf {__version__}\n", "")


def test_version_imports_no_numerical_library(tmp_path):
    """``python -m vbsnmf --version`` in a fresh process: its text as before and none of
    numpy, scipy, Numba, scikit-learn imported. Before: all four (about 1 s here)."""
    child = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vbsnmf", "--version"],
        cwd=tmp_path,
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (child.returncode, child.stdout) == (0, f"vbsnmf {__version__}\n")
    imported = {line.rsplit("|", 1)[-1].strip() for line in child.stderr.splitlines()}
    assert not imported & {"numpy", "scipy", "numba", "sklearn"}, imported


@pytest.mark.parametrize("argv", [["--version", "fit"], ["--vers"]])
def test_other_version_spellings_still_answer(capsys, argv):
    """Guard (passes on the base code too): argparse still answers ``--version`` followed
    by more, and an abbreviation, with the same text."""
    code, out, err = _run(argv, capsys)
    assert (code, out, err) == (0, f"vbsnmf {__version__}\n", "")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_version_to_a_full_disk_still_fails(tmp_path):
    """Guard (passes on the base code too): ``--version > /dev/full`` is still one line
    on stderr and exit code 2, not a silent exit 0."""
    with open("/dev/full", "w") as full:
        child = subprocess.run(
            [sys.executable, "-m", "vbsnmf", "--version"],
            cwd=tmp_path,
            env=CHILD_ENV,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert child.returncode == 2, child.stderr
    assert child.stderr.startswith("vbsnmf: error: cannot print to stdout"), child.stderr
