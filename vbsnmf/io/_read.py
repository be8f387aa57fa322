"""Readers for count matrices: a 10x folder, a Cell Ranger ``.h5``, ``.h5ad``, ``.zarr``,
``.mtx`` / ``.mtx.gz``.

The ecosystem's readers parse: scanpy's `read_10x_h5`, anndata's `read_h5ad` and
`read_zarr`, scipy's Matrix Market parser (fast_matrix_market; also a 10x folder's
matrix, whose name files are read as plain text: scanpy's `read_10x_mtx` read a ``"`` in a
gene symbol as a quote and refused the folder). vbsnmf adds what they leave to the caller:

- counts are stored exactly: float32 when every count is exact in it (counts up to 2**24
  are), else float64. scanpy reads a Cell Ranger ``.h5``'s counts into float32, which
  rounds 16,777,217 to 16,777,216; such files are read again in float64.
- Matrix Market text is checked as it is parsed (`CheckedText`): scipy's parser crashes
  the interpreter on a NUL byte and reads a valid prefix of a malformed number (``1.5``
  in an integer field as 1, ``7e`` as 7, ``3.0.0`` as 3), so every entry line must hold
  exactly its fields, each a well-formed number. Repeated entries, which the readers
  sum as scipy does, may not include a negative count (a sum would hide it).
- every problem with a file (missing, unreadable, truncated, corrupt, names that do not
  fit the matrix) raises `ReadError` naming the file; nothing else escapes a reader.

Every reader returns an AnnData with cells as rows (``obs``) and genes as columns
(``var``), X a CSR matrix (an ``.h5ad`` or ``.zarr`` keeps X as stored), unique
``obs_names`` and ``var_names``.
"""

from __future__ import annotations

import codecs
import errno
import gzip
import io
import itertools
import os
import re
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._quoting import quoted_path
from .._utils import counted
from .._validation import (
    check_flag,
    check_index_arrays,
    check_sparse_structure,
    exact_float_dtype,
    repeated_negative,
)
from ._errors import ReadError, check_exists, describe_error
from ._paths import (
    CELL_FACTORS_FILE,
    COUNTS_FILE,
    GENE_LOADINGS_FILE,
    OUTPUT_NAMES,
    PARAMS_FILE,
    RESULT_FILE,
)
from ._stored import check_encoded

_GZIP_MAGIC = b"\x1f\x8b"
# Deflate never expands text by more than this factor (RFC 1951's limit is about 1032).
_MAX_DEFLATE_RATIO = 1100
# Shortest possible lines of a Matrix Market body: "1 1\n" (pattern) and "1\n" (array).
_MIN_COORDINATE_LINE = 4
_MIN_ARRAY_LINE = 2
_MAX_DIMENSION = 2**31 - 1  # scipy.sparse and anndata index with int32 at most this far
# Peak bytes per row or column of a read matrix besides its entries (CSR indptr, default
# name, pandas index): 262 measured reading a 2,000,000 x 3 file with one entry.
_INDEX_BYTES = 256
# float32 holds every integer below this exactly.
_FLOAT32_EXACT = 2**24

# The two layouts Cell Ranger writes, which scanpy.read_10x_mtx reads: (matrix, genes,
# barcodes). Version 2 is told by its plain genes.tsv, as scanpy tells it; version 3's
# names uncompressed are STARsolo's (Solo.out/Gene/filtered/; scanpy's compressed=False).
_TENX_V3 = ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz")
_TENX_V2 = ("matrix.mtx", "genes.tsv", "barcodes.tsv")
_STARSOLO = ("matrix.mtx", "features.tsv", "barcodes.tsv")
_TENX_ANY = (
    "matrix.mtx.gz",
    "matrix.mtx",
    "features.tsv.gz",
    "features.tsv",
    "genes.tsv.gz",
    "genes.tsv",
    "barcodes.tsv.gz",
    "barcodes.tsv",
)


def read(
    path: str | os.PathLike,
    *,
    genes_as_rows: bool | None = None,
    row_names: str | os.PathLike | None = None,
    col_names: str | os.PathLike | None = None,
):
    """Read a count matrix as AnnData (cells x genes), choosing the reader by the path.

    Parameters
    ----------
    path
        A 10x folder as Cell Ranger writes it (`read_10x`), a Cell Ranger ``.h5``
        (`read_10x_h5`), an ``.h5ad`` file (`read_h5ad`), a ``.zarr`` store
        (`read_zarr`), or an ``.mtx`` / ``.mtx.gz`` file (`read_mtx`).
    genes_as_rows
        Orientation of a Matrix Market file: True when its rows are genes (the 10x
        convention), False when its rows are cells. Required for ``.mtx`` files; a 10x
        folder holds genes as rows by definition.
    row_names, col_names
        Optional text files (plain or gzip) with one name per line (the first
        tab-separated field is used) for the rows and columns of an ``.mtx`` file.

    Returns
    -------
    AnnData
        ``X``: CSR counts, cells x genes, float32 where that is exact, else float64
        (an ``.h5ad`` or ``.zarr`` keeps its stored X).

    Raises
    ------
    ReadError
        The path is missing or unreadable, or a file in it is truncated or malformed.
    ValueError
        The options do not fit the input (orientation or name files for an ``.h5ad``).

    Examples
    --------
    >>> import vbsnmf
    >>> folder = vbsnmf.datasets.data_dir("pbmc_tiny_v3")  # a 10x folder
    >>> adata = vbsnmf.io.read(folder)
    >>> adata.shape, adata.X.format
    ((1107, 507), 'csr')

    A Matrix Market file needs its orientation: ``vbsnmf.io.read("counts.mtx",
    genes_as_rows=True)``.
    """
    path = Path(path)
    kind = check_read_options(path, genes_as_rows, row_names, col_names)
    if kind == "10x":
        return read_10x(path)
    if kind == "10x_h5":
        return read_10x_h5(path)
    if kind == "h5ad":
        return read_h5ad(path)
    if kind == "zarr":
        return read_zarr(path)
    return read_mtx(path, genes_as_rows=genes_as_rows, row_names=row_names, col_names=col_names)


def check_read_options(path: Path, genes_as_rows, row_names, col_names) -> str:
    """The kind of input ``path`` is (`input_kind`), after checking that the options of
    `read` fit it (`ReadError` for a missing path, ValueError for options)."""
    check_flag(genes_as_rows, "genes_as_rows", allow_none=True)
    check_exists(path)
    kind = input_kind(path)
    if kind == "10x" and genes_as_rows is False:
        raise ValueError(
            "a 10x folder holds genes as rows; drop genes_as_rows=False (--cells-as-rows)"
        )
    oriented = genes_as_rows is not None and kind != "10x"
    if kind != "mtx" and (oriented or row_names is not None or col_names is not None):
        raise ValueError(
            f"{quoted_path(path)}: orientation and row/column name files apply to .mtx input only; "
            f"a {_KIND_NAMES[kind]} stores cells and genes with their names"
        )
    if kind == "mtx" and genes_as_rows is None:
        raise ValueError(
            f"{quoted_path(path)}: say which axis of the matrix holds the "
            "genes: genes_as_rows=True (--genes-as-rows, the 10x "
            "convention) or False (--cells-as-rows)" + _folder_advice(path)
        )
    return kind


def _folder_advice(matrix: Path) -> str:
    """Advice to read the 10x folder whose matrix file ``matrix`` is, instead of the file:
    read alone, as the message asking for its orientation led to, it has no names (genes
    "0", "1", ...) and keeps the antibody counts of its features file."""
    folder = matrix.parent
    try:
        if tenx_files(folder)[0].name == matrix.name:
            return (
                f"; or read the 10x folder {quoted_path(folder)} that holds it, which names its "
                "genes and cells (its features and barcodes files)"
            )
    except (ReadError, OSError):
        pass
    # a GEO sample's GSM1_matrix.mtx.gz beside GSM1_features.tsv.gz, GSM1_barcodes.tsv.gz
    prefix, found, _ = matrix.name.rpartition("matrix.mtx")
    if not found or not prefix:
        return ""
    names = []
    for stems in (("features.tsv", "genes.tsv"), ("barcodes.tsv",)):
        present = [
            folder / f"{prefix}{stem}{gz}"
            for stem in stems
            for gz in (".gz", "")
            if (folder / f"{prefix}{stem}{gz}").is_file()
        ]
        if not present:
            return ""
        names.append(present[0])
    return (
        f"; its 10x names are beside it: --genes-as-rows --row-names {names[0]} "
        f"--col-names {names[1]} (genes_as_rows=True, row_names=..., col_names=...)"
    )


_KIND_NAMES = {
    "10x": "10x folder",
    "10x_h5": "Cell Ranger .h5 file",
    "h5ad": ".h5ad file",
    "zarr": ".zarr store",
    "mtx": ".mtx file",
}


def input_kind(path: str | os.PathLike) -> str:
    """``"10x"``, ``"10x_h5"``, ``"h5ad"``, ``"zarr"`` or ``"mtx"``: which reader reads
    ``path`` (an existing path), told by its name; `ReadError` for anything else."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir() and not os.access(path, os.X_OK):
        # Nothing in a folder without search permission can be opened or even looked at:
        # the first look (for .zgroup) failed naming a file that is not there.
        raise ReadError(path, "cannot read this folder (permission denied)")
    if name.endswith(".zarr") or (path / ".zgroup").is_file() or (path / "zarr.json").is_file():
        return "zarr"
    if path.is_dir():
        return "10x"
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".h5"):
        return _hdf5_kind(path)
    if name.endswith((".mtx", ".mtx.gz")):
        return "mtx"
    if name.endswith((".h5ad.gz", ".h5.gz")):  # as GEO serves them
        raise _gzipped_hdf5_error(path)
    if name.endswith(".loom"):
        raise ReadError(path, _LOOM)
    if name.endswith(".zip") and _is_zip(path):
        raise _zip_archive_error(path)
    raise ReadError(
        path,
        "unrecognised input: expected a 10x folder, a Cell Ranger .h5, an .h5ad file, a "
        ".zarr store, or an .mtx / .mtx.gz file",
    )


# velocyto writes its counts as .loom: "unrecognised input" said nothing of how to read one.
_LOOM = (
    "a .loom file (loompy's format, as velocyto writes it), which vbsnmf does not read: "
    "write it as an .h5ad with anndata (which needs loompy: "
    "anndata.io.read_loom(PATH).write_h5ad('counts.h5ad'); its X is the main matrix, "
    "cells x genes, its layers the others) and read that"
)
# anndata writes a zipped store (adata.write_zarr(zarr.storage.ZipStore(...))), which this
# reader does not check chunk by chunk as it checks a folder (`check_zarr_chunks`): an
# .zarr.zip read as "unrecognised input" and one named .zarr as "not a .zarr store".
_ZARR_ROOT_KEYS = frozenset({"zarr.json", ".zgroup"})
# A zip archive's first entry; a test of the start, as for gzip: zipfile.is_zipfile looks
# for its directory's record anywhere in the last 64 KiB, which compressed data may hold.
_ZIP_MAGIC = b"PK\x03\x04"


def _is_zip(path: Path) -> bool:
    """Whether the file ``path`` starts as a zip archive does (False if it cannot be read)."""
    try:
        with open(path, "rb") as head:
            return head.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    except OSError:
        return False  # the reader names what is wrong with it


def _zip_archive_error(path: Path) -> ReadError:
    """The `ReadError` of the zip archive ``path``: a zipped .zarr store when it holds one
    at its root, to unzip or read with anndata, else any archive, to unpack first."""
    try:
        with zipfile.ZipFile(path) as archive:
            zarr_root = not _ZARR_ROOT_KEYS.isdisjoint(archive.namelist())
    except (zipfile.BadZipFile, OSError):  # a truncated download, say: unzip says what
        zarr_root = False
    if not zarr_root:
        return ReadError(path, "a zip archive, which vbsnmf does not read: unzip it first")
    folder = path.parent / path.name.removesuffix(".zip")
    if folder.suffix != ".zarr" or folder.exists():
        folder = path.parent / "unzipped.zarr"
    return ReadError(
        path,
        "a zipped .zarr store, which vbsnmf does not read: unzip it into a folder "
        f"(unzip {quoted_path(path)} -d {quoted_path(folder)}) and read that, or read it "
        f"into an AnnData with anndata.read_zarr(zarr.storage.ZipStore({os.fspath(path)!r}, "
        "mode='r'))",
    )


# The datasets and groups every .loom file holds at its root.
_LOOM_KEYS = frozenset({"matrix", "row_attrs", "col_attrs"})


def _unreadable_hdf5(path: Path, reason: str) -> ReadError:
    """The `ReadError` of an HDF5 file h5py could not open for ``reason``: a file held
    open for writing is named so, where "not a readable HDF5 file (BlockingIOError ...
    unable to lock file)" read as a damaged one."""
    if "unable to lock file" in reason:
        return ReadError(
            path,
            "is open for writing elsewhere (HDF5's file lock refused reading it: another "
            "process, or this one, holds it with h5py's mode 'r+' or 'w' or anndata's "
            "backed='r+'): close it there, or wait until its write ends",
        )
    return ReadError(path, f"not a readable HDF5 file ({reason})")


