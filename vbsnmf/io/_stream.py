"""Cells x genes count matrices read a few rows at a time, for the streaming SVI fit.

Every source answers two questions with bounded memory: the rows (cells) of a sorted index
array as a CSR block (`CellSource.read_rows`), and the matrix as consecutive row blocks
(`CellSource.iter_blocks`). Peak memory is then the block being read, never the file.

- `InMemorySource`: a scipy CSR already in memory (the in-memory cell-minibatch fit runs the
  same code as the streaming one, so the two agree bitwise for the same seed).
- `StoredRowsSource`: a CSR matrix stored as AnnData stores ``X`` in an ``.h5ad`` or a
  ``.zarr`` (also a backed AnnData's ``X``), read by anndata's `sparse_dataset`. Only
  ``indptr`` (one integer per cell) is held in memory.
- A Matrix Market file (``.mtx`` or ``.mtx.gz``, a 10x folder's ``matrix.mtx.gz``) is
  converted once by `vbsnmf.io.mtx_to_h5ad` (gzip cannot seek, so random minibatches of
  cells need one sequential pass), here into a temporary folder; convert it yourself to
  reuse the ``.h5ad``, as ``vbsnmf fit --solver svi`` does. A lone ``.mtx`` needs its
  orientation (`open_source`'s ``genes_as_rows``); a 10x folder holds genes as rows.

`read_h5ad_backed` opens an ``.h5ad`` for streaming, its X checked against obs and var.
An HDF5 file written while a source reads it (truncated, or overwritten in place) is
refused with a `ReadError` at the next read: HDF5 reads such a file's chunks as zeros or
as other data, without an error.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .._quoting import quoted_path
from .._validation import (
    check_count_dtype,
    check_counts,
    check_index_arrays,
    check_row_pointers,
    check_value_array,
    is_backed_sparse,
    readable_values,
)
from ._errors import ReadError, check_exists, describe_error
from ._stored import anndata_x

# Why a read of a file written since the source opened it is refused (`CellSource`).
CHANGED_MID_READ = (
    "the file changed while it was being read (its size or modification time is not what "
    "it was when opened): a streamed fit reads it until its last epoch; fit it again once "
    "nothing writes to it, or fit a copy"
)
# Why a read of a backed AnnData's file closed since the source opened it fails.
CLOSED_MID_READ = (
    "the file was closed while it was being read (adata.file.close() during the fit): a "
    "streamed fit reads it until its last epoch; keep it open until the fit returns"
)


class CellSource:
    """A cells x genes count matrix readable by rows; subclasses implement `_read_range`.

    ``name`` is what messages call it (the file, for a source opened from a path)."""

    shape: tuple[int, int]
    indptr: np.ndarray
    name: str = "X"
    # What the source opened itself and `close` closes: a path's file, or the file and
    # temporary folder of a conversion (None: the caller's, a backed AnnData's file).
    _owner = None
    # The open HDF5 file X is read from and its (size, modification time) when the source
    # was opened (`_watch_file`); None for a matrix in memory or a zarr store.
    _watched_file = None
    _file_stamp = None
    # The h5py group or dataset X is read from (None: in memory or zarr), whose file a
    # caller may close mid-fit (`_read_failure`).
    _stored = None

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

    def close(self) -> None:
        """Close what the source opened itself (a path's file; a conversion's file, its
        temporary folder removed), at once: left to the garbage collector, a failed fit's
        exception, which IPython keeps, kept the file open (rewriting it failed) and the
        converted copy on disk. A backed AnnData's file stays open."""
        owned = self._owner if isinstance(self._owner, tuple) else (self._owner,)
        self._owner = None
        for item in owned:
            if isinstance(item, tempfile.TemporaryDirectory):
                item.cleanup()
            elif hasattr(item, "close"):  # an h5py File (a zarr group has nothing to close)
                item.close()

    def _watch_file(self, stored) -> None:
        """Remember the (size, modification time) of the open HDF5 file holding ``stored``
        (an h5py group or dataset), which `_check_unchanged` compares after every read."""
        self._stored = stored
        file = getattr(stored, "file", None)
        stamp = _file_stamp(file)
        if stamp is not None:
            self._watched_file, self._file_stamp = file, stamp

    def _read_failure(self) -> str | None:
        """Why a read of X failed, when the file explains it: changed or closed since the
        source opened it (h5py's own errors then name a B-tree signature, or "invalid
        identifier type to function"); None otherwise."""
        if self._changed_since_opened():
            return CHANGED_MID_READ
        stored = self._stored
        h5py = sys.modules.get("h5py")
        if h5py is not None and isinstance(stored, (h5py.Group, h5py.Dataset)):
            if not stored.id.valid:
                return CLOSED_MID_READ
        return None

    def _check_unchanged(self) -> None:
        """A `ReadError` if the file X is read from was written since the source opened it.
        Truncated or overwritten in place (``cp``, a rerun pipeline) while a fit streamed
        it, HDF5 read the missing chunks as zeros and the rewritten ones as whatever now
        lay at their offsets: the fit went on silently on other counts than the ones
        checked, or failed on non-finite steps blamed on the step size."""
        if self._changed_since_opened():
            raise ReadError(self.name, CHANGED_MID_READ)

    def _changed_since_opened(self) -> bool:
        """Whether the watched file's (size, modification time) differs from its open's."""
        if self._file_stamp is None:
            return False
        stamp = _file_stamp(self._watched_file)
        return stamp is not None and stamp != self._file_stamp

    def __enter__(self) -> CellSource:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class InMemorySource(CellSource):
    """A CSR matrix (cells x genes) in memory."""

    def __init__(self, matrix):
        csr = sp.csr_array(matrix)
        self.shape = (int(csr.shape[0]), int(csr.shape[1]))
        self.indptr = csr.indptr.astype(np.int64, copy=False)
        self._indices, self._data = csr.indices, csr.data

    def _read_range(self, start, stop):
        return self._indices[start:stop], self._data[start:stop]


