"""The twenty-ninth hostile pass over what vbsnmf writes.

- Every output was made as a private temporary (mkstemp's 0600, mkdtemp's 0700) and then
  given ``0666 & ~umask``: in a folder with a default POSIX ACL, where the ACL and not the
  umask decides what ``open`` and ``mkdir`` give (a lab folder set up with ``setfacl -d``),
  the outputs were 0600 and OUTDIR 0700 where ``open`` gives 0660 and ``mkdir`` 0770: the
  lab's group was locked out of every result. A new output is now made with the mode
  ``open``/``mkdir`` use (0666/0777), from which the system takes what the ACL or umask
  removes; one that replaces a file is still made private, then given that file's
  permissions.
- A replaced file or OUTDIR (``atomic_file``, ``write_result``, ``fit --force``) lost its
  access ACL (a result shared by ``setfacl -m u:NAME:rw`` no longer was, and the owning
  group took the mask's rights), and OUTDIR its default ACL: they are kept, as
  ``open(path, "w")`` keeps them.
- `write_nmf_tables` killed by SIGKILL left its three hidden temporaries for good; the
  next write removes them once their writer is gone (they are locked while written).
- Another user's writable file in a sticky folder was replaced only after the work, by a
  rename the system refuses there: refused before it, by name.
- A full disk met while writing ``cell_factors.tsv.gz`` was reported naming ``elbo.tsv``.
- ``atomic_directory(path, overwrite=True)`` over a file gave the folder the file's 0644.
- ``atomic_directory`` without ``overwrite`` (``vbsnmf fit/demo -o OUTDIR`` without
  ``--force``) deleted its finished output when OUTDIR was made meanwhile (another run
  given the same OUTDIR finished first): hours of fit lost to "appeared while writing".
  The output is now kept beside it as ``OUTDIR.new``, as a refused ``--force`` swap keeps
  it, and the error names it. A batch fit made OUTDIR's temporary folder only after the
  fit, and lost the fit to "out already exists (use --force to replace it)": it is made
  before the fit now (as the streamed fit made it), which also refuses a second run given
  the same OUTDIR at its start rather than after its fit.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import cli, io, tl

ACCESS, DEFAULT = "system.posix_acl_access", "system.posix_acl_default"
_UNDEFINED = 0xFFFFFFFF
USER_OBJ, USER, GROUP_OBJ, MASK, OTHER = 0x01, 0x02, 0x04, 0x10, 0x20


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL as Linux stores it in its extended attribute (what ``setfacl`` writes):
    version 2, then (tag, permissions, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


# setfacl -d -m u::rwx,g::rwx,o::- (a lab's shared folder)
LAB_DEFAULT = _acl((USER_OBJ, 7, _UNDEFINED), (GROUP_OBJ, 7, _UNDEFINED), (OTHER, 0, _UNDEFINED))
# u::rw-, u:1234:rw-, g::r--, m::rw-, o::- (a file shared with one colleague)
SHARED_FILE = _acl(
    (USER_OBJ, 6, _UNDEFINED),
    (USER, 6, 1234),
    (GROUP_OBJ, 4, _UNDEFINED),
    (MASK, 6, _UNDEFINED),
    (OTHER, 0, _UNDEFINED),
)
SHARED_FOLDER = _acl(
    (USER_OBJ, 7, _UNDEFINED),
    (USER, 7, 1234),
    (GROUP_OBJ, 5, _UNDEFINED),
    (MASK, 7, _UNDEFINED),
    (OTHER, 0, _UNDEFINED),
)


def _set_acl(path, name: str, value: bytes) -> None:
    """Set an ACL, or skip the test where the system or file system has none."""
    if not hasattr(os, "setxattr"):
        pytest.skip("no extended attributes on this system")
    try:
        os.setxattr(path, name, value)
    except OSError as error:
        pytest.skip(f"no POSIX ACLs here: {error}")


def _acl_of(path, name: str = ACCESS) -> bytes | None:
    return os.getxattr(path, name) if name in os.listxattr(path) else None


FIT = ["-k", "2", "--max-iter", "2", "--threads", "1", "--quiet"]


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextlib.contextmanager
def _umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _small() -> ad.AnnData:
    adata = ad.AnnData(sp.csr_matrix(np.arange(24, dtype=np.float64).reshape(6, 4) % 5))
    adata.obs_names = [f"c{i}" for i in range(6)]
    adata.var_names = [f"g{j}" for j in range(4)]
    return adata


def test_new_outputs_in_a_folder_with_a_default_acl_get_what_open_gives(tmp_path):
    """Under a default ACL granting the group rw and umask 077, ``open`` makes 0660 and
    ``mkdir`` 0770; vbsnmf's writers made 0600 and 0700 (the umask applied by hand)."""
    folder = tmp_path / "lab"
    folder.mkdir()
    _set_acl(folder, DEFAULT, LAB_DEFAULT)
    with _umask(0o077):
        with open(folder / "plain.txt", "w") as handle:
            handle.write("x")
        os.mkdir(folder / "plain")
        with io.atomic_file(folder / "notes.txt") as temporary:
            temporary.write_text("x")
        io.write_result(_small(), folder / "result.h5ad")
        with io.atomic_directory(folder / "out") as written:
            (written / "params.json").write_text("{}")
    assert _mode(folder / "plain.txt") == 0o660 and _mode(folder / "plain") == 0o770
    assert _mode(folder / "notes.txt") == 0o660
    assert _mode(folder / "result.h5ad") == 0o660
    assert _mode(folder / "out") == 0o770
    assert _mode(folder / "out" / "params.json") == 0o660  # inherited through OUTDIR
    assert _acl_of(folder / "notes.txt") == _acl_of(folder / "plain.txt")
    assert _acl_of(folder / "out", DEFAULT) == _acl_of(folder / "plain", DEFAULT)


