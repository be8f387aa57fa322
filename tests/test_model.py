"""The model (`vbsnmf._model`) against an independent numpy CAVI (`reference_cavi`):
one iteration, the ELBO, the log-space fallback, the local step; and the random start."""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import numpy as np
import pytest
import reference_cavi as ref
import scipy.sparse as sp
from simulated import poisson_gamma_counts
from traced import traced_peak

import vbsnmf
from vbsnmf import _model
from vbsnmf._data import as_count_data


def _random_params(rng, n_rows, n_cols, k):
    return (
        rng.uniform(0.5, 3.0, (n_rows, k)),
        rng.uniform(0.5, 2.0, k),
        rng.uniform(0.5, 3.0, (n_cols, k)),
        rng.uniform(0.5, 2.0, k),
    )


def _small_matrices():
    rng = np.random.default_rng(1)
    plain = rng.poisson(1.5, (13, 9)).astype(float)
    with_empty = rng.poisson(0.8, (8, 17)).astype(float)  # more columns than rows
    with_empty[3] = 0  # empty row
    with_empty[:, [0, 5]] = 0  # empty columns
    return {"plain": plain, "empty_rows_cols": with_empty}


def _as_dict(params):
    return dict(zip(("cell_shape", "cell_rate", "gene_shape", "gene_rate"), params))


@pytest.mark.parametrize("name", ["plain", "empty_rows_cols"])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("prior", [(1.0, 1.0), (0.3, 0.5)])
@pytest.mark.parametrize("block_rows", [None, 1, 2, 5])
def test_one_iteration_matches_numpy_cavi(name, n_threads, prior, block_rows):
    """The pass and the global step; also with the kernel's minor-axis cache blocks cut to
    a few rows (thousands on large data), so rows whose nonzeros skip whole blocks are
    covered."""
    X = _small_matrices()[name]
    prior = _model.GammaPrior(*prior)
    start = _model.VariationalParams(*_random_params(np.random.default_rng(7), *X.shape, 3))
    expected = ref.iteration(X, *start.as_tuple(), prior.shape, prior.rate)
    data = as_count_data(sp.csr_matrix(X))
    row_stat, col_stat, data_term = _model.shape_statistics(data, start, n_threads, block_rows)
    got = _model.global_step(start, row_stat, col_stat, prior)
    for mine, theirs in zip(got.as_tuple(), expected):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-10)
    # The pass under q also gives the ELBO of q.
    value = _model.elbo_terms(data_term, start, prior).value()
    reference = ref.elbo(X, *start.as_tuple(), prior.shape, prior.rate)
    np.testing.assert_allclose(value, reference, rtol=1e-10)


def test_a_float32_qs_rates_reach_the_pass_as_they_are():
    """`side_moments` hands a float32 q's rates to the pass without an n x K float64 copy,
    and the tables and the pass's statistics are those of the rates widened first (rows
    in the log-space regime included, where the pass reads the rates themselves)."""
    rng = np.random.default_rng(21)
    X = sp.random(40, 30, density=0.3, random_state=4, format="csr") * 5
    X.data = np.ceil(X.data)
    sides = []
    for n in X.shape:
        shape = (rng.gamma(1.0, 3.0, (n, 4)) + 1e-3).astype(np.float32)
        rate = rng.uniform(0.1, 5.0, (n, 4)).astype(np.float32)
        shape[:2], rate[:2] = 1e-4, 1e30  # exp(E[log z]) far below 1e-290: log space
        sides.append((shape, rate))
    kept = [_model.side_moments(shape, rate) for shape, rate in sides]
    widened = [_model.side_moments(shape, rate.astype(np.float64)) for shape, rate in sides]
    for (_, rate), moments, reference in zip(sides, kept, widened):
        assert moments[3].dtype == np.float32 and np.shares_memory(moments[3], rate)
        for got, expected in zip(moments[:2], reference[:2]):
            np.testing.assert_array_equal(got, expected, strict=True)
    data = as_count_data(X)
    for got, expected in zip(
        _model.pass_statistics(data, *kept, 2), _model.pass_statistics(data, *widened, 2)
    ):
        np.testing.assert_array_equal(got, expected, strict=True)