def _hdf5_kind(path: Path) -> str:
    """An ``.h5`` file: an AnnData written under another name, or Cell Ranger's."""
    import h5py

    check_file(path)
    _probe_hdf5(path)
    try:
        with h5py.File(path, "r") as handle:
            is_anndata = _is_anndata(handle)
    except Exception as error:  # h5py raises several types for files it cannot open
        raise _unreadable_hdf5(path, describe_error(error)) from None
    return "h5ad" if is_anndata else "10x_h5"


def _is_anndata(handle) -> bool:
    """Whether the open HDF5 file ``handle`` holds an AnnData, as anndata reads one: its
    encoding says so (a str, or bytes as writers of fixed-length strings store it), or it
    holds obs and var (files of anndata before 0.7 have no encoding). Read as Cell
    Ranger's, such a file named ``.h5`` was refused as "not a Cell Ranger .h5"."""
    return encoding_of(handle) == "anndata" or {"obs", "var"} <= set(handle.keys())


def encoding_of(element, default: str = "") -> str:
    """The ``encoding-type`` attribute of a stored AnnData element (``default`` without
    one), as a str: writers of fixed-length strings store it as bytes, which anndata
    reads as the same encoding and a comparison with a str took for another. A sparse
    matrix as anndata stored one before 0.7 (``h5sparse_format`` "csr" or "csc", which
    anndata still reads) is its encoding's ``"csr_matrix"`` or ``"csc_matrix"``."""
    encoding = element.attrs.get("encoding-type")
    if encoding is None:
        legacy = element.attrs.get("h5sparse_format")
        if legacy is None:
            return default
        encoding = f"{_as_str(legacy)}_matrix"
    return _as_str(encoding)


def _as_str(value) -> str:
    """An attribute's text as a str (bytes decoded)."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def read_10x(folder: str | os.PathLike):
    """Read a 10x Genomics feature-barcode folder as Cell Ranger writes it, cells x genes,
    as `scanpy.read_10x_mtx` reads it.

    Cell Ranger 3 and later: ``matrix.mtx.gz``, ``features.tsv.gz``, ``barcodes.tsv.gz``;
    Cell Ranger 2: ``matrix.mtx``, ``genes.tsv``, ``barcodes.tsv``; STARsolo:
    ``matrix.mtx``, ``features.tsv``, ``barcodes.tsv`` (either compressed or not, whatever
    the name says). ``var_names`` are gene symbols made unique,
    ``var['gene_ids']`` the ids (and ``var['feature_types']``); only ``Gene Expression``
    features are kept when there are others, as scanpy does; ``obs_names`` are the
    barcodes made unique. Counts are exact (see the module); names are the files' text as
    written (scanpy's parse reads a ``"`` as a quote, and "NA" or an empty field as NaN),
    as the streamed route (`mtx_to_h5ad`) reads them.

    Raises
    ------
    ReadError
        A file is missing, unreadable or malformed (a name file holding a NUL byte, a
        features line of fewer or more fields than the others or without its type), the
        name files' lengths disagree with the matrix, or the files are named in none of
        these layouts (then read the matrix with `read_mtx` and the name files).
    """
    import anndata as ad

    folder = Path(folder)
    if not folder.is_dir():
        raise ReadError(folder, "not a folder")
    matrix_path, features_path, barcodes_path = tenx_files(folder)
    counts = sp.csr_matrix(_read_mtx_matrix(matrix_path).T)  # checked, exact
    n_cells, n_genes = counts.shape
    var = feature_var(read_features(features_path, n_genes, "the matrix", "genes", n_cells))
    cells = read_names(barcodes_path, n_cells, "the matrix", "cells")
    obs = pd.DataFrame(index=pd.Index(cells, dtype=object))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # names not unique yet: `_finish`
        adata = ad.AnnData(X=counts, obs=obs, var=var)
    return _finish(_keep_gene_expression(adata))


def feature_var(table: pd.DataFrame) -> pd.DataFrame:
    """The var table of a 10x features (or genes) file read by `read_features`: id, symbol
    and type columns give symbols as names, ``gene_ids`` and ``feature_types``, as scanpy
    names them; a file of ids alone gives the ids as names. Names not yet unique."""
    if table.shape[1] < 2:
        return pd.DataFrame(index=pd.Index(table[0].to_numpy(dtype=object), dtype=object))
    var = pd.DataFrame(
        {"gene_ids": table[0].to_numpy(dtype=object)},
        index=pd.Index(table[1].to_numpy(dtype=object), dtype=object),
    )
    if table.shape[1] > 2:
        var["feature_types"] = table[2].to_numpy(dtype=object)
    return var


def tenx_files(folder: Path) -> tuple[Path, Path, Path]:
    """The matrix, genes and barcodes files of a 10x folder in one of Cell Ranger's
    layouts or STARsolo's (scanpy's test: a plain genes.tsv means version 2; a plain
    features.tsv without a compressed one, STARsolo)."""
    if (folder / "genes.tsv").is_file():
        layout = _TENX_V2
    elif (folder / "features.tsv").is_file() and not (folder / "features.tsv.gz").exists():
        layout = _STARSOLO
    else:
        layout = _TENX_V3
    paths = tuple(folder / name for name in layout)
    missing = [path.name for path in paths if not path.is_file()]
    if not missing:
        return paths
    for path in paths:
        # "holds ... but not barcodes.tsv.gz" would send the user looking for a file
        # that is there by name
        if path.is_symlink() and not path.exists():
            raise ReadError(
                folder,
                f"{quoted_path(path.name)} is a broken symbolic link (to "
                f"{quoted_path(os.readlink(path))})",
            )
        if path.exists() and not path.is_file():
            raise ReadError(folder, f"{quoted_path(path.name)} is not a file")
    present = [name for name in _TENX_ANY if (folder / name).is_file()]
    if not present:
        output = _output_folder_advice(folder)
        if output is not None:
            raise ReadError(folder, output)
        anndata_files = sorted(
            entry.name for entry in _listed_files(folder) if entry.name.lower().endswith(".h5ad")
        )
        prefixed = _prefixed_tenx_files(folder)
        if anndata_files and not prefixed:
            # a folder of .h5ad files (an OUTDIR of 'vbsnmf fit' is named above); a GEO
            # sample's prefixed files beside an .h5ad keep the advice below
            shown = ", ".join(anndata_files[:4]) + (", ..." if len(anndata_files) > 4 else "")
            raise ReadError(
                folder, f"not a 10x folder, but it holds .h5ad files: {shown}: name one of them"
            )
        if prefixed:
            shown = ", ".join(prefixed[:6]) + (", ..." if len(prefixed) > 6 else "")
            raise ReadError(
                folder,
                f"not a 10x folder as Cell Ranger names its files: it holds {shown}, whose "
                "names have a prefix (as GEO serves them): rename a sample's files to "
                f"{', '.join(_TENX_V3)} (or version 2's {', '.join(_TENX_V2)}) in a folder "
                "of their own, or read the matrix as a Matrix Market file with genes as "
                "rows and the name files (vbsnmf.io.read_mtx(MATRIX, genes_as_rows=True, "
                "row_names=FEATURES, col_names=BARCODES); vbsnmf fit MATRIX --genes-as-rows "
                "--row-names FEATURES --col-names BARCODES)",
            )
        inner = _inner_tenx_folders(folder)
        if inner:
            shown = ", ".join(inner[:4]) + (", ..." if len(inner) > 4 else "")
            raise ReadError(
                folder,
                f"not a 10x folder itself, but it holds 10x folders: {shown}: name one of "
                "them (Cell Ranger's filtered matrix holds the cells it called, its raw "
                "one every barcode)",
            )
        matrices = sorted(
            entry.name
            for entry in _listed_files(folder)
            if entry.name.lower().endswith(("_bc_matrix.h5", "_bc_matrices_h5.h5"))
        )
        if matrices:  # an outs folder whose matrix folders were not kept
            raise ReadError(
                folder,
                f"not a 10x folder, but it holds Cell Ranger .h5 matrices: "
                f"{', '.join(matrices[:4])}: name one of them",
            )
        expected = dict.fromkeys(_TENX_V3 + _TENX_V2 + _STARSOLO)
        raise ReadError(folder, f"not a 10x folder: none of {', '.join(expected)} found in it")
    raise ReadError(
        folder,
        f"holds {', '.join(present)} but not {', '.join(missing)}: Cell Ranger writes "
        f"{', '.join(_TENX_V3)} (version 3 and later) or {', '.join(_TENX_V2)} (version 2), "
        f"STARsolo {', '.join(_STARSOLO)}: the layouts scanpy.read_10x_mtx reads. Rename "
        "or (un)compress the files to one of them, or read the matrix as a Matrix Market "
        "file with genes as rows and the name files (vbsnmf.io.read_mtx; vbsnmf fit MATRIX "
        "--genes-as-rows --row-names GENES --col-names BARCODES)",
    )


def _inner_tenx_folders(folder: Path, depth: int = 2) -> list[str]:
    """The folders within ``depth`` levels under ``folder`` that hold a 10x layout's
    three files, as paths relative to it, sorted: Cell Ranger's ``outs`` (version 3:
    ``filtered_feature_bc_matrix``; version 2: ``filtered_gene_bc_matrices/GENOME``)
    given for its matrix folder was told "none of matrix.mtx.gz, ... found in it"."""
    found = []
    try:
        subfolders = sorted(entry for entry in folder.iterdir() if entry.is_dir())
    except OSError:  # a folder that cannot be listed: the plain message
        return []
    for subfolder in subfolders:
        names = {entry.name for entry in _listed_files(subfolder)}
        if any(set(layout) <= names for layout in (_TENX_V3, _TENX_V2, _STARSOLO)):
            found.append(subfolder.name)
        elif depth > 1:
            inner = _inner_tenx_folders(subfolder, depth - 1)
            found.extend(f"{subfolder.name}{os.sep}{name}" for name in inner)
    return found


def _listed_files(folder: Path) -> list[Path]:
    """The files of ``folder``, none when it cannot be listed."""
    try:
        return [entry for entry in folder.iterdir() if entry.is_file()]
    except OSError:
        return []


def _prefixed_tenx_files(folder: Path) -> list[str]:
    """The files of ``folder`` named as a 10x folder's files with a prefix
    (``GSM123_matrix.mtx.gz``, as GEO serves them), sorted; "none of matrix.mtx.gz, ...
    found" did not say that they were there under another name. vbsnmf's own
    ``top_genes.tsv`` is not one: an output folder holding it was told to rename it."""
    try:
        names = [entry.name for entry in folder.iterdir() if entry.is_file()]
    except OSError:  # a folder that cannot be listed: the plain message
        return []
    return sorted(
        name
        for name in names
        if name.endswith(_TENX_ANY) and name not in _TENX_ANY and name not in OUTPUT_NAMES
    )


def output_folder_files(folder: Path) -> list[str]:
    """The ``.h5ad`` files of ``folder`` that a ``vbsnmf fit`` OUTDIR holds
    (``result.h5ad``, and ``counts.h5ad`` under ``--solver svi``), when it is one: it holds
    ``params.json`` or the factor tables beside them. Empty otherwise, or when it cannot be
    listed."""
    try:
        names = {entry.name for entry in folder.iterdir() if entry.is_file()}
    except OSError:
        return []
    if not names & {PARAMS_FILE, CELL_FACTORS_FILE, GENE_LOADINGS_FILE}:
        return []
    return [name for name in (RESULT_FILE, COUNTS_FILE) if name in names]


def _output_folder_advice(folder: Path) -> str | None:
    """What to read in ``folder`` when it is an OUTDIR of ``vbsnmf fit``
    (`output_folder_files`), whose ``top_genes.tsv`` was taken for a 10x file with a GEO
    prefix ("rename a sample's files to matrix.mtx.gz, ..."); None when it is not one."""
    files = output_folder_files(folder)
    if not files:
        return None
    what = {RESULT_FILE: "the counts with that fit", COUNTS_FILE: "the counts converted"}
    named = " or ".join(f"{quoted_path(folder / name)} ({what[name]})" for name in files)
    return f"not a 10x folder but the output of a vbsnmf fit: give its {named} as the input"


def read_10x_h5(path: str | os.PathLike):
    """Read a Cell Ranger ``.h5`` feature-barcode matrix (version 2 or 3 and later),
    cells x genes, with `scanpy.read_10x_h5`.

    As `read_10x`: symbols as ``var_names`` (made unique), ``var['gene_ids']``, only
    ``Gene Expression`` features when there are others, exact counts.

    Raises
    ------
    ReadError
        The file is missing, not HDF5, not Cell Ranger's layout, corrupt, holds no cells
        or no features, barcodes or feature arrays of other lengths than its ``shape``
        declares, a feature without its type, or more than one genome (Cell Ranger 2: the
        message names them and how to read one).
    """
    import h5py
    import scanpy as sc

    path = Path(path)
    check_hdf5(path, "10x_h5")
    _check_10x_h5_layout(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate names: made unique below
            try:
                adata = sc.read_10x_h5(path, gex_only=False)
            except Exception as error:
                cause = error.__cause__ if error.__cause__ is not None else error
                if not isinstance(cause, UnicodeDecodeError):
                    raise
                # scanpy decodes the names as ASCII: a gene or barcode name in UTF-8
                # (the text a 10x folder's files hold, which read_10x reads) was refused
                adata = _read_10x_h5_utf8(path)
    except ReadError:  # names that are not UTF-8, named by `_read_10x_h5_utf8`
        raise
    except MemoryError:
        raise ReadError(path, "too large to load into memory") from None
    except Exception as error:  # scanpy and h5py raise several types
        cause = error.__cause__ if error.__cause__ is not None else error
        raise ReadError(
            path, f"not a readable Cell Ranger .h5 file ({describe_error(cause)})"
        ) from None
    counts = sp.csr_matrix(adata.X)
    if 0 in counts.shape:  # as the other readers refuse one (a run that called no cells)
        raise ReadError(path, f"holds an empty matrix of shape {counts.shape}")
    try:
        check_sparse_structure(counts, "matrix")
        if _reaches_float32_limit(counts.data):  # scanpy's int32 -> float32 rounded them
            with h5py.File(path, "r") as handle:
                stored = np.asarray(_10x_h5_matrix(handle)["data"][...], dtype=np.float64)
            values = stored.astype(exact_float_dtype(stored))
            counts = sp.csr_matrix((values, counts.indices, counts.indptr), shape=counts.shape)
    except (ValueError, TypeError) as error:
        raise ReadError(path, str(error)) from None
    adata.X = counts
    _check_feature_types(path, adata.var)
    return _finish(_keep_gene_expression(adata))


def _check_10x_h5_layout(path: Path) -> None:
    """The Cell Ranger ``.h5`` ``path``'s arrays checked in one opening of the file, before
    scanpy reads it (`_check_10x_h5_index_arrays`, `_check_one_genome`,
    `_check_10x_h5_name_lengths`): a `ReadError` naming what is wrong, or that h5py could
    not read it."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            _check_10x_h5_index_arrays(path, handle)
            _check_one_genome(path, handle)
            _check_10x_h5_name_lengths(path, handle)
    except ReadError:
        raise
    except Exception as error:  # h5py raises several types for a damaged file
        raise ReadError(
            path, f"not a readable Cell Ranger .h5 file ({describe_error(error)})"
        ) from None


