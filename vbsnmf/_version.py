"""vbsnmf's version, in a module of its own: the records that name it (`_utils.library_versions`)
sit below the package's face, which would otherwise be imported upwards.

``__version__`` is the release's and stays the same from commit to commit, so a record
written from a git checkout (an editable install, or the source on ``PYTHONPATH``) could not
tell which code wrote it: `checkout_commit` reads the commit checked out. It is read once,
as the package is imported (the code that runs is the code of that moment, not of a later
``git checkout``), from the few small files git keeps: no git process is started, since
``vbsnmf --version`` imports this module too and loads nothing heavy.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"


def _is_commit(text: str) -> bool:
    """Whether ``text`` is a commit's name: 40 hex digits (SHA-1), or 64 (SHA-256)."""
    return len(text) in (40, 64) and not text.strip("0123456789abcdef")


def _read_text(path: str, limit: int = 65536) -> str | None:
    """The start of a small text file, or None when it cannot be read or is no regular
    file. A path taken from a damaged file (a NUL byte in HEAD's ref or in a ``.git``
    file's gitdir) made ``open`` raise ValueError, which failed the package's import; a
    named pipe in its place would have held the import waiting on it."""
    try:
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read(limit)
    except (OSError, ValueError):
        return None


def _git_folders(root: str) -> tuple[str, str] | None:
    """The git folder of the work tree ``root`` and the folder its refs are shared in (the
    same but for a ``git worktree``, whose ``.git`` is a file naming its own)."""
    dot_git = os.path.join(root, ".git")
    if os.path.isdir(dot_git):
        return dot_git, dot_git
    pointer = _read_text(dot_git, 4096)
    if pointer is None or not pointer.startswith("gitdir:"):
        return None
    target = pointer[len("gitdir:") :].strip().partition("\n")[0].strip()  # its first line
    if not target:
        return None
    git_dir = os.path.join(root, target)
    common = _read_text(os.path.join(git_dir, "commondir"), 4096)
    common = None if common is None else common.strip().partition("\n")[0].strip()
    return git_dir, os.path.join(git_dir, common) if common else git_dir


def checkout_commit(package_dir: str | None = None) -> str | None:
    """The commit checked out in the git work tree that holds vbsnmf's source, read from
    ``.git``'s ``HEAD``, its branch's ref and ``packed-refs``; None for an installed copy,
    a folder that is not vbsnmf's own checkout (vbsnmf copied into another project's
    repository) or anything unreadable. It names the commit, not whether files were edited
    since (which git's index would have to be compared with the files to tell)."""
    package_dir = os.path.dirname(__file__) if package_dir is None else package_dir
    # absolute: "pkg/" (a trailing separator) had itself for its parent folder
    root = os.path.dirname(os.path.abspath(package_dir))
    if not os.path.lexists(os.path.join(root, ".git")):
        return None  # an installed copy: one look, and nothing is read
    project = _read_text(os.path.join(root, "pyproject.toml")) or ""
    if 'name = "vbsnmf"' not in (line.strip() for line in project.splitlines()):
        return None
    folders = _git_folders(root)
    head = None if folders is None else _read_text(os.path.join(folders[0], "HEAD"), 4096)
    if head is None:
        return None
    head = head.strip()
    if not head.startswith("ref:"):  # a detached HEAD holds the commit itself
        return head if _is_commit(head) else None
    ref = head[len("ref:") :].strip()
    for folder in dict.fromkeys(folders):  # a worktree's own refs, then the shared ones
        loose = _read_text(os.path.join(folder, *ref.split("/")), 4096)
        if loose is not None:
            return loose.strip() if _is_commit(loose.strip()) else None
    packed = _read_text(os.path.join(folders[1], "packed-refs"), 1 << 24) or ""
    for line in packed.splitlines():
        commit, _, name = line.partition(" ")
        if name == ref and _is_commit(commit):
            return commit
    return None  # a branch without commits yet


# None outside a git checkout of vbsnmf (`checkout_commit`)
CHECKOUT_COMMIT = checkout_commit()
