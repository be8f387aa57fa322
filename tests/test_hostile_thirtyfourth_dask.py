"""The thirty-fourth hostile review of the Dask path: `VBNMF.transform` and `tl.project` of a
dask X of dense chunks made sparse chunk by chunk (they computed the whole array into one
dense block first), with the same numbers and messages as in memory; and guards of the
distributed fit of odd chunkings and sources (zarr, delayed, persisted, rechunked, a task
that raises) against `VBNMF.fit` in memory, on an in-process cluster."""

from __future__ import annotations

import tracemalloc
import warnings

import anndata as ad
import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf._dask._cluster import computed_as_declared

pytestmark = [pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")]

FIT = {"max_iter": 8, "tol": 0.0, "random_state": 0}


def _counts(n_cells: int = 60, n_genes: int = 25, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(1.0, (n_cells, n_genes)).astype(np.float64)


def _fitted(dtype=np.float64) -> vbsnmf.VBNMF:
    return vbsnmf.VBNMF(3, dtype=dtype, **FIT).fit(_counts())


def _with_genes(X) -> ad.AnnData:
    names = [f"g{i}" for i in range(X.shape[1])]
    return ad.AnnData(X, var=pd.DataFrame(index=names))


# -- 1: transform of dense chunks, made sparse chunk by chunk ---------------------------------
def test_transform_of_dense_chunks_never_holds_the_dense_matrix():
    """`VBNMF.transform` computed a dask X of dense chunks into one dense numpy array
    (cells x genes x 8 bytes) and only then made it sparse: 20,000 x 500 counts at 5 %
    nonzero (7 MB as CSR) peaked at 110 MB traced. Dense chunks are now made CSR where
    they are computed: the peak stays below half the dense array, the factors the same."""
    rng = np.random.default_rng(0)
    n_cells, n_genes = 20_000, 500
    dense = (rng.random((n_cells, n_genes)) < 0.05) * rng.poisson(2.0, (n_cells, n_genes))
    dense = dense.astype(np.float64)
    model = vbsnmf.VBNMF(3, max_iter=3, tol=0.0, random_state=0).fit(sp.csr_matrix(dense[:500]))
    expected = model.transform(sp.csr_matrix(dense))
    chunked = da.from_array(dense, chunks=(2000, -1))
    with dask.config.set(scheduler="sync"):
        tracemalloc.start()
        try:
            got = model.transform(chunked)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    np.testing.assert_array_equal(got, expected)
    assert peak < dense.nbytes / 2


def test_dense_chunks_computed_for_a_sparse_caller_come_back_as_csr():
    """`computed_as_declared(..., sparse=True)` (transform's and `tl.project`'s) gives a
    CSR matrix of the same values for dense numeric chunks, float16 as float32 (scipy
    stores no float16), with unknown chunk sizes too; masked, object and text chunks come
    back as they were, for the count check to judge."""
    counts = _counts()
    for values in (counts, counts.astype(np.int8), counts > 1, counts.astype(np.uint64)):
        computed = computed_as_declared(da.from_array(values, chunks=(13, -1)), sparse=True)
        assert sp.issparse(computed) and computed.format == "csr"
        assert computed.dtype == values.dtype
        np.testing.assert_array_equal(computed.toarray(), values)
    half = computed_as_declared(da.from_array(counts.astype(np.float16), chunks=13), sparse=True)
    assert sp.issparse(half) and half.dtype == np.float32
    np.testing.assert_array_equal(half.toarray(), counts)
    chunked = da.from_array(counts, chunks=(13, -1))
    unknown = chunked[da.from_array(counts.sum(axis=1) > 20, chunks=13)]
    assert np.isnan(unknown.shape[0])
    computed = computed_as_declared(unknown, sparse=True)
    assert sp.issparse(computed)
    np.testing.assert_array_equal(computed.toarray(), counts[counts.sum(axis=1) > 20])
    masked = computed_as_declared(da.ma.masked_equal(chunked, 2), sparse=True)
    assert isinstance(masked, np.ma.MaskedArray)
    assert computed_as_declared(chunked.astype(object), sparse=True).dtype == object
    assert isinstance(computed_as_declared(chunked), np.ndarray)  # the default: as it was


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int8, np.uint64, bool])
def test_transform_of_dense_chunks_of_each_dtype_is_the_transform_in_memory(dtype):
    """A guard (passes on both versions): the factors of dense chunks of each dtype are
    those of the same counts in memory, bit for bit."""
    model = _fitted()
    values = _counts() > 1 if dtype is bool else _counts().astype(dtype)
    with dask.config.set(scheduler="sync"):
        got = model.transform(da.from_array(values, chunks=(13, -1)))
    np.testing.assert_array_equal(got, model.transform(values))


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (np.nan, r"found 2 NaN entries at \(row, column\) \(40, 3\), \(50, 1\)"),
        (-1.0, r"found 2 negative entries at \(row, column\) \(40, 3\), \(50, 1\)"),
        (np.inf, r"found 2 infinite entries at \(row, column\) \(40, 3\), \(50, 1\)"),
        (1e20, r"X holds 2 counts above 10,000,000,000,000"),
    ],
)
def test_bad_values_in_dense_chunks_are_named_as_in_memory(value, said):
    """A guard (passes on both versions): NaN, negative, infinite and out-of-range values
    in dense chunks, stored as CSR entries now, are named with their positions in the
    whole matrix, as in memory."""
    model = _fitted()
    bad = _counts()
    bad[40, 3] = bad[50, 1] = value
    with pytest.raises(ValueError, match=said):
        model.transform(bad)
    with dask.config.set(scheduler="sync"), pytest.raises(ValueError, match=said):
        model.transform(da.from_array(bad, chunks=(13, -1)))


