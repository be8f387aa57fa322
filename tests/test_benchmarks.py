"""The benchmark scripts that reach into vbsnmf's private modules still run: they are not
part of the package, so nothing else notices when a private signature changes under them
(`bench_scale.py atlas` called `_svi.scan_blocks` with its old arguments)."""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(monkeypatch, name: str):
    """The benchmark module ``name``, imported from benchmarks/ (and forgotten after)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, name, module)  # dropped again when the test ends
    return module


@pytest.fixture
def bench_scale(monkeypatch):
    return _script(monkeypatch, "bench_scale")


def test_bench_scale_atlas_parts_run_on_a_small_file(bench_scale, pbmc_tiny, tmp_path):
    """Both parts of ``bench_scale.py atlas`` in this process on pbmc_tiny as an .h5ad:
    the batch timing (its ELBO finite, its time per iteration positive) and the streamed
    cells-form steps, which read every cell of the file in the validation scan."""
    path = tmp_path / "tiny.h5ad"
    pbmc_tiny.write_h5ad(path)
    batch = bench_scale._batch_timing(str(path), 3, 3, 1)
    assert batch["nnz"] == pbmc_tiny.X.nnz
    assert np.isfinite(batch["final_elbo"]) and batch["s_per_iter"] > 0
    stream = bench_scale._streaming_steps(str(path), 3, 2, 64, 1)
    assert stream["n_cells"] == pbmc_tiny.n_obs and stream["nnz"] == pbmc_tiny.X.nnz
    assert stream["s_per_step"] > 0 and stream["steps_per_epoch"] == -(-pbmc_tiny.n_obs // 64)


def test_count_range_traces_run_on_todays_engine(monkeypatch):
    """``count_range.py``'s fit (it imported the engine module the restructure removed):
    at a count well inside the float64 range its trace is finite, negative and never
    decreases, as the script's table reports."""
    count_range = _script(monkeypatch, "count_range")
    trace = count_range._trace(1e6, 0, np.float64)
    assert trace.shape == (150,) and np.all(np.isfinite(trace)) and np.all(trace < 0)
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))


def test_bench_scale_times_per_pass_when_callbacks_skip_passes(
    bench_scale, pbmc_tiny, tmp_path, monkeypatch
):
    """Under SQUAREM (the default) a callback may come two passes after the last: the
    median of the callback intervals mixed one- and two-pass ones. With a clock that reads
    the passes done (1 s a pass) and callbacks at passes 1, 3, 4, 6, 7 (the first interval
    pass 1 itself), every pass took 1 s: the timing says 1.0 (it said 1.5 before)."""
    import time

    import vbsnmf

    path = tmp_path / "tiny.h5ad"
    pbmc_tiny.write_h5ad(path)
    clock = {"passes": 0.0}
    monkeypatch.setattr(time, "perf_counter", lambda: clock["passes"])
    monkeypatch.setattr(time, "process_time", lambda: clock["passes"])

    def fit(self, X, callback=None):
        for n_done in (1, 3, 4, 6, 7):
            clock["passes"] = float(n_done)
            callback(n_done, None, [-1.0])
        self.elbo_trace_ = np.array([-1.0])
        return self

    monkeypatch.setattr(vbsnmf.VBNMF, "fit", fit)
    batch = bench_scale._batch_timing(str(path), 3, 7, 1)
    assert batch["s_per_iter"] == batch["cpu_s_per_iter"] == 1.0
    assert batch["first_iter_s"] == 1.0
