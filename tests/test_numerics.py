"""Numerical edge cases and the memory guard.

Edge cases: the prior over prior_shape in [1e-3, 10] x prior_rate in [1e-3, 1e3], in
float64 and float32; a row holding 1e7 counts; integer and boolean inputs. No NaN or
inf may leave the library, and in float64 the ELBO never decreases.

Memory guard: the estimate is compared with the peak measured by tracemalloc, and the
guard is exercised by replacing the available-memory reading.
"""

from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from cli_output import without_compile_notice
from scipy.special import digamma, gammaln

import vbsnmf
from vbsnmf import _memory

pytestmark = pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")

PRIOR_SHAPES = (1e-3, 1e-2, 0.1, 1.0, 10.0)
PRIOR_RATES = (1e-3, 1.0, 1e3)
FITTED = ("cell_shape_", "cell_rate_", "gene_shape_", "gene_rate_", "components_", "elbo_trace_")


def _simulated_counts(n_rows=60, n_cols=40, n_components=3, seed=0) -> sp.csr_array:
    """Poisson counts from a Gamma-distributed low-rank mean, about 30 % nonzero."""
    rng = np.random.default_rng(seed)
    cell_factors = rng.gamma(0.6, 1.0, (n_rows, n_components))
    gene_loadings = rng.gamma(0.6, 1.0, (n_cols, n_components))
    counts = rng.poisson(cell_factors @ gene_loadings.T)
    return sp.csr_array(counts.astype(np.float64))


def _term_scale(matrix) -> float:
    """Size of the ELBO's largest terms; float64 round-off is relative to it."""
    data = sp.csr_array(matrix).data.astype(np.float64)
    return float(np.sum(data * np.log1p(data)) + np.sum(gammaln(data + 1)))


def _assert_monotone(trace, matrix):
    allowed = 1e-9 * np.abs(trace[1:]) + 16 * np.finfo(np.float64).eps * _term_scale(matrix)
    assert np.all(np.diff(trace) >= -allowed), np.diff(trace).min()


def _assert_finite_fit(model, prior_shape, prior_rate, dtype):
    for name in FITTED:
        array = getattr(model, name)
        assert np.all(np.isfinite(array)), name
    for name in ("cell_shape_", "cell_rate_", "gene_shape_", "gene_rate_", "components_"):
        assert getattr(model, name).dtype == dtype, name
    assert np.all(model.cell_shape_ >= np.asarray(prior_shape, dtype=dtype))
    assert np.all(model.gene_shape_ >= np.asarray(prior_shape, dtype=dtype))
    assert np.all(model.cell_rate_ >= np.asarray(prior_rate, dtype=dtype))
    assert np.all(model.components_ > 0)


@pytest.mark.parametrize("prior_rate", PRIOR_RATES)
@pytest.mark.parametrize("prior_shape", PRIOR_SHAPES)
def test_prior_range_float64_finite_and_monotone(prior_shape, prior_rate):
    X = _simulated_counts()
    model = vbsnmf.VBNMF(
        4,
        prior_shape=prior_shape,
        prior_rate=prior_rate,
        max_iter=40,
        tol=0,
        random_state=0,
        prior="gamma",
    )
    cell_factors = model.fit_transform(X)
    assert np.all(np.isfinite(cell_factors))
    _assert_finite_fit(model, prior_shape, prior_rate, np.float64)
    _assert_monotone(model.elbo_trace_, X)
    assert np.all(np.isfinite(model.transform(X)))


