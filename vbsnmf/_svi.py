"""Stochastic variational Bayes (Hoffman et al. 2013) in the three forms of ``docs/model.md``.

Loops over the model's steps (`_model`); no file access (a cell source, opened at the
edge, does the reading). All forms take a step on the global parameters from a minibatch and
blend it in,

    theta <- (1 - rho_t) theta + rho_t theta_tilde,    rho_t = min(1, (t + tau)^(-kappa)),

with t = n / n_steps the epochs' worth of data seen after the n-th of n_steps steps per
epoch (so the schedule depends on the passes over the data, not on how they are cut into
minibatches), ``tau >= 0``, ``kappa in (0.5, 1]`` and rho_t at most 1. Epochs run over a
fresh random permutation; the full ELBO is evaluated every ``eval_every`` epochs (one
pass over the data, no extra memory) and the fit stops when its relative change has been
at most ``tol`` three evaluations in a row (`svi_has_converged`) or after ``n_epochs``.

- ``"cells"`` (`fit_svi_cells`): minibatches of cells (rows). Each batch's cell factors are
  fitted to convergence with the gene side fixed (`_model.fit_rows`, the local step of
  ``transform``), then the gene side takes a natural-gradient step with the batch's
  statistics scaled by C / |batch| (`step_cols`). A cell's local fit starts where its
  previous one (last minibatch or evaluation) ended: the gene side moves little between
  visits, so from the second epoch on a local fit needs a few passes instead of dozens.
- ``"nonzeros"`` (`fit_svi_nonzeros`): minibatches of nonzeros, all of q global: the
  model's global step on the minibatch with its statistics scaled by N1 / S, then the
  blend. With S = N1 and rho = 1 a step is one batch iteration.
- ``"abe-shimamura"``: the minibatch form of Abe and Shimamura's talk (the method vbsnmf
  implements): the statistics unscaled, the rates' data term scaled by S / (R C), and
  ``eta_t = (S / N1) rho_t``. Its fixed point differs from batch VB's by the density
  N1 / (R C) (the minibatch holds only nonzeros but is scaled as a sample of all R C
  entries); it is kept to measure exactly that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ._checkpoint import restored_elbo_iter, rng_from_json, rng_state_json
from ._data import CountData, as_count_data
from ._model import (
    ElboTerms,
    HierarchicalPrior,
    Prior,
    ScaleState,
    ScaleSums,
    VariationalParams,
    elbo,
    fit_rows,
    fix_gauge,
    gauge_factor,
    global_step,
    has_converged,
    held_prior,
    learn_hyperparameters,
    learned_start_rates,
    learned_start_scale,
    local_start_shape,
    minibatch_generator,
    params_from_arrays,
    params_to_arrays,
    random_shapes,
    random_start,
    release_index,
    scale_optimum,
    scale_sums,
    shape_statistics,
    side_rate,
    side_terms,
    start_rate,
    start_scale_template,
    still_held,
    totals_summary,
    update_side,
    warn_not_converged,
)
from ._utils import counted
from ._validation import (
    checked_counts,
    combine_fingerprints,
    warn_non_counts,
)

SVI_FORMS = ("cells", "nonzeros", "abe-shimamura")

# Rows per block of the cells form's full passes (initial scan, ELBO evaluation).
EVAL_BLOCK_ROWS = 4096


# The cells form's default minibatch: the cells cut into CELL_STEPS_PER_EPOCH minibatches,
# but never fewer than MIN_CELL_BATCH cells. Under the learned prior the gene side and its
# hyperparameters converge as slowly as batch VB's coordinate ascent (100-300 passes), so SVI
# needs many global steps, not only many epochs: 256 cells on 1,107 cells (4 steps per epoch)
# stayed 2-5 % below batch VB after 20 epochs. A fixed number of steps makes an epoch the
# same progress whatever the number of cells. Small minibatches, though, make the statistics
# (scaled by C / |batch|) noisy and the learned gene prior with them: on pbmc_facs panels
# 32 cells a step ended 2.4 % below batch VB (400 cells, K=10) and 64 cells 1.0 % (1,000
# cells), where 128 ended 0.7 % and 0.04 % below. docs/performance.md has the runs.
# And never more than an evaluation block (EVAL_BLOCK_ROWS), so that a step holds no more of
# a streamed file in memory than the evaluation does (more than 32 steps beyond 131,072 cells).
CELL_STEPS_PER_EPOCH = 32
MIN_CELL_BATCH = 128


def default_batch_size(form: str, n_rows: int, nnz: int) -> int:
    """``batch_size`` when not given: for the cells form ``max(MIN_CELL_BATCH,
    ceil(n_rows / CELL_STEPS_PER_EPOCH))``, at most ``EVAL_BLOCK_ROWS`` and ``n_rows``; for
    the nonzero forms an eighth of the nonzeros."""
    if form == "cells":
        per_step = max(MIN_CELL_BATCH, -(-n_rows // CELL_STEPS_PER_EPOCH))
        return max(1, min(n_rows, EVAL_BLOCK_ROWS, per_step))
    return max(1, nnz // 8)


# n_epochs when not given: DEFAULT_EPOCHS, or for the cells form with its default batch as
# many more epochs as keep DEFAULT_EPOCHS * CELL_STEPS_PER_EPOCH global steps when
# MIN_CELL_BATCH leaves fewer than CELL_STEPS_PER_EPOCH an epoch (fewer than 4,096 cells):
# the gene side needs steps, and an epoch of a small data set is cheap. pbmc_tiny (1,107
# cells, 9 steps an epoch) at K = 20 ended 1.64 % below batch VB after 40 epochs and 0.69 %
# after 143 (docs/performance.md).
DEFAULT_EPOCHS = 40


def default_n_epochs(form: str, n_rows: int, batch_given: bool = False) -> int:
    """``n_epochs`` when not given: `DEFAULT_EPOCHS`, or for the cells form with its
    default batch (``batch_given`` False) on fewer than 4,096 cells enough epochs of
    `default_batch_size` for ``DEFAULT_EPOCHS * CELL_STEPS_PER_EPOCH`` steps."""
    if form != "cells" or batch_given:
        return DEFAULT_EPOCHS
    n_steps = steps_per_epoch(n_rows, default_batch_size(form, n_rows, 0))
    return max(DEFAULT_EPOCHS, -(-DEFAULT_EPOCHS * CELL_STEPS_PER_EPOCH // n_steps))


def steps_per_epoch(n_items: int, batch_size: int) -> int:
    """Minibatches of ``batch_size`` in an epoch over ``n_items`` (the last may be short)."""
    return max(1, -(-n_items // batch_size))


def learning_rate(step: int, tau: float, kappa: float, n_steps: int = 1) -> float:
    """Robbins-Monro weight ``rho_t = min(1, (t + tau)^(-kappa))`` of the ``step``-th step
    (from 1), with ``t = step / n_steps`` the epochs' worth of data seen, ``n_steps``
    steps to an epoch."""
    return float(min(1.0, (step / n_steps + tau) ** (-kappa)))


@dataclass
class SVIState:
    """Everything an SVI fit needs to continue bitwise: the parameters, the step and epoch
    counters, the ELBO trace with the epoch of each value (``elbo_iter``) and the minibatch
    generator (the next epoch's permutation).

    For the cells form ``params``' row side holds every cell's latest local optimum (from
    its last minibatch or the last evaluation), where its next local fit starts; under the
    learned prior ``cell_sums`` are the sums over all cells that their hyperparameters are
    learned from, kept up to date step by step. ``gene_statistics``: the last evaluation's
    gene-side statistics while the exact gene step they give (`full_data_gene_step`) is
    still to be taken, as when the fit ended at ``n_epochs`` or a checkpoint is saved after
    an evaluation: resumed with more epochs, it takes that step first, as the longer fit
    did. ``held``: the fit started held (`holding`), as a batch fit from a random start
    does."""

    params: VariationalParams
    rng: np.random.Generator
    step: int = 0
    epoch: int = 0
    elbo_trace: list[float] = field(default_factory=list)
    elbo_iter: list[int] = field(default_factory=list)
    converged: bool = False
    finished: bool = False
    cell_sums: ScaleSums | None = None
    gene_statistics: tuple[np.ndarray, np.ndarray] | None = None
    held: bool = False

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays and JSON metadata for `_checkpoint.save_checkpoint`."""
        arrays = params_to_arrays(self.params)
        if self.gene_statistics is not None:
            arrays.update(zip(GENE_STATISTICS, self.gene_statistics))
        return progress_to_arrays(self, arrays, self.cell_sums, CELL_SUMS)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict, eval_every: int) -> SVIState:
        """The inverse of `to_arrays`, for a fit that evaluates every ``eval_every``
        epochs (which a checkpoint without ``elbo_iter`` needs)."""
        progress, cell_sums = progress_from_arrays(arrays, meta, CELL_SUMS, eval_every)
        statistics = None
        if GENE_STATISTICS[0] in arrays:
            statistics = tuple(arrays[key] for key in GENE_STATISTICS)
        return cls(
            params=params_from_arrays(arrays),
            cell_sums=cell_sums,
            gene_statistics=statistics,
            **progress,
        )


