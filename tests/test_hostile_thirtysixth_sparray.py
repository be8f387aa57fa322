"""Thirty-sixth hostile pass: scipy's sparse arrays and unusual sparse containers through
every route (VBNMF's batch, SQUAREM and SVI forms, `transform`, classic `NMF`,
`tl.count_split`, `tl.nmf`, `tl.project`, a streamed `.h5ad`, `VBNTF`'s coordinates),
against the same counts as a ``csr_matrix``.

Defects (each test fails on the base code): classic `NMF` of a CSR matrix whose index
arrays are uint64 (BPCells wrote ``indptr`` so until 2024, and anndata reads it as stored)
ended in scipy's "unsupported data types in input", which VBNMF fits; so did
`tl.count_split` of such a matrix, and a mask of it given to `VBNMF.fit`, in any dtype
narrower than 8 bytes (float32, anndata's usual X; uint8; bool); `tl.count_split` split a
CSR matrix whose column index lies beyond its shape (a damaged file) into halves holding
the index, whose ``toarray()`` wrote outside its array, where every fit refuses it as a
`CorruptMatrixError`. The other tests are guards (they pass on the base code too, as their
docstrings say): non-canonical sparse arrays (unsorted indices, repeated entries summed
beyond a narrow dtype, stored zeros and -0.0, int64 index arrays) fit bit for bit as the
same counts in a ``csr_matrix``.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vbsnmf import NMF, VBNMF, VBNTF, tl
from vbsnmf._validation import CorruptMatrixError

N_CELLS, N_GENES = 50, 24


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _counts() -> np.ndarray:
    rng = np.random.default_rng(1)
    counts = rng.poisson(3, size=(N_CELLS, N_GENES)).astype(np.float64)
    counts[rng.random(counts.shape) < 0.5] = 0
    counts[:, 3] *= 60  # counts whose halves, stored as repeats, sum beyond uint8
    return counts


def _entries():
    """The counts of `_counts` stored twice each (halves), unsorted, with a stored 0.0 and
    a -0.0: rows sorted (for CSR pointers), columns in each row in random order."""
    coo = sp.coo_matrix(_counts())
    low = np.floor(coo.data / 2)
    rows = np.concatenate([coo.row, coo.row, [0, 1, 2]])
    cols = np.concatenate([coo.col, coo.col, [5, 6, 7]])
    values = np.concatenate([low, coo.data - low, [0.0, -0.0, 0.0]])
    order = np.random.default_rng(2).permutation(rows.size)
    order = order[np.argsort(rows[order], kind="stable")]
    return rows[order], cols[order], values[order]


def _non_canonical(kind, dtype, index_dtype=np.int32):
    """`_counts` as a non-canonical CSR ``kind`` (csr_array or csr_matrix)."""
    rows, cols, values = _entries()
    indptr = np.searchsorted(rows, np.arange(N_CELLS + 1))
    return kind(
        (values.astype(dtype), cols.astype(index_dtype), indptr.astype(index_dtype)),
        shape=(N_CELLS, N_GENES),
    )


def _with_uint64_indices(matrix):
    matrix = matrix.copy()
    matrix.indptr = matrix.indptr.astype(np.uint64)
    matrix.indices = matrix.indices.astype(np.uint64)
    return matrix


# -- defects -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [sp.csr_matrix, sp.csr_array])
def test_classic_nmf_fits_uint64_index_arrays(kind):
    """Classic NMF of a CSR matrix with uint64 ``indptr`` and ``indices``: scipy's
    "unsupported data types in input" before; now the fit of the same counts with signed
    indices, the caller's matrix unchanged."""
    counts = kind(_counts())
    expected = _quiet(NMF(3, random_state=0, max_iter=10).fit_transform, counts)
    unsigned = _with_uint64_indices(counts)
    fitted = _quiet(NMF(3, random_state=0, max_iter=10).fit_transform, unsigned)
    np.testing.assert_array_equal(fitted, expected)
    assert unsigned.indptr.dtype == unsigned.indices.dtype == np.uint64


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, bool])
@pytest.mark.parametrize("kind", [sp.csr_matrix, sp.csr_array, sp.csc_array])
def test_count_split_of_uint64_index_arrays_in_a_narrow_dtype(kind, dtype):
    """`tl.count_split` of a sparse matrix of float32 (uint8, bool) counts whose index arrays
    are uint64: scipy's "unsupported data types in input" before (float64 passed); now the
    split of the same matrix with signed indices."""
    counts = kind((_counts() > 0) if dtype is bool else _counts().astype(dtype))
    expected = tl.count_split(counts, random_state=0)
    halves = tl.count_split(_with_uint64_indices(counts), random_state=0)
    for half, want in zip(halves, expected):
        assert type(half) is type(want) and half.dtype == want.dtype
        np.testing.assert_array_equal(half.toarray(), want.toarray())


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, bool])
def test_a_mask_with_uint64_index_arrays_in_a_narrow_dtype(dtype):
    """`VBNMF.fit(X, mask=...)` with a boolean (uint8, float32) CSR mask whose index arrays
    are uint64: scipy's "unsupported data types in input" before; now the fit with the same
    mask with signed indices."""
    missing = sp.csr_array(np.random.default_rng(3).random((N_CELLS, N_GENES)) < 0.1)
    missing = missing.astype(dtype)
    counts = _counts()
    expected = _quiet(VBNMF(3, random_state=0, max_iter=5).fit_transform, counts, mask=missing)
    mask = _with_uint64_indices(missing)
    fitted = _quiet(VBNMF(3, random_state=0, max_iter=5).fit_transform, counts, mask=mask)
    np.testing.assert_array_equal(fitted, expected)


