"""Atomic outputs: write into a temporary path beside the target, rename at the end.

A reader of the target sees either the old file (or none) or the complete new one, never
a partial write, also when the writer is interrupted (Ctrl-C, or SIGTERM / SIGHUP, which
the command line turns into the same exception) or fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from ._quoting import quoted_path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; leftovers are reported, never removed
    fcntl = None

Made = TypeVar("Made")
# Signals whose handlers raise (Ctrl-C; SIGTERM and SIGHUP in vbsnmf.cli): held while a
# temporary path is created, so the exception cannot fall between its creation and the
# code that removes it (a signal during mkdir otherwise left an empty ".out.XXXX.tmp").
_HELD = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextlib.contextmanager
def held_signals() -> Iterator[Callable[[], None]]:
    """Hold the interrupting signals during the block (several steps that must all happen
    or none); one that arrives meanwhile is handled as it would have been when the block
    ends, or earlier where the block calls the ``deliver`` it is given (a point where an
    exception is safe).

    The Python handlers are swapped for one that notes the signal: masking the signals
    (``pthread_sigmask``) holds them in the calling thread only, and once Numba's worker
    threads exist the kernel hands a Ctrl-C to one of them, whose interrupt the main
    thread then raises inside the block. Handlers can be set in the main thread only;
    elsewhere the block runs unguarded (no signal handler runs there either).
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    arrived: list[int] = []

    def note(number: int, _) -> None:
        arrived.append(number)

    previous = {
        number: signal.signal(number, note)
        for number in _HELD
        if signal.getsignal(number) is not None  # None: set outside Python, not restorable
    }

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    def deliver() -> None:
        if arrived:
            restore()
            _handle(arrived.pop(0), previous)
            arrived.clear()
            for number in previous:  # its handler returned: hold them again
                signal.signal(number, note)

    try:
        yield deliver
    finally:
        restore()
        if arrived:
            _handle(arrived[0], previous)


def _handle(number: int, handlers: dict) -> None:
    """Signal ``number`` handled as ``handlers`` (the ones held) would have handled it."""
    handler = handlers[number]
    if callable(handler):
        handler(number, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(number)  # what it would have done: end the process


@contextlib.contextmanager
def owned_temporary(make: Callable[[], Made], remove: Callable[[Made], None]) -> Iterator[Made]:
    """Yield ``make()``; ``remove(it)`` runs when the block ends, on success too (after a
    rename there is nothing left to remove) and on any exception, KeyboardInterrupt
    included. The interrupting signals are held until ``make()``'s result is owned, so
    one that arrives meanwhile is raised only once ``remove`` is sure to run.
    """
    made, owned = None, False
    try:
        with held_signals():
            made = make()
            owned = True
        yield made
    finally:
        if owned:
            remove(made)


# Bytes in one file name on the filesystems we meet (ext4, APFS, NTFS, tmpfs).
_NAME_MAX = 255


def temporary_prefix(target: Path, suffix: str) -> str:
    """The mkstemp/mkdtemp prefix ``.name.`` for a temporary beside ``target``, ``name`` cut
    so that the temporary's name (prefix, 8 random characters, ``suffix``) is no longer
    than a name ``target`` may have: a name near the limit is the user's right.

    A name cut ends in ``-`` and 8 hex digits of a hash of the whole name: two targets
    whose long names begin alike would otherwise share their temporaries' names, and a
    run for one took the other's (an earlier output kept aside) for its own leftover.
    """
    room = max(_NAME_MAX - 10 - len(os.fsencode(suffix)), 0)
    whole = os.fsencode(target.name)
    if len(whole) <= room:
        return f".{target.name}."
    digest = hashlib.sha256(whole).hexdigest()[:8]
    # cut between characters (a UTF-8 one cut in two is dropped), then decoded as the file
    # system encodes names: a str of the decoded characters could not be encoded back under
    # an ASCII one (LC_ALL=C with PYTHONUTF8=0), and a long accented name was refused
    cut = whole[: max(room - 9, 0)].decode("utf-8", errors="ignore").encode("utf-8")
    return f".{os.fsdecode(cut)}-{digest}."


def file_temporary_affixes(target: Path) -> tuple[str, str]:
    """The mkstemp ``prefix`` and ``suffix`` of `atomic_file`'s temporary for ``target``: its
    suffix kept (writers such as matplotlib pick the format from it) unless it is long."""
    suffix = f".tmp{target.suffix}" if len(target.suffix) <= 16 else ".tmp"
    return temporary_prefix(target, suffix), suffix


def check_name_length(target: Path) -> None:
    """A name longer than a file name may be, named now: after the work, its rename fails."""
    if len(os.fsencode(target.name)) > _NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(target))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_permissions(path: Path) -> None:
    """What ``open`` would have given a new file where the folder has no default ACL, for a
    temporary made private (`_make_file`) whose target has gone meanwhile."""
    path.chmod(0o666 & ~_umask())


# Characters of the random part of a temporary's name, as `tempfile` picks them (and as
# `vbsnmf.io.check_outdir` recognises a killed run's leftovers by them).
_NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"
_RANDOM = random.SystemRandom()


