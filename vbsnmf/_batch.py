"""Batch variational Bayes: coordinate ascent on all the data, in model.md's order.

A loop over the model's steps (`_model`): one pass over the nonzeros gives the statistics
for the update and, for free, the ELBO of the q it was computed under, so every entry of the
trace is the exact ELBO of a q the fit actually held.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import _kernels
from ._checkpoint import BATCH_TRACE_SLACK, CheckpointError, restored_elbo_iter
from ._data import CountData
from ._model import (
    HOLD_TOL,
    FactoredRate,
    FitResult,
    Mask,
    Prior,
    VariationalParams,
    compact,
    expanded,
    finite_elbo,
    global_step,
    has_converged,
    held_prior,
    plain_stop,
    quiet_convergence,
    scored_statistics,
    still_held,
    warn_not_converged,
)

IterationCallback = Callable[[int, VariationalParams, list[float]], None]


def fit_batch(
    data: CountData,
    start: VariationalParams,
    prior: Prior,
    *,
    max_iter: int,
    tol: float,
    n_parts: int = 1,
    elbo_trace: list[float] | None = None,
    elbo_iter: list[int] | None = None,
    callback: IterationCallback | None = None,
    verbose: bool = False,
    mask: Mask | None = None,
    hold_shapes: bool = False,
) -> FitResult:
    """Batch coordinate ascent from ``start`` until the relative ELBO change is below
    ``tol`` or ``max_iter`` iterations are done (then a `ConvergenceWarning`): `plain_ascent`
    on the matrix model's pass and step (`matrix_model`).

    ``n_parts`` is the number of parallel parts of the pass (normally the thread count);
    ``mask``: entries of X that were not observed (dropped from ``data`` by the caller);
    ``elbo_trace``, ``elbo_iter``, ``callback``, ``verbose`` and ``hold_shapes`` are
    `plain_ascent`'s.
    """
    scored, step = matrix_model(data, prior, n_parts, mask)
    params, trace, iters, converged = plain_ascent(
        start, scored, step, prior, max_iter=max_iter, tol=tol, elbo_trace=elbo_trace,
        elbo_iter=elbo_iter, hold_shapes=hold_shapes, callback=callback, verbose=verbose,
    )  # fmt: skip
    return FitResult(params, *trace_arrays(trace, iters), len(trace), converged)


def trace_arrays(trace: list[float], iters: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A fit's ELBO trace and the iteration of each value as a result holds them: float64
    and int64 arrays."""
    return np.asarray(trace, dtype=np.float64), np.asarray(iters, dtype=np.int64)


def matrix_model(data: CountData, prior: Prior, n_parts: int = 1, mask: Mask | None = None):
    """The matrix model's ``(scored, step)`` for `plain_ascent` and `squarem`: one pass
    (`_model.scored_statistics`: the statistics and the exact ELBO of its q) and the
    coordinate-ascent step they give (`_model.global_step`)."""

    def scored(params: VariationalParams):
        row_stat, col_stat, value = scored_statistics(data, params, prior, n_parts, mask)
        return (row_stat, col_stat), value

    def step(params: VariationalParams, statistics, step_prior: Prior) -> VariationalParams:
        return global_step(params, *statistics, step_prior, mask=mask)

    return scored, step


def check_resumed(value: float, trace) -> None:
    """The first pass of a fit resumed with ``trace`` scores the stored q (plain ascent) or
    its plain step (SQUAREM): by coordinate ascent at least the trace's last ELBO. Lower,
    the stored parameters are not those the trace was recorded from (a damaged
    checkpoint), and going on would put a decrease into the trace. Lower by no more than
    the trace itself fell (rounding, at counts near the dtype's limit:
    `_checkpoint.rounding_of_elbo`) is that rounding again."""
    last = trace[-1]
    fallen = max(float(-np.min(np.diff(trace), initial=0.0)), 0.0)
    if not value >= last - (BATCH_TRACE_SLACK * abs(last) + fallen):
        raise CheckpointError(
            f"the checkpoint is damaged: its parameters score an ELBO of {value:.10g}, below "
            f"the {last:.10g} its trace ends with; remove it to start over"
        )


