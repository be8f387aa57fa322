"""Thirty-ninth hostile pass, memory of the classical solvers on a dense X: a fit holds X
and a few blocks of rows, not n x m arrays.

`vbsnmf.classic.NMF` on a dense X formed ``W H``, the mask of X's nonzeros, the ratio
``X / (W H)``, ``(W H)**gamma`` and the loss's terms whole: the multiplicative updates
peaked at 7.4 (Frobenius) to 9.4 (Itakura-Saito) times X's memory over X itself, the
Frobenius solvers at 2.0 times (their loss), `NMF.transform` and `factor_loss` alike, and
`NMF.inverse_transform` added a mask of its result's shape to the result. Each is now
worked a block of rows at a time (`vbsnmf.classic._data.dense_row_blocks`).

Peaks are tracemalloc's (numpy reports its arrays to it), over what was allocated before
the call (X is not counted), after a warm-up on a few rows (Numba's compilation is not the
route's). The block budget is set to 64 KiB here, so that a 600 x 800 X (3.7 MiB) is
several blocks whatever the library's default; on the code before, which has no budget,
setting it changes nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from traced import traced_peak

from vbsnmf.classic import NMF, _data, factor_loss

# the fits run a few iterations: their memory and their arithmetic are tested, not their
# convergence
pytestmark = pytest.mark.filterwarnings("ignore:.*stopped (after|at) max_iter")

N_ROWS, N_COLS, K = 600, 800, 5
BLOCK_BYTES = 1 << 16
# extra memory allowed over X (and its weights) itself: the blocks are a few times 64 KiB,
# the factors and the start's SVD below a tenth of X; the code before held 2 to 9 times X
PEAK_OVER_X = 1.5


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(_data, "DENSE_BLOCK_BYTES", BLOCK_BYTES, raising=False)


@pytest.fixture(scope="module")
def counts() -> np.ndarray:
    return np.random.default_rng(0).poisson(1.0, size=(N_ROWS, N_COLS)).astype(np.float64)


def _fit_peak(X: np.ndarray, **params) -> float:
    """The peak of ``NMF(K, **params).fit(X)`` over X's bytes, after a warm-up."""
    warm = dict(params)
    if "weights" in warm:
        warm["weights"] = warm["weights"][:40, :50]
    NMF(K, max_iter=2, random_state=0, **warm).fit(X[:40, :50])
    model = NMF(K, max_iter=3, random_state=0, **params)
    _, peak = traced_peak(model.fit, X)
    assert np.all(np.isfinite(model.components_)) and model.n_iter_ == 3
    return peak / X.nbytes


@pytest.mark.parametrize(
    "params",
    [
        {"solver": "mu", "loss": "kl"},
        {"solver": "mu", "loss": "frobenius"},
        {"solver": "mu", "loss": "beta", "beta": 0.5},
        {"solver": "mu", "loss": "beta", "beta": -0.5},
        {"solver": "mu", "loss": "poisson"},
        {"solver": "mu", "loss": "hellinger"},
        {"solver": "hals"},
        {"solver": "als"},
        {"solver": "pg"},
        {"solver": "ipg"},
        {"solver": "gd"},
    ],
    ids=lambda params: "-".join(str(value) for value in params.values()),
)
def test_fit_on_dense_X_holds_a_small_fraction_of_X_more(counts, params):
    """The code before: 7.4 to 8.7 times X for the multiplicative updates, 2.0 times for
    the Frobenius solvers (whose loss formed ``W H`` and its floor whole)."""
    assert _fit_peak(counts, **params) < PEAK_OVER_X


def test_fit_with_dense_weights_holds_a_small_fraction_of_X_more(counts):
    """Dense weights: the masked copy of X for the row totals, the loss's weighted terms and
    the weighted ratio were X-sized too. The bound is over X alone (the weights, given, are
    not counted either). The start still factorises one masked copy of X, at most 1.13x."""
    weights = (np.random.default_rng(1).random(counts.shape) > 0.1).astype(np.float64)
    assert _fit_peak(counts, solver="mu", loss="kl", weights=weights) < PEAK_OVER_X


def test_transform_and_factor_loss_on_dense_X_hold_a_small_fraction_of_X_more(counts):
    model = NMF(K, max_iter=3, random_state=0).fit(counts)
    model.transform(counts[:40])  # warm-up
    model.set_params(max_iter=3)
    W, peak = traced_peak(model.transform, counts)
    assert W.shape == (N_ROWS, K) and peak < PEAK_OVER_X * counts.nbytes
    loss, peak = traced_peak(factor_loss, counts, W, model.components_)
    assert np.isfinite(loss) and peak < PEAK_OVER_X * counts.nbytes


