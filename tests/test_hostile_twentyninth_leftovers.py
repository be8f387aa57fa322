"""Items the twenty-eighth session's closing note left, fixed in the twenty-ninth.

- ``vbsnmf fit --solver svi`` on an ``.h5ad`` whose X is dense (the array encoding) read
  the whole matrix into memory, where one whose X is CSR streams; the library streamed a
  backed dense X already (`tl.nmf` on ``read_h5ad(path, backed="r")``). It streams now, a
  block of rows at a time, and the fit is the CSR file's.
- ``io.write_nmf_tables(..., key=np.str_("nmf"))`` named the fit ``np.str_('nmf')`` in its
  messages (the tools name it as text since the twenty-ninth pass; noticed by it).
- Each SVI step of the cells form summed lgamma over the minibatch's counts for a copy
  whose constant nothing read (`fit_rows` makes the block's rows major again): the
  constant is computed when first read now.
- ``io.mtx_to_h5ad`` takes genes as rows by default; a cells x genes file (sorted by cell,
  its rows) converted so was refused as "not sorted by cell" with the advice to re-save
  it, where ``genes_as_rows=False`` is the remedy (noticed by the docs pass).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf.cli as cli
from vbsnmf.io._stream import DenseRowsSource, read_h5ad_backed

SVI = ["-k", "3", "--solver", "svi", "--threads", "1", "--epochs", "2", "--seed", "0"]


@pytest.fixture
def dense_and_csr_files(tmp_path):
    """The same counts stored twice: X dense (the array encoding) and X as CSR."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.6, size=(60, 25)).astype(np.float32)
    counts[:, 0] += 1  # every cell has counts
    dense, csr = tmp_path / "dense.h5ad", tmp_path / "csr.h5ad"
    ad.AnnData(counts).write_h5ad(dense)
    ad.AnnData(sp.csr_matrix(counts)).write_h5ad(csr)
    return dense, csr


def test_command_line_svi_streams_a_dense_x_as_its_csr_twin(
    dense_and_csr_files, tmp_path, monkeypatch, capsys
):
    """The dense file is opened backed (`read_h5ad_backed` returned None for it, and the
    command line read X whole with `anndata.read_h5ad`), and fitted as the CSR file is."""
    dense, csr = dense_and_csr_files
    backed = read_h5ad_backed(dense)
    assert backed is not None and backed.isbacked
    backed.file.close()

    whole_reads = []
    original = ad.read_h5ad

    def recording_read(path, *args, **kwargs):
        if kwargs.get("backed") is None:
            whole_reads.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(ad, "read_h5ad", recording_read)
    for source in (dense, csr):
        code = cli.main(["fit", str(source), *SVI, "--quiet", "-o", str(tmp_path / source.stem)])
        assert code == 0, capsys.readouterr().err
    assert str(dense) not in whole_reads
    monkeypatch.undo()
    fits = [ad.read_h5ad(tmp_path / name / "result.h5ad") for name in ("dense", "csr")]
    np.testing.assert_array_equal(fits[0].obsm["X_nmf"], fits[1].obsm["X_nmf"])
    np.testing.assert_array_equal(fits[0].varm["NMF"], fits[1].varm["NMF"])


def test_a_dense_source_reads_nothing_until_its_row_counts_are_asked_for(
    dense_and_csr_files, monkeypatch
):
    """Opening a dense X to check it (the command line's `read_h5ad_backed`) read the
    whole matrix once to count each row's nonzeros; the count waits for its first use
    and is right then (against numpy's)."""
    import h5py

    dense, _ = dense_and_csr_files
    reads = []
    original = DenseRowsSource._read

    def recording(self, rows):
        reads.append(rows)
        return original(self, rows)

    monkeypatch.setattr(DenseRowsSource, "_read", recording)
    with h5py.File(dense, "r") as handle:
        source = DenseRowsSource(handle["X"])
        assert reads == []
        counts = handle["X"][...]
        expected = np.concatenate([[0], np.cumsum(np.count_nonzero(counts, axis=1))])
        np.testing.assert_array_equal(source.indptr, expected)
        assert source.nnz == np.count_nonzero(counts)
        assert len(reads) >= 1


def test_write_nmf_tables_names_a_numpy_string_key_as_text(tmp_path):
    """A key from an array of keys (a numpy string) is named as the text it is."""
    import warnings

    import vbsnmf

    rng = np.random.default_rng(0)
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(1.0, (40, 15)).astype(np.float32)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(adata, n_components=2, max_iter=5)
    del adata.varm["NMF"]
    with pytest.raises(KeyError) as raised:
        vbsnmf.io.write_nmf_tables(adata, tmp_path, key=np.str_("nmf"))
    assert "the fit 'nmf' has no .varm['NMF']" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_the_log_factorial_constant_is_computed_when_first_read():
    """Against scipy's gammaln; a count matrix made for a local fit (whose rows' own terms
    `fit_rows` computes) no longer pays for it up front."""
    from scipy.special import gammaln

    from vbsnmf._data import as_count_data

    rng = np.random.default_rng(1)
    counts = sp.csr_array(rng.poisson(2.0, size=(30, 50)).astype(np.float64))
    data = as_count_data(counts, major=0)
    assert data._log_factorial is None
    expected = float(np.sum(gammaln(counts.data + 1)))
    assert data.log_factorial == pytest.approx(expected, rel=1e-12)
    assert data._log_factorial == data.log_factorial


def test_a_cells_by_genes_file_converted_as_genes_by_cells_is_told_its_orientation(tmp_path):
    """mmwrite of a CSR of cells x genes writes its entries by row (cell): converted with
    the default genes_as_rows=True, the error names genes_as_rows=False; a file of genes x
    cells out of order is told only to re-save (a guard)."""
    import scipy.io

    from vbsnmf.io import mtx_to_h5ad

    rng = np.random.default_rng(2)
    counts = sp.random(40, 12, density=0.4, random_state=rng, format="csr")
    counts.data = np.ceil(counts.data * 5)
    scipy.io.mmwrite(tmp_path / "cells_by_genes.mtx", counts)
    with pytest.raises(ValueError, match=r"if its rows are cells, pass genes_as_rows=False"):
        mtx_to_h5ad(tmp_path / "cells_by_genes.mtx", tmp_path / "a.h5ad")
    converted = mtx_to_h5ad(
        tmp_path / "cells_by_genes.mtx", tmp_path / "b.h5ad", genes_as_rows=False
    )
    assert (sp.csr_matrix(ad.read_h5ad(converted).X) != counts).nnz == 0
    # genes x cells, entries shuffled: neither axis sorted, no orientation hint
    coo = counts.T.tocoo()
    order = rng.permutation(coo.nnz)
    shuffled = sp.coo_matrix((coo.data[order], (coo.row[order], coo.col[order])), coo.shape)
    scipy.io.mmwrite(tmp_path / "shuffled.mtx", shuffled)
    with pytest.raises(ValueError, match="not sorted by cell") as raised:
        mtx_to_h5ad(tmp_path / "shuffled.mtx", tmp_path / "c.h5ad")
    assert "genes_as_rows=False" not in str(raised.value)
