"""The readers and the command line as a biologist meets them (thirty-first hostile pass,
readers and command line).

- D1: a 10x features file given as the genes' name file of a Matrix Market file (the
  route the message of a GEO folder of prefixed 10x names advises: ``vbsnmf fit
  GSM1_matrix.mtx.gz --genes-as-rows --row-names GSM1_features.tsv.gz --col-names
  GSM1_barcodes.tsv.gz``) kept its Antibody Capture features, whose counts were fitted
  with the genes', silently, where the same files in a 10x folder keep only the Gene
  Expression features (`read_mtx` and `mtx_to_h5ad` alike).
- D2: Cell Ranger's ``outs`` folder, given for its matrix folder, was "not a 10x folder:
  none of matrix.mtx.gz, ... found in it", not naming the 10x folders it holds
  (``filtered_feature_bc_matrix``, or version 2's ``filtered_gene_bc_matrices/GENOME``),
  nor, without them, its ``.h5`` matrices.
- D3: the matrix file of a 10x folder (a path tab-completed one level too deep), or a GEO
  sample's ``GSM1_matrix.mtx.gz`` beside its ``GSM1_features.tsv.gz`` and
  ``GSM1_barcodes.tsv.gz``, was only asked for its orientation: following that advice fits
  genes named "0", "1", ... (and a CITE-seq sample's antibody counts with them).
- D4: ``vbsnmf fit --solver svi -k K`` of a 10x folder (or an ``.mtx`` named by a features
  file) checked K against every feature of the Matrix Market header before converting,
  then, K being above the Gene Expression features the conversion keeps, refused it after
  the conversion, below "converted ... into OUTDIR/counts.h5ad" (an OUTDIR that never
  appeared).
- D5: ``fit --help`` said ``--layer`` and ``--use-raw`` take ".h5ad input"; a ``.zarr``
  store takes them too.

Guards (pass on both) say so in their docstrings.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from test_hostile import _main

from vbsnmf.datasets import data_dir
from vbsnmf.io import ReadError, mtx_to_h5ad, read, read_10x, read_mtx

# the bundled copy (the same bytes as ../shared/data/pbmc_tiny_v3, which a checkout of the
# repository alone lacks: the test below was skipped there)
TINY_V3 = data_dir("pbmc_tiny_v3")

TYPES = ["Gene Expression"] * 6 + ["Antibody Capture"] * 2 + ["CRISPR Guide Capture"]


def _tenx_folder(folder: Path, types=TYPES, n_cells: int = 7) -> tuple[Path, np.ndarray]:
    """A Cell Ranger 3 folder of ``types`` features (6 columns: ARC's chromosome,
    start and end too) x ``n_cells`` cells; its dense genes x cells counts."""
    rng = np.random.default_rng(3)
    counts = rng.poisson(2.0, (len(types), n_cells)) * (rng.random((len(types), n_cells)) < 0.7)
    counts[6:] *= 50  # antibody counts: large, as in CITE-seq
    folder.mkdir()
    plain = folder / "m.mtx"
    scipy.io.mmwrite(plain, sp.csc_matrix(counts), field="integer")
    (folder / "matrix.mtx.gz").write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    features = "".join(
        f"ID{i}\tSYM{i}\t{kind}\tchr1\t{10 * i}\t{10 * i + 5}\n" for i, kind in enumerate(types)
    )
    (folder / "features.tsv.gz").write_bytes(gzip.compress(features.encode()))
    barcodes = "".join(f"AAAC{j}-1\n" for j in range(n_cells))
    (folder / "barcodes.tsv.gz").write_bytes(gzip.compress(barcodes.encode()))
    return folder, counts


def _files(folder: Path) -> dict:
    return {
        "row_names": folder / "features.tsv.gz",
        "col_names": folder / "barcodes.tsv.gz",
    }


# -- D1 --------------------------------------------------------------------------------------
def test_features_file_as_row_names_keeps_gene_expression(tmp_path):
    """D1: `read_mtx` with a features file as the genes' names fits the genes that
    `read_10x` fits, not the antibody and guide counts beside them."""
    folder, counts = _tenx_folder(tmp_path / "tenx")
    tenx = read_10x(folder)
    mtx = read_mtx(folder / "matrix.mtx.gz", genes_as_rows=True, **_files(folder))
    assert mtx.shape == tenx.shape == (7, 6)
    assert list(mtx.var_names) == [f"ID{i}" for i in range(6)]  # the first field, as told
    np.testing.assert_array_equal(mtx.X.toarray(), counts[:6].T)
    np.testing.assert_array_equal(mtx.X.toarray(), tenx.X.toarray())


def test_features_file_as_column_names_of_cells_as_rows(tmp_path):
    """D1: with cells as rows, the genes' names are the columns' file: the same choice."""
    folder, counts = _tenx_folder(tmp_path / "tenx")
    cells_as_rows = tmp_path / "cells.mtx"
    scipy.io.mmwrite(cells_as_rows, sp.csr_matrix(counts.T), field="integer")
    adata = read_mtx(
        cells_as_rows,
        genes_as_rows=False,
        row_names=folder / "barcodes.tsv.gz",
        col_names=folder / "features.tsv.gz",
    )
    assert adata.shape == (7, 6)
    assert list(adata.obs_names) == [f"AAAC{j}-1" for j in range(7)]
    np.testing.assert_array_equal(adata.X.toarray(), counts[:6].T)


def test_converted_features_file_as_row_names_keeps_gene_expression(tmp_path):
    """D1: `mtx_to_h5ad` (the streamed route of ``vbsnmf fit --solver svi``) writes what
    `read_mtx` reads from the same files."""
    folder, _ = _tenx_folder(tmp_path / "tenx")
    dst = mtx_to_h5ad(folder / "matrix.mtx.gz", tmp_path / "c.h5ad", **_files(folder))
    converted = ad.read_h5ad(dst)
    in_memory = read_mtx(folder / "matrix.mtx.gz", genes_as_rows=True, **_files(folder))
    assert converted.shape == (7, 6)
    assert list(converted.var_names) == list(in_memory.var_names)
    assert list(converted.obs_names) == list(in_memory.obs_names)
    np.testing.assert_array_equal(converted.X.toarray(), in_memory.X.toarray())


def test_features_file_as_names_repeated_ids_made_unique_among_kept(tmp_path):
    """D1: names are made unique among the genes kept, on both routes (an antibody
    sharing a gene's id does not rename the gene)."""
    folder, _ = _tenx_folder(tmp_path / "tenx")
    lines = gzip.decompress((folder / "features.tsv.gz").read_bytes()).decode().splitlines()
    lines[6] = "ID0" + lines[6][3:]  # the first antibody takes the first gene's id
    (folder / "features.tsv.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    in_memory = read_mtx(folder / "matrix.mtx.gz", genes_as_rows=True, **_files(folder))
    converted = ad.read_h5ad(
        mtx_to_h5ad(folder / "matrix.mtx.gz", tmp_path / "c.h5ad", **_files(folder))
    )
    assert list(in_memory.var_names) == [f"ID{i}" for i in range(6)]
    assert list(converted.var_names) == list(in_memory.var_names)


def test_features_file_of_gene_expression_only_keeps_all(tmp_path):
    """Guard (passes on both): a features file of Gene Expression alone, one of another
    type alone (ATAC's Peaks), and a names file of three fields that are no types keep
    every row."""
    for n, types in enumerate((["Gene Expression"] * 5, ["Peaks"] * 5)):
        folder, counts = _tenx_folder(tmp_path / f"t{n}", types=types)
        adata = read_mtx(folder / "matrix.mtx.gz", genes_as_rows=True, **_files(folder))
        np.testing.assert_array_equal(adata.X.toarray(), counts.T)
    names = tmp_path / "names.tsv"
    names.write_text("".join(f"g{i}\tx\ty\n" for i in range(5)))
    adata = read_mtx(folder / "matrix.mtx.gz", genes_as_rows=True, row_names=names)
    assert adata.n_vars == 5


def test_cli_fit_of_features_file_as_row_names(tmp_path, capfd):
    """D1: ``vbsnmf fit MATRIX --genes-as-rows --row-names FEATURES`` fits the genes
    alone, as the fit of the 10x folder does."""
    folder, _ = _tenx_folder(tmp_path / "tenx", n_cells=12)
    outdir = tmp_path / "out"
    argv = [
        "fit",
        folder / "matrix.mtx.gz",
        "--genes-as-rows",
        "--row-names",
        folder / "features.tsv.gz",
        "--col-names",
        folder / "barcodes.tsv.gz",
        "-k",
        "2",
        "--max-iter",
        "3",
        "--threads",
        "1",
        "--quiet",
        "--solver",
        "mu",
        "-o",
        outdir,
    ]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 0, err
    result = ad.read_h5ad(outdir / "result.h5ad")
    assert list(result.var_names) == [f"ID{i}" for i in range(6)]


# -- D2 --------------------------------------------------------------------------------------
def _outs(tmp_path: Path) -> Path:
    outs = tmp_path / "outs"
    outs.mkdir()
    for name in ("filtered_feature_bc_matrix", "raw_feature_bc_matrix"):
        _tenx_folder(outs / name)
    (outs / "web_summary.html").write_text("<html></html>")
    return outs


def test_cell_ranger_outs_names_its_matrix_folders(tmp_path):
    """D2: `read` of Cell Ranger's outs names the 10x folders inside it."""
    with pytest.raises(ReadError, match="filtered_feature_bc_matrix, raw_feature_bc_matrix"):
        read(_outs(tmp_path))


def test_cell_ranger_2_outs_names_genome_folder(tmp_path):
    """D2: version 2's ``outs/filtered_gene_bc_matrices/GRCh38`` is named too."""
    genome = tmp_path / "outs" / "filtered_gene_bc_matrices" / "GRCh38"
    genome.mkdir(parents=True)
    (genome / "matrix.mtx").write_text("%%MatrixMarket matrix coordinate integer general\n")
    (genome / "genes.tsv").write_text("ID0\tG0\n")
    (genome / "barcodes.tsv").write_text("AAAC-1\n")
    with pytest.raises(ReadError, match=r"filtered_gene_bc_matrices/GRCh38"):
        read(tmp_path / "outs")


def test_cli_fit_of_cell_ranger_outs(tmp_path, capfd):
    """D2: ``vbsnmf fit outs`` is one error line naming the folder to give."""
    outs = _outs(tmp_path)
    code, out, err, _ = _main(["fit", outs, "-k", "2", "-o", tmp_path / "o"], capfd, tmp_path)
    assert code == 2 and not out
    assert len(err.splitlines()) == 1 and err.startswith("vbsnmf: error: ")
    assert "filtered_feature_bc_matrix" in err
    assert not (tmp_path / "o").exists()


def test_outs_of_h5_matrices_names_them(tmp_path):
    """D2: an outs folder holding Cell Ranger's ``.h5`` matrices and no matrix folder
    names the ``.h5`` files (not ``molecule_info.h5``)."""
    outs = tmp_path / "outs"
    outs.mkdir()
    for name in ("filtered_feature_bc_matrix.h5", "raw_feature_bc_matrix.h5"):
        (outs / name).write_bytes(b"")
    (outs / "molecule_info.h5").write_bytes(b"")
    with pytest.raises(
        ReadError, match=r"filtered_feature_bc_matrix\.h5, raw_feature_bc_matrix\.h5: name"
    ):
        read(outs)


def test_folder_without_10x_files_still_says_none_found(tmp_path):
    """Guard (passes on both): a folder holding neither 10x files nor 10x folders keeps
    its message."""
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ReadError, match=r"none of matrix\.mtx\.gz"):
        read(tmp_path / "empty")


def test_outs_subfolder_reads_as_the_folder(tmp_path):
    """Guard (passes on both): the folder named by the message reads."""
    outs = tmp_path / "outs"
    shutil.copytree(TINY_V3, outs / "filtered_feature_bc_matrix")
    assert read(outs / "filtered_feature_bc_matrix").n_obs > 0


# -- D3 --------------------------------------------------------------------------------------
def test_matrix_of_10x_folder_names_the_folder(tmp_path):
    """D3: the orientation message of a 10x folder's matrix names the folder."""
    folder, _ = _tenx_folder(tmp_path / "tenx")
    with pytest.raises(ValueError, match="say which axis") as caught:
        read(folder / "matrix.mtx.gz")
    assert f"read the 10x folder {folder} that holds it" in str(caught.value)


def test_geo_matrix_names_its_name_files(tmp_path, capfd):
    """D3: a GEO sample's prefixed matrix names its prefixed features and barcodes files,
    as options; one error line, exit code 2; the advice then reads the genes alone."""
    folder, _ = _tenx_folder(tmp_path / "tenx")
    geo = tmp_path / "geo"
    geo.mkdir()
    for file in folder.iterdir():
        shutil.copy(file, geo / f"GSM1_{file.name}")
    code, out, err, _ = _main(
        ["fit", geo / "GSM1_matrix.mtx.gz", "-k", "2", "-o", tmp_path / "o"], capfd, tmp_path
    )
    assert code == 2 and not out and len(err.splitlines()) == 1
    features, barcodes = geo / "GSM1_features.tsv.gz", geo / "GSM1_barcodes.tsv.gz"
    assert f"--genes-as-rows --row-names {features} --col-names {barcodes}" in err
    adata = read(
        geo / "GSM1_matrix.mtx.gz", genes_as_rows=True, row_names=features, col_names=barcodes
    )
    assert adata.shape == (7, 6)


def test_lone_matrix_keeps_its_message(tmp_path):
    """Guard (passes on both): a matrix without 10x files beside it, or beside name files
    of another sample, is asked for its orientation alone."""
    folder, _ = _tenx_folder(tmp_path / "tenx")
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(folder / "matrix.mtx.gz", lone / "GSM1_matrix.mtx.gz")
    shutil.copy(folder / "features.tsv.gz", lone / "GSM2_features.tsv.gz")
    shutil.copy(folder / "barcodes.tsv.gz", lone / "GSM2_barcodes.tsv.gz")
    shutil.copy(folder / "matrix.mtx.gz", lone / "counts.mtx.gz")
    for name in ("GSM1_matrix.mtx.gz", "counts.mtx.gz"):
        with pytest.raises(ValueError, match=r"\(--cells-as-rows\)$"):
            read(lone / name)


# -- D4 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("named", [False, True], ids=["folder", "mtx_with_features"])
def test_svi_k_checked_against_kept_genes_before_conversion(tmp_path, capfd, named):
    """D4: K above the 6 genes but not the 9 features is refused before the conversion:
    one line, nothing written."""
    folder, _ = _tenx_folder(tmp_path / "tenx", n_cells=20)
    source = [folder]
    if named:
        source = [folder / "matrix.mtx.gz", "--genes-as-rows", "--row-names"]
        source.append(folder / "features.tsv.gz")
    argv = ["fit", *source, "-k", "8", "--solver", "svi", "-o", tmp_path / "o"]
    code, out, err, _ = _main(argv, capfd, tmp_path)
    assert code == 2 and not out
    assert err.splitlines() == [
        "vbsnmf: error: -k 8 is out of range: it must be between 1 and min(n_rows, n_cols) "
        "= 6 for a matrix of shape (20, 6)"
    ]
    assert not (tmp_path / "o").exists()


# -- D5 --------------------------------------------------------------------------------------
def test_fit_help_names_zarr_for_layer_and_raw(capsys):
    """D5: ``fit --help`` said --layer and --use-raw apply to ".h5ad input", where a
    ``.zarr`` store takes them too (and their refusal names both)."""
    from vbsnmf.cli import build_parser

    parser = build_parser()
    fit = next(
        action
        for action in parser._subparsers._group_actions[0].choices.values()
        if action.prog.endswith(" fit")
    )
    helps = {action.dest: action.help for action in fit._actions}
    assert helps["layer"].startswith(".h5ad or .zarr input")
    assert helps["use_raw"].startswith(".h5ad or .zarr input")
