"""Memory guard of the classical solvers: estimate a `NMF` fit's peak and refuse it early.

The guard of `vbsnmf.VBNMF` (`vbsnmf._memory`) for `NMF.fit` and `NMF.fit_transform` (and
`vbsnmf.tl.nmf` with a classical solver, which calls them): the same reading of the memory
available (`vbsnmf._memory.available_memory`, psutil capped by the cgroup's limit), the same
`InsufficientMemoryError` and the same switch, ``VBSNMF_NO_MEMORY_GUARD=1``. The estimate is
the classical solvers' own, by layout (`_data.ClassicData`) and solver, from the shapes, the
stored entries, K and the input's dtype only, before X is validated or copied.

A fit holds, through all of it:

- ``input``: a dense X (and dense weights) as C-ordered float64 (`_data.check_data`): a
  copy of ``n m`` entries unless it is one already;
- ``entries``: a sparse X stored twice, by rows and by columns (`_data.EntryPair`), at most
  8 bytes a value and 4 an index per entry and copy, and 8 more a weight per entry of the
  ``pattern`` layout (sparse weights: their stored entries; sparse X under a loss
  undefined at zero, `defined_at_zero`: the entries of dense weights > 0, or every stored
  entry of an X that stores them all) and of the exclusion list of the ``weighted`` one
  (sparse X, dense weights: the entries of weight other than 1); beside it, for dense
  weights, the two boolean masks of their shape that pick those;
- ``factors``: W and H, (n + m) x K float64, from the start on.

and, at the peak, the largest of the transients of its phases (`_phase_transients`; the
build and the start run before W and H exist, so the factors' bytes count for them too):

- ``build``: a sparse X converted to canonical float64 CSR (another layout, dtype or
  index width: ``nnz`` x 12 bytes) and the values' copy the transposition reads; for the
  Frobenius loss also the blocks of squares of `_data._row_squares` (24 bytes an entry, at
  most); for dense weights listed as a pattern, the mask of their entries > 0, X's
  nonzeros looked up in it and the weights' COO;
- ``start``: NNDSVD's randomized SVD of X, a few (n + m) x (K + 10) float64 tables, and the
  float64 CSR copy of the stored entries it factorises (36 bytes an entry when the
  columns are tiled, `_kernels.TILE_COLUMNS`: the copy goes through COO), or with dense
  weights the dense copy of X with the entries of weight 0 set to zero;
- ``loss``: the starting loss of the stopping rule (`_nmf.independence_loss`) over the
  stored entries of a sparse X, a few float64 arrays of ``nnz`` (none for the Frobenius
  loss, whose sums are per row);
- ``iterations``: the arrays of the factors' size, each (n + m) x K' floats (K rounded
  up to the SIMD width, `_kernels.padded_width`): the factors after a step, the numerator
  and denominator of the multiplicative update (the Frobenius steps' ``X C`` and
  ``R G``), their padded copies, the row losses; and the dense route's blocks of rows
  (`_data.dense_row_blocks`, at most `_data.DENSE_BLOCK_BYTES` each, or X's size when
  smaller), `_DENSE_BLOCKS_MU` or `_DENSE_BLOCKS_FROBENIUS` of them, which also bound its
  losses'.

The Numba kernels' own buffers are a row's worth (K floats per thread), left out. The
constants below were measured with tracemalloc (tests/test_hostile_thirtyninth_
classicguard.py checks the estimate against a measured peak).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .. import _memory
from .._kernels import TILE_COLUMNS, padded_width
from .._utils import is_integer
from .._validation import check_sparse_structure, exact_float_dtype
from . import _data

# (n + m) x K' float64 arrays alive in an iteration besides the start's W and H: measured
# 2.8 (hals) to 3.8 (mu), sparse and dense.
_ITERATION_ARRAYS = 5
# float64 tables of (n + m) x (K + oversamples) in the randomized SVD of the start (scikit-
# learn's 10 oversamples): measured 2.4 to 2.7.
_SVD_ARRAYS = 4
_SVD_OVERSAMPLES = 10
# Bytes per stored entry of the loss over a sparse X's entries (`_data._entries_loss`: the
# reconstruction at the entries, the values widened, the terms, the floor): measured 42.
_ENTRY_LOSS_BYTES = 48
# Blocks of rows of the dense route held at once. The multiplicative updates': W H, its
# floor, the ratio, (W H)**gamma, the loss's terms, and the values at the nonzeros, whose
# size is the block's nonzero fraction f: measured 5.5 blocks at f = 0.3 and 8.3 at f = 1
# (the same for every loss tried, 2,000 x 1,500), bounded by 5 + 4 f. The Frobenius
# solvers' residual and loss: measured 3.0 for each of them.
_DENSE_BLOCKS_MU = (5.0, 4.0)  # constant, per unit of the nonzero fraction
_DENSE_BLOCKS_FROBENIUS = 3.5
_CSR_FLOAT64_BYTES = 12  # a float64 value and an int32 index per entry
_TILED_CSR_BYTES = 36  # the same through COO: row indices, values and the conversion's
_ROW_SQUARES_BYTES = 24  # `_data._row_squares`: a block's slice and its float64 squares
# per entry of a weighted list (pattern, exclusion) while it is made: the checked copy of
# sparse weights, their COO, the kept rows and columns, the sort order and the values
# looked up
_ENTRY_LIST_BYTES = 64
# per stored entry of a sparse X whose dense weights are listed as a pattern (`_data.
# ClassicData.build`, a loss undefined at zero): its nonzeros' row and column indices and
# the mask of weight > 0 looked up at them; and per entry of weight > 0, the weights' COO
# (two int64 indices and a float64 weight)
_NONZEROS_BYTES = 32
_DENSE_COO_BYTES = 24


def estimate_classic_fit_memory(
    shape: tuple[int, int],
    n_components: int,
    *,
    layout: str,
    solver: str = "mu",
    nnz: int = 0,
    n_weighted: int = 0,
    input_copy: bool = True,
    dense_weights: bool = False,
    weights_copy: bool = True,
    frobenius: bool = False,
    nonzero_fraction: float = 1.0,
    dense_input: bool = False,
    value_itemsize: int = 8,
    converted: bool = True,
) -> dict[str, int]:
    """Bytes a classical `NMF` fit needs at its peak, by part (the module docstring).

    Parameters
    ----------
    shape
        (rows, columns) of X.
    n_components
        K.
    layout
        ``"dense"`` (dense X, optionally dense weights), ``"sparse"`` (sparse X),
        ``"pattern"`` (sparse weights: only their stored entries count) or ``"weighted"``
        (sparse X with dense weights).
    solver
        ``"mu"`` or one of the Frobenius solvers (``"hals"``, ``"als"``, ...).
    nnz
        Stored entries of a sparse X (an upper bound is fine).
    n_weighted
        Entries of the weighted lists: the stored entries of sparse weights
        (``"pattern"``), or the entries of dense weights other than 1 (``"weighted"``).
    input_copy, weights_copy
        Whether a dense X is copied to C-ordered float64 (dense weights: to float64, in
        their own order).
    dense_weights
        Dense weights are given (implied by ``"weighted"``).
    frobenius
        The loss is the Frobenius one (its loss and start are cheaper on a sparse X).
    nonzero_fraction
        The fraction of a dense X's entries that are nonzero (the multiplicative updates
        hold its values there, a block at a time); 1, the bound, when unknown.
    dense_input
        X is dense under the ``"pattern"`` layout (its copy is held while the entries are
        listed; implied by ``"dense"``). A sparse X under the ``"pattern"`` layout with
        ``dense_weights``: the weights are listed at their entries > 0 (``n_weighted`` of
        them), as for a loss undefined at zero.
    value_itemsize
        Bytes of a stored value: 4 where float32 holds every value of a sparse X exactly
        (`_validation.exact_float_dtype`), else 8.
    converted
        Whether a sparse X is converted to canonical float64 CSR (another layout, dtype,
        unsorted or repeated indices, explicit zeros) while it is validated.

    Returns
    -------
    dict
        ``input``, ``entries``, ``factors``, ``transient`` and their ``total``, in bytes.
    """
    if layout not in ("dense", "sparse", "pattern", "weighted"):
        raise ValueError(
            f"layout must be 'dense', 'sparse', 'pattern' or 'weighted', got {layout!r}"
        )
    # Python integers: numpy's int64 wraps past 2**63 without a word
    n_rows, n_cols = (int(n) for n in shape)
    n_components, nnz, n_weighted = int(n_components), int(nnz), int(n_weighted)
    n_entries = n_rows * n_cols
    dense_x = layout == "dense" or (layout == "pattern" and dense_input)
    # dense weights of a sparse X listed as a pattern (a loss undefined at zero)
    listed_weights = layout == "pattern" and not dense_input and dense_weights
    dense_weights = layout == "weighted" or (layout == "dense" and dense_weights)
    input_bytes = 8 * n_entries if dense_x and input_copy else 0
    if dense_weights or listed_weights:
        input_bytes += 8 * n_entries if weights_copy else 0
    index_arrays = 8 * (n_rows + n_cols + 2) * _kernels_tiles(n_cols)  # row pointers
    entries = 0
    if layout in ("sparse", "weighted"):
        # two copies, a value and a 4-byte index per entry
        entries += 2 * nnz * (int(value_itemsize) + 4) + index_arrays
    if layout in ("pattern", "weighted"):
        # the same with a float64 weight per entry
        entries += 2 * n_weighted * 20 + index_arrays
    if layout == "weighted":
        entries += 2 * n_entries  # the masks of weight > 0 and of weight other than 1
    factors = 2 * (n_rows + n_cols) * n_components * 8  # W and H, from the start on
    phases = _phase_transients(
        n_rows,
        n_cols,
        n_components,
        layout=layout,
        solver=solver,
        nnz=nnz,
        n_weighted=n_weighted,
        frobenius=frobenius,
        nonzero_fraction=nonzero_fraction,
        dense_weights=dense_weights,
        converted=converted,
        listed_weights=listed_weights,
        sparse_input=not dense_x,
    )
    # the build and the start run before W and H exist: the factors' bytes are theirs too
    transient = max(
        phases["build"] - factors, phases["start"] - factors, phases["loss"],
        phases["iterations"], 0,
    )  # fmt: skip
    return {
        "input": input_bytes,
        "entries": entries,
        "factors": factors,
        "transient": transient,
        "total": input_bytes + entries + factors + transient,
    }


def _kernels_tiles(n_cols: int) -> int:
    """Column tiles of the kernels' entries (`_kernels.tile_count`), without calling it."""
    return 1 if n_cols <= 2 * TILE_COLUMNS else -(-n_cols // TILE_COLUMNS)


def _phase_transients(
    n_rows, n_cols, n_components, *, layout, solver, nnz, n_weighted, frobenius,
    nonzero_fraction, dense_weights, converted, listed_weights=False, sparse_input=True,
) -> dict[str, int]:  # fmt: skip
    """The transient bytes of each phase of a fit (the module docstring)."""
    n_entries = n_rows * n_cols
    dense_x = layout == "dense"  # the other layouts work on lists of entries
    stored = n_weighted if layout == "pattern" else nnz
    tiled = _kernels_tiles(n_cols) > 1  # the start factorises the entries by rows
    build = 0
    if layout in ("sparse", "weighted"):
        # the canonical float64 copy, and the values narrowed for the transposition
        build = nnz * ((_CSR_FLOAT64_BYTES if converted else 0) + 4)
        if frobenius:
            build += nnz * _ROW_SQUARES_BYTES
    if listed_weights:
        # the mask and X's nonzeros are dropped before the weights' COO is made and listed
        build += max(
            n_entries + nnz * _NONZEROS_BYTES,
            n_weighted * (_DENSE_COO_BYTES + _ENTRY_LIST_BYTES),
        )
    elif layout in ("pattern", "weighted"):
        build += n_weighted * _ENTRY_LIST_BYTES
    if layout == "pattern" and sparse_input:
        # the validated X is held while the pattern's values are looked up in it
        build += nnz * (_CSR_FLOAT64_BYTES if converted else 0)
    svd = _SVD_ARRAYS * (n_rows + n_cols) * (n_components + _SVD_OVERSAMPLES) * 8
    if dense_x:
        start = svd + (8 * n_entries if dense_weights else 0)
    else:
        start = svd + stored * (_TILED_CSR_BYTES if tiled else _CSR_FLOAT64_BYTES)
    loss = 0
    if not dense_x and (layout != "sparse" or not frobenius):
        loss = stored * _ENTRY_LOSS_BYTES
    if layout == "weighted":
        loss += n_weighted * _ENTRY_LOSS_BYTES  # the exclusion's terms, taken off
    iterations = _ITERATION_ARRAYS * (n_rows + n_cols) * padded_width(n_components, np.float64) * 8
    if dense_x:
        # a block is at most `DENSE_BLOCK_BYTES`, and one row (of X or of X transposed)
        # at least; X's own size when it is smaller
        widest_row = 8 * max(n_rows, n_cols)
        block = min(max(_data.DENSE_BLOCK_BYTES, widest_row), 8 * n_entries)
        n_blocks = _DENSE_BLOCKS_FROBENIUS
        if solver == "mu":
            n_blocks = _DENSE_BLOCKS_MU[0] + _DENSE_BLOCKS_MU[1] * nonzero_fraction
        iterations += int(n_blocks * block)
    return {"build": build, "start": start, "loss": loss, "iterations": iterations}


def check_classic_fit_memory(
    X,
    n_components,
    *,
    solver: str,
    frobenius: bool = False,
    weights=None,
    defined_at_zero: bool = True,
) -> dict[str, int] | None:
    """Raise `vbsnmf._memory.InsufficientMemoryError` if a classical fit of ``X`` needs more
    memory than is available; return the estimate (None when it was not checked).
    ``frobenius``: the loss is the Frobenius one; ``defined_at_zero``: the loss is defined
    at p = 0 (`losses.LossSpec.zero_power` is not None). Under a loss that is not, a sparse
    X with dense weights (or with every entry stored) is fitted as a list of its entries of
    weight > 0 (`_data.ClassicData.build`), not as the sparse route's two copies and
    exclusion list, whose estimate was 20 to 60 times the fit's peak (refused fits that
    fitted).

    Called before X is validated or copied. Inputs that are not a 2-D array, sparse matrix
    or numeric pandas DataFrame, weights that are neither, or an ``n_components`` that is
    not an integer between 1 and min(X.shape), are left to the validation that follows,
    which explains them.
    """
    if _memory.guard_disabled() or not is_integer(n_components):
        return None
    value_itemsize, converted, nonzero_fraction = 8, True, 1.0
    if sp.issparse(X) and X.ndim == 2:
        nnz, dense_x, input_copy = int(X.nnz), False, False
        value_itemsize, converted = _stored_form(X)
    elif _plain_array(X) and X.ndim == 2 and X.dtype != object:
        nnz, dense_x = 0, True
        input_copy = not (X.dtype == np.float64 and X.flags.c_contiguous)
        if solver == "mu" and X.size:  # a pass over X, no copy of it
            nonzero_fraction = np.count_nonzero(X) / X.size
    elif _memory._is_numeric_frame(X):  # a table read with pandas: converted to an array
        nnz, dense_x, input_copy = 0, True, True
    else:
        return None
    shape = tuple(int(n) for n in X.shape)
    if not 1 <= n_components <= min(shape):  # the K-range error says it better
        return None
    n_weighted, weights_copy, dense_weights = 0, False, False
    if weights is None:
        layout = "dense" if dense_x else "sparse"
        if not (dense_x or defined_at_zero) and nnz >= shape[0] * shape[1]:
            layout, n_weighted = "pattern", nnz  # every entry stored: listed as a pattern
    elif sp.issparse(weights) and weights.ndim == 2:
        layout, n_weighted = "pattern", int(weights.nnz)
    elif _plain_array(weights) and weights.ndim == 2 and weights.shape == shape:
        # the validation converts dense weights to float64, in the order they have
        weights_copy = weights.dtype != np.float64
        dense_weights = True
        if dense_x:
            layout = "dense"
        elif not defined_at_zero:
            # listed at their entries > 0, which must be X's nonzeros (the validation
            # refuses others before listing them)
            n_positive = _count_entries(weights, lambda block: block > 0)
            layout, n_weighted = "pattern", min(n_positive, nnz)
        else:
            layout, n_weighted = "weighted", _count_entries(weights, lambda block: block != 1)
    else:  # weights of another kind or shape: the validation explains them
        return None
    estimate = estimate_classic_fit_memory(
        shape,
        int(n_components),
        layout=layout,
        solver=solver,
        nnz=nnz,
        n_weighted=n_weighted,
        input_copy=input_copy,
        dense_weights=dense_weights,
        weights_copy=weights_copy,
        frobenius=frobenius,
        nonzero_fraction=nonzero_fraction,
        dense_input=dense_x,
        value_itemsize=value_itemsize,
        converted=converted,
    )
    available = _memory.available_memory()
    if available is None or estimate["total"] <= available:
        return estimate
    labels = {
        "input": "X as float64",
        "entries": "stored entries",
        "factors": "factors",
        "transient": "working arrays",
    }
    parts = ", ".join(
        f"{label} {_memory.format_bytes(estimate[name])}"
        for name, label in labels.items()
        if estimate[name]
    )
    described = f"a {'dense' if dense_x else 'sparse'} X of {shape[0]} x {shape[1]}"
    if not dense_x:
        described += f" ({nnz:,} stored entries)"
    advice = (_memory.CLASSIC_DENSE_ADVICE if dense_x else "") + _memory.CLASSIC_ADVICE
    raise _memory.InsufficientMemoryError(
        f"this classical fit (solver={solver!r}) needs about "
        f"{_memory.format_bytes(estimate['total'])} of memory ({parts}) for {described} "
        f"with K={n_components}, but only {_memory.format_bytes(available)} is available. "
        f"{advice}; set VBSNMF_NO_MEMORY_GUARD=1 to fit anyway."
    )


def _plain_array(value) -> bool:
    """A numpy array the validation takes (a memmap too), not an ``np.matrix``, which
    scikit-learn's refuses with a TypeError saying so: a guard that estimated it refused
    one too large as out of memory instead, advice that did not help."""
    return isinstance(value, np.ndarray) and not isinstance(value, np.matrix)


def _stored_form(X) -> tuple[int, bool]:
    """For sparse X: the bytes of a stored value (4 where float32 is exact,
    `exact_float_dtype`, read a block at a time) and whether validating X converts it (not
    canonical float64 CSR without explicit zeros, `_data.check_data`). The bounds (8, True)
    for a layout whose ``data`` is not one value per stored entry, or is not numeric."""
    if (
        X.format not in ("csr", "csc", "coo")
        or getattr(X.data, "dtype", np.dtype(object)).kind not in "biuf"
    ):
        return 8, True
    itemsize = 4 if exact_float_dtype(X.data) == np.float32 else 8
    signed = X.format == "csr" and all(a.dtype.kind == "i" for a in (X.indptr, X.indices))
    if not (signed and X.dtype == np.float64):  # converted (unsigned indices made signed)
        return itemsize, True
    # scipy's canonical-format test reads through the index arrays: a damaged matrix
    # could crash it (uint64 ones it refused outright), so they are checked first, as the
    # validation that follows checks them
    check_sparse_structure(X, "X")
    converted = not (X.has_canonical_format and np.count_nonzero(X.data) == X.data.shape[0])
    return itemsize, converted


def _count_entries(weights: np.ndarray, where) -> int:
    """Entries of dense ``weights`` for which ``where`` (of a block of rows, a boolean
    array) holds, a block of rows at a time: no mask of their shape."""
    count = 0
    for rows in _data.dense_row_blocks(*weights.shape):
        count += int(np.count_nonzero(where(weights[rows])))
    return count
