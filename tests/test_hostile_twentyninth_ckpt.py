"""Twenty-ninth hostile pass, checkpoints: a plain `VBNTF` fit resumed at its max_iter
(silent, where the fit warned), `tl.nmf`'s ``warm_start`` resuming the checkpoint of the
stored fit itself (its passes counted twice), and the command line's advice on a `VBNTF`
checkpoint (``--solver svi``, which the fit then refused as a tensor's).

Each test says in its docstring what was wrong; guards say that they pass on the code
before the fixes too.
"""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
from interrupted import Stop, stop_at
from numpy.testing import assert_array_equal

import vbsnmf
from vbsnmf import VBNTF, CheckpointError, ConvergenceWarning, cli


@pytest.fixture(scope="module")
def tensor():
    counts = np.random.default_rng(0).poisson(0.5, (20, 10, 8)).astype(float)
    return np.argwhere(counts), counts[counts != 0], counts.shape


def _adata() -> anndata.AnnData:
    rng = np.random.default_rng(0)
    means = rng.gamma(1.0, 1.0, (120, 3)) @ rng.gamma(0.5, 1.0, (30, 3)).T
    return anndata.AnnData(sp.csr_matrix(rng.poisson(means).astype(np.float32)))


def _nmf(adata, **options) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning of the short fits
        vbsnmf.tl.nmf(adata, 3, random_state=0, n_threads=1, **options)


# The stored fit's length, and the warm start's, by solver: (first, continued).
_LENGTHS = {"batch": ("max_iter", 4, 7), "svi": ("n_epochs", 3, 5)}
_SOLVERS = [
    pytest.param({"accelerate": False}, id="plain"),
    pytest.param({}, id="accelerated"),
    pytest.param({"solver": "svi", "batch_size": 40}, id="svi"),
]


def _lengths(options):
    name, first, continued = _LENGTHS[options.get("solver", "batch")]
    return {name: first}, {name: continued}


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_a_plain_tensor_fit_resumed_at_its_max_iter_warns_as_it_did(tensor, prior, tmp_path):
    """A plain (``accelerate=False``) `VBNTF` fit that stopped at ``max_iter`` warns
    `ConvergenceWarning`; resumed from its checkpoint with the same ``max_iter`` it was
    returned without a word (`VBNMF` warns, as its fit did). The fit returned is the
    stored one."""
    options = dict(prior=prior, accelerate=False, max_iter=5, tol=0, random_state=0)
    options.update(n_threads=1, checkpoint=tmp_path / "fit.npz")
    with pytest.warns(ConvergenceWarning, match="max_iter=5"):
        fitted = VBNTF(3, **options).fit(*tensor)
    with pytest.warns(ConvergenceWarning, match="max_iter=5"):
        resumed = VBNTF(3, resume=True, **options).fit(*tensor)
    assert resumed.n_iter_ == 5 and not resumed.converged_
    assert_array_equal(resumed.elbo_trace_, fitted.elbo_trace_)
    for mine, theirs in zip(resumed.factors_, fitted.factors_):
        assert_array_equal(mine, theirs)


@pytest.mark.parametrize("options", _SOLVERS)
def test_warm_start_resuming_the_stored_fits_own_checkpoint_is_refused(options, tmp_path):
    """``tl.nmf(adata, checkpoint=C)`` then ``tl.nmf(adata, warm_start=True,
    checkpoint=C, resume=True)``: C holds the stored fit itself, whose passes the resume
    continued and the warm start then prepended again: the ELBO trace repeated its first
    values (falling back where it joined), ``n_iter`` and ``elbo_iter`` counted passes
    never run (10 for a fit of 7). It is refused, saying how to continue, and the stored
    fit is left as it was."""
    first, continued = _lengths(options)
    path = tmp_path / "fit.npz"
    adata = _adata()
    _nmf(adata, checkpoint=path, **options, **first)
    stored = adata.uns["nmf"]["elbo_trace"].copy()
    with pytest.raises(ValueError, match="holds the stored fit itself") as error:
        _nmf(adata, warm_start=True, checkpoint=path, resume=True, **options, **continued)
    assert "without resume" in str(error.value)
    assert_array_equal(adata.uns["nmf"]["elbo_trace"], stored)


