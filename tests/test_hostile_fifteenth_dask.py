"""The fifteenth hostile review's defects of the Dask path, each against an independent
computation (the same counts in memory) on an in-process cluster."""

from __future__ import annotations

import warnings

import anndata as ad
import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from distributed import Client, LocalCluster

import vbsnmf
from vbsnmf import tl

pytestmark = pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")

FAST = dict(max_iter=3, tol=0.0, random_state=0, n_threads=1)


@pytest.fixture(scope="module")
def cluster():
    """One in-process worker with one thread: quick to start, enough for every test here."""
    local = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
    yield local
    local.close()


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster) as dask_client:
        yield dask_client


def _counts(n_cells: int = 120, n_genes: int = 30, seed: int = 0) -> np.ndarray:
    counts = np.random.default_rng(seed).poisson(0.8, (n_cells, n_genes)).astype(np.float64)
    counts[:, 0] += 1  # no empty cell
    return counts


# -- 1: the fit's cells computed by another scheduler -----------------------------------------
def test_a_fits_cells_are_computed_by_its_own_client(client, cluster):
    """A distributed fit's cells read its futures; vbsnmf computed them with dask's
    configured scheduler: gather() of a fit on a client that is not the default one, a
    start of an in-memory fit from its params, and VBNMF.fit / tl.nmf under
    dask.config.set(scheduler="threads") (after the whole fit) failed with dask's raw
    "Missing dependency". Now the client holding the futures computes them: the numbers
    of the same fit in memory."""
    counts = _counts()
    lazy = da.from_array(counts, chunks=(30, -1))
    options = {**FAST, "prior": "hierarchical"}
    expected = vbsnmf.VBNMF(3, **options).fit(counts)
    with Client(cluster, set_as_default=False) as other:
        result = vbsnmf.fit_dask(lazy, 3, client=other, **options)
        gathered = result.gather()
        np.testing.assert_allclose(gathered.row_shape, expected.cell_shape_, rtol=1e-9)
        np.testing.assert_allclose(gathered.row_rate, expected.cell_rate_, rtol=1e-9)
        continued = vbsnmf.VBNMF(3, **options).fit(counts, init=result.params)
        from_memory = vbsnmf.VBNMF(3, **options).fit(counts, init=gathered)
        np.testing.assert_allclose(continued.elbo_trace_, from_memory.elbo_trace_, rtol=1e-12)
    with dask.config.set(scheduler="threads"):
        model = vbsnmf.VBNMF(3, **options).fit(lazy)
        adata = ad.AnnData(lazy)
        tl.nmf(adata, 3, **options)
    np.testing.assert_allclose(model.cell_shape_, expected.cell_shape_, rtol=1e-9)
    expected_factors = expected.cell_shape_ / expected.cell_rate_
    np.testing.assert_allclose(adata.obsm["X_nmf"], expected_factors, rtol=1e-9)


# -- 2: checkpoint= with a dask X ----------------------------------------------------------
def _never_computed(block):
    raise AssertionError("a chunk was read before the checkpoint was refused")


def test_a_checkpoint_with_a_dask_x_is_refused_before_its_path_and_the_chunks(client, tmp_path):
    """A dask X is fitted without checkpoints, but the checkpoint's path was checked
    first: a file of the user's there got "... is not a vbsnmf checkpoint ...; name
    another path or remove it" (removing it led only to the dask refusal), and tl.nmf
    read every chunk twice before refusing. Now the dask refusal comes first, the file
    stays as it was and no chunk is read."""
    lazy = da.from_array(_counts(), chunks=(30, -1))
    notes = tmp_path / "notes.txt"
    notes.write_text("the user's own file")
    fits = [
        lambda X, path: vbsnmf.VBNMF(3, checkpoint=path).fit(X),
        lambda X, path: tl.nmf(ad.AnnData(X), 3, checkpoint=path),
        lambda X, path: tl.nmf(ad.AnnData(X), 3, solver="svi", checkpoint=path),
    ]
    never = lazy.map_blocks(_never_computed, dtype=np.float64, meta=np.empty((0, 0)))
    for fit in fits:
        with pytest.raises(ValueError, match="checkpoints are not supported for a dask X"):
            fit(lazy, notes)
        with pytest.raises(ValueError, match="checkpoints are not supported for a dask X"):
            fit(never, tmp_path / "fit.ckpt")
    assert notes.read_text() == "the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# -- 3: fit_dask's init= -----------------------------------------------------------------------
