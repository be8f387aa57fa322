"""`vbsnmf.tl`: nmf's AnnData fields, count selection, projection and top genes; and
the quality checks on pbmc_facs (kNN subpop accuracy, projection of the test cells)."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import vbsnmf
from vbsnmf import tl
from vbsnmf.tl._stored import usage

TINY_FIT = {"max_iter": 12, "n_threads": 2, "prior": "gamma"}


def _quiet_nmf(adata, n_components, **kwargs):
    """tl.nmf at a few iterations, where not converging is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return tl.nmf(adata, n_components, **kwargs)


def _log_normalised(adata):
    """What ``sc.pp.normalize_total`` + ``sc.pp.log1p`` leave in X, computed directly."""
    counts = sp.csr_matrix(adata.X, dtype=np.float64)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scaled = sp.diags(1e4 / np.maximum(totals, 1)) @ counts
    scaled.data = np.log1p(scaled.data)
    return scaled.tocsr()


# -- fields --------------------------------------------------------------------------------
def _stored_variational(adata, key="nmf"):
    """The Gamma parameters and the prior where `tl.nmf` documents them: rates in ``.uns``
    under the fixed prior, per cell and gene in ``.obsm`` / ``.varm`` under the learned one,
    with q of the scales there and the hyperparameters in ``.uns``."""
    stored = adata.uns[key]["variational"]
    params = {
        "cell_shape": adata.obsm[f"{key}_cell_shape"],
        "gene_shape": adata.varm[f"{key}_gene_shape"],
    }
    if stored["prior"] == "gamma":
        names = ("cell_rate", "gene_rate", "prior_shape", "prior_rate")
        return params | {name: stored[name] for name in names}
    for side, where in (("cell", adata.obsm), ("gene", adata.varm)):
        params[f"{side}_rate"] = where[f"{key}_{side}_rate"]
        for name in (f"{side}_scale_shape", f"{side}_scale_rate"):
            params[name] = where[f"{key}_{name}"][:, 0]
        for name in ("factor_shape", "scale_prior_shape", "scale_prior_mean"):
            params[f"{side}_{name}"] = stored[f"{side}_{name}"]
    return params


def test_nmf_fields_shapes_and_values(pbmc_tiny):
    returned = _quiet_nmf(pbmc_tiny, 4, random_state=3, **TINY_FIT)
    assert returned is None
    n_obs, n_vars = pbmc_tiny.shape
    cell_factors, gene_loadings = pbmc_tiny.obsm["X_nmf"], pbmc_tiny.varm["NMF"]
    assert cell_factors.shape == pbmc_tiny.obsm["X_nmf_usage"].shape == (n_obs, 4)
    assert gene_loadings.shape == (n_vars, 4)
    info = pbmc_tiny.uns["nmf"]
    assert info["params"]["n_components"] == 4 and info["params"]["solver"] == "batch"
    assert info["n_iter"] == 12 == len(info["elbo_trace"])
    assert not info["converged"]
    assert (info["obsm_key"], info["usage_key"], info["varm_key"]) == (
        "X_nmf",
        "X_nmf_usage",
        "NMF",
    )
    variational = _stored_variational(pbmc_tiny)
    assert variational["cell_shape"].shape == (n_obs, 4)
    assert variational["gene_shape"].shape == (n_vars, 4)
    assert variational["cell_rate"].shape == variational["gene_rate"].shape == (4,)

    # Only K-sized things and settings in .uns: nothing there has a cells or genes axis.
    def sizes(tree):
        for value in tree.values():
            if isinstance(value, dict):
                yield from sizes(value)
            else:
                yield np.shape(value)

    assert not any(n_obs in shape or n_vars in shape for shape in sizes(info))
    # Posterior means are shape / rate of the stored Gamma parameters.
    np.testing.assert_allclose(cell_factors, variational["cell_shape"] / variational["cell_rate"])
    np.testing.assert_allclose(gene_loadings, variational["gene_shape"] / variational["gene_rate"])
    # The same fit as the estimator called directly on the counts.
    model = vbsnmf.VBNMF(4, random_state=3, **TINY_FIT)
    with pytest.warns(vbsnmf.ConvergenceWarning):
        expected = model.fit_transform(pbmc_tiny.X)
    np.testing.assert_allclose(cell_factors, expected, rtol=1e-12)
    np.testing.assert_allclose(gene_loadings, model.components_.T, rtol=1e-12)
    np.testing.assert_allclose(info["elbo_trace"], model.elbo_trace_, rtol=1e-12)
    assert np.all(np.diff(info["elbo_trace"]) >= 0)
    # Each gene's total count in the data.
    np.testing.assert_array_equal(
        pbmc_tiny.var["nmf_total_counts"], np.asarray(pbmc_tiny.X.sum(axis=0)).ravel()
    )


def test_usage_is_unchanged_by_rescaling_a_factor():
    """z_l s, w_l / s is the same fit: its usages are the same (they were not when a usage
    was z_il over the cell's sum of z, which the factors' relative scales move)."""
    rng = np.random.default_rng(0)
    cells, genes = rng.gamma(0.5, size=(30, 4)), rng.gamma(0.5, size=(50, 4))
    cells[3] = 0.0  # a cell without any factor: zero usage, not NaN
    scale = np.array([1.0, 10.0, 0.01, 3.0])
    before = usage(cells, genes)
    np.testing.assert_allclose(usage(cells * scale, genes / scale), before, rtol=1e-12)
    np.testing.assert_allclose(before.sum(axis=1)[np.arange(30) != 3], 1.0, rtol=1e-12)
    assert np.all(before[3] == 0.0)
    assert not np.allclose(before, cells / cells.sum(axis=1, keepdims=True).clip(1e-300))


