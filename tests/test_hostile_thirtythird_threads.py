"""Threads and processes: fits from two Python threads at once, fits in a child forked after
the parent's, ``n_threads`` on every entry point, the caller's Numba thread setting, bits per
thread count (the thirty-third hostile pass, area threads). Each test fails on the code
before its fix unless its docstring says it guards a normal case."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from concurrent.futures import ThreadPoolExecutor

import anndata as ad
import numba
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import _kernels

# the counts every child script fits: 300 cells x 120 genes
CHILD_COUNTS = """
import warnings
import numpy as np, scipy.sparse as sp, vbsnmf
warnings.simplefilter("ignore")
X = sp.random(300, 120, density=0.2, random_state=0, format="csr")
X.data = np.round(X.data * 5) + 1
"""


def _run_child(body: str, timeout: float, **environment) -> subprocess.CompletedProcess:
    """``body`` after `CHILD_COUNTS` in a fresh interpreter that imports vbsnmf from this
    tree, with ``environment`` added to os.environ; its script is a file so that
    multiprocessing's children can import its functions."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(vbsnmf.__file__)))
    env = dict(os.environ, PYTHONPATH=root, **environment)
    script = CHILD_COUNTS + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout
    )


def _counts(n_cells: int = 120, n_genes: int = 60, seed: int = 0) -> sp.csr_matrix:
    """Small sparse counts, every stored value at least 1."""
    X = sp.random(n_cells, n_genes, density=0.3, random_state=seed, format="csr")
    X.data = np.round(X.data * 5) + 1
    return X


def _quiet_fit(model, *args):
    """``model.fit(*args)`` with its stop before convergence not warned."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(*args)


def test_two_threads_fit_at_once_under_workqueue():
    """Two fits at once from a ThreadPoolExecutor under Numba's workqueue layer (its
    fallback without OpenMP or TBB: pip's Numba on Apple silicon) aborted the interpreter
    with SIGABRT ("Concurrent access has been detected"); they take turns per kernel now,
    with the same bits as the fits run one after the other."""
    run = _run_child(
        """
        from concurrent.futures import ThreadPoolExecutor
        import numba
        def fit(seed):
            model = vbsnmf.VBNMF(4, max_iter=15, random_state=seed, n_threads=2)
            return model.fit_transform(X), model.components_, model.elbo_trace_
        one_by_one = [fit(seed) for seed in (0, 1)]
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(fit, (0, 1)))
        same = all(
            np.array_equal(a, b) for x, y in zip(one_by_one, together) for a, b in zip(x, y)
        )
        print(numba.threading_layer(), same)
        """,
        timeout=300,
        NUMBA_THREADING_LAYER="workqueue",
        NUMBA_NUM_THREADS="2",
    )
    assert run.returncode == 0, run.stderr[-800:]
    assert run.stdout.split() == ["workqueue", "True"]


def test_fork_after_a_fit_is_a_clear_error_not_a_hang():
    """A multiprocessing 'fork' pool after the parent ran a fit: under Numba's GNU OpenMP
    layer each child was killed by SIGTERM at its first kernel, and the pool waited
    forever. The child raises a RuntimeError naming 'spawn' now, which the pool hands
    back; a child forked before the parent's first fit still fits."""
    run = _run_child(
        """
        import multiprocessing as mp, numba
        def fit(seed):
            return float(vbsnmf.VBNMF(3, max_iter=5, random_state=seed).fit(X).elbo_trace_[-1])
        context = mp.get_context("fork")
        with context.Pool(1) as pool:  # the parent has run no kernel yet
            print("before", np.isfinite(pool.apply_async(fit, (1,)).get(timeout=60)))
        fit(0)
        from numba.np.ufunc import omppool
        print("layer", numba.threading_layer(), getattr(omppool, "openmp_vendor", None))
        with context.Pool(1) as pool:
            try:
                pool.apply_async(fit, (2,)).get(timeout=30)
                print("after fitted")
            except mp.TimeoutError:
                print("after hung")
            except RuntimeError as error:
                print("after", type(error).__name__, "'spawn'" in str(error))
        """,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-800:]
    lines = run.stdout.splitlines()
    assert lines[0] == "before True"
    if lines[1] != "layer omp GNU":
        pytest.skip(f"a fork-safe threading layer here ({lines[1]})")
    assert lines[2] == "after RuntimeError True", run.stdout


