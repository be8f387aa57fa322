"""The readers on the variants of 10x files users have, against scanpy's readers
(thirty-fourth hostile pass, io).

- D1: a Cell Ranger 2 ``.h5`` of more than one genome (a run on mixed species, one matrix
  per genome) was refused with scanpy's words passed on: "you must specify the genome if
  more than one is present", which neither `vbsnmf.io.read` nor the command line can.
- D2: a feature of a Cell Ranger ``.h5`` whose ``feature_type`` is empty was dropped with
  its counts (as not Gene Expression), silently, where `read_10x` refuses the same line of
  a features file ("line N has no feature type").
- D3: a Matrix Market file whose size line declares more or fewer entries than its lines
  hold was refused by `read_mtx` and `read_10x` in scipy's words, "Line 13: Too many lines
  in file (file too long)" or "Truncated file. Expected another 1 lines.", naming neither
  count; the conversion said "entry lines hold 33 numbers where the size line implies 36".
- D4: a Cell Ranger ``.h5`` whose barcodes or feature arrays hold more or fewer names than
  its ``shape`` declares was refused in anndata's words, "Observations annot. `var` must
  have as many rows as `X` has columns (6), but has 5 rows" (of the genes), naming no array.
- D5: a ``.loom`` file (velocyto's output) was "unrecognised input: expected a 10x folder,
  ...", and one named ``.h5`` or ``.h5ad`` "an HDF5 file, but not ...": neither said what
  it is nor how to read it.

Guards (pass on both): every read compared with scanpy's reader of the same files
(`scanpy.read_10x_mtx`, `scanpy.read_10x_h5`, `scanpy.read` of an ``.mtx``): same shape,
orientation, names and values, and the same var columns: 10x folders of version 2 (a
two-column ``genes.tsv``) and 3 (``features.tsv.gz``), both in one folder, barcodes with
suffixes, Antibody Capture and ATAC Peaks among the features; Cell Ranger ``.h5`` files of
version 2 and 3, of two genomes in one version 3 matrix, with other feature types; Matrix
Market files of integer, real and pattern fields with comments, CRLF line endings and
trailing white space, read and converted alike.
"""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from test_hostile import FIT, _main

from vbsnmf.io import ReadError, mtx_to_h5ad, read, read_10x, read_10x_h5, read_mtx

# 6 genes x 4 cells, entries in every column and a gene without counts in one cell
COUNTS = np.array(
    [[3, 0, 1, 2], [1, 1, 0, 0], [0, 2, 4, 1], [5, 0, 0, 3], [0, 1, 1, 0], [2, 0, 3, 1]]
)
GENES = [(f"ENSG{i:05d}", f"G{i}") for i in range(6)]
BARCODES = [f"AAACCTGA{i:04d}-1" for i in range(4)]
TYPES = ["Gene Expression"] * 4 + ["Antibody Capture"] * 2


def _mtx(matrix, field="integer", eol="\n", trailing="", comments=()):
    """Matrix Market text of ``matrix`` (genes x cells), entries sorted by cell."""
    cells, genes = np.nonzero(matrix.T)
    lines = [f"%%MatrixMarket matrix coordinate {field} general"]
    lines += [f"%{comment}" for comment in comments]
    lines.append(f"{matrix.shape[0]} {matrix.shape[1]} {len(cells)}")
    for gene, cell in zip(genes, cells):
        value = {"pattern": "", "real": f" {float(matrix[gene, cell])}"}.get(
            field, f" {matrix[gene, cell]}"
        )
        lines.append(f"{gene + 1} {cell + 1}{value}{trailing}")
    return eol.join(lines) + eol


def _write(path: Path, text: str, gz: bool) -> None:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)


def _folder(folder: Path, version: int, gz: bool | None = None, types=None, counts=COUNTS):
    """A 10x folder: version 2 (matrix.mtx, genes.tsv, barcodes.tsv) or 3 (gzip)."""
    folder.mkdir(parents=True, exist_ok=True)
    gz = version == 3 if gz is None else gz
    suffix = ".gz" if gz else ""
    _write(folder / f"matrix.mtx{suffix}", _mtx(counts), gz)
    if version == 2:
        _write(folder / f"genes.tsv{suffix}", "".join(f"{i}\t{s}\n" for i, s in GENES), gz)
    else:
        types = types or ["Gene Expression"] * len(GENES)
        rows = "".join(f"{i}\t{s}\t{t}\n" for (i, s), t in zip(GENES, types))
        _write(folder / f"features.tsv{suffix}", rows, gz)
    _write(folder / f"barcodes.tsv{suffix}", "".join(f"{b}\n" for b in BARCODES), gz)
    return folder


