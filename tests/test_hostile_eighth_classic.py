"""An eighth hostile pass on `vbsnmf.classic` (2026-12-05): each test here failed on the code
before its fix.

- `choose_alpha_beta(X, W, H)` and `losses.sum_q_power` passed W and H unchecked to Numba
  kernels that index them by X's rows and columns: out-of-bounds reads (a segfault on a
  tall X), a Numba TypingError for a 1-D W, negative factors taken. They now check W and H
  as `factor_loss` does (`losses.check_factors`).
- `NMF` on values too large for its loss: ``|inf - x| <= tol * inf`` read as converged, so
  a fit stopped after 2-3 iterations with ``inf`` in ``loss_trace_`` and no warning. A loss
  out of the float range now stops the fit with the FloatingPointError of any other
  overflow.
- The named pointwise losses disagreed with `divergence`: NaN at documented 0/0 limits,
  0 (or a negative number) for KL and Itakura-Saito near p = q, overflow where the value is
  finite; `divergence(..., "hellinger")` overflowed where the distance is finite.
"""

from __future__ import annotations

import warnings

import mpmath
import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf.classic import NMF, choose_alpha_beta, factor_loss, losses
from vbsnmf.classic._mu import converged

# -- A: factors checked before the kernels read them ---------------------------------------

X_SPARSE = sp.random(30, 20, density=0.3, format="csr", random_state=0) * 5
FACTOR_CASES = {
    "K 3 vs 2": (np.ones((30, 3)), np.ones((2, 20)), ValueError, "3 components, H has 2"),
    "W 1-D": (np.ones(30), np.ones((1, 20)), ValueError, "2-D"),
    "W too few rows": (np.ones((2, 3)), np.ones((3, 20)), ValueError, "do not factor"),
    "H too few columns": (np.ones((30, 3)), np.ones((3, 4)), ValueError, "do not factor"),
    "W negative": (-np.ones((30, 3)), np.ones((3, 20)), ValueError, "non-negative"),
    "H NaN": (np.ones((30, 3)), np.full((3, 20), np.nan), ValueError, "finite"),
    "W strings": (np.full((30, 3), "a"), np.ones((3, 20)), TypeError, "real numbers"),
}


@pytest.mark.parametrize("case", list(FACTOR_CASES))
def test_choose_alpha_beta_checks_w_and_h_as_factor_loss_does(case):
    W, H, error, message = FACTOR_CASES[case]
    with pytest.raises(error, match=message) as raised:
        choose_alpha_beta(X_SPARSE, W, H, refine=False)
    with pytest.raises(error) as reference:
        factor_loss(X_SPARSE, W, H, "kl")
    assert str(raised.value) == str(reference.value)  # one check, one message


def test_choose_alpha_beta_with_good_factors_equals_the_q_route():
    # Q = W H given densely is the independent route to the same q at X's nonzeros; a
    # factor of integer dtype (was passed to the kernel as it came) is accepted.
    rng = np.random.default_rng(1)
    W, H = rng.integers(1, 4, (30, 3)), rng.uniform(0.1, 1.0, (3, 20))
    by_factors = choose_alpha_beta(X_SPARSE, W, H, refine=False)
    by_q = choose_alpha_beta(X_SPARSE, Q=W @ H, refine=False)
    np.testing.assert_allclose(by_factors.surface, by_q.surface, rtol=1e-12)
    with pytest.raises(ValueError, match="do not factor"):  # the segfault's shapes, small
        choose_alpha_beta(X_SPARSE, W[:2], H, refine=False)


