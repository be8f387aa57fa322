"""The thirty-first hostile pass over checkpoints and what vbsnmf writes.

- A full disk met when a written file is flushed to disk (the ``fsync`` before its rename,
  where delayed allocation, NFS and quotas report it) was a bare "No space left on device"
  naming no file (``result.h5ad``, a checkpoint's save, a figure); `write_nmf_tables`
  flushed each table only as its rename came, so that ``elbo.tsv`` had replaced the earlier
  one when the flush of ``gene_loadings.tsv.gz`` failed, leaving a new trace beside the
  earlier factor tables, and the error named the next table out of the stack. Every
  table is now flushed before the first rename, and a failed flush names its file.
- A checkpoint resumed on data with other counts (a file rewritten between the runs) was
  refused as "written by a different fit (data_fingerprint: checkpoint 'db65bfd455e3ba57'
  vs now 'a8eabf4e92d08856', total_count: ...)", and one of another ``mask`` with the mask's
  hash too: a fit's setting named by an internal key, with hex digits no user can check.
  It says "written for other data (total_count: ...)" when only the data differ, and the
  counts and the mask in words.
"""

from __future__ import annotations

import errno
import os
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf as vb
from vbsnmf import _atomic, io


def _fitted(seed: int = 0, max_iter: int = 5) -> ad.AnnData:
    rng = np.random.default_rng(0)
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(1.0, (60, 30)).astype(np.float32)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vb.tl.nmf(adata, n_components=2, max_iter=max_iter, random_state=seed)
    return adata


def _disk_full_flushing(monkeypatch, name: str) -> None:
    """``os.fsync`` of the temporary of the file ``name`` fails as a full disk does."""
    fsync = os.fsync

    def full_disk(descriptor):
        flushed = os.path.basename(os.readlink(f"/proc/self/fd/{descriptor}"))
        if flushed.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(descriptor)

    monkeypatch.setattr(_atomic.os, "fsync", full_disk)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("failing", ["elbo.tsv", "gene_loadings.tsv.gz", "cell_factors.tsv.gz"])
def test_write_nmf_tables_full_disk_at_a_flush_replaces_no_table(tmp_path, monkeypatch, failing):
    """A full disk at the flush of any table leaves the earlier three tables as they were
    (``elbo.tsv`` was replaced when a factor table's flush failed) and names that table
    (the next one out, or none)."""
    io.write_nmf_tables(_fitted(), tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    later = _fitted(seed=1, max_iter=8)
    _disk_full_flushing(monkeypatch, failing)
    with pytest.raises(OSError) as raised:
        io.write_nmf_tables(later, tmp_path)
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(tmp_path / failing)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_full_disk_at_the_flush_of_a_checkpoint_save_names_the_checkpoint(tmp_path, monkeypatch):
    """A checkpoint's save whose flush meets a full disk names the checkpoint, and the
    earlier save is kept whole and resumable."""
    rng = np.random.default_rng(1)
    X = sp.csr_matrix(rng.poisson(2.0, (50, 20)).astype(np.float64))
    path = tmp_path / "fit.npz"
    settings = dict(n_components=2, random_state=0, n_threads=1, checkpoint=path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stopped at max_iter: the point
        vb.VBNMF(**settings, max_iter=4, checkpoint_every=2).fit(X)
    saved = path.read_bytes()
    _disk_full_flushing(monkeypatch, "fit.npz")
    with pytest.raises(OSError) as raised:
        vb.VBNMF(**settings, max_iter=8, checkpoint_every=2, resume=True).fit(X)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert path.read_bytes() == saved
    assert sorted(os.listdir(tmp_path)) == ["fit.npz"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_full_disk_at_the_flush_of_a_result_names_the_result(tmp_path, monkeypatch):
    """`write_result`'s flush meeting a full disk names the ``.h5ad`` and writes nothing."""
    adata = _fitted()
    _disk_full_flushing(monkeypatch, "out.h5ad")
    with pytest.raises(OSError) as raised:
        io.write_result(adata, tmp_path / "out.h5ad")
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(tmp_path / "out.h5ad")
    assert os.listdir(tmp_path) == []


def _checkpointed(tmp_path, X, mask=None):
    path = tmp_path / "fit.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vb.VBNMF(2, max_iter=3, random_state=0, checkpoint=path).fit(X, mask=mask)
    return path


def _resume_refused(path, X, mask=None) -> str:
    with pytest.raises(vb.CheckpointMismatchError) as raised:
        vb.VBNMF(2, max_iter=5, random_state=0, checkpoint=path, resume=True).fit(X, mask=mask)
    return str(raised.value)


def _counts(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix(rng.poisson(1.0, (40, 15)).astype(np.float64))


def test_a_checkpoint_of_other_counts_is_refused_as_other_data_without_hashes(tmp_path):
    """Other counts (another total): "written for other data", naming the total, and no
    fingerprint's hex digits."""
    X = _counts()
    path = _checkpointed(tmp_path, X)
    other = X.copy()
    other.data[:3] += 1.0
    message = _resume_refused(path, other)
    assert "written for other data (total_count: checkpoint" in message
    assert "fingerprint" not in message


def test_a_checkpoint_of_another_mask_names_the_mask_in_words(tmp_path):
    """A checkpoint of a fit without ``mask`` resumed with one, and of another mask:
    the mask is named in words, not as its hash."""
    X = _counts()
    mask = sp.csr_matrix(np.eye(40, 15))
    message = _resume_refused(_checkpointed(tmp_path, X), X, mask)
    assert "mask: the checkpoint's fit ran without one, this fit with" in message
    assert "fingerprint" not in message and "None" not in message
    (tmp_path / "fit.npz").unlink()
    other = sp.csr_matrix(np.eye(40, 15, k=1))
    message = _resume_refused(_checkpointed(tmp_path, X, mask), X, other)
    assert "mask: other missing entries than the checkpoint's fit" in message
    assert "fingerprint" not in message


def test_a_checkpoint_of_the_same_counts_elsewhere_is_still_refused_in_words(tmp_path):
    """Guard (passes on both): the same shape, nonzeros and total but cells in another
    order is refused as other data, in words."""
    X = _counts()
    path = _checkpointed(tmp_path, X)
    message = _resume_refused(path, X[::-1])
    assert "written for other data (the same shape, nonzeros and total count" in message
