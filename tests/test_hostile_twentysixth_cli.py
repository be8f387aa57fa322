"""The command line's options and messages (the twenty-sixth hostile pass, area cli)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from cli_output import without_compile_notice

import vbsnmf.cli as cli
import vbsnmf.io

# 20 cells x 12 genes
COUNTS = np.random.default_rng(0).poisson(2, (20, 12))


@pytest.fixture
def cells_mtx(tmp_path):
    """A Matrix Market file of `COUNTS`, cells as rows."""
    path = tmp_path / "x.mtx"
    scipy.io.mmwrite(path, sp.csr_matrix(COUNTS))
    return path


def _error(capsys) -> str:
    err = without_compile_notice(capsys.readouterr().err)
    assert err.count("\n") == 1, err
    return err


def test_resume_with_a_classical_solver_is_refused_as_such(cells_mtx, tmp_path, capsys):
    """Before: "--resume needs --checkpoint PATH", an option a classical solver refuses."""
    argv = ["fit", str(cells_mtx), "--cells-as-rows", "-k", "2", "-o", str(tmp_path / "o")]
    code = cli.main([*argv, "--solver", "hals", "--resume"])
    assert code == cli.EXIT_USAGE
    assert _error(capsys) == "vbsnmf: error: --resume applies to --solver batch or svi, not hals\n"
    assert not (tmp_path / "o").exists()


def test_convert_to_of_a_dense_matrix_market_file_says_drop_it(tmp_path, capsys):
    """Before: advice for Python ("read it into memory with vbsnmf.io.read_mtx"), while the
    command reads a dense file into memory by itself without --convert-to."""
    dense = tmp_path / "dense.mtx"
    scipy.io.mmwrite(dense, COUNTS.astype(float))
    outdir, converted = tmp_path / "o", tmp_path / "c.h5ad"
    argv = ["fit", str(dense), "--cells-as-rows", "-k", "2", "-o", str(outdir), "--solver", "svi"]
    assert cli.main([*argv, "--convert-to", str(converted)]) == cli.EXIT_USAGE
    assert _error(capsys) == (
        f"vbsnmf: error: --convert-to converts a sparse (coordinate) Matrix Market file; "
        f"{dense} holds a dense one (the array format), which --solver svi reads into "
        "memory: drop --convert-to\n"
    )
    assert not outdir.exists() and not converted.exists()


@pytest.mark.parametrize("genes_as_rows", [False, True])
def test_k_beyond_the_matrix_is_refused_before_the_conversion(
    genes_as_rows, tmp_path, capsys, monkeypatch
):
    """Before: the whole matrix was converted into OUTDIR/counts.h5ad ("vbsnmf: converted
    ... into o/counts.h5ad", minutes for a large one), then -k was refused by the fit."""
    path = tmp_path / "x.mtx"
    scipy.io.mmwrite(path, sp.csr_matrix(COUNTS.T if genes_as_rows else COUNTS))
    orientation = "--genes-as-rows" if genes_as_rows else "--cells-as-rows"

    def converted(*args, **kwargs):
        raise AssertionError("converted before -k was checked")

    monkeypatch.setattr(vbsnmf.io, "mtx_to_h5ad", converted)
    argv = ["fit", str(path), orientation, "-k", "13", "-o", str(tmp_path / "o"), "--solver", "svi"]
    assert cli.main(argv) == cli.EXIT_USAGE
    n_cells, n_genes = COUNTS.shape
    assert _error(capsys) == (
        f"vbsnmf: error: -k 13 is out of range: it must be between 1 and min(n_rows, "
        f"n_cols) = {min(COUNTS.shape)} for a matrix of shape ({n_cells}, {n_genes})\n"
    )
    assert not (tmp_path / "o").exists()


def test_a_stop_while_the_closing_warnings_print_says_the_output_was_written(
    cells_mtx, tmp_path, capsys, monkeypatch
):
    """A stop while the warnings are printed after the run (a full stderr pipe blocks the
    write), OUTDIR complete: the command said "no output written"."""
    outdir = tmp_path / "o"
    shown = cli._print_warnings

    def terminated_once_written(caught):
        if outdir.exists():  # the closing warnings, not the fit's own
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
            raise AssertionError("SIGTERM was not handled")
        shown(caught)

    monkeypatch.setattr(cli, "_print_warnings", terminated_once_written)
    argv = ["fit", str(cells_mtx), "--cells-as-rows", "-k", "2", "--max-iter", "2"]
    code = cli.main([*argv, "--threads", "1", "-o", str(outdir)])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM
    assert err.endswith(f"vbsnmf: terminated (SIGTERM); {outdir} was written in full\n"), err
    assert (outdir / "params.json").exists()


def test_demo_help_names_no_input_or_its_options(capsys):
    """Before: demo's SVI options were headed by what streams from an input (a 10x folder,
    an .mtx, an .h5ad, --layer/--use-raw), which demo, fitting a bundled data set, lacks."""
    assert cli.main(["demo", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "stochastic VB (--solver svi; the data set is held in memory):" in text
    for other in ("--layer", "--use-raw", ".mtx", "10x folder"):
        assert other not in text
