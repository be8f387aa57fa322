"""Thirtieth hostile pass, the model and batch VB numerics.

Four defects of warm starts (``fit(X, init=...)``), each test failing on the code before
its fix: a start whose arrays are complex was taken in memory (numpy dropped the imaginary
parts with a ComplexWarning) where the same start as a dask array was refused; under the
learned prior a given ``cell_scale_prior_mean`` so small that the scales' prior rate a'/b'
overflowed (5e-324) failed in the first step's gauge with a bare ``ZeroDivisionError``; a
start whose q(z) has means beyond the float range (rates of 5e-324) was refused as "init
cell_scale_prior_mean must be positive and finite, got 0.0", a key never given, after a
numpy ``RuntimeWarning``; and a ragged list as a start's array gave numpy's
"inhomogeneous shape" error, naming no key. And a float32 fit run to an exact repeat of its
ELBO (``tol=0``) was told it "may have stopped early" and to use float64, on three counts.

The other tests are guards that pass on the code before the fixes too (the pass found no
defect there); each says so. They pin what the pass checked against an independent dense
numpy/scipy ELBO written from docs/model.md: the trace's last value is the exact ELBO of
the returned q on matrices with empty rows and columns, a count of 1e7, counts far below
one and K far above the data's rank, under both priors, plain and accelerated, and under
extreme fixed priors; every q a callback receives (SQUAREM's kept extrapolations too) has
its trace value as its ELBO; the trace never falls; one coordinate-ascent step from a start
whose responsibilities' normaliser underflows is model.md's step; 1 and 2 threads agree;
and ``converged_`` agrees with the trace, ``tol`` and the ``ConvergenceWarning``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.special import digamma, gammaln, logsumexp, softmax

from vbsnmf import VBNMF
from vbsnmf._model import ConvergenceWarning, warn_elbo_rounding


def _counts(n_rows=12, n_cols=9, seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(1, 1, (n_rows, 2)) @ rng.gamma(1, 1, (2, n_cols))).astype(float)


def _entropy(shape, rate):
    return shape - np.log(rate) + gammaln(shape) + (1 - shape) * digamma(shape)


def _dense_elbo(X, model, a=1.0, b=1.0):
    """model.md's ELBO of ``model``'s q, dense over every entry of ``X`` (float64). Under
    the learned prior each side's terms are grouped so that a q(z) entry at its prior
    shape (a row without counts, a_l near 1e-30) does not cancel two terms of 1e30."""
    cell_shape = model.cell_shape_.astype(float)
    gene_shape = model.gene_shape_.astype(float)
    cell_rate = np.broadcast_to(model.cell_rate_, cell_shape.shape).astype(float)
    gene_rate = np.broadcast_to(model.gene_rate_, gene_shape.shape).astype(float)
    log_cell = digamma(cell_shape) - np.log(cell_rate)
    log_gene = digamma(gene_shape) - np.log(gene_rate)
    data = sum(
        X[i, j] * logsumexp(log_cell[i] + log_gene[j]) - gammaln(X[i, j] + 1)
        for i, j in zip(*np.nonzero(X > 0))
    )
    total = ((cell_shape / cell_rate).sum(0) * (gene_shape / gene_rate).sum(0)).sum()
    hyper = model.hyperparameters_
    if hyper is None:

        def kl(shape, rate):
            return (
                (shape - a) * digamma(shape)
                - gammaln(shape)
                + gammaln(a)
                + a * (np.log(rate) - np.log(b))
                + shape * (b / rate - 1)
            ).sum()

        return data - total - kl(cell_shape, cell_rate) - kl(gene_shape, gene_rate)
    value = data - total
    for side, shape, rate in (("cell", cell_shape, cell_rate), ("gene", gene_shape, gene_rate)):
        scale_shape = getattr(model, f"{side}_scale_shape_").astype(float)
        scale_rate = getattr(model, f"{side}_scale_rate_").astype(float)
        factor = np.asarray(hyper[f"{side}_factor_shape"], float)
        prior_shape = float(hyper[f"{side}_scale_prior_shape"])
        prior_mean = float(hyper[f"{side}_scale_prior_mean"])
        scale_mean = scale_shape / scale_rate
        scale_log = digamma(scale_shape) - np.log(scale_rate)
        # p(z | xi) terms plus H[q(z)], (a_l - 1) E[log z] + (1 - al) digamma(al) grouped
        value += (
            factor * scale_log[:, None]
            - gammaln(factor)
            + gammaln(shape)
            + (factor - shape) * digamma(shape)
            - factor * np.log(rate)
            - scale_mean[:, None] * shape / rate
            + shape
        ).sum()
        value += (
            prior_shape * np.log(prior_shape / prior_mean)
            - gammaln(prior_shape)
            + (prior_shape - 1) * scale_log
            - prior_shape / prior_mean * scale_mean
        ).sum()
        value += _entropy(scale_shape, scale_rate).sum()
    return value


def _finite(model):
    arrays = [model.cell_shape_, model.cell_rate_, model.gene_shape_, model.gene_rate_]
    arrays += [model.components_, model.elbo_trace_]
    return all(np.isfinite(array).all() for array in arrays)


def _fit(X, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return VBNMF(**{"random_state": 0, "n_threads": 1, **options}).fit(X)


# -- the fixes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_a_complex_start_is_refused_in_memory_as_on_dask(prior):
    """Complex rates were cast to real in memory (imaginary parts dropped, numpy's
    ComplexWarning) and refused as a dask array; now refused alike, naming the key."""
    X = _counts()
    init = dict(
        cell_shape=np.ones((12, 3)), cell_rate=np.ones(3) + 5j,
        gene_shape=np.ones((9, 3)), gene_rate=np.ones(3),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning first
        with pytest.raises(TypeError, match="init cell_rate must hold real numbers"):
            VBNMF(3, prior=prior, max_iter=2, n_threads=1).fit(X, init=init)


@pytest.mark.parametrize("accelerate", [False, True])
def test_a_scale_prior_mean_whose_prior_rate_overflows_is_a_value_error(accelerate):
    """cell_scale_prior_mean=5e-324 (positive, finite) made a'/b' infinite; the first step's
    gauge divided by zero (a bare ZeroDivisionError). Now a ValueError naming the key."""
    X = _counts()
    ref = _fit(X, n_components=3, max_iter=20)
    init = dict(
        cell_shape=ref.cell_shape_, cell_rate=ref.cell_rate_, gene_shape=ref.gene_shape_,
        gene_rate=ref.gene_rate_, cell_scale_prior_mean=5e-324,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"init cell_scale_prior_mean=.* too small"):
        VBNMF(3, accelerate=accelerate, max_iter=5, n_threads=1).fit(X, init=init)
    # a small prior mean whose a'/b' is finite still fits, exactly (a guard)
    init["cell_scale_prior_mean"] = 1e-300
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = VBNMF(3, accelerate=accelerate, max_iter=5, n_threads=1).fit(X, init=init)
    assert _finite(model)
    assert model.elbo_trace_[-1] == pytest.approx(_dense_elbo(X, model), rel=1e-10)


def test_a_start_with_means_beyond_the_float_range_names_the_keys_given():
    """Rates of 5e-324 give means of q(z) of inf, and the start's derived b' was 0: refused
    as "init cell_scale_prior_mean must be positive and finite, got 0.0" (a key not given)
    after numpy's overflow RuntimeWarning. Now the keys given are named, without it."""
    X = _counts()
    init = dict(
        cell_shape=np.ones((12, 3)), cell_rate=np.full(3, 5e-324),
        gene_shape=np.ones((9, 3)), gene_rate=np.ones(3),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="init cell_shape / cell_rate give means") as error:
            VBNMF(3, max_iter=5, n_threads=1).fit(X, init=init)
    assert "cell_scale_prior_mean must be" not in str(error.value)


