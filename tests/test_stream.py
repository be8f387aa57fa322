"""Streaming from disk: `vbsnmf.io.mtx_to_h5ad` and the stored-CSR source (anndata's
`sparse_dataset`)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

import vbsnmf
from vbsnmf.io import ReadError, mtx_to_h5ad
from vbsnmf.io._stream import StoredRowsSource, open_source

TINY_10X = vbsnmf.datasets.data_dir("pbmc_tiny_v3")


def _same_anndata(converted: ad.AnnData, expected: ad.AnnData) -> None:
    assert converted.shape == expected.shape
    assert (sp.csr_matrix(converted.X) != sp.csr_matrix(expected.X)).nnz == 0
    pd.testing.assert_index_equal(converted.obs_names, expected.obs_names)
    pd.testing.assert_index_equal(converted.var_names, expected.var_names)


def test_a_10x_folder_converts_to_what_the_reader_reads(tmp_path):
    converted = mtx_to_h5ad(TINY_10X, tmp_path / "tiny.h5ad")
    assert converted == tmp_path / "tiny.h5ad"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.h5ad"]  # no temporary left
    adata = vbsnmf.io.read_h5ad(converted)
    expected = vbsnmf.io.read_10x(TINY_10X)
    _same_anndata(adata, expected)
    assert adata.X.dtype == np.float64  # exact for any count
    np.testing.assert_array_equal(adata.var["gene_ids"], expected.var["gene_ids"])


def test_an_mtx_converts_in_either_orientation_with_names(tmp_path):
    counts = sp.csr_matrix(vbsnmf.datasets.pbmc_tiny().X)
    cells_by_genes = tmp_path / "cells.mtx"
    # rows are cells here: entries sorted by row
    coo = counts.tocoo()
    order = np.lexsort((coo.col, coo.row))
    sorted_coo = sp.coo_matrix((coo.data[order], (coo.row[order], coo.col[order])), coo.shape)
    scipy.io.mmwrite(cells_by_genes, sorted_coo, field="integer")
    names = tmp_path / "genes.txt"
    names.write_text("".join(f"gene{i}\n" for i in range(counts.shape[1])))
    dst = mtx_to_h5ad(cells_by_genes, tmp_path / "c.h5ad", genes_as_rows=False, col_names=names)
    adata = ad.read_h5ad(dst)
    assert (sp.csr_matrix(adata.X) != counts).nnz == 0
    assert list(adata.var_names[:2]) == ["gene0", "gene1"]
    assert list(adata.obs_names[:2]) == ["0", "1"]


def test_name_files_give_the_names_read_mtx_gives(tmp_path):
    """A features file passed as a name file names genes by its first field, as read_mtx
    does (only a 10x folder names them by symbol, as scanpy does)."""
    names = {"row_names": TINY_10X / "features.tsv.gz", "col_names": TINY_10X / "barcodes.tsv.gz"}
    matrix = TINY_10X / "matrix.mtx.gz"
    converted = ad.read_h5ad(mtx_to_h5ad(matrix, tmp_path / "m.h5ad", **names))
    _same_anndata(converted, vbsnmf.io.read_mtx(matrix, genes_as_rows=True, **names))


def test_only_gene_expression_features_are_kept_as_the_reader_keeps_them(tmp_path):
    rng = np.random.default_rng(0)
    genes_by_cells = sp.random(6, 5, density=0.5, random_state=rng, format="csc") * 10
    genes_by_cells.data = np.ceil(genes_by_cells.data)
    folder = tmp_path / "tenx"
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as handle:
        scipy.io.mmwrite(handle, genes_by_cells, field="integer")
    kinds = ["Gene Expression"] * 4 + ["Antibody Capture"] * 2
    features = "".join(f"ENSG{i}\tG{i}\t{kind}\n" for i, kind in enumerate(kinds))
    (folder / "features.tsv.gz").write_bytes(gzip.compress(features.encode()))
    (folder / "barcodes.tsv.gz").write_bytes(
        gzip.compress(b"".join(b"c%d\n" % i for i in range(5)))
    )
    adata = ad.read_h5ad(mtx_to_h5ad(folder, tmp_path / "t.h5ad"))
    expected = vbsnmf.io.read_10x(folder)
    assert expected.n_vars == 4
    _same_anndata(adata, expected)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("3 2 3\n1 2 4\n2 1 1\n3 2 1\n", "not sorted by cell"),
        ("3 2 3\n1 1 4\n2 1 1\n", "hold 6 numbers where the size line implies 9"),
        ("3 2 2\n1 1 4\n2 1 1\n3 2 1\n", "hold 9 numbers where the size line implies 6"),
        ("3 2 3\n1 1 4\n2 1 1\n4 2 1\n", "gene index is outside"),
    ],
)
def test_a_bad_mtx_leaves_nothing_behind(tmp_path, body, message):
    source = tmp_path / "in" / "bad.mtx"
    source.parent.mkdir()
    source.write_text("%%MatrixMarket matrix coordinate integer general\n" + body)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ReadError, match=message):
        mtx_to_h5ad(source, out / "bad.h5ad")
    assert list(out.iterdir()) == []


_BANNER = "%%MatrixMarket matrix coordinate integer general\n"


def _tiny_mtx(folder: Path) -> Path:
    path = folder / "m.mtx"
    path.write_text(f"{_BANNER}3 2 3\n1 1 5\n2 2 3\n3 1 1\n")
    return path


@pytest.mark.parametrize(
    "target",
    ["m.mtx", "link.mtx", "hard.mtx", "genes.txt", "tenx/matrix.mtx.gz", "tenx/features.tsv.gz"],
)
def test_conversion_never_overwrites_what_it_reads(tmp_path, target):
    """dst naming the input, a link or hard link to it, a name file or a file of the 10x
    folder is refused before anything is written (the converter replaced them with HDF5)."""
    source = _tiny_mtx(tmp_path)
    (tmp_path / "link.mtx").symlink_to(source)
    (tmp_path / "hard.mtx").hardlink_to(source)
    (tmp_path / "genes.txt").write_text("a\nb\n")
    shutil.copytree(TINY_10X, tmp_path / "tenx")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    if target.startswith("tenx"):
        call = {"src": tmp_path / "tenx"}
    else:
        call = {"src": source, "genes_as_rows": False, "col_names": tmp_path / "genes.txt"}
    with pytest.raises(vbsnmf.io.UnsafePathError, match="choose a path outside"):
        mtx_to_h5ad(dst=tmp_path / target, **call)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1 1 5\n2 2 2.5\n3 1 1\n", "line 4 holds '2.5', not an integer"),
        ("1 1 5\n2 2 1e3\n3 1 1\n", "line 4 holds '1e3', not an integer"),
        ("1 1 5 1\n2 2 3 1\n3 1 1 1\n", "hold 12 numbers where the size line implies 9"),
        ("1 1\n2 2\n3 1\n", "hold 6 numbers where the size line implies 9"),
    ],
)
def test_conversion_refuses_what_read_mtx_refuses(tmp_path, body, message):
    """Values an integer field cannot hold and lines with the wrong number of fields: the
    converter stored 2.5 and NaN, or blamed an index that pandas had shifted."""
    source = tmp_path / "m.mtx"
    source.write_text(f"{_BANNER}3 2 3\n{body}")
    with pytest.raises(ReadError) as read:
        vbsnmf.io.read_mtx(source, genes_as_rows=False)
    with pytest.raises(ReadError, match=message) as converted:
        mtx_to_h5ad(source, tmp_path / "m.h5ad", genes_as_rows=False)
    if "hold 6" not in message:  # scipy's parser reports missing fields in its own words
        assert str(converted.value) == str(read.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mtx"]


def test_conversion_sums_repeated_entries_as_read_mtx_does(tmp_path):
    source = tmp_path / "m.mtx"
    source.write_text(f"{_BANNER}3 2 5\n1 1 5\n1 1 2\n2 2 3\n3 1 1\n3 1 4\n")
    converted = ad.read_h5ad(mtx_to_h5ad(source, tmp_path / "m.h5ad", genes_as_rows=False))
    read = vbsnmf.io.read_mtx(source, genes_as_rows=False)
    assert converted.X.nnz == read.X.nnz == 3
    np.testing.assert_array_equal(converted.X.toarray(), read.X.toarray())


def test_stored_rows_are_anndata_sparse_dataset_rows(tmp_path):
    """The source reads through anndata: the rows asked for, float64, in h5ad and zarr."""
    tiny = vbsnmf.datasets.pbmc_tiny()
    X = sp.csr_matrix(tiny.X)
    tiny.write_h5ad(tmp_path / "t.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata: zarr v2 is still its default
        tiny.write_zarr(tmp_path / "t.zarr")
    rows = np.sort(np.random.default_rng(1).choice(X.shape[0], 50, replace=False))
    for path in (tmp_path / "t.h5ad", tmp_path / "t.zarr"):
        source = open_source(path)
        assert isinstance(source, StoredRowsSource)
        assert source.shape == X.shape and source.nnz == X.nnz
        block = source.read_rows(rows)
        assert block.dtype == np.float64
        assert (block != X[rows]).nnz == 0
        blocks = sp.vstack([b for _, b in source.iter_blocks(300)])
        assert (blocks.tocsr() != X).nnz == 0


def _svi_fit(path):
    return vbsnmf.VBNMF(2, solver="svi", n_epochs=1, n_threads=1).fit(path)


@pytest.mark.parametrize("load", [vbsnmf.io.read, _svi_fit])
def test_a_zarr_store_missing_a_chunk_is_refused(tmp_path, load):
    """zarr reads a missing chunk as zeros: all counts moved to gene 0, fitted as valid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata: zarr v2 is still its default
        vbsnmf.datasets.pbmc_tiny().write_zarr(tmp_path / "t.zarr")
        # a chunk of zeros that zarr did not write: one gene, so no cell holds it twice
        one_gene = sp.csr_matrix((np.arange(1.0, 6.0), np.zeros(5, int), np.arange(6)))
        ad.AnnData(one_gene).write_zarr(tmp_path / "one.zarr")
    (tmp_path / "t.zarr" / "X" / "indices" / "0").unlink()
    with pytest.raises(ReadError, match=r"t.zarr: chunk X/indices/0 .* is missing"):
        load(tmp_path / "t.zarr")
    assert not (tmp_path / "one.zarr" / "X" / "indices" / "0").exists()
    np.testing.assert_array_equal(vbsnmf.io.read(tmp_path / "one.zarr").X.data, [1, 2, 3, 4, 5])


