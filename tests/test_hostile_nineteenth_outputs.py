"""The nineteenth hostile pass over what a biologist gets out of a fit (plots, tables,
writers): ``top_genes.tsv`` of ``vbsnmf fit`` rounded a gene's counts above 999,999
(``1.23457e+06``); nothing in OUTDIR's text files said which columns of the factor tables
are switched-off factors; `io.write_result` refused an ``.obs`` column mixing numbers and
text with h5py's bare "Can't implicitly convert non-string objects to strings", not
saying where; ``pl.top_genes(return_fig=True, save=path)`` wrote nothing and said nothing;
a figure saved to a path ignored ``sc.set_figure_params(dpi_save=...)`` (always 150 dpi);
``pl.factors`` of a one-factor fit (every usage 1) was refused; ``pl.umap`` computed
the neighbour graph and the UMAP before finding that its ``save`` path could not be
written; and ``pl.umap`` stored the UMAP, the graph or Leiden clusters over a fit made
with ``key_added="umap"`` (``"neighbors"``, ``"leiden"``), losing its cell factors or its
record, and replaced a user's own ``.obs['nmf_dominant_factor']`` without a word."""

from __future__ import annotations

import json
import warnings

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from PIL import Image

from vbsnmf import io, pl, tl
from vbsnmf.cli import main


def _adata(n_cells: int = 60, n_genes: int = 30, rank: int = 2, seed: int = 0) -> ad.AnnData:
    """Counts of ``rank`` programs, named cells and genes, two groups of cells."""
    rng = np.random.default_rng(seed)
    loadings = rng.gamma(0.5, 2.0, (n_genes, rank))
    factors = rng.gamma(1.0, 2.0, (n_cells, rank))
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(factors @ loadings.T).astype(np.float32)))
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.obs["group"] = pd.Categorical(np.where(np.arange(n_cells) % 2, "A", "B"))
    return adata


def _fitted(n_components: int = 2, **fit) -> ad.AnnData:
    adata = _adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few passes: not converged
        tl.nmf(adata, n_components, max_iter=10, n_threads=1, **fit)
    adata.obsm["X_umap"] = np.random.default_rng(1).normal(size=(adata.n_obs, 2))
    return adata


@pytest.fixture(scope="module")
def fitted():
    return _fitted()


def _fit_command(tmp_path, adata: ad.AnnData, *options: str) -> tuple:
    adata.write_h5ad(tmp_path / "in.h5ad")
    argv = ["fit", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "out"), "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, "--threads", "1", *options]) == 0
    return tmp_path / "out"


def test_top_genes_tsv_writes_counts_above_a_million_exactly(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(40, 12)).astype(np.float32)
    counts[:, 0] = 30_864
    counts[0, 0] += 7  # 1,234,567 counts: seven significant digits
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.var_names = [f"g{j}" for j in range(12)]
    out = _fit_command(tmp_path, adata, "-k", "2", "--max-iter", "5")
    text = (out / "top_genes.tsv").read_text()
    assert "e+06" not in text
    table = pd.read_csv(out / "top_genes.tsv", sep="\t")
    totals = counts.sum(axis=0, dtype=np.float64)
    expected = table["gene"].map(lambda gene: totals[int(gene[1:])])
    assert not table.empty and (table["total_counts"] == expected).all()
    assert table["total_counts"].dtype.kind == "i"
    assert (table.loc[table.gene == "g0", "total_counts"] == 1_234_567).all()


def test_params_json_names_the_active_factors_of_the_tables(tmp_path):
    out = _fit_command(tmp_path, _adata(), "-k", "6", "--max-iter", "60")
    summary = json.loads((out / "params.json").read_text())
    result = ad.read_h5ad(out / "result.h5ad")
    active = np.flatnonzero(result.uns["nmf"]["active"]).tolist()
    assert 0 < len(active) < 6  # two programs in the data: some of six factors are off
    assert summary["active_factors"] == active
    # the factors top_genes.tsv lists, and columns of the tables
    listed = sorted(pd.read_csv(out / "top_genes.tsv", sep="\t")["factor"].unique().tolist())
    assert listed == active
    header = pd.read_csv(out / "cell_factors.tsv.gz", sep="\t", nrows=0).columns
    assert all(f"factor_{factor}" in header for factor in summary["active_factors"])


def test_write_result_names_an_obs_column_it_cannot_store(tmp_path):
    adata = _adata(n_cells=6, n_genes=3)
    adata.obs["batch"] = [1, "a", 2, "b", 3, "c"]  # numbers and text in one column
    with pytest.raises(TypeError, match=r"cannot write .*out\.h5ad.*'batch'.*/obs"):
        io.write_result(adata, tmp_path / "out.h5ad")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


