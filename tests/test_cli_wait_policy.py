"""The command line asks OpenMP's idle threads to wait passively (docs/performance.md,
"Idle threads on a shared machine"), unless the user set OMP_WAIT_POLICY."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import os, sys, vbsnmf.cli as cli; code = cli.main(['--version']); "
    "print(os.environ.get('OMP_WAIT_POLICY')); sys.exit(code)"
)


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_line_sets_a_passive_wait_policy_unless_given(given, expected):
    """In a fresh interpreter (the suite's conftest sets the variable for its own run):
    unset, the command sets PASSIVE before Numba starts its threads; a value the user
    gave is kept."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == expected
