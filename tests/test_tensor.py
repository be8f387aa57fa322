"""Poisson tensor factorisation (`vbsnmf.VBNTF`, `vbsnmf._tensor`): against a dense numpy
computation, the matrix engine at D = 2, its properties, recovery, input, checkpoints, SVI."""

from __future__ import annotations

import json
import warnings
from functools import partial

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats
from scipy.optimize import linear_sum_assignment
from scipy.special import digamma, gammaln, logsumexp
from traced import traced_peak

import vbsnmf
from vbsnmf import _batch, _checkpoint, _model, _tensor
from vbsnmf._data import as_count_data
from vbsnmf._utils import numba_threads

LETTERS = "ijkmn"


# -- an independent dense computation -----------------------------------------------------
def _dense(coords, values, shape):
    tensor = np.zeros(shape)
    np.add.at(tensor, tuple(np.asarray(coords).T), values)
    return tensor


def _mean_tensor(means):
    """``sum_l prod_d means[d][i_d, l]`` over the full grid (small tensors only)."""
    subscripts = ",".join(f"{LETTERS[d]}l" for d in range(len(means)))
    return np.einsum(f"{subscripts}->{LETTERS[: len(means)]}", *means)


def _log_rho(tensor, shapes, rates):
    nonzero = np.nonzero(tensor)
    log_rho = sum(
        digamma(shape)[index] - np.log(rate) for shape, rate, index in zip(shapes, rates, nonzero)
    )
    return nonzero, log_rho  # (nnz, K)


def _gamma_kl(shape, rate, a, b):
    """KL(q || Gamma(a, b)) = -H(q) - E_q[log p], through scipy's entropy."""
    rate = np.broadcast_to(rate, shape.shape)
    entropy = stats.gamma(a=shape, scale=1.0 / rate).entropy()
    elog = digamma(shape) - np.log(rate)
    elog_prior = a * np.log(b) - gammaln(a) + (a - 1) * elog - b * shape / rate
    return float(np.sum(-entropy - elog_prior))


def reference_elbo(tensor, shapes, rates, a, b):
    nonzero, log_rho = _log_rho(tensor, shapes, rates)
    counts = tensor[nonzero]
    data = np.sum(counts * logsumexp(log_rho, axis=1) - gammaln(counts + 1))
    total = _mean_tensor([s / r for s, r in zip(shapes, rates)]).sum()  # every entry, dense
    kl = sum(_gamma_kl(s, r, a, b) for s, r in zip(shapes, rates))
    return data - total - kl


def reference_iteration(tensor, shapes, rates, a, b):
    """phi for every nonzero, shapes by np.add.at, then the rates mode by mode, each from
    a dense sum over every index of the other modes (new means before it, old after)."""
    nonzero, log_rho = _log_rho(tensor, shapes, rates)
    phi = np.exp(log_rho - logsumexp(log_rho, axis=1, keepdims=True))
    weighted = tensor[nonzero][:, None] * phi
    new_shapes = []
    for d, shape in enumerate(shapes):
        new = np.full_like(shape, a)
        np.add.at(new, nonzero[d], weighted)
        new_shapes.append(new)
    means = [s / r for s, r in zip(shapes, rates)]
    new_rates = []
    for d in range(len(shapes)):
        others = [means[e] for e in range(len(shapes)) if e != d]
        subscripts = ",".join(f"{LETTERS[e]}l" for e in range(len(others)))
        new_rates.append(b + np.einsum(f"{subscripts}->l", *others))
        means[d] = new_shapes[d] / new_rates[d]
    return new_shapes, new_rates


def _small_tensor(shape, density, seed, empty_slice=True):
    rng = np.random.default_rng(seed)
    tensor = rng.poisson(2.0, shape) * (rng.random(shape) < density)
    if empty_slice:
        tensor[1] = 0  # an empty slice of mode 0
        tensor[(slice(None),) * (len(shape) - 1) + (0,)] = 0  # and of the last mode
    coords = np.argwhere(tensor)
    return tensor.astype(float), coords, tensor[tuple(coords.T)].astype(float)


def _random_params(shape, k, seed):
    rng = np.random.default_rng(seed)
    shapes = [rng.uniform(0.5, 3.0, (n, k)) for n in shape]
    rates = [rng.uniform(0.5, 2.0, k) for _ in shape]
    return _tensor.TensorParams(shapes, rates)


TENSORS = {"D3": ((7, 5, 4), 0.4), "D4": ((5, 4, 3, 6), 0.3), "D2": ((9, 6), 0.5)}


@pytest.mark.parametrize("name", list(TENSORS))
@pytest.mark.parametrize("n_chunks", [1, 2, 3])
def test_elbo_matches_dense_numpy(name, n_chunks):
    shape, density = TENSORS[name]
    tensor, coords, values = _small_tensor(shape, density, seed=1)
    params = _random_params(shape, 3, seed=2)
    data = _tensor.as_tensor_data(coords, values, shape)
    prior = _model.GammaPrior(0.7, 1.3)
    got = _tensor.elbo(data, params, prior, n_chunks)
    expected = reference_elbo(tensor, params.shapes, params.rates, 0.7, 1.3)
    np.testing.assert_allclose(got, expected, rtol=1e-11)


@pytest.mark.parametrize("name", list(TENSORS))
@pytest.mark.parametrize("prior", [(1.0, 1.0), (0.3, 0.5)])
@pytest.mark.parametrize("block_rows", [None, 1, 2])
def test_one_iteration_matches_dense_numpy(name, prior, block_rows, monkeypatch):
    """Also with the kernel's cache blocks of the first minor mode cut to one or two rows,
    so slices whose nonzeros skip whole blocks are covered (K = 3 runs padded to 4)."""
    if block_rows is not None:
        monkeypatch.setattr(vbsnmf._kernels, "MINOR_BLOCK_BYTES", 8 * 4 * block_rows)
        assert vbsnmf._kernels.minor_block_rows(4) == block_rows
    shape, density = TENSORS[name]
    tensor, coords, values = _small_tensor(shape, density, seed=3)
    params = _random_params(shape, 3, seed=4)
    data = _tensor.as_tensor_data(coords, values, shape)
    stats_, _ = _tensor.shape_statistics(data, params, 2)
    got = _tensor.update_modes(params, stats_, _model.GammaPrior(*prior))
    expected_shapes, expected_rates = reference_iteration(
        tensor, params.shapes, params.rates, *prior
    )
    for d in range(len(shape)):
        np.testing.assert_allclose(got.shapes[d], expected_shapes[d], rtol=1e-12)
        np.testing.assert_allclose(got.rates[d], expected_rates[d], rtol=1e-12)


def test_every_major_mode_gives_the_same_pass():
    """The kernel's layout (which mode is major, hence which modes are stacked) only
    reorders sums."""
    shape = (6, 8, 5)
    _, coords, values = _small_tensor(shape, 0.4, seed=5)
    params = _random_params(shape, 5, seed=6)  # K = 5: padded to 8 columns
    results = []
    for major in range(3):
        data = _tensor.as_tensor_data(coords, values, shape, major=major)
        results.append(_tensor.shape_statistics(data, params, 2))
    for stats_, data_term in results[1:]:
        for mine, first in zip(stats_, results[0][0]):
            np.testing.assert_allclose(mine, first, rtol=1e-12)
        np.testing.assert_allclose(data_term, results[0][1], rtol=1e-12)
    for d, stat in enumerate(results[0][0]):  # statistics add up to each slice's total
        totals = np.zeros(shape[d])
        np.add.at(totals, coords[:, d], values)
        np.testing.assert_allclose(stat.sum(axis=1), totals, rtol=1e-12)


