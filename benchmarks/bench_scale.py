"""Scale: batch VB time per iteration and peak memory against nonzeros, and stochastic VB.

Three parts, each measured in fresh processes (peak RSS is the process's own):

``series``   k x pbmc_facs (cells resampled by `make_big.py`) for k in ``--factors``:
             batch VB seconds per iteration (median over ``--iters`` iterations after
             the first) and peak RSS at K; the log-log slope of time against nonzeros.
``atlas``    a matrix built by ``make_big.py`` at the Bischoff et al. 2021 lung atlas
             shape, read from ``--data`` (an .h5ad): batch VB s/iter and peak RSS for
             ``--iters`` iterations; then the streaming cells-form SVI reading the same
             file backed (never loaded): seconds per minibatch step and peak RSS over
             ``--svi-steps`` steps.
``forms``    the SVI forms against batch VB on pbmc_facs at K: the ELBO after every epoch,
             its gap to batch VB's final ELBO, and the time to come within 1 % of it.
``converge`` the same race on the ``--data`` matrix (the lung atlas shape): batch VB to its
             stopping rule (default ``tol``, ``--max-iter``), then each SVI form for
             ``--epochs`` (cells form streamed from the file; the nonzero forms in memory,
             ``--nonzero-epochs``), every epoch's ELBO with its wall time and the time to
             come within 1 % of batch VB's final ELBO. Times include the ELBO evaluations.

    python benchmarks/bench_scale.py series --factors 1,2,4,8 --workdir /tmp/scale
    python benchmarks/bench_scale.py atlas --data /tmp/big/big.h5ad
    python benchmarks/bench_scale.py forms --epochs 8
    python benchmarks/bench_scale.py converge --data /tmp/big/big.h5ad --epochs 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    in_fresh_process,
    peak_rss_mib,
    positive_int,
    positive_int_list,
    require_files,
    require_out_folder,
)


def _batch_timing(h5ad: str, n_components: int, n_iter: int, n_threads: int) -> dict:
    """In a fresh process: load ``h5ad`` into memory, run ``n_iter`` batch iterations."""
    import anndata as ad

    import vbsnmf

    adata = ad.read_h5ad(h5ad)
    loaded_mib = peak_rss_mib()
    stamps, cpu_stamps, passes = [], [], []

    def record(n_done, *_):
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())  # all threads of this process
        passes.append(n_done)

    model = vbsnmf.VBNMF(
        n_components, random_state=0, max_iter=n_iter, tol=0.0, n_threads=n_threads
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(adata.X, callback=record)
    # Per pass: under SQUAREM (the default) a callback may come two passes after the last
    # (the median of callback intervals mixed one- and two-pass ones), so each interval is
    # divided by the passes it covers.
    covered = np.diff([0, *passes]).astype(np.float64)
    intervals = np.diff([start, *stamps]) / covered
    cpu_intervals = np.diff([cpu_start, *cpu_stamps]) / covered
    return {
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "nnz": int(adata.X.nnz),
        "s_per_iter": float(np.median(intervals[1:])),
        "cpu_s_per_iter": float(np.median(cpu_intervals[1:])),
        "first_iter_s": float(intervals[0]),
        "loaded_mib": loaded_mib,
        "peak_mib": peak_rss_mib(),
        "final_elbo": float(model.elbo_trace_[-1]),
    }


def _streaming_steps(h5ad: str, n_components: int, n_steps: int, batch_size: int, n_threads):
    """In a fresh process: cells-form SVI steps reading ``h5ad`` from disk (backed)."""
    from vbsnmf import _model, _svi, _utils
    from vbsnmf.io import _stream

    source = _stream.open_source(h5ad)
    opened_mib = peak_rss_mib()
    start = time.perf_counter()
    # the one validation pass over the file
    total = _svi.scan_blocks(source.iter_blocks(_svi.EVAL_BLOCK_ROWS), source.shape).total
    scan_s = time.perf_counter() - start
    prior = _model.GammaPrior(1.0, 1.0)
    settings = _svi.SVISettings(prior, batch_size, 1.0, 0.55, 1, 1, 1e-5, 200, 1e-5, n_threads)
    with _utils.numba_threads(n_threads):
        state = _svi.init_cells_state(source.shape, n_components, total, 0, prior, np.float64)
        order = state.rng.permutation(source.n_cells)
        step_s, read_s, cpu_s = [], [], []
        for step in range(1, n_steps + 1):
            t0, cpu0 = time.perf_counter(), time.process_time()
            rows = np.sort(order[(step - 1) * batch_size : step * batch_size])
            block = source.read_rows(rows)
            t1 = time.perf_counter()
            rho = _svi.learning_rate(step, 1.0, 0.55)
            state.params = _svi.svi_step_cells(block, source.n_cells, state.params, rho, settings)
            read_s.append(t1 - t0)
            step_s.append(time.perf_counter() - t0)
            cpu_s.append(time.process_time() - cpu0)
    steps_per_epoch = int(np.ceil(source.n_cells / batch_size))
    return {
        "n_cells": source.n_cells,
        "nnz": source.nnz,
        "scan_s": scan_s,
        "batch_size": batch_size,
        "s_per_step": float(np.median(step_s)),
        "cpu_s_per_step": float(np.median(cpu_s)),
        "read_s_per_step": float(np.median(read_s)),
        "steps_per_epoch": steps_per_epoch,
        "opened_mib": opened_mib,
        "peak_mib": peak_rss_mib(),
    }


def series(args) -> None:
    if args.workdir is not None:  # kept: a later run reuses its matrices
        _series(args, Path(args.workdir))
        return
    # Without --workdir the matrices (15 x pbmc_facs' nonzeros for 1,2,4,8, some 300 MB)
    # are this run's alone: removed at the end, not left to fill the temporary folder.
    with tempfile.TemporaryDirectory(prefix="vbsnmf-scale-") as workdir:
        _series(args, Path(workdir))


def _series(args, workdir: Path) -> None:
    from make_big import build

    rows = []
    for factor in args.factors:
        out = workdir / f"x{factor}"
        if not (out / "big.h5ad").exists():
            build(3774 * factor, 16791, 2702861 * factor, out, seed=factor)
        result = in_fresh_process(
            _batch_timing, str(out / "big.h5ad"), args.k, args.iters, args.threads
        )
        result["factor"] = factor
        rows.append(result)
        print(json.dumps(result), flush=True)
    nnz = np.array([r["nnz"] for r in rows], dtype=float)
    seconds = np.array([r["s_per_iter"] for r in rows])
    slope = np.polyfit(np.log(nnz), np.log(seconds), 1)[0] if len(rows) > 1 else float("nan")
    cpu = np.array([r["cpu_s_per_iter"] for r in rows])
    cpu_slope = np.polyfit(np.log(nnz), np.log(cpu), 1)[0] if len(rows) > 1 else float("nan")
    print(
        f"\n| x pbmc_facs | cells | nonzeros | s/iter (K={args.k}) | CPU s/iter "
        "| peak MiB | loaded MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['factor']} | {r['n_cells']:,} | {r['nnz']:,} | {r['s_per_iter']:.3f} "
            f"| {r['cpu_s_per_iter']:.3f} | {r['peak_mib']:.0f} | {r['loaded_mib']:.0f} |"
        )
    print(f"\nlog-log slope against nonzeros: wall {slope:.3f}, CPU {cpu_slope:.3f}")


def atlas(args) -> None:
    batch = in_fresh_process(_batch_timing, args.data, args.k, args.iters, args.threads)
    print(json.dumps({"batch": batch}), flush=True)
    stream = in_fresh_process(
        _streaming_steps, args.data, args.k, args.svi_steps, args.batch_size, args.threads
    )
    print(json.dumps({"streaming_svi": stream}), flush=True)


def _forms(n_components: int, n_epochs: int, n_threads: int) -> dict:
    import vbsnmf

    X = vbsnmf.datasets.pbmc_facs().X
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, params in (
            ("batch", dict(max_iter=300, tol=1e-6)),
            ("cells", dict(solver="svi", svi_form="cells", n_epochs=n_epochs)),
            ("nonzeros", dict(solver="svi", svi_form="nonzeros", n_epochs=n_epochs)),
            ("abe-shimamura", dict(solver="svi", svi_form="abe-shimamura", n_epochs=n_epochs)),
        ):
            stamps = []
            start = time.perf_counter()
            model = vbsnmf.VBNMF(n_components, random_state=0, n_threads=n_threads, **params)
            model.fit(X, callback=lambda *_, s=stamps, t0=start: s.append(time.perf_counter() - t0))
            results[name] = {"elbo": [float(v) for v in model.elbo_trace_], "seconds": stamps}
    return results


def _converge_fit(h5ad: str, n_components: int, n_threads: int, params: dict) -> dict:
    """In a fresh process: one fit on ``h5ad`` (streamed for the cells form, else loaded),
    the ELBO after every iteration or epoch with its wall time since the fit started."""
    import anndata as ad

    import vbsnmf

    streamed = params.get("svi_form") == "cells"
    X = h5ad if streamed else ad.read_h5ad(h5ad).X
    stamps = []
    model = vbsnmf.VBNMF(n_components, random_state=0, n_threads=n_threads, **params)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, callback=lambda *_: stamps.append(time.perf_counter() - start))
    return {
        "elbo": [float(v) for v in model.elbo_trace_],
        "seconds": stamps,
        "total_s": time.perf_counter() - start,
        "peak_mib": peak_rss_mib(),
    }


def converge(args) -> None:
    runs = {
        "batch": dict(max_iter=args.max_iter),
        "cells": dict(solver="svi", svi_form="cells", n_epochs=args.epochs),
        "nonzeros": dict(solver="svi", svi_form="nonzeros", n_epochs=args.nonzero_epochs),
        "abe-shimamura": dict(solver="svi", svi_form="abe-shimamura", n_epochs=args.nonzero_epochs),
    }
    results = {}
    for name, params in runs.items():
        results[name] = in_fresh_process(_converge_fit, args.data, args.k, args.threads, params)
        print(json.dumps({name: results[name]}), flush=True)
    _race_table(results)


def _race_table(results: dict) -> None:
    """Markdown: every form's ELBO per epoch (batch: a few iterations), its gap to batch
    VB's final ELBO and the wall time at which it first came within 1 %."""
    reference = results["batch"]["elbo"][-1]
    print(f"batch VB final ELBO {reference:.8g} after {len(results['batch']['elbo'])} iterations")
    print("\n| form | epoch | ELBO | gap to batch | seconds |")
    print("|---|---|---|---|---|")
    for name, result in results.items():
        gaps = [(reference - v) / abs(reference) for v in result["elbo"]]
        within = next((i for i, g in enumerate(gaps) if g <= 0.01), None)
        for epoch, (value, gap, seconds) in enumerate(
            zip(result["elbo"], gaps, result["seconds"]), start=1
        ):
            if name == "batch" and epoch not in (1, 10, 50, 100, len(gaps)):
                continue
            print(f"| {name} | {epoch} | {value:.8g} | {gap:.2%} | {seconds:.1f} |")
        reached = "never" if within is None else f"{result['seconds'][within]:.1f} s"
        print(f"| {name} | within 1 % at | | | {reached} |")


