"""Hostile pass 27, streamed fits (SVI's cells form reading a file a block of cells at a
time).

- D1: a stored X whose 64-bit column index lies beyond int32 (2**32 + j) was cast to int32
  as it was read: the index wrapped to j, a valid gene, and the streamed fit (the API's,
  the command line's, `vbsnmf.tl.nmf` of a backed AnnData) fitted the count there; the
  in-memory readers refuse it as outside the matrix.
- D2: an ``.h5ad`` whose X encoding attributes are stored as bytes (as writers of
  fixed-length strings store them; anndata reads the file, in memory and backed) was
  refused by the streamed fit as "not CSR", and the command line read it whole into memory.
- D3: an ``.h5ad`` or a 10x folder of no cells or no genes was refused by the streamed fit
  as a K out of range ("between 1 and ... = 0"), where a matrix in memory is refused as
  empty.
"""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from test_hostile import _main

import vbsnmf
from vbsnmf.io import read_h5ad_backed

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SVI = dict(solver="svi", n_threads=1, random_state=0, n_epochs=2)
_CLI = ["--epochs", 2, "--threads", 1, "--seed", 0, "--quiet"]


def _counts() -> sp.csr_matrix:
    counts = sp.random(40, 10, density=0.4, random_state=1, format="csr")
    counts.data = np.floor(counts.data * 4) + 2
    return counts


# -- D1: a column index beyond int32 ------------------------------------------------------------
def _wide_index_file(path, position: int = 5):
    """`_counts` as an .h5ad whose stored column index at ``position`` is 2**32 + j
    (int64), j its true gene; the stored index."""
    ad.AnnData(_counts()).write_h5ad(path)
    with h5py.File(path, "r+") as handle:
        indices = handle["X/indices"][...].astype(np.int64)
        indices[position] += 2**32
        del handle["X/indices"]
        handle["X/indices"] = indices
    return int(indices[position])


def test_a_column_index_beyond_int32_is_refused_not_wrapped(tmp_path):
    path = tmp_path / "wide.h5ad"
    stored = _wide_index_file(path)
    with pytest.raises(ValueError, match=f"column index {stored} at stored position 5 is outside"):
        vbsnmf.VBNMF(2, **SVI).fit(path)
    # the in-memory reader's answer, for the same file
    with pytest.raises(ValueError, match=f"column index {stored} at stored position 5"):
        vbsnmf.io.read(path)


