"""Thirty-sixth hostile pass: multi-sample and AnnData-view workflows as a biologist runs
them (``anndata.concat`` of samples with and without ``index_unique``, outer and inner
joins of genes, a fit per sample and `tl.project` of one onto another, views passed to the
tools and plots, ``.h5ad`` round trips).

Defects, each test of them failing on the code before its fix:

- `anndata.concat` of cells projected onto different reference fits, with
  ``uns_merge='first'``, kept the first projection's record over the cells of both;
  `pl.factors` and `pl.umap` drew the two references' unrelated factors as one
  projection's. The concatenation of fits apart was refused already; this is now too.
- `pl.factors(mask_obs=column)` of a boolean ``.obs`` column that `anndata.concat` filled
  with ``<NA>`` for the cells of a sample without it failed with scanpy's bare "Mask array
  must be boolean."; it now names the column and the cells, and says how to fill them. A
  column of True and False held as objects is read as booleans.
- `tl.nmf` and `tl.select_k` with ``mask_var`` naming a ``.var`` column that
  ``anndata.concat(join='outer', merge='first')`` left True/False/NaN said only "is not
  boolean (dtype object)"; they now name the missing values, and read the column once
  filled (``.fillna(False)``, objects under pandas' coming no-downcasting rule).
- `tl.nmf`, `tl.select_k` and `tl.project` of a dense X that
  ``anndata.concat(join='outer')`` filled with NaN for the genes a sample lacks advised
  "keep the raw counts before normalising"; NaN among whole counts are now told as missing
  values, with the inner join or a fit per sample as the advice.
- `pl.top_genes` of a view whose ``.obs`` or ``.var`` holds a column of text: scanpy's dot
  plot makes it categorical in the view, which gave anndata's ImplicitModificationWarning
  (in memory) or its bare RuntimeError "Please call `.strings_to_categoricals()` on full
  AnnData" (a backed view). The view is now made its own AnnData first, as `pl.umap` does;
  a backed one is refused with a ValueError naming the columns.

The other tests are guards that pass on the code before the fixes too; each says so.
"""

from __future__ import annotations

import warnings

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vbsnmf import pl, tl

matplotlib.use("Agg")
pytest.importorskip("scanpy")

FIT = {"max_iter": 30, "random_state": 0}


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter's ConvergenceWarning, anndata's names
        return call(*args, **kwargs)


def _sample(seed: int, n_cells: int = 60, genes=None) -> ad.AnnData:
    """Poisson counts from three programmes over 40 genes (``genes``: their names)."""
    rng = np.random.default_rng(seed)
    names = [f"g{j}" for j in range(40)] if genes is None else list(genes)
    loadings = rng.gamma(0.5, 2.0, size=(len(names), 3))
    factors = rng.gamma(1.0, 1.0, size=(n_cells, 3))
    counts = rng.poisson(factors @ loadings.T).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]  # the same in every sample
    adata.var_names = names
    return adata


def _with_embedding(adata: ad.AnnData) -> ad.AnnData:
    adata.obsm["X_umap"] = np.random.default_rng(0).normal(size=(adata.n_obs, 2))
    return adata


def _close_figures():
    import matplotlib.pyplot as plt

    plt.close("all")


# --- cells projected onto different references, joined -------------------------------


def _projected_apart(prior: str = "hierarchical"):
    """Two samples, each projected onto its own reference fit, joined by anndata.concat
    with uns_merge='first' (the merge the tools advise for a reference and its cells)."""
    first_ref, second_ref = _sample(1), _sample(2)
    _quiet(tl.nmf, first_ref, 4, prior=prior, **FIT)
    _quiet(tl.nmf, second_ref, 4, prior=prior, **{**FIT, "random_state": 5})
    first, second = _sample(3), _sample(4)
    _quiet(tl.project, first, first_ref, max_iter=40)
    _quiet(tl.project, second, second_ref, max_iter=40)
    joined = _quiet(ad.concat, [first, second], uns_merge="first", index_unique="-")
    return _with_embedding(joined)


@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_projections_onto_two_references_refused_by_factors(prior):
    """pl.factors drew the cells of two references' projections as one projection's."""
    joined = _projected_apart(prior)
    assert set(joined.uns) == {"nmf_projection"}  # one record over the cells of both
    with pytest.raises(ValueError, match="not those of one projection") as caught:
        pl.factors(joined, show=False)
    _close_figures()
    message = str(caught.value)
    assert "X_nmf_usage" in message and "onto one reference" in message
    assert "uns_merge='first'" in message


