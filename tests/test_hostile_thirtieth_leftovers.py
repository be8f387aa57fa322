"""Thirtieth hostile pass, the lead's leftovers from the twenty-ninth: a classical
``factor_mask`` DataFrame matched by position, a sparse custom start refused as "dtype
object", and `tl.count_split` of a DataFrame of sparse columns made dense."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf.classic import NMF


def _named_counts(n_cells: int = 12, n_genes: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        rng.poisson(3.0, (n_cells, n_genes)).astype(np.float64) + 1.0,
        index=[f"cell{i}" for i in range(n_cells)],
        columns=[f"gene{j}" for j in range(n_genes)],
    )


def _fit(X, **params) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short fits: ConvergenceWarning
        return NMF(2, max_iter=30, random_state=0, **params).fit_transform(X)


@pytest.mark.parametrize("as_dict", [True, False])
def test_factor_mask_of_cells_in_another_order_is_refused(as_dict):
    """A W mask named by cells in another order than X's held other cells' factors at
    zero without a word (taken by position), as weights were before the 29th pass."""
    X = _named_counts()
    w_mask = pd.DataFrame(np.ones((12, 2)), index=X.index)
    w_mask.iloc[0, 1] = 0.0
    shuffled = w_mask.iloc[::-1]
    with pytest.raises(ValueError, match=r"factor_mask\['W'\] has other row names than X"):
        _fit(X, factor_mask={"W": shuffled} if as_dict else shuffled)


def test_factor_mask_of_cells_in_order_holds_the_named_entry():
    """Guard (passes before and after): a W mask in X's order holds its entry at zero, and
    the same mask reordered by ``.loc[X.index]`` after shuffling fits identically."""
    X = _named_counts()
    w_mask = pd.DataFrame(np.ones((12, 2)), index=X.index)
    w_mask.iloc[3, 0] = 0.0
    W = _fit(X, factor_mask={"W": w_mask})
    assert W[3, 0] == 0.0 and (np.delete(W[:, 0], 3) > 0).all()
    again = _fit(X, factor_mask={"W": w_mask.sample(frac=1, random_state=1).loc[X.index]})
    np.testing.assert_array_equal(W, again)


def test_factor_mask_of_genes_in_another_order_is_refused():
    """An H mask (K x genes) named by genes in another order than X's columns."""
    X = _named_counts()
    h_mask = pd.DataFrame(np.ones((2, 6)), columns=X.columns)
    h_mask.iloc[1, 0] = 0.0
    _fit(X, factor_mask=h_mask)  # in X's order: taken
    with pytest.raises(ValueError, match=r"factor_mask\['H'\] has other column names than X"):
        _fit(X, factor_mask={"H": h_mask[X.columns[::-1]]})


@pytest.mark.parametrize("kind", [sp.csr_matrix, sp.csc_array])
def test_sparse_custom_start_fits_as_its_dense_copy(kind):
    """A scipy sparse W and H for ``init='custom'`` were refused as "csr_matrix of dtype
    object"; they are factor-sized, so they are read dense, and the fit is the dense
    start's bit for bit."""
    rng = np.random.default_rng(1)
    X = sp.csr_matrix(rng.poisson(1.0, (30, 20)).astype(np.float64))
    W, H = rng.random((30, 2)), rng.random((2, 20))
    W[0, 1] = 0.0  # a zero the sparse start does not store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparse_fit = NMF(2, init="custom", max_iter=5).fit_transform(X, W=kind(W), H=kind(H))
        dense_fit = NMF(2, init="custom", max_iter=5).fit_transform(X, W=W, H=H)
    np.testing.assert_array_equal(sparse_fit, dense_fit)


def test_custom_start_of_text_names_its_type():
    """Guard (passes before and after): a start of strings is a TypeError naming it."""
    X = np.ones((4, 3))
    with pytest.raises(TypeError, match=r"W must be .*array of real numbers, got ndarray"):
        NMF(1, init="custom").fit_transform(X, W=np.full((4, 1), "a"), H=np.ones((1, 3)))


def test_count_split_of_a_sparse_frame_stays_sparse():
    """`tl.count_split` of a DataFrame of sparse columns returned dense halves (cells x
    genes x 8 bytes); it returns CSR now, the same halves as the scipy matrix's."""
    matrix = sp.random(40, 15, density=0.2, random_state=0, format="csr")
    matrix.data = np.ceil(matrix.data * 9)
    frame = pd.DataFrame.sparse.from_spmatrix(matrix)
    train, test = vbsnmf.tl.count_split(frame, random_state=3)
    assert sp.issparse(train) and sp.issparse(test)
    want_train, want_test = vbsnmf.tl.count_split(matrix, random_state=3)
    assert (train != want_train).nnz == 0 and (test != want_test).nnz == 0
    np.testing.assert_array_equal((train + test).toarray(), matrix.toarray())


def test_count_split_of_a_dense_frame_is_dense():
    """Guard (passes before and after): a dense DataFrame still gives ndarrays."""
    frame = pd.DataFrame(np.arange(12.0).reshape(4, 3))
    train, test = vbsnmf.tl.count_split(frame, random_state=0)
    assert isinstance(train, np.ndarray)
    np.testing.assert_array_equal(train + test, frame.to_numpy())


def test_threading_layer_check_leaves_a_numba_without_the_private_loader(monkeypatch):
    """The command line loads a named NUMBA_THREADING_LAYER early through Numba's private
    ``_launch_threads``: a Numba without it (renamed) must leave the check to the first
    kernel, as before, not fail with an AttributeError as an internal error."""
    import numba
    from numba.np.ufunc import parallel

    from vbsnmf import cli

    monkeypatch.setattr(numba.config, "THREADING_LAYER", "workqueue")
    monkeypatch.delattr(parallel, "_launch_threads")
    assert cli._check_numba_threading_layer() is None
