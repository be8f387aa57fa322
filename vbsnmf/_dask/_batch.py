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

Under the learned prior (`_model.HierarchicalPrior`) a chunk owns its cells' whole q: shapes,
per-entry rates and q(xi) of their scales. The client holds the gene side, the cells'
hyperparameters (a_l, a', b') and the gauge factor s of the last `_model.fix_gauge`, which it
sends with the gene side; each chunk first rescales its cells by s (`_model.rescale_side`,
the rows' share of the gauge), which gives its cells of ``q_t``, then runs the pass and
`_model.update_side_learned`, and returns with its summary the cells' `_model.ScaleSums`.
The client then continues `_model.global_step` where the rows' update left it: the genes
(`update_side_learned`), both sides' hyperparameters (`learn_hyperparameters`, the cells'
from the summed `ScaleSums`) and the gauge (`fix_gauge` on the gene side and the cells'
hyperparameters), in that order.

The pass and the step (`_DaskModel.scored`, `_DaskModel.step`, on a `DaskParams` q) drive
either `_batch.plain_ascent` (`_batch.fit_batch`'s loop) or `_batch.squarem`, whose trace
each follows. SQUAREM's step length and extrapolation are entry by entry, so they run where
the entries are: each chunk sums its cells' share of ``|r|^2`` and ``|v|^2`` and extrapolates
its own cells (the gauge factor they have yet to apply applied first); the client does the
same for the genes and the hyperparameters and adds the chunks' sums in chunk order. Only
floats and per-chunk flags travel.

Like `_batch.fit_batch`, the pass over ``q_t`` also gives the ELBO of ``q_t``, so the trace
holds the exact ELBO of every q held, equal to the single-machine trace up to the order of
floating-point sums (about 1e-14 relative measured for plain ascent; SQUAREM's
extrapolations amplify that order over long fits, as another thread count does in memory).

Failures: every task is a pure function of its inputs. A chunk's `CountData` derives from
the chunk's source, its cell shapes at iteration t from its shapes at t - 1 and the gene
side of iteration t, which is itself a task holding that iteration's arrays. When a worker
dies, Dask's scheduler recomputes its lost keys along that lineage (back to the source and
the start), and the fit continues with the same numbers (the order of the sums is fixed by
`_cluster.Layout` at the start, not by where tasks run). The price: the scheduler keeps
every iteration's gene-side task (genes x K x 2 floats each) while the fit runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import scipy.sparse as sp

from .._batch import (
    direction_norms,
    extrapolate_arrays,
    plain_ascent,
    squarem,
    start_accelerated,
    step_from_norms,
    trace_arrays,
)
from .._data import CountData, as_count_data
from .._model import (
    ElboTerms,
    GammaPrior,
    HierarchicalPrior,
    Prior,
    ScaleState,
    ScaleSums,
    TotalsSummary,
    VariationalParams,
    fix_gauge,
    gauge_factor,
    held_prior,
    learn_hyperparameters,
    learned_start_rates,
    learned_start_scale,
    random_shapes,
    rescale_side,
    scale_optimum,
    scale_sums,
    shape_statistics,
    side_rate,
    side_shape,
    side_terms,
    side_totals,
    start_rate,
    start_scale_template,
    totals_summary,
    update_side,
    update_side_learned,
)
from .._utils import compute_dask, fields_repr, numba_threads, one_launch_at_a_time
from .._validation import check_counts, refuse_masked, warn_non_counts
from ._cluster import (
    Layout,
    as_task,
    build_chunks,
    cells_x_genes,
    get_client,
    lazy_rows,
    reduce_chunks,
    released_on_failure,
    start_blocks,
    submit_at,
)