def _check_one_genome(path: Path, handle) -> None:
    """`ReadError` for a Cell Ranger 2 ``.h5`` of more than one genome (a run on mixed
    species: one matrix per genome), naming them and how to read one. scanpy's
    refusal, passed on, told the user to "specify the genome", which neither
    `vbsnmf.io.read` nor the command line can."""
    import h5py

    if "matrix" in handle:  # version 3 and later: one matrix of all genomes' genes
        return
    genomes = [
        name
        for name, item in handle.items()
        if isinstance(item, h5py.Group) and _CELL_RANGER_ARRAYS <= set(item.keys())
    ]
    if len(genomes) > 1:
        first = genomes[0]
        raise ReadError(
            path,
            f"holds more than one genome ({', '.join(genomes)}), a matrix each, as Cell "
            f"Ranger 2 writes a run on mixed species; vbsnmf reads one matrix: read one "
            f"genome's 10x folder (filtered_gene_bc_matrices{os.sep}{first}), or write one "
            f"genome as an .h5ad (scanpy.read_10x_h5(PATH, genome='{first}')"
            f".write_h5ad('{first}.h5ad')) and read that",
        )


def _check_10x_h5_name_lengths(path: Path, handle) -> None:
    """`ReadError` unless the barcodes and each feature array of the Cell Ranger ``.h5``
    ``path`` (open as ``handle``) hold as many names as its ``shape`` declares cells and
    features. anndata's words for them, passed on, were "Observations annot. `var` must
    have as many rows as `X` has columns (6), but has 5 rows" (of the genes). A ``shape``
    that is not two numbers is left to the reader."""
    import h5py

    group = _10x_h5_matrix(handle)
    shape = group["shape"][()] if "shape" in group else None
    if shape is None or np.shape(shape) != (2,) or np.asarray(shape).dtype.kind not in "iu":
        return
    n_genes, n_cells = (int(n) for n in shape)
    if "features" in group:  # version 3 and later: every array is a var column
        features = group["features"]
        arrays = [
            item
            for name, item in features.items()
            if isinstance(item, h5py.Dataset) and name != "_all_tag_keys"
        ]
    else:  # version 2
        arrays = [group[name] for name in ("genes", "gene_names") if name in group]
    named = [(item, n_genes, "features") for item in arrays]
    if "barcodes" in group:
        named.insert(0, (group["barcodes"], n_cells, "cells"))
    for item, expected, what in named:
        length = item.shape[0] if item.ndim else 1
        if length != expected:
            raise ReadError(
                path,
                f"{item.name} holds {counted(length, 'value')} but "
                f"{group.name}/shape declares {expected} {what}: a damaged file",
            )


def _check_feature_types(path: Path, var: pd.DataFrame) -> None:
    """`ReadError` for a feature of the Cell Ranger ``.h5`` ``path`` whose stored type is
    empty (``var``: its features as scanpy reads them): it would be dropped with its
    counts as not ``Gene Expression`` (`_keep_gene_expression`), where `read_features`
    refuses the same line of a features file."""
    if "feature_types" not in var:
        return
    untyped = np.flatnonzero(var["feature_types"].to_numpy(dtype=object) == "")
    if len(untyped):
        index = int(untyped[0])
        raise ReadError(
            path,
            f"feature {var['gene_ids'].iloc[index]!s} ({var.index[index]!s}) has no feature "
            f"type (matrix/features/feature_type[{index}] is empty"
            f"{f', as for {len(untyped)} features' if len(untyped) > 1 else ''}): a damaged "
            "file",
        )


def _read_10x_h5_utf8(path: Path):
    """The Cell Ranger ``.h5`` ``path`` as `scanpy.read_10x_h5` (``gex_only=False``) reads
    it, but its names decoded as UTF-8, where scanpy decodes them as ASCII (a
    `UnicodeDecodeError` for any other character). The counts as stored (float64 here:
    `read_10x_h5` then gives them their exact dtype)."""
    import anndata as ad
    import h5py

    def text(dataset) -> np.ndarray:
        values = dataset[()]
        if values.dtype.kind == "S" or values.dtype == object:
            try:
                values = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
            except UnicodeDecodeError as error:
                # named as a name file's other encoding is (`_name_lines`): "not a readable
                # Cell Ranger .h5 file (UnicodeDecodeError: 'utf-8' codec can't decode
                # byte 0xe8 in position 1)" said neither which array nor which entry
                raise _not_utf8_name(path, dataset, values, error) from None
        return np.asarray(values, dtype=object).astype(str)

    with h5py.File(path, "r") as handle:
        group = _10x_h5_matrix(handle)
        if "matrix" not in handle and len(handle) > 1:  # version 2: one group per genome
            raise ValueError(f"it holds more than one genome: {', '.join(handle)}")
        n_genes, n_cells = (int(n) for n in group["shape"][()])
        counts = sp.csc_matrix(
            (
                np.asarray(group["data"][()], dtype=np.float64),
                group["indices"][()],
                group["indptr"][()],
            ),
            shape=(n_genes, n_cells),
        ).T.tocsr()  # cells x genes
        obs = pd.DataFrame(index=pd.Index(text(group["barcodes"]), dtype=object))
        if "filtered_barcodes" in group:
            obs["filtered_barcodes"] = group["filtered_barcodes"][()].astype(bool)
        if "features" in group:  # version 3 and later
            features = group["features"]
            columns = {"gene_ids": text(features["id"])}
            if "gene_id" in features:  # a probe-barcode matrix: ids of probes, of genes
                columns = {"gene_ids": text(features["gene_id"]), "probe_ids": columns["gene_ids"]}
            columns["feature_types"] = text(features["feature_type"])
            for name, item in features.items():
                skipped = ("name", "feature_type", "id", "gene_id", "_all_tag_keys")
                if isinstance(item, h5py.Dataset) and name not in skipped:
                    columns[name] = item[()].astype(bool) if item.dtype.kind == "b" else text(item)
            names = text(features["name"])
        else:  # version 2
            columns = {"gene_ids": text(group["genes"])}
            names = text(group["gene_names"])
        var = pd.DataFrame(columns, index=pd.Index(names, dtype=object))
    return ad.AnnData(X=counts, obs=obs, var=var)


def _not_utf8_name(path: Path, dataset, values, error: UnicodeDecodeError) -> ReadError:
    """The `ReadError` of a Cell Ranger ``.h5`` whose name array ``dataset`` (its
    ``values``, decoded in order) holds a name that is not UTF-8 (``error``, its decoding's):
    the array, the entry and the byte, as a name file's is named."""
    # the first entry equal to the one that failed: any earlier would have failed first
    index = next(number for number, value in enumerate(values) if value == error.object)
    return ReadError(
        path,
        f"{dataset.name}[{index}] is not UTF-8 text (byte {error.object[error.start]:#04x} "
        f"in {error.object!r}): write the names as UTF-8",
    )


def _10x_h5_matrix(handle):
    """The matrix group of the open Cell Ranger ``.h5`` ``handle`` that scanpy reads:
    ``matrix`` (version 3 and later), else the genome's group (version 2)."""
    return handle["matrix"] if "matrix" in handle else next(iter(handle.values()))


def _check_10x_h5_index_arrays(path: Path, handle) -> None:
    """`ReadError` unless the stored ``indices`` and ``indptr`` of the Cell Ranger ``.h5``
    ``path`` (open as ``handle``) are 1-D integers: scanpy's matrix casts float ones to
    integers, which moved a count stored at gene 1.9 to gene 1 (the ``.h5ad`` reader
    refuses them too)."""
    try:
        group = _10x_h5_matrix(handle)
        arrays = [group[name] for name in ("indptr", "indices")]
        check_index_arrays("matrix", "csc", *arrays)
    except ValueError as error:  # check_index_arrays's CorruptMatrixError
        raise ReadError(path, str(error)) from None


