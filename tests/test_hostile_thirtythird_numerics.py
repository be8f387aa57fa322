"""Thirty-third hostile pass, numeric extremes of the values (not of the shapes).

Two defects, each test of them failing on the code before its fix:

- `VBNMF`'s (and `VBNTF`'s) ELBO with a few counts of 1e12 or 1e13 among small ones was
  0.7 to 2.3 nats off the exact ELBO of its q (mpmath, 40 digits), 37 and 11 times the
  float64 rounding that `_model.warn_elbo_rounding` allows (total x log(largest) x
  2**-53): the constant ``sum lgamma(x + 1)`` was summed plainly, and each small term
  added to a running sum of 1.6e14 lost up to 0.016 nats (`VBNTF`'s data term the same
  way: 0.32 nats off on a tensor). `_kernels.log_factorial_sum`, `row_log_factorials` and
  the tensor pass's data term now sum with Neumaier's compensation.
- `classic.NMF` on an exactly rank-one X (an outer product of whole numbers) at
  ``n_components=1`` reached the exact factorisation at once (loss 1e-26), then ran to
  ``max_iter`` and warned "raise max_iter or tol", under every solver but ALS; its
  `transform` of such rows did the same for some of them (MU, Frobenius). The stopping
  floor came from the rank-one model's loss, itself rounding there, so no change of a
  rounding-sized loss was below ``tol``. A loss at most float32's precision squared of a
  loss of the data's size (`_nmf.exact_loss`, each row's in `transform`) is now an exact
  factorisation and stops.

The other tests are guards that pass on the code before the fixes too (the pass found no
defect there), against the dense numpy ELBO of docs/model.md
(`test_hostile_thirtieth_model._dense_elbo`): counts spanning six orders of magnitude
(a cell of 1e6 next to cells of ten), a gene holding 99 % of the counts, a density of
1e-4, exactly rank-one counts and identical cells, under both priors, plain and SQUAREM,
random and NNDSVDa starts; float32 beside float64 on a deep cell; ``tol=0`` and
``tol=1e-300``; factor shapes fixed at the ends of their range; and `VBNTF` with an entry
of 1e6.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from test_hostile_thirtieth_model import _dense_elbo

from vbsnmf import VBNMF, VBNTF, _kernels
from vbsnmf._model import ConvergenceWarning
from vbsnmf.classic import NMF


def _fit(X, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return VBNMF(**{"random_state": 0, "n_threads": 1, **options}).fit(X)


def _finite(model) -> bool:
    arrays = [model.cell_shape_, model.cell_rate_, model.gene_shape_, model.gene_rate_]
    arrays += [model.components_, model.elbo_trace_]
    return all(np.isfinite(np.asarray(array)).all() for array in arrays)


def _counts(n_cells=30, n_genes=20, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(1, 1, (n_cells, 3)) @ rng.gamma(1, 1, (3, n_genes))).astype(float)


def _rank_one(seed=5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.outer(rng.integers(1, 20, 30), rng.integers(1, 10, 20)).astype(float)


# -- the fixes: the ELBO's log-factorial constant -----------------------------------------------
def _mp_elbo(X, model):
    """model.md's ELBO of ``model``'s q under the fixed Gamma(1, 1) prior, in mpmath (40
    digits) from its float64 parameters: the exact value the trace rounds."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    cell_shape, gene_shape = model.cell_shape_, model.gene_shape_
    cell_rate = np.broadcast_to(model.cell_rate_, cell_shape.shape)
    gene_rate = np.broadcast_to(model.gene_rate_, gene_shape.shape)
    n_components = cell_shape.shape[1]

    def logs(shape, rate):
        return [
            [
                mp.digamma(mp.mpf(shape[i, k])) - mp.log(mp.mpf(rate[i, k]))
                for k in range(n_components)
            ]
            for i in range(shape.shape[0])
        ]

    cell_log, gene_log = logs(cell_shape, cell_rate), logs(gene_shape, gene_rate)
    value = mp.mpf(0)
    for i, j in zip(*np.nonzero(X)):
        x = mp.mpf(X[i, j])
        normaliser = sum(mp.exp(cell_log[i][k] + gene_log[j][k]) for k in range(n_components))
        value += x * mp.log(normaliser) - mp.loggamma(x + 1)
    for k in range(n_components):
        cell_sum = sum(mp.mpf(cell_shape[i, k]) / mp.mpf(cell_rate[i, k]) for i in range(len(X)))
        gene_sum = sum(
            mp.mpf(gene_shape[j, k]) / mp.mpf(gene_rate[j, k]) for j in range(X.shape[1])
        )
        value -= cell_sum * gene_sum
    for shape, rate in ((cell_shape, cell_rate), (gene_shape, gene_rate)):
        for alpha, beta in zip(shape.ravel(), rate.ravel()):
            alpha, beta = mp.mpf(alpha), mp.mpf(beta)
            value -= (
                (alpha - 1) * mp.digamma(alpha)
                - mp.loggamma(alpha)
                + mp.log(beta)
                + alpha * (1 - beta) / beta
            )
    return float(value)


