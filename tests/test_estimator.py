"""`VBNMF` and `fit_triplets`: the scikit-learn contract, input kinds, checks, warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from simulated import poisson_gamma_counts

import vbsnmf
from vbsnmf._utils import numba_threads


def test_warnings_name_the_callers_line(_pbmc_tiny):
    """Raised deep in the library (and behind scikit-learn's set_output wrapper), every
    warning is attributed to the line that called vbsnmf."""
    import anndata as ad

    X = sp.csr_matrix(_pbmc_tiny.X)
    calls = {
        "fit": lambda: vbsnmf.VBNMF(2, max_iter=1, prior="gamma").fit(X),
        "fit_transform": lambda: vbsnmf.VBNMF(2, max_iter=1, prior="gamma").fit_transform(X),
        "svi": lambda: vbsnmf.VBNMF(2, solver="svi", n_epochs=1, random_state=0, prior="gamma").fit(
            X
        ),
        "non-integer": lambda: vbsnmf.VBNMF(2, max_iter=1, prior="gamma").fit(X * 0.5),
        "tl.nmf": lambda: vbsnmf.tl.nmf(ad.AnnData(X), n_components=2, max_iter=1),
    }
    for name, call in calls.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        ours = [w for w in caught if issubclass(w.category, UserWarning)]
        assert ours, name
        for warning in ours:
            assert warning.filename == __file__, (name, warning.filename)


def test_scikit_learn_catches_our_warning_and_error_and_clones_the_estimator():
    """With scikit-learn loaded, the convergence warning is scikit-learn's too (either
    filter silences it), the not-fitted error is scikit-learn's ``NotFittedError``, and
    ``clone``, ``get_params`` and ``set_params`` see the constructor's parameters."""
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning, NotFittedError

    X = sp.csr_matrix(np.arange(1, 13, dtype=float).reshape(4, 3))
    for category in (ConvergenceWarning, vbsnmf.ConvergenceWarning):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", category)
            vbsnmf.VBNMF(2, max_iter=1, random_state=0, n_threads=1).fit(X)
        assert caught == [], category
    with pytest.warns(ConvergenceWarning) as record:
        vbsnmf.VBNMF(2, max_iter=1, random_state=0, n_threads=1).fit(X)
    assert issubclass(record[0].category, vbsnmf.ConvergenceWarning)
    with pytest.raises(NotFittedError, match="VBNMF instance is not fitted yet"):
        vbsnmf.VBNMF(2).transform(X)
    model = vbsnmf.VBNMF(3, prior="gamma", dtype=np.float32, random_state=5)
    copy = clone(model)
    assert copy is not model and copy.get_params() == model.get_params()
    assert (
        repr(copy)
        == "VBNMF(n_components=3, prior='gamma', random_state=5, dtype=<class 'numpy.float32'>)"
    )
    assert copy.set_params(max_iter=7) is copy and copy.max_iter == 7
    assert "VBNMF(n_components=3, prior=&#x27;gamma&#x27;" in copy._repr_html_()
    with pytest.raises(ValueError, match="Invalid parameter 'n_factors'"):
        copy.set_params(n_factors=2)


