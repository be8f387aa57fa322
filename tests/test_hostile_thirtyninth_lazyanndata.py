"""The thirty-ninth pass over what anndata 0.12 users hand to vbsnmf: AnnData read
``backed="r"``, written and read as ``.zarr`` (zarr 3 stores, and zipped ones), with the
counts in a layer and no X. Defects, each test failing on the code before its fix:

- `tl.nmf(..., copy=True)` and `tl.project(adata_new, ..., copy=True)` of a backed
  AnnData whose file holds no X (the counts in a layer, or in ``.raw``) raised h5py's
  bare ``KeyError: "Unable to synchronously open object (object 'X' doesn't exist)"``
  from anndata's ``to_memory``; the same calls without ``copy`` fitted. They now fit a
  copy in memory, with the numbers of an in-memory AnnData of the same counts.
- A zipped ``.zarr`` store, which anndata writes (``adata.write_zarr(ZipStore(...))``)
  and reads, was refused by `vbsnmf.io.read` and ``vbsnmf fit`` as "unrecognised input"
  (``.zarr.zip``) or "not a .zarr store (a folder)" (named ``.zarr``): it is now named a
  zipped .zarr store, with the two ways to read it (unzip it, or anndata's ZipStore), and
  any other zip archive as one to unzip first.

Guards (pass on the code before too): a fit's record written to a zarr 3 store and read
back gives every tool the numbers of the original (`test_a_fit_read_back_from_zarr_...`).
"""

from __future__ import annotations

import functools
import warnings
import zipfile

import anndata as ad
import numpy as np
import pytest
import zarr
from cli_output import without_compile_notice
from simulated import poisson_gamma_adata

import vbsnmf
from vbsnmf import cli, tl
from vbsnmf.io import ReadError

N_CELLS, N_GENES, K = 60, 24, 3
FIT = {"random_state": 0, "max_iter": 30, "n_threads": 1}

_counts = functools.partial(poisson_gamma_adata, n_cells=N_CELLS, n_genes=N_GENES, k=K)


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _without_x(adata) -> ad.AnnData:
    """``adata``'s counts in ``layers['counts']`` and in ``.raw``, with no X."""
    layered = ad.AnnData(obs=adata.obs.copy(), var=adata.var.copy())
    layered.layers["counts"] = adata.X.copy()
    layered.raw = adata
    return layered


@pytest.fixture
def backed_without_x(tmp_path) -> ad.AnnData:
    path = tmp_path / "layered.h5ad"
    _without_x(_counts()).write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


@pytest.mark.parametrize("counts", [{"layer": "counts"}, {"use_raw": True}], ids=["layer", "raw"])
@pytest.mark.parametrize("cells", [slice(None), slice(10, 50)], ids=["all", "view"])
def test_a_backed_anndata_without_x_is_fitted_as_a_copy(backed_without_x, counts, cells):
    source = backed_without_x if cells == slice(None) else backed_without_x[cells]
    fitted = _quiet(tl.nmf, source, K, copy=True, **counts, **FIT)
    expected = _quiet(tl.nmf, _counts()[cells].copy(), K, copy=True, **FIT)
    assert not fitted.isbacked and fitted.n_obs == expected.n_obs
    np.testing.assert_array_equal(fitted.obsm["X_nmf"], expected.obsm["X_nmf"])
    np.testing.assert_array_equal(fitted.varm["NMF"], expected.varm["NMF"])
    # the copy keeps what was not fitted; the backed AnnData holds no result
    assert fitted.raw is not None and "counts" in fitted.layers
    assert "X_nmf" not in backed_without_x.obsm and "nmf" not in backed_without_x.uns


def test_new_cells_backed_without_x_are_projected_as_a_copy(backed_without_x):
    reference = _quiet(tl.nmf, _counts(seed=1), K, copy=True, **FIT)
    projected = _quiet(tl.project, backed_without_x, reference, layer="counts", copy=True)
    expected = _quiet(tl.project, _counts(), reference, copy=True)
    np.testing.assert_array_equal(projected.obsm["X_nmf"], expected.obsm["X_nmf"])
    assert "X_nmf" not in backed_without_x.obsm


