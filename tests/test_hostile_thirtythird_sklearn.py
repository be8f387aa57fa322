"""Hostile pass 33, scikit-learn face: pickling of vbsnmf's errors (across processes), the
repr and notebook display under scikit-learn's settings, and guards of the estimator
contract (clone, parameters, pickled fits, refits, containers, feature names). See each
test's docstring; a guard that passes on the code before this pass says so."""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn
import sklearn.exceptions
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

import vbsnmf
from vbsnmf import VBNMF, VBNTF
from vbsnmf._base import NotFittedError
from vbsnmf.classic import NMF
from vbsnmf.io import ReadError

pytestmark = [
    pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]


def _counts(n_cells: int = 40, n_genes: int = 10) -> np.ndarray:
    return np.random.default_rng(0).poisson(1.5, size=(n_cells, n_genes)).astype(float)


def _frame(X: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        X,
        columns=[f"g{j}" for j in range(X.shape[1])],
        index=[f"c{i}" for i in range(X.shape[0])],
    )


def _not_fitted_error() -> NotFittedError:
    with pytest.raises(sklearn.exceptions.NotFittedError) as caught:
        VBNMF(2).transform(_counts())
    return caught.value


def _transform_unfitted(n_components: int):
    """A worker's job (module level, so a spawned process can import it)."""
    import sklearn  # noqa: F401  (loaded, as scanpy loads it)

    return VBNMF(n_components).transform(_counts())


# -- errors across processes ------------------------------------------------------------


def test_not_fitted_error_survives_pickling():
    """The `NotFittedError` raised while scikit-learn is loaded (a subclass of vbsnmf's and
    of scikit-learn's, made at run time) could not be pickled: pickle looked its class up
    by module and name and found vbsnmf's own ("not the same object"). Unpickled, it is
    again of both classes, with its message."""
    error = _not_fitted_error()
    copied = pickle.loads(pickle.dumps(error))
    assert isinstance(copied, sklearn.exceptions.NotFittedError)
    assert isinstance(copied, NotFittedError)
    assert type(copied) is type(error)
    assert str(copied) == str(error)
    assert type(copy.deepcopy(error)) is type(error)


def test_convergence_warning_raised_as_error_survives_pickling():
    """The same for `ConvergenceWarning` under ``warnings.simplefilter("error")``, as a
    worker running fits with warnings as errors raises it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(sklearn.exceptions.ConvergenceWarning) as caught:
            VBNMF(2, prior="gamma", max_iter=2, random_state=0, n_threads=1).fit(_counts())
    warning = caught.value
    copied = pickle.loads(pickle.dumps(warning))
    assert isinstance(copied, vbsnmf.ConvergenceWarning)
    assert isinstance(copied, sklearn.exceptions.ConvergenceWarning)
    assert str(copied) == str(warning)


def test_pool_worker_not_fitted_error_reaches_the_parent():
    """A `multiprocessing` pool's worker raising `NotFittedError` gave the parent
    ``MaybeEncodingError: Error sending result ... PicklingError``, not the error."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        with pytest.raises(sklearn.exceptions.NotFittedError, match="not fitted yet"):
            pool.map(_transform_unfitted, [2])