def test_write_result_lets_other_type_errors_through(tmp_path, monkeypatch):
    from vbsnmf.io import _write

    def fail(*args):
        raise TypeError("a bug of ours")

    monkeypatch.setattr(_write, "_write_result", fail)
    with pytest.raises(TypeError, match=r"^a bug of ours$"):
        io.write_result(_adata(n_cells=6, n_genes=3), tmp_path / "out.h5ad")


@pytest.mark.parametrize("save", ["path", True, ".png"])
def test_top_genes_refuses_save_with_return_fig(fitted, tmp_path, save):
    save = tmp_path / "dots.png" if save == "path" else save
    with pytest.raises(ValueError, match=r"return_fig=True.*save"):
        pl.top_genes(fitted, "group", return_fig=True, save=save)
    assert list(tmp_path.iterdir()) == []
    # without save, the DotPlot as before; it writes the path itself
    dot_plot = pl.top_genes(fitted, "group", return_fig=True)
    dot_plot.savefig(tmp_path / "dots.png")
    assert (tmp_path / "dots.png").stat().st_size > 0
    plt.close("all")


def test_a_figure_saved_to_a_path_has_the_resolution_scanpy_saves_at(fitted, tmp_path, monkeypatch):
    sizes = {}
    for dpi in (300, "figure"):  # "figure": matplotlib's default, saved at 150 as before
        monkeypatch.setitem(matplotlib.rcParams, "savefig.dpi", dpi)
        pl.elbo(fitted, show=False, save=tmp_path / f"path_{dpi}.png")
        sizes[dpi] = Image.open(tmp_path / f"path_{dpi}.png").size
    monkeypatch.setitem(matplotlib.rcParams, "savefig.dpi", 300)
    figdir = sc.settings.figdir
    sc.settings.figdir = tmp_path  # a property: monkeypatch cannot put it back
    try:
        pl.elbo(fitted, show=False, save="_scanpy.png")  # scanpy's rule: figdir/elbo_scanpy.png
    finally:
        sc.settings.figdir = figdir
    by_scanpy = Image.open(tmp_path / "elbo_scanpy.png").size
    assert abs(sizes[300][0] - by_scanpy[0]) <= 2 and abs(sizes[300][1] - by_scanpy[1]) <= 2
    assert sizes[300][0] == pytest.approx(2 * sizes["figure"][0], rel=0.01)
    plt.close("all")


def test_factors_of_a_one_factor_fit_draws_its_usages(tmp_path):
    adata = _fitted(n_components=1)
    np.testing.assert_allclose(adata.obsm["X_nmf_usage"], 1.0)  # one factor: all of it
    axes = pl.factors(adata, show=False)
    assert len(axes) == 1
    assert axes[0].collections[0].get_clim() == (0.0, 1.0)
    # the cell factors themselves vary, and keep their percentile scale
    axes = pl.factors(adata, values="factors", show=False)
    factors = adata.obsm["X_nmf"][:, 0]
    assert axes[0].collections[0].get_clim() == pytest.approx((0.0, np.percentile(factors, 99)))
    plt.close("all")


def test_factors_still_refuses_a_percentile_of_all_zeros(fitted):
    adata = fitted.copy()
    adata.obsm["X_nmf_usage"] = np.zeros_like(adata.obsm["X_nmf_usage"])
    with pytest.raises(ValueError, match=r"smallest drawn value here \(0\)"):
        pl.factors(adata, show=False)
    plt.close("all")


@pytest.mark.parametrize(
    ("name", "error"),
    [("missing/umap.png", FileNotFoundError), ("umap.xyz", ValueError), ("folder", None)],
)
def test_umap_checks_its_save_path_before_the_graph(fitted, tmp_path, monkeypatch, name, error):
    if error is None:  # a folder at the name (the figure name matplotlib gives "folder")
        (tmp_path / "folder.png").mkdir()
        error = IsADirectoryError
    adata = fitted.copy()
    computed = []
    monkeypatch.setattr(sc.pp, "neighbors", lambda *args, **kwds: computed.append(1))
    with pytest.raises(error):
        pl.umap(adata, show=False, save=tmp_path / name)
    assert computed == []
    assert "X_umap" in adata.obsm and "neighbors" not in adata.uns  # left as it was


def _earlier_version_keys(monkeypatch):
    """Let tl.nmf and tl.project store under scanpy's keys, as versions before the
    thirty-fifth pass did (they refuse them now): such results are still read."""
    from vbsnmf.tl import _stored

    monkeypatch.setattr(_stored, "_SCANPY_ENTRIES", {})


