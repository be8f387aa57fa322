"""Loaders for the bundled 10x folders (matrix.mtx.gz genes x cells, features, barcodes),
read by `vbsnmf.io.read_10x` (scanpy's reader, with vbsnmf's checks)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from anndata.utils import make_index_unique

from .._validation import check_flag
from ..io import read_10x
from ..io._errors import ReadError, check_exists, describe_error

_DATA = Path(__file__).parent / "data"
# The bundled data sets, by the names `data_dir` takes.
_BUNDLED = ("pbmc_facs", "pbmc_facs/test", "pbmc_tiny_v3")
# The columns of a pbmc_facs folder's cells.csv, one row per barcode.
_CELL_COLUMNS = ("barcode", "celltype", "subpop")
# The files of each bundled folder (a 10x folder; pbmc_facs's also its cells.csv).
_FILES = ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz")
_CELLS_FILE = "cells.csv"


def data_dir(name: str) -> Path:
    """Folder of a bundled data set: ``"pbmc_facs"``, ``"pbmc_facs/test"`` or ``"pbmc_tiny_v3"``.

    Raises
    ------
    TypeError
        ``name`` is not a str.
    ValueError
        ``name`` is none of the bundled data sets.
    vbsnmf.io.ReadError
        One of the data set's files is missing or out of reach (no permission to search
        its folder): the installed copy is damaged.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a data set's name (a str), got {name!r}")
    if name not in _BUNDLED:
        raise ValueError(
            f"no bundled data set {name!r}; the bundled ones are "
            + ", ".join(repr(bundled) for bundled in _BUNDLED)
        )
    folder = _DATA / name
    files = _FILES + ((_CELLS_FILE,) if name.startswith("pbmc_facs") else ())
    for file in files:
        path = folder / file
        try:
            os.stat(path)
        except FileNotFoundError:
            pass  # missing: below
        except OSError as error:
            # there, but out of reach (no permission to search its folder): pathlib's is_file
            # raised a bare PermissionError, no ReadError (from Python 3.13, "missing")
            reason = (error.strerror or type(error).__name__).lower()
            raise ReadError(
                path, f"{reason}: the bundled data set {name!r} is damaged; reinstall vbsnmf"
            ) from None
        if not path.is_file():
            # a name of the package's own: its copy lost the file, not a wrong name (a lost
            # features file got the 10x reader's advice to rename the folder's files)
            raise ReadError(
                path,
                f"missing: the bundled data set {name!r} is damaged; reinstall vbsnmf",
            )
    return folder


@contextlib.contextmanager
def _bundled(name: str) -> Iterator[None]:
    """A `ReadError` in the block (a file of the bundled data set ``name`` truncated or
    malformed) says that the installed copy is damaged, as a missing file's does
    (`data_dir`): the reader's own reason alone ("truncated: the compressed stream ends
    early") read as a fault of the user's file."""
    try:
        yield
    except ReadError as error:
        raise ReadError(
            error.path,
            f"{error.reason}; the bundled data set {name!r} is damaged; reinstall vbsnmf",
        ) from None


def _read_cells(folder: Path) -> pd.DataFrame:
    """The ``cells.csv`` of a pbmc_facs folder, indexed by barcode (in file order), with
    ``celltype`` and ``subpop`` as categoricals; a `ReadError` naming the file if it is
    missing, unreadable or lacks one of its columns."""
    path = folder / _CELLS_FILE
    check_exists(path)
    try:
        cells = pd.read_csv(path, dtype=str)
    except (OSError, ValueError) as error:  # unreadable, not CSV text (pandas' errors)
        raise ReadError(path, describe_error(error)) from None
    missing = [column for column in _CELL_COLUMNS if column not in cells.columns]
    if missing:
        raise ReadError(
            path,
            f"lacks columns it has when installed: {', '.join(missing)}",
        )
    # an empty field reads as NaN: a cell without its gate or group would load as a cell of
    # no population, and every score against the sorted populations would leave it out
    empty = cells[list(_CELL_COLUMNS)].isna()
    if empty.to_numpy().any():
        line = int(np.flatnonzero(empty.any(axis=1).to_numpy())[0]) + 2  # after the header
        columns = ", ".join(empty.columns[empty.any(axis=0)])
        raise ReadError(
            path,
            f"has empty {columns} fields (the first on line {line})",
        )
    cells = cells.set_index("barcode")
    cells.index.name = None
    for column in ("celltype", "subpop"):
        cells[column] = pd.Categorical(cells[column])
    return cells


def _with_obs(adata: ad.AnnData, folder: Path, obs: pd.DataFrame) -> ad.AnnData:
    """``adata`` with ``obs`` (one row per barcode, in file order) attached."""
    barcodes = make_index_unique(pd.Index(obs.index.to_numpy()))
    if not np.array_equal(barcodes.to_numpy(), adata.obs_names.to_numpy()):
        raise ReadError(
            folder / _CELLS_FILE, "its barcodes disagree with barcodes.tsv.gz (order or number)"
        )
    obs.index = barcodes
    adata.obs = obs
    return adata


def pbmc_facs(test: bool = False) -> ad.AnnData:
    """FACS-sorted PBMCs (Zheng et al. 2017): raw counts, cells x genes.

    Parameters
    ----------
    test
        Return the 100 held-out cells (``test/``) instead of the 3,774 training cells.

    Returns
    -------
    AnnData with ``X`` raw counts (CSR, float32 holding integers), ``.var_names`` gene
    symbols (made unique), ``.var['gene_ids']``, and ``.obs['celltype']`` (10 FACS gates)
    and ``.obs['subpop']`` (B cell, CD14+, CD34+, NK cell, T cell) as categoricals.
    Barcodes repeat across sorts, so ``.obs_names`` are made unique.

    Raises
    ------
    vbsnmf.io.ReadError
        A file of the bundled copy is missing or damaged; the message names it.
    TypeError
        ``test`` is not True or False (the string "False" was taken as True).
    """
    test = check_flag(test, "test")
    name = "pbmc_facs/test" if test else "pbmc_facs"
    folder = data_dir(name)
    with _bundled(name):
        return _with_obs(read_10x(folder), folder, _read_cells(folder))


def pbmc_tiny() -> ad.AnnData:
    """A tiny 10x v3 PBMC example (1,107 cells x 507 genes, scanpy test data): raw counts,
    cells x genes, CSR float32.

    Raises
    ------
    vbsnmf.io.ReadError
        A file of the bundled copy is missing or damaged; the message names it.

    Examples
    --------
    >>> import vbsnmf
    >>> adata = vbsnmf.datasets.pbmc_tiny()
    >>> adata.shape
    (1107, 507)
    >>> adata.X.format, adata.X.dtype
    ('csr', dtype('float32'))
    """
    folder = data_dir("pbmc_tiny_v3")
    with _bundled("pbmc_tiny_v3"):
        return read_10x(folder)
