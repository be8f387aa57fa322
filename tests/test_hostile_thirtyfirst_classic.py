"""Thirty-first hostile pass over the classical solvers (`vbsnmf.classic`).

The stopping rule's floor taken from a start far off the data's scale (every solver stopped
after 3 or 4 iterations), NaN and infinite parameters of the public divergences, and the
advice for ``loss="l1"``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf.classic import NMF, factor_loss, losses
from vbsnmf.classic._data import ClassicData
from vbsnmf.classic._mu import converged


def _low_rank_counts(seed: int = 0) -> np.ndarray:
    """60 x 40 Poisson counts of a rank-3 mean."""
    rng = np.random.default_rng(seed)
    mean = rng.gamma(1.0, 1.0, (60, 3)) @ rng.gamma(1.0, 1.0, (3, 40)) * 3
    return rng.poisson(mean).astype(float)


def _converged_loss(X, **params) -> float:
    """The loss of the same fit run far past the default stop."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NMF(3, max_iter=1000, tol=1e-10, **params).fit(X).loss_


@pytest.mark.parametrize("solver", ["mu", "hals"])
def test_a_start_far_off_the_data_scale_runs_to_tol(solver):
    """nndsvda fills W and H with the data's mean, so on counts of ~1e4 its ``W H`` is ~1e8
    there and the start's loss 1e10 times the fitted one: the floor of the relative change
    (a fraction of the start's loss) read a 20-40 % change as settled, and the fit stopped
    after 4 iterations at 3.3 (MU) or 1.5 (HALS) times the converged loss, no warning."""
    X = _low_rank_counts() * 1e4
    params = {"loss": "frobenius", "solver": solver, "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # it converges: no ConvergenceWarning either
        fit = NMF(3, **params).fit(X)
    assert fit.n_iter_ > 10
    assert fit.loss_ <= 1.05 * _converged_loss(X, **params)
    trace = fit.loss_trace_
    assert abs(trace[-3] - trace[-2]) <= fit.tol * trace[-3]  # stopped by the documented rule


def test_a_custom_start_a_thousand_times_too_large_runs_to_tol():
    """The same through ``init="custom"``: a start 1000 times the right scale stopped after
    3 iterations at 4.4 times the loss the same start of the right scale reaches."""
    X = _low_rank_counts()
    rng = np.random.default_rng(1)
    W0, H0 = rng.random((60, 3)), rng.random((3, 40))
    fit = NMF(3, loss="frobenius", init="custom").fit(X, W=W0 * 1e3, H=H0 * 1e3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best = NMF(3, loss="frobenius", init="custom", max_iter=1000, tol=1e-10)
        best.fit(X, W=W0, H=H0)
    assert fit.n_iter_ > 10
    assert fit.loss_ <= 1.05 * best.loss_


def test_the_stopping_floor_is_the_smaller_of_the_start_and_the_data_scale():
    """`converged` with a ``scale``: a 10 % change far below the start's loss is not
    settled when the data's own scale is that of the loss (it was, by the start alone)."""
    trace = [1e20, 10.0, 9.0]
    assert converged(trace, 1e-4)  # the start's floor alone: the old rule
    assert not converged(trace, 1e-4, scale=10.0)
    assert converged([1e20, 10.0, 10.0], 1e-4, scale=10.0)
    assert converged(trace, 1e-4, scale=np.inf)  # no scale from the data: the start's


def test_an_exact_factorisation_still_stops_before_max_iter():
    """Guard (passes on both): the floor still stops a fit whose loss falls towards 0 (an
    exact rank-2 X), now from the smaller of the start's loss and the data's own scale."""
    rng = np.random.default_rng(2)
    X = rng.random((30, 2)) @ rng.random((2, 20))
    for solver in ("mu", "hals"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fit = NMF(2, loss="frobenius", solver=solver, random_state=0, max_iter=2000).fit(X)
        assert fit.n_iter_ < 2000
        assert fit.loss_ < 1e-6 * float(np.sum(X**2))


def _rank_one_loss(X, weights, loss, beta=None) -> float:
    """numpy's loss of ``Q = r c^T / T`` over the counted entries."""
    dense_weights = np.ones_like(X) if weights is None else weights
    if sp.issparse(dense_weights):
        dense_weights = dense_weights.toarray()
    counted = np.where(dense_weights > 0, X, 0.0)
    rows, cols = counted.sum(axis=1), counted.sum(axis=0)
    W = np.ones((X.shape[0], 1)) if loss == "poisson" else rows[:, None]
    return factor_loss(X, W, (cols / rows.sum())[None, :], loss, beta=beta, weights=weights)


@pytest.mark.parametrize("loss, beta", [("kl", None), ("poisson", None), ("beta", 0.5)])
@pytest.mark.parametrize("weights_form", ["none", "dense", "sparse"])
@pytest.mark.parametrize("sparse_x", [False, True])
def test_the_data_scale_is_the_rank_one_models_loss(loss, beta, weights_form, sparse_x):
    """The stopping rule's data scale (`independence_loss`) against numpy's loss of the
    model ``r_i c_j / T`` over the entries that count, in every layout."""
    from vbsnmf.classic._nmf import independence_loss  # new: imported here, not at collection

    rng = np.random.default_rng(3)
    X = rng.poisson(1.0, (12, 7)).astype(float)
    X[3] = 0.0
    weights = {
        "none": None,
        "dense": (rng.random(X.shape) > 0.3) * 1.5,
        "sparse": sp.csr_matrix((rng.random(X.shape) > 0.3) * 1.5),
    }[weights_form]
    spec = losses.resolve_loss(loss, beta=beta)
    data = ClassicData.build(sp.csr_matrix(X) if sparse_x else X, weights, spec)
    expected = _rank_one_loss(X, weights, loss, beta)
    assert independence_loss(data, spec) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda p, q: losses.ab_divergence(p, q, np.inf, 1.0), "alpha"),
        (lambda p, q: losses.ab_divergence(p, q, np.nan, 1.0), "alpha"),
        (lambda p, q: losses.ab_divergence(p, q, 1.0, np.nan), "beta"),
        (lambda p, q: losses.ab_divergence(p, q, 1.0, -np.inf), "beta"),
        (lambda p, q: losses.beta_divergence(p, q, np.nan), "beta"),
        (lambda p, q: losses.alpha_divergence(p, q, np.inf), "alpha"),
    ],
)
def test_a_non_finite_divergence_parameter_is_refused(call, name):
    """d(0, 1) read 0.0 under alpha = inf and inf ("undefined") under alpha = NaN, where
    `resolve_loss` refuses both."""
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        call(np.array([0.0, 2.0]), np.array([1.0, 1.0]))


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda p, q: losses.alpha_divergence(p, q, np.array([0.5, 2.0])), "alpha"),
        (lambda p, q: losses.beta_divergence(p, q, "0.5"), "beta"),
        (lambda p, q: losses.ab_divergence(p, q, 1.0, np.array([0.5, 2.0])), "beta"),
    ],
)
def test_a_divergence_parameter_that_is_not_a_number_is_named(call, name):
    """An array parameter ended in numpy's "truth value of an array is ambiguous" or
    "only 0-dimensional arrays can be converted", a string in a subtraction's TypeError."""
    with pytest.raises(TypeError, match=f"{name} must be a number"):
        call(np.array([0.0, 2.0]), np.array([1.0, 1.0]))


