"""Batch variational Bayes on Dask: the engine of `_vb.py` with the cells spread over workers.

The count matrix is a `dask.array` of cells x genes chunked along cells (scipy CSR/COO or
dense chunks, e.g. ``da.from_array`` over a sparse matrix or an ``.h5ad``/zarr store read
lazily by anndata). Nothing of it travels to the client.

Which side is local and which global (model.md's notation, rows = cells = ``z``, columns =
genes = ``w``):

- A chunk owns its cells outright: their nonzeros and their shapes ``alpha^z`` never leave
  the worker. Every chunk needs the whole gene side, which is small (genes x K).
- One pass over a chunk (the same Numba kernel, `_vb.shape_statistics` on the chunk's
  `CountData`) gives the chunk's cells' shape statistics (complete: a cell's nonzeros are all
  in its chunk) and a *partial* gene statistic, summed over chunks on the workers (one sum
  per worker's group of chunks, then a tree over groups; `_Layout`, `_reduce_summaries`).

One iteration, in `_vb.apply_update`'s order:

1. the client sends the gene side ``q(w)`` of iteration t and the cell rate
   ``beta^z_{t+1} = b + sum_j E_t[w_j]`` (it only needs ``E_old[w]``, so the client knows it
   before the pass);
2. each chunk runs updateA on ``q_t``, keeps its new cell shapes ``a + sum_j x phi`` and
   returns its gene statistic (genes x K), ``sum_i E_{t+1}[z_i]`` with the new cell shapes
   and rates (K), and its ELBO terms of ``q_t`` (data term, ``sum_i E_t[z_i]``, KL of q(z));
3. the workers sum those (pure tasks; the client receives one genes x K array) and the
   client sets ``alpha^w = a + sum gene statistics`` and ``beta^w = b + sum_i E_{t+1}[z_i]``.

Like `_vb.fit_vb`, the pass over ``q_t`` also gives the ELBO of ``q_t``, so the trace holds
the exact ELBO of every q held, and it equals the single-machine trace up to the order of
floating-point sums (about 1e-14 relative measured).

Failures: every task is a pure function of its inputs. A chunk's `CountData` derives from
the chunk's source, its cell shapes at iteration t from its shapes at t - 1 and the gene
side of iteration t, which is itself a task holding that iteration's arrays. When a worker
dies, Dask's scheduler recomputes its lost keys along that lineage (back to the source and
the starting values), and the fit continues with the same numbers (the order of the
floating-point sums is fixed by `_Layout` at the start, not by where tasks run). The price:
the scheduler keeps every iteration's gene-side task (genes x K x 2 floats each) while the
fit runs.

`fit_svi_dask` is model.md's cell-minibatch SVI on the same layout: the client draws the
minibatches (the permutations of `_svi.fit_svi_cells`), the workers fit the batch's cells
held by their chunks (`_svi._local_step`) and return genes x K statistics, and the client
takes the natural-gradient step on the gene side. The client also keeps every cell's latest
shapes (cells x K, where the cell's next local fit starts): a step moves only its batch's
rows of them, an evaluation all of them; the counts never move.
"""

from __future__ import annotations

import itertools
import operator
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import scipy.sparse as sp

from . import _vb
from ._estimator import numba_threads
from ._validation import (
    NonCountWarning,
    check_counts,
    check_n_components,
    check_positive,
    warn_user,
)


def _dask_array_module():
    try:
        import dask.array as da
    except ImportError as error:  # pragma: no cover - dask is an optional extra
        raise ImportError(
            "the distributed fit needs dask; install it with pip install 'vbsnmf[dask]'"
        ) from error
    return da


def is_dask_array(X) -> bool:
    """Whether ``X`` is a `dask.array.Array`, without importing dask when it is not loaded."""
    import sys

    module = sys.modules.get("dask.array")
    return module is not None and isinstance(X, module.Array)


def _get_client(client):
    try:
        from distributed import Client, default_client
    except ImportError as error:  # pragma: no cover - dask is an optional extra
        raise ImportError(
            "the distributed fit needs dask.distributed; install it with pip install 'vbsnmf[dask]'"
        ) from error
    if client is None:
        try:
            return default_client()
        except ValueError:
            raise ValueError(
                "no dask.distributed client: pass client=... or create one first, e.g. "
                "Client(LocalCluster()) or Client('tcp://scheduler:8786')"
            ) from None
    if not isinstance(client, Client):
        raise TypeError(f"client must be a distributed.Client, got {type(client)}")
    return client


# -- tasks that run on the workers ---------------------------------------------------------
def _chunk_count_data(block, first_cell: int, fit_dtype=np.float64) -> _vb.CountData:
    """The chunk's counts as the engine stores them (`_vb.as_count_data`: canonical CSR
    along the chunk's longer axis, so the per-thread accumulators are on the shorter one),
    checked for a fit of ``fit_dtype``."""
    try:
        matrix = check_counts(block, warn_non_integer=False, fit_dtype=fit_dtype)
    except ValueError as error:
        raise ValueError(
            f"in the chunk of cells starting at cell {first_cell} (positions within the "
            f"chunk): {error}"
        ) from None
    # A copy: as_count_data canonicalises in place, and the block may be shared.
    return _vb.as_count_data(sp.csr_array(matrix, copy=True))


