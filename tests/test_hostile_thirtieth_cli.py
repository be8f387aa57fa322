"""The command line's summary line, environment and messages (the thirtieth hostile pass,
area cli). Each test fails on the code before its fix unless its docstring says it guards
a normal case."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from cli_output import without_compile_notice

import vbsnmf.cli as cli

# 20 cells x 12 genes
COUNTS = np.random.default_rng(0).poisson(2, (20, 12))
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cells_mtx(tmp_path):
    """A Matrix Market file of `COUNTS`, cells as rows."""
    path = tmp_path / "x.mtx"
    scipy.io.mmwrite(path, sp.csr_matrix(COUNTS))
    return path


def _command(argv, **environment) -> subprocess.CompletedProcess:
    """``python -m vbsnmf`` with ``argv`` (text or bytes) in a process of its own, whose
    environment adds ``environment`` (this clone first on the path)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "NUMBA_NUM_THREADS": "1", **environment}
    return subprocess.run(
        [sys.executable, "-m", "vbsnmf", *argv], env=env, capture_output=True, timeout=120
    )


def _error(capsys) -> str:
    captured = capsys.readouterr()
    err = without_compile_notice(captured.err)
    assert captured.out == "" and err.count("\n") == 1, captured
    return err


@pytest.mark.skipif(sys.platform != "linux", reason="file names of any bytes (not APFS, NTFS)")
def test_summary_of_a_name_stdout_cannot_encode_is_printed_escaped(cells_mtx, tmp_path):
    """Before: an OUTDIR named by bytes that are not UTF-8, under a strict UTF-8 stdout (a
    UTF-8 locale such as en_US.UTF-8), was written in full and then reported as "vbsnmf:
    error: 'utf-8' codec can't encode character '\\udcff'" with exit code 2."""
    outdir = os.path.join(os.fsencode(tmp_path), b"out\xff")
    argv = [os.fsencode(cells_mtx), b"--cells-as-rows", b"-k", b"2", b"--max-iter", b"3"]
    run = _command([b"fit", *argv, b"-o", outdir], PYTHONIOENCODING="utf-8")
    assert run.returncode == 0, run.stderr
    assert b"error" not in run.stderr
    assert run.stdout.startswith(b"wrote " + os.fsencode(tmp_path) + b"/out\\udcff: 20 cells")
    assert b"result.h5ad" in os.listdir(outdir)


def test_summary_beyond_an_ascii_stdout_is_printed_escaped(cells_mtx, tmp_path):
    """Before: the same with a name of characters beyond stdout's encoding (ASCII here; a
    Windows code page)."""
    outdir = tmp_path / "résultat"
    argv = ["fit", str(cells_mtx), "--cells-as-rows", "-k", "2", "--max-iter", "3"]
    run = _command([*argv, "-o", str(outdir)], PYTHONIOENCODING="ascii")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"wrote {tmp_path}/r\\xe9sultat: ".encode())
    assert (outdir / "params.json").is_file()


@pytest.mark.parametrize("threads", ["0", "-2", "two"])
def test_numba_num_threads_numba_cannot_use_is_named(threads, cells_mtx, tmp_path):
    """Before: 0 or less failed every command with Numba's "Number of threads specified
    must be > 0.", naming neither the variable nor anything --threads could change; text
    printed Numba's warning with a traceback in it, several lines."""
    outdir = tmp_path / "o"
    argv = ["fit", str(cells_mtx), "--cells-as-rows", "-k", "2", "-o", str(outdir)]
    run = _command([*argv, "--max-iter", "2", "--threads", "1"], NUMBA_NUM_THREADS=threads)
    assert run.returncode == 2 and run.stdout == b""
    assert run.stderr.decode() == (
        f"vbsnmf: error: the environment variable NUMBA_NUM_THREADS={threads!r} is not a "
        "whole number >= 1 (the most threads Numba starts); unset it, and choose a run's "
        "threads with --threads\n"
    )
    assert not outdir.exists()


def test_numba_threading_layer_is_not_blamed_on_the_input(tmp_path):
    """Before: "vbsnmf: error: x.h5ad: The threading layer requested 'bogus' is unknown to
    Numba.": the layer is loaded at the first parallel kernel, which checks the input as
    it is read, so the error was said as the file's."""
    import anndata as ad

    path = tmp_path / "x.h5ad"
    ad.AnnData(sp.csr_matrix(COUNTS.astype("float32"))).write_h5ad(path)
    outdir = tmp_path / "o"
    run = _command(["fit", str(path), "-k", "2", "-o", str(outdir)], NUMBA_THREADING_LAYER="bogus")
    assert run.returncode == 2 and run.stdout == b""
    assert run.stderr.decode() == (
        "vbsnmf: error: the environment variable NUMBA_THREADING_LAYER='bogus' names a "
        "threading layer that Numba cannot load (The threading layer requested 'bogus' is "
        "unknown to Numba.); unset it or name another\n"
    )
    assert not outdir.exists()


