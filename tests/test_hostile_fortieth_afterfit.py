"""The fortieth hostile pass over what users do to an AnnData after ``tl.nmf`` and before the
next vbsnmf call: entries of the ``.uns`` record deleted by hand (to save space, or by
mistake), ``adata.raw = adata`` followed by scanpy's in-place normalisation, subsets, files
and concatenations, each then read by ``tl.top_genes``, ``tl.project``, ``pl.elbo`` and a
warm start; each checked against the untouched fit or a clear, typed error."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

import vbsnmf
from vbsnmf import pl, tl
from vbsnmf._utils import record_kind


def _quiet(function, *args, **kwargs):
    """``function`` with vbsnmf's convergence and advice warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.fixture(scope="module")
def counts() -> ad.AnnData:
    """The bundled pbmc_tiny, a few hundred cells: counts in X, nothing fitted."""
    return vbsnmf.datasets.pbmc_tiny()[:300].copy()


@pytest.fixture(scope="module")
def fitted(counts) -> ad.AnnData:
    """A batch fit with K=3 under the default key; each test works on a copy."""
    return _quiet(tl.nmf, counts, 3, max_iter=10, copy=True)


@pytest.fixture(scope="module")
def new_cells() -> ad.AnnData:
    """Other cells of pbmc_tiny to project onto the fit."""
    return vbsnmf.datasets.pbmc_tiny()[300:340].copy()


# --- the record's 'variational' entry deleted ------------------------------------------


def test_project_without_the_variational_entry_names_it(fitted, new_cells):
    """Was: "adata_ref.uns['nmf'] is a 'batch' fit without variational parameters; project
    needs solver='batch' or 'svi'", which contradicts itself."""
    adata = fitted.copy()
    del adata.uns["nmf"]["variational"]
    with pytest.raises(KeyError) as error:
        tl.project(new_cells.copy(), adata, max_iter=5)
    message = error.value.args[0]
    assert "adata_ref.uns['nmf'] has no 'variational' entry" in message
    assert "needs solver=" not in message


def test_warm_start_without_the_variational_entry_is_not_called_classical(fitted):
    """Was: "the stored fit 'nmf' was made by the classical solver 'batch'"."""
    adata = fitted.copy()
    del adata.uns["nmf"]["variational"]
    with pytest.raises(
        ValueError, match=r"warm_start: adata.uns\['nmf'\] has no 'variational'"
    ) as e:
        tl.nmf(adata, 3, warm_start=True, max_iter=2)
    assert "classical" not in str(e.value)
    # the message says to fit again, and a fit without warm_start replaces the record
    _quiet(tl.nmf, adata, 3, max_iter=2)
    assert "variational" in adata.uns["nmf"]


def test_a_classical_fit_keeps_its_own_message(counts, new_cells):
    """A classical fit has no 'variational' entry by design: still told so, not damaged."""
    adata = _quiet(tl.nmf, counts, 3, solver="mu", max_iter=5, copy=True)
    with pytest.raises(ValueError, match="classical solver 'mu'"):
        tl.nmf(adata, 3, solver="batch", warm_start=True, max_iter=2)
    with pytest.raises(ValueError, match="'mu' fit without variational parameters"):
        tl.project(new_cells.copy(), adata, max_iter=5)


# --- the ELBO trace or its iterations deleted -------------------------------------------


def test_elbo_without_its_trace_names_the_deleted_entry(fitted):
    """Was: "recorded no ELBO in its 10 pass(es) ...; fit with a larger max_iter"."""
    adata = fitted.copy()
    del adata.uns["nmf"]["elbo_trace"]
    with pytest.raises(KeyError, match=r"has no 'elbo_trace' entry") as error:
        pl.elbo(adata, show=False)
    assert "max_iter" not in error.value.args[0]
    # the other tools read nothing of the trace
    assert tl.top_genes(adata, 3).equals(tl.top_genes(fitted, 3))


def test_elbo_without_its_iterations_warns_that_they_are_numbered(fitted):
    """A deleted ``elbo_iter`` drew the values at 1, 2, ...: not the passes of this fit,
    whose trace has fewer values than passes, without a word."""
    iterations = np.asarray(fitted.uns["nmf"]["elbo_iter"])
    assert iterations.size != fitted.uns["nmf"]["n_iter"]  # the case the warning is for
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trace_axes, _ = pl.elbo(fitted, show=False)  # the record intact: no warning
    np.testing.assert_array_equal(trace_axes.lines[0].get_xdata(), iterations)
    adata = fitted.copy()
    del adata.uns["nmf"]["elbo_iter"]
    with pytest.warns(UserWarning, match=r"no 'elbo_iter' entry.*drawn at 1, 2"):
        trace_axes, _ = pl.elbo(adata, show=False)
    np.testing.assert_array_equal(
        trace_axes.lines[0].get_xdata(), np.arange(1, iterations.size + 1)
    )


# --- the record's marker deleted ---------------------------------------------------------


