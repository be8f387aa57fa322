"""Cell-minibatch SVI on Dask: the loop of `_svi.run_cells_epochs`, steps on the workers.

The client draws the minibatches (the same permutations as the single-machine fit, from
the same `_svi.SVIState`), the workers fit the batch's cells held by their chunks
(`_svi.local_fit`) and return genes x K statistics, and the client takes the gene side's
step (`_svi.step_cols`). The client also keeps every cell's latest shapes (cells x K, where
the cell's next local fit starts): a step moves only its batch's rows of them, an
evaluation all of them; the counts never move, and no task depends on an earlier step's,
so the graph's lineage stays one step deep.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable
from functools import partial

import numpy as np
import scipy.sparse as sp

from .._model import ElboTerms, VariationalParams, side_rate, side_terms
from .._svi import (
    EVAL_BLOCK_ROWS,
    SVISettings,
    evaluate_rows,
    init_cells_state,
    local_fit,
    run_cells_epochs,
    step_cols,
)
from .._utils import numba_threads
from ._batch import ChunkSummary, DaskFitResult, add_summaries, chunk_count_data
from ._cluster import (
    Layout,
    as_task,
    build_chunks,
    cells_x_genes,
    get_client,
    lazy_rows,
    reduce_chunks,
)


def _chunk_rows(block, first_cell: int, fit_dtype=np.float64) -> sp.csr_array:
    """The chunk as canonical float64 CSR of cells, from which minibatch rows are cut."""
    data = chunk_count_data(block, first_cell, fit_dtype)  # validated, canonical
    major_shape = data.shape if data.major == 0 else data.shape[::-1]
    csr = sp.csr_array((data.counts, data.indices, data.indptr), shape=major_shape)
    return csr if data.major == 0 else csr.T.tocsr()


def _total_count(rows: sp.csr_array) -> float:
    return float(rows.data.sum())


def _chunk_step(rows, local_cells, gene_side, settings: SVISettings, start_shape):
    """The local step of `_svi.svi_step_cells` on the chunk's cells ``local_cells``, from
    ``start_shape``; returns their new shapes and their gene statistic and ``sum E[z]``."""
    gene_shape, gene_rate = gene_side
    with numba_threads(settings.n_threads):
        cell_shape, cell_rate, gene_stat, data_term, _ = local_fit(
            rows[local_cells], gene_shape, gene_rate, settings, start_shape
        )
    terms = ElboTerms(data_term, *side_terms(cell_shape, cell_rate, settings.prior))
    return cell_shape, ChunkSummary(gene_stat.astype(np.float64, copy=False), terms, np.zeros(0))


def _chunk_evaluation(rows, gene_side, settings: SVISettings, start_shape):
    """Every cell of the chunk at its optimum given the gene side (`_svi.evaluate_rows`,
    in its blocks); returns the cell shapes and the chunk's ELBO terms."""
    gene_shape, gene_rate = gene_side
    blocks = (
        (start, rows[start : start + EVAL_BLOCK_ROWS])
        for start in range(0, rows.shape[0], EVAL_BLOCK_ROWS)
    )
    with numba_threads(settings.n_threads):
        start = VariationalParams(start_shape, None, gene_shape, gene_rate)
        terms, fitted, _ = evaluate_rows(blocks, start, settings)
        cell_shape = fitted.row_shape
    # An evaluation has no gene statistic: empty arrays keep the summary small.
    empty = np.zeros((0, gene_shape.shape[1]))
    return cell_shape, ChunkSummary(empty, terms, np.zeros(0))


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
    and the same minibatches for the same ``entropy`` and ``start``."""
    client = get_client(client)
    X = cells_x_genes(X)
    prefix = f"vbsnmf-svi-{uuid.uuid4().hex[:12]}"
    chunk_sizes = X.chunks[0]
    bounds = np.concatenate([[0], np.cumsum(chunk_sizes)])
    layout = Layout.of(client, len(chunk_sizes))
    chunk_rows = build_chunks(client, layout, partial(_chunk_rows, fit_dtype=dtype), X)
    totals = client.gather(
        client.map(
            _total_count, chunk_rows, key=[f"{prefix}-total-{i}" for i in range(len(chunk_rows))]
        )
    )
    n_cells, n_genes = X.shape
    state = init_cells_state(
        (n_cells, n_genes), n_components, sum(totals), entropy, settings.prior, dtype, start
    )
    gathered_bytes: list[int] = []
    sent_bytes: list[int] = []
    evaluated: list = []  # futures of the last evaluation's cell shapes per chunk

    def summed(futures: dict, key: str) -> ChunkSummary:
        total = client.gather(reduce_chunks(client, futures, layout, add_summaries, key))
        gathered_bytes.append(total.nbytes)
        return total

    def step(batch: np.ndarray, rho: float) -> None:
        params = state.params
        key = f"{prefix}-step{state.step}"
        gene_future = client.submit(as_task, (params.col_shape, params.col_rate), key=f"{key}-gene")
        sent_bytes.append(params.col_shape.nbytes + params.col_rate.nbytes + batch.nbytes)
        cuts = np.searchsorted(batch, bounds)
        active = [c for c in range(len(chunk_sizes)) if cuts[c + 1] > cuts[c]]
        outputs = {
            c: client.submit(
                _chunk_step,
                chunk_rows[c],
                batch[cuts[c] : cuts[c + 1]] - bounds[c],
                gene_future,
                settings,
                params.row_shape[batch[cuts[c] : cuts[c + 1]]],
                key=f"{key}-chunk-{c}",
            )
            for c in active
        }
        summaries = {
            c: client.submit(operator.getitem, out, 1, key=f"{key}-summary-{c}")
            for c, out in outputs.items()
        }
        total = summed(summaries, key)
        shapes = [
            client.submit(operator.getitem, out, 0, key=f"{key}-shape-{c}")
            for c, out in outputs.items()
        ]
        params.row_shape[batch] = np.concatenate(client.gather(shapes))
        gathered_bytes[-1] += params.row_shape[batch].nbytes
        params.col_shape, params.col_rate = step_cols(
            params.col_shape,
            params.col_rate,
            total.gene_stat,
            total.terms.row_mean_sum,
            n_cells / len(batch),
            rho,
            settings.prior,
        )

    def evaluate() -> float:
        params = state.params
        key = f"{prefix}-eval{state.epoch}"
        gene_future = client.submit(as_task, (params.col_shape, params.col_rate), key=f"{key}-gene")
        outputs = [
            client.submit(
                _chunk_evaluation,
                rows,
                gene_future,
                settings,
                params.row_shape[bounds[c] : bounds[c + 1]],
                key=f"{key}-chunk-{c}",
            )
            for c, rows in enumerate(chunk_rows)
        ]
        summaries = {
            c: client.submit(operator.getitem, out, 1, key=f"{key}-summary-{c}")
            for c, out in enumerate(outputs)
        }
        total = summed(summaries, key)
        evaluated[:] = [
            client.submit(operator.getitem, out, 0, key=f"{key}-cell-shape-{c}")
            for c, out in enumerate(outputs)
        ]
        params.row_shape = np.concatenate(client.gather(evaluated))
        gathered_bytes[-1] += params.row_shape.nbytes
        params.row_rate = side_rate(
            settings.prior, (params.col_shape / params.col_rate).sum(axis=0), dtype
        )
        return total.terms.with_cols(params.col_shape, params.col_rate, settings.prior).value()

    state = run_cells_epochs(state, settings, n_cells, step, evaluate, callback=callback)
    params = state.params
    cells = lazy_rows(evaluated, chunk_sizes, n_components, dtype)
    return DaskFitResult(
        VariationalParams(cells, params.row_rate, params.col_shape, params.col_rate),
        np.asarray(state.elbo_trace, dtype=np.float64),
        state.epoch,
        state.converged,
        gathered_bytes,
        sent_bytes,
    )
