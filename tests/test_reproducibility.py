"""Reproducibility across processes and thread counts.

The fits run in fresh Python interpreters, so nothing (Numba's compiled state, NumPy's
global state, hash seeds) is shared between the runs compared: same seed and thread
count must give bitwise-identical results; a different thread count cuts the nonzeros
into different chunks, which only reorders sums, so results agree to 1e-10 relative.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf

ROOT = Path(__file__).resolve().parents[1]


def fit_summary(X, seed: int, n_threads: int, prior: str = "gamma") -> dict:
    """Fit, then a digest of every fitted array and the arrays compared with tolerance."""
    model = vbsnmf.VBNMF(5, max_iter=30, tol=0, random_state=seed, n_threads=n_threads, prior=prior)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        cell_factors = model.fit_transform(X)
    arrays = {
        "cell_factors": cell_factors,
        "projected": model.transform(X[:50]),
        "elbo_trace": model.elbo_trace_,
        "cell_shape": model.cell_shape_,
        "cell_rate": model.cell_rate_,
        "gene_shape": model.gene_shape_,
        "gene_rate": model.gene_rate_,
    }
    return {
        "digests": {
            key: hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
            for key, value in arrays.items()
        },
        "elbo_trace": model.elbo_trace_.tolist(),
        "components": model.components_.ravel().tolist(),
        "cell_factors": cell_factors.ravel().tolist(),
    }


# The same function, run in a fresh interpreter on the same data.
_FIT_SCRIPT = """
import json, sys
import numba
import vbsnmf
sys.path.insert(0, "tests")
from test_reproducibility import fit_summary
X = vbsnmf.datasets.pbmc_tiny().X
runs = [fit_summary(X, *run) for run in json.loads(sys.argv[1])]
print(json.dumps({"numba_threads": numba.config.NUMBA_NUM_THREADS, "runs": runs}))
"""


def _start_process(runs: list[tuple], **environment) -> subprocess.Popen:
    env = dict(os.environ, **environment)
    return subprocess.Popen(
        [sys.executable, "-c", _FIT_SCRIPT, json.dumps(runs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def _result(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout)


@pytest.fixture(scope="module")
def fits(_pbmc_tiny) -> dict[str, dict]:
    """Fits in this process and in two fresh ones (started together, run in parallel);
    the fixed prior, and the default learned one ("hierarchical")."""
    learned = [(7, 2, "hierarchical"), (7, 1, "hierarchical")]
    other = _start_process([(7, 2), (7, 1), *learned], PYTHONHASHSEED="123")
    single_threaded = _start_process([(7, 1)], NUMBA_NUM_THREADS="1")
    here = {
        "here 7/2": fit_summary(_pbmc_tiny.X, 7, 2),
        "here 7/1": fit_summary(_pbmc_tiny.X, 7, 1),
        "here 8/2": fit_summary(_pbmc_tiny.X, 8, 2),
        "here 7/2 hierarchical": fit_summary(_pbmc_tiny.X, *learned[0]),
    }
    other_result, single_result = _result(other), _result(single_threaded)
    assert other_result["numba_threads"] >= 2 and single_result["numba_threads"] == 1
    return {
        **here,
        "other 7/2": other_result["runs"][0],
        "other 7/1": other_result["runs"][1],
        "other 7/2 hierarchical": other_result["runs"][2],
        "other 7/1 hierarchical": other_result["runs"][3],
        "NUMBA_NUM_THREADS=1 7/1": single_result["runs"][0],
    }


def test_same_seed_and_threads_bitwise_identical_across_processes(fits):
    assert fits["here 7/2"]["digests"] == fits["other 7/2"]["digests"]
    assert fits["here 7/1"]["digests"] == fits["other 7/1"]["digests"]
    assert fits["here 7/2 hierarchical"]["digests"] == fits["other 7/2 hierarchical"]["digests"]
    # The digests cover real work: a different seed changes every one of them.
    assert all(
        fits["here 7/2"]["digests"][key] != fits["here 8/2"]["digests"][key]
        for key in fits["here 7/2"]["digests"]
    )


def test_thread_pool_size_does_not_matter_for_a_given_thread_count(fits):
    """n_threads fixes the chunking; how many threads the process has does not."""
    assert fits["here 7/1"]["digests"] == fits["NUMBA_NUM_THREADS=1 7/1"]["digests"]


@pytest.mark.parametrize("prior", ["", " hierarchical"])
def test_one_and_two_threads_agree_to_1e_10(fits, prior):
    one, two = fits[f"other 7/1{prior}"], fits[f"other 7/2{prior}"]
    assert one["digests"]["elbo_trace"] != two["digests"]["elbo_trace"]  # really rechunked
    for key in ("elbo_trace", "components", "cell_factors"):
        np.testing.assert_allclose(np.array(one[key]), np.array(two[key]), rtol=1e-10, atol=0)


def test_in_process_refit_is_bitwise_identical_with_generator_seed():
    """A `numpy.random.Generator` as seed, with n_init > 1: two in-process fits agree."""
    X = sp.random(70, 50, density=0.2, format="csr", random_state=3)
    X.data = np.ceil(X.data * 30)
    digests = []
    for _ in range(2):
        model = vbsnmf.VBNMF(
            3,
            max_iter=15,
            tol=0,
            n_init=3,
            n_threads=2,
            random_state=np.random.default_rng(11),
            prior="gamma",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            model.fit(X)
        digests.append(
            hashlib.sha256(model.cell_shape_.tobytes() + model.elbo_trace_.tobytes()).hexdigest()
        )
    assert digests[0] == digests[1]


# Fits whose bits depended on the compile path before _kernels dropped "reassoc": K=8 and
# K=15 make full and partial SIMD vectors; a classical MU fit runs the classic kernels.
_COMPILE_PATH_SCRIPT = """
import hashlib, json, sys, warnings
import numpy as np
import vbsnmf
X = vbsnmf.datasets.pbmc_tiny().X
digest = hashlib.sha256()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for k in (8, 15):
        model = vbsnmf.VBNMF(k, max_iter=20, tol=0, random_state=3, n_threads=2)
        digest.update(model.fit_transform(X).tobytes() + model.elbo_trace_.tobytes())
    for loss in ("kl", "frobenius"):
        nmf = vbsnmf.NMF(10, loss=loss, max_iter=20, tol=0, random_state=3)
        digest.update(nmf.fit_transform(X).tobytes() + nmf.loss_trace_.tobytes())