def test_two_threads_fit_at_once_same_bits():
    """Guards a normal case (passes before the fix): two fits at once from two threads of
    this process (its own threading layer) give the bits of the fits run one after the
    other, batch VB and SVI, and leave the caller's Numba thread setting alone."""
    X = _counts(150, 60)

    def fit(arguments):
        seed, solver = arguments
        model = vbsnmf.VBNMF(3, max_iter=5, random_state=seed, n_threads=2, solver=solver)
        cells = _quiet_fit(model, X).transform(X)
        return cells, model.components_, model.elbo_trace_

    jobs = [(0, "batch"), (1, "svi")]
    one_by_one = [fit(job) for job in jobs]
    before = numba.get_num_threads()
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(fit, jobs))
    for alone, beside in zip(one_by_one, together):
        for a, b in zip(alone, beside):
            np.testing.assert_array_equal(a, b)
    assert numba.get_num_threads() == before


def test_parallel_kernels_keep_their_dispatcher():
    """Guards the fix's wrapper: every ``parallel=True`` kernel is a `ParallelKernel`
    whose attributes (``signatures``, ``py_func``, the docstring) are the dispatcher's,
    and which computes what the dispatcher computes."""
    from vbsnmf._utils import ParallelKernel  # the fix's: none before it

    kernels = [k for k in vars(_kernels).values() if isinstance(k, ParallelKernel)]
    assert len(kernels) >= 20
    for kernel in kernels:
        assert kernel.__doc__ == kernel.dispatcher.__doc__
        assert kernel.py_func is kernel.dispatcher.py_func
        assert isinstance(kernel.signatures, list)
    # no jitted dispatcher left with parallel=True outside the wrapper
    for name, value in vars(_kernels).items():
        if isinstance(value, numba.core.registry.CPUDispatcher):
            assert not value.targetoptions.get("parallel"), name
    rng = np.random.default_rng(0)
    theta = [rng.uniform(1.0, 2.0, 8 * _kernels.SQUAREM_BLOCK) for _ in range(3)]
    assert _kernels.squarem_sums(*theta) == _kernels.squarem_sums(*theta)


@pytest.mark.parametrize("n_threads", [0, -1, True, 2.0, np.float64(2.0), "2"])
def test_bad_n_threads_refused_everywhere(n_threads):
    """Guards a normal case (passes before the fix): ``n_threads`` of 0, negative, a bool,
    a float or text is a ValueError or TypeError naming it on VBNMF (fit and transform),
    VBNTF, and tl.nmf with a VB and a classical solver; before any work."""
    X = _counts()
    fitted = _quiet_fit(vbsnmf.VBNMF(2, max_iter=2, random_state=0), X)
    coords = np.array([[0, 0, 0], [1, 1, 1], [2, 1, 0]])
    calls = [
        lambda: vbsnmf.VBNMF(2, n_threads=n_threads).fit(X),
        lambda: fitted.set_params(n_threads=n_threads).transform(X),
        lambda: vbsnmf.VBNTF(2, n_threads=n_threads).fit(coords, np.array([1.0, 2.0, 3.0])),
        lambda: vbsnmf.tl.nmf(ad.AnnData(X.copy()), 2, n_threads=n_threads),
        lambda: vbsnmf.tl.nmf(ad.AnnData(X.copy()), 2, solver="mu", n_threads=n_threads),
    ]
    for call in calls:
        with pytest.raises((TypeError, ValueError), match="n_threads"):
            call()


