"""`vbsnmf.io.write_result` refuses a name that `vbsnmf.io.read` reads as another format:
``write_result(adata, "result.zarr")`` wrote an HDF5 file named like a .zarr store, which
`read` then refused as "not a .zarr store (a folder)"."""

import anndata as ad
import numpy as np
import pytest

import vbsnmf


def _small():
    return ad.AnnData(np.arange(6, dtype=np.float32).reshape(3, 2))


@pytest.mark.parametrize(
    "name, kept",
    [
        ("result.zarr", "result.h5ad"),
        ("counts.mtx", "counts.h5ad"),
        ("counts.MTX.gz", "counts.h5ad"),
        ("cells.loom", "cells.h5ad"),
        ("result.h5ad.gz", "result.h5ad"),
        (".zarr", "result.h5ad"),
    ],
)
def test_a_name_read_as_another_format_is_refused_before_writing(tmp_path, name, kept):
    """Fails on the code before, which wrote an .h5ad under the name."""
    path = tmp_path / name
    with pytest.raises(ValueError, match=rf"name it {kept}$"):
        vbsnmf.io.write_result(_small(), path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["result.h5ad", "result.H5", "result"])
def test_an_h5ad_or_h5_name_writes_and_reads_back(tmp_path, name):
    """Guard (passes before and after): names `read` reads as an AnnData (.h5ad, an
    AnnData's .h5) still write, and write what was given; a name of no format writes
    too, as anndata's writer does."""
    path = vbsnmf.io.write_result(_small(), tmp_path / name)
    assert path.is_file()
    if name != "result":
        np.testing.assert_array_equal(vbsnmf.io.read(path).X, _small().X)
