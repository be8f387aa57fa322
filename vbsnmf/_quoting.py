"""How a message names a path the user gave: `quoted_path`.

Below every module that names paths in its errors and warnings (`_atomic`, `_checkpoint`,
`io`, `tl`, `datasets`, the command line); it imports only the standard library, so
importing it closes no cycle and loads no numerical library (``vbsnmf --version``).
"""

from __future__ import annotations

import os
import re

# What makes a path in a message hard to tell from the words around it: whitespace (where
# does "the folder sp ace for x" end?), quotes, or nothing at all.
_NEEDS_QUOTES = re.compile(r"[\s'\"]|^$")


def quoted_path(path: str | os.PathLike) -> str:
    """``path`` as a message names it: as typed, or in shell quotes (`shlex.quote`'s) when
    it holds whitespace or a quote or is empty, so that where it ends is clear and it can be
    pasted back into a command line. Other names, non-ASCII letters included, are left as
    they are."""
    import shlex

    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    return shlex.quote(text) if _NEEDS_QUOTES.search(text) else text
