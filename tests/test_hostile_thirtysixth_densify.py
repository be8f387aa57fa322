"""Thirty-sixth hostile pass, densification: no public route may allocate cells x genes
(nor nonzeros x K) where it need not.

Each route runs on counts whose dense float64 form is ``DENSE_BYTES`` (4,000 cells x 3,000
genes, 96 MB) but whose nonzeros are few (0.2 %, about 28,000), its peak allocations traced
by tracemalloc after a warm-up on a few cells (Numba's compilation is not the route's). The
bound is a tenth of the dense form: below one cells x genes boolean array, far above what
the nonzeros and the factors take (5 MB at most, measured).

- D1: `vbsnmf.tl.count_split` of a dense array copied it, checked it and drew every entry
  (zeros too) in int64: its traced peak was 6x the array (15x for uint16), beside the two
  halves it returns. Only the nonzeros are drawn now, in the order a CSR holds them, so the
  halves are the CSR's (a Binomial draw of zero takes no random number), bit for bit.

The other tests are guards that pass on the code before this pass too: they pin the peaks
the pass measured for batch VB (fit and transform), the classical solvers, `tl.nmf`,
`tl.project`, `tl.top_genes`, `tl.select_k`, the table writer and a sparse count split.
"""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import tl
from vbsnmf.classic import NMF

N_CELLS, N_GENES, K = 4000, 3000, 4
DENSE_BYTES = N_CELLS * N_GENES * 8
BOUND = DENSE_BYTES // 10

# the fits run a few passes only: their peaks, not their convergence, are tested
pytestmark = pytest.mark.filterwarnings("ignore:.*stopped (after|at) max_iter")


def _counts(seed=0, n_cells=N_CELLS, n_genes=N_GENES):
    """Sparse counts with every cell and gene holding at least one."""
    rng = np.random.default_rng(seed)
    X = sp.random(
        n_cells,
        n_genes,
        density=0.002,
        format="csr",
        random_state=rng,
        data_rvs=lambda n: rng.integers(1, 20, n).astype(np.float64),
    )
    band = np.arange(n_cells)
    X = X + sp.csr_matrix((np.ones(n_cells), (band, band % n_genes)), shape=X.shape)
    genes = band[: min(n_cells, n_genes)]
    X = X + sp.csr_matrix((np.ones(genes.size), (genes % n_cells, genes)), shape=X.shape)
    return sp.csr_matrix(X)


@pytest.fixture(scope="module")
def counts():
    return _counts()


def _traced_peak(function, *args, **kwargs):
    """``function(*args, **kwargs)``'s result and the peak it allocated above what was
    allocated before (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = function(*args, **kwargs)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return result, peak


# -- D1: count_split of a dense array ----------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.uint16])
def test_count_split_of_dense_counts_draws_only_the_nonzeros(dtype):
    """D1: the traced peak was 6x the array (float64) and 15x (uint16) beside its halves;
    now the halves and little more, and the halves are the CSR's bit for bit."""
    sparse = _counts(n_cells=2000, n_genes=1000).astype(dtype)
    dense = sparse.toarray()
    tl.count_split(dense[:5])  # warm-up
    (train, test), peak = _traced_peak(tl.count_split, dense, random_state=3)
    halves = train.nbytes + test.nbytes
    assert peak < halves + dense.nbytes // 4 + 2**20, (peak, halves)
    sparse_train, sparse_test = tl.count_split(sparse, random_state=3)
    assert train.dtype == test.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(train, sparse_train.toarray())
    np.testing.assert_array_equal(test, sparse_test.toarray())
    np.testing.assert_array_equal(train + test, dense)


