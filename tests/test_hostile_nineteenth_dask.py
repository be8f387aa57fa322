"""The nineteenth hostile review's defects of the Dask path, each against an independent
computation (the same counts in memory) on an in-process cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from test_dask import local_client

import vbsnmf
from vbsnmf import _utils

pytestmark = pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")

FAST = dict(max_iter=3, tol=0.0, random_state=0, n_threads=1)


@pytest.fixture(scope="module")
def client():
    """One in-process worker with one thread: quick to start, enough for the tests here."""
    with local_client(1, processes=False) as dask_client:
        yield dask_client


def _counts(n_cells: int = 60, n_genes: int = 20, seed: int = 0) -> np.ndarray:
    counts = np.random.default_rng(seed).poisson(0.8, (n_cells, n_genes)).astype(np.float64)
    counts[:, 0] += 1  # no empty cell
    return counts


# -- 1: chunk tasks side by side under Numba's workqueue threading layer ------------------------
_WORKQUEUE_FIT = """
import warnings
import numpy as np, scipy.sparse as sp, dask.array as da, anndata as ad, numba
from distributed import Client, LocalCluster
import vbsnmf
from vbsnmf import tl
warnings.simplefilter("ignore")
counts = np.random.default_rng(0).poisson(0.8, (400, 30)).astype(np.float64)
counts[:, 0] += 1
options = dict(max_iter=4, tol=0.0, random_state=0, n_threads=1)
expected = vbsnmf.VBNMF(3, **options).fit(counts)
svi = dict(solver="svi", n_epochs=2, batch_size=100, **options)
expected_svi = vbsnmf.VBNMF(3, **svi).fit(counts)
lazy = da.from_array(sp.csr_matrix(counts), chunks=(10, -1))
cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0")
with Client(cluster):
    fitted = vbsnmf.VBNMF(3, **options).fit(lazy)
    adata = ad.AnnData(lazy)
    tl.nmf(adata, 3, **svi)
