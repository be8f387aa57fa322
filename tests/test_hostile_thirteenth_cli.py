"""A hostile user's thirteenth pass, the command line's part: ``umap -o`` into a folder
that cannot be written (``/proc``), under a name too long or onto a pipe computed the
neighbour graph and the UMAP first and then failed with a bare ``[Errno 2] ...``;
``fit --convert-to`` there failed the same bare way; an ``.mtx`` with cells as rows whose
entries are not sorted by cell was refused with advice (``mmwrite`` of a CSC) that writes
it unsorted again; ``umap`` refused the cells projected onto a fit (`vbsnmf.tl.project`)
that `vbsnmf.pl.umap`, which it calls, draws, and a damaged fit record's error did not
name the file; and ``fit --use-raw`` on a file without .raw said ``adata.raw is None``.
Each case says what went wrong before its fix.

The commands run in this process through `vbsnmf.cli.main`, as tests/test_hostile.py
runs them, on its tiny data (40 cells x 25 genes)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.io
from test_hostile import FIT, SVI, _counts, _main, h5ad

import vbsnmf
from vbsnmf import cli


def _error(err: str) -> str:
    """The one line of an error, checked to be one line."""
    assert err.count("\n") == 1 and err.startswith("vbsnmf: error: "), err
    return err.strip()


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> Path:
    """A fit's result.h5ad, made through the API (seconds less than the command)."""
    adata = ad.AnnData(_counts())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(adata, 2, max_iter=3, random_state=0, n_threads=1)
    path = tmp_path_factory.mktemp("result") / "result.h5ad"
    adata.write_h5ad(path)
    return path


def _unwritable_folder() -> Path:
    """/proc: a folder no file can be made in, whoever runs the tests (root too)."""
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    return Path("/proc")


def _figure_targets(folder: Path) -> dict:
    os.mkfifo(folder / "pipe.png")
    return {
        "unwritable folder": _unwritable_folder() / "u.png",
        "name too long": folder / ("u" * 300 + ".png"),
        "pipe": folder / "pipe.png",
    }


# -- 1: umap -o checked before the work -----------------------------------------------------
@pytest.mark.parametrize("case", ["unwritable folder", "name too long", "pipe"])
def test_umap_checks_the_figure_path_before_the_graph(case, result, tmp_path, capfd, monkeypatch):
    """``umap -o /proc/u.png`` and ``-o pipe.png`` computed the neighbour graph and UMAP
    (minutes on a large result) and only then failed, with a bare ``[Errno 2] No such
    file or directory`` (/proc exists) or ``[Errno 22]``; a name too long failed first
    but as a bare ``[Errno 36]``. fit checks OUTDIR before any work; so does umap now."""
    target = _figure_targets(tmp_path)[case]
    drawn = []
    monkeypatch.setattr(cli, "_draw_umap", lambda *args, **kwds: drawn.append(args))
    code, out, err, _ = _main(["umap", result, "-o", target], capfd, tmp_path)
    assert (code, out, drawn) == (2, "", [])
    assert _error(err).startswith(f"vbsnmf: error: cannot write -o {target}: ")
    assert "[Errno" not in err