def test_attributes_and_orientation():
    X, _ = poisson_gamma_counts(np.random.default_rng(4), 40, 70, 2)
    model = vbsnmf.VBNMF(2, random_state=0, max_iter=20, tol=0, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        factors = model.fit_transform(X)
    assert factors.shape == (40, 2) and model.cell_shape_.shape == (40, 2)
    assert model.gene_shape_.shape == (70, 2) and model.cell_rate_.shape == (2,)
    np.testing.assert_array_equal(model.components_, (model.gene_shape_ / model.gene_rate_).T)
    np.testing.assert_array_equal(factors, model.cell_shape_ / model.cell_rate_)
    # Dense, CSR, CSC and COO give the same fit.
    for other in (X.toarray(), X.tocsc(), X.tocoo()):
        again = vbsnmf.VBNMF(2, random_state=0, max_iter=20, tol=0, prior="gamma")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            again.fit(other)
        np.testing.assert_array_equal(again.elbo_trace_, model.elbo_trace_)


def test_fit_triplets_equals_matrix_fit():
    rng = np.random.default_rng(9)
    X = sp.random(50, 30, density=0.3, random_state=rng, format="coo")
    X.data = np.ceil(X.data * 5)
    # Split one entry into two duplicates: triplets are summed.
    rows = np.append(X.row, X.row[0])
    cols = np.append(X.col, X.col[0])
    counts = np.append(X.data, 2.0)
    counts[0] -= 2.0 if counts[0] > 2 else 0.0
    dense = np.zeros(X.shape)
    np.add.at(dense, (rows, cols), counts)
    kwargs = dict(max_iter=15, tol=0, random_state=1, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        from_triplets = vbsnmf.fit_triplets(rows, cols, counts, X.shape, 3, **kwargs)
        from_matrix = vbsnmf.VBNMF(3, **kwargs).fit(dense)
    np.testing.assert_allclose(from_triplets.elbo_trace_, from_matrix.elbo_trace_, rtol=1e-12)
    with pytest.raises(ValueError, match="outside"):
        vbsnmf.fit_triplets([0, 60], [0, 1], [1, 1], X.shape, 2)
    with pytest.raises(ValueError, match="differ in length"):
        vbsnmf.fit_triplets([0, 1], [0], [1, 1], X.shape, 2)


def test_numba_threads_restores_setting():
    import numba

    before = numba.get_num_threads()
    with numba_threads(1) as used:
        assert used == 1 and numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1.0, "1 negative entry"), (np.nan, "1 NaN entry"), (np.inf, "1 infinite entry")],
)
def test_bad_values_raise_with_location(value, message):
    X = np.ones((5, 4))
    X[2, 3] = value
    with pytest.raises(ValueError, match=rf"{message} at \(row, column\) \(2, 3\)"):
        vbsnmf.VBNMF(2, prior="gamma").fit(X)
    with pytest.raises(ValueError, match=message):
        vbsnmf.VBNMF(2, prior="gamma").fit(sp.csr_matrix(X))


def test_bad_shapes_and_components_raise():
    with pytest.raises(ValueError, match="at least one row"):
        vbsnmf.VBNMF(1, prior="gamma").fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="at least one row"):
        vbsnmf.VBNMF(1, prior="gamma").fit(sp.csr_matrix((4, 0)))
    X = np.ones((4, 3))
    for k in (0, 4, -2):
        with pytest.raises(ValueError, match="n_components"):
            vbsnmf.VBNMF(k, prior="gamma").fit(X)
    with pytest.raises(ValueError, match="prior_shape"):
        vbsnmf.VBNMF(2, prior_shape=0, prior="gamma").fit(X)
    with pytest.raises(ValueError, match="dtype"):
        vbsnmf.VBNMF(2, dtype=np.int64, prior="gamma").fit(X)


@pytest.mark.parametrize("estimator", [vbsnmf.VBNMF, vbsnmf.VBNTF])
@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
@pytest.mark.parametrize("shape", [1e7, 1e10, 1e-31])
def test_prior_shape_outside_the_computable_range_raises(estimator, prior, shape):
    X = np.ones((4, 3)) if estimator is vbsnmf.VBNMF else np.ones((4, 3, 2))
    with pytest.raises(ValueError, match=r"prior_shape must be between 1e-30 and 1e\+06"):
        estimator(2, prior=prior, prior_shape=shape).fit(X)