def read_mtx(
    path: str | os.PathLike,
    *,
    genes_as_rows: bool,
    row_names: str | os.PathLike | None = None,
    col_names: str | os.PathLike | None = None,
):
    """Read a Matrix Market file (plain or gzip, any ``%`` header comments) as cells x genes.

    Parameters
    ----------
    path
        ``.mtx`` or ``.mtx.gz`` file, ``coordinate`` or ``array`` format, ``integer``,
        ``real`` or ``pattern`` field, ``general`` symmetry.
    genes_as_rows
        True when the file's rows are genes (10x convention), False when they are cells.
    row_names, col_names
        Optional name files for the file's rows and columns (one name per line, first
        tab-separated field); without them names are ``"0"``, ``"1"``, ... When the genes'
        file is a 10x features file naming ``Gene Expression`` and other feature types
        (Antibody Capture, CRISPR Guide Capture, ...), only the ``Gene Expression``
        features are kept, as `read_10x` keeps them.

    Raises
    ------
    ReadError
        Missing, unreadable, truncated or malformed file, or name files whose length does
        not match the matrix.
    """
    genes_as_rows = check_flag(genes_as_rows, "genes_as_rows")
    path = Path(path)
    matrix = _read_mtx_matrix(path)
    names, keep_genes = [], None
    for axis, names_path, side in ((0, row_names, "rows"), (1, col_names, "columns")):
        if names_path is None:
            names.append(np.arange(matrix.shape[axis]).astype(str))
            continue
        axis_names, keep = read_gene_names(
            Path(names_path),
            matrix.shape[axis],
            path.name,
            side,
            other_axis=(matrix.shape[1 - axis], genes_as_rows),
        )
        names.append(axis_names)
        if axis == (0 if genes_as_rows else 1):  # the genes' names: a 10x features file?
            keep_genes = keep
    counts, cells, genes = (matrix.T, names[1], names[0]) if genes_as_rows else (matrix, *names)
    counts = sp.csr_matrix(counts)
    if keep_genes is not None:  # names made unique among the genes kept, as read_10x
        counts, genes = counts[:, np.flatnonzero(keep_genes)], genes[keep_genes]
    return _anndata(counts, cells, genes)


def read_h5ad(path: str | os.PathLike):
    """Read an ``.h5ad`` file (cells x genes) into memory with `anndata.read_h5ad`;
    `ReadError` if it cannot be read.

    X is returned as stored; names are made unique. X may be missing when layers or
    ``.raw`` hold the counts. The index arrays of every sparse matrix among X, the layers
    and ``.raw`` are checked (`vbsnmf._validation.check_sparse_structure`): a damaged one
    is a `ReadError`, where it would crash the interpreter later; so is a file without its
    obs or var table (`check_obs_var`). Index arrays stored unsigned are made signed, as
    scipy needs them.
    """
    import anndata as ad
    import h5py

    path = Path(path)
    check_hdf5(path, "h5ad")
    with anndata_errors(path, ".h5ad file"):
        with h5py.File(path, "r") as handle:
            check_obs_var(path, handle)
            for matrix in _count_matrices(handle):
                check_encoded(path, matrix)
        adata = ad.read_h5ad(path)
    return _checked_anndata(path, adata)