def test_a_zarr_store_of_leading_empty_cells_reads_and_a_lost_prefix_does_not(tmp_path):
    """zarr 3 writes no chunk of zeros: leading cells without counts (and an X without any
    count) leave indptr's first chunks unwritten; a lost first chunk of a store whose cells
    all have counts would read as one cell holding them all."""
    n_cells = 120_000  # more than anndata's indptr chunk
    leading = sp.lil_matrix((n_cells, 10), dtype=np.float32)
    leading[n_cells - 50 :, :] = np.random.default_rng(0).poisson(2, size=(50, 10))
    leading = leading.tocsr()
    leading.eliminate_zeros()
    lost = sp.random(n_cells, 10, density=0.3, format="csr", random_state=0, dtype=np.float32)
    lost.data[:] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata: zarr v2 is still its default
        ad.AnnData(leading).write_zarr(tmp_path / "leading.zarr")
        ad.AnnData(sp.csr_matrix((50, 10), dtype=np.float32)).write_zarr(tmp_path / "none.zarr")
        ad.AnnData(lost).write_zarr(tmp_path / "lost.zarr")
    assert not (tmp_path / "leading.zarr" / "X" / "indptr" / "0").exists()
    assert (vbsnmf.io.read(tmp_path / "leading.zarr").X != leading).nnz == 0
    assert vbsnmf.io.read(tmp_path / "none.zarr").X.nnz == 0
    (tmp_path / "lost.zarr" / "X" / "indptr" / "0").unlink()
    with pytest.raises(ReadError, match=r"chunk X/indptr/0 .* is missing"):
        vbsnmf.io.read(tmp_path / "lost.zarr")


