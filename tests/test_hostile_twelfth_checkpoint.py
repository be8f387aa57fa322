"""Checkpoints and streamed fits: the twelfth hostile review's defects, one test each.

Each test says in its docstring what was wrong; where resuming is the point, the resumed
fit is compared bitwise with an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from interrupted import Stop, stop_at

import vbsnmf
from vbsnmf import VBNMF, cli
from vbsnmf._checkpoint import (
    CheckpointError,
    CheckpointInUseError,
    CheckpointMismatchError,
    load_checkpoint,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _counts(n_cells=300, n_genes=40, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1, 1, (n_cells, 3)) @ rng.gamma(1, 1, (3, n_genes)) * 0.7
    return sp.csr_matrix(rng.poisson(rates).astype(float))


# -- 1: tol changed on resume -----------------------------------------------------------------
def test_svi_nonzeros_fit_converged_under_a_looser_tol_goes_on_under_a_tighter_one(tmp_path):
    """A nonzeros-form SVI checkpoint that converged at tol=2e-2, resumed with tol=1e-9,
    was returned at once with ``converged_=True`` (the stored flag): the new tol was
    neither applied nor refused. The resumed fit is now the uninterrupted tol=1e-9 fit."""
    X = _counts()
    fit = dict(n_components=3, solver="svi", svi_form="nonzeros", prior="gamma", n_epochs=30)
    fit.update(batch_size=2000, random_state=0, n_threads=1)
    path = tmp_path / "ck.npz"
    loose = VBNMF(tol=2e-2, checkpoint=path, **fit).fit(X)
    assert loose.converged_ and loose.n_iter_ < 30
    resumed = VBNMF(tol=1e-9, checkpoint=path, resume=True, **fit).fit(X)
    uninterrupted = VBNMF(tol=1e-9, **fit).fit(X)
    assert resumed.n_iter_ == uninterrupted.n_iter_ > loose.n_iter_
    assert resumed.converged_ == uninterrupted.converged_
    np.testing.assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)
    np.testing.assert_array_equal(resumed.gene_shape_, uninterrupted.gene_shape_)


def test_tensor_svi_fit_converged_under_a_looser_tol_goes_on_under_a_tighter_one(tmp_path):
    """The same for VBNTF's SVI: its stored convergence was kept whatever tol the resume
    gave."""
    rng = np.random.default_rng(17)
    tensor = rng.poisson(0.6, (30, 12, 8))
    coords = np.argwhere(tensor)
    values = tensor[tuple(coords.T)].astype(float)
    fit = dict(solver="svi", svi_form="nonzeros", n_epochs=40, random_state=11, n_threads=1)
    path = tmp_path / "ck.npz"
    loose = vbsnmf.VBNTF(3, tol=5e-2, checkpoint=path, **fit).fit(coords, values)
    assert loose.converged_ and loose.n_iter_ < 40
    resumed = vbsnmf.VBNTF(3, tol=1e-12, checkpoint=path, resume=True, **fit)
    resumed.fit(coords, values)
    uninterrupted = vbsnmf.VBNTF(3, tol=1e-12, **fit).fit(coords, values)
    assert resumed.n_iter_ == uninterrupted.n_iter_ > loose.n_iter_
    np.testing.assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)


# -- 2: resumed at n_epochs before that epoch's evaluation ------------------------------------
def test_resume_at_an_unevaluated_last_epoch_evaluates_it_as_the_uninterrupted_fit(tmp_path):
    """A cells-form fit (n_epochs=8, eval_every=3) stopped after epoch 4 and resumed with
    n_epochs=4 returned at once: epoch 4, the last, was never evaluated (no ELBO for it,
    the cells not refitted). It is now evaluated, bitwise as the uninterrupted 4 epochs."""
    X = _counts()
    fit = dict(n_components=3, solver="svi", batch_size=64, eval_every=3, random_state=0)
    fit.update(n_threads=1)
    path = tmp_path / "ck.npz"
    with pytest.raises(Stop):
        VBNMF(n_epochs=8, checkpoint=path, **fit).fit(X, callback=stop_at(5))
    arrays, meta = load_checkpoint(path)
    assert meta["epoch"] == 4 and list(arrays["elbo_iter"]) == [3]
    resumed = VBNMF(n_epochs=4, checkpoint=path, resume=True, **fit).fit(X)
    uninterrupted = VBNMF(n_epochs=4, **fit).fit(X)
    assert list(resumed.elbo_iter_) == [3, 4]
    np.testing.assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)
    np.testing.assert_array_equal(resumed.cell_shape_, uninterrupted.cell_shape_)
    np.testing.assert_array_equal(resumed.gene_shape_, uninterrupted.gene_shape_)


# -- 3: deeply nested metadata ----------------------------------------------------------------
def _nested_checkpoint(path: Path) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, __meta__=np.array("[" * 100000 + "]" * 100000))


def test_deeply_nested_checkpoint_metadata_is_a_damaged_checkpoint(tmp_path, capsys):
    """A checkpoint whose metadata is JSON nested 100,000 deep raised a raw RecursionError
    (and the command line ended with "internal error", exit 1, even without --resume)."""
    path = tmp_path / "ck.npz"
    _nested_checkpoint(path)
    X = _counts(40, 10)
    with pytest.raises(CheckpointError, match="not a vbsnmf checkpoint"):
        VBNMF(2, max_iter=3, n_threads=1, random_state=0, checkpoint=path, resume=True).fit(X)
    matrix = tmp_path / "m.mtx"
    scipy.io.mmwrite(matrix, sp.coo_matrix(X))
    command = ["fit", str(matrix), "--cells-as-rows", "-k", "2", "-o", str(tmp_path / "out")]
    command += ["--max-iter", "3", "--threads", "1", "--checkpoint", str(path), "--quiet"]
    for extra in ([], ["--resume"]):
        code = cli.main([*command, *extra])
        error = capsys.readouterr().err.strip()
        assert code == 2, error
        assert len(error.splitlines()) == 1 and "checkpoint" in error


# -- 4: a backed AnnData's dense X ------------------------------------------------------------
def test_backed_dense_x_is_streamed_in_bounded_memory_as_its_path(tmp_path, monkeypatch):
    """A backed AnnData whose X is dense was read whole into memory (InMemorySource of the
    h5py Dataset), while the same file given as a path was refused. Both now stream it a
    bounded block of rows at a time (peak memory under a quarter of X here, whose dense
    reads are limited to 64 KiB) and fit bitwise as the matrix in memory."""
    import vbsnmf.io._stream as stream

    monkeypatch.setattr(stream, "DENSE_READ_BYTES", 1 << 16, raising=False)
    rng = np.random.default_rng(0)
    dense = (rng.random((4000, 2000)) < 0.01).astype(np.float32) * 3  # 32 MB
    path = tmp_path / "dense.h5ad"
    ad.AnnData(X=dense).write_h5ad(path)
    fit = dict(n_components=2, solver="svi", n_epochs=2, batch_size=128, random_state=0)
    fit.update(n_threads=1)
    in_memory = VBNMF(**fit).fit(sp.csr_matrix(dense))
    backed = ad.read_h5ad(path, backed="r")
    try:
        VBNMF(**fit).fit(backed)  # numba compiled, caches filled: the peak is the data's
        tracemalloc.start()
        try:
            streamed = VBNMF(**fit).fit(backed)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        backed.file.close()
    assert peak < dense.nbytes / 4, (peak, dense.nbytes)
    from_path = VBNMF(**fit).fit(path)
    for result in (streamed, from_path):
        np.testing.assert_array_equal(result.elbo_trace_, in_memory.elbo_trace_)
        np.testing.assert_array_equal(result.cell_shape_, in_memory.cell_shape_)


# -- 5: the local fits' tol and max_iter named --------------------------------------------------
def test_cells_form_tol_or_max_iter_mismatch_names_the_parameter(tmp_path, capsys):
    """Another tol (or max_iter) on a cells-form resume was refused as "local_fit:
    checkpoint [1000, 1e-05] vs now [1000, 0.001]", an internal key; the command line
    printed the same. Now ``tol`` / ``max_iter`` (``--tol`` / ``--max-iter``)."""
    X = _counts(200, 20)
    path = tmp_path / "ck.npz"
    fit = dict(n_components=2, solver="svi", n_epochs=2, batch_size=64, random_state=0)
    fit.update(n_threads=1, checkpoint=path)
    VBNMF(**fit).fit(X)
    with pytest.raises(CheckpointMismatchError) as refused:
        VBNMF(tol=1e-3, resume=True, **fit).fit(X)
    assert "tol: checkpoint 1e-05 vs now 0.001" in str(refused.value)
    assert "local_fit" not in str(refused.value) and "max_iter" not in str(refused.value)
    with pytest.raises(CheckpointMismatchError, match=r"max_iter: checkpoint 1000 vs now 50\b"):
        VBNMF(max_iter=50, resume=True, **fit).fit(X)

    matrix = tmp_path / "m.mtx"
    scipy.io.mmwrite(matrix, sp.coo_matrix(X))
    command = ["fit", str(matrix), "--cells-as-rows", "-k", "2", "--solver", "svi"]
    command += ["--epochs", "2", "--batch-size", "64", "--threads", "1", "--quiet"]
    command += ["--checkpoint", str(tmp_path / "cli.npz")]
    assert cli.main([*command, "-o", str(tmp_path / "o1")]) == 0
    capsys.readouterr()
    code = cli.main([*command, "-o", str(tmp_path / "o2"), "--tol", "1e-3", "--resume"])
    error = capsys.readouterr().err
    assert code == 2
    assert "--tol: checkpoint 1e-05 vs now 0.001" in error and "local_fit" not in error


# -- 6: accelerate recorded for SVI -----------------------------------------------------------
def test_svi_checkpoint_resumes_whatever_accelerate_says(tmp_path):
    """An SVI checkpoint resumed with accelerate=False was refused ("accelerate: True vs
    False") although SVI never accelerates. It now resumes, bitwise; and a checkpoint
    written before (its config recording accelerate=True for SVI) still resumes."""
    X = _counts(200, 20)
    fit = dict(n_components=2, solver="svi", batch_size=64, random_state=0, n_threads=1)
    path = tmp_path / "ck.npz"
    VBNMF(n_epochs=2, checkpoint=path, **fit).fit(X)
    resumed = VBNMF(n_epochs=3, checkpoint=path, resume=True, accelerate=False, **fit).fit(X)
    uninterrupted = VBNMF(n_epochs=3, **fit).fit(X)
    np.testing.assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)

    old = tmp_path / "old.npz"  # as the versions before wrote it
    VBNMF(n_epochs=2, checkpoint=old, **fit).fit(X)
    arrays, meta = load_checkpoint(old)
    meta["config"]["accelerate"] = True
    with open(old, "wb") as handle:
        np.savez(
            handle, __meta__=np.array(json.dumps({**meta, "format": "vbsnmf-checkpoint"})), **arrays
        )
    resumed = VBNMF(n_epochs=3, checkpoint=old, resume=True, **fit).fit(X)
    np.testing.assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)


# -- 7: the command line's own --convert-to on --resume ---------------------------------------
def test_cli_resume_with_an_existing_convert_to_says_how_to_resume_bitwise(tmp_path, capsys):
    """Re-running ``fit X.mtx --solver svi --convert-to C.h5ad --checkpoint CK`` with
    --resume was refused by the conversion the first run made ("--convert-to C.h5ad
    exists; name a new file"), without saying how to resume. The message now says so, and
    its advice (C.h5ad as the input) resumes bitwise as the uninterrupted fit."""
    X = _counts(300, 30, seed=3)
    matrix = tmp_path / "m.mtx"
    scipy.io.mmwrite(matrix, sp.coo_matrix(X))
    converted, checkpoint = tmp_path / "conv.h5ad", tmp_path / "ck.npz"
    common = ["-k", "3", "--solver", "svi", "--threads", "1", "--quiet"]
    mtx = ["fit", str(matrix), "--cells-as-rows", *common]
    first = [*mtx, "--epochs", "2", "--convert-to", str(converted)]
    assert cli.main([*first, "--checkpoint", str(checkpoint), "-o", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    again = [*mtx, "--epochs", "4", "--convert-to", str(converted), "--checkpoint", str(checkpoint)]
    assert cli.main([*again, "--resume", "-o", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err
    assert "to resume, give" in error and str(converted) in error
    advised = ["fit", str(converted), *common, "--epochs", "4", "--checkpoint", str(checkpoint)]
    assert cli.main([*advised, "--resume", "-o", str(tmp_path / "c")]) == 0
    assert cli.main([*mtx, "--epochs", "4", "-o", str(tmp_path / "d")]) == 0
    resumed = ad.read_h5ad(tmp_path / "c" / "result.h5ad")
    uninterrupted = ad.read_h5ad(tmp_path / "d" / "result.h5ad")
    np.testing.assert_array_equal(resumed.obsm["X_nmf"], uninterrupted.obsm["X_nmf"])
    assert (tmp_path / "c" / "elbo.tsv").read_text() == (tmp_path / "d" / "elbo.tsv").read_text()


# -- 8: a Generator random_state --------------------------------------------------------------
def test_generator_random_state_is_checked_on_resume(tmp_path):
    """A checkpoint written with random_state=default_rng(0) recorded None, so a resume
    with default_rng(1) was accepted. The entropy drawn from the Generator is recorded
    now: default_rng(1) is refused, a fresh default_rng(0) resumes bitwise."""
    X = _counts()
    fit = dict(n_components=3, solver="svi", batch_size=64, n_threads=1)
    path = tmp_path / "ck.npz"
    VBNMF(n_epochs=2, random_state=np.random.default_rng(0), checkpoint=path, **fit).fit(X)
    with pytest.raises(CheckpointMismatchError, match="random_state"):
        rng = np.random.default_rng(1)
        VBNMF(n_epochs=4, random_state=rng, checkpoint=path, resume=True, **fit).fit(X)
    rng = np.random.default_rng(0)
    resumed = VBNMF(n_epochs=4, random_state=rng, checkpoint=path, resume=True, **fit).fit(X)
    uninterrupted = VBNMF(n_epochs=4, random_state=np.random.default_rng(0), **fit).fit(X)
    np.testing.assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)


# -- 9: the checkpoint's folder removed mid-fit -----------------------------------------------
def test_checkpoint_folder_removed_mid_fit_keeps_the_lock(tmp_path):
    """Deleting the checkpoint's folder mid-fit: the next save recreated folder and
    checkpoint but not the lock, so a second fit on the path ran instead of being refused
    (CheckpointInUseError). The lock is now taken again; the fit ends as an uninterrupted
    one."""
    X = _counts()
    folder = tmp_path / "ck"
    folder.mkdir()
    path = folder / "ck.npz"
    fit = dict(n_components=3, solver="svi", batch_size=64, n_threads=1)
    outcome = {}

    def callback(n, params, trace):
        if n == 2:
            shutil.rmtree(folder)
        if n == 3:  # the save of epoch 2 recreated the folder
            try:
                VBNMF(n_epochs=1, random_state=1, checkpoint=path, **fit).fit(X)
                outcome["second"] = "ran"
            except CheckpointInUseError:
                outcome["second"] = "refused"

    first = VBNMF(n_epochs=5, random_state=0, checkpoint=path, **fit).fit(X, callback=callback)
    assert outcome["second"] == "refused"
    uninterrupted = VBNMF(n_epochs=5, random_state=0, **fit).fit(X)
    np.testing.assert_array_equal(first.elbo_trace_, uninterrupted.elbo_trace_)


def test_checkpoint_folder_replaced_by_a_file_is_a_typed_error(tmp_path):
    """The checkpoint's folder replaced by a file mid-fit: the fit died with a raw
    FileExistsError. Now a CheckpointError naming the path."""
    X = _counts()
    folder = tmp_path / "ck"
    folder.mkdir()
    path = folder / "ck.npz"

    def callback(n, params, trace):
        if n == 2:
            shutil.rmtree(folder)
            folder.write_text("not a folder")

    model = VBNMF(3, solver="svi", batch_size=64, n_epochs=4, n_threads=1, checkpoint=path)
    with pytest.raises(CheckpointError, match=str(folder)):
        model.fit(X, callback=callback)


def test_lock_file_removed_while_another_fit_saved_there_stops_the_fit(tmp_path):
    """If another fit saved at the path while the lock was gone, this fit stops with a
    CheckpointError instead of overwriting that checkpoint."""
    X = _counts()
    folder = tmp_path / "ck"
    folder.mkdir()
    path = folder / "ck.npz"
    fit = dict(n_components=3, solver="svi", batch_size=64, n_threads=1)

    def callback(n, params, trace):
        if n == 2:
            shutil.rmtree(folder)
            VBNMF(n_epochs=1, random_state=1, checkpoint=path, **fit).fit(X)

    with pytest.raises(CheckpointError, match="removed during the fit"):
        VBNMF(n_epochs=4, random_state=0, checkpoint=path, **fit).fit(X, callback=callback)
    assert load_checkpoint(path)[1]["config"]["random_state"] == 1  # the other fit's, kept


# -- 10: stored zeros and the recorded nnz ----------------------------------------------------
def test_stored_zeros_do_not_stop_the_same_counts_resuming_across_routes(tmp_path):
    """An .h5ad whose CSR X stores explicit zeros recorded nnz with the zeros (indptr[-1])
    while the fingerprint skips them: the same counts without the zeros (file or memory)
    could not resume its checkpoint ("nnz: 4390 vs 3762"). Now they resume, bitwise."""
    X = _counts(200, 30)
    X.data[::7] = 0
    with_zeros = tmp_path / "z.h5ad"
    ad.AnnData(X=X).write_h5ad(with_zeros)
    clean = X.copy()
    clean.eliminate_zeros()
    without = tmp_path / "clean.h5ad"
    ad.AnnData(X=clean).write_h5ad(without)
    fit = dict(n_components=3, solver="svi", batch_size=64, random_state=0, n_threads=1)
    uninterrupted = VBNMF(n_epochs=3, **fit).fit(clean)
    for counts in (without, clean, X):
        path = tmp_path / f"ck{id(counts)}.npz"
        VBNMF(n_epochs=2, checkpoint=path, **fit).fit(with_zeros)
        resumed = VBNMF(n_epochs=3, checkpoint=path, resume=True, **fit).fit(counts)
        np.testing.assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)
    # and the other way round: a checkpoint of the clean file, resumed from stored zeros
    path = tmp_path / "clean.npz"
    VBNMF(n_epochs=2, checkpoint=path, **fit).fit(without)
    resumed = VBNMF(n_epochs=3, checkpoint=path, resume=True, **fit).fit(with_zeros)
    np.testing.assert_array_equal(resumed.elbo_trace_, uninterrupted.elbo_trace_)