def test_finite_divergence_parameters_give_the_formula():
    """Guard (passes on both): the checked parameters still give ``d_AB`` by its formula,
    numpy scalars included."""
    p, q, a, b = 2.0, 1.0, np.float32(0.7), np.int64(1)
    s = float(a) + float(b)
    expected = (float(a) / s * p**s + float(b) / s * q**s - p ** float(a) * q**b) / (a * b)
    assert losses.ab_divergence(p, q, a, b) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("solver", ["mu", "hals", "als", "pg", "ipg", "gd"])
def test_the_l1_loss_is_refused_without_sending_the_user_to_another_solver(solver):
    """``loss="l1"`` with HALS advised ``solver='mu'``, whose message then refused it too:
    no solver fits l1, and the message now says so for each."""
    X = np.random.default_rng(4).poisson(1.0, (10, 6)).astype(float)
    with pytest.raises(ValueError, match="no solver") as caught:
        NMF(2, loss="l1", solver=solver).fit(X)
    assert "use solver=" not in str(caught.value)
    assert "factor_loss" in str(caught.value)


def _two_module_counts() -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.poisson(rng.gamma(1, 1, (50, 2)) @ rng.gamma(1, 1, (2, 30)) * 2).astype(float)


@pytest.mark.parametrize("solver", ["hals", "pg", "gd", "ipg"])
@pytest.mark.parametrize("epsilon", [0.0, 1e-3])
def test_a_module_masked_in_every_cell_has_no_fitted_profile(solver, epsilon):
    """A column of W masked for every cell: HALS, PG, GD and IPG left that module's row of
    ``components_`` at its nndsvda start (never fitted), and `transform` gave new cells
    usage of it; it is now at the bound, as MU and ALS leave it."""
    X = _two_module_counts()
    w_mask = np.ones((50, 3))
    w_mask[:, 2] = 0
    model = NMF(3, solver=solver, factor_mask={"W": w_mask}, epsilon=epsilon, random_state=0).fit(X)
    np.testing.assert_array_equal(model.components_[2], epsilon)
    if epsilon == 0:  # above 0 the profile is flat at the bound, which new cells may use
        np.testing.assert_array_equal(model.transform(X[:10])[:, 2], 0.0)


@pytest.mark.parametrize("solver", ["hals", "pg", "gd", "ipg"])
def test_a_module_masked_over_every_gene_has_no_usage(solver):
    """A row of H masked over every gene: its column of W kept the start (fit_transform) or
    the flat start (transform), usage of a module of no genes; now zero, as MU gives."""
    X = _two_module_counts()
    h_mask = np.ones((3, 30))
    h_mask[2] = 0
    model = NMF(3, solver=solver, factor_mask={"H": h_mask}, random_state=0)
    W = model.fit_transform(X)
    np.testing.assert_array_equal(W[:, 2], 0.0)
    np.testing.assert_array_equal(model.transform(X[:10])[:, 2], 0.0)


@pytest.mark.parametrize("solver", ["mu", "als"])
def test_masked_modules_under_mu_and_als_were_already_at_zero(solver):
    """Guard (passes on both): MU and ALS, the reference of the two tests above."""
    X = _two_module_counts()
    w_mask = np.ones((50, 3))
    w_mask[:, 2] = 0
    model = NMF(3, solver=solver, loss="frobenius", factor_mask={"W": w_mask}, random_state=0)
    model.fit(X)
    np.testing.assert_array_equal(model.components_[2], 0.0)
    np.testing.assert_array_equal(model.transform(X[:10])[:, 2], 0.0)


def test_a_module_zero_for_one_half_step_still_comes_back():
    """Guard (passes on both): a column of W clipped to zero by one HALS half-step from a
    start far off the data's scale is not an idle module (no mask holds it): its stale
    profile lets the next sweep bring it back, and the fit keeps all three modules (set to
    zero, two of the three died and the loss stayed 4 times as high)."""
    X = _low_rank_counts() * 1e4
    model = NMF(3, loss="frobenius", solver="hals", random_state=0).fit(X)
    assert np.all(model.components_.sum(axis=1) > 0)
