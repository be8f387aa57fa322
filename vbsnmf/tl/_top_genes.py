"""`top_genes`: the genes that define each factor."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import (
    check_factor_columns,
    check_fit_entries,
    counted,
    finite_fit_array,
    is_integer,
    warn_user,
)
from .._validation import numbers_from_objects, refuse_masked
from ._stored import FitKeys, active_factors, fit_info, gene_holder


def gene_specificity(gene_loadings: np.ndarray, cell_factors: np.ndarray) -> np.ndarray:
    """Share of each gene's expected counts that each factor explains (genes x K).

    ``E[x_j] = sum_i sum_l z_il w_jl``, so factor l's share of gene j is
    ``w_jl s_l / sum_l' w_jl' s_l'`` with ``s_l = sum_i z_il``; rows sum to one (zero for a
    gene no factor explains). Unlike the raw loading it does not favour genes that every
    cell expresses highly.

    Parameters
    ----------
    gene_loadings
        Genes x K, non-negative (``adata.varm['NMF']`` of a `vbsnmf.tl.nmf` fit); dense or
        a scipy sparse matrix.
    cell_factors
        Cells x K, non-negative (``adata.obsm['X_nmf']``); dense or a scipy sparse matrix.

    Returns
    -------
    ndarray of shape (n_genes, K)
        Each gene's shares, rows summing to one (zero for a gene no factor explains).
    """
    gene_loadings = _factor_matrix(gene_loadings, "gene_loadings")
    cell_factors = _factor_matrix(cell_factors, "cell_factors")
    if gene_loadings.shape[1] != cell_factors.shape[1]:
        raise ValueError(
            f"gene_loadings have {gene_loadings.shape[1]} factors, cell_factors "
            f"{cell_factors.shape[1]}"
        )
    # In log space, each row shifted by its maximum: the products w_jl s_l overflowed to
    # inf (NaN shares) or underflowed to zero for factors far from 1 that the input checks
    # accept.
    with np.errstate(divide="ignore"):
        log_expected = np.log(gene_loadings) + _log_column_sums(cell_factors)
    row_max = log_expected.max(axis=1, initial=-np.inf)
    explained = np.isfinite(row_max)
    shares = np.zeros_like(gene_loadings)
    weights = np.exp(log_expected[explained] - row_max[explained, None])
    shares[explained] = weights / weights.sum(axis=1, keepdims=True)
    return shares


def _log_column_sums(values: np.ndarray) -> np.ndarray:
    """``log(values.sum(axis=0))`` without overflow (-inf for a zero column)."""
    largest = values.max(axis=0, initial=0.0)
    sums = np.full(values.shape[1], -np.inf)
    positive = largest > 0
    scaled = values[:, positive] / largest[positive]
    sums[positive] = np.log(largest[positive]) + np.log(scaled.sum(axis=0))
    return sums


def _factor_matrix(values, name: str) -> np.ndarray:
    """A 2-D, finite, non-negative float array (factors or loadings); a sparse matrix is
    made dense (K columns)."""
    # np.asarray took a masked array's hidden values and dropped a complex one's imaginary
    # part, and called a sparse matrix not numeric
    refuse_masked(values, name, f"pass the values to use, e.g. {name}.filled(0)")
    if sp.issparse(values):
        values = values.toarray()
    if np.iscomplexobj(values):
        raise TypeError(f"{name} must be real numbers, got complex values")
    try:
        values = np.asarray(values)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a numeric array") from None
    # Cast to float64, numpy parsed text ("0.5"), read dates and durations as numbers and
    # called a DataFrame of pandas' Float64 holding pd.NA "not a numeric array".
    if values.dtype == object:
        values = numbers_from_objects(values, name)  # pd.NA as NaN, refused below
    elif values.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {values.dtype}")
    values = values.astype(np.float64, copy=False)
    if values.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x factors), got shape {values.shape}")
    if not np.all(np.isfinite(values)) or values.min(initial=0.0) < 0:
        raise ValueError(f"{name} must be finite and non-negative")
    return values


def top_genes(
    adata,
    n_genes: int = 20,
    key: str = "nmf",
    *,
    sort_by: str = "specificity",
    min_counts: int = 2,
    include_inactive: bool = False,
) -> pd.DataFrame:
    """The top genes of each factor of a `vbsnmf.tl.nmf` fit.

    Parameters
    ----------
    adata
        AnnData after `vbsnmf.tl.nmf`.
    n_genes
        Genes per factor (fewer when fewer genes qualify).
    key
        ``key_added`` of the fit (its ``.uns`` key).
    sort_by
        ``"specificity"`` (default): largest share of the gene's expected counts that the
        factor explains, ties broken by loading (the genes that mark it; on PBMCs, CD79A
        for B cells, CD3D for T cells); ``"loading"``: largest posterior mean loading
        ``E[w_jl]`` (the genes a factor produces most of, often ribosomal genes shared
        by all factors); ``"score"``: loading x specificity, between the two.
    min_counts
        List only genes with at least this many counts in the fitted data
        (``.var['nmf_total_counts']``). The default, 2, leaves out genes seen once in the
        whole data set: any factor explains all of such a gene, so its specificity says
        nothing.
    include_inactive
        Also list the factors that are not ``active`` (``.uns['nmf']['active']``: factors
        switched off by the prior, whose top genes are noise).

    Returns
    -------
    DataFrame
        Indexed by ``(factor, rank)`` (rank 0 is the top gene), columns ``gene``,
        ``loading`` (``E[w_jl]``), ``specificity`` (share in [0, 1], see
        `gene_specificity`) and ``total_counts`` (the gene's counts in the data). Genes
        come from ``adata.var_names`` (``adata.raw.var_names`` for a fit of ``.raw``);
        only genes with a positive loading in the factor are listed.

    Warns
    -----
    UserWarning
        A factor listed (active, or any with ``include_inactive``) none of whose genes has
        a positive loading and ``min_counts`` counts or more is left out of the table:
        the warning names it, and says whether it has no positive loading at all (its
        loadings all zero, which no ``min_counts`` changes).

    Examples
    --------
    >>> import vbsnmf
    >>> adata = vbsnmf.datasets.pbmc_tiny()[:200].copy()
    >>> vbsnmf.tl.nmf(adata, 5, max_iter=50, tol=1e-3)
    >>> table = vbsnmf.tl.top_genes(adata, n_genes=3)
    >>> list(table.index.names)
    ['factor', 'rank']
    >>> list(table.columns)
    ['gene', 'loading', 'specificity', 'total_counts']
    >>> bool(table["specificity"].between(0, 1).all())
    True
    """
    table = top_genes_table(adata, n_genes, key, sort_by, min_counts, include_inactive)
    warn_left_out(adata, key, table, min_counts, include_inactive, "the table")
    return table


def top_genes_table(
    adata, n_genes: int, key: str, sort_by: str, min_counts: int, include_inactive: bool
) -> pd.DataFrame:
    """`top_genes`' table, its arguments checked, without its warning (`vbsnmf.pl.top_genes`
    words its own, of the dot plot)."""
    # as a string: an array of one option equalled it, a longer one was numpy's "ambiguous"
    if not isinstance(sort_by, str) or sort_by not in ("loading", "specificity", "score"):
        raise ValueError(f"sort_by must be 'loading', 'specificity' or 'score', got {sort_by!r}")
    # a TypeError for a non-integer (5.0), as n_components gets it; the range a ValueError
    if not is_integer(n_genes):
        raise TypeError(f"n_genes must be an integer, got {n_genes!r}")
    if n_genes < 1:
        raise ValueError(f"n_genes must be a positive integer, got {n_genes!r}")
    # numpy's floats too: np.float32(2) was refused as "not a number"
    if not (is_integer(min_counts) or isinstance(min_counts, (float, np.floating))):
        raise TypeError(f"min_counts must be a number, got {type(min_counts).__name__}")
    try:
        finite = np.isfinite(float(min_counts))
    except OverflowError:  # an int beyond the float range (numpy's isfinite has no loop)
        raise ValueError("min_counts must be finite, got one beyond floats") from None
    if not finite:
        raise ValueError(f"min_counts must be finite, got {min_counts!r}")
    info = fit_info(adata, key)
    key = str(key)  # a numpy string as text in messages (fit_info checked it is a string)
    if adata.n_obs == 0:  # the specificities are weighed by the cells' factors: all 0 here
        raise ValueError(
            "adata holds no cells, whose factors weigh each gene's specificity; list the top "
            "genes of the AnnData that was fitted"
        )
    genes = gene_holder(adata, key)
    # a fit of .raw keeps its gene side there: named so, not as adata's .varm and .var
    where = "" if genes is adata else "raw."
    check_fit_entries(
        key,
        (f"{where}varm", genes.varm, info["varm_key"]),
        ("obsm", adata.obsm, info["obsm_key"]),
        (f"{where}var", genes.var, FitKeys.of(key).total_counts),
    )
    gene_loadings = np.asarray(
        finite_fit_array(key, f"{where}varm", genes.varm, info["varm_key"], non_negative=True),
        dtype=np.float64,
    )
    cell_factors = np.asarray(
        finite_fit_array(key, "obsm", adata.obsm, info["obsm_key"], non_negative=True),
        dtype=np.float64,
    )
    n_components = info["params"]["n_components"]
    # cut to fewer factors by hand (the inactive ones dropped), a factor's column was
    # picked past the end: numpy's IndexError
    check_factor_columns(f"adata.{where}varm[{info['varm_key']!r}]", gene_loadings, n_components)
    check_factor_columns(f"adata.obsm[{info['obsm_key']!r}]", cell_factors, n_components)
    totals = _fit_totals(key, f"{where}var", genes.var, FitKeys.of(key).total_counts)
    specificity = gene_specificity(gene_loadings, cell_factors)
    rows = []
    for factor in active_factors(adata, key, include_inactive):
        loading, share = gene_loadings[:, factor], specificity[:, factor]
        if sort_by == "loading":
            order = np.argsort(-loading, kind="stable")
        elif sort_by == "specificity":
            order = np.lexsort((-loading, -share))
        else:
            order = np.argsort(-(loading * share), kind="stable")
        listed = order[(loading[order] > 0) & (totals[order] >= min_counts)][:n_genes]
        for rank, gene in enumerate(listed):
            rows.append(
                (factor, rank, genes.var_names[gene], loading[gene], share[gene], totals[gene])
            )
    table = pd.DataFrame(
        rows, columns=["factor", "rank", "gene", "loading", "specificity", "total_counts"]
    )
    # the same dtypes when no gene is listed (no active factor, or min_counts above every
    # gene's total): pandas made every column of an empty table an object column
    dtypes = {"factor": np.int64, "rank": np.int64, "gene": object}
    dtypes |= dict.fromkeys(["loading", "specificity", "total_counts"], np.float64)
    return table.astype(dtypes).set_index(["factor", "rank"])


def _fit_totals(key: str, where: str, var, column: str) -> np.ndarray:
    """The genes' total counts a fit ``key`` stored in ``adata.<where>[column]`` (``"var"``,
    ``"raw.var"``) as float64, or a `ValueError` naming the column if it holds anything but
    finite non-negative numbers, which `nmf` never writes. Cast as they were, text was
    parsed, dates read as numbers and a gene whose total was NaN (or pd.NA) left out of
    every factor without a word, even with ``min_counts=0``."""
    values = var[column]
    # by kind: pandas' nullable Int64 and Float64 are numbers, its categories and text not
    if getattr(values.dtype, "kind", "O") not in "iuf":
        raise ValueError(
            f"adata.{where}[{column!r}] of the fit {key!r} holds {values.dtype} values, not "
            "numbers, which vbsnmf.tl.nmf never writes; fit again"
        )
    totals = values.to_numpy(dtype=np.float64, na_value=np.nan)
    damaged = ~(np.isfinite(totals) & (totals >= 0))
    if damaged.any():
        raise ValueError(
            f"adata.{where}[{column!r}] of the fit {key!r} holds a missing, infinite or "
            f"negative total for {counted(np.count_nonzero(damaged), 'gene')} (of "
            f"{len(totals)}), which vbsnmf.tl.nmf never writes; fit again"
        )
    return totals


def left_out_factors(
    adata, key: str, table: pd.DataFrame, include_inactive: bool
) -> tuple[list[int], list[int]]:
    """The factors `top_genes` lists (the active ones, or all with ``include_inactive``) that
    ``table`` leaves out, in two lists: those none of whose genes has a positive loading at
    all (a factor switched off to exactly zero, a classical solver's factor of all-zero
    loadings), which no ``min_counts`` lists, and those none of whose genes has a positive
    loading and ``min_counts`` counts. Such a factor had no row, and no bracket in
    `vbsnmf.pl.top_genes`, without a word."""
    listed = set(table.index.get_level_values("factor"))
    left_out = [int(f) for f in active_factors(adata, key, include_inactive) if f not in listed]
    if not left_out:
        return [], []
    varm_key = fit_info(adata, key)["varm_key"]
    genes = gene_holder(adata, key)
    where = "varm" if genes is adata else "raw.varm"
    gene_loadings = np.asarray(finite_fit_array(str(key), where, genes.varm, varm_key))
    loaded = (gene_loadings[:, left_out] > 0).any(axis=0)
    unloaded = [f for f, any_loaded in zip(left_out, loaded) if not any_loaded]
    return unloaded, [f for f, any_loaded in zip(left_out, loaded) if any_loaded]


def left_out_messages(
    left_out: tuple[list[int], list[int]], shown_in: str, counts: str, advice: str
) -> list[str]:
    """What `left_out_factors` gives, said of ``shown_in`` (``"the table"``, ``"the dot
    plot"``, the command line's file): a message for the factors of no positive loading,
    and one, with the ``counts`` asked for and ``advice``, for those of too few counts. The
    first get no advice: no ``min_counts``, nor any option, lists a gene of theirs."""
    unloaded, too_few = left_out
    messages = []
    if unloaded:
        their, they, has = ("their", "they", "have") if len(unloaded) > 1 else ("its", "it", "has")
        messages.append(
            f"{_factors(unloaded)} left out of {shown_in}: none of {their} genes has a "
            f"positive loading ({their} loadings are all zero), so {they} {has} no gene to list"
        )
    if too_few:
        several = len(too_few) > 1
        messages.append(
            f"{_factors(too_few)} left out of {shown_in}: no gene of "
            f"{'theirs' if several else 'it'} has a positive loading and {counts} counts or "
            f"more; {advice}"
        )
    return messages


def _factors(factors: list[int]) -> str:
    """``"factor 3"``, ``"factors 1, 4"``."""
    return f"{'factors' if len(factors) > 1 else 'factor'} {', '.join(map(str, factors))}"


def warn_left_out(adata, key, table, min_counts, include_inactive: bool, shown_in: str) -> None:
    """A `UserWarning` naming the factors `left_out_factors` finds, said of ``shown_in``."""
    left_out = left_out_factors(adata, key, table, include_inactive)
    counts = f"min_counts={min_counts}"
    for message in left_out_messages(left_out, shown_in, counts, "lower min_counts"):
        warn_user(message, UserWarning)