class StoredRowsSource(CellSource):
    """A CSR matrix as AnnData stores it (an h5py or zarr group with ``indptr``,
    ``indices``, ``data`` and a ``shape`` attribute), read with anndata's
    `sparse_dataset`; ``owner`` keeps what the group lives in open until `close`."""

    def __init__(self, group, owner=None):
        from anndata.io import sparse_dataset

        from ._read import encoding_of

        encoding = encoding_of(group, "csr_matrix")
        if encoding != "csr_matrix":
            # scipy cannot convert a backed X (its csr_matrix(adata.X) on one failed as "dtype
            # object"): the file is rewritten from a copy in memory, or fitted in memory
            raise ValueError(
                f"streaming needs cells as CSR rows; the stored matrix is {encoding!r}: "
                "rewrite the file from a copy in memory (adata = vbsnmf.io.read(path); "
                "adata.X = scipy.sparse.csr_matrix(adata.X); adata.write_h5ad(new_path)), "
                "or fit that copy in memory (a backed AnnData's: adata.to_memory())"
            )
        if _shape_attribute(group) is None:
            raise ValueError(
                "X has no 'shape' attribute, where anndata records a sparse matrix's shape "
                "(write the file with anndata)"
            )
        check_count_dtype(group["data"].dtype)
        if group["data"].dtype == np.float16:  # as `vbsnmf.io.read` says, not scipy's error
            raise ValueError(
                f"{self.name} holds a sparse matrix of float16 values, which scipy.sparse "
                "cannot hold; store it as float32 (exact for every float16 value), e.g. "
                "adata.X = adata.X.astype('float32') where it was written"
            )
        # as `check_sparse_structure` checks a matrix in memory: the casts to integers below
        # and in `_block` would truncate float indices (0.7 to 0) into a wrong fit
        check_index_arrays(self.name, "csr", group["indptr"], group["indices"])
        check_value_array(self.name, "csr", group["data"])
        self.shape = _stored_shape(_shape_attribute(group), self.name)
        self.indptr = np.asarray(group["indptr"][...], dtype=np.int64)
        n_stored = min(group["indices"].shape[0], group["data"].shape[0])
        # before anndata slices with these pointers
        check_row_pointers(self.indptr, self.shape[0], n_stored, self.name)
        self._dataset = sparse_dataset(group)
        self._owner = owner
        self._watch_file(group)

    def read_rows(self, rows: np.ndarray) -> sp.csr_array:
        """Rows ``rows`` (sorted, unique) as a float64 CSR."""
        return self._block(np.asarray(rows, dtype=np.int64))

    def iter_blocks(self, block_rows: int) -> Iterator[tuple[int, sp.csr_array]]:
        for start in range(0, self.n_cells, block_rows):
            yield start, self._block(slice(start, start + block_rows))

    def _block(self, rows) -> sp.csr_array:
        """Rows ``rows`` (an index array or a slice) as a float64 CSR; a chunk that cannot
        be read (damaged on disk, mid-fit) is a `ReadError` naming the file."""
        with _x_read_errors(self.name, self._read_failure):
            block = sp.csr_array(self._dataset[rows])
        self._check_unchanged()
        return _float_csr(block)