@pytest.mark.parametrize("power", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("case", ["K 4 vs 3", "K 3 vs 1", "W 1-D", "W negative", "H inf"])
def test_sum_q_power_checks_w_and_h(power, case):
    W, H = {
        "K 4 vs 3": (np.ones((4, 4)), np.ones((3, 6))),  # the power-2 path broadcast these
        "K 3 vs 1": (np.ones((4, 3)), np.ones((1, 6))),
        "W 1-D": (np.ones(4), np.ones((1, 6))),
        "W negative": (-np.ones((4, 3)), np.ones((3, 6))),
        "H inf": (np.ones((4, 3)), np.full((3, 6), np.inf)),
    }[case]
    with pytest.raises(ValueError, match=r"components|2-D|finite and non-negative"):
        losses.sum_q_power(W, H, power)
    rng = np.random.default_rng(2)
    W, H = rng.uniform(0, 1, (4, 3)), rng.uniform(0, 1, (3, 6))
    assert losses.sum_q_power(W, H, power) == pytest.approx(np.sum((W @ H) ** power), rel=1e-12)


# -- B: a loss out of the float range is an error, never "converged" -----------------------

COUNTS = np.random.default_rng(0).poisson(2, (20, 15)).astype(float)


def test_converged_is_never_true_of_a_non_finite_loss():
    for trace in ([np.inf, 1.0], [1.0, np.inf], [np.inf, np.inf], [np.nan, 1.0]):
        assert not converged(trace, 1e-4), trace
    assert converged([1.0, 1.0 - 1e-6], 1e-4) and not converged([1.0, 0.5], 1e-4)


@pytest.mark.parametrize(
    ("solver", "loss", "scale"),
    [("mu", "frobenius", 1e100), ("hals", "auto", 1e100), ("pg", "auto", 1e100),
     ("hals", "auto", 1e130), ("gd", "auto", 1e100)],
)  # fmt: skip
def test_a_loss_out_of_the_float_range_raises_not_converges(solver, loss, scale):
    """At 1e100 the start's loss was inf and the fit "converged" at iteration 2-3; HALS at
    1e130 returned NaN in the trace."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's overflow on the way
        with pytest.raises(FloatingPointError, match=r"left the float range.*scale X down"):
            NMF(3, solver=solver, loss=loss, random_state=0).fit(COUNTS * scale)
    fitted = NMF(3, solver=solver, loss=loss, random_state=0, max_iter=500).fit(COUNTS)
    assert np.all(np.isfinite(fitted.loss_trace_)) and fitted.n_iter_ > 3


# -- C: the named pointwise losses at their limits, accurate, without overflow -------------

NAMED = {
    "kl": losses.kullback_leibler,
    "itakura-saito": losses.itakura_saito,
    "hellinger": losses.hellinger,
    "pearson": losses.pearson,
    "neyman": losses.neyman,
}
# Where p or q is 0, as documented (`ab_divergence`: d(0, q) = q**s / (a s) where alpha > 0
# and alpha + beta > 0, inf where alpha <= 0; d(p, 0) = p**s / (b s) where beta > 0, inf
# where beta <= 0). KL took them already.
AT_ZEROS = {
    "itakura-saito": {(0.0, 0.0): np.inf, (0.0, 3.0): np.inf, (3.0, 0.0): np.inf},
    "hellinger": {(0.0, 0.0): 0.0, (0.0, 3.0): 3.0, (3.0, 0.0): 3.0},
    "pearson": {(0.0, 0.0): 0.0, (0.0, 3.0): 3.0, (3.0, 0.0): np.inf},
    "neyman": {(0.0, 0.0): np.inf, (0.0, 3.0): np.inf, (3.0, 0.0): 3.0},
}


@pytest.mark.parametrize("name", list(AT_ZEROS))
def test_named_losses_take_the_documented_values_at_zeros(name):
    for (p, q), expected in AT_ZEROS[name].items():
        assert NAMED[name](p, q) == expected, (p, q)
        assert losses.divergence(p, q, name) == expected, (p, q)
    # vectorised the same, and NaN only where an argument is negative
    p, q = np.array([0.0, 0.0, 3.0, 1.0, -1.0]), np.array([0.0, 3.0, 0.0, 2.0, 1.0])
    value = NAMED[name](p, q)
    np.testing.assert_allclose(value[:4], losses.divergence(p[:4], q[:4], name), rtol=1e-15)
    assert np.isnan(value[4])


def _exact(name, p, q) -> float:
    """d(p, q) for p, q > 0 by its textbook formula in 60 digits, rounded to float."""
    with mpmath.workdps(60):
        p, q = mpmath.mpf(float(p)), mpmath.mpf(float(q))
        return float(
            {
                "kl": lambda: p * mpmath.log(p / q) - p + q,
                "itakura-saito": lambda: mpmath.log(q / p) + p / q - 1,
                "hellinger": lambda: (mpmath.sqrt(p) - mpmath.sqrt(q)) ** 2,
                "pearson": lambda: (p - q) ** 2 / q,
                "neyman": lambda: (p - q) ** 2 / p,
            }[name]()
        )


@pytest.mark.parametrize("name", list(NAMED))
def test_named_losses_are_accurate_where_p_and_q_are_close(name):
    """KL(1, 1 + 1e-12) was 0.0 (it is 5.0009e-25), Itakura-Saito near p = q negative,
    Hellinger off in the 7th digit at a relative gap of 1e-9, Pearson and Neyman imprecise,
    0 or inf where (p - q)**2 under- or overflows."""
    rng = np.random.default_rng(3)
    p = 10.0 ** rng.uniform(-200, 200, 300)
    q = p * (1.0 + 10.0 ** rng.uniform(-15, -0.5, 300) * rng.choice([-1.0, 1.0], 300))
    p, q = np.append(p, [1.0, 1.0 + 1e-12, 3.0]), np.append(q, [1.0 + 1e-12, 1.0, 3.0 + 3e-9])
    expected = np.array([_exact(name, a, b) for a, b in zip(p, q)])
    np.testing.assert_allclose(NAMED[name](p, q), expected, rtol=1e-14)
    np.testing.assert_allclose(losses.divergence(p, q, name), expected, rtol=1e-12)


@pytest.mark.parametrize("name", ["kl", "pearson", "neyman"])  # the others had no such flaw
def test_named_losses_do_not_overflow_or_underflow_where_the_value_is_finite(name):
    """The values that were inf, NaN or 0 for positive arguments (KL(1e308, 1e8) NaN,
    Pearson (1e-8, 5e-324) inf, Neyman (1e300, 1.0) inf), against 60 digits; values that do
    overflow (d > 1.8e308) stay inf."""
    extremes = [5e-324, 1e-300, 1e-8, 0.5, 1.0, 2.0, 1e8, 1e300, 1e308]
    for p in extremes:
        for q in extremes:
            exact = _exact(name, p, q) if p != q else 0.0
            value = NAMED[name](p, q)
            if np.isinf(exact):
                assert value == np.inf, (p, q)
            else:
                assert value == pytest.approx(exact, rel=1e-13, abs=1e-320), (p, q)


def test_hellinger_by_divergence_does_not_overflow():
    # d_AB(1/2, 1/2) is twice the distance and overflowed to inf before the factor 1/2.
    for p, q in [(1e308, 0.0), (0.0, 1e308), (1e308, 1e300), (1.7e308, 1e-300)]:
        expected = _exact("hellinger", p, q) if q > 0 and p > 0 else max(p, q)
        assert losses.divergence(p, q, "hellinger") == pytest.approx(expected, rel=1e-14)
        assert losses.hellinger(p, q) == pytest.approx(expected, rel=1e-14)
    X = np.array([[1e308, 0.0], [1e300, 2.0]])  # the loss of a fit at these values is finite
    W, H = np.array([[1e154], [1e150]]), np.array([[1e150, 1.0]])
    expected = sum(
        _exact("hellinger", x, q) if x > 0 else q for x, q in zip(X.ravel(), (W @ H).ravel())
    )
    with np.errstate(over="ignore"):  # X's squared norm, which this loss does not use
        assert factor_loss(X, W, H, "hellinger") == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize(
    ("p", "q", "loss", "expected"),
    [
        (1e300, 1e300, "frobenius", 0.0),
        (0.5, 1e308, "kl", 1e308),  # q - p + p ln(p / q), the last two terms negligible
        (1e308, 1.0, "itakura-saito", 1e308),  # p / q - ln(p / q) - 1
        (1.0, 1e308, "pearson", 1e308),  # (p - q)**2 / q
        (1e308, 1.0, "neyman", 1e308),  # (p - q)**2 / p
    ],
)
def test_the_ab_kernel_does_not_overflow_where_the_divergence_is_finite(p, q, loss, expected):
    """`_kernels.ab_divergence_scalar` multiplied ln(q/p)**2, a power and the divided
    difference from left to right, so a factor overflowed (inf) or 0 times inf (NaN) where
    their product is finite."""
    value = float(losses.divergence(p, q, loss))
    assert value == pytest.approx(expected, rel=1e-12, abs=0.0)


@pytest.mark.parametrize("loss", ["itakura-saito", "neyman"])
def test_a_sparse_x_with_every_entry_stored_is_fitted_as_its_dense_form(loss):
    """Under a loss undefined at p = 0 the sparse route's split into d(x, q) - d(0, q) and
    d(0, q) everywhere failed even without a zero: ZeroDivisionError (Itakura-Saito), a
    bare TypeError or a FloatingPointError blaming the scale (Neyman)."""
    dense = np.random.default_rng(0).poisson(3, (6, 5)).astype(float) + 1.0
    W = np.random.default_rng(1).random((6, 2)) + 0.1
    H = np.random.default_rng(2).random((2, 5)) + 0.1
    stored = sp.csr_matrix(dense)
    assert factor_loss(stored, W, H, loss=loss) == pytest.approx(
        factor_loss(dense, W, H, loss=loss), rel=1e-13
    )
    settings = {"loss": loss, "solver": "mu", "max_iter": 20, "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparse_fit = NMF(2, **settings).fit(stored)
        dense_fit = NMF(2, **settings).fit(dense)
    np.testing.assert_allclose(sparse_fit.components_, dense_fit.components_, rtol=1e-10)
    stored.data[0] = 0.0  # a stored zero: the loss is undefined there
    with pytest.raises(ValueError, match="undefined where the data is zero"):
        factor_loss(stored, W, H, loss=loss)
