"""Batch VB (`vbsnmf._batch`, through `VBNMF`): an ascending, exact ELBO trace, the
stopping rule, reproducibility, recovery of a simulated mean."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from simulated import poisson_gamma_counts

import vbsnmf


@pytest.mark.parametrize("prior_shape", [1e-3, 0.3, 1.0])
def test_elbo_never_decreases_over_300_iterations(prior_shape, _pbmc_tiny):
    simulated, _ = poisson_gamma_counts(np.random.default_rng(5), 120, 90, 4)
    for X in (_pbmc_tiny.X, simulated):
        model = vbsnmf.VBNMF(
            5,
            prior_shape=prior_shape,
            max_iter=300,
            tol=0.0,
            random_state=0,
            n_threads=2,
            prior="gamma",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            model.fit(X)
        trace = model.elbo_trace_
        assert trace.shape == (300,)
        assert np.all(np.isfinite(trace))
        steps = np.diff(trace)
        assert np.all(steps >= -1e-9 * np.abs(trace[1:])), steps.min()


def test_recovers_simulated_mean():
    rng = np.random.default_rng(11)
    X, true_mean = poisson_gamma_counts(rng, 300, 200, 3, shape=1.0)
    model = vbsnmf.VBNMF(3, max_iter=500, tol=1e-7, random_state=0, n_init=2, prior="gamma")
    cell_factors = model.fit_transform(X)
    fitted_mean = cell_factors @ model.components_
    correlation = np.corrcoef(fitted_mean.ravel(), true_mean.ravel())[0, 1]
    assert correlation > 0.95, correlation


def test_same_seed_and_threads_bitwise_identical(_pbmc_tiny):
    traces = []
    for _ in range(2):
        model = vbsnmf.VBNMF(4, max_iter=40, tol=0, random_state=42, n_threads=2, prior="gamma")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            model.fit(_pbmc_tiny.X)
        traces.append((model.elbo_trace_, model.cell_shape_))
    assert traces[0][0].tobytes() == traces[1][0].tobytes()
    assert traces[0][1].tobytes() == traces[1][1].tobytes()


def test_thread_counts_agree(_pbmc_tiny):
    fits = []
    for n_threads in (1, 2):
        model = vbsnmf.VBNMF(
            4, max_iter=20, tol=0, random_state=3, n_threads=n_threads, prior="gamma"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            model.fit(_pbmc_tiny.X)
        fits.append(model.elbo_trace_)
    np.testing.assert_allclose(fits[0], fits[1], rtol=1e-10)


def test_huge_counts_and_tiny_prior_stay_finite():
    rng = np.random.default_rng(2)
    X = sp.random(60, 40, density=0.2, random_state=rng, format="csr")
    X.data = np.round(X.data * 1e6)
    X.eliminate_zeros()
    model = vbsnmf.VBNMF(5, prior_shape=1e-3, max_iter=50, random_state=0, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        factors = model.fit_transform(X)
    for array in (factors, model.components_, model.elbo_trace_, model.cell_shape_):
        assert np.all(np.isfinite(array))
    assert np.all(np.diff(model.elbo_trace_) >= -1e-9 * np.abs(model.elbo_trace_[1:]))


def test_converges_and_stops_on_tol(_pbmc_tiny):
    model = vbsnmf.VBNMF(3, max_iter=2000, tol=1e-4, random_state=0, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("error", vbsnmf.ConvergenceWarning)
        model.fit(_pbmc_tiny.X)
    trace = model.elbo_trace_
    assert model.converged_ and model.n_iter_ == len(trace) < 2000
    assert abs(trace[-1] - trace[-2]) <= 1e-4 * abs(trace[-2])
    assert abs(trace[-2] - trace[-3]) > 1e-4 * abs(trace[-3])


def test_max_iter_warns():
    X = np.random.default_rng(0).poisson(2.0, (30, 20))
    with pytest.warns(vbsnmf.ConvergenceWarning, match="max_iter=3"):
        model = vbsnmf.VBNMF(2, max_iter=3, tol=0, random_state=0, prior="gamma").fit(X)
    assert model.n_iter_ == 3


def test_empty_rows_keep_prior_shape():
    X = np.random.default_rng(0).poisson(1.0, (20, 15)).astype(float)
    X[4] = 0
    model = vbsnmf.VBNMF(3, prior_shape=0.5, max_iter=10, tol=0, random_state=0, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(X)
    np.testing.assert_array_equal(model.cell_shape_[4], 0.5)


def test_float32_halves_factor_memory(_pbmc_tiny):
    model = vbsnmf.VBNMF(4, max_iter=30, tol=0, random_state=0, dtype=np.float32, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(_pbmc_tiny.X)
    assert model.cell_shape_.dtype == np.float32 and model.components_.dtype == np.float32
    assert np.all(np.isfinite(model.elbo_trace_))
    double = vbsnmf.VBNMF(4, max_iter=30, tol=0, random_state=0, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        double.fit(_pbmc_tiny.X)
    assert model.cell_shape_.nbytes * 2 == double.cell_shape_.nbytes
    np.testing.assert_allclose(model.elbo_trace_, double.elbo_trace_, rtol=1e-3)


def _random_q(rng, dtype, n_rows=9000, n_cols=7, n_components=3):
    """A q of the learned prior's structure with positive entries spread over decades
    (9,000 rows: many of the kernels' buffers of logs, the last one partly filled)."""
    from vbsnmf._model import ScaleState, VariationalParams

    def positive(*shape):
        return np.exp(rng.normal(0.0, 2.0, shape))

    def scale(n):
        return ScaleState(positive(n), positive(n), positive(n_components), 1.5, 0.7)

    main = [positive(n, n_components).astype(dtype) for n in (n_rows, n_rows, n_cols, n_cols)]
    return VariationalParams(*main, scale(n_rows), scale(n_cols))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_squarem_step_and_extrapolation_match_numpy(dtype):
    """SqS3's step |r| / |v| and ``exp(log theta0 + 2 s r + s^2 v)`` over every positive
    array of q (factors, scales, hyperparameters), against numpy in float64 logs; the
    candidate's four arrays of q are theta2's, written over (no new q)."""
    from vbsnmf._batch import _extrapolate_over, _step_length

    rng = np.random.default_rng(0)
    thetas = [_random_q(rng, dtype) for _ in range(3)]
    logs = [[np.log(np.asarray(a, np.float64)) for a in q.positive_arrays()] for q in thetas]
    r = [x1 - x0 for x0, x1 in zip(logs[0], logs[1])]
    v = [x2 - 2.0 * x1 + x0 for x0, x1, x2 in zip(*logs)]
    expected_step = np.sqrt(sum(np.sum(a * a) for a in r) / sum(np.sum(a * a) for a in v))
    assert _step_length(*thetas) == pytest.approx(expected_step, rel=1e-12)

    step = 1.7
    candidate = _extrapolate_over(*thetas, step)
    for got, x0, r_, v_ in zip(candidate.positive_arrays(), logs[0], r, v):
        expected = np.exp(x0 + 2.0 * step * r_ + step * step * v_)
        rtol = 1e-12 if got.dtype == np.float64 else 2e-7
        np.testing.assert_allclose(got, expected, rtol=rtol)
    for got, model in zip(candidate.positive_arrays()[:4], thetas[2].positive_arrays()):
        assert got.dtype == model.dtype and got.shape == model.shape
        assert np.shares_memory(got, model)


def test_squarem_refuses_a_step_that_leaves_the_positive_numbers():
    """A candidate with an entry that overflows (or underflows to zero) is no q: None."""
    from vbsnmf._batch import _extrapolate_over

    def extrapolate(factor, step):  # a fresh theta2 each time: the call spends it
        rng = np.random.default_rng(1)
        theta0, theta1, theta2 = (_random_q(rng, np.float64) for _ in range(3))
        theta1.col_rate[2, 1] = theta0.col_rate[2, 1] * factor
        theta2.col_rate[2, 1] = theta0.col_rate[2, 1] * factor**2  # v = 0: r alone, 2 s r
        return _extrapolate_over(theta0, theta1, theta2, step)

    assert extrapolate(1e30, 1.0) is not None
    assert extrapolate(1e30, 30.0) is None
    assert extrapolate(1e-30, 30.0) is None


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_accelerated_fit_is_monotone_exact_and_ahead_of_plain(seed, _pbmc_tiny):
    """The default (learned prior, SQUAREM) fit: every trace entry the exact ELBO of a q
    it held (the last: of the returned q), the trace never decreases, it converges in
    fewer passes than the plain coordinate ascent from the same start, and ends above the
    plain ascent after as many passes. (Where each stops, the two can be on either side
    of one another: on pbmc_tiny at K = 4 the stopping rule ends them in slow stretches of
    ascents to different points, up to 0.2 % apart; on pbmc_facs at K = 10 the default
    ends above the plain ascent's converged ELBO, docs/performance.md.)"""
    from vbsnmf._data import as_count_data
    from vbsnmf._model import HierarchicalPrior, elbo, init_params

    fits = {}
    for accelerate in (True, False):
        model = vbsnmf.VBNMF(4, random_state=seed, n_threads=2, accelerate=accelerate)
        with warnings.catch_warnings():
            warnings.simplefilter("error", vbsnmf.ConvergenceWarning)
            model.fit(_pbmc_tiny.X)
        fits[accelerate] = model
    fast, plain = fits[True], fits[False]
    trace = fast.elbo_trace_
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))
    assert fast.converged_ and fast.n_iter_ < plain.n_iter_
    # plain.elbo_trace_[n - 1]: the plain q after n steps, scored by pass n + 1
    assert trace[-1] > plain.elbo_trace_[fast.n_iter_ - 1]
    prior = HierarchicalPrior()
    q = init_params(fast, _pbmc_tiny.X.shape, 4, np.float64, prior)
    value = elbo(as_count_data(_pbmc_tiny.X), q, prior, n_parts=2)
    assert value == pytest.approx(trace[-1], rel=1e-12)