@pytest.mark.parametrize("block_rows", [None, 1])
def test_log_space_fallback_when_products_underflow(block_rows, monkeypatch):
    """Modes peaked on different components: the product of the scaled exp tables
    underflows on every component, and the kernel must redo the entry in log space."""
    if block_rows is not None:
        monkeypatch.setattr(vbsnmf._kernels, "MINOR_BLOCK_BYTES", 8 * 4 * block_rows)
    tiny = 1e-3  # digamma(1e-3) ~ -1000
    shapes = [
        np.array([[60.0, tiny], [tiny, 60.0]]),
        np.array([[tiny, 50.0], [50.0, tiny], [tiny, tiny]]),
        np.array([[tiny, 40.0], [40.0, tiny]]),
    ]
    rates = [np.ones(2)] * 3
    tensor = np.zeros((2, 3, 2))
    tensor[0, 0, 0], tensor[1, 1, 1], tensor[0, 2, 1], tensor[1, 0, 0] = 3, 2, 5, 1
    coords = np.argwhere(tensor)
    data = _tensor.as_tensor_data(coords, tensor[tuple(coords.T)], tensor.shape)
    params = _tensor.TensorParams(shapes, rates)
    stats_, data_term = _tensor.shape_statistics(data, params)
    expected_shapes, _ = reference_iteration(tensor, shapes, rates, tiny, 1.0)
    for stat, expected in zip(stats_, expected_shapes):
        assert np.all(np.isfinite(stat))
        np.testing.assert_allclose(stat + tiny, expected, rtol=1e-10)
    np.testing.assert_allclose(
        data_term + _tensor.elbo_rest(params, _model.GammaPrior(tiny, 1.0)),
        reference_elbo(tensor, shapes, rates, tiny, 1.0),
        rtol=1e-10,
    )


def _quiet(model, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(*args)


@pytest.mark.parametrize("shape", [(30, 20, 10), (12, 10, 8, 6)])
@pytest.mark.parametrize("prior_shape", [1e-3, 0.3, 1.0])
def test_elbo_never_decreases_over_300_iterations(shape, prior_shape):
    _, coords, values = _small_tensor(shape, 0.15, seed=7)
    model = vbsnmf.VBNTF(
        4, prior_shape=prior_shape, max_iter=300, tol=0.0, random_state=0, n_threads=2
    )
    trace = _quiet(model, coords, values, shape).elbo_trace_
    assert trace.shape == (300,) and np.all(np.isfinite(trace))
    steps = np.diff(trace)
    assert np.all(steps >= -1e-10 * np.abs(trace[1:])), steps.min()
    assert trace[-1] > trace[0]


# -- D = 2 is the matrix engine -----------------------------------------------------------
def _matrix(seed, shape=(70, 50), density=0.15):
    X = sp.random(*shape, density=density, random_state=seed, format="coo")
    X.data = np.ceil(5 * X.data)
    return X


@pytest.mark.parametrize("shape", [(70, 50), (40, 90)])
def test_two_modes_give_the_matrix_engines_trace(shape):
    X = _matrix(1, shape)
    coords = np.stack([X.row, X.col], axis=1)
    data = as_count_data(X)
    tdata = _tensor.as_tensor_data(coords, X.data, X.shape)
    start = _model.random_start(X.shape, 4, float(X.data.sum()), 3, np.float64)
    tstart = _tensor.random_start(tdata, 4, 3)
    for mine, theirs in zip(
        (tstart.shapes[0], tstart.rates[0], tstart.shapes[1], tstart.rates[1]), start.as_tuple()
    ):
        np.testing.assert_array_equal(mine, theirs)  # the same start, bitwise
    prior = _model.GammaPrior(0.3, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        matrix = _batch.fit_batch(data, start, prior, max_iter=100, tol=0.0, n_parts=2)
        tensor = _tensor.fit_batch(tdata, tstart, prior=prior, max_iter=100, tol=0.0, n_chunks=2)
    assert tensor.elbo_trace.shape == matrix.elbo_trace.shape == (100,)
    np.testing.assert_allclose(tensor.elbo_trace, matrix.elbo_trace, rtol=1e-12, atol=0)
    np.testing.assert_allclose(tensor.params.shapes[0], matrix.params.row_shape, rtol=1e-9)
    np.testing.assert_allclose(tensor.params.rates[1], matrix.params.col_rate, rtol=1e-9)


def test_vbntf_on_a_matrix_is_vbnmf():
    X = _matrix(2)
    common = dict(random_state=5, n_threads=2, max_iter=150, tol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        nmf = vbsnmf.VBNMF(3, prior="gamma", **common).fit(X)
        ntf = vbsnmf.VBNTF(3, **common).fit(np.stack([X.row, X.col], 1), X.data, X.shape)
    np.testing.assert_allclose(ntf.elbo_trace_, nmf.elbo_trace_, rtol=1e-12, atol=0)
    assert ntf.n_iter_ == nmf.n_iter_ and ntf.converged_ == nmf.converged_
    np.testing.assert_allclose(ntf.factors_[1], nmf.components_.T, rtol=1e-9)


# -- the learned prior --------------------------------------------------------------------
def _gamma_entropy(shape, rate):
    return stats.gamma(a=shape, scale=1.0 / np.broadcast_to(rate, np.shape(shape))).entropy()


def reference_learned_elbo(tensor, params):
    """The ELBO under the learned prior from its definition, densely: the data term over
    the nonzeros, the total over every entry, and per mode ``E[log p(v | xi)] + E[log
    p(xi)] + H[q(v)] + H[q(xi)]`` through scipy's Gamma entropy."""
    shapes, rates = params.shapes, params.rates
    nonzero = np.nonzero(tensor)
    log_rho = sum((digamma(s) - np.log(r))[index] for s, r, index in zip(shapes, rates, nonzero))
    counts = tensor[nonzero]
    value = np.sum(counts * logsumexp(log_rho, axis=1) - gammaln(counts + 1))
    value -= _mean_tensor([s / r for s, r in zip(shapes, rates)]).sum()
    for shape, rate, scale in zip(shapes, rates, params.scales):
        a, a0 = scale.factor_shape, scale.prior_shape
        b0 = a0 / scale.prior_mean  # the rate of xi's prior
        xi_log = digamma(scale.shape) - np.log(scale.rate)
        xi_mean = scale.shape / scale.rate
        v_log = digamma(shape) - np.log(rate)
        value += np.sum(
            a * xi_log[:, None] - gammaln(a) + (a - 1) * v_log - xi_mean[:, None] * shape / rate
        )
        value += np.sum(a0 * np.log(b0) - gammaln(a0) + (a0 - 1) * xi_log - b0 * xi_mean)
        value += _gamma_entropy(shape, rate).sum() + _gamma_entropy(scale.shape, scale.rate).sum()
    return value


@pytest.mark.parametrize("name", ["D3", "D4", "D2"])
@pytest.mark.parametrize("factor_shape", [None, 0.3])
def test_learned_prior_elbo_matches_dense_numpy_and_never_decreases(name, factor_shape):
    shape, density = TENSORS[name]
    tensor, coords, values = _small_tensor(shape, density, seed=21)
    data = _tensor.as_tensor_data(coords, values, shape)
    prior = _model.HierarchicalPrior(factor_shape)
    params = _tensor.random_start(data, 3, 4, prior=prior)
    trace = []
    for _ in range(40):  # every iteration's q, hyperparameters and gauge included
        np.testing.assert_allclose(
            _tensor.elbo(data, params, prior, 2), reference_learned_elbo(tensor, params), rtol=1e-11
        )
        trace.append(_tensor.elbo(data, params, prior, 2))
        stats_, _ = _tensor.shape_statistics(data, params, 2)
        params = _tensor.update_modes(params, stats_, prior)
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[:-1]))
    assert trace[-1] > trace[0]
    means = {scale.prior_mean for scale in params.scales}
    assert len(means) == 1  # the gauge pins every b'_d to one value
    if factor_shape is not None:
        assert all(np.all(scale.factor_shape == factor_shape) for scale in params.scales)


def test_the_gauge_leaves_the_learned_elbo_and_the_mean_tensor_unchanged():
    shape = (9, 7, 5, 4)
    tensor, coords, values = _small_tensor(shape, 0.3, seed=22)
    data = _tensor.as_tensor_data(coords, values, shape)
    prior = _model.HierarchicalPrior()
    params = _tensor.random_start(data, 3, 5, prior=prior)
    rng = np.random.default_rng(6)
    for scale in params.scales:  # b'_d far apart, so the gauge moves every mode
        scale.prior_mean *= float(rng.uniform(0.1, 10.0))
    pinned = _tensor.fix_gauge(params)
    np.testing.assert_allclose(
        reference_learned_elbo(tensor, pinned), reference_learned_elbo(tensor, params), rtol=1e-12
    )
    np.testing.assert_allclose(_mean_tensor(pinned.means()), _mean_tensor(params.means()))
    assert len({scale.prior_mean for scale in pinned.scales}) == 1


def test_mode_totals_are_numpys_sums_without_a_copy_of_the_nonzeros():
    """Every mode's totals, major and minor, and nothing of the size of the nonzeros made
    on the way (numpy's bincount with weights copied the counts and the rows)."""
    rng = np.random.default_rng(4)
    shape, nnz = (30, 7, 12), 2000
    coords = np.stack([rng.integers(0, n, nnz) for n in shape], axis=1)
    values = rng.integers(1, 100, nnz).astype(np.float64)
    dense = np.zeros(shape)
    np.add.at(dense, tuple(coords.T), values.astype(np.float64))
    data = _tensor.as_tensor_data(coords, values, shape)
    _tensor.mode_totals(data)  # compiled or loaded before the measurement
    totals, peak = traced_peak(_tensor.mode_totals, data)
    for d, got in enumerate(totals):
        want = dense.sum(axis=tuple(e for e in range(3) if e != d))
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want)
    assert peak < 16 * sum(shape) + 4096 < 8 * data.nnz, (peak, data.nnz)


