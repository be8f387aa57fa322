"""Batch variational Bayes on Dask: the model's steps with the cells spread over workers.

The count matrix is a `dask.array` of cells x genes chunked along cells (scipy CSR/COO or
dense chunks, e.g. ``da.from_array`` over a sparse matrix or an ``.h5ad``/zarr store read
lazily by anndata). Nothing of it travels to the client.

Which side is local and which global (rows = cells = ``z``, columns = genes = ``w``):

- A chunk owns its cells outright: their nonzeros and their shapes never leave the worker.
  Every chunk needs the whole gene side, which is small (genes x K).
- One pass over a chunk (`_model.shape_statistics` on the chunk's `CountData`) gives the
  chunk's cells' shape statistics (complete: a cell's nonzeros are all in its chunk) and a
  *partial* gene statistic, summed over chunks on the workers (`_cluster.reduce_chunks`).

One iteration, in `_model.global_step`'s order:

1. the client sends the gene side ``q(w)`` of iteration t and the cell rates of t and t+1
   (`_model.side_rate` of ``E_t[w]``: the client knows it before the pass);
2. each chunk runs the pass under ``q_t``, keeps its new cell shapes (`_model.side_shape`)
   and returns its gene statistic, ``sum_i E_{t+1}[z_i]`` and its ELBO terms of ``q_t``;
3. the workers sum those and the client sets the gene side (`_model.update_side`).

Like `_batch.fit_batch`, the pass over ``q_t`` also gives the ELBO of ``q_t``, so the trace
holds the exact ELBO of every q held, equal to the single-machine trace up to the order of
floating-point sums (about 1e-14 relative measured).

Failures: every task is a pure function of its inputs. A chunk's `CountData` derives from
the chunk's source, its cell shapes at iteration t from its shapes at t - 1 and the gene
side of iteration t, which is itself a task holding that iteration's arrays. When a worker
dies, Dask's scheduler recomputes its lost keys along that lineage (back to the source and
the start), and the fit continues with the same numbers (the order of the sums is fixed by
`_cluster.Layout` at the start, not by where tasks run). The price: the scheduler keeps
every iteration's gene-side task (genes x K x 2 floats each) while the fit runs.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .._data import CountData, as_count_data
from .._model import (
    ElboTerms,
    GammaPrior,
    VariationalParams,
    has_converged,
    random_shapes,
    shape_statistics,
    side_rate,
    side_shape,
    side_terms,
    start_rate,
    update_side,
    warn_not_converged,
)
from .._utils import numba_threads, warn_user
from .._validation import NonCountWarning, check_counts
from ._cluster import (
    Layout,
    as_task,
    build_chunks,
    cells_x_genes,
    get_client,
    lazy_rows,
    reduce_chunks,
    start_blocks,
    submit_at,
)


# -- tasks that run on the workers ---------------------------------------------------------
def chunk_count_data(block, first_cell: int) -> CountData:
    """The chunk's counts as the engine stores them (`_data.as_count_data`: canonical CSR
    along the chunk's longer axis), checked; errors name the chunk's first cell."""
    try:
        matrix = check_counts(block, warn_non_integer=False)
    except ValueError as error:
        raise ValueError(
            f"in the chunk of cells starting at cell {first_cell} (positions within the "
            f"chunk): {error}"
        ) from None
    # A copy: as_count_data canonicalises in place, and the block may be shared.
    return as_count_data(sp.csr_array(matrix, copy=True))


def _chunk_info(data: CountData) -> tuple[int, int, float, bool]:
    """``(n_cells, n_genes, total count, holds non-integers)`` of one chunk."""
    counts = data.counts
    return (
        data.shape[0],
        data.shape[1],
        float(np.sum(counts, dtype=np.float64)),
        bool(np.any(counts != np.round(counts))),
    )


@dataclass
class ChunkSummary:
    """What one chunk (or a sum of chunks) returns from a pass: genes x K plus O(K)."""

    gene_stat: np.ndarray  # sum over the chunk's cells of x phi, genes x K
    terms: ElboTerms  # the data and cell terms of the ELBO of q_t
    next_cell_mean_sum: np.ndarray  # sum_i E_{t+1}[z_i], K

    @property
    def nbytes(self) -> int:
        return (
            self.gene_stat.nbytes
            + self.terms.row_mean_sum.nbytes
            + self.next_cell_mean_sum.nbytes
            + 16
        )

    def __sizeof__(self) -> int:  # dask.sizeof falls back to sys.getsizeof
        return self.nbytes


def add_summaries(*summaries: ChunkSummary) -> ChunkSummary:
    """Sum of chunk summaries, in the order given."""
    first, *rest = summaries
    gene_stat, terms, next_sum = first.gene_stat.copy(), first.terms, first.next_cell_mean_sum
    for other in rest:
        gene_stat += other.gene_stat
        terms = terms + other.terms
        next_sum = next_sum + other.next_cell_mean_sum
    return ChunkSummary(gene_stat, terms, next_sum)


def _chunk_pass(
    data: CountData,
    cell_shape: np.ndarray,
    gene_side: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    prior: GammaPrior,
    n_threads: int,
) -> tuple[np.ndarray, ChunkSummary]:
    """The pass over one chunk under q_t; returns the chunk's new cell shapes and its
    summary. ``gene_side`` is ``(gene_shape, gene_rate, cell_rate, next_cell_rate)``."""
    gene_shape, gene_rate, cell_rate, next_cell_rate = gene_side
    params = VariationalParams(cell_shape, cell_rate, gene_shape, gene_rate)
    with numba_threads(n_threads) as n_parts:
        cell_stat, gene_stat, data_term = shape_statistics(data, params, n_parts)
    next_cell_shape = side_shape(prior, cell_stat, cell_shape.dtype)
    summary = ChunkSummary(
        gene_stat=gene_stat.astype(np.float64, copy=False),
        terms=ElboTerms(data_term, *side_terms(cell_shape, cell_rate, prior)),
        next_cell_mean_sum=(next_cell_shape / next_cell_rate).sum(axis=0).astype(np.float64),
    )
    return next_cell_shape, summary


def _register_sizeof() -> None:
    """Tell Dask how large a chunk's `CountData` is, so workers account its memory (and
    their transfer counters count it) instead of the dataclass shell's few bytes."""
    try:
        from dask.sizeof import sizeof
    except ImportError:  # pragma: no cover - dask is an optional extra
        return

    @sizeof.register(CountData)
    def _sizeof_count_data(data: CountData) -> int:
        return int(data.indptr.nbytes + data.indices.nbytes + data.counts.nbytes)


