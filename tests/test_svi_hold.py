"""SVI's cells form holds a random start's factor shapes, as batch VB does (docs/model.md,
"The hold"): at 1 until an evaluation changes the ELBO by at most HOLD_TOL, then learned.

Independent references: the rule restated here from the trace the callback sees, and batch
VB's converged ELBO on data whose cells' depths span four orders of magnitude.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_array_equal

import vbsnmf
from vbsnmf import _checkpoint, _svi
from vbsnmf._model import HOLD_TOL


def _fit(model, X, **fit_args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(X, **fit_args)


def spread_depths(seed=0, n_cells=400, n_genes=150, n_components=5) -> sp.csr_array:
    """A Poisson NMF draw whose cells' depths span 3 to 45,837 counts (each cell's factors
    scaled by exp(U(-3, 4)), each gene's by exp(U(-2, 3))); empty cells and genes dropped
    (`benchmarks/svi_default_gap.py --data spread`)."""
    rng = np.random.default_rng(seed)
    cell_factors = rng.gamma(0.5, 1.0, (n_cells, n_components)) * np.exp(
        rng.uniform(-3, 4, (n_cells, 1))
    )
    gene_loadings = rng.gamma(0.3, 1.0, (n_components, n_genes)) * np.exp(
        rng.uniform(-2, 3, (1, n_genes))
    )
    X = rng.poisson(cell_factors @ gene_loadings).astype(np.float64)
    return sp.csr_array(X[X.sum(axis=1) > 0][:, X.sum(axis=0) > 0])


def _released(trace) -> int | None:
    """The index of the first ELBO value whose change from the one before is at most
    HOLD_TOL relative (restated from docs/model.md); None if none is."""
    for i in range(1, len(trace)):
        if abs(trace[i] - trace[i - 1]) <= HOLD_TOL * abs(trace[i - 1]):
            return i
    return None


def _shapes_by_epoch(**options):
    """Fit the spread-depth data by SVI, recording each epoch's factor shapes (cells,
    genes) and the trace the callback saw."""
    seen = []

    def record(epoch, params, trace):
        shapes = (params.row_scale.factor_shape.copy(), params.col_scale.factor_shape.copy())
        seen.append((shapes, list(trace)))

    model = vbsnmf.VBNMF(5, random_state=0, n_threads=1, solver="svi", **options)
    return _fit(model, spread_depths(), callback=record), seen


def test_svi_defaults_on_widely_spread_depths_land_within_one_percent_of_batch_vb():
    """Cells of 3 to 45,837 counts at K = 5: with the shapes learned from the first
    minibatches SVI settled 33.8 % below batch VB, its cells' factor shapes near 0.08 and
    their scales no longer taking up the depths (docs/performance.md)."""
    X = spread_depths()
    batch = _fit(vbsnmf.VBNMF(5, random_state=0, n_threads=1), X)
    svi = _fit(vbsnmf.VBNMF(5, random_state=0, n_threads=1, solver="svi"), X)
    assert batch.converged_ and svi.converged_
    gap = (batch.elbo_trace_[-1] - svi.elbo_trace_[-1]) / abs(batch.elbo_trace_[-1])
    assert gap < 0.01, f"SVI's defaults end {gap:.2%} below batch VB"


def test_a_fresh_svi_fit_holds_its_factor_shapes_at_one_until_the_release():
    """Every epoch's shapes are 1 on both sides while no evaluation before it changed the
    ELBO by at most HOLD_TOL (the step after the releasing evaluation learns them), and
    learned after; the stopping rule counts only the evaluations from the release on."""
    model, seen = _shapes_by_epoch()
    held = [_released(trace[:-1]) is None for _, trace in seen]
    assert held[0] and not held[-1]
    for (shapes, _), holding in zip(seen, held):
        assert all(np.all(side == 1.0) for side in shapes) == holding
    release = _released(model.elbo_trace_)
    assert model.converged_
    assert len(model.elbo_trace_) - release > _svi.STOP_RUN
    learned = model.hyperparameters_["cell_factor_shape"]
    assert not np.any(learned == 1.0)


def test_fixed_factor_shapes_and_warm_starts_are_not_held():
    """A prior_shape fixes the shapes from the first step; a warm start (`fit(X,
    init=...)`) learns them from its first step, as batch VB's warm starts do. (A guard:
    it passes before the hold too.)"""
    _, seen = _shapes_by_epoch(prior_shape=0.3, n_epochs=2)
    for shapes, _ in seen:
        assert all(np.all(side == 0.3) for side in shapes)
    X = spread_depths()
    start = _fit(vbsnmf.VBNMF(5, random_state=0, n_threads=1), X)
    seen = []

    def record(epoch, params, trace):
        seen.append(params.row_scale.factor_shape.copy())

    model = vbsnmf.VBNMF(5, random_state=0, n_threads=1, solver="svi", n_epochs=1)
    _fit(model, X, init=start, callback=record)
    assert not np.any(seen[0] == 1.0)


def test_an_svi_fit_stopped_during_its_hold_resumes_bitwise(tmp_path):
    """The checkpoint records that the fit is held: resumed, it holds, releases and
    stops where the uninterrupted fit does. A checkpoint from before the hold (no flag)
    resumes without one."""
    path = tmp_path / "svi.ckpt"

    class Stop(Exception):
        pass

    def stop_after_the_second_epoch(epoch, params, trace):
        if epoch >= 2:
            raise Stop

    def model(**more):
        options = {"n_epochs": 30, **more}
        return vbsnmf.VBNMF(5, random_state=0, n_threads=1, solver="svi", **options)

    X = spread_depths()
    with pytest.raises(Stop):
        _fit(model(checkpoint=path), X, callback=stop_after_the_second_epoch)
    arrays, meta = _checkpoint.load_checkpoint(path)
    assert meta["held"] and _released(list(arrays["elbo_trace"])) is None
    resumed = _fit(model(checkpoint=path, resume=True), X)
    uninterrupted = _fit(model(), X)
    assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)
    assert_array_equal(resumed.gene_shape_, uninterrupted.gene_shape_)

    del meta["held"]
    _checkpoint.save_checkpoint(path, arrays, meta)
    seen = []

    def record(epoch, params, trace):
        seen.append(params.row_scale.factor_shape.copy())

    _fit(model(checkpoint=path, resume=True, n_epochs=3), X, callback=record)
    assert not np.any(seen[0] == 1.0)
