"""The thirty-sixth pass over orientation and alignment: counts given genes x cells where
cells x genes is expected, and genes in another order, a subset or a superset of the fitted
ones. Defects, each test failing on the code before its fix:

- an ``.mtx`` of cells x genes (as ``scipy.io.mmwrite(adata.X)`` writes it) read with
  ``genes_as_rows=True`` and its genes file as the row names (in memory, converted, on the
  command line) was refused as "has 30 names but m.mtx has 80 rows", which did not say that
  the file names the columns, nor which orientation fits it;
- `tl.project` of new cells held genes x cells (a table of genes as rows read whole) said
  only "adata_new shares no gene names with the reference fit", though its obs_names are
  the reference's genes;
- `VBNMF.transform` and the classical `NMF.transform` of a fitted DataFrame's transpose
  listed every cell as an unseen feature and every gene as a missing one, and of a
  transposed array said only "X has 20 features, but ... is expecting 30", nothing saying X
  was the transpose; a warm start on the transpose of its data was told a shape
  (``init cell_shape has shape (80, 3), expected (30, 3)``) or, from a DataFrame, advised
  ``X[init.feature_names_in_]``, a KeyError;
- a checkpoint resumed on its data transposed (``X.T``, an ``.mtx`` read with the other
  orientation) was told "written for other data (shape: ...); remove it, or start over";
- `tl.nmf`, `tl.select_k` and ``vbsnmf fit`` of an AnnData held genes x cells (its
  var_names cell barcodes, or its obs_names Ensembl gene ids: pbmc_tiny transposed, a 10x
  matrix read ``--cells-as-rows``) fitted its genes as cells without a word; now a warning;
- a fitted AnnData transposed (``adata.T``, which swaps ``.obsm`` and ``.varm``) was told
  by every tool reading the fit that an entry was missing ("was it removed, or the AnnData
  built anew after the fit? ... Fit again"), though all of the fit was there.

Guards (pass on the base code too, said in their docstrings) pin the rest against
independent numpy computations with the columns put back in order.
"""

from __future__ import annotations

import gzip
import shutil
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from cli_output import without_compile_notice
from reference_cavi import fit_rows as numpy_fit_rows
from simulated import poisson_gamma_array

import vbsnmf
from vbsnmf import cli, tl
from vbsnmf.classic import NMF
from vbsnmf.datasets._load import data_dir
from vbsnmf.io import ReadError

N_CELLS, N_GENES, K = 80, 30, 3
GENES = [f"G{j}" for j in range(N_GENES)]
CELLS = [f"AAAC{i}-1" for i in range(N_CELLS)]


def _counts(seed: int = 0, n_cells: int = N_CELLS) -> np.ndarray:
    return poisson_gamma_array(n_cells=n_cells, n_genes=N_GENES, k=K, seed=seed)


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _frame(counts, cells=CELLS, genes=GENES) -> pd.DataFrame:
    return pd.DataFrame(counts, index=list(cells[: len(counts)]), columns=list(genes))


def _reference(prior: str = "gamma") -> ad.AnnData:
    adata = ad.AnnData(
        sp.csr_matrix(_counts()), obs=pd.DataFrame(index=CELLS), var=pd.DataFrame(index=GENES)
    )
    _quiet(tl.nmf, adata, K, prior=prior, random_state=0, max_iter=200, n_threads=1)
    return adata


# -- 1: an .mtx name file as long as the other axis -------------------------------------------
@pytest.fixture
def cells_by_genes_mtx(tmp_path):
    """A cells x genes ``.mtx`` as ``scipy.io.mmwrite(adata.X)`` writes it, with the genes'
    and the cells' name files."""
    counts = sp.csr_matrix(_counts())
    scipy.io.mmwrite(tmp_path / "m.mtx", counts)
    (tmp_path / "genes.tsv").write_text("".join(f"{gene}\n" for gene in GENES))
    (tmp_path / "barcodes.tsv").write_text("".join(f"{cell}\n" for cell in CELLS))
    return tmp_path, counts


def _cli(argv, capfd, cwd, monkeypatch) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    code = cli.main([str(arg) for arg in argv])
    err = without_compile_notice(capfd.readouterr().err)
    return code, err


