"""Defects of `vbsnmf.pl` found by the thirty-fourth hostile pass, against scanpy's plotting
conventions: ``sc.settings.autosave`` (the inner scanpy call saved and closed the figure),
a vector backend's canvas taken for every format matplotlib writes, names given as an
array or `pandas.Index` (which scanpy takes), and ``sc.settings.figdir`` naming a file
(scanpy's bare FileExistsError after the work). Guards say so in their docstrings."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from vbsnmf import pl


@pytest.fixture
def fitted(plotted_fit):
    """A copy of `conftest.plotted_fit` (200 cells, K=3, ``X_umap``, ``obs['cluster']``)."""
    return plotted_fit.copy()


_SETTINGS = ("figdir", "file_format_figs", "autosave")


@pytest.fixture
def figdir(tmp_path):
    """scanpy's figure folder in ``tmp_path``, PNG figures, autosave off; all put back
    (scanpy's settings are properties of its class, which monkeypatch cannot restore)."""
    before = {name: getattr(sc.settings, name) for name in _SETTINGS}
    sc.settings.figdir = tmp_path / "figures"
    sc.settings.file_format_figs = "png"
    sc.settings.autosave = False
    plt.close("all")
    yield tmp_path / "figures"
    plt.close("all")
    for name, value in before.items():
        setattr(sc.settings, name, value)


@pytest.fixture
def vector_backend():
    """pyplot under matplotlib's PDF backend (``MPLBACKEND=pdf``) for the test, then Agg."""
    plt.close("all")
    plt.switch_backend("pdf")
    yield
    plt.close("all")
    plt.switch_backend("Agg")


def _quiet(plot, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return plot(*args, **kwargs)


def test_autosave_factors_saves_once_and_returns_axes(fitted, figdir):
    # the inner sc.pl.embedding saved and closed the figure under autosave, and `_finish`
    # then refused it: "the axes are of a figure pyplot does not hold"
    sc.settings.autosave = True
    axes = _quiet(pl.factors, fitted, show=False)
    assert len(axes) == int(np.count_nonzero(fitted.uns["nmf"]["active"]))
    assert sorted(path.name for path in figdir.iterdir()) == ["umap.png"]
    assert plt.get_fignums() == []  # saved, then closed, as scanpy closes a saved figure


def test_autosave_umap_keeps_its_graph_and_saves_once(fitted, figdir):
    # pl.umap failed the same way, and put back what its graph and UMAP had stored
    sc.settings.autosave = True
    fitted.uns.pop("neighbors", None)
    axes = _quiet(pl.umap, fitted, show=False, n_neighbors=5)
    assert axes is not None
    assert "neighbors" in fitted.uns and "connectivities" in fitted.obsp
    assert sorted(path.name for path in figdir.iterdir()) == ["umap.png"]
    assert plt.get_fignums() == []


def test_autosave_top_genes_and_elbo_save_once(fitted, figdir):
    """Guard (passes on the base code too): the plots drawn by one scanpy call that does
    not save (`top_genes`' DotPlot) or by vbsnmf itself save once under autosave."""
    sc.settings.autosave = True
    _quiet(pl.top_genes, fitted, "cluster", show=False)
    _quiet(pl.elbo, fitted, show=False)
    assert sorted(path.name for path in figdir.iterdir()) == ["dotplot_.png", "elbo.png"]
    assert plt.get_fignums() == []


def test_vector_backend_path_in_another_format(fitted, tmp_path, vector_backend):
    # the PDF canvas writes only .pdf, and a .png that savefig writes was refused once the
    # figure was drawn ("matplotlib writes no 'png' files"), the figure left open
    output = tmp_path / "trace.png"
    _quiet(pl.elbo, fitted, show=False, save=output)
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []


def test_vector_backend_string_suffix_format(fitted, figdir, vector_backend):
    # a string's ".jpg", no format of the PDF canvas, was kept in the name and scanpy wrote
    # a PDF named elbo_x.jpg.pdf; under Agg it is the JPEG elbo_x.jpg
    _quiet(pl.elbo, fitted, show=False, save="_x.jpg")
    assert sorted(path.name for path in figdir.iterdir()) == ["elbo_x.jpg"]
    assert (figdir / "elbo_x.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_vector_backend_path_without_suffix_takes_the_canvas_format(
    fitted, tmp_path, vector_backend
):
    """Guard (passes on the base code too): a path without a suffix gets the format
    matplotlib's ``savefig`` gives it, the backend's own (``trace.pdf`` under PDF)."""
    _quiet(pl.elbo, fitted, show=False, save=tmp_path / "trace")
    assert (tmp_path / "trace.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize("names", [pd.Index, np.array], ids=["Index", "array"])
def test_top_genes_groupby_as_array_or_index(fitted, names):
    # "groupby must be a name or a non-empty list of names, got Index(['cluster'])":
    # scanpy's dot plot takes either
    axes = _quiet(pl.top_genes, fitted, names(["cluster"]), show=False)
    drawn = [label.get_text() for label in axes["mainplot_ax"].get_yticklabels()]
    assert drawn == list(fitted.obs["cluster"].cat.categories)


def test_umap_color_as_index(fitted):
    # color=adata.var_names[:2], which sc.pl.umap takes, was a TypeError
    genes = fitted.var_names[:2]
    axes = _quiet(pl.umap, fitted, color=genes, show=False, n_neighbors=5)
    assert isinstance(axes, list)
    assert [ax.get_title() for ax in axes] == [f"UMAP of NMF usages: {gene}" for gene in genes]


def test_names_refused_say_what_the_parameter_takes(fitted):
    """An array holding no names, or a 2-D one, is still a `TypeError` saying what the
    parameter takes (a guard: passes on the base code too); a `Series`, a column's values,
    is one saying to pass the column's name (its wording new)."""
    with pytest.raises(TypeError, match=r"groupby must be a name or a (non-empty )?list of names"):
        pl.top_genes(fitted, np.array([3]), show=False)
    with pytest.raises(TypeError, match="color must be a name or a non-empty list of names"):
        pl.umap(fitted, color=np.array([["cluster"]]), show=False)
    with pytest.raises(TypeError, match="color must be a name or a non-empty list of names"):
        pl.umap(fitted, color=pd.Index([]), show=False)
    # a column's values, a common slip: a TypeError on the base code too, now saying so
    with pytest.raises(TypeError, match=r"not a column's values .*groupby='cluster'"):
        pl.top_genes(fitted, fitted.obs["cluster"], show=False)


@pytest.mark.parametrize("save", [True, "_x.png"], ids=["True", "suffix"])
def test_figdir_a_file_refused_before_drawing(fitted, figdir, save):
    # scanpy's bare "FileExistsError: [Errno 17] File exists" came once the figure was
    # drawn, the figure left open in pyplot
    figdir.parent.mkdir(exist_ok=True)
    figdir.write_text("my notes")
    for plot in (
        lambda: pl.elbo(fitted, show=False, save=save),
        lambda: pl.factors(fitted, show=False, save=save),
        lambda: pl.top_genes(fitted, "cluster", show=False, save=save),
    ):
        with pytest.raises(NotADirectoryError, match=r"sc\.settings\.figdir .* is not a folder"):
            _quiet(plot)
        assert plt.get_fignums() == []
    assert figdir.read_text() == "my notes"


def test_figdir_under_a_file_refused_before_the_umap(fitted, figdir):
    # pl.umap computed its graph and UMAP (thrown away again) before scanpy's error; a
    # figdir below a file, and autosave with save=None, are refused the same way
    figdir.parent.mkdir(exist_ok=True)
    figdir.write_text("my notes")
    sc.settings.figdir = figdir / "sub"
    sc.settings.autosave = True
    fitted.uns.pop("neighbors", None)
    with pytest.raises(NotADirectoryError, match=r"figures is a file"):
        _quiet(pl.umap, fitted, show=False)
    assert "neighbors" not in fitted.uns
    assert plt.get_fignums() == []
    # a broken link as figdir, which scanpy's mkdir(exist_ok=True) cannot make either
    figdir.unlink()
    figdir.symlink_to(figdir.parent / "gone")
    sc.settings.figdir = figdir
    with pytest.raises(NotADirectoryError, match=r"figures is a broken link"):
        _quiet(pl.elbo, fitted, show=False, save=True)
    assert plt.get_fignums() == []


def test_figdir_checks_leave_other_saves_alone(fitted, figdir, tmp_path):
    """Guard (passes on the base code too): a missing (nested) figdir is still made by
    scanpy; save=False (numpy's too) and a `pathlib.Path` do not look at figdir."""
    nested = figdir / "a" / "b"
    sc.settings.figdir = nested
    _quiet(pl.elbo, fitted, show=False, save=True)
    assert (nested / "elbo.png").is_file()
    figdir.mkdir(exist_ok=True)
    (tmp_path / "file").write_text("x")
    sc.settings.figdir = tmp_path / "file"
    assert _quiet(pl.elbo, fitted, show=False, save=np.False_) is not None
    _quiet(pl.elbo, fitted, show=False, save=tmp_path / "trace.png")
    assert (tmp_path / "trace.png").is_file()
