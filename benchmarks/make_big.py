"""Build a real-derived count matrix of any shape from pbmc_facs, written to disk blockwise.

Each synthetic cell is the sum of ``pool`` cells of pbmc_facs drawn with replacement from one
``subpop`` (so the gene-gene structure is real), and each synthetic gene is a copy of a real
gene whose counts are thinned binomially with probability ``p``; with more genes than
pbmc_facs' 16,791 the genes are copied several times, each copy thinned independently.
``pool`` and ``p`` are chosen so that the expected number of nonzeros meets ``--nnz``
(``pool = 1, p = 1`` is plain resampling of cells: k x pbmc_facs).

The matrix is built in blocks of cells (int32 indices, float32 counts) and appended to an
AnnData ``.h5ad`` (CSR, cells x genes) as it goes, so memory holds one block, never the
matrix; ``--mtx`` also writes a 10x-style ``matrix.mtx.gz`` (genes x cells, sorted by cell).
Write to a temporary directory, never into the repository.

    python benchmarks/make_big.py --cells 120961 --genes 33514 --nnz 239634370 --out /tmp/big
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from _common import non_negative_int, positive_int, require_out_folder

import vbsnmf

BLOCK_CELLS = 4096


def _expected_nnz_per_cell(pooled: sp.csr_array, n_genes: int, n_source_genes: int, p: float):
    """Mean over the sample of ``sum_g P(Binomial(y_g, p) > 0)`` over synthetic genes."""
    copies_full, rest = divmod(n_genes, n_source_genes)
    total = 0.0
    for i in range(pooled.shape[0]):
        start, stop = pooled.indptr[i], pooled.indptr[i + 1]
        y, genes = pooled.data[start:stop], pooled.indices[start:stop]
        hit = 1.0 - (1.0 - p) ** y
        total += copies_full * hit.sum() + hit[genes < rest].sum()
    return total / pooled.shape[0]


def _pool_cells(counts, labels_codes, members, n_cells, pool, rng):
    """CSR of ``n_cells`` synthetic cells, each the sum of ``pool`` cells of one subpop."""
    first = rng.integers(0, counts.shape[0], size=n_cells)
    chosen = [first]
    for _ in range(pool - 1):
        group = labels_codes[first]
        picks = np.empty(n_cells, dtype=np.int64)
        for code, cells in enumerate(members):
            where = np.flatnonzero(group == code)
            picks[where] = cells[rng.integers(0, len(cells), size=len(where))]
        chosen.append(picks)
    rows = np.repeat(np.arange(n_cells), pool)
    cols = np.stack(chosen, axis=1).ravel()
    selector = sp.csr_array((np.ones(len(rows)), (rows, cols)), shape=(n_cells, counts.shape[0]))
    pooled = sp.csr_array(selector @ counts)
    pooled.sum_duplicates()
    return pooled


def choose_pool_and_thinning(counts, codes, members, n_genes, nnz_per_cell, rng):
    """Smallest pool whose unthinned nonzeros reach the target, then ``p`` by bisection."""
    sample = 400
    for pool in range(1, 50):
        pooled = _pool_cells(counts, codes, members, sample, pool, rng)
        if _expected_nnz_per_cell(pooled, n_genes, counts.shape[1], 1.0) >= nnz_per_cell:
            break
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = 0.5 * (low + high)
        if _expected_nnz_per_cell(pooled, n_genes, counts.shape[1], middle) < nnz_per_cell:
            low = middle
        else:
            high = middle
    return pool, high


def make_block(counts, codes, members, n_cells, n_genes, pool, p, rng) -> sp.csr_array:
    """One block of synthetic cells (CSR, int32 indices, float32 counts)."""
    pooled = _pool_cells(counts, codes, members, n_cells, pool, rng)
    n_source = counts.shape[1]
    pieces = []
    for copy in range(math.ceil(n_genes / n_source)):
        width = min(n_source, n_genes - copy * n_source)
        part = pooled[:, :width] if width < n_source else pooled.copy()
        data = part.data.astype(np.int64)
        part.data = (rng.binomial(data, p) if p < 1.0 else data).astype(np.float32)
        part.eliminate_zeros()
        pieces.append(part)
    block = sp.hstack(pieces, format="csr")
    block.indices = block.indices.astype(np.int32)
    block.data = block.data.astype(np.float32)
    return block


def build(n_cells, n_genes, nnz, out: Path, *, seed=0, mtx=False) -> dict:
    """Write ``out/big.h5ad`` (and ``out/matrix.mtx.gz``); return a summary dict.

    Each file is built under a temporary name and renamed when whole, and ``summary.json``
    (which `bench_dask.py` reads to reuse a matrix) is removed first and written last: a
    build killed after minutes leaves no ``big.h5ad`` that `bench_scale.py` or
    `bench_dask.py` would take for a finished one (nor an old summary describing it).
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)
    start = time.perf_counter()
    source = vbsnmf.datasets.pbmc_facs()
    counts = sp.csr_array(source.X, dtype=np.float64)
    labels = pd.Categorical(source.obs["subpop"])
    codes = np.asarray(labels.codes)
    members = [np.flatnonzero(codes == c) for c in range(len(labels.categories))]
    rng = np.random.default_rng(seed)
    pool, p = choose_pool_and_thinning(counts, codes, members, n_genes, nnz / n_cells, rng)
    path = out / "big.h5ad"
    building = out / ".big.h5ad.tmp"
    mtx_path, mtx_building = out / "matrix.mtx.gz", out / ".matrix.mtx.gz.tmp"
    written = 0
    indptr = [np.zeros(1, dtype=np.int64)]
    mtx_handle = gzip.open(mtx_building, "wt", compresslevel=1) if mtx else None
    mtx_body = out / "matrix.body.tmp"
    body_handle = gzip.open(mtx_body, "wt", compresslevel=1) if mtx else None
    with h5py.File(building, "w") as handle:
        handle.attrs["encoding-type"] = "anndata"
        handle.attrs["encoding-version"] = "0.1.0"
        group = handle.create_group("X")
        group.attrs["encoding-type"] = "csr_matrix"
        group.attrs["encoding-version"] = "0.1.0"
        group.attrs["shape"] = np.array([n_cells, n_genes])
        chunk = 1 << 20
        indices = group.create_dataset(
            "indices", (0,), maxshape=(None,), dtype=np.int32, chunks=(chunk,)
        )
        data = group.create_dataset(
            "data", (0,), maxshape=(None,), dtype=np.float32, chunks=(chunk,)
        )
        for first in range(0, n_cells, BLOCK_CELLS):
            size = min(BLOCK_CELLS, n_cells - first)
            block = make_block(counts, codes, members, size, n_genes, pool, p, rng)
            stop = written + block.nnz
            indices.resize((stop,))
            data.resize((stop,))
            indices[written:stop] = block.indices
            data[written:stop] = block.data
            indptr.append(block.indptr[1:].astype(np.int64) + written)
            if body_handle is not None:
                cells = np.repeat(np.arange(size), np.diff(block.indptr)) + first + 1
                frame = pd.DataFrame(
                    {"gene": block.indices + 1, "cell": cells, "x": block.data.astype(np.int64)}
                )
                frame.to_csv(body_handle, sep=" ", header=False, index=False)
            written = stop
        group.create_dataset("indptr", data=np.concatenate(indptr))
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    with h5py.File(building, "a") as handle:
        ad.io.write_elem(handle, "obs", obs)
        ad.io.write_elem(handle, "var", var)
    os.replace(building, path)
    if mtx_handle is not None:
        body_handle.close()
        mtx_handle.write("%%MatrixMarket matrix coordinate integer general\n")
        mtx_handle.write(f"{n_genes} {n_cells} {written}\n")
        with gzip.open(mtx_body, "rt") as body:
            for line in body:
                mtx_handle.write(line)
        mtx_handle.close()
        mtx_body.unlink()
        os.replace(mtx_building, mtx_path)
    summary = {
        "path": str(path),
        "n_cells": n_cells,
        "n_genes": n_genes,
        "nnz": int(written),
        "pool": pool,
        "thinning_p": p,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / ".summary.json.tmp").write_text(json.dumps(summary, indent=1))
    os.replace(out / ".summary.json.tmp", out / "summary.json")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=positive_int, required=True)
    parser.add_argument("--genes", type=positive_int, default=16791)
    parser.add_argument(
        "--nnz", type=positive_int, help="target nonzeros (default: pbmc_facs' density)"
    )
    parser.add_argument("--out", type=Path, required=True, help="a temporary directory")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--mtx", action="store_true", help="also write matrix.mtx.gz")
    args = parser.parse_args()
    require_out_folder(parser, out=args.out)
    nnz = args.nnz or round(2702861 * args.cells / 3774 * args.genes / 16791)
    print(json.dumps(build(args.cells, args.genes, nnz, args.out, seed=args.seed, mtx=args.mtx)))


if __name__ == "__main__":
    main()