def test_the_command_line_writes_outdir_as_mkdir_and_open_would_under_a_default_acl(
    tmp_path, monkeypatch
):
    """``vbsnmf fit -o OUTDIR`` in a lab folder: OUTDIR 0770 and its files 0660, as the
    folder's default ACL gives (0700 and 0600 before)."""
    monkeypatch.chdir(tmp_path)
    _set_acl(tmp_path, DEFAULT, LAB_DEFAULT)
    _small().write_h5ad(tmp_path / "in.h5ad")
    with _umask(0o077), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["fit", "in.h5ad", *FIT, "-o", "out"]) == 0
    assert _mode(tmp_path / "out") == 0o770
    for name in os.listdir(tmp_path / "out"):
        assert _mode(tmp_path / "out" / name) == 0o660, name


def test_without_an_acl_new_outputs_still_follow_the_umask(tmp_path):
    """A guard (passes on both): no ACL, umask 027: files 0640, folders 0750, and a folder's
    set-group-ID bit passed on to OUTDIR as ``mkdir`` passes it on."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o2775)
    with _umask(0o027):
        with io.atomic_file(shared / "notes.txt") as temporary:
            temporary.write_text("x")
        with io.atomic_directory(shared / "out") as written:
            (written / "a.txt").write_text("x")
    assert _mode(shared / "notes.txt") == 0o640
    assert _mode(shared / "out") == 0o2750
    assert _mode(shared / "out" / "a.txt") == 0o640


def test_a_temporary_replacing_a_private_file_is_never_readable_by_others(tmp_path):
    """A guard (passes on both): the temporary that replaces a private 0600 file is made
    0600, not with the umask's wider mode, while the new content is written into it."""
    target = tmp_path / "private.txt"
    target.write_text("old")
    target.chmod(0o600)
    with _umask(0o022), io.atomic_file(target) as temporary:
        assert _mode(temporary) == 0o600
        temporary.write_text("new")
    assert _mode(target) == 0o600 and target.read_text() == "new"


def test_a_replaced_file_keeps_its_access_acl(tmp_path):
    """``atomic_file`` and ``write_result`` over a file shared with user 1234: the ACL was
    dropped (user 1234 lost access, the owning group gained write); ``open(path, "w")``
    keeps it."""
    notes, result = tmp_path / "notes.txt", tmp_path / "result.h5ad"
    notes.write_text("old")
    io.write_result(_small(), result)
    for path in (notes, result):
        _set_acl(path, ACCESS, SHARED_FILE)
    with io.atomic_file(notes) as temporary:
        temporary.write_text("new")
    io.write_result(_small(), result)
    for path in (notes, result):
        assert _acl_of(path) == SHARED_FILE, path.name
        assert _mode(path) == 0o660  # the group bits: the ACL's mask, as before
    assert notes.read_text() == "new"


