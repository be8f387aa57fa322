"""A hostile user's ninth pass, the command line's and the file handling's part: files and
folders that vbsnmf took for its own by their names alone (a lock file, a killed run's
temporary) and deleted though they were inputs or the user's, a --convert-to file that one
run replaced or deleted under another, two long OUTDIR names that shared their leftovers,
a corrupt ``.raw`` copied into an unreadable result reported as a success, and messages
that did not name the file or the problem. Each case says what went wrong before its fix.

The commands run in this process through `vbsnmf.cli.main`, as tests/test_hostile.py
runs them, on its tiny data (40 cells x 25 genes)."""

from __future__ import annotations

import os
import signal
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.io
from test_hostile import FIT, N_CELLS, SVI, _counts, _fitted, _main, h5ad, tenx

import vbsnmf
import vbsnmf.io._convert
from vbsnmf import cli
from vbsnmf._atomic import temporary_prefix
from vbsnmf._checkpoint import Checkpointer

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")

_AN_HOUR_AGO = time.time() - 3600


def _aged(*entries: Path) -> None:
    """As left an hour ago: old enough for a killed run's leftover."""
    for entry in entries:
        os.utime(entry, (_AN_HOUR_AGO, _AN_HOUR_AGO))


def _mtx(folder: Path) -> Path:
    """An .mtx of genes x cells (the 10x orientation), its cells named by a file given apart."""
    path = folder / "m.mtx"
    scipy.io.mmwrite(path, _counts().T.tocoo())
    return path


def _error(err: str) -> str:
    """The one line of an error, checked to be one line."""
    assert err.count("\n") == 1 and err.startswith("vbsnmf: error: "), err
    return err.strip()


