"""Paths with spaces named in shell quotes found by the thirty-seventh hostile pass (third
wave): the second wave's `quoted_path` named a user's path in quotes in the command line's
and `vbsnmf.io._paths`' messages, but the checkpoint's errors and warning, the atomic
writers', the readers' and writers' own, a backed AnnData's in `vbsnmf.tl.nmf` and the
command line's account of its input still named it bare ("checkpoint /data/my runs/fit.npz
holds a saved fit": where does the path end?). `quoted_path` now lives in
`vbsnmf._quoting`, below `_atomic` and `_checkpoint`, which import it without a cycle."""

from __future__ import annotations

import subprocess
import sys
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import vbsnmf
from vbsnmf import cli
from vbsnmf._atomic import atomic_directory, check_target
from vbsnmf._checkpoint import CheckpointError, load_checkpoint
from vbsnmf._tensor import check_checkpoint as check_tensor_checkpoint
from vbsnmf.io import read, read_h5ad, write_nmf_tables, write_result
from vbsnmf.io._stream import open_source


def _counts(n_cells: int = 40, n_genes: int = 10) -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    return sp.csr_matrix(rng.poisson(1.0, (n_cells, n_genes)).astype(np.float32))


def _quoted(path) -> str:
    return f"'{path}'"


@pytest.fixture(scope="module")
def fitted() -> ad.AnnData:
    adata = ad.AnnData(_counts())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(adata, 2, max_iter=2, random_state=0, n_threads=1)
    return adata


# -- the checkpoint ---------------------------------------------------------------------------
def test_fresh_fit_over_a_saved_checkpoint_warns_with_its_path_quoted(tmp_path):
    """The 'holds a saved fit' warning named ``my runs/fit.npz`` bare."""
    checkpoint = tmp_path / "my runs" / "fit.npz"
    params = dict(checkpoint=checkpoint, checkpoint_every=1, max_iter=2, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(2, random_state=0, **params).fit(_counts())
        with pytest.warns(UserWarning, match="holds a saved fit") as caught:
            vbsnmf.VBNMF(2, random_state=0, **params).fit(_counts())
    message = next(str(w.message) for w in caught if "holds a saved fit" in str(w.message))
    assert message.startswith(f"checkpoint {_quoted(checkpoint)} holds a saved fit"), message


def test_a_file_that_is_no_checkpoint_is_named_quoted(tmp_path):
    path = tmp_path / "not one.npz"
    path.write_bytes(b"plain text, no archive")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"{_quoted(path)} is not a vbsnmf checkpoint")


# -- atomic outputs ---------------------------------------------------------------------------
def test_atomic_directory_over_an_existing_folder_names_it_quoted(tmp_path):
    target = tmp_path / "my out"
    target.mkdir()
    with pytest.raises(FileExistsError) as caught:
        with atomic_directory(target):
            pass
    assert str(caught.value) == f"{_quoted(target)} already exists (use --force to replace it)"


