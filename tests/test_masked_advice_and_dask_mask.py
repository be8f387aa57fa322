"""Two leftovers of the thirty-fourth pass: a masked layer's refusal advised ``X.filled(0)``
(the matrix is the layer), and a dask mask of dense chunks was computed into one dense
array before it was made sparse (as `VBNMF.transform` computed a dask X before the pass)."""

from __future__ import annotations

import tracemalloc
import warnings

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf


def test_a_masked_layer_is_advised_by_its_own_name():
    X = np.random.default_rng(0).poisson(1.0, (30, 10)).astype(np.float64)
    adata = ad.AnnData(X.copy())
    adata.layers["counts"] = np.ma.masked_array(X, mask=X > 3)
    adata.var["chosen"] = [True] * 5 + [False] * 5
    for options in ({}, {"mask_var": "chosen"}):
        with pytest.raises(TypeError) as caught:
            vbsnmf.tl.nmf(adata, 2, layer="counts", **options)
        message = str(caught.value)
        assert "pass the counts as adata.layers['counts'].filled(0);" in message, message
        assert "X.filled" not in message


def test_a_dask_mask_of_dense_chunks_is_never_one_dense_array():
    """20,000 x 500 float 0/1 mask (76 MB dense) in chunks of 2,000 cells: the same fit as
    its sparse matrix in memory, with a traced peak below the dense mask (94 MB before,
    28 MB after, measured)."""
    rng = np.random.default_rng(0)
    n_cells, n_genes = 20_000, 500
    counts = sp.random(n_cells, n_genes, density=0.05, random_state=1, format="csr")
    counts.data = np.ceil(counts.data * 5)
    mask = (rng.random((n_cells, n_genes)) < 0.01).astype(np.float64)
    options = {"max_iter": 3, "random_state": 0, "n_threads": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        expected = vbsnmf.VBNMF(3, **options).fit(counts, mask=sp.csr_matrix(mask))
        chunked = da.from_array(mask, chunks=(2_000, n_genes))
        tracemalloc.start()
        try:
            got = vbsnmf.VBNMF(3, **options).fit(counts, mask=chunked)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    np.testing.assert_array_equal(got.components_, expected.components_)
    assert peak < 0.6 * mask.nbytes, (peak / 2**20, mask.nbytes / 2**20)
