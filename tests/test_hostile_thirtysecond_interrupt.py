"""The thirty-second hostile pass over interruption and failure in the middle of work.

``--force``'s swap of OUTDIR: once the new output had taken the old one's place (an
exchange), a full disk or quota that kept the hidden ``.old`` folder from being made failed
the run with exit 2, naming that folder, beside a complete new OUTDIR; where the file system
cannot exchange two folders, a failed rename of the new output into place left OUTDIR
missing and the earlier output hidden in a ``.old`` folder that the next run deletes; the
temporary OUTDIR that could not be made or renamed was named in the error (the second time
as two ``PosixPath(...)`` reprs) instead of OUTDIR. A Ctrl-C while `tl.nmf` stored its
results left the AnnData with the earlier fit dropped and the new one half stored, and one
while `tl.project` stored a projection over an earlier one mixed the two. Guards
pin what was checked and held: a stop signal at a checkpoint save of a command-line fit
(exit 143, one line, nothing left behind, the checkpoint whole) and the resumed fit equal
to the uninterrupted one; a full disk at the checkpoint save of the same fit (exit 2, one
line naming the checkpoint, nothing left behind)."""

from __future__ import annotations

import errno
import os
import signal
import threading
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from cli_output import error_lines

import vbsnmf._atomic as atomic
import vbsnmf.tl._nmf as tl_nmf
import vbsnmf.tl._project as tl_project
from vbsnmf import cli, tl
from vbsnmf._atomic import atomic_directory
from vbsnmf._checkpoint import load_checkpoint

main_thread_only = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers are set in the main thread only",
)


def _earlier_output(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "elbo.tsv").write_text("old\n")
    return target


def _others(tmp_path, *keep):
    return sorted(entry.name for entry in tmp_path.iterdir() if entry.name not in keep)


def test_full_disk_after_exchange_is_no_failure(tmp_path, monkeypatch):
    """The new OUTDIR in place by the exchange, the hidden folder that deletes the old one
    cannot be made (a full disk): the swap succeeds, the old output is deleted all the same
    and nothing is left beside OUTDIR. Before, an OSError naming '.out.XXXX.old' (exit 2
    in the command line) beside the complete new OUTDIR."""
    target = _earlier_output(tmp_path)
    real_mkdir = os.mkdir

    def full_disk(path, *args, **kwargs):
        if str(path).endswith(".old"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real_mkdir(path, *args, **kwargs)

    with atomic_directory(target, overwrite=True) as folder:
        (folder / "elbo.tsv").write_text("new\n")
        monkeypatch.setattr(os, "mkdir", full_disk)
    assert (target / "elbo.tsv").read_text() == "new\n"
    assert _others(tmp_path, "out") == []


def test_failed_rename_without_exchange_puts_the_old_output_back(tmp_path, monkeypatch):
    """Where two folders cannot be exchanged (two renames), the old OUTDIR moved aside and
    the rename of the new one failing: the old output is put back at OUTDIR and the error
    names OUTDIR. Before, OUTDIR was missing and the old output hidden in a '.old' folder,
    which the next run deletes as a killed run's leftover."""
    target = _earlier_output(tmp_path)
    real_replace = os.replace

    def failing(source, destination, *args, **kwargs):
        if str(source).endswith(".tmp") and str(destination) == str(target):
            raise OSError(errno.EIO, os.strerror(errno.EIO), source, None, destination)
        return real_replace(source, destination, *args, **kwargs)

    monkeypatch.setattr(atomic, "_exchange", lambda first, second: False)
    with pytest.raises(OSError) as raised:
        with atomic_directory(target, overwrite=True) as folder:
            (folder / "elbo.tsv").write_text("new\n")
            monkeypatch.setattr(os, "replace", failing)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (target / "elbo.tsv").read_text() == "old\n"
    assert _others(tmp_path, "out") == []
    assert raised.value.errno == errno.EIO
    assert raised.value.filename == str(target) and "PosixPath" not in str(raised.value)


def test_new_outdir_errors_name_outdir(tmp_path, monkeypatch):
    """A new OUTDIR's temporary folder that cannot be renamed into place (a quota) or made
    (a full disk): the error names OUTDIR, and nothing is left. Before, the hidden
    '.out.XXXX.tmp', the first time as "PosixPath('...') -> PosixPath('...')"."""
    target = tmp_path / "out"
    real_replace, real_mkdir = os.replace, os.mkdir

    def quota(source, destination, *args, **kwargs):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), source, None, destination)

    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    with pytest.raises(OSError) as renamed:
        with atomic_directory(target) as folder:
            (folder / "elbo.tsv").write_text("new\n")
            monkeypatch.setattr(os, "replace", quota)
    monkeypatch.setattr(os, "replace", real_replace)
    monkeypatch.setattr(os, "mkdir", full_disk)
    with pytest.raises(OSError) as made:
        with atomic_directory(target):
            pass
    monkeypatch.setattr(os, "mkdir", real_mkdir)
    for error, number in ((renamed.value, errno.EDQUOT), (made.value, errno.ENOSPC)):
        assert error.errno == number
        assert error.filename == str(target), str(error)
        assert "PosixPath" not in str(error) and ".tmp" not in str(error)
    assert _others(tmp_path) == []


