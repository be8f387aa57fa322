"""Defects of `vbsnmf.pl` found by the thirtieth hostile pass, each pinned by the case that
showed it: a UMAP colour naming a gene that other genes share, a `pathlib.Path` ``save``
naming an existing folder, a dot plot's dendrogram of a view, ``use_raw=True`` without
``.raw``, a groupby column named as a gene, a fit record's edited ``elbo_iter``, a string
``save`` naming a format scanpy does not know, and expression in sparse dask chunks."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from vbsnmf import pl


@pytest.fixture(scope="module")
def fitted(plotted_fit):
    """`conftest.plotted_fit`: pbmc_tiny cells with a K=3 fit, an embedding and clusters."""
    return plotted_fit


def _shared_name(adata) -> str:
    """Give the second gene of ``adata`` the first one's name (anndata warns, and keeps
    them); return that name."""
    names = list(adata.var_names)
    names[1] = names[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.var_names = pd.Index(names)
    return names[0]


def test_umap_refuses_a_gene_colour_that_several_genes_share(fitted):
    # scanpy coloured by both genes' values, one per cell per gene, and failed with a bare
    # IndexError ("index 399 is out of bounds for axis 0 with size 200") after the graph
    # and the UMAP
    adata = fitted.copy()
    del adata.obsm["X_umap"]
    name = _shared_name(adata)
    with pytest.raises(ValueError, match=rf"color '{name}': a name several genes of adata\.var"):
        pl.umap(adata, color=name, show=False)
    assert "X_umap" not in adata.obsm  # refused before the work
    assert "neighbors" not in adata.uns


def test_umap_refuses_a_gene_colour_that_several_genes_of_raw_share(fitted):
    # scanpy colours by the genes of .raw when adata has one: their names are checked
    adata = fitted.copy()
    raw = adata.copy()
    name = _shared_name(raw)
    adata.raw = raw
    with pytest.raises(ValueError, match=r"adata\.raw\.var_names share.*raw\.var_names_make_uni"):
        pl.umap(adata, color=name, show=False)


def test_umap_draws_a_unique_gene_beside_shared_names(fitted):
    """Guard (passes on the base code too): names shared by other genes do not stop a
    colour by a gene of its own name."""
    adata = fitted.copy()
    _shared_name(adata)
    gene = adata.var_names[5]
    axes = pl.umap(adata, color=gene, show=False)
    assert axes.get_title() == f"UMAP of NMF usages: {gene}"


@pytest.mark.parametrize("plot", ["elbo", "factors"])
def test_save_path_naming_an_existing_folder_is_refused(fitted, tmp_path, plot):
    # Path("figures"), a folder: the figure was written beside it as figures.png
    folder = tmp_path / "figures"
    folder.mkdir()
    with pytest.raises(ValueError, match="names a folder, not a figure file"):
        getattr(pl, plot)(fitted, show=False, save=folder)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["figures"]
    assert not any(folder.iterdir())


def test_save_path_without_suffix_still_gets_png(fitted, tmp_path, monkeypatch):
    """Guard (passes on the base code too): a name without a suffix that is no folder is
    written as matplotlib names it, with ``.png``."""
    monkeypatch.chdir(tmp_path)
    pl.elbo(fitted, show=False, save=Path("trace"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["trace.png"]


def test_top_genes_dendrogram_of_a_view(fitted, tmp_path):
    # scanpy stored the dendrogram into the view, which anndata made its own object, and
    # read it back from the view: a bare KeyError 'dendrogram_cluster'. The fit read back
    # from a file, as a user's comes (a copy made in memory happened to pass).
    fitted.write_h5ad(tmp_path / "fit.h5ad")
    adata = ad.read_h5ad(tmp_path / "fit.h5ad")
    view = adata[:150]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = pl.top_genes(view, "cluster", n_genes=2, dendrogram=True, show=False)
    assert "group_extra_ax" in axes  # the dendrogram's panel
    assert "dendrogram_cluster" in view.uns  # stored where scanpy stores it
    assert "dendrogram_cluster" not in adata.uns  # not into the AnnData viewed


def test_top_genes_dendrogram_of_a_backed_view_is_refused(fitted, tmp_path):
    # scanpy's "To copy an AnnData object in backed mode, pass a filename" named no way out
    fitted.write_h5ad(tmp_path / "fit.h5ad")
    adata = ad.read_h5ad(tmp_path / "fit.h5ad", backed="r")
    try:
        with pytest.raises(ValueError, match=r"view of a backed AnnData.*\.to_memory\(\)"):
            pl.top_genes(adata[:150], "cluster", n_genes=2, dendrogram=True, show=False)
    finally:
        adata.file.close()


def test_top_genes_use_raw_without_raw_is_refused(fitted):
    # scanpy's own error was a bare AttributeError: 'NoneType' object has no attribute 'var'
    assert fitted.raw is None
    with pytest.raises(ValueError, match=r"use_raw=True shows the expression of adata\.raw"):
        pl.top_genes(fitted, "cluster", n_genes=2, use_raw=True, show=False)


@pytest.mark.parametrize("reads", ["X", "raw", "gene_symbols"])
def test_top_genes_refuses_a_groupby_column_named_as_a_gene(fitted, reads):
    # scanpy's bare KeyError "The key ... is found in both adata.obs and adata.var_names",
    # also for a gene not shown; scanpy looks names up where it reads the genes
    adata = fitted.copy()
    options = {}
    if reads == "raw":
        adata.raw = adata.copy()  # the genes of .raw are adata's
    if reads == "gene_symbols":
        adata.var["symbol"] = [f"sym{index}" for index in range(adata.n_vars)]
        options["gene_symbols"] = "symbol"
    name = "sym7" if reads == "gene_symbols" else adata.var_names[7]
    adata.obs[name] = adata.obs["cluster"]
    with pytest.raises(ValueError, match=rf"groupby '{name}': a column of adata\.obs and the"):
        pl.top_genes(adata, name, n_genes=2, show=False, **options)


def test_top_genes_groupby_beside_genes_of_other_names(fitted):
    """Guard (passes on the base code too): a groupby column named as no gene is drawn,
    with or without gene symbols."""
    adata = fitted.copy()
    adata.var["symbol"] = [f"sym{index}" for index in range(adata.n_vars)]
    axes = pl.top_genes(adata, "cluster", n_genes=2, gene_symbols="symbol", show=False)
    labels = [label.get_text() for label in axes["mainplot_ax"].get_xticklabels()]
    assert labels and all(label.startswith("sym") for label in labels)


@pytest.mark.parametrize(
    "edit",
    [
        lambda count: ["a"] * count,
        lambda count: np.arange(count) + 0.5,
        lambda count: np.r_[np.nan, np.arange(1, count)],
    ],
    ids=["text", "fractions", "nan"],
)
def test_elbo_refuses_an_edited_elbo_iter(fitted, edit):
    # text: numpy's "invalid literal for int() with base 10"; fractions and NaN were cast
    # to iterations the fit never ran (0.5 to 0, NaN to -2**63) and drawn there
    adata = fitted.copy()
    adata.uns["nmf"]["elbo_iter"] = edit(len(adata.uns["nmf"]["elbo_trace"]))
    with pytest.raises(ValueError, match=r"\['elbo_iter'\] is damaged .*iteration numbers"):
        pl.elbo(adata, show=False)


def test_elbo_draws_whole_iterations_of_any_dtype(fitted):
    """Guard (passes on the base code too): iterations stored as whole floats (another
    writer's conversion) are drawn where they say."""
    adata = fitted.copy()
    count = len(adata.uns["nmf"]["elbo_trace"])
    adata.uns["nmf"]["elbo_iter"] = np.arange(2, 2 * count + 1, 2, dtype=np.float64)
    axes = pl.elbo(adata, show=False)
    assert list(axes[0].lines[0].get_xdata()) == list(range(2, 2 * count + 1, 2))


@pytest.fixture
def figdir(tmp_path, monkeypatch):
    """``sc.settings.figdir`` set to a fresh folder for the test (and the format of its
    figures to scanpy's default, PDF), both put back after it."""
    import scanpy as sc

    before = sc.settings.figdir, sc.settings.file_format_figs
    sc.settings.figdir, sc.settings.file_format_figs = tmp_path, "pdf"
    yield tmp_path
    sc.settings.figdir, sc.settings.file_format_figs = before


@pytest.mark.parametrize(
    ("save", "written", "magic"),
    [
        ("_trace.jpg", "elbo_trace.jpg", b"\xff\xd8\xff"),
        ("_trace.PNG", "elbo_trace.PNG", b"\x89PNG"),
        (".jpg", "elbo.jpg", b"\xff\xd8\xff"),
    ],
)
def test_save_string_suffix_chooses_any_format(fitted, figdir, save, written, magic):
    # scanpy knows .svg, .pdf and .png only, in lower case: "_trace.jpg" was written as
    # a PDF named elbo_trace.jpg.pdf, where the docstring said the suffix chose the format
    pl.elbo(fitted, show=False, save=save)
    assert [path.name for path in figdir.iterdir()] == [written]
    assert (figdir / written).read_bytes()[: len(magic)] == magic


@pytest.mark.parametrize(
    ("save", "written"),
    [("_trace.svg", "elbo_trace.svg"), ("_v1.2", "elbo_v1.2.pdf"), (True, "elbo.pdf")],
)
def test_save_string_as_scanpy_names_it(fitted, figdir, save, written):
    """Guard (passes on the base code too): scanpy's own suffixes, a suffix that is no
    format (kept in the name, the format scanpy's default) and ``save=True``."""
    pl.elbo(fitted, show=False, save=save)
    assert [path.name for path in figdir.iterdir()] == [written]


def test_save_string_pgf_without_tex_is_refused_before_drawing(fitted, figdir, monkeypatch):
    # now that ".pgf" is the format, not a part of a PDF's name, its TeX is checked first
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match=r"a \.pgf figure needs"):
        pl.elbo(fitted, show=False, save="_trace.pgf")
    assert not any(figdir.iterdir())


