"""The twenty-fourth hostile pass over ``tl.nmf`` and the AnnData it writes: a ``mask_var``
Series naming some genes of adata but not as ``adata.var_names`` (a mask made on another
AnnData) was applied by position, fitting genes other than those it marks, silently; one
of pandas' nullable booleans with a missing value was refused as "dtype object", not
named as missing, as the same values given as a ``.var`` column are; ``use_raw=True`` with a
mask of genes none of which ``.raw`` holds was refused as "mask_var selects no gene"; and a
classical ``init="custom"`` failed asking for W and H, which ``tl.nmf`` cannot pass."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from vbsnmf import tl


def _adata(n_cells: int = 30, n_genes: int = 10) -> ad.AnnData:
    counts = np.random.default_rng(0).poisson(2.0, (n_cells, n_genes)).astype(np.float32)
    adata = ad.AnnData(counts)
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    return adata


def _fit(adata, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 2, max_iter=5, **kwargs)


def test_a_mask_var_series_naming_other_genes_is_refused_not_read_by_position():
    adata = _adata()
    # marks g3..g6 by name, and names 3 genes adata lacks
    index = [*adata.var_names[3:], "x0", "x1", "x2"]
    marked = pd.Series(np.arange(10) < 4, index=index)
    with pytest.raises(ValueError, match=r"3 of its names are not genes of adata.*reindex"):
        _fit(adata, mask_var=marked)
    assert "nmf" not in adata.uns
    # as the message advises: the genes it names, by name
    _fit(adata, mask_var=marked.reindex(adata.var_names, fill_value=False))
    fitted = adata.var_names[adata.varm["NMF"].any(axis=1)]
    assert list(fitted) == ["g3", "g4", "g5", "g6"]
    expected = adata.X[:, 3:7].sum(axis=0)
    np.testing.assert_array_equal(adata.var["nmf_total_counts"].to_numpy()[3:7], expected)


def test_a_mask_var_series_naming_no_gene_of_adata_is_still_read_by_position():
    adata = _adata()
    positional = pd.Series(np.arange(10) < 4)  # a RangeIndex
    _fit(adata, mask_var=positional)
    assert list(adata.var_names[adata.varm["NMF"].any(axis=1)]) == ["g0", "g1", "g2", "g3"]
    other_ids = pd.Series(np.arange(10) >= 6, index=[f"ENSG{i}" for i in range(10)])
    _fit(adata, mask_var=other_ids)
    assert list(adata.var_names[adata.varm["NMF"].any(axis=1)]) == ["g6", "g7", "g8", "g9"]


def test_a_mask_var_series_with_missing_values_is_named_so():
    adata = _adata()
    marked = pd.Series(pd.array(np.arange(10) < 5, dtype="boolean"), index=adata.var_names)
    marked.iloc[2] = pd.NA
    with pytest.raises(ValueError, match="mask_var has 1 missing values"):
        _fit(adata, mask_var=marked)
    with pytest.raises(ValueError, match="mask_var has 1 missing values"):  # in another order
        _fit(adata, mask_var=marked.iloc[::-1])


def test_a_mask_var_of_genes_missing_from_raw_says_so_not_that_it_selects_none():
    adata = _adata(30, 12)
    adata.raw = adata[:, :8].copy()
    adata.X = adata.X * 0.5  # normalised X; the counts are in .raw
    with pytest.raises(ValueError, match=r"marks 2 genes of adata\.var_names, none of which"):
        _fit(adata, use_raw=True, mask_var=np.arange(12) >= 10)


def test_a_mask_var_series_of_repeated_names_says_so():
    adata = _adata(30, 4)
    marked = pd.Series([True, True, False, False, False], index=["g0", "g1", "g2", "g3", "g3"])
    with pytest.raises(ValueError, match="its names or adata's repeat"):
        _fit(adata, mask_var=marked)


def test_a_classical_custom_init_says_tl_nmf_takes_no_starting_factors():
    adata = _adata()
    with pytest.raises(ValueError, match=r"init='custom'.*which tl\.nmf does not take"):
        _fit(adata, solver="mu", init="custom")
    assert "nmf" not in adata.uns