def test_mtx_genes_file_as_row_names_of_cells_by_genes_names_the_orientation(
    cells_by_genes_mtx, capfd, monkeypatch
):
    """Before: "genes.tsv: has 30 names but m.mtx has 80 rows" (read_mtx, mtx_to_h5ad and
    the command line, batch and streamed). Now the file is said to name the columns and
    ``--cells-as-rows`` to fit it; read so, the AnnData is the matrix as written."""
    folder, counts = cells_by_genes_mtx
    names = {"row_names": folder / "genes.tsv", "col_names": folder / "barcodes.tsv"}
    said = (
        "has 30 names, as many as m.mtx's columns, but it has 80 rows: it names the columns "
        "(col_names=..., --col-names); if they are the genes' names, m.mtx holds its genes as "
        "columns (cells x genes, as scipy.io.mmwrite(adata.X) writes it): read it with "
        "genes_as_rows=False (--cells-as-rows)"
    )
    with pytest.raises(ReadError) as raised:
        vbsnmf.io.read_mtx(folder / "m.mtx", genes_as_rows=True, **names)
    assert str(raised.value).endswith(said), raised.value
    with pytest.raises(ReadError) as raised:
        vbsnmf.io.mtx_to_h5ad(folder / "m.mtx", folder / "c.h5ad", genes_as_rows=True, **names)
    assert str(raised.value).endswith(said), raised.value
    assert not (folder / "c.h5ad").exists()
    argv = ["fit", "m.mtx", "--genes-as-rows", "--row-names", "genes.tsv"]
    argv += ["--col-names", "barcodes.tsv", "-k", "2", "--max-iter", "2", "-o", "out"]
    for extra in ([], ["--solver", "svi", "--epochs", "1"]):
        code, err = _cli([*argv, *extra], capfd, folder, monkeypatch)
        assert code == 2 and err.count("\n") == 1 and said in err, err
        assert not (folder / "out").exists()
    # as advised: the names swapped with the orientation
    adata = vbsnmf.io.read_mtx(
        folder / "m.mtx",
        genes_as_rows=False,
        row_names=folder / "barcodes.tsv",
        col_names=folder / "genes.tsv",
    )
    assert list(adata.var_names) == GENES and list(adata.obs_names) == CELLS
    np.testing.assert_array_equal(adata.X.toarray(), counts.toarray())


def test_mtx_name_files_swapped_under_the_right_orientation_name_the_other_file(
    cells_by_genes_mtx,
):
    """Before: "genes.tsv: has 30 names but m.mtx has 80 rows" for the name files given
    the wrong way round with ``genes_as_rows=False`` (right for the file); now the genes
    file is said to name the columns (the first remedy the message gives), and the barcodes
    file as the row names, told likewise, names the rows."""
    folder, _ = cells_by_genes_mtx
    with pytest.raises(ReadError, match=r"it names the columns \(col_names=\.\.\., --col-names\)"):
        vbsnmf.io.read_mtx(folder / "m.mtx", genes_as_rows=False, row_names=folder / "genes.tsv")
    with pytest.raises(ReadError) as raised:
        vbsnmf.io.read_mtx(folder / "m.mtx", genes_as_rows=False, col_names=folder / "barcodes.tsv")
    assert "has 80 names, as many as m.mtx's rows, but it has 30 columns: it names the rows" in (
        str(raised.value)
    )
    assert "genes_as_rows=True (--genes-as-rows)" in str(raised.value)


def test_mtx_name_file_of_neither_axis_keeps_the_plain_message(tmp_path):
    """A guard (passes on both): a name file as long as neither axis, or a square matrix
    (either axis), keeps the plain count message; no orientation is advised."""
    scipy.io.mmwrite(tmp_path / "m.mtx", sp.csr_matrix(_counts()))
    scipy.io.mmwrite(tmp_path / "square.mtx", sp.csr_matrix(_counts(n_cells=N_GENES)))
    (tmp_path / "short.tsv").write_text("".join(f"g{j}\n" for j in range(29)))
    for matrix, said in (
        ("m.mtx", "has 29 names but m.mtx has 80 rows"),
        ("square.mtx", "has 29 names but square.mtx has 30 rows"),
    ):
        with pytest.raises(ReadError) as raised:
            vbsnmf.io.read_mtx(
                tmp_path / matrix, genes_as_rows=True, row_names=tmp_path / "short.tsv"
            )
        assert str(raised.value).endswith(said), raised.value