@pytest.mark.parametrize("shape", [(70, 50), (40, 90)])
def test_two_modes_give_the_matrix_engines_trace_under_the_learned_prior(shape):
    X = _matrix(1, shape)
    data = as_count_data(X)
    tdata = _tensor.as_tensor_data(np.stack([X.row, X.col], axis=1), X.data, X.shape)
    prior = _model.HierarchicalPrior()
    totals = _model.side_totals(data)
    start = _model.random_start(X.shape, 4, float(X.data.sum()), 3, np.float64, 0, prior, totals)
    tstart = _tensor.random_start(tdata, 4, 3, prior=prior)
    for mine, theirs in zip(
        (tstart.shapes[0], tstart.rates[0], tstart.shapes[1], tstart.rates[1]), start.as_tuple()
    ):
        np.testing.assert_array_equal(mine, theirs)  # the same start, bitwise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        matrix = _batch.fit_batch(data, start, prior, max_iter=100, tol=0.0, n_parts=2)
        tensor = _tensor.fit_batch(tdata, tstart, prior=prior, max_iter=100, tol=0.0, n_chunks=2)
    np.testing.assert_allclose(tensor.elbo_trace, matrix.elbo_trace, rtol=1e-12, atol=0)
    np.testing.assert_allclose(tensor.params.rates[0], matrix.params.row_rate, rtol=1e-9)
    assert tensor.params.scales[1].prior_mean == pytest.approx(
        matrix.params.col_scale.prior_mean, rel=1e-9
    )


def test_vbntf_learned_prior_on_a_matrix_is_vbnmf_and_refuses_nonzeros_svi():
    X = _matrix(2)
    common = dict(
        prior="hierarchical", accelerate=False, random_state=5, n_threads=2, max_iter=80, tol=1e-9
    )
    coords = np.stack([X.row, X.col], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        nmf = vbsnmf.VBNMF(3, **common).fit(X)
        ntf = vbsnmf.VBNTF(3, **common).fit(coords, X.data, X.shape)
    np.testing.assert_allclose(ntf.elbo_trace_, nmf.elbo_trace_, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ntf.factors_[1], nmf.components_.T, rtol=1e-8)
    assert ntf.rates_[0].shape == (X.shape[0], 3) and len(ntf.hyperparameters_) == 2
    np.testing.assert_allclose(
        ntf.hyperparameters_[0]["factor_shape"], nmf.hyperparameters_["cell_factor_shape"]
    )
    with pytest.raises(ValueError, match="fixed prior only"):
        vbsnmf.VBNTF(3, prior="hierarchical", solver="svi", svi_form="nonzeros").fit(
            coords, X.data, X.shape
        )
    with pytest.raises(ValueError, match="prior_rate applies"):
        vbsnmf.VBNTF(3, prior="hierarchical", prior_rate=2.0).fit(coords, X.data, X.shape)
    with pytest.raises(ValueError, match="prior must be"):
        vbsnmf.VBNTF(3, prior="learned").fit(coords, X.data, X.shape)


# -- SQUAREM ------------------------------------------------------------------------------
@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
@pytest.mark.parametrize("shape", [(30, 20, 40), (12, 10, 8, 6)])
def test_accelerated_fit_is_monotone_exact_and_ahead_of_plain(prior, shape):
    """SQUAREM on a tensor (the learned prior's default, ``accelerate=True`` for the
    fixed one): the trace never decreases, its last entry is the ELBO of the returned q
    computed densely from the definition, the fit converges in fewer passes than plain
    coordinate ascent from the same start, and after as many passes it is above it."""
    tensor, coords, values = _small_tensor(shape, 0.3, seed=21, empty_slice=False)
    fits, kept = {}, []
    for accelerate in (True, False):
        model = vbsnmf.VBNTF(
            4, prior=prior, accelerate=accelerate, max_iter=5000, tol=1e-7, random_state=2
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error", vbsnmf.ConvergenceWarning)
            fits[accelerate] = model.fit(
                coords, values, shape, callback=lambda n, q, trace: kept.append(q.copy())
            )
    fast, plain = fits[True], fits[False]
    trace = fast.elbo_trace_
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))
    assert fast.converged_ and fast.n_iter_ < plain.n_iter_ / 2
    # plain.elbo_trace_[n - 1]: the plain q after n steps, scored by pass n + 1
    assert trace[-1] > plain.elbo_trace_[fast.n_iter_ - 1]
    last = kept[len(trace) - 1]  # the accelerated fit's last kept q, as its callback saw it
    for mine, theirs in zip(last.means(), fast.factors_):
        np.testing.assert_array_equal(mine, theirs)
    if prior == "gamma":
        expected = reference_elbo(tensor, last.shapes, last.rates, 1.0, 1.0)
    else:
        expected = reference_learned_elbo(tensor, last)
    assert trace[-1] == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_two_modes_accelerated_are_vbnmfs_accelerated_fit(prior):
    """With D = 2 the tensor's SQUAREM is `VBNMF`'s, step for step: the same passes, the
    same steps kept and refused (equal trace lengths), the same ELBOs up to the rounding of
    the two kernels' sums (which SQUAREM's steps amplify over hundreds of passes)."""
    X = _matrix(2)
    common = dict(prior=prior, accelerate=True, random_state=5, n_threads=2, tol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        nmf = vbsnmf.VBNMF(3, max_iter=120, **common).fit(X)
        ntf = vbsnmf.VBNTF(3, max_iter=120, **common).fit(
            np.stack([X.row, X.col], 1), X.data, X.shape
        )
    assert ntf.n_iter_ == nmf.n_iter_ == 120 and len(ntf.elbo_trace_) == len(nmf.elbo_trace_)
    assert len(nmf.elbo_trace_) < 119  # steps kept: not the plain ascent's trace
    np.testing.assert_allclose(ntf.elbo_trace_, nmf.elbo_trace_, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ntf.factors_[1], nmf.components_.T, rtol=1e-8)


# -- reproducibility ----------------------------------------------------------------------
def test_same_seed_and_threads_bitwise_and_thread_counts_agree():
    _, coords, values = _small_tensor((40, 30, 20), 0.1, seed=8)
    fits = {
        (run, threads): _quiet(
            vbsnmf.VBNTF(5, max_iter=60, tol=0.0, random_state=4, n_threads=threads),
            coords,
            values,
        )
        for run in (0, 1)
        for threads in (1, 2)
    }
    for threads in (1, 2):
        first, again = fits[0, threads], fits[1, threads]
        np.testing.assert_array_equal(first.elbo_trace_, again.elbo_trace_)
        for mine, theirs in zip(first.shapes_ + first.rates_, again.shapes_ + again.rates_):
            np.testing.assert_array_equal(mine, theirs)
    one, two = fits[0, 1], fits[0, 2]
    assert not np.array_equal(one.elbo_trace_, two.elbo_trace_)  # really chunked differently
    np.testing.assert_allclose(one.elbo_trace_, two.elbo_trace_, rtol=1e-10)
    for mine, theirs in zip(one.factors_, two.factors_):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-12)
    other_seed = _quiet(
        vbsnmf.VBNTF(5, max_iter=60, tol=0.0, random_state=5, n_threads=1), coords, values
    )
    assert not np.array_equal(other_seed.elbo_trace_, one.elbo_trace_)