def test_force_keeps_outdir_acls_and_its_files(tmp_path):
    """``--force``'s swap (`atomic_directory` with ``overwrite``) over an OUTDIR shared by
    ACL: the folder's access and default ACLs and its file's access ACL were dropped."""
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "result.h5ad").write_text("old")
    _set_acl(outdir / "result.h5ad", ACCESS, SHARED_FILE)
    _set_acl(outdir, ACCESS, SHARED_FOLDER)
    _set_acl(outdir, DEFAULT, SHARED_FOLDER)
    with io.atomic_directory(outdir, overwrite=True) as written:
        (written / "result.h5ad").write_text("new")
        (written / "params.json").write_text("{}")
    assert _acl_of(outdir) == SHARED_FOLDER
    assert _acl_of(outdir, DEFAULT) == SHARED_FOLDER
    assert _acl_of(outdir / "result.h5ad") == SHARED_FILE
    assert (outdir / "result.h5ad").read_text() == "new"


def test_a_replaced_file_without_an_acl_gets_none_from_the_folder(tmp_path):
    """``open(path, "w")`` on a file without an ACL leaves it without one, even in a folder
    whose default ACL was set later; the replacement (made in that folder, so inheriting
    it) has its inherited ACL removed and the old mode."""
    target = tmp_path / "old.txt"
    target.write_text("old")
    target.chmod(0o640)
    _set_acl(tmp_path, DEFAULT, SHARED_FOLDER)  # a named entry: new files inherit an ACL
    (tmp_path / "new.txt").write_text("")
    assert _acl_of(tmp_path / "new.txt") is not None
    with io.atomic_file(target) as temporary:
        temporary.write_text("new")
    assert _acl_of(target) is None and _mode(target) == 0o640


def test_outdir_made_while_the_block_ran_keeps_the_new_output_beside_it(tmp_path):
    """Without ``overwrite``: OUTDIR made meanwhile (by the user, or another run given the
    same OUTDIR) is left as it is, and the finished output, deleted before, is kept as
    ``OUTDIR.new``, named by the error."""
    outdir = tmp_path / "out"
    with pytest.raises(FileExistsError) as raised:
        with io.atomic_directory(outdir) as written:
            (written / "result.h5ad").write_text("hours of fit")
            outdir.mkdir()
            (outdir / "mine.txt").write_text("mine")
    message = str(raised.value)
    assert "appeared while writing" in message
    assert message.endswith(f"the new output is in {tmp_path / 'out.new'}")
    assert os.listdir(outdir) == ["mine.txt"]
    assert (tmp_path / "out.new" / "result.h5ad").read_text() == "hours of fit"
    assert sorted(os.listdir(tmp_path)) == ["out", "out.new"]  # no temporary left


def test_the_command_line_keeps_a_fit_whose_outdir_another_run_made(tmp_path, monkeypatch, capsys):
    """``vbsnmf fit -o out`` (no ``--force``) whose OUTDIR another run made while it
    fitted: one line, exit 2, the other run's OUTDIR untouched and this run's output kept
    in ``out.new`` (deleted before)."""
    monkeypatch.chdir(tmp_path)
    _small().write_h5ad(tmp_path / "in.h5ad")
    fit = cli._fit

    def fit_while_another_run_finishes(*args, **kwargs):
        seconds = fit(*args, **kwargs)
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "params.json").write_text("the other run's")
        return seconds

    monkeypatch.setattr(cli, "_fit", fit_while_another_run_finishes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(["fit", "in.h5ad", *FIT, "-o", "out"])
    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "the new output is in" in error and "out.new" in error
    assert (tmp_path / "out" / "params.json").read_text() == "the other run's"
    assert {"result.h5ad", "params.json"} <= set(os.listdir(tmp_path / "out.new"))
    assert sorted(os.listdir(tmp_path)) == ["in.h5ad", "out", "out.new"]
    kept = ad.read_h5ad(tmp_path / "out.new" / "result.h5ad")
    assert kept.obsm["X_nmf"].shape == (6, 2)


def test_tables_in_a_lab_folder_get_the_acl_mode(tmp_path):
    """`write_nmf_tables` into a folder with a default ACL: each table 0660 (0600 before)."""
    _set_acl(tmp_path, DEFAULT, LAB_DEFAULT)
    adata = _small()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, n_components=2, max_iter=2)
    with _umask(0o077):
        written = io.write_nmf_tables(adata, tmp_path)
    assert [_mode(path) for path in written] == [0o660] * len(written)


