"""Count splitting: two independent Poisson halves of one count matrix.

If ``x ~ Poisson(mu)`` and ``train | x ~ Binomial(x, p)``, then ``train ~ Poisson(p mu)`` and
``test = x - train ~ Poisson((1 - p) mu)`` independently (the thinning property), so a model
fitted on ``train`` can be scored on ``test`` without leaving any cell or gene out.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._model import seed_entropy
from .._utils import is_dask_array
from .._validation import (
    bad_count_problems,
    check_sparse_structure,
    native_index_arrays,
    numbers_from_objects,
    refuse_masked,
    sparse_frame_as_coo,
    widen_to_sum,
)


def count_split(counts, fraction: float = 0.5, random_state=0):
    """Split counts into ``train ~ Binomial(counts, fraction)`` and ``test = counts - train``.

    Only the stored values are drawn (a sparse matrix's zeros stay zeros in both halves);
    nothing cells x genes is formed for sparse input, and for a dense array nothing but
    the two halves (only its nonzeros are drawn).

    Parameters
    ----------
    counts
        Non-negative integer counts, cells x genes: a scipy sparse matrix or a dense array
        (booleans count as 0 and 1, as `vbsnmf.tl.nmf` fits them), or a pandas DataFrame
        (of pandas' nullable Int64 or Float64 columns too, as `vbsnmf.VBNMF` takes it). A
        dask array is computed into memory first (sparse chunks stay sparse).
    fraction
        The expected share of each count that goes to ``train``, in (0, 1).
    random_state
        Seed of the Binomial draws, as `vbsnmf.VBNMF`'s: a non-negative integer, None, a
        `numpy.random.Generator` or a ``RandomState`` (each of these two advanced by the
        split, so a second split with it is another split).

    Returns
    -------
    train, test
        Of the input's kind (CSR for sparse input, a ``csr_array`` for a scipy sparse
        array and a ``csr_matrix`` for a sparse matrix, in canonical form: duplicate
        entries summed, indices sorted, explicit zeros removed; a ``csr_matrix`` for a
        pandas DataFrame of sparse columns with fill value 0; an ndarray otherwise) and
        dtype (float64 for an object array, e.g. a DataFrame of pandas' nullable Int64
        columns, and for a sparse matrix of narrow integers or booleans whose repeated
        entries sum beyond its dtype, or of float32 whose repeated entries sum beyond
        2**24); ``train + test == counts``, the repeats summed exactly. The halves depend only
        on the counts and ``random_state``, not on how the counts are stored (dense, CSR,
        CSC, ...).

    Raises
    ------
    ValueError
        ``fraction`` outside (0, 1); ``counts`` not 2-D, a sparse matrix whose index
        arrays are damaged (a ``CorruptMatrixError``, as a fit's), or counts that are
        negative, not finite, not whole or 2**63 or more, or beyond the whole numbers their
        float dtype holds every one of (2**11 in float16, 2**24 in float32, 2**53 in
        float64); a negative ``random_state``; missing values (``pd.NA``).
    TypeError
        ``counts`` is not numeric (nor boolean, nor an object array of numbers), not an
        array (ragged lists), is an AnnData, a backed AnnData's X or a masked array with
        masked entries;
        ``random_state`` is not one of the above.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> from vbsnmf.tl import count_split
    >>> counts = sp.csr_matrix(np.random.default_rng(0).poisson(1.0, size=(100, 50)))
    >>> train, test = count_split(counts, fraction=0.5, random_state=0)
    >>> type(train).__name__, train.shape, train.dtype
    ('csr_matrix', (100, 50), dtype('int64'))
    >>> (train + test != counts).nnz
    0
    """
    numeric = isinstance(fraction, (int, float, np.number)) and not isinstance(fraction, bool)
    # a numpy complex passed the check: numpy dropped its imaginary part (ComplexWarning)
    if not numeric or isinstance(fraction, np.complexfloating):
        raise TypeError(f"fraction must be a number, got {type(fraction).__name__}")
    if not 0 < fraction < 1:
        # as a Python number: a numpy one was named by its repr ("np.float64(1.0)")
        if isinstance(fraction, np.generic):
            fraction = (float if isinstance(fraction, np.floating) else int)(fraction)
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    if hasattr(counts, "obs_names"):  # an AnnData: its counts are a matrix of it
        raise TypeError(
            "counts must be a matrix (e.g. adata.X or adata.layers['counts']), not an AnnData"
        )
    if hasattr(counts, "to_memory") or type(counts).__module__.split(".")[0] in ("h5py", "zarr"):
        # a backed AnnData's X: np.array made a 0-d array of it ("got shape ()")
        raise TypeError(
            "counts are stored on disk (the X of an AnnData read with backed='r' or "
            "backed='r+'): read them into memory first, e.g. counts.to_memory() or "
            "adata.to_memory().X"
        )
    if is_dask_array(counts):
        # np.array computed dense chunks whole, but made a 0-d object array of sparse ones
        # ("counts must be 2-D ..., got shape ()")
        from .._dask._cluster import computed_as_declared

        counts = computed_as_declared(counts)
    refuse_masked(
        counts,
        "counts",
        "pass the counts to split, e.g. counts.filled(0) to split the masked entries as zeros",
    )
    # a DataFrame of sparse columns: np.array made it dense, cells x genes x 8 bytes
    counts = sparse_frame_as_coo(counts)
    sparse = sp.issparse(counts)
    if sparse and len(counts.shape) != 2:  # scipy's n-D COO: "CSR must be 1D or 2D. Got 3D"
        raise ValueError(f"counts must be 2-D (cells x genes), got shape {counts.shape}")
    if sparse and counts.format in ("csr", "csc", "coo", "bsr") and counts.dtype.kind in "biuf":
        # its index arrays before scipy reads through them, as every fit checks them: an
        # index beyond the shape went into both halves, whose toarray() wrote outside its
        # array (the dtype's own error, below, for values that are no numbers)
        check_sparse_structure(counts, "counts")
        # before repeated entries are summed: a sum hid a negative count (-1 and 3 stored
        # at one position split as a count of 2), which `vbsnmf.VBNMF` refuses
        _refuse_bad_counts(counts.data, lambda: _coo_positions(counts))
        _refuse_repeats_beyond_int64(counts)
    # a scipy sparse array stays one (and a sparse matrix one), as the caller passed it
    as_csr = sp.csr_array if isinstance(counts, sp.sparray) else sp.csr_matrix
    given = counts.dtype if sparse else None
    if sparse:
        # repeated entries summed in float64: scipy summed them in the dtype (uint8 ones:
        # 144 for a count of 400; booleans: 1), where VBNMF.fit and tl.nmf read the sums
        counts = widen_to_sum(counts)
    try:
        # a dense array is not copied: only its nonzeros are drawn, into new halves
        matrix = as_csr(counts, copy=True) if sparse else np.asarray(counts)
    except ValueError as error:  # e.g. ragged lists: numpy's words named no counts
        if sparse:
            raise
        raise TypeError(f"counts must be a 2-D array or scipy sparse matrix: {error}") from None
    if matrix.ndim != 2:
        raise ValueError(f"counts must be 2-D (cells x genes), got shape {matrix.shape}")
    if sparse:
        # Each count stored once, in order: duplicate entries of one count were split
        # apart (halves holding duplicates, whose log-factorials do not add up to the
        # count's), and a row's entries split in storage order, not the counts' own.
        matrix.sum_duplicates()
    if sparse and matrix.dtype != given:  # widened: back to the caller's dtype if it holds them
        if given.kind == "f":  # float32 (float16): the whole numbers it holds every one of
            low, high = 0, 2.0 ** (np.finfo(given).nmant + 1)
        elif given.kind == "b":
            low, high = 0, 1
        else:
            low, high = np.iinfo(given).min, np.iinfo(given).max
        if matrix.nnz == 0 or low <= matrix.data.min() <= matrix.data.max() <= high:
            matrix = matrix.astype(given)
    if not sparse and matrix.dtype == object:
        # a DataFrame of pandas' nullable dtypes (Int64, Float64) is an object array, which
        # was refused as "dtype object" (VBNMF.fit takes it); pd.NA becomes NaN, refused below
        matrix = numbers_from_objects(matrix, "counts")
    if sparse:
        values = matrix.data
    else:
        # A dense array's nonzeros alone, in row order as a CSR holds them (a Binomial
        # draw of a zero is zero and takes no random number, so the halves are those of
        # the CSR): the whole array was copied, checked and drawn in int64, 6x its size
        # at the peak (15x for uint16), beside the halves it returns.
        entries = np.nonzero(matrix)
        values = matrix[entries]
    # by kind: numpy counts timedelta64 among its numbers, whose `% 1` below then failed
    # with numpy's bare UFuncTypeError
    if values.dtype.kind not in "biuf":
        raise TypeError(f"counts must be numeric, got dtype {values.dtype}")
    # a sparse matrix's stored values were checked before their repeats were summed, which
    # in float32 may overflow
    _refuse_bad_counts(values, (lambda: _coo_positions(matrix)) if sparse else lambda: entries)
    if values.size and np.any(values % 1):
        raise ValueError("counts must be whole numbers (raw counts, not normalised values)")
    # float(): 2**63 compared in float16 overflowed (a RuntimeWarning); binomial takes int64.
    # Integers as they are: float() rounded int64 counts from 2**63 - 512 up to 2**63,
    # refused as "below 2**63, got 9.22337e+18" though int64 holds them.
    largest = values.max() if values.size else 0
    if (int if values.dtype.kind in "biu" else float)(largest) >= 2**63:
        raise ValueError(f"counts must be below 2**63, got {values.max():.6g}")
    if values.size and np.issubdtype(values.dtype, np.floating):
        # beyond 2**(nmant + 1) the dtype skips whole numbers: a half would be rounded
        exact = 2.0 ** (np.finfo(values.dtype).nmant + 1)
        if float(values.max()) > exact:
            raise ValueError(
                f"counts reach {float(values.max()):.6g}, beyond {exact:.0f}, where "
                f"{values.dtype} cannot hold every whole number, so the halves would be "
                "rounded: pass the counts as float64 or int64 (e.g. counts.astype('int64'))"
            )
    rng = np.random.default_rng(seed_entropy(random_state))
    whole = values.astype(np.int64)
    drawn = rng.binomial(whole, fraction)
    # in int64, then each half in the input's dtype: booleans cannot be subtracted
    train_values, test_values = (half.astype(values.dtype) for half in (drawn, whole - drawn))
    if not sparse:
        halves = []
        for half_values in (train_values, test_values):
            half = np.zeros(matrix.shape, dtype=values.dtype)
            half[entries] = half_values
            halves.append(half)
        return tuple(halves)
    test = matrix.copy()
    test.data = test_values
    matrix.data = train_values
    for part in (matrix, test):
        part.eliminate_zeros()
    return matrix, test


def _refuse_bad_counts(values: np.ndarray, positions) -> None:
    """A `ValueError` when ``values`` hold a negative, NaN or infinite count, naming how
    many and where (``positions()``: their rows and columns, as `VBNMF.fit` names them):
    "counts must be non-negative and finite" alone left the caller to search a whole
    matrix for one value."""
    if not values.size or (np.all(np.isfinite(values)) and values.min() >= 0):
        return
    problems = bad_count_problems(values, positions)
    raise ValueError("counts must be non-negative and finite; found " + "; ".join(problems))


def _refuse_repeats_beyond_int64(matrix) -> None:
    """A `ValueError` when repeated entries of a (checked) sparse matrix of 8-byte integers
    sum to 2**63 or more: scipy sums them in their dtype, where they wrapped round (four
    entries of 2**62 were split as a count of 0, three refused as a negative count).
    Narrower dtypes are summed in float64 (`widen_to_sum`)."""
    if matrix.dtype.kind not in "iu" or matrix.dtype.itemsize < 8 or matrix.nnz == 0:
        return
    if float(np.sum(matrix.data, dtype=np.float64)) < 2.0**62:  # no sum can reach 2**63
        return
    entries = native_index_arrays(matrix).tocoo()  # repeats kept, as stored
    order = np.lexsort((entries.col, entries.row))
    rows, columns = entries.row[order], entries.col[order]
    starts = np.flatnonzero(np.r_[True, (np.diff(rows) != 0) | (np.diff(columns) != 0)])
    # as Python integers, exactly
    largest = max(np.add.reduceat(entries.data[order].astype(object), starts))
    if largest >= 2**63:
        raise ValueError(
            f"counts must be below 2**63, got {float(largest):.6g} (repeated entries summed)"
        )


def _coo_positions(matrix) -> tuple[np.ndarray, np.ndarray]:
    """The rows and columns of a (checked) sparse matrix's stored values, in the order of
    its ``data`` (a BSR's: its blocks' entries, in order, as ``tocoo`` gives them)."""
    entries = native_index_arrays(matrix).tocoo()
    return entries.row, entries.col
