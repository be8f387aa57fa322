"""Thirty-third hostile pass: the scanpy tools on AnnData objects a scanpy user really has.

Defects, each test failing on the code before its fix: a counts layer of pandas' nullable
``Int64`` (anndata keeps such a DataFrame as an object array), which `tl.nmf` and
`tl.select_k` fit, was not named where the counts are: beside a log-normalised ``X`` the
error advised keeping the raw counts "before normalising" (the counts the user had kept),
and beside an ``X`` of zeros it named no place at all. And ``mask_var`` naming a
categorical ``.var`` column was refused as "not boolean (dtype object)", a dtype the
column does not have. An ``.uns['nmf']`` left by another tool, a dict whose ``obsm_key`` (or
``varm_key``) names an array of its own (``.obsm['X_pca']``, ``.varm['PCs']``), was taken
for an earlier fit at its word: `tl.nmf` deleted that array with it.

The other tests are guards that pass on the code before the fixes too; each says so.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import vbsnmf


def _counts(seed=0, n_cells=80, n_genes=30):
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(1, 2, (n_cells, 1)) * rng.gamma(0.5, 1, (1, n_genes)))


def _lognormalised(counts):
    """``sc.pp.normalize_total`` then ``sc.pp.log1p`` of ``counts``, by hand."""
    totals = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return np.log1p(counts / totals * 1e4)


def _with_nullable_counts(X, counts):
    adata = ad.AnnData(X)
    frame = pd.DataFrame(counts, index=adata.obs_names, columns=adata.var_names)
    adata.layers["counts"] = frame.astype("Int64")
    return adata


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter's ConvergenceWarning
        return call(*args, **kwargs)


@pytest.mark.parametrize("tool", ["nmf", "select_k"])
def test_nullable_counts_layer_named_beside_normalised_x(tool):
    """A log-normalised X beside a counts layer of pandas' Int64: the error named no layer
    and advised keeping counts before normalising; it now names layer='counts', which the
    tool fits."""
    counts = _counts()
    adata = _with_nullable_counts(_lognormalised(counts), counts)
    call = getattr(vbsnmf.tl, tool)
    options = {"n_components": 2} if tool == "nmf" else {"ks": (2,)}
    with pytest.raises(ValueError, match="appear to be in layer='counts'; pass that"):
        _quiet(call, adata, max_iter=5, **options)
    _quiet(call, adata, layer="counts", max_iter=5, **options)  # which it fits


def test_nullable_counts_layer_named_beside_empty_x():
    """An X of zeros beside a counts layer of pandas' Int64: "nothing to factorise" named
    no place; it now names the layer."""
    counts = _counts(1)
    adata = _with_nullable_counts(np.zeros(counts.shape), counts)
    with pytest.raises(ValueError, match="the counts appear to be in layer='counts'"):
        vbsnmf.tl.nmf(adata, n_components=2)


def test_object_layers_without_counts_not_named():
    """Guard (passes on both): object layers of text, or of numbers with a missing value,
    are not offered as the counts (the missing value would be refused)."""
    counts = _counts(2)
    adata = ad.AnnData(_lognormalised(counts))
    adata.layers["text"] = counts.astype(str).astype(object)
    frame = pd.DataFrame(counts, index=adata.obs_names, columns=adata.var_names).astype("Int64")
    frame.iloc[0, 0] = pd.NA
    adata.layers["with_na"] = frame
    with pytest.raises(ValueError, match="keep the raw counts before normalising") as error:
        vbsnmf.tl.nmf(adata, n_components=2)
    assert "layer=" not in str(error.value).split("NMF needs raw counts:")[1].split("e.g.")[0]


def test_categorical_mask_column_named_by_its_dtype():
    """A categorical mask_var column was "not boolean (dtype object)"; its dtype is said."""
    adata = ad.AnnData(_counts(3).astype(np.float32))
    adata.var["hv"] = pd.Categorical(["yes", "no"] * (adata.n_vars // 2))
    with pytest.raises(ValueError, match=r"adata.var\['hv'\] is not boolean \(dtype category\)"):
        vbsnmf.tl.nmf(adata, n_components=2, mask_var="hv")
    with pytest.raises(ValueError, match=r"\(dtype category\)"):
        vbsnmf.tl.select_k(adata, ks=(2,), mask_var="hv")


@pytest.mark.parametrize(
    "dtype", [np.int8, np.uint8, np.int16, np.uint16, np.uint32, np.int64, np.uint64]
)
@pytest.mark.parametrize("container", [sp.csr_array, sp.csr_matrix, np.asarray])
def test_narrow_integer_counts_totals(dtype, container):
    """Guard (passes on both): X of narrow integers, as a sparse array or matrix or dense,
    is fitted, and its gene totals (one gene above int8's and uint8's range in sum) are the
    exact column sums, in float64 as the Returns section says."""
    counts = _counts(4, n_cells=300, n_genes=12)
    counts[:, 0] = 100  # a total of 30000: beyond int8, uint8 and (by 2x) no int16 wrap
    adata = ad.AnnData(container(counts.astype(dtype)))
    _quiet(vbsnmf.tl.nmf, adata, n_components=2, max_iter=5)
    totals = adata.var["nmf_total_counts"]
    assert totals.dtype == np.float64
    np.testing.assert_array_equal(totals.to_numpy(), counts.sum(axis=0))
    assert adata.obsm["X_nmf"].dtype == np.float64


@pytest.mark.parametrize(
    ("solver", "extra", "uns", "obsm"),
    [
        (
            "batch",
            {},
            {"elbo_trace", "elbo_iter", "variational"},
            {"nmf_cell_shape", "nmf_cell_rate", "nmf_cell_scale_shape", "nmf_cell_scale_rate"},
        ),
        (
            "batch",
            {"prior": "gamma"},
            {"elbo_trace", "elbo_iter", "variational"},
            {"nmf_cell_shape"},
        ),
        ("mu", {}, {"loss_trace", "loss", "reconstruction_err"}, set()),
    ],
)
def test_returns_section_matches_what_nmf_sets(solver, extra, uns, obsm):
    """Guard (passes on both): the entries tl.nmf sets are those its Returns section lists
    (per solver and prior), and the usages, their square roots and factor shares are what
    it says, computed anew from the stored factors and loadings."""
    adata = ad.AnnData(sp.csr_array(_counts(5).astype(np.float32)))
    _quiet(vbsnmf.tl.nmf, adata, n_components=3, solver=solver, max_iter=30, **extra)
    base = {"X_nmf", "X_nmf_usage", "X_nmf_sqrt_usage"}
    assert set(adata.obsm) == base | obsm
    genes = {"NMF"} | {name.replace("cell", "gene") for name in obsm}
    assert set(adata.varm) == genes
    assert list(adata.var.columns) == ["nmf_total_counts"]
    record = {"params", "obsm_key", "usage_key", "sqrt_usage_key", "varm_key", "n_genes"}
    record |= {"n_cells", "cells_digest", "genes_digest", "counts_sketch"}
    record |= {"n_iter", "converged", "factor_share", "loading_totals", "active"}
    record |= {"min_share", "versions"}
    assert set(adata.uns["nmf"]) == record | uns
    factors, loadings = adata.obsm["X_nmf"], adata.varm["NMF"]
    weighted = factors * loadings.sum(axis=0)
    totals = weighted.sum(axis=1, keepdims=True)
    # a cell without counts: zero usages under a classical solver (its warning says so)
    usage = np.divide(weighted, totals, out=np.zeros_like(weighted), where=totals > 0)
    np.testing.assert_allclose(adata.obsm["X_nmf_usage"], usage, rtol=1e-12)
    np.testing.assert_allclose(adata.obsm["X_nmf_sqrt_usage"] ** 2, usage, rtol=1e-12)
    share = factors.sum(axis=0) * loadings.sum(axis=0)
    np.testing.assert_allclose(adata.uns["nmf"]["factor_share"], share / share.sum(), rtol=1e-12)
    np.testing.assert_allclose(adata.uns["nmf"]["loading_totals"], loadings.sum(axis=0), rtol=1e-12)


def test_concat_of_two_fits_keeps_no_record():
    """Guard (passes on both): anndata.concat of two fitted AnnData drops the records and
    the gene side; the tools say so, and a refit names the arrays left without a record."""
    first, second = (ad.AnnData(_counts(seed).astype(np.float32)) for seed in (6, 7))
    for adata in (first, second):
        _quiet(vbsnmf.tl.nmf, adata, n_components=2, max_iter=10)
    joined = ad.concat([first, second], index_unique="-")
    assert "nmf" not in joined.uns and "NMF" not in joined.varm
    with pytest.raises(KeyError, match="holds no NMF fit"):
        vbsnmf.tl.top_genes(joined)
    with pytest.raises(ValueError, match=r"dropped by anndata\.concat"):
        vbsnmf.tl.nmf(joined, n_components=2)


def test_zero_cells_after_filtering():
    """Guard (passes on both): an AnnData left with no cell is refused by a ValueError
    naming the matrix, by tl.nmf under each source of counts and by tl.top_genes."""
    adata = ad.AnnData(_counts(8).astype(np.float32))
    adata.layers["counts"] = adata.X.copy()
    adata.raw = adata.copy()
    _quiet(vbsnmf.tl.nmf, adata, n_components=2, max_iter=5)
    empty = adata[np.zeros(adata.n_obs, bool)].copy()
    for source, options in (("adata.X", {}), ("adata.layers", {"layer": "counts"})):
        with pytest.raises(ValueError, match=rf"{source}.* has 0 sample"):
            vbsnmf.tl.nmf(empty, n_components=2, **options)
    with pytest.raises(ValueError, match=r"adata.raw.X has 0 sample"):
        vbsnmf.tl.nmf(empty, n_components=2, use_raw=True)
    with pytest.raises(ValueError, match="holds no cells"):
        vbsnmf.tl.top_genes(empty)


def test_view_of_view_and_copy():
    """Guard (passes on both): a fit of a view of a view (cells, then genes) becomes the
    view's own AnnData, leaving the parent untouched; copy=True leaves the view a view."""
    adata = ad.AnnData(_counts(9).astype(np.float32))
    adata.obs_names = [str(i) for i in range(adata.n_obs)]  # ints as strings
    adata.var_names = [str(1000 + j) for j in range(adata.n_vars)]
    view = adata[adata.obs_names[:60]][:, adata.var_names[:20]]
    copied = _quiet(vbsnmf.tl.nmf, view, n_components=2, max_iter=5, copy=True)
    assert view.is_view and "X_nmf" not in view.obsm and copied.obsm["X_nmf"].shape == (60, 2)
    _quiet(vbsnmf.tl.nmf, view, n_components=2, max_iter=5)
    assert not view.is_view and view.varm["NMF"].shape == (20, 2)
    assert "X_nmf" not in adata.obsm and "nmf" not in adata.uns
    table = vbsnmf.tl.top_genes(view, n_genes=2)
    assert set(table["gene"]) <= set(view.var_names)


