"""Thirty-third hostile pass over the classical solvers (`vbsnmf.classic`).

ALS's modules drifting in scale between W and H (and, under ``epsilon``, its loss rising
to several times the lowest it reached), a loss past the float range returned as NaN or
called undefined at a zero, the score-matching objective's lost digits near beta = 0, and
guards that pin every solver and loss against independent numpy formulas and
scikit-learn's `NMF`.
"""

from __future__ import annotations

import warnings

import mpmath  # a test dependency (pyproject.toml)
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF as SklearnNMF

from vbsnmf.classic import NMF, factor_loss, losses


def _counts(seed: int = 5, shape=(40, 25), mean: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(mean, shape).astype(float)


def _start(seed: int, shape, n_components: int):
    rng = np.random.default_rng(seed)
    W = rng.gamma(2.0, 1.0, (shape[0], n_components))
    H = rng.gamma(2.0, 1.0, (n_components, shape[1]))
    return W, H


def _fit(model: NMF, X, **kwargs) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit_transform(X, **kwargs)


# ---- ALS: the modules' scales ------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.0, 1e-9, 1e-3])
def test_als_keeps_each_module_scale_shared_between_w_and_h(epsilon):
    """ALS's least squares scale inversely with the fixed factor, so nothing held a
    module's scale: in 1000 iterations (tol=0) the norms of a row of H and its column of W
    came apart by factors of 1e-6 to 7e9, and under ``epsilon=1e-3`` the bound weighed
    ever more against the shrinking factor: the fit ended at 1.37 times the lowest loss of
    its own trace. Now each iteration shares the scale (`balance_modules`)."""
    X = _counts()
    model = NMF(4, solver="als", epsilon=epsilon, max_iter=1000, tol=0, random_state=0)
    W = _fit(model, X)
    H = model.components_
    ratios = np.linalg.norm(H, axis=1) / np.linalg.norm(W, axis=0)
    assert np.all((ratios > 1e-3) & (ratios < 1e3))
    assert model.loss_ <= 1.01 * model.loss_trace_.min()
    if epsilon > 0:
        assert W.min() >= epsilon and H.min() >= epsilon


def test_balance_modules_keeps_the_product_masks_and_bound():
    """The new helper (fails before the fix, which added it): the product is unchanged,
    masked (zero) entries stay zero, a module zero in one factor is left alone, entries at
    ``epsilon`` stay there and entries scaled below it are raised to it."""
    from vbsnmf.classic._solvers import balance_modules

    rng = np.random.default_rng(0)
    W = rng.gamma(2.0, 1.0, (6, 3)) * np.array([1e-6, 1.0, 1.0])
    H_t = rng.gamma(2.0, 1.0, (5, 3)) * np.array([1e6, 1.0, 0.0])
    W[0, 1] = 0.0  # masked
    balanced_W, balanced_H_t = balance_modules(W, H_t)
    np.testing.assert_allclose(balanced_W @ balanced_H_t.T, W @ H_t.T, rtol=1e-12)
    assert balanced_W[0, 1] == 0.0
    np.testing.assert_array_equal(balanced_W[:, 2], W[:, 2])  # H's column is zero
    norms = np.linalg.norm(balanced_W[:, :2], axis=0), np.linalg.norm(balanced_H_t[:, :2], axis=0)
    np.testing.assert_allclose(*norms, rtol=1e-12)
    W_bounded, H_t_bounded = W + 1e-3 * (W > 0), H_t + 1e-3 * (H_t > 0)
    W_bounded[1, 0] = H_t_bounded[1, 0] = 1e-3  # at the bound
    bounded_W, bounded_H_t = balance_modules(W_bounded, H_t_bounded, 1e-3)
    for factor, original in ((bounded_W, W), (bounded_H_t, H_t)):
        assert factor[original > 0].min() >= 1e-3
        assert np.all(factor[original == 0] == 0)
        assert factor[1, 0] == 1e-3  # left at the bound, where `thin` finds it


def test_als_thin_zeroes_the_entries_the_fit_left_at_the_bound():
    """Guard (passes before the fix too): the balancing leaves the entries at
    ``epsilon`` there, so ``thin`` zeroes exactly those (a balancing that scaled them off
    the bound let all 20 of W's escape thinning after 50 iterations)."""
    X = _counts()
    params = {"solver": "als", "epsilon": 1e-3, "max_iter": 50, "tol": 0, "random_state": 0}
    plain = NMF(4, **params)
    W_plain = _fit(plain, X)
    thinned = NMF(4, thin=True, **params)
    W_thinned = _fit(thinned, X)
    assert np.count_nonzero(W_plain == 1e-3) > 0
    np.testing.assert_array_equal(W_thinned == 0, W_plain == 1e-3)
    np.testing.assert_array_equal(thinned.components_ == 0, plain.components_ == 1e-3)


def test_als_with_a_factor_mask_keeps_masked_entries_at_zero():
    """Guard (passes before the fix too): the balancing keeps masked entries at zero and
    the others at the bound."""
    X = _counts()
    rng = np.random.default_rng(1)
    w_mask = (rng.random((40, 3)) < 0.8).astype(float)
    h_mask = (rng.random((3, 25)) < 0.8).astype(float)
    model = NMF(
        3,
        solver="als",
        epsilon=1e-3,
        factor_mask={"W": w_mask, "H": h_mask},
        max_iter=300,
        tol=0,
        random_state=0,
    )
    W = _fit(model, X)
    H = model.components_
    assert np.all(W[w_mask == 0] == 0) and np.all(H[h_mask == 0] == 0)
    assert W[w_mask > 0].min() >= 1e-3 and H[h_mask > 0].min() >= 1e-3
    np.testing.assert_allclose(model.loss_, factor_loss(X, W, H, loss="frobenius"), rtol=1e-10)


# ---- a loss past the float range -----------------------------------------------------------


def _huge_fit():
    rng = np.random.default_rng(0)
    X = rng.poisson(2, (20, 10)).astype(float) * 1e160
    W = rng.gamma(2.0, 1.0, (20, 2)) * 1e79
    H = rng.gamma(2.0, 1.0, (2, 10)) * 1e79
    return X, W, H


@pytest.mark.parametrize("layout", ["dense", "csr", "csc"])
@pytest.mark.parametrize(("loss", "params"), [("frobenius", {}), ("beta", {"beta": 2.0})])
def test_factor_loss_past_the_float_range_is_an_error_that_says_so(layout, loss, params):
    """Entries of 1e160 under a loss of power 2 or 3: the sparse Frobenius route returned
    NaN (with numpy's overflow warnings), and the other routes called the loss "undefined
    at some entries (a zero of X ... or a zero reconstruction)", of data without zeros
    where it matters. Now one ValueError that names the float range, and no warning."""
    X, W, H = _huge_fit()
    data = {"dense": X, "csr": sp.csr_matrix(X), "csc": sp.csc_matrix(X)}[layout]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="past the float range"):
            factor_loss(data, W, H, loss=loss, **params)


