"""`vbsnmf.io.mtx_to_h5ad` on hostile Matrix Market files (thirty-third hostile pass,
converters and writers).

- D1: a cell whose lines run on over many of the converter's blocks (a cell with many
  repeated entries, or more distinct genes than a block has lines) was carried from block
  to block as every line it has, concatenated anew each block: memory grew with that
  cell's lines, not with a block (the module promises a block plus one integer per cell).
  A file of 2,000,000 lines with 1,000,000 repeated lines of one cell peaked at 111 MB
  (tracemalloc), against 32 MB for the same lines spread over the cells.

Guards (pass on both): conversions against ``scipy.io.mmread`` and `vbsnmf.io.read_mtx`
whatever the block size (both orientations, integer, real and pattern fields, repeated
entries, gzip), a real file's repeated values summed alike at every block size, a negative
repeated value refused across blocks, names round-tripped through anndata and
`vbsnmf.io.read`, the source kept when the target is it (a symbolic or hard link), no
target left by a gzip stream cut short or a lying header, and the peak memory of a file of
2,000,000 nonzeros below one copy of its triplets.
"""

from __future__ import annotations

import gzip
import os
import tracemalloc
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

import vbsnmf.io._convert
from vbsnmf.io import ReadError, UnsafePathError, mtx_to_h5ad, read, read_mtx

_BANNER = "%%MatrixMarket matrix coordinate {field} general\n"


def _write_mtx(path: Path, rows, cols, values, shape, field="integer") -> Path:
    """A coordinate file of these 1-based entries, in the order given."""
    with open(path, "w") as handle:
        handle.write(_BANNER.format(field=field))
        handle.write(f"{shape[0]} {shape[1]} {len(rows)}\n")
        if field == "real":
            handle.writelines(f"{r} {c} {float(v)!r}\n" for r, c, v in zip(rows, cols, values))
            return path
        columns = [rows, cols] if field == "pattern" else [rows, cols, values]
        pd.DataFrame(np.c_[tuple(columns)]).to_csv(handle, sep=" ", header=False, index=False)
    return path


def _peak(src: Path, dst: Path) -> int:
    """tracemalloc's peak while converting ``src`` (after a conversion of a small file, so
    that imports and first calls are not counted)."""
    warm = _write_mtx(dst.with_suffix(".warm.mtx"), [1, 2], [1, 2], [1, 2], (2, 2))
    mtx_to_h5ad(warm, dst)
    tracemalloc.start()
    try:
        mtx_to_h5ad(src, dst)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_cell_over_many_blocks_is_held_summed(tmp_path, monkeypatch):
    """D1: one cell's 150,000 repeated lines over 150 blocks of 1,000 lines peak as the
    same lines spread over 2,000 cells do (13.5 MB against 6.9 MB before), and sum as
    numpy counts them."""
    monkeypatch.setattr(vbsnmf.io._convert, "_LINES_PER_CHUNK", 1000)
    n_genes, n_cells, n_lines = 100, 2000, 150_000
    rng = np.random.default_rng(0)
    genes = rng.integers(1, n_genes + 1, n_lines)
    ones = np.ones(n_lines, dtype=np.int64)
    spread = _write_mtx(
        tmp_path / "spread.mtx",
        genes,
        np.sort(rng.integers(1, n_cells + 1, n_lines)),
        ones,
        (n_genes, n_cells),
    )
    deep = _write_mtx(tmp_path / "deep.mtx", genes, ones, ones, (n_genes, n_cells))
    spread_peak = _peak(spread, tmp_path / "spread.h5ad")
    deep_peak = _peak(deep, tmp_path / "deep.h5ad")
    X = ad.read_h5ad(tmp_path / "deep.h5ad").X
    np.testing.assert_array_equal(X[0].toarray().ravel(), np.bincount(genes - 1, minlength=100))
    assert X[1:].nnz == 0
    assert deep_peak < 1.3 * spread_peak, (deep_peak, spread_peak)


