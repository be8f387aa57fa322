"""The command line's runs as a whole: a stop signal that arrives once the output is in
place (the twenty-third hostile pass, area clirun)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import vbsnmf.cli as cli
from vbsnmf import datasets

FIT = ["-k", "2", "--max-iter", "2", "--threads", "1", "--quiet"]


@pytest.fixture
def small_h5ad(tmp_path):
    adata = datasets.pbmc_tiny()[:200, :100].copy()
    adata = adata[np.asarray(adata.X.sum(axis=1)).ravel() > 0].copy()
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    return path


def _terminated(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler interrupts this
    raise AssertionError("SIGTERM was not handled")


@pytest.mark.parametrize("force", [False, True])
def test_a_stop_once_outdir_is_in_place_says_it_was_written(
    small_h5ad, tmp_path, capsys, monkeypatch, force
):
    """SIGTERM while the summary line is printed, OUTDIR complete on disk: the command said
    "no output written", and a script rerunning the fit on that word met an existing
    OUTDIR. Also over an earlier output replaced with --force."""
    outdir = tmp_path / "out"
    if force:
        assert cli.main(["fit", str(small_h5ad), *FIT, "-o", str(outdir)]) == 0
        earlier = os.stat(outdir / "params.json").st_ino
    monkeypatch.setattr(cli, "_report", _terminated)
    options = ["--force"] if force else []
    code = cli.main(["fit", str(small_h5ad), *FIT, *options, "-o", str(outdir)])
    err = capsys.readouterr().err
    assert code == 143
    assert err == f"vbsnmf: terminated (SIGTERM); {outdir} was written in full\n"
    assert (outdir / "params.json").exists()
    if force:
        assert os.stat(outdir / "params.json").st_ino != earlier


def test_a_stop_during_the_fit_over_an_earlier_output_still_says_none_written(
    small_h5ad, tmp_path, capsys, monkeypatch
):
    """The earlier output that --force would replace is not taken for this run's."""
    import vbsnmf.tl

    outdir = tmp_path / "out"
    assert cli.main(["fit", str(small_h5ad), *FIT, "-o", str(outdir)]) == 0
    before = (outdir / "params.json").read_text()
    capsys.readouterr()
    monkeypatch.setattr(vbsnmf.tl, "nmf", _terminated)
    code = cli.main(["fit", str(small_h5ad), *FIT, "--force", "-o", str(outdir)])
    assert (code, capsys.readouterr().err) == (
        143,
        "vbsnmf: terminated (SIGTERM); no output written\n",
    )
    assert (outdir / "params.json").read_text() == before


def test_a_stop_once_the_figure_is_written_says_it_was_written(
    small_h5ad, tmp_path, capsys, monkeypatch
):
    """umap: SIGTERM as the figure was closed (after it was saved) said "no output
    written" beside the figure; an earlier figure at -o that the run had not replaced yet
    is not taken for this run's."""
    outdir = tmp_path / "out"
    assert cli.main(["fit", str(small_h5ad), *FIT, "-o", str(outdir)]) == 0
    figure = tmp_path / "umap.png"
    figure.write_bytes(b"an earlier figure")

    def stopped_before_saving(adata, output, **options):
        _terminated()

    def saved_then_stopped(adata, output, **options):
        replacement = tmp_path / "new.png"
        replacement.write_bytes(b"the new figure")
        os.replace(replacement, output)  # as atomic_file puts it in place
        _terminated()

    capsys.readouterr()
    umap = ["umap", str(outdir / "result.h5ad"), "-o", str(figure)]
    monkeypatch.setattr(cli, "_draw_umap", stopped_before_saving)
    assert (cli.main(umap), capsys.readouterr().err) == (
        143,
        "vbsnmf: terminated (SIGTERM); no output written\n",
    )
    assert figure.read_bytes() == b"an earlier figure"
    monkeypatch.setattr(cli, "_draw_umap", saved_then_stopped)
    assert (cli.main(umap), capsys.readouterr().err) == (
        143,
        f"vbsnmf: terminated (SIGTERM); {figure} was written in full\n",
    )


@pytest.mark.parametrize("saved, resumed", [("svi", "batch"), ("batch", "svi")])
def test_resuming_with_the_other_solver_names_the_solver_before_reading(
    small_h5ad, tmp_path, capsys, monkeypatch, saved, resumed
):
    """The --solver forgotten on the resume: the error came after the input was read (for
    svi from a 10x folder: converted), listed settings that are no options (kappa, tau,
    svi_form) and advised to remove the checkpoint, the state the user meant to resume."""
    import vbsnmf.io

    checkpoint = tmp_path / "ck"
    fit = ["fit", str(small_h5ad), *FIT, "--checkpoint", str(checkpoint)]
    assert cli.main([*fit, "--solver", saved, "-o", str(tmp_path / "first")]) == 0
    capsys.readouterr()
    saved_bytes = checkpoint.read_bytes()

    def not_read(*args, **kwargs):
        raise AssertionError("the input was read")

    monkeypatch.setattr(vbsnmf.io, "read", not_read)
    monkeypatch.setattr(vbsnmf.io, "read_h5ad_backed", not_read)
    code = cli.main([*fit, "--solver", resumed, "--resume", "-o", str(tmp_path / "again")])
    assert (code, capsys.readouterr().err) == (
        2,
        f"vbsnmf: error: --checkpoint {checkpoint} holds a fit of --solver {saved}, not "
        f"{resumed}: pass --solver {saved} to resume it\n",
    )
    assert checkpoint.read_bytes() == saved_bytes
    assert not (tmp_path / "again").exists()
