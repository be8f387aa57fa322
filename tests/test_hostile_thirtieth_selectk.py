"""Thirtieth hostile pass over choosing K: ``count_split`` refusing a DataFrame of pandas'
nullable counts (Int64, Float64) as "dtype object" where ``VBNMF.fit`` takes it, taking a
numpy complex ``fraction`` with numpy's ComplexWarning, and giving scipy's message for a 3-D
sparse array; ``select_k``'s reason saying "0 of its 2 factors are active (the others
switched off)" when no factor is active; ``pl.select_k(key=None)`` advising
``key_added=None``, which ``select_k`` refuses. Guards (passing before and after): the
held-out score against scipy's Poisson log pmf, a grid given unsorted and as numpy integers,
``adata`` untouched by an interrupted grid, and the record read back from ``.h5ad`` and
plotted."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import poisson

import vbsnmf
from vbsnmf import pl, tl
from vbsnmf.tl import _select_k


def _quiet(call, *args, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **options)


def _counts(n_cells=30, n_genes=20, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1.0, 1.0, (n_cells, 3)) @ rng.gamma(1.0, 1.0, (3, n_genes))
    return rng.poisson(rates).astype(np.float64)


def test_count_split_takes_a_frame_of_nullable_integers():
    counts = pd.DataFrame({"a": [1, 2, 0, 7], "b": [3, 0, 5, 1]})
    train, test = tl.count_split(counts.astype("Int64"), random_state=3)
    expected = tl.count_split(counts.to_numpy(dtype=np.float64), random_state=3)
    # the same Binomial draws as the plain numbers, in float64
    assert train.dtype == np.float64
    np.testing.assert_array_equal(train, expected[0])
    np.testing.assert_array_equal(test, expected[1])
    train, test = tl.count_split(counts.astype("Float64"), random_state=3)
    np.testing.assert_array_equal(train + test, counts.to_numpy(dtype=np.float64))


def test_count_split_names_missing_values_of_a_nullable_frame():
    counts = pd.DataFrame({"a": [1, 2, 0], "b": [3, 0, 5]}).astype("Int64")
    with pytest.raises(ValueError, match="non-negative and finite"):
        tl.count_split(counts.where(counts > 0))  # pd.NA where a count was 0
    with pytest.raises(TypeError, match="not text"):  # text is still refused
        tl.count_split(np.array([[1, "2"]], dtype=object))


def test_count_split_refuses_a_numpy_complex_fraction():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's ComplexWarning
        with pytest.raises(TypeError, match="fraction must be a number, got complex128"):
            tl.count_split(np.ones((2, 2)), np.complex128(0.5 + 0.5j))


def test_count_split_of_a_3d_sparse_array_says_2d():
    with pytest.raises(ValueError, match=r"2-D \(cells x genes\), got shape \(2, 2, 2\)"):
        tl.count_split(sp.coo_array(np.ones((2, 2, 2))))


@pytest.mark.parametrize("dtype", [np.uint8, bool])
def test_count_split_sums_repeated_entries_beyond_a_narrow_dtype(dtype):
    # UMIs counted by repeated (cell, gene) entries of ones: about 400 per entry
    rng = np.random.default_rng(0)
    cells, genes = rng.integers(0, 20, 40000), rng.integers(0, 5, 40000)
    ones = sp.coo_matrix((np.ones(40000, dtype=dtype), (cells, genes)), shape=(20, 5))
    counts = sp.coo_matrix((np.ones(40000), (cells, genes)), shape=(20, 5)).toarray()
    train, test = tl.count_split(ones, random_state=2)
    # the sums as VBNMF.fit reads them (uint8 gave 144 for 400, booleans 1), in float64
    assert train.dtype == np.float64
    expected = tl.count_split(counts, random_state=2)
    np.testing.assert_array_equal(train.toarray(), expected[0])
    np.testing.assert_array_equal(test.toarray(), expected[1])


def test_count_split_keeps_a_narrow_dtype_its_sums_fit():
    """Guard (passes before and after): repeats within the dtype keep it."""
    ones = sp.coo_array(
        (np.ones(4, dtype=np.uint8), (np.array([0, 0, 1, 1]), np.array([1, 1, 0, 2]))),
        shape=(2, 3),
    )
    train, test = tl.count_split(ones, random_state=0)
    assert isinstance(train, sp.csr_array) and train.dtype == np.uint8
    np.testing.assert_array_equal((train + test).toarray(), [[0, 2, 0], [1, 0, 1]])


def test_select_k_reason_when_no_factor_is_active():
    # 20 cells, each with counts in its own gene, under the fixed prior: a factor per two
    # or so cells, none above the default min_share (five typical cells' counts); six
    # cells of ones had none above it until the 40th pass (a quarter of the cells' worth)
    counts = ad.AnnData(np.eye(20) * 5)
    table = _quiet(tl.select_k, counts, [8, 10], prior="gamma", max_iter=60)
    suggested = table.attrs["suggested_k"]
    assert table.loc[suggested, "n_active"] == 0
    reason = table.attrs["reason"]
    assert "the others switched off" not in reason
    assert f"none of its {suggested} factors is active" in reason
    assert "min_share" in reason


def test_select_k_reason_with_some_factors_active_unchanged():
    """Guard (passes before and after): the wording of the 28th pass where some are
    active."""
    table = _quiet(tl.select_k, ad.AnnData(_counts()), [1, 2], tolerance=10.0, max_iter=5)
    # K=2 suggested with one of its factors active
    reason = _select_k._reason(table.assign(n_active=[1, 1]), [1, 2], 1, 1, 10.0)
    assert "1 of its 2 factors are active (the others switched off)" in reason


def test_plot_key_none_names_select_k_default():
    with pytest.raises(TypeError, match=r"key_added='nmf_k_selection' stores it under") as info:
        pl.select_k(ad.AnnData(np.ones((3, 3))), None, show=False)
    assert "key_added=None" not in str(info.value)
    with pytest.raises(TypeError, match=r"key_added=None stores it under 'nmf'"):
        pl.elbo(ad.AnnData(np.ones((3, 3))), None, show=False)  # tl.nmf's default


def test_heldout_score_against_scipy_poisson():
    """Guard: each K's held-out figure is scipy's Poisson log pmf of the test half under
    the train fit's posterior means, per test count (dense, every entry)."""
    counts = _counts(20, 12)
    table = _quiet(tl.select_k, ad.AnnData(sp.csr_matrix(counts)), [1, 3], max_iter=30)
    train, test = tl.count_split(counts, random_state=0)
    for k in (1, 3):
        half = ad.AnnData(train)
        _quiet(tl.nmf, half, k, max_iter=30, random_state=0)
        mu = half.obsm["X_nmf"] @ half.varm["NMF"].T
        expected = poisson.logpmf(test, mu).sum() / test.sum()
        assert table.loc[k, "heldout_ll_per_count"] == pytest.approx(expected, rel=1e-12)


