"""Defects of the estimators found by the eleventh hostile pass, each pinned by the case
that showed it."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import VBNMF, VBNTF


def _counts(n_cells=30, n_genes=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(1.0, (n_cells, n_genes)).astype(np.float64)


def _coords(n_entries=40, shape=(6, 5, 4), seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n, n_entries) for n in shape], axis=1)


def _mask(shape, fraction=0.1, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) < fraction).astype(np.float64)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_a_masked_array_as_mask_is_refused():
    """``fit(X_ma.filled(0), mask=X_ma)`` read the masked array's hidden data as the mask:
    the observed nonzero counts left the likelihood and the masked entries were fitted as
    zeros. A masked array is now refused as mask, with the advice to pass its mask."""
    X = _counts()
    X_ma = np.ma.masked_array(X, mask=_mask(X.shape, 0.2).astype(bool))
    model = VBNMF(3, max_iter=2, random_state=0, n_threads=1)
    with pytest.raises(TypeError, match="getmaskarray"):
        model.fit(X_ma.filled(0), mask=X_ma)
    assert not hasattr(model, "components_")


@pytest.mark.parametrize("value", [True, np.True_, "1e-3", None, 1j])
@pytest.mark.parametrize("make", [VBNMF, VBNTF])
def test_tol_takes_no_boolean_nor_text(make, value):
    """``tol=True`` went through float() as 1.0 (a fit stopped at once, reported as
    converged) and ``tol="1e-3"`` as a number, in VBNMF and VBNTF alike."""
    n_components = 3 if make is VBNMF else 2
    X = _counts() if make is VBNMF else _coords()
    with pytest.raises(TypeError, match="tol"):
        make(n_components, tol=value, max_iter=2, n_threads=1).fit(X)


@pytest.mark.parametrize("value", [True, "2"])
@pytest.mark.parametrize("name", ["prior_shape", "prior_rate", "tau"])
@pytest.mark.parametrize("make", [VBNMF, VBNTF])
def test_positive_numbers_take_no_boolean_nor_text(make, name, value):
    """``prior_shape``, ``prior_rate`` and ``tau`` took True as 1.0 and text as a number
    (`_validation.check_positive` and `check_tolerance` called float())."""
    n_components = 3 if make is VBNMF else 2
    X = _counts() if make is VBNMF else _coords()
    extra = {"solver": "svi", "n_epochs": 1} if name == "tau" else {"prior": "gamma"}
    model = make(n_components, max_iter=2, n_threads=1, **extra, **{name: value})
    with pytest.raises(TypeError, match=name):
        model.fit(X)


@pytest.mark.parametrize("fmt", ["lil", "dok", "dia"])
@pytest.mark.parametrize("kind", [sp.csr_array, sp.csr_matrix])
def test_a_mask_in_any_sparse_format_is_read_as_the_dense_one(kind, fmt):
    """A LIL mask failed with numpy's "setting an array element with a sequence" and a
    DOK mask with AttributeError: `_checked_mask` read ``.data`` in the mask's own
    format. Every format now gives the dense mask's fit, bit for bit."""
    X = _counts()
    dense = _mask(X.shape)
    options = dict(max_iter=3, random_state=0, n_threads=1)
    expected = VBNMF(3, **options).fit_transform(X, mask=dense)
    got = VBNMF(3, **options).fit_transform(X, mask=kind(dense).asformat(fmt))
    np.testing.assert_array_equal(got, expected)


def test_fit_builds_no_transform_output():
    """``fit`` called the `set_output`-wrapped ``fit_transform``: with a container that
    cannot be built it ran the whole fit, then raised, leaving the estimator fitted by the
    call that failed. ``fit`` builds no output: it fits and returns self."""
    pytest.importorskip("sklearn")
    X = _counts()
    options = dict(max_iter=3, random_state=0, n_threads=1)
    model = VBNMF(3, **options).set_output(transform="bogus")
    assert model.fit(X) is model
    np.testing.assert_array_equal(model.components_, VBNMF(3, **options).fit(X).components_)


def test_vbntf_resume_warning_as_error_leaves_the_earlier_fit_whole(tmp_path):
    """A resumed VBNTF fit whose checkpoint holds more iterations than ``max_iter`` warns;
    raised as an error, the warning came half-way through `_set_fitted`: the new
    factors, shape and hyperparameters beside the old trace and ``n_iter_``."""
    checkpoint = os.fspath(tmp_path / "fit.npz")
    coords = _coords(80, (9, 7, 6))
    VBNTF(2, max_iter=6, random_state=0, n_threads=1, checkpoint=checkpoint).fit(coords)
    model = VBNTF(2, max_iter=4, random_state=0, n_threads=1).fit(_coords(30, (5, 4, 3)))
    old_shape, old_n_iter = model.shape_, model.n_iter_
    old_factors = [factor.copy() for factor in model.factors_]
    old_trace = model.elbo_trace_.copy()
    model.set_params(checkpoint=checkpoint, resume=True, max_iter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="already holds 6 iterations"):
            model.fit(coords)
    assert model.shape_ == old_shape and model.n_iter_ == old_n_iter
    for factor, old in zip(model.factors_, old_factors):
        np.testing.assert_array_equal(factor, old)
    np.testing.assert_array_equal(model.elbo_trace_, old_trace)


