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
    kwargs = dict(max_iter=15, tol=0, random_state=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        from_triplets = vbsnmf.fit_triplets(rows, cols, counts, X.shape, 3, **kwargs)
        from_matrix = vbsnmf.VBNMF(3, **kwargs, prior="gamma").fit(dense)
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