def _chunk_info(data: _vb.CountData) -> tuple[int, int, float, bool]:
    """``(n_cells, n_genes, total count, holds non-integers)`` of one chunk."""
    counts = data.counts
    return (
        data.shape[0],
        data.shape[1],
        float(counts.sum()),
        bool(np.any(counts != np.round(counts))),
    )


def _random_cell_shapes(seed: int, n_cells: int, n_components: int, dtype) -> np.ndarray:
    """Starting cell shapes ``1 + U(0, 1)``, as `_vb.random_init` draws them."""
    rng = np.random.default_rng(seed)
    return (1.0 + rng.random((n_cells, n_components))).astype(dtype)


def _as_array(value: np.ndarray) -> np.ndarray:
    """Holds a client-side array as a task, so a lost copy is recomputed, not lost."""
    return value


@dataclass
class _PassSummary:
    """What one chunk (or a sum of chunks) returns from a pass: genes x K plus O(K)."""

    gene_stat: np.ndarray  # sum over the chunk's cells of x phi, genes x K
    data_term: float  # sum x log sum_l exp(E[log z] + E[log w]) - lgamma(x + 1), under q_t
    cell_mean_sum: np.ndarray  # sum_i E_t[z_i], K
    cell_kl: float  # sum_i KL(q_t(z_i) || prior)
    next_cell_mean_sum: np.ndarray  # sum_i E_{t+1}[z_i], K

    @property
    def nbytes(self) -> int:
        return (
            self.gene_stat.nbytes + self.cell_mean_sum.nbytes + self.next_cell_mean_sum.nbytes + 16
        )

    def __sizeof__(self) -> int:  # dask.sizeof falls back to sys.getsizeof
        return self.nbytes


def _sum_summaries(*summaries: _PassSummary) -> _PassSummary:
    """Sum of pass summaries, in the order given."""
    first, *rest = summaries
    total = _PassSummary(
        first.gene_stat.copy(),
        first.data_term,
        first.cell_mean_sum.copy(),
        first.cell_kl,
        first.next_cell_mean_sum.copy(),
    )
    for other in rest:
        total.gene_stat += other.gene_stat
        total.data_term += other.data_term
        total.cell_mean_sum += other.cell_mean_sum
        total.cell_kl += other.cell_kl
        total.next_cell_mean_sum += other.next_cell_mean_sum
    return total


def _chunk_pass(
    data: _vb.CountData,
    cell_shape: np.ndarray,
    gene_side: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    prior_shape: float,
    prior_rate: float,
    n_threads: int,
) -> tuple[np.ndarray, _PassSummary]:
    """updateA on one chunk under q_t; returns the chunk's new cell shapes and its summary.

    ``gene_side`` is ``(gene_shape, gene_rate, cell_rate, next_cell_rate)`` of iteration t.
    """
    gene_shape, gene_rate, cell_rate, next_cell_rate = gene_side
    params = _vb.VariationalParams(cell_shape, cell_rate, gene_shape, gene_rate)
    with numba_threads(n_threads) as n_chunks:
        cell_stat, gene_stat, data_term = _vb.shape_statistics(data, params, n_chunks)
    # The cell half of _vb.apply_update: shapes from this pass, rate from E_t[w].
    next_cell_shape = (prior_shape + cell_stat).astype(cell_shape.dtype, copy=False)
    summary = _PassSummary(
        gene_stat=gene_stat.astype(np.float64, copy=False),
        data_term=data_term,
        cell_mean_sum=params.row_mean.sum(axis=0).astype(np.float64),
        cell_kl=_vb.gamma_kl(cell_shape, cell_rate, prior_shape, prior_rate),
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

    @sizeof.register(_vb.CountData)
    def _sizeof_count_data(data: _vb.CountData) -> int:
        return int(data.indptr.nbytes + data.indices.nbytes + data.counts.nbytes)


_register_sizeof()


# -- the client side --------------------------------------------------------------------------
@dataclass
class DaskFitResult:
    """What `fit_dask` returns.

    Attributes
    ----------
    params
        The final q; ``params.row_shape`` (cells x K) is a dask array held on the cluster,
        chunked like the input's cells and in their order; the gene side and both rates
        are numpy arrays on the client.
    elbo_trace
        ELBO (nats) after each iteration, as `_vb.fit_vb` reports it.
    n_iter, converged
        Iterations run and whether ``tol`` was met.
    gathered_bytes, sent_bytes
        Per pass: bytes the client received (the reduced summary) and bytes it put into the
        graph (the gene side and rates). Both are O(genes x K), independent of nonzeros.
    """

    params: _vb.VariationalParams
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

    def gather(self) -> _vb.VariationalParams:
        """The final q with the cell shapes computed into a numpy array."""
        row_shape = np.asarray(self.params.row_shape.compute())
        return _vb.VariationalParams(
            row_shape, self.params.row_rate, self.params.col_shape, self.params.col_rate
        )


def _cells_x_genes(X):
    """``X`` (a dask array, or an AnnData whose ``X`` is one) with one chunk along genes."""
    da = _dask_array_module()
    if not isinstance(X, da.Array) and hasattr(X, "obs_names") and hasattr(X, "X"):
        X = X.X
    if not isinstance(X, da.Array):
        raise TypeError(f"expected a dask array or an AnnData with a dask X, got {type(X)}")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (cells x genes), got shape {X.shape}")
    if any(np.isnan(n) for n in X.shape):
        raise ValueError("X has unknown chunk sizes; call X.compute_chunk_sizes() first")
    if len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})  # a chunk must hold whole cells
    return X


