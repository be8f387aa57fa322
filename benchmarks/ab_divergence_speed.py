"""The alpha-beta divergence of the classical solvers at two commits, in one process.

`vbsnmf.classic.losses.ab_divergence` of ``--old`` (read with ``git show`` and loaded
beside the installed package) against the installed one, on a million (p, q) pairs, at
1 and 2 Numba threads and three (alpha, beta): a general pair, the KL limit and the log
limit; median of 7 calls each. Before the seventh hostile pass (5398652) the function was
numpy with exact-limit formulas; after it, a parallel loop over one Numba kernel that is
continuous across the limits.

    python benchmarks/ab_divergence_speed.py --old 5398652
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
from _common import positive_int, require_commits

from vbsnmf.classic import losses

PAIRS = [(0.5, 0.7), (1.0, 0.0), (0.0, 0.0)]


def _old_losses(commit: str):
    source = subprocess.run(
        ["git", "show", f"{commit}:vbsnmf/classic/losses.py"],
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_losses.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("vbsnmf.classic.old_losses", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="5398652", help="the commit to compare against")
    parser.add_argument("--entries", type=positive_int, default=10**6)
    args = parser.parse_args()
    require_commits(parser, **{"--old": args.old})
    old = _old_losses(args.old)
    rng = np.random.default_rng(0)
    p = rng.poisson(3.0, args.entries) + 1.0
    q = rng.gamma(2.0, 1.0, args.entries) + 0.1
    for function in (old.ab_divergence, losses.ab_divergence):  # compile and warm up
        function(p[:10], q[:10], *PAIRS[0])
    for threads in (1, 2):
        if threads > numba.config.NUMBA_NUM_THREADS:  # one core, or NUMBA_NUM_THREADS=1
            print(f"threads={threads}: skipped, Numba has {numba.config.NUMBA_NUM_THREADS}")
            continue
        numba.set_num_threads(threads)
        for alpha, beta in PAIRS:
            medians = {}
            for name, function in (("old", old.ab_divergence), ("new", losses.ab_divergence)):
                times = []
                for _ in range(7):
                    start = time.perf_counter()
                    function(p, q, alpha, beta)
                    times.append(time.perf_counter() - start)
                medians[name] = 1e3 * float(np.median(times))
            print(
                f"threads={threads} alpha={alpha} beta={beta}: old {medians['old']:.1f} ms, "
                f"new {medians['new']:.1f} ms per {args.entries:.0e} entries, "
                f"new/old {medians['new'] / medians['old']:.2f}"
            )


if __name__ == "__main__":
    main()
