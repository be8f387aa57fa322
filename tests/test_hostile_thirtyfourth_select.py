"""Thirty-fourth hostile pass over choosing K (`tl.select_k`, `tl.count_split`): the
record of a grid naming no Numba threads, on which its fits' rounding depends (`tl.nmf`'s
record names them), and a reason whose figures said the opposite of the rule it applied
(a gap within its tolerance shown by two figures 0.00033 apart against "tolerance
0.000325"; a gap just beyond its tolerance shown as "0.00187 below the best, beyond its
tolerance 0.00187"); its docstring's Raises naming a non-AnnData alone under TypeError.
Guards (passing before and after): the count split against the
data and a numpy Binomial, the held-out score, its standard errors and the suggestion
against an independent numpy/scipy computation from fits of the train half, the active
factors against the shares `tl.nmf` records, odd grids, a second call over the first and
masked counts."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import numba
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.special import gammaln

from vbsnmf import tl
from vbsnmf.tl import _select_k

MAX_ITER = 30  # small fits: every check below compares fits of one setting


def _quiet(call, *args, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **options)


def _counts(n_cells=80, n_genes=24, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rates = rng.gamma(2.0, 1.0, (n_cells, 3)) @ rng.gamma(0.5, 1.0, (3, n_genes))
    return rng.poisson(rates).astype(np.float64)


def _stated(pattern: str, reason: str) -> tuple[float, float]:
    found = re.search(pattern, reason)
    assert found, reason
    return float(found[1]), float(found[2])


# -- defects (each test fails on the code before the fix) ------------------------------


def test_select_k_records_the_threads_its_fits_ran_on():
    adata = ad.AnnData(_counts())
    _quiet(tl.select_k, adata, [1, 2], max_iter=MAX_ITER)
    _quiet(tl.nmf, adata, 2, max_iter=MAX_ITER)
    threads = numba.config.NUMBA_NUM_THREADS
    # as tl.nmf records them: the record named no threads, and the table's last digits
    # depend on them (a grid of 1 and 2 threads differs by ~1e-10 in its ELBOs)
    assert adata.uns["nmf"]["params"]["n_threads"] == threads
    assert adata.uns["nmf_k_selection"]["params"]["n_threads"] == threads
    # more than there are: the count the fits ran on (capped), not the count given
    _quiet(tl.select_k, adata, [1], max_iter=MAX_ITER, n_threads=threads + 63)
    assert adata.uns["nmf_k_selection"]["params"]["n_threads"] == threads


def test_reason_states_a_gap_within_its_tolerance_within_it():
    # K=2 within its tolerance (gap 0.000325 <= 0.0003251), K=3 the best: the reason showed
    # "(-0.87868) ... (-0.87835 at K=3; tolerance 0.000325)", figures 0.00033 apart
    table = pd.DataFrame(
        {
            "heldout_ll_per_count": [-0.878679, -0.878354],
            "tolerance": [0.0003251, 0.0],
            "n_active": [2, 3],
        },
        index=[2, 3],
    )
    reason = _select_k._reason(table, [2, 3], 0, 1, None)
    gap, tolerance = _stated(r"at K=3; ([0-9.e-]+) below it, tolerance ([0-9.e-]+)\)", reason)
    assert gap <= tolerance
    assert gap == pytest.approx(0.000325, rel=1e-3)


def test_reason_shows_a_gap_beyond_its_tolerance_as_beyond():
    table = pd.DataFrame(
        {
            "heldout_ll_per_count": [-0.8801704, -0.8783, -0.8783],
            "tolerance": [0.0018696, 0.001, 0.0],
            "n_active": [2, 3, 4],
        },
        index=[2, 3, 4],
    )
    reason = _select_k._reason(table, [2, 3, 4], 1, 2, None)
    # "K=2 is 0.00187 below the best, beyond its tolerance 0.00187" before
    gap, tolerance = _stated(
        r"K=2 is ([0-9.e-]+) below the best, beyond its tolerance ([0-9.e-]+)", reason
    )
    assert gap > tolerance
    assert gap == pytest.approx(0.0018704, rel=1e-6)


def test_reason_of_a_grid_states_the_table_gaps():
    adata = ad.AnnData(_counts())
    table = _quiet(tl.select_k, adata, [1, 2, 3, 6], max_iter=MAX_ITER, tolerance=0.01)
    heldout, tolerances = table["heldout_ll_per_count"], table["tolerance"]
    suggested = table.attrs["suggested_k"]
    best = int(heldout.idxmax())
    assert suggested != best  # the tolerance of 0.01 takes a smaller K
    gap, tolerance = _stated(
        rf"at K={best}; ([0-9.e-]+) below it, tolerance ([0-9.e-]+)\)", table.attrs["reason"]
    )
    assert gap == pytest.approx(heldout[best] - heldout[suggested], rel=5e-3)
    assert tolerance == tolerances[suggested] and gap <= tolerance
    assert table.attrs["reason"] == adata.uns["nmf_k_selection"]["reason"]


# -- guards (passing before and after) ----------------------------------------------------


def test_count_split_halves_sum_to_the_data_and_replay():
    """Guard: the halves sum to the counts exactly, replay from their seed, do not depend
    on how the counts are stored, and are a numpy Binomial of each count."""
    counts = _counts(40, 15, seed=3)
    counts[counts < 2] = 0
    train, test = tl.count_split(counts, random_state=7)
    np.testing.assert_array_equal(train + test, counts)
    assert (train >= 0).all() and (test >= 0).all()
    drawn = np.random.default_rng(7).binomial(counts.astype(np.int64), 0.5)
    np.testing.assert_array_equal(train, drawn)
    for stored in (
        np.asfortranarray(counts),
        sp.csr_matrix(counts),
        sp.csc_array(counts),
        sp.coo_matrix(counts),
        counts.astype(np.int32),
    ):
        again = tl.count_split(stored, random_state=7)[0]
        again = again.toarray() if sp.issparse(again) else again
        np.testing.assert_array_equal(again, train)
    other = tl.count_split(counts, random_state=8)[0]
    assert not np.array_equal(other, train)


def test_held_out_score_and_rule_against_numpy():
    """Guard: the held-out log-likelihood per count, its paired standard errors and the
    suggestion recomputed by numpy/scipy from fits of the train half stored by tl.nmf."""
    counts = _counts()
    ks = [3, 1, 2]
    table = _quiet(tl.select_k, ad.AnnData(sp.csr_matrix(counts)), ks, max_iter=MAX_ITER)
    train, test = tl.count_split(counts, 0.5, random_state=0)
    per_cell = {}
    for k in sorted(ks):
        half = ad.AnnData(train.copy())
        _quiet(tl.nmf, half, k, max_iter=MAX_ITER, random_state=0)
        mu = half.obsm["X_nmf"] @ half.varm["NMF"].T
        per_cell[k] = (test * np.log(mu) - mu - gammaln(test + 1)).sum(axis=1)
    heldout = {k: ll.sum() / test.sum() for k, ll in per_cell.items()}
    np.testing.assert_allclose(table["heldout_ll_per_count"], list(heldout.values()), rtol=1e-12)
    best = max(heldout, key=heldout.get)
    for k in per_cell:
        diff = per_cell[best] - per_cell[k]
        se = np.sqrt(len(diff)) * diff.std(ddof=1) / test.sum()
        assert table.loc[k, "heldout_se"] == pytest.approx(se, rel=1e-9, abs=1e-15)
    within = [k for k in sorted(ks) if heldout[best] - heldout[k] <= table.loc[k, "tolerance"]]
    assert table.attrs["suggested_k"] == within[0]
    assert table["suggested"].tolist() == [k == within[0] for k in sorted(ks)]


def test_active_factors_against_the_shares_tl_nmf_records():
    """Guard: n_active is the count of the full fit's shares above its min_share."""
    counts = _counts()
    table = _quiet(tl.select_k, ad.AnnData(counts), [1, 3, 5], max_iter=MAX_ITER)
    for k in (1, 3, 5):
        full = ad.AnnData(counts.copy())
        _quiet(tl.nmf, full, k, max_iter=MAX_ITER)
        record = full.uns["nmf"]
        cells, genes = full.obsm["X_nmf"], full.varm["NMF"]
        expected = cells.sum(axis=0) * genes.sum(axis=0)
        np.testing.assert_allclose(record["factor_share"], expected / expected.sum())
        assert table.loc[k, "n_active"] == np.count_nonzero(
            record["factor_share"] > record["min_share"]
        )
        assert table.loc[k, "elbo"] == record["elbo_trace"][-1]


