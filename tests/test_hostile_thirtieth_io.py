"""Matrix Market files the readers read wrong or named badly (thirtieth hostile pass, io).

- D1: `vbsnmf.io.read_mtx` and `vbsnmf.io.read_10x` chose float32 for the counts before
  they summed an ``.mtx``'s repeated entries, and summed them in float32: 16,777,216 + 1
  (each exact in float32) was read as 16,777,216, silently; `mtx_to_h5ad` gave 16,777,217.
- D2: `vbsnmf.io.mtx_to_h5ad` parsed a real ``.mtx``'s values with pandas' default float
  parser, which is not correctly rounded: about a third of full-precision values (as
  ``repr`` writes them) were stored one unit in the last place away from what
  `read_mtx`, scipy and Python read, so a converted file did not fit as the ``.mtx`` does.
- D3: a value with a decimal point or an exponent in an ``integer`` file (``2.0``,
  ``2.5``, ``1e3``), a ``%`` comment among the entry lines, and any other stray character
  were refused as "entry lines hold characters that are not numbers (b'.5\\n3 1 1')",
  naming no line, and not that the header's field (which should say 'real') or the comment
  was the problem.
- D4: a banner with a word too many (which scipy reads) or too few (no symmetry) was
  refused as "not a Matrix Market file (no '%%MatrixMarket' banner line)".
- D5: `read_h5ad`, `read_h5ad_backed`, `read_10x_h5` and `read_mtx` (and a name file)
  called directly said "no such file" of a loop of symbolic links, which `vbsnmf.io.read`
  names as one.
- D6: an I/O error of the system while reading an input (a failing disk, a network file
  system; ``/proc/self/mem``, whose reads fail with EIO, stands for one) escaped as a raw
  OSError naming no file from `vbsnmf.io.read` of an ``.h5ad`` or ``.h5``, `mtx_to_h5ad`
  and the streamed route ("vbsnmf: error: [Errno 5] Input/output error"); one in the
  middle of a conversion was blamed on the ``.h5ad`` being written ("[Errno 5]
  Input/output error: 'counts.h5ad'", as if the disk of the output had failed).
- D7: a folder of 10x files named with a prefix, as GEO serves them
  (``GSM1_matrix.mtx.gz``, ...), was "not a 10x folder: none of matrix.mtx.gz, ... found
  in it", not saying that they are there under other names, nor how to read them.
- D8: an ``.mtx`` written with 0-based indexes, or using more rows than its size line
  declares, was "corrupt or truncated Matrix Market file (ValueError: Line 7: Row index
  out of bounds)" (`read_mtx`) and "a cell index is outside 1..3" (`mtx_to_h5ad`): no word
  of the index 0 or of the line's content.

Guards (pass on both): hostile but valid or refused Matrix Market files read as
``scipy.io.mmread`` reads them, or refused with a `ReadError` naming the file.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import re
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from test_hostile import FIT, _main

import vbsnmf.io._convert
from vbsnmf.io import (
    ReadError,
    mtx_to_h5ad,
    read,
    read_10x,
    read_10x_h5,
    read_h5ad,
    read_h5ad_backed,
    read_mtx,
)
from vbsnmf.io._stream import open_source

_BANNER = "%%MatrixMarket matrix coordinate {field} general\n"


def _mtx(folder: Path, body: str, field: str = "integer", name: str = "m.mtx") -> Path:
    """A Matrix Market file of ``body`` (size line and entries), gzip-compressed when its
    name says so."""
    data = (_BANNER.format(field=field) + body).encode()
    path = folder / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def _tenx(folder: Path, body: str) -> Path:
    """A Cell Ranger 3 folder of 2 genes x 2 cells whose matrix holds ``body``."""
    tenx = folder / "tenx"
    tenx.mkdir()
    _mtx(tenx, body, name="matrix.mtx.gz")
    features = "".join(f"ENSG{i}\tG{i}\tGene Expression\n" for i in range(2))
    (tenx / "features.tsv.gz").write_bytes(gzip.compress(features.encode()))
    (tenx / "barcodes.tsv.gz").write_bytes(gzip.compress(b"AAA-1\nCCC-1\n"))
    return tenx


def _converted(src: Path, dst: Path, **options) -> np.ndarray:
    return ad.read_h5ad(mtx_to_h5ad(src, dst, **options)).X.toarray()


# -- D1: repeated entries summed before the exact dtype is chosen --------------------------
@pytest.mark.parametrize(
    ("field", "body", "expected"),
    [
        ("integer", "2 2 3\n1 1 16777216\n1 1 1\n2 2 1\n", 16777217.0),
        ("real", "2 2 3\n1 1 16777216\n1 1 0.5\n2 2 1\n", 16777216.5),
        ("integer", "2 2 3\n1 1 8388609\n1 1 8388608\n2 2 1\n", 16777217.0),
    ],
)
def test_repeated_entries_are_summed_before_the_float32_choice(tmp_path, field, body, expected):
    """Each entry is exact in float32, their sum is not: read in float64, as converted."""
    for name in ("m.mtx", "m.mtx.gz"):
        path = _mtx(tmp_path, body, field, name)
        counts = read_mtx(path, genes_as_rows=False).X
        assert counts.dtype == np.float64
        assert counts[0, 0] == expected and counts[1, 1] == 1 and counts.nnz == 2
        converted = _converted(path, tmp_path / f"{name}.h5ad", genes_as_rows=False)
        np.testing.assert_array_equal(converted, counts.toarray())


def test_a_10x_folder_sums_its_repeats_exactly(tmp_path):
    adata = read_10x(_tenx(tmp_path, "2 2 3\n1 2 16777216\n1 2 1\n2 1 3\n"))
    assert adata.X.dtype == np.float64
    assert adata.X.toarray().tolist() == [[0.0, 3.0], [16777217.0, 0.0]]


def test_exact_float32_counts_with_repeats_stay_float32(tmp_path):
    """Guard (passes on both): repeats whose sums float32 holds keep the smaller dtype."""
    path = _mtx(tmp_path, "3 2 5\n1 1 5\n1 1 2\n2 2 3\n3 1 1\n3 1 4\n")
    counts = read_mtx(path, genes_as_rows=False).X
    assert counts.dtype == np.float32
    assert counts.toarray().tolist() == [[7.0, 0.0], [0.0, 3.0], [5.0, 0.0]]


# -- D2: real values converted correctly rounded ------------------------------------------
def test_converted_real_values_are_the_files_numbers(tmp_path):
    values = np.random.default_rng(0).gamma(1.0, 1.0, 300)
    lines = "".join(f"{cell + 1} 1 {float(value)!r}\n" for cell, value in enumerate(values))
    for name in ("real.mtx", "real.mtx.gz"):
        path = _mtx(tmp_path, f"300 1 300\n{lines}", "real", name)
        converted = _converted(path, tmp_path / f"{name}.h5ad", genes_as_rows=False).ravel()
        assert int(np.sum(converted != values)) == 0
        read_values = read_mtx(path, genes_as_rows=False).X.toarray().ravel()
        np.testing.assert_array_equal(converted, read_values)


def test_converted_special_real_tokens_match_read_mtx(tmp_path):
    """Guard (passes on both): the tokens of a real field read alike on both routes."""
    tokens = ["5.", ".5", "1E5", "-0.0", "NaN", "Inf", "1e400", "1e-400", "4.9e-324", "+3.5"]
    lines = "".join(f"{i + 1} 1 {token}\n" for i, token in enumerate(tokens))
    path = _mtx(tmp_path, f"{len(tokens)} 1 {len(tokens)}\n{lines}", "real")
    converted = _converted(path, tmp_path / "c.h5ad", genes_as_rows=False).ravel()
    read_values = read_mtx(path, genes_as_rows=False).X.toarray().ravel()
    np.testing.assert_array_equal(converted, read_values)  # NaN equal to NaN here


# -- D3: stray characters named with their line -------------------------------------------
@pytest.mark.parametrize(
    ("value", "line"),
    [("2.5", "2 2 2.5"), ("2.0", "2 2 2.0"), ("1e3", "2 2 1e3"), ("3.", "2 2 3.")],
)
def test_a_decimal_value_in_an_integer_file_is_named(tmp_path, value, line):
    body = f"3 2 3\n1 1 5\n{line}\n3 1 1\n"
    for name in ("m.mtx", "m.mtx.gz"):
        path = _mtx(tmp_path, body, name=name)
        expected = re.escape(f"line 4 holds '{value}', not an integer")
        for load in (
            lambda path=path: read_mtx(path, genes_as_rows=False),
            lambda path=path: mtx_to_h5ad(path, tmp_path / "c.h5ad", genes_as_rows=False),
        ):
            with pytest.raises(ReadError, match=expected) as caught:
                load()
            assert caught.value.path == path and "'real'" in str(caught.value)
        assert not (tmp_path / "c.h5ad").exists()


def test_a_decimal_value_in_a_10x_matrix_is_named(tmp_path):
    with pytest.raises(ReadError, match=r"matrix\.mtx\.gz: line 3 holds '4\.0', not an integer"):
        read(_tenx(tmp_path, "2 2 1\n1 1 4.0\n"))


def test_a_decimal_value_on_the_command_line_is_one_line(tmp_path, capfd):
    _mtx(tmp_path, "3 2 3\n1 1 5\n2 2 2.0\n3 1 1\n")
    code, out, err, _ = _main(["fit", "m.mtx", "--cells-as-rows", *FIT, "-o", "o"], capfd, tmp_path)
    assert code == 2 and not out
    assert err.startswith("vbsnmf: error: m.mtx: line 4 holds '2.0', not an integer")
    assert len(err.splitlines()) == 1


def test_a_decimal_far_into_a_file_names_its_line(tmp_path):
    """Lines are counted across the checker's 1 MiB blocks and the header's comments."""
    n = 150_000
    lines = [f"{cell + 1} 1 3" for cell in range(n)]
    lines[120_000] = "120001 1 2.5"
    body = "% a comment\n" + f"{n} 1 {n}\n" + "\n".join(lines) + "\n"
    path = _mtx(tmp_path, body, name="m.mtx.gz")
    with pytest.raises(ReadError, match=r"line 120004 holds '2\.5'"):
        read_mtx(path, genes_as_rows=False)


def test_a_comment_among_the_entries_is_named(tmp_path):
    path = _mtx(tmp_path, "3 2 3\n1 1 5\n% written later\n2 2 3\n3 1 1\n")
    for load in (
        lambda: read_mtx(path, genes_as_rows=False),
        lambda: mtx_to_h5ad(path, tmp_path / "c.h5ad", genes_as_rows=False),
    ):
        with pytest.raises(ReadError, match=r"line 4 is a comment \('% written later'\)"):
            load()


@pytest.mark.parametrize(
    ("field", "line", "shown"),
    [
        ("integer", "2 x 1", "line 4 is '2 x 1'"),
        ("integer", "1.0 1 5", "line 4 is '1.0 1 5'"),  # an index: damage, not the field
        ("integer", "2 2 nan", "line 4 is '2 2 nan'"),
        ("real", "2 2 0x10", "line 4 is '2 2 0x10'"),
    ],
)
def test_other_stray_characters_name_their_line(tmp_path, field, line, shown):
    path = _mtx(tmp_path, f"3 2 3\n1 1 5\n{line}\n3 1 1\n", field)
    with pytest.raises(ReadError, match="characters that are not numbers") as caught:
        read_mtx(path, genes_as_rows=False)
    assert shown in str(caught.value) and "not an integer" not in str(caught.value)


# -- D4: a banner of other words named as one ---------------------------------------------
@pytest.mark.parametrize(
    ("banner", "words"),
    [
        ("%%MatrixMarket matrix coordinate integer general extra", "6 words"),
        ("%%MatrixMarket matrix coordinate integer", "4 words"),
        ("%%MatrixMarket", "1 word "),
    ],
)
def test_a_banner_of_other_words_is_named(tmp_path, banner, words):
    path = tmp_path / "m.mtx"
    path.write_text(f"{banner}\n3 2 1\n1 1 1\n")
    for load in (
        lambda: read_mtx(path, genes_as_rows=True),
        lambda: mtx_to_h5ad(path, tmp_path / "c.h5ad"),
    ):
        with pytest.raises(ReadError, match="malformed banner line") as caught:
            load()
        assert words in str(caught.value) and "no '%%MatrixMarket'" not in str(caught.value)


def test_text_without_a_banner_is_still_named_so(tmp_path):
    """Guard (passes on both)."""
    path = tmp_path / "m.mtx"
    path.write_text("% MatrixMarket matrix coordinate integer general\n3 2 1\n1 1 1\n")
    with pytest.raises(ReadError, match="no '%%MatrixMarket' banner line"):
        read_mtx(path, genes_as_rows=True)


# -- D5: a loop of symbolic links named by every reader -----------------------------------
def _loop(folder: Path, name: str) -> Path:
    first, second = folder / name, folder / f"other-{name}"
    os.symlink(second, first)
    os.symlink(first, second)
    return first


def test_each_reader_names_a_loop_of_symbolic_links(tmp_path):
    good = _mtx(tmp_path, "3 2 1\n1 1 1\n")
    calls = {
        "read_h5ad": lambda: read_h5ad(_loop(tmp_path, "a.h5ad")),
        "read_h5ad_backed": lambda: read_h5ad_backed(_loop(tmp_path, "b.h5ad")),
        "read_10x_h5": lambda: read_10x_h5(_loop(tmp_path, "c.h5")),
        "read_mtx": lambda: read_mtx(_loop(tmp_path, "d.mtx"), genes_as_rows=True),
        "row names": lambda: read_mtx(good, genes_as_rows=True, row_names=_loop(tmp_path, "e")),
    }
    for what, call in calls.items():
        with pytest.raises(ReadError, match="too many levels of symbolic links"):
            call()
            pytest.fail(f"{what} read a loop")
    with pytest.raises(ReadError, match="no such file"):  # a missing file: as before
        read_h5ad(tmp_path / "absent.h5ad")


# -- D6: an I/O error of the system names the input ---------------------------------------
_FAILING_FILE = Path("/proc/self/mem")  # a regular file whose reads fail with EIO
needs_failing_file = pytest.mark.skipif(
    not _FAILING_FILE.is_file(), reason="needs Linux's /proc/self/mem"
)


@needs_failing_file
@pytest.mark.parametrize("name", ["in.h5ad", "in.h5", "in.mtx", "in.mtx.gz"])
def test_an_io_error_names_the_input(tmp_path, name):
    path = tmp_path / name
    path.symlink_to(_FAILING_FILE)
    options = {"genes_as_rows": True} if ".mtx" in name else {}
    calls = [lambda: read(path, **options), lambda: open_source(path, **options)]
    if ".mtx" in name:
        calls.append(lambda: mtx_to_h5ad(path, tmp_path / "c.h5ad"))
    for call in calls:
        with pytest.raises(ReadError, match="could not be read: the system refused") as caught:
            call()
        assert caught.value.path == path and "Input/output error" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@needs_failing_file
def test_an_io_error_on_the_command_line_names_the_input(tmp_path, capfd):
    (tmp_path / "in.h5ad").symlink_to(_FAILING_FILE)
    code, out, err, _ = _main(["fit", "in.h5ad", *FIT, "-o", "o"], capfd, tmp_path)
    assert code == 2 and not out
    assert err.startswith("vbsnmf: error: in.h5ad: could not be read: the system refused")


class _FailingAfter(io.RawIOBase):
    """A file whose reads fail with EIO once ``limit`` bytes are read (a disk failing)."""

    def __init__(self, path, limit: int):
        self._file, self._left = open(path, "rb"), limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._left <= 0:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        data = self._file.read(min(len(buffer), 1000, self._left))
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


def test_an_io_error_mid_conversion_is_the_inputs_not_the_outputs(tmp_path, monkeypatch):
    """The header read, the entries fail: a `ReadError` naming the ``.mtx``, not an OSError
    naming the ``.h5ad`` (`atomic_file` took the read error for a failed write)."""
    lines = "".join(f"1 {cell + 1} 1\n" for cell in range(3000))
    path = _mtx(tmp_path, f"3 3000 3000\n{lines}")
    monkeypatch.setattr(
        vbsnmf.io._convert,
        "open_binary",
        lambda source: io.BufferedReader(_FailingAfter(source, 8000)),
    )
    with pytest.raises(ReadError, match=r"the system refused .*Input/output error") as caught:
        mtx_to_h5ad(path, tmp_path / "counts.h5ad")
    assert caught.value.path == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mtx"]


# -- D7: a GEO folder of prefixed names ----------------------------------------------------
def test_a_folder_of_prefixed_10x_files_is_told_how_to_read_them(tmp_path, capfd):
    tenx = _tenx(tmp_path, "2 2 1\n1 1 3\n")
    for name in ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"):
        (tenx / name).rename(tenx / f"GSM1_{name}")
    for load in (lambda: read(tenx), lambda: mtx_to_h5ad(tenx, tmp_path / "c.h5ad")):
        with pytest.raises(ReadError, match="whose names have a prefix") as caught:
            load()
        assert "GSM1_barcodes.tsv.gz, GSM1_features.tsv.gz, GSM1_matrix.mtx.gz" in str(caught.value)
    # and the way it gives reads the files
    argv = ["fit", "tenx/GSM1_matrix.mtx.gz", "--genes-as-rows", "--row-names"]
    argv += ["tenx/GSM1_features.tsv.gz", "--col-names", "tenx/GSM1_barcodes.tsv.gz"]
    code, _, err, _ = _main([*argv, *FIT, "-o", "out"], capfd, tmp_path)
    assert code == 0, err
    code, _, err, _ = _main(["fit", "tenx", *FIT, "-o", "out2"], capfd, tmp_path)
    assert code == 2 and "--row-names FEATURES --col-names BARCODES" in err


def test_a_folder_of_other_files_keeps_its_message(tmp_path):
    """Guard (passes on both)."""
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ReadError, match=r"not a 10x folder: none of matrix\.mtx\.gz"):
        read(tmp_path)


# -- D8: an index out of range named with its line --------------------------------------
def test_a_zero_based_file_is_named_so(tmp_path):
    body = "% written by a script\n3 2 3\n1 1 5\n2 2 3\n0 1 1\n"
    for name in ("m.mtx", "m.mtx.gz"):
        path = _mtx(tmp_path, body, name=name)
        with pytest.raises(ReadError, match=r"line 6 \('0 1 1'\) holds an index of 0, where"):
            read_mtx(path, genes_as_rows=False)
        with pytest.raises(ReadError, match="a cell index is 0, where Matrix Market indexes start"):
            mtx_to_h5ad(path, tmp_path / "c.h5ad", genes_as_rows=False)
    with pytest.raises(ReadError, match=r"matrix\.mtx\.gz: line 3 \('0 1 4'\) holds an index of 0"):
        read(_tenx(tmp_path, "2 2 1\n0 1 4\n"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("4 2 3", r"line 4 \('4 2 3'\) holds a row index outside 1\.\.3, the rows its size"),
        ("2 3 3", r"line 4 \('2 3 3'\) holds a column index outside 1\.\.2, the columns"),
    ],
)
def test_an_index_beyond_the_size_line_is_named_with_its_line(tmp_path, line, message):
    path = _mtx(tmp_path, f"3 2 2\n1 1 5\n{line}\n")
    with pytest.raises(ReadError, match=message):
        read_mtx(path, genes_as_rows=False)


# -- guards: hostile files read as scipy reads them, or refused by name -------------------
_VALID = {
    "crlf": "3 2 3\r\n1 1 5\r\n2 2 3\r\n3 1 1\r\n",
    "trailing blank lines": "3 2 3\n1 1 5\n2 2 3\n3 1 1\n\n\n",
    "tabs": "3\t2\t3\n1\t1\t5\n2\t2\t3\n3\t1\t1\n",
    "explicit zero": "3 2 3\n1 1 0\n2 2 3\n3 1 1\n",
    "no entries": "3 2 0\n",
    "leading zeros": "3 2 1\n01 002 7\n",
}


@pytest.mark.parametrize("case", list(_VALID))
def test_valid_oddities_read_as_scipy_reads_them(tmp_path, case):
    """Guard (passes on both)."""
    text = (_BANNER.format(field="integer") + _VALID[case]).encode()
    expected = scipy.io.mmread(io.BytesIO(text))
    expected = expected.toarray() if sp.issparse(expected) else np.asarray(expected)
    for name, data in (("m.mtx", b"\xef\xbb\xbf" + text), ("m.mtx.gz", gzip.compress(text))):
        path = tmp_path / name
        path.write_bytes(data)
        np.testing.assert_array_equal(read_mtx(path, genes_as_rows=False).X.toarray(), expected)
        converted = _converted(path, tmp_path / f"{name}.h5ad", genes_as_rows=False)
        np.testing.assert_array_equal(converted, expected)


_REFUSED = {
    "fewer entries than declared": ("3 2 4\n1 1 5\n2 2 3\n3 1 1\n", "integer", "m.mtx"),
    "more entries than declared": ("3 2 2\n1 1 5\n2 2 3\n3 1 1\n", "integer", "m.mtx"),
    "a column out of range": ("3 2 1\n1 3 5\n", "integer", "m.mtx"),
    "0-based indexes": ("3 2 2\n0 0 5\n2 1 3\n", "integer", "m.mtx"),
    "an index beyond 64 bits": ("3 2 1\n18446744073709551617 1 5\n", "integer", "64-bit"),
    "symmetric": ("3 3 1\n2 1 3\n", "symmetric", "symmetric"),
    "complex": ("3 2 1\n1 1 5 0\n", "complex", "complex"),
}


@pytest.mark.parametrize("case", list(_REFUSED))
def test_lying_headers_are_refused_by_name(tmp_path, case):
    """Guard (passes on both): a `ReadError` naming the file, nothing written."""
    body, field, message = _REFUSED[case]
    banner = _BANNER.format(field=field)
    if field == "symmetric":
        banner = "%%MatrixMarket matrix coordinate integer symmetric\n"
    path = tmp_path / "m.mtx"
    path.write_text(banner + body)
    for load in (
        lambda: read_mtx(path, genes_as_rows=False),
        lambda: mtx_to_h5ad(path, tmp_path / "c.h5ad", genes_as_rows=False),
    ):
        with pytest.raises(ReadError, match=message) as caught:
            load()
        assert caught.value.path == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mtx"]


def test_a_10x_folder_copied_with_spaces_and_accents_reads(tmp_path):
    """Guard (passes on both): a folder path with spaces and non-ASCII letters."""
    folder = tmp_path / "my runs é"
    folder.mkdir()
    shutil.move(_tenx(tmp_path, "2 2 2\n1 1 4\n2 2 1\n"), folder / "sample 1")
    adata = read(folder / "sample 1")
    assert adata.X.toarray().tolist() == [[4.0, 0.0], [0.0, 1.0]]
    assert list(adata.obs_names) == ["AAA-1", "CCC-1"]
