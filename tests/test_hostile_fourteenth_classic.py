"""Fourteenth hostile pass over the classical NMF (`vbsnmf.classic`): entries of weight 0
leaking into the initialisation and the Poisson row totals, and the interior point
gradient solver raising the loss under an epsilon bound."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf.classic import NMF, factor_loss


def _counts(seed=0, shape=(12, 9), rate=2.0):
    return np.random.default_rng(seed).poisson(rate, shape).astype(float)


def _fit(model, X, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit_transform(X, **params)


@pytest.mark.parametrize("init", ["nndsvda", "nndsvd", "nndsvdar", "random"])
@pytest.mark.parametrize(
    "layout", ["dense X, dense mask", "sparse X, dense mask", "sparse X, sparse mask"]
)
def test_an_entry_of_weight_zero_does_not_reach_the_fit_through_the_initialisation(init, layout):
    X = _counts()
    mask = np.ones_like(X)
    mask[3, 4] = 0.0
    changed = X.copy()
    changed[3, 4] = 1000.0  # a held-out entry: any value must give the same fit
    fits = []
    for data in (X, changed):
        weights = sp.csr_matrix(mask) if layout.endswith("sparse mask") else mask
        if layout.startswith("sparse X"):
            data = sp.csr_matrix(data)
        model = NMF(3, weights=weights, init=init, random_state=0, max_iter=20, tol=0)
        fits.append((_fit(model, data), model.components_))
    np.testing.assert_allclose(fits[0][0], fits[1][0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fits[0][1], fits[1][1], rtol=1e-9, atol=1e-12)


def test_the_same_weights_dense_or_sparse_give_the_same_fit():
    rng = np.random.default_rng(1)
    X = _counts(seed=1, shape=(10, 7))
    weights = rng.uniform(0.0, 3.0, X.shape)
    weights[weights < 0.7] = 0.0  # the sparse form stores exactly the positive weights
    fits = []
    for given in (weights, sp.csr_matrix(weights)):
        model = NMF(3, loss="frobenius", weights=given, random_state=0, max_iter=60, tol=0)
        fits.append((_fit(model, X), model.components_, model.loss_))
    np.testing.assert_allclose(fits[0][0], fits[1][0], rtol=1e-8, atol=1e-10)
    assert fits[0][2] == pytest.approx(fits[1][2], rel=1e-10)
    # the loss reported is the weighted squared residual of the result, computed directly
    W, H, loss = fits[0]
    assert loss == pytest.approx(float((weights * (X - W @ H) ** 2).sum()), rel=1e-10)


def test_poisson_row_totals_leave_out_the_entries_of_weight_zero():
    X = _counts(seed=2)
    mask = np.ones_like(X)
    mask[3, 4] = mask[5, 0] = 0.0
    changed = X.copy()
    changed[3, 4], changed[5, 0] = 1000.0, 500.0
    rng = np.random.default_rng(3)
    W0, H0 = rng.uniform(0.5, 1.0, (12, 3)), rng.uniform(0.5, 1.0, (3, 9))
    fits = []
    for data in (X, changed):
        model = NMF(3, loss="poisson", weights=mask, init="custom", max_iter=20, tol=0)
        fits.append(_fit(model, data, W=W0, H=H0))
    np.testing.assert_allclose(fits[0], fits[1], rtol=1e-10, atol=1e-13)
    # the Poisson loss with the totals of the counted entries, computed directly
    totals = (mask * changed).sum(axis=1)
    Q = totals[:, None] * (W0 @ H0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = np.where(changed > 0, changed * np.log(changed / Q), 0.0)
    expected = float((mask * (log_term - changed + Q)).sum())
    assert factor_loss(changed, W0, H0, loss="poisson", weights=mask) == pytest.approx(
        expected, rel=1e-10
    )


@pytest.mark.parametrize("epsilon", [0.05, 0.5])
@pytest.mark.parametrize("masked", [False, True])
def test_interior_point_gradient_with_epsilon_does_not_raise_the_loss(epsilon, masked):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        X = rng.poisson(1.0, (15, 10)).astype(float)
        factor_mask = {"W": (rng.random((15, 3)) > 0.2).astype(float)} if masked else None
        model = NMF(
            3,
            solver="ipg",
            epsilon=epsilon,
            factor_mask=factor_mask,
            random_state=seed,
            max_iter=100,
            tol=0,
        )
        W = _fit(model, X)
        H = model.components_
        trace = model.loss_trace_
        assert np.all(np.diff(trace) <= 1e-12 * trace[:-1])
        held = W if factor_mask is None else W[factor_mask["W"] > 0]
        assert held.min() >= epsilon and H.min() >= epsilon
        assert model.loss_ == pytest.approx(float(((X - W @ H) ** 2).sum()), rel=1e-10)