@pytest.mark.parametrize(
    ("ks", "message"),
    [
        ([2.0, 3.0], "positive integers, got 2.0"),
        (np.array([1.0, 2.0]), "positive integers, got 1.0"),
        ([2, 1, 2], r"distinct, got \[2, 1, 2\] \(2 repeated\)"),
        ([1, 25], r"ks holds 25, above min\(n_cells, n_genes\) = 24"),
        ([0, 1], "positive integers, got 0"),
    ],
)
def test_odd_grids_refused_before_any_fit(monkeypatch, ks, message):
    """Guard: floats, repeats, Ks beyond the data and 0 refused before the first fit."""
    monkeypatch.setattr(_select_k, "nmf", lambda *args, **kwargs: pytest.fail("fitted"))
    with pytest.raises(ValueError, match=message):
        tl.select_k(ad.AnnData(_counts()), ks)


def test_unsorted_grid_with_k_at_the_data_limit():
    """Guard: an unsorted grid of numpy integers up to min(shape) is fitted in ascending
    order, and a single K=1 says nothing was compared."""
    adata = ad.AnnData(_counts(n_genes=6))
    table = _quiet(tl.select_k, adata, np.array([6, 1, 3], dtype=np.uint8), max_iter=MAX_ITER)
    assert table.index.tolist() == [1, 3, 6] and table.index.name == "n_components"
    np.testing.assert_array_equal(adata.uns["nmf_k_selection"]["params"]["ks"], [1, 3, 6])
    single = _quiet(tl.select_k, adata, [1], max_iter=MAX_ITER)
    assert single.attrs["suggested_k"] == 1 and single.loc[1, "heldout_se"] == 0
    assert "the only K tried" in single.attrs["reason"]