@pytest.mark.parametrize("options", _SOLVERS)
def test_warm_start_resumes_an_interrupted_warm_started_fit_as_the_uninterrupted_one(
    options, tmp_path
):
    """Guard (passes before the fix too): the check above refuses no checkpoint of a fit
    that began at the stored fit. Such a fit, killed and resumed with ``warm_start``,
    ends as the uninterrupted warm-started fit, trace, passes and factors bit for bit."""
    first, continued = _lengths(options)
    path = tmp_path / "fit.npz"
    interrupted, uninterrupted = _adata(), _adata()
    for adata in (interrupted, uninterrupted):
        _nmf(adata, **options, **first)
    with pytest.raises(Stop):
        _nmf(
            interrupted, warm_start=True, checkpoint=path, callback=stop_at(2), **options,
            **continued,
        )  # fmt: skip
    _nmf(interrupted, warm_start=True, checkpoint=path, resume=True, **options, **continued)
    _nmf(uninterrupted, warm_start=True, **options, **continued)
    for key in ("n_iter", "elbo_iter", "elbo_trace"):
        assert_array_equal(interrupted.uns["nmf"][key], uninterrupted.uns["nmf"][key])
    assert_array_equal(interrupted.obsm["X_nmf"], uninterrupted.obsm["X_nmf"])


def test_warm_start_refuses_the_checkpoint_of_a_warm_started_stored_fit(tmp_path):
    """The stored fit may itself be a warm start whose checkpoint holds only its own
    passes (the trace's end): resuming that checkpoint with ``warm_start`` counted them
    twice as well, and is refused. The same finished checkpoint resumed on the AnnData as
    it was before that warm start (saved to disk, say) is a legitimate continuation: it
    goes on, bit for bit as the uninterrupted chain of fits."""
    path = tmp_path / "fit.npz"
    options = dict(accelerate=False)
    adata = _adata()
    _nmf(adata, max_iter=3, **options)
    before = adata.copy()
    _nmf(adata, warm_start=True, max_iter=3, checkpoint=path, **options)
    with pytest.raises(ValueError, match="holds the stored fit itself"):
        _nmf(adata, warm_start=True, max_iter=5, checkpoint=path, resume=True, **options)
    _nmf(before, warm_start=True, max_iter=5, checkpoint=path, resume=True, **options)
    chain = _adata()
    _nmf(chain, max_iter=3, **options)
    _nmf(chain, warm_start=True, max_iter=5, **options)
    for key in ("n_iter", "elbo_iter", "elbo_trace"):
        assert_array_equal(before.uns["nmf"][key], chain.uns["nmf"][key])


def test_warm_start_with_a_damaged_checkpoint_leaves_it_to_the_fit(tmp_path):
    """Guard (passes before the fix too): the new check reads the checkpoint's trace, and a
    file that is not a checkpoint is left to the fit, which refuses it as before (a
    `CheckpointError` naming it)."""
    path = tmp_path / "fit.npz"
    path.write_bytes(b"not a checkpoint")
    adata = _adata()
    _nmf(adata, max_iter=3)
    with pytest.raises(CheckpointError, match="is not a vbsnmf checkpoint"):
        _nmf(adata, warm_start=True, max_iter=5, checkpoint=path, resume=True)


@pytest.mark.parametrize("solver", ["svi", "batch"])
def test_cli_resume_of_a_tensor_checkpoint_names_the_tensor(tensor, solver, tmp_path, capsys):
    """``vbsnmf fit --checkpoint T --resume`` with T a `VBNTF` SVI checkpoint said "pass
    --solver svi to resume it"; with ``--solver svi`` the fit then refused it as a
    tensor's, after reading the input. Now the first refusal names the tensor, whatever
    --solver says (one line, exit 2), and the checkpoint is unchanged. (With ``--solver
    svi`` the case is a guard: the fit's own refusal passed these checks before.)"""
    checkpoint = tmp_path / "tensor.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its ConvergenceWarning
        VBNTF(3, solver="svi", n_epochs=2, random_state=0, checkpoint=checkpoint).fit(*tensor)
    saved = checkpoint.read_bytes()
    matrix = tmp_path / "x.h5ad"
    _adata().write_h5ad(matrix)
    command = ["fit", str(matrix), "-k", "3", "-o", str(tmp_path / "out"), "--quiet"]
    command += ["--checkpoint", str(checkpoint), "--resume"]
    if solver == "svi":
        command += ["--solver", "svi"]
    assert cli.main(command) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "VBNTF (a tensor)" in error
    assert "--solver" not in error
    assert checkpoint.read_bytes() == saved
