"""Checkpoints: the sixteenth hostile review's defects, one test each.

Each test says in its docstring what was wrong.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from vbsnmf import VBNMF, VBNTF, cli
from vbsnmf._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vbsnmf.io import UnsafePathError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _counts(n_cells=60, n_genes=40, seed=0) -> sp.csr_array:
    return sp.csr_array(np.random.default_rng(seed).poisson(0.7, (n_cells, n_genes)).astype(float))


def _tensor(seed=0):
    counts = np.random.default_rng(seed).poisson(0.5, (12, 10, 8)).astype(float)
    return np.argwhere(counts), counts[counts != 0], counts.shape


@pytest.mark.parametrize("ending", [os.sep, os.sep + "."])
@pytest.mark.parametrize("estimator", ["VBNMF", "VBNTF"])
def test_a_checkpoint_path_ending_in_a_separator_is_refused_not_saved_as_a_file(
    tmp_path, estimator, ending
):
    """``checkpoint="ckpts/"`` (a folder not made yet) was saved as a file named ``ckpts``:
    Path drops the trailing separator (and a last "."), so the folder the user named
    became a file."""
    named = str(tmp_path / "ckpts") + ending
    if estimator == "VBNMF":
        fit = VBNMF(3, max_iter=3, random_state=0, checkpoint=named).fit
        args = (_counts(),)
    else:
        fit = VBNTF(3, max_iter=3, random_state=0, checkpoint=named).fit
        args = _tensor()
    with pytest.raises(UnsafePathError, match="names a folder"):
        fit(*args)
    assert list(tmp_path.iterdir()) == []


def test_cli_checkpoint_ending_in_a_separator_is_one_line_and_exit_2(tmp_path, capsys):
    """The command line saved ``--checkpoint ckpts/`` as a file ``ckpts`` too."""
    matrix = tmp_path / "x.mtx"
    scipy.io.mmwrite(matrix, sp.coo_matrix(_counts()))
    named = str(tmp_path / "ckpts") + os.sep
    command = ["fit", str(matrix), "--cells-as-rows", "-k", "2", "--max-iter", "3", "--quiet"]
    code = cli.main([*command, "-o", str(tmp_path / "out"), "--checkpoint", named])
    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "names a folder" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mtx"]


def _damage_sums(path, key, column, value):
    arrays, meta = load_checkpoint(path)
    arrays[key] = arrays[key].copy()
    arrays[key][column] = value
    save_checkpoint(path, arrays, meta)


@pytest.mark.parametrize(("column", "value"), [(0, -60.0), (0, 59.0), (1, 0.0), (1, -3.0)])
def test_damaged_sums_over_cells_of_an_svi_checkpoint_are_refused(tmp_path, column, value):
    """An SVI checkpoint of the learned prior whose stored sums over cells were damaged (a
    number of cells other than X's, the scales' means summing to <= 0) was resumed: the
    next step's q was non-finite, reported as a FloatingPointError advising a larger tau
    rather than the damaged file."""
    path = tmp_path / "fit.npz"
    settings = dict(n_components=3, random_state=0, solver="svi", svi_form="cells")
    X = _counts()
    VBNMF(**settings, n_epochs=3, checkpoint=path).fit(X)
    arrays, _ = load_checkpoint(path)
    assert arrays["cell_sums_scale"][0] == X.shape[0] and arrays["cell_sums_scale"][1] > 0
    _damage_sums(path, "cell_sums_scale", column, value)
    with pytest.raises(CheckpointError, match="damaged: the sums over cells"):
        VBNMF(**settings, n_epochs=5, checkpoint=path, resume=True).fit(X)


@pytest.mark.parametrize(("column", "value"), [(0, -12.0), (0, 11.0), (1, 0.0)])
def test_damaged_sums_over_slices_of_a_tensor_svi_checkpoint_are_refused(tmp_path, column, value):
    """The tensor's slices form kept the same sums, unchecked in the same way."""
    path = tmp_path / "fit.npz"
    settings = dict(n_components=3, random_state=0, solver="svi", prior="hierarchical")
    VBNTF(**settings, n_epochs=2, checkpoint=path).fit(*_tensor())
    arrays, meta = load_checkpoint(path)
    n_slices = meta["config"]["shape"][meta["config"]["svi_mode"]]
    assert arrays["local_sums"][0] == n_slices == 12
    _damage_sums(path, "local_sums", column, value)
    with pytest.raises(CheckpointError, match="damaged: the sums over slices"):
        VBNTF(**settings, n_epochs=4, checkpoint=path, resume=True).fit(*_tensor())


def test_the_sums_check_passes_a_fit_with_empty_cells_resumed_bitwise(tmp_path):
    """The check counts every cell, empty ones too: such a fit still resumes bitwise."""
    X = _counts().toarray()
    X[:5] = 0
    X = sp.csr_array(X)
    path = tmp_path / "fit.npz"
    settings = dict(n_components=3, random_state=0, solver="svi", svi_form="cells")
    whole = VBNMF(**settings, n_epochs=5).fit(X)
    VBNMF(**settings, n_epochs=2, checkpoint=path).fit(X)
    resumed = VBNMF(**settings, n_epochs=5, checkpoint=path, resume=True).fit(X)
    np.testing.assert_array_equal(resumed.elbo_trace_, whole.elbo_trace_)


def test_a_checkpoint_another_fit_saved_meanwhile_is_not_overwritten(tmp_path):
    """A fit whose checkpoint's folder did not exist yet takes its lock at its first save;
    a second fit given the same path that ran and finished before then had its finished
    checkpoint overwritten by the first fit's save, silently (a resume then continued the
    first fit instead)."""
    path = tmp_path / "not-yet" / "fit.npz"
    X = _counts()
    other = {}

    def run_another_fit(n_iter, params, trace):
        if n_iter == 1:  # before the first fit's first save
            VBNMF(3, max_iter=4, random_state=1, checkpoint=path).fit(X)
            other["trace"] = load_checkpoint(path)[0]["elbo_trace"]

    first = VBNMF(3, max_iter=6, random_state=0, accelerate=False, checkpoint=path)
    with pytest.raises(CheckpointError, match="saved by another fit while this one ran"):
        first.fit(X, callback=run_another_fit)
    np.testing.assert_array_equal(load_checkpoint(path)[0]["elbo_trace"], other["trace"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["fit.npz"]  # no lock left


def test_a_fit_making_its_checkpoint_folder_still_saves_and_resumes(tmp_path):
    """The check above refuses nothing a fit saved itself: a fit whose folder is made at
    its first save, stopped and resumed, ends as the uninterrupted fit."""
    path = tmp_path / "made" / "fit.npz"
    X = _counts()
    settings = dict(n_components=3, random_state=0, max_iter=8, accelerate=False)
    whole = VBNMF(**settings).fit(X)

    def stop(n_iter, params, trace):
        if n_iter == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        VBNMF(**settings, checkpoint=path, checkpoint_every=2).fit(X, callback=stop)
    resumed = VBNMF(**settings, checkpoint=path, resume=True).fit(X)
    np.testing.assert_array_equal(resumed.elbo_trace_, whole.elbo_trace_)
