"""Shared fixtures: the real data sets the package bundles (`vbsnmf.datasets`), so that the
tests need nothing beside a fresh clone."""

from __future__ import annotations

import os
import sys
import warnings

# Numba's parallel kernels run on OpenMP (libgomp), whose idle threads spin before they
# sleep: with the suite's worker per core (or any other load), an n_threads=2 fit's
# spinning threads take the core its other thread, or the other worker, waits for; on a
# loaded machine a fit was 10 to 40 times slower than with passive waiting, and
# tests/test_batch.py took 78 s instead of 13 s. The policy changes no number (the same
# bits), only how idle threads wait; set before libgomp loads, and inherited by the
# xdist workers and the tests' subprocesses. An OMP_WAIT_POLICY already set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import pytest

import vbsnmf


@pytest.fixture(scope="session")
def _pbmc_tiny():
    return vbsnmf.datasets.pbmc_tiny()


@pytest.fixture
def pbmc_tiny(_pbmc_tiny):
    """pbmc_tiny (1,107 cells x 507 genes), a fresh copy per test."""
    return _pbmc_tiny.copy()


@pytest.fixture(scope="session")
def _pbmc_facs():
    return vbsnmf.datasets.pbmc_facs()


@pytest.fixture
def pbmc_facs(_pbmc_facs):
    """pbmc_facs (3,774 cells x 16,791 genes, obs: celltype, subpop), a fresh copy per test."""
    return _pbmc_facs.copy()


@pytest.fixture(autouse=True)
def _close_figures():
    """The figures a test drew closed after it: pyplot keeps every figure open (and warns
    past 20); only where the test imported pyplot, so other tests do not pay its import."""
    yield
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


@pytest.fixture(scope="module")
def plotted_fit():
    """200 cells and 300 genes of pbmc_tiny with a K=3 fit, an embedding (``X_umap``) and
    clusters (``obs['cluster']``, each cell's dominant factor): what the plots draw. One per
    test module, which the plot tests share and must not edit (they copy it)."""
    adata = vbsnmf.datasets.pbmc_tiny()[:200, :300].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(adata, 3, max_iter=10, n_threads=1)
    adata.obsm["X_umap"] = np.log1p(adata.obsm["X_nmf"][:, :2])
    dominant = adata.obsm["X_nmf"].argmax(axis=1)
    adata.obs["cluster"] = pd.Categorical([f"c{factor}" for factor in dominant])
    return adata


@pytest.fixture(scope="module")
def plotted_selection(plotted_fit):
    """`plotted_fit` with a K selection of two Ks under ``.uns['nmf_k_selection']``, for the
    plots of a selection. The plot tests share it and must not edit it (they copy it)."""
    adata = plotted_fit.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.select_k(adata, [1, 2], max_iter=5, n_threads=1)
    return adata


@pytest.fixture
def no_open_figures():
    """The test starts with pyplot holding no figure, and leaves none (plot modules use it
    for every test: ``pytestmark = pytest.mark.usefixtures("no_open_figures")``)."""
    import matplotlib.pyplot as plt

    plt.close("all")
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def client():
    """An in-process Dask cluster of one single-threaded worker and a client of it, one per
    test module (a module that needs another cluster defines its own ``client``)."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    with distributed.Client(cluster) as dask_client:
        yield dask_client
    cluster.close()
