"""`VBNMF`, the scikit-learn face of the variational engine.

Decided once, at the edge: `VBNMF._check_params` turns the constructor's parameters into
the `FitSettings` everything below uses, and `VBNMF.fit_transform` dispatches on the input
to one module-level function per kind: `_fit_in_memory` (a matrix), `_fit_stream` (a path or
a backed AnnData, streamed by the cells form of SVI) and `_fit_dask` (a dask array). Those
check the counts once and call the drivers (`_batch`, `_svi`, `_dask`), which call the
model (`_model`).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ._base import (
    Estimator,
    check_entry_columns,
    check_feature_names,
    check_fitted,
    check_init_cells,
    check_output_columns,
    feature_names,
    names_differ,
    remember_cell_names,
    remember_feature_names,
    repeated_otherwise,
    row_names,
    transposed_hint,
)
from ._batch import (
    AcceleratedSaves,
    AcceleratedState,
    fit_batch,
    fit_batch_accelerated,
    start_accelerated,
    trace_arrays,
)
from ._checkpoint import Checkpointer, recorded_seed, restored_elbo_iter, warn_if_beyond
from ._data import CountData, as_count_data
from ._memory import check_cells_form_memory, check_fit_memory
from ._model import (
    FitResult,
    GammaPrior,
    HierarchicalPrior,
    Mask,
    Prior,
    ScaleState,
    VariationalParams,
    check_fixed_prior_range,
    csr_totals,
    final_elbo,
    fit_rows,
    held_prior,
    hyperparameters,
    init_params,
    kept_if_failed,
    observed_extent,
    one_of_starts,
    params_from_arrays,
    params_to_arrays,
    print_kept,
    print_start,
    random_start,
    resumed_converged,
    scale_sums,
    seed_entropy,
    side_totals,
    still_held,
    svd_start,
    warn_elbo_rounding,
    warn_kept_start,
    warn_local_rounding,
    warn_not_converged,
)
from ._svi import (
    EVAL_BLOCK_ROWS,
    SVI_FORMS,
    CountScan,
    SVISettings,
    SVIState,
    default_batch_size,
    default_n_epochs,
    fit_svi_cells,
    fit_svi_nonzeros,
    init_cells_state,
    init_nonzeros_state,
    nonzero_count,
    refuse_no_nonzeros,
    resumed_svi_progress,
    scan_blocks,
)
from ._utils import (
    brief_repr,
    check_n_threads,
    compute_dask,
    float_indices_hint,
    is_dask_array,
    is_integer,
    numba_threads,
    warn_user,
)
from ._validation import (
    PRIOR_SHAPE_RANGE,
    bad_count_problems,
    check_accelerate,
    check_callback,
    check_counts,
    check_finite_product,
    check_flag,
    check_float_dtype,
    check_iterations,
    check_n_components,
    check_not_empty,
    check_prior_rate,
    check_prior_shape,
    check_sparse_structure,
    check_step_schedule,
    check_tolerance,
    check_verbose,
    combine_fingerprints,
    data_fingerprint,
    is_backed_sparse,
    numbers_from_objects,
    readable_values,
    refuse_closed_file,
    refuse_masked,
    small_dense,
    sparse_frame_as_coo,
    warn_non_counts,
    widen_to_sum,
)
from .io._paths import check_checkpoint_path
from .io._stream import InMemorySource, declared_shape, open_source

SOLVERS = ("batch", "svi")
PRIORS = ("hierarchical", "gamma")
# Parameters added since the first versions, with the value a model pickled before each
# ran (its version had no other): the fixed Gamma prior (of its prior_shape and
# prior_rate), plain coordinate ascent, a random start.
_EARLIER_PARAMETERS = {"prior": "gamma", "accelerate": False, "init": "random"}


@dataclass(frozen=True)
class FitSettings:
    """`VBNMF`'s parameters, checked: what every fit function below uses."""

    n_components: int
    prior: Prior
    accelerate: bool
    solver: str
    svi_form: str
    max_iter: int
    tol: float
    n_init: int
    init: str
    n_threads: int | None
    dtype: np.dtype
    batch_size: int | None
    tau: float
    kappa: float
    n_epochs: int | None
    eval_every: int
    checkpoint: Path | None
    checkpoint_every: int
    resume: bool
    verbose: bool
    random_state: object

    def svi(self, batch_size: int, n_threads: int, n_rows: int) -> SVISettings:
        """The SVI drivers' settings; each cell's local fit runs to ``tol`` within
        ``max_iter`` passes, as `VBNMF.transform` does; ``n_epochs`` as `epochs` gives it."""
        return SVISettings(
            prior=self.prior,
            batch_size=batch_size,
            tau=self.tau,
            kappa=self.kappa,
            n_epochs=self.epochs(n_rows),
            eval_every=self.eval_every,
            tol=self.tol,
            local_max_iter=max(self.max_iter, 1),
            local_tol=self.tol,
            n_threads=n_threads,
            verbose=self.verbose,
        )

    def epochs(self, n_rows: int) -> int:
        """``n_epochs``, or when not given `_svi.default_n_epochs` (with the default batch
        unless ``batch_size`` is given) on ``n_rows`` cells."""
        if self.n_epochs is not None:
            return self.n_epochs
        return default_n_epochs(self.svi_form, n_rows, self.batch_size is not None)


