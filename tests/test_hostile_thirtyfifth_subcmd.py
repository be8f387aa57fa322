"""The command line's other commands: ``umap``, ``demo``, ``--version``/``--help`` and the
bundled data sets they read (the thirty-fifth hostile pass, area sub). Each test fails on
the code before its fix unless its docstring says it guards a normal case."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from cli_output import without_compile_notice

import vbsnmf
import vbsnmf.cli as cli
from vbsnmf.datasets import _load
from vbsnmf.io import ReadError

REPO = Path(__file__).resolve().parents[1]
# 40 cells x 12 genes
COUNTS = np.random.default_rng(35).poisson(2, (40, 12))


def _command(argv, **environment) -> subprocess.CompletedProcess:
    """``python -m vbsnmf`` with ``argv`` in a process of its own, whose environment adds
    ``environment`` (this clone first on the path)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "NUMBA_NUM_THREADS": "1", **environment}
    return subprocess.run(
        [sys.executable, "-m", "vbsnmf", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _error(capsys) -> str:
    captured = capsys.readouterr()
    err = without_compile_notice(captured.err)
    assert captured.out == "" and err.count("\n") == 1, captured
    return err


# -- MPLBACKEND -----------------------------------------------------------------------------
def test_umap_is_not_stopped_by_an_unknown_mplbackend(tmp_path):
    """Before: under ``MPLBACKEND=bogus`` every ``vbsnmf umap`` failed with matplotlib's
    "Key backend: 'bogus' is not a valid value for backend", naming no variable, and
    ``vbsnmf demo`` so after its whole fit, writing nothing. The command line draws into
    files only, with Agg: the variable is set aside, and the command goes on to read its
    input (here a text file, refused as no HDF5 file)."""
    result = tmp_path / "result.h5ad"
    result.write_text("not HDF5\n")
    done = _command(["umap", str(result), "-o", str(tmp_path / "u.png")], MPLBACKEND="bogus")
    err = without_compile_notice(done.stderr)
    assert done.returncode == 2 and err.count("\n") == 1, err
    assert "not a readable HDF5 file" in err and "backend" not in done.stderr


def test_the_commands_run_under_agg_and_give_mplbackend_back(monkeypatch):
    """While a command runs, MPLBACKEND is Agg (matplotlib loads then, for ``umap`` and
    the end of ``demo``); afterwards the caller's value is back. Before, the command ran
    under the caller's value."""
    seen = []
    monkeypatch.setenv("MPLBACKEND", "bogus")
    monkeypatch.setattr(
        cli, "_run_reporting_warnings", lambda args: seen.append(os.environ.get("MPLBACKEND")) or 0
    )
    assert cli.main(["umap", "r.h5ad", "-o", "u.png"]) == 0
    assert seen == ["agg"] and os.environ["MPLBACKEND"] == "bogus"
    monkeypatch.delenv("MPLBACKEND")
    assert cli.main(["umap", "r.h5ad", "-o", "u.png"]) == 0
    assert "MPLBACKEND" not in os.environ


# -- --version and --help on a stdout that fails ---------------------------------------------
class _FailingStdout(io.StringIO):
    """A stdout whose writes (or only its flushes) fail as on a full disk."""

    def __init__(self, *, on: str, error: OSError):
        super().__init__()
        self.on, self.error = on, error

    def write(self, text):
        if self.on == "write":
            raise self.error
        return super().write(text)

    def flush(self):
        if self.on == "flush":
            raise self.error


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["umap", "--help"]])
@pytest.mark.parametrize("on", ["write", "flush"])
def test_version_and_help_on_a_full_stdout_are_an_error(argv, on, monkeypatch, capsys):
    """Before: ``vbsnmf --version > /dev/full`` (an unbuffered write that fails, which
    argparse ignores) or a buffered stdout that fails at the flush lost the text without
    a word, with exit code 0: a script reading the version got an empty string. Now one
    line and exit code 2."""
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(sys, "stdout", _FailingStdout(on=on, error=full))
    assert cli.main(argv) == 2
    assert "cannot print to stdout ([Errno 28] No space left on device)" in _error(capsys)


@pytest.mark.parametrize("on", ["write", "flush"])
def test_help_into_a_closed_pipe_is_no_error(on, monkeypatch, capsys):
    """Guard (passes on the base code too): ``vbsnmf fit --help | head -3``, whose reader
    stops reading, is no error: exit code 0 and nothing on stderr."""
    monkeypatch.setattr(sys, "stdout", _FailingStdout(on=on, error=BrokenPipeError()))
    assert cli.main(["fit", "--help"]) == 0
    assert capsys.readouterr().err == ""


