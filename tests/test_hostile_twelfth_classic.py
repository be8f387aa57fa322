"""A twelfth hostile pass on `vbsnmf.classic`: each test here failed on the code before its
fix.

- ``loss="ab"`` with alpha = beta = 1e-200: ``alpha (alpha + beta)`` underflows to 0 and a
  raw numba ``SystemError`` or ``ZeroDivisionError`` escaped; such parameters are refused.
- `NMF` had no ``inverse_transform``.
- HALS with a factor mask or an epsilon floor applied them after the whole sweep: later
  columns were fitted against values then discarded, and the loss rose.
- The loss on dense X floored ``W H`` at every entry, also at X's zeros: it disagreed with
  the same X given sparse, and with the exact value.
- Dense weights above 1 on a sparse X were dropped from the loss (the exclusion list's
  ``1 - w`` is negative there).
- `losses.total_divergence` took negative or NaN P as "p = 0 or q = 0", broadcast P and Q
  of different shapes, and failed on a sparse P with numpy's words.
- ``loss="poisson"`` with epsilon returned factors below epsilon, and ``thin=True`` zeroed
  entries that were never at the bound.
- ``epsilon=1e300`` was accepted and the overflow it caused was blamed on X.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import NotFittedError

from vbsnmf.classic import NMF, factor_loss, losses

pytestmark = [pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")]


def _counts(n_rows: int = 20, n_cols: int = 15, seed: int = 0) -> sp.csr_matrix:
    """A small sparse count matrix with no empty row or column."""
    X = sp.random(n_rows, n_cols, density=0.3, random_state=seed, format="lil") * 10
    X = sp.lil_matrix(np.ceil(X.toarray()))
    for i in range(n_rows):
        X[i, i % n_cols] += 1.0
    for j in range(n_cols):
        X[j % n_rows, j] += 1.0
    return sp.csr_matrix(X)


def _kl_plain(X: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Generalised Kullback-Leibler ``x ln(x / q) - x + q`` entry by entry (``q`` at x = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(X > 0, X * np.log(X / Q) - X + Q, Q)


# ---- 1: AB parameters whose divisors underflow -------------------------------------------


def test_ab_parameters_whose_products_underflow_are_refused_by_name():
    """alpha = beta = 1e-200 are valid numbers, but ``alpha (alpha + beta)`` = 2e-400 is 0
    in float64 and the loss divides by it: a raw ``SystemError`` (numba) or
    ``ZeroDivisionError`` escaped from `losses.ab_divergence`, `factor_loss` and
    `NMF.fit`. Each now raises a ValueError naming alpha and beta."""
    X = _counts()
    for call in (
        lambda: losses.ab_divergence(np.array([0.0, 1.0]), np.array([1.0, 2.0]), 1e-200, 1e-200),
        lambda: factor_loss(X, np.ones((20, 1)), np.ones((1, 15)), "ab", 1e-200, 1e-200),
        lambda: NMF(2, loss="ab", alpha=1e-200, beta=1e-200, max_iter=3).fit(X),
        lambda: losses.alpha_divergence(np.array([0.0]), np.array([1.0]), 1e-310),
    ):
        with pytest.raises(ValueError, match=r"alpha=.*beta=.*underflows"):
            call()


def test_small_but_normal_ab_parameters_keep_the_closed_form():
    """Parameters whose products stay normal floats are not refused:
    ``d_AB(0, q) = q**s / (alpha s)`` with alpha = beta = 1e-100 is ``2**2e-100 / 2e-200``,
    5e199 to the last digits."""
    value = losses.ab_divergence(0.0, 2.0, 1e-100, 1e-100)
    assert value == pytest.approx(1.0 / 2e-200, rel=1e-14)


# ---- 2: inverse_transform ------------------------------------------------------------------


def test_inverse_transform_is_w_times_components_with_sklearn_checks():
    """scikit-learn's NMF has ``inverse_transform(W) = W @ components_``; vbsnmf's had none
    (AttributeError). It now has it, with the checks of scikit-learn's: fitted, 2-D,
    finite, ``n_components_`` columns."""
    X = _counts().toarray()
    model = NMF(3, random_state=0, max_iter=20)
    with pytest.raises(NotFittedError):
        model.inverse_transform(np.ones((2, 3)))
    W = model.fit_transform(X)
    np.testing.assert_array_equal(model.inverse_transform(W), W @ model.components_)
    from_sparse = model.inverse_transform(sp.csr_matrix(W))
    np.testing.assert_allclose(from_sparse, W @ model.components_, rtol=1e-14)
    with pytest.raises(ValueError, match="3 components"):
        model.inverse_transform(np.ones((2, 4)))
    with pytest.raises(ValueError):
        model.inverse_transform(np.ones(3))
    with pytest.raises(ValueError):
        model.inverse_transform(np.full((2, 3), np.nan))


# ---- 3: HALS under a mask or an epsilon floor --------------------------------------------


def _hals_reference(X, W, H, epsilon, w_mask, h_mask, n_iter):
    """Plain HALS, each column the exact minimiser over ``[epsilon, inf)`` (0 where
    masked) given the others, W then H; the loss before each iteration and at the end."""

    def sweep(R, XC, G, mask):
        R = R.copy()
        for k in range(R.shape[1]):
            column = R[:, k] + (XC[:, k] - R @ G[:, k]) / G[k, k]
            R[:, k] = np.maximum(column, epsilon) * mask[:, k]
        return R

    trace = []
    for _ in range(n_iter):
        trace.append(float(np.sum((X - W @ H) ** 2)))
        W = sweep(W, X @ H.T, H @ H.T, w_mask)
        H = sweep(H.T, X.T @ W, W.T @ W, h_mask.T).T
    trace.append(float(np.sum((X - W @ H) ** 2)))
    return W, H, np.array(trace)


@pytest.mark.parametrize("masked, epsilon", [(True, 0.0), (False, 0.05), (True, 0.05)])
def test_hals_is_coordinate_descent_on_the_constrained_problem(masked, epsilon):
    """HALS updated every column unconstrained and only then zeroed masked entries and
    raised the others to epsilon: the later columns had been fitted against values then
    thrown away, and the loss rose (1e-4 relative with a mask). Each column's update now
    applies both: the result is the plain constrained coordinate descent, and the loss
    never increases."""
    X = _counts(40, 30).toarray()
    rng = np.random.default_rng(1)
    ones_w, ones_h = np.ones((40, 3)), np.ones((3, 30))
    w_mask = (rng.uniform(size=(40, 3)) > 0.3).astype(float) if masked else ones_w
    h_mask = (rng.uniform(size=(3, 30)) > 0.3).astype(float) if masked else ones_h
    W0 = np.maximum(rng.uniform(0.1, 1.0, (40, 3)), epsilon) * w_mask
    H0 = np.maximum(rng.uniform(0.1, 1.0, (3, 30)), epsilon) * h_mask
    factor_mask = {"W": w_mask, "H": h_mask} if masked else None
    model = NMF(3, solver="hals", init="custom", epsilon=epsilon, factor_mask=factor_mask,
                max_iter=40, tol=0)  # fmt: skip
    W = model.fit_transform(sp.csr_matrix(X), W=W0, H=H0)
    W_ref, H_ref, trace_ref = _hals_reference(X, W0, H0, epsilon, w_mask, h_mask, 40)
    np.testing.assert_allclose(W, W_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.components_, H_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.loss_trace_, trace_ref, rtol=1e-9)
    trace = model.loss_trace_
    assert np.all(np.diff(trace) <= 1e-12 * trace[:-1])


# ---- 4: the loss floors W H at the nonzeros of X only ------------------------------------


@pytest.mark.parametrize(
    "loss, params, exact",
    [
        ("kl", {}, lambda q: q),  # d(0, q) = q
        ("beta", {"beta": -0.5}, lambda q: 2.0 * np.sqrt(q)),  # q**0.5 / 0.5
    ],
)
def test_dense_loss_is_exact_at_tiny_reconstructions_of_zeros(loss, params, exact):
    """On dense X the loss floored ``W H`` at float32's eps (1.2e-7) over every entry, also
    at X's zeros where ``d(0, q)`` is finite: with q = 1e-14 there the KL loss was 2.4e-7
    for an exact 1e-12, and unlike the sparse route's. The floor now applies at the
    nonzeros only, on both routes and in `NMF`'s trace."""
    X = np.array([[0.0, 2.0, 0.0, 1.0]])
    W = np.array([[1.0]])
    H = np.array([[1e-14, 2.0, 1e-12, 1.0]])  # W H = X except tiny q at X's zeros
    truth = float(exact(1e-14) + exact(1e-12))
    dense = factor_loss(X, W, H, loss, **params)
    sparse = factor_loss(sp.csr_matrix(X), W, H, loss, **params)
    assert dense == pytest.approx(truth, rel=1e-9)
    assert sparse == pytest.approx(truth, rel=1e-9)
    model = NMF(1, loss=loss, init="custom", max_iter=1, tol=0, **params)
    model.fit(X, W=W, H=H)
    assert model.loss_trace_[0] == pytest.approx(truth, rel=1e-9)


