"""Input files the readers read silently wrong (twentieth hostile pass, readers).

- D1: a Cell Ranger ``.h5`` whose ``indices`` or ``indptr`` are stored as floats (a
  damaged or hand-made file) was read with them truncated to integers by scanpy's matrix
  (a count stored at gene 1.9 read at gene 1), and fitted without a word; the ``.h5ad``
  reader and the streamed route refuse such arrays.
- D2: an AnnData file named ``.h5`` whose encoding attribute is stored as bytes (as
  writers of fixed-length strings store it), or one of anndata before 0.7 (no encoding),
  was taken for a Cell Ranger ``.h5`` and refused as "not a Cell Ranger feature-barcode
  .h5", though anndata reads it and vbsnmf read the same file named ``.h5ad``.
"""

from __future__ import annotations

import warnings

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from test_hostile import FIT, _main

from vbsnmf.io import ReadError, read

# 3 genes x 2 cells, as Cell Ranger stores them (CSC of genes x cells): cell 0 has 3
# counts of gene 0, cell 1 has 5 counts of gene 1
_DATA = np.array([3, 5], dtype=np.int32)
_INDICES = np.array([0, 1])
_INDPTR = np.array([0, 1, 2])
_COUNTS = np.array([[3.0, 0.0, 0.0], [0.0, 5.0, 0.0]])  # cells x genes


def _write_10x_h5(path, *, indices=_INDICES, indptr=_INDPTR, version=3):
    """A Cell Ranger ``.h5`` of `_COUNTS` (version 3: a ``matrix`` group with features;
    version 2: a genome's group with genes and gene_names)."""
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix" if version == 3 else "GRCh38")
        group["data"] = _DATA
        group["indices"] = indices
        group["indptr"] = indptr
        group["shape"] = np.array([3, 2], dtype=np.int32)
        group["barcodes"] = np.array([b"c0", b"c1"])
        ids, names = np.array([b"G0", b"G1", b"G2"]), np.array([b"g0", b"g1", b"g2"])
        if version == 2:
            group["genes"], group["gene_names"] = ids, names
            return path
        features = group.create_group("features")
        features["id"], features["name"] = ids, names
        features["feature_type"] = np.array([b"Gene Expression"] * 3)
    return path


@pytest.mark.parametrize("version", [2, 3])
def test_the_undamaged_cell_ranger_h5_reads_its_counts(tmp_path, version):
    """The control: the file the tests below damage reads as its counts."""
    adata = read(_write_10x_h5(tmp_path / "counts.h5", version=version))
    np.testing.assert_array_equal(adata.X.toarray(), _COUNTS)
    assert list(adata.var_names) == ["g0", "g1", "g2"]


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize(
    "damaged",
    [
        {"indices": np.array([0.0, 1.9])},  # read as gene 1
        {"indices": np.array([0.0, 0.7])},  # read as gene 0
        {"indptr": np.array([0.0, 1.5, 2.0])},  # read as cell 0 ending at 1
    ],
    ids=["indices_1.9", "indices_0.7", "indptr"],
)
def test_float_index_arrays_of_a_cell_ranger_h5_are_refused_not_truncated(
    tmp_path, version, damaged
):
    path = _write_10x_h5(tmp_path / "counts.h5", version=version, **damaged)
    with pytest.raises(ReadError, match="index arrays must be 1-D integers") as caught:
        read(path)
    assert caught.value.path == path


def test_float_index_arrays_of_a_cell_ranger_h5_on_the_command_line(tmp_path, capfd):
    path = _write_10x_h5(tmp_path / "counts.h5", indices=np.array([0.0, 1.9]))
    before = path.read_bytes()
    code, _, err, _ = _main(["fit", path, "-o", tmp_path / "out", *FIT], capfd, tmp_path)
    assert code == 2
    assert err.splitlines() == [err.strip()] and "index arrays must be 1-D integers" in err
    assert not (tmp_path / "out").exists()
    assert path.read_bytes() == before


# -- D2: an AnnData named .h5 that does not say so in a str ----------------------------------
_ANNDATA_COUNTS = sp.csr_matrix(np.random.default_rng(0).poisson(1.0, (20, 6)).astype(np.float32))


def _anndata_h5_with_bytes_encoding(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ad.AnnData(_ANNDATA_COUNTS).write_h5ad(path)
    with h5py.File(path, "a") as handle:
        handle.attrs.create("encoding-type", np.bytes_(b"anndata"))
    return path


def _anndata_h5_of_old_layout(path):
    """An AnnData as anndata wrote it before 0.7: no encoding attributes, X a group with
    h5sparse attributes, obs and var compound datasets."""
    with h5py.File(path, "w") as handle:
        group = handle.create_group("X")
        group.attrs["h5sparse_format"] = "csr"
        group.attrs["h5sparse_shape"] = _ANNDATA_COUNTS.shape
        for name in ("data", "indices", "indptr"):
            group[name] = getattr(_ANNDATA_COUNTS, name)
        n_cells, n_genes = _ANNDATA_COUNTS.shape
        handle["obs"] = np.array([(f"c{i}".encode(),) for i in range(n_cells)], [("index", "S3")])
        handle["var"] = np.array([(f"g{j}".encode(),) for j in range(n_genes)], [("index", "S3")])
    return path


@pytest.mark.parametrize("write", [_anndata_h5_with_bytes_encoding, _anndata_h5_of_old_layout])
def test_an_anndata_named_h5_is_read_as_anndata_reads_it(tmp_path, write):
    path = write(tmp_path / "counts.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ad.read_h5ad(path)
    adata = read(path)
    assert (sp.csr_matrix(adata.X) != _ANNDATA_COUNTS).nnz == 0
    assert list(adata.obs_names) == list(expected.obs_names)
    assert list(adata.var_names) == list(expected.var_names)


def test_an_anndata_named_h5_with_bytes_encoding_fits_on_the_command_line(tmp_path, capfd):
    path = _anndata_h5_with_bytes_encoding(tmp_path / "counts.h5")
    code, _, err, _ = _main(["fit", path, "-o", tmp_path / "out", *FIT], capfd, tmp_path)
    assert code == 0, err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ad.read_h5ad(tmp_path / "out" / "result.h5ad")
    assert result.obsm["X_nmf"].shape == (20, 2)