def _make_temporary(make: Callable[[str], Made], prefix: str, suffix: str, folder: Path) -> Made:
    """``make(path)`` of a new name ``prefix`` + 8 random characters + ``suffix`` in
    ``folder``, tried again with another name while one exists (as `tempfile` does)."""
    for _ in range(10_000):
        name = prefix + "".join(_RANDOM.choices(_NAME_CHARACTERS, k=8)) + suffix
        try:
            return make(os.path.join(folder, name))
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary name found", str(folder))


def _make_file(prefix: str, suffix: str, folder: Path, *, private: bool) -> tuple[int, str]:
    """`tempfile.mkstemp`, but a temporary that is not ``private`` is made with the mode
    ``open`` makes a new file with (0666), from which the system takes what the folder's
    default ACL or else the umask removes: mkstemp's 0600 then chmod to ``0666 & ~umask``
    gave 0600 in a lab folder whose default ACL grants its group read and write, where
    ``open`` gives 0660, and a chmod recomputes the ACL's mask from the mode. A private
    one (0600) replaces a file, whose permissions it takes once written."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    mode = 0o600 if private else 0o666

    def make(path: str) -> tuple[int, str]:
        return os.open(path, flags, mode), os.path.abspath(path)

    return _make_temporary(make, prefix, suffix, folder)


def _make_folder(prefix: str, suffix: str, folder: Path, *, private: bool) -> str:
    """`tempfile.mkdtemp`, but a folder that is not ``private`` is made as ``mkdir`` makes
    one (0777 less the default ACL or the umask; the set-group-ID bit of a shared folder
    passed on), as `_make_file` makes a file. A private one (0700) replaces a folder."""

    def make(path: str) -> str:
        os.mkdir(path, 0o700 if private else 0o777)
        return os.path.abspath(path)

    return _make_temporary(make, prefix, suffix, folder)


def _permissions_of(target: Path, temporary: Path, *, private: bool) -> None:
    """``temporary`` given what ``open(target, "w")`` would leave: the group and mode of
    the file it replaces (a user's private 0600 stays private, a lab's group keeps its
    access; `_keep_permissions`), or for a new file what it was made with (`_make_file`),
    or the default if it was made ``private`` for a target that has gone since."""
    try:
        replaced = os.stat(target)
    except FileNotFoundError:
        if private:
            _default_permissions(temporary)
    else:
        _keep_permissions(temporary, replaced, target)


def _folder_permissions(
    target: Path, temporary: Path, *, replacing: bool, private: bool = True
) -> None:
    """``temporary``, the folder that becomes ``target``, given the group and mode of the
    folder it replaces and each of its files those of the file of the same name there (a
    private 0700 OUTDIR and its 0600 files stay private after ``--force``, a lab's group
    keeps its access), or what ``mkdir`` gives a new folder: as it was made if not
    ``private`` (`_make_folder`), else the default mode and the set-group-ID bit that a
    shared folder passes on to the folders made in it (the private 0700 keeps it, a
    plain chmod cleared it)."""
    replaced = os.stat(target) if replacing else None
    if replaced is None or not stat.S_ISDIR(replaced.st_mode):
        # a new folder, or one that replaces a file: a file's mode (0644) lacked the
        # search bits, and the folder made could not be entered by its own user
        if private:
            inherited = stat.S_IMODE(temporary.stat().st_mode) & stat.S_ISGID
            temporary.chmod((0o777 & ~_umask()) | inherited)
        return
    _keep_permissions(temporary, replaced, target)
    for entry in temporary.iterdir():
        try:
            replaced = os.stat(target / entry.name)
        except OSError:  # a file the old output did not have
            continue
        if stat.S_ISREG(replaced.st_mode) and entry.is_file():
            _keep_permissions(entry, replaced, target / entry.name)


def _keep_permissions(path: Path, replaced: os.stat_result, replaced_path: Path) -> None:
    """``path`` given the group, the ACLs (`_keep_acls`) and the mode of the file or folder
    at ``replaced_path`` (whose `os.stat` is ``replaced``). The group first: a change of
    group clears a file's set-group-ID bit. A group the user is not in cannot be given
    (only root may): the mode is kept all the same. The mode last, as setting an ACL sets
    the mode's group bits to its mask."""
    if path.stat().st_gid != replaced.st_gid:
        with contextlib.suppress(PermissionError):
            os.chown(path, -1, replaced.st_gid)
    _keep_acls(path, replaced_path, folder=stat.S_ISDIR(replaced.st_mode))
    path.chmod(stat.S_IMODE(replaced.st_mode))


# The extended attributes holding a POSIX ACL (Linux): the access ACL of a file or folder,
# and the default ACL a folder passes on to what is made in it.
_ACCESS_ACL, _DEFAULT_ACL = "system.posix_acl_access", "system.posix_acl_default"