def test_a_loadable_threading_layer_fits(cells_mtx, tmp_path):
    """A guard (passes on both): a layer Numba loads (its own workqueue) is no error."""
    argv = ["fit", str(cells_mtx), "--cells-as-rows", "-k", "2", "-o", str(tmp_path / "o")]
    run = _command([*argv, "--max-iter", "2", "--quiet"], NUMBA_THREADING_LAYER="workqueue")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "o" / "result.h5ad").is_file()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["fit", "in.h5ad", "-k", "2", "-o", "o", "--verbose"], "--verbose (see vbsnmf fit"),
        (["fit", "-k", "2", "-o", "o", "a.h5ad", "b.h5ad"], "b.h5ad (see vbsnmf fit"),
        (["umap", "r.h5ad", "-o", "u.png", "--colour", "x"], "--colour x (see vbsnmf umap"),
        (["demo", "--verbose"], "--verbose (see vbsnmf demo"),
        (["--verbose"], "--verbose (see vbsnmf"),
    ],
)
def test_stray_arguments_send_to_the_command_help(argv, expected, capsys):
    """Before: a command's stray arguments said "(see vbsnmf --help)", the top level's help,
    which does not list the command's options (the last case, with no command, passes on
    both: a guard)."""
    assert cli.main(argv) == cli.EXIT_USAGE
    assert _error(capsys) == f"vbsnmf: error: unrecognized arguments: {expected} --help)\n"


@pytest.mark.parametrize(("saved", "resumed"), [("hierarchical", "gamma"), ("gamma", None)])
def test_resume_under_another_prior_names_no_python_parameter(
    saved, resumed, cells_mtx, tmp_path, capsys
):
    """Before: the refusal listed "accelerate: checkpoint True vs now False" beside --prior:
    SQUAREM's acceleration follows --prior on the command line, and no option sets it."""
    checkpoint = tmp_path / "c.npz"
    argv = ["fit", str(cells_mtx), "--cells-as-rows", "-k", "2", "--max-iter", "3", "--quiet"]
    argv += ["--checkpoint", str(checkpoint), "--threads", "1"]
    assert cli.main([*argv, "-o", str(tmp_path / "a"), "--prior", saved]) == 0
    now = [] if resumed is None else ["--prior", resumed]
    assert cli.main([*argv, "-o", str(tmp_path / "b"), "--resume", *now]) == cli.EXIT_USAGE
    err = _error(capsys)
    assert err.startswith(
        f"vbsnmf: error: checkpoint {checkpoint} was written by a different fit (--prior: "
        f"checkpoint '{saved}'"
    )
    assert f"vs now '{resumed or 'hierarchical'}'" in err
    assert "accelerate" not in err and not (tmp_path / "b").exists()


@pytest.mark.parametrize("command", ["fit", "demo"])
def test_threads_help_says_what_caps_them(command, capsys):
    """Before: "Numba threads (default: all cores)", while NUMBA_NUM_THREADS (an HPC
    profile's 1, say) caps the default and --threads alike, silently."""
    assert cli.main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "--threads T Numba threads, at most the cores or NUMBA_NUM_THREADS where it is set" in text
    )
    assert "params.json records the threads used" in text


def test_a_deleted_current_folder_is_named(cells_mtx, tmp_path):
    """Before: "vbsnmf: error: [Errno 2] No such file or directory", naming nothing, also
    with every path absolute (the OUTDIR check asks for the current folder)."""
    gone, outdir = tmp_path / "gone", tmp_path / "o"
    gone.mkdir()
    argv = ["fit", str(cells_mtx), "--cells-as-rows", "-k", "2", "-o", str(outdir)]
    script = (
        f"import os, sys; os.chdir({str(gone)!r}); os.rmdir({str(gone)!r}); "
        f"import vbsnmf.cli as cli; sys.exit(cli.main({argv!r}))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(REPO), "NUMBA_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and run.stdout == ""
    assert without_compile_notice(run.stderr) == (
        "vbsnmf: error: the current folder no longer exists (deleted or moved away while "
        "this shell was in it); change to an existing folder and run again\n"
    )
    assert not outdir.exists()
