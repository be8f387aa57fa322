"""Which representation of an NMF fit should the neighbour graph be built on?

On the bundled pbmc_facs data (3,774 FACS-sorted PBMCs, sorted population ``subpop``) this
fits ``vbsnmf.tl.nmf`` (K = 15, batch VB, at most 300 iterations, the tutorial's setting)
for several seeds and scores each candidate ``use_rep`` of ``sc.pp.neighbors``:

- ``X_nmf``: the raw posterior mean cell factors (rows sum to about the library size);
- ``log1p(X_nmf)``;
- ``X_nmf_usage``: usages, each cell's share of its fitted counts from each factor;
- ``sqrt(usage)``: Euclidean distance on it is the Hellinger distance between usages;
- ``CLR(usage)``: centred log-ratio of the usages;
- ``usage, active factors``: usages of the active factors only, renormalised;
- ``sqrt(E[z] / row sum)``: the square roots of ``tl.nmf``'s usages before 2026-12-02
  (each cell's factors over their sum, without the factors' loadings);
- and, for reference, scanpy's PCA route (normalize_total, log1p, 15 PCs).

Scores against ``subpop``: kNN accuracy (k = 15, 5-fold stratified CV on the
representation), the share of each cell's 15 graph neighbours in its own population,
KMeans(5) ARI, Leiden (igraph) ARI and number of clusters at resolution 1 (scanpy's
default) and 0.3, and at the resolution (0.05 to 1 in 20 steps) whose partition has
closest to 8 clusters (so that the routes are compared at one number of clusters); and
within T cells eta^2 of library size (total counts, and its log) on the Leiden clusters at
resolution 1: the share of its variance that the clusters explain (one-way ANOVA); high
means the graph splits T cells by sequencing depth rather than biology.

    python benchmarks/neighbour_graph_routes.py --seeds 0 1 2 \\
        --out benchmarks/results/neighbour_graph_routes.md
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from _common import non_negative_int, positive_int, require_files, require_out_file
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import vbsnmf

N_COMPONENTS = 15
N_NEIGHBORS = 15
COUNTS = {"Leiden clusters", "clusters at 0.3", "clusters (closest to 8)"}  # not scores


def eta_squared(values: np.ndarray, groups: np.ndarray) -> float:
    """Share of the variance of ``values`` explained by ``groups`` (one-way ANOVA)."""
    total = ((values - values.mean()) ** 2).sum()
    between = sum(
        (groups == g).sum() * (values[groups == g].mean() - values.mean()) ** 2
        for g in np.unique(groups)
    )
    return float(between / total)


def scores(adata, rep: str, labels: pd.Series, library_size: np.ndarray, seed: int) -> dict:
    """The scores of one ``use_rep`` (see the module docstring)."""
    embedding = np.asarray(adata.obsm[rep])
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    knn = cross_val_score(KNeighborsClassifier(N_NEIGHBORS), embedding, labels, cv=folds).mean()
    kmeans = KMeans(labels.nunique(), n_init=10, random_state=seed).fit_predict(embedding)
    sc.pp.neighbors(adata, n_neighbors=N_NEIGHBORS, use_rep=rep, random_state=seed)
    neighbours = adata.obsp["distances"].tolil().rows
    codes = labels.cat.codes.to_numpy()
    purity = np.mean([np.mean(codes[row] == codes[i]) for i, row in enumerate(neighbours)])
    leiden = {}
    for resolution in (1.0, 0.3):
        sc.tl.leiden(
            adata,
            resolution=resolution,
            flavor="igraph",
            n_iterations=2,
            directed=False,
            random_state=seed,
        )
        leiden[resolution] = adata.obs["leiden"].to_numpy()
    # Leiden's ARI against five populations rises as clusters merge, so compare the graphs
    # also at one number of clusters: the resolution whose partition has closest to 8.
    matched = {}
    for resolution in np.linspace(0.05, 1.0, 20):
        sc.tl.leiden(
            adata,
            resolution=resolution,
            flavor="igraph",
            n_iterations=2,
            directed=False,
            random_state=seed,
        )
        partition = adata.obs["leiden"].to_numpy()
        matched.setdefault(abs(len(np.unique(partition)) - 8), partition)
    closest = matched[min(matched)]
    t_cells = (labels == "T cell").to_numpy()
    return {
        "kNN accuracy": float(knn),
        "graph neighbours in own population": float(purity),
        "KMeans(5) ARI": float(adjusted_rand_score(labels, kmeans)),
        "Leiden ARI": float(adjusted_rand_score(labels, leiden[1.0])),
        "Leiden clusters": float(len(np.unique(leiden[1.0]))),
        "Leiden ARI, resolution 0.3": float(adjusted_rand_score(labels, leiden[0.3])),
        "clusters at 0.3": float(len(np.unique(leiden[0.3]))),
        "Leiden ARI at 8 clusters": float(adjusted_rand_score(labels, closest)),
        "clusters (closest to 8)": float(len(np.unique(closest))),
        "T cells: eta^2 of total counts": eta_squared(library_size[t_cells], leiden[1.0][t_cells]),
        "T cells: eta^2 of log total counts": eta_squared(
            np.log(library_size[t_cells]), leiden[1.0][t_cells]
        ),
    }


def representations(adata) -> dict[str, np.ndarray]:
    factors, usage = adata.obsm["X_nmf"], adata.obsm["X_nmf_usage"]
    active = adata.uns["nmf"]["active"]
    log_usage = np.log(usage)
    kept = usage[:, active]
    return {
        "X_nmf": factors,
        "log1p(X_nmf)": np.log1p(factors),
        "X_nmf_usage": usage,
        "sqrt(usage)": adata.obsm["X_nmf_sqrt_usage"],  # what tl.nmf stores for the graph
        "CLR(usage)": log_usage - log_usage.mean(axis=1, keepdims=True),
        "usage, active factors": kept / kept.sum(axis=1, keepdims=True),
        # tl.nmf's usages until 2026-12-02: E[z] over its row sum, blind to the loadings'
        # scale of each factor
        "sqrt(E[z] / row sum)": np.sqrt(factors / factors.sum(axis=1, keepdims=True)),
    }


def run(seeds: list[int], max_iter: int) -> pd.DataFrame:
    adata = vbsnmf.datasets.pbmc_facs()
    labels = adata.obs["subpop"]
    library_size = np.asarray(adata.X.sum(axis=1)).ravel()
    pca = adata.copy()
    sc.pp.normalize_total(pca, target_sum=1e4)
    sc.pp.log1p(pca)
    rows = []
    for seed in seeds:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            vbsnmf.tl.nmf(
                adata, N_COMPONENTS, random_state=seed, max_iter=max_iter, tol=1e-5, n_threads=2
            )
        info = adata.uns["nmf"]
        print(
            f"seed {seed}: {info['n_iter']} iterations in {time.perf_counter() - start:.0f} s, "
            f"{int(info['active'].sum())} of {N_COMPONENTS} factors active",
            flush=True,
        )
        for name, values in representations(adata).items():
            adata.obsm["rep"] = values
            rows.append(
                {"route": name, "seed": seed, **scores(adata, "rep", labels, library_size, seed)}
            )
        sc.pp.pca(pca, n_comps=N_COMPONENTS, random_state=seed)
        pca_scores = scores(pca, "X_pca", labels, library_size, seed)
        rows.append({"route": "PCA (log-normalised, 15 PCs)", "seed": seed, **pca_scores})
    return pd.DataFrame(rows)


def summary_table(runs: pd.DataFrame) -> str:
    """Mean over seeds (min-max when there are several), as Markdown."""
    metrics = [column for column in runs.columns if column not in ("route", "seed")]
    lines = ["| use_rep | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for route, group in runs.groupby("route", sort=False):
        cells = []
        for metric in metrics:
            values = group[metric].to_numpy()
            digits = 0 if metric in COUNTS else 3
            text = f"{values.mean():.{digits}f}"
            if len(values) > 1:
                text += f" ({values.min():.{digits}f}-{values.max():.{digits}f})"
            cells.append(text)
        lines.append(f"| {route} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-iter", type=positive_int, default=300)
    parser.add_argument("--out", type=Path, help="write the table (Markdown) here")
    parser.add_argument(
        "--table-only", type=Path, metavar="CSV", help="only remake the table from a runs CSV"
    )
    args = parser.parse_args(argv)
    require_files(parser, table_only=args.table_only)
    if args.out is not None and args.out.suffix == ".csv":
        # the runs are written beside the table with the suffix .csv: the same file
        parser.error(f"argument --out: the Markdown table, not a .csv: {args.out}")
    # written after every seed's fits; the runs beside it, as .csv
    require_out_file(parser, out=args.out)
    if args.out is not None:
        require_out_file(parser, out=args.out.with_suffix(".csv"))
    if args.table_only:
        runs = _read_runs(parser, args.table_only)
    else:
        runs = run(args.seeds, args.max_iter)
    table = summary_table(runs)
    print(table)
    if args.out is not None:
        if args.table_only:
            # the seeds are the CSV's, not --seeds' default: say what the table was made of
            seeds = sorted(int(seed) for seed in runs["seed"].unique())
            command = f"python benchmarks/neighbour_graph_routes.py --table-only {args.table_only}"
        else:
            seeds = args.seeds
            command = "python benchmarks/neighbour_graph_routes.py --seeds " + " ".join(
                map(str, seeds)
            )
            if args.max_iter != 300:
                command += f" --max-iter {args.max_iter}"
        runs_path = args.out.with_suffix(".csv")
        if not (args.table_only and runs_path.resolve() == args.table_only.resolve()):
            _write_atomically(runs_path, runs.to_csv(index=False))
        _write_atomically(
            args.out,
            f"# Neighbour-graph routes on pbmc_facs (K={N_COMPONENTS}, seeds "
            f"{', '.join(map(str, seeds))}; mean (min-max))\n\n`{command}`\n\n{table}\n",
        )


def _read_runs(parser: argparse.ArgumentParser, path: Path) -> pd.DataFrame:
    """The runs CSV ``--table-only`` names, else ``parser``'s usage error: an empty CSV or
    another table was pandas' EmptyDataError or KeyError traceback."""
    try:
        runs = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        parser.error(f"argument --table-only: cannot read {path}: {error}")
    missing = [column for column in ("route", "seed") if column not in runs.columns]
    if missing or len(runs.columns) < 3:
        parser.error(
            f"argument --table-only: {path} is not the runs CSV of this script (columns "
            "route, seed and the scores)"
        )
    return runs


def _write_atomically(path: Path, text: str) -> None:
    """``path`` replaced by ``text`` in one step: a killed run leaves the old file whole."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


if __name__ == "__main__":
    main()
