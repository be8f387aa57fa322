"""Fortieth pass, small data: `tl.nmf`'s default ``min_share`` on a few cells, and tiny
shapes through the entry points.

The default threshold asked five typical cells' fitted counts of a factor. Of two equal
groups of cells, K = 2, that was the largest factor alone at 2 to 5 cells (the fallback where
five cells' worth is all the counts), none at 6 to 10 and one at 11, where a group of five
held exactly five cells' worth. Half the cells' worth (the brief's suggestion) asked exactly
what an equal group holds: none at 10 cells. Since this pass the default asks a quarter of
the cells' worth below 20 cells, under what either of two groups holds from two cells up,
and five cells' worth from 20 up (the same threshold, bit for bit).
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf.tl._nmf import _factor_share, prior_floor

N_GENES = 20


def _two_groups(n_cells: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Counts of two groups (the first ``n - n // 2`` cells, then the rest), each expressing
    its own half of the genes at a mean of 20; the first group's size."""
    rng = np.random.default_rng(seed)
    first = n_cells - n_cells // 2
    counts = np.zeros((n_cells, N_GENES))
    half = N_GENES // 2
    counts[:first, :half] = rng.poisson(20, (first, half))
    counts[first:, half:] = rng.poisson(20, (n_cells - first, half))
    return counts, first


def _fit(counts, n_components, **params) -> tuple[ad.AnnData, list[str]]:
    adata = ad.AnnData(sp.csr_matrix(counts))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vbsnmf.tl.nmf(adata, n_components, random_state=0, **params)
    messages = [str(w.message) for w in caught if w.category is not vbsnmf.ConvergenceWarning]
    return adata, messages


def _expected_threshold(adata, prior=None) -> float:
    """The default rule, from the stored factors: (floor + min(5, n / 4) median cells'
    fitted counts) / all fitted counts, of the n cells the fit gives any count."""
    cell_factors, gene_loadings = adata.obsm["X_nmf"], adata.varm["NMF"]
    fitted = cell_factors @ gene_loadings.sum(axis=0)
    n_cells, n_genes = cell_factors.shape[0], gene_loadings.shape[0]
    floor = 0.0 if prior is None else prior_floor(n_cells, n_genes, prior)
    counted = fitted[fitted > 0]
    return (floor + min(5, len(counted) / 4) * np.median(counted)) / fitted.sum()


@pytest.mark.parametrize("n_cells", range(2, 13))
def test_both_groups_factors_are_active_at_k2(n_cells):
    """Of two groups of 2 to 12 cells at K = 2 each factor carries one group's counts
    (its loadings on that group's genes) and is active; five cells' worth left one active
    at 2 to 5 and 11 cells and none at 6 to 10."""
    counts, first = _two_groups(n_cells)
    adata, messages = _fit(counts, 2, max_iter=200)
    info = adata.uns["nmf"]
    share = np.asarray(info["factor_share"])
    assert info["min_share"] == pytest.approx(_expected_threshold(adata), rel=1e-9)
    np.testing.assert_array_equal(info["active"], [True, True])
    assert not [m for m in messages if "no factor is active" in m], messages
    # each factor's loadings sit on one group's genes, one factor per group
    loadings = adata.varm["NMF"]
    half = N_GENES // 2
    on_first = loadings[:half].sum(axis=0) / loadings.sum(axis=0)
    assert on_first.min() < 0.05 and on_first.max() > 0.95, on_first
    # and holds about that group's share of the counts
    group_share = np.array([first, n_cells - first]) / n_cells
    first_factor = int(np.argmax(on_first))
    np.testing.assert_allclose(
        [share[first_factor], share[1 - first_factor]], group_share, atol=0.15
    )


@pytest.mark.parametrize("n_cells", [4, 6, 10, 11])
@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_switched_off_factors_are_inactive_and_the_groups_active_at_k4(n_cells, prior):
    """At K = 4 the two factors the variational fit switches off (under 1 % of the counts
    each) are inactive, the two groups' factors active, under both priors."""
    counts, _ = _two_groups(n_cells)
    adata, messages = _fit(counts, 4, prior=prior, max_iter=300)
    info = adata.uns["nmf"]
    share = np.asarray(info["factor_share"])
    fixed = None
    if prior == "gamma":
        fixed = (info["variational"]["prior_shape"], info["variational"]["prior_rate"])
    assert info["min_share"] == pytest.approx(_expected_threshold(adata, fixed), rel=1e-9)
    carrying = share > 0.2
    assert carrying.sum() == 2 and (share[~carrying] < 0.01).all(), share
    np.testing.assert_array_equal(info["active"], carrying)
    assert not [m for m in messages if "no factor is active" in m], messages