def plain_ascent(
    start,
    scored: Callable[[object], tuple[object, float]],
    step: Callable[[object, object, Prior], object],
    prior: Prior,
    *,
    max_iter: int,
    tol: float,
    elbo_trace: list[float] | None = None,
    elbo_iter: list[int] | None = None,
    hold_shapes: bool = False,
    callback: Callable | None = None,
    verbose: bool = False,
) -> tuple[object, list[float], list[int], bool]:
    """Coordinate ascent from ``start`` (the model's ``scored`` and ``step`` as `squarem`
    takes them) until the relative ELBO change is below ``tol`` or ``max_iter`` steps are
    done (then a `ConvergenceWarning`); returns the last q scored, its trace, the iteration
    of each trace value (the steps applied to its q: value i is iteration i's) and whether
    it converged. The loop of the matrix, the tensor and the Dask batch fits.

    ``elbo_trace`` continues a previous fit's trace (resume from a checkpoint of the
    parameters after ``len(elbo_trace)`` iterations), ``elbo_iter`` its iterations;
    ``callback(n_iter, q, trace)`` runs after every iteration with the ELBO of ``q``
    already in ``trace``; ``hold_shapes``: a random start's hold (`_model.held_prior`):
    the learned prior's factor shapes stay as they are until a pass changes the ELBO by at
    most `_model.HOLD_TOL` (the stopping rule applies from the pass after).
    """
    params = start
    trace = list(elbo_trace or [])
    iters = list(elbo_iter or [])
    n_done = len(trace)  # iterations already applied to ``start``; its ELBO is trace[-1]
    held = held_prior(prior) if still_held(hold_shapes, trace) else None
    converged = False
    resumed = bool(trace)  # the first pass scores the q whose ELBO is trace[-1]
    while True:
        statistics, value = scored(params)
        if resumed:
            check_resumed(value, trace)
            resumed = False
        if n_done > len(trace):
            trace.append(finite_elbo(value))
            iters.append(n_done)
            if verbose:
                print(f"iteration {n_done:4d}  ELBO {trace[-1]:.10g}", flush=True)
            if callback is not None:
                callback(n_done, params, trace)
            held, converged = plain_stop(trace, tol, held)
            if converged:
                break
        if n_done >= max_iter:
            break
        params = step(params, statistics, held or prior)
        n_done += 1
    if not converged and max_iter > 0:
        warn_not_converged("max_iter", max_iter, tol, holding=held is not None)
    return params, trace, iters, converged


# -- SQUAREM acceleration -------------------------------------------------------------------
# The R package SQUAREM's defaults (Varadhan and Roland 2008): the step bound starts at 1
# and is multiplied by 4 when the bound was used and the step kept, divided by 4 when a step
# is refused. Nothing here is tuned to a data set.
_STEP_MAX_START = 1.0
_STEP_GROWTH = 4.0


class Extrapolable(Protocol):
    """What `squarem` needs of a q (`_model.VariationalParams`, `_tensor.TensorParams`):
    its positive arrays, the first ``len(as_tuple())`` of them its factor arrays (fresh
    from each step, so an extrapolation may be written over them), and the q they make."""

    def as_tuple(self) -> tuple[np.ndarray, ...]: ...

    def positive_arrays(self) -> list[np.ndarray]: ...

    def with_positive_arrays(self, arrays: list[np.ndarray]) -> Extrapolable: ...


