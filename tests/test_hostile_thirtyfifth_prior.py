"""Thirty-fifth hostile pass: the learned prior (hierarchical Gamma priors) and the prior
options.

Defects, each test failing on the code before its fix: a start whose ELBO is -inf (a
cell's means beyond the float range, or a scale prior rate a'/b' that underflows to 0)
made SQUAREM stop "converged" after one step with a one-value trace, far below the plain
ascent's fit (the stopping rule compared the start's -inf with its plain step, and
``|v - (-inf)| <= tol * inf`` holds); such an underflowing a'/b' was taken from a start,
where its overflowing twin is refused by name; and ``prior_shape=0.3`` came out of SQUAREM
as 0.29999999999999993 (``exp(log 0.3)``, the fixed shapes extrapolated with the learned
hyperparameters), in ``hyperparameters_`` and in `tl.nmf`'s record.

The other tests are guards that pass on the code before the fixes too; each says so. The
reference is an independent dense numpy/scipy implementation of docs/model.md's learned
prior: one full iteration (q(z), q(xi), q(w), q(eta), empirical Bayes, the gauge) and the
ELBO, to 1e-10.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import brentq
from scipy.special import digamma, gammaln

from vbsnmf import VBNMF

FIT_KEYS = ("cell_shape", "cell_rate", "gene_shape", "gene_rate")


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter's ConvergenceWarning
        return call(*args, **kwargs)


def _counts(n_cells=14, n_genes=9, seed=0):
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1.5, 1, (n_cells, 3)) @ rng.gamma(0.6, 1, (3, n_genes))
    return rng.poisson(rates).astype(float)


# -- the reference: docs/model.md's learned prior written in dense numpy --------------------
def _inverse_digamma(y):
    """x with digamma(x) = y, by bisection on a log scale (no Newton, unlike the code)."""
    return np.array([brentq(lambda x, v=v: digamma(x) - v, 1e-40, 1e12, xtol=1e-300,
                            rtol=1e-15, maxiter=500) for v in np.atleast_1d(y)])  # fmt: skip


def _shape_mle(gap):
    """a' with log a' - digamma(a') = gap (> 0)."""
    return brentq(lambda a: np.log(a) - digamma(a) - gap, 1e-30, 1e6, xtol=1e-300, rtol=1e-15)


def _reference_step(X, q):
    """One iteration of docs/model.md's "Learned priors" (steps 1-7), dense."""
    zs, zr, ws, wr = (q[k] for k in FIT_KEYS)
    a, a1, b1 = q["cell_factor_shape"], q["cell_scale_prior_shape"], q["cell_scale_prior_mean"]
    c, c1, d1 = q["gene_factor_shape"], q["gene_scale_prior_shape"], q["gene_scale_prior_mean"]
    xi_mean = q["cell_scale_shape"] / q["cell_scale_rate"]
    eta_mean = q["gene_scale_shape"] / q["gene_scale_rate"]
    log_z = digamma(zs) - np.log(zr)
    log_w = digamma(ws) - np.log(wr)
    # 1: phi at its optimum, the shape statistics
    weights = np.exp(log_z[:, None, :] + log_w[None, :, :])  # cells x genes x K
    phi = weights / weights.sum(axis=2, keepdims=True)
    stat_z = np.einsum("ij,ijl->il", X, phi)
    stat_w = np.einsum("ij,ijl->jl", X, phi)
    # 2: q(z), the current q(w)
    zs = a + stat_z
    zr = xi_mean[:, None] + (ws / wr).sum(axis=0)[None, :]
    # 3: q(xi)
    xi_s = np.full(X.shape[0], a1 + a.sum())
    xi_r = a1 / b1 + (zs / zr).sum(axis=1)
    # 4: q(w), the new q(z)
    ws = c + stat_w
    wr = eta_mean[:, None] + (zs / zr).sum(axis=0)[None, :]
    # 5: q(eta)
    eta_s = np.full(X.shape[1], c1 + c.sum())
    eta_r = c1 / d1 + (ws / wr).sum(axis=1)
    # 6: empirical Bayes
    hyper = {}
    for side, fs, fr, ss, sr in (("cell", zs, zr, xi_s, xi_r), ("gene", ws, wr, eta_s, eta_r)):
        mean_scale, log_scale = ss / sr, digamma(ss) - np.log(sr)
        prior_mean = mean_scale.mean()
        prior_shape = _shape_mle(np.log(prior_mean) - log_scale.mean())
        factor_log = digamma(fs) - np.log(fr)
        factor_shape = _inverse_digamma((factor_log + log_scale[:, None]).mean(axis=0))
        hyper[side] = (factor_shape, prior_shape, prior_mean)
    # 7: the gauge, s = sqrt(b' / d'): z -> s z, xi -> xi / s, w -> w / s, eta -> s eta
    s = np.sqrt(hyper["cell"][2] / hyper["gene"][2])
    common = np.sqrt(hyper["cell"][2] * hyper["gene"][2])
    return {
        "cell_shape": zs, "cell_rate": zr / s, "gene_shape": ws, "gene_rate": wr * s,
        "cell_scale_shape": xi_s, "cell_scale_rate": xi_r * s,
        "gene_scale_shape": eta_s, "gene_scale_rate": eta_r / s,
        "cell_factor_shape": hyper["cell"][0], "cell_scale_prior_shape": hyper["cell"][1],
        "cell_scale_prior_mean": common,
        "gene_factor_shape": hyper["gene"][0], "gene_scale_prior_shape": hyper["gene"][1],
        "gene_scale_prior_mean": common,
    }  # fmt: skip


def _entropy(shape, rate):
    return shape - np.log(rate) + gammaln(shape) + (1 - shape) * digamma(shape)


def _reference_elbo(X, q):
    """docs/model.md's ELBO of the learned prior, dense."""
    zs, zr, ws, wr = (q[k] for k in FIT_KEYS)
    log_z = digamma(zs) - np.log(zr)
    log_w = digamma(ws) - np.log(wr)
    rows, cols = np.nonzero(X)
    x = X[rows, cols]
    log_sum = np.log(np.exp(log_z[rows] + log_w[cols]).sum(axis=1))
    value = float(np.sum(x * log_sum - gammaln(x + 1)))
    value -= float(((zs / zr).sum(axis=0) * (ws / wr).sum(axis=0)).sum())
    for side, fs, fr in (("cell", zs, zr), ("gene", ws, wr)):
        a, a1, b1 = (q[f"{side}_{k}"] for k in ("factor_shape", "scale_prior_shape",
                                                 "scale_prior_mean"))  # fmt: skip
        ss, sr = q[f"{side}_scale_shape"], q[f"{side}_scale_rate"]
        mean_scale, log_scale = ss / sr, digamma(ss) - np.log(sr)
        factor_log = digamma(fs) - np.log(fr)
        value += float(np.sum(a * log_scale[:, None] - gammaln(a) + (a - 1) * factor_log
                              - mean_scale[:, None] * fs / fr))  # fmt: skip
        value += float(np.sum(a1 * np.log(a1 / b1) - gammaln(a1) + (a1 - 1) * log_scale
                              - a1 / b1 * mean_scale))  # fmt: skip
        value += float(_entropy(fs, fr).sum() + _entropy(ss, sr).sum())
    return value


def _start(X, K=3, seed=1):
    """A start with every array and hyperparameter of the learned prior given."""
    rng = np.random.default_rng(seed)
    n_cells, n_genes = X.shape
    return {
        "cell_shape": rng.uniform(0.5, 2, (n_cells, K)),
        "cell_rate": rng.uniform(0.5, 2, (n_cells, K)),
        "gene_shape": rng.uniform(0.5, 2, (n_genes, K)),
        "gene_rate": rng.uniform(0.5, 2, (n_genes, K)),
        "cell_scale_shape": rng.uniform(1, 3, n_cells),
        "cell_scale_rate": rng.uniform(1, 3, n_cells),
        "gene_scale_shape": rng.uniform(1, 3, n_genes),
        "gene_scale_rate": rng.uniform(1, 3, n_genes),
        "cell_factor_shape": rng.uniform(0.3, 2, K),
        "cell_scale_prior_shape": 1.7,
        "cell_scale_prior_mean": 0.8,
        "gene_factor_shape": rng.uniform(0.3, 2, K),
        "gene_scale_prior_shape": 0.6,
        "gene_scale_prior_mean": 2.5,
    }


def _fitted(model):
    fitted = {k: getattr(model, k + "_") for k in FIT_KEYS}
    for side in ("cell", "gene"):
        fitted[f"{side}_scale_shape"] = getattr(model, f"{side}_scale_shape_")
        fitted[f"{side}_scale_rate"] = getattr(model, f"{side}_scale_rate_")
    fitted.update(model.hyperparameters_)
    return fitted


@pytest.mark.parametrize("empty", [False, True])
def test_one_learned_iteration_and_its_elbo_against_numpy(empty):
    """Guard (passes on the base code too): one plain iteration of a warm start under the
    learned prior (every q and hyperparameter given) equals docs/model.md's steps 1-7
    written in dense numpy/scipy (root finding by bisection, not the code's Newton), and
    the reported ELBO the page's ELBO of the new q, to 1e-10; also with an empty cell and
    an empty gene."""
    X = _counts()
    if empty:
        X[3] = 0.0
        X[:, 5] = 0.0
    start = _start(X)
    model = _quiet(VBNMF(3, max_iter=1, accelerate=False).fit, sp.csr_array(X), init=start)
    expected = _reference_step(X, start)
    got = _fitted(model)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-10, err_msg=key)
    assert model.elbo_trace_.shape == (1,)
    assert model.elbo_trace_[0] == pytest.approx(_reference_elbo(X, expected), rel=1e-10)
    # the start's own ELBO is below (coordinate ascent)
    assert _reference_elbo(X, start) < model.elbo_trace_[0]