@pytest.mark.parametrize("solver", ["mu", "hals"])
@pytest.mark.parametrize("n_cells", [2, 5, 6, 9, 10, 11, 12])
def test_a_classical_fit_of_two_groups_has_active_factors(solver, n_cells):
    """Classical solvers split a group among K = min(4, n) factors: a factor holding at least
    a third of the counts (a group's or most of one) is active, none is all inactive."""
    counts, _ = _two_groups(n_cells)
    adata, messages = _fit(counts, min(4, n_cells), solver=solver, max_iter=200)
    info = adata.uns["nmf"]
    share = np.asarray(info["factor_share"])
    active = np.asarray(info["active"])
    assert info["min_share"] == pytest.approx(_expected_threshold(adata), rel=1e-9)
    assert active.any() and active[share >= 1 / 3].all(), (share, info["min_share"])
    np.testing.assert_array_equal(active, share > info["min_share"])
    assert not [m for m in messages if "no factor is active" in m], messages


@pytest.mark.parametrize("n_cells", [20, 21, 60, 1107])
@pytest.mark.parametrize("prior", [None, (0.3, 1.0)])
def test_the_threshold_of_20_cells_and_more_is_unchanged_bit_for_bit(n_cells, prior):
    """Guard (passes before the change too): from 20 cells up (pbmc_tiny has 1107) the
    default is still the floor plus five median cells' fitted counts, to the bit."""
    rng = np.random.default_rng(n_cells)
    cell_factors = rng.gamma(0.5, 1.0, (n_cells, 4))
    gene_loadings = rng.gamma(0.5, 1.0, (50, 4))
    _, threshold = _factor_share(cell_factors, gene_loadings, None, prior)
    totals = cell_factors @ gene_loadings.sum(axis=0)
    total = float((cell_factors.sum(axis=0) * gene_loadings.sum(axis=0)).sum())
    floor = 0.0 if prior is None else prior_floor(n_cells, 50, prior)
    assert threshold == (floor + 5 * float(np.median(totals))) / total


def test_pbmc_tiny_threshold_is_five_median_cells():
    """Guard (passes before the change too): a short fit of pbmc_tiny records five median
    cells' fitted counts over all of them, to the bit of the formula."""
    adata = vbsnmf.datasets.pbmc_tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, 3, random_state=0, max_iter=5)
    cell_factors, gene_loadings = adata.obsm["X_nmf"], adata.varm["NMF"]
    gene_sums = gene_loadings.sum(axis=0)
    totals = cell_factors @ gene_sums
    total = float((cell_factors.sum(axis=0) * gene_sums).sum())
    assert adata.uns["nmf"]["min_share"] == 5 * float(np.median(totals)) / total


def _mostly_empty() -> np.ndarray:
    """30 cells x 10 genes, two of them with counts (5 and 2): the rest have none."""
    counts = np.zeros((30, 10))
    counts[3, 2], counts[7, 5] = 5, 2
    return counts


@pytest.mark.parametrize("solver", ["mu", "hals", "gd", "ipg"])
@pytest.mark.parametrize("n_components", [2, 3])
def test_classical_factors_of_nothing_are_inactive_where_most_cells_are_empty(solver, n_components):
    """A classical solver fits the cells without counts exactly 0: the median cell's
    fitted count was 0 and so the threshold, and a factor of 1e-17 of the counts was
    active. The typical cell is now one the fit gives counts: the factors of the two cells
    with counts (5/7 and 2/7 of them) are active, any other (under 1 %) is not."""
    adata, messages = _fit(_mostly_empty(), n_components, solver=solver, max_iter=200)
    info = adata.uns["nmf"]
    share = np.asarray(info["factor_share"])
    assert info["min_share"] > 0.2
    assert info["min_share"] == pytest.approx(_expected_threshold(adata), rel=1e-9)
    np.testing.assert_array_equal(info["active"], share > 0.2)
    assert sorted(np.round(share[share > 0.2], 2)) == [0.29, 0.71]
    assert (share[share <= 0.2] < 0.01).all(), share
    assert not [m for m in messages if "no factor is active" in m], messages
    # what top_genes lists follows: the genes of the two cells, nothing of the others
    listed = vbsnmf.tl.top_genes(adata, n_genes=1, min_counts=1)
    assert set(listed.index.get_level_values("factor")) == set(np.flatnonzero(share > 0.2))


@pytest.mark.parametrize("solver", ["batch", "mu"])
def test_one_nonzero_fit_marks_only_the_factor_that_holds_it(solver):
    """One count of 5 in a 3 x 4 matrix at K = 3: the factor holding it (over 97 % of the
    fitted counts) is active, the two others (about 1 % under mu, which splits nothing
    exactly) are not; under mu the threshold was 0 and all three active (batch, whose
    learned prior switches the two off: a guard)."""
    counts = np.zeros((3, 4))
    counts[1, 2] = 5
    adata, _ = _fit(counts, 3, solver=solver, max_iter=200)
    info = adata.uns["nmf"]
    share = np.asarray(info["factor_share"])
    assert share.max() > 0.97
    np.testing.assert_array_equal(info["active"], share == share.max())


