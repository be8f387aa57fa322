"""The data side of the classical solvers: X (and its entry weights) in the form each
solver step needs, with the sums that every loss and update is made of.

Three layouts, chosen once per fit:

- ``dense``: X given dense (its n x m memory already exists), optional dense weights. Every
  n x m temporary (``W H``, the ratio ``X / (W H)``, ``(W H)**gamma``, the loss's terms) is
  formed a block of rows at a time (`dense_row_blocks`): a fit holds X and a few blocks;
- ``sparse``: X sparse, every entry counts. Stored twice as CSR (rows of X and rows of X
  transposed) so both half-steps are parallel over their own rows without write races.
  Sums over the zeros use closed forms (`losses.sum_q_power`) or one row of Q at a time.
  Dense weights that differ from 1 somewhere become an *exclusion* list: the loss and the
  update terms of those entries are subtracted, weighted by ``1 - w`` (negative where
  w > 1: the entry's terms are then added), X's entries of weight 0 taken as zeros;
- ``pattern``: sparse weights: only the stored entries of the weight matrix count (also
  for dense weights on sparse X under a loss undefined at zero, which count only nonzeros).

Notation: a half-step updates ``row_factor`` (W, n x K, or H transposed, m x K) given
``col_factor`` (H transposed, or W); ``side`` is ``"rows"`` or ``"cols"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.utils.validation import check_array

from .. import _kernels
from .._utils import is_dask_array
from .._validation import (
    check_sparse_structure,
    exact_float_dtype,
    is_backed_sparse,
    native_index_arrays,
    refuse_masked,
    refuse_path_or_anndata,
    refuse_pydata_sparse,
    sparse_frame_as_coo,
)
from .losses import (
    Q_FLOOR,
    LossSpec,
    ab_divergence,
    check_defined_at_zeros,
    check_factors,
    entry_floor,
    loss_is_floored,
    resolve_loss,
    sum_q_power,
)

_EMPTY = np.empty(0, dtype=np.float64)
# sparse layouts whose index arrays `check_sparse_structure` checks
_CHECKED = ("csr", "csc", "coo", "bsr")

# Bytes of one float64 temporary of the dense route: a block of rows of ``W H``, of the
# ratio, of ``(W H)**gamma`` (`dense_row_blocks`). Held whole, the multiplicative updates
# peaked at 7.4 to 9.4 times X's memory over X itself, the Frobenius solvers at 2 times
# (2,000 x 3,000, tracemalloc); in blocks the extra is a few times this budget whatever
# X's size (there 0.6 and 0.3 times X, and less the larger X is). A budget, not a
# row count tuned to one data set: rows of 30,000 genes and of 300 take the same memory
# per block. Large enough that each block's numpy passes and its BLAS products (block x K
# by K x m) amortise their per-call cost: with one BLAS thread (`NMF._run`) the blocked
# iterations took 0.7-0.9x the CPU time of whole arrays at 4 and 16 MiB (2,000 x 3,000,
# K = 10, same process).
DENSE_BLOCK_BYTES = 1 << 22


def dense_row_blocks(n_rows: int, n_cols: int):
    """Slices of consecutive rows, each at most `DENSE_BLOCK_BYTES` of float64 over
    ``n_cols`` columns (one row at least), covering ``range(n_rows)`` in order."""
    step = max(1, DENSE_BLOCK_BYTES // (8 * max(1, n_cols)))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


@dataclass
class SparseEntries:
    """Stored entries in the column tiles of the classical kernels (`_kernels.TILE_COLUMNS`):
    ``indptr`` is (n_tiles, n_rows + 1); values ``data`` (float32 where exact, see
    `_validation.exact_float_dtype`) and per-entry ``weights`` (or empty) in the same order.

    The sparse products stream every stored entry from memory once per half-step, and at
    pbmc_facs' size X and its transpose do not stay in cache between them: four bytes less
    per entry made the pair of products 0.8x the time (same-process A/B). The kernels widen
    each value to float64 as they read it, so the results are those of float64 storage."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    weights: np.ndarray
    n_cols: int

    @property
    def n_rows(self) -> int:
        return self.indptr.shape[1] - 1

    @classmethod
    def from_coo(cls, rows, cols, values, weights, shape) -> SparseEntries:
        """Entries given as COO, unique by construction; explicit zeros are kept (scipy's
        duplicate summing is not wanted here)."""
        order = np.lexsort((cols, rows))
        counts = np.bincount(rows, minlength=shape[0])
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        weights = None if weights is None else np.asarray(weights, np.float64)[order]
        return cls._tiled(indptr, cols[order], values[order], weights, shape[1])

    @classmethod
    def from_csr(cls, matrix, dtype=None) -> SparseEntries:
        """The entries of a CSR matrix with sorted column indices, values stored as
        ``dtype`` (default: `_validation.exact_float_dtype`)."""
        return cls._tiled(matrix.indptr, matrix.indices, matrix.data, None, matrix.shape[1], dtype)

    @classmethod
    def _tiled(cls, indptr, indices, values, weights, n_cols: int, dtype=None) -> SparseEntries:
        indptr = np.asarray(indptr, dtype=np.int64)
        indices = np.ascontiguousarray(indices, dtype=np.int32)
        dtype = exact_float_dtype(values) if dtype is None else dtype
        weights = _EMPTY if weights is None else np.ascontiguousarray(weights, np.float64)
        n_tiles = _kernels.tile_count(n_cols)
        if n_tiles == 1:
            values = np.ascontiguousarray(values, dtype=dtype)
            return cls(indptr[None, :], indices, values, weights, n_cols)
        n_rows = indptr.shape[0] - 1
        counts = np.empty((n_tiles, n_rows), dtype=np.int64)
        _kernels.tile_run_lengths(indptr, indices, counts)
        tiled_indptr = np.empty((n_tiles, n_rows + 1), dtype=np.int64)
        tiled_indptr[:, 1:] = np.cumsum(counts, axis=None).reshape(n_tiles, n_rows)
        tiled_indptr[0, 0] = 0
        tiled_indptr[1:, 0] = tiled_indptr[:-1, n_rows]

        def tiled(source, dtype):
            target = np.empty(source.shape[0], dtype=dtype)
            if source.shape[0]:  # values are narrowed to `dtype` as they are copied
                _kernels.tile_values(indptr, tiled_indptr, source, target)
            return target

        return cls(
            tiled_indptr,
            tiled(indices, np.int32),
            tiled(values, dtype),
            tiled(weights, np.float64),
            n_cols,
        )

    def to_csr(self) -> sp.csr_matrix:
        """The entries as a float64 CSR matrix (their values, not times their weights)."""
        n_tiles, n_rows = self.indptr.shape[0], self.n_rows
        values = self.data.astype(np.float64)
        if n_tiles == 1:
            indptr = self.indptr[0]
            return sp.csr_matrix((values, self.indices, indptr), shape=(n_rows, self.n_cols))
        counts = np.diff(self.indptr, axis=1).ravel()
        rows = np.repeat(np.tile(np.arange(n_rows), n_tiles), counts)
        return sp.csr_matrix((values, (rows, self.indices)), shape=(n_rows, self.n_cols))