# Checkpoint keys of the cells form's stored sums (scalars, then sum E[log z] per component).
CELL_SUMS = ("cell_sums_scale", "cell_sums_factor_log")
# ... and of `SVIState.gene_statistics` (genes x K, then K), when it holds them.
GENE_STATISTICS = ("gene_step_stat", "gene_step_cell_mean_sum")


def progress_to_arrays(
    state, arrays: dict[str, np.ndarray], sums: ScaleSums | None, sums_keys: tuple[str, str]
) -> tuple[dict[str, np.ndarray], dict]:
    """An SVI state's checkpoint (matrix or tensor): the parameters' ``arrays`` with the
    ELBO trace, the epoch of each value and the stored local ``sums`` (under
    ``sums_keys``) added, and the JSON metadata of its progress (generator, step, epoch,
    flags)."""
    arrays["elbo_trace"] = np.asarray(state.elbo_trace, dtype=np.float64)
    arrays["elbo_iter"] = np.asarray(state.elbo_iter, dtype=np.int64)
    if sums is not None:
        arrays[sums_keys[0]] = np.array([sums.n_rows, sums.scale_mean, sums.scale_log])
        arrays[sums_keys[1]] = sums.factor_log
    meta = {
        "rng": rng_state_json(state.rng),
        "step": state.step,
        "epoch": state.epoch,
        "converged": state.converged,
        "finished": state.finished,
        "held": state.held,
    }
    return arrays, meta