def test_grid_unsorted_and_numpy_integers_give_the_sorted_table():
    """Guard: ``ks`` in any order and as numpy integers: the same table, sorted."""
    counts = sp.csr_matrix(_counts())
    first = _quiet(tl.select_k, ad.AnnData(counts), [1, 2, 3], max_iter=10)
    second = _quiet(tl.select_k, ad.AnnData(counts), np.array([3, 1, 2], np.uint8), max_iter=10)
    pd.testing.assert_frame_equal(first, second)
    assert first.attrs == second.attrs


def test_interrupted_grid_leaves_adata_untouched(monkeypatch):
    """Guard: a KeyboardInterrupt in the third fit leaves the earlier record and every
    ``adata`` entry as they were."""
    adata = ad.AnnData(sp.csr_matrix(_counts()))
    _quiet(tl.select_k, adata, [1, 2], max_iter=5)
    record = adata.uns["nmf_k_selection"]
    table = record["table"].copy()
    fit, calls = _select_k.nmf, []

    def interrupted(*args, **options):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fit(*args, **options)

    monkeypatch.setattr(_select_k, "nmf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _quiet(tl.select_k, adata, [1, 2, 3], max_iter=5)
    assert adata.uns["nmf_k_selection"] is record
    pd.testing.assert_frame_equal(record["table"], table)
    assert not adata.obsm and not adata.varm and adata.var.empty


def test_record_read_back_from_h5ad_and_plotted(tmp_path):
    """Guard: the record written to ``.h5ad`` reads back with its table, suggestion and
    params, and ``pl.select_k`` draws it."""
    adata = ad.AnnData(sp.csr_matrix(_counts()))
    table = _quiet(tl.select_k, adata, [1, 2, 3], max_iter=10, tolerance=0.01, random_state=5)
    adata.write_h5ad(tmp_path / "k.h5ad")
    read = ad.read_h5ad(tmp_path / "k.h5ad")
    record = read.uns["nmf_k_selection"]
    pd.testing.assert_frame_equal(record["table"], table, check_names=False)
    assert record["suggested_k"] == table.attrs["suggested_k"]
    assert record["reason"] == table.attrs["reason"]
    assert record["params"]["tolerance"] == 0.01 and record["params"]["random_state"] == 5
    axes = pl.select_k(read, show=False)
    assert [int(tick) for tick in axes[0].get_xticks()] == [1, 2, 3]
    again = _quiet(vbsnmf.tl.select_k, read, [1, 2, 3], max_iter=10, tolerance=0.01, random_state=5)
    pd.testing.assert_frame_equal(again, table)
