"""Writers for a fitted NMF: the AnnData with its results (`write_result`), factor tables
and the ELBO trace as plain text."""

from __future__ import annotations

import gzip
import io
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from .._atomic import atomic_file, failed_write, flush_to_disk, held_signals
from .._quoting import quoted_path
from .._utils import (
    check_anndata,
    check_factor_columns,
    check_fit_entries,
    check_record_key,
    elbo_iterations,
    finite_fit_array,
    fit_info,
    gene_holder,
    held_projection,
    held_reference_key,
    warn_user,
)
from ._paths import (
    CELL_FACTORS_FILE,
    ELBO_FILE,
    GENE_LOADINGS_FILE,
    LOSS_FILE,
    check_file_name,
    check_folder_name,
    clear_hdf5_leftovers,
    clear_table_leftovers,
)
from ._stored import to_memory_advice, without_x

if TYPE_CHECKING:
    import h5py

# Entries of a backed X copied into result.h5ad at a time (3 MB of float64 and int32).
_COPY_ENTRIES = 1 << 18


def write_nmf_tables(adata, folder: str | os.PathLike, *, key: str = "nmf") -> list[Path]:
    """Write ``cell_factors.tsv.gz``, ``gene_loadings.tsv.gz`` and ``elbo.tsv`` to ``folder``
    (``loss.tsv``, the loss per iteration, for a classical solver).

    The tables have a header row ``cell``/``gene`` then ``factor_0`` ... ``factor_{K-1}``
    and one row per cell (posterior mean cell factors, ``.obsm['X_' + key]``) or gene
    (posterior mean gene loadings, ``.varm[...]``, ``.raw.varm[...]`` over every gene of
    ``.raw`` for a fit with ``use_raw``); ``elbo.tsv`` has columns ``iteration``
    and ``elbo`` (nats). A name holding a tab, a line break or a quote is quoted
    (`write_tsv`). The factors are written to 6 significant digits, the ELBO to 10
    (``result.h5ad``, `write_result`, holds them exactly). Returns the paths written.

    Read a table back with its names as text::

        pandas.read_csv(path, sep="\\t", index_col=0, keep_default_na=False,
                        dtype={"cell": str})  # "gene" for gene_loadings.tsv.gz

    `pandas.read_csv`'s defaults read a name ``NA``, ``nan``, ``NULL`` or an empty one as
    NaN, and names that are all numbers (``0``, ``1``, ... of a matrix read without name
    files) or all ``TRUE``/``FALSE`` as numbers or booleans, which no longer match
    ``adata.obs_names``.

    The files are replaced together: every target is checked and every table written to a
    temporary file before the first is renamed into place: a failure, or an interruption
    (Ctrl-C, or SIGTERM / SIGHUP in the command line) while the tables are written, leaves
    the folder's earlier tables as they were; an interruption during the renames is raised
    once all are done. Only a rename that fails (the folder changed meanwhile) or a crash
    of the machine between the three renames can leave some replaced. The hidden
    temporaries a killed write (SIGKILL, a power loss) left beside the tables are removed
    by the next write, once unchanged for a minute (`clear_table_leftovers`).

    A trace of the other kind left by an earlier fit (an ``elbo.tsv`` beside a classical
    fit's ``loss.tsv``, or the reverse) is not this fit's: it is kept, as vbsnmf removes
    nothing it did not just write (a file of that name may be the user's), with a
    `UserWarning` naming it.

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
        ``adata`` holds no fit under ``key`` (cells projected onto a reference by
        `vbsnmf.tl.project` are told where their factors are), or its ``.obsm`` or
        ``.varm`` entry is gone (nothing is written).
    ValueError
        The fit was of ``.raw`` (``use_raw=True``), which ``adata`` no longer has, or its cell
        factors or gene loadings hold NaN rows (cells or genes that
        ``anndata.concat(..., join="outer")`` joined to the fit) or not one column per
        factor of the fit (cut by hand, as `vbsnmf.tl.top_genes` refuses them), or a cell
        or gene name holds a NUL character or a lone surrogate, which a text table cannot
        carry; nothing is written.
    UnsafePathError
        ``folder`` is an empty name, which `pathlib` takes for the current folder (nothing
        is written).
    FileNotFoundError
        ``folder`` does not exist (nothing is written).
    NotADirectoryError
        ``folder`` is a file (nothing is written).
    IsADirectoryError
        A folder is where one of the tables goes (nothing is written).
    OSError
        A write failed (a full disk); it names the table, and no table is replaced.
    """
    _refuse_a_projection(adata, key)
    info = fit_info(adata, key)
    key = str(key)  # checked a string (fit_info): a numpy one as text in messages
    check_folder_name("folder", folder)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"{quoted_path(folder)} is a file, not a folder to write the tables into"
        )
    tables = [*_factor_tables(adata, info, key), _trace_table(info)]
    for table in tables:
        if folder.is_dir():
            clear_table_leftovers(folder / table.name)
    with held_signals() as deliver, ExitStack() as replacements:
        # atomic_file checks its target on entry, before anything is written; the
        # renames happen as the stack unwinds, only once every table is complete. Each
        # temporary is locked while it exists, so that a later write tells a killed
        # one's (`clear_table_leftovers`) from a live one's.
        temporaries = [
            replacements.enter_context(atomic_file(folder / table.name, lock=True))
            for table in tables
        ]
        for table, temporary in zip(tables, temporaries):
            try:
                write_tsv(
                    table.values,
                    temporary,
                    float_format=table.float_format,
                    index=table.index,
                    compressed_name=table.name if table.name.endswith(".gz") else None,
                    check=deliver,
                )
                # on disk before any table is renamed: a full disk met by the flush
                # (atomic_file's, as the stack unwinds) came after elbo.tsv had replaced
                # the earlier one, which then stood beside the earlier factor tables
                flush_to_disk(temporary, folder / table.name)
            except OSError as error:
                # named here by the table that failed: the error otherwise reached the
                # innermost atomic_file first, the last table's, which named elbo.tsv for a
                # full disk met while writing cell_factors.tsv.gz
                failed = failed_write(error, temporary)
                if failed is None:
                    raise
                raise OSError(failed.errno, failed.strerror, str(folder / table.name)) from None
    _warn_of_another_trace(folder, tables[-1].name)
    return [folder / table.name for table in tables]


