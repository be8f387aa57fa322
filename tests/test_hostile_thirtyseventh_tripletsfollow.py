"""Thirty-seventh hostile pass, third wave: what the first wave left of `fit_triplets`,
`fit_dask` and `fit_svi_dask`, and the integer checks every parameter shares.

Four defects, each test failing on the code before its fix:

- `fit_triplets` flattened 2-D ``rows``, ``cols`` or ``counts`` (np.ravel) without a word,
  so a table's rows were read as triplets; scipy's ``coo_matrix((data, (row, col)))``
  refuses any array of more than one dimension, a column vector (n, 1) too, and so does
  `fit_triplets` now, naming the array and its shape;
- an unknown keyword given to `fit_dask`, `fit_svi_dask` or `fit_triplets` failed with
  Python's "VBNMF.__init__() got an unexpected keyword argument", naming a call the user
  did not make; the message now names the function and lists the parameters it takes;
- ``np.timedelta64(3)`` passed every integer check (``max_iter``, ``n_components``,
  ``random_state``, ``n_threads``, ``n_genes``, a triplet ``shape``...) as 3, and every
  number check (``tol``) as 3.0, because numpy makes it a subclass of ``np.integer``: the
  shared predicate (`_utils.is_integer`) now refuses durations, so every caller does;
- `fit_triplets`' negative, NaN or infinite counts were named entries of "X" at a
  (row, column) place: "X" is no argument of it; they are now named "counts", with their
  position in the array and their row and column.
"""

from __future__ import annotations

import re
import warnings

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import VBNMF, fit_dask, fit_svi_dask, fit_triplets

ROWS, COLS, COUNTS = [0, 0, 1, 2, 2], [0, 1, 1, 0, 2], [3, 1, 2, 5, 4]
SHAPE = (3, 3)
SETTINGS = dict(random_state=0, max_iter=5, n_threads=1)
DURATION = np.timedelta64(3)


def _counts(n_rows=40, n_cols=20):
    rng = np.random.default_rng(0)
    return sp.csr_matrix(rng.poisson(1.0, (n_rows, n_cols)).astype(np.float64))


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


# -- 2-D triplet arrays ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rows", "cols", "counts"])
@pytest.mark.parametrize("shape", [(5, 1), (1, 5)], ids=["column", "row"])
def test_fit_triplets_refuses_a_two_dimensional_array_by_name(name, shape):
    """A (5, 1) or (1, 5) array was flattened and fitted; scipy's COO refuses both."""
    arrays = {"rows": ROWS, "cols": COLS, "counts": COUNTS}
    arrays[name] = np.asarray(arrays[name]).reshape(shape)
    with pytest.raises(
        ValueError, match=rf"^{name} must be one-dimensional.*shape {re.escape(str(shape))}"
    ):
        fit_triplets(arrays["rows"], arrays["cols"], arrays["counts"], SHAPE, 1, **SETTINGS)


def test_fit_triplets_refuses_a_table_whose_flattening_lined_up():
    """Three (2, 2) tables flatten to four triplets of the same length: they were fitted."""
    table = np.array([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"^rows must be one-dimensional.*\(2, 2\)"):
        fit_triplets(table, table, table + 1, (2, 2), 1, **SETTINGS)
    # flat arrays and single numbers (one triplet) still fit
    model = _quiet(fit_triplets, ROWS, COLS, COUNTS, SHAPE, 1, **SETTINGS)
    assert model.components_.shape == (1, 3)
    one = _quiet(fit_triplets, 0, 0, 4, (1, 1), 1, **SETTINGS)
    assert one.components_.shape == (1, 1)


# -- unknown keywords ------------------------------------------------------------------------
@pytest.mark.parametrize("function", [fit_dask, fit_svi_dask], ids=lambda f: f.__name__)
def test_dask_fits_name_themselves_for_an_unknown_keyword(function):
    X = da.from_array(_counts().toarray(), chunks=(20, -1))
    with pytest.raises(TypeError) as caught:
        function(X, 2, max_iters=3)
    message = str(caught.value)
    assert message.startswith(f"{function.__name__}() got an unexpected keyword argument")
    assert "'max_iters'" in message and "max_iter" in message and "VBNMF" in message
    assert "__init__" not in message


def test_fit_triplets_names_itself_for_an_unknown_keyword():
    with pytest.raises(TypeError) as caught:
        fit_triplets(ROWS, COLS, COUNTS, SHAPE, 1, n_iter=3)
    message = str(caught.value)
    assert message.startswith("fit_triplets() got an unexpected keyword argument 'n_iter'")
    assert "max_iter" in message and "solver" in message and "__init__" not in message


# -- durations where a count is expected -----------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {"max_iter": DURATION},
        {"n_init": np.timedelta64(1)},
        {"random_state": DURATION},
        {"n_threads": np.timedelta64(1)},
        {"verbose": np.timedelta64(0)},
        {"tol": np.timedelta64(0)},
    ],
    ids=lambda p: next(iter(p)),
)
def test_vbnmf_refuses_a_duration_where_a_number_is_expected(params):
    name = next(iter(params))
    settings = {"max_iter": 2, "n_threads": 1, **params}
    with pytest.raises(TypeError, match=rf"^{name} must be .*timedelta64"):
        _quiet(VBNMF(2, **settings).fit, _counts())


