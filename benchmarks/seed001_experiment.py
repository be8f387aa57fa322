"""Seed 001's numerical experiment: error and time against density, rows and rank.

The seed fits random count matrices whose nonzero entries are "a Poisson draw + 1", with
a fraction 0.1 ... 0.5 of nonzeros, R in {100, 1000, 5000} rows, C = 2000 columns and rank
L in {2, 5, 10}, at a fixed 100 iterations, 10 repetitions per cell, and reports the root
mean squared error between X and the fitted Z W' (all R x C entries, zeros included) and
the computing time (median with an 80 % interval). The sparse method's cost grows with
R * C * density * L, the usual dense NMF's with R * C * L.

Methods (all at exactly ``--iterations`` iterations, no early stop):

``vb``
    `vbsnmf.VBNMF`, batch variational Bayes over the nonzeros (CSR input).
``mu_kl``
    `vbsnmf.NMF(loss="kl", solver="mu")`, classical multiplicative updates on the sparse
    matrix (skipped with a note when this vbsnmf has no ``NMF`` yet).
``sklearn_dense``
    scikit-learn ``NMF(beta_loss="kullback-leibler", solver="mu")`` on the dense array.

Every method runs with ``--threads`` Numba and BLAS threads (default 1). Per fit the
script records the wall and CPU time of ``fit`` alone (data generation, conversion to
dense and the error evaluation are outside the timer); the peak of memory traced by
`tracemalloc` above its level before, measured in a separate 3-iteration fit from the same
start (numpy arrays and Python objects; not Numba-internal scratch or BLAS buffers); the
bytes of the input handed to the fit; and the RMSE, computed for every method the same
way: row blocks of ``X - Z W'``, never the whole dense product at once.

Outputs in ``--out`` (written atomically): ``runs.csv`` (one line per fit),
``summary.csv`` (median and 10 %/90 % quantiles per cell and method), ``rmse.png`` and
``time.png`` (CPU seconds; panels by R (rows) and L (columns), x = density, points =
median, bars = 10-90 % interval). ``--plot-only CSV [CSV ...]`` merges runs files (the
grid run in parts, e.g. with ``--first-rep``) and redraws the summary and figures.

Examples::

    python benchmarks/seed001_experiment.py --quick --out /tmp/seed001
    python benchmarks/seed001_experiment.py --reps 3 --out benchmarks/results/seed001 --replace
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from _common import (
    non_negative_float,
    non_negative_int,
    positive_int,
    require_files,
    require_numba_threads,
    require_out_folder,
)

DENSITIES = (0.1, 0.2, 0.3, 0.4, 0.5)
ROWS = (100, 1000, 5000)
RANKS = (2, 5, 10)
N_COLS = 2000
N_ITER = 100
REPS = 10
# Small enough for CI (30 iterations instead of 100), with enough nonzeros (80k vs 400k)
# that the sparse methods' time clearly grows with density even on a loaded machine.
QUICK = {"densities": (0.1, 0.5), "rows": (400,), "ranks": (5,), "reps": 3, "iterations": 30}
METHODS = ("vb", "mu_kl", "sklearn_dense")
METHOD_LABELS = {
    "vb": "vbsnmf VBNMF (sparse VB)",
    "mu_kl": "vbsnmf NMF MU-KL (sparse)",
    "sklearn_dense": "scikit-learn NMF MU-KL (dense)",
}
# Iterations of the separate fit whose peak memory is traced (see `run_fit`).
MEMORY_ITER = 3
# Elements of one residual block in the RMSE (8 MiB of float64).
RMSE_BLOCK_ELEMENTS = 1 << 20


# -- data -----------------------------------------------------------------------------------
def simulate_counts(
    n_rows: int,
    n_cols: int,
    density: float,
    rng: np.random.Generator,
    poisson_mean: float = 1.0,
    block_rows: int = 256,
) -> sp.csr_array:
    """Seed 001's random matrix: each entry is nonzero with probability ``density``, and
    a nonzero is ``1 + Poisson(poisson_mean)``.

    Built in row blocks, so nothing of size ``n_rows x n_cols`` is allocated beyond one
    block of the Bernoulli draws.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    indptr = [np.zeros(1, dtype=np.int64)]
    indices, values = [], []
    nnz_so_far = 0
    for start in range(0, n_rows, block_rows):
        stop = min(start + block_rows, n_rows)
        is_nonzero = rng.random((stop - start, n_cols)) < density
        block_rows_idx, block_cols = np.nonzero(is_nonzero)  # row-major order: CSR order
        counts_per_row = np.bincount(block_rows_idx, minlength=stop - start)
        indptr.append(nnz_so_far + np.cumsum(counts_per_row))
        nnz_so_far += block_cols.size
        indices.append(block_cols.astype(np.int32))
        values.append(rng.poisson(poisson_mean, size=block_cols.size) + 1.0)
    return sp.csr_array(
        (np.concatenate(values), np.concatenate(indices), np.concatenate(indptr)),
        shape=(n_rows, n_cols),
    )