def _refuse_a_projection(adata, key: str) -> None:
    """A `KeyError` for cells that hold only a projection under ``key`` (`vbsnmf.tl.project`)
    that says where their factors are. `fit_info`'s advice, to pass the reference AnnData,
    would write the reference's cells, not these."""
    check_anndata(adata)
    key = check_record_key(key)
    projection = held_projection(adata, key)
    if projection is None:
        return
    reference_key = held_reference_key(adata, projection)
    if reference_key is None:
        reference = "write them from tl.project's adata_ref"
    else:  # the reference projected onto itself
        reference = f"pass key={reference_key!r} instead, the projection's reference_key"
    factors = f"X_{key}"
    raise KeyError(
        f"adata holds a projection onto a reference fit (adata.uns[{key + '_projection'!r}], "
        "from vbsnmf.tl.project), not a fit of its own: write_nmf_tables writes the tables "
        f"of a fit (the reference's: {reference}); the projected cells' factors are "
        f"adata.obsm[{factors!r}], their usages adata.obsm[{factors + '_usage'!r}]"
    )


class _Table(NamedTuple):
    """One file of `write_nmf_tables`: its name, its values and how they are written."""

    name: str
    values: pd.DataFrame
    float_format: str
    index: bool


def _factor_tables(adata, info: dict, key: str) -> list[_Table]:
    """The cell factors and gene loadings of the fit ``info`` (``adata.uns[key]``) as
    tables named by cell and gene; a `KeyError` if their entry is gone."""
    # a fit of .raw has its loadings over every raw gene in .raw.varm (adata.varm: .var's);
    # one whose .raw is gone is refused, as the tools refuse it, not written with .var's genes
    genes = gene_holder(adata, key)
    gene_side = "varm" if genes is adata else "raw.varm"
    check_fit_entries(
        key, ("obsm", adata.obsm, info["obsm_key"]), (gene_side, genes.varm, info["varm_key"])
    )
    # refused rather than written as rows of empty fields (NaN rows of cells or genes the fit
    # never saw, which anndata.concat(join="outer") adds)
    cell_factors = finite_fit_array(key, "obsm", adata.obsm, info["obsm_key"])
    gene_loadings = finite_fit_array(key, gene_side, genes.varm, info["varm_key"])
    # refused as tl.top_genes refuses them: arrays cut by hand to some factors (the active
    # ones, say) were written as factor_0, factor_1, ..., numbers that named other factors
    # than top_genes and params.json do, and arrays cut to different widths met pandas'
    # "Shape of passed values is (507, 3), indices imply (507, 4)"
    n_components = info["params"]["n_components"]
    check_factor_columns(f"adata.obsm[{info['obsm_key']!r}]", cell_factors, n_components)
    check_factor_columns(f"adata.{gene_side}[{info['varm_key']!r}]", gene_loadings, n_components)
    columns = [f"factor_{factor}" for factor in range(n_components)]
    return [
        _Table(
            name,
            pd.DataFrame(values, index=pd.Index(index, name=label), columns=columns),
            "%.6g",
            True,
        )
        for name, values, index, label in (
            (CELL_FACTORS_FILE, cell_factors, adata.obs_names, "cell"),
            (GENE_LOADINGS_FILE, gene_loadings, genes.var_names, "gene"),
        )
    ]


