"""The thirty-second hostile pass over degenerate shapes and dtypes at the public entry
points: the classical `NMF` on a DataFrame whose column names repeat (gene symbols do)
leaked narwhals' DuplicateError where `VBNMF` fits it; ``inverse_transform`` took text and
timedelta64 cell factors (`VBNMF`, whose docstring promises a TypeError) and returned inf
where finite factors overflow the dtype (both estimators); the classical `NMF` gave a
ValueError for ``n_components=2.0`` where `VBNMF`, ``tl.nmf`` and its own ``True`` give a
TypeError; a Matrix Market file that scipy.io.mmwrite wrote as 'symmetric' (any symmetric
matrix, every 1 x 1 one) was refused with no hint of the cause. Guards pin what was checked
and held: the fixed prior's reported ELBO against a numpy ELBO of the fitted q on tiny,
degenerate matrices; sparse X with stored zeros, unsorted indices and repeated entries
fitted as the dense matrix; K = min(shape) and one beyond; scikit-learn's conventions."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from scipy.special import digamma, gammaln
from sklearn.exceptions import NotFittedError

from vbsnmf import VBNMF, io, tl
from vbsnmf.classic import NMF

FIT = {"max_iter": 30, "random_state": 0, "n_threads": 1}
CLASSIC = {"max_iter": 30, "random_state": 0}


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


def _counts(n_cells: int = 10, n_genes: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(2, (n_cells, n_genes)).astype(np.float64)


# ---- fixed ------------------------------------------------------------------------------


def test_classic_nmf_fits_a_frame_with_repeated_column_names():
    """Gene symbols repeat (``adata.to_df()`` before ``var_names_make_unique``): scikit-
    learn's conversion raised narwhals' DuplicateError; now fitted as the same numbers,
    the names remembered as given (`VBNMF` does the same)."""
    counts = _counts()
    names = ["g0", "g0", "g1", "g2", "g3", "g4"]
    frame = pd.DataFrame(counts, columns=names)
    model = _quiet(NMF(2, **CLASSIC).fit, frame)
    reference = _quiet(NMF(2, **CLASSIC).fit, counts)
    np.testing.assert_allclose(model.components_, reference.components_, rtol=1e-12)
    assert model.feature_names_in_.tolist() == names
    np.testing.assert_allclose(
        _quiet(model.transform, frame), _quiet(reference.transform, counts), rtol=1e-12
    )
    # weights as a frame of the same names, and inverse_transform of a frame
    weighted = NMF(2, solver="mu", weights=pd.DataFrame(np.ones(counts.shape), columns=names))
    assert _quiet(weighted.fit, frame).components_.shape == (2, 6)
    factors = pd.DataFrame(np.ones((3, 2)), columns=["f", "f"])
    np.testing.assert_allclose(
        model.inverse_transform(factors), np.ones((3, 2)) @ model.components_
    )


def test_vbnmf_and_classic_take_repeated_column_names_alike():
    """The same frame fitted by both estimators: `VBNMF` did (a guard), `NMF` raised
    narwhals' DuplicateError."""
    frame = pd.DataFrame(_counts(), columns=["a", "a", "b", "c", "d", "e"])
    assert _quiet(VBNMF(2, **FIT).fit, frame).feature_names_in_.tolist()[:2] == ["a", "a"]
    assert _quiet(NMF(2, **CLASSIC).fit, frame).n_features_in_ == 6


@pytest.mark.parametrize(
    "factors",
    [
        np.ones((2, 2)).astype(str),
        np.ones((2, 2)).astype(str).astype(object),
        np.ones((2, 2), dtype="m8[s]"),
    ],
    ids=["unicode", "object text", "timedelta64"],
)
def test_vbnmf_inverse_transform_refuses_text_and_timedelta(factors):
    """numpy parsed "1.0" as a number and took timedelta64 as its integers; the docstring
    promises a TypeError for strings, and `transform` refuses both as counts."""
    model = _quiet(VBNMF(2, **FIT).fit, _counts())
    with pytest.raises(TypeError, match=r"X must (hold numbers|be a numeric array)"):
        model.inverse_transform(factors)


def test_vbnmf_inverse_transform_still_takes_numbers_of_any_kind():
    """Integers, booleans, object numbers, nullable Int64 and a sparse matrix give
    ``X @ components_`` (a guard: as before); pd.NA is now a NaN, a ValueError as ``None``
    and NaN are and as `transform` names it (it was "must be a numeric array", TypeError)."""
    model = _quiet(VBNMF(2, **FIT).fit, _counts())
    expected = np.ones((3, 2)) @ model.components_
    for factors in (
        np.ones((3, 2), dtype=np.int8),
        np.ones((3, 2), dtype=bool),
        np.ones((3, 2)).astype(object),
        pd.DataFrame(np.ones((3, 2), dtype=int)).astype("Int64"),
        sp.csr_array(np.ones((3, 2))),
    ):
        np.testing.assert_allclose(model.inverse_transform(factors), expected)
    missing = pd.DataFrame(np.ones((3, 2), dtype=int)).astype("Int64")
    missing.iloc[0, 0] = pd.NA
    with pytest.raises(ValueError, match="finite"):
        model.inverse_transform(missing)


