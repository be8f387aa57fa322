"""Thirty-ninth hostile pass, the memory guard of the classical solvers.

`vbsnmf.classic.NMF` had no memory guard, while `vbsnmf.VBNMF` has one (`vbsnmf._memory`):
a classical fit too large for the machine (a sparse X is stored twice, a dense one copied
to float64) was ended by the OOM killer without a message. `NMF.fit` and `fit_transform`
(and `vbsnmf.tl.nmf` and ``vbsnmf fit`` with a classical solver, which call them) now
compare an estimate of the fit's peak (`vbsnmf.classic._memory`) with the memory available
and raise `InsufficientMemoryError` before X is copied; ``VBSNMF_NO_MEMORY_GUARD=1`` turns
it off. The available memory is replaced here, as the guard tests of `VBNMF` replace it.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from cli_output import without_compile_notice
from traced import traced_peak

import vbsnmf
from vbsnmf import _memory, cli
from vbsnmf.classic import NMF

pytestmark = pytest.mark.filterwarnings("ignore:.*stopped (after|at) max_iter")

K = 4


def _counts(n_rows=300, n_cols=120, density=0.1, seed=0) -> sp.csr_matrix:
    matrix = sp.random(n_rows, n_cols, density=density, format="csr", random_state=seed)
    matrix.data = np.ceil(matrix.data * 5)
    return matrix


def _estimate(X, solver="mu", weights=None, loss="kl"):
    """The guard's estimate of a fit of X, read with the available memory unknown."""
    from vbsnmf.classic._memory import check_classic_fit_memory

    saved = _memory.available_memory
    _memory.available_memory = lambda: None
    try:
        return check_classic_fit_memory(
            X, K, solver=solver, frobenius=loss == "frobenius", weights=weights
        )
    finally:
        _memory.available_memory = saved


INPUTS = {
    "sparse": lambda: _counts(),
    "dense": lambda: _counts().toarray(),
    "dense int": lambda: _counts().toarray().astype(np.int64),
}


@pytest.mark.parametrize("solver", ["mu", "hals"])
@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_a_fit_past_the_available_memory_is_refused_naming_both(kind, solver, monkeypatch):
    X = INPUTS[kind]()
    estimate = _estimate(X, solver, loss="kl" if solver == "mu" else "frobenius")
    monkeypatch.setattr(_memory, "available_memory", lambda: estimate["total"] - 1)
    with pytest.raises(_memory.InsufficientMemoryError) as caught:
        NMF(K, solver=solver, max_iter=3, random_state=0).fit(X)
    message = str(caught.value)
    assert isinstance(caught.value, MemoryError)
    assert f"needs about {_memory.format_bytes(estimate['total'])}" in message
    assert f"only {_memory.format_bytes(estimate['total'] - 1)} is available" in message
    assert "VBSNMF_NO_MEMORY_GUARD=1" in message and _memory.CLASSIC_ADVICE in message
    # the advice to pass a sparse X, for a dense one only
    assert ("scipy.sparse" in message) == (kind != "sparse"), message
    assert f"solver={solver!r}" in message and f"K={K}" in message
    # fit_transform refuses alike
    with pytest.raises(_memory.InsufficientMemoryError):
        NMF(K, solver=solver, max_iter=3, random_state=0).fit_transform(X)


def test_the_refusal_comes_before_x_is_copied(monkeypatch):
    """A dense integer X is copied to float64 by the validation: the refusal allocates
    nothing of X's size."""
    X = np.random.default_rng(0).poisson(1.0, size=(400, 300))
    NMF(K, max_iter=2, random_state=0).fit(X[:30])  # Numba's compilation, not the route's
    monkeypatch.setattr(_memory, "available_memory", lambda: 1000)
    model = NMF(K, max_iter=3, random_state=0)

    def refused():
        with pytest.raises(_memory.InsufficientMemoryError, match="1000 B is available"):
            model.fit(X)

    _, peak = traced_peak(refused)
    assert peak < X.nbytes / 20, (peak, X.nbytes)
    assert not hasattr(model, "components_")


def test_the_switch_turns_the_guard_off_and_normal_fits_are_untouched(monkeypatch):
    X = _counts()
    reference = NMF(K, max_iter=5, random_state=0).fit(X).components_
    estimate = _estimate(X)
    monkeypatch.setattr(_memory, "available_memory", lambda: estimate["total"])
    at_the_edge = NMF(K, max_iter=5, random_state=0).fit(X).components_
    np.testing.assert_array_equal(at_the_edge, reference)
    monkeypatch.setattr(_memory, "available_memory", lambda: None)  # unknown: no check
    np.testing.assert_array_equal(NMF(K, max_iter=5, random_state=0).fit(X).components_, reference)
    monkeypatch.setattr(_memory, "available_memory", lambda: 1000)
    with pytest.raises(_memory.InsufficientMemoryError):
        NMF(K, max_iter=5, random_state=0).fit(X)
    monkeypatch.setenv("VBSNMF_NO_MEMORY_GUARD", "1")
    switched_off = NMF(K, max_iter=5, random_state=0).fit(X).components_
    np.testing.assert_array_equal(switched_off, reference)