def _trace_table(info: dict) -> _Table:
    """The ELBO per pass of the fit ``info`` (``elbo.tsv``), or a classical solver's loss per
    iteration (``loss.tsv``)."""
    if "elbo_trace" in info:
        trace = np.asarray(info["elbo_trace"], dtype=np.float64)
        # the pass (SVI: epoch) of each value: SQUAREM and SVI record fewer than passes
        name, columns = ELBO_FILE, {"iteration": elbo_iterations(info), "elbo": trace}
    else:  # a classical solver: its loss after 0, 1, ... iterations
        trace = np.asarray(info.get("loss_trace", []), dtype=np.float64)
        name, columns = LOSS_FILE, {"iteration": np.arange(trace.size), "loss": trace}
    return _Table(name, pd.DataFrame(columns), "%.10g", False)


def _warn_of_another_trace(folder: Path, written: str) -> None:
    """A `UserWarning` if ``folder`` holds the trace of the other kind than ``written``
    (``elbo.tsv`` or ``loss.tsv``): an earlier fit's, which no longer matches the tables.

    It is kept: a file of that name may be the user's, and vbsnmf removes nothing it did
    not just write."""
    other = LOSS_FILE if written == ELBO_FILE else ELBO_FILE
    if (folder / other).exists():
        warn_user(
            f"{quoted_path(folder / other)} is left from an earlier fit: the tables and {written} "
            f"just written are of another kind of fit; delete {other} if it is not wanted",
            UserWarning,
        )


# Rows of a table formatted at a time by `write_tsv`: memory stays bounded for a million
# cells, and ``check`` runs often enough to stop a long write.
_TSV_ROWS = 1 << 14
# The characters that make a field quoted: the separator, line breaks, the quote itself;
# and NUL and lone surrogates, which `_tsv_field` refuses.
_NEEDS_QUOTES = re.compile('[\t\n\r"\x00\ud800-\udfff]')
_SURROGATE = re.compile("[\ud800-\udfff]")


def write_tsv(
    table: pd.DataFrame,
    path: str | os.PathLike,
    *,
    float_format: str,
    index: bool = True,
    compressed_name: str | None = None,
    check: Callable[[], None] | None = None,
) -> None:
    """Write ``table`` to ``path`` as tab-separated text, as ``table.to_csv(path, sep="\\t",
    float_format=float_format, index=index)`` writes it, but with every field that holds a
    tab, a line break (``\\n`` or ``\\r``) or a quote put in quotes (its quotes doubled).

    `pandas.DataFrame.to_csv` leaves a lone ``\\r`` unquoted (Python's csv writer before
    3.11.9 and 3.12.3 quotes only the line terminator's characters), and readers take it
    for the end of a row: a name cut in two and a row more. Here `pandas.read_csv` (and
    any reader of quoted CSV fields) reads back every name as it was. Floats are written with
    ``float_format``, missing values as empty fields, anything else as its text.

    Parameters
    ----------
    table
        A table with one row of column names (flat columns).
    path
        The file to write (the caller's temporary file: it is written in place).
    float_format
        A ``%`` format for the floats, e.g. ``"%.6g"``.
    index
        Write the index (its levels) as the first columns.
    compressed_name
        Gzip-compress the file, recording this name (the table's own, e.g.
        ``"cell_factors.tsv.gz"``) in the gzip header: ``gunzip -N`` and archive tools
        name the file they extract by it, which would otherwise be the temporary's. No
        time is recorded, so the same table is the same bytes at every write.
    check
        Called before each block of rows (e.g. `vbsnmf._atomic.held_signals`' ``deliver``).
    """
    header = [*table.index.names, *table.columns] if index else list(table.columns)
    with ExitStack() as files:
        # newline="": a name's own "\n" is written as it is, never as the platform's line end
        if compressed_name is None:
            out = files.enter_context(open(path, "w", encoding="utf-8", newline=""))
        else:
            raw = files.enter_context(open(path, "wb"))
            # mtime=0 ("no time stamp", as gzip -n): the same table is the same bytes
            packed = files.enter_context(gzip.GzipFile(compressed_name, "wb", fileobj=raw, mtime=0))
            out = files.enter_context(io.TextIOWrapper(packed, encoding="utf-8", newline=""))
        out.write("\t".join("" if name is None else _tsv_field(str(name)) for name in header))
        out.write("\n")
        for start in range(0, len(table), _TSV_ROWS):
            if check is not None:
                check()
            columns = _tsv_columns(table.iloc[start : start + _TSV_ROWS], float_format, index)
            out.writelines("\t".join(fields) + "\n" for fields in zip(*columns))