print(digest.hexdigest())
# The types the kernels were compiled for (a run that loads them from the cache lists
# none): the parallel loops' block numbers, the buffered logs' counts.
from vbsnmf import _kernels
rng = np.random.default_rng(0)
n = 8 * _kernels.SQUAREM_BLOCK  # SQUAREM's blocks in parallel
theta = [rng.uniform(1.0, 2.0, n) for _ in range(3)]
_kernels.squarem_sums(*theta)
_kernels.squarem_extrapolate(*theta, 1.5, np.empty(n))
_kernels.expected_log_sums(rng.uniform(1.0, 2.0, (9, 3)), rng.uniform(1.0, 2.0, (9, 3)))
bodies = ("_gamma_terms_block", "_expected_log_block", "_squarem_sums_block",
          "_squarem_extrapolate_block")
compiled = {
    name: sorted({str(s[0]) for s in getattr(_kernels, name).signatures}) for name in bodies
}
compiled["weighted_log_sum"] = sorted({str(s[2]) for s in _kernels.weighted_log_sum.signatures})
print(json.dumps(compiled))
"""


def test_compiling_and_loading_from_the_cache_give_the_same_bits(tmp_path):
    """The first run compiles the kernels and writes Numba's cache, the second loads them:
    a user's first and second fit must agree bitwise. The first compiles each block body
    for one type of block number."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba_cache"))
    digests, compiled = [], []
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, "-c", _COMPILE_PATH_SCRIPT],
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        digest, types = run.stdout.strip().splitlines()[-2:]
        digests.append(digest)
        compiled.append(json.loads(types))
    assert any((tmp_path / "numba_cache").rglob("*.nbc"))  # the second run had a cache
    assert digests[0] == digests[1]
    # Each compiled once, for one type: Numba types a prange loop's index as int64, then
    # compiles the loop as a gufunc with an unsigned index, and a block's body called
    # with it was compiled for both (the ELBO terms' body twice in every first fit, 5.6 s
    # of 43); a literal 0 had the buffered logs compiled for Literal[int](0) as well.
    assert compiled[0] == {
        "_gamma_terms_block": ["int64"],
        "_expected_log_block": ["int64"],
        "_squarem_sums_block": ["int64"],
        "_squarem_extrapolate_block": ["int64"],
        "weighted_log_sum": ["int64"],
    }
