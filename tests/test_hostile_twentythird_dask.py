"""The twenty-third hostile review's defects of the Dask path, each against an independent
computation (the same counts or start in memory) on in-process clusters."""

from __future__ import annotations

import contextlib

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


@contextlib.contextmanager
def _cluster(**client_options):
    """An in-process cluster of one single-threaded worker and a client of it."""
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    with Client(cluster, **client_options) as dask_client:
        yield dask_client
    cluster.close()


@pytest.fixture(scope="module")
def client():
    with _cluster() as dask_client:
        yield dask_client


def _counts(n_cells: int = 60, n_genes: int = 20, seed: int = 0) -> np.ndarray:
    counts = np.random.default_rng(seed).poisson(0.8, (n_cells, n_genes)).astype(np.float64)
    counts[:, 0] += 1  # no empty cell
    return counts


# -- 1: a start whose cells live on another client ----------------------------------------------
@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_a_start_from_another_clusters_result_is_fetched_by_its_client(client, prior):
    """fit_dask(X, init=result, client=other), result fitted on another cluster: the other
    scheduler knew none of the start's keys and the fit failed with distributed's
    FutureCancelledError ("lost dependencies"). Now the start's client computes it: the
    same fit as from the start gathered into memory."""
    X = da.from_array(_counts(), chunks=(7, -1))
    start = vbsnmf.fit_dask(X, 3, prior=prior, client=client, **FAST)
    with _cluster(set_as_default=False) as other:
        fitted = vbsnmf.fit_dask(X, 3, init=start, prior=prior, client=other, **FAST)
        expected = vbsnmf.fit_dask(X, 3, init=start.gather(), prior=prior, client=other, **FAST)
        np.testing.assert_allclose(fitted.elbo_trace, expected.elbo_trace, rtol=1e-13)
        np.testing.assert_allclose(
            fitted.gather().row_shape, expected.gather().row_shape, rtol=1e-12
        )


def test_a_start_from_a_closed_clients_result_is_refused_by_name(client):
    """Its cells went with the closed client: the fit said FutureCancelledError "lost
    dependencies"; now the ValueError `DaskFitResult.gather` gives there."""
    X = da.from_array(_counts(), chunks=(7, -1))
    with _cluster(set_as_default=False) as closing:
        start = vbsnmf.fit_dask(X, 3, client=closing, **FAST)
    with pytest.raises(ValueError, match="client that holds the fit's cells is closed"):
        vbsnmf.fit_dask(X, 3, init=start, client=client, **FAST)


# -- 2: a lazy start under the learned prior, on a client not dask's default -----------------
def test_a_lazy_start_on_a_client_not_the_default_fits_as_in_memory():
    """fit_dask(X, init={"cell_shape": result.params.row_shape, ...}, client=c) under the
    learned prior, c not the default: the start's scale prior mean and q(xi) were computed
    by dask's default scheduler, which knows none of the result's futures ("Missing
    dependency"). Now by their client: the fit from the same start in memory."""
    X = da.from_array(_counts(), chunks=(7, -1))
    with _cluster(set_as_default=False) as client:
        start = vbsnmf.fit_dask(X, 3, client=client, **FAST)
        params, gathered = start.params, start.gather()
        lazy = {
            "cell_shape": params.row_shape,
            "cell_rate": params.row_rate,
            "gene_shape": params.col_shape,
            "gene_rate": params.col_rate,
        }
        in_memory = {**lazy, "cell_shape": gathered.row_shape, "cell_rate": gathered.row_rate}
        expected = vbsnmf.fit_dask(X, 3, init=in_memory, client=client, **FAST)
        fitted = vbsnmf.fit_dask(X, 3, init=lazy, client=client, **FAST)
        np.testing.assert_allclose(fitted.elbo_trace, expected.elbo_trace, rtol=1e-13)


# -- 3: an X persisted on a client ---------------------------------------------------------------
def test_transform_of_a_persisted_x_computes_it_by_its_client(client):
    """transform(X), X persisted on the client, under another configured scheduler raised
    dask's "Missing dependency": the threads scheduler knows none of X's chunks."""
    counts = _counts()
    model = vbsnmf.VBNMF(3, **FAST).fit(counts)
    X = client.persist(da.from_array(sp.csr_matrix(counts), chunks=(7, -1)))
    with dask.config.set(scheduler="threads"):
        np.testing.assert_allclose(model.transform(X), model.transform(counts), rtol=1e-12)


def test_tl_nmf_of_a_persisted_x_checks_it_by_its_client(client):
    """tl.nmf on a persisted dask X under another configured scheduler: the count checks
    said "Missing dependency ...; NMF needs raw counts: keep the raw counts before
    normalising" of counts that were fine. Now the fit of the same counts in memory."""
    counts = _counts()
    expected = ad.AnnData(sp.csr_matrix(counts))
    tl.nmf(expected, 3, **FAST)
    adata = ad.AnnData(client.persist(da.from_array(sp.csr_matrix(counts), chunks=(7, -1))))
    with dask.config.set(scheduler="threads"):
        tl.nmf(adata, 3, **FAST)
    np.testing.assert_allclose(adata.obsm["X_nmf"], expected.obsm["X_nmf"], rtol=1e-10)


