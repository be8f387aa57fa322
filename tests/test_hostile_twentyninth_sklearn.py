"""Hostile pass 29, scikit-learn face: see each test's docstring."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from vbsnmf import VBNMF, VBNTF

pytestmark = [
    pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]


def _counts(n_cells: int = 30, n_genes: int = 8) -> np.ndarray:
    return np.random.default_rng(0).poisson(2, size=(n_cells, n_genes)).astype(float)


def _model(**params) -> VBNMF:
    return VBNMF(2, prior="gamma", max_iter=30, random_state=0, n_threads=1, **params)


def _mask(X: np.ndarray) -> np.ndarray:
    mask = np.zeros_like(X)
    mask[::4, 1] = 1
    return mask


def test_metadata_routing_passes_mask_through_a_pipeline():
    """Under scikit-learn's metadata routing, `set_fit_request(mask=True)` routes a
    pipeline's ``mask`` to `VBNMF.fit` (the same fit as called directly). `VBNMF` had
    neither ``set_fit_request`` nor ``get_metadata_routing``, so a pipeline refused
    ``mask`` (and ``vbnmf__mask`` is refused under routing too): no way to pass it."""
    X = _counts()
    with sklearn.config_context(enable_metadata_routing=True):
        pipe = make_pipeline(FunctionTransformer(), _model().set_fit_request(mask=True))
        pipe.fit(X, mask=_mask(X))
    direct = _model().fit(X, mask=_mask(X))
    assert np.array_equal(pipe[-1].components_, direct.components_)
    assert not np.array_equal(_model().fit(X).components_, direct.components_)


def test_metadata_routing_splits_the_mask_by_fold():
    """`cross_val_score` routes a requested ``mask`` row by row with the folds: each fold's
    fit equals the direct fit of its rows with their rows of the mask."""
    X, mask = _counts(), _mask(_counts())
    model = _model()

    def score(estimator, X_test, y=None):
        return float(estimator.components_.sum())

    with sklearn.config_context(enable_metadata_routing=True):
        scores = cross_val_score(
            model.set_fit_request(mask=True), X, scoring=score, cv=3, params={"mask": mask}
        )
    train = np.arange(10, 30)  # the first fold's training rows (KFold, no shuffle)
    expected = _model().fit(X[train], mask=mask[train]).components_.sum()
    assert scores[0] == pytest.approx(expected, rel=1e-12)


def test_metadata_requests_follow_sklearns_rules():
    """The requests as scikit-learn's own estimators keep them: none by default (a
    meta-estimator given ``mask`` asks for one), refused while routing is off, unknown
    names refused, kept by ``clone`` and by pickling; `VBNTF` requests its ``values``."""
    assert VBNMF(2).get_metadata_routing().fit.requests == {
        "init": None,
        "callback": None,
        "mask": None,
    }
    with pytest.raises(RuntimeError, match="metadata routing is enabled"):
        VBNMF(2).set_fit_request(mask=True)
    X = _counts()
    with sklearn.config_context(enable_metadata_routing=True):
        with pytest.raises(TypeError, match="Unexpected args"):
            VBNMF(2).set_fit_request(weights=True)
        with pytest.raises(ValueError, match=r"\[mask\] are passed but are not explicitly set"):
            make_pipeline(FunctionTransformer(), _model()).fit(X, mask=_mask(X))
        requested = _model().set_fit_request(mask=True, init=False)
        tensor = VBNTF(2).set_fit_request(values=True)
    for copy in (clone(requested), pickle.loads(pickle.dumps(requested))):
        assert copy.get_metadata_routing().fit.requests["mask"] is True
        assert copy.get_metadata_routing().fit.requests["init"] is False
    assert tensor.get_metadata_routing().fit.requests["values"] is True


def test_routing_off_leaves_pipelines_as_they_were():
    """A guard (passes on both): without routing, ``vbnmf__mask`` still reaches the fit."""
    X = _counts()
    pipe = make_pipeline(FunctionTransformer(), _model()).fit(X, vbnmf__mask=_mask(X))
    assert np.array_equal(pipe[-1].components_, _model().fit(X, mask=_mask(X)).components_)


@pytest.mark.parametrize("dtype", ["Int64", "Float64"])
@pytest.mark.parametrize("method", ["fit", "transform"])
def test_pandas_missing_value_reported_as_nan(dtype, method):
    """pd.NA in a nullable column is reported as the NaN it stands for, with its place
    (ValueError, as a NaN or None there): it raised TypeError with Python's own words
    ("float() argument must be ... not 'NAType'"); scikit-learn reads it as NaN too."""
    X = pd.DataFrame({"a": [1, 2, 3, 4], "b": pd.array([1, None, 2, 0], dtype=dtype)})
    model = _model()
    if method == "transform":
        model.fit(X.fillna(0))
    with pytest.raises(ValueError, match=r"1 NaN entry at \(row, column\) \(1, 1\)"):
        getattr(model, method)(X)


def test_pandas_missing_value_in_mask_refused_as_not_finite():
    """pd.NA in a nullable ``mask`` is refused as not finite, as NaN is there (it raised
    TypeError with Python's own words)."""
    X = _counts(4, 2)
    mask = pd.DataFrame({"a": [0, 0, 1, 0], "b": pd.array([0, None, 0, 0], dtype="Int64")})
    with pytest.raises(ValueError, match="mask must hold finite numbers"):
        VBNMF(1, prior="gamma", max_iter=3, random_state=0, n_threads=1).fit(X, mask=mask)


def test_nullable_columns_without_missing_values_fit_as_numbers():
    """A guard (passes on both): nullable columns without pd.NA fit as their numbers."""
    X = _counts(12, 3)
    frame = pd.DataFrame(X.astype(int), columns=["a", "b", "c"]).astype("Int64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.array_equal(_model().fit_transform(frame), _model().fit_transform(X))


@pytest.mark.parametrize(
    ("estimator", "shown"),
    [
        (VBNMF(2, max_iter=1000.0), "max_iter=1000.0"),
        (VBNMF(2, verbose=0), "verbose=0"),
        (VBNMF(2, max_iter=np.int64(1000)), "max_iter=np.int64(1000)"),
        (VBNTF(2, max_iter=1000.0), "max_iter=1000.0"),
    ],
)
def test_repr_shows_parameters_of_another_type_than_the_default(estimator, shown):
    """A parameter equal to its default in value but not in type is shown, as
    scikit-learn shows it: ``VBNMF(2, max_iter=1000.0)`` printed as ``VBNMF(n_components=2)``
    though `fit` refuses the float, so the repr in a search's or an error's message named
    a default estimator."""
    assert shown in repr(estimator)


def test_repr_hides_defaults():
    """A guard (passes on both): defaults given again are not shown."""
    assert repr(VBNMF(2, max_iter=1000, tol=1e-5, dtype=np.float64)) == "VBNMF(n_components=2)"