def test_total_divergence_past_the_float_range_says_so():
    """As `factor_loss`: not only "p = 0 or q = 0"."""
    X, W, H = _huge_fit()
    with pytest.raises(ValueError, match="past the float range"):
        losses.total_divergence(X, W @ H, "frobenius")


def test_a_fit_past_the_float_range_is_still_a_floating_point_error():
    """Guard (passes before the fix too): the fit's own overflow error is unchanged by the
    loss's new check, on sparse X under the Frobenius solvers."""
    X, _, _ = _huge_fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FloatingPointError, match="float range"):
            NMF(2, solver="hals", max_iter=5).fit(sp.csr_matrix(X))


# ---- score matching near beta = 0 ----------------------------------------------------------


def _objective_in_50_digits(p, q, alpha, beta) -> float:
    """The module's general formula for J, evaluated in 50 digits."""
    with mpmath.workdps(50):
        a, b = mpmath.mpf(alpha), mpmath.mpf(beta)
        total = mpmath.mpf(0)
        for p_value, q_value in zip(p, q):
            x, y = mpmath.mpf(float(p_value)), mpmath.mpf(float(q_value))
            inner = x**a * (x**b - y**b) ** 2 / (2 * b) - x**b * (a + b + 1) + y**b * (a + 1)
            total += x**a * inner / b
        return float(total / len(p))