@pytest.mark.parametrize(
    ("record", "side", "name"),
    [
        ({"obsm_key": "X_pca", "method": "another tool"}, "obsm", "X_pca"),
        ({"obsm_key": "X_nmf", "varm_key": "PCs"}, "varm", "PCs"),
    ],
)
def test_foreign_record_naming_other_arrays_keeps_them(record, side, name):
    """An .uns['nmf'] of another tool whose "obsm_key" or "varm_key" names an array of its
    own (scanpy's PCA): tl.nmf took it for its earlier fit and deleted that array with it."""
    adata = ad.AnnData(_counts(10).astype(np.float32))
    kept = np.random.default_rng(0).normal(
        size=(adata.n_obs if side == "obsm" else adata.n_vars, 4)
    )
    getattr(adata, side)[name] = kept.copy()
    adata.uns["nmf"] = record
    _quiet(vbsnmf.tl.nmf, adata, n_components=2, max_iter=5)
    np.testing.assert_array_equal(getattr(adata, side)[name], kept)
    assert adata.obsm["X_nmf"].shape == (adata.n_obs, 2)


def test_moved_record_still_owns_its_arrays():
    """Guard (passes on both): a fit's record moved to another .uns key still names its
    arrays: a new fit under the default key is refused rather than overwrite them, and a
    refit under the moved key replaces them."""
    adata = ad.AnnData(_counts(11).astype(np.float32))
    _quiet(vbsnmf.tl.nmf, adata, n_components=2, max_iter=5)
    adata.uns["nmf_old"] = adata.uns.pop("nmf")
    with pytest.raises(ValueError, match=r"of the fit adata.uns\['nmf_old'\]"):
        vbsnmf.tl.nmf(adata, n_components=2, max_iter=5)
    _quiet(vbsnmf.tl.nmf, adata, n_components=3, max_iter=5, key_added="nmf_old")
    assert "X_nmf" not in adata.obsm and "NMF" not in adata.varm
    assert adata.obsm["X_nmf_old"].shape == (adata.n_obs, 3)