def read_zarr(path: str | os.PathLike):
    """Read a ``.zarr`` store (cells x genes) into memory with `anndata.read_zarr`;
    `ReadError` if it cannot be read. Checked as `read_h5ad` checks, and for chunks
    missing from the store (`check_zarr_chunks`: of X, each layer and raw's X, any of
    which may hold the counts to fit; `check_obs_var`)."""
    import anndata as ad
    import zarr

    path = Path(path)
    if not path.is_dir():
        if _is_zip(path):
            raise _zip_archive_error(path)
        raise ReadError(path, "not a .zarr store (a folder)")
    with anndata_errors(path, ".zarr store"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's format notices
        store = zarr.open_group(str(path), mode="r")
        for matrix in _count_matrices(store):
            check_zarr_chunks(path, matrix)
            check_encoded(path, matrix)
        check_obs_var(path, store)
        adata = ad.read_zarr(path)
    return _checked_anndata(path, adata)


def _count_matrices(store) -> list:
    """The stored matrices of the AnnData ``store`` a fit may read its counts from: X, each
    layer (``--layer``) and raw's X (``--use-raw``); None for an X that is not there."""
    matrices = [store.get("X")]
    layers = store.get("layers")
    if hasattr(layers, "keys"):
        matrices.extend(layers[name] for name in layers.keys())
    raw = store.get("raw")
    if hasattr(raw, "keys") and "X" in raw:
        matrices.append(raw["X"])
    return matrices


def check_hdf5(path: Path, kind: str) -> None:
    """`ReadError` unless ``path`` is a readable HDF5 file of the layout ``kind``
    (``"h5ad"`` or ``"10x_h5"``, see `_check_hdf5_layout`), before h5py opens it here."""
    check_file(path)
    _probe_hdf5(path)
    _check_hdf5_layout(path, kind)


@contextmanager
def anndata_errors(path: Path, what: str):
    """Reading the AnnData file or store ``path`` (``what``: ".h5ad file", ".zarr store"):
    every failure becomes a `ReadError` naming it."""
    try:
        yield
    except ReadError:
        raise
    except MemoryError:
        raise ReadError(path, "too large to load into memory") from None
    except Exception as error:  # h5py, zarr, numcodecs and anndata raise many types
        raise ReadError(path, _anndata_failure(error, what)) from None


def check_obs_var(path: Path, store) -> None:
    """`ReadError` unless the AnnData store ``store`` (an h5py file or a zarr group, open,
    of ``path``) holds its obs and var tables with their indexes, the cells' and the
    genes' names. anndata reads a file without var as genes named '0', '1', ... and opens
    it backed as a matrix of no genes. A table stored as anndata stored one before 0.7 (a
    dataset, not a group encoded as a dataframe) is left to anndata.

    In a zarr store (a folder) the index's chunks must be there too: zarr reads a missing
    chunk as its fill value, so a store whose var folder was deleted, but whose
    consolidated metadata still lists it, read as genes named '', '-1', ... So must the
    chunks of raw's var index, the names of the genes a ``--use-raw`` fit loads.
    """
    for table, named in (("obs", "cells"), ("var", "genes")):
        stored = store.get(table)
        if stored is None:
            raise ReadError(path, f"has no {table} table, which names the {named}: {_DAMAGED}")
        if encoding_of(stored) != "dataframe":
            continue
        index = stored.attrs.get("_index")
        if index is None or index not in stored:
            raise ReadError(
                path, f"its {table} table has no index, which names the {named}: {_DAMAGED}"
            )
        _check_name_chunks(path, stored[index], named)
    raw = store.get("raw")
    raw_var = raw.get("var") if hasattr(raw, "keys") else None
    index = raw_var.attrs.get("_index") if hasattr(raw_var, "keys") else None
    if index is not None and index in raw_var:
        _check_name_chunks(path, raw_var[index], "the genes of .raw")


def _check_name_chunks(path: Path, index, named: str) -> None:
    """`ReadError` naming a chunk of the names array ``index`` (of ``named``) missing from
    the zarr store ``path`` (nothing to check in an HDF5 file)."""
    missing = _missing_chunks(path, index) if path.is_dir() else []
    if missing:
        start, stop, key = missing[0]
        raise ReadError(
            path,
            f"chunk {index.path}/{key} (the names of {named} {start} to {stop - 1}) is "
            "missing from the store, and zarr would read them as '': copy the store again",
        )


_DAMAGED = "a damaged file, or one not written by anndata"


def check_zarr_chunks(path: Path, matrix) -> None:
    """`ReadError` naming a chunk of the sparse matrix ``matrix`` (a zarr group of the
    store ``path``, e.g. its X) that is missing from the store.

    zarr reads a missing chunk as its fill value (0), so a store copied in part reads as
    valid counts, all moved to gene 0 or to other cells. zarr 3 does not write a chunk
    that is all 0 either: such a chunk of ``indices`` is accepted when zeros there leave
    no cell with a gene twice, unwritten leading ``indptr`` chunks when they are leading
    cells without counts (`_leading_empty_cells`); ``data`` chunks of zeros (stored zero
    counts) are not counts worth fitting.
    A dense matrix is not checked: blocks of zero counts are common there.
    """
    import zarr

    if not isinstance(matrix, zarr.Group) or "indptr" not in matrix:
        return  # no sparse matrix: the reader says what is wrong
    indptr = None
    for name in ("indptr", "indices", "data"):
        if name not in matrix:
            continue
        array = matrix[name]
        missing = _missing_chunks(path, array)
        if name == "indptr" and _leading_empty_cells(matrix, missing):
            continue
        for start, stop, key in missing:
            if name == "indices":
                indptr = np.asarray(matrix["indptr"][...]) if indptr is None else indptr
                if _zeros_fit(indptr, start, stop):
                    continue
            raise ReadError(
                path,
                f"chunk {array.path}/{key} (entries {start} to {stop - 1}) is missing from "
                "the store, and zarr would read it as zeros: copy the store again",
            )


def _missing_chunks(path: Path, array) -> list[tuple[int, int, str]]:
    """``(start, stop, key)`` of each chunk (shard, if sharded) of the 1-D zarr ``array``
    whose file is not in the store ``path``."""
    length = (getattr(array, "shards", None) or array.chunks)[0]
    encode = getattr(getattr(array, "metadata", None), "encode_chunk_key", None)  # zarr 3
    missing = []
    for start in range(0, array.shape[0], length):
        key = encode((start // length,)) if encode else str(start // length)
        if not (path / array.path / key).is_file():
            missing.append((start, min(start + length, array.shape[0]), key))
    return missing


def _leading_empty_cells(matrix, missing: list[tuple[int, int, str]]) -> bool:
    """Whether the unwritten ``indptr`` chunks ``missing`` are leading cells without
    counts, as zarr 3 leaves them (chunks of zeros are not written): they run from the
    start (a missing chunk after a written one would read as a decrease, which the
    structure check refuses anyway), and the cell that ends them holds distinct genes in
    increasing order, as a written row does; had they been lost, that cell would hold the
    lost cells' genes too. An X with no counts at all has no indptr chunk written."""
    if not missing or any(
        start != index * (missing[0][1] - missing[0][0])
        for index, (start, _, _) in enumerate(missing)
    ):
        return False
    first_written = missing[-1][1]
    indptr = matrix["indptr"]
    if first_written >= indptr.shape[0]:
        return matrix["data"].shape[0] == 0
    row = np.asarray(matrix["indices"][: int(indptr[first_written])])
    return bool(np.all(np.diff(row) > 0))


def _zeros_fit(indptr: np.ndarray, start: int, stop: int) -> bool:
    """Whether column indices 0 at stored positions ``start:stop`` leave every row at
    most one of them (as a chunk of zeros zarr did not write does)."""
    within = np.minimum(indptr[1:], stop) - np.maximum(indptr[:-1], start)
    return bool(within.max(initial=0) <= 1)


def _anndata_failure(error: BaseException, what: str) -> str:
    if "float16" in str(error):
        return (
            "holds a sparse matrix of float16 values, which scipy.sparse cannot hold; "
            "store it as float32 (exact for every float16 value), e.g. "
            "adata.X = adata.X.astype('float32') where it was written"
        )
    return f"not a readable {what} ({describe_error(error)})"


def _checked_anndata(path: Path, adata):
    """An AnnData read from ``path`` with something to fit, and undamaged sparse
    matrices; names made unique."""
    if adata.X is None and not adata.layers and adata.raw is None:
        raise ReadError(path, "has no X matrix, layers or .raw")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ReadError(path, f"holds an empty matrix of shape {adata.shape}")
    matrices = {"X": adata.X, **{f"layers[{k!r}]": v for k, v in adata.layers.items()}}
    if adata.raw is not None:
        matrices["raw.X"] = adata.raw.X
    for name, matrix in matrices.items():
        if sp.issparse(matrix):
            try:
                check_sparse_structure(matrix, name)
            except (ValueError, TypeError) as error:
                raise ReadError(path, str(error)) from None
            _signed_index_arrays(matrix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.obs_names_make_unique()
        adata.var_names_make_unique()
    return adata


# -- helpers ------------------------------------------------------------------------------
def _signed_index_arrays(matrix) -> None:
    """Give the checked sparse ``matrix`` signed index arrays, in place, when it was stored
    with unsigned ones (BPCells wrote ``indptr`` as uint64 until 2024; anndata reads them
    as stored): scipy's sparse routines take int32 or int64 only, and refused the counts
    with "unsupported data types in input"."""
    if matrix.indices.dtype.kind != "u" and matrix.indptr.dtype.kind != "u":
        return
    largest = max(matrix.nnz, *matrix.shape)
    signed = np.int32 if largest <= np.iinfo(np.int32).max else np.int64
    matrix.indices = matrix.indices.astype(signed)
    matrix.indptr = matrix.indptr.astype(signed)


def _reaches_float32_limit(values: np.ndarray) -> bool:
    """Whether float32 ``values`` may hold a count it rounded (2**24 and beyond)."""
    return bool(values.size) and float(np.max(values)) >= _FLOAT32_EXACT


def _keep_gene_expression(adata):
    """Only the ``Gene Expression`` features when there are others (scanpy's
    ``gex_only``); all of them when none is labelled so."""
    if "feature_types" not in adata.var:
        return adata
    is_gene = gene_expression_mask(adata.var["feature_types"])
    if is_gene is None:
        return adata
    with warnings.catch_warnings():
        # anndata's "Variable names are not unique ... call .var_names_make_unique" for
        # repeated symbols (GRCh38 has some): the readers make them unique next (`_finish`)
        warnings.simplefilter("ignore")
        return adata[:, is_gene].copy()


def gene_expression_mask(feature_types) -> np.ndarray | None:
    """Which features to keep by their 10x feature ``types``: the ``Gene Expression``
    ones when there are others too; None keeps all (none labelled so, or all of them).
    Every reader's rule (a 10x folder, its ``.h5``, a features file as an ``.mtx``'s
    names, the conversion)."""
    is_gene = np.asarray(feature_types, dtype=object) == "Gene Expression"
    return is_gene if is_gene.any() and not is_gene.all() else None


def _finish(adata):
    """CSR counts in their exact float dtype, unique names."""
    counts = sp.csr_matrix(adata.X)
    adata.X = counts.astype(exact_float_dtype(counts.data), copy=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.obs_names_make_unique()
        adata.var_names_make_unique()
    return adata


def check_mtx_size(path: Path, fmt: str, size: tuple[int, ...], bytes_per_index=None) -> int:
    """The entry count a Matrix Market size line declares, after checking the shape and
    the count against the file's size and the memory their indexes need (ReadError)."""
    n_rows, n_cols = size[:2]
    if n_rows == 0 or n_cols == 0:
        raise ReadError(path, f"holds an empty {n_rows} x {n_cols} matrix")
    if max(n_rows, n_cols) > _MAX_DIMENSION:
        raise ReadError(path, f"dimensions {n_rows} x {n_cols} exceed {_MAX_DIMENSION}")
    # more entries than the matrix has places is a file with repeated entries, which are
    # summed (scipy reads it); only the file's size bounds the count
    n_entries = size[2] if fmt == "coordinate" else n_rows * n_cols
    room = path.stat().st_size * (_MAX_DEFLATE_RATIO if _is_gzip(path) else 1)
    shortest = _MIN_COORDINATE_LINE if fmt == "coordinate" else _MIN_ARRAY_LINE
    if n_entries * shortest > room:
        raise ReadError(path, f"truncated: declares {n_entries} entries, more than it holds")
    _check_index_memory(path, n_rows, n_cols, bytes_per_index)
    return n_entries


def _check_index_memory(
    path: Path, n_rows: int, n_cols: int, bytes_per_index: int | None = None
) -> None:
    """ReadError when the rows' and columns' indexes alone would not fit in memory (a
    header declaring billions of cells would otherwise meet the OOM killer, not an error)."""
    from .._memory import available_memory, format_bytes, guard_disabled

    available = None if guard_disabled() else available_memory()
    needed = (n_rows + n_cols) * (_INDEX_BYTES if bytes_per_index is None else bytes_per_index)
    if available is not None and needed > available:
        raise ReadError(
            path,
            f"declares a {n_rows} x {n_cols} matrix, whose row and column indexes alone "
            f"need {format_bytes(needed)}; {format_bytes(available)} are available",
        )


def check_file(path: Path) -> None:
    """`ReadError` unless ``path`` is a regular file this process may read; one that
    cannot be found says why (`check_exists`: a loop of symbolic links read as "no such
    file")."""
    check_exists(path)
    if not path.is_file():
        outputs = output_folder_files(path) if path.is_dir() else []
        if outputs:  # `vbsnmf umap OUTDIR`: the result file in it is meant
            raise ReadError(path, f"a folder, not a file: give {quoted_path(path / outputs[0])}")
        raise ReadError(path, "not a regular file")
    if not os.access(path, os.R_OK):
        raise ReadError(path, "permission denied")


# Walks every group, dataset and attribute of an HDF5 file without reading data.
_HDF5_PROBE = """
import sys, h5py
with h5py.File(sys.argv[1], "r") as handle:
    dict(handle.attrs)
    handle.visititems(lambda name, item: dict(item.attrs))
"""
_HDF5_PROBE_SECONDS = 20


# A Cell Ranger matrix group (version 3: "matrix"; version 2: one per genome) holds these.
_CELL_RANGER_ARRAYS = frozenset({"data", "indices", "indptr", "shape"})


def _check_hdf5_layout(path: Path, kind: str) -> None:
    """`ReadError` naming what an HDF5 file holds when it is not the layout its reader
    expects (``kind`` "h5ad": an AnnData's encoding or its obs and var; "10x_h5": a group
    with Cell Ranger's sparse arrays), before anndata or scanpy fail on it with a message
    about their internals (an unexpected keyword, a missing key)."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            keys = sorted(handle.keys())
            cell_ranger = any(
                isinstance(item, h5py.Group) and _CELL_RANGER_ARRAYS <= set(item.keys())
                for item in handle.values()
            )
            fits = _is_anndata(handle) if kind == "h5ad" else cell_ranger
    except Exception as error:  # h5py raises several types for files it cannot open
        raise _unreadable_hdf5(path, describe_error(error)) from None
    if fits:
        return
    holds = f"it holds {', '.join(map(repr, keys[:8]))}{', ...' if len(keys) > 8 else ''}"
    if not keys:
        holds = "it is empty"
    if kind == "h5ad" and cell_ranger:  # a Cell Ranger .h5 renamed, which read_10x_h5 reads
        holds += (
            ": Cell Ranger's feature-barcode layout, read by vbsnmf.io.read_10x_h5 (name it "
            ".h5 for vbsnmf.io.read and the command line)"
        )
    if _LOOM_KEYS <= set(keys):  # a .loom file renamed
        raise ReadError(path, _LOOM)
    if kind == "h5ad":
        what = "not an AnnData .h5ad file (no AnnData encoding, no obs and var)"
    else:
        what = (
            "not a Cell Ranger feature-barcode .h5 (no group with data, indices, indptr and shape)"
        )
    raise ReadError(path, f"an HDF5 file, but {what}: {holds}")


_GZIPPED_HDF5 = (
    "is gzip-compressed (a download kept packed?): decompress it first, e.g. "
    "gunzip -c FILE > counts.h5ad, and read that"
)
# A gzip file that does not hold an HDF5 file: decompressing it gives no .h5ad.
_GZIPPED_OTHER = (
    "is gzip-compressed, and what it holds is not an HDF5 file either (a table, such as "
    "the cell_factors.tsv.gz that vbsnmf fit writes?): name an .h5ad file"
)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _gzipped_hdf5_error(path: Path) -> ReadError:
    """The `ReadError` of the gzip-compressed file ``path`` read as HDF5: the advice to
    decompress it only when it holds an HDF5 file. A factor table of 'vbsnmf fit'
    (``cell_factors.tsv.gz``) given to 'vbsnmf umap' was told to be gunzipped into
    ``counts.h5ad``, which then held a table."""
    try:
        with gzip.open(path, "rb") as handle:
            start = handle.read(len(_HDF5_SIGNATURE))
    except (OSError, EOFError, zlib.error):  # a damaged or cut stream: unknown content
        start = _HDF5_SIGNATURE
    return ReadError(path, _GZIPPED_HDF5 if start == _HDF5_SIGNATURE else _GZIPPED_OTHER)


def _probe_hdf5(path: Path) -> None:
    """Open ``path``'s HDF5 structure in a child process first.

    Some corrupt files make the HDF5 library loop forever while reading metadata (found by
    fuzzing: one flipped byte in an attribute heap), which no exception handler can stop;
    a child process can be stopped. Reading the structure of even a large file takes well
    under a second, so a child still busy after 20 s is reading a corrupt file.
    """
    import subprocess
    import sys

    with system_errors(path), open(path, "rb") as head:
        magic = head.read(len(_ZIP_MAGIC))
    if magic.startswith(_GZIP_MAGIC):  # HDF5's own "file signature not found" said nothing
        raise _gzipped_hdf5_error(path)
    if magic == _ZIP_MAGIC:  # 'vbsnmf umap' of a fit written to a zipped .zarr store
        raise _zip_archive_error(path)
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _HDF5_PROBE, str(path)],
            capture_output=True,
            text=True,
            timeout=_HDF5_PROBE_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise ReadError(path, "corrupt HDF5 file (reading its structure does not finish)") from None
    except OSError as error:
        # the child's pipes or process refused (too many open files, no processes left):
        # the bare "[Errno 24] Too many open files" named no file and no step
        raise ReadError(
            path,
            "could not be checked: the system refused to start the process that reads its "
            f"HDF5 structure ({describe_error(error)})",
        ) from error
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit code {probe.returncode}"
        raise _unreadable_hdf5(path, reason)


def _is_gzip(path: Path) -> bool:
    with system_errors(path), open(path, "rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def open_binary(path: Path):
    gzipped = _is_gzip(path)
    with system_errors(path):
        return gzip.open(path, "rb") if gzipped else open(path, "rb")


@contextmanager
def system_errors(path: Path):
    """Reading ``path``: an I/O error of the system (an OSError with an errno: a failing
    disk, a network file system) is a `ReadError` naming the file, where the command line
    said "[Errno 5] Input/output error" of no file. gzip's BadGzipFile (no errno) is about
    the content: left to the caller, which names the file as damaged."""
    try:
        yield
    except OSError as error:
        if not _refused_by_the_machine(error):
            raise
        raise refused_by_the_system(path, error) from None


def read_or_refuse(handle, size: int, path: Path) -> bytes:
    """``handle.read(size)`` of the file ``path``, an I/O error of the system a `ReadError`
    (`system_errors`) raised outside the handler: its OSError is then not its context,
    which a writer's `atomic_file` took for a failed write of its output
    (`vbsnmf._atomic.failed_write`: `mtx_to_h5ad` blamed the ``.h5ad`` it was writing for
    its input's I/O error)."""
    try:
        return handle.read(size)
    except OSError as error:
        if not _refused_by_the_machine(error):
            raise
        refused = refused_by_the_system(path, error)
    raise refused


def refused_by_the_system(path: Path, error: BaseException) -> ReadError:
    """The `ReadError` of a file the system could not read (`system_errors`)."""
    return ReadError(path, f"could not be read: the system refused ({describe_error(error)})")


@dataclass(frozen=True)
class MtxHeader:
    """A Matrix Market header: ``fmt`` (``coordinate`` or ``array``), ``field``, the
    numbers of the size line, and where the entry lines start in the (uncompressed) text."""

    fmt: str
    field: str
    size: tuple[int, ...]
    body_offset: int

    @property
    def n_fields(self) -> int:
        """Numbers on each entry line."""
        if self.fmt == "array":
            return 1
        return 2 if self.field == "pattern" else 3


def mtx_header(path: Path) -> MtxHeader:
    """The header of a Matrix Market file, checked (`ReadError`)."""
    with open_binary(path) as handle, system_errors(path):
        # a byte-order mark is what editors on Windows write before UTF-8 text
        first_line = handle.readline(1024).removeprefix(codecs.BOM_UTF8)
        _check_text(path, first_line)
        _check_line_endings(path, first_line)
        banner = first_line.decode("ascii", errors="replace").split()
        if not banner or banner[0].lower() != "%%matrixmarket":
            raise ReadError(path, "not a Matrix Market file (no '%%MatrixMarket' banner line)")
        if len(banner) != 5:  # a banner, but of other words: "no banner line" said it was not
            shown = " ".join(banner)
            raise ReadError(
                path,
                f"malformed banner line {shown[:100]!r}: it holds {len(banner)} "
                f"word{'s' if len(banner) != 1 else ''} where "
                "the format has 5, '%%MatrixMarket matrix FORMAT FIELD SYMMETRY' (e.g. "
                "'%%MatrixMarket matrix coordinate integer general')",
            )
        if banner[0] != "%%MatrixMarket":  # the format's first word is case-sensitive
            raise ReadError(
                path, f"the banner's first word must be spelled '%%MatrixMarket', not {banner[0]!r}"
            )
        obj, fmt, field, symmetry = (word.lower() for word in banner[1:])
        if obj != "matrix" or fmt not in ("coordinate", "array"):
            raise ReadError(path, f"unsupported Matrix Market object/format {obj} {fmt}")
        if field not in ("integer", "real", "double", "pattern"):
            raise ReadError(path, f"unsupported Matrix Market field {field!r} (counts are real)")
        if symmetry != "general":
            # scipy.io.mmwrite chooses 'symmetric' itself for any symmetric matrix, so a
            # 1 x 1 count table written with it was refused with no hint of how to fix it
            hint = (
                " (scipy.io.mmwrite writes 'symmetric' for a symmetric matrix, even 1 x 1, "
                "unless given symmetry='general')"
                if symmetry == "symmetric"
                else ""
            )
            raise ReadError(
                path, f"{symmetry} matrices are not count tables; expected 'general'{hint}"
            )
        for _ in range(100_000):
            line = handle.readline(1 << 16)
            if not line:
                raise ReadError(path, "truncated: the header has no size line")
            text = line.decode("ascii", errors="replace").strip()
            # a comment of any length (Cell Ranger's metadata line can pass 64 KiB): its
            # rest is read in pieces of the same size, not taken for the size line
            while text.startswith("%") and not line.endswith(b"\n"):
                line = handle.readline(1 << 16)
                if not line:
                    raise ReadError(path, "truncated: the header has no size line")
            if text and not text.startswith("%"):
                break
        else:
            raise ReadError(path, "more than 100,000 comment lines before the size line")
        body_offset = handle.tell()
    return MtxHeader(fmt, field, _size_line(path, text, fmt), body_offset)


# bzip2's stream header (a block size, 1-9) and the magic of its first block, or of its end
# when it holds nothing: "BZh" alone starts names too.
_BZIP2_MAGIC = tuple(
    b"BZh%d%s" % (level, block) for level in range(1, 10) for block in (b"1AY&SY", b"\x17rE8P\x90")
)
# What a download may hold instead of text, told by its first bytes (read after gzip's
# decompression, if any), and what to do about it.
_NOT_TEXT = (
    (_GZIP_MAGIC, "is gzip-compressed twice: decompress it once (gunzip)"),
    (_BZIP2_MAGIC, "is bzip2-compressed: decompress it first (bunzip2)"),
    (b"\xfd7zXZ\x00", "is xz-compressed: decompress it first (unxz)"),
    (b"\x28\xb5\x2f\xfd", "is zstd-compressed: decompress it first (unzstd)"),
    (b"PK\x03\x04", "is a zip archive: unpack it first (unzip)"),
    (b"\x89HDF", "is an HDF5 file (an .h5ad or a Cell Ranger .h5? name it so)"),
    (codecs.BOM_UTF16_LE, "is UTF-16 text: save it as UTF-8 or ASCII"),
    (codecs.BOM_UTF16_BE, "is UTF-16 text: save it as UTF-8 or ASCII"),
)


def _check_text(path: Path, first_bytes: bytes, what: str = "a Matrix Market file") -> None:
    """`ReadError` for a file (``what``) that is empty, or whose ``first_bytes`` start as
    another format does (`_NOT_TEXT`): "no '%%MatrixMarket' banner line" or "not UTF-8
    text (byte 0x8b on line 1)" sent users looking at text they could not read."""
    if not first_bytes:
        raise ReadError(path, f"is empty: not {what}")
    for magic, reason in _NOT_TEXT:
        if first_bytes.startswith(magic):
            raise ReadError(path, f"not {what}: it {reason}")


def _check_line_endings(path: Path, first_line: bytes) -> None:
    """`ReadError` for a file whose lines end in CR alone (classic Mac OS), told by a CR
    followed by text in ``first_line`` (read up to LF): the whole file would read as one
    line, whose banner seems missing."""
    if _CR_LINE_END.search(first_line):
        raise ReadError(
            path,
            "uses CR (classic Mac) line endings: convert them to LF "
            "(e.g. tr '\\r' '\\n' < OLD > NEW)",
        )


_CR_LINE_END = re.compile(rb"\r[^\r\n]")
_CRS_THEN_LF = re.compile(rb"\r+\n")


def _size_line(path: Path, text: str, fmt: str) -> tuple[int, ...]:
    """The numbers of the size line ``text``: rows, columns and (coordinate format)
    entries, plain decimal integers as scipy's parser reads them (Python's `int` also
    reads ``1_0``, and ``+3``, which scipy's parser refuses)."""
    words = text.split()
    if len(words) != (3 if fmt == "coordinate" else 2) or not all(map(_DECIMAL.fullmatch, words)):
        raise ReadError(
            path,
            f"malformed size line {text[:80]!r} (expected the numbers of rows, columns"
            f"{' and entries' if fmt == 'coordinate' else ''}, plain decimal integers)",
        )
    return tuple(int(word) for word in words)


_DECIMAL = re.compile(r"[0-9]+")


def _character_classes(field: str) -> bytes:
    """A `bytes.translate` table: white space to b" ", the characters of the field's
    numbers to b"x", anything else to b"!"."""
    number = b"0123456789+-" + (b".eEinfINFaA" if field in ("real", "double") else b"")
    table = bytearray(b"!" * 256)
    for code in number:
        table[code] = ord("x")
    for code in b" \t\r\n":
        table[code] = ord(" ")
    return bytes(table)


# Classes of the bytes of entry lines for `CheckedText`'s check of their shape: white space,
# newline, sign, decimal point, digit, exponent mark, a letter of nan or inf, anything else
# (``class & 4``: a digit, an exponent mark or a byte no tidy line holds).
_WS, _NL, _SIGN, _POINT, _DIGIT, _EXP, _LETTER, _OTHER = range(8)
_DIGITS = b"0123456789"
# An entry line holds at most three numbers: a longer line is not one.
_LONGEST_LINE = 1 << 16
# The fields of entry lines, for the lines that are not tidy (`CheckedText._untidy`): an
# index is a plain decimal integer, a value a whole number of the header's field.
_SPACE = rb"[ \t\r]"
_INDEX = rb"\d++"
_INTEGER = rb"[+-]?+\d++"
_REAL = rb"[+-]?+(?:(?:\d++(?:\.\d*+)?+|\.\d++)(?:[eE][+-]?+\d++)?+|(?i:nan|inf))"


def _shape_classes(field: str) -> bytes:
    """A `bytes.translate` table: each byte to its class (above) in an entry line of a
    ``field`` file (a decimal point, an exponent mark or a letter only in a real one)."""
    table = bytearray([_OTHER]) * 256
    for code in b" \t\r":
        table[code] = _WS
    table[ord("\n")] = _NL
    for code in _DIGITS:
        table[code] = _DIGIT
    if field != "pattern":
        for code in b"+-":
            table[code] = _SIGN
    if field in ("real", "double"):
        table[ord(".")] = _POINT
        for code in b"eE":
            table[code] = _EXP
        for code in b"nNaAiIfF":
            table[code] = _LETTER
    return bytes(table)


def _neighbour_table() -> bytes:
    """A `bytes.translate` table of the pairs of neighbouring bytes of tidy entry lines (one
    white space between fields, none at either end, no blank line, no nan or inf): 1 for a
    pair that may occur, 0 for one that may not. A pair is ``(after << 6) | (first << 3) |
    second``: the bytes' classes, ``after`` 1 when the byte before the pair is a digit or
    an exponent mark. Then the pairs alone hold each field to
    ``[+-]?(\\d+\\.?\\d*|\\.\\d+)([eE][+-]?\\d+)?`` but for a second decimal point or
    exponent (`CheckedText._tidy` checks those)."""
    table = bytearray(256)
    for code in range(16):
        kind, after_digit = code & 7, code >= 8
        if kind in (_WS, _NL):
            following = (_DIGIT, _SIGN, _POINT)
        elif kind == _DIGIT:
            following = (_WS, _NL, _DIGIT, _POINT, _EXP)
        elif kind == _SIGN:  # after an exponent mark only a digit
            following = (_DIGIT,) if after_digit else (_DIGIT, _POINT)
        elif kind == _POINT:  # "5." and ".5", not "." nor ".e5"
            following = (_WS, _NL, _DIGIT, _EXP) if after_digit else (_DIGIT,)
        elif kind == _EXP:
            following = (_DIGIT, _SIGN)
        else:
            following = ()
        for second in following:
            table[(after_digit << 6) | (kind << 3) | second] = 1
    return bytes(table)


_NEIGHBOURS = _neighbour_table()


def _field_patterns(header: MtxHeader) -> list[bytes]:
    """Regular expressions of the fields of an entry line, in order."""
    value = _REAL if header.field in ("real", "double") else _INTEGER
    if header.fmt == "array":
        return [value]
    return [_INDEX, _INDEX] + ([] if header.field == "pattern" else [value])


class CheckedText(io.RawIOBase):
    """The text of a Matrix Market file, checked as it is read.

    scipy's parser (fast_matrix_market) crashes the interpreter (segmentation fault) on a
    NUL byte right after a number, and reads a valid prefix of a malformed number: ``1.5``
    or ``1e3`` in an integer field as 1, ``16abc`` as 16, ``7e`` as 7, ``3.0.0`` as 3; it
    ignores a fourth field. So no byte may be NUL, the entry lines (everything after the
    size line) may hold only the characters of their field's numbers, each line exactly
    its fields (two indexes, plain decimal integers, and a value of the header's field;
    the value alone in an array; blank lines aside), each a whole number, and the lines
    must hold ``n_fields * n_entries`` numbers; `finish` checks the count once the parser
    is done. A line is checked once its newline is read; the parser is given a newline
    after a last line without one, which it crashes on when the line ends in white space.

    The check runs in C and numpy over whole blocks (`_tidy`: no loop per line): files as
    writers write them, one space or tab between fields and none at either end, take it;
    other lines are matched by a regular expression (`_untidy`, slower). Wrapped in a
    1 MiB `io.BufferedReader`, the parser's small reads cost no Python call each.
    """

    _BLOCK = 1 << 20

    def __init__(self, handle, path: Path, header: MtxHeader, n_entries: int, start: int = 0):
        super().__init__()
        self._handle, self._path, self._header = handle, path, header
        self._classes = _character_classes(header.field)
        self._shapes = _shape_classes(header.field)
        self._fields = [re.compile(field) for field in _field_patterns(header)]
        line = _SPACE + rb"*+(?:" + (_SPACE + rb"++").join(_field_patterns(header))
        self._lines = re.compile(rb"(?:" + line + _SPACE + rb"*+)?+\n)*+")
        n_fields = header.n_fields
        self._separators = b" " * (n_fields - 1) + b"\n"
        self._skeleton = bytes([_WS] * (n_fields - 1) + [_NL])
        self._n_indexes = 0 if header.fmt == "array" else 2
        self._expected = n_fields * n_entries
        self._numbers = 0
        self._offset = start  # bytes of the file read so far (``handle`` is at ``start``)
        self._line = 1  # the line of the file that self._pending starts
        self._pending = b""  # the start of a line whose newline is not read yet
        self._last = b"\n"  # the last byte passed on (`_unsigned`)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = read_or_refuse(self._handle, len(buffer), self._path)
        self._check(chunk)
        if not chunk and self._last != b"\n":
            # the file's last line lacks its newline: scipy's parser reads past the end
            # of a last line ending in white space (``1 1 4 ``, a CR) and crashes
            chunk = b"\n"
        if b"+" in chunk:
            chunk = self._unsigned(chunk)
        self._last = chunk[-1:] or self._last
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def _unsigned(self, chunk: bytes) -> bytes:
        """``chunk`` with the ``+`` signs of values (checked: they start a field) made
        spaces. scipy's parser refuses ``+5``, which the format allows (C's ``scanf``
        reads it) and pandas reads, as `vbsnmf.io.mtx_to_h5ad` does; an exponent's sign
        follows no white space and stays."""
        for space in (b" ", b"\t", b"\n"):
            chunk = chunk.replace(space + b"+", space + b" ")
        if chunk.startswith(b"+") and self._last in (b" ", b"\t", b"\n"):
            chunk = b" " + chunk[1:]
        return chunk

    def buffered(self) -> io.BufferedReader:
        """This stream behind a 1 MiB buffer, for the parser."""
        return io.BufferedReader(self, buffer_size=self._BLOCK)

    def finish(self) -> None:
        """Read what the parser left and check the number of values.

        Every line read was checked to hold its fields (a line of another number of
        fields is refused as it is read), so a count that differs is a size line that
        does not fit the file: the message says how many entries each gives. scipy's
        parser said "Line 13: Too many lines in file (file too long)" or "Truncated
        file. Expected another 1 lines." of no declared count."""
        while self.read(self._BLOCK):
            pass
        if self._numbers != self._expected:
            n_fields = self._header.n_fields
            what = "values" if self._header.fmt == "array" else "entries"
            declared, held = self._expected // n_fields, self._numbers // n_fields
            why = (
                "truncated, or lines were removed without rewriting the size line"
                if held < declared
                else "lines were added without rewriting the size line"
            )
            raise ReadError(
                self._path,
                f"its size line declares {declared} {what} but the file holds {held} "
                f"(entry lines hold {self._numbers} numbers where the size line implies "
                f"{self._expected}): {why}",
            )

    def _check(self, chunk: bytes) -> None:
        if b"\x00" in chunk:
            raise ReadError(self._path, "contains a NUL byte: not a text Matrix Market file")
        if not chunk:  # the end of the file, whose last line may lack its newline
            pending, self._pending = self._pending, b""
            if pending:
                self._check_lines(pending + b"\n")
            return
        start, self._offset = self._offset, self._offset + len(chunk)
        skip = max(self._header.body_offset - start, 0)
        if skip:
            self._line += chunk.count(b"\n", 0, skip)
        body = chunk[skip:]
        end = body.rfind(b"\n") + 1
        if end:  # the lines ending in this chunk, copied once
            lines = b"".join((self._pending, memoryview(body)[:end]))
            self._pending = body[end:]
            self._check_lines(lines)
        else:
            self._pending += body
        if len(self._pending) > _LONGEST_LINE:
            raise ReadError(
                self._path,
                f"line {self._line} is longer than {_LONGEST_LINE} bytes: not an entry line",
            )

    def _check_lines(self, text: bytes) -> None:
        """Check whole entry lines (``text`` ends with a newline) and count their numbers."""
        if b"\r" in text:  # Windows line ends
            text = text.replace(b"\r\n", b"\n")
            if b"\r" in text:  # CRs doubled before LF (a CRLF file converted twice) end it too
                text = _CRS_THEN_LF.sub(b"\n", text)
                if b"\r" in text:
                    self._refuse_carriage_return(text)
        lines = self._tidy(text)
        if lines is not None:
            self._numbers += self._header.n_fields * lines
        else:
            lines = self._untidy(text)
        self._line += lines

    def _refuse_carriage_return(self, text: bytes) -> None:
        """`ReadError` for a CR that does not end a line (``text``'s CRLFs made LFs), naming
        its line: scipy's parser took it for white space and pandas' (`mtx_to_h5ad`) for a
        line end, so `read_mtx` read ``1\\r1 3`` as one entry and the conversion refused
        it as "Integer column has NA values in column 1"."""
        where = text.index(b"\r")
        start = text.rfind(b"\n", 0, where) + 1
        line = text[start : text.index(b"\n", where)]
        shown = repr(line.decode("ascii", errors="replace").strip()[:80])
        number = self._line + text.count(b"\n", 0, start)
        raise ReadError(
            self._path,
            f"line {number} holds a carriage return (CR) "
            f"that does not end the line ({shown}): damaged or mixed line endings, which "
            "the readers split differently; end every line with LF or CRLF",
        )

    def _tidy(self, text: bytes) -> int | None:
        """The number of lines of ``text`` when they are tidy (one space or tab between
        fields, none at either end, no blank line, no nan or inf) and well formed, else
        None (then `_untidy` decides)."""
        marks = text.translate(None, _DIGITS)
        lines, rest = divmod(len(marks), len(self._separators))
        if not rest and marks == self._separators * lines:
            # digits, one space between fields and newlines, unless two are side by side
            gaps = np.frombuffer(text, np.uint8) < ord("0")
            return None if gaps[0] or (gaps[1:] & gaps[:-1]).any() else lines
        # the pairs of neighbouring bytes' classes (`_neighbour_table`; the first line's
        # first byte follows a newline). Products, not shifts: numpy shifts bytes slowly.
        classes = np.frombuffer((b"\n\n" + text).translate(self._shapes), np.uint8)
        pairs = (classes[:-2] & 4) * np.uint8(16) | classes[1:-1] * np.uint8(8) | classes[2:]
        if b"\x00" in pairs.tobytes().translate(_NEIGHBOURS):
            return None
        # The bytes but digits, each line's in order (then only white space, newlines,
        # signs, decimal points and exponent marks): only a line's last field may hold
        # anything but digits, and a number at most one decimal point and one exponent,
        # in that order (a sign between them only after the exponent mark).
        marks = marks.translate(self._shapes)
        classes = np.frombuffer(marks, np.uint8)
        first, second = classes[:-1], classes[1:]
        if self._n_indexes and ((first >= _SIGN) & (second == _WS)).any():
            return None
        point_or_exp = second >= _POINT  # no digit among them
        if (((first == _POINT) & (second == _POINT)) | ((first == _EXP) & point_or_exp)).any() or (
            (classes[:-2] == _EXP) & (classes[1:-1] == _SIGN) & point_or_exp[1:]
        ).any():
            return None
        # and each line holds its number of fields
        marks = marks.translate(None, bytes([_SIGN, _POINT, _EXP]))
        lines, rest = divmod(len(marks), len(self._skeleton))
        return lines if not rest and marks == self._skeleton * lines else None

    def _untidy(self, text: bytes) -> int:
        """Check entry lines that are not tidy (``text``, ending with a newline) with a
        regular expression, count their numbers; their number of lines."""
        classes = text.translate(self._classes)
        self._refuse_stray(text, classes, self._line)
        match = self._lines.match(text)
        if match.end() < len(text):
            self._refuse_line(text, match.end())
        self._numbers += classes.count(b" x") + (classes[:1] == b"x")
        return text.count(b"\n")

    def _refuse_stray(self, text: bytes, classes: bytes, first_line: int | None = None) -> None:
        """`ReadError` for a byte of ``text`` that no number of the header's field holds,
        naming its line when ``first_line`` (the file's line ``text`` starts) is known: a
        decimal point or an exponent in an integer file's value as the number it is
        (``2.0``, ``1e3``: the header should say 'real'), a comment among the entry lines
        as a comment. "characters that are not numbers (b'.5\\n3 1 1')" named neither
        the line nor what was wrong with it."""
        stray = classes.find(b"!")
        if stray < 0:
            return
        found = f"entry lines hold characters that are not numbers ({text[stray : stray + 10]!r})"
        if first_line is None:
            raise ReadError(self._path, found)
        start = text.rfind(b"\n", 0, stray) + 1
        end = text.find(b"\n", stray)
        line = text[start : end if end >= 0 else len(text)]
        where = "line " + str(first_line + text.count(b"\n", 0, start))
        shown = repr(line.decode("ascii", errors="replace").strip()[:80])
        fields = line.split()
        # in the value, the line's last field (an index with a decimal point is damage)
        in_value = len(fields) == len(self._fields) and stray - start >= len(line.rstrip()) - len(
            fields[-1]
        )
        if self._header.field == "integer" and line[stray - start] in b".eE" and in_value:
            number = fields[-1].decode("ascii", errors="replace")[:40]
            raise ReadError(
                self._path,
                f"{where} holds {number!r}, not an integer, where the header declares the "
                f"integer field ({shown}): if the values are not whole counts, the header "
                "should say 'real' (%%MatrixMarket matrix coordinate real general)",
            )
        if line.lstrip().startswith(b"%"):
            raise ReadError(
                self._path,
                f"{where} is a comment ({shown}) among the entry lines: the format allows "
                "comments only before the size line",
            )
        raise ReadError(self._path, f"{found}: {where} is {shown}")

    def _refuse_line(self, text: bytes, start: int) -> None:
        """`ReadError` for the malformed entry line at ``start`` of ``text``."""
        line = text[start : text.index(b"\n", start)]
        where = "line " + str(self._line + text.count(b"\n", 0, start))
        shown = line.decode("ascii", errors="replace").strip()
        shown = repr(shown if len(shown) <= 80 else shown[:80] + "...")
        fields = line.split()
        if len(fields) != len(self._fields):
            # a missing or an extra field on every line: the count of numbers says so
            numbers = self._numbers + self._numbers_to_end(text + self._pending)
            if numbers != self._expected:
                raise ReadError(
                    self._path,
                    f"entry lines hold {numbers} numbers where the size line implies "
                    f"{self._expected} ({where} holds {len(fields)}: {shown})",
                )
            raise ReadError(
                self._path,
                f"{where} holds {len(fields)} fields where an entry of a {self._header.fmt} "
                f"{self._header.field} file has {len(self._fields)}: {shown}",
            )
        for field, pattern in zip(fields, self._fields):
            if not pattern.fullmatch(field):
                what = {_INDEX: "row or column index", _INTEGER: "integer", _REAL: "number"}
                raise ReadError(
                    self._path,
                    f"{where} holds {field.decode('ascii', errors='replace')[:40]!r}, not a "
                    f"well-formed {what[pattern.pattern]}: {shown}",
                )
        raise ReadError(self._path, f"{where} is not a well-formed entry line: {shown}")

    def _numbers_to_end(self, text: bytes) -> int:
        """The numbers in ``text``, which starts a line, and in the rest of the file, read
        to its end (a NUL byte or a stray character refused as `_check` refuses them)."""
        numbers, previous = 0, b" "
        while text:
            if b"\x00" in text:
                raise ReadError(self._path, "contains a NUL byte: not a text Matrix Market file")
            classes = text.translate(self._classes)
            self._refuse_stray(text, classes)
            numbers += classes.count(b" x") + (previous == b" " and classes[:1] == b"x")
            previous = classes[-1:]
            text = read_or_refuse(self._handle, self._BLOCK, self._path)
        return numbers


def _read_mtx_matrix(path: Path) -> sp.csr_matrix:
    """The matrix of a Matrix Market file as stored (rows x columns), checked, repeated
    entries summed; values float32 where that is exact, else float64."""
    import scipy.io

    with _read_errors(path, "corrupt or truncated Matrix Market file"):
        header = mtx_header(path)
        n_entries = check_mtx_size(path, header.fmt, header.size)
        with open_binary(path) as handle:
            # scipy reads no byte-order mark (mtx_header takes one): start after it
            start = len(codecs.BOM_UTF8) if handle.read(3) == codecs.BOM_UTF8 else 0
            handle.seek(start)
            text = CheckedText(handle, path, header, n_entries, start)
            try:
                matrix = scipy.io.mmread(text.buffered())
            except ReadError:  # the text's own check, raised through the parser
                raise
            except ValueError as error:
                refused = _index_out_of_range(path, header, str(error))
                if refused is None:
                    # the parser's "Too many lines in file" or "Truncated file": the
                    # count of entries the size line declares, against the file's
                    text.finish()
                    raise
                raise refused from None
            text.finish()
    matrix = sp.coo_matrix(matrix)
    hidden = repeated_negative(matrix.row, matrix.col, matrix.data)
    if hidden is not None:
        raise ReadError(
            path,
            f"the entry at row {matrix.row[hidden] + 1}, column {matrix.col[hidden] + 1} is "
            f"negative ({matrix.data[hidden]:g}) and repeated: the sum of the repeats would "
            "hide it; NMF needs raw counts",
        )
    # repeats summed in the parsed dtype (int64 or float64) before the exact one is chosen:
    # summed in float32, 16,777,216 + 1 (each exact in it) rounded to 16,777,216
    counts = matrix.tocsr()
    return counts.astype(exact_float_dtype(counts.data), copy=False)


# scipy's parser's words for an index outside the size line's shape (its line of the file)
_OUT_OF_RANGE = re.compile(r"Line (\d+): (Row|Column) index out of bounds")


def _index_out_of_range(path: Path, header: MtxHeader, message: str) -> ReadError | None:
    """The `ReadError` of scipy's parser's ``message`` when it says an index is out of
    bounds, naming the line, its index and the range the size line declares, and an
    index 0 as what a file written with 0-based indexes holds; None for another message.
    "corrupt or truncated Matrix Market file (ValueError: Line 7: Row index out of
    bounds)" named neither. The line is read again (the failure's cost only)."""
    found = _OUT_OF_RANGE.match(message)
    if found is None:
        return None
    number, axis = int(found.group(1)), found.group(2).lower()
    bound = header.size[0 if axis == "row" else 1]
    with open_binary(path) as handle:
        line = next(itertools.islice(handle, number - 1, None), b"")
    fields = line.split()
    shown = line.decode("ascii", errors="replace").strip()[:80]
    index = fields[0 if axis == "row" else 1] if len(fields) >= 2 else b""
    if index.strip(b"0") == b"":  # 0, 00: an index of 0
        why = (
            "an index of 0, where Matrix Market indexes start at 1 (a file written with "
            "0-based indexes: add 1 to every row and column index)"
        )
    else:
        why = f"a {axis} index outside 1..{bound}, the {axis}s its size line declares"
    return ReadError(path, f"line {number} ({shown!r}) holds {why}")


@contextmanager
def _read_errors(path: Path, damaged: str):
    """Reading the file ``path`` (a Matrix Market file, a name file): every failure becomes
    a `ReadError`, one the file's content caused saying ``damaged`` ("corrupt or truncated
    Matrix Market file") and why."""
    check_file(path)
    try:
        yield
    except ReadError:
        raise
    except MemoryError:
        raise ReadError(path, "too large to load into memory") from None
    except EOFError:
        raise ReadError(path, "truncated: the compressed stream ends early") from None
    except OverflowError as error:  # scipy's parser: "Line 5: Integer out of range."
        raise ReadError(path, f"{BEYOND_INT64} ({error})") from None
    except Exception as error:  # scipy, gzip and zlib raise several types on corrupt input
        if _refused_by_the_machine(error):
            raise refused_by_the_system(path, error) from None
        raise ReadError(path, f"{damaged} ({describe_error(error)})") from None


# Both readers of a Matrix Market file parse its integers (indexes; the counts of an
# integer file) as 64-bit, and refuse one beyond that range.
BEYOND_INT64 = "holds an integer beyond the 64-bit range (an index, or a count of an integer file)"


def _refused_by_the_machine(error: Exception) -> bool:
    """An error of the machine, not of the file: an I/O error of the system (gzip's
    BadGzipFile, an OSError about the content, has no errno), or the parser's threads
    refused (C++'s system_error as a RuntimeError, under a limit on processes or memory)."""
    if isinstance(error, OSError):
        return error.errno is not None
    return isinstance(error, RuntimeError) and os.strerror(errno.EAGAIN) in str(error)


def read_names(path: Path, expected: int, matrix: str, side: str) -> np.ndarray:
    """The names of a name file (plain or gzip UTF-8 text): the first tab-separated field
    of each line that is not blank, as strings (`ReadError` unless there are ``expected``
    of them, the ``side`` of ``matrix``, e.g. "cells" of "the matrix")."""
    return read_gene_names(path, expected, matrix, side)[0]


def read_gene_names(
    path: Path,
    expected: int,
    matrix: str,
    side: str,
    other_axis: tuple[int, bool] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The names of the genes' name file ``path`` as `read_names` reads them, and which
    of them to keep: when it is a 10x features file (a feature type third on every line)
    naming ``Gene Expression`` and other types, a boolean mask of the ``Gene Expression``
    features, as `read_10x` keeps them; else None (all).

    ``other_axis``: for the name file of a Matrix Market file's ``side`` (``"rows"`` or
    ``"columns"``), the length of its other axis and the ``genes_as_rows`` it is read
    with; a file holding as many names as that axis is refused naming the orientation
    that fits it (`_check_other_axis`).

    A GEO sample's ``GSM..._features.tsv.gz`` given as a Matrix Market file's names
    (the route the message of a folder of prefixed 10x names advises) fitted its
    Antibody Capture counts with the genes, where the same files in a 10x folder do not.
    """
    lines, blank = _name_lines(path)
    if other_axis is not None:
        _check_other_axis(path, len(lines), expected, matrix, side, *other_axis)
    _check_name_count(path, len(lines), blank, expected, matrix, side, first_line=lines[0])
    names = np.array([line.partition("\t")[0] for line in lines], dtype=object)
    return names, _gene_expression_lines(lines)


def _gene_expression_lines(lines: list[str]) -> np.ndarray | None:
    """Which lines of a name file are ``Gene Expression`` features of a 10x features
    file (id, name, type, ...), when it names other types too; None keeps all."""
    types = []
    for line in lines:
        fields = line.split("\t", 3)
        if len(fields) < 3:  # not a features file: names only
            return None
        types.append(fields[2])
    return gene_expression_mask(types)


def read_features(
    path: Path, expected: int, matrix: str, side: str, n_other: int | None = None
) -> pd.DataFrame:
    """A 10x features (or genes) file as `read_names` reads it, but every field of each
    line, a column each, as strings.

    Every line must hold the same number of fields, and a feature type when there is one
    (`ReadError`): a line short of its type, or with an empty one, would read as a
    feature that is not 'Gene Expression', dropped with its counts (`_keep_gene_expression`).
    """
    lines, blank = _name_lines(path)
    rows = [line.split("\t") for line in lines]
    # first: a line split in two is named here, not counted as an extra name
    _check_same_fields(path, rows, blank)
    _check_name_count(path, len(rows), blank, expected, matrix, side, n_other, lines[0])
    table = pd.DataFrame(rows, dtype=object)
    if path.name.startswith("features") and table.shape[1] < 3:
        raise ReadError(path, "has fewer than 3 columns (Cell Ranger 3 writes id, name and type)")
    if table.shape[1] > 2:
        untyped = np.flatnonzero(table[2].to_numpy() == "")
        if len(untyped):
            line = _line_number(int(untyped[0]), blank)
            raise ReadError(path, f"line {line} has no feature type (its third field is empty)")
    return table


def _name_lines(path: Path) -> tuple[list[str], list[int]]:
    """The lines of the name file ``path`` that are not blank (white space at most), and
    the numbers of the blank ones; `ReadError` for a file that cannot be read, is empty,
    is compressed or encoded as it cannot be read as text (`_check_text`), holds a NUL byte
    (pandas' parser ended a name there) or is not UTF-8."""
    path = Path(path)
    with _read_errors(path, "unreadable name file"), open_binary(path) as handle:
        data = handle.read()
    if data:  # an empty one is named below, with the file of blank lines
        _check_text(path, data, "a text name file")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = _line_of(data, nul)
        raise ReadError(path, f"contains a NUL byte (line {line}): not a text name file")
    try:
        text = data.decode("utf-8-sig")  # without the byte-order mark editors may write
    except UnicodeDecodeError as error:
        line = _line_of(data, error.start)
        raise ReadError(
            path, f"is not UTF-8 text (byte {data[error.start]:#04x} on line {line})"
        ) from None
    del data  # before the lines are made: a barcodes file may hold millions
    if "\r" in text:  # Windows (CR LF) and classic Mac (CR) line ends
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines[-1] == "":  # after the last line's newline
        lines.pop()
    blank = [number for number, line in enumerate(lines, 1) if not line.strip(" \t")]
    if blank:
        lines = [line for line in lines if line.strip(" \t")]
    if not lines:
        raise ReadError(path, "is empty" if not blank else "holds only blank lines")
    return lines, blank


def _line_of(data: bytes, position: int) -> int:
    """The number of the line of ``data`` (a file's bytes) that holds byte ``position``."""
    return len(re.findall(rb"\r\n|\r|\n", data[:position])) + 1


def _line_number(index: int, blank: list[int]) -> int:
    """The number in its file of the ``index``-th line that is not blank (from 0), the
    file's blank lines numbered ``blank`` (in order)."""
    number = index + 1
    for line in blank:
        if line > number:
            break
        number += 1
    return number


def _check_other_axis(
    path: Path, count: int, expected: int, matrix: str, side: str, n_other: int, genes_as_rows
) -> None:
    """`ReadError` for the name file of a Matrix Market file's ``side`` (``"rows"`` or
    ``"columns"``) holding ``count`` names, as many as the other axis (``n_other``) and not
    the ``expected`` of its own: read with ``genes_as_rows`` the names are the genes' (or
    cells'), and the matrix holds them along the other axis. A file of cells x genes, as
    ``scipy.io.mmwrite(adata.X)`` writes one, read with ``genes_as_rows=True`` and its
    genes file as the row names, was refused as "has 30 names but m.mtx has 80 rows",
    which said nothing of the orientation."""
    if count == expected or count != n_other:
        return
    other = "columns" if side == "rows" else "rows"
    named = "genes" if (side == "rows") == bool(genes_as_rows) else "cells"
    flipped = not genes_as_rows
    written = (
        "genes x cells, as 10x and R's Matrix::writeMM of a Seurat object's counts write it"
        if flipped
        else "cells x genes, as scipy.io.mmwrite(adata.X) writes it"
    )
    option = "col" if other == "columns" else "row"
    raise ReadError(
        path,
        f"has {count} names, as many as {matrix}'s {other}, but it has {expected} {side}: "
        f"it names the {other} ({option}_names=..., --{option}-names); if they are the "
        f"{named}' names, {matrix} holds its {named} as {other} ({written}): read it with "
        f"genes_as_rows={flipped} (--{'genes' if flipped else 'cells'}-as-rows)",
    )


def _check_name_count(
    path: Path,
    count: int,
    blank: list[int],
    expected: int,
    matrix: str,
    side: str,
    n_other: int | None = None,
    first_line: str | None = None,
) -> None:
    """`ReadError` unless a name file's ``count`` names are ``expected``; the message
    names the blank lines that were not counted, for a 10x features file whose count
    is the matrix's columns (``n_other``), a matrix written with cells as rows, and for
    one name too many, the file's ``first_line``, which may be a header (R's
    ``write.csv(names)`` writes ``"","x"``; pandas' ``to_csv`` its column's name): "has 21
    names but the matrix has 20 genes" did not say which line was not a name."""
    if count == expected:
        return
    if count == n_other and count != expected:
        # R's Matrix::writeMM(t(counts)) and the like: the names fit the other axis
        raise ReadError(
            path,
            f"has {count} names, as many as {matrix}'s columns, but it has {expected} rows: "
            "the matrix holds cells as rows, where a 10x folder holds genes as rows: write "
            "it transposed, or read it as a Matrix Market file with cells as rows "
            "(vbsnmf.io.read_mtx(MATRIX, genes_as_rows=False, row_names=BARCODES, "
            "col_names=FEATURES); vbsnmf fit MATRIX --cells-as-rows --row-names BARCODES "
            "--col-names FEATURES)",
        )
    if len(blank) == 1:
        skipped = f" (line {blank[0]} is blank, not a name)"
    elif blank:
        first = ", ".join(map(str, blank[:3])) + (", ..." if len(blank) > 3 else "")
        skipped = f" ({len(blank)} lines are blank, not names: {first})"
    elif count == expected + 1 and first_line is not None:
        skipped = f" (is its first line, {first_line!r}, a header? a name file holds names only)"
    else:
        skipped = ""
    raise ReadError(path, f"has {count} names but {matrix} has {expected} {side}{skipped}")


def _check_same_fields(path: Path, rows: list[list[str]], blank: list[int]) -> None:
    """`ReadError` unless the lines split into ``rows`` hold the same number of fields,
    naming the first line that holds another number than most."""
    counts = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    usual = int(np.bincount(counts).argmax())
    other = np.flatnonzero(counts != usual)
    if len(other):
        index = int(other[0])
        raise ReadError(
            path,
            f"line {_line_number(index, blank)} has {counts[index]} tab-separated "
            f"field{'s' if counts[index] != 1 else ''} where most lines have {usual}: "
            "a damaged line",
        )


def _anndata(counts, obs_names, var_names, var: pd.DataFrame | None = None):
    """Cells x genes AnnData with CSR counts (float32 where exact) and unique names."""
    import anndata as ad
    from anndata.utils import make_index_unique

    counts = sp.csr_matrix(counts)
    counts = counts.astype(exact_float_dtype(counts.data))
    var = pd.DataFrame(index=range(len(var_names))) if var is None else var.reset_index(drop=True)
    var.index = make_index_unique(pd.Index(np.asarray(var_names, dtype=str)))
    obs = pd.DataFrame(index=make_index_unique(pd.Index(np.asarray(obs_names, dtype=str))))
    return ad.AnnData(X=counts, obs=obs, var=var)