# -- tasks that run on the workers ---------------------------------------------------------
@one_launch_at_a_time
def chunk_count_data(block, first_cell: int, fit_dtype=np.float64) -> CountData:
    """The chunk's counts as the engine stores them (`_data.as_count_data`: canonical CSR
    along the chunk's longer axis), checked for a fit of ``fit_dtype``; errors name the
    chunk's first cell, and positions in the whole matrix."""
    try:
        # before check_counts, whose advice (VBNMF.fit(X, mask=...)) a dask X cannot take
        refuse_masked(
            block,
            "X",
            "pass its counts as da.ma.filled(X, 0); a dask X is fitted without mask= "
            "(compute X into memory to leave the masked entries out of a fit)",
        )
        matrix = check_counts(
            block, warn_non_integer=False, fit_dtype=fit_dtype, first_row=first_cell
        )
    except (TypeError, ValueError) as error:  # the same type, naming the chunk
        raise type(error)(f"in the chunk of cells starting at cell {first_cell}: {error}") from None
    # A copy: as_count_data canonicalises in place, and the block may be shared.
    return as_count_data(sp.csr_array(matrix, copy=True), owned=True)


def _chunk_info(data: CountData) -> tuple[int, int, float, bool, float]:
    """``(n_cells, n_genes, total count, holds non-integers, largest count)`` of one
    chunk."""
    counts = data.counts
    return (
        data.shape[0],
        data.shape[1],
        float(np.sum(counts, dtype=np.float64)),
        bool(np.any(counts != np.round(counts))),
        float(counts.max(initial=0.0)),
    )


@dataclass
class ChunkSummary:
    """What one chunk (or a sum of chunks) returns from a pass: genes x K plus O(K)."""

    gene_stat: np.ndarray  # sum over the chunk's cells of x phi, genes x K
    terms: ElboTerms  # the data and cell terms of the ELBO of q_t
    next_cell_mean_sum: np.ndarray  # sum_i E_{t+1}[z_i], K
    cell_sums: ScaleSums | None = None  # learned prior: the new cells' ScaleSums

    @property
    def nbytes(self) -> int:
        sums = 0 if self.cell_sums is None else self.cell_sums.factor_log.nbytes + 24
        return (
            self.gene_stat.nbytes
            + self.terms.row_mean_sum.nbytes
            + self.next_cell_mean_sum.nbytes
            + 16
            + sums
        )

    def __sizeof__(self) -> int:  # dask.sizeof falls back to sys.getsizeof
        return self.nbytes


def add_summaries(*summaries: ChunkSummary) -> ChunkSummary:
    """Sum of chunk summaries, in the order given."""
    first, *rest = summaries
    gene_stat, terms, next_sum = first.gene_stat.copy(), first.terms, first.next_cell_mean_sum
    cell_sums = first.cell_sums
    for other in rest:
        gene_stat += other.gene_stat
        terms = terms + other.terms
        next_sum = next_sum + other.next_cell_mean_sum
        if cell_sums is not None:
            cell_sums = cell_sums + other.cell_sums
    return ChunkSummary(gene_stat, terms, next_sum, cell_sums)


@one_launch_at_a_time
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


@one_launch_at_a_time
def _chunk_pass_learned(
    data: CountData,
    cells: tuple[np.ndarray, ...],
    gene_side: tuple,
    prior: HierarchicalPrior,
    n_threads: int,
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], ChunkSummary]:
    """The pass over one chunk under the learned prior. ``cells`` is the chunk's stored q
    ``(shape, rate, scale shape, scale rate)`` before the last gauge; ``gene_side`` is
    ``(gene_shape, gene_rate, the cells' hyperparameters, the gauge factor)``. Returns the
    chunk's cells of q_t (the gauge applied), its new cells (`_model.update_side_learned`,
    before the next gauge) and its summary."""
    gene_shape, gene_rate, cell_hyper, factor = gene_side
    cell_shape, cell_rate, cell_scale = _gauged(cells, factor, cell_hyper)
    params = VariationalParams(cell_shape, cell_rate, gene_shape, gene_rate)
    with numba_threads(n_threads) as n_parts:
        cell_stat, gene_stat, data_term = shape_statistics(data, params, n_parts)
    log_sum = np.empty(cell_stat.shape[1])
    new_shape, new_rate, new_scale, new_mean_sum = update_side_learned(
        cell_stat, cell_scale, params.col_mean.sum(axis=0), cell_shape.dtype, log_sum=log_sum
    )
    summary = ChunkSummary(
        gene_stat=gene_stat.astype(np.float64, copy=False),
        terms=ElboTerms(data_term, *side_terms(cell_shape, cell_rate, prior, cell_scale)),
        next_cell_mean_sum=new_mean_sum,
        cell_sums=scale_sums(new_shape, new_rate, new_scale, log_sum),
    )
    current = (cell_shape, cell_rate, cell_scale.shape, cell_scale.rate)
    return current, (new_shape, new_rate, new_scale.shape, new_scale.rate), summary


