"""Messages that say what the record holds rather than guess: `pl.elbo` of a classical fit
(it asked "not a variational fit?", where the record names its solver), and `tl.select_k`'s
reason for a K with no active factor under a given ``min_share`` (it explained only the
default threshold)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import pl, tl


def _adata() -> ad.AnnData:
    rng = np.random.default_rng(0)
    return ad.AnnData(sp.csr_matrix(rng.poisson(1.0, (60, 40)).astype(np.float64)))


def test_elbo_of_a_classical_fit_names_its_solver_and_loss_trace():
    adata = _adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 3, solver="mu", max_iter=20, random_state=0)
    assert len(adata.uns["nmf"]["loss_trace"]) > 0  # what the message points to
    with pytest.raises(ValueError) as caught:
        pl.elbo(adata, show=False)
    message = str(caught.value)
    assert "is a classical fit (solver='mu')" in message, message
    assert "adata.uns['nmf']['loss_trace']" in message and "?" not in message, message


def test_elbo_without_any_trace_keeps_its_question():
    """A record with neither trace (edited by hand): the question stays (guard: as before)."""
    adata = _adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 3, solver="mu", max_iter=20, random_state=0)
    del adata.uns["nmf"]["loss_trace"]
    with pytest.raises(ValueError, match=r"no ELBO trace \(not a variational fit\?\)"):
        pl.elbo(adata, show=False)


@pytest.mark.parametrize("min_share", [None, 0.9])
def test_select_k_reason_names_the_threshold_given(min_share):
    """At min_share=0.9 no factor of K=2 or 3 holds 90 % of the counts: the reason named
    only the default threshold ("five typical cells' counts"); it now names the one
    given, and keeps the default's words without one."""
    adata = _adata()
    options = {} if min_share is None else {"min_share": min_share}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = tl.select_k(adata, [2, 3], prior="gamma", random_state=0, **options)
    chosen = table.attrs["suggested_k"]
    n_active = int(table.loc[chosen, "n_active"])
    reason = table.attrs["reason"]
    if min_share is None:  # the default's words, for a K with no active factor (guard)
        from vbsnmf.tl._select_k import _reason

        ks = list(table.index)
        none_active = table.assign(n_active=0)
        chosen_at, best_at = ks.index(chosen), int(np.argmax(table["heldout_ll_per_count"]))
        words = _reason(none_active, ks, chosen_at, best_at, None)
        assert "(by default five typical cells' counts" in words, words
        return
    assert n_active == 0, table  # the data this test relies on
    assert f"none of its {chosen} factors is active" in reason, reason
    assert "(min_share=0.9)" in reason and "five typical cells" not in reason, reason