def test_vbnmf_refuses_a_duration_as_n_components():
    with pytest.raises(TypeError, match=r"^n_components must be an integer, got .*timedelta"):
        _quiet(VBNMF(np.timedelta64(2), max_iter=2, n_threads=1).fit, _counts())
    # numpy integers still pass the shared checks
    model = _quiet(
        VBNMF(np.int64(2), max_iter=np.int32(2), random_state=np.uint8(1), n_threads=1).fit,
        _counts(),
    )
    assert model.n_iter_ == 2


def test_classic_nmf_and_vbntf_refuse_a_duration_as_max_iter():
    with pytest.raises(ValueError, match=r"^max_iter must be a positive integer, got .*timedelta"):
        vbsnmf.classic.NMF(2, max_iter=DURATION).fit(_counts())
    coords = np.array([[0, 0, 0], [1, 1, 1], [1, 0, 1]])
    with pytest.raises(TypeError, match=r"^max_iter must be an integer, got .*timedelta"):
        vbsnmf.VBNTF(1, max_iter=DURATION).fit(coords, np.array([1.0, 2.0, 3.0]))


def test_fit_triplets_refuses_a_duration_in_shape():
    with pytest.raises(TypeError, match=r"^shape must be two integers"):
        fit_triplets(ROWS, COLS, COUNTS, (np.timedelta64(3), 3), 1, **SETTINGS)


@pytest.fixture(scope="module")
def fitted_adata():
    """A K=2 fit of `_counts` by `vbsnmf.tl.nmf` (3 iterations), which the tests read only."""
    adata = ad.AnnData(_counts())
    _quiet(vbsnmf.tl.nmf, adata, n_components=2, max_iter=3, random_state=0, n_threads=1)
    return adata


def test_top_genes_refuses_a_duration_as_n_genes(fitted_adata):
    """It failed deep in Python's slicing ("slice indices must be integers")."""
    with pytest.raises(TypeError, match=r"^n_genes must be an integer, got .*timedelta"):
        vbsnmf.tl.top_genes(fitted_adata, n_genes=DURATION)


def test_number_checks_outside_the_validators_refuse_a_duration(fitted_adata):
    """``min_counts`` was taken as 3.0 and ``alpha`` fitted as 3.0, as ``tol`` was."""
    with pytest.raises(TypeError, match=r"^min_counts must be a number, got timedelta64"):
        vbsnmf.tl.top_genes(fitted_adata, min_counts=DURATION)
    p = np.array([[1.0, 2.0]])
    with pytest.raises(TypeError, match=r"^alpha must be a number, got .*timedelta"):
        vbsnmf.classic.losses.alpha_divergence(p, p, DURATION)


# -- fit_triplets' count errors --------------------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "label"), [(-2.0, "negative"), (np.nan, "NaN"), (np.inf, "infinite")]
)
def test_fit_triplets_names_counts_and_the_position_of_a_bad_count(bad, label):
    counts = [3.0, 1.0, 2.0, bad, 4.0]
    with pytest.raises(ValueError) as caught:
        fit_triplets(ROWS, COLS, counts, SHAPE, 1, **SETTINGS)
    message = str(caught.value)
    assert f"counts must be non-negative and finite; found 1 {label} count" in message
    assert "at position 3 (row 2, column 0)" in message
    assert "X must" not in message
    assert message.startswith("Negative values in data: ") == (label == "negative")