@pytest.mark.parametrize("n_chunks", [1, 2, 3, 5, 40])
def test_chunking_only_reorders_sums(n_chunks):
    shape = (25, 9, 7)
    _, coords, values = _small_tensor(shape, 0.3, seed=9)
    data = _tensor.as_tensor_data(coords, values, shape)
    params = _random_params(shape, 6, seed=10)
    with numba_threads(2):
        base, base_term = _tensor.shape_statistics(data, params, 1)
        got, term = _tensor.shape_statistics(data, params, n_chunks)
    for mine, theirs in zip(got, base):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12)
    np.testing.assert_allclose(term, base_term, rtol=1e-12)


# -- recovery -----------------------------------------------------------------------------
def simulate(shape, n_components, density, seed):
    """Counts drawn from the model: Gamma(1, 1) factors with half their entries zeroed
    (so components differ), scaled so that about ``density`` of the entries are nonzero."""
    rng = np.random.default_rng(seed)
    factors = [
        rng.gamma(1.0, 1.0, (n, n_components)) * (rng.random((n, n_components)) < 0.5)
        for n in shape
    ]
    mean = _mean_tensor(factors)
    low, high = 1e-6, 1e6
    for _ in range(100):  # bisect the scale c: mean(P(y > 0)) = mean(1 - exp(-c mean))
        scale = np.sqrt(low * high)
        low, high = (low, scale) if np.mean(-np.expm1(-scale * mean)) > density else (scale, high)
    factors[0] = factors[0] * scale
    counts = rng.poisson(scale * mean)
    coords = np.argwhere(counts)
    return coords, counts[tuple(coords.T)].astype(float), factors


def congruence(true, fitted):
    """Per matched component, ``prod_d cos(true_d, fitted_d)`` (Tucker's congruence of CP
    components), components matched by the Hungarian algorithm."""
    products = np.ones((true[0].shape[1], fitted[0].shape[1]))
    for t, f in zip(true, fitted):
        products *= (t / np.linalg.norm(t, axis=0)).T @ (f / np.linalg.norm(f, axis=0))
    rows, cols = linear_sum_assignment(-products)
    return products[rows, cols]


@pytest.mark.parametrize(
    "shape, density",
    [
        ((100, 80, 60), 0.01),
        ((40, 30, 20), 0.1),
        ((30, 25, 20, 15), 0.01),
        ((16, 14, 12, 10), 0.1),
    ],
)
def test_recovers_factors_of_a_simulated_tensor(shape, density):
    coords, values, true = simulate(shape, 3, density, seed=0)
    assert abs(len(values) / np.prod(shape) - density) < 0.3 * density
    # Several starts: on the 16 x 14 x 12 x 10 tensor at 10 % about half of the random
    # starts end in a poor optimum (ELBO near -30,900 against -7,850 for the good one),
    # and with the shared start of `_model.random_shapes` the first two of seed 0 both do.
    model = vbsnmf.VBNTF(
        3, prior_shape=0.3, max_iter=2000, tol=1e-7, n_init=4, random_state=0, n_threads=1
    )
    model = _quiet(model, coords, values, shape)
    assert min(congruence(true, model.factors_)) >= 0.95


@pytest.mark.parametrize(
    "shape, density", [((100, 80, 60), 0.01), ((40, 30, 20), 0.1), ((30, 25, 20, 15), 0.01)]
)
def test_learned_prior_recovers_factors_of_a_simulated_tensor(shape, density):
    # Not the 16 x 14 x 12 x 10 tensor at 10 %: there the 4 starts of seed 0 all end in
    # the poor optimum under the learned prior (ELBO -30,749; docs/model.md).
    coords, values, true = simulate(shape, 3, density, seed=0)
    model = vbsnmf.VBNTF(
        3, prior="hierarchical", max_iter=2000, tol=1e-7, n_init=4, random_state=0, n_threads=1
    )
    model = _quiet(model, coords, values, shape)
    assert min(congruence(true, model.factors_)) >= 0.95


# -- input --------------------------------------------------------------------------------
def test_duplicates_order_and_zeros_do_not_change_the_fit():
    shape = (12, 9, 7)
    _, coords, values = _small_tensor(shape, 0.3, seed=11)
    # the same tensor: the first count split over two entries, zeros added on existing
    # and on new coordinates (slice 1 of mode 0 is empty), all shuffled
    split = values.copy()
    split[0] -= 1
    noisy_coords = np.concatenate([coords, coords[:1], coords[5:8], [[1, 0, 1]]])
    noisy_values = np.concatenate([split, [1.0], [0.0, 0.0, 0.0], [0.0]])
    order = np.random.default_rng(0).permutation(len(noisy_values))
    fits = [
        _quiet(vbsnmf.VBNTF(3, max_iter=20, random_state=1, n_threads=1), c, v, shape)
        for c, v in ((coords, values), (noisy_coords[order], noisy_values[order]))
    ]
    np.testing.assert_array_equal(fits[0].elbo_trace_, fits[1].elbo_trace_)


def test_values_default_to_one_per_coordinate_and_shape_to_the_largest_index():
    coords = np.array([[0, 1, 2], [0, 1, 2], [3, 0, 0]])
    model = _quiet(vbsnmf.VBNTF(2, max_iter=5, random_state=0), coords)
    assert model.shape_ == (4, 2, 3)
    explicit = _quiet(
        vbsnmf.VBNTF(2, max_iter=5, random_state=0), coords[1:], np.array([2.0, 1.0]), (4, 2, 3)
    )
    np.testing.assert_array_equal(model.elbo_trace_, explicit.elbo_trace_)


def test_pydata_sparse_input_equals_coordinates():
    import sparse  # a dev dependency (extra "tensor" for users)

    shape = (10, 8, 6)
    tensor, coords, values = _small_tensor(shape, 0.3, seed=12)
    fit = _quiet(vbsnmf.VBNTF(3, max_iter=20, random_state=2, n_threads=1), coords, values, shape)
    for array in (sparse.COO.from_numpy(tensor), sparse.GCXS.from_numpy(tensor)):
        other = _quiet(vbsnmf.VBNTF(3, max_iter=20, random_state=2, n_threads=1), array)
        np.testing.assert_array_equal(other.elbo_trace_, fit.elbo_trace_)
        assert other.shape_ == shape
    with pytest.raises(TypeError, match="not a sparse array"):
        vbsnmf.VBNTF(3).fit(sparse.COO.from_numpy(tensor), values)
    with pytest.raises(ValueError, match="fill_value"):
        vbsnmf.VBNTF(3).fit(sparse.COO.from_numpy(tensor, fill_value=1.0))