# -- 2: tl.project of new cells held genes x cells --------------------------------------------
def test_project_of_genes_by_cells_new_cells_names_the_transpose():
    """Before: "adata_new shares no gene names with the reference fit", nothing more, for
    new cells whose obs_names are the reference's genes. Now the transpose is named, and
    projected as advised it equals the projection of the same cells held cells x genes."""
    reference = _reference()
    counts = _counts(seed=1, n_cells=12)
    transposed = ad.AnnData(
        sp.csr_matrix(counts.T), obs=pd.DataFrame(index=GENES), var=pd.DataFrame(index=CELLS[:12])
    )
    with pytest.raises(ValueError) as raised:
        tl.project(transposed, reference, n_threads=1)
    message = str(raised.value)
    assert message.startswith("adata_new shares no gene names with the reference fit; "), message
    assert "adata_new's obs_names hold 30 of the reference's genes: it is genes x cells" in message
    assert message.endswith("project its transpose, adata_new.T, whose cells are its columns")
    advised = tl.project(transposed.T, reference, copy=True, n_threads=1)
    upright = ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=GENES))
    expected = tl.project(upright, reference, copy=True, n_threads=1)
    np.testing.assert_array_equal(advised.obsm["X_nmf"], expected.obsm["X_nmf"])


# -- 3: a fitted AnnData transposed ------------------------------------------------------------
def test_a_fitted_anndata_transposed_is_named_so(tmp_path, capfd, monkeypatch):
    """Before: ``adata.T`` of a fitted AnnData (its cell factors now in ``.varm``, its
    loadings in ``.obsm``) was told by `tl.top_genes`, `tl.project`, a warm start,
    `io.write_nmf_tables`, `pl.factors` and the command line's ``umap`` that an entry was
    missing: "was it removed, or the AnnData built anew after the fit? ... Fit again",
    though every array of the fit was there. Now each says it was transposed; transposed
    back as advised, its top genes are the fit's."""
    reference = _reference()
    flipped = reference.T
    said = (
        "the cell factors of the fit 'nmf' are in adata.varm['X_nmf'], not in adata.obsm: "
        "the AnnData was transposed after the fit (adata.T, which swaps .obsm and .varm with "
        "the cells and the genes); transpose it back, adata = adata.T"
    )
    calls = {
        "top_genes": lambda: tl.top_genes(flipped),
        "warm start": lambda: tl.nmf(flipped, K, warm_start=True, max_iter=2, n_threads=1),
        "tables": lambda: vbsnmf.io.write_nmf_tables(flipped, tmp_path),
        "factors": lambda: vbsnmf.pl.factors(flipped, show=False),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as raised:
            _quiet(call)
        assert str(raised.value) == said, (name, raised.value)
    new = ad.AnnData(sp.csr_matrix(_counts(seed=2, n_cells=5)), var=pd.DataFrame(index=GENES))
    with pytest.raises(ValueError) as raised:
        tl.project(new, flipped, n_threads=1)
    assert str(raised.value) == said.replace("adata", "adata_ref"), raised.value
    assert list(tmp_path.iterdir()) == [] and "X_nmf" not in new.obsm
    flipped.write_h5ad(tmp_path / "flipped.h5ad")
    code, err = _cli(["umap", "flipped.h5ad", "-o", "u.png"], capfd, tmp_path, monkeypatch)
    assert code == 2 and err == f"vbsnmf: error: flipped.h5ad: {said}\n", err
    pd.testing.assert_frame_equal(tl.top_genes(flipped.T), tl.top_genes(reference))


def test_a_checkpoint_resumed_on_the_transposed_data_is_told_so(tmp_path, capfd, monkeypatch):
    """Before: a checkpoint of a fit of X resumed on X.T (in Python), or of an ``.mtx``
    read ``--cells-as-rows`` resumed ``--genes-as-rows``, was "written for other data
    (shape: checkpoint [80, 30] vs now [30, 80]); remove it, or start over without
    resuming": advice that threw the fit away. Now the transpose is named, with passing
    the data as the fit read them first; so passed, the fit resumes. A square matrix's
    transpose, of the same shape, is the plain data mismatch (a guard)."""
    counts = sp.csr_matrix(_counts())
    checkpoint = tmp_path / "ck.npz"
    model = vbsnmf.VBNMF(K, max_iter=3, random_state=0, checkpoint=checkpoint, n_threads=1)
    _quiet(model.fit, counts)
    said = (
        "(shape: checkpoint [80, 30] vs now [30, 80]; the data now have the shape of its "
        "transpose, cells and genes swapped); pass the data as the checkpoint's fit read "
        "them, or remove it, or start over without resuming"
    )
    model.set_params(resume=True, max_iter=4)
    with pytest.raises(vbsnmf.CheckpointMismatchError) as raised:
        model.fit(counts.T)
    assert str(raised.value).endswith(said), raised.value
    scipy.io.mmwrite(tmp_path / "m.mtx", counts)
    argv = ["fit", "m.mtx", "-k", K, "--seed", 0, "--max-iter", 4, "--threads", 1]
    argv += ["--checkpoint", "ck.npz", "--resume", "-o", "out"]
    code, err = _cli([*argv, "--genes-as-rows"], capfd, tmp_path, monkeypatch)
    assert code == 2 and err.count("\n") == 1, err
    assert (
        "cells and genes swapped, as an .mtx read with the other of --genes-as-rows and "
        "--cells-as-rows); pass the data as the checkpoint's fit read them, or remove it, "
        "or start over without resuming (drop --resume)\n"
    ) in err
    code, err = _cli([*argv, "--cells-as-rows"], capfd, tmp_path, monkeypatch)
    assert code == 0, err
    square = sp.csr_matrix(_counts(n_cells=N_GENES))
    model = vbsnmf.VBNMF(K, max_iter=3, random_state=0, checkpoint=tmp_path / "sq.npz", n_threads=1)
    _quiet(model.fit, square)
    with pytest.raises(vbsnmf.CheckpointMismatchError) as raised:
        model.set_params(resume=True).fit(square.T)
    assert "swapped" not in str(raised.value) and "for other data" in str(raised.value)


# -- 4: tl.nmf, tl.select_k and the command line on genes x cells -----------------------------
GENES_BY_CELLS = "may be genes x cells: its var_names look like cell barcodes"


def test_tl_nmf_of_genes_by_cells_warns(pbmc_tiny):
    """Before: ``tl.nmf`` of pbmc_tiny transposed (as ``scanpy.read_csv`` reads a table of
    genes as rows) fitted its 507 genes as cells without a word. Now a warning says its
    var_names look like cell barcodes (or its obs_names like Ensembl gene ids) and to fit
    ``adata.T``, pointing at the caller's line; once from ``tl.select_k``."""
    flipped = pbmc_tiny.T.copy()
    with pytest.warns(UserWarning, match=GENES_BY_CELLS) as caught:
        _quiet_others(tl.nmf, flipped, 2, max_iter=2, n_threads=1)
    ours = [w for w in caught if "genes x cells" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__
    assert str(ours[0].message).endswith("fit its transpose, adata.T")
    by_id = pbmc_tiny.copy()
    by_id.var_names = by_id.var["gene_ids"].astype(str)
    by_id = by_id.T.copy()
    by_id.var_names = [f"cell{i}" for i in range(by_id.n_vars)]
    with pytest.warns(UserWarning, match="its obs_names look like Ensembl gene ids"):
        _quiet_others(tl.nmf, by_id, 2, max_iter=2, n_threads=1)
    with pytest.warns(UserWarning, match=GENES_BY_CELLS) as caught:
        _quiet_others(tl.select_k, flipped, [2], max_iter=2, n_threads=1)
    assert sum("genes x cells" in str(w.message) for w in caught) == 1


def _quiet_others(function, *args, **kwargs):
    """``function`` with every warning but this pass's silenced (the empty cells' and
    the convergence warnings of two passes)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="^(?!.*genes x cells)")
        return function(*args, **kwargs)


def test_cells_by_genes_data_never_warn(pbmc_tiny, recwarn):
    """A guard (passes on both): pbmc_tiny (by symbol and by Ensembl id), pbmc_facs' test
    cells (100 x 16,791) and synthetic cells x genes named by symbols, square too, fitted
    by `tl.nmf`, do not warn of genes x cells."""
    facs = vbsnmf.datasets.pbmc_facs(test=True)
    by_id = pbmc_tiny.copy()
    by_id.var_names = by_id.var["gene_ids"].astype(str)
    square = ad.AnnData(sp.csr_matrix(_counts(n_cells=N_GENES)), var=pd.DataFrame(index=GENES))
    for adata in (pbmc_tiny, by_id, facs, square):
        _quiet_others(tl.nmf, adata, 2, max_iter=2, n_threads=1)
    assert not [w for w in recwarn if "genes x cells" in str(w.message)]


def test_the_command_line_warns_of_genes_by_cells_in_its_words(tmp_path, capfd, monkeypatch):
    """Before: a 10x matrix (genes x cells) read ``--cells-as-rows`` with its features file
    as the rows' names was fitted with its 1,107 cells as genes without a word. Now a
    warning says so in the command line's words (the other orientation, the name files
    swapped); read as advised, no warning."""
    tenx = data_dir("pbmc_tiny_v3")
    for name, target in (
        ("matrix.mtx.gz", "m.mtx"),
        ("features.tsv.gz", "f.tsv"),
        ("barcodes.tsv.gz", "b.tsv"),
    ):
        with gzip.open(tenx / name, "rb") as src, open(tmp_path / target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    argv = ["fit", "m.mtx", "-k", 2, "--max-iter", 2, "--threads", 1]
    code, err = _cli(
        [*argv, "--cells-as-rows", "--row-names", "f.tsv", "--col-names", "b.tsv", "-o", "a"],
        capfd,
        tmp_path,
        monkeypatch,
    )
    assert code == 0, err
    assert (
        "vbsnmf: warning: the input may be genes x cells: its genes' names look like cell "
        "barcodes ('AAACCCAAGGAGAGTA-1', ...); its rows are fitted as cells and its columns "
        "as genes: if they are the other way round, read an .mtx with the other of "
        "--genes-as-rows and --cells-as-rows (and its name files swapped), or write an "
        ".h5ad's transpose (adata.T.write_h5ad)\n"
    ) in err, err
    code, err = _cli(
        [*argv, "--genes-as-rows", "--row-names", "f.tsv", "--col-names", "b.tsv", "-o", "b"],
        capfd,
        tmp_path,
        monkeypatch,
    )
    assert code == 0 and "genes x cells" not in err, err


# -- 5: transform of a transposed X -------------------------------------------------------
@pytest.mark.parametrize("estimator", [vbsnmf.VBNMF, NMF])
def test_transform_of_the_fitted_frames_transpose_names_it(estimator):
    """Before: every cell listed as an unseen feature and every gene as a missing one, and
    no word of the transpose. Now the message ends naming it; ``X.T`` as advised transforms
    as the frame itself."""
    frame = _frame(_counts())
    model = _quiet(estimator(K, random_state=0, max_iter=50).fit, frame)
    with pytest.raises(ValueError, match=r"^The feature names should match") as raised:
        model.transform(frame.iloc[:20].T)
    assert str(raised.value).endswith(
        "X's row names are the feature names seen at fit time: X is genes x cells, the "
        "transpose of what was fitted; pass X.T (cells x genes).\n"
    )
    advised = _quiet(model.transform, frame.iloc[:20].T.T)
    np.testing.assert_array_equal(advised, _quiet(model.transform, frame.iloc[:20]))


@pytest.mark.parametrize("estimator", [vbsnmf.VBNMF, NMF])
def test_transform_of_a_transposed_array_names_it(estimator):
    """Before: "X has 20 features, but VBNMF is expecting 30 features as input (the genes
    it was fitted with)", for an X of 30 rows: the genes x cells counts of 20 cells."""
    counts = _counts()
    model = _quiet(estimator(K, random_state=0, max_iter=50).fit, counts)
    with pytest.raises(ValueError) as raised:
        model.transform(sp.csr_matrix(counts[:20].T))
    assert str(raised.value).endswith(
        "; X has 30 rows, as many as the fitted features: if its rows are the genes "
        "(genes x cells), pass X.T"
    ), raised.value