def test_second_call_replaces_the_record_and_a_failed_one_keeps_it():
    """Guard: a second grid replaces the whole record under its key; one that fails keeps
    the first; another key keeps both."""
    adata = ad.AnnData(_counts())
    first = _quiet(tl.select_k, adata, [1, 2], max_iter=MAX_ITER, tolerance=0.5)
    record = adata.uns["nmf_k_selection"]
    assert set(record) == {"table", "suggested_k", "reason", "params", "versions"}
    pd.testing.assert_frame_equal(record["table"], first)
    with pytest.raises(ValueError):
        _quiet(tl.select_k, adata, [1, 99], max_iter=MAX_ITER)
    assert adata.uns["nmf_k_selection"] is record
    _quiet(tl.select_k, adata, [2], max_iter=MAX_ITER)
    replaced = adata.uns["nmf_k_selection"]
    assert replaced["table"].index.tolist() == [2] and "tolerance" not in replaced["params"]
    _quiet(tl.select_k, adata, [1], max_iter=MAX_ITER, key_added="other")
    assert adata.uns["nmf_k_selection"] is replaced and "other" in adata.uns


def test_masked_counts_refused_with_advice():
    """Guard: a masked array with masked entries is refused (X and a layer, and by
    count_split); one with none masked is split as its values."""
    counts = _counts()
    masked = np.ma.masked_array(counts, mask=counts > 5)
    with pytest.raises(TypeError, match=r"masked array: pass the counts as adata\.X\.filled\(0\)"):
        tl.select_k(ad.AnnData(masked), [1])
    adata = ad.AnnData(counts.copy())
    adata.layers["counts"] = masked
    with pytest.raises(TypeError, match=r"adata\.layers\['counts'\] is a masked array"):
        tl.select_k(adata, [1], layer="counts")
    with pytest.raises(TypeError, match=r"counts\.filled\(0\)"):
        tl.count_split(masked)
    plain = np.ma.masked_array(counts, mask=False)
    np.testing.assert_array_equal(
        tl.count_split(plain, random_state=1)[0], tl.count_split(counts, random_state=1)[0]
    )


def test_docs_describe_the_rule_the_code_applies():
    """Guard: the docstring states the default tolerance as the code computes it."""
    doc = " ".join(tl.select_k.__doc__.split())
    assert "smallest K whose held-out log-likelihood is within ``tolerance`` of the best" in doc
    assert "``sqrt(n_cells) * std_i(ll_i(best) - ll_i(K))`` over the test total" in doc


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"ks": 3}, "``ks`` not a sequence"),
        ({"ks": "12"}, "``ks`` not a sequence"),
        ({"ks": [1], "tolerance": "0.1"}, "``tolerance`` or ``min_share`` not a number"),
        ({"ks": [1], "min_share": "0.1"}, "``tolerance`` or ``min_share`` not a number"),
    ],
)
def test_type_errors_are_documented(options, named):
    """The docstring's Raises named only a non-AnnData under TypeError (the behaviour is
    unchanged: the check of it passes before and after)."""
    with pytest.raises(TypeError):
        tl.select_k(ad.AnnData(np.ones((4, 3))), **options)
    raises = tl.select_k.__doc__.split("Raises")[1].split("ValueError")[0]
    assert named in " ".join(raises.split())
