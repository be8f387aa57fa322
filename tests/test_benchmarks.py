"""The benchmark scripts that reach into vbsnmf's private modules still run: they are not
part of the package, so nothing else notices when a private signature changes under them
(`bench_scale.py atlas` called `_svi.scan_blocks` with its old arguments)."""

import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench_scale(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_scale

    yield bench_scale
    sys.modules.pop("bench_scale", None)


def test_bench_scale_atlas_parts_run_on_a_small_file(bench_scale, pbmc_tiny, tmp_path):
    """Both parts of ``bench_scale.py atlas`` in this process on pbmc_tiny as an .h5ad:
    the batch timing (its ELBO finite, one interval per iteration) and the streamed
    cells-form steps, which read every cell of the file in the validation scan."""
    path = tmp_path / "tiny.h5ad"
    pbmc_tiny.write_h5ad(path)
    batch = bench_scale._batch_timing(str(path), 3, 3, 1)
    assert batch["nnz"] == pbmc_tiny.X.nnz
    assert np.isfinite(batch["final_elbo"]) and batch["s_per_iter"] > 0
    stream = bench_scale._streaming_steps(str(path), 3, 2, 64, 1)
    assert stream["n_cells"] == pbmc_tiny.n_obs and stream["nnz"] == pbmc_tiny.X.nnz
    assert stream["s_per_step"] > 0 and stream["steps_per_epoch"] == -(-pbmc_tiny.n_obs // 64)
