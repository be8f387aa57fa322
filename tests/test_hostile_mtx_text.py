"""Malformed numbers in the entry lines of a Matrix Market file (hostile pass, defect D3).

scipy's parser (fast_matrix_market) reads the valid prefix of a malformed number: ``7e``
as 7, ``3.0.0`` as 3, ``2-0`` as 2, and ignores a fourth field. The batch reader checked
the entry lines' characters one at a time and counted their numbers by character
classes, so such files were read as other counts (exit code 0), while the streamed route
refused some of them. Every entry line must hold exactly its fields, each index a plain
decimal integer and each value a whole number of the header's field: anything else is a
`ReadError` naming the file and the line, on every route (`read_mtx`, a 10x folder, the
command line's batch and streamed fits, `mtx_to_h5ad`).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from test_hostile import CONVERT, FIT, SVI, mtx, raises, refused, returns, tenx

import vbsnmf
from vbsnmf.io import ReadError, mtx_to_h5ad

JUNK = "1 1 7e\n2 2 3.0.0\n1 3 4\n"  # the hostile pass's junk2.mtx
GLUED = "1 1 3 9\n2 2-0\n1 3 4\n"  # glued2.mtx: "2-0" hid the stray fourth field "9"

# (field, value) that scipy's parser reads as a prefix of it
MALFORMED_VALUES = [
    ("real", "7e"),
    ("real", "3.0.0"),
    ("real", "1.2.3"),
    ("real", "1e5e5"),
    ("real", "1e5.3"),
    ("real", "1e+"),
    ("real", "1..2"),
    ("real", "1.5e3.5"),
    ("real", "2-0"),
    ("real", "1e-2-3"),
    ("real", "1.5+3"),
    ("real", "nana"),
    ("real", "inff"),
    ("double", "4.0.1"),
    ("integer", "2-0"),
    ("integer", "3+1"),
    ("integer", "12-"),
]


def _read(path: Path):
    return vbsnmf.io.read_mtx(path, genes_as_rows=False)


def _refused_by_read_mtx(path: Path, *messages: str) -> None:
    with pytest.raises(ReadError) as caught:
        _read(path)
    text = str(caught.value)
    assert str(path) in text, text
    for message in messages:
        assert message in text, text


@pytest.mark.parametrize(("field", "value"), MALFORMED_VALUES)
def test_a_malformed_value_is_refused_not_read_as_its_prefix(tmp_path, field, value):
    path = mtx(tmp_path, f"1 1 1\n2 2 {value}\n3 3 2\n", field)
    _refused_by_read_mtx(path, "line 4", repr(value), "not a well-formed")


@pytest.mark.parametrize(
    ("field", "body", "token"),
    [
        ("real", "1 1 1\n2 2.5 3\n3 3 2\n", "2.5"),  # read as column 2
        ("real", "1 1 1\n2e0 2 3\n3 3 2\n", "2e0"),
        ("integer", "1 1 1\n2 2-1 3\n3 3 2\n", "2-1"),
        ("pattern", "1 1\n2 2-1\n3 3\n", "2-1"),
    ],
)
def test_a_malformed_index_is_refused(tmp_path, field, body, token):
    path = mtx(tmp_path, body, field)
    _refused_by_read_mtx(path, "line 4", repr(token), "not a well-formed row or column index")


def test_a_glued_field_hiding_an_extra_one_is_refused(tmp_path):
    """``1 1 3 9`` and ``2 2-0``: 9 numbers as the size line implies, 4 fields and 2."""
    path = mtx(tmp_path, GLUED, size="2 3 3")
    _refused_by_read_mtx(path, "line 3 holds 4 fields", "has 3", "'1 1 3 9'")


def test_the_count_of_numbers_still_explains_a_missing_field_everywhere(tmp_path):
    """A field missing on every line: the count's message, with the first such line."""
    path = mtx(tmp_path, "1 1\n2 2\n3 1\n")
    _refused_by_read_mtx(path, "hold 6 numbers where the size line implies 9", "line 3 holds 2")


def test_an_array_file_value_is_checked(tmp_path):
    path = tmp_path / "a.mtx"
    path.write_text("%%MatrixMarket matrix array real general\n2 2\n1\n2.5.1\n3\n4\n")
    _refused_by_read_mtx(path, "line 4", "'2.5.1'", "not a well-formed number")


