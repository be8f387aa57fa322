"""Nineteenth hostile pass, SVI and streamed fits: a backed AnnData whose file holds no X
(its counts in a layer) failed with h5py's bare KeyError, from anndata's X."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import VBNMF
from vbsnmf.io import ReadError


def _counts(n_cells: int = 30, n_genes: int = 12) -> sp.csr_matrix:
    counts = sp.random(n_cells, n_genes, density=0.4, random_state=0, format="csr")
    counts.data = np.ceil(counts.data * 5)
    return counts


@pytest.fixture
def backed_without_x(tmp_path):
    """A backed AnnData whose file has no X: its counts are in a layer."""
    path = tmp_path / "layer_only.h5ad"
    adata = ad.AnnData(obs={"cell": np.arange(30)}, layers={"counts": _counts()})
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    yield backed
    backed.file.close()


def test_a_backed_anndata_without_x_is_a_read_error_naming_its_file(backed_without_x):
    with pytest.raises(ReadError, match=r"layer_only\.h5ad: has no X matrix to stream"):
        VBNMF(2, solver="svi").fit(backed_without_x)


@pytest.mark.parametrize("solver", ["svi", "batch", "mu"])
def test_tl_nmf_of_a_backed_anndata_without_x_asks_for_its_layer(backed_without_x, solver):
    with pytest.raises(ValueError, match=r"adata\.X is None; pass layer="):
        vbsnmf.tl.nmf(backed_without_x, 2, solver=solver)
    assert "X_nmf" not in backed_without_x.obsm


def test_the_layer_of_a_backed_anndata_without_x_still_fits(backed_without_x):
    """The advice works: the layer is read into memory and fitted as the matrix itself."""
    params = {"solver": "svi", "n_epochs": 2, "batch_size": 7, "random_state": 0}
    vbsnmf.tl.nmf(backed_without_x, 2, layer="counts", **params)
    direct = VBNMF(2, **params).fit(_counts())
    np.testing.assert_array_equal(
        backed_without_x.obsm["X_nmf"], direct.cell_shape_ / direct.cell_rate_
    )
