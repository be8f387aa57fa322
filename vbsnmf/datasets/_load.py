"""Loaders for the bundled 10x folders (matrix.mtx.gz genes x cells, features, barcodes),
read by `vbsnmf.io.read_10x` (scanpy's reader, with vbsnmf's checks)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from anndata.utils import make_index_unique

from ..io import read_10x

_DATA = Path(__file__).parent / "data"


def data_dir(name: str) -> Path:
    """Folder of a bundled data set: ``"pbmc_facs"``, ``"pbmc_facs/test"`` or ``"pbmc_tiny_v3"``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a data set's name (a str), got {name!r}")
    folder = _DATA / name
    if not (folder / "matrix.mtx.gz").is_file():
        raise FileNotFoundError(f"no bundled data set {name!r} in {_DATA}")
    return folder


def _with_obs(adata: ad.AnnData, folder: Path, obs: pd.DataFrame) -> ad.AnnData:
    """``adata`` with ``obs`` (one row per barcode, in file order) attached."""
    barcodes = make_index_unique(pd.Index(obs.index.to_numpy()))
    if not np.array_equal(barcodes.to_numpy(), adata.obs_names.to_numpy()):
        raise RuntimeError(f"{folder}: cells.csv and barcodes.tsv.gz disagree on the cell order")
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
    """
    folder = data_dir("pbmc_facs/test" if test else "pbmc_facs")
    cells = pd.read_csv(folder / "cells.csv", dtype=str).set_index("barcode")
    cells.index.name = None
    for column in ("celltype", "subpop"):
        cells[column] = pd.Categorical(cells[column])
    return _with_obs(read_10x(folder), folder, cells)


def pbmc_tiny() -> ad.AnnData:
    """A tiny 10x v3 PBMC example (1,107 cells x 507 genes, scanpy test data): raw counts,
    cells x genes, CSR float32."""
    return read_10x(data_dir("pbmc_tiny_v3"))