def _start(n_cells=30, n_genes=20, n_components=3):
    return {
        "cell_shape": np.ones((n_cells, n_components)),
        "cell_rate": np.ones(n_components),
        "gene_shape": np.ones((n_genes, n_components)),
        "gene_rate": np.ones(n_components),
    }


@pytest.mark.parametrize(
    ("key", "value", "error", "message"),
    [
        ("cell_factor_shape", np.ones(5), ValueError, r"cell_factor_shape .*\(3,\)"),
        ("gene_factor_shape", np.ones((3, 3)), ValueError, r"gene_factor_shape .*\(3,\)"),
        ("cell_factor_shape", ["a", "b", "c"], TypeError, "cell_factor_shape"),
        ("cell_scale_prior_mean", "a", TypeError, "cell_scale_prior_mean"),
        ("gene_scale_prior_shape", "2", TypeError, "gene_scale_prior_shape"),
        ("cell_scale_prior_mean", np.ones(2), ValueError, "cell_scale_prior_mean"),
        ("gene_scale_prior_shape", True, TypeError, "gene_scale_prior_shape"),
    ],
)
def test_malformed_warm_start_hyperparameters_are_named(key, value, error, message):
    """A warm start's hyperparameters of the wrong length or not numbers gave numpy's
    broadcast error or Python's "could not convert string to float" (or were taken:
    text and booleans as numbers); the error now names the key and the shape (K,)."""
    model = VBNMF(3, max_iter=2, random_state=0, n_threads=1)
    with pytest.raises(error, match=message):
        model.fit(_counts(), init={**_start(), key: value})
    assert not hasattr(model, "components_")


def test_scale_q_of_text_is_named():
    """``cell_scale_shape`` of text gave numpy's "could not convert string to float"."""
    init = {**_start(), "cell_scale_shape": np.full(30, "a"), "cell_scale_rate": np.ones(30)}
    with pytest.raises(TypeError, match="cell_scale_shape"):
        VBNMF(3, max_iter=2, random_state=0, n_threads=1).fit(_counts(), init=init)


def test_a_masked_gamma_fit_warm_starts_the_same_masked_fit():
    """``VBNMF(prior="gamma").fit(X, mask=M)`` keeps per-entry rates (n x K), and such a
    model was refused as ``init`` of the very same fit ("init cell_rate has shape (30, 3),
    expected (3,)"). It now starts it: three plain iterations from three equal six."""
    X, mask = _counts(), _mask((30, 20))
    options = dict(prior="gamma", accelerate=False, tol=0.0, random_state=0, n_threads=1)
    first = VBNMF(3, max_iter=3, **options).fit(X, mask=mask)
    assert first.cell_rate_.shape == (30, 3) and first.gene_rate_.shape == (20, 3)
    resumed = VBNMF(3, max_iter=3, **options).fit(X, mask=mask, init=first)
    whole = VBNMF(3, max_iter=6, **options).fit(X, mask=mask)
    np.testing.assert_array_equal(resumed.cell_shape_, whole.cell_shape_)
    np.testing.assert_array_equal(resumed.gene_rate_, whole.gene_rate_)
    np.testing.assert_array_equal(resumed.elbo_trace_, whole.elbo_trace_[3:])


def test_per_entry_rates_without_a_mask_are_refused_with_advice():
    """Per-entry rates start a fixed-prior fit only with a mask (the unmasked fit keeps
    rates per component); the refusal says so."""
    X, mask = _counts(), _mask((30, 20))
    first = VBNMF(3, prior="gamma", max_iter=3, random_state=0, n_threads=1)
    first.fit(X, mask=mask)
    with pytest.raises(ValueError, match="mask="):
        VBNMF(3, prior="gamma", max_iter=3, n_threads=1).fit(X, init=first)


@pytest.mark.parametrize("form", ["nonzeros", "cells"])
def test_svi_prints_its_evaluated_epochs_when_verbose(capsys, form):
    """``VBNMF(solver="svi", verbose=True)`` printed nothing, though SVI evaluates the
    ELBO after its epochs; it now prints each evaluated epoch's ELBO, as batch prints its
    passes."""
    prior = "gamma" if form == "nonzeros" else "hierarchical"
    model = VBNMF(
        3,
        solver="svi",
        svi_form=form,
        prior=prior,
        n_epochs=3,
        verbose=True,
        random_state=0,
        n_threads=1,
    )
    model.fit(_counts())
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", "1"], ["epoch", "2"], ["epoch", "3"]]
    printed = [float(line.split()[-1]) for line in lines]
    np.testing.assert_allclose(printed, model.elbo_trace_, rtol=1e-9)


def test_svi_prints_nothing_unless_verbose(capsys):
    """The epochs' ELBO is printed only when asked for."""
    VBNMF(3, solver="svi", n_epochs=2, random_state=0, n_threads=1).fit(_counts())
    assert capsys.readouterr().out == ""
