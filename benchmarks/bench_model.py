"""The model on real data: vbsnmf's learned and fixed priors beside hpfrec and scikit-learn.

    python benchmarks/bench_model.py --ks 10 20 --extra-ks 15 \
        --out benchmarks/results/model_pbmc_facs.txt
    python benchmarks/bench_model.py --timing 5 --out benchmarks/results/model_pbmc_facs.txt

pbmc_facs (3,774 cells x 16,791 genes, 2.70M nonzeros), every tool scored by the same code
from its factors alone (cell factors ``Z``, cells x K; gene loadings ``W``, genes x K; the
posterior means for the Bayesian tools, the point estimates for scikit-learn):

- train ll / nonzero: the Poisson log-likelihood of all the counts under ``mu = Z W'``
  (``sum_nz x log mu - lgamma(x + 1)`` minus ``sum_l (sum_i Z_il)(sum_j W_jl)``; ``mu`` at the
  nonzeros in blocks, nothing cells x genes is formed), over the number of nonzeros, of a
  fit on all the counts by each tool's defaults and stopping rule: vbsnmf up to its
  ``max_iter=1000``, hpfrec and scikit-learn up to 200 iterations (scikit-learn's default
  ``max_iter``; the issue's table used 200-iteration fits);
- held-out ll / count: count splitting. ``train = Binomial(x, 1/2)`` of every count
  (`vbsnmf.tl.count_split` with seed 0, the same split for every tool),
  ``test = x - train``; a fit on ``train`` scores the test half the same way, over the
  test half's total count;
- kNN: ``KNeighborsClassifier(15)``, ``StratifiedKFold(5, shuffle=True, random_state=0)``;
  ARI: ``KMeans(5, n_init=10, random_state=0)``; both on ``Z`` normalised to sum 1 per cell,
  against ``obs['subpop']``;
- active factors: `vbsnmf.tl.nmf`'s rule (a factor's fitted counts beyond the prior's floor
  above five typical cells' counts), the floor of the fixed Gamma prior for
  ``vbsnmf-gamma``, zero for the others (the learned prior, hpfrec's hierarchical prior,
  scikit-learn);
- passes (vbsnmf: passes over the nonzeros; hpfrec, scikit-learn: iterations), wall and
  CPU seconds of ``fit`` alone, peak RSS of the process (data loaded: see the baseline).

Tools: ``vbsnmf`` (``VBNMF(K)``, the learned prior, defaults), ``vbsnmf-gamma``
(``prior="gamma"``, the fixed Gamma(1, 1) prior, defaults), ``vbsnmf-nndsvda``
(``init="nndsvda"``, the learned prior from NNDSVDa's start, defaults otherwise),
``hpfrec`` (hierarchical Poisson factorisation, the model of scHPF, with scHPF's settings:
a = c = 0.3, a' = c' = 1, b', d' from the mean/variance ratio of the cell and gene totals,
d' clipped as scHPF clips it; stopped when the full training log-likelihood changes by
less than 1e-5 relative between checks 10 iterations apart, scHPF's rule, capped at
``--hpfrec-maxiter`` iterations), ``sklearn`` (``NMF(K, beta_loss="kullback-leibler", solver="mu",
init="nndsvda", max_iter=--sklearn-maxiter)``, its own tol 1e-4, on the sparse matrix).
The held-out fits (on the train half) use the same settings.
Every tool starts from seed 0, runs on ``--threads`` threads (Numba, OpenMP, BLAS), and
every fit runs in a fresh process. Fits run in order of importance (`plan`); ``--resume``
keeps the fits an earlier run wrote to ``--out``.

Time against a same-process reference: after each vbsnmf fit the same process times
``--ref-passes`` plain passes over the nonzeros at that K (`vbsnmf._model.shape_statistics`,
the one step that visits the data) and reports the fit's seconds as a number of such
passes, which the machine's load changes far less than the seconds.

``--timing N``: the "default fit to convergence at K=10 in at most 5 s" target. N fresh
processes each time ``VBNMF(10, n_threads=2, random_state=0).fit(X)`` (the data loaded
first; the Numba kernels load from their on-disk cache inside the timed call) and the same
with ``accelerate=False`` (plain coordinate ascent from the same start), and report the
medians, the passes and the two final ELBOs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    emit,
    in_fresh_process,
    load_average,
    non_negative_int,
    open_to_append,
    peak_rss_mib,
    positive_int,
    require_out_file,
)

SPLIT_SEED = 0
MODEL_SEED = 0
TOOLS = ("vbsnmf", "vbsnmf-nndsvda", "vbsnmf-gamma", "hpfrec", "sklearn")
# pbmc_facs, on which the defaults were developed, and two data sets no test and no choice
# of a default has seen: text counts and pixel intensities.
DATASETS = ("pbmc_facs", "reuters", "digits")
# What a tool or a data set needs beyond vbsnmf's own dependencies: the module imported and
# the pip package that gives it.
OPTIONAL = {"hpfrec": ("hpfrec", "hpfrec"), "reuters": ("lda", "lda")}


def not_installed(name: str) -> str | None:
    """The install advice when tool or data set ``name`` needs a package this environment
    does not have (found, not imported), else None."""
    import importlib.util

    if name not in OPTIONAL:
        return None
    module, package = OPTIONAL[name]
    if importlib.util.find_spec(module) is not None:
        return None
    return f"needs the {package} package, not installed (pip install {package})"


# -- data and scores ------------------------------------------------------------------------
def load(threads: int, dataset: str = "pbmc_facs"):
    """``dataset`` as CSR float64 (rows are the "cells": cells, documents, images) and its
    labels (None for reuters); see `DATASETS`."""
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    import scipy.sparse

    labels = None
    if dataset == "pbmc_facs":
        import vbsnmf

        adata = vbsnmf.datasets.pbmc_facs()
        matrix, labels = adata.X, np.asarray(adata.obs["subpop"]).astype(str)
    elif dataset == "reuters":
        import lda.datasets  # the `lda` package's sample of Reuters news (pip install lda)

        matrix = lda.datasets.load_reuters()
    elif dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        matrix, labels = digits.data, digits.target.astype(str)
    else:
        raise ValueError(f"unknown data set {dataset!r}; one of {DATASETS}")
    matrix = scipy.sparse.csr_matrix(matrix, dtype=np.float64)
    matrix.sort_indices()
    return matrix, labels


def count_split(matrix):
    """``(train, test)``: ``Binomial(x, 1/2)`` of every count and the rest."""
    from vbsnmf.tl import count_split as split

    return split(matrix, 0.5, random_state=SPLIT_SEED)


def poisson_loglik(matrix, cells: np.ndarray, genes: np.ndarray) -> float:
    """``sum_ij x log mu - lgamma(x + 1) - mu``, ``mu = cells @ genes.T``, in blocks of
    nonzeros; ``mu`` floored at the smallest positive double where a count is."""
    from scipy.special import gammaln

    coo = matrix.tocoo()
    total = 0.0
    for start in range(0, coo.nnz, 1 << 18):
        rows, cols = coo.row[start : start + (1 << 18)], coo.col[start : start + (1 << 18)]
        x = coo.data[start : start + (1 << 18)]
        mu = np.einsum("nk,nk->n", cells[rows], genes[cols])
        total += float(np.sum(x * np.log(np.maximum(mu, np.finfo(float).tiny)) - gammaln(x + 1)))
    return total - float(cells.sum(axis=0) @ genes.sum(axis=0))


def clustering_scores(cells: np.ndarray, labels: np.ndarray | None) -> dict:
    """kNN accuracy and the ARI of KMeans with one cluster per label (none without labels)."""
    if labels is None:
        return {}
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    sums = cells.sum(axis=1, keepdims=True)
    usage = cells / np.where(sums > 0, sums, 1.0)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    knn = cross_val_score(KNeighborsClassifier(15), usage, labels, cv=folds).mean()
    n_clusters = len(np.unique(labels))
    clusters = KMeans(n_clusters, n_init=10, random_state=0).fit_predict(usage)
    return {"knn": float(knn), "ari": float(adjusted_rand_score(labels, clusters))}


# -- the fits: (cell factors, gene loadings, fixed Gamma prior (shape, rate) or None, info) ----
def fit_vbsnmf(matrix, k: int, threads: int, prior: str, ref_passes: int, **options):
    import vbsnmf
    from vbsnmf._data import as_count_data
    from vbsnmf._model import GammaPrior, VariationalParams, shape_statistics

    model = vbsnmf.VBNMF(k, prior=prior, random_state=MODEL_SEED, n_threads=threads, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        wall, cpu = time.perf_counter(), time.process_time()
        model.fit(matrix)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # The same-process reference: plain passes over the nonzeros at this K.
    data = as_count_data(matrix)
    params = VariationalParams(
        model.cell_shape_, model.cell_rate_, model.gene_shape_, model.gene_rate_
    )
    import numba

    numba.set_num_threads(threads)
    pass_seconds = []
    for _ in range(ref_passes):
        start = time.perf_counter()
        shape_statistics(data, params, threads)
        pass_seconds.append(time.perf_counter() - start)
    reference = statistics.median(pass_seconds)
    info = {
        "passes": int(model.n_iter_),
        "converged": bool(model.converged_),
        "elbo": float(model.elbo_trace_[-1]),
        "seconds": wall,
        "cpu_seconds": cpu,
        "pass_seconds": reference,
        "seconds_in_passes": wall / reference,
    }
    prior = model._prior()
    fixed = (prior.shape, prior.rate) if isinstance(prior, GammaPrior) else None
    return model.cell_shape_ / model.cell_rate_, model.components_.T, fixed, info


def fit_hpfrec(matrix, k: int, threads: int, maxiter: int, seed: int = MODEL_SEED, **_):
    import pandas as pd
    from hpfrec import HPF

    coo = matrix.tocoo()
    counts = pd.DataFrame(
        {"UserId": coo.row.astype(np.int64), "ItemId": coo.col.astype(np.int64), "Count": coo.data}
    )
    # scHPF's empirical hyperparameters (its _get_empirical_hypers): the prior rate of the
    # cell (gene) scale is a' mean/var of the cell (gene) totals; hpfrec's b_prime is the
    # divisor of that rate, so b' = a' / rate.
    cell_totals = np.asarray(matrix.sum(axis=1)).ravel()
    gene_totals = np.asarray(matrix.sum(axis=0)).ravel()
    cell_rate = cell_totals.mean() / cell_totals.var()
    gene_rate = gene_totals.mean() / gene_totals.var()
    if cell_rate > 1000 * gene_rate:
        gene_rate = cell_rate / 1000
    shape = 0.3
    model = HPF(
        k=k,
        a=shape,
        a_prime=1.0,
        b_prime=1.0 / cell_rate,
        c=shape,
        c_prime=1.0,
        d_prime=1.0 / gene_rate,
        stop_crit="train-llk",
        check_every=10,
        stop_thr=1e-5,
        full_llk=True,
        maxiter=maxiter,
        ncores=threads,
        random_seed=seed,
        use_float=False,
        reindex=False,
        verbose=False,
        produce_dicts=False,
        keep_data=False,
        keep_all_objs=True,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(counts)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    cells = np.zeros((matrix.shape[0], k))
    genes = np.zeros((matrix.shape[1], k))
    cells[: model.Theta.shape[0]] = model.Theta
    genes[: model.Beta.shape[0]] = model.Beta
    n_iter = int(model.niter) + 1  # hpfrec reports the last iteration's 0-based index
    info = {
        "passes": n_iter,
        "converged": n_iter < maxiter,
        "seconds": wall,
        "cpu_seconds": cpu,
    }
    return cells, genes, None, info


def fit_sklearn(matrix, k: int, threads: int, maxiter: int, **_):
    from sklearn.decomposition import NMF

    model = NMF(
        k,
        beta_loss="kullback-leibler",
        solver="mu",
        init="nndsvda",
        max_iter=maxiter,
        random_state=MODEL_SEED,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wall, cpu = time.perf_counter(), time.process_time()
        cells = model.fit_transform(matrix)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    info = {
        "passes": int(model.n_iter_),
        "converged": int(model.n_iter_) < maxiter,
        "seconds": wall,
        "cpu_seconds": cpu,
    }
    return np.asarray(cells), model.components_.T.copy(), None, info


def run_fit(tool: str, k: int, part: str, threads: int, options: dict) -> dict:
    """One fit in this (fresh) process: ``part="full"`` on all the counts (train ll, kNN,
    ARI, active), ``"heldout"`` on the train half (held-out ll)."""
    matrix, labels = load(threads, options["data"])
    from vbsnmf.tl._nmf import _factor_share

    fitted = matrix if part == "full" else count_split(matrix)[0]
    if tool.startswith("vbsnmf"):
        prior = "gamma" if tool == "vbsnmf-gamma" else "hierarchical"
        init = "nndsvda" if tool == "vbsnmf-nndsvda" else "random"
        cells, genes, fixed, info = fit_vbsnmf(
            fitted, k, threads, prior, options["ref_passes"], init=init
        )
    elif tool == "hpfrec":
        cells, genes, fixed, info = fit_hpfrec(fitted, k, threads, options["hpfrec_maxiter"])
    else:
        cells, genes, fixed, info = fit_sklearn(fitted, k, threads, options["sklearn_maxiter"])
    row = {"tool": tool, "K": k, "part": part, "data": options["data"], **info,
           "peak_mib": peak_rss_mib()}  # fmt: skip
    if part == "full":
        row["train_ll_per_nnz"] = poisson_loglik(matrix, cells, genes) / matrix.nnz
        shares, threshold = _factor_share(cells, genes, None, fixed)
        active = shares > threshold
        row["active"] = int(active.sum())
        row["shares"] = sorted((round(float(s), 5) for s in shares), reverse=True)
        row.update(clustering_scores(cells, labels))
    else:
        test = count_split(matrix)[1]
        row["heldout_ll_per_count"] = poisson_loglik(test, cells, genes) / float(test.sum())
    return row


def baseline(threads: int, dataset: str) -> dict:
    """The peak RSS with the data loaded, after tiny fits of both priors that leave every
    Numba kernel in its on-disk cache (so no timed fit compiles)."""
    matrix, _ = load(threads, dataset)
    peak = peak_rss_mib()
    import vbsnmf

    with warnings.catch_warnings():  # three iterations do not converge, by design
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        for prior in ("hierarchical", "gamma"):
            vbsnmf.VBNMF(2, prior=prior, max_iter=3, n_threads=threads).fit(matrix[:200, :300])
    return {"shape": list(matrix.shape), "nnz": int(matrix.nnz), "peak_mib": peak}


# -- the 5-second target ----------------------------------------------------------------------
def run_timing(threads: int, accelerate: bool | None, dataset: str) -> dict:
    """``VBNMF(10, n_threads=threads, random_state=0).fit(X)`` in this fresh process."""
    matrix, _ = load(threads, dataset)
    import vbsnmf

    options = {} if accelerate is None else {"accelerate": accelerate}
    model = vbsnmf.VBNMF(10, n_threads=threads, random_state=MODEL_SEED, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        wall, cpu = time.perf_counter(), time.process_time()
        model.fit(matrix)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "accelerate": accelerate,
        "seconds": wall,
        "cpu_seconds": cpu,
        "passes": int(model.n_iter_),
        "converged": bool(model.converged_),
        "elbo": float(model.elbo_trace_[-1]),
        "monotone": bool(np.all(np.diff(model.elbo_trace_) >= 0)),
    }


# -- the order of the fits ----------------------------------------------------------------------
def plan(ks: list[int], extra_ks: list[int], tools: list[str]) -> list[tuple[str, int, str]]:
    """``(tool, K, part)`` in order of importance, so that a run cut short by a busy machine
    has the most of the comparison: the default vbsnmf at ``ks`` and on all the counts at
    ``extra_ks``, then hpfrec's and scikit-learn's fits on all the counts at ``ks``, then the
    remaining held-out fits, then the fixed prior (the issue's baseline)."""
    others = [tool for tool in tools if tool not in ("vbsnmf", "vbsnmf-gamma")]
    mine = ["vbsnmf"] if "vbsnmf" in tools else []
    order = [(tool, k, part) for tool in mine for k in ks for part in ("full", "heldout")]
    order += [(tool, k, "full") for tool in mine for k in extra_ks]
    order += [(tool, k, "full") for k in ks for tool in others]
    order += [(tool, k, "heldout") for tool in mine for k in extra_ks]
    order += [(tool, k, "heldout") for k in ks for tool in others]
    if "vbsnmf-gamma" in tools:
        order += [("vbsnmf-gamma", k, part) for k in ks + extra_ks for part in ("full", "heldout")]
    return order


def previous_rows(path: str | None, dataset: str = "pbmc_facs") -> list[dict]:
    """The ``fit`` rows an earlier run wrote to ``path`` on ``dataset`` (``--resume``).

    Rows of another data set in the same file are not this run's fits (a row written
    before rows named their data set has the ``--data`` of the command line heading its
    run); a line cut short by a killed run or a full disk is left out (its fit runs again)
    with a note on stderr.
    """
    if path is None or not os.path.exists(path):
        return []
    rows, heading = [], "pbmc_facs"
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if line.startswith("# ") and "bench_model.py" in line:
                words = line.split()
                given = [w.split("=", 1)[1] for w in words if w.startswith("--data=")]
                given += [after for w, after in itertools.pairwise(words) if w == "--data"]
                heading = given[-1] if given else "pbmc_facs"
            if not line.startswith("fit "):
                continue
            try:
                row = json.loads(line[4:])
            except json.JSONDecodeError:
                print(f"{path}:{number}: not a whole fit row, left out", file=sys.stderr)
                continue
            if row.get("data", heading) == dataset:
                rows.append(row)
    return rows


# -- output ---------------------------------------------------------------------------------
def fmt(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> list[str]:
    """The markdown table: one line per (K, tool), full and held-out fits merged."""
    merged: dict[tuple, dict] = {}
    for row in rows:
        entry = merged.setdefault((row["K"], TOOLS.index(row["tool"])), {"tool": row["tool"]})
        entry[row["part"]] = row
    lines = [
        "| K | tool | train ll / nnz | held-out ll / count | kNN | ARI | active | passes "
        "(full / split) | converged (full / split) | wall s (full) | CPU s (full) "
        "| s in ref. passes (full) | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (k, _), entry in sorted(merged.items()):
        full, split = entry.get("full", {}), entry.get("heldout", {})
        lines.append(
            f"| {k} | {entry['tool']} | {fmt(full.get('train_ll_per_nnz'), 4)} "
            f"| {fmt(split.get('heldout_ll_per_count'), 4)} | {fmt(full.get('knn'), 3)} "
            f"| {fmt(full.get('ari'), 3)} | "
            + (f"{full['active']}/{k}" if "active" in full else "")
            + f" | {full.get('passes', '')} / {split.get('passes', '')} "
            f"| {full.get('converged', '')} / {split.get('converged', '')} "
            f"| {fmt(full.get('seconds'), 1)} | {fmt(full.get('cpu_seconds'), 1)} "
            f"| {fmt(full.get('seconds_in_passes'), 0)} "
            f"| {fmt(max(full.get('peak_mib', 0), split.get('peak_mib', 0)) or None, 0)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="pbmc_facs", choices=DATASETS)
    parser.add_argument("--ks", type=positive_int, nargs="+", default=[10, 20])
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument(
        "--extra-ks",
        type=positive_int,
        nargs="*",
        default=[],
        help="Ks fitted by vbsnmf's priors only",
    )
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--hpfrec-maxiter", type=positive_int, default=200)
    parser.add_argument("--sklearn-maxiter", type=positive_int, default=200)
    parser.add_argument("--ref-passes", type=positive_int, default=5)
    parser.add_argument(
        "--no-heldout", nargs="*", default=[], choices=TOOLS, help="skip these held-out fits"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the fits already in --out, run the rest"
    )
    parser.add_argument(
        "--timing", type=non_negative_int, default=0, help="repeats of the K=10 timing"
    )
    parser.add_argument("--out", default=None, help="append the output here")
    args = parser.parse_args()
    if advice := not_installed(args.data):
        parser.error(f"argument --data: {args.data} {advice}")
    # A peer that is not installed is left out by name before any fit, not found missing
    # by a traceback after an hour of the others' fits.
    skipped = {tool: advice for tool in args.tools if (advice := not_installed(tool))}
    args.tools = [tool for tool in args.tools if tool not in skipped]
    if not args.tools and not args.timing:
        parser.error(f"argument --tools: {'; '.join(f'{t} {a}' for t, a in skipped.items())}")
    require_out_file(parser, out=args.out)
    if args.resume and args.out is None:  # there is no earlier run to keep: it reran them all
        parser.error("argument --resume: needs --out, the file of the run to resume")
    out = open_to_append(args.out) if args.out else None
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    emit(f"# {' '.join(sys.argv)}", out)
    emit(f"# started {started}, load average {load_average()}", out)
    for tool, advice in skipped.items():
        emit(f"# {tool}: skipped, {advice}", out)
    base = in_fresh_process(baseline, args.threads, args.data)
    emit(f"# baseline (data loaded) peak RSS {base['peak_mib']:.0f} MiB, {base}", out)
    if args.timing:
        runs = []
        for _ in range(args.timing):
            for accelerate in (None, False):
                run = in_fresh_process(run_timing, args.threads, accelerate, args.data)
                run["load"] = load_average()
                runs.append(run)
                emit("timing " + json.dumps(run), out)
        for accelerate, name in ((None, "default (SQUAREM)"), (False, "accelerate=False")):
            mine = [r for r in runs if r["accelerate"] is accelerate]
            emit(
                f"# {name}: median wall {statistics.median(r['seconds'] for r in mine):.1f} s, "
                f"median CPU {statistics.median(r['cpu_seconds'] for r in mine):.1f} s, "
                f"passes {sorted({r['passes'] for r in mine})}, converged "
                f"{sorted({r['converged'] for r in mine})}, final ELBO "
                f"{sorted({round(r['elbo'], 1) for r in mine})}, monotone "
                f"{all(r['monotone'] for r in mine)}",
                out,
            )
    else:
        options = {
            "data": args.data,
            "hpfrec_maxiter": args.hpfrec_maxiter,
            "sklearn_maxiter": args.sklearn_maxiter,
            "ref_passes": args.ref_passes,
        }
        rows = previous_rows(args.out, args.data) if args.resume else []
        done = {(row["tool"], row["K"], row["part"]) for row in rows}
        for tool, k, part in plan(args.ks, args.extra_ks, args.tools):
            if (tool, k, part) in done or (part == "heldout" and tool in args.no_heldout):
                continue
            row = in_fresh_process(run_fit, tool, k, part, args.threads, options)
            row["load"] = load_average()
            rows.append(row)
            emit("fit " + json.dumps(row), out)
        for line in table(rows):
            emit(line, out)
    emit(
        f"# finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
        f"{load_average()}",
        out,
    )
    if out is not None:
        out.close()


if __name__ == "__main__":
    main()
