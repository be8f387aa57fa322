"""A thirty-fourth hostile pass (2026-12-07) over `VBNTF`: each test of a fix failed on the
code before it; the guards pass on both and say so in their docstrings.

The defect: under the fixed prior, a tensor whose shortest mode is tied with another (5 x 5
x 2 x 2) was never checked against its dtype's range (`_model.fixed_prior_least_log_rate`
took no bound for a tie, supposing the tied modes share the scale at a k-th root). Coordinate
ascent does not go to that shared optimum: in each component one of the tied modes takes the
whole product over the longer modes, and a float32 fit at ``prior_rate=1e-20`` ended after
130 passes in a `FloatingPointError` blaming "a damaged checkpoint, an extreme start or
prior". The bound now takes the longer modes, and such a fit is refused before any pass.

The guards: a plain numpy coordinate ascent written from docs/model.md ("Tensors") against
the posterior means and the trace after a few iterations, on tensors with repeated and
unsorted coordinates and a mode of size 1; an empty tensor and a tensor of explicit zeros
fitted alike; a seed's fit repeated bit for bit; the parameters refused as `VBNMF` refuses
them.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.special import digamma, gammaln, logsumexp

import vbsnmf
from vbsnmf import _model, _tensor


def _counts(seed: int, shape: tuple[int, ...], mean: float = 0.7):
    """A Poisson(``mean``) tensor of ``shape`` as (coords, values)."""
    counts = np.random.default_rng(seed).poisson(mean, shape)
    coords = np.argwhere(counts)
    return coords, counts[tuple(coords.T)].astype(np.float64)


def _fit(model, coords, values, shape, callback=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(coords, values, shape, callback=callback)


# -- the fixed prior's range with a tie for the shortest mode ------------------------------
@pytest.mark.parametrize(
    "seed, shape, least",
    [
        # (3 / b)^2 above float32's 3.4e38: b below 3 / sqrt(3.4e38) = 1.63e-19
        (1, (5, 5, 2, 2), "1.63e-19"),
        # (7 / b)^2: b below 7 / sqrt(3.4e38) = 3.79e-19
        (1, (10, 10, 3, 3), "3.79e-19"),
    ],
)
@pytest.mark.parametrize("solver", ["batch", "svi"])
def test_a_tied_shortest_mode_beyond_float32_is_refused_before_any_pass(seed, shape, least, solver):
    """Before the fix, on 5 x 5 x 2 x 2 batch VB ended after 130 passes in a
    FloatingPointError blaming a damaged checkpoint, and SVI after 362 epochs in one
    advising to raise tau; on 10 x 10 x 3 x 3 both stopped at their limits unconverged,
    rates at 5e27 (batch) climbing towards (7 / b)^2 = 4.9e41."""
    coords, values = _counts(seed, shape)
    passes = []
    model = vbsnmf.VBNTF(
        2, prior_rate=1e-20, dtype=np.float32, random_state=0, n_threads=1, solver=solver
    )
    with pytest.raises(ValueError, match=f"raise prior_rate to at least {least}") as caught:
        _fit(model, coords, values, shape, callback=lambda *_: passes.append(1))
    assert passes == []
    assert not hasattr(model, "factors_")
    message = str(caught.value)
    assert "the rates of one of modes 2 and 3" in message
    assert "or fit with dtype=np.float64" in message
    assert "prior_rate^-2" in message  # the two longer modes, not D - 1 = 3


def test_the_tied_bound_is_the_product_over_the_longer_modes():
    prior = _model.GammaPrior(0.5, 1e-4)
    mode, log_bound = _model.fixed_prior_least_log_rate((6, 3, 3, 9), prior)
    assert mode == 1
    assert log_bound == pytest.approx(np.log(0.5 * 3 / 1e-4) + np.log(0.5 * 6 / 1e-4))
    # no longer mode (a cube, a square matrix): nothing to bound
    assert _model.fixed_prior_least_log_rate((4, 4, 4), prior)[1] == 0.0
    _model.check_fixed_prior_range((4, 4), _model.GammaPrior(1.0, 1e-300), np.float32)


@pytest.mark.parametrize("shape", [(5, 5, 2, 2), (8, 3, 3)])
@pytest.mark.parametrize("accelerate", [False, True])
def test_one_tied_mode_takes_the_longer_modes_scale(shape, accelerate):
    """Guard of the premise (passes on both): in converged float64 fits at b = 1e-8 each
    component's largest rate among the tied modes is at or above the product of a (n_d -
    n_m) / b over the longer modes (1.3 to 14 times it in the measured fits), not near its
    square root as the tie was thought to share it."""
    prior_rate = 1e-8
    coords, values = _counts(0, shape)
    model = vbsnmf.VBNTF(
        2, prior_rate=prior_rate, random_state=1, n_threads=1, max_iter=3000, tol=1e-10,
        accelerate=accelerate,
    )  # fmt: skip
    model = _fit(model, coords, values, shape)
    assert model.converged_
    shortest = min(shape)
    longer = np.prod([(n - shortest) / prior_rate for n in shape if n > shortest])
    tied = np.array([model.rates_[d] for d, n in enumerate(shape) if n == shortest])
    assert np.all(tied.max(axis=0) >= longer)
    assert np.all(tied.max(axis=0) <= 20 * longer)
    assert np.all(np.sort(tied, axis=0)[:-1] < 1e3)  # the others stay small


@pytest.mark.parametrize("shape", [(8, 3, 3), (6, 2, 2)])
def test_a_tie_whose_longer_modes_fit_in_float32_is_still_fitted(shape):
    """Guard (passes on both): 5 / b and 4 / b at b = 1e-30 fit in float32; the fit ends
    finite with the trace never falling."""
    coords, values = _counts(2, shape)
    model = vbsnmf.VBNTF(2, prior_rate=1e-30, dtype=np.float32, random_state=0, n_threads=1)
    model = _fit(model, coords, values, shape)
    assert all(np.all(np.isfinite(rate)) for rate in model.rates_)
    trace = model.elbo_trace_
    assert np.all(np.diff(trace) >= -1e-6 * np.abs(trace[1:]))


# -- a plain numpy coordinate ascent -------------------------------------------------------
def _numpy_ascent(coords, values, shape, shapes, rates, a, b, n_iter):
    """docs/model.md's fixed-prior iteration in numpy from q = (shapes, rates): the pass's
    responsibilities from the current q, every mode's shapes from it, then the rates mode
    by mode (the column sums of the modes before from their new q, after from their old).
    Returns the posterior means and the ELBO of each q before its step (the trace)."""
    shapes = [np.asarray(s, np.float64) for s in shapes]
    rates = [np.asarray(r, np.float64) for r in rates]
    n_modes, n_components = len(shape), shapes[0].shape[1]
    trace = []
    for _ in range(n_iter + 1):
        elog = [digamma(s) - np.log(r) for s, r in zip(shapes, rates)]
        logits = sum(elog[d][coords[:, d]] for d in range(n_modes))
        means = [s / r for s, r in zip(shapes, rates)]
        total = np.prod([m.sum(axis=0) for m in means], axis=0).sum()
        kl = sum(
            np.sum((s - a) * digamma(s) - gammaln(s) + gammaln(a) + a * (np.log(r) - np.log(b))
                   + s * (b - r) / r)
            for s, r in zip(shapes, rates)
        )  # fmt: skip
        data = np.sum(values * logsumexp(logits, axis=1) - gammaln(values + 1))
        trace.append(data - total - kl)
        if len(trace) > n_iter:
            break
        phi = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
        new_shapes = []
        for d in range(n_modes):
            stat = np.zeros((shape[d], n_components))
            np.add.at(stat, coords[:, d], values[:, None] * phi)
            new_shapes.append(a + stat)
        sums = [m.sum(axis=0) for m in means]
        for d in range(n_modes):
            others = np.prod([sums[e] for e in range(n_modes) if e != d], axis=0)
            rates[d] = b + others
            sums[d] = (new_shapes[d] / rates[d]).sum(axis=0)
        shapes = new_shapes
    return [s / r for s, r in zip(shapes, rates)], np.array(trace[1:])


@pytest.mark.parametrize("shape", [(5, 4, 3), (1, 6, 4), (7, 1, 5), (4, 3, 2, 2)])
@pytest.mark.parametrize("prior_shape, prior_rate", [(1.0, 1.0), (0.3, 2.0)])
def test_the_fit_is_numpys_coordinate_ascent_on_repeated_unsorted_entries(
    shape, prior_shape, prior_rate
):
    """Guard (passes on both): each count split over two repeated coordinates, shuffled;
    seven iterations from the fit's own start against the numpy ascent on the summed,
    sorted entries, factors and trace to 1e-12 relative."""
    rng = np.random.default_rng(sum(shape))
    coords, values = _counts(len(shape), shape, mean=0.8)
    half = np.floor(values / 2)
    repeated = np.concatenate([coords, coords])
    split = np.concatenate([half, values - half])
    order = rng.permutation(len(repeated))
    n_iter = 7
    model = vbsnmf.VBNTF(
        2, prior_shape=prior_shape, prior_rate=prior_rate, random_state=3, max_iter=n_iter,
        tol=0, n_threads=1,
    )  # fmt: skip
    model = _fit(model, repeated[order], split[order], shape)
    prior = _model.GammaPrior(prior_shape, prior_rate)
    data = _tensor.as_tensor_data(coords, values, shape)
    start = _tensor.random_start(data, 2, _model.seed_entropy(3), np.float64, 0, prior)
    means, trace = _numpy_ascent(
        coords, values, shape, start.shapes, start.rates, prior_shape, prior_rate, n_iter
    )
    for fitted, expected in zip(model.factors_, means):
        np.testing.assert_allclose(fitted, expected, rtol=1e-12)
    np.testing.assert_allclose(model.elbo_trace_, trace, rtol=1e-12)
    assert np.all(np.diff(model.elbo_trace_) >= 0)


# -- an empty tensor and explicit zeros ----------------------------------------------------
@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
@pytest.mark.parametrize("solver", ["batch", "svi"])
def test_an_empty_tensor_and_explicit_zeros_fit_alike(prior, solver):
    """Guard (passes on both): no entries, and two entries of count 0, with the same shape:
    the same fit bit for bit, finite."""
    options = dict(prior=prior, solver=solver, random_state=0, max_iter=20, n_epochs=2)
    empty = _fit(
        vbsnmf.VBNTF(2, n_threads=1, **options), np.empty((0, 3), int), np.empty(0), (4, 3, 2)
    )
    zeros = _fit(
        vbsnmf.VBNTF(2, n_threads=1, **options), np.array([[0, 0, 0], [3, 2, 1]]), [0, 0],
        (4, 3, 2),
    )  # fmt: skip
    for a, b in zip(empty.factors_, zeros.factors_):
        assert np.array_equal(a, b)
        assert np.all(np.isfinite(a))
    assert np.array_equal(empty.elbo_trace_, zeros.elbo_trace_)


def test_the_nonzeros_form_refuses_a_tensor_without_counts():
    """Guard (passes on both)."""
    model = vbsnmf.VBNTF(2, solver="svi", svi_form="nonzeros")
    with pytest.raises(ValueError, match="hold no nonzero"):
        model.fit(np.array([[0, 0, 0]]), [0], (4, 3, 2))


# -- reproducibility and parameters ---------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"prior": "hierarchical"},
        {"solver": "svi"},
        {"solver": "svi", "prior": "hierarchical"},
        {"solver": "svi", "svi_form": "nonzeros"},
        {"n_init": 2},
        {"dtype": np.float32},
    ],
)
def test_a_seed_gives_the_same_fit(options):
    """Guard (passes on both): an integer seed, and a fresh Generator of it, twice; the
    trace never falls and the factors keep the dtype."""
    coords, values = _counts(4, (8, 6, 5))

    def fit(seed):
        model = vbsnmf.VBNTF(3, random_state=seed, max_iter=25, n_epochs=3, **options)
        return _fit(model, coords, values, None)

    for make in (lambda: 5, lambda: np.random.default_rng(5)):
        first, second = fit(make()), fit(make())
        for a, b in zip(first.factors_, second.factors_):
            assert np.array_equal(a, b)
            assert a.dtype == np.dtype(options.get("dtype", np.float64))
        assert np.array_equal(first.elbo_trace_, second.elbo_trace_)
        assert np.all(np.diff(first.elbo_trace_) >= 0)


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"n_components": 0}, ValueError, "n_components must be >= 1"),
        ({"n_components": 2.0}, TypeError, "n_components must be an integer"),
        ({"max_iter": -1}, ValueError, "max_iter must be >= 0"),
        ({"tol": float("nan")}, ValueError, "tol must be a finite number"),
        ({"tol": "1e-3"}, TypeError, "tol must be a number"),
        ({"random_state": -1}, ValueError, "random_state must be non-negative"),
        ({"random_state": 1.5}, TypeError, "random_state must be None"),
        ({"dtype": np.float16}, ValueError, "dtype must be np.float32 or np.float64"),
        ({"prior_shape": 0}, ValueError, "prior_shape must be a positive finite number"),
        ({"prior_rate": float("inf")}, ValueError, "prior_rate must be a positive finite"),
        ({"prior": "hierarchical", "prior_rate": 1.0}, ValueError, "prior_rate applies to"),
        ({"prior": "Gamma"}, ValueError, "prior must be 'gamma' or 'hierarchical'"),
        ({"n_init": 0}, ValueError, "n_init must be >= 1"),
        ({"accelerate": "yes"}, TypeError, "accelerate must be True, False or None"),
        ({"solver": "svi", "svi_mode": 3}, ValueError, "svi_mode must be below"),
    ],
)
def test_parameters_are_refused_by_name(options, error, match):
    """Guard (passes on both): refused before any pass, the estimator left unfitted."""
    coords, values = _counts(5, (4, 3, 2))
    model = vbsnmf.VBNTF(**{"n_components": 2, **options})
    with pytest.raises(error, match=match):
        model.fit(coords, values, (4, 3, 2))
    assert not hasattr(model, "factors_")
