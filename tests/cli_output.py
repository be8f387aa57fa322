"""What a CLI command wrote on stderr, without Numba's compile notice, for tests that
compare stderr whole or count its lines.

The command prints `vbsnmf.cli.COMPILING` (or `COMPILING_UNCACHED`) when one of vbsnmf's
kernels compiles during it: in a process that is the first to need a kernel missing from
Numba's disk cache. On a fresh clone (CI: a cold cache, tests spread over xdist workers)
which test that is varies from run to run, so a test that wanted exactly one error line
(or an empty stderr) failed now and then. Every such test reads stderr through here.
"""

from __future__ import annotations

from vbsnmf.cli import COMPILING, COMPILING_UNCACHED

COMPILE_NOTICES = frozenset({COMPILING, COMPILING_UNCACHED})


def without_compile_notice(err: str) -> str:
    """``err`` without the lines that are exactly a compile notice; every other line,
    its line ending included, is kept as it was (a line that only quotes the notice too).
    Lines are split as `str.splitlines` splits them, so a notice printed after a progress
    bar's carriage return is dropped as well."""
    return "".join(
        line for line in err.splitlines(keepends=True) if line.rstrip("\r\n") not in COMPILE_NOTICES
    )


def error_lines(err: str) -> list[str]:
    """The lines of ``err`` other than the compile notice, without line endings (blank ones
    kept, after the first and before the last: one error line means one line)."""
    return without_compile_notice(err).strip().splitlines()
