"""Thirty-fourth hostile pass: a biologist's scanpy workflow end to end, as a tutorial reader
runs it (``sc.read_10x_mtx`` of a copy of pbmc_tiny_v3, counts kept in a layer while X is
log-normalised, highly variable genes, ``.raw``, the fit, the graph, plots, ``.h5ad`` round
trips, subsets and concatenations).

Defects, each test of them failing on the code before its fix:

- ``anndata.concat(..., uns_merge='first', merge='first')`` of two AnnData fitted apart (the
  merge the tools' own message advises for a reference and its projected cells) kept the
  first fit's record and gene side over the cells of both fits; `tl.top_genes`,
  `pl.factors`, `pl.umap`, `io.write_nmf_tables`, `tl.project` and a warm start read it as
  one fit without a word. The cells' usages tell the fits apart (a fit weighs every cell's
  factors by the same totals), so the tools now refuse it, saying to fit again.
- `tl.nmf` (and `tl.select_k`) with ``mask_var`` warned of cells without counts in the
  masked genes and advised ``sc.pp.filter_cells(adata, min_counts=1)``, which sums every
  gene and drops none of them: followed, the refit warned again. The warning now gives a
  line that keeps the other cells, over the fitted matrix and the masked genes.

The other tests are guards that pass on the code before the fixes too; each says so.
"""

from __future__ import annotations

import re
import shutil
import warnings

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import vbsnmf

matplotlib.use("Agg")
sc = pytest.importorskip("scanpy")

FIT = {"max_iter": 40, "random_state": 0}


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter's ConvergenceWarning, scanpy's notes
        return call(*args, **kwargs)


@pytest.fixture(scope="module")
def tutorial_cells(tmp_path_factory):
    """pbmc_tiny_v3 read by scanpy from a copy, counts in ``layers['counts']``, X
    log-normalised, the 200 most variable genes kept and every gene in ``.raw``."""
    folder = tmp_path_factory.mktemp("tenx") / "pbmc_tiny_v3"
    shutil.copytree(vbsnmf.datasets.data_dir("pbmc_tiny_v3"), folder)
    adata = sc.read_10x_mtx(folder)
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=200)
    adata.raw = adata
    return adata[:, adata.var["highly_variable"]].copy()


@pytest.fixture
def cells(tutorial_cells):
    return tutorial_cells.copy()


@pytest.fixture(scope="module")
def two_fits(tutorial_cells):
    """The tutorial's cells split in two, each fitted on its own (other seeds)."""
    first, second = tutorial_cells[:550].copy(), tutorial_cells[550:].copy()
    _quiet(vbsnmf.tl.nmf, first, 4, layer="counts", **FIT)
    _quiet(vbsnmf.tl.nmf, second, 4, layer="counts", **{**FIT, "random_state": 1})
    return first, second


def _concat_first(*pieces):
    return ad.concat(list(pieces), index_unique="-", uns_merge="first", merge="first")


# --- two fits concatenated under one record -----------------------------------------------


def _top_genes(adata, tmp_path):
    vbsnmf.tl.top_genes(adata)


def _factors(adata, tmp_path):
    vbsnmf.pl.factors(adata, basis="X_nmf_usage", show=False)


def _umap(adata, tmp_path):
    vbsnmf.pl.umap(adata, show=False)


def _tables(adata, tmp_path):
    (tmp_path / "tables").mkdir()
    vbsnmf.io.write_nmf_tables(adata, tmp_path / "tables")


def _warm_start(adata, tmp_path):
    vbsnmf.tl.nmf(adata, 4, layer="counts", warm_start=True, max_iter=2)


def _project(adata, tmp_path):
    new = adata[:50].copy()
    del new.uns["nmf"]
    vbsnmf.tl.project(new, adata, layer="counts")


