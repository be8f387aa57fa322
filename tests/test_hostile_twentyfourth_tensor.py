"""Hostile pass 24 on the tensor model (`vbsnmf.VBNTF`): a checkpoint of the other
estimator (`VBNMF`'s resumed by `VBNTF`, or the reverse) was refused with a list of
settings that only differ in how each estimator records them (``prior: 'gamma' (...) vs
now 'gamma'``, ``accelerate: False vs None``), not with whose checkpoint it is."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf._checkpoint import CheckpointMismatchError

COUNTS = np.random.default_rng(0).poisson(0.8, size=(12, 9))
COORDS, VALUES = np.argwhere(COUNTS), COUNTS[COUNTS != 0]


def _matrix_fit(path, resume=False):
    model = vbsnmf.VBNMF(
        2, prior="gamma", random_state=0, max_iter=3, n_threads=1, checkpoint=path, resume=resume
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(sp.csr_matrix(COUNTS))


def _tensor_fit(path, resume=False, **params):
    model = vbsnmf.VBNTF(
        2, random_state=0, max_iter=3, n_threads=1, checkpoint=path, resume=resume, **params
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(COORDS, VALUES, COUNTS.shape)


@pytest.mark.parametrize(
    ("write", "resume", "written_by", "fitting"),
    [
        (_matrix_fit, _tensor_fit, "VBNMF (a matrix)", "VBNTF (a tensor)"),
        (_tensor_fit, _matrix_fit, "VBNTF (a tensor)", "VBNMF (a matrix)"),
    ],
)
def test_the_other_estimators_checkpoint_is_refused_as_its(
    tmp_path, write, resume, written_by, fitting
):
    path = tmp_path / "fit.npz"
    write(path)
    saved = path.read_bytes()
    with pytest.raises(CheckpointMismatchError) as error:
        resume(path, resume=True)
    message = str(error.value)
    assert f"written by {written_by}, and this is a {fitting} fit" in message
    # no setting named that only differs in how the two estimators record it
    assert "accelerate" not in message and "prior" not in message
    assert path.read_bytes() == saved  # refused before anything is written over it


def test_a_tensor_checkpoint_of_other_settings_still_names_them(tmp_path):
    path = tmp_path / "fit.npz"
    _tensor_fit(path)
    with pytest.raises(CheckpointMismatchError, match=r"n_components: checkpoint 2 vs now 3"):
        vbsnmf.VBNTF(3, random_state=0, max_iter=3, n_threads=1, checkpoint=path, resume=True).fit(
            COORDS, VALUES, COUNTS.shape
        )