def _zipped_store(adata, path):
    """``adata`` written by anndata to the zipped zarr store ``path``."""
    store = zarr.storage.ZipStore(path, mode="w")
    try:  # zipfile warns of the attributes anndata writes twice; read, the last one counts
        _quiet(adata.write_zarr, store)
    finally:
        store.close()
    return path


@pytest.mark.parametrize("name", ["counts.zarr.zip", "counts.zarr"])
def test_a_zipped_zarr_store_is_named_with_the_ways_to_read_it(tmp_path, name):
    adata = _counts()
    path = _zipped_store(adata, tmp_path / name)
    with pytest.raises(ReadError, match=r"a zipped \.zarr store") as raised:
        vbsnmf.io.read(path)
    assert "unzip" in str(raised.value) and "ZipStore" in str(raised.value)
    assert str(
        tmp_path / "counts.zarr" if name.endswith(".zip") else tmp_path / "unzipped.zarr"
    ) in str(raised.value)
    # both ways the message gives read the counts
    store = zarr.storage.ZipStore(path, mode="r")
    try:
        through_anndata = ad.read_zarr(store)
    finally:
        store.close()
    with zipfile.ZipFile(path) as archive:
        archive.extractall(tmp_path / "unzipped.zarr")
    unzipped = vbsnmf.io.read(tmp_path / "unzipped.zarr")
    for read_back in (through_anndata, unzipped):
        assert (read_back.X != adata.X).nnz == 0
        assert list(read_back.obs_names) == list(adata.obs_names)


def test_another_zip_archive_is_named_one_to_unzip(tmp_path):
    path = tmp_path / "download.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("counts/matrix.mtx", "%%MatrixMarket matrix coordinate real general\n")
    with pytest.raises(ReadError, match="a zip archive, which vbsnmf does not read"):
        vbsnmf.io.read(path)


@pytest.mark.parametrize("command", ["fit", "umap"])
def test_the_command_line_names_a_zipped_zarr_store_and_writes_nothing(tmp_path, capsys, command):
    """``vbsnmf umap`` of a fit written to a zipped store said "not a readable HDF5 file"."""
    path = _zipped_store(_quiet(tl.nmf, _counts(), K, copy=True, **FIT), tmp_path / "fit.zarr.zip")
    output = tmp_path / ("out" if command == "fit" else "umap.png")
    argv = ["-k", "2", "-o", str(output)] if command == "fit" else ["-o", str(output)]
    code = cli.main([command, str(path), *argv])
    err = without_compile_notice(capsys.readouterr().err)
    assert code == 2 and not output.exists()
    assert err.count("\n") == 1 and "a zipped .zarr store" in err and "Traceback" not in err
    assert f"-d {tmp_path / 'fit.zarr'}" in err  # the folder the store unzips into


def test_a_fit_read_back_from_zarr_gives_every_tool_the_originals_numbers(tmp_path):
    """Guard: the record of a fit (.uns, .obsm, .varm) written to a zarr 3 store."""
    fitted = _quiet(tl.nmf, _counts(), K, copy=True, **FIT)
    with ad.settings.override(zarr_write_format=3):
        fitted.write_zarr(tmp_path / "fit.zarr")
    read_back = vbsnmf.io.read(tmp_path / "fit.zarr")
    assert tl.top_genes(read_back).equals(tl.top_genes(fitted))
    new_cells = _counts(seed=2)
    projected = _quiet(tl.project, new_cells, read_back, copy=True)
    expected = _quiet(tl.project, new_cells, fitted, copy=True)
    np.testing.assert_array_equal(projected.obsm["X_nmf"], expected.obsm["X_nmf"])
    resumed = _quiet(tl.nmf, read_back, K, warm_start=True, copy=True, **FIT)
    expected = _quiet(tl.nmf, fitted, K, warm_start=True, copy=True, **FIT)
    np.testing.assert_array_equal(resumed.obsm["X_nmf"], expected.obsm["X_nmf"])