@pytest.mark.parametrize(
    "tool", [_top_genes, _factors, _umap, _tables, _warm_start, _project], ids=lambda f: f.__name__
)
def test_concat_of_two_fits_under_the_first_record_is_refused(two_fits, tool, tmp_path):
    """Two AnnData fitted apart, joined with uns_merge='first' and merge='first': the first
    fit's record over both fits' cells was read as one fit by every tool. Refused now,
    naming the concat, nothing written; the advised refit then serves every tool."""
    both = _concat_first(*two_fits)
    record = both.uns["nmf"]
    usages = both.obsm["X_nmf_usage"].copy()
    with pytest.raises(ValueError, match=r"not those of one fit: in 5\d\d of the 1107 cells"):
        _quiet(tool, both, tmp_path)
    assert both.uns["nmf"] is record
    np.testing.assert_array_equal(both.obsm["X_nmf_usage"], usages)
    assert not (tmp_path / "tables").exists() or not any((tmp_path / "tables").iterdir())
    if tool is _top_genes:  # the advice: fit the concatenated AnnData again
        _quiet(vbsnmf.tl.nmf, both, 4, layer="counts", **FIT)
        assert len(vbsnmf.tl.top_genes(both)) > 0


def test_concat_message_names_the_merge_and_the_way_out(two_fits):
    """The refusal says what happened and what to do (fix of the concat above)."""
    both = _concat_first(*two_fits)
    with pytest.raises(ValueError) as caught:
        vbsnmf.tl.top_genes(both)
    message = str(caught.value)
    for said in ("anndata.concat", "uns_merge='first'", "vbsnmf.tl.nmf", "vbsnmf.tl.project"):
        assert said in message


def test_three_fits_concatenated_are_refused_whatever_the_order(two_fits, tutorial_cells):
    """Fails on the code before the fix: a third fit, first or last, and the second fit
    first, are refused as well (the usages' typical weighing is the majority's)."""
    third = tutorial_cells[:300].copy()
    _quiet(vbsnmf.tl.nmf, third, 4, layer="counts", **{**FIT, "random_state": 2})
    first, second = two_fits
    for pieces in ((first, second, third), (third, first, second), (second, first)):
        with pytest.raises(ValueError, match="not those of one fit"):
            vbsnmf.tl.top_genes(_concat_first(*pieces))


def test_usages_edited_apart_from_their_factors_are_refused(cells):
    """Fails on the code before the fix: usages reordered by hand without their factors (no
    fit stores them so) were drawn and ranked as a fit; now refused as not one fit's."""
    _quiet(vbsnmf.tl.nmf, cells, 4, layer="counts", **FIT)
    cells.obsm["X_nmf_usage"] = cells.obsm["X_nmf_usage"][:, ::-1].copy()
    with pytest.raises(ValueError, match="or were these arrays edited"):
        vbsnmf.pl.factors(cells, basis="X_nmf_usage", show=False)


def test_pieces_of_one_fit_joined_under_the_first_record_stay_usable(two_fits, tmp_path):
    """Guard (passes on both): cells of one fit cut and joined again with the merges of the
    refusal, and in another order, are one fit: the tools read them as the fit itself."""
    first, _ = two_fits
    joined = _concat_first(first[300:], first[:300])
    expected = vbsnmf.tl.top_genes(first)
    pd.testing.assert_frame_equal(vbsnmf.tl.top_genes(joined).sort_index(), expected.sort_index())
    _quiet(vbsnmf.tl.nmf, joined, 4, layer="counts", warm_start=True, max_iter=2)
    vbsnmf.io.write_nmf_tables(joined, tmp_path)
    assert (tmp_path / "cell_factors.tsv.gz").exists()