def test_a_full_disk_while_writing_a_table_names_that_table(tmp_path, monkeypatch):
    """A full disk met while writing cell_factors.tsv.gz was reported as "No space left on
    device: .../elbo.tsv": the innermost `atomic_file`, the last table's, met the error
    first and named its own target. Nothing is written, no temporary left."""
    import errno

    from vbsnmf.io import _write

    adata = _small()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, n_components=2, max_iter=2)
    monkeypatch.setattr(_write, "_TSV_ROWS", 2)  # 3 blocks of the 6 cells
    columns, blocks = _write._tsv_columns, []

    def disk_fills(*args, **kwargs):
        blocks.append(None)
        if len(blocks) == 2:  # cell_factors.tsv.gz's second block
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return columns(*args, **kwargs)

    monkeypatch.setattr(_write, "_tsv_columns", disk_fills)
    with pytest.raises(OSError) as raised:
        io.write_nmf_tables(adata, tmp_path)
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(tmp_path / "cell_factors.tsv.gz")
    assert os.listdir(tmp_path) == []


def test_a_second_run_given_the_same_outdir_is_refused_while_the_first_fits(
    tmp_path, monkeypatch, capsys
):
    """OUTDIR's temporary folder (locked) is now made before a batch fit, as the streamed
    fit made it: a second run given the same OUTDIR while the first fits is refused at
    its start ("another run is writing OUTDIR now") rather than fitting in full and
    then meeting the first one's OUTDIR."""
    monkeypatch.chdir(tmp_path)
    _small().write_h5ad(tmp_path / "in.h5ad")
    fit, second = cli._fit, []

    def fit_while_a_second_run_starts(*args, **kwargs):
        if not second:
            second.append(cli.main(["fit", "in.h5ad", *FIT, "-o", "out"]))
            second.append(capsys.readouterr().err)
        return fit(*args, **kwargs)

    monkeypatch.setattr(cli, "_fit", fit_while_a_second_run_starts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["fit", "in.h5ad", *FIT, "-o", "out"]) == 0
    code, error = second
    assert code == 2 and "another run is writing OUTDIR out now" in error
    assert sorted(os.listdir(tmp_path)) == ["in.h5ad", "out"]


NOBODY = 65534


@contextlib.contextmanager
def _sticky_folder_as_another_user():
    """A folder with the sticky bit (as /tmp or a shared scratch) that everyone may reach,
    and the effective user switched to ``nobody`` for the block; root only (it owns the
    files another user cannot replace there)."""
    import shutil
    import tempfile

    if not hasattr(os, "seteuid") or os.geteuid() != 0:
        pytest.skip("needs root, to act as another user")
    folder = tempfile.mkdtemp(prefix="vbsnmf-sticky-")
    try:
        os.chmod(folder, 0o1777)
        yield folder, lambda: _as_user(NOBODY)
    finally:
        os.seteuid(0)
        shutil.rmtree(folder)


@contextlib.contextmanager
def _as_user(uid: int):
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)


def test_another_users_file_in_a_sticky_folder_is_refused_before_the_work():
    """A group- or world-writable file of another user in a sticky folder: ``open(path,
    "w")`` may write it, the rename that ends `atomic_file` may not. The block ran in full
    (a figure drawn, a result written), then "Operation not permitted"; now refused before
    it, by `atomic_file` and by the checks before the work (`vbsnmf umap -o`, a plot's
    ``save``)."""
    from pathlib import Path

    from vbsnmf.io._paths import UnsafePathError, check_output_file

    with _sticky_folder_as_another_user() as (folder, as_nobody):
        shared = Path(folder) / "shared.png"
        shared.write_bytes(b"root's figure")
        shared.chmod(0o666)
        ran = False
        with as_nobody():
            with pytest.raises(PermissionError, match="sticky bit") as raised:
                with io.atomic_file(shared):
                    ran = True
            with pytest.raises(UnsafePathError, match="sticky bit"):
                check_output_file("-o", shared)
            # a guard: the user's own file there is still replaced
            with io.atomic_file(Path(folder) / "mine.txt") as temporary:
                temporary.write_text("first")
            with io.atomic_file(Path(folder) / "mine.txt") as temporary:
                temporary.write_text("second")
        assert not ran and raised.value.filename == str(shared)
        assert shared.read_bytes() == b"root's figure"
        assert (Path(folder) / "mine.txt").read_text() == "second"
        assert sorted(os.listdir(folder)) == ["mine.txt", "shared.png"]


