"""The thirty-eighth pass over the twins the thirty-seventh left: code written twice, now one
implementation, and one defect. Guards (pass on the code before too, as a restructure
changes no behaviour) pin what both callers of each shared piece do:

- `_atomic.held_by_writer` (another run writing OUTDIR?) and `_atomic.clear_temporary` (a
  killed run's temporary removed) share one probe of a temporary's lock (`_lock_state`):
  held by a live writer, free, or not to be told.
- `VBNMF.fit` / `tl.count_split` ("N negative entries at (row, column) ...") and
  `fit_triplets` ("N negative counts, the first at position P (row R, column C)") share one
  scan of the bad counts (`_validation.bad_count_problems`), each in its own words.
- `pl.factors`' ``vmax`` ("vmax must be positive and finite (the scale starts at 0)") and
  the parameters of `_validation.check_positive` share one check of a positive finite
  number.

Defect, failing on the code before: three messages of the plots named a path the user gave
bare (a figure file of an unknown format or needing TeX, ``sc.settings.figdir`` a file),
where the rest of the package quotes one holding a space (`vbsnmf._quoting.quoted_path`).
"""

from __future__ import annotations

import fcntl
import os
import re
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from simulated import poisson_gamma_adata

from vbsnmf import VBNMF, _atomic, fit_triplets, pl, tl
from vbsnmf._quoting import quoted_path


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


# -- 1: the lock probe of held_by_writer and clear_temporary --------------------------------
_OLD = time.time() - 3600  # unchanged for an hour: abandoned once its lock is free


def _held(path: Path, *, folder: bool = True) -> int:
    """A descriptor of ``path`` holding its lock, as a live writer holds it."""
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def test_a_folder_a_live_writer_holds_is_in_use_to_both_and_kept(tmp_path):
    entry = tmp_path / ".out.abc.tmp"
    entry.mkdir()
    (entry / "part").write_text("x")
    os.utime(entry, (_OLD, _OLD))
    lock = _held(entry)
    try:
        assert _atomic.held_by_writer(entry) is True
        assert _atomic.clear_temporary(entry) == _atomic.IN_USE
        assert (entry / "part").exists()
    finally:
        os.close(lock)
    # its writer gone: free to both, and removed as it has not changed for an hour
    assert _atomic.held_by_writer(entry) is False
    assert _atomic.clear_temporary(entry) == _atomic.REMOVED
    assert not entry.exists()


def test_a_free_folder_changed_within_the_minute_is_kept(tmp_path):
    entry = tmp_path / ".out.abc.tmp"
    entry.mkdir()
    assert _atomic.held_by_writer(entry) is False
    assert _atomic.clear_temporary(entry) == _atomic.KEPT
    assert entry.is_dir()


@pytest.mark.parametrize("kind", ["file", "link to a held folder", "missing"])
def test_a_folder_probe_of_what_is_no_folder_tells_nothing_and_deletes_nothing(tmp_path, kind):
    entry = tmp_path / ".out.abc.tmp"
    held = tmp_path / "held"
    held.mkdir()
    lock = _held(held)
    try:
        if kind == "file":
            entry.write_text("mine")
        elif kind == "link to a held folder":
            entry.symlink_to(held)
        assert _atomic.held_by_writer(entry) is False
        assert _atomic.clear_temporary(entry) == _atomic.KEPT
        assert os.path.lexists(entry) == (kind != "missing")
    finally:
        os.close(lock)


def test_file_temporaries_held_free_foreign_or_not_files(tmp_path):
    entry = tmp_path / ".model.ckpt.abc.tmp"
    entry.write_bytes(b"saved")
    os.utime(entry, (_OLD, _OLD))
    lock = _held(entry, folder=False)
    try:
        assert _atomic.clear_temporary(entry, folder=False) == _atomic.IN_USE
    finally:
        os.close(lock)
    assert _atomic.clear_temporary(entry, folder=False, ours=lambda _: False) == _atomic.FOREIGN
    assert entry.exists()
    assert _atomic.clear_temporary(entry, folder=False, ours=lambda _: True) == _atomic.REMOVED
    assert not entry.exists()
    pipe = tmp_path / ".model.ckpt.fifo.tmp"
    os.mkfifo(pipe)  # opened without waiting for a writer, and left
    assert _atomic.clear_temporary(pipe, folder=False) == _atomic.KEPT
    assert pipe.exists()


def test_without_advisory_locks_neither_probe_tells_and_nothing_is_deleted(tmp_path, monkeypatch):
    entry = tmp_path / ".out.abc.tmp"
    entry.mkdir()
    os.utime(entry, (_OLD, _OLD))
    monkeypatch.setattr(_atomic, "fcntl", None)
    assert _atomic.held_by_writer(entry) is False
    assert _atomic.clear_temporary(entry) == _atomic.KEPT
    assert entry.is_dir()


# -- 2: one scan of bad counts, in each caller's words --------------------------------------
# a NaN at 1, negatives at 2 and 3, an infinity at 4: all in column 0
_ROWS, _COLS = np.arange(6), np.zeros(6, dtype=np.int64)
_COUNTS = np.array([1.0, np.nan, -1.0, -2.0, np.inf, 3.0])


def test_fit_triplets_names_each_kind_by_its_first_position():
    with pytest.raises(ValueError) as caught:
        fit_triplets(_ROWS, _COLS, _COUNTS, (6, 2), 1, max_iter=2)
    assert str(caught.value) == (
        "Negative values in data: counts must be non-negative and finite; found 1 NaN count, "
        "the first at position 1 (row 1, column 0); 1 infinite count, the first at position 4 "
        "(row 4, column 0); 2 negative counts, the first at position 2 (row 2, column 0)"
    )


