"""The advice of a fit that ran out of passes: "raise max_iter or tol" only where a tol
could have stopped it. Batch VB's stopping rule compares the ELBOs of two passes in a
row, so a fit of ``max_iter=1`` could not have stopped at any tol; SVI's reads
`_svi.STOP_RUN` changes, and `tl.select_k`'s one warning for its grid now says so too."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from test_hostile import _main, h5ad

import vbsnmf
from vbsnmf import tl
from vbsnmf.classic import NMF


def _counts_matrix() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    return sp.csr_matrix(rng.poisson(1.0, (60, 40)).astype(np.float64))


def _stopped(fit) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit()
    return [str(w.message) for w in caught if "stopped" in str(w.message)]


@pytest.mark.parametrize("accelerate", [True, False])
def test_one_pass_advises_max_iter_alone(accelerate):
    """Under the fixed prior (no hold) one pass warned "raise max_iter or tol"; the rule
    compares two passes' ELBOs, so no tol stops one pass: even tol=1e9 still warns."""
    X = _counts_matrix()
    for tol in (1e-5, 1e9):
        model = vbsnmf.VBNMF(
            3, prior="gamma", max_iter=1, tol=tol, accelerate=accelerate, random_state=0
        )
        (message,) = _stopped(lambda model=model: model.fit(X))
        assert message.startswith("VB stopped after max_iter=1 iteration and no tol"), message
        assert message.endswith("two passes in a row; raise max_iter."), message
        assert "or tol" not in message
        assert not model.converged_


def test_two_passes_still_advise_tol_which_would_have_stopped_them():
    """At max_iter=2 the advice names tol, and it is true: a loose tol stops the fit."""
    X = _counts_matrix()
    (message,) = _stopped(
        lambda: vbsnmf.VBNMF(3, prior="gamma", max_iter=2, accelerate=False, random_state=0).fit(X)
    )
    assert message.startswith("VB stopped after max_iter=2 iterations before"), message
    assert message.endswith("raise max_iter or tol."), message
    loose = vbsnmf.VBNMF(3, prior="gamma", max_iter=2, tol=1.0, accelerate=False, random_state=0)
    assert _stopped(lambda: loose.fit(X)) == [] and loose.converged_


def test_singular_limits_in_the_other_warnings():
    """ "n_epochs=1 epochs" and classic "max_iter=1 iterations" read as singular now."""
    X = _counts_matrix()
    messages = _stopped(
        lambda: vbsnmf.VBNMF(3, solver="svi", n_epochs=1, prior="gamma", random_state=0).fit(X)
    )
    assert messages and messages[0].startswith("SVI stopped after n_epochs=1 epoch with"), messages
    (message,) = _stopped(lambda: NMF(3, max_iter=1, tol=1e-12, random_state=0).fit(X.toarray()))
    assert message.startswith("NMF stopped after max_iter=1 iteration before"), message


def test_select_k_svi_with_too_few_evaluations_advises_n_epochs():
    """SVI fits of 3 epochs cannot stop (the rule reads 3 changes, 4 evaluations): the
    grid's warning advised "raise n_epochs or tol"; even tol=1 does not stop them."""
    for tol in (1e-5, 1.0):
        adata = ad.AnnData(_counts_matrix())
        messages = _stopped(
            lambda adata=adata, tol=tol: tl.select_k(
                adata, [2, 3], solver="svi", prior="gamma", n_epochs=3, tol=tol, random_state=0
            )
        )
        (message,) = messages
        assert "K=2, 3 (all the counts) and K=2, 3 (train half)" in message, message
        assert "no tol could have stopped them; raise n_epochs" in message, message
        assert "or tol" not in message
        assert not adata.uns["nmf_k_selection"]["table"]["converged"].any()


def test_select_k_without_too_few_evaluations_keeps_the_tol_advice():
    """6 epochs give the rule enough values: the tol advice stays (guard: as before)."""
    adata = ad.AnnData(_counts_matrix())
    (message,) = _stopped(
        lambda: tl.select_k(adata, [2, 3], solver="svi", prior="gamma", n_epochs=6, random_state=0)
    )
    assert "raise n_epochs or tol" in message and "no tol could" not in message, message


def test_cli_one_pass_advises_max_iter_alone(tmp_path, capfd):
    h5ad(tmp_path)
    argv = ["fit", "small.h5ad", "-k", "2", "--threads", "1", "--prior", "gamma"]
    code, _, err, _ = _main([*argv, "--max-iter", "1", "-o", "o"], capfd, tmp_path)
    assert code == 0, err
    (line,) = [line for line in err.splitlines() if "stopped after" in line]
    assert line.startswith("vbsnmf: warning: VB stopped after --max-iter 1 iteration and"), line
    assert line.endswith("two passes in a row; raise --max-iter."), line