def test_dense_and_sparse_fits_report_the_same_loss():
    """The same X given dense and sparse now has one ``loss_`` (it differed by the floor at
    the zeros), equal to the plain numpy KL of the returned factors."""
    X = _counts()
    W0 = np.random.default_rng(0).uniform(0.1, 1.0, (20, 3))
    H0 = np.random.default_rng(1).uniform(0.1, 1.0, (3, 15))
    fitted = {}
    for label, data in (("dense", X.toarray()), ("sparse", X)):
        model = NMF(3, loss="kl", init="custom", max_iter=30, tol=0)
        W = model.fit_transform(data, W=W0, H=H0)
        fitted[label] = (model.loss_, float(np.sum(_kl_plain(X.toarray(), W @ model.components_))))
    assert fitted["dense"][0] == pytest.approx(fitted["dense"][1], rel=1e-10)
    assert fitted["sparse"][0] == pytest.approx(fitted["sparse"][1], rel=1e-10)
    assert fitted["dense"][0] == pytest.approx(fitted["sparse"][0], rel=1e-9)


# ---- 5: real weights on sparse X -----------------------------------------------------------


def test_weights_above_one_count_on_sparse_x():
    """Dense weights > 1 on a sparse X were stored as ``1 - w < 0`` in the exclusion list,
    which the loss dropped: the loss was the unweighted one (half the truth at w = 2).
    Any non-negative weights now give ``sum w d(x, q)`` on both routes, as plain numpy."""
    X = _counts()
    rng = np.random.default_rng(0)
    W = rng.uniform(0.1, 1.1, (20, 3))
    H = rng.uniform(0.1, 1.1, (3, 15))
    weights = rng.uniform(0.0, 3.0, X.shape)
    weights[rng.uniform(size=X.shape) < 0.2] = 0.0
    weights[rng.uniform(size=X.shape) < 0.2] = 1.0
    plain = float(np.sum(weights * _kl_plain(X.toarray(), W @ H)))
    assert factor_loss(X.toarray(), W, H, "kl", weights=weights) == pytest.approx(plain, rel=1e-10)
    assert factor_loss(X, W, H, "kl", weights=weights) == pytest.approx(plain, rel=1e-10)
    losses_ = {}
    for label, data in (("dense", X.toarray()), ("sparse", X)):
        model = NMF(3, init="custom", loss="kl", weights=weights, epsilon=1e-9, thin=True,
                    max_iter=5, tol=0)  # fmt: skip
        W_fit = model.fit_transform(data, W=W, H=H)
        expected = np.sum(weights * _kl_plain(X.toarray(), W_fit @ model.components_))
        assert model.loss_ == pytest.approx(expected, rel=1e-9)
        losses_[label] = model.loss_
    assert losses_["dense"] == pytest.approx(losses_["sparse"], rel=1e-9)


