"""Finding the raw counts of an AnnData (``X``, a layer or ``.raw``) and checking them.

Shared by `nmf` and `project`: both need non-negative integer counts, and when a user
hands them log-normalised ``X`` the error says where the counts probably are.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import counted, is_dask_array, one_launch_at_a_time
from .._validation import (
    CorruptMatrixError,
    CountRangeError,
    check_counts,
    check_flag,
    numbers_from_objects,
    refuse_masked,
)
from ..io._stored import anndata_x


def _is_backed(matrix) -> bool:
    """A matrix on disk: anndata's backed CSR/CSC dataset, or an h5py dataset."""
    return hasattr(matrix, "to_memory") or type(matrix).__module__.startswith("h5py")


def in_memory(matrix):
    """A backed matrix (`_is_backed`) read into memory as stored (sparse stays sparse);
    in-memory matrices are returned unchanged."""
    if not _is_backed(matrix):
        return matrix
    return matrix.to_memory() if hasattr(matrix, "to_memory") else matrix[()]


def select_counts(adata, *, layer: str | None, use_raw: bool) -> tuple[object, pd.Index, str]:
    """The matrix to factorise, its gene names, and a label saying where it came from."""
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"layer must be a string or None, got {layer!r}")
    use_raw = check_flag(use_raw, "use_raw")
    if layer is not None and use_raw:
        raise ValueError("pass either layer= or use_raw=True, not both")
    if layer is not None:
        # a numpy string as text: its repr ("np.str_('counts')") named another layer
        layer = str(layer)
        if layer not in adata.layers:
            available = ", ".join(repr(name) for name in adata.layers) or "none"
            raise ValueError(f"adata has no layer {layer!r} (layers: {available})")
        return adata.layers[layer], adata.var_names, f"adata.layers[{layer!r}]"
    if use_raw:
        if adata.raw is None:
            raise ValueError("use_raw=True but adata.raw is None")
        return in_memory(adata.raw.X), adata.raw.var_names, "adata.raw.X"
    matrix = anndata_x(adata)
    if matrix is None:
        raise ValueError("adata.X is None; pass layer= to name the counts")
    return in_memory(matrix), adata.var_names, "adata.X"


# Appended to the label of the counts (`select_counts`) when only the genes in mask_var are
# fitted: the matrix checked is then part of the one the label names.
MASKED = " (genes in mask_var)"


# `adata.X` among the places `_other_counts` names (the command line names its file's X).
X_HINT = "adata.X (no layer= nor use_raw=True)"

# Stored values of a backed matrix that `_looks_like_counts` reads at a time.
_HINT_BLOCK_VALUES = 1 << 22