def _keep_acls(path: Path, replaced: Path, *, folder: bool) -> None:
    """``path`` given the POSIX ACLs of ``replaced`` (its access ACL, and a folder's default
    ACL), as ``open(replaced, "w")`` would have kept them: a file shared with a colleague
    by ``setfacl -m u:NAME:rw`` lost that entry when replaced, and its owning group took
    the rights of the ACL's mask. An ACL ``path`` inherited from its folder's default
    ACL, where ``replaced`` has none, is removed. Nothing is done where the system or the
    file system has no ACLs."""
    if not hasattr(os, "getxattr"):
        return
    for name in (_ACCESS_ACL, _DEFAULT_ACL) if folder else (_ACCESS_ACL,):
        try:
            entries = os.getxattr(replaced, name)
        except OSError:  # none there (ENODATA), or no ACLs on this file system
            entries = None
        with contextlib.suppress(OSError):
            if entries is not None:
                os.setxattr(path, name, entries)
            elif name in os.listxattr(path):
                os.removexattr(path, name)


# The errors of a failed write (a full disk, a file-size limit), which `atomic_file` names
# by its target.
_WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS})


def failed_write(error: BaseException | None, temporary: Path) -> OSError | None:
    """The failed write behind ``error``, if that is what it is: an `OSError` of a write
    naming no file or only ``temporary`` (numpy's and h5py's writers into an open file
    name none), itself or in its context (matplotlib's PDF writer, its write failed,
    flushes its compressor again and raises zlib.error)."""
    while error is not None:
        if isinstance(error, OSError):
            unnamed = error.filename is None or str(error.filename) == str(temporary)
            return error if error.errno in _WRITE_ERRORS and unnamed else None
        error = error.__context__
    return None


def flush_to_disk(temporary: Path, target: str | Path) -> None:
    """Flush the written file ``temporary`` to disk; a failed write met there (a full disk
    or quota found only now, as delayed allocation and NFS report it) names ``target``,
    the file the user asked for, as a failed write while the file was written does (the
    flush's error names no file, and reached the user as a bare "No space left on device",
    or named whichever file the writer of several replaced next)."""
    try:
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
    except OSError as error:
        if failed_write(error, temporary) is None:
            raise
        raise OSError(error.errno, error.strerror, str(target)) from None


