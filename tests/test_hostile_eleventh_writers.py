"""Defects of the writers found by the eleventh hostile pass: the factor tables replaced one
at a time (a failure left two fits' tables), names with a carriage return that split a row,
a figure path without a suffix saved as '.tmp', and a damaged bundled data set reported by
pandas' bare KeyError or as an unknown name."""

from __future__ import annotations

import contextlib
import gzip
import shutil
import signal
import warnings
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

import vbsnmf
import vbsnmf.datasets._load as load
import vbsnmf.io._write as write

matplotlib.use("Agg")

TABLES = ("cell_factors.tsv.gz", "gene_loadings.tsv.gz", "elbo.tsv")


def _fit(solver: str = "batch", obs_names=None, var_names=None) -> ad.AnnData:
    """A small fitted AnnData, its names ``obs_names`` and ``var_names`` if given."""
    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(1.0, size=(30, 12)).astype(np.float32))
    if obs_names is not None:
        adata.obs_names = obs_names
    if var_names is not None:
        adata.var_names = var_names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, 2, solver=solver, max_iter=3, random_state=0, n_threads=1)
    return adata


@pytest.fixture(scope="module")
def fitted() -> ad.AnnData:
    return _fit()


def _refitted(adata: ad.AnnData) -> ad.AnnData:
    """``adata`` with other results under the same key: another fit's tables."""
    other = adata.copy()
    other.obsm["X_nmf"] = other.obsm["X_nmf"] * 2
    other.varm["NMF"] = other.varm["NMF"] * 3
    other.uns["nmf"]["elbo_trace"] = np.asarray(other.uns["nmf"]["elbo_trace"]) - 1.0
    return other


