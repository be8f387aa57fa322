"""Shared fixtures: the real data sets the package bundles (`vbsnmf.datasets`), so that the
tests need nothing beside a fresh clone."""

from __future__ import annotations

import sys

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