@pytest.mark.parametrize("layout", ["csr", "csc", "coo"])
def test_count_split_refuses_an_index_beyond_the_shape(layout):
    """`tl.count_split` of a sparse matrix with an index beyond its shape: split into halves
    holding it before (whose ``toarray()`` wrote outside its array); now refused as every
    fit refuses it, naming the index."""
    counts = getattr(sp, f"{layout}_matrix")(_counts())
    if layout == "coo":
        counts.col[5] = 40
    else:
        counts.indices[5] = 70  # beyond both axes
    with pytest.raises(CorruptMatrixError, match=r"counts: corrupt .* (40|70)"):
        tl.count_split(counts, random_state=0)


def test_count_split_of_complex_sparse_counts_keeps_its_type_error():
    """Guard (passes on the base code too): the new structure check leaves sparse values
    that are no real numbers to count_split's own TypeError."""
    with pytest.raises(TypeError, match="counts must be numeric"):
        tl.count_split(sp.csr_array(_counts().astype(np.complex128)), random_state=0)


# -- guards: sparse arrays against csr_matrix ---------------------------------------------

FITS = {
    "batch": lambda X: VBNMF(3, random_state=0, max_iter=15, accelerate=False).fit_transform(X),
    "squarem": lambda X: VBNMF(3, random_state=0, max_iter=15, accelerate=True).fit_transform(X),
    # minibatches of 25 cells: the default 32 per epoch took seconds on a loaded machine
    "svi-cells": lambda X: VBNMF(
        3, random_state=0, max_iter=2, solver="svi", batch_size=25
    ).fit_transform(X),
    "svi-nonzeros": lambda X: VBNMF(
        3, random_state=0, max_iter=2, solver="svi", svi_form="nonzeros", prior="gamma"
    ).fit_transform(X),
    "svi-abe-shimamura": lambda X: VBNMF(
        3, random_state=0, max_iter=2, solver="svi", svi_form="abe-shimamura", prior="gamma"
    ).fit_transform(X),
    "transform": lambda X: (
        VBNMF(3, random_state=0, max_iter=5).fit(sp.csr_matrix(_counts())).transform(X)
    ),
    "classic-mu": lambda X: NMF(3, random_state=0, max_iter=15).fit_transform(X),
    "classic-hals": lambda X: NMF(3, solver="hals", random_state=0, max_iter=15).fit_transform(X),
    "count_split": lambda X: np.vstack([h.toarray() for h in tl.count_split(X, random_state=0)]),
}


@pytest.mark.parametrize("route", list(FITS))
@pytest.mark.parametrize("dtype", [np.float64, np.uint16, np.uint8])
def test_non_canonical_sparse_array_fits_as_the_csr_matrix(route, dtype):
    """Guard (passes on the base code too): a csr_array with int64 indices, unsorted and
    repeated entries (their uint8 sums beyond 255), a stored 0.0 and -0.0 fits bit for bit
    as the same entries in a csr_matrix with int32 indices, and as the canonical float64
    counts (uint8 repeats summed wide)."""
    array = _non_canonical(sp.csr_array, dtype, np.int64)
    matrix = _non_canonical(sp.csr_matrix, dtype)
    got = _quiet(FITS[route], array)
    np.testing.assert_array_equal(got, _quiet(FITS[route], matrix))
    if route != "count_split":  # the halves of repeats are drawn from their sums alike
        np.testing.assert_array_equal(got, _quiet(FITS[route], sp.csr_matrix(_counts())))