def _tiny_fit(counts, n_components, solver="batch") -> ad.AnnData:
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"c{i}" for i in range(counts.shape[0])]
    adata.var_names = [f"g{j}" for j in range(counts.shape[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, n_components, solver=solver, random_state=0, max_iter=100)
    return adata


TINY = {
    "1cell": np.array([[1, 0, 3.0]]),
    "1gene": np.array([[2], [0], [5.0]]),
    "2x2": np.array([[1, 0], [0, 2.0]]),
    "empty_rows_and_columns": np.array([[0, 0, 0, 0], [2, 0, 3, 0], [0, 0, 0, 0], [1, 0, 4, 0.0]]),
}


@pytest.mark.parametrize("name", list(TINY))
def test_k_beyond_the_shape_is_one_typed_error_at_every_entry_point(name):
    """Guard: K = min(shape) + 1 is a `ValueError` saying the range, from `tl.nmf`,
    `tl.select_k`, `VBNMF` (both solvers) and `classic.NMF`, before any fit."""
    counts = TINY[name]
    too_many = min(counts.shape) + 1
    limit = rf"min\(n_rows, n_cols\) = {too_many - 1}"
    expected = rf"n_components={too_many} is out of range.*{limit}"
    calls = [
        lambda: vbsnmf.tl.nmf(ad.AnnData(sp.csr_matrix(counts)), too_many),
        lambda: vbsnmf.VBNMF(too_many).fit(counts),
        lambda: vbsnmf.VBNMF(too_many, solver="svi").fit(counts),
        lambda: vbsnmf.NMF(too_many, solver="hals").fit(counts),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=expected):
            call()
    grid = rf"ks holds {too_many}, above min\(n_cells, n_genes\) = {too_many - 1}"
    with pytest.raises(ValueError, match=grid):
        vbsnmf.tl.select_k(ad.AnnData(sp.csr_matrix(counts)), [too_many])


@pytest.mark.parametrize("name", list(TINY))
def test_tools_after_a_tiny_fit_give_finite_results(name):
    """Guard: after a K = min(shape) fit of a tiny matrix, `tl.top_genes` lists only
    active factors' genes with counts, `tl.project` of the same cells gives finite usages
    that sum to 1 where a cell has counts, and `pl.elbo` draws the stored trace."""
    counts = TINY[name]
    adata = _tiny_fit(counts, min(counts.shape))
    listed = vbsnmf.tl.top_genes(adata, n_genes=2, min_counts=1)
    active = np.flatnonzero(adata.uns["nmf"]["active"])
    assert set(listed.index.get_level_values("factor")) <= set(active)
    gene_counts = counts.sum(axis=0)
    listed_genes = listed.index.get_level_values("gene") if "gene" in listed.index.names else []
    for gene in listed_genes:
        assert gene_counts[adata.var_names.get_loc(gene)] >= 1
    new = ad.AnnData(sp.csr_matrix(counts))
    new.obs_names, new.var_names = adata.obs_names, adata.var_names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cells without counts: the prior places them
        vbsnmf.tl.project(new, adata)
    usage = new.obsm["X_nmf_usage"]
    assert np.isfinite(new.obsm["X_nmf"]).all() and np.isfinite(usage).all()
    with_counts = counts.sum(axis=1) > 0
    np.testing.assert_allclose(usage[with_counts].sum(axis=1), 1.0, rtol=1e-9)
    import matplotlib.pyplot as plt

    trace_axes = np.ravel(vbsnmf.pl.elbo(adata, show=False))[0]
    drawn = trace_axes.get_lines()[0].get_ydata()
    np.testing.assert_allclose(drawn, adata.uns["nmf"]["elbo_trace"][-len(drawn) :])
    plt.close("all")


def test_no_active_warning_names_the_cells_the_default_counts():
    """30 cells, 8 of them with counts in a gene of their own, at K = 8 by mu: a factor per
    cell, an eighth of the counts each, below the quarter of the eight cells' worth the
    default asks, and the warning says so; the 22 cells without counts made the median
    cell's count and the threshold 0 (every factor active, no word)."""
    counts = np.zeros((30, 8))
    counts[np.arange(0, 24, 3), np.arange(8)] = 6
    adata, messages = _fit(counts, 8, solver="mu", max_iter=200)
    info = adata.uns["nmf"]
    share = np.asarray(info["factor_share"])
    assert share.max() < 0.2 and info["min_share"] == pytest.approx(0.25, rel=1e-6)
    assert not np.asarray(info["active"]).any()
    (warned,) = [m for m in messages if "no factor is active" in m]
    assert "(the default: 2 typical cells' counts, of 8 cells with counts)" in warned, warned
