"""Eighteenth hostile pass, classical NMF: all-zero custom starts, the stopping rule on data
of a small scale, the sparse weighted loss at tiny reconstructions of zeros, the Q of
score matching, and `tl.nmf`'s ``converged`` for a classical fit."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf.classic import NMF, choose_alpha_beta, factor_loss, score_matching_objective

RNG = np.random.default_rng(18)
X = RNG.poisson(2, (8, 6)).astype(float)
W0 = RNG.random((8, 2)) + 0.1
H0 = RNG.random((2, 6)) + 0.1


@pytest.mark.parametrize("solver", ["mu", "ipg", "als"])
@pytest.mark.parametrize("zero", ["W", "H"])
def test_an_all_zero_custom_start_is_refused(solver, zero):
    """The multiplicative and interior point updates cannot leave zero (ALS cannot leave a
    zero H): the fit returned W = H = 0 after 2 iterations without a word; scikit-learn
    refuses such a start."""
    W, H = W0.copy(), H0.copy()
    (W if zero == "W" else H)[:] = 0.0
    model = NMF(2, solver=solver, loss="frobenius", init="custom")
    with pytest.raises(ValueError, match=f"custom {zero} is all zero"):
        model.fit(X, W=W, H=H)
    # epsilon lifts the start off zero: the bound is a start the updates can leave
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lifted = NMF(2, solver=solver, loss="frobenius", init="custom", epsilon=1e-3)
        W_fit = lifted.fit_transform(X, W=W, H=H)
    assert np.sum((X - W_fit @ lifted.components_) ** 2) < 0.5 * np.sum(X**2)


@pytest.mark.parametrize("solver", ["hals", "pg", "ipg"])
def test_the_stopping_rule_does_not_depend_on_the_data_scale(solver):
    """A fixed floor of 1.19e-7 under the relative change stopped every fit whose loss was
    below it (data of a small scale) after 2-3 iterations, far from its optimum and without
    a ConvergenceWarning. The Frobenius fit is scale-equivariant: X c from W0 sqrt(c),
    H0 sqrt(c) gives the factors of X times sqrt(c), after as many iterations, and so does
    `transform`, whose rows stop on their own losses."""
    scale = 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = NMF(2, solver=solver, init="custom").fit(X, W=W0, H=H0)
        small = NMF(2, solver=solver, init="custom").fit(
            X * scale, W=W0 * scale**0.5, H=H0 * scale**0.5
        )
        transformed = small.transform(X * scale) / scale**0.5
        expected = plain.transform(X)
    assert small.n_iter_ == plain.n_iter_ > 3
    np.testing.assert_allclose(small.components_ / scale**0.5, plain.components_, rtol=1e-8)
    np.testing.assert_allclose(small.loss_ / scale**2, plain.loss_, rtol=1e-10)
    np.testing.assert_allclose(transformed, expected, rtol=1e-6)


def test_an_exact_factorisation_still_stops_on_tol():
    """The floor is now relative to the start's loss: a loss falling towards 0 at a steady
    relative rate (an exact factorisation) still settles (a guard: this held before)."""
    exact = W0 @ H0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConvergenceWarning
        model = NMF(2, solver="hals", max_iter=5000, random_state=0).fit(exact)
    assert model.n_iter_ < 5000
    assert model.loss_ < 1e-6 * np.sum(exact**2)


@pytest.mark.parametrize("layout", ["sparse X", "sparse weights"])
def test_the_sparse_weighted_loss_is_exact_at_tiny_reconstructions_of_zeros(layout):
    """The sparse weighted route floored W H at 1.19e-7 at the stored zeros too, adding up to
    1.19e-7 * weight to loss_ per zero reconstructed below it; the dense route (and the exact
    KL) floor only at X's nonzeros."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(1, (8, 6)).astype(float)
    weights = (rng.random(counts.shape) > 0.3) * rng.random(counts.shape) * 2
    data, w = (
        (sp.csr_matrix(counts), weights)
        if layout == "sparse X"
        else (counts, sp.csr_matrix(weights))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = NMF(2, weights=w, random_state=0, max_iter=40, tol=0)
        W = model.fit_transform(data)
    Q = W @ model.components_
    assert Q[(weights > 0) & (counts == 0)].min() < 1e-10  # far below the floor
    counted, positive = weights > 0, (weights > 0) & (counts > 0)
    p, q, counted_weights = counts[counted], Q[counted], weights[counted]
    ratio = np.where(positive[counted], p, 1.0) / np.where(positive[counted], q, 1.0)
    exact = np.sum(counted_weights * (np.where(positive[counted], p * np.log(ratio), 0.0) - p + q))
    np.testing.assert_allclose(model.loss_, exact, rtol=1e-12, atol=0)
    np.testing.assert_allclose(
        factor_loss(data, W, model.components_, "kl", weights=w), exact, rtol=1e-12, atol=0
    )


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (-(W0 @ H0), ValueError, "finite and non-negative"),
        (np.full(X.shape, np.nan), ValueError, "finite and non-negative"),
        (W0 @ H0 + 1j, TypeError, "real numbers"),
    ],
    ids=["negative", "NaN", "complex"],
)
def test_score_matching_checks_q_as_it_checks_w_and_h(bad, error, match):
    """A negative or complex Q was used silently (negatives floored at the smallest float,
    the imaginary part dropped) and a NaN Q answered 'narrow alphas/betas'."""
    with pytest.raises(error, match=match):
        choose_alpha_beta(X, Q=bad, refine=False)


def test_score_matching_takes_a_sparse_q_as_its_dense_form():
    """A sparse Q raised numpy's 'setting an array element with a sequence'."""
    Q = W0 @ H0
    sparse = choose_alpha_beta(X, Q=sp.csr_matrix(Q), refine=False)
    dense = choose_alpha_beta(X, Q=Q, refine=False)
    by_factors = choose_alpha_beta(X, W0, H0, refine=False)
    assert sparse.objective == dense.objective
    np.testing.assert_allclose(dense.objective, by_factors.objective, rtol=1e-12)


def test_score_matching_objective_refuses_unpaired_values():
    """p and q of different sizes raised numpy's IndexError ('boolean index did not
    match')."""
    with pytest.raises(ValueError, match="p has 2 entries and q 3"):
        score_matching_objective([1.0, 2.0], [1.0, 2.0, 3.0], 1.0, 1.0)


def test_tl_nmf_stores_converged_for_a_fit_that_settles_at_max_iter():
    """A classical fit that met its stopping rule at its last allowed iteration was stored
    as converged=False (and the command line printed 'not converged'), while the estimator
    did not warn."""
    counts = RNG.poisson(2, (20, 10)).astype(np.float32)
    n_iter = NMF(2, solver="hals", random_state=0).fit(counts).n_iter_
    adata = ad.AnnData(counts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the estimator's ConvergenceWarning would raise
        vbsnmf.tl.nmf(adata, 2, solver="hals", random_state=0, max_iter=n_iter)
    assert adata.uns["nmf"]["n_iter"] == n_iter
    assert adata.uns["nmf"]["converged"]
    # one iteration fewer: not settled, and the estimator warns as tl.nmf stores it
    adata = ad.AnnData(counts)
    with pytest.warns(vbsnmf.ConvergenceWarning):
        vbsnmf.tl.nmf(adata, 2, solver="hals", random_state=0, max_iter=n_iter - 1)
    assert not adata.uns["nmf"]["converged"]
