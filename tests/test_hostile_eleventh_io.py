"""Defects of the readers found by the eleventh hostile pass: name files read by pandas (a
10x features line short of its fields dropped that gene and its counts, a NUL byte cut a
name short, a line of spaces vanished from the count, lines of other numbers of fields
refused in pandas' words), an ``.h5ad`` without its var or obs table read with invented
names, and Matrix Market files that the streamed conversion judged otherwise than
`vbsnmf.io.read_mtx` (``1e400``, a size line ``+3 2 3``, an integer beyond 64 bits) or
that were said to lack their banner (CR line endings). Each test says what went wrong
before its fix."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
from cli_output import error_lines
from test_hostile import FIT, N_CELLS, N_GENES, SVI, _counts, _main, mtx, tenx

import vbsnmf
from vbsnmf.io import ReadError, mtx_to_h5ad

_BODY = "1 1 4\n2 1 1\n3 2 7\n"  # a 3 x 2 matrix's entries


def _edit_lines(path: Path, edit) -> Path:
    """Replace the gzip text file ``path``'s lines by ``edit(lines)``."""
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    path.write_bytes(gzip.compress(("\n".join(edit(lines)) + "\n").encode()))
    return path


def _replace_line(path: Path, index: int, line: str) -> Path:
    return _edit_lines(path, lambda lines: [*lines[:index], line, *lines[index + 1 :]])


def _read_both_routes(folder: Path) -> list[str]:
    """The messages of `vbsnmf.io.read` and `mtx_to_h5ad` refusing the input ``folder``."""
    messages = []
    for read in (vbsnmf.io.read, lambda path: mtx_to_h5ad(path, path.parent / "c.h5ad")):
        with pytest.raises(ReadError) as caught:
            read(folder)
        messages.append(str(caught.value))
    return messages


