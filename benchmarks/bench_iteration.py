"""Batch VB's iteration against a fused proxy of its irreducible work, on pbmc_facs.

    python benchmarks/bench_iteration.py [--threads 2] [--components 5 10 20 50 100]
        [--dtypes float64 float32] [--priors gamma hierarchical] [--rounds 5] [--breakdown]
        [--memory [--memory-iters 30] [--data big.h5ad]]

**The proxy** (`Proxy.iteration`) is one iteration written as directly as Numba allows,
doing only the work no implementation can skip: for each side, ``exp(digamma(shape) -
log(rate))`` (the O((cells + genes) K) digamma/exp work); then one parallel pass over the
nonzeros (CSR along the longer axis, float32 counts, int32 indices) that gathers the two
K-rows, forms the K products and their sum (the normaliser), adds ``x log(normaliser)`` to
the data term and scatter-adds the K scaled products into the major row and into the part's
own minor-side accumulator; then the sum of the parts' accumulators in part order. It uses
the engine's own primitives for the common work (`_kernels.row_dot_add_scaled`, which
holds the products in registers between the sum and the scatter-adds, `_kernels.digamma`;
tables in the fit's dtype, padded to the SIMD width; the log in the tables' precision; until
2026-12-03 the proxy used the two separate primitives that this one replaced, so its
times before then are not comparable), so the ratio measures what the engine does
beyond it: no rate update, no ELBO terms (no lgamma), no row maxima or log-space fallback,
no cache blocks, no float64 statistics.

**The engine** is `vbsnmf._batch.fit_batch` on the engine's own `CountData` (what
`VBNMF.fit` runs after its checks), from `_model.random_start`. A fit of ``n`` iterations
makes ``n + 1`` passes; the proxy runs ``n + 1`` iterations from the same shapes, and each
side's time is divided by ``n + 1``. ``n`` is 200 for K <= 10, then ``2000 // K`` (100 at
K=20, 40 at 50, 20 at 100).

**Rounds.** The machine is shared and noisy, so each of ``--rounds`` rounds runs, for every
K and dtype, the proxy and the engine back to back (which goes first alternates between
rounds), and the tables give medians over the rounds of each round's ratios: engine/proxy,
and engine float64 / engine float32 (the float32 speed-up). Seconds per iteration are
medians too; no single run is reported.

``--priors gamma hierarchical``: the engine under the fixed prior and under the learned
(hierarchical) prior, each from its own `random_start` (plain coordinate ascent, no
SQUAREM, so that iterations compare), against the same proxy; a table gives the median
of each round's learned / fixed time.

``--breakdown``: one extra fit per K and dtype with every `_kernels` kernel and the
`_model` functions of an iteration wrapped in timers: milliseconds per iteration in each,
inclusive and exclusive of what it calls (the rest of the iteration is numpy and Python in
the driver).

``--memory``: peak RSS of ``VBNMF(K, max_iter=30, dtype=...).fit(X)`` in a fresh process per
K and dtype (``--memory-iters``: 30 passes go past the hold of a random start's factor
shapes into SQUAREM's cycles, which hold the most q's at once; the 5 of the figures
before 2026-12-02 ended inside the hold, in plain steps), against a fresh process that
only imports vbsnmf and loads pbmc_facs, and the budget 16 bytes per nonzero + 300 MiB.
With ``--data``, the same for the counts of that ``.h5ad`` or scipy ``.npz`` (read by
anndata, or by scipy alone so that no reader library is in the process; e.g. the
lung-atlas shape of `make_big.py`; ``--rounds 0`` skips the timing).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import numba
import numpy as np
from _common import (
    in_fresh_process,
    non_negative_int,
    peak_rss_mib,
    positive_int,
    require_files,
    timed_functions,
)
from numba import njit, prange

from vbsnmf._kernels import digamma, padded_width, row_dot_add_scaled

_FASTMATH = {"contract", "arcp", "nsz"}  # the engine's flags: no "reassoc"


# -- the proxy -------------------------------------------------------------------------------
@njit(parallel=True, fastmath=_FASTMATH)
def _proxy_tables(shape, log_rate, n_components, table):
    for i in prange(shape.shape[0]):
        for l in range(n_components):
            table[i, l] = math.exp(digamma(float(shape[i, l])) - log_rate[l])
        for l in range(n_components, table.shape[1]):
            table[i, l] = 0.0


@njit(parallel=True, fastmath=_FASTMATH)
def _proxy_pass(
    indptr, indices, counts, bounds, major, minor, prior, major_shape, minor_partial, data_partial
):
    n_parts = bounds.shape[0] - 1
    n_components = major_shape.shape[1]
    for part in prange(n_parts):
        acc = minor_partial[part]
        acc[:] = 0
        row = np.empty(major.shape[1], dtype=major.dtype)
        data = 0.0
        for i in range(bounds[part], bounds[part + 1]):
            row[:] = 0
            for n in range(indptr[i], indptr[i + 1]):
                j = indices[n]
                x = counts[n]
                total = row_dot_add_scaled(major, i, minor, j, float(x), 0.0, row, acc)
                data += float(x) * float(math.log(total))
            for l in range(n_components):
                major_shape[i, l] = prior + row[l]
        data_partial[part] = data


@njit(parallel=True, fastmath=_FASTMATH)
def _proxy_sum_parts(partial, prior, minor_shape):
    n_rows, n_components = minor_shape.shape
    for j in prange(n_rows):
        for l in range(n_components):
            total = 0.0
            for part in range(partial.shape[0]):
                total += partial[part, j, l]
            minor_shape[j, l] = prior + total


class Proxy:
    """The proxy's data (CSR along the longer axis, float32 counts) and working arrays."""

    def __init__(self, X, n_components: int, dtype, start, n_parts: int):
        import scipy.sparse as sp

        csr = sp.csr_matrix(X if X.shape[0] >= X.shape[1] else X.T)
        self.indptr = csr.indptr.astype(np.int64)
        self.indices = csr.indices.astype(np.int32)
        self.counts = csr.data.astype(np.float32)
        targets = np.linspace(0, csr.nnz, n_parts + 1)
        self.bounds = np.searchsorted(self.indptr, targets).astype(np.int64)
        self.bounds[0], self.bounds[-1] = 0, csr.shape[0]
        width = padded_width(n_components, dtype)
        major_side = 0 if X.shape[0] >= X.shape[1] else 1
        shapes = (start.row_shape, start.col_shape)
        rates = (start.row_rate, start.col_rate)
        self.start_shapes = [shapes[major_side], shapes[1 - major_side]]
        self.log_rates = [
            np.log(rates[side].astype(np.float64)) for side in (major_side, 1 - major_side)
        ]
        self.shapes = [np.ones((s.shape[0], width), dtype=dtype) for s in self.start_shapes]
        self.tables = [np.zeros((s.shape[0], width), dtype=dtype) for s in self.start_shapes]
        self.n_components = n_components
        self.partial = np.empty((len(self.bounds) - 1, *self.tables[1].shape), dtype=dtype)
        self.data_partial = np.zeros(len(self.bounds) - 1)

    def reset(self):
        for shape, start in zip(self.shapes, self.start_shapes):
            shape[:, : self.n_components] = start

    def iteration(self):
        major, minor = self.tables
        for shape, log_rate, table in zip(self.shapes, self.log_rates, self.tables):
            _proxy_tables(shape, log_rate, self.n_components, table)
        _proxy_pass(
            self.indptr, self.indices, self.counts, self.bounds, major, minor, 1.0,
            self.shapes[0], self.partial, self.data_partial,
        )  # fmt: skip
        _proxy_sum_parts(self.partial, 1.0, self.shapes[1])


