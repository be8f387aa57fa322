"""A hostile user's fourth pass: what a session's search found after the first three
(tests/test_hostile.py), each case built and checked as there."""

from __future__ import annotations

import gzip
import os
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from test_hostile import (
    FIT,
    SVI,
    Case,
    _counts,
    _main,
    _patched,
    _tree,
    check_cases,
    damaged_h5ad,
    h5ad,
    mtx,
    raises,
    refused,
    returns,
    succeeds,
    tenx,
)

import vbsnmf
from vbsnmf import _atomic, _checkpoint

# a negative count that a repeat of its entry would hide once summed: -1 + 2 = 1
NEGATIVE_REPEATED = "1 1 -1\n1 1 2\n2 2 3\n"


def _earlier_output(folder: Path) -> Path:
    """An OUTDIR of an earlier fit, to replace with --force."""
    outdir = folder / "out"
    assert main_quietly(["fit", h5ad(folder), *FIT, "-o", outdir]) == 0
    return outdir


def main_quietly(argv) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return vbsnmf.cli.main([str(a) for a in argv])


def _user_folder_named_like_an_output(name: str):
    def build(folder: Path) -> list:
        outdir = _earlier_output(folder)
        (outdir / name).unlink(missing_ok=True)
        (outdir / name).mkdir()
        (outdir / name / "notes.txt").write_text("the user's only copy\n")
        return ["fit", "small.h5ad", *FIT, "-o", "out", "--force"]

    return build


def _tenx_by_cell(folder: Path, entries: list[tuple[int, int, int]]) -> Path:
    """`tenx` with its entries sorted by cell, as Cell Ranger writes them (streaming needs
    them so), the repeats in their given order."""
    path = tenx(folder, entries)
    lines = gzip.decompress((path / "matrix.mtx.gz").read_bytes()).decode().splitlines()
    body = sorted(lines[2:], key=lambda line: int(line.split()[1]))
    text = "\n".join([*lines[:2], *body]) + "\n"
    (path / "matrix.mtx.gz").write_bytes(gzip.compress(text.encode()))
    return path


def _fifo(folder: Path) -> Path:
    path = folder / "ck.fifo"
    os.mkfifo(path)
    return path


def _big_endian(key: str, dtype: str):
    def edit(group) -> None:
        values = group[key][:].astype(dtype)
        del group[key]
        group.create_dataset(key, data=values)

    return edit


def _as_column(group) -> None:
    values = group["data"][:].reshape(-1, 1)
    del group["data"]
    group.create_dataset("data", data=values)


def _fits_as_native(matrix) -> str | None:
    """A fit of ``matrix`` (index arrays byte-swapped) equals the fit of its native copy."""
    native = sp.csr_matrix(_counts())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        expected = vbsnmf.VBNMF(2, max_iter=3, random_state=0, n_threads=1).fit_transform(native)
        got = vbsnmf.VBNMF(2, max_iter=3, random_state=0, n_threads=1).fit_transform(matrix)
    return None if np.array_equal(got, expected) else "another fit than the native matrix's"


def _swapped(layout: str):
    matrix = _counts().asformat(layout).copy()
    if layout == "coo":
        matrix.row, matrix.col = matrix.row.astype(">i4"), matrix.col.astype(">i4")
    else:
        matrix.indices, matrix.indptr = matrix.indices.astype(">i4"), matrix.indptr.astype(">i8")
    return matrix


def _two_d_values(folder: Path):
    matrix = _counts()
    matrix.data = matrix.data.reshape(-1, 1)
    return vbsnmf.VBNMF(2, max_iter=2).fit(matrix)


