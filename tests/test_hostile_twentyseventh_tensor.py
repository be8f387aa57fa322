"""Twenty-seventh hostile pass, the tensor extension (`VBNTF`): a tensor without counts
under the learned prior, and what the fit answers to None, a path, an AnnData or Python
integers beyond int64 given as the tensor."""

import warnings

import numpy as np
import pytest

import vbsnmf


def _fit(model, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(*args)


@pytest.mark.parametrize(
    "dtype, shape, solver",
    [
        (np.float32, (4, 4, 4, 4, 4), "batch"),
        (np.float32, (4, 4, 4, 4, 4), "svi"),
        (np.float64, (3,) * 30, "batch"),
    ],
)
def test_a_tensor_without_counts_fits_under_the_learned_prior(dtype, shape, solver):
    """The fixed prior fitted it; the learned prior's start expected some 1e49 counts of
    the 5-mode tensor (its grand total floored at 1e-12, divided in as T^((D - 1) / D)),
    beyond float32, and the fit ended in a FloatingPointError that blamed a damaged
    checkpoint or extreme counts."""
    model = vbsnmf.VBNTF(
        2, prior="hierarchical", dtype=dtype, solver=solver, max_iter=20, n_epochs=2,
        random_state=0, n_threads=1,
    )  # fmt: skip
    _fit(model, np.zeros((0, len(shape)), dtype=int), np.zeros(0), shape)
    assert all(np.all(np.isfinite(factor)) for factor in model.factors_)
    assert np.all(np.isfinite(model.elbo_trace_)) and len(model.elbo_trace_) > 0
    for hyper in model.hyperparameters_:
        assert np.isfinite(hyper["scale_prior_mean"]) and hyper["scale_prior_mean"] > 0


def test_the_learned_start_of_a_tensor_without_counts_has_the_fixed_starts_mean():
    """Every factor's mean at the start is the fixed prior's start's, ``(1e-12 / K)^(1/D)``
    for a small tensor (the mean count's floor, shared among K components and D modes):
    every rate ``1.5`` over it."""
    shape, n_components = (3, 4, 5), 2
    coords, values = np.zeros((0, 3), dtype=int), np.zeros(0)
    learned = _fit(
        vbsnmf.VBNTF(n_components, prior="hierarchical", max_iter=0, random_state=0),
        coords, values, shape,
    )  # fmt: skip
    fixed = _fit(vbsnmf.VBNTF(n_components, max_iter=0, random_state=0), coords, values, shape)
    rate = 1.5 / (1e-12 / n_components) ** (1 / 3)
    for d, n_rows in enumerate(shape):
        np.testing.assert_allclose(fixed.rates_[d], rate, rtol=1e-12)
        assert learned.rates_[d].shape == (n_rows, n_components)
        np.testing.assert_allclose(learned.rates_[d], rate, rtol=1e-12)
    # the start expects at most K times the shortest mode (`_model.start_factor_mean`)
    expected = np.prod([factor.sum(axis=0) for factor in learned.factors_], axis=0).sum()
    assert expected <= n_components * min(shape)


@pytest.mark.parametrize(
    "given, message",
    [
        (None, r"coords is None: a tensor is given as an \(nnz, D\) integer array"),
        ("counts.npz", r"coords is a path \('counts.npz'\), not a tensor: load it first"),
        ("anndata", r"coords is an AnnData, a matrix: fit it with vbsnmf.VBNMF"),
    ],
)
def test_none_a_path_and_an_anndata_are_named(given, message):
    """numpy read them as a 0-D array ("got an array of shape ()") or, the AnnData, as a
    ragged one ("the maximum number of dimension of 64")."""
    if given == "anndata":
        anndata = pytest.importorskip("anndata")
        given = anndata.AnnData(np.ones((5, 4), dtype=np.float32))
    with pytest.raises(TypeError, match=message):
        vbsnmf.VBNTF(2, max_iter=2, n_threads=1).fit(given)


def test_python_integers_beyond_int64_are_not_told_of_a_dataframe():
    """A list of indices with an integer beyond int64 reaches numpy as objects: the advice
    was a DataFrame's (``coords.to_numpy(dtype=np.int64)``), which a list has not."""
    with pytest.raises(TypeError, match=r"every index must be an integer between 0 and") as info:
        vbsnmf.VBNTF(2, max_iter=2, n_threads=1).fit([[0, 1], [1, 2**64]])
    assert "DataFrame" not in str(info.value)