def progress_from_arrays(
    arrays: dict[str, np.ndarray], meta: dict, sums_keys: tuple[str, str], eval_every: int
) -> tuple[dict, ScaleSums | None]:
    """The inverse of `progress_to_arrays`: the state's progress fields as keyword
    arguments, and the stored sums (None if the checkpoint has none); the fit's
    ``eval_every`` derives the epochs of the ELBO values when the checkpoint predates
    them (`_checkpoint.restored_elbo_iter`)."""
    sums = None
    if sums_keys[0] in arrays:
        n_rows, scale_mean, scale_log = arrays[sums_keys[0]]
        sums = ScaleSums(int(n_rows), float(scale_mean), float(scale_log), arrays[sums_keys[1]])
    epoch = int(meta["epoch"])
    progress = {
        "rng": rng_from_json(meta["rng"]),
        "step": int(meta["step"]),
        "epoch": epoch,
        "elbo_trace": [float(v) for v in arrays["elbo_trace"]],
        "elbo_iter": restored_elbo_iter(arrays, epoch, eval_every),
        "converged": bool(meta["converged"]),
        "held": bool(meta.get("held", False)),  # checkpoints before the hold: not held
        "finished": bool(meta["finished"]),
    }
    return progress, sums


@dataclass
class SVISettings:
    """The knobs shared by the SVI forms (see `VBNMF` for their meaning); ``n_threads``
    is the number of parallel parts of each pass."""

    prior: Prior
    batch_size: int
    tau: float
    kappa: float
    n_epochs: int
    eval_every: int
    tol: float
    local_max_iter: int
    local_tol: float
    n_threads: int = 1
    verbose: bool = False


EpochCallback = Callable[[int, VariationalParams, list[float]], None]
StateHook = Callable[[SVIState], None]


def _check_finite(arrays: dict[str, np.ndarray]) -> None:
    for name, array in arrays.items():
        if array.size and not np.all(np.isfinite(array)):
            raise FloatingPointError(
                f"an SVI step produced non-finite {name}; lower kappa's step (raise tau) or "
                "use a larger batch_size (or, for counts on an extreme scale, far below 1, "
                "fit raw counts: the model is for counts)"
            )


def _blend(params: VariationalParams, tilde: VariationalParams, rho: float) -> VariationalParams:
    """``(1 - rho) theta + rho theta_tilde`` on all four arrays, then a finiteness check."""
    blended = VariationalParams(
        *((1.0 - rho) * old + rho * new for old, new in zip(params.as_tuple(), tilde.as_tuple()))
    )
    _check_finite(dict(zip(("row_shape", "row_rate", "col_shape", "col_rate"), blended.as_tuple())))
    return blended


# SVI stops when this many relative ELBO changes in a row are at most tol: the ELBO moves
# with the minibatch noise, and one small change can be a coincidence (digits, K=10,
# random_state=2: two evaluations 1e-5 apart after 6 epochs, 1.12 % below batch VB).
STOP_RUN = 3


def svi_has_converged(trace, tol: float) -> bool:
    """SVI's stopping rule: the last `STOP_RUN` relative changes of the ELBO ``trace`` are
    each at most ``tol`` (`_model.has_converged` on each pair)."""
    if len(trace) <= STOP_RUN:
        return False
    return all(
        has_converged(trace[i - 1 : i + 1], tol) for i in range(len(trace) - STOP_RUN, len(trace))
    )


def holding(state) -> bool:
    """Whether an SVI fit (``state`` of the matrix or tensor forms) still holds its factor
    shapes at `_model.START_FACTOR_SHAPE`: it started held (``state.held``: a random start
    under the learned prior with shapes to learn) and no evaluation has changed the ELBO
    by at most `_model.HOLD_TOL` (`_model.hold_released`). As in batch VB (docs/model.md,
    "The hold"): learned from the first minibatches, the shapes can take the fit to a far
    poorer optimum (cells whose depths span four orders of magnitude, K = 5: 34 % below
    batch VB, docs/performance.md)."""
    return still_held(state.held, state.elbo_trace)


def stopping_trace(state) -> list[float]:
    """The ELBO values SVI's stopping rule reads: a held fit's from the value that
    released its shapes on (the shapes change after it), as batch VB's rule waits for the
    pass after the release; none while it holds."""
    if not state.held:
        return state.elbo_trace
    released = release_index(state.elbo_trace)
    return [] if released is None else state.elbo_trace[released:]


def end_of_epoch(
    state: SVIState,
    evaluate: Callable[[], float],
    settings: SVISettings,
    callback,
    on_epoch,
    after_evaluation: Callable[[], None] | None = None,
    *,
    verbose: bool = False,
    counted: bool = False,
) -> None:
    """Count the finished epoch (unless ``counted``: `close_owed_epoch`), evaluate the
    ELBO when due (into the trace, with the epoch into ``elbo_iter``; printed with
    ``verbose``), decide convergence, then call ``callback(epoch, params, trace)``,
    ``on_epoch(state)`` (checkpoints: of the evaluated state, the step the evaluation
    gives still to take), and ``after_evaluation()`` (that step) if the ELBO was evaluated
    and the fit goes on. The tensor fit's state and settings (`_tensor.TensorSVIState`,
    `_tensor.TensorSVISettings`) have the same fields and go through here too."""
    if not counted:
        state.epoch += 1
    last_epoch = state.epoch >= settings.n_epochs
    evaluated = state.epoch % settings.eval_every == 0 or last_epoch
    if evaluated:
        state.elbo_trace.append(evaluate())
        state.elbo_iter.append(state.epoch)
        if verbose:
            print(f"epoch {state.epoch:4d}  ELBO {state.elbo_trace[-1]:.10g}", flush=True)
        if svi_has_converged(stopping_trace(state), settings.tol):
            state.converged = True
    state.finished = state.converged or last_epoch
    if callback is not None:
        # A copy: the cells form updates q in place, and a callback may keep what it gets.
        callback(state.epoch, state.params.copy(), state.elbo_trace)
    # Saved before the step its evaluation gives: resumed with n_epochs at this epoch, the
    # fit is returned as evaluated, as the fit of that many epochs ended; with more, it
    # takes that step first (`run_cells_epochs`), as this fit does now.
    if on_epoch is not None:
        on_epoch(state)
    if evaluated and not state.finished and after_evaluation is not None:
        after_evaluation()


