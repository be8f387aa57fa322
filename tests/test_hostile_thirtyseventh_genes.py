"""Thirty-seventh hostile pass (second wave): the gene side of a fit joined from two fits.

Defect, each test failing on the code before its fix: ``anndata.concat([a, b], axis=1,
uns_merge="first")`` of two AnnData fitted apart (with ``merge="first"``, or the default
merge, which concatenates ``.varm`` along the genes) keeps ``a``'s record over the loadings
and Gamma parameters of both fits' genes. `tl.project`, `tl.top_genes`, `pl.top_genes`,
``tl.nmf(warm_start=True)`` and `io.write_nmf_tables` read ``b``'s genes as factors of
``a``'s fit without a word. The cell side had its guard (`check_cells_of_one_fit`); the
gene side now has one read from the record: a fit records the genes it fitted
(``n_genes``), which no subset of its genes outnumbers. Legitimate gene sides (subsets,
views, ``mask_var`` fits, files written and read back, the NaN rows an outer join pads in,
records written before ``n_genes`` was kept) are read as before.
"""

from __future__ import annotations

import re
import warnings

import anndata as ad
import matplotlib
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import tl

matplotlib.use("Agg")

_JOINED = re.compile(
    r"genes under the fit 'nmf' are not those of one fit: \d+ genes hold its loadings "
    r"\(adata(_ref)?\.varm\['NMF'\]\), and the fit fitted 30 genes "
    r"\(adata(_ref)?\.uns\['nmf'\]\['n_genes'\]\)"
)


def _full(seed=0, n_cells=120, n_genes=60):
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1, 2, (n_cells, 1)) * rng.gamma(0.5, 1, (1, n_genes))
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(rates).astype(np.float32)))
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    return adata


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _fitted_halves(solver="batch"):
    full = _full()
    a, b = full[:, :30].copy(), full[:, 30:].copy()
    extra = {"max_iter": 20} if solver == "batch" else {"max_iter": 50}
    _quiet(tl.nmf, a, 3, solver=solver, random_state=0, **extra)
    _quiet(tl.nmf, b, 3, solver=solver, random_state=1, **extra)
    return full, a, b


@pytest.fixture(scope="module")
def halves():
    return _fitted_halves()


def _joined(halves, merge="first"):
    _, a, b = halves
    return ad.concat([a, b], axis=1, uns_merge="first", merge=merge)


@pytest.mark.parametrize("merge", ["first", None])
def test_project_refuses_a_reference_joined_from_two_fits(halves, merge):
    joined = _joined(halves, merge)
    new = halves[0][:10].copy()
    with pytest.raises(ValueError, match=_JOINED):
        _quiet(tl.project, new, joined)
    assert "X_nmf" not in new.obsm and "nmf_projection" not in new.uns


def test_top_genes_refuses_genes_joined_from_two_fits(halves):
    with pytest.raises(ValueError, match=_JOINED):
        tl.top_genes(_joined(halves))


def test_pl_top_genes_refuses_genes_joined_from_two_fits(halves):
    joined = _joined(halves)
    joined.obs["group"] = np.where(np.arange(joined.n_obs) % 2, "x", "y")
    with pytest.raises(ValueError, match=_JOINED):
        vbsnmf.pl.top_genes(joined, "group", show=False)


def test_warm_start_refuses_genes_joined_from_two_fits(halves):
    joined = _joined(halves)
    before = joined.varm["nmf_gene_shape"].copy()
    with pytest.raises(ValueError, match=_JOINED):
        _quiet(tl.nmf, joined, 3, warm_start=True, max_iter=5)
    np.testing.assert_array_equal(joined.varm["nmf_gene_shape"], before)
    # the advised refit (without warm_start) replaces the joined gene side
    _quiet(tl.nmf, joined, 3, max_iter=5)
    assert joined.uns["nmf"]["n_genes"] == 60
    tl.top_genes(joined)


def test_write_nmf_tables_refuses_genes_joined_from_two_fits(halves, tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    with pytest.raises(ValueError, match=_JOINED):
        vbsnmf.io.write_nmf_tables(_joined(halves), folder)
    assert not any(folder.iterdir())


def test_classical_fits_joined_along_genes_are_refused():
    _, a, b = _fitted_halves(solver="mu")
    joined = ad.concat([a, b], axis=1, uns_merge="first", merge="first")
    with pytest.raises(ValueError, match=_JOINED):
        tl.top_genes(joined)


def test_a_fit_of_raw_joined_along_genes_is_refused_through_raw():
    full = _full()
    halves = []
    for genes, seed in ((slice(0, 30), 0), (slice(30, 60), 1)):
        part = full[:, genes].copy()
        part.raw = part
        _quiet(tl.nmf, part, 3, use_raw=True, max_iter=10, random_state=seed)
        halves.append(part.raw.to_adata())  # the raw genes, with the fit's gene side
        halves[-1].uns = part.uns
    joined = ad.concat(halves, axis=1, uns_merge="first", merge="first")
    with pytest.raises(ValueError, match=_JOINED):
        tl.top_genes(joined)


def test_a_damaged_n_genes_is_refused_naming_it(halves):
    adata = halves[1].copy()
    adata.uns["nmf"]["n_genes"] = "thirty"
    with pytest.raises(ValueError, match=r"adata\.uns\['nmf'\]\['n_genes'\] is damaged"):
        tl.top_genes(adata)


def test_legitimate_gene_sides_are_read_as_before(tmp_path):
    """A fit records the genes it fitted (those mask_var selects); its gene subsets, views,
    a file written and read back, the NaN rows of an outer join and a record written before
    n_genes was kept are read by every tool as before."""
    full = _full()
    full.var["highly_variable"] = np.arange(full.n_vars) % 3 != 0
    _quiet(tl.nmf, full, 3, mask_var="highly_variable", max_iter=20, random_state=0)
    assert full.uns["nmf"]["n_genes"] == 40
    new = _full(seed=1)[:8].copy()
    sides = {
        "itself": full,
        "view of genes": full[:, 5:50],
        "subset copy": full[:, ::2].copy(),
        "h5ad": None,
        "outer join": ad.concat(
            [full, ad.AnnData(np.ones((full.n_obs, 2), np.float32), obs=full.obs[[]])],
            axis=1,
            join="outer",
            merge="first",
            uns_merge="first",
        ),
    }
    full.write_h5ad(tmp_path / "fit.h5ad")
    sides["h5ad"] = ad.read_h5ad(tmp_path / "fit.h5ad")
    old = full.copy()
    del old.uns["nmf"]["n_genes"]
    sides["before n_genes"] = old
    for name, side in sides.items():
        _quiet(tl.project, new.copy(), side, max_iter=5)
        if name == "outer join":  # refused with its own message, as before
            with pytest.raises(ValueError, match=r"holds NaN or infinite values in 2 of"):
                tl.top_genes(side)
        else:
            assert not tl.top_genes(side).empty, name
    # an old record over a joined gene side is accepted, as before (nothing tells it)
    _, a, b = _fitted_halves()
    joined = ad.concat([a, b], axis=1, uns_merge="first", merge="first")
    del joined.uns["nmf"]["n_genes"]
    tl.top_genes(joined)
    # warm start of the file read back, and of the fit itself, continue as before
    _quiet(tl.nmf, sides["h5ad"], 3, mask_var="highly_variable", warm_start=True, max_iter=3)
    assert sides["h5ad"].uns["nmf"]["n_genes"] == 40
