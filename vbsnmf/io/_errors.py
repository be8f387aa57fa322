"""The one exception type every reader raises for a bad input file."""

from __future__ import annotations

import os
from pathlib import Path

from .._quoting import quoted_path


class ReadError(ValueError):
    """An input file is missing, unreadable, truncated or malformed.

    The message names the file and what is wrong with it; ``path`` holds the file.
    A subclass of `ValueError`, so callers that catch bad input generally also catch it.
    """

    __module__ = "vbsnmf.io"  # as tracebacks show it: its public name, not the private module

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{quoted_path(path)}: {reason}")

    def __reduce__(self):
        # BaseException's own pickles the message alone, which this __init__ does not
        # take: unpickling raised TypeError, and multiprocessing's Pool.map(read, paths)
        # hung on a missing file (its result thread died unpickling the error)
        return type(self), (self.path, self.reason), self.__dict__


def describe_error(error: BaseException) -> str:
    """``error``'s type and the first line of its message, for a `ReadError`'s reason."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def check_exists(path: Path) -> None:
    """A `ReadError` if ``path`` cannot be found, saying why: missing, or a loop of
    symbolic links, a component that is not a folder, no permission to search one."""
    try:
        os.stat(path)
    except FileNotFoundError:
        raise ReadError(path, "no such file or directory") from None
    except OSError as error:
        reason = (error.strerror or type(error).__name__).lower()
        raise ReadError(path, reason) from None
    except ValueError as error:  # a NUL byte in the name
        raise ReadError(path, str(error)) from None