@main_thread_only
def test_tl_nmf_ctrl_c_while_storing_keeps_one_whole_fit(monkeypatch):
    """A Ctrl-C that arrives once tl.nmf has dropped the earlier fit is raised only once the
    new fit is stored whole. Before, the AnnData held neither fit (its .obsm['X_nmf'] and
    .uns['nmf'] gone)."""
    rng = np.random.default_rng(0)
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(2.0, (40, 20)).astype(np.float32)))
    settings = {"max_iter": 5, "n_threads": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 3, random_state=0, **settings)
        earlier = adata.obsm["X_nmf"].copy()
        real_drop = tl_nmf.drop_fit

        def dropping(*args, **kwargs):
            real_drop(*args, **kwargs)
            signal.raise_signal(signal.SIGINT)  # Ctrl-C, at this very moment

        monkeypatch.setattr(tl_nmf, "drop_fit", dropping)
        with pytest.raises(KeyboardInterrupt):
            tl.nmf(adata, 3, random_state=1, **settings)
    assert {"X_nmf", "X_nmf_usage"} <= set(adata.obsm) and "NMF" in adata.varm
    assert adata.uns["nmf"]["params"]["random_state"] == 1
    assert not np.array_equal(adata.obsm["X_nmf"], earlier)


@main_thread_only
def test_tl_project_ctrl_c_while_storing_keeps_one_whole_projection(monkeypatch):
    """A Ctrl-C that arrives while tl.project stores a new projection over an earlier one
    is raised only once all of it is stored. Before, the new .obsm['X_nmf'] stood beside
    the earlier .obsm['X_nmf_usage'] and record."""
    rng = np.random.default_rng(0)
    reference = ad.AnnData(sp.csr_matrix(rng.poisson(2.0, (40, 20)).astype(np.float32)))
    cells = ad.AnnData(
        sp.csr_matrix(rng.poisson(2.0, (15, 20)).astype(np.float32)), var=reference.var.copy()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(reference, 3, random_state=0, max_iter=10, n_threads=1)
        tl.project(cells, reference)
        earlier = {name: cells.obsm[name].copy() for name in ("X_nmf", "X_nmf_usage")}
        cells.X = sp.csr_matrix(rng.poisson(3.0, (15, 20)).astype(np.float32))
        real_arrays = tl_project.cell_factor_arrays

        class Interrupting(dict):
            def items(self):
                for number, item in enumerate(super().items()):
                    yield item
                    if number == 0:
                        signal.raise_signal(signal.SIGINT)  # Ctrl-C after the first entry

        monkeypatch.setattr(
            tl_project, "cell_factor_arrays", lambda *a, **k: Interrupting(real_arrays(*a, **k))
        )
        with pytest.raises(KeyboardInterrupt):
            tl.project(cells, reference)
    replaced = [name for name in earlier if not np.array_equal(cells.obsm[name], earlier[name])]
    assert replaced == ["X_nmf", "X_nmf_usage"]


def _cli(args, capsys):
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, error_lines(captured.err)


def _fit_args(tmp_path, out: str):
    return [
        "fit",
        str(tmp_path / "counts.h5ad"),
        "-o",
        str(tmp_path / out),
        "-k",
        "3",
        "--max-iter",
        "12",
        "--seed",
        "2",
        "--threads",
        "1",
        "--quiet",
        "--checkpoint",
        str(tmp_path / "fit.npz"),
    ]


@pytest.fixture
def counts_file(tmp_path):
    rng = np.random.default_rng(1)
    counts = rng.poisson(rng.gamma(0.5, 2, (60, 3)) @ rng.gamma(0.5, 2, (3, 25)))
    ad.AnnData(sp.csr_matrix(counts.astype(np.float32))).write_h5ad(tmp_path / "counts.h5ad")
    return tmp_path / "counts.h5ad"


@main_thread_only
def test_cli_sigterm_at_a_checkpoint_save_then_resume(tmp_path, counts_file, monkeypatch, capsys):
    """Guard (held before this pass): SIGTERM as the third checkpoint is written ends the
    fit with exit 143 and one line, leaves no OUTDIR, no temporary and no lock file, and a
    whole checkpoint (the second save); resumed, the fit writes the uninterrupted fit's
    ELBO trace and factors."""
    counts = counts_file.read_bytes()
    saves = {"n": 0}
    real_savez = np.savez

    def savez(*args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 3:
            signal.raise_signal(signal.SIGTERM)
        return real_savez(*args, **kwargs)

    monkeypatch.setattr(np, "savez", savez)
    code, lines = _cli(_fit_args(tmp_path, "out"), capsys)
    monkeypatch.setattr(np, "savez", real_savez)
    assert code == 128 + signal.SIGTERM and len(lines) == 1, lines
    assert "no output written" in lines[0]
    assert _others(tmp_path) == ["counts.h5ad", "fit.npz"]
    load_checkpoint(tmp_path / "fit.npz")
    code, lines = _cli([*_fit_args(tmp_path, "out"), "--resume"], capsys)
    assert code == 0, lines
    reference = _fit_args(tmp_path, "reference")[:-2]  # no checkpoint
    assert _cli(reference, capsys)[0] == 0
    for name in ("elbo.tsv", "cell_factors.tsv.gz", "gene_loadings.tsv.gz"):
        assert (tmp_path / "out" / name).read_bytes() == (
            tmp_path / "reference" / name
        ).read_bytes()
    assert counts_file.read_bytes() == counts


def test_cli_full_disk_at_a_checkpoint_save(tmp_path, counts_file, monkeypatch, capsys):
    """Guard (held before this pass): a full disk as a checkpoint is written ends the fit
    with exit 2 and one line naming the checkpoint, no OUTDIR, no temporary, no lock file."""
    real_savez = np.savez

    def savez(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", savez)
    code, lines = _cli(_fit_args(tmp_path, "out"), capsys)
    monkeypatch.setattr(np, "savez", real_savez)
    assert code == 2 and len(lines) == 1, lines
    assert "No space left on device" in lines[0] and str(tmp_path / "fit.npz") in lines[0]
    assert _others(tmp_path) == ["counts.h5ad"]