def cases() -> list[Case]:
    return [
        # --force replaced OUTDIR when it held a folder named like an output, and deleted
        # what the folder held
        Case(
            "--force with a folder of the user's named result.h5ad",
            refused(_user_folder_named_like_an_output("result.h5ad"), "result.h5ad/"),
        ),
        Case(
            "--force with a folder of the user's named umap.png",
            refused(_user_folder_named_like_an_output("umap.png"), "umap.png/"),
        ),
        # a negative count with a repeat of its entry was summed into a valid count
        Case(
            "a negative count repeated in an .mtx",
            refused(
                lambda f: ["fit", mtx(f, NEGATIVE_REPEATED), "--cells-as-rows", *FIT, "-o", "o"],
                "row 1, column 1 is negative (-1) and repeated",
            ),
        ),
        Case(
            "a negative count repeated in an .mtx, streamed",
            refused(
                lambda f: [
                    "fit",
                    mtx(f, NEGATIVE_REPEATED),
                    "--cells-as-rows",
                    *FIT,
                    *SVI,
                    "-o",
                    "o",
                ],
                "cell 1, gene 1 (numbered as in the file) is negative (-1) and repeated",
            ),
        ),
        Case(
            "a negative count repeated in a 10x folder",
            refused(
                lambda f: ["fit", _tenx_by_cell(f, [(1, 1, -2), (1, 1, 5)]), *FIT, "-o", "o"],
                "row 1, column 1 is negative (-2) and repeated",
            ),
        ),
        Case(
            "a negative count repeated in a 10x folder, streamed",
            refused(
                lambda f: ["fit", _tenx_by_cell(f, [(1, 1, -2), (1, 1, 5)]), *FIT, *SVI, "-o", "o"],
                "cell 1, gene 1 (numbered as in the file) is negative (-2) and repeated",
            ),
        ),
        Case(
            "positive repeats in a 10x folder are summed",
            succeeds(lambda f: ["fit", _tenx_by_cell(f, [(1, 1, 2), (1, 1, 5)]), *FIT]),
        ),
        # a big-endian index array (h5py gives it as stored) reached a kernel: TypingError
        Case(
            "big-endian indices in an .h5ad",
            succeeds(lambda f: ["fit", damaged_h5ad(f, "X", _big_endian("indices", ">i4")), *FIT]),
        ),
        Case(
            "big-endian indptr in an .h5ad",
            succeeds(lambda f: ["fit", damaged_h5ad(f, "X", _big_endian("indptr", ">i8")), *FIT]),
        ),
        *(
            Case(
                f"big-endian {layout.upper()} index arrays",
                returns(lambda f, layout=layout: _swapped(layout), _fits_as_native),
            )
            for layout in ("csr", "csc", "coo")
        ),
        # values stored as a column, (nnz, 1): TypingError in the check's kernel
        Case(
            "an .h5ad whose X values are a column",
            refused(
                lambda f: ["fit", damaged_h5ad(f, "X", _as_column), *FIT, "-o", "o"],
                "values must be 1-D",
            ),
        ),
        Case(
            "CSR values as a column",
            raises(_two_d_values, ValueError, "values must be 1-D, got shape"),
        ),
        # np.load of a FIFO waited for a writer for ever
        Case(
            "a FIFO as the checkpoint",
            refused(
                lambda f: ["fit", h5ad(f), *FIT, "--checkpoint", _fifo(f), "-o", "o"],
                "is not a regular file",
            ),
        ),
        Case(
            "a FIFO to resume from",
            raises(
                lambda f: vbsnmf.VBNMF(2, checkpoint=_fifo(f), resume=True).fit(_counts()),
                _checkpoint.CheckpointError,
                "is not a regular file",
            ),
        ),
    ]


def test_hostile_inputs_of_the_fourth_pass_are_handled(tmp_path, capfd):
    check_cases(cases(), tmp_path, capfd)


