"""Defects of the atomic writers found by the eleventh hostile pass: `atomic_file` replaced a
named pipe or a device node by a regular file (as root, ``/dev/null``), a fit given a
symbolic link to a checkpoint another fit holds took its lock file beside the link and
saved into the held file, and `atomic_directory` swapped out a link to a folder (leaving
the old output where it pointed) or ran its whole block for a dangling link before
refusing it. Each test says what went wrong before its fix."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf._atomic import lock_file_of
from vbsnmf._checkpoint import Checkpointer
from vbsnmf.io import atomic_directory, atomic_file, check_checkpoint_path, write_result

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no FIFOs nor advisory locks")


def _counts() -> sp.csr_matrix:
    return sp.csr_matrix(np.random.default_rng(0).poisson(1.0, size=(40, 30)).astype(float))


def _fit(checkpoint, **kwargs) -> vbsnmf.VBNMF:
    model = vbsnmf.VBNMF(2, prior="gamma", random_state=0, n_threads=1, checkpoint=checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.set_params(**kwargs).fit(_counts())


def test_atomic_file_refuses_a_fifo_and_a_link_to_it(tmp_path):
    """`atomic_file` onto a named pipe ran its block and renamed the temporary over the
    pipe: the node was gone, a regular file in its place. Now refused before the block,
    also through a symbolic link to the pipe, which stays as it was."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    link = tmp_path / "link"
    link.symlink_to(pipe)
    for target in (pipe, link):
        ran = False
        with pytest.raises(OSError, match=r"not a regular file \(a pipe, device or socket\)"):
            with atomic_file(target) as temporary:
                ran = True
                temporary.write_text("x")
        assert not ran
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "pipe"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="mknod needs root")
def test_write_result_refuses_a_device_node(tmp_path):
    """`write_result` onto a device node (as root, ``/dev/null``) replaced the system's node
    by a regular file holding the result. Here a private copy of /dev/null (char 1:3)."""
    device = tmp_path / "mynull"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(OSError, match="not a regular file") as caught:
        write_result(ad.AnnData(np.ones((2, 2), dtype=np.float32)), device)
    assert caught.value.filename == str(device)
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["mynull"]


# Another fit's Checkpointer on the path given: it holds the lock file until killed.
_HOLDING = """
import sys, time
from vbsnmf._checkpoint import Checkpointer
with Checkpointer(sys.argv[1], 1, {}):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def held_through_link(tmp_path):
    """A checkpoint tmp_path/real.npz held by a fit in another process, and a symbolic
    link tmp_path/link.npz to it."""
    real = tmp_path / "real.npz"
    _fit(real, max_iter=2)
    link = tmp_path / "link.npz"
    link.symlink_to(real)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDING, str(real)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield real, link
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_link_to_a_checkpoint_in_use_is_refused(held_through_link):
    """The lock file was taken beside the link (``.link.npz.lock``) while the saves went
    where it points: a second fit given the link saved into the checkpoint another fit
    held, each overwriting the other's state."""
    real, link = held_through_link
    saved = real.read_bytes()
    with pytest.raises(vbsnmf.CheckpointInUseError, match="belongs to a fit running now"):
        _fit(link, max_iter=3, resume=True)
    with pytest.raises(vbsnmf.CheckpointInUseError, match=r"holds \.real\.npz\.lock beside it"):
        check_checkpoint_path(link)
    with pytest.raises(vbsnmf.CheckpointInUseError):
        with Checkpointer(link, 1, {}):
            pass
    assert real.read_bytes() == saved and link.is_symlink()
    assert not lock_file_of(link).exists()


def test_a_checkpointer_given_a_link_locks_and_saves_beside_its_file(tmp_path):
    """`Checkpointer` took its lock file beside the link, not beside the file its saves
    replace; a fit given the link must leave the link, save into its file and hold that
    file's lock."""
    folder = tmp_path / "runs"
    folder.mkdir()
    real = folder / "real.npz"
    link = tmp_path / "link.npz"
    link.symlink_to(real)
    with Checkpointer(link, 1, {}) as checkpointer:
        assert lock_file_of(real).is_file() and not lock_file_of(link).exists()
        checkpointer.save(1, {"x": np.ones(2)}, {})
    assert link.is_symlink() and real.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.npz", "runs"]
    assert [p.name for p in folder.iterdir()] == ["real.npz"]


def test_check_checkpoint_path_clears_a_killed_saves_temporary_beside_the_linked_file(tmp_path):
    """`check_checkpoint_path` looked for a killed save's temporary beside the link, while
    saves made theirs beside the file it points to: the leftover stayed there for ever."""
    real = tmp_path / "real.npz"
    _fit(real, max_iter=2)
    link = tmp_path / "link.npz"
    link.symlink_to(real)
    leftover = tmp_path / ".real.npz.ab12cd34.tmp.npz"
    leftover.write_bytes(b"PK\x03\x04 a killed save's first bytes")
    an_hour_ago = time.time() - 3600
    os.utime(leftover, (an_hour_ago, an_hour_ago))
    with pytest.warns(UserWarning, match="removed 1 leftover of killed runs"):
        checked = check_checkpoint_path(link)
    assert checked == real and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.npz", "real.npz"]


def test_atomic_directory_writes_where_a_link_points_and_keeps_it(tmp_path):
    """With ``overwrite=True`` the link itself was swapped out and deleted: the new output
    took its name as a plain folder and the folder it pointed to kept the old output."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "result.txt").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real")
    with atomic_directory(link, overwrite=True) as folder:
        (folder / "result.txt").write_text("new")
    assert link.is_symlink() and (tmp_path / "real" / "result.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    ran = False
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_directory(link):
            ran = True
    assert not ran


def test_atomic_directory_through_a_dangling_link_writes_where_it_points(tmp_path):
    """A dangling link passed the check before the block (``exists()`` follows it), the
    block ran in full, then "appeared while writing (use --force)" threw its work away,
    though nothing had appeared. Now the output is made where the link points."""
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    with atomic_directory(link) as folder:
        (folder / "result.txt").write_text("new")
    assert link.is_symlink() and (tmp_path / "nowhere" / "result.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "nowhere"]


def test_atomic_directory_refuses_a_loop_of_links_before_the_block(tmp_path):
    """A loop of links, as a dangling one, ran the whole block before it was refused as
    "appeared while writing"; now refused before any work, naming the path."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    ran = False
    with pytest.raises(OSError, match="a loop of symbolic links") as caught:
        with atomic_directory(loop):
            ran = True
    assert not ran and caught.value.filename == str(loop)
    assert [p.name for p in tmp_path.iterdir()] == ["loop"]