def _h5_v3(path: Path, types=None, genomes=None, feature_types=None, counts=COUNTS):
    """A Cell Ranger 3 ``.h5`` of ``counts`` (genes x cells)."""
    matrix = sp.csc_matrix(counts)
    types = feature_types or [t.encode() for t in (types or ["Gene Expression"] * len(GENES))]
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix")
        group["data"] = matrix.data.astype(np.int32)
        group["indices"] = matrix.indices.astype(np.int64)
        group["indptr"] = matrix.indptr.astype(np.int64)
        group["shape"] = np.array(counts.shape, dtype=np.int32)
        group["barcodes"] = np.array([b.encode() for b in BARCODES])
        features = group.create_group("features")
        features["id"] = np.array([i.encode() for i, _ in GENES])
        features["name"] = np.array([s.encode() for _, s in GENES])
        features["feature_type"] = np.array(types)
        features["genome"] = np.array([g.encode() for g in (genomes or ["GRCh38"] * 6)])
        features["_all_tag_keys"] = np.array([b"genome"])
    return path


def _h5_v2(path: Path, genomes=("hg19",), counts=COUNTS):
    """A Cell Ranger 2 ``.h5``: a group per genome, each of all cells."""
    matrix = sp.csc_matrix(counts)
    with h5py.File(path, "w") as handle:
        for genome in genomes:
            group = handle.create_group(genome)
            group["data"] = matrix.data.astype(np.int32)
            group["indices"] = matrix.indices.astype(np.int64)
            group["indptr"] = matrix.indptr.astype(np.int64)
            group["shape"] = np.array(counts.shape, dtype=np.int32)
            group["barcodes"] = np.array([b.encode() for b in BARCODES])
            group["genes"] = np.array([i.encode() for i, _ in GENES])
            group["gene_names"] = np.array([s.encode() for _, s in GENES])
    return path


def _same_as_scanpy(ours, theirs) -> None:
    """Same shape, orientation, names, values and var columns."""
    assert ours.shape == theirs.shape
    assert list(ours.obs_names) == list(theirs.obs_names)
    assert list(ours.var_names) == list(theirs.var_names)
    assert np.array_equal(ours.X.toarray(), theirs.X.toarray())
    for column in theirs.var.columns:
        assert list(map(str, ours.var[column])) == list(map(str, theirs.var[column])), column