def test_atomic_target_in_a_missing_folder_names_the_file_quoted(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        check_target(tmp_path / "gone" / "my result.h5ad")
    assert caught.value.strerror == "the folder for 'my result.h5ad' does not exist"


# -- the readers ------------------------------------------------------------------------------
def _mtx(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.mmwrite(str(path), sp.coo_matrix(np.array([[1.0, 0.0], [2.0, 3.0]])))
    return path


def test_read_of_an_mtx_without_its_orientation_names_it_quoted(tmp_path):
    path = _mtx(tmp_path / "my data" / "m.mtx")
    with pytest.raises(ValueError) as caught:
        read(path)
    assert str(caught.value).startswith(f"{_quoted(path)}: say which axis"), caught.value


def test_open_source_of_an_mtx_without_its_orientation_names_it_quoted(tmp_path):
    path = _mtx(tmp_path / "my data" / "m.mtx")
    with pytest.raises(ValueError) as caught:
        open_source(path)
    assert str(caught.value).startswith(f"{_quoted(path)}: a Matrix Market file"), caught.value


def test_an_outdir_given_as_a_10x_folder_names_its_files_quoted(tmp_path):
    """The advice to give the fit's result.h5ad as the input named it bare: in a folder
    read as 10x's, and in one given as an .h5ad (`vbsnmf umap OUTDIR`)."""
    outdir = tmp_path / "my fit"
    outdir.mkdir()
    ad.AnnData(_counts()).write_h5ad(outdir / "result.h5ad")
    (outdir / "params.json").write_text("{}")
    with pytest.raises(ValueError) as caught:
        read(outdir)
    assert f"give its {_quoted(outdir / 'result.h5ad')} (" in str(caught.value), caught.value
    with pytest.raises(ValueError) as caught:
        read_h5ad(outdir)
    assert str(caught.value).endswith(f"give {_quoted(outdir / 'result.h5ad')}"), caught.value


# -- the writers ------------------------------------------------------------------------------
def test_write_nmf_tables_into_a_file_names_it_quoted(tmp_path, fitted):
    folder = tmp_path / "my tables"
    folder.write_text("")
    with pytest.raises(NotADirectoryError) as caught:
        write_nmf_tables(fitted, folder)
    assert str(caught.value).startswith(f"{_quoted(folder)} is a file"), caught.value


def test_write_result_of_another_format_names_the_path_and_advice_quoted(tmp_path, fitted):
    path = tmp_path / "my result.loom"
    with pytest.raises(ValueError) as caught:
        write_result(fitted, path)
    message = str(caught.value)
    assert message.startswith(f"{_quoted(path)}: write_result writes"), message
    assert message.endswith("name it 'my result.h5ad'"), message


# -- tl.nmf on a backed AnnData ---------------------------------------------------------------
def test_streamed_fit_names_the_backed_file_quoted(tmp_path):
    path = tmp_path / "my counts.h5ad"
    counts = _counts()
    counts.data = counts.data + 0.5  # not counts
    ad.AnnData(counts).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(ValueError) as caught:
            vbsnmf.tl.nmf(backed, 2, solver="svi", max_iter=2, n_threads=1)
    finally:
        backed.file.close()
    assert str(caught.value).startswith(f"{_quoted(path)} (X)"), caught.value


# -- the command line -------------------------------------------------------------------------
def test_fit_of_non_counts_names_the_input_quoted(tmp_path, capsys):
    path = tmp_path / "my counts.h5ad"
    counts = _counts()
    counts.data = counts.data + 0.5
    ad.AnnData(counts).write_h5ad(path)
    code = cli.main(["fit", str(path), "-k", "2", "-o", str(tmp_path / "out"), "--quiet"])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(f"vbsnmf: error: {_quoted(path)} (X) holds"), error


# -- the import rules -------------------------------------------------------------------------
def test_quoted_path_has_one_definition_below_atomic_and_checkpoint():
    """`_atomic` and `_checkpoint` import it from `vbsnmf._quoting`, which loads no numerical
    library (``vbsnmf --version`` imports none), and `vbsnmf.io._errors` re-exports it."""
    script = (
        "import sys; from vbsnmf._quoting import quoted_path; "
        "from vbsnmf import _atomic, _checkpoint; from vbsnmf.io import _errors; "
        "assert _atomic.quoted_path is _checkpoint.quoted_path is _errors.quoted_path "
        "is quoted_path; print(quoted_path('a b'))"
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (child.returncode, child.stdout) == (0, "'a b'\n"), child.stderr


def test_a_damaged_tensor_checkpoint_is_named_quoted(tmp_path):
    path = tmp_path / "my runs" / "tensor.npz"
    config = {"n_components": 2, "dtype": "float64", "prior": "fixed", "shape": [3, 4, 5]}
    with pytest.raises(CheckpointError) as caught:
        check_tensor_checkpoint({"shape_3": np.ones((2, 2))}, {}, config, path)
    assert str(caught.value).startswith(f"checkpoint {_quoted(path)} is damaged"), caught.value


def test_warm_start_resuming_its_own_checkpoint_names_it_quoted(tmp_path):
    """`tl.nmf`'s refusal to count a stored fit's passes twice named the checkpoint bare."""
    checkpoint = tmp_path / "my runs" / "fit.npz"
    adata = ad.AnnData(_counts())
    params = dict(max_iter=3, random_state=0, n_threads=1, checkpoint=checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, 2, checkpoint_every=1, **params)
        with pytest.raises(ValueError) as caught:
            vbsnmf.tl.nmf(adata, 2, warm_start=True, resume=True, **params)
    message = str(caught.value)
    assert f"checkpoint {_quoted(checkpoint)} holds the stored fit" in message, message