def resumed_svi_progress(state: SVIState, settings: SVISettings) -> None:
    """Whether a fit resumed from a checkpoint (``state``, matrix or tensor) under
    ``settings`` is done (``state.finished``): its stored convergence judged again under
    the current ``tol`` (a tighter one goes on); one that ended at ``n_epochs`` goes on
    when resumed with more, and one stopped at exactly ``n_epochs`` before that epoch was
    evaluated still evaluates it (`close_owed_epoch`), as the uninterrupted fit did."""
    state.converged = state.converged and svi_has_converged(stopping_trace(state), settings.tol)
    evaluated = bool(state.elbo_iter) and state.elbo_iter[-1] == state.epoch
    at_end = state.epoch > settings.n_epochs or (state.epoch == settings.n_epochs and evaluated)
    state.finished = state.converged or at_end


def close_owed_epoch(
    state: SVIState, evaluate, settings: SVISettings, callback, on_epoch, *, verbose=False
) -> None:
    """The end of a resumed fit's last epoch, ``n_epochs``, when its checkpoint was saved
    before that epoch was evaluated (by a longer fit, between two evaluations): evaluated
    now (`end_of_epoch`, the epoch counted already), as the uninterrupted fit did."""
    if not state.finished and 0 < state.epoch == settings.n_epochs:
        end_of_epoch(state, evaluate, settings, callback, on_epoch, verbose=verbose, counted=True)


def warn_if_not_converged(
    converged: bool,
    settings: SVISettings,
    epoch: int = 0,
    still_holding: bool = False,
    judged: tuple[int, bool] | None = None,
) -> None:
    """The `ConvergenceWarning` of a fit that ran out of ``n_epochs`` (``still_holding``
    its factor shapes: `holding`, which says so); not of one resumed from a checkpoint of
    more epochs (``epoch``), which is returned as it is and did not stop there
    (`_checkpoint.warn_if_beyond` says so). ``judged`` (`evaluations_judged`): the ELBO
    values the stopping rule read, too few of which no ``tol`` could have stopped on, so
    the warning then advises ``n_epochs`` alone (`too_few_evaluations`)."""
    if not converged and 0 < settings.n_epochs and epoch <= settings.n_epochs:
        untestable = None
        if judged is not None and judged[0] <= STOP_RUN:
            untestable = too_few_evaluations(*judged, settings.eval_every)
        warn_not_converged("n_epochs", settings.n_epochs, settings.tol, still_holding, untestable)


def evaluations_judged(state) -> tuple[int, bool]:
    """For `warn_if_not_converged`: how many ELBO values SVI's stopping rule read
    (`stopping_trace`), and whether they are those since the hold's release (``state``
    started held)."""
    return len(stopping_trace(state)), state.held


def too_few_evaluations(n_values: int, since_release: bool, eval_every: int) -> str:
    """Why a fit that ended with ``n_values`` ELBO evaluations for its stopping rule (at
    most `STOP_RUN`) could not have stopped, whatever ``tol``: the rule reads `STOP_RUN`
    relative changes, which take one evaluation more. "raise n_epochs or tol" advised a
    ``tol`` that could not have stopped it (3 epochs at tol=1e9 still ran out)."""
    since = " since its factor shapes were released" if since_release else ""
    every = "" if eval_every == 1 else f" (every eval_every={eval_every} epochs and at the last)"
    return (
        f"with {counted(n_values, 'ELBO evaluation')}{since}{every}; it "
        f"stops on {STOP_RUN} relative changes in a row of at most tol, which take "
        f"{STOP_RUN + 1} evaluations, so no tol could have stopped it"
    )


# -- minibatches of nonzeros --------------------------------------------------------------
def init_nonzeros_state(
    shape, n_components: int, total_count: float, entropy: int, dtype, start: int = 0
) -> SVIState:
    """The random start of `_model.random_start` and the minibatch generator."""
    params = random_start(shape, n_components, total_count, entropy, dtype, start)
    return SVIState(params, minibatch_generator(entropy, start))


def nonzero_minibatch(data: CountData, positions: np.ndarray) -> CountData:
    """The nonzeros at sorted ``positions`` of ``data``'s CSR, as a `CountData` of the
    same shape and major axis (absent major rows are empty)."""
    n_major = data.shape[data.major]
    major_of = np.searchsorted(data.indptr, positions, side="right") - 1
    indptr = np.zeros(n_major + 1, dtype=np.int64)
    np.cumsum(np.bincount(major_of, minlength=n_major), out=indptr[1:])
    counts = data.counts[positions]
    return CountData(
        shape=data.shape,
        major=data.major,
        indptr=indptr,
        indices=data.indices[positions],
        counts=counts,
    )


