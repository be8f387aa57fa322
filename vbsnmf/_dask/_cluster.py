"""Cluster plumbing shared by the Dask drivers: the client, where chunks live, and sums.

Nothing here knows the model. A chunk of cells is built once on the worker that will keep
it (`build_chunks`), tasks that use it are placed there (`submit_at`), and per-chunk results
are summed on the workers in a fixed order (`reduce_chunks`), so the client receives one
genes x K array per pass and the floating-point order does not depend on where tasks ran.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
import traceback
from dataclasses import dataclass
from functools import partial

import numpy as np
import scipy.sparse as sp

from .. import _utils


def released_on_failure(driver):
    """``driver`` (a fit on the cluster) whose failure releases the futures it made.

    distributed keeps an erred task's exception with its future; raising it through the
    driver added the driver's frames to that exception's traceback (and distributed's
    gather frames to the traceback of the exception it was raised from), and those frames
    hold the fit's futures (the chunks' counts and summaries), so the workers kept them
    for as long as the client lived. Clearing the finished frames' locals of every
    exception in the chain before it leaves breaks that cycle (at the price of those
    locals in a post-mortem debugger).
    """

    @functools.wraps(driver)
    def run(*args, **kwargs):
        try:
            return driver(*args, **kwargs)
        except BaseException as error:
            _clear_chained_frames(error)
            raise

    return run


def _clear_chained_frames(error: BaseException) -> None:
    """`traceback.clear_frames` on ``error`` and the exceptions it was raised from or
    during (frames still running, as the caller's, are skipped by it)."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        pending += [current.__cause__, current.__context__]


# vbsnmf is installed from its repository, not from PyPI: "pip install 'vbsnmf[dask]'"
# would fetch whatever PyPI holds under that name, so the advice names the packages.
DASK_INSTALL = (
    "install it with python -m pip install 'dask[array]>=2024.1' 'distributed>=2024.1' "
    "(the [dask] extra: python -m pip install -e '.[dask]' in vbsnmf's repository)"
)


def dask_array_module():
    try:
        import dask.array as da
    except ImportError as error:  # pragma: no cover - dask is an optional extra
        raise ImportError(f"the distributed fit needs dask; {DASK_INSTALL}") from error
    return da


def get_client(client):
    """``client``, or the default client when None; a clear error when there is none."""
    try:
        from distributed import Client, default_client
    except ImportError as error:  # pragma: no cover - dask is an optional extra
        raise ImportError(f"the distributed fit needs dask.distributed; {DASK_INSTALL}") from error
    if client is None:
        try:
            return default_client()
        except ValueError:
            raise ValueError(
                "no dask.distributed client: create one first, e.g. Client(LocalCluster()) "
                "or Client('tcp://scheduler:8786') (fit_dask and fit_svi_dask also take "
                "client=)"
            ) from None
    if not isinstance(client, Client):
        raise TypeError(f"client must be a distributed.Client, got {type(client)}")
    if client.status in ("closing", "closed"):  # it fails deep in distributed otherwise
        raise ValueError("the dask.distributed client is closed: create a new one")
    return client


def cells_x_genes(X, name: str = "X"):
    """``X`` (a dask array, or an AnnData whose ``X`` is one) with one chunk along genes;
    ``name``: how the checks of its source (a closed file, a closed client) name it."""
    da = dask_array_module()
    on_disk = _on_disk(X)
    if on_disk is not None:  # "in memory" and VBNMF.fit(adata.X) were no answer for these
        raise TypeError(
            f"{on_disk} is read from disk, not a dask array: read its X lazily as one "
            "(anndata.experimental.read_elem_lazy(h5py.File(path)['X'], chunks=(n, -1))), "
            "or stream it by SVI's cells form (VBNMF(solver='svi').fit(path), or "
            "vbsnmf.tl.nmf(adata, solver='svi') for a backed AnnData)"
        )
    if type(X).__module__.split(".")[0] == "zarr":  # zarr is optional: no isinstance
        raise TypeError(
            f"X is a zarr array ({_type_name(X)}), not a dask array: read it lazily as one "
            "with dask.array.from_zarr(X)"
        )
    in_memory = "counts in memory are fitted by VBNMF.fit (or vbsnmf.tl.nmf for an AnnData)"
    if not isinstance(X, da.Array) and hasattr(X, "obs_names") and hasattr(X, "X"):
        if X.X is None:  # the counts in a layer: neither way below would find them
            layers = [f"adata.layers[{name!r}]" for name in X.layers] or ["its counts"]
            raise TypeError(
                f"the AnnData has no X: pass {' or '.join(layers)} as X, or fit it with "
                "vbsnmf.tl.nmf(adata, layer=...)"
            )
        if not isinstance(X.X, da.Array):  # name what was passed: the AnnData, not its X
            raise TypeError(
                f"the AnnData's X is in memory ({_type_name(X.X)}), not a dask array: "
                "fit it with vbsnmf.tl.nmf(adata) or VBNMF.fit(adata.X)"
            )
        X = X.X
    if not isinstance(X, da.Array):
        raise TypeError(
            f"expected a dask array or an AnnData with a dask X, got {_type_name(X)}; " + in_memory
        )
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (cells x genes), got shape {X.shape}")
    if any(np.isnan(n) for n in X.shape):
        raise ValueError("X has unknown chunk sizes; call X.compute_chunk_sizes() first")
    refuse_closed_source(X, name)
    futures_holder(X, name)  # a closed one is named here, before a chunk is read
    if len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})  # a chunk must hold whole cells
    cells = tuple(int(n) for n in X.chunks[0] if n > 0)
    if cells and len(cells) < len(X.chunks[0]):
        # empty chunks (a filter's, after compute_chunk_sizes) hold no cells to fit
        X = X.rechunk({0: cells})
    return X


