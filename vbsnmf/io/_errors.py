"""The one exception type every reader raises for a bad input file."""

from __future__ import annotations

from pathlib import Path


class ReadError(ValueError):
    """An input file is missing, unreadable, truncated or malformed.

    The message names the file and what is wrong with it; ``path`` holds the file.
    A subclass of `ValueError`, so callers that catch bad input generally also catch it.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")