def test_a_backed_anndata_with_an_index_beyond_int32_is_refused(tmp_path):
    path = tmp_path / "wide.h5ad"
    stored = _wide_index_file(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(ValueError, match=f"column index {stored}"):
            vbsnmf.tl.nmf(backed, n_components=2, **SVI)
        assert "X_nmf" not in backed.obsm
    finally:
        backed.file.close()


def test_the_index_beyond_int32_on_the_command_line(tmp_path, capfd):
    path = tmp_path / "wide.h5ad"
    stored = _wide_index_file(path)
    outdir = tmp_path / "out"
    argv = ["fit", path, "-k", 2, "--solver", "svi", "-o", outdir, *_CLI]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 2 and err.strip().count("\n") == 0, err
    assert f"column index {stored}" in err
    assert not outdir.exists()


def test_every_source_reads_the_stored_indices():
    """Guard: indices of either width read as stored, by each kind of source."""
    from vbsnmf.io._stream import DenseRowsSource, InMemorySource, _float_csr

    counts = _counts()
    for indices in (counts.indices.astype(np.int32), counts.indices.astype(np.int64)):
        block = _float_csr(sp.csr_matrix((counts.data, indices, counts.indptr), counts.shape))
        np.testing.assert_array_equal(block.toarray(), counts.toarray())
    rows = np.array([0, 3, 4, 39])
    for source in (InMemorySource(counts), DenseRowsSource(counts.toarray())):
        np.testing.assert_array_equal(source.read_rows(rows).toarray(), counts[rows].toarray())


# -- D2: X's encoding stored as bytes -------------------------------------------------------------
def _bytes_encoded(path):
    """`_counts` as an .h5ad whose X encoding attributes are fixed-length bytes."""
    ad.AnnData(_counts()).write_h5ad(path)
    with h5py.File(path, "r+") as handle:
        for key, value in (("encoding-type", "csr_matrix"), ("encoding-version", "0.1.0")):
            handle["X"].attrs.create(key, np.bytes_(value))
    return path


def test_an_x_whose_encoding_is_bytes_streams_as_its_counts(tmp_path):
    path = _bytes_encoded(tmp_path / "bytes.h5ad")
    assert isinstance(h5py.File(path, "r")["X"].attrs["encoding-type"], bytes)
    expected = vbsnmf.VBNMF(2, **SVI).fit(_counts())
    fitted = vbsnmf.VBNMF(2, **SVI).fit(path)
    np.testing.assert_array_equal(fitted.components_, expected.components_)
    backed = read_h5ad_backed(path)  # what the command line's --solver svi streams
    assert backed is not None and backed.isbacked
    backed.file.close()


def test_an_x_whose_encoding_is_bytes_streams_on_the_command_line(tmp_path, capfd, monkeypatch):
    from vbsnmf.io import _read

    def read_whole(path):
        raise AssertionError(f"{path} read whole into memory, not streamed")

    monkeypatch.setattr(_read, "read_h5ad", read_whole)
    path = _bytes_encoded(tmp_path / "bytes.h5ad")
    outdir = tmp_path / "out"
    argv = ["fit", path, "-k", 2, "--solver", "svi", "-o", outdir, *_CLI]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 0, err
    fitted = ad.read_h5ad(outdir / "result.h5ad")
    expected = vbsnmf.VBNMF(2, **SVI).fit(_counts())
    np.testing.assert_allclose(fitted.varm["NMF"], expected.components_.T, rtol=1e-12)


# -- D3: an empty file ---------------------------------------------------------------------------
def _empty_10x(folder):
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", sp.coo_matrix((5, 0), dtype=np.int64))
    (folder / "genes.tsv").write_text("".join(f"G{j}\tg{j}\n" for j in range(5)))
    (folder / "barcodes.tsv").write_text("")
    return folder


@pytest.mark.parametrize(
    "make, axis",
    [
        (lambda p: ad.AnnData(sp.csr_matrix((0, 10))).write_h5ad(p / "x.h5ad"), "sample"),
        (lambda p: ad.AnnData(np.zeros((12, 0))).write_h5ad(p / "x.h5ad"), "feature"),
        (lambda p: _empty_10x(p / "x.h5ad"), "sample"),  # a folder: a 10x folder
    ],
    ids=["no_cells", "no_genes_dense", "empty_10x_folder"],
)
def test_an_empty_streamed_input_is_refused_as_empty_not_as_k(tmp_path, make, axis):
    make(tmp_path)
    with pytest.raises(ValueError, match=f"has 0 {axis}\\(s\\)") as refused:
        vbsnmf.VBNMF(2, **SVI).fit(tmp_path / "x.h5ad")
    assert "n_components" not in str(refused.value)
    assert str(tmp_path / "x.h5ad") in str(refused.value)


# -- D4: the cells form's memory guard ------------------------------------------------------------
def _cells_file(path, n_cells: int = 600, n_genes: int = 20):
    counts = sp.random(n_cells, n_genes, density=0.2, random_state=2, format="csr")
    counts.data = np.floor(counts.data * 4) + 1
    ad.AnnData(counts).write_h5ad(path)
    return counts


@pytest.mark.parametrize("prior, n_arrays", [("hierarchical", 4), ("gamma", 2)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_cells_form_is_refused_when_its_factors_exceed_memory(
    tmp_path, monkeypatch, prior, n_arrays, dtype
):
    """Every cell's q(z) is held however few cells a step reads: the streamed fit read the
    whole file, then met the OOM killer with no message."""
    from vbsnmf import _estimator, _memory

    monkeypatch.delenv("VBSNMF_NO_MEMORY_GUARD", raising=False)
    path = tmp_path / "cells.h5ad"
    counts = _cells_file(path)
    needed = (600 + 20) * 5 * n_arrays * np.dtype(dtype).itemsize
    monkeypatch.setattr(_memory, "available_memory", lambda: needed - 1)
    scanned = []
    monkeypatch.setattr(_estimator, "scan_blocks", lambda *a, **k: scanned.append(1))
    settings = dict(SVI, prior=prior, dtype=dtype, n_epochs=1)
    for X in (path, counts):  # streamed, and in memory
        with pytest.raises(_memory.InsufficientMemoryError, match="600 cells x 20 genes with K=5"):
            vbsnmf.VBNMF(5, **settings).fit(X)
    assert not scanned  # refused before the pass over the file
    monkeypatch.undo()
    monkeypatch.setattr(_memory, "available_memory", lambda: needed)
    assert vbsnmf.VBNMF(5, **settings).fit(path).components_.shape == (5, 20)


def test_the_cells_form_guard_is_turned_off_as_the_batch_guard_is(tmp_path, monkeypatch):
    from vbsnmf import _memory

    path = tmp_path / "cells.h5ad"
    _cells_file(path)
    monkeypatch.setattr(_memory, "available_memory", lambda: 1024)
    monkeypatch.setenv("VBSNMF_NO_MEMORY_GUARD", "1")
    assert vbsnmf.VBNMF(5, **SVI).fit(path).components_.shape == (5, 20)
    monkeypatch.delenv("VBSNMF_NO_MEMORY_GUARD")
    with pytest.raises(ValueError, match="n_components=30 is out of range"):  # K's own error
        vbsnmf.VBNMF(30, **SVI).fit(path)


def test_the_cells_form_guard_on_the_command_line(tmp_path, capfd, monkeypatch):
    from vbsnmf import _memory

    path = tmp_path / "cells.h5ad"
    _cells_file(path)
    monkeypatch.delenv("VBSNMF_NO_MEMORY_GUARD", raising=False)
    monkeypatch.setattr(_memory, "available_memory", lambda: 1024)
    outdir = tmp_path / "out"
    code, _, err, _ = _main(
        ["fit", path, "-k", 5, "--solver", "svi", "-o", outdir, *_CLI], capfd, tmp_path
    )
    assert code == 2 and err.strip().count("\n") == 0, err
    assert "holds every cell's factors" in err and not outdir.exists()


# -- D5: the stored group of a sparse X passed as X -----------------------------------------------
@pytest.mark.parametrize("store", ["h5py", "zarr"])
def test_a_stored_sparse_group_is_named_not_told_to_reshape(tmp_path, store):
    import zarr
    from anndata.io import sparse_dataset

    counts = _counts()
    if store == "h5py":
        ad.AnnData(counts).write_h5ad(tmp_path / "c.h5ad")
        group = h5py.File(tmp_path / "c.h5ad", "r")["X"]
    else:
        ad.AnnData(counts).write_zarr(tmp_path / "c.zarr")
        group = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")["X"]
    for call in (vbsnmf.VBNMF(2, **SVI).fit, vbsnmf.VBNMF(2, solver="batch").fit):
        with pytest.raises(TypeError, match="sparse matrix stored in a file") as refused:
            call(group)
        assert "Reshape" not in str(refused.value)
    # the advice works: the group's sparse_dataset streams as the file does
    fitted = vbsnmf.VBNMF(2, **SVI).fit(sparse_dataset(group))
    expected = vbsnmf.VBNMF(2, **SVI).fit(counts)
    np.testing.assert_array_equal(fitted.components_, expected.components_)


def test_the_cells_form_guard_runs_before_the_command_line_converts(tmp_path, capfd, monkeypatch):
    """A 10x folder is converted (minutes for an atlas) before the fit: the guard runs on
    the cells and genes its matrix declares, and nothing is converted."""
    from vbsnmf import _memory
    from vbsnmf.io import _convert

    folder = tmp_path / "tenx"
    folder.mkdir()
    counts = _counts().astype(np.int64)
    scipy.io.mmwrite(folder / "matrix.mtx", sp.csc_matrix(counts.T))
    (folder / "barcodes.tsv").write_text("".join(f"C{i}\n" for i in range(40)))
    (folder / "genes.tsv").write_text("".join(f"G{j}\tg{j}\n" for j in range(10)))
    monkeypatch.delenv("VBSNMF_NO_MEMORY_GUARD", raising=False)
    monkeypatch.setattr(_memory, "available_memory", lambda: (40 + 10) * 2 * 4 * 8 - 1)
    converted = []
    monkeypatch.setattr(_convert, "_write", lambda *a, **k: converted.append(1))
    outdir = tmp_path / "out"
    argv = ["fit", folder, "-k", 2, "--solver", "svi", "-o", outdir, *_CLI]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 2 and "40 cells x 10 genes with K=2" in err, err
    assert not converted and not outdir.exists()