@pytest.mark.parametrize("big", [1e12, 1e13])
def test_the_elbo_beside_counts_of_1e12_is_exact_to_its_documented_rounding(big):
    """Six counts of ``big`` among 400 small ones: the trace's last value is the exact
    ELBO of the returned q to the rounding `warn_elbo_rounding` allows (it was 0.69 and
    2.15 nats off, the allowance 0.018 and 0.2)."""
    X = _counts()
    X[0, 0] = big
    X[1, :5] = big
    model = _fit(X, n_components=3, prior="gamma", max_iter=500)
    allowed = X.sum() * math.log(X.max()) * 2.0**-53
    assert abs(model.elbo_trace_[-1] - _mp_elbo(X, model)) <= allowed


def test_the_log_factorial_sums_are_compensated():
    """`log_factorial_sum` and `row_log_factorials` against ``math.fsum`` (correctly
    rounded) of the same ``lgamma`` values: within an ulp of the sum, where the plain sum
    of six counts of 1e12 and 400 small ones was 0.69 nats (22 ulps) off."""
    counts = _counts().ravel()
    counts = counts[counts > 0]
    counts[:6] = 1e12
    exact = math.fsum(math.lgamma(x + 1.0) for x in counts)
    assert abs(_kernels.log_factorial_sum(counts, 1 << 16) - exact) <= np.spacing(exact)
    indptr = np.array([0, counts.size], dtype=np.int64)
    row = np.empty(1)
    _kernels.row_log_factorials(indptr, counts, row)
    assert abs(row[0] - exact) <= np.spacing(exact)