@dataclass
class ChunkTotals:
    """A chunk's (or a sum of chunks') share of the learned prior's start: its cells'
    `_model.TotalsSummary` and its genes' totals."""

    cells: TotalsSummary
    genes: np.ndarray

    def __add__(self, other: ChunkTotals) -> ChunkTotals:
        return ChunkTotals(self.cells + other.cells, self.genes + other.genes)


@one_launch_at_a_time
def _chunk_totals(data: CountData) -> ChunkTotals:
    cell_totals, gene_totals = side_totals(data)
    return ChunkTotals(totals_summary(cell_totals), gene_totals)


def _add_totals(*totals: ChunkTotals) -> ChunkTotals:
    first, *rest = totals
    for other in rest:
        first = first + other
    return first


@one_launch_at_a_time
def _learned_chunk_start(
    data: CountData,
    entropy: int,
    first_cell: int,
    n_components: int,
    dtype,
    start: int,
    total_count: float,
    floor: float,
    template: ScaleState,
) -> tuple[np.ndarray, ...]:
    """The chunk's cells of `_model.random_start` under the learned prior: shapes from
    `_model.random_shapes`, rates from the cells' totals (`_model.learned_start_rates`,
    empty cells at the whole side's ``floor``), q(xi) at its optimum given the side's
    starting hyperparameters ``template``."""
    shape = random_shapes(
        entropy, 0, first_cell, first_cell + data.shape[0], n_components, dtype, start
    )
    rate = learned_start_rates(side_totals(data)[0], total_count, n_components, dtype, floor)
    scale = scale_optimum(shape, rate, template)
    return shape, rate, scale.shape, scale.rate


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
        The final q. Its cells' arrays are dask arrays held on the cluster, chunked like
        the input's cells and in their order: ``params.row_shape`` (cells x K) and, under
        the learned prior (the default), ``params.row_rate`` (cells x K) and the cells'
        scales ``params.row_scale.shape`` and ``params.row_scale.rate`` (cells); the gene
        side, and the fixed prior's K rates of the cells, are numpy arrays on the client.
        `gather` computes the cells' arrays.
    cell_factors
        Posterior mean cell factors ``E[z]`` (cells x K), ``params.row_shape /
        params.row_rate``: a dask array on the cluster (``.compute()`` brings it to the
        client).
    gene_loadings
        Posterior mean gene loadings ``E[w]`` (genes x K), a numpy array.
    elbo_trace
        ELBO (nats) after each iteration (evaluated epoch for SVI).
    elbo_iter
        The iteration of each ``elbo_trace`` value (int64, strictly increasing, at most
        ``n_iter``): as `vbsnmf.VBNMF.elbo_iter_`.
    n_iter, converged
        Iterations (epochs) run and whether ``tol`` was met.
    gathered_bytes, sent_bytes
        Bytes the client received and put into the graph, per round trip. Batch VB: one
        per pass over the data, the reduced summary received and the gene side and rates
        sent, both O(genes x K), independent of the nonzeros and the cells. SVI
        (`fit_svi_dask`): ``gathered_bytes`` one per minibatch step and one per evaluation,
        ``sent_bytes`` one per step (the gene side and the batch's cell indices); the client
        keeps the cells' shapes (and rates and scales under the learned prior), so it also
        receives those of the batch's cells at a step and of every cell at an evaluation
        (O(cells x K)).
    total_count, largest_count
        The sum and the largest of the counts (batch VB; 0 for SVI), what the ELBO's
        rounding depends on (`_model.warn_elbo_rounding`).

    Methods
    -------
    gather()
        The final q with the cells' arrays computed into numpy arrays.
    """

    params: VariationalParams
    elbo_trace: np.ndarray
    elbo_iter: np.ndarray
    n_iter: int
    converged: bool
    gathered_bytes: list[int] = field(default_factory=list)
    sent_bytes: list[int] = field(default_factory=list)
    total_count: float = 0.0
    largest_count: float = 0.0

    def __repr__(self) -> str:  # shapes, not every number (`_utils.fields_repr`)
        return fields_repr(self)

    @property
    def cell_factors(self):
        """Posterior mean cell factors ``E[z]`` (cells x K), a dask array."""
        return self.params.row_shape / self.params.row_rate

    @property
    def gene_loadings(self) -> np.ndarray:
        """Posterior mean gene loadings ``E[w]`` (genes x K)."""
        return self.params.col_mean

    def gather(self) -> VariationalParams:
        """The final q with the cells' arrays (shapes; under the learned prior also their
        rates and q(xi)) computed into numpy arrays, by the fit's client (`client=` or the
        default one at the fit) whatever dask's scheduler is now."""
        params = self.params
        scale = params.row_scale
        if scale is None:
            (row_shape,) = compute_dask(params.row_shape)
            return VariationalParams(row_shape, params.row_rate, params.col_shape, params.col_rate)
        row_shape, row_rate, shape, rate = compute_dask(
            params.row_shape, params.row_rate, scale.shape, scale.rate
        )
        return VariationalParams(
            row_shape,
            row_rate,
            params.col_shape,
            params.col_rate,
            scale.with_q(shape, rate),
            params.col_scale,
        )


