"""A user's first fit: how long Numba takes to compile the kernels, at two commits.

    python benchmarks/bench_compile.py A B [--pairs 3] [--components 10]
        [--dtype float64] [--prior hierarchical] [--solver batch] [--top 8]

The ``vbsnmf`` package of each commit is extracted (``git archive``) into a temporary
directory; each run is a fresh process with that directory first on ``PYTHONPATH`` and a
fresh, empty ``NUMBA_CACHE_DIR``: it fits pbmc_tiny (5 iterations, ``VBNMF`` defaults but
the ones given) twice, the first fit compiling every kernel the fit needs and writing
the cache, the second running from memory (``--solver svi``: one epoch of the default
cell-minibatch SVI instead of the 5 iterations). A and B alternate, pair by pair (A first in
even pairs, B first in odd ones). Prints, per pair, each commit's first-fit and second-fit
wall seconds, the ratio B/A of the first fits, and the median ratio; ``--top``: the
dispatchers that took longest to compile in B's last run (times of nested compilations
are included in their caller's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import extract_commit, load_average, positive_int, require_commits

_CHILD = """
import collections, json, sys, time, warnings
from numba.core import event
import vbsnmf

n_components, dtype, prior, solver = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
limit = {"n_epochs": 1} if solver == "svi" else {"max_iter": 5}
compile_seconds = collections.defaultdict(float)


class Timer(event.Listener):
    def __init__(self):
        self.started = []

    def on_start(self, ev):
        self.started.append(time.perf_counter())

    def on_end(self, ev):
        name = getattr(ev.data["dispatcher"], "py_func", ev.data["dispatcher"]).__qualname__
        compile_seconds[name] += time.perf_counter() - self.started.pop()


event.register("numba:compile", Timer())
X = vbsnmf.datasets.pbmc_tiny().X
seconds = []
for _ in range(2):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(
            n_components, dtype=dtype, prior=prior, solver=solver, random_state=0, **limit
        ).fit(X)
    seconds.append(time.perf_counter() - start)
print(json.dumps({"first": seconds[0], "second": seconds[1], "compile": compile_seconds}))
"""


def first_fit(package_parent: Path, cache: Path, args) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(package_parent), os.environ.get("PYTHONPATH")])
        ),
        NUMBA_CACHE_DIR=str(cache),
    )
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(args.components), args.dtype, args.prior,
         args.solver],
        env=env, capture_output=True, text=True, check=True, cwd=package_parent,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--pairs", type=positive_int, default=3)
    parser.add_argument("--components", type=positive_int, default=10)
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--prior", default="hierarchical", choices=["hierarchical", "gamma"])
    parser.add_argument("--solver", default="batch", choices=["batch", "svi"])
    parser.add_argument("--top", type=positive_int, default=8)
    args = parser.parse_args()
    require_commits(parser, a=args.a, b=args.b)
    print(
        f"A = {args.a}, B = {args.b}; first fit of pbmc_tiny, K = {args.components}, "
        f"{args.dtype}, prior {args.prior}, solver {args.solver}, empty Numba cache; "
        f"load {load_average()}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        parents = {}
        for label, commit in (("A", args.a), ("B", args.b)):
            parents[label] = extract_commit(commit, scratch / label).parent
        ratios, last = [], {}
        print("| pair | A first s | B first s | A second s | B second s | B/A first |")
        print("|---|---:|---:|---:|---:|---:|")
        for pair in range(args.pairs):
            order = ("A", "B") if pair % 2 == 0 else ("B", "A")
            for label in order:
                cache = scratch / f"cache-{label}-{pair}"
                last[label] = first_fit(parents[label], cache, args)
            ratio = last["B"]["first"] / last["A"]["first"]
            ratios.append(ratio)
            print(
                f"| {pair} | {last['A']['first']:.1f} | {last['B']['first']:.1f} | "
                f"{last['A']['second']:.2f} | {last['B']['second']:.2f} | {ratio:.3f} |",
                flush=True,
            )
        print(f"median B/A of the first fits: {statistics.median(ratios):.3f}")
        if args.top:
            print("B's longest compilations (s, nested ones included in their caller's):")
            ranked = sorted(last["B"]["compile"].items(), key=lambda item: -item[1])
            for name, seconds in ranked[: args.top]:
                print(f"  {seconds:6.2f}  {name}")


if __name__ == "__main__":
    main()
