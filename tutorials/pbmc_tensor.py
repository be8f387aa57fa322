"""Tutorial: Poisson tensor factorisation of a pseudobulk count tensor (``vbsnmf.VBNTF``).

No package available here ships a real single-cell count tensor (donor x cell type x gene
and the like), so this script builds one from the bundled pbmc_facs data (Zheng et al.
2017: 3,774 FACS-sorted PBMCs x 16,791 genes, raw counts, with the FACS gate in
``obs["celltype"]``, 10 gates):

    gate (10) x gene (16,791) x pseudo-replicate (4)

The cells of each gate are split at random into 4 groups of (nearly) equal size and the
counts of each group summed: entry (g, j, r) is the total count of gene j over the cells
of gate g in group r. The script then

1. fits a K = 8 Poisson-Gamma CP model with ``vbsnmf.VBNTF`` on the tensor given as a pydata
   ``sparse.COO`` array (only its nonzeros are visited), its coordinate ascent accelerated
   by SQUAREM (``accelerate=True``: on this tensor from seed 0, 220 passes to convergence
   at tol 1e-6 instead of plain coordinate ascent's 1,023);
2. writes each component as a weight (its expected share of all counts) times three
   profiles that each sum to 1: over gates (per cell of the gate, so that large gates do
   not dominate), over genes (top genes by loading and by specificity) and over
   pseudo-replicates;
3. checks the third mode: the groups are random splits of the same cells, exchangeable by
   construction, so every replicate profile should be flat (1/4 each, up to the split's
   cell-count and sampling noise, measured here from the data themselves).

What the third mode can and cannot show. It can show that the model does not invent
structure where there is none: a replicate profile far from flat would be overfitting (or a
bug). It cannot show biological replication or donor or batch effects: there is one donor
pool, and in this data each FACS gate is also its own sort and library, so gate, cell type
and batch are confounded in mode 1. The tensor is a demonstration of the method, not of a
donor-level design; for that, pass a real donor x cell type x gene pseudobulk the same way.

Run it from the repository root (the ``sparse.COO`` array needs pydata sparse:
``python -m pip install -e '.[tensor]'``)::

    python tutorials/pbmc_tensor.py            # full run, writes into tutorials/
    python tutorials/pbmc_tensor.py --quick    # 2,000 genes, fewer iterations: tutorials/quick/

``--quick`` (what CI runs) may also be set by the environment variable
``VBSNMF_TUTORIAL_QUICK=1``, as for ``tutorials/pbmc_nmf_umap.py``; it writes into
``tutorials/quick/``, never over the full run's figure and table that the repository keeps
in ``tutorials/``; ``--outdir`` writes the figure and table elsewhere.
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
import scipy.sparse as sp

import vbsnmf

HERE = Path(__file__).resolve().parent
# --quick's output, apart from the full run's figure and table kept in the repository
QUICK_OUTDIR = HERE / "quick"


def default_outdir(quick: bool) -> Path:
    """Where a run writes unless told: ``tutorials/``, or ``tutorials/quick/`` for
    ``--quick``."""
    return QUICK_OUTDIR if quick else HERE


N_COMPONENTS = 8
N_REPLICATES = 4
SEED = 0


def pseudobulk_tensor(adata, n_replicates: int = N_REPLICATES, seed: int = SEED):
    """``(coords, counts, shape, gates, genes, group_sizes)`` of the gate x gene x replicate
    tensor: each gate's cells split at random into ``n_replicates`` groups, counts summed.

    Built sparsely: a (gates * replicates) x cells indicator matrix times the cells x genes
    counts; ``group_sizes`` (gates x replicates) holds the number of cells of each group."""
    rng = np.random.default_rng(seed)
    gates = pd.Categorical(adata.obs["celltype"])
    group_of_cell = np.empty(adata.n_obs, dtype=np.int64)
    group_sizes = np.zeros((len(gates.categories), n_replicates), dtype=np.int64)
    for g in range(len(gates.categories)):
        cells = rng.permutation(np.flatnonzero(gates.codes == g))
        for r, part in enumerate(np.array_split(cells, n_replicates)):
            group_of_cell[part] = g * n_replicates + r
            group_sizes[g, r] = len(part)
    indicator = sp.csr_array(
        (np.ones(adata.n_obs), (group_of_cell, np.arange(adata.n_obs))),
        shape=(len(gates.categories) * n_replicates, adata.n_obs),
    )
    pseudobulk = (indicator @ sp.csr_array(adata.X)).tocoo()  # (gate, replicate) x gene
    gate_index, replicate_index = np.divmod(pseudobulk.row, n_replicates)
    coords = np.stack([gate_index, pseudobulk.col, replicate_index], axis=1)
    shape = (len(gates.categories), adata.n_vars, n_replicates)
    genes = adata.var_names.to_numpy()
    return (
        coords,
        pseudobulk.data.astype(np.float64),
        shape,
        list(gates.categories),
        genes,
        group_sizes,
    )


def component_tables(model, gates, genes, group_sizes, n_top: int = 8):
    """Per component: weight share, gate profile per cell, top genes, replicate profile."""
    gate_factor, gene_factor, replicate_factor = model.factors_
    sums = [f.sum(axis=0) for f in model.factors_]
    weight = np.prod(sums, axis=0)  # expected total count of each component
    cells_per_gate = group_sizes.sum(axis=1)
    per_cell = gate_factor / cells_per_gate[:, None]
    gate_profile = per_cell / per_cell.sum(axis=0)
    gene_profile = gene_factor / sums[1]
    specificity = gene_profile / np.maximum(gene_profile.sum(axis=1, keepdims=True), 1e-300)
    replicate_profile = replicate_factor / sums[2]
    rows = []
    for l in np.argsort(-weight):
        top = np.argsort(-gene_profile[:, l])[:n_top]
        # specific genes: among the 200 highest loadings, the most component-specific
        candidates = np.argsort(-gene_profile[:, l])[:200]
        specific = candidates[np.argsort(-specificity[candidates, l])[:n_top]]
        main_gates = np.argsort(-gate_profile[:, l])[:2]
        rows.append(
            {
                "component": int(l),
                "share of counts": weight[l] / weight.sum(),
                "main gates (share per cell)": ", ".join(
                    f"{gates[g]} {gate_profile[g, l]:.2f}" for g in main_gates
                ),
                "top genes": ", ".join(genes[top]),
                "most specific genes": ", ".join(genes[specific]),
                "replicate profile": " / ".join(f"{v:.3f}" for v in replicate_profile[:, l]),
                "largest deviation from 1/4": float(np.abs(replicate_profile[:, l] - 0.25).max()),
            }
        )
    return pd.DataFrame(rows).set_index("component"), gate_profile, replicate_profile, weight


def data_replicate_spread(coords, counts, shape, group_sizes) -> float:
    """The largest ``|share - expected share|`` of a replicate in a gate's total counts, the
    expected share being its share of the gate's cells: how far from flat the data
    themselves are (sampling of cells and of counts), to read the fitted profiles against."""
    totals = np.zeros((shape[0], shape[2]))
    np.add.at(totals, (coords[:, 0], coords[:, 2]), counts)
    shares = totals / totals.sum(axis=1, keepdims=True)
    expected = group_sizes / group_sizes.sum(axis=1, keepdims=True)
    return float(np.abs(shares - expected).max())


def markdown_table(table: pd.DataFrame) -> str:
    header = [table.index.name or "", *table.columns]
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join([str(index), *cells]) + " |")
    return "\n".join(lines)


def plot(gate_profile, replicate_profile, weight, gates, path: Path) -> None:
    order = np.argsort(-weight)
    fig, axes = plt.subplots(
        1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]}, constrained_layout=True
    )
    image = axes[0].imshow(gate_profile[:, order], aspect="auto", cmap="viridis")
    axes[0].set_yticks(range(len(gates)), gates, fontsize=8)
    axes[0].set_xticks(range(len(order)), [str(l) for l in order])
    axes[0].set_xlabel("component (by share of counts)")
    axes[0].set_title("gate profile (per cell, sums to 1 over gates)")
    fig.colorbar(image, ax=axes[0])
    for l in order:
        axes[1].plot(range(1, replicate_profile.shape[0] + 1), replicate_profile[:, l], marker="o")
    axes[1].axhline(1 / replicate_profile.shape[0], color="black", lw=1, ls="--")
    axes[1].set_ylim(0, 0.5)
    axes[1].set_xticks(range(1, replicate_profile.shape[0] + 1))
    axes[1].set_xlabel("pseudo-replicate")
    axes[1].set_title("replicate profiles (flat = 1/4)")
    try:
        with vbsnmf.io.atomic_file(path) as temporary:
            fig.savefig(temporary, dpi=110)
    finally:
        plt.close(fig)


def run(quick: bool = False, outdir: Path | None = None):
    """Build the tensor, fit, write ``pbmc_tensor.png`` and ``pbmc_tensor_results.md`` into
    ``outdir`` (default: ``tutorials/``, or ``tutorials/quick/`` when ``quick``). Returns
    the per-component table and the gate (gates x K, as a DataFrame indexed by gate) and
    replicate (replicates x K) profiles."""
    import sparse

    outdir = Path(default_outdir(quick) if outdir is None else outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    adata = vbsnmf.datasets.pbmc_facs()
    if quick:  # the 2,000 genes with the most counts
        totals = np.asarray(adata.X.sum(axis=0)).ravel()
        adata = adata[:, np.sort(np.argsort(-totals)[:2000])].copy()
    coords, counts, shape, gates, genes, group_sizes = pseudobulk_tensor(adata)
    tensor = sparse.COO(coords.T, counts, shape=shape)
    print(
        f"tensor gate x gene x replicate {shape}: {tensor.nnz:,} nonzeros "
        f"({tensor.nnz / np.prod(shape):.1%} of entries), {counts.sum():,.0f} counts"
    )
    settings = {
        "accelerate": True,
        "max_iter": 150 if quick else 1000,
        "tol": 1e-6,
        "n_init": 1 if quick else 3,
        "random_state": SEED,
    }
    model = vbsnmf.VBNTF(N_COMPONENTS, **settings)
    start = time.perf_counter()
    with warnings.catch_warnings():
        if quick:  # 150 passes are known not to meet tol (the table says converged: False)
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(tensor)
    seconds = time.perf_counter() - start
    print(
        f"VBNTF K={N_COMPONENTS}: {model.n_iter_} passes, converged={model.converged_}, "
        f"{seconds:.1f} s, final ELBO {model.elbo_trace_[-1]:.6g}"
    )
    table, gate_profile, replicate_profile, weight = component_tables(
        model, gates, genes, group_sizes
    )
    spread = data_replicate_spread(coords, counts, shape, group_sizes)
    fitted_spread = float(np.abs(replicate_profile - 0.25).max())
    for component, row in table.iterrows():
        print(
            f"component {component} ({row['share of counts']:.1%} of counts): "
            f"{row['main gates (share per cell)']}; top genes {row['top genes']}"
        )
    print(
        f"replicate profiles: largest |share - 1/4| {fitted_spread:.3f}; in the data, a "
        "replicate's share of its gate's counts is off its share of the cells by up to "
        f"{spread:.3f}"
    )
    plot(gate_profile, replicate_profile, weight, gates, outdir / "pbmc_tensor.png")
    call = f"VBNTF({N_COMPONENTS}, " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")"
    write_results(
        outdir, table, model, call, shape, tensor.nnz, seconds, spread, fitted_spread, quick
    )
    return table, pd.DataFrame(gate_profile, index=gates), replicate_profile


def machine_note() -> str:
    """This machine's cores and load, as the timing's context: os.getloadavg exists only on
    Unix (a Windows run would otherwise end here, after the fit), and the cores are counted,
    not assumed."""
    cores = os.cpu_count() or 1
    note = f"The machine has {cores} core{'s' if cores != 1 else ''}"
    if hasattr(os, "getloadavg"):
        note += f" (load average {os.getloadavg()[0]:.1f} at the end)"
    return note + "."


def write_results(outdir, table, model, call, shape, nnz, seconds, spread, fitted_spread, quick):
    setting = "--quick: 2,000 genes, 150 passes at most" if quick else "full run"
    off = int((table["share of counts"] < 1e-3).sum())
    text = f"""# Pseudobulk tensor of pbmc_facs with VBNTF: results