def test_a_warm_start_on_the_transposed_data_names_it():
    """Before: ``VBNMF().fit(X.T, init=model)`` of a model fitted on X said "init
    cell_shape has shape (80, 3), expected (30, 3)", and of a DataFrame's transpose advised
    ``X[init.feature_names_in_]``, which raises pandas' KeyError (X's columns are its
    cells). Now both name the transpose and advise ``X.T``, with which the warm start runs
    as from X itself. A start of other genes keeps its shape message (a guard)."""
    counts = _counts()
    for data in (counts, _frame(counts)):
        model = _quiet(vbsnmf.VBNMF(K, random_state=0, max_iter=20, n_threads=1).fit, data)
        warm = vbsnmf.VBNMF(K, max_iter=3, accelerate=False, n_threads=1)
        with pytest.raises(ValueError) as raised:
            warm.fit(data.T, init=model)
        assert str(raised.value).endswith("genes x cells; pass X.T") or str(raised.value).endswith(
            "(genes x cells); pass X.T"
        ), raised.value
        advised = _quiet(warm.fit, data.T.T, init=model).elbo_trace_
        np.testing.assert_array_equal(advised, _quiet(warm.fit, data, init=model).elbo_trace_)
    model = _quiet(vbsnmf.VBNMF(K, random_state=0, max_iter=20, n_threads=1).fit, counts)
    with pytest.raises(ValueError, match=r"^init gene_shape has shape \(30, 3\), expected"):
        vbsnmf.VBNMF(K, max_iter=3).fit(counts[:, :20], init=model)


