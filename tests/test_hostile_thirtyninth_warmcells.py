"""39th pass, warm start after cells were dropped or added.

``tl.nmf(adata[:30].copy(), K, warm_start=True)`` joined the new fit's ELBO, over fewer
cells' counts, onto the stored trace of all cells: ``elbo_trace``, ``elbo_iter``, ``n_iter``
and ``pl.elbo`` showed one fit whose ELBO jumped at the join (-3,439 to -1,738 nats on 60 x
40 Poisson counts cut to 30 cells; an ``anndata.concat`` of the fit's cells with themselves,
-3,439 to -6,724). The record keeps the cells fitted (``n_cells``) so that a warm start of
other cells warns and starts the trace anew, as for genes (39th pass, older).
"""

from __future__ import annotations

import json
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from interrupted import Stop, stop_at
from stored_fit import (
    FIT,
    assert_fresh_trace,
    counts,
    fit_from_stored,
    fitted_adata,
    warm_start_warnings,
)

import vbsnmf
from vbsnmf import cli, tl


def test_a_warm_start_of_fewer_cells_starts_a_new_trace_and_says_so():
    full = fitted_adata()
    subset = full[:30].copy()
    before = subset.copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(subset, 3, warm_start=True, max_iter=5, **FIT)
    told = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(told) == 1, [str(w.message) for w in told]
    message = str(told[0].message)
    assert message.startswith(
        "warm_start: adata holds 30 of the 60 cells the stored fit 'nmf' fitted "
        "(cells were dropped since): "
    ), message
    assert "'elbo_iter' and 'n_iter' start anew" in message
    assert told[0].filename == __file__  # the user's line, not the library's
    assert_fresh_trace(subset, before)
    assert subset.uns["nmf"]["n_cells"] == 30
    # the trace is one fit's: an ascent from its start, no jump (the joined one fell by
    # half at the join)
    trace = np.asarray(subset.uns["nmf"]["elbo_trace"])
    assert (np.diff(trace) > 0).all()
    assert trace.size == 5


def test_a_warm_start_of_fewer_cells_and_genes_names_both_in_one_warning():
    full = fitted_adata()
    subset = full[:30, :25].copy()
    before = subset.copy()
    said = warm_start_warnings(subset)
    assert len(said) == 1, said
    assert said[0].startswith(
        "warm_start: adata holds 30 of the 60 cells and 25 of the 40 genes the stored fit "
        "'nmf' fitted (cells and genes were dropped since): "
    ), said
    model = fit_from_stored(before)
    np.testing.assert_allclose(subset.uns["nmf"]["elbo_trace"], model.elbo_trace_, rtol=1e-10)
    assert subset.uns["nmf"]["n_iter"] == 5
    assert (subset.uns["nmf"]["n_cells"], subset.uns["nmf"]["n_genes"]) == (30, 25)


def test_a_warm_start_of_more_cells_than_fitted_starts_anew():
    """``anndata.concat`` of the fit's cells with 20 of them again (its record and gene side
    kept): the stored cell parameters cover every cell, and the trace was joined."""
    full = fitted_adata()
    joined = ad.concat(
        [full, full[:20]], uns_merge="first", merge="first", index_unique="-", keys=["a", "b"]
    )
    before = joined.copy()
    said = warm_start_warnings(joined)
    assert len(said) == 1, said
    assert said[0].startswith(
        "warm_start: adata holds 80 cells, 20 more than the 60 the stored fit 'nmf' fitted "
        "(cells were added since"
    ), said
    assert_fresh_trace(joined, before)
    assert joined.uns["nmf"]["n_cells"] == 80
    # with genes dropped too: one warning naming both
    fewer_genes = ad.concat([full, full[:20]], uns_merge="first", merge="first", index_unique="-")
    said = warm_start_warnings(fewer_genes[:, :30].copy())
    assert len(said) == 1, said
    assert said[0].startswith(
        "warm_start: adata holds 80 cells, 20 more than the 60 the stored fit 'nmf' fitted, "
        "and 30 of its 40 genes (cells were added and genes dropped since): "
    ), said


def test_the_same_cells_continue_the_trace_without_a_word():
    """Guard: the fit's own cells (also read back from .h5ad, also a fit of the subset
    continued) extend the trace, counting passes on."""
    full = fitted_adata()
    stored = np.asarray(full.uns["nmf"]["elbo_trace"])
    assert not warm_start_warnings(full)
    np.testing.assert_array_equal(full.uns["nmf"]["elbo_trace"][: stored.size], stored)
    assert full.uns["nmf"]["n_iter"] == 13
    assert np.asarray(full.uns["nmf"]["elbo_trace"]).size == 13
    subset = full[:30].copy()
    warm_start_warnings(subset)
    first = np.asarray(subset.uns["nmf"]["elbo_trace"])
    assert not warm_start_warnings(subset)
    np.testing.assert_array_equal(subset.uns["nmf"]["elbo_trace"][: first.size], first)
    assert subset.uns["nmf"]["n_iter"] == 10
    np.testing.assert_array_equal(subset.uns["nmf"]["elbo_iter"], np.arange(1, 11))


