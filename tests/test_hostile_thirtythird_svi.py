"""Thirty-third hostile pass, stochastic VB (`vbsnmf/_svi.py` and its callers).

The defect: an SVI fit that ran out of ``n_epochs`` with too few ELBO evaluations for its
stopping rule (three relative changes in a row, so four evaluations; after the hold's
release, four since it) advised "raise n_epochs or tol", although no ``tol`` could have
stopped it (3 epochs at ``tol=1e9`` still ran out). It now says why and advises
``n_epochs`` alone (``eval_every`` named when it is not 1), in `VBNMF`, `VBNTF` and the
command line. The other tests are guards (they pass on the code before the pass too) of
what the pass checked: the parameters' validation, a batch larger than the data, the
learning rate against docs/model.md, the epochs of ``elbo_iter_``, data whose nonzeros
are all in one cell, reproducibility, and a partial last minibatch.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import VBNMF, VBNTF, _svi
from vbsnmf.cli import main


def _counts(n_cells=60, n_genes=20, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(1, 1, (n_cells, 3)) @ rng.gamma(1, 1, (3, n_genes))).astype(float)


def _svi_fit(X, **options):
    settings = {"n_components": 3, "random_state": 0, "n_threads": 1, "solver": "svi", **options}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = VBNMF(**settings).fit(X)
    messages = [str(w.message) for w in caught if issubclass(w.category, vbsnmf.ConvergenceWarning)]
    return model, messages


# -- the defect: advice of a tol that could not have stopped the fit ----------------------------
@pytest.mark.parametrize("form", ["nonzeros", "abe-shimamura", "cells"])
def test_too_few_evaluations_advise_n_epochs_alone(form):
    """3 epochs give 3 evaluations, 2 changes: no tol stops the fit (1e9 does not), so
    the warning does not advise one (it said "raise n_epochs or tol")."""
    model, messages = _svi_fit(_counts(), svi_form=form, prior="gamma", n_epochs=3, tol=1e9)
    assert not model.converged_ and len(model.elbo_trace_) == 3
    assert len(messages) == 1, messages
    assert "or tol" not in messages[0]
    assert "with 3 ELBO evaluations" in messages[0]
    assert messages[0].endswith("no tol could have stopped it; raise n_epochs."), messages[0]


def test_a_large_eval_every_is_named_in_the_advice():
    """eval_every=20 over 40 epochs evaluates twice: the warning names it, and no tol."""
    model, messages = _svi_fit(_counts(), prior="gamma", n_epochs=40, eval_every=20, tol=1.0)
    assert list(model.elbo_iter_) == [20, 40] and not model.converged_
    assert len(messages) == 1 and "or tol" not in messages[0], messages
    assert "with 2 ELBO evaluations (every eval_every=20 epochs and at the last)" in messages[0]


def test_a_tensor_svi_fit_with_too_few_evaluations_advises_n_epochs_alone():
    """`VBNTF`'s SVI shares the rule and the warning."""
    rng = np.random.default_rng(0)
    tensor = rng.poisson(1.0, (12, 10, 8)).astype(float)
    with pytest.warns(vbsnmf.ConvergenceWarning) as caught:
        model = VBNTF(2, solver="svi", prior="gamma", n_epochs=2, random_state=0).fit(
            np.argwhere(tensor), tensor[tensor != 0], tensor.shape
        )
    assert not model.converged_
    messages = [str(w.message) for w in caught if issubclass(w.category, vbsnmf.ConvergenceWarning)]
    assert len(messages) == 1 and "or tol" not in messages[0], messages
    assert messages[0].endswith("no tol could have stopped it; raise n_epochs."), messages[0]


def test_the_command_line_advises_epochs_alone(tmp_path, capfd):
    """``--epochs 2``: one warning line advising ``--epochs``, not ``--tol``."""
    ad.AnnData(sp.csr_matrix(_counts(40, 15))).write_h5ad(tmp_path / "counts.h5ad")
    argv = ["fit", str(tmp_path / "counts.h5ad"), "-k", "2", "--solver", "svi", "--prior"]
    argv += ["gamma", "--epochs", "2", "--threads", "1", "--seed", "0", "-o", str(tmp_path / "o")]
    assert main(argv) == 0
    lines = [line for line in capfd.readouterr().err.splitlines() if "warning" in line]
    assert len(lines) == 1, lines
    assert lines[0].endswith("raise --epochs.") and "--tol" not in lines[0], lines[0]


def test_enough_evaluations_keep_the_tol_advice():
    """A guard (passes before the fix too): with four or more evaluations a larger tol
    could have stopped the fit, and the warning still advises it."""
    model, messages = _svi_fit(_counts(), svi_form="nonzeros", prior="gamma", n_epochs=6, tol=0)
    assert not model.converged_ and len(model.elbo_trace_) == 6
    assert len(messages) == 1 and messages[0].endswith("raise n_epochs or tol."), messages


