"""Command-line messages and progress found by the thirty-seventh hostile pass (second
wave): ``vbsnmf umap -o figure`` (no suffix) said only "unknown figure format ''"; the
colour refusals of `vbsnmf.pl.umap` that ``vbsnmf umap`` relays said "color 'x'" where
the user typed ``--color x``; a path with spaces was named bare ("the folder no dir for
o d does not exist"); the progress bar of a fit that converged early was left at the
fraction of ``--max-iter`` reached, as if cut short."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import numpy as np
import pytest
from cli_output import without_compile_notice
from simulated import poisson_adata

import vbsnmf
from vbsnmf import cli
from vbsnmf.io import ReadError, read_h5ad


def _counts(n_cells: int = 60, n_genes: int = 12) -> ad.AnnData:
    return poisson_adata(n_cells=n_cells, n_genes=n_genes)


@pytest.fixture(scope="module")
def fitted() -> ad.AnnData:
    """Counts with a K=2 fit under 'nmf' and an .obs column 'cluster'."""
    adata = _counts()
    adata.obs["cluster"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(adata, 2, max_iter=3, random_state=0, n_threads=1)
    return adata


def _run(argv, capsys, folder, monkeypatch):
    monkeypatch.chdir(folder)
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, without_compile_notice(err)


def _refused(argv, capsys, folder, monkeypatch) -> str:
    code, out, err = _run(argv, capsys, folder, monkeypatch)
    assert (code, out, err.count("\n")) == (cli.EXIT_USAGE, "", 1), err
    assert err.startswith("vbsnmf: error: ")
    return err.removeprefix("vbsnmf: error: ").rstrip("\n")


@pytest.mark.parametrize("name", ["figure", "figure."])
def test_umap_output_without_a_suffix_names_the_file_and_the_formats(
    name, fitted, tmp_path, capsys, monkeypatch
):
    # before: "figure: unknown figure format ''; use one of ...", naming an empty suffix
    fitted.write_h5ad(tmp_path / "result.h5ad")
    error = _refused(["umap", "result.h5ad", "-o", name], capsys, tmp_path, monkeypatch)
    assert error.startswith(f"-o {name} names no figure format: end the name in the suffix")
    assert ".pdf, " in error and ".png, " in error and ".svg, " in error
    assert error.endswith("e.g. figure.png")
    assert "''" not in error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["result.h5ad"]


def test_umap_output_naming_a_folder_says_it_is_one(fitted, tmp_path, capsys, monkeypatch):
    # before: "figures: unknown figure format ''", of a folder of figures
    fitted.write_h5ad(tmp_path / "result.h5ad")
    (tmp_path / "my figures").mkdir()
    error = _refused(["umap", "result.h5ad", "-o", "my figures"], capsys, tmp_path, monkeypatch)
    assert error == (
        "-o 'my figures' is a folder; name a figure file in it, e.g. 'my figures/umap.png'"
    )
    assert list((tmp_path / "my figures").iterdir()) == []


def test_umap_unknown_suffix_is_named_by_its_option(fitted, tmp_path, capsys, monkeypatch):
    # before: "u v.xyz: unknown figure format '.xyz'", the one figure message without -o
    fitted.write_h5ad(tmp_path / "result.h5ad")
    error = _refused(["umap", "result.h5ad", "-o", "u v.xyz"], capsys, tmp_path, monkeypatch)
    assert error.startswith("-o 'u v.xyz': unknown figure format '.xyz'; use one of .avif")


def test_relayed_colour_refusals_name_the_option(fitted, tmp_path, capsys, monkeypatch):
    # before: "result.h5ad: color 'cluster': ...", where the command's own refusal of an
    # unknown colour says "--color 'x' is neither ..."
    adata = fitted.copy()
    adata.uns["cluster_colors"] = 5
    adata.write_h5ad(tmp_path / "result.h5ad")
    argv = ["umap", "result.h5ad", "-o", "u.png", "--color", "cluster"]
    error = _refused(argv, capsys, tmp_path, monkeypatch)
    assert error.startswith("result.h5ad: --color 'cluster': adata.uns['cluster_colors'] is 5")

    adata = fitted.copy()
    adata.obs["g1"] = np.arange(adata.n_obs, dtype=float)  # a column named as a gene
    adata.write_h5ad(tmp_path / "both.h5ad")
    argv = ["umap", "both.h5ad", "-o", "u.png", "--color", "g1"]
    error = _refused(argv, capsys, tmp_path, monkeypatch)
    assert error.startswith("both.h5ad: --color 'g1': both a column of adata.obs and a gene")
    assert not (tmp_path / "u.png").exists()


def test_umap_paths_with_spaces_are_quoted(fitted, tmp_path, capsys, monkeypatch):
    # before: "the folder no dir for u.png does not exist", "sp ace.h5ad holds no NMF
    # fit ...": where the path ended was left to guess
    fitted.write_h5ad(tmp_path / "sp ace.h5ad")
    argv = ["umap", "sp ace.h5ad", "-o", "no dir/é.png"]
    error = _refused(argv, capsys, tmp_path, monkeypatch)
    assert error == "the folder 'no dir' for é.png does not exist"  # é needs no quotes
    error = _refused(
        ["umap", "sp ace.h5ad", "-o", "u.png", "--key", "other"], capsys, tmp_path, monkeypatch
    )
    assert error.startswith("'sp ace.h5ad' holds no NMF fit or projection under --key other")
    # a name without spaces is left as typed
    error = _refused(["umap", "sp ace.h5ad", "-o", "nodir/u.png"], capsys, tmp_path, monkeypatch)
    assert error == "the folder nodir for u.png does not exist"


def test_fit_paths_with_spaces_are_quoted(tmp_path, capsys, monkeypatch):
    # before: "no file.h5ad: no such file or directory", "the folder no dir for o d does
    # not exist", "sp ace already exists (use --force to replace it)"
    _counts().write_h5ad(tmp_path / "counts.h5ad")
    (tmp_path / "sp ace").mkdir()
    fit = ["-k", "2", "--max-iter", "2", "--threads", "1"]
    cases = {
        ("no file.h5ad", "out"): "'no file.h5ad': no such file or directory",
        ("counts.h5ad", "no dir/o d"): "the folder 'no dir' for 'o d' does not exist",
        ("counts.h5ad", "sp ace"): "'sp ace' already exists (use --force to replace it)",
        ("counts.h5ad", "it's"): None,  # a quote is quoted too, as a shell takes it back
    }
    for (source, outdir), expected in cases.items():
        if expected is None:
            (tmp_path / outdir).mkdir()
            expected = "'it'\"'\"'s' already exists (use --force to replace it)"
        error = _refused(["fit", source, *fit, "-o", outdir], capsys, tmp_path, monkeypatch)
        assert error == expected
    assert sorted(path.name for path in tmp_path.iterdir()) == ["counts.h5ad", "it's", "sp ace"]


def test_read_error_quotes_a_path_with_spaces(tmp_path):
    # the Python readers' ReadError, which the command relays: "/tmp/.../no file.h5ad: ..."
    missing = tmp_path / "no file.h5ad"
    with pytest.raises(ReadError) as caught:
        read_h5ad(missing)
    assert str(caught.value) == f"'{missing}': no such file or directory"
    assert caught.value.path == missing  # the path itself is kept as it was


def _last_bar(err: str) -> str:
    """The last state the progress bar drew on stderr."""
    drawn = [part for part in re.split(r"[\r\n]", err) if "|" in part]
    return drawn[-1]


@pytest.mark.parametrize(
    "route",
    [
        ["--max-iter", "400", "--tol", "0.05"],
        ["--solver", "svi", "--epochs", "400", "--tol", "0.05", "--batch-size", "20"],
    ],
    ids=["batch", "svi"],
)
def test_an_early_convergence_ends_its_bar_at_100_percent(route, tmp_path, capsys, monkeypatch):
    # before: "batch K=2:   2%|▏   | 8/400": the bar of a finished fit read as cut short
    _counts().write_h5ad(tmp_path / "counts.h5ad")
    argv = ["fit", "counts.h5ad", "-k", "2", "--threads", "1", *route, "-o", "out"]
    code, out, err = _run(argv, capsys, tmp_path, monkeypatch)
    assert code == 0, err
    iterations = re.search(r", (\d+) (?:iterations|epochs)", out)
    assert iterations is not None and "(not converged)" not in out, out
    n_done = int(iterations[1])
    assert n_done < 400
    bar = _last_bar(err)
    assert "100%|" in bar and f"| {n_done}/{n_done} [" in bar, bar
