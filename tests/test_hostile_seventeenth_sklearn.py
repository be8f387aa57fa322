"""Seventeenth hostile pass, the scikit-learn contract of the estimators: each test here
failed on the code before its fix.

- ``NMF.fit`` ran through the `set_output`-wrapped ``fit_transform``: with a container that
  cannot be built it ran the whole fit, then raised, leaving the estimator fitted by the
  call that failed (``VBNMF.fit`` builds no output since the eleventh pass).
- A pandas DataFrame of sparse columns (fill value 0), as X of `VBNMF.fit` and
  `VBNMF.transform` or as ``mask``, was densified: cells x genes x 8 bytes that no memory
  check saw (the fit's guard skipped DataFrames), where scikit-learn and `NMF` read it
  sparse. `NMF` refused sparse columns of a fill value other than 0 in pandas' words.
- ``NMF(loss="poisson").inverse_transform`` returned ``W H``, each row's proportions, as the
  data back, off by each row's total.
- A ``mask`` (`VBNMF.fit`) or ``weights`` (`NMF`) DataFrame whose columns are X's genes in
  another order was matched with X by position: the wrong entries were masked, silently.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vbsnmf import VBNMF
from vbsnmf.classic import NMF

pytestmark = [
    pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::vbsnmf.NonCountWarning"),
]

GENES = [f"g{i}" for i in range(6)]


def _counts(n_rows: int = 40, n_cols: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(2.0, (n_rows, n_cols)).astype(np.float64)


def test_nmf_fit_builds_no_transform_output():
    X = _counts()
    model = NMF(2, random_state=0, max_iter=50).set_output(transform="bogus")
    assert model.fit(X) is model
    expected = NMF(2, random_state=0, max_iter=50).fit(X)
    np.testing.assert_array_equal(model.components_, expected.components_)
    # the custom start still reaches the fit, by keyword as fit_transform takes it
    W, H = np.full((40, 2), 0.5), np.full((2, 6), 0.5)
    custom = NMF(2, init="custom", max_iter=3, tol=0).set_output(transform="bogus")
    custom.fit(X, W=W, H=H)
    with pytest.raises(ValueError, match="output config"):  # fit_transform still wraps
        NMF(2, init="custom", max_iter=3, tol=0).set_output(transform="bogus").fit_transform(
            X, W=W, H=H
        )
    reference = NMF(2, init="custom", max_iter=3, tol=0)
    reference.fit_transform(X, W=W, H=H)
    np.testing.assert_array_equal(custom.components_, reference.components_)


def test_a_dataframe_of_sparse_columns_is_read_sparse():
    counts = sp.random_array((20000, 500), density=0.002, rng=0, format="csr")
    counts.data = np.ceil(counts.data * 3)
    frame = pd.DataFrame.sparse.from_spmatrix(counts)  # 80 MB dense
    options = dict(max_iter=3, random_state=0, n_threads=1, prior="gamma")
    model = VBNMF(2, **options).fit(counts[:2000])
    model.transform(frame.iloc[:50])  # compiled, imported: the peak below is the read's
    tracemalloc.start()
    try:
        got = model.transform(frame)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"{peak / 1e6:.0f} MB for a frame of 20,000 stored counts"
    np.testing.assert_array_equal(got, model.transform(counts))
    # fit and mask read it as the matrix it holds
    small = counts[:300, :40]
    small_frame = pd.DataFrame.sparse.from_spmatrix(small)
    fitted = VBNMF(2, **options).fit(small_frame)
    np.testing.assert_array_equal(fitted.components_, VBNMF(2, **options).fit(small).components_)
    mask = sp.random_array(small.shape, density=0.1, rng=1, format="csr")
    mask.data[:] = 1.0
    masked = VBNMF(2, **options).fit_transform(small, mask=pd.DataFrame.sparse.from_spmatrix(mask))
    np.testing.assert_array_equal(masked, VBNMF(2, **options).fit_transform(small, mask=mask))
    # another fill value is the value of every entry not stored: read densely, as it is
    dense = small.toarray()
    ones = pd.DataFrame(dense).astype(pd.SparseDtype(float, 1.0))
    np.testing.assert_array_equal(fitted.transform(ones), fitted.transform(dense))
    holes = pd.DataFrame(np.where(dense == 0, np.nan, dense)).astype(pd.SparseDtype(float, np.nan))
    with pytest.raises(ValueError, match="NaN entries"):
        fitted.transform(holes)
    with pytest.raises(ValueError, match=r"0 feature\(s\)"):  # no columns: no conversion
        VBNMF(1).fit(pd.DataFrame(index=range(3)))


def test_nmf_poisson_inverse_transform_is_refused_and_the_others_give_the_data():
    X = _counts(30, 8)
    poisson = NMF(2, loss="poisson", random_state=0, max_iter=300).fit(X)
    W = poisson.transform(X)
    # what it returned: rows summing to one, not X's totals
    np.testing.assert_allclose((W @ poisson.components_).sum(axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match=r"reshape\(-1, 1\) \* \(W @ model.comp"):
        poisson.inverse_transform(W)
    kl = NMF(2, loss="kl", random_state=0, max_iter=300).fit(X)
    back = kl.inverse_transform(kl.transform(X))
    np.testing.assert_array_equal(back, kl.transform(X) @ kl.components_)
    np.testing.assert_allclose(back.sum(axis=1), X.sum(axis=1), rtol=0.05)


def test_mask_and_weights_frames_in_another_gene_order_are_refused():
    rng = np.random.default_rng(1)
    X = pd.DataFrame(_counts(), columns=GENES)
    missing = pd.DataFrame(rng.random((40, 6)) < 0.2, columns=GENES)
    shuffled = missing[GENES[::-1]]
    options = dict(max_iter=5, random_state=0, n_threads=1)
    with pytest.raises(ValueError, match=r"same columns in another order.*mask\[X.columns\]"):
        VBNMF(2, **options).fit(X, mask=shuffled)
    weights = (~shuffled).astype(float)
    with pytest.raises(ValueError, match=r"same columns in another order.*weights\[X.col"):
        NMF(2, max_iter=5, weights=weights).fit(X)
    renamed = missing.rename(columns={"g0": "other"})
    with pytest.raises(ValueError, match="1 of mask's columns are not X's, 1 of X's not mask's"):
        VBNMF(2, **options).fit(X, mask=renamed)
    # in X's order they are taken, entry for entry as the arrays themselves
    np.testing.assert_array_equal(
        VBNMF(2, **options).fit_transform(X, mask=shuffled[X.columns]),
        VBNMF(2, **options).fit_transform(X.to_numpy(), mask=missing.to_numpy()),
    )
    named = NMF(2, max_iter=5, random_state=0, weights=weights[X.columns]).fit(X)
    plain = NMF(2, max_iter=5, random_state=0, weights=(~missing).astype(float).to_numpy()).fit(
        X.to_numpy()
    )
    np.testing.assert_array_equal(named.components_, plain.components_)
    # names on one side only: positions, as before (nothing to compare)
    VBNMF(2, **options).fit(X, mask=missing.to_numpy())
    mixed = missing.set_axis([0, *GENES[1:]], axis=1)
    with pytest.raises(TypeError, match=r"mask's column names mix types \['int', 'str'\]"):
        VBNMF(2, **options).fit(X, mask=mixed)


def test_the_memory_guard_sees_a_dataframe_of_sparse_columns(monkeypatch):
    from vbsnmf import _memory

    counts = sp.random_array((300, 40), density=0.05, rng=0, format="csr")
    counts.data = np.ceil(counts.data * 3)
    monkeypatch.setattr(_memory, "available_memory", lambda: 1000)  # bytes
    with pytest.raises(_memory.InsufficientMemoryError, match="this fit needs about"):
        VBNMF(2, max_iter=2).fit(pd.DataFrame.sparse.from_spmatrix(counts))


def test_nmf_reads_sparse_columns_of_another_fill_value_as_their_values():
    dense = _counts(30, 6)
    dense[dense == 1] = 0
    model = NMF(2, random_state=0, max_iter=50).fit(dense)
    ones = pd.DataFrame(dense, columns=GENES).astype(pd.SparseDtype(float, 1.0))
    with pytest.warns(UserWarning, match="X has feature names"):  # fitted on an array
        from_frame = model.transform(ones)
    np.testing.assert_array_equal(from_frame, model.transform(dense))
    refitted = NMF(2, random_state=0, max_iter=50).fit(ones)
    np.testing.assert_array_equal(refitted.components_, model.components_)
    np.testing.assert_array_equal(refitted.feature_names_in_, GENES)
    holes = pd.DataFrame(np.where(dense == 0, np.nan, dense)).astype(pd.SparseDtype(float, np.nan))
    with pytest.raises(ValueError, match="Input X contains NaN"):
        model.transform(holes)
