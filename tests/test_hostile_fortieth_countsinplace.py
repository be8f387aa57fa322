"""40th pass, a warm start over other counts in the fit's own cells and genes.

``tl.nmf(adata, K, warm_start=True)`` told other cells and genes from the fit's own by their
number and names (``n_cells``, ``cells_digest``, ``genes_digest``), but not other counts
under the same names: ``adata.X`` replaced after the fit by another layer of the same shape,
a count edited, or the rows of X reordered without ``obs_names`` joined the new fit's ELBO,
over other counts, onto the stored trace without a word. The record now keeps
``counts_sketch`` (each cell's and gene's total count weighed by its name's hash and summed):
a warm start whose counts' sketch differs warns and starts the trace anew; the same counts in
another order of cells and genes, or in another sparse format, continue it.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from stored_fit import FIT, assert_fresh_trace, counts, warm_start_warnings

import vbsnmf
from vbsnmf import tl

_OTHER_COUNTS = "holds other counts than the stored fit 'nmf' fitted"


def _fitted(**options) -> ad.AnnData:
    adata = ad.AnnData(sp.csr_matrix(counts()))
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    adata.var_names = [f"g{i}" for i in range(adata.n_vars)]
    adata.layers["counts"] = adata.X.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, 3, random_state=0, max_iter=8, **FIT, **options)
    return adata


def _with_x(adata, matrix) -> ad.AnnData:
    """``adata`` with its counts held otherwise (``matrix``): the same numbers."""
    adata.X = matrix
    return adata


def _reordered_rows(adata) -> None:
    adata.X = adata.X[np.roll(np.arange(adata.n_obs), 1)]


def _other_layer(adata) -> None:
    adata.X = sp.csr_matrix(counts(seed=1))


def _one_count_more(adata) -> None:
    values = adata.X.toarray()
    values[7, 3] += 1
    adata.X = sp.csr_matrix(values)


def _one_count_moved(adata) -> None:
    # every gene's total kept: only two cells' totals tell it
    values = adata.X.toarray()
    row = int(np.flatnonzero(values[:, 5] > 0)[0])
    values[row, 5] -= 1
    values[row + 1, 5] += 1
    adata.X = sp.csr_matrix(values)


@pytest.mark.parametrize(
    "change", [_reordered_rows, _other_layer, _one_count_more, _one_count_moved]
)
def test_other_counts_under_the_same_names_warn_and_start_the_trace_anew(change):
    adata = _fitted()
    change(adata)
    before = adata.copy()
    shown = warm_start_warnings(adata)
    assert len(shown) == 1, shown
    assert f"adata.X {_OTHER_COUNTS}" in shown[0]
    assert "['elbo_trace'], 'elbo_iter' and 'n_iter' start anew" in shown[0]
    assert_fresh_trace(adata, before)


@pytest.mark.parametrize(
    "same",
    [
        pytest.param(lambda a: a, id="as-fitted"),
        pytest.param(lambda a: a[::-1, ::-1].copy(), id="cells-and-genes-reversed"),
        pytest.param(
            lambda a: a[np.random.default_rng(3).permutation(a.n_obs)].copy(), id="cells-shuffled"
        ),
        pytest.param(lambda a: _with_x(a, sp.csc_matrix(a.X)), id="csc"),
        pytest.param(
            lambda a: _with_x(a, a.X.toarray().astype(np.float32)),
            id="dense-float32",
        ),
    ],
)
def test_the_same_counts_continue_the_trace(same):
    adata = same(_fitted())
    stored = np.asarray(adata.uns["nmf"]["elbo_trace"]).copy()
    assert warm_start_warnings(adata) == []
    record = adata.uns["nmf"]
    assert record["n_iter"] == 13
    np.testing.assert_array_equal(record["elbo_trace"][: len(stored)], stored)
    assert len(record["elbo_trace"]) == len(stored) + 5


def test_the_sketch_survives_h5ad_and_ignores_order(tmp_path):
    adata = _fitted()
    sketch = np.asarray(adata.uns["nmf"]["counts_sketch"])
    assert sketch.shape == (2,) and np.isfinite(sketch).all()
    # each weighs a total count by a number in [1, 2): between the total and twice it
    total = adata.X.sum()
    assert (total <= sketch).all() and (sketch < 2 * total).all()
    adata.write_h5ad(tmp_path / "fit.h5ad")
    read = ad.read_h5ad(tmp_path / "fit.h5ad")
    np.testing.assert_array_equal(read.uns["nmf"]["counts_sketch"], sketch)
    assert warm_start_warnings(read) == []
    # the same counts in another order of cells and genes record the same sketch, exactly
    shuffled = _fitted()[np.random.default_rng(1).permutation(60)].copy()[:, ::-1].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(shuffled, 3, random_state=0, max_iter=2, **FIT)
    np.testing.assert_array_equal(shuffled.uns["nmf"]["counts_sketch"], sketch)


def test_a_record_written_before_the_sketch_was_kept_extends_its_trace():
    adata = _fitted()
    del adata.uns["nmf"]["counts_sketch"]
    _other_layer(adata)
    assert warm_start_warnings(adata) == []
    assert adata.uns["nmf"]["n_iter"] == 13
    assert "counts_sketch" in adata.uns["nmf"]  # the continued fit's record keeps one


@pytest.mark.parametrize("damaged", ["abc", [1.0], [np.nan, 1.0]])
def test_a_damaged_sketch_is_named(damaged):
    adata = _fitted()
    adata.uns["nmf"]["counts_sketch"] = damaged
    with pytest.raises(ValueError, match=r"\['counts_sketch'\].*not two finite numbers"):
        warm_start_warnings(adata)


def test_an_edited_layer_is_named_in_the_warning():
    adata = _fitted(layer="counts")
    edited = adata.layers["counts"].toarray()
    edited[0, 0] += 2
    adata.layers["counts"] = sp.csr_matrix(edited)
    adata.X = sp.csr_matrix(counts(seed=2))  # X is not the counts fitted: not read
    shown = warm_start_warnings(adata, layer="counts")
    assert len(shown) == 1 and f"adata.layers['counts'] {_OTHER_COUNTS}" in shown[0], shown
    assert adata.uns["nmf"]["n_iter"] == 5


def test_a_masked_fit_weighs_only_the_fitted_genes():
    mask = np.arange(40) < 30
    adata = _fitted(mask_var=mask)
    values = adata.X.toarray()
    values[:, 35] += 3  # a gene the fit left out: its counts are none of the fit's
    adata.X = sp.csr_matrix(values)
    assert warm_start_warnings(adata, mask_var=mask) == []
    values[4, 2] += 1  # a fitted gene's
    adata.X = sp.csr_matrix(values)
    shown = warm_start_warnings(adata, mask_var=mask)
    assert len(shown) == 1 and "adata.X (genes in mask_var) holds other counts" in shown[0]


def test_renamed_cells_are_still_told_by_their_names():
    adata = _fitted()
    adata.obs_names = [f"x{i}" for i in range(adata.n_obs)]
    shown = warm_start_warnings(adata)
    assert len(shown) == 1 and "swapped, repeated or renamed" in shown[0], shown
    assert _OTHER_COUNTS not in shown[0]


def test_a_dask_fit_sketches_as_in_memory_and_tells_reordered_rows(client):
    da = pytest.importorskip("dask.array")
    adata = _fitted()
    in_memory = np.asarray(adata.uns["nmf"]["counts_sketch"]).copy()
    chunked = adata.copy()
    chunked.X = da.from_array(adata.X.toarray(), chunks=(25, 40))
    assert warm_start_warnings(chunked) == []
    np.testing.assert_array_equal(chunked.uns["nmf"]["counts_sketch"], in_memory)
    reordered = adata.copy()
    reordered.X = da.from_array(adata.X.toarray()[::-1], chunks=(25, 40))
    shown = warm_start_warnings(reordered)
    assert len(shown) == 1 and f"adata.X {_OTHER_COUNTS}" in shown[0], shown
    assert reordered.uns["nmf"]["n_iter"] == 5


def test_a_streamed_fit_sketches_its_counts_as_in_memory(tmp_path):
    """A backed AnnData's X, fitted by SVI a block of cells at a time, sums each cell's
    total as it reads it: the same sketch as the counts in memory."""
    adata = _fitted()
    del adata.layers["counts"]
    adata.write_h5ad(tmp_path / "counts.h5ad")
    backed = ad.read_h5ad(tmp_path / "counts.h5ad", backed="r+")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
            tl.nmf(backed, 3, solver="svi", random_state=0, max_iter=2, n_threads=1)
        np.testing.assert_array_equal(
            backed.uns["nmf"]["counts_sketch"], adata.uns["nmf"]["counts_sketch"]
        )
    finally:
        backed.file.close()
