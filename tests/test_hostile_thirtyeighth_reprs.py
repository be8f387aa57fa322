"""38th hostile pass (second wave): what users see when they print things.

The q of a fit (`vbsnmf.VariationalParams`, handed to a callback and held by a
`vbsnmf.DaskFitResult`), a tensor's q, `vbsnmf.classic.choose_alpha_beta`'s result and an
estimator given an array printed every number of their arrays (the dataclass default repr):
hundreds of lines for a small data set, also inside error messages that quote them. They
print each array's shape and dtype now, as numpy and anndata summarise. The public errors
and warnings were named by their private modules in tracebacks
(``vbsnmf._checkpoint.CheckpointError``); now by their public names.
"""

from __future__ import annotations

import pickle
import traceback

import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf._model import ScaleState, VariationalParams
from vbsnmf._tensor import TensorParams

N_CELLS, N_GENES, K = 240, 150, 4
# a repr of a few arrays stays on a line or two; the full arrays took ~50,000 characters
SHORT = 600


def _params(learned: bool = False) -> VariationalParams:
    rng = np.random.default_rng(0)
    cells, genes = rng.gamma(2.0, size=(N_CELLS, K)), rng.gamma(2.0, size=(N_GENES, K))
    if not learned:
        return VariationalParams(cells, np.ones(K), genes, np.ones(K))

    def scale(n: int) -> ScaleState:
        return ScaleState(np.ones(n), np.ones(n), np.full(K, 0.3), 1.0, 2.0)

    return VariationalParams(
        cells, np.ones((N_CELLS, K)), genes, np.ones((N_GENES, K)), scale(N_CELLS), scale(N_GENES)
    )


@pytest.fixture(scope="module")
def callback_params() -> VariationalParams:
    """The q a callback receives from a tiny fit."""
    counts = np.random.default_rng(1).poisson(0.5, size=(N_CELLS, N_GENES)).astype(np.float64)
    seen = []
    model = vbsnmf.VBNMF(n_components=K, max_iter=2, tol=0.0, random_state=0)
    with pytest.warns(vbsnmf.ConvergenceWarning):
        model.fit(sp.csr_matrix(counts), callback=lambda n, params, trace: seen.append(params))
    return seen[-1]


def test_callback_params_repr_shows_shapes_not_numbers(callback_params):
    shown = repr(callback_params)
    assert len(shown) < SHORT and shown.count("\n") == 0
    assert shown.startswith("VariationalParams(row_shape=<ndarray (240, 4) float64>")
    assert "col_shape=<ndarray (150, 4) float64>" in shown
    assert str(callback_params) == shown


@pytest.mark.parametrize("learned", [False, True])
def test_params_repr_short_and_pickling_equality_unchanged(learned):
    params = _params(learned)
    shown = repr(params)
    assert len(shown) < 2 * SHORT and "\n" not in shown
    assert "row_rate=" in shown and "col_scale=" in shown
    if learned:
        assert "row_scale=ScaleState(shape=<ndarray (240,) float64>" in shown
        assert "prior_shape=1.0, prior_mean=2.0" in shown
    again = pickle.loads(pickle.dumps(params))
    assert type(again) is VariationalParams
    for a, b in zip(again.as_tuple(), params.as_tuple()):
        np.testing.assert_array_equal(a, b)
    assert params.copy() is not params and repr(params.copy()) == shown


def test_dask_fit_result_repr_is_short():
    trace = np.linspace(-1e4, -9e3, 300)
    result = vbsnmf.DaskFitResult(
        _params(), trace, np.arange(1, 301), 300, True, [8000] * 300, [9000] * 300
    )
    shown = repr(result)
    assert len(shown) < 2 * SHORT and "\n" not in shown
    assert shown.startswith("DaskFitResult(params=VariationalParams(")
    assert "elbo_trace=<ndarray (300,) float64>" in shown and "n_iter=300" in shown
    assert "converged=True" in shown and "gathered_bytes=[8000, 8000" in shown


def test_tensor_params_repr_is_short():
    rng = np.random.default_rng(2)
    shapes = [rng.gamma(2.0, size=(n, K)) for n in (120, 90, 30)]
    shown = repr(TensorParams(shapes, [np.ones(K)] * 3))
    assert len(shown) < SHORT and "\n" not in shown
    assert shown.startswith("TensorParams(shapes=[<ndarray (120, 4) float64>, <ndarray (90, 4)")


def test_score_matching_result_repr_is_short():
    rng = np.random.default_rng(3)
    counts = rng.poisson(2.0, size=(30, 20)) + 1.0
    grid = np.linspace(-1.0, 2.0, 13)
    result = vbsnmf.classic.choose_alpha_beta(
        counts, Q=np.full((30, 20), 3.0), alphas=grid, betas=grid[:12], refine=False
    )
    shown = repr(result)
    assert len(shown) < SHORT and "\n" not in shown
    assert shown.startswith(f"ScoreMatchingResult(alpha={result.alpha!r}, beta=")
    assert "alphas=<ndarray (13,) float64>" in shown
    assert "surface=<ndarray (13, 12) float64>" in shown


def test_estimator_repr_and_messages_with_arrays_are_short():
    """An array (or a q) given as ``init=``, where fit's is meant: the repr, the HTML repr,
    set_params' error and fit's error stay short."""
    model = vbsnmf.VBNMF(n_components=K, init=np.ones((N_GENES, K)))
    assert repr(model) == "VBNMF(n_components=4, init=<ndarray (150, 4) float64>)"
    assert "(150, 4)" in model._repr_html_()
    with pytest.raises(ValueError, match="Invalid parameter 'alpha'") as error:
        model.set_params(alpha=1.0)
    assert len(str(error.value)) < SHORT
    counts = sp.csr_matrix(np.ones((N_CELLS, N_GENES)))
    with pytest.raises(ValueError, match="a start to continue") as error:
        vbsnmf.VBNMF(n_components=K, init=_params()).fit(counts)
    assert len(str(error.value)) < SHORT and "VariationalParams(row_shape=<ndarray" in str(
        error.value
    )


@pytest.mark.parametrize(
    ("public", "error"),
    [
        ("vbsnmf.CheckpointError", vbsnmf.CheckpointError("checkpoint is damaged")),
        ("vbsnmf.CheckpointMismatchError", vbsnmf.CheckpointMismatchError("other data")),
        ("vbsnmf.CheckpointInUseError", vbsnmf.CheckpointInUseError("in use")),
        ("vbsnmf.io.ReadError", vbsnmf.io.ReadError("/no/such.h5ad", "no such file")),
        ("vbsnmf.io.UnsafePathError", vbsnmf.io.UnsafePathError("would overwrite")),
        ("vbsnmf.ConvergenceWarning", vbsnmf.ConvergenceWarning("stopped at max_iter")),
        ("vbsnmf.NonCountWarning", vbsnmf.NonCountWarning("not counts")),
    ],
)
def test_errors_named_by_public_name_in_tracebacks(public, error):
    (line,) = traceback.format_exception_only(type(error), error)
    assert line == f"{public}: {error}\n"
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)
