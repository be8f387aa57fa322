"""Losses of vbsnmf.classic: direct formulas, limits, sparse evaluation, score matching."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import _kernels
from vbsnmf.classic import choose_alpha_beta, factor_loss, losses, score_matching_objective

RNG = np.random.default_rng(20261123)
P = RNG.uniform(0.1, 5.0, 400)
Q = RNG.uniform(0.1, 5.0, 400)


def _ab_reference(p, q, a, b):
    """Seed 000's case table of d_AB, written out per case."""
    if a != 0 and b != 0 and a + b != 0:
        return (a / (a + b) * p ** (a + b) + b / (a + b) * q ** (a + b) - p**a * q**b) / (a * b)
    if a != 0 and b == 0:
        return (p**a * np.log(p**a / q**a) - p**a + q**a) / a**2
    if a != 0 and a == -b:
        return (np.log(q**a / p**a) + (q**a / p**a) ** -1 - 1) / a**2
    if a == 0 and b != 0:
        return (q**b * np.log(q**b / p**b) - q**b + p**b) / b**2
    return 0.5 * (np.log(p) - np.log(q)) ** 2


DIRECT = {
    ("l1", None, None): lambda p, q: np.abs(p - q),
    ("frobenius", None, None): lambda p, q: (p - q) ** 2,
    ("kl", None, None): lambda p, q: p * np.log(p / q) - p + q,
    ("itakura-saito", None, None): lambda p, q: np.log(q / p) + p / q - 1,
    ("hellinger", None, None): lambda p, q: (np.sqrt(p) - np.sqrt(q)) ** 2,
    ("pearson", None, None): lambda p, q: (p - q) ** 2 / q,
    ("neyman", None, None): lambda p, q: (p - q) ** 2 / p,
    ("alpha", 0.5, None): lambda p, q: (np.sqrt(p * q) - 0.5 * p - 0.5 * q) / -0.25,
    ("alpha", 2.0, None): lambda p, q: (p**2 / q - 2 * p + q) / 2,
    ("alpha", 1.0, None): lambda p, q: p * np.log(p / q) - p + q,
    ("alpha", 0.0, None): lambda p, q: q * np.log(q / p) - q + p,
    ("beta", None, 1.0): lambda p, q: 0.5 * (p - q) ** 2,
    ("beta", None, 0.5): lambda p, q: (p**1.5 - q**1.5 - 1.5 * q**0.5 * (p - q)) / 0.75,
    ("beta", None, 0.0): lambda p, q: p * np.log(p / q) - p + q,
    ("beta", None, -1.0): lambda p, q: np.log(q / p) + p / q - 1,
}
AB_PAIRS = [(0.5, 0.7), (-0.5, 1.2), (1.0, 0.0), (2.0, 0.0), (0.7, -0.7), (0.0, 1.5), (0.0, 0.0)]