def test_usage_factor_share_and_active(pbmc_tiny):
    """Usages, shares and the active flag against loops over cells and factors."""
    _quiet_nmf(pbmc_tiny, 5, **TINY_FIT)
    info = pbmc_tiny.uns["nmf"]
    z, w = pbmc_tiny.obsm["X_nmf"], pbmc_tiny.varm["NMF"]
    usage = pbmc_tiny.obsm["X_nmf_usage"]
    # A cell's usage of factor l: its expected count from l, sum_j z_il w_jl, over all of
    # its expected counts (a loop over genes, not the factor totals the code uses).
    for cell in (0, 17, 1106):
        expected_counts = np.array([sum(z[cell, l] * w[:, l]) for l in range(5)])
        np.testing.assert_allclose(usage[cell], expected_counts / expected_counts.sum(), rtol=1e-10)
    np.testing.assert_allclose(usage.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(pbmc_tiny.obsm["X_nmf_sqrt_usage"] ** 2, usage, rtol=1e-12)
    assert info["sqrt_usage_key"] == "X_nmf_sqrt_usage"
    # share_l = sum_i z_il * sum_j w_jl over its sum over factors
    expected = np.array([sum(z[:, l]) * sum(w[:, l]) for l in range(5)])
    np.testing.assert_allclose(info["factor_share"], expected / expected.sum(), rtol=1e-10)
    # Default threshold: the prior's floor (the fitted count of a factor explaining no data,
    # here by iterating its two updates to their fixed point) plus five typical cells'
    # fitted counts (the median), over all fitted counts.
    n, m = pbmc_tiny.shape
    total_z = total_w = 1.0
    for _ in range(10_000):
        total_z, total_w = n / (1 + total_w), m / (1 + total_z)  # prior_shape = rate = 1
    fitted_per_cell = [float(z[i] @ w.sum(axis=0)) for i in range(pbmc_tiny.n_obs)]
    threshold = (total_z * total_w + 5 * np.median(fitted_per_cell)) / expected.sum()
    assert info["min_share"] == pytest.approx(threshold, rel=1e-10)
    np.testing.assert_array_equal(info["active"], info["factor_share"] > threshold)
    # The learned prior's switched-off factors fit nearly nothing: no floor.
    _quiet_nmf(pbmc_tiny, 5, max_iter=12, n_threads=2)
    info = pbmc_tiny.uns["nmf"]
    z, w = pbmc_tiny.obsm["X_nmf"], pbmc_tiny.varm["NMF"]
    fitted_per_cell = z @ w.sum(axis=0)
    threshold = 5 * np.median(fitted_per_cell) / fitted_per_cell.sum()
    assert info["min_share"] == pytest.approx(threshold, rel=1e-10)
    # min_share chooses the threshold.
    _quiet_nmf(pbmc_tiny, 5, min_share=0.0, **TINY_FIT)
    assert pbmc_tiny.uns["nmf"]["active"].all()
    cut = float(np.sort(pbmc_tiny.uns["nmf"]["factor_share"])[2])
    _quiet_nmf(pbmc_tiny, 5, min_share=cut, **TINY_FIT)
    assert pbmc_tiny.uns["nmf"]["active"].sum() == 2 and pbmc_tiny.uns["nmf"]["min_share"] == cut
    for bad, error in ((1.0, ValueError), (-0.1, ValueError), ("0.1", TypeError)):
        with pytest.raises(error, match="min_share"):
            tl.nmf(pbmc_tiny, 5, min_share=bad)


def test_result_survives_h5ad_round_trip(pbmc_tiny, tmp_path):
    _quiet_nmf(pbmc_tiny, 3, **TINY_FIT)
    pbmc_tiny.write_h5ad(tmp_path / "fit.h5ad")
    back = ad.read_h5ad(tmp_path / "fit.h5ad")
    for field in ("X_nmf", "X_nmf_usage", "X_nmf_sqrt_usage", "nmf_cell_shape"):
        np.testing.assert_array_equal(back.obsm[field], pbmc_tiny.obsm[field])
    np.testing.assert_array_equal(back.varm["nmf_gene_shape"], pbmc_tiny.varm["nmf_gene_shape"])
    np.testing.assert_array_equal(back.uns["nmf"]["active"], pbmc_tiny.uns["nmf"]["active"])
    assert back.uns["nmf"]["params"]["max_iter"] == 12
    # The round-tripped fit still continues and projects.
    tl.project(back[:20].copy(), back)
    _quiet_nmf(back, 3, warm_start=True, max_iter=1, n_threads=2)
    assert back.uns["nmf"]["n_iter"] == 13
    # A warm start keeps the stored fit's prior; another one is refused.
    assert back.uns["nmf"]["params"]["prior"] == "gamma"
    with pytest.raises(ValueError, match="stored fit used prior='gamma'"):
        tl.nmf(back, 3, warm_start=True, prior="hierarchical")


def test_key_added_names_the_three_fields(pbmc_tiny):
    _quiet_nmf(pbmc_tiny, 3, key_added="programs", **TINY_FIT)
    assert "X_programs" in pbmc_tiny.obsm and "programs" in pbmc_tiny.varm
    assert "programs" in pbmc_tiny.uns
    assert "X_nmf" not in pbmc_tiny.obsm and "nmf" not in pbmc_tiny.uns
    assert "X_programs_usage" in pbmc_tiny.obsm and "X_programs_sqrt_usage" in pbmc_tiny.obsm
    assert "programs_gene_shape" in pbmc_tiny.varm
    table = tl.top_genes(pbmc_tiny, 4, key="programs", include_inactive=True)
    assert table.shape == (12, 4)
    with pytest.raises(KeyError, match="key_added='other'"):
        tl.top_genes(pbmc_tiny, key="other")


def test_copy_returns_a_new_anndata_and_leaves_the_input(pbmc_tiny):
    result = _quiet_nmf(pbmc_tiny, 3, copy=True, **TINY_FIT)
    assert isinstance(result, ad.AnnData) and result is not pbmc_tiny
    assert result.obsm["X_nmf"].shape == (pbmc_tiny.n_obs, 3)
    assert "X_nmf" not in pbmc_tiny.obsm and "nmf" not in pbmc_tiny.uns


def test_dense_and_backed_inputs_give_the_sparse_result(pbmc_tiny, tmp_path):
    sparse = _quiet_nmf(pbmc_tiny, 3, copy=True, **TINY_FIT)
    dense = pbmc_tiny.copy()
    dense.X = pbmc_tiny.X.toarray()
    _quiet_nmf(dense, 3, **TINY_FIT)
    np.testing.assert_allclose(dense.obsm["X_nmf"], sparse.obsm["X_nmf"], rtol=1e-12)
    pbmc_tiny.write_h5ad(tmp_path / "tiny.h5ad")
    backed = ad.read_h5ad(tmp_path / "tiny.h5ad", backed="r")
    from_backed = _quiet_nmf(backed, 3, copy=True, **TINY_FIT)
    np.testing.assert_allclose(from_backed.obsm["X_nmf"], sparse.obsm["X_nmf"], rtol=1e-12)
    backed.file.close()


# -- where the counts are ------------------------------------------------------------------------
def test_layer_and_raw_selection_and_the_normalised_x_error(pbmc_tiny):
    reference = _quiet_nmf(pbmc_tiny, 3, copy=True, **TINY_FIT).obsm["X_nmf"]

    with_layer = pbmc_tiny.copy()
    with_layer.layers["counts"] = pbmc_tiny.X.copy()
    with_layer.X = _log_normalised(pbmc_tiny)
    with pytest.raises(ValueError, match=r"non-integer.*layer='counts'"):
        tl.nmf(with_layer, 3)
    _quiet_nmf(with_layer, 3, layer="counts", **TINY_FIT)
    np.testing.assert_allclose(with_layer.obsm["X_nmf"], reference, rtol=1e-12)
    assert with_layer.uns["nmf"]["params"]["layer"] == "counts"

    with_raw = pbmc_tiny.copy()
    with_raw.raw = pbmc_tiny
    with_raw.X = _log_normalised(pbmc_tiny)
    with pytest.raises(ValueError, match="use_raw=True"):
        tl.nmf(with_raw, 3)
    _quiet_nmf(with_raw, 3, use_raw=True, **TINY_FIT)
    np.testing.assert_allclose(with_raw.obsm["X_nmf"], reference, rtol=1e-12)

    with pytest.raises(ValueError, match="either layer= or use_raw"):
        tl.nmf(with_layer, 3, layer="counts", use_raw=True)
    with pytest.raises(ValueError, match="no layer 'spliced'"):
        tl.nmf(with_layer, 3, layer="spliced")
    with pytest.raises(ValueError, match=r"adata\.raw is None"):
        tl.nmf(with_layer, 3, use_raw=True)


def test_raw_with_more_genes_than_x(pbmc_tiny):
    """A fit of .raw keeps its gene side over the raw genes in .raw.varm; .varm follows
    var_names."""
    subset = pbmc_tiny[:, 100:300].copy()
    subset.raw = pbmc_tiny
    _quiet_nmf(subset, 3, use_raw=True, **TINY_FIT)
    info = subset.uns["nmf"]
    gene_shape = subset.raw.varm["nmf_gene_shape"]
    assert gene_shape.shape == (pbmc_tiny.n_vars, 3)
    full_loadings = gene_shape / info["variational"]["gene_rate"]
    np.testing.assert_allclose(subset.raw.varm["NMF"], full_loadings)
    np.testing.assert_allclose(subset.varm["NMF"], full_loadings[100:300])
    assert subset.raw.var["nmf_total_counts"].shape == (pbmc_tiny.n_vars,)
    assert set(tl.top_genes(subset, 50, min_counts=0)["gene"]) - set(subset.var_names)


def test_repeated_gene_names_warn_and_the_fit_goes_on(pbmc_tiny):
    """Repeated var names (scanpy only warns when such an AnnData is made): tl.nmf says
    which repeat and what they break, and fits; unique names give no such warning."""
    adata = pbmc_tiny[:, :60].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own warning about the names
        adata.var_names = [*adata.var_names[:58], adata.var_names[0], adata.var_names[1]]
    with pytest.warns(UserWarning, match=r"2 gene names repeat \(e.g. '.+'\)"):
        _quiet_nmf(adata, 2, **TINY_FIT)
    assert adata.obsm["X_nmf"].shape == (adata.n_obs, 2)
    unique = pbmc_tiny[:, :60].copy()
    with warnings.catch_warnings():
        # most cells have no counts in 60 genes, which tl.nmf also warns of
        warnings.filterwarnings("error", message=".*gene names repeat")
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(unique, 2, **TINY_FIT)


def test_negative_and_nan_counts_are_refused(pbmc_tiny):
    for bad in (-1.0, np.nan):
        adata = pbmc_tiny.copy()
        adata.X = adata.X.copy()
        adata.X.data[5] = bad
        with pytest.raises(ValueError, match="raw counts"):
            tl.nmf(adata, 3)


def test_classical_solver(pbmc_tiny):
    from vbsnmf.classic import NMF

    tl.nmf(pbmc_tiny, 3, solver="hals", max_iter=20, random_state=2)
    model = NMF(3, solver="hals", max_iter=20, random_state=2)
    np.testing.assert_allclose(pbmc_tiny.obsm["X_nmf"], model.fit_transform(pbmc_tiny.X))
    np.testing.assert_allclose(pbmc_tiny.varm["NMF"], model.components_.T)
    info = pbmc_tiny.uns["nmf"]
    assert info["params"]["solver"] == "hals" and "variational" not in info
    np.testing.assert_allclose(info["loss_trace"], model.loss_trace_)
    with pytest.raises(ValueError, match="project needs solver='batch' or 'svi'"):
        tl.project(pbmc_tiny.copy(), pbmc_tiny)


def test_unknown_solver(pbmc_tiny):
    with pytest.raises(ValueError, match="unknown solver 'pca'"):
        tl.nmf(pbmc_tiny, 3, solver="pca")


def test_warm_start_continues_the_stored_fit(pbmc_tiny):
    """Ten iterations, then ten more from the stored parameters: the trace and factors of
    twenty iterations in one go."""
    options = {"n_threads": 2, "random_state": 5, "prior": "gamma"}
    twice = pbmc_tiny.copy()
    _quiet_nmf(twice, 3, max_iter=10, **options)
    _quiet_nmf(twice, 3, max_iter=10, warm_start=True, **options)
    once = _quiet_nmf(pbmc_tiny, 3, max_iter=20, copy=True, **options)
    assert twice.uns["nmf"]["n_iter"] == 20
    np.testing.assert_allclose(twice.uns["nmf"]["elbo_trace"], once.uns["nmf"]["elbo_trace"])
    np.testing.assert_allclose(twice.obsm["X_nmf"], once.obsm["X_nmf"], rtol=1e-10)


def test_warm_start_and_project_after_subsetting_cells_or_genes(pbmc_tiny):
    """A fit follows the AnnData when it is subset: a[:500].copy() continues from the
    stored parameters of its 500 cells (the ELBO of fewer cells' counts is not comparable
    with the stored trace: a warning, and a trace of its own), and projects as the full
    reference does."""
    # Plain coordinate ascent: every iteration is one step, so the counts below are exact.
    options = {"n_threads": 2, "random_state": 5, "accelerate": False}
    _quiet_nmf(pbmc_tiny, 5, max_iter=10, **options)
    stored = _stored_variational(pbmc_tiny)
    subset = pbmc_tiny[:500].copy()
    with pytest.warns(UserWarning, match="adata holds 500 of the 1107 cells"):
        _quiet_nmf(subset, 5, max_iter=4, warm_start=True, **options)
    assert subset.uns["nmf"]["n_iter"] == 4
    model = vbsnmf.VBNMF(5, max_iter=4, **options)
    init = dict(stored, cell_shape=stored["cell_shape"][:500])
    for name in ("cell_rate", "cell_scale_shape", "cell_scale_rate"):
        init[name] = stored[name][:500]
    with pytest.warns(vbsnmf.ConvergenceWarning):
        model.fit(subset.X, init=init)
    np.testing.assert_allclose(subset.obsm["X_nmf"], model.cell_shape_ / model.cell_rate_)
    np.testing.assert_allclose(subset.uns["nmf"]["elbo_trace"], model.elbo_trace_)
    np.testing.assert_array_equal(subset.uns["nmf"]["elbo_iter"], model.elbo_iter_)

    new_cells = pbmc_tiny[600:650].copy()
    from_full = tl.project(new_cells, pbmc_tiny, copy=True, n_threads=2)
    from_subset = tl.project(new_cells, pbmc_tiny[:500].copy(), copy=True, n_threads=2)
    np.testing.assert_array_equal(from_subset.obsm["X_nmf"], from_full.obsm["X_nmf"])
    # Usages weigh the factors by the reference's loadings, as tl.nmf's (learned prior).
    np.testing.assert_array_equal(from_subset.obsm["X_nmf_usage"], from_full.obsm["X_nmf_usage"])
    np.testing.assert_allclose(
        from_full.obsm["X_nmf_usage"],
        usage(from_full.obsm["X_nmf"], pbmc_tiny.varm["NMF"]),
        rtol=1e-10,
    )
    np.testing.assert_allclose(from_full.obsm["X_nmf_usage"].sum(axis=1), 1.0)
    np.testing.assert_allclose(
        from_full.obsm["X_nmf_sqrt_usage"] ** 2, from_full.obsm["X_nmf_usage"]
    )

    genes = pbmc_tiny[:, :300].copy()
    _quiet_nmf(genes, 5, max_iter=2, warm_start=True, **options)
    model = vbsnmf.VBNMF(5, max_iter=2, **options)
    init = dict(stored, gene_shape=stored["gene_shape"][:300])
    for name in ("gene_rate", "gene_scale_shape", "gene_scale_rate"):
        init[name] = stored[name][:300]
    with pytest.warns(vbsnmf.ConvergenceWarning):
        model.fit(genes.X, init=init)
    np.testing.assert_allclose(genes.varm["NMF"], model.components_.T)

    with pytest.raises(ValueError, match=r"warm_start: adata\.uns has no fit 'other'"):
        tl.nmf(genes, 5, key_added="other", warm_start=True)


# -- mask_var -------------------------------------------------------------------------------
def _with_hvg(adata, n_genes=200):
    """A boolean highly_variable column (the n_genes genes with the most counts)."""
    totals = np.asarray(adata.X.sum(axis=0)).ravel()
    adata.var["highly_variable"] = np.isin(np.arange(adata.n_vars), np.argsort(-totals)[:n_genes])
    return adata.var["highly_variable"].to_numpy()


def test_mask_var_fits_only_those_genes(pbmc_tiny):
    mask = _with_hvg(pbmc_tiny)
    X = pbmc_tiny.X
    _quiet_nmf(pbmc_tiny, 3, mask_var="highly_variable", **TINY_FIT)
    assert pbmc_tiny.X is X  # no copy of the AnnData
    assert pbmc_tiny.uns["nmf"]["params"]["mask_var"] == "highly_variable"
    alone = _quiet_nmf(pbmc_tiny[:, mask].copy(), 3, copy=True, **TINY_FIT)
    np.testing.assert_allclose(pbmc_tiny.obsm["X_nmf"], alone.obsm["X_nmf"], rtol=1e-12)
    # Fitted genes as if alone; the others zero, as scanpy's pca leaves them.
    for field in ("NMF", "nmf_gene_shape"):
        np.testing.assert_allclose(pbmc_tiny.varm[field][mask], alone.varm[field], rtol=1e-12)
        assert not pbmc_tiny.varm[field][~mask].any()
    np.testing.assert_array_equal(
        pbmc_tiny.var["nmf_total_counts"][mask], alone.var["nmf_total_counts"]
    )
    assert set(tl.top_genes(pbmc_tiny, 50, min_counts=0)["gene"]) <= set(pbmc_tiny.var_names[mask])
    # The same through a boolean array; project uses the fitted genes only.
    by_array = _quiet_nmf(pbmc_tiny, 3, mask_var=mask, copy=True, **TINY_FIT)
    np.testing.assert_array_equal(by_array.obsm["X_nmf"], pbmc_tiny.obsm["X_nmf"])
    projected = tl.project(pbmc_tiny[:30].copy(), pbmc_tiny, copy=True, n_threads=2)
    assert projected.uns["nmf_projection"]["n_genes_used"] == mask.sum()
    np.testing.assert_allclose(
        projected.obsm["X_nmf"],
        tl.project(pbmc_tiny[:30].copy(), alone, copy=True, n_threads=2).obsm["X_nmf"],
        rtol=1e-12,
    )
    # A warm start with other genes than the stored fit's is refused.
    with pytest.raises(ValueError, match="were not fitted before"):
        tl.nmf(pbmc_tiny, 3, warm_start=True)


def test_mask_var_with_raw_selects_raw_genes_by_name(pbmc_tiny):
    """The issue's case: a 200-HVG AnnData whose .raw has all 507 genes."""
    mask = _with_hvg(pbmc_tiny)
    hvg = pbmc_tiny[:, mask].copy()
    hvg.raw = pbmc_tiny
    hvg.X = _log_normalised(hvg)
    _quiet_nmf(hvg, 3, use_raw=True, mask_var="highly_variable", **TINY_FIT)
    raw_fitted = (hvg.raw.varm["nmf_gene_shape"] > 0).any(axis=1)
    assert raw_fitted.sum() == 200
    assert list(hvg.raw.var_names[raw_fitted]) == list(hvg.var_names)
    alone = _quiet_nmf(pbmc_tiny[:, mask].copy(), 3, copy=True, **TINY_FIT)
    np.testing.assert_allclose(hvg.obsm["X_nmf"], alone.obsm["X_nmf"], rtol=1e-12)
    np.testing.assert_allclose(hvg.varm["NMF"], alone.varm["NMF"], rtol=1e-12)


def test_mask_var_errors(pbmc_tiny):
    pbmc_tiny.var["not_bool"] = 1.0
    # pandas' nullable booleans with NA were "not boolean (dtype object)" (a hostile pass)
    pbmc_tiny.var["with_na"] = pd.array([True, None] * 253 + [True], dtype="boolean")
    cases = [
        ("highly_variable", "not a column of adata.var"),
        ("not_bool", "is not boolean"),
        ("with_na", r"adata.var\['with_na'\] has 253 missing values; fill them"),
        (np.ones(10, dtype=bool), "length n_vars=507"),
        (np.zeros(pbmc_tiny.n_vars), "boolean array"),
        (np.zeros(pbmc_tiny.n_vars, dtype=bool), "selects no gene"),
    ]
    for mask, message in cases:
        with pytest.raises(ValueError, match=message):
            tl.nmf(pbmc_tiny, 3, mask_var=mask)


def test_callback_sees_every_iteration(pbmc_tiny):
    seen = []
    _quiet_nmf(
        pbmc_tiny, 3, callback=lambda n, params, trace: seen.append((n, trace[-1])), **TINY_FIT
    )
    assert [n for n, _ in seen] == list(range(1, 13))
    np.testing.assert_allclose([e for _, e in seen], pbmc_tiny.uns["nmf"]["elbo_trace"])


def test_neighbors_and_umap_run_on_the_result(pbmc_tiny):
    import scanpy as sc

    _quiet_nmf(pbmc_tiny, 4, **TINY_FIT)
    sc.pp.neighbors(pbmc_tiny, use_rep="X_nmf", n_neighbors=10)
    sc.tl.umap(pbmc_tiny, maxiter=50)
    umap = pbmc_tiny.obsm["X_umap"]
    assert umap.shape == (pbmc_tiny.n_obs, 2) and np.all(np.isfinite(umap))
    distances = pbmc_tiny.obsp["distances"]
    # The graph is built on X_nmf: a cell's stored neighbour distances are Euclidean
    # distances between cell factor rows.
    row = distances[0].tocoo()
    factors = pbmc_tiny.obsm["X_nmf"]
    expected = np.linalg.norm(factors[row.col] - factors[0], axis=1)
    np.testing.assert_allclose(row.data, expected, rtol=1e-4)


# -- top genes ---------------------------------------------------------------------------------
def test_top_genes_table(pbmc_tiny):
    _quiet_nmf(pbmc_tiny, 3, min_share=0.0, **TINY_FIT)
    loadings = pbmc_tiny.varm["NMF"]
    totals = pbmc_tiny.obsm["X_nmf"].sum(axis=0)
    counts = np.asarray(pbmc_tiny.X.sum(axis=0)).ravel()
    for sort_by in ("loading", "specificity", "score"):
        table = tl.top_genes(pbmc_tiny, 5, sort_by=sort_by)
        assert table.index.names == ["factor", "rank"]
        assert list(table.columns) == ["gene", "loading", "specificity", "total_counts"]
        assert len(table) == 15
        for (factor, _), row in table.iterrows():
            gene = pbmc_tiny.var_names.get_loc(row["gene"])
            assert row["loading"] == pytest.approx(loadings[gene, factor])
            assert row["total_counts"] == counts[gene] >= 2
            # specificity: the factor's share of the gene's expected count, by a loop
            shares = [loadings[gene, f] * totals[f] for f in range(3)]
            assert row["specificity"] == pytest.approx(shares[factor] / sum(shares))
    by_loading = tl.top_genes(pbmc_tiny, 5, sort_by="loading", min_counts=0)
    for factor in range(3):
        expected = pbmc_tiny.var_names[np.argsort(-loadings[:, factor])[:5]]
        assert list(by_loading.loc[factor, "gene"]) == list(expected)
    by_specificity = tl.top_genes(pbmc_tiny, 5, sort_by="specificity")
    assert all(
        np.all(np.diff(by_specificity.loc[factor, "specificity"].to_numpy()) <= 0)
        for factor in range(3)
    )


def test_top_genes_min_counts_and_inactive_factors(pbmc_tiny):
    _quiet_nmf(pbmc_tiny, 4, min_share=0.0, **TINY_FIT)
    counts = np.asarray(pbmc_tiny.X.sum(axis=0)).ravel()
    assert (counts == 1).sum() > 10  # pbmc_tiny has single-count genes to leave out
    every = tl.top_genes(pbmc_tiny, 10_000, min_counts=0)
    listed = tl.top_genes(pbmc_tiny, 10_000)  # default min_counts=2
    assert every["total_counts"].min() < 2
    assert listed["total_counts"].min() >= 2
    # Exactly the genes with fewer counts are gone, in each factor, in the same order.
    for factor in range(4):
        kept = every.loc[factor][every.loc[factor, "total_counts"] >= 2]
        assert list(listed.loc[factor, "gene"]) == list(kept["gene"])
    high = tl.top_genes(pbmc_tiny, 10_000, min_counts=50)
    assert set(high["gene"]) == set(pbmc_tiny.var_names[counts >= 50])
    # Inactive factors are left out unless asked for.
    share = pbmc_tiny.uns["nmf"]["factor_share"]
    pbmc_tiny.uns["nmf"]["active"] = share > np.sort(share)[1]
    active = np.flatnonzero(pbmc_tiny.uns["nmf"]["active"])
    assert list(tl.top_genes(pbmc_tiny, 3).index.unique("factor")) == list(active)
    assert list(tl.top_genes(pbmc_tiny, 3, include_inactive=True).index.unique("factor")) == [
        0,
        1,
        2,
        3,
    ]


# -- pbmc_facs: quality -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def facs_fit():
    """pbmc_facs fitted once for this module at a CI-sized setting (K=15, 30 iterations)."""
    adata = vbsnmf.datasets.pbmc_facs()
    _quiet_nmf(adata, 15, max_iter=30, n_threads=2, random_state=0)
    return adata


def test_nmf_embedding_separates_the_subpops(facs_fit):
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    accuracy = cross_val_score(
        KNeighborsClassifier(n_neighbors=15),
        facs_fit.obsm["X_nmf"],
        facs_fit.obs["subpop"],
        cv=folds,
    )
    assert accuracy.mean() >= 0.9, accuracy


def _profiles(cell_factors):
    """Cell factors as proportions (each cell's loadings sum to one): removes library size."""
    return cell_factors / cell_factors.sum(axis=1, keepdims=True)


def test_project_puts_test_cells_near_their_subpop(facs_fit):
    test_cells = vbsnmf.datasets.pbmc_facs(test=True)
    returned = tl.project(test_cells, facs_fit, n_threads=2)
    assert returned is None
    projected = test_cells.obsm["X_nmf"]
    assert projected.shape == (100, 15) and np.all(np.isfinite(projected)) and np.all(projected > 0)
    labels = facs_fit.obs["subpop"].to_numpy()
    subpops = np.unique(labels)
    means = np.stack([_profiles(facs_fit.obsm["X_nmf"])[labels == s].mean(axis=0) for s in subpops])
    distances = np.linalg.norm(_profiles(projected)[:, None, :] - means[None], axis=2)
    nearest = subpops[distances.argmin(axis=1)]
    assert np.mean(nearest == test_cells.obs["subpop"].to_numpy()) >= 0.9


def test_project_matches_genes_by_name(pbmc_tiny):
    _quiet_nmf(pbmc_tiny, 3, **TINY_FIT)
    new = pbmc_tiny[:50].copy()
    in_order = tl.project(new, pbmc_tiny, copy=True, n_threads=2).obsm["X_nmf"]
    # The estimator's transform with the same gene side: the same numbers.
    model = vbsnmf.VBNMF(3, max_iter=200, tol=1e-5, prior="gamma")
    info = _stored_variational(pbmc_tiny)
    model.gene_shape_, model.gene_rate_ = info["gene_shape"], info["gene_rate"]
    model.n_features_in_ = pbmc_tiny.n_vars
    np.testing.assert_allclose(in_order, model.transform(new.X), rtol=1e-10)
    # Shuffled genes plus an unknown gene: the same projection.
    order = np.random.default_rng(0).permutation(new.n_vars)
    extra = sp.csr_matrix(np.ones((new.n_obs, 1), dtype=np.float32))
    shuffled = ad.AnnData(
        sp.hstack([new.X[:, order], extra]).tocsr(),
        obs=new.obs,
        var=pd.DataFrame(index=[*new.var_names[order], "NOT_A_GENE"]),
    )
    tl.project(shuffled, pbmc_tiny, key_added="ref", n_threads=2)
    np.testing.assert_allclose(shuffled.obsm["X_ref"], in_order, rtol=1e-10)
    np.testing.assert_allclose(  # the fixed prior's loadings weigh the usages
        shuffled.obsm["X_ref_usage"], usage(in_order, pbmc_tiny.varm["NMF"]), rtol=1e-10
    )
    assert shuffled.uns["ref_projection"]["n_genes_used"] == pbmc_tiny.n_vars
    # Counts in a dask array (sparse or dense chunks): the same projection.
    import dask.array as da

    for chunks in (new.X, new.X.toarray()):
        on_dask = ad.AnnData(da.from_array(chunks, chunks=(20, -1)), var=new.var)
        tl.project(on_dask, pbmc_tiny, n_threads=2)
        np.testing.assert_allclose(on_dask.obsm["X_nmf"], in_order, rtol=1e-10)
    # Fewer than half the genes: a warning; none: an error.
    with pytest.warns(UserWarning, match="only 100 of the reference's 507 genes"):
        tl.project(new[:, :100].copy(), pbmc_tiny)
    nothing = ad.AnnData(new.X, var=pd.DataFrame(index=[f"g{i}" for i in range(new.n_vars)]))
    with pytest.raises(ValueError, match="shares no gene names"):
        tl.project(nothing, pbmc_tiny)


# -- issue 14 --------------------------------------------------------------------------------
def test_any_integer_seed_is_stored_and_written(pbmc_tiny, tmp_path):
    small = pbmc_tiny[:200].copy()
    _quiet_nmf(small, 2, random_state=2**64, max_iter=2, n_threads=1)
    assert small.uns["nmf"]["params"]["random_state"] == str(2**64)
    small.write_h5ad(tmp_path / "seeded.h5ad")
    assert ad.read_h5ad(tmp_path / "seeded.h5ad").uns["nmf"]["params"]["random_state"] == str(2**64)


def test_parameter_errors_speak_of_the_parameter(pbmc_tiny, tmp_path):
    with pytest.raises(ValueError, match="n_components=1000000 is out of range"):
        tl.nmf(pbmc_tiny, 10**6)
    with pytest.raises(ValueError, match="n_components=1000000 is out of range"):
        tl.nmf(pbmc_tiny, 10**6, solver="mu")
    with pytest.raises(ValueError, match=r"n_epochs.*'mu'"):
        tl.nmf(pbmc_tiny, 3, solver="mu", n_epochs=3)
    with pytest.raises(ValueError, match=r"no_such_option.*'batch'"):
        tl.nmf(pbmc_tiny, 3, no_such_option=1)
    reference = pbmc_tiny.copy()
    _quiet_nmf(reference, 2, max_iter=2)
    bad_options = (
        ({"tol": -1}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"n_threads": 0}, "n_threads"),
    )
    for bad, message in bad_options:
        with pytest.raises((ValueError, TypeError), match=message):
            tl.project(pbmc_tiny.copy(), reference, **bad)
    with pytest.raises(TypeError, match="solver='svi'"):
        vbsnmf.VBNMF(2, prior="gamma").fit(str(tmp_path / "x.h5ad"))


