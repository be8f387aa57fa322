"""The first fit of a kind after installing compiles vbsnmf's kernels for up to a minute
(docs/performance.md, "The first fit compiles"); the command line sat silent all that
time, the progress bar appearing only after the first iteration. It now says once, when
Numba starts compiling one of vbsnmf's kernels (a miss of its cache)."""

from __future__ import annotations

import numba
import pytest
from test_hostile import FIT, h5ad

import vbsnmf
from vbsnmf.cli import COMPILING, main

LOUD = [option for option in FIT if option != "--quiet"]


def _new_kernel(module: str):
    """A kernel Numba has not compiled yet (no cache), defined as if in ``module``."""

    def add_one(x):
        return x + 1

    add_one.__module__ = module
    return numba.njit(add_one)


@pytest.fixture
def compiling(tmp_path, monkeypatch):
    """``tl.nmf`` first calling the kernels put in the list returned."""
    h5ad(tmp_path)
    monkeypatch.chdir(tmp_path)
    kernels = []
    nmf = vbsnmf.tl.nmf

    def nmf_after_compiling(*args, **kwargs):
        for kernel in kernels:
            kernel(1)
        return nmf(*args, **kwargs)

    monkeypatch.setattr(vbsnmf.tl, "nmf", nmf_after_compiling)
    return kernels


def test_a_compile_is_told_once_before_the_fit_and_never_when_nothing_compiles(compiling, capfd):
    compiling[:] = [_new_kernel("vbsnmf._kernels"), _new_kernel("vbsnmf.tl._nmf")]
    assert main(["fit", "small.h5ad", *LOUD, "-o", "first"]) == 0
    err = capfd.readouterr().err
    assert err.count(COMPILING) == 1, err
    assert err.index(COMPILING) < err.index("batch K=2")  # before the progress bar
    # everything this fit needs is compiled in this process now: nothing to tell
    assert main(["fit", "small.h5ad", *LOUD, "-o", "second"]) == 0
    assert COMPILING not in capfd.readouterr().err


def test_other_packages_kernels_and_quiet_runs_are_not_told(compiling, capfd):
    # umap-learn compiles some in every run; a function made by exec may have no module
    compiling[:] = [_new_kernel("umap.umap_"), _new_kernel(None)]
    assert main(["fit", "small.h5ad", *LOUD, "-o", "first"]) == 0
    assert COMPILING not in capfd.readouterr().err
    compiling[:] = [_new_kernel("vbsnmf._kernels")]
    assert main(["fit", "small.h5ad", *FIT, "-o", "second"]) == 0  # --quiet
    assert COMPILING not in capfd.readouterr().err
