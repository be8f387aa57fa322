"""Finding the raw counts of an AnnData (``X``, a layer or ``.raw``) and checking them.

Shared by `nmf` and `project`: both need non-negative integer counts, and when a user
hands them log-normalised ``X`` the error says where the counts probably are.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._validation import CorruptMatrixError, check_counts


def in_memory(matrix):
    """A backed matrix (anndata's sparse dataset or an h5py dataset) read into memory as
    stored (sparse stays sparse); in-memory matrices are returned unchanged."""
    if hasattr(matrix, "to_memory"):  # anndata's backed CSR/CSC dataset
        return matrix.to_memory()
    if type(matrix).__module__.startswith("h5py"):
        return matrix[()]
    return matrix


def select_counts(adata, *, layer: str | None, use_raw: bool) -> tuple[object, pd.Index, str]:
    """The matrix to factorise, its gene names, and a label saying where it came from."""
    if layer is not None and use_raw:
        raise ValueError("pass either layer= or use_raw=True, not both")
    if layer is not None:
        if layer not in adata.layers:
            available = ", ".join(repr(name) for name in adata.layers) or "none"
            raise ValueError(f"adata has no layer {layer!r} (layers: {available})")
        return adata.layers[layer], adata.var_names, f"adata.layers[{layer!r}]"
    if use_raw:
        if adata.raw is None:
            raise ValueError("use_raw=True but adata.raw is None")
        return in_memory(adata.raw.X), adata.raw.var_names, "adata.raw.X"
    if adata.X is None:
        raise ValueError("adata.X is None; pass layer= to name the counts")
    return in_memory(adata.X), adata.var_names, "adata.X"


def _looks_like_counts(matrix) -> bool:
    """Non-negative, finite integers (checked on the stored values only)."""
    matrix = in_memory(matrix)
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if not np.issubdtype(values.dtype, np.number):
        return False
    return bool(np.all(np.isfinite(values)) and np.all(values >= 0) and np.all(values % 1 == 0))


def _other_counts(adata, source: str) -> list[str]:
    """The layers (and ``.raw``) other than ``source`` that hold counts, as arguments."""
    hints = [
        f"layer={name!r}"
        for name in adata.layers
        if f"adata.layers[{name!r}]" != source and _looks_like_counts(adata.layers[name])
    ]
    if source != "adata.raw.X" and adata.raw is not None and _looks_like_counts(adata.raw.X):
        hints.append("use_raw=True")
    return hints


def _where_counts_are(adata, source: str) -> str:
    """A hint naming the layers (and ``.raw``) that hold counts, for error messages."""
    hints = _other_counts(adata, source)
    if hints:
        return "the raw counts appear to be in " + " or ".join(hints) + "; pass that instead"
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
    otherwise.

    Unlike `VBNMF`, which only warns on non-integers and, as scikit-learn's NMF, fits a
    matrix of zeros, the scanpy tools refuse both: on an AnnData, non-integer values almost
    always mean normalised or log-transformed ``X``, and no counts at all a matrix other
    than the counts (``X`` left empty while they sit in a layer).
    """
    try:
        checked = check_counts(
            matrix, name=source, warn_non_integer=False, fit_dtype=fit_dtype, first_row=first_row
        )
    except CorruptMatrixError:
        raise  # a damaged matrix: which layer holds the counts is not the question
    except ValueError as error:
        raise ValueError(
            f"{error}; NMF needs raw counts: {_where_counts_are(adata, source)}"
        ) from None
    values = checked.data
    if values.size and not np.issubdtype(values.dtype, np.integer):
        fractional = np.count_nonzero(values % 1)
        if fractional:
            raise ValueError(
                f"{source} holds {fractional} non-integer values (normalised or "
                f"log-transformed data?); NMF needs raw counts: {_where_counts_are(adata, source)}"
            )
    if require_counts:
        check_has_counts(adata, float(np.count_nonzero(values)), source)
    return checked


def check_has_counts(adata, total: float, source: str) -> None:
    """`ValueError` when ``total`` (the matrix's count, or its number of nonzeros) is 0."""
    if total == 0:
        hints = _other_counts(adata, source)
        where = f"; the counts appear to be in {' or '.join(hints)}" if hints else ""
        raise ValueError(f"{source} holds no nonzero count: nothing to factorise{where}")