# ---- 6: total_divergence's input -----------------------------------------------------------


def test_total_divergence_checks_its_input():
    """`losses.total_divergence` blamed negative and NaN P on "p = 0 or q = 0", summed P
    (3, 1) and Q (3, 4) by broadcasting, and failed on a sparse P with numpy's "setting an
    array element with a sequence". Each now has its own error; valid input keeps its
    value."""
    P, Q = np.array([[1.0, 2.0]]), np.array([[1.5, 2.0]])
    assert losses.total_divergence(P, Q, "frobenius") == pytest.approx(0.25, rel=1e-15)
    with pytest.raises(ValueError, match="negative"):
        losses.total_divergence(np.array([[-1.0, 2.0]]), Q, "frobenius")
    with pytest.raises(ValueError, match="NaN"):
        losses.total_divergence(np.array([[np.nan, 2.0]]), Q, "kl")
    with pytest.raises(ValueError, match="negative"):
        losses.total_divergence(P, np.array([[1.0, -2.0]]), "kl")
    with pytest.raises(ValueError, match="shape"):
        losses.total_divergence(np.ones((3, 1)), np.full((3, 4), 2.0), "frobenius")
    with pytest.raises(TypeError, match="toarray"):
        losses.total_divergence(sp.csr_matrix(P), Q, "kl")


