"""The thirty-seventh pass over `vbsnmf.tl`'s smaller tools (`top_genes`, `count_split`,
`fit_info`, `gene_specificity`) and the dot plot of `top_genes`' table. Defects, each test
failing on the code before its fix:

- `pl.top_genes(..., gene_symbols=None)`, scanpy's default (name the genes by their
  var_names), was refused as "adata.var has no column None"; a list was Python's
  "unhashable type";
- a ``gene_symbols`` column naming the top genes by numbers (e.g. Entrez IDs), or integer
  var_names, failed in scanpy with a bare AssertionError, or a KeyError for the number as
  text;
- var_names held twice, with ``gene_symbols``, failed with pandas' "cannot reindex on an
  axis with duplicate labels" (without it scanpy says so; now both say it alike);
- `tl.count_split` of int64 counts from 2**63 - 512 to 2**63 - 1, which its docstring
  accepts (it refuses "2**63 or more"), refused them as "below 2**63, got 9.22337e+18";
- `tl.count_split` of a sparse int64 or uint64 matrix whose repeated entries sum to 2**63
  or more (scipy sums them in the dtype, which wraps round) split four entries of 2**62
  as a count of 0 without a word, and refused three as "a negative entry";
- `tl.gene_specificity` parsed text loadings, read dates and durations as numbers, and
  called a pandas Float64 frame holding pd.NA "not a numeric array".
"""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from simulated import poisson_gamma_adata

from vbsnmf import pl, tl

N_CELLS, N_GENES, K = 40, 12, 3
GENES = [f"G{j}" for j in range(N_GENES)]