@pytest.mark.parametrize(
    "make, value",
    [
        (lambda: VBNMF(2, **FIT), 1e308),
        (lambda: VBNMF(2, dtype=np.float32, **FIT), 1e40),
        (lambda: NMF(2, **CLASSIC), 1e308),
    ],
    ids=["VBNMF float64", "VBNMF float32", "NMF"],
)
def test_inverse_transform_of_overflowing_factors_is_refused(make, value):
    """Finite factors whose products pass the dtype's range returned inf entries without a
    word (float32: past its 3.4e38, though float64 holds the factors)."""
    model = _quiet(make().fit, _counts())
    with pytest.raises(ValueError, match="too large"):
        model.inverse_transform(np.full((1, 2), value))
    assert np.isfinite(model.inverse_transform(np.full((1, 2), 1e10))).all()


@pytest.mark.parametrize("value", [2.0, "2", None, np.float64(2), True])
def test_classic_n_components_not_an_integer_is_a_type_error(value):
    """2.0, "2", None were a ValueError ("positive integer") while True, `VBNMF(2.0)` and
    `tl.nmf(..., solver="mu", n_components=2.0)` are a TypeError."""
    with pytest.raises(TypeError, match="n_components must be an integer"):
        NMF(value).fit(_counts())
    for below in (0, -1):  # the range stays a ValueError
        with pytest.raises(ValueError, match="n_components"):
            NMF(below).fit(_counts())


def test_symmetric_matrix_market_names_mmwrite_symmetry(tmp_path):
    """scipy.io.mmwrite writes 'symmetric' for any symmetric matrix (every 1 x 1 count
    table): refused, as decided, but now with the cause and the fix named."""
    path = tmp_path / "one.mtx"
    scipy.io.mmwrite(path, sp.coo_matrix(np.array([[5]])))
    with pytest.raises(ValueError, match=r"symmetric.*symmetry='general'"):
        io.read(path, genes_as_rows=False)
    general = tmp_path / "general.mtx"
    scipy.io.mmwrite(general, sp.coo_matrix(np.array([[5]])), symmetry="general")
    assert io.read(general, genes_as_rows=False).X.toarray().tolist() == [[5.0]]


# ---- guards -----------------------------------------------------------------------------


def _gamma_kl(shape, rate, a: float = 1.0, b: float = 1.0):
    return (
        (shape - a) * digamma(shape)
        - gammaln(shape)
        + gammaln(a)
        + a * (np.log(rate) - np.log(b))
        + shape * (b - rate) / rate
    )


def _numpy_elbo(counts: np.ndarray, model: VBNMF) -> float:
    """The ELBO of docs/model.md for the fixed Gamma(1, 1) prior, dense, from the fitted q."""
    cell_shape, gene_shape = model.cell_shape_, model.gene_shape_
    cell_rate = np.broadcast_to(model.cell_rate_, cell_shape.shape)
    gene_rate = np.broadcast_to(model.gene_rate_, gene_shape.shape)
    log_cells = digamma(cell_shape) - np.log(cell_rate)
    log_genes = digamma(gene_shape) - np.log(gene_rate)
    rows, cols = np.nonzero(counts)
    values = counts[rows, cols]
    data = values * np.log(np.exp(log_cells[rows] + log_genes[cols]).sum(axis=1))
    total = ((cell_shape / cell_rate).sum(0) * (gene_shape / gene_rate).sum(0)).sum()
    return float(
        (data - gammaln(values + 1)).sum()
        - total
        - _gamma_kl(cell_shape, cell_rate).sum()
        - _gamma_kl(gene_shape, gene_rate).sum()
    )


DEGENERATE = {
    "1 x 1": np.array([[5.0]]),
    "one cell": np.array([[1.0, 2.0, 3.0]]),
    "one gene": np.array([[1.0], [0.0], [3.0]]),
    "one nonzero": np.pad([[3.0]], ((0, 2), (2, 1))),
    "ones": np.ones((4, 3)),
    "one cell holds all": np.vstack([np.full(4, 7.0), np.zeros((3, 4))]),
    "1e6 among ones": np.ones((4, 4)) + np.pad([[1e6 - 1]], ((0, 3), (0, 3))),
}