@contextlib.contextmanager
def atomic_file(
    target: str | Path,
    *,
    lock: bool = False,
    exclusive: bool = False,
    created: list | None = None,
) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success it replaces ``target``.

    The suffix of ``target`` is kept (writers such as matplotlib pick the format from it).
    The file is flushed to disk before the rename and its folder after it, so even a
    crash of the machine leaves the old file or the complete new one. On any exception,
    including `KeyboardInterrupt`, the temporary file is removed. Every output of vbsnmf,
    checkpoints included, is written through this. A symbolic link as ``target`` stays:
    the file it points to is replaced. With ``lock``, the temporary file is locked while
    it exists, as `atomic_directory`'s folders are (`clear_temporary`); not for files
    that HDF5 opens by name: it locks them itself, and would be refused (`atomic_hdf5`
    hands HDF5 a Python file, which it does not lock).

    With ``exclusive``, ``target`` is made as a new file and never replaces one (nor
    follows a link there): the complete file is linked to its name, which fails if
    another process made a file of that name meanwhile. ``created``, a list, then gets
    the (device, inode) of the file written before it takes the name, so that the caller
    can later remove it only while it is still its own (`remove_own`).

    Raises
    ------
    FileExistsError
        With ``exclusive``: something is at ``target`` (before the block runs), or was made
        there while the block ran (nothing of this writer's is left then).
    FileNotFoundError
        The folder of ``target`` does not exist (before the block runs).
    NotADirectoryError
        The folder of ``target`` is a file (before the block runs).
    IsADirectoryError
        ``target`` is a folder (before the block runs).
    OSError
        The temporary file cannot be made or renamed (a name too long, a read-only
        folder), ``target`` is not a regular file (a pipe, a device or a socket, checked
        before the block runs) or a loop of symbolic links; it names ``target``, as does a
        failed write (a full disk) in the block or while the file is flushed to disk.
    """
    target = Path(target)
    if exclusive and os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "a file is there; name a new file", str(target))
    target = link_followed(target)
    check_target(target)

    # made private (0600) while it replaces a file, whose permissions it takes at the end
    private = os.path.lexists(target)

    def make() -> tuple[Path, int | None]:
        with _naming(target):
            prefix, suffix = file_temporary_affixes(target)
            handle, temporary = _make_file(prefix, suffix, target.parent, private=private)
        if not lock:
            os.close(handle)
            return Path(temporary), None
        return Path(temporary), _locked(handle)

    def remove(made: tuple[Path, int | None]) -> None:
        made[0].unlink(missing_ok=True)
        _release(made[1])

    with owned_temporary(make, remove) as (temporary, _):
        try:
            yield temporary
        except Exception as error:
            failed = failed_write(error, temporary)
            if failed is None:
                raise
            raise OSError(failed.errno, failed.strerror, str(target)) from None
        with _naming(target):
            flush_to_disk(temporary, target)
            _permissions_of(target, temporary, private=private)
            if exclusive:
                _link_new(temporary, target, created)
            else:
                os.replace(temporary, target)
        _sync_folder(target.parent)


def _link_new(temporary: Path, target: Path, created: list | None) -> None:
    """``temporary`` given the new name ``target`` (`atomic_file`'s ``exclusive``): a hard
    link, which fails if ``target`` exists where a rename would replace it; its identity
    added to ``created`` first. A file system without hard links gets a rename after a
    check, exclusive but for a writer that makes ``target`` in between."""
    details = os.stat(temporary)
    if created is not None:
        created.append((details.st_dev, details.st_ino))
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
        os.replace(temporary, target)


def remove_own(path: Path, created: list | None) -> bool:
    """Remove ``path`` if it is still the file whose (device, inode) is the last of
    ``created`` (`atomic_file`'s): a file another process made or put there is left.
    Returns whether it was removed."""
    if not created:
        return False
    try:
        details = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    if (details.st_dev, details.st_ino) != created[-1]:
        return False
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True


def link_followed(target: Path) -> Path:
    """``target``, or the path it leads to if it is a symbolic link: an output is written
    where the link points, as ``open(target, "w")`` would write, and the link stays. The
    rename onto the link itself would replace the link and leave its target as it was.

    Raises
    ------
    OSError
        ``target`` is a loop of symbolic links, or leads to an open stream (below); it
        names ``target``.
    """
    if not target.is_symlink():
        return target
    followed = Path(os.path.realpath(target))
    if followed.is_symlink():  # realpath stops at a loop (pathlib raised, or not, by version)
        raise OSError(errno.ELOOP, "a loop of symbolic links", str(target))
    if not os.path.lexists(followed) and os.path.exists(target):
        # A /proc/PID/fd entry (/dev/stdout, /dev/fd/3): the system opens the stream behind
        # it, but its text ("pipe:[4242]", "log.txt (deleted)" once the file was removed)
        # names no path. Followed, `vbsnmf fit -o /dev/stdout > log` with log deleted wrote
        # a whole OUTDIR named "log.txt (deleted)" (exit 0), and with stdout a pipe said
        # "cannot create /dev/stdout: No such file or directory (in /proc/4242/fd)".
        raise OSError(
            errno.EINVAL,
            f"leads to an open pipe, socket or deleted file ({followed.name!r}), not to a "
            "path to write to; name a path",
            str(target),
        )
    return followed


def check_target(target: Path) -> None:
    """Before the work: the errors the rename onto ``target`` would meet after it, naming
    ``target`` or its folder (the rename's own errors name the temporary file)."""
    if not target.parent.is_dir():
        if os.path.lexists(target.parent):  # said to "not exist", a file the user could see
            raise NotADirectoryError(
                errno.ENOTDIR,
                f"the folder for {quoted_path(target.name)} is a file, not a folder",
                str(target.parent),
            )
        raise FileNotFoundError(
            errno.ENOENT,
            f"the folder for {quoted_path(target.name)} does not exist",
            str(target.parent),
        )
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder is there; name a file", str(target))
    if target.exists() and not target.is_file():
        # open(target, "w") would write into the pipe or device; the rename would replace
        # the node itself by a regular file (as root, /dev/null)
        raise OSError(errno.EINVAL, "not a regular file (a pipe, device or socket)", str(target))
    if target.exists() and not os.access(target, os.W_OK):
        # open(target, "w") would refuse it; the rename would not, and would undo the
        # protection the user gave the file.
        raise PermissionError(errno.EACCES, "the file is read-only", str(target))
    if target.exists() and not may_replace(target):
        raise PermissionError(errno.EPERM, STICKY_REFUSAL, str(target))
    check_name_length(target)


# Why the rename onto another user's file in a sticky folder (/tmp, a shared scratch) fails.
STICKY_REFUSAL = (
    "another user's file, in a folder that lets only its owners replace their files (the "
    "sticky bit); name another file"
)


def may_replace(target: Path) -> bool:
    """Whether a rename may replace the file ``target``: not where its folder has the sticky
    bit (/tmp, a shared scratch folder) and neither the file nor the folder is the user's
    (root excepted), though the file itself is writable (a group's or everyone's): there
    ``open(target, "w")`` would write, but the rename `atomic_file` ends with fails, once
    the work is done."""
    user = os.geteuid() if hasattr(os, "geteuid") else 0
    if user == 0:
        return True
    try:
        folder = os.stat(target.parent)
        owner = os.stat(target).st_uid
    except OSError:
        return True  # the writer meets and names what is wrong
    return not folder.st_mode & stat.S_ISVTX or user in (folder.st_uid, owner)


@contextlib.contextmanager
def _naming(target: Path) -> Iterator[None]:
    """An `OSError` in the block that names a file (a name too long, a read-only folder)
    names ``target``, the path the user chose, not the temporary file; its type is kept
    (`OSError` picks the subclass by errno)."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            raise
        raise OSError(error.errno, error.strerror, str(target)) from None


@contextlib.contextmanager
def atomic_directory(
    target: str | Path,
    *,
    overwrite: bool = False,
    replaceable: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it becomes ``target``.

    With ``overwrite``, an existing ``target`` is replaced only once the new folder is
    complete. On any exception, including `KeyboardInterrupt`, the temporary folder is
    removed and ``target`` is left as it was; but for a `KeyboardInterrupt` that arrives
    while the new folder takes ``target``'s place: it is raised once the new folder is
    in place and the old one deleted, with ``written`` set to ``target``.

    A symbolic link as ``target`` stays: the folder it points to is written (made there if
    it is missing), as `vbsnmf.io.check_outdir` says. A replaced ``target`` passes its
    permissions on to the new folder and its files (`_folder_permissions`).
    ``replaceable``, if given, is called with an existing ``target`` once the block is
    done, just before it is replaced: a `ValueError` it raises (e.g. ``target`` no longer
    holds only an earlier output) leaves ``target`` as it is, and the new folder is kept
    beside it under a visible name (``NAME.new``, ``NAME.new-2``, ...), which the error,
    raised again with the same type, names at its end. Any other exception removes the new
    folder.

    Raises
    ------
    FileExistsError
        ``target`` exists and ``overwrite`` is false: checked before the block runs, and
        after it, when ``target`` was made meanwhile (by another run, or the user): it is
        left as it is, the new folder kept beside it as ``replaceable``'s refusal keeps
        it, and the error names that folder at its end.
    OSError
        ``target`` is a loop of symbolic links (before the block runs).
    """
    target = link_followed(Path(target))
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(f"{quoted_path(target)} already exists (use --force to replace it)")
    check_name_length(target)

    # made private (0700) while it replaces a folder, whose permissions it takes at the end
    private = os.path.lexists(target)

    def make() -> tuple[Path, int | None]:
        prefix = temporary_prefix(target, ".tmp")
        with _naming(target):  # a folder that cannot be made is named as OUTDIR, not hidden
            folder = Path(_make_folder(prefix, ".tmp", target.parent, private=private))
        return folder, _lock_folder(folder)  # which removes it if it fails

    def remove(made: tuple[Path, int | None]) -> None:
        temporary, lock = made
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
        _release(lock)

    with owned_temporary(make, remove) as (temporary, _):
        try:
            yield temporary
        except OSError as error:
            inside = _inside(error.filename, temporary)
            if inside is None:
                raise
            # name the file the user will look for, not its place in the temporary folder
            raise OSError(error.errno, error.strerror, str(target / inside)) from None
        replacing = os.path.lexists(target)
        if replacing and not overwrite:
            # made by another run or the user while the block ran: left as it is, and the
            # work, done, kept beside it (as a refused swap keeps it), not deleted
            _folder_permissions(target, temporary, replacing=False, private=private)
            kept = _keep_beside(temporary, target)
            raise FileExistsError(
                f"{quoted_path(target)} appeared while writing, and was left as it is; the new "
                f"output is in {quoted_path(kept)}"
            )
        if replacing and replaceable is not None:
            try:
                replaceable(target)
            except ValueError as refused:
                # the work is done: lose neither the user's files nor hours of fit
                _folder_permissions(target, temporary, replacing=True)
                kept = _keep_beside(temporary, target)
                raise type(refused)(
                    f"{refused}; the new output is in {quoted_path(kept)}"
                ) from None
        _folder_permissions(target, temporary, replacing=replacing, private=private)
        try:
            # The old target out, the new one in and the old one deleted, or none of it: a
            # signal that arrives meanwhile is raised once all is done (then `written`
            # tells the caller that the new folder is complete).
            with held_signals():
                if replacing and _exchange(temporary, target):
                    # the new output in, the old one out in one step: a kill -9 can no longer
                    # fall between two renames and leave no target at all
                    _sync_folder(target.parent)
                    _retire_exchanged(temporary, target)
                elif replacing:
                    retired, lock = _move_aside(target, target)
                    try:
                        _rename_into(temporary, target)
                        _sync_folder(target.parent)
                    except BaseException:
                        _put_back(retired, target)
                        _release(lock)
                        raise
                    _remove_retired(retired, lock, target)
                else:
                    _rename_into(temporary, target)
                    _sync_folder(target.parent)
        except KeyboardInterrupt as stop:
            stop.written = target
            raise


def _rename_into(temporary: Path, target: Path) -> None:
    """Rename the complete folder ``temporary`` to ``target``; a failure names ``target``,
    the folder the user asked for (the rename's own error showed both paths as
    ``PosixPath(...)`` reprs, the first a hidden temporary)."""
    try:
        os.replace(temporary, target)
    except OSError as error:
        raise OSError(
            error.errno, f"cannot move the new output into place: {error.strerror}", str(target)
        ) from None


def _put_back(retired: Path, target: Path) -> None:
    """The earlier output, moved aside into ``retired`` (`_move_aside`), back at ``target``
    after the new one failed to take its place: it was left hidden in ``retired``, with
    ``target`` gone, and the next run removed that folder as a killed run's leftover. If
    it cannot be put back, the error already raised stands and ``retired`` stays."""
    with contextlib.suppress(OSError):
        os.replace(retired / "previous", target)
        retired.rmdir()
        _sync_folder(target.parent)


def _retire_exchanged(old: Path, target: Path) -> None:
    """Delete the earlier output, at ``old`` (the temporary's name) once the new one took
    ``target``'s place by an exchange, through a locked folder (`_move_aside`). If no such
    folder can be made (a full disk or quota: a new folder needs a block), it is left at
    ``old``, which the temporary's owner removes (`atomic_directory`): the new output is
    complete, and a failure to tidy the old one is no failed run."""
    try:
        retired, lock = _move_aside(old, target)
    except OSError:
        return
    _remove_retired(retired, lock, target)


def _keep_beside(temporary: Path, target: Path) -> Path:
    """Move the complete folder ``temporary`` to a new visible name beside ``target``
    (``NAME.new``, then ``NAME.new-2``, ...; a random one where those are too long) and
    return it. The name is taken by an exclusive ``mkdir`` first, so no folder of the
    user's is replaced: a rename onto an empty folder replaces it."""
    for number in range(1, 100):
        kept = target.with_name(f"{target.name}.new" + (f"-{number}" if number > 1 else ""))
        try:
            kept.mkdir()
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno != errno.ENAMETOOLONG:
                raise
            break
        os.replace(temporary, kept)
        _sync_folder(target.parent)
        return kept
    kept = Path(tempfile.mkdtemp(prefix="vbsnmf-new-", dir=target.parent))
    os.replace(temporary, kept)
    _sync_folder(target.parent)
    return kept


# Linux's renameat2: its RENAME_EXCHANGE swaps two paths atomically.
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap the paths ``first`` and ``second`` in one step; False where the system (not
    Linux) or the file system cannot, and nothing was changed."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # another C library or system
        return False
    done = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if done == 0:
        return True
    number = ctypes.get_errno()
    if number in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(number, os.strerror(number), str(second))


def _sync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries to disk: a rename is durable only once its folder is
    synced, and without it a power loss could bring back the old file after the new one
    was reported written. A file system that cannot sync a folder is left as it is."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a folder the user may write but not read
        return
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(descriptor)


def _inside(filename, folder: Path) -> Path | None:
    """``filename``'s path relative to ``folder``, if it lies inside it."""
    if not isinstance(filename, (str, os.PathLike)):
        return None
    try:
        return Path(os.path.abspath(filename)).relative_to(os.path.abspath(folder))
    except ValueError:
        return None


def _move_aside(old: Path, target: Path) -> tuple[Path, int | None]:
    """Move ``old``, the output ``target`` replaces, into a new hidden folder beside
    ``target`` named for it (as `vbsnmf.io.check_outdir` looks for leftovers), returned
    with the lock held on it (`_lock_folder`); if it cannot be moved, nothing is left
    behind and the error names ``target``."""
    prefix = temporary_prefix(target, ".old")
    try:
        # in the try: a folder that cannot be made (a full disk) was named by its hidden name
        retired = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=target.parent))
        lock = _lock_folder(retired)  # which removes it if it fails
        try:
            os.replace(old, retired / "previous")
        except OSError:
            retired.rmdir()
            _release(lock)
            raise
    except OSError as error:
        raise OSError(error.errno, f"cannot move it aside: {error.strerror}", str(target)) from None
    return retired, lock


def _remove_retired(retired: Path, lock: int | None, target: Path) -> None:
    """Delete the output ``target`` replaced and release its lock; one that cannot be
    deleted is named, not left behind in silence (the new ``target`` is complete either
    way)."""
    try:
        shutil.rmtree(retired)
    except OSError as error:
        raise OSError(
            error.errno,
            f"{quoted_path(target)} was written in full, but the output it replaced could not be "
            f"deleted ({error.strerror}); it is left in",
            str(retired),
        ) from None
    finally:
        _release(lock)


# How a later run tells a killed run's temporary (folder, or checkpoint file) from one
# still being written: the writer holds an advisory lock (flock) on it from the moment it
# makes it until it is gone, and the system drops the lock when the process ends, however
# it ends.
def _lock_folder(folder: Path) -> int | None:
    """Lock the temporary ``folder``, just made, for as long as the descriptor returned
    stays open (`_release` closes it); None where the file system has no such locks. If
    the folder cannot even be opened (no descriptors left), it is removed and the error
    raised, as a folder left unlocked could be taken for a killed run's."""
    if fcntl is None:
        return None
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        folder.rmdir()
        raise
    return _locked(descriptor)


def _locked(descriptor: int) -> int | None:
    """``descriptor``, of a temporary just made, with the lock taken on it; None (and
    closed) where the file system has no such locks, whose leftovers are then reported,
    never removed."""
    if fcntl is None:
        os.close(descriptor)
        return None
    try:
        # Blocking: a later run's check holds the lock of a temporary this new only for an
        # instant (it removes none changed in the last minute).
        fcntl.flock(descriptor, fcntl.LOCK_EX)
    except OSError:  # e.g. NFS, whose emulated locks need a descriptor open for writing
        os.close(descriptor)
        return None
    return descriptor


def _release(lock: int | None) -> None:
    if lock is not None:
        os.close(lock)


# What `clear_temporary` did with a temporary, and what `clear_lock_file` and `_lock_state`
# found.
REMOVED, IN_USE, KEPT, FOREIGN, FREE = "removed", "in use", "kept", "not vbsnmf's", "free"


# A checkpoint's fit holds a lock file beside it from start to end (`Checkpointer`), as a
# checkpoint itself is replaced at every save and cannot carry a lock.
def lock_file_of(target: Path) -> Path:
    """The lock file ``.name.lock`` beside ``target``, its name cut as a temporary's is."""
    return target.with_name(temporary_prefix(target, "lock") + "lock")


def _names(descriptor: int, path: Path) -> bool:
    """Whether ``path`` still names the file open at ``descriptor``."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    details = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (details.st_dev, details.st_ino)


# What `take_lock_file` writes into a lock file: its holder's process id and, after an
# ``@``, the name of its machine (`_lock_text`), and nothing else; earlier versions wrote
# the id alone. A file of a lock file's name is taken for vbsnmf's (reused, or removed as a
# killed run's) only if it holds that, or nothing (a run killed between making the file
# and writing it): anything else there is the user's, and is left as it is.
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]{1,255}")
_LOCK_CONTENT = re.compile(rb"([0-9]{0,20})(?:(?<=[0-9])@(" + _HOST_NAME.pattern.encode() + rb"))?")


def _lock_text() -> str:
    """What a lock file holds: this process's id and its machine's name. On a folder that
    several machines share (a cluster's home or scratch), a process id alone sent a refused
    user to look for, or kill, a process of that id on their own machine. A name that
    `_HOST_NAME` does not take (none, or odd characters) is left out."""
    host = socket.gethostname()
    return f"{os.getpid()}@{host}" if _HOST_NAME.fullmatch(host) else str(os.getpid())


def _holds_lock_content(descriptor: int) -> bool:
    """Whether the regular file open at ``descriptor`` holds what a lock file of vbsnmf's
    holds (`_LOCK_CONTENT`)."""
    try:
        data = os.pread(descriptor, 512, 0)  # more than the longest content
    except OSError:
        return False
    return _LOCK_CONTENT.fullmatch(data) is not None


def take_lock_file(lock: Path) -> int | None:
    """Create (or reuse a killed run's) ``lock`` and lock it for as long as the returned
    descriptor stays open (`drop_lock_file`); None, with nothing held, where it cannot be
    made or locked (no advisory locks, a read-only folder, something not a file there).

    A file is created exclusively; one already there is reused only if it is a lock file
    of vbsnmf's (`_LOCK_CONTENT`), never truncated otherwise.

    Raises
    ------
    BlockingIOError
        A live process holds it.
    FileExistsError
        A file is there that is not a lock file of vbsnmf's (nothing was changed).
    """
    if fcntl is None:
        return None
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    # A check (`clear_lock_file`) holds it for an instant, a live holder for longer; and
    # tries are counted: where a file's name and its descriptor never agree on its inode
    # (some FUSE systems), no lock is had rather than a loop forever.
    patience = time.monotonic() + 0.2
    for _ in range(1000):
        made = True
        try:
            descriptor = os.open(lock, flags | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            made = False
            try:
                descriptor = os.open(lock, flags)
            except FileNotFoundError:
                continue  # its holder removed it as it finished: make a new one
            except OSError:
                return None
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                os.close(descriptor)
                return None
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = _names(descriptor, lock)
            os.close(descriptor)
            if held and time.monotonic() > patience:
                raise
            time.sleep(0.02 if held else 0)
            continue  # or its holder removed it as it finished: make a new one
        except OSError:
            os.close(descriptor)
            return None
        if _names(descriptor, lock):
            if not made and not _holds_lock_content(descriptor):
                os.close(descriptor)
                raise FileExistsError(
                    errno.EEXIST, "a file there is not a lock file of vbsnmf's", str(lock)
                )
            with contextlib.suppress(OSError):  # who holds it, for a refused run's message
                os.ftruncate(descriptor, 0)
                os.write(descriptor, _lock_text().encode())
            return descriptor
        os.close(descriptor)  # removed by its holder between open and lock: again
    return None


def drop_lock_file(lock: Path, descriptor: int | None) -> None:
    """Remove ``lock`` and release it (a descriptor of `take_lock_file`); a run that
    opened it meanwhile sees it gone and makes its own."""
    if descriptor is not None:
        _remove_named(lock, descriptor)
        os.close(descriptor)


def _remove_named(lock: Path, descriptor: int) -> None:
    """Remove ``lock`` if it still names the file open at ``descriptor``, whose lock is
    held (a file another run made in its place is not ours)."""
    with contextlib.suppress(OSError):
        if _names(descriptor, lock):
            lock.unlink()


def lock_holder(lock: Path) -> str:
    """Who holds ``lock``, as written in it: ``process ID`` (on this machine, or a lock file
    of an earlier version, which names none), ``process ID on the machine NAME``, or this
    very process (a fit in another thread: its id sent a notebook's user to kill their
    own kernel); '' if it cannot be read."""
    try:
        with open(lock, "rb") as handle:
            found = _LOCK_CONTENT.fullmatch(handle.read(512).strip())
    except OSError:
        return ""
    if found is None or not found[1]:
        return ""
    process = found[1].decode("ascii")
    host = found[2].decode("ascii") if found[2] else None
    if host is not None and host != socket.gethostname():
        return f"process {process} on the machine {host}"
    if host is not None and process == str(os.getpid()):
        return f"a fit in this very process, {process},"
    return f"process {process}"


def _open_to_lock(path: Path, flags: int, *, writable: bool = True) -> int:
    """A descriptor of ``path`` (opened with ``flags``) that a check can lock: open for
    writing where it may be (``writable``), as NFS emulates flock with a byte-range lock,
    whose exclusive kind a read-only descriptor cannot take (EBADF): a fit or a save running
    on a shared folder was taken for none, and a killed one's file never removed. Read-only
    where it may not be (a folder, another user's file, a read-only file system); the
    error of that open (`OSError`) if neither can be had."""
    if writable:
        try:
            return os.open(path, os.O_RDWR | flags)
        except OSError as error:
            if error.errno == errno.ELOOP:  # a symbolic link: no other open does better
                raise
    return os.open(path, os.O_RDONLY | flags)


def clear_lock_file(lock: Path) -> str:
    """Remove ``lock`` if a killed run left it (nobody holds it, and it holds what vbsnmf
    writes into its lock files: `_LOCK_CONTENT`); return `FREE` then, when there is none,
    or where locks are not to be had. `IN_USE` if a live process holds it; `FOREIGN`,
    with nothing changed, if something of the user's is there: a file of other content,
    which `take_lock_file` would refuse to take, a symbolic link, a folder or a FIFO."""
    if fcntl is None:
        return FREE
    try:
        descriptor = _open_to_lock(lock, os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        # a symbolic link there (dangling or not) is never vbsnmf's, and took no lock: two
        # fits then held one checkpoint
        return FOREIGN if error.errno == errno.ELOOP else FREE
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return FOREIGN  # a folder or a FIFO: no lock to be had there either
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _holds_lock_content(descriptor):
            return FOREIGN
        _remove_named(lock, descriptor)
    except BlockingIOError:
        return IN_USE if _names(descriptor, lock) else FREE
    except OSError:
        pass
    finally:
        os.close(descriptor)
    return FREE


def _lock_state(entry: Path, *, folder: bool = True) -> tuple[str, int | None]:
    """Try, without waiting, the lock of the temporary ``entry`` (a folder, or with
    ``folder=False`` a file of `atomic_file(lock=True)`), as its writer holds it
    (`_lock_folder`, `_locked`), and a descriptor holding it until closed (`_release`) if
    it was free (`FREE`); else None, and `IN_USE` if a live process holds it, `KEPT` where
    that cannot be told (no advisory locks, an entry that cannot be opened as one of its
    kind, a lock that cannot be tried). `held_by_writer` asks this of a folder;
    `clear_temporary` also, with the lock held, deletes what it finds abandoned."""
    if fcntl is None:
        return KEPT, None
    try:
        # O_NONBLOCK: opening a FIFO of such a name would otherwise wait for a writer
        kind = os.O_DIRECTORY if folder else os.O_NONBLOCK
        descriptor = _open_to_lock(entry, os.O_NOFOLLOW | kind, writable=not folder)
    except OSError:
        return KEPT, None
    try:
        if not folder and not stat.S_ISREG(os.fstat(descriptor).st_mode):
            state = KEPT
        else:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return FREE, descriptor
    except BlockingIOError:
        state = IN_USE
    except OSError:
        state = KEPT
    os.close(descriptor)
    return state, None


def held_by_writer(entry: Path) -> bool:
    """Whether a live process holds the lock of the temporary folder ``entry``
    (`_lock_folder`): another run is writing it now. False where that cannot be told (no
    advisory locks, an entry that cannot be opened as a folder)."""
    state, lock = _lock_state(entry)
    _release(lock)
    return state == IN_USE


# A temporary is locked an instant after it is made; one found unlocked counts as
# abandoned only if it has also not changed for this long, which that instant cannot reach.
_SETTLE_SECONDS = 60.0


def clear_temporary(
    entry: Path, *, folder: bool = True, ours: Callable[[Path], bool] | None = None
) -> str:
    """Delete the temporary ``entry`` (a folder, or with ``folder=False`` a file of
    `atomic_file(lock=True)`) if its writer is gone: nothing holds its lock and it has not
    changed for a minute (`REMOVED`). `IN_USE` if a live process holds its lock;
    `FOREIGN`, with nothing deleted, if ``ours(entry)`` (asked with the lock held) says
    it does not hold what vbsnmf writes there; `KEPT`, with nothing deleted, if it changed
    within the minute, is not of the kind expected, or where this system cannot tell (no
    advisory locks)."""
    state, lock = _lock_state(entry, folder=folder)
    if state != FREE:
        return state
    try:
        changed = os.fstat(lock).st_mtime
        if ours is not None and not ours(entry):
            return FOREIGN
        if time.time() - changed < _SETTLE_SECONDS:
            return KEPT
        if folder:  # with the lock held: a writer of it would be alive
            shutil.rmtree(entry)
        else:
            entry.unlink()
    except OSError:
        return KEPT
    finally:
        _release(lock)
    return REMOVED