_register_sizeof()


# -- the client side --------------------------------------------------------------------------
@dataclass
class DaskFitResult:
    """What `fit_dask` and `fit_svi_dask` return.

    Attributes
    ----------
    params
        The final q; ``params.row_shape`` (cells x K) is a dask array held on the cluster,
        chunked like the input's cells and in their order; the gene side and both rates
        are numpy arrays on the client.
    elbo_trace
        ELBO (nats) after each iteration (evaluated epoch for SVI).
    n_iter, converged
        Iterations (epochs) run and whether ``tol`` was met.
    gathered_bytes, sent_bytes
        Per pass: bytes the client received (the reduced summary) and bytes it put into the
        graph (the gene side and rates). Both are O(genes x K), independent of nonzeros.
    """

    params: VariationalParams
    elbo_trace: np.ndarray
    n_iter: int
    converged: bool
    gathered_bytes: list[int] = field(default_factory=list)
    sent_bytes: list[int] = field(default_factory=list)

    @property
    def cell_factors(self):
        """Posterior mean cell factors ``E[z]`` (cells x K), a dask array."""
        return self.params.row_shape / self.params.row_rate

    @property
    def gene_loadings(self) -> np.ndarray:
        """Posterior mean gene loadings ``E[w]`` (genes x K)."""
        return self.params.col_mean

    def gather(self) -> VariationalParams:
        """The final q with the cell shapes computed into a numpy array."""
        row_shape = np.asarray(self.params.row_shape.compute())
        return VariationalParams(
            row_shape, self.params.row_rate, self.params.col_shape, self.params.col_rate
        )


def _warn_non_integer(info) -> None:
    if any(i[3] for i in info):
        warn_user(
            "X holds non-integer values; vbsnmf's Poisson model expects raw counts "
            "(not normalised or log-transformed data).",
            NonCountWarning,
        )