def test_transform_of_dense_chunks_warns_and_refuses_as_before():
    """A guard (passes on both versions): non-integer values warn, a float32 model's count
    range is named, masked chunks are refused with dask's advice and text is named by its
    dtype, as before dense chunks were made sparse."""
    counts = _counts()
    fractional = counts.copy()
    fractional[7, 2] = 0.5
    with dask.config.set(scheduler="sync"):
        with pytest.warns(vbsnmf.NonCountWarning):
            _fitted().transform(da.from_array(fractional, chunks=(13, -1)))
        large = counts.copy()
        large[30, 4] = 2.0**25
        with pytest.raises(ValueError, match="above 16,777,216, the largest a float32 fit"):
            _fitted(np.float32).transform(da.from_array(large, chunks=(13, -1)))
        masked = da.ma.masked_equal(da.from_array(counts, chunks=(13, -1)), 2)
        with pytest.raises(TypeError, match=r"pass dask\.array\.ma\.filled\(X, 0\)"):
            _fitted().transform(masked)
        with pytest.raises(TypeError, match="X must hold numbers, got dtype <U32"):
            _fitted().transform(da.from_array(counts.astype(str), chunks=(13, -1)))


def test_tl_project_of_dense_chunks_never_holds_the_dense_matrix():
    """`tl.project` of an AnnData whose X is a dask array of dense chunks computed it whole
    as transform did: 8,000 x 500 counts (32 MB dense) peaked at 50 MB traced. Dense
    chunks are now made CSR where they are computed: the peak stays below the dense
    array, the projection the same."""
    rng = np.random.default_rng(0)
    n_cells, n_genes = 8000, 500
    dense = (rng.random((n_cells, n_genes)) < 0.05) * rng.poisson(2.0, (n_cells, n_genes))
    dense = dense.astype(np.float64)
    reference = _with_genes(sp.csr_matrix(dense[:500]))
    vbsnmf.tl.nmf(reference, n_components=3, max_iter=3, tol=0.0, random_state=0)
    expected = _with_genes(sp.csr_matrix(dense))
    vbsnmf.tl.project(expected, reference)
    chunked = _with_genes(da.from_array(dense, chunks=(1000, -1)))
    with dask.config.set(scheduler="sync"):
        tracemalloc.start()
        try:
            vbsnmf.tl.project(chunked, reference)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    np.testing.assert_array_equal(chunked.obsm["X_nmf"], expected.obsm["X_nmf"])
    assert peak < dense.nbytes


def test_tl_project_of_dense_chunks_is_the_projection_in_memory():
    """A guard (passes on both versions): `tl.project` of an AnnData whose X is a dask
    array of dense int16 chunks gives the projection of the same counts in memory, and
    names a NaN with its position."""
    counts = _counts()
    reference = _with_genes(counts.copy())
    vbsnmf.tl.nmf(reference, n_components=3, **FIT)
    in_memory = _with_genes(counts.astype(np.int16))
    vbsnmf.tl.project(in_memory, reference)
    chunked = _with_genes(da.from_array(counts.astype(np.int16), chunks=(13, -1)))
    with dask.config.set(scheduler="sync"):
        vbsnmf.tl.project(chunked, reference)
        np.testing.assert_array_equal(chunked.obsm["X_nmf"], in_memory.obsm["X_nmf"])
        bad = counts.copy()
        bad[40, 3] = np.nan
        with pytest.raises(ValueError, match=r"found 1 NaN entry at \(row, column\) \(40, 3\)"):
            vbsnmf.tl.project(_with_genes(da.from_array(bad, chunks=(13, -1))), reference)


