"""Thirty-third hostile pass, second wave: what a biologist reads from a fit.

Three defects. `io.write_nmf_tables` wrote a fit whose ``.obsm`` / ``.varm`` arrays had
been cut by hand to some factors (the active ones, say) as tables with columns
``factor_0``, ``factor_1``, ...: numbers that named other factors than `tl.top_genes`,
``.uns['nmf']`` and the command line's ``params.json`` do (factor 3 written as
``factor_2``); arrays cut to different widths met pandas' "Shape of passed values is (507,
3), indices imply (507, 4)". They are refused now as `tl.top_genes` refuses them, naming
the array, and nothing is written. `tl.nmf`'s docstring and the README said a row of
``X_nmf`` sums to about the library size over the mean loadings, about twice the library
size under the learned prior; weighted by the total loadings it is the library size, as
they now say. `pl.umap`'s docstring said only cells without usage have no dominant factor;
cells of a switched-off factor alone under a classical solver have none either. Six tests
fail on the code before the fixes: the four of the tables,
``test_docs_say_what_a_row_of_cell_factors_sums_to`` and the last one.

The other tests are guards that pass on the code before the fix too, each against an
independent numpy computation from the stored factors: the usages and their square roots
(float32, ``mask_var``, ``.raw``, a layer, K = 1, a classical fit with exact zeros, the
fixed prior), ``factor_share``, ``active`` and the default ``min_share`` from the docs'
formula (the fixed prior's floor as the root of its quadratic by `numpy.roots`),
`tl.top_genes`' ranking under every ``sort_by`` and ``min_counts`` (ties of specificity 1
broken by loading, genes without counts, inactive factors), the tables to their 6
significant digits with names that are numbers, a projection's usages from the
reference's loadings, and the command line's ``top_genes.tsv`` and ``params.json``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

import vbsnmf.cli as cli
from vbsnmf import io, pl, tl


def _quiet(call, *args, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **options)


def _fitted(adata, n_components=4, **options):
    options.setdefault("max_iter", 30)
    options.setdefault("n_threads", 1)
    _quiet(tl.nmf, adata, n_components, **options)
    return adata


def _genes(adata):
    """The AnnData holding the fit's gene side (``.raw`` for a fit of it)."""
    return adata.raw if adata.uns["nmf"]["params"]["use_raw"] else adata


def _numpy_usage(cell_factors, gene_loadings):
    """Each cell's share of its expected counts per factor: z_il t_l / sum_k z_ik t_k."""
    z = np.asarray(cell_factors, dtype=np.float64)
    expected = z * np.asarray(gene_loadings, dtype=np.float64).sum(axis=0)
    totals = expected.sum(axis=1, keepdims=True)
    return np.divide(expected, totals, out=np.zeros_like(expected), where=totals > 0)


def _numpy_specificity(cell_factors, gene_loadings):
    expected = np.asarray(gene_loadings, float) * np.asarray(cell_factors, float).sum(axis=0)
    totals = expected.sum(axis=1, keepdims=True)
    return np.divide(expected, totals, out=np.zeros_like(expected), where=totals > 0)


def _numpy_top_genes(adata, n_genes, sort_by, min_counts, factors):
    """tl.top_genes' table by numpy: {factor: [gene names]}, and the specificities."""
    genes = _genes(adata)
    loadings = np.asarray(genes.varm["NMF"], dtype=np.float64)
    share = _numpy_specificity(adata.obsm["X_nmf"], loadings)
    totals = genes.var["nmf_total_counts"].to_numpy()
    listed = {}
    for factor in factors:
        w, s = loadings[:, factor], share[:, factor]
        keys = {"specificity": (-w, -s), "loading": (-w,), "score": (-(w * s),)}[sort_by]
        order = [g for g in np.lexsort(keys) if w[g] > 0 and totals[g] >= min_counts]
        listed[factor] = [genes.var_names[g] for g in order[:n_genes]]
    return listed, share


# -- the defect: tables of arrays cut by hand ---------------------------------------------------
@pytest.fixture
def four_factors(pbmc_tiny):
    return _fitted(pbmc_tiny[:200].copy(), 4, max_iter=20)


