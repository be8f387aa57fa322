"""40th pass, alignment: the same cells or genes in another order, or swapped one for one.

``tl.nmf(warm_start=True)`` told other cells only by their number (the record's
``n_cells``): an AnnData holding as many cells but not the same ones (``adata[[0, 0, 2,
...]]``, cell 0 repeated in place of cell 59; an ``anndata.concat`` of 55 of the fit's
cells with 5 of them again) joined its ELBO, over other counts, to the stored trace
(-3,439 to -3,434 nats on 60 x 40 Poisson counts), and so did a gene repeated in place
of another (-3,439 to -3,415). The record now keeps a digest of the names of the cells and
of the genes fitted that ignores their order: the same ones in another order continue the
fit (equal, to rounding, to the permuted warm start of the original), others warn and
start the trace anew.

``VBNMF.fit(X, init=fitted)`` matched X's genes to init's by name but its cells by
position: a DataFrame of init's cells in another order started each cell from another
cell's parameters (the components 15% off the warm start in order). It is refused now.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from stored_fit import (
    FIT,
    assert_fresh_trace,
    counts,
    fitted_adata,
    warm_start_warnings,
)

import vbsnmf
from vbsnmf import tl


def _one_for_one(n: int) -> np.ndarray:
    """Positions 0..n-1 with the first repeated in place of the last."""
    index = np.arange(n)
    index[-1] = 0
    return index


def test_a_cell_repeated_in_place_of_another_warns_and_starts_the_trace_anew():
    full = fitted_adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata: names not unique
        swapped = full[_one_for_one(60)].copy()
        before = swapped.copy()
    (message,) = warm_start_warnings(swapped, containing="warm_start")
    assert "60 cells, as many as the stored fit 'nmf' fitted, but not the same" in message
    assert "obs_names" in message and "var_names" not in message
    assert_fresh_trace(swapped, before)


def test_a_gene_repeated_in_place_of_another_warns_and_starts_the_trace_anew():
    full = fitted_adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata's and nmf's repeated names
        swapped = full[:, _one_for_one(40)].copy()
        before = swapped.copy()
        messages = warm_start_warnings(swapped, containing="warm_start")
    (message,) = [text for text in messages if "as many as" in text]
    assert "40 genes, as many as the stored fit 'nmf' fitted" in message
    assert "var_names" in message and "obs_names" not in message
    assert_fresh_trace(swapped, before)


def test_a_concat_of_the_fits_cells_with_as_many_of_them_again_warns():
    full = fitted_adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata: names not unique
        joined = ad.concat([full[:55], full[:5]], uns_merge="first", merge="same")
        joined.obs_names_make_unique()
    assert joined.n_obs == full.uns["nmf"]["n_cells"]
    before = joined.copy()
    (message,) = warm_start_warnings(joined, containing="warm_start")
    assert "60 cells, as many as" in message and "obs_names" in message
    assert_fresh_trace(joined, before)


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
@pytest.mark.parametrize("axis", ["cells", "genes", "both"])
def test_the_same_cells_and_genes_in_another_order_continue_as_the_permuted_warm_start(prior, axis):
    """Guard (passes on both): a permuted AnnData's warm start is quiet, extends the trace
    and equals the original's warm start permuted, to rounding."""
    full = fitted_adata(prior=prior)
    rng = np.random.default_rng(1)
    cells = rng.permutation(60) if axis != "genes" else slice(None)
    genes = rng.permutation(40) if axis != "cells" else slice(None)
    permuted = full[cells, genes].copy()
    reference = full.copy()
    assert not warm_start_warnings(reference, containing="warm_start")
    assert not warm_start_warnings(permuted, containing="warm_start")
    np.testing.assert_allclose(
        permuted.uns["nmf"]["elbo_trace"], reference.uns["nmf"]["elbo_trace"], rtol=1e-12
    )
    assert permuted.uns["nmf"]["n_iter"] == reference.uns["nmf"]["n_iter"] == 13
    expected = reference[cells, genes]
    np.testing.assert_allclose(permuted.obsm["X_nmf"], expected.obsm["X_nmf"], rtol=1e-10)
    np.testing.assert_allclose(permuted.varm["NMF"], expected.varm["NMF"], rtol=1e-10)


def test_the_record_keeps_order_free_digests_of_the_names_fitted_through_h5ad(tmp_path):
    full = fitted_adata()
    record = full.uns["nmf"]
    other = ad.AnnData(sp.csr_matrix(counts()[::-1, ::-1]))
    other.obs_names, other.var_names = full.obs_names[::-1], full.var_names[::-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(other, 3, random_state=0, max_iter=2, **FIT)
    for entry in ("cells_digest", "genes_digest"):
        assert isinstance(record[entry], str) and len(record[entry]) == 16
        assert other.uns["nmf"][entry] == record[entry]  # the same names reversed
    assert record["cells_digest"] != record["genes_digest"]
    full.write_h5ad(tmp_path / "fit.h5ad")
    read = ad.read_h5ad(tmp_path / "fit.h5ad")
    assert read.uns["nmf"]["cells_digest"] == record["cells_digest"]
    assert not warm_start_warnings(
        read[::-1].copy(), containing="warm_start"
    )  # read back, the same cells still continue


def test_a_masked_fit_records_the_genes_it_fitted_and_continues_on_them_reordered():
    adata = ad.AnnData(sp.csr_matrix(counts()))
    adata.obs_names = [f"c{i}" for i in range(60)]
    adata.var_names = [f"g{i}" for i in range(40)]
    adata.var["fit"] = np.arange(40) % 4 != 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, 3, random_state=0, max_iter=4, mask_var="fit", **FIT)
    fitted = vbsnmf._base.names_digests(adata.var_names[adata.var["fit"].to_numpy()])[0]
    assert adata.uns["nmf"]["genes_digest"] == fitted
    assert not warm_start_warnings(adata[:, ::-1].copy(), mask_var="fit", containing="warm_start")


