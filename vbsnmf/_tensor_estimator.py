"""`VBNTF`, the scikit-learn face of the tensor engine in `_tensor.py`.

Input is told apart once, in `check_tensor`: an (nnz, D) coordinate array with optional
values and shape, a pydata ``sparse`` array (imported only when one is passed) or an n-D
scipy.sparse ``coo_array``.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

from . import _model, _tensor
from ._base import Estimator
from ._batch import AcceleratedSaves, AcceleratedState, start_accelerated, trace_arrays
from ._checkpoint import Checkpointer, recorded_seed, restored_elbo_iter, warn_if_beyond
from ._memory import InsufficientMemoryError, available_memory, format_bytes, guard_disabled
from ._svi import refuse_no_nonzeros, resumed_svi_progress
from ._utils import float_indices_hint, is_integer, numba_threads, warn_user
from ._validation import (
    NonCountWarning,
    cast_quietly,
    check_accelerate,
    check_callback,
    check_flag,
    check_float_dtype,
    check_prior_rate,
    check_prior_shape,
    check_step_schedule,
    check_tolerance,
    check_verbose,
    large_count_advice,
    max_count,
    refuse_closed_file,
    refuse_masked,
)
from .io._paths import check_checkpoint_path


def _is_pydata_sparse(X) -> bool:
    """A pydata ``sparse`` array, recognised without importing the package."""
    return type(X).__module__.split(".")[0] == "sparse" and hasattr(X, "nnz")


# Numba's parallel loops take the other modes' indices as one tuple, at most 100 long
MAX_MODES = 101


def check_tensor(coords, values=None, shape=None):
    """Validate a count tensor given by its entries; return ``(coords, values, shape)`` as
    an (nnz, D) int64 array, float64 values and a tuple of D ints.

    ``coords`` is an (nnz, D) integer array (``values`` None means a count of 1 at every
    coordinate; ``shape`` None means one past the largest index of each mode), a pydata
    ``sparse`` array (COO, GCXS, DOK) with fill value 0 or a scipy.sparse ``coo_array`` of
    3 or more dimensions, in which case ``values`` and ``shape`` must be None. Repeated
    coordinates are allowed (their counts are summed later) and so are zero values
    (dropped later). An empty list of coordinates with ``shape`` is the tensor without
    entries.

    Raises
    ------
    TypeError
        None, a path or an AnnData given as ``coords``; coordinates that are not integers
        (booleans and timedelta64 are not; labels and indices held as floats are told
        how to pass them) or are a masked array with masked entries, a 2-D scipy.sparse
        matrix, values that are not real numbers or are a sparse array, a shape that is
        not a sequence of integers, ``values`` numpy takes for one object (a set, a
        generator) or a string (a column's name), or ``values``/``shape`` given with a
        sparse array.
    ValueError
        Coordinates not of two dimensions (records, a MultiIndex and a set of rows are told
        how to pass them), a table (DataFrame) with a column named as counts
        (`COUNT_COLUMNS`: told to pass it as ``values``), ``values`` whose pandas index
        holds the coordinates' labels in another order, fewer than 2 modes, mismatched
        lengths (values of one column told to ravel), an index outside the shape, a shape
        without room for its indices, negative/NaN/infinite values (the
        message says how many and where the first ones are), or a nonzero fill value.
        Coordinates that look like the (D, nnz) layout (``np.nonzero``'s, a sparse
        array's ``.coords``): values of the length of a row, or without values and shape
        more columns than rows (give the values or the shape to fit fewer entries than
        modes); ``np.nonzero``'s tuple of as many entries as modes, which reads both ways.
    """
    _refuse_no_tensor(coords)
    # scipy (1.15 and later) holds an n-D tensor in coo_array; a 2-D one is refused below
    scipy_tensor = sp.issparse(coords) and coords.ndim != 2
    if _is_pydata_sparse(coords) or scipy_tensor:
        if values is not None or shape is not None:
            raise TypeError("values and shape go with a coordinate array, not a sparse array")
        if scipy_tensor:
            tensor = coords.tocoo()
            coords = np.stack(tensor.coords, axis=1)
        else:
            import sparse

            tensor = coords if isinstance(coords, sparse.COO) else sparse.COO(coords)
            if tensor.fill_value != 0:
                raise ValueError(
                    f"the sparse array's fill_value must be 0, got {tensor.fill_value}"
                )
            coords = tensor.coords.T
        values, shape = tensor.data, tensor.shape
    if sp.issparse(coords):
        raise TypeError(
            "coords is a scipy.sparse matrix: a tensor is given as an (nnz, D) array of "
            "coordinates with values (for a matrix, np.stack(X.nonzero(), axis=1) and "
            "X.data of its COO form) or a pydata sparse array; or fit the matrix with VBNMF"
        )
    # np.asarray drops the mask: the masked entries would be fitted
    refuse_masked(coords, "coords", "leave the masked entries out of coords and values")
    given = coords
    # how to transpose what was given: a tuple (np.nonzero's) or a list has no .T
    transpose = "coords.T" if hasattr(given, "T") else "coords.T (np.transpose(coords) here)"
    _refuse_square_nonzero(given)
    _refuse_count_column(given)
    _refuse_reordered_values(given, values)
    coords = _as_array(coords, "coords")
    if coords.shape == (0,) and _n_modes_of(shape):
        # an empty list of entries (a subset without counts): no entries of len(shape) modes
        coords = coords.reshape(0, _n_modes_of(shape))
    # a dense tensor (or a dense count matrix) passed as X: say how to give its entries
    dense_hint = (
        "; for a dense array of counts T, fit np.argwhere(T) with values T[T != 0] and "
        "shape T.shape"
    )
    if coords.ndim != 2:
        hint = dense_hint if coords.ndim > 2 else ""
        index = getattr(given, "index", given)  # a Series' MultiIndex, or the index itself
        if hasattr(index, "codes") and hasattr(index, "levels"):  # a pandas MultiIndex
            counts = " and the Series' values as values" if index is not given else ""
            hint = (
                "; a pandas MultiIndex (one level per mode): pass np.stack(index.codes, "
                f"axis=1) as coords{counts}, with shape tuple(len(level) for level in "
                "index.levels)"
            )
        elif coords.dtype.names:  # a table of records (np.genfromtxt(names=True)'s)
            hint = (
                f"; a structured array (fields {', '.join(coords.dtype.names)}): pass the "
                "modes' fields as columns, numpy.lib.recfunctions.structured_to_unstructured"
                "(coords[[...]]), and the counts' field as values"
            )
        elif coords.shape == (0,):  # an empty list: its modes are unknown
            hint = "; for a tensor without entries pass its shape, a sequence of one size per mode"
        elif coords.ndim == 0 and coords.dtype == object:  # a set, a dict, a generator
            hint = (
                f" (numpy took the {type(given).__name__} for one object); pass a list or an "
                "array of index rows, in the order of the values"
            )
        raise ValueError(
            f"coords must be an (nnz, D) array of indices, got an array of shape "
            f"{coords.shape}{hint}"
        )
    # timedelta64 is a subtype of np.integer, and bool of neither: the kinds say which is which
    if coords.dtype.kind in "bmM" or not (coords.dtype.kind in "iu" or coords.size == 0):
        hint = float_indices_hint(coords, "coords")
        hint += dense_hint if coords.dtype.kind == "f" else ""
        if _holds_labels(coords):
            hint = (
                "; coords hold labels (strings), not indices: number each mode's labels "
                "(pd.factorize(column)[0], or column.cat.codes for a categorical column) and "
                "pass shape, each mode's number of labels"
            )
        elif coords.dtype == object and hasattr(given, "dtypes"):
            # pandas' nullable Int64 columns come out as objects
            hint = "; a DataFrame of indices: pass coords.to_numpy(dtype=np.int64)"
        elif coords.dtype == object:  # Python ints beyond int64, None among the indices
            hint = "; every index must be an integer between 0 and 2**63 - 1"
        raise TypeError(f"coords must be integer indices, got dtype {coords.dtype}{hint}")
    nnz, n_modes = coords.shape
    if n_modes != nnz and values is not None and np.shape(values) == (n_modes,):
        raise ValueError(
            f"values must have shape ({nnz},) to match coords, got ({n_modes},); coords of "
            f"shape {coords.shape} has one column per value: if its rows are the modes, pass "
            f"{transpose}"
        )
    # Without values, (D, nnz) coordinates (np.nonzero's, a sparse array's .coords) read
    # as D entries of nnz modes: possible only for 2 to MAX_MODES rows.
    may_be_transposed = values is None and 2 <= nnz <= MAX_MODES
    transposed_hint = f"; if its rows are the modes, pass {transpose}" if may_be_transposed else ""
    if n_modes < 2:
        raise ValueError(
            f"a tensor needs at least 2 modes (coords of shape (nnz, D >= 2)), got "
            f"D={n_modes}{transposed_hint}"
        )
    if n_modes > MAX_MODES:
        raise ValueError(
            f"a tensor has at most {MAX_MODES} modes here (Numba's parallel loops take the "
            f"modes as one tuple, at most {MAX_MODES - 1} long besides the one updated), "
            f"got D={n_modes}{transposed_hint}"
        )
    if coords.size and np.issubdtype(coords.dtype, np.unsignedinteger):
        beyond = coords > np.iinfo(np.int64).max  # would wrap to negative indices
        if np.any(beyond):
            mode, position = _first_bad(beyond)
            raise ValueError(
                f"coords hold indices beyond 2**63 - 1; entry {position} has index "
                f"{coords[position, mode]} in mode {mode}"
            )
    coords = coords.astype(np.int64, copy=False)
    values = _check_values(values, nnz, coords)
    shape = _check_shape(shape, coords, n_modes, may_be_transposed, transpose)
    return coords, values, shape


def _refuse_no_tensor(coords) -> None:
    """A `TypeError` for None, a path or an AnnData given as the tensor, which numpy read as
    a 0-D array ("got an array of shape ()") or a ragged one ("the maximum number of
    dimension of 64")."""
    how = (
        "a tensor is given as an (nnz, D) integer array of coordinates with their values, "
        "or as a pydata sparse array"
    )
    if coords is None:
        raise TypeError(f"coords is None: {how}")
    if isinstance(coords, (str, bytes, os.PathLike)):
        raise TypeError(
            f"coords is a path ({os.fsdecode(coords)!r}), not a tensor: load it first; {how}"
        )
    if all(hasattr(coords, part) for part in ("obs", "var", "X")):  # an AnnData in memory
        raise TypeError(
            f"coords is an AnnData, a matrix: fit it with vbsnmf.VBNMF or vbsnmf.tl.nmf; {how}"
        )


def _refuse_square_nonzero(given) -> None:
    """A `ValueError` for `np.nonzero`'s tuple (one 1-D index array per mode) of as many
    entries as modes: read as (nnz, D) it is a tensor of its transpose, fitted without a
    word (other lengths are refused below as (D, nnz) coordinates)."""
    if not (isinstance(given, tuple) and len(given) >= 2):
        return
    if all(isinstance(a, np.ndarray) and a.shape == (len(given),) for a in given):
        raise ValueError(
            f"coords is a tuple of {len(given)} index arrays of {len(given)} entries each, "
            "np.nonzero's layout (one array per mode) or one entry per array: pass "
            "np.transpose(coords) for np.nonzero's, np.asarray(coords) for one entry per array"
        )


# Column names a long table gives its counts (compared in lower case): such a table passed
# whole as coords was fitted with its counts as one more mode, every entry a count of 1.
COUNT_COLUMNS = frozenset(
    {
        "count",
        "counts",
        "n_counts",
        "total_counts",
        "value",
        "values",
        "umi",
        "umis",
        "umi_count",
        "umi_counts",
        "reads",
        "read_count",
        "read_counts",
    }
)


def _refuse_count_column(given) -> None:
    """A `ValueError` for a table (a pandas or polars DataFrame) given as ``coords`` with a
    column named as counts (`COUNT_COLUMNS`): its counts would be fitted as the indices of
    one more mode, with or without ``values``, and nothing else tells them apart."""
    columns = getattr(given, "columns", None)
    if columns is None:
        return
    names = [name for name in columns if isinstance(name, str)]
    counts = [name for name in names if name.strip().lower() in COUNT_COLUMNS]
    if not counts:
        return
    modes = [name for name in columns if name not in counts]
    raise ValueError(
        f"coords is a table with a column named {counts[0]!r}, which reads as counts, not "
        "as a mode's indices: fitted, its counts would be one more mode of the tensor. Pass "
        f"the modes' columns as coords and the counts as values, coords=table[{modes!r}], "
        f"values=table[{counts[0]!r}] (or rename the column if it is a mode)"
    )


def _refuse_reordered_values(given, values) -> None:
    """A `ValueError` when ``coords`` and ``values`` are pandas objects whose indices hold
    the same labels in another order (one of them sorted or shuffled, not the other):
    numpy pairs them by position, so each count went to another entry without a word.
    Indices with other labels are left alone: a reset index may well be in order."""
    index, values_index = getattr(given, "index", None), getattr(values, "index", None)
    # pandas' in-memory indices only (a lazy frame's index would be computed here)
    if not all(type(i).__module__.startswith("pandas.") for i in (index, values_index)):
        return
    if len(index) != len(values_index) or index.equals(values_index) or not index.is_unique:
        return
    try:  # labels of mixed types do not sort: nothing to compare then
        same_labels = index.sort_values().equals(values_index.sort_values())
    except TypeError:
        return
    if not (same_labels and values_index.is_unique):
        return
    raise ValueError(
        "values' index holds coords' labels in another order: the counts would be paired "
        "with the entries by position, not by label; pass values.loc[coords.index] (or "
        "both as arrays, .to_numpy(), if their positions match)"
    )


def _n_modes_of(shape) -> int:
    """The number of modes ``shape`` gives, 0 when it is None or not a sequence
    (`_check_shape` then refuses it by name)."""
    if shape is None or isinstance(shape, (set, frozenset, dict, str, bytes)):
        return 0
    try:
        return len(shape)
    except TypeError:
        return 0


def _holds_labels(array: np.ndarray) -> bool:
    """Whether ``array`` holds strings: labels (cell, gene, sample names), not indices."""
    if array.dtype.kind in "US":
        return True
    return array.dtype == object and any(isinstance(a, (str, bytes)) for a in array.flat)


def _as_array(value, name: str) -> np.ndarray:
    """``np.asarray(value)``, a ragged sequence named in the `ValueError`."""
    try:
        return np.asarray(value)
    except ValueError as error:
        raise ValueError(f"{name} must be a regular array, not ragged: {error}") from None


def _check_values(values, nnz: int, coords: np.ndarray) -> np.ndarray:
    if values is None:
        return np.ones(nnz, dtype=np.float64)
    refuse_masked(values, "values", "leave the masked entries out of coords and values")
    if sp.issparse(values) or _is_pydata_sparse(values):  # pydata's asarray raises its own
        raise TypeError(
            "values must be a dense array of the counts at coords, got a sparse array; a "
            "sparse tensor goes in coords alone"
        )
    if isinstance(values, (str, bytes)):  # a column's name, as plotting libraries take it
        raise TypeError(
            f"values is a string ({values!r}), not the counts: pass the counts themselves, "
            f"e.g. a table's column, table[{values!r}]"
        )
    given = values
    values = _as_array(values, "values")
    if values.ndim == 0 and values.dtype == object:  # a set, a generator: one object
        raise TypeError(
            f"values must be an array of the {nnz} counts at coords, got a "
            f"{type(given).__name__}; pass a list or an array in the order of coords"
        )
    if values.dtype.kind not in "biufc":  # timedelta64 is an np.number: its kind is "m"
        raise TypeError(f"values must be real numbers, got dtype {values.dtype}")
    if np.iscomplexobj(values):
        raise TypeError("values must be real counts, got complex numbers")
    if values.shape != (nnz,):
        hint = ""
        if values.ndim == 2 and 1 in values.shape and values.size == nnz:
            # a one-column DataFrame (table[["count"]]) or a column cut as X[:, [j]]
            hint = (
                "; pass them as a 1-D array (values.ravel(), or a table's column: table['count'])"
            )
        raise ValueError(
            f"values must have shape ({nnz},) to match coords, got {values.shape}{hint}"
        )
    values = cast_quietly(values, np.float64)  # beyond float64: inf, refused below by name
    problems = []
    for label, bad in (
        ("NaN", np.isnan(values)),
        ("infinite", np.isinf(values)),
        ("negative", values < 0),
    ):
        where = np.flatnonzero(bad)
        if where.size:
            first = ", ".join(str(tuple(int(i) for i in coords[n])) for n in where[:3])
            more = ", ..." if where.size > 3 else ""
            problems.append(
                f"{where.size} {label} value{'' if where.size == 1 else 's'} at {first}{more}"
            )
    if problems:
        raise ValueError("values must be non-negative finite counts; found " + "; ".join(problems))
    if np.any(values != np.round(values)):
        warn_user(
            "values hold non-integer numbers; the Poisson model expects raw counts.",
            NonCountWarning,
        )
    return values


def _check_shape(
    shape,
    coords: np.ndarray,
    n_modes: int,
    may_be_transposed: bool = False,
    transpose: str = "coords.T",
) -> tuple[int, ...]:
    """``shape``, or one past the largest index of each mode; ``may_be_transposed``:
    ``coords`` (without values) may be (D, nnz), told apart by ``shape`` if given, else
    refused when it has fewer rows than columns (``transpose``: how to pass them)."""
    nnz = coords.shape[0]
    if coords.size and coords.min() < 0:
        mode, position = _first_bad(coords < 0)
        raise ValueError(
            f"coords must be non-negative; entry {position} has index {coords[position, mode]} "
            f"in mode {mode}"
        )
    if shape is None:
        if nnz == 0:
            raise ValueError("shape is needed when there are no coordinates")
        if may_be_transposed and nnz < n_modes:
            raise ValueError(
                f"coords of shape {coords.shape} has more columns than rows: read as (nnz, D), "
                f"it is {nnz} entries of a {n_modes}-mode tensor. If its rows are the modes "
                f"(np.nonzero's arrays, a sparse array's .coords), pass {transpose}; if it is "
                f"{nnz} entries, pass their values (np.ones({nnz}) for counts of 1) or the shape"
            )
        return tuple(int(n) + 1 for n in coords.max(axis=0))
    if isinstance(shape, (set, frozenset, dict)):  # no order of the modes
        raise TypeError(f"shape must be a sequence of integers, got {shape!r}")
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of integers, got {shape!r}") from None
    if any(not is_integer(n) for n in shape):
        raise TypeError(f"shape must be a sequence of integers, got {shape!r}")
    if len(shape) != n_modes:
        hint = ""
        if may_be_transposed and len(shape) == nnz:
            hint = f" (one per column); if its rows are the modes, pass {transpose}"
        raise ValueError(f"shape has {len(shape)} modes but coords have {n_modes}{hint}")
    if any(n < 1 for n in shape):
        raise ValueError(f"every mode needs at least one index, got shape {shape}")
    shape = tuple(int(n) for n in shape)
    outside = coords >= np.asarray(shape)
    if np.any(outside):
        mode, position = _first_bad(outside)
        raise ValueError(
            f"{np.count_nonzero(np.any(outside, axis=1))} coordinates outside shape {shape}; "
            f"the first, entry {position}, has index {coords[position, mode]} in mode {mode}"
        )
    return shape


def _first_bad(mask: np.ndarray) -> tuple[int, int]:
    position = int(np.flatnonzero(np.any(mask, axis=1))[0])
    return int(np.flatnonzero(mask[position])[0]), position


def _check_integer(value, name: str, minimum: int) -> int:
    if not is_integer(value):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class VBNTF(Estimator):
    """Poisson-Gamma non-negative tensor factorisation (Bayesian Poisson CP) by variational
    Bayes over the nonzero entries.

    A D-way count tensor ``Y`` is modelled as
    ``y_{i_1 ... i_D} ~ Poisson(sum_l prod_d v^(d)_{i_d l})`` with Gamma priors on every
    entry of every factor matrix ``v^(d)`` (n_d x K), fitted by coordinate ascent on the
    ELBO (``docs/model.md``, "Tensors"). Only the nonzeros are visited: cost per iteration
    is linear in the nonzeros, in D and in K, and memory holds the nonzeros and the factor
    matrices. With D = 2 it is `VBNMF`'s model with the same ``prior`` and ``accelerate``
    and gives its ELBO trace from the same start.

    Parameters
    ----------
    n_components
        Number of components K (>= 1).
    prior
        ``"gamma"`` (default): the fixed prior Gamma(``prior_shape``, ``prior_rate``) on
        every entry. ``"hierarchical"``: `VBNMF`'s learned prior for every mode,
        ``v^(d)_il | xi^(d)_i ~ Gamma(a^(d)_l, xi^(d)_i)`` with a scale per index,
        ``xi^(d)_i ~ Gamma(a'_d, a'_d / b'_d)``, hyperparameters learned by empirical Bayes
        (``hyperparameters_``); batch VB, or SVI in the slices form (each batch's slices
        fitted with their scales, the other modes stepped, then every mode's
        hyperparameters learned, as `VBNMF`'s cells form). A fit holds its random start's
        factor shapes a^(d)_l at 1 for its first passes or epochs, until one changes the
        ELBO by at most sqrt(1e-5) relative (docs/model.md, "The hold").
    prior_shape, prior_rate
        ``prior="gamma"``: shape a and rate b of the fixed prior (default 1 and 1).
        ``prior="hierarchical"``: ``prior_shape`` fixes every a^(d)_l instead of learning
        them; ``prior_rate`` does not apply. ``prior_shape`` lies between 1e-30 and 1e6,
        ``prior_rate`` within ``dtype``'s range, as in `VBNMF`. The fixed prior's optimum
        puts the shortest mode's rates above ``prod_{d != m} a (n_d - n_m) / b``, about
        ``b^-(D-1)``; a fit where that exceeds ``dtype``'s range (float32, D = 3, b below
        about 1e-19) is refused with a `ValueError` that names the least ``prior_rate``.
    accelerate
        Batch VB: extrapolate the iterations with SQUAREM (Varadhan and Roland 2008),
        keeping an extrapolated step only when its exact ELBO is at least the plain step's
        (the trace stays monotone), as `VBNMF` does. Default: on for the learned prior,
        off for the fixed one (as `VBNMF`; ``True`` accelerates it too). SVI ignores it.
    max_iter
        Maximum number of passes over the nonzeros (batch; an iteration is one pass, and
        an accelerated fit's extrapolations take one each), or of local passes per slice
        batch (SVI slices form); stopping at it warns with `ConvergenceWarning`. Default
        1,000, as `VBNMF`'s. Plain coordinate ascent can need more (under the fixed prior
        at K = 8, 958 passes on the tutorial's tensor and 1,577 on its ``--quick`` one);
        ``accelerate=True`` takes a fraction of them.
    tol
        Stop when ``|ELBO_t - ELBO_{t-1}| <= tol * |ELBO_{t-1}|``.
    n_init
        Number of random starts (batch without checkpoint); the best final ELBO is kept
        (and warns `ConvergenceWarning` if it stopped at ``max_iter``; the others do not).
    random_state
        Seed (non-negative integer), `numpy.random.Generator` or ``RandomState`` for the
        start (and the SVI minibatches); None (default): fresh entropy, so two fits differ.
        A Generator or ``RandomState`` gives one draw to each fit, so a second fit with it
        is another fit.
    n_threads
        Numba threads (default: all; more than the machine's are capped to its count).
        Results are bitwise reproducible for a given ``random_state`` and the number of
        threads used.
    dtype
        ``np.float64`` (default) or ``np.float32``. On pseudobulk-scale counts float32's
        rounding of the ELBO can exceed what ``tol`` resolves and stop a batch fit, or the
        slices' local fits of SVI's slices form, early; it then warns (`ConvergenceWarning`),
        as `VBNMF` does.
    solver
        ``"batch"`` (coordinate ascent on all nonzeros) or ``"svi"`` (stochastic VB:
        minibatch steps blended with weight ``rho_t = min(1, (t + tau)^(-kappa))``).
    svi_form
        ``"slices"`` (default): minibatches of slices of mode ``svi_mode``; each batch's
        factors of that mode are fitted to convergence with the other modes fixed (its
        slices stop together, on the batch's local ELBO: `VBNMF`'s cells form stops each
        cell on its own, so at D = 2 the two agree only with ``tol=0``), then the
        other modes take a natural-gradient step with the batch statistics scaled by
        n_slices / |batch|. ``"nonzeros"``: minibatches of nonzeros, every mode global,
        statistics scaled by N / S, exact rates.
    svi_mode
        The local mode of the slices form (default: the longest mode).
    batch_size
        Slices (default: `VBNMF`'s cells-form rule on the slices, the slices in 32
        minibatches of at least 128 and at most 4,096) or nonzeros (default nnz / 8) per
        minibatch.
    tau, kappa
        Step-size schedule, ``tau >= 0``, ``kappa`` in (0.5, 1]; t counts epochs (after the
        n-th of an epoch's m steps, t = n / m), as in `VBNMF`.
    n_epochs
        Maximum number of passes over the data (SVI); the full ELBO is evaluated every
        ``eval_every`` epochs, and the fit stops when its relative change has been at most
        ``tol`` three evaluations in a row (as `VBNMF`'s SVI). The default (None): `VBNMF`'s, 40,
        or for the slices form with its default ``batch_size`` on fewer than 4,096 slices
        as many epochs as make 1,280 steps.
    eval_every
        Evaluate the full ELBO every this many epochs (SVI; default 1) and after the last,
        the three-in-a-row stopping rule counting evaluations, as `VBNMF`'s. The nonzeros
        form's evaluation is one more pass over the nonzeros and changes nothing else, so
        a fit to a given epoch is the same whatever ``eval_every``; the slices form's also
        takes the other modes' exact step from the statistics it gathers, so between
        evaluations they move by the minibatch steps alone (the tutorial's ``--quick``
        tensor, K = 10, 20 epochs: 1.4x faster at 5, and 0.5-1 % lower in ELBO;
        ``benchmarks/bench_tensor.py --sections 6``).
    checkpoint
        Path of a checkpoint, written atomically every ``checkpoint_every`` iterations
        (batch) or epochs (SVI) and at the end; None (default) writes none.
    checkpoint_every
        Iterations or epochs between checkpoints (accelerated: as `VBNMF`'s, at the start
        of the first SQUAREM cycle that many passes or more after the last save).
    resume
        Continue from ``checkpoint`` if it exists (without ``resume`` a saved checkpoint
        there is overwritten, with a UserWarning): for the same data, settings,
        ``random_state`` and ``n_threads`` the resumed fit ends with exactly the ELBO trace
        of an uninterrupted one; a checkpoint of other settings or other data (its
        fingerprint of the nonzeros differs) is refused
        (`vbsnmf._checkpoint.CheckpointMismatchError`), but one of another thread count (a
        smaller machine) is resumed with a UserWarning: the same fit to rounding. A fit that
        stopped at ``max_iter`` or ``n_epochs`` continues when resumed with more (as the
        longer fit would: an accelerated fit's last save is the start of the SQUAREM cycle
        ``max_iter`` cut short; SVI evaluates every epoch, so its resumed fit is the longer
        fit's, epoch for epoch). ``tol`` may change on resume (except for the slices form of
        SVI, whose local fits run to it, as to ``max_iter``): the checkpoint's convergence
        is judged again under it, so a fit that converged under a looser ``tol`` goes on
        under a tighter one, and one that meets a looser ``tol`` stops (plain batch ascent: at once,
        ``converged_=True``; accelerated, SVI: at the next check). A ``random_state``
        Generator resumes only when given in the state it had at the first fit (a fresh
        ``np.random.default_rng(seed)`` of the same seed, or the same estimator's after the
        fit was interrupted, which leaves it as it was): the checkpoint records the
        entropy the fit drew from it.
    verbose
        True to print the ELBO after every iteration or pass (batch), or after every
        evaluated epoch (SVI).

    Attributes
    ----------
    factors_ : list of ndarray, one (n_d, K) per mode
        Posterior means ``E[v^(d)] = shapes_[d] / rates_[d]``.
    shapes_ : list of ndarray, one (n_d, K) per mode
    rates_ : list of ndarray, one (K,) per mode, or (n_d, K) under the learned prior
        ``q(v^(d)_il) = Gamma(shapes_[d][i, l], rates_[d][l])`` (``rates_[d][i, l]``).
    hyperparameters_ : list of dict, one per mode, or None
        Under the learned prior, each mode's ``factor_shape`` (a^(d)_l, K),
        ``scale_prior_shape`` (a'_d) and ``scale_prior_mean`` (b'_d); None under the fixed
        prior.
    shape_ : tuple of int
        The tensor's shape.
    elbo_trace_ : ndarray of shape (n_iter_,), or (at most n_iter_,) when accelerated
        ELBO in nats after each iteration (SVI: after each epoch; accelerated: of each q
        kept, never decreasing).
    elbo_iter_ : ndarray of int64, of the shape of ``elbo_trace_``
        The iteration at which each value of ``elbo_trace_`` was taken, in the units of
        ``n_iter_`` (accelerated: the pass that scored the q kept, as the ``n_iter`` its
        ``callback`` received; SVI: the epoch), strictly increasing, at most ``n_iter_``:
        the x axis of the trace.
    n_iter_ : int
        Iterations (accelerated: passes; SVI: epochs) run.
    converged_ : bool
        Whether ``tol`` was met.

    Notes
    -----
    The posterior mean rate of entry ``(i_1, ..., i_D)`` is
    ``sum_l prod_d factors_[d][i_d, l]``. Components are identified only up to order and
    to a rescaling of one mode's column against another's.

    Examples
    --------
    A 20 x 15 x 10 tensor of counts given by its nonzeros' coordinates and values:

    >>> import numpy as np
    >>> from vbsnmf import VBNTF
    >>> rng = np.random.default_rng(0)
    >>> coords = np.stack([rng.integers(0, n, 500) for n in (20, 15, 10)], axis=1)
    >>> counts = rng.poisson(2.0, 500) + 1
    >>> model = VBNTF(n_components=2, max_iter=100, tol=1e-3, random_state=0)
    >>> model = model.fit(coords, values=counts, shape=(20, 15, 10))
    >>> [factor.shape for factor in model.factors_]
    [(20, 2), (15, 2), (10, 2)]
    """

    def __init__(
        self,
        n_components: int = 10,
        *,
        prior: str = "gamma",
        prior_shape: float | None = None,
        prior_rate: float | None = None,
        accelerate: bool | None = None,
        max_iter: int = 1000,
        tol: float = 1e-5,
        n_init: int = 1,
        random_state=None,
        n_threads: int | None = None,
        dtype=np.float64,
        solver: str = "batch",
        svi_form: str = "slices",
        svi_mode: int | None = None,
        batch_size: int | None = None,
        tau: float = 1.0,
        kappa: float = 0.7,
        n_epochs: int | None = None,
        eval_every: int = 1,
        checkpoint=None,
        checkpoint_every: int = 1,
        resume: bool = False,
        verbose: bool = False,
    ):
        self.n_components = n_components
        self.prior = prior
        self.prior_shape = prior_shape
        self.prior_rate = prior_rate
        self.accelerate = accelerate
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.random_state = random_state
        self.n_threads = n_threads
        self.dtype = dtype
        self.solver = solver
        self.svi_form = svi_form
        self.svi_mode = svi_mode
        self.batch_size = batch_size
        self.tau = tau
        self.kappa = kappa
        self.n_epochs = n_epochs
        self.eval_every = eval_every
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.verbose = verbose

    def _check_params(self) -> dict:
        dtype = check_float_dtype(self.dtype)
        tol = check_tolerance(self.tol)
        # compared as strings, as VBNMF's: an array equalled its option, or was "ambiguous"
        if not isinstance(self.solver, str) or self.solver not in ("batch", "svi"):
            raise ValueError(f"solver must be 'batch' or 'svi', got {self.solver!r}")
        if not isinstance(self.svi_form, str) or self.svi_form not in _tensor.SVI_FORMS:
            raise ValueError(f"svi_form must be one of {_tensor.SVI_FORMS}, got {self.svi_form!r}")
        tau, kappa = check_step_schedule(self.tau, self.kappa)
        checkpoint = self.checkpoint
        if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a path or None, got {checkpoint!r}")
        if check_flag(self.resume, "resume") and checkpoint is None:
            raise ValueError("resume=True needs checkpoint=PATH (where to resume from)")
        n_init = _check_integer(self.n_init, "n_init", 1)
        prior = self._prior()
        accelerate = check_accelerate(self.accelerate, isinstance(prior, _model.HierarchicalPrior))
        if n_init != 1 and (checkpoint is not None or self.solver == "svi"):
            raise ValueError("n_init > 1 needs solver='batch' without a checkpoint")
        return {
            "n_components": _check_integer(self.n_components, "n_components", 1),
            "prior": prior,
            "accelerate": accelerate and self.solver == "batch",
            "max_iter": _check_integer(self.max_iter, "max_iter", 0),
            "n_init": n_init,
            "n_epochs": None
            if self.n_epochs is None
            else _check_integer(self.n_epochs, "n_epochs", 1),
            "eval_every": _check_integer(self.eval_every, "eval_every", 1),
            "checkpoint_every": _check_integer(self.checkpoint_every, "checkpoint_every", 1),
            "batch_size": None
            if self.batch_size is None
            else _check_integer(self.batch_size, "batch_size", 1),
            "dtype": dtype,
            "tol": tol,
            "tau": tau,
            "kappa": kappa,
            "verbose": check_verbose(self.verbose),
        }

    def _prior(self) -> _model.Prior:
        if not isinstance(self.prior, str) or self.prior not in ("gamma", "hierarchical"):
            raise ValueError(f"prior must be 'gamma' or 'hierarchical', got {self.prior!r}")
        shape = None
        if self.prior_shape is not None:
            shape = check_prior_shape(self.prior_shape)
        if self.prior == "gamma":
            shape = 1.0 if shape is None else shape
            rate = 1.0
            if self.prior_rate is not None:
                rate = check_prior_rate(self.prior_rate, self.dtype, shape)
            return _model.GammaPrior(shape, rate)
        if self.prior_rate is not None:
            raise ValueError(
                "prior_rate applies to prior='gamma'; the hierarchical prior learns its rates"
            )
        if self.solver == "svi" and self.svi_form != "slices":
            # Every mode is global in the nonzeros form: the learned prior's per-index scales
            # and its empirical-Bayes hyperparameters would be learned from statistics scaled
            # up from a sample of nonzeros, not from each index's own q (VBNMF refuses it too).
            raise ValueError(
                "svi_form='nonzeros' fits the fixed prior only; use prior='gamma' or the "
                "slices form (svi_form='slices')"
            )
        return _model.HierarchicalPrior(factor_shape=shape)

    def fit(self, X, values=None, shape=None, *, callback=None) -> VBNTF:
        """Fit the model to a count tensor. Returns self.

        Parameters
        ----------
        X
            An (nnz, D) integer array of coordinates (for ``np.nonzero``'s arrays or a
            sparse array's ``.coords``, (D, nnz), their transpose), a pydata ``sparse``
            array (COO, GCXS, DOK; fill value 0), D >= 2, or a scipy.sparse ``coo_array``
            of D >= 3 dimensions. Without ``values`` and ``shape``, fewer entries than
            modes are taken for transposed coordinates and refused. A table (DataFrame) gives
            one column per mode; one named as counts (``"count"``, ``"umi_counts"``, ...)
            is refused: pass it as ``values``.
        values
            The nnz counts at ``X``'s coordinates (non-negative, finite; default 1 each).
            Repeated coordinates are summed.
        shape
            The tensor's shape (default: one past the largest index of each mode).
        callback
            ``callback(n_iter, params, elbo_trace)`` after every iteration (accelerated:
            after every q kept, ``n_iter`` the passes so far; SVI: after every epoch);
            ``params``' arrays are read-only during the call, ``elbo_trace`` a copy.
        """
        # a Generator left as it was if the fit raises, as VBNMF leaves it
        with _model.kept_if_failed(self.random_state):
            return self._fit_drawn(X, values, shape, callback)

    def _fit_drawn(self, X, values, shape, callback) -> VBNTF:
        """`fit`, which draws the fit's entropy from ``random_state``."""
        checked = self._check_params()
        callback = check_callback(callback)
        for given, name in ((X, "X"), (values, "values")):  # h5py's errors named neither
            refuse_closed_file(given, name)
        if self.checkpoint is not None:  # before any work: not a folder, not another file
            check_checkpoint_path(self.checkpoint)
        coords, values, shape = check_tensor(X, values, shape)
        n_modes = len(shape)
        local_mode = self.svi_mode
        if local_mode is not None:
            local_mode = _check_integer(local_mode, "svi_mode", 0)
            if local_mode >= n_modes:
                raise ValueError(f"svi_mode must be below the tensor's {n_modes} modes")
        slices_form = self.solver == "svi" and self.svi_form == "slices"
        _check_table_memory(
            shape, len(values), checked["n_components"], checked["dtype"], checked["n_init"]
        )
        _model.check_fixed_prior_range(shape, checked["prior"], checked["dtype"], "tensor")
        data = _tensor.as_tensor_data(
            coords, values, shape, major=local_mode if slices_form else None
        )
        del coords, values
        if self.solver == "svi" and not slices_form:
            refuse_no_nonzeros(data.nnz, self.svi_form, "slices")
        _check_largest_count(data, checked["dtype"])
        total_count = float(data.counts.sum())  # a checkpoint's record, float32's rounding
        with numba_threads(self.n_threads) as n_threads:
            if self.solver == "svi" or self.checkpoint is not None:
                result = self._fit_resumable(data, total_count, checked, n_threads, callback)
            else:
                entropy = _model.seed_entropy(self.random_state)
                best = None
                n_starts = checked["n_init"]
                for index in range(n_starts):
                    _model.print_start(checked["verbose"], index, n_starts)
                    start = _tensor.random_start(
                        data,
                        checked["n_components"],
                        entropy,
                        checked["dtype"],
                        index,
                        checked["prior"],
                    )
                    with _model.one_of_starts(n_starts) as outcome:
                        if checked["accelerate"]:
                            state = _start_accelerated(start, checked)
                            del start
                            result, _ = self._fit_accelerated(
                                data, state, checked, n_threads, callback
                            )
                        else:
                            result = self._fit_batch(data, start, checked, n_threads, callback)
                    if best is None or _model.final_elbo(result) > _model.final_elbo(best):
                        best, best_outcome, best_index = result, outcome, index
                _model.print_kept(checked["verbose"], best, best_index, n_starts)
                result = best
                _model.warn_kept_start(
                    result, n_starts, checked["max_iter"], checked["tol"], best_outcome.held
                )
        if self.solver == "batch":
            _model.warn_elbo_rounding(
                result.elbo_trace,
                result.converged,
                checked["dtype"],
                checked["tol"],
                total_count,
                float(data.counts.max(initial=0.0)),
            )
        elif self.svi_form == "slices":  # its slices' local fits, as VBNMF's cells form warns
            _model.warn_local_rounding(
                result.elbo_trace, checked["dtype"], checked["tol"], total_count, "slices"
            )
        epochs = None  # n_epochs' default depends on the data: `warn_if_beyond` needs it
        if self.solver == "svi" and checked["n_epochs"] is None:
            epochs = _tensor.default_n_epochs(
                self.svi_form, data, checked["batch_size"] is not None
            )
        self._set_fitted(result, shape, epochs)
        return self

    def _batch_options(self, checked, n_threads, callback) -> dict:
        """What both batch loops take: the prior, the stopping rule, threads, reporting."""
        return {
            "prior": checked["prior"],
            "max_iter": checked["max_iter"],
            "tol": checked["tol"],
            "n_chunks": n_threads,
            "callback": callback,
            "verbose": checked["verbose"],
        }

    def _fit_batch(self, data, start, checked, n_threads, callback, trace=None, iters=None):
        """Plain coordinate ascent from ``start``, continuing ``trace`` (taken at the
        iterations ``iters``)."""
        options = self._batch_options(checked, n_threads, callback)
        # every batch start here is random: its factor shapes are held at first
        return _tensor.fit_batch(
            data, start, elbo_trace=trace, elbo_iter=iters, hold_shapes=True, **options
        )

    def _fit_accelerated(self, data, state, checked, n_threads, callback, on_cycle=None):
        """SQUAREM from ``state`` (`_batch.start_accelerated` or a checkpoint's)."""
        options = self._batch_options(checked, n_threads, callback)
        return _tensor.fit_batch_accelerated(data, state, on_cycle=on_cycle, **options)

    def _fit_resumable(
        self, data, total_count, checked, n_threads, callback
    ) -> _tensor.TensorFitResult:
        """SVI, and batch fits that write checkpoints (one start, resumable bitwise);
        ``total_count``: the sum of ``data``'s counts."""
        svi = self.solver == "svi"
        form = self.svi_form if svi else None
        batch_size = checked["batch_size"]
        if svi and batch_size is None:
            batch_size = _tensor.default_batch_size(form, data)
        seed = self.random_state
        # drawn before the config: a Generator's draw is what its checkpoint records
        entropy = _model.seed_entropy(seed)
        prior = checked["prior"]
        config = {
            "shape": list(data.shape),
            "nnz": data.nnz,
            "total_count": total_count,
            "data_fingerprint": None if self.checkpoint is None else _tensor.data_fingerprint(data),
            "n_components": checked["n_components"],
            "solver": self.solver,
            "svi_form": form,
            "svi_mode": data.major if form == "slices" else None,
            # batch VB draws no minibatches: None, whatever batch_size says
            "batch_size": batch_size if svi else None,
            "tau": checked["tau"] if svi else None,
            "kappa": checked["kappa"] if svi else None,
            # the slices form's evaluations take the other modes' exact steps; recorded for
            # both forms, as `VBNMF`'s (a tensor checkpoint written before holds none)
            "eval_every": checked["eval_every"] if svi else None,
            # each slice's local fit runs to tol within max_iter passes: the steps depend on them
            "local_fit": [checked["max_iter"], checked["tol"]] if form == "slices" else None,
            "prior": self.prior,
            "prior_shape": getattr(prior, "shape", getattr(prior, "factor_shape", None)),
            "prior_rate": getattr(prior, "rate", None),
            # None when plain, as checkpoints written before the option say
            "accelerate": True if checked["accelerate"] else None,
            "dtype": checked["dtype"].name,
            "n_threads": n_threads,
            "random_state": recorded_seed(seed, entropy),
        }
        checkpointer = Checkpointer(
            self.checkpoint, checked["checkpoint_every"], config, _tensor.check_checkpoint
        )
        with checkpointer:
            stored = checkpointer.load(self.resume)
            if not svi:
                return self._fit_batch_resumable(
                    data, stored, checkpointer, checked, entropy, n_threads, callback
                )
            settings = _tensor.TensorSVISettings(
                prior=checked["prior"],
                form=form,
                batch_size=batch_size,
                tau=checked["tau"],
                kappa=checked["kappa"],
                n_epochs=_tensor.default_n_epochs(form, data, checked["batch_size"] is not None)
                if checked["n_epochs"] is None
                else checked["n_epochs"],
                tol=checked["tol"],
                local_max_iter=max(checked["max_iter"], 1),
                local_tol=checked["tol"],
                n_chunks=n_threads,
                eval_every=checked["eval_every"],
                verbose=checked["verbose"],
            )
            if stored is not None:
                state = _tensor.TensorSVIState.from_arrays(*stored, settings.eval_every)
                resumed_svi_progress(state, settings)
            elif isinstance(prior, _model.HierarchicalPrior):
                state = _tensor.learned_slices_start(
                    data, checked["n_components"], entropy, checked["dtype"], prior
                )
            elif form == "slices":  # the local mode where `fit_local` starts, as VBNMF's cells
                state = _tensor.fixed_slices_start(
                    data, checked["n_components"], entropy, checked["dtype"], prior
                )
            else:
                start = _tensor.random_start(
                    data, checked["n_components"], entropy, checked["dtype"]
                )
                state = _tensor.TensorSVIState(start, _model.minibatch_generator(entropy))

            def save(state: _tensor.TensorSVIState) -> None:
                checkpointer.save(state.epoch, *state.to_arrays(), force=state.finished)

            state = _tensor.fit_svi(data, state, settings, callback=callback, on_epoch=save)
            return _tensor.TensorFitResult(
                state.params,
                *trace_arrays(state.elbo_trace, state.elbo_iter),
                state.epoch,
                state.converged,
            )

    def _fit_batch_resumable(
        self, data, stored, checkpointer, checked, entropy, n_threads, callback
    ) -> _tensor.TensorFitResult:
        if checked["accelerate"]:
            return self._fit_accelerated_resumable(
                data, stored, checkpointer, checked, entropy, n_threads, callback
            )

        def arrays_of(params, trace):
            # plain ascent's i-th value is iteration i's (`_batch.plain_ascent`)
            iters = np.arange(1, len(trace) + 1, dtype=np.int64)
            return {
                **_tensor.params_to_arrays(params),
                "elbo_trace": np.asarray(trace),
                "elbo_iter": iters,
            }

        def save(n_iter, params, trace):
            if callback is not None:
                callback(n_iter, params, trace)
            checkpointer.save(n_iter, arrays_of(params, trace), {"finished": False})

        trace: list[float] = []
        iters: list[int] = []
        if stored is not None:
            arrays, _ = stored
            start = _tensor.params_from_arrays(arrays)
            trace = [float(v) for v in arrays["elbo_trace"]]
            iters = restored_elbo_iter(arrays, len(trace))
            held = _model.held_prior(checked["prior"]) is not None  # its start was random
            done = _model.resumed_converged(trace, checked["tol"], held)
            if done or len(trace) >= checked["max_iter"]:
                if not done and 0 < len(trace) == checked["max_iter"]:  # as the fit itself warned
                    still_holding = _model.still_held(held, trace)
                    _model.warn_not_converged(
                        "max_iter", checked["max_iter"], checked["tol"], still_holding
                    )
                return _tensor.TensorFitResult(
                    start, *trace_arrays(trace, iters), len(trace), bool(done)
                )
        else:
            start = _tensor.random_start(
                data, checked["n_components"], entropy, checked["dtype"], prior=checked["prior"]
            )
        result = self._fit_batch(data, start, checked, n_threads, save, trace, iters)
        checkpointer.save(
            result.n_iter, arrays_of(result.params, result.elbo_trace), {"finished": True}, True
        )
        return result

    def _fit_accelerated_resumable(
        self, data, stored, checkpointer, checked, entropy, n_threads, callback
    ) -> _tensor.TensorFitResult:
        """SQUAREM from a random start or a checkpoint's state, saving the state at the
        start of the first cycle ``checkpoint_every`` passes or more after the last save,
        and at the end (`AcceleratedSaves`, as `VBNMF`)."""
        to_arrays = _tensor.params_to_arrays
        if stored is not None:
            state = AcceleratedState.from_arrays(*stored, _tensor.params_from_arrays)
        else:
            start = _tensor.random_start(
                data, checked["n_components"], entropy, checked["dtype"], prior=checked["prior"]
            )
            state = _start_accelerated(start, checked)
            del start
        saves = AcceleratedSaves(
            checkpointer, to_arrays, checked["max_iter"], None if stored is None else stored[1]
        )
        replay = {**checked, "max_iter": saves.max_iter}
        with saves.replaying():
            result, state = self._fit_accelerated(data, state, replay, n_threads, callback, saves)
        saves.at_end(state)
        return result

    def _set_fitted(self, result: _tensor.TensorFitResult, shape, epochs=None) -> None:
        """Store ``result``'s fit of a tensor of ``shape`` as the fitted attributes;
        ``epochs``: the epochs an SVI fit ran to when ``n_epochs`` is None (its default)."""
        # first: a warning raised as an error must leave the earlier fit whole
        warn_if_beyond(self, result.n_iter, epochs)
        params = result.params
        self.shapes_ = list(params.shapes)
        self.rates_ = list(params.rates)
        self.factors_ = params.means()
        self.hyperparameters_ = None
        if params.scales is not None:
            self.hyperparameters_ = [
                {
                    "factor_shape": scale.factor_shape,
                    "scale_prior_shape": scale.prior_shape,
                    "scale_prior_mean": scale.prior_mean,
                }
                for scale in params.scales
            ]
        self.shape_ = tuple(shape)
        self.elbo_trace_ = result.elbo_trace
        self.elbo_iter_ = result.elbo_iter
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged


# What a fit holds at its peak, measured with tracemalloc (tests/
# test_hostile_thirtyfifth_followups.py checks the estimate against the traced peak): per
# entry of the factor tables (every mode's indices x K), q's shapes and rates, the pass's
# tables and statistics and SQUAREM's q's, in the fit's dtype, and a float64 sum beside
# them (measured 65-82 bytes per entry in float64, 33 in float32, on shapes of 2 to 4
# modes and K up to 800); n_init > 1 keeps the best fit's tables beside the running one.
# Per nonzero: its coordinates and count, as given, sorted and as the kernels take them
# (measured 46, 80 and 112 bytes for 2, 3 and 5 modes).
_TABLE_ARRAYS = 11  # in the fit's dtype
_TABLE_FLOAT64_ARRAYS = 1
_BEST_TABLE_ARRAYS = 2  # in the fit's dtype, when n_init > 1


def estimate_tensor_memory(
    shape: tuple[int, ...], nnz: int, n_components: int, dtype, n_init: int = 1
) -> int:
    """Bytes a `VBNTF` fit of a tensor of ``shape`` with ``nnz`` given entries (an upper
    bound of its nonzeros) needs at its peak: an upper bound of the traced peak, within
    ~2x of it, for every prior, solver and thread count."""
    itemsize = np.dtype(dtype).itemsize
    per_entry = _TABLE_ARRAYS * itemsize + _TABLE_FLOAT64_ARRAYS * 8
    if n_init > 1:
        per_entry += _BEST_TABLE_ARRAYS * itemsize
    # Python integers: numpy's int64 wraps past 2**63 without a word
    tables = sum(int(n) for n in shape) * int(n_components) * per_entry
    return tables + int(nnz) * 16 * (len(shape) + 3)


def _check_table_memory(
    shape: tuple[int, ...], nnz: int, n_components: int, dtype: np.dtype, n_init: int
) -> None:
    """`InsufficientMemoryError` before any allocation when the fit's peak
    (`estimate_tensor_memory`) exceeds the memory available: a tensor with a mode of
    10**12 indices raised a bare MemoryError from deep inside. The four tables it counted
    before were a lower bound, under half of the peak (14 MB against 36 MB traced at K=800
    on a small tensor)."""
    available = None if guard_disabled() else available_memory()
    needed = estimate_tensor_memory(shape, nnz, n_components, dtype, n_init)
    if available is not None and needed > available:
        raise InsufficientMemoryError(
            f"a tensor of shape {shape} with K={n_components} needs about "
            f"{format_bytes(needed)} for its factor tables (every mode's indices x K) and "
            f"its nonzeros, and {format_bytes(available)} is available; check the shape "
            "(one past the largest index of each mode when not given) or lower "
            "n_components; set VBSNMF_NO_MEMORY_GUARD=1 to fit anyway."
        )


def _check_largest_count(data: _tensor.TensorData, dtype: np.dtype) -> None:
    """`ValueError` when a count (repeated coordinates summed) is above `max_count` of the
    fit's dtype, as `VBNMF` refuses it: its factors would overflow to NaN."""
    largest = float(data.counts.max(initial=0.0))
    limit = max_count(dtype)
    if largest > limit:
        raise ValueError(
            f"values hold a count of {largest!r} (repeated coordinates summed), above "
            f"{limit:,.0f}, the largest a {dtype.name} fit resolves; {large_count_advice(dtype)}"
        )


def _start_accelerated(start: _tensor.TensorParams, checked: dict) -> AcceleratedState:
    """A random start's SQUAREM state: the learned prior's factor shapes held at first, as
    plain ascent holds them (`_tensor.fit_batch`'s ``hold_shapes``)."""
    return start_accelerated(start, hold_shapes=_model.held_prior(checked["prior"]) is not None)


__all__ = ["VBNTF", "check_tensor"]