def test_projections_onto_two_references_refused_before_umap():
    """pl.umap reads the cells' record (`cell_factors_record`) before any graph; it was
    read as one projection's. Nothing is written into the AnnData."""
    pytest.importorskip("umap")
    joined = _projected_apart()
    before = set(joined.obs.columns), set(joined.uns), set(joined.obsm)
    with pytest.raises(ValueError, match="not those of one projection"):
        pl.umap(joined, show=False)
    assert (set(joined.obs.columns), set(joined.uns), set(joined.obsm)) == before


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_projections_onto_one_reference_joined_still_drawn(dtype, prior):
    """Guard (passes on the base code too): samples projected onto one reference (genes
    permuted, some missing, a cell without counts in its genes) joined with
    uns_merge='first' are one projection, drawn as before."""
    reference = _sample(1)
    _quiet(tl.nmf, reference, 4, prior=prior, dtype=dtype, **FIT)
    first = _sample(3)
    second = _sample(4)[:, list(reversed([f"g{j}" for j in range(5, 40)]))].copy()
    second.X[0] = 0  # a cell whose factors are the prior's
    second.X.eliminate_zeros()
    for cells in (first, second):
        _quiet(tl.project, cells, reference, max_iter=40)
    joined = _with_embedding(_quiet(ad.concat, [first, second], uns_merge="first"))
    axes = _quiet(pl.factors, joined, show=False)
    _close_figures()
    assert len(axes) == int(np.count_nonzero(reference.uns["nmf"]["active"]))


# --- mask_obs of a column anndata.concat filled -------------------------------------------


def _fitted_with_partial_column():
    """Two samples joined; ``keep`` is a column of the first only (<NA> in the second's)."""
    first, second = _sample(1), _sample(2, n_cells=30)
    first.obs["keep"] = np.arange(first.n_obs) % 2 == 0
    joined = _quiet(ad.concat, [first, second], index_unique="-", join="outer")
    _quiet(tl.nmf, joined, 3, **FIT)
    return _with_embedding(joined)


def test_mask_obs_with_concat_missing_values_named():
    """Scanpy's bare "Mask array must be boolean." named neither the column nor the 30
    cells anndata.concat gave <NA>; following the advice draws."""
    joined = _fitted_with_partial_column()
    assert str(joined.obs["keep"].dtype) == "boolean"  # anndata's nullable booleans
    with pytest.raises(ValueError) as caught:
        pl.factors(joined, show=False, mask_obs="keep")
    _close_figures()
    message = str(caught.value)
    assert "adata.obs['keep'] (mask_obs=) has 30 cells without a value" in message
    assert "adata.obs['keep'] = adata.obs['keep'].fillna(False)" in message
    joined.obs["keep"] = joined.obs["keep"].fillna(False)  # as advised
    axes = _quiet(pl.factors, joined, show=False, mask_obs="keep")
    _close_figures()
    assert len(axes) >= 1


def test_mask_obs_values_with_missing_values_named():
    """The same for values given, a list with None and a Series of <NA>."""
    joined = _fitted_with_partial_column()
    for values in (
        list(joined.obs["keep"].astype(object).where(joined.obs["keep"].notna(), None)),
        joined.obs["keep"],
    ):
        with pytest.raises(ValueError, match="mask_obs has 30 cells without a value") as caught:
            pl.factors(joined, show=False, mask_obs=values)
        _close_figures()
        assert "fill them, e.g. with False" in str(caught.value)


def test_mask_obs_object_booleans_read_as_booleans():
    """A column of True and False held as objects (pandas' filled column under its coming
    no-downcasting rule) was refused by scanpy as not boolean; it is read as the mask, the
    colour scale taken of the cells it keeps."""
    joined = _fitted_with_partial_column()
    with pd.option_context("future.no_silent_downcasting", True):
        joined.obs["keep"] = joined.obs["keep"].astype(object).fillna(False)
    assert joined.obs["keep"].dtype == object
    kept = joined.obs["keep"].to_numpy(dtype=bool)
    usage = joined.obsm["X_nmf_usage"][:, np.flatnonzero(joined.uns["nmf"]["active"])]
    axes = _quiet(pl.factors, joined, show=False, mask_obs="keep", vmax="p90")
    scale = axes[0].collections[-1].get_clim()
    _close_figures()
    assert scale[1] == pytest.approx(np.percentile(usage[kept], 90))


# --- mask_var of a column anndata.concat(join="outer") left with NaN ----------------------


def _joined_with_partial_mask():
    """Samples of partly different genes, each with ``highly_variable``, joined outer with
    merge='first': the column holds True/False and NaN (for the second's own genes)."""
    first = _sample(1)
    second = _sample(2, genes=[f"g{j}" for j in range(10, 50)])
    for sample in (first, second):
        sample.var["highly_variable"] = np.arange(sample.n_vars) % 2 == 0
    joined = _quiet(ad.concat, [first, second], join="outer", merge="first", index_unique="-")
    return joined


