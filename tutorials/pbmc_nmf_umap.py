"""Tutorial: an NMF embedding of PBMCs, to UMAP and Leiden clusters, beside scanpy's PCA route.

On the bundled pbmc_facs data (Zheng et al. 2017: 3,774 FACS-sorted PBMCs x 16,791 genes,
with the sorted population ``subpop``) this script

1. keeps the raw counts in ``layers["counts"]`` and runs the usual scanpy preprocessing
   (normalize_total, log1p, 15 principal components);
2. fits a K = 15 Poisson-Gamma NMF to the raw counts with ``vbsnmf.tl.nmf``;
3. builds a neighbour graph, UMAP and Leiden clusters on each embedding: the square
   roots of the NMF usages (``use_rep="X_nmf_sqrt_usage"``, the route the docs recommend)
   and the PCs (``use_rep="X_pca"``), and draws them side by side, coloured by ``subpop``
   and by the Leiden clusters (``pbmc_nmf_umap.png``);
4. scores the routes against the sorted populations: kNN (k = 15) accuracy in 5-fold
   cross-validation, KMeans(5) and Leiden adjusted Rand index, and within T cells the share
   of library size's variance that the Leiden clusters explain (eta^2; high means the
   graph splits cells by sequencing depth); the usages ``X_nmf_usage`` and the raw cell
   factors ``X_nmf`` are scored too, to show why the docs recommend the route they do;
5. lists each factor's share of the counts, whether it is active, and its most specific
   genes; draws a scanpy dot plot of each active factor's top genes across the NMF Leiden
   clusters (``pbmc_nmf_top_genes.png``) and the active factors' usages on the NMF UMAP on
   one colour scale (``pbmc_nmf_factors.png``). Factors the data do not need are switched
   off by the Gamma prior (their share is tiny) and left out: K = 15 is an upper bound.

Run it from the repository root (Leiden needs igraph: ``python -m pip install -e '.[tutorial]'``)::

    python tutorials/pbmc_nmf_umap.py            # full run, writes into tutorials/
    python tutorials/pbmc_nmf_umap.py --quick    # reduced setting, into tutorials/quick/

``--quick`` (or the environment variable ``VBSNMF_TUTORIAL_QUICK=1``) caps the NMF at 30
iterations and the UMAP layout at 100 epochs (what CI runs), and writes into
``tutorials/quick/``, so that it never replaces the full run's figures and results that the
repository keeps in ``tutorials/``; ``--outdir`` chooses where the figures and the results
table go.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures go to files

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import vbsnmf

HERE = Path(__file__).resolve().parent
# --quick's output, apart from the full run's figures and results kept in the repository
QUICK_OUTDIR = HERE / "quick"


def default_outdir(quick: bool) -> Path:
    """Where a run writes unless told: ``tutorials/``, or ``tutorials/quick/`` for
    ``--quick``."""
    return QUICK_OUTDIR if quick else HERE


N_COMPONENTS = 15
SEED = 0


def eta_squared(values: np.ndarray, groups: np.ndarray) -> float:
    """Share of the variance of ``values`` that ``groups`` explain (one-way ANOVA)."""
    total = ((values - values.mean()) ** 2).sum()
    between = sum(
        (groups == g).sum() * (values[groups == g].mean() - values.mean()) ** 2
        for g in np.unique(groups)
    )
    return float(between / total)


def route_scores(adata, rep: str, leiden: str, labels: pd.Series, library_size) -> dict:
    """kNN (k = 15, 5-fold stratified CV) accuracy and KMeans(5) ARI on ``.obsm[rep]``,
    Leiden ARI of ``.obs[leiden]``, and eta^2 of library size on it within T cells."""
    embedding = np.asarray(adata.obsm[rep])
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    knn = KNeighborsClassifier(n_neighbors=15)
    accuracy = cross_val_score(knn, embedding, labels, cv=folds).mean()
    clusters = KMeans(n_clusters=labels.nunique(), n_init=10, random_state=SEED).fit_predict(
        embedding
    )
    t_cells = (labels == "T cell").to_numpy()
    return {
        "kNN accuracy (k=15, 5-fold)": float(accuracy),
        "KMeans(5) ARI": float(adjusted_rand_score(labels, clusters)),
        "Leiden ARI": float(adjusted_rand_score(labels, adata.obs[leiden])),
        "Leiden clusters": float(adata.obs[leiden].nunique()),
        "T cells: library size eta^2": eta_squared(
            library_size[t_cells], adata.obs[leiden].to_numpy()[t_cells]
        ),
    }


def markdown_table(table: pd.DataFrame) -> str:
    """A DataFrame of scores as a Markdown table (three decimals; counts as integers)."""
    header = [table.index.name or "", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.iterrows():
        cells = [f"{value:.0f}" if float(value).is_integer() else f"{value:.3f}" for value in row]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines)


def graph_umap_leiden(adata, rep: str, name: str, umap_epochs: int | None) -> None:
    """Neighbour graph on ``.obsm[rep]``, its UMAP (``X_umap_<name>``) and Leiden clusters
    (``leiden_<name>``), kept beside those of the other routes."""
    graph = f"{name}_graph"  # not "nmf": that .uns key holds the fit
    sc.pp.neighbors(adata, n_neighbors=15, use_rep=rep, key_added=graph, random_state=SEED)
    sc.tl.umap(
        adata,
        neighbors_key=graph,
        key_added=f"X_umap_{name}",
        maxiter=umap_epochs,
        random_state=SEED,
    )
    sc.tl.leiden(
        adata,
        neighbors_key=graph,
        key_added=f"leiden_{name}",
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=SEED,
    )


def run(quick: bool = False, outdir: Path | None = None) -> pd.DataFrame:
    """Run the tutorial; write the figures and ``pbmc_nmf_umap_results.md`` into ``outdir``
    (default: ``tutorials/``, or ``tutorials/quick/`` when ``quick``) and return the table of
    scores (one row per neighbour-graph route)."""
    outdir = Path(default_outdir(quick) if outdir is None else outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    max_iter = 30 if quick else 300
    umap_epochs = 100 if quick else None

    adata = vbsnmf.datasets.pbmc_facs()
    adata.layers["counts"] = adata.X.copy()
    library_size = np.asarray(adata.X.sum(axis=1)).ravel()
    print(f"pbmc_facs: {adata.n_obs} cells x {adata.n_vars} genes, {adata.X.nnz} nonzeros")

    # The usual scanpy route: normalise, log-transform, 15 principal components.
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=N_COMPONENTS, random_state=SEED)

    # NMF of the raw counts; X now holds log-normalised values, so name the counts layer.
    start = time.perf_counter()
    with warnings.catch_warnings():
        if quick:  # 30 iterations are known not to meet tol; the warning is only noise
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(
            adata, N_COMPONENTS, layer="counts", random_state=SEED, max_iter=max_iter, tol=1e-5
        )
    info, seconds = adata.uns["nmf"], time.perf_counter() - start
    active = info["active"]
    print(
        f"NMF K={N_COMPONENTS}: {info['n_iter']} iterations in {seconds:.1f} s, "
        f"final ELBO {info['elbo_trace'][-1]:.8g}, {int(active.sum())} factors active"
    )

    # The recommended route (square roots of the usages) and scanpy's PCs, drawn; the
    # usages themselves and the raw factors, only scored.
    graph_umap_leiden(adata, "X_nmf_sqrt_usage", "nmf", umap_epochs)
    graph_umap_leiden(adata, "X_pca", "pca", umap_epochs)
    for rep, name in (("X_nmf_usage", "usage"), ("X_nmf", "raw")):
        sc.pp.neighbors(
            adata, n_neighbors=15, use_rep=rep, key_added=f"{name}_graph", random_state=SEED
        )
        sc.tl.leiden(
            adata,
            neighbors_key=f"{name}_graph",
            key_added=f"leiden_{name}",
            flavor="igraph",
            n_iterations=2,
            directed=False,
            random_state=SEED,
        )

    figure, axes = plt.subplots(2, 2, figsize=(12, 9.5))
    titles = {
        "nmf": f"NMF (K={N_COMPONENTS}, raw counts), sqrt usages",
        "pca": f"PCA ({N_COMPONENTS} PCs, log-normalised)",
    }
    for column, name in enumerate(("nmf", "pca")):
        for row, color in enumerate(("subpop", f"leiden_{name}")):
            sc.pl.embedding(
                adata,
                basis=f"X_umap_{name}",
                color=color,
                ax=axes[row, column],
                show=False,
                title=f"{titles[name]}: {'sorted population' if row == 0 else 'Leiden'}",
                legend_loc="on data" if row else "right margin",
                legend_fontsize=8,
            )
            axes[row, column].set(xlabel="UMAP1", ylabel="UMAP2")
    figure.tight_layout()
    with vbsnmf.io.atomic_file(outdir / "pbmc_nmf_umap.png") as temporary:
        figure.savefig(temporary, dpi=110)
    plt.close(figure)

    labels = adata.obs["subpop"]
    table = pd.DataFrame(
        {
            "NMF usages' square roots, use_rep='X_nmf_sqrt_usage' (recommended)": route_scores(
                adata, "X_nmf_sqrt_usage", "leiden_nmf", labels, library_size
            ),
            "NMF usages, use_rep='X_nmf_usage'": route_scores(
                adata, "X_nmf_usage", "leiden_usage", labels, library_size
            ),
            "NMF raw factors, use_rep='X_nmf'": route_scores(
                adata, "X_nmf", "leiden_raw", labels, library_size
            ),
            "PCA (scanpy, 15 PCs), use_rep='X_pca'": route_scores(
                adata, "X_pca", "leiden_pca", labels, library_size
            ),
        }
    ).T
    table.index.name = "neighbour graph on"
    print(markdown_table(table))

    top = vbsnmf.tl.top_genes(adata, n_genes=6, include_inactive=True)
    top_lines = top.groupby(level="factor")["gene"].agg(", ".join)
    share = info["factor_share"]
    print(f"\nFactors (share of the fitted counts; active above {info['min_share']:.3%}):")
    factor_rows = []
    for factor in range(N_COMPONENTS):
        genes = top_lines.get(factor, "") if active[factor] else "(inactive: switched off)"
        print(f"  factor {factor:2d} ({share[factor]:6.2%}): {genes}")
        factor_rows.append(
            f"| {factor} | {share[factor]:.2%} | {'yes' if active[factor] else 'no'} | {genes} |"
        )

    # Each active factor's top genes across the NMF Leiden clusters, as a scanpy dot plot
    # (log-normalised expression in X), and the active factors' usages on the NMF UMAP.
    vbsnmf.pl.top_genes(adata, "leiden_nmf", 4, save=outdir / "pbmc_nmf_top_genes.png", show=False)
    adata.obsm["X_umap"] = adata.obsm["X_umap_nmf"]
    vbsnmf.pl.factors(
        adata, basis="umap", ncols=4, save=outdir / "pbmc_nmf_factors.png", show=False
    )
    plt.close("all")

    setting = "quick: 30 iterations, 100 UMAP epochs" if quick else f"at most {max_iter} iterations"
    lines = [
        f"# pbmc_facs: neighbour graphs on NMF usages, raw NMF factors and PCA ({setting})",
        "",
        "`python tutorials/pbmc_nmf_umap.py" + (" --quick`" if quick else "`"),
        "",
        markdown_table(table),
        "",
        f"NMF: {info['n_iter']} iterations, converged: {bool(info['converged'])}; "
        f"{int(active.sum())} of {N_COMPONENTS} factors active (share of the fitted counts "
        f"above {info['min_share']:.3%}: five typical cells' counts beyond the prior's floor).",
        "",
        "![UMAPs of the NMF usages' square roots and of the PCs, by sorted population and "
        "Leiden cluster]"
        "(pbmc_nmf_umap.png)",
        "",
        "| factor | share of counts | active | most specific genes (at least 2 counts) |",
        "|---|---|---|---|",
        *factor_rows,
        "",
        "![Each active factor's top genes across the NMF Leiden clusters](pbmc_nmf_top_genes.png)",
        "",
        "![The active factors' usages on the NMF UMAP, one colour scale](pbmc_nmf_factors.png)",
        "",
    ]
    text = "\n".join(lines)
    with vbsnmf.io.atomic_file(outdir / "pbmc_nmf_umap_results.md") as temporary:
        temporary.write_text(text)
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("VBSNMF_TUTORIAL_QUICK", "") not in ("", "0"),
        help="reduced setting for CI (also VBSNMF_TUTORIAL_QUICK=1)",
    )
    parser.add_argument(
        "--outdir",
        type=Path,
        default=None,
        help="where figures and table go (default: tutorials/, with --quick tutorials/quick/)",
    )
    args = parser.parse_args(argv)
    if args.outdir is not None and args.outdir.exists() and not args.outdir.is_dir():
        parser.error(f"--outdir {args.outdir} is a file, not a folder")  # before the fit
    try:  # Leiden comes after the fit and the UMAPs: say what is missing before them
        import igraph  # noqa: F401
    except ImportError:
        parser.error(
            "the Leiden clusters need the igraph package: python -m pip install -e "
            "'.[tutorial]' (or python -m pip install igraph)"
        )
    outdir = default_outdir(args.quick) if args.outdir is None else args.outdir
    try:  # a damaged install: its ReadError named the file in a traceback, after the outdir
        vbsnmf.datasets.data_dir("pbmc_facs")
    except vbsnmf.io.ReadError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    try:  # before the fit: a folder that cannot be made was mkdir's traceback
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--outdir {outdir}: cannot make the folder: {error.strerror or error}")
    try:
        run(quick=args.quick, outdir=outdir)
    except vbsnmf.io.ReadError as error:  # a damaged cells.csv, features or barcodes file
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