@pytest.mark.parametrize("field", ["integer", "pattern", "real"])
@pytest.mark.parametrize("genes_as_rows", [True, False])
def test_block_size_changes_nothing(tmp_path, monkeypatch, field, genes_as_rows):
    """Guard: random files sorted by cell (repeats, explicit zeros, cells of one line and
    cells over many blocks) convert to the same canonical CSR at every block size, equal
    to ``scipy.io.mmread``'s matrix (exactly for counts; real repeats to rounding, as
    scipy's sum order is its own) and to `read_mtx`'s names."""
    rng = np.random.default_rng(7)
    n_genes, n_cells, n_lines = 9, 12, 90
    cells = np.sort(np.r_[np.full(40, 3), rng.integers(1, n_cells + 1, n_lines - 40)])
    genes = rng.integers(1, n_genes + 1, n_lines)
    values = rng.integers(0, 6, n_lines) if field != "real" else rng.random(n_lines) * 100
    rows, cols = (genes, cells) if genes_as_rows else (cells, genes)
    shape = (n_genes, n_cells) if genes_as_rows else (n_cells, n_genes)
    src = _write_mtx(tmp_path / "x.mtx", rows, cols, values, shape, field)
    reference = sp.csr_matrix(scipy.io.mmread(src)).astype(np.float64)
    reference = (reference.T if genes_as_rows else reference).toarray()
    from_memory = read_mtx(src, genes_as_rows=genes_as_rows)
    stored = []
    for lines in (1, 3, 16, 250_000):
        monkeypatch.setattr(vbsnmf.io._convert, "_LINES_PER_CHUNK", lines)
        converted = ad.read_h5ad(mtx_to_h5ad(src, tmp_path / "x.h5ad", genes_as_rows=genes_as_rows))
        X = converted.X
        assert X.has_canonical_format and X.dtype == np.float64
        np.testing.assert_allclose(X.toarray(), reference, rtol=1e-15, atol=0)
        assert list(converted.obs_names) == list(from_memory.obs_names)
        assert list(converted.var_names) == list(from_memory.var_names)
        stored.append((X.indptr.tolist(), X.indices.tolist(), X.data.tolist()))
    assert all(one == stored[0] for one in stored)


def test_real_repeats_summed_alike_at_every_block_size(tmp_path, monkeypatch):
    """Guard: a real file's repeated values of one cell over many blocks (not whole
    numbers, whose sum depends on its order) give the same bits at every block size."""
    rng = np.random.default_rng(4)
    values = rng.random(40) * 10.0 ** rng.integers(-3, 4, 40)
    src = _write_mtx(
        tmp_path / "r.mtx", np.ones(40, int), np.ones(40, int), values, (3, 40), "real"
    )
    sums = set()
    for lines in (1, 7, 250_000):
        monkeypatch.setattr(vbsnmf.io._convert, "_LINES_PER_CHUNK", lines)
        sums.add(float(ad.read_h5ad(mtx_to_h5ad(src, tmp_path / "r.h5ad")).X[0, 0]))
    assert len(sums) == 1
    assert sums.pop() == pytest.approx(values.sum(), rel=1e-14)


@pytest.mark.parametrize("negative_first", [True, False])
def test_repeated_negative_refused_across_blocks(tmp_path, monkeypatch, negative_first):
    """Guard: a negative value whose repeat lies blocks away, in a cell over many blocks
    (held summed in between), is refused as before, naming the entry."""
    monkeypatch.setattr(vbsnmf.io._convert, "_LINES_PER_CHUNK", 4)
    genes = np.r_[1, np.arange(2, 10), 1]
    values = np.ones(10, dtype=np.int64)
    values[0 if negative_first else -1] = -1
    src = _write_mtx(tmp_path / "n.mtx", genes, np.ones(10, int), values, (9, 3))
    with pytest.raises(ReadError, match=r"cell 1, gene 1 .* negative \(-1\) and repeated"):
        mtx_to_h5ad(src, tmp_path / "n.h5ad")
    assert not (tmp_path / "n.h5ad").exists()


