"""Twenty-first hostile pass, classical NMF: the floor of W H on data of a small scale
(multiplicative updates, their loss, the sparse routes' weights), the NNDSVD start's
threshold there, an AnnData or a path given as X, and inverse_transform of
loss="Poisson"."""

from __future__ import annotations

import pathlib
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF as SklearnNMF

from vbsnmf.classic import NMF, choose_alpha_beta, factor_loss

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

RNG = np.random.default_rng(21)
COUNTS = RNG.poisson(1, (25, 15)).astype(float)
W0 = RNG.random((25, 3)) + 0.1
H0 = RNG.random((3, 15)) + 0.1
SMALL = 1e-8  # the data's scale: below float32 eps, scikit-learn's floor of W H


def _layouts(X):
    return {"dense": X, "sparse": sp.csr_matrix(X)}


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_frobenius_updates_fit_data_below_the_floor_as_scikit_learn(layout):
    """The dense route floored W H at float32 eps in the Frobenius denominator, which the
    sparse route's Gram form and scikit-learn do not: on data of scale 1e-8 the dense fit
    shrank to W H = 0, and its loss_ (W H floored at X's nonzeros) read 30 ||X||^2."""
    X = COUNTS * SMALL
    start = {"W": W0 * 1e-4, "H": H0 * 1e-4}
    model = NMF(3, loss="frobenius", init="custom", max_iter=200, tol=0)
    W = model.fit_transform(_layouts(X)[layout], **{k: v.copy() for k, v in start.items()})
    reference = SklearnNMF(3, solver="mu", init="custom", max_iter=200, tol=0)
    W_ref = reference.fit_transform(X, **{k: v.copy() for k, v in start.items()})
    np.testing.assert_allclose(W @ model.components_, W_ref @ reference.components_, rtol=1e-6)
    residual = np.sum((X - W @ model.components_) ** 2)
    assert residual < 0.5 * np.sum(X**2)
    np.testing.assert_allclose(model.loss_, residual, rtol=1e-9)


def test_sparse_x_with_dense_weights_keeps_its_factors_non_negative():
    """Sparse X, dense 0/1 weights, Frobenius, data of scale 1e-8: the excluded entries'
    denominator terms were floored at float32 eps and subtracted from the unfloored Gram
    form, so denominators went negative, and so did W, H and loss_."""
    X = COUNTS * SMALL
    weights = (RNG.random(X.shape) > 0.5).astype(float)
    fits = {}
    for layout, data in _layouts(X).items():
        model = NMF(3, loss="frobenius", weights=weights, max_iter=100, random_state=0)
        W = model.fit_transform(data)
        H = model.components_
        assert W.min() >= 0 and H.min() >= 0, layout
        residual = np.sum(weights * (X - W @ H) ** 2)
        np.testing.assert_allclose(model.loss_, residual, rtol=1e-9)
        fits[layout] = W @ H
    np.testing.assert_allclose(fits["sparse"], fits["dense"], rtol=1e-9, atol=1e-20)


