"""Twenty-fifth pass, items earlier notes left: STARsolo's feature-barcode folder (the
version 3 names, uncompressed) is read as the 10x folder it is, not refused; a truncated
checkpoint is refused without keeping it open; a plot saved to a folder's name (``Path("")``
is ``.``) is refused, not written as a hidden ``.png``; a classical fit's cells without
counts keep its lower bound ``epsilon``, and its weights over every gene under
``mask_var`` are named so."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import psutil
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import CheckpointError
from vbsnmf.io import ReadError

ROOT = Path(__file__).resolve().parents[1]
# the bundled copy (the same bytes as ../shared/data/pbmc_tiny_v3, which a checkout of the
# repository alone lacks)
TINY = vbsnmf.datasets.data_dir("pbmc_tiny_v3")
TENX_NAMES = ("matrix.mtx", "features.tsv", "barcodes.tsv")


def _cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "vbsnmf.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env)


@pytest.fixture
def starsolo(tmp_path) -> Path:
    """pbmc_tiny's three files uncompressed, as STARsolo writes Solo.out/Gene/filtered/."""
    folder = tmp_path / "filtered"
    folder.mkdir()
    for name in TENX_NAMES:
        with gzip.open(TINY / f"{name}.gz", "rb") as source, open(folder / name, "wb") as out:
            shutil.copyfileobj(source, out)
    return folder


def test_starsolo_folder_reads_as_its_compressed_copy(starsolo):
    """Refused before ("holds matrix.mtx, features.tsv, barcodes.tsv but not
    matrix.mtx.gz, ..."): the same counts and names as the Cell Ranger folder."""
    read = vbsnmf.io.read(starsolo)
    reference = vbsnmf.io.read_10x(TINY)
    assert read.shape == reference.shape == (1107, 507)
    assert (read.X != reference.X).nnz == 0
    assert read.obs_names.equals(reference.obs_names)
    assert read.var.equals(reference.var)


def test_starsolo_folder_missing_file_is_named(starsolo):
    """The layout is told by its plain features.tsv: a missing barcodes file is named as
    STARsolo names it, and the message lists STARsolo's layout."""
    (starsolo / "barcodes.tsv").unlink()
    with pytest.raises(ReadError, match=r"but not barcodes\.tsv:") as caught:
        vbsnmf.io.read(starsolo)
    assert "STARsolo matrix.mtx, features.tsv, barcodes.tsv" in str(caught.value)


def test_compressed_features_keep_the_cell_ranger_layout(starsolo):
    """A folder with features.tsv.gz is Cell Ranger's layout even beside a plain
    features.tsv: its missing matrix.mtx.gz is named."""
    shutil.copy(TINY / "features.tsv.gz", starsolo / "features.tsv.gz")
    with pytest.raises(ReadError, match=r"but not matrix\.mtx\.gz, barcodes\.tsv\.gz"):
        vbsnmf.io.read(starsolo)


def test_cli_fits_a_starsolo_folder(starsolo, tmp_path):
    """The command line fits the folder and records its cells and genes."""
    outdir = tmp_path / "out"
    done = _cli("fit", starsolo, "-k", 2, "-o", outdir, "--max-iter", 5, "--quiet")
    assert done.returncode == 0, done.stderr
    result = ad.read_h5ad(outdir / "result.h5ad")
    assert result.shape == (1107, 507)
    reference = vbsnmf.io.read_10x(TINY)
    assert np.array_equal(result.obs_names, reference.obs_names)
    assert sorted(p.name for p in starsolo.iterdir()) == sorted(TENX_NAMES)  # input untouched


def test_truncated_checkpoint_is_not_left_open(tmp_path):
    """numpy opened the file and its zip reader failed: the handle stayed open as long as
    the error lived, on the file the message says to remove (Windows cannot remove it)."""
    X = sp.csr_matrix(np.random.default_rng(0).poisson(1.0, (30, 20)).astype(float))
    whole, cut = tmp_path / "whole.npz", tmp_path / "cut.npz"
    model = vbsnmf.VBNMF(2, random_state=0, max_iter=3, checkpoint=whole, n_threads=1)
    with pytest.warns(vbsnmf.ConvergenceWarning):
        model.fit(X)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    model.set_params(checkpoint=cut, resume=True)
    with pytest.raises(CheckpointError, match="truncated") as caught:
        model.fit(X)
    assert caught.value is not None  # the error is still alive here
    held = [f.path for f in psutil.Process().open_files()]
    assert str(cut) not in held


@pytest.mark.parametrize("name", ["", ".", "..", "sub/.."])
def test_plot_saved_to_a_folders_name_is_refused(tmp_path, monkeypatch, name):
    """``save=Path("")`` wrote the figure to ``.png`` in the current folder, hidden."""
    import matplotlib

    matplotlib.use("Agg")
    adata = ad.AnnData(sp.csr_matrix(np.random.default_rng(0).poisson(2.0, (40, 15))))
    with pytest.warns(vbsnmf.ConvergenceWarning):
        vbsnmf.tl.nmf(adata, 2, random_state=0, max_iter=5)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="names a folder, not a figure file"):
        vbsnmf.pl.elbo(adata, save=Path(name), show=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
    vbsnmf.pl.elbo(adata, save=Path("figure"), show=False)  # a name without suffix: .png
    assert (tmp_path / "figure.png").is_file()


@pytest.mark.parametrize("thin", [False, True])
def test_classic_cells_without_counts_keep_the_lower_bound(thin):
    """`tl.nmf` set the factors of cells without counts to 0, below ``epsilon``, which
    bounds every factor the solver returns (0 is right once thinned, as for the others)."""
    counts = np.random.default_rng(0).poisson(2.0, (30, 12)).astype(float)
    counts[3] = 0
    adata = ad.AnnData(sp.csr_matrix(counts))
    placed = "zero" if thin else "the lower bound epsilon=0.001"
    with pytest.warns(UserWarning, match=f"1 of the 30 cells .* their factors .*{placed}"):
        vbsnmf.tl.nmf(adata, 2, solver="hals", random_state=0, epsilon=1e-3, thin=thin)
    factors = adata.obsm["X_nmf"]
    expected = 0.0 if thin else 1e-3
    np.testing.assert_array_equal(factors[3], [expected, expected])
    if not thin:
        assert factors.min() >= 1e-3  # the bound the solver keeps, for every cell


@pytest.mark.parametrize("sparse", [False, True])
def test_classic_weights_over_every_gene_under_mask_var_are_named(sparse):
    """The solver's "weights have shape (40, 25), X has shape (40, 20)" named a matrix
    the user never passed; weights over the fitted genes still fit (a guard)."""
    counts = np.random.default_rng(0).poisson(2.0, (40, 25)).astype(float)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.var["hv"] = np.arange(25) < 20
    weights = np.ones((40, 25))
    given = sp.csr_matrix(weights) if sparse else weights
    with pytest.raises(ValueError, match=r"over every gene, and mask_var fits 20 of them"):
        vbsnmf.tl.nmf(adata, 2, solver="mu", mask_var="hv", weights=given, random_state=0)
    assert "X_nmf" not in adata.obsm
    with pytest.warns(vbsnmf.ConvergenceWarning):
        vbsnmf.tl.nmf(
            adata, 2, solver="mu", mask_var="hv", weights=weights[:, :20], random_state=0,
            max_iter=5,
        )  # fmt: skip
    assert adata.obsm["X_nmf"].shape == (40, 2)