@dataclass
class EntryPair:
    """The same stored entries by rows of X and by rows of X transposed."""

    by_rows: SparseEntries
    by_cols: SparseEntries

    @classmethod
    def from_coo(cls, rows, cols, values, weights, shape) -> EntryPair:
        return cls(
            SparseEntries.from_coo(rows, cols, values, weights, shape),
            SparseEntries.from_coo(cols, rows, values, weights, shape[::-1]),
        )

    def side(self, side: str) -> SparseEntries:
        return self.by_rows if side == "rows" else self.by_cols


def _sparse_frame_read(X):
    """A DataFrame of sparse columns as scikit-learn cannot read it: a COO with fill value
    0, dense with another (every unstored entry's value; scikit-learn's conversion refused
    it in pandas' words, "fill value must be 0"); any other ``X`` as it is."""
    X = sparse_frame_as_coo(X)
    if getattr(X, "ndim", None) == 2 and hasattr(X, "sparse") and X.shape[1]:
        X = X.sparse.to_dense()
    return X


def positional_columns(frame):
    """A DataFrame whose column names repeat, relabelled 0..m-1 (the same columns, not
    copied); any other value as it is. scikit-learn's conversion refused such a frame in
    narwhals' words ("DuplicateError: Expected unique column names") where `VBNMF` fits
    it, and gene symbols repeat (``adata.to_df()`` before ``var_names_make_unique``). The
    names themselves are checked and remembered by the estimator (`check_feature_names`)."""
    columns = getattr(frame, "columns", None)
    if getattr(frame, "ndim", None) != 2 or getattr(columns, "is_unique", True):
        return frame
    return frame.set_axis(range(frame.shape[1]), axis=1)


def refuse_unread_sparse(value, name: str) -> None:
    """A `TypeError` naming a sparse matrix that numpy cannot read: a pydata `sparse` array
    (its own RuntimeError advised densifying it) or a backed AnnData's X, anndata's sparse
    dataset on disk (numpy said "setting an array element with a sequence")."""
    refuse_pydata_sparse(value, name)
    if is_backed_sparse(value):
        raise TypeError(
            f"{name} is a backed AnnData's sparse X (read from disk), which the classical "
            "solvers do not stream: read it into memory first (adata.X[:] or "
            "adata.to_memory())"
            + (", or fit the counts with vbsnmf.VBNMF(solver='svi')" if name == "X" else "")
        )


def _in_memory(values, name: str):
    """``values`` computed into memory when a dask array (sparse chunks stay sparse, each
    block checked against its chunk); as given otherwise. scikit-learn's check_array
    computed dense chunks whole, but made a 0-d object array of sparse ones, which numpy
    refused as "setting an array element with a sequence"."""
    if not is_dask_array(values):
        return values
    from .._dask._cluster import computed_as_declared  # dask: only for a dask array

    return computed_as_declared(values, name)


