"""Twenty-third pass, items earlier notes left: a fit with no active factor says so, an
SVI checkpoint's batch larger than the data is the whole data, and the command line
refuses a var index it could not write beside the fit's column before fitting."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import vbsnmf
from vbsnmf import CheckpointMismatchError

ROOT = Path(__file__).resolve().parents[1]
NO_ACTIVE = "no factor is active"


def _counts(n_cells: int, n_genes: int = 30, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix(rng.poisson(3.0, (n_cells, n_genes)).astype(np.float32))


def _cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "vbsnmf.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def _fit(adata, n_components=3, **params) -> list[str]:
    """``tl.nmf``'s warnings other than the iteration cap's."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vbsnmf.tl.nmf(adata, n_components, random_state=0, max_iter=60, **params)
    return [str(w.message) for w in caught if w.category is not vbsnmf.ConvergenceWarning]


def test_few_cells_no_active_factor_warns():
    """Four cells: the default threshold (five typical cells' fitted counts) was the whole
    fit, which no factor can exceed; since the 40th pass it is a quarter of the cells' worth
    (one median cell's fitted counts), below which factors are inactive, not none without a
    word of why. A min_share above every factor still warns, and `top_genes` lists
    nothing."""
    adata = ad.AnnData(_counts(4))
    messages = _fit(adata)
    info = adata.uns["nmf"]
    share = np.asarray(info["factor_share"])
    # independent: one median cell's fitted counts over all of them (the learned prior's
    # floor is 0)
    fitted = adata.obsm["X_nmf"] @ adata.varm["NMF"].sum(axis=0)
    assert info["min_share"] == pytest.approx(np.median(fitted) / fitted.sum(), rel=1e-9)
    assert np.asarray(info["active"]).tolist() == (share > info["min_share"]).tolist()
    assert np.asarray(info["active"]).any()
    assert not [m for m in messages if NO_ACTIVE in m], messages
    above = ad.AnnData(_counts(4))
    messages = _fit(above, min_share=float(share.max()))
    assert not np.asarray(above.uns["nmf"]["active"]).any()
    warned = [m for m in messages if NO_ACTIVE in m]
    assert len(warned) == 1, messages
    assert "include_inactive=True" in warned[0]
    assert vbsnmf.tl.top_genes(above).empty  # what the warning explains
    assert not vbsnmf.tl.top_genes(above, include_inactive=True).empty


def test_explicit_min_share_above_every_factor_warns():
    adata = ad.AnnData(_counts(60))
    messages = _fit(adata, min_share=0.9)
    assert not np.asarray(adata.uns["nmf"]["active"]).any()
    (warned,) = [m for m in messages if NO_ACTIVE in m]
    assert "min_share = 0.9 " in warned and "pass a smaller min_share" in warned
    assert "default" not in warned


def test_active_factors_no_warning():
    """Guard (passes before the change too): a fit with an active factor stays quiet."""
    adata = ad.AnnData(_counts(60))
    messages = _fit(adata)
    assert np.asarray(adata.uns["nmf"]["active"]).any()
    assert not [m for m in messages if NO_ACTIVE in m]


def test_cli_no_active_factor_names_its_outputs(tmp_path):
    """The command line has no min_share: its warning names top_genes.tsv and the Python
    call on result.h5ad, not a parameter it cannot set."""
    matrix = tmp_path / "x.mtx"
    # 20 cells, each with counts in its own gene, as ten factors of about two cells each:
    # none holds more than five typical cells' counts (of six cells, as before the 40th
    # pass, a quarter of the cells' worth is held)
    scipy.io.mmwrite(matrix, sp.coo_matrix(np.eye(20) * 5), field="integer", symmetry="general")
    out = tmp_path / "out"
    done = _cli(
        "fit", matrix, "--genes-as-rows", "-k", 10, "--solver", "mu", "-o", out, "--max-iter", 60
    )
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if NO_ACTIVE in x]
    assert line.startswith("vbsnmf: warning: ")
    assert "top_genes.tsv lists none" in line and "result.h5ad" in line
    assert "min_share," not in line  # the Python advice, replaced
    assert (out / "top_genes.tsv").read_text().count("\n") == 1  # the header alone