# -- guards: the distributed fit of odd sources and chunkings ---------------------------------
def _delayed_blocks(counts: np.ndarray, rows: int, known: bool):
    blocks = [
        da.from_delayed(
            dask.delayed(np.array)(counts[start : start + rows]),
            (rows if known else np.nan, counts.shape[1]),
            dtype=counts.dtype,
        )
        for start in range(0, counts.shape[0], rows)
    ]
    return da.concatenate(blocks)


def test_fits_of_zarr_delayed_persisted_and_rechunked_sources_are_the_fit_in_memory(
    client, tmp_path
):
    """A guard (passes on both versions): a dask X read by `da.from_zarr` (int32 chunks,
    then rechunked across genes), built by `da.from_delayed`, persisted, or rechunked
    mid-pipeline fits as the same counts in memory to 1e-12 (two of them under the fixed
    prior too)."""
    zarr = pytest.importorskip("zarr")
    counts = _counts()
    store = zarr.open(
        str(tmp_path / "x.zarr"), mode="w", shape=counts.shape, chunks=(13, 25), dtype="i4"
    )
    store[:] = counts.astype(np.int32)
    sources = [
        da.from_zarr(str(tmp_path / "x.zarr")),
        da.from_zarr(store).rechunk((20, 4)),
        _delayed_blocks(counts, 20, known=True),
        da.from_array(counts, chunks=(13, -1)).persist(),
        da.from_array(counts, chunks=(7, 5)).rechunk((29, 3)),
    ]
    for prior, tried in (("hierarchical", sources), ("gamma", sources[:2])):
        reference = vbsnmf.VBNMF(3, prior=prior, **FIT).fit(counts)
        for source in tried:
            fitted = vbsnmf.VBNMF(3, prior=prior, **FIT).fit(source)
            np.testing.assert_allclose(fitted.components_, reference.components_, rtol=1e-12)
            np.testing.assert_allclose(fitted.elbo_trace_, reference.elbo_trace_, rtol=1e-12)


def test_unknown_chunk_sizes_from_delayed_are_refused_by_the_fit_and_taken_by_transform(client):
    """A guard (passes on both versions): blocks of unknown size from `da.from_delayed`
    are refused by the fit with the advice to compute their sizes (which then fits as in
    memory), and transformed as the counts in memory."""
    counts = _counts()
    unknown = _delayed_blocks(counts, 20, known=False)
    with pytest.raises(ValueError, match=r"unknown chunk sizes; call X\.compute_chunk_sizes"):
        vbsnmf.VBNMF(3, **FIT).fit(unknown)
    reference = vbsnmf.VBNMF(3, **FIT).fit(counts)
    fitted = vbsnmf.VBNMF(3, **FIT).fit(unknown.compute_chunk_sizes())
    np.testing.assert_allclose(fitted.components_, reference.components_, rtol=1e-12)
    np.testing.assert_array_equal(reference.transform(unknown), reference.transform(counts))


def _raises(block):
    raise RuntimeError("the reader failed on this chunk")


def test_a_task_that_raises_on_a_worker_reaches_the_caller_and_the_model_is_unchanged(client):
    """A guard (passes on both versions): a chunk whose task raises on the worker raises the
    same exception to the caller of the fit, of `fit_svi_dask` and of transform, and a
    fitted model keeps its attributes."""
    counts = _counts()
    failing = da.from_array(counts, chunks=(13, -1)).map_blocks(_raises, dtype=counts.dtype)
    model = vbsnmf.VBNMF(3, **FIT).fit(counts)
    components = model.components_.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # distributed logs the failed tasks
        with pytest.raises(RuntimeError, match="the reader failed on this chunk"):
            model.fit(failing)
        with pytest.raises(RuntimeError, match="the reader failed on this chunk"):
            vbsnmf.fit_svi_dask(failing, 3, n_epochs=1, random_state=0)
        with pytest.raises(RuntimeError, match="the reader failed on this chunk"):
            model.transform(failing)
    np.testing.assert_array_equal(model.components_, components)