# -- 1: the checkpoint's lock file and temporaries --------------------------------------------
def test_an_input_at_the_checkpoints_lock_file_name_is_refused_not_deleted(tmp_path, capfd):
    """``--col-names .ck.lock --checkpoint ck``: the check before the fit removed the input
    as a killed run's lock file (nothing held it), and the fit ran on default names."""
    _mtx(tmp_path)
    names = tmp_path / ".ck.lock"
    names.write_text("".join(f"cell{i}\n" for i in range(N_CELLS)))
    argv = ["fit", "m.mtx", "--genes-as-rows", "--col-names", names.name, "--checkpoint", "ck"]
    code, _, err, _ = _main([*argv, *FIT, "-o", "out"], capfd, tmp_path)
    assert code == 2
    assert "lock file .ck.lock" in _error(err) and "the input .ck.lock" in err
    assert names.read_text().startswith("cell0\ncell1\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "ck").exists()


def test_a_users_file_at_the_lock_files_name_is_left_and_the_fit_refused(tmp_path, capfd):
    """A file ``.state.lock`` of the user's beside ``--checkpoint state`` was deleted by the
    command line's check; through the API the fit truncated it, wrote its process id into
    it and removed it at the end. Only a file holding what vbsnmf writes into its lock
    files (a process id) is taken for a killed run's."""
    h5ad(tmp_path)
    notes = tmp_path / ".state.lock"
    notes.write_text("my notes\n")
    argv = ["fit", "small.h5ad", *FIT, "--checkpoint", "state", "-o", "out"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 2 and "not a lock file of vbsnmf's" in _error(err) and ".state.lock" in err
    assert notes.read_text() == "my notes\n" and not (tmp_path / "out").exists()

    model = vbsnmf.VBNMF(2, checkpoint=tmp_path / "state", max_iter=2, n_threads=1)
    with pytest.raises(ValueError, match="not a lock file of vbsnmf's"):
        model.fit(_counts())
    with pytest.raises(vbsnmf.CheckpointError, match="not a lock file of vbsnmf's"):
        with Checkpointer(tmp_path / "state", 1, {}):  # the lock taken as the fit starts
            pass
    assert notes.read_text() == "my notes\n" and not (tmp_path / "state").exists()

    notes.write_text("4194303")  # what a killed fit leaves: its process id, taken over
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 0, err
    assert not notes.exists() and (tmp_path / "state").is_file()


def test_an_input_named_as_a_checkpoint_temporary_is_not_swept(tmp_path, capfd):
    """An old, unlocked input named as a killed save's temporary (``.ck.XXXXXXXX.tmp``)
    was removed as one before the fit read it."""
    _mtx(tmp_path)
    names = tmp_path / ".ck.ab12cd34.tmp"
    names.write_text("".join(f"cell{i}\n" for i in range(N_CELLS)))
    _aged(names)
    argv = ["fit", "m.mtx", "--genes-as-rows", "--col-names", names.name, "--checkpoint", "ck"]
    code, _, err, _ = _main([*argv, *FIT, "-o", "out"], capfd, tmp_path)
    assert code == 0, err
    assert names.read_text().startswith("cell0\n")
    result = ad.read_h5ad(tmp_path / "out" / "result.h5ad")
    assert result.obs_names[0] == "cell0"


# -- 2: OUTDIR's leftovers --------------------------------------------------------------------
def test_folders_named_as_outdirs_temporaries_are_not_deleted_unless_vbsnmfs(tmp_path, capfd):
    """An input folder named as a killed run's temporary beside OUTDIR (a hidden 10x folder
    ``.res.sample01.tmp`` staged by a workflow manager), older than a minute, was deleted
    by the check before the fit read it, as was a folder ``.res.XXXXXXXX.old`` of the
    user's. A leftover is now removed only if it is not an input and holds only what
    vbsnmf writes there."""
    source = tenx(tmp_path).rename(tmp_path / ".res.sample01.tmp")
    backup = tmp_path / ".res.backup01.old"  # the user's, not an input
    (backup / "previous").mkdir(parents=True)
    (backup / "previous" / "notes.txt").write_text("the user's only copy\n")
    killed = tmp_path / ".res.k1ll3d00.tmp"  # a killed run's: removed
    killed.mkdir()
    (killed / "params.json").write_text("{}\n")
    _aged(source, backup, backup / "previous", killed)
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "result.h5ad").write_text("earlier output\n")
    code, _, err, _ = _main(["fit", source.name, *FIT, "-o", "res", "--force"], capfd, tmp_path)
    assert code == 0, err
    assert sorted(p.name for p in source.iterdir()) == [
        "barcodes.tsv.gz",
        "features.tsv.gz",
        "matrix.mtx.gz",
    ]
    assert (backup / "previous" / "notes.txt").read_text() == "the user's only copy\n"
    assert not killed.exists()
    assert (tmp_path / "res" / "result.h5ad").stat().st_size > 100


# -- 3: --convert-to --------------------------------------------------------------------------
def _converting_meanwhile(monkeypatch, target: Path, then=None) -> None:
    """While this run converts, another run (given the same --convert-to) makes ``target``;
    then ``then`` is raised, if given (this run stopped as it converts)."""
    write = vbsnmf.io._convert._write

    def racing(*args, **kwargs):
        write(*args, **kwargs)
        target.write_text("another run's converted counts\n")
        if then is not None:
            raise then

    monkeypatch.setattr(vbsnmf.io._convert, "_write", racing)


def test_convert_to_never_replaces_a_file_another_run_made(tmp_path, capfd, monkeypatch):
    """Two runs given one --convert-to both passed its "must not exist" check; the second
    to finish converting replaced the first's file (a rename) and went on. Now the name is
    taken only by a new file (a hard link, which fails if one is there): refused, and the
    other run's file kept."""
    tenx(tmp_path)
    target = tmp_path / "conv.h5ad"
    _converting_meanwhile(monkeypatch, target)
    argv = ["fit", "tenx", *FIT, *SVI, "--convert-to", "conv.h5ad", "-o", "out"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 2
    assert "--convert-to conv.h5ad was made by another process" in _error(err)
    assert target.read_text() == "another run's converted counts\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.h5ad", "tenx"]


def test_a_stopped_run_removes_only_the_convert_to_file_it_made(tmp_path, capfd, monkeypatch):
    """A run stopped by SIGTERM while converting unlinked the --convert-to path, though the
    file there was another run's (which was streaming from it and then failed with a raw
    "Unable to synchronously open file"). It removes a file only while it is the one it
    made (its device and inode)."""
    tenx(tmp_path)
    target = tmp_path / "conv.h5ad"
    _converting_meanwhile(monkeypatch, target, then=cli.Stopped(signal.SIGTERM))
    argv = ["fit", "tenx", *FIT, *SVI, "--convert-to", "conv.h5ad", "-o", "out"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 143 and "terminated (SIGTERM); no output written" in err
    assert target.read_text() == "another run's converted counts\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.h5ad", "tenx"]


def test_a_failed_run_still_removes_the_convert_to_file_it_made(tmp_path, capfd, monkeypatch):
    """The other half of the contract: its own converted file goes with a failed run."""
    tenx(tmp_path)

    def failing(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(cli, "_fit", failing)
    argv = ["fit", "tenx", *FIT, *SVI, "--convert-to", "conv.h5ad", "-o", "out"]
    code, _, _, _ = _main(argv, capfd, tmp_path)
    assert code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tenx"]


# -- 4: long OUTDIR names ---------------------------------------------------------------------
def test_long_outdir_names_alike_do_not_share_leftovers(tmp_path):
    """Names were cut to 241 bytes for their temporaries: two OUTDIRs alike that far shared
    them, and a run for one deleted the other's earlier output, kept aside by a killed
    ``--force`` (and was refused while the other was written)."""
    common = "r" * 241
    first, second = tmp_path / f"{common}_sampleA", tmp_path / f"{common}_sampleB"
    for suffix in (".tmp", ".old", ".tmp.h5ad"):
        assert temporary_prefix(first, suffix) != temporary_prefix(second, suffix)
        assert len(os.fsencode(temporary_prefix(first, suffix) + "x" * 8 + suffix)) <= 255
    first.mkdir()
    (first / "result.h5ad").write_text("A's output\n")
    kept = tmp_path / (temporary_prefix(second, ".old") + "k1ll3d00.old")
    (kept / "previous").mkdir(parents=True)
    (kept / "previous" / "result.h5ad").write_text("B's only copy\n")
    _aged(kept, kept / "previous")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.io.check_outdir(first, force=True)
    assert (kept / "previous" / "result.h5ad").read_text() == "B's only copy\n"


# -- 5: a corrupt .raw, streamed --------------------------------------------------------------
def test_svi_refuses_an_h5ad_whose_raw_does_not_fit_its_cells(tmp_path, capfd):
    """The streamed route read X and copied .raw into result.h5ad as it was: a raw/X whose
    shape says fewer cells than obs gave exit 0 and a result.h5ad that neither anndata nor
    ``vbsnmf umap`` could open. The in-memory route refused it (exit 2); now both do."""
    path = h5ad(tmp_path)
    with h5py.File(path, "r+") as stored:
        stored.copy("X", "raw/X")
        stored.copy("var", "raw/var")
        stored["raw/X"].attrs["shape"] = np.array([N_CELLS - 7, 25])
    code, _, err, _ = _main(["fit", "small.h5ad", *FIT, *SVI, "-o", "out"], capfd, tmp_path)
    assert code == 2
    assert _error(err) == (
        f"vbsnmf: error: small.h5ad: raw/X's shape [{N_CELLS - 7}, 25] does not fit the "
        f"{N_CELLS} rows of obs"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.h5ad"]


# -- 6: umap of an edited result --------------------------------------------------------------
def test_umap_refuses_usages_narrower_than_the_fit(tmp_path, capfd):
    """A result whose usages have fewer columns than the fit has factors failed with
    "internal error (IndexError ...)", exit 1, as the dominant factors were picked."""
    result = ad.read_h5ad(_fitted(tmp_path))
    result.obsm["X_nmf_usage"] = result.obsm["X_nmf_usage"][:, :1]
    result.write_h5ad(tmp_path / "edited.h5ad")
    code, _, err, _ = _main(["umap", "edited.h5ad", "-o", "u.png"], capfd, tmp_path)
    assert code == 2
    assert _error(err).startswith("vbsnmf: error: edited.h5ad: adata.obsm['X_nmf_usage'] has")
    assert "not one column per factor of the fit's 2" in err
    assert not (tmp_path / "u.png").exists()


# -- 7: messages ------------------------------------------------------------------------------
def test_an_x_of_strings_is_named_by_its_file(tmp_path, capfd):
    """ "adata.X must hold numbers, got dtype <U1": the user gave a file, not an AnnData."""
    ad.AnnData(np.ones((20, 10), dtype=np.float32)).write_h5ad(tmp_path / "strx.h5ad")
    with h5py.File(tmp_path / "strx.h5ad", "r+") as stored:
        del stored["X"]
        stored["X"] = np.array([[b"a"] * 10] * 20)
    code, _, err, _ = _main(["fit", "strx.h5ad", *FIT, "-o", "out"], capfd, tmp_path)
    assert code == 2
    assert _error(err).startswith("vbsnmf: error: strx.h5ad (X) must hold numbers")


def test_a_matrix_market_array_file_is_refused_for_its_format(tmp_path, capfd):
    """--solver svi on an *array* file said "converts coordinate integer or real files,
    not integer": it is integer; its format, array, is what is refused. (Twenty-third
    pass: refused only when --convert-to asks for its conversion; without it, the dense
    matrix is read into memory and fitted, as an .h5ad whose X does not stream.)"""
    array = "%%MatrixMarket matrix array integer general\n3 2\n1\n2\n3\n4\n5\n6\n"
    (tmp_path / "arr.mtx").write_text(array)
    argv = ["fit", "arr.mtx", "--cells-as-rows", *FIT, "-k", "1", *SVI, "-o", "out"]
    code, _, err, _ = _main([*argv, "--convert-to", "arr.h5ad"], capfd, tmp_path)
    assert code == 2
    assert _error(err).startswith(  # in the command's words (twenty-sixth pass)
        "vbsnmf: error: --convert-to converts a sparse (coordinate) Matrix Market file; "
        "arr.mtx holds a dense one (the array format)"
    )
    assert not (tmp_path / "arr.h5ad").exists()
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 0, err


# -- a second look at the fixes above ---------------------------------------------------------
def test_a_users_file_named_as_a_checkpoint_temporary_is_left(tmp_path):
    """Through the API (no input list of a command line), a user's old notes named as a
    killed save's temporary were deleted by name and age; a killed save's temporary (the
    start of an .npz, a zip archive) still goes."""
    notes = tmp_path / ".ck.notes001.tmp"
    notes.write_text("the user's notes\n")
    killed = tmp_path / ".ck.k1ll3d00.tmp"
    killed.write_bytes(b"PK\x03\x04 a killed save's first bytes")
    _aged(notes, killed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.VBNMF(2, max_iter=2, n_threads=1, checkpoint=tmp_path / "ck").fit(_counts())
    assert notes.read_text() == "the user's notes\n"
    assert not killed.exists()


def test_a_backed_x_named_as_a_checkpoint_temporary_is_not_deleted(tmp_path, monkeypatch):
    """``VBNMF(checkpoint="ck").fit(backed)``: only a path X counted as an input, so with
    HDF5's file locking off (as on many clusters) the backed file being fitted,
    ``.ck.sample01.tmp``, was deleted as a killed save's temporary before the fit."""
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "FALSE")
    source = h5ad(tmp_path, ".ck.sample01.tmp")
    _aged(source)
    expected = source.read_bytes()
    backed = ad.read_h5ad(source, backed="r")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = vbsnmf.VBNMF(
                2, solver="svi", n_epochs=1, n_threads=1, checkpoint=tmp_path / "ck"
            )
            for X in (backed, backed.X):
                assert source.exists()
                model.fit(X)
    finally:
        backed.file.close()
    assert source.read_bytes() == expected


def test_a_stop_as_outdir_takes_its_place_keeps_the_convert_to_file(tmp_path, capfd, monkeypatch):
    """A SIGINT held while OUTDIR took its place ends a run whose output is complete
    ("written in full"); the --convert-to file it made was removed all the same."""
    tenx(tmp_path)
    convert_and_fit = cli._convert_and_fit

    def stopped_as_written(args, *rest):
        convert_and_fit(args, *rest)
        stop = KeyboardInterrupt()
        stop.written = Path(args.outdir)
        raise stop

    monkeypatch.setattr(cli, "_convert_and_fit", stopped_as_written)
    argv = ["fit", "tenx", *FIT, *SVI, "--convert-to", "conv.h5ad", "-o", "out"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 130, err
    assert (tmp_path / "conv.h5ad").stat().st_size > 0
    assert ad.read_h5ad(tmp_path / "conv.h5ad").shape == (N_CELLS, 25)


@pytest.mark.parametrize("kind", ["dangling link", "link", "folder", "fifo"])
def test_something_not_a_lock_file_at_its_name_is_refused(tmp_path, kind):
    """A symbolic link (dangling or not), a folder or a FIFO at ``.ck.lock`` was taken as
    "no lock to be had": the fit ran without one, and two fits could hold one checkpoint."""
    lock = tmp_path / ".ck.lock"
    if kind == "dangling link":
        lock.symlink_to(tmp_path / "nowhere")
    elif kind == "link":
        (tmp_path / "mine.txt").write_text("the user's\n")
        lock.symlink_to(tmp_path / "mine.txt")
    elif kind == "folder":
        lock.mkdir()
    else:
        os.mkfifo(lock)
    with pytest.raises(ValueError, match="not a lock file of vbsnmf's"):
        vbsnmf.VBNMF(2, max_iter=2, n_threads=1, checkpoint=tmp_path / "ck").fit(_counts())
    assert os.path.lexists(lock) and not (tmp_path / "ck").exists()


def test_convert_to_at_the_checkpoints_lock_file_name_is_refused_first(tmp_path, capfd):
    """``--convert-to .ck.lock --checkpoint ck`` converted, then failed with "checkpoint ck
    belongs to a fit running now": the other process was this run's own converted file."""
    tenx(tmp_path)
    argv = ["fit", "tenx", *FIT, *SVI, "--convert-to", ".ck.lock", "--checkpoint", "ck"]
    code, _, err, _ = _main([*argv, "-o", "out"], capfd, tmp_path)
    assert code == 2
    assert "is the name of --checkpoint's lock file" in _error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tenx"]


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file names are UTF-8 only")
def test_a_checkpoint_name_that_is_not_utf8_is_refused_before_the_fit(tmp_path, capfd):
    """The fit ran and saved its checkpoints, then writing result.h5ad (which records the
    path) failed with "'utf-8' codec can't encode characters", naming neither the option
    nor the file."""
    _mtx(tmp_path)
    name = os.fsdecode(b"ck\xff\xfe")
    argv = ["fit", "m.mtx", "--genes-as-rows", *FIT, "--checkpoint", name, "-o", "out"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 2 and "--checkpoint" in _error(err) and "not valid UTF-8" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mtx"]
