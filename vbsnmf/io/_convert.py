"""`mtx_to_h5ad`: a Matrix Market file converted once into an ``.h5ad`` that streams.

Gzip cannot seek, so a minibatch of random cells cannot be read from an ``.mtx.gz``; one
sequential pass copies the entries, a chunk of lines at a time, into the CSR layout
anndata reads (`anndata.io.sparse_dataset`), with the names beside it. Memory stays at a
chunk plus one integer per cell, whatever the size of the file; a cell whose lines run on
over many chunks is held summed, one entry per gene (but every line of a real file whose
values are not whole numbers, which must be summed together, in one order).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from .._atomic import check_target, link_followed
from .._validation import check_flag, repeated_negative
from ._errors import ReadError, check_exists, describe_error
from ._paths import check_apart, check_file_name
from ._read import (
    BEYOND_INT64,
    CheckedText,
    MtxHeader,
    check_file,
    check_mtx_size,
    feature_var,
    gene_expression_mask,
    mtx_header,
    open_binary,
    read_features,
    read_gene_names,
    tenx_files,
)
from ._write import atomic_hdf5

# Lines of a Matrix Market file parsed at a time (about 15 MB with pandas' parser).
_LINES_PER_CHUNK = 250_000
# Peak bytes per cell or gene while converting, checked before any is made: its name as a
# Python string, the pandas index and its uniqueness check, h5py's copy as it writes the
# names, indptr. Measured for 2,000,000 cells: 250 with default names, 266 with 18-character
# barcodes.
_BYTES_PER_NAME = 320


def mtx_to_h5ad(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    genes_as_rows: bool | None = None,
    row_names: str | os.PathLike | None = None,
    col_names: str | os.PathLike | None = None,
    created: list | None = None,
) -> Path:
    """Convert a Matrix Market file, or a 10x folder, into an ``.h5ad`` of cells x genes
    without loading it.

    The result reads as `vbsnmf.io.read_h5ad` reads any ``.h5ad`` and streams, a minibatch
    of cells at a time, into ``VBNMF(solver="svi").fit(dst)`` and ``vbsnmf fit dst
    --solver svi``: convert once, fit as often as needed. Counts are stored as float64
    (exact for every count; the largest is not known before the end of the pass), and
    repeated entries of a cell and gene are summed, as `vbsnmf.io.read_mtx` sums them.

    Parameters
    ----------
    src
        ``.mtx`` / ``.mtx.gz`` (coordinate format; integer or real field, or pattern, whose
        entries are counts of 1 as `vbsnmf.io.read_mtx` reads them) with entries
        sorted by cell, as 10x and ``scipy.io.mmwrite`` of a CSC of genes x cells (or of a
        CSR of cells x genes) write them; or a 10x folder as Cell Ranger or STARsolo
        writes it (names from its features and barcodes files; only ``Gene Expression``
        features when there are others, as `vbsnmf.io.read_10x`).
    dst
        The ``.h5ad`` to write, atomically (a temporary file beside it, then renamed).
    genes_as_rows
        True when the file's rows are genes (the 10x convention, taken when None, the
        default), False when rows are cells. A cells x genes file converted with the
        default is refused as not sorted by cell, the error naming ``genes_as_rows=False``,
        unless its entries happen to be sorted both ways.
    row_names, col_names
        Optional name files for the rows and columns of an ``.mtx`` file (one name a line,
        the first tab-separated field, as `vbsnmf.io.read_mtx` reads them; a 10x features
        file as the genes' keeps its ``Gene Expression`` features when it names others).
    created
        A list: ``dst`` is made as a new file and never replaces one, and the (device,
        inode) of the file written is appended to it, so that a caller removes it later
        only while it is its own (``vbsnmf fit --convert-to``). Without it, an existing
        ``dst`` is replaced.

    Returns
    -------
    Path
        ``dst``.

    Raises
    ------
    ReadError
        Anything wrong with ``src`` or the name files (refused as `vbsnmf.io.read_mtx`
        refuses it, with its messages), or entries not sorted by cell.
    UnsafePathError
        ``dst`` is ``src``, one of its name files, or lies inside a 10x folder ``src``
        (symbolic and hard links resolved), ends with a path separator (a folder's
        name) or is empty, checked before anything is written.
    FileNotFoundError
        The folder of ``dst`` does not exist (as `vbsnmf.io.write_result` says it).
    IsADirectoryError
        ``dst`` is a folder.
    FileExistsError
        With ``created``: ``dst`` exists, or another process made it while converting.
    OSError
        A write failed (a full disk, a file-size limit); it names ``dst``, and nothing is
        left behind.
    """
    flag = check_flag(genes_as_rows, "genes_as_rows", allow_none=True)
    stated, genes_as_rows = flag is not None, flag is None or bool(flag)
    check_file_name("dst", dst)
    src, dst = Path(src), Path(dst)
    check_exists(src)
    # before anything is written: dst (links and hard links resolved) must not replace
    # the counts, a file of the 10x folder, or a name file
    check_apart("dst", dst, _inputs(src, row_names, col_names))
    is_folder = src.is_dir()
    if is_folder:
        if not genes_as_rows or row_names is not None or col_names is not None:
            raise ValueError("a 10x folder holds genes as rows with its own name files")
        src, row_names, col_names = tenx_files(src)
    check_file(src)
    # a missing folder, or a folder at dst, as every writer refuses them (`atomic_file`),
    # before the names are read
    check_target(link_followed(dst))
    with _errors(src):
        header = mtx_header(src)
        if header.fmt != "coordinate":  # name what is refused: the format, not the field
            raise ReadError(
                src,
                f"converts coordinate files, not the {header.fmt} format (a dense matrix: "
                "read it into memory with vbsnmf.io.read_mtx, or write it as a sparse one, "
                "scipy.io.mmwrite of a scipy.sparse matrix)",
            )
        nnz = check_mtx_size(src, header.fmt, header.size, bytes_per_index=_BYTES_PER_NAME)
    n_rows, n_cols = header.size[:2]
    # a 10x folder's features file (its rows) names genes by symbol, with ids and types
    # beside them, as vbsnmf.io.read_10x reads it; other name files give one name a line
    # (the first field), as read_mtx reads them
    features = read_features(row_names, n_rows, src.name, "rows", n_cols) if is_folder else None
    rows, keep_rows = (
        (features[0].to_numpy(), _gene_expression(features))
        if is_folder
        else _names(row_names, n_rows, src, "rows", (n_cols, genes_as_rows))
    )
    # a 10x folder's barcodes: its features file's count said what was wrong
    cols, keep_cols = _names(
        col_names, n_cols, src, "columns", None if is_folder else (n_rows, genes_as_rows)
    )
    cells, genes = (cols, rows) if genes_as_rows else (rows, cols)
    # a 10x features file as the genes' names keeps its Gene Expression features, as
    # read_mtx and read_10x keep them
    keep_genes = keep_rows if genes_as_rows else keep_cols
    with atomic_hdf5(dst, created=created) as (out, check):
        _write(
            src,
            header,
            out,
            check,
            genes_as_rows,
            nnz,
            cells,
            genes,
            features,
            keep_genes,
            stated=stated or is_folder,
        )
    return dst


def _inputs(src: Path, row_names, col_names) -> list[tuple[str, Path]]:
    """What `mtx_to_h5ad` reads, as (description, path) pairs for `check_apart`."""
    named = (("the input", src), ("the row names", row_names), ("the column names", col_names))
    return [(what, Path(path)) for what, path in named if path is not None]


def _names(
    path, expected: int, matrix: Path, side: str, other_axis: tuple[int, bool] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Names for one axis from the name file ``path`` (``"0"``, ``"1"``, ... without one),
    and which to keep if they are genes (`vbsnmf.io._read.read_gene_names`, told the
    ``other_axis``'s length and the orientation)."""
    if path is None:  # as Python strings at once: numpy's str array of them is 84 bytes a name
        return np.fromiter(map(str, range(expected)), dtype=object, count=expected), None
    return read_gene_names(Path(path), expected, matrix.name, side, other_axis=other_axis)


def _gene_expression(table: pd.DataFrame | None) -> np.ndarray | None:
    """Which features to keep: the ``Gene Expression`` ones when a 10x features file names
    others too (`vbsnmf.io.read_10x` does the same); None keeps all."""
    if table is None or table.shape[1] < 3:
        return None
    return gene_expression_mask(table[2])


def _write(
    src, header: MtxHeader, out, check, genes_as_rows, nnz, cells, genes, var_extra, keep, *, stated
):
    from anndata.io import write_elem
    from anndata.utils import make_index_unique

    gene_index = np.arange(len(genes)) if keep is None else np.cumsum(keep) - 1
    if keep is not None:
        gene_index[~keep] = -1
    if var_extra is not None:  # 10x features: named as vbsnmf.io.read_10x names them
        var = feature_var(var_extra if keep is None else var_extra[keep])
        var.index = make_index_unique(var.index)
    else:
        kept = genes if keep is None else genes[keep]
        var = pd.DataFrame(index=make_index_unique(pd.Index(kept)))
    obs = pd.DataFrame(index=make_index_unique(pd.Index(cells)))
    with _errors(src), open_binary(src) as raw:
        # an AnnData without X, then X written as its CSR group, a chunk at a time
        write_elem(out, "obs", obs)
        write_elem(out, "var", var)
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(out, key, {})
        out.attrs["encoding-type"] = "anndata"
        out.attrs["encoding-version"] = "0.1.0"
        # the text read_mtx accepts, checked as read_mtx checks it, as pandas reads it
        checked = CheckedText(raw, src, header, nnz)
        text = checked.buffered()
        # past the header as mtx_header read it (an indented comment line is one of it)
        text.read(header.body_offset)
        group = out.create_group("X")
        with _numbers_checked(checked):
            _copy_entries(
                _blocks(text, header.field),
                group,
                check,
                genes_as_rows,
                len(cells),
                len(genes),
                gene_index,
                nnz,
                stated=stated,
            )


@contextmanager
def _numbers_checked(checked: CheckedText):
    """Parsing the entry lines of ``checked``: the count of their numbers checked at the
    end (`CheckedText.finish`), also after the parsing failed, since a wrong number of
    fields on a line explains a parser's or an index error (pandas shifts the columns
    of a line with 4 fields into the index)."""
    try:
        yield
    except ReadError:
        raise
    except ValueError as error:
        failure = error
    else:
        failure = None
    checked.finish()
    if failure is not None:
        raise failure


def _copy_entries(
    blocks, group, check, genes_as_rows, n_cells, n_genes, gene_index, nnz, *, stated=True
):
    """The entries of ``blocks`` (`_blocks`) into the h5py group ``group`` as a CSR of
    cells x genes (``indices``, ``data``, ``indptr``), ``check`` (`atomic_hdf5`'s) called
    before each block; ValueError on a bad entry or count (one sorted by row, when genes as
    rows was not ``stated`` but the default, names the other orientation)."""
    n_kept = int(gene_index.max()) + 1 if len(gene_index) else 0
    indices = group.create_dataset("indices", (nnz,), maxshape=(None,), dtype=np.int32)
    data = group.create_dataset("data", (nnz,), maxshape=(None,), dtype=np.float64)
    row_counts = np.zeros(n_cells, dtype=np.int64)
    read, written, last_cell, pending = 0, 0, -1, None
    for block in blocks:
        check()
        cells, genes = (block[1], block[0]) if genes_as_rows else (block[0], block[1])
        cells, genes, values = cells - 1, genes - 1, block[2]
        read += len(cells)
        if read > nnz:
            raise ValueError(f"the file holds more entries than its header's {nnz}")
        _check_indices(cells, genes, n_cells, n_genes)
        if pending is not None:  # the last cell of the previous block may continue here
            cells, genes, values = (
                np.concatenate([p, b]) for p, b in zip(pending, (cells, genes, values))
            )
        if np.any(np.diff(cells) < 0) or (len(cells) and cells[0] < last_cell):
            # mmwrite writes a CSC column by column and a CSR row by row: the cells' axis
            sorted_by_cell = "CSC of genes x cells" if genes_as_rows else "CSR of cells x genes"
            # sorted by row with genes taken as rows by default, not as told: most likely a
            # file of cells x genes, for which re-saving is not the remedy
            transposed = (
                " or, if its rows are cells, pass genes_as_rows=False"
                if not stated and not np.any(np.diff(block[0]) < 0)
                else ""
            )
            raise ValueError(
                "entries are not sorted by cell; streaming reads cells in file order (10x "
                f"writes them sorted; re-save with scipy.io.mmwrite of a {sorted_by_cell}"
                f"{transposed})"
            )
        tail = np.searchsorted(cells, cells[-1]) if len(cells) else 0
        pending = (cells[tail:], genes[tail:], values[tail:])
        if len(pending[0]) > _LINES_PER_CHUNK and _exact_sums(pending[2]):
            # a cell running on over many blocks: held summed, a line per gene, not every
            # line it has (it was concatenated anew each block). Only whole numbers, whose
            # sums do not depend on the order: the result does not depend on the blocks.
            pending = _summed(*pending)
        written = _append_cells(
            indices,
            data,
            row_counts,
            gene_index,
            cells[:tail],
            genes[:tail],
            values[:tail],
            written,
        )
        last_cell = cells[-1] if len(cells) else last_cell
    if pending is not None:
        written = _append_cells(indices, data, row_counts, gene_index, *pending, written)
    if read != nnz:
        raise ValueError(f"the header says {nnz} entries, the file holds {read}")
    indices.resize((written,))
    data.resize((written,))
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(row_counts, out=indptr[1:])
    group.create_dataset("indptr", data=indptr)
    group.attrs["encoding-type"] = "csr_matrix"
    group.attrs["encoding-version"] = "0.1.0"
    group.attrs["shape"] = np.array([n_cells, n_kept])


def _blocks(handle, field: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Triplet columns (1-based row, 1-based column, value as float64) in chunks of the
    entry lines of ``handle``, the values of a Matrix Market file of the field ``field``
    read as `vbsnmf.io.read_mtx` reads them: an integer file's as 64-bit integers
    (OverflowError beyond), a real file's as floats, infinite beyond float64's range, and
    each entry of a pattern file (no value) as a count of 1.

    pandas reads the values without a dtype: with float64 it refused a column holding
    ``1e400``, which it reads as text then, and Python's float reads that as scipy does.
    A real file's values are parsed correctly rounded (``float_precision="round_trip"``),
    as scipy's parser and Python's float parse them: pandas' default parser put a third
    of full-precision values one unit in the last place away, so a converted file did
    not fit as the ``.mtx`` does.
    """
    pattern = field == "pattern"
    reader = pd.read_csv(
        handle,
        sep=r"\s+",
        header=None,
        names=["row", "col"] if pattern else ["row", "col", "value"],
        dtype={"row": np.int64, "col": np.int64},
        chunksize=_LINES_PER_CHUNK,
        engine="c",
        float_precision="round_trip" if field in ("real", "double") else None,
    )
    for frame in reader:
        if pattern:
            yield frame["row"].to_numpy(), frame["col"].to_numpy(), np.ones(len(frame))
            continue
        values = frame["value"]
        # uint64 or text: beyond int64 (a file of no entries reads as an empty text column)
        if field == "integer" and values.dtype != np.int64 and len(values):
            raise OverflowError(BEYOND_INT64)
        yield frame["row"].to_numpy(), frame["col"].to_numpy(), values.to_numpy(np.float64)


def _check_indices(cells, genes, n_cells, n_genes) -> None:
    """Counts are checked where the fit reads them; indices here, before they are used."""
    for name, index, bound in (("cell", cells, n_cells), ("gene", genes, n_genes)):
        if len(index) and index.min() < 0:  # as read_mtx names one
            raise ValueError(
                f"a {name} index is 0, where Matrix Market indexes start at 1 (a file written "
                "with 0-based indexes: add 1 to every row and column index)"
            )
        if len(index) and index.max() >= bound:
            raise ValueError(f"a {name} index is outside 1..{bound}")


def _summed(cells, genes, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries sorted by cell then gene, repeated entries of a cell and gene summed, as
    `vbsnmf.io.read_mtx` sums them; ValueError for a negative value among repeats, whose
    sum would hide it."""
    hidden = repeated_negative(cells, genes, values)
    if hidden is not None:
        raise ValueError(
            f"the entry of cell {cells[hidden] + 1}, gene {genes[hidden] + 1} (numbered as in "
            f"the file) is negative ({values[hidden]:g}) and repeated: the sum of the "
            "repeats would hide it; NMF needs raw counts"
        )
    if len(cells) == 0:
        return cells, genes, values
    order = np.lexsort((genes, cells))
    cells, genes, values = cells[order], genes[order], values[order]
    first = np.concatenate([[True], (np.diff(cells) != 0) | (np.diff(genes) != 0)])
    starts = np.flatnonzero(first)
    return cells[starts], genes[starts], np.add.reduceat(values, starts)


def _exact_sums(values: np.ndarray) -> bool:
    """Whether ``values`` are whole numbers whose float64 sums are exact in any order."""
    return bool(np.all((values == np.floor(values)) & (np.abs(values) <= 2.0**53)))


def _append_cells(indices, data, row_counts, gene_index, cells, genes, values, written) -> int:
    """Append whole cells (sorted by cell) to the CSR, genes sorted within each cell and
    repeated entries of a cell and gene summed (`_summed`)."""
    cells, genes, values = _summed(cells, genes, values)
    # the kept genes' new numbers rise with the file's: the order of `_summed` holds
    genes = gene_index[genes]
    kept = genes >= 0
    cells, genes, values = cells[kept], genes[kept], values[kept]
    if len(cells) == 0:
        return written
    stop = written + len(cells)
    indices[written:stop] = genes.astype(np.int32)
    data[written:stop] = values
    # the block's cells are sorted: counted over their own span, not over every cell (a
    # pass over all the cells per block of 250,000 lines: 11 ms a block at 10^7 cells)
    row_counts[cells[0] : cells[-1] + 1] += np.bincount(cells - cells[0])
    return stop


@contextmanager
def _errors(path: Path):
    """Converting ``path``: our checks (ValueError), pandas' parser on a bad line or an
    integer beyond 64 bits, and a damaged compressed stream become a `ReadError` naming
    the file."""
    try:
        yield
    except ReadError:
        raise
    except ValueError as error:
        raise ReadError(path, str(error)) from None
    except OverflowError:  # pandas' parser, or `_blocks`, on an integer beyond 64 bits
        raise ReadError(path, BEYOND_INT64) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ReadError(path, f"corrupt or truncated file ({describe_error(error)})") from None
