"""Input checks shared by every entry point: one place that turns bad counts into errors."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp


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
            raise ValueError(f"{name} must be 2-D, got an array of shape {dense.shape}")
        if dense.dtype == object or not (
            np.issubdtype(dense.dtype, np.number) or dense.dtype == bool
        ):
            raise TypeError(f"{name} must hold numbers, got dtype {dense.dtype}")
        matrix = sp.coo_array(dense)
    if np.iscomplexobj(matrix.data):
        raise TypeError(f"{name} must be real, got complex values")
    n_rows, n_cols = matrix.shape
    if n_rows == 0 or n_cols == 0:
        raise ValueError(f"{name} has shape {matrix.shape}: it needs at least one row and column")
    data = matrix.data
    problems = []
    for label, bad in (
        ("NaN", np.isnan(data)),
        ("infinite", np.isinf(data)),
        ("negative", data < 0),
    ):
        count = int(np.count_nonzero(bad))
        if count:
            coo = matrix.tocoo() if matrix.format != "coo" else matrix
            where = np.flatnonzero(bad)
            problems.append(
                f"{count} {label} entr{'y' if count == 1 else 'ies'} at (row, column) "
                f"{_first_positions(coo.row[where], coo.col[where])}"
            )
    if problems:
        raise ValueError(
            f"{name} must hold non-negative finite counts; found " + "; ".join(problems)
        )
    if warn_non_integer and data.size and not np.issubdtype(data.dtype, np.integer):
        if np.any(data != np.round(data)):
            warnings.warn(
                f"{name} holds non-integer values; vbsnmf's Poisson model expects raw counts "
                "(not normalised or log-transformed data).",
                NonCountWarning,
                stacklevel=3,
            )
    return matrix


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