def test_a_malformed_number_on_a_line_across_blocks_is_found(tmp_path):
    """Lines are checked once their newline is read: a line cut by the 1 MiB block the
    parser reads, and the last line without a newline, are checked whole."""
    n_rows = 150_000
    lines = [f"{i} {i % 7 + 1} {i % 5}.5" for i in range(1, n_rows + 1)]
    text = "\n".join(lines) + "\n"
    boundary = text.index("\n", (1 << 20) - 8)  # the line ending just after 1 MiB
    where = text.count("\n", 0, boundary)  # its index in lines
    for index, bad in ((where, "7e"), (n_rows - 1, "3.0.0")):
        broken = list(lines)
        broken[index] = broken[index].rsplit(" ", 1)[0] + " " + bad
        body = "\n".join(broken) + ("" if index == n_rows - 1 else "\n")
        path = mtx(tmp_path, body, "real", size=f"{n_rows} 7 {n_rows}")
        _refused_by_read_mtx(path, f"line {index + 3}", repr(bad), "not a well-formed")
        gz = path.with_suffix(".mtx.gz")
        gz.write_bytes(gzip.compress(path.read_bytes(), 1))
        _refused_by_read_mtx(gz, f"line {index + 3}", repr(bad))


WELL_FORMED = {
    "decimal forms": ("real", "1 1 .5\n2 2 5.\n3 3 1E-3\n", [0.5, 5.0, 0.001]),
    "exponents": ("real", "1 1 1e+2\n2 2 2.5e1\n3 3 3.7E-1\n", [100.0, 25.0, 0.37]),
    "tabs and runs of spaces": ("real", "1\t1\t1.5\n2   2  2\n 3 3 3 \n", [1.5, 2.0, 3.0]),
    "Windows line ends": ("integer", "1 1 1\r\n2 2 2\r\n3 3 3\r\n", [1.0, 2.0, 3.0]),
    "blank lines, no last newline": ("integer", "1 1 1\n\n2 2 2\n  \n3 3 3", [1.0, 2.0, 3.0]),
    "pattern": ("pattern", "1 1\n2 2\n3 3\n", [1.0, 1.0, 1.0]),
}


@pytest.mark.parametrize("name", list(WELL_FORMED))
def test_well_formed_entry_lines_are_still_read(tmp_path, name):
    field, body, expected = WELL_FORMED[name]
    matrix = _read(mtx(tmp_path, body, field)).X.toarray()
    np.testing.assert_allclose(np.diag(matrix), expected)
    assert np.count_nonzero(matrix) == 3


# -- every route, in the style of test_hostile --------------------------------------------------
CASES = {
    "fit: junk2.mtx, 7e and 3.0.0 (batch)": refused(
        lambda f: ["fit", mtx(f, JUNK, "real", "2 3 3"), "--cells-as-rows", *FIT, "-o", "o"],
        "m.mtx",
        "'7e'",
        "not a well-formed number",
    ),
    "fit: junk2.mtx (streamed), the same message": refused(
        lambda f: [
            "fit",
            mtx(f, JUNK, "real", "2 3 3"),
            "--cells-as-rows",
            *FIT,
            *SVI,
            "-o",
            "o",
        ],
        "m.mtx",
        "'7e'",
        "not a well-formed number",
    ),
    "fit: glued2.mtx, 2-0 hiding a fourth field (batch)": refused(
        lambda f: ["fit", mtx(f, GLUED, size="2 3 3"), "--cells-as-rows", *FIT, "-o", "o"],
        "m.mtx",
        "4 fields",
    ),
    "fit: glued2.mtx converted for streaming": refused(
        lambda f: [
            "fit",
            mtx(f, GLUED, size="2 3 3"),
            "--cells-as-rows",
            *FIT,
            *SVI,
            *CONVERT,
            "-o",
            "o",
        ],
        "m.mtx",
        "4 fields",
    ),
    "fit: 10x folder with a count 2-0": refused(
        lambda f: ["fit", tenx(f, [(1, 1, "2-0")]), *FIT, "-o", "o"],
        "matrix.mtx.gz",
        "'2-0'",
        "not a well-formed integer",
    ),
    "read_mtx: 1.2.3": raises(
        lambda f: _read(mtx(f, "1 1 1.2.3\n2 2 1\n3 3 2\n", "real")),
        ReadError,
        "m.mtx",
        "'1.2.3'",
    ),
    "read: 10x folder with a count 4+2": raises(
        lambda f: vbsnmf.io.read(tenx(f, [(2, 3, "4+2")])),
        ReadError,
        "matrix.mtx.gz",
        "'4+2'",
    ),
    "mtx_to_h5ad: 7e": raises(
        lambda f: mtx_to_h5ad(mtx(f, JUNK, "real", "2 3 3"), f / "c.h5ad", genes_as_rows=False),
        ReadError,
        "m.mtx",
        "'7e'",
        "not a well-formed number",
    ),
    "read_mtx: tidy real file still read exactly": returns(
        lambda f: _read(mtx(f, "1 1 16777217.0\n2 2 1.5e0\n3 3 .25\n", "real")),
        lambda a: None if sorted(a.X.data) == [0.25, 1.5, 16777217.0] else f"{a.X.data}",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_route_refuses_malformed_entry_lines(name, tmp_path, capfd):
    problem = CASES[name](tmp_path, capfd)
    assert problem is None, problem
