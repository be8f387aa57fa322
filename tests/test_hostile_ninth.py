"""Defects found by the ninth hostile pass, each pinned by the case that showed it."""

from __future__ import annotations

import pickle
import warnings

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from distributed import Client, LocalCluster

import vbsnmf


def _counts(n_cells=40, n_genes=25, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.poisson(1.5, (n_cells, n_genes)).astype(np.float64)
    dense[:, 0] += 1  # no empty cell
    return sp.csr_matrix(dense)


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_an_estimator_fitted_on_dask_outlives_its_client(prior):
    """Its cells' arrays were dask arrays reading the cluster's futures: after the client
    closed, or unpickled, they (and a warm start from the model) failed with dask's
    "Missing dependency". They are now numpy arrays, equal to the in-memory fit's."""
    X = _counts()
    options = dict(prior=prior, max_iter=6, tol=0.0, random_state=3, n_threads=1)
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    with Client(cluster), warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.VBNMF(3, **options)
        factors = model.fit_transform(da.from_array(X, chunks=(15, -1), asarray=False))
    cluster.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        expected = vbsnmf.VBNMF(3, **options).fit(X)
        restored = pickle.loads(pickle.dumps(model))
        vbsnmf.VBNMF(3, **{**options, "max_iter": 2}).fit(X, init=restored)
    assert isinstance(factors, np.ndarray)
    names = ["cell_shape_", "cell_rate_"]
    if prior == "hierarchical":
        names += ["cell_scale_shape_", "cell_scale_rate_"]
    for name in names:
        value = getattr(restored, name)
        assert isinstance(value, np.ndarray), name
        np.testing.assert_allclose(value, getattr(expected, name), rtol=1e-9, err_msg=name)
    np.testing.assert_allclose(factors, expected.cell_shape_ / expected.cell_rate_, rtol=1e-9)


def test_without_a_client_the_advice_fits_the_call():
    """The advice was "pass client=...", which `VBNMF.fit` and `tl.nmf` do not take; and
    `tl.nmf` computed every chunk for its count check before it refused."""
    X = da.from_array(_counts(), chunks=(15, -1), asarray=False)
    with pytest.raises(ValueError, match=r"no dask\.distributed client: create one first") as error:
        vbsnmf.VBNMF(2, max_iter=2).fit(X)
    assert "fit_dask and fit_svi_dask also take client=" in str(error.value)
    computed = []

    def counted(block):
        computed.extend([1] if block.shape[0] else [])  # not dask's call on an empty meta
        return block

    adata = ad.AnnData(X.map_blocks(counted, dtype=X.dtype))
    with pytest.raises(ValueError, match=r"no dask\.distributed client: create one first"):
        vbsnmf.tl.nmf(adata, n_components=2, max_iter=2)
    assert computed == []


@pytest.mark.parametrize("shape", [(0, 25), (10, 0)])
def test_a_dask_x_without_cells_or_genes_is_called_empty(shape):
    """It was told that n_components must lie between 1 and 0."""
    X = da.zeros(shape, chunks=(5, -1))
    axis = "sample" if shape[0] == 0 else "feature"
    with pytest.raises(ValueError, match=rf"X has 0 {axis}\(s\) \(shape=\({shape[0]}, "):
        vbsnmf.VBNMF(2).fit(X)


def test_a_mask_is_read_as_x_is():
    """A mask of object numbers or float16 (as X may be) got scipy's bare "does not support
    dtype"; strings and complex numbers now get a message naming the mask, and repeated
    entries of a narrow integer mask are summed wide (uint8 128 + 128 is not 0: the entry
    stays missing)."""
    X = _counts(12, 8)
    dense = np.zeros(X.shape)
    dense[2, 3] = dense[5, 1] = 1
    options = dict(max_iter=4, tol=0.0, random_state=1, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        expected = vbsnmf.VBNMF(2, **options).fit(X, mask=dense).elbo_trace_
        for mask in (dense.astype(object), dense.astype(np.float16)):
            got = vbsnmf.VBNMF(2, **options).fit(X, mask=mask).elbo_trace_
            np.testing.assert_array_equal(got, expected)
        repeated = sp.coo_matrix(
            (np.array([128, 128, 1], np.uint8), ([2, 2, 5], [3, 3, 1])), shape=X.shape
        )
        got = vbsnmf.VBNMF(2, **options).fit(X, mask=repeated).elbo_trace_
    np.testing.assert_array_equal(got, expected)
    for bad in (dense.astype(str), dense.astype(complex), np.array([["a"] * 8] * 12, object)):
        with pytest.raises(TypeError, match="mask must hold"):
            vbsnmf.VBNMF(2, **options).fit(X, mask=bad)


@pytest.mark.parametrize(
    ("dtype", "shape", "rate", "message"),
    [
        (np.float32, 1e3, 2e-38, "prior mean"),
        (np.float32, 1e6, 1e-35, "prior mean"),
        (np.float32, 1.0, 1e-46, "at least 1.17549e-38 in float32"),
        (np.float64, 1.0, 1e-320, "at least 2.22507e-308 in float64"),
    ],
)
def test_a_prior_rate_beyond_the_dtype_is_refused_before_the_fit(dtype, shape, rate, message):
    """A float32 fit under Gamma(1e3, 2e-38) (prior mean 5e40) passed the check and then
    failed with a NaN ELBO blamed on "a damaged checkpoint"; a rate of 1e-46 is 0 in
    float32. Both ends of the dtype are now checked, and the prior mean."""
    with pytest.raises(ValueError, match=message):
        vbsnmf.VBNMF(2, prior="gamma", prior_shape=shape, prior_rate=rate, dtype=dtype).fit(
            _counts()
        )


def test_a_prior_rate_within_the_dtype_fits():
    """The bound is the dtype's: a small rate whose prior mean is in range still fits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.VBNMF(
            2, prior="gamma", prior_shape=1e3, prior_rate=1e-30, dtype=np.float32, max_iter=20
        ).fit(_counts())
    assert np.all(np.isfinite(model.elbo_trace_))


def test_text_in_an_object_array_or_dataframe_is_not_counts():
    """numpy parses "3" as 3: an object array or a DataFrame of strings was fitted, where
    the same strings as a ``<U1`` array were refused."""
    pandas = pytest.importorskip("pandas")
    numbers = _counts(6, 4).toarray()
    text = numbers.astype(int).astype(str)
    for X in (
        text.astype(object),
        pandas.DataFrame(text),
        pandas.DataFrame(text, dtype="category"),
    ):
        with pytest.raises(TypeError, match="X must hold numbers, not text"):
            vbsnmf.VBNMF(2, max_iter=2).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.VBNMF(2, max_iter=2, random_state=0).fit(numbers.astype(object))
    with pytest.raises(TypeError, match="X must hold numbers, not text"):
        model.transform(text.astype(object))


@pytest.mark.parametrize("name", ["tol", "prior_shape", "prior_rate", "kappa", "tau"])
def test_an_integer_beyond_floats_is_named(name):
    """``float(10**400)`` raises OverflowError, which the checks let through bare."""
    params = {
        name: 10**400,
        "prior": "gamma",
        "solver": "svi" if name in ("kappa", "tau") else "batch",
    }
    with pytest.raises((ValueError, TypeError), match=name):
        vbsnmf.VBNMF(2, **params).fit(_counts())


def test_verbose_takes_flags_and_levels_not_text():
    """``verbose="no"`` printed every iteration; scikit-learn's integer levels still work."""
    with pytest.raises(TypeError, match="verbose must be True, False or an int"):
        vbsnmf.VBNMF(2, verbose="no").fit(_counts())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(2, verbose=0, max_iter=2).fit(_counts())


def test_transform_of_a_backed_x_says_to_read_it(tmp_path):
    """A backed X was "must be 2-D, got an array of shape ()" (numpy's view of it), and a
    backed AnnData was told to pass that X."""
    path = tmp_path / "counts.h5ad"
    ad.AnnData(_counts().astype(np.float32)).write_h5ad(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.VBNMF(2, max_iter=3).fit(_counts())
    backed = ad.read_h5ad(path, backed="r")
    try:
        for X in (backed, backed.X):
            with pytest.raises(TypeError, match=r"is read from disk; transform projects"):
                model.transform(X)
        expected = model.transform(_counts())
        np.testing.assert_array_equal(model.transform(backed.X[:]), expected)
    finally:
        backed.file.close()
