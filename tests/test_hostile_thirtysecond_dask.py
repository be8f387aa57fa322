"""The thirty-second hostile review of the Dask path: `vbsnmf.classic.NMF` given a dask X
(of sparse chunks, masked chunks, blocks of other shapes than their chunks declare) against
the same counts in memory, and guards of the distributed fits' chunking, dtypes and late
bad values against `VBNMF.fit` in memory, on an in-process cluster."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf.classic import NMF

pytestmark = [
    pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]

FIT = {"max_iter": 8, "tol": 0.0, "random_state": 0}


def _counts(n_cells: int = 60, n_genes: int = 25, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(1.0, (n_cells, n_genes)).astype(np.float64)


# -- 1: classic NMF of a dask X of sparse chunks ----------------------------------------------
def test_classic_nmf_fits_and_transforms_a_dask_array_of_sparse_chunks():
    """scikit-learn's check_array computed a dask X of dense chunks whole, but made a 0-d
    object array of sparse ones: fit and transform failed with numpy's "setting an array
    element with a sequence." (sparse weights too). They are now computed into memory as
    transform and count_split compute them, sparse chunks staying sparse, and fitted as
    the same counts in memory."""
    counts = _counts()
    weights = (np.random.default_rng(1).random(counts.shape) > 0.2).astype(np.float64)
    chunked = da.from_array(sp.csr_matrix(counts), chunks=(20, -1), asarray=False)
    reference = NMF(3, random_state=0).fit(counts)
    fitted = NMF(3, random_state=0).fit(chunked)
    np.testing.assert_allclose(fitted.components_, reference.components_, rtol=1e-12)
    np.testing.assert_allclose(reference.transform(chunked), reference.transform(counts))
    sparse_weights = sp.csr_matrix(weights)
    weighted = NMF(3, random_state=0, weights=sparse_weights).fit(counts)
    chunked_weights = da.from_array(sparse_weights, chunks=(7, -1), asarray=False)
    fitted = NMF(3, random_state=0, weights=chunked_weights).fit(chunked)
    np.testing.assert_allclose(fitted.components_, weighted.components_, rtol=1e-12)
    float32 = da.from_array(sp.csr_matrix(counts, dtype=np.float32), chunks=(20, -1))
    assert NMF(3, random_state=0).fit_transform(float32).dtype == np.float32


# -- 2: classic NMF of a dask X of masked chunks ----------------------------------------------
def test_classic_nmf_refuses_a_dask_array_of_masked_chunks_as_in_memory():
    """``da.ma.masked_equal(X, 2)``: np.asarray dropped the mask and the hidden values were
    fitted without a word, where the same masked array in memory is refused; now refused
    alike, the advice naming dask's ``filled`` (a dask array has no ``filled`` method)."""
    counts = _counts()
    masked = da.ma.masked_equal(da.from_array(counts, chunks=(20, -1)), 2)
    with pytest.raises(TypeError, match=r"X is a masked array: pass the values as X\.filled"):
        NMF(3).fit(np.ma.masked_equal(counts, 2))
    said = r"X is a masked array: pass the values as dask\.array\.ma\.filled\(X, 0\)"
    with pytest.raises(TypeError, match=said):
        NMF(3).fit(masked)
    with pytest.raises(TypeError, match=said):
        NMF(3).fit(np.ones((60, 25))).transform(masked)
    np.testing.assert_array_equal(  # the advice taken: the counts as filled
        NMF(3, random_state=0).fit(da.ma.filled(masked, 0)).components_,
        NMF(3, random_state=0).fit(np.ma.masked_equal(counts, 2).filled(0)).components_,
    )


# -- 3: classic NMF of blocks of fewer cells than declared ------------------------------------
def test_classic_nmf_refuses_blocks_of_fewer_cells_than_their_chunks_declare(client):
    """A map_blocks that drops cells without saying so in ``chunks=`` (X.shape (60, 25),
    blocks of 5 cells): W of 15 rows came back for 60 declared cells. Refused now naming
    the chunk, as VBNMF's fit and transform refuse it."""
    dropped = da.from_array(_counts(), chunks=(20, -1)).map_blocks(lambda block: block[:5])
    said = "the block is 5 x 25, its chunk declares 20 x 25"
    with pytest.raises(ValueError, match=said):
        NMF(3, random_state=0).fit_transform(dropped)
    with pytest.raises(ValueError, match=said):
        vbsnmf.VBNMF(3, **FIT).fit(dropped)  # as before