# -- keys that cannot be written or that would overwrite another fit ------------------------
# (a key of another type, 5, is a TypeError: tests/test_key_added_type.py)
@pytest.mark.parametrize("key", ["", ".", ".hidden", "a/b"])
def test_unwritable_key_added_is_refused_before_the_fit(pbmc_tiny, tmp_path, key):
    """An empty key or one starting with '.' made keys ('X_', '._gene_shape') on which
    anndata's writer failed part-way, after truncating the user's .h5ad."""
    small = pbmc_tiny[:100].copy()
    path = tmp_path / "mine.h5ad"
    small.write_h5ad(path)
    with pytest.raises(ValueError, match="key_added must be a non-empty string"):
        tl.nmf(small, 2, max_iter=2, key_added=key)
    with pytest.raises(ValueError, match="key_added must be a non-empty string"):
        tl.select_k(small, ks=[2], key_added=key)
    assert not any(str(name).startswith(("X_", ".")) for name in small.obsm)
    small.write_h5ad(path)
    assert ad.read_h5ad(path).shape == small.shape


def test_a_refit_under_a_key_leaves_none_of_the_old_fits_entries(pbmc_tiny):
    """A fit replaces the one under its key whole: another prior's arrays, loadings under
    .varm["NMF"] (default) against .varm["nmf"] (key_added="nmf"), .raw's against adata's,
    must not outlive it beside a record that no longer describes them."""
    small = pbmc_tiny[:200].copy()
    small.raw = small.copy()

    def entries():
        raw = small.raw
        return {
            "obsm": set(small.obsm),
            "varm": set(small.varm),
            "var": {c for c in small.var.columns if c.startswith("nmf")},
            "raw.varm": set(raw.varm),
            "raw.var": {c for c in raw.var.columns if c.startswith("nmf")},
        }

    _quiet_nmf(small, 2, max_iter=3, random_state=0, use_raw=True)  # learned prior, of .raw
    assert "nmf_gene_scale_rate" in small.raw.varm and "nmf_total_counts" in small.raw.var
    _quiet_nmf(small, 2, max_iter=3, random_state=0, key_added="nmf", prior="gamma")
    after = entries()
    assert after["varm"] == {"nmf", "nmf_gene_shape"}
    assert after["obsm"] == {"X_nmf", "X_nmf_usage", "X_nmf_sqrt_usage", "nmf_cell_shape"}
    assert after["var"] == {"nmf_total_counts"}
    assert after["raw.varm"] == set() and after["raw.var"] == set()
    _quiet_nmf(small, 2, max_iter=3, random_state=0, solver="mu")
    after = entries()
    assert after["varm"] == {"NMF"}
    assert after["obsm"] == {"X_nmf", "X_nmf_usage", "X_nmf_sqrt_usage"}
    assert tl.fit_info(small, "nmf")["varm_key"] == "NMF"
    # another key's fit is left alone
    _quiet_nmf(small, 2, max_iter=3, random_state=0, key_added="programs")
    _quiet_nmf(small, 2, max_iter=3, random_state=1)
    assert {"programs", "X_programs"} <= set(small.varm) | set(small.obsm)