# -- guards (pass on the code before the fixes too) --------------------------------------------
def _edge_cases():
    base = _counts()
    empty = base.copy()
    empty[3] = 0
    empty[:, 4] = 0
    huge = base.copy()
    huge[2, 2] = 1e7
    return {"empty": empty, "huge": huge, "tiny": base * 0.001, "eye": np.eye(12, 9)}


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
@pytest.mark.parametrize("accelerate", [False, True])
def test_the_trace_ends_at_the_dense_elbo_of_the_returned_q(prior, accelerate):
    """A guard: on empty rows and columns, a count of 1e7, counts of 0.001 and the identity,
    at K = 2 and K = 8 (far above the data's rank 2), the last ELBO is the dense ELBO of the
    q returned and the trace never falls. Tolerance: 1e-10 relative, or 1e-15 of the
    largest count's lgamma(x + 1) where the ELBO is small beside its terms (the fit of 1e7
    ends at a' near 5e4, whose terms cancel to an ELBO near -2 on the counts of 0.001)."""
    for name, X in _edge_cases().items():
        for n_components in (2, 8):
            model = _fit(
                X, n_components=n_components, prior=prior, accelerate=accelerate, max_iter=150
            )
            assert _finite(model), (name, n_components)
            trace = model.elbo_trace_
            assert np.all(np.diff(trace) >= -1e-12 * abs(trace[-1])), (name, n_components)
            dense = _dense_elbo(X, model)
            slack = 1e-15 * (gammaln(X.max() + 1) + 1e4 * X.size)
            assert abs(trace[-1] - dense) <= max(1e-10 * abs(dense), slack), (
                name, n_components, trace[-1], dense,
            )  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_extreme_fixed_priors_fit_exactly_or_are_refused_by_name(dtype):
    """A guard: prior shapes 1e-30 and 1e6 with rates from 1e-300 to 1e300 fit to finite
    parameters whose dense ELBO is the trace's last value (float32 to 1e-6); rates beyond
    float32's range are refused with a ValueError naming prior_rate."""
    X = _counts()
    X[3] = 0
    X[:, 2] = 0
    limits = np.finfo(dtype)
    for shape in (1e-30, 1.0, 1e6):
        for rate in (1e-300, 1e-30, 1.0, 1e30, 1e300):
            options = dict(
                n_components=3, prior="gamma", prior_shape=shape, prior_rate=rate, dtype=dtype,
                max_iter=60,
            )  # fmt: skip
            if not float(limits.tiny) <= rate <= float(limits.max):
                with pytest.raises(ValueError, match="prior_rate must be at"):
                    _fit(X, **options)
                continue
            model = _fit(X, **options)
            assert _finite(model), (shape, rate)
            tolerance = 1e-10 if dtype == np.float64 else 1e-6
            dense = _dense_elbo(X, model, shape, rate)
            assert model.elbo_trace_[-1] == pytest.approx(dense, rel=tolerance), (shape, rate)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_step_from_a_start_whose_normalisers_underflow(dtype):
    """A guard: a start where exp(E[log z] + E[log w]) underflows for every component of
    most entries (the kernels' log-sum-exp fallback) takes model.md's step exactly."""
    rng = np.random.default_rng(0)
    X = rng.poisson(3, (6, 5)).astype(float)
    for tiny in (1e-3, 1e-30) + ((1e-200,) if dtype == np.float64 else ()):
        cell_shape = np.ones((6, 2))
        cell_shape[:, 1] = tiny
        cell_shape[0] = [tiny, 1.0]
        gene_shape = np.ones((5, 2))
        gene_shape[:, 0] = tiny
        init = dict(
            cell_shape=cell_shape, cell_rate=np.ones(2), gene_shape=gene_shape,
            gene_rate=np.ones(2),
        )  # fmt: skip
        model = VBNMF(2, prior="gamma", accelerate=False, max_iter=1, dtype=dtype, n_threads=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, init=init)
        log_cell, log_gene = digamma(cell_shape), digamma(gene_shape)
        phi = softmax(log_cell[:, None, :] + log_gene[None, :, :], axis=2)
        cell_alpha = 1 + (X[:, :, None] * phi).sum(1)
        gene_alpha = 1 + (X[:, :, None] * phi).sum(0)
        cell_beta = 1 + gene_shape.sum(0)
        gene_beta = 1 + (cell_alpha / cell_beta).sum(0)
        tolerance = 1e-12 if dtype == np.float64 else 1e-6
        for got, want in (
            (model.cell_shape_, cell_alpha), (model.gene_shape_, gene_alpha),
            (model.cell_rate_, cell_beta), (model.gene_rate_, gene_beta),
        ):  # fmt: skip
            np.testing.assert_allclose(got, want, rtol=tolerance)


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
@pytest.mark.parametrize("accelerate", [False, True])
def test_one_and_two_threads_agree(prior, accelerate):
    """A guard: a fit on 1 and on 2 threads agrees to 1e-10 relative (trace and
    components), and two 2-thread fits bit for bit."""
    rng = np.random.default_rng(1)
    X = rng.poisson(rng.gamma(0.5, 1, (200, 4)) @ rng.gamma(0.5, 2, (4, 80))).astype(float)
    X[5] = 0
    X[10, 10] = 1e6
    fits = [
        _fit(X, n_components=5, prior=prior, accelerate=accelerate, max_iter=40, n_threads=n)
        for n in (1, 2, 2)
    ]
    one, two, again = fits
    assert len(one.elbo_trace_) == len(two.elbo_trace_)
    np.testing.assert_allclose(two.elbo_trace_, one.elbo_trace_, rtol=1e-10)
    np.testing.assert_allclose(two.components_, one.components_, rtol=1e-8)
    assert np.array_equal(two.elbo_trace_, again.elbo_trace_)
    assert np.array_equal(two.cell_shape_, again.cell_shape_)


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
@pytest.mark.parametrize("accelerate", [False, True])
def test_converged_agrees_with_the_trace_tol_and_warning(prior, accelerate):
    """A guard: converged_ is True exactly when no ConvergenceWarning is given, a fit that
    did not converge ran max_iter passes, and a converged plain fit's last two ELBOs differ
    by at most tol (an accelerated fit's stopping rule compares a q with its plain step, the
    first of which may be the start, whose ELBO the trace does not hold)."""
    X = _counts(30, 20)
    for tol in (0.0, 1e-12, 1e-5, 0.5):
        for max_iter in (1, 2, 3, 5, 50):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = VBNMF(
                    3, prior=prior, accelerate=accelerate, tol=tol, max_iter=max_iter,
                    random_state=0, n_threads=1,
                ).fit(X)  # fmt: skip
            warned = any(issubclass(w.category, ConvergenceWarning) for w in caught)
            assert model.converged_ != warned, (tol, max_iter)
            assert model.n_iter_ <= max_iter
            if not model.converged_:
                assert model.n_iter_ == max_iter, (tol, max_iter)
            trace = model.elbo_trace_
            if model.converged_ and len(trace) >= 2:
                assert abs(trace[-1] - trace[-2]) <= tol * abs(trace[-2]), (tol, max_iter)
            if len(trace):
                assert trace[-1] == pytest.approx(_dense_elbo(X, model), rel=1e-10)


