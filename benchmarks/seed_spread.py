"""The default fit's figures across random seeds: how far one seed's row of bench_model.py is
from the spread of the starts.

    python benchmarks/seed_spread.py --ks 10 20 --seeds 0 1 2 3 4 \
        --out benchmarks/results/seed_spread_pbmc_facs.txt

For every K and seed, ``VBNMF(K, random_state=seed, n_threads=--threads)`` with every other
setting at its default, scored by `bench_model.py`'s code (its ``MODEL_SEED`` is seed 0):
the fit on all the counts gives the train log-likelihood per nonzero, the active factors,
kNN accuracy and KMeans(5) ARI; a fit with the same seed on the count-split train half
(`bench_model.count_split`, split seed 0) gives the held-out log-likelihood per count.
All fits run in this one process, one after the other (the first one loads the kernels).
The table gives every fit, then the median and the range over the seeds for each K.

``--tool hpfrec`` runs `bench_model.py`'s hpfrec fit (scHPF's hyperparameters and stopping
rule, up to ``--hpfrec-maxiter`` iterations) from each seed instead, scored by the same
code: how far the peer's one-seed figures move with its start. ``--prior-shape 0.3`` fits
vbsnmf's learned prior with scHPF's fixed factor shapes instead of learned ones.

    python benchmarks/seed_spread.py --tool hpfrec --ks 10 20 --seeds 0 1 2 3 4 \
        --no-heldout --out benchmarks/results/seed_spread_pbmc_facs.txt
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_model
from _common import non_negative_int, positive_float, positive_int, report, require_out_file

FIGURES = ("train", "heldout", "knn", "ari", "active", "passes")
DIGITS = {"train": 4, "heldout": 4, "knn": 4, "ari": 3, "active": 0, "passes": 0}


def fit_vbsnmf(matrix, k: int, seed: int, threads: int, prior_shape=None, **_) -> tuple:
    """The default fit (with ``prior_shape``, the learned prior's factor shapes fixed to
    it): its cell and gene factors (posterior means) and what it reports."""
    import vbsnmf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        start = time.perf_counter()
        model = vbsnmf.VBNMF(k, prior_shape=prior_shape, random_state=seed, n_threads=threads)
        model.fit(matrix)
        seconds = time.perf_counter() - start
    info = {} if prior_shape is None else {"prior_shape": prior_shape}
    info |= {
        "passes": int(model.n_iter_),
        "converged": bool(model.converged_),
        "elbo": float(model.elbo_trace_[-1]),
        "seconds": round(seconds, 2),
    }
    return model.cell_shape_ / model.cell_rate_, model.components_.T, info


def fit_hpfrec(matrix, k: int, seed: int, threads: int, hpfrec_maxiter: int, **_) -> tuple:
    """`bench_model.fit_hpfrec` (scHPF's settings) started from ``seed``."""
    cells, genes, _, info = bench_model.fit_hpfrec(matrix, k, threads, hpfrec_maxiter, seed)
    keep = ("passes", "converged")
    return cells, genes, {**{key: info[key] for key in keep}, "seconds": round(info["seconds"], 2)}


FITS = {"vbsnmf": fit_vbsnmf, "hpfrec": fit_hpfrec}


def fit_row(matrix, labels, halves, k: int, seed: int, args) -> dict:
    """One seed's figures at K = ``k`` for ``args.tool`` (the held-out one unless
    ``args.no_heldout``)."""
    from vbsnmf.tl._nmf import _factor_share

    fit = FITS[args.tool]
    options = {
        "threads": args.threads,
        "hpfrec_maxiter": args.hpfrec_maxiter,
        "prior_shape": args.prior_shape,
    }
    cells, genes, info = fit(matrix, k, seed, **options)
    shares, threshold = _factor_share(cells, genes, None, None)
    row = {
        "tool": args.tool,
        "K": k,
        "seed": seed,
        **info,
        "train": bench_model.poisson_loglik(matrix, cells, genes) / matrix.nnz,
        "active": int((shares > threshold).sum()),
        **bench_model.clustering_scores(cells, labels),
    }
    if not args.no_heldout:
        held_cells, held_genes, _ = fit(halves[0], k, seed, **options)
        test = halves[1]
        row["heldout"] = bench_model.poisson_loglik(test, held_cells, held_genes) / float(
            test.sum()
        )
    return row


def summary(rows: list[dict], k: int) -> str:
    """Median (min-max) of each figure over the seeds at K = ``k``."""
    cells = []
    for figure in FIGURES:
        values = [row[figure] for row in rows if row["K"] == k and figure in row]
        if not values:
            cells.append("")
            continue
        digits = DIGITS[figure]
        median, low, high = statistics.median(values), min(values), max(values)
        cells.append(f"{median:.{digits}f} ({low:.{digits}f} to {high:.{digits}f})")
    return f"| {k} | median (range) | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=positive_int, nargs="+", default=[10, 20])
    parser.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--data", choices=bench_model.DATASETS, default="pbmc_facs")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--tool", choices=sorted(FITS), default="vbsnmf")
    parser.add_argument(
        "--hpfrec-maxiter", type=positive_int, default=200, help="as bench_model.py's (its default)"
    )
    parser.add_argument("--no-heldout", action="store_true", help="skip the count-split fits")
    parser.add_argument(
        "--prior-shape",
        type=positive_float,
        help="vbsnmf: fix the factor shapes to this (scHPF's 0.3) instead of learning them",
    )
    parser.add_argument("--out", help="append the output to this file too")
    args = parser.parse_args()
    if args.prior_shape is not None and args.tool != "vbsnmf":
        parser.error("--prior-shape applies to --tool vbsnmf only")
    for option, name in (("--tool", args.tool), ("--data", args.data)):
        if advice := bench_model.not_installed(name):
            parser.error(f"argument {option}: {name} {advice}")
    require_out_file(parser, out=args.out)
    with report(args.out) as emit:
        _run(args, emit)


def _run(args, emit) -> None:
    matrix, labels = bench_model.load(args.threads, args.data)
    halves = bench_model.count_split(matrix)
    rows = []
    for k in args.ks:
        for seed in args.seeds:
            rows.append(fit_row(matrix, labels, halves, k, seed, args))
            emit("fit " + json.dumps(rows[-1]))
    shape = "" if args.prior_shape is None else f", prior_shape={args.prior_shape}"
    emit(f"tool: {args.tool}{shape}")
    emit("| K | seed | " + " | ".join(FIGURES) + " |")
    emit("|---|---|" + "---:|" * len(FIGURES))
    for row in rows:
        values = [bench_model.fmt(row.get(figure), DIGITS[figure]) for figure in FIGURES]
        emit(f"| {row['K']} | {row['seed']} | " + " | ".join(values) + " |")
    for k in args.ks:
        emit(summary(rows, k))


if __name__ == "__main__":
    main()
