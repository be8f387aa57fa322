"""Stochastic variational Bayes (Hoffman et al. 2013; seed 001), in the three forms of
``docs/model.md``.

All forms take a step on the global parameters from a minibatch and blend it in,

    theta <- (1 - rho_t) theta + rho_t theta_tilde,    rho_t = (t + tau)^(-kappa),

with t = 1, 2, ... counting steps, ``tau >= 0`` and ``kappa in (0.5, 1]``. Epochs run over
a fresh random permutation; the full ELBO is evaluated every ``eval_every`` epochs (one
pass over the data, no extra memory) and the fit stops when its relative change is below
``tol`` or after ``n_epochs``.

- ``"cells"`` (`fit_svi_cells`): minibatches of cells. Each batch's cell factors are
  fitted to convergence with the gene side fixed (`_vb.fit_rows`, the code of
  ``transform``), then the gene side takes a natural-gradient step with the batch's
  statistics scaled by C / |batch|. A cell's local fit starts where its previous one
  (last minibatch or evaluation) ended: the gene side moves little between visits, so
  from the second epoch on a local fit needs a few passes instead of dozens. The data are
  read through a `_stream.CellSource`, so a file on disk is streamed: memory holds the
  batch, the factors and one chunk.
- ``"textbook"`` (`fit_svi_nonzeros`): minibatches of nonzeros, all of q global. updateA on
  the minibatch with its shape statistics scaled by N1 / S, the exact rates (updateB), then
  the blend. With S = N1 and rho = 1 a step is one batch iteration.
- ``"seed"``: seed 001's version: updateA on the minibatch unscaled, rates whose data term
  is scaled by S / (R C), and ``eta_t = (S / N1) rho_t``. Its fixed point differs from batch
  VB's by the density N1 / (R C) (the minibatch holds only nonzeros but is scaled as a
  sample of all R C entries); it is kept to measure exactly that.

Engine orientation as in `_vb`: rows are ``z`` (cells for AnnData), columns ``w`` (genes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from . import _kernels, _vb
from ._checkpoint import rng_from_json, rng_state_json
from ._stream import CellSource
from ._validation import (
    NonCountWarning,
    check_counts,
    check_sparse_structure,
    combine_fingerprints,
    warn_user,
)

SVI_FORMS = ("cells", "textbook", "seed")

# Rows per block of the streaming passes (initial scan, ELBO evaluation) of the cells form.
EVAL_CHUNK_CELLS = 4096


def default_batch_size(form: str, n_cells: int, nnz: int) -> int:
    """``batch_size`` when not given: 256 cells for the cells form (many steps per epoch;
    on simulated and pbmc data smaller batches reached batch VB's ELBO in fewer epochs),
    an eighth of the nonzeros for the nonzero forms."""
    if form == "cells":
        return min(256, n_cells)
    return max(1, nnz // 8)


def learning_rate(step: int, tau: float, kappa: float) -> float:
    """Robbins-Monro weight ``rho_t = (t + tau)^(-kappa)`` of step ``t >= 1``."""
    return float((step + tau) ** (-kappa))


@dataclass
class SVIState:
    """Everything an SVI fit needs to continue bitwise: the parameters, the step and epoch
    counters, the ELBO trace and the random generator (the next epoch's permutation).

    For the cells form ``params``' row side holds every cell's latest local optimum (from
    its last minibatch or the last evaluation), where its next local fit starts."""

    params: _vb.VariationalParams
    rng: np.random.Generator
    step: int = 0
    epoch: int = 0
    elbo_trace: list[float] = field(default_factory=list)
    converged: bool = False
    finished: bool = False

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays and JSON metadata for `_checkpoint.save_checkpoint`."""
        names = ("row_shape", "row_rate", "col_shape", "col_rate")
        arrays = dict(zip(names, self.params.as_tuple()))
        arrays["elbo_trace"] = np.asarray(self.elbo_trace, dtype=np.float64)
        meta = {
            "rng": rng_state_json(self.rng),
            "step": self.step,
            "epoch": self.epoch,
            "converged": self.converged,
            "finished": self.finished,
        }
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict) -> SVIState:
        params = _vb.VariationalParams(
            arrays["row_shape"], arrays["row_rate"], arrays["col_shape"], arrays["col_rate"]
        )
        return cls(
            params=params,
            rng=rng_from_json(meta["rng"]),
            step=int(meta["step"]),
            epoch=int(meta["epoch"]),
            elbo_trace=[float(v) for v in arrays["elbo_trace"]],
            converged=bool(meta["converged"]),
            finished=bool(meta["finished"]),
        )


@dataclass
class SVISettings:
    """The knobs shared by the SVI forms (see `VBNMF` for their meaning)."""

    prior_shape: float
    prior_rate: float
    batch_size: int
    tau: float
    kappa: float
    n_epochs: int
    eval_every: int
    tol: float
    local_max_iter: int
    local_tol: float
    n_chunks: int = 1


EpochCallback = Callable[[int, _vb.VariationalParams, list[float]], None]
StateHook = Callable[[SVIState], None]


def _blend(
    params: _vb.VariationalParams, tilde: _vb.VariationalParams, rho: float
) -> _vb.VariationalParams:
    """``(1 - rho) theta + rho theta_tilde`` on all four arrays, then a finiteness check."""
    blended = _vb.VariationalParams(
        *((1.0 - rho) * old + rho * new for old, new in zip(params.as_tuple(), tilde.as_tuple()))
    )
    _check_finite(blended)
    return blended


def _check_finite(params: _vb.VariationalParams) -> None:
    for name, array in zip(("row_shape", "row_rate", "col_shape", "col_rate"), params.as_tuple()):
        if array.size and not np.all(np.isfinite(array)):
            raise FloatingPointError(
                f"an SVI step produced non-finite {name}; lower kappa's step (raise tau) or "
                "use a larger batch_size"
            )


def _end_of_epoch(
    state: SVIState, evaluate: Callable[[], float], settings: SVISettings, callback, on_epoch
) -> None:
    """Count the finished epoch, evaluate the ELBO when due, decide convergence, then
    call ``callback(epoch, params, trace)`` and ``on_epoch(state)`` (checkpoints)."""
    state.epoch += 1
    last_epoch = state.epoch >= settings.n_epochs
    if state.epoch % settings.eval_every == 0 or last_epoch:
        state.elbo_trace.append(evaluate())
        trace = state.elbo_trace
        if _vb.has_converged(trace, settings.tol):
            state.converged = True
    state.finished = state.converged or last_epoch
    if callback is not None:
        callback(state.epoch, state.params, state.elbo_trace)
    if on_epoch is not None:
        on_epoch(state)


def _warn_not_converged(state: SVIState, settings: SVISettings) -> None:
    if not state.converged and settings.n_epochs > 0:
        warn_user(
            f"SVI stopped after n_epochs={settings.n_epochs} epochs before the relative ELBO "
            f"change fell below tol={settings.tol}; raise n_epochs or tol.",
            _vb.ConvergenceWarning,
        )


# -- minibatches of nonzeros --------------------------------------------------------------
def nonzero_minibatch(data: _vb.CountData, positions: np.ndarray) -> _vb.CountData:
    """The nonzeros at sorted ``positions`` of ``data``'s CSR, as a `CountData` of the
    same shape and major axis (absent major rows are empty)."""
    n_major = data.shape[data.major]
    major_of = np.searchsorted(data.indptr, positions, side="right") - 1
    indptr = np.zeros(n_major + 1, dtype=np.int64)
    np.cumsum(np.bincount(major_of, minlength=n_major), out=indptr[1:])
    counts = data.counts[positions]
    return _vb.CountData(
        shape=data.shape,
        major=data.major,
        indptr=indptr,
        indices=data.indices[positions],
        counts=counts,
        log_factorial=float(_kernels.log_factorial_sum(counts, 1 << 16)),
    )


def svi_step_nonzeros(
    data: _vb.CountData,
    minibatch: _vb.CountData,
    params: _vb.VariationalParams,
    rho: float,
    form: str,
    prior_shape: float,
    prior_rate: float,
    n_chunks: int = 1,
) -> _vb.VariationalParams:
    """One step of the ``"textbook"`` or ``"seed"`` form from a minibatch of nonzeros.

    ``rho`` is the blend weight (for ``"seed"`` the caller passes ``(S / N1) rho_t``).
    """
    row_stat, col_stat, _ = _vb.shape_statistics(minibatch, params, n_chunks)
    dtype = params.row_shape.dtype
    if form == "textbook":
        scale = data.nnz / minibatch.nnz
        tilde = _vb.apply_update(
            params, scale * row_stat, scale * col_stat, prior_shape, prior_rate
        )
    elif form == "seed":
        n_rows, n_cols = data.shape
        fraction = minibatch.nnz / (float(n_rows) * float(n_cols))
        row_shape = (prior_shape + row_stat).astype(dtype, copy=False)
        col_shape = (prior_shape + col_stat).astype(dtype, copy=False)
        row_rate = (prior_rate + fraction * params.col_mean.sum(axis=0)).astype(dtype)
        col_rate = (prior_rate + fraction * (row_shape / row_rate).sum(axis=0)).astype(dtype)
        tilde = _vb.VariationalParams(row_shape, row_rate, col_shape, col_rate)
    else:
        raise ValueError(f"unknown nonzero SVI form {form!r}")
    return _blend(params, tilde, rho)


def fit_svi_nonzeros(
    data: _vb.CountData,
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
    batch_size = min(settings.batch_size, n_nonzeros)

    def evaluate() -> float:
        return _vb.elbo(
            data, state.params, settings.prior_shape, settings.prior_rate, settings.n_chunks
        )

    while not state.finished and state.epoch < settings.n_epochs:
        order = np.arange(n_nonzeros, dtype=index_dtype)
        state.rng.shuffle(order)
        for start in range(0, n_nonzeros, batch_size):
            positions = np.sort(order[start : start + batch_size])
            minibatch = nonzero_minibatch(data, positions)
            state.step += 1
            rho = learning_rate(state.step, settings.tau, settings.kappa)
            if form == "seed":
                rho *= minibatch.nnz / n_nonzeros
            state.params = svi_step_nonzeros(
                data,
                minibatch,
                state.params,
                rho,
                form,
                settings.prior_shape,
                settings.prior_rate,
                settings.n_chunks,
            )
        del order
        _end_of_epoch(state, evaluate, settings, callback, on_epoch)
    _warn_not_converged(state, settings)
    return state


# -- minibatches of cells -----------------------------------------------------------------
def scan_source(
    source: CellSource, chunk_cells: int = EVAL_CHUNK_CELLS, fit_dtype=np.float64
) -> tuple[float, str]:
    """Validate every count of ``source`` (one streaming pass) for a fit of ``fit_dtype``;
    return their sum and the data's fingerprint (`_validation.combine_fingerprints`).

    Warns once (`NonCountWarning`) if any count is not an integer."""
    total, non_integer, fingerprints = 0.0, False, []
    for start, block in source.iter_chunks(chunk_cells):
        name = f"{source.name} (rows {start}..{start + block.shape[0] - 1})"
        check_counts(block, name=name, warn_non_integer=False, fit_dtype=fit_dtype)
        fingerprints.append(check_sparse_structure(block, name, first_row=start))
        total += float(block.data.sum())
        non_integer = non_integer or bool(np.any(block.data != np.round(block.data)))
    if non_integer:
        warn_user(
            "X holds non-integer values; vbsnmf's Poisson model expects raw counts "
            "(not normalised or log-transformed data).",
            NonCountWarning,
        )
    return total, combine_fingerprints(*fingerprints)


def init_cells_state(
    source: CellSource,
    n_components: int,
    rng: np.random.Generator,
    total_count: float,
    prior_shape: float,
    prior_rate: float,
    dtype,
) -> SVIState:
    """Random gene side as `_vb.random_init` draws it (shapes ``1 + U(0, 1)``, means
    ``sqrt(mean count / K)``); the cell side starts where `_vb.fit_rows` starts."""
    n_cells, n_genes = source.shape
    mean_count = max(total_count / (float(n_cells) * n_genes), 1e-12)
    rate = np.full(n_components, 1.5 / np.sqrt(mean_count / n_components), dtype=dtype)
    col_shape = (1.0 + rng.random((n_genes, n_components))).astype(dtype)
    row_rate = (prior_rate + (col_shape / rate).sum(axis=0)).astype(dtype)
    row_shape = np.full((n_cells, n_components), prior_shape + 1.0, dtype=dtype)
    return SVIState(_vb.VariationalParams(row_shape, row_rate, col_shape, rate), rng)


def _local_step(block: sp.csr_array, col_shape, col_rate, settings: SVISettings, init_shape=None):
    """Cell factors of ``block`` at their optimum given the gene side (as `transform`,
    from ``init_shape`` if given), and the pass statistics under them:
    ``(row_shape, row_rate, col_stat, data_term)``."""
    data = _vb.as_count_data(block)
    row_shape, row_rate = _vb.fit_rows(
        data,
        col_shape,
        col_rate,
        prior_shape=settings.prior_shape,
        prior_rate=settings.prior_rate,
        max_iter=settings.local_max_iter,
        tol=settings.local_tol,
        n_chunks=settings.n_chunks,
        init_shape=init_shape,
    )
    local = _vb.VariationalParams(row_shape, row_rate, col_shape, col_rate)
    _, col_stat, data_term = _vb.shape_statistics(data, local, settings.n_chunks)
    return row_shape, row_rate, col_stat, data_term


def evaluate_cells(
    source: CellSource, params: _vb.VariationalParams, settings: SVISettings
) -> tuple[float, np.ndarray, np.ndarray]:
    """The full ELBO with every cell's factors at their optimum given the gene side, in
    one streaming pass; returns ``(elbo, row_shape (all cells), row_rate)``. Each cell's
    fit starts from ``params.row_shape``.

    The ELBO decomposes over cells once the gene side is fixed, so each block contributes
    its data term, its share of ``sum_l (sum_i E[z_il]) (sum_j E[w_jl])`` and its KL.
    """
    col_shape, col_rate = params.col_shape, params.col_rate
    row_shape_all = np.empty((source.n_cells, col_shape.shape[1]), dtype=col_shape.dtype)
    row_mean_sum = np.zeros(col_shape.shape[1])
    data_term, row_kl = 0.0, 0.0
    row_rate = params.row_rate
    for start, block in source.iter_chunks(EVAL_CHUNK_CELLS):
        rows = slice(start, start + block.shape[0])
        row_shape, row_rate, _, block_data_term = _local_step(
            block, col_shape, col_rate, settings, params.row_shape[rows]
        )
        row_shape_all[rows] = row_shape
        row_mean_sum += (row_shape / row_rate).sum(axis=0)
        data_term += block_data_term
        row_kl += _vb.gamma_kl(row_shape, row_rate, settings.prior_shape, settings.prior_rate)
    value = (
        data_term
        - float(row_mean_sum @ (col_shape / col_rate).sum(axis=0))
        - row_kl
        - _vb.gamma_kl(col_shape, col_rate, settings.prior_shape, settings.prior_rate)
    )
    return value, row_shape_all, row_rate


def svi_step_cells(
    block: sp.csr_array,
    n_cells: int,
    params: _vb.VariationalParams,
    rho: float,
    settings: SVISettings,
    cells: np.ndarray | None = None,
) -> _vb.VariationalParams:
    """One cells-form step: local fit of ``block``'s cells, then the gene side blended with
    ``a + (C / |B|) sum_B x phi`` and ``b + (C / |B|) sum_B E[z]``.

    With ``cells`` (the block's row numbers) the local fit starts from
    ``params.row_shape[cells]`` and its optimum is written back there, in place; without,
    it starts from scratch and the row side is passed through unchanged."""
    col_shape, col_rate = params.col_shape, params.col_rate
    init_shape = None if cells is None else params.row_shape[cells]
    row_shape, row_rate, col_stat, _ = _local_step(block, col_shape, col_rate, settings, init_shape)
    if cells is not None:
        params.row_shape[cells] = row_shape
    scale = n_cells / block.shape[0]
    dtype = col_shape.dtype
    new_shape = ((1.0 - rho) * col_shape + rho * (settings.prior_shape + scale * col_stat)).astype(
        dtype, copy=False
    )
    batch_row_mean = (row_shape / row_rate).sum(axis=0)
    new_rate = (
        (1.0 - rho) * col_rate + rho * (settings.prior_rate + scale * batch_row_mean)
    ).astype(dtype, copy=False)
    updated = _vb.VariationalParams(params.row_shape, params.row_rate, new_shape, new_rate)
    _check_finite(updated)
    return updated


def fit_svi_cells(
    source: CellSource,
    state: SVIState,
    settings: SVISettings,
    *,
    callback: EpochCallback | None = None,
    on_epoch: StateHook | None = None,
) -> SVIState:
    """SVI over minibatches of ``settings.batch_size`` cells read from ``source``, from
    ``state`` (`init_cells_state` or a checkpoint); returns the final state, whose row side
    is the last evaluation's (every cell at its optimum given the final gene side).
    ``state.params.row_shape`` is updated in place."""
    n_cells = source.n_cells
    batch_size = min(settings.batch_size, n_cells)

    def evaluate() -> float:
        value, row_shape, row_rate = evaluate_cells(source, state.params, settings)
        state.params.row_shape, state.params.row_rate = row_shape, row_rate
        return value

    while not state.finished and state.epoch < settings.n_epochs:
        order = state.rng.permutation(n_cells)
        for start in range(0, n_cells, batch_size):
            cells = np.sort(order[start : start + batch_size])
            state.step += 1
            rho = learning_rate(state.step, settings.tau, settings.kappa)
            state.params = svi_step_cells(
                source.read_rows(cells), n_cells, state.params, rho, settings, cells
            )
        _end_of_epoch(state, evaluate, settings, callback, on_epoch)
    _warn_not_converged(state, settings)
    return state


__all__ = [
    "SVI_FORMS",
    "SVISettings",
    "SVIState",
    "default_batch_size",
    "evaluate_cells",
    "fit_svi_cells",
    "fit_svi_nonzeros",
    "init_cells_state",
    "learning_rate",
    "nonzero_minibatch",
    "scan_source",
    "svi_step_cells",
    "svi_step_nonzeros",
]
