"""The command line's runs as a whole (the twenty-eighth hostile pass, area clirun):
--convert-to names a file that 'vbsnmf fit' can read again."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from cli_output import without_compile_notice

import vbsnmf
import vbsnmf.cli as cli

SVI = ["-k", "2", "--solver", "svi", "--epochs", "1", "--threads", "1", "--quiet"]


@pytest.fixture
def genes_by_cells_mtx(tmp_path):
    rng = np.random.default_rng(0)
    counts = sp.random(30, 20, density=0.3, random_state=0, format="csr")
    counts.data = rng.integers(1, 9, counts.nnz).astype(float)
    path = tmp_path / "in.mtx"
    scipy.io.mmwrite(path, counts.T.tocoo())
    return path, counts


@pytest.mark.parametrize("name", ["conv.txt", "conv.zarr", "conv"])
def test_convert_to_of_a_name_fit_cannot_read_is_refused_before_the_conversion(
    name, genes_by_cells_mtx, tmp_path, capsys
):
    """``--convert-to conv.txt`` converted the matrix (minutes for a large one) into an
    .h5ad of that name, which 'vbsnmf fit conv.txt' then refused as "unrecognised input"
    (and a .zarr name as "not a .zarr store"), though the file is meant to be fitted again
    and --resume's advice names it as the input. Now refused at once, nothing written."""
    source, _ = genes_by_cells_mtx
    target, outdir = tmp_path / name, tmp_path / "out"
    argv = ["fit", str(source), "--genes-as-rows", *SVI, "-o", str(outdir)]
    code = cli.main([*argv, "--convert-to", str(target)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert err == (
        f"vbsnmf: error: --convert-to {target}: name an .h5ad file, which 'vbsnmf fit' can "
        "read again (the matrix is written as one)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mtx"]


@pytest.mark.parametrize("name", ["conv.H5AD", "conv.h5"])
def test_convert_to_of_an_anndata_name_is_fitted_again_from_it(
    name, genes_by_cells_mtx, tmp_path, capsys
):
    """The names the readers take for an AnnData (any case of .h5ad, and .h5, which holds
    an AnnData here) are kept: the conversion is read back as the counts."""
    source, counts = genes_by_cells_mtx
    target = tmp_path / name
    argv = ["fit", str(source), "--genes-as-rows", *SVI, "-o", str(tmp_path / "a")]
    assert cli.main([*argv, "--convert-to", str(target)]) == 0, capsys.readouterr().err
    again = ["fit", str(target), *SVI, "-o", str(tmp_path / "b")]
    assert cli.main(again) == 0, capsys.readouterr().err
    assert (sp.csr_matrix(vbsnmf.io.read(target).X) != counts).nnz == 0


@pytest.mark.parametrize("solver", ["batch", "svi"])
def test_resume_of_an_input_the_fit_refuses_says_one_line(solver, tmp_path, capsys):
    """--resume with no checkpoint yet, on counts the fit refuses (non-integer values):
    stderr held "no checkpoint at ... yet: a new fit", announcing a fit that never ran,
    above the error, where an error is one line. The note now comes with the first
    iteration, as a fit that runs still tells it."""
    counts = sp.random(30, 20, density=0.3, random_state=0, format="csr")
    source = tmp_path / "in.h5ad"
    anndata = pytest.importorskip("anndata")
    anndata.AnnData(counts + counts.sign() * 0.5).write_h5ad(source)
    checkpoint = tmp_path / "ck"
    options = ["-k", "2", "--solver", solver, "--threads", "1"]
    options += ["--epochs", "1"] if solver == "svi" else ["--max-iter", "1"]
    argv = ["fit", str(source), *options, "--checkpoint", str(checkpoint), "--resume"]
    assert cli.main([*argv, "-o", str(tmp_path / "out")]) == cli.EXIT_USAGE
    err = without_compile_notice(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and err.startswith("vbsnmf: error: ")
    assert "non-integer" in err and not checkpoint.exists()
    # counts that fit: the note is still said, before the fit's own lines
    counts.data = np.ceil(counts.data * 5)
    anndata.AnnData(counts).write_h5ad(source)
    assert cli.main([*argv, "-o", str(tmp_path / "out")]) == 0
    err = without_compile_notice(capsys.readouterr().err)
    assert err.startswith(f"vbsnmf: no checkpoint at {checkpoint} yet: a new fit\n"), err
    assert checkpoint.is_file()
