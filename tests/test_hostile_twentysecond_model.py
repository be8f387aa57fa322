"""The model as `VBNMF`, `VBNTF` and `fit_dask` drive it, twenty-second hostile pass: a
float64 fit whose counts are large enough that the ELBO's rounding exceeds what ``tol``
resolves (a cell of twelve counts of 1e12, each below the count limit) let its trace fall
and stopped on the rounding without a word, where float32 warns; and a float32 batch fit
on Dask never gave float32's rounding warning that the same fit in memory gives."""

from __future__ import annotations

import warnings
from functools import partial

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from test_dask import local_client

import vbsnmf
from vbsnmf import VBNMF, VBNTF, _model


def _counts(seed: int = 0, n_cells: int = 20, n_genes: int = 12, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    means = rng.gamma(0.5, 2, (n_cells, 2)) @ rng.gamma(0.5, 1, (n_genes, 2)).T
    return rng.poisson(means * scale).astype(np.float64)


def _rounding_warnings(fit) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit()
    return [str(w.message) for w in caught if "holds this fit's ELBO" in str(w.message)]


def _with_cell_of(count: float) -> np.ndarray:
    counts = _counts()
    counts[3] = count  # every gene of one cell at ``count``
    return counts


# -- 1: float64's rounding at the largest counts ---------------------------------------------
def test_a_float64_fit_whose_trace_falls_by_rounding_warns_and_names_a_tol():
    counts = _with_cell_of(1e12)  # each count below the limit of 1e13
    model = VBNMF(2, random_state=0, n_threads=1)
    messages = _rounding_warnings(lambda: model.fit(sp.csr_matrix(counts)))
    # what the warning is about: the trace of an exact coordinate ascent fell
    assert np.diff(model.elbo_trace_).min() < 0 and model.converged_
    assert len(messages) == 1 and messages[0].startswith("float64 holds")
    # float64 holds each term x log x to 2**-53 relative: the rounding it names
    rounding = counts.sum() * np.log(counts.max()) * 2.0**-53
    assert f"about {rounding:.2g} nats" in messages[0]
    wanted = float(messages[0].rsplit("raise tol to at least ", 1)[1])
    assert wanted == pytest.approx(rounding / abs(model.elbo_trace_[-1]), rel=0.5)


@pytest.mark.parametrize("count", [1e11, 1e13])
def test_float64_counts_whose_rounding_tol_resolves_fit_quietly(count):
    """A cell of counts of 1e11 keeps its trace monotone; one count of 1e13, the limit,
    rounds it by less than tol resolves: neither warns, nor do ordinary counts."""
    if count == 1e11:
        counts = _with_cell_of(count)
    else:
        counts = _counts()
        counts[3, 4] = count
    for matrix in (counts, _counts(1)):
        model = VBNMF(2, random_state=0, n_threads=1)
        assert not _rounding_warnings(partial(model.fit, sp.csr_matrix(matrix)))
        falls = np.diff(model.elbo_trace_)
        assert falls.min() >= -1e-5 * abs(model.elbo_trace_[-1])


def test_a_float64_fit_run_to_an_exact_repeat_is_not_told_to_raise_tol():
    """tol=0 asks for the ELBO to repeat exactly, which only its rounding can end: no
    warning (the rounding of any counts exceeds 0 nats)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _model.warn_elbo_rounding([-1000.0, -1000.0], True, np.float64, 0.0, 1.2e13, 1e12)
    with pytest.warns(vbsnmf.ConvergenceWarning, match="raise tol to at least 4e-05"):
        _model.warn_elbo_rounding([-1000.0, -1000.0], True, np.float64, 1e-5, 1.2e13, 1e12)


def test_a_tensor_fit_warns_of_float64_rounding_as_the_matrix_fit():
    counts = _with_cell_of(1e12)
    coords = np.nonzero(counts)
    model = VBNTF(2, prior="hierarchical", random_state=0, n_threads=1)
    messages = _rounding_warnings(
        lambda: model.fit(np.stack(coords, axis=1), counts[coords], shape=counts.shape)
    )
    assert np.diff(model.elbo_trace_).min() < 0
    assert len(messages) == 1 and messages[0].startswith("float64 holds")


# -- 2: the rounding warning on Dask -----------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    with local_client(1, processes=False) as dask_client:
        yield dask_client


def test_a_float32_fit_on_dask_warns_of_its_rounding_as_in_memory(client):
    counts = _counts(0, 40, 20, scale=2e5)  # pseudobulk-sized counts
    settings = dict(prior="gamma", dtype=np.float32, random_state=0, n_threads=1)
    fitted = VBNMF(2, **settings)
    in_memory = _rounding_warnings(lambda: fitted.fit(counts))
    assert len(in_memory) == 1 and in_memory[0].startswith("float32 holds")
    results = []

    def on_dask():  # from the fit in memory: a few passes to converge again
        X = da.from_array(counts, chunks=(15, 20))
        results.append(vbsnmf.fit_dask(X, 2, client=client, init=fitted, **settings))

    messages = _rounding_warnings(on_dask)
    assert results[0].converged and len(messages) == 1
    assert messages[0].startswith("float32 holds")
    assert results[0].total_count == counts.sum() and results[0].largest_count == counts.max()


def test_a_float64_fit_on_dask_of_ordinary_counts_does_not_warn(client):
    counts = _counts(0, 40, 20)
    fitted = VBNMF(2, prior="gamma", random_state=0, n_threads=1).fit(counts)
    X = da.from_array(counts, chunks=(15, 20))
    fit = lambda: vbsnmf.fit_dask(X, 2, client=client, init=fitted, prior="gamma", n_threads=1)  # noqa: E731
    assert not _rounding_warnings(fit)