@pytest.mark.parametrize("tool", ["nmf", "select_k"])
def test_mask_var_with_concat_missing_values_named(tool):
    """'is not boolean (dtype object)' did not say the column held NaN for 10 genes."""
    joined = _joined_with_partial_mask()
    assert joined.var["highly_variable"].dtype == object
    assert int(joined.var["highly_variable"].isna().sum()) == 10
    run = (
        (lambda: tl.nmf(joined, 3, mask_var="highly_variable", **FIT))
        if tool == "nmf"
        else (lambda: tl.select_k(joined, ks=[2], mask_var="highly_variable", max_iter=5))
    )
    with pytest.raises(ValueError) as caught:
        run()
    message = str(caught.value)
    assert "adata.var['highly_variable'] has 10 missing values" in message
    assert "anndata.concat(join='outer')" in message and ".fillna(False)" in message
    assert "nmf" not in joined.uns and "nmf_k_selection" not in joined.uns


def test_mask_var_filled_as_advised_fits_those_genes():
    """Filled as the message says, under pandas' coming no-downcasting rule (the column
    stays objects): it was refused as 'not boolean (dtype object)'; it is the mask."""
    joined = _joined_with_partial_mask()
    with pd.option_context("future.no_silent_downcasting", True):
        joined.var["highly_variable"] = joined.var["highly_variable"].fillna(False)
    assert joined.var["highly_variable"].dtype == object
    _quiet(tl.nmf, joined, 3, mask_var="highly_variable", **FIT)
    marked = joined.var["highly_variable"].to_numpy(dtype=bool)
    assert (joined.varm["NMF"][~marked] == 0).all()
    assert (joined.varm["NMF"][marked].sum(axis=1) > 0).all()
    assert joined.uns["nmf"]["params"]["mask_var"] == "highly_variable"


def test_mask_var_text_column_still_refused():
    """Guard (passes on the base code too): a column of text is not read as a mask."""
    joined = _joined_with_partial_mask()
    joined.var["highly_variable"] = np.where(np.arange(joined.n_vars) % 2, "True", "False")
    joined.var["highly_variable"] = joined.var["highly_variable"].astype(object)
    with pytest.raises(ValueError, match=r"is not boolean \(dtype object\)"):
        tl.nmf(joined, 3, mask_var="highly_variable", **FIT)


# --- NaN of an outer join of dense samples ------------------------------------------------


def _dense_joined_outer():
    """Two dense samples, the second lacking 10 genes: anndata fills them with NaN."""
    first, second = _sample(1), _sample(2, n_cells=30)
    first.X, second.X = first.X.toarray(), second.X.toarray()
    second = second[:, 10:].copy()
    return _quiet(ad.concat, [first, second], join="outer", index_unique="-")


@pytest.mark.parametrize("tool", ["nmf", "select_k", "project"])
def test_nan_of_outer_join_told_as_missing_genes(tool):
    """NaN among whole counts were answered with "keep the raw counts before normalising",
    which sent the user looking for counts they hold: they are the genes a sample lacks."""
    joined = _dense_joined_outer()
    assert int(np.isnan(joined.X).sum()) == 300
    if tool == "project":
        reference = _sample(5)
        _quiet(tl.nmf, reference, 3, **FIT)
        run = lambda: tl.project(joined, reference, max_iter=5)  # noqa: E731
    elif tool == "nmf":
        run = lambda: tl.nmf(joined, 3, **FIT)  # noqa: E731
    else:
        run = lambda: tl.select_k(joined, ks=[2], max_iter=5)  # noqa: E731
    with pytest.raises(ValueError, match="300 NaN entries") as caught:
        run()
    message = str(caught.value)
    assert "missing values among whole counts, not normalised data" in message
    assert "join='inner'" in message and "before normalising" not in message
    inner = _quiet(ad.concat, [_sample(1), _sample(2, n_cells=30)[:, 10:]], index_unique="-")
    assert inner.n_vars == 30  # the advised join fits
    _quiet(tl.nmf, inner, 3, **FIT)


def test_nan_beside_normalised_values_still_told_as_normalised():
    """Guard (passes on the base code too): NaN beside non-integer values keep the advice
    about raw counts."""
    joined = _dense_joined_outer()
    joined.X = joined.X / 3.0
    with pytest.raises(ValueError, match="keep the raw counts before normalising"):
        tl.nmf(joined, 3, **FIT)


# --- pl.top_genes of views with text columns ----------------------------------------------


def _fitted_with_text_column():
    adata = _sample(1)
    _quiet(tl.nmf, adata, 3, **FIT)
    adata.obs["sample"] = np.where(np.arange(adata.n_obs) % 2, "s1", "s2")
    adata.var["symbol"] = np.where(np.arange(adata.n_vars) % 2, "A", "B")
    return adata


