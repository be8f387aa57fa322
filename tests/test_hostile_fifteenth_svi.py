"""Fifteenth hostile pass, SVI and streamed fits: a backed AnnData's view streamed as a
dense file, a lone .mtx fitted transposed by a guessed orientation, and a resume beyond
the default n_epochs returned without its warning."""

from __future__ import annotations

import gzip
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from vbsnmf import VBNMF
from vbsnmf.cli import main
from vbsnmf.io import mtx_to_h5ad


def _counts(n_cells: int = 30, n_genes: int = 12) -> sp.csr_matrix:
    counts = sp.random(n_cells, n_genes, density=0.4, random_state=0, format="csr")
    counts.data = np.ceil(counts.data * 5)
    return counts


def _fit(X, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few epochs, on purpose
        return VBNMF(2, solver="svi", random_state=0, **params).fit(X)


def test_a_backed_view_fits_its_cells_as_they_are_in_memory(tmp_path):
    """The view's X is a scipy matrix in memory, once taken for a dense array on disk:
    "setting an array element with a sequence"."""
    X = _counts(40, 15)
    ad.AnnData(X).write_h5ad(tmp_path / "counts.h5ad")
    backed = ad.read_h5ad(tmp_path / "counts.h5ad", backed="r")
    try:
        fitted = _fit(backed[10:30], n_epochs=3)
    finally:
        backed.file.close()
    expected = _fit(X[10:30], n_epochs=3)
    assert fitted.cell_shape_.shape == (20, 2)
    np.testing.assert_array_equal(fitted.components_, expected.components_)
    np.testing.assert_array_equal(fitted.elbo_trace_, expected.elbo_trace_)


@pytest.mark.parametrize("name", ["cells_by_genes.mtx", "matrix.mtx.gz"])
def test_a_lone_mtx_is_refused_until_its_orientation_is_known(tmp_path, name):
    """Written by gene (scipy writes a CSC so), a cells x genes file was taken for 10x's
    genes x cells and fitted transposed: 12 'cells' of 30 'genes', without a word."""
    X = _counts()
    path = tmp_path / name
    with open(path, "wb") as handle:  # mmwrite adds .mtx to a name without it
        scipy.io.mmwrite(handle, X.tocsc(), field="integer")
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(ValueError, match="genes_as_rows=False"):
        _fit(path, n_epochs=2)
    # the advice works: the file written by cell, converted as cells x genes, fits its cells
    by_cell = tmp_path / "by_cell.mtx"
    scipy.io.mmwrite(by_cell, X, field="integer")
    converted = mtx_to_h5ad(by_cell, tmp_path / "counts.h5ad", genes_as_rows=False)
    fitted = _fit(converted, n_epochs=2)
    assert (fitted.cell_shape_.shape[0], fitted.n_features_in_) == X.shape
    np.testing.assert_array_equal(fitted.components_, _fit(X, n_epochs=2).components_)


def test_a_resume_beyond_the_default_n_epochs_warns_as_beyond_a_given_one(tmp_path):
    """n_epochs=None stands for 40 epochs with a given batch_size: a checkpoint of 42 is
    returned as it is, and said so, as with n_epochs=40."""
    X = _counts()
    path = tmp_path / "fit.ckpt.npz"
    params = dict(batch_size=10, tol=0.0, max_iter=20, checkpoint=path)
    _fit(X, n_epochs=42, **params)
    for n_epochs in (None, 40):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = VBNMF(2, solver="svi", random_state=0, n_epochs=n_epochs, resume=True, **params)
            model.fit(X)
        assert model.n_iter_ == 42
        messages = [str(w.message) for w in caught]
        assert any("holds 42 epochs, more than the 40 asked for" in m for m in messages), messages


def test_a_resume_within_the_default_n_epochs_goes_on_without_the_warning(tmp_path):
    X = _counts()
    path = tmp_path / "fit.ckpt.npz"
    params = dict(batch_size=10, tol=0.0, max_iter=20, checkpoint=path)
    _fit(X, n_epochs=3, **params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = VBNMF(2, solver="svi", random_state=0, n_epochs=None, resume=True, **params)
        model.fit(X)
    assert model.n_iter_ == 40
    assert not any("asked for" in str(w.message) for w in caught)


def test_the_command_line_progress_bar_counts_to_the_default_epochs(tmp_path, capfd):
    """Without --epochs the bar had no total ("4epoch [00:01, ...]"): n_epochs' default,
    None, stands for epochs that depend on the cells (40 with a given --batch-size)."""
    ad.AnnData(_counts(40, 15)).write_h5ad(tmp_path / "counts.h5ad")
    argv = ["fit", str(tmp_path / "counts.h5ad"), "-k", "2", "--solver", "svi"]
    argv += ["--batch-size", "20", "--tol", "0.1", "--threads", "1", "-o", str(tmp_path / "o")]
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert "/40 [" in err, err[-500:]
