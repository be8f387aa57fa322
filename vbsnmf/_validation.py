"""Input checks shared by every entry point: one place that turns bad counts and bad
settings into errors. Each public entry point (the estimators, `vbsnmf.fit_dask`,
`vbsnmf.tl`) checks its input once, here, and passes checked values down."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._utils import warn_user


class NonCountWarning(UserWarning):
    """The matrix holds non-integer values; the Poisson model expects raw counts."""


def _first_positions(mask_rows, mask_cols, limit=3) -> str:
    pairs = [f"({int(r)}, {int(c)})" for r, c in zip(mask_rows[:limit], mask_cols[:limit])]
    more = ", ..." if len(mask_rows) > limit else ""
    return ", ".join(pairs) + more


def check_counts(X, *, name: str = "X", warn_non_integer: bool = True):
    """Validate a count matrix and return it as a scipy sparse array (COO/CSR/CSC kept).

    Raises
    ------
    TypeError
        ``X`` is not a 2-D numeric array or scipy sparse matrix.
    ValueError
        ``X`` has a zero-length axis, or negative, NaN or infinite entries (the message
        says how many of each and where the first ones are, as (row, column)).
    """
    if sp.issparse(X):
        matrix = X if X.format in ("csr", "csc", "coo") else X.tocsr()
        if matrix.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got {matrix.ndim}-D")
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
            # Object arrays of numbers (e.g. from pandas) are fine; anything else is not.
            try:
                dense = dense.astype(np.float64)
            except (TypeError, ValueError) as error:
                raise TypeError(f"{name} must hold numbers: {error}") from None
        if not (np.issubdtype(dense.dtype, np.number) or dense.dtype == bool):
            raise TypeError(f"{name} must hold numbers, got dtype {dense.dtype}")
        matrix = sp.coo_array(dense)
    if np.iscomplexobj(matrix.data):
        raise ValueError(f"{name} must be real counts: Complex data not supported")
    n_rows, n_cols = matrix.shape
    if n_rows == 0 or n_cols == 0:
        # Worded as scikit-learn words it, so that its estimator checks recognise it.
        axis = "sample" if n_rows == 0 else "feature"
        raise ValueError(
            f"{name} has 0 {axis}(s) (shape={matrix.shape}) while a minimum of 1 is "
            "required: it needs at least one row and column"
        )
    data = matrix.data
    tests = (("NaN", np.isnan), ("infinite", np.isinf), ("negative", lambda v: v < 0))
    bad_counts, non_integer = _scan_values(data, [test for _, test in tests])
    problems = []
    for (label, test), count in zip(tests, bad_counts):
        if count:
            coo = matrix.tocoo() if matrix.format != "coo" else matrix
            where = np.flatnonzero(test(data))
            problems.append(
                f"{count} {label} entr{'y' if count == 1 else 'ies'} at (row, column) "
                f"{_first_positions(coo.row[where], coo.col[where])}"
            )
    if problems:
        # "Negative values in data" is the phrase scikit-learn's estimator checks look for.
        lead = "Negative values in data: " if bad_counts[2] else ""
        raise ValueError(
            f"{lead}{name} must hold non-negative finite counts; found " + "; ".join(problems)
        )
    if warn_non_integer and non_integer:
        warn_user(
            f"{name} holds non-integer values; vbsnmf's Poisson model expects raw counts "
            "(not normalised or log-transformed data).",
            NonCountWarning,
        )
    return matrix


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


def check_n_components(n_components, shape) -> int:
    """``n_components`` must be an integer in [1, min(shape)]."""
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)):
        raise TypeError(f"n_components must be an integer, got {n_components!r}")
    if not 1 <= n_components <= min(shape):
        raise ValueError(
            f"n_components={n_components} is out of range: it must be between 1 and "
            f"min(n_rows, n_cols) = {min(shape)} for a matrix of shape {tuple(shape)}"
        )
    return int(n_components)


def check_positive(value, name: str) -> float:
    """A finite, strictly positive float parameter."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def check_integer(value, name: str, minimum: int) -> int:
    """An integer parameter (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_tol(tol) -> float:
    """A finite, non-negative tolerance."""
    try:
        value = float(tol)
    except (TypeError, ValueError):
        raise TypeError(f"tol must be a non-negative number, got {tol!r}") from None
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    return value


def check_float_dtype(dtype) -> np.dtype:
    """``np.float32`` or ``np.float64``, the two dtypes the engine computes in."""
    checked = np.dtype(dtype)
    if checked not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be np.float32 or np.float64, got {dtype!r}")
    return checked


def check_step_schedule(tau, kappa) -> tuple[float, float]:
    """SVI's step size ``rho_t = (t + tau)^(-kappa)``: ``tau >= 0``, ``kappa`` in (0.5, 1]."""
    tau_value, kappa_value = float(tau), float(kappa)
    if not (np.isfinite(tau_value) and tau_value >= 0):
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
    if not 0.5 < kappa_value <= 1.0:
        raise ValueError(f"kappa must be in (0.5, 1], got {kappa!r}")
    return tau_value, kappa_value