def _adata(genes=GENES) -> ad.AnnData:
    adata = poisson_gamma_adata(n_cells=N_CELLS, n_genes=N_GENES, k=K)
    adata.obs["group"] = pd.Categorical(["a", "b"] * (N_CELLS // 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's "var_names not unique"
        adata.var_names = genes
        tl.nmf(adata, K, random_state=0, max_iter=30, n_threads=1)
    return adata


@pytest.fixture(scope="module")
def fitted() -> ad.AnnData:
    return _adata()


def _dot_plot(adata, **kwds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pl.top_genes(adata, "group", 2, return_fig=True, **kwds)
        finally:
            plt.close("all")


def test_gene_symbols_none_names_the_genes_by_their_var_names(fitted):
    """scanpy's default: the plot of ``gene_symbols=None`` is the plot without it."""
    adata = fitted.copy()
    shown = _dot_plot(adata, gene_symbols=None)
    assert list(shown.var_names) == list(tl.top_genes(adata, 2)["gene"])


def test_gene_symbols_not_a_column_name_is_a_type_error_naming_it(fitted):
    adata = fitted.copy()
    adata.var["symbol"] = [f"S{j}" for j in range(N_GENES)]
    with pytest.raises(TypeError, match=r"gene_symbols must be the name of a column of adata\.var"):
        _dot_plot(adata, gene_symbols=["symbol"])


@pytest.mark.parametrize("mixed", [False, True])
def test_gene_symbols_that_are_numbers_are_refused_naming_the_column(fitted, mixed):
    """Numbers for every gene (scanpy's bare AssertionError) or for a listed one (its
    KeyError for the number as text)."""
    adata = fitted.copy()
    top = tl.top_genes(adata, 2)["gene"].iloc[0]
    if mixed:
        adata.var["symbol"] = pd.Series([f"S{j}" for j in range(N_GENES)], dtype=object).values
        adata.var.loc[top, "symbol"] = 7
    else:
        adata.var["symbol"] = np.arange(N_GENES) + 1000
    with pytest.raises(ValueError, match=r"adata\.var\['symbol'\] \(gene_symbols\).*not text"):
        _dot_plot(adata, gene_symbols="symbol")


def test_var_names_that_are_numbers_are_refused_before_scanpy():
    """Integer var_names (anndata keeps a RangeIndex set as var_names) failed in scanpy's
    dot plot with a bare AssertionError."""
    adata = _adata()
    adata.var_names = pd.RangeIndex(N_GENES)
    with pytest.raises(ValueError, match=r"^adata\.var_names: .*not text.*astype\(str\)"):
        _dot_plot(adata)


def test_gene_symbols_of_text_with_a_number_for_an_unlisted_gene_still_plots(fitted):
    """Guard: only the names of the genes shown must be text."""
    adata = fitted.copy()
    shown = set(tl.top_genes(adata, 2)["gene"])
    other = next(gene for gene in GENES if gene not in shown)
    adata.var["symbol"] = pd.Series([f"S{j}" for j in range(N_GENES)], dtype=object).values
    adata.var.loc[other, "symbol"] = 7
    plot = _dot_plot(adata, gene_symbols="symbol")
    assert all(name.startswith("S") for name in plot.var_names)


def test_var_names_held_twice_with_gene_symbols_are_named():
    adata = _adata(genes=["A", "A", *GENES[2:]])
    adata.var["symbol"] = [f"S{j}" for j in range(N_GENES)]
    with pytest.raises(ValueError, match=r"adata\.var_names hold 'A' more than once.*make_unique"):
        _dot_plot(adata, gene_symbols="symbol")


@pytest.mark.parametrize("form", ["dense", "csr"])
@pytest.mark.parametrize("count", [2**63 - 1, 2**63 - 512])
def test_count_split_takes_int64_counts_up_to_its_maximum(form, count):
    counts = np.array([[count, 3], [0, 5]], dtype=np.int64)
    given = counts if form == "dense" else sp.csr_matrix(counts)
    train, test = tl.count_split(given, random_state=0)
    if form == "csr":
        train, test = train.toarray(), test.toarray()
    assert train.dtype == test.dtype == np.int64
    assert [[int(a) + int(b) for a, b in zip(*rows)] for rows in zip(train, test)] == [
        [count, 3],
        [0, 5],
    ]


@pytest.mark.parametrize("dtype", [np.uint64, np.float64])
def test_count_split_still_refuses_counts_of_2_to_the_63(dtype):
    """Guard: 2**63 itself, of an unsigned or float dtype, is still refused."""
    with pytest.raises(ValueError, match=r"counts must be below 2\*\*63"):
        tl.count_split(np.array([[2**63, 1]], dtype=dtype))


LOADINGS = np.random.default_rng(0).gamma(1.0, 1.0, (5, 3))
FACTORS = np.random.default_rng(1).gamma(1.0, 1.0, (7, 3))


@pytest.mark.parametrize(
    "loadings",
    [
        LOADINGS.astype(str),
        np.zeros((5, 3), dtype="datetime64[s]"),
        np.ones((5, 3), dtype="timedelta64[s]"),
    ],
    ids=["text", "datetime64", "timedelta64"],
)
def test_gene_specificity_refuses_loadings_that_are_not_numbers(loadings):
    """numpy's cast to float64 parsed the text and read dates and durations as numbers."""
    with pytest.raises(TypeError, match=r"gene_loadings must be a numeric array, got dtype"):
        tl.gene_specificity(loadings, FACTORS)


def test_gene_specificity_names_a_missing_value_of_a_pandas_frame_as_one():
    """A Float64 frame holding pd.NA was "not a numeric array"; now a missing value is
    refused as NaN is, and the frame without one is read."""
    frame = pd.DataFrame(LOADINGS).astype("Float64")
    np.testing.assert_array_equal(
        tl.gene_specificity(frame, FACTORS), tl.gene_specificity(LOADINGS, FACTORS)
    )
    frame.iloc[0, 0] = pd.NA
    with pytest.raises(ValueError, match="gene_loadings must be finite and non-negative"):
        tl.gene_specificity(frame, FACTORS)


@pytest.mark.parametrize("form", ["coo", "csr"])
@pytest.mark.parametrize(
    ("dtype", "repeats"),
    [(np.int64, [2**62] * 4), (np.int64, [2**62] * 3), (np.uint64, [2**63 - 1] * 3)],
    ids=["int64-wraps-to-0", "int64-wraps-negative", "uint64-wraps-below-2**63"],
)
def test_count_split_refuses_repeated_entries_summing_beyond_int64(form, dtype, repeats):
    """scipy sums repeats in their dtype: four entries of 2**62 were split as a count of 0
    without a word, three refused as "a negative entry" the matrix does not hold."""
    n = len(repeats)
    values, columns = np.array([*repeats, 5], dtype=dtype), np.zeros(n + 1, dtype=np.int32)
    columns[-1] = 1
    if form == "coo":
        rows = np.zeros(n + 1, dtype=np.int32)
        counts = sp.coo_matrix((values, (rows, columns)), shape=(1, 2))
    else:
        counts = sp.csr_matrix((values, columns, np.array([0, n + 1])), shape=(1, 2))
    with pytest.raises(ValueError, match=r"below 2\*\*63, got .* \(repeated entries summed\)"):
        tl.count_split(counts)


def test_count_split_sums_large_int64_repeats_below_2_to_the_63_exactly():
    """Repeats of int64 counts summing to 2**63 - 1 are split, exactly (their sum was
    refused as "below 2**63, got 9.22337e+18")."""
    values = np.array([2**62, 2**62 - 1], dtype=np.int64)
    counts = sp.coo_matrix((values, (np.zeros(2, int), np.zeros(2, int))), shape=(1, 1))
    train, test = tl.count_split(counts, random_state=0)
    assert int(train.toarray()[0, 0]) + int(test.toarray()[0, 0]) == 2**63 - 1
