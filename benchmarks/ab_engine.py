"""Same-process A/B of the engine's batch iteration at two commits, on pbmc_facs.

    python benchmarks/ab_engine.py A B [--threads 1] [--clock cpu] [--components 10 50]
        [--dtypes float64 float32] [--rounds 7] [--iters 20] [--data big.h5ad]
        [--prior gamma|hierarchical]

The ``vbsnmf`` package of each commit is extracted (``git archive``) into a temporary
directory as ``vbsnmf_a`` and ``vbsnmf_b`` (its imports are relative, so it runs under any
name, with its own Numba cache) and both are imported into this process. Each round runs,
for every K and dtype, ``fit_batch`` of A and of B on their own `CountData` of the same
matrix from the same start, in alternating order; the table gives the median over the rounds
of each round's time ratio B/A (below 1: B is faster), the per-iteration times (medians) and
the largest relative difference of the two ELBO traces. ``--prior hierarchical``: the
learned prior's iteration (its step's side updates, scales and hyperparameters included),
from its random start, without the hold; default the fixed Gamma(1, 1).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    extract_commit,
    positive_int,
    require_commits,
    require_files,
    require_numba_threads,
    timed_functions,
)


def load_commit(commit: str, name: str, directory: Path):
    """``vbsnmf`` of ``commit`` imported as package ``name`` from ``directory``."""
    extract_commit(commit, directory / "extract").rename(directory / name)
    sys.path.insert(0, str(directory))
    return importlib.import_module(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="cpu")
    parser.add_argument("--components", type=positive_int, nargs="+", default=[10, 50])
    parser.add_argument(
        "--dtypes", nargs="+", choices=["float64", "float32"], default=["float64", "float32"]
    )
    parser.add_argument("--rounds", type=positive_int, default=7)
    parser.add_argument("--iters", type=positive_int, default=20)
    parser.add_argument("--data", help="an .h5ad to fit instead of pbmc_facs (loaded in memory)")
    parser.add_argument(
        "--breakdown", action="store_true", help="also ms/iteration per kernel and model function"
    )
    parser.add_argument("--prior", choices=["gamma", "hierarchical"], default="gamma")
    args = parser.parse_args()
    require_files(parser, data=args.data)
    require_commits(parser, a=args.a, b=args.b)
    require_numba_threads(parser, args.threads)
    numba.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    with tempfile.TemporaryDirectory() as tmp:
        versions = {
            label: load_commit(commit, f"vbsnmf_{label}", Path(tmp))
            for label, commit in (("a", args.a), ("b", args.b))
        }
        for module in list(versions.values()):
            for sub in ("_model", "_batch", "_data"):
                importlib.import_module(f"{module.__name__}.{sub}")
        if args.data:
            import anndata

            try:  # a file that is not an .h5ad was h5py's traceback after the extractions
                X = anndata.read_h5ad(args.data).X
            except (OSError, KeyError, ValueError) as error:
                parser.error(f"argument --data: cannot read {args.data} as an .h5ad: {error}")
        else:
            X = versions["a"].datasets.pbmc_facs().X
        data = {label: v._data.as_count_data(X) for label, v in versions.items()}
        total = float(np.sum(data["a"].counts, dtype=np.float64))

        learned = args.prior == "hierarchical"

        def prior_of(label):
            model = versions[label]._model
            return model.HierarchicalPrior() if learned else model.GammaPrior()

        def start_of(label, n_components, dtype):
            model = versions[label]._model
            totals = model.side_totals(data[label]) if learned else None
            return model.random_start(
                data[label].shape, n_components, total, 0, np.dtype(dtype),
                prior=prior_of(label), totals=totals,
            )  # fmt: skip

        def fit(label, start, n_components, n_iter):
            v = versions[label]
            begin = clock()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = v._batch.fit_batch(
                    data[label], start.copy(), prior_of(label), max_iter=n_iter, tol=0.0,
                    n_parts=args.threads,
                )  # fmt: skip
            return clock() - begin, result.elbo_trace

        print(
            f"A = {args.a}, B = {args.b}; {args.data or 'pbmc_facs'}, {data['a'].nnz:,} nonzeros, "
            f"{args.threads} threads, {args.clock} time, {args.rounds} rounds of {args.iters} "
            f"iterations, prior {args.prior}; counts stored as {data['a'].counts.dtype} (A), "
            f"{data['b'].counts.dtype} (B)"
        )
        breakdowns = []
        print("| K | dtype | A ms/iter | B ms/iter | B/A (median, min-max) | ELBO max rel. diff |")
        print("|---|---|---:|---:|---:|---:|")
        for n_components in args.components:
            for dtype in args.dtypes:
                starts = {label: start_of(label, n_components, dtype) for label in versions}
                for label in versions:  # compile / load the caches
                    fit(label, starts[label], n_components, 1)
                times = {"a": [], "b": []}
                traces = {}
                for round_index in range(args.rounds):
                    order = ("a", "b") if round_index % 2 == 0 else ("b", "a")
                    for label in order:
                        seconds, traces[label] = fit(label, starts[label], n_components, args.iters)
                        times[label].append(seconds / (args.iters + 1))
                ratios = np.array(times["b"]) / np.array(times["a"])
                difference = np.max(np.abs(traces["b"] - traces["a"]) / np.abs(traces["a"]))
                print(
                    f"| {n_components} | {dtype} | {1e3 * np.median(times['a']):.1f} "
                    f"| {1e3 * np.median(times['b']):.1f} | {np.median(ratios):.3f} "
                    f"({ratios.min():.2f}-{ratios.max():.2f}) | {difference:.1e} |",
                    flush=True,
                )
                if args.breakdown:
                    rows = {}
                    for label, v in versions.items():
                        with timed_functions(v, clock) as timers:
                            fit(label, starts[label], n_components, args.iters)
                        rows[label] = timers.per_call_ms(args.iters + 1)
                    breakdowns.append((n_components, dtype, rows))
        for n_components, dtype, rows in breakdowns:
            print(f"\nK={n_components} {dtype}: ms per iteration, exclusive of wrapped callees")
            print("| function | A | B |")
            print("|---|---:|---:|")
            for name in sorted(set(rows["a"]) | set(rows["b"])):
                a, b = (f"{rows[x][name][2]:.2f}" if name in rows[x] else "-" for x in "ab")
                print(f"| {name} | {a} | {b} |")


if __name__ == "__main__":
    main()