CLOCK = time.perf_counter  # --clock cpu: time.process_time (all threads' CPU time)


def proxy_seconds(proxy: Proxy, n_iterations: int) -> float:
    proxy.reset()
    start = CLOCK()
    for _ in range(n_iterations):
        proxy.iteration()
    return CLOCK() - start


# -- the engine ------------------------------------------------------------------------------
def engine_seconds(data, start, prior, n_iter: int, n_parts: int) -> tuple[float, np.ndarray]:
    from vbsnmf._batch import fit_batch

    begin = CLOCK()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit_batch(data, start, prior, max_iter=n_iter, tol=0.0, n_parts=n_parts)
    return CLOCK() - begin, result.elbo_trace


def n_iterations(n_components: int) -> int:
    return min(200, 2000 // n_components)


# -- the breakdown ---------------------------------------------------------------------------
def breakdown(data, start, prior, n_iter: int, n_parts: int) -> tuple[dict, float]:
    import vbsnmf

    with timed_functions(vbsnmf, CLOCK) as timers:
        seconds, _ = engine_seconds(data, start, prior, n_iter, n_parts)
    return timers.per_call_ms(n_iter + 1), 1e3 * seconds / (n_iter + 1)


# -- memory ----------------------------------------------------------------------------------
def _load(path: str | None):
    import vbsnmf

    if path is None:
        return vbsnmf.datasets.pbmc_facs().X
    if path.endswith(".npz"):  # scipy alone: the process holds no reader library
        import scipy.sparse

        return scipy.sparse.load_npz(path).tocsr()
    import anndata

    return anndata.read_h5ad(path).X


def _memory_baseline(threads: int, path: str | None) -> dict:
    X = _load(path)
    return {"nnz": int(X.nnz), "shape": X.shape, "peak_mib": peak_rss_mib()}


def _memory_fit(threads: int, n_components: int, dtype: str, path: str | None, n_iter: int) -> dict:
    import vbsnmf

    X = _load(path)
    loaded = peak_rss_mib()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.VBNMF(
            n_components, max_iter=n_iter, tol=0, random_state=0, n_threads=threads, dtype=dtype
        ).fit(X)
    return {"loaded_mib": loaded, "peak_mib": peak_rss_mib()}


def memory(args) -> None:
    base = in_fresh_process(_memory_baseline, args.threads, args.data)
    budget = 16 * base["nnz"] / 2**20 + 300
    print(
        f"\npeak RSS of VBNMF(K, max_iter={args.memory_iters}).fit(X) in a fresh process, X = "
        f"{args.data or 'pbmc_facs'} {base['shape'][0]} x {base['shape'][1]}, "
        f"{base['nnz']:,} nonzeros; import + data alone {base['peak_mib']:.0f} MiB; "
        f"budget 16 B/nnz + 300 MiB = {budget:.0f} MiB"
    )
    print("| K | dtype | peak MiB | over import + data, MiB | within budget |")
    print("|---|---|---:|---:|---|")
    for n_components in args.components:
        for dtype in args.dtypes:
            got = in_fresh_process(
                _memory_fit, args.threads, n_components, dtype, args.data, args.memory_iters
            )
            print(
                f"| {n_components} | {dtype} | {got['peak_mib']:.0f} "
                f"| {got['peak_mib'] - base['peak_mib']:.0f} "
                f"| {'yes' if got['peak_mib'] <= budget else 'no'} |",
                flush=True,
            )


def rounds(args, cases, setups, data) -> None:
    """The interleaved rounds and their tables (see the module docstring)."""
    engine_s, proxy_s, ratios, traces = defaultdict(list), defaultdict(list), defaultdict(list), {}
    speedups, learned = defaultdict(list), defaultdict(list)
    for round_index in range(args.rounds):
        for case in cases:
            start, proxy, n_iter, prior = setups[case]
            if round_index % 2 == 0:
                p = proxy_seconds(proxy, n_iter + 1)
                e, traces[case] = engine_seconds(data, start, prior, n_iter, args.threads)
            else:
                e, traces[case] = engine_seconds(data, start, prior, n_iter, args.threads)
                p = proxy_seconds(proxy, n_iter + 1)
            engine_s[case].append(e / (n_iter + 1))
            proxy_s[case].append(p / (n_iter + 1))
            ratios[case].append(e / p)
        for k in args.components:
            for name in args.priors:
                if {"float64", "float32"} <= set(args.dtypes):
                    speedups[k, name].append(
                        engine_s[k, "float64", name][-1] / engine_s[k, "float32", name][-1]
                    )
            for dtype in args.dtypes:
                if {"gamma", "hierarchical"} <= set(args.priors):
                    learned[k, dtype].append(
                        engine_s[k, dtype, "hierarchical"][-1] / engine_s[k, dtype, "gamma"][-1]
                    )
        print(f"round {round_index + 1} of {args.rounds} done", file=sys.stderr, flush=True)

    print(
        "\n| K | dtype | prior | iterations | engine ms/iter | proxy ms/iter | engine/proxy "
        "(median, min-max over rounds) | engine ms/iter/K | final ELBO | monotone |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for case in cases:
        n_components, dtype, name = case
        trace = traces[case]
        monotone = bool(np.all(np.diff(trace) >= 0))
        r = ratios[case]
        print(
            f"| {n_components} | {dtype} | {name} | {setups[case][2]} "
            f"| {1e3 * np.median(engine_s[case]):.1f} | {1e3 * np.median(proxy_s[case]):.1f} "
            f"| {np.median(r):.3f} ({min(r):.2f}-{max(r):.2f}) "
            f"| {1e3 * np.median(engine_s[case]) / n_components:.2f} "
            f"| {trace[-1]:.10g} | {'yes' if monotone else 'NO'} |"
        )
    if speedups:
        print("\n| K | prior | float32 speed-up: engine float64 / float32 time (median, "
              "min-max) | final ELBO float32 - float64, relative |")  # fmt: skip
        print("|---|---|---:|---:|")
        for (n_components, name), values in speedups.items():
            e64 = traces[n_components, "float64", name][-1]
            e32 = traces[n_components, "float32", name][-1]
            print(
                f"| {n_components} | {name} | {np.median(values):.2f} "
                f"({min(values):.2f}-{max(values):.2f}) | {(e32 - e64) / abs(e64):.1e} |"
            )
    if learned:
        print("\n| K | dtype | learned prior's time / fixed prior's (median, min-max) |")
        print("|---|---|---:|")
        for (n_components, dtype), values in learned.items():
            print(
                f"| {n_components} | {dtype} | {np.median(values):.3f} "
                f"({min(values):.2f}-{max(values):.2f}) |"
            )
    print(f"\npeak RSS of this process (data, proxy copy, all cases): {peak_rss_mib():.0f} MiB")


# -- main ------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--components", type=positive_int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument(
        "--dtypes", nargs="+", choices=["float64", "float32"], default=["float64", "float32"]
    )
    parser.add_argument(
        "--priors", nargs="+", choices=["gamma", "hierarchical"], default=["gamma"],
        help="the engine's prior: fixed Gamma, or learned (hierarchical; plain coordinate "
        "ascent, no SQUAREM, so that iterations compare)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=non_negative_int, default=5)  # 0: no timing
    parser.add_argument(
        "--iters",
        type=positive_int,
        default=None,
        help="iterations per fit (default: 200, 2000 // K)",
    )
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="cpu: CPU time of all threads"
    )
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--memory-iters", type=positive_int, default=30)
    parser.add_argument(
        "--data", help="--memory: an .h5ad (or scipy .npz) of counts instead of pbmc_facs"
    )
    args = parser.parse_args()
    require_files(parser, data=args.data)
    if args.data is not None:  # read by the memory children, after every timing round
        import zipfile

        import h5py

        npz = args.data.endswith(".npz")
        if not (zipfile.is_zipfile(args.data) if npz else h5py.is_hdf5(args.data)):
            kind = "a scipy .npz" if npz else "an .h5ad (HDF5) file"
            parser.error(f"argument --data: not {kind}: {args.data}")
    if args.threads > numba.config.NUMBA_NUM_THREADS:
        parser.error(f"--threads above NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}")
    numba.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    import vbsnmf
    from vbsnmf import _model
    from vbsnmf._data import as_count_data

    X = vbsnmf.datasets.pbmc_facs().X
    data = as_count_data(X)
    total = float(np.sum(data.counts, dtype=np.float64))
    totals = _model.side_totals(data)
    priors = {"gamma": _model.GammaPrior(), "hierarchical": _model.HierarchicalPrior()}
    print(
        f"pbmc_facs {X.shape[0]} x {X.shape[1]}, {data.nnz:,} nonzeros, {args.threads} "
        f"threads, {args.rounds} rounds, {args.clock} time; engine counts stored as "
        f"{data.counts.dtype}"
    )

    cases = [(k, d, p) for k in args.components for d in args.dtypes for p in args.priors]
    setups = {}
    for n_components, dtype, name in cases:
        prior = priors[name]
        start = _model.random_start(
            data.shape, n_components, total, 0, np.dtype(dtype), prior=prior, totals=totals
        )
        fixed_start = _model.random_start(data.shape, n_components, total, 0, np.dtype(dtype))
        proxy = Proxy(X, n_components, np.dtype(dtype), fixed_start, args.threads)
        n_iter = args.iters or n_iterations(n_components)
        # compile (or load from cache) both at this dtype before timing
        proxy_seconds(proxy, 1)
        engine_seconds(data, start, prior, 1, args.threads)
        setups[n_components, dtype, name] = (start, proxy, n_iter, prior)

    if args.rounds:
        rounds(args, cases, setups, data)
    if args.breakdown:
        for case in cases:
            start, _, n_iter, prior = setups[case]
            rows, per_iteration = breakdown(data, start, prior, n_iter, args.threads)
            print(
                f"\nbreakdown K={case[0]} {case[1]} {case[2]} prior: {per_iteration:.1f} ms per "
                "iteration"
            )
            print("| function | calls/iter | ms/iter inclusive | ms/iter exclusive |")
            print("|---|---:|---:|---:|")
            for name, (calls, inclusive, exclusive) in sorted(
                rows.items(), key=lambda item: -item[1][1]
            ):
                print(f"| {name} | {calls:.1f} | {inclusive:.2f} | {exclusive:.2f} |")
    if args.memory:
        memory(args)


if __name__ == "__main__":
    main()
