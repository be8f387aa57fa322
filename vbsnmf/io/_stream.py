"""Cells x genes count matrices read a few rows at a time, for the streaming SVI fit.

Every source answers two questions with bounded memory: the rows (cells) of a sorted index
array as a CSR block (`CellSource.read_rows`), and the matrix as consecutive row blocks
(`CellSource.iter_blocks`). Peak memory is then the block being read, never the file.

- `InMemorySource`: a scipy CSR already in memory (the in-memory cell-minibatch fit runs the
  same code as the streaming one, so the two agree bitwise for the same seed).
- `CompressedRowsSource`: an on-disk CSR group with ``indptr``, ``indices`` and ``data``
  arrays, as AnnData writes ``X`` into ``.h5ad`` (opened with h5py) and ``.zarr`` stores;
  also a backed AnnData's ``X``. Only ``indptr`` (one integer per cell) is held in memory.
- `open_mtx`: a Matrix Market file (``.mtx`` or ``.mtx.gz``, a 10x folder's
  ``matrix.mtx.gz``), read in chunks of lines and spilled once into an HDF5 CSR in a
  temporary directory, which is then read as above. Gzip cannot seek, so random minibatches
  of cells need this one sequential pass.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .._validation import check_counts, check_row_pointers
from ._errors import ReadError
from ._read import check_file, check_mtx_size, describe_error, mtx_header, open_binary

# Lines of a Matrix Market file parsed at a time (about 100 MB of int64/float64 triplets).
_MTX_LINES_PER_CHUNK = 4_000_000


class CellSource:
    """A cells x genes count matrix readable by rows; subclasses implement `_read_range`.

    ``name`` is what messages call it (the file, for a source opened from a path)."""

    shape: tuple[int, int]
    indptr: np.ndarray
    name: str = "X"

    @property
    def n_cells(self) -> int:
        return int(self.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def _read_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``indices`` and ``data`` of the nonzeros at positions ``start:stop``."""
        raise NotImplementedError

    def read_rows(self, rows: np.ndarray) -> sp.csr_array:
        """Rows ``rows`` (sorted, unique) as a float64 CSR, reading runs of adjacent rows at
        once."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        # A run is a maximal set of rows whose nonzeros are contiguous in the file.
        breaks = np.flatnonzero(starts[1:] != stops[:-1]) + 1
        run_first = np.concatenate([[0], breaks])
        run_last = np.concatenate([breaks, [len(rows)]]) - 1
        pieces = [self._read_range(starts[a], stops[b]) for a, b in zip(run_first, run_last)]
        lengths = stops - starts
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        if pieces:
            indices = np.concatenate([p[0] for p in pieces]).astype(np.int32, copy=False)
            data = np.concatenate([p[1] for p in pieces]).astype(np.float64, copy=False)
        else:
            indices, data = np.empty(0, np.int32), np.empty(0, np.float64)
        return sp.csr_array((data, indices, indptr), shape=(len(rows), self.shape[1]))

    def iter_blocks(self, block_rows: int) -> Iterator[tuple[int, sp.csr_array]]:
        """``(first_row, block)`` for consecutive blocks of ``block_rows`` rows."""
        for start in range(0, self.n_cells, block_rows):
            stop = min(start + block_rows, self.n_cells)
            yield start, self.read_rows(np.arange(start, stop))


class InMemorySource(CellSource):
    """A CSR matrix (cells x genes) in memory."""

    def __init__(self, matrix):
        csr = sp.csr_array(matrix)
        self.shape = (int(csr.shape[0]), int(csr.shape[1]))
        self.indptr = csr.indptr.astype(np.int64, copy=False)
        self._indices, self._data = csr.indices, csr.data

    def _read_range(self, start, stop):
        return self._indices[start:stop], self._data[start:stop]


class CompressedRowsSource(CellSource):
    """An on-disk CSR group (h5py or zarr) with ``indptr``, ``indices``, ``data`` arrays and
    a ``shape`` attribute (AnnData's encoding of a ``csr_matrix``)."""

    def __init__(self, group, owner=None):
        encoding = group.attrs.get("encoding-type", "csr_matrix")
        if encoding != "csr_matrix":
            raise ValueError(
                f"streaming needs cells as CSR rows; the stored matrix is {encoding!r} "
                "(rewrite it as CSR, e.g. adata.X = scipy.sparse.csr_matrix(adata.X))"
            )
        self.shape = tuple(int(n) for n in group.attrs["shape"])
        self.indptr = np.asarray(group["indptr"][...], dtype=np.int64)
        self._indices, self._data = group["indices"], group["data"]
        self._owner = owner  # keeps an opened file alive as long as the source
        n_stored = min(self._indices.shape[0], self._data.shape[0])
        check_row_pointers(self.indptr, self.shape[0], n_stored, self.name)

    def _read_range(self, start, stop):
        return self._indices[int(start) : int(stop)], self._data[int(start) : int(stop)]


def _skip_mtx_header(handle) -> None:
    """Move ``handle`` past the banner, comments and size line (checked beforehand)."""
    handle.readline()
    line = handle.readline()
    while line.startswith(b"%") or not line.strip():
        line = handle.readline()


def open_mtx(path, *, genes_by_cells: bool = True, spill_dir=None) -> CompressedRowsSource:
    """Stream a Matrix Market file into a temporary HDF5 CSR of cells x genes.

    Parameters
    ----------
    path
        ``.mtx`` or ``.mtx.gz``.
    genes_by_cells
        True for 10x files (rows are genes, columns cells); False when rows are cells.
    spill_dir
        Where the temporary file goes (default: the system temporary directory); it is
        deleted when the source is garbage collected.

    Raises
    ------
    vbsnmf.io.ReadError
        A bad banner or size line, a corrupt or truncated (compressed) file, malformed
        entry lines, an index out of range, or entries not sorted by cell (10x and
        ``scipy.io.mmwrite`` of a CSC write them so). Counts are checked where they are
        read.
    """
    import h5py  # AnnData's dependency

    path = Path(path)
    check_file(path)
    spill = tempfile.TemporaryDirectory(prefix="vbsnmf-stream-", dir=spill_dir)
    spill_path = os.path.join(spill.name, "cells.h5")
    try:
        header = mtx_header(path)  # the io reader's checks of banner and size
        fmt, field, size = header.fmt, header.field, header.size
        if fmt != "coordinate" or field not in ("integer", "real", "double"):
            raise ReadError(path, f"streaming reads coordinate integer or real files, not {field}")
        # before the spill file is sized for the entries; 16 bytes a cell: counts, indptr
        nnz = check_mtx_size(path, fmt, size, bytes_per_index=16)
        n_rows, n_cols = size[:2]
        n_cells, n_genes = (n_cols, n_rows) if genes_by_cells else (n_rows, n_cols)
        with open_binary(path) as handle, h5py.File(spill_path, "w") as out:
            _skip_mtx_header(handle)
            _spill_cells(handle, out, genes_by_cells, n_cells, n_genes, nnz)
    except BaseException as error:
        spill.cleanup()
        if isinstance(error, ReadError):
            raise
        if isinstance(error, ValueError):  # our checks, and pandas' parser on a bad line
            raise ReadError(path, str(error)) from None
        if isinstance(error, (EOFError, OverflowError, zlib.error, gzip.BadGzipFile)):
            raise ReadError(path, f"corrupt or truncated file ({describe_error(error)})") from None
        raise
    handle_out = h5py.File(spill_path, "r")
    source = CompressedRowsSource(handle_out, owner=(handle_out, spill))
    source.name = str(path)
    return source


def _spill_cells(handle, out, genes_by_cells: bool, n_cells: int, n_genes: int, nnz: int):
    """Copy the entry lines of ``handle`` into the HDF5 group ``out`` as a CSR of cells x
    genes (``indices``, ``data``, ``indptr``); ValueError on a bad entry or count."""
    indices = out.create_dataset("indices", (nnz,), dtype=np.int32)
    # float64: the spill is written before every count is seen, and float32 would round
    # counts above 2**24 (16,777,217 became 16,777,216).
    data = out.create_dataset("data", (nnz,), dtype=np.float64)
    row_counts = np.zeros(n_cells, dtype=np.int64)
    written, last_cell, pending = 0, -1, None
    for block in _mtx_blocks(handle):
        cells, genes = (block[1], block[0]) if genes_by_cells else (block[0], block[1])
        cells, genes = cells.astype(np.int64) - 1, genes.astype(np.int64) - 1
        values = block[2]
        if pending is not None:  # the last cell of the previous block may continue here
            cells = np.concatenate([pending[0], cells])
            genes = np.concatenate([pending[1], genes])
            values = np.concatenate([pending[2], values])
        if np.any(np.diff(cells) < 0) or (len(cells) and cells[0] < last_cell):
            raise ValueError(
                "entries are not sorted by cell; streaming reads cells in file order (10x "
                "writes them sorted; re-save with scipy.io.mmwrite of a CSC)"
            )
        _check_mtx_block(cells, genes, n_cells, n_genes)
        tail = np.searchsorted(cells, cells[-1]) if len(cells) else 0
        pending = (cells[tail:], genes[tail:], values[tail:])
        written = _write_cells(
            indices, data, row_counts, cells[:tail], genes[:tail], values[:tail], written
        )
        last_cell = cells[-1] if len(cells) else last_cell
    if pending is not None:
        written = _write_cells(indices, data, row_counts, *pending, written)
    if written != nnz:
        raise ValueError(f"the header says {nnz} entries, the file holds {written}")
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(row_counts, out=indptr[1:])
    out.create_dataset("indptr", data=indptr)
    out.attrs["encoding-type"] = "csr_matrix"
    out.attrs["shape"] = np.array([n_cells, n_genes])


def _mtx_blocks(handle) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Triplet columns (1-based row, 1-based column, value) in blocks of lines."""
    import pandas as pd

    reader = pd.read_csv(
        handle,
        sep=r"\s+",
        header=None,
        names=["row", "col", "value"],
        dtype={"row": np.int64, "col": np.int64, "value": np.float64},
        chunksize=_MTX_LINES_PER_CHUNK,
        engine="c",
    )
    for frame in reader:
        yield frame["row"].to_numpy(), frame["col"].to_numpy(), frame["value"].to_numpy()


def _check_mtx_block(cells, genes, n_cells, n_genes) -> None:
    for name, index, bound in (("cell", cells, n_cells), ("gene", genes, n_genes)):
        if len(index) and (index.min() < 0 or index.max() >= bound):
            raise ValueError(f"a {name} index is outside 1..{bound}")


def _write_cells(indices, data, row_counts, cells, genes, values, written: int) -> int:
    """Append whole cells (sorted by cell) to the spill, genes sorted within each cell."""
    if len(cells) == 0:
        return written
    stop = written + len(cells)
    if stop > len(indices):
        raise ValueError(f"the file holds more entries than its header's {len(indices)}")
    order = np.lexsort((genes, cells))
    indices[written:stop] = genes[order].astype(np.int32)
    data[written:stop] = values[order]
    row_counts += np.bincount(cells, minlength=len(row_counts))
    return stop


def _named(open_group, path: Path) -> CompressedRowsSource:
    """``open_group()``, its errors and its later messages naming the file ``path``."""
    try:
        source = open_group()
    except KeyError:
        raise ValueError(f"{path}: has no X matrix to stream") from None
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    source.name = str(path)
    return source


def open_source(X, *, genes_by_cells: bool = True, spill_dir=None) -> CellSource:
    """A `CellSource` for ``X``: a path (``.h5ad``, ``.zarr``, ``.mtx``/``.mtx.gz``, a 10x
    folder), a backed AnnData or its ``X``, an AnnData in memory, or a matrix.

    ``genes_by_cells`` applies to Matrix Market files only (10x: True).
    """
    if isinstance(X, (str, os.PathLike)):
        path = Path(X)
        if path.is_dir() and not path.name.endswith(".zarr"):
            for name in ("matrix.mtx.gz", "matrix.mtx"):
                if (path / name).is_file():
                    return open_mtx(path / name, genes_by_cells=True, spill_dir=spill_dir)
            raise FileNotFoundError(f"{path} holds no matrix.mtx(.gz)")
        if not path.exists():
            raise FileNotFoundError(f"no such file: {path}")
        name = path.name.lower()
        if name.endswith((".mtx", ".mtx.gz")):
            return open_mtx(path, genes_by_cells=genes_by_cells, spill_dir=spill_dir)
        if name.endswith(".h5ad") or name.endswith(".h5"):
            import h5py

            handle = h5py.File(path, "r")
            return _named(lambda: CompressedRowsSource(handle["X"], owner=handle), path)
        if name.endswith(".zarr"):
            import zarr

            store = zarr.open_group(str(path), mode="r")
            return _named(lambda: CompressedRowsSource(store["X"], owner=store), path)
        raise ValueError(f"cannot stream {path}: expected .h5ad, .zarr, .mtx(.gz) or a 10x folder")
    try:
        import anndata as ad
    except ImportError:  # pragma: no cover - anndata is a dependency
        ad = None
    if ad is not None and isinstance(X, ad.AnnData):
        X = X.X
    if hasattr(X, "group") and getattr(X, "format", None) in ("csr", "csc"):
        return CompressedRowsSource(X.group)  # a backed AnnData's X
    return InMemorySource(check_counts(X, warn_non_integer=False))  # scanned later


__all__ = ["CellSource", "CompressedRowsSource", "InMemorySource", "open_mtx", "open_source"]
