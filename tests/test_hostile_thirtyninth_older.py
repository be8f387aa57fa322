"""39th pass, older items: a warm start after genes were dropped, ``-`` as an output path of
the command line, and the commit a record names.

A warm start of ``adata[:, genes].copy()`` joined the new fit's ELBO, over fewer genes'
counts, onto the stored trace (``pl.elbo`` drew one curve whose ELBO jumped at the join,
-3,352 to -2,512 nats on 60 x 40 Poisson counts cut to 30 genes). ``vbsnmf fit ... -o -``
wrote a folder named ``-``, where a Unix user reads stdout. Every record said
``vbsnmf 0.1.0``, whichever commit of a checkout wrote it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import cli, tl
from vbsnmf._utils import library_versions

_DROPPED = "warm_start: adata holds 30 of the 40 genes the stored fit 'nmf' fitted"


def _counts(seed: int = 0, shape=(60, 40)) -> np.ndarray:
    return np.random.default_rng(seed).poisson(1.0, size=shape).astype(np.float64)


def _fitted(**options) -> ad.AnnData:
    adata = ad.AnnData(sp.csr_matrix(_counts()))
    adata.var_names = [f"g{i}" for i in range(adata.n_vars)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, 3, random_state=0, max_iter=8, accelerate=False, n_threads=1, **options)
    return adata


def _warm(adata, **options) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, 3, warm_start=True, max_iter=5, accelerate=False, n_threads=1, **options)
    return caught


# -- 1. warm start after genes were dropped ------------------------------------------------
def test_a_warm_start_of_fewer_genes_starts_a_new_trace_and_says_so():
    """The trace, its passes and n_iter are those of the fit from the stored start alone,
    as `VBNMF.fit(X, init=...)` gives them (its elbo_trace_ never holds the start's)."""
    full = _fitted()
    subset = full[:, :30].copy()
    stored = {
        "cell_shape": subset.obsm["nmf_cell_shape"],
        "cell_rate": subset.obsm["nmf_cell_rate"],
        "cell_scale_shape": subset.obsm["nmf_cell_scale_shape"][:, 0],
        "cell_scale_rate": subset.obsm["nmf_cell_scale_rate"][:, 0],
        "gene_shape": subset.varm["nmf_gene_shape"],
        "gene_rate": subset.varm["nmf_gene_rate"],
        "gene_scale_shape": subset.varm["nmf_gene_scale_shape"][:, 0],
        "gene_scale_rate": subset.varm["nmf_gene_scale_rate"][:, 0],
        **{key: value for key, value in full.uns["nmf"]["variational"].items() if key != "prior"},
    }
    caught = _warm(subset)
    told = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(told) == 1 and str(told[0].message).startswith(_DROPPED), told
    assert "start anew" in str(told[0].message)
    assert told[0].filename == __file__  # the user's line, not the library's
    model = vbsnmf.VBNMF(3, max_iter=5, accelerate=False, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(subset.X, init=stored)
    record = subset.uns["nmf"]
    np.testing.assert_allclose(record["elbo_trace"], model.elbo_trace_, rtol=1e-10)
    np.testing.assert_array_equal(record["elbo_iter"], model.elbo_iter_)
    assert record["n_iter"] == model.n_iter_ == 5
    factors = model.cell_shape_ / model.cell_rate_
    np.testing.assert_allclose(subset.obsm["X_nmf"], factors, rtol=1e-10)


def test_a_warm_start_of_the_same_genes_still_continues_the_trace():
    """The stored fit's genes, all of them (the fit itself, a subset of cells of a record
    written before ``n_cells`` was kept, a subset of genes fitted again, a fit of .raw whose
    genes were dropped from X but not from .raw): no warning, the trace continued."""
    full = _fitted()
    before = np.asarray(full.uns["nmf"]["elbo_trace"])
    cells = full[:40].copy()
    del cells.uns["nmf"]["n_cells"]  # a subset of the cells recorded: a fresh trace (warmcells)
    cases = {"itself": full, "cells": cells}
    raw = ad.AnnData(sp.csr_matrix(_counts()))
    raw.raw = raw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(raw, 3, use_raw=True, random_state=0, max_iter=8, accelerate=False, n_threads=1)
    cases["raw, X's genes dropped"] = raw[:, :30].copy()
    for name, adata in cases.items():
        caught = _warm(adata, use_raw=name.startswith("raw"))
        assert not [w for w in caught if "genes the stored fit" in str(w.message)], name
        trace = np.asarray(adata.uns["nmf"]["elbo_trace"])
        np.testing.assert_array_equal(trace[: before.size], before, err_msg=name)
        assert adata.uns["nmf"]["n_iter"] == 13, name
    # a new fit of the subset of genes is a fit of them: its own warm start continues it
    subset = full[:, :30].copy()
    _warm(subset)
    first = np.asarray(subset.uns["nmf"]["elbo_trace"])
    assert not [w for w in _warm(subset) if "genes the stored fit" in str(w.message)]
    np.testing.assert_array_equal(subset.uns["nmf"]["elbo_trace"][: first.size], first)
    assert subset.uns["nmf"]["n_iter"] == 10


def test_a_warm_start_after_genes_dropped_under_mask_var_counts_the_fitted_genes():
    """A fit of 40 of 60 genes (mask_var): dropping genes it did not fit changes nothing;
    dropping fitted ones warns, counting the fitted genes."""
    adata = ad.AnnData(sp.csr_matrix(_counts(shape=(60, 60))))
    adata.var["highly_variable"] = np.arange(60) < 40
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, 3, mask_var="highly_variable", max_iter=8, accelerate=False, n_threads=1)
    unfitted_dropped = adata[:, :45].copy()
    assert not [
        w
        for w in _warm(unfitted_dropped, mask_var="highly_variable")
        if "genes the stored fit" in str(w.message)
    ]
    assert unfitted_dropped.uns["nmf"]["n_iter"] == 13
    fitted_dropped = adata[:, 10:].copy()
    said = [str(w.message) for w in _warm(fitted_dropped, mask_var="highly_variable")]
    assert any(m.startswith(_DROPPED) for m in said), said
    assert fitted_dropped.uns["nmf"]["n_iter"] == 5


# -- 2. "-" as an output path of the command line ------------------------------------------
@pytest.fixture
def small_h5ad(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ad.AnnData(sp.csr_matrix(_counts())).write_h5ad(tmp_path / "in.h5ad")
    return tmp_path


@pytest.mark.parametrize(
    "argv, option",
    [
        (["fit", "in.h5ad", "-k", "2", "-o", "-"], "-o"),
        (["fit", "in.h5ad", "-k", "2", "-o", "out", "--checkpoint", "-"], "--checkpoint"),
        (
            ["fit", "in.h5ad", "-k", "2", "-o", "out", "--solver", "svi", "--convert-to", "-"],
            "--convert-to",
        ),
        (["demo", "--dataset", "pbmc_tiny", "-o", "-"], "-o"),
        (["umap", "in.h5ad", "-o", "-"], "-o"),
    ],
)
def test_dash_as_an_output_is_refused_in_one_line(small_h5ad, capsys, argv, option):
    """No output is one stream stdout could carry: exit 2, one line naming the option and
    the standard output, nothing written (no folder or file named '-')."""
    code = cli.main([*argv, "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"vbsnmf: error: {option} -: ")
    assert "not to the standard output" in lines[0]
    assert sorted(os.listdir(small_h5ad)) == ["in.h5ad"]


def test_a_folder_named_dash_is_still_written_as_dot_slash_dash(small_h5ad, capsys):
    """The refusal is of the bare '-': ./- names a folder of that name, as the message says."""
    code = cli.main(["fit", "in.h5ad", "-k", "2", "--max-iter", "2", "-o", "./-", "--quiet"])
    capsys.readouterr()
    assert code == 0
    assert (small_h5ad / "-" / "params.json").is_file()


def test_outputs_where_the_other_kind_is_expected_are_refused(small_h5ad, capsys):
    """An existing file as OUTDIR, a folder as --checkpoint and as a figure, '-' as an
    input: one line each, exit 2, nothing written (pinned as the code was)."""
    (small_h5ad / "afile").write_text("x")
    (small_h5ad / "adir").mkdir()
    runs = {
        "afile already exists and is not a folder": ["fit", "in.h5ad", "-k", "2", "-o", "afile"],
        "checkpoint adir is a folder": [
            "fit",
            "in.h5ad",
            "-k",
            "2",
            "-o",
            "o",
            "--checkpoint",
            "adir",
        ],
        "-o adir is a folder": ["umap", "in.h5ad", "-o", "adir"],
        "does not read the standard input (INPUT": ["fit", "-", "-k", "2", "-o", "o"],
        "does not read the standard input (--row-names": [
            "fit",
            "in.h5ad",
            "-k",
            "2",
            "-o",
            "o",
            "--row-names",
            "-",
        ],
        "does not read the standard input (RESULT": ["umap", "-", "-o", "u.png"],
    }
    for said, argv in runs.items():
        code = cli.main([*argv, "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and said in err, (argv, err)
    assert sorted(os.listdir(small_h5ad)) == ["adir", "afile", "in.h5ad"]
    assert not os.listdir(small_h5ad / "adir")


# -- 3. the commit a record names ----------------------------------------------------------
_SHA = "0123456789abcdef0123456789abcdef01234567"
_OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def _checkout(root: Path, name: str = "vbsnmf") -> Path:
    """A folder laid out as a checkout of ``name`` with its package folder; returns the
    package folder (what `checkout_commit` is given)."""
    (root / "vbsnmf").mkdir(parents=True)
    (root / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "0.1.0"\n')
    (root / ".git" / "refs" / "heads").mkdir(parents=True)
    return root / "vbsnmf"


def test_checkout_commit_reads_what_git_keeps(tmp_path):
    """A branch's loose ref, its packed ref, a detached HEAD, a worktree's .git file; None
    for an installed copy, another project's checkout, an unborn branch or damaged files."""
    from vbsnmf._version import checkout_commit  # inside: the code before had none

    package = _checkout(tmp_path / "loose")
    git = package.parent / ".git"
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(_SHA + "\n")
    assert checkout_commit(str(package)) == _SHA

    package = _checkout(tmp_path / "packed")
    git = package.parent / ".git"
    (git / "HEAD").write_text("ref: refs/heads/dev\n")
    (git / "packed-refs").write_text(
        f"# pack-refs with: peeled\n{_OTHER} refs/heads/main\n{_SHA} refs/heads/dev\n"
    )
    assert checkout_commit(str(package)) == _SHA
    (git / "HEAD").write_text("ref: refs/heads/unborn\n")
    assert checkout_commit(str(package)) is None
    (git / "HEAD").write_text(_OTHER + "\n")  # detached
    assert checkout_commit(str(package)) == _OTHER
    (git / "HEAD").write_text("not a commit\n")
    assert checkout_commit(str(package)) is None

    # git worktree add: .git is a file naming the worktree's folder, refs shared
    main = tmp_path / "packed" / ".git"
    own = main / "worktrees" / "wt"
    own.mkdir(parents=True)
    (own / "HEAD").write_text("ref: refs/heads/main\n")
    (own / "commondir").write_text("../..\n")
    tree = tmp_path / "wt"
    (tree / "vbsnmf").mkdir(parents=True)
    (tree / "pyproject.toml").write_text('[project]\nname = "vbsnmf"\n')
    (tree / ".git").write_text(f"gitdir: {own}\n")
    assert checkout_commit(str(tree / "vbsnmf")) == _OTHER  # main, in packed-refs

    installed = tmp_path / "site-packages" / "vbsnmf"
    installed.mkdir(parents=True)
    assert checkout_commit(str(installed)) is None
    package = _checkout(tmp_path / "other", name="my-analysis")  # vbsnmf copied into it
    (package.parent / ".git" / "HEAD").write_text(_SHA + "\n")
    assert checkout_commit(str(package)) is None


def test_records_name_the_commit_checked_out():
    """Run from a git checkout (as the tests are), the versions name the commit as git's
    own rev-parse does; the version alone is the same for every commit."""
    root = Path(vbsnmf.__file__).resolve().parents[1]
    if not (root / ".git").exists():  # an installed copy: no commit to name
        assert "vbsnmf_commit" not in library_versions()
        return
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert library_versions()["vbsnmf_commit"] == head
    assert library_versions(classic=True)["vbsnmf_commit"] == head


def test_reading_the_commit_starts_no_process_and_loads_nothing_heavy():
    """``import vbsnmf`` (what ``vbsnmf --version`` runs) reads the commit from files:
    neither subprocess nor numpy is loaded."""
    code = (
        "import sys, vbsnmf, vbsnmf._version as v; "
        "print(v.CHECKOUT_COMMIT is not None, 'subprocess' in sys.modules, 'numpy' in sys.modules)"
    )
    root = Path(vbsnmf.__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    found, subprocess_loaded, numpy_loaded = done.stdout.split()
    assert found == str((root / ".git").exists())
    assert (subprocess_loaded, numpy_loaded) == ("False", "False")
