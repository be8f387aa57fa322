"""Defects of `vbsnmf.pl` found by the twenty-fifth hostile pass, each pinned by the case
that showed it: usages or an embedding the factor panels cannot draw, an ELBO trace with
NaN, axes of several figures saved as one, an unchecked UMAP seed, a missing layer, a PGF
figure without TeX, a gene colour without ``adata.X``, and the key of a projection's
record."""

from __future__ import annotations

import warnings

import matplotlib
from cli_output import without_compile_notice

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import cli, pl, tl


@pytest.fixture(scope="module")
def fitted(plotted_fit):
    """`conftest.plotted_fit`: pbmc_tiny cells with a K=3 fit, an embedding and clusters."""
    return plotted_fit


@pytest.mark.parametrize("values", ["usage", "factors"])
@pytest.mark.parametrize("width", [2, 4])
def test_factors_refuses_cell_factors_of_another_width(fitted, values, width):
    # fewer columns than factors: numpy's bare IndexError; more: drawn without a word
    adata = fitted.copy()
    name = "X_nmf_usage" if values == "usage" else "X_nmf"
    stored = adata.obsm[name]
    adata.obsm[name] = np.hstack([stored, stored])[:, :width]
    with pytest.raises(ValueError, match=rf"obsm\['{name}'\] has shape \(200, {width}\)"):
        pl.factors(adata, values=values, show=False)


