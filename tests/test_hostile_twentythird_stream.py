"""Hostile pass 23, streamed fits (SVI's cells form reading a file a block of cells at a
time): a failed fit held its file open, a backed X whose file was closed failed inside
h5py, and repeated entries changed the fingerprint that resuming a checkpoint checks."""

from __future__ import annotations

import glob
import tempfile

import anndata as ad
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import vbsnmf
from vbsnmf._validation import check_sparse_structure

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SVI = dict(solver="svi", n_threads=1, random_state=0)


def _counts(n_cells: int = 40, n_genes: int = 10) -> sp.csr_matrix:
    counts = sp.random(n_cells, n_genes, density=0.4, random_state=1, format="csr")
    counts.data = np.floor(counts.data * 4) + 2
    return counts


def _repeated(counts: sp.csr_matrix) -> sp.csr_matrix:
    """``counts`` with every count stored as two entries, (count - 1) then 1."""
    coo = counts.tocoo()
    rows = np.concatenate([coo.row, coo.row])
    cols = np.concatenate([coo.col, coo.col])
    values = np.concatenate([coo.data - 1, np.ones_like(coo.data)])
    order = np.lexsort((cols, rows))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=counts.shape[0]))])
    return sp.csr_matrix((values[order], cols[order], indptr), shape=counts.shape)


# -- a failed streamed fit closes what it opened ------------------------------------------------
def test_a_failed_streamed_fit_leaves_its_file_free_to_rewrite(tmp_path):
    """IPython keeps the last exception, and with it the fit's frames: the file stayed
    open, and writing the fixed counts over it failed ("unable to truncate a file which is
    already open")."""
    path = tmp_path / "counts.h5ad"
    counts = _counts()
    counts.data[3] = np.nan
    ad.AnnData(counts).write_h5ad(path)
    with pytest.raises(ValueError, match="NaN") as held:
        vbsnmf.VBNMF(2, n_epochs=1, **SVI).fit(path)
    fixed = ad.read_h5ad(path)
    fixed.X.data[3] = 1.0
    fixed.write_h5ad(path)  # while ``held`` keeps the exception
    assert held.value is not None
    assert ad.read_h5ad(path).X.data[3] == 1.0


def test_a_failed_fit_of_a_10x_folder_removes_its_converted_copy(tmp_path):
    folder = tmp_path / "tenx"
    folder.mkdir()
    counts = _counts().astype(np.int64)
    scipy.io.mmwrite(folder / "matrix.mtx", sp.csc_matrix(counts.T))
    (folder / "barcodes.tsv").write_text("".join(f"C{i}\n" for i in range(counts.shape[0])))
    (folder / "genes.tsv").write_text("".join(f"G{j}\tg{j}\n" for j in range(counts.shape[1])))
    pattern = f"{tempfile.gettempdir()}/vbsnmf-stream-*"
    before = set(glob.glob(pattern))

    def stop(*_):
        raise RuntimeError("stopped by the callback")

    with pytest.raises(RuntimeError, match="stopped") as held:
        vbsnmf.VBNMF(2, n_epochs=2, **SVI).fit(folder, callback=stop)
    assert held.value is not None
    assert set(glob.glob(pattern)) == before


def test_a_streamed_fit_of_a_backed_anndata_leaves_its_file_open(tmp_path):
    """Guard (passed before): the source closes only what it opened, never the caller's
    backed AnnData."""
    path = tmp_path / "counts.h5ad"
    ad.AnnData(_counts()).write_h5ad(path)
    adata = ad.read_h5ad(path, backed="r")
    try:
        vbsnmf.VBNMF(2, n_epochs=1, **SVI).fit(adata)
        assert adata.file.is_open
        assert adata.X[:3].shape == (3, 10)
    finally:
        adata.file.close()


# -- a backed X whose file was closed ------------------------------------------------------------
def _closed_x(folder, dense: bool):
    path = folder / ("dense.h5ad" if dense else "sparse.h5ad")
    counts = _counts()
    ad.AnnData(counts.toarray() if dense else counts).write_h5ad(path)
    adata = ad.read_h5ad(path, backed="r")
    X = adata.X
    adata.file.close()
    return X