def _warn_non_integer(info) -> None:
    if any(i[3] for i in info):
        warn_non_counts("X")


@released_on_failure
def fit_batch_dask(
    X,
    n_components: int,
    *,
    prior: Prior,
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
    accelerate: bool = False,
    warn_non_counts: bool = True,
) -> DaskFitResult:
    """Batch VB on a Dask cluster, chunk by chunk of cells (checked settings; the public
    `vbsnmf.fit_dask` checks them). The random start is `_model.random_start`'s, each
    chunk drawing its own cells, so any chunking gives the same fit. ``accelerate``:
    `_batch.squarem` (its trace and passes are those of `_batch.fit_batch_accelerated` in
    memory), else `_batch.fit_batch`'s plain loop; a random start under the learned prior
    holds its factor shapes as there. ``warn_non_counts``: `NonCountWarning` for
    non-integer values (off for the later of ``n_init`` starts: one warning per fit, as
    in memory)."""
    client = get_client(client)
    X = cells_x_genes(X)
    prefix = f"vbsnmf-{uuid.uuid4().hex[:12]}"
    chunk_sizes = X.chunks[0]
    layout = Layout.of(client, len(chunk_sizes))
    chunk_data = build_chunks(client, layout, partial(chunk_count_data, fit_dtype=dtype), X)
    info = client.gather(
        client.map(
            _chunk_info, chunk_data, key=[f"{prefix}-info-{i}" for i in range(len(chunk_data))]
        )
    )
    n_cells, n_genes = int(sum(i[0] for i in info)), int(info[0][1])
    if warn_non_counts:
        _warn_non_integer(info)
    learned = isinstance(prior, HierarchicalPrior)

    # The client's side of q: the genes, and the cells' rates (fixed prior) or their
    # hyperparameters (learned prior); each chunk holds the rest of its cells' q.
    cell_rate = gene_scale = cell_hyper = None
    if init is not None:
        init = _client_side_in_memory(init, learned)
        cells = _start_cells(init, chunk_sizes, client, layout, prefix)
        gene_shape, gene_rate, cell_rate = init.col_shape, init.col_rate, init.row_rate
        if learned:
            cell_hyper, gene_scale = _without_q(init.row_scale), init.col_scale
    elif learned:
        total = float(sum(i[2] for i in info))
        cells, gene_shape, gene_rate, gene_scale, cell_hyper = _learned_start(
            client,
            layout,
            chunk_data,
            chunk_sizes,
            prior,
            n_components,
            entropy,
            dtype,
            start,
            total,
            prefix,
        )
    else:
        total = sum(i[2] for i in info)
        cell_rate = start_rate((n_cells, n_genes), total, n_components, dtype)
        gene_rate = cell_rate.copy()
        gene_shape = random_shapes(entropy, 1, 0, n_genes, n_components, dtype, start)
        first_cells = np.concatenate([[0], np.cumsum(chunk_sizes)])
        cells = [
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
    no_cells = np.empty((0, n_components), dtype=dtype)
    start_q = DaskParams(
        cells,
        1.0,
        VariationalParams(
            no_cells,
            no_cells if learned else cell_rate,
            gene_shape,
            gene_rate,
            cell_hyper,
            gene_scale,
        ),
    )
    model = _DaskModel(client, layout, chunk_data, chunk_sizes, prior, n_threads, dtype, prefix)
    if accelerate:
        state = start_accelerated(start_q, init is None and held_prior(prior) is not None)
        state = squarem(
            state,
            model.scored,
            model.step,
            prior,
            max_iter=max_iter,
            tol=tol,
            callback=model.with_params(callback),
            verbose=verbose,
            step_length=model.step_length,
            extrapolate=model.extrapolate,
        )
        final, trace, iters, n_iter, converged = state.outcome()
    else:
        final, trace, iters, converged = plain_ascent(
            start_q, model.scored, model.step, prior, max_iter=max_iter, tol=tol,
            hold_shapes=init is None, callback=model.with_params(callback), verbose=verbose,
        )  # fmt: skip
        n_iter = len(trace)
        trace, iters = trace_arrays(trace, iters)
    return DaskFitResult(
        model.params(final),
        trace,
        iters,
        n_iter,
        converged,
        model.gathered_bytes,
        model.sent_bytes,
        float(sum(i[2] for i in info)),
        max(i[4] for i in info),
    )


@dataclass
class DaskParams:
    """A q on the cluster: per chunk a future of its cells' q (the shapes; under the learned
    prior ``(shape, rate, scale shape, scale rate)``), stored before the gauge ``factor``
    of the step that made them applies (`_model.rescale_side`; each chunk applies it in its
    next pass), and the client's side (`_model.VariationalParams` with no cell rows: the
    genes, and the cells' rate or hyperparameters). ``gauged``: the cells with the gauge
    applied, set by the pass that scores this q."""

    cells: list
    factor: float
    client: VariationalParams
    gauged: list | None = None


def _gauged(cells, factor: float, hyper: ScaleState):
    """A chunk's stored cells under the learned prior, ``(shape, rate, scale shape, scale
    rate)``, with the gauge ``factor`` applied (`_model.rescale_side`; ``hyper``: the cells'
    hyperparameters): ``(shape, rate, q(xi))``. A factor of 1 leaves the arrays as they are
    (dividing by it would copy the same values)."""
    shape, rate, scale_shape, scale_rate = cells
    scale = hyper.with_q(scale_shape, scale_rate)
    if factor != 1.0:
        rate, scale = rescale_side(rate, scale, factor, hyper.prior_mean)
    return shape, rate, scale


def _gauged_cells(cells, factor: float, hyper: ScaleState | None) -> list[np.ndarray]:
    """A chunk's cells of q as positive arrays, the gauge ``factor`` applied (`_gauged`): the
    shapes (fixed prior, ``hyper`` None), or shape, rate, scale shape and scale rate."""
    if hyper is None:
        return [cells]
    shape, rate, scale = _gauged(cells, factor, hyper)
    return [shape, rate, scale.shape, scale.rate]


@one_launch_at_a_time
def _chunk_direction_norms(cells0, cells1, cells2, gauges) -> tuple[float, float]:
    """One chunk's share of SQUAREM's ``(|r|^2, |v|^2)`` (`_batch.direction_norms`);
    ``gauges``: each q's ``(factor, cells' hyperparameters)``."""
    thetas = (cells0, cells1, cells2)
    return direction_norms(*(_gauged_cells(c, *g) for c, g in zip(thetas, gauges)))


@one_launch_at_a_time
def _chunk_extrapolate(cells0, cells1, cells2, gauges, step: float):
    """One chunk's cells of SQUAREM's extrapolated q, gauged (`_batch.extrapolate_arrays`),
    and 1 when an entry is not finite and positive (then no cells), else 0."""
    thetas = (cells0, cells1, cells2)
    arrays = extrapolate_arrays(*(_gauged_cells(c, *g) for c, g in zip(thetas, gauges)), step)
    if arrays is None:
        return None, 1
    return (arrays[0] if len(arrays) == 1 else tuple(arrays)), 0


class _DaskModel:
    """The batch fit's pass and step on the cluster, for `_batch.squarem` and
    `_batch.plain_ascent`: ``scored(q)`` runs the pass over every chunk under q (and the rows'
    half of the step, on the chunks) and returns q's exact ELBO; ``step(q, statistics,
    prior)`` finishes `_model.global_step` on the client. SQUAREM's step length and
    extrapolation run chunk by chunk where the cells are, the client's side on the client.
    Records the bytes the client sends and receives per pass."""

    def __init__(self, client, layout, chunk_data, chunk_sizes, prior, n_threads, dtype, prefix):
        self.client, self.layout = client, layout
        self.chunk_data, self.chunk_sizes = chunk_data, chunk_sizes
        self.prior, self.n_threads, self.dtype = prior, n_threads, dtype
        self.learned = isinstance(prior, HierarchicalPrior)
        self.names = (f"{prefix}-{n}" for n in itertools.count())
        self.gathered_bytes: list[int] = []
        self.sent_bytes: list[int] = []

    def _getitems(self, futures, index, name):
        return [
            self.client.submit(operator.getitem, f, index, key=f"{name}-{i}")
            for i, f in enumerate(futures)
        ]

    def scored(self, q: DaskParams):
        name = next(self.names)
        gene_shape, gene_rate = q.client.col_shape, q.client.col_rate
        next_cell_rate = None
        if self.learned:
            gene_side = (gene_shape, gene_rate, q.client.row_scale, q.factor)
            sent = gene_shape.nbytes + gene_rate.nbytes + q.client.row_scale.factor_shape.nbytes
            self.sent_bytes.append(sent + 24)
            chunk_pass = _chunk_pass_learned
        else:
            next_cell_rate = side_rate(self.prior, q.client.col_mean.sum(axis=0), self.dtype)
            gene_side = (gene_shape, gene_rate, q.client.row_rate, next_cell_rate)
            self.sent_bytes.append(sum(a.nbytes for a in gene_side))
            chunk_pass = _chunk_pass
        gene_future = self.client.submit(as_task, gene_side, key=f"{name}-gene-side")
        outputs = [
            self.client.submit(
                chunk_pass, data, cells, gene_future, self.prior, self.n_threads,
                key=f"{name}-pass-{index}",
            )
            for index, (data, cells) in enumerate(zip(self.chunk_data, q.cells))
        ]  # fmt: skip
        q.gauged = self._getitems(outputs, 0, f"{name}-cells") if self.learned else q.cells
        next_name = f"{name}-next-cells" if self.learned else f"{name}-cell-shape"
        next_cells = self._getitems(outputs, 1 if self.learned else 0, next_name)
        summaries = dict(enumerate(self._getitems(outputs, -1, f"{name}-summary")))
        total = self.client.gather(
            reduce_chunks(self.client, summaries, self.layout, add_summaries, name)
        )
        self.gathered_bytes.append(total.nbytes)
        terms = total.terms.with_cols(gene_shape, gene_rate, self.prior, q.client.col_scale)
        return (next_cells, total, next_cell_rate), terms.value()

    def step(self, q: DaskParams, statistics, prior: Prior) -> DaskParams:
        next_cells, total, next_cell_rate = statistics
        if not self.learned:
            gene_shape, gene_rate = update_side(
                prior, total.gene_stat, total.next_cell_mean_sum, self.dtype
            )
            no_cells = q.client.row_shape
            return DaskParams(
                next_cells, 1.0, VariationalParams(no_cells, next_cell_rate, gene_shape, gene_rate)
            )
        # `_model.global_step` after the rows' update (done by the chunks)
        log_sum = np.empty(total.gene_stat.shape[1])
        gene_shape, gene_rate, gene_scale, _ = update_side_learned(
            total.gene_stat, q.client.col_scale, total.next_cell_mean_sum, self.dtype,
            log_sum=log_sum,
        )  # fmt: skip
        cell_hyper = learn_hyperparameters(total.cell_sums, q.client.row_scale, prior)
        gene_scale = learn_hyperparameters(
            scale_sums(gene_shape, gene_rate, gene_scale, log_sum), gene_scale, prior
        )
        no_cells = q.client.row_shape
        unfixed = VariationalParams(
            no_cells, no_cells, gene_shape, gene_rate, cell_hyper, gene_scale
        )
        return DaskParams(next_cells, gauge_factor(unfixed), fix_gauge(unfixed))

    def _per_chunk(self, function, thetas, *args):
        name = next(self.names)
        gauges = tuple((q.factor, q.client.row_scale) for q in thetas)
        return [
            submit_at(
                self.client, self.layout, index, function, *(q.cells[index] for q in thetas),
                gauges, *args, key=f"{name}-{index}",
            )
            for index in range(len(self.chunk_data))
        ]  # fmt: skip

    def step_length(self, *thetas: DaskParams) -> float:
        r2, v2 = direction_norms(*(q.client.positive_arrays() for q in thetas))
        for chunk_r2, chunk_v2 in self.client.gather(
            self._per_chunk(_chunk_direction_norms, thetas)
        ):  # in chunk order: the same sums wherever tasks ran
            r2 += chunk_r2
            v2 += chunk_v2
        return step_from_norms(r2, v2)

    def extrapolate(self, theta0, theta1, theta2, step: float) -> DaskParams | None:
        thetas = (theta0, theta1, theta2)
        arrays = extrapolate_arrays(*(q.client.positive_arrays() for q in thetas), step)
        if arrays is None:
            return None
        outputs = self._per_chunk(_chunk_extrapolate, thetas, step)
        name = next(self.names)
        if sum(self.client.gather(self._getitems(outputs, 1, f"{name}-refused"))):
            return None
        cells = self._getitems(outputs, 0, f"{name}-cells")
        return DaskParams(cells, 1.0, theta2.client.with_positive_arrays(arrays))

    def params(self, q: DaskParams) -> VariationalParams:
        """q as `_model.VariationalParams`, the cells' arrays lazy dask arrays."""
        n_components, dtype = q.client.col_shape.shape[1], self.dtype
        cells = q.gauged
        if cells is None:  # not scored (a start of max_iter=0): gauged here
            cells = self._per_chunk(_gauged_tuple, (q,))
        if not self.learned:
            shapes = lazy_rows(cells, self.chunk_sizes, n_components, dtype)
            return VariationalParams(
                shapes, q.client.row_rate, q.client.col_shape, q.client.col_rate
            )
        name = next(self.names)
        # q(z) in the fit's dtype, q(xi) (one value per cell) in float64 whatever it is
        parts = [
            lazy_rows(
                self._getitems(cells, i, f"{name}-{i}"),
                self.chunk_sizes,
                n_components if i < 2 else None,
                dtype if i < 2 else np.float64,
            )
            for i in range(4)
        ]
        scale = q.client.row_scale.with_q(parts[2], parts[3])
        return VariationalParams(
            parts[0], parts[1], q.client.col_shape, q.client.col_rate, scale, q.client.col_scale
        )

    def with_params(self, callback):
        """A fit's ``callback(n, params, trace)`` as the loops call it, with a `DaskParams`."""
        if callback is None:
            return None
        return lambda n, q, trace: callback(n, self.params(q), trace)


@one_launch_at_a_time
def _gauged_tuple(cells, gauges):
    """A chunk's cells as the fit stores them (`_per_chunk`'s task for one q), gauged."""
    ((factor, hyper),) = gauges
    arrays = _gauged_cells(cells, factor, hyper)
    return arrays[0] if hyper is None else tuple(arrays)


def _without_q(scale: ScaleState) -> ScaleState:
    """A side's hyperparameters with an empty q(xi) (the client's copy of the cells')."""
    return scale.with_q(np.empty(0), np.empty(0))


def _client_side_in_memory(init: VariationalParams, learned: bool) -> VariationalParams:
    """A given start with the client's side of q computed into numpy (one computation):
    the genes' arrays and scales, the cells' rate (fixed prior) and hyperparameters. Only
    the cells' per-cell arrays stay distributed (`_start_cells`): the client's steps and
    SQUAREM's kernels read numpy (a dask gene side failed in Numba's typing), and a fit of
    ``max_iter=0`` returns this side as the fitted attributes."""

    def client_arrays(params: VariationalParams) -> list:
        arrays = [params.col_shape, params.col_rate]
        if not learned:  # the cells' rate is (K,) under the fixed prior, per cell otherwise
            arrays.append(params.row_rate)
        if params.row_scale is not None:
            arrays.append(params.row_scale.factor_shape)
        if params.col_scale is not None:
            scale = params.col_scale
            arrays += [scale.shape, scale.rate, scale.factor_shape]
        return arrays

    computed = iter(compute_dask(*client_arrays(init)))
    gene_shape, gene_rate = next(computed), next(computed)
    row_rate = init.row_rate if learned else next(computed)
    row_scale = col_scale = None
    if init.row_scale is not None:
        row_scale = dataclasses.replace(init.row_scale, factor_shape=next(computed))
    if init.col_scale is not None:
        col_scale = dataclasses.replace(
            init.col_scale, shape=next(computed), rate=next(computed), factor_shape=next(computed)
        )
    return VariationalParams(init.row_shape, row_rate, gene_shape, gene_rate, row_scale, col_scale)


def _start_cells(init: VariationalParams, chunk_sizes, client, layout, prefix) -> list:
    """Futures of a given start's cells per chunk: their shapes, or under the learned
    prior ``(shape, rate, scale shape, scale rate)``."""
    if init.row_scale is None:
        return start_blocks(init.row_shape, chunk_sizes, client, layout, prefix)
    arrays = (init.row_shape, init.row_rate, init.row_scale.shape, init.row_scale.rate)
    parts = [
        start_blocks(array, chunk_sizes, client, layout, prefix, name=f"init{index}")
        for index, array in enumerate(arrays)
    ]
    return [
        submit_at(client, layout, c, _as_tuple, *blocks, key=f"{prefix}-init-{c}")
        for c, blocks in enumerate(zip(*parts))
    ]


def _as_tuple(*arrays):
    return arrays


def _learned_start(
    client,
    layout,
    chunk_data,
    chunk_sizes,
    prior,
    n_components,
    entropy,
    dtype,
    start,
    total,
    prefix,
):
    """`_model.random_start` under the learned prior: the genes on the client from their
    totals (summed over chunks), each chunk's cells on its worker (`_learned_chunk_start`)
    from the side's `_model.TotalsSummary`. Returns the cells' futures, the genes' q and
    the cells' starting hyperparameters."""
    futures = {
        index: submit_at(client, layout, index, _chunk_totals, data, key=f"{prefix}-totals-{index}")
        for index, data in enumerate(chunk_data)
    }
    totals = client.gather(reduce_chunks(client, futures, layout, _add_totals, f"{prefix}-totals"))
    n_genes = totals.genes.shape[0]
    gene_shape = random_shapes(entropy, 1, 0, n_genes, n_components, dtype, start)
    gene_rate = learned_start_rates(totals.genes, total, n_components, dtype)
    gene_scale = learned_start_scale(gene_shape, gene_rate, totals.genes, total, prior)
    template = start_scale_template(totals.cells, total, n_components, prior)
    first_cells = np.concatenate([[0], np.cumsum(chunk_sizes)])
    cells = [
        submit_at(
            client,
            layout,
            index,
            _learned_chunk_start,
            data,
            entropy,
            int(first_cells[index]),
            n_components,
            dtype,
            start,
            total,
            totals.cells.floor,
            template,
            key=f"{prefix}-init-{index}",
        )
        for index, data in enumerate(chunk_data)
    ]
    return cells, gene_shape, gene_rate, gene_scale, template
