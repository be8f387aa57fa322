"""Thirty-seventh hostile pass: notebook workflows that run the `vbsnmf.tl` tools again and
again on one AnnData, as re-run Jupyter cells do (fits anew with another K, projections
into a copy of the reference, views and copies).

Defects, each test of them failing on the code before its fix:

- Cells projected into a copy of the reference (``new = adata.copy(); tl.project(new,
  adata)``, which writes the projection over the copy's own fit) and then fitted anew
  (``tl.nmf(new, 3)``) kept the projection's record, ``.uns['nmf_projection']``, naming
  the new fit's cells as the projection's. A second ``tl.project(new, adata)`` took the
  record as its own earlier result and wrote the reference's K factors over the new fit's
  cells without a word (`tl.top_genes` then called ``.obsm['X_nmf']`` damaged). A new
  fit now drops that record, so that the projection is refused as over another fit.
- ``tl.nmf(adata, K, warm_start=True)`` over a classical fit stored under the key (a cell
  run earlier with ``solver="mu"``) said only "adata.uns['nmf'] is a 'mu' fit without
  variational parameters (fitted by solver='batch' or 'svi' only)", naming neither
  ``warm_start`` nor the way on; it now says the warm start has nothing to continue from,
  and to fit without it.

The other tests are guards that pass on the code before the fixes too; each says so.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import tl

FIT = {"max_iter": 20, "random_state": 0, "n_threads": 1}


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter's ConvergenceWarning
        return call(*args, **kwargs)


def _sample(seed: int = 0, n_cells: int = 60, n_genes: int = 40) -> ad.AnnData:
    """Poisson counts from three programmes."""
    rng = np.random.default_rng(seed)
    loadings = rng.gamma(0.5, 2.0, size=(n_genes, 3))
    factors = rng.gamma(1.0, 1.0, size=(n_cells, 3))
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(factors @ loadings.T).astype(np.float32)))
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    return adata


@pytest.fixture
def reference() -> ad.AnnData:
    adata = _sample()
    _quiet(tl.nmf, adata, 4, **FIT)
    return adata


def _projected_then_refitted(reference, **refit) -> ad.AnnData:
    """A copy of the reference with its cells projected onto the reference, fitted anew."""
    new = reference.copy()
    _quiet(tl.project, new, reference)
    assert "nmf_projection" in new.uns
    _quiet(tl.nmf, new, refit.pop("n_components", 3), **{**FIT, **refit})
    return new


@pytest.mark.parametrize(
    "refit", [{"n_components": 3}, {"n_components": 4, "warm_start": True}], ids=["K3", "warm"]
)
def test_a_new_fit_drops_the_record_of_cells_projected_into_the_copy(reference, refit):
    new = _projected_then_refitted(reference, **refit)
    assert "nmf_projection" not in new.uns
    assert tl.fit_info(new)["params"]["n_components"] == new.obsm["X_nmf"].shape[1]


def test_a_second_projection_does_not_write_over_the_new_fit(reference):
    new = _projected_then_refitted(reference)
    factors = new.obsm["X_nmf"].copy()
    with pytest.raises(ValueError, match=r"would overwrite .*\.obsm\['X_nmf'\].* of the fit"):
        _quiet(tl.project, new, reference)
    np.testing.assert_array_equal(new.obsm["X_nmf"], factors)
    assert "nmf_projection" not in new.uns
    assert len(tl.top_genes(new)) > 0  # the new fit reads as one


def test_projections_into_a_copy_of_the_reference_still_run_again(reference):
    """A guard (passes on the base code too): a projection into a copy of the reference,
    and again over its own earlier projection, writes the projected factors each time."""
    new = reference.copy()
    _quiet(tl.project, new, reference)
    first = new.obsm["X_nmf"].copy()
    _quiet(tl.project, new, reference, max_iter=5)
    assert new.obsm["X_nmf"].shape == first.shape
    assert not np.array_equal(new.obsm["X_nmf"], first)
    expected = _quiet(tl.project, _sample(), reference, max_iter=5, copy=True)
    np.testing.assert_array_equal(new.obsm["X_nmf"], expected.obsm["X_nmf"])


def test_a_copy_reprojected_onto_its_continued_reference_is_still_written(reference):
    """A guard (passes on the base code too): the copy's cells projected again after the
    reference was continued (warm start) take the projection onto the continued fit."""
    new = reference.copy()
    _quiet(tl.project, new, reference)
    _quiet(tl.nmf, reference, 4, warm_start=True, **FIT)
    _quiet(tl.project, new, reference, max_iter=5)
    expected = _quiet(tl.project, _sample(), reference, max_iter=5, copy=True)
    np.testing.assert_array_equal(new.obsm["X_nmf"], expected.obsm["X_nmf"])


@pytest.mark.parametrize("solver", ["mu", "hals"])
def test_a_warm_start_over_a_classical_fit_says_so(solver):
    adata = _sample()
    _quiet(tl.nmf, adata, 3, solver=solver, max_iter=30, random_state=0)
    record, factors = adata.uns["nmf"], adata.obsm["X_nmf"].copy()
    with pytest.raises(ValueError) as refused:
        _quiet(tl.nmf, adata, 3, warm_start=True, **FIT)
    message = str(refused.value)
    assert message.startswith("warm_start: the stored fit 'nmf' ")
    assert f"classical solver {solver!r}" in message
    assert message.endswith("fit without warm_start")
    assert adata.uns["nmf"] is record
    np.testing.assert_array_equal(adata.obsm["X_nmf"], factors)
    _quiet(tl.nmf, adata, 3, **FIT)  # the advice: a fit without warm_start replaces it
    assert adata.uns["nmf"]["params"]["solver"] == "batch"