def test_version_is_printed(capsys):
    """Guard (passes on the base code too): ``vbsnmf --version`` prints the version."""
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"vbsnmf {vbsnmf.__version__}\n"


def test_no_command_is_one_line_and_exit_code_2():
    """Guard (passes on the base code too): ``python -m vbsnmf`` without a command."""
    done = _command([])
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "vbsnmf: error: choose a command: fit, umap or demo (see vbsnmf --help)\n"


# -- a damaged copy of the bundled data -------------------------------------------------------
@pytest.fixture
def data_copy(tmp_path, monkeypatch) -> Path:
    """The small bundled data sets copied to ``tmp_path`` and loaded from there."""
    data = tmp_path / "data"
    shutil.copytree(_load._DATA / "pbmc_facs" / "test", data / "pbmc_facs" / "test")
    shutil.copytree(_load._DATA / "pbmc_tiny_v3", data / "pbmc_tiny_v3")
    monkeypatch.setattr(_load, "_DATA", data)
    return data


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("folder", "damage", "named"),
    [
        ("pbmc_tiny_v3", lambda f: (f / "features.tsv.gz").unlink(), "features.tsv.gz: missing"),
        ("pbmc_tiny_v3", lambda f: (f / "barcodes.tsv.gz").unlink(), "barcodes.tsv.gz: missing"),
        ("pbmc_facs/test", lambda f: (f / "cells.csv").unlink(), "cells.csv: missing"),
        ("pbmc_tiny_v3", lambda f: _truncate(f / "barcodes.tsv.gz"), "barcodes.tsv.gz: trunc"),
        ("pbmc_tiny_v3", lambda f: _truncate(f / "matrix.mtx.gz"), "matrix.mtx.gz: trunc"),
        ("pbmc_facs/test", lambda f: (f / "cells.csv").write_text(""), "cells.csv: Empty"),
    ],
    ids=["no-features", "no-barcodes", "no-cells", "short-barcodes", "short-matrix", "empty"],
)
def test_a_damaged_bundled_file_says_to_reinstall(data_copy, folder, damage, named):
    """Before: a bundled folder without its features or barcodes file got the 10x
    reader's advice to rename the folder's files or fit the matrix with --genes-as-rows,
    and a truncated file or a missing cells.csv said only what was wrong with the file, as
    if it were the user's. Now each names the file and says that the installed copy is
    damaged: reinstall vbsnmf (as a missing matrix always did)."""
    damage(data_copy / folder)
    load = _load.pbmc_tiny if folder == "pbmc_tiny_v3" else lambda: _load.pbmc_facs(test=True)
    with pytest.raises(ReadError) as raised:
        load()
    message = str(raised.value)
    assert named in message and "Rename" not in message, message
    assert message.endswith(f"the bundled data set {folder!r} is damaged; reinstall vbsnmf")


def test_data_dir_names_a_missing_file_of_the_folder(data_copy):
    """`data_dir`, whose folder the docstring says to pass to the command line, checked
    only the matrix: a folder without its barcodes was returned. Now a `ReadError` names
    the missing file."""
    (data_copy / "pbmc_tiny_v3" / "barcodes.tsv.gz").unlink()
    with pytest.raises(ReadError, match=r"barcodes\.tsv\.gz: missing: .* reinstall vbsnmf"):
        vbsnmf.datasets.data_dir("pbmc_tiny_v3")


def test_demo_on_a_damaged_copy_is_one_line_before_the_fit(data_copy, tmp_path, capsys):
    """``vbsnmf demo`` on a bundled copy without its features file: one line naming the
    file and saying to reinstall (before: the 10x layout advice), exit code 2, no OUTDIR."""
    (data_copy / "pbmc_tiny_v3" / "features.tsv.gz").unlink()
    outdir = tmp_path / "demo"
    assert cli.main(["demo", "--dataset", "pbmc_tiny", "-k", "2", "-o", str(outdir)]) == 2
    message = _error(capsys)
    assert "features.tsv.gz: missing" in message and "reinstall vbsnmf" in message, message
    assert not outdir.exists()


def test_the_intact_data_sets_load():
    """Guard (passes on the base code too): the loaders read the installed copies."""
    assert vbsnmf.datasets.pbmc_tiny().shape == (1107, 507)
    cells = vbsnmf.datasets.pbmc_facs(test=True)
    assert cells.shape == (100, 16791) and set(cells.obs.columns) == {"celltype", "subpop"}


