"""Input checks shared by every entry point: one place that turns bad counts and bad
settings into errors. Each public entry point (the estimators, `vbsnmf.fit_dask`,
`vbsnmf.tl`) checks its input once, here, and passes checked values down."""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from . import _kernels
from ._utils import is_integer, warn_user


class CorruptMatrixError(ValueError):
    """A sparse matrix whose structure is damaged (index arrays that disagree, indices out
    of range): a broken file or object, not a question of which values it holds."""


class CountRangeError(ValueError):
    """Counts above the largest a fit of its dtype resolves (`MAX_COUNT`)."""


class NonCountWarning(UserWarning):
    """The matrix holds non-integer values; the Poisson model expects raw counts."""

    __module__ = "vbsnmf"  # as tracebacks show it: its public name, not the private module


def _first_positions(mask_rows, mask_cols, limit=3) -> str:
    pairs = [f"({int(r)}, {int(c)})" for r, c in zip(mask_rows[:limit], mask_cols[:limit])]
    more = ", ..." if len(mask_rows) > limit else ""
    return ", ".join(pairs) + more


# The values no count may be, each with its test, in the order messages name them.
BAD_COUNT_TESTS = (("NaN", np.isnan), ("infinite", np.isinf), ("negative", lambda v: v < 0))


def _entries_at(label: str, where: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> str:
    """The bad values ``where`` (their places among the values checked) of the kind
    ``label``, as a matrix's are named: "2 negative entries at (row, column) (3, 4), (5, 0)",
    the first three of them."""
    return (
        f"{where.size} {label} entr{'y' if where.size == 1 else 'ies'} at (row, column) "
        f"{_first_positions(rows[where], cols[where])}"
    )


def bad_count_problems(values: np.ndarray, positions, describe=_entries_at) -> list[str]:
    """What is wrong with the stored ``values`` (``positions()``: their rows and columns,
    called only when a value is wrong): how many are NaN, infinite or negative, and where
    the first ones of each are, one phrase per kind, e.g. "1 negative entry at (row,
    column) (3, 4)"; empty if every value is a finite count. ``describe(label, where, rows,
    columns)`` words a kind ``label`` found at the places ``where`` (`fit_triplets` names
    the first by its place among the counts too)."""
    problems = []
    rows_cols = None
    for label, test in BAD_COUNT_TESTS:
        where = np.flatnonzero(test(values))
        if where.size:
            rows, cols = rows_cols = rows_cols or positions()
            problems.append(describe(label, where, rows, cols))
    return problems


# The largest count a variational fit accepts, by the dtype of its factors. Measured with
# benchmarks/count_range.py (one count c among 60 x 40 Poisson(2) counts, K=3, 150
# iterations, 4 seeds): in float64 the ELBO never decreased up to c = 3e13, decreased in
# 3 of 4 fits at 1e14 (by 2e-8 relative; 2e-7 at 1e15, 1e-2 at 1e25), was positive at
# 1e200 (impossible for a lower bound of a log-probability) and +inf at 1e300. In float32
# the final ELBO stayed within 1e-3 relative of float64's up to 3e7, not from 1e8 on;
# 2**24 is also where float32 stops holding every integer.
MAX_COUNT = {np.dtype(np.float64): 1e13, np.dtype(np.float32): float(2**24)}


def max_count(dtype) -> float:
    """The largest count a fit whose factors are ``dtype`` accepts (see `MAX_COUNT`)."""
    return MAX_COUNT[np.dtype(dtype)]


def exact_float_dtype(values: np.ndarray) -> type:
    """float32 when every value is exact in it (counts up to 2**24 are), else float64.

    Used where counts are stored: the readers, the engine's `_data.CountData` and the
    classical solvers' stored entries.
    """
    if values.dtype == np.float32:
        return np.float32
    step = 1 << 20  # a block at a time: no nnz-sized temporary
    for start in range(0, values.shape[0], step):
        block = np.asarray(values[start : start + step], dtype=np.float64)
        with np.errstate(over="ignore"):  # past float32's range: inf, hence inexact
            if not np.array_equal(block.astype(np.float32), block):
                return np.float64
    return np.float32


def check_sparse_structure(
    matrix, name: str = "X", *, first_row: int = 0, fingerprint: bool = False
) -> int | None:
    """Check the index arrays of a scipy sparse matrix before anything reads through them.

    A CSR/CSC matrix (also BSR) must have ``indptr`` of the right length, starting at 0,
    never decreasing and ending within ``indices`` and ``data``, and indices in range; a
    COO matrix rows and columns in range. Such a corrupt matrix (a damaged file, arrays
    edited by hand) would otherwise crash the interpreter in scipy or a kernel, or fit
    silently wrong.

    Returns
    -------
    int or None
        With ``fingerprint``, the fingerprint of its nonzero entries (see
        `_kernels.check_compressed`), rows numbered from ``first_row``: the same for the
        same entries whatever their storage order, layout, repeats (summed, as the fits
        sum them) or split into row blocks (added modulo 2**64). Without, None: the hash
        is most of the check's time, and only checkpoints and streamed fits use it.

    Raises
    ------
    ValueError
        The structure is invalid; the message names ``name`` and the first bad position.
    """
    layout = matrix.format
    n_rows, n_cols = matrix.shape
    if layout != "bsr":  # BSR stores blocks, (n_blocks, r, c)
        check_value_array(name, layout, matrix.data)
    if layout == "coo":
        arrays = (matrix.row, matrix.col) if hasattr(matrix, "row") else matrix.coords
        check_index_arrays(name, layout, *arrays)
        arrays = tuple(_native(array) for array in arrays)
        if not arrays[0].shape[0] == arrays[1].shape[0] == matrix.data.shape[0]:
            raise CorruptMatrixError(
                f"{name}: corrupt COO matrix (row, col and data differ in length)"
            )
        values = _kernel_values(matrix.data, name)
        position, hashed = _kernels.check_coordinates(
            arrays[0], arrays[1], values, n_rows, n_cols, first_row, fingerprint
        )
        if position < matrix.data.shape[0]:
            raise CorruptMatrixError(
                f"{name}: corrupt COO matrix: the entry at stored position {position} has "
                f"(row, column) ({int(arrays[0][position])}, {int(arrays[1][position])}) "
                f"outside its shape {matrix.shape}"
            )
        return int(hashed) if fingerprint else None
    if layout not in ("csr", "csc", "bsr"):
        raise ValueError(f"{name}: unsupported sparse format {layout!r}")
    check_index_arrays(name, layout, matrix.indptr, matrix.indices)
    indptr, indices = _native(matrix.indptr), _native(matrix.indices)
    if layout != "bsr" and matrix.indices.shape[0] != matrix.data.shape[0]:
        raise CorruptMatrixError(
            f"{name}: corrupt {layout.upper()} matrix: {matrix.indices.shape[0]} indices but "
            f"{matrix.data.shape[0]} values"
        )
    major_is_row = layout != "csc"
    n_major, n_minor = (n_rows, n_cols) if major_is_row else (n_cols, n_rows)
    data = matrix.data
    if layout == "bsr":  # checked on its grid of blocks; the values are not fingerprinted
        block_rows, block_cols = matrix.blocksize
        n_major, n_minor = n_rows // block_rows, n_cols // block_cols
        data = np.zeros(matrix.indices.shape[0])
    if matrix.indptr.shape[0] != n_major + 1:
        raise CorruptMatrixError(
            f"{name}: corrupt {layout.upper()} matrix: indptr has {matrix.indptr.shape[0]} "
            f"entries for {n_major} {'rows' if major_is_row else 'columns'} (expected "
            f"{n_major + 1})"
        )
    values = _kernel_values(data, name)
    problem, position, hashed = _kernels.check_compressed(
        indptr, indices, values, n_minor, first_row, major_is_row, fingerprint
    )
    if problem:
        major = "row" if major_is_row else "column"
        minor = "column" if major_is_row else "row"
        reason = {
            1: f"indptr starts at {int(matrix.indptr[0])}, not 0",
            2: f"indptr decreases after {major} {position}",
            3: f"indptr ends at {int(matrix.indptr[-1])}, beyond the "
            f"{min(matrix.indices.shape[0], data.shape[0])} stored entries",
            4: f"the {minor} index {int(matrix.indices[position]) if problem == 4 else 0} at "
            f"stored position {position} is outside 0..{n_minor - 1}"
            + _entry_major(indptr, position, major, first_row if major_is_row else 0, layout),
        }[problem]
        raise CorruptMatrixError(f"{name}: corrupt {layout.upper()} matrix: {reason}")
    if fingerprint and layout != "bsr" and not _kernels.indices_increase(indptr, indices):
        hashed = _summed_fingerprint(indptr, indices, values, matrix.shape, major_is_row, first_row)
    return int(hashed) if fingerprint else None


def _entry_major(indptr: np.ndarray, position: int, major: str, first: int, layout: str) -> str:
    """`` (in row i)`` for the stored entry at ``position`` of a CSR (CSC: column), rows
    numbered from ``first``: a streamed block's stored positions start again at 0 in each
    block, so the position alone pointed at another entry of the file. Nothing for a BSR,
    whose pointers count blocks of rows."""
    if layout == "bsr" or position >= indptr[-1]:
        return ""
    return f" (in {major} {int(np.searchsorted(indptr, position, side='right')) - 1 + first})"


def _summed_fingerprint(indptr, indices, values, shape, major_is_row: bool, first_row: int):
    """The fingerprint of a checked CSR (CSC: ``major_is_row`` False) with its repeated
    entries summed, as every fit reads them: hashed one by one, a count stored as 1 + 2
    had another fingerprint than the same count stored as 3, and a checkpoint of the one
    was refused for the other as written for other data. Copies, so the caller's arrays
    are not sorted in place."""
    layout = sp.csr_array if major_is_row else sp.csc_array
    summed = layout((values.astype(np.float64), indices.copy(), indptr.copy()), shape=shape)
    summed.sum_duplicates()
    n_minor = shape[1] if major_is_row else shape[0]
    _, _, hashed = _kernels.check_compressed(
        summed.indptr, summed.indices, summed.data, n_minor, first_row, major_is_row, True
    )
    return hashed


def check_row_pointers(indptr: np.ndarray, n_rows: int, n_stored: int, name: str) -> None:
    """The row pointers of a CSR matrix whose indices stay on disk (a streamed file): the
    part of `check_sparse_structure` that needs ``indptr`` only, O(rows). The indices are
    checked block by block as they are read (`_svi.scan_source`).

    Raises
    ------
    ValueError
        Wrong length, not starting at 0, decreasing, or ending beyond the ``n_stored``
        entries.
    """
    if indptr.ndim != 1 or indptr.shape[0] != n_rows + 1:
        raise CorruptMatrixError(
            f"{name}: corrupt CSR matrix: indptr has {indptr.shape[0]} entries for {n_rows} "
            f"rows (expected {n_rows + 1})"
        )
    if indptr[0] != 0:
        raise CorruptMatrixError(f"{name}: corrupt CSR matrix: indptr starts at {indptr[0]}, not 0")
    decreasing = np.flatnonzero(np.diff(indptr) < 0)
    if decreasing.size:
        raise CorruptMatrixError(
            f"{name}: corrupt CSR matrix: indptr decreases after row {decreasing[0]}"
        )
    if indptr[-1] > n_stored:
        raise CorruptMatrixError(
            f"{name}: corrupt CSR matrix: indptr ends at {indptr[-1]}, beyond the {n_stored} "
            "stored entries"
        )


def check_index_arrays(name: str, layout: str, *arrays) -> None:
    """`CorruptMatrixError` unless every array of indices is 1-D integers (a cast of float
    indices would truncate them: 0.7 to 0)."""
    for array in arrays:
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise CorruptMatrixError(
                f"{name}: corrupt {layout.upper()} matrix: index arrays must be 1-D "
                f"integers, got {array.dtype} of shape {array.shape}"
            )


def check_value_array(name: str, layout: str, values) -> None:
    """`CorruptMatrixError` unless the stored values are 1-D (one per index; a column of
    them, (nnz, 1), is no layout the kernels read)."""
    if values.ndim != 1:
        raise CorruptMatrixError(
            f"{name}: corrupt {layout.upper()} matrix: its values must be 1-D, got shape "
            f"{values.shape}"
        )


def _native(array: np.ndarray) -> np.ndarray:
    """``array`` in the machine's byte order (h5py gives a big-endian file's arrays as
    stored; the kernels read native numbers only)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def native_index_arrays(matrix):
    """``matrix`` (a checked scipy sparse matrix) with its index arrays in the machine's
    byte order and signed: itself when they are, else a matrix sharing its values."""
    if matrix.format == "coo":
        arrays = (matrix.row, matrix.col) if hasattr(matrix, "row") else matrix.coords
        if all(_scipy_index_dtype(array) for array in arrays):
            return matrix
        return type(matrix)(
            (matrix.data, tuple(_signed(_native(array)) for array in arrays)), shape=matrix.shape
        )
    if _scipy_index_dtype(matrix.indptr) and _scipy_index_dtype(matrix.indices):
        return matrix
    arrays = (matrix.data, _signed(_native(matrix.indices)), _signed(_native(matrix.indptr)))
    return type(matrix)(arrays, shape=matrix.shape)


def small_dense(matrix, name: str) -> np.ndarray:
    """``matrix`` (a scipy sparse matrix of factor size: cells or genes x K, a mask of
    factors) as a dense array, its index arrays checked (`check_sparse_structure`) and
    made signed first: ``toarray`` wrote through an index beyond the shape outside its
    array, silently, and refused unsigned index arrays (BPCells' uint64) with scipy's
    "unsupported data types in input"."""
    if matrix.format in ("csr", "csc", "coo", "bsr"):
        if matrix.dtype.kind in "biuf":  # other values: the caller's own dtype error
            check_sparse_structure(matrix, name)
        matrix = native_index_arrays(matrix)
    return matrix.toarray()


def _scipy_index_dtype(array: np.ndarray) -> bool:
    """Whether scipy's sparse routines take ``array`` as an index array as it is: native
    and signed. Unsigned ones (BPCells wrote ``indptr`` as uint64 until 2024, and anndata
    reads it as stored) they refuse, with "unsupported data types in input"."""
    return array.dtype.isnative and array.dtype.kind != "u"


def _signed(array: np.ndarray) -> np.ndarray:
    """The (checked, in range) index array ``array`` in int64 if it is unsigned."""
    return array.astype(np.int64) if array.dtype.kind == "u" else array


def repeated_negative(rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> int | None:
    """The stored position of a negative value among entries whose (row, column) repeats,
    or None. Readers sum repeated entries, as scipy does, and a sum can hide a negative
    count (-1 + 2 = 1) from the check of the counts; sorts only when a value is negative."""
    negative = values < 0
    if not negative.any():
        return None
    order = np.lexsort((cols, rows))
    same = (np.diff(rows[order]) == 0) & (np.diff(cols[order]) == 0)
    repeated = np.zeros(order.shape[0], dtype=bool)
    repeated[1:] |= same
    repeated[:-1] |= same
    hidden = order[repeated & negative[order]]
    return int(hidden.min()) if hidden.size else None


def check_count_dtype(dtype, name: str = "X") -> None:
    """Refuse a ``dtype`` that cannot hold counts: `TypeError` unless it is numbers or
    booleans (bytes, strings), `ValueError` for complex numbers (scikit-learn's wording).
    The kernels cannot read either, and a cast to float would drop an imaginary part."""
    dtype = np.dtype(dtype)
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise TypeError(f"{name}: counts must be numbers, got dtype {dtype}")
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"{name} must be real counts: Complex data not supported ({dtype})")


def _is_pandas_missing(value) -> bool:
    """pandas' missing value ``pd.NA`` (of its nullable dtypes), known without importing
    pandas."""
    kind = type(value)
    return kind.__name__ == "NAType" and kind.__module__.split(".")[0] == "pandas"


def numbers_from_objects(array: np.ndarray, name: str) -> np.ndarray:
    """An object array of numbers (e.g. from pandas) in float64. Text is refused: numpy
    would parse ``"3"`` as 3, so a column of strings passed for counts. pandas' missing
    value ``pd.NA`` (an Int64 or Float64 column's) becomes NaN, as None does, so the
    counts' check names it and where it is (as scikit-learn reads it: "contains NaN");
    numpy's cast raised Python's own TypeError on it."""
    text = next((value for value in array.flat if isinstance(value, (str, bytes))), None)
    if text is not None:
        raise TypeError(f"{name} must hold numbers, not text (it holds {text!r:.40})")
    try:
        return array.astype(np.float64)
    except (TypeError, ValueError, OverflowError) as error:
        missing = np.frompyfunc(_is_pandas_missing, 1, 1)(array).astype(bool)
        if missing.any():
            filled = array.copy()
            filled[missing] = np.nan
            return numbers_from_objects(filled, name)
        raise TypeError(f"{name} must hold numbers: {error}") from None


def check_finite_product(product: np.ndarray, what: str) -> None:
    """A `ValueError` when an ``inverse_transform``'s ``product`` left the float range of
    its dtype: finite factors too large for it gave inf entries without a word."""
    if not np.all(np.isfinite(product)):
        raise ValueError(
            f"{what} passes the largest {product.dtype} ({np.finfo(product.dtype).max:.3g}): "
            "X's factors are too large for it"
        )


def readable_dtype(dtype: np.dtype) -> np.dtype | None:
    """The dtype numbers in ``dtype`` are converted to before scipy and the kernels read
    them, or None when they read it as it is: float16 widened to float32 (exact; scipy
    refuses it), wider floats (``np.longdouble``) to float64, any other number in a
    non-native byte order (h5py, ``np.frombuffer(..., ">f8")``) to the native one."""
    if dtype.kind not in "biuf":
        return None
    if dtype.kind == "f" and dtype.itemsize == 2:
        return np.dtype(np.float32)
    if dtype.kind == "f" and dtype.itemsize > 8:
        return np.dtype(np.float64)
    return None if dtype.isnative else dtype.newbyteorder("=")


def widen_to_sum(matrix):
    """``matrix`` in float64 if it is sparse and may hold repeated entries in a narrow
    integer or boolean dtype, which scipy sums in that dtype when it converts the matrix
    (uint8: 200 + 100 = 44; bool: True + True = 1), or in float32 (float16) with a total
    beyond the whole numbers that dtype holds, 2**24 (2**11): scipy's sums of such repeats
    were rounded (2**24 and a thousand repeats of 1 summed to 2**24 + 660); else
    ``matrix`` itself, its index arrays made signed (`native_index_arrays`) where they are
    read: scipy's check of the format refused unsigned ones ("unsupported data types in
    input") from `tl.count_split` and a mask."""
    if not sp.issparse(matrix):
        return matrix
    kind, size = matrix.dtype.kind, matrix.dtype.itemsize
    if kind not in "biuf" or size >= 8:
        return matrix
    if matrix.format in ("csr", "csc", "coo"):
        matrix = native_index_arrays(matrix)
    if matrix.format in ("csr", "csc") and matrix.has_canonical_format:
        return matrix
    if kind == "f":
        # below the dtype's whole-number range every partial sum of whole counts is exact
        exact = 2.0 ** (np.finfo(matrix.dtype).nmant + 1)
        if not float(np.sum(matrix.data, dtype=np.float64)) > exact:
            return matrix
    return matrix.astype(np.float64)


def readable_values(values: np.ndarray) -> np.ndarray:
    """``values`` in a dtype scipy and the kernels read (`readable_dtype`: float16 and
    non-native byte orders, which scipy.sparse refuses, converted exactly)."""
    readable = readable_dtype(values.dtype)
    return values if readable is None else cast_quietly(values, readable)


def cast_quietly(values, dtype):
    """``values`` (an array or sparse matrix) as ``dtype``. A longdouble beyond float64
    becomes inf, which the count checks refuse by name: without numpy's overflow warning
    before it (under warnings as errors, instead of it)."""
    with np.errstate(over="ignore"):
        return values.astype(dtype)


def _kernel_values(data: np.ndarray, name: str) -> np.ndarray:
    """The stored values in a dtype the kernels read (`readable_dtype`, booleans as
    bytes)."""
    check_count_dtype(data.dtype, name)
    readable = readable_dtype(data.dtype)
    if readable is not None:
        return cast_quietly(data, readable)
    if data.dtype == bool:
        return data.view(np.uint8)
    return data


def data_fingerprint(data) -> str:
    """The fingerprint (16 hex digits) of the entries of a `_vb.CountData`, as
    `check_sparse_structure` computes it: what a checkpoint records of its data."""
    _, _, fingerprint = _kernels.check_compressed(
        data.indptr, data.indices, data.counts, data.shape[1 - data.major], 0, data.major == 0, True
    )
    return f"{int(fingerprint):016x}"


def combine_fingerprints(*fingerprints: int) -> str:
    """Fingerprints of consecutive row blocks (each numbered from its first row) added
    into the fingerprint of the whole matrix, as `data_fingerprint` formats it."""
    return f"{sum(fingerprints) % 2**64:016x}"


class CheckedCounts(NamedTuple):
    """`checked_counts`' result: the counts as `check_counts` returns them, the
    fingerprint of their entries if it was asked for (`check_sparse_structure`, rows
    numbered from the ``first_row`` given; else None) and whether any count is not an
    integer."""

    matrix: sp.sparray | sp.spmatrix
    fingerprint: int | None
    non_integer: bool


def check_counts(
    X, *, name: str = "X", warn_non_integer: bool = True, fit_dtype=np.float64, first_row: int = 0
):
    """Validate a count matrix and return it as a scipy sparse array (COO/CSR/CSC kept).

    ``fit_dtype``: the dtype of the factors of the fit the counts are for; counts above
    `max_count` of it are refused. None: no upper limit (the classical solvers).
    ``first_row``: the row of the whole matrix that ``X``'s first row is (a block of a
    streamed matrix), so that the positions in messages are the whole matrix's.

    Raises
    ------
    TypeError
        ``X`` is not a 2-D numeric array or scipy sparse matrix (a path: the message
        says how to read or stream it).
    ValueError
        ``X`` has a zero-length axis, a corrupt sparse structure, or negative, NaN,
        infinite or too large entries (the message says how many of each and where the
        first ones are, as (row, column)).
    """
    checked = checked_counts(X, name=name, fit_dtype=fit_dtype, first_row=first_row)
    if warn_non_integer and checked.non_integer:
        warn_non_counts(name)
    return checked.matrix


def warn_non_counts(name: str = "X") -> None:
    """The `NonCountWarning` for a matrix ``name`` that holds non-integer values."""
    warn_user(
        f"{name} holds non-integer values; vbsnmf's Poisson model expects raw counts "
        "(not normalised or log-transformed data).",
        NonCountWarning,
    )


def check_not_empty(shape: tuple[int, ...], name: str = "X") -> None:
    """At least one row and one column (a matrix in memory, or a dask array's shape)."""
    n_rows, n_cols = shape
    if n_rows == 0 or n_cols == 0:
        # Worded as scikit-learn words it, so that its estimator checks recognise it.
        axis = "sample" if n_rows == 0 else "feature"
        raise ValueError(
            f"{name} has 0 {axis}(s) (shape={tuple(shape)}) while a minimum of 1 is "
            "required: it needs at least one row and column"
        )


def is_backed_sparse(X) -> bool:
    """anndata's sparse dataset on disk (a backed AnnData's X, CSR or CSC): a ``group`` of
    the stored arrays and a ``format``, read a block at a time, never by numpy."""
    return hasattr(X, "group") and getattr(X, "format", None) in ("csr", "csc")


def refuse_pydata_sparse(X, name: str = "X") -> None:
    """Refuse an array of the pydata `sparse` library (dask's sparse chunks) by name: numpy
    cannot read it, and its own error advised densifying it (``todense``)."""
    kind = type(X)
    if kind.__module__.split(".")[0] != "sparse" or not hasattr(X, "to_scipy_sparse"):
        return
    method = "tocsr" if hasattr(X, "tocsr") else "to_scipy_sparse"  # GCXS has no tocsr
    raise TypeError(
        f"{name} is a pydata sparse array ({kind.__module__}.{kind.__qualname__}), which "
        "vbsnmf does not read: convert it to scipy sparse without densifying it, with "
        f"X.{method}() in memory, or for a dask array of such chunks "
        f"X.map_blocks(lambda b: b.{method}())"
    )


def sparse_frame_as_coo(X):
    """A pandas DataFrame whose columns are all sparse with fill value 0 as a scipy COO
    matrix, as scikit-learn reads it (``np.asarray`` would make it dense: cells x genes x 8
    bytes, which no memory check sees); any other ``X`` as it is (another fill value is the
    value of every entry not stored)."""
    # the accessor exists only when every column is sparse (pandas is not imported here)
    if getattr(X, "ndim", None) != 2 or not hasattr(X, "dtypes") or not hasattr(X, "sparse"):
        return X
    # no columns: pandas' conversion fails ("no types given"), the empty check explains it
    if X.shape[1] == 0 or not all(dtype.fill_value == 0 for dtype in X.dtypes):
        return X
    return X.sparse.to_coo()


def refuse_path_or_anndata(X, name: str, *, reading: str, fitting: str) -> None:
    """A `TypeError` naming a path, an AnnData or a sparse matrix's stored group given
    where a matrix is expected (numpy's conversion said "could not convert string to
    float", "setting an array element with a sequence" or "must be 2-D"); ``reading``
    and ``fitting`` end the advice on each (how else to read the file, which arguments of
    `vbsnmf.tl.nmf` fit the AnnData); None is named as such."""
    if X is None:  # np.asarray(None) is a 0-D object array: "shape ()" would say nothing
        raise TypeError(f"{name} is None: pass a count matrix (cells x genes)")
    if isinstance(X, bytes):  # numpy's 0-D array: "shape ()" would say nothing
        raise TypeError(
            f"{name} is bytes ({X[:60]!r}), not a matrix; a path is given as a str or a "
            "pathlib.Path"
        )
    if isinstance(X, (str, os.PathLike)):
        raise TypeError(
            f"{name} is a path ({os.fspath(X)!r}), not a matrix: read it with "
            f"vbsnmf.io.read(path){', ' + reading if reading else ''}"
        )
    if all(hasattr(X, part) for part in ("obs", "var", "X")):  # an AnnData in memory
        raise TypeError(
            f"{name} is an AnnData: pass its counts (adata.X, a layer) as {name}, or fit it "
            f"with vbsnmf.tl.nmf(adata{fitting}), which stores the result in it"
        )
    refuse_closed_file(X, name)
    if _is_stored_sparse_group(X):
        raise TypeError(
            f"{name} is a sparse matrix stored in a file (an HDF5 or zarr group), not a "
            "matrix: read it into memory with anndata.io.read_elem(group), or stream it "
            "with VBNMF(solver='svi').fit(anndata.io.sparse_dataset(group))"
        )


def _is_stored_sparse_group(X) -> bool:
    """An h5py or zarr group holding a sparse matrix as anndata stores one (numpy read it
    as the array of its member names, "must be 2-D, got an array of shape (3,)")."""
    if type(X).__module__.split(".")[0] not in ("h5py", "zarr") or not hasattr(X, "keys"):
        return False
    return {"data", "indices", "indptr"} <= set(X.keys())


def refuse_closed_file(X, name: str = "X") -> None:
    """A `ValueError` for a backed AnnData's X (or an h5py dataset) whose file was closed
    (``adata.file.close()``, the X kept): h5py's own answer, ValueError "Not an id of a
    file object" or RuntimeError "identifier is not of specified type", named neither.
    `refuse_path_or_anndata` asks it of every matrix the estimators take."""
    h5py = sys.modules.get("h5py")
    if h5py is None:  # never imported: X is no h5py object
        return
    stored = getattr(X, "group", X)  # anndata's backed sparse matrix keeps its h5py group
    if isinstance(stored, (h5py.Dataset, h5py.Group)) and not stored.id.valid:
        raise ValueError(
            f"{name} is stored in an HDF5 file that was closed: open it again "
            "(anndata.read_h5ad(path, backed='r')) and pass that AnnData or its X"
        )


def checked_counts(
    X, *, name: str = "X", fit_dtype=np.float64, first_row: int = 0, fingerprint: bool = False
) -> CheckedCounts:
    """`check_counts` without its warning, with what its checks found on the way: a
    streamed scan (`_svi.scan_blocks`) needs the fingerprint (``fingerprint=True``; None
    otherwise) and the non-integer flag of each block, which it took in two more passes
    of its own (a scan of a 25,000 x 33,514 file with 50.3M nonzeros: 1.53 s with them,
    1.01 s without, 0.29 s of it reading)."""
    refuse_path_or_anndata(
        X, name, reading="or stream it from disk with VBNMF(solver='svi')", fitting=""
    )
    # the matrix as named (a layer's advice named X), without a label's note ("adata.X
    # (genes in mask_var)")
    shown = name.split(" (")[0]
    refuse_masked(
        X,
        name,
        f"pass the counts as {shown}.filled(0); to leave the masked entries out of a fit, "
        "give them to VBNMF.fit(X, mask=...) (a sparse or boolean matrix)",
    )
    refuse_pydata_sparse(X, name)
    X = sparse_frame_as_coo(X)
    hashed = None
    if sp.issparse(X):
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got {X.ndim}-D")
        if X.format in ("csr", "csc", "coo", "bsr"):
            hashed = check_sparse_structure(
                X, name, first_row=first_row, fingerprint=fingerprint and X.format != "bsr"
            )
        if X.format in ("csr", "csc", "coo"):
            matrix = native_index_arrays(X)
        else:
            # a copy of our own, its indices sorted in place: a BSR's CSR comes unsorted, and
            # its fingerprint would then be taken again on a sorted copy
            matrix = X.tocsr()
            matrix.sort_indices()
        readable = readable_dtype(matrix.data.dtype)
        if readable is not None:
            matrix = cast_quietly(matrix, readable)
        matrix = widen_to_sum(matrix)  # every route's conversion to CSR sums the repeats
    else:
        try:
            dense = np.asarray(X)
        except Exception as error:  # e.g. ragged lists
            raise TypeError(f"{name} must be a 2-D array or scipy sparse matrix: {error}") from None
        if dense.ndim != 2:
            # "Reshape your data" is the phrase scikit-learn's estimator checks look for.
            raise ValueError(
                f"{name} must be 2-D, got an array of shape {dense.shape}; Reshape your data "
                "with X.reshape(1, -1) for one row or X.reshape(-1, 1) for one column"
            )
        if dense.dtype == object:
            dense = numbers_from_objects(dense, name)
        # by kind: numpy counts timedelta64 among its numbers, which scipy then refused
        # in words naming no X
        if dense.dtype.kind not in "biufc":
            raise TypeError(f"{name} must hold numbers, got dtype {dense.dtype}")
        readable = readable_dtype(dense.dtype)
        if readable is not None:
            dense = cast_quietly(dense, readable)
        matrix = sp.coo_array(dense)
    check_count_dtype(matrix.data.dtype, name)
    check_not_empty(matrix.shape, name)
    data = matrix.data
    limit = None if fit_dtype is None else max_count(fit_dtype)
    bad_counts, non_integer = _scan_values(
        data,
        [test for _, test in BAD_COUNT_TESTS] + ([] if limit is None else [lambda v: v > limit]),
    )
    problems = []
    if any(bad_counts[:3]):
        coo = matrix.tocoo() if matrix.format != "coo" else matrix
        problems = bad_count_problems(data, lambda: (coo.row + first_row, coo.col))
    if problems:
        # "Negative values in data" is the phrase scikit-learn's estimator checks look for.
        lead = "Negative values in data: " if bad_counts[2] else ""
        raise ValueError(
            f"{lead}{name} must hold non-negative finite counts; found " + "; ".join(problems)
        )
    if limit is not None and bad_counts[3]:
        _refuse_large_counts(matrix, name, np.dtype(fit_dtype), bad_counts[3], first_row)
    if limit is not None and sp.issparse(X) and _may_sum_above(matrix, limit):
        # Repeated entries are summed into one count before the fit: the limit is the sums'.
        summed = matrix.astype(np.float64).tocsr()  # astype copied: summed in place
        summed.sum_duplicates()
        over = int(np.count_nonzero(summed.data > limit))
        if over:
            _refuse_large_counts(summed, name, np.dtype(fit_dtype), over, first_row)
    if fingerprint and hashed is None:  # dense, or BSR (its check reads the grid alone)
        hashed = check_sparse_structure(matrix, name, first_row=first_row, fingerprint=True)
    return CheckedCounts(matrix, hashed, non_integer)


def _may_sum_above(matrix, limit: float) -> bool:
    """Whether repeated entries of sparse ``matrix`` may sum above ``limit``: it holds
    repeats (CSR/CSC: checked without a copy; COO: assumed) and its total exceeds it."""
    if matrix.format in ("csr", "csc") and _kernels.csr_is_canonical(
        matrix.indptr, matrix.indices, matrix.data
    ):
        return False
    return float(np.sum(matrix.data, dtype=np.float64)) > limit


_SCAN_BLOCK = 1 << 20  # values per block of `_scan_values`


def _scan_values(data: np.ndarray, tests) -> tuple[list[int], bool]:
    """How many values fail each of ``tests`` (elementwise predicates), and whether any
    value is not an integer, a block at a time: no temporary of the size of ``data`` (at
    the lung-atlas shape those were 1.4 GiB on top of the 1.8 GiB matrix)."""
    counts = [0] * len(tests)
    non_integer = False
    integral = np.issubdtype(data.dtype, np.integer) or data.dtype == bool
    for start in range(0, data.shape[0], _SCAN_BLOCK):
        block = data[start : start + _SCAN_BLOCK]
        for index, test in enumerate(tests):
            counts[index] += int(np.count_nonzero(test(block)))
        if not (integral or non_integer):
            non_integer = bool(np.any(block != np.round(block)))
    return counts, non_integer


def _refuse_large_counts(
    matrix, name: str, fit_dtype: np.dtype, count: int, first_row: int = 0
) -> None:
    """The error for ``count`` counts above `max_count` of ``fit_dtype`` (positions as in
    `check_counts`)."""
    limit = max_count(fit_dtype)
    data = matrix.data
    coo = matrix.tocoo() if matrix.format != "coo" else matrix
    where = np.flatnonzero(data > limit)
    raise CountRangeError(
        f"{name} holds {count} count{'s' if count > 1 else ''} above {limit:,.0f}, the "
        f"largest a {fit_dtype.name} fit resolves (the largest is {float(data.max())!r}, at "
        f"(row, column) {_first_positions(coo.row[where] + first_row, coo.col[where])}); "
        f"{large_count_advice(fit_dtype)}"
    )


def large_count_advice(fit_dtype) -> str:
    """What to do about counts above `max_count` of ``fit_dtype`` (matrices and tensors)."""
    if np.dtype(fit_dtype) == np.float32:
        limit = max_count(np.float64)
        return f"fit with dtype=np.float64, which resolves counts up to {limit:,.0f}"
    return "counts of molecules or reads are far smaller: check the input"


def check_flag(value, name: str, allow_none: bool = False) -> bool | None:
    """A True/False parameter (or None where ``allow_none``): a string such as "no" is
    truthy and would silently mean True, so only booleans pass."""
    if allow_none and value is None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        options = "True, False or None" if allow_none else "True or False"
        raise TypeError(f"{name} must be {options}, got {value!r}")
    return bool(value)


def check_verbose(value) -> bool:
    """``verbose``: True/False, or a level as scikit-learn takes it (an int >= 0, any level
    above 0 printing); a string such as "no" is refused (`TypeError`), not taken as True,
    and a level below 0 is a `ValueError`, as every other integer below its minimum."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if is_integer(value):
        if value < 0:
            raise ValueError(f"verbose must be True, False or an int >= 0, got {value!r}")
        return value > 0
    raise TypeError(f"verbose must be True, False or an int >= 0, got {value!r}")


def check_accelerate(value, learned: bool) -> bool:
    """The estimators' ``accelerate``: True, False, or None for the default (SQUAREM for
    the ``learned`` prior, plain ascent for the fixed one)."""
    accelerate = check_flag(value, "accelerate", allow_none=True)
    return learned if accelerate is None else accelerate


def check_callback(callback):
    """A fit's ``callback``: None or callable (checked before any pass, not at the first
    call, which a short fit may never make); returned as the fit calls it (`_guarded`)."""
    if callback is not None and not callable(callback):
        raise TypeError(
            f"callback must be callable as callback(n_iter, params, elbo_trace) or None, "
            f"got {callback!r}"
        )
    return None if callback is None else _guarded(callback)


def _guarded(callback):
    """``callback`` given a copy of q holding its arrays, read-only for the call, and a
    copy of the trace: it may read and keep both, but not change the fit (a NaN it wrote
    into q went into the result; an array it bound to a field of q, ``params.row_shape =
    ...``, became the fit's q; an entry it appended to the trace, into ``elbo_trace_``)."""

    def guarded(n_iter, params, elbo_trace):
        frozen = [a for a in _arrays_of(params) if a.flags.writeable]
        for array in frozen:
            array.flags.writeable = False
        try:
            return callback(n_iter, _fields_copied(params), list(elbo_trace))
        finally:
            _thaw(frozen)

    return guarded


def _fields_copied(value):
    """``value`` with every dataclass and list in it copied, field by field and item by
    item (the arrays shared): a tensor's q holds its modes' arrays in lists."""
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_fields_copied(item) for item in value)
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return value
    copied = copy.copy(value)
    for field in dataclasses.fields(value):
        # object.__setattr__: a frozen dataclass's copy is set the same way
        object.__setattr__(copied, field.name, _fields_copied(getattr(value, field.name)))
    return copied


def _thaw(arrays) -> None:
    """Make ``arrays`` writeable again; a view only once its base is (so in rounds)."""
    while arrays:
        failed = []
        for array in arrays:
            try:
                array.flags.writeable = True
            except ValueError:
                failed.append(array)
        if len(failed) == len(arrays):
            raise RuntimeError("the callback's arrays could not be made writeable again")
        arrays = failed


def _arrays_of(value):
    """The numpy arrays a q holds, in its fields (dataclasses) and their fields."""
    if isinstance(value, np.ndarray):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _arrays_of(getattr(value, field.name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _arrays_of(item)


def refuse_masked(values, name: str, advice: str) -> None:
    """A `TypeError` ("``name`` is a masked array: ``advice``") for a masked array with
    masked entries: np.asarray drops the mask, and the hidden values would be fitted."""
    if np.ma.is_masked(values):
        raise TypeError(f"{name} is a masked array: {advice}")


def check_n_components(n_components, shape) -> int:
    """``n_components`` must be an integer in [1, min(shape)]."""
    if not is_integer(n_components):
        raise TypeError(f"n_components must be an integer, got {n_components!r}")
    if not 1 <= n_components <= min(shape):
        raise ValueError(
            f"n_components={n_components} is out of range: it must be between 1 and "
            f"min(n_rows, n_cols) = {min(shape)} for a matrix of shape {tuple(shape)}"
        )
    return int(n_components)


def check_iterations(value, name: str, minimum: int = 1) -> int:
    """An integer parameter (iterations, epochs) of at least ``minimum``."""
    if not is_integer(value):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def refuse_non_number(value, name: str) -> None:
    """A `TypeError` unless ``value`` is a real number: float() would take True as 1.0 and
    text such as "1e-3" as a number, and np.timedelta64(3) (an np.integer) as 3.0."""
    if not (is_integer(value) or isinstance(value, (float, np.floating))):
        raise TypeError(f"{name} must be a number, got {value!r:.80}")


def check_tolerance(value, name: str = "tol") -> float:
    """A finite, non-negative float parameter (a relative tolerance)."""
    refuse_non_number(value, name)
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range
        raise ValueError(f"{name} must be a finite number >= 0, got one beyond floats") from None
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def check_positive(value, name: str, *, expected: str = "a positive finite number") -> float:
    """A finite, strictly positive float parameter; ``expected``: what a message says it
    must be (`pl.factors`' ``vmax`` says why too)."""
    refuse_non_number(value, name)
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range
        raise ValueError(f"{name} must be {expected}, got one beyond floats") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


# A Gamma shape above this is a point mass in all but name (coefficient of variation
# 1/sqrt(a) < 1e-3), and the exact ELBO's KL terms, lgamma and digamma of shapes near it,
# are then sums of numbers far larger than a converging fit's change per pass: past 1e9
# (learned prior) and 1e7 (fixed prior at rate 1e12) plain coordinate ascent, which cannot
# lower the ELBO, showed decreasing traces. Below 1e-30 a float32 table holds the shape as 0.
PRIOR_SHAPE_RANGE = (1e-30, 1e6)


def check_prior_shape(value) -> float:
    """A Gamma prior's shape: positive, within `PRIOR_SHAPE_RANGE`."""
    value = check_positive(value, "prior_shape")
    low, high = PRIOR_SHAPE_RANGE
    if not low <= value <= high:
        raise ValueError(
            f"prior_shape must be between {low:g} and {high:g}, got {value!r} (beyond them "
            "the ELBO's terms cannot be computed to the precision of its changes)"
        )
    return value


def check_prior_rate(value, dtype, shape: float = 1.0) -> float:
    """The fixed prior's rate: a normal number of the fit's ``dtype`` (a float32 fit holds
    the rate in float32), and the prior mean ``shape / rate`` within its range."""
    value = check_positive(value, "prior_rate")
    limits = np.finfo(check_float_dtype(dtype))
    name = np.dtype(dtype).name
    if value > float(limits.max):
        raise ValueError(f"prior_rate must be at most {limits.max:g} in {name}, got {value!r}")
    # Below: a float32 rate of 1e-46 is 0, and a prior mean beyond the range made
    # SQUAREM's steps overflow (NaN ELBO in float32 at shape 1e3, rate 2e-38).
    if value < float(limits.tiny):
        raise ValueError(f"prior_rate must be at least {limits.tiny:g} in {name}, got {value!r}")
    if shape / value > float(limits.max):
        raise ValueError(
            f"the prior mean prior_shape / prior_rate = {shape:g} / {value:g} is beyond "
            f"{name}'s range ({limits.max:g}): raise prior_rate"
        )
    return value


def check_float_dtype(dtype) -> np.dtype:
    """``np.float32`` or ``np.float64``, the two dtypes the engine computes in."""
    try:
        checked = np.dtype(dtype)
    except TypeError:  # not a dtype at all: the same message as a wrong one
        checked = None
    # "is None" first: np.dtype(None) is float64, so None compares equal to it.
    if checked is None or checked not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be np.float32 or np.float64, got {dtype!r}")
    return checked


def check_step_schedule(tau, kappa) -> tuple[float, float]:
    """SVI's step size ``rho_t = (t + tau)^(-kappa)``: ``tau >= 0``, ``kappa`` in (0.5, 1]."""
    tau = check_tolerance(tau, "tau")
    refuse_non_number(kappa, "kappa")
    try:
        kappa_value = float(kappa)
    except OverflowError:  # an int beyond the float range
        kappa_value = np.inf
    if not 0.5 < kappa_value <= 1.0:  # NaN included
        raise ValueError(f"kappa must be in (0.5, 1], got {kappa!r:.40}")
    return tau, kappa_value