Produced by `python tutorials/pbmc_tensor.py{" --quick" if quick else ""}` ({setting}).

Tensor: FACS gate x gene x pseudo-replicate, shape {shape}, {nnz:,} nonzeros.

Fit: `{call}`. It ran {model.n_iter_} passes over the nonzeros (converged: {model.converged_}) in
{seconds:.1f} s. {machine_note()} Final ELBO: {model.elbo_trace_[-1]:.6g} nats.

Components are listed by their expected share of all counts. Each one is a gate profile
(per cell of the gate, summing to 1 over gates), a gene profile and a replicate profile.
{off} of the {len(table)} components carry less than 0.1 % of the counts: the Gamma prior
switched them off, and their profiles are the prior's, not the data's.

{markdown_table(table)}

Replicate mode: the largest deviation of a fitted replicate profile from 1/4 is
{fitted_spread:.3f}. In the data, a replicate's share of its gate's counts differs from
its share of the gate's cells by up to {spread:.3f}.

The groups are random splits of the same cells, so the replicate mode carries no biology.
Flat profiles mean the model did not invent any. This mode cannot show donor, batch or
biological-replicate effects: the tensor has one donor pool, and in this data each gate is
also its own sort and library, so gate, cell type and batch are confounded.

![gate and replicate profiles](pbmc_tensor.png)
"""
    path = Path(outdir) / "pbmc_tensor_results.md"
    with vbsnmf.io.atomic_file(path) as temporary:
        temporary.write_text(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # the environment variable read as pbmc_nmf_umap.py reads it (any value but "" or "0")
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
        help="where the figure and table go (default: tutorials/, with --quick tutorials/quick/)",
    )
    args = parser.parse_args(argv)
    if args.outdir is not None and args.outdir.exists() and not args.outdir.is_dir():
        parser.error(f"--outdir {args.outdir} is a file, not a folder")  # before the fit
    try:  # the tensor is a pydata sparse array: say what is missing, not its import traceback
        import sparse  # noqa: F401
    except ImportError:
        parser.error(
            "the tensor needs pydata sparse: python -m pip install -e '.[tensor]' "
            "(or python -m pip install sparse)"
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
