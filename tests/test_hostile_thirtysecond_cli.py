"""The command line beyond `fit`: an earlier output given where its files are wanted, the
key of a keyed or damaged fit, paths that begin with '-' (the thirty-second hostile pass,
area cli). Each test fails on the code before its fix unless its docstring says it guards
a normal case."""

from __future__ import annotations

import gzip
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from cli_output import without_compile_notice

import vbsnmf
import vbsnmf.cli as cli
from vbsnmf.io import ReadError

# the files 'vbsnmf fit' writes into OUTDIR besides result.h5ad
OTHER_OUTPUTS = (
    "cell_factors.tsv.gz",
    "gene_loadings.tsv.gz",
    "elbo.tsv",
    "top_genes.tsv",
    "params.json",
)


def _counts() -> ad.AnnData:
    """40 cells x 12 genes of Poisson counts."""
    rng = np.random.default_rng(0)
    return ad.AnnData(sp.csr_matrix(rng.poisson(1.0, (40, 12)).astype(np.float32)))


def _fit(adata: ad.AnnData, key_added: str = "nmf") -> None:
    """A short `vbsnmf.tl.nmf` fit under ``key_added`` (its stop before convergence not
    warned)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, n_components=2, key_added=key_added, max_iter=10, random_state=0)


@pytest.fixture
def outdir(tmp_path, monkeypatch):
    """An OUTDIR as 'vbsnmf fit' leaves it, ``run1`` in the current folder (its
    result.h5ad holds counts; the other files are named as the outputs)."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "run1"
    folder.mkdir()
    _counts().write_h5ad(folder / "result.h5ad")
    for name in OTHER_OUTPUTS:
        (folder / name).write_bytes(b"")
    return folder


def _error(capsys) -> str:
    captured = capsys.readouterr()
    err = without_compile_notice(captured.err)
    assert captured.out == "" and err.count("\n") == 1, captured
    return err


def test_fit_of_an_earlier_outdir_names_its_result(outdir, capsys):
    """Before: the output folder of an earlier fit, given as the input, was "not a 10x
    folder as Cell Ranger names its files: it holds top_genes.tsv, whose names have a
    prefix (as GEO serves them): rename a sample's files to matrix.mtx.gz, ..." (its
    top_genes.tsv taken for a prefixed genes.tsv). Now it is named an output of a vbsnmf fit,
    with its result.h5ad (the reader's message, which the round-trip pass's fix gives too)."""
    assert cli.main(["fit", "run1", "-k", "2", "-o", "run2"]) == 2
    err = _error(capsys)
    assert "GEO" not in err and "rename" not in err, err
    # the reader's message for an OUTDIR (shared with the round-trip pass's fix)
    assert "the output of a vbsnmf fit: give its" in err and "result.h5ad" in err, err
    assert not (outdir.parent / "run2").exists()
    with pytest.raises(ReadError, match=r"output of a vbsnmf fit: give its .*result\.h5ad"):
        vbsnmf.io.read(outdir)


def test_a_folder_of_h5ad_files_without_a_result_is_named_so(tmp_path):
    """Before: a folder of .h5ad files (no 10x files) was "not a 10x folder: none of
    matrix.mtx.gz, ... found in it", not saying what it held. Now it names them, and does
    not call it an output of 'vbsnmf fit'."""
    _counts().write_h5ad(tmp_path / "sample_a.h5ad")
    with pytest.raises(ReadError, match=r"holds \.h5ad files: sample_a\.h5ad") as raised:
        vbsnmf.io.read(tmp_path)
    assert "vbsnmf fit" not in str(raised.value)


def test_a_geo_sample_beside_an_h5ad_keeps_the_renaming_advice(tmp_path):
    """Guards (passes before and after): a folder of a GEO sample's prefixed 10x files
    with a processed .h5ad beside them is still advised to rename the 10x files."""
    _counts().write_h5ad(tmp_path / "GSM1_processed.h5ad")
    for name in ("GSM1_matrix.mtx.gz", "GSM1_features.tsv.gz", "GSM1_barcodes.tsv.gz"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ReadError, match=r"whose names have a prefix \(as GEO serves them\)"):
        vbsnmf.io.read(tmp_path)


def test_umap_of_an_outdir_names_its_result(outdir, capsys):
    """Before: `vbsnmf umap OUTDIR -o x.png` was "OUTDIR: not a regular file". Now the
    message names OUTDIR/result.h5ad."""
    assert cli.main(["umap", "run1", "-o", "x.png"]) == 2
    err = _error(capsys)
    assert "run1: a folder, not a file: give run1/result.h5ad" in err, err
    assert not (outdir.parent / "x.png").exists()