def _contents(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` by name (temporaries included) with its bytes, decompressed
    (a gzip header holds the temporary's name, new at each write)."""
    return {
        path.name: gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        for path in folder.iterdir()
        if path.is_file()
    }


def test_a_target_that_cannot_be_written_replaces_no_table(fitted, tmp_path):
    """write_nmf_tables replaced each table as soon as it was written: with a folder named
    elbo.tsv (the last target) it failed after cell_factors.tsv.gz and
    gene_loadings.tsv.gz were already the new fit's, a folder of two fits' tables."""
    vbsnmf.io.write_nmf_tables(fitted, tmp_path)
    (tmp_path / "elbo.tsv").unlink()
    (tmp_path / "elbo.tsv").mkdir()
    before = _contents(tmp_path)
    with pytest.raises(IsADirectoryError, match=r"elbo\.tsv"):
        vbsnmf.io.write_nmf_tables(_refitted(fitted), tmp_path)
    assert _contents(tmp_path) == before


@contextlib.contextmanager
def _interrupting(monkeypatch, table: str, *, when: str):
    """``atomic_file`` of `write_nmf_tables` with a Ctrl-C (a real SIGINT) sent as the
    temporary file of ``table`` is made (``when="made"``) or once it is complete
    (``when="complete"``)."""
    real = write.atomic_file

    @contextlib.contextmanager
    def interrupted(target, **options):
        with real(target, **options) as temporary:
            if Path(target).name == table and when == "made":
                signal.raise_signal(signal.SIGINT)
            yield temporary
            if Path(target).name == table and when == "complete":
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(write, "atomic_file", interrupted)
    yield


@pytest.mark.parametrize(
    ("table", "when", "kept"),
    [("gene_loadings.tsv.gz", "made", "old"), ("elbo.tsv", "complete", "new")],
)
def test_ctrl_c_leaves_the_tables_of_one_fit(fitted, tmp_path, monkeypatch, table, when, kept):
    """Ctrl-C between the tables (as the gene loadings began, or as the ELBO trace was
    complete) left the cell factors, or both factor tables, of the new fit beside the
    earlier fit's others. Now the earlier set stays whole when the interrupt comes before
    the renames, and one that comes during them is raised once all three are in place."""
    new_fit = _refitted(fitted)
    vbsnmf.io.write_nmf_tables(new_fit, tmp_path)
    new = _contents(tmp_path)
    vbsnmf.io.write_nmf_tables(fitted, tmp_path)
    old = _contents(tmp_path)
    assert old != new
    with _interrupting(monkeypatch, table, when=when), pytest.raises(KeyboardInterrupt):
        vbsnmf.io.write_nmf_tables(new_fit, tmp_path)
    assert _contents(tmp_path) == {"old": old, "new": new}[kept]


def test_a_classical_fit_over_a_variational_one_warns_of_the_old_trace(fitted, tmp_path):
    """A classical fit's tables written where a variational fit's were left its elbo.tsv
    beside the new loss.tsv without a word: a trace that looked like the new fit's. It is
    kept (it may be the user's own file) with a warning naming it."""
    vbsnmf.io.write_nmf_tables(fitted, tmp_path)
    trace = (tmp_path / "elbo.tsv").read_bytes()
    with pytest.warns(UserWarning, match=r"elbo\.tsv is left from an earlier fit"):
        written = vbsnmf.io.write_nmf_tables(_fit("mu"), tmp_path)
    assert [path.name for path in written][-1] == "loss.tsv"
    assert (tmp_path / "elbo.tsv").read_bytes() == trace


def test_names_with_a_carriage_return_read_back_as_written(tmp_path):
    """A '\\r' in a cell or gene name was written unquoted (pandas' to_csv quotes only the
    tab, the quote and '\\n' before Python 3.11.9), and the tables read back with a row
    more, the name cut in two. Every name with a tab, a line break or a quote is quoted;
    the others are written as pandas writes them."""
    genes = ["cr\rgene", "tab\tgene", "nl\ngene", 'quote"gene', "crlf\r\ngene"]
    genes += [f"g{i}" for i in range(12 - len(genes))]
    adata = _fit(obs_names=["cr\rcell"] + [f"c{i}" for i in range(29)], var_names=genes)
    vbsnmf.io.write_nmf_tables(adata, tmp_path)
    for name, names, values in (
        ("gene_loadings.tsv.gz", adata.var_names, adata.varm["NMF"]),
        ("cell_factors.tsv.gz", adata.obs_names, adata.obsm["X_nmf"]),
    ):
        table = pd.read_csv(tmp_path / name, sep="\t", index_col=0)
        assert list(table.index) == list(names)
        np.testing.assert_allclose(table.to_numpy(), values, rtol=1e-5)
    ordinary = pd.DataFrame(adata.varm["NMF"], index=pd.Index(genes, name="gene"))
    ordinary.columns = ["factor_0", "factor_1"]
    lines = gzip.decompress((tmp_path / "gene_loadings.tsv.gz").read_bytes()).decode()
    plain = ordinary.iloc[5:].to_csv(sep="\t", float_format="%.6g").split("\n", 1)[1]
    assert lines.endswith(plain)


def test_a_figure_path_without_a_suffix_is_saved_as_matplotlib_saves_it(fitted, tmp_path):
    """save=Path("figure") failed with "Format 'tmp' is not supported": savefig took the
    format from atomic_file's temporary ('.figure.XXXX.tmp'). The default format is
    written, its suffix appended, as matplotlib's savefig("figure") does."""
    vbsnmf.pl.elbo(fitted, show=False, save=tmp_path / "figure")
    vbsnmf.pl.elbo(fitted, show=False, save=tmp_path / "upper.PDF")
    matplotlib.pyplot.close("all")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png", "upper.PDF"]
    assert (tmp_path / "figure.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "upper.PDF").read_bytes().startswith(b"%PDF")


def test_a_figure_path_of_an_unknown_format_is_refused_by_its_name(fitted, tmp_path):
    """save=Path("figure.xyz") raised matplotlib's "Format 'xyz' is not supported", naming
    neither the user's path nor the suffixes that work: a ValueError naming both, with
    nothing written."""
    with pytest.raises(ValueError, match=r"figure\.xyz: matplotlib writes no 'xyz' .*\.png"):
        vbsnmf.pl.elbo(fitted, show=False, save=tmp_path / "figure.xyz")
    matplotlib.pyplot.close("all")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def data_copy(tmp_path, monkeypatch) -> Path:
    """The bundled data sets copied to ``tmp_path`` and loaded from there."""
    data = tmp_path / "data"
    shutil.copytree(load._DATA / "pbmc_facs" / "test", data / "pbmc_facs" / "test")
    shutil.copytree(load._DATA / "pbmc_tiny_v3", data / "pbmc_tiny_v3")
    monkeypatch.setattr(load, "_DATA", data)
    return data


def test_a_damaged_cells_csv_is_a_read_error_naming_it(data_copy):
    """A cells.csv without its barcode column raised pandas' bare KeyError ("None of
    ['barcode'] are in the columns"), naming no file; one whose barcodes disagree with
    barcodes.tsv.gz raised a RuntimeError. Both are ReadErrors naming cells.csv."""
    cells = data_copy / "pbmc_facs" / "test" / "cells.csv"
    original = cells.read_text()
    cells.write_text("cell,type\nA,B\n")
    with pytest.raises(vbsnmf.io.ReadError, match=r"cells\.csv: lacks columns .*barcode"):
        vbsnmf.datasets.pbmc_facs(test=True)
    cells.write_text("\n".join(original.splitlines()[:-1]) + "\n")  # a cell fewer
    with pytest.raises(vbsnmf.io.ReadError, match=r"cells\.csv: its barcodes disagree"):
        vbsnmf.datasets.pbmc_facs(test=True)


def test_a_damaged_bundled_set_is_told_apart_from_an_unknown_name(data_copy):
    """A bundled data set without its matrix.mtx.gz was reported as "no bundled data set
    'pbmc_tiny_v3'", as if the name were wrong: a ReadError names the missing file, and an
    unknown name is a ValueError listing the bundled ones."""
    (data_copy / "pbmc_tiny_v3" / "matrix.mtx.gz").unlink()
    with pytest.raises(vbsnmf.io.ReadError, match=r"matrix\.mtx\.gz: missing: .* damaged"):
        vbsnmf.datasets.pbmc_tiny()
    with pytest.raises(ValueError, match=r"no bundled data set 'pbmc'; .*'pbmc_tiny_v3'"):
        vbsnmf.datasets.data_dir("pbmc")