GOOD = np.array([[0, 1, 2], [1, 0, 0]])


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((GOOD.astype(float),), TypeError, "integer indices"),
        ((GOOD.astype(bool),), TypeError, "integer indices"),
        ((np.array([0, 1, 2]),), ValueError, r"\(nnz, D\)"),
        ((np.array([[0], [1]]),), ValueError, "at least 2 modes"),
        ((GOOD, np.array([1.0, -2.0])), ValueError, r"1 negative value at \(1, 0, 0\)"),
        ((GOOD, np.array([np.nan, 1.0])), ValueError, r"1 NaN value at \(0, 1, 2\)"),
        ((GOOD, np.array([np.inf, 1.0])), ValueError, "1 infinite value"),
        ((GOOD, np.array([1.0, 2.0, 3.0])), ValueError, "values must have shape"),
        ((GOOD, np.array(["a", "b"])), TypeError, "real numbers"),
        ((GOOD, np.array([1j, 1.0])), TypeError, "complex"),
        ((GOOD, None, (2, 2, 2)), ValueError, r"outside shape \(2, 2, 2\).*mode 2"),
        ((GOOD, None, (2, 2)), ValueError, "2 modes but coords have 3"),
        ((GOOD, None, (2, 0, 3)), ValueError, "at least one index"),
        ((GOOD, None, (2.0, 2, 3)), TypeError, "sequence of integers"),
        ((GOOD, None, {2, 3, 4}), TypeError, "sequence of integers"),
        ((-GOOD,), ValueError, "non-negative"),
        ((np.empty((0, 3), dtype=int),), ValueError, "shape is needed"),
        ((sp.random(4, 4, density=0.5, format="csr"),), TypeError, "scipy.sparse matrix"),
        ((np.array([[0, 2**63 + 5]], dtype=np.uint64),), ValueError, "index 9223372036854775813"),
        # a mode of 10**12 indices: its tables, not a bare MemoryError deep inside
        ((np.array([[0, 10**12]]),), MemoryError, r"about .* TiB for its factor tables"),
        # counts a float64 fit cannot hold (they overflowed to NaN factors), also once summed
        ((GOOD, np.array([1e14, 1.0])), ValueError, "above 10,000,000,000,000"),
        ((GOOD[[0, 0, 1]], np.array([1.5e308, 1.5e308, 1.0])), ValueError, "count of inf"),
    ],
)
def test_bad_input_raises_a_typed_error(args, error, message):
    with pytest.raises(error, match=message):
        vbsnmf.VBNTF(2).fit(*args)


@pytest.mark.parametrize(
    "option, value, error",
    [
        ("n_components", 0, ValueError),
        ("n_components", 2.5, TypeError),
        ("prior_shape", -1.0, ValueError),
        ("tol", -1.0, ValueError),
        ("solver", "gibbs", ValueError),
        ("svi_form", "cells", ValueError),
        ("svi_mode", 3, ValueError),
        ("kappa", 0.4, ValueError),
        ("kappa", "x", TypeError),
        ("tol", None, TypeError),
        ("batch_size", 0, ValueError),
        ("n_init", True, TypeError),
        ("resume", True, ValueError),
        ("dtype", np.int32, ValueError),
    ],
)
def test_bad_options_raise(option, value, error):
    with pytest.raises(error):
        vbsnmf.VBNTF(**{"n_components": 2, "solver": "svi", option: value}).fit(GOOD)


def test_float32_refuses_counts_it_cannot_hold():
    """As `VBNMF`: float32 resolves counts up to 2**24; 1e38 gave NaN factors."""
    with pytest.raises(ValueError, match=r"fit with dtype=np\.float64"):
        vbsnmf.VBNTF(2, dtype=np.float32).fit(GOOD, np.array([1e38, 1.0]))
    model = vbsnmf.VBNTF(2, dtype=np.float32, max_iter=5, random_state=0)
    fitted = _quiet(model, GOOD, np.array([2.0**24, 1.0]))
    assert all(np.all(np.isfinite(f)) for f in fitted.factors_)


def test_a_checkpoint_path_is_checked_before_any_work(tmp_path):
    """As `VBNMF`: a file there that is not a checkpoint is refused and left as it was (it
    was overwritten), a folder is refused before the fit runs (it failed at the first
    save, after the work)."""
    from vbsnmf.io._paths import UnsafePathError

    notes = tmp_path / "notes.txt"
    notes.write_text("important\n")
    passes = []

    def count(n_iter, params, trace):
        passes.append(n_iter)

    with pytest.raises(_checkpoint.CheckpointError, match="not a vbsnmf checkpoint"):
        vbsnmf.VBNTF(2, max_iter=5, checkpoint=notes).fit(GOOD, callback=count)
    assert notes.read_text() == "important\n"
    with pytest.raises(UnsafePathError, match="is a folder"):
        vbsnmf.VBNTF(2, max_iter=5, checkpoint=tmp_path, checkpoint_every=10**6).fit(
            GOOD, callback=count
        )
    assert passes == []


def test_non_integer_values_warn():
    with pytest.warns(vbsnmf.NonCountWarning):
        _quiet(vbsnmf.VBNTF(1, max_iter=2), GOOD, np.array([0.5, 1.0]))


def test_empty_tensor_and_empty_slices_keep_the_prior():
    model = _quiet(
        vbsnmf.VBNTF(2, prior_shape=0.5, max_iter=3, random_state=0),
        np.empty((0, 3), dtype=int),
        None,
        (3, 4, 5),
    )
    assert np.all(np.isfinite(model.elbo_trace_))
    for shape in model.shapes_:
        np.testing.assert_array_equal(shape, 0.5)
    _, coords, values = _small_tensor((7, 5, 4), 0.4, seed=13)  # slice 1 of mode 0 empty
    model = _quiet(vbsnmf.VBNTF(2, prior_shape=0.5, max_iter=3, random_state=0), coords, values)
    np.testing.assert_array_equal(model.shapes_[0][1], 0.5)


def test_attributes_and_float32():
    shape = (20, 15, 10)
    _, coords, values = _small_tensor(shape, 0.2, seed=14)
    fits = {}
    for dtype in (np.float64, np.float32):
        model = vbsnmf.VBNTF(3, max_iter=40, tol=0.0, random_state=3, n_threads=1, dtype=dtype)
        fits[dtype] = _quiet(model, coords, values, shape)
    model = fits[np.float64]
    assert len(model.factors_) == len(model.shapes_) == len(model.rates_) == 3
    for d, n in enumerate(shape):
        assert model.factors_[d].shape == model.shapes_[d].shape == (n, 3)
        assert model.rates_[d].shape == (3,)
        np.testing.assert_array_equal(model.factors_[d], model.shapes_[d] / model.rates_[d])
    assert model.n_iter_ == len(model.elbo_trace_) == 40 and not model.converged_
    single = fits[np.float32]
    assert single.factors_[0].dtype == np.float32
    np.testing.assert_allclose(single.elbo_trace_[-1], model.elbo_trace_[-1], rtol=1e-4)


def test_stops_on_tol_and_warns_at_max_iter():
    _, coords, values = _small_tensor((20, 15, 10), 0.2, seed=15)
    model = vbsnmf.VBNTF(2, max_iter=1000, tol=1e-4, random_state=0, n_threads=1).fit(
        coords, values
    )
    assert model.converged_ and model.n_iter_ < 1000
    assert abs(np.diff(model.elbo_trace_[-2:])[0]) <= 1e-4 * abs(model.elbo_trace_[-2])
    with pytest.warns(vbsnmf.ConvergenceWarning, match="max_iter=3"):
        vbsnmf.VBNTF(2, max_iter=3, tol=0.0, random_state=0, n_threads=1).fit(coords, values)


def test_n_init_keeps_the_best_start():
    _, coords, values = _small_tensor((20, 15, 10), 0.2, seed=16)
    model = vbsnmf.VBNTF(3, max_iter=30, random_state=7, n_init=3, n_threads=1)
    best = _quiet(model, coords, values)
    data = _tensor.as_tensor_data(coords, values, best.shape_)
    finals = []
    for index in range(3):
        start = _tensor.random_start(data, 3, 7, start=index)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            result = _tensor.fit_batch(
                data, start, prior=_model.GammaPrior(1.0, 1.0), max_iter=30, tol=1e-5
            )
        finals.append(result.elbo_trace[-1])
    assert len(set(finals)) == 3 and best.elbo_trace_[-1] == max(finals)


# -- checkpoints --------------------------------------------------------------------------
class _Crash(Exception):
    pass