@pytest.mark.parametrize("form", ["cells", "nonzeros"])
def test_oversized_batch_resumes_as_the_whole_data(tmp_path, form):
    """``batch_size`` past the cells (nonzeros) is all of them, the same fit: a checkpoint
    written with 10**6 resumes with the exact size, which it refused as another fit, and
    gives the uninterrupted fit's trace."""
    X = _counts(40, 25, seed=3)
    whole = X.shape[0] if form == "cells" else X.nnz
    params = dict(solver="svi", svi_form=form, random_state=5, n_threads=1, tol=0.0)
    # the cells form's local fits run max_iter passes; the nonzeros form fits the fixed prior
    params.update(dict(max_iter=20) if form == "cells" else dict(prior="gamma"))
    path = tmp_path / "fit.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(3, batch_size=10**6, n_epochs=3, checkpoint=path, **params).fit(X)
        resumed = vbsnmf.VBNMF(
            3, batch_size=whole, n_epochs=6, checkpoint=path, resume=True, **params
        ).fit(X)
        straight = vbsnmf.VBNMF(3, batch_size=whole, n_epochs=6, **params).fit(X)
    np.testing.assert_array_equal(resumed.elbo_trace_, straight.elbo_trace_)


def test_oversized_tensor_batch_resumes_as_the_whole_data(tmp_path):
    """The same for `VBNTF`'s slices form: a batch past the slices of ``svi_mode``."""
    rng = np.random.default_rng(4)
    tensor = rng.poisson(1.0, (12, 8, 5))
    coords, values = np.argwhere(tensor), tensor[tensor > 0].astype(np.float64)
    params = dict(solver="svi", random_state=5, n_threads=1, tol=0.0, max_iter=10)
    path = tmp_path / "fit.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNTF(2, batch_size=10**6, n_epochs=3, checkpoint=path, **params).fit(coords, values)
        resumed = vbsnmf.VBNTF(
            2, batch_size=12, n_epochs=6, checkpoint=path, resume=True, **params
        ).fit(coords, values)
        straight = vbsnmf.VBNTF(2, batch_size=12, n_epochs=6, **params).fit(coords, values)
    np.testing.assert_array_equal(resumed.elbo_trace_, straight.elbo_trace_)


def test_smaller_batch_still_refused(tmp_path):
    """Guard (passes before the change too): a batch smaller than the data is another fit."""
    X = _counts(40, 25, seed=3)
    params = dict(solver="svi", random_state=5, n_threads=1, tol=0.0, max_iter=20)
    path = tmp_path / "fit.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(3, batch_size=10**6, n_epochs=2, checkpoint=path, **params).fit(X)
        resume = vbsnmf.VBNMF(3, batch_size=20, n_epochs=4, checkpoint=path, resume=True, **params)
        with pytest.raises(CheckpointMismatchError, match="batch_size"):
            resume.fit(X)


@pytest.mark.parametrize("solver", ["batch", "svi"])
def test_cli_var_index_named_like_the_totals_refused_before_the_fit(tmp_path, solver):
    """An .h5ad whose var index is named ``nmf_total_counts`` (the column the fit adds):
    result.h5ad cannot hold both, and the run failed after the whole fit with anndata's
    message; now refused first, exit 2, no OUTDIR. Another ``--key`` fits it."""
    adata = ad.AnnData(_counts(50))
    adata.var.index.name = "nmf_total_counts"
    source = tmp_path / "in.h5ad"
    adata.write_h5ad(source)
    options = ["-k", 2, "--quiet", "--solver", solver, "--max-iter", 20]
    options += ["--epochs", 2] if solver == "svi" else []  # svi streams the .h5ad
    out = tmp_path / "out"
    done = _cli("fit", source, "-o", out, *options)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "its var index is named 'nmf_total_counts'" in done.stderr
    assert "--key" in done.stderr and not out.exists()
    done = _cli("fit", source, "-o", out, *options, "--key", "other")
    assert done.returncode == 0, done.stderr
    assert ad.read_h5ad(out / "result.h5ad").var.index.name == "nmf_total_counts"


