"""AnnData files and stores the readers passed on unfit for the fit (sixteenth hostile
pass, readers).

- D1: a ``.zarr`` store missing a chunk of a layer or of raw's X (a partial copy) read
  those counts as zeros, and ``--layer`` / ``--use-raw`` fitted them without a word: only
  X's chunks were checked. A missing chunk of raw's gene names read as ''.
- D2: a dense X of float16 or big-endian values (anndata stores them as they came; the
  in-memory fit reads both) fitted with ``solver='svi'`` from its path, store or backed
  AnnData raised scipy's "scipy.sparse does not support dtype float16".
- D3: an ``.h5ad`` whose sparse matrix stores ``indptr`` as uint64 (BPCells wrote such
  files; anndata reads them as stored): every in-memory fit of `vbsnmf.io.read`'s AnnData
  failed with scipy's "unsupported data types in input", told as "NMF needs raw counts",
  or numpy's "Cannot cast array data from dtype('uint64')".
- D4 (from the helper's "left" list, fixed after): an ``.h5ad`` still gzip-compressed (a
  download kept packed, named ``.h5ad`` or ``.h5ad.gz``) was "not a readable HDF5 file
  (... file signature not found)" or an "unrecognised input".
"""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import zarr
from test_hostile import FIT, _main

import vbsnmf
from vbsnmf.io import ReadError, read

N_CELLS, N_GENES = 400, 30
# the fits here are short on purpose: what matters is that they run, and on which counts
pytestmark = pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")


def _counts(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(2.0, (N_CELLS, N_GENES))


def _anndata(X) -> ad.AnnData:
    return ad.AnnData(
        X,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(X.shape[0])]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(X.shape[1])]),
    )


# -- D1: chunks missing from a layer or .raw of a zarr store ----------------------------------
def _store_with_counts_in_layer_and_raw(path: Path) -> Path:
    """A zarr store of log counts in X, the counts in layers['counts'] and raw's X, whose
    ``data`` arrays are cut into chunks of 500 entries (anndata writes one chunk here)."""
    counts = _counts().astype(np.float32)
    adata = _anndata(sp.csr_matrix(np.log1p(counts)))
    adata.layers["counts"] = sp.csr_matrix(counts)
    adata.raw = _anndata(sp.csr_matrix(counts))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_zarr(path)
        for element in ("layers/counts", "raw/X"):
            group = zarr.open_group(path / element, mode="a")
            values, attrs = group["data"][...], dict(group["data"].attrs)
            del group["data"]
            rechunked = group.create_array(
                "data", shape=values.shape, dtype=values.dtype, chunks=(500,)
            )
            rechunked[...] = values
            rechunked.attrs.update(attrs)
        zarr.consolidate_metadata(path)
    return path


@pytest.mark.parametrize("element", ["layers/counts", "raw/X"])
def test_a_zarr_store_missing_a_chunk_of_a_layer_or_raw_is_refused(tmp_path, element):
    """anndata reads the lost entries as zeros: the fit of --layer or --use-raw ran on them."""
    store = _store_with_counts_in_layer_and_raw(tmp_path / "in.zarr")
    (store / element / "data" / "3").unlink()
    with pytest.raises(ReadError, match=rf"chunk {element}/data/3 .* is missing from the store"):
        read(store)


