"""The twenty-fifth hostile pass over what vbsnmf writes: `io.write_result` published a
result.h5ad that anndata cannot read back (its ``.uns`` or ``.obs`` written over) for a key,
column or index name ``""`` or ``"."``, or a column ``"a"`` beside ``"a/b"``, cut a key at a
NUL character, and met text holding one with h5py's bare "VLEN strings do not support
embedded NULLs"; it copied a backed AnnData's X from whatever file is at its name now, so
after that file was replaced result.h5ad held other counts beside the fit; and ``fit
--force`` checked OUTDIR's entries only before the fit, deleting a file the user saved
there while the fit ran."""

from __future__ import annotations

import json
import os
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import cli, io, tl
from vbsnmf.io import UnsafePathError


def _small() -> ad.AnnData:
    adata = ad.AnnData(sp.csr_matrix(np.arange(24, dtype=np.float32).reshape(6, 4)))
    adata.obs_names = [f"c{i}" for i in range(6)]
    adata.var_names = [f"g{j}" for j in range(4)]
    adata.uns["nmf"] = {"n_iter": 3}
    return adata


def _with_obs_columns(*names):
    def edit(adata):
        for number, name in enumerate(names):
            adata.obs[name] = number

    return edit


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda a: a.uns.__setitem__("", 1), "the mapping at /uns has the key ''"),
        (lambda a: a.uns.__setitem__(".", 1), "the mapping at /uns has the key '.'"),
        (lambda a: a.obsm.__setitem__("", np.ones((6, 2))), "the mapping at /obsm has the key"),
        (_with_obs_columns(""), "the table at /obs has the column ''"),
        (lambda a: setattr(a.var.index, "name", "."), "the table at /var has the index name '.'"),
        (lambda a: a.layers.__setitem__("a\x00b", a.X.copy()), r"/layers has the key 'a\\x00b'"),
        (_with_obs_columns("a/b", "a"), "the table at /obs has the columns 'a' and 'a/b'"),
    ],
    ids=["uns empty", "uns dot", "obsm empty", "obs column empty", "var index dot", "NUL", "a/b"],
)
def test_a_name_an_h5ad_cannot_hold_is_refused_not_written_unreadable(tmp_path, edit, named):
    """Each was written (most into a file anndata then failed to read: ``""`` and ``"."``
    name the group itself, so ``.uns`` or ``.obs`` was written over; the NUL key came back
    as ``'a'``)."""
    adata = _small()
    edit(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's notice of a '/' in a column
        with pytest.raises(TypeError, match=named):
            io.write_result(adata, tmp_path / "x.h5ad")
    assert os.listdir(tmp_path) == []


def test_names_near_those_refused_are_still_written_and_read_back(tmp_path):
    adata = _small()
    adata.uns[".."] = 1
    adata.uns["a.b"] = {" ": 2}
    adata.obs["CD4/CD8"] = 3  # anndata's nested group, read back as it was
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        io.write_result(adata, tmp_path / "x.h5ad")
        back = ad.read_h5ad(tmp_path / "x.h5ad")
    assert back.uns[".."] == 1 and back.uns["a.b"] == {" ": 2} and back.uns["nmf"]["n_iter"] == 3
    assert back.obs["CD4/CD8"].tolist() == [3] * 6


def test_text_holding_a_nul_is_refused_naming_its_element(tmp_path):
    adata = _small()
    adata.uns["note"] = "fit\x00ted"
    with pytest.raises(ValueError, match=r"element at /uns/note holds text with a NUL"):
        io.write_result(adata, tmp_path / "x.h5ad")
    assert os.listdir(tmp_path) == []


def test_write_result_of_a_backed_anndata_copies_its_own_file_not_its_replacement(tmp_path):
    """A conversion or write into the backed file's path since replaces it by a new file;
    result.h5ad took that file's counts, other than the fit's."""
    first = sp.random(8, 5, density=0.5, format="csr", random_state=0, dtype=np.float64)
    ad.AnnData(first).write_h5ad(tmp_path / "counts.h5ad")
    backed = io.read_h5ad_backed(tmp_path / "counts.h5ad")
    other = sp.random(8, 5, density=0.5, format="csr", random_state=1, dtype=np.float64)
    ad.AnnData(other).write_h5ad(tmp_path / "new.h5ad")
    os.replace(tmp_path / "new.h5ad", tmp_path / "counts.h5ad")
    io.write_result(backed, tmp_path / "result.h5ad")
    written = ad.read_h5ad(tmp_path / "result.h5ad").X
    np.testing.assert_array_equal(written.toarray(), first.toarray())
    backed.file.close()


def test_write_result_of_a_closed_backed_anndata_still_reads_its_file(tmp_path):
    counts = sp.random(8, 5, density=0.5, format="csr", random_state=0, dtype=np.float64)
    ad.AnnData(counts).write_h5ad(tmp_path / "counts.h5ad")
    backed = io.read_h5ad_backed(tmp_path / "counts.h5ad")
    backed.file.close()
    io.write_result(backed, tmp_path / "result.h5ad")
    written = ad.read_h5ad(tmp_path / "result.h5ad").X
    np.testing.assert_array_equal(written.toarray(), counts.toarray())


FIT = ["-k", "2", "--max-iter", "3", "--threads", "1", "--quiet"]


def test_force_keeps_a_file_saved_into_outdir_while_the_fit_ran(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    counts = sp.random(30, 12, density=0.5, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 10)
    ad.AnnData(counts).write_h5ad("in.h5ad")
    assert cli.main(["fit", "in.h5ad", *FIT, "-o", "out"]) == 0
    earlier = (tmp_path / "out" / "params.json").read_text()
    fit = cli._fit

    def fit_while_the_user_saves(*args, **kwargs):
        seconds = fit(*args, **kwargs)
        (tmp_path / "out" / "umap_old.png").write_bytes(b"the user's figure")
        return seconds

    monkeypatch.setattr(cli, "_fit", fit_while_the_user_saves)
    assert cli.main(["fit", "in.h5ad", *FIT, "-o", "out", "--force", "--seed", "1"]) == 2
    error = capsys.readouterr().err
    assert "umap_old.png" in error and "put there while this run worked" in error
    assert (tmp_path / "out" / "umap_old.png").read_bytes() == b"the user's figure"
    assert (tmp_path / "out" / "params.json").read_text() == earlier
    # the new output kept beside it (it was discarded before the twenty-seventh pass)
    assert "the new output is in" in error and "out.new" in error
    assert sorted(os.listdir(tmp_path)) == ["in.h5ad", "out", "out.new"]  # no temporary left
    written = set(os.listdir(tmp_path / "out")) - {"umap_old.png"}
    assert set(os.listdir(tmp_path / "out.new")) == written
    assert json.loads((tmp_path / "out.new" / "params.json").read_text())["seed"] == 1


def test_atomic_directory_leaves_a_target_its_check_refuses(tmp_path):
    from vbsnmf.io._paths import check_earlier_output  # new with the check

    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "result.h5ad").write_text("earlier")
    with pytest.raises(UnsafePathError, match=r"notes\.txt"):
        with io.atomic_directory(
            outdir,
            overwrite=True,
            replaceable=lambda target: check_earlier_output(target, done=True),
        ) as temporary:
            (temporary / "result.h5ad").write_text("new")
            (outdir / "notes.txt").write_text("mine")
    assert sorted(os.listdir(tmp_path)) == ["out", "out.new"]  # the new output kept
    assert (outdir / "notes.txt").read_text() == "mine"
    assert (outdir / "result.h5ad").read_text() == "earlier"
    assert (tmp_path / "out.new" / "result.h5ad").read_text() == "new"


@pytest.fixture(scope="module")
def fitted() -> ad.AnnData:
    counts = sp.random(30, 12, density=0.5, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 10)
    adata = ad.AnnData(counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged in 3 iterations
        tl.nmf(adata, 2, max_iter=3)
    return adata


def test_tables_into_an_empty_folder_name_are_refused_not_written_here(
    tmp_path, monkeypatch, fitted
):
    """pathlib takes "" (an unset variable) for the current folder: the tables replaced
    those there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cell_factors.tsv.gz").write_bytes(b"the user's own table")
    with pytest.raises(UnsafePathError, match="folder is an empty name"):
        io.write_nmf_tables(fitted, "")
    assert os.listdir(tmp_path) == ["cell_factors.tsv.gz"]
    assert (tmp_path / "cell_factors.tsv.gz").read_bytes() == b"the user's own table"
    io.write_nmf_tables(fitted, ".")  # the current folder, named
    assert len(os.listdir(tmp_path)) == 3


@pytest.mark.parametrize("write", ["write_result", "mtx_to_h5ad"])
def test_an_empty_file_name_is_refused_by_name(tmp_path, monkeypatch, write):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.mtx").write_text(
        "%%MatrixMarket matrix coordinate integer general\n2 2 1\n1 1 3\n"
    )
    with pytest.raises(UnsafePathError, match="is an empty name; name a file"):
        if write == "write_result":
            io.write_result(_small(), "")
        else:
            io.mtx_to_h5ad("m.mtx", "")
    assert os.listdir(tmp_path) == ["m.mtx"]
