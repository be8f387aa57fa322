"""Writers for a fitted NMF: the AnnData with its results (`write_result`), factor tables
and the ELBO trace as plain text."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .._atomic import atomic_file
from .._utils import fit_info
from ._paths import CELL_FACTORS_FILE, ELBO_FILE, GENE_LOADINGS_FILE, LOSS_FILE

# Entries of a backed X copied into result.h5ad at a time (3 MB of float64 and int32).
_COPY_ENTRIES = 1 << 18


def write_nmf_tables(adata, folder: str | os.PathLike, *, key: str = "nmf") -> list[Path]:
    """Write ``cell_factors.tsv.gz``, ``gene_loadings.tsv.gz`` and ``elbo.tsv`` to ``folder``
    (``loss.tsv``, the loss per iteration, for a classical solver).

    The tables have a header row ``cell``/``gene`` then ``factor_0`` ... ``factor_{K-1}``
    and one row per cell (posterior mean cell factors, ``.obsm['X_' + key]``) or gene
    (posterior mean gene loadings, ``.varm[...]``, ``.raw.varm[...]`` over every gene of
    ``.raw`` for a fit with ``use_raw``); ``elbo.tsv`` has columns ``iteration``
    and ``elbo`` (nats). Each file is written atomically. Returns the paths written.

    Parameters
    ----------
    adata
        An AnnData after `vbsnmf.tl.nmf` with ``key_added=key`` (default ``"nmf"``).
    folder
        An existing folder.
    key
        The ``.uns`` key of the fit.

    Raises
    ------
    KeyError
        ``adata`` holds no fit under ``key``.
    FileNotFoundError
        ``folder`` does not exist (nothing is written).
    NotADirectoryError
        ``folder`` is a file (nothing is written).
    """
    info = fit_info(adata, key)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder to write the tables into")
    # a fit of .raw has its loadings over every raw gene in .raw.varm (adata.varm: .var's)
    genes = adata.raw if info["params"].get("use_raw") and adata.raw is not None else adata
    cell_factors = np.asarray(adata.obsm[info["obsm_key"]])
    gene_loadings = np.asarray(genes.varm[info["varm_key"]])
    columns = [f"factor_{factor}" for factor in range(cell_factors.shape[1])]
    written = []
    for name, values, index, label in (
        (CELL_FACTORS_FILE, cell_factors, adata.obs_names, "cell"),
        (GENE_LOADINGS_FILE, gene_loadings, genes.var_names, "gene"),
    ):
        table = pd.DataFrame(values, index=pd.Index(index, name=label), columns=columns)
        with atomic_file(folder / name) as temporary:
            table.to_csv(temporary, sep="\t", compression="gzip", float_format="%.6g")
        written.append(folder / name)
    if "elbo_trace" in info:
        trace = np.asarray(info["elbo_trace"], dtype=np.float64)
        name, table = ELBO_FILE, {"iteration": np.arange(1, trace.size + 1), "elbo": trace}
    else:  # a classical solver: its loss after 0, 1, ... iterations
        trace = np.asarray(info.get("loss_trace", []), dtype=np.float64)
        name, table = LOSS_FILE, {"iteration": np.arange(trace.size), "loss": trace}
    with atomic_file(folder / name) as temporary:
        pd.DataFrame(table).to_csv(temporary, sep="\t", index=False, float_format="%.10g")
    written.append(folder / name)
    return written


def write_result(adata, path: str | os.PathLike) -> Path:
    """Write ``adata`` with its fit to ``path`` as a gzip-compressed ``.h5ad``, atomically.

    A backed AnnData's X (a CSR on disk, as a streamed fit leaves it) is copied a block of
    entries at a time, so memory does not grow with the nonzeros, and its ``.raw`` is
    copied from its file; the rest (``obs``, ``var``, ``obsm``, ``varm``, ``layers``,
    ``obsp``, ``varp``, ``uns``) is written as it is in memory. Returns ``path``.

    Raises
    ------
    FileNotFoundError
        The folder of ``path`` does not exist.
    IsADirectoryError
        ``path`` is a folder.
    TypeError
        ``adata`` holds a value an ``.h5ad`` cannot store (e.g. a function in ``.uns``);
        the message says where. Nothing is written.
    """
    try:  # anndata's error of an unwritable value, not exported by it
        from anndata._io.specs.registry import IORegistryError
    except ImportError:  # pragma: no cover - another anndata layout: its error as it is
        IORegistryError = ()

    path = Path(path)
    try:
        return _write_result(adata, path)
    except IORegistryError as error:
        # anndata's own type (an Exception) says where only in a note, which a caller
        # catching the error and printing it never shows
        where = "; ".join(getattr(error, "__notes__", []))
        raise TypeError(
            f"cannot write {path}: {error}" + (f" ({where})" if where else "")
        ) from None


def _write_result(adata, path: Path) -> Path:
    import anndata as ad
    import h5py

    with atomic_file(path) as temporary:
        if not adata.isbacked:
            adata.write_h5ad(temporary, compression="gzip")
            return path
        without_x = ad.AnnData(
            obs=adata.obs,
            var=adata.var,
            uns=dict(adata.uns),
            obsm=dict(adata.obsm),
            varm=dict(adata.varm),
            layers=dict(adata.layers),
            obsp=dict(adata.obsp),
            varp=dict(adata.varp),
        )
        without_x.write_h5ad(temporary, compression="gzip")
        with h5py.File(temporary, "a") as out, h5py.File(adata.filename, "r") as source:
            _copy_csr(adata.file["X"], out.create_group("X"))
            if "raw" in source:  # copied by HDF5 a chunk at a time, as X
                source.copy(source["raw"], out, name="raw")
    return path


def _copy_csr(source, target) -> None:
    """The CSR group ``source`` (anndata's encoding) into the empty group ``target``."""
    for name, value in source.attrs.items():
        target.attrs[name] = value
    for name in ("indptr", "indices", "data"):
        stored = source[name]
        copy = target.create_dataset(
            name, shape=stored.shape, dtype=stored.dtype, compression="gzip"
        )
        for start in range(0, stored.shape[0], _COPY_ENTRIES):
            copy[start : start + _COPY_ENTRIES] = stored[start : start + _COPY_ENTRIES]
