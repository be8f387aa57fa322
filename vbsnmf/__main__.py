"""``python -m vbsnmf``: fit the bundled pbmc_facs data and print the ELBO per iteration."""

from __future__ import annotations

import time

import numpy as np

from . import VBNMF, datasets


def main() -> None:
    adata = datasets.pbmc_facs()
    print(f"pbmc_facs: {adata.n_obs} cells x {adata.n_vars} genes, {adata.X.nnz} nonzeros")
    start = time.perf_counter()
    model = VBNMF(n_components=10, max_iter=100, tol=1e-5, random_state=0, verbose=True)
    cell_factors = model.fit_transform(adata.X)
    seconds = time.perf_counter() - start
    print(f"{model.n_iter_} iterations in {seconds:.1f} s, final ELBO {model.elbo_trace_[-1]:.6g}")
    top = np.argsort(-model.components_, axis=1)[:, :5]
    for factor, genes in enumerate(top):
        share = cell_factors[:, factor].sum() / cell_factors.sum()
        gene_names = ", ".join(adata.var_names[genes])
        print(f"factor {factor:2d} ({share:5.1%} of cell loading): {gene_names}")


if __name__ == "__main__":
    main()
