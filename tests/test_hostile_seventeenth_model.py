"""The model as `VBNMF` and `tl.nmf` drive it, seventeenth hostile pass: a warm start of
`tl.nmf` under another ``prior_shape`` / ``prior_rate`` joined two models' ELBO traces;
``n_init`` starts each gave their own `ConvergenceWarning`, also when the start kept had
converged; a prior that fixes the factor shapes started (and, with SQUAREM at
``max_iter=1``, ended) at a warm start's learned shapes."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import _batch, _data, _model, tl


def _counts(seed: int = 0, n_cells: int = 60, n_genes: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.gamma(1, 1, (n_cells, 3)) @ rng.gamma(1, 1, (3, n_genes))
    return rng.poisson(means).astype(float)


def _quiet_nmf(adata, n_components, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, n_components, **params)


@pytest.mark.parametrize(
    ("stored", "changed", "named"),
    [
        ({"prior": "gamma"}, {"prior_rate": 5.0}, r"Gamma\(prior_shape=1, prior_rate=5\)"),
        ({"prior": "gamma"}, {"prior_shape": 0.5}, r"Gamma\(prior_shape=0\.5, prior_rate=1\)"),
        ({}, {"prior_shape": 0.3}, "the learned prior with prior_shape=0.3"),
        ({"prior_shape": 0.3}, {"prior_shape": 0.5}, "the learned prior with prior_shape=0.5"),
    ],
)
def test_a_warm_start_under_another_prior_shape_or_rate_is_refused(stored, changed, named):
    """Continued, the fit's trace joined the stored model's ELBOs to another model's, and
    fell where they met; ``prior=`` itself was refused, these were not. The same prior
    restated continues as before."""
    adata = ad.AnnData(sp.csr_matrix(_counts()))
    _quiet_nmf(adata, 3, max_iter=10, **stored)
    before = adata.uns["nmf"]["elbo_trace"].copy()
    with pytest.raises(ValueError, match=f"warm_start: the stored fit's prior .*not {named}"):
        tl.nmf(adata, 3, warm_start=True, max_iter=10, **changed)
    np.testing.assert_array_equal(adata.uns["nmf"]["elbo_trace"], before)  # left as it was
    _quiet_nmf(adata, 3, warm_start=True, max_iter=10, **stored)
    trace = adata.uns["nmf"]["elbo_trace"]
    assert len(trace) > len(before) and np.all(np.diff(trace) >= 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_n_init_warns_once_and_only_when_the_start_kept_did_not_converge(seed):
    """Seed 0: a start that stopped at max_iter warned although the start kept converged
    (``converged_`` True); seed 1: three starts, three identical warnings for one fit."""
    X = _counts()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = vbsnmf.VBNMF(3, random_state=seed, n_init=3, max_iter=60, prior="gamma").fit(X)
    warned = [w for w in caught if issubclass(w.category, vbsnmf.ConvergenceWarning)]
    # the starts on their own: at least one of them stopped at max_iter either way
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        starts = [
            _batch.fit_batch(
                _data.as_count_data(sp.csr_array(X)),
                _model.random_start(X.shape, 3, X.sum(), seed, np.float64, index),
                _model.GammaPrior(1.0, 1.0),
                max_iter=60,
                tol=1e-5,
            )
            for index in range(3)
        ]
    assert not all(start.converged for start in starts)
    best = max(starts, key=lambda start: start.elbo_trace[-1])
    np.testing.assert_allclose(model.elbo_trace_, best.elbo_trace, rtol=1e-12)
    assert len(warned) == (0 if model.converged_ else 1)
    assert model.converged_ is (seed == 0)
    if warned:
        assert "max_iter=60" in str(warned[0].message)
        assert warned[0].filename == __file__  # the user's line, as any fit's warning


def test_n_init_lets_a_filter_turn_only_the_kept_starts_warning_into_an_error():
    """A filter that turns ConvergenceWarning into an error stops a fit whose kept start
    did not converge, and no longer one whose discarded starts did not."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", vbsnmf.ConvergenceWarning)
        with pytest.raises(vbsnmf.ConvergenceWarning, match="max_iter=60"):
            vbsnmf.VBNMF(3, random_state=1, n_init=3, max_iter=60, prior="gamma").fit(_counts())
        # the start kept converged: no error although other starts stopped at max_iter
        model = vbsnmf.VBNMF(3, random_state=0, n_init=3, max_iter=60, prior="gamma")
        assert model.fit(_counts()).converged_


def test_a_prior_that_fixes_the_factor_shapes_overrides_a_warm_starts_learned_ones():
    """``VBNMF(prior_shape=0.3).fit(X, init=learned)`` started from the init's learned
    a_l, c_l (8.3, 2.6, 4.4 here), and SQUAREM's ``max_iter=1``, which returns the start,
    returned them as the fit's hyperparameters_ (transform then projected under them)."""
    X = _counts(n_cells=40, n_genes=25)
    learned = vbsnmf.VBNMF(3, random_state=0).fit(X)
    assert np.all(learned.hyperparameters_["cell_factor_shape"] > 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.VBNMF(3, prior_shape=0.3, random_state=0, max_iter=1)
        model.fit(X, init=learned)
    assert model.n_iter_ == 1 and len(model.elbo_trace_) == 0  # the start itself
    for side in ("cell", "gene"):
        np.testing.assert_array_equal(model.hyperparameters_[f"{side}_factor_shape"], 0.3)
    # the start's q otherwise is the init's
    np.testing.assert_array_equal(model.cell_shape_, learned.cell_shape_)