def test_reference_and_projected_cells_joined_stay_usable(two_fits):
    """Guard (passes on both): the route the concat message advises, the reference first
    and cells projected onto it (genes missing from the new cells too), reads as one fit;
    the projection's usages weigh the factors by the reference's totals."""
    first, second = two_fits
    new = second[:, 20:].copy()
    for name in list(new.obsm):
        del new.obsm[name]
    del new.uns["nmf"]
    _quiet(vbsnmf.tl.project, new, first, layer="counts")
    atlas = _concat_first(first, new)
    assert len(vbsnmf.tl.top_genes(atlas)) > 0
    vbsnmf.pl.factors(atlas, basis="X_nmf_usage", show=False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_fit_subset_by_cells_and_genes_stays_usable(cells, dtype):
    """Guard (passes on both): a fit (float32 or float64, the classical MU too) subset by
    cells and by genes afterwards, and stored sparse after an .h5ad round trip, is one fit:
    its usages are read, not refused (the check weighs factors without the gene side)."""
    _quiet(vbsnmf.tl.nmf, cells, 4, layer="counts", dtype=dtype, **FIT)
    part = cells[cells.obs_names[::3], cells.var_names[:120]].copy()
    vbsnmf.pl.factors(part, basis="X_nmf_usage", show=False)
    part.obsm["X_nmf"] = sp.csr_matrix(part.obsm["X_nmf"])
    assert len(vbsnmf.tl.top_genes(part)) > 0
    classic = _quiet(vbsnmf.tl.nmf, cells[:400], 4, layer="counts", solver="mu", copy=True, **FIT)
    assert len(vbsnmf.tl.top_genes(classic[::2])) > 0


# --- cells without counts in the masked genes ---------------------------------------------


def _empty_cell_warnings(call, *args, **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call(*args, **kwargs)
    return [str(w.message) for w in caught if "no counts in the fitted genes" in str(w.message)]


def _advised_line(message: str) -> str:
    found = re.search(r"keep the other cells with (adata = .*?\.copy\(\))", message)
    assert found, message
    return found.group(1)


@pytest.mark.parametrize(
    "source, mask_kind",
    [
        ({"layer": "counts"}, "column"),
        ({"layer": "counts"}, "array"),
        ({}, "column"),
        ({"use_raw": True}, "column"),
        ({"use_raw": True}, "array"),
    ],
    ids=["layer-column", "layer-array", "X-column", "raw-column", "raw-array"],
)
def test_masked_empty_cells_advice_drops_them(cells, source, mask_kind):
    """tl.nmf with a mask_var leaving cells without counts in its genes advised
    sc.pp.filter_cells(adata, min_counts=1), which sums every gene: followed, the refit
    warned again about the same cells. The line it gives now (run as written) leaves none,
    for a layer, X and .raw, a mask column and a mask array."""
    if not source:  # X as the counts, the tutorial's first step
        cells.X = cells.layers["counts"].copy()
    if "use_raw" in source:  # .raw of counts, its genes in another order (matched by name)
        order = cells.var_names[::-1]
        cells.raw = ad.AnnData(cells[:, order].layers["counts"], var=pd.DataFrame(index=order))
    cells.var["few"] = np.arange(cells.n_vars) < 10
    mask = cells.var["few"].to_numpy()
    mask_var = "few" if mask_kind == "column" else mask
    options = {**source, "mask_var": mask_var, "max_iter": 3, "copy": True}
    (message,) = _empty_cell_warnings(vbsnmf.tl.nmf, cells, 2, **options)
    assert "sc.pp.filter_cells(adata, min_counts=1)" not in message
    namespace = {"adata": cells, "np": np, "mask": mask}
    exec(_advised_line(message), namespace)  # the line as the user would paste it
    kept = namespace["adata"]
    assert 0 < kept.n_obs < cells.n_obs
    mask_var = "few" if mask_kind == "column" else kept.var["few"].to_numpy()
    options["mask_var"] = mask_var
    assert _empty_cell_warnings(vbsnmf.tl.nmf, kept, 2, **options) == []


def test_select_k_masked_empty_cells_advice_drops_them(cells):
    """As tl.nmf: tl.select_k's one warning about cells without counts in the masked genes
    gives the line that keeps the others (it advised sc.pp.filter_cells)."""
    cells.var["few"] = np.arange(cells.n_vars) < 10
    options = {"layer": "counts", "mask_var": "few", "max_iter": 3, "random_state": 0}
    (message,) = _empty_cell_warnings(vbsnmf.tl.select_k, cells.copy(), [2], **options)
    namespace = {"adata": cells, "np": np}
    exec(_advised_line(message), namespace)
    kept = namespace["adata"]
    assert _empty_cell_warnings(vbsnmf.tl.select_k, kept, [2], **options) == []


def test_unmasked_empty_cells_still_advise_filter_cells(cells):
    """Guard (passes on both): without mask_var, sc.pp.filter_cells(adata, min_counts=1) is
    still the advice, and it drops the cells (X log-normalised from the fitted layer)."""
    kept = sp.diags((np.arange(cells.n_obs) >= 3).astype(np.float32))
    cells.layers["counts"] = sp.csr_matrix(kept @ cells.layers["counts"])
    cells.X = sp.csr_matrix(kept @ cells.X)
    (message,) = _empty_cell_warnings(vbsnmf.tl.nmf, cells, 2, layer="counts", max_iter=3)
    assert message.endswith("drop them with sc.pp.filter_cells(adata, min_counts=1)")
    sc.pp.filter_cells(cells, min_counts=1)
    assert _empty_cell_warnings(vbsnmf.tl.nmf, cells, 2, layer="counts", max_iter=3) == []


# --- the tutorial's route, pinned ------------------------------------------------------------


def test_tutorial_fit_reads_the_counts_layer_not_x(cells):
    """Guard (passes on both): X log-normalised and subset to the variable genes, .raw
    log-normalised: X and .raw are refused naming layer='counts', and the fit of that layer
    records it, its gene totals equal to the layer's column sums."""
    for options in ({}, {"use_raw": True}):
        with pytest.raises(ValueError, match=r"appear to be in layer='counts'"):
            vbsnmf.tl.nmf(cells, 4, copy=True, **options)
    _quiet(vbsnmf.tl.nmf, cells, 4, layer="counts", **FIT)
    assert cells.uns["nmf"]["params"]["layer"] == "counts"
    totals = np.asarray(cells.layers["counts"].sum(axis=0)).ravel()
    np.testing.assert_array_equal(cells.var["nmf_total_counts"].to_numpy(), totals)


def test_tutorial_graph_plots_round_trip_and_subset(cells, tmp_path):
    """Guard (passes on both): the README's route on the tutorial's cells (neighbours on
    the square-root usages, Leiden when igraph is there, the plots), an .h5ad round
    trip keeping every table and record, a warm start continuing the read fit's trace, and
    a subset of cells re-plotted from a view."""
    _quiet(vbsnmf.tl.nmf, cells, 4, layer="counts", **FIT)
    # the README's graph, with scikit-learn's neighbours and Gaussian weights: umap-learn's
    # connectivities and sc.tl.umap compile with Numba for about 20 s in a fresh process
    # (tests/test_pl.py draws them); a stand-in embedding, as tests/conftest.py places one
    sc.pp.neighbors(cells, use_rep="X_nmf_sqrt_usage", transformer="sklearn", method="gauss")
    cells.obsm["X_umap"] = np.log1p(cells.obsm["X_nmf"][:, :2])
    groups = "leiden"
    try:
        sc.tl.leiden(cells, flavor="igraph", n_iterations=2, directed=False)
    except ImportError:  # igraph: the [tutorial] extra
        groups = "groups"
        cells.obs[groups] = pd.Categorical(np.arange(cells.n_obs) % 3).astype(str)
    table = vbsnmf.tl.top_genes(cells, n_genes=5)
    _quiet(vbsnmf.pl.factors, cells, basis="umap", show=False)
    _quiet(vbsnmf.pl.top_genes, cells, groups, show=False)
    vbsnmf.pl.elbo(cells, show=False)
    path = tmp_path / "fitted.h5ad"
    cells.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(vbsnmf.tl.top_genes(back, n_genes=5), table)
    trace = np.asarray(back.uns["nmf"]["elbo_trace"])
    np.testing.assert_array_equal(trace, cells.uns["nmf"]["elbo_trace"])
    _quiet(vbsnmf.tl.nmf, back, 4, layer="counts", warm_start=True, max_iter=3)
    np.testing.assert_array_equal(back.uns["nmf"]["elbo_trace"][: trace.size], trace)
    view = back[back.obs[groups] == back.obs[groups].iloc[0]]
    _quiet(vbsnmf.pl.factors, view, basis="umap", show=False)
    assert len(vbsnmf.tl.top_genes(view)) > 0
    matplotlib.pyplot.close("all")


def test_cell_arrays_stored_in_float16_stay_one_fit(two_fits):
    """A fit's cell factors and usages stored in float16 to save room are still one fit's
    (the agreement allowed follows the coarser dtype; read by the code before too), and two
    fits so stored and concatenated are refused (fails on the code before the fix)."""
    first, second = (fit.copy() for fit in two_fits)
    for fit in (first, second):
        for name in ("X_nmf", "X_nmf_usage"):
            fit.obsm[name] = fit.obsm[name].astype(np.float16)
    assert len(vbsnmf.tl.top_genes(first)) > 0
    with pytest.raises(ValueError, match="not those of one fit"):
        vbsnmf.tl.top_genes(_concat_first(first, second))