class VBNMF(Estimator):
    """Poisson-Gamma non-negative matrix factorisation by variational Bayes.

    ``X ~ Poisson(Z W')`` with Gamma priors on every entry of ``Z`` (cells x K) and ``W``
    (genes x K), fitted by coordinate ascent on the ELBO in the order of
    ``docs/model.md``. By default the priors are learned from the data (hierarchical
    Poisson factorisation: each cell's factors share a scale that absorbs its depth, each
    gene's loadings one for its activity, the hyperparameters by empirical Bayes); the
    fixed Gamma(a, b) prior of Cemgil (2009) is ``prior="gamma"``. The heavy step visits
    only the nonzeros of X, so cost and memory grow with the nonzeros, never with cells x
    genes.

    Pass cells x genes (AnnData's orientation); any other count matrix works the same way
    with its rows in the place of cells and its columns in the place of genes.

    Parameters
    ----------
    n_components
        Number of factors K, between 1 and min(X.shape).
    prior
        ``"hierarchical"`` (default): learned priors, ``z_il | xi_i ~ Gamma(a_l, xi_i)``,
        ``xi_i ~ Gamma(a', a'/b')`` and the same for the genes, every hyperparameter
        learned by empirical Bayes (``hyperparameters_``); a batch fit from a start of its
        own (random or NNDSVDa's; not a warm start) holds the factor shapes a_l, c_l at 1
        for its first passes, and an SVI fit's cells form from a random start for its
        first epochs (docs/model.md, "The hold"). ``"gamma"``: the fixed prior
        Gamma(``prior_shape``, ``prior_rate``) on every entry of both factor matrices.
    prior_shape, prior_rate
        ``prior="gamma"``: shape a and rate b of the fixed prior (default 1 and 1).
        ``prior="hierarchical"``: ``prior_shape`` fixes the factor shapes a_l and c_l
        (scHPF fixes 0.3) instead of learning them, from the start (a warm start's own
        factor shapes give way to it); ``prior_rate`` does not apply.
        ``prior_shape`` lies between 1e-30 and 1e6: beyond, the ELBO's terms cannot be
        computed to the precision of its changes (ValueError); ``prior_rate`` is a normal
        number of ``dtype`` (1.2e-38 to 3.4e38 in float32), and the prior mean
        ``prior_shape / prior_rate`` at most the largest.
    accelerate
        Extrapolate the batch iterations with SQUAREM (Varadhan and Roland 2008), keeping
        an extrapolated step only when its exact ELBO is at least the plain step's (the
        trace stays monotone). Default: on for the learned prior, off for the fixed one,
        whose fits stay bit for bit what they were. The same on a dask X. Its sums run in
        another order than in memory (as with another thread count), and SQUAREM's
        extrapolations amplify such differences: in float64 the trace follows the in-memory
        fit's closely (1e-9 relative over 100 passes in the tests) but can part from it late
        in a long fit; in float32 it can take another path from the first cycles (equally
        monotone and exact, to a nearby optimum). SVI ignores it (its steps are not a
        fixed-point map to extrapolate), as `VBNTF` does.
    max_iter
        Maximum number of passes over the data (batch), and of passes of each cell's local
        fit (`transform`, SVI's cells form); a batch fit or a `transform` that stops at
        it warns with `ConvergenceWarning` (SVI's local fits stop at it quietly: the next
        epoch continues them).
    tol
        Stop when ``|ELBO_t - ELBO_{t-1}| <= tol * |ELBO_{t-1}|``.
    n_init
        Number of random starts of batch VB; the fit with the highest final ELBO is kept
        (and warns `ConvergenceWarning` if it stopped at ``max_iter``; the others do not).
        SVI runs one start (``n_init=1``).
    init
        The start of batch VB: ``"random"`` (default) or ``"nndsvda"``, the learned
        prior's q with NNDSVDa's factors of the counts as its means (scikit-learn's
        default start of `NMF`; from a truncated SVD whose test matrix is drawn from
        ``random_state``; one start, so ``n_init=1``). On the data measured in
        ``docs/performance.md`` it ends at a higher ELBO than the mean of three random
        starts in 15 of 20 fits (lower on the digits), predicts held-out counts of Reuters
        news and the digits better, and trains better on pbmc_facs, but its dense first
        factor lowers the cells' kNN accuracy there (0.983 against 0.988-0.991). For the
        learned prior, batch VB on a matrix in memory; a warm start ``fit(X, init=...)``
        takes precedence.
    random_state
        Seed (non-negative integer) or `numpy.random.Generator` (or ``RandomState``) for
        the starting values and SVI's minibatches; None (default): fresh entropy. A
        Generator gives one draw to each fit, so a second fit with it is another fit; a fit
        that raises (or is interrupted) leaves it as it was. The start is drawn per fixed
        block of cells, so the same seed gives the same start and minibatches in memory,
        streamed from disk and on Dask with any chunks (SVI on Dask: the same fit when the
        local fits run their ``max_iter`` passes, ``tol=0``; see `fit_svi_dask`).
    n_threads
        Numba threads (default: all; for a dask X, threads per chunk task, default 1).
        More than the machine's are capped to its count (``NUMBA_NUM_THREADS``).
        Results are bitwise reproducible for a given ``random_state`` and the number of
        threads used (the capped one, which checkpoints and ``params.json`` record).
    dtype
        ``np.float64`` (default) or ``np.float32`` (halves the factor memory; counts up
        to 2**24 = 16,777,216 only, see Notes). On pseudobulk-scale counts float32's
        rounding of the ELBO can exceed what ``tol`` resolves and stop a batch fit early,
        or the local fits of SVI's cells form and of `transform` (each cell's, stopped by
        ``tol`` on its own ELBO); it then warns (`ConvergenceWarning`).
    verbose
        Print the ELBO after every iteration (``accelerate``: of every q kept, with the
        pass that scored it; SVI: after every evaluated epoch); with ``n_init`` > 1 each
        start's lines are headed ``start i of n`` and the start kept is named at the end.
    solver
        ``"batch"`` (coordinate ascent on all the data) or ``"svi"`` (stochastic VB,
        Hoffman et al. 2013: steps from minibatches blended with weight
        ``rho_t = min(1, (t + tau)^(-kappa))``; see ``docs/model.md``).
    svi_form
        Which SVI: ``"cells"`` (default), minibatches of cells: each batch's cell factors
        are fitted to convergence with the gene side fixed (the code of `transform`, with
        ``max_iter`` and ``tol``), then the gene side steps with the batch statistics scaled
        by C / |batch|. ``X`` may then also be a path (``.h5ad``, ``.zarr``, a 10x folder;
        a lone ``.mtx``/``.mtx.gz`` is refused, as its orientation is not known: convert it
        with `vbsnmf.io.mtx_to_h5ad`) or a backed AnnData: cells are streamed from disk and
        memory holds a batch, the factors and a block, not the file.
        ``"nonzeros"``: minibatches of nonzeros with all of q global, statistics scaled by
        N1 / S and exact rates. ``"abe-shimamura"``: Abe and Shimamura's minibatch form
        (rates scaled by S / (R C)). The cells form is the default because it is the one
        that reaches batch VB's ELBO: on pbmc_facs (K=10) it came within 1 % of the batch
        fit's final ELBO in 2 epochs (0.39 % after 6) while the nonzeros form stayed 23 to
        26 % below it (each step moves the cell factors by only rho_t) and Abe and
        Shimamura's fell further every epoch (its fixed point is off by the density
        N1 / (R C)); see ``docs/performance.md``.
    batch_size
        Cells per minibatch for ``svi_form="cells"`` (default: the cells in 32 minibatches,
        at least 128 and at most 4,096 cells each: enough global steps per epoch for the
        gene side, enough cells per step for its statistics, no more in memory than an
        evaluation block; see ``docs/performance.md``), nonzeros per minibatch for the
        nonzero forms (default: an eighth of them).
    tau, kappa
        Step-size schedule ``rho_t = min(1, (t + tau)^(-kappa))``, ``tau >= 0``, ``kappa``
        in (0.5, 1]; t counts epochs (after the n-th of an epoch's m minibatch steps,
        t = n / m), so the schedule does not change with ``batch_size``.
    n_epochs
        Maximum number of passes over the data (SVI). The default (None) is 40, what the
        cells form's defaults needed to end within 1 % of batch VB's converged ELBO on the
        data of ``docs/performance.md`` (at 20, 4 of 30 fits ended 1.1-1.3 % below): 40
        epochs of 32 steps (the nonzero forms: 40 epochs). For the cells form on fewer
        than 4,096 cells with the default ``batch_size`` (at least 128 cells, so fewer than
        32 steps an epoch) it is as many epochs as make the same 1,280 steps (pbmc_tiny's
        1,107 cells: 143): the gene side needs the steps, and such epochs are cheap.
    eval_every
        Evaluate the full ELBO every this many epochs (one more pass over the data; for the
        cells form every cell's factors are refitted to the current gene side) and stop when
        its relative change has been at most ``tol`` three evaluations in a row (one small
        change can be the minibatch noise). The last epoch is always evaluated.
    checkpoint
        Path of a checkpoint file, written atomically every ``checkpoint_every`` iterations
        (batch) or epochs (SVI) and at the end; None (default) writes none. Needs
        ``n_init=1`` (a checkpoint holds one fit). A clone (``sklearn.base.clone``, so
        every fit of a ``GridSearchCV`` or ``cross_validate``) keeps the path: its fits
        overwrite each other's checkpoints, so leave it None there.
    checkpoint_every
        Iterations or epochs between checkpoints. An accelerated fit saves at the start of
        a SQUAREM cycle (three passes; the state it resumes from bit for bit): the first
        that many passes or more after its last save.
    resume
        Continue from ``checkpoint`` if it exists (else start afresh; without ``resume``
        a saved checkpoint there is overwritten, with a UserWarning). For the same data,
        ``random_state`` and ``n_threads`` the resumed fit ends with exactly the ELBO trace
        of an uninterrupted one; a checkpoint of a fit with other settings is refused, but
        one of another thread count (a smaller machine) is resumed with a UserWarning: the
        same fit to rounding, not bit for bit. A
        fit that stopped at ``max_iter`` / ``n_epochs`` continues when resumed with more
        (as the longer fit would: an accelerated fit's last save is the start of the
        SQUAREM cycle ``max_iter`` cut short; except an SVI fit whose ``n_epochs`` is not a
        multiple of ``eval_every``: it evaluated at its end, which the longer fit did not,
        and goes on from that evaluation); resumed with fewer, the checkpoint's fit is
        returned with a warning. ``init`` is not used when a checkpoint is resumed (the
        checkpoint is the later state of that fit); a warm start ``fit(X, init=...)``
        resumes only a warm start's checkpoint (given the same start again), and a fit
        without one only a checkpoint of a fit from its own start. ``tol`` may change on resume (the
        other settings may not, bar ``max_iter`` / ``n_epochs``; for the cells form of SVI
        ``tol`` and ``max_iter`` also run each cell's local fit, and are then refused): the
        checkpoint's convergence is judged again under it, so a fit that converged under a
        looser ``tol`` goes on under a tighter one, and one that meets a looser ``tol``
        stops (plain batch ascent: at once, ``converged_=True``; accelerated, SVI: at the
        next check). A ``random_state`` Generator resumes only when given in the state it
        had at the first fit (a fresh ``np.random.default_rng(seed)`` of the same seed, or
        the same estimator's after the fit was interrupted, which leaves it as it was):
        the checkpoint records the entropy the fit drew from it.

    Attributes
    ----------
    cell_shape_ : ndarray of shape (n_cells, K)
    cell_rate_ : ndarray of shape (K,), or (n_cells, K) (learned prior, or a fit with ``mask``)
        ``q(z_il) = Gamma(cell_shape_[i, l], cell_rate_[l])`` (``cell_rate_[i, l]``), the
        cell factors. A fit with ``mask`` keeps rates per entry under either prior (each
        cell's sum runs over its observed genes only).
    gene_shape_ : ndarray of shape (n_genes, K)
    gene_rate_ : ndarray of shape (K,), or (n_genes, K) (learned prior, or a fit with ``mask``)
        ``q(w_jl) = Gamma(gene_shape_[j, l], gene_rate_[l])``, the gene loadings.
    cell_scale_shape_, cell_scale_rate_ : ndarray of shape (n_cells,) or None
        Under the learned prior, ``q(xi_i)`` of each cell's scale; None otherwise.
    gene_scale_shape_, gene_scale_rate_ : ndarray of shape (n_genes,) or None
        The same for each gene's ``q(eta_j)``.
    hyperparameters_ : dict or None
        The learned hyperparameters: ``cell_factor_shape`` (a_l, K), ``cell_scale_prior_shape``
        (a'), ``cell_scale_prior_mean`` (b'), and the same for the genes (c_l, c', d');
        None under the fixed prior.
    components_ : ndarray of shape (K, n_genes)
        Posterior mean gene loadings, ``(gene_shape_ / gene_rate_).T``.
    elbo_trace_ : ndarray of shape (n_iter_,) or shorter
        ELBO in nats (the exact formula of model.md) of each kept q: after each iteration
        of plain coordinate ascent (``n_iter_`` values); with ``accelerate`` one per q
        kept, which is fewer than the passes (the start's pass records none, a refused
        extrapolation's pass none: empty after ``max_iter=1``); for SVI after every
        evaluated epoch (every ``eval_every``-th and the last). Batch VB's never
        decreases (coordinate ascent); SVI's is a stochastic ascent's and can fall
        between evaluations, most in the nonzeros forms on few cells or heavy-tailed
        counts.
    elbo_iter_ : ndarray of int64, of the shape of ``elbo_trace_``
        The iteration at which each value of ``elbo_trace_`` was taken, in the units of
        ``n_iter_``: 1, 2, ..., ``n_iter_`` for plain coordinate ascent; with
        ``accelerate`` the pass that scored the q kept (the ``n_iter`` its ``callback``
        received); for SVI the epoch evaluated. Strictly increasing, at most ``n_iter_``:
        the x axis of the trace. Resumed from a checkpoint of a version that did not record
        it, the checkpoint's part is derived: exactly for plain ascent, from
        ``eval_every`` for SVI, and with ``accelerate`` as the passes before the
        checkpoint's last (exact unless an extrapolation had been refused there).
    n_iter_ : int
        Number of iterations run: passes over the data (SVI: epochs).
    converged_ : bool
        Whether ``tol`` was met before ``max_iter`` (SVI: ``n_epochs``).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        The gene names, when X was a DataFrame with string column names; `transform`
        then requires the same names in the same order (``ValueError``).

    Notes
    -----
    Counts: X holds non-negative, finite counts of at most 1e13 (float64 factors) or
    2**24 (``dtype=np.float32``); a larger count is refused with `ValueError`, because
    past it the ELBO is no longer resolved (it stops increasing monotonically, then turns
    positive or infinite; measured by ``benchmarks/count_range.py``). Below it many large
    counts can still round the ELBO by more than ``tol`` resolves (float64 holds each
    count's terms, of size x log x, to 2**-53 relative: a cell of twelve counts of 1e12
    rounded an ELBO of -1,000 by 0.1 nats); a batch fit that stops then warns
    (`ConvergenceWarning`, naming the ``tol`` that the rounding allows), as float32's do.
    X may also not be a sparse matrix whose index arrays are damaged (checked before any
    kernel reads them).

    Warm starts: ``fit(X, init=...)`` starts from given variational parameters: a fitted
    `VBNMF`, or a mapping with keys ``cell_shape``, ``cell_rate``, ``gene_shape``,
    ``gene_rate``. With ``accelerate=False`` and ``max_iter=1`` this runs exactly one
    iteration from them; with SQUAREM (``accelerate``, the default under the learned
    prior) the first pass scores the start, so ``max_iter=1`` returns the start itself
    (``n_iter_ == 1``, an empty ``elbo_trace_``). Per-entry rates (a fit with ``mask``
    under ``prior='gamma'``) start only another fit with ``mask``. ``n_init`` is ignored
    when ``init`` is given. A `VBNMF` fitted with gene names (a DataFrame) starts only X
    with the same names in the same order (``ValueError`` otherwise); on X without names it
    starts the genes by position and warns (``UserWarning``), as `transform` does. Its
    cells start X's by position: one fitted on a DataFrame with cell names refuses a
    DataFrame X of the same cells in another order (``ValueError``, checked by a digest of
    the names the fit keeps); X of other cells or without names is not checked.

    Examples
    --------
    >>> import numpy as np
    >>> from vbsnmf import VBNMF
    >>> X = np.random.default_rng(0).poisson(1.0, size=(100, 30))
    >>> model = VBNMF(n_components=3, max_iter=50, tol=1e-3, random_state=0)
    >>> cell_factors = model.fit_transform(X)
    >>> cell_factors.shape, model.components_.shape
    ((100, 3), (3, 30))
    >>> model.inverse_transform(cell_factors).shape
    (100, 30)
    """

    _transformer = True

    def __init__(
        self,
        n_components: int = 10,
        *,
        prior: str = "hierarchical",
        prior_shape: float | None = None,
        prior_rate: float | None = None,
        accelerate: bool | None = None,
        max_iter: int = 1000,
        tol: float = 1e-5,
        n_init: int = 1,
        init: str = "random",
        random_state=None,
        n_threads: int | None = None,
        dtype=np.float64,
        verbose: bool = False,
        solver: str = "batch",
        svi_form: str = "cells",
        batch_size: int | None = None,
        tau: float = 1.0,
        kappa: float = 0.7,
        n_epochs: int | None = None,
        eval_every: int = 1,
        checkpoint=None,
        checkpoint_every: int = 1,
        resume: bool = False,
    ):
        self.n_components = n_components
        self.prior = prior
        self.prior_shape = prior_shape
        self.prior_rate = prior_rate
        self.accelerate = accelerate
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.init = init
        self.random_state = random_state
        self.n_threads = n_threads
        self.dtype = dtype
        self.verbose = verbose
        self.solver = solver
        self.svi_form = svi_form
        self.batch_size = batch_size
        self.tau = tau
        self.kappa = kappa
        self.n_epochs = n_epochs
        self.eval_every = eval_every
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.resume = resume

    def __setstate__(self, state: dict) -> None:
        """Unpickle, giving a model pickled by an earlier version of vbsnmf the parameters
        added since with the values its version ran (`_EARLIER_PARAMETERS`): without them
        its repr, ``get_params``, ``clone`` and ``fit`` failed with an AttributeError."""
        state = dict(state)
        if "solver" not in state and "method" in state:  # its name before 2026-12-01
            state["solver"] = state.pop("method")
        for name, value in _EARLIER_PARAMETERS.items():
            state.setdefault(name, value)
        self.__dict__.update(state)

    def _check_params(self) -> FitSettings:
        """Every parameter checked once; the settings the fit functions use."""
        # each option compared as a string: a one-element array equalled its option (an
        # array prior was fitted, and tl.nmf's record left it out) and a longer one raised
        # numpy's "truth value of an array ... is ambiguous", naming no parameter
        if not isinstance(self.solver, str) or self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if not isinstance(self.svi_form, str) or self.svi_form not in SVI_FORMS:
            raise ValueError(f"svi_form must be one of {SVI_FORMS}, got {self.svi_form!r}")
        if not is_integer(self.n_components):
            raise TypeError(f"n_components must be an integer, got {self.n_components!r}")
        checkpoint = self.checkpoint
        if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a path or None, got {checkpoint!r}")
        resume = check_flag(self.resume, "resume")
        if resume and checkpoint is None:
            raise ValueError("resume=True needs checkpoint=PATH (where to resume from)")
        n_init = check_iterations(self.n_init, "n_init", 1)
        if checkpoint is not None and n_init != 1:
            raise ValueError(
                "checkpoints need n_init=1: a checkpoint holds one fit to save and resume"
            )
        if self.solver == "svi" and n_init != 1:  # VBNTF refuses it too
            raise ValueError("n_init > 1 applies to solver='batch'; SVI runs one start")
        prior = self._prior()
        learned = isinstance(prior, HierarchicalPrior)
        init = _check_init(self.init, self.solver, n_init, learned)
        if learned and self.solver == "svi" and self.svi_form != "cells":
            raise ValueError(
                f"svi_form={self.svi_form!r} fits the fixed prior only; use prior='gamma' or "
                "the cells form (svi_form='cells')"
            )
        accelerate = check_accelerate(self.accelerate, learned)
        tau, kappa = check_step_schedule(self.tau, self.kappa)
        batch_size = self.batch_size
        if batch_size is not None:
            batch_size = check_iterations(batch_size, "batch_size", 1)
        return FitSettings(
            n_components=int(self.n_components),
            prior=prior,
            accelerate=accelerate,
            solver=self.solver,
            svi_form=self.svi_form,
            max_iter=check_iterations(self.max_iter, "max_iter", 0),
            tol=check_tolerance(self.tol),
            n_init=n_init,
            init=init,
            n_threads=check_n_threads(self.n_threads) if self.n_threads is not None else None,
            dtype=check_float_dtype(self.dtype),
            batch_size=batch_size,
            tau=tau,
            kappa=kappa,
            n_epochs=None
            if self.n_epochs is None
            else check_iterations(self.n_epochs, "n_epochs", 1),
            eval_every=check_iterations(self.eval_every, "eval_every", 1),
            checkpoint=None if checkpoint is None else Path(checkpoint),
            checkpoint_every=check_iterations(self.checkpoint_every, "checkpoint_every", 1),
            resume=resume,
            verbose=check_verbose(self.verbose),
            random_state=self.random_state,
        )

    def _prior(self) -> Prior:
        if not isinstance(self.prior, str) or self.prior not in PRIORS:  # as solver's
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior!r}")
        shape = None if self.prior_shape is None else check_prior_shape(self.prior_shape)
        if self.prior == "gamma":
            shape = 1.0 if shape is None else shape
            rate = 1.0
            if self.prior_rate is not None:
                rate = check_prior_rate(self.prior_rate, self.dtype, shape)
            return GammaPrior(shape, rate)
        if self.prior_rate is not None:
            raise ValueError(
                "prior_rate applies to prior='gamma'; the hierarchical prior learns its rates"
            )
        return HierarchicalPrior(factor_shape=shape)

    # -- fitting --------------------------------------------------------------------------
    def fit(self, X, y=None, *, init=None, callback=None, mask=None) -> VBNMF:
        """Fit the model to ``X`` (cells x genes, non-negative counts; any scipy.sparse
        format, a dense array, a dask array, or for SVI's cells form a path or backed
        AnnData). Returns self.

        ``init``: starting variational parameters (see Notes). ``callback(n_iter, params,
        elbo_trace)`` runs after every iteration (SVI: epoch), e.g. for progress bars;
        ``params``' arrays are read-only during the call and ``elbo_trace`` is a copy.
        ``mask``: a matrix of X's shape (sparse or dense) whose nonzero entries were not
        observed: they leave the likelihood (their expected counts leave the total, their
        values in X, if any, are not fitted, but must be valid counts like every entry of
        X: write 0 there, not NaN), for held-out evaluation or gene panels that
        differ between samples; the zeros of X are still never visited. Batch VB on a
        matrix in memory only. Genes masked in every cell are fitted to no count (under
        ``prior="gamma"`` their q is the prior, ``components_`` its mean) and `transform`
        leaves them out, as the fit did."""
        # not fit_transform, which `set_output`'s container wraps: fit builds no output
        self._fit_input(X, init, callback, mask)
        return self

    def fit_transform(self, X, y=None, *, init=None, callback=None, mask=None):
        """Fit and return the posterior mean cell factors ``E[z]`` (cells x K); see `fit`.
        For a dask X too they are a numpy array (the counts stay on the cluster). They are
        the fit's own q(z), not `transform`'s of X (see there; after SVI's nonzero forms
        the two differ most)."""
        return self._fit_input(X, init, callback, mask)

    def _fit_input(self, X, init, callback, mask):
        """Fit ``X`` of any kind `fit` takes; returns ``E[z]`` (cells x K)."""
        refuse_closed_file(X)
        if is_dask_array(X):
            kind = "dask"
        elif _is_streamed(X):
            kind = "stream"
        else:
            kind = "memory"
        return self._fit(kind, X, init, callback, mask)

    def _fit(self, kind: str, X, init, callback, mask=None):
        """Fit input of a known ``kind``: ``"memory"``, ``"checked"`` (counts already
        checked, as `vbsnmf.tl.nmf` passes them), ``"stream"`` or ``"dask"``; a Generator
        ``random_state`` is left as it was if the fit raises (`kept_if_failed`)."""
        with kept_if_failed(self.random_state):
            return self._fit_drawn(kind, X, init, callback, mask)

    def _fit_drawn(self, kind: str, X, init, callback, mask=None):
        """`_fit`, which draws the fit's entropy from ``random_state``."""
        if kind == "dask":  # before the prior's advice, which names forms a dask X refuses
            _check_dask_svi_form(self.solver, self.svi_form)
        settings = self._check_params()
        callback = check_callback(callback)
        if mask is not None:
            _check_masked_input(kind, settings.solver, X)
        if kind == "dask":  # before the path's check, whose advice would not help
            _check_no_dask_checkpoint(settings.checkpoint)
        if settings.checkpoint is not None:  # before any work: never an input, nor a foreign file
            # as given: a trailing separator (a folder) is lost in settings' Path
            check_checkpoint_path(self.checkpoint, _input_files(X))
        _check_random_start(settings.init, kind)
        entropy = seed_entropy(self.random_state)
        # Before the fit, as scikit-learn validates X: mixed column names are refused.
        names = feature_names(X)
        if isinstance(init, str):  # VBNMF's init= (how to start) given to fit
            raise TypeError(
                f"fit's init is a start to continue (a fitted VBNMF or its parameters), not "
                f"{init!r}: how to start is VBNMF's own init parameter, "
                f"VBNMF(init={init!r}).fit(X)"
            )
        if isinstance(init, VBNMF):  # scikit-learn's error for an estimator not fitted yet
            check_fitted(init, "cell_shape_")
        if init is not None:
            _check_init_genes(init, names, row_names(X))
            check_init_cells(init, X)
        if mask is not None:
            check_entry_columns(X, mask, "mask")
        if kind in ("memory", "checked"):
            result, n_features = _FITS[kind](settings, X, init, callback, entropy, mask)
        else:
            result, n_features = _FITS[kind](settings, X, init, callback, entropy)
        if settings.solver == "svi":  # n_epochs' default depends on the cells
            warn_if_beyond(self, result.n_iter, settings.epochs(result.params.row_shape.shape[0]))
        else:
            warn_if_beyond(self, result.n_iter)
        self.n_features_in_ = n_features
        remember_feature_names(self, X)
        remember_cell_names(self, X)
        params = result.params
        self.cell_shape_, self.cell_rate_ = params.row_shape, params.row_rate
        self.gene_shape_, self.gene_rate_ = params.col_shape, params.col_rate
        for side, scale in (("cell", params.row_scale), ("gene", params.col_scale)):
            setattr(self, f"{side}_scale_shape_", None if scale is None else scale.shape)
            setattr(self, f"{side}_scale_rate_", None if scale is None else scale.rate)
        self.hyperparameters_ = hyperparameters(params)
        # `transform` projects onto the model as fitted, whatever set_params did since.
        self._fitted_prior = settings.prior
        # Genes a mask left unobserved in every cell: their q is fitted to no count (the
        # fixed prior's own), and a new cell's counts there, fitted against the prior's
        # mean (huge under a small prior_rate), drove its factors where the fit without
        # them would not.
        unobserved = result.unobserved_cols
        self._unobserved_genes = unobserved if unobserved is not None and unobserved.any() else None
        self.components_ = np.ascontiguousarray(params.col_mean.T)
        self.elbo_trace_ = result.elbo_trace
        self.elbo_iter_ = result.elbo_iter
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        return params.row_shape / params.row_rate

    def transform(self, X) -> np.ndarray:
        """Posterior mean cell factors ``E[z]`` of new cells, the gene side held fixed.

        Each new cell's q(z) is fitted by coordinate ascent from a common start until its
        own ELBO changes by less than ``tol`` relative (at most ``max_iter`` passes), so a
        cell's factors do not depend on the cells projected with it, nor on the threads.
        They are not always the fit's own factors for the cells it was fitted on: a
        cell's optimum given the genes need not be unique, and from this start some
        cells reach another one (on pbmc_facs 4-13 % of the cells move by an L1 distance
        above 0.1 in usage, most of them to a higher ELBO than the fit's:
        ``benchmarks/transform_vs_fit.py``), so compare new cells with the reference's
        cells projected the same way. After SVI's nonzero forms they differ more: those
        fits' cell factors are a stochastic step's, never fitted to the final gene side
        (on pbmc_tiny, K = 10, the cells' usages moved by a median L1 distance of 0.06
        after ``svi_form="nonzeros"``, 0.35 after ``"abe-shimamura"``, at most 0.003
        after batch VB and the cells form). X must have the fitted genes; those a fit with
        ``mask`` never observed (masked in every cell) are left out of the new cells'
        likelihood, as that fit left them out. A dask X is computed into memory first, as a
        sparse matrix (dense chunks are made CSR where they are computed, never one dense
        block).
        The projection is onto the model as fitted: of the parameters `set_params`
        changed since, only ``max_iter``, ``tol`` and ``n_threads`` apply here. Cells still
        moving at ``max_iter`` are counted in a `ConvergenceWarning`, as are, for a float32
        model, cells that stopped on a change below their ELBO's rounding (counts x 2**-24
        nats: pseudobulk depths; see ``dtype``).
        """
        cell_shape, cell_rate = self.transform_posterior(X)
        return cell_shape / cell_rate

    def _fitted_gene_side(self) -> tuple[np.ndarray, np.ndarray]:
        """``gene_shape_`` and ``gene_rate_`` as `fit` leaves them, checked: attributes
        edited by hand gave NaN cell factors (a NaN shape) or a bare KeyError (integers)."""
        gene_shape, gene_rate = np.asarray(self.gene_shape_), np.asarray(self.gene_rate_)
        n_components = gene_shape.shape[-1] if gene_shape.ndim == 2 else None
        for name, value in (("gene_shape_", gene_shape), ("gene_rate_", gene_rate)):
            if value.dtype not in (np.float32, np.float64) or value.dtype != gene_shape.dtype:
                raise ValueError(
                    f"{name} holds {value.dtype} values; a fit leaves float32 or float64 in "
                    "both gene_shape_ and gene_rate_: fit again"
                )
            if not np.all(np.isfinite(value)) or np.any(value <= 0):
                raise ValueError(
                    f"{name} must be positive and finite, as a fit leaves it: fit again"
                )
        shapes = (self.n_features_in_, n_components)
        if gene_shape.shape != shapes or gene_rate.shape not in (shapes, shapes[1:]):
            raise ValueError(
                f"gene_shape_ {gene_shape.shape} and gene_rate_ {gene_rate.shape} do not fit "
                f"each other and the {self.n_features_in_} genes fitted: fit again"
            )
        return gene_shape, gene_rate

    def transform_posterior(self, X) -> tuple[np.ndarray, np.ndarray]:
        """``q(z)`` of new cells, the gene side held fixed: ``(shape (n x K), rate)``, the
        rate (K,) under the fixed prior, (n x K) under the learned one (each new cell's
        scale fitted with it, the hyperparameters held at their fitted values)."""
        check_fitted(self, "gene_shape_")
        # Only the local fit's settings: the others are the next fit's, which `set_params`
        # may have begun to change (n_init=3 before adding a checkpoint, say).
        max_iter = check_iterations(self.max_iter, "max_iter", 0)
        tol = check_tolerance(self.tol)
        n_threads = None if self.n_threads is None else check_n_threads(self.n_threads)
        gene_shape, gene_rate = self._fitted_gene_side()
        check_feature_names(self, X)
        refuse_closed_file(X)
        if is_dask_array(X):  # fitted cell by cell in memory, as any X here
            from ._dask._cluster import computed_as_declared

            # dense chunks made sparse where they are computed: never one dense block
            X = computed_as_declared(X, sparse=True)
            # check_counts' advice, X.filled(0), is no method of a dask array
            refuse_masked(X, "X", "pass dask.array.ma.filled(X, 0), its chunks filled with 0")
        elif _is_streamed(X):  # numpy saw a backed X as a 0-d array ("must be 2-D")
            raise TypeError(
                f"{_describe_stream(X)} is read from disk; transform projects cells held in "
                "memory: read them first (adata.to_memory(), adata.X[:] or "
                "vbsnmf.io.read(path))"
            )
        # The fitted dtype's count range, as `fit` checks it (float32: at most 2**24).
        matrix = check_counts(X, fit_dtype=gene_shape.dtype)
        if matrix.shape[1] != self.n_features_in_:
            # scikit-learn's wording, which its estimator checks match.
            raise ValueError(
                f"X has {matrix.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input (the genes it was fitted with)"
                + transposed_hint(matrix.shape, self.n_features_in_)
            )
        # The prior as fitted; a model whose attributes were set by hand has the current one.
        prior = self._fitted_prior if hasattr(self, "_fitted_prior") else self._prior()
        hyper = getattr(self, "hyperparameters_", None)
        if (hyper is not None) != isinstance(prior, HierarchicalPrior):
            raise ValueError(
                f"the model's attributes do not fit prior={self.prior!r}: the learned prior "
                "needs hyperparameters_, the fixed one none; fit it again"
            )
        row_scale = None
        if hyper is not None:
            row_scale = _fitted_cell_scale(hyper, gene_shape.shape[1])
        unobserved = getattr(self, "_unobserved_genes", None)
        if unobserved is not None and unobserved.shape == (matrix.shape[1],):
            # left out of the likelihood, as the fit left them (docs/model.md, "Missing
            # entries": a column masked entirely is the fit without it)
            observed = ~unobserved
            matrix = sp.csr_array(matrix)[:, observed]
            gene_shape = np.ascontiguousarray(gene_shape[observed])
            if gene_rate.ndim == 2:
                gene_rate = np.ascontiguousarray(gene_rate[observed])
        with numba_threads(n_threads):
            rows = fit_rows(
                as_count_data(matrix, major=0),
                gene_shape,
                gene_rate,
                prior,
                max_iter=max(max_iter, 1),
                tol=tol,
                row_scale=row_scale,
            )
        rows.warn_unsettled(tol, max_iter)
        return rows.shape, rows.rate

    def inverse_transform(self, X) -> np.ndarray:
        """Expected counts back from cell factors: ``X @ components_``, as scikit-learn's
        ``NMF.inverse_transform``. Of the posterior mean factors `transform` returns, this
        is each entry's posterior expected count ``E[x_ij] = sum_l E[z_il] E[w_jl]``
        (q(z) and q(w) are independent).

        Parameters
        ----------
        X : array-like or scipy sparse matrix of shape (n_cells, n_components)
            Cell factors (what `transform` or `fit_transform` returns).

        Returns
        -------
        ndarray of shape (n_cells, n_features_in_)
            ``X @ components_``, in the fitted dtype.

        Raises
        ------
        NotFittedError
            Before `fit`.
        TypeError
            X is not numeric (complex numbers, text, timedelta64).
        ValueError
            X is not 2-D, has NaN (also missing values: ``None``, ``pd.NA``) or infinite
            entries, or has another number of columns than the fitted ``n_components``; X is
            a DataFrame whose columns are named as `get_feature_names_out`'s in another
            order (its pandas output sorted or reordered); or ``X @ components_`` passes the
            largest number of the fitted dtype.
        """
        check_fitted(self, "components_")
        check_output_columns(self, X)  # a frame of the output's columns in another order
        # a masked array's hidden values, and a complex one's imaginary part, would be
        # taken silently by np.asarray; a sparse matrix would be a 0-d object array
        refuse_masked(X, "X", "pass the values to use, e.g. X.filled(0)")
        if sp.issparse(X):
            X = small_dense(X, "X")
        if np.iscomplexobj(X):
            raise TypeError("X must be real numbers (cell factors), got complex values")
        try:
            factors = np.asarray(X)
            # numpy parsed text ("2.5") as numbers and took timedelta64 as its integers
            # (`transform` refuses both as counts)
            if factors.dtype == object:
                factors = numbers_from_objects(factors, "X")
            elif factors.dtype.kind not in "biuf":
                raise TypeError(
                    f"X must be a numeric array of cell factors, got dtype {factors.dtype}"
                )
            factors = factors.astype(np.float64, copy=False)
        except ValueError:  # ragged lists
            raise TypeError("X must be a numeric array of cell factors") from None
        components = np.asarray(self.components_)
        if factors.ndim != 2:
            raise ValueError(
                f"X must be 2-D (cells x factors), got an array of shape {factors.shape}"
            )
        if factors.shape[1] != components.shape[0]:
            raise ValueError(
                f"X has {factors.shape[1]} columns, but {type(self).__name__} has "
                f"{components.shape[0]} components: inverse_transform takes the cell "
                "factors that transform returns"
            )
        if not np.all(np.isfinite(factors)):
            raise ValueError("X must be finite (cell factors), got NaN or infinite values")
        return _expected_counts(factors, components)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = []
        return tags