def test_fit_dask_takes_vbnmfs_init_strings_and_a_previous_result(client):
    """fit_dask(init="random") (VBNMF's default, which fit_svi_dask and VBNMF.fit on a dask
    X take) got "TypeError: init must be a fitted VBNMF, ...; got str", init="nndsvda" the
    same instead of the dask refusal, and a previous DaskFitResult "... got
    DaskFitResult" though its params are such a start. Now "random" is the random start,
    "nndsvda" is refused as VBNMF.fit refuses it, and a result starts from its params."""
    counts = _counts()
    lazy = da.from_array(counts, chunks=(30, -1))
    plain = vbsnmf.fit_dask(lazy, 3, **FAST)
    given = vbsnmf.fit_dask(lazy, 3, init="random", **FAST)
    np.testing.assert_array_equal(given.elbo_trace, plain.elbo_trace)
    with pytest.raises(ValueError, match="init='nndsvda' starts batch VB on a matrix in memory"):
        vbsnmf.fit_dask(lazy, 3, init="nndsvda", **FAST)
    continued = vbsnmf.fit_dask(lazy, 3, init=plain, **FAST)
    expected = vbsnmf.VBNMF(3, **FAST).fit(counts, init=plain.gather())
    np.testing.assert_allclose(continued.elbo_trace, expected.elbo_trace_, rtol=1e-12)
    in_memory = vbsnmf.VBNMF(3, **FAST).fit(counts, init=plain)
    np.testing.assert_allclose(in_memory.elbo_trace_, expected.elbo_trace_, rtol=1e-12)


# -- 4: NonCountWarning per start ----------------------------------------------------------------
def test_n_init_on_dask_warns_non_integer_values_once(client):
    """VBNMF(n_init=3) on a dask X of non-integer values warned NonCountWarning once per
    start (each start checks the chunks again); the same values in memory warn once. Now
    once, with the in-memory message, and the fit is still the best of three starts."""
    values = np.log1p(_counts())
    options = dict(n_init=3, max_iter=2, random_state=0, n_threads=1)
    caught = {}
    models = {}
    for name, X in [("memory", values), ("dask", da.from_array(values, chunks=(30, -1)))]:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            models[name] = vbsnmf.VBNMF(3, **options).fit(X)
        caught[name] = [
            str(w.message) for w in record if issubclass(w.category, vbsnmf.NonCountWarning)
        ]
    assert len(caught["dask"]) == len(caught["memory"]) == 1
    assert caught["dask"] == caught["memory"]
    np.testing.assert_allclose(models["dask"].elbo_trace_, models["memory"].elbo_trace_, rtol=1e-12)


# -- 5: data on disk given to fit_dask ------------------------------------------------------------
def test_fit_dask_names_data_on_disk_and_the_ways_to_fit_it(tmp_path):
    """fit_dask(backed_adata) said "the AnnData's X is in memory (..._CSRDataset) ...: fit it
    with vbsnmf.tl.nmf(adata) or VBNMF.fit(adata.X)" (a batch VBNMF.fit refuses a backed
    X), fit_dask(path) "counts in memory are fitted by VBNMF.fit". Now both name the data
    as on disk and the ways that work: X read lazily as a dask array, or SVI's stream."""
    counts = _counts(60, 20)
    path = tmp_path / "cells.h5ad"
    ad.AnnData(sp.csr_matrix(counts)).write_h5ad(path)
    dense = tmp_path / "dense.h5ad"
    ad.AnnData(counts).write_h5ad(dense)
    backed = ad.read_h5ad(path, backed="r")
    backed_dense = ad.read_h5ad(dense, backed="r")
    try:
        for X in (backed, backed.X, backed_dense.X, str(path), path):
            for fit in (vbsnmf.fit_dask, vbsnmf.fit_svi_dask):
                with pytest.raises(
                    TypeError, match="is read from disk, not a dask array"
                ) as caught:
                    fit(X, 3)
                assert "read_elem_lazy" in str(caught.value)
                assert "in memory" not in str(caught.value)
    finally:
        backed.file.close()
        backed_dense.file.close()
    with pytest.raises(TypeError, match=r"the AnnData's X is in memory \(numpy\.ndarray\)"):
        vbsnmf.fit_dask(ad.AnnData(counts), 3)