def test_a_record_without_obsm_key_is_a_damaged_fit_and_a_refit_replaces_it(fitted):
    """Was: "adata.uns['nmf'] holds an entry no vbsnmf tool wrote ... another tool stored its
    record over the one they came from (was sc.pp.neighbors given 'nmf'?)", and tl.nmf
    refused to fit again under the key ("would overwrite ... without their record")."""
    adata = fitted.copy()
    del adata.uns["nmf"]["obsm_key"]
    for call in (lambda: tl.top_genes(adata), lambda: pl.elbo(adata, show=False)):
        with pytest.raises(KeyError, match=r"has no 'obsm_key' entry, so the record of the fit"):
            call()
    _quiet(tl.nmf, adata, 2, max_iter=2)
    assert adata.uns["nmf"]["obsm_key"] == "X_nmf" and adata.obsm["X_nmf"].shape[1] == 2
    # scanpy's own records under a vbsnmf key are still no record of vbsnmf's
    assert record_kind({"params": {"n_neighbors": 15}, "connectivities_key": "c"}) is None


# --- adata.raw = adata, then scanpy's in-place normalisation -----------------------------


def _raw_set_then_normalised(adata: ad.AnnData) -> ad.AnnData:
    """``adata.raw = adata`` then ``normalize_total`` and ``log1p``: anndata's raw keeps
    X's arrays, which scanpy changes in place, so .raw is normalised too."""
    adata.raw = adata
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    assert adata.raw.X.data.max() < 20  # .raw normalised with X (anndata 0.12)
    return adata


@pytest.mark.parametrize("use_raw", [True, False])
def test_warm_start_after_raw_set_and_normalised_says_raw_was_normalised(fitted, use_raw):
    """Was: "keep the raw counts before normalising ... (or use_raw=True after setting
    adata.raw)", the step the user had taken."""
    adata = _raw_set_then_normalised(fitted.copy())
    with pytest.raises(ValueError, match="non-integer") as error:
        tl.nmf(adata, 3, use_raw=use_raw, warm_start=True, max_iter=2, copy=True)
    message = str(error.value)
    assert "adata.raw = adata" in message and "normalised .raw too" in message
    assert "use_raw=True after setting adata.raw" not in message


def test_project_after_raw_set_and_normalised_names_adata_new(fitted, new_cells):
    adata_new = _raw_set_then_normalised(new_cells.copy())
    with pytest.raises(ValueError, match="non-integer") as error:
        tl.project(adata_new, fitted, use_raw=True, max_iter=5)
    assert "adata_new.raw = adata_new" in str(error.value)


def test_raw_kept_as_a_copy_is_named_as_the_counts(fitted):
    """``adata.raw = adata.copy()`` keeps the counts: the advice is to pass use_raw=True."""
    adata = fitted.copy()
    adata.raw = adata.copy()
    sc.pp.normalize_total(adata)
    with pytest.raises(ValueError, match=r"appear to be in use_raw=True"):
        tl.nmf(adata, 3, warm_start=True, max_iter=2)


# --- subsets, files and concatenations read as the fit -----------------------------------


def test_top_genes_of_a_gene_subset_are_the_fit_ranking_among_those_genes(fitted):
    """Each gene's loading and specificity are its own: a subset of the genes (a view, or
    a copy) ranks them as the whole fit does."""
    n_genes = fitted.n_vars
    whole = tl.top_genes(fitted, n_genes)
    kept = np.zeros(n_genes, dtype=bool)
    kept[::3] = True
    for subset in (fitted[:, kept], fitted[:, kept].copy()):
        part = tl.top_genes(subset, n_genes)
        names = set(fitted.var_names[kept])
        for factor in range(3):
            expected = [g for g in whole.loc[factor, "gene"] if g in names]
            assert list(part.loc[factor, "gene"]) == expected


def test_file_round_trips_read_as_the_same_fit(fitted, new_cells, tmp_path):
    """gzip-compressed .h5ad and .zarr: the same top genes and the same projection."""
    reference = _quiet(tl.project, new_cells.copy(), fitted, max_iter=10, copy=True)
    path = tmp_path / "fit.h5ad"
    fitted.write_h5ad(path, compression="gzip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's notice of its format version
        fitted.write_zarr(tmp_path / "fit.zarr")
    for read in (ad.read_h5ad(path), ad.read_zarr(tmp_path / "fit.zarr")):
        assert tl.top_genes(read, 5).equals(tl.top_genes(fitted, 5))
        projected = _quiet(tl.project, new_cells.copy(), read, max_iter=10, copy=True)
        np.testing.assert_allclose(projected.obsm["X_nmf"], reference.obsm["X_nmf"], rtol=1e-6)


def test_cells_split_and_joined_keeping_the_record_read_as_the_fit(fitted):
    """``anndata.concat`` of two parts of the fitted cells with uns_merge and merge 'same'
    keeps the record and gene side: the same fit, its cells in their order."""
    joined = ad.concat([fitted[:120], fitted[120:]], uns_merge="same", merge="same")
    assert tl.top_genes(joined, 5).equals(tl.top_genes(fitted, 5))
    # what sc.pp.neighbors(use_rep=...) reads: the record's key, the fit's cells
    use_rep = joined.uns["nmf"]["sqrt_usage_key"]
    np.testing.assert_array_equal(joined.obsm[use_rep], fitted.obsm["X_nmf_sqrt_usage"])