def test_hostile_names_round_trip(tmp_path):
    """Guard: names with leading zeros, quotes, unicode, spaces, numbers, NA and an empty
    first field read back as the name files hold them, by anndata and `vbsnmf.io.read`,
    as `read_mtx` names them."""
    genes = ["0123", '"quoted"', "ünï cödé", " lead", "NA", "1e5", "TRUE"]
    cells = ["AAAC-1", "#hash", "0007"]
    (tmp_path / "genes.tsv").write_text("\n".join(genes) + "\n", encoding="utf-8")
    (tmp_path / "cells.tsv").write_text("\n".join(cells) + "\n", encoding="utf-8")
    src = _write_mtx(tmp_path / "n.mtx", [1, 2, 7], [1, 2, 3], [1, 2, 3], (7, 3))
    names = {"row_names": tmp_path / "genes.tsv", "col_names": tmp_path / "cells.tsv"}
    dst = mtx_to_h5ad(src, tmp_path / "n.h5ad", **names)
    from_memory = read_mtx(src, genes_as_rows=True, **names)
    for converted in (ad.read_h5ad(dst), read(dst)):
        assert list(converted.var_names) == genes == list(from_memory.var_names)
        assert list(converted.obs_names) == cells == list(from_memory.obs_names)
        np.testing.assert_array_equal(converted.X.toarray(), from_memory.X.toarray())


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_target_that_is_the_source_refused(tmp_path, link):
    """Guard: the source itself, a symbolic or a hard link to it, as the target is
    refused before anything is written, the source kept."""
    src = _write_mtx(tmp_path / "s.mtx", [1, 2], [1, 2], [1, 2], (2, 2))
    before = src.read_bytes()
    dst = src if link == "same" else tmp_path / "out.h5ad"
    if link == "symlink":
        os.symlink(src, dst)
    elif link == "hardlink":
        os.link(src, dst)
    with pytest.raises(UnsafePathError, match="is the input"):
        mtx_to_h5ad(src, dst)
    assert src.read_bytes() == before


@pytest.mark.parametrize("cut", [12, 40, -8, -1])
def test_gzip_cut_short_leaves_no_target(tmp_path, cut):
    """Guard: a gzip stream cut short is a `ReadError` naming it; no target is left and an
    existing one is kept."""
    text = (_BANNER.format(field="integer") + "3 2 3\n1 1 1\n2 1 2\n3 2 3\n").encode()
    src = tmp_path / "cut.mtx.gz"
    src.write_bytes(gzip.compress(text)[:cut])
    dst = tmp_path / "cut.h5ad"
    dst.write_bytes(b"the user's")
    with pytest.raises(ReadError, match=r"cut\.mtx\.gz"):
        mtx_to_h5ad(src, dst)
    assert dst.read_bytes() == b"the user's"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cut.h5ad", "cut.mtx.gz"]


@pytest.mark.parametrize(
    ("size_line", "message"),
    [
        ("3 2 2", "more entries than|numbers where the size line"),
        ("3 2 4", "the file holds 3|numbers where the size line"),
        ("3 2 7", "declares 7 entries but the file holds 3"),
        ("3000000 2000000 100000000", "truncated: declares"),
    ],
)
def test_lying_header_refused(tmp_path, size_line, message):
    """Guard: a size line declaring more or fewer entries than the file holds, or huge
    sizes over a few lines, is refused by name, nothing written."""
    src = tmp_path / "lie.mtx"
    src.write_text(_BANNER.format(field="integer") + size_line + "\n1 1 1\n2 1 2\n3 2 3\n")
    with pytest.raises(ReadError, match=message):
        mtx_to_h5ad(src, tmp_path / "lie.h5ad")
    assert not (tmp_path / "lie.h5ad").exists()


def test_memory_of_two_million_nonzeros(tmp_path):
    """Guard: converting 2,000,000 nonzeros over 20,000 cells peaks (tracemalloc) below
    one copy of the triplets as int64, int64, float64 (48 MB); measured 32 MB."""
    rng = np.random.default_rng(0)
    n_genes, n_cells, nnz = 2000, 20_000, 2_000_000
    cells = np.sort(rng.integers(1, n_cells + 1, nnz))
    genes = rng.integers(1, n_genes + 1, nnz)
    src = _write_mtx(
        tmp_path / "big.mtx", genes, cells, rng.integers(1, 20, nnz), (n_genes, n_cells)
    )
    peak = _peak(src, tmp_path / "big.h5ad")
    assert peak < nnz * 24, peak
    X = ad.read_h5ad(tmp_path / "big.h5ad").X
    assert X.shape == (n_cells, n_genes) and X.has_canonical_format