def _checked_start_block(block: np.ndarray) -> np.ndarray:
    """A block of starting cell shapes, refused unless positive and finite (on a worker)."""
    block = np.asarray(block)
    if not np.all(np.isfinite(block)) or np.any(block <= 0):
        raise ValueError("init obs_shape must be positive and finite")
    return block


def _cell_shape_start(init_shape, chunk_sizes, client, layout: _Layout, prefix):
    """Futures of the starting cell shapes per chunk from a numpy or dask array."""
    da = _dask_array_module()
    bounds = np.concatenate([[0], np.cumsum(chunk_sizes)])
    if isinstance(init_shape, da.Array):
        blocks = init_shape.rechunk((tuple(chunk_sizes), -1)).to_delayed()[:, 0]
        futures = [None] * len(blocks)
        for address, group in layout.placed():
            computed = client.compute(
                [blocks[i] for i in group], workers=[address], allow_other_workers=True
            )
            for i, future in zip(group, computed):
                futures[i] = future
        return futures
    return [
        _submit_at(
            client, layout, index, _as_array, init_shape[start:stop], key=f"{prefix}-init-{index}"
        )
        for index, (start, stop) in enumerate(itertools.pairwise(bounds))
    ]


def _checked_init(init, n_cells, n_genes, n_components, dtype):
    """``(cell_shape, cell_rate, gene_shape, gene_rate)`` from ``init``; the cell shape may
    be a dask array (e.g. a previous distributed fit's ``params.row_shape``)."""
    from ._estimator import VBNMF

    names = ("obs_shape", "obs_rate", "var_shape", "var_rate")
    if isinstance(init, VBNMF):
        arrays = tuple(getattr(init, name + "_") for name in names)
    elif isinstance(init, _vb.VariationalParams):
        arrays = init.as_tuple()
    elif isinstance(init, Mapping):
        try:
            arrays = tuple(init[name] for name in names)
        except KeyError as missing:
            raise ValueError(f"init is missing {missing}") from None
    else:
        raise TypeError(f"init must be a VBNMF, VariationalParams or mapping, got {type(init)}")
    expected = ((n_cells, n_components), (n_components,), (n_genes, n_components))
    expected += ((n_components,),)
    checked = []
    for name, array, want in zip(names, arrays, expected):
        if tuple(array.shape) != want:
            raise ValueError(f"init {name} has shape {tuple(array.shape)}, expected {want}")
        if is_dask_array(array):  # too large for the client: checked chunk by chunk
            checked.append(array.astype(dtype).map_blocks(_checked_start_block, dtype=dtype))
            continue
        array = np.array(array, dtype=dtype, copy=True)
        if not np.all(np.isfinite(array)) or np.any(array <= 0):
            raise ValueError(f"init {name} must be positive and finite")
        checked.append(array)
    return tuple(checked)


@dataclass
class _Layout:
    """Which worker each chunk is placed on: contiguous groups of chunks, one per worker
    present at the start of the fit.

    The groups also fix the order of the floating-point sums (within a group in chunk
    order, then a tree over groups), so a fit's numbers depend on the number of workers at
    its start, never on where tasks happen to run, and stay the same when a worker is lost
    (its groups' tasks move elsewhere; placements are preferences, not requirements).
    """

    groups: list[list[int]]
    addresses: list[str]

    @classmethod
    def of(cls, client, n_chunks: int) -> _Layout:
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            raise ValueError("the Dask cluster has no workers; start some before fitting")
        n_groups = min(len(workers), n_chunks)
        groups = [[int(i) for i in part] for part in np.array_split(np.arange(n_chunks), n_groups)]
        return cls(groups, workers[:n_groups])

    def placed(self):
        """``(address, chunk indices)`` per group."""
        return zip(self.addresses, self.groups)

    def address_of(self, chunk: int) -> str:
        return next(a for a, group in self.placed() if chunk in group)


def _submit_at(client, layout: _Layout, chunk: int, function, *args, key: str):
    """``client.submit`` preferring the worker that holds ``chunk``."""
    return client.submit(
        function,
        *args,
        key=key,
        workers=[layout.address_of(chunk)],
        allow_other_workers=True,
    )


def _build_chunks(client, layout: _Layout, builder, X) -> list:
    """Futures of ``builder(block, first_cell)`` per chunk of cells, placed by ``layout``;
    pure, so a lost chunk is rebuilt from its source."""
    import dask

    first_cells = np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]])
    build = dask.delayed(builder, pure=True)
    blocks = X.to_delayed()[:, 0]
    futures = [None] * len(blocks)
    for address, group in layout.placed():
        computed = client.compute(
            [build(blocks[i], int(first_cells[i])) for i in group],
            workers=[address],
            allow_other_workers=True,
        )
        for i, future in zip(group, computed):
            futures[i] = future
    return futures