@pytest.mark.parametrize("solver", ["batch", "svi"])
@pytest.mark.parametrize("name", list(DEGENERATE))
def test_fixed_prior_elbo_matches_numpy_on_degenerate_data(name, solver):
    """Guard (passes on both): at K = 1 and K = min(shape), the last reported ELBO is the
    numpy ELBO of the fitted q (1e-10 relative), everything returned is finite."""
    counts = DEGENERATE[name]
    for n_components in sorted({1, min(counts.shape)}):
        model = _quiet(VBNMF(n_components, prior="gamma", solver=solver, **FIT).fit, counts)
        expected = _numpy_elbo(counts, model)
        assert model.elbo_trace_[-1] == pytest.approx(expected, rel=1e-10)
        factors = _quiet(model.transform, counts)
        for values in (factors, model.components_, model.inverse_transform(factors)):
            assert np.isfinite(values).all()


def test_k_beyond_the_smaller_side_is_refused_by_every_entry_point():
    """Guard (passes on both): K = min(shape) fits, one more is a ValueError naming the
    shape (VBNMF, NMF, tl.nmf)."""
    import anndata as ad

    counts = _counts(2, 50)
    assert _quiet(VBNMF(2, **FIT).fit_transform, counts).shape == (2, 2)
    for fit in (
        lambda: VBNMF(3, **FIT).fit(counts),
        lambda: NMF(3, **CLASSIC).fit(counts),
        lambda: tl.nmf(ad.AnnData(counts), n_components=3, max_iter=5),
    ):
        with pytest.raises(ValueError, match=r"out of range.*\(2, 50\)"):
            _quiet(fit)


def _unsorted(matrix: sp.csr_array) -> sp.csr_array:
    reversed_ = matrix.copy()
    for row in range(reversed_.shape[0]):
        start, stop = reversed_.indptr[row], reversed_.indptr[row + 1]
        reversed_.indices[start:stop] = reversed_.indices[start:stop][::-1]
        reversed_.data[start:stop] = reversed_.data[start:stop][::-1]
    reversed_.has_sorted_indices = False
    return reversed_


def _non_canonical_forms(counts: np.ndarray) -> dict:
    coo = sp.coo_array(counts)
    halves = sp.coo_array(
        (
            np.concatenate([coo.data - 0.5, np.full(coo.nnz, 0.5), np.zeros(2)]),
            (
                np.concatenate([coo.row, coo.row, [0, 1]]),
                np.concatenate([coo.col, coo.col, [0, 1]]),
            ),
        ),
        shape=counts.shape,
    )
    last = counts.shape[0] - 1  # (last, 0) holds no count: a zero stored there
    stored_zero = sp.csr_matrix(
        (np.append(coo.data, 0.0), (np.append(coo.row, last), np.append(coo.col, 0))),
        shape=counts.shape,
    )
    return {
        "repeated entries that sum": halves,
        "unsorted indices": _unsorted(sp.csr_array(counts)),
        "a stored zero": stored_zero,
        "np.matrix": _quiet(np.matrix, counts),
        "uint64": counts.astype(np.uint64),
        "nullable Int64": pd.DataFrame(counts.astype(int)).astype("Int64"),
    }


def test_non_canonical_inputs_fit_as_the_dense_matrix():
    """Guard (passes on both): VBNMF and NMF give the dense float64 fit's factors for
    sparse inputs with repeated entries (summed), unsorted indices and a stored zero,
    np.matrix (VBNMF), uint64 and pandas' nullable Int64."""
    counts = _counts(8, 6, seed=1)
    counts[0, 0] = counts[1, 1] = 3.0  # the stored zero sits at (last row, 0): not a count
    counts[-1, 0] = 0.0
    reference = _quiet(VBNMF(2, **FIT).fit_transform, counts)
    classic = _quiet(NMF(2, **CLASSIC).fit_transform, counts)
    for name, given in _non_canonical_forms(counts).items():
        np.testing.assert_allclose(_quiet(VBNMF(2, **FIT).fit_transform, given), reference)
        if name != "np.matrix":  # scikit-learn's convention, which the classical NMF follows
            np.testing.assert_allclose(
                _quiet(NMF(2, **CLASSIC).fit_transform, given), classic, err_msg=name
            )


def test_scikit_learn_conventions_at_the_edges():
    """Guard (passes on both): scikit-learn's NotFittedError before fit, n_features_in_
    and feature_names_in_ from a DataFrame, another number of features refused, a frame in
    another column order refused, n_components as a numpy integer."""
    counts = _counts()
    frame = pd.DataFrame(counts, columns=[f"g{j}" for j in range(6)])
    for make in (lambda: VBNMF(np.int64(2), **FIT), lambda: NMF(np.uint8(2), **CLASSIC)):
        with pytest.raises(NotFittedError):
            make().transform(counts)
        with pytest.raises(NotFittedError):
            make().inverse_transform(np.ones((1, 2)))
        model = _quiet(make().fit, frame)
        assert model.n_features_in_ == 6
        assert model.feature_names_in_.tolist() == list(frame.columns)
        with pytest.raises(ValueError, match="X has 5 features"):
            _quiet(model.transform, counts[:, :5])
        with pytest.raises(ValueError, match="feature names"):
            model.transform(frame[frame.columns[::-1]])
        assert _quiet(model.transform, counts[:1]).shape == (1, 2)
