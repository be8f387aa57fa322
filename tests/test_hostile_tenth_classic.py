"""A tenth hostile pass on `vbsnmf.classic` and the transformer contract: each test here
failed on the code before its fix.

- The Frobenius loss was ``||X||^2 - 2 <W, X H^T> + <W^T W, H H^T>``, which cancels
  catastrophically at a large entry: with one count of 2**31 `NMF` reported
  ``loss_ = 2048`` for a true 1437.5, and the sparse route could return a negative loss. It
  is now ``sum (x - q)**2`` at the stored entries plus the zeros' ``sum q**2`` (summed term
  by term in a row where the subtraction would lose its digits).
- Neither `NMF` nor `VBNMF` had ``get_feature_names_out``, so scikit-learn refused
  ``set_output(transform="pandas")`` on a pipeline holding them.
- `NMF.transform` started every row from the batch's mean and stopped on the batch's loss:
  a row's W changed with the rows transformed with it. Each row now starts from its own
  total and stops on its own loss (and IPG takes one step length per row).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF as SklearnNMF
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import check_methods_subset_invariance

import vbsnmf
from vbsnmf.classic import NMF, factor_loss

pytestmark = [
    pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]


def _squared_residual(X, W, H) -> float:
    """``||X - W H||^2`` the plain way, on a small dense X."""
    return float(np.sum((np.asarray(X.todense() if sp.issparse(X) else X) - W @ H) ** 2))


# -- 1: the Frobenius loss at an extreme count ----------------------------------------------


@pytest.fixture(scope="module")
def extreme_fit():
    """X with one huge count, and factors that fit it (HALS): the regime of the
    cancellation, which every solver then continues from."""
    X = np.random.default_rng(0).poisson(0.7, (30, 20)).astype(float)
    X[0, 0] = 2.0**31  # one huge (valid) count
    model = NMF(3, solver="hals", init="random", random_state=0, max_iter=40, tol=0)
    return X, model.fit_transform(X), model.components_


# The dense multiplicative route sums d(x, q) entry by entry already.
ROUTES = [(s, "dense") for s in ("hals", "als", "pg", "ipg", "gd")] + [
    (s, "sparse") for s in ("hals", "als", "pg", "ipg", "gd", "mu")
]


@pytest.mark.parametrize(("solver", "layout"), ROUTES)
def test_frobenius_loss_is_the_residual_at_an_extreme_count(extreme_fit, solver, layout):
    X, W0, H0 = extreme_fit
    data = sp.csr_matrix(X) if layout == "sparse" else X
    model = NMF(3, solver=solver, loss="frobenius", init="custom", max_iter=20, tol=0)
    W = model.fit_transform(data, W=W0.copy(), H=H0.copy())
    true = _squared_residual(X, W, model.components_)
    assert model.loss_ == pytest.approx(true, rel=1e-9)
    assert model.reconstruction_err_ == pytest.approx(np.sqrt(true), rel=1e-9)
    if solver != "als":  # descent methods: a trace free of rounding steps
        trace = model.loss_trace_
        assert np.all(np.diff(trace) <= 1e-9 * trace[:-1])


@pytest.mark.parametrize("n_cols", [30, 5000])  # one column tile, and three
def test_sparse_frobenius_loss_keeps_the_zeros_of_a_row_with_a_huge_entry(n_cols):
    """Factors whose product is 2**31 at one stored entry of row 0 and about 1 at its
    zeros: that row's zeros' ``sum q**2`` is its total minus 4.6e18, which the subtraction
    alone gets wrong by ~1e3."""
    rng = np.random.default_rng(2)
    X = rng.poisson(0.5, (40, n_cols)).astype(float)
    X[0, 0] = 2.0**31
    W, H = rng.random((40, 3)), rng.random((3, n_cols))
    W[1:, 0] = 0.0
    H[0, 1:] = 0.0
    W[0, 0] = H[0, 0] = 2.0**15.5
    true = _squared_residual(X, W, H)
    assert factor_loss(sp.csr_matrix(X), W, H, "frobenius") == pytest.approx(true, rel=1e-12)
    assert factor_loss(sp.csr_matrix(X), W, H, "beta", beta=1.0) == pytest.approx(
        true / 2, rel=1e-12
    )


def test_sparse_multiplicative_frobenius_loss_of_one_column_is_not_negative():
    X = sp.csr_matrix(np.random.default_rng(1).poisson(3.0, (20, 1)).astype(float))
    model = NMF(1, solver="mu", loss="frobenius", max_iter=100)
    W = model.fit_transform(X)
    assert model.loss_ >= 0.0
    assert np.all(model.loss_trace_ >= 0.0)
    assert model.loss_ == pytest.approx(_squared_residual(X, W, model.components_), abs=1e-20)


# -- 3: feature names out and set_output ----------------------------------------------------


def _counts_frame() -> pd.DataFrame:
    X = np.random.default_rng(0).poisson(2, (30, 20)).astype(float)
    return pd.DataFrame(
        X, columns=[f"gene{j}" for j in range(20)], index=[f"cell{i}" for i in range(30)]
    )


TRANSFORMERS = {
    "nmf": lambda: vbsnmf.NMF(3, max_iter=50, random_state=0),
    "vbnmf": lambda: vbsnmf.VBNMF(3, max_iter=20, random_state=0, n_threads=1),
}


@pytest.mark.parametrize("prefix", sorted(TRANSFORMERS))
def test_pipeline_with_pandas_output_names_the_components(prefix):
    X = _counts_frame()
    expected = [f"{prefix}{k}" for k in range(3)]
    plain = TRANSFORMERS[prefix]().fit_transform(X)  # no configuration: a numpy array
    pipeline = make_pipeline(TRANSFORMERS[prefix]()).set_output(transform="pandas")
    out = pipeline.fit_transform(X)
    assert isinstance(plain, np.ndarray)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == expected
    assert list(out.index) == list(X.index)
    np.testing.assert_allclose(out.to_numpy(), plain, rtol=1e-12)
    new = pipeline.transform(X.iloc[:5])
    assert list(new.columns) == expected and list(new.index) == list(X.index[:5])
    assert list(pipeline.get_feature_names_out()) == expected


@pytest.mark.parametrize("prefix", sorted(TRANSFORMERS))
def test_get_feature_names_out_as_scikit_learn(prefix):
    X = _counts_frame()
    estimator = TRANSFORMERS[prefix]()
    with pytest.raises(NotFittedError):
        estimator.get_feature_names_out()
    estimator.fit(X)
    theirs = SklearnNMF(3, max_iter=50).fit(X).get_feature_names_out()
    ours = estimator.get_feature_names_out(list(X.columns))
    assert ours.dtype == object and list(ours) == [name.replace("nmf", prefix) for name in theirs]
    with pytest.raises(ValueError, match="input_features is not equal to feature_names_in_"):
        estimator.get_feature_names_out([f"other{j}" for j in range(20)])
    estimator.fit(X.to_numpy())  # no names fitted: only the length is checked
    assert len(estimator.get_feature_names_out([f"x{j}" for j in range(20)])) == 3
    with pytest.raises(ValueError, match="input_features should have length equal"):
        estimator.get_feature_names_out(["x0"])
    # VBNTF shares VBNMF's duck-typed base but has no 2-D transform: neither method.
    assert not hasattr(vbsnmf.VBNTF(2), "set_output")
    assert not hasattr(vbsnmf.VBNTF(2), "get_feature_names_out")


# -- 5: NMF.transform row by row -------------------------------------------------------------

TRANSFORM_CASES = {
    "gd": {"solver": "gd"},
    "ipg": {"solver": "ipg"},
    "hals": {"solver": "hals"},
    "pg": {"solver": "pg"},
    "mu-kl": {"solver": "mu", "loss": "kl"},
    "mu-poisson": {"solver": "mu", "loss": "poisson"},
    "mu-beta2-thin": {"solver": "mu", "loss": "beta", "beta": 2, "epsilon": 1e-6, "thin": True},
}


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("case", sorted(TRANSFORM_CASES))
def test_transform_of_a_row_does_not_depend_on_the_batch(case, layout):
    X = vbsnmf.datasets.pbmc_tiny().X.tocsr().astype(np.float64)
    model = NMF(6, random_state=0, max_iter=100, **TRANSFORM_CASES[case]).fit(X[:300])
    batch = sp.vstack([X[300:320], X[320] * 1e4]).tocsr()  # and a row 1e4 x deeper
    if layout == "dense":
        batch = batch.toarray()
    together = model.transform(batch)
    alone = np.vstack([model.transform(batch[i : i + 1]) for i in range(batch.shape[0])])
    np.testing.assert_allclose(together, alone, rtol=1e-9, atol=1e-12)


def test_scikit_learn_subset_invariance_check_passes():
    estimator = NMF(2, loss="beta", beta=2, epsilon=1e-6, thin=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_methods_subset_invariance("NMF", estimator)


@pytest.mark.parametrize("huge", [False, True])
def test_the_expansion_serves_where_it_keeps_its_digits_and_only_there(huge):
    """A half-step has ``X @ H^T`` at hand, so the loss takes the expansion
    ``||x||^2 - 2 x.q + ||q||^2`` per row where it keeps its digits (a pass over the
    nonzeros fewer: HALS took 1.7x the time per iteration without it) and the direct sums
    elsewhere: both agree with numpy's ``||X - W H||^2`` row by row."""
    from vbsnmf.classic._data import ClassicData
    from vbsnmf.classic.losses import resolve_loss

    rng = np.random.default_rng(3)
    X = sp.random(40, 30, density=0.3, random_state=3, format="csr")
    X.data = rng.poisson(3.0, X.nnz) + 1.0
    if huge:
        X[0, 0] = 2.0**31
    W, H_t = rng.uniform(0.1, 1.0, (40, 4)), rng.uniform(0.1, 1.0, (30, 4))
    if huge:  # fitted to within a few counts: the expansion's terms cancel
        W[0, 0] = H_t[0, 0] = np.sqrt(2.0**31 - 7.5)
    data = ClassicData.build(X, None, resolve_loss("frobenius"))
    np.testing.assert_allclose(data.row_squares, (X.toarray() ** 2).sum(axis=1), rtol=1e-15)
    expected = ((X.toarray() - W @ H_t.T) ** 2).sum(axis=1)
    with_product = data.squared_residuals(W, H_t, data_times=data.data_times(H_t, "rows"))
    direct = data.squared_residuals(W, H_t)
    np.testing.assert_allclose(direct, expected, rtol=1e-12)
    np.testing.assert_allclose(with_product, expected, rtol=1e-9)
    if huge:  # the expansion would have lost the first row: the direct sums served
        np.testing.assert_array_equal(with_product, direct)