def refuse_closed_source(X, name: str = "X") -> None:
    """A `ValueError` for a dask array that reads an h5py dataset whose file was closed (the
    usual ``with h5py.File(path) as f: X = da.from_array(f["X"])``, fitted after the
    block): distributed failed to send such a graph with "Could not serialize object of
    type _HLGExprSequence", dask's own schedulers with h5py's "identifier is not of
    specified type", neither naming the file. The graph's values are looked at, and the
    arguments of its tasks (``from_array(..., inline_array=True)`` holds the dataset
    there); h5py is looked up among the loaded modules: never imported, X reads none."""
    h5py = sys.modules.get("h5py")
    if h5py is None:
        return
    for value in X.__dask_graph__().values():
        arguments = getattr(value, "args", ())  # a dask Task's; a literal's may be anything
        for held in (value, *(arguments if isinstance(arguments, tuple) else ())):
            if type(held).__name__ == "DataNode":  # dask's wrapper of a literal argument
                held = held.value
            stored = getattr(held, "group", held)  # anndata's backed sparse matrix
            if isinstance(stored, (h5py.Dataset, h5py.Group)) and not stored.id.valid:
                raise ValueError(
                    f"{name} reads an HDF5 file that was closed (a dask array made inside "
                    "'with h5py.File(...)' and used after it): build it again from the "
                    "file opened for the fit's duration, or read it lazily with "
                    "anndata.experimental.read_elem_lazy, which opens the file per chunk"
                )


def futures_holder(X, name: str = "X"):
    """The dask.distributed client holding the futures the dask array ``X`` reads (the
    chunks of ``X.persist()``), or None when it reads none. A closed one, or chunks it
    dropped (``client.restart()``), is a `ValueError` naming ``X`` as ``name``: reading
    them failed with dask's "Missing dependency" or distributed's "lost dependencies"."""
    return _utils.futures_holder(
        X,
        f"{name} reads chunks persisted on a dask.distributed client that is closed, and "
        f"the chunks went with it: build {name} again from its source (persist it, if at "
        "all, on an open client)",
        f"{name} reads chunks persisted on a dask.distributed cluster that dropped them "
        f"since (client.restart() drops every persisted chunk): build {name} again from "
        "its source (and persist it again)",
        f"{name} reads chunks persisted on a dask.distributed client of another process or "
        f"session ({name} was pickled, and a pickle of a persisted dask array keeps the keys "
        f"of the cluster's chunks, not the chunks): build {name} again from its source",
    )


def _on_disk(X) -> str | None:
    """How to name ``X`` when it is data on disk: a path, a backed AnnData or its X (an
    h5py dataset, or anndata's backed sparse matrix, which holds its h5py group)."""
    if isinstance(X, (str, os.PathLike)):
        return f"path {os.fspath(X)!r}"
    if getattr(X, "isbacked", False):
        return "a backed AnnData"
    if hasattr(X, "obs_names"):  # an AnnData in memory, which has a `file` manager too
        return None
    if hasattr(X, "group") or hasattr(X, "file"):
        return "a backed AnnData's X"
    return None


def _type_name(value) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def chunk_bounds(X) -> np.ndarray:
    """First cell of every chunk of ``X``, and the number of cells at the end."""
    return np.concatenate([[0], np.cumsum(X.chunks[0])]).astype(np.int64)


def as_task(value):
    """Holds a client-side value as a task, so a lost copy is recomputed, not lost."""
    return value