def test_inverse_transform_holds_its_result_and_a_block(counts):
    """Its finiteness check made a mask of the result's shape (1/8 of it more); it now
    checks each block as it is filled. The values are ``W @ components_`` (BLAS's product
    of a block of rows may round its last bit otherwise than the whole one's), overflow is
    still refused by name."""
    model = NMF(K, max_iter=3, random_state=0, loss="frobenius").fit(counts)
    W = model.transform(counts)
    product, peak = traced_peak(model.inverse_transform, W)
    np.testing.assert_allclose(product, W @ model.components_, rtol=1e-13, atol=0)
    assert product.dtype == np.float64
    assert peak < product.nbytes + 4 * BLOCK_BYTES
    huge = np.ones((N_ROWS, K))
    huge[-1] = np.finfo(np.float64).max  # only the last block passes the float range
    assert (model.components_.sum(axis=0) > 1.0).any()
    with pytest.raises(ValueError, match=r"W @ components_ passes the largest float64"):
        model.inverse_transform(huge)


def test_inverse_transform_float32_and_sparse_rows_keep_the_product_dtype(counts):
    """The product's dtype is numpy's of ``W @ components_``, as before the blocks."""
    import scipy.sparse as sp

    model = NMF(K, max_iter=3, random_state=0).fit(counts.astype(np.float32))
    W = model.transform(counts.astype(np.float32))
    assert W.dtype == np.float32 and model.components_.dtype == np.float32
    product = model.inverse_transform(W)
    assert product.dtype == np.float32
    np.testing.assert_allclose(product, W @ model.components_, rtol=1e-5)
    sparse_product = model.inverse_transform(sp.csc_matrix(W))
    np.testing.assert_allclose(sparse_product, product, rtol=1e-6)


# -- the blocked updates against the whole-matrix arithmetic ---------------------------------


def _whole_update(X, W, H, beta):
    """One multiplicative iteration of the beta-divergence (Minami-Eguchi beta: 0 is KL),
    W then H, on X whole, and the losses before and after: the textbook update
    ``W <- W (X Q**(beta-1)) H^T / (Q**beta H^T)`` (exponent 1 for 0 <= beta <= 1), which
    the solver's floors do not touch while ``W H`` stays far from zero."""

    def terms(X, R, C):
        Q = R @ C.T
        return (X * Q ** (beta - 1.0)) @ C, (Q**beta) @ C

    def loss(W, H):
        Q = W @ H
        if beta == 0.0:
            with np.errstate(divide="ignore", invalid="ignore"):
                logs = np.where(X > 0, X * np.log(X / Q), 0.0)
            return float(np.sum(logs - X + Q))
        s = beta + 1.0
        return float(np.sum((X**s + beta * Q**s - s * X * Q**beta) / (s * beta)))

    start = loss(W, H)
    numerator, denominator = terms(X, W, H.T)
    W = W * numerator / denominator
    numerator, denominator = terms(X.T, H.T, W)
    H = (H.T * numerator / denominator).T
    return W, H, [start, loss(W, H)]


@pytest.mark.parametrize(("loss", "beta"), [("kl", None), ("beta", 0.5)])
def test_one_blocked_iteration_is_the_whole_matrix_iteration(counts, loss, beta):
    """64 KiB blocks are 10 rows of X (and 13 of X transposed, whose last block is short):
    W, H and the loss trace agree with the whole-matrix computation to 1e-12 relative (not
    bitwise: BLAS rounds a block's product otherwise than the whole one's in the last bit,
    as it does the whole one's on another thread count)."""
    rng = np.random.default_rng(2)
    W0, H0 = rng.random((N_ROWS, K)) + 0.1, rng.random((K, N_COLS)) + 0.1
    params = {} if beta is None else {"beta": beta}
    model = NMF(K, solver="mu", loss=loss, init="custom", max_iter=1, tol=0.0, **params)
    W = model.fit_transform(counts, W=W0.copy(), H=H0.copy())
    assert N_COLS // (BLOCK_BYTES // (8 * N_ROWS)) >= 2  # X transposed is blocked too
    expected_W, expected_H, expected_trace = _whole_update(counts, W0, H0, beta or 0.0)
    np.testing.assert_allclose(W, expected_W, rtol=1e-12, atol=0)
    np.testing.assert_allclose(model.components_, expected_H, rtol=1e-12, atol=0)
    np.testing.assert_allclose(model.loss_trace_, expected_trace, rtol=1e-12, atol=0)


def test_row_blocks_cover_the_rows_in_order_within_the_budget(monkeypatch):
    """The blocks are consecutive, cover every row once, hold at most the budget of float64
    (one row at least, however wide), and a budget in bytes: wider rows, fewer per block."""
    monkeypatch.setattr(_data, "DENSE_BLOCK_BYTES", 8 * 1000)
    for n_rows, n_cols in [(0, 5), (1, 5), (37, 100), (200, 1000), (5, 10**6)]:
        blocks = list(_data.dense_row_blocks(n_rows, n_cols))
        covered = np.concatenate([np.arange(n_rows)[rows] for rows in blocks] or [[]])
        assert np.array_equal(covered, np.arange(n_rows))
        assert all(rows.stop - rows.start >= 1 for rows in blocks)
        assert all((rows.stop - rows.start) * n_cols <= max(1000, n_cols) for rows in blocks)
    assert len(list(_data.dense_row_blocks(100, 10))) == 1
    assert len(list(_data.dense_row_blocks(100, 100))) == 10