def check_data(X):
    """X as float64 CSR or C-ordered dense, non-negative and finite (typed errors); the
    index arrays of a sparse X are checked before scipy reads through them."""
    refuse_path_or_anndata(X, "X", reading="", fitting=", solver='mu'")
    # a dask X has no filled method: the advice names dask's
    filled = "dask.array.ma.filled(X, 0)" if is_dask_array(X) else "X.filled(0)"
    X = _in_memory(X, "X")  # before the masked check: its chunks may be masked arrays
    refuse_masked(
        X,
        "X",
        f"pass the values as {filled} and leave the masked entries out with weights=... "
        "(0 there, 1 elsewhere; solver='mu')",
    )
    refuse_unread_sparse(X, "X")
    X = positional_columns(_sparse_frame_read(X))
    if sp.issparse(X) and X.ndim != 2:  # a 1-D or n-D coo_array: the checks below unpack 2
        raise ValueError(f"X must be 2-D, got {X.ndim}-D")
    if sp.issparse(X) and X.format in _CHECKED:
        check_sparse_structure(X, "X")
    if sp.issparse(X) and X.format in ("csr", "csc", "coo"):
        # unsigned index arrays (BPCells wrote indptr as uint64), which scipy's routines
        # refuse as "unsupported data types in input", made signed as VBNMF makes them
        X = native_index_arrays(X)
    X = check_array(
        X,
        accept_sparse=("csr", "csc", "coo"),
        dtype=np.float64,
        ensure_all_finite=True,
        ensure_non_negative=True,
        input_name="X",
    )
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        if not X.has_canonical_format or not np.all(X.data):
            X = X.copy()  # the caller's matrix is not modified
            X.eliminate_zeros()
            X.sum_duplicates()
        return X
    return np.ascontiguousarray(X)


