"""A hostile user's eleventh pass, the command line's part: ``umap --color`` refused the
genes of a result's ``.raw``, which scanpy colours by; ``fit --help`` gave the variational
solvers' defaults of --max-iter and --tol for every solver and offered --n-init to svi,
which refuses it; and errors and warnings named `vbsnmf.tl.nmf`'s parameters
(``n_components=5``, ``init='nndsvda'``, ``raise max_iter or tol``, ``key_added=None``)
where the command line has options (-k, --init, --max-iter, --tol) or, for the key of the
fit, had none. Each case says what went wrong before its fix.

The commands run in this process through `vbsnmf.cli.main`, as tests/test_hostile.py
runs them, on its tiny data (40 cells x 25 genes)."""

from __future__ import annotations

import inspect
import json
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from test_hostile import FIT, N_GENES, SVI, _counts, _main, h5ad

import vbsnmf
from vbsnmf import cli
from vbsnmf.classic import NMF

# tl.nmf's parameters that the command line sets through options of other names
PYTHON_SETTINGS = re.compile(r"\b(n_components|n_init|init|prior|max_iter|n_epochs|tol|key_added)=")


def _error(err: str) -> str:
    """The one line of an error, checked to be one line."""
    assert err.count("\n") == 1 and err.startswith("vbsnmf: error: "), err
    return err.strip()


def _warnings(err: str) -> list[str]:
    """The ``vbsnmf: warning:`` lines of ``err``."""
    return [line for line in err.splitlines() if line.startswith("vbsnmf: warning: ")]


def _with_raw(folder, raw_genes=slice(None)) -> None:
    """``in.h5ad``: the first 10 genes as X, the genes ``raw_genes`` of all 25 as .raw."""
    full = ad.AnnData(_counts())
    full.var_names = [f"g{i}" for i in range(N_GENES)]
    adata = full[:, :10].copy()
    adata.raw = full[:, raw_genes].copy()
    adata.write_h5ad(folder / "in.h5ad")


# -- 5: umap --color of a gene in .raw ----------------------------------------------------------
def test_umap_colours_by_a_fitted_gene_of_raw(tmp_path, capfd):
    """``umap --color g20`` on the result of ``fit --use-raw`` was refused as "neither an
    .obs column, a gene, nor 'leiden'": only .var's genes were looked at, while scanpy
    colours by .raw's genes (every gene that fit fitted)."""
    _with_raw(tmp_path)
    code, _, err, _ = _main(["fit", "in.h5ad", "--use-raw", *FIT, "-o", "out"], capfd, tmp_path)
    assert code == 0, err
    argv = ["umap", "out/result.h5ad", "-o", "u.png", "--color", "g20"]
    code, out, err, _ = _main(argv, capfd, tmp_path)
    assert code == 0, err
    assert out == "wrote u.png\n"
    assert (tmp_path / "u.png").stat().st_size > 0


