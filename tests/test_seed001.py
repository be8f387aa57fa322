"""The seed 001 experiment script (`benchmarks/seed001_experiment.py`): its ``--quick``
setting and the pieces it is built from."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "seed001_experiment.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("seed001_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    # the script imports benchmarks/_common.py, found beside it when run as a script
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


experiment = _load_script()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seed001")
    assert experiment.main(["--quick", "--out", str(out)]) == 0
    return out, pd.read_csv(out / "runs.csv")


def _data_std(n_rows, n_cols, density, seed, rep):
    """Standard deviation of the entries of one simulated matrix, zeros included: the
    RMSE of the best constant fit."""
    counts = experiment.simulate_counts(
        n_rows, n_cols, density, experiment.cell_rng(seed, n_rows, density, rep)
    )
    n_entries = n_rows * n_cols
    mean = counts.data.sum() / n_entries
    return np.sqrt((counts.data**2).sum() / n_entries - mean**2)


def test_quick_grid_is_complete_and_runs_exactly_the_iterations(quick_run):
    out, runs = quick_run
    quick = experiment.QUICK
    methods = set(experiment.available_methods())
    assert set(runs["method"]) == methods
    assert len(runs) == len(methods) * len(quick["densities"]) * quick["reps"]
    assert (runs["n_iter"] == quick["iterations"]).all()
    for name in ("summary.csv", "rmse.png", "time.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "rmse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["reps"] == quick["reps"]).all()


def test_quick_rmse_finite_and_between_noise_floor_and_constant_fit(quick_run):
    _, runs = quick_run
    assert np.isfinite(runs["rmse"]).all()
    for (density, rep), fits in runs.groupby(["density", "rep"]):
        # i.i.d. entries have no structure to find: a rank-5 fit beats the constant fit
        # (RMSE = std of X) only slightly, by fitting noise.
        std = _data_std(int(fits["rows"].iloc[0]), int(fits["cols"].iloc[0]), density, 1, rep)
        assert (fits["rmse"] < std).all(), (density, rep)
        assert (fits["rmse"] > 0.9 * std).all(), (density, rep)


def test_quick_nonzeros_follow_density(quick_run):
    _, runs = quick_run
    n_entries = runs["rows"] * runs["cols"]
    # five binomial standard deviations
    tolerance = 5 * np.sqrt(n_entries * runs["density"] * (1 - runs["density"]))
    assert (np.abs(runs["nnz"] - runs["density"] * n_entries) < tolerance).all()


def test_quick_sparse_time_grows_with_density(quick_run):
    _, runs = quick_run
    low, high = min(experiment.QUICK["densities"]), max(experiment.QUICK["densities"])
    for method in set(runs["method"]) - {"sklearn_dense"}:
        fits = runs[runs["method"] == method]
        # CPU time of one thread is the work done, whatever else runs on the machine;
        # the minimum over repetitions discards the remaining (always positive) noise.
        # 5x the nonzeros must cost clearly more than 1.5x.
        low_time = fits.loc[fits["density"] == low, "cpu_seconds"].min()
        high_time = fits.loc[fits["density"] == high, "cpu_seconds"].min()
        assert high_time > 1.5 * low_time, (method, low_time, high_time)


@pytest.mark.parametrize("method_name", ["vb", "mu_kl", "sklearn_dense"])
def test_quick_rmse_reproducible_from_seed(quick_run, method_name):
    _, runs = quick_run
    fits = runs[(runs["method"] == method_name) & (runs["rep"] == 1)]
    row = fits.sort_values("density").iloc[0]  # the cheapest fit
    n_rows, n_cols, density = int(row["rows"]), int(row["cols"]), float(row["density"])
    counts = experiment.simulate_counts(
        n_rows, n_cols, density, experiment.cell_rng(int(row["seed"]), n_rows, density, 1)
    )
    assert counts.nnz == row["nnz"]
    random_state = experiment.init_seed(int(row["seed"]), n_rows, density, 1, int(row["rank"]))
    assert random_state == row["random_state"]
    method = experiment.available_methods()[method_name]
    again = experiment.run_fit(
        method, counts, int(row["rank"]), int(row["n_iter"]), random_state, 1, trace_memory=False
    )
    np.testing.assert_allclose(again["rmse"], row["rmse"], rtol=1e-12)


def test_quick_sparse_mu_kl_equals_dense_scikit_learn(quick_run):
    """vbsnmf's MU-KL on the sparse matrix and scikit-learn's on the dense array are the
    same algorithm from the same random start, so they reach the same RMSE."""
    _, runs = quick_run
    keys = ["density", "rep"]
    sparse = runs[runs["method"] == "mu_kl"].set_index(keys)["rmse"].sort_index()
    dense = runs[runs["method"] == "sklearn_dense"].set_index(keys)["rmse"].sort_index()
    assert len(sparse) == len(dense) > 0
    np.testing.assert_allclose(sparse.to_numpy(), dense.to_numpy(), rtol=1e-8)


def test_different_seed_gives_different_data():
    first = experiment.simulate_counts(50, 80, 0.3, experiment.cell_rng(1, 50, 0.3, 0))
    same = experiment.simulate_counts(50, 80, 0.3, experiment.cell_rng(1, 50, 0.3, 0))
    other = experiment.simulate_counts(50, 80, 0.3, experiment.cell_rng(2, 50, 0.3, 0))
    assert (first != same).nnz == 0
    assert (first != other).nnz > 0


def test_simulated_nonzeros_are_one_plus_poisson():
    counts = experiment.simulate_counts(
        700, 300, 0.2, np.random.default_rng(5), poisson_mean=2.0, block_rows=64
    )
    assert counts.has_canonical_format
    values = counts.data
    assert values.min() >= 1 and np.all(values == np.round(values))
    # 1 + Poisson(2): mean 3, variance 2; five standard errors
    assert abs(values.mean() - 3.0) < 5 * np.sqrt(2.0 / values.size)
    assert abs(values.var() - 2.0) < 0.1
    # rows are filled alike across the block boundaries
    per_row = np.diff(counts.indptr)
    assert abs(per_row[:350].mean() - per_row[350:].mean()) < 5 * np.sqrt(2 * 300 * 0.16 / 350)


def test_rmse_blockwise_equals_gram_formula():
    rng = np.random.default_rng(3)
    counts = sp.random_array((53, 41), density=0.3, rng=rng, format="csr") * 7
    row_factors, col_factors = rng.random((53, 4)), rng.random((41, 4))
    # sum (x - p)^2 = sum x^2 - 2 sum_nonzeros x p + sum_l,m (Z'Z)_lm (W'W)_lm
    coo = counts.tocoo()
    at_nonzeros = np.einsum("nk,nk->n", row_factors[coo.row], col_factors[coo.col])
    squared = (
        (coo.data**2).sum()
        - 2 * (coo.data * at_nonzeros).sum()
        + ((row_factors.T @ row_factors) * (col_factors.T @ col_factors)).sum()
    )
    expected = np.sqrt(squared / (53 * 41))
    # blocks of 2 rows (82 elements), the last one shorter
    got = experiment.rmse_blockwise(counts, row_factors, col_factors, block_elements=90)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_traced_peak_is_reached_in_first_iterations():
    """The script traces memory in a short fit; the peak must not grow with iterations."""
    counts = experiment.simulate_counts(300, 400, 0.3, np.random.default_rng(0))
    method = experiment.available_methods()["vb"]
    short = experiment.traced_peak_bytes(method, counts, 4, experiment.MEMORY_ITER, 0, 1)
    longer = experiment.traced_peak_bytes(method, counts, 4, 20, 0, 1)
    assert short > counts.data.nbytes
    assert abs(longer - short) < 0.05 * short


@pytest.mark.parametrize(
    "argv", [["--densities", "0"], ["--rows", "0"], ["--threads", "0"], ["--reps", "-1"]]
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        experiment.main(argv)
    assert raised.value.code == 2
    assert "error" in capsys.readouterr().err