def test_top_genes_of_view_with_text_column_gives_no_warning():
    """Scanpy's dot plot made the text columns categorical in the view: anndata's
    ImplicitModificationWarning, once per column. The parent is left as it was."""
    adata = _fitted_with_text_column()
    view = adata[:40]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ad.ImplicitModificationWarning)
        axes = pl.top_genes(view, groupby="sample", show=False)
    _close_figures()
    assert axes and not view.is_view
    assert adata.obs["sample"].dtype == object and adata.var["symbol"].dtype == object


def test_top_genes_of_backed_view_with_text_column_refused(tmp_path):
    """A backed view cannot take the categorical columns: anndata's bare RuntimeError
    "Please call `.strings_to_categoricals()` on full AnnData". Following either advice
    draws."""
    adata = _fitted_with_text_column()
    adata.obs = adata.obs.drop(columns="sample")
    adata.var = adata.var.drop(columns="symbol")
    path = tmp_path / "fit.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        backed.obs["batch"] = np.where(np.arange(backed.n_obs) % 2, "b1", "b2")
        with pytest.raises(ValueError) as caught:
            pl.top_genes(backed[:40], groupby="batch", show=False)
        _close_figures()
        message = str(caught.value)
        assert "view of a backed AnnData" in message and "adata.obs['batch']" in message
        # the view read into memory (its file has X: `io._stored.to_memory_advice`)
        assert "strings_to_categoricals()" in message and ".to_memory() on the view" in message
        assert _quiet(pl.top_genes, backed[:40].to_memory(), groupby="batch", show=False)
        _close_figures()
        backed.strings_to_categoricals()
        assert _quiet(pl.top_genes, backed[:40], groupby="batch", show=False)
        _close_figures()
    finally:
        backed.file.close()


def test_top_genes_of_view_with_categories_left_a_view():
    """Guard (passes on the base code too): a view whose columns are all categorical (or
    numbers) is drawn as it is, left a view."""
    adata = _fitted_with_text_column()
    adata.strings_to_categoricals()
    view = adata[:40]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ad.ImplicitModificationWarning)
        assert pl.top_genes(view, groupby="sample", show=False)
    _close_figures()
    assert view.is_view


# --- guards: the multi-sample workflow ----------------------------------------------------


def test_project_reads_genes_by_name_across_samples():
    """Guard (passes on the base code too): a sample with its genes permuted, with extra
    genes and a repeated name outside the reference, gets the same factors as in the
    reference's gene order; one whose repeated name is a reference gene is refused."""
    reference = _sample(1)
    _quiet(tl.nmf, reference, 4, **FIT)
    cells = _sample(3)
    plain = _quiet(tl.project, cells, reference, max_iter=40, copy=True)
    names = [*reversed(cells.var_names), "extra", "extra"]
    counts = sp.hstack([cells.X[:, ::-1], sp.csr_matrix(np.ones((cells.n_obs, 2)))]).tocsr()
    shuffled = _quiet(ad.AnnData, counts, var=pd.DataFrame(index=names))
    _quiet(tl.project, shuffled, reference, max_iter=40)
    np.testing.assert_allclose(shuffled.obsm["X_nmf"], plain.obsm["X_nmf"], rtol=1e-12)
    repeated = _quiet(ad.AnnData, cells.X, var=pd.DataFrame(index=["g0", *cells.var_names[:-1]]))
    with pytest.raises(ValueError, match="gene names repeat among the reference's genes"):
        tl.project(repeated, reference, max_iter=40)


def test_concat_without_index_unique_round_trip(tmp_path):
    """Guard (passes on the base code too): samples joined without index_unique (cell
    names repeat) are fitted, written, read back and continued; the top genes and a
    projection onto the read copy are those of the fit in memory."""
    joined = _quiet(ad.concat, [_sample(1), _sample(2)], label="sample")
    assert not joined.obs_names.is_unique
    _quiet(tl.nmf, joined, 3, **FIT)
    path = tmp_path / "joined.h5ad"
    joined.write_h5ad(path)
    read = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(tl.top_genes(read), tl.top_genes(joined))
    cells = _sample(3)
    from_memory = _quiet(tl.project, cells, joined, max_iter=40, copy=True)
    from_file = _quiet(tl.project, cells, read, max_iter=40, copy=True)
    np.testing.assert_array_equal(from_file.obsm["X_nmf"], from_memory.obsm["X_nmf"])
    _quiet(tl.nmf, read, 3, warm_start=True, max_iter=2)
    assert read.uns["nmf"]["n_iter"] == joined.uns["nmf"]["n_iter"] + 2
    view = read[read.obs["sample"] == "1"]
    _quiet(tl.nmf, view, 3, warm_start=True, max_iter=2)
    assert not view.is_view and view.n_obs == 60 and "nmf" in view.uns