def _reduce_summaries(client, summaries: dict, layout: _Layout, prefix: str):
    """Sum the chunks' summaries (``{chunk index: future}``) on the workers; one future.

    One sum per group on the worker holding it (in chunk order, no transfer), then a
    pairwise tree over groups: the bytes moved are O(workers x genes x K) whatever the
    number of chunks and nonzeros, and the client receives genes x K once.
    """
    level = [
        client.submit(
            _sum_summaries,
            *(summaries[i] for i in group if i in summaries),
            key=f"{prefix}-sum-g{number}",
            workers=[address],
            allow_other_workers=True,
        )
        for number, (address, group) in enumerate(layout.placed())
        if any(i in summaries for i in group)
    ]
    depth = 0
    while len(level) > 1:
        level = [
            client.submit(_sum_summaries, *level[i : i + 2], key=f"{prefix}-sum{depth}-{i}")
            for i in range(0, len(level), 2)
        ]
        depth += 1
    return level[0]


def fit_dask(
    X,
    n_components: int = 10,
    *,
    init=None,
    prior_shape: float = 1.0,
    prior_rate: float = 1.0,
    max_iter: int = 200,
    tol: float = 1e-5,
    random_state=None,
    dtype=np.float64,
    n_threads: int = 1,
    client=None,
    callback: Callable[[int, _vb.VariationalParams, list[float]], None] | None = None,
    verbose: bool = False,
) -> DaskFitResult:
    """Batch VB on a Dask cluster, chunk by chunk of cells; same numbers as `VBNMF.fit`.

    Parameters
    ----------
    X
        Counts, cells x genes: a `dask.array.Array` chunked along cells (scipy sparse or
        dense chunks) or an AnnData whose ``X`` is one. Gene chunks are merged.
    n_components
        Number of factors K.
    init
        Starting q: a `VariationalParams` (rows = cells), a fitted `VBNMF` or a mapping
        with keys ``obs_shape``, ``obs_rate``, ``var_shape``, ``var_rate``. ``obs_shape``
        may be a dask array. Default: random, as `VBNMF` draws it (seeded by
        ``random_state``; the cell shapes drawn per chunk on the workers).
    prior_shape, prior_rate, max_iter, tol, dtype
        As in `VBNMF`.
    n_threads
        Numba threads inside each chunk task (Dask's worker threads already run chunks in
        parallel, so 1 avoids oversubscription).
    client
        A `distributed.Client`; default: the current default client.
    callback
        ``callback(n_iter, params, elbo_trace)`` after every iteration; ``params.row_shape``
        is a dask array on the cluster.
    verbose
        Print the ELBO after every iteration.

    Returns
    -------
    DaskFitResult
        The final q (cell shapes stay on the cluster as a dask array), the ELBO trace and
        the bytes moved per pass.

    Raises
    ------
    ValueError
        No client, bad parameters, or negative/NaN/infinite counts in a chunk.
    """
    import dask

    da = _dask_array_module()
    client = _get_client(client)
    X = _cells_x_genes(X)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be np.float32 or np.float64, got {dtype!r}")
    prior_shape = check_positive(prior_shape, "prior_shape")
    prior_rate = check_positive(prior_rate, "prior_rate")
    n_components = check_n_components(n_components, X.shape)
    for name, value in (("max_iter", max_iter), ("n_threads", n_threads)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    if max_iter < 0 or n_threads < 1:
        raise ValueError(f"need max_iter >= 0 and n_threads >= 1, got {max_iter}, {n_threads}")
    tol = float(tol)
    if not np.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    prefix = f"vbsnmf-{uuid.uuid4().hex[:12]}"

    # The chunks' CountData, built and kept on the workers (keys derived from the source).
    chunk_sizes = X.chunks[0]
    layout = _Layout.of(client, len(chunk_sizes))
    chunk_data = _build_chunks(client, layout, partial(_chunk_count_data, fit_dtype=dtype), X)
    info = client.gather(
        client.map(
            _chunk_info, chunk_data, key=[f"{prefix}-info-{i}" for i in range(len(chunk_data))]
        )
    )
    n_cells, n_genes = int(sum(i[0] for i in info)), int(info[0][1])
    if any(i[3] for i in info):
        warn_user(
            "X holds non-integer values; vbsnmf's Poisson model expects raw counts "
            "(not normalised or log-transformed data).",
            NonCountWarning,
        )

    if init is not None:
        cell_shape0, cell_rate, gene_shape, gene_rate = _checked_init(
            init, n_cells, n_genes, n_components, dtype
        )
    else:
        rng = np.random.default_rng(random_state)
        mean_count = max(sum(i[2] for i in info) / (n_cells * n_genes), 1e-12)
        rate = np.full(n_components, 1.5 / np.sqrt(mean_count / n_components), dtype=dtype)
        gene_shape = (1.0 + rng.random((n_genes, n_components))).astype(dtype)
        cell_rate, gene_rate = rate, rate.copy()
        cell_shape0 = None
        seeds = rng.integers(0, 2**63 - 1, size=len(chunk_sizes))
    if cell_shape0 is not None:
        cell_shapes = _cell_shape_start(cell_shape0, chunk_sizes, client, layout, prefix)
    else:
        cell_shapes = [
            _submit_at(
                client,
                layout,
                index,
                _random_cell_shapes,
                int(seed),
                int(size),
                n_components,
                dtype,
                key=f"{prefix}-init-{index}",
            )
            for index, (seed, size) in enumerate(zip(seeds, chunk_sizes))
        ]

    def current_params():
        blocks = [
            da.from_delayed(dask.delayed(f), (int(size), n_components), dtype=dtype)
            for f, size in zip(cell_shapes, chunk_sizes)
        ]
        return _vb.VariationalParams(
            da.concatenate(blocks, axis=0), cell_rate, gene_shape, gene_rate
        )

    trace: list[float] = []
    gathered_bytes: list[int] = []
    sent_bytes: list[int] = []
    n_done, converged = 0, False
    while True:
        step = f"{prefix}-{n_done}"
        next_cell_rate = (prior_rate + (gene_shape / gene_rate).sum(axis=0)).astype(dtype)
        gene_side = (gene_shape, gene_rate, cell_rate, next_cell_rate)
        gene_future = client.submit(_as_array, gene_side, key=f"{step}-gene-side")
        sent_bytes.append(sum(a.nbytes for a in gene_side))
        outputs = [
            client.submit(
                _chunk_pass,
                data,
                shape,
                gene_future,
                prior_shape,
                prior_rate,
                n_threads,
                key=f"{step}-pass-{index}",
            )
            for index, (data, shape) in enumerate(zip(chunk_data, cell_shapes))
        ]
        next_shapes = [
            client.submit(operator.getitem, out, 0, key=f"{step}-cell-shape-{index}")
            for index, out in enumerate(outputs)
        ]
        summaries = [
            client.submit(operator.getitem, out, 1, key=f"{step}-summary-{index}")
            for index, out in enumerate(outputs)
        ]
        total = client.gather(_reduce_summaries(client, dict(enumerate(summaries)), layout, step))
        del outputs, summaries, gene_future
        gathered_bytes.append(total.nbytes)
        if n_done > len(trace):
            gene_mean = gene_shape / gene_rate
            trace.append(
                total.data_term
                - float(total.cell_mean_sum @ gene_mean.sum(axis=0))
                - total.cell_kl
                - _vb.gamma_kl(gene_shape, gene_rate, prior_shape, prior_rate)
            )
            if verbose:
                print(f"iteration {n_done:4d}  ELBO {trace[-1]:.10g}", flush=True)
            if callback is not None:
                callback(n_done, current_params(), trace)
            if _vb.has_converged(trace, tol):
                converged = True
                break
        if n_done >= max_iter:
            break
        # The gene half of _vb.apply_update: shapes from the summed statistics, rate from
        # the new cell means.
        gene_shape = (prior_shape + total.gene_stat).astype(dtype, copy=False)
        gene_rate = (prior_rate + total.next_cell_mean_sum).astype(dtype)
        cell_rate, cell_shapes = next_cell_rate, next_shapes
        n_done += 1
    if not converged and max_iter > 0:
        warn_user(
            f"VB stopped after max_iter={max_iter} iterations before the relative ELBO "
            f"change fell below tol={tol}; raise max_iter or tol.",
            _vb.ConvergenceWarning,
        )
    return DaskFitResult(
        current_params(),
        np.asarray(trace, dtype=np.float64),
        len(trace),
        converged,
        gathered_bytes,
        sent_bytes,
    )


def fit_estimator(estimator, X, *, init=None, callback=None):
    """`VBNMF.fit_transform` for a dask array: `fit_dask` with the estimator's parameters,
    best of ``n_init`` random starts; sets the fitted attributes (``obs_shape_`` stays a
    dask array on the cluster) and returns ``E[z]`` as a dask array."""
    checked = estimator._check_params()
    X = _cells_x_genes(X)
    # Dask's worker threads parallelise over chunks; n_threads is the Numba threads per chunk.
    n_threads = 1 if estimator.n_threads is None else estimator.n_threads
    if getattr(estimator, "checkpoint", None) is not None:
        raise ValueError(
            "checkpoints are not supported for a dask X (a lost worker is "
            "recomputed by Dask instead)"
        )
    if checked.get("method", "batch") == "svi":
        return _fit_estimator_svi(estimator, X, checked, init, callback, n_threads)
    rng = np.random.default_rng(estimator.random_state)
    n_starts = 1 if init is not None else estimator.n_init
    best = None
    for _ in range(n_starts):
        result = fit_dask(
            X,
            estimator.n_components,
            init=init,
            prior_shape=checked["prior_shape"],
            prior_rate=checked["prior_rate"],
            max_iter=estimator.max_iter,
            tol=checked["tol"],
            random_state=rng,
            dtype=checked["dtype"],
            n_threads=n_threads,
            callback=callback,
            verbose=estimator.verbose,
        )
        final = result.elbo_trace[-1] if result.n_iter else -np.inf
        if best is None or final > best[0]:
            best = (final, result)
    result = best[1]
    estimator.n_features_in_ = X.shape[1]
    estimator._set_fitted(
        _vb.FitResult(result.params, result.elbo_trace, result.n_iter, result.converged)
    )
    return result.cell_factors


# -- stochastic VI across workers (cell minibatches, model.md's second SVI form) ------------
def _chunk_rows(block, first_cell: int, fit_dtype=np.float64) -> sp.csr_array:
    """The chunk as canonical float64 CSR of cells, from which minibatch rows are cut."""
    data = _chunk_count_data(block, first_cell, fit_dtype)  # validated, canonical
    major_shape = data.shape if data.major == 0 else data.shape[::-1]
    csr = sp.csr_array((data.counts, data.indices, data.indptr), shape=major_shape)
    return csr if data.major == 0 else csr.T.tocsr()


def _total_count(rows: sp.csr_array) -> float:
    return float(rows.data.sum())


def _chunk_svi_statistics(
    rows, local_cells, gene_side, settings, start_shape
) -> tuple[np.ndarray, _PassSummary]:
    """The local step of `_svi.svi_step_cells` on the chunk's cells ``local_cells``: their
    factors fitted with the gene side fixed, from ``start_shape``; returns their new
    shapes and their gene statistic and ``sum E[z]``."""
    from . import _svi

    gene_shape, gene_rate = gene_side
    with numba_threads(settings.n_chunks):
        cell_shape, cell_rate, gene_stat, data_term = _svi._local_step(
            rows[local_cells], gene_shape, gene_rate, settings, start_shape
        )
    return cell_shape, _PassSummary(
        gene_stat=gene_stat.astype(np.float64, copy=False),
        data_term=data_term,
        cell_mean_sum=(cell_shape / cell_rate).sum(axis=0).astype(np.float64),
        cell_kl=_vb.gamma_kl(cell_shape, cell_rate, settings.prior_shape, settings.prior_rate),
        next_cell_mean_sum=np.zeros(gene_shape.shape[1]),
    )


def _chunk_svi_evaluation(
    rows, gene_side, settings, chunk_shape
) -> tuple[np.ndarray, _PassSummary]:
    """Every cell of the chunk at its optimum given the gene side, in the blocks of
    `_svi.evaluate_cells` and from ``chunk_shape``; returns the cell shapes and the chunk's
    ELBO terms."""
    from . import _svi

    gene_shape, gene_rate = gene_side
    n_cells, n_components = rows.shape[0], gene_shape.shape[1]
    cell_shape = np.empty((n_cells, n_components), dtype=gene_shape.dtype)
    data_term, cell_mean_sum, cell_kl = 0.0, np.zeros(n_components), 0.0
    for start in range(0, n_cells, _svi.EVAL_CHUNK_CELLS):
        stop = min(start + _svi.EVAL_CHUNK_CELLS, n_cells)
        with numba_threads(settings.n_chunks):
            block_shape, cell_rate, _, block_data_term = _svi._local_step(
                rows[start:stop], gene_shape, gene_rate, settings, chunk_shape[start:stop]
            )
        cell_shape[start:stop] = block_shape
        data_term += block_data_term
        cell_mean_sum += (block_shape / cell_rate).sum(axis=0)
        cell_kl += _vb.gamma_kl(block_shape, cell_rate, settings.prior_shape, settings.prior_rate)
    # An evaluation has no gene statistic: empty arrays keep the summary small.
    empty = np.zeros((0, n_components))
    return cell_shape, _PassSummary(empty, data_term, cell_mean_sum, cell_kl, np.zeros(0))


def fit_svi_dask(
    X,
    n_components: int = 10,
    *,
    batch_size: int = 1024,
    tau: float = 1.0,
    kappa: float = 0.7,
    n_epochs: int = 10,
    eval_every: int = 1,
    tol: float = 1e-4,
    local_max_iter: int = 100,
    local_tol: float = 1e-4,
    prior_shape: float = 1.0,
    prior_rate: float = 1.0,
    random_state=None,
    dtype=np.float64,
    n_threads: int = 1,
    client=None,
    callback: Callable[[int, _vb.VariationalParams, list[float]], None] | None = None,
) -> DaskFitResult:
    """Cell-minibatch SVI on a Dask cluster, step for step the algorithm of
    `_svi.fit_svi_cells` (model.md's second form).

    Each epoch the client draws a permutation of all cells (the same generator calls as the
    single-machine fit); a minibatch's cells are fitted on the workers that hold them,
    starting from their previous optimum (the client keeps every cell's latest shapes and
    sends the batch's rows), each chunk returning its share of the gene statistic (genes x
    K) and ``sum E[z]``; the client takes the natural-gradient step on the gene side with
    the statistics scaled by C / |batch| and blends it with ``rho_t = (t + tau)^(-kappa)``.
    Every ``eval_every`` epochs (and after the last) each chunk fits all its cells to the
    gene side and returns its ELBO terms; the cell side returned is that of the last
    evaluation.

    Parameters
    ----------
    X, n_components, prior_shape, prior_rate, random_state, dtype, n_threads, client
        As in `fit_dask`.
    batch_size, tau, kappa, n_epochs, eval_every, tol, local_max_iter, local_tol
        As in `_svi.SVISettings`: cells per minibatch, the step size ``(t + tau)^-kappa``,
        epochs, epochs between ELBO evaluations, the relative ELBO change that stops the
        fit, and the limits of each cell's local fit.
    callback
        ``callback(epoch, params, elbo_trace)`` after every epoch.

    Returns
    -------
    DaskFitResult
        The ELBO trace has one entry per evaluation; ``params.row_shape`` (a dask array) is
        the last evaluation's cell side.

    Raises
    ------
    ValueError
        Bad settings, no client, or bad counts in a chunk.
    """
    import dask

    from . import _svi

    da = _dask_array_module()
    client = _get_client(client)
    X = _cells_x_genes(X)
    dtype = np.dtype(dtype)
    n_components = check_n_components(n_components, X.shape)
    settings = _svi.SVISettings(
        prior_shape=check_positive(prior_shape, "prior_shape"),
        prior_rate=check_positive(prior_rate, "prior_rate"),
        batch_size=int(batch_size),
        tau=float(tau),
        kappa=float(kappa),
        n_epochs=int(n_epochs),
        eval_every=int(eval_every),
        tol=float(tol),
        local_max_iter=int(local_max_iter),
        local_tol=float(local_tol),
        n_chunks=int(n_threads),
    )
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be np.float32 or np.float64, got {dtype!r}")
    counts = (settings.batch_size, settings.eval_every, settings.n_epochs, settings.n_chunks)
    if min(counts) < 1 or settings.local_max_iter < 1:
        raise ValueError(
            "need batch_size, eval_every, n_epochs, n_threads and local_max_iter >= 1, got "
            f"{batch_size}, {eval_every}, {n_epochs}, {n_threads}, {local_max_iter}"
        )
    if not (0.5 < settings.kappa <= 1.0) or settings.tau < 0:
        raise ValueError(f"need kappa in (0.5, 1] and tau >= 0, got {kappa}, {tau}")
    prefix = f"vbsnmf-svi-{uuid.uuid4().hex[:12]}"
    chunk_sizes = X.chunks[0]
    bounds = np.concatenate([[0], np.cumsum(chunk_sizes)])
    layout = _Layout.of(client, len(chunk_sizes))
    chunk_rows = _build_chunks(client, layout, partial(_chunk_rows, fit_dtype=dtype), X)
    totals = client.gather(
        client.map(
            _total_count,
            chunk_rows,
            key=[f"{prefix}-total-{i}" for i in range(len(chunk_rows))],
        )
    )
    n_cells, n_genes = X.shape
    # The gene side as _svi.init_cells_state draws it (same generator calls).
    rng = np.random.default_rng(random_state)
    mean_count = max(sum(totals) / (float(n_cells) * n_genes), 1e-12)
    gene_rate = np.full(n_components, 1.5 / np.sqrt(mean_count / n_components), dtype=dtype)
    gene_shape = (1.0 + rng.random((n_genes, n_components))).astype(dtype)
    batch_size = min(settings.batch_size, n_cells)
    trace: list[float] = []
    gathered_bytes: list[int] = []
    sent_bytes: list[int] = []
    # Every cell's latest local optimum, where its next local fit starts (as
    # _svi.init_cells_state: shape a + 1 before the first visit). Held by the client like
    # the gene side: a step sends and receives only its batch's rows, and no task depends
    # on an earlier step's, so the graph's lineage stays one step deep.
    latest_shape = np.full((n_cells, n_components), settings.prior_shape + 1.0, dtype=dtype)
    cell_shapes = []  # futures of the last evaluation's shapes per chunk
    cell_rate = None  # set by the first evaluation
    step, epoch, converged = 0, 0, False

    def cell_array():
        """The cell shapes as one dask array; None before the first evaluation."""
        if cell_rate is None:
            return None
        blocks = [
            da.from_delayed(dask.delayed(f), (int(size), n_components), dtype=dtype)
            for f, size in zip(cell_shapes, chunk_sizes)
        ]
        return da.concatenate(blocks, axis=0)

    def summed(futures: dict, key):
        total = client.gather(_reduce_summaries(client, futures, layout, key))
        gathered_bytes.append(total.nbytes)
        return total

    while epoch < settings.n_epochs and not converged:
        order = rng.permutation(n_cells)
        for start in range(0, n_cells, batch_size):
            batch = np.sort(order[start : start + batch_size])
            step += 1
            rho = _svi.learning_rate(step, settings.tau, settings.kappa)
            key = f"{prefix}-step{step}"
            gene_future = client.submit(_as_array, (gene_shape, gene_rate), key=f"{key}-gene")
            sent_bytes.append(gene_shape.nbytes + gene_rate.nbytes + batch.nbytes)
            cuts = np.searchsorted(batch, bounds)
            active = [c for c in range(len(chunk_sizes)) if cuts[c + 1] > cuts[c]]
            outputs = {
                c: client.submit(
                    _chunk_svi_statistics,
                    chunk_rows[c],
                    batch[cuts[c] : cuts[c + 1]] - bounds[c],
                    gene_future,
                    settings,
                    latest_shape[batch[cuts[c] : cuts[c + 1]]],
                    key=f"{key}-chunk-{c}",
                )
                for c in active
            }
            statistics = {
                c: client.submit(operator.getitem, out, 1, key=f"{key}-summary-{c}")
                for c, out in outputs.items()
            }
            total = summed(statistics, key)
            batch_shapes = [
                client.submit(operator.getitem, out, 0, key=f"{key}-shape-{c}")
                for c, out in outputs.items()
            ]
            latest_shape[batch] = np.concatenate(client.gather(batch_shapes))
            gathered_bytes[-1] += latest_shape[batch].nbytes
            scale = n_cells / len(batch)
            # _svi.svi_step_cells's blend, with the batch's statistics summed over chunks.
            gene_shape = (
                (1.0 - rho) * gene_shape + rho * (settings.prior_shape + scale * total.gene_stat)
            ).astype(dtype, copy=False)
            gene_rate = (
                (1.0 - rho) * gene_rate + rho * (settings.prior_rate + scale * total.cell_mean_sum)
            ).astype(dtype, copy=False)
            if not (np.all(np.isfinite(gene_shape)) and np.all(np.isfinite(gene_rate))):
                raise FloatingPointError(
                    "an SVI step produced non-finite gene parameters; raise tau or batch_size"
                )
        epoch += 1
        last_epoch = epoch >= settings.n_epochs
        if epoch % settings.eval_every == 0 or last_epoch:
            key = f"{prefix}-eval{epoch}"
            gene_future = client.submit(_as_array, (gene_shape, gene_rate), key=f"{key}-gene")
            outputs = [
                client.submit(
                    _chunk_svi_evaluation,
                    rows,
                    gene_future,
                    settings,
                    latest_shape[bounds[c] : bounds[c + 1]],
                    key=f"{key}-chunk-{c}",
                )
                for c, rows in enumerate(chunk_rows)
            ]
            summaries = {
                c: client.submit(operator.getitem, out, 1, key=f"{key}-summary-{c}")
                for c, out in enumerate(outputs)
            }
            total = summed(summaries, key)
            cell_shapes = [
                client.submit(operator.getitem, out, 0, key=f"{key}-cell-shape-{c}")
                for c, out in enumerate(outputs)
            ]
            cell_rate = (prior_rate + (gene_shape / gene_rate).sum(axis=0)).astype(dtype)
            trace.append(
                total.data_term
                - float(total.cell_mean_sum @ (gene_shape / gene_rate).sum(axis=0))
                - total.cell_kl
                - _vb.gamma_kl(gene_shape, gene_rate, settings.prior_shape, settings.prior_rate)
            )
            if _vb.has_converged(trace, settings.tol):
                converged = True
            elif not last_epoch:  # the next epoch's local fits start from this evaluation
                latest_shape = np.concatenate(client.gather(cell_shapes))
                gathered_bytes[-1] += latest_shape.nbytes
        if callback is not None:
            params = _vb.VariationalParams(cell_array(), cell_rate, gene_shape, gene_rate)
            callback(epoch, params, trace)
    if not converged and settings.n_epochs > 0:
        warn_user(
            f"SVI stopped after n_epochs={settings.n_epochs} epochs before the relative ELBO "
            f"change fell below tol={settings.tol}; raise n_epochs or tol.",
            _vb.ConvergenceWarning,
        )
    if cell_rate is None:  # n_epochs=0: no evaluation ran
        raise ValueError("n_epochs must be >= 1")
    blocks = [
        da.from_delayed(dask.delayed(f), (int(size), n_components), dtype=dtype)
        for f, size in zip(cell_shapes, chunk_sizes)
    ]
    params = _vb.VariationalParams(da.concatenate(blocks, axis=0), cell_rate, gene_shape, gene_rate)
    return DaskFitResult(
        params,
        np.asarray(trace, dtype=np.float64),
        len(trace),
        converged,
        gathered_bytes,
        sent_bytes,
    )


def _fit_estimator_svi(estimator, X, checked, init, callback, n_threads):
    """`VBNMF(method="svi")` on a dask array: `fit_svi_dask` with the settings the
    single-machine cells form uses (local fits to ``tol`` within ``max_iter`` passes)."""
    from . import _svi

    if checked["svi_form"] != "cells":
        raise ValueError(
            f"a dask X is fitted by the cells form of SVI, not svi_form={checked['svi_form']!r}"
        )
    if init is not None:
        raise ValueError("init is not supported for method='svi' on a dask X")
    batch_size = checked["batch_size"] or _svi.default_batch_size("cells", X.shape[0], 0)
    result = fit_svi_dask(
        X,
        estimator.n_components,
        batch_size=batch_size,
        tau=float(estimator.tau),
        kappa=float(estimator.kappa),
        n_epochs=estimator.n_epochs,
        eval_every=estimator.eval_every,
        tol=checked["tol"],
        local_max_iter=max(estimator.max_iter, 1),
        local_tol=checked["tol"],
        prior_shape=checked["prior_shape"],
        prior_rate=checked["prior_rate"],
        random_state=estimator.random_state,
        dtype=checked["dtype"],
        n_threads=n_threads,
        callback=callback,
    )
    estimator.n_features_in_ = X.shape[1]
    estimator._set_fitted(
        _vb.FitResult(result.params, result.elbo_trace, result.n_iter, result.converged)
    )
    return result.cell_factors
