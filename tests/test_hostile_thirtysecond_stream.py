"""Hostile pass 32, streamed fits (SVI's cells form reading a file a block of cells at a
time) and their checkpoints.

- D1: `vbsnmf.tl.nmf` of a backed AnnData of 0 cells or 0 genes was refused as a K out of
  range ("between 1 and min(n_rows, n_cols) = 0"), where the same AnnData in memory (and a
  path given to `VBNMF.fit`) is refused as empty.
- D2: a streamed fit of an ``.h5ad`` whose X is dense, with the default ``batch_size``,
  read the whole file once more than the same fit with its batch size given: the dense
  source counted every row's nonzeros for a default batch size the cells form does not
  compute from them.
- D3: a streamed X stored as CSC was refused with the advice
  ``adata.X = scipy.sparse.csr_matrix(adata.X)``, which fails on the backed AnnData the
  message is about (scipy: "does not support dtype object").
- D4: a column index out of range in a streamed file's later rows was refused naming a
  stored position counted from the start of its block of rows, which points at another,
  valid entry of the file; the entry's row is now named.

The guards (they pass on the code before this pass too) pin what the pass checked: the
streamed fit against the in-memory one bit for bit (CSR, dense, zarr, integer counts, a
batch larger than the cells), a fit interrupted mid-run and resumed (from the file, from
memory into the file) against the uninterrupted one, a file replaced between checkpoint and
resume, invalid counts in the last rows, ``mask_var`` on a backed AnnData, and the memory a
streamed fit holds.
"""

from __future__ import annotations

import tracemalloc

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from interrupted import Stop, stop_at

import vbsnmf
from vbsnmf import VBNMF, _estimator, _svi
from vbsnmf.io import _stream

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::sklearn.exceptions.ConvergenceWarning"
)

SVI = dict(solver="svi", n_threads=1, random_state=0)
FITTED = ("gene_shape_", "gene_rate_", "cell_shape_", "cell_rate_", "elbo_trace_", "elbo_iter_")