def _lazy_sparse(matrix):
    """``matrix`` as a dask array of sparse chunks, as anndata's ``read_elem_lazy`` reads
    a sparse X (README's Dask section)."""
    import dask.array as da

    return da.from_array(matrix, chunks=(50, -1))


@pytest.mark.parametrize("where", ["X", "layer"])
def test_top_genes_refuses_expression_of_sparse_dask_chunks(fitted, where):
    # pandas' bare TypeError "len() of unsized object" from inside scanpy's obs_df
    pytest.importorskip("dask.array")
    adata = fitted.copy()
    options = {}
    if where == "X":
        adata.X = _lazy_sparse(adata.X)
        named = r"adata\.X"
    else:
        adata.layers["counts"] = _lazy_sparse(adata.X)
        options["layer"] = "counts"
        named = r"adata\.layers\['counts'\]"
    with pytest.raises(ValueError, match=rf"{named} is a dask array of sparse chunks.*to_memory"):
        pl.top_genes(adata, "cluster", n_genes=2, show=False, **options)


def test_umap_refuses_a_gene_colour_of_sparse_dask_chunks(fitted):
    # scipy's bare "'csr_matrix' object has no attribute 'item'", after the graph and UMAP
    pytest.importorskip("dask.array")
    adata = fitted.copy()
    del adata.obsm["X_umap"]
    adata.X = _lazy_sparse(adata.X)
    with pytest.raises(ValueError, match=r"adata\.X is a dask array of sparse chunks"):
        pl.umap(adata, color=adata.var_names[3], show=False)
    assert "X_umap" not in adata.obsm


