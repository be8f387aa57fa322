"""Twenty-fourth hostile pass, the estimator: a masked fit under a fixed prior beyond the
dtype's range, and durations given as counts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import VBNMF
from vbsnmf._model import Mask, observed_extent

FLOAT32_MAX = float(np.finfo(np.float32).max)


def _counts():
    return np.random.default_rng(0).poisson(1.0, (1000, 10)).astype(float)


def _least_gene_rate(X, mask, prior_rate):
    """The bound of `check_fixed_prior_range` by hand for Gamma(1, prior_rate), the genes
    the shorter side: sum_i E[z_il] > (n_cells - n_genes) / b, and a gene's rate sums the
    cell means of its observed entries, whose mean over the genes is at least the least
    share of a cell's genes observed times that sum."""
    n_cells, n_genes = X.shape
    least_share = 1.0 - (mask != 0).sum(axis=1).max() / n_genes
    return least_share * (n_cells - n_genes) / prior_rate


def test_a_masked_fit_whose_fixed_prior_optimum_overflows_is_refused_before_any_pass():
    X = _counts()
    mask = np.zeros_like(X)
    mask[0, 0] = 1  # one missing entry: the same overflow as unmasked (FloatingPointError)
    assert _least_gene_rate(X, mask, 1e-36) > FLOAT32_MAX
    passes = []
    model = VBNMF(2, prior="gamma", prior_rate=1e-36, dtype=np.float32, max_iter=20)
    with pytest.raises(ValueError, match="beyond float32's range"):
        model.fit(X, mask=mask, callback=lambda n_iter, params, trace: passes.append(n_iter))
    assert passes == []
    assert not hasattr(model, "components_")


def test_a_masked_fit_within_the_range_its_missing_entries_leave_still_runs():
    X = _counts()
    mask = np.zeros_like(X)
    mask[0, :5] = 1  # half of a cell's genes missing: half the bound of the unmasked fit
    assert _least_gene_rate(X, 0 * mask, 2e-36) > FLOAT32_MAX  # refused unmasked
    assert _least_gene_rate(X, mask, 2e-36) < FLOAT32_MAX
    model = VBNMF(2, prior="gamma", prior_rate=2e-36, dtype=np.float32, random_state=0)
    with pytest.raises(ValueError, match="beyond float32's range"):
        model.set_params(max_iter=2).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, mask=mask)
    assert model.n_iter_ == 2 and np.all(np.isfinite(model.components_))


@pytest.mark.parametrize("transposed", [False, True])
def test_the_observed_share_is_the_least_of_a_longer_sides_line(transposed):
    rng = np.random.default_rng(1)
    missing = rng.random((30, 7)) < 0.3
    missing[4] = True  # a cell with every gene missing: no share at all
    missing[5, :3] = False
    if transposed:
        missing = missing.T
    axis = 1 if not transposed else 0
    # the cell masked whole leaves the bound's matrix (`observed_extent`): the share is of
    # the others (its 0 had switched the range check off)
    extent, share = observed_extent(missing.shape, Mask.of(sp.csr_array(missing.astype(float))))
    kept = np.delete(missing, 4, axis=1 - axis)
    assert extent == kept.shape
    assert share == pytest.approx(1.0 - kept.sum(axis=axis).max() / kept.shape[axis])
    missing[(4, slice(None)) if not transposed else (slice(None), 4)] = False
    expected = 1.0 - missing.sum(axis=axis).max() / missing.shape[axis]
    extent, share = observed_extent(missing.shape, Mask.of(sp.csr_array(missing.astype(float))))
    assert extent == missing.shape
    assert share == pytest.approx(expected) and 0 < share < 1


def test_durations_are_not_counts():
    durations = np.ones((6, 5)).astype("m8[s]")
    with pytest.raises(TypeError, match="X must hold numbers, got dtype timedelta64"):
        VBNMF(2).fit(durations)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = VBNMF(2, max_iter=3, random_state=0).fit(np.ones((6, 5)))
    with pytest.raises(TypeError, match="X must hold numbers, got dtype timedelta64"):
        model.transform(durations)
