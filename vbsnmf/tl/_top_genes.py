"""`top_genes`: the genes that define each factor."""

from __future__ import annotations

import numpy as np
import pandas as pd


def fit_info(adata, key: str) -> dict:
    """``adata.uns[key]`` of a `vbsnmf.tl.nmf` fit, or a `KeyError` saying what to run."""
    info = adata.uns.get(key)
    if not isinstance(info, dict) or "obsm_key" not in info:
        raise KeyError(
            f"adata.uns[{key!r}] holds no NMF fit; run vbsnmf.tl.nmf(adata"
            + ("" if key == "nmf" else f", key_added={key!r}")
            + ") first"
        )
    return info


def gene_specificity(gene_loadings: np.ndarray, cell_factors: np.ndarray) -> np.ndarray:
    """Share of each gene's expected counts that each factor explains (genes x K).

    ``E[x_j] = sum_i sum_l z_il w_jl``, so factor l's share of gene j is
    ``w_jl s_l / sum_l' w_jl' s_l'`` with ``s_l = sum_i z_il``; rows sum to one (zero for a
    gene no factor explains). Unlike the raw loading it does not favour genes that every
    cell expresses highly.
    """
    expected = gene_loadings * cell_factors.sum(axis=0)
    totals = expected.sum(axis=1, keepdims=True)
    return np.divide(expected, totals, out=np.zeros_like(expected), where=totals > 0)


def top_genes(
    adata,
    n_genes: int = 20,
    key: str = "nmf",
    *,
    sort_by: str = "specificity",
) -> pd.DataFrame:
    """The top genes of each factor of a `vbsnmf.tl.nmf` fit.

    Parameters
    ----------
    adata
        AnnData after `vbsnmf.tl.nmf`.
    n_genes
        Genes per factor.
    key
        ``key_added`` of the fit (its ``.uns`` key).
    sort_by
        ``"specificity"`` (default): largest share of the gene's expected counts that the
        factor explains, ties broken by loading (the genes that mark it; on PBMCs, CD79A
        for B cells, CD3D for T cells); ``"loading"``: largest posterior mean loading
        ``E[w_jl]`` (the genes a factor produces most of, often ribosomal genes shared
        by all factors); ``"score"``: loading x specificity, between the two.

    Returns
    -------
    DataFrame
        Indexed by ``(factor, rank)`` (rank 0 is the top gene), columns ``gene``,
        ``loading`` (``E[w_jl]``) and ``specificity`` (share in [0, 1], see
        `gene_specificity`).
    """
    if sort_by not in ("loading", "specificity", "score"):
        raise ValueError(f"sort_by must be 'loading', 'specificity' or 'score', got {sort_by!r}")
    if isinstance(n_genes, bool) or not isinstance(n_genes, (int, np.integer)) or n_genes < 1:
        raise ValueError(f"n_genes must be a positive integer, got {n_genes!r}")
    info = fit_info(adata, key)
    gene_loadings = np.asarray(adata.varm[info["varm_key"]], dtype=np.float64)
    cell_factors = np.asarray(adata.obsm[info["obsm_key"]], dtype=np.float64)
    specificity = gene_specificity(gene_loadings, cell_factors)
    n_genes = min(int(n_genes), adata.n_vars)
    rows = []
    for factor in range(gene_loadings.shape[1]):
        loading, share = gene_loadings[:, factor], specificity[:, factor]
        if sort_by == "loading":
            order = np.argsort(-loading, kind="stable")
        elif sort_by == "specificity":
            order = np.lexsort((-loading, -share))
        else:
            order = np.argsort(-(loading * share), kind="stable")
        for rank, gene in enumerate(order[:n_genes]):
            rows.append((factor, rank, adata.var_names[gene], loading[gene], share[gene]))
    table = pd.DataFrame(rows, columns=["factor", "rank", "gene", "loading", "specificity"])
    return table.set_index(["factor", "rank"])