def _tsv_columns(block: pd.DataFrame, float_format: str, index: bool) -> list[list[str]]:
    """The fields of ``block`` column by column (`_tsv_column`), with ``index`` its index's
    levels first."""
    columns = [block.iloc[:, column] for column in range(block.shape[1])]
    if index:
        levels = [block.index.get_level_values(level) for level in range(block.index.nlevels)]
        columns = [*levels, *columns]
    return [_tsv_column(values, float_format) for values in columns]


def _tsv_column(values: pd.Series | pd.Index, float_format: str) -> list[str]:
    """The fields of one column: floats formatted with ``float_format``, anything else as
    its text (`_tsv_field`); missing values empty, as `pandas.DataFrame.to_csv` writes them."""
    missing = np.asarray(pd.isna(values)).tolist()
    floats = values.dtype.kind == "f"
    return [
        "" if gone else (float_format % value if floats else _tsv_field(str(value)))
        for gone, value in zip(missing, values.tolist())
    ]


def _tsv_field(text: str) -> str:
    """``text`` as one field of a tab-separated file: in quotes, its own quotes doubled, when
    it holds a tab, a line break or a quote.

    Raises
    ------
    ValueError
        ``text`` holds a NUL character: readers (pandas, R) end the field there, so the
        name would be read back cut (``"a\\x00b"`` as ``"a"``), as no quoting prevents.
        Or a lone surrogate (a byte of another encoding decoded with
        ``errors="surrogateescape"``), which UTF-8 cannot encode: the write failed with a
        bare `UnicodeEncodeError` naming neither the name nor the table.
    """
    if _NEEDS_QUOTES.search(text) is None:
        return text
    if "\x00" in text:
        raise ValueError(
            f"the name {text!r} holds a NUL character, which a text table cannot carry "
            "(readers end the name there): rename it"
        )
    if _SURROGATE.search(text) is not None:
        raise ValueError(
            f"the name {text!r} holds a lone surrogate character, which UTF-8 text cannot "
            "carry (text decoded from another encoding): rename it"
        )
    return '"' + text.replace('"', '""') + '"'