@pytest.mark.parametrize("key", ["umap", "neighbors"])
def test_umap_refuses_to_store_over_a_fit_under_its_keys(monkeypatch, key):
    _earlier_version_keys(monkeypatch)
    adata = _adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 2, max_iter=5, n_threads=1, key_added=key)
    factors = np.array(adata.obsm[f"X_{key}"])
    computed = []
    monkeypatch.setattr(sc.pp, "neighbors", lambda *args, **kwds: computed.append(1))
    # its own UMAP, and that of another fit in the same AnnData
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 2, max_iter=5, n_threads=1)
    for drawn in (key, "nmf"):
        with pytest.raises(ValueError, match=rf"overwrite .*adata\.uns\['{key}'\]"):
            pl.umap(adata, key=drawn, show=False)
    assert computed == []
    np.testing.assert_array_equal(adata.obsm[f"X_{key}"], factors)
    assert adata.uns[key]["obsm_key"] == f"X_{key}"


def test_umap_refuses_to_store_over_a_projection_under_key_umap(fitted, monkeypatch):
    _earlier_version_keys(monkeypatch)
    new = _adata(n_cells=20, seed=3)
    tl.project(new, fitted, key_added="umap")
    projected = np.array(new.obsm["X_umap"])
    with pytest.raises(ValueError, match=r"\.obsm\['X_umap'\].*adata\.uns\['umap_projection'\]"):
        pl.umap(new, key="umap", show=False)
    np.testing.assert_array_equal(new.obsm["X_umap"], projected)


def test_umap_with_leiden_refuses_to_store_over_a_fit_under_key_leiden(monkeypatch):
    _earlier_version_keys(monkeypatch)
    adata = _adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 2, max_iter=5, n_threads=1, key_added="leiden")
    computed = []
    monkeypatch.setattr(sc.pp, "neighbors", lambda *args, **kwds: computed.append(1))
    with pytest.raises(ValueError, match=r"\.uns\['leiden'\]"):
        pl.umap(adata, key="leiden", color="leiden", show=False)
    assert computed == [] and adata.uns["leiden"]["obsm_key"] == "X_leiden"
    # without Leiden clusters to compute, nothing of the fit's is touched: drawn as before
    monkeypatch.undo()
    axes = pl.umap(adata, key="leiden", show=False)
    assert axes is not None and adata.uns["leiden"]["obsm_key"] == "X_leiden"
    plt.close("all")


def test_umap_keeps_a_users_column_of_the_dominant_factors_name(fitted, monkeypatch):
    adata = fitted.copy()
    mine = np.asarray(adata.obsm["X_nmf"]).argmax(axis=1)  # the user's own, as integers
    adata.obs["nmf_dominant_factor"] = mine
    computed = []
    monkeypatch.setattr(sc.pp, "neighbors", lambda *args, **kwds: computed.append(1))
    with pytest.raises(ValueError, match=r"adata\.obs\['nmf_dominant_factor'\] holds values"):
        pl.umap(adata, show=False)
    assert computed == []
    np.testing.assert_array_equal(adata.obs["nmf_dominant_factor"].to_numpy(), mine)
    # coloured by it, as the user asks, it is drawn as it is
    monkeypatch.undo()
    pl.umap(adata, color="nmf_dominant_factor", show=False)
    np.testing.assert_array_equal(adata.obs["nmf_dominant_factor"].to_numpy(), mine)
    plt.close("all")


def test_umap_writes_its_own_dominant_factors_anew(fitted):
    adata = fitted.copy()
    pl.umap(adata, show=False)
    first = adata.obs["nmf_dominant_factor"].copy()
    usage = np.asarray(adata.obsm["X_nmf_usage"])
    adata.obsm["X_nmf_usage"] = usage[:, ::-1].copy()  # the factors' order reversed
    # with the factors they weigh, as a fit of that order stores them (usages alone
    # reversed are no fit's, and the tools refuse them)
    adata.obsm["X_nmf"] = np.asarray(adata.obsm["X_nmf"])[:, ::-1].copy()
    adata.obsm["X_nmf_sqrt_usage"] = np.sqrt(adata.obsm["X_nmf_usage"])
    pl.umap(adata, show=False)  # its own column, from the earlier call: replaced
    expected = [f"factor {factor}" for factor in usage[:, ::-1].argmax(axis=1)]
    assert adata.obs["nmf_dominant_factor"].astype(str).tolist() == expected
    assert not adata.obs["nmf_dominant_factor"].equals(first)
    plt.close("all")