# Bytes of a dense matrix read at once (a block of rows): the counting pass and the blocks
# `DenseRowsSource` converts to CSR hold no more of the file than this (and the CSR).
DENSE_READ_BYTES = 1 << 22


class DenseRowsSource(CellSource):
    """A dense matrix as AnnData stores a dense ``X`` (a 2-D h5py or zarr array), read a
    few rows at a time, each read converted to CSR (its zeros left out). One pass, when
    first needed, counts the nonzeros of every row into ``indptr`` (one integer per cell, as
    `StoredRowsSource` holds); ``owner`` keeps what the array lives in open until `close`."""

    def __init__(self, array, owner=None):
        check_count_dtype(array.dtype)
        if len(array.shape) != 2:
            raise ValueError(f"X is an array of {len(array.shape)} axes, not a matrix")
        self.shape = (int(array.shape[0]), int(array.shape[1]))
        self._array = array
        self._owner = owner
        self._watch_file(array)
        row_bytes = max(self.shape[1] * np.dtype(array.dtype).itemsize, 1)
        self._read_rows = max(1, DENSE_READ_BYTES // row_bytes)

    @functools.cached_property
    def indptr(self) -> np.ndarray:
        # counted when first asked for: a source opened only to check a file's X (the
        # command line's `read_h5ad_backed`) reads none of it
        counts = np.zeros(self.shape[0] + 1, dtype=np.int64)
        for start in range(0, self.shape[0], self._read_rows):
            stop = min(start + self._read_rows, self.shape[0])
            counts[start + 1 : stop + 1] = np.count_nonzero(self._read(slice(start, stop)), axis=1)
        return np.cumsum(counts)

    def _read(self, rows) -> np.ndarray:
        """Rows ``rows`` (a slice, or sorted unique row numbers) as a dense array; a chunk
        that cannot be read is a `ReadError` naming the file."""
        with _x_read_errors(self.name, self._read_failure):
            if isinstance(rows, slice) or not hasattr(self._array, "oindex"):
                dense = np.asarray(self._array[rows])
            else:
                dense = np.asarray(self._array.oindex[rows, :])  # zarr: orthogonal selection
        self._check_unchanged()
        return dense

    def read_rows(self, rows: np.ndarray) -> sp.csr_array:
        """Rows ``rows`` (sorted, unique) as a float64 CSR, read a bounded piece at a time."""
        rows = np.asarray(rows, dtype=np.int64)
        pieces = [
            self._csr(self._read(rows[first : first + self._read_rows]))
            for first in range(0, len(rows), self._read_rows)
        ]
        return self._stacked(pieces, len(rows))

    def iter_blocks(self, block_rows: int) -> Iterator[tuple[int, sp.csr_array]]:
        for start in range(0, self.n_cells, block_rows):
            stop = min(start + block_rows, self.n_cells)
            pieces = [
                self._csr(self._read(slice(first, min(first + self._read_rows, stop))))
                for first in range(start, stop, self._read_rows)
            ]
            yield start, self._stacked(pieces, stop - start)

    def _csr(self, dense: np.ndarray) -> sp.csr_array:
        """A dense block as CSR (its zeros left out); float16 and big-endian values, which
        scipy.sparse refuses and anndata stores as they came, converted exactly first."""
        return _float_csr(sp.csr_array(readable_values(dense)))

    def _stacked(self, pieces: list, n_rows: int) -> sp.csr_array:
        """The CSR pieces of consecutive rows as one block of ``n_rows`` rows."""
        if len(pieces) == 1:
            return pieces[0]
        if not pieces:
            return sp.csr_array((n_rows, self.shape[1]), dtype=np.float64)
        return _float_csr(sp.vstack(pieces, format="csr"))


def _file_stamp(file) -> tuple[int, int] | None:
    """The (size, modification time in ns) of the open h5py ``file``, from its file
    descriptor: the file being read, even once another file is moved to its path
    (which changes nothing the fit reads). None for a zarr store, a file object, a
    closed file or a driver without a descriptor."""
    try:
        descriptor = file.id.get_vfd_handle()
        status = os.fstat(descriptor)
    except Exception:  # not h5py, closed, or a driver (fileobj, core) with no descriptor
        return None
    return int(status.st_size), int(status.st_mtime_ns)


@contextmanager
def _x_read_errors(name, failure=None):
    """Reading rows of the stored X of ``name``: a chunk that cannot be read (damaged on
    disk, or changed or closed mid-fit) is a `ReadError` naming the file, for the reason
    ``failure()`` gives when it gives one (the cause, where HDF5 names a B-tree signature
    or an identifier); running out of memory stays a `MemoryError`."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as error:  # h5py, zarr and numcodecs raise many types
        reason = (failure() if failure is not None else None) or (
            f"cannot read X ({describe_error(error)})"
        )
        raise ReadError(name, reason) from None


def _float_csr(block) -> sp.csr_array:
    """``block`` in the dtypes every source gives: float64 values, int64 indices and row
    pointers (scipy gives indices the pointers' dtype). Cast to int32 first, a stored
    index of 2**32 + j wrapped to the valid gene j and was fitted as it; as int64 the
    count check (`scan_blocks`) refuses it as outside the matrix."""
    return sp.csr_array(
        (
            block.data.astype(np.float64, copy=False),
            block.indices.astype(np.int64, copy=False),
            block.indptr.astype(np.int64, copy=False),
        ),
        shape=block.shape,
    )


def _shape_attribute(group):
    """The ``shape`` attribute of a stored sparse matrix, or the ``h5sparse_shape`` of
    one anndata stored before 0.7 (which anndata still reads: its streamed fit was refused
    as "no 'shape' attribute ... write the file with anndata"); None without either."""
    for name in ("shape", "h5sparse_shape"):
        if name in group.attrs:
            return group.attrs[name]
    return None


def _stored_shape(shape, name: str) -> tuple[int, int]:
    """The ``shape`` attribute of a stored sparse matrix: two counts, which must be whole
    non-negative numbers (a cast would truncate them)."""
    values = np.asarray(shape)
    if (
        values.shape != (2,)
        or not np.issubdtype(values.dtype, np.integer)
        or bool(np.any(values < 0))
    ):
        raise ValueError(
            f"{name}: corrupt CSR matrix: its shape attribute {values.tolist()} is not two "
            "non-negative integers"
        )
    return int(values[0]), int(values[1])


def _check_fits(shape, n_obs: int | None, n_vars: int | None, what: str = "X's shape") -> None:
    """`ValueError` unless the matrix shape ``shape`` fits the ``n_obs`` rows of obs and
    the ``n_vars`` rows of var (None: not known, not checked). anndata checks this when it
    reads a file into memory, not when it opens it backed; a phantom shape would fit a
    million genes that are not there."""
    for axis, (table, length) in enumerate((("obs", n_obs), ("var", n_vars))):
        if length is not None and int(length) != int(shape[axis]):
            raise ValueError(
                f"{what} {[int(n) for n in shape]} does not fit the {int(length)} rows of {table}"
            )


def _converted(path: Path, genes_as_rows: bool) -> StoredRowsSource:
    """The Matrix Market file or 10x folder ``path`` converted into a temporary ``.h5ad``."""
    import h5py

    from ._convert import mtx_to_h5ad  # pandas: loaded only for a file that needs it

    folder = tempfile.TemporaryDirectory(prefix="vbsnmf-stream-")
    try:
        converted = mtx_to_h5ad(
            path, Path(folder.name) / "counts.h5ad", genes_as_rows=genes_as_rows
        )
        handle = h5py.File(converted, "r")
    except BaseException:
        folder.cleanup()
        raise
    source = StoredRowsSource(handle["X"], owner=(handle, folder))
    source.name = str(path)
    return source


def _open_stored(path: Path, kind: str) -> StoredRowsSource:
    """The X of ``path``, an ``.h5ad`` (or an ``.h5``) or a ``.zarr`` (`input_kind`
    ``kind``), checked and failing as `vbsnmf.io.read` checks and fails: a `ReadError`
    naming the file."""
    from ._read import anndata_errors, check_hdf5

    if kind == "10x_h5":
        raise ReadError(
            path,
            "a Cell Ranger .h5 has no X to stream: read it with vbsnmf.io.read, or "
            "fit its folder or an .h5ad",
        )
    if kind == "h5ad":
        check_hdf5(path, "h5ad")
    with anndata_errors(path, ".zarr store" if kind == "zarr" else ".h5ad file"):
        store = _open_store(path, kind)
        try:
            source = _stored_x(store, path)
        except BaseException:
            if kind == "h5ad":
                store.close()
            raise
    source.name = str(path)
    return source


def _open_store(path: Path, kind: str):
    """The root group of the store ``path``; a zarr store's X checked for missing
    chunks (`vbsnmf.io._read.check_zarr_chunks`)."""
    if kind == "h5ad":
        import h5py

        return h5py.File(path, "r")
    import zarr

    from ._read import check_zarr_chunks

    store = zarr.open_group(str(path), mode="r")
    check_zarr_chunks(path, store.get("X"))
    return store


def _stored_x(store, path: Path) -> StoredRowsSource:
    """The source of ``store``'s X, whose shape must fit its obs and var tables (as
    anndata requires when it reads the file), which must be there (`check_obs_var`); our
    checks' errors as `ReadError`."""
    from ._read import check_obs_var
    from ._stored import check_encoded

    if "X" not in store:
        raise ReadError(path, "has no X matrix to stream")
    check_encoded(path, store["X"])
    check_obs_var(path, store)
    try:
        source = _source_of(store["X"], owner=store)
        lengths = (_table_length(store, "obs"), _table_length(store, "var"))
        _check_fits(source.shape, *lengths, what="X's shape attribute")
    except (ValueError, TypeError) as error:
        raise ReadError(path, str(error)) from None
    return source


def _source_of(stored, owner=None) -> CellSource:
    """The source of a stored X: a sparse group (`StoredRowsSource`, CSR only) or a dense
    array (`DenseRowsSource`), streamed either way."""
    if _is_dense_array(stored):
        return DenseRowsSource(stored, owner=owner)
    return StoredRowsSource(stored, owner=owner)


def _is_dense_array(stored) -> bool:
    """An h5py Dataset or zarr Array (anything with a shape and a dtype but no group's
    ``indptr``, and not a scipy matrix in memory, which a backed view's X is): a dense X as
    AnnData stores it."""
    return (
        hasattr(stored, "shape")
        and hasattr(stored, "dtype")
        and not hasattr(stored, "keys")
        and not sp.issparse(stored)
    )


# X's encodings that stream by cells: a CSC X would read every stored column for each block
_STREAMED_ENCODINGS = ("csr_matrix", "array")


def read_h5ad_backed(path: str | os.PathLike):
    """Open an ``.h5ad`` file backed (``anndata.read_h5ad(path, backed="r")``: X stays on
    disk) when its X streams by cells: a CSR matrix, or a dense array (read a block of
    rows at a time); None when it does not (read it with `read_h5ad`). `ReadError` if it
    cannot be opened, or if X does not fit obs and var or its index arrays are not
    integers (checked here, before anything is fitted); row pointers are checked here
    too, indices as they stream."""
    import anndata as ad
    import h5py

    from ._read import anndata_errors, check_hdf5, encoding_of

    path = Path(path)
    check_hdf5(path, "h5ad")
    with anndata_errors(path, ".h5ad file"):
        with h5py.File(path, "r") as handle:
            stored = handle.get("X")
            encoding = encoding_of(stored) if stored is not None else ""
            if encoding in _STREAMED_ENCODINGS:
                # anndata opens it backed trusting X's shape attribute (a phantom
                # [30, 10**6] would fit a million genes) and casts its indices to integers
                _stored_x(handle, path)
                # result.h5ad copies .raw as it is: one anndata cannot read made a
                # result nothing could open, reported as a success
                _check_raw(handle, path)
        if encoding not in _STREAMED_ENCODINGS:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = ad.read_h5ad(path, backed="r")
    if adata.n_obs == 0 or adata.n_vars == 0:
        adata.file.close()
        raise ReadError(path, f"holds an empty matrix of shape {adata.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.obs_names_make_unique()
        adata.var_names_make_unique()
    return adata


def _check_raw(store, path: Path) -> None:
    """A `ReadError` unless the ``.raw`` of the open ``.h5ad`` ``store`` (if any) has an X
    whose shape fits obs and raw's var, with row (CSR) or column (CSC) pointers of that
    length, as anndata requires when it reads the file (a backed open does not look)."""
    import h5py

    from ._read import encoding_of

    raw = store.get("raw")
    if not isinstance(raw, h5py.Group) or "X" not in raw:
        return
    stored = raw["X"]
    try:
        if isinstance(stored, h5py.Group):
            if _shape_attribute(stored) is None or "indptr" not in stored:
                raise ValueError("raw/X is not a sparse matrix as anndata stores one")
            shape = _stored_shape(_shape_attribute(stored), "raw/X")
        elif isinstance(stored, h5py.Dataset) and stored.ndim == 2:
            shape = stored.shape
        else:
            raise ValueError("raw/X is not a matrix")
        lengths = (_table_length(store, "obs"), _table_length(raw, "var"))
        _check_fits(shape, *lengths, what="raw/X's shape")
        if isinstance(stored, h5py.Group):
            axis = 1 if encoding_of(stored) == "csc_matrix" else 0
            if stored["indptr"].shape != (shape[axis] + 1,):
                raise ValueError(
                    f"raw/X: corrupt sparse matrix: {stored['indptr'].shape[0]} pointers "
                    f"for its shape {list(shape)}"
                )
    except (ValueError, TypeError) as error:
        raise ReadError(path, str(error)) from None


def _table_length(store, name: str) -> int | None:
    """Rows of the obs or var table ``name`` as anndata stores it (its index array, named
    by the ``_index`` attribute); None when the store has no such table (X's obs and var
    are checked to be there: `vbsnmf.io._read.check_obs_var`), or stores it as anndata
    did before 0.7."""
    table = store.get(name)
    index = None if table is None else table.attrs.get("_index")
    if index is None or index not in table:
        return None
    return int(table[index].shape[0])


def declared_shape(X) -> tuple[int, int] | None:
    """Cells x genes as a 10x folder's ``matrix.mtx`` header declares them (before the
    conversion `open_source` makes, which takes minutes on a large folder); None for any
    other ``X``, or a folder the conversion will refuse with its own message. The genes
    may be fewer once converted (Gene Expression features only), never more."""
    if not isinstance(X, (str, os.PathLike)) or not Path(X).is_dir():
        return None
    from ._read import input_kind, mtx_header, tenx_files

    try:
        if input_kind(X) != "10x":
            return None
        n_genes, n_cells = mtx_header(tenx_files(Path(X))[0]).size[:2]
    except (ReadError, OSError, ValueError):
        return None
    return int(n_cells), int(n_genes)


def open_source(X, *, genes_as_rows: bool | None = None) -> CellSource:
    """A `CellSource` for ``X``: a path (``.h5ad``, ``.zarr``, ``.mtx``/``.mtx.gz``, a 10x
    folder), a backed AnnData or its ``X``, an AnnData in memory, or a matrix.

    Matrix Market files are converted by `vbsnmf.io.mtx_to_h5ad` into a temporary folder,
    removed when the source is closed (`CellSource.close`, or a ``with`` block; a source
    of a path closes its file then, one of a backed AnnData leaves it open): a 10x folder
    holds genes as rows; a lone ``.mtx`` needs ``genes_as_rows`` (True: rows are genes,
    False: rows are cells), which nothing in the file says (`ValueError` without it, as
    `vbsnmf.io.read` refuses it).
    """
    if isinstance(X, (str, os.PathLike)):
        path = Path(X)
        check_exists(path)
        from ._read import input_kind  # pandas: loaded only for a path

        kind = input_kind(path)
        if kind == "mtx" and genes_as_rows is None:
            # guessed as 10x's genes x cells, a cells x genes file was fitted transposed
            raise ValueError(
                f"{quoted_path(path)}: a Matrix Market file does not say which axis holds the "
                "genes; convert it once with vbsnmf.io.mtx_to_h5ad(path, 'counts.h5ad', "
                "genes_as_rows=True) (rows are genes, the 10x convention) or genes_as_rows=False "
                "(rows are cells) and fit the .h5ad, or fit its 10x folder"
            )
        if kind in ("10x", "mtx"):
            return _converted(path, kind == "10x" or genes_as_rows)
        return _open_stored(path, kind)
    try:
        import anndata as ad
    except ImportError:  # pragma: no cover - anndata is a dependency
        ad = None
    filename, backed = None, False
    if ad is not None and isinstance(X, ad.AnnData):
        filename, backed, n_obs, n_vars = X.filename, X.isbacked, X.n_obs, X.n_vars
        X = anndata_x(X)
        if backed and X is None:  # as a path to the file is refused (`_stored_x`)
            raise ReadError(filename, "has no X matrix to stream")
        if backed:
            # anndata opens a file backed without checking its X (sparse or dense) against
            # obs and var, as it does when it reads one into memory
            try:
                _check_fits(X.shape, n_obs, n_vars)
            except ValueError as error:
                raise ReadError(filename, str(error)) from None
    if is_backed_sparse(X):
        return _backed_x(X.group, filename)
    if backed and _is_dense_array(X) and not isinstance(X, np.ndarray):
        # a backed dense X (an h5py Dataset): streamed as a path's is, never read whole
        return _backed_x(X, filename)
    return InMemorySource(check_counts(X, warn_non_integer=False))  # scanned later


def _backed_x(group, filename) -> StoredRowsSource:
    """The source of a backed AnnData's X, named by its file (the AnnData's ``filename``,
    or the HDF5 file of its X alone) as a path's source is (`_stored_x`: its checks'
    errors a `ReadError` naming the file)."""
    filename = filename or getattr(getattr(group, "file", None), "filename", None)
    if filename is None:  # a zarr group of an X alone
        return _source_of(group)
    try:
        source = _source_of(group)
    except (ValueError, TypeError) as error:
        raise ReadError(filename, str(error)) from None
    source.name = str(filename)
    return source


__all__ = ["CellSource", "InMemorySource", "StoredRowsSource", "open_source"]
