"""An eighth hostile pass (2026-12-05): each test here failed on the code before its fix.

True/False parameters took any truthy value: ``genes_as_rows="no"`` read an ``.mtx`` with
genes as rows, ``copy="False"`` returned a copy, ``force="no"`` let an output be replaced.
They now take booleans only (`vbsnmf._validation.check_flag`).
"""

from __future__ import annotations

import codecs
import gzip
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.io import mmwrite

import vbsnmf
from vbsnmf import tl

TINY_FIT = {"max_iter": 3, "n_threads": 1, "prior": "gamma"}


@pytest.fixture
def fitted(pbmc_tiny):
    """A copy of pbmc_tiny with a short fit (``pbmc_tiny`` itself stays unfitted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return tl.nmf(pbmc_tiny, 3, copy=True, **TINY_FIT)


# -- flags ---------------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["no", "False", 0, 1, None])
def test_tl_flags_take_booleans_only(pbmc_tiny, fitted, word):
    with pytest.raises(TypeError, match="copy must be True or False"):
        tl.nmf(pbmc_tiny, 3, copy=word, **TINY_FIT)
    with pytest.raises(TypeError, match="warm_start must be True or False"):
        tl.nmf(pbmc_tiny, 3, warm_start=word, **TINY_FIT)
    with pytest.raises(TypeError, match="copy must be True or False"):
        tl.project(fitted, fitted.copy(), copy=word)
    with pytest.raises(TypeError, match="include_inactive must be True or False"):
        tl.top_genes(fitted, include_inactive=word)
    assert "X_nmf" not in pbmc_tiny.obsm  # nothing was fitted


@pytest.mark.parametrize("word", ["no", "yes", 1])
def test_estimator_and_io_flags_take_booleans_only(tmp_path, word):
    counts = sp.random(8, 6, density=0.5, format="coo", random_state=0)
    counts.data = np.ceil(counts.data * 5)
    path = tmp_path / "m.mtx"
    mmwrite(path, counts)
    with pytest.raises(TypeError, match="genes_as_rows must be True, False or None"):
        vbsnmf.io.read(path, genes_as_rows=word)
    with pytest.raises(TypeError, match="genes_as_rows must be True or False"):
        vbsnmf.io.read_mtx(path, genes_as_rows=word)
    # None (its default) takes genes as rows, as told since the twenty-ninth session
    with pytest.raises(TypeError, match="genes_as_rows must be True, False or None"):
        vbsnmf.io.mtx_to_h5ad(path, tmp_path / "m.h5ad", genes_as_rows=word)
    assert not (tmp_path / "m.h5ad").exists()
    with pytest.raises(TypeError, match="force must be True or False"):
        vbsnmf.io.check_outdir(tmp_path / "out", force=word)
    fits = [
        (vbsnmf.VBNMF(2, resume=word, checkpoint=tmp_path / "c.npz"), (counts,)),
        (vbsnmf.NMF(2, thin=word), (counts.toarray(),)),
        (
            vbsnmf.VBNTF(2, resume=word, checkpoint=tmp_path / "c.npz"),
            (np.column_stack([counts.row, counts.col]), counts.data),
        ),
    ]
    for estimator, data in fits:
        with pytest.raises(TypeError, match="must be True or False"):
            estimator.fit(*data)
    assert not (tmp_path / "c.npz").exists()


# -- messages ------------------------------------------------------------------------------


def test_a_masked_array_into_transform_or_tl_nmf_is_told_to_fill_it(pbmc_tiny):
    """The advice was "pass the entries to leave out as fit(X, mask=...)", which neither
    `transform` nor `tl.nmf` takes."""
    counts = np.ma.masked_array(np.ones((6, 4)), mask=np.zeros((6, 4), dtype=bool))
    counts.mask[0, 0] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.VBNMF(2, max_iter=2).fit(counts.filled(0))
    said = r"masked array: pass the counts as X\.filled\(0\)"
    with pytest.raises(TypeError, match=said):
        model.transform(counts)
    # the matrix as named (since the thirty-fourth pass): adata.X
    with pytest.raises(TypeError, match=r"masked array: pass the counts as adata\.X\.filled\(0\)"):
        tl.nmf(ad.AnnData(counts), 2, **TINY_FIT)


def test_transposed_tensor_coordinates_are_named_as_such():
    """(D, nnz) coordinates with nnz values were read as a tensor of nnz modes ("at most
    101 modes here ..., got D=183") or, for few entries, told that values must have shape
    (3,)."""
    coords = np.random.default_rng(0).integers(0, 5, size=(183, 3))
    for n_entries in (183, 4):
        with pytest.raises(
            ValueError, match=r"one column per value: if its rows are the modes, pass coords\.T"
        ):
            vbsnmf.VBNTF(2, max_iter=2).fit(coords[:n_entries].T, np.ones(n_entries))


@pytest.mark.parametrize("as_dict", [False, True])
def test_a_sparse_factor_mask_holds_the_same_entries_as_its_dense_form(as_dict):
    """A scipy.sparse factor_mask was refused as "factor_mask has shape ()" (alone) or with
    numpy's "setting an array element with a sequence" (in a dict)."""
    counts = np.random.default_rng(0).poisson(2, size=(8, 6)).astype(float)
    mask = np.ones((8, 2))
    mask[0, 1] = mask[3, 0] = 0
    settings = {"max_iter": 5, "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        dense = vbsnmf.NMF(2, factor_mask=mask, **settings).fit_transform(counts)
        sparse_mask = {"W": sp.csr_array(mask)} if as_dict else sp.csr_matrix(mask)
        fitted = vbsnmf.NMF(2, factor_mask=sparse_mask, **settings).fit_transform(counts)
    np.testing.assert_array_equal(fitted, dense)
    assert fitted[0, 1] == fitted[3, 0] == 0
    with pytest.raises(ValueError, match="factor_mask must be a 0/1 array, not a ragged"):
        vbsnmf.NMF(2, factor_mask={"W": [[1, [0]]]}).fit(counts)


# -- inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_a_byte_order_mark_before_the_banner_is_read_past(tmp_path, compressed):
    """Editors on Windows write a UTF-8 byte-order mark before the text; such a file was
    refused as "not a Matrix Market file"."""
    counts = sp.random(8, 6, density=0.5, format="csc", random_state=0)
    counts.data = np.ceil(counts.data * 5)
    plain = tmp_path / "plain.mtx"
    mmwrite(plain, counts)
    marked = tmp_path / ("marked.mtx.gz" if compressed else "marked.mtx")
    with (gzip.open if compressed else open)(marked, "wb") as handle:
        handle.write(codecs.BOM_UTF8 + plain.read_bytes())
    expected = vbsnmf.io.read(plain, genes_as_rows=True)
    read = vbsnmf.io.read(marked, genes_as_rows=True)
    assert (read.X != expected.X).nnz == 0 and read.X.sum() == counts.sum()
    converted = vbsnmf.io.mtx_to_h5ad(marked, tmp_path / "converted.h5ad")
    assert (vbsnmf.io.read(converted).X != expected.X).nnz == 0


# -- scanpy use ----------------------------------------------------------------------------


def test_a_fit_of_raw_on_a_view_keeps_its_gene_side(pbmc_tiny):
    """The first write made the view its own AnnData and replaced its .raw, so the gene side
    went to a detached .raw: lost (top_genes then a KeyError), or an older fit's loadings
    kept beside the new cell factors."""
    pbmc_tiny.raw = pbmc_tiny
    adata = pbmc_tiny[:, :300].copy()
    settings = {**TINY_FIT, "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 3, use_raw=True, **{**settings, "max_iter": 5})  # an older fit of .raw
        view = adata[:500]
        tl.nmf(view, 3, use_raw=True, **settings)
        copied = adata[:500].copy()
        tl.nmf(copied, 3, use_raw=True, **settings)
    assert not view.is_view
    for name in ("NMF", "nmf_gene_shape"):
        np.testing.assert_array_equal(view.raw.varm[name], copied.raw.varm[name])
    np.testing.assert_array_equal(
        view.raw.var["nmf_total_counts"], copied.raw.var["nmf_total_counts"]
    )
    assert tl.top_genes(view).equals(tl.top_genes(copied))


def test_a_fit_of_a_dask_x_outlives_its_client_and_writes_to_h5ad(pbmc_tiny, tmp_path):
    """The cells' results were dask arrays reading the cluster's futures: write_h5ad failed
    with dask's "Missing dependency", and every tool failed once the client closed."""
    import dask.array as da
    from distributed import Client, LocalCluster

    expected = pbmc_tiny.copy()
    lazy = pbmc_tiny.copy()
    lazy.X = da.from_array(lazy.X.toarray(), chunks=(400, -1))
    settings = {**TINY_FIT, "random_state": 0, "tol": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
            with Client(cluster):
                tl.nmf(lazy, 3, **settings)
                lazy.X = None  # the counts stay with the cluster; the result must not
                lazy.write_h5ad(tmp_path / "fit.h5ad")
        tl.nmf(expected, 3, **settings)
    back = ad.read_h5ad(tmp_path / "fit.h5ad")
    for adata in (lazy, back):
        np.testing.assert_allclose(adata.obsm["X_nmf"], expected.obsm["X_nmf"], rtol=1e-9)
        np.testing.assert_allclose(
            adata.obsm["X_nmf_usage"], expected.obsm["X_nmf_usage"], rtol=1e-9
        )
        assert tl.top_genes(adata)["gene"].equals(tl.top_genes(expected)["gene"])


@pytest.fixture
def grouped(fitted):
    """``fitted`` with a UMAP and two categorical .obs columns."""
    rng = np.random.default_rng(0)
    fitted.obsm["X_umap"] = rng.normal(size=(fitted.n_obs, 2))
    fitted.obs["kind"] = pd.Categorical(rng.choice(["B", "T"], fitted.n_obs))
    fitted.obs["batch"] = pd.Categorical(rng.choice(["x", "y"], fitted.n_obs))
    return fitted


def test_top_genes_dot_plot_groups_and_expression(grouped):
    """Categories without cells failed in pandas ("['NK'] not in index"); a list of columns
    (which scanpy's dot plot takes) in pandas ("unhashable type: 'list'"); an AnnData whose
    counts are a layer, with X None, in scanpy ("'NoneType' object is not subscriptable")."""
    axes = vbsnmf.pl.top_genes(grouped, ["kind", "batch"], show=False)
    assert len(axes["mainplot_ax"].get_yticklabels()) == 4  # the four combinations
    grouped.obs["kind"] = grouped.obs["kind"].cat.add_categories(["NK"])
    with pytest.raises(ValueError, match=r"categories without cells \(NK\).*remove_unused"):
        vbsnmf.pl.top_genes(grouped, "kind", show=False)
    with pytest.raises(TypeError, match="groupby must be a name or a non-empty list of names"):
        vbsnmf.pl.top_genes(grouped, 3, show=False)
    # grouped's fit wrote .var['nmf_total_counts'], which a new fit will not overwrite
    var = grouped.var.drop(columns="nmf_total_counts")
    layered = ad.AnnData(obs=grouped.obs, var=var, layers={"counts": grouped.X})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(layered, 3, layer="counts", **TINY_FIT)
    plot = vbsnmf.pl.top_genes(layered, "batch", return_fig=True)
    reference = vbsnmf.pl.top_genes(grouped, "batch", return_fig=True)
    assert plot.obs_tidy.shape == reference.obs_tidy.shape
    layered.uns["nmf"]["params"].pop("layer")
    with pytest.raises(ValueError, match=r"adata\.X is None: pass layer="):
        vbsnmf.pl.top_genes(layered, "batch", show=False)


def test_plots_and_top_genes_of_no_cells_or_nan_usages_are_refused(grouped):
    """No cells: pl.factors failed with numpy's IndexError, pl.top_genes said "every value
    is missing", tl.top_genes listed genes by specificities all 0. NaN usages drew a NaN
    colour scale without a word."""
    none = grouped[grouped.obs["kind"] == "NK"]
    with pytest.raises(ValueError, match="no cells to draw"):
        vbsnmf.pl.factors(none, show=False)
    with pytest.raises(ValueError, match="no cells to group"):
        vbsnmf.pl.top_genes(none, "kind", show=False)
    with pytest.raises(ValueError, match="holds no cells"):
        tl.top_genes(none)
    grouped.obsm["X_nmf_usage"][:10] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        vbsnmf.pl.factors(grouped, show=False)


def test_umap_takes_a_list_of_colours(grouped):
    """sc.pl.umap draws one panel per colour; vbsnmf.pl.umap computed the graph and the UMAP
    and then failed with "'list' object has no attribute 'figure'"."""
    axes = vbsnmf.pl.umap(grouped, color=["kind", "batch"], show=False)
    assert [axis.get_title() for axis in axes] == [
        "UMAP of NMF usages: kind",
        "UMAP of NMF usages: batch",
    ]
    with pytest.raises(TypeError, match="color must be a name or"):
        vbsnmf.pl.umap(grouped, color=3, show=False)


def test_backed_views_are_refused_before_the_work(fitted, tmp_path):
    """project, select_k and pl.umap did their work and then failed in anndata ("To copy an
    AnnData object in backed mode, pass a filename"); tl.nmf refused such a view at once."""
    fitted.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    view = backed[:300]
    said = "a view of a backed AnnData, which cannot hold the result"
    with pytest.raises(ValueError, match=f"adata_new is {said}"):
        tl.project(view, fitted)
    with pytest.raises(ValueError, match=f"adata is {said}"):
        tl.select_k(view, ks=[2, 3], max_iter=2)
    with pytest.raises(ValueError, match=f"adata is {said}"):
        vbsnmf.pl.umap(view, show=False)
    projected = tl.project(view, fitted, copy=True)
    assert projected.obsm["X_nmf"].shape == (300, 3)
    backed.file.close()


# -- numerics ------------------------------------------------------------------------------


def _repeated_narrow(dtype):
    """A COO matrix of ``dtype`` whose entry (0, 0) is given twice, 100 + 100 (200 + 100 in
    uint8), and the same counts summed in float64."""
    counts = np.random.default_rng(0).poisson(2, (30, 20))
    counts[0, 0] = 0
    rows, cols = np.nonzero(counts)
    extra = (200, 100) if dtype == np.uint8 else (100, 100)
    values = np.r_[counts[rows, cols], extra]
    coords = (np.r_[rows, 0, 0], np.r_[cols, 0, 0])
    summed = counts.astype(np.float64)
    summed[0, 0] = sum(extra)
    return sp.coo_array((values.astype(dtype), coords), shape=counts.shape), summed


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_repeated_entries_of_narrow_integers_are_summed_on_every_route(dtype):
    """Batch VB summed them in float64; SVI's cells form and a fit with a mask summed them
    in the input's dtype (uint8: 200 + 100 = 44; int8: 100 + 100 = -56, then a
    FloatingPointError blaming kappa)."""
    repeated, summed = _repeated_narrow(dtype)
    mask = np.zeros(summed.shape)
    mask[5, 5] = 1
    routes = [
        ({"solver": "svi", "n_epochs": 2}, {}),
        ({"solver": "svi", "svi_form": "nonzeros", "n_epochs": 2, "prior": "gamma"}, {}),
        ({"max_iter": 20}, {"mask": mask}),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        for settings, fit_args in routes:
            got = vbsnmf.VBNMF(3, random_state=0, **settings).fit(repeated, **fit_args)
            expected = vbsnmf.VBNMF(3, random_state=0, **settings).fit(summed, **fit_args)
            np.testing.assert_array_equal(got.elbo_trace_, expected.elbo_trace_)


def test_repeated_narrow_entries_of_a_dask_chunk_are_summed():
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    repeated, summed = _repeated_narrow(np.uint8)
    chunk = sp.coo_matrix(repeated)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
            with Client(cluster):
                lazy = da.from_delayed(
                    dask.delayed(lambda: chunk)(),
                    shape=chunk.shape,
                    dtype=chunk.dtype,
                    meta=sp.coo_matrix((0, 0), dtype=chunk.dtype),
                )
                got = vbsnmf.fit_dask(lazy, 3, random_state=0, max_iter=10, prior="gamma")
        expected = vbsnmf.VBNMF(3, random_state=0, max_iter=10, prior="gamma").fit(summed)
    np.testing.assert_allclose(got.elbo_trace, expected.elbo_trace_, rtol=1e-10)


def test_a_mask_over_every_entry_is_refused():
    """Nothing observed: the ELBO's total term was the difference of two equal sums, and
    its rounding gave positive, decreasing ELBOs and factors of 1e5."""
    counts = np.random.default_rng(0).poisson(2, (60, 40)).astype(float)
    with pytest.raises(ValueError, match="mask leaves no entry of X observed"):
        vbsnmf.VBNMF(3, max_iter=5).fit(counts, mask=np.ones_like(counts))
    nearly = np.ones_like(counts)
    nearly[0, 0] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        trace = vbsnmf.VBNMF(3, max_iter=50, random_state=0).fit(counts, mask=nearly).elbo_trace_
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:])) and trace[-1] < 0


def test_transform_checks_the_fitted_gene_side(pbmc_tiny):
    """A NaN in gene_shape_ gave all-NaN cell factors; integer attributes a bare KeyError
    (dtype('int64')); a negative rate was used."""
    counts = pbmc_tiny.X[:200]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.VBNMF(4, random_state=0, max_iter=5, prior="gamma").fit(counts)
    fitted = model.gene_shape_.copy(), model.gene_rate_.copy()
    edits = [
        ("gene_shape_", lambda shape, rate: (np.where(shape == shape[0, 0], np.nan, shape), rate)),
        ("int64", lambda shape, rate: (np.ceil(shape).astype(np.int64), rate)),
        ("gene_rate_", lambda shape, rate: (shape, -rate)),
        ("do not fit each other", lambda shape, rate: (shape, rate[:3])),
    ]
    for said, edit in edits:
        model.gene_shape_, model.gene_rate_ = edit(*fitted)
        with pytest.raises(ValueError, match=said):
            model.transform(counts[:5])
    model.gene_shape_, model.gene_rate_ = fitted
    assert np.all(np.isfinite(model.transform(counts[:5])))


@pytest.mark.parametrize("dtype", [np.float16, ">f8", ">i4"])
def test_fit_triplets_reads_every_count_dtype_fit_reads(dtype):
    """scipy.sparse refuses float16 and non-native byte orders ("does not support dtype"),
    which `VBNMF.fit` converts; `fit_triplets` passed them to it as they were."""
    rows, cols = np.array([0, 1, 2, 0]), np.array([0, 1, 2, 2])
    settings = {"max_iter": 5, "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        expected = vbsnmf.fit_triplets(rows, cols, np.array([1.0, 2, 3, 4]), (3, 3), 2, **settings)
        got = vbsnmf.fit_triplets(rows, cols, np.array([1, 2, 3, 4], dtype), (3, 3), 2, **settings)
    np.testing.assert_array_equal(got.elbo_trace_, expected.elbo_trace_)


def _counts_at_the_limit(dtype):
    """Counts the fit accepts whose ELBO's terms are so large that rounding moves it by
    more than its changes: one count of 1e13 (float64), 25 of 2**24 (float32)."""
    if dtype == np.float64:
        counts = np.zeros((40, 30))
        counts[3, 4] = 1e13
        return counts, {"n_components": 3, "max_iter": 300}
    rng = np.random.default_rng(0)
    counts = np.zeros((30, 20), np.float32)
    counts.flat[rng.choice(600, 25, replace=False)] = 2.0**24
    counts.flat[rng.choice(600, 10, replace=False)] = rng.integers(1, 5, 10)
    return counts, {"n_components": 20, "max_iter": 150, "dtype": np.float32}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_fit_at_the_count_limit_resumes_from_its_own_checkpoint(tmp_path, dtype):
    """The fit's own trace fell by rounding (0.08 nats of 143; 7.8 of 1172 in float32), and
    resuming its checkpoint was refused as "damaged: its ELBO trace decreases" (or "its
    parameters score an ELBO ... below" the trace's last)."""
    counts, settings = _counts_at_the_limit(dtype)
    path = tmp_path / "fit.ckpt"
    longer = {**settings, "max_iter": settings["max_iter"] + 20}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        first = vbsnmf.VBNMF(random_state=0, checkpoint=path, **settings).fit(counts)
        assert np.diff(first.elbo_trace_).min() < 0  # the rounding the check must allow
        resumed = vbsnmf.VBNMF(random_state=0, checkpoint=path, resume=True, **longer)
        resumed.fit(counts)
        unbroken = vbsnmf.VBNMF(random_state=0, **longer).fit(counts)
    np.testing.assert_array_equal(resumed.elbo_trace_, unbroken.elbo_trace_)


def test_learned_shapes_stay_within_the_range_of_a_given_prior_shape():
    """On cells all alike the learned a' grew without end (3e7 after 3,000 passes, 4e7 after
    6,000), past the 1e6 a given prior_shape may take, and SQUAREM's extrapolation scored
    shapes the next step could not keep (a fall of 0.36 nats once a bound was imposed on
    the steps alone)."""
    counts = np.repeat(np.random.default_rng(0).poisson(3, (1, 25)).astype(float), 40, axis=0)
    model = vbsnmf.VBNMF(2, random_state=0, tol=0, max_iter=2000)  # SQUAREM, the default
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(counts)
    largest = vbsnmf._validation.PRIOR_SHAPE_RANGE[1]
    for side in ("cell", "gene"):
        assert model.hyperparameters_[f"{side}_scale_prior_shape"] <= largest
        assert np.all(np.asarray(model.hyperparameters_[f"{side}_factor_shape"]) <= largest)
    trace = model.elbo_trace_
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
