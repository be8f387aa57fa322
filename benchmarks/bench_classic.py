"""Classical NMF on pbmc_facs: vbsnmf.classic against scikit-learn's NMF, per iteration.

    python benchmarks/bench_classic.py [--threads 2] [--components 10] [--iters 30] [--kl-iters 8]

Same CSR float64 matrix (3,774 cells x 16,791 genes, 2.7M nonzeros), same K, init="random",
tol=0 for every method. Pairs: vbsnmf MU Frobenius / sklearn solver="mu" Frobenius, vbsnmf
MU KL / sklearn "mu" KL, vbsnmf HALS / sklearn "cd". Seconds per iteration are the
difference of a ``2 + iters`` and a ``2``-iteration fit divided by ``iters`` (``--iters``
for Frobenius and HALS/cd, ``--kl-iters`` for KL, the same for both libraries), which
cancels the set-up; an untimed 1-iteration fit on 50 cells first loads the Numba kernels.
Every fit runs in its own fresh process, so the peak RSS is its own (interpreter, imports
and data included: see the baseline row); a dense cells x genes float64 matrix would be
507 MB.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import in_fresh_process, peak_rss_mib

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

        model = NMF(n_components, init="random", random_state=0, max_iter=n_iter, tol=0, **params)
    else:
        from sklearn.decomposition import NMF

        model = NMF(n_components, init="random", random_state=0, max_iter=n_iter, tol=0, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # untimed warm-up on 50 cells: loads (or compiles) the Numba kernels
        model.set_params(max_iter=1).fit_transform(X[:50])
        model.set_params(max_iter=n_iter)
        start = time.perf_counter()
        model.fit_transform(X)
    return {"seconds": time.perf_counter() - start, "peak_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--iters", type=int, default=30, help="timed Frobenius/HALS/cd iterations")
    parser.add_argument("--kl-iters", type=int, default=8, help="timed KL iterations")
    args = parser.parse_args()

    base = in_fresh_process(baseline, args.threads)
    print(
        f"pbmc_facs {base['shape'][0]} x {base['shape'][1]}, {base['nnz']:,} nonzeros, "
        f"K={args.components}, threads={args.threads}; baseline peak RSS (data loaded): "
        f"{base['peak_mib']:.0f} MiB"
    )
    results = {}
    for name, (library, params) in METHODS.items():
        timed = args.kl_iters if name.endswith(" kl") else args.iters
        short = in_fresh_process(run_fit, args.threads, library, params, args.components, 2)
        long = in_fresh_process(run_fit, args.threads, library, params, args.components, 2 + timed)
        per_iter = (long["seconds"] - short["seconds"]) / timed
        results[name] = {"per_iter": per_iter, "peak_mib": max(short["peak_mib"], long["peak_mib"])}
        print(
            f"  {name}: {per_iter:.3f} s/iter, peak {results[name]['peak_mib']:.0f} MiB", flush=True
        )

    print()
    print("| method | s / iteration | peak RSS MiB (minus baseline) | sklearn s / vbsnmf s |")
    print("|---|---|---|---|")
    for ours, theirs in PAIRS:
        for name in (ours, theirs):
            row = results[name]
            ratio = f"{results[theirs]['per_iter'] / row['per_iter']:.2f}" if name == ours else ""
            print(
                f"| {name} | {row['per_iter']:.3f} | {row['peak_mib']:.0f} "
                f"(+{row['peak_mib'] - base['peak_mib']:.0f}) | {ratio} |"
            )


if __name__ == "__main__":
    main()
