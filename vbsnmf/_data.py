"""The count matrix as the engine stores it: CSR along one axis, with its constant term.

Every driver hands the model's pass (`_model.shape_statistics`) a `CountData`; how the
driver got it (a matrix in memory, a minibatch, a Dask chunk, a block read from disk) is
the driver's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from . import _kernels
from ._validation import exact_float_dtype, widen_to_sum

# Minor axes up to this length have their indices stored as uint16 in the engine's copies.
SMALL_INDEX_LIMIT = 1 << 16


def compressed_totals(
    indptr, indices, counts, n_major: int, n_minor: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each major row's and each minor index's total count of compressed arrays (any index
    order, duplicates added), in float64: the counts may be stored as float32 (exact),
    their sums not."""
    major, minor = np.empty(n_major), np.empty(n_minor)
    _kernels.csr_totals(indptr, indices, counts, major, minor)
    return major, minor


@dataclass
class CountData:
    """A count matrix as CSR along its ``major`` axis (0 = rows, 1 = columns).

    ``log_factorial`` is the constant ``sum_n lgamma(x_n + 1)`` of the ELBO's data term.
    """

    shape: tuple[int, int]
    major: int
    indptr: np.ndarray
    indices: np.ndarray
    counts: np.ndarray
    _log_factorial: float | None = field(default=None, repr=False, compare=False)
    _totals: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def log_factorial(self) -> float:
        """``sum_n lgamma(x_n + 1)``, computed on first use and kept: a cell minibatch's
        local fit makes the block's rows major again (`_model.fit_rows`) and never needs
        that copy's, which cost a pass of lgamma over the block every SVI step."""
        if self._log_factorial is None:
            self._log_factorial = float(_kernels.log_factorial_sum(self.counts, 1 << 16))
        return self._log_factorial

    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        """Each major row's and each minor index's total count (float64), computed on the
        first call (one pass over the nonzeros) and kept: the pass's data term needs them
        every iteration."""
        if self._totals is None:
            n_major, n_minor = self.shape[self.major], self.shape[1 - self.major]
            self._totals = compressed_totals(
                self.indptr, self.indices, self.counts, n_major, n_minor
            )
        return self._totals

    @property
    def nnz(self) -> int:
        return int(self.counts.shape[0])

    def part_bounds(self, n_parts: int) -> np.ndarray:
        """Major-axis boundaries of ``n_parts`` ranges with about equal nonzeros, one per
        parallel task of the pass (normally one per thread)."""
        n_major = self.shape[self.major]
        n_parts = max(1, min(n_parts, n_major))
        targets = np.linspace(0, self.nnz, n_parts + 1)
        bounds = np.searchsorted(self.indptr, targets, side="left").astype(np.int64)
        bounds[0], bounds[-1] = 0, n_major
        return np.maximum.accumulate(bounds)

    def rows_by_columns(self) -> sp.csr_array | sp.csc_array:
        """The counts as a scipy matrix of ``shape`` (rows x columns: cells x genes), sharing
        this one's arrays: CSR when the rows are major, else the transpose's CSC."""
        stored = (self.shape[self.major], self.shape[1 - self.major])
        csr = sp.csr_array((self.counts, self.indices, self.indptr), shape=stored)
        return csr if self.major == 0 else csr.T

    @classmethod
    def from_csr(cls, matrix: sp.csr_matrix | sp.csr_array, major: int, shape) -> CountData:
        """Wrap a canonical CSR matrix whose rows are the ``major`` axis of ``shape``."""
        return cls(
            shape=(int(shape[0]), int(shape[1])),
            major=major,
            indptr=matrix.indptr,
            indices=matrix.indices,
            counts=matrix.data,
        )


def as_count_data(
    matrix, counts_dtype=None, major: int | None = None, owned: bool = False
) -> CountData:
    """Canonical CSR of ``matrix`` (already validated) along its longer axis, or along
    ``major`` when given (0: its rows, as a local fit reads them, `_model.fit_rows`).

    The longer axis is major so that the pass's per-part accumulators, one n_minor x K
    slab per part, are on the shorter axis. The counts are stored as float32 where that is
    exact (`_validation.exact_float_dtype`, or as ``counts_dtype`` when given): the pass
    reads every count once per iteration and widens it as it reads. A matrix that already
    is canonical CSR along the major axis with counts stored so is used as it is, not
    copied: at the lung-atlas shape (240M nonzeros) that copy was 1.8 GiB of a 4.2 GiB peak.
    A copy made here (the matrix transposed or canonicalised, or its counts converted)
    stores whole counts up to 65,535 as uint16 (`small_counts`); indices made here (the
    matrix transposed or canonicalised, or given dense or as COO; never a caller's CSR's,
    used as they are) are stored as uint16 when the minor axis has at most 65,536 entries
    (`SMALL_INDEX_LIMIT`: the genes of any organism, or the cells of a data set with fewer
    cells than genes), 4 bytes a nonzero with the counts instead of 6. The pass widens
    both as it reads them, so a fit is the same bit for bit. ``owned``: ``matrix`` is a
    block of cells (read from a cell source, or a Dask chunk), whose indices are stored as
    those of a copy made here even when they are its own (a copy of at most the block's
    size, never modifying it): every block of a streamed fit then has the same index
    dtype, and Numba compiles each kernel once for them, not once per dtype (a block
    used as it was kept the int64 indices scipy gives a block with int64 pointers).
    """
    caller_indices = getattr(matrix, "indices", None)  # None: dense or COO, ours after
    matrix = sp.csr_array(matrix) if not sp.issparse(matrix) else widen_to_sum(matrix)
    shape = matrix.shape
    if major is None:
        major = 0 if shape[0] >= shape[1] else 1
    csr = sp.csr_array(matrix if major == 0 else matrix.T)  # may share the caller's arrays
    if not _kernels.csr_is_canonical(csr.indptr, csr.indices, csr.data):
        # Sorting, summing duplicates and dropping zeros work in place: never on the
        # caller's matrix.
        csr = csr.copy()
        csr.sum_duplicates()
        csr.eliminate_zeros()
    if counts_dtype is not None:
        dtype = counts_dtype
    else:
        dtype = exact_float_dtype(csr.data)
        caller_data = getattr(matrix, "data", None)
        copied = caller_data is None or not np.may_share_memory(csr.data, caller_data)
        if (copied or csr.data.dtype != dtype) and small_counts(csr.data):
            dtype = np.uint16
    if csr.data.dtype != dtype:
        csr.data = csr.data.astype(dtype)
    if csr.indptr.dtype != np.int64:
        # One pointer dtype for every matrix: scipy gives int32 pointers to small matrices
        # and int64 to large ones (and SVI's minibatches are int64), and each dtype compiled
        # every kernel again. n_major + 1 entries, so the copy is small.
        csr.indptr = csr.indptr.astype(np.int64)
    own_indices = (
        owned or caller_indices is None or not np.may_share_memory(csr.indices, caller_indices)
    )
    if own_indices and shape[1 - major] <= SMALL_INDEX_LIMIT:
        csr.indices = csr.indices.astype(np.uint16)
    return CountData.from_csr(csr, major, shape)


def small_counts(values: np.ndarray) -> bool:
    """Whether every value is a whole number from 0 to 65,535 (exact in uint16)."""
    step = 1 << 20  # a block at a time: no nnz-sized temporary
    for start in range(0, values.shape[0], step):
        block = values[start : start + step]
        if block.size and not (
            block.min() >= 0 and block.max() <= 65535 and np.array_equal(np.floor(block), block)
        ):
            return False
    return True