def test_n_threads_restores_the_callers_setting():
    """Guards a normal case (passes before the fix): a fit, an SVI fit, a transform, a
    tensor fit and tl.nmf (VB and classical) with ``n_threads=2``, and a fit that fails
    on its input, leave ``numba.get_num_threads()`` as the caller set it; a count above
    the machine's runs on all of them."""
    X = _counts()
    coords = np.array([[0, 0, 0], [1, 1, 1], [2, 1, 0]])
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        model = _quiet_fit(vbsnmf.VBNMF(2, max_iter=3, n_threads=2, random_state=0), X)
        assert numba.get_num_threads() == 1
        _quiet_fit(vbsnmf.VBNMF(2, max_iter=3, n_threads=2, solver="svi", random_state=0), X)
        model.transform(X)
        _quiet_fit(vbsnmf.VBNTF(2, max_iter=3, n_threads=2), coords, np.array([1.0, 2, 3]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = ad.AnnData(X.copy())
            vbsnmf.tl.nmf(adata, 2, max_iter=3, n_threads=10**6)
            vbsnmf.tl.nmf(ad.AnnData(X.copy()), 2, solver="mu", max_iter=3, n_threads=2)
        with pytest.raises(ValueError):
            vbsnmf.VBNMF(2, n_threads=2).fit(-X)
        assert numba.get_num_threads() == 1
        assert adata.uns["nmf"]["params"]["n_threads"] == numba.config.NUMBA_NUM_THREADS
    finally:
        numba.set_num_threads(previous)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_transform_does_not_depend_on_threads():
    """Guards a normal case (passes before the fix): transform's docstring says a cell's
    factors do not depend on the threads: one fitted model's transform on 1 and 2
    threads is bit for bit the same, under both priors."""
    X = _counts(300, 80)
    for prior in ("gamma", "hierarchical"):
        model = _quiet_fit(vbsnmf.VBNMF(3, max_iter=10, random_state=0, prior=prior), X)
        one = model.set_params(n_threads=1).transform(X)
        two = model.set_params(n_threads=2).transform(X)
        np.testing.assert_array_equal(one, two)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_one_and_two_threads_agree_tensor_and_svi():
    """Guards a normal case (passes before the fix): the README's 1 vs 2 threads within
    1e-10 for a tensor fit and an SVI fit of a few iterations, and 2 vs 2 bit for bit."""
    rng = np.random.default_rng(0)
    coords = np.stack(
        [rng.integers(0, 30, 1000), rng.integers(0, 20, 1000), rng.integers(0, 4, 1000)], 1
    )
    values = rng.poisson(2, 1000).astype(float) + 1
    X = _counts(200, 60)
    for make, data in (
        (lambda n: vbsnmf.VBNTF(3, max_iter=10, n_threads=n, random_state=0), (coords, values)),
        (
            lambda n: vbsnmf.VBNMF(3, max_iter=5, n_threads=n, solver="svi", random_state=0),
            (X,),
        ),
    ):
        runs = [_quiet_fit(make(n), *data) for n in (1, 2, 2)]
        traces = [np.asarray(run.elbo_trace_) for run in runs]
        np.testing.assert_array_equal(traces[1], traces[2])
        np.testing.assert_allclose(traces[0], traces[1], rtol=1e-10)


def test_keyboard_interrupt_in_a_parallel_fit_leaves_the_process_usable():
    """Guards a normal case (passes before the fix): Ctrl-C (SIGINT) during a 2-thread fit
    under the workqueue layer raises KeyboardInterrupt within seconds, restores the
    caller's thread setting, and leaves no kernel lock held: the next fit runs."""
    run = _run_child(
        """
        import signal, time, numba
        big = sp.random(2000, 400, density=0.1, random_state=0, format="csr")
        big.data = np.round(big.data * 5) + 1
        vbsnmf.VBNMF(3, max_iter=2, random_state=0).fit(X)
        numba.set_num_threads(1)
        signal.signal(signal.SIGALRM, lambda *a: signal.raise_signal(signal.SIGINT))
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        start = time.monotonic()
        try:
            vbsnmf.VBNMF(6, max_iter=10**6, tol=0, random_state=0, n_threads=2).fit(big)
            print("not interrupted")
        except KeyboardInterrupt:
            print("interrupted", time.monotonic() - start < 10, numba.get_num_threads())
        vbsnmf.VBNMF(3, max_iter=3, random_state=0, n_threads=2).fit(X)
        print("next fit", numba.get_num_threads())
        """,
        timeout=120,
        NUMBA_THREADING_LAYER="workqueue",
        NUMBA_NUM_THREADS="2",
    )
    assert run.returncode == 0, run.stderr[-800:]
    assert run.stdout.splitlines() == ["interrupted True 1", "next fit 1"]