CHECKPOINT_FITS = {
    "batch": dict(max_iter=40, tol=0.0),
    "batch-accelerated": dict(max_iter=40, tol=0.0, accelerate=True),
    "batch-learned": dict(max_iter=40, tol=0.0, prior="hierarchical"),  # accelerated
    "batch-learned-plain": dict(max_iter=40, tol=0.0, prior="hierarchical", accelerate=False),
    "svi-slices": dict(solver="svi", n_epochs=8, batch_size=7, tol=0.0, max_iter=20),
    "svi-nonzeros": dict(solver="svi", svi_form="nonzeros", n_epochs=8, tol=0.0),
    "svi-slices-learned": dict(
        solver="svi", n_epochs=8, batch_size=7, tol=0.0, max_iter=20, prior="hierarchical"
    ),
}


@pytest.mark.parametrize("kind", list(CHECKPOINT_FITS))
def test_resumed_fit_ends_with_the_bitwise_trace(kind, tmp_path):
    _, coords, values = _small_tensor((30, 12, 8), 0.2, seed=17)
    path = tmp_path / "fit.ckpt"

    def model(**extra):
        return vbsnmf.VBNTF(3, random_state=11, n_threads=1, **CHECKPOINT_FITS[kind], **extra)

    uninterrupted = _quiet(model(), coords, values)
    # an accelerated fit saves at a cycle's start (every 1 to 3 passes) when the pass count
    # is a multiple of checkpoint_every
    crash_at = 9 if kind.startswith("batch") else 3

    def crash(n_iter, params, trace):
        if n_iter == crash_at:
            raise _Crash

    with pytest.raises(_Crash):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            model(checkpoint=path, checkpoint_every=2).fit(coords, values, callback=crash)
    arrays, _ = _checkpoint.load_checkpoint(path)
    assert 0 < len(arrays["elbo_trace"]) < crash_at  # saved before the crash
    resumed = _quiet(model(checkpoint=path, checkpoint_every=2, resume=True), coords, values)
    np.testing.assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)
    for mine, theirs in zip(resumed.shapes_, uninterrupted.shapes_):
        np.testing.assert_array_equal(mine, theirs)
    other = model(checkpoint=path, resume=True, prior_shape=0.5)
    with pytest.raises(_checkpoint.CheckpointMismatchError, match="prior_shape"):
        other.fit(coords, values)


def _short_checkpointed_fit(kind, path, max_iter=3, **extra) -> vbsnmf.VBNTF:
    """`CHECKPOINT_FITS[kind]` for ``max_iter`` iterations or 2 epochs, checkpointed to
    ``path``."""
    fit = {**CHECKPOINT_FITS[kind], "n_epochs": 2, "max_iter": max_iter}
    return vbsnmf.VBNTF(3, random_state=11, n_threads=1, checkpoint=path, **fit, **extra)


@pytest.mark.parametrize("kind", ["svi-slices", "svi-slices-learned"])
def test_a_slices_fit_that_ended_at_n_epochs_resumes_with_more_as_the_longer_fit(kind, tmp_path):
    """As the matrix cells form: the exact step of the other modes after an evaluation is
    taken only if the fit goes on, a fit ended at ``n_epochs`` keeps its statistics and,
    resumed with more epochs, takes it first (bitwise the fit that ran them all); damaged
    statistics are refused."""
    _, coords, values = _small_tensor((30, 12, 8), 0.2, seed=17)
    path = tmp_path / "fit.ckpt"

    def model(n_epochs, **extra):
        fit = {**CHECKPOINT_FITS[kind], "n_epochs": n_epochs}
        return vbsnmf.VBNTF(3, random_state=11, n_threads=1, **fit, **extra)

    _quiet(model(2, checkpoint=path), coords, values)
    arrays, meta = _checkpoint.load_checkpoint(path)
    assert meta["finished"] and arrays["step_stat_1"].shape == (12, 3)
    resumed = _quiet(model(4, checkpoint=path, resume=True), coords, values)
    longer = _quiet(model(4), coords, values)
    np.testing.assert_array_equal(resumed.elbo_trace_, longer.elbo_trace_)
    for mine, theirs in zip(resumed.shapes_, longer.shapes_):
        np.testing.assert_array_equal(mine, theirs)
    arrays["step_stat_2"] = -arrays["step_stat_2"] - 1.0
    _checkpoint.save_checkpoint(path, arrays, meta)
    with pytest.raises(_checkpoint.CheckpointError, match="step_stat_2"):
        model(4, checkpoint=path, resume=True).fit(coords, values)


ACCELERATED_FITS = ("batch-accelerated", "batch-learned")


@pytest.mark.parametrize(
    "kind",
    ["batch", "batch-learned-plain", *ACCELERATED_FITS, "svi-slices", "svi-slices-learned"],
)
def test_a_damaged_checkpoint_is_refused_before_any_pass(kind, tmp_path):
    _, coords, values = _small_tensor((30, 12, 8), 0.2, seed=17)
    path = tmp_path / "fit.ckpt"

    # a batch fit's last save is the start of a cycle max_iter cuts short: 6 passes leave
    # ELBO values to damage there (3 left one, which no reversal makes decrease)
    model = partial(_short_checkpointed_fit, kind, path, 6 if kind.startswith("batch") else 3)

    _quiet(model(), coords, values)
    arrays, meta = _checkpoint.load_checkpoint(path)
    # an accelerated fit's checkpoint holds two q: the next to score and the last kept
    current, kept = ("current_", "kept_") if kind in ACCELERATED_FITS else ("", "")
    for name, damage in ((current + "rate_1", -1.0), (kept + "shape_2", np.nan)):
        broken = dict(arrays)
        broken[name] = np.full_like(arrays[name], damage)
        _checkpoint.save_checkpoint(path, broken, meta)
        with pytest.raises(_checkpoint.CheckpointError, match=name):
            model(resume=True).fit(coords, values)
    missing = (
        [kept + "shape_0", "local_sums"] if kind == "svi-slices-learned" else [kept + "shape_0"]
    )
    for name in missing:
        broken = {k: v for k, v in arrays.items() if k != name}
        _checkpoint.save_checkpoint(path, broken, meta)
        with pytest.raises(_checkpoint.CheckpointError, match=f"{name} is missing"):
            model(resume=True).fit(coords, values)
    # arrays or settings that made a KeyError, TypeError or AttributeError on resume
    broken = [
        ({**arrays, f"{kept}shape_3": arrays[f"{kept}shape_0"]}, meta, "shape_3, and the tensor"),
        (arrays, {**meta, "config": None}, "its settings are None"),
    ]
    if kind.startswith("svi"):  # a generator state numpy cannot take (an OverflowError)
        state = json.loads(meta["rng"])
        state["uinteger"] = -1
        broken.append((arrays, {**meta, "rng": json.dumps(state)}, "generator state"))
    if kind.startswith("batch"):  # coordinate ascent's trace never decreases
        reversed_trace = {**arrays, "elbo_trace": arrays["elbo_trace"][::-1].copy()}
        broken.append((reversed_trace, meta, "ELBO trace decreases"))
    if "learned" not in kind:
        scales = {f"{kept}scale_shape_0": np.ones(30)}
        broken.append(({**arrays, **scales}, meta, "scale arrays, which the fixed prior"))
    if kind in ACCELERATED_FITS:
        without_previous = {k: v for k, v in meta.items() if k != "previous"}
        broken += [
            (arrays, {**meta, "step_max": 0.5}, "step bound is 0.5"),
            (arrays, {**meta, "step_max": 10**400}, "step bound is 1000"),
            (arrays, {**meta, "n_passes": 1}, "ELBO values for 1 passes"),
            (arrays, {**meta, "n_passes": 10**30}, f"ELBO values for {10**30} passes"),
            (arrays, {**meta, "previous": float("nan")}, "last ELBO is nan"),
            (arrays, without_previous, "last ELBO is None"),
            (arrays, {**meta, "holding": "no"}, "hold flag is 'no'"),
        ]
    for broken_arrays, broken_meta, message in broken:
        _checkpoint.save_checkpoint(path, broken_arrays, broken_meta)
        with pytest.raises(_checkpoint.CheckpointError, match=message):
            model(resume=True).fit(coords, values)
    if kind.startswith("batch-learned"):  # positive and finite, but scoring far below
        name = f"{current}factor_shape_0"
        _checkpoint.save_checkpoint(path, {**arrays, name: arrays[name] * 1e300}, meta)
        with warnings.catch_warnings():  # one message: no numpy overflow warning first
            warnings.simplefilter("error", RuntimeWarning)
            with pytest.raises(_checkpoint.CheckpointError, match="below the"):
                _quiet(model(resume=True).set_params(max_iter=8), coords, values)