def svi_step_nonzeros(
    data: CountData,
    minibatch: CountData,
    params: VariationalParams,
    rho: float,
    form: str,
    prior: Prior,
    n_parts: int = 1,
) -> VariationalParams:
    """One step of the ``"nonzeros"`` or ``"abe-shimamura"`` form from a minibatch.

    ``rho`` is the blend weight (for ``"abe-shimamura"`` the caller passes
    ``(S / N1) rho_t``).
    """
    row_stat, col_stat, _ = shape_statistics(minibatch, params, n_parts)
    if form == "nonzeros":
        scale = data.nnz / minibatch.nnz
        tilde = global_step(params, scale * row_stat, scale * col_stat, prior)
    elif form == "abe-shimamura":
        n_rows, n_cols = data.shape
        fraction = minibatch.nnz / (float(n_rows) * float(n_cols))
        tilde = global_step(params, row_stat, col_stat, prior, rate_scale=fraction)
    else:
        raise ValueError(f"unknown nonzero SVI form {form!r}")
    return _blend(params, tilde, rho)


def fit_svi_nonzeros(
    data: CountData,
    state: SVIState,
    settings: SVISettings,
    *,
    form: str,
    callback: EpochCallback | None = None,
    on_epoch: StateHook | None = None,
) -> SVIState:
    """SVI over minibatches of ``settings.batch_size`` nonzeros from ``state`` (a fresh
    start or a checkpoint) until convergence or ``n_epochs``; returns the final state.

    ``callback(epoch, params, elbo_trace)`` and ``on_epoch(state)`` run after every epoch.
    """
    n_nonzeros = data.nnz
    index_dtype = np.int32 if n_nonzeros < 2**31 else np.int64
    batch_size = min(settings.batch_size, max(n_nonzeros, 1))  # no nonzeros: no steps

    def evaluate() -> float:
        return elbo(data, state.params, settings.prior, settings.n_threads)

    n_steps = steps_per_epoch(n_nonzeros, batch_size)
    close_owed_epoch(state, evaluate, settings, callback, on_epoch, verbose=settings.verbose)
    while not state.finished and state.epoch < settings.n_epochs:
        order = np.arange(n_nonzeros, dtype=index_dtype)
        state.rng.shuffle(order)
        for start in range(0, n_nonzeros, batch_size):
            positions = np.sort(order[start : start + batch_size])
            minibatch = nonzero_minibatch(data, positions)
            state.step += 1
            rho = learning_rate(state.step, settings.tau, settings.kappa, n_steps)
            if form == "abe-shimamura":
                rho *= minibatch.nnz / n_nonzeros
            state.params = svi_step_nonzeros(
                data, minibatch, state.params, rho, form, settings.prior, settings.n_threads
            )
        del order
        end_of_epoch(state, evaluate, settings, callback, on_epoch, verbose=settings.verbose)
    warn_if_not_converged(state.converged, settings, state.epoch, judged=evaluations_judged(state))
    return state


def refuse_no_nonzeros(nnz: int, form: str, local_form: str) -> None:
    """A `ValueError` for an SVI form over minibatches of nonzeros on data without one: it
    takes no step, and its random start read as converged (on a 6 x 5 matrix of zeros an
    ELBO of -290 against batch VB's -16)."""
    if nnz == 0:
        raise ValueError(
            f"the counts hold no nonzero, which svi_form={form!r} samples its minibatches "
            f"from: fit them with solver='batch' or svi_form={local_form!r}"
        )


# -- minibatches of cells -----------------------------------------------------------------
@dataclass
class CountScan:
    """One validating pass over a matrix read in row blocks: the total count, every row's
    and column's total (the learned prior's start uses them), and the data's fingerprint
    (`_validation.combine_fingerprints`; checkpoints record it)."""

    total: float
    row_totals: np.ndarray
    col_totals: np.ndarray
    fingerprint: str
    # the nonzero counts (repeats summed, stored zeros not counted, as the fingerprint
    # counts them): what checkpoints record, whichever way the same counts are stored
    nnz: int | None = None


def nonzero_count(csr: sp.csr_array) -> int:
    """The nonzero counts of ``csr`` once repeated entries are summed: stored zeros, and
    repeats that sum to one entry, do not count."""
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()
    return int(np.count_nonzero(csr.data))


def scan_blocks(
    blocks: Iterable[tuple[int, sp.csr_array]], shape, name: str = "X", fit_dtype=np.float64
) -> CountScan:
    """Validate every count of the row blocks ``(first_row, block)`` of ``name``, a matrix
    of ``shape`` (one streaming pass), for a fit of ``fit_dtype``, and total them. Warns
    once (`NonCountWarning`, naming ``name``) if any count is not an integer."""
    non_integer, fingerprints, nnz = False, [], 0
    row_totals, col_totals = np.zeros(shape[0]), np.zeros(shape[1])
    for start, block in blocks:
        block_name = f"{name} (rows {start}..{start + block.shape[0] - 1})"
        found = checked_counts(
            block, name=block_name, fit_dtype=fit_dtype, first_row=start, fingerprint=True
        )
        checked = sp.csr_array(found.matrix)
        fingerprints.append(found.fingerprint)
        nnz += nonzero_count(checked)
        row_totals[start : start + block.shape[0]] = checked.sum(axis=1)
        col_totals += np.bincount(checked.indices, checked.data, minlength=shape[1])
        non_integer = non_integer or found.non_integer
    if non_integer:
        warn_non_counts(name)  # the file's name, as the errors of its blocks
    fingerprint = combine_fingerprints(*fingerprints)
    return CountScan(float(row_totals.sum()), row_totals, col_totals, fingerprint, nnz)


