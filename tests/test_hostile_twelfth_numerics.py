"""Missing entries whose posterior means dwarf the observed ones (`_model.Mask`): each row's
observed sums and the ELBO's expected product keep their precision, where the total less
the masked sum cancelled (negative float32 rates and loadings, a positive float64 ELBO)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import digamma, gammaln

from vbsnmf import VBNMF, _model
from vbsnmf._data import as_count_data


def _fit(X, mask, **settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return VBNMF(random_state=0, n_threads=1, **settings).fit(X, mask=mask)


def _one_gene_unobserved():
    """200 x 10 counts of mean 1, gene 0 observed in no cell and gene 1 in half of them."""
    X = np.random.default_rng(0).poisson(1, (200, 10)).astype(float)
    mask = np.zeros_like(X)
    mask[:, 0] = 1
    mask[:100, 1] = 1
    return X, mask


def _never_decreases(trace, relative):
    trace = np.asarray(trace)
    return np.diff(trace).min() >= -relative * np.abs(trace).max()


def test_half_masked_column_under_a_tiny_prior_rate_keeps_a_true_bound():
    """Three of six cells masked, prior rate 1e-30 (masked cells' means ~1e30): the ELBO
    is a bound on a log-probability of counts (<= 0), never falls, and the gene's rate is
    the prior's plus the observed cells' E[z], not the prior's alone."""
    X = np.array([[58.0], [54.0], [49.0], [54.0], [61.0], [52.0]])
    mask = np.array([[1.0], [0], [1], [0], [1], [0]])
    fit = _fit(X, mask, n_components=1, prior="gamma", prior_rate=1e-30, max_iter=5)
    assert np.max(fit.elbo_trace_) <= 0.0
    assert _never_decreases(fit.elbo_trace_, 1e-12)
    observed_mean = fit.cell_shape_[1::2] / fit.cell_rate_[1::2]
    expected_rate = 1e-30 + observed_mean.sum()
    np.testing.assert_allclose(fit.gene_rate_.ravel()[0], expected_rate, rtol=1e-10)


@pytest.mark.parametrize("prior_rate", [1e-3, 1e-4])
def test_float32_masked_fit_keeps_rates_above_the_prior_rate(prior_rate):
    """float32 with a gene observed nowhere (mean 1 / prior_rate): rates >= the prior
    rate, loadings >= 0, and the trace falls by no more than float32 rounding."""
    X, mask = _one_gene_unobserved()
    fit = _fit(
        X, mask, n_components=2, prior="gamma", prior_rate=prior_rate, dtype=np.float32,
        max_iter=100,
    )  # fmt: skip
    assert np.all(fit.gene_rate_ >= np.float32(prior_rate))
    assert np.all(fit.cell_rate_ >= np.float32(prior_rate))
    assert np.all(fit.components_ >= 0)
    assert _never_decreases(fit.elbo_trace_, 1e-5)


@pytest.mark.parametrize("prior_rate", [1e-3, 1e-4])
def test_a_gene_observed_nowhere_keeps_exactly_the_prior(prior_rate):
    """Under prior='gamma' a gene masked in every cell has no data: its q is the prior's,
    rate ``prior_rate`` and shape ``prior_shape``, to the bit, in float32 too (the total
    over the cells less the masked sum left float32 rounding behind)."""
    X, mask = _one_gene_unobserved()
    fit = _fit(
        X, mask, n_components=2, prior="gamma", prior_shape=0.5, prior_rate=prior_rate,
        dtype=np.float32, max_iter=30,
    )  # fmt: skip
    np.testing.assert_array_equal(fit.gene_rate_[0], np.full(2, prior_rate, dtype=np.float32))
    np.testing.assert_array_equal(fit.gene_shape_[0], np.full(2, 0.5, dtype=np.float32))


def test_float32_agrees_with_float64_on_a_masked_fit():
    """The same masked fit in float32 and float64 (a gene observed nowhere, prior rate
    1e-3) agrees to float32's precision, carried through the iterations."""
    X, mask = _one_gene_unobserved()
    fits = [
        _fit(X, mask, n_components=2, prior="gamma", prior_rate=1e-3, dtype=dtype, max_iter=20)
        for dtype in (np.float64, np.float32)
    ]
    np.testing.assert_allclose(fits[1].components_, fits[0].components_, rtol=1e-4)
    np.testing.assert_allclose(fits[1].gene_rate_, fits[0].gene_rate_, rtol=1e-4)
    np.testing.assert_allclose(fits[1].elbo_trace_, fits[0].elbo_trace_, rtol=1e-5)


def test_float32_learned_prior_masked_fit_runs_with_positive_rates():
    """The default (learned) prior in float32 with a mask leaving 52 of 500 entries
    observed: no FloatingPointError on the first pass, every rate positive and finite."""
    rows = [0, 0, 0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 5, 5, 5, 6, 8, 9, 11, 11, 13, 14, 14, 16, 16]
    rows += [17, 17, 17, 18]
    cols = [3, 5, 11, 12, 19, 0, 3, 11, 6, 5, 14, 1, 19, 20, 24, 14, 22, 10, 1, 14, 1, 15]
    cols += [18, 14, 17, 7, 16, 22, 21]
    X = sp.csr_matrix(([1.0] * 25 + [2.0, 1.0, 1.0, 1.0], (rows, cols)), shape=(20, 25))
    observed_rows = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 4, 4, 4, 4, 5, 5, 6, 6]
    observed_rows += [6, 7, 7, 7, 8, 8, 10, 10, 10, 11, 12, 13, 13, 13, 13, 14, 14, 15, 15]
    observed_rows += [15, 16, 16, 17, 17, 18, 19, 19, 19]
    observed_cols = [4, 15, 19, 23, 24, 14, 23, 24, 1, 2, 4, 6, 19, 24, 12, 13, 11, 15, 16]
    observed_cols += [17, 3, 4, 0, 5, 10, 4, 10, 15, 6, 17, 2, 6, 9, 16, 22, 6, 12, 18, 21]
    observed_cols += [5, 12, 1, 10, 16, 10, 22, 17, 23, 16, 0, 1, 16]
    mask = np.ones((20, 25))
    mask[observed_rows, observed_cols] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = VBNMF(14, dtype=np.float32, random_state=52, n_threads=1, max_iter=3)
        fit.fit(X, mask=mask)
    for rate in (fit.gene_rate_, fit.cell_rate_):
        assert np.all(np.isfinite(rate)) and np.all(rate > 0)