def _stored_blocks(matrix):
    """The stored values of a backed matrix (`_is_backed`; anndata's sparse dataset: its
    ``data``; an h5py array: blocks of rows), about `_HINT_BLOCK_VALUES` at a time."""
    if hasattr(matrix, "to_memory"):  # anndata's backed CSR or CSC
        data = matrix.group["data"]
        for start in range(0, data.shape[0], _HINT_BLOCK_VALUES):
            yield data[start : start + _HINT_BLOCK_VALUES]
        return
    rows = max(1, _HINT_BLOCK_VALUES // max(1, matrix.shape[1]))
    for start in range(0, matrix.shape[0], rows):
        yield matrix[start : start + rows]


def _looks_like_counts(matrix) -> bool:
    """Non-negative, finite integers, at least one of them nonzero (checked on the stored
    values only: a backed matrix's a block at a time, a dask array's chunk by chunk, where
    they are). A matrix of zeros holds no counts: named as where they are, it was then
    refused as holding no nonzero count."""
    is_counts, has_nonzero = _count_flags(matrix)
    return is_counts and has_nonzero


def _count_flags(matrix) -> tuple[bool, bool]:
    """Whether the stored values of ``matrix`` are all non-negative, finite integers, and
    whether one of them is nonzero (`_looks_like_counts`)."""
    if _is_backed(matrix):
        # read whole, a backed .raw as large as the streamed X came into memory for a hint
        has_nonzero = False
        for block in _stored_blocks(matrix):
            block_counts, block_nonzero = _count_flags(block)
            if not block_counts:
                return False, has_nonzero
            has_nonzero = has_nonzero or block_nonzero
        return True, has_nonzero
    if is_dask_array(matrix):
        # np.asarray computed a dense dask array whole, and made a 0-d object array of one
        # of sparse chunks (never taken for counts)
        from .._dask._cluster import futures_holder  # dask: loaded only for a dask array

        per_chunk = matrix.map_blocks(
            _count_flags_block,  # not a lambda: see `tl._nmf._count_totals`
            dtype=bool,
            chunks=((1,) * matrix.numblocks[0], (2,) * matrix.numblocks[1]),
        )
        # by the client of persisted chunks, whatever dask's configured scheduler
        flags = np.asarray(per_chunk.compute(scheduler=futures_holder(matrix)))
        return bool(flags[:, 0::2].all()), bool(flags[:, 1::2].any())
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if values.dtype == object:
        # a layer of pandas' nullable Int64 (anndata keeps it as an object array), which
        # the tools fit: left out, the advice was to keep counts the user already kept
        try:
            values = numbers_from_objects(values, "counts")
        except TypeError:  # text, or objects that are not numbers: no counts
            return False, False
    # by kind: numpy counts timedelta64 and complex among its numbers, and a layer of them
    # beside normalised X replaced the error naming X with numpy's about `% 1`
    if values.dtype.kind not in "iuf":
        return False, False
    is_counts = np.all(np.isfinite(values)) and np.all(values >= 0) and np.all(values % 1 == 0)
    return bool(is_counts), bool(np.any(values))


def _count_flags_block(block) -> np.ndarray:
    """`_count_flags` of a dask chunk as a 1 x 2 block (`_count_flags`' task)."""
    return np.array([_count_flags(block)])


def _other_counts(adata, source: str) -> list[str]:
    """Where else than ``source`` counts are: ``adata.X`` (the default of the tools), the
    layers and ``.raw``, as what to pass. X was never named, though the usual slip is to
    pass a layer of normalised values (or a normalised ``.raw``) beside counts in X."""
    source = source.removesuffix(MASKED)  # the matrix the masked genes are part of
    hints = []
    if source != "adata.X":
        matrix = anndata_x(adata)
        if matrix is not None and _looks_like_counts(matrix):
            hints.append(X_HINT)
    hints += [
        f"layer={name!r}"
        for name in adata.layers
        if f"adata.layers[{name!r}]" != source and _looks_like_counts(adata.layers[name])
    ]
    if source != "adata.raw.X" and adata.raw is not None and _looks_like_counts(adata.raw.X):
        hints.append("use_raw=True")
    return hints


def _raw_is_x(adata) -> bool:
    """Whether ``adata.raw.X`` holds the values of ``adata.X`` (of the same genes), as
    ``adata.raw = adata`` leaves it: that keeps X's very arrays, not a copy, and scanpy's
    ``normalize_total`` and ``log1p`` change X in place, so they normalise ``.raw`` with
    it (a copy of the AnnData, as ``copy=True`` takes, then holds two equal matrices).
    Asked only of counts already refused, for the advice."""
    raw = getattr(adata, "raw", None)
    if raw is None or getattr(adata, "isbacked", False):
        return False
    matrix, raw_matrix = anndata_x(adata), raw.X
    if matrix is None or matrix.shape != raw_matrix.shape:
        return False
    if not raw.var_names.equals(adata.var_names):
        return False
    if sp.issparse(matrix) and sp.issparse(raw_matrix):
        return (matrix != raw_matrix).nnz == 0
    if isinstance(matrix, np.ndarray) and isinstance(raw_matrix, np.ndarray):
        return bool(np.array_equal(matrix, raw_matrix))
    return False


def _where_counts_are(adata, source: str) -> str:
    """A hint naming the layers (and ``.raw``) that hold counts, for error messages."""
    hints = _other_counts(adata, source)
    if hints:
        return "the raw counts appear to be in " + " or ".join(hints) + "; pass that instead"
    if source in ("adata.X", "adata.raw.X") and _raw_is_x(adata):
        # "use_raw=True after setting adata.raw" was the advice to one who had set it so
        return (
            "adata.raw holds the values of adata.X, as adata.raw = adata leaves it (it keeps "
            "X's arrays, not a copy, so normalising X in place normalised .raw too); keep "
            "the raw counts before normalising with adata.layers['counts'] = adata.X.copy() "
            "and pass layer='counts' (or set adata.raw = adata.copy() and pass use_raw=True)"
        )
    return (
        "keep the raw counts before normalising, e.g. adata.layers['counts'] = adata.X.copy(), "
        "and pass layer='counts' (or use_raw=True after setting adata.raw)"
    )


def check_count_matrix(
    adata, matrix, source: str, fit_dtype=np.float64, *, require_counts: bool = True, first_row=0
):
    """``matrix`` validated as non-negative integer counts for a fit of ``fit_dtype`` (its
    largest count included), with at least one nonzero count unless ``require_counts`` is
    False (a block of a streamed matrix: `check_has_counts` then takes the total; its
    ``first_row`` places the positions in messages in the whole matrix); `ValueError`
    otherwise. A dask array is checked chunk by chunk where its chunks are computed
    (`_dask_tallies`), with the errors the same matrix gets in memory, and returned as it
    is.

    Unlike `VBNMF`, which only warns on non-integers and, as scikit-learn's NMF, fits a
    matrix of zeros, the scanpy tools refuse both: on an AnnData, non-integer values almost
    always mean normalised or log-transformed ``X``, and no counts at all a matrix other
    than the counts (``X`` left empty while they sit in a layer).
    """
    if is_dask_array(matrix):
        tallies = _dask_tallies(adata, matrix, source, fit_dtype)
        checked, (fractional, nonzero, near) = matrix, tallies
    else:
        with _advised(adata, matrix, source, fit_dtype):
            checked = check_counts(
                matrix,
                name=source,
                warn_non_integer=False,
                fit_dtype=fit_dtype,
                first_row=first_row,
            )
        fractional, nonzero, near = _tallies(checked)
    if fractional and near == fractional:
        # whole counts off by float rounding (arithmetic on them, or counts rebuilt from
        # normalised data): "normalised or log-transformed data?" sent the user looking
        # for counts they hold
        raise ValueError(
            f"{source} holds {counted(fractional, 'non-integer value')}, each within "
            f"{_NEAR_INTEGER:g} (relative) of a whole number: counts with rounding noise "
            "(from arithmetic on them, or counts rebuilt from normalised data)? NMF needs "
            "integer counts: round them first (numpy.rint; of a sparse matrix, its .data)"
        )
    if fractional:
        raise ValueError(
            f"{source} holds {counted(fractional, 'non-integer value')} (normalised or "
            f"log-transformed data?); NMF needs raw counts: {_where_counts_are(adata, source)}"
        )
    if require_counts:
        check_has_counts(adata, float(nonzero), source)
    return checked


# How far (relative to the value) a stored value may lie from a whole number of at least 1 to
# be told as a count with rounding noise rather than as normalised data: float32 arithmetic
# on counts below 1e5 leaves them within a few units in the last place (1.2e-7 relative).
_NEAR_INTEGER = 1e-5


def _tallies(checked) -> np.ndarray:
    """How many of the stored values of counts checked by `check_counts` are not integers,
    how many are nonzero, and how many of the non-integers lie within `_NEAR_INTEGER`
    (relative) of a whole number of at least 1."""
    values = checked.data
    nonzero = np.count_nonzero(values)
    if np.issubdtype(values.dtype, np.integer) or values.dtype == bool:
        return np.array([0, nonzero, 0], dtype=np.int64)
    fractional = np.count_nonzero(values % 1)  # one temporary, as large as the values
    near = 0
    if fractional:  # only then the distances, which take more
        # near a count of at least one: values that round to zero (1e-7 where a count is 0)
        # are rather a matrix of small normalised values, which rounding would empty
        whole = np.rint(values)
        off = np.abs(values - whole)
        near = np.count_nonzero((off > 0) & (whole >= 1) & (off <= _NEAR_INTEGER * whole))
    return np.array([fractional, nonzero, near], dtype=np.int64)


@one_launch_at_a_time  # a Dask task: workers run several at once
def _chunk_tallies(block, source: str, fit_dtype, block_info=None) -> np.ndarray:
    """`_tallies` of one chunk of cells, checked as `check_counts` checks a block of a
    streamed matrix (positions in messages are the whole matrix's), as a 1 x 3 block."""
    first_row = block_info[0]["array-location"][0][0]
    # before check_counts, whose advice (X.filled(0), VBNMF.fit(X, mask=...)) a dask X
    # cannot take: it has no filled method, and its fits take no mask
    refuse_masked(block, source, f"pass its counts as dask.array.ma.filled({source}, 0)")
    checked = check_counts(
        block, name=source, warn_non_integer=False, fit_dtype=fit_dtype, first_row=first_row
    )
    return _tallies(checked).reshape(1, 3)


def _dask_tallies(adata, matrix, source: str, fit_dtype) -> np.ndarray:
    """`_tallies` of a dask array, summed over its chunks of cells: each chunk is checked
    where it is computed, and only three numbers per chunk reach the client."""
    # dask: only for a dask array
    from .._dask._cluster import cells_x_genes, futures_holder

    # one chunk along genes: a row's position is its cell's; a closed source named as the
    # AnnData's, not as a bare "X"
    matrix = cells_x_genes(matrix, source)
    per_chunk = matrix.map_blocks(
        _chunk_tallies,
        source,
        fit_dtype,
        dtype=np.int64,
        chunks=((1,) * matrix.numblocks[0], (3,)),
    )
    with _advised(adata, matrix, source, fit_dtype):
        # by the client of persisted chunks: dask's configured scheduler may be another,
        # whose "Missing dependency" was answered with advice about raw counts
        return per_chunk.sum(axis=0).compute(scheduler=futures_holder(matrix))


@contextlib.contextmanager
def _advised(adata, matrix, source: str, fit_dtype):
    """A `ValueError` about the values of ``matrix`` with where the raw counts probably
    are added; one about a damaged matrix, one without cells or genes, or one about counts
    a float32 fit cannot resolve (its advice is a float64 fit) as it is (which layer holds
    the counts is not the question)."""
    try:
        yield
    except ValueError as error:
        beyond_float32 = isinstance(error, CountRangeError) and np.dtype(fit_dtype) == np.float32
        if isinstance(error, CorruptMatrixError) or beyond_float32 or 0 in matrix.shape:
            raise
        # counts elsewhere (a layer, .raw) keep the advice that names them
        if not _other_counts(adata, source) and _missing_among_counts(matrix):
            # not normalised data: "keep the raw counts before normalising" sent the user
            # looking for counts they hold
            raise ValueError(
                f"{error}: missing values among whole counts, not normalised data "
                "(anndata.concat(join='outer') fills the genes a sample lacks with NaN in a "
                "dense X); join the samples with join='inner' to keep the genes they share, "
                "or fit (or project) each sample apart"
            ) from None
        raise ValueError(
            f"{error}; NMF needs raw counts: {_where_counts_are(adata, source)}"
        ) from None


def _missing_among_counts(matrix) -> bool:
    """Whether ``matrix`` (dense, in memory) holds NaN and otherwise only whole non-negative
    counts: missing values, as ``anndata.concat(join="outer")`` gives a dense X for the
    genes a sample lacks, not normalised data. Read only once the counts were refused. A
    sparse X is joined with zeros, not NaN: its NaN keep the raw-counts advice."""
    if not isinstance(matrix, np.ndarray):
        return False  # sparse, backed or another array type: not read again for a message
    values = matrix
    if values.dtype.kind != "f":
        return False
    missing = np.isnan(values)
    if not missing.any():
        return False
    given = values[~missing]
    return bool(np.isfinite(given).all() and (given >= 0).all() and (given == np.rint(given)).all())


def check_has_counts(adata, total: float, source: str) -> None:
    """`ValueError` when ``total`` (the matrix's count, or its number of nonzeros) is 0."""
    if total == 0:
        if source.endswith(MASKED):
            # the mask's genes are empty there, not the matrix: another matrix is no answer
            raise ValueError(
                f"{source} holds no nonzero count: the genes mask_var selects have no counts "
                f"in {source.removesuffix(MASKED)}; select genes that do"
            )
        hints = _other_counts(adata, source)
        where = f"; the counts appear to be in {' or '.join(hints)}" if hints else ""
        raise ValueError(f"{source} holds no nonzero count: nothing to factorise{where}")