def _vbsnmf(folder: Path, *argv) -> subprocess.CompletedProcess:
    """``python -m vbsnmf ARGV`` in ``folder``, the entry point a shell runs."""
    return subprocess.run(
        [sys.executable, "-m", "vbsnmf", *map(str, argv)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("vbsnmf: error: "), done.stderr
    return lines[0]


# -- name files ------------------------------------------------------------------------------
@pytest.mark.parametrize("line", ["g5\tG5", "g5"], ids=["no type", "no symbol nor type"])
def test_a_features_line_short_of_its_fields_is_refused_not_dropped(tmp_path, line):
    """A features.tsv.gz line lacking its type (or its symbol too) read as a feature of type
    NaN, not 'Gene Expression': `read_10x` and the streamed route dropped that gene and
    its counts without a word."""
    folder = tenx(tmp_path)
    _replace_line(folder / "features.tsv.gz", 5, line)
    fields = len(line.split("\t"))
    for message in _read_both_routes(folder):
        assert "features.tsv.gz" in message, message
        assert f"line 6 has {fields} tab-separated field" in message, message
        assert "where most lines have 3" in message, message


def test_a_features_line_with_an_empty_type_is_refused_not_dropped(tmp_path):
    """``g5<TAB>G5<TAB>`` (the type cut off, its tab left) read as a type '', not 'Gene
    Expression': the gene was dropped as silently as a line short of its type."""
    folder = tenx(tmp_path)
    _replace_line(folder / "features.tsv.gz", 5, "g5\tG5\t")
    for message in _read_both_routes(folder):
        assert "line 6 has no feature type" in message, message


def _nul_in_barcodes(folder: Path) -> Path:
    tenx_folder = tenx(folder)
    _replace_line(tenx_folder / "barcodes.tsv.gz", 2, "c\x002")
    return tenx_folder


def _nul_in_row_names(folder: Path) -> Path:
    (folder / "genes.txt").write_bytes(b"GENE1\nGE\x00NE2\nGE\n")
    return mtx(folder, _BODY, size="3 2 3")


def test_a_nul_byte_in_a_name_file_is_refused_not_cutting_the_name(tmp_path):
    """pandas' parser ended a name at a NUL byte: ``GE\\0NE2`` read as ``GE``, then renamed
    ``GE-1`` beside the real gene GE. The matrix reader refused NUL bytes, the name
    reader did not."""
    for message in _read_both_routes(_nul_in_barcodes(tmp_path)):
        assert "barcodes.tsv.gz: contains a NUL byte (line 3)" in message, message
    matrix = _nul_in_row_names(tmp_path)
    names = {"genes_as_rows": True, "row_names": tmp_path / "genes.txt"}
    convert = lambda path, **options: mtx_to_h5ad(path, tmp_path / "c.h5ad", **options)  # noqa: E731
    for read in (vbsnmf.io.read_mtx, convert):
        with pytest.raises(ReadError, match=r"genes.txt: contains a NUL byte \(line 2\)"):
            read(matrix, **names)


def test_a_line_of_spaces_in_a_name_file_is_named_in_the_count(tmp_path):
    """A line of spaces was skipped as blank without a word: "has 39 names but the matrix
    has 40 cells" for a file of 40 lines. The count says which lines are blank."""
    folder = tenx(tmp_path)
    _replace_line(folder / "barcodes.tsv.gz", 20, "   ")
    said = f"has {N_CELLS - 1} names but the matrix has {N_CELLS} cells (line 21 is blank"
    with pytest.raises(ReadError, match=said.replace("(", r"\(")):
        vbsnmf.io.read(folder)


def test_name_files_of_more_fields_on_some_lines_are_read_by_their_first(tmp_path):
    """Only the first tab-separated field of a --row-names / --col-names file is used, yet
    a line with more fields than the first was refused in pandas' words ("Expected 1
    fields in line 2, saw 2")."""
    (tmp_path / "genes.txt").write_text("GENE1\nGENE2\tnote\nGENE3\n")
    matrix = mtx(tmp_path, _BODY, size="3 2 3")
    adata = vbsnmf.io.read_mtx(matrix, genes_as_rows=True, row_names=tmp_path / "genes.txt")
    assert list(adata.var_names) == ["GENE1", "GENE2", "GENE3"]
    mtx_to_h5ad(matrix, tmp_path / "c.h5ad", row_names=tmp_path / "genes.txt")
    assert list(ad.read_h5ad(tmp_path / "c.h5ad").var_names) == ["GENE1", "GENE2", "GENE3"]


def test_the_nul_byte_in_a_name_file_on_the_command_line(tmp_path):
    """The command line's face of the NUL byte: one error line and exit code 2, where the
    fit ran on a cut name."""
    _nul_in_row_names(tmp_path)
    argv = ["fit", "m.mtx", "--genes-as-rows", "--row-names", "genes.txt", "-o", "out"]
    line = _one_error_line(_vbsnmf(tmp_path, *argv, *FIT))
    assert line == "vbsnmf: error: genes.txt: contains a NUL byte (line 2): not a text name file"
    assert not (tmp_path / "out").exists()


# -- .h5ad without var or obs --------------------------------------------------------------
def _without(folder: Path, table: str, part: str) -> Path:
    """An .h5ad of N_CELLS x N_GENES whose ``table`` (obs, var) lost ``part``: the whole
    table, its index array, or the attribute naming it."""
    path = folder / "in.h5ad"
    adata = ad.AnnData(_counts())
    adata.var_names = [f"GENE{i}" for i in range(N_GENES)]
    adata.write_h5ad(path)
    with h5py.File(path, "r+") as handle:
        if part == "table":
            del handle[table]
        elif part == "index":
            del handle[table]["_index"]
        else:
            del handle[table].attrs["_index"]
    return path


@pytest.mark.parametrize("part", ["table", "index", "index attribute"])
@pytest.mark.parametrize("table", ["var", "obs"])
def test_an_h5ad_without_its_var_or_obs_names_is_refused(tmp_path, table, part):
    """An .h5ad without its var table was read into memory with genes named '0', '1', ...
    (and fitted into a gene_loadings.tsv.gz naming no gene), and refused streamed with a
    false reason, "holds an empty matrix of shape (40, 0)"; without obs, or an index, it
    was refused in h5py's words ("Unable to synchronously open object")."""
    path = _without(tmp_path, table, part)
    said = f"has no {table} table" if part == "table" else f"its {table} table has no index"
    for read in (vbsnmf.io.read_h5ad, vbsnmf.io.read_h5ad_backed):
        with pytest.raises(ReadError, match=said):
            read(path)


def test_the_h5ad_without_var_on_the_command_line(tmp_path, capfd):
    """Both fits of the command line refuse it, in one line: the batch fit ran on invented
    gene names, the streamed one blamed an empty matrix."""
    _without(tmp_path, "var", "table")
    for options in ([], SVI):
        code, out, err, _ = _main(["fit", "in.h5ad", *FIT, *options, "-o", "out"], capfd, tmp_path)
        assert (code, out) == (2, "")
        assert err.startswith("vbsnmf: error: in.h5ad: has no var table") and err.count("\n") == 1
        assert not (tmp_path / "out").exists()


# -- Matrix Market: the streamed conversion judges as read_mtx --------------------------------
def test_a_value_beyond_float64_converts_as_read_mtx_reads_it(tmp_path, capfd):
    """``1e400`` (beyond float64) was read as infinite by `read_mtx`, and the fit said
    "found 1 infinite entry"; the streamed conversion refused it in pandas' words ("cannot
    safely convert passed user dtype of float64 for object dtyped data in column 2")."""
    path = mtx(tmp_path, _BODY + "1 2 1e400\n", "real", "3 2 4")
    read = vbsnmf.io.read_mtx(path, genes_as_rows=True)
    mtx_to_h5ad(path, tmp_path / "c.h5ad")
    converted = ad.read_h5ad(tmp_path / "c.h5ad")
    assert (read.X != converted.X).nnz == 0 and np.isinf(converted.X.data).sum() == 1
    for options in ([], SVI):
        argv = ["fit", "m.mtx", "--genes-as-rows", *FIT, *options, "-o", "out"]
        code, _, err, _ = _main(argv, capfd, tmp_path)
        assert code == 2 and "found 1 infinite entry" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("size", ["+3 2 3", "3 +2 3", "3 2 +3", "-0 2 3"])
def test_a_signed_size_line_is_refused_by_both_readers(tmp_path, size):
    """``+3 2 3`` was accepted by `mtx_to_h5ad` (Python's int reads "+3") and refused by
    `read_mtx` in scipy's words ("Invalid integer value"): one file, two verdicts."""
    path = mtx(tmp_path, _BODY, size=size)
    for read in (
        lambda: vbsnmf.io.read_mtx(path, genes_as_rows=True),
        lambda: mtx_to_h5ad(path, tmp_path / "c.h5ad"),
    ):
        with pytest.raises(ReadError, match=f"malformed size line '{re.escape(size)}'"):
            read()


@pytest.mark.parametrize(
    "body",
    [
        "1 1 4\n2 1 1\n3 2 9223372036854775808\n",  # 2**63: pandas reads it as uint64
        "1 1 4\n2 1 1\n3 2 99999999999999999999\n",
        "1 1 4\n2 1 1\n3 2 -9223372036854775809\n",
        "1 1 4\n2 1 1\n99999999999999999999 2 7\n",
    ],
    ids=["2**63", "1e20", "below -2**63", "an index"],
)
def test_an_integer_beyond_64_bits_is_refused_by_both_readers(tmp_path, body):
    """An integer count beyond 64 bits in an integer file was refused by `read_mtx` ("corrupt
    or truncated Matrix Market file (OverflowError: ...)") and converted as a float by the
    streamed route; an index beyond 64 bits was "corrupt or truncated" on both."""
    path = mtx(tmp_path, body, size="3 2 3")
    for read in (
        lambda: vbsnmf.io.read_mtx(path, genes_as_rows=True),
        lambda: mtx_to_h5ad(path, tmp_path / "c.h5ad"),
    ):
        with pytest.raises(ReadError, match="holds an integer beyond the 64-bit range"):
            read()


def _cr_file(folder: Path) -> Path:
    path = folder / "cr.mtx"
    text = "%%MatrixMarket matrix coordinate integer general\n3 2 3\n" + _BODY
    path.write_bytes(text.replace("\n", "\r").encode())
    return path


def test_cr_line_endings_are_named_not_a_missing_banner(tmp_path):
    """A file with classic Mac line endings (CR alone) was "not a Matrix Market file (no
    '%%MatrixMarket' banner line)" though it starts with that banner: its first 1024
    bytes were read as one line."""
    path = _cr_file(tmp_path)
    for read in (
        lambda: vbsnmf.io.read_mtx(path, genes_as_rows=True),
        lambda: mtx_to_h5ad(path, tmp_path / "c.h5ad"),
    ):
        with pytest.raises(ReadError, match=r"CR \(classic Mac\) line endings") as caught:
            read()
        assert "banner" not in str(caught.value) and "LF" in str(caught.value)
    argv = ["fit", "cr.mtx", "--genes-as-rows", *FIT, "-o", "out"]
    line = _one_error_line(_vbsnmf(tmp_path, *argv))
    assert line.startswith("vbsnmf: error: cr.mtx: uses CR (classic Mac) line endings")


def test_windows_line_endings_are_still_read(tmp_path):
    """CR LF line ends (Windows) are not CR ones: read as before."""
    path = tmp_path / "crlf.mtx"
    text = "%%MatrixMarket matrix coordinate integer general\n3 2 3\n" + _BODY
    path.write_bytes(text.replace("\n", "\r\n").encode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = vbsnmf.io.read_mtx(path, genes_as_rows=True)
    assert sorted(adata.X.data) == [1.0, 4.0, 7.0]