def test_bad_parameters_keep_their_own_errors(monkeypatch):
    """The guard does not speak for a K that is not an integer or out of range."""
    X = _counts()
    monkeypatch.setattr(_memory, "available_memory", lambda: 0)
    with pytest.raises(TypeError, match="n_components must be an integer"):
        NMF(2.5).fit(X)
    with pytest.raises(ValueError, match="n_components") as caught:
        NMF(0).fit(X)
    assert not isinstance(caught.value, MemoryError)


def test_transform_is_not_refused(monkeypatch):
    """Only fitting is guarded: `transform` holds the rows transformed and H."""
    X = _counts()
    model = NMF(K, max_iter=5, random_state=0).fit(X)
    monkeypatch.setattr(_memory, "available_memory", lambda: 1000)
    assert model.transform(X[:10]).shape == (10, K)


def test_tl_nmf_with_a_classical_solver_is_refused(monkeypatch):
    adata = ad.AnnData(_counts().astype(np.float32))
    monkeypatch.setattr(_memory, "available_memory", lambda: 1000)
    with pytest.raises(_memory.InsufficientMemoryError, match="solver='hals'"):
        vbsnmf.tl.nmf(adata, n_components=K, solver="hals", max_iter=3, random_state=0)
    assert "X_nmf" not in adata.obsm


def test_the_command_line_says_it_in_one_line_with_its_options(tmp_path, monkeypatch, capsys):
    path = tmp_path / "counts.h5ad"
    ad.AnnData(_counts().toarray().astype(np.float32)).write_h5ad(path)  # dense X in the file
    outdir = tmp_path / "out"
    monkeypatch.setattr(_memory, "available_memory", lambda: 1000)
    code = cli.main(["fit", str(path), "-k", str(K), "--solver", "mu", "-o", str(outdir)])
    err = without_compile_notice(capsys.readouterr().err)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "out of memory" in lines[0] and "1000 B is available" in lines[0]
    assert "-k" in lines[0] and "--solver batch" in lines[0]
    assert "n_components" not in lines[0] and "scipy.sparse" not in lines[0]
    assert not outdir.exists() or not any(outdir.iterdir())


def _fit_peak(X, solver, **params):
    warm = {name: value[:40] for name, value in params.items()}
    NMF(K, solver=solver, max_iter=2, random_state=0, **warm).fit(X[:40])  # compile first
    model = NMF(K, solver=solver, max_iter=4, random_state=0, **params)
    _, peak = traced_peak(model.fit, X)
    return peak


@pytest.mark.parametrize(
    ("kind", "solver"),
    [("sparse", "mu"), ("sparse", "hals"), ("dense", "mu"), ("dense", "hals"), ("csc", "mu")],
)
def test_the_estimate_bounds_a_measured_peak(kind, solver):
    """The estimate is above the peak tracemalloc measures during a fit (over what was
    allocated before it: X itself is not counted) and within 2x of it (1.1x to 1.5x
    measured on larger fits)."""
    X = _counts(2000, 400, density=0.05)
    if kind == "dense":
        X = X.toarray()
    elif kind == "csc":
        X = X.tocsc()
    peak = _fit_peak(X, solver)
    estimate = _estimate(X, solver, loss="kl" if solver == "mu" else "frobenius")["total"]
    assert peak <= estimate <= 2 * peak, (peak, estimate)


def test_the_estimate_bounds_weighted_fits():
    X = _counts(1000, 300, density=0.05)
    rng = np.random.default_rng(1)
    dense_weights = (rng.random(X.shape) > 0.1).astype(np.float64)
    sparse_weights = sp.random(*X.shape, density=0.2, format="csr", random_state=1)
    sparse_weights.data[:] = 1.0
    for weights in (dense_weights, sparse_weights):
        for data in (X, X.toarray()):
            peak = _fit_peak(data, "mu", weights=weights)
            estimate = _estimate(data, "mu", weights=weights)["total"]
            assert peak <= estimate <= 2 * peak, (type(data), type(weights), peak, estimate)


def test_the_estimate_grows_with_its_terms():
    """Each term of the estimate by layout: the stored entries with nnz, a dense X's copy
    with its size, the factors with K; an unknown layout is refused."""
    from vbsnmf.classic._memory import estimate_classic_fit_memory

    base = estimate_classic_fit_memory((10_000, 2_000), 10, layout="sparse", nnz=10**6)
    double = estimate_classic_fit_memory((10_000, 2_000), 10, layout="sparse", nnz=2 * 10**6)
    assert double["entries"] > base["entries"] >= 2 * 10**6 * 8
    more_k = estimate_classic_fit_memory((10_000, 2_000), 40, layout="sparse", nnz=10**6)
    assert more_k["factors"] == 4 * base["factors"] == 4 * 2 * 12_000 * 10 * 8
    dense = estimate_classic_fit_memory((10_000, 2_000), 10, layout="dense")
    assert dense["input"] == 10_000 * 2_000 * 8
    kept = estimate_classic_fit_memory((10_000, 2_000), 10, layout="dense", input_copy=False)
    assert kept["input"] == 0 and kept["total"] == dense["total"] - dense["input"]
    for estimate in (base, double, more_k, dense):
        parts = ("input", "entries", "factors", "transient")
        assert estimate["total"] == sum(estimate[part] for part in parts)
    with pytest.raises(ValueError, match="layout must be"):
        estimate_classic_fit_memory((10, 10), 2, layout="csr")