def test_a_ragged_start_names_its_key():
    """A ragged list as a start's array failed with numpy's "setting an array element with a
    sequence ... inhomogeneous shape", naming no key. Now a ValueError naming it."""
    X = _counts()
    init = dict(
        cell_shape=np.ones((12, 3)), cell_rate=[[1.0, 1.0], [1.0]],
        gene_shape=np.ones((9, 3)), gene_rate=np.ones(3),
    )  # fmt: skip
    with pytest.raises(ValueError, match="init cell_rate is a ragged sequence"):
        VBNMF(3, prior="gamma", max_iter=2, n_threads=1).fit(X, init=init)


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
@pytest.mark.parametrize("accelerate", [False, True])
def test_every_kept_q_has_its_trace_value_as_dense_elbo(prior, accelerate):
    """A guard: each q the callback receives (SQUAREM's kept extrapolations included) has
    the trace value given with it as its dense ELBO, and is not changed after the call."""
    from types import SimpleNamespace

    from vbsnmf._model import hyperparameters

    X = _counts(40, 25)
    seen = []

    def record(n_iter, params, trace):
        copies = [np.array(array, copy=True) for array in params.as_tuple()]
        seen.append((params, copies))
        fitted = SimpleNamespace(
            cell_shape_=copies[0], cell_rate_=copies[1], gene_shape_=copies[2],
            gene_rate_=copies[3], hyperparameters_=hyperparameters(params),
        )  # fmt: skip
        if params.row_scale is not None:
            fitted.cell_scale_shape_ = params.row_scale.shape
            fitted.cell_scale_rate_ = params.row_scale.rate
            fitted.gene_scale_shape_ = params.col_scale.shape
            fitted.gene_scale_rate_ = params.col_scale.rate
        assert trace[-1] == pytest.approx(_dense_elbo(X, fitted), rel=1e-12), n_iter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        VBNMF(3, prior=prior, accelerate=accelerate, max_iter=40, random_state=0, n_threads=1).fit(
            X, callback=record
        )
    assert len(seen) > 10
    for params, copies in seen:
        assert all(np.array_equal(a, b) for a, b in zip(params.as_tuple(), copies))


@pytest.mark.parametrize("accelerate", [False, True])
def test_a_float32_fit_run_to_an_exact_repeat_is_not_told_to_use_float64(accelerate):
    """tol=0 asks for the ELBO to repeat exactly, which only rounding ends: a float64 fit
    was exempt from the rounding warning, a float32 fit of three counts was told it "may
    have stopped early" and to use float64. Now neither dtype warns at tol=0."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = VBNMF(
            1, prior="gamma", dtype=np.float32, tol=0, accelerate=accelerate, max_iter=3000,
            random_state=0, n_threads=1,
        ).fit(np.array([[3.0]]))  # fmt: skip
    assert model.converged_
    assert not [str(w.message) for w in caught]
    # a tol finer than float32's rounding of these counts still warns (a guard)
    with pytest.warns(ConvergenceWarning, match="float32 holds this fit's ELBO"):
        warn_elbo_rounding([-5.0, -5.0], True, np.float32, 1e-9, 3.0, 3.0)
