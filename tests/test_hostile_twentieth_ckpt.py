"""Checkpoints: the twentieth hostile review's defects, one test each.

Each test says in its docstring what was wrong.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from numpy.testing import assert_array_equal

from vbsnmf import VBNMF, VBNTF, cli
from vbsnmf._checkpoint import CheckpointError, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _counts(n_cells=60, n_genes=40, seed=0) -> sp.csr_array:
    return sp.csr_array(np.random.default_rng(seed).poisson(0.7, (n_cells, n_genes)).astype(float))


def _assert_same_fit(resumed, longer) -> None:
    assert resumed.n_iter_ == longer.n_iter_
    assert resumed.converged_ == longer.converged_
    assert_array_equal(resumed.elbo_trace_, longer.elbo_trace_)
    assert_array_equal(resumed.elbo_iter_, longer.elbo_iter_)
    assert_array_equal(resumed.components_, longer.components_)


@pytest.mark.parametrize("max_iter", [5, 8])
@pytest.mark.parametrize(
    "settings",
    [{}, {"prior": "gamma", "accelerate": True}],
    ids=["learned", "fixed-accelerated"],
)
def test_an_accelerated_fit_that_stopped_at_max_iter_resumes_with_more_as_the_longer_fit(
    tmp_path, settings, max_iter
):
    """A SQUAREM fit (the learned prior's default) whose ``max_iter`` cut a cycle short
    saved the state between its plain steps, from which a resume with a larger
    ``max_iter`` began a new cycle: not the longer fit, with other numbers (and for the
    fixed prior another number of ELBO values). Resumed with the same ``max_iter`` it still
    returns the stored fit, bit for bit."""
    path = tmp_path / "fit.npz"
    X = _counts()

    def model(n, **more):
        return VBNMF(3, random_state=0, n_threads=1, max_iter=n, **settings, **more)

    stopped = model(max_iter, checkpoint=path).fit(X)
    assert load_checkpoint(path)[1]["finished"]
    _assert_same_fit(model(max_iter, checkpoint=path, resume=True).fit(X), stopped)
    resumed = model(12, checkpoint=path, resume=True).fit(X)
    _assert_same_fit(resumed, model(12).fit(X))


def test_an_accelerated_tensor_fit_that_stopped_at_max_iter_resumes_with_more_as_the_longer_fit(
    tmp_path,
):
    """`VBNTF`'s accelerated fit saved its cut cycle as `VBNMF`'s did."""
    counts = np.random.default_rng(0).poisson(0.5, (12, 10, 8)).astype(float)
    args = (np.argwhere(counts), counts[counts != 0], counts.shape)
    path = tmp_path / "tensor.npz"
    options = dict(prior="gamma", accelerate=True, random_state=0, n_threads=1)
    VBNTF(3, max_iter=5, checkpoint=path, **options).fit(*args)
    resumed = VBNTF(3, max_iter=14, checkpoint=path, resume=True, **options).fit(*args)
    longer = VBNTF(3, max_iter=14, **options).fit(*args)
    assert_array_equal(resumed.elbo_trace_, longer.elbo_trace_)
    assert_array_equal(resumed.elbo_iter_, longer.elbo_iter_)
    assert resumed.n_iter_ == longer.n_iter_


def test_cli_resume_with_a_larger_max_iter_writes_the_longer_fits_elbo(tmp_path):
    """``vbsnmf fit --max-iter 5 --checkpoint C`` then ``--max-iter 10 --resume`` wrote
    another last ELBO than ``--max-iter 10`` run at once."""
    matrix = tmp_path / "x.mtx"
    scipy.io.mmwrite(matrix, sp.coo_matrix(_counts()))
    command = ["fit", str(matrix), "--cells-as-rows", "-k", "3", "--quiet", "--threads", "1"]
    checkpoint = ["--checkpoint", str(tmp_path / "c.npz")]
    assert cli.main([*command, "--max-iter", "5", *checkpoint, "-o", str(tmp_path / "a")]) == 0
    resumed = ["--max-iter", "10", *checkpoint, "--resume", "-o", str(tmp_path / "b")]
    assert cli.main([*command, *resumed]) == 0
    assert cli.main([*command, "--max-iter", "10", "-o", str(tmp_path / "c")]) == 0
    written = (tmp_path / "b" / "elbo.tsv").read_text()
    assert written.count("\n") == 10  # a header and passes 2..10
    assert written == (tmp_path / "c" / "elbo.tsv").read_text()


@pytest.mark.parametrize("stopped_at", ["9", True, 3.5, 0, 40])
def test_a_cut_cycles_checkpoint_with_a_damaged_max_iter_is_refused(tmp_path, stopped_at):
    """The start of a cycle ``max_iter`` cut short is saved with that ``max_iter``, which a
    resume runs to: one that is not one or two passes after the saved state is damage, not
    a fit replayed to another length."""
    path = tmp_path / "fit.npz"
    VBNMF(3, random_state=0, n_threads=1, max_iter=5, checkpoint=path).fit(_counts())
    arrays, meta = load_checkpoint(path)
    assert 0 < meta["max_iter"] - meta["n_passes"] <= 2
    save_checkpoint(path, arrays, {**meta, "max_iter": stopped_at})
    with pytest.raises(CheckpointError, match="max_iter"):
        VBNMF(3, random_state=0, n_threads=1, max_iter=12, checkpoint=path, resume=True).fit(
            _counts()
        )