@pytest.mark.parametrize("estimator", [vbsnmf.VBNMF, NMF])
def test_other_feature_mismatches_are_not_called_a_transpose(estimator):
    """A guard (passes on both): genes reordered, a subset, a superset, and an array of
    another width with other than the fitted genes' number of rows keep scikit-learn's
    messages, with no word of a transpose."""
    frame = _frame(_counts())
    model = _quiet(estimator(K, random_state=0, max_iter=50).fit, frame)
    for other, said in (
        (frame[GENES[::-1]], "Feature names must be in the same order as they were in fit.\n"),
        (frame[GENES[:20]], "Feature names seen at fit time, yet now missing:\n"),
        (frame.assign(extra=1.0), "Feature names unseen at fit time:\n- extra\n"),
    ):
        with pytest.raises(ValueError, match=r"^The feature names should match") as raised:
            model.transform(other)
        assert said in str(raised.value) and "transpose" not in str(raised.value)
    plain = _quiet(estimator(K, random_state=0, max_iter=50).fit, _counts())
    with pytest.raises(ValueError) as raised:
        plain.transform(_counts()[:25, :20])
    assert str(raised.value).startswith("X has 20 features, but ")
    assert "transpose" not in str(raised.value) and "X.T" not in str(raised.value)


# -- guards: names, containers and orders against numpy --------------------------------------
@pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")
@pytest.mark.parametrize("estimator", [vbsnmf.VBNMF, NMF])
def test_feature_names_and_the_warnings_follow_scikit_learn(estimator):
    """A guard (passes on both): ``feature_names_in_`` after fits from a DataFrame, a
    sparse DataFrame, an array and a frame of integer columns (none), dropped by a refit on
    an array; a DataFrame transformed by an array fit and an array by a DataFrame fit warn
    as scikit-learn warns, and transform the same numbers."""
    counts = _counts()
    frame = _frame(counts)
    model = _quiet(estimator(K, random_state=0, max_iter=50).fit, frame)
    assert list(model.feature_names_in_) == GENES and model.n_features_in_ == N_GENES
    sparse = frame.astype(pd.SparseDtype(float, 0))
    assert list(_quiet(estimator(K, random_state=0, max_iter=5).fit, sparse).feature_names_in_) == (
        GENES
    )
    for names_less in (counts, pd.DataFrame(counts)):
        assert not hasattr(
            _quiet(estimator(K, random_state=0, max_iter=5).fit, names_less), "feature_names_in_"
        )
    kind = estimator.__name__
    with pytest.warns(UserWarning, match=f"X does not have valid feature names, but {kind} was"):
        from_array = model.transform(counts[:10])
    np.testing.assert_array_equal(from_array, _quiet(model.transform, frame.iloc[:10]))
    plain = _quiet(estimator(K, random_state=0, max_iter=50).fit, counts)
    with pytest.warns(UserWarning, match=f"X has feature names, but {kind} was fitted without"):
        from_frame = plain.transform(frame.iloc[:10])
    np.testing.assert_array_equal(from_frame, _quiet(plain.transform, counts[:10]))
    _quiet(model.fit, counts)
    assert not hasattr(model, "feature_names_in_")