def test_key_added_that_would_overwrite_another_fit_is_refused(pbmc_tiny):
    small = pbmc_tiny[:200].copy()
    _quiet_nmf(small, 2, max_iter=3, random_state=0)
    before = {name: small.obsm[name].copy() for name in small.obsm}
    loadings = small.varm["NMF"].copy()
    # "NMF" is the default fit's .varm key; "nmf_usage" makes .obsm["X_nmf_usage"]
    for key, clash in (("NMF", ".varm['NMF']"), ("nmf_usage", ".obsm['X_nmf_usage']")):
        with pytest.raises(ValueError, match=re.escape(clash)):
            tl.nmf(small, 2, max_iter=3, key_added=key)
    # a k-selection table over the fit's .uns entry, and a projection over its usages
    with pytest.raises(ValueError, match=r"adata.uns\['nmf'\]"):
        tl.select_k(small, ks=[2], key_added="nmf")
    other = small.copy()
    with pytest.raises(ValueError, match=re.escape(".obsm['X_nmf_sqrt_usage']")):
        tl.project(other, small, key_added="nmf_sqrt", n_threads=1)
    for name, values in before.items():
        np.testing.assert_array_equal(small.obsm[name], values)
    np.testing.assert_array_equal(small.varm["NMF"], loadings)
    # The same key again replaces the fit, and a key of its own sits beside it.
    _quiet_nmf(small, 3, max_iter=3, random_state=1)
    _quiet_nmf(small, 2, max_iter=3, key_added="programs")
    assert small.obsm["X_nmf"].shape[1] == 3 and small.obsm["X_programs"].shape[1] == 2
    # and the other way round: a fit under "NMF" holds .varm["NMF"], the default's loadings
    other = pbmc_tiny[:200].copy()
    _quiet_nmf(other, 2, max_iter=3, key_added="NMF")
    with pytest.raises(ValueError, match=re.escape(".varm['NMF']")):
        tl.nmf(other, 2, max_iter=3)