@dataclass
class Layout:
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
    def of(cls, client, n_chunks: int) -> Layout:
        # client.nthreads() asks the scheduler each time; scheduler_info() returns a cache
        # that the client's periodic refresh may have just replaced by one without workers.
        workers = sorted(client.nthreads())
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


def submit_at(client, layout: Layout, chunk: int, function, *args, key: str):
    """``client.submit`` preferring the worker that holds ``chunk``."""
    return client.submit(
        function, *args, key=key, workers=[layout.address_of(chunk)], allow_other_workers=True
    )


def compute_placed(client, layout: Layout, delayed_per_chunk: list) -> list:
    """Futures of one delayed value per chunk, each computed on its chunk's worker."""
    futures = [None] * len(delayed_per_chunk)
    for address, group in layout.placed():
        computed = client.compute(
            [delayed_per_chunk[i] for i in group], workers=[address], allow_other_workers=True
        )
        for i, future in zip(group, computed):
            futures[i] = future
    return futures


def build_chunks(client, layout: Layout, builder, X) -> list:
    """Futures of ``builder(block, first_cell)`` per chunk of cells, placed by ``layout``;
    pure, so a lost chunk is rebuilt from its source."""
    import dask

    holder = futures_holder(X)
    if holder is not None and not _on_scheduler_of(holder, client):
        # that scheduler holds X's chunks, this one knows none of them ("lost dependencies")
        raise ValueError(
            "X is persisted on another dask.distributed cluster than the fit's client: fit "
            "on that one (client=), or persist X on this one"
        )
    build = dask.delayed(partial(_build_declared, builder), pure=True)
    blocks = X.to_delayed()[:, 0]
    first_cells = chunk_bounds(X)[:-1]
    n_genes = X.shape[1]
    tasks = [
        build(block, int(first), (int(rows), n_genes))
        for block, first, rows in zip(blocks, first_cells, X.chunks[0])
    ]
    return compute_placed(client, layout, tasks)


def _build_declared(builder, block, first_cell: int, declared: tuple[int, int]):
    """``builder(block, first_cell)`` once the block is checked to have the shape its
    chunk declares: a block of other cells or genes (a ``map_blocks`` that drops cells
    without saying so in ``chunks=``) would misalign every later cell with its row."""
    shape = getattr(block, "shape", None)
    if shape is None or tuple(shape) != declared:
        raise ValueError(
            f"in the chunk of cells starting at cell {first_cell}: the block is "
            f"{_described_shape(block, shape)}, its chunk declares "
            f"{declared[0]} x {declared[1]} (cells x genes); a map_blocks that changes "
            "a block's shape must give it in chunks= (or call X.compute_chunk_sizes())"
        )
    return builder(block, first_cell)


def _described_shape(block, shape) -> str:
    """``block``'s shape as `_build_declared` names it: "cells x genes" for a 2-D block; a
    1-D block of 500 values was "500", read as 500 cells."""
    if shape is None:
        return f"a {_type_name(block)}, not an array"
    shape = tuple(shape)
    if len(shape) == 2:
        return " x ".join(map(str, shape))
    return f"{len(shape)}-D (shape {shape}), not 2-D"


def computed_as_declared(X, name: str = "X", sparse: bool = False):
    """A dask array ``X`` computed into memory (sparse chunks stay sparse), each block first
    checked to have the shape its chunk declares, with the fit's error (`_build_declared`):
    a block of fewer cells than declared gave fewer rows, every later cell on another's.
    ``name``: how errors name ``X``. ``sparse``: dense numeric blocks are made CSR where
    they are computed (`_sparse_block`), for a caller that makes the whole matrix sparse
    anyway: computed dense, it was cells x genes x 8 bytes in one block first."""
    # by the client holding X's persisted chunks: dask's default scheduler may be another,
    # which knows none of them ("Missing dependency")
    refuse_closed_source(X, name)
    holder = futures_holder(X, name)
    if X.ndim != 2 or any(np.isnan(n) for n in X.shape):
        if sparse and X.ndim == 2:  # nothing declared to check, but dense blocks still made CSR
            X = X.map_blocks(_sparse_block, dtype=X.dtype)
        return X.compute(scheduler=holder)  # nothing declared to check; the count check explains
    task = partial(_block_as_declared, sparse=sparse)
    return X.map_blocks(task, dtype=X.dtype, meta=X._meta).compute(scheduler=holder)


def _block_as_declared(block, block_info=None, sparse: bool = False):
    """``block`` once checked against its chunk (`computed_as_declared`'s task), made CSR
    by `_sparse_block` when ``sparse``."""
    (first_cell, last_cell), (first_gene, last_gene) = block_info[0]["array-location"]
    declared = (last_cell - first_cell, last_gene - first_gene)
    block = _build_declared(_same_block, block, first_cell, declared)
    return _sparse_block(block) if sparse else block


