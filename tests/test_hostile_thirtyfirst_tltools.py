"""The thirty-first hostile pass over the tools beside the fit and `VBNMF`'s scikit-learn
face: `VBNMF` had no ``inverse_transform`` (scikit-learn's decompositions, and this
package's classical `NMF`, map factors back to the data; a Pipeline's ``inverse_transform``
failed with AttributeError); a fit's arrays kept as scipy sparse matrices in ``.varm`` or
``.obsm`` (anndata stores and reads them back so) were refused as "object values, not
numbers" (`tl.top_genes`) or "shape ()" (`tl.project`, a warm start), though they hold the
fit's numbers. Guards pin what was checked and held: `VBNMF.transform` under the learned
prior against a numpy coordinate ascent of the cell and its scale."""

from __future__ import annotations

import pickle
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import digamma

from vbsnmf import VBNMF, tl

FIT = {"max_iter": 30, "n_threads": 1, "random_state": 0}


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


def _counts(n_cells: int = 40, n_genes: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    factors = rng.gamma(1.0, 1.0, (n_cells, 3)) @ rng.gamma(1.0, 1.0, (3, n_genes))
    return rng.poisson(factors).astype(np.float32)


def _anndata(counts: np.ndarray) -> ad.AnnData:
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.var_names = [f"g{j}" for j in range(counts.shape[1])]
    return adata


# -- 1: VBNMF.inverse_transform -------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return _quiet(VBNMF(3, **FIT).fit, _counts().astype(np.float64))


def test_inverse_transform_gives_the_expected_counts(model):
    """``X @ components_``: each entry's E[z] E[w] from the fitted q(w), as numpy computes it."""
    factors = _quiet(model.transform, _counts())
    expected = factors @ (model.gene_shape_ / model.gene_rate_).T
    back = model.inverse_transform(factors)
    assert back.shape == (40, 12) and back.dtype == np.float64
    np.testing.assert_allclose(back, expected, rtol=1e-12)
    # sparse factors, a list, and the pickled model give the same
    assert np.array_equal(model.inverse_transform(sp.csr_matrix(factors)), back)
    assert np.array_equal(model.inverse_transform(factors.tolist()), back)
    assert np.array_equal(pickle.loads(pickle.dumps(model)).inverse_transform(factors), back)


def test_inverse_transform_through_a_pipeline_and_in_float32():
    from sklearn.pipeline import make_pipeline

    counts = _counts().astype(np.float64)
    pipe = _quiet(make_pipeline(VBNMF(3, **FIT)).fit, counts)
    back = pipe.inverse_transform(_quiet(pipe.transform, counts))
    assert back.shape == counts.shape and np.all(back > 0)
    single = _quiet(VBNMF(3, dtype=np.float32, **FIT).fit, counts)
    assert single.inverse_transform(_quiet(single.transform, counts)).dtype == np.float32


@pytest.mark.parametrize(
    ("factors", "error", "match"),
    [
        (np.ones((2, 4)), ValueError, "X has 4 columns, but VBNMF has 3 components"),
        (np.ones(3), ValueError, "must be 2-D"),
        (np.array([[1.0, np.nan, 1.0]]), ValueError, "must be finite"),
        (np.ones((2, 3)) + 1j, TypeError, "complex"),
        (np.array([["a", "b", "c"]]), TypeError, "numeric"),
        (np.ma.masked_array(np.ones((2, 3)), mask=[[1, 0, 0], [0, 0, 0]]), TypeError, "mask"),
    ],
    ids=["width", "1-d", "nan", "complex", "strings", "masked"],
)
def test_inverse_transform_refuses_what_is_not_cell_factors(model, factors, error, match):
    with pytest.raises(error, match=match):
        model.inverse_transform(factors)


def test_inverse_transform_before_fit_is_not_fitted():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        VBNMF(3).inverse_transform(np.ones((2, 3)))


# -- 2: a fit's arrays stored sparse --------------------------------------------------------
@pytest.fixture(scope="module", params=["gamma", "hierarchical"])
def reference(request):
    adata = _anndata(_counts())
    _quiet(tl.nmf, adata, 3, prior=request.param, **FIT)
    return adata


def _sparse_copy(adata: ad.AnnData, *names: str) -> ad.AnnData:
    stored = adata.copy()
    for name in names:
        side = stored.obsm if name.startswith("X_") or "_cell_" in name else stored.varm
        side[name] = sp.csr_matrix(side[name])
    return stored


def test_top_genes_reads_sparse_stored_factors_and_loadings(reference):
    stored = _sparse_copy(reference, "NMF", "X_nmf")
    assert tl.top_genes(stored, 4).equals(tl.top_genes(reference, 4))


def test_project_reads_a_sparse_stored_gene_side(reference):
    names = [name for name in reference.varm if name.startswith("nmf_gene_")]
    stored = _sparse_copy(reference, *names)
    new = _anndata(_counts(6, seed=1))
    expected = _quiet(tl.project, new, reference, copy=True, n_threads=1).obsm["X_nmf"]
    projected = _quiet(tl.project, new, stored, copy=True, n_threads=1).obsm["X_nmf"]
    assert np.array_equal(projected, expected)


def test_sparse_stored_arrays_survive_an_h5ad_round_trip(reference, tmp_path):
    """anndata writes and reads a sparse ``.varm`` back as sparse: the tools read it."""
    stored = _sparse_copy(reference, "NMF")
    stored.write_h5ad(tmp_path / "fit.h5ad")
    read = ad.read_h5ad(tmp_path / "fit.h5ad")
    assert sp.issparse(read.varm["NMF"])
    assert tl.top_genes(read, 4).equals(tl.top_genes(reference, 4))


def test_a_sparse_array_with_nan_rows_is_named_as_padded(reference):
    """The NaN rows that ``anndata.concat(join="outer")`` pads are named in a sparse array too
    (it was "object values")."""
    stored = reference.copy()
    loadings = stored.varm["NMF"].copy()
    loadings[0] = np.nan
    stored.varm["NMF"] = sp.csr_matrix(loadings)
    with pytest.raises(ValueError, match="NaN or infinite values in 1 of its 12 rows"):
        tl.top_genes(stored)


# -- guards: results against numpy ---------------------------------------------------------
def test_transform_under_the_learned_prior_matches_a_numpy_coordinate_ascent():
    """A guard: q(z) and q(xi) of each new cell alternate, q(w) and the hyperparameters held."""
    counts = _counts().astype(np.float64)
    model = _quiet(VBNMF(3, max_iter=200, n_threads=1, random_state=0).fit, counts)
    hyper = model.hyperparameters_
    factor_shape = np.asarray(hyper["cell_factor_shape"], dtype=np.float64)
    scale_shape = float(hyper["cell_scale_prior_shape"])
    scale_mean = float(hyper["cell_scale_prior_mean"])
    mean_w = model.gene_shape_ / model.gene_rate_
    log_w = digamma(model.gene_shape_) - np.log(model.gene_rate_)
    model.set_params(tol=0.0, max_iter=2000)
    projected = _quiet(model.transform, counts[:4])
    for cell, result in zip(counts[:4], projected, strict=True):
        shape, mean_xi = np.full(3, 2.0), scale_mean
        for _ in range(2000):
            rate = mean_xi + mean_w.sum(axis=0)
            log_p = digamma(shape) - np.log(rate) + log_w
            p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
            shape = factor_shape + (cell[:, None] * p / p.sum(axis=1, keepdims=True)).sum(0)
            total = (shape / rate).sum()
            mean_xi = (scale_shape + factor_shape.sum()) / (scale_shape / scale_mean + total)
        np.testing.assert_allclose(result, shape / (mean_xi + mean_w.sum(axis=0)), rtol=1e-8)


# -- 3: anndata.concat of a reference with cells projected onto it ---------------------------
@pytest.fixture(scope="module")
def projected(reference):
    new = _anndata(_counts(8, seed=2))
    _quiet(tl.project, new, reference, n_threads=1)
    return new


@pytest.mark.parametrize(
    "options",
    [{"uns_merge": "same", "merge": "same"}, {"uns_merge": "first", "merge": "same"}],
    ids=["record-dropped", "gene-side-dropped"],
)
def test_concat_with_projected_cells_is_advised_what_keeps_the_fit(reference, projected, options):
    """The "same" merges drop what the projected cells lack (the record, the gene side): the
    tools advised those very options, which the user had passed."""
    joined = ad.concat([reference, projected], index_unique="-", **options)
    with pytest.raises(KeyError) as raised:
        tl.top_genes(joined)
    assert "uns_merge='first' and merge='first', the reference first" in str(raised.value)


def test_concat_with_projected_cells_as_advised_keeps_a_usable_fit(reference, projected):
    """A guard: the advice holds; the tools read the joined AnnData's cells and gene side."""
    joined = ad.concat([reference, projected], index_unique="-", uns_merge="first", merge="first")
    table = tl.top_genes(joined, 3)
    assert table.shape[0] > 0 and set(table["gene"]) <= set(reference.var_names)
    new = _anndata(_counts(5, seed=3))
    expected = _quiet(tl.project, new, reference, copy=True, n_threads=1).obsm["X_nmf"]
    again = _quiet(tl.project, new, joined, copy=True, n_threads=1).obsm["X_nmf"]
    assert np.array_equal(again, expected)