@pytest.mark.parametrize("damaged", [123, "not hex digits!!", "0123", ["0" * 16]])
def test_a_damaged_digest_is_refused_naming_it(damaged):
    full = fitted_adata()
    full.uns["nmf"]["cells_digest"] = damaged
    with pytest.raises(ValueError, match=r"adata\.uns\['nmf'\]\['cells_digest'\] is damaged"):
        warm_start_warnings(full, containing="warm_start")


def test_a_record_written_before_the_digests_were_kept_joins_as_before():
    """Without the digests (a record written before they were kept) a swap is not told and
    the trace joins, as before; the new fit's record keeps them (the code before failed
    only that last line)."""
    full = fitted_adata()
    stored = np.asarray(full.uns["nmf"]["elbo_trace"])
    # nor the sketch of the counts, kept since (a repeated cell's counts change it)
    for entry in ("cells_digest", "genes_digest", "counts_sketch"):
        full.uns["nmf"].pop(entry, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        swapped = full[_one_for_one(60)].copy()
    assert not warm_start_warnings(swapped, containing="warm_start")
    np.testing.assert_array_equal(swapped.uns["nmf"]["elbo_trace"][: stored.size], stored)
    assert swapped.uns["nmf"]["n_iter"] == 13
    assert len(swapped.uns["nmf"]["cells_digest"]) == 16  # the new fit's record keeps it


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        counts(),
        index=[f"c{i}" for i in range(60)],
        columns=[f"g{i}" for i in range(40)],
    )


def _model() -> vbsnmf.VBNMF:
    return vbsnmf.VBNMF(3, max_iter=3, **FIT)


def test_an_estimator_warm_start_of_its_cells_in_another_order_is_refused_and_advice_works():
    X = _frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        fitted = vbsnmf.VBNMF(3, max_iter=8, random_state=0, **FIT).fit(X)
        in_order = _model().fit(X, init=fitted)
        shuffled = X.iloc[np.random.default_rng(2).permutation(60)]
        with pytest.raises(ValueError, match=r"init was fitted on X's cells in another order"):
            _model().fit(shuffled, init=fitted)
        with pytest.raises(ValueError, match=r"X\.loc\[fitted\.index\]"):
            _model().fit_transform(shuffled, init=fitted)
        followed = _model().fit(shuffled.loc[X.index], init=fitted)
    np.testing.assert_array_equal(followed.components_, in_order.components_)
    np.testing.assert_array_equal(followed.elbo_trace_, in_order.elbo_trace_)


def test_an_estimator_warm_start_of_other_cells_or_without_names_is_not_refused():
    """Guard (passes on both): other cells' names, an array, and a fit of an array are not
    told (nothing says whose parameters those are); the genes' check is unchanged."""
    X = _frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        fitted = vbsnmf.VBNMF(3, max_iter=8, random_state=0, **FIT).fit(X)
        renamed = X.set_axis([f"d{i}" for i in range(60)], axis=0)
        _model().fit(renamed.iloc[::-1], init=fitted)
        with pytest.warns(UserWarning, match="does not have valid feature names"):
            _model().fit(X.to_numpy()[::-1], init=fitted)
        of_array = vbsnmf.VBNMF(3, max_iter=8, random_state=0, **FIT).fit(X.to_numpy())
        _model().fit(X.iloc[::-1], init=of_array)
        with pytest.raises(ValueError, match="other feature names"):
            _model().fit(X.iloc[:, ::-1], init=fitted)


def test_a_name_with_a_lone_surrogate_is_digested_and_the_others_hash_as_before():
    """pandas' hash of a name with a lone surrogate (decoded with surrogateescape) raised
    UnicodeEncodeError, which failed every `tl.nmf` of such names (the 32nd pass's tables
    test caught it in CI); its surrogatepass bytes are hashed instead, and every other name
    keeps the hash it has without one."""
    from vbsnmf._base import name_hashes

    plain = ["c0", "c1", "gène"]
    np.testing.assert_array_equal(name_hashes([*plain, "x\udc80y"])[:3], name_hashes(plain))
    adata = ad.AnnData(sp.csr_matrix(counts(shape=(20, 10))))
    adata.obs_names = [f"c{i}" for i in range(19)] + ["bad\udc80name"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, 2, random_state=0, max_iter=3, **FIT)
    digest = adata.uns["nmf"]["cells_digest"]
    assert len(digest) == 16 and digest != vbsnmf._base.names_digests(adata.obs_names[:19])[0]
