"""Thirty-first hostile pass, batch VB in memory: masks of missing entries and `fit_triplets`.

Five defects, each test failing on the code before its fix: `fit_triplets` refused counts
held as Python objects (a pandas object column of numbers) as "counts must be numbers",
and a missing count among them (None, pd.NA) the same way instead of naming the NaN and
its place as `VBNMF.fit` does; it fitted timedelta64 arrays as row or column indices
(numpy counts them as integers; `VBNTF` refuses them); it refused indices read as floats
(np.loadtxt, a pandas column with a missing value) with no advice; given `VBNMF.fit`'s
``mask``, ``init`` or ``callback`` it failed with Python's "VBNMF.__init__() got an
unexpected keyword argument"; and ``VBNMF.fit(X, mask=np.isnan(X))``, the natural way to
give missing entries, was refused as "X must hold non-negative finite counts; found ...
NaN entries", without saying that a masked entry still needs a count in X (write 0
there, as `fit`'s docstring says).

The other tests are guards that pass on the code before the fixes too (the pass found no
defect there); each says so. They pin, against an independent dense numpy/scipy
implementation of docs/model.md: one coordinate-ascent step of a masked fit under both
priors (every q and hyperparameter to 1e-12, on 1 and 2 threads); the trace's last value
as the ELBO that drops the masked entries, with a row and a column masked whole (plain and
SQUAREM, float64 and float32); `fit_triplets`' duplicates, order and index dtypes as the
matrix fit, bit for bit; a mask's stored zeros and repeated entries that cancel (not
masked); and the reproducibility promise on masked float32 and float64 fits.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.optimize import brentq
from scipy.special import digamma, gammaln, logsumexp, polygamma

from vbsnmf import VBNMF, fit_triplets


def _counts(n_rows=9, n_cols=7, seed=1):
    return np.random.default_rng(seed).poisson(2, (n_rows, n_cols)).astype(float)


def _mask(shape):
    """A whole row, a whole column and two single entries (one may be a zero of X)."""
    mask = np.zeros(shape)
    mask[0, :] = mask[:, 1] = 1
    mask[3, 4] = mask[5, 5] = 1
    return mask


def _quiet_fit(model, X, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter's ConvergenceWarning
        return model.fit(X, **kwargs)


# -- an independent dense reference of docs/model.md -----------------------------------------
def _f64(values):
    return np.array(values, dtype=np.float64)


def _rates(model):
    shapes = _f64(model.cell_shape_), _f64(model.gene_shape_)
    return (
        _f64(np.broadcast_to(model.cell_rate_, shapes[0].shape)),
        _f64(np.broadcast_to(model.gene_rate_, shapes[1].shape)),
    )


def _shape_statistics(X, observed, row_log, col_log):
    """sum_j x_ij phi_ijl and sum_i x_ij phi_ijl over the observed nonzeros."""
    row_stat, col_stat = np.zeros_like(row_log), np.zeros_like(col_log)
    for i, j in zip(*np.nonzero((X != 0) & observed)):
        logits = row_log[i] + col_log[j]
        phi = np.exp(logits - logsumexp(logits))
        row_stat[i] += X[i, j] * phi
        col_stat[j] += X[i, j] * phi
    return row_stat, col_stat


def _data_terms(X, observed, row_log, col_log):
    return sum(
        X[i, j] * logsumexp(row_log[i] + col_log[j]) - gammaln(X[i, j] + 1)
        for i, j in zip(*np.nonzero((X != 0) & observed))
    )


def _kl_gamma(shape, rate, prior_shape, prior_rate):
    return (
        (shape - prior_shape) * digamma(shape)
        - gammaln(shape)
        + gammaln(prior_shape)
        + prior_shape * (np.log(rate) - np.log(prior_rate))
        + shape * (prior_rate - rate) / rate
    )


def _entropy(shape, rate):
    return shape - np.log(rate) + gammaln(shape) + (1 - shape) * digamma(shape)


def _side_terms(shape, rate, scale_shape, scale_rate, factor_shape, prior_shape, prior_mean):
    mean, log_mean = shape / rate, digamma(shape) - np.log(rate)
    scale, log_scale = scale_shape / scale_rate, digamma(scale_shape) - np.log(scale_rate)
    a = factor_shape[None, :]
    value = np.sum(a * log_scale[:, None] - gammaln(a) + (a - 1) * log_mean - scale[:, None] * mean)
    value += np.sum(
        prior_shape * np.log(prior_shape / prior_mean)
        - gammaln(prior_shape)
        + (prior_shape - 1) * log_scale
        - prior_shape / prior_mean * scale
    )
    return value + _entropy(shape, rate).sum() + _entropy(scale_shape, scale_rate).sum()


def _reference_elbo(X, observed, model):
    """model.md's ELBO of ``model``'s q, the masked entries left out of the likelihood."""
    row_shape, col_shape = _f64(model.cell_shape_), _f64(model.gene_shape_)
    row_rate, col_rate = _rates(model)
    row_log = digamma(row_shape) - np.log(row_rate)
    col_log = digamma(col_shape) - np.log(col_rate)
    value = _data_terms(X, observed, row_log, col_log)
    value -= np.sum(observed * ((row_shape / row_rate) @ (col_shape / col_rate).T))
    hyper = model.hyperparameters_
    if hyper is None:  # prior_shape = prior_rate = 1 in these tests
        return (
            value
            - _kl_gamma(row_shape, row_rate, 1.0, 1.0).sum()
            - _kl_gamma(col_shape, col_rate, 1.0, 1.0).sum()
        )
    for side, shape, rate in (("cell", row_shape, row_rate), ("gene", col_shape, col_rate)):
        value += _side_terms(
            shape,
            rate,
            _f64(getattr(model, f"{side}_scale_shape_")),
            _f64(getattr(model, f"{side}_scale_rate_")),
            _f64(hyper[f"{side}_factor_shape"]),
            float(hyper[f"{side}_scale_prior_shape"]),
            float(hyper[f"{side}_scale_prior_mean"]),
        )
    return value


def _root(function, derivative, low, high):
    """The root of an increasing or decreasing ``function`` in [low, high]: bisection on a
    log scale (scipy's brentq), then Newton's steps for the last digits."""
    log_root = brentq(lambda t: function(np.exp(t)), np.log(low), np.log(high), xtol=1e-13)
    root = np.exp(log_root)
    for _ in range(5):
        root -= function(root) / derivative(root)
    return root


def _inverse_digamma(value):
    return _root(lambda x: digamma(x) - value, lambda x: polygamma(1, x), 1e-300, 1e300)


def _gamma_shape(gap):
    return _root(
        lambda a: np.log(a) - digamma(a) - gap, lambda a: 1 / a - polygamma(1, a), 1e-30, 1e6
    )


def _reference_step(X, observed, model):
    """One step of model.md's batch coordinate ascent from ``model``'s q, in its order."""
    row_shape, col_shape = _f64(model.cell_shape_), _f64(model.gene_shape_)
    row_rate, col_rate = _rates(model)
    row_stat, col_stat = _shape_statistics(
        X, observed, digamma(row_shape) - np.log(row_rate), digamma(col_shape) - np.log(col_rate)
    )
    seen = observed.astype(float)
    hyper = model.hyperparameters_
    if hyper is None:  # Gamma(1, 1): rates from the old q(w), then the new q(z)
        row_rate_new = 1.0 + seen @ (col_shape / col_rate)
        row_shape = 1.0 + row_stat
        return {
            "cell_shape": row_shape,
            "cell_rate": row_rate_new,
            "gene_shape": 1.0 + col_stat,
            "gene_rate": 1.0 + seen.T @ (row_shape / row_rate_new),
        }
    a, c = _f64(hyper["cell_factor_shape"]), _f64(hyper["gene_factor_shape"])
    a_scale, b_scale = hyper["cell_scale_prior_shape"], hyper["cell_scale_prior_mean"]
    c_scale, d_scale = hyper["gene_scale_prior_shape"], hyper["gene_scale_prior_mean"]
    xi_mean = _f64(model.cell_scale_shape_) / _f64(model.cell_scale_rate_)
    eta_mean = _f64(model.gene_scale_shape_) / _f64(model.gene_scale_rate_)
    row_shape = a + row_stat
    row_rate = xi_mean[:, None] + seen @ (col_shape / col_rate)
    xi_shape = np.full(len(xi_mean), a_scale + a.sum())
    xi_rate = a_scale / b_scale + (row_shape / row_rate).sum(1)
    col_shape = c + col_stat
    col_rate = eta_mean[:, None] + seen.T @ (row_shape / row_rate)
    eta_shape = np.full(len(eta_mean), c_scale + c.sum())
    eta_rate = c_scale / d_scale + (col_shape / col_rate).sum(1)
    log_xi = digamma(xi_shape) - np.log(xi_rate)
    b_scale = np.mean(xi_shape / xi_rate)
    a_scale = _gamma_shape(np.log(b_scale) - log_xi.mean())
    row_log = digamma(row_shape) - np.log(row_rate) + log_xi[:, None]
    a = np.array([_inverse_digamma(v) for v in row_log.mean(0)])
    log_eta = digamma(eta_shape) - np.log(eta_rate)
    d_scale = np.mean(eta_shape / eta_rate)
    c_scale = _gamma_shape(np.log(d_scale) - log_eta.mean())
    col_log = digamma(col_shape) - np.log(col_rate) + log_eta[:, None]
    c = np.array([_inverse_digamma(v) for v in col_log.mean(0)])
    gauge = np.sqrt(b_scale / d_scale)
    return {
        "cell_shape": row_shape,
        "cell_rate": row_rate / gauge,
        "gene_shape": col_shape,
        "gene_rate": col_rate * gauge,
        "cell_scale_shape": xi_shape,
        "cell_scale_rate": xi_rate * gauge,
        "gene_scale_shape": eta_shape,
        "gene_scale_rate": eta_rate / gauge,
        "cell_factor_shape": a,
        "gene_factor_shape": c,
        "cell_scale_prior_shape": a_scale,
        "cell_scale_prior_mean": b_scale / gauge,
        "gene_scale_prior_shape": c_scale,
        "gene_scale_prior_mean": d_scale * gauge,
    }


def _model_values(model, key):
    if key in (model.hyperparameters_ or {}):
        return _f64(model.hyperparameters_[key])
    return _f64(np.broadcast_to(getattr(model, f"{key}_"), np.shape(getattr(model, f"{key}_"))))


# -- the defects -----------------------------------------------------------------------------
def test_fit_triplets_takes_counts_held_as_objects():
    """Counts of a pandas object column fit as their numbers (they were refused as "counts
    must be numbers, got dtype object")."""
    rows, cols = [0, 1, 2, 2], [0, 1, 1, 0]
    settings = dict(random_state=0, max_iter=5, n_threads=1)
    plain = _quiet_fit(VBNMF(1, **settings), sp.coo_array(([1, 2, 3, 4], (rows, cols))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        objects = fit_triplets(
            rows, cols, pd.Series([1, 2, 3, 4], dtype=object), (3, 2), 1, **settings
        )
    assert np.array_equal(objects.elbo_trace_, plain.elbo_trace_)


@pytest.mark.parametrize("missing", [None, pd.NA])
def test_fit_triplets_names_a_missing_count(missing):
    """A missing count among object counts is the NaN it stands for, named with its place
    (it was "counts must be numbers, got dtype object"); text is still refused."""
    counts = np.array([1, missing, 3], dtype=object)
    with pytest.raises(
        ValueError, match=r"1 NaN count, the first at position 1 \(row 1, column 1\)"
    ):
        fit_triplets([0, 1, 2], [0, 1, 1], counts, (3, 2), 1, max_iter=3)
    with pytest.raises(TypeError, match="not text"):
        fit_triplets([0, 1], [0, 1], np.array([1, "2"], dtype=object), (2, 2), 1)


@pytest.mark.parametrize("which", ["rows", "cols"])
def test_fit_triplets_refuses_timedelta_indices(which):
    """timedelta64 indices are refused, as `VBNTF` refuses them (numpy counts the dtype as an
    integer, and they were fitted)."""
    indices = {"rows": [0, 1, 2], "cols": [0, 1, 1]}
    indices[which] = np.array(indices[which], dtype="timedelta64[s]")
    with pytest.raises(TypeError, match=f"{which} must be integer indices, got dtype timedelta"):
        fit_triplets(indices["rows"], indices["cols"], [1, 2, 3], (3, 2), 1, max_iter=3)


def test_fit_triplets_advises_on_indices_read_as_floats():
    """Whole-number float indices are refused with the cast to make (no advice before);
    fractional ones and objects (None, ints beyond int64) are refused as before."""
    with pytest.raises(TypeError, match=r"pass rows\.astype\(np\.int64\)"):
        fit_triplets(np.array([0.0, 1.0, 2.0]), [0, 1, 1], [1, 2, 3], (3, 2), 1)
    with pytest.raises(TypeError, match=r"got dtype float64$"):
        fit_triplets([0, 1, 2], np.array([0.5, 1.0, 1.0]), [1, 2, 3], (3, 2), 1)
    with pytest.raises(TypeError, match=r"cols must be integer indices.*2\*\*63 - 1"):
        fit_triplets([0, 1], np.array([0, None], dtype=object), [1, 2], (2, 2), 1)


@pytest.mark.parametrize("name", ["mask", "init", "callback"])
def test_fit_triplets_names_fit_arguments(name):
    """``mask``, ``init`` or ``callback`` given to `fit_triplets` is refused saying how to
    pass it (Python's "VBNMF.__init__() got an unexpected keyword argument" before)."""
    with pytest.raises(TypeError, match=rf"fit_triplets takes no {name}=.*fit\(matrix, {name}="):
        fit_triplets([0, 1], [0, 1], [1, 2], (2, 2), 1, **{name: None})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_mask_over_invalid_values_says_to_write_zero(bad):
    """``fit(X, mask=...)`` over NaN (or inf, negative) entries of X says that a masked entry
    still needs a count in X (it said only that X must hold finite counts)."""
    X = _counts()
    X[0, 0] = X[2, 3] = bad
    mask = X != _counts()
    with pytest.raises(ValueError, match=r"\(0, 0\), \(2, 3\)\. Entries that mask= .* write 0"):
        VBNMF(2, random_state=0, max_iter=3, n_threads=1).fit(X, mask=mask)
    with pytest.raises(ValueError, match=r"\(2, 3\)$"):  # no mask: the message as it was
        VBNMF(2, random_state=0, max_iter=3, n_threads=1).fit(X)


# -- guards ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_masked_step_is_model_md_step(prior, n_threads):
    """A guard (passes on both): one plain step of a masked fit from a fitted q is model.md's
    step with the masked entries left out, every q and hyperparameter to 1e-12, and its
    trace value the reference ELBO of the returned q to 1e-12."""
    X, mask = _counts(), _mask((9, 7))
    observed = mask == 0
    settings = dict(prior=prior, n_threads=n_threads)
    if prior == "gamma":
        settings.update(prior_shape=1.0, prior_rate=1.0)
    start = _quiet_fit(VBNMF(3, max_iter=20, random_state=0, **settings), X, mask=mask)
    stepped = VBNMF(3, max_iter=1, accelerate=False, **settings)
    _quiet_fit(stepped, X, init=start, mask=mask)
    expected = _reference_step(X, observed, start)
    for key, values in expected.items():
        np.testing.assert_allclose(_model_values(stepped, key), values, rtol=1e-12, err_msg=key)
    reference = _reference_elbo(X, observed, stepped)
    assert stepped.elbo_trace_[-1] == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("accelerate", [False, True])
@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_masked_trace_ends_at_the_elbo_without_the_masked_entries(prior, accelerate, dtype):
    """A guard (passes on both): with a row and a column masked whole, the trace never falls
    and ends at the numpy ELBO that drops the masked entries (1e-11 in float64, float32's
    tables to 1e-5), every factor finite."""
    X, mask = _counts(12, 8, seed=3), _mask((12, 8))
    settings = dict(prior_shape=1.0, prior_rate=1.0) if prior == "gamma" else {}
    model = VBNMF(
        3, prior=prior, accelerate=accelerate, dtype=dtype, max_iter=60, random_state=1,
        n_threads=1, **settings,
    )  # fmt: skip
    _quiet_fit(model, X, mask=mask)
    trace = model.elbo_trace_
    assert np.all(np.diff(trace) >= 0)
    assert np.isfinite(model.cell_shape_).all() and np.isfinite(model.gene_rate_).all()
    reference = _reference_elbo(X, mask == 0, model)
    assert trace[-1] == pytest.approx(reference, rel=1e-11 if dtype == np.float64 else 1e-5)


def test_fit_triplets_duplicates_order_and_index_dtypes_are_the_matrix_fit():
    """A guard (passes on both): repeated coordinates summed, any order, int32, uint8 and
    uint64 indices, stored zeros: the fit of the matrix, bit for bit."""
    X = _counts(8, 6, seed=0)
    rows, cols = np.nonzero(X)
    counts = X[rows, cols]
    settings = dict(random_state=0, max_iter=20, n_threads=1)
    expected = _quiet_fit(VBNMF(2, **settings), X).elbo_trace_
    order = np.random.default_rng(0).permutation(len(rows))
    cases = [
        (np.r_[rows, rows], np.r_[cols, cols], np.r_[counts / 2, counts / 2]),
        (rows[order], cols[order], counts[order]),
        (rows.astype(np.int32), cols.astype(np.int32), counts),
        (rows.astype(np.uint8), cols.astype(np.uint64), counts.astype(np.uint8)),
        (np.r_[rows, 0], np.r_[cols, 5], np.r_[counts, 0.0]),
    ]
    for case_rows, case_cols, case_counts in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = fit_triplets(case_rows, case_cols, case_counts, X.shape, 2, **settings)
        assert np.array_equal(model.elbo_trace_, expected)


def test_mask_stored_zeros_and_cancelling_repeats_are_observed():
    """A guard (passes on both): a mask's nonzero entries are the missing ones, so a stored
    zero, and repeated entries that sum to zero, leave their entry observed."""
    X = _counts()
    mask = sp.coo_array(_mask(X.shape))
    rows, cols = mask.coords
    settings = dict(random_state=0, max_iter=10, n_threads=1)
    expected = _quiet_fit(VBNMF(2, **settings), X, mask=mask).elbo_trace_
    stored = sp.coo_array(
        (np.r_[mask.data, 0.0, 1.0, -1.0], (np.r_[rows, 6, 7, 7], np.r_[cols, 0, 2, 2])),
        shape=X.shape,
    )
    assert np.array_equal(_quiet_fit(VBNMF(2, **settings), X, mask=stored).elbo_trace_, expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("accelerate", [False, True])
def test_masked_fits_are_reproducible(accelerate, dtype):
    """A guard (passes on both): a masked fit is the same bit for bit for a seed and thread
    count (2 threads twice), and on 1 and 2 threads the same to 1e-10 in float64."""
    rng = np.random.default_rng(3)
    X = sp.random_array((120, 60), density=0.2, rng=rng, format="csr")
    X.data = np.ceil(X.data * 10)
    mask = sp.random_array((120, 60), density=0.05, rng=rng, format="csr").toarray()
    mask[5, :] = mask[:, 7] = 1
    fits = [
        _quiet_fit(
            VBNMF(3, accelerate=accelerate, dtype=dtype, random_state=0, max_iter=30, n_threads=n),
            X,
            mask=mask,
        )
        for n in (1, 2, 2)
    ]
    assert np.array_equal(fits[1].elbo_trace_, fits[2].elbo_trace_)
    assert np.array_equal(fits[1].cell_shape_, fits[2].cell_shape_)
    if dtype == np.float64:
        np.testing.assert_allclose(fits[0].elbo_trace_, fits[1].elbo_trace_, rtol=1e-10)