@pytest.mark.parametrize(
    "container",
    [
        sp.coo_array,
        sp.csc_array,
        sp.bsr_array,
        sp.dia_array,
        sp.lil_array,
        sp.dok_array,
        sp.coo_matrix,
        sp.dok_matrix,
    ],
)
def test_other_containers_fit_as_the_csr_matrix(container):
    """Guard (passes on the base code too): COO, CSC, BSR, DIA, LIL and DOK arrays and
    matrices of the counts fit bit for bit as their csr_matrix (batch VB and classic)."""
    counts = _counts()
    given = container(counts)
    for fit in (FITS["batch"], FITS["classic-mu"]):
        np.testing.assert_array_equal(_quiet(fit, given), _quiet(fit, sp.csr_matrix(counts)))


def _adata(X) -> ad.AnnData:
    names = dict(
        obs=pd.DataFrame(index=[f"c{i}" for i in range(N_CELLS)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)]),
    )
    return ad.AnnData(X=X, **names)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_tl_nmf_and_project_of_a_csr_array_x(dtype):
    """Guard (passes on the base code too): `tl.nmf` of an AnnData whose X is a
    non-canonical csr_array (int64 indices) stores what it stores for the csr_matrix, and
    `tl.project` of such cells onto a reference gives the same factors."""
    array, matrix = (
        _adata(_non_canonical(sp.csr_array, dtype, np.int64)),
        _adata(_non_canonical(sp.csr_matrix, dtype)),
    )
    for adata in (array, matrix):
        _quiet(tl.nmf, adata, n_components=3, random_state=0, max_iter=10)
    np.testing.assert_array_equal(array.obsm["X_nmf"], matrix.obsm["X_nmf"])
    np.testing.assert_array_equal(array.varm["NMF"], matrix.varm["NMF"])
    np.testing.assert_array_equal(array.var["nmf_total_counts"].to_numpy(), _counts().sum(axis=0))
    new_array = _adata(_non_canonical(sp.csr_array, dtype, np.int64))
    new_matrix = _adata(_non_canonical(sp.csr_matrix, dtype))
    _quiet(tl.project, new_array, matrix)
    _quiet(tl.project, new_matrix, matrix)
    np.testing.assert_array_equal(new_array.obsm["X_nmf"], new_matrix.obsm["X_nmf"])


def test_streamed_h5ad_of_a_non_canonical_csr_array(tmp_path):
    """Guard (passes on the base code too): an `.h5ad` written from a non-canonical uint8
    csr_array with int64 indices, streamed by SVI from its path, fits bit for bit as the
    csr_matrix in memory."""
    path = tmp_path / "counts.h5ad"
    _adata(_non_canonical(sp.csr_array, np.uint8, np.int64)).write_h5ad(path)
    in_memory = _non_canonical(sp.csr_matrix, np.uint8)
    fit = FITS["svi-cells"]
    np.testing.assert_array_equal(_quiet(fit, str(path)), _quiet(fit, in_memory))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, bool])
def test_vbntf_of_an_n_d_coo_array(dtype):
    """Guard (passes on the base code too): VBNTF of a 3-D scipy coo_array of narrow values
    with repeated coordinates and stored zeros fits as its coordinates and float64 values."""
    rows, cols, values = _entries()
    values = (values > 0) if dtype is bool else values.astype(dtype)
    third = (rows + cols) % 3
    shape = (N_CELLS, N_GENES, 3)
    tensor = sp.coo_array((values, (rows, cols, third)), shape=shape)
    coords = np.stack([rows, cols, third], axis=1)
    got = _quiet(VBNTF(3, random_state=0, max_iter=10).fit, tensor)
    want = _quiet(
        VBNTF(3, random_state=0, max_iter=10).fit,
        coords,
        values=values.astype(np.float64),
        shape=shape,
    )
    np.testing.assert_array_equal(got.elbo_trace_, want.elbo_trace_)
