"""Cell-minibatch SVI on Dask: the loop of `_svi.run_cells_epochs`, steps on the workers.

The client draws the minibatches (the same permutations as the single-machine fit, from
the same `_svi.SVIState`), the workers fit the batch's cells held by their chunks
(`_svi.local_fit`) and return genes x K statistics, and the client takes the gene side's
step (`_svi.step_cols`). The client also keeps every cell's latest shapes (cells x K, where
the cell's next local fit starts): a step moves only its batch's rows of them, an
evaluation all of them; the counts never move, and no task depends on an earlier step's,
so the graph's lineage stays one step deep.

Under the learned prior the client keeps, with the shapes, every cell's rates and q(xi)
and the sums their hyperparameters are learned from (`_svi.SVIState.cell_sums`); a step
sends the batch's rows of them, gets their new values back and continues as
`_svi.svi_step_cells` does (`_svi.store_rows`, `_svi.set_gene_side`); an
evaluation returns every cell's q and the chunks' `_model.ScaleSums`.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable
from functools import partial

import numpy as np
import scipy.sparse as sp

from .._batch import trace_arrays
from .._model import (
    ElboTerms,
    HierarchicalPrior,
    ScaleState,
    VariationalParams,
    side_rate,
    side_terms,
    warn_local_rounding,
)
from .._svi import (
    EVAL_BLOCK_ROWS,
    SVISettings,
    evaluate_rows,
    init_cells_state,
    local_fit,
    row_subset,
    run_cells_epochs,
    set_gene_side,
    step_cols,
    store_rows,
)
from .._utils import numba_threads, one_launch_at_a_time
from .._validation import warn_non_counts
from ._batch import ChunkSummary, DaskFitResult, add_summaries, chunk_count_data
from ._cluster import (
    Layout,
    as_task,
    build_chunks,
    cells_x_genes,
    get_client,
    lazy_rows,
    reduce_chunks,
    released_on_failure,
)


@one_launch_at_a_time
def _chunk_rows(block, first_cell: int, fit_dtype=np.float64) -> sp.csr_array:
    """The chunk as canonical CSR of cells, from which minibatch rows are cut; its values
    as `CountData` keeps them, in the narrowest dtype that holds them exactly (uint16 for
    small counts)."""
    data = chunk_count_data(block, first_cell, fit_dtype)  # validated, canonical
    return data.rows_by_columns().tocsr()


def _chunk_totals(rows: sp.csr_array) -> tuple[np.ndarray, np.ndarray, bool]:
    """The chunk's cell totals, its share of the gene totals and whether it holds
    non-integer values (for `NonCountWarning`, as `_batch._chunk_info` gives it)."""
    return (
        np.asarray(rows.sum(axis=1)).ravel(),
        np.bincount(rows.indices, rows.data, minlength=rows.shape[1]),
        bool(np.any(rows.data != np.round(rows.data))),
    )


def _cells(fitted_shape, fitted_rate, scale: ScaleState | None) -> tuple:
    """What a chunk returns of its cells' q: the shapes, under the learned prior also the
    rates and q(xi)."""
    if scale is None:
        return (fitted_shape,)
    return fitted_shape, fitted_rate, scale.shape, scale.rate


def _without_summary(output: tuple) -> tuple:
    return output[:-1]


@one_launch_at_a_time
def _chunk_step(rows, local_cells, gene_side, settings: SVISettings, start_shape, start_scale):
    """The local step of `_svi.svi_step_cells` on the chunk's cells ``local_cells``, from
    ``start_shape`` (and, under the learned prior, their q(xi) and hyperparameters
    ``start_scale``); returns their new q (`_cells`) and a summary of their gene
    statistic and ``sum E[z]``."""
    gene_shape, gene_rate = gene_side
    with numba_threads(settings.n_threads):
        cell_shape, cell_rate, gene_stat, data_term, scale = local_fit(
            rows[local_cells], gene_shape, gene_rate, settings, start_shape, start_scale
        )
    terms = ElboTerms(data_term, *side_terms(cell_shape, cell_rate, settings.prior, scale))
    summary = ChunkSummary(gene_stat.astype(np.float64, copy=False), terms, np.zeros(0))
    return *_cells(cell_shape, cell_rate, scale), summary


@one_launch_at_a_time
def _chunk_evaluation(rows, gene_side, settings: SVISettings, start_shape, start_scale):
    """Every cell of the chunk at its optimum given the gene side (`_svi.evaluate_rows`,
    in its blocks); returns the cells' q (`_cells`) and a summary of the chunk's ELBO
    terms (under the learned prior with its cells' `_model.ScaleSums`)."""
    gene_shape, gene_rate = gene_side
    blocks = (
        (start, rows[start : start + EVAL_BLOCK_ROWS])
        for start in range(0, rows.shape[0], EVAL_BLOCK_ROWS)
    )
    with numba_threads(settings.n_threads):
        start = VariationalParams(start_shape, None, gene_shape, gene_rate, start_scale)
        terms, fitted, sums, gene_stat = evaluate_rows(blocks, start, settings)
    # The gene statistic for the fit's exact gene step (`_svi.full_data_gene_step`).
    summary = ChunkSummary(gene_stat, terms, np.zeros(0), sums)
    return *_cells(fitted.row_shape, fitted.row_rate, fitted.row_scale), summary


@released_on_failure
def fit_svi_cells_dask(
    X,
    n_components: int,
    *,
    settings: SVISettings,
    entropy: int,
    dtype,
    start: int = 0,
    client=None,
    callback: Callable[[int, VariationalParams, list[float]], None] | None = None,
) -> DaskFitResult:
    """Cell-minibatch SVI on a Dask cluster (checked settings; the public
    `vbsnmf.fit_svi_dask` checks them), step for step `_svi.fit_svi_cells`: the same start
    and the same minibatches for the same ``entropy`` and ``start``, under either prior
    (the local fits' stopping rule applied per chunk's share of a minibatch)."""
    client = get_client(client)
    X = cells_x_genes(X)
    prefix = f"vbsnmf-svi-{uuid.uuid4().hex[:12]}"
    chunk_sizes = X.chunks[0]
    bounds = np.concatenate([[0], np.cumsum(chunk_sizes)])
    layout = Layout.of(client, len(chunk_sizes))
    chunk_rows = build_chunks(client, layout, partial(_chunk_rows, fit_dtype=dtype), X)
    totals = client.gather(
        client.map(
            _chunk_totals, chunk_rows, key=[f"{prefix}-totals-{i}" for i in range(len(chunk_rows))]
        )
    )
    if any(non_integer for _, _, non_integer in totals):  # as the batch driver warns
        warn_non_counts("X")
    row_totals = np.concatenate([cells for cells, _, _ in totals])
    col_totals = np.sum([genes for _, genes, _ in totals], axis=0)
    n_cells, n_genes = X.shape
    state = init_cells_state(
        (n_cells, n_genes),
        n_components,
        float(row_totals.sum()),
        entropy,
        settings.prior,
        dtype,
        start,
        (row_totals, col_totals),
    )
    learned = isinstance(settings.prior, HierarchicalPrior)
    n_parts = 4 if learned else 1  # arrays of a chunk's cells in its task's result
    gathered_bytes: list[int] = []
    sent_bytes: list[int] = []
    evaluated: list = []  # futures of the last evaluation's cells (`_cells`) per chunk

    def summed(futures: dict, key: str) -> ChunkSummary:
        total = client.gather(reduce_chunks(client, futures, layout, add_summaries, key))
        gathered_bytes.append(total.nbytes)
        return total

    def gathered_cells(outputs: dict, key: str) -> list[np.ndarray]:
        """The chunks' cells' arrays (`_cells`), each concatenated in cell order."""
        parts = [
            client.submit(_without_summary, out, key=f"{key}-cells-{c}")
            for c, out in outputs.items()
        ]
        arrays = [np.concatenate(pieces) for pieces in zip(*client.gather(parts))]
        gathered_bytes[-1] += sum(a.nbytes for a in arrays)
        return arrays

    def step(batch: np.ndarray, rho: float) -> None:
        params = state.params
        key = f"{prefix}-step{state.step}"
        gene_future = client.submit(as_task, (params.col_shape, params.col_rate), key=f"{key}-gene")
        sent_bytes.append(params.col_shape.nbytes + params.col_rate.nbytes + batch.nbytes)
        cuts = np.searchsorted(batch, bounds)
        active = [c for c in range(len(chunk_sizes)) if cuts[c + 1] > cuts[c]]
        outputs = {}
        for c in active:
            cells = batch[cuts[c] : cuts[c + 1]]
            start_shape, start_scale = row_subset(params, cells)
            outputs[c] = client.submit(
                _chunk_step,
                chunk_rows[c],
                cells - bounds[c],
                gene_future,
                settings,
                start_shape,
                start_scale,
                key=f"{key}-chunk-{c}",
            )
        summaries = {
            c: client.submit(operator.getitem, out, -1, key=f"{key}-summary-{c}")
            for c, out in outputs.items()
        }
        total = summed(summaries, key)
        new_cells = gathered_cells(outputs, key)
        new_shape, new_rate = step_cols(
            params.col_shape,
            params.col_rate,
            total.gene_stat,
            total.terms.row_mean_sum,
            n_cells / len(batch),
            rho,
            settings.prior,
            params.col_scale,
        )
        if not learned:
            params.row_shape[batch] = new_cells[0]
        else:
            row_shape, row_rate, scale_shape, scale_rate = new_cells
            row_scale = params.row_scale.with_q(scale_shape, scale_rate)
            store_rows(state, batch, row_shape, row_rate, row_scale)
        state.params = set_gene_side(params, new_shape, new_rate, settings.prior, state)

    def evaluate() -> tuple[float, tuple[np.ndarray, np.ndarray]]:
        params = state.params
        key = f"{prefix}-eval{state.epoch}"
        gene_future = client.submit(as_task, (params.col_shape, params.col_rate), key=f"{key}-gene")
        outputs = {}
        for c, rows in enumerate(chunk_rows):
            start_shape, start_scale = row_subset(params, slice(bounds[c], bounds[c + 1]))
            outputs[c] = client.submit(
                _chunk_evaluation,
                rows,
                gene_future,
                settings,
                start_shape,
                start_scale,
                key=f"{key}-chunk-{c}",
            )
        summaries = {
            c: client.submit(operator.getitem, out, -1, key=f"{key}-summary-{c}")
            for c, out in outputs.items()
        }
        total = summed(summaries, key)
        evaluated[:] = [
            [
                client.submit(operator.getitem, out, i, key=f"{key}-cells-{c}-{i}")
                for i in range(n_parts)
            ]
            for c, out in outputs.items()
        ]
        arrays = [
            np.concatenate(client.gather([parts[i] for parts in evaluated])) for i in range(n_parts)
        ]
        gathered_bytes[-1] += sum(a.nbytes for a in arrays)
        if learned:  # as `_svi.fit_svi_cells`: the exact sums of the evaluated cells
            row_shape, row_rate, scale_shape, scale_rate = arrays
            scale = params.row_scale.with_q(scale_shape, scale_rate)
            state.params = VariationalParams(
                row_shape, row_rate, params.col_shape, params.col_rate, scale, params.col_scale
            )
            state.cell_sums = total.cell_sums
        else:
            params.row_shape = arrays[0]
            params.row_rate = side_rate(
                settings.prior, (params.col_shape / params.col_rate).sum(axis=0), dtype
            )
        params = state.params
        terms = total.terms
        value = terms.with_cols(
            params.col_shape, params.col_rate, settings.prior, params.col_scale
        ).value()
        return value, (total.gene_stat, terms.row_mean_sum)

    state = run_cells_epochs(state, settings, n_cells, step, evaluate, callback=callback)
    params = state.params
    lazy = [  # q(z) in the fit's dtype, q(xi) (one value per cell) in float64 whatever it is
        lazy_rows(
            [parts[i] for parts in evaluated],
            chunk_sizes,
            n_components if i < 2 else None,
            dtype if i < 2 else np.float64,
        )
        for i in range(n_parts)
    ]
    if learned:
        scale = params.row_scale.with_q(lazy[2], lazy[3])
        cells = VariationalParams(
            lazy[0], lazy[1], params.col_shape, params.col_rate, scale, params.col_scale
        )
    else:
        cells = VariationalParams(lazy[0], params.row_rate, params.col_shape, params.col_rate)
    # as the fit in memory warns (`_estimator._fit_svi_cells`)
    warn_local_rounding(state.elbo_trace, dtype, settings.local_tol, float(row_totals.sum()))
    return DaskFitResult(
        cells,
        *trace_arrays(state.elbo_trace, state.elbo_iter),
        state.epoch,
        state.converged,
        gathered_bytes,
        sent_bytes,
    )
