"""Twenty-fifth hostile pass, classical NMF: the interior point gradient's stall under
epsilon, sparse X with dense weights (a loss undefined at zero; a row or column left out
whole), and the checks of `choose_alpha_beta`'s grid and ``refine``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import lsq_linear

from vbsnmf.classic import NMF, choose_alpha_beta, factor_loss, losses

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

RNG = np.random.default_rng(25)
COUNTS = RNG.poisson(2.0, (30, 20)).astype(float)


@pytest.mark.parametrize("epsilon", [1e-2, 0.1])
def test_interior_point_gradient_reaches_the_bounded_optimum(epsilon):
    """With epsilon > 0 the IPG step scaled each entry by R, not by its distance to the
    bound: an entry near the bound cut its row's step to a sliver, and transform stopped
    0.5-1 % above the optimum of the bounded least squares problem, whatever tol."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = NMF(4, solver="hals", epsilon=epsilon, max_iter=300, tol=1e-10, random_state=0)
        model.fit(COUNTS)
    H = model.components_
    optimum = sum(
        2 * lsq_linear(H.T, row, bounds=(epsilon, np.inf), method="bvls", tol=1e-12).cost
        for row in COUNTS
    )
    model.set_params(solver="ipg", tol=1e-8, max_iter=3000)
    W = model.transform(COUNTS)
    assert W.min() >= epsilon
    loss = float(np.sum((COUNTS - W @ H) ** 2))
    assert optimum <= loss <= optimum * (1 + 1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_interior_point_gradient_with_epsilon_stays_monotone_and_masked(masked):
    mask = {"H": (RNG.random((3, 20)) > 0.3).astype(float)} if masked else None
    model = NMF(3, solver="ipg", epsilon=0.05, factor_mask=mask, max_iter=100, tol=0)
    W = model.fit_transform(COUNTS)
    trace = model.loss_trace_
    assert np.all(np.diff(trace) <= 1e-12 * trace[:-1])
    H = model.components_
    if masked:
        assert np.all(H[mask["H"] == 0] == 0) and H[mask["H"] == 1].min() >= 0.05
    assert W.min() >= 0.05
    np.testing.assert_allclose(model.loss_, np.sum((COUNTS - W @ H) ** 2), rtol=1e-10)


@pytest.mark.parametrize(
    ("loss", "params"),
    [("itakura-saito", {}), ("neyman", {}), ("ab", {"alpha": 0.5, "beta": -1.0})],
)
def test_sparse_x_takes_dense_weights_that_leave_out_its_zeros(loss, params):
    """A loss undefined at p = 0 with sparse X and dense weights that are 0 at X's zeros
    was refused ("use weights to exclude the zeros"), as the dense X and sparse weights
    were not."""
    weights = (COUNTS > 0).astype(float) * RNG.uniform(0.5, 2.0, COUNTS.shape)
    options = dict(loss=loss, max_iter=30, tol=0, init="random", random_state=0, **params)
    dense = NMF(3, weights=weights, **options).fit(COUNTS)
    sparse = NMF(3, weights=weights, **options).fit(sp.csr_matrix(COUNTS))
    np.testing.assert_allclose(sparse.components_, dense.components_, rtol=1e-9)
    np.testing.assert_allclose(sparse.loss_, dense.loss_, rtol=1e-12)
    W, H = RNG.random((30, 2)) + 0.1, RNG.random((2, 20)) + 0.1
    by_sparse = factor_loss(sp.csr_matrix(COUNTS), W, H, loss, weights=weights, **params)
    by_dense = factor_loss(COUNTS, W, H, loss, weights=weights, **params)
    np.testing.assert_allclose(by_sparse, by_dense, rtol=1e-12)


def test_sparse_x_with_dense_weights_still_refuses_a_counted_zero():
    weights = (COUNTS > 0).astype(float)
    weights[np.argwhere(COUNTS == 0)[0][0], np.argwhere(COUNTS == 0)[0][1]] = 1.0
    with pytest.raises(ValueError, match="undefined where the data is zero"):
        NMF(3, loss="itakura-saito", weights=weights).fit(sp.csr_matrix(COUNTS))


@pytest.mark.parametrize("epsilon", [0.0, 1e-3])
@pytest.mark.parametrize(("loss", "params"), [("frobenius", {}), ("beta", {"beta": 1.5})])
def test_a_row_or_column_left_out_whole_fits_as_with_dense_x(epsilon, loss, params):
    """Sparse X, dense weights 0 on a whole row and a whole column: that row's numerator
    and denominator were every entry's sums less the excluded entries', i.e. rounding of
    either sign: W went negative (-0.015), the column of H took arbitrary values (1.31;
    2.048 with epsilon) and loss_ misstated the weighted loss by about 1."""
    weights = np.ones(COUNTS.shape)
    weights[4] = 0.0
    weights[:, 7] = 0.0
    fits = {}
    for layout, X in (("dense", COUNTS), ("sparse", sp.csr_matrix(COUNTS))):
        model = NMF(4, loss=loss, weights=weights, epsilon=epsilon, max_iter=5, tol=0,
                    init="random", random_state=0, **params)  # fmt: skip
        W = model.fit_transform(X)
        H = model.components_
        assert W.min() >= epsilon and H.min() >= epsilon, layout
        expected = factor_loss(COUNTS, W, H, loss, weights=weights, **params)
        np.testing.assert_allclose(model.loss_, expected, rtol=1e-12)
        fits[layout] = (W, H)
    for sparse, dense in zip(fits["sparse"], fits["dense"], strict=True):
        np.testing.assert_allclose(sparse, dense, rtol=1e-9, atol=1e-12)
    W, H = fits["sparse"]
    np.testing.assert_array_equal(W[4], epsilon)
    np.testing.assert_array_equal(H[:, 7], epsilon)


def test_choose_alpha_beta_refuses_a_refine_that_is_not_a_flag():
    X = COUNTS + 1.0
    with pytest.raises(TypeError, match="refine must be True or False"):
        choose_alpha_beta(X, Q=X, refine="no")


@pytest.mark.parametrize("grid", [["a"], [1 + 1j], [[1.0], [1.0, 2.0]]])
def test_choose_alpha_beta_names_a_grid_that_is_not_real_numbers(grid):
    X = COUNTS + 1.0
    with pytest.raises((TypeError, ValueError), match="alphas must be a 1-D grid"):
        choose_alpha_beta(X, Q=X, alphas=grid, refine=False)


def _divergence_terms(P, Q, loss, params):
    """d(p, q) entry by entry, from its formula (Amari's alpha-divergence or Pearson's)."""
    if loss == "pearson":
        return (P - Q) ** 2 / Q
    alpha = params["alpha"]
    return (P**alpha * Q ** (1 - alpha) - alpha * P + (alpha - 1) * Q) / (alpha * (alpha - 1))


@pytest.mark.parametrize(("loss", "params"), [("alpha", {"alpha": 3.0}), ("pearson", {})])
def test_sparse_weighted_loss_does_not_cancel_at_a_row_left_out(loss, params):
    """A loss with d(x, 0) infinite but defined at p = 0: the entries of weight 0 entered
    the sum over sparse X and the exclusion both as d(x, q), huge where q is near 0 (a row
    left out, whose W is 0), and their difference was rounding: factor_loss read 163.0
    where the dense X gives 162.37 (alpha = 3)."""
    weights = np.ones(COUNTS.shape)
    weights[4] = 0.0
    W = RNG.random((30, 3)) + 0.1
    W[4] = 0.0
    H = RNG.random((3, 20)) + 0.1
    counted = weights > 0
    expected = np.sum(_divergence_terms(COUNTS[counted], (W @ H)[counted], loss, params))
    for X in (COUNTS, sp.csr_matrix(COUNTS)):
        value = factor_loss(X, W, H, loss, weights=weights, **params)
        np.testing.assert_allclose(value, expected, rtol=1e-12)


def test_sparse_weighted_fit_reports_its_loss_with_a_gene_left_out():
    """The same in the fit's own loss: a gene of weight 0, whose loadings go to 0, moved
    loss_ by 0.3."""
    weights = np.ones(COUNTS.shape)
    weights[4] = 0.0
    weights[:, 7] = 0.0
    model = NMF(4, loss="alpha", alpha=3.0, weights=weights, max_iter=5, tol=0,
                init="random", random_state=0)  # fmt: skip
    W = model.fit_transform(sp.csr_matrix(COUNTS))
    counted = weights > 0
    Q = (W @ model.components_)[counted]
    expected = np.sum(_divergence_terms(COUNTS[counted], Q, "alpha", {"alpha": 3.0}))
    np.testing.assert_allclose(model.loss_, expected, rtol=1e-12)


@pytest.mark.parametrize("where", ["P", "Q"])
def test_total_divergence_names_an_infinite_entry(where):
    """An infinite p or q gave d = NaN, which total_divergence blamed on "p = 0 or q = 0"."""
    finite = np.array([[1.0, 2.0]])
    infinite = np.array([[np.inf, 2.0]])
    P, Q = (infinite, finite) if where == "P" else (finite, infinite)
    with pytest.raises(ValueError, match=f"{where} has infinite entries"):
        losses.total_divergence(P, Q, "kl")
