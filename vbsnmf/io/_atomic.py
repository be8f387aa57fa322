"""Atomic outputs: write into a temporary path beside the target, rename at the end.

A reader of the target sees either the old file (or none) or the complete new one, never
a partial write, also when the writer is interrupted (Ctrl-C) or fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_permissions(path: Path, *, folder: bool) -> None:
    """What ``open``/``mkdir`` would have given (mkstemp/mkdtemp make private 0600/0700)."""
    path.chmod((0o777 if folder else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success it replaces ``target``.

    The suffix of ``target`` is kept (writers such as matplotlib pick the format from it).
    The file is flushed to disk before the rename, so even a crash of the machine leaves
    the old file or the complete new one. On any exception, including `KeyboardInterrupt`,
    the temporary file is removed. Every output of vbsnmf, checkpoints included, is
    written through this.
    """
    target = Path(target)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        _default_permissions(temporary, folder=False)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it becomes ``target``.

    With ``overwrite``, an existing ``target`` is replaced only once the new folder is
    complete. On any exception, including `KeyboardInterrupt`, the temporary folder is
    removed and ``target`` is left as it was.

    Raises
    ------
    FileExistsError
        ``target`` exists and ``overwrite`` is false (checked before and after the work).
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (use --force to replace it)")
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield temporary
        _default_permissions(temporary, folder=True)
        if target.exists() or target.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{target} appeared while writing (use --force)")
            retired = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
            )
            os.replace(target, retired / "previous")
            os.replace(temporary, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temporary, target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