def test_fit_triplets_without_negatives_has_no_lead():
    with pytest.raises(ValueError) as caught:
        fit_triplets(_ROWS[:2], _COLS[:2], _COUNTS[:2], (6, 2), 1, max_iter=2)
    assert str(caught.value) == (
        "counts must be non-negative and finite; found 1 NaN count, the first at position 1 "
        "(row 1, column 0)"
    )


def test_a_matrix_and_a_split_name_bad_entries_by_row_and_column():
    matrix = sp.coo_matrix((_COUNTS, (_ROWS, _COLS)), shape=(6, 2)).tocsr()
    found = (
        "found 1 NaN entry at (row, column) (1, 0); 1 infinite entry at (row, column) "
        "(4, 0); 2 negative entries at (row, column) (2, 0), (3, 0)"
    )
    with pytest.raises(ValueError) as caught:
        VBNMF(1, max_iter=2).fit(matrix)
    assert str(caught.value) == (
        f"Negative values in data: X must hold non-negative finite counts; {found}"
    )
    with pytest.raises(ValueError) as caught:
        tl.count_split(matrix)
    assert str(caught.value) == f"counts must be non-negative and finite; {found}"


def test_more_than_three_bad_entries_are_cut_after_three():
    matrix = sp.csr_matrix(-np.ones((5, 1)))
    with pytest.raises(ValueError, match=re.escape("(0, 0), (1, 0), (2, 0), ...")):
        VBNMF(1, max_iter=2).fit(matrix)


# -- 3 and 5: the plots ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def _fitted():
    adata = poisson_gamma_adata(n_cells=40, n_genes=12, k=3)
    _quiet(tl.nmf, adata, 3, random_state=0, max_iter=10, n_threads=1)
    adata.obsm["X_umap"] = adata.obsm["X_nmf"][:, :2].copy()
    return adata


@pytest.fixture
def fitted(_fitted):
    return _fitted.copy()


@pytest.mark.parametrize(
    ("vmax", "shown"),
    [(0.0, "0.0"), (-1.0, "-1.0"), (float("nan"), "nan"), (float("inf"), "inf")],
)
def test_factors_vmax_not_positive_and_finite_keeps_its_words(fitted, vmax, shown):
    with pytest.raises(ValueError) as caught:
        pl.factors(fitted, vmax=vmax, show=False)
    assert str(caught.value) == (
        f"vmax must be positive and finite (the scale starts at 0), got {shown}"
    )


def test_factors_vmax_beyond_floats_and_a_positive_parameter_keep_their_words(fitted):
    with pytest.raises(ValueError) as caught:
        pl.factors(fitted, vmax=10**400, show=False)
    assert str(caught.value) == (
        "vmax must be positive and finite (the scale starts at 0), got one beyond floats"
    )
    counts = sp.csr_matrix(np.ones((4, 3)))
    with pytest.raises(ValueError) as caught:
        VBNMF(1, prior_shape=-1.0).fit(counts)
    assert str(caught.value) == "prior_shape must be a positive finite number, got -1.0"
    with pytest.raises(ValueError) as caught:
        VBNMF(1, prior_shape=10**400).fit(counts)
    assert str(caught.value) == (
        "prior_shape must be a positive finite number, got one beyond floats"
    )
    with pytest.raises(TypeError, match=r"^prior_shape must be a number, got '1'"):
        VBNMF(1, prior_shape="1").fit(counts)


@pytest.fixture
def no_tex(tmp_path, monkeypatch):
    monkeypatch.setitem(matplotlib.rcParams, "pgf.texsystem", "lualatex")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no TeX on it


def test_a_pgf_figure_without_tex_names_its_path_quoted(fitted, tmp_path, no_tex):
    folder = tmp_path / "my figures"
    folder.mkdir()
    with pytest.raises(ValueError) as caught:
        pl.elbo(fitted, show=False, save=folder / "elbo.pgf")
    assert str(caught.value).startswith(
        f"{quoted_path(folder / 'elbo.pgf')}: a .pgf figure needs lualatex"
    )


def test_a_figure_of_an_unknown_format_names_its_path_quoted(fitted, tmp_path):
    folder = tmp_path / "my figures"
    folder.mkdir()
    with pytest.raises(ValueError) as caught:
        pl.elbo(fitted, show=False, save=folder / "elbo.xyz")
    assert str(caught.value).startswith(
        f"cannot save the figure as {quoted_path(folder / 'elbo.xyz')}: matplotlib writes no "
        "'xyz' files"
    )
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("under", [False, True], ids=["a file", "under a file"])
def test_figdir_a_file_names_it_quoted(fitted, tmp_path, under):
    notes = tmp_path / "my notes"
    notes.write_text("mine")
    figdir = notes / "figures" if under else notes
    before = sc.settings.figdir
    sc.settings.figdir = figdir
    try:
        with pytest.raises(NotADirectoryError) as caught:
            pl.elbo(fitted, show=False, save=True)
    finally:
        sc.settings.figdir = before
    assert str(caught.value).startswith(
        f"sc.settings.figdir ({quoted_path(figdir)}), where save=True writes the figure, is "
        f"not a folder: {quoted_path(notes)} is a file;"
    )
    assert notes.read_text() == "mine"