def test_a_complete_zarr_store_with_layer_and_raw_reads_as_anndata_reads_it(tmp_path):
    """The checks of the layers and .raw leave a whole store as it is (also passes on the
    code before the fix: a guard against refusing sound stores)."""
    store = _store_with_counts_in_layer_and_raw(tmp_path / "in.zarr")
    adata = read(store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ad.read_zarr(store)
    assert (adata.layers["counts"] != expected.layers["counts"]).nnz == 0
    assert (adata.raw.X != expected.raw.X).nnz == 0
    assert np.array_equal(adata.layers["counts"].toarray(), _counts())


def test_a_zarr_store_missing_a_chunk_of_raw_gene_names_is_refused(tmp_path, capfd):
    """They read as '': the refusal blamed "adata.raw's gene names repeat", or with a
    chunk of one name, --use-raw wrote a loading of a gene without its name."""
    store = _store_with_counts_in_layer_and_raw(tmp_path / "in.zarr")
    (store / "raw" / "var" / "_index" / "0").unlink()
    with pytest.raises(ReadError, match=r"chunk raw/var/_index/0 .*genes of \.raw 0 to 29"):
        read(store)
    code, out, err, _ = _main(["fit", "in.zarr", *FIT, "--use-raw", "-o", "out"], capfd, tmp_path)
    assert (code, out) == (2, "")
    assert "raw/var/_index/0" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# -- D2: a dense X of float16 or big-endian values, streamed ----------------------------------
def _dense_files(tmp_path: Path) -> dict:
    counts = _counts()[:60]
    adata = _anndata(counts.astype(np.float16))
    paths = {"float16 h5ad": tmp_path / "f16.h5ad", "float16 zarr": tmp_path / "f16.zarr"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_h5ad(paths["float16 h5ad"])
        adata.write_zarr(paths["float16 zarr"])
    paths["big-endian h5ad"] = tmp_path / "big_endian.h5ad"  # as R's HDF5 writers may store it
    adata.write_h5ad(paths["big-endian h5ad"])
    with h5py.File(paths["big-endian h5ad"], "r+") as handle:
        del handle["X"]
        handle.create_dataset("X", data=counts.astype(">f8"))
    return counts, paths


SVI_SETTINGS = dict(
    solver="svi", max_iter=5, n_epochs=2, batch_size=16, random_state=0, n_threads=1
)


@pytest.mark.parametrize("kind", ["float16 h5ad", "float16 zarr", "big-endian h5ad", "backed"])
def test_a_dense_float16_or_big_endian_x_streams_as_it_fits_in_memory(tmp_path, kind):
    counts, paths = _dense_files(tmp_path)
    if kind == "backed":
        source = ad.read_h5ad(paths["float16 h5ad"], backed="r")
    else:
        source = paths[kind]
    streamed = vbsnmf.VBNMF(3, **SVI_SETTINGS).fit(source)
    in_memory = vbsnmf.VBNMF(3, **SVI_SETTINGS).fit(sp.csr_matrix(counts.astype(np.float64)))
    np.testing.assert_allclose(streamed.components_, in_memory.components_, rtol=1e-6)


# -- D3: index arrays stored unsigned ---------------------------------------------------------
def _unsigned_indptr_file(path: Path, dtype, elements=("X",)) -> Path:
    """An .h5ad of `_counts` in ``dtype`` whose ``elements`` store indptr as uint64 and
    indices as uint32."""
    adata = _anndata(sp.csr_matrix(_counts().astype(dtype)))
    adata.layers["counts"] = adata.X.copy()
    adata.raw = adata.copy()
    adata.write_h5ad(path)
    with h5py.File(path, "r+") as handle:
        for element in elements:
            for name, unsigned in (("indptr", np.uint64), ("indices", np.uint32)):
                values = handle[f"{element}/{name}"][...]
                del handle[f"{element}/{name}"]
                handle[f"{element}/{name}"] = values.astype(unsigned)
    return path


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_unsigned_index_arrays_are_read_and_fitted(tmp_path, dtype):
    path = _unsigned_indptr_file(tmp_path / "in.h5ad", dtype)
    adata = read(path)
    assert adata.X.indptr.dtype.kind == "i" and adata.X.indices.dtype.kind == "i"
    assert np.array_equal(adata.X.toarray(), _counts())  # the counts anndata reads
    settings = dict(max_iter=20, random_state=0, n_threads=1)
    vbsnmf.tl.nmf(adata, 3, **settings)
    expected = vbsnmf.VBNMF(3, **settings).fit(sp.csr_matrix(_counts().astype(np.float64)))
    np.testing.assert_allclose(adata.varm["NMF"], expected.components_.T, rtol=1e-4)


@pytest.mark.parametrize("option", [[], ["--layer", "counts"], ["--use-raw"]])
def test_the_command_line_fits_unsigned_index_arrays_of_x_a_layer_or_raw(tmp_path, capfd, option):
    elements = ("X", "layers/counts", "raw/X")
    _unsigned_indptr_file(tmp_path / "in.h5ad", np.uint16, elements)
    code, _, err, _ = _main(["fit", "in.h5ad", *FIT, *option, "-o", "out"], capfd, tmp_path)
    assert (code, err) == (0, ""), err
    assert (tmp_path / "out" / "result.h5ad").is_file()


@pytest.mark.parametrize("opened_by", ["anndata", "read_h5ad_backed"])
def test_tl_nmf_fits_unsigned_index_arrays_of_an_anndata_not_read_by_vbsnmf(tmp_path, opened_by):
    """The fit's own check makes them signed: anndata's reader and a backed file (read
    into memory by the batch fit) give them as stored."""
    path = _unsigned_indptr_file(tmp_path / "in.h5ad", np.float32)
    if opened_by == "anndata":
        adata = ad.read_h5ad(path)
    else:
        adata = vbsnmf.io.read_h5ad_backed(path)
    settings = dict(max_iter=20, random_state=0, n_threads=1)
    vbsnmf.tl.nmf(adata, 3, **settings)
    expected = vbsnmf.VBNMF(3, **settings).fit(sp.csr_matrix(_counts().astype(np.float64)))
    np.testing.assert_allclose(adata.varm["NMF"], expected.components_.T, rtol=1e-4)


def test_a_coo_matrix_of_unsigned_coordinates_fits_as_its_signed_copy():
    counts = sp.coo_matrix(_counts()[:50].astype(np.uint16))
    unsigned = sp.coo_matrix(
        (counts.data, (counts.row.astype(np.uint32), counts.col.astype(np.uint64))),
        shape=counts.shape,
    )
    settings = dict(max_iter=20, random_state=0, n_threads=1)
    fitted = vbsnmf.VBNMF(3, **settings).fit(unsigned)
    expected = vbsnmf.VBNMF(3, **settings).fit(counts)
    np.testing.assert_array_equal(fitted.components_, expected.components_)


@pytest.mark.parametrize("name", ["packed.h5ad", "packed.h5ad.gz"])
def test_a_gzip_compressed_h5ad_is_named_as_such(tmp_path, capfd, name):
    plain = tmp_path / "plain.h5ad"
    ad.AnnData(np.ones((3, 2), dtype=np.float32)).write_h5ad(plain)
    packed = tmp_path / name
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(ReadError, match=r"is gzip-compressed.*gunzip -c FILE > counts\.h5ad"):
        read(packed)
    code, _, err, _ = _main(["fit", packed, *FIT, "-o", tmp_path / "out"], capfd, tmp_path)
    assert code == 2 and "is gzip-compressed" in err and err.count("\n") == 1, err
    # what the advice gives reads
    (tmp_path / "counts.h5ad").write_bytes(gzip.decompress(packed.read_bytes()))
    assert read(tmp_path / "counts.h5ad").shape == (3, 2)