def init_cells_state(
    shape,
    n_components: int,
    total_count: float,
    entropy: int,
    prior: Prior,
    dtype,
    start: int = 0,
    totals: tuple[np.ndarray, np.ndarray] | None = None,
) -> SVIState:
    """The gene (column) side drawn as `_model.random_start` draws it; the cell side where
    `_model.fit_rows` starts (under the learned prior: q(xi) at the prior mean b' of
    `_model.learned_start_scale`, which needs the row and column ``totals``, and its
    factor shapes held: `holding`); the minibatch generator."""
    n_rows, n_cols = shape
    col_shape = random_shapes(entropy, 1, 0, n_cols, n_components, dtype, start)
    row_shape = local_start_shape(prior, n_rows, n_components, dtype)
    if not isinstance(prior, HierarchicalPrior):
        rate = start_rate(shape, total_count, n_components, dtype)
        row_rate = side_rate(prior, (col_shape / rate).sum(axis=0), dtype)
        params = VariationalParams(row_shape, row_rate, col_shape, rate)
        return SVIState(params, minibatch_generator(entropy, start))
    row_totals, col_totals = totals
    col_rate = learned_start_rates(col_totals, total_count, n_components, dtype)
    col_scale = learned_start_scale(col_shape, col_rate, col_totals, total_count, prior)
    template = start_scale_template(totals_summary(row_totals), total_count, n_components, prior)
    q_shape = np.full(n_rows, template.prior_shape + template.factor_shape.sum())
    row_scale = template.with_q(q_shape, q_shape / template.prior_mean)
    row_rate = (row_scale.mean[:, None] + (col_shape / col_rate).sum(axis=0)).astype(dtype)
    params = VariationalParams(row_shape, row_rate, col_shape, col_rate, row_scale, col_scale)
    state = SVIState(params, minibatch_generator(entropy, start))
    state.cell_sums = scale_sums(row_shape, row_rate, row_scale)
    state.held = held_prior(prior) is not None
    return state


def local_fit(
    block: sp.csr_array,
    col_shape,
    col_rate,
    settings: SVISettings,
    init_shape=None,
    row_scale: ScaleState | None = None,
):
    """Cell factors of ``block`` at their optimum given the gene side (as `transform`,
    from ``init_shape`` if given; under the learned prior with ``row_scale``'s q(xi) and
    hyperparameters), and the pass statistics under them:
    ``(row_shape, row_rate, col_stat, data_term, row_scale)``."""
    data = as_count_data(block, owned=True)  # one index dtype for every block
    rows = fit_rows(
        data,
        col_shape,
        col_rate,
        settings.prior,
        max_iter=settings.local_max_iter,
        tol=settings.local_tol,
        init_shape=init_shape,
        row_scale=row_scale,
    )
    local = VariationalParams(rows.shape, rows.rate, col_shape, col_rate)
    _, col_stat, data_term = shape_statistics(data, local, settings.n_threads)
    return rows.shape, rows.rate, col_stat, data_term, rows.scale


def row_subset(params: VariationalParams, rows) -> tuple[np.ndarray, ScaleState | None]:
    """The stored shapes of ``rows`` and, under the learned prior, their scales (q(xi) of
    those rows with the side's hyperparameters): where their next local fit starts."""
    scale = params.row_scale
    if scale is not None:
        scale = scale.with_q(scale.shape[rows], scale.rate[rows])
    return params.row_shape[rows], scale


def evaluate_rows(
    blocks: Iterable[tuple[int, sp.csr_array]],
    start: VariationalParams,
    settings: SVISettings,
) -> tuple[ElboTerms, VariationalParams, ScaleSums | None]:
    """The rows' ELBO terms with every row at its optimum given the gene side of
    ``start``, from the row blocks ``(first_row, block)`` (consecutive, covering the rows of
    ``start``, where each row's fit starts); returns ``(terms, q with those rows, the rows'
    `ScaleSums` under the learned prior, the gene side's statistic sum_i x phi from them,
    genes x K float64)``.

    The ELBO decomposes over rows once the gene side is fixed, so each block contributes
    its data term, its ``sum_i E[z_i]`` and its KL; `ElboTerms.with_cols` completes them.
    """
    col_shape, col_rate = start.col_shape, start.col_rate
    learned = start.row_scale is not None
    row_shape_all = np.empty_like(start.row_shape, dtype=col_shape.dtype)
    row_rate_all = np.empty_like(row_shape_all) if learned else None
    row_scale = start.row_scale.copy() if learned else None
    terms = ElboTerms(0.0, np.zeros(col_shape.shape[1]), 0.0)
    sums = None
    col_stat = np.zeros(col_shape.shape)
    row_rate = start.row_rate
    for first, block in blocks:
        rows = slice(first, first + block.shape[0])
        init_shape, init_scale = row_subset(start, rows)
        row_shape, row_rate, block_stat, data_term, scale = local_fit(
            block, col_shape, col_rate, settings, init_shape, init_scale
        )
        col_stat += block_stat
        row_shape_all[rows] = row_shape
        terms = terms + ElboTerms(
            data_term, *side_terms(row_shape, row_rate, settings.prior, scale)
        )
        if learned:
            row_rate_all[rows] = row_rate
            row_scale.shape[rows], row_scale.rate[rows] = scale.shape, scale.rate
            block_sums = scale_sums(row_shape, row_rate, scale)
            sums = block_sums if sums is None else sums + block_sums
    rows_rate = row_rate_all if learned else row_rate
    fitted = VariationalParams(
        row_shape_all, rows_rate, col_shape, col_rate, row_scale, start.col_scale
    )
    return terms, fitted, sums, col_stat