cluster.close()
assert numba.threading_layer() == "workqueue", numba.threading_layer()
np.testing.assert_allclose(fitted.elbo_trace_, expected.elbo_trace_, rtol=1e-10)
np.testing.assert_allclose(adata.uns["nmf"]["elbo_trace"], expected_svi.elbo_trace_, rtol=1e-10)
print("fitted")
"""


@pytest.mark.slow  # a fresh process compiles the kernels for its threading layer
def test_chunk_tasks_of_a_worker_with_two_threads_run_under_the_workqueue_layer():
    """A worker with two threads runs two chunks' tasks at once; under Numba's workqueue
    threading layer (its fallback when neither TBB nor OpenMP loads) their parallel
    kernels' overlapping launches aborted the worker process ("Concurrent access has
    been detected", exit by SIGABRT), in VBNMF.fit and in tl.nmf's count check. Now such
    tasks take turns: the fits end, with the numbers of the same fits in memory."""
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    done = subprocess.run(
        [sys.executable, "-c", _WORKQUEUE_FIT], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fitted" in done.stdout


@pytest.mark.parametrize(("safe", "most_at_once"), [(False, 1), (True, 2)])
def test_tasks_take_turns_only_where_the_threading_layer_needs_it(monkeypatch, safe, most_at_once):
    """`one_launch_at_a_time`: two threads running wrapped tasks overlap under a layer that
    allows it, never under workqueue (or before the layer is known)."""
    monkeypatch.setattr(_utils, "_overlapping_launches_safe", lambda: safe)
    running, most = [0], [0]
    both_started = threading.Barrier(2, timeout=2) if safe else None
    guard = threading.Lock()

    @_utils.one_launch_at_a_time
    def task():
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
        if both_started is not None:
            both_started.wait()  # both inside at once: the layer lets them overlap
        time.sleep(0.05)
        with guard:
            running[0] -= 1

    threads = [threading.Thread(target=task) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == most_at_once


# -- 2: fit_svi_dask(init=...) -------------------------------------------------------------------
def test_fit_svi_dask_refuses_a_start_as_a_start(client):
    """fit_svi_dask(X, K, init=result) (fit_dask takes init=; SVI on Dask starts at random)
    answered "init must be one of ('random', 'nndsvda'), got DaskFitResult(...)" with the
    whole result's repr. Now the refusal of a start on SVI; "random" still starts it as
    without init, as in memory."""
    lazy = da.from_array(_counts(), chunks=(20, -1))
    previous = vbsnmf.fit_dask(lazy, 3, **FAST)
    for start in (previous, previous.gather(), {"cell_shape": np.ones((60, 3))}):
        with pytest.raises(ValueError) as refused:
            vbsnmf.fit_svi_dask(lazy, 3, init=start, n_epochs=1)
        assert str(refused.value) == "init is not supported for solver='svi' on a dask X"
    svi = dict(n_epochs=2, batch_size=20, random_state=0)
    given = vbsnmf.fit_svi_dask(lazy, 3, init="random", **svi)
    in_memory = vbsnmf.VBNMF(3, solver="svi", **svi).fit(_counts())
    np.testing.assert_allclose(given.elbo_trace, in_memory.elbo_trace_, rtol=1e-12)


# -- 3: a dask mask of sparse chunks -------------------------------------------------------------
def test_a_dask_mask_of_sparse_chunks_is_the_same_mask_in_memory():
    """VBNMF.fit(X, mask=M), M a dask array of sparse chunks, failed with "mask must hold
    numbers: setting an array element with a sequence." (a dense-chunked M was taken).
    Now it is computed as transform computes a dask X: the fit with the mask in memory."""
    counts = _counts()
    mask = np.zeros_like(counts)
    mask[::7, 3] = 1
    mask[5, :4] = 2
    options = {**FAST, "prior": "gamma"}
    expected = vbsnmf.VBNMF(3, **options).fit(counts, mask=mask.astype(bool))
    for chunks in [(20, -1), (13, 7)]:
        lazy_mask = da.from_array(sp.csr_matrix(mask), chunks=chunks)
        fitted = vbsnmf.VBNMF(3, **options).fit(counts, mask=lazy_mask)
        np.testing.assert_allclose(fitted.elbo_trace_, expected.elbo_trace_, rtol=1e-12)
        np.testing.assert_allclose(fitted.cell_rate_, expected.cell_rate_, rtol=1e-12)


# -- 4: fit_dask of an AnnData without X --------------------------------------------------------
def test_fit_dask_of_an_anndata_without_x_names_its_layers():
    """fit_dask(adata), its counts a dask layer and X None, said "the AnnData's X is in
    memory (builtins.NoneType) ...: fit it with vbsnmf.tl.nmf(adata) or
    VBNMF.fit(adata.X)", both of which fail on that AnnData. Now it says there is no X
    and names the layers to pass."""
    adata = ad.AnnData(
        obs=pd.DataFrame(index=[f"c{i}" for i in range(10)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(5)]),
        layers={"counts": da.from_array(np.ones((10, 5)), chunks=(5, -1))},
    )
    for fit in (vbsnmf.fit_dask, vbsnmf.fit_svi_dask):
        with pytest.raises(TypeError, match="the AnnData has no X") as refused:
            fit(adata, 2)
        assert "adata.layers['counts']" in str(refused.value)
        assert "in memory" not in str(refused.value)


# -- 5: a lazy start of strings or sparse chunks ------------------------------------------------
def test_a_dask_start_of_strings_or_sparse_chunks_is_refused_by_its_key(client):
    """fit_dask(init={...}) with a dask cell_shape of strings failed, once its blocks were
    computed, with numpy's "could not convert string to float", one of sparse chunks
    with "ufunc 'isfinite' not supported ..."; neither named the key, which the same
    start in memory gets. Now a TypeError naming it, before the fit; a numeric dask
    start still gives the fit from the same start in memory."""
    counts = _counts()
    lazy = da.from_array(counts, chunks=(20, -1))
    start = dict(cell_rate=np.ones(3), gene_shape=np.ones((20, 3)), gene_rate=np.ones(3))
    options = {**FAST, "prior": "gamma"}
    bad = [
        da.from_array(np.full((60, 3), "a"), chunks=(20, -1)),
        da.from_array(sp.csr_matrix(np.ones((60, 3))), chunks=(20, -1)),
    ]
    for cell_shape in bad:
        with pytest.raises(TypeError, match="init cell_shape must hold real numbers"):
            vbsnmf.fit_dask(lazy, 3, init={**start, "cell_shape": cell_shape}, **options)
    shapes = 1.0 + np.random.default_rng(1).random((60, 3))
    lazy_start = {**start, "cell_shape": da.from_array(shapes, chunks=(25, -1))}
    fitted = vbsnmf.fit_dask(lazy, 3, init=lazy_start, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        expected = vbsnmf.VBNMF(3, **options).fit(counts, init={**start, "cell_shape": shapes})
    np.testing.assert_allclose(fitted.elbo_trace, expected.elbo_trace_, rtol=1e-12)


# -- 6: masked chunks ---------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["batch", "svi"])
def test_masked_chunks_are_refused_with_advice_a_dask_x_can_take(client, solver):
    """A dask X of masked chunks was refused with the in-memory advice "pass the counts as
    X.filled(0); ... give them to VBNMF.fit(X, mask=...)": a dask array has no .filled
    and a dask X is fitted without mask=. Now the advice is da.ma.filled(X, 0), which
    fits as the filled counts in memory do."""
    counts = _counts()
    lazy = da.from_array(counts, chunks=(20, -1))
    masked = da.ma.masked_array(lazy, mask=lazy > 2)
    options = {**FAST, "solver": solver}
    if solver == "svi":
        options.update(n_epochs=2, batch_size=20)
    with pytest.raises(TypeError, match="is a masked array") as refused:
        vbsnmf.VBNMF(3, **options).fit(masked)
    assert "da.ma.filled(X, 0)" in str(refused.value)
    assert "mask=..." not in str(refused.value)
    fitted = vbsnmf.VBNMF(3, **options).fit(da.ma.filled(masked, 0))
    expected = vbsnmf.VBNMF(3, **options).fit(np.where(counts > 2, 0, counts))
    np.testing.assert_allclose(fitted.elbo_trace_, expected.elbo_trace_, rtol=1e-12)
