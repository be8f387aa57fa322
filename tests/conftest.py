"""Shared fixtures: the real data sets (bundled copies and ``../shared/data``)."""

from __future__ import annotations

from pathlib import Path

import pytest

import vbsnmf

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project root (CI clones main with shared/ beside it)."""
    assert SHARED_DATA.is_dir(), f"expected the shared data at {SHARED_DATA}"
    return SHARED_DATA


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
