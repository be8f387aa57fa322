"""The twenty-sixth hostile pass over the tools beside the fit: ``tl.top_genes`` on a fit
whose ``.obsm`` / ``.varm`` arrays were cut to fewer factors than its record (the inactive
ones dropped by hand) failed with numpy's IndexError; ``tl.project`` onto a reference whose
stored gene side was damaged gave NaN cell factors for a NaN rate without a word, and
numpy's broadcast error for an array of the wrong width; its errors about a corrupt matrix or
a count beyond a float32 reference named "adata.X", not ``adata_new.X``;
``tl.gene_specificity`` took a masked array's hidden values and a complex array's real part
silently, and called a sparse matrix "not numeric"; ``tl.fit_info(adata)`` had no default
key, where the other tools read ``key="nmf"``."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import VBNMF, tl
from vbsnmf._validation import CorruptMatrixError, CountRangeError


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


def _counts() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.poisson(rng.gamma(1, 1, (40, 3)) @ rng.gamma(1, 1, (3, 12))).astype(np.float32)


def _anndata(counts: np.ndarray) -> ad.AnnData:
    adata = ad.AnnData(counts)
    adata.var_names = [f"g{j}" for j in range(counts.shape[1])]
    return adata


@pytest.fixture(scope="module")
def _reference():
    adata = _anndata(_counts())
    _quiet(tl.nmf, adata, 3, max_iter=20, min_share=0)
    return adata


@pytest.fixture
def reference(_reference):
    return _reference.copy()


@pytest.mark.parametrize("cut", [("obsm", "X_nmf"), ("varm", "NMF"), "both"])
def test_top_genes_names_factor_arrays_cut_to_fewer_factors(reference, cut):
    for side, name in [("obsm", "X_nmf"), ("varm", "NMF")] if cut == "both" else [cut]:
        holder = getattr(reference, side)
        holder[name] = holder[name][:, :2]
    entry = "adata.obsm['X_nmf']" if cut == ("obsm", "X_nmf") else "adata.varm['NMF']"
    with pytest.raises(ValueError, match=re.escape(entry) + r".*not one column per factor"):
        tl.top_genes(reference, 2)


def test_top_genes_of_a_whole_fit_match_the_specificity_from_its_arrays(reference):
    table = tl.top_genes(reference, 3, min_counts=0)
    loadings, factors = reference.varm["NMF"], reference.obsm["X_nmf"]
    expected = loadings * factors.sum(axis=0)
    expected /= expected.sum(axis=1, keepdims=True)
    genes = list(reference.var_names)
    for (factor, _), row in table.iterrows():
        assert row["specificity"] == pytest.approx(expected[genes.index(row["gene"]), factor])
    first = table.loc[0]["gene"].tolist()
    order = np.lexsort((-loadings[:, 0], -expected[:, 0]))
    assert first == [genes[j] for j in order[:3]]


def test_project_refuses_a_nan_in_the_reference_gene_side(reference):
    reference.varm["nmf_gene_rate"][3, 1] = np.nan
    new = _anndata(_counts()[:5])
    with pytest.raises(ValueError, match=re.escape("adata_ref.varm['nmf_gene_rate']")):
        _quiet(tl.project, new, reference)
    assert "X_nmf" not in new.obsm


def test_project_refuses_a_gene_shape_of_the_wrong_width(reference):
    reference.varm["nmf_gene_shape"] = reference.varm["nmf_gene_shape"][:, :2]
    with pytest.raises(ValueError, match=r"nmf_gene_shape'\] is damaged \(shape \(12, 2\)"):
        _quiet(tl.project, _anndata(_counts()[:5]), reference)


def test_project_still_leaves_out_nan_rows_of_genes_the_fit_never_saw(reference):
    """anndata.concat(join="outer") pads the gene side with NaN rows for genes the fit never
    saw: left out as before, and the factors are VBNMF.transform's."""
    counts = _counts()
    extra = ad.AnnData(np.ones((reference.n_obs, 2), dtype=np.float32), obs=reference.obs)
    extra.var_names = ["x0", "x1"]
    joined = ad.concat([reference, extra], axis=1, join="outer", merge="first", uns_merge="first")
    assert np.isnan(joined.varm["nmf_gene_shape"]).all(axis=1).sum() == 2
    new = _anndata(counts[:6])
    _quiet(tl.project, new, joined, max_iter=20)
    model = _quiet(VBNMF(3, max_iter=20, random_state=0).fit, counts)
    np.testing.assert_allclose(new.obsm["X_nmf"], model.transform(counts[:6]), rtol=1e-6)


def _beyond_float32(new: ad.AnnData) -> None:
    counts = np.asarray(new.X, dtype=np.float64)
    counts[0, 0] = 2**25
    new.X = counts


def _corrupt(new: ad.AnnData) -> None:
    matrix = sp.csr_matrix(new.X)
    matrix.indices[0] = 99
    new.X = matrix


@pytest.mark.parametrize(
    ("damage", "error"), [(_beyond_float32, CountRangeError), (_corrupt, CorruptMatrixError)]
)
def test_project_names_adata_new_in_errors_of_its_counts(damage, error):
    reference = _anndata(_counts())
    _quiet(tl.nmf, reference, 2, max_iter=5, dtype=np.float32)
    new = _anndata(_counts()[:5])
    damage(new)
    with pytest.raises(error, match=r"^adata_new\.X"):
        tl.project(new, reference)


@pytest.mark.parametrize(
    "values",
    [
        np.ma.masked_array(np.eye(4, 2) + 1, mask=np.eye(4, 2) > 0),
        np.eye(4, 2) + 1 + 1j,
    ],
    ids=["masked", "complex"],
)
def test_gene_specificity_refuses_values_numpy_would_change(values):
    with pytest.raises(TypeError, match="gene_loadings"):
        tl.gene_specificity(values, np.ones((3, 2)))


def test_gene_specificity_takes_sparse_loadings_as_dense():
    loadings = np.random.default_rng(0).gamma(1, 1, (6, 3))
    factors = np.random.default_rng(1).gamma(1, 1, (8, 3))
    expected = loadings * factors.sum(axis=0)
    expected /= expected.sum(axis=1, keepdims=True)
    shares = tl.gene_specificity(sp.csr_matrix(loadings), sp.csr_array(factors))
    np.testing.assert_allclose(shares, expected, rtol=1e-12)


def test_fit_info_reads_the_default_key(reference):
    assert tl.fit_info(reference) is reference.uns["nmf"]
