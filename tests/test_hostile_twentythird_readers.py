"""Input files the readers crashed on or named wrongly (twenty-third hostile pass, readers).

- D1: a Matrix Market file whose last line ends in white space or a CR without a newline
  (``1 1 4 `` at the end of the file) crashed the interpreter (SIGSEGV) in scipy's parser:
  `vbsnmf.io.read_mtx`, `vbsnmf.io.read_10x` and ``vbsnmf fit`` died without a word.
- D2: `vbsnmf.io.mtx_to_h5ad` into a folder that does not exist raised a plain ValueError,
  where `vbsnmf.io.write_result` and every other writer raise FileNotFoundError naming the
  folder; a folder at the destination was refused only after the name files were read.
- D3: an empty ``.mtx``, or one compressed with bzip2, xz, zstd or gzip twice, zipped,
  saved as UTF-16 or an HDF5 file so named, was refused as "no '%%MatrixMarket' banner
  line", which sent the user looking for a banner, not at the compression; a name file
  so compressed was "not UTF-8 text (byte 0x8b on line 1)".
- D4: a Cell Ranger ``.h5`` of no cells read as an empty AnnData, where the other readers
  refuse an empty matrix with a `ReadError` naming the file.
- D5: ``vbsnmf fit --solver svi`` on a Matrix Market file in the array format (a dense
  matrix, as `scipy.io.mmwrite` writes a numpy array; or a 10x folder's) was refused,
  "converts coordinate files, not the array format", where an ``.h5ad`` whose X does not
  stream is read into memory and fitted; the refusal (with ``--convert-to``, and of
  `vbsnmf.io.mtx_to_h5ad`) now says what to do.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_hostile import FIT, _main

from vbsnmf.io import ReadError, mtx_to_h5ad, read, read_mtx

_BANNER = "%%MatrixMarket matrix {fmt} {field} general\n"
# the last line of each file, without its newline, and the counts it holds (rows x columns)
_LAST_LINES = {
    "coordinate integer": ("3 2 1\n1 1 4", [[4.0, 0.0], [0.0, 0.0], [0.0, 0.0]]),
    "coordinate real": ("3 2 2\n1 1 4\n3 2 2.5", [[4.0, 0.0], [0.0, 0.0], [0.0, 2.5]]),
    "coordinate pattern": ("3 2 1\n2 1", [[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]),
    "array real": ("2 1\n4\n5", [[4.0], [5.0]]),
}

_ENDS = {"space": " ", "tab": "\t", "blanks": "  \t", "cr": "\r"}

# read in a child process, all files in one: the crash took the interpreter with it
_READ = """
import json, sys, warnings
warnings.simplefilter("ignore")
from vbsnmf.io import read_mtx
print(json.dumps([read_mtx(p, genes_as_rows=False).X.toarray().tolist() for p in sys.argv[1:]]))
"""


def test_a_last_line_ending_in_white_space_without_a_newline_is_read(tmp_path):
    paths, expected = [], []
    for kind, (body, counts) in _LAST_LINES.items():
        fmt, field = kind.split()
        for name, end in _ENDS.items():
            path = tmp_path / f"{fmt}_{field}_{name}.mtx"
            path.write_bytes((_BANNER.format(fmt=fmt, field=field) + body + end).encode())
            paths.append(path)
            expected.append(counts)
    done = subprocess.run(
        [sys.executable, "-c", _READ, *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=300,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-300:])
    assert json.loads(done.stdout) == expected
    for path, counts in zip(paths, expected):  # the streamed route reads the same counts
        if path.name.startswith("coordinate"):
            converted = mtx_to_h5ad(path, path.with_suffix(".h5ad"), genes_as_rows=False)
            np.testing.assert_array_equal(read(converted).X.toarray(), counts)


def test_a_10x_folder_whose_matrix_ends_in_white_space_fits(tmp_path, capfd):
    """The command line, on a 10x folder whose matrix's last line ends in a space."""
    folder = tmp_path / "tenx"
    folder.mkdir()
    entries = "".join(f"{g} {c} {g + c}\n" for c in range(1, 6) for g in range(1, 4))
    text = _BANNER.format(fmt="coordinate", field="integer") + f"3 5 15\n{entries}"
    (folder / "matrix.mtx.gz").write_bytes(gzip.compress(text.rstrip("\n").encode() + b" "))
    genes = "".join(f"G{g}\tg{g}\tGene Expression\n" for g in range(3))
    (folder / "features.tsv.gz").write_bytes(gzip.compress(genes.encode()))
    (folder / "barcodes.tsv.gz").write_bytes(gzip.compress(b"a\nb\nc\nd\ne\n"))
    code = subprocess.run(
        [sys.executable, "-m", "vbsnmf.cli", "fit", str(folder), "-o", str(tmp_path / "out"), *FIT],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=300,
    )
    assert code.returncode == 0, (code.returncode, code.stderr[-300:])
    result = read(tmp_path / "out" / "result.h5ad")
    np.testing.assert_array_equal(result.X.toarray()[:, 0], [2, 3, 4, 5, 6])


