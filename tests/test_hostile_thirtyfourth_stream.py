"""Hostile pass 34, streaming and backed inputs (a backed AnnData, an ``.h5ad`` or
``.zarr`` path, the command line's streamed route).

- D1: an ``.h5ad`` whose sparse X (or a layer) is a group with no attribute saying its
  format (neither anndata's ``encoding-type`` nor the ``h5sparse_format`` anndata wrote
  before 0.7), as some other tools write it, was called missing:
  `vbsnmf.tl.nmf` of the backed AnnData said "adata.X is None; pass layer= to name the
  counts", `VBNMF.fit` of it "has no X matrix to stream", `vbsnmf.io.read` and the command
  line gave anndata's list of sixteen types ("not <class 'dict'>"), and `VBNMF.fit` of the
  path h5py's KeyError. Each now names the element and its missing attribute.
- D3: an ``.h5ad`` as anndata wrote it before 0.7 (X a group with ``h5sparse_format`` and
  ``h5sparse_shape``, which anndata still reads, backed too) was refused by the streamed
  fit as "X has no 'shape' attribute ... (write the file with anndata)" (`tl.nmf` of the
  backed AnnData, `VBNMF.fit` of the path), and read whole into memory by
  ``vbsnmf fit --solver svi``; it now streams, fitted as in memory.
- D2: a backed AnnData's file closed during a streamed fit (``adata.file.close()`` from a
  callback, another thread) failed as ``cannot read X (RuntimeError: Can't synchronously
  determine if attribute exists by name (invalid identifier type to function))``; the
  `ReadError` now says the file was closed mid-fit.

The guards (they pass on the code before this pass too) pin what the pass checked: a
backed fit against the in-memory one bit for bit for unsigned, 64-bit and float16 values
and 64-bit or unsigned index arrays; a dense X without encoding attributes streamed; a
backed gene view fitted with ``copy=True`` as the same genes in memory; a file opened
``'r'`` or ``'r+'`` left byte for byte as it was; a file renamed mid-fit fitted as if left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from cli_output import error_lines

import vbsnmf
from vbsnmf import VBNMF
from vbsnmf.io import ReadError

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::sklearn.exceptions.ConvergenceWarning"
)

SVI = dict(solver="svi", n_threads=1, random_state=0, max_iter=3, batch_size=60)


def _counts(n_cells: int = 240, n_genes: int = 24, seed: int = 0) -> np.ndarray:
    """Poisson counts of three factors (float32), cells x genes."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1.0, 1.0, (n_cells, 3)) @ rng.gamma(0.3, 1.0, (3, n_genes))
    return rng.poisson(rates).astype(np.float32)


def _write(path, X, **layers):
    """An AnnData of ``X`` (and ``layers``) with named cells and genes written to ``path``."""
    adata = ad.AnnData(X, layers=layers or None)
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    adata.var_names = [f"g{j}" for j in range(adata.n_vars)]
    adata.write_h5ad(path)
    return path


def _strip_encoding(path, element: str = "X") -> None:
    """Delete the ``encoding-*`` attributes of ``element`` in the ``.h5ad`` ``path``, as a
    file written by anndata before 0.7 lacks them."""
    with h5py.File(path, "r+") as handle:
        for name in list(handle[element].attrs):
            if name.startswith("encoding"):
                del handle[element].attrs[name]


@pytest.fixture
def unencoded(tmp_path):
    """An ``.h5ad`` whose CSR X has no encoding attributes (its ``shape`` kept)."""
    path = _write(tmp_path / "old.h5ad", sp.csr_matrix(_counts()))
    _strip_encoding(path)
    return path


def _check_names_encoding(message: str, element: str = "X") -> None:
    assert "'encoding-type'" in message, message
    assert f"{element} is a group without" in message, message
    assert "is None" not in message and "has no X" not in message, message
    assert "<class" not in message, message


# -- D1: an X without its encoding-type attribute ---------------------------------------------


@pytest.mark.parametrize("solver", ["svi", "batch"])
def test_unencoded_backed_x_is_not_called_missing_by_tl_nmf(unencoded, solver):
    backed = ad.read_h5ad(unencoded, backed="r")
    try:
        with pytest.raises(ReadError) as caught:
            vbsnmf.tl.nmf(backed, 3, solver=solver, max_iter=2)
    finally:
        backed.file.close()
    _check_names_encoding(str(caught.value))
    assert caught.value.path.name == "old.h5ad"


def test_unencoded_backed_x_is_not_called_missing_by_the_estimator(unencoded):
    backed = ad.read_h5ad(unencoded, backed="r")
    try:
        with pytest.raises(ReadError) as caught:
            VBNMF(3, **SVI).fit(backed)
    finally:
        backed.file.close()
    _check_names_encoding(str(caught.value))


