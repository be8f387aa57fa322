"""Shared fixtures: the real data sets the package bundles (`vbsnmf.datasets`), so that the
tests need nothing beside a fresh clone."""

from __future__ import annotations

import sys
import warnings

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