def _tiny_h5ad(folder: Path, edit=None) -> Path:
    """pbmc_tiny as an .h5ad, its X group edited on disk by ``edit``."""
    path = folder / "t.h5ad"
    vbsnmf.datasets.pbmc_tiny().write_h5ad(path)
    if edit is not None:
        with h5py.File(path, "r+") as handle:
            edit(handle["X"])
    return path


def _values_as(dtype):
    def edit(group):
        values = group["data"][...].astype(dtype)
        del group["data"]
        group["data"] = values

    return edit


def _truncated(folder: Path) -> Path:
    path = _tiny_h5ad(folder)
    path.write_bytes(path.read_bytes()[:50_000])
    return path


def _garbage_chunk(folder: Path) -> Path:
    path = folder / "t.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata: zarr v2 is still its default
        vbsnmf.datasets.pbmc_tiny().write_zarr(path)
    (path / "X" / "data" / "0").write_bytes(bytes(range(256)) * 2)
    return path


def _one_column_features(folder: Path) -> Path:
    path = folder / "tenx"
    shutil.copytree(TINY_10X, path)
    lines = gzip.decompress((path / "features.tsv.gz").read_bytes()).decode().splitlines()
    ids = "".join(line.split("\t")[0] + "\n" for line in lines)
    (path / "features.tsv.gz").write_bytes(gzip.compress(ids.encode()))
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_truncated, "t.h5ad: not a readable HDF5 file"),
        (lambda f: (f / "e.zarr").mkdir() or f / "e.zarr", "e.zarr: not a readable .zarr store"),
        (_garbage_chunk, "t.zarr: .*blosc"),
        (lambda f: _tiny_h5ad(f, _values_as("S8")), "t.h5ad: X: counts must be numbers"),
        (lambda f: _tiny_h5ad(f, _values_as(complex)), "t.h5ad: X must be real counts"),
        (
            lambda f: _tiny_h5ad(f, lambda g: g.attrs.__setitem__("shape", [1107, 5000])),
            "t.h5ad: .*507 rows",
        ),
        (
            lambda f: _tiny_h5ad(f, lambda g: g.attrs.__delitem__("shape")),
            "t.h5ad: X has no 'shape' attribute",
        ),
        (_one_column_features, "features.tsv.gz: has fewer than 3 columns"),
    ],
)
def test_a_damaged_file_streams_into_the_readers_error(tmp_path, make, message):
    """What `vbsnmf.io.read` refuses, a streamed fit refuses with a `ReadError` naming the
    file (it raised h5py's, zarr's, numcodecs' or numba's errors, fitted the complex
    counts' real part, or 5000 genes of which 4493 were not in the file)."""
    path = make(tmp_path)
    with pytest.raises(ReadError):
        vbsnmf.io.read(path)
    with pytest.raises(ReadError, match=message):
        _svi_fit(path)


