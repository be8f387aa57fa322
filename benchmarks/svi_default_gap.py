"""How far SVI's default settings (cells form, learned prior) end below batch VB.

For each data set and K: batch VB's default fit to convergence and SVI's default fit, both
from ``random_state=0`` on one thread; prints both wall times and the gap
``(batch - SVI) / |batch|`` of SVI's ELBO after every evaluated epoch (negative: SVI ends
above batch VB). The data sets: those of
``tests/test_svi.py::test_svi_defaults_land_within_one_percent_of_converged_batch_vb`` (a
draw from the learned model, a pbmc_facs gene panel, pbmc_tiny), a larger panel (1,000
cells on the genes ranked 200 to 999, more counts per cell) and two no test sees,
scikit-learn's bundled 8x8 handwritten digits (1,797 images x 64 pixels, intensities
0..16 as counts) and the `lda` package's Reuters news (395 documents x 4,258 words, text
counts; ``pip install lda``), and a Poisson NMF draw whose cells' depths spread over four
orders of magnitude (found by the thirtieth hostile pass, where the defaults end far below).

    python benchmarks/svi_default_gap.py                # K = 5 and 10
    python benchmarks/svi_default_gap.py --k 10 20
    python benchmarks/svi_default_gap.py --k 5 --data spread
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import scipy.sparse as sp
from _common import positive_int

import vbsnmf


def model_draw(seed=3, n_cells=500, n_genes=200, n_components=5) -> sp.csr_array:
    """Counts from the learned prior's model (the test's draw)."""
    rng = np.random.default_rng(seed)
    cell_scale = rng.gamma(2.0, 1.5, n_cells)
    gene_scale = rng.gamma(1.0, 1.0, n_genes)
    cell_factors = rng.gamma(0.3, 1.0, (n_cells, n_components)) * cell_scale[:, None]
    gene_loadings = rng.gamma(0.3, 1.0, (n_genes, n_components)) * gene_scale[:, None]
    return sp.csr_array(rng.poisson(0.5 * cell_factors @ gene_loadings.T).astype(np.float64))


def facs_panel(seed=2, n_cells=400, n_genes=300) -> sp.csr_array:
    """``n_cells`` pbmc_facs cells on the ``n_genes`` genes ranked from 200 by their total
    (the test's: 400 cells, genes ranked 200 to 499)."""
    X = sp.csr_array(vbsnmf.datasets.pbmc_facs().X)
    cells = np.sort(np.random.default_rng(seed).choice(X.shape[0], n_cells, replace=False))
    X = X[cells]
    ranked = np.argsort(-np.asarray(X.sum(axis=0)).ravel())
    return sp.csr_array(X[:, np.sort(ranked[200 : 200 + n_genes])])


def digits() -> sp.csr_array:
    """scikit-learn's bundled digits (no download): images x pixels, intensities 0..16."""
    from sklearn.datasets import load_digits

    return sp.csr_array(load_digits().data.astype(np.float64))


def reuters() -> sp.csr_array:
    """The `lda` package's sample of Reuters news (395 documents x 4,258 words), text
    counts (``pip install lda``)."""
    import lda.datasets

    return sp.csr_array(lda.datasets.load_reuters().astype(np.float64))


def lda_missing() -> bool:
    """Whether the `lda` package (Reuters news) cannot be imported here (found, not
    imported)."""
    import importlib.util

    return importlib.util.find_spec("lda") is None


LDA_ADVICE = "needs the lda package, not installed (pip install lda)"


def spread_depths(seed=0, n_cells=400, n_genes=150, n_components=5) -> sp.csr_array:
    """A Poisson NMF draw whose cells' depths span 3 to 45,837 counts (each cell's factors
    scaled by exp(U(-3, 4)), each gene's by exp(U(-2, 3))); empty cells and genes dropped."""
    rng = np.random.default_rng(seed)
    cell_factors = rng.gamma(0.5, 1.0, (n_cells, n_components)) * np.exp(
        rng.uniform(-3, 4, (n_cells, 1))
    )
    gene_loadings = rng.gamma(0.3, 1.0, (n_components, n_genes)) * np.exp(
        rng.uniform(-2, 3, (1, n_genes))
    )
    X = rng.poisson(cell_factors @ gene_loadings).astype(np.float64)
    return sp.csr_array(X[X.sum(axis=1) > 0][:, X.sum(axis=0) > 0])


# The data sets by their --data names: (printed name, loader).
DATA = {
    "draw": ("model draw", model_draw),
    "panel": ("pbmc_facs panel", facs_panel),
    "panel1000": ("pbmc_facs panel, 1,000 cells", lambda: facs_panel(n_cells=1000, n_genes=800)),
    "tiny": ("pbmc_tiny", lambda: sp.csr_array(vbsnmf.datasets.pbmc_tiny().X)),
    "digits": ("digits (unseen)", digits),
    "reuters": ("Reuters news (unseen)", reuters),
    "spread": ("depths spread 3 to 45,837 (unseen)", spread_depths),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=positive_int, nargs="+", default=[5, 10])
    parser.add_argument("--data", nargs="+", choices=list(DATA), help="data sets to run (all)")
    args = parser.parse_args()
    if args.data is None:
        args.data = list(DATA)
        if lda_missing():  # the default runs the others, saying so, not a late traceback
            args.data.remove("reuters")
            print(f"reuters: skipped, {LDA_ADVICE}", flush=True)
    elif "reuters" in args.data and lda_missing():
        parser.error(f"argument --data: reuters {LDA_ADVICE}")
    warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
    vbsnmf.VBNMF(2, max_iter=2, n_threads=1).fit(model_draw())  # compile outside the timings
    for name, load in (DATA[key] for key in args.data):
        X = load()
        for k in args.k:
            start = time.perf_counter()
            batch = vbsnmf.VBNMF(k, random_state=0, n_threads=1).fit(X)
            batch_seconds = time.perf_counter() - start
            start = time.perf_counter()
            svi = vbsnmf.VBNMF(k, random_state=0, n_threads=1, solver="svi").fit(X)
            svi_seconds = time.perf_counter() - start
            best = batch.elbo_trace_[-1]
            gaps = (best - np.asarray(svi.elbo_trace_)) / abs(best) * 100
            print(
                f"{name}: {X.shape[0]} x {X.shape[1]}, {X.nnz} nonzeros, K={k}; batch "
                f"{batch.n_iter_} iterations (converged {batch.converged_}) "
                f"{batch_seconds:.1f} s; SVI {svi.n_iter_} epochs {svi_seconds:.1f} s; "
                f"final gap {gaps[-1]:.2f} %; gap per epoch (%): "
                + " ".join(f"{gap:.2f}" for gap in gaps),
                flush=True,
            )


if __name__ == "__main__":
    main()