def test_repeated_raw_gene_names_are_refused_before_the_fit(pbmc_tiny):
    """With use_raw the loadings are matched to adata's genes by name: repeated names in
    .raw failed after the whole fit, with pandas' InvalidIndexError, with half of the new
    fit stored over the old one."""
    small = pbmc_tiny[:200, :150].copy()
    small.var_names = [*small.var_names[:-1], small.var_names[0]]
    small.raw = small.copy()
    small = small[:, 1:100].copy()  # another gene set than .raw's
    _quiet_nmf(small, 3, max_iter=3)
    with pytest.raises(ValueError, match=r"adata\.raw's gene names repeat"):
        tl.nmf(small, 2, use_raw=True, max_iter=3)
    assert small.obsm["X_nmf"].shape[1] == small.varm["NMF"].shape[1] == 3


def test_a_failure_while_storing_leaves_the_previous_fit(pbmc_tiny, monkeypatch):
    """Everything is computed before anything is stored."""
    from vbsnmf.tl import _nmf

    small = pbmc_tiny[:200].copy()
    small.raw = small.copy()
    _quiet_nmf(small, 3, max_iter=3)
    before = {name: small.obsm[name].copy() for name in small.obsm}

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(_nmf, "_align_genes", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        _quiet_nmf(small, 2, max_iter=3, use_raw=True)
    assert set(small.obsm) == set(before)
    for name, values in before.items():
        np.testing.assert_array_equal(small.obsm[name], values)
    assert small.uns["nmf"]["params"]["n_components"] == 3
    assert "NMF" not in small.raw.varm


def test_a_view_of_a_backed_anndata_is_refused_before_the_fit(pbmc_tiny, tmp_path):
    path = tmp_path / "cells.h5ad"
    pbmc_tiny[:200].copy().write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match="view of a backed AnnData"):
        tl.nmf(backed[:50], 2, max_iter=3)
    copied = _quiet_nmf(backed[:50], 2, max_iter=3, copy=True)
    assert copied.obsm["X_nmf"].shape == (50, 2)


