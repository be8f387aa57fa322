"""Numba's compile notice on a cold cache, and the tests that read the command line's stderr.

The CLI prints `vbsnmf.cli.COMPILING` (or `COMPILING_UNCACHED`) when one of vbsnmf's kernels
compiles during a command. Tests that wanted stderr to be exactly one error line (or empty)
failed when they happened to be the first in their process to need a kernel missing from
Numba's disk cache: CI runs a fresh clone with pytest-xdist, so which test that was varied.
Every such test now reads stderr through one helper, `tests/cli_output.py`; these tests pin
what the helper drops (the notice lines, both texts, nothing else) and that no test keeps a
copy of its own."""

from __future__ import annotations

import re
from pathlib import Path

import numba
import pytest
from cli_output import error_lines, without_compile_notice
from test_hostile import h5ad

import vbsnmf
import vbsnmf._kernels
from vbsnmf import cli
from vbsnmf.cli import COMPILING, COMPILING_UNCACHED

TESTS = Path(__file__).parent
ERROR = "vbsnmf: error: -k 999 is out of range"


def test_the_helper_drops_exactly_the_notice_lines_of_both_texts():
    kept = [
        "vbsnmf: error: in.h5ad: not a readable HDF5 file\n",
        "\n",  # a blank line between two is kept by both: one error line means one line
        f"vbsnmf: error: {COMPILING}\n",  # quotes the notice: not the notice
        f"{COMPILING} \n",  # a longer line
        "batch K=2:  40%|####      | 2/5\r",  # a progress bar's line, ended by its \r
        "vbsnmf: warning: stopped after max_iter=3 iterations\n",
        "the last line, unended",
    ]
    notices = [f"{COMPILING}\n", f"{COMPILING_UNCACHED}\n", f"{COMPILING}\r\n"]
    err = notices[0] + "".join(kept[:5]) + notices[1] + kept[5] + notices[2] + kept[6]
    assert without_compile_notice(err) == "".join(kept)
    assert error_lines(err) == [line.rstrip("\r\n") for line in kept]
    assert without_compile_notice(COMPILING) == ""  # the notice as the last, unended line
    for clean in ("", "vbsnmf: error: x\n", "".join(kept)):
        assert without_compile_notice(clean) == clean  # nothing else is touched


@pytest.mark.parametrize("disk_cache", [True, False], ids=["cached", "uncached"])
def test_a_refusal_after_a_cold_compile_is_one_error_line_through_the_helper(
    disk_cache, tmp_path, monkeypatch, capfd
):
    """The flake itself: a kernel that compiles during the command (as on a fresh clone) puts
    the notice above the one error line; the helper leaves that line alone."""
    h5ad(tmp_path)  # 40 cells x 25 genes
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vbsnmf._kernels, "DISK_CACHE", disk_cache)

    def add_one(x):
        return x + 1

    add_one.__module__ = "vbsnmf._kernels"  # counted as vbsnmf's own: the notice is told
    kernel = numba.njit(add_one)  # never compiled: no cache of any kind
    nmf = vbsnmf.tl.nmf

    def nmf_after_compiling(*args, **kwargs):
        kernel(1)
        return nmf(*args, **kwargs)

    monkeypatch.setattr(vbsnmf.tl, "nmf", nmf_after_compiling)
    argv = ["fit", "small.h5ad", "-k", "999", "--max-iter", "3", "--threads", "1", "-o", "out"]
    assert cli.main(argv) == 2
    err = capfd.readouterr().err
    notice = COMPILING if disk_cache else COMPILING_UNCACHED
    assert err.splitlines()[0] == notice and err.count("\n") == 2, err  # what tests saw
    (line,) = error_lines(err)
    assert line.startswith(ERROR), err
    assert without_compile_notice(err) == line + "\n"
    assert not (tmp_path / "out").exists()


def test_no_test_keeps_its_own_copy_of_the_notice_filter():
    """Three older files and two of this pass's had each their own filter (some dropping
    only `COMPILING`, not `COMPILING_UNCACHED`); the tests of the notice itself may name it."""
    allowed = {"cli_output.py", "test_compile_notice.py", Path(__file__).name}
    copies = [
        path.name
        for path in sorted(TESTS.glob("*.py"))
        if path.name not in allowed and re.search(r"\bCOMPILING", path.read_text())
    ]
    assert copies == []