@pytest.mark.parametrize("key", list(DIRECT), ids=lambda key: f"{key[0]}-{key[1]}-{key[2]}")
def test_named_loss_matches_direct_formula(key):
    loss, alpha, beta = key
    np.testing.assert_allclose(
        losses.divergence(P, Q, loss, alpha, beta), DIRECT[key](P, Q), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("pair", AB_PAIRS)
def test_ab_divergence_matches_case_table_numpy_and_numba(pair):
    a, b = pair
    reference = _ab_reference(P, Q, a, b)
    np.testing.assert_allclose(losses.ab_divergence(P, Q, a, b), reference, rtol=1e-9, atol=1e-12)
    scalar = [_kernels.ab_divergence_scalar(p, q, a, b) for p, q in zip(P[:50], Q[:50])]
    np.testing.assert_allclose(scalar, reference[:50], rtol=1e-9, atol=1e-12)


def test_ab_family_contains_the_named_losses():
    np.testing.assert_allclose(losses.ab_divergence(P, Q, 1, 1), 0.5 * (P - Q) ** 2, rtol=1e-10)
    np.testing.assert_allclose(
        losses.ab_divergence(P, Q, 1, -1), DIRECT[("itakura-saito",) + (None,) * 2](P, Q), rtol=1e-9
    )
    for a in (0.3, 1.7, -0.4):
        np.testing.assert_allclose(
            losses.alpha_divergence(P, Q, a), losses.ab_divergence(P, Q, a, 1 - a), rtol=1e-10
        )


@pytest.mark.parametrize(
    ("limit", "near"),
    [
        ((1.0, 0.0), lambda d: (1.0, d)),  # beta -> 0
        ((1.5, 0.0), lambda d: (1.5, -d)),
        ((0.0, 1.3), lambda d: (d, 1.3)),  # alpha -> 0
        ((0.8, -0.8), lambda d: (0.8 + d, -0.8)),  # alpha + beta -> 0
        ((0.0, 0.0), lambda d: (d, 2 * d)),  # alpha, beta -> 0
    ],
)
def test_ab_divergence_is_continuous_at_limits(limit, near):
    at_limit = losses.ab_divergence(P, Q, *limit)
    errors = [np.max(np.abs(losses.ab_divergence(P, Q, *near(d)) - at_limit)) for d in (1e-3, 1e-5)]
    assert errors[1] < 1e-3 * np.max(at_limit)
    assert errors[1] < errors[0] / 10  # the gap closes like delta


@pytest.mark.parametrize(
    ("family", "value", "limit_fn"),
    [
        (losses.alpha_divergence, 1.0, losses.kullback_leibler),
        (losses.alpha_divergence, 0.0, lambda p, q: losses.kullback_leibler(q, p)),
        (losses.beta_divergence, 0.0, losses.kullback_leibler),
        (losses.beta_divergence, -1.0, losses.itakura_saito),
    ],
)
def test_alpha_beta_families_continuous_at_their_limits(family, value, limit_fn):
    exact = limit_fn(P, Q)
    for delta in (1e-4, -1e-4):
        np.testing.assert_allclose(family(P, Q, value + delta), exact, rtol=2e-3, atol=1e-6)


# Paths to every limit of d_AB: (the limit pair, the pair at distance delta from it).
AB_LIMIT_PATHS = [
    ((0.0, 1.3), lambda d: (d, 1.3)),  # alpha -> 0
    ((0.0, -0.7), lambda d: (d, -0.7)),
    ((1.0, 0.0), lambda d: (1.0, d)),  # beta -> 0
    ((-0.5, 0.0), lambda d: (-0.5, d)),
    ((0.8, -0.8), lambda d: (0.8 + d, -0.8)),  # alpha + beta -> 0
    ((-1.2, 1.2), lambda d: (-1.2, 1.2 + d)),
    ((0.0, 0.0), lambda d: (d, 2 * d)),  # both -> 0
    ((0.0, 0.0), lambda d: (d, -3 * d)),
    ((0.0, 0.0), lambda d: (0.0, d)),
    ((0.0, 0.0), lambda d: (d, 0.0)),
]
LIMIT_IDS = [f"{limit}-{near(1)}" for limit, near in AB_LIMIT_PATHS]
NEAR_DELTAS = (1e-15, -1e-15, 1e-12, -1e-12, 1e-9, -1e-9, 1e-6, -1e-6)


@pytest.mark.parametrize(("limit", "near"), AB_LIMIT_PATHS, ids=LIMIT_IDS)
def test_ab_divergence_close_to_its_limit_within_distance(limit, near):
    # d_AB is smooth in (alpha, beta): at distance delta from a limit it differs from the
    # limit's value by O(delta), about 5 delta relative on P, Q. The general formula divided
    # by alpha beta (alpha + beta) lost every digit here. (The limit values themselves are
    # checked against the case table above and against high precision below.)
    at_limit = losses.ab_divergence(P, Q, *limit)
    for delta in NEAR_DELTAS:
        np.testing.assert_allclose(
            losses.ab_divergence(P, Q, *near(delta)),
            at_limit,
            rtol=20 * abs(delta) + 1e-13,
            err_msg=f"delta={delta}",
        )


def test_ab_divergence_non_negative_and_finite_near_the_limits():
    values = np.array([1e-8, 1e-3, 0.37, 1.0, 1.0 + 1e-9, 1.0 + 1e-4, 3.0, 52.0, 1e4])
    p, q = (grid.ravel() for grid in np.meshgrid(values, values))
    for _, near in AB_LIMIT_PATHS:
        for delta in (*NEAR_DELTAS, 1e-3, -1e-3):
            a, b = near(delta)
            value = losses.ab_divergence(p, q, a, b)
            assert np.all(np.isfinite(value)), (a, b)
            assert np.all(value >= 0), (a, b, p[value < 0], q[value < 0])
            assert np.all(value[p == q] == 0), (a, b)


@pytest.mark.parametrize(("limit", "near"), AB_LIMIT_PATHS, ids=LIMIT_IDS)
def test_ab_divergence_numba_kernel_agrees_near_the_limits(limit, near):
    at_limit = losses.ab_divergence(P[:60], Q[:60], *limit)
    for delta in (0.0, 1e-12, -1e-9, 1e-6):
        a, b = near(delta)
        scalar = np.array([_kernels.ab_divergence_scalar(p, q, a, b) for p, q in zip(P, Q)])
        # Same formula entry by entry: equal to rounding.
        np.testing.assert_allclose(scalar, losses.ab_divergence(P, Q, a, b), rtol=1e-13)
        np.testing.assert_allclose(scalar[:60], at_limit, rtol=20 * abs(delta) + 1e-13)
    # The solver kernels pass counts stored as float32: still evaluated in float64.
    counts = np.ceil(P[:20] * 3)
    as_float32 = [_kernels.ab_divergence_scalar(np.float32(x), y, a, b) for x, y in zip(counts, Q)]
    as_float64 = [_kernels.ab_divergence_scalar(x, y, a, b) for x, y in zip(counts, Q)]
    # Float32 arithmetic would part by ~1e-8. The two compiled variants can differ in the
    # last bit: seen with one Numba cache (cause not found), never with a fresh one.
    np.testing.assert_allclose(as_float32, as_float64, rtol=1e-15, atol=0)


def test_ab_divergence_matches_high_precision_near_the_limits():
    import mpmath  # a test dependency (pyproject's dev extra): the independent reference

    mpmath.mp.dps = 80

    def exact(p, q, a, b):  # the general formula, cancellation absorbed by 80 digits
        p, q, a, b = (mpmath.mpf(float(v)) for v in (p, q, a, b))
        s = a + b
        return float((a / s * p**s + b / s * q**s - p**a * q**b) / (a * b))

    values = [1e-6, 0.02, 0.9, 1.0 + 2e-7, 1.7, 40.0, 3e4]
    pairs = [(p, q) for p in values for q in values if p != q]
    for _, near in AB_LIMIT_PATHS:
        for delta in (1e-13, -1e-10, 1e-7, -1e-4, 0.03):
            a, b = near(delta)
            if a == 0 or b == 0:
                continue  # the exact general formula needs a, b, a + b nonzero
            p, q = np.array(pairs).T
            reference = np.array([exact(x, y, a, b) for x, y in pairs])
            np.testing.assert_allclose(
                losses.ab_divergence(p, q, a, b), reference, rtol=5e-14, err_msg=f"{a}, {b}"
            )


def test_ab_nmf_near_the_log_limit_reports_the_log_loss():
    # alpha = 1e-12, beta = 0 is the log loss 0.5 (ln p - ln q)**2 up to O(1e-12): the
    # trace and the final loss must say so (they were 0, from the cancelling formula).
    X = np.random.default_rng(0).poisson(3.0, (20, 10)) + 1.0
    model = vbsnmf.NMF(2, loss="ab", alpha=1e-12, beta=0.0, random_state=0)
    W = model.fit_transform(X)
    log_loss = losses.ab_divergence(X, W @ model.components_, 0.0, 0.0).sum()
    assert model.reconstruction_err_ > 0
    np.testing.assert_allclose(model.loss_trace_[-1], log_loss, rtol=1e-9)
    nearby = vbsnmf.NMF(2, loss="ab", alpha=1e-9, beta=0.0, random_state=0).fit(X)
    n = min(len(model.loss_trace_), len(nearby.loss_trace_))
    np.testing.assert_allclose(model.loss_trace_[:n], nearby.loss_trace_[:n], rtol=1e-7)
    assert np.all(np.diff(model.loss_trace_) <= 1e-9 * log_loss)  # never increases


@pytest.mark.parametrize("key", list(DIRECT), ids=lambda key: f"{key[0]}-{key[1]}-{key[2]}")
def test_zero_exactly_when_equal(key):
    loss, alpha, beta = key
    assert np.all(losses.divergence(P, P, loss, alpha, beta) == pytest.approx(0, abs=1e-12))
    assert np.all(losses.divergence(P, P * 1.2, loss, alpha, beta) > 0)


SPARSE_CASES = [
    ("kl", None, None),
    ("frobenius", None, None),
    ("l1", None, None),
    ("hellinger", None, None),
    ("pearson", None, None),
    ("poisson", None, None),
    ("beta", None, 0.5),  # zeros' power 1.5: the row-pass kernel
    ("beta", None, 1.0),
    ("alpha", 2.5, None),
    ("ab", 0.5, 0.7),
    ("ab", 1.5, -0.3),
]


def _small_problem(seed=0, n=23, m=17, k=3, density=0.3):
    rng = np.random.default_rng(seed)
    X = sp.random(n, m, density=density, random_state=seed, format="csr") * 7
    W = rng.uniform(0.05, 1.0, (n, k))
    H = rng.uniform(0.05, 1.0, (k, m))
    return X, W, H


@pytest.mark.parametrize("case", SPARSE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_sparse_evaluation_equals_dense(case):
    loss, alpha, beta = case
    X, W, H = _small_problem()
    dense_X = X.toarray()
    Q = W @ H
    if loss == "poisson":
        Q = dense_X.sum(axis=1, keepdims=True) * Q
        reference = np.sum(losses.kullback_leibler(dense_X, Q))
    else:
        reference = np.sum(losses.divergence(dense_X, Q, loss, alpha, beta))
    assert factor_loss(X, W, H, loss, alpha, beta) == pytest.approx(reference, rel=1e-10)
    assert factor_loss(dense_X, W, H, loss, alpha, beta) == pytest.approx(reference, rel=1e-10)


@pytest.mark.parametrize("case", [("kl", None, None), ("ab", 0.5, 0.7), ("frobenius", None, None)])
def test_weighted_evaluation_dense_and_sparse_masks(case):
    loss, alpha, beta = case
    X, W, H = _small_problem(seed=1)
    dense_X = X.toarray()
    rng = np.random.default_rng(3)
    mask = (rng.random(X.shape) > 0.2).astype(float)
    pointwise = losses.divergence(dense_X, W @ H, loss, alpha, beta)
    reference = float(np.sum(mask * pointwise))
    for data in (X, dense_X):
        assert factor_loss(data, W, H, loss, alpha, beta, weights=mask) == pytest.approx(
            reference, rel=1e-10
        )
    # a sparse mask counts only its stored entries
    sparse_mask = sp.csr_matrix(mask * (rng.random(X.shape) > 0.5))
    expected = float(np.sum(sparse_mask.toarray() * pointwise))
    assert factor_loss(X, W, H, loss, alpha, beta, weights=sparse_mask) == pytest.approx(
        expected, rel=1e-10
    )


@pytest.mark.parametrize(
    "case",
    [
        ("itakura-saito", None, None),
        ("neyman", None, None),
        ("alpha", -0.5, None),
        ("ab", 0.5, -0.5),
    ],
)
def test_loss_undefined_at_zeros_raises(case):
    loss, alpha, beta = case
    X, W, H = _small_problem()
    with pytest.raises(ValueError, match="undefined"):
        factor_loss(X, W, H, loss, alpha, beta)
    # on positive data the same loss is fine and matches the direct sum
    positive = X.toarray() + 0.5
    expected = np.sum(losses.divergence(positive, W @ H, loss, alpha, beta))
    assert factor_loss(positive, W, H, loss, alpha, beta) == pytest.approx(expected, rel=1e-10)
    # a sparse mask that avoids the zeros makes the loss defined on sparse data
    mask = X.copy()
    mask.data[:] = 1.0
    expected = np.sum(losses.divergence(X.data, (W @ H)[X.nonzero()], loss, alpha, beta))
    assert factor_loss(X, W, H, loss, alpha, beta, weights=mask) == pytest.approx(
        expected, rel=1e-10
    )


def test_loss_argument_errors():
    X, W, H = _small_problem()
    with pytest.raises(ValueError, match="unknown loss"):
        factor_loss(X, W, H, "cosine")
    with pytest.raises(ValueError, match="needs beta"):
        factor_loss(X, W, H, "beta")
    with pytest.raises(ValueError, match="no meaning"):
        factor_loss(X, W, H, "kl", alpha=1.0)
    with pytest.raises(ValueError, match="do not factor"):
        factor_loss(X, W[:-1], H, "kl")
    with pytest.raises(ValueError, match=r"(?i)negative"):
        factor_loss(-X.toarray(), W, H, "kl")


# ---- score matching -------------------------------------------------------------------


def _score_matching_reference(p, q, a, b, h=1e-5):
    """Hyvarinen's non-negative score matching, sum 2 p psi + p^2 psi' + p^2 psi^2 / 2,
    with psi = -d/dp d_AB(p, q) by central finite differences."""

    def psi(x):
        return -(losses.ab_divergence(x + h, q, a, b) - losses.ab_divergence(x - h, q, a, b)) / (
            2 * h
        )

    dpsi = (psi(p + 1e-3) - psi(p - 1e-3)) / 2e-3
    return np.mean(2 * p * psi(p) + p**2 * dpsi + 0.5 * p**2 * psi(p) ** 2)


@pytest.mark.parametrize("pair", [(1.0, 0.5), (0.5, -0.4), (-0.5, 0.75), (1.0, 0.0), (2.0, 0.0)])
def test_score_matching_objective_matches_finite_differences(pair):
    p, q = P[:60] + 1.0, Q[:60] + 1.0
    expected = _score_matching_reference(p, q, *pair)
    assert score_matching_objective(p, q, *pair) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_score_matching_objective_continuous_in_beta():
    at_zero = score_matching_objective(P, Q, 0.7, 0.0)
    assert score_matching_objective(P, Q, 0.7, 1e-6) == pytest.approx(at_zero, rel=1e-4)


def test_score_matching_recovers_noise_model():
    """Poisson counts lie in the KL region (alpha + beta = 1), Gaussian noise of unit
    variance in the Frobenius region (alpha + beta = 2): near a large mean d_AB is
    ``q**(alpha+beta-2) (p-q)^2 / 2``, so alpha + beta fixes the variance law."""
    rng = np.random.default_rng(7)
    W = rng.gamma(2.0, 1.0, (150, 3))
    H = rng.gamma(2.0, 1.0, (3, 80))
    scale = 40.0 / np.mean(W @ H)
    W *= scale
    Q = W @ H
    poisson = rng.poisson(Q).astype(float)
    gaussian = Q + rng.standard_normal(Q.shape)
    found_poisson = choose_alpha_beta(sp.csr_matrix(poisson), W, H)
    found_gaussian = choose_alpha_beta(gaussian, Q=Q)
    assert abs(found_poisson.alpha + found_poisson.beta - 1.0) < 0.15
    assert abs(found_gaussian.alpha + found_gaussian.beta - 2.0) < 0.15
    grid = found_poisson.surface
    alphas, betas = list(found_poisson.alphas), list(found_poisson.betas)
    kl, frobenius = (alphas.index(1.0), betas.index(0.0)), (alphas.index(1.0), betas.index(1.0))
    assert grid[kl] < grid[frobenius]
    assert found_gaussian.surface[frobenius] < found_gaussian.surface[kl]
    assert found_poisson.objective <= grid.min() + 1e-12
