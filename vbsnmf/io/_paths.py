"""Where a fit may write: checked against what it reads, before any work.

Nothing the user owns is written to or removed except OUTDIR (replaced only with
``--force``) and a checkpoint path that is absent or holds a vbsnmf checkpoint. Paths are
compared by their real location (symbolic links resolved), so a link to the input is the
input; an input may be a file or a folder (a 10x folder).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path

from .._atomic import (
    FOREIGN,
    FREE,
    IN_USE,
    REMOVED,
    STICKY_REFUSAL,
    check_name_length,
    check_target,
    clear_lock_file,
    clear_temporary,
    file_temporary_affixes,
    held_by_writer,
    link_followed,
    lock_file_of,
    may_replace,
    owned_temporary,
    temporary_prefix,
)
from .._quoting import quoted_path
from .._validation import check_flag


class UnsafePathError(ValueError):
    """An output path would overwrite, remove or write into something the user owns."""

    __module__ = "vbsnmf.io"  # as tracebacks show it: its public name, not the private module


# The inputs of the command running now (`vbsnmf.cli`): protected also where a check runs
# again without them. The estimator checks its checkpoint path with its matrix as the only
# input, and swept a --col-names file named as a checkpoint's temporary that the command
# line's own check had spared.
_COMMAND_INPUTS: ContextVar[tuple] = ContextVar("vbsnmf_command_inputs", default=())


@contextlib.contextmanager
def command_inputs(inputs: Iterable[str | os.PathLike]) -> Iterator[None]:
    """In the block, every check of this module counts ``inputs`` among the inputs."""
    token = _COMMAND_INPUTS.set((*_COMMAND_INPUTS.get(), *inputs))
    try:
        yield
    finally:
        _COMMAND_INPUTS.reset(token)


def _with_command_inputs(inputs: Iterable) -> list[tuple[str, str | os.PathLike]]:
    """``inputs`` and the command's (`command_inputs`), as pairs for `check_apart`: a path is
    "the input"; a pair (description, path) says what else the path is (``vbsnmf demo``'s
    package, which holds its data: "the input" named an argument the demo has none of)."""
    return [
        entry if isinstance(entry, tuple) else ("the input", entry)
        for entry in (*inputs, *_COMMAND_INPUTS.get())
    ]


def real_path(path: str | os.PathLike) -> Path:
    """``path`` with every symbolic link resolved, existing or not."""
    return Path(os.path.realpath(os.fspath(path)))


def _relation(target: Path, other: Path) -> str | None:
    """How the real paths ``target`` and ``other`` overlap: ``"is"``, ``"lies inside"``,
    ``"contains"``, or None."""
    if target == other:
        return "is"
    if other in target.parents:
        return "lies inside"
    if target in other.parents:
        return "contains"
    return None


def _same_file(a: Path, b: Path) -> bool:
    """Hard links and bind mounts: the same file under another real path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_apart(label: str, path, owned: Iterable[tuple[str, str | os.PathLike]]) -> None:
    """Raise `UnsafePathError` if ``path`` is, lies inside or contains one of ``owned``
    (pairs of a description, e.g. ``"the input"``, and a path)."""
    overlap = _overlap(path, owned)
    if overlap is not None:
        relation, description, other = overlap
        raise UnsafePathError(
            f"{label} {quoted_path(path)} {relation} {description} {quoted_path(other)}: it would "
            "be overwritten or removed; choose a path outside it"
        )


def _overlap(path, owned: Iterable[tuple[str, str | os.PathLike]]):
    """``(relation, description, other)`` of the first of ``owned`` that ``path`` is, lies
    inside or contains (`check_apart`), or None."""
    real = real_path(path)
    for description, other, other_real in _with_linked_files(owned):
        relation = _relation(real, other_real)
        if relation is None and _same_file(real, other_real):
            relation = "is"
        if relation is not None:
            return relation, description, other
    return None


def _with_linked_files(owned):
    """``(description, path, real path)`` of each owned path and, inside an owned folder (a
    10x folder, whose files workflow managers stage as links), of each file it holds that
    lives elsewhere: replacing the folder those point into would remove them."""
    for description, other in owned:
        other_real = real_path(other)
        yield description, other, other_real
        if not os.path.isdir(other_real):
            continue
        for folder, _, names in os.walk(other_real):
            for name in names:
                linked = real_path(os.path.join(folder, name))
                if _relation(linked, other_real) is None:
                    yield description, os.path.join(folder, name), linked


