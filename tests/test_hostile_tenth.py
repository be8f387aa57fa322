"""Tenth hostile pass, the estimator's checkpoints: the start (``init``) is a setting a
checkpoint must match, as the seed and the prior are."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_array_equal

import vbsnmf
from vbsnmf import _checkpoint


def _counts():
    rng = np.random.default_rng(0)
    X = sp.random(40, 25, density=0.3, random_state=0, format="csr")
    X.data = rng.poisson(3, X.nnz) + 1.0
    return X


def _model(path, **options):
    return vbsnmf.VBNMF(3, random_state=0, n_threads=1, checkpoint=path, **options)


def test_a_checkpoint_of_a_random_start_is_not_resumed_by_an_nndsvda_fit(tmp_path):
    """``init="nndsvda"`` resumed a random start's checkpoint and returned the random fit
    as its own: the start was not among the settings a checkpoint records."""
    path = tmp_path / "fit.ckpt"
    _model(path, max_iter=5, init="random").fit(_counts())
    with pytest.raises(_checkpoint.CheckpointMismatchError, match="init"):
        _model(path, max_iter=40, init="nndsvda", resume=True).fit(_counts())
    resumed = _model(path, max_iter=40, init="random", resume=True).fit(_counts())
    straight = vbsnmf.VBNMF(3, random_state=0, n_threads=1, max_iter=40).fit(_counts())
    assert_array_equal(resumed.elbo_trace_, straight.elbo_trace_)


def test_a_checkpoint_from_before_the_start_was_recorded_is_a_random_starts(tmp_path):
    """A checkpoint written before ``init`` was recorded holds a random start's fit: a
    random start resumes it, an NNDSVDa start is refused."""
    path = tmp_path / "fit.ckpt"
    _model(path, max_iter=5).fit(_counts())
    arrays, meta = _checkpoint.load_checkpoint(path)
    assert meta["config"].pop("init") == "random"
    _checkpoint.save_checkpoint(path, arrays, meta)
    with pytest.raises(_checkpoint.CheckpointMismatchError, match="init"):
        _model(path, max_iter=8, init="nndsvda", resume=True).fit(_counts())
    resumed = _model(path, max_iter=8, resume=True).fit(_counts())
    assert resumed.n_iter_ == 8