CALLS = {
    "svi fit": lambda X: vbsnmf.VBNMF(2, n_epochs=1, **SVI).fit(X),
    "batch fit": lambda X: vbsnmf.VBNMF(2, max_iter=2, n_threads=1).fit(X),
    "transform": lambda X: vbsnmf.VBNMF(2, max_iter=2, n_threads=1).fit(_counts()).transform(X),
}


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
@pytest.mark.parametrize("call", list(CALLS))
def test_a_backed_x_whose_file_was_closed_is_refused_as_such(tmp_path, dense, call):
    """h5py answered: ValueError "Not an id of a file object" (CSR), RuntimeError
    "identifier is not of specified type" (dense)."""
    X = _closed_x(tmp_path, dense)
    with pytest.raises(ValueError, match="HDF5 file that was closed"):
        CALLS[call](X)


# -- repeated entries and the fingerprint ------------------------------------------------------
@pytest.mark.parametrize("layout", ["csr", "csc"])
def test_repeated_entries_are_fingerprinted_as_their_sums(layout):
    summed = _counts()
    repeated = _repeated(summed)
    if layout == "csc":  # the repeats of the transpose's rows as columns
        by_gene = _repeated(sp.csr_matrix(summed.T))
        repeated = sp.csc_matrix((by_gene.data, by_gene.indices, by_gene.indptr), summed.shape)
    assert repeated.format == layout and not repeated.has_canonical_format
    assert abs(repeated - summed).sum() == 0
    indices = repeated.indices.copy()
    expected = check_sparse_structure(sp.csr_array(summed), fingerprint=True)
    assert check_sparse_structure(repeated, fingerprint=True) == expected
    # blocks of rows (as a stream reads them) add up to the same number
    if layout == "csr":
        blocks = [repeated[start : start + 7] for start in range(0, summed.shape[0], 7)]
        total = sum(
            check_sparse_structure(block, first_row=7 * n, fingerprint=True)
            for n, block in enumerate(blocks)
        )
        assert total % 2**64 == expected
    # the caller's arrays are not sorted or summed in place
    assert np.array_equal(repeated.indices, indices) and not repeated.has_canonical_format


@pytest.mark.parametrize("route", ["in memory", "streamed", "in memory, then streamed"])
def test_a_checkpoint_resumes_on_the_same_counts_stored_without_repeats(tmp_path, route):
    """Refused before as "written for other data (... other counts or counts at other
    positions ...)"; the fits themselves sum repeats and were equal bitwise."""
    summed = _counts()
    repeated = _repeated(summed)
    ad.AnnData(repeated).write_h5ad(tmp_path / "repeated.h5ad")
    ad.AnnData(summed).write_h5ad(tmp_path / "summed.h5ad")
    first, second = {
        "in memory": (repeated, summed),
        "streamed": (tmp_path / "repeated.h5ad", tmp_path / "summed.h5ad"),
        "in memory, then streamed": (repeated, tmp_path / "summed.h5ad"),
    }[route]
    checkpoint = tmp_path / "fit.npz"
    settings = dict(batch_size=10, checkpoint=checkpoint, **SVI)
    vbsnmf.VBNMF(2, n_epochs=1, **settings).fit(first)
    resumed = vbsnmf.VBNMF(2, n_epochs=2, resume=True, **settings).fit(second)
    whole = vbsnmf.VBNMF(2, n_epochs=2, batch_size=10, **SVI).fit(summed)
    np.testing.assert_array_equal(resumed.elbo_trace_, whole.elbo_trace_)
    np.testing.assert_array_equal(resumed.components_, whole.components_)


def test_a_checkpoint_of_other_counts_is_still_refused(tmp_path):
    """Guard: summing repeats does not make other counts match."""
    summed = _counts()
    other = summed.copy()
    other.data[0] += 1
    other.data[1] -= 1  # the same total and nonzeros
    checkpoint = tmp_path / "fit.npz"
    settings = dict(batch_size=10, checkpoint=checkpoint, **SVI)
    vbsnmf.VBNMF(2, n_epochs=1, **settings).fit(_repeated(summed))
    with pytest.raises(ValueError, match="other data"):
        vbsnmf.VBNMF(2, n_epochs=2, resume=True, **settings).fit(_repeated(other))