def write_result(adata, path: str | os.PathLike) -> Path:
    """Write ``adata`` with its fit to ``path`` as a gzip-compressed ``.h5ad``, atomically.

    A backed AnnData's X (sparse, as a streamed fit leaves it, or dense) is copied from its
    file a block of entries at a time, so memory does not grow with the nonzeros, and so is
    the X of its ``.raw``; the rest (``obs``, ``var``, ``obsm``, ``varm``, ``layers``,
    ``obsp``, ``varp``, ``uns``, and ``.raw``'s ``var`` and ``varm``, where a fit of
    ``.raw`` puts its gene side) is written as it is in memory; a ``.raw`` deleted in
    memory (``del adata.raw``) is not written, nor an X its file does not hold (counts in
    its layers only). Text columns of ``.obs``, ``.var`` and ``.raw.var`` are stored as
    categoricals, as `anndata.AnnData.write_h5ad` stores them, but ``adata`` is left as it
    was: its columns keep their dtypes, and a view (``adata[mask]``) stays a view. Returns
    ``path``.

    Raises
    ------
    FileNotFoundError
        The folder of ``path`` does not exist.
    IsADirectoryError
        ``path`` is a folder.
    UnsafePathError
        ``path`` ends with a path separator (a folder's name, which `pathlib` would drop
        to write a file of the folder's name) or is empty. Nothing is written.
    ValueError
        ``path``'s name says it is another format (ends in ``.zarr``, ``.mtx``,
        ``.mtx.gz``, ``.loom``, ``.h5ad.gz`` or ``.h5.gz``, which `read` reads as that);
        ``adata`` is a view of a backed AnnData (``adata[:100]``): read it into memory
        first, as the message says (``.to_memory()``, or ``anndata.read_h5ad`` of a file
        without X); or it holds text an ``.h5ad`` cannot store (a NUL character, a lone
        surrogate), or a table (``.obs``, ``.var``, ...) with a column named ``_index``, a
        column name twice or an index name that names a column of other values; the
        message says where. Nothing is written.
    TypeError
        ``adata`` is not an AnnData (a matrix, a path, an AnnData's ``.raw``); or it
        holds a value an ``.h5ad`` cannot store (e.g. a function in ``.uns``,
        an ``.obs`` column mixing numbers and text, a key in ``.uns`` or ``.obsm`` that is not
        a string or holds ``/``, a key, column or index name that is ``""``, ``"."`` or holds
        a NUL character); the message says where. Nothing is written.
    OSError
        A write failed (a full disk, a file-size limit); it names ``path``, which is left as
        it was.
    """
    try:  # anndata's error of an unwritable value, not exported by it
        from anndata._io.specs.registry import IORegistryError
    except ImportError:  # pragma: no cover - another anndata layout: its error as it is
        IORegistryError = ()

    # anything but an AnnData failed with a bare AttributeError ("'numpy.ndarray' object has
    # no attribute 'isbacked'"), as write_nmf_tables' adata no longer does
    check_anndata(adata)
    check_file_name("path", path)
    path = Path(path)
    _check_result_name(path)
    if adata.isbacked and adata.is_view:
        # its X is copied from the file, which holds every cell and gene, not the view's
        raise ValueError(
            "adata is a view of a backed AnnData, whose X write_result would copy whole "
            f"from its file: {to_memory_advice(adata)} and write that"
        )
    try:
        return _write_result(adata, path)
    except (IORegistryError, TypeError) as error:
        # anndata says where only in a note, which a caller catching the error and printing
        # it never shows: on its own type (an Exception) and on h5py's TypeError for an
        # object column it cannot store ("Can't implicitly convert non-string objects")
        where = "; ".join(getattr(error, "__notes__", []))
        if not isinstance(error, IORegistryError) and not where:
            raise
        raise TypeError(
            f"cannot write {quoted_path(path)}: {error}" + (f" ({where})" if where else "")
        ) from None


# Names `vbsnmf.io.read` reads as another format than an .h5ad (`input_kind`): an .h5ad
# written under one was a file that neither it nor anndata's reader of that format opens.
_OTHER_FORMATS = {
    ".zarr": "a .zarr store (adata.write_zarr writes one)",
    ".mtx": "a Matrix Market file",
    ".mtx.gz": "a gzip-compressed Matrix Market file",
    ".loom": "a .loom file",
    ".h5ad.gz": "a gzip-compressed .h5ad",
    ".h5.gz": "a gzip-compressed .h5",
}


def _check_result_name(path: Path) -> None:
    """A `ValueError`, before anything is written, for a ``path`` whose name says it is
    another format than the ``.h5ad`` `write_result` writes (`_OTHER_FORMATS`)."""
    name = path.name.lower()
    for suffix, what in _OTHER_FORMATS.items():
        if name.endswith(suffix):
            raise ValueError(
                f"{quoted_path(path)}: write_result writes an .h5ad (HDF5) file, but to "
                f"vbsnmf.io.read a name ending in {suffix} is {what}, so the file would not read "
                f"back: name it {quoted_path((path.name[: -len(suffix)] or 'result') + '.h5ad')}"
            )


def _write_result(adata, path: Path) -> Path:
    with atomic_hdf5(path) as (out, check):
        if not adata.isbacked:
            _write_anndata(out, adata, check)
            return path
        _write_anndata(out, without_x(adata), check)
        with _backing_file(adata) as source:
            if "X" in source:  # none in a file of layers only (a fit of one of them)
                _copy_x(source["X"], out, "X", check)
            if "raw" in source and adata.raw is not None:  # not one deleted in memory
                _copy_raw(adata, source["raw"], out, check)
    return path


@contextmanager
def _backing_file(adata) -> Iterator[h5py.File]:
    """The HDF5 file behind the backed ``adata``: the one it holds open, or its file opened
    anew if it was closed. Not the file named ``adata.filename`` now: a conversion or write
    into that path since replaces it by a new file (atomically), and result.h5ad took its X,
    other counts, beside this fit's factors."""
    import h5py

    if adata.file.is_open:
        yield adata.file["/"].file
        return
    with h5py.File(adata.filename, "r") as source:
        yield source