def test_flavoured_error_unpickled_where_sklearn_is_not_loaded():
    """Unpickled in a process that has not loaded scikit-learn, the error is still caught
    by scikit-learn's class (scikit-learn is imported for it)."""
    payload = pickle.dumps(_not_fitted_error())
    script = (
        "import pickle, sys\n"
        "assert 'sklearn' not in sys.modules\n"
        "error = pickle.loads(sys.stdin.buffer.read())\n"
        "from sklearn.exceptions import NotFittedError\n"
        "from vbsnmf._base import NotFittedError as Ours\n"
        "assert isinstance(error, NotFittedError) and isinstance(error, Ours)\n"
        "print('caught by both')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=payload, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "caught by both"


def test_read_error_survives_pickling(tmp_path):
    """`vbsnmf.io.ReadError` takes (path, reason): unpickling called it with the message
    alone (TypeError), so ``Pool.map(vbsnmf.io.read, paths)`` hung on a missing file (its
    result thread died unpickling the error). Now the copy has the path, reason and
    message."""
    with pytest.raises(ReadError) as caught:
        vbsnmf.io.read(tmp_path / "missing.h5ad")
    error = caught.value
    copied = pickle.loads(pickle.dumps(error))
    assert type(copied) is ReadError
    assert (copied.path, copied.reason, str(copied)) == (error.path, error.reason, str(error))
    assert str(copy.copy(error)) == str(error)


# -- repr and display under scikit-learn's settings --------------------------------------


@pytest.mark.parametrize(
    ("estimator", "shown"),
    [
        (VBNMF(3), ["n_components=3", "prior='hierarchical'", "max_iter=1000", "resume=False"]),
        (VBNTF(3), ["n_components=3", "prior='gamma'", "max_iter=1000"]),
    ],
)
def test_repr_shows_every_parameter_when_sklearn_asks(estimator, shown):
    """Under ``sklearn.set_config(print_changed_only=False)`` scikit-learn's estimators
    print every parameter; `VBNMF` and `VBNTF` printed the changed ones only. By default
    they still do."""
    with sklearn.config_context(print_changed_only=False):
        text = repr(estimator)
    for part in shown:
        assert part in text, text
    assert text.count("=") == len(estimator.get_params())
    assert repr(estimator) == f"{type(estimator).__name__}(n_components=3)"


def test_notebook_shows_text_under_display_text():
    """Under ``sklearn.set_config(display="text")`` a notebook shows scikit-learn's
    estimators as text; `VBNMF` still gave its HTML diagram. The diagram stays the default."""
    with sklearn.config_context(display="text"):
        assert VBNMF(3)._repr_html_() is None
    assert "<div" in VBNMF(3)._repr_html_()


# -- guards of the contract (pass on the code before this pass too) ----------------------


def _non_default_vbnmf() -> VBNMF:
    return VBNMF(
        3,
        prior="gamma",
        prior_shape=0.5,
        prior_rate=2.0,
        accelerate=True,
        max_iter=7,
        tol=1e-3,
        n_init=2,
        init="random",
        random_state=5,
        n_threads=1,
        dtype=np.float32,
        verbose=False,
        solver="batch",
        svi_form="nonzeros",
        batch_size=11,
        tau=2.0,
        kappa=0.9,
        n_epochs=4,
        eval_every=2,
        checkpoint=None,
        checkpoint_every=3,
        resume=False,
    )


@pytest.mark.parametrize(
    "estimator",
    [
        _non_default_vbnmf(),
        VBNTF(4, prior="hierarchical", max_iter=9, tol=1e-3, random_state=2, svi_mode=1),
        NMF(4, loss="beta", beta=0.5, epsilon=1e-3, thin=True, max_iter=9, init="random"),
    ],
)
def test_clone_and_set_params_round_trip_every_parameter(estimator):
    """Guard: `clone` gives every constructor parameter back (by identity for immutable
    values); `set_params` of the clone's parameters onto a default estimator gives the same
    parameters and repr; an unknown name is a ValueError naming it."""
    params = estimator.get_params()
    cloned = clone(estimator)
    assert cloned.get_params() == params
    fresh = type(estimator)().set_params(**params)
    assert fresh.get_params() == params
    assert repr(fresh) == repr(estimator)
    with pytest.raises(ValueError, match="Invalid parameter 'no_such'"):
        type(estimator)().set_params(no_such=1)


@pytest.mark.parametrize("make", [lambda: VBNMF(3, random_state=0, n_threads=1), NMF])
def test_unpickled_and_deep_copied_fits_transform_to_the_same_bits(make):
    """Guard: a fitted estimator pickled, or deep-copied, transforms to the same bits and
    keeps its `set_output` container."""
    model = make() if not isinstance(make, type) else make(3, random_state=0)
    X = _frame(_counts())
    model.set_output(transform="pandas").fit(X)
    expected = model.transform(X)
    for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        result = copied.transform(X)
        assert isinstance(result, pd.DataFrame)
        assert list(result.columns) == list(model.get_feature_names_out())
        assert np.array_equal(result.to_numpy(), expected.to_numpy())


@pytest.mark.parametrize("estimator", [VBNMF(2, random_state=0, n_threads=1), NMF(2)])
def test_second_fit_forgets_the_first(estimator):
    """Guard: a fit of a frame with gene names, then of an array of other width: the names
    and width are the second fit's (transform then takes the new width without a names
    warning); `clone` of the fitted estimator is unfitted."""
    estimator.fit(_frame(_counts()))
    assert estimator.n_features_in_ == 10
    estimator.fit(_counts(n_genes=6))
    assert not hasattr(estimator, "feature_names_in_")
    assert estimator.n_features_in_ == 6 and estimator.components_.shape == (2, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", category=vbsnmf.ConvergenceWarning)
        warnings.filterwarnings("ignore", category=sklearn.exceptions.ConvergenceWarning)
        assert estimator.transform(_counts(n_genes=6)).shape == (40, 2)
    with pytest.raises(sklearn.exceptions.NotFittedError):
        clone(estimator).transform(_counts(n_genes=6))


@pytest.mark.parametrize("estimator", [VBNMF(2, random_state=0, n_threads=1), NMF(2)])
def test_feature_name_checks_follow_sklearn(estimator):
    """Guard: scikit-learn's messages and warning types on transform: names in another
    order or unseen are a ValueError; an array for a frame fit a UserWarning, and then
    another width scikit-learn's "X has 9 features" ValueError."""
    X = _frame(_counts())
    estimator.fit(X)
    with pytest.raises(ValueError, match="same order as they were in fit"):
        estimator.transform(X.iloc[:, ::-1])
    with pytest.raises(ValueError, match="Feature names unseen at fit time:\n- x"):
        estimator.transform(X.rename(columns={"g0": "x"}))
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        estimator.transform(X.to_numpy())
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        with pytest.raises(ValueError, match=r"X has 9 features, but \w+ is expecting 10"):
            estimator.transform(X.to_numpy()[:, :9])


def test_fitted_attributes_types_match_sklearns_nmf():
    """Guard: `n_iter_` an int, `components_` (K, genes) C-contiguous in the fit's dtype,
    `reconstruction_err_` of the classical `NMF` a float, as scikit-learn's `NMF`."""
    X = _counts()
    for dtype in (np.float64, np.float32):
        model = VBNMF(2, random_state=0, n_threads=1, dtype=dtype).fit(X)
        assert type(model.n_iter_) is int and type(model.converged_) is bool
        assert model.components_.dtype == dtype and model.components_.flags.c_contiguous
        classic = NMF(2, random_state=0).fit(X.astype(dtype))
        assert type(classic.n_iter_) is int and classic.components_.dtype == dtype
        assert isinstance(classic.reconstruction_err_, float)


def test_grid_of_numpy_scalars_and_custom_scorer():
    """Guard: a `GridSearchCV` grid of numpy scalars (``np.arange``, ``np.array`` of
    floats) with a custom scorer (VBNMF has no ``score``) fits every candidate, refits the
    best, and its estimator transforms as a direct fit of those parameters does."""
    X = _counts(60)

    def held_out_fit(estimator, X_test, y=None):
        return -float(
            np.abs(X_test - estimator.inverse_transform(estimator.transform(X_test))).sum()
        )

    search = GridSearchCV(
        VBNMF(2, random_state=0, n_threads=1, max_iter=40),
        {"n_components": np.arange(2, 4), "tol": np.array([1e-4])},
        cv=3,
        scoring=held_out_fit,
    ).fit(X)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    best = search.best_params_
    direct = VBNMF(random_state=0, n_threads=1, max_iter=40, **best).fit(X)
    assert np.array_equal(search.best_estimator_.transform(X), direct.transform(X))