def test_two_iterations_with_fixed_factor_shapes_against_numpy():
    """Guard: ``prior_shape=0.3`` (scHPF's) fixes a_l and c_l; two plain iterations against
    the reference with the factor shapes held at 0.3, ELBO to 1e-10."""
    X = _counts(seed=3)
    start = _start(X, seed=4)
    start["cell_factor_shape"] = np.full(3, 0.3)
    start["gene_factor_shape"] = np.full(3, 0.3)
    model = _quiet(
        VBNMF(3, prior_shape=0.3, max_iter=2, accelerate=False).fit, sp.csr_array(X), init=start
    )
    q = start
    values = []
    for _ in range(2):
        q = _reference_step(X, q)
        q["cell_factor_shape"] = np.full(3, 0.3)
        q["gene_factor_shape"] = np.full(3, 0.3)
        values.append(_reference_elbo(X, q))
    got = _fitted(model)
    for key in FIT_KEYS:
        np.testing.assert_allclose(got[key], q[key], rtol=1e-10, err_msg=key)
    np.testing.assert_allclose(model.elbo_trace_, values, rtol=1e-10)


# -- 1: a start whose ELBO is -inf, and SQUAREM's stopping rule -------------------------------
def _overflowing_start(n_cells, n_genes, K=3):
    """A start whose cell means (1e307) overflow the ELBO's total term: its ELBO is -inf."""
    return {
        "cell_shape": np.ones((n_cells, K)),
        "cell_rate": np.full(K, 1e-307),
        "gene_shape": np.ones((n_genes, K)),
        "gene_rate": np.ones(K),
    }


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_squarem_from_a_start_of_infinite_elbo_does_not_stop_at_once(prior):
    """SQUAREM's stopping rule compares a start with its plain step; from a start whose
    ELBO is -inf, ``|v - (-inf)| <= tol * inf`` held, and the fit stopped after one step
    with ``converged_=True``, a one-value trace and an ELBO far below the plain ascent's
    (fixed prior: -2027.2 against -1942.9 on these counts). It now goes on, as the plain
    ascent does (which never compares the start), and ends at least as high."""
    X = sp.csr_array(np.random.default_rng(0).poisson(0.5, (60, 30)).astype(float))
    start = _overflowing_start(*X.shape)
    plain = _quiet(VBNMF(3, prior=prior, accelerate=False, max_iter=300).fit, X, init=start)
    fast = _quiet(VBNMF(3, prior=prior, accelerate=True, max_iter=300).fit, X, init=start)
    assert len(fast.elbo_trace_) > 1
    assert fast.converged_ and plain.converged_
    assert np.all(np.diff(fast.elbo_trace_) >= 0)
    assert fast.elbo_trace_[-1] >= plain.elbo_trace_[-1] - 1e-3 * abs(plain.elbo_trace_[-1])


