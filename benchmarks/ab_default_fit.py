"""The default fit of pbmc_facs at two commits, each run in a fresh process, pair by pair.

    python benchmarks/ab_default_fit.py A B [--pairs 8] [--components 10] [--threads 2]
        [--max-iter 1000] [--reference-seconds 20.5] [--out FILE]

Issue 16's target is a time on the issue's machine ("a default fit to convergence at K = 10
on 2 threads in at most 5 s (today 20.5 s)"): another machine's seconds say nothing about it,
the ratio to the code the issue timed does. Each run is ``VBNMF(K, n_threads=threads,
random_state=0, max_iter=max_iter).fit(X)`` of that commit's package (``git archive`` into a
temporary directory, with its own Numba cache, filled by one untimed run first) on the same
CSR matrix, timed around ``fit`` alone (wall and CPU of the process); A and B alternate, and
the ratios are taken pair by pair so that the machine's drift cancels. ``max_iter`` is the
same for both (commits before the learned prior stopped at 200 by default, before
converging; 1000 lets them converge). With ``--reference-seconds S`` (A's time where it was
measured), B's time there is estimated as ``S`` times the median ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ROOT,
    extract_commit,
    open_to_append,
    positive_float,
    positive_int,
    require_commits,
    require_out_file,
)

CHILD = """
import json, os, sys, time, warnings
import numpy as np, scipy.sparse
import vbsnmf
matrix = scipy.sparse.load_npz(sys.argv[1])
k, threads, max_iter = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = vbsnmf.VBNMF(k, n_threads=threads, random_state=0, max_iter=max_iter)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(matrix)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
trace = np.asarray(model.elbo_trace_)
print(json.dumps({"seconds": wall, "cpu_seconds": cpu, "iterations": int(model.n_iter_),
                  "elbo": float(trace[-1]), "monotone": bool(np.all(np.diff(trace) >= 0)),
                  "package": os.path.dirname(vbsnmf.__file__)}))
"""


def run(path: Path, data: Path, args) -> dict:
    environment = dict(os.environ, PYTHONPATH=str(path), NUMBA_NUM_THREADS=str(args.threads))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        environment[name] = str(args.threads)
    command = [sys.executable, "-c", CHILD, str(data), str(args.components), str(args.threads)]
    result = subprocess.run(
        [*command, str(args.max_iter)], env=environment, capture_output=True, text=True, cwd="/"
    )
    if result.returncode != 0:
        raise SystemExit(f"the fit under {path} failed:\n{result.stderr}")
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    if Path(outcome["package"]).resolve().parent != path.resolve():
        raise SystemExit(f"imported {outcome['package']}, not the package under {path}")
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--pairs", type=positive_int, default=8)
    parser.add_argument("--components", type=positive_int, default=10)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--max-iter", type=positive_int, default=1000)
    parser.add_argument("--reference-seconds", type=positive_float, default=None)
    parser.add_argument("--out", default=None, help="append the report to this file")
    args = parser.parse_args()
    require_commits(parser, a=args.a, b=args.b)
    require_out_file(parser, out=args.out)  # appended to after the whole run
    for name in ("a", "b"):  # named by hash in the report ("HEAD" moves)
        command = ["git", "rev-parse", "--short", getattr(args, name)]
        resolved = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
        setattr(args, name, resolved.stdout.strip())

    import scipy.sparse

    import vbsnmf

    lines = [
        f"# {' '.join(sys.argv)}",
        f"# started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()}",
    ]
    with tempfile.TemporaryDirectory() as temporary:
        temporary = Path(temporary)
        data = temporary / "pbmc_facs.npz"
        matrix = scipy.sparse.csr_matrix(vbsnmf.datasets.pbmc_facs().X, dtype=np.float64)
        scipy.sparse.save_npz(data, matrix)
        paths = {
            name: extract_commit(commit, temporary / name).parent
            for name, commit in (("a", args.a), ("b", args.b))
        }
        for path in paths.values():  # fills each package's Numba cache (SQUAREM's too)
            run(path, data, argparse.Namespace(**{**vars(args), "max_iter": 12}))
        runs = {"a": [], "b": []}
        for pair in range(args.pairs):
            for name in ("a", "b"):
                runs[name].append(run(paths[name], data, args))
            a, b = runs["a"][-1], runs["b"][-1]
            lines.append(
                f"pair {pair + 1}: A {a['seconds']:.2f} s (CPU {a['cpu_seconds']:.2f}), "
                f"B {b['seconds']:.2f} s (CPU {b['cpu_seconds']:.2f}), "
                f"B/A {b['seconds'] / a['seconds']:.3f}"
            )
    for name, commit in (("a", args.a), ("b", args.b)):
        first = runs[name][0]
        wall = np.median([r["seconds"] for r in runs[name]])
        cpu = np.median([r["cpu_seconds"] for r in runs[name]])
        lines.append(
            f"{name.upper()} {commit}: median {wall:.2f} s wall, {cpu:.2f} s CPU; "
            f"{first['iterations']} iterations, final ELBO {first['elbo']:.1f}, "
            f"monotone {all(r['monotone'] for r in runs[name])}"
        )
    wall_ratio = np.median([b["seconds"] / a["seconds"] for a, b in zip(runs["a"], runs["b"])])
    cpu_ratio = np.median(
        [b["cpu_seconds"] / a["cpu_seconds"] for a, b in zip(runs["a"], runs["b"])]
    )
    lines.append(f"B/A median of the pairs' ratios: wall {wall_ratio:.3f}, CPU {cpu_ratio:.3f}")
    if args.reference_seconds is not None:
        seconds = args.reference_seconds
        lines.append(
            f"B where A took {seconds} s: {seconds * wall_ratio:.2f} s by the wall ratio, "
            f"{seconds * cpu_ratio:.2f} s by the CPU ratio"
        )
    lines.append(
        f"# finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()}"
    )
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open_to_append(args.out) as handle:
            handle.write(report + "\n")


if __name__ == "__main__":
    main()