def test_a_signal_during_the_swap_of_outdir_leaves_the_new_output_and_says_so(tmp_path, capfd):
    """Ctrl-C while --force puts the new OUTDIR in the old one's place: the signal is held
    until the new folder is in and the old one deleted, and the command says that the
    output was written (it said "no output written" and left the old folder beside it)."""
    outdir = _earlier_output(tmp_path)
    exchange = _atomic._exchange

    def interrupted(source, target):
        swapped = exchange(source, target)
        if swapped and Path(target).resolve() == outdir.resolve():
            os.kill(os.getpid(), signal.SIGINT)  # the new folder in: when a Ctrl-C may come
        return swapped

    with _patched(_atomic, "_exchange", interrupted):
        code, _, err, _ = _main(
            ["fit", "small.h5ad", *FIT, "--seed", "1", "-o", "out", "--force"], capfd, tmp_path
        )
    assert code == 130, err
    assert err == f"vbsnmf: interrupted; {Path('out')} was written in full\n", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "small.h5ad"]
    assert "params.json" in _tree(outdir)
    assert '"seed": 1' in (outdir / "params.json").read_text()


def _quoted_symbol(folder: Path) -> Path:
    """A 10x folder whose first gene symbol holds a double quote, as text does."""
    path = _tenx_by_cell(folder, [])
    lines = gzip.decompress((path / "features.tsv.gz").read_bytes()).decode().splitlines()
    lines[0] = 'g0\t"CH507-9B2.8\tGene Expression'
    (path / "features.tsv.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return path


def _version_2_gzipped_without_the_name(folder: Path) -> Path:
    """A Cell Ranger 2 folder whose matrix.mtx is gzip-compressed under its plain name."""
    path = _tenx_by_cell(folder, [])
    (path / "matrix.mtx.gz").rename(path / "matrix.mtx")
    features = gzip.decompress((path / "features.tsv.gz").read_bytes()).decode()
    (path / "genes.tsv").write_text(
        "".join(line.rsplit("\t", 1)[0] + "\n" for line in features.splitlines())
    )
    (path / "barcodes.tsv").write_bytes(gzip.decompress((path / "barcodes.tsv.gz").read_bytes()))
    for name in ("features.tsv.gz", "barcodes.tsv.gz"):
        (path / name).unlink()
    return path


@pytest.mark.parametrize("build", [_quoted_symbol, _version_2_gzipped_without_the_name])
def test_both_routes_read_a_10x_folder_alike(build, tmp_path):
    """A ``"`` in a gene symbol, and a version 2 matrix gzip-compressed under its plain
    name: scanpy's reader refused both folders, which the streamed route read. Both
    routes now read them, with the same names and counts."""
    folder = build(tmp_path)
    in_memory = vbsnmf.io.read_10x(folder)
    streamed = vbsnmf.io.mtx_to_h5ad(folder, tmp_path / "s.h5ad")
    import anndata as ad

    converted = ad.read_h5ad(streamed)
    assert list(in_memory.var_names) == list(converted.var_names)
    assert list(in_memory.obs_names) == list(converted.obs_names)
    np.testing.assert_array_equal(in_memory.X.toarray(), converted.X.toarray())
    np.testing.assert_array_equal(in_memory.X.toarray(), _counts().toarray())
    if build is _quoted_symbol:
        assert in_memory.var_names[0] == '"CH507-9B2.8'


def test_read_10x_is_scanpys_reader_on_cell_ranger_folders(tmp_path):
    """On the folders scanpy reads, `read_10x` gives its counts, names and var columns."""
    import scanpy as sc

    for folder in (vbsnmf.datasets.data_dir("pbmc_tiny_v3"), tenx(tmp_path)):
        ours = vbsnmf.io.read_10x(folder)
        theirs = sc.read_10x_mtx(folder, gex_only=True, cache=False)
        np.testing.assert_array_equal(ours.X.toarray(), theirs.X.toarray())
        assert list(ours.var_names) == list(theirs.var_names)
        assert list(ours.obs_names) == list(theirs.obs_names)
        assert list(ours.var.columns) == list(theirs.var.columns)
        for column in theirs.var.columns:
            assert list(ours.var[column]) == list(theirs.var[column])