@dataclass
class ClassicData:
    """X prepared for the classical solvers (see the module docstring)."""

    shape: tuple[int, int]
    kind: str
    dense: np.ndarray | None = None
    dense_weights: np.ndarray | None = None
    entries: EntryPair | None = None
    exclusion: EntryPair | None = None
    # per row, the total of the entries that count (weight > 0): a masked entry has no
    # influence on the initialisation or the Poisson form
    row_totals: np.ndarray | None = None
    # how many entries count (weight > 0); None: all of them
    n_counted: int | None = None
    # sparse X under the Frobenius loss: sum_j x_ij**2 per row, float64 (`squared_residuals`)
    row_squares: np.ndarray | None = None

    @classmethod
    def build(cls, X, weights=None, spec: LossSpec | None = None) -> ClassicData:
        """Validate X and ``weights`` and choose the layout.

        Raises
        ------
        ValueError
            Negative, NaN or infinite entries; weights of the wrong shape or negative; a
            loss (``spec``) undefined at zeros of X that count.
        """
        X = check_data(X)
        shape = X.shape
        row_totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
        if weights is not None:
            refuse_unread_sparse(weights, "weights")
            weights = positional_columns(_sparse_frame_read(_in_memory(weights, "weights")))
            # damaged index arrays crash scipy's conversions below (a C++ RuntimeError) or
            # fail with a message that does not name the weights, as they would for X
            if sp.issparse(weights) and weights.ndim == 2 and weights.format in _CHECKED:
                check_sparse_structure(weights, "weights")
            weights = check_array(
                weights,
                accept_sparse=("csr", "csc", "coo"),
                dtype=np.float64,
                ensure_non_negative=True,
                input_name="weights",
                # scipy's count_nonzero sums repeats and sorts indices in place: the caller's
                # sparse weights are not modified
                copy=sp.issparse(weights),
            )
            if weights.shape != shape:
                # genes x cells, as 10x files and R hold a matrix: say so, not only the shapes
                transposed = weights.shape == tuple(shape)[::-1]
                flipped = (
                    ", transposed: if its rows are genes and its columns cells, pass weights.T"
                )
                raise ValueError(
                    f"weights have shape {weights.shape}, X has shape {shape}"
                    + (flipped if transposed else "")
                )
            positive = (
                weights.count_nonzero() if sp.issparse(weights) else np.count_nonzero(weights)
            )
            if positive == 0:
                raise ValueError("weights select no entry (all zero): there is nothing to fit")
        every_entry = sp.issparse(X) and X.nnz == shape[0] * shape[1]
        if weights is None and every_entry and spec is not None and spec.zero_power is None:
            # A sparse X with every entry stored, under a loss undefined at p = 0: the loss
            # is a sum over the stored entries, not the sparse route's split into
            # d(x, q) - d(0, q) and d(0, q) everywhere (a ZeroDivisionError or TypeError).
            weights = sp.coo_matrix((np.ones(X.nnz), X.nonzero()), shape=shape)
        if (
            sp.issparse(X)
            and weights is not None
            and not sp.issparse(weights)
            and spec is not None
            and spec.zero_power is None
        ):
            # A loss undefined at p = 0 counts X's nonzeros only, which the weights must
            # select (checked before the entries of weight > 0 are listed: at most nnz then):
            # summed exactly by the pattern route (the sparse route's split into
            # d(x, q) - d(0, q) and d(0, q) everywhere needs d(0, q))
            counted = weights > 0
            n_counted_nonzeros = np.count_nonzero(counted[X.nonzero()])
            check_defined_at_zeros(spec, np.count_nonzero(counted) > n_counted_nonzeros)
            del counted
            weights = sp.coo_matrix(weights)
        if weights is not None and sp.issparse(weights):
            coo = sp.coo_matrix(weights)
            keep = coo.data > 0
            rows, cols, w = coo.row[keep], coo.col[keep], coo.data[keep]
            values = _values_at(X, rows, cols)
            if spec is not None:
                check_defined_at_zeros(spec, bool(np.any(values == 0)))
            entries = EntryPair.from_coo(rows, cols, values, w, shape)
            row_totals = np.bincount(rows, weights=values, minlength=shape[0])
            return cls(
                shape, "pattern", entries=entries, row_totals=row_totals, n_counted=rows.size
            )
        if not sp.issparse(X):
            if spec is not None:
                check_defined_at_zeros(spec, _dense_has_counted_zeros(X, weights))
            n_counted = None
            if weights is not None:
                row_totals, n_counted = _dense_counted_totals(X, weights)
            return cls(
                shape,
                "dense",
                dense=X,
                dense_weights=weights,
                row_totals=row_totals,
                n_counted=n_counted,
            )
        if spec is not None:
            check_defined_at_zeros(spec, X.nnz < shape[0] * shape[1])
        n_counted = None
        if weights is not None:
            counted = weights > 0
            n_uncounted = counted.size - np.count_nonzero(counted)
            if n_uncounted:
                n_counted = counted.size - n_uncounted
                # X's entries of weight 0 are taken as zeros of X, whose exclusion then
                # takes back d(0, q), finite: as X's values they entered both the sums and
                # the exclusion as d(x, q), huge where q is near 0 under a loss with
                # d(x, 0) infinite, and their difference was rounding (loss_ 0.6 off)
                X = _without_uncounted(X, counted)
                row_totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
            del counted
        dtype = exact_float_dtype(X.data)
        # transposed with the stored (possibly float32) values: a smaller temporary
        values = X.data.astype(dtype, copy=False)
        by_cols = SparseEntries.from_csr(
            sp.csr_matrix((values, X.indices, X.indptr), shape=shape).T.tocsr(), dtype
        )
        del values
        entries = EntryPair(SparseEntries.from_csr(X, dtype), by_cols)
        exclusion = None
        if weights is not None:
            rows, cols = np.nonzero(weights != 1.0)
            if rows.size:
                values = _values_at(X, rows, cols)
                exclusion = EntryPair.from_coo(rows, cols, values, 1.0 - weights[rows, cols], shape)
        frobenius = spec is not None and spec.alpha == 1.0 and spec.beta == 1.0
        return cls(
            shape,
            "sparse",
            entries=entries,
            exclusion=exclusion,
            row_totals=row_totals,
            n_counted=n_counted,
            row_squares=_row_squares(X) if frobenius else None,
        )

    # ---- shapes -------------------------------------------------------------------------

    def check_factors(self, W, H) -> tuple[np.ndarray, np.ndarray]:
        """W (n x K) and H (K x m) as float64 copies, checked against X (`check_factors`)."""
        return check_factors(W, H, self.shape)

    @property
    def is_weighted(self) -> bool:
        return (
            self.kind == "pattern" or self.exclusion is not None or (self.dense_weights is not None)
        )

    def mean(self) -> float:
        """Mean of X over the entries that count (the scale used by the initialisations)."""
        n_counted = self.shape[0] * self.shape[1] if self.n_counted is None else self.n_counted
        return float(self.row_totals.sum()) / n_counted

    def counted_matrix(self) -> np.ndarray | sp.csr_matrix:
        """X with the entries of weight 0 set to zero, dense or CSR as X: what the
        initialisations factorise, so that a masked entry has no influence on the fit."""
        if self.kind == "dense":
            if self.dense_weights is None:
                return self.dense
            return np.where(self.dense_weights > 0, self.dense, 0.0)
        # sparse X with dense weights holds its entries of weight 0 as zeros (`build`)
        return self.entries.by_rows.to_csr()

    def col_totals(self) -> np.ndarray:
        """Per column, the total of the entries that count (weight > 0), as `row_totals`."""
        if self.kind == "dense":
            if self.dense_weights is None:
                return np.asarray(self.dense.sum(axis=0), dtype=np.float64)
            totals = np.zeros(self.shape[1])
            for rows in dense_row_blocks(*self.shape):  # no masked copy of X
                counted = self.dense_weights[rows] > 0
                totals += np.where(counted, self.dense[rows], 0.0).sum(axis=0)
            return totals
        # the stored entries are the counted ones (`build`: entries of weight 0 left out)
        return self.data_times(np.ones((self.shape[0], 1)), "cols")[:, 0]

    def dense_side(self, side: str) -> tuple[np.ndarray, np.ndarray | None]:
        if side == "rows":
            return self.dense, self.dense_weights
        weights = None if self.dense_weights is None else self.dense_weights.T
        return self.dense.T, weights

    # ---- loss ---------------------------------------------------------------------------

    def loss(self, spec: LossSpec, W: np.ndarray, H: np.ndarray) -> float:
        """``D(X, W H)`` by the layout's route (never dense ``W H`` for sparse X)."""
        if self.kind == "dense":
            return _dense_loss(spec, self.dense, self.dense_weights, W, H)
        col_factor = np.ascontiguousarray(H.T)
        row_factor = np.ascontiguousarray(W)
        if self.kind == "pattern":
            return _entries_loss(spec, self.entries.by_rows, row_factor, col_factor, False)
        if spec.alpha == 1.0 and spec.beta == 1.0:
            # Frobenius: d(x, q) - d(0, q) at the entries plus sum q**2 would cancel. Past the
            # float range its squares' difference is NaN, which was returned as the loss.
            with np.errstate(over="ignore", invalid="ignore"):
                residuals = self.squared_residuals(row_factor, col_factor)
            total = _finite(0.5 * spec.scale * float(residuals.sum()), spec)
        else:
            total = _entries_loss(spec, self.entries.by_rows, row_factor, col_factor, True)
            total += spec.zero_coef * sum_q_power(row_factor, H, spec.zero_power)
        if self.exclusion is not None:
            total -= _entries_loss(spec, self.exclusion.by_rows, row_factor, col_factor, False)
        return total

    # ---- terms of the multiplicative updates --------------------------------------------

    def ab_terms(
        self,
        alpha: float,
        beta: float,
        row_factor: np.ndarray,
        col_factor: np.ndarray,
        side: str,
        with_loss: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Numerator, denominator and current AB loss of one multiplicative half-step.

        ``numerator = (w X**alpha Q**(beta-1)) @ col_factor``,
        ``denominator = (w Q**(alpha+beta-1)) @ col_factor`` and the loss of each row,
        ``sum_j w d_AB(X, Q)``, for ``Q = row_factor @ col_factor.T`` (X transposed when
        ``side == "cols"``). Without ``with_loss`` the returned losses are meaningless (the
        H step skips its logarithms).
        """
        gamma = alpha + beta - 1.0
        if self.kind == "dense":
            X, weights = self.dense_side(side)
            return _dense_ab_terms(X, weights, row_factor, col_factor, alpha, beta, with_loss)

        n_rows, n_components = row_factor.shape
        entries = self.entries.side(side)
        if self.kind == "pattern":
            return _ab_mu_terms(entries, row_factor, col_factor, alpha, beta, True, with_loss)

        if alpha == 1.0 and beta == 1.0:
            # Frobenius: the numerator is X @ H^T, the denominator from the Gram matrix.
            numerator = _sparse_dot(entries, col_factor)
            denominator = row_factor @ (col_factor.T @ col_factor)
            row_loss = np.zeros(n_rows)
            if with_loss:
                row_loss = 0.5 * self.squared_residuals(row_factor, col_factor, side, numerator)
        else:
            # with gamma < 0: the stored entries' correction of the floor of the power pass
            numerator, correction, row_loss = _ab_mu_terms(
                entries, row_factor, col_factor, alpha, beta, False, with_loss
            )
            # the zeros' part d(0, q) = q**(alpha + beta) / (alpha (alpha + beta)), per row
            power = alpha + beta
            if gamma == 0.0:
                denominator = np.repeat(col_factor.sum(axis=0)[None, :], n_rows, axis=0)
                row_power = row_factor @ col_factor.sum(axis=0)
            elif gamma == 1.0:
                denominator = row_factor @ (col_factor.T @ col_factor)
                row_power = np.einsum("ik,ik->i", denominator, row_factor)
            else:
                denominator = np.empty((n_rows, n_components))
                row_power = np.empty(n_rows)
                _kernels.classic_dense_power_pass(
                    row_factor, col_factor, gamma, Q_FLOOR, denominator, row_power
                )
                if correction is not None:
                    denominator += correction
            row_loss += row_power / (alpha * power)
        if self.exclusion is not None:
            excluded = self.exclusion.side(side)
            numerator_e, denominator_e, row_loss_e = _ab_mu_terms(
                excluded, row_factor, col_factor, alpha, beta, True, with_loss
            )
            numerator -= numerator_e
            denominator -= denominator_e
            row_loss -= row_loss_e
            # Both are sums of terms >= 0, taken as every entry's less the excluded entries':
            # where the excluded carry all of it (a row of weight 0), the difference is
            # rounding, which must not turn a factor negative.
            np.maximum(numerator, 0.0, out=numerator)
            np.maximum(denominator, 0.0, out=denominator)
        return numerator, denominator, row_loss

    # ---- terms of the Frobenius solvers -------------------------------------------------

    def squared_residuals(
        self,
        row_factor: np.ndarray,
        col_factor: np.ndarray,
        side: str = "rows",
        data_times: np.ndarray | None = None,
    ) -> np.ndarray:
        """``||X - row_factor @ col_factor.T||^2`` of each row, over every entry (weights
        not applied; X transposed when ``side == "cols"``), never forming ``W H`` for
        sparse X.

        Not ``||X||^2 - 2 <W, X H^T> + <W^T W, H H^T>``: that cancels catastrophically
        where X has a large entry (a count of 2**31 left the loss off by 1e3 and the trace
        moving in steps of 256), see `_sparse_squared_residuals`. With ``data_times``
        (``X @ col_factor``, which a half-step has computed anyway) for the rows of a sparse
        X, that expansion is taken per row where it keeps at least 32 bits (a pass over the
        nonzeros fewer: HALS took 1.7x the time per iteration without it).
        """
        if self.kind == "dense":
            X, _ = self.dense_side(side)
            squares = np.empty(X.shape[0])
            for rows in dense_row_blocks(*X.shape):  # no n x m residual (`DENSE_BLOCK_BYTES`)
                residual = row_factor[rows] @ col_factor.T
                np.subtract(X[rows], residual, out=residual)
                squares[rows] = np.einsum("ij,ij->i", residual, residual)
            return squares
        if data_times is not None and side == "rows" and self.row_squares is not None:
            expanded = _expanded_squared_residuals(
                self.row_squares, row_factor, col_factor, data_times
            )
            if expanded is not None:
                return expanded
        return _sparse_squared_residuals(self.entries.side(side), row_factor, col_factor)

    def data_times(self, col_factor: np.ndarray, side: str) -> np.ndarray:
        """``X @ col_factor`` (``side="rows"``) or ``X.T @ col_factor`` (``"cols"``)."""
        if self.kind == "dense":
            X, _ = self.dense_side(side)
            return X @ col_factor
        return _sparse_dot(self.entries.side(side), col_factor)


# The kernels run on factors padded to a multiple of the SIMD width (_kernels.pad_components);
# the padded columns are zero in and out, and sliced off here.


def _sparse_dot(entries: SparseEntries, col_factor: np.ndarray) -> np.ndarray:
    """``X @ col_factor`` for the stored entries of X (weights not applied)."""
    padded = _kernels.pad_components(col_factor)
    out = np.empty((entries.n_rows, padded.shape[1]))
    _kernels.classic_sparse_dot(entries.indptr, entries.indices, entries.data, padded, out)
    return np.ascontiguousarray(out[:, : col_factor.shape[1]])


# A row's zeros' part ``sum q**2`` is summed term by term when subtracting its stored
# entries' part from its total left less than this fraction: more than 10 of the 53 bits
# lost to cancellation.
_CANCELLATION_LIMIT = 2.0**-10


def _row_squares(X: sp.csr_matrix) -> np.ndarray:
    """``sum_j x_ij**2`` of every row of X in float64, a block of rows at a time (the
    squares of every nonzero at once would be a float64 copy of them)."""
    step = 1 << 14
    out = np.empty(X.shape[0])
    for start in range(0, X.shape[0], step):
        block = X[start : start + step]
        with np.errstate(over="ignore"):  # inf past the float range: the loss says so
            block_squares = np.square(block.data, dtype=np.float64)
        squares = sp.csr_matrix((block_squares, block.indices, block.indptr), block.shape)
        out[start : start + step] = np.asarray(squares.sum(axis=1)).ravel()
    return out


# The expansion ``||x||^2 - 2 x.q + ||q||^2`` of a row's squared residual is kept where it
# is at least this fraction of the sum of its terms' magnitudes: its rounding (a few ulps of
# that sum) is then below 2**-30 of the value.
_EXPANSION_LIMIT = 2.0**-20


def _expanded_squared_residuals(row_squares, row_factor, col_factor, data_times):
    """Each row's ``||x_i - r_i C^T||^2`` as ``||x_i||^2 - 2 r_i . (x_i C) + r_i C^T C r_i``
    (``data_times`` is ``X @ C``), or None when any row's value is within rounding of zero
    against its terms (a huge count, a row fitted exactly): `_sparse_squared_residuals`."""
    fitted = np.einsum("ik,ik->i", row_factor @ (col_factor.T @ col_factor), row_factor)
    cross = np.einsum("ik,ik->i", row_factor, data_times)
    expanded = row_squares - 2.0 * cross + fitted
    if np.all(expanded >= _EXPANSION_LIMIT * (row_squares + 2.0 * np.abs(cross) + fitted)):
        return expanded
    return None


def _sparse_squared_residuals(entries: SparseEntries, row_factor, col_factor) -> np.ndarray:
    """``||X - R C^T||^2`` of each row, X's stored ``entries`` and zeros elsewhere, in
    O(nnz K + (n + m) K^2).

    The stored entries give ``sum (x - q)**2`` directly. Each row's zeros give
    ``sum q**2``: the row's total over every column, ``r^T (C^T C) r``, minus its stored
    entries' ``sum q**2``. That difference is exact enough unless the stored entries carry
    nearly all of the row's total (a huge entry); such rows are summed term by term over
    their zeros (`_kernels.classic_zero_squares`), the worst first, within about nnz
    entries' work so the cost stays that of one pass. A difference that is still below
    zero is rounding: it counts zero.
    """
    n_rows, n_cols = entries.n_rows, entries.n_cols
    row_factor = np.ascontiguousarray(row_factor, dtype=np.float64)
    col_factor = np.ascontiguousarray(col_factor, dtype=np.float64)
    residual = np.empty(n_rows)
    stored_squares = np.empty(n_rows)
    _kernels.classic_frobenius_stored(
        entries.indptr, entries.indices, entries.data, row_factor, col_factor,
        residual, stored_squares,
    )  # fmt: skip
    row_squares = np.einsum("ik,ik->i", row_factor @ (col_factor.T @ col_factor), row_factor)
    zero_squares = row_squares - stored_squares
    has_zeros = np.diff(entries.indptr, axis=1).sum(axis=0) < n_cols
    zero_squares[~has_zeros] = 0.0
    lossy = np.flatnonzero(has_zeros & (zero_squares < _CANCELLATION_LIMIT * row_squares))
    if lossy.size:
        budget = max(1, entries.data.shape[0] // max(n_cols, 1))
        rows = lossy[np.argsort(-row_squares[lossy], kind="stable")[:budget]]
        exact = np.empty(rows.shape[0])
        _kernels.classic_zero_squares(
            entries.indptr, entries.indices, row_factor, col_factor, rows, exact
        )
        zero_squares[rows] = exact
    return residual + np.maximum(zero_squares, 0.0)


def _ab_mu_terms(entries, row_factor, col_factor, alpha, beta, pattern_only, with_loss):
    """`_kernels.classic_ab_mu_terms` on ``entries``: (numerator, denominator or None,
    per-row loss). The denominator is computed with ``pattern_only``; without it, for
    ``alpha + beta - 1 < 0``, the stored entries' correction of the power pass's floor."""
    n_rows, n_components = row_factor.shape
    row_padded = _kernels.pad_components(row_factor)
    col_padded = _kernels.pad_components(col_factor)
    numerator = np.empty(row_padded.shape)
    with_denominator = pattern_only or alpha + beta - 1.0 < 0.0
    denominator = np.empty(row_padded.shape if with_denominator else (0, row_padded.shape[1]))
    row_loss = np.empty(n_rows)
    _kernels.classic_ab_mu_terms(
        entries.indptr, entries.indices, entries.data, entries.weights,
        row_padded, col_padded, alpha, beta, Q_FLOOR, pattern_only, with_loss,
        numerator, denominator, row_loss,
    )  # fmt: skip
    numerator = np.ascontiguousarray(numerator[:, :n_components])
    if not with_denominator:
        return numerator, None, row_loss
    return numerator, np.ascontiguousarray(denominator[:, :n_components]), row_loss


def _without_uncounted(X: sp.csr_matrix, counted: np.ndarray) -> sp.csr_matrix:
    """X (CSR) less its stored entries where ``counted`` (dense, X's shape) is False."""
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    keep = counted[rows, X.indices]
    indptr = np.zeros(X.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[keep], minlength=X.shape[0]), out=indptr[1:])
    return sp.csr_matrix((X.data[keep], X.indices[keep], indptr), shape=X.shape)


def _values_at(X, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``X[rows, cols]`` as a flat float64 array (X dense or CSR)."""
    if sp.issparse(X):
        return np.asarray(X[rows, cols], dtype=np.float64).ravel()
    return np.asarray(X[rows, cols], dtype=np.float64)


def _dense_has_counted_zeros(X: np.ndarray, weights: np.ndarray | None) -> bool:
    """Whether dense X has a zero that counts (of weight > 0; any zero without weights),
    a block of rows at a time: no mask of X's shape."""
    for rows in dense_row_blocks(*X.shape):
        zeros = X[rows] == 0
        if weights is not None:
            zeros &= weights[rows] > 0
        if zeros.any():
            return True
    return False


def _dense_counted_totals(X: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, int]:
    """Per row of dense X, the total of its entries of weight > 0, and how many entries
    have weight > 0, a block of rows at a time: no masked copy of X."""
    row_totals = np.empty(X.shape[0])
    n_counted = 0
    for rows in dense_row_blocks(*X.shape):
        counted = weights[rows] > 0
        row_totals[rows] = np.where(counted, X[rows], 0.0).sum(axis=1, dtype=np.float64)
        n_counted += int(np.count_nonzero(counted))
    return row_totals, n_counted


def _dense_loss(spec: LossSpec, X: np.ndarray, weights, W: np.ndarray, H: np.ndarray) -> float:
    """``sum w d(x, q)`` over dense X for ``Q = W H``, a block of rows of Q at a time
    (`dense_row_blocks`): the blocks' sums added, so it may differ from one sum over
    every entry in the last bits."""
    floored = loss_is_floored(spec.alpha, spec.beta)
    block_sums = []
    with np.errstate(over="ignore", invalid="ignore"):  # a total out of range: `_finite`
        for rows in dense_row_blocks(*X.shape):
            X_block = X[rows]
            values = spec.pointwise(X_block, _floored_at_nonzeros(X_block, W[rows] @ H, floored))
            if weights is not None:
                values = np.where(weights[rows] > 0, values, 0.0) * weights[rows]
            block_sums.append(np.sum(values))
    return _finite_sum(np.asarray(block_sums, dtype=np.float64), spec)


def _dense_ab_terms(X, weights, row_factor, col_factor, alpha: float, beta: float, with_loss):
    """`ClassicData.ab_terms` on dense ``X`` (rows of X or of X transposed, ``weights``
    alike or None), a block of rows at a time (`dense_row_blocks`). Each row's terms are
    computed by the same operations in the same order as on X whole: the results are
    those of X whole, with a few blocks' memory in place of n x m arrays."""
    n_rows, n_components = row_factor.shape
    numerator = np.empty((n_rows, n_components))
    denominator = np.empty((n_rows, n_components))
    row_loss = np.zeros(n_rows)
    gamma = alpha + beta - 1.0
    floored = loss_is_floored(alpha, beta)
    for rows in dense_row_blocks(*X.shape):
        X_block = X[rows]
        w_block = None if weights is None else weights[rows]
        product = row_factor[rows] @ col_factor.T
        Q = np.maximum(product, 0.0)
        counts = X_block > 0 if w_block is None else (X_block > 0) & (w_block > 0)
        x_counted, q_counted = X_block[counts], Q[counts]
        # Q floored under a negative power only, as scikit-learn does (under a positive
        # one the floor overstated the denominator of data of scale 1e-8, whose fit
        # shrank to zero, unlike the sparse route's Gram form), relative to the entry
        # (`entry_floor`)
        if beta < 1.0:
            q_counted = np.maximum(q_counted, entry_floor(x_counted))
        ratio = np.zeros_like(X_block)
        ratio[counts] = x_counted**alpha * q_counted ** (beta - 1.0)
        del x_counted, q_counted, counts
        q_gamma = (np.maximum(Q, entry_floor(X_block)) if gamma < 0.0 else Q) ** gamma
        del Q
        if w_block is not None:
            ratio *= w_block
            q_gamma *= w_block
        numerator[rows] = ratio @ col_factor
        del ratio
        denominator[rows] = q_gamma @ col_factor
        del q_gamma
        if with_loss:
            # the loss's floor at the nonzeros only, and only where d(x, 0) is infinite
            # (`ClassicData.loss`)
            values = ab_divergence(
                X_block, _floored_at_nonzeros(X_block, product, floored), alpha, beta
            )
            if w_block is not None:
                values = np.where(w_block > 0, values, 0.0) * w_block
            row_loss[rows] = values.sum(axis=1)
    return numerator, denominator, row_loss


def _floored_at_nonzeros(X: np.ndarray, product: np.ndarray, floored: bool) -> np.ndarray:
    """``W H`` as the loss sees it: if ``floored`` (`losses.loss_is_floored`), floored at
    `losses.entry_floor` where X is nonzero, as the sparse route does, so that d(x, q) never
    divides by a zero q; left as it is at X's zeros, where d(0, q) is finite and a floor
    would overstate it."""
    product = np.maximum(product, 0.0)
    if not floored:
        return product
    return np.where(X > 0, np.maximum(product, entry_floor(X)), product)


def _entries_loss(spec: LossSpec, entries: SparseEntries, row_factor, col_factor, minus_zero):
    """``sum w d(x, q)`` over stored entries; with ``minus_zero``: ``sum d(x, q) - d(0, q)``.

    The weights may be negative: the exclusion list's ``1 - w`` for a weight w > 1."""
    q = np.empty(entries.data.shape[0])
    _kernels.classic_wh_at_nonzeros(entries.indptr, entries.indices, row_factor, col_factor, q)
    data = entries.data.astype(np.float64, copy=False)
    # floored at the nonzeros only, as the dense route (`_floored_at_nonzeros`): the stored
    # zeros of weighted data have the finite d(0, q), which a floor would overstate
    values = spec.pointwise(
        data, _floored_at_nonzeros(data, q, loss_is_floored(spec.alpha, spec.beta))
    )
    if minus_zero:
        values = values - spec.zero_coef * np.maximum(q, 0.0) ** spec.zero_power
    if entries.weights.shape[0]:
        # a weight of 0 drops the entry even where d is infinite (0 * inf would be NaN)
        values = np.where(entries.weights != 0, values, 0.0) * entries.weights
    return _finite_sum(values, spec)


def _finite_sum(values: np.ndarray, spec: LossSpec) -> float:
    """The sum of a loss's terms (`_finite`)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _finite(float(np.sum(values)), spec)


def _finite(total: float, spec: LossSpec) -> float:
    """``total``, a loss, or a ValueError that names both ways it can fail to be finite (a
    loss of high power on large values overflowed, and was said to be undefined at a
    zero)."""
    if not np.isfinite(total):
        raise ValueError(
            f"loss {spec.name!r} is undefined or past the float range at some entries (a zero "
            "of X where the loss needs p > 0, a zero reconstruction, or values too large for "
            "the loss's power: scale X and the factors down)"
        )
    return total


def factor_loss(
    X,
    W: np.ndarray,
    H: np.ndarray,
    loss: str = "kl",
    alpha: float | None = None,
    beta: float | None = None,
    weights=None,
) -> float:
    """``D(X, W H)``, never forming the dense ``W H`` when X is sparse.

    Parameters
    ----------
    X
        Non-negative data, n x m, dense or scipy sparse.
    W, H
        Factors, n x K and K x m (``H`` is scikit-learn's ``components_``).
    loss, alpha, beta
        The loss, see `resolve_loss`. ``"poisson"`` is KL against ``diag(c) W H`` with
        ``c`` the per-sample totals ``sum(X, axis=1)``, over the entries of weight > 0 when
        ``weights`` are given (as `NMF` fits it, so this is its ``loss_``).
    weights
        Optional non-negative entry weights of X's shape, dense or sparse (a 0/1 mask is the
        common case; any finite weights >= 0 are exact): the loss is
        ``sum_ij weights_ij d(x_ij, q_ij)``. *Sparse* weights count only their stored
        entries.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        The loss is undefined at a zero of X (Itakura-Saito, Neyman, alpha <= 0, ...) or
        past the float range (values too large for its power), or shapes do not match; X
        not 2-D, negative, NaN or infinite; W or H not finite and non-negative; weights
        negative or not finite; an unknown loss, or ``alpha`` / ``beta`` missing or given
        where the loss has none (`resolve_loss`).
    """
    spec = resolve_loss(loss, alpha, beta)
    data = ClassicData.build(X, weights, spec)
    W, H = data.check_factors(W, H)
    if spec.name == "poisson":
        W = W * data.row_totals[:, None]
    with np.errstate(over="ignore", invalid="ignore"):  # a loss out of range is an error
        return data.loss(spec, W, H)