@pytest.mark.parametrize(
    ("prior_shape", "prior_rate"),
    [(1e-3, 1e-3), (1e-3, 1e3), (1.0, 1.0), (10.0, 1e-3), (10.0, 1e3)],
)
def test_prior_range_float32_finite_and_tracks_float64(prior_shape, prior_rate):
    """float32 keeps every parameter finite; from the same start it ends where float64
    ends, to float32's precision (the ELBO is accumulated in float64 in both)."""
    X = _simulated_counts()
    fits = {}
    for dtype in (np.float32, np.float64):
        model = vbsnmf.VBNMF(
            4,
            prior_shape=prior_shape,
            prior_rate=prior_rate,
            max_iter=15,
            tol=0,
            random_state=0,
            dtype=dtype,
            prior="gamma",
        )
        model.fit(X)
        _assert_finite_fit(model, prior_shape, prior_rate, dtype)
        assert np.all(np.isfinite(model.transform(X)))
        fits[dtype] = model.elbo_trace_[-1]
    assert abs(fits[np.float32] - fits[np.float64]) <= 1e-3 * abs(fits[np.float64])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", ["spread", "single entry"])
def test_row_holding_ten_million_counts(layout, dtype):
    """One cell with 1e7 counts among ordinary ones: finite, and monotone in float64."""
    X = _simulated_counts(seed=1).toarray()
    if layout == "spread":
        X[0] = np.random.default_rng(2).multinomial(10**7, np.full(X.shape[1], 1 / X.shape[1]))
    else:
        X[0] = 0
        X[0, 5] = 10**7
    assert X[0].sum() == 10**7
    X = sp.csr_array(X)
    model = vbsnmf.VBNMF(3, max_iter=40, tol=0, random_state=0, dtype=dtype, prior="gamma")
    cell_factors = model.fit_transform(X)
    assert np.all(np.isfinite(cell_factors))
    _assert_finite_fit(model, 1.0, 1.0, dtype)
    if dtype == np.float64:
        _assert_monotone(model.elbo_trace_, X)
    # The big cell's expected total reproduces its counts (each nonzero's x phi sums to x).
    np.testing.assert_allclose(
        (model.cell_shape_[0] - 1.0).sum(), 1e7, rtol=1e-9 if dtype == np.float64 else 1e-5
    )
    projected = model.transform(X[[0]])
    assert np.all(np.isfinite(projected)) and np.all(projected > 0)


def test_tiny_prior_float32_takes_log_space_path():
    """prior_shape 1e-3 in float32 drives exp(E[log z]) far below float32's range; the
    fit must stay finite rather than divide by an underflowed normaliser."""
    X = _simulated_counts(seed=3)
    model = vbsnmf.VBNMF(
        6,
        prior_shape=1e-3,
        prior_rate=1e3,
        max_iter=60,
        tol=0,
        random_state=0,
        dtype=np.float32,
        prior="gamma",
    )
    model.fit(X)
    _assert_finite_fit(model, 1e-3, 1e3, np.float32)
    elog = digamma(model.cell_shape_.astype(np.float64)) - np.log(
        model.cell_rate_.astype(np.float64)
    )
    assert elog.min() < np.log(np.finfo(np.float32).tiny)  # the regime the test is for


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.float32, bool])
def test_integer_and_boolean_inputs_fit_like_float64(dtype):
    X = _simulated_counts(seed=4)
    X.data = np.minimum(X.data, 1 if dtype is bool else 200)
    reference = vbsnmf.VBNMF(3, max_iter=10, tol=0, random_state=0, n_threads=1, prior="gamma").fit(
        X
    )
    converted = sp.csr_array(X.astype(dtype))
    model = vbsnmf.VBNMF(3, max_iter=10, tol=0, random_state=0, n_threads=1, prior="gamma").fit(
        converted
    )
    assert model.elbo_trace_.tobytes() == reference.elbo_trace_.tobytes()
    dense_model = vbsnmf.VBNMF(3, max_iter=10, tol=0, random_state=0, n_threads=1, prior="gamma")
    dense_model.fit(converted.toarray())
    assert dense_model.cell_shape_.tobytes() == reference.cell_shape_.tobytes()


def test_all_zero_rows_and_matrix_transform_to_prior_mean():
    """A cell with no counts gets the prior's shape; its mean is a / (b + sum E[w])."""
    X = _simulated_counts(seed=5)
    model = vbsnmf.VBNMF(3, prior_shape=0.7, max_iter=20, random_state=0, prior="gamma").fit(X)
    empty = sp.csr_array((4, X.shape[1]))
    shape, rate = model.transform_posterior(empty)
    np.testing.assert_array_equal(shape, np.full((4, 3), 0.7))
    np.testing.assert_allclose(rate, 1.0 + model.components_.sum(axis=1), rtol=1e-12)