@pytest.mark.parametrize("estimator", [vbsnmf.VBNMF, vbsnmf.VBNTF])
def test_prior_rate_beyond_the_dtype_raises_and_at_its_limit_fits(estimator):
    """A float32 fit holds the fixed prior's rate in float32: above its largest value the
    ELBO was NaN and the fit said its parameters came from a damaged checkpoint."""
    if estimator is vbsnmf.VBNMF:
        X = np.arange(12.0).reshape(4, 3)
    else:  # the coordinates of a 4 x 3 x 2 tensor's 24 entries, each a count of 1
        X = np.indices((4, 3, 2)).reshape(3, -1).T
    with pytest.raises(ValueError, match=r"prior_rate must be at most 3.40282e\+38 in float32"):
        estimator(2, prior="gamma", prior_rate=1e39, dtype=np.float32).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        for dtype, rate in ((np.float32, 3e38), (np.float64, 1e300)):
            model = estimator(2, prior="gamma", prior_rate=rate, dtype=dtype, max_iter=20)
            model.fit(X)
            assert np.all(np.diff(model.elbo_trace_) >= 0)
            assert np.all(np.isfinite(model.elbo_trace_))


@pytest.mark.parametrize("accelerate", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("prior", "shape", "rate"),
    [
        ("hierarchical", 1e6, None),
        ("hierarchical", 1e-30, None),
        ("gamma", 1e6, 1e12),
        ("gamma", 1e6, 1e-12),
        ("gamma", 1e-30, 1.0),
    ],
)
def test_prior_shapes_at_the_bounds_keep_the_trace_monotone(
    pbmc_tiny, prior, shape, rate, dtype, accelerate
):
    """At the ends of `PRIOR_SHAPE_RANGE` the trace never decreases and the factors are
    finite (1e9 under the learned prior, 1e7 at rate 1e12 under the fixed one had decreasing
    traces: the ELBO's lgamma terms were sums far larger than a pass's change)."""
    X = pbmc_tiny.X[:300, :500]
    model = vbsnmf.VBNMF(
        3,
        prior=prior,
        prior_shape=shape,
        prior_rate=rate,
        accelerate=accelerate,
        dtype=dtype,
        max_iter=40,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(X)
    assert np.all(np.diff(model.elbo_trace_) >= 0)
    assert np.all(np.isfinite(model.components_))
    assert np.all(np.isfinite(model.transform(X)))


def test_non_integer_counts_warn():
    X = np.full((4, 3), 1.5)
    with pytest.warns(vbsnmf.NonCountWarning, match="raw counts"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            vbsnmf.VBNMF(1, max_iter=2, prior="gamma").fit(X)


def test_input_matrix_is_not_modified():
    """Unsorted indices, duplicates and explicit zeros are handled on a copy."""
    X = sp.csr_matrix(
        (np.array([2.0, 0.0, 1.0, 3.0]), np.array([2, 0, 1, 2]), np.array([0, 3, 4])),
        shape=(2, 3),
    )
    before = (X.data.copy(), X.indices.copy(), X.indptr.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(1, max_iter=2, prior="gamma").fit(X)
    for array, saved in zip((X.data, X.indices, X.indptr), before):
        np.testing.assert_array_equal(array, saved)


# -- corrupt sparse structure (issue 14) ----------------------------------------------------
def _valid_csr() -> sp.csr_matrix:
    return sp.csr_matrix(np.random.default_rng(4).poisson(1.0, (30, 20)).astype(np.float64))


def _corrupt(damage: str):
    """A scipy matrix whose index arrays were damaged after it was built (as a broken file
    or an edited array leaves it): scipy's constructors do not look again."""
    X = _valid_csr()
    if damage.startswith("csc"):
        X = X.tocsc()
    if damage.endswith("index out of range"):
        X.indices[3] = X.shape[1 if X.format == "csr" else 0] + 5
    elif damage.endswith("negative index"):
        X.indices[3] = -2
    elif damage == "indptr decreasing":
        X.indptr[5] = 0
    elif damage == "indptr far beyond the entries":
        X.indptr[5] = 10**6
    elif damage == "indptr ends beyond the entries":
        X.indptr[-1] = X.indptr[-1] + 7
    elif damage == "indptr not starting at 0":
        X.indptr[0] = 1
    elif damage == "coo row out of range":
        X = X.tocoo()
        X.row[2] = 1000
    return X


DAMAGES = [
    "index out of range",
    "negative index",
    "indptr decreasing",
    "indptr far beyond the entries",
    "indptr ends beyond the entries",
    "indptr not starting at 0",
    "csc index out of range",
    "coo row out of range",
]


@pytest.mark.parametrize("damage", DAMAGES)
def test_corrupt_sparse_structure_is_refused_by_every_entry_point(damage, tmp_path):
    """Before the fix these crashed the interpreter (segmentation fault, heap corruption)
    or fitted silently wrong; now every entry point raises before a kernel reads them."""
    from vbsnmf._dask._batch import chunk_count_data

    fits = {
        "batch": lambda X: vbsnmf.VBNMF(2, max_iter=2, prior="gamma").fit(X),
        "svi cells": lambda X: vbsnmf.VBNMF(2, solver="svi", n_epochs=1, prior="gamma").fit(X),
        "svi nonzeros": lambda X: vbsnmf.VBNMF(
            2, solver="svi", svi_form="nonzeros", n_epochs=1, prior="gamma"
        ).fit(X),
        "transform": lambda X: (
            vbsnmf.VBNMF(2, max_iter=2, prior="gamma").fit(_valid_csr()).transform(X)
        ),
        "tl.nmf": lambda X: vbsnmf.tl.nmf(__import__("anndata").AnnData(X), 2, max_iter=2),
        "classic": lambda X: vbsnmf.NMF(2, max_iter=2).fit(X),
        "dask chunk": lambda X: chunk_count_data(X, 0),
    }
    for name, fit in fits.items():
        if name == "tl.nmf" and damage.startswith("coo"):
            continue  # AnnData holds CSR and CSC only
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            with pytest.raises(ValueError, match="corrupt") as caught:
                fit(_corrupt(damage))
        assert "X" in str(caught.value), (name, caught.value)


def _h5ad_with(path, edit):
    import anndata as ad
    import h5py

    ad.AnnData(_valid_csr().astype(np.float32)).write_h5ad(path)
    with h5py.File(path, "r+") as handle:
        edit(handle["X"])
    return path


FILE_DAMAGES = {
    "index out of range": lambda group: group["indices"].__setitem__(3, 25),
    "negative index": lambda group: group["indices"].__setitem__(3, -2),
    "indptr decreasing": lambda group: group["indptr"].__setitem__(5, 0),
    "indptr far beyond the entries": lambda group: group["indptr"].__setitem__(5, 10**6),
}


@pytest.mark.parametrize("damage", sorted(FILE_DAMAGES))
def test_corrupt_h5ad_is_a_read_error_naming_the_file(damage, tmp_path, capfd):
    from vbsnmf.cli import main

    path = _h5ad_with(tmp_path / "bad.h5ad", FILE_DAMAGES[damage])
    with pytest.raises(vbsnmf.io.ReadError, match="corrupt") as caught:
        vbsnmf.io.read(path)
    assert str(path) in str(caught.value)
    with pytest.raises(ValueError, match="corrupt") as caught:  # streamed from disk
        vbsnmf.VBNMF(2, solver="svi", n_epochs=1, prior="gamma").fit(path)
    assert str(path) in str(caught.value)
    capfd.readouterr()
    assert main(["fit", str(path), "-k", "2", "-o", str(tmp_path / "out"), "--quiet"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "corrupt" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options",
    [{"accelerate": False}, {"accelerate": True}, {"solver": "svi", "n_epochs": 3}],
    ids=["plain", "accelerated", "svi"],
)
def test_a_callback_cannot_change_the_fit(_pbmc_tiny, options):
    """A callback was handed the fit's own q and trace: writing into q put NaN into the
    result (the cell factors of its last q), appending to the trace put entries into
    ``elbo_trace_`` that no pass computed (a hostile pass, 2026-12-03). q is read-only
    for the call (a write raises numpy's ValueError) and the trace a copy; what the
    callback keeps stays as it was handed, and the fit is the one without a callback."""
    common = {"max_iter": 6, "tol": 0, "n_threads": 1, "random_state": 0, **options}
    seen = []

    def append_to_the_trace(n_iter, params, elbo_trace):
        seen.append((params, list(elbo_trace)))
        elbo_trace.append(np.nan)

    def write_into_q(n_iter, params, elbo_trace):
        params.row_shape[:] = np.nan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        plain = vbsnmf.VBNMF(3, **common)
        factors = plain.fit_transform(_pbmc_tiny.X)
        watched = vbsnmf.VBNMF(3, **common)
        watched_factors = watched.fit_transform(_pbmc_tiny.X, callback=append_to_the_trace)
        with pytest.raises(ValueError, match="read-only"):
            vbsnmf.VBNMF(3, **common).fit(_pbmc_tiny.X, callback=write_into_q)
    np.testing.assert_array_equal(watched.elbo_trace_, plain.elbo_trace_)
    np.testing.assert_array_equal(watched_factors, factors)
    np.testing.assert_array_equal(watched.components_, plain.components_)
    assert seen and np.all(np.isfinite(seen[-1][1]))
    last = seen[-1][0]
    assert last.row_shape.flags.writeable  # handed back to the fit as it was


def test_a_callback_that_cannot_be_called_is_refused_before_any_pass(_pbmc_tiny):
    """callback=5 was taken silently by a fit of at most one pass and failed with "'int'
    object is not callable" after the first pass of a longer one; now a TypeError first."""
    calls = []

    def count_passes(*args):
        calls.append(args)
        return None

    for callback in (5, "print"):
        for max_iter in (1, 10):
            model = vbsnmf.VBNMF(2, max_iter=max_iter, n_threads=1, random_state=0)
            with pytest.raises(TypeError, match="callback must be callable"):
                model.fit(_pbmc_tiny.X, callback=callback)
            assert not hasattr(model, "components_")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(2, max_iter=3, n_threads=1, prior="gamma").fit(
            _pbmc_tiny.X, callback=count_passes
        )
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("kappa", "error"),
    [
        (np.nan, ValueError),
        (0.5, ValueError),
        (True, TypeError),
        (np.True_, TypeError),
        ("x", TypeError),
        ("0.7", TypeError),
    ],
)
def test_svi_kappa_outside_its_range_names_the_range(kappa, error):
    """kappa = NaN was told it must be ">= 0"."""
    match = r"kappa must be in \(0\.5, 1\]" if error is ValueError else "kappa must be a number"
    with pytest.raises(error, match=match):
        vbsnmf.VBNMF(2, solver="svi", kappa=kappa).fit(np.ones((6, 4)))


def test_a_masked_array_is_refused_rather_than_its_mask_dropped():
    X = np.ma.masked_array(np.ones((6, 4)), mask=np.zeros((6, 4), dtype=bool))
    X.mask[0, 0] = True
    X.data[0, 0] = 1e6  # a hidden value that np.asarray would have fitted
    with pytest.raises(TypeError, match=r"masked array: pass the counts as X\.filled\(0\)"):
        vbsnmf.VBNMF(2).fit(X)
    unmasked = np.ma.masked_array(np.ones((6, 4)))  # no entry masked: an ordinary array
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(2, max_iter=2).fit(unmasked)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, bool])
def test_repeated_entries_of_narrow_integer_counts_are_summed_exactly(dtype):
    """scipy sums repeated entries in the matrix's dtype: uint8 200 + 100 was fitted as 44,
    True + True as 1. The fit must be the float64 matrix's."""
    rows = np.array([0, 0, 1, 2, 3, 3, 1, 2])
    cols = np.array([0, 0, 1, 2, 3, 0, 3, 1])
    values = np.array([200, 100, 3, 4, 5, 1, 2, 7]) if dtype is not bool else np.ones(8)
    wide = sp.coo_array((values.astype(np.float64), (rows, cols)), shape=(4, 4))
    narrow = sp.coo_array((values.astype(dtype), (rows, cols)), shape=(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        fits = [vbsnmf.VBNMF(2, max_iter=30, random_state=0, n_threads=1) for _ in range(2)]
        expected = fits[0].fit_transform(wide)
        # a CSR holding the repeats as they come (scipy's tocsr() would sum them itself)
        order = np.argsort(rows, kind="stable")
        indptr = np.searchsorted(rows[order], np.arange(5))
        repeated = sp.csr_matrix((narrow.data[order], cols[order], indptr), shape=(4, 4))
        for matrix in (narrow, repeated):
            np.testing.assert_array_equal(fits[1].fit_transform(matrix), expected)
            np.testing.assert_array_equal(fits[1].elbo_trace_, fits[0].elbo_trace_)
            np.testing.assert_array_equal(fits[1].transform(matrix), fits[0].transform(wide))


@pytest.mark.parametrize("dtype", [np.uint64, np.uint32, np.int16])
def test_row_pointers_of_any_integer_dtype_fit_as_int32(dtype):
    """A CSR whose row pointers are uint64 passed the checks, then failed inside the pass
    with Numba's TypingError (uint64 and int64 indices mix to float64; a hostile pass,
    2026-12-03). Any integer row pointers: the int32 matrix's fit, bit for bit."""
    X = np.random.default_rng(0).poisson(1.0, (60, 40)).astype(np.float64)
    odd = sp.csr_matrix(X)
    odd.indptr = odd.indptr.astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        fits = [vbsnmf.VBNMF(3, max_iter=20, random_state=0, n_threads=1) for _ in range(2)]
        expected = fits[0].fit_transform(sp.csr_matrix(X))
        np.testing.assert_array_equal(fits[1].fit_transform(odd), expected)
        np.testing.assert_array_equal(fits[1].transform(odd), fits[0].transform(X))


def test_counts_on_an_extreme_scale_say_so():
    """Values around 1e-200 pass the checks (non-integers warn) and take the learned prior's
    ELBO to -inf: the error named only a damaged checkpoint or an extreme start (a hostile
    pass, 2026-12-03). It names the counts' scale too, and nothing is fitted."""
    X = np.random.default_rng(0).poisson(1.0, (60, 40)).astype(np.float64) * 1e-200
    model = vbsnmf.VBNMF(3, max_iter=20, random_state=0, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FloatingPointError, match="counts on an extreme scale"):
            model.fit(X)
    assert not hasattr(model, "components_")


def test_svi_with_several_starts_is_refused():
    """SVI ran one start whatever n_init said (the n_init=1 fit, bit for bit)."""
    X = np.arange(12.0).reshape(4, 3)
    with pytest.raises(ValueError, match="n_init > 1 applies to solver='batch'"):
        vbsnmf.VBNMF(2, solver="svi", n_init=3).fit(X)


@pytest.mark.parametrize("dtype", [np.longdouble, ">f8", ">i4", np.float16])
def test_counts_in_a_wide_or_foreign_dtype_fit_as_float64(dtype):
    """np.longdouble and big-endian numbers (h5py, np.frombuffer) passed the checks and
    failed in Numba's typing (dense big-endian: in scipy); they fit as the float64 counts."""
    dense = np.random.default_rng(0).poisson(0.7, (40, 25)).astype(np.float64)
    csr = sp.csr_matrix(dense)
    foreign = sp.csr_matrix((csr.data.astype(dtype), csr.indices, csr.indptr), shape=csr.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        expected = vbsnmf.VBNMF(3, max_iter=10, random_state=0, n_threads=1).fit(csr)
        for X in (foreign, dense.astype(dtype)):
            model = vbsnmf.VBNMF(3, max_iter=10, random_state=0, n_threads=1).fit(X)
            np.testing.assert_array_equal(model.elbo_trace_, expected.elbo_trace_)
            np.testing.assert_array_equal(model.transform(X), expected.transform(csr))
            svi = vbsnmf.VBNMF(3, solver="svi", n_epochs=1, random_state=0, n_threads=1)
            assert np.all(np.isfinite(svi.fit_transform(X)))


def test_genes_named_at_fit_are_checked_at_transform():
    """A DataFrame's gene names are kept (feature_names_in_) and new cells' genes must be
    them in the same order: other or reordered genes were matched by position."""
    pd = pytest.importorskip("pandas")
    counts = np.random.default_rng(0).poisson(0.8, (30, 6)).astype(np.float64)
    genes = [f"g{i}" for i in range(6)]
    frame = pd.DataFrame(counts, columns=genes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.VBNMF(2, max_iter=20, random_state=0, n_threads=1).fit(frame)
        np.testing.assert_array_equal(model.feature_names_in_, genes)
        with pytest.warns(UserWarning, match="X does not have valid feature names"):
            unnamed = model.transform(counts)
        np.testing.assert_array_equal(model.transform(frame), unnamed)
        with pytest.raises(ValueError, match="same order"):
            model.transform(frame[genes[::-1]])
        renamed = frame.rename(columns={"g0": "other"})
        with pytest.raises(ValueError, match="unseen at fit time:\n- other"):
            model.transform(renamed)
        model.fit(counts)  # refitted without names: none kept
        assert not hasattr(model, "feature_names_in_")


def test_an_anndata_in_memory_is_named_as_such(pbmc_tiny):
    """numpy's "maximum number of dimension of 64" was the message for VBNMF.fit(adata)."""
    for call in (
        lambda: vbsnmf.VBNMF(2).fit(pbmc_tiny),
        lambda: vbsnmf.VBNMF(2, solver="svi").fit(pbmc_tiny),
    ):
        with pytest.raises(TypeError, match=r"X is an AnnData: pass its counts \(adata.X"):
            call()


@pytest.mark.parametrize("layout", ["csr", "csc", "coo"])
def test_a_fit_checks_the_structure_without_hashing_the_entries(monkeypatch, layout):
    """The structure check of an in-memory fit leaves the entries' hash out (most of the
    check's time; only checkpoints and streamed fits use the fingerprint): the fingerprint
    asked for is the one a checkpoint records, and a corrupt matrix is refused either
    way."""
    from vbsnmf import _kernels, _validation
    from vbsnmf._data import as_count_data

    X = sp.random_array((60, 30), density=0.3, rng=2, format=layout)
    X.data = np.ceil(X.data * 5)
    hashed = []
    for kernel in ("check_compressed", "check_coordinates"):
        original = getattr(_kernels, kernel)
        monkeypatch.setattr(
            _kernels, kernel, lambda *args, run=original: hashed.append(args[-1]) or run(*args)
        )
    _validation.check_counts(X)
    assert hashed == [False]
    assert _validation.check_sparse_structure(X) is None
    whole = _validation.data_fingerprint(as_count_data(X.tocsr()))
    assert f"{_validation.check_sparse_structure(X, fingerprint=True):016x}" == whole
    assert _validation.checked_counts(X, fingerprint=True).fingerprint == int(whole, 16)
    corrupt = X.tocsr() if layout == "csr" else X.tocsc() if layout == "csc" else X.tocoo()
    (corrupt.indices if layout != "coo" else corrupt.col)[3] = 10**6
    for fingerprint in (False, True):
        with pytest.raises(ValueError, match="corrupt"):
            _validation.check_sparse_structure(corrupt, fingerprint=fingerprint)
