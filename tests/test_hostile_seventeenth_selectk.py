"""Seventeenth hostile pass over the K selection and what it reads: count splits of
duplicate or unsorted sparse entries and of boolean counts, float32 counts a float64 fit
takes, counts beyond a float32 fit in a layer, the hint of where the raw counts are (a
dask layer, a backed ``.raw``, a layer named by a numpy string) and ``top_genes``'
``min_counts`` beyond floats."""

from __future__ import annotations

import warnings

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from anndata._core.sparse_dataset import BaseCompressedSparseDataset
from scipy.special import gammaln

import vbsnmf
from vbsnmf import tl

FIT = {"max_iter": 5, "n_threads": 1}


def _poisson(n_cells=30, n_genes=20, mean=1.0, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(mean, (n_cells, n_genes))


def _quiet(function, *args, **kwargs):
    """Fits of a few passes, where not converging is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return function(*args, **kwargs)


def _heldout(counts) -> np.ndarray:
    return _quiet(tl.select_k, ad.AnnData(counts), [1, 2], **FIT)["heldout_ll_per_count"].to_numpy()


# -- 1: a sparse matrix with duplicate entries or unsorted indices ---------------------------
def _duplicated(counts: sp.csr_matrix) -> sp.csr_matrix:
    """The same counts with every entry stored as two (a valid, non-canonical CSR)."""
    data = np.repeat(counts.data, 2)
    first = data[::2] // 2
    data[::2], data[1::2] = first, data[1::2] - first
    return sp.csr_matrix((data, np.repeat(counts.indices, 2), counts.indptr * 2), counts.shape)


def _reversed_rows(counts: sp.csr_matrix) -> sp.csr_matrix:
    """The same counts with each row's entries stored in reverse order."""
    unsorted = counts.copy()
    for start, stop in zip(counts.indptr[:-1], counts.indptr[1:]):
        unsorted.indices[start:stop] = counts.indices[start:stop][::-1]
        unsorted.data[start:stop] = counts.data[start:stop][::-1]
    unsorted.has_sorted_indices = False
    return unsorted


@pytest.mark.parametrize("stored", [_duplicated, _reversed_rows])
def test_count_split_depends_on_the_counts_not_their_storage(stored):
    """Duplicate entries were split each on its own, and left duplicated in both halves;
    a row's entries were split in storage order: other halves of the same counts."""
    counts = sp.csr_matrix(_poisson(mean=3.0))
    same = stored(counts)
    assert abs(same - counts).sum() == 0 and not same.has_canonical_format  # the premise
    train, test = tl.count_split(same, random_state=3)
    expected_train, expected_test = tl.count_split(counts.toarray(), random_state=3)
    for half, expected in ((train, expected_train), (test, expected_test)):
        assert half.has_canonical_format
        np.testing.assert_array_equal(half.toarray(), expected)
    untouched = stored(counts)  # the input is left as it was stored
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(same, name), getattr(untouched, name))


def test_select_k_scores_duplicate_entries_as_one_count():
    """The test half kept the duplicates, and each was scored apart: lgamma(a + 1) +
    lgamma(b + 1) for lgamma(a + b + 1), a wrong held-out log-likelihood."""
    counts = sp.csr_matrix(_poisson(mean=3.0))
    duplicated = _duplicated(counts)
    # the premise: scored entry by entry, the duplicates' log-factorials differ
    assert gammaln(duplicated.data + 1).sum() != pytest.approx(gammaln(counts.data + 1).sum())
    np.testing.assert_allclose(_heldout(duplicated), _heldout(counts), rtol=1e-12)


# -- 2: boolean counts -----------------------------------------------------------------------
def test_count_split_and_select_k_take_boolean_counts():
    """tl.nmf fits booleans as 0/1; select_k and count_split refused them as not numeric."""
    present = _poisson() > 0
    train, test = tl.count_split(present, random_state=0)
    assert train.dtype == bool and test.dtype == bool
    assert not (train & test).any() and np.array_equal(train | test, present)
    expected, _ = tl.count_split(present.astype(np.int64), random_state=0)
    np.testing.assert_array_equal(train, expected.astype(bool))
    sparse_train, sparse_test = tl.count_split(sp.csr_array(present), random_state=0)
    assert isinstance(sparse_train, sp.csr_array) and sparse_train.dtype == bool
    np.testing.assert_array_equal(sparse_train.toarray(), train)
    np.testing.assert_array_equal(sparse_test.toarray(), test)
    np.testing.assert_allclose(_heldout(present), _heldout(present.astype(np.int64)))


# -- 3: float32 counts above 2**24 -------------------------------------------------------------
def test_select_k_takes_float32_counts_a_float64_fit_takes():
    """2**25 is a float32 and tl.nmf fits it; select_k refused it with count_split's advice
    to pass counts.astype('int64'), which it does not take."""
    counts = _poisson()
    counts[0, 0] = 2**25
    np.testing.assert_allclose(_heldout(counts.astype(np.float32)), _heldout(counts))