def _write_anndata(out, adata, check: Callable[[], None]) -> None:
    """``adata`` into the open file ``out`` as `anndata.AnnData.write_h5ad` writes it
    (strings as categoricals, gzip), ``check`` called before each element. ``adata`` is
    left as it was (`_text_as_categoricals`)."""
    from anndata.experimental import write_dispatched

    def write(write_elem, store, key, elem, *, dataset_kwargs, iospec) -> None:
        check()  # once a write failed, the rest would only be discarded
        if elem is None and key == "/raw":  # write_h5ad writes no .raw when there is none
            return
        if isinstance(elem, Mapping):
            _check_keys(key, elem)
        elif isinstance(elem, pd.DataFrame):
            _check_frame_names(key, elem)
            if key in _CATEGORICAL_TEXT:
                elem = _text_as_categoricals(adata, elem)
        try:
            write_elem(store, key, elem, dataset_kwargs=dataset_kwargs)
        except UnicodeEncodeError as error:  # the innermost element: its key says where
            bad = error.object[error.start : error.end]
            raise ValueError(
                f"the element at {key} holds text that is not valid Unicode ({bad!r}: a lone "
                "surrogate, as a name decoded with errors='surrogateescape' has), which an "
                ".h5ad cannot store: replace it first (e.g. name.encode('utf-8', "
                "'surrogateescape').decode('utf-8', 'replace'))"
            ) from None
        except ValueError as error:
            if "embedded NULL" not in str(error):  # h5py's, naming no element
                raise
            raise ValueError(
                f"the element at {key} holds text with a NUL character ('\\x00'), which an "
                ".h5ad cannot store: remove it first"
            ) from None

    write_dispatched(out, "/", adata, callback=write, dataset_kwargs={"compression": "gzip"})


# The tables whose text columns `anndata.AnnData.write_h5ad` stores as categoricals.
_CATEGORICAL_TEXT = frozenset({"/obs", "/var", "/raw/var"})


