"""The distributed fit against the single-machine engine, on a real multi-process cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import warnings

import anndata as ad
import dask.array as da
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from dask.sizeof import sizeof
from distributed import Client, LocalCluster, get_task_stream
from numpy.testing import assert_array_equal

import vbsnmf
from vbsnmf import _dask, _model, _svi
from vbsnmf._batch import fit_batch
from vbsnmf._data import as_count_data
from vbsnmf._utils import is_dask_array
from vbsnmf.io import _stream

N_ITER = 30
FACS_CHUNKS = (100, 900, 350, 1024, 600, 300, 500)  # 7 uneven chunks, 3,774 cells


@contextlib.contextmanager
def local_client(n_workers: int, *, processes: bool):
    """A client of a LocalCluster of single-threaded workers, closed when the block ends."""
    cluster = LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=processes, dashboard_address=":0"
    )
    with Client(cluster) as dask_client:
        yield dask_client
    cluster.close()


@pytest.fixture(scope="module")
def client():
    with local_client(2, processes=True) as dask_client:
        yield dask_client


def _reference(counts, init: _model.VariationalParams, max_iter=N_ITER) -> _model.FitResult:
    """The single-machine engine from the same start."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return fit_batch(
            as_count_data(counts),
            init.copy(),
            _model.GammaPrior(1.0, 1.0),
            max_iter=max_iter,
            tol=0.0,
            n_parts=1,
        )


def _fit(X, init, client, **options) -> _dask.DaskFitResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        n_components = init.row_shape.shape[1]
        return vbsnmf.fit_dask(
            X,
            n_components,
            init=init.copy(),
            max_iter=N_ITER,
            tol=0.0,
            client=client,
            **options,
            prior="gamma",
        )


def _assert_same_fit(result: _dask.DaskFitResult, reference: _model.FitResult):
    assert result.n_iter == reference.n_iter == N_ITER
    np.testing.assert_allclose(result.elbo_trace, reference.elbo_trace, rtol=1e-9, atol=0)
    gathered = result.gather()
    for mine, theirs in zip(gathered.as_tuple(), reference.params.as_tuple()):
        np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=0)
    np.testing.assert_allclose(
        np.asarray(result.cell_factors.compute()), reference.params.row_mean, rtol=1e-9
    )


def _start(counts, n_components, seed):
    total = float(counts.sum())
    return _model.random_start(counts.shape, n_components, total, seed, np.float64)


@pytest.fixture(scope="module")
def tiny_counts():
    return sp.csr_matrix(vbsnmf.datasets.pbmc_tiny().X)


@pytest.fixture(scope="module")
def tiny_fit(client, tiny_counts):
    """A 30-iteration distributed fit of pbmc_tiny in 5 chunks (the last one short)."""
    init = _start(tiny_counts, 5, 0)
    X = da.from_array(tiny_counts, chunks=(250, -1))
    return init, X, _fit(X, init, client)


def test_pbmc_tiny_trace_and_factors_match_single_machine(tiny_fit, tiny_counts):
    init, X, result = tiny_fit
    _assert_same_fit(result, _reference(tiny_counts, init))
    assert np.all(np.diff(result.elbo_trace) > 0)
    # The cell shapes stay chunked like the input, in its cell order.
    assert result.params.row_shape.chunks[0] == X.chunks[0]


def test_pbmc_facs_seven_uneven_chunks_from_h5ad(client, tmp_path_factory, monkeypatch):
    """Cells read lazily from an .h5ad by the workers; the client receives only the reduced
    gene-side summaries, never the matrix."""
    adata = vbsnmf.datasets.pbmc_facs()
    counts = sp.csr_matrix(adata.X)
    path = tmp_path_factory.mktemp("facs") / "pbmc_facs.h5ad"
    ad.AnnData(counts).write_h5ad(path)
    store = h5py.File(path, "r")
    X = ad.experimental.read_elem_lazy(store["X"], chunks=(1000, -1)).rechunk((FACS_CHUNKS, -1))
    assert X.chunks[0] == FACS_CHUNKS
    init = _start(counts, 4, 1)

    gathered_sizes = []
    original_gather = Client.gather

    def recording_gather(self, futures, *args, **kwargs):
        value = original_gather(self, futures, *args, **kwargs)
        gathered_sizes.append(sizeof(value))
        return value

    monkeypatch.setattr(Client, "gather", recording_gather)
    result = _fit(X, init, client)
    monkeypatch.undo()
    store.close()

    _assert_same_fit(result, _reference(counts, init))
    matrix_bytes = counts.data.nbytes + counts.indices.nbytes + counts.indptr.nbytes
    n_genes, n_components = counts.shape[1], 4
    # One gathered object per pass (plus the per-chunk sizes once), each about genes x K.
    assert len(gathered_sizes) == N_ITER + 2
    assert max(gathered_sizes) < 2 * n_genes * n_components * 8 + 10_000
    assert max(gathered_sizes) < matrix_bytes / 20
    assert all(
        size == n_genes * n_components * 8 + 2 * 4 * 8 + 16 for size in result.gathered_bytes
    )


