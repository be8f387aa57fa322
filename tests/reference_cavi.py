"""A plain-numpy CAVI for Poisson-Gamma NMF, written apart from the engine.

Dense and slow on purpose: responsibilities for every nonzero with
``scipy.special.logsumexp``, the KL divergences as ``-H(q) - E_q[log p]`` with scipy's
digamma and lgamma, not the engine's series: the fixed prior's entropies in closed form
(`gamma_entropy`, checked against ``scipy.stats.gamma``'s), the learned prior's through
``scipy.stats.gamma``. Only for small matrices in tests.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.special import digamma, gammaln, logsumexp


def _log_rho(X, row_shape, row_rate, col_shape, col_rate, mask=None):
    rows, cols = np.nonzero(X if mask is None else np.where(mask, 0, X))
    elog_z = digamma(row_shape) - np.log(row_rate)
    elog_w = digamma(col_shape) - np.log(col_rate)
    return rows, cols, elog_z[rows] + elog_w[cols]  # (nnz, K)


def iteration(X, row_shape, row_rate, col_shape, col_rate, a, b, mask=None):
    """One coordinate-ascent iteration in model.md's order; ``mask`` (dense, True where
    an entry was not observed) leaves those entries out of the likelihood."""
    observed = np.ones(X.shape, dtype=bool) if mask is None else ~mask
    rows, cols, log_rho = _log_rho(X, row_shape, row_rate, col_shape, col_rate, mask)
    phi = np.exp(log_rho - logsumexp(log_rho, axis=1, keepdims=True))
    weighted = X[rows, cols][:, None] * phi
    new_row_shape = np.full_like(row_shape, a)
    new_col_shape = np.full_like(col_shape, a)
    np.add.at(new_row_shape, rows, weighted)
    np.add.at(new_col_shape, cols, weighted)
    # Row i's rate sums E[w_j] over the columns it was observed in (and conversely).
    new_row_rate = b + observed @ (col_shape / col_rate)
    new_col_rate = b + observed.T @ (new_row_shape / new_row_rate)
    if mask is None:  # every row sees every column: one rate per component
        new_row_rate, new_col_rate = new_row_rate[0], new_col_rate[0]
    return new_row_shape, new_row_rate, new_col_shape, new_col_rate


def gamma_entropy(shape, rate):
    """H(Gamma(shape, rate)) = shape - log(rate) + lgamma(shape) + (1 - shape) digamma(shape),
    the textbook form (`tests/test_kernels.py` checks it against ``scipy.stats.gamma``'s
    entropy, which takes about 80 us an entry, a Python call each: 43 s for 2,061 x 259)."""
    return shape - np.log(rate) + gammaln(shape) + (1.0 - shape) * digamma(shape)


def gamma_kl(shape, rate, a, b):
    """KL(Gamma(shape, rate) || Gamma(a, b)) = -H(q) - E_q[log p]."""
    shape = np.asarray(shape, dtype=float)
    rate = np.broadcast_to(rate, shape.shape)
    entropy = gamma_entropy(shape, rate)
    expected_log = digamma(shape) - np.log(rate)
    expected_log_prior = a * np.log(b) - gammaln(a) + (a - 1) * expected_log - b * shape / rate
    return float(np.sum(-entropy - expected_log_prior))


def elbo(X, row_shape, row_rate, col_shape, col_rate, a, b, mask=None):
    """The ELBO of model.md with the responsibilities at their optimum (``mask``: the
    entries not observed, left out)."""
    rows, cols, log_rho = _log_rho(X, row_shape, row_rate, col_shape, col_rate, mask)
    counts = X[rows, cols]
    data = np.sum(counts * logsumexp(log_rho, axis=1) - gammaln(counts + 1))
    mean_z = row_shape / row_rate
    mean_w = col_shape / col_rate
    observed = 1.0 if mask is None else ~mask
    expected_rate = np.sum((mean_z @ mean_w.T) * observed)  # over the observed entries
    return (
        data
        - expected_rate
        - gamma_kl(row_shape, row_rate, a, b)
        - gamma_kl(col_shape, col_rate, a, b)
    )


def fit_rows(X, col_shape, col_rate, a, b, n_iter):
    """q(z) of the rows of X with q(w) fixed: ``n_iter`` shape updates from ``a + 1``."""
    row_rate = b + (col_shape / col_rate).sum(axis=0)
    row_shape = np.full((X.shape[0], col_shape.shape[1]), a + 1.0)
    for _ in range(n_iter):
        rows, cols, log_rho = _log_rho(X, row_shape, row_rate, col_shape, col_rate)
        phi = np.exp(log_rho - logsumexp(log_rho, axis=1, keepdims=True))
        row_shape = np.full_like(row_shape, a)
        np.add.at(row_shape, rows, X[rows, cols][:, None] * phi)
    return row_shape, row_rate


# -- the learned (hierarchical) prior, written from the joint density term by term ---------
def _log_gamma_density_expectation(shape_p, rate_elog, rate_mean, elog, mean):
    """E_q[log Gamma(x; shape_p, rate)] for a random rate: a E[log rate] - lgamma(a)
    + (a - 1) E[log x] - E[rate] E[x]."""
    return shape_p * rate_elog - gammaln(shape_p) + (shape_p - 1) * elog - rate_mean * mean


def learned_elbo(X, sides):
    """The ELBO under the hierarchical prior: ``sides`` is ``((shape, rate, scale_shape,
    scale_rate, factor_shape, prior_shape, prior_mean), ...)`` for the rows then the
    columns (rates per entry). The likelihood part as `elbo`; the prior part from the
    densities of z | xi and xi, and the entropies from scipy.stats."""
    (row_shape, row_rate, *_), (col_shape, col_rate, *_) = sides
    rows, cols, log_rho = _log_rho(X, row_shape, row_rate, col_shape, col_rate)
    counts = X[rows, cols]
    value = np.sum(counts * logsumexp(log_rho, axis=1) - gammaln(counts + 1))
    value -= np.sum((row_shape / row_rate) @ (col_shape / col_rate).T)
    for shape, rate, scale_shape, scale_rate, factor_shape, prior_shape, prior_mean in sides:
        scale_mean = scale_shape / scale_rate
        scale_elog = digamma(scale_shape) - np.log(scale_rate)
        elog = digamma(shape) - np.log(rate)
        value += np.sum(
            _log_gamma_density_expectation(
                factor_shape[None, :], scale_elog[:, None], scale_mean[:, None], elog, shape / rate
            )
        )
        rate0 = prior_shape / prior_mean  # xi ~ Gamma(a', a'/b'): a fixed rate
        value += np.sum(
            _log_gamma_density_expectation(
                prior_shape, np.log(rate0), rate0, scale_elog, scale_mean
            )
        )
        value += stats.gamma(a=shape, scale=1.0 / rate).entropy().sum()
        value += stats.gamma(a=scale_shape, scale=1.0 / scale_rate).entropy().sum()
    return float(value)


def learned_iteration(X, sides):
    """One iteration under the learned prior, hyperparameters held: q(z), q(xi), q(w),
    q(eta) in this order, each at its optimum given the rest (model.md)."""
    (row_shape, row_rate, *row_rest), (col_shape, col_rate, *col_rest) = sides
    rows, cols, log_rho = _log_rho(X, row_shape, row_rate, col_shape, col_rate)
    phi = np.exp(log_rho - logsumexp(log_rho, axis=1, keepdims=True))
    weighted = X[rows, cols][:, None] * phi
    row_stat = np.zeros_like(row_shape)
    col_stat = np.zeros_like(col_shape)
    np.add.at(row_stat, rows, weighted)
    np.add.at(col_stat, cols, weighted)

    def side(stat, rest, other_mean_sum):
        scale_shape, scale_rate, factor_shape, prior_shape, prior_mean = rest
        shape = factor_shape[None, :] + stat
        rate = (scale_shape / scale_rate)[:, None] + other_mean_sum[None, :]
        new_scale_shape = np.full_like(scale_shape, prior_shape + factor_shape.sum())
        new_scale_rate = prior_shape / prior_mean + (shape / rate).sum(axis=1)
        return shape, rate, new_scale_shape, new_scale_rate, factor_shape, prior_shape, prior_mean

    new_rows = side(row_stat, row_rest, (col_shape / col_rate).sum(axis=0))
    new_cols = side(col_stat, col_rest, (new_rows[0] / new_rows[1]).sum(axis=0))
    return new_rows, new_cols