def _same_block(block, first_cell: int):
    return block


# Dense blocks `_sparse_block` makes CSR: numbers scipy.sparse stores exactly as they are
# (float16, which it does not store, as float32, which holds each float16 value exactly).
_SPARSE_DTYPES = frozenset(
    np.dtype(kind) for kind in (bool, "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8")
)


def _sparse_block(block):
    """A dense numeric 2-D ``block`` as a scipy CSR matrix of the same values (NaN, infinite
    and negative entries stay stored, for the count check to name); any other block (sparse,
    masked, of objects, text or complex numbers) as it is, for that check to judge."""
    if type(block) not in (np.ndarray, np.matrix) or block.ndim != 2:
        return block
    if block.dtype == np.float16:
        block = block.astype(np.float32)
    if block.dtype not in _SPARSE_DTYPES:
        return block
    return sp.csr_matrix(block)


def start_blocks(
    init_array, chunk_sizes, client, layout: Layout, prefix: str, name: str = "init"
) -> list:
    """Futures of a given start's per-cell array (cells x K, or one value per cell) per
    chunk, from a numpy or dask array; keys ``{prefix}-{name}-{chunk}``."""
    da = dask_array_module()
    if isinstance(init_array, da.Array):  # cells the cluster dropped: named, not "lost"
        _utils.futures_holder(
            init_array, _utils.CELLS_CLOSED, _utils.CELLS_DROPPED, _utils.CELLS_ELSEWHERE
        )
    if isinstance(init_array, da.Array) and _reads_futures_of_another(init_array, client):
        # A result of another client (a fit on another cluster, or one since closed): this
        # client's scheduler knows none of its keys and cancelled the fit's first sums
        # ("lost dependencies"). That client computes it (`compute_dask` names a closed one).
        (init_array,) = _utils.compute_dask(init_array)
    if isinstance(init_array, da.Array):
        chunks = (tuple(chunk_sizes),) + (-1,) * (init_array.ndim - 1)
        blocks = init_array.rechunk(chunks).to_delayed().reshape(-1)
        return compute_placed(client, layout, list(blocks))
    bounds = np.concatenate([[0], np.cumsum(chunk_sizes)])
    return [
        submit_at(
            client, layout, index, as_task, init_array[start:stop], key=f"{prefix}-{name}-{index}"
        )
        for index, (start, stop) in enumerate(itertools.pairwise(bounds))
    ]


def _reads_futures_of_another(array, client) -> bool:
    """Whether the dask ``array`` reads futures that ``client``'s scheduler does not hold."""
    from distributed import futures_of

    return any(not _on_scheduler_of(future.client, client) for future in futures_of(array))


def _on_scheduler_of(holder, client) -> bool:
    """Whether the client ``holder`` is open on ``client``'s scheduler, which then knows the
    futures it holds."""
    if holder.status in ("closing", "closed"):
        return False
    return holder is client or holder.scheduler.address == client.scheduler.address


def reduce_chunks(client, futures: dict, layout: Layout, add, prefix: str):
    """Sum the chunks' results (``{chunk index: future}``) with ``add(*values)`` on the
    workers; returns one future.

    One sum per group on the worker holding it (in chunk order, no transfer), then a
    pairwise tree over groups: the bytes moved are O(workers x genes x K) whatever the
    number of chunks and nonzeros, and the client receives genes x K once.
    """
    level = [
        client.submit(
            add,
            *(futures[i] for i in group if i in futures),
            key=f"{prefix}-sum-g{number}",
            workers=[address],
            allow_other_workers=True,
        )
        for number, (address, group) in enumerate(layout.placed())
        if any(i in futures for i in group)
    ]
    depth = 0
    while len(level) > 1:
        level = [
            client.submit(add, *level[i : i + 2], key=f"{prefix}-sum{depth}-{i}")
            for i in range(0, len(level), 2)
        ]
        depth += 1
    return level[0]


def lazy_rows(futures: list, chunk_sizes, n_components: int | None, dtype):
    """Per-chunk futures of (cells x K) arrays (of one value per cell when
    ``n_components`` is None) as one dask array in cell order."""
    import dask

    da = dask_array_module()
    tail = () if n_components is None else (n_components,)
    blocks = [
        da.from_delayed(dask.delayed(future), (int(size), *tail), dtype=dtype)
        for future, size in zip(futures, chunk_sizes)
    ]
    return da.concatenate(blocks, axis=0)