def test_a_tensor_elbo_beside_counts_of_1e12_is_exact_to_its_rounding():
    """`VBNTF` shares the log-factorial kernel and sums its data term the same way: a 3-way
    tensor with six entries of 1e12 among small ones (fixed prior), its trace's last value
    against the mpmath ELBO of its q within the documented rounding (0.0087 nats off, the
    allowance 0.018; it was 0.32 with the plain sums)."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    rng = np.random.default_rng(0)
    shape = (12, 10, 4)
    mean = np.einsum("il,jl,kl->ijk", *[rng.gamma(1, 1, (n, 2)) for n in shape])
    dense = rng.poisson(mean).astype(float)
    dense[0, :6, 0] = 1e12
    coords = np.argwhere(dense > 0)
    values = dense[dense > 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = VBNTF(2, random_state=0, n_threads=1).fit(coords, values, shape)
    shapes = [np.asarray(s, float) for s in model.shapes_]
    rates = [np.broadcast_to(np.asarray(r, float), s.shape) for r, s in zip(model.rates_, shapes)]
    logs = [
        [[mp.digamma(mp.mpf(s[i, k])) - mp.log(mp.mpf(r[i, k])) for k in range(2)]
         for i in range(len(s))]
        for s, r in zip(shapes, rates)
    ]  # fmt: skip
    value = mp.mpf(0)
    for index, x in zip(coords, values):
        terms = [mp.exp(sum(logs[d][index[d]][k] for d in range(3))) for k in range(2)]
        value += mp.mpf(x) * mp.log(sum(terms)) - mp.loggamma(mp.mpf(x) + 1)
    for k in range(2):
        product = mp.mpf(1)
        for s, r in zip(shapes, rates):
            product *= sum(mp.mpf(s[i, k]) / mp.mpf(r[i, k]) for i in range(len(s)))
        value -= product
    for s, r in zip(shapes, rates):
        for alpha, beta in zip(map(mp.mpf, s.ravel()), map(mp.mpf, r.ravel())):
            value -= (
                (alpha - 1) * mp.digamma(alpha) - mp.loggamma(alpha) + mp.log(beta)
                + alpha * (1 - beta) / beta
            )  # fmt: skip
    allowed = values.sum() * math.log(values.max()) * 2.0**-53
    assert abs(model.elbo_trace_[-1] - float(value)) <= allowed


# -- the fixes: classic NMF on exactly rank-one data --------------------------------------------
@pytest.mark.parametrize(
    "solver, loss",
    [("mu", "kl"), ("mu", "frobenius"), ("hals", "frobenius"), ("pg", "frobenius"),
     ("gd", "frobenius"), ("ipg", "frobenius"), ("mu", "poisson")],
)  # fmt: skip
@pytest.mark.parametrize("sparse", [False, True])
def test_classic_nmf_of_exactly_rank_one_counts_stops_at_the_exact_fit(solver, loss, sparse):
    """``n_components=1`` on an outer product of whole numbers: the start (NNDSVDa) is
    already exact, and the fit stops within a few iterations without a warning (it ran
    to ``max_iter`` and warned to raise it; dense ``loss="poisson"`` stopped before too, a
    guard)."""
    X = _rank_one()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = NMF(1, solver=solver, loss=loss, random_state=0, max_iter=300)
        W = fit.fit_transform(sp.csr_matrix(X) if sparse else X)
    assert fit.n_iter_ < 10
    if loss != "poisson":  # its W is each cell's shares, not its counts
        np.testing.assert_allclose(W @ fit.components_, X, rtol=1e-9)


def test_classic_transform_of_exactly_rank_one_rows_settles():
    """`NMF.transform` of the rank-one X under MU and the Frobenius loss: every row
    reaches its exact factorisation and stops, without a warning (a row of 30 ran to
    ``max_iter`` and warned)."""
    X = _rank_one()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = NMF(1, loss="frobenius", random_state=0, max_iter=300).fit(X)
        W = fit.transform(X)
    np.testing.assert_allclose(W @ fit.components_, X, rtol=1e-9)


@pytest.mark.parametrize("solver, loss", [("mu", "kl"), ("hals", "frobenius")])
def test_the_exact_rule_does_not_stop_an_inexact_fit(solver, loss):
    """Guard (passes on both): on Poisson counts the fit stops on ``tol`` without a
    warning at a loss a million times above the exact rule's (float32's precision squared
    of the loss of twice the rank-one model, computed here in numpy); an exact rank-two X
    at K = 2 still reaches a loss below 1e-6 of ``||X||^2``."""
    X = _counts(40, 25, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = NMF(3, solver=solver, loss=loss, random_state=0, max_iter=2000).fit(X)
    doubled = 2 * np.outer(X.sum(1), X.sum(0)) / X.sum()
    if loss == "kl":
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(X > 0, X * np.log(X / doubled), 0.0)
        doubled_loss = float(np.sum(terms - X + doubled))
    else:
        doubled_loss = float(np.sum((X - doubled) ** 2))
    assert fit.loss_ > 1e6 * np.finfo(np.float32).eps ** 2 * doubled_loss
    rng = np.random.default_rng(2)
    exact = rng.random((30, 2)) @ rng.random((2, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        two = NMF(2, loss="frobenius", solver="hals", random_state=0, max_iter=2000).fit(exact)
    assert two.loss_ < 1e-6 * float(np.sum(exact**2))


# -- guards: VBNMF on counts at numeric extremes ------------------------------------------------
def _extreme_counts() -> dict[str, np.ndarray | sp.csr_matrix]:
    rng = np.random.default_rng(0)
    base = _counts(40, 30)
    deep_cell = base.copy()
    deep_cell[0] = rng.multinomial(10**6, rng.dirichlet(np.ones(30)))
    ambient = base.copy()
    ambient[:, 0] = rng.poisson(99 * base.sum(1).clip(1))
    sparse = sp.random(300, 300, density=1e-4, random_state=1, format="csr")
    sparse.data = np.ceil(sparse.data * 5)
    duplicates = np.tile(rng.poisson(rng.gamma(1, 3, 25)).astype(float), (40, 1))
    return {
        "a cell of 1e6": deep_cell,
        "a gene of 99 %": ambient,
        "density 1e-4": sparse,
        "rank one": _rank_one(),
        "identical cells": duplicates,
    }


@pytest.mark.parametrize("case", list(_extreme_counts()))
@pytest.mark.parametrize(
    "options",
    [{"prior": "hierarchical"}, {"prior": "hierarchical", "accelerate": False},
     {"prior": "hierarchical", "init": "nndsvda"}, {"prior": "gamma"},
     {"prior": "gamma", "accelerate": True}],
    ids=["learned", "learned-plain", "nndsvda", "fixed", "fixed-squarem"],
)  # fmt: skip
def test_extreme_counts_fit_finitely_monotonely_and_exactly(case, options):
    """Guard: finite parameters, a trace that never falls and whose last value is the
    dense numpy ELBO of the returned q (1e-9 relative)."""
    X = _extreme_counts()[case]
    model = _fit(X, n_components=3, max_iter=300, **options)
    assert _finite(model)
    assert np.all(np.diff(model.elbo_trace_) >= 0)
    dense = X.toarray() if sp.issparse(X) else X
    assert model.elbo_trace_[-1] == pytest.approx(_dense_elbo(dense, model), rel=1e-9)


@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_float32_on_a_deep_cell_warns_and_stays_near_float64(prior):
    """Guard: a cell of 1e6 counts in float32 is finite, its last ELBO within the
    documented float32 rounding (counts x 2**-24) of its q's dense ELBO and within 0.1 %
    of the float64 fit's, and the fit warns that float32 cannot resolve ``tol``."""
    X = _extreme_counts()["a cell of 1e6"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        single = VBNMF(3, prior=prior, dtype=np.float32, random_state=0, n_threads=1).fit(X)
    double = _fit(X, n_components=3, prior=prior)
    assert _finite(single)
    assert any("float32 holds this fit's ELBO" in str(w.message) for w in caught)
    assert abs(single.elbo_trace_[-1] - _dense_elbo(X, single)) <= X.sum() * 2.0**-24
    assert single.elbo_trace_[-1] == pytest.approx(double.elbo_trace_[-1], rel=1e-3)


@pytest.mark.parametrize("tol", [0.0, 1e-300])
@pytest.mark.parametrize("prior, accelerate", [("hierarchical", True), ("gamma", False)])
def test_a_tol_no_change_meets_runs_to_max_iter_and_says_so(tol, prior, accelerate):
    """Guard: ``tol`` of 0 or 1e-300 in float64 runs to ``max_iter`` with a finite,
    monotone, exact trace and a `ConvergenceWarning` naming ``max_iter`` and ``tol``."""
    X = _counts()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = VBNMF(
            3, prior=prior, accelerate=accelerate, tol=tol, max_iter=60, random_state=0, n_threads=1
        ).fit(X)
    assert model.n_iter_ == 60 and not model.converged_
    assert _finite(model) and np.all(np.diff(model.elbo_trace_) >= 0)
    messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert any("max_iter=60" in message and f"tol={tol}" in message for message in messages)
    assert model.elbo_trace_[-1] == pytest.approx(_dense_elbo(X, model), rel=1e-12)


@pytest.mark.parametrize("prior_shape", [1e-30, 1e6])
@pytest.mark.parametrize("accelerate", [True, False])
def test_factor_shapes_at_their_bounds_on_a_deep_cell(prior_shape, accelerate):
    """Guard: the learned prior with ``prior_shape`` at either end of [1e-30, 1e6], on
    counts of 1000 times a cell next to ordinary ones: finite, monotone, exact."""
    X = _counts()
    X[0] *= 1000
    X[:, 1] += 500
    model = _fit(X, n_components=3, prior_shape=prior_shape, accelerate=accelerate, max_iter=200)
    assert _finite(model) and np.all(np.diff(model.elbo_trace_) >= 0)
    assert model.elbo_trace_[-1] == pytest.approx(_dense_elbo(X, model), rel=1e-9)