@pytest.mark.parametrize("beta", [2e-10, 1e-8, -1e-7, 1e-6, 1e-4, 0.5, 2.0])
def test_score_matching_objective_is_accurate_near_beta_zero(beta):
    """``p**beta - q**beta`` cancelled near beta = 0 (KL, where the refinement looks): J's
    relative error grew as 1e-16 / beta, 4.7e-7 at beta = 2e-10 and 3.7e-8 at 1e-8. Now
    the difference goes through expm1 where it is small: ~1e-15 at every beta."""
    from vbsnmf.classic import score_matching_objective

    rng = np.random.default_rng(0)
    X = rng.poisson(2, (20, 10)).astype(float)
    Q = X + rng.uniform(0.1, 1.0, X.shape)
    positive = X > 0
    for alpha in (1.0, 0.5):
        expected = _objective_in_50_digits(X[positive], Q[positive], alpha, beta)
        value = score_matching_objective(X, Q, alpha, beta)
        np.testing.assert_allclose(value, expected, rtol=1e-12)


def test_score_matching_objective_where_q_underflows_stays_finite():
    """Guard (passes before the fix too): at q floored to the smallest float with beta =
    3, ``q**beta`` underflows and ``expm1(beta ln(p / q))`` would overflow; the direct
    difference is used there, and J keeps its finite value."""
    from vbsnmf.classic import score_matching_objective

    p = np.array([1.0, 2.0, 5.0])
    q = np.array([0.0, 2.5, 1e-320])
    np.testing.assert_allclose(score_matching_objective(p, q, 1.0, 3.0), 6888.399305555556)


# ---- guards: losses against independent formulas -----------------------------------------


def _sklearn_beta(p, q, beta_loss):
    """scikit-learn's beta-divergence, pointwise, by its textbook formula."""
    if beta_loss == 1:
        return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / q), 0.0) - p + q
    if beta_loss == 0:
        return p / q - np.log(p / q) - 1
    return (
        p**beta_loss + (beta_loss - 1) * q**beta_loss - beta_loss * p * q ** (beta_loss - 1)
    ) / (beta_loss * (beta_loss - 1))


@pytest.mark.parametrize("beta_loss", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, -0.5, 2.5])
def test_beta_divergence_is_scikit_learns_shifted_by_one(beta_loss):
    """Guard (passes before the fix too): ``beta`` here is scikit-learn's ``beta_loss``
    minus one, on counts with zeros (with ones added where the loss is undefined at 0)."""
    rng = np.random.default_rng(0)
    P = rng.poisson(1.0, (30, 20)).astype(float) + (0.5 if beta_loss <= 0 else 0.0)
    Q = rng.gamma(2.0, 1.0, (30, 20))
    value = losses.total_divergence(P, Q, "beta", beta=beta_loss - 1)
    np.testing.assert_allclose(value, _sklearn_beta(P, Q, beta_loss).sum(), rtol=1e-13)


def test_named_losses_match_their_textbook_formulas():
    """Guard (passes before the fix too)."""
    rng = np.random.default_rng(1)
    P = rng.poisson(1.0, (30, 20)).astype(float)
    Q = rng.gamma(2.0, 1.0, (30, 20))
    shifted = P + 0.3
    expected = {
        "frobenius": (P, ((P - Q) ** 2).sum()),
        "hellinger": (P, ((np.sqrt(P) - np.sqrt(Q)) ** 2).sum()),
        "pearson": (P, ((P - Q) ** 2 / Q).sum()),
        "neyman": (shifted, ((shifted - Q) ** 2 / shifted).sum()),
        "itakura-saito": (shifted, (shifted / Q - np.log(shifted / Q) - 1).sum()),
        "kl": (P, _sklearn_beta(P, Q, 1).sum()),
        "l1": (P, np.abs(P - Q).sum()),
    }
    for name, (data, value) in expected.items():
        np.testing.assert_allclose(losses.total_divergence(data, Q, name), value, rtol=1e-13)
    for alpha in (0.5, 2.0, -0.5):
        reference = (shifted**alpha * Q ** (1 - alpha) - alpha * shifted + (alpha - 1) * Q) / (
            alpha * (alpha - 1)
        )
        np.testing.assert_allclose(
            losses.total_divergence(shifted, Q, "alpha", alpha=alpha), reference.sum(), rtol=1e-13
        )


