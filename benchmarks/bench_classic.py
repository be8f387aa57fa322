"""Classical NMF on pbmc_facs: vbsnmf.classic against scikit-learn's NMF, per iteration.

    python benchmarks/bench_classic.py [--threads 2] [--components 10] [--iters 30]
        [--kl-iters 8] [--repeats 5]

Same CSR float64 matrix (3,774 cells x 16,791 genes, 2.7M nonzeros), same K, init="random",
tol=0 for every method. Pairs: vbsnmf MU Frobenius / sklearn solver="mu" Frobenius, vbsnmf
MU KL / sklearn "mu" KL, vbsnmf HALS / sklearn "cd". Each fit runs in its own fresh process
(so the peak RSS is its own: interpreter, imports and data included, see the baseline row;
a dense cells x genes float64 matrix would be 507 MB), which first runs an untimed
1-iteration fit on 50 cells (loads the Numba kernels), then a ``2``- and a
``2 + iters``-iteration fit: seconds per iteration are the difference divided by ``iters``
(``--iters`` for Frobenius and HALS/cd, ``--kl-iters`` for KL, the same for both
libraries), which cancels the set-up.

The shared 2-core machine's speed drifts by up to 2x over minutes, so each pair runs
``--repeats`` times, the two libraries back to back each time; the table gives the median
seconds per iteration and the median, min and max of the per-repeat ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import in_fresh_process, peak_rss_mib, positive_int

METHODS = {
    "vbsnmf mu frobenius": ("vbsnmf", {"solver": "mu", "loss": "frobenius"}),
    "sklearn mu frobenius": ("sklearn", {"solver": "mu", "beta_loss": "frobenius"}),
    "vbsnmf mu kl": ("vbsnmf", {"solver": "mu", "loss": "kl"}),
    "sklearn mu kl": ("sklearn", {"solver": "mu", "beta_loss": "kullback-leibler"}),
    "vbsnmf hals": ("vbsnmf", {"solver": "hals"}),
    "sklearn cd": ("sklearn", {"solver": "cd"}),
}
PAIRS = [
    ("vbsnmf mu frobenius", "sklearn mu frobenius"),
    ("vbsnmf mu kl", "sklearn mu kl"),
    ("vbsnmf hals", "sklearn cd"),
]


def _load(threads: int):
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    import vbsnmf

    return vbsnmf.datasets.pbmc_facs().X.tocsr().astype("float64")


def baseline(threads: int) -> dict:
    X = _load(threads)
    return {"nnz": int(X.nnz), "shape": X.shape, "peak_mib": peak_rss_mib()}


def run_fit(threads: int, library: str, params: dict, n_components: int, n_iter: int) -> dict:
    X = _load(threads)
    if library == "vbsnmf":
        from vbsnmf.classic import NMF
    else:
        from sklearn.decomposition import NMF
    model = NMF(n_components, init="random", random_state=0, tol=0, **params)
    seconds = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # untimed warm-up on 50 cells: loads (or compiles) the Numba kernels
        model.set_params(max_iter=1).fit_transform(X[:50])
        for iterations in (2, 2 + n_iter):
            model.set_params(max_iter=iterations)
            start = time.perf_counter()
            model.fit_transform(X)
            seconds[iterations] = time.perf_counter() - start
    per_iter = (seconds[2 + n_iter] - seconds[2]) / n_iter
    return {"per_iter": per_iter, "peak_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--components", type=positive_int, default=10)
    parser.add_argument(
        "--iters", type=positive_int, default=30, help="timed Frobenius/HALS/cd iterations"
    )
    parser.add_argument("--kl-iters", type=positive_int, default=8, help="timed KL iterations")
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs of every pair")
    args = parser.parse_args()

    base = in_fresh_process(baseline, args.threads)
    print(
        f"pbmc_facs {base['shape'][0]} x {base['shape'][1]}, {base['nnz']:,} nonzeros, "
        f"K={args.components}, threads={args.threads}; baseline peak RSS (data loaded): "
        f"{base['peak_mib']:.0f} MiB"
    )
    runs = {name: [] for name in METHODS}
    for repeat in range(args.repeats):
        for pair in PAIRS:
            for name in pair if repeat % 2 == 0 else pair[::-1]:
                library, params = METHODS[name]
                timed = args.kl_iters if name.endswith(" kl") else args.iters
                run = in_fresh_process(
                    run_fit, args.threads, library, params, args.components, timed
                )
                runs[name].append(run)
                print(f"  repeat {repeat + 1} {name}: {run['per_iter']:.4f} s/iter", flush=True)

    print()
    print(
        "| method | s / iteration (median) | peak RSS MiB (minus baseline) "
        "| sklearn s / vbsnmf s: median (min-max) |"
    )
    print("|---|---|---|---|")
    for ours, theirs in PAIRS:
        ratios = [b["per_iter"] / a["per_iter"] for a, b in zip(runs[ours], runs[theirs])]
        for name in (ours, theirs):
            per_iter = statistics.median(run["per_iter"] for run in runs[name])
            peak = max(run["peak_mib"] for run in runs[name])
            ratio = ""
            if name == ours:
                ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            print(
                f"| {name} | {per_iter:.4f} | {peak:.0f} (+{peak - base['peak_mib']:.0f}) "
                f"| {ratio} |"
            )


if __name__ == "__main__":
    main()
