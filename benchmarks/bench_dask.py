"""The distributed fit (`vbsnmf.fit_dask`) against the single-machine engine, per iteration.

    python benchmarks/bench_dask.py [--cells 50000] [--chunks 10] [--components 10] \
        [--iters 6] [--data /tmp/bench_dask_data]
    python benchmarks/bench_dask.py --converge 3 [--chunks 4] [--components 10]

``--converge N``: default fits to convergence of pbmc_facs (learned prior) on the same
``LocalCluster``, SQUAREM (the default) against plain coordinate ascent
(``accelerate=False``), N rounds alternating, and the in-memory default fit (2 Numba
threads) once for its passes and final ELBO: passes, wall seconds and final ELBO of each.

Data: the real-derived matrix of `make_big.py` (the scale benchmark's builder) with
``--cells`` cells and pbmc_facs' 16,791 genes at pbmc_facs' density: cells resampled from
pbmc_facs with replacement and binomially thinned, written blockwise to ``DATA/big.h5ad``
(built once, reused when present). The local run reads it into memory; the distributed
run reads it lazily (`anndata.experimental.read_elem_lazy`, ``--chunks`` chunks of cells),
so each worker reads its own cells from disk and the client never holds the matrix. Both
start from the same q (`_model.random_start`) and run ``--iters`` iterations of the same
fit: the fixed Gamma(1, 1) prior by plain coordinate ascent (``fit_dask(prior="gamma",
accelerate=False)``; its defaults, the learned prior with SQUAREM, are another fit), so
their ELBO traces agree to rounding.

- local: `_batch.fit_batch` with 2 Numba threads, in a fresh process;
- dask: `fit_dask` on ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``,
  one Numba thread per chunk task.

Seconds per iteration are the median interval between consecutive iteration callbacks
(the first, which loads the kernels, excluded), as wall time and as CPU time (of the local
process; of both workers plus the client), the latter being less sensitive to a loaded
machine. Bytes per iteration: what the client receives (the reduced summary) and puts into
the graph (gene side and rates), and all bytes leaving the workers (to peers and to the
client; the workers' transfer counters).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    in_fresh_process,
    non_negative_int,
    peak_rss_mib,
    positive_int,
    require_out_folder,
)

PBMC_FACS_NNZ, PBMC_FACS_CELLS, PBMC_FACS_GENES = 2_702_861, 3_774, 16_791


def ensure_data(n_cells: int, directory: Path) -> Path:
    """``directory/big.h5ad`` from `make_big.build`, built unless it has ``n_cells``."""
    summary = directory / "summary.json"
    if summary.exists() and json.loads(summary.read_text())["n_cells"] == n_cells:
        return directory / "big.h5ad"
    import make_big

    nnz = round(PBMC_FACS_NNZ * n_cells / PBMC_FACS_CELLS)
    print(json.dumps(make_big.build(n_cells, PBMC_FACS_GENES, nnz, directory)), flush=True)
    return directory / "big.h5ad"


def _median_interval(stamps) -> float:
    import numpy as np

    return float(np.median(np.diff(stamps[1:]))) if len(stamps) > 2 else float("nan")


def run_local(path: str, n_components: int, iters: int) -> dict:
    os.environ["NUMBA_NUM_THREADS"] = "2"
    import anndata as ad
    import h5py
    import numpy as np

    import vbsnmf
    from vbsnmf import _batch, _data, _model

    warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
    with h5py.File(path, "r") as store:
        matrix = ad.io.read_elem(store["X"])
    data = _data.as_count_data(matrix)
    del matrix
    total = float(data.counts.sum())
    init = _model.random_start(data.shape, n_components, total, 0, np.float64)
    stamps, cpu_stamps = [time.perf_counter()], [time.process_time()]

    def record(*_):
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())

    result = _batch.fit_batch(
        data,
        init,
        _model.GammaPrior(1.0, 1.0),
        max_iter=iters,
        tol=0.0,
        n_parts=2,
        callback=record,
    )
    return {
        "shape": data.shape,
        "nnz": data.nnz,
        "matrix_bytes": data.counts.nbytes + data.indices.nbytes + data.indptr.nbytes,
        "s_per_iter": _median_interval(stamps),
        "cpu_s_per_iter": _median_interval(cpu_stamps),
        "elbo_trace": result.elbo_trace.tolist(),
        "init": init,
        "peak_mib": peak_rss_mib(),
    }


def run_dask(path: str, n_chunks: int, n_components: int, iters: int, init) -> dict:
    import anndata as ad
    import h5py
    import numpy as np
    from distributed import Client, LocalCluster

    import vbsnmf

    warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
    store = h5py.File(path, "r")
    n_cells = int(store["X"].attrs["shape"][0])
    X = ad.experimental.read_elem_lazy(store["X"], chunks=(-(-n_cells // n_chunks), -1))
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    with Client(cluster) as client:

        def sent_by_workers() -> int:
            counts = client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total)
            return sum(counts.values())

        def cpu_seconds() -> float:
            workers = client.run(time.process_time)
            return sum(workers.values()) + time.process_time()

        stamps, cpu_stamps, sent = [], [], []

        def record(*_):
            stamps.append(time.perf_counter())
            cpu_stamps.append(cpu_seconds())
            sent.append(sent_by_workers())

        def worker_peak_mib() -> list[float]:
            def peak(dask_worker=None) -> float:
                import resource

                return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

            return sorted(client.run(peak).values())

        start = time.perf_counter()
        # The local run's model and engine: the fixed Gamma(1, 1) prior by plain coordinate
        # ascent. fit_dask's defaults (the learned prior, SQUAREM) are another fit, whose
        # trace neither matches the local one nor has its length.
        result = vbsnmf.fit_dask(
            X,
            n_components,
            init=init,
            max_iter=iters,
            tol=0.0,
            client=client,
            callback=record,
            prior="gamma",
            prior_shape=1.0,
            prior_rate=1.0,
            accelerate=False,
        )
        total = time.perf_counter() - start
        worker_bytes = np.diff(sent[1:])
        out = {
            "s_per_iter": _median_interval(stamps),
            "cpu_s_per_iter": _median_interval(cpu_stamps),
            "total_s": total,
            "elbo_trace": result.elbo_trace.tolist(),
            "gathered_per_iter": int(np.median(result.gathered_bytes)),
            "sent_per_iter": int(np.median(result.sent_bytes)),
            "worker_out_per_iter": int(np.median(worker_bytes)) if len(worker_bytes) else -1,
            "client_peak_mib": peak_rss_mib(),
            "worker_peak_mib": worker_peak_mib(),
        }
    cluster.close()
    store.close()
    return out


def run_converge(rounds: int, n_chunks: int, n_components: int) -> None:
    """``--converge``: SQUAREM against plain ascent on the cluster, to convergence."""
    import dask.array as da
    import numpy as np
    import scipy.sparse as sp
    from distributed import Client, LocalCluster

    import vbsnmf

    warnings.filterwarnings("ignore", message="Sending large graph")  # from_array's counts
    counts = sp.csr_matrix(vbsnmf.datasets.pbmc_facs().X, dtype=np.float64)
    options = dict(random_state=0)
    local_start = time.perf_counter()
    local = vbsnmf.VBNMF(n_components, n_threads=2, **options).fit(counts)
    local_seconds = time.perf_counter() - local_start
    print(
        f"pbmc_facs {counts.shape[0]} x {counts.shape[1]}, {counts.nnz:,} nonzeros, "
        f"K={n_components}, {n_chunks} chunks; in memory (2 Numba threads, default): "
        f"{local.n_iter_} passes, converged {local.converged_}, ELBO "
        f"{local.elbo_trace_[-1]:.1f}, {local_seconds:.1f} s",
        flush=True,
    )
    X = da.from_array(counts, chunks=(-(-counts.shape[0] // n_chunks), -1))
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    rows = {True: [], False: []}
    with Client(cluster) as client:
        vbsnmf.fit_dask(X, n_components, max_iter=2, client=client, **options)  # compile
        for _ in range(rounds):
            for accelerate in (True, False):
                start = time.perf_counter()
                result = vbsnmf.fit_dask(
                    X, n_components, client=client, accelerate=accelerate, **options
                )
                seconds = time.perf_counter() - start
                rows[accelerate].append(
                    (result.n_iter, result.converged, result.elbo_trace[-1], seconds)
                )
                relative = abs(result.elbo_trace[-1] - local.elbo_trace_[-1]) / abs(
                    local.elbo_trace_[-1]
                )
                print(
                    f"dask accelerate={accelerate}: {result.n_iter} passes, converged "
                    f"{result.converged}, ELBO {result.elbo_trace[-1]:.1f} (relative to "
                    f"in memory {relative:.1e}), {seconds:.1f} s, load {os.getloadavg()}",
                    flush=True,
                )
    cluster.close()
    fast, plain = (np.median([r[3] for r in rows[a]]) for a in (True, False))
    print(
        f"median wall s: SQUAREM {fast:.1f}, plain {plain:.1f}, plain / SQUAREM "
        f"{plain / fast:.2f}; passes {sorted({r[0] for r in rows[True]})} against "
        f"{sorted({r[0] for r in rows[False]})}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=positive_int, default=50_000)
    parser.add_argument("--chunks", type=positive_int, default=10)
    parser.add_argument("--components", type=positive_int, default=10)
    parser.add_argument("--iters", type=positive_int, default=6)
    parser.add_argument("--data", type=Path, default=Path("/tmp/bench_dask_data"))
    parser.add_argument("--converge", type=non_negative_int, default=0, metavar="ROUNDS")
    args = parser.parse_args()
    if not args.converge:  # --converge reads no --data
        require_out_folder(parser, data=args.data)
    if args.converge:
        run_converge(args.converge, args.chunks, args.components)
        return
    import numpy as np

    path = str(ensure_data(args.cells, args.data))
    local = in_fresh_process(run_local, path, args.components, args.iters)
    distributed = run_dask(path, args.chunks, args.components, args.iters, local["init"])
    relative = np.max(
        np.abs(np.subtract(distributed["elbo_trace"], local["elbo_trace"]))
        / np.abs(local["elbo_trace"])
    )
    n_cells, n_genes = local["shape"]
    summary_floor = n_genes * args.components * 8
    print(
        f"data: {n_cells} cells x {n_genes} genes, {local['nnz']:,} nonzeros "
        f"({local['matrix_bytes'] / 2**20:.0f} MiB as CSR), K={args.components}, "
        f"{args.chunks} chunks, {args.iters} iterations"
    )
    print("| run | wall s/iter | CPU s/iter | peak RSS (MiB) |")
    print("|---|---|---|---|")
    print(
        f"| local, 2 Numba threads | {local['s_per_iter']:.3f} | "
        f"{local['cpu_s_per_iter']:.3f} | {local['peak_mib']:.0f} |"
    )
    print(
        f"| LocalCluster, 2 workers x 1 thread | {distributed['s_per_iter']:.3f} | "
        f"{distributed['cpu_s_per_iter']:.3f} (workers + client) | "
        f"{distributed['client_peak_mib']:.0f} (client), "
        + " and ".join(f"{mib:.0f}" for mib in distributed["worker_peak_mib"])
        + " (workers) |"
    )
    for label in ("s_per_iter", "cpu_s_per_iter"):
        ratio = distributed[label] / local[label]
        print(f"overhead ratio dask / local ({label}): {ratio:.2f}")
    print(f"max relative ELBO difference, dask vs local: {relative:.2e}")
    print("| bytes per iteration | bytes | / (genes x K x 8) |")
    print("|---|---|---|")
    for label, key in (
        ("client receives (reduced summary)", "gathered_per_iter"),
        ("client sends (gene side and rates)", "sent_per_iter"),
        ("leaving all workers (peers + client)", "worker_out_per_iter"),
    ):
        print(f"| {label} | {distributed[key]:,} | {distributed[key] / summary_floor:.2f} |")
    print(f"| for scale: the matrix as CSR | {local['matrix_bytes']:,} | |")


if __name__ == "__main__":
    main()