# What pathlib's exists() and is_dir() take for "no" rather than raise; the checks that
# follow say what is wrong then (absent, under a file, a symbolic link loop).
_PATHLIB_IGNORED = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})


def _check_lookup(label: str, path: Path) -> None:
    """`UnsafePathError` when ``path`` cannot even be looked up (a name longer than the
    file system allows), where pathlib's checks would raise the bare `OSError`."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno not in _PATHLIB_IGNORED:
            raise UnsafePathError(
                f"cannot write {label} {quoted_path(path)}: {error.strerror}"
            ) from None


# A process's open files under /proc: /dev/stdout leads to /proc/self/fd/1, /dev/fd/3 to
# /proc/self/fd/3 (a thread's own list under task/TID).
_DESCRIPTOR_FOLDER = re.compile(r"/proc/(?P<pid>\d+)(?:/task/\d+)?/fd")
_STANDARD_STREAMS = ("the standard input", "the standard output", "the standard error")


def open_stream_name(path: str | os.PathLike) -> str | None:
    """What ``path`` leads to when one of its symbolic links is an open file of this
    process (``/dev/stdout``, ``/dev/fd/3``, ``/proc/self/fd/2``): "the standard output"
    (or input, error), "the open file descriptor 3"; None for any other path.

    Such a path names no file of its own: followed, it is whatever file the stream was
    redirected to (a log, ``> out.txt``), which the checks then named as if the user had
    given it ("/tmp/log.txt is not a vbsnmf checkpoint ...; name another path or remove
    it" of ``--checkpoint /dev/stdout >> log.txt``: advice to delete the user's log)."""
    current = Path(os.path.abspath(path))
    for _ in range(40):  # the system's own limit on links followed in a path
        folder = _DESCRIPTOR_FOLDER.fullmatch(os.path.realpath(current.parent))
        if folder is not None and current.name.isdigit():
            if int(folder["pid"]) != os.getpid():
                return None
            descriptor = int(current.name)
            if descriptor < len(_STANDARD_STREAMS):
                return _STANDARD_STREAMS[descriptor]
            return f"the open file descriptor {descriptor}"
        if not current.is_symlink():
            return None
        current = Path(os.path.normpath(current.parent / os.readlink(current)))
    return None


def _refuse_open_stream(label: str, path: Path, followed: Path, what: str) -> None:
    """`UnsafePathError` when ``path`` leads to one of this process's open streams
    (`open_stream_name`), ``followed`` being the file behind it; ``what`` is what to name
    instead ("a checkpoint file")."""
    stream = open_stream_name(path)
    if stream is not None:
        raise UnsafePathError(
            f"{label} {quoted_path(path)} leads to {stream} of this process "
            f"({quoted_path(followed)}), not to a path of its own; name {what}"
        )


def check_checkpoint_path(checkpoint: str | os.PathLike, inputs: Iterable = ()) -> Path:
    """Check a checkpoint path before a fit writes to it; return it as a `Path`.

    It must not be, lie inside or contain an input, nor be a folder (nor end in a path
    separator, which names one) or a broken link; if a file is there it must be a vbsnmf
    checkpoint (it will be overwritten, or resumed from) that the user may write. An
    absent path is fine: it is created. A symbolic link is followed, as the fit saves
    through it: the lock file and the leftovers checked are those beside the file it
    points to, the path returned.

    Raises
    ------
    UnsafePathError
        The path is an input, inside one, a folder (or ends in a separator), a
        read-only file or another user's file in a sticky folder (each save replaces
        it, which the system refuses there), leads to an open stream of this process
        (``/dev/stdout``), or another run is saving to it now.
    vbsnmf.CheckpointError
        A file is there that is not a vbsnmf checkpoint.
    vbsnmf.CheckpointInUseError
        A fit running now uses it (and holds its lock file); a killed fit's lock file is
        removed.
    """
    from .._checkpoint import (
        CheckpointInUseError,
        foreign_lock_message,
        holds_handed_lock,
        in_use_message,
        read_checkpoint_meta,
    )

    path = Path(checkpoint)
    inputs = _with_command_inputs(inputs)
    _check_lookup("checkpoint", path)
    if path.is_dir():
        raise UnsafePathError(
            f"checkpoint {quoted_path(path)} is a folder; name a file in it instead"
        )
    name = os.fspath(checkpoint)
    if isinstance(name, str) and os.path.basename(name) in ("", "."):
        # "new/" or "new/.", a folder not made yet: Path drops the ending, and the saves
        # made a file of the folder's name
        raise UnsafePathError(
            f"checkpoint {name} ends in {name[-1]!r}, which names a folder; name a file in it "
            "instead"
        )
    check_apart("checkpoint", path, inputs)
    if path.is_symlink() and not path.exists():
        raise UnsafePathError(f"checkpoint {quoted_path(path)} is a broken symbolic link")
    # A link is saved through (`Checkpointer`): its lock file and a killed save's
    # temporaries are beside the file it points to, not beside the link.
    try:
        path = link_followed(path)
    except OSError as error:  # a loop of links, or a link to an open stream
        raise UnsafePathError(f"checkpoint {quoted_path(path)}: {error.strerror}") from None
    _refuse_open_stream("checkpoint", Path(checkpoint), path, "a checkpoint file")
    if path.exists():
        read_checkpoint_meta(path)
        if not os.access(path, os.W_OK):
            raise UnsafePathError(
                f"checkpoint {quoted_path(path)} is read-only: the fit could not save to it; make "
                "it writable or name another file"
            )
        if not may_replace(path):  # each save replaces it: the first failed after the work
            raise UnsafePathError(f"checkpoint {quoted_path(path)} is {STICKY_REFUSAL}")
    # Where it will be written: its folder, or the nearest existing folder above (the
    # writer creates the rest). A temporary file of the writer's name is made and removed
    # there, so that a name too long or a folder that cannot be written (read-only, /proc)
    # is reported now, not at the first save after an iteration or epoch.
    ancestor = next(p for p in (path.parent, *path.parent.parents) if p.exists() or p.is_symlink())
    if not ancestor.is_dir():
        raise UnsafePathError(
            f"checkpoint {quoted_path(path)}: {quoted_path(ancestor)} is not a folder"
        )
    if ancestor == path.parent:
        lock = lock_file_of(path)
        # the fit makes, holds and removes this file: an input of its name was removed
        overlap = _overlap(lock, inputs)
        if overlap is not None:
            relation, description, other = overlap
            raise UnsafePathError(
                f"checkpoint {quoted_path(path)} needs the lock file {quoted_path(lock)} beside "
                f"it, which {relation} {description} {quoted_path(other)}; name another "
                "checkpoint"
            )
        # this process's own, taken at the command's start for the fit (`held_for_fit`)
        state = FREE if holds_handed_lock(lock) else clear_lock_file(lock)
        if state == IN_USE:
            raise CheckpointInUseError(in_use_message(path, lock))
        if state == FOREIGN:
            raise UnsafePathError(foreign_lock_message(path, lock))
        saving = clear_leftovers(
            path,
            [file_temporary_affixes(path)],
            folders=False,
            owned=inputs,
            ours=_partial_checkpoint,
        )
        if saving:
            raise UnsafePathError(
                f"another run is saving checkpoint {quoted_path(path)} now ({saving[0].name} "
                "beside it is in use); wait for it to finish or name another checkpoint"
            )
    try:
        check_name_length(path)
        _try_file(file_temporary_affixes(path), ancestor)
    except OSError as error:
        raise UnsafePathError(
            f"cannot write checkpoint {quoted_path(path)}: {error.strerror or error} (in "
            f"{quoted_path(ancestor)})"
        ) from None
    return path


def check_file_name(label: str, path: str | os.PathLike) -> None:
    """`UnsafePathError` for a name ending with a separator: it names a folder, which
    `pathlib` would drop to write a file of the folder's name (``new/`` written as a file
    ``new``); and for an empty name, which the system takes for no file but `pathlib` for
    the current folder."""
    if not os.fspath(path):
        raise UnsafePathError(f"{label} is an empty name; name a file")
    if os.fspath(path).endswith(("/", os.sep)):
        raise UnsafePathError(f"{label} {quoted_path(path)} names a folder; name a file")


def check_folder_name(label: str, folder: str | os.PathLike) -> None:
    """`UnsafePathError` for an empty folder name, which `pathlib` takes for the current
    folder (an unset variable then wrote into wherever the process runs)."""
    if not os.fspath(folder):
        raise UnsafePathError(f"{label} is an empty name; name a folder ('.' for the current one)")


def check_output_file(label: str, path: str | os.PathLike) -> Path:
    """Check, before any work, that `atomic_file` can write the file ``path``; return the
    path it writes (a symbolic link followed).

    What the writer would meet only once the work is done is met now: a missing folder,
    a folder, pipe or device at ``path``, a read-only file, another user's file in a
    sticky folder (which the final rename may not replace), a name too long, or a folder
    that cannot be written (read-only, ``/proc``): a temporary file of the writer's name is
    made and removed beside the file. A name ending with a separator names a folder, which
    `pathlib` would drop to write a file of the folder's name.

    Raises
    ------
    UnsafePathError
        Any of the above, naming ``label`` and ``path`` with the reason.
    """
    check_file_name(label, path)
    path = Path(path)
    _check_lookup(label, path)
    try:
        target = link_followed(path)
        _refuse_open_stream(label, path, target, "a file")
        check_target(target)
        _try_file(file_temporary_affixes(target), target.parent)
    except OSError as error:
        raise UnsafePathError(
            f"cannot write {label} {quoted_path(path)}: {error.strerror or error}"
        ) from None
    return target


# Every name a command writes into OUTDIR (`vbsnmf.cli`, `write_nmf_tables`), spelled once
# here for the writers and for --force, which replaces a folder holding only these
# (`OUTPUT_NAMES`), so that it never deletes a file of the user's.
RESULT_FILE = "result.h5ad"
CELL_FACTORS_FILE = "cell_factors.tsv.gz"
GENE_LOADINGS_FILE = "gene_loadings.tsv.gz"
ELBO_FILE = "elbo.tsv"
LOSS_FILE = "loss.tsv"
TOP_GENES_FILE = "top_genes.tsv"
PARAMS_FILE = "params.json"
COUNTS_FILE = "counts.h5ad"
UMAP_FILE = "umap.png"
OUTPUT_NAMES = frozenset(
    {
        RESULT_FILE,
        CELL_FACTORS_FILE,
        GENE_LOADINGS_FILE,
        ELBO_FILE,
        LOSS_FILE,
        TOP_GENES_FILE,
        PARAMS_FILE,
        COUNTS_FILE,
        UMAP_FILE,
    }
)


def check_outdir(
    outdir: str | os.PathLike,
    *,
    force: bool = False,
    inputs: Iterable = (),
    checkpoint: str | os.PathLike | None = None,
) -> Path:
    """Check an output folder before any work; return it as a `Path`.

    OUTDIR must not be, lie inside or contain an input or the checkpoint, nor be the
    current folder, one holding it, or a mount point; it may exist only with ``force``
    (then it must be a folder holding nothing but files of the names a command writes,
    `OUTPUT_NAMES`: an earlier output, replaced once the new one is complete, which needs
    the permission to move it aside and delete its files). A temporary folder of the name
    the writer uses, with a file of the longest name written into it, is created and
    removed beside it, so that a name or path too long for the file system, a read-only
    or pseudo file system (``/proc``) or a missing permission is reported now, not after
    the fit. A symbolic link is followed: the output is written where it points (the path
    returned; made there if missing), and the link stays.

    Temporary folders that killed runs left beside OUTDIR are removed once their writer is
    gone, with a warning saying so, if they hold only what vbsnmf writes there and are no
    input; the others are reported, or left unmentioned if they are not vbsnmf's
    (`clear_leftovers`). One that a
    live process is writing means another run writes OUTDIR now: refused.

    Raises
    ------
    UnsafePathError
        Any of the above, with the reason, or another run writing OUTDIR now.
    """
    force = check_flag(force, "force")
    path = Path(outdir)
    _check_lookup("OUTDIR", path)
    real = real_path(path)
    try:
        # Written where a link points (made there if it is missing), as atomic_directory
        # writes: the folder swap replaced the link itself, deleting it and leaving the old
        # output stale where it pointed.
        path = link_followed(path)
    except OSError as error:  # a loop of links, or a link to an open stream (/dev/stdout)
        raise UnsafePathError(f"OUTDIR {quoted_path(outdir)}: {error.strerror}") from None
    _refuse_open_stream("OUTDIR", Path(outdir), path, "a new folder")
    working = real_path(os.getcwd())
    if real == working or real in working.parents:
        raise UnsafePathError(
            f"OUTDIR {quoted_path(outdir)} is the current folder or holds it; name a new folder"
        )
    owned = _with_command_inputs(inputs)
    if checkpoint is not None:
        owned.append(("the checkpoint", checkpoint))
    check_apart("OUTDIR", path, owned)
    if os.path.ismount(real):
        raise UnsafePathError(
            f"OUTDIR {quoted_path(outdir)} is a mount point; name a folder inside it"
        )
    if path.exists() or path.is_symlink():
        # What --force would refuse is told first, without --force too: "already exists
        # (use --force to replace it)" sent the user to an option refused at once (a file,
        # a folder of the user's files, one that cannot be replaced).
        if not path.is_dir():
            shown = quoted_path(outdir)
            named = f"OUTDIR {shown} exists" if force else f"{shown} already exists"
            raise UnsafePathError(
                f"{named} and is not a folder; --force replaces only a folder holding an "
                "earlier output: name another OUTDIR"
            )
        check_earlier_output(path, outdir=outdir, forced=force)
        _check_replaceable(outdir, path)
        if not force:
            raise UnsafePathError(
                f"{quoted_path(outdir)} already exists (use --force to replace it)"
            )
    parent = path.parent
    if not parent.is_dir():
        raise UnsafePathError(
            f"the folder {quoted_path(parent)} for {quoted_path(path.name)} {not_a_folder(parent)}"
        )
    writing = clear_leftovers(
        path,
        _outdir_affixes(path),
        owned=owned,
        ours=_written_by_vbsnmf,
    )
    if writing:
        # Both runs would fit to the end; then one fails, or --force deletes the other's.
        raise _another_run(outdir, writing[0])
    try:
        check_name_length(path)
        _try_writing(path)
    except OSError as error:
        raise UnsafePathError(
            f"cannot create {quoted_path(outdir)}: {error.strerror or error} (in "
            f"{quoted_path(parent)})"
        ) from None
    return path


def _another_run(outdir, temporary: Path) -> UnsafePathError:
    """The refusal of OUTDIR while another run's ``temporary`` beside it is in use."""
    return UnsafePathError(
        f"another run is writing OUTDIR {quoted_path(outdir)} now ({temporary.name} beside it is "
        "in use); wait for it to finish or name another OUTDIR"
    )


def check_sole_writer(outdir: str | os.PathLike, own: Path) -> None:
    """Refuse OUTDIR once this run's temporary folder ``own`` beside it is made and locked
    (`vbsnmf._atomic.atomic_directory`) if another live run's is there too. `check_outdir`
    refuses a run started while another writes OUTDIR, but two runs started together both
    passed it before either had made its folder: both fitted to the end, and then the later
    one failed, or with --force replaced the other's output, each saying it wrote OUTDIR.
    Two that made their folders at the same moment are both refused, which loses no work.

    Raises
    ------
    UnsafePathError
        Another run is writing OUTDIR now.
    """
    path = Path(outdir)  # as `check_outdir` returns it: a link followed, as the writer does
    own = Path(own)
    # where the writer makes its temporaries; an unreadable folder: its own write fails
    # and says so
    for entry in _named_temporaries(own.parent, _outdir_affixes(path)):
        if entry.name != own.name and held_by_writer(entry):
            raise _another_run(outdir, entry)


def _outdir_affixes(path: Path) -> list[tuple[str, str]]:
    """The prefixes and suffixes of the temporaries `_atomic.atomic_directory` makes beside
    OUTDIR ``path``: the new output's and the earlier one moved aside."""
    return [(temporary_prefix(path, end), end) for end in (".tmp", ".old")]


def _named_temporaries(folder: Path, affixes: Iterable[tuple[str, str]]) -> list[Path]:
    """The entries of ``folder`` named as `_atomic` names its temporaries (``affixes``:
    prefix and suffix around its 8 random characters), sorted; none where ``folder``
    cannot be read."""
    patterns = [
        re.compile(re.escape(prefix) + r"[a-z0-9_]{8}" + re.escape(suffix) + r"\Z")
        for prefix, suffix in affixes
    ]
    try:
        return sorted(
            entry
            for entry in folder.iterdir()
            if any(pattern.match(entry.name) for pattern in patterns)
        )
    except OSError:
        return []


def not_a_folder(path: Path) -> str:
    """Why ``path``, named as a folder, is none: it does not exist, or it is a file (said
    to "not exist", a file the user could see made the message look wrong)."""
    return "is a file, not a folder" if os.path.lexists(path) else "does not exist"


def check_earlier_output(
    path: Path, *, outdir=None, done: bool = False, forced: bool = True
) -> None:
    """`UnsafePathError` unless the folder ``path`` (OUTDIR, given as ``outdir``) holds
    nothing but files of the names a command writes (`OUTPUT_NAMES`): an earlier output,
    which ``--force`` replaces. Every output is a file: a folder of an output's name is
    the user's (and what it holds would go with it).

    Checked before the work (`check_outdir`) and again, with ``done``, as the new output
    is about to replace ``path`` (`vbsnmf._atomic.atomic_directory`'s ``replaceable``): a
    file the user saved there while the fit ran (a figure of the earlier result) was
    deleted with it. Not ``forced`` (asked without ``--force``), it says so: that --force
    would not replace it either."""
    outdir = path if outdir is None else outdir
    foreign = sorted(
        entry.name + "/" if entry.is_dir() and not entry.is_symlink() else entry.name
        for entry in path.iterdir()
        if entry.name not in OUTPUT_NAMES or (entry.is_dir() and not entry.is_symlink())
    )
    if not foreign:
        return
    listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    entries = f"{len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'}"
    if done:
        raise UnsafePathError(
            f"OUTDIR {quoted_path(outdir)} now holds {entries} vbsnmf does not write ({listed}), "
            "put there while this run worked; --force replaces only an earlier output, so it was "
            "left as it is"
        )
    if not forced:
        raise UnsafePathError(
            f"{quoted_path(outdir)} already exists and holds {entries} vbsnmf does not write "
            f"({listed}), which --force would not replace either (it replaces only an earlier "
            "output): name another OUTDIR"
        )
    raise UnsafePathError(
        f"OUTDIR {quoted_path(outdir)} holds {entries} vbsnmf does not write ({listed}); --force "
        "replaces only an earlier output: move them or name another OUTDIR"
    )


def clear_leftovers(
    path: Path,
    affixes: Iterable[tuple[str, str]],
    *,
    folders: bool = True,
    owned: Iterable[tuple[str, str | os.PathLike]] = (),
    ours=None,
) -> list[Path]:
    """Clear what killed runs left beside ``path``: entries named as `_atomic` names its
    temporaries (``affixes``: prefix and suffix around its 8 random characters), folders
    (OUTDIR's) or files (``folders=False``: a checkpoint's); return the ones a live
    process is writing now.

    A temporary whose writer is gone (`_atomic.clear_temporary`: its lock is free) is
    removed; the others are reported, as a run still writing could own them, as is
    everything while ``path`` is missing and an earlier output a killed ``--force`` moved
    aside is all that is left of it. One warning says what was removed, one what is left.

    A name is not enough: an entry that is, holds or lies inside one of ``owned`` (pairs
    of a description and a path: the inputs) is never touched nor reported, and with
    ``ours`` (a test of an entry) one it says vbsnmf did not write is left and not
    reported either: it is the user's.
    """
    owned = list(owned)
    # an unreadable folder gives none: the checks that follow say what is wrong
    found = _named_temporaries(path.parent, affixes)
    found = [entry for entry in found if _overlap(entry, owned) is None]
    hidden = [entry for entry in found if (entry / "previous").is_dir()]
    sizes = {entry: _size_of(entry) for entry in found}  # before any is removed
    removed, in_use, foreign = [], [], []
    if path.exists() or not hidden:
        for entry in found:
            state = clear_temporary(entry, folder=folders, ours=ours)
            if state == REMOVED:
                removed.append(entry)
            elif state == IN_USE:
                in_use.append(entry)
            elif state == FOREIGN:
                foreign.append(entry)
    elif ours is not None:
        foreign = [entry for entry in found if not ours(entry)]
    found = [entry for entry in found if entry not in foreign]
    if removed:
        warnings.warn(
            f"removed {_counted(removed)} of killed runs beside {quoted_path(path)} "
            f"({sum(sizes[entry] for entry in removed) / 2**20:.1f} MiB: {_listed(removed)})",
            UserWarning,
            stacklevel=3,
        )
    left = [entry for entry in found if entry not in removed and entry not in in_use]
    if left:
        size = sum(sizes[entry] for entry in left)
        held = [entry for entry in left if entry in hidden]
        note = (
            f"; {held[0] / 'previous'} holds the output a run was replacing when it stopped"
            if held
            else ""
        )
        warnings.warn(
            f"{_counted(left)} of interrupted runs beside {quoted_path(path)} ({size / 2**20:.1f} "
            f"MiB: {_listed(left)}){note}; vbsnmf does not delete them, as a run still writing "
            "could own them: delete them once none is running",
            UserWarning,
            stacklevel=3,
        )
    return in_use


def _output_patterns() -> list[re.Pattern]:
    """The names of the files a command writes into OUTDIR (`OUTPUT_NAMES`) and of their
    temporaries while they are written (`atomic_file`)."""
    patterns = [re.compile(re.escape(name) + r"\Z") for name in OUTPUT_NAMES]
    for name in OUTPUT_NAMES:
        prefix, suffix = file_temporary_affixes(Path(name))
        patterns.append(re.compile(re.escape(prefix) + r"[a-z0-9_]{8}" + re.escape(suffix) + r"\Z"))
    return patterns


# A checkpoint is an .npz, a zip archive; an .h5ad an HDF5 file: a killed write's temporary
# begins as one does.
_ZIP_START = b"PK\x03\x04"
_HDF5_START = b"\x89HDF\r\n\x1a\n"


def _partial_checkpoint(file: Path) -> bool:
    """Whether ``file``, named as a checkpoint's temporary, holds what a killed save of one
    leaves: nothing yet, or the start of a zip archive (`numpy.savez`). Its name alone took
    a user's notes of such a name for a killed save's and deleted them."""
    return _begins_as(file, _ZIP_START)


def _partial_hdf5(file: Path) -> bool:
    """Whether ``file`` holds what a killed write of an HDF5 file leaves: nothing yet, the
    start of one (h5py writes no user block), or zeros where its superblock goes, which
    HDF5 writes last, as it closes the file."""
    return _begins_as(file, _HDF5_START, unwritten=True)


def _begins_as(file: Path, signature: bytes, *, unwritten: bool = False) -> bool:
    """Whether ``file`` is empty or its first bytes are those of ``signature`` (or, with
    ``unwritten``, zeros)."""
    try:
        with open(file, "rb") as handle:
            start = handle.read(len(signature))
    except OSError:
        return False
    return signature.startswith(start) or (unwritten and start == bytes(len(start)))


def clear_hdf5_leftovers(target: Path) -> None:
    """Remove the temporaries that killed writes of the HDF5 file ``target`` left beside
    it (`atomic_file` with ``lock``: its writer gone, unchanged for a minute, holding the
    start of an HDF5 file; a warning names them): each is as large as the file, and a
    killed conversion of a large matrix left gigabytes that nothing removed. The
    command's inputs are never touched; temporaries of live writes are left to them."""
    _clear_killed_writes(link_followed(Path(target)), _partial_hdf5)


# What a table of `vbsnmf.io.write_nmf_tables` begins with: gzip's magic number and method
# (the factor tables), or the trace's header (``elbo.tsv``, ``loss.tsv``).
_GZIP_START = b"\x1f\x8b\x08"
_TRACE_START = b"iteration\t"


def clear_table_leftovers(target: Path) -> None:
    """Remove the temporaries that killed writes of the table ``target`` (`write_nmf_tables`,
    through `atomic_file` with ``lock``) left beside it, as `clear_hdf5_leftovers` removes
    an HDF5 file's: its writer gone, unchanged for a minute, holding the start of such a
    table (a gzip stream, or the trace's header), with a warning naming them. A fit of a
    million cells leaves a cell-factors temporary of some hundred megabytes, hidden, that
    nothing removed."""
    target = link_followed(Path(target))
    start = _GZIP_START if target.name.endswith(".gz") else _TRACE_START
    _clear_killed_writes(target, lambda file: _begins_as(file, start))


def _clear_killed_writes(target: Path, ours: Callable[[Path], bool]) -> None:
    """`clear_leftovers` of the file temporaries of ``target`` (links followed) that
    ``ours`` takes for a killed write of it, the command's inputs never touched."""
    clear_leftovers(
        target,
        [file_temporary_affixes(target)],
        folders=False,
        owned=_with_command_inputs(()),
        ours=ours,
    )


def _written_by_vbsnmf(folder: Path) -> bool:
    """Whether ``folder``, named as `atomic_directory` names its temporaries, holds only what
    vbsnmf puts there: files of the output names or their temporaries (`_output_patterns`)
    in a ``.tmp`` folder, nothing or an earlier output in ``previous`` in an ``.old`` one.
    Its name alone took a folder of the user's (a staged input, a backup) for a killed
    run's and deleted it. Leftovers of runs that wrote other names through the API's
    `atomic_directory` are left alone."""
    patterns = _output_patterns()
    try:
        entries = list(os.scandir(folder))
        if folder.name.endswith(".old") and entries:
            previous = entries[0]
            if len(entries) != 1 or previous.name != "previous":
                return False
            if not previous.is_dir(follow_symlinks=False):
                return False
            entries = list(os.scandir(previous.path))
        return all(
            entry.is_file(follow_symlinks=False)
            and any(pattern.match(entry.name) for pattern in patterns)
            for entry in entries
        )
    except OSError:
        return False


def _counted(entries: list[Path]) -> str:
    return f"{len(entries)} leftover{'s' if len(entries) > 1 else ''}"


def _listed(entries: list[Path]) -> str:
    return ", ".join(entry.name for entry in entries[:3]) + (", ..." if len(entries) > 3 else "")


def _size_of(entry: Path) -> int:
    """Bytes in the file or folder ``entry`` (what another process removes meanwhile, 0)."""
    try:
        if not entry.is_dir() or entry.is_symlink():
            return entry.lstat().st_size
        return sum(
            (Path(folder) / name).lstat().st_size
            for folder, _, names in os.walk(entry)
            for name in names
        )
    except OSError:
        return 0


def _try_writing(path: Path) -> None:
    """Create and remove, beside ``path``, a temporary folder of the name `atomic_directory`
    gives it and, in it, the longest-named temporary file an output is written to: a name or
    path too long for the file system, a read-only or pseudo file system (``/proc``) or a
    missing permission is met now, not after the fit."""
    prefix = temporary_prefix(path, ".tmp")
    longest = max(
        (file_temporary_affixes(Path(name)) for name in OUTPUT_NAMES),
        key=lambda affixes: len(os.fsencode("".join(affixes))),
    )
    with owned_temporary(
        lambda: tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent), os.rmdir
    ) as folder:
        _try_file(longest, folder)


