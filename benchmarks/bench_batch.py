"""Batch VB on pbmc_facs against scikit-learn's KL multiplicative updates, per iteration.

    python benchmarks/bench_batch.py [--threads 2] [--components 10 20] [--iters 30]

Every measurement runs in its own fresh process (peak RSS is that process's own, including
the interpreter, imports and the data: the baseline line shows how much that is). vbsnmf:
JIT (or cache-load) time from a 1-iteration fit, then seconds per iteration from a
``--iters`` fit. scikit-learn: ``NMF(beta_loss="kullback-leibler", solver="mu",
init="random")`` on the same CSR matrix, seconds per iteration from the difference of a
``max_iter=2`` and a ``max_iter=2 + --sk-iters`` fit (cancelling its set-up).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import in_fresh_process, peak_rss_mib, positive_int


def _load(threads: int):
    os.environ["NUMBA_NUM_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    import vbsnmf

    return vbsnmf.datasets.pbmc_facs().X.tocsr()


def baseline(threads: int) -> dict:
    X = _load(threads)
    return {"nnz": int(X.nnz), "shape": X.shape, "peak_mib": peak_rss_mib()}


def run_vbsnmf(threads: int, n_components: int, iters: int) -> dict:
    X = _load(threads)
    import vbsnmf

    warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
    start = time.perf_counter()
    vbsnmf.VBNMF(n_components, max_iter=1, tol=0, random_state=0, n_threads=threads).fit(X)
    first = time.perf_counter() - start
    model = vbsnmf.VBNMF(n_components, max_iter=iters, tol=0, random_state=0, n_threads=threads)
    start = time.perf_counter()
    model.fit(X)
    seconds = time.perf_counter() - start
    # A fit of n iterations makes n + 1 passes (the last gives the ELBO of the result).
    per_iter = seconds / (iters + 1)
    return {
        "jit_s": first - 2 * per_iter,
        "s_per_iter": per_iter,
        "final_elbo": float(model.elbo_trace_[-1]),
        "peak_mib": peak_rss_mib(),
    }


def run_sklearn(threads: int, n_components: int, iters: int) -> dict:
    X = _load(threads)
    from sklearn.decomposition import NMF

    warnings.simplefilter("ignore")
    times = []
    for max_iter in (2, 2 + iters):
        model = NMF(
            n_components,
            beta_loss="kullback-leibler",
            solver="mu",
            init="random",
            max_iter=max_iter,
            tol=0,
            random_state=0,
        )
        start = time.perf_counter()
        model.fit(X)
        times.append(time.perf_counter() - start)
    return {"s_per_iter": (times[1] - times[0]) / iters, "peak_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--components", type=positive_int, nargs="+", default=[10, 20])
    parser.add_argument("--iters", type=positive_int, default=30)
    parser.add_argument("--sk-iters", type=positive_int, default=10)
    args = parser.parse_args()

    base = in_fresh_process(baseline, args.threads)
    nnz = base["nnz"]
    print(
        f"pbmc_facs {base['shape'][0]} x {base['shape'][1]}, {nnz:,} nonzeros, "
        f"{args.threads} threads; baseline peak RSS (Python + data) {base['peak_mib']:.0f} MiB"
    )
    header = (
        "| K | vbsnmf s/iter | JIT s | nnz*K updates/s | vbsnmf peak MiB | final ELBO "
        "| sklearn KL-MU s/iter | sklearn peak MiB | speed-up |"
    )
    print(header)
    print("|---" * 9 + "|")
    for n_components in args.components:
        mine = in_fresh_process(run_vbsnmf, args.threads, n_components, args.iters)
        theirs = in_fresh_process(run_sklearn, args.threads, n_components, args.sk_iters)
        print(
            f"| {n_components} | {mine['s_per_iter']:.4f} | {mine['jit_s']:.2f} "
            f"| {nnz * n_components / mine['s_per_iter']:.3g} | {mine['peak_mib']:.0f} "
            f"| {mine['final_elbo']:.6g} | {theirs['s_per_iter']:.4f} | {theirs['peak_mib']:.0f} "
            f"| {theirs['s_per_iter'] / mine['s_per_iter']:.1f}x |"
        )


if __name__ == "__main__":
    main()