def fit_batch_dask(
    X,
    n_components: int,
    *,
    prior: GammaPrior,
    max_iter: int,
    tol: float,
    entropy: int,
    dtype,
    init: VariationalParams | None = None,
    start: int = 0,
    n_threads: int = 1,
    client=None,
    callback: Callable[[int, VariationalParams, list[float]], None] | None = None,
    verbose: bool = False,
) -> DaskFitResult:
    """Batch VB on a Dask cluster, chunk by chunk of cells (checked settings; the public
    `vbsnmf.fit_dask` checks them). The random start is `_model.random_start`'s, each
    chunk drawing its own cells, so any chunking gives the same fit."""
    client = get_client(client)
    X = cells_x_genes(X)
    prefix = f"vbsnmf-{uuid.uuid4().hex[:12]}"
    chunk_sizes = X.chunks[0]
    layout = Layout.of(client, len(chunk_sizes))
    chunk_data = build_chunks(client, layout, chunk_count_data, X)
    info = client.gather(
        client.map(
            _chunk_info, chunk_data, key=[f"{prefix}-info-{i}" for i in range(len(chunk_data))]
        )
    )
    n_cells, n_genes = int(sum(i[0] for i in info)), int(info[0][1])
    _warn_non_integer(info)

    if init is not None:
        cell_shapes = start_blocks(init.row_shape, chunk_sizes, client, layout, prefix)
        cell_rate, gene_shape, gene_rate = init.row_rate, init.col_shape, init.col_rate
    else:
        total = sum(i[2] for i in info)
        cell_rate = start_rate((n_cells, n_genes), total, n_components, dtype)
        gene_rate = cell_rate.copy()
        gene_shape = random_shapes(entropy, 1, 0, n_genes, n_components, dtype, start)
        first_cells = np.concatenate([[0], np.cumsum(chunk_sizes)])
        cell_shapes = [
            submit_at(
                client,
                layout,
                index,
                random_shapes,
                entropy,
                0,
                int(first_cells[index]),
                int(first_cells[index + 1]),
                n_components,
                dtype,
                start,
                key=f"{prefix}-init-{index}",
            )
            for index in range(len(chunk_sizes))
        ]

    def current_params():
        cells = lazy_rows(cell_shapes, chunk_sizes, n_components, dtype)
        return VariationalParams(cells, cell_rate, gene_shape, gene_rate)

    trace: list[float] = []
    gathered_bytes: list[int] = []
    sent_bytes: list[int] = []
    n_done, converged = 0, False
    while True:
        step = f"{prefix}-{n_done}"
        next_cell_rate = side_rate(prior, (gene_shape / gene_rate).sum(axis=0), dtype)
        gene_side = (gene_shape, gene_rate, cell_rate, next_cell_rate)
        gene_future = client.submit(as_task, gene_side, key=f"{step}-gene-side")
        sent_bytes.append(sum(a.nbytes for a in gene_side))
        outputs = [
            client.submit(
                _chunk_pass, data, shape, gene_future, prior, n_threads, key=f"{step}-pass-{index}"
            )
            for index, (data, shape) in enumerate(zip(chunk_data, cell_shapes))
        ]
        next_shapes = [
            client.submit(operator.getitem, out, 0, key=f"{step}-cell-shape-{index}")
            for index, out in enumerate(outputs)
        ]
        summaries = {
            index: client.submit(operator.getitem, out, 1, key=f"{step}-summary-{index}")
            for index, out in enumerate(outputs)
        }
        total = client.gather(reduce_chunks(client, summaries, layout, add_summaries, step))
        del outputs, summaries, gene_future
        gathered_bytes.append(total.nbytes)
        if n_done > len(trace):
            trace.append(total.terms.with_cols(gene_shape, gene_rate, prior).value())
            if verbose:
                print(f"iteration {n_done:4d}  ELBO {trace[-1]:.10g}", flush=True)
            if callback is not None:
                callback(n_done, current_params(), trace)
            if has_converged(trace, tol):
                converged = True
                break
        if n_done >= max_iter:
            break
        gene_shape, gene_rate = update_side(prior, total.gene_stat, total.next_cell_mean_sum, dtype)
        cell_rate, cell_shapes = next_cell_rate, next_shapes
        n_done += 1
    if not converged and max_iter > 0:
        warn_not_converged("max_iter", max_iter, tol)
    return DaskFitResult(
        current_params(),
        np.asarray(trace, dtype=np.float64),
        len(trace),
        converged,
        gathered_bytes,
        sent_bytes,
    )