def cell_rng(seed: int, n_rows: int, density: float, rep: int) -> np.random.Generator:
    """The generator of one data set: the same for every rank and method of a cell."""
    return np.random.default_rng([seed, n_rows, round(density * 1000), rep])


def init_seed(seed: int, n_rows: int, density: float, rep: int, n_components: int) -> int:
    """Starting-value seed of one fit, shared by the methods of the same cell and rank."""
    entropy = [seed, n_rows, round(density * 1000), rep, n_components, 1]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


# -- error --------------------------------------------------------------------------------
def rmse_blockwise(
    counts: sp.csr_array,
    row_factors: np.ndarray,
    col_factors: np.ndarray,
    block_elements: int = RMSE_BLOCK_ELEMENTS,
) -> float:
    """``sqrt(mean((X - Z W')^2))`` over all entries, zeros included, one block of rows at
    a time (at most ``block_elements`` entries of ``Z W'`` exist at once)."""
    n_rows, n_cols = counts.shape
    block_rows = max(1, block_elements // n_cols)
    squared_error = 0.0
    for start in range(0, n_rows, block_rows):
        stop = min(start + block_rows, n_rows)
        residual = counts[start:stop].toarray() - row_factors[start:stop] @ col_factors.T
        squared_error += float(np.einsum("ij,ij->", residual, residual))
    return float(np.sqrt(squared_error / (n_rows * n_cols)))


# -- methods ------------------------------------------------------------------------------
@dataclass
class Method:
    """One contender: ``fit(X, n_components, n_iter, random_state, n_threads)`` returns
    ``(Z, W, n_iter_run)`` with ``X ~ Z W'``; ``dense`` says it takes the dense array."""

    name: str
    fit: Callable
    dense: bool


def _fit_vb(X, n_components, n_iter, random_state, n_threads):
    import vbsnmf

    # Abe and Shimamura's model: the fixed Gamma prior, plain coordinate ascent.
    model = vbsnmf.VBNMF(
        n_components,
        prior="gamma",
        max_iter=n_iter,
        tol=0.0,
        random_state=random_state,
        n_threads=n_threads,
    )
    with warnings.catch_warnings():
        # tol=0 runs max_iter iterations, which the estimator reports as not converged.
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        cell_factors = model.fit_transform(X)
    return cell_factors, model.components_.T, model.n_iter_


def _classic_nmf():
    """vbsnmf's classical NMF estimator, or None in a vbsnmf without it."""
    import vbsnmf

    if hasattr(vbsnmf, "NMF"):
        return vbsnmf.NMF
    try:
        from vbsnmf.classic import NMF
    except ImportError:
        return None
    return NMF


def _fit_mu_kl(X, n_components, n_iter, random_state, n_threads):
    import vbsnmf

    model = _classic_nmf()(
        n_components,
        loss="kl",
        solver="mu",
        max_iter=n_iter,
        tol=0.0,
        init="random",
        random_state=random_state,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        warnings.simplefilter("ignore", _sklearn_convergence_warning())
        row_factors = model.fit_transform(X)
    return row_factors, model.components_.T, model.n_iter_


def _fit_sklearn_dense(X, n_components, n_iter, random_state, n_threads):
    from sklearn.decomposition import NMF
    from threadpoolctl import threadpool_limits

    model = NMF(
        n_components,
        beta_loss="kullback-leibler",
        solver="mu",
        max_iter=n_iter,
        tol=0.0,
        init="random",
        random_state=random_state,
    )
    with threadpool_limits(n_threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", _sklearn_convergence_warning())
        row_factors = model.fit_transform(X)
    return row_factors, model.components_.T, model.n_iter_


def _sklearn_convergence_warning():
    from sklearn.exceptions import ConvergenceWarning

    return ConvergenceWarning


def available_methods() -> dict[str, Method]:
    """The methods this installation can run (``mu_kl`` needs vbsnmf's classical NMF)."""
    methods = {
        "vb": Method("vb", _fit_vb, dense=False),
        "sklearn_dense": Method("sklearn_dense", _fit_sklearn_dense, dense=True),
    }
    if _classic_nmf() is not None:
        methods["mu_kl"] = Method("mu_kl", _fit_mu_kl, dense=False)
    return methods


def input_bytes(X) -> int:
    if sp.issparse(X):
        return int(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes)
    return int(X.nbytes)


def run_fit(
    method: Method,
    counts: sp.csr_array,
    n_components: int,
    n_iter: int,
    random_state: int,
    n_threads: int,
    trace_memory: bool = True,
) -> dict:
    """One timed fit of ``n_iter`` iterations; returns its time, iterations run and RMSE.

    With ``trace_memory``, a separate fit of `MEMORY_ITER` iterations from the same start
    runs first under `tracemalloc` (whose bookkeeping would slow the timed fit): every
    iteration allocates the same temporaries, so the peak is reached in the first one.
    """
    X = counts.toarray() if method.dense else counts
    peak_bytes = np.nan
    if trace_memory:
        peak_bytes = traced_peak_bytes(
            method, X, n_components, MEMORY_ITER, random_state, n_threads
        )
    start, start_cpu = time.perf_counter(), time.process_time()
    row_factors, col_factors, n_iter_run = method.fit(
        X, n_components, n_iter, random_state, n_threads
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    if n_iter_run != n_iter:
        raise RuntimeError(f"{method.name} ran {n_iter_run} iterations, expected {n_iter}")
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_traced_mib": peak_bytes / 2**20,
        "input_mib": input_bytes(X) / 2**20,
        "n_iter": int(n_iter_run),
        "rmse": rmse_blockwise(counts, row_factors, col_factors),
    }


def traced_peak_bytes(method: Method, X, n_components, n_iter, random_state, n_threads) -> int:
    """Peak of `tracemalloc`-traced memory during one fit, above its level before."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        method.fit(X, n_components, n_iter, random_state, n_threads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


def warm_up(methods: Sequence[Method], n_cols: int, n_threads: int) -> None:
    """Fit each method a few iterations on a small matrix of the experiment's width, so
    that Numba compilation, imports and thread-pool start-up are not timed."""
    small = simulate_counts(200, n_cols, 0.1, np.random.default_rng(0))
    for method in methods:
        X = small.toarray() if method.dense else small
        method.fit(X, 2, 5, 0, n_threads)


# -- the experiment -----------------------------------------------------------------------
@dataclass
class Config:
    densities: tuple[float, ...] = DENSITIES
    rows: tuple[int, ...] = ROWS
    ranks: tuple[int, ...] = RANKS
    n_cols: int = N_COLS
    n_iter: int = N_ITER
    reps: int = REPS
    first_rep: int = 0
    methods: tuple[str, ...] = METHODS
    seed: int = 1
    poisson_mean: float = 1.0
    n_threads: int = 1
    trace_memory: bool = True


def run_experiment(config: Config, on_progress: Callable[[pd.DataFrame], None] | None = None):
    """Run the grid; repetitions are the outer loop so that load on a shared machine
    spreads over all cells. ``on_progress(runs)`` is called after each data set."""
    import numba

    n_threads = config.n_threads
    numba.set_num_threads(n_threads)
    methods = available_methods()
    chosen = [methods[name] for name in config.methods if name in methods]
    missing = [name for name in config.methods if name not in methods]
    if missing:
        print(f"skipping {', '.join(missing)}: not available in this vbsnmf", file=sys.stderr)
    warm_up(chosen, config.n_cols, n_threads)
    records = []
    for rep in range(config.first_rep, config.first_rep + config.reps):
        for n_rows in config.rows:
            for density in config.densities:
                counts = simulate_counts(
                    n_rows,
                    config.n_cols,
                    density,
                    cell_rng(config.seed, n_rows, density, rep),
                    config.poisson_mean,
                )
                for n_components in config.ranks:
                    random_state = init_seed(config.seed, n_rows, density, rep, n_components)
                    for method in chosen:
                        result = run_fit(
                            method,
                            counts,
                            n_components,
                            config.n_iter,
                            random_state,
                            n_threads,
                            config.trace_memory,
                        )
                        records.append(
                            {
                                "method": method.name,
                                "rows": n_rows,
                                "cols": config.n_cols,
                                "rank": n_components,
                                "density": density,
                                "rep": rep,
                                "nnz": counts.nnz,
                                "seed": config.seed,
                                "random_state": random_state,
                                "threads": n_threads,
                                **result,
                            }
                        )
                if on_progress is not None:
                    on_progress(pd.DataFrame.from_records(records))
    return pd.DataFrame.from_records(records)


# The columns of runs.csv that the summary and the figures read (--plot-only checks them).
RUNS_COLUMNS = (
    "method", "rows", "cols", "rank", "density", "rep",
    "rmse", "seconds", "cpu_seconds", "peak_traced_mib", "input_mib",
)  # fmt: skip


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Median and 10 %/90 % quantiles of RMSE, time and memory per cell and method."""
    keys = ["method", "rows", "cols", "rank", "density"]
    grouped = runs.groupby(keys, sort=True)
    summary = grouped.size().rename("reps").to_frame()
    for column in ("rmse", "seconds", "cpu_seconds", "peak_traced_mib"):
        summary[f"{column}_median"] = grouped[column].median()
        summary[f"{column}_q10"] = grouped[column].quantile(0.1)
        summary[f"{column}_q90"] = grouped[column].quantile(0.9)
    summary["input_mib"] = grouped["input_mib"].median()
    return summary.reset_index()


def time_ratios(
    summary: pd.DataFrame,
    dense: str = "sklearn_dense",
    sparse: str = "vb",
    column: str = "cpu_seconds_median",
) -> pd.DataFrame:
    """Median dense time / median sparse time per (rows, rank, density), as a wide table
    with densities as columns; empty when either method is absent."""
    times = summary.pivot_table(index=["rows", "rank", "density"], columns="method", values=column)
    if dense not in times or sparse not in times:
        return pd.DataFrame()
    return (times[dense] / times[sparse]).unstack("density")


# -- figures ------------------------------------------------------------------------------
def plot_panels(summary: pd.DataFrame, column: str, ylabel: str, path: Path, log=False):
    """Panels by rows (R, panel rows) and rank (L, panel columns); x = density, points =
    median, bars = 10-90 % interval, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(summary["rows"].unique())
    ranks = sorted(summary["rank"].unique())
    methods = [m for m in METHODS if m in set(summary["method"])]
    densities = sorted(summary["density"].unique())
    spacing = min(np.diff(densities)) if len(densities) > 1 else 0.1
    offsets = (np.arange(len(methods)) - (len(methods) - 1) / 2) * spacing * 0.15
    fig, axes = plt.subplots(
        len(rows),
        len(ranks),
        figsize=(max(7.0, 3.2 * len(ranks) + 0.6), 2.6 * len(rows) + 0.8),
        sharex=True,
        squeeze=False,
    )
    for i, n_rows in enumerate(rows):
        for j, n_components in enumerate(ranks):
            ax = axes[i, j]
            for k, method in enumerate(methods):
                cell = summary[
                    (summary["method"] == method)
                    & (summary["rows"] == n_rows)
                    & (summary["rank"] == n_components)
                ].sort_values("density")
                if cell.empty:
                    continue
                median = cell[f"{column}_median"].to_numpy()
                bars = np.vstack([median - cell[f"{column}_q10"], cell[f"{column}_q90"] - median])
                ax.errorbar(
                    cell["density"] + offsets[k],
                    median,
                    yerr=bars,
                    fmt="o",
                    markersize=4,
                    capsize=2,
                    color=f"C{k}",
                    label=METHOD_LABELS[method],
                )
            if log:
                ax.set_yscale("log")
            ax.set_title(f"R = {n_rows}, L = {n_components}", fontsize=9)
            ax.set_xticks(densities)
            ax.grid(alpha=0.3)
            if i == len(rows) - 1:
                ax.set_xlabel("fraction of nonzeros")
            if j == 0:
                ax.set_ylabel(ylabel)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(methods), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


# -- output -------------------------------------------------------------------------------
def _atomic_write(path: Path, write: Callable) -> None:
    """Write through a temporary file in the same directory, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; results are for everyone
        os.replace(tmp_name, path)
    except BaseException:
        os.unlink(tmp_name)
        raise


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    _atomic_write(path, lambda f: f.write(frame.to_csv(index=False).encode()))


def write_outputs(runs: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Summary CSV and both figures from the runs; returns the summary."""
    summary = summarise(runs)
    write_csv(summary, out / "summary.csv")
    plot_panels(summary, "rmse", "RMSE", out / "rmse.png")
    plot_panels(summary, "cpu_seconds", "CPU seconds per fit", out / "time.png", log=True)
    return summary


# -- command line -------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Reproduce seed 001's experiment: RMSE and time of sparse VB, sparse "
        "MU-KL and dense scikit-learn NMF against density, rows and rank.",
    )
    parser.add_argument("--quick", action="store_true", help="small grid for CI (seconds)")
    parser.add_argument("--densities", type=float, nargs="+", help=f"default {DENSITIES}")
    parser.add_argument("--rows", type=positive_int, nargs="+", help=f"default {ROWS}")
    parser.add_argument("--ranks", type=positive_int, nargs="+", help=f"default {RANKS}")
    parser.add_argument("--cols", type=positive_int, default=N_COLS)
    parser.add_argument("--iterations", type=positive_int, help=f"default {N_ITER} (--quick: 30)")
    parser.add_argument("--reps", type=positive_int, help=f"repetitions per cell (default {REPS})")
    parser.add_argument(
        "--first-rep",
        type=non_negative_int,
        default=0,
        help="index of the first repetition (to add repetitions to an earlier run)",
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seed", type=non_negative_int, default=1)
    parser.add_argument(
        "--poisson-mean", type=non_negative_float, default=1.0, help="nonzero = 1 + Pois(.)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="Numba and BLAS threads of every method (default 1: compares algorithms, "
        "not thread pools, and stays stable on a shared machine)",
    )
    parser.add_argument("--no-memory", action="store_true", help="do not run tracemalloc")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder of the results; a new one unless --plot-only (benchmarks/results/seed001 "
        "holds the published results)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace the results of an earlier run in --out (refused without it)",
    )
    parser.add_argument(
        "--plot-only",
        type=Path,
        nargs="+",
        metavar="CSV",
        help="merge these runs files into --out and redraw summary and figures (no fitting)",
    )
    args = parser.parse_args(argv)
    require_files(parser, plot_only=args.plot_only)
    if not args.plot_only and not args.replace and (args.out / "runs.csv").exists():
        # runs.csv is rewritten after every fit: a second run (say, --first-rep to add
        # repetitions) would replace the first one's fits at its first fit, not add to them
        parser.error(
            f"argument --out: {args.out} holds the runs.csv of an earlier run; give a new "
            "folder and merge the two with --plot-only, or --replace to replace it"
        )
    for name in ("rows", "ranks", "reps"):
        values = getattr(args, name)
        if values is not None and min(np.atleast_1d(values)) < 1:
            parser.error(f"--{name} must be positive")
    if args.densities is not None and not all(0 < d <= 1 for d in args.densities):
        parser.error("--densities must be in (0, 1]")
    if args.first_rep < 0:
        parser.error("--first-rep must be >= 0")
    if (
        args.cols < 1
        or (args.iterations is not None and args.iterations < 1)
        or args.poisson_mean < 0
    ):
        parser.error("--cols and --iterations must be positive, --poisson-mean >= 0")
    if args.threads < 1:
        parser.error("--threads must be positive")
    require_numba_threads(parser, args.threads)
    require_out_folder(parser, out=args.out)  # its runs.csv rewritten after each fit
    return args


def config_from_args(args: argparse.Namespace) -> Config:
    base = QUICK if args.quick else {}
    return Config(
        densities=tuple(args.densities or base.get("densities", DENSITIES)),
        rows=tuple(args.rows or base.get("rows", ROWS)),
        ranks=tuple(args.ranks or base.get("ranks", RANKS)),
        n_cols=args.cols,
        n_iter=args.iterations or base.get("iterations", N_ITER),
        reps=args.reps or base.get("reps", REPS),
        first_rep=args.first_rep,
        methods=tuple(args.methods),
        seed=args.seed,
        poisson_mean=args.poisson_mean,
        n_threads=args.threads,
        trace_memory=not args.no_memory,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out
    if args.plot_only:
        parts = []
        for path in args.plot_only:
            try:
                parts.append(pd.read_csv(path))
            except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
                print(f"seed001_experiment: cannot read runs {path}: {error}", file=sys.stderr)
                return 2
            # another CSV (or an empty one) was pandas' KeyError traceback in the summary
            missing = [column for column in RUNS_COLUMNS if column not in parts[-1].columns]
            if missing:
                print(
                    f"seed001_experiment: {path} is not a runs.csv of this script: no "
                    f"{', '.join(missing)} column{'s' if len(missing) > 1 else ''}",
                    file=sys.stderr,
                )
                return 2
        runs = pd.concat(parts, ignore_index=True)
        # parts of a grid run separately: one line per fit, the first file's if repeated
        runs = runs.drop_duplicates(["method", "rows", "cols", "rank", "density", "rep"])
        runs = runs.sort_values(["rep", "rows", "density", "rank", "method"], kind="stable")
    else:
        runs = run_experiment(
            config_from_args(args), on_progress=lambda r: write_csv(r, out / "runs.csv")
        )
    write_csv(runs, out / "runs.csv")
    summary = write_outputs(runs, out)
    for sparse in ("vb", "mu_kl"):
        ratios = time_ratios(summary, sparse=sparse)
        if not ratios.empty:
            print(f"median CPU time, dense scikit-learn / sparse {sparse} (rows, rank x density):")
            print(ratios.round(2).to_string())
    print(f"wrote {out}/runs.csv, summary.csv, rmse.png, time.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