def test_tables_refuse_factors_cut_to_some_of_them(four_factors, tmp_path):
    """Both arrays cut to factors 0, 1 and 3 were written as factor_0..factor_2 (factor 3 as
    factor_2, against top_genes and params.json); refused now, the earlier tables kept."""
    io.write_nmf_tables(four_factors, tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    kept = [0, 1, 3]
    four_factors.obsm["X_nmf"] = four_factors.obsm["X_nmf"][:, kept]
    four_factors.varm["NMF"] = four_factors.varm["NMF"][:, kept]
    with pytest.raises(ValueError, match=r"obsm\['X_nmf'\] is damaged \(shape \(200, 3\), not one"):
        io.write_nmf_tables(four_factors, tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


@pytest.mark.parametrize("width", [3, 5])
def test_tables_refuse_gene_loadings_of_another_width(four_factors, tmp_path, width):
    """Gene loadings of 3 or 5 columns beside 4 cell factors met pandas' "Shape of passed
    values is (507, 3), indices imply (507, 4)", which named neither array."""
    four_factors.varm["NMF"] = four_factors.varm["NMF"][:, [0, 1, 2, 3, 0][:width]]
    with pytest.raises(ValueError) as raised:
        io.write_nmf_tables(four_factors, tmp_path)
    message = str(raised.value)
    assert "Shape of passed values" not in message
    assert f"adata.varm['NMF'] is damaged (shape (507, {width}), not one column per" in message
    assert os.listdir(tmp_path) == []


def test_tables_of_a_raw_fit_name_the_raw_loadings_cut(pbmc_tiny, tmp_path):
    """A fit of .raw with its .raw.varm loadings cut: refused, naming .raw.varm."""
    adata = pbmc_tiny[:200].copy()
    adata.raw = adata.copy()
    adata = adata[:, ::2].copy()
    _fitted(adata, 3, use_raw=True, max_iter=15)
    adata.raw.varm["NMF"] = adata.raw.varm["NMF"][:, :2]
    with pytest.raises(ValueError, match=r"adata\.raw\.varm\['NMF'\] is damaged"):
        io.write_nmf_tables(adata, tmp_path)
    assert os.listdir(tmp_path) == []


README = Path(__file__).resolve().parent.parent / "README.md"


def test_docs_say_what_a_row_of_cell_factors_sums_to(pbmc_tiny):
    """tl.nmf's docstring (and the README) said a row of X_nmf sums to about the library
    size over the mean loadings: under the learned prior, whose total loadings differ by
    orders of magnitude, that plain sum is about twice it. Weighted by the total loadings
    (the fitted count) it is the library size."""
    adata = _fitted(pbmc_tiny[:400].copy(), 10, max_iter=100)
    factors, totals = adata.obsm["X_nmf"], adata.varm["NMF"].sum(axis=0)
    library = np.asarray(adata.X.sum(axis=1)).ravel()
    assert abs(np.median(factors @ totals / library) - 1) < 0.05
    assert np.median(factors.sum(axis=1) * totals.mean() / library) > 1.5  # the old claim
    for text in (tl.nmf.__doc__, README.read_text(encoding="utf-8")):
        text = " ".join(text.split())  # the docstring's line breaks
        assert "over the mean loadings" not in text
        assert "weighted by its total loading" in text


# -- guards: the usages -------------------------------------------------------------------------
def _variant(adata, name):
    """A fit of ``adata`` by one of the routes a biologist takes."""
    if name == "float32":
        return _fitted(adata, 4, dtype=np.float32)
    if name == "mask_var":
        adata.var["chosen"] = np.arange(adata.n_vars) % 3 == 0
        return _fitted(adata, 4, mask_var="chosen")
    if name == "raw":
        adata.raw = adata.copy()
        adata = adata[:, ::2].copy()
        return _fitted(adata, 4, use_raw=True)
    if name == "layer":
        adata.layers["counts"] = adata.X.copy()
        adata.X = adata.X * 0.5  # not counts: the fit must read the layer
        return _fitted(adata, 4, layer="counts")
    if name == "k1":
        return _fitted(adata, 1)
    if name == "hals":  # exact zeros in both factors
        return _fitted(adata, 6, solver="hals", max_iter=60)
    if name == "gamma":
        return _fitted(adata, 8, prior="gamma", max_iter=100)
    return _fitted(adata, 4)


VARIANTS = ["default", "float32", "mask_var", "raw", "layer", "k1", "hals", "gamma"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_usages_are_each_cells_share_of_its_expected_counts(pbmc_tiny, variant):
    """Guard (passes on the code before too): the usages and their square roots against
    numpy from the stored factors (the fit's dtype kept), rows summing to one."""
    adata = _variant(pbmc_tiny[:300].copy(), variant)
    genes = _genes(adata)
    expected = _numpy_usage(adata.obsm["X_nmf"], genes.varm["NMF"])
    usage, roots = adata.obsm["X_nmf_usage"], adata.obsm["X_nmf_sqrt_usage"]
    dtype = np.float32 if variant == "float32" else np.float64
    assert usage.dtype == roots.dtype == adata.obsm["X_nmf"].dtype == dtype
    tolerance = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(usage, expected, atol=tolerance)
    np.testing.assert_allclose(roots, np.sqrt(expected), atol=np.sqrt(tolerance))
    np.testing.assert_allclose(usage.sum(axis=1), 1.0, atol=10 * tolerance)
    if variant == "k1":
        assert np.all(usage == 1.0)


def _numpy_floor(n_cells, n_genes, shape, rate):
    """The fixed prior's fitted count of a factor without data: the smaller root of
    P^2 - ((n + m) a + b^2) P + n m a^2 (docs/model.md's updates with no counts)."""
    roots = np.roots([1.0, -((n_cells + n_genes) * shape + rate**2), n_cells * n_genes * shape**2])
    return float(np.min(roots.real))


@pytest.mark.parametrize("variant", VARIANTS)
def test_factor_share_active_and_default_min_share_follow_the_docs(pbmc_tiny, variant):
    """Guard (passes on the code before too): factor_share = sum_i z_il sum_j w_jl over its
    sum, min_share = (prior floor + 5 median cells' fitted counts) / all fitted counts,
    active = factor_share > min_share; the floor over the genes the fit saw."""
    adata = _variant(pbmc_tiny[:300].copy(), variant)
    info, genes = adata.uns["nmf"], _genes(adata)
    z = np.asarray(adata.obsm["X_nmf"], dtype=np.float64)
    w = np.asarray(genes.varm["NMF"], dtype=np.float64)
    expected = z.sum(axis=0) * w.sum(axis=0)
    tolerance = 1e-6 if variant == "float32" else 1e-12
    np.testing.assert_allclose(info["factor_share"], expected / expected.sum(), atol=tolerance)
    floor = 0.0
    if variant == "gamma":
        fitted_genes = int(np.count_nonzero(w.any(axis=1)))
        floor = _numpy_floor(z.shape[0], fitted_genes, 1.0, 1.0)
        assert floor > 0
    handful = 5 * np.median(z @ w.sum(axis=0))
    np.testing.assert_allclose(info["min_share"], (floor + handful) / expected.sum(), rtol=1e-6)
    np.testing.assert_array_equal(info["active"], info["factor_share"] > info["min_share"])
    if variant == "gamma":  # the floor matters: some factors are switched off
        assert not info["active"].all()


# -- guards: top_genes ---------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["default", "hals", "gamma", "raw", "mask_var"])
@pytest.mark.parametrize("sort_by", ["specificity", "loading", "score"])
def test_top_genes_rank_as_numpy_ranks_them(pbmc_tiny, variant, sort_by):
    """Guard (passes on the code before too): every factor's genes, in order, and their
    specificities against numpy, for min_counts 0 (genes without counts listed), 2 and 50;
    ties of specificity (exactly 1 for a gene in one factor of a HALS fit) broken by
    loading; inactive factors left out unless asked."""
    adata = _variant(pbmc_tiny[:300].copy(), variant)
    genes = _genes(adata)
    for min_counts in (0, 2, 50):
        for include_inactive in (False, True):
            table = tl.top_genes(
                adata, 6, sort_by=sort_by, min_counts=min_counts, include_inactive=include_inactive
            )
            active = adata.uns["nmf"]["active"]
            factors = np.arange(active.size) if include_inactive else np.flatnonzero(active)
            expected, share = _numpy_top_genes(adata, 6, sort_by, min_counts, factors)
            listed = table.index.get_level_values("factor")
            for factor in factors:
                got = table.loc[factor]["gene"].tolist() if factor in listed else []
                assert got == expected[factor], (factor, min_counts)
                if got:
                    rows = genes.var_names.get_indexer(got)
                    np.testing.assert_allclose(
                        table.loc[factor]["specificity"], share[rows, factor], rtol=1e-9
                    )
                    assert (table.loc[factor]["total_counts"] >= min_counts).all()
            assert set(listed) <= set(factors)
    if variant == "hals" and sort_by == "specificity":  # the ties were there to break
        top = tl.top_genes(adata, 20, min_counts=0, include_inactive=True)
        ties = top[top["specificity"] == 1.0]
        assert ties.groupby(level="factor").size().max() >= 2
        for _, tied in ties.groupby(level="factor"):
            assert (np.diff(tied["loading"].to_numpy()) <= 0).all()


def test_top_genes_of_one_factor_are_its_largest_loadings(pbmc_tiny):
    """Guard (passes on the code before too): K = 1, where every gene's specificity is 1,
    lists the genes by loading."""
    adata = _fitted(pbmc_tiny[:300].copy(), 1)
    table = tl.top_genes(adata, 10)
    assert (table["specificity"] == 1.0).all()
    loadings = adata.varm["NMF"][:, 0]
    totals = adata.var["nmf_total_counts"].to_numpy()
    order = [g for g in np.argsort(-loadings, kind="stable") if totals[g] >= 2][:10]
    assert table["gene"].tolist() == list(adata.var_names[order])


# -- guards: the tables, a projection, the command line, the dominant factor ---------------------
def _read_table(path, label):
    return pd.read_csv(path, sep="\t", index_col=0, keep_default_na=False, dtype={label: str})


@pytest.mark.parametrize("variant", ["float32", "raw"])
def test_tables_hold_the_fit_to_six_digits_under_names_that_are_numbers(
    pbmc_tiny, tmp_path, variant
):
    """Guard (passes on the code before too): cell_factors.tsv.gz and gene_loadings.tsv.gz
    hold .obsm['X_nmf'] and (.raw).varm['NMF'] to 6 significant digits, in order, under
    names that are numbers ("1", "1e3", "nan", "007") read back as text as the docs say."""
    adata = pbmc_tiny[:200, :80].copy()
    numbers = ["1", "1e3", "nan", "007", "NA", "TRUE", "-0", "0x1F"]
    adata.var_names = numbers + [str(i) for i in range(8, adata.n_vars)]
    adata.obs_names = [str(i) for i in range(adata.n_obs)]
    adata = _variant(adata, variant)
    genes = _genes(adata)
    io.write_nmf_tables(adata, tmp_path)
    cells = _read_table(tmp_path / "cell_factors.tsv.gz", "cell")
    loadings = _read_table(tmp_path / "gene_loadings.tsv.gz", "gene")
    assert cells.index.tolist() == adata.obs_names.tolist()
    assert loadings.index.tolist() == genes.var_names.tolist()
    assert cells.columns.tolist() == [f"factor_{f}" for f in range(4)]
    for table, stored in ((cells, adata.obsm["X_nmf"]), (loadings, genes.varm["NMF"])):
        stored = np.asarray(stored, dtype=np.float64)
        np.testing.assert_allclose(table.to_numpy(), stored, rtol=5e-6, atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_projected_usages_use_the_references_loadings(pbmc_tiny, dtype, prior):
    """Guard (passes on the code before too): a projection's usages against numpy from its
    factors and the reference's .varm loadings (genes in another order in adata_new, the
    reference's dtype kept), and the reference's own cells projected close to its usages."""
    reference = _fitted(pbmc_tiny[:300].copy(), 4, dtype=dtype, prior=prior, max_iter=60)
    new = pbmc_tiny[:300, ::-1].copy()
    _quiet(tl.project, new, reference, n_threads=1)
    usage = new.obsm["X_nmf_usage"]
    assert usage.dtype == new.obsm["X_nmf"].dtype == dtype
    expected = _numpy_usage(new.obsm["X_nmf"], reference.varm["NMF"])
    tolerance = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(usage, expected, atol=tolerance)
    np.testing.assert_allclose(new.obsm["X_nmf_sqrt_usage"], np.sqrt(expected), atol=1e-3)
    moved = np.abs(usage - reference.obsm["X_nmf_usage"]).max(axis=1)
    assert np.median(moved) < 0.02


def test_command_line_top_genes_and_active_factors(pbmc_tiny, tmp_path, monkeypatch):
    """Guard (passes on the code before too): top_genes.tsv is tl.top_genes(result, 10) of
    the active factors with counts as integers, params.json's active_factors the record's,
    and the tables the result's to 6 digits."""
    adata = pbmc_tiny[:250].copy()
    adata.write_h5ad(tmp_path / "in.h5ad")
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "in.h5ad", "-k", "3", "-o", "out", "--max-iter", "25", "--threads", "1"]
    assert _quiet(cli.main, [*argv, "--quiet"]) == 0
    result = ad.read_h5ad(tmp_path / "out" / "result.h5ad")
    written = pd.read_csv(
        tmp_path / "out" / "top_genes.tsv", sep="\t", keep_default_na=False, dtype={"gene": str}
    )
    expected = tl.top_genes(result, 10).reset_index()
    assert written[["factor", "rank", "gene"]].equals(expected[["factor", "rank", "gene"]])
    assert written["total_counts"].dtype == np.int64
    np.testing.assert_array_equal(written["total_counts"], expected["total_counts"])
    for column in ("loading", "specificity"):
        np.testing.assert_allclose(written[column], expected[column], rtol=5e-6)
    params = json.loads((tmp_path / "out" / "params.json").read_text())
    assert params["active_factors"] == np.flatnonzero(result.uns["nmf"]["active"]).tolist()
    assert sorted(set(written["factor"])) == params["active_factors"]
    cells = _read_table(tmp_path / "out" / "cell_factors.tsv.gz", "cell")
    np.testing.assert_allclose(cells.to_numpy(), result.obsm["X_nmf"], rtol=5e-6)


@pytest.fixture
def no_umap(monkeypatch):
    """sc.tl.umap as a random embedding: the dominant factors, not the layout, are tested."""

    def embed(adata, random_state=0, **_):
        adata.obsm["X_umap"] = np.random.default_rng(0).normal(size=(adata.n_obs, 2))

    monkeypatch.setattr(sc.tl, "umap", embed)


def test_dominant_factor_of_cells_in_a_switched_off_factor(no_umap):
    """Three cells of their own programme, which a multiplicative-update fit gives a factor
    below min_share (fewer than five typical cells' counts) and no usage elsewhere, have no
    dominant active factor (missing), though they have counts: pl.umap's docstring said
    only cells without usage (no counts) are. Every other cell's is numpy's argmax over the
    active factors' usages (that part passes on the code before too)."""
    rng = np.random.default_rng(0)
    z = np.zeros((200, 3))
    z[:100, 0], z[100:197, 1], z[197:, 2] = rng.gamma(5, 1, 100), rng.gamma(5, 1, 97), 5.0
    w = np.zeros((60, 3))
    w[:20, 0], w[20:40, 1], w[40:, 2] = rng.gamma(2, 1, (3, 20))
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(z @ w.T).astype(np.float64)))
    _fitted(adata, 3, solver="mu", max_iter=500, random_state=1)
    active = adata.uns["nmf"]["active"]
    usage = adata.obsm["X_nmf_usage"]
    assert active.sum() == 2
    assert np.all(usage[197:][:, active] == 0)  # all of their usage in the inactive factor
    _quiet(pl.umap, adata, show=False)
    column = adata.obs["nmf_dominant_factor"]
    shown = usage[:, active]
    names = np.array([f"factor {f}" for f in np.flatnonzero(active)])
    expected = np.where(shown.max(axis=1) > 0, names[shown.argmax(axis=1)], None)
    assert column.astype(object).where(column.notna(), None).tolist() == expected.tolist()
    assert column.iloc[197:].isna().all() and column.iloc[:197].notna().all()
    doc = " ".join(pl.umap.__doc__.split())
    assert "missing for a cell without usage in any active factor" in doc
