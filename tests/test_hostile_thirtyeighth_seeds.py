"""Defects of ``random_state`` found by the thirty-eighth hostile pass: `vbsnmf.pl.umap`
given a numpy ``RandomState`` (a seed its docstring takes, as scanpy's) passed the object on
to scanpy, which recorded it in ``.uns['neighbors']``, ``['umap']`` and ``['leiden']``: the
AnnData could then not be written to ``.h5ad`` (anndata's ``IORegistryError``), the work
done. Now one integer seed is drawn from it and given to all three, which record it. Guards
pin that the same RandomState state gives the same UMAP and that a failed call leaves the
RandomState as it was."""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import pl, tl


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(1.0, (60, 30)).astype(np.float32)))
    tl.nmf(adata, 3, max_iter=5, random_state=0)
    return adata


@pytest.fixture(scope="module")
def umap_of_random_state(fitted):
    drawn = fitted.copy()
    pl.umap(drawn, color="leiden", random_state=np.random.RandomState(3), show=False)
    plt.close("all")
    return drawn


def test_umap_of_a_random_state_records_an_integer_seed(umap_of_random_state):
    # the RandomState itself was recorded by scanpy's neighbours, Leiden and UMAP
    records = [umap_of_random_state.uns[name]["params"] for name in ("neighbors", "umap", "leiden")]
    seeds = {record.get("random_state", 0) for record in records}  # scanpy omits 0
    assert len(seeds) == 1
    (seed,) = seeds
    assert isinstance(seed, (int, np.integer)) and 0 <= seed < 2**32


def test_umap_of_a_random_state_can_be_written_and_read(umap_of_random_state, tmp_path):
    # write_h5ad failed with anndata's IORegistryError on the recorded RandomState
    path = tmp_path / "umap.h5ad"
    umap_of_random_state.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.obsm["X_umap"], umap_of_random_state.obsm["X_umap"])
    assert back.uns["umap"]["params"].get("random_state", 0) == umap_of_random_state.uns["umap"][
        "params"
    ].get("random_state", 0)


def test_umap_replayed_from_the_recorded_seed_is_the_same(fitted, umap_of_random_state):
    # the record replays: the recorded integer gives the graph, clusters and UMAP again
    seed = umap_of_random_state.uns["umap"]["params"].get("random_state", 0)
    replayed = fitted.copy()
    pl.umap(replayed, color="leiden", random_state=seed, show=False)
    plt.close("all")
    np.testing.assert_array_equal(replayed.obsm["X_umap"], umap_of_random_state.obsm["X_umap"])
    assert list(replayed.obs["leiden"]) == list(umap_of_random_state.obs["leiden"])


def test_umap_of_equal_random_states_is_the_same(fitted, umap_of_random_state):
    # the same RandomState state gives the same result, as the same integer seed does
    again = fitted.copy()
    pl.umap(again, color="leiden", random_state=np.random.RandomState(3), show=False)
    plt.close("all")
    np.testing.assert_array_equal(again.obsm["X_umap"], umap_of_random_state.obsm["X_umap"])


def test_umap_failing_leaves_the_random_state_as_it_was(fitted, monkeypatch):
    # the seed is drawn before the graph; a failure after it (Leiden without igraph) must
    # not advance the RandomState, as a failed tl.nmf leaves it
    monkeypatch.setitem(sys.modules, "igraph", None)
    state = np.random.RandomState(3)
    with pytest.raises(ImportError, match="igraph"):
        pl.umap(fitted.copy(), color="leiden", random_state=state, show=False)
    plt.close("all")
    assert state.randint(2**31) == np.random.RandomState(3).randint(2**31)
