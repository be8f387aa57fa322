"""Thirty-ninth pass, what earlier passes left at the edges of `vbsnmf.tl` and `vbsnmf.pl`.

A record's refused replay called every setting it could not hold "(arrays)", also
``factor_mask`` given as a dict. The default ``min_share`` of a fit of five cells or fewer
was capped at 1, so a K = 1 fit's only factor, holding every fitted count, was called
inactive (and warned of); now the factor of the largest share is active there, and the
default of larger data is unchanged. ``pl.top_genes`` and ``pl.factors`` passed a keyword
argument none of them takes (``components=`` to ``pl.top_genes``) on to matplotlib, whose
``AttributeError`` named ``PathCollection.set()``; now a `TypeError` names the plot.
``tl.top_genes`` left an active factor with no qualifying gene out of its table without a
word, where ``pl.top_genes`` warned.
"""

from __future__ import annotations

import json
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import vbsnmf

NO_ACTIVE = "no factor is active"


def _adata(n_cells: int = 50, n_genes: int = 20, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1.0, 1.0, (n_cells, 3)) @ rng.gamma(1.0, 1.0, (3, n_genes))
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(rates).astype(np.float64)))
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    return adata


def _fit(adata, n_components, **params) -> list[str]:
    """``tl.nmf``'s warnings other than the iteration cap's."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vbsnmf.tl.nmf(adata, n_components, random_state=0, n_threads=1, **params)
    return [str(w.message) for w in caught if w.category is not vbsnmf.ConvergenceWarning]


def test_a_replay_refused_for_a_dict_factor_mask_does_not_call_it_an_array():
    """factor_mask as a dict ({"H": ...}) is unrecorded too; the refusal of a replay
    without it named it among "(arrays)"."""
    fitted = _adata()
    factor_mask = {"H": np.tile([1.0, 1.0, 0.0], (20, 1)).T}
    _fit(fitted, 3, solver="mu", max_iter=10, factor_mask=factor_mask)
    recorded = dict(fitted.uns["nmf"]["params"])
    assert list(recorded["unrecorded"]) == ["factor_mask"]
    with pytest.raises(ValueError, match="given factor_mask") as refused:
        vbsnmf.tl.nmf(_adata(), **recorded)
    assert "array" not in str(refused.value)
    assert "numbers, strings and booleans" in str(refused.value)


def _even_cells() -> ad.AnnData:
    """Four cells of about 150 counts each: five median cells' worth is more than all."""
    counts = np.random.default_rng(3).poisson(5.0, (4, 30)).astype(np.float64)
    return ad.AnnData(sp.csr_matrix(counts))


@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_a_k1_fit_of_four_cells_calls_its_only_factor_active(prior):
    """The default threshold of four cells (five typical cells' counts until the 40th
    pass, one since) was all the fitted counts: capped at 1, the only factor, which holds
    every count, was inactive."""
    adata = _even_cells()
    messages = _fit(adata, 1, max_iter=30, prior=prior)
    info = adata.uns["nmf"]
    assert float(info["factor_share"][0]) == 1.0
    assert np.asarray(info["active"]).tolist() == [True]
    assert info["min_share"] < 1.0
    assert not [m for m in messages if NO_ACTIVE in m], messages
    assert set(vbsnmf.tl.top_genes(adata).index.get_level_values("factor")) == {0}


def test_few_cells_the_recorded_threshold_marks_the_same_factors():
    """Of four cells and K = 3 five median cells' worth was all the fitted counts and the
    factor of the largest share alone active (the threshold the next share below it);
    since the 40th pass the default asks a quarter of the cells' worth, one median cell's
    here. The threshold recorded, as min_share, marks the same factors."""
    adata = _even_cells()
    messages = _fit(adata, 3, solver="mu", max_iter=30)
    info = adata.uns["nmf"]
    share = np.asarray(info["factor_share"])
    # independent: one median cell's fitted counts over all of them (no prior, no floor)
    fitted = adata.obsm["X_nmf"] @ adata.varm["NMF"].sum(axis=0)
    assert info["min_share"] == pytest.approx(np.median(fitted) / fitted.sum(), rel=1e-9)
    assert np.asarray(info["active"]).tolist() == (share > info["min_share"]).tolist()
    assert np.asarray(info["active"]).any()
    assert not [m for m in messages if NO_ACTIVE in m], messages
    again = _even_cells()
    _fit(again, 3, solver="mu", max_iter=30, min_share=float(info["min_share"]))
    np.testing.assert_array_equal(again.uns["nmf"]["active"], info["active"])


def test_the_default_threshold_of_more_cells_is_unchanged():
    """Guard (passes on the code before too): of 60 cells the default threshold is still
    five median cells' fitted counts over all of them (the learned prior's floor is 0)."""
    adata = _adata(60)
    _fit(adata, 3, max_iter=30)
    fitted = adata.obsm["X_nmf"] @ adata.varm["NMF"].sum(axis=0)
    info = adata.uns["nmf"]
    assert info["min_share"] == pytest.approx(5 * np.median(fitted) / fitted.sum(), rel=1e-9)
    share = np.asarray(info["factor_share"])
    np.testing.assert_array_equal(info["active"], share > info["min_share"])