def test_umap_still_writes_through_a_link_to_a_writable_folder(result, tmp_path, capfd):
    """The check follows a link as the writer does: the figure lands where it points."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "u.png").symlink_to(tmp_path / "elsewhere" / "real.png")
    code, _, err, _ = _main(["umap", result, "-o", "u.png"], capfd, tmp_path)
    assert code == 0, err
    assert (tmp_path / "u.png").is_symlink()
    assert (tmp_path / "elsewhere" / "real.png").read_bytes().startswith(b"\x89PNG")


# -- 2: fit --convert-to checked before the work --------------------------------------------
def _genes_by_cells_mtx(folder: Path) -> Path:
    """in.mtx: genes as rows, written by cell (a CSC of genes x cells), as 10x does."""
    scipy.io.mmwrite(folder / "in.mtx", _counts().T.tocsc())
    return folder / "in.mtx"


@pytest.mark.parametrize("case", ["unwritable folder", "name too long"])
def test_convert_to_that_cannot_be_written_is_refused_by_name(case, tmp_path, capfd):
    """``--convert-to /proc/c.h5ad`` failed as ``[Errno 2] No such file or directory:
    '/proc/c.h5ad'`` and a name too long as a bare ``[Errno 36]``, where --checkpoint and
    OUTDIR say "cannot write ..."; now refused so before any work, nothing written."""
    source = _genes_by_cells_mtx(tmp_path)
    target = {
        "unwritable folder": _unwritable_folder() / "c.h5ad",
        "name too long": tmp_path / ("c" * 300 + ".h5ad"),
    }[case]
    argv = ["fit", source, "--genes-as-rows", *FIT, *SVI, "-o", "out", "--convert-to", target]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 2
    assert _error(err).startswith(f"vbsnmf: error: cannot write --convert-to {target}: ")
    assert "[Errno" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mtx"]


# -- 3: the advice for an .mtx not sorted by cell -------------------------------------------
def test_unsorted_cells_as_rows_mtx_is_advised_a_file_that_streams(tmp_path, capfd):
    """With --cells-as-rows, a file written gene by gene was refused with "re-save with
    scipy.io.mmwrite of a CSC", which writes cells x genes gene by gene again: refused
    again. The advice now names the CSR (row by row) that streams, and it does."""
    counts = _counts()
    scipy.io.mmwrite(tmp_path / "by_gene.mtx", counts.tocsc())
    argv = ["fit", "by_gene.mtx", "--cells-as-rows", *FIT, *SVI, "-o", "out"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 2
    assert _error(err).endswith("re-save with scipy.io.mmwrite of a CSR of cells x genes)")
    scipy.io.mmwrite(tmp_path / "by_cell.mtx", counts.tocsr())
    argv = ["fit", "by_cell.mtx", "--cells-as-rows", *FIT, *SVI, "-o", "out"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 0, err
    fitted = ad.read_h5ad(tmp_path / "out" / "result.h5ad")
    assert fitted.shape == counts.shape
    np.testing.assert_array_equal(fitted.X.toarray(), counts.toarray())


def test_unsorted_genes_as_rows_mtx_is_still_advised_a_csc(tmp_path, capfd):
    """With genes as rows (10x's layout) a CSC of genes x cells is what streams."""
    scipy.io.mmwrite(tmp_path / "by_gene.mtx", _counts().T.tocsr())
    argv = ["fit", "by_gene.mtx", "--genes-as-rows", *FIT, *SVI, "-o", "out"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 2
    assert _error(err).endswith("re-save with scipy.io.mmwrite of a CSC of genes x cells)")


# -- 4: umap of a projection, and a damaged record named by its file ------------------------
def test_umap_draws_cells_projected_onto_a_fit(result, tmp_path, capfd):
    """``umap`` of new cells projected onto a fit (`vbsnmf.tl.project`, written to an
    .h5ad) was refused: "holds no NMF fit under --key nmf; make one with 'vbsnmf fit'",
    though `vbsnmf.pl.umap`, which it calls, takes a projection. Now it is drawn."""
    reference = ad.read_h5ad(result)
    new = ad.AnnData(_counts(seed=1))
    vbsnmf.tl.project(new, reference)
    new.write_h5ad(tmp_path / "projected.h5ad")
    code, out, err, _ = _main(["umap", "projected.h5ad", "-o", "p.png"], capfd, tmp_path)
    assert (code, out.strip()) == (0, "wrote p.png"), err
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


def test_umap_names_the_file_of_a_damaged_fit_record(result, tmp_path, capfd):
    """A record edited by hand (``active`` not one boolean per factor) was reported as
    ``adata.uns['nmf']['active'] is damaged``, naming no file."""
    adata = ad.read_h5ad(result)
    adata.uns["nmf"]["active"] = np.array([5, 7])
    adata.write_h5ad(tmp_path / "edited.h5ad")
    code, _, err, _ = _main(["umap", "edited.h5ad", "-o", "e.png"], capfd, tmp_path)
    assert code == 2
    assert _error(err).startswith("vbsnmf: error: edited.h5ad: adata.uns['nmf']['active']")
    assert not (tmp_path / "e.png").exists()


def test_umap_of_a_file_without_a_fit_says_fit_or_projection(tmp_path, capfd):
    h5ad(tmp_path)
    code, _, err, _ = _main(["umap", "small.h5ad", "-o", "u.png"], capfd, tmp_path)
    assert code == 2
    assert "holds no NMF fit or projection under --key nmf" in _error(err)


# -- 5: --use-raw without .raw ----------------------------------------------------------------
def test_use_raw_without_raw_names_the_file(tmp_path, capfd):
    """``fit in.h5ad --use-raw`` on a file without .raw said "--use-raw but adata.raw is
    None", naming a Python variable, not the file."""
    h5ad(tmp_path)
    argv = ["fit", "small.h5ad", "--use-raw", *FIT, "-o", "out"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 2
    assert _error(err) == "vbsnmf: error: --use-raw but small.h5ad holds no .raw"
    assert not (tmp_path / "out").exists()


# -- a name ending with a separator: a folder meant, a file written ---------------------------
def test_a_file_option_ending_with_a_separator_is_refused(result, tmp_path, capfd, monkeypatch):
    """``umap -o fig.png/`` and ``fit --convert-to cv.h5ad/`` wrote files named fig.png and
    cv.h5ad: pathlib drops the separator, so a user who meant a folder got a file."""
    drawn = []
    monkeypatch.setattr(cli, "_draw_umap", lambda *args, **kwds: drawn.append(args))
    code, out, err, _ = _main(["umap", result, "-o", "fig.png/"], capfd, tmp_path)
    assert (code, out, drawn) == (2, "", [])
    assert _error(err) == "vbsnmf: error: -o fig.png/ names a folder; name a file"
    source = _genes_by_cells_mtx(tmp_path)
    argv = ["fit", source, "--genes-as-rows", *FIT, *SVI, "-o", "out", "--convert-to", "cv.h5ad/"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 2
    assert _error(err) == "vbsnmf: error: --convert-to cv.h5ad/ names a folder; name a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mtx"]
