"""Thirty-third hostile pass, memory: the cgroup reader, the guard's inputs and its words.

Each test failed on the code before its fix, but for the guards said so in their
docstrings. Nothing here allocates more than a few MB: available memory is monkeypatched,
and cgroup trees are fake folders given as the root.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from cli_output import without_compile_notice

import vbsnmf
from vbsnmf import _memory, cli


def _cgroup_files(folder, limit, usage, stat=None, v1=False):
    folder.mkdir(parents=True, exist_ok=True)
    names = (
        ("memory.limit_in_bytes", "memory.usage_in_bytes")
        if v1
        else ("memory.max", "memory.current")
    )
    (folder / names[0]).write_text(limit)
    (folder / names[1]).write_text(usage)
    if stat is not None:
        (folder / "memory.stat").write_text(stat)


@pytest.fixture
def no_membership(tmp_path):
    """A /proc/self/cgroup that does not exist: the root's files alone."""
    return tmp_path / "no_proc_self_cgroup"


@pytest.mark.parametrize("limit", ["", "garbage\n", "max 100\n", "\x00\n"])
def test_unreadable_cgroup_limit_is_no_limit(tmp_path, no_membership, limit):
    """An empty or garbage ``memory.max`` (an emulated cgroup file system) raised
    "invalid literal for int()" from every fit; now no limit is known."""
    root = tmp_path / "cg"
    _cgroup_files(root, limit, "5\n")
    assert _memory._cgroup_headroom(root, no_membership) is None


def test_negative_v1_limit_is_no_limit(tmp_path, no_membership):
    """cgroup v1's ``-1`` (no limit, as written) read as a limit of -1: 0 bytes free, and
    every fit refused."""
    root = tmp_path / "cg"
    _cgroup_files(root / "memory", "-1\n", "5000\n", v1=True)
    assert _memory._cgroup_headroom(root, no_membership) is None


def test_unreadable_limit_reaches_no_fit(tmp_path, monkeypatch):
    """The whole way: `VBNMF.fit` with a garbage cgroup limit fits (a ValueError before)."""
    root = tmp_path / "cg"
    _cgroup_files(root, "garbage\n", "5\n")
    membership = tmp_path / "membership"
    membership.write_text("0::/\n")
    reader = _memory._cgroup_headroom
    monkeypatch.setattr(_memory, "_cgroup_headroom", lambda: reader(root, membership))
    counts = np.random.default_rng(0).poisson(1.0, (40, 15)).astype(float)
    model = vbsnmf.VBNMF(2, max_iter=3, prior="gamma", random_state=0).fit(counts)
    assert np.all(np.isfinite(model.components_))


def test_limit_of_the_process_cgroup_below_the_root(tmp_path):
    """A Slurm job's limit (cgroup v2, set on ``job_N`` above the task's own cgroup) was
    never read: only the root's files, which have none, so the guard let a fit meet the
    OOM killer."""
    root = tmp_path / "cg"
    job = root / "system.slice" / "slurmstepd.scope" / "job_42"
    task = job / "step_0" / "user" / "task_0"
    _cgroup_files(job, f"{8 * 2**30}\n", f"{2**30}\n", "anon 1\ninactive_file 4096\n")
    _cgroup_files(task, "max\n", f"{2**30}\n")
    membership = tmp_path / "membership"
    membership.write_text(
        "0::/system.slice/slurmstepd.scope/job_42/step_0/user/task_0\n", encoding="ascii"
    )
    assert _memory._cgroup_headroom(root, membership) == 7 * 2**30 + 4096
    # the smallest headroom of all the levels binds: a tighter one on the task's own
    (task / "memory.max").write_text(f"{2**30 + 100}\n")
    assert _memory._cgroup_headroom(root, membership) == 100


def test_limit_of_the_process_cgroup_v1(tmp_path):
    """cgroup v1: the memory controller's line of /proc/self/cgroup names the folder under
    ``memory/`` (a systemd unit's MemoryLimit, a batch job's)."""
    root = tmp_path / "cg"
    unit = root / "memory" / "system.slice" / "fit.service"
    _cgroup_files(root / "memory", "9223372036854771712\n", "100\n", v1=True)
    _cgroup_files(unit, "3000000\n", "1000000\n", "total_inactive_file 500\n", v1=True)
    membership = tmp_path / "membership"
    membership.write_text("9:name=systemd:/\n4:cpuacct,memory:/system.slice/fit.service\n0::/\n")
    assert _memory._cgroup_headroom(root, membership) == 2_000_500