@pytest.fixture
def _plotted():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adata = _adata(40)
    adata.obs["group"] = pd.Categorical(np.where(np.arange(40) < 20, "a", "b"))
    adata.obsm["X_umap"] = np.random.default_rng(1).normal(size=(40, 2))
    _fit(adata, 2, solver="mu", max_iter=30, min_share=0.0)
    yield adata
    plt.close("all")


@pytest.mark.parametrize(
    ("plot", "name"),
    [("top_genes", "components"), ("top_genes", "colour"), ("factors", "n_genes")],
)
def test_a_keyword_no_one_takes_is_a_type_error_naming_the_plot(_plotted, plot, name):
    """A keyword none of the plot, scanpy's plot and matplotlib's scatter takes failed in
    matplotlib ("PathCollection.set() got an unexpected keyword argument"), with the figure
    half drawn."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    args = ("group",) if plot == "top_genes" else ()
    expected = rf"vbsnmf\.pl\.{plot}\(\) got an unexpected keyword argument '{name}'"
    with pytest.raises(TypeError, match=expected):
        getattr(vbsnmf.pl, plot)(_plotted, *args, show=False, **{name: [0]})
    assert plt.get_fignums() == before


def test_the_keywords_scanpy_and_matplotlib_take_are_still_passed_on(_plotted):
    """Guard (passes on the code before too): dotplot's own (dot_max, color_map), its
    scatter's (linewidth, alpha) and embedding's (size, frameon, edgecolor) still draw."""
    axes = vbsnmf.pl.top_genes(
        _plotted, "group", show=False, dot_max=0.8, color_map="Reds", linewidth=0.5, alpha=0.9
    )
    assert "mainplot_ax" in axes
    drawn = vbsnmf.pl.factors(_plotted, show=False, size=20, frameon=False, edgecolor="k")
    assert len(drawn) == 2


def _one_programme_apart() -> ad.AnnData:
    """Factor 1 of a classical fit holds only genes of 10 counts each (see the 38th pass's
    test of pl.top_genes)."""
    rng = np.random.default_rng(0)
    counts = np.zeros((40, 20), dtype=np.float32)
    counts[:30, :10] = rng.poisson(4, (30, 10))
    counts[30:, 10:] = 1
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"c{i}" for i in range(40)]
    adata.var_names = [f"g{j}" for j in range(20)]
    adata.obs["group"] = pd.Categorical(np.where(np.arange(40) < 30, "a", "b"))
    _fit(adata, 2, solver="als", max_iter=200, min_share=0.0)
    return adata


def test_tl_top_genes_warns_of_an_active_factor_left_out_of_its_table():
    """An active factor none of whose genes reaches min_counts had no row, silently."""
    adata = _one_programme_apart()
    assert np.asarray(adata.uns["nmf"]["active"]).all()
    with pytest.warns(UserWarning, match="factor 1 left out of the table") as caught:
        table = vbsnmf.tl.top_genes(adata, min_counts=11)
    assert set(table.index.get_level_values("factor")) == {0}
    (warned,) = [str(w.message) for w in caught if "left out" in str(w.message)]
    assert "min_counts=11" in warned and "lower min_counts" in warned
    with warnings.catch_warnings():  # every factor listed: no warning
        warnings.simplefilter("error")
        vbsnmf.tl.top_genes(adata, min_counts=2)


def test_pl_top_genes_warns_once_of_the_dot_plot():
    """Guard (passes on the code before too): pl.top_genes, which now reads the table
    without tl.top_genes' warning, says it of the plot, once."""
    import matplotlib.pyplot as plt

    adata = _one_programme_apart()
    try:
        with pytest.warns(UserWarning) as caught:
            vbsnmf.pl.top_genes(adata, "group", min_counts=11, show=False)
        left_out = [str(w.message) for w in caught if "left out" in str(w.message)]
        assert len(left_out) == 1 and "left out of the dot plot" in left_out[0]
    finally:
        plt.close("all")


def test_cli_names_top_genes_tsv_for_an_active_factor_it_leaves_out(tmp_path, capsys):
    """The command line's top_genes.tsv (min_counts=2, no option) left out an active factor
    of genes seen once without a word; its warning names the file and the Python call."""
    import scipy.io

    from vbsnmf import cli

    rng = np.random.default_rng(0)
    counts = np.zeros((40, 40))
    counts[:10, :10] = rng.poisson(5, (10, 10))
    counts[10:, 10:] = np.eye(30)  # thirty genes seen once each, in cells of one count
    scipy.io.mmwrite(tmp_path / "x.mtx", sp.coo_matrix(counts))
    out = tmp_path / "out"
    argv = ["fit", str(tmp_path / "x.mtx"), "--cells-as-rows", "-k", "3", "-o", str(out)]
    assert cli.main([*argv, "--solver", "mu", "--max-iter", "200"]) == 0
    stderr = capsys.readouterr().err
    table = pd.read_csv(out / "top_genes.tsv", sep="\t")
    active = json.loads((out / "params.json").read_text())["active_factors"]
    left_out = sorted(set(active) - set(table["factor"]))
    assert left_out  # the case of the warning
    (line,) = [x for x in stderr.splitlines() if "left out of" in x]
    assert line.startswith("vbsnmf: warning: ")
    assert f"factor {left_out[0]} left out of top_genes.tsv" in line
    assert "min_counts=1) on result.h5ad" in line and "lower min_counts" not in line
