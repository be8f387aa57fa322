"""Matrix Market files the batch reader and the converter read differently (fourteenth
hostile pass, io).

`vbsnmf.io.read_mtx` (scipy's parser behind `CheckedText`) and `vbsnmf.io.mtx_to_h5ad`
(pandas' parser, also the streamed fit of an ``.mtx``) must read one file as one matrix:

- D1: an indented comment line before the size line is part of the header for
  `mtx_header` and read_mtx; the converter skipped the header by its own test (a line
  starting with ``%``), took the size line for an entry and refused the file ("holds
  more entries than its header's").
- D2: a coordinate integer file of no entries: read_mtx reads zeros, the converter said
  it "holds an integer beyond the 64-bit range" (pandas reads an empty value column as
  text).
- D3: a value with a leading ``+`` (``1 1 +5``, as C's ``scanf`` and pandas read it): the
  converter read it, read_mtx refused the file as "corrupt or truncated".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vbsnmf.io import ReadError, mtx_to_h5ad, read, read_mtx

BANNER = "%%MatrixMarket matrix coordinate {} general\n"


def _both_routes(tmp_path: Path, text: str) -> tuple[np.ndarray, np.ndarray]:
    """The dense matrix of ``text`` (rows are cells) as read_mtx reads it and as its
    conversion reads back."""
    src = tmp_path / "counts.mtx"
    src.write_text(text, newline="")
    batch = read_mtx(src, genes_as_rows=False).X.toarray()
    converted = mtx_to_h5ad(src, tmp_path / "counts.h5ad", genes_as_rows=False)
    return batch, read(converted).X.toarray()


@pytest.mark.parametrize("comment", ["  % indented\n", "\t%\n", "   \n  % after a blank\n"])
def test_an_indented_comment_before_the_size_line_converts_as_it_reads(tmp_path, comment):
    text = BANNER.format("integer") + comment + "3 3 2\n1 1 5\n2 2 3\n"
    batch, converted = _both_routes(tmp_path, text)
    expected = np.array([[5, 0, 0], [0, 3, 0], [0, 0, 0]], dtype=float)
    assert np.array_equal(batch, expected)
    assert np.array_equal(converted, expected)


def test_an_indented_comment_line_does_not_hide_an_extra_entry(tmp_path):
    # the size line is not an entry, so one entry too many is still one too many (refused
    # by the count of numbers, which is checked as the text is read)
    src = tmp_path / "counts.mtx"
    src.write_text(BANNER.format("integer") + " % c\n3 3 1\n1 1 5\n2 2 3\n")
    with pytest.raises(ReadError, match="hold 6 numbers where the size line implies 3"):
        mtx_to_h5ad(src, tmp_path / "counts.h5ad", genes_as_rows=False)
    assert not (tmp_path / "counts.h5ad").exists()


@pytest.mark.parametrize("field", ["integer", "real"])
def test_a_file_of_no_entries_converts_to_the_zeros_it_reads_as(tmp_path, field):
    batch, converted = _both_routes(tmp_path, BANNER.format(field) + "3 4 0\n")
    assert batch.shape == converted.shape == (3, 4)
    assert not batch.any() and not converted.any()


def test_an_integer_beyond_64_bits_is_still_refused_by_the_converter(tmp_path):
    src = tmp_path / "counts.mtx"
    src.write_text(BANNER.format("integer") + "2 2 1\n1 1 99999999999999999999\n")
    with pytest.raises(ReadError, match="64-bit"):
        mtx_to_h5ad(src, tmp_path / "counts.h5ad", genes_as_rows=False)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("integer", "+5", 5.0),
        ("real", "+5", 5.0),
        ("real", "+.5", 0.5),
        ("real", "+2.5e+1", 25.0),
        ("real", "+inf", np.inf),
    ],
)
def test_a_value_with_a_plus_sign_is_read_as_the_converter_reads_it(
    tmp_path, field, value, expected
):
    text = BANNER.format(field) + f"3 3 2\n1 1 {value}\n2 2\t+3\n"
    batch, converted = _both_routes(tmp_path, text)
    assert batch[0, 0] == expected and batch[1, 1] == 3.0
    assert np.array_equal(batch, converted)


def test_a_plus_sign_at_the_start_of_a_read_block_is_read(tmp_path):
    # the parser reads 1 MiB at a time: a sign as the first byte of the second block,
    # after the space that ended the first (a long comment line fills it)
    banner = BANNER.format("integer")
    body = "3 3 2\n2 2 3\n1 1"
    pad = (1 << 20) - len(banner) - len(body) - 4
    text = banner + "% " + "x" * pad + "\n" + body + " +4\n"
    assert text[(1 << 20) - 1 : (1 << 20) + 1] == " +"
    src = tmp_path / "counts.mtx"
    src.write_text(text)
    counts = read_mtx(src, genes_as_rows=False).X.toarray()
    assert np.array_equal(counts, [[4, 0, 0], [0, 3, 0], [0, 0, 0]])


@pytest.mark.parametrize("line", ["1 1 + 5", "1 1 +-5", "1 1 ++5", "+1 1 5", "1 1 5+"])
def test_a_plus_sign_not_starting_a_value_is_still_refused(tmp_path, line):
    src = tmp_path / "counts.mtx"
    src.write_text(BANNER.format("integer") + f"3 3 2\n{line}\n2 2 3\n")
    with pytest.raises(ReadError, match=r"counts\.mtx"):
        read_mtx(src, genes_as_rows=False)