def _gamma_kl(shape, rate, prior_shape, prior_rate):
    """KL(Gamma(shape, rate) || Gamma(prior_shape, prior_rate)), entrywise."""
    return (
        (shape - prior_shape) * digamma(shape)
        - gammaln(shape)
        + gammaln(prior_shape)
        + prior_shape * (np.log(rate) - np.log(prior_rate))
        + shape * (prior_rate - rate) / rate
    )


def _dense_masked_elbo(X, mask, row_shape, row_rate, col_shape, col_rate, a, b):
    """The ELBO summed over the observed entries of dense X, plain numpy."""
    log_z = digamma(row_shape) - np.log(row_rate)
    log_w = digamma(col_shape) - np.log(col_rate)
    log_rate = np.log(np.exp(log_z[:, None, :] + log_w[None, :, :]).sum(axis=2))
    expected = (row_shape / row_rate) @ (col_shape / col_rate).T
    entries = X * log_rate - gammaln(X + 1) - expected
    kl = _gamma_kl(row_shape, row_rate, a, b).sum() + _gamma_kl(col_shape, col_rate, a, b).sum()
    return entries[~mask].sum() - kl


def test_exact_masked_elbo_matches_dense_numpy_under_an_extreme_prior_rate():
    """A column observed nowhere at the prior (mean 5e29 under prior rate 1e-30) and
    scattered masked entries: the ELBO equals the dense sum over the observed entries."""
    rng = np.random.default_rng(4)
    n_rows, n_cols, k, a, b = 7, 5, 2, 0.5, 1e-30
    X = rng.poisson(3.0, (n_rows, n_cols)).astype(float)
    mask = rng.random((n_rows, n_cols)) < 0.3
    mask[:, 3] = True
    mask[2, [0, 1, 2, 4]] = True  # a row observed in no column but the masked one
    mask[2, 0] = False
    row_shape = rng.gamma(4.0, 1.0, (n_rows, k)) + 0.5
    row_rate = rng.gamma(4.0, 1.0, (n_rows, k)) + 0.5
    col_shape = rng.gamma(4.0, 1.0, (n_cols, k)) + 0.5
    col_rate = rng.gamma(4.0, 1.0, (n_cols, k)) + 0.5
    col_shape[3], col_rate[3] = a, b
    params = _model.VariationalParams(row_shape, row_rate, col_shape, col_rate)
    data = as_count_data(sp.csr_matrix(np.where(mask, 0, X)))
    got = _model.elbo(data, params, _model.GammaPrior(a, b), 1, _model.Mask.of(mask))
    expected = _dense_masked_elbo(X, mask, *params.as_tuple(), a, b)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
