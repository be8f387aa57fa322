"""Count matrices drawn from the model itself, for tests that know the truth."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def poisson_gamma_counts(rng, n_rows, n_cols, k, shape=0.5):
    """``(X, mean)``: Poisson counts (CSR) with mean ``Z W'`` for Gamma(``shape``) factors."""
    true_rows = rng.gamma(shape, 1.0, (n_rows, k))
    true_cols = rng.gamma(shape, 2.0, (n_cols, k))
    mean = true_rows @ true_cols.T
    return sp.csr_matrix(rng.poisson(mean).astype(float)), mean


def poisson_gamma_array(*, n_cells: int, n_genes: int, k: int, seed: int = 0) -> np.ndarray:
    """Dense Poisson counts (float64, cells x genes) with mean ``Z W'`` for Gamma(1) cell
    and Gamma(0.5, scale 2) gene factors of rank ``k``, drawn with ``seed``: the counts of
    `poisson_gamma_adata`, for tests that build their own frames or AnnData."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1.0, 1.0, (n_cells, k)) @ rng.gamma(0.5, 2.0, (k, n_genes))
    return rng.poisson(rates).astype(np.float64)


def poisson_gamma_adata(*, n_cells: int, n_genes: int, k: int, seed: int = 0, prefix: str = "c"):
    """An AnnData of `poisson_gamma_array`'s counts as CSR; cells named ``prefix`` and a
    number (``prefix=""``: anndata's own default names ``0``, ``1``...), genes ``G0``,
    ``G1``...: the data of the tests that fit, edit and write a `tl.nmf` result. anndata
    and pandas are imported here, not with the module, which tests of what importing
    vbsnmf loads also import."""
    import anndata as ad
    import pandas as pd

    counts = poisson_gamma_array(n_cells=n_cells, n_genes=n_genes, k=k, seed=seed)
    cells = pd.DataFrame(index=[f"{prefix}{i}" for i in range(n_cells)])
    genes = pd.DataFrame(index=[f"G{j}" for j in range(n_genes)])
    return ad.AnnData(sp.csr_matrix(counts), obs=cells, var=genes)


def poisson_adata(*, n_cells: int, n_genes: int, seed: int = 0):
    """An AnnData of independent Poisson(1) counts (float32 CSR, cells x genes) drawn with
    ``seed``, cells named ``c0``, ``c1``..., genes ``g0``, ``g1``...: structureless data for
    the tests of what the tools store, refuse and report, not of what they find. anndata is
    imported here, as in `poisson_gamma_adata`."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(1.0, (n_cells, n_genes)).astype(np.float32)))
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    return adata