def test_classic_nmf_of_a_dense_dask_array_is_the_fit_in_memory():
    """Guard (passes on both): a dask X of dense chunks and one of unknown chunk sizes
    fitted as the counts in memory; a NaN in a late chunk refused as in memory."""
    counts = _counts()
    chunked = da.from_array(counts, chunks=(20, -1))
    reference = NMF(3, random_state=0).fit(counts)
    np.testing.assert_array_equal(
        NMF(3, random_state=0).fit(chunked).components_, reference.components_
    )
    unknown = chunked[chunked.sum(axis=1) >= 0]
    assert np.isnan(unknown.shape[0])
    np.testing.assert_array_equal(
        NMF(3, random_state=0).fit(unknown).components_, reference.components_
    )
    late_nan = counts.copy()
    late_nan[55, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        NMF(3).fit(da.from_array(late_nan, chunks=(20, -1)))


# -- guards of the distributed fits -----------------------------------------------------------
@pytest.mark.parametrize(
    "chunks",
    [(1, -1), ((7, 30, 1, 22), (25,)), (13, 7), ((0, 30, 0, 30), (25,))],
    ids=["one-cell", "uneven", "both-axes", "empty"],
)
def test_a_dask_fit_of_odd_chunks_is_the_fit_in_memory(client, chunks):
    """Guard (passes on both): chunks of one cell, uneven chunks, chunks across both axes
    and empty chunks give the fit in memory (same random_state) up to the order of sums:
    ELBO trace and loadings to 1e-12 relative, the same iterations."""
    counts = _counts()
    counts[5] = 0  # an empty cell
    in_memory = vbsnmf.VBNMF(3, **FIT).fit(counts)
    on_dask = vbsnmf.VBNMF(3, **FIT).fit(da.from_array(counts, chunks=chunks))
    np.testing.assert_allclose(on_dask.elbo_trace_, in_memory.elbo_trace_, rtol=1e-12)
    np.testing.assert_allclose(on_dask.components_, in_memory.components_, rtol=1e-12)
    np.testing.assert_array_equal(on_dask.elbo_iter_, in_memory.elbo_iter_)


@pytest.mark.parametrize("dtype", [np.int64, np.float32, np.uint16, bool, object])
def test_a_dask_fit_of_each_dtype_is_the_fit_in_memory(client, dtype):
    """Guard (passes on both): counts of int64, float32, uint16, bool and object dtype in
    dask chunks fitted as the same array in memory."""
    counts = _counts().astype(dtype)
    in_memory = vbsnmf.VBNMF(3, **FIT).fit(counts)
    on_dask = vbsnmf.VBNMF(3, **FIT).fit(da.from_array(counts, chunks=(20, -1)))
    np.testing.assert_allclose(on_dask.elbo_trace_, in_memory.elbo_trace_, rtol=1e-12)
    np.testing.assert_allclose(on_dask.components_, in_memory.components_, rtol=1e-12)


@pytest.mark.parametrize("value", [np.nan, -1.0, np.inf])
def test_a_bad_value_in_a_late_chunk_is_named_where_it_is(client, value):
    """Guard (passes on both): a NaN, negative or infinite count in the last chunk only
    is a ValueError naming the chunk and the entry's position in the whole matrix (batch
    VB and SVI); a dask X of unknown chunk sizes is refused before any chunk is read."""
    counts = _counts()
    counts[55, 3] = value
    chunked = da.from_array(counts, chunks=(20, -1))
    for solver in ("batch", "svi"):
        with pytest.raises(ValueError, match=r"starting at cell 40: .*\(55, 3\)"):
            vbsnmf.VBNMF(3, solver=solver, **FIT).fit(chunked)
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        vbsnmf.fit_dask(chunked[chunked.sum(axis=1) > 0], 3)