def test_another_users_checkpoint_in_a_sticky_folder_is_refused_before_the_fit():
    """The checkpoint check passed (the file is writable), and the first save, after the
    first passes, failed with "Operation not permitted"."""
    from pathlib import Path

    import vbsnmf
    from vbsnmf.io._paths import UnsafePathError, check_checkpoint_path

    counts = sp.csr_matrix(np.arange(24, dtype=np.float64).reshape(6, 4) % 5)
    with _sticky_folder_as_another_user() as (folder, as_nobody):
        checkpoint = Path(folder) / "fit.npz"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vbsnmf.VBNMF(2, checkpoint=checkpoint, max_iter=2, n_threads=1).fit(counts)
        checkpoint.chmod(0o666)
        with as_nobody(), pytest.raises(UnsafePathError, match="sticky bit"):
            check_checkpoint_path(checkpoint)


# -- a killed write of the tables left its hidden temporaries for good ---------------------
_KILLED_TABLES = """
import sys, time, warnings
import numpy as np, anndata as ad, scipy.sparse as sp
from vbsnmf import io, tl
from vbsnmf.io import _write

adata = ad.AnnData(sp.csr_matrix(np.arange(24.0).reshape(6, 4) % 5))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tl.nmf(adata, n_components=2, max_iter=2)
columns = _write._tsv_columns

def slow(*args, **kwargs):
    print("writing", flush=True)
    time.sleep(120)
    return columns(*args, **kwargs)

_write._tsv_columns = slow
io.write_nmf_tables(adata, sys.argv[1])
"""
TABLES = ["cell_factors.tsv.gz", "elbo.tsv", "gene_loadings.tsv.gz"]


def _aged(path) -> None:
    """``path`` last changed two minutes ago: leftovers younger than a minute are kept."""
    import time

    old = time.time() - 120
    os.utime(path, (old, old))


def _fitted() -> ad.AnnData:
    adata = _small()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, n_components=2, max_iter=2)
    return adata


def test_the_next_table_write_removes_a_killed_writes_temporaries(tmp_path):
    """`write_nmf_tables` killed by SIGKILL while writing left ``.cell_factors.tsv.gz.
    XXXXXXXX.tmp.gz`` and its two siblings for good (a million cells' is some hundred MB);
    the next write of the tables removes them, once unchanged for a minute, with a
    warning."""
    import subprocess
    import sys

    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_TABLES, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
    finally:
        writer.kill()
        writer.communicate()
    left = sorted(os.listdir(tmp_path))
    assert len(left) == 3 and all(name.startswith(".") for name in left)
    for name in left:
        _aged(tmp_path / name)
    with pytest.warns(UserWarning, match="removed 1 leftover of killed runs") as caught:
        io.write_nmf_tables(_fitted(), tmp_path)
    assert len([w for w in caught if "removed 1 leftover" in str(w.message)]) == 3
    assert sorted(os.listdir(tmp_path)) == TABLES


def test_a_live_tables_temporary_and_a_users_file_of_that_name_are_left(tmp_path):
    """A guard of the removal above (its function is new with it, so this test cannot run
    on the code before): a temporary a live write holds (locked) and a user's file named
    like one but holding other content are neither removed nor reported."""
    from vbsnmf.io._paths import clear_table_leftovers

    users = tmp_path / ".cell_factors.tsv.gz.abcdefgh.tmp.gz"
    users.write_text("the user's notes")
    _aged(users)
    with io.atomic_file(tmp_path / "cell_factors.tsv.gz", lock=True) as temporary:
        temporary.write_bytes(b"\x1f\x8b\x08")
        _aged(temporary)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # neither is reported as a leftover
            clear_table_leftovers(tmp_path / "cell_factors.tsv.gz")
        assert temporary.exists()
    assert users.read_text() == "the user's notes"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        io.write_nmf_tables(_fitted(), tmp_path)
    assert sorted(os.listdir(tmp_path)) == [users.name, *TABLES]


def test_a_folder_replacing_a_file_gets_a_folders_mode(tmp_path):
    """`atomic_directory(path, overwrite=True)` over a file gave the new folder the file's
    mode, 0644: no search bit, so its own user (not root) could not enter it. It gets what
    ``mkdir`` gives."""
    target = tmp_path / "out"
    target.write_text("a file")
    target.chmod(0o644)
    with _umask(0o022), io.atomic_directory(target, overwrite=True) as written:
        (written / "result.txt").write_text("new")
    assert target.is_dir() and _mode(target) == 0o755
    assert (target / "result.txt").read_text() == "new"