# -- 4: counts beyond a float32 fit, in a layer ----------------------------------------------
@pytest.mark.parametrize("tool, k", [(tl.select_k, [1, 2]), (tl.nmf, 2)])
def test_counts_beyond_a_float32_fit_are_named_where_they_are(tool, k):
    """select_k checked the counts for a float64 fit, then failed in its first inner fit
    naming "adata.X"; both tools advised layer='counts', the layer passed."""
    counts = _poisson()
    counts[0, 0] = 2**25
    adata = ad.AnnData(np.log1p(counts.astype(np.float64)))
    adata.layers["counts"] = counts
    with pytest.raises(ValueError) as raised:
        tool(adata, k, layer="counts", dtype=np.float32, **FIT)
    message = str(raised.value)
    assert message.startswith("adata.layers['counts'] holds 1 count above 16,777,216")
    assert message.endswith(
        "fit with dtype=np.float64, which resolves counts up to 10,000,000,000,000"
    )
    assert "nmf_k_selection" not in adata.uns and "nmf" not in adata.uns


# -- 5: where the raw counts are: a dask layer, a backed .raw, a numpy string ---------------
@pytest.mark.parametrize("sparse_chunks", [True, False])
def test_a_dask_layer_of_counts_is_named_as_where_they_are(sparse_chunks):
    """np.asarray made a 0-d object array of a dask array of sparse chunks (never named),
    and computed a dense one whole."""
    counts = _poisson()
    adata = ad.AnnData(np.log1p(counts.astype(np.float64)))
    layer = sp.csr_matrix(counts) if sparse_chunks else counts
    adata.layers["counts"] = da.from_array(layer, chunks=(10, 10))
    adata.layers["scaled"] = da.from_array(counts / 2.0 + 0.25, chunks=(10, 10))
    with pytest.raises(ValueError, match=r"appear to be in layer='counts'; pass that"):
        tl.nmf(adata, 2, **FIT)


def _backed_normalised(path, raw: np.ndarray) -> ad.AnnData:
    """A backed AnnData of log-normalised X, with ``raw`` as its .raw."""
    adata = ad.AnnData(sp.csr_matrix(np.log1p(raw)))
    adata.raw = ad.AnnData(sp.csr_matrix(raw))
    adata.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


def test_a_backed_raw_is_read_a_block_at_a_time_for_the_hint(tmp_path, monkeypatch):
    """A streamed fit of normalised X read the whole backed .raw.X into memory only to say
    the counts are there; here reading it whole fails, as for a .raw larger than memory."""

    def too_large(self):
        raise MemoryError("the whole .raw.X does not fit in memory")

    monkeypatch.setattr(BaseCompressedSparseDataset, "to_memory", too_large)
    monkeypatch.setattr("vbsnmf.tl._counts._HINT_BLOCK_VALUES", 7)  # several blocks
    counts = _poisson().astype(np.float64)
    backed = _backed_normalised(tmp_path / "counts.h5ad", counts)
    with pytest.raises(ValueError, match=r"appear to be in use_raw=True; pass that"):
        tl.nmf(backed, 2, solver="svi", n_epochs=1, n_threads=1)
    backed.file.close()
    # one block of non-integers, the last, is enough to leave .raw out
    counts[-1, -1] = 0.5
    backed = _backed_normalised(tmp_path / "not_counts.h5ad", counts)
    with pytest.raises(ValueError) as raised:
        tl.nmf(backed, 2, solver="svi", n_epochs=1, n_threads=1)
    assert "appear to be in use_raw=True" not in str(raised.value)
    backed.file.close()


def test_a_layer_named_by_a_numpy_string_is_named_as_text():
    """np.str_('empty') was named "adata.layers[np.str_('empty')]", and taken for another
    layer than itself: its own zeros were advised as where the counts are."""
    adata = ad.AnnData(np.log1p(_poisson().astype(np.float64)))
    adata.layers["empty"] = np.zeros(adata.shape)
    with pytest.raises(ValueError) as raised:
        tl.nmf(adata, 2, layer=np.array(["empty"])[0], **FIT)
    message = str(raised.value)
    assert message.startswith("adata.layers['empty'] holds no nonzero count"), message
    assert "layer='empty'" not in message


# -- 6: top_genes' min_counts beyond floats -----------------------------------------------------
def test_top_genes_min_counts_beyond_floats_is_named():
    """numpy's "ufunc 'isfinite' not supported for the input types"."""
    adata = ad.AnnData(_poisson())
    _quiet(tl.nmf, adata, 2, **FIT)
    with pytest.raises(ValueError, match="min_counts must be finite, got one beyond floats"):
        tl.top_genes(adata, min_counts=10**400)
    assert len(tl.top_genes(adata, 3, min_counts=10**300)) == 0  # still a number