def _pointers_past_the_entries(group):
    pointers = group["indptr"][...]
    pointers[-1] += 100
    del group["indptr"]
    group["indptr"] = pointers


@pytest.mark.parametrize("part", ["adata", "X"])
def test_a_damaged_backed_anndata_streams_into_an_error_naming_its_file(tmp_path, part):
    """A backed AnnData (what `vbsnmf fit --solver svi` streams an .h5ad from) was named
    "X" in the checks' errors, the file nowhere (a hostile pass, 2026-12-03)."""
    path = _tiny_h5ad(tmp_path, _pointers_past_the_entries)
    message = r"t\.h5ad: X: corrupt CSR matrix: indptr ends at"
    with pytest.raises(ReadError, match=message):
        _svi_fit(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(ReadError, match=message):
            _svi_fit(backed if part == "adata" else backed.X)
    finally:
        backed.file.close()


def test_complex_sparse_counts_in_memory_are_refused_as_dense_ones():
    """The structure check read them with a numba kernel, which failed to compile."""
    with pytest.raises(ValueError, match="X must be real counts: Complex data not supported"):
        vbsnmf.VBNMF(2).fit(sp.csr_matrix(np.ones((4, 3), dtype=complex)))


def test_streaming_a_converted_file_equals_streaming_the_mtx(tmp_path):
    """Converting once and fitting the .h5ad gives the fit of the .mtx, bit for bit."""
    folder = tmp_path / "tenx"
    shutil.copytree(TINY_10X, folder)
    converted = mtx_to_h5ad(folder, tmp_path / "tiny.h5ad")
    params = dict(solver="svi", n_epochs=2, batch_size=300, n_threads=1, random_state=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)  # two epochs, on purpose
        fits = [vbsnmf.VBNMF(3, **params).fit(path) for path in (folder, converted)]
    np.testing.assert_array_equal(fits[0].elbo_trace_, fits[1].elbo_trace_)
    np.testing.assert_array_equal(fits[0].gene_shape_, fits[1].gene_shape_)


# -- the command line streams: its peak memory does not grow with the file ------------------
_PEAK_SCRIPT = """
import sys
from vbsnmf.cli import main

options = ["--genes-as-rows", "-k", "2", "--solver", "svi", "--epochs", "1"]
options += ["--batch-size", "2000", "--threads", "1", "--quiet", "-o", sys.argv[2]]
assert main(["fit", sys.argv[1], *options]) == 0
with open("/proc/self/status") as status:
    print(next(line for line in status if line.startswith("VmHWM")).split()[1])
"""


def _peak_of_fit(path, outdir) -> int:
    """Peak resident memory (bytes) of ``vbsnmf fit PATH --solver svi`` in a fresh process."""
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, path, outdir], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return int(run.stdout.split()[-1]) * 1024


