"""The thirty-seventh pass (second wave) over `vbsnmf.tl`'s messages about a fit's stored
entries and its scalar arguments. Defects, each test failing on the code before its fix:

- `tl.top_genes` of a fit whose ``.obsm['X_nmf']`` or ``.varm['NMF']`` was edited to hold
  a negative value said "cell_factors must be finite and non-negative" (or
  "gene_loadings"), the arguments of `tl.gene_specificity`, not the entry it had read;
- `tl.top_genes` read ``.var['nmf_total_counts']`` without a look: text parsed as numbers
  (words met numpy's "could not convert string to float"), dates read as nanoseconds,
  categories as their values, booleans as 0 and 1, and a gene whose total was NaN, pd.NA,
  infinite or negative was left out of every factor without a word, even with
  ``min_counts=0``;
- `tl.top_genes(sort_by=<array of two names>)` met numpy's "truth value of an array ... is
  ambiguous", and an array of one name was taken as that name (`tl.nmf`'s ``solver``
  refuses both);
- `tl.nmf(warm_start=True)` of a fit whose per-gene Gamma parameters
  (``.varm['nmf_gene_shape']``, ``['nmf_gene_rate']``, ``['nmf_gene_scale_rate']``...)
  held a NaN, zero or negative value among the fitted genes said "init gene_shape must be
  positive and finite", an ``init`` never passed, as its cells' arrays already say; one
  whose ``nmf_gene_shape`` or ``nmf_gene_rate`` was cut to fewer factors said "init
  gene_rate has shape (15, 1), expected (3,) or (15, 3)";
- `tl.nmf(warm_start=True)` and `tl.project` of a fit whose per-gene Gamma parameters were
  text or objects met numpy's "ufunc 'greater' did not contain a loop" or "ufunc 'isfinite'
  not supported", and `tl.project` dropped the imaginary part of complex ones.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from simulated import poisson_gamma_adata

from vbsnmf import tl

N_CELLS, N_GENES, K = 60, 15, 3
TOTALS = "nmf_total_counts"


def _adata() -> ad.AnnData:
    # the shared counts, with anndata's default cell names ("0", "1"...) as before
    adata = poisson_gamma_adata(n_cells=N_CELLS, n_genes=N_GENES, k=K, prefix="")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter reached
        tl.nmf(adata, K, random_state=0, max_iter=20, n_threads=1)
    return adata


@pytest.fixture(scope="module")
def _fitted() -> ad.AnnData:
    return _adata()


@pytest.fixture
def fitted(_fitted) -> ad.AnnData:
    return _fitted.copy()


# -- a negative value in the fit's factors or loadings ----------------------------------------
@pytest.mark.parametrize(
    ("side", "entry", "sparse"),
    [("obsm", "X_nmf", False), ("varm", "NMF", False), ("varm", "NMF", True)],
    ids=["obsm", "varm", "varm-sparse"],
)
def test_top_genes_names_the_entry_holding_a_negative_value(fitted, side, entry, sparse):
    """Before: "cell_factors (gene_loadings) must be finite and non-negative"."""
    values = np.array(getattr(fitted, side)[entry])
    values[1, 0] = -0.5
    getattr(fitted, side)[entry] = sp.csr_matrix(values) if sparse else values
    with pytest.raises(ValueError, match=rf"adata\.{side}\['{entry}'\] of the fit 'nmf' holds neg"):
        tl.top_genes(fitted)


def test_top_genes_still_takes_negative_zero(fitted):
    """A guard (passes before the fix too): -0.0 is not negative."""
    fitted.varm["NMF"][0, :] = -0.0
    table = tl.top_genes(fitted, 4, include_inactive=True)
    assert len(table) > 0 and "G0" not in set(table["gene"])


# -- the genes' total counts ------------------------------------------------------------------
def _nan_first(values):
    values = values.astype(np.float64)
    values.iloc[0] = np.nan
    return values


def _na_first(values):
    values = values.astype("Int64")
    values.iloc[0] = pd.NA
    return values


def _inf_first(values):
    values = values.astype(np.float64)
    values.iloc[0] = np.inf
    return values


@pytest.mark.parametrize(
    "damage",
    [_nan_first, _na_first, _inf_first, lambda values: -values - 1],
    ids=["nan", "pd.NA", "inf", "negative"],
)
def test_top_genes_refuses_totals_a_fit_never_writes(fitted, damage):
    """Before: the gene (every gene, for negative totals) was left out of every factor
    without a word, even with min_counts=0."""
    fitted.var[TOTALS] = damage(fitted.var[TOTALS])
    with pytest.raises(ValueError, match=rf"adata\.var\['{TOTALS}'\] of the fit 'nmf' holds a "):
        tl.top_genes(fitted, N_GENES, min_counts=0, include_inactive=True)


@pytest.mark.parametrize(
    ("damage", "dtype"),
    [
        (lambda values: values.astype(str), "object"),
        (lambda values: ["many"] * len(values), "object"),
        (lambda values: values.astype("category"), "category"),
        (lambda values: pd.to_datetime(values.astype(np.int64), unit="D"), "datetime64"),
        (lambda values: values > 2, "bool"),
        (lambda values: values.astype(np.complex128), "complex128"),
    ],
    ids=["text-numbers", "words", "category", "datetime", "bool", "complex"],
)
def test_top_genes_refuses_totals_that_are_not_numbers(fitted, damage, dtype):
    """Before: text was parsed ("3.0" as 3), words met numpy's "could not convert string to
    float", dates were read as nanoseconds, booleans as 0 and 1, categories as their values
    and complex totals lost their imaginary part."""
    fitted.var[TOTALS] = damage(fitted.var[TOTALS])
    with pytest.raises(ValueError, match=rf"adata\.var\['{TOTALS}'\] .* holds {dtype}.* not num"):
        tl.top_genes(fitted)


def test_top_genes_reads_integer_and_nullable_totals_as_the_fit_wrote_them(fitted):
    """A guard (passes before the fix too): totals as int64 or pandas' Int64 without a
    missing value give the fit's own table."""
    expected = tl.top_genes(fitted, 5, min_counts=0)
    for dtype in (np.int64, "Int64", "Float64"):
        copy = fitted.copy()
        copy.var[TOTALS] = copy.var[TOTALS].astype(dtype)
        pd.testing.assert_frame_equal(tl.top_genes(copy, 5, min_counts=0), expected)


