"""The thirtieth hostile review of the Dask path (`vbsnmf._dask`), each fix against the
same call in memory, on an in-process cluster."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import vbsnmf

pytestmark = pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")

FAST = {"max_iter": 2, "random_state": 0}


def _counts(n_cells: int = 40, n_genes: int = 25, seed: int = 0) -> np.ndarray:
    counts = np.random.default_rng(seed).poisson(1.0, (n_cells, n_genes)).astype(np.float64)
    counts[:, 0] += 1  # no empty cell
    return counts


# -- 1: a block that is not 2-D named by its length -----------------------------------------
def test_a_block_that_is_not_two_dimensional_is_named_so(client):
    """A map_blocks that ravels its blocks (its chunks still declared 20 x 25) was refused
    with "the block is 500, its chunk declares 20 x 25": read as a block of 500 cells. The
    fit and transform now say the block is 1-D, with its shape; a block of the wrong 2-D
    shape is named as before."""
    counts = _counts()
    flat = da.from_array(counts, chunks=(20, -1)).map_blocks(np.ravel)
    said = r"the block is 1-D \(shape \(500,\)\), not 2-D, its chunk declares 20 x 25"
    with pytest.raises(ValueError, match=said):
        vbsnmf.VBNMF(3, **FAST).fit(flat)
    model = vbsnmf.VBNMF(3, **FAST).fit(counts)
    with pytest.raises(ValueError, match=said):
        model.transform(flat)
    shortened = da.from_array(counts[:, :20], chunks=(20, -1)).map_blocks(
        lambda block: block[:10], dtype=np.float64
    )
    with pytest.raises(ValueError, match="the block is 10 x 20, its chunk declares 20 x 20"):
        vbsnmf.VBNMF(3, **FAST).fit(shortened)


# -- 2: a dask array over an HDF5 file closed since -----------------------------------------
@pytest.mark.parametrize("inline", [False, True])
def test_a_dask_array_over_a_closed_hdf5_file_is_named(client, tmp_path, inline):
    """``with h5py.File(path) as f: X = da.from_array(f["X"])``, fitted after the block, failed
    with distributed's "Could not serialize object of type _HLGExprSequence" (fit, SVI,
    transform, tl.nmf), naming neither the file nor its closing. Each now refuses X as
    reading a closed HDF5 file, as VBNMF.fit refuses the closed dataset itself; the same
    array over the file still open fits as the counts in memory do."""
    h5py = pytest.importorskip("h5py")
    ad = pytest.importorskip("anndata")
    counts = _counts()
    path = tmp_path / "counts.h5"
    with h5py.File(path, "w") as file:
        file["X"] = counts
    with h5py.File(path, "r") as file:
        lazy = da.from_array(file["X"], chunks=(20, -1), inline_array=inline)
    model = vbsnmf.VBNMF(3, **FAST).fit(counts)
    calls = {
        "fit": lambda: vbsnmf.VBNMF(3, **FAST).fit(lazy),
        "fit_svi_dask": lambda: vbsnmf.fit_svi_dask(lazy, 3, n_epochs=1, client=client),
        "transform": lambda: model.transform(lazy),
        "tl.nmf": lambda: vbsnmf.tl.nmf(ad.AnnData(lazy), 3, **FAST),
    }
    for name, call in calls.items():
        said = "adata.X reads" if name == "tl.nmf" else "X reads"
        with pytest.raises(ValueError, match=f"^{said} an HDF5 file that was closed"):
            call()
    with h5py.File(path, "r") as file:
        still_open = da.from_array(file["X"], chunks=(20, -1), inline_array=inline)
        fitted = vbsnmf.VBNMF(3, **FAST).fit(still_open)
        np.testing.assert_allclose(fitted.components_, model.components_, rtol=1e-12)


# -- 3: tl.nmf of a dask X over an open HDF5 file ---------------------------------------------
def test_tl_nmf_fits_a_dask_x_read_from_an_open_hdf5_file(client, tmp_path):
    """tl.nmf of an AnnData whose X is ``da.from_array(h5py_file["X"])`` (the file open)
    failed with distributed's "Could not serialize object of type _HLGExprSequence" where
    VBNMF.fit of the same X fits: its gene and cell sums were lambdas, which pickle refuses,
    and cloudpickle, distributed's fallback, cannot send the h5py dataset. The hint naming
    a layer of counts (read the same way) beside a normalised X failed alike. Both now
    work, the fit equal to the one in memory."""
    h5py = pytest.importorskip("h5py")
    ad = pytest.importorskip("anndata")
    counts = _counts()
    path = tmp_path / "counts.h5"
    with h5py.File(path, "w") as file:
        file["X"] = counts
        file["normalised"] = counts / 3
    in_memory = ad.AnnData(counts.copy())
    vbsnmf.tl.nmf(in_memory, 3, **FAST)
    with h5py.File(path, "r") as file:
        adata = ad.AnnData(da.from_array(file["X"], chunks=(20, -1)))
        vbsnmf.tl.nmf(adata, 3, **FAST)
        np.testing.assert_allclose(adata.varm["NMF"], in_memory.varm["NMF"], rtol=1e-12)
        np.testing.assert_allclose(adata.obsm["X_nmf"], in_memory.obsm["X_nmf"], rtol=1e-12)
        normalised = ad.AnnData(da.from_array(file["normalised"], chunks=(20, -1)))
        normalised.layers["counts"] = da.from_array(file["X"], chunks=(20, -1))
        with pytest.raises(ValueError, match="appear to be in layer='counts'"):
            vbsnmf.tl.nmf(normalised, 3, **FAST)