def _small_mtx(folder: Path) -> Path:
    path = folder / "counts.mtx"
    path.write_text(_BANNER.format(fmt="coordinate", field="integer") + "3 2 1\n1 1 4\n")
    return path


def test_mtx_to_h5ad_into_a_missing_folder_raises_what_write_result_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist: '.*no_such_dir'"):
        mtx_to_h5ad(_small_mtx(tmp_path), tmp_path / "no_such_dir" / "counts.h5ad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts.mtx"]


def test_mtx_to_h5ad_onto_a_folder_is_refused_before_the_names_are_read(tmp_path):
    (tmp_path / "held").mkdir()
    names = tmp_path / "names.txt"
    names.write_text("only one name, for 3 rows\n")  # read first, its error was the one seen
    with pytest.raises(IsADirectoryError, match="held'"):
        mtx_to_h5ad(_small_mtx(tmp_path), tmp_path / "held", row_names=names)
    assert list((tmp_path / "held").iterdir()) == []


_TEXT = (_BANNER.format(fmt="coordinate", field="integer") + "3 2 1\n1 1 4\n").encode()
_NOT_TEXT = {
    "empty": (b"", "is empty"),
    "bzip2": (bz2.compress(_TEXT), "bzip2-compressed: decompress it first"),
    "xz": (lzma.compress(_TEXT), "xz-compressed: decompress it first"),
    "zstd": (b"\x28\xb5\x2f\xfd" + bytes(20), "zstd-compressed"),
    "zip": (b"PK\x03\x04" + bytes(20), "a zip archive"),
    "gzip twice": (gzip.compress(gzip.compress(_TEXT)), "gzip-compressed twice"),
    "utf-16": (_TEXT.decode().replace("\n", "\r\n").encode("utf-16"), "UTF-16 text"),
    "hdf5": (b"\x89HDF\r\n\x1a\n" + bytes(20), "an HDF5 file .an .h5ad or a Cell Ranger"),
}


@pytest.mark.parametrize(
    ("name", "gzipped"),
    [(name, False) for name in _NOT_TEXT]
    + [(name, True) for name in _NOT_TEXT if name != "gzip twice"],  # inside gzip too
)
def test_a_file_that_is_not_matrix_market_text_says_what_it_is(tmp_path, name, gzipped):
    data, expected = _NOT_TEXT[name]
    path = tmp_path / ("counts.mtx.gz" if gzipped else "counts.mtx")
    path.write_bytes(gzip.compress(data) if gzipped else data)
    with pytest.raises(ReadError, match=expected) as caught:
        read_mtx(path, genes_as_rows=True)
    assert caught.value.path == path
    with pytest.raises(ReadError, match=expected):
        mtx_to_h5ad(path, tmp_path / "counts.h5ad")
    assert not (tmp_path / "counts.h5ad").exists()


def test_a_well_formed_file_still_reads_and_a_missing_banner_is_still_named(tmp_path):
    """The controls: Matrix Market text reads; text without the banner keeps its message."""
    path = tmp_path / "counts.mtx"
    path.write_bytes(_TEXT)
    assert read_mtx(path, genes_as_rows=False).X.toarray().tolist() == [[4, 0], [0, 0], [0, 0]]
    path.write_text("3 2 1\n1 1 4\n")
    with pytest.raises(ReadError, match="no '%%MatrixMarket' banner line"):
        read_mtx(path, genes_as_rows=False)


def test_an_empty_10x_matrix_on_the_command_line_is_one_line(tmp_path, capfd):
    folder = tmp_path / "tenx"
    folder.mkdir()
    (folder / "matrix.mtx.gz").write_bytes(gzip.compress(b""))
    (folder / "features.tsv.gz").write_bytes(gzip.compress(b"G0\tg0\tGene Expression\n"))
    (folder / "barcodes.tsv.gz").write_bytes(gzip.compress(b"a\n"))
    code, _, err, _ = _main(["fit", folder, "-o", tmp_path / "out", *FIT], capfd, tmp_path)
    assert code == 2
    assert (
        err.strip()
        == f"vbsnmf: error: {folder / 'matrix.mtx.gz'}: is empty: not a Matrix Market file"
    )
    assert not (tmp_path / "out").exists()