def test_n_iter_counts_passes_also_under_squarem(pbmc_tiny):
    """uns['nmf']['n_iter'] was the trace's length, which SQUAREM keeps shorter than the
    passes (9 for 10 passes), also after a warm start."""
    small = pbmc_tiny[:300].copy()
    _quiet_nmf(small, 3, max_iter=10, random_state=0)
    info = small.uns["nmf"]
    assert info["n_iter"] == 10 and 0 < len(info["elbo_trace"]) < 10
    _quiet_nmf(small, 3, max_iter=4, warm_start=True)
    assert small.uns["nmf"]["n_iter"] == 14


def test_top_genes_gene_specificity_and_count_split_refuse_bad_input(pbmc_tiny):
    """Found by a hostile pass: bare KeyErrors, silent empty tables, numpy's errors."""
    small = pbmc_tiny[:200].copy()
    _quiet_nmf(small, 2, max_iter=3)
    with pytest.raises(ValueError, match="min_counts must be finite"):
        tl.top_genes(small, 3, min_counts=np.nan)
    for where, name in (("varm", "NMF"), ("obsm", "X_nmf"), ("var", "nmf_total_counts")):
        edited = small.copy()
        del getattr(edited, where)[name]
        with pytest.raises(KeyError, match=re.escape(f"has no .{where}['{name}']")):
            tl.top_genes(edited, 3)
    loadings, factors = small.varm["NMF"], small.obsm["X_nmf"]
    np.testing.assert_allclose(  # a list is taken as an array
        tl.gene_specificity(loadings.tolist(), factors), tl.gene_specificity(loadings, factors)
    )
    with pytest.raises(ValueError, match="2 factors, cell_factors 1"):
        tl.gene_specificity(loadings, factors[:, :1])
    for bad in (np.nan, -1.0):
        edited = loadings.copy()
        edited[0, 0] = bad
        with pytest.raises(ValueError, match="finite and non-negative"):
            tl.gene_specificity(edited, factors)
    with pytest.raises(TypeError, match="not an AnnData"):
        tl.count_split(small)
    with pytest.raises(ValueError, match=r"below 2\*\*63"):
        tl.count_split(np.array([[1e19, 1.0]]))