@pytest.mark.parametrize("where", ["obs_names", "obs column", "uns"])
def test_write_result_names_a_lone_surrogate(tmp_path, where):
    """A name decoded with errors='surrogateescape' (``'\\udcff'``): h5py's bare
    UnicodeEncodeError said neither where nor what to do; now the element is named.
    Nothing is written either way."""
    adata = ad.AnnData(_counts(5, 4))
    bad = "cell\udcff"
    if where == "obs_names":
        adata.obs_names = [*map(str, range(4)), bad]
        element = "/obs/_index"
    elif where == "obs column":
        adata.obs["note"] = ["x"] * 4 + [bad]
        element = "/obs/note"
    else:
        adata.uns["note"] = bad
        element = "/uns/note"
    path = tmp_path / "out.h5ad"
    with pytest.raises(ValueError, match=f"element at {element}.*not valid Unicode") as caught:
        vbsnmf.io.write_result(adata, path)
    assert not isinstance(caught.value, UnicodeError)
    assert list(tmp_path.iterdir()) == []


def test_umap_of_one_factor_warns():
    """K = 1: every cell's usage is 1 (checked), so the graph and the UMAP are noise; it
    was drawn without a word. K = 2 stays quiet (a guard)."""
    import matplotlib

    matplotlib.use("Agg")
    for n_components in (1, 2):
        adata = ad.AnnData(_counts(40, 20, seed=1))
        _fit(adata, n_components)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vbsnmf.pl.umap(adata, show=False)
        warned = [w for w in caught if "one factor" in str(w.message)]
        if n_components == 1:
            np.testing.assert_allclose(adata.obsm["X_nmf_usage"], 1.0)
            assert len(warned) == 1 and warned[0].filename == __file__
        else:
            assert warned == []


