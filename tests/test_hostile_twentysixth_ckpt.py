"""Twenty-sixth hostile pass, checkpoints and SVI: a longer SVI fit's checkpoint resumed at
the epoch it was saved at, batch VBNTF checkpoints and the SVI-only batch_size, VBNTF's
warning for a checkpoint beyond the default n_epochs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from interrupted import Stop, stop_at

from vbsnmf import VBNMF, VBNTF
from vbsnmf._checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def counts():
    rng = np.random.default_rng(0)
    means = rng.gamma(1.0, 1.0, (150, 3)) @ rng.gamma(0.5, 1.0, (40, 3)).T
    return sp.csr_matrix(rng.poisson(means * 0.5).astype(float))


@pytest.fixture(scope="module")
def tensor():
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.8, (30, 8, 6)).astype(float)
    return np.argwhere(dense), dense[dense != 0], dense.shape


@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_a_longer_cells_fits_checkpoint_resumed_at_its_epoch_is_the_shorter_fit(
    counts, prior, tmp_path
):
    # A 10-epoch fit killed in epoch 7 left epoch 6's checkpoint, saved after the exact
    # gene step that fit took past its evaluation: resumed with n_epochs=6 it returned that
    # stepped gene side, neither the 6-epoch fit nor the q whose ELBO ends the trace.
    kw = dict(n_components=3, solver="svi", random_state=1, n_threads=1, prior=prior)
    path = tmp_path / "c.npz"
    with pytest.raises(Stop):
        VBNMF(**kw, n_epochs=10, checkpoint=path).fit(counts, callback=stop_at(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 6-epoch fit's ConvergenceWarning
        resumed = VBNMF(**kw, n_epochs=6, checkpoint=path, resume=True).fit(counts)
        full = VBNMF(**kw, n_epochs=6).fit(counts)
        longer = VBNMF(**kw, n_epochs=10).fit(counts)
        resumed_longer = VBNMF(**kw, n_epochs=10, checkpoint=path, resume=True).fit(counts)
    np.testing.assert_array_equal(resumed.elbo_trace_, full.elbo_trace_)
    np.testing.assert_array_equal(resumed.gene_shape_, full.gene_shape_)
    np.testing.assert_array_equal(resumed.gene_rate_, full.gene_rate_)
    np.testing.assert_array_equal(resumed.cell_shape_, full.cell_shape_)
    # the checkpoint, resumed up to 10 epochs, still goes on as the 10-epoch fit
    np.testing.assert_array_equal(resumed_longer.elbo_trace_, longer.elbo_trace_)
    np.testing.assert_array_equal(resumed_longer.components_, longer.components_)


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_a_longer_slices_fits_checkpoint_resumed_at_its_epoch_is_the_shorter_fit(
    tensor, prior, tmp_path
):
    kw = dict(n_components=2, solver="svi", random_state=1, n_threads=1, prior=prior)
    path = tmp_path / "t.npz"
    with pytest.raises(Stop):
        VBNTF(**kw, n_epochs=10, checkpoint=path).fit(*tensor, callback=stop_at(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = VBNTF(**kw, n_epochs=6, checkpoint=path, resume=True).fit(*tensor)
        full = VBNTF(**kw, n_epochs=6).fit(*tensor)
    np.testing.assert_array_equal(resumed.elbo_trace_, full.elbo_trace_)
    for mine, theirs in zip(resumed.shapes_ + resumed.rates_, full.shapes_ + full.rates_):
        np.testing.assert_array_equal(mine, theirs)


def test_a_batch_tensor_checkpoint_resumes_whatever_the_svi_batch_size_says(tensor, tmp_path):
    # batch VB draws no minibatches, yet batch_size was recorded and compared: the same
    # batch fit was refused as "a different fit (batch_size: checkpoint None vs now 5)"
    path = tmp_path / "t.npz"
    resumed = VBNTF(2, random_state=0, max_iter=8, checkpoint=path, resume=True, batch_size=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter's ConvergenceWarning
        VBNTF(2, random_state=0, max_iter=5, checkpoint=path).fit(*tensor)
        resumed.fit(*tensor)
        full = VBNTF(2, random_state=0, max_iter=8).fit(*tensor)
    np.testing.assert_array_equal(resumed.elbo_trace_, full.elbo_trace_)
    # and a checkpoint written before, which recorded the batch_size the fit was given
    arrays, meta = load_checkpoint(path)
    assert meta["config"]["batch_size"] is None
    meta["config"]["batch_size"] = 7
    save_checkpoint(path, arrays, meta)
    again = VBNTF(2, random_state=0, max_iter=8, checkpoint=path, resume=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again.fit(*tensor)
    np.testing.assert_array_equal(again.elbo_trace_, full.elbo_trace_)


def test_an_svi_tensor_resume_beyond_the_default_n_epochs_warns(tensor, tmp_path):
    # VBNMF warns here (fifteenth pass); VBNTF compared with n_epochs=None, so never did
    path = tmp_path / "t.npz"
    kw = dict(n_components=2, random_state=0, solver="svi", svi_form="nonzeros", tol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        VBNTF(**kw, n_epochs=42, checkpoint=path).fit(*tensor)  # the default is 40
    with pytest.warns(UserWarning, match="already holds 42 epochs, more than the 40"):
        fitted = VBNTF(**kw, checkpoint=path, resume=True).fit(*tensor)
    assert fitted.n_iter_ == 42