def test_top_genes_names_the_totals_of_a_fit_of_raw():
    """A fit of .raw keeps its totals in .raw.var: named so."""
    adata = _adata()
    adata.raw = adata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, K, use_raw=True, key_added="onraw", max_iter=5, n_threads=1)
    adata.raw.var["onraw_total_counts"] = adata.raw.var["onraw_total_counts"].astype(str)
    with pytest.raises(ValueError, match=r"adata\.raw\.var\['onraw_total_counts'\] of the fit"):
        tl.top_genes(adata, key="onraw")


# -- sort_by ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sort_by",
    [np.array(["loading", "score"]), np.array(["loading"]), pd.Series(["loading"])],
    ids=["array-of-two", "array-of-one", "series-of-one"],
)
def test_top_genes_refuses_sort_by_that_is_not_a_name(fitted, sort_by):
    """Before: numpy's "truth value of an array ... is ambiguous", or the one name taken."""
    with pytest.raises(ValueError, match=r"sort_by must be 'loading', 'specificity' or 'score'"):
        tl.top_genes(fitted, sort_by=sort_by)


def test_top_genes_takes_a_numpy_string_sort_by(fitted):
    """A guard (passes before the fix too): a numpy string is a name."""
    pd.testing.assert_frame_equal(
        tl.top_genes(fitted, sort_by=np.str_("loading")), tl.top_genes(fitted, sort_by="loading")
    )


# -- warm_start from damaged per-gene parameters -----------------------------------------------
@pytest.mark.parametrize("value", [np.nan, 0.0, -1.0], ids=["nan", "zero", "negative"])
@pytest.mark.parametrize("entry", ["nmf_gene_shape", "nmf_gene_rate", "nmf_gene_scale_rate"])
def test_warm_start_names_the_damaged_gene_entry_not_an_init(fitted, entry, value):
    """Before: "init gene_shape must be positive and finite", an init never passed."""
    values = np.array(fitted.varm[entry])
    values[2, 0] = value
    fitted.varm[entry] = values
    n_iter = fitted.uns["nmf"]["n_iter"]
    with pytest.raises(
        ValueError,
        match=rf"warm_start: adata\.varm\['{entry}'\] of the fit 'nmf' holds .* in 1 of the "
        rf"{N_GENES} genes to fit",
    ):
        tl.nmf(fitted, K, warm_start=True, max_iter=2, n_threads=1)
    assert fitted.uns["nmf"]["n_iter"] == n_iter  # left as it was


def test_warm_start_still_continues_an_intact_fit(fitted):
    """A guard (passes before the fix too)."""
    n_iter = fitted.uns["nmf"]["n_iter"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(fitted, K, warm_start=True, max_iter=2, n_threads=1)
    assert fitted.uns["nmf"]["n_iter"] > n_iter


@pytest.mark.parametrize("entry", ["nmf_gene_shape", "nmf_gene_rate"])
def test_warm_start_names_a_gene_entry_cut_to_fewer_factors(fitted, entry):
    """Before: "init gene_rate has shape (15, 1), expected (3,) or (15, 3)"."""
    fitted.varm[entry] = np.array(fitted.varm[entry])[:, :1]
    with pytest.raises(
        ValueError, match=rf"warm_start: adata\.varm\['{entry}'\] is damaged \(shape \(15, 1\)"
    ):
        tl.nmf(fitted, K, warm_start=True, max_iter=2, n_threads=1)


@pytest.mark.parametrize("dtype", [str, object, np.complex128], ids=["text", "object", "complex"])
@pytest.mark.parametrize("tool", ["project", "warm_start"])
def test_gene_entries_that_are_not_numbers_are_named(fitted, dtype, tool):
    """Before: numpy's "ufunc 'greater' did not contain a loop ..." (text), "ufunc 'isfinite'
    not supported ..." (objects), or complex shapes projected with their imaginary part
    dropped."""
    fitted.varm["nmf_gene_shape"] = np.array(fitted.varm["nmf_gene_shape"]).astype(dtype)
    name = "adata_ref" if tool == "project" else "adata"
    with pytest.raises(
        ValueError, match=rf"{name}\.varm\['nmf_gene_shape'\] of the fit 'nmf' holds .*not numbers"
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's ComplexWarning before the fix
            if tool == "project":
                new = ad.AnnData(fitted.X.copy(), var=pd.DataFrame(index=fitted.var_names))
                tl.project(new, fitted, n_threads=1)
            else:
                tl.nmf(fitted, K, warm_start=True, max_iter=2, n_threads=1)
