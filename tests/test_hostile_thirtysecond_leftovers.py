"""Leftovers of the thirty-second pass's first wave, fixed by the lead: each test fails on
the code before its fix (8c0e54f)."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pytest

import vbsnmf


@pytest.fixture(scope="module")
def counts() -> np.ndarray:
    return np.random.default_rng(0).poisson(2.0, (30, 20)).astype(float)


@pytest.fixture(scope="module")
def fitted(counts) -> vbsnmf.VBNMF:
    return vbsnmf.VBNMF(2, max_iter=200, random_state=0, n_threads=1).fit(counts)


def test_transform_masked_dask_chunks_advises_dask_filled(counts, fitted):
    """The refusal advised ``X.filled(0)``, which a dask array does not have."""
    masked = np.ma.masked_array(counts, mask=counts > 3)
    X = da.from_array(masked, chunks=(10, 20), asarray=False)
    with pytest.raises(TypeError, match=r"masked array: pass dask\.array\.ma\.filled\(X, 0\)"):
        fitted.transform(X)
    assert not hasattr(X, "filled")  # the advice it gave before was no method of X


def test_mask_as_anndata_refused_by_name(counts):
    """numpy read an AnnData mask as an object of 64 dimensions ("setting an array element
    with a sequence")."""
    with pytest.raises(TypeError, match=r"mask is an AnnData; pass its matrix"):
        vbsnmf.VBNMF(2, max_iter=5, random_state=0).fit(counts, mask=ad.AnnData(counts > 3))


@pytest.mark.parametrize("n_genes", [5.0, "5", None])
def test_top_genes_non_integer_n_genes_is_a_type_error(counts, n_genes):
    """A TypeError as for ``n_components``; it was a ValueError ("positive integer")."""
    adata = ad.AnnData(counts)
    vbsnmf.tl.nmf(adata, 2, max_iter=50, random_state=0, n_threads=1)
    with pytest.raises(TypeError, match=r"n_genes must be an integer"):
        vbsnmf.tl.top_genes(adata, n_genes=n_genes)
    with pytest.raises(ValueError, match=r"n_genes must be a positive integer, got 0"):
        vbsnmf.tl.top_genes(adata, n_genes=0)