def test_plots_read_dense_dask_chunks_and_need_no_expression(fitted):
    """Guard (passes on the base code too): dense dask chunks scanpy reads, and a UMAP
    coloured by an .obs column reads no expression."""
    da = pytest.importorskip("dask.array")
    adata = fitted.copy()
    adata.X = da.from_array(adata.X.toarray(), chunks=(50, -1))
    assert "mainplot_ax" in pl.top_genes(adata, "cluster", n_genes=2, show=False)
    sparse = fitted.copy()
    sparse.X = _lazy_sparse(sparse.X)
    assert pl.umap(sparse, color="cluster", show=False).get_title().endswith("cluster")


def test_top_genes_stored_dendrogram_of_a_backed_view(fitted, tmp_path):
    """Guard (passes on the base code too): a dendrogram stored beforehand is only read,
    so a view of a backed AnnData, which cannot store one, draws it."""
    import scanpy as sc

    stored = fitted.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.dendrogram(stored, "cluster", use_rep="X_nmf")
    stored.write_h5ad(tmp_path / "fit.h5ad")
    adata = ad.read_h5ad(tmp_path / "fit.h5ad", backed="r")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = pl.top_genes(adata[:150], "cluster", n_genes=2, dendrogram=True, show=False)
        assert "group_extra_ax" in axes
    finally:
        adata.file.close()


def test_save_path_in_a_folder_that_is_a_file(fitted, tmp_path):
    # the error said the folder "does not exist", naming a file the user can see
    notes = tmp_path / "notes.txt"
    notes.write_text("kept")
    with pytest.raises(NotADirectoryError, match=r"for trace\.png is a file, not a folder"):
        pl.elbo(fitted, show=False, save=notes / "trace.png")
    assert notes.read_text() == "kept"
    with pytest.raises(FileNotFoundError, match="does not exist"):  # a guard: truly missing
        pl.elbo(fitted, show=False, save=tmp_path / "missing" / "trace.png")


def test_factors_mask_obs_names_a_column_of_adata(fitted):
    # scanpy looked the column up in the frame of the factor panels, and said "Did not
    # find `adata.obs['keep']`" of a column adata has
    adata = fitted.copy()
    adata.obs["keep"] = np.arange(adata.n_obs) % 3 == 0
    by_array = pl.factors(adata, mask_obs=adata.obs["keep"].to_numpy(), show=False)
    by_name = pl.factors(adata, mask_obs="keep", show=False)
    assert len(by_name) == len(by_array)
    for named, given in zip(by_name, by_array, strict=True):
        drawn = [
            (one.get_offsets(), other.get_offsets())
            for one, other in zip(named.collections, given.collections, strict=True)
        ]
        assert drawn and all(np.array_equal(*pair) for pair in drawn)
    with pytest.raises(KeyError, match=r"adata\.obs has no column 'nope' \(mask_obs=\)"):
        pl.factors(adata, mask_obs="nope", show=False)