def test_gene_specificity_holds_at_any_scale():
    """Shares are unchanged by scaling the loadings and the factors (a hostile pass,
    2026-12-03: 1e200 gave NaN shares by overflow, 1e-320 a zero row by underflow);
    checked against the plain numpy formula at scale 1."""
    rng = np.random.default_rng(4)
    loadings, factors = rng.gamma(0.5, size=(40, 4)), rng.gamma(0.5, size=(25, 4))
    loadings[3], factors[:, 2] = 0.0, 0.0  # a gene and a factor that explain nothing
    expected = loadings * factors.sum(axis=0)
    totals = expected.sum(axis=1, keepdims=True)
    reference = np.divide(expected, totals, out=np.zeros_like(expected), where=totals > 0)
    np.testing.assert_allclose(tl.gene_specificity(loadings, factors), reference, atol=1e-15)
    for scale in (1e200, 1e-160, 1e-300):
        shares = tl.gene_specificity(loadings * scale, factors * scale)
        np.testing.assert_allclose(shares, reference, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(tl.gene_specificity([[1e-320, 0.0]], [[1e-10, 0.0]]), [[1, 0]])


def test_warm_start_with_another_k_names_k(pbmc_tiny):
    small = pbmc_tiny[:200].copy()
    _quiet_nmf(small, 3, max_iter=3)
    with pytest.raises(ValueError, match="the stored fit has K=3, not 2"):
        tl.nmf(small, 2, warm_start=True)


def test_a_damaged_matrix_is_not_blamed_on_normalising(pbmc_tiny):
    """A column index out of range got the advice to keep the raw counts before
    normalising (a hostile pass, 2026-12-03): a damaged matrix is said to be damaged."""
    small = pbmc_tiny[:50, :40].copy()
    small.X = sp.csr_matrix(small.X)
    small.X.indices[0] = 99
    with pytest.raises(vbsnmf._validation.CorruptMatrixError, match="corrupt CSR") as raised:
        tl.nmf(small, 2, max_iter=3)
    assert "raw counts" not in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_project_refuses_a_reference_whose_gene_names_repeat(pbmc_tiny):
    """A reference fitted with two genes under one name: both were matched to the new
    data's one column of that name, its counts used twice and another gene's never read,
    while `uns` reported every gene used (a hostile pass, 2026-12-03)."""
    reference = pbmc_tiny[:200, :60].copy()
    reference.var_names = [reference.var_names[1], *reference.var_names[1:]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own warning about the repeated names
        _quiet_nmf(reference, 2, max_iter=3)
    new = pbmc_tiny[:20, :60].copy()
    with pytest.raises(ValueError, match="the reference fit's gene names repeat"):
        tl.project(new, reference, n_threads=1)
    assert "X_nmf" not in new.obsm


def test_project_warns_of_cells_without_counts_in_the_reference_genes(pbmc_tiny):
    reference = pbmc_tiny[:, :300].copy()
    _quiet_nmf(reference, 2, max_iter=3)
    new = pbmc_tiny[:20].copy()
    counts = new.X.tolil()
    counts[:5, :300] = 0  # five cells with counts only in genes the reference lacks
    new.X = counts.tocsr()
    with pytest.warns(UserWarning, match="5 of the 20 cells have no counts in the reference"):
        tl.project(new, reference, n_threads=1)
    assert new.uns["nmf_projection"]["n_cells_without_counts"] == 5
    factors = new.obsm["X_nmf"]
    np.testing.assert_allclose(factors[:5], np.broadcast_to(factors[0], (5, 2)))


def test_the_reference_projected_onto_itself_keeps_its_fit_and_lands_near_it(pbmc_tiny):
    """project's docstring advises projecting the reference too (its fitted factors are not
    what the local fit gives back): under another key, beside the fit, which stays as it
    was; the learned prior, to convergence."""
    tl.nmf(pbmc_tiny, 5, n_threads=2, random_state=0)
    fitted = {name: pbmc_tiny.obsm[name].copy() for name in ("X_nmf", "X_nmf_usage")}
    # under its own key it wrote the projections over the fit, which .uns still described
    # (a hostile pass, 2026-12-03); a copy may be written over, the reference not
    with pytest.raises(ValueError, match="adata_new is adata_ref"):
        tl.project(pbmc_tiny, pbmc_tiny, n_threads=2, max_iter=2)
    projected = tl.project(pbmc_tiny, pbmc_tiny, n_threads=2, max_iter=2, copy=True)
    assert not np.array_equal(projected.obsm["X_nmf"], fitted["X_nmf"])
    tl.project(pbmc_tiny, pbmc_tiny, key_added="again", n_threads=2)
    for name, values in fitted.items():
        np.testing.assert_array_equal(pbmc_tiny.obsm[name], values)
    assert pbmc_tiny.uns["again_projection"]["reference_key"] == "nmf"
    again = pbmc_tiny.obsm["X_again_usage"]
    assert again.shape == fitted["X_nmf_usage"].shape and np.all(np.isfinite(again))
    moved = np.abs(again - fitted["X_nmf_usage"]).sum(axis=1)
    assert np.median(moved) < 0.05 and np.mean(moved < 0.1) > 0.9, np.quantile(moved, [0.5, 0.9])


def test_project_refuses_to_write_over_another_fit_of_adata_new(pbmc_tiny):
    """A projection wrote over the cells' arrays of adata_new's own fit under the same key
    (and over a fit named '<key>_projection'); over a copy of its reference it may."""
    reference, query = pbmc_tiny[:300].copy(), pbmc_tiny[300:400].copy()
    _quiet_nmf(reference, 3, max_iter=4, random_state=0)
    _quiet_nmf(query, 2, max_iter=4, random_state=0)  # the query's own fit, uns['nmf']
    with pytest.raises(ValueError, match=re.escape(".obsm['X_nmf']")):
        tl.project(query, reference, n_threads=1)
    assert query.obsm["X_nmf"].shape[1] == 2
    _quiet_nmf(query, 2, max_iter=4, key_added="mine_projection")
    with pytest.raises(ValueError, match=re.escape("adata_new.uns['mine_projection']")):
        tl.project(query, reference, key_added="mine", n_threads=1)
    tl.project(query, reference, key_added="ref", n_threads=1)  # writes uns['ref_projection']
    with pytest.raises(ValueError, match="the record of a projection"):
        tl.nmf(query, 2, max_iter=2, key_added="ref_projection")
    copy = reference[:50].copy()  # a copy of the reference carries its fit: projected over
    tl.project(copy, reference, n_threads=1)
    assert copy.obsm["X_nmf"].shape == (50, 3)
