"""Thirty-sixth hostile pass, second wave: sparse inputs whose index arrays are unsigned
(BPCells wrote ``indptr`` as uint64 until 2024, and anndata reads it as stored) where a
user's sparse matrix enters beside the counts, and `tl.count_split`'s refusal of bad
counts.

Defects (each test fails on the base code): `tl.nmf` of a dask array whose chunks are
CSR or CSC with uint64 index arrays ended in numpy's "Cannot cast array data from
dtype('uint64')" from the gene and cell totals it sums chunk by chunk (VBNMF.fit of the
same array fits); classic `NMF(init="custom").fit(X, W=...)` of a sparse W or H with
uint64 index arrays, a sparse `factor_mask` and `VBNMF.inverse_transform` of a sparse
matrix with them gave scipy's "unsupported data types in input"; a sparse W (or factor
mask) holding an index beyond its shape was read silently, ``toarray`` writing outside
its array, and is now a `CorruptMatrixError`; `tl.count_split` refused a negative or NaN
count as "counts must be non-negative and finite" without its count or position, which
VBNMF's message gives, and split a COO matrix storing -1 and 3 at one position as a
count of 2, which VBNMF refuses. The guards say so in their docstrings.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import NMF, VBNMF, tl
from vbsnmf._validation import CorruptMatrixError

N_CELLS, N_GENES = 40, 12


def _counts(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(1.0, (N_CELLS, N_GENES)).astype(np.float64)


def _unsigned(matrix, layout: str = "csr", index_dtype=np.uint64):
    """``matrix`` in ``layout`` with its index arrays set to ``index_dtype`` after
    construction (scipy's constructors make them signed; anndata's reader does not)."""
    matrix = sp.csr_matrix(matrix).asformat(layout)
    if layout == "coo":
        matrix.row, matrix.col = matrix.row.astype(index_dtype), matrix.col.astype(index_dtype)
    else:
        matrix.indptr = matrix.indptr.astype(index_dtype)
        matrix.indices = matrix.indices.astype(index_dtype)
    return matrix


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.mark.parametrize("layout", ["csr", "csc"])
def test_tl_nmf_of_dask_chunks_with_uint64_index_arrays(client, layout):
    """`tl.nmf` of a dask array whose chunks (built in their tasks, as a reader of a
    BPCells file builds them) hold uint64 index arrays: numpy's "Cannot cast array data
    from dtype('uint64')" from the chunk sums before; now the fit of the same counts in
    signed chunks, the gene totals exact."""
    da = pytest.importorskip("dask.array")
    import dask

    counts = _counts().astype(np.float32)
    meta = sp.csr_matrix((0, N_GENES), dtype=np.float32).asformat(layout)

    def chunked(build):
        parts = [
            da.from_delayed(
                dask.delayed(build)(counts[start : start + 20], layout),
                shape=(20, N_GENES),
                dtype=np.float32,
                meta=meta,
            )
            for start in (0, 20)
        ]
        return da.concatenate(parts, axis=0)

    signed = lambda block, layout: sp.csr_matrix(block).asformat(layout)  # noqa: E731
    results = []
    for build in (_unsigned, signed):
        adata = ad.AnnData(chunked(build))
        _quiet(tl.nmf, adata, n_components=3, max_iter=5, random_state=0)
        results.append(adata)
    unsigned_fit, signed_fit = results
    np.testing.assert_array_equal(unsigned_fit.obsm["X_nmf"], signed_fit.obsm["X_nmf"])
    np.testing.assert_array_equal(
        unsigned_fit.var["nmf_total_counts"], counts.sum(axis=0, dtype=np.float64)
    )


@pytest.mark.parametrize("layout", ["csr", "csc", "coo", "bsr"])
@pytest.mark.parametrize("index_dtype", [np.uint32, np.uint64])
def test_classic_custom_init_of_unsigned_index_arrays(layout, index_dtype):
    """Classic `NMF(init="custom").fit(X, W=W, H=H)` of sparse W and H with unsigned
    index arrays: scipy's "unsupported data types in input" before (uint64 CSR, CSC, BSR);
    now the fit from the same dense factors. The uint32 and uint64 COO cases are guards
    (they passed on the base code too)."""
    rng = np.random.default_rng(1)
    X = _counts()
    W, H = rng.random((N_CELLS, 3)) + 0.1, rng.random((3, N_GENES)) + 0.1
    dense = _quiet(NMF(3, max_iter=5, init="custom").fit, X, W=W, H=H)
    sparse_factors = (_unsigned(W, layout, index_dtype), _unsigned(H, layout, index_dtype))
    if layout == "bsr":  # set after construction too, as a reader would
        sparse_factors = tuple(
            _unsigned(sp.bsr_matrix(factor), "bsr", index_dtype) for factor in (W, H)
        )
    fitted = _quiet(
        NMF(3, max_iter=5, init="custom").fit, X, W=sparse_factors[0], H=sparse_factors[1]
    )
    np.testing.assert_array_equal(fitted.components_, dense.components_)


def test_classic_custom_init_refuses_a_corrupt_sparse_factor():
    """A sparse W whose column index lies beyond its shape (a damaged file): read
    silently before (``toarray`` writes outside its array); now a `CorruptMatrixError`
    naming W and the position, as X's."""
    rng = np.random.default_rng(2)
    W = sp.csr_matrix(rng.random((N_CELLS, 3)) + 0.1)
    W.indices[5] = 100_000
    with pytest.raises(CorruptMatrixError, match=r"W: corrupt CSR matrix.*100000"):
        _quiet(NMF(3, max_iter=5, init="custom").fit, _counts(), W=W, H=rng.random((3, N_GENES)))