def test_one_fit_iteration_from_a_given_start_matches_numpy_cavi():
    """Through `VBNMF`: ``max_iter=1`` from ``init`` is one iteration, and the trace holds
    the ELBO of the parameters after it."""
    X = _small_matrices()["empty_rows_cols"]
    start = _random_params(np.random.default_rng(7), *X.shape, 3)
    expected = ref.iteration(X, *start, 0.3, 0.5)
    model = vbsnmf.VBNMF(3, prior_shape=0.3, prior_rate=0.5, max_iter=1, n_threads=2, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(sp.csr_matrix(X), init=_as_dict(start))
    got = (model.cell_shape_, model.cell_rate_, model.gene_shape_, model.gene_rate_)
    for mine, theirs in zip(got, expected):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-10)
    assert model.elbo_trace_.shape == (1,)
    np.testing.assert_allclose(model.elbo_trace_[0], ref.elbo(X, *expected, 0.3, 0.5), rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_counts_copied_for_the_engine_take_two_bytes_and_the_same_pass(dtype):
    """`as_count_data` stores the counts of a copy it makes (here the matrix transposed to
    its longer axis) as uint16 when they are whole numbers up to 65,535, and uses a
    caller's canonical float32 CSR as it is; the pass's statistics and data term are
    bitwise those from float32 counts, in either dtype of q."""
    rng = np.random.default_rng(4)
    X = sp.csr_array(rng.poisson(3.0, (20, 45)).astype(np.int64))  # more columns: transposed
    data = as_count_data(X)
    assert data.counts.dtype == np.uint16 and data.major == 1
    large = X.astype(np.float64)
    large.data[0] = 70000.0
    assert as_count_data(large).counts.dtype == np.float32  # past uint16
    assert as_count_data(X * 0.5).counts.dtype == np.float32  # not whole numbers
    own = sp.csr_array(X.T.astype(np.float32))  # canonical along its longer axis already
    assert np.shares_memory(as_count_data(own).counts, own.data)
    as_float = as_count_data(X, counts_dtype=np.float32)
    params = _model.VariationalParams(
        *(a.astype(dtype) for a in _random_params(np.random.default_rng(5), *X.shape, 4))
    )
    for mine, theirs in zip(
        _model.shape_statistics(data, params, 2), _model.shape_statistics(as_float, params, 2)
    ):
        np.testing.assert_array_equal(mine, theirs)
    assert data.log_factorial == as_float.log_factorial


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_indices_copied_for_the_engine_take_two_bytes_and_the_same_pass(dtype):
    """A copy `as_count_data` makes (here from COO or dense input) stores its indices as
    uint16 when the minor axis has at most 65,536 entries (here up to the last index
    65,535), keeps them wider past that, and never copies a caller's CSR's indices; the
    pass's statistics and data term are bitwise those from int32 indices, in either dtype
    of q."""
    rng = np.random.default_rng(6)
    n_minor = 1 << 16
    rows = np.concatenate([rng.integers(0, 70000, 300), [69999, 0]])
    cols = np.concatenate([rng.integers(0, n_minor, 300), [n_minor - 1, n_minor - 1]])
    entries = (rng.integers(1, 9, rows.size).astype(np.float64), (rows, cols))
    X = sp.coo_array(entries, shape=(70000, n_minor))
    data = as_count_data(X)
    assert data.indices.dtype == np.uint16 and data.major == 0
    assert int(data.indices.max()) == n_minor - 1
    wide = as_count_data(sp.coo_array(entries, shape=(70000, n_minor + 1)))
    assert wide.indices.dtype.itemsize >= 4  # past uint16: kept as scipy gives them
    own = sp.csr_array(X.astype(np.float32))  # canonical along its longer axis already
    assert np.shares_memory(as_count_data(own).indices, own.indices)
    small = rng.poisson(1.0, (30, 20)).astype(np.float64)
    assert as_count_data(small).indices.dtype == np.uint16  # dense: the CSR is ours
    caller = sp.csr_array(small)
    converted = as_count_data(caller)  # its counts converted, its indices not copied
    assert converted.counts.dtype == np.uint16
    assert np.shares_memory(converted.indices, caller.indices)
    as_int32 = dataclasses.replace(data, indices=data.indices.astype(np.int32))
    params = _model.VariationalParams(
        *(a.astype(dtype) for a in _random_params(np.random.default_rng(8), *X.shape, 3))
    )
    for n_parts in (1, 2):
        for mine, theirs in zip(
            _model.shape_statistics(data, params, n_parts),
            _model.shape_statistics(as_int32, params, n_parts),
        ):
            np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(data.totals()[1], as_int32.totals()[1])


def test_the_pass_sees_int64_pointers_whatever_the_caller_gives(monkeypatch):
    """scipy gives a small matrix int32 pointers and a large one int64, and SVI's
    minibatches of nonzeros have int64 pointers: `as_count_data` stores every matrix's
    pointers as int64 (n_major + 1 entries), so Numba compiles the pass once for them,
    not once per pointer dtype. The caller's counts and indices are still used in place,
    and the fits from either pointer dtype are the same bit for bit."""
    seen = set()
    real = _model._kernels.update_shapes

    def recording(indptr, *args):
        seen.add(indptr.dtype)
        return real(indptr, *args)

    monkeypatch.setattr(_model._kernels, "update_shapes", recording)
    rng = np.random.default_rng(9)
    narrow = sp.csr_array(rng.poisson(0.8, (60, 25)).astype(np.float32))
    assert narrow.indptr.dtype == np.int32  # as scipy gives it
    wide = narrow.copy()
    wide.indptr, wide.indices = narrow.indptr.astype(np.int64), narrow.indices.astype(np.int64)
    for caller in (narrow, wide):
        data = as_count_data(caller)
        assert data.indptr.dtype == np.int64
        np.testing.assert_array_equal(data.indptr, caller.indptr)
        assert np.shares_memory(data.counts, caller.data)  # no copy of the nonzeros
        assert np.shares_memory(data.indices, caller.indices)
    fits = []
    for caller in (narrow, wide):
        model = vbsnmf.VBNMF(3, random_state=0, max_iter=5, n_threads=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            fits.append(model.fit_transform(caller))
            vbsnmf.VBNMF(3, prior="gamma", solver="svi", svi_form="nonzeros", n_epochs=1).fit(
                caller
            )
    np.testing.assert_array_equal(fits[0], fits[1])
    assert seen == {np.dtype(np.int64)}, seen


@pytest.mark.parametrize("name", ["plain", "empty_rows_cols"])
def test_elbo_matches_numpy_reference(name):
    X = _small_matrices()[name]
    start = _random_params(np.random.default_rng(3), *X.shape, 4)
    data = as_count_data(sp.coo_matrix(X))
    got = _model.elbo(data, _model.VariationalParams(*start), _model.GammaPrior(0.7, 1.3), 2)
    np.testing.assert_allclose(got, ref.elbo(X, *start, 0.7, 1.3), rtol=1e-10)


@pytest.mark.parametrize("block_rows", [None, 1])
def test_log_space_fallback_when_products_underflow(block_rows):
    """Rows peaked on different components: exp(E[log z]) exp(E[log w]) underflows to 0
    on every component, the kernel must fall back to log-sum-exp and stay exact (also
    with one minor row per cache block)."""
    X = np.array([[3.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    tiny_shape = 1e-3  # digamma(1e-3) ~ -1000: exp underflows in float64
    row_shape = np.array([[50.0, tiny_shape], [tiny_shape, 50.0]])
    col_shape = np.array([[tiny_shape, 40.0], [40.0, tiny_shape], [tiny_shape, tiny_shape]])
    params = _model.VariationalParams(row_shape, np.ones(2), col_shape, np.ones(2))
    data = as_count_data(sp.csr_matrix(X))
    row_stat, col_stat, data_term = _model.shape_statistics(data, params, 1, block_rows)
    assert np.all(np.isfinite(row_stat)) and np.all(np.isfinite(col_stat))
    expected = ref.iteration(X, *params.as_tuple(), 1e-3, 1.0)
    np.testing.assert_allclose(row_stat + 1e-3, expected[0], rtol=1e-10)
    np.testing.assert_allclose(col_stat + 1e-3, expected[2], rtol=1e-10)
    value = _model.elbo_terms(data_term, params, _model.GammaPrior(1e-3, 1.0)).value()
    np.testing.assert_allclose(value, ref.elbo(X, *params.as_tuple(), 1e-3, 1.0), rtol=1e-10)


def test_transform_matches_reference_local_cavi():
    rng = np.random.default_rng(8)
    X, _ = poisson_gamma_counts(rng, 80, 30, 3)
    model = vbsnmf.VBNMF(3, max_iter=100, random_state=0, prior="gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(X)
    new_rows = rng.poisson(2.0, (7, 30)).astype(float)
    new_rows[2] = 0
    fixed = vbsnmf.VBNMF(3, max_iter=25, tol=0.0, prior="gamma")
    fixed.__dict__.update({k: v for k, v in model.__dict__.items() if k.endswith("_")})
    shape, rate = fixed.transform_posterior(new_rows)
    ref_shape, ref_rate = ref.fit_rows(new_rows, model.gene_shape_, model.gene_rate_, 1.0, 1.0, 25)
    np.testing.assert_allclose(shape, ref_shape, rtol=1e-10)
    np.testing.assert_allclose(rate, ref_rate, rtol=1e-12)
    np.testing.assert_allclose(fixed.transform(new_rows), ref_shape / ref_rate, rtol=1e-10)


@pytest.mark.parametrize("learned", [False, True])
def test_the_local_row_terms_are_the_kl_of_each_row(learned):
    """Each row's ``-E[z_i] . col_mean_sum - KL`` against scipy's functions entry by entry
    (under the learned prior in expectation over q(xi), plus KL(q(xi)))."""
    from scipy.special import digamma, gammaln

    rng = np.random.default_rng(13)
    params = _learned_params(rng, 9, 4, 3)
    shape, rate, scale = params.row_shape, params.row_rate, params.row_scale
    col_mean_sum = rng.uniform(1.0, 50.0, 3)
    if learned:
        prior = _model.HierarchicalPrior()
        a, mean_xi = scale.factor_shape[None, :], (scale.shape / scale.rate)[:, None]
        log_xi = (digamma(scale.shape) - np.log(scale.rate))[:, None]
        rate0 = scale.prior_shape / scale.prior_mean
        scale_kl = (
            (scale.shape - scale.prior_shape) * digamma(scale.shape)
            - gammaln(scale.shape)
            + gammaln(scale.prior_shape)
            + scale.prior_shape * (np.log(scale.rate) - np.log(rate0))
            + scale.shape * (rate0 - scale.rate) / scale.rate
        )
    else:
        prior, scale = _model.GammaPrior(0.4, 1.7), None
        a, mean_xi, log_xi, scale_kl = 0.4, 1.7, np.log(1.7), 0.0
    kl = (
        (shape - a) * digamma(shape)
        - gammaln(shape)
        + gammaln(a)
        + a * (np.log(rate) - log_xi)
        + shape * (mean_xi - rate) / rate
    )
    expected = -(shape / rate) @ col_mean_sum - kl.sum(axis=1) - scale_kl
    got = _model._local_row_terms(shape, rate, prior, scale, col_mean_sum)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_a_cells_projection_does_not_depend_on_the_cells_projected_with_it(prior):
    """Each row of a local fit stops on its own ELBO: a cell projected alone, with others
    in another order, or on another number of threads has the same factors, bit for bit,
    at the default tol (the rows of one call used to stop together)."""
    rng = np.random.default_rng(14)
    X, _ = poisson_gamma_counts(rng, 120, 40, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.VBNMF(4, prior=prior, max_iter=60, random_state=0, n_threads=2).fit(X)
    new = rng.poisson(1.0, (25, 40)).astype(np.float64)
    new[6] = 0
    every = model.transform(new)
    assert np.all(np.isfinite(every)) and np.all(every > 0)
    for rows in ([3], [20, 1, 6, 13], rng.permutation(25)[:12]):
        np.testing.assert_array_equal(model.transform(new[rows]), every[rows])
    model.set_params(n_threads=1)
    np.testing.assert_array_equal(model.transform(new), every)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_random_start_is_the_same_for_any_split_of_the_rows(dtype):
    """The start of rows a:b drawn alone equals rows a:b of the whole side, for ranges
    that cross the fixed blocks of the draw; shapes in [1, 2), components distinct."""
    n_rows, k = 3 * _model.START_BLOCK_ROWS + 17, 3
    whole = _model.random_shapes(99, 0, 0, n_rows, k, dtype)
    assert whole.dtype == dtype and np.all((whole >= 1.0) & (whole < 2.0))
    assert len(np.unique(whole[0])) == k
    cuts = [0, 5, _model.START_BLOCK_ROWS - 1, _model.START_BLOCK_ROWS + 3, 9000, n_rows]
    pieces = [_model.random_shapes(99, 0, a, b, k, dtype) for a, b in itertools.pairwise(cuts)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    # Another seed, another side or another start index draws other numbers.
    for other in (
        _model.random_shapes(98, 0, 0, n_rows, k, dtype),
        _model.random_shapes(99, 1, 0, n_rows, k, dtype),
        _model.random_shapes(99, 0, 0, n_rows, k, dtype, start=1),
    ):
        assert not np.array_equal(other, whole)


def test_random_start_rates_put_the_expected_mean_count():
    shape, k, total = (40, 30), 4, 600.0
    start = _model.random_start(shape, k, total, 5, np.float64)
    mean_count = total / (shape[0] * shape[1])
    # E[z] E[w] summed over l, with the shapes' mean 1.5: the data's mean count.
    np.testing.assert_allclose(
        k * (1.5 / start.row_rate[0]) * (1.5 / start.col_rate[0]), mean_count
    )
    np.testing.assert_array_equal(start.row_shape, _model.random_shapes(5, 0, 0, 40, k, np.float64))


@pytest.mark.parametrize(
    ("random_state", "error"),
    [(-1, ValueError), (1.5, TypeError), ("7", TypeError), (True, TypeError)],
)
def test_seed_entropy_refuses_what_is_not_a_seed(random_state, error):
    with pytest.raises(error, match="random_state"):
        _model.seed_entropy(random_state)
    assert _model.seed_entropy(7) == 7
    generator = np.random.default_rng(3)
    assert _model.seed_entropy(generator) != _model.seed_entropy(generator)  # draws advance


def test_init_params_checks_keys_shapes_and_values():
    good = {
        "cell_shape": np.ones((4, 2)),
        "cell_rate": np.ones(2),
        "gene_shape": np.ones((3, 2)),
        "gene_rate": np.ones(2),
    }
    params = _model.init_params(good, (4, 3), 2, np.float32)
    assert params.row_shape.dtype == np.float32 and params.col_shape.shape == (3, 2)
    assert params.row_shape is not good["cell_shape"]  # copied
    with pytest.raises(ValueError, match="missing 'gene_rate'"):
        _model.init_params({k: v for k, v in good.items() if k != "gene_rate"}, (4, 3), 2, float)
    with pytest.raises(ValueError, match=r"gene_shape has shape \(3, 2\), expected \(5, 2\)"):
        _model.init_params(good, (4, 5), 2, float)
    with pytest.raises(ValueError, match="positive and finite"):
        _model.init_params({**good, "cell_rate": np.array([1.0, np.nan])}, (4, 3), 2, float)
    with pytest.raises(TypeError, match="init must be"):
        _model.init_params([1, 2], (4, 3), 2, float)


# -- the learned (hierarchical) prior ------------------------------------------------------
LEARNED = _model.HierarchicalPrior()


def _learned_params(rng, n_rows, n_cols, k):
    """Any positive q with per-entry rates, and hyperparameters away from 1."""

    def g(*shape):
        return rng.gamma(2.0, 1.0, size=shape) + 0.05

    def scale(n):
        return _model.ScaleState(g(n), g(n), rng.uniform(0.2, 2.0, k), 2.5, 0.7)

    return _model.VariationalParams(
        g(n_rows, k), g(n_rows, k), g(n_cols, k), g(n_cols, k), scale(n_rows), scale(n_cols)
    )


def _sides(params):
    return tuple(
        (shape, rate, s.shape, s.rate, s.factor_shape, s.prior_shape, s.prior_mean)
        for shape, rate, s in (
            (params.row_shape, params.row_rate, params.row_scale),
            (params.col_shape, params.col_rate, params.col_scale),
        )
    )


@pytest.mark.parametrize("name", ["plain", "empty_rows_cols"])
def test_learned_elbo_matches_the_dense_reference(name):
    X = _small_matrices()[name]
    params = _learned_params(np.random.default_rng(4), *X.shape, 3)
    data = as_count_data(sp.csr_matrix(X))
    got = _model.elbo(data, params, LEARNED, 2)
    np.testing.assert_allclose(got, ref.learned_elbo(X, _sides(params)), rtol=1e-10)


@pytest.mark.parametrize("name", ["plain", "empty_rows_cols"])
def test_learned_side_updates_match_the_reference(name):
    """The factor and scale updates of one iteration (hyperparameters held) against the
    numpy reference, from the same pass statistics."""
    X = _small_matrices()[name]
    params = _learned_params(np.random.default_rng(5), *X.shape, 3)
    data = as_count_data(sp.csr_matrix(X))
    row_stat, col_stat, _ = _model.shape_statistics(data, params, 1)
    rows = _model.update_side_learned(row_stat, params.row_scale, params.col_mean.sum(axis=0))
    cols = _model.update_side_learned(col_stat, params.col_scale, (rows[0] / rows[1]).sum(axis=0))
    expected_rows, expected_cols = ref.learned_iteration(X, _sides(params))
    for (shape, rate, scale, mean_sum), expected in ((rows, expected_rows), (cols, expected_cols)):
        for mine, theirs in zip((shape, rate, scale.shape, scale.rate), expected[:4]):
            np.testing.assert_allclose(mine, theirs, rtol=1e-10)
        np.testing.assert_allclose(mean_sum, (expected[0] / expected[1]).sum(axis=0), rtol=1e-12)


def test_every_learned_step_raises_the_elbo():
    """Each block of the learned model's global step is an exact coordinate-ascent step:
    the ELBO never falls from one block to the next, the hyperparameters' update raises it
    too (their exact maximiser), and the gauge step leaves it unchanged."""
    X = _small_matrices()["plain"]
    data = as_count_data(sp.csr_matrix(X))
    params = _learned_params(np.random.default_rng(6), *X.shape, 3)

    def value(p):
        return _model.elbo(data, p, LEARNED, 1)

    for _ in range(5):
        row_stat, col_stat, _ = _model.shape_statistics(data, params, 1)
        steps = [params]
        shape, rate, _, _ = _model.update_side_learned(
            row_stat, params.row_scale, params.col_mean.sum(axis=0)
        )
        with_rows = _model.VariationalParams(
            shape, rate, params.col_shape, params.col_rate, params.row_scale, params.col_scale
        )
        steps.append(with_rows)
        with_scale = _model.VariationalParams(
            shape,
            rate,
            params.col_shape,
            params.col_rate,
            _model.scale_optimum(shape, rate, params.row_scale),
            params.col_scale,
        )
        steps.append(with_scale)
        after = _model.global_step(params, row_stat, col_stat, LEARNED)
        steps.append(after)
        values = [value(p) for p in steps]
        assert np.all(np.diff(values) >= -1e-9 * np.abs(values[1:])), values
        # The gauge alone changes nothing.
        np.testing.assert_allclose(value(_model.fix_gauge(after)), values[-1], rtol=1e-12)
        params = after
    assert params.row_scale.prior_mean == pytest.approx(params.col_scale.prior_mean)


def test_hyperparameter_updates_are_stationary_points():
    """The learned hyperparameters maximise the ELBO with q fixed: nudging each one away
    lowers it."""
    X = _small_matrices()["plain"]
    data = as_count_data(sp.csr_matrix(X))
    params = _learned_params(np.random.default_rng(7), *X.shape, 3)
    learned = _model.learn_hyperparameters(
        _model.scale_sums(params.row_shape, params.row_rate, params.row_scale),
        params.row_scale,
        LEARNED,
    )
    best = _model.VariationalParams(*params.as_tuple(), learned, params.col_scale)
    center = _model.elbo(data, best, LEARNED)
    for field in ("prior_shape", "prior_mean"):
        for factor in (0.99, 1.01):
            nudged = learned.copy()
            setattr(nudged, field, getattr(learned, field) * factor)
            moved = _model.VariationalParams(*params.as_tuple(), nudged, params.col_scale)
            assert _model.elbo(data, moved, LEARNED) < center
    for component in range(3):
        for factor in (0.99, 1.01):
            nudged = learned.copy()
            nudged.factor_shape[component] *= factor
            moved = _model.VariationalParams(*params.as_tuple(), nudged, params.col_scale)
            assert _model.elbo(data, moved, LEARNED) < center


def test_inverse_digamma_and_gamma_shape_solvers():
    from scipy.special import digamma

    x = np.array([1e-3, 0.05, 0.7, 3.0, 250.0])
    np.testing.assert_allclose(_model.inverse_digamma(digamma(x)), x, rtol=1e-10)
    for a in (0.01, 0.3, 1.0, 40.0):
        gap = np.log(a) - digamma(a)
        assert _model.gamma_shape_mle(gap) == pytest.approx(a, rel=1e-10)


@pytest.mark.parametrize("equal_shapes", [True, False])
def test_scale_terms_are_scipys_elementwise_numbers(equal_shapes):
    """E[log xi] and KL(q(xi) || p(xi)) take digamma and gammaln once when every shape
    is the same (q(xi) after its update): the numbers of scipy's elementwise calls,
    bitwise, and those calls when the shapes differ."""
    from scipy.special import digamma, gammaln

    rng = np.random.default_rng(4)
    n = 50
    shape = np.full(n, 3.7) if equal_shapes else rng.uniform(0.5, 9.0, n)
    rate = rng.uniform(0.1, 4.0, n)
    np.testing.assert_array_equal(_model.expected_log(shape, rate), digamma(shape) - np.log(rate))
    expected_kl = (
        (shape - 0.8) * digamma(shape)
        - gammaln(shape)
        + gammaln(0.8)
        + 0.8 * (np.log(rate) - np.log(1.9))
        + shape * (1.9 - rate) / rate
    ).sum()
    assert _model.gamma_kl(shape, rate, 0.8, 1.9) == float(expected_kl)


# -- missing entries -------------------------------------------------------------------------
def _masked_problem(seed=9):
    X = _small_matrices()["plain"]
    rng = np.random.default_rng(seed)
    mask = rng.random(X.shape) < 0.2
    mask[:, 2] = True  # a whole column unobserved
    return X, mask


def test_masked_elbo_and_iteration_match_the_reference():
    """With missing entries the fixed model's ELBO and iteration equal the dense reference
    that sums over the observed entries only."""
    X, mask = _masked_problem()
    prior = _model.GammaPrior(0.7, 1.3)
    start = _model.VariationalParams(*_random_params(np.random.default_rng(3), *X.shape, 3))
    data = as_count_data(sp.csr_matrix(np.where(mask, 0, X)))
    masked = _model.Mask.of(sp.csr_matrix(mask))
    got = _model.elbo(data, start, prior, 2, masked)
    reference = ref.elbo(X, *start.as_tuple(), 0.7, 1.3, mask=mask)
    np.testing.assert_allclose(got, reference, rtol=1e-10)
    row_stat, col_stat, _ = _model.shape_statistics(data, start, 1)
    stepped = _model.global_step(start, row_stat, col_stat, prior, mask=masked)
    expected = ref.iteration(X, *start.as_tuple(), 0.7, 1.3, mask=mask)
    for mine, theirs in zip(stepped.as_tuple(), expected):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10)
    # The learned prior's ELBO: observed entries only, the rest of the ELBO unchanged.
    learned = _learned_params(np.random.default_rng(8), *X.shape, 3)
    dense_observed = np.where(mask, 0, X)
    full = ref.learned_elbo(dense_observed, _sides(learned))
    total_masked = np.sum((learned.row_mean @ learned.col_mean.T) * mask)
    got = _model.elbo(data, learned, LEARNED, 1, masked)
    np.testing.assert_allclose(got, full + total_masked, rtol=1e-10)


@pytest.mark.parametrize("learned", [False, True])
def test_scored_statistics_is_the_pass_and_the_reference_elbo(learned):
    """An iteration's pass and ELBO with each side's tables and ELBO terms from one kernel
    (`scored_statistics`, what batch fits run): the statistics of `shape_statistics` and
    the dense reference's ELBO, with missing entries, under both priors."""
    X, mask = _masked_problem()
    data = as_count_data(sp.csr_matrix(np.where(mask, 0, X)))
    masked = _model.Mask.of(sp.csr_matrix(mask))
    rng = np.random.default_rng(12)
    if learned:
        params, prior = _learned_params(rng, *X.shape, 3), LEARNED
        expected = ref.learned_elbo(np.where(mask, 0, X), _sides(params)) + np.sum(
            (params.row_mean @ params.col_mean.T) * mask
        )
    else:
        params = _model.VariationalParams(*_random_params(rng, *X.shape, 3))
        prior = _model.GammaPrior(0.7, 1.3)
        expected = ref.elbo(X, *params.as_tuple(), 0.7, 1.3, mask=mask)
    row_stat, col_stat, value = _model.scored_statistics(data, params, prior, 2, masked)
    np.testing.assert_allclose(value, expected, rtol=1e-10)
    expected_rows, expected_cols, _ = _model.shape_statistics(data, params, 2)
    np.testing.assert_array_equal(row_stat, expected_rows)
    np.testing.assert_array_equal(col_stat, expected_cols)


def test_masking_whole_columns_is_fitting_without_them():
    """A column entirely unobserved carries no information: the fit of the other columns
    and of the rows is the fit of the matrix without it (fixed prior, same start), and
    the masked column's q stays at the prior."""
    X, _ = _masked_problem()
    keep = np.array([j for j in range(X.shape[1]) if j not in (2, 5)])
    mask = np.zeros(X.shape, dtype=bool)
    mask[:, [2, 5]] = True
    start = _random_params(np.random.default_rng(4), *X.shape, 3)
    reduced_start = (start[0], start[1], start[2][keep], start[3])
    options = dict(prior="gamma", prior_shape=0.5, max_iter=30, tol=0.0, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        masked = vbsnmf.VBNMF(3, **options).fit(sp.csr_matrix(X), init=_as_dict(start), mask=mask)
        reduced = vbsnmf.VBNMF(3, **options).fit(
            sp.csr_matrix(X[:, keep]), init=_as_dict(reduced_start)
        )
    np.testing.assert_allclose(masked.elbo_trace_, reduced.elbo_trace_, rtol=1e-10)
    np.testing.assert_allclose(masked.cell_shape_, reduced.cell_shape_, rtol=1e-10)
    np.testing.assert_allclose(masked.gene_shape_[keep], reduced.gene_shape_, rtol=1e-10)
    np.testing.assert_allclose(masked.gene_shape_[[2, 5]], 0.5)
    np.testing.assert_allclose(masked.gene_rate_[[2, 5]], 1.0)


def test_masked_learned_fit_ascends_and_refuses_other_inputs():
    X, mask = _masked_problem()
    model = vbsnmf.VBNMF(3, max_iter=60, tol=0.0, random_state=0, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(sp.csr_matrix(X), mask=sp.csr_matrix(mask))
    trace = model.elbo_trace_
    assert np.all(np.isfinite(trace)) and np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
    # The ELBO reported is the exact one of the observed entries.
    data = as_count_data(sp.csr_matrix(np.where(mask, 0, X)))
    params = _model.VariationalParams(
        model.cell_shape_,
        model.cell_rate_,
        model.gene_shape_,
        model.gene_rate_,
        _model.ScaleState(
            model.cell_scale_shape_,
            model.cell_scale_rate_,
            np.asarray(model.hyperparameters_["cell_factor_shape"]),
            model.hyperparameters_["cell_scale_prior_shape"],
            model.hyperparameters_["cell_scale_prior_mean"],
        ),
        _model.ScaleState(
            model.gene_scale_shape_,
            model.gene_scale_rate_,
            np.asarray(model.hyperparameters_["gene_factor_shape"]),
            model.hyperparameters_["gene_scale_prior_shape"],
            model.hyperparameters_["gene_scale_prior_mean"],
        ),
    )
    value = _model.elbo(data, params, LEARNED, 1, _model.Mask.of(sp.csr_matrix(mask)))
    np.testing.assert_allclose(trace[-1], value, rtol=1e-10)
    with pytest.raises(ValueError, match="shape"):
        vbsnmf.VBNMF(2).fit(sp.csr_matrix(X), mask=np.ones((2, 2)))
    for other in ("abc", 1.0, [1, 0]):  # scipy's message named no mask (a hostile pass)
        with pytest.raises(ValueError, match="mask must be a matrix of X's shape"):
            vbsnmf.VBNMF(2).fit(sp.csr_matrix(X), mask=other)
    with pytest.raises(ValueError, match="batch VB"):
        vbsnmf.VBNMF(2, solver="svi").fit(sp.csr_matrix(X), mask=mask)


@pytest.mark.parametrize("shape", [(2000, 60), (60, 2000)])  # cells or genes the major axis
def test_side_totals_are_scipys_sums_without_a_copy_of_the_counts(shape):
    """Each row's and column's total in float64 (counts stored as float32 summed past
    2**24), with no array of the size of the nonzeros made on the way (numpy's bincount
    with weights copied the counts and indices: 3.6 GiB at the lung-atlas shape)."""
    rng = np.random.default_rng(7)
    X = sp.random(*shape, density=0.5, format="csr", random_state=7, dtype=np.float32)
    X.data = rng.integers(1, 2**22, X.nnz).astype(np.float32)
    X[3] = 0  # an empty row and column
    X[:, 5] = 0
    X.eliminate_zeros()
    data = as_count_data(X)
    exact = X.astype(np.float64)
    expected = (np.asarray(exact.sum(axis=1)).ravel(), np.asarray(exact.sum(axis=0)).ravel())
    _model.side_totals(data)  # compiled or loaded before the measurement
    totals, peak = traced_peak(_model.side_totals, data)
    for got, want in zip(totals, expected):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want)
    assert totals[0][3] == 0.0 and totals[1][5] == 0.0
    assert expected[0].max() > 2**24  # float32 sums would have rounded
    assert peak < 16 * sum(shape) + 4096 < X.nnz, (peak, X.nnz)


def test_csr_totals_of_a_non_canonical_matrix():
    """Duplicates added, any index order and index dtype, integer counts."""
    rows = np.array([0, 0, 2, 2, 2, 0])
    cols = np.array([3, 1, 0, 3, 0, 3])
    X = sp.csr_array((np.array([1, 2, 3, 4, 5, 6]), (rows, cols)), shape=(4, 5))
    X.has_canonical_format = False
    unsorted = sp.csr_array(
        (np.array([6, 1, 2]), np.array([3, 3, 1], dtype=np.int64), np.array([0, 3, 3, 3])),
        shape=(3, 4),
    )
    for matrix in (X, unsorted):
        dense = matrix.toarray()
        row_totals, col_totals = _model.csr_totals(matrix)
        np.testing.assert_array_equal(row_totals, dense.sum(axis=1))
        np.testing.assert_array_equal(col_totals, dense.sum(axis=0))
