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
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

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
    return code, captured.out, captured.err


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
        assert params["n_iter"] == 8 == len(elbo)
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


def test_force_replaces_an_existing_outdir(tiny_h5ad, tmp_path, capsys):
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "old.txt").write_text("old")
    code, _, err = _run(["fit", tiny_h5ad, *FIT_OPTIONS, "-o", outdir, "--force"], capsys)
    assert code == 0, err
    assert not (outdir / "old.txt").exists()
    assert (outdir / "result.h5ad").is_file()
    assert sorted(os.listdir(tmp_path)) == ["out", "tiny.h5ad"]  # no temporary folders left


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
    assert code == 2 and "vbsnmf.tl.nmf" in err
    assert not (tmp_path / "u2.png").exists() and not (tmp_path / "u3.png").exists()


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

    monkeypatch.setattr(cli, "write_nmf_tables", interrupted)
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