def _cell_ranger_h5(path: Path, n_cells: int) -> Path:
    """A Cell Ranger 3 ``.h5`` of 3 genes and ``n_cells`` cells, one count each."""
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix")
        group["data"] = np.ones(n_cells, dtype=np.int32)
        group["indices"] = np.zeros(n_cells, dtype=np.int64)
        group["indptr"] = np.arange(n_cells + 1, dtype=np.int64)
        group["shape"] = np.array([3, n_cells], dtype=np.int32)
        group["barcodes"] = np.array([f"c{i}".encode() for i in range(n_cells)], dtype="S8")
        features = group.create_group("features")
        features["id"] = np.array([b"G0", b"G1", b"G2"])
        features["name"] = np.array([b"g0", b"g1", b"g2"])
        features["feature_type"] = np.array([b"Gene Expression"] * 3)
    return path


def test_a_cell_ranger_h5_of_no_cells_is_refused_as_the_other_readers_refuse(tmp_path):
    path = _cell_ranger_h5(tmp_path / "filtered_feature_bc_matrix.h5", 0)
    with pytest.raises(ReadError, match=r"holds an empty matrix of shape \(0, 3\)") as caught:
        read(path)
    assert caught.value.path == path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = read(_cell_ranger_h5(tmp_path / "two.h5", 2))  # the control
    np.testing.assert_array_equal(adata.X.toarray(), [[1, 0, 0], [1, 0, 0]])


_DENSE = np.arange(24, dtype=float).reshape(6, 4) % 5  # 6 cells x 4 genes


@pytest.mark.parametrize("as_10x", [False, True], ids=["mtx", "10x"])
def test_svi_on_a_dense_matrix_market_file_fits_it_in_memory(tmp_path, capfd, as_10x):
    """--solver svi streams a Matrix Market file through its conversion, which takes the
    coordinate format only: a dense (array format) file, as scipy.io.mmwrite writes a
    numpy array, was refused ("converts coordinate files, not the array format") where
    an .h5ad whose X does not stream is read into memory and fitted."""
    from scipy.io import mmwrite

    if as_10x:
        source = tmp_path / "tenx"
        source.mkdir()
        mmwrite(source / "matrix.mtx", _DENSE.T)  # genes as rows
        (source / "genes.tsv").write_text("".join(f"G{g}\tg{g}\n" for g in range(4)))
        (source / "barcodes.tsv").write_text("".join(f"c{c}\n" for c in range(6)))
        orientation = []
    else:
        source = tmp_path / "dense.mtx"
        mmwrite(source, _DENSE)
        orientation = ["--cells-as-rows"]
    svi = ["--solver", "svi", "--batch-size", "3", "--epochs", "1"]
    argv = ["fit", source, *orientation, *FIT, *svi, "-o", tmp_path / "out"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 0, err
    np.testing.assert_array_equal(read(tmp_path / "out" / "result.h5ad").X.toarray(), _DENSE)
    assert not (tmp_path / "out" / "counts.h5ad").exists()
    # asked to convert it, the refusal says what to do
    argv = [*argv[:-1], tmp_path / "out2", "--convert-to", tmp_path / "dense.h5ad"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 2
    # the command's advice, not Python's (twenty-sixth pass)
    assert "(the array format), which --solver svi reads into memory: drop --convert-to" in err
    assert not (tmp_path / "dense.h5ad").exists() and not (tmp_path / "out2").exists()


@pytest.mark.parametrize("name", ["bzip2", "gzip twice", "utf-16", "hdf5"])
def test_a_name_file_that_is_not_text_says_what_it_is(tmp_path, name):
    """The name files too: a barcodes file compressed twice was "not UTF-8 text (byte 0x8b
    on line 1)"."""
    folder = tmp_path / "tenx"
    folder.mkdir()
    matrix = _BANNER.format(fmt="coordinate", field="integer") + "1 1 1\n1 1 4\n"
    (folder / "matrix.mtx.gz").write_bytes(gzip.compress(matrix.encode()))
    (folder / "features.tsv.gz").write_bytes(gzip.compress(b"G0\tg0\tGene Expression\n"))
    data, expected = _NOT_TEXT[name]
    if name != "hdf5":  # the format of the file, holding a barcode
        text = b"AAACCTG-1\n"
        data = {
            "bzip2": bz2.compress(text),
            "gzip twice": gzip.compress(text),
            "utf-16": text.decode().encode("utf-16"),
        }[name]
    (folder / "barcodes.tsv.gz").write_bytes(gzip.compress(data))
    with pytest.raises(ReadError, match=f"not a text name file: it is {expected}") as caught:
        read(folder)
    assert caught.value.path == folder / "barcodes.tsv.gz"


def test_names_starting_like_a_magic_number_are_still_names(tmp_path):
    """The control: a barcode starting "BZh9" is text, read as it is."""
    names = tmp_path / "rows.txt"
    names.write_text("BZh91\nPK\n")
    path = tmp_path / "counts.mtx"
    path.write_text(_BANNER.format(fmt="coordinate", field="integer") + "2 1 1\n1 1 4\n")
    assert list(read_mtx(path, genes_as_rows=False, row_names=names).obs_names) == ["BZh91", "PK"]
