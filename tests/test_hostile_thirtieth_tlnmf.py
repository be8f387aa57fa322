"""The thirtieth hostile pass over ``tl.nmf`` and `VBNMF`: a ``warm_start`` from stored
cell parameters that ``anndata.concat(..., join="outer", fill_value=0)`` had padded with
zero rows, or cut to another K, was refused by the estimator as "init cell_shape must be
positive and finite" (or "init cell_shape has shape ..."), naming an ``init`` the caller
never passed and nothing of where the damage was; and the fit record did not say how many
threads ran the fit (none with the default ``n_threads=None``, all the cores; the number
asked, not the capped one, for more than the machine has), though a fit's rounding depends
on it: a float32 fit under SQUAREM took another path on 2 threads than on 1. Counts off
whole numbers by float rounding (arithmetic on them, counts rebuilt from normalised data)
were refused as "normalised or log-transformed data?", sending the user to look for counts
they held, not told to round them. ``VBNMF().fit(X, init="nndsvda")``, the constructor's
``init`` given to ``fit``, got "init must be a fitted VBNMF, ...; got str"."""

from __future__ import annotations

import warnings

import anndata as ad
import numba
import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import VBNMF, tl


def _adata(n_cells: int = 40, n_genes: int = 12, prefix: str = "c") -> ad.AnnData:
    counts = np.random.default_rng(0).poisson(1.5, (n_cells, n_genes)).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"{prefix}{i}" for i in range(n_cells)]
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    return adata


def _fit(adata, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 3, max_iter=5, **kwargs)


def _joined_with_zero_rows(prior: str) -> ad.AnnData:
    """A fitted AnnData joined with 10 new cells as ``anndata.concat`` pads them with
    ``fill_value=0``, its gene side put back by hand (concat drops it)."""
    fitted = _adata()
    _fit(fitted, prior=prior)
    joined = ad.concat(
        [fitted, _adata(10, prefix="n")], join="outer", fill_value=0, uns_merge="first"
    )
    for name in fitted.varm:
        joined.varm[name] = fitted.varm[name]
    return joined


@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_a_warm_start_from_zero_padded_cell_parameters_names_the_padded_rows(prior):
    joined = _joined_with_zero_rows(prior)
    before = joined.obsm["nmf_cell_shape"].copy()
    with pytest.raises(ValueError) as refused:
        _fit(joined, warm_start=True)
    message = str(refused.value)
    assert message.startswith("warm_start: adata.obsm['nmf_cell_")
    assert "zero or negative values in 10 of its 50 rows" in message
    assert "fill_value=0" in message and "tl.project" in message
    assert "init" not in message
    np.testing.assert_array_equal(joined.obsm["nmf_cell_shape"], before)  # left as it was
    # as the message advises: the fitted cells continue
    fitted_cells = joined[:40].copy()
    _fit(fitted_cells, warm_start=True)
    assert fitted_cells.uns["nmf"]["n_iter"] == 10


def test_a_warm_start_from_cell_parameters_of_another_k_names_the_entry():
    adata = _adata()
    _fit(adata)
    adata.obsm["nmf_cell_shape"] = adata.obsm["nmf_cell_shape"][:, :2]
    with pytest.raises(
        ValueError,
        match=r"adata\.obsm\['nmf_cell_shape'\] of the fit 'nmf' "
        r"has shape \(40, 2\), not \(n_obs, 3\)",
    ):
        _fit(adata, warm_start=True)


def test_a_warm_start_from_whole_number_cell_parameters_still_runs():
    """Guard (passes on the base code too): integer-valued stored arrays, positive and of
    the fit's shape, still start the fit."""
    adata = _adata()
    _fit(adata, prior="gamma")
    adata.obsm["nmf_cell_shape"] = np.ceil(adata.obsm["nmf_cell_shape"]).astype(np.int64)
    _fit(adata, warm_start=True)
    assert adata.uns["nmf"]["n_iter"] == 10
    assert np.isfinite(adata.obsm["X_nmf"]).all()


@pytest.mark.parametrize("solver", ["batch", "svi", "mu"])
@pytest.mark.parametrize("given", [None, 10**6])
def test_the_fit_record_holds_the_threads_the_fit_ran_on(solver, given):
    adata = _adata()
    extra = {} if given is None else {"n_threads": given}
    if solver == "svi":
        extra["n_epochs"] = 1
    _fit(adata, solver=solver, **extra)
    used = numba.config.NUMBA_NUM_THREADS  # None: all the cores; more: capped at them
    assert adata.uns["nmf"]["params"]["n_threads"] == used


def _noisy(counts: np.ndarray) -> np.ndarray:
    """``counts`` about a unit in float32's last place off whole numbers, in float64."""
    return counts.astype(np.float64) * (1 + 1e-7)


@pytest.mark.parametrize("where", ["X", "layer", "dense"])
def test_counts_with_rounding_noise_are_told_to_be_rounded(where):
    adata = _adata()
    noisy = sp.csr_matrix(_noisy(adata.X.toarray()))
    assert (noisy.data != np.rint(noisy.data)).any()
    layer = None
    if where == "layer":
        adata.layers["counts"], layer = noisy, "counts"
    else:
        adata.X = noisy.toarray() if where == "dense" else noisy
    with pytest.raises(
        ValueError, match=r"within 1e-05 \(relative\) of a whole number.*numpy\.rint"
    ):
        _fit(adata, layer=layer)
    assert "nmf" not in adata.uns
    counts = adata.layers["counts"] if layer else adata.X
    if sp.issparse(counts):
        counts.data = np.rint(counts.data)
    else:
        counts[...] = np.rint(counts)
    _fit(adata, layer=layer)  # as advised
    assert "nmf" in adata.uns


def test_normalised_values_are_still_told_as_such():
    """Guard (passes on the base code too): values far from whole numbers, alone or beside
    near-whole ones, are still told as normalised or log-transformed data."""
    adata = _adata()
    dense = _noisy(adata.X.toarray())
    dense[0, dense[0] > 0] = 0.5  # one cell normalised
    adata.X = sp.csr_matrix(dense)
    with pytest.raises(ValueError, match="normalised or log-transformed data"):
        _fit(adata)
    adata.X = sp.csr_matrix(np.log1p(_adata().X.toarray()))
    with pytest.raises(ValueError, match="normalised or log-transformed data"):
        _fit(adata)
    adata.X = sp.csr_matrix(_adata().X.toarray() * 1e-7)  # tiny values, which round to 0
    with pytest.raises(ValueError, match="normalised or log-transformed data"):
        _fit(adata)


@pytest.mark.parametrize("how", ["random", "nndsvda"])
def test_a_string_init_given_to_fit_names_the_constructors_parameter(how):
    counts = _adata().X
    with pytest.raises(TypeError, match=rf"not '{how}'.*VBNMF\(init='{how}'\)\.fit\(X\)"):
        VBNMF(2, max_iter=3).fit(counts, init=how)
