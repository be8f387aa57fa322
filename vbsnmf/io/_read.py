"""Readers for count matrices: a 10x folder, ``.h5ad``, ``.mtx`` / ``.mtx.gz``.

Every reader returns an AnnData with cells as rows (``obs``) and genes as columns
(``var``), X a CSR matrix of counts stored exactly (float32 when every count is exact in
it, as counts up to 2**24 are; else float64), unique ``obs_names`` and ``var_names``.
Every problem with a file (missing, unreadable, truncated, corrupt, names that do not fit
the matrix) raises `ReadError` naming the file; nothing else escapes a reader.

Matrix Market files are parsed by `scipy.io.mmread` (what ``scanpy.read_mtx`` uses) after
a check of the header, so that a header declaring more entries than the file could hold is
refused before anything is allocated.
"""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._validation import check_sparse_structure, exact_float_dtype
from ._errors import ReadError

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

_MATRIX_NAMES = ("matrix.mtx.gz", "matrix.mtx")
_FEATURE_NAMES = ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
_BARCODE_NAMES = ("barcodes.tsv.gz", "barcodes.tsv")


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
        A 10x folder (``matrix.mtx[.gz]``, ``features.tsv[.gz]`` or ``genes.tsv[.gz]``,
        ``barcodes.tsv[.gz]``), an ``.h5ad`` file, or an ``.mtx`` / ``.mtx.gz`` file.
    genes_as_rows
        Orientation of a Matrix Market file: True when its rows are genes (the 10x
        convention), False when its rows are cells. Required for ``.mtx`` files; a 10x
        folder holds genes as rows by definition; ignored for ``.h5ad`` only if None.
    row_names, col_names
        Optional text files (plain or gzip) with one name per line (the first
        tab-separated field is used) for the rows and columns of an ``.mtx`` file.

    Returns
    -------
    AnnData
        ``X``: CSR counts, cells x genes, float32 where that is exact, else float64
        (an ``.h5ad`` keeps its stored dtype).

    Raises
    ------
    ReadError
        The path is missing or unreadable, or a file in it is truncated or malformed.
    ValueError
        The options do not fit the input (orientation or name files for an ``.h5ad``).
    """
    path = Path(path)
    if not path.exists():
        raise ReadError(path, "no such file or directory")
    if path.is_dir():
        if genes_as_rows is False:
            raise ValueError("a 10x folder holds genes as rows; drop --cells-as-rows")
        if row_names is not None or col_names is not None:
            raise ValueError("row/column name files apply to .mtx input, not to a 10x folder")
        return read_10x(path)
    name = path.name.lower()
    if name.endswith(".h5ad"):
        if genes_as_rows is not None or row_names is not None or col_names is not None:
            raise ValueError(
                "an .h5ad file stores cells as rows with its own names; "
                "orientation and name options apply to .mtx input only"
            )
        return read_h5ad(path)
    if name.endswith((".mtx", ".mtx.gz")):
        if genes_as_rows is None:
            raise ValueError(
                f"{path}: say which axis of the matrix holds the genes: "
                "--genes-as-rows (the 10x convention) or --cells-as-rows"
            )
        return read_mtx(path, genes_as_rows=genes_as_rows, row_names=row_names, col_names=col_names)
    raise ReadError(
        path, "unrecognised input: expected a 10x folder, an .h5ad file, or an .mtx / .mtx.gz file"
    )


def read_10x(folder: str | os.PathLike):
    """Read a 10x Genomics feature-barcode folder (v2 or v3 layout) as cells x genes.

    Only ``Gene Expression`` features are kept when the features file names types (as
    ``scanpy.read_10x_mtx`` does). ``var_names`` are gene symbols made unique,
    ``var['gene_ids']`` the ids; ``obs_names`` the barcodes made unique.

    Raises
    ------
    ReadError
        A file is missing, unreadable or malformed, or the name files' lengths disagree
        with the matrix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReadError(folder, "not a folder")
    matrix_path = _find(folder, _MATRIX_NAMES)
    features_path = _find(folder, _FEATURE_NAMES)
    barcodes_path = _find(folder, _BARCODE_NAMES)
    genes_by_cells = _read_mtx_matrix(matrix_path)
    features = _read_table(features_path)
    barcodes = _read_table(barcodes_path)
    n_genes, n_cells = genes_by_cells.shape
    if len(features) != n_genes:
        raise ReadError(
            features_path, f"has {len(features)} lines but {matrix_path.name} has {n_genes} genes"
        )
    if len(barcodes) != n_cells:
        raise ReadError(
            barcodes_path, f"has {len(barcodes)} lines but {matrix_path.name} has {n_cells} cells"
        )
    symbols = features[1] if features.shape[1] > 1 else features[0]
    var = pd.DataFrame({"gene_ids": features[0].to_numpy()})
    counts = sp.csr_matrix(genes_by_cells.T)
    if features.shape[1] > 2:
        var["feature_types"] = features[2].to_numpy()
        is_gene = (var["feature_types"] == "Gene Expression").to_numpy()
        if is_gene.any() and not is_gene.all():
            counts, var, symbols = counts[:, is_gene], var[is_gene], symbols[is_gene]
    return _anndata(counts, barcodes[0].to_numpy(), symbols.to_numpy(), var=var)


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
        tab-separated field); without them names are ``"0"``, ``"1"``, ...

    Raises
    ------
    ReadError
        Missing, unreadable, truncated or malformed file, or name files whose length does
        not match the matrix.
    """
    path = Path(path)
    matrix = _read_mtx_matrix(path)
    names = []
    for axis, names_path in ((0, row_names), (1, col_names)):
        if names_path is None:
            names.append(np.arange(matrix.shape[axis]).astype(str))
            continue
        table = _read_table(Path(names_path))
        if len(table) != matrix.shape[axis]:
            side = "rows" if axis == 0 else "columns"
            raise ReadError(
                names_path,
                f"has {len(table)} names but {path.name} has {matrix.shape[axis]} {side}",
            )
        names.append(table[0].to_numpy())
    if genes_as_rows:
        return _anndata(sp.csr_matrix(matrix.T), names[1], names[0])
    return _anndata(sp.csr_matrix(matrix), names[0], names[1])


def read_h5ad(path: str | os.PathLike):
    """Read an ``.h5ad`` file (cells x genes) into memory; `ReadError` if it cannot be read.

    X is returned as stored; names are made unique. X may be missing when layers or
    ``.raw`` hold the counts. The index arrays of every sparse matrix among X, the layers
    and ``.raw`` are checked (`vbsnmf._validation.check_sparse_structure`): a damaged one
    is a `ReadError`, where it would crash the interpreter later.
    """
    import anndata as ad

    path = Path(path)
    check_file(path)
    _probe_hdf5(path)
    try:
        adata = ad.read_h5ad(path)
    except MemoryError:
        raise ReadError(path, "too large to load into memory") from None
    except Exception as error:  # h5py/anndata raise many types for corrupt files
        if "float16" in str(error):
            raise ReadError(
                path,
                "holds a sparse matrix of float16 values, which scipy.sparse cannot hold; "
                "store it as float32 (exact for every float16 value), e.g. "
                "adata.X = adata.X.astype('float32') where it was written",
            ) from None
        raise ReadError(path, f"not a readable .h5ad file ({describe_error(error)})") from None
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
    adata.obs_names_make_unique()
    adata.var_names_make_unique()
    return adata


# -- helpers ------------------------------------------------------------------------------
def describe_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def check_mtx_size(path: Path, fmt: str, size: tuple[int, ...], bytes_per_index=None) -> int:
    """The entry count a Matrix Market size line declares, after checking the shape and
    the count against the file's size and the memory their indexes need (ReadError)."""
    n_rows, n_cols = size[:2]
    if n_rows == 0 or n_cols == 0:
        raise ReadError(path, f"holds an empty {n_rows} x {n_cols} matrix")
    if max(n_rows, n_cols) > _MAX_DIMENSION:
        raise ReadError(path, f"dimensions {n_rows} x {n_cols} exceed {_MAX_DIMENSION}")
    n_entries = size[2] if fmt == "coordinate" else n_rows * n_cols
    if fmt == "coordinate" and n_entries > n_rows * n_cols:
        raise ReadError(path, f"declares {n_entries} entries for a {n_rows} x {n_cols} matrix")
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
    if not path.exists():
        raise ReadError(path, "no such file")
    if not path.is_file():
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


