"""Readers (`vbsnmf.io`) and the command line (`vbsnmf.cli`) end to end on pbmc_tiny."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from cli_output import without_compile_notice

import vbsnmf
from vbsnmf import cli
from vbsnmf.io import ReadError

TINY_10X = vbsnmf.datasets.data_dir("pbmc_tiny_v3")  # the bundled 10x folder
FIT_OPTIONS = ["-k", "3", "--max-iter", "8", "--threads", "2", "--seed", "1", "--quiet"]


# -- input files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_folder() -> Path:
    return TINY_10X


@pytest.fixture(scope="module")
def tiny():
    return vbsnmf.datasets.pbmc_tiny()


def _write_mtx(path: Path, matrix, comments: str = "", compress: bool = True) -> Path:
    """Matrix Market text written by scipy, extra ``%`` comment lines after the banner."""
    plain = path.with_suffix("") if compress else path
    scipy.io.mmwrite(plain, sp.coo_matrix(matrix), field="integer")
    text = plain.read_bytes()
    if comments:
        banner, rest = text.split(b"\n", 1)
        text = banner + b"\n" + comments.encode() + rest
    if compress:
        plain.unlink()
        path.write_bytes(gzip.compress(text))
    else:
        path.write_bytes(text)
    return path


def _write_names(path: Path, names) -> Path:
    path.write_text("".join(f"{name}\textra\n" for name in names))
    return path


@pytest.fixture
def tiny_mtx_gz(tmp_path, tiny) -> Path:
    """pbmc_tiny as genes x cells .mtx.gz with two header comment lines."""
    return _write_mtx(
        tmp_path / "tiny.mtx.gz", tiny.X.T, comments="%first comment\n%% second comment\n"
    )


@pytest.fixture
def tiny_h5ad(tmp_path, tiny) -> Path:
    path = tmp_path / "tiny.h5ad"
    tiny.write_h5ad(path)
    return path


# -- readers ---------------------------------------------------------------------------------
def test_readers_agree_with_the_bundled_loader(tiny_folder, tiny, tiny_mtx_gz, tiny_h5ad, tmp_path):
    from_10x = vbsnmf.io.read(tiny_folder)
    assert from_10x.shape == tiny.shape == (1107, 507)
    assert (from_10x.X != tiny.X).nnz == 0
    assert list(from_10x.var_names) == list(tiny.var_names)
    assert list(from_10x.obs_names) == list(tiny.obs_names)

    from_h5ad = vbsnmf.io.read(tiny_h5ad)
    assert (sp.csr_matrix(from_h5ad.X) != tiny.X).nnz == 0

    cell_names = _write_names(tmp_path / "cells.tsv", tiny.obs_names)
    gene_names = _write_names(tmp_path / "genes.tsv", tiny.var_names)
    from_mtx = vbsnmf.io.read(
        tiny_mtx_gz, genes_as_rows=True, row_names=gene_names, col_names=cell_names
    )
    assert from_mtx.shape == tiny.shape
    assert (from_mtx.X != tiny.X).nnz == 0
    assert list(from_mtx.var_names) == list(tiny.var_names)
    assert list(from_mtx.obs_names) == list(tiny.obs_names)


def test_mtx_orientation_flags(tmp_path, tiny):
    cells_by_genes = _write_mtx(tmp_path / "cells.mtx", tiny.X, compress=False)
    adata = vbsnmf.io.read(cells_by_genes, genes_as_rows=False)
    assert adata.shape == tiny.shape
    assert (adata.X != tiny.X).nnz == 0
    assert list(adata.obs_names[:3]) == ["0", "1", "2"]
    transposed = vbsnmf.io.read(cells_by_genes, genes_as_rows=True)
    assert transposed.shape == tiny.shape[::-1]
    with pytest.raises(ValueError, match="--genes-as-rows"):
        vbsnmf.io.read(cells_by_genes)


def _truncated_gz(tmp_path, tiny_mtx_gz) -> Path:
    data = tiny_mtx_gz.read_bytes()
    path = tmp_path / "cut.mtx.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_plain(tmp_path, tiny_mtx_gz) -> Path:
    """Cut at a line boundary, so only the declared entry count can reveal it."""
    text = gzip.decompress(tiny_mtx_gz.read_bytes())
    path = tmp_path / "cut.mtx"
    path.write_bytes(text[: text.index(b"\n", len(text) // 2) + 1])
    return path


def _bad_file(tmp_path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


READ_ERRORS = {
    "missing file": lambda tmp, mtx: tmp / "absent.mtx.gz",
    "truncated gzip": _truncated_gz,
    "truncated text at a line end": _truncated_plain,
    "corrupt gzip": lambda tmp, mtx: _bad_file(tmp, "x.mtx.gz", b"\x1f\x8b" + bytes(range(200))),
    "not Matrix Market": lambda tmp, mtx: _bad_file(tmp, "x.mtx", b"hello\n1 2 3\n"),
    "empty file": lambda tmp, mtx: _bad_file(tmp, "x.mtx", b""),
    "huge declared entry count": lambda tmp, mtx: _bad_file(
        tmp, "x.mtx", b"%%MatrixMarket matrix coordinate integer general\n9 9 81\n1 1 1\n"
    ),
    "malformed size line": lambda tmp, mtx: _bad_file(
        tmp, "x.mtx", b"%%MatrixMarket matrix coordinate integer general\n3 x 1\n1 1 1\n"
    ),
    "index out of range": lambda tmp, mtx: _bad_file(
        tmp, "x.mtx", b"%%MatrixMarket matrix coordinate integer general\n3 3 1\n4 1 1\n"
    ),
    "header declaring billions of cells": lambda tmp, mtx: _bad_file(
        tmp, "x.mtx", b"%%MatrixMarket matrix coordinate integer general\n9 2000000000 1\n1 1 1\n"
    ),
    "symmetric matrix": lambda tmp, mtx: _bad_file(
        tmp, "x.mtx", b"%%MatrixMarket matrix coordinate integer symmetric\n3 3 1\n1 1 1\n"
    ),
    "garbage .h5ad": lambda tmp, mtx: _bad_file(tmp, "x.h5ad", b"\x89HDF\r\n" + b"\0" * 100),
    "folder named .h5ad": lambda tmp, mtx: (tmp / "d.h5ad").mkdir() or tmp / "d.h5ad",
    "unknown suffix": lambda tmp, mtx: _bad_file(tmp, "x.csv", b"a,b\n1,2\n"),
    "10x folder without barcodes": lambda tmp, mtx: _partial_10x(tmp, drop="barcodes.tsv.gz"),
    "10x folder with short features": lambda tmp, mtx: _partial_10x(tmp, short="features.tsv.gz"),
}


def _partial_10x(tmp_path: Path, *, drop: str | None = None, short: str | None = None) -> Path:
    folder = tmp_path / "tenx"
    shutil.copytree(TINY_10X, folder)
    if drop:
        (folder / drop).unlink()
    if short:
        lines = gzip.decompress((folder / short).read_bytes()).splitlines(keepends=True)
        (folder / short).write_bytes(gzip.compress(b"".join(lines[:10])))
    return folder


@pytest.mark.parametrize("case", sorted(READ_ERRORS))
def test_reader_failures_are_read_errors(case, tmp_path, tiny_mtx_gz):
    path = READ_ERRORS[case](tmp_path, tiny_mtx_gz)
    with pytest.raises(ReadError) as caught:
        vbsnmf.io.read(path, genes_as_rows=None if path.is_dir() or "h5ad" in path.name else True)
    assert str(path) in str(caught.value)


def test_reading_checks_the_indexes_fit_in_memory(tiny_mtx_gz, monkeypatch):
    from vbsnmf import _memory

    assert [_memory.format_bytes(n) for n in (512, 1536, 3 * 2**30)] == [
        "512 B",
        "1.5 KiB",
        "3.0 GiB",
    ]
    monkeypatch.setattr(_memory, "available_memory", lambda: 100_000)
    with pytest.raises(ReadError, match=r"indexes alone need 403\.5 KiB; 97\.7 KiB are available"):
        vbsnmf.io.read(tiny_mtx_gz, genes_as_rows=True)
    monkeypatch.setenv("VBSNMF_NO_MEMORY_GUARD", "1")
    assert vbsnmf.io.read(tiny_mtx_gz, genes_as_rows=True).n_obs > 0


def test_name_file_of_the_wrong_length(tmp_path, tiny, tiny_mtx_gz):
    short = _write_names(tmp_path / "genes.tsv", tiny.var_names[:5])
    with pytest.raises(ReadError, match="has 5 names but"):
        vbsnmf.io.read(tiny_mtx_gz, genes_as_rows=True, row_names=short)


# -- command line: success -------------------------------------------------------------------
def _run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    # The first run in a fresh Numba cache that compiles a kernel says so on a line of its
    # own (tests/test_compile_notice.py): which test that is depends on the order, and a
    # bad input's "one line" counted it (seen with an empty cache).
    err = without_compile_notice(captured.err)
    return code, captured.out, err


@pytest.fixture
def inputs(tiny_folder, tiny_mtx_gz, tiny_h5ad):
    return {
        "10x folder": [tiny_folder],
        ".mtx.gz": [tiny_mtx_gz, "--genes-as-rows"],
        ".h5ad": [tiny_h5ad],
    }


def test_fit_end_to_end_on_every_input_format(inputs, tmp_path, capsys, tiny):
    cell_factors = {}
    for name, source in inputs.items():
        outdir = tmp_path / name.strip(".").replace(" ", "_")
        code, _, err = _run(["fit", *source, *FIT_OPTIONS, "-o", outdir], capsys)
        assert code == 0, err
        assert sorted(os.listdir(outdir)) == [
            "cell_factors.tsv.gz",
            "elbo.tsv",
            "gene_loadings.tsv.gz",
            "params.json",
            "result.h5ad",
            "top_genes.tsv",
        ]
        result = ad.read_h5ad(outdir / "result.h5ad")
        assert result.shape == tiny.shape
        assert (sp.csr_matrix(result.X) != tiny.X).nnz == 0  # the input is kept as read
        table = pd.read_csv(outdir / "cell_factors.tsv.gz", sep="\t", index_col=0)
        assert list(table.columns) == ["factor_0", "factor_1", "factor_2"]
        assert table.shape == (tiny.n_obs, 3)
        np.testing.assert_allclose(table.to_numpy(), result.obsm["X_nmf"], rtol=1e-5)
        loadings = pd.read_csv(outdir / "gene_loadings.tsv.gz", sep="\t", index_col=0)
        assert loadings.shape == (tiny.n_vars, 3)
        np.testing.assert_allclose(loadings.to_numpy(), result.varm["NMF"], rtol=1e-5)
        elbo = pd.read_csv(outdir / "elbo.tsv", sep="\t")
        np.testing.assert_allclose(elbo["elbo"], result.uns["nmf"]["elbo_trace"], rtol=1e-9)
        assert np.all(np.diff(elbo["elbo"]) >= -1e-9 * np.abs(elbo["elbo"][1:]))
        params = json.loads((outdir / "params.json").read_text())
        assert len(elbo) <= params["n_iter"] <= 8  # passes; SQUAREM keeps an ELBO per kept q
        assert params["n_components"] == 3
        cell_factors[name] = result.obsm["X_nmf"]
    # Same counts, seed and threads: the same factors whatever the file format.
    reference = cell_factors.pop("10x folder")
    for other in cell_factors.values():
        np.testing.assert_array_equal(other, reference)
    # The same numbers as the library called directly.
    model = vbsnmf.VBNMF(3, max_iter=8, random_state=1, n_threads=2)
    with pytest.warns(vbsnmf.ConvergenceWarning):
        expected = model.fit_transform(tiny.X)
    np.testing.assert_allclose(reference, expected, rtol=1e-12)


def test_fit_with_a_classical_solver_writes_its_loss(tiny_h5ad, tmp_path, capsys):
    outdir = tmp_path / "mu"
    code, _, err = _run(["fit", tiny_h5ad, *FIT_OPTIONS, "--solver", "mu", "-o", outdir], capsys)
    assert code == 0, err
    loss = pd.read_csv(outdir / "loss.tsv", sep="\t")
    assert list(loss["iteration"]) == list(range(len(loss))) and len(loss) == 9
    assert np.all(np.diff(loss["loss"]) <= 1e-9 * loss["loss"][0])  # MU never raises KL
    assert not (outdir / "elbo.tsv").exists()
    assert json.loads((outdir / "params.json").read_text())["solver"] == "mu"


def test_force_replaces_an_earlier_output_only(tiny_h5ad, tmp_path, capsys):
    """--force replaced any existing folder whole, the user's files with it (a hostile
    pass, 2026-12-03: ``-o out/. --force`` wiped a folder of 200 results and a note); it
    replaces a folder holding only what vbsnmf writes, and refuses one with anything else,
    before the fit, leaving it as it was."""
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "params.json").write_text("{}")  # an earlier run's (a mu fit's loss.tsv too)
    (outdir / "loss.tsv").write_text("iteration\tloss\n")
    code, _, err = _run(["fit", tiny_h5ad, *FIT_OPTIONS, "-o", outdir, "--force"], capsys)
    assert code == 0, err
    assert not (outdir / "loss.tsv").exists() and (outdir / "result.h5ad").is_file()
    assert json.loads((outdir / "params.json").read_text())["solver"] == "batch"
    assert sorted(os.listdir(tmp_path)) == ["out", "tiny.h5ad"]  # no temporary folders left
    (outdir / "notes.txt").write_text("mine")
    (outdir / "figures").mkdir()
    before = sorted(os.listdir(outdir))
    _refused(
        ["fit", tiny_h5ad, *FIT_OPTIONS, "-o", outdir, "--force"],
        capsys,
        "holds 2 entries vbsnmf does not write (figures/, notes.txt)",
    )
    assert sorted(os.listdir(outdir)) == before and (outdir / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "options",
    [[], ["--solver", "mu"], ["--solver", "svi", "--epochs", "1", "--batch-size", "300"]],
    ids=["batch", "mu", "svi"],
)
def test_every_output_name_is_one_force_replaces(tiny_mtx_gz, tmp_path, capsys, options):
    """The names a command writes are the ones --force may replace (`OUTPUT_NAMES`): a
    writer's new file not among them would make --force refuse the command's own earlier
    output. Each solver's output (SVI's with its converted counts.h5ad) is replaced."""
    from vbsnmf.io._paths import OUTPUT_NAMES

    outdir = tmp_path / "out"
    argv = ["fit", tiny_mtx_gz, "--genes-as-rows", *FIT_OPTIONS, *options, "-o", outdir]
    for run in ([], ["--force"]):
        code, _, err = _run([*argv, *run], capsys)
        assert code == 0, err
        written = set(os.listdir(outdir))
        assert "result.h5ad" in written and written <= OUTPUT_NAMES, written - OUTPUT_NAMES


def test_progress_bar_on_stderr_unless_quiet(tiny_h5ad, tmp_path, capsys):
    options = [o for o in FIT_OPTIONS if o != "--quiet"]
    code, out, err = _run(["fit", tiny_h5ad, *options, "-o", tmp_path / "a"], capsys)
    assert code == 0
    assert "8/8" in err and "ELBO" in err  # iterations done / total, and the current ELBO
    assert "wrote" in out
    code, out, err = _run(["fit", tiny_h5ad, *FIT_OPTIONS, "-o", tmp_path / "b"], capsys)
    assert code == 0 and out == "" and err == ""


def test_help_explains_every_option(capsys):
    parser = cli.build_parser()
    for command in ("fit", "umap", "demo"):
        code, out, _ = _run([command, "--help"], capsys)
        assert code == 0
        subparser = parser._subparsers._group_actions[0].choices[command]
        for action in subparser._actions:
            for flag in action.option_strings:
                assert flag in out, (command, flag)
            assert action.help, (command, action.dest)
    code, out, _ = _run(["--help"], capsys)
    assert code == 0 and all(command in out for command in ("fit", "umap", "demo"))


def test_library_warnings_are_one_line_each_and_quiet_silences_them(tmp_path, capsys, tiny):
    """A reader's warning (anndata: names not unique) reaches the user as one ``vbsnmf:
    warning:`` line, not in Python's two-line form with its source line; --quiet silences
    it, as it silences the fit's own."""
    import warnings

    path = tmp_path / "duplicates.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        duplicated = tiny.copy()
        duplicated.obs_names = ["cell"] * duplicated.n_obs
        duplicated.write_h5ad(path)
    fit = ["fit", path, "-k", "2", "--max-iter", "3", "--threads", "1"]
    for quiet in (False, True):
        argv = [*fit, "-o", tmp_path / f"out{quiet}"] + (["--quiet"] if quiet else [])
        with warnings.catch_warnings(record=True) as escaped:
            warnings.simplefilter("always")
            code, _, err = _run(argv, capsys)
        assert code == 0 and not escaped, err
        lines = [line for line in err.splitlines() if "it/s" not in line and line.strip()]
        if quiet:
            assert lines == []
        else:
            assert any("not unique" in line for line in lines)
            assert all(line.startswith("vbsnmf: warning: ") for line in lines), lines