def test_a_persisted_counts_layer_is_named_in_tl_nmfs_advice(client):
    """Log-transformed X beside a persisted dask layer of counts, under another configured
    scheduler: looking for the counts raised dask's "Missing dependency" in place of the
    advice naming the layer, which the same layer in memory gets."""
    counts = _counts()
    advice = []
    for layer in (counts, client.persist(da.from_array(counts, chunks=(7, -1)))):
        adata = ad.AnnData(np.log1p(counts))
        adata.layers["counts"] = layer
        with dask.config.set(scheduler="threads"), pytest.raises(ValueError) as error:
            tl.nmf(adata, 3, **FAST)
        advice.append(str(error.value))
    assert advice[1] == advice[0]
    assert "the raw counts appear to be in layer='counts'" in advice[1]


def test_an_x_persisted_on_a_closed_client_is_refused_by_name(client):
    """The fits (and tl.nmf) raised distributed's FutureCancelledError ("lost
    dependencies") and transform dask's "Missing dependency"; now a ValueError saying where
    the chunks went."""
    counts = _counts()
    model = vbsnmf.VBNMF(3, **FAST).fit(counts)
    with _cluster(set_as_default=False) as closing:
        X = closing.persist(da.from_array(sp.csr_matrix(counts), chunks=(7, -1)))
    closed = r"persisted on a dask\.distributed client that is closed"
    with pytest.raises(ValueError, match=closed):
        vbsnmf.VBNMF(3, **FAST).fit(X)
    with pytest.raises(ValueError, match=closed):
        vbsnmf.fit_svi_dask(X, 3, n_epochs=1, client=client, **FAST)
    with pytest.raises(ValueError, match=closed):
        model.transform(X)
    with pytest.raises(ValueError, match=closed):
        tl.nmf(ad.AnnData(X), 3, **FAST)


def test_an_x_persisted_on_another_cluster_is_refused_by_name(client):
    """fit_dask(X, client=other) with X persisted on another cluster raised distributed's
    FutureCancelledError ("lost dependencies")."""
    X = client.persist(da.from_array(_counts(), chunks=(7, -1)))
    with _cluster(set_as_default=False) as other:
        with pytest.raises(ValueError, match=r"persisted on another dask\.distributed cluster"):
            vbsnmf.fit_dask(X, 3, client=other, **FAST)


# -- 4: a float32 result's q(xi) ---------------------------------------------------------------
@pytest.mark.parametrize("fit", ["fit_dask", "fit_svi_dask"])
def test_a_float32_results_cell_scales_declare_the_dtype_they_hold(client, fit):
    """Under the learned prior with dtype=float32, params.row_scale.shape and .rate
    declared float32 but held float64 (q(xi) is float64 whatever the dtype, as VBNMF's
    cell_scale_shape_): dask skipped astype(float32), which computed float64."""
    X = da.from_array(_counts(), chunks=(7, -1))
    passes = {"fit_dask": {}, "fit_svi_dask": {"n_epochs": 1}}[fit]
    params = getattr(vbsnmf, fit)(X, 3, dtype="float32", **passes, **FAST).params
    in_memory = vbsnmf.VBNMF(3, dtype="float32", **FAST).fit(_counts())
    for lazy, held in (
        (params.row_shape, in_memory.cell_shape_),
        (params.row_rate, in_memory.cell_rate_),
        (params.row_scale.shape, in_memory.cell_scale_shape_),
        (params.row_scale.rate, in_memory.cell_scale_rate_),
    ):
        assert lazy.dtype == held.dtype
        assert lazy.compute().dtype == lazy.dtype
    assert params.row_scale.rate.astype(np.float32).compute().dtype == np.float32


# -- 5: a lazy start of unknown chunk sizes ------------------------------------------------------
def test_a_lazy_start_of_unknown_chunk_sizes_gets_the_advice_x_gets(client):
    """init cell_shape a dask array of unknown chunk sizes (a boolean mask's) was answered
    "has shape (nan, 3), expected (60, 3)"; with its chunk sizes computed it starts the fit."""
    counts = _counts()
    fitted = vbsnmf.VBNMF(3, **FAST).fit(counts)
    unknown = da.from_array(fitted.cell_shape_, chunks=(7, -1))[
        da.from_array(np.ones(60, bool), chunks=7)
    ]
    init = {
        "cell_shape": unknown,
        "cell_rate": fitted.cell_rate_,
        "gene_shape": fitted.gene_shape_,
        "gene_rate": fitted.gene_rate_,
    }
    X = da.from_array(counts, chunks=(7, -1))
    with pytest.raises(ValueError, match=r"init cell_shape .*compute_chunk_sizes\(\) first"):
        vbsnmf.fit_dask(X, 3, init=init, **FAST)
    expected = vbsnmf.fit_dask(X, 3, init={**init, "cell_shape": fitted.cell_shape_}, **FAST)
    init["cell_shape"] = unknown.compute_chunk_sizes()
    np.testing.assert_allclose(
        vbsnmf.fit_dask(X, 3, init=init, **FAST).elbo_trace, expected.elbo_trace, rtol=1e-13
    )