def test_classic_sparse_factor_mask_with_uint64_index_arrays():
    """A sparse ``factor_mask={'W': ...}`` with uint64 index arrays: scipy's "unsupported
    data types in input" before; now the fit with the same mask dense."""
    rng = np.random.default_rng(3)
    mask = (rng.random((N_CELLS, 3)) < 0.8).astype(np.float64)
    mask[:, 0] = 1
    dense = _quiet(NMF(3, max_iter=5, factor_mask={"W": mask}, random_state=0).fit, _counts())
    fitted = _quiet(
        NMF(3, max_iter=5, factor_mask={"W": _unsigned(mask)}, random_state=0).fit, _counts()
    )
    np.testing.assert_array_equal(fitted.components_, dense.components_)


@pytest.mark.parametrize("layout", ["csr", "csc", "coo"])
def test_vbnmf_inverse_transform_of_uint64_index_arrays(layout):
    """`VBNMF.inverse_transform` of sparse cell factors with uint64 index arrays: scipy's
    "unsupported data types in input" before (CSR, CSC; the COO case is a guard, passing
    on the base code too); now the product of the dense factors."""
    model = _quiet(VBNMF(3, max_iter=5, random_state=0).fit, _counts())
    factors = _quiet(model.transform, _counts())
    expected = model.inverse_transform(factors)
    np.testing.assert_array_equal(model.inverse_transform(_unsigned(factors, layout)), expected)


@pytest.mark.parametrize("kind", ["dense", "csr", "csc", "coo"])
def test_count_split_names_bad_counts_and_their_positions(kind):
    """`tl.count_split` of a negative and a NaN count: "counts must be non-negative and
    finite" alone before; now how many of each and where, as VBNMF.fit says it."""
    counts = np.ones((5, 4))
    counts[3, 2] = -1
    counts[1, 1] = np.nan
    given = counts if kind == "dense" else sp.csr_matrix(counts).asformat(kind)
    with pytest.raises(ValueError) as caught:
        tl.count_split(given)
    message = str(caught.value)
    assert message.startswith("counts must be non-negative and finite; found ")
    assert "1 NaN entry at (row, column) (1, 1)" in message
    assert "1 negative entry at (row, column) (3, 2)" in message


def test_count_split_refuses_a_negative_count_hidden_by_a_repeat():
    """A COO matrix storing -1 and 3 at one position: split as a count of 2 before (its
    repeats summed first), where VBNMF.fit refuses the negative; now refused by position."""
    counts = sp.coo_matrix(
        (np.array([-1.0, 3.0, 2.0]), (np.array([0, 0, 1]), np.array([0, 0, 1]))), shape=(3, 3)
    )
    with pytest.raises(ValueError, match=r"1 negative entry at \(row, column\) \(0, 0\)"):
        tl.count_split(counts)
    with pytest.raises(ValueError, match="negative"):
        _quiet(VBNMF(1, max_iter=2).fit, counts)


def test_count_split_of_unsigned_bsr_and_coo_counts_guard():
    """Guard (passes on the base code too): `tl.count_split` of BSR and COO counts with
    uint32/uint64 index arrays splits them as the same counts in CSR."""
    counts = _counts(4)
    expected = tl.count_split(sp.csr_matrix(counts), random_state=0)
    for index_dtype in (np.uint32, np.uint64):
        for matrix in (
            _unsigned(counts, "coo", index_dtype),
            _unsigned(sp.bsr_matrix(counts), "bsr", index_dtype),
        ):
            halves = tl.count_split(matrix, random_state=0)
            for half, reference in zip(halves, expected):
                np.testing.assert_array_equal(half.toarray(), reference.toarray())