# -- memory guard ---------------------------------------------------------------------------


def _six_pass_fit(prior="gamma", **params) -> vbsnmf.VBNMF:
    # Six passes: the learned prior's SQUAREM reaches its largest state in its second cycle.
    return vbsnmf.VBNMF(max_iter=6, tol=0, random_state=0, prior=prior, **params)


def _measured_peak(X, **params) -> int:
    model = _six_pass_fit(**params)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        model.fit(X)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("layout", "params"),
    [
        ("csr", {"n_components": 20}),
        ("csr", {"n_components": 20, "dtype": np.float32, "n_init": 2}),
        ("coo", {"n_components": 5}),
        ("dense", {"n_components": 10}),
        ("csr", {"n_components": 20, "prior": "hierarchical"}),
        ("csr", {"n_components": 50, "prior": "hierarchical", "dtype": np.float32}),
        ("csr", {"n_components": 20, "prior": "hierarchical", "n_init": 2}),
    ],
)
def test_memory_estimate_bounds_the_measured_peak(layout, params):
    """The estimate is above the peak tracemalloc measures during a fit, and within 2.5x,
    under either prior (the learned one, the default, with SQUAREM's q's)."""
    rng = np.random.default_rng(0)
    X = sp.random(
        4000,
        1000,
        density=0.03,
        format="csr",
        random_state=0,
        data_rvs=lambda n: rng.integers(1, 9, n),
    ).astype(np.float32)
    as_layout = {"csr": lambda m: m, "coo": lambda m: m.tocoo(), "dense": lambda m: m.toarray()}
    X = as_layout[layout](X)
    # First-call allocations (Numba compiling or loading this path's kernels) are not the
    # fit's: the same fit first, untraced (a compilation under tracemalloc took a minute in
    # CI's fresh clone), then the one measured. Not a smaller one: kernels take other paths
    # on large inputs (SQUAREM's run in parallel on q's of 16,384 entries or more), which
    # compiled inside the measured fit when no earlier test had (an empty cache and this
    # test alone: 28 MB traced against the estimate's 18.6 MB at K = 50).
    _six_pass_fit(**params).fit(X)
    peak = _measured_peak(X, **params)
    estimate = _memory.check_fit_memory(
        X,
        params["n_components"],
        n_threads=None,
        dtype=params.get("dtype", np.float64),
        n_init=params.get("n_init", 1),
        learned_prior=params.get("prior") == "hierarchical",
    )
    assert estimate is not None
    assert peak <= estimate["total"] <= 2.5 * peak, (peak, estimate)


def test_memory_guard_refuses_early_with_advice(monkeypatch):
    X = _simulated_counts()
    needed = _memory.check_fit_memory(X, 4, n_threads=1, dtype=np.float64, learned_prior=False)[
        "total"
    ]
    monkeypatch.setattr(_memory, "available_memory", lambda: needed - 1)
    calls = []
    model = vbsnmf.VBNMF(4, n_threads=1, prior="gamma")
    with pytest.raises(_memory.InsufficientMemoryError) as raised:
        model.fit(X, callback=lambda *args: calls.append(args))
    assert isinstance(raised.value, MemoryError)
    message = str(raised.value)
    assert 'solver="svi"' in message and "VBSNMF_NO_MEMORY_GUARD" in message
    assert f"about {_memory.format_bytes(needed)} of memory" in message
    assert calls == [] and not hasattr(model, "cell_shape_")  # nothing ran, nothing was set

    monkeypatch.setattr(_memory, "available_memory", lambda: needed)
    model.fit(X)  # exactly enough
    assert np.all(np.isfinite(model.components_))

    monkeypatch.setattr(_memory, "available_memory", lambda: needed - 1)
    monkeypatch.setenv("VBSNMF_NO_MEMORY_GUARD", "1")
    model.fit(X)  # the escape hatch
    monkeypatch.delenv("VBSNMF_NO_MEMORY_GUARD")
    monkeypatch.setattr(_memory, "available_memory", lambda: None)
    model.fit(X)  # unknown available memory: no guard