def test_umap_of_a_gzipped_table_is_not_told_to_gunzip_it_into_an_h5ad(outdir, capsys):
    """Before: `vbsnmf umap OUTDIR/cell_factors.tsv.gz` was told to "decompress it first,
    e.g. gunzip -c FILE > counts.h5ad", which gives a table named .h5ad. Now a gzip file
    that holds no HDF5 file is said to hold none."""
    (outdir / "cell_factors.tsv.gz").write_bytes(gzip.compress(b"cell\tfactor_0\nc1\t0.5\n"))
    assert cli.main(["umap", "run1/cell_factors.tsv.gz", "-o", "x.png"]) == 2
    err = _error(capsys)
    assert "gunzip" not in err and "counts.h5ad" not in err, err
    assert "is gzip-compressed, and what it holds is not an HDF5 file either" in err, err


def test_a_gzipped_h5ad_is_still_told_to_be_decompressed(outdir):
    """Guards the normal case (passes before and after): a gzip file that holds an .h5ad
    keeps the advice to decompress it, also named .h5ad.gz."""
    packed = gzip.compress((outdir / "result.h5ad").read_bytes())
    for name in ("packed.h5ad", "packed.h5ad.gz"):
        (outdir / name).write_bytes(packed)
        with pytest.raises(ReadError, match=r"gunzip -c FILE > counts\.h5ad"):
            vbsnmf.io.read(outdir / name)


def test_umap_without_key_names_the_key_of_the_stored_fit(tmp_path, monkeypatch, capsys):
    """Before: a result fitted with --key nmf_k2 and drawn without --key was "holds no NMF
    fit or projection under --key nmf; make one with 'vbsnmf fit'". Now the message names
    the --key it holds a fit under, and each of several."""
    monkeypatch.chdir(tmp_path)
    adata = _counts()
    _fit(adata, "nmf_k2")
    adata.write_h5ad("result.h5ad")
    assert cli.main(["umap", "result.h5ad", "-o", "x.png"]) == 2
    err = _error(capsys)
    assert "make one" not in err, err
    assert "under --key nmf, but one under --key nmf_k2: pass it" in err, err
    _fit(adata, "nmf_b")
    adata.write_h5ad("result.h5ad")
    assert cli.main(["umap", "result.h5ad", "-o", "x.png", "--key", "other"]) == 2
    err = _error(capsys)
    assert "some under --key nmf_b, --key nmf_k2: pass one of them" in err, err
    assert not (tmp_path / "x.png").exists()


def test_umap_of_a_file_without_a_fit_still_says_to_fit(tmp_path, monkeypatch, capsys):
    """Guards the normal case (passes before and after): counts without any fit are told
    to be fitted."""
    monkeypatch.chdir(tmp_path)
    _counts().write_h5ad("counts.h5ad")
    assert cli.main(["umap", "counts.h5ad", "-o", "x.png"]) == 2
    assert "holds no NMF fit or projection under --key nmf; make one" in _error(capsys)


def test_umap_of_a_damaged_record_names_the_missing_entry(tmp_path, monkeypatch, capsys):
    """Before: a result whose record lost an entry (``del
    adata.uns['nmf']['sqrt_usage_key']``) was "holds no NMF fit or projection under --key
    nmf; make one with 'vbsnmf fit'" of a file holding one. Now the entry is named, as
    `vbsnmf.tl` names it."""
    monkeypatch.chdir(tmp_path)
    adata = _counts()
    _fit(adata)
    del adata.uns["nmf"]["sqrt_usage_key"]
    adata.write_h5ad("result.h5ad")
    assert cli.main(["umap", "result.h5ad", "-o", "x.png"]) == 2
    err = _error(capsys)
    assert "holds no NMF fit" not in err, err
    assert "result.h5ad: adata.uns['nmf'] has no 'sqrt_usage_key' entry" in err, err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["umap", "-r.h5ad", "-o", "x.png"], "-r.h5ad"),
        (["umap", "r.h5ad", "-o", "-x.png"], "-x.png"),
        (["umap", "r.h5ad", "-o", "x.png", "-y.pdf"], "-y.pdf"),
    ],
)
def test_a_path_beginning_with_a_dash_is_told_how_to_name_it(
    tmp_path, monkeypatch, capsys, argv, named
):
    """Before: `vbsnmf umap -r.h5ad -o x.png` was "the following arguments are required:
    RESULT.h5ad", of a file the user named, and `-o -x.png` "expected one argument". Now
    the message says the path was read as an option and how to name it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-r.h5ad").write_bytes(b"")
    assert cli.main(argv) == 2
    err = _error(capsys)
    assert f"; {named} was read as an option: write a path that begins with '-' as ./{named}" in (
        err
    ), err
    assert err.rstrip().endswith("(see vbsnmf umap --help)"), err


@pytest.mark.parametrize(
    "argv",
    [
        ["umap", "r.h5ad", "-o", "x.png", "--colour", "red"],
        ["fit", "x.mtx", "-K", "5", "-o", "out"],
        ["fit", "x.mtx", "-k", "-5", "-o", "out"],
        ["umap", "-o", "x.png", "--", "-r.h5ad", "-x"],
    ],
)
def test_a_mistyped_option_gets_no_path_advice(tmp_path, monkeypatch, capsys, argv):
    """Guards (passes before and after): a mistyped option, a negative number and what
    follows ``--`` are not advised as paths."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    assert "was read as an option" not in _error(capsys)