# each loss is homogeneous of degree alpha + beta: d(c x, c q) = c**(alpha + beta) d(x, q)
@pytest.mark.parametrize(
    ("loss", "params", "degree", "shift"),
    [
        ("kl", {}, 1.0, 0.0),
        ("poisson", {}, 1.0, 0.0),
        ("hellinger", {}, 1.0, 0.0),
        ("pearson", {}, 1.0, 0.0),
        ("beta", {"beta": 0.5}, 1.5, 0.0),
        ("itakura-saito", {}, 0.0, 1.0),  # undefined at zeros: positive data
    ],
)
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_multiplicative_updates_are_scale_equivariant_below_the_floor(
    loss, params, degree, shift, layout
):
    """W H was floored at float32 eps whatever the data's scale: under a negative power of
    W H the fit of data of scale 1e-8 collapsed to W H ~ 0, and its loss rose as it ran
    (Hellinger, the beta-divergence). The floor now scales with the entry below 1, so the
    fit of c X is c times that of X (for "poisson", whose W H are proportions, the same)."""
    X = COUNTS + shift
    # "poisson" takes the custom W as proportions: the start of c X is that of X
    root = 1.0 if loss == "poisson" else np.sqrt(SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = NMF(3, loss=loss, init="custom", max_iter=60, tol=0, **params)
        W = reference.fit_transform(X, W=W0.copy(), H=H0.copy())
        model = NMF(3, loss=loss, init="custom", max_iter=60, tol=0, **params)
        W_small = model.fit_transform(_layouts(X * SMALL)[layout], W=W0 * root, H=H0 * root)
    expected = W @ reference.components_
    got = W_small @ model.components_ / root**2
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(model.loss_ / SMALL**degree, reference.loss_, rtol=1e-6)
    trace = np.asarray(model.loss_trace_)
    assert np.all(np.diff(trace) <= 1e-9 * trace[:-1])


@pytest.mark.parametrize("loss", ["frobenius", "hellinger", "l1"])
@pytest.mark.parametrize("layout", ["dense", "sparse", "dense weights", "sparse weights"])
def test_a_loss_finite_at_zero_reconstruction_is_not_floored(loss, layout):
    """Where d(x, 0) is finite the loss floored W H at X's nonzeros all the same, so it
    overstated the loss of a small W H (dense Frobenius: 30 ||X||^2 at scale 1e-8), and
    differently by layout (sparse Frobenius did not floor)."""
    X = COUNTS * SMALL
    W, H = W0 * 1e-6, H0 * 1e-6  # W H ~ 1e-12, far below the floor
    weights = None
    if layout.endswith("weights"):
        weights = (RNG.random(X.shape) > 0.3).astype(float)
        if layout.startswith("sparse"):
            weights = sp.csr_matrix(weights)
    data = X if layout.startswith("dense") else sp.csr_matrix(X)
    Q = W @ H
    pointwise = {
        "frobenius": (X - Q) ** 2,
        "hellinger": (np.sqrt(X) - np.sqrt(Q)) ** 2,
        "l1": np.abs(X - Q),
    }[loss]
    if weights is not None:
        dense_weights = weights.toarray() if sp.issparse(weights) else weights
        pointwise = pointwise * dense_weights
    expected = pointwise.sum()
    np.testing.assert_allclose(factor_loss(data, W, H, loss, weights=weights), expected, rtol=1e-9)


def test_kl_keeps_its_floor_where_the_reconstruction_is_zero():
    """KL is infinite at W H = 0 < X: the loss still floors W H there (as scikit-learn),
    now at float32 eps times the entry below 1, and is finite."""
    X = COUNTS * SMALL
    W = np.zeros_like(W0)
    value = factor_loss(X, W, H0, "kl")
    nonzero = X > 0
    floor = np.finfo(np.float32).eps * X[nonzero]
    expected = np.sum(X[nonzero] * np.log(X[nonzero] / floor) - X[nonzero] + floor)
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(factor_loss(sp.csr_matrix(X), W, H0, "kl"), expected, rtol=1e-12)


@pytest.mark.parametrize(("solver", "loss"), [("mu", "kl"), ("mu", "frobenius"), ("hals", "auto")])
def test_the_nndsvd_start_scales_with_data_below_one(solver, loss):
    """init="nndsvd" zeroed the SVD factors' entries below scikit-learn's fixed 1e-6; they
    scale with the square root of X, so on data of scale 1e-14 every entry was zeroed and
    the fit returned W = H = 0 without a word. The threshold now scales with data whose
    largest entry is below 1 (count data keep scikit-learn's start)."""
    X = COUNTS / COUNTS.max()
    reference = NMF(3, init="nndsvd", solver=solver, loss=loss, max_iter=60, tol=0)
    expected = reference.fit_transform(X) @ reference.components_
    for scale in (1e-10, 1e-14):
        model = NMF(3, init="nndsvd", solver=solver, loss=loss, max_iter=60, tol=0)
        got = model.fit_transform(X * scale) @ model.components_ / scale
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.max())


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (ad.AnnData(COUNTS), "X is an AnnData: pass its counts"),
        ("counts.h5ad", r"X is a path \('counts.h5ad'\), not a matrix"),
        (pathlib.Path("counts.h5ad"), r"X is a path \('counts.h5ad'\), not a matrix"),
    ],
)
def test_an_anndata_or_a_path_as_x_is_named(bad, words):
    """The classical estimator and functions gave numpy's "setting an array element with
    a sequence ... maximum number of dimension of 64" for an AnnData and "could not
    convert string to float" for a path, where VBNMF names the mistake."""
    fitted = NMF(2, max_iter=5).fit(COUNTS)
    calls = [
        lambda: NMF(2).fit(bad),
        lambda: fitted.transform(bad),
        lambda: factor_loss(bad, W0, H0),
        lambda: choose_alpha_beta(bad, Q=np.ones(COUNTS.shape)),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=words):
            call()


@pytest.mark.parametrize("spelling", ["Poisson", "POISSON"])
def test_inverse_transform_refuses_poisson_by_any_spelling(spelling):
    """loss="Poisson" is fitted as "poisson", but inverse_transform compared the raw string:
    it returned W @ components_ (each row's proportions, summing to one) as the data."""
    model = NMF(2, loss=spelling, max_iter=50, random_state=0)
    W = model.fit_transform(COUNTS)
    np.testing.assert_allclose((W @ model.components_).sum(axis=1), 1.0, rtol=1e-2)
    with pytest.raises(ValueError, match="row totals"):
        model.inverse_transform(W)


@pytest.mark.parametrize("scale", [1.0, SMALL])
@pytest.mark.parametrize("weighted", [False, True])
def test_dense_and_sparse_agree_where_the_denominator_needs_its_floor(scale, weighted):
    """alpha + beta < 1: the denominator's negative power floors W H at every entry; the
    sparse route sums it over all entries at float32 eps and corrects the stored ones to
    the entry's floor (`entry_floor`), so both layouts make the same fit (a guard of the
    fix above: the old code agreed here, with one fixed floor everywhere)."""
    X = COUNTS * scale
    weights = (RNG.random(X.shape) > 0.3) * 1.5 if weighted else None
    fits = []
    for data in _layouts(X).values():
        model = NMF(
            3, loss="ab", alpha=0.3, beta=0.3, weights=weights, max_iter=30, tol=0, random_state=0
        )
        W = model.fit_transform(data)
        fits.append((W @ model.components_, model.loss_))
    np.testing.assert_allclose(fits[1][0], fits[0][0], rtol=1e-9, atol=1e-12 * X.max())
    np.testing.assert_allclose(fits[1][1], fits[0][1], rtol=1e-9)
