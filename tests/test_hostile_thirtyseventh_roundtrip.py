"""The thirty-seventh pass over results kept and used again: a `tl.nmf` fit written to an
``.h5ad`` or ``.zarr`` (or read ``backed="r"``), edited as scanpy users edit it, and read by
the tools downstream. Defects, each test failing on the code before its fix:

- `tl.project` onto a reference whose genes were dropped after the fit
  (``sc.pp.filter_genes``, ``adata_ref[:, hvg]``) weighed the new cells' usages by the
  total loadings of the genes left, not by the fit's over all its genes, as the
  reference's own usages are: the new cells' usages were not in the reference's space,
  and the documented join of the reference with its projected cells
  (``anndata.concat(..., uns_merge="first", merge="first")``) was refused by every tool
  as "not those of one fit ... fitted apart, or were these arrays edited?". A fit now
  records ``loading_totals`` (K,), by which `tl.project` weighs the usages (an edited
  one is refused by name).

Guard (passes on the code before too, said in its docstring): a record written before
``loading_totals`` was kept still projects.
"""

from __future__ import annotations

import functools
import warnings

import anndata as ad
import numpy as np
import pytest
from simulated import poisson_gamma_adata

from vbsnmf import tl
from vbsnmf.tl._stored import usage

N_CELLS, N_GENES, K = 80, 30, 3


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


# shared with the other modules fitting tiny tl.nmf results, at this module's sizes
_adata = functools.partial(poisson_gamma_adata, n_cells=N_CELLS, n_genes=N_GENES, k=K)


@pytest.fixture(scope="module")
def _fitted() -> ad.AnnData:
    adata = _adata()
    _quiet(tl.nmf, adata, K, random_state=0, max_iter=40, n_threads=1)
    return adata


@pytest.fixture
def fitted(_fitted) -> ad.AnnData:
    return _fitted.copy()


def _weights(adata, key: str = "nmf") -> np.ndarray:
    """The factor totals ``t`` (up to a scale) that the usages of ``adata``'s first cell
    weigh its factors by: ``usage / z`` over its first factor's."""
    ratio = adata.obsm[f"X_{key}_usage"][0] / adata.obsm[f"X_{key}"][0]
    return ratio / ratio[0]


def _genes_dropped(fitted, tmp_path, how: str) -> ad.AnnData:
    """``fitted`` with a third of its genes dropped after the fit, written to an ``.h5ad``
    and read back (in memory or backed)."""
    if how == "filter_genes":
        import scanpy as sc

        kept = fitted.copy()
        # the genes of fewer counts: sc.pp.filter_genes as a user runs it after the fit
        threshold = np.sort(np.asarray(kept.X.sum(axis=0)).ravel())[N_GENES // 3]
        sc.pp.filter_genes(kept, min_counts=threshold)
        assert 0 < kept.n_vars < N_GENES
    else:
        kept = fitted[:, N_GENES // 3 :].copy()
    path = tmp_path / "reference.h5ad"
    kept.write_h5ad(path)
    return ad.read_h5ad(path, backed="r" if how == "backed" else None)


@pytest.mark.parametrize("how", ["filter_genes", "subset", "backed"])
def test_projection_onto_reference_with_genes_dropped_keeps_its_usage_space(fitted, tmp_path, how):
    """New cells projected onto a reference whose genes were dropped after the fit (then
    saved and read back) get usages weighed by the fit's factor totals, as the reference's
    own cells' usages are (before: by the totals of the genes left)."""
    reference = _genes_dropped(fitted, tmp_path, how)
    new = _adata(seed=7, n_cells=30, prefix="n")
    _quiet(tl.project, new, reference)
    np.testing.assert_allclose(
        new.obsm["X_nmf_usage"], usage(new.obsm["X_nmf"], fitted.varm["NMF"]), rtol=1e-10
    )
    np.testing.assert_allclose(_weights(new), _weights(fitted), rtol=1e-10)


def test_reference_with_genes_dropped_joined_with_its_projection_is_one_fit(fitted):
    """The documented join of a reference with the cells projected onto it (the reference
    first, ``uns_merge="first"``, ``merge="first"``) is read as one fit after the
    reference's genes were cut to a subset (before: "not those of one fit ... fitted
    apart?" from `tl.fit_info` and every tool reading the cells)."""
    reference = fitted[:, N_GENES // 3 :].copy()
    new = _adata(seed=7, n_cells=30, prefix="n")
    _quiet(tl.project, new, reference)
    joined = ad.concat([reference, new], uns_merge="first", merge="first")
    assert tl.fit_info(joined)["obsm_key"] == "X_nmf"
    table = tl.top_genes(joined, 3)
    assert len(table) > 0


def test_fit_records_loading_totals_kept_through_files(fitted, tmp_path):
    """A fit records each factor's total loading over its genes, kept as it is by an
    ``.h5ad`` and a ``.zarr`` store; a reference read back projects the same bits."""
    expected = fitted.uns["nmf"]["loading_totals"]
    np.testing.assert_allclose(expected, fitted.varm["NMF"].sum(axis=0), rtol=1e-12)
    fitted.write_h5ad(tmp_path / "fit.h5ad")
    _quiet(fitted.write_zarr, tmp_path / "fit.zarr")  # anndata: zarr v2 to change
    in_memory = _adata(seed=7, n_cells=30, prefix="n")
    _quiet(tl.project, in_memory, fitted)
    for read in (ad.read_h5ad(tmp_path / "fit.h5ad"), ad.read_zarr(tmp_path / "fit.zarr")):
        np.testing.assert_array_equal(read.uns["nmf"]["loading_totals"], expected)
        new = _adata(seed=7, n_cells=30, prefix="n")
        _quiet(tl.project, new, read)
        np.testing.assert_array_equal(new.obsm["X_nmf_usage"], in_memory.obsm["X_nmf_usage"])


@pytest.mark.parametrize("damaged", [["a", "b", "c"], [1.0, 2.0], [1.0, np.nan, 2.0]])
def test_damaged_loading_totals_refused_by_project_by_name(fitted, damaged):
    """An edited ``loading_totals`` is refused by name, the projection not written (before:
    not read, the usages weighed by the genes held)."""
    fitted.uns["nmf"]["loading_totals"] = damaged
    new = _adata(seed=7, n_cells=30, prefix="n")
    with pytest.raises(ValueError, match=r"adata_ref\.uns\['nmf'\]\['loading_totals'\] is damaged"):
        _quiet(tl.project, new, fitted)
    assert "X_nmf" not in new.obsm and "nmf_projection" not in new.uns


def test_record_without_loading_totals_still_projects(fitted):
    """Guard (passes on the code before too): a record written before ``loading_totals``
    was kept projects as before, weighing the usages by the genes the reference holds."""
    fitted.uns["nmf"].pop("loading_totals", None)
    new = _adata(seed=7, n_cells=30, prefix="n")
    _quiet(tl.project, new, fitted)
    np.testing.assert_allclose(
        new.obsm["X_nmf_usage"], usage(new.obsm["X_nmf"], fitted.varm["NMF"]), rtol=1e-10
    )
