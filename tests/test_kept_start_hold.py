"""The warning of a fit of several starts (`n_init` > 1) whose kept start ran out while it
still held its factor shapes (docs/model.md, "The hold"): it advises ``max_iter`` alone, as
the same fit of one start does, not "raise max_iter or tol" (no tol stops a held fit).
Each start's own warning is silenced; `_model.warn_kept_start` tells the kept one's from
its `_model.FitOutcome`. The held cases fail on the code before the change (they said
"or tol"); the released case is a guard that passes on both."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest

import vbsnmf
from vbsnmf import ConvergenceWarning, tl
from vbsnmf._model import HOLD_TOL


@pytest.fixture(scope="module")
def counts() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.poisson(rng.gamma(1.0, 1.0, (40, 3)) @ rng.gamma(0.5, 2.0, (3, 30))).astype(float)


def convergence_messages(fit) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit()
    return [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]


@pytest.mark.parametrize("accelerate", [False, True])
def test_kept_start_held_advises_max_iter(counts, accelerate):
    """Three passes under the learned prior end inside the hold, with one start or two."""
    for n_init in (1, 2):
        model = vbsnmf.VBNMF(
            3, max_iter=3, n_init=n_init, accelerate=accelerate, random_state=0, n_threads=1
        )
        messages = convergence_messages(lambda model=model: model.fit(counts))
        assert len(messages) == 1, (n_init, messages)
        assert "still held its factor shapes" in messages[0], (n_init, messages)
        assert messages[0].endswith("raise max_iter."), (n_init, messages)


def test_kept_start_released_keeps_tol_advice(counts):
    """Guard (passes before the change too): a kept start that released its shapes and then
    ran out is advised max_iter or tol, once, as before."""
    reference = vbsnmf.VBNMF(3, max_iter=200, tol=0, accelerate=False, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        trace = reference.fit(counts).elbo_trace_
    released_at = next(
        i for i in range(1, len(trace))
        if abs(trace[i] - trace[i - 1]) <= HOLD_TOL * abs(trace[i])
    )  # fmt: skip
    max_iter = released_at + 3
    model = vbsnmf.VBNMF(
        3, max_iter=max_iter, tol=1e-12, n_init=2, accelerate=False, random_state=0, n_threads=1
    )
    messages = convergence_messages(lambda: model.fit(counts))
    assert len(messages) == 1, messages
    assert messages[0].endswith("raise max_iter or tol."), messages


def test_tensor_kept_start_held_advises_max_iter():
    rng = np.random.default_rng(1)
    dense = rng.poisson(2.0, (6, 5, 4)).astype(float)
    coords = np.argwhere(dense)
    model = vbsnmf.VBNTF(
        2, prior="hierarchical", max_iter=3, n_init=2, accelerate=False, random_state=0
    )
    messages = convergence_messages(lambda: model.fit(coords, dense[dense != 0], dense.shape))
    assert len(messages) == 1, messages
    assert "still held its factor shapes" in messages[0], messages


def test_select_k_records_held_kept_start(counts):
    """`tl.select_k`'s ``shapes_held`` column reads the fits' warnings: with n_init=2 it was
    False for fits that ran out held."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        table = tl.select_k(ad.AnnData(counts), [2, 3], max_iter=3, n_init=2, n_threads=1)
    assert table["shapes_held"].all() and table["heldout_shapes_held"].all(), table


def test_dask_kept_start_held_advises_max_iter(counts):
    """The Dask driver's starts, on a cluster of one in-process worker."""
    import dask.array as da  # the [dask] extra, in [dev]
    import distributed

    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        model = vbsnmf.VBNMF(3, max_iter=3, n_init=2, random_state=0)
        messages = convergence_messages(lambda: model.fit(da.from_array(counts, chunks=(20, 30))))
    assert len(messages) == 1, messages
    assert "still held its factor shapes" in messages[0], messages