def step_cols(
    col_shape: np.ndarray,
    col_rate: np.ndarray,
    col_stat: np.ndarray,
    row_mean_sum: np.ndarray,
    scale: float,
    rho: float,
    prior: Prior,
    col_scale: ScaleState | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The cells form's natural-gradient step on the gene side: the model's update from a
    minibatch's statistics scaled by ``scale`` = C / |batch| (under the learned prior with
    the genes' scales ``col_scale``), blended in with weight ``rho``; raises
    `FloatingPointError` if the result is not finite."""
    dtype = col_shape.dtype
    if isinstance(prior, HierarchicalPrior):
        tilde_shape = col_scale.factor_shape + scale * col_stat
        tilde_rate = col_scale.mean[:, None] + scale * row_mean_sum
    else:
        tilde_shape, tilde_rate = update_side(prior, scale * col_stat, scale * row_mean_sum)
    shape = ((1.0 - rho) * col_shape + rho * tilde_shape).astype(dtype, copy=False)
    rate = ((1.0 - rho) * col_rate + rho * tilde_rate).astype(dtype, copy=False)
    _check_finite({"col_shape": shape, "col_rate": rate})
    return shape, rate


def svi_step_cells(
    block: sp.csr_array,
    n_rows: int,
    params: VariationalParams,
    rho: float,
    settings: SVISettings,
    cells: np.ndarray | None = None,
    state: SVIState | None = None,
) -> VariationalParams:
    """One cells-form step: local fit of ``block``'s cells, then `step_cols` with the
    batch's statistics scaled by C / |batch|.

    With ``cells`` (the block's row numbers) the local fit starts from the stored row side
    of those cells and its optimum is written back there, in place; without, it starts
    from scratch and the row side is passed through unchanged. Under the learned prior
    (``cells`` and ``state`` needed) `learned_global_update` follows."""
    col_shape, col_rate = params.col_shape, params.col_rate
    if cells is None:
        init_shape, init_scale = None, None
    else:
        init_shape, init_scale = row_subset(params, cells)
    row_shape, row_rate, col_stat, _, row_scale = local_fit(
        block, col_shape, col_rate, settings, init_shape, init_scale
    )
    new_shape, new_rate = step_cols(
        col_shape,
        col_rate,
        col_stat,
        (row_shape / row_rate).sum(axis=0),
        n_rows / block.shape[0],
        rho,
        settings.prior,
        params.col_scale,
    )
    if params.row_scale is None:
        if cells is not None:
            params.row_shape[cells] = row_shape
    else:
        store_rows(state, cells, row_shape, row_rate, row_scale)
    return set_gene_side(params, new_shape, new_rate, settings.prior, state)


def full_data_gene_step(
    state: SVIState, col_stat: np.ndarray, row_mean_sum: np.ndarray, prior: Prior
) -> None:
    """The gene side's exact coordinate-ascent step given every cell at its optimum, from
    an evaluation's statistics (``col_stat`` = sum_i x phi, ``row_mean_sum`` = sum_i
    E[z_i], which the evaluation computes anyway): `step_cols` with scale 1 and weight 1,
    then `set_gene_side`. Batch VB's gene update, free once an epoch; it clears the
    minibatch steps' noise from the gene side."""
    params = state.params
    shape, rate = step_cols(
        params.col_shape, params.col_rate, col_stat, row_mean_sum, 1.0, 1.0, prior, params.col_scale
    )
    state.params = set_gene_side(params, shape, rate, prior, state)


def set_gene_side(
    params: VariationalParams,
    col_shape: np.ndarray,
    col_rate: np.ndarray,
    prior: Prior,
    state: SVIState | None = None,
) -> VariationalParams:
    """q after a step of the gene side (`step_cols`): ``params`` with the new gene side;
    under the learned prior (``state`` needed, whose ``params`` these are, updated in
    place) `learned_global_update` follows. Every cells-form step ends here: a minibatch's
    (`svi_step_cells`, Dask's), an evaluation's (`full_data_gene_step`)."""
    if params.row_scale is None:
        return VariationalParams(params.row_shape, params.row_rate, col_shape, col_rate)
    params.col_shape, params.col_rate = col_shape, col_rate
    return learned_global_update(state, prior)


def store_rows(state: SVIState, cells, row_shape, row_rate, row_scale: ScaleState) -> None:
    """Write a minibatch's local optimum into the learned-prior state, keeping the sums
    over all cells that their hyperparameters are learned from up to date."""
    params = state.params
    stored_shape, stored_scale = row_subset(params, cells)
    state.cell_sums = (
        state.cell_sums
        - scale_sums(stored_shape, params.row_rate[cells], stored_scale)
        + scale_sums(row_shape, row_rate, row_scale)
    )
    params.row_shape[cells], params.row_rate[cells] = row_shape, row_rate
    params.row_scale.shape[cells], params.row_scale.rate[cells] = row_scale.shape, row_scale.rate


def relearn_global_side(
    shape: np.ndarray, rate: np.ndarray, scale: ScaleState, prior: HierarchicalPrior
) -> tuple[np.ndarray, np.ndarray, ScaleState]:
    """A global side after its blended step under the learned prior: q of its scales at the
    optimum, its hyperparameters learned, and q of its factors at the optimum given the new
    prior and the blended data statistics.

    q is the prior's part plus the blended statistics, ``c_l + S`` and ``E[eta_j] + R``;
    only S and R are noisy estimates that the blend averages. The prior's part is exact, so
    q takes the newly learned one at once instead of blending it in with weight rho as well
    (which made the hyperparameters trail q by ~1/rho steps)."""
    # S and R: q less the prior part it was built with. Sums of counts and means, they are
    # >= 0; only the start's share (weight prod(1 - rho_t), from a start not of this form)
    # can make them negative, and it is dropped.
    data_shape = np.maximum(shape - scale.factor_shape, 0.0)
    data_rate = np.maximum(rate - scale.mean[:, None], 0.0)
    scale = scale_optimum(shape, rate, scale)
    scale = learn_hyperparameters(scale_sums(shape, rate, scale), scale, prior)
    shape = (scale.factor_shape + data_shape).astype(shape.dtype, copy=False)
    rate = (scale.mean[:, None] + data_rate).astype(rate.dtype, copy=False)
    return shape, rate, scale


def learned_global_update(state: SVIState, prior: HierarchicalPrior) -> VariationalParams:
    """After the gene side's step under the learned prior: the gene side relearned
    (`relearn_global_side`), the cells' hyperparameters learned from every cell's stored
    local optimum (the factor shapes held while `holding`), then the gauge
    (`_model.fix_gauge`), whose rescaling of the cells is carried into the stored sums."""
    if holding(state):
        prior = held_prior(prior)
    params = state.params
    col_shape, col_rate, col_scale = relearn_global_side(
        params.col_shape, params.col_rate, params.col_scale, prior
    )
    row_scale = learn_hyperparameters(state.cell_sums, params.row_scale, prior)
    learned = VariationalParams(
        params.row_shape, params.row_rate, col_shape, col_rate, row_scale, col_scale
    )
    state.cell_sums = state.cell_sums.gauged(gauge_factor(learned))
    state.params = fix_gauge(learned)
    return state.params


def run_cells_epochs(
    state: SVIState,
    settings: SVISettings,
    n_rows: int,
    step: Callable[[np.ndarray, float], None],
    evaluate: Callable[[], tuple[float, tuple[np.ndarray, np.ndarray]]],
    *,
    callback: EpochCallback | None = None,
    on_epoch: StateHook | None = None,
) -> SVIState:
    """The cells form's loop, whatever holds the data: each epoch a fresh permutation of
    the rows from ``state.rng`` cut into minibatches of ``settings.batch_size``;
    ``step(cells, rho)`` moves ``state.params`` by one minibatch (sorted row numbers) with
    weight ``rho``; ``evaluate()`` returns the full ELBO with every row at its optimum,
    leaves those rows in ``state.params`` and returns with the ELBO the gene side's
    statistics under them, from which a fit that goes on takes `full_data_gene_step`."""
    batch_size = min(settings.batch_size, n_rows)
    n_steps = steps_per_epoch(n_rows, batch_size)

    def evaluate_and_hold() -> float:
        value, state.gene_statistics = evaluate()
        return value

    def gene_step() -> None:
        full_data_gene_step(state, *state.gene_statistics, settings.prior)
        state.gene_statistics = None

    if state.gene_statistics is not None and not state.finished:  # resumed with more epochs
        gene_step()
    close_owed_epoch(
        state, evaluate_and_hold, settings, callback, on_epoch, verbose=settings.verbose
    )

    while not state.finished and state.epoch < settings.n_epochs:
        order = state.rng.permutation(n_rows)
        for start in range(0, n_rows, batch_size):
            state.step += 1
            rho = learning_rate(state.step, settings.tau, settings.kappa, n_steps)
            step(np.sort(order[start : start + batch_size]), rho)
        end_of_epoch(
            state,
            evaluate_and_hold,
            settings,
            callback,
            on_epoch,
            gene_step,
            verbose=settings.verbose,
        )
    warn_if_not_converged(
        state.converged, settings, state.epoch, holding(state), evaluations_judged(state)
    )
    return state


def fit_svi_cells(
    source,
    state: SVIState,
    settings: SVISettings,
    *,
    callback: EpochCallback | None = None,
    on_epoch: StateHook | None = None,
) -> SVIState:
    """SVI over minibatches of cells read from ``source`` (a `vbsnmf.io` cell source:
    ``n_cells``, ``read_rows``, ``iter_blocks``), from ``state`` (`init_cells_state` or a
    checkpoint); returns the final state, whose row side is the last evaluation's (every
    cell at its optimum given the final gene side). ``state.params.row_shape`` is updated
    in place."""
    n_rows = source.n_cells

    def step(cells: np.ndarray, rho: float) -> None:
        block = source.read_rows(cells)
        state.params = svi_step_cells(block, n_rows, state.params, rho, settings, cells, state)

    def evaluate() -> tuple[float, tuple[np.ndarray, np.ndarray]]:
        terms, state.params, sums, col_stat = evaluate_rows(
            source.iter_blocks(EVAL_BLOCK_ROWS), state.params, settings
        )
        if sums is not None:  # exact again, whatever rounding the steps accumulated
            state.cell_sums = sums
        params = state.params
        value = terms.with_cols(
            params.col_shape, params.col_rate, settings.prior, params.col_scale
        ).value()
        return value, (col_stat, terms.row_mean_sum)

    return run_cells_epochs(
        state, settings, n_rows, step, evaluate, callback=callback, on_epoch=on_epoch
    )
