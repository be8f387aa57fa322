"""Solvers of vbsnmf.classic: against scikit-learn, monotone objectives, KKT after
epsilon-thinning, weights and masks, the estimator contract, tl.nmf dispatch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF as SklearnNMF
from sklearn.exceptions import ConvergenceWarning

import vbsnmf
from vbsnmf.classic import NMF, factor_loss, losses


def _sparse_problem(seed=0, n=60, m=40, k=4, density=0.3):
    rng = np.random.default_rng(seed)
    X = sp.random(n, m, density=density, random_state=seed, format="csr") * 10
    W = rng.uniform(0.1, 1.1, (n, k))
    H = rng.uniform(0.1, 1.1, (k, m))
    return X, W, H


def _positive_problem(seed=0, n=30, m=20, k=3):
    """Dense, strictly positive data near rank k (every AB loss is defined)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.2, 1.0, (n, k)) @ rng.uniform(0.2, 1.0, (k, m)) + rng.uniform(
        0.1, 0.5, (n, m)
    )
    return X


def _sklearn_fit(X, W, H, **params):
    model = SklearnNMF(W.shape[1], init="custom", tol=0, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter reached on purpose
        W_fit = model.fit_transform(X, W=W.copy(), H=H.copy())
    return W_fit, model.components_


@pytest.mark.parametrize(
    ("loss", "beta_loss"), [("frobenius", "frobenius"), ("kl", "kullback-leibler")]
)
@pytest.mark.parametrize("layout", ["sparse", "dense"])
@pytest.mark.parametrize("values", ["real", "counts"])
def test_mu_equals_sklearn_after_50_iterations(loss, beta_loss, layout, values):
    X, W0, H0 = _sparse_problem()
    if values == "counts":  # stored as float32 by the sparse route (exact for counts)
        X.data = np.ceil(X.data)
    data = X if layout == "sparse" else X.toarray()
    W_ref, H_ref = _sklearn_fit(data, W0, H0, solver="mu", beta_loss=beta_loss, max_iter=50)
    model = NMF(4, loss=loss, solver="mu", init="custom", max_iter=50, tol=0)
    W = model.fit_transform(data, W=W0, H=H0)
    assert model.n_iter_ == 50
    np.testing.assert_allclose(W, W_ref, rtol=1e-8, atol=1e-8 * np.abs(W_ref).max())
    np.testing.assert_allclose(model.components_, H_ref, rtol=1e-8, atol=1e-8 * np.abs(H_ref).max())


def test_stored_values_are_float32_only_where_exact():
    from vbsnmf._validation import exact_float_dtype
    from vbsnmf.classic._data import ClassicData

    assert exact_float_dtype(np.array([0.0, 1.0, 7.0, 2.0**24])) == np.float32
    for inexact in ([1.0, 0.1], [1.0, 2.0**24 + 1], [3.0, 1e300]):
        assert exact_float_dtype(np.array(inexact)) == np.float64
    # one inexact value past the first comparison block
    values = np.ones((1 << 20) + 5)
    values[-1] = 0.5 + 2.0**-40
    assert exact_float_dtype(values) == np.float64
    cases = (([[0.0, 3.0], [0.25, 0.0]], np.float32), ([[0.1, 0.0], [0.0, 2.0]], np.float64))
    for X, dtype in cases:
        X = sp.csr_matrix(X)
        data = ClassicData.build(X)
        for entries, expected in ((data.entries.by_rows, X), (data.entries.by_cols, X.T)):
            assert entries.data.dtype == dtype
            np.testing.assert_array_equal(entries.to_csr().toarray(), expected.toarray())


def test_column_tiles_give_the_csr_results():
    """X wider than two column tiles: every kernel reads it tile by tile."""
    from vbsnmf import _kernels
    from vbsnmf.classic._data import ClassicData

    n_cols = 2 * _kernels.TILE_COLUMNS + 700
    X = sp.random(12, n_cols, density=0.3, random_state=3, format="csr")
    X.data = np.ceil(X.data * 9)
    rng = np.random.default_rng(3)
    W, H = rng.uniform(0.1, 1.0, (12, 3)), rng.uniform(0.1, 1.0, (3, n_cols))
    with_empty_row = sp.vstack([X[:5], sp.csr_matrix((1, n_cols)), X[5:]]).tocsr()
    data = ClassicData.build(with_empty_row)
    assert data.entries.by_rows.indptr.shape[0] == 3
    assert data.entries.by_cols.indptr.shape[0] == 1
    assert (data.entries.by_rows.to_csr() != with_empty_row).nnz == 0
    W_13 = np.vstack([W[:5], np.ones((1, 3)), W[5:]])
    np.testing.assert_allclose(data.data_times(H.T, "rows"), with_empty_row @ H.T, rtol=1e-12)
    np.testing.assert_allclose(data.data_times(W_13, "cols"), with_empty_row.T @ W_13, rtol=1e-12)
    dense = X.toarray()
    for loss in ("frobenius", "kl", "beta"):
        params = {"beta": 0.5} if loss == "beta" else {}
        fits = [
            NMF(3, loss=loss, init="custom", max_iter=4, tol=0, **params).fit(m, W=W, H=H)
            for m in (X, dense)
        ]
        np.testing.assert_allclose(fits[0].loss_trace_, fits[1].loss_trace_, rtol=1e-9)
        np.testing.assert_allclose(fits[0].components_, fits[1].components_, rtol=1e-9)
    # sparse weights: only the stored entries of the mask count, in tiles too
    mask = (X != 0).astype(np.float64)
    fits = [
        NMF(3, loss="kl", init="custom", weights=w, max_iter=4, tol=0).fit(X, W=W, H=H)
        for w in (mask, mask.toarray())
    ]
    np.testing.assert_allclose(fits[0].components_, fits[1].components_, rtol=1e-9)


def test_hals_no_worse_than_sklearn_cd():
    X, W0, H0 = _sparse_problem(seed=1, n=80, m=50, k=5)
    for n_iter in (5, 30):
        W_ref, H_ref = _sklearn_fit(X, W0, H0, solver="cd", max_iter=n_iter)
        model = NMF(5, solver="hals", init="custom", max_iter=n_iter, tol=0)
        W = model.fit_transform(X, W=W0, H=H0)
        ours = factor_loss(X, W, model.components_, "frobenius")
        theirs = factor_loss(X, W_ref, H_ref, "frobenius")
        assert ours <= theirs * (1 + 1e-9)
        assert ours < factor_loss(X, W0, H0, "frobenius")


def _assert_monotone(trace, rel=1e-10):
    trace = np.asarray(trace)
    assert np.all(np.isfinite(trace))
    assert np.all(np.diff(trace) <= rel * np.abs(trace[:-1])), np.max(np.diff(trace))
    assert trace[-1] < trace[0]


MU_CASES = [
    {"loss": "frobenius"},
    {"loss": "kl"},
    {"loss": "beta", "beta": 0.5},
    {"loss": "beta", "beta": 1.0},
    {"loss": "beta", "beta": 2.0},
    {"loss": "poisson"},
    {"loss": "ab", "alpha": 0.5, "beta": 0.5},
    {"loss": "ab", "alpha": 1.5, "beta": 0.7},
    {"loss": "ab", "alpha": 2.0, "beta": -1.0},
    {"loss": "ab", "alpha": -0.5, "beta": 1.0},
    {"loss": "ab", "alpha": -1.0, "beta": 2.0},
    {"loss": "ab", "alpha": -0.5, "beta": 0.3},
    {"loss": "ab", "alpha": 0.3, "beta": 2.5},
    {"loss": "itakura-saito"},
]


@pytest.mark.parametrize("params", MU_CASES, ids=lambda p: "-".join(map(str, p.values())))
@pytest.mark.parametrize("epsilon", [0.0, 0.05])
def test_mu_objective_is_monotone(params, epsilon):
    X = _positive_problem()
    model = NMF(
        3, solver="mu", epsilon=epsilon, max_iter=60, tol=0, init="random", random_state=0, **params
    )
    W = model.fit_transform(X)
    _assert_monotone(model.loss_trace_)
    # the trace is the loss itself, evaluated independently at the end
    name = params["loss"]
    expected = factor_loss(X, W, model.components_, name, params.get("alpha"), params.get("beta"))
    assert model.loss_trace_[-1] == pytest.approx(expected, rel=1e-9)
    if epsilon:
        assert W.min() >= epsilon * (1 - 1e-12) or name == "poisson"
        assert model.components_.min() >= epsilon * (1 - 1e-12) or name == "poisson"


@pytest.mark.parametrize(
    "params",
    [{"loss": "kl"}, {"loss": "beta", "beta": 0.5}, {"loss": "ab", "alpha": 0.5, "beta": 0.7}],
)
def test_mu_on_sparse_equals_mu_on_dense(params):
    """The sparse route (closed forms, row passes, nonzero kernels) is the same algorithm."""
    X, W0, H0 = _sparse_problem(seed=2, n=25, m=15, k=3)
    fits = []
    for data in (X, X.toarray()):
        model = NMF(3, solver="mu", init="custom", max_iter=20, tol=0, **params)
        fits.append((model.fit_transform(data, W=W0, H=H0), model.components_, model.loss_trace_))
    for sparse_part, dense_part in zip(fits[0], fits[1]):  # equal up to summation order
        np.testing.assert_allclose(sparse_part, dense_part, rtol=1e-7)


def _kkt_violation(X, W, H):
    """Largest violation of the KKT conditions of min ||X - W H||^2 over W, H >= 0."""
    residual = W @ H - X
    grad_w, grad_h = 2 * residual @ H.T, 2 * W.T @ residual
    return max(
        np.abs(grad_w[W > 0]).max(initial=0.0),
        np.abs(grad_h[H > 0]).max(initial=0.0),
        -grad_w[W == 0].min(initial=0.0),
        -grad_h[H == 0].min(initial=0.0),
    )


def test_kkt_after_epsilon_thinning_scale_with_epsilon():
    """Gillis-Glineur: epsilon-MU converges to a stationary point of the problem with
    factors >= epsilon; thinning it gives KKT of the original problem up to O(epsilon)."""
    rng = np.random.default_rng(4)
    n, m, k = 24, 18, 3
    W_true = np.zeros((n, k))
    W_true[np.arange(n), np.arange(n) % k] = 1 + rng.random(n)
    H_true = np.zeros((k, m))
    H_true[np.arange(m) % k, np.arange(m)] = 1 + rng.random(m)
    H_true += 0.3 * rng.random((k, m)) * (rng.random((k, m)) < 0.3)
    X = W_true @ H_true
    ratios = []
    for epsilon in (1e-2, 1e-3, 1e-4):
        model = NMF(
            k,
            loss="frobenius",
            solver="mu",
            epsilon=epsilon,
            thin=True,
            max_iter=800,
            tol=0,
            init="random",
            random_state=0,
        )
        W = model.fit_transform(X)
        H = model.components_
        assert (W == 0).any() and (H == 0).any()  # thinning did zero entries
        ratios.append(_kkt_violation(X, W, H) / epsilon)
    # O(epsilon): violation / epsilon stays bounded as epsilon shrinks a hundredfold
    assert max(ratios) < 3 * min(ratios)
    assert max(ratios) < 200


@pytest.mark.parametrize("solver", ["hals", "pg", "ipg", "gd", "als"])
def test_frobenius_solvers_decrease_the_loss(solver):
    X, _, _ = _sparse_problem(seed=3)
    model = NMF(4, solver=solver, max_iter=40, tol=0, random_state=0)
    W = model.fit_transform(X)
    trace = model.loss_trace_
    assert model.loss == "auto" and trace[-1] == pytest.approx(
        factor_loss(X, W, model.components_, "frobenius"), rel=1e-8
    )
    if solver == "als":  # truncated least squares is not a descent method
        assert trace[-1] < 0.5 * trace[0]
    else:
        _assert_monotone(trace, rel=1e-9)
    assert W.min() >= 0 and model.components_.min() >= 0


def test_stopping_by_tol_and_max_iter():
    X, _, _ = _sparse_problem(seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither a converged fit nor tol=0 warns
        loose = NMF(4, solver="mu", tol=1e-2, max_iter=500, random_state=0).fit(X)
        capped = NMF(4, solver="hals", tol=0, max_iter=7, random_state=0).fit(X)
    assert loose.n_iter_ < 500
    last = loose.loss_trace_[-3:-1]
    assert abs(last[0] - last[1]) <= 1e-2 * last[0]
    assert capped.n_iter_ == 7 and capped.loss_trace_.shape == (8,)
    from sklearn.exceptions import ConvergenceWarning

    for solver in ("mu", "hals"):  # stopped by max_iter with tol > 0: as scikit-learn's NMF
        with pytest.warns(vbsnmf.ConvergenceWarning, match="max_iter=3") as caught:
            NMF(4, solver=solver, tol=1e-12, max_iter=3, random_state=0).fit(X)
        assert {w.filename for w in caught} == {__file__}
        # scikit-learn is loaded here: the warning is its ConvergenceWarning too
        assert all(issubclass(w.category, ConvergenceWarning) for w in caught)


@pytest.mark.parametrize(
    "layout", ["sparse X, dense mask", "sparse X, sparse mask", "dense X, dense mask"]
)
@pytest.mark.parametrize(
    "params", [{"loss": "kl"}, {"loss": "frobenius"}, {"loss": "ab", "alpha": 0.5, "beta": 0.7}]
)
def test_masked_entry_has_no_influence(layout, params):
    X, W0, H0 = _sparse_problem(seed=6, n=30, m=20, k=3)
    rows, cols = X.nonzero()
    masked = (rows[0], cols[0])  # a nonzero entry, and a zero entry
    zero = next((i, j) for i in range(30) for j in range(20) if X[i, j] == 0)
    mask = np.ones(X.shape)
    mask[masked] = 0.0
    mask[zero] = 0.0
    changed = X.tolil()
    changed[masked] = 500.0
    changed[zero] = 77.0
    changed = changed.tocsr()
    if layout == "sparse X, sparse mask":
        rng = np.random.default_rng(0)
        mask = sp.csr_matrix(mask * (rng.random(X.shape) < 0.7))
    fits = []
    for data in (X, changed):
        if layout.startswith("dense X"):
            data = data.toarray()
        model = NMF(3, solver="mu", weights=mask, init="custom", max_iter=15, tol=0, **params)
        fits.append((model.fit_transform(data, W=W0, H=H0), model.components_))
    np.testing.assert_allclose(fits[0][0], fits[1][0], rtol=1e-10)
    np.testing.assert_allclose(fits[0][1], fits[1][1], rtol=1e-10)
    # and the mask does change the fit compared to no mask
    unmasked = NMF(3, solver="mu", init="custom", max_iter=15, tol=0, **params)
    assert not np.allclose(unmasked.fit_transform(changed, W=W0, H=H0), fits[1][0])


def test_dense_mask_on_sparse_equals_dense_route():
    X, W0, H0 = _sparse_problem(seed=7, n=20, m=16, k=3)
    mask = (np.random.default_rng(1).random(X.shape) > 0.3).astype(float)
    fits = []
    for data in (X, X.toarray()):
        model = NMF(3, loss="beta", beta=0.5, weights=mask, init="custom", max_iter=10, tol=0)
        fits.append(model.fit_transform(data, W=W0, H=H0))
    np.testing.assert_allclose(fits[0], fits[1], rtol=1e-9)


@pytest.mark.parametrize("solver", ["mu", "hals"])
def test_factor_mask_holds_entries_at_zero(solver):
    X, _, _ = _sparse_problem(seed=8, n=30, m=20, k=3)
    rng = np.random.default_rng(2)
    h_mask = (rng.random((3, 20)) > 0.3).astype(float)
    w_mask = (rng.random((30, 3)) > 0.3).astype(float)
    model = NMF(
        3,
        solver=solver,
        factor_mask={"W": w_mask, "H": h_mask},
        max_iter=30,
        tol=0,
        random_state=0,
        epsilon=1e-3,
    )
    W = model.fit_transform(X)
    assert np.all(W[w_mask == 0] == 0) and np.all(model.components_[h_mask == 0] == 0)
    assert np.all(W[w_mask == 1] >= 1e-3) and np.all(model.components_[h_mask == 1] >= 1e-3)
    only_h = NMF(3, solver=solver, factor_mask=h_mask, max_iter=5, tol=0, random_state=0)
    only_h.fit(X)
    assert np.all(only_h.components_[h_mask == 0] == 0)


def test_poisson_form_has_row_proportions_and_module_distributions():
    # dense: the numpy route keeps this 300-iteration fit fast (sparse == dense is tested above)
    X = np.random.default_rng(9).poisson(3.0, (40, 25)).astype(float)
    model = NMF(3, loss="poisson", solver="mu", max_iter=300, tol=0, random_state=0)
    W = model.fit_transform(X)
    totals = X.sum(axis=1)
    np.testing.assert_allclose(model.components_.sum(axis=1), 1.0, rtol=1e-10)
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-3)  # at the fixed point
    expected = np.sum(losses.kullback_leibler(X, totals[:, None] * (W @ model.components_)))
    assert model.loss_ == pytest.approx(expected, rel=1e-9)
    _assert_monotone(model.loss_trace_)


def test_transform_fits_w_for_fixed_components():
    X = _sparse_problem(seed=10)[0].toarray()  # dense: fast numpy route, same solver code
    for solver in ("mu", "hals"):
        model = NMF(4, solver=solver, max_iter=200, tol=0, random_state=0)
        W_fit = model.fit_transform(X)
        W_new = model.transform(X)
        assert W_new.shape == W_fit.shape
        loss = "kl" if solver == "mu" else "frobenius"
        fitted = factor_loss(X, W_fit, model.components_, loss)
        assert factor_loss(X, W_new, model.components_, loss) <= fitted * 1.01


def test_estimator_errors():
    X, _, _ = _sparse_problem()
    with pytest.raises(ValueError, match="unknown solver"):
        NMF(3, solver="newton").fit(X)
    with pytest.raises(ValueError, match="Frobenius loss only"):
        NMF(3, solver="hals", loss="kl").fit(X)
    with pytest.raises(ValueError, match="undefined"):
        NMF(3, loss="itakura-saito").fit(X)
    with pytest.raises(ValueError, match="init='custom'"):
        NMF(3, init="custom").fit(X)
    with pytest.raises(ValueError, match="weights are supported by solver='mu'"):
        NMF(3, solver="hals", weights=np.ones(X.shape)).fit(X)
    with pytest.raises(ValueError, match="alpha != 0"):
        NMF(3, loss="ab", alpha=0.0, beta=1.0).fit(X)
    with pytest.raises(ValueError, match=r"(?i)negative"):
        NMF(3).fit(-X)
    with pytest.raises(ValueError, match="n_components"):
        NMF(0).fit(X)
    # found by a hostile pass: numpy's "ufunc 'isfinite' not supported", booleans taken as 1
    with pytest.raises(TypeError, match="beta must be a number"):
        NMF(3, loss="beta", beta="a").fit(X)
    with pytest.raises(TypeError, match="alpha must be a number"):
        NMF(3, loss="alpha", alpha="a").fit(X)
    for name in ("max_iter", "tol"):
        with pytest.raises(ValueError, match=name):
            NMF(3, **{name: True}).fit(X)
    # a numpy Generator seeds the start, as VBNMF's random_state (scikit-learn's
    # randomized_svd refused it)
    for init in ("nndsvda", "random"):
        fits = [
            NMF(3, init=init, max_iter=3, tol=0, random_state=np.random.default_rng(5)).fit(X)
            for _ in range(2)
        ]
        np.testing.assert_array_equal(fits[0].components_, fits[1].components_)
    # seeds scikit-learn refuses, refused before any work in vbsnmf's words (its own error
    # named randomized_svd; a hostile pass, 2026-12-03)
    for seed, error in ((-1, ValueError), (2**32, ValueError), ("a", TypeError), (True, TypeError)):
        with pytest.raises(error, match="random_state must be") as raised:
            NMF(3, random_state=seed, init="random").fit(X)
        assert "randomized_svd" not in str(raised.value)
    # weights that select nothing: a raw ValueError (sparse) or a negative loss (dense)
    for weights in (sp.csr_matrix(X.shape), np.zeros(X.shape)):
        with pytest.raises(ValueError, match="weights select no entry"):
            NMF(3, weights=weights, max_iter=5).fit(X)


def test_tl_nmf_dispatches_to_classic(pbmc_tiny):
    adata = pbmc_tiny
    n_obs, n_vars = adata.shape
    for method in ("mu", "hals"):
        vbsnmf.tl.nmf(adata, n_components=4, solver=method, random_state=0, max_iter=20, tol=0)
        assert adata.obsm["X_nmf"].shape == (n_obs, 4)
        assert adata.varm["NMF"].shape == (n_vars, 4)
        assert np.all(np.isfinite(adata.obsm["X_nmf"])) and adata.varm["NMF"].min() >= 0


@pytest.mark.parametrize(
    ("loss", "beta_loss"), [("frobenius", "frobenius"), ("kl", "kullback-leibler")]
)
def test_reconstruction_err_means_what_scikit_learns_means(loss, beta_loss):
    """scikit-learn's ``reconstruction_err_`` is ``sqrt(2 * beta-divergence)`` (for Frobenius
    the norm ||X - WH||); vbsnmf's is the same number for the same W and H. The loss as
    minimised (the squared norm for Frobenius) is ``loss_``."""
    X = np.random.default_rng(3).poisson(2.0, (50, 30)).astype(float)
    theirs = SklearnNMF(3, solver="mu", beta_loss=beta_loss, init="nndsvda", max_iter=50,
                        tol=0, random_state=0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = theirs.fit_transform(X)
    H = theirs.components_
    if loss == "frobenius":
        assert theirs.reconstruction_err_ == pytest.approx(np.linalg.norm(X - W @ H), rel=1e-9)
    ours = NMF(3, loss=loss, solver="mu", init="custom", max_iter=1, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W1 = ours.fit_transform(X, W=W, H=H)  # one more iteration from their W, H
    reference = SklearnNMF(3, solver="mu", beta_loss=beta_loss, init="custom", max_iter=1, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reference.fit_transform(X, W=W.copy(), H=H.copy())
    assert reference.reconstruction_err_ == pytest.approx(ours.reconstruction_err_, rel=1e-6)
    residual = vbsnmf.classic.factor_loss(X, W1, ours.components_, loss)
    assert ours.loss_ == pytest.approx(residual, rel=1e-9)
    expected = np.sqrt(residual if loss == "frobenius" else 2 * residual)
    assert ours.reconstruction_err_ == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "params, scale",
    [
        ({"loss": "alpha", "alpha": 100.0}, 1e3),
        ({"loss": "beta", "beta": 100.0}, 1e2),
        ({"solver": "hals"}, 1e155),
        ({"solver": "mu", "loss": "frobenius"}, 1e155),
        ({"solver": "pg"}, 1e155),
        ({"solver": "als"}, 1e155),
        ({"solver": "gd"}, 1e155),
    ],
)
def test_a_fit_that_leaves_the_float_range_raises(params, scale):
    """Values too large for the loss's power overflowed the factors: NaN came back in W,
    ``components_`` and ``loss_`` (ALS and GD raised numpy's LinAlgError; a hostile pass,
    2026-12-03). A typed error now, and the same data scaled down fits."""
    X = np.random.default_rng(0).poisson(1.0, (60, 40)).astype(np.float64)
    model = NMF(3, max_iter=50, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's overflow warnings on the way
        with pytest.raises(FloatingPointError, match="left the float range"):
            model.fit_transform(X * scale)
        W = model.fit_transform(X)
    assert np.all(np.isfinite(W)) and np.all(np.isfinite(model.components_))
    assert np.isfinite(model.loss_)