@pytest.mark.parametrize(
    "edit",
    [sp.csr_matrix, lambda embedding: embedding.astype(str)],
    ids=["sparse", "text"],
)
def test_factors_refuses_an_embedding_that_is_not_an_array_of_numbers(fitted, edit):
    # sparse: anndata's bare IndexError; text: drawn on category axes without a word
    adata = fitted.copy()
    adata.obsm["X_umap"] = edit(adata.obsm["X_umap"])
    with pytest.raises(ValueError, match=r"obsm\['X_umap'\] is not a 2-D embedding of numbers"):
        pl.factors(adata, show=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_factors_refuses_an_embedding_that_leaves_cells_out(fitted, tmp_path, bad):
    # matplotlib left the cells out of every panel without a word (all: an empty figure)
    adata = fitted.copy()
    adata.obsm["X_umap"] = adata.obsm["X_umap"].copy()
    adata.obsm["X_umap"][:50, 1] = bad
    output = tmp_path / "factors.png"
    with pytest.raises(ValueError, match="places 50 of the 200 cells at NaN or infinite"):
        pl.factors(adata, show=False, save=output)
    assert not output.exists()


def test_factors_still_draws_an_embedding_stored_as_a_data_frame(fitted):
    adata = fitted.copy()
    embedding = adata.obsm["X_umap"]
    adata.obsm["X_umap"] = pd.DataFrame(embedding, index=adata.obs_names, columns=["a", "b"])
    axes = pl.factors(adata, components=[1], show=False)
    drawn = np.asarray(axes[0].collections[0].get_offsets())  # scanpy draws by value
    np.testing.assert_allclose(np.sort(drawn, axis=0), np.sort(embedding, axis=0))


def test_factors_refuses_return_fig_whose_figure_came_back_in_a_list(fitted):
    with pytest.raises(TypeError, match="sets 'return_fig' itself"):
        pl.factors(fitted, show=False, return_fig=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_elbo_refuses_a_trace_that_is_not_finite(fitted, bad):
    adata = fitted.copy()
    trace = np.array(adata.uns["nmf"]["elbo_trace"], dtype=np.float64)
    trace[-1] = bad  # the final value: NaN or inf in every gap, the panel left blank
    adata.uns["nmf"] = {**adata.uns["nmf"], "elbo_trace": trace}
    with pytest.raises(ValueError, match=r"\['elbo_trace'\] holds NaN or infinite"):
        pl.elbo(adata, show=False)


def _k_selection(adata):
    table = pd.DataFrame(
        {"heldout_ll_per_count": [-2.0, -1.9], "heldout_se": [0.1, 0.1], "elbo": [-9.0, -8.0]}
        | {"n_active": [2, 3]},
        index=pd.Index([2, 3], name="k"),
    )
    selected = adata.copy()
    selected.uns["nmf_k_selection"] = {"table": table, "suggested_k": 3}
    return selected


def test_elbo_and_select_k_refuse_to_save_axes_of_several_figures(fitted, tmp_path):
    # the first axes' figure was written alone, the other panels left out of the file
    output = tmp_path / "elbo.png"
    two = [plt.subplots()[1], plt.subplots()[1]]
    with pytest.raises(ValueError, match="axes are of 2 figures"):
        pl.elbo(fitted, axes=two, show=False, save=output)
    three = [plt.subplots()[1] for _ in range(3)]
    with pytest.raises(ValueError, match="axes are of 3 figures"):
        pl.select_k(_k_selection(fitted), axes=three, show=False, save=tmp_path / "k.png")
    assert not list(tmp_path.iterdir())
    # drawn, not saved: the user's axes wherever they are
    assert pl.elbo(fitted, axes=two, show=False) is two
    np.testing.assert_array_equal(
        two[0].get_lines()[0].get_ydata(), fitted.uns["nmf"]["elbo_trace"]
    )


@pytest.mark.parametrize(
    ("seed", "error"),
    [
        (-1, ValueError),
        (2**32, ValueError),
        ("0", TypeError),
        (1.5, TypeError),
        (np.random.default_rng(0), TypeError),
        (True, TypeError),
    ],
)
def test_umap_checks_its_seed_before_any_work_and_keeps_a_view(fitted, seed, error):
    # numpy's or scikit-learn's bare error came from inside sc.pp.neighbors, once the view
    # had been made its own AnnData
    view = fitted[:60]
    with pytest.raises(error, match="random_state must be"):
        pl.umap(view, random_state=seed, show=False)
    assert view.is_view and "connectivities" not in view.obsp


def test_top_genes_names_a_layer_adata_lacks(fitted):
    # anndata's bare KeyError: 'counts'
    with pytest.raises(KeyError, match=r"adata\.layers has no 'counts'.*holds: none"):
        pl.top_genes(fitted, "cluster", layer="counts", show=False)


def test_a_pgf_figure_without_its_tex_is_refused_before_the_umap(fitted, tmp_path, monkeypatch):
    # matplotlib's bare RuntimeError came once the graph, the UMAP and the figure were made
    monkeypatch.setitem(matplotlib.rcParams, "pgf.texsystem", "lualatex")
    monkeypatch.setenv("PATH", str(tmp_path))  # no TeX on it
    adata = fitted.copy()
    with pytest.raises(ValueError, match=r"a \.pgf figure needs lualatex"):
        pl.umap(adata, show=False, save=tmp_path / "u.pgf")
    assert "connectivities" not in adata.obsp and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"a \.pgf figure needs lualatex"):
        pl.elbo(adata, show=False, save=tmp_path / "elbo.pgf")


def _without_x(adata):
    adata = adata.copy()
    adata.layers["counts"] = adata.X
    adata.X = None
    return adata


def test_umap_refuses_a_gene_colour_when_x_is_none_before_the_graph(fitted):
    # anndata's bare TypeError ("'NoneType' object is not subscriptable") after the UMAP
    adata = _without_x(fitted)
    gene = adata.var_names[0]
    with pytest.raises(ValueError, match=rf"color '{gene}': a gene.*adata\.X is None"):
        pl.umap(adata, color=["cluster", gene], show=False)
    assert "connectivities" not in adata.obsp
    # an .obs column is drawn; a numpy integer is a seed, as scanpy takes it
    assert pl.umap(adata, color="cluster", random_state=np.int64(1), show=False) is not None


def test_cli_umap_names_a_gene_colour_without_x(fitted, tmp_path, capsys):
    # the command said only "'NoneType' object is not subscriptable", after the UMAP
    result = tmp_path / "result.h5ad"
    _without_x(fitted).write_h5ad(result)
    gene = str(fitted.var_names[0])
    code = cli.main(["umap", str(result), "-o", str(tmp_path / "u.png"), "--color", gene])
    err = without_compile_notice(capsys.readouterr().err)
    assert code == 2 and err.count("\n") == 1, err
    assert "adata.X is None" in err and "NoneType" not in err
    assert not (tmp_path / "u.png").exists()


def test_cell_factor_plots_name_the_key_added_of_a_projections_record(fitted, tmp_path, capsys):
    # told to run vbsnmf.tl.nmf anew, where key="nmf" draws the projected cells
    new = vbsnmf.datasets.pbmc_tiny()[300:360][:, fitted.var_names].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.project(new, fitted)
    new.obsm["X_umap"] = np.log1p(new.obsm["X_nmf"][:, :2])
    with pytest.raises(KeyError, match=r"record of a projection.*key='nmf'"):
        pl.factors(new, key="nmf_projection", show=False)
    with pytest.raises(KeyError, match=r"record of a projection.*key='nmf'"):
        pl.umap(new, key="nmf_projection", show=False)
    assert len(pl.factors(new, key="nmf", show=False)) == int(fitted.uns["nmf"]["active"].sum())
    # the command said the file held no fit or projection under that key
    result = tmp_path / "projected.h5ad"
    new.write_h5ad(result)
    argv = ["umap", str(result), "-o", str(tmp_path / "u.png"), "--key", "nmf_projection"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "record of a projection" in err and err.endswith("--key nmf\n"), err