def _worker_killer(client, key_part: str, at: int):
    """A fit callback that kills, once, at its first call with ``n >= at``, the worker
    holding the most keys that contain ``key_part`` (current cells, so that something is
    lost); and the list of the killed workers' pids."""
    worker_pids = client.run(os.getpid)
    killed = []

    def kill_one_worker(n, params, trace):
        if killed or n < at:
            return
        holders = [
            address
            for key, addresses in client.who_has().items()
            if isinstance(key, str) and key_part in key
            for address in addresses
        ]
        victim = worker_pids[max(set(holders), key=holders.count)]
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)

    return kill_one_worker, killed


def test_killed_worker_is_recomputed_with_the_same_result(client, tiny_counts, tiny_fit):
    init, X, undisturbed = tiny_fit
    kill_one_worker, killed = _worker_killer(client, "-cell-shape-", at=12)
    with get_task_stream(client) as stream:
        result = _fit(X, init, client, callback=kill_one_worker)
    assert killed, "the callback never ran"
    _assert_same_fit(result, _reference(tiny_counts, init))
    # Bitwise the fit without the failure: the order of the sums does not follow placement.
    np.testing.assert_array_equal(result.elbo_trace, undisturbed.elbo_trace)
    np.testing.assert_array_equal(result.gather().row_shape, undisturbed.gather().row_shape)
    # The lost cell shapes were recomputed: more chunk passes ran than the fit needs.
    keys = [task["key"] for task in stream.data]
    n_passes = sum(1 for key in keys if isinstance(key, str) and "-pass-" in key)
    assert n_passes > (N_ITER + 1) * X.numblocks[0]
    client.wait_for_workers(2, timeout=120)
    assert killed[0] not in client.run(os.getpid).values()


