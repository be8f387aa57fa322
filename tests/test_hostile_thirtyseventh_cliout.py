"""Thirty-seventh hostile pass, the command line's outputs: two runs started together into
one OUTDIR.

`check_outdir` refuses a run started while another writes OUTDIR (its temporary folder
beside OUTDIR is locked), but two runs started at the same moment both passed that check
before either had made its folder: both fitted to the end, then the later one failed with
"appeared while writing", or with --force silently replaced the other's output, both runs
saying "wrote OUTDIR" with exit code 0. Such a second run is refused now once its own folder
is made, before the input is read. The other run is stood in for by a temporary folder of
OUTDIR's name, made and locked as the writer makes and locks its own, as soon as this run's
`check_outdir` has passed.

Each test of a fix failed on the code before it; the guard says so in its docstring."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import vbsnmf
import vbsnmf.cli

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")

ANOTHER_RUN = "another run is writing OUTDIR"
FIT = ["fit", "in.mtx", "--cells-as-rows", "-k", "2", "--max-iter", "3", "--quiet"]


def _mtx(folder: Path) -> None:
    counts = sp.random(60, 15, density=0.4, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 5)
    scipy.io.mmwrite(folder / "in.mtx", counts.tocoo())


@pytest.fixture
def other_run(tmp_path, monkeypatch):
    """Once this run's `check_outdir` passes, another run's temporary folder for the same
    OUTDIR appears beside it, locked as `vbsnmf._atomic.atomic_directory` locks its own
    (that run passed its check at the same moment). With ``locked=False`` instead, a
    killed run's leftover: its lock free. Yields the folder made (a list, filled then)."""
    import fcntl

    made, descriptors = [], []
    check_outdir = vbsnmf.io.check_outdir
    settings = {"locked": True}

    def checked_as_another_starts(outdir, **kwargs):
        path = check_outdir(outdir, **kwargs)
        folder = path.parent / f".{path.name}.abcd1234.tmp"
        folder.mkdir()
        if settings["locked"]:
            descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            descriptors.append(descriptor)
        made.append(folder)
        return path

    monkeypatch.setattr(vbsnmf.io, "check_outdir", checked_as_another_starts)
    monkeypatch.chdir(tmp_path)
    _mtx(tmp_path)
    yield made, settings
    for descriptor in descriptors:
        os.close(descriptor)


def _left_beside(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.name.startswith("."))


def test_a_run_started_with_another_into_the_same_outdir_is_refused(tmp_path, capfd, other_run):
    """Before: both wrote to the end; this one kept OUTDIR, the other run then failed with
    "appeared while writing" after its whole fit. Now this one is refused before its read,
    leaving neither OUTDIR nor its own temporary, and the other run's folder as it is."""
    made, _ = other_run
    assert vbsnmf.cli.main([*FIT, "-o", "out"]) == 2
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("vbsnmf: error: ")
    assert ANOTHER_RUN in captured.err and made[0].name in captured.err
    assert not (tmp_path / "out").exists()
    assert _left_beside(tmp_path) == [made[0].name] and made[0].is_dir()


def test_force_no_longer_replaces_the_output_of_a_run_started_with_it(tmp_path, capfd, other_run):
    """Before: with --force each of two runs started together replaced OUTDIR at its end,
    and both exited 0 having "wrote out": one fit silently lost. Now the second is refused
    and the output already there is kept as it was."""
    made, settings = other_run
    settings["locked"] = False  # the first run: no other run beside it
    assert vbsnmf.cli.main([*FIT, "-o", "out", "--seed", "1"]) == 0
    earlier = (tmp_path / "out" / "params.json").read_text()
    made[0].rmdir()
    settings["locked"] = True
    capfd.readouterr()
    assert vbsnmf.cli.main([*FIT, "-o", "out", "--seed", "2", "--force"]) == 2
    assert ANOTHER_RUN in capfd.readouterr().err
    assert (tmp_path / "out" / "params.json").read_text() == earlier
    assert json.loads(earlier)["seed"] == 1


def test_a_streamed_fit_started_with_another_is_refused_before_converting(
    tmp_path, capfd, monkeypatch, other_run
):
    """The same for --solver svi, whose OUTDIR holds the conversion of the .mtx: refused
    before converting (before: converted, fitted and written)."""
    converted = []
    real = vbsnmf.io.mtx_to_h5ad

    def converting(*args, **kwargs):
        converted.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(vbsnmf.io, "mtx_to_h5ad", converting)
    assert vbsnmf.cli.main([*FIT, "--solver", "svi", "--epochs", "2", "-o", "out"]) == 2
    assert ANOTHER_RUN in capfd.readouterr().err
    assert converted == []
    assert not (tmp_path / "out").exists()


def test_a_killed_runs_leftover_does_not_stop_a_run(tmp_path, capfd, other_run):
    """Guard (passes on both): a temporary folder of OUTDIR's name whose lock is free (its
    writer was killed a moment ago) does not refuse the run; OUTDIR is written."""
    made, settings = other_run
    settings["locked"] = False
    assert vbsnmf.cli.main([*FIT, "-o", "out"]) == 0
    assert (tmp_path / "out" / "params.json").is_file()
    assert made[0].is_dir()


# -- umap --quiet, as fit and demo take it ---------------------------------------------------


def test_umap_takes_quiet_as_fit_and_demo_do(tmp_path, capfd, monkeypatch):
    """Before: ``vbsnmf umap ... --quiet`` was refused ("unrecognized arguments: --quiet"),
    exit 2 and no figure, though fit and demo take it: a script quieting each step failed
    at this one. Now it draws the figure with neither the summary line ("wrote FILE") nor
    the drawing's warnings, which are told without it. The drawing is stood in for (UMAP's
    compiling takes a minute on a busy machine): it writes the file and warns as
    `vbsnmf.pl.umap` warns of a one-factor fit."""
    import warnings

    def drawing(adata, output, *, seed, **options):
        warnings.warn("the fit has one factor", UserWarning, stacklevel=2)
        Path(output).write_bytes(b"\x89PNG\r\n\x1a\n")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vbsnmf.cli, "_draw_umap", drawing)
    _mtx(tmp_path)
    assert vbsnmf.cli.main([*FIT, "-o", "out"]) == 0
    capfd.readouterr()
    assert vbsnmf.cli.main(["umap", "out/result.h5ad", "-o", "told.png"]) == 0
    told = capfd.readouterr()
    assert told.out == "wrote told.png\n" and "one factor" in told.err
    assert vbsnmf.cli.main(["umap", "out/result.h5ad", "-o", "quiet.png", "--quiet"]) == 0
    assert capfd.readouterr() == ("", "")
    assert (tmp_path / "quiet.png").read_bytes() == b"\x89PNG\r\n\x1a\n"
