"""`NMF`: the classical solvers behind one estimator with the scikit-learn contract.

X is rows x columns (cells x genes for scanpy), ``W`` rows x K (what `fit_transform`
returns), ``H = components_`` K x columns, as in scikit-learn.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.extmath import randomized_svd
from sklearn.utils.validation import check_array, check_is_fitted
from threadpoolctl import threadpool_limits

from .._base import (
    check_column_names,
    check_entry_columns,
    check_feature_names,
    check_output_columns,
    check_row_names,
    feature_names,
    remember_feature_names,
    transposed_hint,
)
from .._model import ConvergenceWarning, kept_if_failed
from .._nndsvd import nonnegative_factors
from .._utils import brief_repr, counted, drawn_seed_below_2_32, is_integer, warn_user
from .._validation import (
    check_finite_product,
    check_flag,
    check_n_components,
    check_tolerance,
    small_dense,
)
from ._data import ClassicData, dense_row_blocks, positional_columns
from ._memory import check_classic_fit_memory
from ._mu import _EXACT_FRACTION, fit_multiplicative, poisson_bound
from ._options import INITS, MAX_ITER, SOLVERS, TOL
from ._solvers import STEPS, fit_frobenius
from .losses import LossSpec, UndefinedAtZeroError, resolve_loss


class NMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Non-negative matrix factorisation ``X ~ W H`` by the classical algorithms.

    Parameters
    ----------
    n_components
        Number of components K.
    loss
        ``"kl"``, ``"frobenius"``, ``"poisson"`` (KL with per-row totals),
        ``"itakura-saito"``, ``"hellinger"``, ``"pearson"``, ``"neyman"``, ``"alpha"``,
        ``"beta"`` (Minami-Eguchi convention: beta = 0 is KL, 1 half Frobenius), ``"ab"``, or
        ``"auto"`` (default): ``"kl"`` for ``solver="mu"``, ``"frobenius"`` for the other
        solvers, which minimise the squared Frobenius norm only. On a sparse X each step
        visits the stored entries and sums over the zeros in closed form, except for the
        losses whose AB parameters have ``alpha + beta - 1`` outside {0, 1}
        (``loss="beta"`` with beta not 0 or 1, and such ``"ab"`` losses): no closed form
        exists, and each half-step sums over every entry, one row of ``W H`` at a time,
        in O(n m K) time (not memory). A dense X is worked on a block of rows at a time
        (a few MiB per temporary, whatever X's size): besides X, its weights and the
        factors, a fit, `transform` and the loss hold a few such blocks, not arrays of X's
        size (with dense ``weights``, the start factorises one copy of X, its entries of
        weight 0 set to zero).
    alpha, beta
        Parameters of the ``"alpha"``, ``"beta"`` and ``"ab"`` losses.
    solver
        ``"mu"`` (multiplicative updates, every loss but l1), ``"hals"``, ``"als"``,
        ``"pg"`` (projected gradient, OPL step), ``"ipg"`` (interior point gradient), ``"gd"``
        (projected gradient descent, step 1/L).
    epsilon
        Lower bound of the factors (epsilon-modified updates, Gillis-Glineur 2012): every
        entry of the returned W and H that is not masked (``factor_mask``) is at least
        ``epsilon``, also for ``loss="poisson"`` (whose rows of H then sum to one only as
        far as the bound allows). At most ``sqrt(max float / n_components)``: above it
        every entry of ``W H`` overflows.
    thin
        After fitting, set the entries equal to ``epsilon`` (at the bound) to zero
        (epsilon-thinning).
    weights
        Optional non-negative entry weights of X's shape, dense or sparse (a 0/1 mask is
        the common case; any finite weights >= 0 are exact; sparse weights count only
        their stored entries): the loss is ``sum_ij weights_ij d(x_ij, q_ij)``. An entry
        of weight 0 has no influence on the fit: the initialisation and the row totals of
        ``loss="poisson"`` leave it out too. ``solver="mu"`` only; ignored by `transform`.
    factor_mask
        Optional 0/1 mask of W (n x K) or of H (K x m), or a dict ``{"W": ..., "H": ...}``:
        masked entries are held at zero. A DataFrame mask of W whose rows are named, or of
        H whose columns are, must name X's cells or genes in X's order.
    max_iter, tol
        Stop after ``max_iter`` iterations or when the relative change of the loss between
        two iterations is at most ``tol``, or at an exact factorisation (a loss at most
        float32's precision squared of a loss of the data's size, whose changes are
        rounding).
    init
        ``"nndsvda"`` (default), ``"nndsvd"``, ``"nndsvdar"``, ``"random"`` or ``"custom"``
        (``W`` and ``H`` given to `fit_transform`).
    random_state
        Seed of the initialisation: None, an int, a `numpy.random.RandomState` or a
        `numpy.random.Generator` (which gives the seed). A fit that raises (or is
        interrupted) leaves a Generator or RandomState as it was.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        H; float32 for float32 X (the solvers work in float64), float64 otherwise, as
        scikit-learn's `NMF` (as is W, which `fit_transform` and `transform` return).
    n_components_ : int
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        The column names of a DataFrame X, when all are strings (as scikit-learn);
        `transform` refuses other names or another order.
    n_iter_ : int
    loss_trace_ : ndarray
        The loss after 0, 1, ..., ``n_iter_`` iterations.
    loss_ : float
        The final loss ``D(X, W H)`` as minimised (for Frobenius the *squared* norm),
        after thinning when ``thin``.
    reconstruction_err_ : float
        What scikit-learn's ``NMF.reconstruction_err_`` means: ``sqrt(2 D)`` with ``D``
        the beta-divergence in scikit-learn's scale, so for Frobenius the norm
        ``||X - W H||`` and for Kullback-Leibler ``sqrt(2 KL)``; for the losses
        scikit-learn lacks, ``sqrt(2 loss_)``.

    Examples
    --------
    >>> import numpy as np
    >>> from vbsnmf.classic import NMF
    >>> X = np.random.default_rng(0).poisson(1.0, size=(100, 30))
    >>> model = NMF(n_components=3, loss="poisson", solver="mu", tol=1e-3, random_state=0)
    >>> W = model.fit_transform(X)
    >>> W.shape, model.components_.shape
    ((100, 3), (3, 30))
    >>> model.loss_trace_.shape == (model.n_iter_ + 1,)
    True
    """

    def __init__(
        self,
        n_components: int = 10,
        *,
        loss: str = "auto",
        alpha: float | None = None,
        beta: float | None = None,
        solver: str = "mu",
        epsilon: float = 0.0,
        thin: bool = False,
        weights=None,
        factor_mask=None,
        max_iter: int = MAX_ITER,
        tol: float = TOL,
        init: str = "nndsvda",
        random_state=None,
    ):
        self.n_components = n_components
        self.loss = loss
        self.alpha = alpha
        self.beta = beta
        self.solver = solver
        self.epsilon = epsilon
        self.thin = thin
        self.weights = weights
        self.factor_mask = factor_mask
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.random_state = random_state

    # ---- scikit-learn contract ----------------------------------------------------------

    def fit(self, X, y=None, W=None, H=None) -> NMF:
        """Fit to X (n x m, non-negative, dense or sparse); returns self. ``W`` and ``H``:
        the starting factors of ``init="custom"``, as `fit_transform` takes them."""
        # not fit_transform, which `set_output`'s container wraps: fit builds no output
        self._fit(X, W, H)
        return self

    def fit_transform(self, X, y=None, W=None, H=None) -> np.ndarray:
        """Fit to X and return W (n x K).

        ``W`` and ``H`` are the starting factors when ``init="custom"``.

        Raises
        ------
        ValueError
            Bad parameters, X negative/NaN/inf, a loss undefined at zeros of X, or custom
            factors of the wrong shape or all zero (with ``epsilon=0``).
        FloatingPointError
            The factors or the loss left the float range (values too large for the loss's
            power): nothing non-finite is returned.
        vbsnmf._memory.InsufficientMemoryError
            The fit would need more memory than the system has available (a
            `MemoryError`, raised before X is copied: `vbsnmf.classic._memory`); set
            ``VBSNMF_NO_MEMORY_GUARD=1`` to fit anyway.
        """
        return self._fit(X, W, H)

    def _fit(self, X, W=None, H=None) -> np.ndarray:
        """Fit to X from the custom ``W`` and ``H`` if given; return W (`fit_transform`).
        A Generator or ``RandomState`` ``random_state`` is left as it was if the fit raises
        (`kept_if_failed`), as `vbsnmf.VBNMF` and `vbsnmf.tl.nmf` leave it: the start drew
        from it before the factor mask was checked and before the solver ran, so a fit
        retried after a refused mask or Ctrl-C was another fit than a fresh generator's."""
        with kept_if_failed(self.random_state):
            return self._fit_drawn(X, W, H)

    def _fit_drawn(self, X, W=None, H=None) -> np.ndarray:
        """`_fit`, which draws the start from ``random_state``."""
        spec = self._check_params()
        feature_names(X)  # mixed column names are refused before the fit, as scikit-learn does
        if self.weights is not None:
            check_entry_columns(X, self.weights, "weights")
        # before X is validated, which copies it: a fit past the memory available was ended
        # by the OOM killer without a message
        check_classic_fit_memory(
            X,
            self.n_components,
            solver=self.solver,
            frobenius=spec.alpha == 1.0 and spec.beta == 1.0,
            weights=self.weights,
            defined_at_zero=spec.zero_power is not None,
        )
        data = ClassicData.build(X, self.weights, spec)
        n_rows, n_cols = data.shape
        n_components = self._n_components(data)
        self._check_epsilon(n_components)
        if self.weights is not None and self.solver != "mu":
            raise ValueError(f"weights are supported by solver='mu' only, not {self.solver!r}")
        W, H = self._initial_factors(data, n_components, W, H)
        if spec.name == "poisson" and self.init == "custom":
            W = W * data.row_totals[:, None]  # the solver works on diag(c) W
        w_mask, h_mask_t = self._factor_masks(n_rows, n_cols, n_components, X)
        if w_mask is not None:
            W = W * w_mask
        if h_mask_t is not None:
            H = H * h_mask_t.T
        W, H, loss_trace, n_iter, final_loss = self._run(data, spec, W, H, True, w_mask, h_mask_t)
        if spec.name == "poisson":
            W = self._poisson_rows(W, data.row_totals, w_mask)
        W, H = _as_result(W, X), _as_result(H, X)
        self.components_ = H
        self.n_components_ = n_components
        self.n_features_in_ = n_cols
        remember_feature_names(self, X)
        self.n_iter_ = n_iter
        self.loss_trace_ = np.asarray(loss_trace)
        self.loss_ = float(final_loss)
        self.reconstruction_err_ = reconstruction_error(spec, final_loss)
        return W

    def transform(self, X) -> np.ndarray:
        """W for new rows X with H = ``components_`` held fixed, by the solver and loss of
        the parameters as they are now, as scikit-learn's `NMF` does: after `set_params`
        changed ``solver``, ``loss``, ``alpha``, ``beta``, ``epsilon``, ``thin``,
        ``max_iter`` or ``tol``, the new ones (unlike `vbsnmf.VBNMF.transform`, which
        projects onto the model as fitted); ``n_components``, ``weights``, ``factor_mask``
        and ``init`` do not apply. With ``thin`` (and ``epsilon`` > 0) W's entries at the
        bound are zero, as in `fit_transform`'s W.

        Each row is fitted on its own: it starts flat, at the scale of its own total, and
        iterates until its own loss changes by at most ``tol`` relative (at most
        ``max_iter`` iterations), so a row's W does not depend on the rows transformed
        with it. For the rows fitted, it agrees with `fit_transform`'s W only as far as
        the two stopping rules allow, not to ``tol`` (the two stop by different losses, as
        scikit-learn's `NMF` does, and ``tol`` bounds a loss's relative change, not W's):
        on Poisson counts (200 x 40, K = 3) at the default ``tol`` the multiplicative
        updates' rows differed by a median of 1 % (L1, relative), some by over 10 %.

        W is float32 for float32 X and float64 for any other X, whatever the dtype of the
        fitted data (``components_``): the dtype of the rows transformed is kept, as
        scikit-learn's `MiniBatchNMF` keeps it (its `NMF` refuses X of another dtype than
        ``components_``' with a TypeError; the solvers here work in float64 either way).
        """
        check_is_fitted(self, "components_")
        spec = self._check_params()
        check_feature_names(self, X)  # columns in another order would be fitted as they lie
        try:
            data = ClassicData.build(X, None, spec)
        except UndefinedAtZeroError:  # its advice, weights, is not for transform
            raise UndefinedAtZeroError(
                f"X has zeros, where loss {spec.name!r} (alpha={spec.alpha}, "
                f"beta={spec.beta}) is undefined (p = 0); transform takes no weights to "
                "exclude them: transform rows without zeros, or fit a loss defined at zero"
            ) from None
        if data.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {data.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input (the columns it was fitted with)"
                + transposed_hint(data.shape, self.n_features_in_)
            )
        self._check_epsilon(self.components_.shape[0])
        H = np.asarray(self.components_, dtype=np.float64)  # the solvers work in float64
        W = _flat_start(data.row_totals, H)
        W, _, _, _, _ = self._run(data, spec, W, H, False, None, None)
        if spec.name == "poisson":
            W = self._poisson_rows(W, data.row_totals, None)
        return _as_result(W, X)

    def inverse_transform(self, X) -> np.ndarray:
        """Data back from its transformed rows: ``X @ components_`` (``W H``), as
        scikit-learn's ``NMF.inverse_transform``.

        Parameters
        ----------
        X : array-like or scipy sparse matrix of shape (n_samples, n_components)
            Transformed rows W (what `transform` or `fit_transform` returns).

        Returns
        -------
        ndarray of shape (n_samples, n_features)
            ``W H``.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before `fit`.
        ValueError
            X is not 2-D, has NaN or infinite entries, or has another number of columns
            than ``n_components_``; X is a DataFrame whose columns are named as
            `get_feature_names_out`'s in another order (its pandas output sorted or
            reordered); ``W H`` passes the float range; or ``loss="poisson"``,
            under which ``W H`` holds each row's proportions, not its data
            (``X ~ diag(row totals) W H``): the expected values of the data ``X`` it
            was fitted to are ``np.asarray(X.sum(axis=1)).reshape(-1, 1) * (W @
            components_)`` (a scipy sparse matrix's ``sum`` is a 2-D ``np.matrix``, which
            ``[:, None]`` cannot make a column).
        """
        check_is_fitted(self, "components_")
        # the rows' totals, which W H leaves out, are X's; the loss by its resolved name
        # ("Poisson" is fitted as "poisson")
        if self._check_params().name == "poisson":
            raise ValueError(
                "loss='poisson' models each row's proportions: W @ components_ sums to about "
                "one per row, and the data X back are the row totals times it, "
                "np.asarray(X.sum(axis=1)).reshape(-1, 1) * (W @ model.components_); "
                "inverse_transform has no row totals to give it"
            )
        check_output_columns(self, X)  # a frame of the output's columns in another order
        W = check_array(
            positional_columns(X),
            accept_sparse=("csr", "csc"),
            dtype=(np.float64, np.float32),
            # no rows give no rows back, as scikit-learn's NMF and VBNMF; no columns are
            # refused below, naming n_components (not "0 feature(s)")
            ensure_min_samples=0,
            ensure_min_features=0,
            input_name="X",
        )
        n_components = self.components_.shape[0]
        if W.shape[1] != n_components:
            raise ValueError(
                f"X has {W.shape[1]} columns, but {type(self).__name__} has {n_components} "
                "components: inverse_transform takes the transformed rows W"
            )
        return _checked_product(W, self.components_)

    @property
    def _n_features_out(self) -> int:
        """The output columns' count, which names them (``nmf0``, ``nmf1``, ...: scikit-learn's
        ``get_feature_names_out``)."""
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        # float32 X gives float32 factors (`_as_result`), as scikit-learn's NMF declares
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # ---- internals ----------------------------------------------------------------------

    def _run(self, data, spec, W, H, update_h, w_mask, h_mask):
        options = {
            "update_h": update_h,
            "epsilon": float(self.epsilon),
            "w_mask": w_mask,
            "h_mask": h_mask,
            "max_iter": int(self.max_iter),
            "tol": float(self.tol),
            # the stopping rule's floor from the data's scale, not the start's alone (a start
            # far off it stopped the fit after 3 iterations); transform's rows start flat at
            # their own totals' scale
            "scale": independence_loss(data, spec) if update_h else None,
            # an exact factorisation's loss is rounding, whose changes no tol resolves
            "exact": exact_loss(data, spec) if update_h else 0.0,
        }
        # On sparse data the Numba kernels do the heavy work and BLAS only K x K-sized
        # products; OpenBLAS threads left spinning after those halved the kernels' speed
        # (benchmarks/README.md, "Classical NMF"), so BLAS runs on one thread there. On
        # dense data too: its products are a block of rows at a time (`_data.
        # dense_row_blocks`), K thin, between single-threaded numpy passes, and two BLAS
        # threads made the blocked iterations 1.5-1.8x the CPU time of one thread (threads
        # woken and left spinning per block; 2,000 x 3,000, K = 10, same process).
        with threadpool_limits(1, "blas"):
            try:
                if self.solver == "mu":
                    fitted = fit_multiplicative(data, spec, W, H, **options)
                else:
                    fitted = fit_frobenius(data, self.solver, W, H, **options)
                W, H, trace, n_iter, unsettled = fitted
            except np.linalg.LinAlgError as error:  # ALS's and GD's solves on an overflow
                raise self._overflow(data, spec) from error
        # Every entry of the trace: a solver stops at the first loss out of the float range.
        if not (np.all(np.isfinite(trace)) and np.all(np.isfinite(W)) and np.all(np.isfinite(H))):
            raise self._overflow(data, spec)
        if self.tol > 0 and unsettled.any():
            # transform: each row stops on its own loss, and is judged on it
            which = "" if update_h else f" for {np.count_nonzero(unsettled)} of {W.shape[0]} rows"
            warn_user(
                f"NMF stopped after max_iter={counted(self.max_iter, 'iteration')}{which} "
                f"before the relative loss change fell below tol={self.tol}; raise max_iter or "
                "tol.",
                ConvergenceWarning,
            )
        final_loss = trace[-1]
        if self.thin and self.epsilon > 0:
            # Thinning is not an iteration: the trace keeps the epsilon-problem's losses.
            W = np.where(self._at_bound(W, data, spec, True), 0.0, W)
            if update_h:
                H = np.where(self._at_bound(H, data, spec, False), 0.0, H)
            final_loss = data.loss(spec, W, H)
        return W, H, trace, n_iter, final_loss

    def _at_bound(self, factor, data: ClassicData, spec: LossSpec, is_w: bool) -> np.ndarray:
        """The entries of a fitted factor (the solver's scale) at the epsilon bound.

        For ``loss="poisson"`` the solver's W is ``diag(c) W``, whose bound is
        ``epsilon c`` (`_mu.poisson_bound`), and the module rescaling and the division by c
        round: an entry within a few ulps of its bound is at it.
        """
        if spec.name != "poisson":
            return factor <= self.epsilon
        bound = poisson_bound(data.row_totals, self.epsilon) if is_w else self.epsilon
        return _within_rounding_of(factor, bound)

    def _poisson_rows(self, W_scaled, totals, mask) -> np.ndarray:
        """W from the Poisson solver's ``diag(c) W``; with ``epsilon``, the entries at the
        bound (`_at_bound`) are exactly ``epsilon`` (0 when thinned, which zeroed them
        already) and the others at least ``epsilon`` (the division rounds). Rows of total
        0 do not enter the model: their W is at the bound."""
        W = _divide_rows(W_scaled, totals)
        if self.epsilon > 0:
            at_bound = _within_rounding_of(W_scaled, poisson_bound(totals, self.epsilon))
            W = np.where(at_bound, 0.0 if self.thin else self.epsilon, np.maximum(W, self.epsilon))
            if mask is not None:
                W = W * mask
        return W

    def _check_epsilon(self, n_components: int) -> None:
        """Refuse an epsilon under which every entry of ``W H`` overflows.

        Every unmasked entry of W and H is at least epsilon, so ``(W H)_ij >= K epsilon**2``
        (K products; a factor mask may leave one): past ``sqrt(max float / K)`` the fit
        overflows whatever X is.
        """
        n_products = n_components if self.factor_mask is None else 1
        largest = float(np.sqrt(np.finfo(np.float64).max / n_products))
        if self.epsilon > largest:
            raise ValueError(
                f"epsilon={self.epsilon!r} is too large: every entry of W H is at least "
                f"{n_products} * epsilon**2, past the largest float; epsilon must be at most "
                f"sqrt(max float / {n_products}) = {largest:.4g} (and is meant small against "
                "the factors' scale)"
            )

    def _overflow(self, data: ClassicData, spec: LossSpec) -> FloatingPointError:
        """The error of a fit whose factors or loss left the float range (large values
        under a loss of high power, or an update's products past 1e308)."""
        cause = (
            "scale X down, e.g. divide it by its largest value, or use a loss of lower power"
            if self.epsilon == 0
            else f"lower epsilon={self.epsilon!r} (every entry of W H is at least "
            f"n_components * epsilon**2), scale X down, or use a loss of lower power"
        )
        return FloatingPointError(
            f"solver={self.solver!r} left the float range on this data (loss {spec.name!r}, "
            f"mean entry {data.mean():.3g}): {cause}"
        )

    def _check_params(self) -> LossSpec:
        # not an array: `in` compares it elementwise, and numpy's "truth value of an
        # array is ambiguous" named neither the parameter nor the choices
        if not isinstance(self.solver, str) or self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {brief_repr(self.solver)}; choose one of {SOLVERS}")
        loss = self.loss
        if loss == "auto":
            loss = "kl" if self.solver == "mu" else "frobenius"
        spec = resolve_loss(loss, self.alpha, self.beta)
        if spec.alpha is None:  # checked first: each solver's message sent to the other
            raise ValueError(
                "loss='l1' has no solver here: solver='mu' needs an alpha-beta family loss "
                "and the other solvers minimise the Frobenius loss; l1 evaluates a fit "
                "(vbsnmf.classic.factor_loss(X, W, H, loss='l1'))"
            )
        if self.solver in STEPS and spec.name != "frobenius":
            raise ValueError(
                f"solver={self.solver!r} minimises the Frobenius loss only; got loss={loss!r} "
                "(use solver='mu' for the other losses)"
            )
        if self.solver == "mu" and spec.alpha == 0.0:
            raise ValueError("the AB multiplicative update needs alpha != 0")
        max_iter = self.max_iter
        if not is_integer(max_iter) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        for name in ("epsilon", "tol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
            # as VBNMF checks it: np.isfinite failed on an int beyond int64 (tol=2**70) with
            # numpy's "ufunc 'isfinite' not supported for the input types", naming nothing
            check_tolerance(value, name)
        check_flag(self.thin, "thin")
        if self.init is not None and (not isinstance(self.init, str) or self.init not in INITS):
            advice = ""
            if not isinstance(self.init, str):  # starting factors, where fit takes them
                advice = " (starting factors are given to fit: init='custom', fit(X, W=W, H=H))"
            raise ValueError(f"unknown init {brief_repr(self.init)}; choose one of {INITS}{advice}")
        _check_seed(self.random_state)
        return spec

    def _n_components(self, data: ClassicData) -> int:
        n_components = self.n_components
        # a TypeError for a non-integer, as VBNMF and tl.nmf (also with a classical solver)
        # give it: 2.0 was a ValueError here and True a TypeError; the range is a ValueError
        if not is_integer(n_components):
            raise TypeError(f"n_components must be an integer, got {n_components!r}")
        if n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
        # More than min(n, m) components cannot lower the loss (X = X I already has rank
        # min(n, m)), and a huge K would only fill memory.
        return check_n_components(n_components, data.shape)

    def _initial_factors(self, data, n_components, W, H):
        init = self.init or "nndsvda"
        if init == "custom":
            if W is None or H is None:
                raise ValueError("init='custom' needs both W and H")
            W, H = data.check_factors(W, H)
            if W.shape[1] != n_components:
                raise ValueError(f"W and H have {W.shape[1]} components, not {n_components}")
            for name, factor in (("W", W), ("H", H)):
                # as scikit-learn's "full of zeros"; epsilon lifts it off zero
                if self.epsilon == 0 and not factor.any():
                    raise ValueError(
                        f"the custom {name} is all zero: the multiplicative and interior "
                        "point updates cannot leave zero (the fit would return W H = 0); "
                        f"start {name} from positive values, or use another init"
                    )
        elif W is not None or H is not None:
            raise ValueError("W and H are used with init='custom' only")
        elif init == "random":
            W, H = random_init(data, n_components, _legacy_seed(self.random_state))
        else:
            W, H = nndsvd_init(data, n_components, init, _legacy_seed(self.random_state))
        if self.epsilon > 0:
            W, H = np.maximum(W, self.epsilon), np.maximum(H, self.epsilon)
        return W, H

    def _factor_masks(self, n_rows, n_cols, n_components, X=None):
        """The W mask (n x K) and the H mask *transposed* (m x K), or None; a DataFrame
        mask's cell (W) or gene (H) names checked against X's when X is given."""
        mask = self.factor_mask
        if mask is None:
            return None, None
        if isinstance(mask, dict):
            unknown = set(mask) - {"W", "H"}
            if unknown:
                raise ValueError(f"factor_mask keys must be 'W' and/or 'H', got {sorted(unknown)}")
            w_mask, h_mask = mask.get("W"), mask.get("H")
        else:
            shape = _dense_mask(mask).shape
            w_shape, h_shape = (n_rows, n_components), (n_components, n_cols)
            if w_shape == h_shape and shape == w_shape:
                raise ValueError("factor_mask fits both W and H; pass {'W': ...} or {'H': ...}")
            if shape == w_shape:
                w_mask, h_mask = mask, None
            elif shape == h_shape:
                w_mask, h_mask = None, mask
            else:
                raise ValueError(f"factor_mask has shape {shape}; W is {w_shape}, H {h_shape}")
        checked = []
        for name, value, shape in (
            ("W", w_mask, (n_rows, n_components)),
            ("H", h_mask, (n_components, n_cols)),
        ):
            if value is None:
                checked.append(None)
                continue
            if X is not None:  # a frame of cells or genes in another order than X's
                check_names = check_row_names if name == "W" else check_column_names
                check_names(X, value, f"factor_mask[{name!r}]")
            value = _dense_mask(value)
            if value.dtype.kind not in "biuf":  # text: numpy's float() message, or '1' taken
                raise ValueError(
                    f"factor_mask[{name!r}] must hold 0/1 numbers or booleans, got "
                    f"{value.dtype} values"
                )
            value = value.astype(np.float64)
            if value.shape != shape or not np.isin(value, (0.0, 1.0)).all():
                raise ValueError(f"factor_mask[{name!r}] must be a 0/1 array of shape {shape}")
            checked.append(value if name == "W" else np.ascontiguousarray(value.T))
        return checked[0], checked[1]


# Relative rounding of the Poisson factors' rescalings (module scale, division by the row
# totals): an entry this close to its epsilon bound is at it (`NMF._at_bound`).
_BOUND_ROUNDING = 4 * float(np.finfo(np.float64).eps)


def _as_result(factor: np.ndarray, X) -> np.ndarray:
    """``factor`` (float64, as the solvers work) in float32 for float32 data, as
    scikit-learn's `NMF` returns its factors; float64 for any other data."""
    dtypes = getattr(X, "dtypes", None)  # a DataFrame's columns, sparse ones by their values
    if dtypes is None:
        dtypes = [getattr(X, "dtype", None)]
    else:
        dtypes = [getattr(dtype, "subtype", dtype) for dtype in dtypes]
    if not (len(dtypes) and all(dtype == np.float32 for dtype in dtypes)):
        return factor
    with np.errstate(over="ignore"):
        result = factor.astype(np.float32)
    if not np.isfinite(result).all():
        raise FloatingPointError(
            "the factors of this float32 data lie beyond the float32 range; pass the data "
            "as float64"
        )
    return result


def _checked_product(W, components: np.ndarray) -> np.ndarray:
    """``W @ components`` (W dense or sparse, n x K) in numpy's dtype of the product,
    computed and checked finite a block of rows at a time into the result
    (`dense_row_blocks`): no n x m array but the result (the check over it whole was a
    mask of its shape). A `ValueError` when an entry passes the float range."""
    if sp.issparse(W):
        W = sp.csr_matrix(W)  # rows sliced cheaply
    n_rows, n_cols = W.shape[0], components.shape[1]
    product = np.empty((n_rows, n_cols), dtype=np.result_type(W.dtype, components.dtype))
    for rows in dense_row_blocks(n_rows, n_cols):
        block = product[rows]
        with np.errstate(over="ignore"):
            block[...] = W[rows] @ components
        # finite W whose products pass the float range gave inf entries without a word
        check_finite_product(block, "W @ components_")
    return product


def _within_rounding_of(factor: np.ndarray, bound) -> np.ndarray:
    """The entries of the Poisson solver's ``factor`` at ``bound`` up to its rounding."""
    return factor <= bound * (1.0 + _BOUND_ROUNDING)


def _dense_mask(mask) -> np.ndarray:
    """A factor mask as a dense array (it is factor-sized; np.asarray of a scipy.sparse
    mask is a 0-d object array)."""
    if sp.issparse(mask):
        return small_dense(mask, "factor mask")
    try:
        return np.asarray(mask)
    except ValueError:  # ragged
        raise ValueError("factor_mask must be a 0/1 array, not a ragged sequence") from None


def reconstruction_error(spec: LossSpec, loss: float) -> float:
    """scikit-learn's ``reconstruction_err_`` of a fit whose final loss is ``loss``:
    ``sqrt(2 D)``, ``D`` in scikit-learn's scale, where the Frobenius loss is half the
    squared norm (vbsnmf's ``"frobenius"`` is the squared norm itself); the other losses
    have one scale in both."""
    divergence = loss / 2 if spec.name == "frobenius" else loss
    return float(np.sqrt(2 * max(divergence, 0.0)))


def _check_seed(random_state) -> None:
    """``random_state`` as scikit-learn's helpers take it, or a numpy Generator; checked
    before any work (scikit-learn's own error named its ``randomized_svd``)."""
    if random_state is None or isinstance(
        random_state, (np.random.Generator, np.random.RandomState)
    ):
        return
    if not is_integer(random_state):
        raise TypeError(
            "random_state must be None, an integer, a numpy Generator or RandomState, "
            f"got {random_state!r}"
        )
    if not 0 <= random_state < 2**32:
        raise ValueError(
            f"random_state must be an integer in [0, 2**32 - 1] (scikit-learn's seeds), "
            f"got {random_state}"
        )


def _legacy_seed(random_state):
    """``random_state`` as scikit-learn's helpers take it: a `numpy.random.Generator` (which
    `vbsnmf.VBNMF` takes) becomes a seed drawn from it; anything else is passed on."""
    if isinstance(random_state, np.random.Generator):
        return drawn_seed_below_2_32(random_state)
    return random_state


def random_init(data: ClassicData, n_components: int, random_state):
    """Uniform-scale random factors with ``W H`` of the data's mean scale."""
    rng = check_random_state(random_state)
    scale = np.sqrt(data.mean() / n_components)
    n_rows, n_cols = data.shape
    H = scale * np.abs(rng.standard_normal((n_components, n_cols)))
    W = scale * np.abs(rng.standard_normal((n_rows, n_components)))
    return W, H


def nndsvd_init(data: ClassicData, n_components: int, variant: str, random_state):
    """Non-negative double SVD (Boutsidis-Gallopoulos 2008) from a randomized SVD of X.

    ``"nndsvda"`` fills the zeros with the mean of X, ``"nndsvdar"`` with small random
    values (both keep multiplicative updates from being stuck at zero).
    """
    matrix = data.counted_matrix()
    U, singular, Vt = randomized_svd(matrix, n_components, random_state=random_state)
    W, H = nonnegative_factors(U, singular, Vt, n_components)
    # scikit-learn's threshold 1e-6, scaled down with data below 1: the factors scale with
    # the square root of X, and the fixed threshold zeroed every entry of data of scale
    # 1e-14 (init="nndsvd" then returned W = H = 0)
    tiny = 1e-6 * min(1.0, np.sqrt(float(matrix.max())))
    W[W < tiny] = 0.0
    H[H < tiny] = 0.0
    if variant == "nndsvda":
        mean = data.mean()
        W[W == 0] = mean
        H[H == 0] = mean
    elif variant == "nndsvdar":
        rng = check_random_state(random_state)
        mean = data.mean()
        W[W == 0] = np.abs(mean * rng.standard_normal(int(np.sum(W == 0))) / 100)
        H[H == 0] = np.abs(mean * rng.standard_normal(int(np.sum(H == 0))) / 100)
    return W, H


def independence_loss(data: ClassicData, spec: LossSpec) -> float:
    """The loss of the rank-one model ``Q_ij = r_i c_j / T`` (row totals r, column totals c,
    total T of the entries that count): a loss of the data's own scale, which no start
    changes, for the stopping rule (`_mu.converged`); ``inf`` (no floor from it) for data
    of total 0 or a loss out of the float range. For ``loss="poisson"`` in the solver's
    scale (``diag(c) W`` with rows of H summing to one)."""
    row_totals = data.row_totals
    total = float(row_totals.sum())
    if not (np.isfinite(total) and total > 0):
        return np.inf
    W = row_totals[:, None]
    H = (data.col_totals() / total)[None, :]
    try:
        with np.errstate(all="ignore"):
            value = data.loss(spec, W, H)
    except ValueError:  # not finite: a loss of high power on large values
        return np.inf
    return value if np.isfinite(value) else np.inf


def exact_loss(data: ClassicData, spec: LossSpec) -> float:
    """The loss at or below which a fit is an exact factorisation, settled whatever its
    last change (`_mu.converged`): `_EXACT_FRACTION` of the loss of twice the rank-one
    model of `independence_loss`, a loss of the data's size (``||X||^2`` for Frobenius and
    ``(1 - log 2) sum X`` for KL when X is of rank one). An exact fit's loss is rounding
    (1e-31 of that size dense, 6e-16 in the sums over a sparse X's entries), its changes
    too, and a change relative to it never fell below ``tol``: ``n_components=1`` on an
    outer product of whole numbers ran to ``max_iter`` at a loss of 1e-26 and warned to
    raise it. 0 (only a loss of 0 is exact) for data of total 0 or a loss out of range."""
    row_totals = data.row_totals
    total = float(row_totals.sum())
    if not (np.isfinite(total) and total > 0):
        return 0.0
    W = 2.0 * row_totals[:, None]
    H = (data.col_totals() / total)[None, :]
    try:
        with np.errstate(all="ignore"):
            value = data.loss(spec, W, H)
    except ValueError:  # not finite: a loss of high power on large values
        return 0.0
    return _EXACT_FRACTION * value if np.isfinite(value) else 0.0


def _flat_start(row_totals: np.ndarray, H: np.ndarray) -> np.ndarray:
    """The start of `NMF.transform`: each row of W flat, ``W H`` summing to the row's total
    (scikit-learn's flat start from the mean of the whole batch tied every row's result to
    the rows transformed with it). A row of zeros starts at zero."""
    total = float(H.sum())
    scale = row_totals / total if total > 0 else np.zeros_like(row_totals)
    return np.repeat(scale[:, None], H.shape[0], axis=1)


def _divide_rows(W: np.ndarray, totals: np.ndarray) -> np.ndarray:
    safe = np.where(totals > 0, totals, 1.0)
    return np.where(totals[:, None] > 0, W / safe[:, None], 0.0)