def _try_file(affixes: tuple[str, str], folder) -> None:
    """Create and remove a temporary file named with ``affixes`` (prefix, suffix) in
    ``folder``, as `atomic_file` would."""
    prefix, suffix = affixes
    with owned_temporary(
        lambda: tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder),
        lambda made: (os.close(made[0]), os.unlink(made[1])),
    ):
        pass


def _check_replaceable(outdir, path: Path) -> None:
    """`UnsafePathError` now when ``--force`` could not replace the existing folder ``path``
    once the fit is done: moving a folder to another parent, as `atomic_directory` moves
    the old output aside, and deleting its files need write permission on it, and a folder
    with the sticky bit (``/tmp``) lets only their owners move or delete what it holds."""
    if not os.access(path, os.W_OK | os.X_OK):
        raise UnsafePathError(
            f"cannot replace OUTDIR {quoted_path(outdir)}: it is not writable (its files could not "
            "be deleted); name another OUTDIR"
        )
    user = os.geteuid()
    for entry, folder in ((path, path.parent), *((e, path) for e in path.iterdir())):
        held_in = folder.stat()
        if (
            user
            and held_in.st_mode & stat.S_ISVTX
            and user not in (held_in.st_uid, entry.lstat().st_uid)
        ):
            raise UnsafePathError(
                f"cannot replace OUTDIR {quoted_path(outdir)}: {quoted_path(entry)} belongs to "
                "another user in a folder that lets only owners move or delete "
                f"({quoted_path(folder)}, sticky); name another OUTDIR"
            )


__all__ = [
    "UnsafePathError",
    "check_apart",
    "check_checkpoint_path",
    "check_outdir",
    "check_output_file",
    "real_path",
]
