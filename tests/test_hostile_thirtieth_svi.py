"""Thirtieth hostile pass, stochastic VB and the files it streams.

A streamed ``.h5ad`` truncated or overwritten in place (``cp``) while SVI read it: HDF5
read the lost chunks as zeros and the rewritten ones as whatever lay at their offsets, so
the fit went on silently on other counts than those it had checked, or failed with a
`FloatingPointError` blaming the step size. The file is now refused as changed.
Guards (passing on the base code too, said in their docstrings): a file moved onto the
path mid-fit (the open file is still read whole), and minibatches of cells without counts.
"""

import os
import shutil
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import VBNMF
from vbsnmf.io import ReadError
from vbsnmf.io._stream import open_source


def _counts(n_cells=300, n_genes=40, lam=1.0, seed=0):
    return np.random.default_rng(seed).poisson(lam, (n_cells, n_genes)).astype(np.float32)


def _write(path, X, dense=False):
    ad.AnnData(X if dense else sp.csr_matrix(X)).write_h5ad(path)
    return path


def _svi(**params):
    defaults = dict(n_components=3, solver="svi", prior="gamma", random_state=0, n_epochs=3)
    return VBNMF(**{**defaults, **params})


def _fit_changing(path, change, **params):
    """Fit ``path`` by SVI, calling ``change()`` after the first epoch."""

    def callback(epoch, params_, trace):
        if epoch == 1:
            change()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _svi(**params).fit(str(path), callback=callback)


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
def test_stream_truncated_mid_fit_is_refused(tmp_path, dense):
    """A file cut short while the fit streams it (the fit went on, cached chunks or rows
    read as zeros) is a `ReadError` saying it changed."""
    path = _write(tmp_path / "counts.h5ad", _counts(), dense)
    with pytest.raises(ReadError, match="changed while it was being read") as caught:
        _fit_changing(path, lambda: os.truncate(path, os.path.getsize(path) // 2))
    assert caught.value.path == path


def test_stream_overwritten_in_place_mid_fit_is_refused(tmp_path):
    """Another file copied over the streamed one (same inode, ``cp``/``shutil.copyfile``):
    refused as changed, not fitted, nor a `FloatingPointError` about the step size."""
    path = _write(tmp_path / "counts.h5ad", _counts())
    other = _write(tmp_path / "other.h5ad", _counts(lam=2.0, seed=1))
    with pytest.raises(ReadError, match="changed while it was being read"):
        _fit_changing(path, lambda: shutil.copyfile(other, path))


def test_backed_anndata_truncated_mid_fit_is_refused(tmp_path):
    """The same through a backed AnnData (the command line's route)."""
    path = _write(tmp_path / "counts.h5ad", _counts())
    adata = ad.read_h5ad(path, backed="r")
    try:

        def callback(epoch, params, trace):
            if epoch == 1:
                os.truncate(path, os.path.getsize(path) // 2)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ReadError, match="changed while it was being read"):
                _svi().fit(adata, callback=callback)
    finally:
        adata.file.close()


def test_truncated_file_read_named_as_changed(tmp_path):
    """A file truncated after it was opened: rows past the cut were read as zeros or as
    other rows (no error), or failed as "cannot read X (... wrong B-tree signature)"; the
    read is now refused as a file that changed."""
    X = _counts(n_cells=20000, n_genes=100, lam=0.3)
    path = _write(tmp_path / "counts.h5ad", X)
    with open_source(path) as source:
        np.testing.assert_array_equal(source.read_rows(np.arange(5)).toarray(), X[:5])
        os.truncate(path, os.path.getsize(path) // 10)
        with pytest.raises(ReadError, match="changed while it was being read"):
            source.read_rows(np.arange(15000, 15010))


def test_stream_replaced_by_rename_mid_fit_fits_the_opened_file(tmp_path):
    """Guard (passes on the base code too): another file moved onto the path (an atomic
    save) changes nothing the open file reads, so the fit goes on and ends as the fit of
    the untouched file."""
    X = _counts()
    path = _write(tmp_path / "counts.h5ad", X)
    other = _write(tmp_path / "other.h5ad", _counts(lam=2.0, seed=1))
    replaced = _fit_changing(path, lambda: os.replace(other, path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = _svi().fit(sp.csr_matrix(X))
    np.testing.assert_array_equal(replaced.elbo_trace_, reference.elbo_trace_)
    np.testing.assert_array_equal(replaced.components_, reference.components_)


@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
@pytest.mark.parametrize("batch_size", [1, 7, None])
def test_minibatches_of_empty_cells_stay_finite(prior, batch_size):
    """Guard (passes on the base code too): half the cells without a count, so whole
    minibatches hold none (one cell a batch, a batch of 7, the default), in float32: every
    parameter and the trace finite, the trace's last value the ELBO the float64 fit
    reports to float32 rounding."""
    X = _counts(n_cells=150, n_genes=30, lam=2.0, seed=3)
    X[:75] = 0
    fits = {}
    for dtype in (np.float32, np.float64):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits[dtype] = _svi(prior=prior, batch_size=batch_size, dtype=dtype, n_epochs=6).fit(
                sp.csr_matrix(X)
            )
    model = fits[np.float32]
    for values in (model.cell_shape_, model.cell_rate_, model.gene_shape_, model.gene_rate_):
        assert np.isfinite(values).all()
    assert np.isfinite(model.elbo_trace_).all()
    np.testing.assert_allclose(model.elbo_trace_, fits[np.float64].elbo_trace_, rtol=1e-4)