# -- VBSNMF_DEBUG ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", " 0 "])
def test_vbsnmf_debug_zero_keeps_the_one_line(value, monkeypatch, capsys):
    """Before: any value of VBSNMF_DEBUG, "0" too, raised an unexpected error's traceback
    out of `main` (where VBSNMF_NO_MEMORY_GUARD=0 means off), and a job that set it to 0
    lost the one line a script reads. "0" is off: one line, exit code 1."""
    monkeypatch.setenv("VBSNMF_DEBUG", value)
    monkeypatch.setattr(cli, "_run_umap", lambda args: 1 / 0)
    assert cli.main(["umap", "r.h5ad", "-o", "u.png"]) == 1
    assert "internal error (ZeroDivisionError: division by zero)" in _error(capsys)


def test_vbsnmf_debug_one_raises_the_traceback(monkeypatch):
    """Guard (passes on the base code too): VBSNMF_DEBUG=1 lets the error through."""
    monkeypatch.setenv("VBSNMF_DEBUG", "1")
    monkeypatch.setattr(cli, "_run_umap", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["umap", "r.h5ad", "-o", "u.png"])


# -- umap's advice in the command line's options ----------------------------------------------
def _fit(tmp_path, *options) -> Path:
    """result.h5ad of a short `vbsnmf fit` of `COUNTS` with ``options``."""
    matrix = tmp_path / "x.mtx"
    if not matrix.exists():
        scipy.io.mmwrite(matrix, sp.csr_matrix(COUNTS))
    outdir = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
    argv = ["fit", str(matrix), "--cells-as-rows", "-k", "2", "--max-iter", "20", "--quiet"]
    assert cli.main([*argv, *options, "-o", str(outdir)]) == 0
    return outdir / "result.h5ad"


@pytest.mark.parametrize("key", ["umap", "neighbors"])
def test_umap_of_a_fit_under_a_scanpy_key_advises_fit_key(key, tmp_path, capsys, monkeypatch):
    """Before: ``vbsnmf umap --key umap`` of a result of ``vbsnmf fit --key umap``, whose
    entries the UMAP would overwrite, advised "make it again under another key_added", a
    Python parameter; now "(--key umap); fit it again under another --key". Such a result
    is an earlier version's: ``fit --key umap`` is refused now (scanpy's keys)."""
    from vbsnmf.tl import _stored

    monkeypatch.setattr(_stored, "_SCANPY_ENTRIES", {})
    result = _fit(tmp_path, "--key", key)
    capsys.readouterr()
    assert cli.main(["umap", str(result), "--key", key, "-o", str(tmp_path / "u.png")]) == 2
    message = _error(capsys)
    assert "key_added" not in message, message
    assert f"(--key {key}); fit it again under another --key" in message


def test_umap_over_a_column_of_the_users_advises_color(tmp_path, capsys):
    """Before: a result whose ``.obs['nmf_dominant_factor']`` is the user's (where the
    UMAP writes each cell's dominant factor) was refused advising "pass color= to colour
    by it"; now "pass --color nmf_dominant_factor to colour by it"."""
    adata = ad.read_h5ad(_fit(tmp_path))
    adata.obs["nmf_dominant_factor"] = "mine"
    adata.write_h5ad(tmp_path / "mine.h5ad")
    capsys.readouterr()
    assert cli.main(["umap", str(tmp_path / "mine.h5ad"), "-o", str(tmp_path / "u.png")]) == 2
    message = _error(capsys)
    assert "color=" not in message, message
    assert "or pass --color nmf_dominant_factor to colour by it" in message


# -- umap of a .zarr store --------------------------------------------------------------------
def test_umap_reads_a_fit_saved_as_zarr(tmp_path, capsys):
    """Before: a fit saved with ``adata.write_zarr`` (a format ``vbsnmf fit`` reads) was
    refused by ``vbsnmf umap`` as "not a regular file", naming no format. Now it is read:
    three cells, refused as too few for a UMAP (what an .h5ad of them gets), shows it."""
    adata = ad.read_h5ad(_fit(tmp_path))[:3].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's format notices
        adata.write_zarr(tmp_path / "fit.zarr")
    capsys.readouterr()
    assert cli.main(["umap", str(tmp_path / "fit.zarr"), "-o", str(tmp_path / "u.png")]) == 2
    assert "fit.zarr holds 3 cells; a UMAP needs at least 4" in _error(capsys)


def test_umap_of_a_folder_that_is_no_store_still_names_it(tmp_path, capsys):
    """Guard (passes on the base code too): a plain folder given as RESULT.h5ad is still
    refused as no file."""
    (tmp_path / "plain").mkdir()
    assert cli.main(["umap", str(tmp_path / "plain"), "-o", str(tmp_path / "u.png")]) == 2
    assert "not a regular file" in _error(capsys)