@pytest.mark.parametrize(
    "layout",
    ["fortran", "strided", "int8", "bool", "matrix", "nullable_frame", "list", "all_zero"],
)
def test_count_split_of_dense_layouts_matches_the_csr(layout):
    """Guard (passes on both): a dense input of any layout or dtype splits as its CSR does,
    into C-ordered ndarrays of its dtype (float64 for pandas' nullable Int64)."""
    base = _counts(seed=1, n_cells=60, n_genes=40).toarray()
    given = {
        "fortran": lambda: np.asfortranarray(base),
        "strided": lambda: base[::2, ::3],
        "int8": lambda: base.astype(np.int8),
        "bool": lambda: base > 5,
        "matrix": lambda: np.asmatrix(base),
        "nullable_frame": lambda: pd.DataFrame(base.astype(int)).astype("Int64"),
        "list": lambda: base.tolist(),
        "all_zero": lambda: np.zeros((3, 4)),
    }[layout]()
    train, test = tl.count_split(given, 0.3, random_state=5)
    reference = np.array(np.asarray(given, dtype=None if layout != "nullable_frame" else float))
    csr_train, csr_test = tl.count_split(sp.csr_matrix(reference), 0.3, random_state=5)
    for half, csr_half in ((train, csr_train), (test, csr_test)):
        assert type(half) is np.ndarray and half.flags.c_contiguous
        assert half.dtype == reference.dtype
        np.testing.assert_array_equal(half, csr_half.toarray())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([[1.0, np.nan], [0.0, 2.0]]), "non-negative and finite"),
        (np.array([[1.0, -1.0], [0.0, 2.0]]), "non-negative and finite"),
        (np.array([[1.5, 0.0], [0.0, 2.0]]), "whole numbers"),
        (np.array([[2.0**25, 0.0], [0.0, 1.0]], dtype=np.float32), "beyond 16777216"),
    ],
)
def test_count_split_of_dense_counts_still_checks_every_entry(values, message):
    """Guard (passes on both): the checks read the nonzeros only now, which hold every bad
    value (NaN, negative, fractional and too large are all nonzero)."""
    with pytest.raises(ValueError, match=message):
        tl.count_split(values)


# -- guards: the peaks of the other routes -----------------------------------------------


def test_batch_fit_and_transform_peak_below_a_tenth_of_dense(counts):
    """Guard: `VBNMF.fit` (batch, both priors, SQUAREM) and `transform` of sparse counts."""
    vbsnmf.VBNMF(K, max_iter=2, random_state=0).fit(counts[:200])
    for params in ({}, {"prior": "gamma"}, {"accelerate": True}):
        model, peak = _traced_peak(
            vbsnmf.VBNMF(K, max_iter=3, random_state=0, **params).fit, counts
        )
        assert peak < BOUND, (params, peak)
    _, peak = _traced_peak(model.transform, counts)
    assert peak < BOUND, peak


def test_classic_solvers_peak_below_a_tenth_of_dense(counts):
    """Guard: classical `NMF` (multiplicative KL, HALS) fit and transform of sparse counts
    never form ``W H``."""
    for params in ({}, {"solver": "hals"}):
        NMF(K, max_iter=2, random_state=0, **params).fit(counts[:200])
        model, peak = _traced_peak(NMF(K, max_iter=3, random_state=0, **params).fit, counts)
        assert peak < BOUND, (params, peak)
        _, peak = _traced_peak(model.transform, counts)
        assert peak < BOUND, (params, peak)


def test_tools_peak_below_a_tenth_of_dense(counts, tmp_path):
    """Guard: `tl.nmf`, `tl.top_genes`, `tl.project`, `io.write_nmf_tables` and the sparse
    count split on an AnnData of sparse counts."""
    names = [f"g{j}" for j in range(N_GENES)]
    warm = ad.AnnData(counts[:200].copy())
    warm.var_names = names
    tl.nmf(warm, K, max_iter=2, random_state=0)
    adata = ad.AnnData(counts.copy())
    adata.var_names = names
    _, peak = _traced_peak(tl.nmf, adata, K, max_iter=3, random_state=0)
    assert peak < BOUND, peak
    _, peak = _traced_peak(tl.top_genes, adata)
    assert peak < BOUND, peak
    new = ad.AnnData(_counts(seed=2))
    new.var_names = names
    _, peak = _traced_peak(tl.project, new, adata)
    assert peak < BOUND, peak
    _, peak = _traced_peak(vbsnmf.io.write_nmf_tables, adata, tmp_path)
    assert peak < BOUND, peak
    _, peak = _traced_peak(tl.count_split, counts)
    assert peak < BOUND, peak


def test_select_k_peak_below_a_tenth_of_dense(counts):
    """Guard: `tl.select_k` (its count split, fits and held-out scores in blocks)."""
    tl.select_k(ad.AnnData(counts[:200].copy()), ks=(2,), max_iter=2)
    adata = ad.AnnData(counts.copy())
    _, peak = _traced_peak(tl.select_k, adata, ks=(2, 3), max_iter=2)
    assert peak < BOUND, peak
