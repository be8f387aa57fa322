"""Hostile .h5ad files on the streamed (SVI) route: X's index arrays and shape attribute
edited on disk (defects D6 and D7 of the hostile pass; helpers from test_hostile.py).

Anndata opens a file backed without checking X against obs and var, and the streamed
reader cast the stored indices to integers, so such a file was fitted (float indices
truncated: a corrupt result; a phantom shape of a million genes fitted for seconds, then
an error not naming the file) where the batch route refuses it up front, naming the file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
from test_hostile import (
    FIT,
    N_CELLS,
    N_GENES,
    SVI,
    Case,
    _counts,
    _streamed,
    damaged_h5ad,
    raises,
    refused,
)

import vbsnmf

PHANTOM_GENES = 10**6


# -- edits of the CSR group X ---------------------------------------------------------------------
def _replaced(group, name: str, values) -> None:
    del group[name]
    group[name] = values


def _fractional_indices(group) -> None:
    """Indices as floats 0.7 past each stored index (which a cast truncates back)."""
    _replaced(group, "indices", group["indices"][...].astype(np.float64) + 0.7)


def _float_indptr(group) -> None:
    _replaced(group, "indptr", group["indptr"][...].astype(np.float64))


def _phantom_genes(group) -> None:
    group.attrs["shape"] = [N_CELLS, PHANTOM_GENES]


def _phantom_cell(group) -> None:
    """One cell more than obs holds, in the shape attribute and in indptr alike."""
    indptr = group["indptr"][...]
    _replaced(group, "indptr", np.append(indptr, indptr[-1]))
    group.attrs["shape"] = [N_CELLS + 1, N_GENES]


def _three_axes(group) -> None:
    group.attrs["shape"] = [N_CELLS, N_GENES, 1]


def _fractional_shape(group) -> None:
    group.attrs["shape"] = [float(N_CELLS), N_GENES + 0.5]


def _dense_wider(folder: Path) -> Path:
    """An .h5ad whose dense X has one gene more than var."""
    path = folder / "dense.h5ad"
    ad.AnnData(_counts().toarray()).write_h5ad(path)
    rng = np.random.default_rng(3)
    with h5py.File(path, "r+") as handle:
        del handle["X"]
        handle["X"] = rng.poisson(1.5, (N_CELLS, N_GENES + 1)).astype(np.float32)
        handle["X"].attrs["encoding-type"] = "array"
        handle["X"].attrs["encoding-version"] = "0.2.0"
    return path


# -- calls ----------------------------------------------------------------------------------------
def _svi(X):
    return vbsnmf.VBNMF(2, solver="svi", n_epochs=1, n_threads=1, prior="gamma").fit(X)


def _backed(path: Path, call):
    """``call`` of ``path`` opened backed, closed again whatever happens."""
    adata = ad.read_h5ad(path, backed="r")
    with contextlib.closing(adata.file):
        return call(adata)


def _tl_nmf(adata):
    return vbsnmf.tl.nmf(adata, 2, solver="svi", n_epochs=1, n_threads=1)


def _batch(source: Path) -> list:
    return ["fit", source, *FIT, "-o", "o"]


INDICES = "index arrays must be 1-D integers"


def cases() -> list[Case]:
    return [
        # D6: float indices, truncated by the streamed reader's casts
        Case(
            "cli svi: fractional float indices",
            refused(
                lambda f: _streamed(damaged_h5ad(f, "X", _fractional_indices)),
                "damaged.h5ad",
                INDICES,
                "float64",
            ),
        ),
        Case(
            "cli svi: float indptr",
            refused(
                lambda f: _streamed(damaged_h5ad(f, "X", _float_indptr)), "damaged.h5ad", INDICES
            ),
        ),
        Case(
            "library svi of a path: fractional float indices",
            raises(
                lambda f: _svi(damaged_h5ad(f, "X", _fractional_indices)),
                vbsnmf.io.ReadError,
                "damaged.h5ad",
                INDICES,
            ),
        ),
        Case(
            "library svi of a backed AnnData: fractional float indices",
            raises(
                lambda f: _backed(damaged_h5ad(f, "X", _fractional_indices), _svi),
                vbsnmf.io.ReadError,
                "damaged.h5ad",
                INDICES,
            ),
        ),
        Case(
            "read_h5ad_backed: fractional float indices",
            raises(
                lambda f: vbsnmf.io.read_h5ad_backed(damaged_h5ad(f, "X", _fractional_indices)),
                vbsnmf.io.ReadError,
                "damaged.h5ad",
                INDICES,
            ),
        ),
        # D7: X's shape attribute trusted over obs and var
        Case(
            "cli svi: shape attribute of a million genes",
            refused(
                lambda f: _streamed(damaged_h5ad(f, "X", _phantom_genes)),
                "damaged.h5ad",
                str(PHANTOM_GENES),
                "var",
            ),
        ),
        Case(
            "cli svi: shape attribute and indptr of a cell obs lacks",
            refused(
                lambda f: _streamed(damaged_h5ad(f, "X", _phantom_cell)), "damaged.h5ad", "obs"
            ),
        ),
        Case(
            "cli svi: shape attribute of three axes",
            refused(
                lambda f: _streamed(damaged_h5ad(f, "X", _three_axes)), "damaged.h5ad", "shape"
            ),
        ),
        Case(
            "cli svi: shape attribute of fractional floats",
            refused(
                lambda f: _streamed(damaged_h5ad(f, "X", _fractional_shape)),
                "damaged.h5ad",
                "shape",
            ),
        ),
        Case(
            "read_h5ad_backed: shape attribute of a million genes",
            raises(
                lambda f: vbsnmf.io.read_h5ad_backed(damaged_h5ad(f, "X", _phantom_genes)),
                vbsnmf.io.ReadError,
                "damaged.h5ad",
                str(PHANTOM_GENES),
                "var",
            ),
        ),
        Case(
            "library svi of a backed AnnData: shape attribute of a million genes",
            raises(
                lambda f: _backed(damaged_h5ad(f, "X", _phantom_genes), _svi),
                vbsnmf.io.ReadError,
                "damaged.h5ad",
                str(PHANTOM_GENES),
                "var",
            ),
        ),
        Case(
            "tl.nmf svi of a backed AnnData: shape attribute of a million genes",
            raises(
                lambda f: _backed(damaged_h5ad(f, "X", _phantom_genes), _tl_nmf),
                vbsnmf.io.ReadError,
                "damaged.h5ad",
                "var",
            ),
        ),
        Case(
            "tl.nmf svi of a backed AnnData: dense X wider than var",
            raises(
                lambda f: _backed(_dense_wider(f), _tl_nmf),
                vbsnmf.io.ReadError,
                "dense.h5ad",
                "var",
            ),
        ),
        Case(
            "library svi of a backed AnnData: dense X wider than var",
            raises(
                lambda f: _backed(_dense_wider(f), _svi), vbsnmf.io.ReadError, "dense.h5ad", "var"
            ),
        ),
    ]


def guard_cases() -> list[Case]:
    """Refused before the fixes too: kept so that the streamed route stays in step with
    the batch one."""
    return [
        Case(
            "cli batch: fractional float indices",
            refused(
                lambda f: _batch(damaged_h5ad(f, "X", _fractional_indices)), "damaged.h5ad", INDICES
            ),
        ),
        Case(
            "cli batch: shape attribute of a million genes",
            refused(lambda f: _batch(damaged_h5ad(f, "X", _phantom_genes)), "damaged.h5ad"),
        ),
        Case(
            "cli svi: dense X wider than var",
            refused(lambda f: ["fit", _dense_wider(f), *FIT, *SVI, "-o", "o"], "dense.h5ad"),
        ),
    ]


def _ids(built: list[Case]) -> list[str]:
    return [case.name for case in built]


@pytest.mark.parametrize("case", cases(), ids=_ids(cases()))
def test_streamed_hostile_h5ad_is_refused(case, tmp_path, capfd):
    problem = case.run(tmp_path, capfd)
    assert problem is None, f"{case.name}: {problem}"


@pytest.mark.parametrize("case", guard_cases(), ids=_ids(guard_cases()))
def test_batch_and_dense_routes_still_refuse(case, tmp_path, capfd):
    problem = case.run(tmp_path, capfd)
    assert problem is None, f"{case.name}: {problem}"