def test_unencoded_x_path_named_by_read_and_the_streamed_fit(unencoded):
    with pytest.raises(ReadError) as read_error:
        vbsnmf.io.read(unencoded)
    _check_names_encoding(str(read_error.value))
    with pytest.raises(ReadError) as fit_error:
        VBNMF(3, **SVI).fit(unencoded)
    _check_names_encoding(str(fit_error.value))
    assert "KeyError" not in str(fit_error.value)


def test_unencoded_layer_named_by_read(tmp_path):
    counts = _counts()
    path = _write(tmp_path / "layer.h5ad", counts, counts=sp.csr_matrix(counts))
    _strip_encoding(path, "layers/counts")
    with pytest.raises(ReadError) as caught:
        vbsnmf.io.read(path)
    _check_names_encoding(str(caught.value), "layers/counts")


def test_unencoded_x_on_the_command_line(unencoded, tmp_path):
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    for solver in ("svi", "batch"):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "vbsnmf",
                "fit",
                str(unencoded),
                "-k",
                "3",
                "--solver",
                solver,
                "--max-iter",
                "2",
                "-o",
                str(tmp_path / f"out_{solver}"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert run.returncode == 2, run.stderr
        assert len(error_lines(run.stderr)) == 1, run.stderr
        _check_names_encoding(run.stderr)
        assert not (tmp_path / f"out_{solver}").exists()


def test_unencoded_dense_x_still_streams(tmp_path):
    """Guard (passes on both): anndata reads a dense X without encoding attributes, and
    the streamed fit of it equals the fit in memory."""
    counts = _counts()
    path = _write(tmp_path / "dense.h5ad", counts)
    _strip_encoding(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        streamed = VBNMF(3, **SVI).fit(backed)
    finally:
        backed.file.close()
    in_memory = VBNMF(3, **SVI).fit(counts.astype(np.float64))
    np.testing.assert_array_equal(streamed.components_, in_memory.components_)


# -- D3: an .h5ad of anndata before 0.7 ------------------------------------------------------


def _legacy_h5ad(path, counts):
    """``counts`` (CSR) as anndata wrote an ``.h5ad`` before 0.7: no encoding attributes,
    X a group with h5sparse attributes, obs and var compound datasets."""
    with h5py.File(path, "w") as handle:
        group = handle.create_group("X")
        group.attrs["h5sparse_format"] = "csr"
        group.attrs["h5sparse_shape"] = counts.shape
        for name in ("data", "indices", "indptr"):
            group[name] = getattr(counts, name)
        n_cells, n_genes = counts.shape
        handle["obs"] = np.array([(f"c{i}".encode(),) for i in range(n_cells)], [("index", "S4")])
        handle["var"] = np.array([(f"g{j}".encode(),) for j in range(n_genes)], [("index", "S4")])
    return path


def test_legacy_h5ad_streams_as_in_memory(tmp_path):
    counts = sp.csr_matrix(_counts())
    path = _legacy_h5ad(tmp_path / "legacy.h5ad", counts)
    reference = ad.AnnData(counts)
    vbsnmf.tl.nmf(reference, 3, **SVI)
    backed = ad.read_h5ad(path, backed="r")
    try:
        vbsnmf.tl.nmf(backed, 3, **SVI)
    finally:
        backed.file.close()
    np.testing.assert_array_equal(backed.obsm["X_nmf"], reference.obsm["X_nmf"])
    from_path = VBNMF(3, **SVI).fit(path)
    np.testing.assert_array_equal(from_path.components_, reference.varm["NMF"].T)


def test_legacy_h5ad_streamed_on_the_command_line(tmp_path):
    path = _legacy_h5ad(tmp_path / "legacy.h5ad", sp.csr_matrix(_counts()))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "vbsnmf",
            "fit",
            str(path),
            "-k",
            "3",
            "--solver",
            "svi",
            "--epochs",
            "2",
            "--max-iter",
            "3",
            "--quiet",
            "-o",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NUMBA_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr
    params = json.loads((tmp_path / "out" / "params.json").read_text())
    assert params["streamed"] is True


# -- D2: the file closed mid-fit ----------------------------------------------------------


@pytest.mark.parametrize("storage", ["csr", "dense"])
def test_file_closed_mid_fit_is_named_so(tmp_path, storage):
    counts = _counts()
    X = sp.csr_matrix(counts) if storage == "csr" else counts
    backed = ad.read_h5ad(_write(tmp_path / "x.h5ad", X), backed="r")

    def close_file(n_iter, params, elbo_trace):
        backed.file.close()

    with pytest.raises(ReadError) as caught:
        vbsnmf.tl.nmf(backed, 3, callback=close_file, **SVI)
    message = str(caught.value)
    assert "was closed while it was being read" in message, message
    assert "identifier" not in message, message
    assert "X_nmf" not in backed.obsm


# -- guards ---------------------------------------------------------------------------------


def _with_arrays(path, **arrays) -> None:
    """Replace the named arrays of the CSR X of ``path`` by ``arrays`` (h5py datasets)."""
    with h5py.File(path, "r+") as handle:
        for name, values in arrays.items():
            del handle["X"][name]
            handle["X"][name] = values


@pytest.mark.parametrize(
    "variant", ["uint16", "uint32", "int64", "index_int64", "index_uint32", "dense_float16"]
)
def test_backed_dtypes_fit_as_in_memory(tmp_path, variant):
    """Guard (passes on both): a backed fit equals the in-memory fit of the same counts,
    bit for bit, whatever integer or float16 type the file stores them in."""
    counts = _counts()
    path = tmp_path / "x.h5ad"
    if variant == "dense_float16":
        _write(path, counts.astype(np.float16))
    elif variant.startswith("index_"):
        _write(path, sp.csr_matrix(counts))
        kind = variant.removeprefix("index_")
        with h5py.File(path, "r") as handle:
            indptr, indices = handle["X/indptr"][...], handle["X/indices"][...]
        _with_arrays(path, indptr=indptr.astype(kind), indices=indices.astype(kind))
    else:
        _write(path, sp.csr_matrix(counts.astype(variant)))
    reference = ad.AnnData(sp.csr_matrix(counts))
    vbsnmf.tl.nmf(reference, 3, **SVI)
    backed = ad.read_h5ad(path, backed="r")
    try:
        vbsnmf.tl.nmf(backed, 3, **SVI)
    finally:
        backed.file.close()
    np.testing.assert_array_equal(backed.obsm["X_nmf"], reference.obsm["X_nmf"])
    np.testing.assert_array_equal(backed.varm["NMF"], reference.varm["NMF"])


def test_backed_gene_view_copy_fits_as_those_genes_in_memory(tmp_path):
    """Guard (passes on both): ``tl.nmf(backed[:, genes], copy=True)`` fits those genes as
    their copy in memory does; the view itself is refused before any work."""
    counts = _counts()
    path = _write(tmp_path / "x.h5ad", sp.csr_matrix(counts))
    backed = ad.read_h5ad(path, backed="r")
    genes = backed.var_names[::2]
    try:
        result = vbsnmf.tl.nmf(backed[:, genes], 3, copy=True, **SVI)
        with pytest.raises(ValueError, match="view of a backed AnnData"):
            vbsnmf.tl.nmf(backed[:, genes], 3, **SVI)
    finally:
        backed.file.close()
    reference = ad.read_h5ad(path)[:, genes].copy()
    vbsnmf.tl.nmf(reference, 3, **SVI)
    assert list(result.var_names) == list(genes)
    np.testing.assert_array_equal(result.obsm["X_nmf"], reference.obsm["X_nmf"])


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_nothing_written_into_the_backed_file(tmp_path, mode):
    """Guard (passes on both): a fit of a backed AnnData keeps its results in memory; the
    file is byte for byte as it was, opened ``'r'`` or ``'r+'``."""
    path = _write(tmp_path / "x.h5ad", sp.csr_matrix(_counts()))
    before = path.read_bytes()
    backed = ad.read_h5ad(path, backed=mode)
    try:
        vbsnmf.tl.nmf(backed, 3, **SVI)
        assert backed.obsm["X_nmf"].shape == (240, 3)
    finally:
        backed.file.close()
    assert path.read_bytes() == before


def test_file_renamed_mid_fit_is_fitted_as_if_left(tmp_path):
    """Guard (passes on both): the open file is read to the end of the fit when it is
    renamed (and another file put at its name) mid-fit."""
    counts = _counts()
    path = _write(tmp_path / "x.h5ad", sp.csr_matrix(counts))
    shutil.copy(path, tmp_path / "same.h5ad")
    reference = ad.read_h5ad(tmp_path / "same.h5ad", backed="r")
    backed = ad.read_h5ad(path, backed="r")

    def rename(n_iter, params, elbo_trace):
        if n_iter == 1:
            os.rename(path, tmp_path / "moved.h5ad")
            _write(path, sp.csr_matrix(_counts(seed=1)))

    try:
        vbsnmf.tl.nmf(backed, 3, callback=rename, **SVI)
        vbsnmf.tl.nmf(reference, 3, **SVI)
    finally:
        backed.file.close()
        reference.file.close()
    np.testing.assert_array_equal(backed.obsm["X_nmf"], reference.obsm["X_nmf"])
