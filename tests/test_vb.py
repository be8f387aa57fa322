"""The batch VB engine against an independent numpy CAVI, and its properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import reference_cavi as ref
import scipy.sparse as sp

import vbsnmf
from vbsnmf import _vb
from vbsnmf._estimator import numba_threads


def _random_params(rng, n_rows, n_cols, k):
    return (
        rng.uniform(0.5, 3.0, (n_rows, k)),
        rng.uniform(0.5, 2.0, k),
        rng.uniform(0.5, 3.0, (n_cols, k)),
        rng.uniform(0.5, 2.0, k),
    )


def _small_matrices():
    rng = np.random.default_rng(1)
    plain = rng.poisson(1.5, (13, 9)).astype(float)
    with_empty = rng.poisson(0.8, (8, 17)).astype(float)  # more columns than rows
    with_empty[3] = 0  # empty row
    with_empty[:, [0, 5]] = 0  # empty columns
    return {"plain": plain, "empty_rows_cols": with_empty}


def _as_dict(params):
    return dict(zip(("obs_shape", "obs_rate", "var_shape", "var_rate"), params))


@pytest.mark.parametrize("name", ["plain", "empty_rows_cols"])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("prior", [(1.0, 1.0), (0.3, 0.5)])
@pytest.mark.parametrize("block_rows", [None, 1, 2, 5])
def test_one_iteration_matches_numpy_cavi(name, n_threads, prior, block_rows, monkeypatch):
    """Also with the kernel's minor-axis cache blocks cut to a few rows (thousands on large
    data), so rows whose nonzeros skip whole blocks are covered."""
    if block_rows is not None:  # K=3 runs padded to 4 columns
        monkeypatch.setattr(vbsnmf._kernels, "MINOR_BLOCK_BYTES", 8 * 4 * block_rows)
        assert vbsnmf._kernels.minor_block_rows(4) == block_rows
    X = _small_matrices()[name]
    a, b = prior
    rng = np.random.default_rng(7)
    start = _random_params(rng, *X.shape, 3)
    expected = ref.iteration(X, *start, a, b)
    model = vbsnmf.VBNMF(3, prior_shape=a, prior_rate=b, max_iter=1, n_threads=n_threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(sp.csr_matrix(X), init=_as_dict(start))
    got = (model.obs_shape_, model.obs_rate_, model.var_shape_, model.var_rate_)
    for mine, theirs in zip(got, expected):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-10)
    # The trace holds the ELBO of the parameters after the iteration.
    assert model.elbo_trace_.shape == (1,)
    np.testing.assert_allclose(model.elbo_trace_[0], ref.elbo(X, *expected, a, b), rtol=1e-10)


@pytest.mark.parametrize("name", ["plain", "empty_rows_cols"])
def test_elbo_matches_numpy_reference(name):
    X = _small_matrices()[name]
    start = _random_params(np.random.default_rng(3), *X.shape, 4)
    data = _vb.as_count_data(sp.coo_matrix(X))
    got = _vb.elbo(data, _vb.VariationalParams(*start), 0.7, 1.3, n_chunks=2)
    np.testing.assert_allclose(got, ref.elbo(X, *start, 0.7, 1.3), rtol=1e-10)


@pytest.mark.parametrize("block_rows", [None, 1])
def test_log_space_fallback_when_products_underflow(block_rows, monkeypatch):
    """Rows peaked on different components: exp(E[log z]) exp(E[log w]) underflows to 0
    on every component, the kernel must fall back to log-sum-exp and stay exact (also
    with one minor row per cache block)."""
    if block_rows is not None:
        monkeypatch.setattr(vbsnmf._kernels, "MINOR_BLOCK_BYTES", 8 * 4 * block_rows)
    X = np.array([[3.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    tiny_shape = 1e-3  # digamma(1e-3) ~ -1000: exp underflows in float64
    row_shape = np.array([[50.0, tiny_shape], [tiny_shape, 50.0]])
    col_shape = np.array([[tiny_shape, 40.0], [40.0, tiny_shape], [tiny_shape, tiny_shape]])
    params = (row_shape, np.ones(2), col_shape, np.ones(2))
    data = _vb.as_count_data(sp.csr_matrix(X))
    row_stat, col_stat, data_term = _vb.shape_statistics(data, _vb.VariationalParams(*params), 1)
    assert np.all(np.isfinite(row_stat)) and np.all(np.isfinite(col_stat))
    expected = ref.iteration(X, *params, 1e-3, 1.0)
    np.testing.assert_allclose(row_stat + 1e-3, expected[0], rtol=1e-10)
    np.testing.assert_allclose(col_stat + 1e-3, expected[2], rtol=1e-10)
    np.testing.assert_allclose(
        data_term + _vb.elbo_rest(_vb.VariationalParams(*params), 1e-3, 1.0),
        ref.elbo(X, *params, 1e-3, 1.0),
        rtol=1e-10,
    )


def _simulate(rng, n_rows, n_cols, k, shape=0.5):
    true_rows = rng.gamma(shape, 1.0, (n_rows, k))
    true_cols = rng.gamma(shape, 2.0, (n_cols, k))
    mean = true_rows @ true_cols.T
    return sp.csr_matrix(rng.poisson(mean).astype(float)), mean


@pytest.mark.parametrize("prior_shape", [1e-3, 0.3, 1.0])
def test_elbo_never_decreases_over_300_iterations(prior_shape, _pbmc_tiny):
    simulated, _ = _simulate(np.random.default_rng(5), 120, 90, 4)
    for X in (_pbmc_tiny.X, simulated):
        model = vbsnmf.VBNMF(
            5, prior_shape=prior_shape, max_iter=300, tol=0.0, random_state=0, n_threads=2
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            model.fit(X)
        trace = model.elbo_trace_
        assert trace.shape == (300,)
        assert np.all(np.isfinite(trace))
        steps = np.diff(trace)
        assert np.all(steps >= -1e-9 * np.abs(trace[1:])), steps.min()


def test_recovers_simulated_mean():
    rng = np.random.default_rng(11)
    X, true_mean = _simulate(rng, 300, 200, 3, shape=1.0)
    model = vbsnmf.VBNMF(3, max_iter=500, tol=1e-7, random_state=0, n_init=2)
    cell_factors = model.fit_transform(X)
    fitted_mean = cell_factors @ model.components_
    correlation = np.corrcoef(fitted_mean.ravel(), true_mean.ravel())[0, 1]
    assert correlation > 0.95, correlation


def test_same_seed_and_threads_bitwise_identical(_pbmc_tiny):
    traces = []
    for _ in range(2):
        model = vbsnmf.VBNMF(4, max_iter=40, tol=0, random_state=42, n_threads=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            model.fit(_pbmc_tiny.X)
        traces.append((model.elbo_trace_, model.obs_shape_))
    assert traces[0][0].tobytes() == traces[1][0].tobytes()
    assert traces[0][1].tobytes() == traces[1][1].tobytes()


def test_thread_counts_agree(_pbmc_tiny):
    fits = []
    for n_threads in (1, 2):
        model = vbsnmf.VBNMF(4, max_iter=20, tol=0, random_state=3, n_threads=n_threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            model.fit(_pbmc_tiny.X)
        fits.append(model.elbo_trace_)
    np.testing.assert_allclose(fits[0], fits[1], rtol=1e-10)


def test_huge_counts_and_tiny_prior_stay_finite():
    rng = np.random.default_rng(2)
    X = sp.random(60, 40, density=0.2, random_state=rng, format="csr")
    X.data = np.round(X.data * 1e6)
    X.eliminate_zeros()
    model = vbsnmf.VBNMF(5, prior_shape=1e-3, max_iter=50, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        factors = model.fit_transform(X)
    for array in (factors, model.components_, model.elbo_trace_, model.obs_shape_):
        assert np.all(np.isfinite(array))
    assert np.all(np.diff(model.elbo_trace_) >= -1e-9 * np.abs(model.elbo_trace_[1:]))


def test_converges_and_stops_on_tol(_pbmc_tiny):
    model = vbsnmf.VBNMF(3, max_iter=2000, tol=1e-4, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", vbsnmf.ConvergenceWarning)
        model.fit(_pbmc_tiny.X)
    trace = model.elbo_trace_
    assert model.converged_ and model.n_iter_ == len(trace) < 2000
    assert abs(trace[-1] - trace[-2]) <= 1e-4 * abs(trace[-2])
    assert abs(trace[-2] - trace[-3]) > 1e-4 * abs(trace[-3])


def test_max_iter_warns():
    X = np.random.default_rng(0).poisson(2.0, (30, 20))
    with pytest.warns(vbsnmf.ConvergenceWarning, match="max_iter=3"):
        model = vbsnmf.VBNMF(2, max_iter=3, tol=0, random_state=0).fit(X)
    assert model.n_iter_ == 3


def test_warnings_name_the_callers_line(_pbmc_tiny):
    """Raised deep in the library (and behind scikit-learn's set_output wrapper), every
    warning is attributed to the line that called vbsnmf."""
    import anndata as ad

    X = sp.csr_matrix(_pbmc_tiny.X)
    calls = {
        "fit": lambda: vbsnmf.VBNMF(2, max_iter=1).fit(X),
        "fit_transform": lambda: vbsnmf.VBNMF(2, max_iter=1).fit_transform(X),
        "svi": lambda: vbsnmf.VBNMF(2, method="svi", n_epochs=1, random_state=0).fit(X),
        "non-integer": lambda: vbsnmf.VBNMF(2, max_iter=1).fit(X * 0.5),
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


def test_attributes_and_orientation():
    X, _ = _simulate(np.random.default_rng(4), 40, 70, 2)
    model = vbsnmf.VBNMF(2, random_state=0, max_iter=20, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        factors = model.fit_transform(X)
    assert factors.shape == (40, 2) and model.obs_shape_.shape == (40, 2)
    assert model.var_shape_.shape == (70, 2) and model.obs_rate_.shape == (2,)
    np.testing.assert_array_equal(model.components_, (model.var_shape_ / model.var_rate_).T)
    np.testing.assert_array_equal(factors, model.obs_shape_ / model.obs_rate_)
    # Dense, CSR, CSC and COO give the same fit.
    for other in (X.toarray(), X.tocsc(), X.tocoo()):
        again = vbsnmf.VBNMF(2, random_state=0, max_iter=20, tol=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            again.fit(other)
        np.testing.assert_array_equal(again.elbo_trace_, model.elbo_trace_)


def test_empty_rows_keep_prior_shape():
    X = np.random.default_rng(0).poisson(1.0, (20, 15)).astype(float)
    X[4] = 0
    model = vbsnmf.VBNMF(3, prior_shape=0.5, max_iter=10, tol=0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(X)
    np.testing.assert_array_equal(model.obs_shape_[4], 0.5)


def test_float32_halves_factor_memory(_pbmc_tiny):
    model = vbsnmf.VBNMF(4, max_iter=30, tol=0, random_state=0, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(_pbmc_tiny.X)
    assert model.obs_shape_.dtype == np.float32 and model.components_.dtype == np.float32
    assert np.all(np.isfinite(model.elbo_trace_))
    double = vbsnmf.VBNMF(4, max_iter=30, tol=0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        double.fit(_pbmc_tiny.X)
    assert model.obs_shape_.nbytes * 2 == double.obs_shape_.nbytes
    np.testing.assert_allclose(model.elbo_trace_, double.elbo_trace_, rtol=1e-3)


def test_transform_matches_reference_local_cavi():
    rng = np.random.default_rng(8)
    X, _ = _simulate(rng, 80, 30, 3)
    model = vbsnmf.VBNMF(3, max_iter=100, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(X)
    new_rows = rng.poisson(2.0, (7, 30)).astype(float)
    new_rows[2] = 0
    fixed = vbsnmf.VBNMF(3, max_iter=25, tol=0.0)
    fixed.__dict__.update({k: v for k, v in model.__dict__.items() if k.endswith("_")})
    shape, rate = fixed.transform_posterior(new_rows)
    ref_shape, ref_rate = ref.fit_rows(new_rows, model.var_shape_, model.var_rate_, 1.0, 1.0, 25)
    np.testing.assert_allclose(shape, ref_shape, rtol=1e-10)
    np.testing.assert_allclose(rate, ref_rate, rtol=1e-12)
    np.testing.assert_allclose(fixed.transform(new_rows), ref_shape / ref_rate, rtol=1e-10)


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
    kwargs = dict(max_iter=15, tol=0, random_state=1)
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
        vbsnmf.VBNMF(2).fit(X)
    with pytest.raises(ValueError, match=message):
        vbsnmf.VBNMF(2).fit(sp.csr_matrix(X))


def test_bad_shapes_and_components_raise():
    with pytest.raises(ValueError, match="at least one row"):
        vbsnmf.VBNMF(1).fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="at least one row"):
        vbsnmf.VBNMF(1).fit(sp.csr_matrix((4, 0)))
    X = np.ones((4, 3))
    for k in (0, 4, -2):
        with pytest.raises(ValueError, match="n_components"):
            vbsnmf.VBNMF(k).fit(X)
    with pytest.raises(ValueError, match="prior_shape"):
        vbsnmf.VBNMF(2, prior_shape=0).fit(X)
    with pytest.raises(ValueError, match="dtype"):
        vbsnmf.VBNMF(2, dtype=np.int64).fit(X)


def test_non_integer_counts_warn():
    X = np.full((4, 3), 1.5)
    with pytest.warns(vbsnmf.NonCountWarning, match="raw counts"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            vbsnmf.VBNMF(1, max_iter=2).fit(X)


def test_input_matrix_is_not_modified():
    """Unsorted indices, duplicates and explicit zeros are handled on a copy."""
    X = sp.csr_matrix(
        (np.array([2.0, 0.0, 1.0, 3.0]), np.array([2, 0, 1, 2]), np.array([0, 3, 4])),
        shape=(2, 3),
    )
    before = (X.data.copy(), X.indices.copy(), X.indptr.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(1, max_iter=2).fit(X)
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
    from vbsnmf import _dask

    fits = {
        "batch": lambda X: vbsnmf.VBNMF(2, max_iter=2).fit(X),
        "svi cells": lambda X: vbsnmf.VBNMF(2, method="svi", n_epochs=1).fit(X),
        "svi textbook": lambda X: vbsnmf.VBNMF(
            2, method="svi", svi_form="textbook", n_epochs=1
        ).fit(X),
        "transform": lambda X: vbsnmf.VBNMF(2, max_iter=2).fit(_valid_csr()).transform(X),
        "tl.nmf": lambda X: vbsnmf.tl.nmf(__import__("anndata").AnnData(X), 2, max_iter=2),
        "classic": lambda X: vbsnmf.NMF(2, max_iter=2).fit(X),
        "dask chunk": lambda X: _dask._chunk_count_data(X, 0),
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
        vbsnmf.VBNMF(2, method="svi", n_epochs=1).fit(path)
    assert str(path) in str(caught.value)
    capfd.readouterr()
    assert main(["fit", str(path), "-k", "2", "-o", str(tmp_path / "out"), "--quiet"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "corrupt" in err
    assert not (tmp_path / "out").exists()