def _probe_hdf5(path: Path) -> None:
    """Open ``path``'s HDF5 structure in a child process first.

    Some corrupt files make the HDF5 library loop forever while reading metadata (found by
    fuzzing: one flipped byte in an attribute heap), which no exception handler can stop;
    a child process can be stopped. Reading the structure of even a large file takes well
    under a second, so a child still busy after 20 s is reading a corrupt file.
    """
    import subprocess
    import sys

    try:
        probe = subprocess.run(
            [sys.executable, "-c", _HDF5_PROBE, str(path)],
            capture_output=True,
            text=True,
            timeout=_HDF5_PROBE_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise ReadError(path, "corrupt HDF5 file (reading its structure does not finish)") from None
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit code {probe.returncode}"
        raise ReadError(path, f"not a readable .h5ad file ({reason})")


def _find(folder: Path, candidates: tuple[str, ...]) -> Path:
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    raise ReadError(folder, f"not a 10x folder: none of {', '.join(candidates)} found in it")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def open_binary(path: Path):
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


_IS_SPACE = np.zeros(256, dtype=bool)
_IS_SPACE[list(b" \t\r\n")] = True


class _CheckedEntries:
    """The binary stream handed to scipy's Matrix Market parser, checked as it passes.

    scipy 1.17's parser crashes the interpreter (segmentation fault) on a NUL byte right
    after a number, and reads ``1.5`` or ``1e3`` in an integer field as 1, ``16abc`` as 16
    and ignores a fourth field. So the entry lines (everything after the size line) may
    hold only the characters of their field's numbers, and must hold exactly
    ``n_fields * n_entries`` numbers; `finish` checks the count once scipy is done.
    """

    _SPACE = b" \t\r\n"

    def __init__(self, handle, path: Path, field: str, n_fields: int, n_entries: int):
        self._handle, self._path = handle, path
        number = b"0123456789+-" + (b".eEinfINFaA" if field in ("real", "double") else b"")
        self._allowed = number + self._SPACE
        self._expected_tokens = n_fields * n_entries
        self._tokens = 0
        self._previous_space = True
        self._header = b""  # bytes of the header not yet ended by a newline
        self._in_header = True

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        if b"\x00" in chunk:
            raise ReadError(self._path, "contains a NUL byte: not a text Matrix Market file")
        self._check(self._after_header(chunk) if self._in_header else chunk)
        return chunk

    def finish(self) -> None:
        """Read what scipy left and check the number of values."""
        while self.read(1 << 20):
            pass
        if self._tokens != self._expected_tokens:
            raise ReadError(
                self._path,
                f"entry lines hold {self._tokens} numbers where the size line implies "
                f"{self._expected_tokens}",
            )

    def _after_header(self, chunk: bytes) -> bytes:
        self._header += chunk
        while b"\n" in self._header:
            line, self._header = self._header.split(b"\n", 1)
            stripped = line.strip()
            if stripped and not stripped.startswith(b"%"):  # the size line
                self._in_header = False
                rest, self._header = self._header, b""
                return rest
        return b""

    def _check(self, body: bytes) -> None:
        if not body:
            return
        stray = body.translate(None, self._allowed)
        if stray:
            raise ReadError(
                self._path,
                f"entry lines hold characters that are not numbers ({stray[:10]!r})",
            )
        codes = np.frombuffer(body, dtype=np.uint8)
        space = _IS_SPACE[codes]
        before = np.empty_like(space)
        before[0] = self._previous_space
        before[1:] = space[:-1]
        self._tokens += int(np.count_nonzero(~space & before))
        self._previous_space = bool(space[-1])


def mtx_header(path: Path) -> tuple[str, str, tuple[int, ...]]:
    """The format (``coordinate`` or ``array``), field and size line of a Matrix Market
    file."""
    with open_binary(path) as handle:
        banner = handle.readline(1024).decode("ascii", errors="replace").split()
        if len(banner) != 5 or banner[0].lower() != "%%matrixmarket":
            raise ReadError(path, "not a Matrix Market file (no '%%MatrixMarket' banner line)")
        obj, fmt, field, symmetry = (word.lower() for word in banner[1:])
        if obj != "matrix" or fmt not in ("coordinate", "array"):
            raise ReadError(path, f"unsupported Matrix Market object/format {obj} {fmt}")
        if field not in ("integer", "real", "double", "pattern"):
            raise ReadError(path, f"unsupported Matrix Market field {field!r} (counts are real)")
        if symmetry != "general":
            raise ReadError(path, f"{symmetry} matrices are not count tables; expected 'general'")
        for _ in range(100_000):
            line = handle.readline(1 << 16)
            if not line:
                raise ReadError(path, "truncated: the header has no size line")
            text = line.decode("ascii", errors="replace").strip()
            if text and not text.startswith("%"):
                break
        else:
            raise ReadError(path, "more than 100,000 comment lines before the size line")
    try:
        size = tuple(int(word) for word in text.split())
    except ValueError:
        raise ReadError(path, f"malformed size line {text[:80]!r}") from None
    expected = 3 if fmt == "coordinate" else 2
    if len(size) != expected or min(size) < 0:
        raise ReadError(path, f"malformed size line {text[:80]!r}")
    return fmt, field, size


def _read_mtx_matrix(path: Path) -> sp.coo_matrix:
    """The matrix of a Matrix Market file as stored (rows x columns), checked; values
    float32 where that is exact, else float64."""
    import scipy.io

    check_file(path)
    try:
        fmt, field, size = mtx_header(path)
        n_entries = check_mtx_size(path, fmt, size)
        if fmt == "coordinate":
            n_fields = 2 if field == "pattern" else 3
        else:
            n_fields = 1
        with open_binary(path) as handle:
            stream = _CheckedEntries(handle, path, field, n_fields, n_entries)
            matrix = scipy.io.mmread(stream)
            stream.finish()
    except ReadError:
        raise
    except MemoryError:
        raise ReadError(path, "too large to load into memory") from None
    except EOFError:
        raise ReadError(path, "truncated: the compressed stream ends early") from None
    except Exception as error:  # scipy, gzip and zlib raise several types on corrupt input
        raise ReadError(
            path, f"corrupt or truncated Matrix Market file ({describe_error(error)})"
        ) from None
    matrix = sp.coo_matrix(matrix)
    return matrix.astype(exact_float_dtype(matrix.data))


def _read_table(path: Path) -> pd.DataFrame:
    """A headerless tab-separated text file (plain or gzip) as strings; one row per line."""
    check_file(path)
    try:
        table = pd.read_csv(
            path,
            sep="\t",
            header=None,
            dtype=str,
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
            compression="gzip" if _is_gzip(path) else None,
            skip_blank_lines=True,
        )
    except pd.errors.EmptyDataError:
        raise ReadError(path, "is empty") from None
    except Exception as error:  # pandas, gzip, zlib and codecs raise several types
        raise ReadError(path, f"unreadable name file ({describe_error(error)})") from None
    return table


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