def test_memory_estimate_scales_with_its_parts():
    base = _memory.estimate_fit_memory((10_000, 2_000), 1_000_000, 10, n_threads=1)
    more_threads = _memory.estimate_fit_memory((10_000, 2_000), 1_000_000, 10, n_threads=8)
    # Accumulators: one n_minor x K slab per thread plus their sum, on the shorter axis.
    assert more_threads["accumulators"] - base["accumulators"] == 7 * 2_000 * 10 * 8
    assert more_threads["counts"] == base["counts"] == 1_000_000 * 12 + 10_001 * 4
    single = _memory.estimate_fit_memory((10_000, 2_000), 1_000_000, 10, dtype=np.float32)
    assert single["factors"] < base["factors"]
    transposed = _memory.estimate_fit_memory((2_000, 10_000), 1_000_000, 10, n_threads=8)
    assert transposed == more_threads  # orientation-free, as the engine is
    huge = _memory.estimate_fit_memory((120_961, 33_514), 239_634_370, 15, n_threads=2)
    assert 2 * 2**30 < huge["total"] < 8 * 2**30  # seed 001's atlas: under issue 5's 8 GiB
    with pytest.raises(ValueError, match="input_kind"):
        _memory.estimate_fit_memory((3, 3), 1, 1, input_kind="list")


def test_memory_guard_leaves_bad_input_to_validation(monkeypatch):
    monkeypatch.setattr(_memory, "available_memory", lambda: 0)
    for X, n_components in [([[1, 2]], 1), (np.ones(3), 1), (np.ones((2, 2)), "two")]:
        assert _memory.check_fit_memory(X, n_components, n_threads=1, dtype=np.float64) is None
    with pytest.raises(ValueError, match="Reshape"):
        vbsnmf.VBNMF(1, prior="gamma").fit(np.ones(3))


def test_available_memory_readers(tmp_path, monkeypatch):
    # psutil's figure on every platform; on Linux it is /proc/meminfo's MemAvailable
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        line = next(x for x in meminfo.read_text().splitlines() if x.startswith("MemAvailable"))
        expected = int(line.split()[1]) * 1024
        assert abs(_memory._system_available() - expected) < 0.05 * expected

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1000000\n")
    (v2 / "memory.current").write_text("600000\n")
    (v2 / "memory.stat").write_text("anon 500000\ninactive_file 100000\n")
    assert _memory._cgroup_headroom(v2) == 1_000_000 - 600_000 + 100_000
    (v2 / "memory.max").write_text("max\n")
    assert _memory._cgroup_headroom(v2) is None

    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("2000000\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text("2500000\n")
    assert _memory._cgroup_headroom(v1) == 0  # over the limit: nothing available
    assert _memory._cgroup_headroom(tmp_path / "none") is None

    available = _memory.available_memory()  # this machine
    assert available is None or 0 <= available
    # the smaller of the two where both are known, either alone, or None
    for system, cgroup, expected in ((5000, 3000, 3000), (5000, None, 5000), (None, 7, 7)):
        monkeypatch.setattr(_memory, "_system_available", lambda value=system: value)
        monkeypatch.setattr(_memory, "_cgroup_headroom", lambda value=cgroup: value)
        assert _memory.available_memory() == expected
    monkeypatch.setattr(_memory, "_system_available", lambda: None)
    monkeypatch.setattr(_memory, "_cgroup_headroom", lambda: None)
    assert _memory.available_memory() is None


# -- the largest count (issue 14) -----------------------------------------------------------
def _one_huge_count(count: float) -> sp.csr_array:
    """Poisson(2) counts with one entry set to ``count``: the widest dynamic range, where
    the ELBO's terms (about x log x) cancel most (benchmarks/count_range.py)."""
    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, (60, 40)).astype(np.float64)
    X[rng.integers(60), rng.integers(40)] = count
    return sp.csr_array(X)


