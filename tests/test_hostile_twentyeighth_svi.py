"""Twenty-eighth hostile pass, SVI and the model's numerics beyond the batch path.

No defect was found in this area; these tests pin what the pass checked against
independent dense numpy/scipy computations from docs/model.md, so that a later change
that breaks them is caught: every SVI form reports the exact ELBO of the q it returns
(fixed and learned prior, float32 too), a masked fit's ELBO is that of its observed
entries and its trace never falls (SQUAREM's safeguard included), and SVI's results on
one and two threads agree to rounding.
"""

import warnings

import numpy as np
import pytest
from scipy.special import digamma, gammaln, logsumexp

from vbsnmf import VBNMF


def _counts(n_cells=40, n_genes=15, seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(1, 1, (n_cells, 3)) @ rng.gamma(1, 1, (3, n_genes))).astype(float)


def _entropy(shape, rate):
    return shape - np.log(rate) + gammaln(shape) + (1 - shape) * digamma(shape)


def _learned_side(shape, rate, scale_shape, scale_rate, factor_shape, prior_shape, prior_mean):
    """One side's prior terms and entropies under the learned prior (model.md)."""
    log_factor = digamma(shape) - np.log(rate)
    scale_mean = scale_shape / scale_rate
    log_scale = digamma(scale_shape) - np.log(scale_rate)
    terms = (
        factor_shape * log_scale[:, None]
        - gammaln(factor_shape)
        + (factor_shape - 1) * log_factor
        - scale_mean[:, None] * shape / rate
    ).sum()
    terms += (
        prior_shape * np.log(prior_shape / prior_mean)
        - gammaln(prior_shape)
        + (prior_shape - 1) * log_scale
        - prior_shape / prior_mean * scale_mean
    ).sum()
    return terms + _entropy(shape, rate).sum() + _entropy(scale_shape, scale_rate).sum()


def _dense_elbo(X, model, mask=None):
    """The ELBO of ``model``'s q by a dense computation over every entry of ``X``: the
    nonzeros' log-sum-exp, the observed entries' expected product, the KL terms."""
    cell_shape = model.cell_shape_.astype(float)
    gene_shape = model.gene_shape_.astype(float)
    cell_rate = np.broadcast_to(model.cell_rate_, cell_shape.shape).astype(float)
    gene_rate = np.broadcast_to(model.gene_rate_, gene_shape.shape).astype(float)
    log_cell = digamma(cell_shape) - np.log(cell_rate)
    log_gene = digamma(gene_shape) - np.log(gene_rate)
    observed = np.ones(X.shape, bool) if mask is None else ~mask
    data = sum(
        X[i, j] * logsumexp(log_cell[i] + log_gene[j]) - gammaln(X[i, j] + 1)
        for i, j in zip(*np.nonzero((X > 0) & observed))
    )
    total = ((cell_shape / cell_rate) @ (gene_shape / gene_rate).T)[observed].sum()
    hyper = model.hyperparameters_
    if hyper is None:
        a, b = 1.0, 1.0  # the fixed prior's defaults

        def kl(shape, rate):
            return (
                (shape - a) * digamma(shape)
                - gammaln(shape)
                + gammaln(a)
                + a * (np.log(rate) - np.log(b))
                + shape * (b - rate) / rate
            ).sum()

        return data - total - kl(cell_shape, cell_rate) - kl(gene_shape, gene_rate)
    prior_terms = 0.0
    for side, shape, rate in (("cell", cell_shape, cell_rate), ("gene", gene_shape, gene_rate)):
        prior_terms += _learned_side(
            shape,
            rate,
            getattr(model, f"{side}_scale_shape_"),
            getattr(model, f"{side}_scale_rate_"),
            np.asarray(hyper[f"{side}_factor_shape"], float),
            hyper[f"{side}_scale_prior_shape"],
            hyper[f"{side}_scale_prior_mean"],
        )
    return data - total + prior_terms


SVI_SETTINGS = [
    {"svi_form": "cells"},
    {"svi_form": "cells", "prior_shape": 0.3},
    {"svi_form": "cells", "prior": "gamma"},
    {"svi_form": "nonzeros", "prior": "gamma"},
    {"svi_form": "abe-shimamura", "prior": "gamma"},
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("settings", SVI_SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_every_svi_form_reports_the_exact_elbo_of_the_q_it_returns(settings, dtype):
    """The last evaluated ELBO is the dense computation's for the returned q (float32's
    tables round each nonzero's term to about 6e-8 nats a count)."""
    X = _counts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_epochs=3 does not converge
        model = VBNMF(
            3, solver="svi", n_epochs=3, random_state=0, dtype=dtype, n_threads=1, **settings
        ).fit(X)
    reference = _dense_elbo(X, model)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    assert model.elbo_trace_[-1] == pytest.approx(reference, rel=rtol)
    assert np.all(np.isfinite(model.transform(X)))


@pytest.mark.parametrize(
    "settings", [{}, {"accelerate": False}, {"prior": "gamma"}], ids=["squarem", "plain", "fixed"]
)
def test_a_masked_fit_reports_its_observed_entries_elbo_and_never_falls(settings):
    """A random mask, a row and a column masked whole: the trace rises at every kept q
    (SQUAREM's refusals included) and ends at the dense ELBO of the observed entries."""
    X = _counts(seed=1)
    rng = np.random.default_rng(2)
    mask = rng.random(X.shape) < 0.2
    mask[3] = True
    mask[:, 4] = True
    model = VBNMF(3, random_state=0, max_iter=300, n_threads=1, **settings).fit(X, mask=mask)
    trace = model.elbo_trace_
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))
    assert trace[-1] == pytest.approx(_dense_elbo(X, model, mask), rel=1e-12)


@pytest.mark.parametrize(
    "settings", SVI_SETTINGS[::2] + SVI_SETTINGS[3:4], ids=lambda s: "-".join(map(str, s.values()))
)
def test_svi_on_one_and_two_threads_agrees_to_rounding(settings):
    """Each form's result for a random_state on 1 and on 2 threads: the same fit to 1e-10."""
    X = _counts(n_cells=200, n_genes=30, seed=3)
    fits = [
        VBNMF(3, solver="svi", n_epochs=2, random_state=0, n_threads=n, **settings) for n in (1, 2)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fit in fits:
            fit.fit(X)
    one, two = fits
    np.testing.assert_allclose(two.elbo_trace_, one.elbo_trace_, rtol=1e-10)
    np.testing.assert_allclose(two.gene_shape_, one.gene_shape_, rtol=1e-10)
    np.testing.assert_allclose(two.cell_shape_, one.cell_shape_, rtol=1e-10)