# -- guards ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("batch_size", 0, ValueError),
        ("batch_size", 2.0, TypeError),
        ("batch_size", True, TypeError),
        ("batch_size", np.nan, TypeError),
        ("tau", -1.0, ValueError),
        ("tau", np.nan, ValueError),
        ("tau", 10**400, ValueError),
        ("tau", True, TypeError),
        ("kappa", 0.5, ValueError),
        ("kappa", 1.5, ValueError),
        ("kappa", np.nan, ValueError),
        ("n_epochs", 0, ValueError),
        ("n_epochs", 2.0, TypeError),
        ("eval_every", 0, ValueError),
    ],
)
def test_svi_parameters_are_refused_naming_themselves(name, value, error):
    """A guard: each bad SVI setting is a typed error that names the parameter."""
    with pytest.raises(error, match=name):
        VBNMF(2, solver="svi", **{name: value}).fit(_counts(10, 6))


def test_a_batch_larger_than_the_data_is_the_whole_data():
    """A guard: a batch of 10**30 cells (or nonzeros) is the fit with a batch of all."""
    X = _counts(30, 10)
    for form, whole in (("cells", X.shape[0]), ("nonzeros", int(np.count_nonzero(X)))):
        big, _ = _svi_fit(X, svi_form=form, prior="gamma", batch_size=10**30, n_epochs=4)
        exact, _ = _svi_fit(X, svi_form=form, prior="gamma", batch_size=whole, n_epochs=4)
        np.testing.assert_array_equal(big.elbo_trace_, exact.elbo_trace_)
        np.testing.assert_array_equal(big.components_, exact.components_)


def test_the_learning_rate_is_the_documented_schedule():
    """A guard: rho_t = min(1, (t + tau)^-kappa) with t = n / m (docs/model.md)."""
    for step, tau, kappa, m in ((1, 1.0, 0.7, 32), (5, 0.0, 1.0, 2), (40, 3.0, 0.55, 8)):
        expected = min(1.0, (step / m + tau) ** (-kappa))
        assert _svi.learning_rate(step, tau, kappa, m) == pytest.approx(expected, rel=1e-15)
    assert _svi.learning_rate(1, 0.0, 0.7, 32) == 1.0  # tau = 0 starts with a full step
    assert _svi.learning_rate(32, 1.0, 0.7, 32) == pytest.approx(2**-0.7)


def test_elbo_iter_holds_the_evaluated_epochs():
    """A guard: every eval_every-th epoch and the last, n_iter_ the epochs run."""
    model, _ = _svi_fit(_counts(), prior="gamma", n_epochs=10, eval_every=3, tol=0)
    assert list(model.elbo_iter_) == [3, 6, 9, 10] and model.n_iter_ == 10
    assert len(model.elbo_trace_) == 4


@pytest.mark.parametrize(
    ("form", "prior"),
    [("cells", "hierarchical"), ("cells", "gamma"), ("nonzeros", "gamma")],
)
def test_nonzeros_all_in_one_cell_fit_finitely(form, prior):
    """A guard: every count in one cell (the others empty), float32 and float64."""
    X = np.zeros((20, 8))
    X[3] = np.arange(1, 9)
    for dtype in (np.float64, np.float32):
        model, _ = _svi_fit(X, n_components=2, svi_form=form, prior=prior, dtype=dtype)
        assert np.isfinite(model.elbo_trace_).all() and np.isfinite(model.components_).all()
        usage = model.transform(X)
        assert np.isfinite(usage).all() and usage[np.arange(20) != 3].max() < usage[3].max()


def test_the_same_seed_gives_the_same_fit_bit_for_bit():
    """A guard: random_state and n_threads fix an SVI fit (cells form, learned prior)."""
    X = _counts(150, 20)
    first, _ = _svi_fit(X, n_epochs=6, batch_size=40)
    second, _ = _svi_fit(X, n_epochs=6, batch_size=40)
    np.testing.assert_array_equal(first.elbo_trace_, second.elbo_trace_)
    np.testing.assert_array_equal(first.cell_shape_, second.cell_shape_)


def test_a_short_last_minibatch_is_scaled_by_its_own_size():
    """A guard: 129 cells in batches of 128 end every epoch with one cell, whose step
    is scaled by 129 (C / |batch|), not 129 / 128; the fit still comes within 0.5 % of
    batch VB."""
    X = _counts(129, 20, seed=1)
    seen = []
    original = _svi.step_cols

    def recording(*args, **kwargs):
        seen.append(args[4])
        return original(*args, **kwargs)

    _svi.step_cols = recording
    try:
        model, _ = _svi_fit(X, prior="gamma", n_epochs=30)
    finally:
        _svi.step_cols = original
    minibatch_scales = sorted(set(s for s in seen if s != 1.0))
    assert minibatch_scales == pytest.approx([129 / 128, 129.0])
    batch = VBNMF(3, prior="gamma", random_state=0, n_threads=1, tol=1e-8, max_iter=3000).fit(X)
    gap = (batch.elbo_trace_[-1] - model.elbo_trace_[-1]) / abs(batch.elbo_trace_[-1])
    assert gap < 5e-3