def test_transform_and_project_follow_names_against_numpy():
    """A guard (passes on both): under the fixed prior, `VBNMF.transform` of the fitted
    frame's columns put back in order (``X[model.feature_names_in_]`` of a shuffled frame)
    and `tl.project` of new cells whose genes are shuffled, with 6 missing and 2 extra,
    equal numpy's coordinate ascent (``tests/reference_cavi.py``) over the same genes in
    the fitted order, at ``tol=0``."""
    rng = np.random.default_rng(3)
    reference = _reference("gamma")
    counts = _counts(seed=4, n_cells=8)
    order = rng.permutation(N_GENES)
    shuffled = _frame(counts)[[GENES[j] for j in order]]
    model = _quiet(
        vbsnmf.VBNMF(K, prior="gamma", random_state=0, max_iter=200).fit, _frame(_counts())
    )
    model.set_params(tol=0.0, max_iter=400, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=0: every cell runs max_iter
        transformed = model.transform(shuffled[model.feature_names_in_])
    shape, rate = numpy_fit_rows(counts, model.gene_shape_, model.gene_rate_, 1.0, 1.0, 400)
    np.testing.assert_allclose(transformed, shape / rate, rtol=1e-9)
    kept = order[6:]  # genes of the reference in a shuffled order, 6 left out
    new_counts = np.hstack([counts[:, kept], rng.poisson(2.0, (8, 2))])
    new = ad.AnnData(
        sp.csr_matrix(new_counts),
        var=pd.DataFrame(index=[GENES[j] for j in kept] + ["x1", "x2"]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        projected = tl.project(new, reference, copy=True, tol=0.0, max_iter=400, n_threads=1)
    stored = reference.uns["nmf"]["variational"]
    in_order = np.sort(kept)
    gene_shape = reference.varm["nmf_gene_shape"][in_order]
    shape, rate = numpy_fit_rows(
        counts[:, in_order],
        gene_shape,
        np.asarray(stored["gene_rate"]),
        float(stored["prior_shape"]),
        float(stored["prior_rate"]),
        400,
    )
    np.testing.assert_allclose(projected.obsm["X_nmf"], shape / rate, rtol=1e-9)
    assert projected.uns["nmf_projection"]["n_genes_missing"] == 6


def test_raw_in_another_gene_order_is_stored_by_name():
    """A guard (passes on both): a fit of ``.raw`` whose genes lie in another order than
    X's keeps the loadings of ``adata.raw.varm`` in raw's order and ``adata.varm`` by name
    (both equal to a fit of the same counts in raw's order), and `tl.top_genes` and
    `tl.project` onto it equal those of that fit."""
    rng = np.random.default_rng(6)
    plain = _reference("gamma")
    order = rng.permutation(N_GENES)
    shuffled = plain[:, order].copy()
    shuffled.raw = plain.copy()
    _quiet(
        tl.nmf, shuffled, K, prior="gamma", use_raw=True, random_state=0, max_iter=200, n_threads=1
    )
    np.testing.assert_array_equal(shuffled.raw.varm["NMF"], plain.varm["NMF"])
    np.testing.assert_array_equal(shuffled.varm["NMF"], plain.varm["NMF"][order])
    pd.testing.assert_frame_equal(tl.top_genes(shuffled, n_genes=5), tl.top_genes(plain, n_genes=5))
    new = ad.AnnData(sp.csr_matrix(_counts(seed=7, n_cells=6)), var=pd.DataFrame(index=GENES))
    np.testing.assert_array_equal(
        tl.project(new, shuffled, copy=True, n_threads=1).obsm["X_nmf"],
        tl.project(new, plain, copy=True, n_threads=1).obsm["X_nmf"],
    )