def _cells_of_equal_genes(path, n_cells: int, n_genes: int, per_cell: int):
    """A genes x cells .mtx (10x orientation, sorted by cell), ``per_cell`` genes a cell."""
    cells = np.repeat(np.arange(n_cells), per_cell)
    genes = (cells + 7 * np.tile(np.arange(per_cell), n_cells)) % n_genes  # distinct per cell
    counts = np.random.default_rng(0).integers(1, 5, cells.size).astype(np.float64)
    genes_by_cells = sp.csc_matrix((counts, (genes, cells)), shape=(n_genes, n_cells))
    scipy.io.mmwrite(path, genes_by_cells, field="integer")
    return cells.size


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_cli_svi_peak_memory_does_not_grow_with_the_file(tmp_path):
    """Two files of the same cells and genes, 8x apart in nonzeros. Read into memory, the
    larger needs at least the CSR of its 3.5 million extra nonzeros (12 bytes each, 40 MiB)
    more; streamed, the peak grows by less (measured: 353 -> 365 MB, where
    vbsnmf.io.read's peak went from 284 to 460 MB)."""
    n_cells, n_genes = 100_000, 300
    small_nnz = _cells_of_equal_genes(tmp_path / "small.mtx", n_cells, n_genes, 5)
    large_nnz = _cells_of_equal_genes(tmp_path / "large.mtx", n_cells, n_genes, 40)
    small = _peak_of_fit(tmp_path / "small.mtx", tmp_path / "small")
    large = _peak_of_fit(tmp_path / "large.mtx", tmp_path / "large")
    assert large - small < 12 * (large_nnz - small_nnz), (small, large)
    # the streamed fit's input was converted next to its outputs, once, and fitted
    assert (tmp_path / "large" / "counts.h5ad").is_file()
    result = ad.read_h5ad(tmp_path / "large" / "result.h5ad", backed="r")
    assert result.X.shape == (n_cells, n_genes) and result.obsm["X_nmf"].shape == (n_cells, 2)


def test_a_bad_count_deep_in_a_streamed_matrix_is_placed_in_the_whole_matrix(tmp_path):
    """A NaN and a negative count in the second block of cells that a streamed fit reads:
    the error gives their positions in the whole matrix (as a fit in memory does), not
    within the block, whether `VBNMF` streams the file or `tl.nmf` a backed AnnData."""
    from vbsnmf._svi import EVAL_BLOCK_ROWS
    from vbsnmf.io import read_h5ad_backed

    n_cells = EVAL_BLOCK_ROWS + 600
    counts = sp.random(n_cells, 6, density=0.5, random_state=0, format="csr")
    counts.data = np.ceil(3 * counts.data)
    counts = counts.tolil()
    counts[EVAL_BLOCK_ROWS + 404, 1] = np.nan
    counts[EVAL_BLOCK_ROWS + 504, 2] = -2.0
    path = tmp_path / "counts.h5ad"
    ad.AnnData(sp.csr_matrix(counts)).write_h5ad(path)
    nan_at, negative_at = f"({EVAL_BLOCK_ROWS + 404}, 1)", f"({EVAL_BLOCK_ROWS + 504}, 2)"
    with pytest.raises(ValueError, match="must hold non-negative") as in_memory:
        vbsnmf.VBNMF(2).fit(sp.csr_matrix(counts))
    assert nan_at in str(in_memory.value) and negative_at in str(in_memory.value)
    with pytest.raises(ValueError, match="must hold non-negative") as streamed:
        vbsnmf.VBNMF(2, solver="svi").fit(path)
    assert nan_at in str(streamed.value) and negative_at in str(streamed.value)
    backed = read_h5ad_backed(path)
    try:
        with pytest.raises(ValueError, match="must hold non-negative") as through_tl:
            vbsnmf.tl.nmf(backed, 2, solver="svi")
    finally:
        backed.file.close()
    assert nan_at in str(through_tl.value) and negative_at in str(through_tl.value)
