"""`VBNMF`, the scikit-learn face of the variational-Bayes engine in `_vb.py`."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import numba
import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import _vb
from ._validation import check_counts, check_n_components, check_positive


@contextlib.contextmanager
def numba_threads(n_threads: int | None):
    """Run the block with ``n_threads`` Numba threads; yields the count used."""
    available = numba.config.NUMBA_NUM_THREADS
    if n_threads is None:
        n_threads = available
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)):
        raise TypeError(f"n_threads must be an integer or None, got {n_threads!r}")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    n_threads = int(min(n_threads, available))
    previous = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        yield n_threads
    finally:
        numba.set_num_threads(previous)


def _init_from(init, n_rows: int, n_cols: int, n_components: int, dtype) -> _vb.VariationalParams:
    """Starting q from a fitted `VBNMF`, `VariationalParams` or a mapping with keys
    ``obs_shape``, ``obs_rate``, ``var_shape``, ``var_rate``."""
    if isinstance(init, VBNMF):
        check_is_fitted(init, "obs_shape_")
        arrays = (init.obs_shape_, init.obs_rate_, init.var_shape_, init.var_rate_)
    elif isinstance(init, _vb.VariationalParams):
        arrays = init.as_tuple()
    elif isinstance(init, Mapping):
        try:
            arrays = tuple(init[k] for k in ("obs_shape", "obs_rate", "var_shape", "var_rate"))
        except KeyError as missing:
            raise ValueError(f"init is missing {missing}") from None
    else:
        raise TypeError(f"init must be a VBNMF, VariationalParams or mapping, got {type(init)}")
    arrays = tuple(np.array(a, dtype=dtype, copy=True) for a in arrays)
    expected = ((n_rows, n_components), (n_components,), (n_cols, n_components), (n_components,))
    for name, array, want in zip(
        ("obs_shape", "obs_rate", "var_shape", "var_rate"), arrays, expected
    ):
        if array.shape != want:
            raise ValueError(f"init {name} has shape {array.shape}, expected {want}")
        if not np.all(np.isfinite(array)) or np.any(array <= 0):
            raise ValueError(f"init {name} must be positive and finite")
    return _vb.VariationalParams(*arrays)


class VBNMF(TransformerMixin, BaseEstimator):
    """Poisson-Gamma non-negative matrix factorisation by batch variational Bayes.

    ``X ~ Poisson(Z W')`` with Gamma(``prior_shape``, ``prior_rate``) priors on every entry
    of ``Z`` (rows x K) and ``W`` (columns x K), fitted by coordinate ascent on the ELBO in
    the order of ``docs/model.md``. The heavy step visits only the nonzeros of X, so cost
    and memory grow with the nonzeros, never with rows x columns.

    For single-cell data pass cells x genes (AnnData's orientation): rows are ``obs``
    (cell factors) and columns ``var`` (gene loadings).

    Parameters
    ----------
    n_components
        Number of factors K, between 1 and min(X.shape).
    prior_shape, prior_rate
        Shape a and rate b of the Gamma prior on both factor matrices.
    max_iter
        Maximum number of iterations; stopping there warns with `ConvergenceWarning`.
    tol
        Stop when ``|ELBO_t - ELBO_{t-1}| <= tol * |ELBO_{t-1}|``.
    n_init
        Number of random starts; the fit with the highest final ELBO is kept.
    random_state
        Seed or `numpy.random.Generator` for the starting values.
    n_threads
        Numba threads (default: all). Results are bitwise reproducible for a given
        ``random_state`` and ``n_threads``.
    dtype
        ``np.float64`` (default) or ``np.float32`` (halves the factor memory).
    verbose
        Print the ELBO after every iteration.

    Attributes
    ----------
    obs_shape_ : ndarray of shape (n_rows, K)
    obs_rate_ : ndarray of shape (K,)
        ``q(z_il) = Gamma(obs_shape_[i, l], obs_rate_[l])``, the row (cell) factors.
    var_shape_ : ndarray of shape (n_cols, K)
    var_rate_ : ndarray of shape (K,)
        ``q(w_jl) = Gamma(var_shape_[j, l], var_rate_[l])``, the column (gene) factors.
    components_ : ndarray of shape (K, n_cols)
        Posterior mean gene loadings, ``(var_shape_ / var_rate_).T``.
    elbo_trace_ : ndarray of shape (n_iter_,)
        ELBO in nats after each iteration (the exact formula of model.md).
    n_iter_ : int
        Number of iterations run.
    converged_ : bool
        Whether ``tol`` was met before ``max_iter``.
    n_features_in_ : int

    Notes
    -----
    Warm starts: ``fit(X, init=...)`` starts from given variational parameters, a fitted
    `VBNMF`, a `VariationalParams` (rows, columns) or a mapping with keys ``obs_shape``,
    ``obs_rate``, ``var_shape``, ``var_rate``; with ``max_iter=1`` this runs exactly one
    iteration from them. ``n_init`` is ignored when ``init`` is given.
    """

    def __init__(
        self,
        n_components: int = 10,
        *,
        prior_shape: float = 1.0,
        prior_rate: float = 1.0,
        max_iter: int = 200,
        tol: float = 1e-5,
        n_init: int = 1,
        random_state=None,
        n_threads: int | None = None,
        dtype=np.float64,
        verbose: bool = False,
    ):
        self.n_components = n_components
        self.prior_shape = prior_shape
        self.prior_rate = prior_rate
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.random_state = random_state
        self.n_threads = n_threads
        self.dtype = dtype
        self.verbose = verbose

    # -- validation ---------------------------------------------------------------------
    def _check_params(self) -> dict:
        dtype = np.dtype(self.dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be np.float32 or np.float64, got {self.dtype!r}")
        for name in ("max_iter", "n_init"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        if self.max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, got {self.max_iter}")
        if self.n_init < 1:
            raise ValueError(f"n_init must be >= 1, got {self.n_init}")
        tol = float(self.tol)
        if not np.isfinite(tol) or tol < 0:
            raise ValueError(f"tol must be a non-negative number, got {self.tol!r}")
        return {
            "prior_shape": check_positive(self.prior_shape, "prior_shape"),
            "prior_rate": check_positive(self.prior_rate, "prior_rate"),
            "dtype": dtype,
            "tol": tol,
        }

    def _count_data(self, X, *, reset: bool) -> _vb.CountData:
        matrix = check_counts(X)
        if reset:
            self.n_features_in_ = matrix.shape[1]
        elif matrix.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {matrix.shape[1]} columns but this VBNMF was fitted with "
                f"{self.n_features_in_}"
            )
        return _vb.as_count_data(matrix)

    # -- fitting --------------------------------------------------------------------------
    def fit(self, X, y=None, *, init=None, callback=None) -> VBNMF:
        """Fit the model to ``X`` (rows x columns, non-negative counts; any scipy.sparse
        format or a dense array). Returns self.

        ``init``: starting variational parameters (see Notes). ``callback(n_iter, params,
        elbo_trace)`` runs after every iteration (progress bars, checkpoints)."""
        self.fit_transform(X, init=init, callback=callback)
        return self

    def fit_transform(self, X, y=None, *, init=None, callback=None) -> np.ndarray:
        """Fit and return the posterior mean row factors ``E[z]`` (n_rows x K); see `fit`."""
        checked = self._check_params()
        data = self._count_data(X, reset=True)
        n_components = check_n_components(self.n_components, data.shape)
        dtype = checked["dtype"]
        with numba_threads(self.n_threads) as n_threads:
            if init is not None:
                starts = [_init_from(init, *data.shape, n_components, dtype)]
            else:
                rng = np.random.default_rng(self.random_state)
                starts = (
                    _vb.random_init(data, n_components, rng, dtype) for _ in range(self.n_init)
                )
            best = None
            for start in starts:
                result = _vb.fit_vb(
                    data,
                    start,
                    prior_shape=checked["prior_shape"],
                    prior_rate=checked["prior_rate"],
                    max_iter=self.max_iter,
                    tol=checked["tol"],
                    n_chunks=n_threads,
                    callback=callback,
                    verbose=self.verbose,
                )
                if best is None or _final_elbo(result) > _final_elbo(best):
                    best = result
        self._set_fitted(best)
        return best.params.row_mean

    def _set_fitted(self, result: _vb.FitResult) -> None:
        params = result.params
        self.obs_shape_, self.obs_rate_ = params.row_shape, params.row_rate
        self.var_shape_, self.var_rate_ = params.col_shape, params.col_rate
        self.components_ = np.ascontiguousarray(params.col_mean.T)
        self.elbo_trace_ = result.elbo_trace
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged

    def transform(self, X) -> np.ndarray:
        """Posterior mean row factors ``E[z]`` of new rows, the column side held fixed.

        Each new row's q(z) is fitted by coordinate ascent until its ELBO changes by less
        than ``tol`` (at most ``max_iter`` passes); X must have the fitted columns.
        """
        row_shape, row_rate = self.transform_posterior(X)
        return row_shape / row_rate

    def transform_posterior(self, X) -> tuple[np.ndarray, np.ndarray]:
        """``q(z)`` of new rows, the column side held fixed: ``(shape (n x K), rate (K,))``."""
        check_is_fitted(self, "var_shape_")
        checked = self._check_params()
        data = self._count_data(X, reset=False)
        with numba_threads(self.n_threads) as n_threads:
            return _vb.fit_rows(
                data,
                self.var_shape_,
                self.var_rate_,
                prior_shape=checked["prior_shape"],
                prior_rate=checked["prior_rate"],
                max_iter=max(self.max_iter, 1),
                tol=checked["tol"],
                n_chunks=n_threads,
            )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = []
        return tags


def _final_elbo(result: _vb.FitResult) -> float:
    return result.elbo_trace[-1] if len(result.elbo_trace) else -np.inf


def fit_triplets(
    rows,
    cols,
    counts,
    shape: tuple[int, int],
    n_components: int = 10,
    **params,
) -> VBNMF:
    """Fit `VBNMF` to a count matrix given as triplets ``(rows[n], cols[n], counts[n])``.

    For callers that hold coordinates, not a matrix. Duplicate coordinates are summed.
    ``params`` are `VBNMF`'s keyword arguments. Returns the fitted estimator.

    Raises
    ------
    ValueError
        The three arrays differ in length, an index is out of ``shape``, or a count is
        negative, NaN or infinite.
    """
    rows, cols, counts = (np.asarray(a).ravel() for a in (rows, cols, counts))
    if not (rows.shape == cols.shape == counts.shape):
        raise ValueError(
            f"rows, cols and counts differ in length: {rows.size}, {cols.size}, {counts.size}"
        )
    n_rows, n_cols = (int(n) for n in shape)
    for name, index, bound in (("rows", rows, n_rows), ("cols", cols, n_cols)):
        if index.size and not np.issubdtype(index.dtype, np.integer):
            raise TypeError(f"{name} must be integer indices, got dtype {index.dtype}")
        outside = (index < 0) | (index >= bound)
        if np.any(outside):
            raise ValueError(
                f"{np.count_nonzero(outside)} {name} indices outside [0, {bound}), "
                f"first at position {int(np.flatnonzero(outside)[0])}"
            )
    matrix = sp.coo_array((counts, (rows, cols)), shape=(n_rows, n_cols))
    return VBNMF(n_components, **params).fit(matrix)
