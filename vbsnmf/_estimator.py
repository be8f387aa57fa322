"""`VBNMF`, the scikit-learn face of the variational-Bayes engine in `_vb.py`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

import numba
import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import _vb
from ._memory import check_fit_memory
from ._validation import (
    check_counts,
    check_n_components,
    check_positive,
    check_tolerance,
    data_fingerprint,
)


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
        ``np.float64`` (default) or ``np.float32`` (halves the factor memory; counts up
        to 2**24 = 16,777,216 only, see Notes).
    verbose
        Print the ELBO after every iteration.
    method
        ``"batch"`` (coordinate ascent on all the data) or ``"svi"`` (stochastic VB,
        Hoffman et al. 2013: steps from minibatches blended with weight
        ``rho_t = (t + tau)^(-kappa)``; see ``docs/model.md``).
    svi_form
        Which SVI: ``"cells"`` (default), minibatches of cells: each batch's cell factors
        are fitted to convergence with the gene side fixed (the code of `transform`, with
        ``max_iter`` and ``tol``), then the gene side steps with the batch statistics scaled
        by C / |batch|. ``X`` may then also be a path (``.h5ad``, ``.zarr``,
        ``.mtx``/``.mtx.gz``, a 10x folder) or a backed AnnData: cells are streamed from
        disk and memory holds a batch, the factors and a chunk, not the file.
        ``"textbook"``: minibatches of nonzeros with all of q global, statistics scaled by
        N1 / S and exact rates. ``"seed"``: seed 001's version (rates scaled by S / (R C)).
        The default is the cells form because it is the one that reaches batch VB's ELBO:
        on pbmc_facs (K=10) it came within 1 % of the batch fit's final ELBO in 2 epochs
        (0.39 % after 6) while the textbook form stayed 23 to 26 % below it (each step
        moves the cell factors by only rho_t) and seed 001's form fell further every epoch
        (its fixed point is off by the density N1 / (R C)); see the README's "Scale and
        stochastic VB".
    batch_size
        Cells per minibatch for ``svi_form="cells"`` (default 256), nonzeros per minibatch
        for the nonzero forms (default: an eighth of them).
    tau, kappa
        Step-size schedule ``rho_t = (t + tau)^(-kappa)``, ``tau >= 0``, ``kappa`` in
        (0.5, 1]; t counts minibatch steps from 1.
    n_epochs
        Maximum number of passes over the data (SVI).
    eval_every
        Evaluate the full ELBO every this many epochs (one more pass over the data; for the
        cells form every cell's factors are refitted to the current gene side) and stop when
        its relative change is below ``tol``. The last epoch is always evaluated.
    checkpoint
        Path of a checkpoint file, written atomically every ``checkpoint_every`` iterations
        (batch) or epochs (SVI) and at the end; None (default) writes none.
    checkpoint_every
        Iterations or epochs between checkpoints.
    resume
        Continue from ``checkpoint`` if it exists (else start afresh). For the same data,
        ``random_state`` and ``n_threads`` the resumed fit ends with exactly the ELBO trace
        of an uninterrupted one; a checkpoint of a fit with other settings is refused. A
        fit that stopped at ``max_iter`` / ``n_epochs`` continues when resumed with more.

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
        ELBO in nats after each iteration (the exact formula of model.md); for SVI after
        every evaluated epoch (every ``eval_every``-th and the last).
    n_iter_ : int
        Number of iterations run (SVI: epochs).
    converged_ : bool
        Whether ``tol`` was met before ``max_iter``.
    n_features_in_ : int

    Notes
    -----
    Counts: X holds non-negative, finite counts of at most 1e13 (float64 factors) or
    2**24 (``dtype=np.float32``); a larger count is refused with `ValueError`, because
    past it the ELBO is no longer resolved (it stops increasing monotonically, then turns
    positive or infinite; measured by ``benchmarks/count_range.py``). X may also not be a
    sparse matrix whose index arrays are damaged (checked before any kernel reads them).

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
        method: str = "batch",
        svi_form: str = "cells",
        batch_size: int | None = None,
        tau: float = 1.0,
        kappa: float = 0.55,
        n_epochs: int = 20,
        eval_every: int = 1,
        checkpoint=None,
        checkpoint_every: int = 1,
        resume: bool = False,
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
        self.method = method
        self.svi_form = svi_form
        self.batch_size = batch_size
        self.tau = tau
        self.kappa = kappa
        self.n_epochs = n_epochs
        self.eval_every = eval_every
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.resume = resume

    # -- validation ---------------------------------------------------------------------
    def _check_params(self) -> dict:
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:  # not a dtype at all: the same message as a wrong one
            dtype = None
        if dtype is None or dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be np.float32 or np.float64, got {self.dtype!r}")
        for name in ("max_iter", "n_init"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        if self.max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, got {self.max_iter}")
        if self.n_init < 1:
            raise ValueError(f"n_init must be >= 1, got {self.n_init}")
        tol = check_tolerance(self.tol)
        return {
            "prior_shape": check_positive(self.prior_shape, "prior_shape"),
            "prior_rate": check_positive(self.prior_rate, "prior_rate"),
            "dtype": dtype,
            "tol": tol,
            **_check_svi_checkpoint_params(self),
        }

    def _count_data(self, X, *, reset: bool) -> _vb.CountData:
        matrix = check_counts(X, fit_dtype=self.dtype)
        if reset:
            self.n_features_in_ = matrix.shape[1]
        elif matrix.shape[1] != self.n_features_in_:
            # scikit-learn's wording, which its estimator checks match.
            raise ValueError(
                f"X has {matrix.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input (the columns it was fitted with)"
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
        """Fit and return the posterior mean row factors ``E[z]`` (n_rows x K); see `fit`.

        A `dask.array` X (cells chunked along rows) is fitted on the Dask cluster of the
        default client (`vbsnmf.fit_dask`); E[z] is then a dask array."""
        from ._dask import is_dask_array

        if is_dask_array(X):
            from ._dask import fit_estimator

            return fit_estimator(self, X, init=init, callback=callback)
        checked = self._check_params()
        if checked["method"] == "svi" or self.checkpoint is not None:
            return self._fit_resumable(X, checked, init=init, callback=callback)
        # Before the CSR copy: fail in a second with a clear message, not after an hour of swap.
        check_fit_memory(
            X,
            self.n_components,
            n_threads=self.n_threads,
            dtype=checked["dtype"],
            n_init=self.n_init if init is None else 1,
        )
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

    def _fit_resumable(self, X, checked: dict, *, init, callback) -> np.ndarray:
        """Stochastic VB (``method="svi"``) and batch fits that write checkpoints."""
        from . import _stream, _svi
        from ._checkpoint import Checkpointer
        from .io._paths import check_checkpoint_path

        if self.checkpoint is not None:  # before any work: never the input, nor a foreign file
            check_checkpoint_path(self.checkpoint, [X] if isinstance(X, (str, os.PathLike)) else [])
        method, form = checked["method"], checked["svi_form"]
        streaming = method == "svi" and form == "cells"
        if streaming:
            source = _stream.open_source(X)
            self.n_features_in_ = source.shape[1]
            total_count, fingerprint = _svi.scan_source(source, fit_dtype=checked["dtype"])
            shape, nnz = source.shape, source.nnz
        else:
            check_fit_memory(X, self.n_components, n_threads=self.n_threads, dtype=checked["dtype"])
            data = self._count_data(X, reset=True)
            shape, total_count, nnz = data.shape, float(data.counts.sum()), data.nnz
            fingerprint = data_fingerprint(data)
        n_components = check_n_components(self.n_components, shape)
        if checked["batch_size"] is None:
            checked["batch_size"] = _svi.default_batch_size(form, shape[0], nnz)
        dtype = checked["dtype"]
        seed = self.random_state
        with numba_threads(self.n_threads) as n_threads:
            config = {
                "shape": [int(n) for n in shape],
                "nnz": int(nnz),
                "total_count": total_count,
                "data_fingerprint": fingerprint,
                "n_components": n_components,
                "method": method,
                "svi_form": form if method == "svi" else None,
                "batch_size": checked["batch_size"] if method == "svi" else None,
                "tau": float(self.tau) if method == "svi" else None,
                "kappa": float(self.kappa) if method == "svi" else None,
                "prior_shape": checked["prior_shape"],
                "prior_rate": checked["prior_rate"],
                "dtype": dtype.name,
                "n_threads": n_threads,
                "random_state": int(seed) if isinstance(seed, (int, np.integer)) else None,
            }
            every = self.checkpoint_every
            checkpointer = Checkpointer(self.checkpoint, every, config)
            stored = checkpointer.load() if self.resume else None
            rng = np.random.default_rng(seed)
            if method == "batch":
                result = self._fit_batch_resumable(
                    data, stored, checkpointer, checked, init, rng, n_threads, callback
                )
                self._set_fitted(result)
                return result.params.row_mean
            settings = _svi.SVISettings(
                prior_shape=checked["prior_shape"],
                prior_rate=checked["prior_rate"],
                batch_size=checked["batch_size"],
                tau=float(self.tau),
                kappa=float(self.kappa),
                n_epochs=self.n_epochs,
                eval_every=self.eval_every,
                tol=checked["tol"],
                local_max_iter=max(self.max_iter, 1),
                local_tol=checked["tol"],
                n_chunks=n_threads,
            )
            if stored is not None:
                state = _svi.SVIState.from_arrays(*stored)
                # A fit that ended at n_epochs continues when resumed with more epochs.
                state.finished = state.converged or state.epoch >= self.n_epochs
            elif streaming:
                state = _svi.init_cells_state(
                    source,
                    n_components,
                    rng,
                    total_count,
                    checked["prior_shape"],
                    checked["prior_rate"],
                    dtype,
                )
            else:
                state = _svi.SVIState(_vb.random_init(data, n_components, rng, dtype), rng)
            if init is not None and stored is None:
                start = _init_from(init, *shape, n_components, dtype)
                if streaming:  # global side: the genes; the cells' local fits start here
                    state.params.col_shape, state.params.col_rate = start.col_shape, start.col_rate
                    state.params.row_shape = start.row_shape.copy()
                else:
                    state.params = start

            def save(state: _svi.SVIState) -> None:
                checkpointer.save(state.epoch, *state.to_arrays(), force=state.finished)

            if streaming:
                state = _svi.fit_svi_cells(
                    source, state, settings, callback=callback, on_epoch=save
                )
            else:
                state = _svi.fit_svi_nonzeros(
                    data, state, settings, form=form, callback=callback, on_epoch=save
                )
        trace = np.asarray(state.elbo_trace, dtype=np.float64)
        self._set_fitted(_vb.FitResult(state.params, trace, state.epoch, state.converged))
        return state.params.row_mean

    def _fit_batch_resumable(
        self, data, stored, checkpointer, checked, init, rng, n_threads, callback
    ) -> _vb.FitResult:
        """Batch VB that saves every ``checkpoint_every`` iterations and resumes bitwise."""
        if self.n_init != 1 and init is None:
            raise ValueError("checkpoints need n_init=1 (one fit to save and resume)")
        n_components = check_n_components(self.n_components, data.shape)
        names = ("row_shape", "row_rate", "col_shape", "col_rate")
        tol = checked["tol"]

        def arrays_of(params, trace):
            return {**dict(zip(names, params.as_tuple())), "elbo_trace": np.asarray(trace)}

        def save(n_iter, params, trace):
            if callback is not None:
                callback(n_iter, params, trace)
            checkpointer.save(n_iter, arrays_of(params, trace), {"finished": False})

        trace: list[float] = []
        if stored is not None:
            arrays, _ = stored
            start = _vb.VariationalParams(*(arrays[name] for name in names))
            trace = [float(v) for v in arrays["elbo_trace"]]
            done = _vb.has_converged(trace, tol)
            if done or len(trace) >= self.max_iter:
                return _vb.FitResult(start, np.asarray(trace), len(trace), bool(done))
        elif init is not None:
            start = _init_from(init, *data.shape, n_components, checked["dtype"])
        else:
            start = _vb.random_init(data, n_components, rng, checked["dtype"])
        result = _vb.fit_vb(
            data,
            start,
            prior_shape=checked["prior_shape"],
            prior_rate=checked["prior_rate"],
            max_iter=self.max_iter,
            tol=tol,
            n_chunks=n_threads,
            elbo_trace=trace,
            callback=save,
            verbose=self.verbose,
        )
        checkpointer.save(
            result.n_iter, arrays_of(result.params, result.elbo_trace), {"finished": True}, True
        )
        return result

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


def _check_svi_checkpoint_params(estimator: VBNMF) -> dict:
    """Validate ``method``, the SVI knobs and the checkpoint options of ``estimator``."""
    from ._svi import SVI_FORMS

    if estimator.method not in ("batch", "svi"):
        raise ValueError(f"method must be 'batch' or 'svi', got {estimator.method!r}")
    if estimator.svi_form not in SVI_FORMS:
        raise ValueError(f"svi_form must be one of {SVI_FORMS}, got {estimator.svi_form!r}")
    integers = ["n_epochs", "eval_every", "checkpoint_every"]
    if estimator.batch_size is not None:
        integers.append("batch_size")
    for name in integers:
        value = getattr(estimator, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    check_tolerance(estimator.tau, "tau")  # a finite number >= 0
    kappa = check_tolerance(estimator.kappa, "kappa")
    if not 0.5 < kappa <= 1.0:
        raise ValueError(f"kappa must be in (0.5, 1], got {estimator.kappa!r}")
    checkpoint = estimator.checkpoint
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path or None, got {estimator.checkpoint!r}")
    if estimator.resume and estimator.checkpoint is None:
        raise ValueError("resume=True needs checkpoint=PATH (where to resume from)")
    return {
        "method": estimator.method,
        "svi_form": estimator.svi_form,
        "batch_size": None if estimator.batch_size is None else int(estimator.batch_size),
    }


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
    if len(shape) != 2 or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in shape
    ):
        raise TypeError(f"shape must be two integers (rows, columns), got {shape!r}")
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