def test_cli_umap_shows_the_one_factor_warning_only(tmp_path):
    """`vbsnmf umap` hides scanpy's, umap's and matplotlib's notices; it hid vbsnmf's own
    too. What it lets through is what `_run_reporting_warnings` prints."""
    import matplotlib

    from vbsnmf import cli

    matplotlib.use("Agg")
    adata = ad.AnnData(_counts(40, 20, seed=1))
    _fit(adata, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli._draw_umap(adata, tmp_path / "umap.png", seed=0)
    assert (tmp_path / "umap.png").stat().st_size > 0
    assert [str(w.message)[:22] for w in caught] == ["the fit has one factor"]


def test_top_genes_plot_refuses_groups_scanpy_would_merge():
    """Grouped by two columns, scanpy names each group by its values joined with "_":
    ("a_b", "c") and ("a", "b_c") were drawn as one row. Groups whose joined names differ
    are still drawn (a guard)."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    adata = ad.AnnData(_counts(40, 20, seed=2))
    _fit(adata, 2)
    adata.obs["first"] = pd.Categorical(["a_b"] * 20 + ["a"] * 20)
    adata.obs["second"] = pd.Categorical(["c"] * 20 + ["b_c"] * 20)
    with pytest.raises(ValueError, match=r"\('a_b', 'c'\) and \('a', 'b_c'\).*'a_b_c'"):
        vbsnmf.pl.top_genes(adata, ["first", "second"], show=False)
    adata.obs["second"] = pd.Categorical(["c"] * 20 + ["d"] * 20)
    assert vbsnmf.pl.top_genes(adata, ["first", "second"], show=False) is not None


def test_select_k_of_dask_counts_says_how_to_compute_them():
    import dask.array as da

    adata = ad.AnnData(da.from_array(_counts(30).toarray(), chunks=(10, 30)))
    with pytest.raises(ValueError, match=r"adata\.X = adata\.X\.compute\(\)"):
        vbsnmf.tl.select_k(adata, [1, 2])


@pytest.mark.parametrize("solver", ["batch", "svi"])
def test_a_checkpoint_of_another_thread_count_resumes_with_a_warning(tmp_path, solver):
    """A fit checkpointed with 2 threads could not be resumed on a machine of one core
    (`n_threads` is capped at the machine's): refused as another fit, its hours lost. It
    continues with a warning, and ends as the uninterrupted fit to rounding."""
    X = _counts(60, 30, seed=6)
    params = dict(random_state=3, tol=0.0, prior="gamma", solver=solver)
    steps = "max_iter" if solver == "batch" else "n_epochs"
    if solver == "svi":  # its cells' local fits run max_iter passes at tol=0
        params["max_iter"] = 20
    path = tmp_path / "fit.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(3, n_threads=2, checkpoint=path, **{steps: 4}, **params).fit(X)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            resumed = vbsnmf.VBNMF(
                3, n_threads=1, checkpoint=path, resume=True, **{steps: 8}, **params
            ).fit(X)
        straight = vbsnmf.VBNMF(3, n_threads=2, **{steps: 8}, **params).fit(X)
    (warned,) = [str(w.message) for w in caught if "n_threads" in str(w.message)]
    assert "n_threads=2" in warned and "this fit runs n_threads=1" in warned
    assert resumed.n_iter_ == straight.n_iter_ == 8
    np.testing.assert_allclose(resumed.elbo_trace_, straight.elbo_trace_, rtol=1e-10)
    np.testing.assert_allclose(resumed.components_, straight.components_, rtol=1e-7)


def test_another_thread_count_and_another_setting_is_still_refused(tmp_path):
    """Guard (passes before the change too): the thread count is forgiven, nothing else."""
    X = _counts(60, 30, seed=6)
    path = tmp_path / "fit.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(3, n_threads=2, checkpoint=path, max_iter=3, random_state=3).fit(X)
        resume = vbsnmf.VBNMF(3, n_threads=1, checkpoint=path, resume=True, max_iter=6)
        with pytest.raises(CheckpointMismatchError, match="random_state"):
            resume.set_params(random_state=4).fit(X)


def test_a_closed_backed_x_is_named_by_the_classical_nmf_and_vbntf(tmp_path):
    """The streamed pass named a closed backed X for `VBNMF`; the classical `NMF` and
    `VBNTF` still raised h5py's RuntimeError ("identifier is not of specified type")."""
    import h5py

    adata = ad.AnnData(_counts(20, 10).toarray())
    adata.write_h5ad(tmp_path / "dense.h5ad")
    backed = ad.read_h5ad(tmp_path / "dense.h5ad", backed="r")
    X = backed.X
    backed.file.close()
    assert isinstance(X, h5py.Dataset) and not X.id.valid
    with pytest.raises(ValueError, match="HDF5 file that was closed"):
        vbsnmf.NMF(2, max_iter=5).fit(X)
    with h5py.File(tmp_path / "coords.h5", "w") as handle:
        handle["coords"] = np.array([[0, 0, 0], [1, 1, 1]])
    handle = h5py.File(tmp_path / "coords.h5", "r")
    coords = handle["coords"]
    handle.close()
    with pytest.raises(ValueError, match="X is stored in an HDF5 file that was closed"):
        vbsnmf.VBNTF(2, max_iter=3).fit(coords, np.array([1.0, 2.0]))


def test_a_10x_folder_of_cells_as_rows_is_told_so_and_reads_as_advised(tmp_path):
    """A 10x folder whose matrix holds cells as rows (R's ``writeMM(t(counts))``) was
    refused as "has 30 names but the matrix has 50 genes", which hid the cause; the
    message says it and its advice reads the same files."""
    import gzip

    counts = _counts(50, 30, seed=7)  # cells x genes, as 10x never writes it
    with gzip.open(tmp_path / "matrix.mtx.gz", "wb") as handle:
        scipy.io.mmwrite(handle, counts.tocoo())
    genes = "".join(f"ENSG{i}\tgene{i}\tGene Expression\n" for i in range(30))
    (tmp_path / "features.tsv.gz").write_bytes(gzip.compress(genes.encode()))
    cells = "".join(f"CELL{i}\n" for i in range(50))
    (tmp_path / "barcodes.tsv.gz").write_bytes(gzip.compress(cells.encode()))
    for read in (
        lambda: vbsnmf.io.read(tmp_path),
        lambda: vbsnmf.io.mtx_to_h5ad(tmp_path, tmp_path.parent / "out.h5ad"),
    ):
        with pytest.raises(vbsnmf.io.ReadError, match="holds cells as rows"):
            read()
    adata = vbsnmf.io.read_mtx(
        tmp_path / "matrix.mtx.gz",
        genes_as_rows=False,
        row_names=tmp_path / "barcodes.tsv.gz",
        col_names=tmp_path / "features.tsv.gz",
    )
    assert adata.shape == (50, 30) and adata.obs_names[0] == "CELL0"
    np.testing.assert_array_equal(adata.X.toarray(), counts.toarray())


def test_a_resume_under_another_prior_names_it_as_the_user_sets_it(tmp_path):
    """The mismatch showed the prior's repr ('HierarchicalPrior(factor_shape=None)' vs
    'GammaPrior(shape=1.0, rate=1.0)'): named by the parameters now."""
    X = _counts(40, 20, seed=8)
    path = tmp_path / "fit.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(2, max_iter=3, checkpoint=path, random_state=0, prior="gamma").fit(X)
        resume = vbsnmf.VBNMF(2, max_iter=3, checkpoint=path, resume=True, random_state=0)
        with pytest.raises(CheckpointMismatchError) as caught:
            resume.fit(X)
        message = str(caught.value)
        assert "prior: checkpoint 'gamma' (prior_shape=1.0, prior_rate=1.0) vs now " in message
        assert "now 'hierarchical')" in message and "Prior(" not in message
        with pytest.raises(CheckpointMismatchError, match=r"prior_rate=1\.0\) vs now 'gamma'"):
            resume.set_params(prior="gamma", prior_rate=2.0).fit(X)


def test_a_cell_ranger_h5_named_h5ad_is_told_what_it_is(tmp_path):
    """A Cell Ranger .h5 saved as .h5ad was refused naming only its keys; the message now
    says it is Cell Ranger's layout and how to read it (which works)."""
    from test_hostile_twentythird_readers import _cell_ranger_h5

    path = _cell_ranger_h5(tmp_path / "sample.h5ad", 2)
    with pytest.raises(vbsnmf.io.ReadError, match="Cell Ranger's feature-barcode layout"):
        vbsnmf.io.read(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = vbsnmf.io.read_10x_h5(path)
    assert adata.shape == (2, 3)


def test_project_names_the_new_cells_anndata_as_adata_new():
    """`tl.project` reads two AnnDatas; its count errors said "adata" (the shared checks'
    name), which named neither ``adata_new`` nor ``adata_ref``."""
    reference = ad.AnnData(_counts(40, 20, seed=9))
    _fit(reference, 2)
    new = ad.AnnData(_counts(10, 20, seed=10), var=reference.var.copy())
    with pytest.raises(ValueError, match=r"^use_raw=True but adata_new\.raw is None$"):
        vbsnmf.tl.project(new, reference, use_raw=True)
    with pytest.raises(ValueError, match=r"^adata_new has no layer 'counts'"):
        vbsnmf.tl.project(new, reference, layer="counts")
    new.X = new.X * 0.5
    with pytest.raises(ValueError, match=r"^adata_new\.X holds \d+ non-integer") as caught:
        vbsnmf.tl.project(new, reference)
    assert "adata_new.layers['counts'] = adata_new.X.copy()" in str(caught.value)
    assert re.search(r"\badata\b", str(caught.value)) is None


def test_select_k_reason_shows_a_small_tolerance():
    """The reason printed the tolerance with five decimals: 1e-6 read "tolerance 0.00000"."""
    adata = ad.AnnData(_counts(40, 20, seed=11))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = vbsnmf.tl.select_k(adata, [1, 2], tolerance=1e-6, max_iter=30, n_threads=1)
    assert "tolerance 1e-06)" in table.attrs["reason"]
    assert "0.00000" not in table.attrs["reason"]


def test_a_streamed_float16_csr_gets_the_readers_advice(tmp_path):
    """A streamed fit of an .h5ad whose sparse X holds float16 said "cannot read X
    (ValueError: scipy.sparse does not support dtype float16 ...)"; it now gives the advice
    `vbsnmf.io.read` gives for the same file."""
    import h5py

    path = tmp_path / "half.h5ad"
    ad.AnnData(_counts(30, 10)).write_h5ad(path)
    with h5py.File(path, "r+") as handle:
        values = handle["X/data"][...].astype(np.float16)
        del handle["X/data"]
        handle["X/data"] = values
    advice = r"float16 values, which scipy\.sparse cannot hold; store it as float32"
    with pytest.raises(vbsnmf.io.ReadError, match=advice):
        vbsnmf.io.read(path)  # the reader's advice, as before
    with pytest.raises(ValueError, match=advice):
        vbsnmf.VBNMF(2, solver="svi", n_epochs=1).fit(path)


def test_a_start_with_a_misspelt_key_warns():
    """A key of ``init={...}`` that the start does not read ("cell_scale_shpe") was dropped
    without a word; the keys `tl.nmf`'s stored fits hold stay quiet (a guard)."""
    X = _counts(40, 20, seed=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        fitted = vbsnmf.VBNMF(2, max_iter=5, random_state=0).fit(X)
        start = {k: getattr(fitted, k + "_") for k in _INIT}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            vbsnmf.VBNMF(2, max_iter=5).fit(X, init={**start, "cell_scale_shpe": np.ones(40)})
            fixed = vbsnmf.VBNMF(2, max_iter=5, prior="gamma", random_state=0).fit(X)
            start = {k: getattr(fixed, k + "_") for k in _INIT}
            vbsnmf.VBNMF(2, max_iter=5, prior="gamma").fit(
                X, init={**start, "prior_shape": 1.0, "prior_rate": 1.0}
            )
    unread = [w for w in caught if "does not read" in str(w.message)]
    assert len(unread) == 1 and "'cell_scale_shpe'" in str(unread[0].message)
    assert unread[0].filename == __file__


_INIT = ("cell_shape", "cell_rate", "gene_shape", "gene_rate")


def test_an_h5ad_held_open_for_writing_is_named_so(tmp_path):
    """An .h5ad held with h5py's 'r+' (a notebook's backed='r+', another process) read as
    damaged: "not a readable HDF5 file (BlockingIOError ... unable to lock file)"."""
    import h5py

    path = tmp_path / "held.h5ad"
    ad.AnnData(_counts(30, 10)).write_h5ad(path)
    held = h5py.File(path, "r+")
    try:
        for read in (
            lambda: vbsnmf.io.read(path),
            lambda: vbsnmf.VBNMF(2, solver="svi", n_epochs=1).fit(path),
        ):
            with pytest.raises(vbsnmf.io.ReadError, match="is open for writing elsewhere"):
                read()
    finally:
        held.close()
    assert vbsnmf.io.read(path).shape == (30, 10)  # once closed, read as ever