@pytest.mark.parametrize("kind", ["batch", "batch-learned"])
def test_a_checkpoint_of_the_other_ascent_is_refused(kind, tmp_path):
    """A plain fit's checkpoint resumed with acceleration, or an accelerated one without:
    another fit, refused by name (checkpoints of plain fits keep their config)."""
    _, coords, values = _small_tensor((30, 12, 8), 0.2, seed=17)
    path = tmp_path / "fit.ckpt"
    accelerated = kind == "batch-learned"
    _quiet(_short_checkpointed_fit(kind, path), coords, values)
    assert _checkpoint.read_checkpoint_meta(path)["config"]["accelerate"] is (
        True if accelerated else None
    )
    other = _short_checkpointed_fit(kind, path, resume=True, accelerate=not accelerated)
    with pytest.raises(_checkpoint.CheckpointMismatchError, match="accelerate"):
        other.fit(coords, values)
    # the other ascent's arrays under this fit's settings: damaged, not a KeyError
    _quiet(
        _short_checkpointed_fit(kind, tmp_path / "other", accelerate=not accelerated),
        coords,
        values,
    )
    arrays, _ = _checkpoint.load_checkpoint(tmp_path / "other")
    _checkpoint.save_checkpoint(path, arrays, _checkpoint.load_checkpoint(path)[1])
    missing = "current_shape_0" if accelerated else "shape_0"
    with pytest.raises(_checkpoint.CheckpointError, match=f"{missing} is missing"):
        _short_checkpointed_fit(kind, path, resume=True).fit(coords, values)


@pytest.mark.parametrize("kind", ["batch", "svi-slices"])
def test_a_checkpoint_of_other_data_with_the_same_shape_nnz_and_total_is_refused(kind, tmp_path):
    _, coords, values = _small_tensor((30, 12, 8), 0.2, seed=17)
    path = tmp_path / "fit.ckpt"

    model = partial(_short_checkpointed_fit, kind, path)

    _quiet(model(), coords, values)
    other = values.copy()
    first, second = np.flatnonzero(values != values[0])[0], 0
    other[[first, second]] = other[[second, first]]  # same nnz and total, other counts
    taken = {tuple(c) for c in coords}
    moved = coords.copy()  # one entry moved along the last mode to a free place
    moved[0, 2] = next(k for k in range(8) if (*coords[0, :2], k) not in taken)
    for changed_coords, changed_values in ((coords, other), (moved, values)):
        with pytest.raises(_checkpoint.CheckpointMismatchError, match="other data"):
            model(resume=True).fit(changed_coords, changed_values, shape=(30, 12, 8))
    order = np.random.default_rng(0).permutation(len(values))  # the same data: resumes
    resumed = _quiet(model(resume=True), coords[order], values[order])
    assert resumed.n_iter_ >= 1


@pytest.mark.parametrize("shape", [(9, 6), (6, 9)])
def test_a_two_mode_fingerprint_is_the_matrix_fingerprint(shape):
    _, coords, values = _small_tensor(shape, 0.5, seed=3)
    matrix = sp.coo_array((values, tuple(coords.T)), shape=shape)
    fingerprints = {
        _tensor.data_fingerprint(_tensor.as_tensor_data(coords, values, shape, major=major))
        for major in (0, 1)
    }
    assert fingerprints == {vbsnmf._validation.data_fingerprint(as_count_data(matrix))}


def test_the_fingerprint_sees_every_mode_and_not_the_major_one():
    shape = (5, 4, 3, 6)
    _, coords, values = _small_tensor(shape, 0.3, seed=4)

    def fingerprint(coords, values, major=None):
        return _tensor.data_fingerprint(_tensor.as_tensor_data(coords, values, shape, major))

    reference = fingerprint(coords, values)
    assert {fingerprint(coords, values, major) for major in range(4)} == {reference}
    for mode in range(4):  # one entry moved along one mode: another fingerprint
        moved = coords.copy()
        moved[0, mode] = (moved[0, mode] + 1) % shape[mode]
        if not (moved[:1] == coords).all(axis=1).any():
            assert fingerprint(moved, values) != reference
    assert fingerprint(coords, values * 2) != reference


# -- stochastic VB ------------------------------------------------------------------------
def test_svi_slices_lands_within_one_percent_of_batch():
    coords, values, _ = simulate((60, 40, 30), 3, 0.1, seed=1)
    batch = _quiet(
        vbsnmf.VBNTF(3, max_iter=1000, tol=1e-7, random_state=0, n_threads=1), coords, values
    )
    svi = vbsnmf.VBNTF(
        3,
        solver="svi",
        batch_size=10,
        n_epochs=20,
        tol=1e-6,
        max_iter=100,
        random_state=0,
        n_threads=1,
    )
    svi = _quiet(svi, coords, values)
    gap = (batch.elbo_trace_[-1] - svi.elbo_trace_[-1]) / abs(batch.elbo_trace_[-1])
    assert abs(gap) < 0.01, gap
    assert np.all(np.isfinite(svi.elbo_trace_)) and svi.n_iter_ == len(svi.elbo_trace_)