@dataclass
class AcceleratedState:
    """Where an accelerated fit stands between two SQUAREM cycles, enough to continue it
    bitwise (checkpoints): the next q to score, the ELBO of the q whose plain step it is,
    the step bound, the trace and the pass that scored each of its values, the passes
    done, the last q scored (the result so far), and whether the factor shapes are still
    held (`fit_batch`'s ``hold_shapes``)."""

    current: Extrapolable
    previous: float | None
    step_max: float
    trace: list[float]
    elbo_iter: list[int]
    n_passes: int
    kept: Extrapolable
    converged: bool = False
    holding: bool = False

    def save(
        self,
        checkpointer,
        params_to_arrays: Callable,
        finished: bool = False,
        more=None,
        due: bool = False,
    ) -> None:
        """Write the state by ``checkpointer`` (`_checkpoint.Checkpointer`, at its interval
        of passes; ``finished``: the fit's last save, and ``due``: one its caller found due,
        written whatever the interval), the q by ``params_to_arrays``; ``more``: metadata
        to record with it."""
        arrays, meta = self.to_arrays(params_to_arrays)
        meta = {**meta, **(more or {}), "finished": finished}
        checkpointer.save(self.n_passes, arrays, meta, force=finished or due)

    def to_arrays(self, params_to_arrays: Callable) -> tuple[dict[str, np.ndarray], dict]:
        """The state as a checkpoint's arrays (``current_`` and ``kept_`` q, each by
        ``params_to_arrays``, the trace and its passes) and its counters."""
        arrays = {f"current_{k}": v for k, v in params_to_arrays(self.current).items()}
        arrays.update({f"kept_{k}": v for k, v in params_to_arrays(self.kept).items()})
        arrays["elbo_trace"], arrays["elbo_iter"] = trace_arrays(self.trace, self.elbo_iter)
        meta = {
            "previous": self.previous,
            "step_max": self.step_max,
            "n_passes": self.n_passes,
            "converged": self.converged,
            "holding": self.holding,
        }
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays, meta: dict, params_from_arrays: Callable) -> AcceleratedState:
        """The inverse of `to_arrays` (``params_from_arrays`` inverts its ``params_to_arrays``)."""

        def part(prefix):
            return params_from_arrays(
                {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            )

        n_passes = int(meta["n_passes"])
        return cls(
            part("current_"),
            meta["previous"],
            float(meta["step_max"]),
            [float(v) for v in arrays["elbo_trace"]],
            restored_elbo_iter(arrays, n_passes),
            n_passes,
            part("kept_"),
            bool(meta["converged"]),
            bool(meta.get("holding", False)),  # checkpoints before the hold have none
        )

    def outcome(self) -> tuple[Extrapolable, np.ndarray, np.ndarray, int, bool]:
        """The fit so far, as a result holds it: the last q kept, its ELBO trace and the
        pass of each value, the passes and whether it converged."""
        return self.kept, *trace_arrays(self.trace, self.elbo_iter), self.n_passes, self.converged


# The most passes a SQUAREM cycle takes: its two plain steps' and its candidate's.
CYCLE_PASSES = 3


class AcceleratedSaves:
    """The checkpoint saves of an accelerated fit of ``max_iter`` passes: called as
    `squarem`'s ``on_cycle`` (the state at the start of every ``checkpoint_every``-th
    cycle, by ``checkpointer``, the q by ``params_to_arrays``), and `at_end`.

    A cycle that ``max_iter`` may cut short stops between its plain steps, where no saved
    state can go on with the cycle: a resume with a larger ``max_iter`` began a new cycle
    there, and its fit was not the longer fit's. That cycle's start is saved instead, the
    fit's last save unless it converged, with the ``max_iter`` the fit ran to, and a resume
    runs the cycle again, pass for pass, to at least that ``max_iter`` (``self.max_iter``,
    from ``stored``, the checkpoint's metadata): a smaller one returns the stored fit as
    it was returned (`warn_if_beyond` says so; `replaying` silences the replay's
    `ConvergenceWarning`, which the fit gave).
    """

    def __init__(
        self, checkpointer, params_to_arrays: Callable, max_iter: int, stored: dict | None = None
    ):
        self.checkpointer = checkpointer
        self.params_to_arrays = params_to_arrays
        stopped_at = None if stored is None else stored.get("max_iter")
        self.max_iter = max_iter if stopped_at is None else max(max_iter, stopped_at)
        self._replay = self.max_iter > max_iter
        self._last_cycle_saved = False
        self._next_save = None  # the pass from which a cycle's start is saved

    def replaying(self):
        """The fit's block: without `ConvergenceWarning` when it replays a stored fit to
        the ``max_iter`` that fit ran to, beyond the one asked for."""
        return quiet_convergence(self._replay)

    def __call__(self, state: AcceleratedState) -> None:
        """Save the start of the first cycle ``checkpoint_every`` passes or more after the
        last save (the first: at a multiple of it). Cycles start every three passes, from
        wherever the hold of the factor shapes released: saved only at a multiple of
        ``checkpoint_every``, a fit saved every 15 passes for 5, and for 3 none from the
        hold's end to the fit's when it released off a multiple of 3."""
        every = self.checkpointer.every
        if self._next_save is None:
            self._next_save = -(-state.n_passes // every) * every
        due = state.n_passes >= self._next_save
        if due:
            self._next_save = state.n_passes + every
        last = self.max_iter - state.n_passes < CYCLE_PASSES
        more = {"max_iter": self.max_iter} if last else None
        if due or last:
            state.save(self.checkpointer, self.params_to_arrays, last, more, due=due)
        self._last_cycle_saved = last

    def at_end(self, state: AcceleratedState) -> None:
        """The fit's last save: its end when it converged or ran no cycle that
        ``max_iter`` may have cut short (the last cycle's start is on disk then)."""
        if state.converged or not self._last_cycle_saved:
            state.save(self.checkpointer, self.params_to_arrays, finished=True)


def start_accelerated(start: Extrapolable, hold_shapes: bool = False) -> AcceleratedState:
    return AcceleratedState(start, None, _STEP_MAX_START, [], [], 0, start, holding=hold_shapes)


def fit_batch_accelerated(
    data: CountData,
    state: AcceleratedState,
    prior: Prior,
    *,
    n_parts: int = 1,
    mask: Mask | None = None,
    **options,
) -> tuple[FitResult, AcceleratedState]:
    """`squarem` on the matrix model: ``fit_batch``'s pass and step (`matrix_model`),
    accelerated; ``options`` are `squarem`'s (``max_iter``, ``tol``, ``callback``, ...)."""
    model = matrix_model(data, prior, n_parts, mask)
    state = squarem(state, *model, prior, compact=compact, expand=expanded, **options)
    return FitResult(*state.outcome()), state


def squarem(
    state: AcceleratedState,
    scored: Callable[[Extrapolable], tuple[object, float]],
    step: Callable[[Extrapolable, object, Prior], Extrapolable],
    prior: Prior,
    *,
    max_iter: int,
    tol: float,
    callback: Callable | None = None,
    on_cycle: Callable[[AcceleratedState], None] | None = None,
    verbose: bool = False,
    step_length: Callable | None = None,
    extrapolate: Callable | None = None,
    compact: Callable | None = None,
    expand: Callable | None = None,
) -> AcceleratedState:
    """Coordinate ascent accelerated by SQUAREM (Varadhan and Roland 2008, step SqS3),
    with a safeguard that keeps the ELBO trace monotone; ``max_iter`` bounds the passes.

    The model comes in two functions: ``scored(q)``, one pass giving q's statistics and its
    exact ELBO, and ``step(q, statistics, prior)``, the coordinate-ascent step they give;
    a q is `Extrapolable` (the matrix's `_model.VariationalParams`, the tensor's
    `_tensor.TensorParams`). A q held elsewhere (the Dask fit's, its cells on the workers)
    brings its own ``step_length(theta0, theta1, theta2)`` and ``extrapolate(theta0,
    theta1, theta2, s)`` (default: `_step_length`, `_extrapolate_over`). ``compact(q)``:
    the same q in less memory, for theta0 and theta1 while they wait for the extrapolation
    (its arrays made again as the extrapolation, or a refused candidate's step, reads
    them), and ``expand`` its inverse, for the q a fit ends with (default: q as it is;
    `_model.compact`: the learned prior's rates as its step made them).

    A cycle: two plain steps (each one pass, which also scores its input exactly)
    ``theta0 -> theta1 -> theta2``; in log parameters ``r = theta1 - theta0``,
    ``v = theta2 - 2 theta1 + theta0``, ``s = |r| / |v|`` clipped to [1, step bound],
    ``theta' = theta0 + 2 s r + s^2 v``; one pass scores theta' and makes its plain step.
    theta' is kept only if its exact ELBO is at least theta1's; otherwise the fit goes on
    from theta2, the plain path. Every kept q's ELBO goes into the trace (the start's is not,
    as in `fit_batch`), so the trace never decreases, and the pass that scored it into
    ``state.elbo_iter``. The stopping rule is `fit_batch`'s, applied to a q and its plain
    step, so "converged" means the same with and without acceleration, and so does the
    hold of the factor shapes (``state.holding``, released by a plain step).
    ``on_cycle(state)`` runs at the start of every cycle (checkpoints).
    """
    step_length = step_length or _step_length
    extrapolate = extrapolate or _extrapolate_over
    compact = compact or _as_it_is
    expand = expand or _as_it_is
    held = held_prior(prior)
    released_at = None  # the pass that released the hold: not tested by the stopping rule
    resumed = bool(state.trace)  # the first pass scores the plain step of the last kept q
    # A state that converged at another tol (a checkpoint resumed with a tighter one) is
    # judged again: it stopped on the trace's last two ELBOs, a q and its plain step.
    state.converged = state.converged and has_converged(state.trace, tol)

    def score(params, plain: bool = True):
        """One pass: ``params``' statistics and exact ELBO."""
        nonlocal released_at, resumed
        statistics, value = scored(params)
        if resumed:
            check_resumed(value, state.trace)
            resumed = False
        state.n_passes += 1
        # A plain step's pass may release the hold before its own step, as in `fit_batch`.
        if plain and state.holding and state.previous is not None:
            if has_converged([state.previous, value], HOLD_TOL):
                state.holding, released_at = False, state.n_passes
        return statistics, value

    def take_step(params, statistics):
        return step(params, statistics, held if state.holding and held is not None else prior)

    def score_and_step(params):
        """A plain step: the pass, the scored q kept (so the q kept before it is not held
        while the step builds the next), then the step."""
        statistics, value = score(params)
        keep(params, value)
        return take_step(params, statistics)

    def keep(params, value: float, plain: bool = True) -> None:
        """Record a scored q; the stopping rule compares it with the q it is the plain
        step of (not an extrapolated q with the one before it)."""
        if state.previous is not None:
            state.trace.append(finite_elbo(value))
            state.elbo_iter.append(state.n_passes)
            state.kept = params
            if verbose:
                print(f"pass {state.n_passes:4d}  ELBO {value:.10g}", flush=True)
            if callback is not None:
                callback(state.n_passes, params, state.trace)
            stopping = plain and not state.holding and released_at != state.n_passes
            if stopping and has_converged([state.previous, value], tol):
                state.converged = True
        state.previous = value

    while not state.converged and state.n_passes < max_iter:
        if on_cycle is not None:
            on_cycle(state)
        theta0 = state.current
        theta1 = score_and_step(theta0)
        if state.holding:  # plain steps while the shapes are held: `fit_batch`'s path
            state.current = theta1
            continue
        if state.converged or state.n_passes >= max_iter:
            state.current = theta1
            break
        theta0 = _compacted(state, theta0, compact)  # it waits for the extrapolation
        statistics1, value1 = score(theta1)
        keep(theta1, value1)
        theta2 = take_step(theta1, statistics1)
        if state.converged or state.n_passes >= max_iter:
            state.current = theta2
            break
        theta1 = _compacted(state, theta1, compact)
        length = min(max(step_length(theta0, theta1, theta2), 1.0), state.step_max)
        # Every q is a (cells + genes) x K array or four, so the candidate is written over
        # theta2, which a refused candidate's fit takes again from theta1 and its pass's
        # statistics (the same step of the same q, bit for bit), and no name holds a q past
        # its use: theta0 is not held while the candidate's pass runs, nor theta1 while a
        # kept candidate's step builds the next q; a refused candidate takes no step.
        candidate = extrapolate(theta0, theta1, theta2, length)
        state.current = None  # theta0, until the candidate's fate gives the next one
        del theta0, theta2
        accepted = False
        if candidate is not None:
            statistics, value = score(candidate, plain=False)
            if np.isfinite(value) and value >= value1:
                keep(candidate, value, plain=False)
                del theta1, statistics1
                state.current = take_step(candidate, statistics)
                accepted = True
            del statistics
        del candidate
        if accepted:
            if length >= state.step_max:
                state.step_max *= _STEP_GROWTH
        else:  # the plain path: theta2 taken again
            state.current = take_step(theta1, statistics1)
            del theta1, statistics1
            state.step_max = max(1.0, state.step_max / _STEP_GROWTH)
    state.kept, state.current = expand(state.kept), expand(state.current)
    # A checkpoint of more passes than max_iter is returned as it is (`warn_if_beyond` says
    # so); it did not stop at max_iter.
    if not state.converged and 0 < max_iter and state.n_passes <= max_iter:
        warn_not_converged("max_iter", max_iter, tol, holding=state.holding)
    return state


def _as_it_is(q):
    return q


def _compacted(state: AcceleratedState, q, compact: Callable):
    """``compact(q)``, which ``state`` holds instead of q from now on (a callback that kept
    q keeps it whole)."""
    smaller = compact(q)
    if state.current is q:
        state.current = smaller
    if state.kept is q:
        state.kept = smaller
    return smaller


def direction_norms(arrays0, arrays1, arrays2) -> tuple[float, float]:
    """``(|r|^2, |v|^2)`` of SQUAREM's directions in log parameters over three q's lists of
    positive arrays, array by array in their order (`_kernels.squarem_sums`)."""
    r2 = v2 = 0.0
    for x0, x1, x2 in zip(arrays0, arrays1, arrays2):
        blocks = [_kernels.squarem_block_sums(*flat) for flat in _flat_runs(x0, x1, x2)]
        array_r2, array_v2 = _kernels.block_sums_total(np.concatenate(blocks))
        r2 += array_r2
        v2 += array_v2
    return r2, v2


# Entries of a compacted q's rates made at a time (4 MiB of float64): a run of whole
# blocks of the SQUAREM kernels, so that their sums are those of the whole array.
_RUN = 256 * _kernels.SQUAREM_BLOCK


def _flat_runs(x0, x1, x2):
    """The three arrays' entries, flat: whole, or where theta0 or theta1 holds compacted
    rates (`_model.FactoredRate`), in runs of `_RUN` entries made as they are read (not
    two more n x K arrays at once)."""
    flat2 = np.ravel(x2)
    if not isinstance(x0, FactoredRate) and not isinstance(x1, FactoredRate):
        yield np.ravel(x0), np.ravel(x1), flat2
        return
    for start in range(0, max(flat2.shape[0], 1), _RUN):
        stop = min(start + _RUN, flat2.shape[0])
        yield _entries(x0, start, stop), _entries(x1, start, stop), flat2[start:stop]


def _entries(array, start: int, stop: int) -> np.ndarray:
    if isinstance(array, FactoredRate):
        return array.flat_entries(start, stop)
    return np.ravel(array)[start:stop]


def step_from_norms(r2: float, v2: float) -> float:
    """SqS3's step ``|r| / |v|`` (1 when the second difference vanishes)."""
    return float(np.sqrt(r2 / v2)) if v2 > 0 else 1.0


def extrapolate_arrays(arrays0, arrays1, arrays2, step: float, n_overwritten: int = 0):
    """``exp(log x0 + 2 s r + s^2 v)`` of each array, in its dtype and shape; the first
    ``n_overwritten`` written over ``arrays2``'s (their owner must be done with them), the
    rest new. None when an entry is not finite and positive."""
    arrays = []
    for index, (x0, x1, x2) in enumerate(zip(arrays0, arrays1, arrays2)):
        flat2 = np.ravel(x2)  # a view of a contiguous array
        out = flat2 if index < n_overwritten else np.empty_like(flat2)
        start = 0
        for flat0, flat1, run2 in _flat_runs(x0, x1, x2):
            stop = start + run2.shape[0]
            if _kernels.squarem_extrapolate(flat0, flat1, run2, step, out[start:stop]):
                return None
            start = stop
        arrays.append(out.reshape(np.shape(x2)))
    return arrays


def _step_length(theta0, theta1, theta2) -> float:
    """SqS3's step ``|r| / |v|`` in log parameters over the three q's positive arrays."""
    qs = (theta0, theta1, theta2)
    return step_from_norms(*direction_norms(*(q.positive_arrays() for q in qs)))


def _extrapolate_over(theta0, theta1, theta2, step: float) -> Extrapolable | None:
    """SQUAREM's ``theta0 + 2 s r + s^2 v`` in log parameters, as a q of theta2's structure
    and dtype (s = 1 is theta2), written over theta2's arrays of q (its own, fresh from a
    step; the hyperparameters' small arrays are new); None when an entry is not finite and
    positive (the step is then refused without a pass). theta2 is spent either way."""
    arrays = extrapolate_arrays(
        *(q.positive_arrays() for q in (theta0, theta1, theta2)),
        step,
        n_overwritten=len(theta2.as_tuple()),
    )
    return None if arrays is None else theta2.with_positive_arrays(arrays)