# ---- 7: Poisson's factors keep the epsilon bound ------------------------------------------


def test_poisson_factors_keep_the_epsilon_bound_and_thin_zeroes_only_those_at_it():
    """With ``loss="poisson"`` the module normalisation after the epsilon step divided H's
    rows, and W was then divided by the row totals: W came back with entries of 1e-5 for
    epsilon = 1e-3, and ``thin=True`` zeroed entries never at the bound. Now every entry of
    the returned W and H is at least epsilon, the loss is the returned factors' and does
    not rise, and thinning zeroes exactly the entries equal to epsilon."""
    X = _counts(40, 30)
    epsilon = 1e-3
    model = NMF(3, loss="poisson", epsilon=epsilon, random_state=0, max_iter=50, tol=0)
    W = model.fit_transform(X)
    H = model.components_
    assert W.min() >= epsilon and H.min() >= epsilon
    assert np.any(W == epsilon) or np.any(H == epsilon)  # the bound is active somewhere
    trace = model.loss_trace_
    assert np.all(np.diff(trace) <= 1e-12 * trace[:-1])
    totals = np.asarray(X.sum(axis=1))
    plain = np.sum(_kl_plain(X.toarray(), totals * (W @ H)))
    assert model.loss_ == pytest.approx(plain, rel=1e-9)
    assert model.transform(X).min() >= epsilon

    thinned = NMF(3, loss="poisson", epsilon=epsilon, thin=True, random_state=0, max_iter=50,
                  tol=0)  # fmt: skip
    W_thin = thinned.fit_transform(X)
    np.testing.assert_array_equal(W_thin, np.where(W == epsilon, 0.0, W))
    np.testing.assert_array_equal(thinned.components_, np.where(H == epsilon, 0.0, H))


# ---- 8: an epsilon that makes the fit overflow ---------------------------------------------


def test_an_epsilon_that_overflows_is_named():
    """``epsilon=1e300`` was accepted and the fit's overflow said "scale X down", never
    naming epsilon. Every entry of ``W H`` is at least ``K epsilon**2``: past
    ``sqrt(max float / K)`` the fit is refused by name, and an overflow below that bound
    with epsilon set names epsilon among the causes."""
    X = _counts()
    n_components = 3
    largest = np.sqrt(np.finfo(np.float64).max / n_components)
    for epsilon in (1e300, largest * 1.001):
        with pytest.raises(ValueError, match="epsilon"):
            NMF(n_components, epsilon=epsilon, random_state=0, max_iter=5).fit(X)
    # accepted (3e300 < max float), but the Frobenius loss squares it
    with pytest.raises(FloatingPointError, match="epsilon"):
        NMF(n_components, solver="hals", epsilon=1e150, random_state=0, max_iter=5).fit(X)