def test_membership_leading_outside_or_missing_reads_the_root(tmp_path, no_membership):
    """A guard of the behaviour kept: a cgroup path outside the mounted tree (``/..``, a
    process outside the namespace's root), a folder that is not mounted (Docker v1 shows
    the host's path) or no membership file reads the root's files, as the base code did
    (which took no membership file, so this test fails there on its signature alone)."""
    root = tmp_path / "cg"
    _cgroup_files(root, "1000\n", "400\n")
    membership = tmp_path / "membership"
    for text in ("0::/../../escape\n", "0::/docker/abc123\n", "garbage\n", ""):
        membership.write_text(text)
        assert _memory._cgroup_headroom(root, membership) == 600
    assert _memory._cgroup_headroom(root, no_membership) == 600


def test_dataframe_of_counts_is_guarded(monkeypatch):
    """A dense pandas DataFrame (a table read with read_csv) passed the guard unchecked;
    now it is estimated as the same array is, without copying it first."""
    counts = np.random.default_rng(0).poisson(1.0, (60, 20)).astype(float)
    frame = pd.DataFrame(counts, columns=[f"g{j}" for j in range(20)])
    settings = {"n_threads": 1, "dtype": np.float64, "learned_prior": False}
    estimate = _memory.check_fit_memory(frame, 3, **settings)
    assert estimate == _memory.check_fit_memory(counts, 3, **settings)
    monkeypatch.setattr(_memory, "available_memory", lambda: estimate["total"] - 1)
    with pytest.raises(_memory.InsufficientMemoryError, match="VBSNMF_NO_MEMORY_GUARD"):
        vbsnmf.VBNMF(3, max_iter=2, prior="gamma", n_threads=1).fit(frame)
    # text, nullable or empty tables: left to the validation, which explains them
    for odd in (frame.astype(str), frame.astype("Int64"), pd.DataFrame(index=range(3))):
        assert _memory.check_fit_memory(odd, 1, n_threads=1, dtype=np.float64) is None


def test_guard_message_in_units_that_show_the_amounts(monkeypatch):
    """Below 5 MiB the message said "needs about 0.00 GiB ... but only 0.00 GiB is
    available" (a cgroup near its limit): both amounts now in a unit that shows them, and
    "1 thread" in the singular."""
    counts = np.random.default_rng(0).poisson(1.0, (300, 200)).astype(float)
    monkeypatch.setattr(_memory, "available_memory", lambda: 2**19)
    for params in ({"n_threads": 1}, {"solver": "svi"}):
        with pytest.raises(_memory.InsufficientMemoryError) as raised:
            vbsnmf.VBNMF(50, max_iter=2, **params).fit(counts)
        message = str(raised.value)
        assert "0.00 GiB" not in message and "512.0 KiB is available" in message
    with pytest.raises(_memory.InsufficientMemoryError, match=r"for 1 thread\)"):
        vbsnmf.VBNMF(50, max_iter=2, n_threads=1).fit(counts)


@pytest.mark.parametrize("solver", ["svi", "batch"])
def test_cli_memory_refusal_names_its_options(tmp_path, monkeypatch, capsys, solver):
    """The command line's refusal told the Python API's settings (``solver="svi"``,
    ``dtype='float32'``, which has no option, ``n_threads``); now ``--solver svi``, ``-k``
    and ``--threads``, one line, exit 2."""
    import anndata as ad

    counts = np.random.default_rng(0).poisson(1.0, (300, 100)).astype(np.float32)
    path = tmp_path / "small.h5ad"
    ad.AnnData(sp.csr_matrix(counts)).write_h5ad(path)
    monkeypatch.setattr(_memory, "available_memory", lambda: 1000)
    try:
        code = cli.main(
            ["fit", str(path), "-k", "5", "-o", str(tmp_path / "out"), "--solver", solver]
        )
    except SystemExit as stop:
        code = stop.code
    # the input is checked before the guard, which may compile kernels on a cold cache
    err = without_compile_notice(capsys.readouterr().err)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "dtype=" not in err and "solver=" not in err and "n_threads" not in err, err
    assert "lower -k" in err.lower() and "VBSNMF_NO_MEMORY_GUARD=1" in err
    if solver == "batch":
        assert "--solver svi" in err and "--threads" in err
    assert not (tmp_path / "out").exists()


def test_estimate_has_no_overflow_at_atlas_shapes():
    """The estimate is Python integers, exact where its sums pass 2**63: a numpy ``nnz``
    (a matrix's ``.nnz``) kept numpy's int64, which wraps; 8-byte indices past 2**31
    nonzeros."""
    shape = (np.int64(2**40), np.int64(2**20))
    estimate = _memory.estimate_fit_memory(shape, np.int64(2**40), 100_000, n_threads=64)
    assert all(isinstance(value, int) for value in estimate.values())
    assert estimate["total"] > 2**63
    counts = 2**40 * (8 + 8) + (2**40 + 1) * 8
    assert estimate["counts"] == counts
    assert estimate["total"] == sum(
        estimate[part] for part in ("counts", "factors", "accumulators")
    )