def test_stopping_rule_takes_no_change_from_a_non_finite_elbo():
    """The rule itself: an earlier ELBO of -inf (or NaN) is no measured change, so not
    converged, at any tol; finite values keep the rule."""
    from vbsnmf._model import has_converged

    assert not has_converged([-np.inf, -10.0], 1e-5)
    assert not has_converged([-np.inf, -10.0], np.inf)
    assert not has_converged([np.nan, -10.0], 1e-5)
    assert has_converged([-10.0, -10.00001], 1e-5)
    assert not has_converged([-10.0, -9.0], 1e-5)
    assert not has_converged([-10.0], 1e-5)


def test_scale_prior_rate_underflowing_to_zero_is_refused_by_name():
    """A start's gene_scale_prior_mean so large that c'/d' underflows to 0 (1e300 with
    gene_scale_prior_shape=1e-30) was taken: an improper prior whose start's ELBO is -inf,
    from which SQUAREM stopped after one step. Refused now, as its overflowing twin is,
    naming both keys; a large but representable rate is still taken."""
    X = _counts(40, 20)
    model = _quiet(VBNMF(3, max_iter=20, random_state=0).fit, X)
    start = {k: getattr(model, k + "_") for k in FIT_KEYS}
    for side in ("cell", "gene"):
        given = dict(start)
        given[f"{side}_scale_prior_mean"] = 1e300
        given[f"{side}_scale_prior_shape"] = 1e-30
        expected = (
            f"init {side}_scale_prior_mean=1e\\+300 is too large for "
            f"{side}_scale_prior_shape=1e-30.*underflows to 0"
        )
        with pytest.raises(ValueError, match=expected):
            _quiet(VBNMF(3, max_iter=5).fit, X, init=given)
    # a'/b' = 1e-300, tiny but not 0: a valid start, fitted
    given = dict(start, gene_scale_prior_mean=1e300, gene_scale_prior_shape=1.0)
    fitted = _quiet(VBNMF(3, max_iter=5, accelerate=False).fit, X, init=given)
    assert np.all(np.isfinite(fitted.elbo_trace_)) and np.all(np.diff(fitted.elbo_trace_) >= 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fixed_factor_shapes_stay_exact_under_squarem(dtype):
    """``prior_shape=0.3`` fixes a_l and c_l, but SQUAREM extrapolated them in log space
    with the learned hyperparameters, and exp(log 0.3) is 0.29999999999999993: the fit's
    ``hyperparameters_`` (and a kept q's ELBO) held that, not 0.3. An entry both plain
    steps leave as it is now stays bit for bit; the trace still never falls."""
    rng = np.random.default_rng(0)
    X = rng.poisson(rng.gamma(1, 1, (150, 1)) * rng.gamma(1, 1, (1, 40))).astype(float)
    model = _quiet(VBNMF(3, prior_shape=0.3, dtype=dtype, random_state=0, max_iter=60).fit, X)
    assert len(model.elbo_trace_) < model.n_iter_  # extrapolated steps were kept
    for side in ("cell", "gene"):
        np.testing.assert_array_equal(model.hyperparameters_[f"{side}_factor_shape"], 0.3)
    assert np.all(np.diff(model.elbo_trace_) >= 0)


def test_fixed_factor_shapes_stay_exact_in_the_stored_record(pbmc_tiny):
    """The same through `tl.nmf`: ``.uns['nmf']['variational']`` records a_l and c_l of
    exactly the ``prior_shape`` its ``params`` record."""
    import vbsnmf

    adata = pbmc_tiny[:200, :150].copy()
    adata = adata[np.asarray(adata.X.sum(axis=1)).ravel() > 0].copy()
    _quiet(vbsnmf.tl.nmf, adata, 3, random_state=0, prior_shape=0.3, max_iter=30)
    record = adata.uns["nmf"]
    assert record["params"]["prior_shape"] == 0.3
    for side in ("cell", "gene"):
        np.testing.assert_array_equal(record["variational"][f"{side}_factor_shape"], 0.3)


# -- 2: the ELBO under the learned prior on real and adversarial data (guards) ---------------
@pytest.mark.parametrize("accelerate", [False, True])
def test_learned_prior_elbo_never_falls_on_pbmc_tiny(pbmc_tiny, accelerate):
    """Guard: the learned prior's trace on pbmc_tiny (1,107 cells, K = 6) never decreases,
    plain or SQUAREM, float64; every hyperparameter positive and finite, the factor shapes
    and a', c' within [1e-30, 1e6], and the gauge's b' = d'."""
    X = sp.csr_array(pbmc_tiny.X)
    model = _quiet(VBNMF(6, random_state=0, accelerate=accelerate, max_iter=60).fit, X)
    trace = model.elbo_trace_
    assert np.all(np.isfinite(trace)) and np.all(np.diff(trace) >= 0)
    hyper = model.hyperparameters_
    for key, value in hyper.items():
        assert np.all(np.isfinite(value)) and np.all(np.asarray(value) > 0), key
        if "shape" in key:
            assert np.all(np.asarray(value) <= 1e6) and np.all(np.asarray(value) >= 1e-30)
    assert hyper["cell_scale_prior_mean"] == hyper["gene_scale_prior_mean"]


def _one_huge_cell():
    rng = np.random.default_rng(0)
    X = rng.poisson(0.3, (200, 60)).astype(float)
    X[7] = rng.poisson(1e5, 60)
    return X


def _equal_columns():
    rng = np.random.default_rng(0)
    return np.tile(rng.poisson(2.0, (200, 1)), (1, 40)).astype(float)


@pytest.mark.parametrize("data", [_one_huge_cell, _equal_columns, lambda: np.full((100, 30), 3.0)])
@pytest.mark.parametrize("accelerate", [False, True])
def test_learned_prior_elbo_never_falls_on_adversarial_counts(data, accelerate):
    """Guard: one cell of 6e6 counts among cells of 18, columns all equal (rank one), and
    every count equal: the trace never decreases, its last value is the dense numpy
    ELBO of the returned q (to 1e-10), and the result is finite. On the last two the
    scales' prior shape c' is held at 1e6 (rows all alike)."""
    X = data()
    model = _quiet(VBNMF(4, random_state=0, accelerate=accelerate, max_iter=150).fit, X)
    trace = model.elbo_trace_
    assert np.all(np.isfinite(trace)) and np.all(np.diff(trace) >= 0)
    assert np.all(np.isfinite(model.components_))
    assert trace[-1] == pytest.approx(_reference_elbo(X, _fitted(model)), rel=1e-10)


# -- 3: what .uns records of the learned prior, warm starts, checkpoints (guards) -----------
@pytest.mark.parametrize(
    "options",
    [
        {"max_iter": 30},
        {"max_iter": 30, "prior_shape": 0.3},
        {"max_iter": 30, "accelerate": False},
        {"solver": "svi", "n_epochs": 2},
    ],
    ids=["squarem", "prior_shape", "plain", "svi"],
)
def test_stored_record_scores_its_own_last_elbo_and_continues(pbmc_tiny, options):
    """Guard: the q and hyperparameters `tl.nmf` stores (read back as a warm start reads
    them) score, by the dense numpy ELBO of docs/model.md, the trace's last value to 1e-12
    (SQUAREM, whose last kept q may be extrapolated; fixed factor shapes; plain; SVI), and
    a warm start continues that trace without a fall; ``variational`` holds the prior's
    name and ``params`` the ``prior_shape`` given."""
    import vbsnmf
    from vbsnmf.tl._stored import variational_params

    adata = pbmc_tiny[:200, :150].copy()
    adata = adata[np.asarray(adata.X.sum(axis=1)).ravel() > 0].copy()
    X = np.asarray(adata.X.todense(), dtype=np.float64)
    _quiet(vbsnmf.tl.nmf, adata, 3, random_state=0, **options)
    record = adata.uns["nmf"]
    assert record["variational"]["prior"] == "hierarchical"
    assert record["params"].get("prior_shape") == options.get("prior_shape")
    trace = np.array(record["elbo_trace"])
    stored = variational_params(adata, "nmf")
    assert trace[-1] == pytest.approx(_reference_elbo(X, stored), rel=1e-12)
    _quiet(vbsnmf.tl.nmf, adata, 3, random_state=0, warm_start=True, **options)
    continued = np.array(adata.uns["nmf"]["elbo_trace"])
    np.testing.assert_array_equal(continued[: len(trace)], trace)
    assert len(continued) > len(trace) and np.all(np.diff(continued) >= 0)


@pytest.mark.parametrize(
    "first, second, named",
    [
        ({}, {"prior_shape": 0.3}, "'hierarchical' vs now 'hierarchical' (prior_shape=0.3)"),
        ({"prior_shape": 0.3}, {}, "'hierarchical' (prior_shape=0.3) vs now 'hierarchical')"),
        ({"prior_shape": 0.3}, {"prior_shape": 0.5}, "(prior_shape=0.5)"),
        ({}, {"prior": "gamma"}, "now 'gamma' (prior_shape=1.0, prior_rate=1.0)"),
    ],
)
def test_resume_under_another_prior_is_refused_naming_it(tmp_path, first, second, named):
    """Guard: a checkpoint of the learned prior resumed under other factor shapes (or
    the fixed prior) is refused before any pass, naming both priors; under its own it
    resumes."""
    from vbsnmf import CheckpointMismatchError

    X = _counts(50, 20)
    path = tmp_path / "fit.npz"
    _quiet(VBNMF(3, random_state=0, max_iter=4, checkpoint=path, **first).fit, X)
    model = VBNMF(3, random_state=0, max_iter=8, checkpoint=path, resume=True, **second)
    with pytest.raises(CheckpointMismatchError, match="prior: checkpoint") as error:
        _quiet(model.fit, X)
    assert named in str(error.value)
    resumed = _quiet(
        VBNMF(3, random_state=0, max_iter=8, checkpoint=path, resume=True, **first).fit, X
    )
    assert np.all(np.diff(resumed.elbo_trace_) >= 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_project_is_transform_under_fixed_factor_shapes(pbmc_tiny, dtype):
    """Guard: `tl.project` onto a learned-prior reference with ``prior_shape=0.3`` gives
    `VBNMF.transform`'s factors of the same fit (to 1e-6: tl.nmf's arrays pass through
    .uns), so the fixed factor shapes reach the projection's local fits."""
    import vbsnmf

    reference = pbmc_tiny[:250].copy()
    _quiet(vbsnmf.tl.nmf, reference, 3, random_state=0, prior_shape=0.3, dtype=dtype,
           max_iter=40)  # fmt: skip
    model = _quiet(
        VBNMF(3, random_state=0, prior_shape=0.3, dtype=dtype, max_iter=40).fit,
        sp.csr_array(reference.X),
    )
    new = pbmc_tiny[250:400].copy()
    new = new[np.asarray(new.X.sum(axis=1)).ravel() > 0].copy()
    _quiet(vbsnmf.tl.project, new, reference)
    model.set_params(max_iter=200)  # tl.project's local fits run its default max_iter=200
    np.testing.assert_allclose(new.obsm["X_nmf"], _quiet(model.transform, new.X), rtol=1e-6)