def test_umap_command_and_demo(tmp_path, capsys, tiny_h5ad):
    import matplotlib.image

    outdir = tmp_path / "demo"
    code, _, err = _run(
        ["demo", "--dataset", "pbmc_tiny", "-o", outdir, "-k", "3", "--max-iter", "5",
         "--threads", "2", "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    image = matplotlib.image.imread(outdir / "umap.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas
    top = pd.read_csv(outdir / "top_genes.tsv", sep="\t")
    assert len(top) == 30 and set(top["factor"]) == {0, 1, 2}

    figure = tmp_path / "umap.png"
    code, _, err = _run(["umap", outdir / "result.h5ad", "-o", figure], capsys)
    assert code == 0, err
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    for argv, message in (
        (["--color", "no_such_column"], "no_such_column"),
        (["-o", tmp_path / "u.xyz"], "unknown figure format"),
    ):
        full = ["umap", outdir / "result.h5ad", "-o", tmp_path / "u2.png", *argv]
        code, _, err = _run(full, capsys)
        assert code == 2 and message in err and err.count("\n") == 1
    code, _, err = _run(["umap", tiny_h5ad, "-o", tmp_path / "u3.png"], capsys)
    assert (
        code == 2
        and "holds no NMF fit or projection under --key nmf; make one with 'vbsnmf fit'" in err
    )
    assert not (tmp_path / "u2.png").exists() and not (tmp_path / "u3.png").exists()


def test_a_pgf_figure_without_tex_is_refused_before_the_umap(
    tiny_h5ad, tmp_path, capsys, monkeypatch
):
    """.pgf is among matplotlib's formats, but it writes through a TeX system: without
    one the command ended with exit 1 and an internal error, after the UMAP (a hostile
    pass, 2026-12-03)."""
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    _refused(["umap", tiny_h5ad, "-o", tmp_path / "u.pgf"], capsys, "a .pgf figure needs")
    assert sorted(os.listdir(tmp_path)) == ["tiny.h5ad"]


# -- command line: bad input ----------------------------------------------------------------
def _mtx_with_value(tmp_path, value: str) -> Path:
    return _bad_file(
        tmp_path,
        "bad.mtx",
        b"%%MatrixMarket matrix coordinate real general\n3 4 3\n1 1 2\n"
        + f"2 2 {value}\n3 4 1\n".encode(),
    )


BAD_INPUTS = {
    "missing file": (lambda tmp, mtx: [tmp / "absent.h5ad"], "no such file"),
    "truncated .mtx.gz": (
        lambda tmp, mtx: [_truncated_gz(tmp, mtx), "--genes-as-rows"],
        "truncated",
    ),
    "truncated .mtx": (
        lambda tmp, mtx: [_truncated_plain(tmp, mtx), "--genes-as-rows"],
        "runcated",
    ),
    "corrupt .mtx.gz": (
        lambda tmp, mtx: [READ_ERRORS["corrupt gzip"](tmp, mtx), "--genes-as-rows"],
        "x.mtx.gz",
    ),
    "negative values": (
        lambda tmp, mtx: [_mtx_with_value(tmp, "-3"), "--cells-as-rows"],
        "negative",
    ),
    "NaN values": (lambda tmp, mtx: [_mtx_with_value(tmp, "nan"), "--cells-as-rows"], "NaN"),
    "non-integer values": (
        lambda tmp, mtx: [_mtx_with_value(tmp, "0.25"), "--cells-as-rows"],
        "non-integer",
    ),
    "no orientation for .mtx": (lambda tmp, mtx: [mtx], "--genes-as-rows"),
    "K out of range": (lambda tmp, mtx: [mtx, "--genes-as-rows", "-k", "600"], "out of range"),
    "K zero": (lambda tmp, mtx: [mtx, "--genes-as-rows", "-k", "0"], ">= 1"),
    "unknown method": (lambda tmp, mtx: [mtx, "--solver", "magic"], "invalid choice"),
    "negative tolerance": (lambda tmp, mtx: [mtx, "--tol", "-1"], "--tol"),
    "orientation for a 10x folder": (
        lambda tmp, mtx: [TINY_10X, "--cells-as-rows"],
        "genes as rows",
    ),
    "missing layer": (lambda tmp, mtx: [_h5ad(tmp), "--layer", "counts"], "no layer"),
    "upper-case banner": (  # passed the header's check, then "corrupt or truncated"
        lambda tmp, mtx: [
            _bad_file(
                tmp, "bad.mtx", b"%%MATRIXMARKET matrix coordinate real general\n3 4 1\n1 1 2\n"
            ),
            "--cells-as-rows",
        ],
        "must be spelled '%%MatrixMarket', not '%%MATRIXMARKET'",
    ),
}


def _h5ad(tmp_path) -> Path:
    path = tmp_path / "small.h5ad"
    counts = np.random.default_rng(0).poisson(1.0, size=(30, 20)).astype(np.float32)
    ad.AnnData(sp.csr_matrix(counts)).write_h5ad(path)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_no_outdir(case, tmp_path, tiny_mtx_gz, capsys):
    make_args, message = BAD_INPUTS[case]
    args = make_args(tmp_path, tiny_mtx_gz)
    before = set(os.listdir(tmp_path))
    outdir = tmp_path / "out"
    options = ["-k", "3"] if "-k" not in args else []
    code, _, err = _run(["fit", *args, *options, "--max-iter", "3", "-o", outdir], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert message in err
    assert "Traceback" not in err
    assert not outdir.exists()
    assert set(os.listdir(tmp_path)) == before  # no temporary folder left beside it


def test_existing_outdir_without_force(tiny_h5ad, tmp_path, capsys):
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "keep.txt").write_text("mine")
    code, _, err = _run(["fit", tiny_h5ad, *FIT_OPTIONS, "-o", outdir], capsys)
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    assert os.listdir(outdir) == ["keep.txt"]


# -- command line: interruption ---------------------------------------------------------------
def test_interrupt_while_writing_leaves_nothing(tiny_h5ad, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vbsnmf.io, "write_nmf_tables", interrupted)
    code, _, err = _run(["fit", tiny_h5ad, *FIT_OPTIONS, "-o", tmp_path / "out"], capsys)
    assert code == 130 and "interrupted" in err
    assert sorted(os.listdir(tmp_path)) == ["tiny.h5ad"]


def test_ctrl_c_during_the_fit_exits_130_with_no_outputs(tiny_h5ad, tmp_path):
    outdir = tmp_path / "out"
    command = [sys.executable, "-m", "vbsnmf", "fit", str(tiny_h5ad), "-k", "3", "--tol", "0",
               "--max-iter", "100000", "--threads", "1", "-o", str(outdir)]  # fmt: skip
    # A shell's background job starts with SIGINT ignored, and Python keeps it so: give
    # the child Ctrl-C's default action, whatever started the test run.
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = ""
    deadline = time.monotonic() + 120
    while "ELBO" not in seen and time.monotonic() < deadline:  # the fit is running
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 130, seen + rest
    assert "interrupted" in rest
    assert sorted(os.listdir(tmp_path)) == ["tiny.h5ad"]


# -- issue 14: nothing the user owns is written or removed ----------------------------------
def _snapshot(path: Path) -> dict:
    """Every file under ``path`` (or the file itself) with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def _refused(argv, capsys, *messages) -> str:
    """The command fails as bad input: exit 2, one stderr line holding ``messages``."""
    code, out, err = _run(argv, capsys)
    assert code == 2, (argv, err)
    assert err.count("\n") == 1 and err.startswith("vbsnmf: error: "), err
    assert out == ""
    for message in messages:
        assert message in err, (message, err)
    return err


@pytest.fixture
def tenx_copy(tmp_path) -> Path:
    return Path(shutil.copytree(TINY_10X, tmp_path / "tenx"))


@pytest.fixture
def no_fit(monkeypatch):
    """Makes any fit an error: a refusal must come before the work."""

    def fit_started(*args, **kwargs):
        raise AssertionError("the fit started")

    monkeypatch.setattr(vbsnmf.VBNMF, "fit_transform", fit_started)
    monkeypatch.setattr(vbsnmf.NMF, "fit_transform", fit_started)


def test_checkpoint_never_overwrites_an_input_or_a_foreign_file(
    tiny_h5ad, tiny_mtx_gz, tenx_copy, tmp_path, capsys, no_fit
):
    notes = tmp_path / "notes.txt"
    notes.write_text("my only copy\n")
    (tmp_path / "link.h5ad").symlink_to(tiny_h5ad)
    owned = [tiny_h5ad, tiny_mtx_gz, tenx_copy, notes]
    before = {path: _snapshot(path) for path in owned}
    outdir = tmp_path / "out"
    cases = [
        ([tiny_h5ad, "--checkpoint", tiny_h5ad], "is the input"),
        ([tiny_h5ad, "--checkpoint", tmp_path / "link.h5ad"], "is the input"),
        ([tiny_mtx_gz, "--genes-as-rows", "--solver", "svi", "--checkpoint", tiny_mtx_gz], "input"),
        ([tenx_copy, "--checkpoint", tenx_copy / "fit.ckpt"], "inside the input"),
        ([tenx_copy, "--checkpoint", tenx_copy / "matrix.mtx.gz"], "inside the input"),
        ([tiny_h5ad, "--checkpoint", notes], "not a vbsnmf checkpoint"),
        ([tiny_h5ad, "--checkpoint", notes, "--resume"], "not a vbsnmf checkpoint"),
        ([tiny_h5ad, "--checkpoint", tmp_path], "is a folder"),
    ]
    for args, message in cases:
        _refused(["fit", *args, *FIT_OPTIONS, "-o", outdir], capsys, message)
        assert not outdir.exists()
    assert {path: _snapshot(path) for path in owned} == before


def test_estimator_checkpoint_never_overwrites_an_input_or_a_foreign_file(tiny_h5ad, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my only copy\n")
    before = {path: _snapshot(path) for path in (tiny_h5ad, notes)}
    X = vbsnmf.datasets.pbmc_tiny().X
    for method in ("batch", "svi"):
        with pytest.raises(ValueError, match="not a vbsnmf checkpoint"):
            vbsnmf.VBNMF(
                2, solver=method, checkpoint=notes, max_iter=2, n_epochs=1, prior="gamma"
            ).fit(X)
    with pytest.raises(ValueError, match="is the input"):
        vbsnmf.VBNMF(2, solver="svi", checkpoint=tiny_h5ad, n_epochs=1, prior="gamma").fit(
            tiny_h5ad
        )
    assert {path: _snapshot(path) for path in (tiny_h5ad, notes)} == before


def test_an_absent_or_vbsnmf_checkpoint_path_is_written(tiny_h5ad, tmp_path, capsys):
    checkpoint = tmp_path / "fit.ckpt"
    for run in ("first", "second"):  # created, then replaced by a fresh fit
        code, _, err = _run(
            ["fit", tiny_h5ad, *FIT_OPTIONS, "-o", tmp_path / run, "--checkpoint", checkpoint],
            capsys,
        )
        assert code == 0, err
        assert checkpoint.is_file()


def test_outdir_never_replaces_or_holds_an_input(tiny_h5ad, tenx_copy, tmp_path, capsys, no_fit):
    data = tmp_path / "data"
    data.mkdir()
    h5ad = Path(shutil.copy(tiny_h5ad, data / "a.h5ad"))
    names = _write_names(tmp_path / "cells.tsv", range(507))
    checkpoint = tmp_path / "fit.ckpt"
    (tmp_path / "link").symlink_to(data)
    owned = [h5ad, tenx_copy, names]
    before = {path: _snapshot(path) for path in owned}
    cases = [
        ([h5ad, "-o", data], "contains the input"),
        ([h5ad, "-o", tmp_path / "link"], "contains the input"),
        ([h5ad, "-o", h5ad], "is the input"),
        ([tenx_copy, "-o", tenx_copy], "is the input"),
        ([tenx_copy, "-o", tenx_copy / "out"], "inside the input"),
        ([h5ad, "-o", tmp_path / "ck", "--checkpoint", tmp_path / "ck" / "fit.ckpt"], "checkpoint"),
        ([h5ad, "-o", checkpoint, "--checkpoint", checkpoint], "checkpoint"),
    ]
    for args, message in cases:
        _refused(["fit", *args, *FIT_OPTIONS, "--force"], capsys, message)
    mtx = _write_mtx(tmp_path / "m.mtx.gz", sp.random(507, 20, density=0.3, format="coo"))
    _refused(
        ["fit", mtx, "--cells-as-rows", "--row-names", names, "-o", names, *FIT_OPTIONS,
         "--force"],
        capsys,
        "is the input",
    )  # fmt: skip
    assert {path: _snapshot(path) for path in owned} == before
    assert not checkpoint.exists() and not (tmp_path / "ck").exists()


def test_outdir_holding_the_files_a_10x_folder_links_to_is_refused(
    tenx_copy, tmp_path, capsys, no_fit
):
    """Workflow managers stage a 10x folder as links to files elsewhere: OUTDIR replacing
    the folder that holds those files (with --force) deleted the counts."""
    staged = tmp_path / "staged"
    staged.mkdir()
    for name in os.listdir(tenx_copy):
        (staged / name).symlink_to(tenx_copy / name)
    before = _snapshot(tenx_copy)
    _refused(
        ["fit", staged, *FIT_OPTIONS, "-o", tenx_copy, "--force"], capsys, "contains the input"
    )
    _refused(["fit", staged, *FIT_OPTIONS, "-o", tmp_path, "--force"], capsys, "contains the input")
    assert _snapshot(tenx_copy) == before


def test_svi_with_several_starts_is_refused_before_the_fit(tiny_h5ad, tmp_path, capsys, no_fit):
    argv = ["fit", tiny_h5ad, "-k", "2", "--solver", "svi", "--n-init", "2", "-o", tmp_path / "o"]
    _refused(argv, capsys, "--n-init applies to --solver batch")


def test_demo_outdir_never_replaces_the_package_or_its_data(tmp_path, capsys, no_fit, monkeypatch):
    """The demo reads its data set from the package: OUTDIR must not be, hold or lie in it."""
    monkeypatch.chdir(tmp_path)

    def demo_started():  # a refusal must come before the demo reads (and then replaces) data
        raise AssertionError("the demo started")

    monkeypatch.setattr(vbsnmf.datasets, "pbmc_tiny", demo_started)
    package = Path(vbsnmf.__file__).resolve().parent
    data = vbsnmf.datasets.data_dir("pbmc_tiny_v3")
    for outdir, message in (
        (data, "lies inside the vbsnmf package"),
        (package.parent, "contains the vbsnmf package"),
    ):
        argv = ["demo", "--dataset", "pbmc_tiny", "-k", "2", "-o", outdir, "--force"]
        _refused(argv, capsys, message)
    assert (data / "matrix.mtx.gz").is_file()


def test_checkpoint_inside_outdir_is_refused_before_the_fit(tiny_h5ad, tmp_path, capsys, no_fit):
    outdir = tmp_path / "run1"
    _refused(
        ["fit", tiny_h5ad, *FIT_OPTIONS, "-o", outdir, "--checkpoint", outdir / "fit.ckpt"],
        capsys,
        "checkpoint",
    )
    assert sorted(os.listdir(tmp_path)) == ["tiny.h5ad"]


def test_outdir_holding_the_working_folder_is_refused(tiny_h5ad, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    for outdir in (".", "..", str(work), "/"):
        _refused(["fit", tiny_h5ad, *FIT_OPTIONS, "-o", outdir, "--force"], capsys, "folder")
    assert sorted(os.listdir(tmp_path)) == ["tiny.h5ad", "work"]
    assert os.listdir(work) == ["keep.txt"]


def test_outdir_that_cannot_be_created_is_refused_before_the_fit(
    tiny_h5ad, tmp_path, capsys, no_fit
):
    _refused(["fit", tiny_h5ad, *FIT_OPTIONS, "-o", tmp_path / ("x" * 256)], capsys, "x" * 20)
    _refused(["fit", tiny_h5ad, *FIT_OPTIONS, "-o", "/proc/vbsnmf_out"], capsys, "/proc")
    assert sorted(os.listdir(tmp_path)) == ["tiny.h5ad"]


def test_seed_beyond_the_generators_range_is_refused_up_front(tiny_h5ad, tmp_path, capsys, no_fit):
    _refused(["fit", tiny_h5ad, *FIT_OPTIONS, "--seed", str(2**64), "-o", tmp_path / "o"], capsys,
             "--seed", str(2**32 - 1))  # fmt: skip


def test_resume_without_a_checkpoint_says_it_starts_a_new_fit(tiny_h5ad, tmp_path, capsys):
    """--resume with no file at --checkpoint started afresh without a word (a hostile pass,
    2026-12-03: a mistyped path resumes nothing); a note on stderr, then the fit."""
    checkpoint = tmp_path / "fit.ckpt"
    options = [o for o in FIT_OPTIONS if o != "--quiet"]
    argv = ["fit", tiny_h5ad, *options, "--checkpoint", checkpoint, "--resume"]
    code, _, err = _run([*argv, "-o", tmp_path / "first"], capsys)
    assert code == 0, err
    assert f"no checkpoint at {checkpoint} yet: a new fit" in err and checkpoint.is_file()
    code, _, err = _run([*argv, "-o", tmp_path / "again"], capsys)
    assert code == 0 and "no checkpoint" not in err, err


def test_truncated_or_empty_checkpoint_is_bad_input(tiny_h5ad, tmp_path, capsys):
    checkpoint = tmp_path / "fit.ckpt"
    argv = ["fit", tiny_h5ad, *FIT_OPTIONS, "--checkpoint", checkpoint, "--resume"]
    code, _, err = _run([*argv, "-o", tmp_path / "first"], capsys)
    assert code == 0, err
    whole = checkpoint.read_bytes()
    for damaged in (b"", whole[: len(whole) // 2], whole[:-30], b"PK\x03\x04" + bytes(100)):
        checkpoint.write_bytes(damaged)
        _refused([*argv, "-o", tmp_path / "again"], capsys, str(checkpoint))
        assert not (tmp_path / "again").exists()
        assert checkpoint.read_bytes() == damaged  # left for the user to inspect


def test_checkpoint_of_another_fit_says_drop_resume(tiny_h5ad, tmp_path, capsys):
    checkpoint = tmp_path / "fit.ckpt"
    argv = ["fit", tiny_h5ad, "--checkpoint", checkpoint, "--resume", *FIT_OPTIONS]
    assert _run([*argv, "-o", tmp_path / "a"], capsys)[0] == 0
    err = _refused([*argv, "-k", "2", "-o", tmp_path / "b"], capsys, "--resume", str(checkpoint))
    assert "resume=False" not in err


def test_options_of_another_method_are_refused(tiny_h5ad, tmp_path, capsys, no_fit):
    outdir = tmp_path / "o"
    for options, message in (
        (["--solver", "mu", "--epochs", "3"], "--epochs"),
        (["--solver", "batch", "--batch-size", "30"], "--batch-size"),
        (["--solver", "hals", "--checkpoint", tmp_path / "c.ckpt"], "--checkpoint"),
        (["--resume"], "--checkpoint"),
    ):
        _refused(["fit", tiny_h5ad, *FIT_OPTIONS, *options, "-o", outdir], capsys, message)


def test_h5ad_without_x_fits_from_its_layer_or_raw(tmp_path, capsys, tiny):
    path = tmp_path / "nox.h5ad"
    adata = ad.AnnData(obs=tiny.obs, var=tiny.var, layers={"counts": tiny.X})
    adata.raw = ad.AnnData(tiny.X, obs=tiny.obs, var=tiny.var)
    adata.write_h5ad(path)
    for option in (["--layer", "counts"], ["--use-raw"]):
        outdir = tmp_path / option[0].strip("-")
        code, _, err = _run(["fit", path, *option, *FIT_OPTIONS, "-o", outdir], capsys)
        assert code == 0, err
        assert ad.read_h5ad(outdir / "result.h5ad").obsm["X_nmf"].shape == (tiny.n_obs, 3)
    _refused(["fit", path, *FIT_OPTIONS, "-o", tmp_path / "x"], capsys, "--layer counts")


@pytest.mark.parametrize("compress", [False, True])
def test_a_comment_longer_than_a_read_is_skipped(tmp_path, compress):
    """Cell Ranger writes a metadata comment that can pass 64 KiB: its rest was taken for
    the size line ("malformed size line")."""
    counts = sp.random(30, 12, density=0.4, format="coo", random_state=0)
    counts.data = np.ceil(counts.data * 9)
    comment = "%metadata_json: " + ", ".join(f'"L{i:05d}"' for i in range(12_000)) + "\n"
    assert len(comment) > 1 << 16
    name = "m.mtx.gz" if compress else "m.mtx"
    path = _write_mtx(tmp_path / name, counts, comments=comment, compress=compress)
    for read in (vbsnmf.io.read_mtx, vbsnmf.io.read):
        adata = read(path, genes_as_rows=False)
        assert (sp.csr_matrix(adata.X) != counts.tocsr()).nnz == 0


def test_10x_names_that_pandas_would_take_for_missing_are_kept(tenx_copy):
    """Symbols "NA", "NULL" or empty (and such a barcode) were read as NaN by scanpy's
    parse: names neither strings nor unique, refused by anndata's writer after the fit."""
    features = tenx_copy / "features.tsv.gz"
    rows = gzip.decompress(features.read_bytes()).decode().splitlines()
    for index, symbol in enumerate(["NA", "NULL", "", "nan"]):
        gene_id, _, kind = rows[index].split("\t")
        rows[index] = "\t".join([gene_id, symbol, kind])
    features.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    barcodes = tenx_copy / "barcodes.tsv.gz"
    cells = gzip.decompress(barcodes.read_bytes()).decode().splitlines()
    barcodes.write_bytes(gzip.compress(("\n".join(["NA", *cells[1:]]) + "\n").encode()))
    adata = vbsnmf.io.read(tenx_copy)
    assert list(adata.var_names[:4]) == ["NA", "NULL", "", "nan"]
    assert adata.obs_names[0] == "NA"
    assert adata.var_names.is_unique and adata.obs_names.is_unique
    assert all(isinstance(name, str) for name in adata.var["gene_ids"])
    adata.write_h5ad(tenx_copy.parent / "written.h5ad")


def test_the_streamed_result_keeps_the_inputs_other_parts(tmp_path, capsys, tiny):
    """--solver svi streams a backed .h5ad; its result.h5ad dropped the input's .layers,
    .raw, .obsp and .varp, which the batch route's keeps ("the input as tl.nmf leaves it")."""
    adata = tiny.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.raw = adata.copy()
    adata.obsp["connectivities"] = sp.identity(adata.n_obs, format="csr")
    adata.varp["gene_graph"] = sp.identity(adata.n_vars, format="csr") * 2.0
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    code, _, err = _run(["fit", path, *SVI_OPTIONS, "-o", tmp_path / "o"], capsys)
    assert code == 0, err
    result = ad.read_h5ad(tmp_path / "o" / "result.h5ad")
    assert (sp.csr_matrix(result.layers["counts"]) != adata.X).nnz == 0
    assert (sp.csr_matrix(result.raw.X) != adata.X).nnz == 0
    assert list(result.raw.var_names) == list(adata.var_names)
    assert (result.obsp["connectivities"] != adata.obsp["connectivities"]).nnz == 0
    assert (result.varp["gene_graph"] != adata.varp["gene_graph"]).nnz == 0
    assert "X_nmf" in result.obsm


def test_a_fit_of_raw_writes_loadings_for_every_raw_gene(tmp_path, capsys, tiny):
    """--use-raw fits .raw's genes: the loadings table and params.json's n_genes are theirs
    (they were .var's 200 of 507, top_genes.tsv naming genes the table lacked)."""
    path = tmp_path / "selected.h5ad"
    selected = tiny[:, :200].copy()
    selected.raw = tiny
    selected.write_h5ad(path)
    outdir = tmp_path / "o"
    code, _, err = _run(["fit", path, "--use-raw", *FIT_OPTIONS, "-o", outdir], capsys)
    assert code == 0, err
    table = pd.read_csv(outdir / "gene_loadings.tsv.gz", sep="\t", index_col=0)
    result = ad.read_h5ad(outdir / "result.h5ad")
    assert list(table.index) == list(tiny.var_names)
    np.testing.assert_allclose(table.to_numpy(), result.raw.varm["NMF"], rtol=1e-5)
    assert json.loads((outdir / "params.json").read_text())["n_genes"] == tiny.n_vars
    top = pd.read_csv(outdir / "top_genes.tsv", sep="\t")
    assert set(top["gene"]) <= set(table.index)


def test_umap_of_too_few_cells_is_one_line(tmp_path, capsys, tiny):
    few = tiny[:2].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(few, 2, max_iter=3)
    path = tmp_path / "few.h5ad"
    few.write_h5ad(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _refused(["umap", path, "-o", tmp_path / "u.png"], capsys, "cells")
    assert sorted(os.listdir(tmp_path)) == ["few.h5ad"]


# -- issue 14: signals ------------------------------------------------------------------------
ENTRY_POINT = "import sys; from vbsnmf.cli import main; sys.exit(main())"  # the console script


def _child(argv, **kwargs) -> subprocess.Popen:
    # A shell's background job starts with SIGINT ignored: give the child the default.
    return subprocess.Popen(
        [sys.executable, "-c", ENTRY_POINT, *map(str, argv)],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )


# Imported by the child's `site` before anything else: the command's first import of numpy
# (inside `main`, `build_parser`) takes 5 s longer, so that a Ctrl-C 0.5 or 1 s after it
# began lands while the command imports its libraries on any machine. Without it an idle
# machine with warm caches finished the whole fit of pbmc_tiny within a second, before the
# signal. It marks the file VBSNMF_TEST_IMPORTING when the import begins: the test counts
# its delay from there: on a loaded machine the interpreter itself may take longer than
# the delay to start, and a signal before Python handles SIGINT kills it (-2).
SLOW_NUMPY_IMPORT = """
import os, sys, time


class _SlowNumpy:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            sys.meta_path.remove(self)
            open(os.environ["VBSNMF_TEST_IMPORTING"], "w").close()
            time.sleep(5)
        return None


sys.meta_path.insert(0, _SlowNumpy())
"""


@pytest.mark.parametrize("delay", [0.5, 1.0])
def test_ctrl_c_while_starting_exits_130_with_one_line(tiny_h5ad, tmp_path, delay):
    """Ctrl-C while the command imports its libraries (a few seconds on a busy machine)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_NUMPY_IMPORT)
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    importing = site / "importing"
    process = _child(
        ["fit", tiny_h5ad, *FIT_OPTIONS, "-o", tmp_path / "out"],
        env={**os.environ, "PYTHONPATH": path, "VBSNMF_TEST_IMPORTING": str(importing)},
    )
    deadline = time.monotonic() + 60
    while not importing.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert importing.exists(), "the command never began to import numpy"
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.splitlines() == ["vbsnmf: interrupted; no output written"], err
    assert sorted(os.listdir(tmp_path)) == ["site", "tiny.h5ad"]


def test_ctrl_c_that_python_cannot_raise_still_stops_the_command(monkeypatch, capsys):
    """A KeyboardInterrupt raised where Python can only report it, as in importlib's
    callbacks while the libraries load (how the test above once saw the command run to
    its end with exit 0), still ends the command: 130 and one line."""
    import weakref

    build_parser = cli.build_parser

    def interrupted_while_loading():
        class Module:
            pass

        def ctrl_c(reference):
            raise KeyboardInterrupt

        module = Module()
        reference = weakref.ref(module, ctrl_c)
        del module  # the callback runs here; its KeyboardInterrupt cannot propagate
        assert reference() is None
        return build_parser()

    monkeypatch.setattr(cli, "build_parser", interrupted_while_loading)
    # --help: --version no longer builds the parser (it imports none of the libraries)
    code, out, err = _run(["--help"], capsys)
    assert (code, out, err) == (130, "", "vbsnmf: interrupted; no output written\n")


def test_sigterm_during_the_fit_exits_143_and_leaves_nothing(tiny_h5ad, tmp_path):
    process = _child(["fit", tiny_h5ad, "-k", "3", "--tol", "0", "--max-iter", "100000",
                      "--threads", "1", "-o", tmp_path / "out"])  # fmt: skip
    seen = ""
    deadline = time.monotonic() + 120
    while "ELBO" not in seen and time.monotonic() < deadline:  # the fit is running
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 143, seen + rest
    assert rest.strip().splitlines()[-1] == "vbsnmf: terminated (SIGTERM); no output written"
    assert sorted(os.listdir(tmp_path)) == ["tiny.h5ad"]


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stop_signal_after_the_command_finished_keeps_its_exit_code(name):
    """`main` returns a second before the process ends (the interpreter's teardown); a
    stop signal there killed a finished run without a word, exit 143 (a hostile pass,
    2026-12-03). The command's entry point ignores them from there on. The signal is
    sent from an atexit handler: during the teardown, every time."""
    script = (
        "import atexit, os, signal, vbsnmf.cli as cli\n"
        "cli.main = lambda argv=None: 0\n"
        f"atexit.register(lambda: os.kill(os.getpid(), signal.{name}))\n"
        "cli.run()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")


def test_sigterm_while_writing_leaves_no_temporary_folder(tiny_h5ad, tmp_path, capsys, monkeypatch):
    import vbsnmf.io

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(vbsnmf.io, "write_nmf_tables", terminated)
    previous = signal.getsignal(signal.SIGTERM)
    code, _, err = _run(["fit", tiny_h5ad, *FIT_OPTIONS, "-o", tmp_path / "out"], capsys)
    assert code == 143 and err == "vbsnmf: terminated (SIGTERM); no output written\n"
    assert sorted(os.listdir(tmp_path)) == ["tiny.h5ad"]
    assert signal.getsignal(signal.SIGTERM) is previous  # main restores the handler


# -- issue 14: counts are read exactly ---------------------------------------------------------
def test_readers_keep_counts_that_float32_cannot_hold(tmp_path, capsys):
    exact = [16_777_217.0, 1_000_000_001.0, 3.0]
    body = "".join(f"{i + 1} {i + 1} {int(v)}\n" for i, v in enumerate(exact))
    mtx = tmp_path / "big.mtx"
    mtx.write_text(f"%%MatrixMarket matrix coordinate integer general\n3 3 3\n{body}")
    folder = tmp_path / "tenx"
    folder.mkdir()
    (folder / "matrix.mtx.gz").write_bytes(gzip.compress(mtx.read_bytes()))
    features = "".join(f"g{i}\tG{i}\tGene Expression\n" for i in range(3))
    (folder / "features.tsv.gz").write_bytes(gzip.compress(features.encode()))
    (folder / "barcodes.tsv.gz").write_bytes(gzip.compress(b"c0\nc1\nc2\n"))
    for adata in (vbsnmf.io.read(mtx, genes_as_rows=False), vbsnmf.io.read(folder)):
        assert sorted(adata.X.data) == sorted(exact)
    real = tmp_path / "real.mtx"
    real.write_text("%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 1.00000001\n2 2 3\n")
    assert 1.00000001 in vbsnmf.io.read(real, genes_as_rows=False).X.data
    small = vbsnmf.io.read(TINY_10X)
    assert small.X.dtype == np.float32  # float32 where that is exact: half the memory
    code, _, err = _run(["fit", folder, "-k", "1", "--max-iter", "2", "-o", tmp_path / "o"], capsys)
    assert code == 0, err
    assert sorted(ad.read_h5ad(tmp_path / "o" / "result.h5ad").X.data) == sorted(exact)
    _refused(["fit", real, "--cells-as-rows", "-k", "1", "-o", tmp_path / "r"], capsys,
             "non-integer")  # fmt: skip


def test_float16_counts_are_read_and_fitted(tmp_path, capsys, tiny):
    """float16 holds every count up to 2048 exactly: a dense float16 X fits as float32
    does; a sparse one, which scipy cannot build, is refused saying so."""
    import h5py

    dense = tmp_path / "dense.h5ad"
    counts = tiny.X.toarray()
    ad.AnnData(counts.astype(np.float16), obs=tiny.obs, var=tiny.var).write_h5ad(dense)
    reference = tmp_path / "single.h5ad"
    ad.AnnData(counts.astype(np.float32), obs=tiny.obs, var=tiny.var).write_h5ad(reference)
    for path, outdir in ((dense, "half"), (reference, "single")):
        code, _, err = _run(["fit", path, *FIT_OPTIONS, "-o", tmp_path / outdir], capsys)
        assert code == 0, err
    half, single = (ad.read_h5ad(tmp_path / name / "result.h5ad") for name in ("half", "single"))
    np.testing.assert_array_equal(half.obsm["X_nmf"], single.obsm["X_nmf"])
    sparse = tmp_path / "sparse.h5ad"
    tiny.write_h5ad(sparse)
    with h5py.File(sparse, "r+") as handle:
        values = handle["X/data"][...].astype(np.float16)
        del handle["X/data"]
        handle["X/data"] = values
    err = _refused(
        ["fit", sparse, *FIT_OPTIONS, "-o", tmp_path / "o"], capsys, "float16", "float32"
    )
    assert "The only supported types" not in err


# -- streaming, top genes, options (issue 17) ------------------------------------------------
SVI_OPTIONS = ["-k", "3", "--solver", "svi", "--epochs", "2", "--batch-size", "300"]
SVI_OPTIONS += ["--threads", "1", "--seed", "3", "--quiet"]


def test_fit_svi_streams_a_converted_copy_that_later_fits_reuse(tmp_path, capsys, tiny):
    """A 10x folder is converted once into OUTDIR/counts.h5ad and streamed: the fit equals
    tl.nmf's in memory bit for bit, and fitting counts.h5ad again gives it once more."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        expected = vbsnmf.tl.nmf(
            tiny, 3, solver="svi", n_epochs=2, batch_size=300, n_threads=1, random_state=3,
            copy=True,
        )  # fmt: skip
    code, _, err = _run(["fit", TINY_10X, *SVI_OPTIONS, "-o", tmp_path / "a"], capsys)
    assert code == 0, err
    converted = tmp_path / "a" / "counts.h5ad"
    code, _, err = _run(["fit", converted, *SVI_OPTIONS, "-o", tmp_path / "b"], capsys)
    assert code == 0, err
    for run in ("a", "b"):
        result = ad.read_h5ad(tmp_path / run / "result.h5ad")
        assert json.loads((tmp_path / run / "params.json").read_text())["streamed"] is True
        np.testing.assert_array_equal(result.obsm["X_nmf"], expected.obsm["X_nmf"])
        np.testing.assert_array_equal(result.varm["NMF"], expected.varm["NMF"])
        assert (sp.csr_matrix(result.X) != tiny.X).nnz == 0  # the input's counts, copied
    assert not (tmp_path / "b" / "counts.h5ad").exists()  # an .h5ad streams as it is


def test_convert_to_writes_the_conversion_where_asked(tmp_path, capsys, tiny_mtx_gz):
    target = tmp_path / "tiny_counts.h5ad"
    argv = ["fit", tiny_mtx_gz, "--genes-as-rows", *SVI_OPTIONS, "--convert-to", target]
    code, _out, err = _run([*argv, "-o", tmp_path / "o"], capsys)
    assert code == 0, err
    assert target.is_file() and not (tmp_path / "o" / "counts.h5ad").exists()
    assert (
        vbsnmf.io.read_h5ad(target).X != vbsnmf.io.read(tiny_mtx_gz, genes_as_rows=True).X
    ).nnz == 0
    _refused([*argv, "-o", tmp_path / "p"], capsys, "exists")
    elsewhere = ["--convert-to", tmp_path / "n.h5ad", "-o", tmp_path / "q"]
    _refused(["fit", tiny_mtx_gz, "--genes-as-rows", *FIT_OPTIONS, *elsewhere], capsys,
             "--convert-to applies to --solver svi")  # fmt: skip
    assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()
    # the same path as OUTDIR: refused before the fit (with --force the conversion vanished)
    same = tmp_path / "same.h5ad"
    for force in ([], ["--force"]):
        _refused(
            ["fit", tiny_mtx_gz, "--genes-as-rows", *SVI_OPTIONS, "--convert-to", same,
             "-o", same, *force],
            capsys,
            "--convert-to and -o both name",
        )  # fmt: skip
    assert not same.exists()


def test_svi_reports_epochs(tmp_path, capsys, tiny_h5ad):
    code, out, err = _run(
        ["fit", tiny_h5ad, *[o for o in SVI_OPTIONS if o != "--quiet"], "-o", tmp_path / "o"],
        capsys,
    )
    assert code == 0, err
    assert "2 epochs" in out and "iterations" not in out
    assert "epoch/s" in err or "s/epoch" in err  # the progress bar counts epochs


def test_fit_writes_the_top_genes_of_active_factors(tmp_path, capsys, tiny_h5ad):
    code, _, err = _run(["fit", tiny_h5ad, *FIT_OPTIONS, "-k", "6", "-o", tmp_path / "o"], capsys)
    assert code == 0, err
    written = pd.read_csv(tmp_path / "o" / "top_genes.tsv", sep="\t")
    result = ad.read_h5ad(tmp_path / "o" / "result.h5ad")
    active = set(np.flatnonzero(result.uns["nmf"]["active"]))
    assert set(written["factor"]) == active
    expected = vbsnmf.tl.top_genes(result, 10)
    assert list(written["gene"]) == list(expected["gene"])


def test_result_h5ad_is_compressed(tmp_path, capsys, tiny_h5ad):
    import h5py

    code, _, err = _run(["fit", tiny_h5ad, *FIT_OPTIONS, "-o", tmp_path / "o"], capsys)
    assert code == 0, err
    with h5py.File(tmp_path / "o" / "result.h5ad", "r") as handle:
        assert handle["X/data"].compression == "gzip"
        assert handle["obsm/X_nmf"].compression == "gzip"


def test_prior_and_n_init_reach_the_fit(tmp_path, capsys, tiny, tiny_h5ad):
    options = ["-k", "3", "--max-iter", "5", "--threads", "1", "--seed", "2", "--quiet"]
    code, _, err = _run(
        ["fit", tiny_h5ad, *options, "--prior", "gamma", "--n-init", "2", "-o", tmp_path / "o"],
        capsys,
    )
    assert code == 0, err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        expected = vbsnmf.tl.nmf(
            tiny, 3, max_iter=5, n_threads=1, random_state=2, prior="gamma", n_init=2, copy=True
        )
    result = ad.read_h5ad(tmp_path / "o" / "result.h5ad")
    assert result.uns["nmf"]["params"]["prior"] == "gamma"
    np.testing.assert_array_equal(result.obsm["X_nmf"], expected.obsm["X_nmf"])
    _refused(["fit", tiny_h5ad, *options, "--solver", "hals", "--prior", "gamma", "-o",
              tmp_path / "h"], capsys, "--prior applies to --solver batch or svi")  # fmt: skip


def test_init_reaches_the_fit(tmp_path, capsys, tiny, tiny_h5ad):
    options = ["-k", "3", "--max-iter", "5", "--threads", "1", "--seed", "2", "--quiet"]
    code, _, err = _run(
        ["fit", tiny_h5ad, *options, "--init", "nndsvda", "-o", tmp_path / "o"], capsys
    )
    assert code == 0, err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        expected = vbsnmf.tl.nmf(
            tiny, 3, max_iter=5, n_threads=1, random_state=2, init="nndsvda", copy=True
        )
        at_random = vbsnmf.tl.nmf(tiny, 3, max_iter=5, n_threads=1, random_state=2, copy=True)
    result = ad.read_h5ad(tmp_path / "o" / "result.h5ad")
    np.testing.assert_array_equal(result.obsm["X_nmf"], expected.obsm["X_nmf"])
    assert not np.array_equal(result.obsm["X_nmf"], at_random.obsm["X_nmf"])
    _refused(["fit", tiny_h5ad, *options, "--solver", "svi", "--init", "nndsvda", "-o",
              tmp_path / "s"], capsys, "--init applies to --solver batch, not svi")  # fmt: skip


def test_checkpoint_is_a_general_option():
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["fit"].format_help()
    assert help_text.index("--checkpoint") < help_text.index("stochastic VB")
    assert help_text.index("--resume") < help_text.index("stochastic VB")


def test_layer_advice_names_the_command_line_option(tmp_path, capsys, tiny):
    normalised = tiny.copy()
    normalised.layers["counts"] = tiny.X.copy()
    normalised.X = normalised.X.multiply(1 / (1 + np.asarray(tiny.X.sum(axis=1)))).tocsr()
    path = tmp_path / "normalised.h5ad"
    normalised.write_h5ad(path)
    err = _refused(["fit", path, *FIT_OPTIONS, "-o", tmp_path / "o"], capsys, "--layer counts")
    assert "layer='counts'" not in err


def test_umap_colours_by_leiden_clusters(tmp_path, capsys, tiny_h5ad, monkeypatch):
    code, _, err = _run(["fit", tiny_h5ad, *FIT_OPTIONS, "-o", tmp_path / "o"], capsys)
    assert code == 0, err
    figure = tmp_path / "leiden.png"
    code, _out, err = _run(["umap", tmp_path / "o" / "result.h5ad", "-o", figure, "--color",
                           "leiden"], capsys)  # fmt: skip
    assert code == 0, err
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "igraph", None)  # igraph not installed
    _refused(["umap", tmp_path / "o" / "result.h5ad", "-o", tmp_path / "x.png", "--color",
              "leiden"], capsys, "igraph")  # fmt: skip
    assert not (tmp_path / "x.png").exists()


def test_pl_umap_leiden_is_scanpys_leiden_of_the_same_graph(tiny):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    adata = tiny.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)  # five iterations suffice
        vbsnmf.tl.nmf(adata, 3, max_iter=5, n_threads=1, random_state=0)
    axes = vbsnmf.pl.umap(adata, color="leiden", show=False)
    matplotlib.pyplot.close(axes.figure)
    reference = adata.copy()
    del reference.obs["leiden"]
    sc.pp.neighbors(reference, use_rep="X_nmf_sqrt_usage", random_state=0)
    sc.tl.leiden(reference, flavor="igraph", n_iterations=2, directed=False, random_state=0)
    assert adata.obs["leiden"].nunique() > 1
    np.testing.assert_array_equal(
        adata.obs["leiden"].to_numpy(), reference.obs["leiden"].to_numpy()
    )


def _write_cellranger_h5(path: Path, adata, counts=None) -> Path:
    """Cell Ranger 3's feature-barcode .h5: genes x cells stored as CSC (the CSR of cells x
    genes), features beside it."""
    import h5py

    csr = sp.csr_matrix(adata.X if counts is None else counts)
    with h5py.File(path, "w") as handle:
        matrix = handle.create_group("matrix")
        matrix["barcodes"] = np.asarray(adata.obs_names, dtype="S")
        matrix["data"] = csr.data.astype(np.int32)
        matrix["indices"] = csr.indices.astype(np.int64)
        matrix["indptr"] = csr.indptr.astype(np.int64)
        matrix["shape"] = np.array([adata.n_vars, adata.n_obs], dtype=np.int32)
        features = matrix.create_group("features")
        features["id"] = np.asarray(adata.var["gene_ids"], dtype="S")
        features["name"] = np.asarray(adata.var_names, dtype="S")
        features["feature_type"] = np.asarray(["Gene Expression"] * adata.n_vars, dtype="S")
        features["genome"] = np.asarray(["GRCh38"] * adata.n_vars, dtype="S")
        features["_all_tag_keys"] = np.asarray(["genome"], dtype="S")
    return path


def test_bad_counts_in_a_matrix_file_are_named_by_the_file_without_layer_advice(tmp_path, capsys):
    """A NaN, a negative or a fractional count in an .mtx: the error names the .mtx (not
    ``adata.X``, nor the .h5ad it was converted into for streaming, which is gone by then)
    and gives no advice about layers, which an .mtx cannot have; an .h5ad keeps it."""
    header = "%%MatrixMarket matrix coordinate real general\n3 4 4\n"
    bad = {"nan": "NaN entry", "-3": "negative entry", "1.5": "1 non-integer value "}
    for value, problem in bad.items():
        path = tmp_path / f"bad{len(problem)}.mtx"
        path.write_text(header + f"1 1 1\n1 4 5\n2 2 {value}\n3 3 2\n")  # sorted by cell
        for extra in ([], ["--solver", "svi"], ["--solver", "svi", "--convert-to", "c.h5ad"]):
            outdir = tmp_path / "out"
            argv = ["fit", path, "--cells-as-rows", "-k", "2", "--quiet", "-o", outdir, *extra]
            code, out, err = _run(argv, capsys)
            assert code == 2 and out == "" and err.count("\n") == 1, err
            assert err.startswith(f"vbsnmf: error: {path}") and problem in err, err
            assert err.rstrip().endswith("; NMF needs raw counts"), err
            assert "adata" not in err and ".tmp" not in err and "c.h5ad" not in err, err
            assert not outdir.exists() and not (tmp_path / "c.h5ad").exists()
    adata = ad.AnnData(sp.csr_matrix(np.array([[1.0, np.nan], [2.0, 3.0]])))
    adata.write_h5ad(tmp_path / "nan.h5ad")
    code, _, err = _run(["fit", tmp_path / "nan.h5ad", "-k", "1", "-o", tmp_path / "o"], capsys)
    assert code == 2 and "nan.h5ad (X) must hold" in err and "--layer counts" in err, err


def test_an_hdf5_file_of_another_layout_is_named_as_such(tmp_path, capsys, tiny):
    """An HDF5 file that is neither an AnnData nor a Cell Ranger matrix: the error says so
    and lists what it holds (it quoted anndata's "unexpected keyword argument 'x'" and
    scanpy's "KeyError: 'shape'"); the command line exits 2 with that one line."""
    import h5py

    foreign_h5ad = tmp_path / "foreign.h5ad"
    with h5py.File(foreign_h5ad, "w") as handle:
        handle["x"] = np.arange(5)
    half_cellranger = tmp_path / "half.h5"
    with h5py.File(half_cellranger, "w") as handle:
        handle.create_group("matrix")["data"] = np.arange(3)
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    cases = {
        foreign_h5ad: "not an AnnData .h5ad file (no AnnData encoding, no obs and var): "
        "it holds 'x'",
        half_cellranger: "not a Cell Ranger feature-barcode .h5 (no group with data, indices, "
        "indptr and shape): it holds 'matrix'",
        empty: "not a Cell Ranger feature-barcode .h5 (no group with data, indices, indptr "
        "and shape): it is empty",
    }
    for path, message in cases.items():
        with pytest.raises(ReadError) as caught:
            vbsnmf.io.read(path)
        assert str(caught.value) == f"{path}: an HDF5 file, but {message}"
        code, out, err = _run(["fit", path, *FIT_OPTIONS, "-o", tmp_path / "out"], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert message in err and not (tmp_path / "out").exists()
    # the readable layouts still read: an AnnData's and Cell Ranger's
    assert vbsnmf.io.read(_write_cellranger_h5(tmp_path / "cr.h5", tiny)).shape == tiny.shape
    tiny.write_h5ad(tmp_path / "tiny.h5ad")
    assert vbsnmf.io.read(tmp_path / "tiny.h5ad").shape == tiny.shape


def test_cell_ranger_h5_and_zarr_read_as_the_10x_folder(tmp_path, capsys, tiny):
    h5 = _write_cellranger_h5(tmp_path / "filtered_feature_bc_matrix.h5", tiny)
    zarr_path = tmp_path / "tiny.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata: zarr format notices
        tiny.write_zarr(zarr_path)
    for path in (h5, zarr_path):
        adata = vbsnmf.io.read(path)
        assert (sp.csr_matrix(adata.X) != tiny.X).nnz == 0
        pd.testing.assert_index_equal(adata.obs_names, tiny.obs_names)
        pd.testing.assert_index_equal(adata.var_names, tiny.var_names)
        np.testing.assert_array_equal(adata.var["gene_ids"], tiny.var["gene_ids"])
        code, _, err = _run(["fit", path, *FIT_OPTIONS, "-o", tmp_path / path.suffix[1:]], capsys)
        assert code == 0, err
    assert vbsnmf.io.read(h5).X.dtype == np.float32  # exact for these counts
    # scanpy reads Cell Ranger's counts into float32, which rounds 2**24 + 1: read again
    big = tiny.X.copy().tolil()
    big[0, 0] = 16_777_217
    wide = _write_cellranger_h5(tmp_path / "big.h5", tiny, counts=big)
    assert vbsnmf.io.read(wide).X[0, 0] == 16_777_217
    not_hdf5 = tmp_path / "broken.h5"
    not_hdf5.write_bytes(b"not an HDF5 file at all")
    with pytest.raises(ReadError, match=r"broken\.h5"):
        vbsnmf.io.read(not_hdf5)


# -- writers: errors name the user's path, not a temporary file ---------------------------------
@pytest.fixture(scope="module")
def fitted():
    adata = ad.AnnData(sp.csr_matrix(np.random.default_rng(0).poisson(2.0, (20, 8)) * 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(adata, 2, max_iter=2)
    return adata


@pytest.mark.parametrize(
    ("write", "error", "message"),
    [
        (
            lambda a, f: vbsnmf.io.write_result(a, f / "no_such_dir" / "out.h5ad"),
            FileNotFoundError,
            "the folder for out.h5ad does not exist: '.*no_such_dir'",
        ),
        (lambda a, f: vbsnmf.io.write_result(a, f / "held"), IsADirectoryError, "held'"),
        (lambda a, f: vbsnmf.io.write_result(a, f / ("a" * 300)), OSError, "too long: '.*aaa'"),
        (
            lambda a, f: vbsnmf.io.write_nmf_tables(a, f / "missing_dir"),
            FileNotFoundError,
            "missing_dir'",
        ),
        (
            lambda a, f: vbsnmf.io.write_nmf_tables(a, f, key="nope"),
            KeyError,
            r"adata.uns\['nope'\] holds no NMF fit",
        ),
        (
            lambda a, f: vbsnmf.io.mtx_to_h5ad(TINY_10X, f / "held"),
            IsADirectoryError,
            "held'",
        ),
        (
            lambda a, f: vbsnmf.VBNMF(2, checkpoint=f / ("c" * 300)).fit(a.X),
            vbsnmf.io.UnsafePathError,
            "cannot write checkpoint .*ccc: File name too long",
        ),
    ],
)
def test_writers_name_the_users_path_and_leave_nothing(fitted, tmp_path, write, error, message):
    """They raised errors naming their temporary files ('.out.h5ad.3zkczeo7.tmp.h5ad'), a
    bare KeyError: 'nope', or pathlib's OSError before the checkpoint's check."""
    (tmp_path / "held").mkdir()
    with pytest.raises(error, match=message) as raised:
        write(fitted, tmp_path)
    assert ".tmp" not in str(raised.value)
    assert [p.name for p in tmp_path.rglob("*")] == ["held"]


def test_result_with_an_unwritable_value_says_where(fitted, tmp_path):
    """A value an .h5ad cannot hold raised anndata's IORegistryError, an Exception that
    says where only in a note (a hostile pass, 2026-12-03): a TypeError naming the key."""
    edited = fitted.copy()
    edited.uns["mine"] = {"f": print}
    with pytest.raises(TypeError, match=r"out\.h5ad: .*writing key 'f' .*/uns/mine"):
        vbsnmf.io.write_result(edited, tmp_path / "out.h5ad")
    assert list(tmp_path.iterdir()) == []


def test_tables_into_a_file_say_it_is_a_file(fitted, tmp_path):
    """It said the folder did not exist, of a path that exists as a file (a hostile pass,
    2026-12-03)."""
    target = tmp_path / "tables"
    target.write_text("mine")
    with pytest.raises(NotADirectoryError, match="tables is a file, not a folder"):
        vbsnmf.io.write_nmf_tables(fitted, target)
    assert target.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["tables"]


def test_read_asks_for_the_orientation_in_the_callers_words(tiny_mtx_gz, tiny_folder):
    """The Python reader named only the command line's flags."""
    with pytest.raises(ValueError, match=r"genes_as_rows=True \(--genes-as-rows"):
        vbsnmf.io.read(tiny_mtx_gz)
    with pytest.raises(ValueError, match=r"drop genes_as_rows=False \(--cells-as-rows\)"):
        vbsnmf.io.read(tiny_folder, genes_as_rows=False)


def test_names_near_the_length_limit_are_written(fitted, tmp_path, tiny_h5ad, capsys):
    """A name of 240 to 255 bytes is a file's right, but the temporary name (".NAME.xxxxxxxx
    .tmp.h5ad") passed 255: 'File name too long' for a name that fits."""
    long = "x" * 240
    result = tmp_path / f"{long}.h5ad"
    vbsnmf.io.write_result(fitted, result)
    assert ad.read_h5ad(result).obsm["X_nmf"].shape == (20, 2)
    vbsnmf.io.write_result(fitted, result)  # and again over it
    checkpoint = tmp_path / ("c" * 255)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(2, max_iter=2, checkpoint=checkpoint).fit(fitted.X)
    assert checkpoint.is_file()
    outdir = tmp_path / ("o" * 255)
    for force in ([], ["--force"]):  # a new folder, then one replaced
        code, _, err = _run(["fit", tiny_h5ad, *FIT_OPTIONS, "-o", outdir, *force], capsys)
        assert (code, err) == (0, "")
        assert (outdir / "result.h5ad").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