@pytest.mark.parametrize(
    ("loss", "params"),
    [
        ("kl", {}),
        ("frobenius", {}),
        ("hellinger", {}),
        ("pearson", {}),
        ("l1", {}),
        ("beta", {"beta": 0.5}),
        ("beta", {"beta": 2.0}),
        ("ab", {"alpha": 0.7, "beta": 0.6}),
        ("alpha", {"alpha": 2.0}),
    ],
)
def test_factor_loss_is_the_same_on_dense_csr_and_csc(loss, params):
    """Guard (passes before the fix too): the sparse evaluation (the zeros' part in
    closed form or row by row) equals the dense sum of the pointwise divergence."""
    rng = np.random.default_rng(2)
    X = rng.poisson(1.0, (30, 20)).astype(float)
    W, H = _start(3, X.shape, 3)
    dense = losses.total_divergence(X, W @ H, loss, **params)
    for data in (X, sp.csr_matrix(X), sp.csc_matrix(X)):
        np.testing.assert_allclose(factor_loss(data, W, H, loss=loss, **params), dense, rtol=1e-12)


# ---- guards: the solvers against scikit-learn and numpy ------------------------------------


@pytest.mark.parametrize(
    ("beta_loss", "params"),
    [
        (2.0, {"loss": "frobenius"}),
        (1.0, {"loss": "kl"}),
        (0.5, {"loss": "beta", "beta": -0.5}),
        (1.5, {"loss": "beta", "beta": 0.5}),
        (3.0, {"loss": "beta", "beta": 2.0}),
    ],
)
def test_mu_equals_scikit_learn_from_one_custom_start(beta_loss, params):
    """Guard (passes before the fix too): same start, same iterations (tol=0), dense and
    sparse X: the same factors and ``reconstruction_err_``."""
    X = _counts(0)
    W0, H0 = _start(0, X.shape, 4)
    reference = SklearnNMF(4, solver="mu", beta_loss=beta_loss, init="custom", max_iter=30, tol=0)
    W_reference = _fit(reference, X, W=W0.copy(), H=H0.copy())
    for data in (X, sp.csr_matrix(X)):
        model = NMF(4, solver="mu", init="custom", max_iter=30, tol=0, **params)
        W = _fit(model, data, W=W0.copy(), H=H0.copy())
        np.testing.assert_allclose(W, W_reference, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(model.components_, reference.components_, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(model.reconstruction_err_, reference.reconstruction_err_)


@pytest.mark.parametrize("init", ["random", "nndsvd", "nndsvda", "nndsvdar"])
def test_hals_equals_scikit_learn_cd_from_its_initialisations(init):
    """Guard (passes before the fix too): HALS is scikit-learn's coordinate descent without
    shuffling, and every ``init`` gives scikit-learn's start for one ``random_state``."""
    X = _counts(0)
    reference = SklearnNMF(
        4, solver="cd", init=init, max_iter=20, tol=0, random_state=3, shuffle=False
    )
    W_reference = _fit(reference, X)
    model = NMF(4, solver="hals", init=init, max_iter=20, tol=0, random_state=3)
    W = _fit(model, X)
    np.testing.assert_allclose(W, W_reference, rtol=1e-9, atol=1e-12)


def _als(R, XC, G):
    return np.maximum(XC @ np.linalg.pinv(G), 0.0)


def _pg(R, XC, G):
    return np.maximum(R - (R @ G - XC) / G.sum(axis=1), 0.0)


def _gd(R, XC, G):
    return np.maximum(R - (R @ G - XC) / np.linalg.eigvalsh(G)[-1], 0.0)


def _ipg(R, XC, G):
    gradient = R @ G - XC
    direction = -R / (R @ G) * gradient
    best = -(direction * gradient).sum(axis=1) / ((direction @ G) * direction).sum(axis=1)
    ratios = np.where(direction < 0, -R / np.where(direction < 0, direction, 1.0), np.inf)
    step = np.minimum(0.99 * ratios.min(axis=1), best)
    return np.maximum(R + step[:, None] * direction, 0.0)


@pytest.mark.parametrize(
    ("solver", "step"), [("pg", _pg), ("gd", _gd), ("ipg", _ipg), ("als", _als)]
)
def test_frobenius_solvers_equal_a_numpy_reference(solver, step):
    """Guard (passes before the fix too): each solver's iterations from a custom start,
    against the same steps written in numpy (one iteration for ALS, whose balancing
    between iterations changes the factors' scales, not their product)."""
    X = _counts(3, (30, 20), 1.5)
    W0, H0 = _start(3, X.shape, 3)
    n_iter = 1 if solver == "als" else 4
    W, H = W0.copy(), H0.copy()
    for _ in range(n_iter):
        W = step(W, X @ H.T, H @ H.T)
        H = step(H.T, X.T @ W, W.T @ W).T
    for data in (X, sp.csr_matrix(X)):
        model = NMF(3, solver=solver, init="custom", max_iter=n_iter, tol=0)
        W_fitted = _fit(model, data, W=W0.copy(), H=H0.copy())
        np.testing.assert_allclose(W_fitted @ model.components_, W @ H, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(model.loss_, ((X - W @ H) ** 2).sum(), rtol=1e-10)


@pytest.mark.parametrize(
    ("loss", "alpha", "beta", "params"),
    [
        ("kl", 1.0, 0.0, {}),
        ("frobenius", 1.0, 1.0, {}),
        ("hellinger", 0.5, 0.5, {}),
        ("ab", 0.7, 0.9, {"alpha": 0.7, "beta": 0.9}),
        ("ab", 2.0, -0.5, {"alpha": 2.0, "beta": -0.5}),
    ],
)
def test_weighted_mu_equals_a_numpy_reference(loss, alpha, beta, params):
    """Guard (passes before the fix too): the weighted AB update
    ``W * ((w X**a Q**(b-1)) H^T / (w Q**(a+b-1)) H^T) ** omega`` in numpy, dense and
    sparse X, weights above one and zero included."""
    rng = np.random.default_rng(2)
    X = rng.poisson(1.5, (30, 20)).astype(float)
    weights = rng.uniform(0.0, 2.0, X.shape)
    weights[rng.random(X.shape) < 0.3] = 0.0
    W, H = _start(2, X.shape, 3)
    start = W.copy(), H.copy()
    if beta / alpha < 1 / alpha - 1:
        exponent = 1 / (1 - beta)
    elif beta / alpha <= 1 / alpha:
        exponent = 1 / alpha
    else:
        exponent = 1 / (alpha + beta - 1)
    for _ in range(3):
        Q = W @ H
        W = (
            W
            * (
                ((weights * X**alpha * Q ** (beta - 1)) @ H.T)
                / ((weights * Q ** (alpha + beta - 1)) @ H.T)
            )
            ** exponent
        )
        Q = W @ H
        H = (
            H
            * (
                (W.T @ (weights * X**alpha * Q ** (beta - 1)))
                / (W.T @ (weights * Q ** (alpha + beta - 1)))
            )
            ** exponent
        )
    for data in (X, sp.csr_matrix(X)):
        model = NMF(3, loss=loss, init="custom", max_iter=3, tol=0, weights=weights, **params)
        W_fitted = _fit(model, data, W=start[0].copy(), H=start[1].copy())
        np.testing.assert_allclose(W_fitted, W, rtol=1e-12)
        np.testing.assert_allclose(model.components_, H, rtol=1e-12)