def forms(args) -> None:
    _race_table(in_fresh_process(_forms, args.k, args.epochs, args.threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["series", "atlas", "forms", "converge"])
    parser.add_argument("--k", type=positive_int, default=15)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--iters", type=positive_int, default=5)
    parser.add_argument("--factors", type=positive_int_list, default=[1, 2, 4, 8])
    parser.add_argument(
        "--workdir",
        help="where series writes its matrices, kept for reuse (default: a "
        "temporary folder, removed at the end)",
    )
    parser.add_argument("--data", help="atlas, converge: the .h5ad written by make_big.py")
    parser.add_argument("--svi-steps", type=positive_int, default=5)
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--epochs", type=positive_int, default=8)
    parser.add_argument("--nonzero-epochs", type=positive_int, default=20)
    parser.add_argument(
        "--max-iter", type=positive_int, default=200, help="converge: batch VB's cap"
    )
    args = parser.parse_args()
    require_files(parser, data=args.data)
    if args.part == "series":  # its matrices are built there, in a child, fit by fit
        require_out_folder(parser, workdir=args.workdir)
    if args.part in ("atlas", "converge") and args.data is None:
        parser.error(f"{args.part} needs --data (the .h5ad that make_big.py writes)")
    if args.part in ("atlas", "converge"):
        import h5py

        # checked here: the children read it, and ended in "benchmark child failed" with
        # h5py's error in a traceback
        if not h5py.is_hdf5(args.data):
            parser.error(f"argument --data: not an .h5ad (HDF5) file: {args.data}")
    parts = {"series": series, "atlas": atlas, "forms": forms, "converge": converge}
    parts[args.part](args)


if __name__ == "__main__":
    main()