def _text_as_categoricals(adata, frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` (a table of ``adata``; not a copy of its columns) with its text
    columns categorical, as `anndata.AnnData.strings_to_categoricals` makes them (those with
    fewer values than rows).

    Converted on a copy, as a writer must not change what it writes: anndata's own
    conversion, in place, turned a view (``adata[mask]``) into an AnnData of its own, with
    anndata's ``ImplicitModificationWarning``, and changed the caller's ``.obs`` dtypes."""
    frame = frame.copy(deep=False)  # a DataFrame, also of a view's DataFrameView
    adata.strings_to_categoricals(frame)  # given a table, anndata converts only that one
    return frame


def _check_keys(where: str, mapping: Mapping) -> None:
    """A `TypeError` naming the first key of ``mapping`` (the element ``where`` of the
    file, e.g. ``/uns/names``) that an ``.h5ad`` cannot store as it is: one that is not a
    string, which anndata met with a bare "'int' object has no attribute 'rsplit'" (a dict
    of cluster names by number in ``.uns``), or one holding ``/``, which HDF5 takes for a
    path: ``.uns['a/b']`` read back as ``.uns['a']['b']``, and an ``.obsm['a/b']`` made a
    file that anndata cannot read."""
    for name in mapping:
        if not isinstance(name, str):
            raise TypeError(
                f"the mapping at {where} has the key {name!r} ({type(name).__name__}), and an "
                ".h5ad stores only string keys: make them strings (str(key)) first"
            )
        if "/" in name:
            raise TypeError(
                f"the mapping at {where} has the key {name!r}, and an .h5ad stores a '/' in "
                "a key as a path of nested groups (not read back as it was): rename it"
            )
        _check_member_name(f"the mapping at {where} has the key", name)


def _check_frame_names(where: str, frame: pd.DataFrame) -> None:
    """A `TypeError` naming a column or the index name of the table ``frame`` (the element
    ``where``, e.g. ``/obs``) that an ``.h5ad`` cannot store as the name of its member
    (`_check_member_name`), or a column whose ``/`` makes it a member of another column:
    anndata writes ``"a/b"`` as the group ``a`` holding ``b`` (read back as it was, with a
    warning), but beside a column ``"a"`` the file could not be read."""
    if frame.index.name is not None:
        _check_member_name(f"the table at {where} has the index name", frame.index.name)
    _check_frame_layout(where, frame)
    columns = set(frame.columns)
    for name in frame.columns:
        _check_member_name(f"the table at {where} has the column", name)
        if not isinstance(name, str):
            continue
        parts = name.split("/")
        held_in = ["/".join(parts[:end]) for end in range(1, len(parts))]
        clash = next((column for column in held_in if column in columns), None)
        if clash is not None:
            raise TypeError(
                f"the table at {where} has the columns {clash!r} and {name!r}, and an .h5ad "
                f"stores the '/' of {name!r} as a path into {clash!r}: rename one"
            )


def _check_frame_layout(where: str, frame: pd.DataFrame) -> None:
    """A `ValueError` naming the table ``frame`` (the element ``where``, e.g. ``/var``) for
    what anndata refuses in a table with a message that names no table: a column named
    ``_index`` (the name anndata reserves for the index), a column name held twice, or an
    index name that is also the name of a column of other values (``adata.obs.index.name =
    "cell"`` beside an ``.obs['cell']`` of other text)."""
    name = frame.index.name
    if "_index" in frame.columns:
        problem = "a column named '_index'"
        advice = "rename the column (an .h5ad names the index '_index')"
    elif not frame.columns.is_unique:
        repeated = list(dict.fromkeys(frame.columns[frame.columns.duplicated()]))
        problem = f"the column names {repeated} more than once"
        advice = "rename or drop the repeated columns"
    elif (
        name is not None
        and name in frame.columns
        and not pd.Series(frame.index, index=frame.index).equals(frame[name])
    ):
        problem = f"the index name {name!r}, also the name of a column holding other values"
        advice = "rename the column, or the index (its .index.name = None)"
    else:
        return
    raise ValueError(f"the table at {where} has {problem}, which an .h5ad cannot store: {advice}")


def _check_member_name(what: str, name) -> None:
    """A `TypeError` (``what`` says where) for ``name`` when HDF5 cannot name a member of a
    group by it: ``""`` and ``"."`` name the group itself, so its element was written over
    the group (a file anndata then failed to read, its ``.uns`` or ``.obs`` lost), and a
    NUL character ends a name (``"a\\x00b"`` read back as ``"a"``)."""
    if isinstance(name, str) and (name in ("", ".") or "\x00" in name):
        raise TypeError(
            f"{what} {name!r}, which an .h5ad cannot store as a name (it would not be read "
            "back as it was): rename it"
        )


def _copy_raw(adata, stored, out, check: Callable[[], None]) -> None:
    """The backed ``adata``'s ``.raw``: its X copied from its file a block at a time, its
    ``var`` (text as categoricals) and ``varm`` written as they are in memory, where a fit
    of ``.raw`` (``use_raw=True``) put its gene side."""
    from anndata.io import write_elem

    raw = adata.raw
    target = out.create_group("raw")
    _copy_attributes(stored, target)
    _copy_x(stored["X"], target, "X", check)
    _check_frame_names("/raw/var", raw.var)
    _check_keys("/raw/varm", raw.varm)
    write_elem(target, "var", _text_as_categoricals(adata, raw.var))
    write_elem(target, "varm", dict(raw.varm))


def _copy_x(stored, parent, name: str, check: Callable[[], None]) -> None:
    """The X ``stored`` (a CSR or CSC group in anndata's encoding, or a dense dataset) into
    ``parent[name]``, a block of entries at a time, so memory does not grow with it."""
    import h5py

    if isinstance(stored, h5py.Group):
        target = parent.create_group(name)
        for array in ("indptr", "indices", "data"):
            _copy_array(stored[array], target, array, check)
    else:
        target = _copy_array(stored, parent, name, check)
    _copy_attributes(stored, target)


def _copy_attributes(stored, target) -> None:
    """The HDF5 attributes of ``stored`` (anndata's encoding of an element) onto ``target``."""
    for key, value in stored.attrs.items():
        target.attrs[key] = value


def _copy_array(stored, parent, name: str, check: Callable[[], None]):
    """The dataset ``stored`` into ``parent[name]``, gzip-compressed, about `_COPY_ENTRIES`
    entries (whole rows) at a time, ``check`` called before each block; returns the copy."""
    copy = parent.create_dataset(name, shape=stored.shape, dtype=stored.dtype, compression="gzip")
    rows = max(_COPY_ENTRIES // max(int(np.prod(stored.shape[1:])), 1), 1)
    for start in range(0, stored.shape[0], rows):
        check()
        copy[start : start + rows] = stored[start : start + rows]
    return copy


@contextmanager
def atomic_hdf5(
    target: Path, *, created: list | None = None
) -> Iterator[tuple[h5py.File, Callable[[], None]]]:
    """An HDF5 file (`h5py.File`) written atomically to ``target`` (`atomic_file`) through
    `_Sink`, and ``check``, to call between blocks of work: it raises the first failed
    write (a full disk, a size limit) as an `OSError` naming ``target``. With ``created``
    (a list), ``target`` is made as a new file, never replacing one (`atomic_file`'s
    ``exclusive``, whose ``created`` it is).

    An exception in the block after a failed write becomes that `OSError` (the write
    explains it); whatever fails, the temporary file is removed and the process lives. A
    temporary of ``target`` that a killed write left (SIGKILL, a power loss) is removed by
    the next write of ``target`` (`clear_hdf5_leftovers`).

    Ctrl-C and the stop signals are held (`held_signals`) while the file is written and
    handled at ``check`` or at the end, before the rename: HDF5 calls the sink's Python
    methods, and an exception raised in one by a signal's handler was printed and dropped
    by h5py, which left a block of the file unwritten and went on to publish it.
    """
    import h5py

    exclusive = created is not None
    clear_hdf5_leftovers(target)
    # Locked while it exists, so that a later write tells a killed one's temporary from a
    # live one's. h5py writes through `_Sink`, a Python file, so HDF5 takes no lock of its
    # own on it that this one would meet.
    with (
        atomic_file(target, lock=True, exclusive=exclusive, created=created) as temporary,
        open(temporary, "r+b", buffering=0) as handle,
    ):
        sink = _Sink(handle.fileno(), target)
        with held_signals() as deliver:

            def check() -> None:
                deliver()
                sink.check()

            try:
                with h5py.File(sink, "w") as out:
                    yield out, check
            except Exception:
                sink.check()
                raise
            sink.check()


class _Sink:
    """The file behind h5py's file-object driver (``h5py.File(sink)``): HDF5's writes never
    fail here.

    HDF5 does not survive a failed write: closing an object (a dataset flushes its chunks
    when closed) that fails has already freed part of it but leaves it open, and its next
    close (h5py's garbage collection, HDF5's shutdown at exit) reads the freed memory and the
    process dies of SIGSEGV (h5py issues 914 and 2160). So the first failure is kept in
    `error`, and every write after it is kept in memory instead of the file, where HDF5
    reads it back: HDF5 sees a consistent file, every close succeeds, and the writer stops at
    its next ``check``; what it kept meanwhile (a block of a copy, or the rest of an
    in-memory element, compressed) is freed with the sink.
    """

    def __init__(self, fd: int, target: Path):
        self._fd = fd
        self._target = target
        self._position = 0
        self._size = 0  # the file's size as HDF5 sees it, once a write failed
        self._kept: dict[int, bytes] = {}  # offset: bytes, in the order written
        self.error: OSError | None = None

    def check(self) -> None:
        """Raise the first failed write as an `OSError` naming the target."""
        if self.error is not None:
            raise OSError(self.error.errno, self.error.strerror, str(self._target))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:  # how the driver asks the size
            offset += os.fstat(self._fd).st_size if self.error is None else self._size
        elif whence == os.SEEK_CUR:
            offset += self._position
        self._position = offset
        return offset

    def tell(self) -> int:
        return self._position

    def read(self, size: int) -> bytes:
        """h5py takes an object with ``read`` and ``seek`` for a file; it reads with
        `readinto`."""
        buffer = bytearray(size)
        self.readinto(buffer)
        return bytes(buffer)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):
            count = os.preadv(self._fd, [view[done:]], self._position + done)
            if count == 0:
                break
            done += count
        view[done:] = bytes(len(view) - done)  # past the end: zeros, as HDF5's own driver
        end = self._position + len(view)
        for start, data in self._kept.items():
            if start < end and self._position < start + len(data):
                low, high = max(start, self._position), min(start + len(data), end)
                view[low - self._position : high - self._position] = data[
                    low - start : high - start
                ]
        return len(view)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self._fd, view[done:], self._position + done)
                return len(view)
            except OSError as error:
                self._fail(error)
        self._kept.pop(self._position, None)  # re-added last: a later write wins on reads
        self._kept[self._position] = bytes(view)
        self._size = max(self._size, self._position + len(view))
        return len(view)

    def truncate(self, size: int) -> int:
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
                return size
            except OSError as error:
                self._fail(error)
        self._size = size
        return size

    def flush(self) -> None:
        """Nothing to flush: writes go to the file unbuffered (`atomic_file` syncs it)."""

    def _fail(self, error: OSError) -> None:
        self.error = error
        self._size = os.fstat(self._fd).st_size