def test_a_record_written_before_n_cells_was_kept_joins_as_before():
    full = fitted_adata()
    stored = np.asarray(full.uns["nmf"]["elbo_trace"])
    del full.uns["nmf"]["n_cells"]
    subset = full[:30].copy()
    assert not warm_start_warnings(subset)
    np.testing.assert_array_equal(subset.uns["nmf"]["elbo_trace"][: stored.size], stored)
    assert subset.uns["nmf"]["n_iter"] == 13
    assert subset.uns["nmf"]["n_cells"] == 30  # the new fit's record keeps it


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="batch"),
        pytest.param({"solver": "svi", "batch_size": 20, "n_epochs": 2}, id="svi"),
        pytest.param({"solver": "mu", "max_iter": 20}, id="mu"),
        pytest.param({"mask_var": "kept"}, id="mask_var"),
    ],
)
def test_every_fit_records_the_cells_it_fitted(options, tmp_path):
    adata = ad.AnnData(sp.csr_matrix(counts(shape=(45, 40))))
    adata.var["kept"] = np.arange(40) < 30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 3, random_state=0, **{"max_iter": 3, **options})
    assert adata.uns["nmf"]["n_cells"] == 45 == adata.obsm["X_nmf"].shape[0]
    assert adata.uns["nmf"]["n_genes"] == (30 if "mask_var" in options else 40)
    path = tmp_path / "fit.h5ad"
    adata.write_h5ad(path)
    assert ad.read_h5ad(path).uns["nmf"]["n_cells"] == 45


@pytest.mark.parametrize("damaged", ["sixty", 0, 2.5, True])
def test_a_damaged_n_cells_is_refused_naming_it(damaged):
    full = fitted_adata()
    full.uns["nmf"]["n_cells"] = damaged
    subset = full[:30].copy()
    with pytest.raises(ValueError, match=r"adata\.uns\['nmf'\]\['n_cells'\] is damaged"):
        tl.nmf(subset, 3, warm_start=True, max_iter=2, **FIT)
    with pytest.raises(ValueError, match=r"adata\.uns\['nmf'\]\['n_cells'\] is damaged"):
        tl.top_genes(full, 3)


def test_an_interrupted_warm_start_of_fewer_cells_resumes_as_the_uninterrupted_one(tmp_path):
    """The fresh trace does not stop ``resume=True`` from continuing the checkpoint of the
    warm-started fit; the stored fit's own checkpoint (of all cells) is still refused."""
    full = fitted_adata(checkpoint=tmp_path / "full.npz")
    path = tmp_path / "warm.npz"
    interrupted, uninterrupted = full[:30].copy(), full[:30].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the fresh trace's, pinned above
        with pytest.raises(Stop):
            tl.nmf(
                interrupted, 3, warm_start=True, max_iter=5, checkpoint=path,
                callback=stop_at(3), **FIT,
            )  # fmt: skip
        tl.nmf(interrupted, 3, warm_start=True, max_iter=5, checkpoint=path, resume=True, **FIT)
        tl.nmf(uninterrupted, 3, warm_start=True, max_iter=5, **FIT)
        for key in ("n_iter", "elbo_iter", "elbo_trace"):
            np.testing.assert_array_equal(
                interrupted.uns["nmf"][key], uninterrupted.uns["nmf"][key]
            )
        np.testing.assert_array_equal(interrupted.obsm["X_nmf"], uninterrupted.obsm["X_nmf"])
        assert interrupted.uns["nmf"]["n_iter"] == 5
        with pytest.raises(vbsnmf.CheckpointMismatchError, match="different fit"):
            tl.nmf(
                full[:30].copy(), 3, warm_start=True, max_iter=5,
                checkpoint=tmp_path / "full.npz", resume=True, **FIT,
            )  # fmt: skip


def test_the_command_lines_params_json_counts_the_cells_the_record_does(tmp_path, capsys):
    ad.AnnData(sp.csr_matrix(counts(shape=(35, 40)))).write_h5ad(tmp_path / "in.h5ad")
    outdir = tmp_path / "out"
    code = cli.main(["fit", str(tmp_path / "in.h5ad"), "-k", "2", "--max-iter", "2", "-o",
                     str(outdir), "--quiet"])  # fmt: skip
    capsys.readouterr()
    assert code == 0
    summary = json.loads((outdir / "params.json").read_text())
    record = ad.read_h5ad(outdir / "result.h5ad").uns["nmf"]
    assert summary["n_cells"] == record["n_cells"] == 35
    assert summary["n_genes"] == record["n_genes"] == 40