def _counts(n_cells: int = 150, n_genes: int = 30, seed: int = 0) -> np.ndarray:
    """Poisson counts of three factors (float32), cells x genes."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1.0, 1.0, (n_cells, 3)) @ rng.gamma(0.3, 1.0, (3, n_genes))
    return rng.poisson(rates).astype(np.float32)


def _write(path, counts, storage: str = "csr"):
    """``counts`` as an AnnData file (``.h5ad`` or ``.zarr``) with X stored as ``storage``
    (``"csr"``, ``"csc"`` or ``"dense"``); the path."""
    matrix = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}[storage](counts)
    adata = ad.AnnData(
        matrix,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(counts.shape[0])]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(counts.shape[1])]),
    )
    if str(path).endswith(".zarr"):
        adata.write_zarr(path)
    else:
        adata.write_h5ad(path)
    return path


def _same_fit(first: VBNMF, second: VBNMF) -> bool:
    return all(np.array_equal(getattr(first, name), getattr(second, name)) for name in FITTED)


# -- D1: tl.nmf of an empty backed AnnData ------------------------------------------------------
@pytest.mark.parametrize("storage", ["csr", "dense"])
@pytest.mark.parametrize("shape", [(0, 10), (10, 0)], ids=["no_cells", "no_genes"])
def test_tl_nmf_refuses_an_empty_backed_anndata_as_empty(tmp_path, shape, storage):
    path = _write(tmp_path / "empty.h5ad", np.zeros(shape, np.float32), storage)
    axis = "sample" if shape[0] == 0 else "feature"
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(ValueError, match=f"empty.h5ad \\(X\\) has 0 {axis}") as caught:
            vbsnmf.tl.nmf(backed, 2, n_epochs=1, **SVI)
        assert "out of range" not in str(caught.value)
    finally:
        backed.file.close()
    # as the same AnnData in memory is refused
    with pytest.raises(ValueError, match=f"has 0 {axis}"):
        vbsnmf.tl.nmf(ad.read_h5ad(path), 2, n_epochs=1, **SVI)


# -- D2: no counting pass over a dense file -----------------------------------------------------
def test_a_default_streamed_fit_of_a_dense_file_reads_it_no_more_than_a_given_batch(
    tmp_path, monkeypatch
):
    path = _write(tmp_path / "dense.h5ad", _counts(300, 20), "dense")
    rows_read = []
    original = _stream.DenseRowsSource._read

    def counted(self, rows):
        dense = original(self, rows)
        rows_read.append(dense.shape[0])
        return dense

    monkeypatch.setattr(_stream.DenseRowsSource, "_read", counted)
    reads, fits = [], []
    for batch_size in (None, 128):  # 128: the default batch of 300 cells
        rows_read.clear()
        fits.append(VBNMF(3, n_epochs=1, batch_size=batch_size, **SVI).fit(path))
        reads.append(sum(rows_read))
    # the scan, the steps and one evaluation: three passes of 300 rows (a fourth counted them)
    assert reads == [900, 900]
    assert _same_fit(*fits)


# -- D3: the advice for a CSC X -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["csc.h5ad", "csc.zarr"])
def test_the_advice_for_a_streamed_csc_x_works(tmp_path, name):
    counts = _counts()
    path = _write(tmp_path / name, counts, "csc")
    with pytest.raises(vbsnmf.io.ReadError, match="CSR rows") as caught:
        VBNMF(3, n_epochs=2, **SVI).fit(path)
    message = str(caught.value)
    assert "vbsnmf.io.read(path)" in message and "adata.to_memory()" in message
    # the advice as given: read, convert, write a new file; it streams as the counts fit
    adata = vbsnmf.io.read(path)
    adata.X = sp.csr_matrix(adata.X)
    adata.write_h5ad(tmp_path / "csr.h5ad")
    streamed = VBNMF(3, n_epochs=2, **SVI).fit(tmp_path / "csr.h5ad")
    assert _same_fit(streamed, VBNMF(3, n_epochs=2, **SVI).fit(sp.csr_matrix(counts)))


def test_the_advice_for_a_backed_csc_x_is_not_a_failing_assignment(tmp_path):
    path = _write(tmp_path / "csc.h5ad", _counts(), "csc")
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(vbsnmf.io.ReadError) as caught:
            vbsnmf.tl.nmf(backed, 3, n_epochs=1, **SVI)
        # what the old message advised, on this AnnData
        with pytest.raises(ValueError, match="dtype object"):
            backed.X = sp.csr_matrix(backed.X)
        assert "adata.X = scipy.sparse.csr_matrix(adata.X))" not in str(caught.value)
        memory = backed.to_memory()
    finally:
        backed.file.close()
    vbsnmf.tl.nmf(memory, 3, n_epochs=1, **SVI)  # the other advice: fit the copy in memory
    assert memory.obsm["X_nmf"].shape == (150, 3)


# -- D4: a bad index in a later block names its row ---------------------------------------------
def test_a_bad_column_index_in_the_last_rows_names_its_row(tmp_path):
    counts = _counts(5000, 20)
    path = _write(tmp_path / "bad.h5ad", counts)
    with h5py.File(path, "r+") as handle:
        indices = handle["X/indices"][...]
        indices[-1] = 20
        del handle["X/indices"]
        handle["X/indices"] = indices
    pattern = r"\(rows 4096\.\.4999\).*column index 20 .* outside 0\.\.19 \(in row 4999\)"
    with pytest.raises(ValueError, match=pattern):
        VBNMF(2, n_epochs=1, **SVI).fit(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(ValueError, match=r"\(in row 4999\)"):
            vbsnmf.tl.nmf(backed, 2, n_epochs=1, **SVI)
    finally:
        backed.file.close()


def test_a_bad_index_in_memory_names_its_row_or_column():
    matrix = sp.csr_matrix(_counts(6, 5))
    matrix.indices[-1] = 9
    with pytest.raises(ValueError, match=r"column index 9 .* outside 0\.\.4 \(in row 5\)"):
        VBNMF(2).fit(matrix)
    matrix = sp.csc_matrix(_counts(6, 5))
    matrix.indices[-1] = 9
    with pytest.raises(ValueError, match=r"row index 9 .* outside 0\.\.5 \(in column 4\)"):
        VBNMF(2).fit(matrix)
    # a BSR's pointers count blocks of rows: no row named (its index counts blocks too)
    matrix = sp.bsr_matrix(np.ones((4, 4)), blocksize=(2, 2))
    matrix.indices[-1] = 7
    with pytest.raises(ValueError, match=r"column index 7 .* outside 0\.\.1$"):
        VBNMF(2).fit(matrix)


# -- guards -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, storage, dtype",
    [
        ("x.h5ad", "csr", np.float32),
        ("x.h5ad", "dense", np.float32),
        ("x.h5ad", "csr", np.int32),
        ("x.zarr", "csr", np.float32),
        ("x.zarr", "dense", np.float64),
    ],
)
@pytest.mark.parametrize("batch_size", [None, 10**6], ids=["default_batch", "batch_above_cells"])
def test_guard_a_streamed_fit_equals_the_fit_in_memory(tmp_path, name, storage, dtype, batch_size):
    """A guard (passes before this pass too)."""
    counts = _counts()
    path = _write(tmp_path / name, counts.astype(dtype), storage)
    settings = dict(n_epochs=3, batch_size=batch_size, **SVI)
    streamed = VBNMF(3, **settings).fit(path)
    assert _same_fit(streamed, VBNMF(3, **settings).fit(sp.csr_matrix(counts)))
    assert streamed.n_iter_ == 3 and list(streamed.elbo_iter_) == [1, 2, 3]


@pytest.mark.parametrize("first", ["file", "memory"])
@pytest.mark.parametrize("storage", ["csr", "dense"])
def test_guard_a_streamed_fit_stopped_mid_run_resumes_bit_for_bit(tmp_path, first, storage):
    """A guard (passes before this pass too): killed after epoch 3 (its checkpoint of epoch
    2, evaluated every 2 epochs), resumed from the file, as the uninterrupted fit ends."""
    counts = _counts()
    path = _write(tmp_path / "x.h5ad", counts, storage)
    settings = dict(n_epochs=5, batch_size=40, eval_every=2, **SVI)
    whole = VBNMF(3, **settings).fit(path)
    checkpoint = tmp_path / "fit.npz"
    with pytest.raises(Stop):
        VBNMF(3, checkpoint=checkpoint, **settings).fit(
            path if first == "file" else sp.csr_matrix(counts), callback=stop_at(3)
        )
    resumed = VBNMF(3, checkpoint=checkpoint, resume=True, **settings).fit(path)
    assert _same_fit(resumed, whole)
    assert resumed.n_iter_ == whole.n_iter_ == 5 and list(resumed.elbo_iter_) == [2, 4, 5]


def test_guard_a_file_replaced_between_checkpoint_and_resume_is_refused(tmp_path):
    """A guard (passes before this pass too): the same counts with the cells in reverse
    order (same shape, nonzeros and total) are other data."""
    counts = _counts()
    path = _write(tmp_path / "x.h5ad", counts)
    checkpoint = tmp_path / "fit.npz"
    settings = dict(n_epochs=4, batch_size=40, **SVI)
    with pytest.raises(Stop):
        VBNMF(3, checkpoint=checkpoint, **settings).fit(path, callback=stop_at(2))
    _write(path, counts[::-1].copy())
    with pytest.raises(ValueError, match="other data"):
        VBNMF(3, checkpoint=checkpoint, resume=True, **settings).fit(path)
    _write(path, counts, "dense")  # the same counts stored dense: the same data
    resumed = VBNMF(3, checkpoint=checkpoint, resume=True, **settings).fit(path)
    assert _same_fit(resumed, VBNMF(3, **settings).fit(sp.csr_matrix(counts)))


@pytest.mark.parametrize("value", [np.nan, -1.0, np.inf])
@pytest.mark.parametrize("storage", ["csr", "dense"])
def test_guard_an_invalid_count_in_the_last_rows_is_refused_before_a_step(
    tmp_path, value, storage, monkeypatch
):
    """A guard (passes before this pass too): the scan reads every block before the first
    minibatch step, which is never taken."""
    counts = _counts(5000, 10)
    counts[-1, 3] = value
    path = _write(tmp_path / "bad.h5ad", counts, storage)
    steps = []
    monkeypatch.setattr(_svi, "svi_step_cells", lambda *args, **kw: steps.append(1))
    with pytest.raises(ValueError, match=r"rows 4096\.\.4999.*\(4999, 3\)"):
        VBNMF(2, n_epochs=1, **SVI).fit(path)
    assert steps == []


def test_guard_mask_var_on_a_backed_anndata_is_refused_with_advice(tmp_path):
    """A guard (passes before this pass too)."""
    path = _write(tmp_path / "x.h5ad", _counts())
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(ValueError, match=r"mask_var .*adata\.to_memory\(\)"):
            vbsnmf.tl.nmf(backed, 3, mask_var=np.arange(30) < 20, n_epochs=1, **SVI)
        assert "X_nmf" not in backed.obsm
    finally:
        backed.file.close()


@pytest.mark.parametrize("storage", ["csr", "dense"])
def test_guard_a_streamed_fit_holds_a_block_of_the_file_not_the_file(
    tmp_path, storage, monkeypatch
):
    """A guard (passes before this pass too): with blocks of 256 cells, the peak of Python
    allocations (tracemalloc, numpy's arrays among them) during a streamed fit of 6,000
    cells stays far below the file's counts as the fit reads them (float64 values and int64
    indices of the 480,000 nonzeros: 7.7 MB)."""
    rng = np.random.default_rng(0)
    counts = sp.random(6000, 200, density=0.4, format="csr", random_state=rng, dtype=np.float32)
    counts.data = np.ceil(counts.data * 4)
    path = _write(tmp_path / "x.h5ad", counts.toarray() if storage == "dense" else counts, storage)
    monkeypatch.setattr(_svi, "EVAL_BLOCK_ROWS", 256)
    monkeypatch.setattr(_estimator, "EVAL_BLOCK_ROWS", 256)
    settings = dict(n_epochs=1, batch_size=256, prior="gamma", **SVI)
    # compiled on the same file first: a kernel compiled during the measured fit (a fresh
    # Numba cache, no earlier test in this worker having compiled it) counted its own
    # allocations, 3-4.5 MB, and failed the guard by the order the tests ran in
    VBNMF(2, **settings).fit(path)
    tracemalloc.start()
    try:
        VBNMF(2, **settings).fit(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    file_counts = counts.nnz * 16
    assert peak < file_counts / 3, (peak, file_counts)