def test_estimator_dispatches_dask_input(client, tiny_counts):
    """`VBNMF.fit_transform` on a dask array: the same fit as on the scipy matrix."""
    init = _start(tiny_counts, 3, 3)
    start = dict(zip(("cell_shape", "cell_rate", "gene_shape", "gene_rate"), init.as_tuple()))
    X = da.from_array(tiny_counts, chunks=(400, -1))
    local = vbsnmf.VBNMF(3, max_iter=8, tol=0.0, n_threads=1, prior="gamma")
    distributed = vbsnmf.VBNMF(3, max_iter=8, tol=0.0, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        expected = local.fit_transform(tiny_counts, init=start)
        got = distributed.fit_transform(X, init=start)
    # in memory: a fitted estimator outlives its client (tests/test_hostile_ninth.py)
    assert isinstance(got, np.ndarray) and isinstance(distributed.cell_shape_, np.ndarray)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    np.testing.assert_allclose(distributed.elbo_trace_, local.elbo_trace_, rtol=1e-9)
    np.testing.assert_allclose(distributed.components_, local.components_, rtol=1e-9)
    assert distributed.n_features_in_ == tiny_counts.shape[1]


def test_random_start_is_reproducible_and_ascends(client, tiny_counts):
    X = da.from_array(tiny_counts, chunks=(500, -1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        first = vbsnmf.fit_dask(
            X, 4, max_iter=6, tol=0.0, random_state=5, client=client, prior="gamma"
        )
        second = vbsnmf.fit_dask(
            X, 4, max_iter=6, tol=0.0, random_state=5, client=client, prior="gamma"
        )
    np.testing.assert_array_equal(first.elbo_trace, second.elbo_trace)
    assert np.all(np.diff(first.elbo_trace) > 0)
    # max_iter=0 returns the start: rates put sum_l E[z] E[w] at the mean count (random_init).
    start = vbsnmf.fit_dask(X, 4, max_iter=0, random_state=5, client=client, prior="gamma")
    mean_count = tiny_counts.sum() / np.prod(tiny_counts.shape)
    np.testing.assert_allclose(start.params.row_rate, 1.5 / np.sqrt(mean_count / 4), rtol=1e-12)
    np.testing.assert_allclose(start.params.col_rate, start.params.row_rate, rtol=0)
    cell_shape = start.gather().row_shape
    assert cell_shape.shape == (tiny_counts.shape[0], 4)
    assert np.all((cell_shape >= 1.0) & (cell_shape < 2.0))
    assert start.n_iter == 0 and start.elbo_trace.shape == (0,)


@pytest.mark.parametrize("chunk_type", ["dense", "coo"])
def test_dense_and_coo_chunks_give_the_csr_fit(client, tiny_counts, chunk_type):
    init = _start(tiny_counts, 2, 7)
    if chunk_type == "dense":
        X = da.from_array(tiny_counts.toarray(), chunks=(600, -1))
    else:
        X = da.from_array(tiny_counts, chunks=(600, -1)).map_blocks(sp.coo_matrix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        result = vbsnmf.fit_dask(
            X, 2, init=init.copy(), max_iter=3, tol=0.0, client=client, prior="gamma"
        )
    expected = _reference(tiny_counts, init, max_iter=3)
    np.testing.assert_allclose(result.elbo_trace, expected.elbo_trace, rtol=1e-9)


def test_negative_count_in_a_chunk_names_the_chunk(client):
    """The chunk, and the count's position in the whole matrix (as in memory)."""
    dense = np.random.default_rng(0).poisson(1.0, (60, 8)).astype(float)
    dense[45, 3] = -2.0
    counts = sp.csr_matrix(dense)
    X = da.from_array(counts, chunks=(20, -1))
    with pytest.raises(ValueError, match=r"starting at cell 40.*negative entry .* \(45, 3\)"):
        vbsnmf.fit_dask(X, 2, max_iter=2, client=client, prior="gamma")


def test_convergence_warning_names_the_callers_line(client, tiny_counts):
    X = da.from_array(tiny_counts, chunks=(300, tiny_counts.shape[1]))
    for fit in (vbsnmf.fit_dask, vbsnmf.fit_svi_dask):
        options = {"max_iter": 1} if fit is vbsnmf.fit_dask else {"n_epochs": 1}
        with pytest.warns(vbsnmf.ConvergenceWarning) as caught:
            fit(X, 2, random_state=0, client=client, prior="gamma", **options)
        assert {w.filename for w in caught} == {__file__}


def test_rejects_non_client():
    X = da.from_array(sp.csr_matrix(np.ones((4, 3))), chunks=(2, -1))
    with pytest.raises(TypeError, match=r"distributed\.Client"):
        vbsnmf.fit_dask(X, 2, client="tcp://nowhere:8786", prior="gamma")


def test_tl_nmf_dispatches_anndata_with_dask_x(client, tiny_counts):
    """`tl.nmf` on an AnnData whose X is a dask array continues a stored fit exactly as on
    the in-memory AnnData (warm start from the same parameters)."""
    in_memory = ad.AnnData(tiny_counts.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(in_memory, 3, max_iter=3, tol=0.0, random_state=0, prior="gamma")
        lazy = ad.AnnData(da.from_array(tiny_counts, chunks=(300, -1)))
        lazy.uns["nmf"] = in_memory.uns["nmf"]
        lazy.obsm["nmf_cell_shape"] = in_memory.obsm["nmf_cell_shape"]
        lazy.varm["nmf_gene_shape"] = in_memory.varm["nmf_gene_shape"]
        vbsnmf.tl.nmf(lazy, 3, warm_start=True, max_iter=5, tol=0.0, prior="gamma")
        vbsnmf.tl.nmf(
            in_memory, 3, warm_start=True, max_iter=5, tol=0.0, n_threads=1, prior="gamma"
        )
    assert isinstance(lazy.obsm["X_nmf"], np.ndarray)  # not futures of the cluster
    np.testing.assert_allclose(lazy.obsm["X_nmf"], in_memory.obsm["X_nmf"], rtol=1e-9)
    np.testing.assert_allclose(lazy.varm["NMF"], in_memory.varm["NMF"], rtol=1e-9)
    np.testing.assert_allclose(lazy.obsm["X_nmf_usage"], in_memory.obsm["X_nmf_usage"], rtol=1e-9)
    np.testing.assert_allclose(
        lazy.uns["nmf"]["factor_share"], in_memory.uns["nmf"]["factor_share"]
    )
    np.testing.assert_array_equal(lazy.var["nmf_total_counts"], in_memory.var["nmf_total_counts"])
    expected_trace = in_memory.uns["nmf"]["elbo_trace"]
    assert expected_trace.shape == (8,)
    np.testing.assert_allclose(lazy.uns["nmf"]["elbo_trace"], expected_trace, rtol=1e-9)
    with pytest.raises(ValueError, match="fitted by"):
        vbsnmf.tl.nmf(lazy, 3, solver="mu")


def test_svi_across_workers_matches_single_machine_svi(client, tiny_counts):
    """Cell-minibatch SVI: the same steps as `_svi.fit_svi_cells` (same permutations), the
    minibatch's cells fitted on the workers that hold them."""
    options = dict(batch_size=300, tau=1.0, kappa=0.7, n_epochs=3, eval_every=1, tol=0.0)
    prior = _model.GammaPrior(1.0, 1.0)
    # local fits of 10 passes each (tol=0): the same local passes per cell
    settings = _svi.SVISettings(prior, **options, local_max_iter=10, local_tol=0.0)
    source = _stream.InMemorySource(tiny_counts)
    total = float(tiny_counts.sum())
    state = _svi.init_cells_state(tiny_counts.shape, 3, total, 4, prior, np.float64)
    X = da.from_array(tiny_counts, chunks=(400, -1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        expected = _svi.fit_svi_cells(source, state, settings)
        got = vbsnmf.fit_svi_dask(
            X, 3, random_state=4, client=client, max_iter=10, **options, prior="gamma"
        )
    assert got.n_iter == 3
    np.testing.assert_allclose(got.elbo_trace, expected.elbo_trace, rtol=1e-9)
    gathered = got.gather()
    for mine, theirs in zip(gathered.as_tuple(), expected.params.as_tuple()):
        np.testing.assert_allclose(mine, theirs, rtol=1e-9)
    # The estimator's solver="svi" on a dask X: the single-machine estimator's numbers.
    settings = dict(solver="svi", batch_size=300, n_epochs=2, max_iter=10, tol=0.0)
    local = vbsnmf.VBNMF(3, random_state=4, n_threads=1, **settings, prior="gamma")
    distributed = vbsnmf.VBNMF(3, random_state=4, **settings, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        expected_factors = local.fit_transform(tiny_counts)
        got_factors = distributed.fit_transform(X)
    np.testing.assert_allclose(distributed.elbo_trace_, local.elbo_trace_, rtol=1e-9)
    np.testing.assert_allclose(distributed.components_, local.components_, rtol=1e-9)
    np.testing.assert_allclose(got_factors, expected_factors, rtol=1e-9)
    # Each step moved one genes x K summary and its batch's cell shapes (where their next
    # local fit starts) to the client; an evaluation all cells' shapes; never the counts.
    n_cells, n_genes = tiny_counts.shape
    per_epoch = int(np.ceil(n_cells / 300))
    assert len(got.gathered_bytes) == 3 * (per_epoch + 1)
    summary = n_genes * 3 * 8 + 2 * 3 * 8 + 16
    for epoch in range(3):
        first = epoch * (per_epoch + 1)
        assert max(got.gathered_bytes[first : first + per_epoch]) <= summary + 300 * 3 * 8
        assert got.gathered_bytes[first + per_epoch] <= summary + n_cells * 3 * 8


def test_svi_with_the_learned_prior_across_workers_matches_single_machine_svi(client, tiny_counts):
    """Cells-form SVI under the learned prior on Dask (the client keeps every cell's q and
    the sums their hyperparameters are learned from; the workers fit the minibatch's
    cells): the single-machine fit's trace, q and hyperparameters for any chunking."""
    options = dict(solver="svi", batch_size=150, n_epochs=3, max_iter=20, tol=0.0, random_state=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        local = vbsnmf.VBNMF(3, n_threads=1, **options).fit(tiny_counts)
        options.pop("solver")
        for chunk in (300, 700):
            X = da.from_array(tiny_counts, chunks=(chunk, -1))
            got = vbsnmf.fit_svi_dask(X, 3, client=client, **options)
            assert got.n_iter == 3
            np.testing.assert_allclose(got.elbo_trace, local.elbo_trace_, rtol=1e-9)
            assert is_dask_array(got.params.row_scale.rate)
            gathered = got.gather()
            expected = {
                "cell_shape_": gathered.row_shape,
                "cell_rate_": gathered.row_rate,
                "gene_shape_": gathered.col_shape,
                "gene_rate_": gathered.col_rate,
                "cell_scale_rate_": gathered.row_scale.rate,
                "gene_scale_rate_": gathered.col_scale.rate,
            }
            for name, mine in expected.items():
                np.testing.assert_allclose(mine, getattr(local, name), rtol=1e-9, err_msg=name)
            hyper = _model.hyperparameters(got.params)
            for name, value in local.hyperparameters_.items():
                np.testing.assert_allclose(hyper[name], value, rtol=1e-9, err_msg=name)


def test_warm_start_from_a_distributed_fit_continues_it(client, tiny_counts):
    """Starting from a fit's parameters (cell shapes a dask array) continues the same path:
    3 + 2 iterations give the ELBO values 4 and 5 of a 5-iteration fit."""
    init = _start(tiny_counts, 3, 6)
    X = da.from_array(tiny_counts, chunks=(500, -1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        straight = vbsnmf.fit_dask(
            X, 3, init=init.copy(), max_iter=5, tol=0.0, client=client, prior="gamma"
        )
        first = vbsnmf.fit_dask(
            X, 3, init=init.copy(), max_iter=3, tol=0.0, client=client, prior="gamma"
        )
        assert is_dask_array(first.params.row_shape)
        resumed = vbsnmf.fit_dask(
            X, 3, init=first.params, max_iter=2, tol=0.0, client=client, prior="gamma"
        )
    np.testing.assert_allclose(resumed.elbo_trace, straight.elbo_trace[3:], rtol=1e-12)
    np.testing.assert_allclose(resumed.gather().row_shape, straight.gather().row_shape, rtol=1e-12)
    start = first.params
    negative = _model.VariationalParams(
        -start.row_shape, start.row_rate, start.col_shape, start.col_rate
    )
    with pytest.raises(ValueError, match="positive and finite"):
        vbsnmf.fit_dask(X, 3, init=negative, max_iter=1, client=client, prior="gamma").gather()


@pytest.mark.parametrize("chunk", [250, 700])
def test_learned_prior_matches_the_single_machine_plain_loop(client, tiny_counts, chunk):
    """The learned prior on Dask (each chunk holds its cells' shapes, rates and q(xi); the
    client the genes, both sides' hyperparameters and the gauge) is the single-machine
    plain coordinate ascent from the same seed: trace, every array of q and the learned
    hyperparameters to 1e-9 relative (only the order of the sums differs)."""
    options = dict(max_iter=N_ITER, tol=0.0, random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        local = vbsnmf.VBNMF(4, n_threads=1, accelerate=False, **options).fit(tiny_counts)
        X = da.from_array(tiny_counts, chunks=(chunk, -1))
        result = vbsnmf.fit_dask(X, 4, client=client, accelerate=False, **options)
    assert result.n_iter == local.n_iter_ == N_ITER
    np.testing.assert_allclose(result.elbo_trace, local.elbo_trace_, rtol=1e-9, atol=0)
    assert np.all(np.diff(result.elbo_trace) > 0)
    gathered = result.gather()
    expected = {
        "cell_shape_": gathered.row_shape,
        "cell_rate_": gathered.row_rate,
        "gene_shape_": gathered.col_shape,
        "gene_rate_": gathered.col_rate,
        "cell_scale_shape_": gathered.row_scale.shape,
        "cell_scale_rate_": gathered.row_scale.rate,
        "gene_scale_shape_": gathered.col_scale.shape,
        "gene_scale_rate_": gathered.col_scale.rate,
    }
    for name, mine in expected.items():
        np.testing.assert_allclose(mine, getattr(local, name), rtol=1e-9, atol=0, err_msg=name)
    hyper = _model.hyperparameters(result.params)
    for name, value in local.hyperparameters_.items():
        np.testing.assert_allclose(hyper[name], value, rtol=1e-9, atol=0, err_msg=name)
    # The cells' arrays stay chunked like the input, in its cell order.
    assert result.params.row_rate.chunks[0] == X.chunks[0]
    assert result.params.row_scale.rate.chunks[0] == X.chunks[0]
    # Per pass the client received genes x K and O(K), never anything per cell.
    n_genes = tiny_counts.shape[1]
    assert max(result.gathered_bytes) < n_genes * 4 * 8 + 1000


def test_learned_prior_warm_start_continues_a_distributed_fit(client, tiny_counts):
    """A distributed learned fit's q (cells' arrays dask arrays, the hyperparameters and
    q(xi) with them) as init continues the same path: 3 + 2 iterations give the ELBO values
    4 and 5 of a 5-iteration fit (plain ascent: an accelerated fit resumed starts a new
    SQUAREM cycle, as in memory)."""
    X = da.from_array(tiny_counts, chunks=(500, -1))
    options = dict(tol=0.0, client=client, accelerate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        straight = vbsnmf.fit_dask(X, 3, max_iter=5, random_state=6, **options)
        first = vbsnmf.fit_dask(X, 3, max_iter=3, random_state=6, **options)
        assert is_dask_array(first.params.row_scale.rate)
        resumed = vbsnmf.fit_dask(X, 3, init=first.params, max_iter=2, **options)
    np.testing.assert_allclose(resumed.elbo_trace, straight.elbo_trace[3:], rtol=1e-12)
    np.testing.assert_allclose(resumed.gather().row_rate, straight.gather().row_rate, rtol=1e-12)


def test_estimator_and_tl_fit_a_dask_x_with_the_learned_prior(client, tiny_counts):
    """`VBNMF` and `tl.nmf` on a dask X with the default (learned) prior and its default
    SQUAREM: the in-memory fit, the cells' arrays lazy."""
    X = da.from_array(tiny_counts, chunks=(400, -1))
    options = dict(max_iter=25, tol=0.0, random_state=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        local = vbsnmf.VBNMF(3, n_threads=1, **options)
        expected = local.fit_transform(tiny_counts)
        distributed = vbsnmf.VBNMF(3, **options)
        got = distributed.fit_transform(X)
        in_memory = ad.AnnData(tiny_counts.copy())
        vbsnmf.tl.nmf(in_memory, 3, n_threads=1, **options)
        lazy = ad.AnnData(X)
        vbsnmf.tl.nmf(lazy, 3, **options)
    assert isinstance(got, np.ndarray) and isinstance(distributed.cell_rate_, np.ndarray)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    np.testing.assert_allclose(distributed.elbo_trace_, local.elbo_trace_, rtol=1e-9)
    np.testing.assert_allclose(distributed.components_, local.components_, rtol=1e-9)
    for name, value in local.hyperparameters_.items():
        np.testing.assert_allclose(distributed.hyperparameters_[name], value, rtol=1e-9)
    np.testing.assert_allclose(
        np.asarray(distributed.cell_scale_rate_), local.cell_scale_rate_, rtol=1e-9
    )
    np.testing.assert_allclose(np.asarray(lazy.obsm["X_nmf"]), in_memory.obsm["X_nmf"], rtol=1e-9)
    np.testing.assert_allclose(lazy.varm["NMF"], in_memory.varm["NMF"], rtol=1e-9)
    np.testing.assert_allclose(
        lazy.uns["nmf"]["elbo_trace"], in_memory.uns["nmf"]["elbo_trace"], rtol=1e-9
    )


@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_squarem_on_dask_is_the_in_memory_accelerated_fit(client, tiny_counts, prior):
    """SQUAREM on the cluster (the step length's sums and the extrapolation run chunk by
    chunk where the cells are, the genes' and hyperparameters' part on the client) is the
    in-memory accelerated fit from the same seed: the same passes to convergence, the trace
    to 1e-9 and q to 1e-6 relative (only the order of the sums differs, which the step
    lengths carry on), monotone, fewer passes than plain ascent; per pass the client still
    receives only genes x K and O(K)."""
    options = dict(random_state=2, prior=prior, max_iter=400)
    local = vbsnmf.VBNMF(4, n_threads=1, accelerate=True, **options).fit(tiny_counts)
    plain = vbsnmf.VBNMF(4, n_threads=1, accelerate=False, **options).fit(tiny_counts)
    X = da.from_array(tiny_counts, chunks=(300, -1))  # 4 chunks, the last one short
    result = vbsnmf.fit_dask(X, 4, client=client, accelerate=True, **options)
    assert result.converged and local.converged_
    assert result.n_iter == local.n_iter_ < 0.8 * plain.n_iter_
    assert len(result.elbo_trace) < result.n_iter  # candidates were scored
    np.testing.assert_allclose(result.elbo_trace, local.elbo_trace_, rtol=1e-9, atol=0)
    assert np.all(np.diff(result.elbo_trace) >= 0)
    gathered = result.gather()
    names = ("cell_shape_", "cell_rate_", "gene_shape_", "gene_rate_")
    for mine, name in zip(gathered.as_tuple(), names):
        theirs = np.broadcast_to(getattr(local, name), np.shape(mine))
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-9 * np.max(theirs))
    assert max(result.gathered_bytes) < tiny_counts.shape[1] * 4 * 8 + 1000


@pytest.mark.parametrize("max_iter", [0, 1, 2, 3, 7])
def test_short_accelerated_dask_fits_are_the_in_memory_ones(client, tiny_counts, max_iter):
    """SQUAREM cut short on Dask (no pass, a cycle not finished, one cycle) returns what the
    in-memory accelerated fit returns: the same passes, trace and cell factors (warm start:
    no hold, so the cycles start at once; float32 on the cells' side)."""
    options = dict(random_state=4, accelerate=True, tol=0.0, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        start = vbsnmf.VBNMF(3, n_threads=1, max_iter=4, **options).fit(tiny_counts)
        local = vbsnmf.VBNMF(3, n_threads=1, max_iter=max_iter, **options)
        expected = local.fit_transform(tiny_counts, init=start)
        X = da.from_array(tiny_counts, chunks=(300, -1))
        distributed = vbsnmf.VBNMF(3, max_iter=max_iter, **options)
        got = distributed.fit_transform(X, init=start)
    assert distributed.n_iter_ == local.n_iter_ == max_iter
    np.testing.assert_allclose(distributed.elbo_trace_, local.elbo_trace_, rtol=1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_accelerated_dask_fit_keeps_the_best_of_n_init_starts_as_in_memory(client, tiny_counts):
    """n_init > 1 with SQUAREM on Dask: each start accelerated, the best kept, as in memory."""
    options = dict(random_state=7, max_iter=12, tol=0.0, n_init=3, accelerate=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        local = vbsnmf.VBNMF(3, n_threads=1, **options).fit(tiny_counts)
        X = da.from_array(tiny_counts, chunks=(400, -1))
        result = vbsnmf.fit_dask(X, 3, client=client, **options)
    assert result.n_iter == local.n_iter_ == 12
    np.testing.assert_allclose(result.elbo_trace, local.elbo_trace_, rtol=1e-9, atol=0)
    np.testing.assert_allclose(result.gene_loadings.T, local.components_, rtol=1e-7)


def test_killed_worker_during_squarem_is_recomputed_with_the_same_result(client, tiny_counts):
    """A worker killed in the middle of an accelerated (learned prior) fit: its cells,
    extrapolated ones included, are recomputed along their lineage, and the fit is bitwise
    the undisturbed one (the step lengths' sums too are in chunk order)."""
    X = da.from_array(tiny_counts, chunks=(250, -1))
    options = dict(max_iter=40, tol=0.0, random_state=5, client=client, accelerate=True)
    client.wait_for_workers(2, timeout=120)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        undisturbed = vbsnmf.fit_dask(X, 3, **options)
        kill_one_worker, killed = _worker_killer(client, "-cells-", at=25)
        result = vbsnmf.fit_dask(X, 3, callback=kill_one_worker, **options)
    assert killed, "the callback never ran"
    assert len(result.elbo_trace) < result.n_iter == 40  # SQUAREM's candidates were scored
    np.testing.assert_array_equal(result.elbo_trace, undisturbed.elbo_trace)
    np.testing.assert_array_equal(result.gather().row_rate, undisturbed.gather().row_rate)
    np.testing.assert_array_equal(result.gene_loadings, undisturbed.gene_loadings)
    client.wait_for_workers(2, timeout=120)


def test_transform_of_a_dask_x_is_the_transform_in_memory(client, tiny_counts):
    """`VBNMF.transform` of a dask array of sparse chunks: computed into memory, the same
    cell factors (it said "X must be 2-D, got an array of shape ()")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.VBNMF(3, max_iter=20, n_threads=1, random_state=1).fit(tiny_counts)
        expected = model.transform(tiny_counts)
        got = model.transform(da.from_array(tiny_counts, chunks=(300, -1)))
    np.testing.assert_array_equal(got, expected)


def test_an_extrapolation_out_of_range_in_a_chunk_refuses_the_step():
    """A chunk whose extrapolated cells overflow reports it (the step is then refused
    without a pass), under both priors' layouts of a chunk's cells."""
    rng = np.random.default_rng(0)
    shapes = [rng.gamma(2.0, size=(5, 3)) + 0.1 for _ in range(3)]
    no_gauge = ((1.0, None),) * 3
    cells, bad = _dask._batch._chunk_extrapolate(*shapes, no_gauge, 2.0)
    assert bad == 0 and cells.shape == (5, 3) and np.all(np.isfinite(cells))
    shapes[2] = shapes[2] * 1e200  # log-space extrapolation far past the largest float
    assert _dask._batch._chunk_extrapolate(*shapes, no_gauge, 50.0) == (None, 1)


def test_same_seed_gives_the_same_fit_in_memory_and_with_any_chunking(
    client, tiny_counts, tmp_path
):
    """The random start is drawn per fixed block of cells: batch VB from one seed gives one
    trace in memory and on Dask with two chunkings (1e-9: only the order of the sums
    differs); cell-minibatch SVI streamed from disk and on Dask with two chunkings too."""
    options = dict(max_iter=15, tol=0.0, random_state=21)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        local = vbsnmf.VBNMF(4, n_threads=1, **options, prior="gamma").fit(tiny_counts)
        for chunk in (250, 700):
            X = da.from_array(tiny_counts, chunks=(chunk, -1))
            result = vbsnmf.fit_dask(X, 4, client=client, **options, prior="gamma")
            np.testing.assert_allclose(result.elbo_trace, local.elbo_trace_, rtol=1e-9, atol=0)
            np.testing.assert_allclose(result.gene_loadings.T, local.components_, rtol=1e-9)
        svi_options = dict(batch_size=200, n_epochs=2, max_iter=20, tol=0.0, random_state=8)
        path = tmp_path / "tiny.h5ad"
        ad.AnnData(tiny_counts).write_h5ad(path)
        streamed = vbsnmf.VBNMF(4, solver="svi", n_threads=1, **svi_options, prior="gamma").fit(
            path
        )
        for chunk in (250, 700):
            X = da.from_array(tiny_counts, chunks=(chunk, -1))
            result = vbsnmf.fit_svi_dask(X, 4, client=client, **svi_options, prior="gamma")
            np.testing.assert_allclose(result.elbo_trace, streamed.elbo_trace_, rtol=1e-9, atol=0)


def test_an_in_memory_fit_starts_from_a_distributed_learned_fit(client, tiny_counts):
    """A distributed fit under the learned prior (its cells' rates and scales dask arrays)
    as the start of an in-memory fit: the arrays are computed (they reached a Numba kernel,
    a TypingError), and the fit is the one from their computed values."""
    X = da.from_array(tiny_counts, chunks=(400, -1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        distributed = vbsnmf.fit_dask(X, 3, random_state=0, max_iter=4, client=client)
        params = distributed.params
        scales = [
            _model.ScaleState(
                *(_as_numpy(a) for a in (scale.shape, scale.rate, scale.factor_shape)),
                scale.prior_shape,
                scale.prior_mean,
            )
            for scale in (params.row_scale, params.col_scale)
        ]
        computed = _model.VariationalParams(*map(_as_numpy, params.as_tuple()), *scales)
        assert is_dask_array(distributed.params.row_rate)
        fits = [vbsnmf.VBNMF(3, max_iter=3, n_threads=1, tol=0.0) for _ in range(2)]
        fits[0].fit(tiny_counts, init=distributed.params)
        fits[1].fit(tiny_counts, init=computed)
    np.testing.assert_allclose(fits[0].elbo_trace_, fits[1].elbo_trace_, rtol=1e-12)


def _as_numpy(array):
    return np.asarray(array.compute()) if is_dask_array(array) else np.asarray(array)


def test_a_block_unlike_its_declared_chunk_is_refused(client, tiny_counts):
    """Cells dropped inside map_blocks while the chunks still declare them: the batch fit
    fitted fewer cells than its result claimed (every later cell off by one), SVI and a
    block of fewer genes failed in scipy or numpy."""
    X = da.from_array(tiny_counts[:60].toarray(), chunks=(20, -1))

    def drop_first_cell(block, block_info=None):
        start = block_info[0]["array-location"][0][0]
        return block[1:] if start == 20 else block

    def drop_last_gene(block, block_info=None):
        start = block_info[0]["array-location"][0][0]
        return block[:, :-1] if start == 40 else block

    for damaged, first, shape in (
        (X.map_blocks(drop_first_cell, dtype=X.dtype), 20, f"19 x {X.shape[1]}"),
        (X.map_blocks(drop_last_gene, dtype=X.dtype), 40, f"20 x {X.shape[1] - 1}"),
    ):
        for fit in (vbsnmf.fit_dask, vbsnmf.fit_svi_dask):
            with pytest.raises(ValueError, match=f"starting at cell {first}: the block is {shape}"):
                fit(damaged, 2, max_iter=2, client=client)


def test_a_closed_client_is_named(tiny_counts):
    """A closed Client failed inside distributed (AttributeError: 'NoneType' ... 'ncores')."""
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    closed = Client(cluster)
    closed.close()
    cluster.close()
    X = da.from_array(tiny_counts[:40], chunks=(20, -1))
    for fit in (vbsnmf.fit_dask, vbsnmf.fit_svi_dask):
        with pytest.raises(ValueError, match="client is closed"):
            fit(X, 2, max_iter=2, client=closed)


def test_empty_chunks_of_a_filter_are_skipped(client, tiny_counts):
    """Cells filtered with a dask mask, then compute_chunk_sizes() (as our message for
    unknown chunk sizes advises), leave chunks of 0 cells: refused as "0 sample(s)"; the
    fit is the one of the same cells without the empty chunk."""
    dense = tiny_counts[:60].toarray()
    dense[20:40] = 0
    has_counts = dense.sum(axis=1) > 0
    for blocks in (
        da.from_array(dense, chunks=(20, -1)),
        da.from_array(sp.csr_matrix(dense), chunks=(20, -1)),
    ):
        filtered = blocks[da.from_array(has_counts, chunks=20)]  # a lazy mask: unknown sizes
        filtered.compute_chunk_sizes()
        assert 0 in filtered.chunks[0]
        kept = da.from_array(dense[np.r_[0:20, 40:60]], chunks=(20, -1))
        for fit, options in (
            (vbsnmf.fit_dask, {}),
            (vbsnmf.fit_svi_dask, dict(batch_size=20, n_epochs=1)),
        ):
            options.update(max_iter=3, tol=0.0, random_state=0, client=client)
            got = fit(filtered, 2, **options)
            expected = fit(kept, 2, **options)
            np.testing.assert_allclose(got.elbo_trace, expected.elbo_trace, rtol=1e-12)


def test_a_chunk_is_stored_with_narrow_indices_and_the_callers_left_as_they_were():
    """A chunk's copy is the fit's own: its indices are stored as uint16 when the minor
    axis allows (as a copy made by the engine's reader is), whatever their dtype was,
    also when it is already canonical CSR along its longer axis (more cells than genes);
    the chunk given is not modified."""
    from vbsnmf._dask._batch import chunk_count_data

    rng = np.random.default_rng(5)
    for index_dtype in (np.int32, np.int64):
        block = sp.csr_array(rng.poisson(0.5, (60, 20)).astype(np.float64))
        block.indices = block.indices.astype(index_dtype)
        block.indptr = block.indptr.astype(index_dtype)
        before = block.copy()
        data = chunk_count_data(block, first_cell=0)
        assert data.major == 0 and data.indices.dtype == np.uint16
        assert_array_equal(data.indices, before.indices)
        assert_array_equal(data.indptr, before.indptr)
        assert_array_equal(data.counts, before.data)
        assert block.indices.dtype == index_dtype
        assert_array_equal(block.indices, before.indices)