def _recording_live_q(monkeypatch):
    """Record every q (`VariationalParams`) made from now on; returns a function that gives
    those still alive, whoever holds them (cyclic garbage not yet collected included, as
    ``gc.get_objects()`` would: a scan of that at every pass and step took 49 of 59 s)."""
    import weakref

    from vbsnmf._model import VariationalParams

    made, init = [], VariationalParams.__init__

    def init_and_record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(weakref.ref(self))

    monkeypatch.setattr(VariationalParams, "__init__", init_and_record)

    def alive():
        held = [(ref, ref()) for ref in made]
        made[:] = [ref for ref, q in held if q is not None]
        return [q for _, q in held if q is not None]

    return alive


def test_squarem_holds_at_most_two_q_during_a_pass_or_a_step(_pbmc_tiny, monkeypatch):
    """Each q is (cells + genes) x K arrays: while a pass runs the fit holds the q it
    keeps and the q being scored, and while a step runs the q it steps and the one before
    (theta0 and theta1, for the extrapolation), never a q of an earlier cycle; a kept
    candidate's step holds the candidate alone. (The
    candidate is written over theta2, which a refused candidate's fit takes again from
    theta1 and its statistics; before, theta1, theta2 and the candidate were all held
    through the candidate's pass and step: 2.2 q more at the peak, 35 MiB at pbmc_facs and
    K = 100.) The q being built by a step is not counted: it has no object yet."""
    import weakref

    from vbsnmf import _batch

    alive_q = _recording_live_q(monkeypatch)

    def live_q():
        return len(alive_q())

    at_passes, at_steps, at_candidate_steps, candidates = [], [], [], []
    scored, stepped = _batch.scored_statistics, _batch.global_step
    extrapolate = _batch._extrapolate_over

    def counting_pass(*args, **kwargs):
        at_passes.append(live_q())
        return scored(*args, **kwargs)

    def counting_step(params, *args, **kwargs):
        is_candidate = any(ref() is params for ref in candidates)
        (at_candidate_steps if is_candidate else at_steps).append(live_q())
        return stepped(params, *args, **kwargs)

    def recording(*args):  # weak references: an id can be reused once its q is gone
        candidate = extrapolate(*args)
        if candidate is not None:
            candidates.append(weakref.ref(candidate))
        return candidate

    monkeypatch.setattr(_batch, "scored_statistics", counting_pass)
    monkeypatch.setattr(_batch, "global_step", counting_step)
    monkeypatch.setattr(_batch, "_extrapolate_over", recording)
    model = vbsnmf.VBNMF(4, random_state=0, n_threads=1, max_iter=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(_pbmc_tiny.X)
    assert len(at_passes) == model.n_iter_ == 30
    assert max(at_passes) == 2 and max(at_steps) == 2, (at_passes, at_steps)
    # A kept candidate's step holds the candidate alone (theta1 is let go first).
    assert at_candidate_steps and max(at_candidate_steps) == 1, at_candidate_steps


def test_a_refused_candidate_continues_from_theta2_bit_for_bit(_pbmc_tiny, monkeypatch):
    """The candidate is written over theta2, so a refused candidate's fit takes theta2
    again from theta1 and its pass's statistics: the q each such cycle continues from is
    theta2 as the step first made it, every array bit for bit (the extrapolation wrapped
    to copy theta2 before it is written over; refusals and acceptances both occur)."""
    from vbsnmf import _batch
    from vbsnmf._data import as_count_data
    from vbsnmf._model import HierarchicalPrior, init_params

    prior = HierarchicalPrior()
    warm = vbsnmf.VBNMF(4, random_state=1, n_threads=1, max_iter=3, accelerate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        warm.fit(_pbmc_tiny.X)
    start = init_params(warm, _pbmc_tiny.X.shape, 4, np.float64, prior)
    extrapolate, cycles = _batch._extrapolate_over, []

    def copying(theta0, theta1, theta2, step):
        copies = [a.copy() for a in theta2.positive_arrays()]
        candidate = extrapolate(theta0, theta1, theta2, step)
        cycles.append((copies, candidate))
        return candidate

    outcomes = []

    def check(state):
        if cycles:
            copies, candidate = cycles.pop()
            if state.kept is candidate:
                outcomes.append("kept")
                return
            outcomes.append("refused")
            for got, expected in zip(state.current.positive_arrays(), copies, strict=True):
                np.testing.assert_array_equal(got, expected, strict=True)

    monkeypatch.setattr(_batch, "_extrapolate_over", copying)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        _batch.fit_batch_accelerated(
            as_count_data(_pbmc_tiny.X), _batch.start_accelerated(start), prior,
            max_iter=150, tol=0.0, on_cycle=check,
        )  # fmt: skip
    assert "refused" in outcomes and "kept" in outcomes, outcomes


# -- compacted q (issue 18: the learned prior's rates in n + K numbers while a q waits) -------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_compacted_q_makes_its_rates_bit_for_bit(_pbmc_tiny, dtype):
    """A learned-prior step's rates from its `FactoredRate` (the scales' means, the other
    side's sums, the gauge's divisor), whole and by flat runs across rows, are the step's
    arrays bit for bit; `expanded(compact(q))` is q."""
    from vbsnmf._data import as_count_data
    from vbsnmf._model import (
        HierarchicalPrior,
        compact,
        expanded,
        global_step,
        init_params,
        scored_statistics,
    )

    prior = HierarchicalPrior()
    model = vbsnmf.VBNMF(5, random_state=2, dtype=dtype, max_iter=3, accelerate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(_pbmc_tiny.X)
    q = init_params(model, _pbmc_tiny.X.shape, 5, np.dtype(dtype), prior)
    data = as_count_data(_pbmc_tiny.X)
    for _ in range(3):  # steps of this q: scales and gauge of its own
        q = global_step(q, *scored_statistics(data, q, prior, 2)[:2], prior)
    small = compact(q)
    for made, rate in zip(q.rate_parts, (q.row_rate, q.col_rate), strict=True):
        np.testing.assert_array_equal(np.asarray(made), rate, strict=True)
        flat = rate.ravel()
        for start, stop in ((0, 7), (3, 11), (flat.size - 9, flat.size), (0, flat.size)):
            np.testing.assert_array_equal(made.flat_entries(start, stop), flat[start:stop])
    assert small.row_rate is q.rate_parts[0] and small.row_shape is q.row_shape
    whole = expanded(small)
    for got, expected in zip(whole.positive_arrays(), q.positive_arrays(), strict=True):
        np.testing.assert_array_equal(got, expected, strict=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_squarem_with_compacted_q_is_the_fit_without_in_less_memory(_pbmc_tiny, monkeypatch, dtype):
    """theta0 and theta1 wait through a cycle compacted (their rates as `FactoredRate`,
    made again a run of entries at a time for the step length and the extrapolation, and
    whole for a refused candidate's step): the fit is the one without compaction bit for
    bit, refusals and acceptances both occurring, and the q arrays held at any pass, step
    or extrapolation are at most two q's worth (three before: theta0, theta1 and theta2
    at the extrapolation, 35 MiB more at pbmc_facs and K = 100)."""
    from vbsnmf import _batch, _kernels
    from vbsnmf._model import FactoredRate

    monkeypatch.setattr(_batch, "_RUN", _kernels.SQUAREM_BLOCK)  # many runs on small data
    n_components = 8
    options = {"random_state": 4, "n_threads": 1, "max_iter": 80, "tol": 0, "dtype": dtype}

    def fit():
        model = vbsnmf.VBNMF(n_components, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            model.fit(_pbmc_tiny.X)
        return model

    alive_q = _recording_live_q(monkeypatch)

    def q_bytes():
        return sum(a.nbytes for q in alive_q() for a in q.as_tuple() if isinstance(a, np.ndarray))

    held, restepped = [], []
    scored, stepped, extrapolate = (
        _batch.scored_statistics,
        _batch.global_step,
        _batch._extrapolate_over,
    )

    def measured(function):
        def call(*args, **kwargs):
            held.append(q_bytes())
            return function(*args, **kwargs)

        return call

    def step(params, *args, **kwargs):
        restepped.append(isinstance(params.row_rate, FactoredRate))  # a refused candidate's
        held.append(q_bytes())
        return stepped(params, *args, **kwargs)

    monkeypatch.setattr(_batch, "scored_statistics", measured(scored))
    monkeypatch.setattr(_batch, "global_step", step)
    monkeypatch.setattr(_batch, "_extrapolate_over", measured(extrapolate))
    compacted = fit()
    monkeypatch.setattr(_batch, "compact", lambda q: q)
    whole = fit()
    assert compacted.n_iter_ == whole.n_iter_ == 80
    np.testing.assert_array_equal(compacted.elbo_trace_, whole.elbo_trace_)
    for name in ("cell_shape_", "cell_rate_", "gene_shape_", "gene_rate_", "components_"):
        np.testing.assert_array_equal(getattr(compacted, name), getattr(whole, name), strict=True)
    n_cells, n_genes = _pbmc_tiny.X.shape
    one_q = 2 * (n_cells + n_genes) * n_components * np.dtype(dtype).itemsize
    assert any(restepped) and not all(restepped)
    assert max(held[: len(held) // 2]) <= 2 * one_q  # the compacted fit's calls
    assert max(held[len(held) // 2 :]) >= 3 * one_q  # the fit without: theta0 to theta2


# -- the hold of a random start's factor shapes (model.md, "The hold") ------------------------
def _shapes_per_kept_q(X, n_components, init=None, **options):
    """The cells' and genes' factor shapes of every q in a default fit's trace, and the fit."""
    shapes = []

    def record(n_iter, params, trace):
        shapes.append((params.row_scale.factor_shape.copy(), params.col_scale.factor_shape.copy()))

    model = vbsnmf.VBNMF(n_components, random_state=3, n_threads=1, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(X, init=init, callback=record)
    return shapes, model


@pytest.mark.parametrize("accelerate", [False, True])
def test_a_random_start_holds_its_factor_shapes_until_a_step_changes_the_elbo_little(
    accelerate, _pbmc_tiny
):
    """The factor shapes stay at the start's 1 until a plain step first changes the ELBO by
    at most sqrt(1e-5) (relative), are learned from the step after, and the trace stays
    monotone; a start given by ``init`` learns them from its first step."""
    shapes, model = _shapes_per_kept_q(_pbmc_tiny.X, 5, accelerate=accelerate, max_iter=400)
    trace = model.elbo_trace_
    assert model.converged_ and np.all(np.diff(trace) >= 0)
    held = [bool(np.all(rows == 1.0) and np.all(cols == 1.0)) for rows, cols in shapes]
    n_held = held.index(False)
    assert n_held >= 2 and not any(held[n_held:])
    # Until the release every q is the plain step of the one before it (SQUAREM too);
    # changes[i] is q_i -> q_i+1, and the step from q_i+1 is the first to learn.
    changes = np.abs(np.diff(trace)) / np.abs(trace[:-1])
    release = int(np.argmax(changes <= np.sqrt(1e-5)))
    assert n_held == release + 2, (n_held, release)
    init = {
        "cell_shape": model.cell_shape_,
        "cell_rate": model.cell_rate_,
        "gene_shape": model.gene_shape_,
        "gene_rate": model.gene_rate_,
    }
    warm, _ = _shapes_per_kept_q(_pbmc_tiny.X, 5, accelerate=accelerate, max_iter=3, init=init)
    assert not np.all(warm[1][1] == 1.0)


def test_the_hold_lifts_the_digits_at_k_20_to_a_higher_optimum(monkeypatch):
    """The case the hold is for, on data no default was chosen on (scikit-learn's 8 x 8
    digits, pixel intensities 0..16 as counts): at K = 20 the fit that learns the factor
    shapes from its first pass ends lower than the held one from the same start."""
    from sklearn.datasets import load_digits

    X = sp.csr_matrix(load_digits().data)
    options = dict(random_state=0, n_threads=1, max_iter=1000)
    held = vbsnmf.VBNMF(20, **options).fit(X)
    monkeypatch.setattr(vbsnmf._batch, "held_prior", lambda prior: None)
    unheld = vbsnmf.VBNMF(20, **options).fit(X)
    assert held.converged_ and unheld.converged_
    assert held.elbo_trace_[-1] > unheld.elbo_trace_[-1] + 1e-3 * abs(unheld.elbo_trace_[-1])


@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_passes_and_kept_values_of_accelerated_fits_obey_the_checkpoint_bound(
    prior, monkeypatch, _pbmc_tiny
):
    """What `_checkpoint.check_accelerated_progress` holds a checkpoint to, at the start of
    every SQUAREM cycle (where checkpoints are saved) and at the end, over fits with
    candidates kept and refused: T + 1 <= passes <= 1.5 (T + 1) for T kept ELBO values
    (no pass without a value but the start's and refused candidates'); the lower bound is
    reached."""
    from vbsnmf import _batch

    seen = []
    squarem = _batch.squarem

    def recording(state, *args, **options):
        def on_cycle(state):
            seen.append((state.n_passes, len(state.trace)))

        final = squarem(state, *args, **{**options, "on_cycle": on_cycle})
        seen.append((final.n_passes, len(final.trace)))
        return final

    monkeypatch.setattr(_batch, "squarem", recording)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        for seed in range(3):
            for max_iter in (1, 2, 3, 40):
                vbsnmf.VBNMF(
                    4, prior=prior, accelerate=True, random_state=seed, max_iter=max_iter,
                    n_threads=1,
                ).fit(_pbmc_tiny.X)  # fmt: skip
    assert (0, 0) in seen and len(seen) > 50
    for passes, kept in seen:
        assert passes == kept == 0 or kept + 1 <= passes <= 1.5 * (kept + 1), (passes, kept)
    assert any(passes == kept + 1 for passes, kept in seen if kept > 3)