def test_counts_up_to_the_maximum_fit_with_a_monotone_elbo():
    from vbsnmf._validation import max_count

    largest = max_count(np.float64)
    assert largest == 1e13
    model = vbsnmf.VBNMF(3, max_iter=150, tol=0, n_threads=1, random_state=0, prior="gamma")
    model.fit(_one_huge_count(largest))
    trace = model.elbo_trace_
    assert np.all(np.isfinite(trace)) and trace.max() < 0  # a bound of a log-probability
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))
    for name in FITTED:
        assert np.all(np.isfinite(getattr(model, name)))
    # float32 factors: up to 2**24, within float32's 1e-3 of the float64 fit.
    fits = {}
    for dtype in (np.float64, np.float32):
        model = vbsnmf.VBNMF(
            3, max_iter=150, tol=0, n_threads=1, random_state=0, dtype=dtype, prior="gamma"
        )
        fits[dtype] = model.fit(_one_huge_count(2.0**24)).elbo_trace_[-1]
    assert abs(fits[np.float32] - fits[np.float64]) <= 1e-3 * abs(fits[np.float64])


@pytest.mark.parametrize("count", [np.nextafter(1e13, np.inf), 1e14, 1e200, 1e300])
def test_counts_above_the_maximum_are_refused(count, tmp_path):
    X = _one_huge_count(count)
    for method in ("batch", "svi"):
        with pytest.raises(ValueError, match="above 10,000,000,000,000"):
            vbsnmf.VBNMF(3, max_iter=2, solver=method, prior="gamma").fit(X)
    with pytest.raises(ValueError, match=r"above 16,777,216.*dtype=np\.float64"):
        vbsnmf.VBNMF(3, max_iter=2, dtype=np.float32, prior="gamma").fit(
            _one_huge_count(2.0**24 + 1)
        )


def test_the_limit_is_on_the_sum_of_repeated_entries():
    """Repeated entries are one count, their sum: two of 9e12 (each under the limit) were
    fitted as 1.8e13, above float64's limit; two of 2**23 + 1 above float32's."""
    base = sp.coo_array(_one_huge_count(2.0))
    row, col = int(base.row[0]), int(base.col[0])
    for dtype, count in ((np.float64, 9e12), (np.float32, 2.0**23 + 1)):
        rows, cols = np.r_[base.row, row, row], np.r_[base.col, col, col]
        values = np.r_[base.data, count, count]
        order = np.argsort(rows, kind="stable")  # CSR with the repeats kept, unsummed
        pointers = np.searchsorted(rows[order], np.arange(base.shape[0] + 1))
        repeated = (
            sp.coo_array((values, (rows, cols)), shape=base.shape),
            sp.csr_array((values[order], cols[order], pointers), shape=base.shape),
        )
        limit = f"{vbsnmf._validation.max_count(dtype):,.0f}"
        for X in repeated:
            with pytest.raises(ValueError, match=rf"1 count above {limit}.*\({row}, {col}\)"):
                vbsnmf.VBNMF(2, max_iter=2, dtype=dtype, prior="gamma").fit(X)
            halved = X.copy()
            halved.data[halved.data == count] = count / 2  # the sum just under the limit
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                vbsnmf.VBNMF(2, max_iter=2, dtype=dtype, prior="gamma").fit(halved)


def test_huge_count_on_the_command_line_writes_no_infinity(tmp_path, capfd):
    from vbsnmf.cli import main

    path = tmp_path / "huge.mtx"
    path.write_text(
        "%%MatrixMarket matrix coordinate real general\n3 2 3\n1 1 1e300\n2 2 3\n3 1 1\n"
    )
    code = main(["fit", str(path), "--cells-as-rows", "-k", "1", "-o", str(tmp_path / "out")])
    err = without_compile_notice(capfd.readouterr().err)
    assert code == 2 and err.count("\n") == 1 and "1e+300" in err, err
    assert not (tmp_path / "out").exists()
