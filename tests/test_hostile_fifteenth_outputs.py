"""Defects of what is done with a fit after `vbsnmf.tl.nmf`, found by the fifteenth hostile
pass: a fitted AnnData joined by ``anndata.concat(..., join="outer")`` to cells or genes the
fit never saw carries NaN rows in the fit's ``.obsm`` and ``.varm`` arrays, which the tables
wrote as empty fields and the tools refused without naming."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import numpy as np
import pytest

import vbsnmf
from vbsnmf import io, tl


@pytest.fixture(scope="module")
def fitted():
    """A K=3 fit of 80 cells and 250 genes of pbmc_tiny, and the AnnData of all 120 cells
    and 300 genes."""
    adata = vbsnmf.datasets.pbmc_tiny()[:120, :300].copy()
    fit = adata[:80, :250].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(fit, 3, max_iter=5, n_threads=1)
    return fit, adata


def _joined(fitted, cells: bool = True, genes: bool = True):
    """The fit joined (an outer join, keeping the fit's record and gene arrays) with the
    cells it did not see (``cells``) over every gene, or over the fitted genes only."""
    fit, adata = fitted
    new = adata[80:] if genes else adata[80:, fit.var_names]
    parts = [fit, new] if cells else [fit, adata[:80, 250:]]
    axis = 0 if cells else 1
    return ad.concat(
        [part.copy() for part in parts],
        axis=axis,
        join="outer",
        merge="unique",
        uns_merge="unique",
    )


def test_tables_of_cells_the_fit_did_not_see_are_refused_and_nothing_is_written(fitted, tmp_path):
    """write_nmf_tables wrote the 40 joined cells' NaN factors as rows of empty fields (and
    the 50 joined genes' NaN loadings likewise), silently."""
    joined = _joined(fitted)
    assert np.isnan(joined.obsm["X_nmf"]).any(axis=1).sum() == 40
    with pytest.raises(ValueError, match=re.escape("adata.obsm['X_nmf']") + ".* 40 of its 120"):
        io.write_nmf_tables(joined, tmp_path)
    assert list(tmp_path.iterdir()) == []
    genes = _joined(fitted, cells=False)
    with pytest.raises(ValueError, match=re.escape("adata.varm['NMF']") + ".* 50 of its 300"):
        io.write_nmf_tables(genes, tmp_path)
    assert list(tmp_path.iterdir()) == []
    # the fitted cells and genes alone are written as before
    fit = fitted[0]
    io.write_nmf_tables(joined[fit.obs_names, fit.var_names], tmp_path)
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["cell_factors.tsv.gz", "elbo.tsv", "gene_loadings.tsv.gz"]


def test_top_genes_names_the_nan_rows_of_a_joined_fit(fitted):
    """tl.top_genes (and pl.top_genes through it) said only "gene_loadings must be finite and
    non-negative": no entry, no cause, no way out."""
    with pytest.raises(ValueError, match=re.escape("adata.varm['NMF'] of the fit 'nmf'")):
        tl.top_genes(_joined(fitted))
    with pytest.raises(ValueError, match=re.escape("adata.obsm['X_nmf']") + ".*tl.project"):
        tl.top_genes(_joined(fitted, genes=False))
    # the fitted cells' and genes' top genes are those of the fit itself
    fit = fitted[0]
    joined = _joined(fitted)
    expected = tl.top_genes(fit, 5)
    fitted_part = joined[fit.obs_names, fit.var_names]
    np.testing.assert_array_equal(tl.top_genes(fitted_part, 5)["gene"], expected["gene"])


def test_a_warm_start_over_cells_the_fit_did_not_see_names_them_not_an_init(fitted):
    """tl.nmf(warm_start=True) said "init cell_shape must be positive and finite", an init
    the user never passed, with no word of the cells that have no stored factors."""
    joined = _joined(fitted, genes=False)
    with pytest.raises(
        ValueError, match=r"warm_start: adata\.obsm\['nmf_cell_shape'\].* 40 of its 120 rows"
    ):
        tl.nmf(joined, 3, max_iter=1, n_threads=1, warm_start=True)
    assert joined.uns["nmf"]["n_iter"] == fitted[0].uns["nmf"]["n_iter"]  # left as it was


def test_a_fit_of_raw_names_the_missing_entries_of_raw(fitted, tmp_path):
    """After a fit of .raw, scanpy's ``adata.raw = adata`` replaces .raw (its .var and
    .varm become adata's): the tools said the fit had no ``.var['nmf_total_counts']`` or
    ``.varm['nmf_gene_shape']``, adata's own entries, which never held them."""
    adata = fitted[1][:60, :100].copy()
    adata.raw = adata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cells without counts in these genes, max_iter
        tl.nmf(adata, 2, use_raw=True, max_iter=2, n_threads=1)
    adata.raw = adata
    with pytest.raises(KeyError, match=re.escape("has no .raw.var['nmf_total_counts']")):
        tl.top_genes(adata)
    with (
        pytest.raises(ValueError, match=re.escape("has no .raw.varm['nmf_gene_shape']")),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        tl.nmf(adata, 2, use_raw=True, warm_start=True, n_threads=1)
    del adata.raw.varm["NMF"]
    with pytest.raises(KeyError, match=re.escape("has no .raw.varm['NMF']")):
        io.write_nmf_tables(adata, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_tables_of_projected_cells_say_where_their_factors_are(fitted, tmp_path):
    """write_nmf_tables on cells projected by tl.project advised "pass the reference AnnData
    (tl.project's adata_ref) instead", which writes the reference's cells, not these."""
    fit, adata = fitted
    new = adata[80:, fit.var_names].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.project(new, fit, n_threads=1)
    with pytest.raises(KeyError) as refused:
        io.write_nmf_tables(new, tmp_path)
    message = str(refused.value)
    assert "pass the reference AnnData" not in message
    assert "adata.obsm['X_nmf']" in message and "tl.project's adata_ref" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", [None, ["nmf"]], ids=["None", "list"])
def test_a_key_that_is_not_a_string_is_refused_naming_the_default(fitted, tmp_path, key):
    """key=None said "adata.uns[None] holds no NMF fit; run vbsnmf.tl.nmf(adata,
    key_added=None) first", though that call stores the fit under 'nmf' (the same error
    again); a list failed with Python's "unhashable type: 'list'"."""
    fit = fitted[0]
    calls = (
        lambda: tl.top_genes(fit, key=key),
        lambda: io.write_nmf_tables(fit, tmp_path, key=key),
        lambda: vbsnmf.pl.elbo(fit, key=key, show=False),
        lambda: vbsnmf.pl.factors(fit, basis="nmf", key=key, show=False),
        lambda: tl.project(fit[:5].copy(), fit, key=key),
    )
    for call in calls:
        with pytest.raises(TypeError, match=r"key must be .*stores it under 'nmf'\), got"):
            call()
    assert list(tmp_path.iterdir()) == []


def test_the_finiteness_check_takes_a_fit_subset_to_no_gene(fitted, tmp_path):
    """A fit subset to no gene has no NaN row to refuse: its tables and top genes are empty,
    as before the check."""
    empty = fitted[0][:, :0].copy()
    assert tl.top_genes(empty).empty
    io.write_nmf_tables(empty, tmp_path)
    assert (tmp_path / "gene_loadings.tsv.gz").exists()