@pytest.mark.parametrize("shape", [(60, 25), (20, 45)])
def test_two_mode_slices_svi_under_the_learned_prior_is_vbnmfs_cells_form(shape):
    X = _matrix(6, shape, density=0.3)
    coords = np.stack([X.row, X.col], axis=1)
    common = dict(
        prior="hierarchical",
        solver="svi",
        batch_size=16,
        n_epochs=5,
        tol=0.0,
        max_iter=6,
        random_state=4,
        n_threads=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        nmf = vbsnmf.VBNMF(3, svi_form="cells", **common).fit(X)
        ntf = vbsnmf.VBNTF(3, svi_mode=0, **common).fit(coords, X.data, X.shape)
    np.testing.assert_allclose(ntf.elbo_trace_, nmf.elbo_trace_, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ntf.factors_[1], nmf.components_.T, rtol=1e-8)
    np.testing.assert_allclose(
        ntf.hyperparameters_[1]["factor_shape"], nmf.hyperparameters_["gene_factor_shape"]
    )


def test_svi_slices_under_the_learned_prior_lands_within_one_percent_of_batch():
    coords, values, _ = simulate((60, 40, 30), 3, 0.1, seed=1)
    common = dict(prior="hierarchical", random_state=0, n_threads=1)
    batch = _quiet(vbsnmf.VBNTF(3, max_iter=1000, tol=1e-7, **common), coords, values)
    svi = vbsnmf.VBNTF(
        3, solver="svi", batch_size=10, n_epochs=20, tol=1e-6, max_iter=100, **common
    )
    svi = _quiet(svi, coords, values)
    gap = (batch.elbo_trace_[-1] - svi.elbo_trace_[-1]) / abs(batch.elbo_trace_[-1])
    assert abs(gap) < 0.01, gap
    assert np.all(np.isfinite(svi.elbo_trace_)) and svi.n_iter_ == len(svi.elbo_trace_)
    assert len(svi.hyperparameters_) == 3 and svi.rates_[2].shape == (30, 3)


def test_svi_steps_on_all_the_data_with_rho_one_are_batch_updates():
    shape = (15, 9, 6)
    _, coords, values = _small_tensor(shape, 0.3, seed=18)
    prior = _model.GammaPrior(0.4, 1.2)
    data = _tensor.as_tensor_data(coords, values, shape)
    params = _random_params(shape, 3, seed=19)
    settings = _tensor.TensorSVISettings(
        prior=prior,
        form="nonzeros",
        batch_size=data.nnz,
        tau=0.0,
        kappa=1.0,
        n_epochs=1,
        tol=0.0,
        local_max_iter=30,
        local_tol=0.0,
    )
    # nonzeros form, the whole tensor as the minibatch: one batch iteration
    step = _tensor.svi_step_nonzeros(data, data.subset(np.arange(data.nnz)), params, 1.0, settings)
    stats_, _ = _tensor.shape_statistics(data, params)
    batch = _tensor.update_modes(params, stats_, prior)
    for mine, theirs in zip(step.shapes + step.rates, batch.shapes + batch.rates):
        np.testing.assert_allclose(mine, theirs, rtol=1e-13)
    # slices form, every slice in the batch: the local mode at its optimum given the
    # others, then each other mode's exact update given the new local q (modes in order)
    slices = _tensor.svi_step_slices(data, np.arange(shape[0]), params.copy(), 1.0, settings)
    local = params.copy()
    local.rates[0] = prior.rate + local.column_sums()[1] * local.column_sums()[2]  # fixed
    for _ in range(30):  # fit_local's 30 updates (tol=0 never stops earlier here)
        stats_, _ = _tensor.shape_statistics(data, local)
        local.shapes[0] = prior.shape + stats_[0]
    stats_, _ = _tensor.shape_statistics(data, local)
    np.testing.assert_allclose(slices.shapes[0], local.shapes[0], rtol=1e-9)
    sums = local.column_sums()
    for d, other in ((1, 2), (2, 1)):  # mode 2's rate sees mode 1's new q
        rate = prior.rate + sums[0] * sums[other]
        np.testing.assert_allclose(slices.shapes[d], prior.shape + stats_[d], rtol=1e-9)
        np.testing.assert_allclose(slices.rates[d], rate, rtol=1e-9)
        local.shapes[d], local.rates[d] = prior.shape + stats_[d], rate
        sums = local.column_sums()


def test_svi_nonzeros_form_improves_and_stays_finite():
    coords, values, _ = simulate((40, 30, 20), 3, 0.1, seed=2)
    svi = vbsnmf.VBNTF(
        3, solver="svi", svi_form="nonzeros", n_epochs=30, tol=0.0, random_state=0, n_threads=1
    )
    trace = _quiet(svi, coords, values).elbo_trace_
    assert trace.shape == (30,) and np.all(np.isfinite(trace))
    assert trace[-1] > trace[0]


# -- the tutorial -------------------------------------------------------------------------
def _tutorial():
    """tutorials/pbmc_tensor.py as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tutorials" / "pbmc_tensor.py"
    spec = importlib.util.spec_from_file_location("pbmc_tensor", path)
    tutorial = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tutorial)
    return tutorial


def test_default_fits_of_the_tutorial_tensor_converge():
    """Default settings reach the stopping rule on real counts (the tutorial's --quick
    tensor, gate x 2,000 genes x replicate, K = 4): plain ascent under the fixed prior
    needs some 500 passes, past the 200 that were the default, and the learned prior's
    SQUAREM far fewer than its plain ascent."""
    adata = vbsnmf.datasets.pbmc_facs()
    totals = np.asarray(adata.X.sum(axis=0)).ravel()
    adata = adata[:, np.sort(np.argsort(-totals)[:2000])].copy()
    coords, counts, shape, *_ = _tutorial().pseudobulk_tensor(adata)
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", vbsnmf.ConvergenceWarning)
        for prior in ("gamma", "hierarchical"):
            model = vbsnmf.VBNTF(4, prior=prior, random_state=0, n_threads=2)
            fits[prior] = model.fit(coords, counts, shape)
    assert fits["gamma"].converged_ and fits["gamma"].n_iter_ > 200
    assert fits["hierarchical"].converged_
    plain = vbsnmf.VBNTF(4, prior="hierarchical", accelerate=False, random_state=0, n_threads=2)
    assert fits["hierarchical"].n_iter_ < _quiet(plain, coords, counts, shape).n_iter_ / 2


def test_pbmc_tensor_tutorial_quick(tmp_path, capsys):
    import matplotlib.image

    tutorial = _tutorial()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        table, gate_profile, replicate_profile = tutorial.run(quick=True, outdir=tmp_path)
    out = capsys.readouterr().out
    assert "tensor gate x gene x replicate (10, 2000, 4)" in out
    assert len(table) == 8 and np.isclose(table["share of counts"].sum(), 1.0)
    np.testing.assert_allclose(gate_profile.sum(axis=0), 1.0)
    # pseudo-replicates are exchangeable: every replicate profile is flat
    assert np.abs(replicate_profile - 0.25).max() < 0.05
    # the distinct sorted populations each own a component
    for gate in ("CD19+ B", "CD56+ NK", "CD34+"):
        assert gate_profile.loc[gate].max() > 0.5, gate
    image = matplotlib.image.imread(tmp_path / "pbmc_tensor.png")
    assert image.shape[1] > 500 and image[..., :3].std() > 0.05
    results = (tmp_path / "pbmc_tensor_results.md").read_text()
    assert results.count("\n| ") == 1 + 8  # header + one row per component


def test_a_callback_that_cannot_be_called_is_refused_before_any_pass():
    _, coords, values = _small_tensor((12, 10, 8), 0.3, seed=2)
    model = vbsnmf.VBNTF(2, max_iter=1, n_threads=1)
    with pytest.raises(TypeError, match="callback must be callable"):
        model.fit(coords, values, callback=5)
    assert not hasattr(model, "elbo_trace_")


def test_a_callback_cannot_change_the_tensor_fit():
    """As VBNMF's (test_estimator): q read-only for the call, the trace a copy."""
    _, coords, values = _small_tensor((12, 10, 8), 0.3, seed=2)
    options = {"max_iter": 5, "tol": 0, "n_threads": 1, "random_state": 0}

    def write_into_q(n_iter, params, elbo_trace):
        next(a for a in params.as_tuple() if a.ndim == 2)[:] = np.nan

    def append_to_the_trace(n_iter, params, elbo_trace):
        elbo_trace.append(np.nan)

    plain = _quiet(vbsnmf.VBNTF(2, **options), coords, values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        watched = vbsnmf.VBNTF(2, **options).fit(coords, values, callback=append_to_the_trace)
        with pytest.raises(ValueError, match="read-only"):
            vbsnmf.VBNTF(2, **options).fit(coords, values, callback=write_into_q)
    np.testing.assert_array_equal(watched.elbo_trace_, plain.elbo_trace_)


def test_resuming_with_fewer_iterations_than_stored_warns_as_vbnmf(tmp_path):
    _, coords, values = _small_tensor((30, 12, 8), 0.2, seed=17)
    path = tmp_path / "fit.ckpt"
    options = {"tol": 0, "random_state": 0, "n_threads": 1, "checkpoint": path}
    _quiet(vbsnmf.VBNTF(2, max_iter=8, **options), coords, values)
    with pytest.warns(UserWarning, match="already holds 8 iterations, more than the 3"):
        resumed = _quiet(vbsnmf.VBNTF(2, max_iter=3, resume=True, **options), coords, values)
    assert resumed.n_iter_ == 8


def test_too_many_modes_and_ragged_input_are_named():
    """D > 101 failed in Numba's compiler (the modes' tuple of a parallel loop); ragged
    coords or values gave numpy's bare "inhomogeneous shape" message."""
    coords = np.random.default_rng(0).integers(0, 2, size=(20, 102))
    with pytest.raises(ValueError, match="at most 101 modes"):
        vbsnmf.VBNTF(2).fit(coords)
    with pytest.raises(ValueError, match="coords must be a regular array"):
        vbsnmf.VBNTF(2).fit([[0, 1], [1, 0, 2]])
    with pytest.raises(ValueError, match="values must be a regular array"):
        vbsnmf.VBNTF(2).fit([[0, 1], [1, 0]], values=[[1, 2], [3]])