# Entries of ``inverse_transform``'s float64 product computed at a time (8 MiB): computed
# whole and then copied into the fitted dtype, it held two cells x genes arrays at once
# (three times a float32 result).
_PRODUCT_BLOCK_ENTRIES = 1 << 20


def _expected_counts(factors: np.ndarray, components: np.ndarray) -> np.ndarray:
    """``factors @ components`` (float64 factors, K x genes components) in float64, returned
    in the components' dtype, a block of rows at a time into the result: no cells x genes
    array but the result itself. A `ValueError` when an entry passes that dtype's range."""
    n_cells, n_genes = factors.shape[0], components.shape[1]
    components64 = components.astype(np.float64, copy=False)
    product = np.empty((n_cells, n_genes), dtype=components.dtype)
    rows = max(1, _PRODUCT_BLOCK_ENTRIES // max(1, n_genes))
    for start in range(0, n_cells, rows):
        block = product[start : start + rows]
        with np.errstate(over="ignore"):
            block[...] = factors[start : start + rows] @ components64
        # finite factors whose expected counts pass the dtype's range gave inf entries
        check_finite_product(block, "X @ components_")
    return product


def _fitted_cell_scale(hyper, n_components: int) -> ScaleState:
    """The cells' learned prior of ``hyperparameters_`` as `fit` leaves it (a_l, a', b'),
    checked: set by hand, a factor shape of another length made the kernels read past its
    end (silently wrong factors), a NaN one NaN factors, a missing key a bare KeyError."""
    numbers = {}
    for key, shape in (
        ("cell_factor_shape", (n_components,)),
        ("cell_scale_prior_shape", ()),
        ("cell_scale_prior_mean", ()),
    ):
        if not isinstance(hyper, Mapping) or key not in hyper:
            raise ValueError(f"hyperparameters_ has no {key!r}, which a fit leaves: fit again")
        value = np.asarray(hyper[key])
        if value.dtype.kind not in "iuf" or value.shape != shape:
            wanted = f"{shape[0]} real numbers, one per factor" if shape else "one real number"
            raise ValueError(
                f"hyperparameters_[{key!r}] must be {wanted}, as a fit leaves it, got "
                f"{hyper[key]!r:.80}: fit again"
            )
        value = value.astype(np.float64)
        if not np.all(np.isfinite(value)) or np.any(value <= 0):
            raise ValueError(
                f"hyperparameters_[{key!r}] must be positive and finite, as a fit leaves it, "
                f"got {hyper[key]!r:.80}: fit again"
            )
        # a fit holds the learned shapes below it (`_model.learn_hyperparameters`): beyond,
        # the local fit's terms are not computed to the precision of their changes
        largest = PRIOR_SHAPE_RANGE[1]
        if key.endswith("shape") and np.any(value > largest):
            raise ValueError(
                f"hyperparameters_[{key!r}] must be at most {largest:g}, as a fit leaves it, "
                f"got {hyper[key]!r:.80}: fit again"
            )
        numbers[key] = value
    return ScaleState(
        np.empty(0),
        np.empty(0),
        numbers["cell_factor_shape"],
        float(numbers["cell_scale_prior_shape"]),
        float(numbers["cell_scale_prior_mean"]),
    )


# -- one function per kind of input --------------------------------------------------------
def _is_streamed(X) -> bool:
    """A path, or a backed AnnData (or its X): data read from disk a block at a time."""
    if isinstance(X, (str, os.PathLike)):
        return True
    if getattr(X, "isbacked", False):
        return True
    return is_backed_sparse(X)


def _fit_in_memory(
    settings: FitSettings, X, init, callback, entropy, mask=None
) -> tuple[FitResult, int]:
    """A matrix in memory: batch VB or any form of SVI."""
    # numpy's nan_to_num returns a scipy sparse matrix as it is, NaN and all: the advice
    # below on missing entries names its stored values instead (not a sparse frame's)
    zero_missing = (
        "X = X.tocsr(); X.data[np.isnan(X.data)] = 0"
        if sp.issparse(X)
        else "X = np.nan_to_num(X, nan=0.0)"
    )
    X = sparse_frame_as_coo(X)  # the memory guard reads a sparse matrix's nonzeros
    # Before any copy: fail in a second with a clear message, not after an hour of swap.
    _check_memory(settings, X, init)
    try:
        # with a mask, the non-integer warning is of the entries fitted (`_fit_counts`)
        matrix = check_counts(X, fit_dtype=settings.dtype, warn_non_integer=mask is None)
    except ValueError as error:
        # mask=np.isnan(X) is the natural way to give missing entries: say what to write
        if mask is None or "non-negative finite counts" not in str(error):
            raise
        raise ValueError(
            f"{error}. Entries that mask= leaves out of the fit still need a count in X: "
            f"write 0 there (e.g. {zero_missing}), the mask says they are missing"
        ) from None
    return _fit_counts(settings, matrix, init, callback, entropy, mask)


def _fit_checked(
    settings: FitSettings, matrix, init, callback, entropy, mask=None
) -> tuple[FitResult, int]:
    """A sparse matrix of counts its caller has checked already."""
    _check_memory(settings, matrix, init)
    return _fit_counts(settings, matrix, init, callback, entropy, mask)


def _check_memory(settings: FitSettings, X, init) -> None:
    """The memory guard of a fit that copies all the counts (batch VB, the nonzero forms of
    SVI); the cells form reads a minibatch of cells at a time, but holds every cell's
    factors (`_check_cells_form_memory`)."""
    if settings.solver == "svi" and settings.svi_form == "cells":
        if sp.issparse(X) or isinstance(X, np.ndarray):  # others: the validation explains
            _check_cells_form_memory(settings, X.shape)
        return
    check_fit_memory(
        X,
        settings.n_components,
        n_threads=settings.n_threads,
        dtype=settings.dtype,
        n_init=settings.n_init if init is None else 1,
        learned_prior=isinstance(settings.prior, HierarchicalPrior),
    )


def _check_cells_form_memory(settings: FitSettings, shape) -> None:
    """`vbsnmf._memory.check_cells_form_memory` for a fit of ``settings`` on cells x genes
    ``shape``."""
    if len(shape) == 2 and 1 <= settings.n_components <= min(shape):  # else: K's own error
        check_cells_form_memory(
            shape,
            settings.n_components,
            dtype=settings.dtype,
            learned_prior=isinstance(settings.prior, HierarchicalPrior),
        )


def _fit_counts(
    settings: FitSettings, matrix, init, callback, entropy, mask=None
) -> tuple[FitResult, int]:
    check_n_components(settings.n_components, matrix.shape)
    if mask is not None:  # batch VB only (`VBNMF._fit`)
        mask = _checked_mask(mask, matrix.shape)
    extent, observed = (None, 1.0) if mask is None else observed_extent(matrix.shape, mask)
    check_fixed_prior_range(
        matrix.shape, settings.prior, settings.dtype, observed=observed, observed_shape=extent
    )
    if settings.solver == "svi" and settings.svi_form == "cells":
        csr = sp.csr_array(matrix)
        fingerprint = None
        if settings.checkpoint is not None:
            fingerprint = combine_fingerprints(check_sparse_structure(csr, fingerprint=True))
        row_totals, col_totals = csr_totals(csr)
        counts = CountScan(
            float(row_totals.sum()), row_totals, col_totals, fingerprint, nonzero_count(csr)
        )
        return _fit_svi_cells(settings, InMemorySource(csr), counts, init, callback, entropy)
    if mask is not None:
        csr = sp.csr_array(matrix)
        matrix = csr - csr.multiply(mask.rows).tocsr()  # the masked entries' values go
        # Values under the mask (an imputed mean, say) are not fitted: warned of, they were
        # said to look normalised when every count fitted was whole.
        if np.any(matrix.data != np.round(matrix.data)):
            warn_non_counts("X")
    data = as_count_data(matrix)
    if settings.solver == "svi":
        return _fit_svi_nonzeros(settings, data, init, callback, entropy)
    result, n_features = _fit_batch(settings, data, init, callback, entropy, mask)
    if mask is not None:  # genes the fit never observed, which `transform` leaves out
        result = replace(result, unobserved_cols=mask.unobserved_cols())
    return result, n_features


def _checked_mask(mask, shape) -> Mask:
    """``mask`` as a `_model.Mask`: any matrix of X's shape, its nonzero entries the
    missing ones; refused unless finite, or if it leaves no entry observed."""
    module = "np"
    if is_dask_array(mask):  # as transform takes a dask X: sparse chunks stay sparse
        from ._dask._cluster import computed_as_declared

        # computed first: a dask masked array computes to a numpy one, whose hidden data
        # np.asarray read as the mask (the masked entries' mark lost)
        # dense chunks made CSR where they are computed (`computed_as_declared`): the mask
        # is made sparse below anyway, and computed whole it was cells x genes dense first
        mask, module = computed_as_declared(mask, "mask", sparse=True), "da"
    if isinstance(mask, np.ma.MaskedArray):  # np.asarray would read its hidden data
        raise TypeError(
            "mask is a masked array, whose data would be read as the mask: pass "
            f"{module}.ma.getmaskarray(X) to leave X's masked entries out of the fit"
        )
    if hasattr(mask, "obs_names"):  # numpy read an AnnData as an object of 64 dimensions
        raise TypeError("mask is an AnnData; pass its matrix (e.g. mask_adata.X) of X's shape")
    mask = sparse_frame_as_coo(mask)  # a DataFrame of sparse columns: not densified
    if sp.issparse(mask):
        matrix = _entry_format(mask)
    else:
        try:
            matrix = np.asarray(mask)
        except ValueError as error:  # ragged lists: numpy's message named no mask (as X's)
            raise TypeError(f"mask must be a matrix of X's shape {tuple(shape)}: {error}") from None
        if matrix.ndim != 2:  # scipy's own message names no mask
            raise ValueError(f"mask must be a matrix of X's shape {tuple(shape)}, got {mask!r:.80}")
    if matrix.dtype == object and not sp.issparse(matrix):  # numbers from pandas, say
        matrix = numbers_from_objects(matrix, "mask")
    if matrix.dtype.kind not in "biuf":  # scipy's own message names no mask
        raise TypeError(
            f"mask must hold real numbers (nonzero: not observed), got dtype {matrix.dtype}"
        )
    matrix = readable_values(matrix)  # float16, which scipy refuses, and the like
    if sp.issparse(matrix):
        # its index arrays as given, before a conversion reads through them (as X's): a
        # COO whose row lies beyond its shape crashed the interpreter in scipy's CSR, and
        # a CSC's row beyond it passed as a mask
        check_sparse_structure(matrix, "mask")
    # repeated entries summed wide: uint8 128 + 128 would be 0, an observed entry
    matrix = widen_to_sum(matrix) if sp.issparse(matrix) else sp.coo_array(matrix)
    if matrix.shape != tuple(shape):
        # genes x cells, as 10x files and R hold a matrix: say so, not only the shapes
        flipped = ", transposed: if its rows are genes and its columns cells, pass mask.T"
        transposed = matrix.shape == tuple(shape)[::-1]
        raise ValueError(
            f"mask has shape {matrix.shape}, X has {tuple(shape)}{flipped if transposed else ''}"
        )
    values = matrix.data
    if not np.all(np.isfinite(values.astype(np.float64))):
        raise ValueError("mask must hold finite numbers (nonzero: not observed)")
    checked = Mask.of(matrix)
    if checked.rows.nnz == shape[0] * shape[1]:
        # nothing observed: the total term would be the difference of two equal sums,
        # whose rounding alone gave positive, decreasing ELBOs
        raise ValueError("mask leaves no entry of X observed: there is nothing to fit")
    return checked


def _triplet_array(values, name: str) -> np.ndarray:
    """``fit_triplets``' ``rows``, ``cols`` or ``counts`` (``name``) as a flat array.

    Refused by name, as `VBNTF` refuses its coords and values: a masked array, in memory
    or in a dask array's chunks (np.asarray drops the mask, so its hidden values were
    fitted); a scipy or pydata sparse array (a matrix where a triplet array belongs:
    "counts must hold numbers: setting an array element with a sequence", or pydata's
    RuntimeError); and what numpy makes a single object of (a set, a mapping, a
    generator, None: "rows, cols and counts differ in length: 1, 4, 4"). A single number
    stays one triplet's value, as numpy reads it.
    """
    if is_dask_array(values):  # computed first: np.asarray of dask masked chunks drops the mask
        from ._dask._cluster import computed_as_declared

        values = computed_as_declared(values, name)
    refuse_masked(values, name, "leave the masked entries out of rows, cols and counts")
    pydata = type(values).__module__.split(".")[0] == "sparse" and hasattr(values, "nnz")
    if sp.issparse(values) or pydata:
        kind = type(values)
        raise TypeError(
            f"{name} is a sparse array ({kind.__module__}.{kind.__qualname__}), not the "
            f"triplets' {name}: fit a count matrix X with VBNMF(...).fit(X), or pass the "
            "row, col and data arrays of its COO form (scipy: X.tocoo())"
        )
    try:
        array = np.asarray(values)
    except ValueError as error:  # numpy's message for ragged nested lists names none
        raise TypeError(f"rows, cols and counts must be flat sequences: {error}") from None
    if array.dtype == object and array.ndim == 0 and not isinstance(values, numbers.Number):
        raise TypeError(
            f"{name} must be a sequence (an array, a list or a pandas column), got "
            f"{type(values).__name__}"
        )
    if array.ndim > 1:  # flattened, a table's rows were read as triplets; scipy's COO refuses
        raise ValueError(
            f"{name} must be one-dimensional, one entry per triplet, got an array of shape "
            f"{array.shape}: pass one column of a table ({name}[:, 0]), or "
            f"np.ravel({name}) if its entries are the triplets' in that order"
        )
    return array.ravel()


def _index_hint(index: np.ndarray, name: str) -> str:
    """Advice for ``fit_triplets``' indices of another dtype than integers, as `VBNTF`'s
    coordinates get: whole floats (``np.loadtxt``, a pandas column with a missing value)
    or objects (pandas' nullable Int64, Python ints beyond int64, None)."""
    if index.dtype.kind == "f":
        return float_indices_hint(index, name)
    if index.dtype == object:
        return "; every index must be an integer from 0 to 2**63 - 1 (none missing)"
    return ""


def _entry_format(matrix):
    """Sparse ``matrix`` in a format whose ``data`` holds its stored entries: LIL's is an
    object array of lists, DOK has none, and DIA's pads its diagonals (COO for these)."""
    return matrix if matrix.format in ("csr", "csc", "coo", "bsr") else matrix.tocoo()


def _fit_stream(settings: FitSettings, X, init, callback, entropy) -> tuple[FitResult, int]:
    """A path or backed AnnData, streamed a minibatch of cells at a time."""
    if settings.solver != "svi" or settings.svi_form != "cells":
        raise TypeError(
            f"{_describe_stream(X)} is not a matrix: it is read from disk a block of cells at "
            "a time, which needs solver='svi' (svi_form='cells'); for batch VB read it into "
            "memory first with vbsnmf.io.read(path)"
        )
    declared = declared_shape(X)
    if declared is not None:  # a K out of range refused before minutes of conversion
        # an empty matrix as such, not as a K out of range (as `_fit_dask` checks it)
        check_not_empty(declared, str(X))
        check_n_components(settings.n_components, declared)
        _check_cells_form_memory(settings, declared)
    with open_source(X) as source:
        check_not_empty(source.shape, source.name)
        check_n_components(settings.n_components, source.shape)
        # before the pass over the file (minutes on an atlas), not by the OOM killer after
        _check_cells_form_memory(settings, source.shape)
        check_fixed_prior_range(source.shape, settings.prior, settings.dtype)
        counts = scan_blocks(
            source.iter_blocks(EVAL_BLOCK_ROWS), source.shape, source.name, settings.dtype
        )
        return _fit_svi_cells(settings, source, counts, init, callback, entropy)


def _input_files(X) -> list:
    """The files ``X`` is read from: a path, a backed AnnData's file or its X's (that a
    checkpoint's check may never take one for a leftover of its own)."""
    if isinstance(X, (str, os.PathLike)):
        return [X]
    if getattr(X, "isbacked", False):
        return [X.filename]
    file = getattr(getattr(X, "group", None), "file", None)  # a backed X
    return [] if file is None else [file.filename]


def _check_masked_input(kind: str, solver: str, X) -> None:
    """A `ValueError` for ``mask`` given to a fit that cannot leave entries out: SVI, or
    input not in memory, named by what stands in the way ("not by solver='batch' on this
    input" read as batch VB refusing itself when X was a dask array or a file)."""
    if kind in ("memory", "checked") and solver == "batch":
        return
    refused, steps = [], []
    if kind == "dask":
        refused.append("on a dask X")
        steps.append("compute X into memory (X.compute())")
    elif kind == "stream":
        refused.append(f"on {_describe_stream(X)} (read from disk)")
        steps.append("read it into memory (vbsnmf.io.read(path), adata.to_memory())")
    if solver != "batch":
        refused.append(f"by solver={solver!r}")
        steps.append("fit with solver='batch'")
    raise ValueError(
        "mask= (missing entries) is supported by batch VB on a matrix in memory, not "
        f"{', nor '.join(refused)}: {' and '.join(steps)}"
    )


def _describe_stream(X) -> str:
    if isinstance(X, (str, os.PathLike)):
        return str(X)
    return "a backed AnnData" if hasattr(X, "isbacked") else "a backed AnnData's X"


def _checkpointer(
    settings: FitSettings,
    shape,
    nnz: int,
    total: float,
    n_threads: int,
    batch,
    fingerprint,
    entropy: int,
    warm_start: bool,
):
    """The checkpoint of this fit (inactive without a path) and the record of everything
    that changes its arithmetic (the data's fingerprint among them), which a checkpoint
    must match to be resumed. ``warm_start``: `VBNMF.fit` was given ``init``."""
    config = {
        **settings_config(settings, shape, batch, entropy, warm_start),
        "nnz": int(nnz),
        "total_count": float(total),
        "data_fingerprint": fingerprint,
        "n_threads": n_threads,
    }
    return Checkpointer(settings.checkpoint, settings.checkpoint_every, config)


def settings_config(
    settings: FitSettings, shape, batch, entropy: int, warm_start: bool = False
) -> dict:
    """The part of a fit's checkpoint record (`_checkpointer`) that its settings, the
    data's ``shape``, the SVI ``batch`` and whether it was given a start (``warm_start``)
    decide, without the counts: the command line, which gives no start, compares it with a
    checkpoint before it converts a matrix (`cli`)."""
    svi = settings.solver == "svi"
    cells_form = svi and settings.svi_form == "cells"
    return {
        "shape": [int(n) for n in shape],
        "n_components": settings.n_components,
        "solver": settings.solver,
        "svi_form": settings.svi_form if svi else None,
        "batch_size": batch if svi else None,
        "tau": settings.tau if svi else None,
        "kappa": settings.kappa if svi else None,
        # each cell's local fit runs to tol within max_iter passes: the steps depend on them
        "local_fit": [settings.max_iter, settings.tol] if cells_form else None,
        "eval_every": settings.eval_every if svi else None,
        "prior": repr(settings.prior),
        "init": settings.init,
        # a start given to fit: a checkpoint of a fit from its own start, resumed, dropped it
        # silently (and the reverse continued a start the fit was not given)
        "warm_start": warm_start,
        # SVI never accelerates: None, which a checkpoint's value is not compared with
        "accelerate": None if svi else settings.accelerate,
        "dtype": settings.dtype.name,
        "random_state": recorded_seed(settings.random_state, entropy),
    }


def _fit_batch(
    settings: FitSettings, data: CountData, init, callback, entropy, mask=None
) -> tuple[FitResult, int]:
    """Batch VB, best of ``n_init`` starts, saving and resuming checkpoints when asked;
    SQUAREM-accelerated when ``settings.accelerate``."""
    total = float(np.sum(data.counts, dtype=np.float64))
    n_components, dtype, prior = settings.n_components, settings.dtype, settings.prior
    with numba_threads(settings.n_threads) as n_threads:
        fingerprint = data_fingerprint(data) if settings.checkpoint is not None else None
        checkpointer = _checkpointer(
            settings,
            data.shape,
            data.nnz,
            total,
            n_threads,
            None,
            fingerprint,
            entropy,
            init is not None,
        )
        if mask is not None:  # a checkpoint of other missing entries is another fit
            checkpointer.config["mask"] = combine_fingerprints(
                check_sparse_structure(mask.rows, fingerprint=True)
            )
        with checkpointer:
            stored = checkpointer.load(settings.resume)
            # Generators, not lists, and each start handed over in a list the run empties:
            # no frame here holds a start while its fit runs (one q less at the peak).
            if stored is not None:
                starts = (stored for _ in range(1))
            elif init is not None:
                masked = mask is not None  # a masked fit's per-entry rates may start it
                starts = (
                    init_params(init, data.shape, n_components, dtype, prior, masked=masked)
                    for _ in range(1)
                )
            elif settings.init == "nndsvda":
                starts = (
                    svd_start(data, n_components, total, entropy, dtype, prior) for _ in range(1)
                )
            else:
                totals = side_totals(data) if isinstance(prior, HierarchicalPrior) else None
                starts = (
                    random_start(
                        data.shape, n_components, total, entropy, dtype, index, prior, totals
                    )
                    for index in range(settings.n_init)
                )
            run = _run_accelerated if settings.accelerate else _run_plain
            n_starts = settings.n_init if stored is None and init is None else 1
            best, index = None, -1
            # not enumerate(starts), whose reused result tuple holds the start it yielded
            for start in starts:
                index += 1
                if mask is not None and not isinstance(start, tuple):  # rates per entry from here
                    start = _per_entry_rates(start)
                handed = [start]
                del start
                # a start of its own (random or NNDSVDa) holds the factor shapes a learned
                # prior learns
                hold_shapes = stored is None and init is None and held_prior(prior) is not None
                print_start(settings.verbose, index, n_starts)
                with one_of_starts(n_starts) as outcome:
                    result = run(
                        settings, data, handed, checkpointer, callback, n_threads, mask, hold_shapes
                    )
                if best is None or final_elbo(result) > final_elbo(best):
                    best, best_outcome, best_index = result, outcome, index
    print_kept(settings.verbose, best, best_index, n_starts)
    warn_kept_start(best, n_starts, settings.max_iter, settings.tol, best_outcome.held)
    largest = float(data.counts.max(initial=0.0))
    warn_elbo_rounding(best.elbo_trace, best.converged, dtype, settings.tol, total, largest)
    return best, data.shape[1]


def _check_init_genes(init, names, rows=None) -> None:
    """A warm start from an estimator fitted with gene names, on X with other names or
    another order (``names``: X's), is refused: its gene side would start X's genes by
    position, silently another start than the fit it continues (``rows``, X's row names,
    holding init's genes: X is genes x cells, said so). On X without names the genes
    cannot be checked: a warning says so, as `transform` warns on such X."""
    init_names = getattr(init, "feature_names_in_", None)
    if init_names is not None and names is None:
        warn_user(
            "X does not have valid feature names, but init was fitted with feature names: "
            "its gene side starts X's genes by position, unchecked; pass X as a DataFrame "
            "with init's genes as columns to have them checked",
            UserWarning,
        )
    detail = names_differ(init_names, names, "genes", "X", "init")
    if detail is None:
        return
    # a gene repeated in X: X[init.feature_names_in_] took its columns each time it is named
    advice = (
        "pass X with init's genes, each as often as init has it"
        if set(init_names) == set(names) and repeated_otherwise(init_names, names)
        else "pass X's columns in init's order, X[init.feature_names_in_]"
    )
    if rows is not None and set(init_names) <= set(rows) and not set(init_names) <= set(names):
        # X[init.feature_names_in_] raised pandas' KeyError: X's columns are its cells
        advice = "X's row names are init's genes: X is genes x cells; pass X.T"
    raise ValueError(
        f"init was fitted with other feature names than X's: {detail}. Its gene side would "
        f"start X's genes by position: {advice}"
    )


INITS = ("random", "nndsvda")


def _check_init(init, solver: str, n_init: int, learned: bool) -> str:
    """``VBNMF``'s ``init``, checked against the settings it needs."""
    if init is not None and not isinstance(init, str):
        # a start to continue, given where fit's is meant: the message printed whole arrays
        if isinstance(init, dict):
            shown = f"a dict with keys {sorted(map(str, init))}"
        else:
            shown = brief_repr(init)
        raise ValueError(
            f"init must be one of {INITS} (how to start), got {shown}: a start to continue "
            "(a fitted VBNMF or a dict of cell_shape, cell_rate, gene_shape, gene_rate) is "
            "given to fit, VBNMF(...).fit(X, init=start)"
        )
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "nndsvda":
        if solver != "batch":
            raise ValueError("init='nndsvda' starts batch VB; SVI starts at random")
        if n_init != 1:
            raise ValueError("init='nndsvda' is one start: n_init must be 1")
        if not learned:
            raise ValueError(
                "init='nndsvda' starts the learned prior's fit; prior='gamma' starts at random"
            )
    return init


def _per_entry_rates(params):
    """``params`` with each rate per entry (n x K), as a fit with missing entries keeps
    them (an extrapolation must see the same arrays at every step)."""
    return VariationalParams(
        params.row_shape,
        np.broadcast_to(params.row_rate, params.row_shape.shape).copy(),
        params.col_shape,
        np.broadcast_to(params.col_rate, params.col_shape.shape).copy(),
        params.row_scale,
        params.col_scale,
    )


def _run_plain(
    settings, data, handed, checkpointer, callback, n_threads, mask, hold_shapes
) -> FitResult:
    """Plain coordinate ascent from a start or a checkpoint ``(arrays, meta)``, taken out
    of the list ``handed``; saves the parameters after every ``checkpoint_every``
    iterations and at the end. ``hold_shapes``: a random start's (`fit_batch`); a
    checkpoint says whether its fit held them."""

    def save(n_iter, params, trace, finished=False):
        arrays = {**params_to_arrays(params), "elbo_trace": np.asarray(trace)}
        # plain ascent's i-th value is iteration i's (`_batch.plain_ascent`)
        arrays["elbo_iter"] = np.arange(1, len(trace) + 1, dtype=np.int64)
        meta = {"finished": finished, "hold_shapes": hold_shapes}
        checkpointer.save(n_iter, arrays, meta, force=finished)

    def after_iteration(n_iter, params, trace):
        if callback is not None:
            callback(n_iter, params, trace)
        save(n_iter, params, trace)

    trace: list[float] = []
    iters: list[int] = []
    start = handed.pop()
    if isinstance(start, tuple):  # a checkpoint
        arrays, meta = start
        start = params_from_arrays(arrays)
        trace = [float(v) for v in arrays["elbo_trace"]]
        iters = restored_elbo_iter(arrays, len(trace))
        hold_shapes = bool(meta.get("hold_shapes", False))
        done = resumed_converged(trace, settings.tol, hold_shapes)
        if done or len(trace) >= settings.max_iter:
            if not done and 0 < len(trace) == settings.max_iter:  # as the fit itself warned
                still_holding = still_held(hold_shapes, trace)
                warn_not_converged("max_iter", settings.max_iter, settings.tol, still_holding)
            return FitResult(start, *trace_arrays(trace, iters), len(trace), bool(done))
    result = fit_batch(
        data,
        start,
        settings.prior,
        max_iter=settings.max_iter,
        tol=settings.tol,
        n_parts=n_threads,
        elbo_trace=trace,
        elbo_iter=iters,
        callback=after_iteration,
        verbose=settings.verbose,
        mask=mask,
        hold_shapes=hold_shapes,
    )
    save(result.n_iter, result.params, result.elbo_trace, finished=True)
    return result


def _run_accelerated(
    settings, data, handed, checkpointer, callback, n_threads, mask, hold_shapes
) -> FitResult:
    """SQUAREM-accelerated coordinate ascent from a start or a checkpoint, taken out of the
    list ``handed``; saves the state at the start of the first cycle ``checkpoint_every``
    passes or more after the last save, and at the end (`AcceleratedSaves`).
    ``hold_shapes``: a random start's (`fit_batch`)."""
    start = handed.pop()
    stored = None
    if isinstance(start, tuple):  # a checkpoint
        state, stored = AcceleratedState.from_arrays(*start, params_from_arrays), start[1]
    else:
        state = start_accelerated(start, hold_shapes)
    del start
    saves = AcceleratedSaves(checkpointer, params_to_arrays, settings.max_iter, stored)
    with saves.replaying():
        result, state = fit_batch_accelerated(
            data,
            state,
            settings.prior,
            max_iter=saves.max_iter,
            tol=settings.tol,
            n_parts=n_threads,
            callback=callback,
            on_cycle=saves,
            verbose=settings.verbose,
            mask=mask,
        )
    saves.at_end(state)
    return result


def _fit_svi_nonzeros(settings: FitSettings, data: CountData, init, callback, entropy):
    """SVI over minibatches of nonzeros (the ``"nonzeros"`` and ``"abe-shimamura"``
    forms)."""
    refuse_no_nonzeros(data.nnz, settings.svi_form, "cells")
    total = float(np.sum(data.counts, dtype=np.float64))
    batch = settings.batch_size or default_batch_size(settings.svi_form, data.shape[0], data.nnz)

    def start_state() -> SVIState:
        state = init_nonzeros_state(
            data.shape, settings.n_components, total, entropy, settings.dtype
        )
        if init is not None:
            state.params = init_params(
                init, data.shape, settings.n_components, settings.dtype, settings.prior
            )
        return state

    def run(state, svi_settings, save):
        return fit_svi_nonzeros(
            data, state, svi_settings, form=settings.svi_form, callback=callback, on_epoch=save
        )

    fingerprint = data_fingerprint(data) if settings.checkpoint is not None else None
    result = _run_svi(
        settings,
        data.shape,
        data.nnz,
        total,
        fingerprint,
        batch,
        start_state,
        run,
        entropy,
        init is not None,
    )
    return result, data.shape[1]


def _fit_svi_cells(settings: FitSettings, source, counts: CountScan, init, callback, entropy):
    """SVI over minibatches of cells read from ``source`` (in memory or on disk)."""
    shape, total = source.shape, counts.total
    # the nonzeros the scan counted (stored zeros and repeats not), as the fingerprint; a
    # dense file's source counts its own only by reading the whole file once more
    nnz = source.nnz if counts.nnz is None else counts.nnz
    batch = settings.batch_size or default_batch_size("cells", shape[0], nnz)

    def start_state() -> SVIState:
        totals = (counts.row_totals, counts.col_totals)
        state = init_cells_state(
            shape, settings.n_components, total, entropy, settings.prior, settings.dtype, 0, totals
        )
        if init is not None:  # the global side: the genes; the cells' local fits start here
            state.params = init_params(
                init, shape, settings.n_components, settings.dtype, settings.prior
            )
            state.held = False  # a warm start is not held, as in batch VB
            if state.params.row_scale is not None:
                state.cell_sums = scale_sums(
                    state.params.row_shape, state.params.row_rate, state.params.row_scale
                )
        return state

    def run(state, svi_settings, save):
        return fit_svi_cells(source, state, svi_settings, callback=callback, on_epoch=save)

    result = _run_svi(
        settings,
        shape,
        nnz,
        total,
        counts.fingerprint,
        batch,
        start_state,
        run,
        entropy,
        init is not None,
    )
    warn_local_rounding(result.elbo_trace, settings.dtype, settings.tol, total)
    return result, shape[1]


def _run_svi(
    settings: FitSettings,
    shape,
    nnz,
    total,
    fingerprint,
    batch,
    start_state,
    run,
    entropy,
    warm_start: bool,
) -> FitResult:
    """An SVI fit from a fresh state or its checkpoint, saved after every epoch when asked;
    ``warm_start``: ``start_state`` starts from `VBNMF.fit`'s ``init``."""
    with numba_threads(settings.n_threads) as n_threads:
        svi_settings = settings.svi(batch, n_threads, shape[0])
        checkpointer = _checkpointer(
            settings, shape, nnz, total, n_threads, batch, fingerprint, entropy, warm_start
        )
        with checkpointer:
            stored = checkpointer.load(settings.resume)
            if stored is not None:
                state = SVIState.from_arrays(*stored, svi_settings.eval_every)
                resumed_svi_progress(state, svi_settings)
            else:
                state = start_state()

            def save(state: SVIState) -> None:
                checkpointer.save(state.epoch, *state.to_arrays(), force=state.finished)

            state = run(state, svi_settings, save)
    return FitResult(
        state.params, *trace_arrays(state.elbo_trace, state.elbo_iter), state.epoch, state.converged
    )


def _fit_dask(settings: FitSettings, X, init, callback, entropy) -> tuple[FitResult, int]:
    """A dask array of cells x genes (or an AnnData whose X is one), on the default client.
    The cells' arrays of the result are computed into memory (cells x K, where the counts
    stay on the cluster): as dask arrays they read the cluster's futures, so a fitted
    estimator failed once its client closed, and after unpickling."""
    from . import _dask

    X = _dask.cells_x_genes(X)
    result = _dask_fit(settings, X, init, callback, entropy, None)
    params, scale = result.params, result.params.row_scale
    lazy = [params.row_shape, params.row_rate]
    lazy += [] if scale is None else [scale.shape, scale.rate]
    computed = compute_dask(*lazy)  # by the fit's client, whatever dask's scheduler
    params = replace(params, row_shape=computed[0], row_rate=computed[1])
    if scale is not None:
        params.row_scale = replace(scale, shape=computed[2], rate=computed[3])
    fitted = FitResult(params, result.elbo_trace, result.elbo_iter, result.n_iter, result.converged)
    return fitted, X.shape[1]


def _dask_fit(settings: FitSettings, X, init, callback, entropy, client):
    """`_dask`'s batch or SVI driver for ``settings``; the best of ``n_init`` starts."""
    from . import _dask

    _check_no_dask_checkpoint(settings.checkpoint)
    check_not_empty(X.shape)  # before n_components, whose range it would otherwise explain
    n_components = check_n_components(settings.n_components, X.shape)
    check_fixed_prior_range(X.shape, settings.prior, settings.dtype)
    # Dask's worker threads parallelise over chunks; n_threads is Numba's per chunk task.
    n_threads = 1 if settings.n_threads is None else settings.n_threads
    if settings.solver == "svi":
        _check_dask_svi_form(settings.solver, settings.svi_form)
        if init is not None:
            raise ValueError("init is not supported for solver='svi' on a dask X")
        batch = settings.batch_size or default_batch_size("cells", X.shape[0], 0)
        return _dask.fit_svi_cells_dask(
            X,
            n_components,
            settings=settings.svi(batch, n_threads, X.shape[0]),
            entropy=entropy,
            dtype=settings.dtype,
            client=client,
            callback=callback,
        )
    start = None
    if init is not None:
        start = init_params(init, X.shape, n_components, settings.dtype, settings.prior, True)
    n_starts = 1 if init is not None else settings.n_init
    best = None
    for index in range(n_starts):
        print_start(settings.verbose, index, n_starts)
        with one_of_starts(n_starts) as outcome:
            result = _dask.fit_batch_dask(
                X,
                n_components,
                prior=settings.prior,
                max_iter=settings.max_iter,
                tol=settings.tol,
                entropy=entropy,
                dtype=settings.dtype,
                init=start,
                start=index,
                n_threads=n_threads,
                client=client,
                callback=callback,
                verbose=settings.verbose,
                accelerate=settings.accelerate,
                warn_non_counts=index == 0,  # the same chunks: once per fit, as in memory
            )
        if best is None or final_elbo(result) > final_elbo(best):
            best, best_outcome, best_index = result, outcome, index
    print_kept(settings.verbose, best, best_index, n_starts)
    warn_kept_start(best, n_starts, settings.max_iter, settings.tol, best_outcome.held)
    warn_elbo_rounding(
        best.elbo_trace,
        best.converged,
        settings.dtype,
        settings.tol,
        best.total_count,
        best.largest_count,
    )
    return best


def _check_no_dask_checkpoint(checkpoint) -> None:
    """A dask X is fitted without checkpoints: refused before the checkpoint's path is
    checked (a file of the user's there was answered "name another path or remove it")
    and before `vbsnmf.tl.nmf` reads the chunks to check the counts."""
    if checkpoint is not None:
        raise ValueError(
            "checkpoints are not supported for a dask X (a lost worker is recomputed by Dask "
            "instead)"
        )


def _check_random_start(init: str, kind: str) -> None:
    """VBNMF's ``init`` other than ``"random"`` starts batch VB on a matrix in memory only:
    refused for a ``kind`` of input other than ``"memory"`` or ``"checked"``."""
    if init != "random" and kind not in ("memory", "checked"):
        raise ValueError(
            f"init={init!r} starts batch VB on a matrix in memory; a {kind} "
            "input starts at random (init='random')"
        )


def _check_dask_svi_form(solver, svi_form) -> None:
    """A dask X is fitted by the cells form of SVI only: refused before `_check_params`,
    whose advice for the learned prior (``prior='gamma'``, a fixed-prior form) would only
    lead to this refusal. An unknown form is left to `_check_params`."""
    if solver == "svi" and svi_form in SVI_FORMS and svi_form != "cells":
        raise ValueError(
            f"a dask X is fitted by the cells form of SVI, not svi_form={svi_form!r}: use "
            "svi_form='cells' (the default), or compute X into memory for the other forms"
        )


def fit_dask(X, n_components: int = 10, *, init=None, client=None, callback=None, **params):
    """Batch VB on a Dask cluster: the same fit as `VBNMF` for the same parameters.

    Parameters
    ----------
    X
        Counts, cells x genes: a `dask.array.Array` chunked along cells (scipy sparse or
        dense chunks) or an AnnData whose ``X`` is one. Gene chunks are merged.
    n_components
        Number of factors K.
    init
        Starting q, as for `VBNMF.fit`, or a previous `DaskFitResult` (its ``params``);
        ``cell_shape`` may be a dask array (e.g. a previous distributed fit's
        ``params.row_shape``). Default (or ``"random"``, `VBNMF`'s ``init``): random, as
        `VBNMF` draws it, so any chunking gives the same fit for the same ``random_state``.
    client
        A `distributed.Client`; default: the current default client.
    callback
        ``callback(n_iter, params, elbo_trace)`` after every iteration; ``params.row_shape``
        is a dask array on the cluster.
    **params
        `VBNMF`'s parameters (``prior``, ``prior_shape``, ``prior_rate``, ``max_iter``,
        ``tol``, ``n_init``, ``random_state``, ``dtype``, ``verbose``); ``n_threads`` is the
        number of Numba threads inside each chunk task (default 1: Dask's worker threads
        already run chunks in parallel). Both priors are supported, and ``accelerate``
        (SQUAREM, by default on for the learned prior as in `VBNMF`): the fit is `VBNMF`'s
        in memory up to the order of floating-point sums, which SQUAREM can amplify (see
        `VBNMF`'s ``accelerate``).

    Returns
    -------
    DaskFitResult
        The final q (the cells' arrays stay on the cluster as dask arrays), the ELBO trace
        with the iteration of each value (``elbo_iter``) and the bytes moved per pass.

    Raises
    ------
    ValueError
        No client, bad parameters, or negative/NaN/infinite counts in a chunk.
    """
    return _fit_dask_result(X, n_components, init, client, callback, params, solver="batch")


def fit_svi_dask(X, n_components: int = 10, *, client=None, callback=None, **params):
    """Cell-minibatch SVI on a Dask cluster, step for step the single-machine cells form
    of `VBNMF(solver="svi")`: the same start and minibatches for the same ``random_state``.
    Each cell's local fit stops on its own ELBO (`_model.fit_rows`), wherever it runs, so
    any chunking gives the single-machine fit up to the order of floating-point sums
    (pbmc_tiny, 600 cells in 1, 3 or 8 chunks, the default ``tol``, 10 epochs: ELBO traces
    within 1e-14 and loadings within 2e-13 relative of ``VBNMF(solver="svi")``'s).

    A minibatch's cells are fitted on the workers that hold them, starting from their
    previous optimum (the client keeps every cell's latest shapes and sends the batch's
    rows); each chunk returns its share of the gene statistic (genes x K) and
    ``sum E[z]``; the client takes the gene side's step. Every ``eval_every`` epochs (and
    after the last) each chunk fits all its cells to the gene side and returns its ELBO
    terms; the cell side returned is that of the last evaluation.

    Parameters
    ----------
    X, n_components, client
        As in `fit_dask`.
    callback
        ``callback(epoch, params, elbo_trace)`` after every epoch (``params.row_shape``:
        every cell's latest shapes, on the client).
    **params
        `VBNMF`'s parameters: ``batch_size``, ``tau``, ``kappa``, ``n_epochs``,
        ``eval_every``, ``tol``, ``max_iter`` (passes of each cell's local fit), the prior
        (both are supported: under the learned prior the client also keeps every cell's
        rates and scale), ``random_state``, ``dtype``, ``n_threads`` (per chunk task,
        default 1).

    Returns
    -------
    DaskFitResult
        The ELBO trace has one entry per evaluation, ``elbo_iter`` its epoch; the cells'
        arrays of ``params`` (dask arrays) are the last evaluation's cell side.
    """
    # a start given as fit_dask takes it is refused as such, not as VBNMF's init= string
    init = params.pop("init", None)
    return _fit_dask_result(X, n_components, init, client, callback, params, solver="svi")


def _fit_dask_result(X, n_components, init, client, callback, params, solver):
    from . import _dask

    if "solver" in params:
        raise TypeError("fit_dask and fit_svi_dask choose their solver; drop solver=")
    if "mask" in params:  # VBNMF.fit's argument: VBNMF(mask=...) failed as "unexpected keyword"
        raise ValueError(
            "mask= (missing entries) is supported by batch VB on a matrix in memory, not on "
            "a dask X: compute X into memory and fit it by VBNMF.fit(X, mask=...)"
        )
    if isinstance(init, str):  # VBNMF's init= (how to start), as fit_svi_dask takes it
        params, init = {**params, "init": init}, None
    _check_vbnmf_keywords("fit_dask" if solver == "batch" else "fit_svi_dask", params, {"solver"})
    model = VBNMF(n_components, solver=solver, **params)
    _check_dask_svi_form(model.solver, model.svi_form)
    settings = model._check_params()
    _check_random_start(settings.init, "dask")
    callback = check_callback(callback)
    with kept_if_failed(model.random_state):  # as VBNMF.fit
        entropy = seed_entropy(model.random_state)
        names = _anndata_gene_names(X)
        X = _dask.cells_x_genes(X)
        if init is not None and solver == "batch":  # as VBNMF.fit checks a warm start's genes
            _check_init_genes(init, names)  # (SVI on Dask refuses a start, in `_dask_fit`)
        return _dask_fit(settings, X, init, callback, entropy, client)


def _anndata_gene_names(X) -> np.ndarray | None:
    """The gene names of `fit_dask`'s ``X``: an AnnData's ``var_names`` (its X a dask
    array), None for a dask array, which has none."""
    if hasattr(X, "obs_names") and hasattr(X, "var_names"):
        return np.asarray(X.var_names, dtype=object)
    return None


_FITS = {
    "memory": _fit_in_memory,
    "checked": _fit_checked,
    "stream": _fit_stream,
    "dask": _fit_dask,
}


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

    Parameters
    ----------
    rows, cols
        Integer row (cell) and column (gene) index of each count, from 0.
    counts
        The counts, non-negative and finite, one per (row, column) pair. Numbers held as
        objects (a pandas object column) are read as float64, a missing one (None,
        ``pd.NA``) as the NaN it stands for, which is refused.
    shape
        ``(n_rows, n_cols)`` of the matrix.
    n_components
        Number of factors K, as `VBNMF`'s (default 10).
    **params
        `VBNMF`'s other keyword arguments (not `VBNMF.fit`'s ``mask``, ``init`` or
        ``callback``: fit the matrix for those).

    Returns
    -------
    VBNMF
        The fitted estimator.

    Raises
    ------
    ValueError
        An array has more than one dimension (a table, even of one column: scipy's COO
        refuses it too), the three arrays differ in length, ``shape`` is negative or beyond
        int64, an index is out of ``shape``, or a count is negative, NaN or infinite.
    TypeError
        ``shape`` is not two integers, the indices not integers (a float or timedelta64
        array too), the counts not numbers, an array is ragged, masked (its masked entries
        would be fitted), sparse or no sequence (a set, a generator, None), or ``params``
        holds an argument of `VBNMF.fit` or no parameter of `VBNMF` at all.
    """
    rows, cols, counts = (
        _triplet_array(a, name) for a, name in zip((rows, cols, counts), ("rows", "cols", "counts"))
    )
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 2
        or not all(is_integer(n) for n in shape)
    ):
        raise TypeError(f"shape must be two integers (rows, columns), got {shape!r}")
    # scipy's sizes are int64: beyond, numpy's OverflowError; below 0, scipy's own message
    if not all(0 <= n <= np.iinfo(np.int64).max for n in shape):
        raise ValueError(f"shape must be two integers from 0 to 2**63 - 1, got {tuple(shape)}")
    if counts.dtype == object:  # numbers from pandas (pd.NA as NaN, named below), not text
        counts = numbers_from_objects(counts, "counts")
    if counts.size and counts.dtype.kind not in "biuf":  # scipy's message lists its dtypes
        raise TypeError(f"counts must be numbers, got dtype {counts.dtype}")
    if not (rows.shape == cols.shape == counts.shape):
        raise ValueError(
            f"rows, cols and counts differ in length: {rows.size}, {cols.size}, {counts.size}"
        )
    n_rows, n_cols = (int(n) for n in shape)
    for name, index, bound in (("rows", rows, n_rows), ("cols", cols, n_cols)):
        # timedelta64 is a subtype of np.integer, and bool of neither: the kinds say which
        if index.size and index.dtype.kind not in "iu":
            raise TypeError(
                f"{name} must be integer indices, got dtype {index.dtype}"
                + _index_hint(index, name)
            )
        outside = (index < 0) | (index >= bound)
        if np.any(outside):
            raise ValueError(
                f"{np.count_nonzero(outside)} {name} indices outside [0, {bound}), "
                f"first at position {int(np.flatnonzero(outside)[0])}"
            )
    for name in ("mask", "init", "callback"):  # VBNMF.fit's, which VBNMF called unexpected
        if name in params:
            raise TypeError(
                f"fit_triplets takes no {name}= ({name} is an argument of VBNMF.fit): build "
                "the matrix, scipy.sparse.coo_array((counts, (rows, cols)), shape=shape), and "
                f"fit it by VBNMF(...).fit(matrix, {name}=...)"
            )
    _check_vbnmf_keywords("fit_triplets", params)
    counts = readable_values(counts)
    _check_triplet_counts(counts, rows, cols)
    matrix = sp.coo_array((counts, (rows, cols)), shape=(n_rows, n_cols))
    return VBNMF(n_components, **params).fit(matrix)


def _check_triplet_counts(counts: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    """Refuse ``fit_triplets``' negative, NaN or infinite counts by their place in
    ``counts`` and their (row, column): checked on the matrix built from them, they were
    named entries of "X", an argument the caller never passed."""
    problems = bad_count_problems(counts, lambda: (rows, cols), _first_triplet)
    if problems:
        # "Negative values in data" is the phrase scikit-learn's estimator checks look for.
        lead = "Negative values in data: " if np.any(counts < 0) else ""
        raise ValueError(
            f"{lead}counts must be non-negative and finite; found " + "; ".join(problems)
        )


def _first_triplet(label: str, where: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> str:
    """The bad counts ``where`` of the kind ``label`` (`bad_count_problems`), named by the
    first's place among the triplets and its row and column."""
    first = int(where[0])
    return (
        f"{where.size} {label} count{'s' if where.size > 1 else ''}, the first at "
        f"position {first} (row {int(rows[first])}, column {int(cols[first])})"
    )


def _check_vbnmf_keywords(function: str, params: dict, chosen: set[str] = frozenset()) -> None:
    """A `TypeError` naming ``function`` (`fit_dask`, `fit_svi_dask`, `fit_triplets`) and
    the `VBNMF` parameters it passes on, for a keyword that is none of them (Python's own
    said "VBNMF.__init__() got an unexpected keyword argument", naming a call the user did
    not make); ``chosen``: parameters ``function`` sets itself, left out of the list."""
    accepted = sorted(set(VBNMF._get_param_names()) - {"n_components"} - set(chosen))
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(
            f"{function}() got an unexpected keyword argument {unknown[0]!r}: its keywords "
            f"are VBNMF's parameters, {', '.join(accepted)}"
        )