def test_umap_refuses_a_gene_of_var_that_raw_lacks(tmp_path, capfd):
    """With a .raw, scanpy looks a gene up there only: a gene of .var that .raw lacks passed
    the check and failed in scanpy as "result.h5ad: 'g2'", which said nothing of why."""
    _with_raw(tmp_path, raw_genes=slice(5, None))
    code, _, err, _ = _main(["fit", "in.h5ad", *FIT, "-o", "out"], capfd, tmp_path)
    assert code == 0, err
    argv = ["umap", "out/result.h5ad", "-o", "u.png", "--color", "g2"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 2
    assert "--color 'g2' is neither an .obs column (none), a gene of .raw" in _error(err)
    assert not (tmp_path / "u.png").exists()


# -- 6: fit --help ------------------------------------------------------------------------------
def _option_help(help_text: str, option: str, following: str) -> str:
    """What ``--help`` says of ``option`` (with its metavar, as the options' list shows it,
    not the usage's ``[--tol T]``), up to the ``following`` option, on one line."""
    text = " ".join(help_text.split())
    start = text.index(f"{option} ")
    return text[start : text.index(f"{following} ", start)]


def test_fit_help_gives_each_kind_of_solvers_defaults(capfd):
    """--max-iter said "(default: 1000)" and --tol "(default: 1e-05)" whatever the solver,
    but a classical solver (--solver mu, hals, ...) stops at 200 iterations and 1e-4."""
    assert cli.main(["fit", "--help"]) == 0
    text = capfd.readouterr().out
    variational = inspect.signature(vbsnmf.VBNMF).parameters
    classical = inspect.signature(NMF).parameters
    for option, following, name in (
        ("--max-iter N", "--tol T", "max_iter"),
        ("--tol T", "--seed SEED", "tol"),
    ):
        described = _option_help(text, option, following)
        assert f"default: {variational[name].default}" in described, described
        assert f"classical solver: {classical[name].default}" in described, described


def test_n_init_is_offered_and_taken_for_batch_only(tmp_path, capfd):
    """--help said "batch or svi: random starts", and a classical solver was told "--n-init
    applies to --solver batch or svi", but ``--solver svi --n-init 2`` is refused: SVI
    runs one start."""
    assert cli.main(["fit", "--help"]) == 0
    described = _option_help(capfd.readouterr().out, "--n-init N", "--init {random,nndsvda}")
    assert described.startswith("--n-init N batch: random starts"), described
    assert "svi" not in described
    h5ad(tmp_path)
    for solver in ("svi", "hals"):
        argv = ["fit", "small.h5ad", *FIT, "--solver", solver, "--n-init", "2", "-o", "o"]
        code, _, err, _ = _main(argv, capfd, tmp_path)
        assert code == 2
        assert _error(err) == f"vbsnmf: error: --n-init applies to --solver batch, not {solver}"


# -- 7: messages in the command line's words --------------------------------------------------
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["-k", "30"], "vbsnmf: error: -k 30 is out of range: it must be between 1 and"),
        (
            ["-k", "2", "--init", "nndsvda", "--prior", "gamma"],
            "vbsnmf: error: --init nndsvda starts the learned prior's fit; --prior gamma "
            "starts at random",
        ),
        (
            ["-k", "2", "--init", "nndsvda", "--n-init", "2"],
            "vbsnmf: error: --init nndsvda is one start: drop --n-init",
        ),
    ],
)
def test_errors_name_the_options(tmp_path, capfd, options, expected):
    """The estimator's words reached the command line: "n_components=30 is out of range"
    (the option is -k), "init='nndsvda' ... prior='gamma'", "n_init must be 1"."""
    h5ad(tmp_path)
    argv = ["fit", "small.h5ad", *options, "--max-iter", "3", "--quiet", "-o", "o"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 2
    assert _error(err).startswith(expected), err
    assert not PYTHON_SETTINGS.search(err) and "n_init" not in err


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--max-iter", "1"], "VB stopped after --max-iter 1 iteration"),
        (SVI, "SVI stopped after --epochs 1 epoch"),
        (["--solver", "mu", "--max-iter", "1"], "NMF stopped after --max-iter 1 iteration"),
    ],
)
def test_convergence_warnings_name_the_options(tmp_path, capfd, options, expected):
    """ "VB stopped after max_iter=2 iterations ... below tol=1e-05; raise max_iter or tol"
    (SVI: n_epochs; a fit still holding its factor shapes: "raise max_iter"): the command
    line's options are --max-iter, --epochs and --tol."""
    h5ad(tmp_path)
    argv = ["fit", "small.h5ad", "-k", "2", "--threads", "1", *options, "-o", "o"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 0, err
    (warning,) = [line for line in _warnings(err) if "stopped after" in line]
    limit = "--epochs" if "--epochs" in options else "--max-iter"
    assert warning.startswith(f"vbsnmf: warning: {expected}"), warning
    if expected.startswith("NMF"):
        assert warning.endswith(f"below --tol {_tol(options)}; raise {limit} or --tol."), warning
    else:  # one pass or epoch of the learned prior's fit: still holding its factor shapes
        assert warning.endswith(f'(docs/model.md, "The hold"); raise {limit}.'), warning
    assert not PYTHON_SETTINGS.search(err)


def _tol(options) -> float:
    """The --tol a fit with ``options`` runs with: its estimator's default."""
    estimator = NMF if "mu" in options else vbsnmf.VBNMF
    return inspect.signature(estimator).parameters["tol"].default


def _taken(folder) -> None:
    """``taken.h5ad``: counts whose .obsm['X_nmf'] is another tool's, not a vbsnmf fit."""
    adata = ad.AnnData(_counts())
    adata.obsm["X_nmf"] = np.ones((adata.n_obs, 3))
    adata.write_h5ad(folder / "taken.h5ad")


@pytest.mark.parametrize("route", [[], SVI], ids=["in memory", "streamed"])
def test_a_key_clash_is_answered_with_the_key_option(tmp_path, capfd, route):
    """An input holding .obsm['X_nmf'] from elsewhere was refused with "key_added=None would
    overwrite .obsm['X_nmf'], which adata holds ...; choose another key_added", which fit
    had no option for, and named the input as tl.nmf's parameter."""
    _taken(tmp_path)
    code, _, err, _ = _main(["fit", "taken.h5ad", *FIT, *route, "-o", "o"], capfd, tmp_path)
    assert code == 2
    assert _error(err) == (
        "vbsnmf: error: --key nmf would overwrite .obsm['X_nmf'], which taken.h5ad holds from "
        "elsewhere (not from an earlier vbsnmf.tl.nmf under this key); choose another --key, "
        "or delete it from taken.h5ad first"
    )
    assert not (tmp_path / "o").exists()


def test_the_outputs_and_umap_follow_the_key(tmp_path, capfd):
    """``fit --key run2`` stores the fit beside what the input holds under X_nmf; the
    tables, params.json and ``umap --key run2`` read it there."""
    _taken(tmp_path)
    argv = ["fit", "taken.h5ad", *FIT, "--key", "run2", "-o", "o"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 0, err
    result = ad.read_h5ad(tmp_path / "o" / "result.h5ad")
    np.testing.assert_array_equal(result.obsm["X_nmf"], np.ones((result.n_obs, 3)))
    assert result.obsm["X_run2"].shape == (result.n_obs, 2) and "run2" in result.varm
    assert json.loads((tmp_path / "o" / "params.json").read_text())["key"] == "run2"
    table = pd.read_csv(tmp_path / "o" / "cell_factors.tsv.gz", sep="\t", index_col=0)
    np.testing.assert_allclose(table.to_numpy(), result.obsm["X_run2"], rtol=1e-5)
    argv = ["umap", "o/result.h5ad", "--key", "run2", "-o", "u.png"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 0, err


def test_the_default_key_writes_what_it_always_wrote(tmp_path, capfd):
    """--key nmf (the default) is tl.nmf's default key: loadings in .varm['NMF'], as the
    fit's description says, not .varm['nmf'] (``key_added='nmf'``)."""
    h5ad(tmp_path)
    code, _, err, _ = _main(["fit", "small.h5ad", *FIT, "--key", "nmf", "-o", "o"], capfd, tmp_path)
    assert code == 0, err
    result = ad.read_h5ad(tmp_path / "o" / "result.h5ad")
    assert "NMF" in result.varm and "nmf" not in result.varm


def test_a_key_an_h5ad_cannot_store_is_refused_naming_the_option(tmp_path, capfd):
    """A key that result.h5ad could not hold is refused as tl.nmf refuses it, in the
    command line's words (there was no --key to refuse)."""
    h5ad(tmp_path)
    code, _, err, _ = _main(["fit", "small.h5ad", *FIT, "--key", "a/b", "-o", "o"], capfd, tmp_path)
    assert code == 2
    assert _error(err).startswith("vbsnmf: error: --key must be a non-empty string"), err
    assert not (tmp_path / "o").exists()


def test_only_parameter_names_in_settings_and_advice_are_rewritten():
    """Whole names followed by '=' and the names in "raise X or Y" / "choose another X"
    advice become options; "n_init=" is not taken for "init=", and the words "prior" or
    "tol" elsewhere in a message are left alone."""
    assert cli._as_options("checkpoints need n_init=1; the prior is learned") == (
        "checkpoints need --n-init 1; the prior is learned"
    )
    assert cli._as_options("stopped below tol=0.0001; raise max_iter or tol.") == (
        "stopped below --tol 0.0001; raise --max-iter or --tol."
    )
    assert cli._as_options("raise tau or use a larger batch_size") == (
        "raise tau or use a larger batch_size"
    )
    assert cli._as_options("key_added='my key' is taken; choose another key_added") == (
        "--key 'my key' is taken; choose another --key"
    )