def _scanpy(reader, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reader(*args, **kwargs)


# -- D1: a Cell Ranger 2 .h5 of two genomes -----------------------------------------------
def test_two_genome_h5_names_its_genomes_and_how_to_read_one(tmp_path):
    path = _h5_v2(tmp_path / "barnyard.h5", genomes=("hg19", "mm10"))
    for reader in (read, read_10x_h5):
        with pytest.raises(ReadError, match=r"barnyard\.h5: holds more than one genome") as caught:
            reader(path)
        message = str(caught.value)
        assert "must specify the genome" not in message
        assert "(hg19, mm10)" in message
        assert "genome='hg19'" in message
    # the advice works: scanpy writes one genome as an .h5ad, which reads as its matrix
    one = _scanpy(sc.read_10x_h5, path, genome="hg19")
    one.write_h5ad(tmp_path / "hg19.h5ad")
    assert np.array_equal(read(tmp_path / "hg19.h5ad").X.toarray(), COUNTS.T)


def test_two_genome_h5_on_the_command_line(tmp_path, capfd):
    path = _h5_v2(tmp_path / "barnyard.h5", genomes=("hg19", "mm10"))
    code, out, err, _ = _main(["fit", path, *FIT, "-o", tmp_path / "out"], capfd, tmp_path)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert "holds more than one genome (hg19, mm10)" in err
    assert "specify the genome" not in err
    assert not (tmp_path / "out").exists()


def test_one_genome_v2_h5_still_reads_as_scanpy_does(tmp_path):
    """Guard: a Cell Ranger 2 ``.h5`` of one genome is read, as scanpy reads it."""
    path = _h5_v2(tmp_path / "one.h5")
    _same_as_scanpy(read(path), _scanpy(sc.read_10x_h5, path))


# -- D2: an empty feature type in a Cell Ranger .h5 ---------------------------------------
def test_h5_feature_without_type_refused_not_dropped(tmp_path):
    types = [b"Gene Expression"] * 6
    types[1] = b""
    path = _h5_v3(tmp_path / "m.h5", feature_types=types)
    with pytest.raises(ReadError, match=r"m\.h5: feature ENSG00001 \(G1\) has no feature type"):
        read(path)


def test_h5_features_without_type_counted(tmp_path):
    types = [b"Gene Expression", b"", b"Gene Expression", b"", b"", b"Gene Expression"]
    path = _h5_v3(tmp_path / "m.h5", feature_types=types)
    with pytest.raises(ReadError, match=r"feature_type\[1\] is empty, as for 3 features"):
        read_10x_h5(path)


def test_folder_feature_without_type_refused_as_before(tmp_path):
    """Guard: the features file's empty type, refused in a folder as it is in an .h5."""
    folder = _folder(tmp_path / "f", 3, types=["Gene Expression", ""] + ["Gene Expression"] * 4)
    with pytest.raises(ReadError, match="line 2 has no feature type"):
        read_10x(folder)


# -- D4: names that do not fit a Cell Ranger .h5's shape ---------------------------------
def _cut(path: Path, name: str, keep: int) -> None:
    with h5py.File(path, "r+") as handle:
        values = handle[name][:keep]
        del handle[name]
        handle[name] = values


@pytest.mark.parametrize(
    ("array", "keep", "message"),
    [
        (
            "matrix/barcodes",
            3,
            "/matrix/barcodes holds 3 values but /matrix/shape declares 4 cells",
        ),
        ("matrix/features/id", 5, "/matrix/features/id holds 5 values but .* declares 6 features"),
        ("matrix/features/genome", 1, "/matrix/features/genome holds 1 value but .* declares 6"),
    ],
)
def test_h5_names_that_do_not_fit_its_shape_named(tmp_path, array, keep, message):
    path = _h5_v3(tmp_path / "m.h5")
    _cut(path, array, keep)
    with pytest.raises(ReadError, match=r"m\.h5: " + message) as caught:
        read(path)
    assert "Observations annot" not in str(caught.value)


def test_v2_h5_gene_names_that_do_not_fit_named(tmp_path):
    path = _h5_v2(tmp_path / "m.h5")
    _cut(path, "hg19/gene_names", 5)
    with pytest.raises(ReadError, match="/hg19/gene_names holds 5 values but /hg19/shape"):
        read_10x_h5(path)


# -- D5: a .loom file ---------------------------------------------------------------------
def _loom(path: Path) -> Path:
    with h5py.File(path, "w") as handle:
        handle["matrix"] = COUNTS.astype(float)
        handle.create_group("row_attrs")["Gene"] = np.array([s.encode() for _, s in GENES])
        handle.create_group("col_attrs")["CellID"] = np.array([b.encode() for b in BARCODES])
        handle.create_group("layers")
    return path


@pytest.mark.parametrize("name", ["velocyto.loom", "counts.h5", "counts.h5ad"])
def test_loom_file_named_with_how_to_read_it(tmp_path, name):
    path = _loom(tmp_path / name)
    with pytest.raises(ReadError, match=r"a \.loom file .*anndata\.io\.read_loom\(PATH\)"):
        read(path)


def test_loom_file_on_the_command_line(tmp_path, capfd):
    path = _loom(tmp_path / "velocyto.loom")
    code, out, err, _ = _main(["fit", path, *FIT, "-o", tmp_path / "out"], capfd, tmp_path)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert "a .loom file" in err


# -- D3: a size line that does not fit the entries ----------------------------------------
@pytest.mark.parametrize(("declared", "held"), [(14, 15), (16, 15), (9, 15)])
@pytest.mark.parametrize("gz", [False, True])
def test_size_line_that_lies_about_entries_named(tmp_path, declared, held, gz):
    text = _mtx(COUNTS).replace("6 4 15\n", f"6 4 {declared}\n")
    path = tmp_path / ("m.mtx.gz" if gz else "m.mtx")
    _write(path, text, gz)
    expected = f"its size line declares {declared} entries but the file holds {held}"
    expected += ".*: truncated" if held < declared else ".*: lines were added"
    with pytest.raises(ReadError, match=expected):
        read_mtx(path, genes_as_rows=True)
    with pytest.raises(ReadError, match=expected):
        mtx_to_h5ad(path, tmp_path / "m.h5ad", genes_as_rows=True)
    assert not (tmp_path / "m.h5ad").exists()


def test_size_line_that_lies_in_a_10x_folder(tmp_path):
    folder = _folder(tmp_path / "f", 3)
    text = _mtx(COUNTS).replace("6 4 15\n", "6 4 14\n")
    _write(folder / "matrix.mtx.gz", text, True)
    with pytest.raises(ReadError, match="declares 14 entries but the file holds 15"):
        read(folder)


def test_array_file_of_too_few_values_named(tmp_path):
    path = tmp_path / "a.mtx"
    path.write_text("%%MatrixMarket matrix array integer general\n2 2\n1\n2\n3\n")
    with pytest.raises(ReadError, match="declares 4 values but the file holds 3"):
        read_mtx(path, genes_as_rows=True)


def test_index_out_of_range_still_named_by_its_line(tmp_path):
    """Guard: an index outside the size line's shape keeps its own message."""
    path = tmp_path / "m.mtx"
    path.write_text("%%MatrixMarket matrix coordinate integer general\n2 2 2\n1 1 1\n3 1 2\n")
    with pytest.raises(ReadError, match=r"line 4 \('3 1 2'\) holds a row index outside 1\.\.2"):
        read_mtx(path, genes_as_rows=True)


# -- guards: every read against scanpy's ---------------------------------------------------
@pytest.mark.parametrize(
    ("version", "gz", "types"),
    [(2, False, None), (3, True, None), (3, True, TYPES)],
    ids=["v2", "v3", "v3-antibody"],
)
def test_10x_folder_reads_as_scanpy_reads_it(tmp_path, version, gz, types):
    """Guard: 10x folders of version 2 and 3 read as `scanpy.read_10x_mtx` reads them."""
    folder = _folder(tmp_path / "f", version, gz=gz, types=types)
    ours, theirs = read(folder), _scanpy(sc.read_10x_mtx, folder)
    _same_as_scanpy(ours, theirs)
    assert ours.X.dtype == np.float32
    assert ours.obs_names[0].endswith("-1")


def test_folder_of_both_versions_reads_version_2_as_scanpy(tmp_path):
    """Guard: a folder holding version 2's and version 3's files reads version 2's, as
    scanpy does (its plain genes.tsv)."""
    folder = _folder(tmp_path / "f", 3)
    _folder(folder, 2, counts=COUNTS * 2)
    ours = read(folder)
    _same_as_scanpy(ours, _scanpy(sc.read_10x_mtx, folder))
    assert np.array_equal(ours.X.toarray(), 2 * COUNTS.T)


def test_arc_features_of_six_columns_keep_gene_expression(tmp_path):
    """Guard: Cell Ranger ARC's features (6 columns, Peaks among them) keep the genes."""
    folder = _folder(tmp_path / "arc", 3)
    types = ["Gene Expression", "Peaks"] * 3
    rows = "".join(
        f"{i}\t{s}\t{t}\tchr1\t{10 * n}\t{10 * n + 5}\n"
        for n, ((i, s), t) in enumerate(zip(GENES, types))
    )
    _write(folder / "features.tsv.gz", rows, True)
    ours = read(folder)
    _same_as_scanpy(ours, _scanpy(sc.read_10x_mtx, folder))
    assert list(ours.var_names) == ["G0", "G2", "G4"]


@pytest.mark.parametrize(
    ("types", "genomes"),
    [(None, None), (TYPES, None), (None, ["GRCh38"] * 3 + ["mm10"] * 3)],
    ids=["genes", "antibody", "two-genomes"],
)
def test_cell_ranger_3_h5_reads_as_scanpy_reads_it(tmp_path, types, genomes):
    """Guard: a version 3 ``.h5`` as `scanpy.read_10x_h5`, and as its 10x folder."""
    path = _h5_v3(tmp_path / "m.h5", types=types, genomes=genomes)
    ours = read(path)
    _same_as_scanpy(ours, _scanpy(sc.read_10x_h5, path))
    folder = read(_folder(tmp_path / "f", 3, types=types))
    assert np.array_equal(ours.X.toarray(), folder.X.toarray())
    assert list(ours.var_names) == list(folder.var_names)


@pytest.mark.parametrize(
    ("field", "eol", "trailing", "gz"),
    [
        ("integer", "\n", "", False),
        ("real", "\r\n", "", True),
        ("pattern", "\n", " \t", False),
        ("integer", "\r\n", "  ", True),
    ],
)
def test_mtx_variants_read_as_scanpy_and_convert_alike(tmp_path, field, eol, trailing, gz):
    """Guard: Matrix Market fields, comments, CRLF and trailing white space read as
    `scanpy.read` reads them (transposed: genes as rows) and convert to the same."""
    text = _mtx(COUNTS, field, eol, trailing, comments=["metadata_json: {}", " x"])
    path = tmp_path / ("m.mtx.gz" if gz else "m.mtx")
    _write(path, text, gz)
    ours = read(path, genes_as_rows=True)
    theirs = _scanpy(sc.read, path).X.toarray().T
    assert ours.shape == (4, 6)
    assert np.array_equal(ours.X.toarray(), theirs)
    converted = ad.read_h5ad(mtx_to_h5ad(path, tmp_path / "m.h5ad", genes_as_rows=True))
    assert np.array_equal(converted.X.toarray(), theirs)
