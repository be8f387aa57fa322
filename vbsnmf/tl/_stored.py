"""Where a `nmf` fit lives in an AnnData, and reading it back.

Per-cell arrays are in ``.obsm``, per-gene arrays in ``.varm`` (in ``.raw.varm`` for a fit of
``.raw``), and only K-sized things and settings in ``.uns``, so that subsetting cells or
genes keeps a fit that ``warm_start`` and `project` can use.
"""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._base import name_hashes, order_free_digest
from .._model import HYPER_KEYS, SCALE_KEYS
from .._utils import (
    check_anndata,
    check_cells_of_one_fit,
    check_not_transposed,
    check_record_key,
    concat_dropped,
    damaged_record,
    fit_info,
    gene_holder,
    numeric_fit_array,
    orphaned_cell_arrays,
    record_entry,
    record_kind,
    replaced_record_cause,
    transposed_after_fit,
)
from .._validation import check_flag
from ..classic._options import SOLVERS as CLASSIC_SOLVERS
from ..io._stored import to_memory_advice

VARIATIONAL_KEYS = ("cell_shape", "cell_rate", "gene_shape", "gene_rate")
# the per-cell and per-gene arrays a fit stores as "<key>_<name>"
_ARRAYS = VARIATIONAL_KEYS + SCALE_KEYS


@dataclass(frozen=True)
class FitKeys:
    """The keys of one fit, named as ``scanpy.pp.pca`` names its own (``key_added``)."""

    uns: str
    factors: str  # .obsm: E[z]
    usage: str  # .obsm: each cell's share of its fitted counts per factor
    sqrt_usage: str  # .obsm: its square root, the recommended use_rep
    loadings: str  # .varm: E[w]

    @classmethod
    def of(cls, key_added: str | None) -> FitKeys:
        name = "nmf" if key_added is None else key_added
        loadings = "NMF" if key_added is None else key_added
        return cls(name, f"X_{name}", f"X_{name}_usage", f"X_{name}_sqrt_usage", loadings)

    def variational(self, name: str) -> str:
        """``.obsm`` / ``.varm`` key of a Gamma parameter: ``nmf_cell_shape``, ..."""
        return f"{self.uns}_{name}"

    @property
    def total_counts(self) -> str:
        """``.var`` column: each fitted gene's total count."""
        return f"{self.uns}_total_counts"


def index_named_as_totals(adata, key_added: str | None, use_raw: bool) -> bool:
    """Whether the genes' index (``.var``'s, or ``.raw.var``'s with ``use_raw``) is named
    as the column of total counts a fit under ``key_added`` adds (`FitKeys.total_counts`):
    anndata cannot write the two into an ``.h5ad``, so the fit's AnnData could not be
    saved. Asked by `vbsnmf.tl.nmf` and, naming the file, by the command line."""
    genes = adata.raw if use_raw else adata  # None: the caller's reader says so
    return genes is not None and genes.var.index.name == FitKeys.of(key_added).total_counts


# The fit record's entry of each factor's total loading over the fitted genes (`usage`'s
# ``t_l``), which `project` weighs the usages of new cells by.
LOADING_TOTALS_ENTRY = "loading_totals"


def loading_totals(gene_loadings) -> np.ndarray:
    """Each factor's expected count per unit of its cell factor, ``t_l = sum_j w_jl`` over
    the genes of ``gene_loadings`` (genes x K), in float64."""
    return np.asarray(gene_loadings, dtype=np.float64).sum(axis=0)


def usage(cell_factors, gene_loadings, totals=None):
    """Each cell's share of its fitted counts from each factor (zero for a cell without
    any): ``z_il t_l / sum_k z_ik t_k`` with ``t_l = sum_j w_jl``, the factor's expected
    count per unit of ``z_il``; rows sum to one. Unchanged when a factor is rescaled
    (``z_l s``, ``w_l / s``: the same fit), as fastTopics' ``poisson2multinom`` and cNMF's
    ``usage_norm`` (whose spectra sum to one). ``totals``: the fit's ``t_l`` over all its
    genes where ``gene_loadings`` holds only some of them (`loading_totals`)."""
    totals = loading_totals(gene_loadings) if totals is None else totals
    counts = cell_factors * np.asarray(totals, dtype=np.float64).astype(cell_factors.dtype)
    sums = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, sums, out=np.zeros_like(counts), where=sums > 0)


def cell_factor_arrays(keys: FitKeys, cell_factors, gene_loadings, totals=None) -> dict:
    """``.obsm`` entries of a fit's cells: the factors, their usages given the fit's
    ``gene_loadings`` (or its factor ``totals``, `usage`) and the usages' square roots."""
    shares = usage(cell_factors, gene_loadings, totals)
    return {keys.factors: cell_factors, keys.usage: shares, keys.sqrt_usage: shares**0.5}


# The fit record's entries by which a warm start tells other cells, genes or counts from
# the fit's own in another order (`fit_identity`).
CELLS_DIGEST_ENTRY = "cells_digest"
GENES_DIGEST_ENTRY = "genes_digest"
COUNTS_SKETCH_ENTRY = "counts_sketch"


def fit_identity(cell_names, cell_totals, gene_names, gene_totals) -> dict:
    """The record's entries of the cells, genes and counts fitted, all of which ignore the
    order of the cells and genes, from one hash of each name (`name_hashes`; about 0.3 s
    for a million names): `CELLS_DIGEST_ENTRY` and `GENES_DIGEST_ENTRY`, digests (16 hex
    digits) of the names (`order_free_digest`: the same names in another order give the
    same digest, a name swapped for another, or repeated in place of one, another), and
    `COUNTS_SKETCH_ENTRY`, two numbers: each cell's total count and each gene's, weighed by
    a number in [1, 2) drawn from its name's hash and summed. Other counts in cells and
    genes of the same names (another layer copied into X, counts edited, the rows of X
    reordered without its obs_names) change a cell's or a gene's total, and so the sum,
    but for totals that change in ways that cancel exactly. From the totals the fit sums
    anyway: no pass over the counts."""
    cell_hashes, gene_hashes = name_hashes(cell_names), name_hashes(gene_names)
    sketch = [_named_sum(cell_hashes, cell_totals), _named_sum(gene_hashes, gene_totals)]
    return {
        CELLS_DIGEST_ENTRY: order_free_digest(cell_hashes),
        GENES_DIGEST_ENTRY: order_free_digest(gene_hashes),
        COUNTS_SKETCH_ENTRY: np.array(sketch, dtype=np.float64),
    }


def _named_sum(hashes: np.ndarray, totals) -> float:
    """``totals`` weighed by a number in [1, 2) drawn from each name's hash (``hashes``;
    its 53 high bits, as a float64 holds them) and summed (`fit_identity`)."""
    weights = 1.0 + (hashes >> np.uint64(11)).astype(np.float64) * 2.0**-53
    # fsum: the exactly rounded sum of the products, the same in whatever order they come
    return math.fsum(weights * np.asarray(totals, dtype=np.float64).ravel())


def counts_sketch_differs(recorded, current: np.ndarray) -> bool:
    """Whether the record's `COUNTS_SKETCH_ENTRY` (``recorded``; None in a record written before
    it was kept: False) differs from ``current`` beyond rounding. Integer counts give the
    same sketch in any order; non-integer ones are summed into a cell's total in another
    order when the genes are reordered, which rounds otherwise by far less than the relative
    1e-10 allowed here. A change below it goes unseen: one count moved from a cell to
    another is seen in data of up to about a billion counts."""
    if recorded is None:
        return False
    return not np.allclose(np.asarray(recorded, dtype=np.float64), current, rtol=1e-10, atol=0)


def recorded_loading_totals(info: dict, where: str) -> np.ndarray | None:
    """The fit record ``info``'s `LOADING_TOTALS_ENTRY` (``where``: the record, for
    messages), checked as one finite, non-negative number per factor; None in a record
    written before it was kept."""
    if LOADING_TOTALS_ENTRY not in info:
        return None
    n_components = info["params"]["n_components"]
    totals = _stored_numbers(info, LOADING_TOTALS_ENTRY, where, n_components)
    if (totals < 0).any():
        raise damaged_record(
            f"{where}[{LOADING_TOTALS_ENTRY!r}]", f"{reprlib.repr(totals)}, negative totals"
        )
    return totals.astype(np.float64)


def _same_fit(info: dict, other: dict | None) -> bool:
    """Whether two ``.uns`` records are of one fit (a copy of an AnnData carries its fit)."""
    if other is None:
        return False
    traces = (np.asarray(record.get("elbo_trace", [])) for record in (info, other))
    shares = (np.asarray(record.get("factor_share", [])) for record in (info, other))
    return bool(np.array_equal(*traces) and np.array_equal(*shares))


# What each tool writes (`check_key_added`'s ``writes``: the kinds of `record_kind`), its
# name and the others' in messages.
_RECORD_WRITTEN = {"fit": "fit", "cells": "projection", "uns": "k_selection"}
_TOOLS = {"fit": "vbsnmf.tl.nmf", "cells": "vbsnmf.tl.project", "uns": "vbsnmf.tl.select_k"}
_RECORD_NAMES = {
    "projection": "a projection (tl.project)",
    "k_selection": "a K selection (tl.select_k)",
}


# Where scanpy's own tools store their results, and the tool: a vbsnmf result stored there
# (``key_added="umap"`` puts the cell factors in ``.obsm['X_umap']`` and the record in
# ``.uns['umap']``) is overwritten by that tool's next run without a word, and read as its
# result by the tools that read it (``sc.pl.umap``, ``sc.pp.neighbors`` of ``X_pca``).
_SCANPY_ENTRIES = {
    ("obsm", "X_pca"): "sc.pp.pca",
    ("uns", "pca"): "sc.pp.pca",
    ("varm", "PCs"): "sc.pp.pca",
    ("obsm", "X_umap"): "sc.tl.umap",
    ("uns", "umap"): "sc.tl.umap",
    ("obsm", "X_tsne"): "sc.tl.tsne",
    ("uns", "tsne"): "sc.tl.tsne",
    ("obsm", "X_diffmap"): "sc.tl.diffmap",
    ("obsm", "X_draw_graph_fa"): "sc.tl.draw_graph",
    ("obsm", "X_draw_graph_fr"): "sc.tl.draw_graph",
    ("uns", "draw_graph"): "sc.tl.draw_graph",
    ("uns", "neighbors"): "sc.pp.neighbors",
    ("uns", "leiden"): "sc.tl.leiden",
    ("uns", "louvain"): "sc.tl.louvain",
    ("uns", "rank_genes_groups"): "sc.tl.rank_genes_groups",
    ("uns", "paga"): "sc.tl.paga",
    ("uns", "spatial"): "sc.read_visium",
}


def check_key_added(key_added, adata, writes: str = "fit", reference: dict | None = None) -> None:
    """Refuse a ``key_added`` that an ``.h5ad`` cannot hold (anndata's writer fails part-way
    through the file on an empty key, a key starting with "." or one holding "/", a NUL
    character or a lone surrogate, which UTF-8 cannot encode), or one under which the tool
    would overwrite an entry it did not write: those of another fit or projection stored in
    ``adata``, another tool's ``.uns`` record (a projection's, a K selection's), or anything
    else already there (scanpy's ``.obsm['X_pca']`` and ``.uns['pca']`` for
    ``key_added="pca"``). Each tool replaces its own earlier result under the same key
    (``writes``: ``"fit"`` for `tl.nmf`'s keys, ``"cells"`` for `tl.project`'s ``.obsm``
    entries and record, ``"uns"`` for `tl.select_k`'s ``.uns`` entry). None: `tl.nmf`'s
    default keys.
    ``reference``: `tl.project`'s reference fit, whose copy in ``adata`` the projection may
    write over (another fit under the same key it may not)."""
    default = key_added is None and writes == "fit"
    if not default and not isinstance(key_added, str):  # as `fit_info`'s ``key``
        allowed = "a string or None" if writes == "fit" else "a string"
        raise TypeError(f"key_added must be {allowed}, got {type(key_added).__name__}")
    if not default and not _writable_key(key_added):
        raise ValueError(
            "key_added must be a non-empty string that does not start with '.' and holds no "
            f"'/', NUL or lone surrogate character (an .h5ad cannot store them), got {key_added!r}"
        )
    keys = FitKeys.of(key_added)
    record_key = {"fit": keys.uns, "cells": f"{keys.uns}_projection", "uns": key_added}[writes]
    existing = record_kind(adata.uns.get(record_key))
    # another tool's record; a fit's is named with the other entries it would overwrite, below
    if existing not in (None, "fit", _RECORD_WRITTEN[writes]):
        raise ValueError(
            f"key_added={key_added!r} would overwrite adata.uns[{record_key!r}], the record "
            f"of {_RECORD_NAMES[existing]}; choose another key_added"
        )
    if writes == "uns":
        mine = {("uns", key_added)}
    else:
        mine = {("obsm", keys.factors), ("obsm", keys.usage), ("obsm", keys.sqrt_usage)}
    if writes == "cells":
        mine.add(("uns", record_key))
    if writes == "fit":
        mine |= {("uns", keys.uns), ("varm", keys.loadings), ("var", keys.total_counts)}
        mine |= {(_array_side(name), keys.variational(name)) for name in _ARRAYS}
    records = {other: record for other, record in adata.uns.items() if record_kind(record)}
    # The entries of this tool's own earlier result under this key, which it replaces, and
    # those of the reference's copy, whose cells a projection writes over (another fit's not).
    replaced = set()
    for other, record in records.items():
        own = other == record_key and record_kind(record) == _RECORD_WRITTEN[writes]
        onto_reference = writes == "cells" and other == keys.uns and _same_fit(record, reference)
        if own or onto_reference:
            replaced |= record_entries(other, record)
    for other, record in records.items():
        theirs = record_entries(other, record)
        clash = sorted(f".{where}[{name!r}]" for where, name in (mine & theirs) - replaced)
        if clash:
            owner = "the fit" if record_kind(record) == "fit" else "the projection"
            raise ValueError(
                f"key_added={key_added!r} would overwrite {', '.join(clash)} of {owner} "
                f"adata.uns[{other!r}]; choose another key_added"
            )
    # Entries no vbsnmf record owns (scanpy's PCA under key_added="pca", the user's own):
    # overwritten, they were lost, and what other tools stored beside them left stale.
    holders = {"obsm": [adata.obsm], "uns": [adata.uns], "varm": [adata.varm], "var": [adata.var]}
    if adata.raw is not None:  # a fit of .raw writes its gene side there
        holders["varm"].append(adata.raw.varm)
        holders["var"].append(adata.raw.var)
    foreign = sorted(
        f".{where}[{name!r}]"
        for where, name in mine - replaced
        if any(name in holder for holder in holders[where])
    )
    if foreign:
        them = "it" if len(foreign) == 1 else "them"
        held = f"from elsewhere (not from an earlier {_TOOLS[writes]} under this key)"
        orphaned = writes != "uns" and orphaned_cell_arrays(adata, keys.uns)
        if orphaned and keys.uns in adata.uns:
            # their record replaced by scanpy's (sc.pp.neighbors(key_added="nmf")): not from
            # elsewhere, they came from an earlier fit under this key
            held = f"without their record: {replaced_record_cause(keys.uns)}"
        elif orphaned:
            # a fit's arrays whose record is gone (anndata.concat drops .uns by default):
            # not "from elsewhere", as the tools reading them had said to run tl.nmf
            held = (
                "without the record of the fit or projection they came from (no "
                f"adata.uns[{keys.uns!r}] nor [{keys.uns + '_projection'!r}]: dropped by "
                "anndata.concat?)"
            )
        raise ValueError(
            f"key_added={key_added!r} would overwrite {', '.join(foreign)}, which adata holds "
            f"{held}; choose another key_added, or delete {them} from adata first"
        )
    reserved = sorted(entry for entry in mine - replaced if entry in _SCANPY_ENTRIES)
    if reserved:
        tools = sorted({_SCANPY_ENTRIES[entry] for entry in reserved})
        written = {"fit": "the fit", "cells": "the projection", "uns": "the K selection"}
        raise ValueError(
            f"key_added={key_added!r} would store {written[writes]} where scanpy's "
            f"{' and '.join(tools)} stores its result "
            f"({', '.join(f'.{where}[{name!r}]' for where, name in reserved)}): its next run "
            "would overwrite it without a word, and scanpy would read it as its own; choose "
            "another key_added"
        )


def _array_side(name: str) -> str:
    """Where a fit stores its per-cell or per-gene array ``name`` (`_ARRAYS`)."""
    return "obsm" if name.startswith("cell") else "varm"


def record_entries(uns_key: str, record: dict) -> set[tuple[str, str]]:
    """The entries (``(where, name)``, where ``"obsm"``, ``"varm"``, ``"var"`` or ``"uns"``)
    of the fit, projection or K selection whose record is ``adata.uns[uns_key]``."""
    kind = record_kind(record)
    if kind == "k_selection":  # its table is all in the record
        return {("uns", uns_key)}
    if kind == "projection":  # tl.project names its record "<key>_projection"
        keys = FitKeys.of(uns_key.removesuffix("_projection"))
        cells = {("obsm", keys.factors), ("obsm", keys.usage), ("obsm", keys.sqrt_usage)}
        return cells | {("uns", uns_key)}
    keys = FitKeys.of(uns_key)
    entries = {("uns", uns_key), ("var", keys.total_counts)}
    entries |= {("varm", name) for name in _named_keys(uns_key, record, _GENE_KEY_ENTRIES)}
    entries |= {("obsm", name) for name in _named_keys(uns_key, record, _CELL_KEY_ENTRIES)}
    return entries | {
        (side, keys.variational(name)) for side in ("obsm", "varm") for name in _ARRAYS
    }


# The entries of a fit's record naming its arrays, and the `FitKeys` field each names.
_CELL_KEY_ENTRIES = {"obsm_key": "factors", "usage_key": "usage", "sqrt_usage_key": "sqrt_usage"}
_GENE_KEY_ENTRIES = {"varm_key": "loadings"}


def _named_keys(uns_key: str, record: dict, entries: dict) -> set[str]:
    """The keys of the arrays that the entries ``entries`` (`_CELL_KEY_ENTRIES` or
    `_GENE_KEY_ENTRIES`) of the fit record ``adata.uns[uns_key]`` name. An entry that is
    not a string (damaged, or missing) stands for the names a fit under ``uns_key`` writes
    (``.varm['NMF']`` too under the default key): a list made every tool writing into the
    AnnData fail with Python's "unhashable type", and the refit that the tools reading it
    advise was refused for overwriting arrays "held from elsewhere"."""
    written = [FitKeys.of(uns_key)] + ([FitKeys.of(None)] if uns_key == "nmf" else [])
    # Entries that do not name the arrays together as a fit names them (another tool's
    # dict holding an "obsm_key" of its own, e.g. "X_pca") stand for the fit's names too:
    # taken as they were, tl.nmf under that key deleted .obsm['X_pca'] with the record.
    named_as_written = _names_as_a_fit_writes(record)
    names = set()
    for entry, field in entries.items():
        name = record.get(entry)
        if isinstance(name, str) and named_as_written:
            names.add(name)
        else:
            names |= {getattr(k, field) for k in written}
    return names


def _names_as_a_fit_writes(record: dict) -> bool:
    """Whether ``record`` names a fit's arrays (`_CELL_KEY_ENTRIES`, `_GENE_KEY_ENTRIES`)
    each, as `nmf` names them under one ``key_added`` (`FitKeys`): a record moved to
    another ``.uns`` key still names its own arrays. One missing an entry or holding a
    damaged one is not taken at its word (its entries stand for the names a fit under its
    key writes, `_named_keys`)."""
    entries = [record.get(entry) for entry in (*_CELL_KEY_ENTRIES, *_GENE_KEY_ENTRIES)]
    if not all(isinstance(name, str) for name in entries):
        return False
    factors, usage, sqrt_usage, loadings = entries
    if not factors.startswith("X_"):
        return False
    name = factors.removeprefix("X_")
    candidates = [FitKeys.of(name)] + ([FitKeys.of(None)] if name == "nmf" else [])
    return any(
        (usage, sqrt_usage, loadings) == (keys.usage, keys.sqrt_usage, keys.loadings)
        for keys in candidates
    )


def _writable_key(key) -> bool:
    """Whether an ``.h5ad`` can hold ``key`` (see `check_key_added`)."""
    if not isinstance(key, str) or not key or key.startswith(".") or "/" in key or "\0" in key:
        return False
    try:
        key.encode("utf-8")  # a lone surrogate has no UTF-8 form
    except UnicodeEncodeError:
        return False
    return True


def check_writable(adata, name: str = "adata", copy: bool = True) -> None:
    """A `ValueError` for a view of a backed AnnData, which anndata cannot store anything
    into (it would need a copy to a file): asked before the work, not after it. The message
    says to read the view into memory (`to_memory_advice`), or, for a tool that takes
    ``copy``, to pass ``copy=True``."""
    if adata.isbacked and adata.is_view:
        advice = to_memory_advice(adata, name)
        raise ValueError(
            f"{name} is a view of a backed AnnData, which cannot hold the result: "
            + (f"pass copy=True, or {advice}" if copy else advice)
        )


def view_to_actual(adata) -> None:
    """Make a view of an AnnData in memory its own object, before anything is written into
    it. anndata does this at the first write, and replaces ``.raw`` then: arrays written to
    a ``.raw`` taken before it went to a detached object and were lost."""
    if adata.is_view:
        adata._init_as_actual(adata.copy())


# The fit record's entry naming the .obs column of each cell's dominant factor that
# `vbsnmf.pl.umap` wrote for it (scanpy stores that column's colours in .uns).
DOMINANT_FACTOR_ENTRY = "dominant_factor_key"
_FACTOR_NAME = re.compile(r"factor \d+")


def dominant_factor_column(key: str) -> str:
    """The ``.obs`` column of each cell's dominant factor of the fit or projection ``key``,
    as `vbsnmf.pl.umap` names it."""
    return f"{key}_dominant_factor"


def holds_dominant_factors(values: pd.Series) -> bool:
    """Whether the ``.obs`` column ``values`` holds what `vbsnmf.pl.umap` writes as each
    cell's dominant factor: categories named ``factor 0``, ``factor 1``, ..."""
    return isinstance(values.dtype, pd.CategoricalDtype) and all(
        isinstance(name, str) and _FACTOR_NAME.fullmatch(name) for name in values.cat.categories
    )


def drop_dominant_factors(adata, info: dict, cells: str = "obs") -> None:
    """Remove the dominant-factor column that `vbsnmf.pl.umap` wrote for the fit ``info``
    and its colours: only one the record names (as the fit's other entries; `project`
    names that of the cells it replaces), still holding the factors umap writes (not a
    column of the same name put there since). ``cells``: the frame of the fit's cells,
    ``"var"`` in an AnnData transposed after the fit (`drop_fit`)."""
    column, frame = info.get(DOMINANT_FACTOR_ENTRY), getattr(adata, cells)
    if not isinstance(column, str) or column not in frame.columns:
        return
    if not holds_dominant_factors(frame[column]):
        return
    del frame[column]
    adata.uns.pop(f"{column}_colors", None)


def drop_fit(adata, keys: FitKeys) -> None:
    """Remove the entries of the fit stored under ``keys.uns``, which a new fit under that key
    replaces: those the new fit does not write (another prior's arrays, a classical fit's
    lack of them, loadings under ``.varm['NMF']`` against ``.varm['nmf']``, ``.raw``'s
    against ``adata``'s, the dominant factors `vbsnmf.pl.umap` drew) would otherwise outlive
    it beside its record. In an AnnData transposed after the fit (``adata.T``, which swaps
    ``.obsm`` and ``.varm``, ``.obs`` and ``.var``) its entries are dropped from the swapped
    places: kept, the old fit's cell factors stayed in ``.varm`` beside the new fit's gene
    loadings (and its gene loadings in ``.obsm``), and transposed back they stood where
    the new fit's cell factors are read. The record of cells projected into a copy of the
    fit (``<key>_projection``, whose arrays are the fit's) goes too. A view is made its own
    AnnData first (`view_to_actual`)."""
    view_to_actual(adata)
    info = adata.uns.get(keys.uns)
    if record_kind(info) != "fit":
        return
    genes = [adata] + ([adata.raw] if adata.raw is not None else [])
    named = {keys.variational(name) for name in _ARRAYS}
    cells = named | _named_keys(keys.uns, info, _CELL_KEY_ENTRIES)
    gene_names = named | _named_keys(keys.uns, info, _GENE_KEY_ENTRIES)
    if transposed_after_fit(adata, info.get("obsm_key")):
        for name in cells & set(adata.varm.keys()):
            del adata.varm[name]
        for name in gene_names & set(adata.obsm.keys()):
            del adata.obsm[name]
        if keys.total_counts in adata.obs.columns:
            del adata.obs[keys.total_counts]
        drop_dominant_factors(adata, info, cells="var")
    for name in cells & set(adata.obsm.keys()):
        del adata.obsm[name]
    for holder in genes:
        for name in gene_names & set(holder.varm):
            del holder.varm[name]
        if keys.total_counts in holder.var.columns:
            del holder.var[keys.total_counts]
    drop_dominant_factors(adata, info)
    del adata.uns[keys.uns]
    # Cells projected into a copy of the reference fit (`vbsnmf.tl.project`) are in the
    # fit's own .obsm arrays, which the new fit replaces: kept, the projection's record
    # named the new fit's cells as its own, and a later projection wrote over them.
    if record_kind(adata.uns.get(f"{keys.uns}_projection")) == "projection":
        del adata.uns[f"{keys.uns}_projection"]


def cell_factors_record(adata, key: str) -> dict:
    """Where the cell factors under ``key`` are and which factors are active: the record of
    the fit (`fit_info`), or for cells projected onto a reference fit (`vbsnmf.tl.project`,
    whose record is ``adata.uns[key + '_projection']``) ``obsm_key``, ``usage_key`` and
    ``sqrt_usage_key`` (the ``.obsm`` entries it wrote), ``written_by`` (the tool, for
    messages; a fit's record has none) and ``active``: the reference's active factors as the
    projection recorded them, or, in a record without them, every factor (as many as the
    entries' columns)."""
    check_anndata(adata)
    key = check_record_key(key)
    if key.endswith("_projection") and record_kind(adata.uns.get(key)) == "projection":
        # the record's own key: `fit_info` said to fit anew, where the projection's cells
        # are read under its key_added
        raise KeyError(
            f"adata.uns[{key!r}] is the record of a projection (vbsnmf.tl.project); pass "
            f"its key_added, key={key.removesuffix('_projection')!r}"
        )
    projection_key = f"{key}_projection"
    projection = adata.uns.get(projection_key)
    if record_kind(adata.uns.get(key)) == "fit" or record_kind(projection) != "projection":
        return fit_info(adata, key)
    keys = FitKeys.of(key)
    record = {
        "obsm_key": keys.factors,
        "usage_key": keys.usage,
        "sqrt_usage_key": keys.sqrt_usage,
        "written_by": "vbsnmf.tl.project",
    }
    # cells projected and then transposed (adata.T): "project again" would not bring the
    # factors back into .obsm
    check_not_transposed(adata, key, record, what="projection")
    # the cells of projections onto different references, joined by anndata.concat under
    # the first one's record, were drawn as one projection (a fit's are refused by fit_info)
    check_cells_of_one_fit(adata, key, record, projection=True)
    if "active" in projection:
        active = np.asarray(projection["active"])
        if active.dtype != bool or active.ndim != 1 or active.size == 0:
            raise ValueError(
                f"adata.uns[{projection_key!r}]['active'] is damaged (not booleans, one per "
                f"factor: {reprlib.repr(active)}); project again with vbsnmf.tl.project"
            )
        return {**record, "active": active}
    entries = (record[name] for name in ("obsm_key", "usage_key", "sqrt_usage_key"))
    written = [name for name in entries if name in adata.obsm]
    if not written:
        raise KeyError(
            f"adata.obsm has no {keys.usage!r}, which vbsnmf.tl.project writes with "
            f"adata.uns[{projection_key!r}]; project again"
        )
    return {**record, "active": np.ones(np.shape(adata.obsm[written[0]])[1], dtype=bool)}


def active_factors(adata, key: str, include_inactive: bool = False) -> np.ndarray:
    """Indices of the factors to show: the active ones, or all; of a fit or a projection
    (`cell_factors_record`)."""
    include_inactive = check_flag(include_inactive, "include_inactive")
    info = cell_factors_record(adata, key)
    active = np.asarray(info["active"], dtype=bool)
    return np.arange(active.size) if include_inactive else np.flatnonzero(active)


def _stored_numbers(stored: dict, name: str, where: str, n_components: int | None) -> np.ndarray:
    """``stored[name]`` of the record ``where`` as an array: finite numbers, one per factor
    (``n_components`` of them) or a single one (None); a `KeyError` if it is missing, a
    `ValueError` if it is not such numbers."""
    value = np.asarray(record_entry(stored, name, where))
    shape = () if n_components is None else (n_components,)
    if value.dtype.kind not in "biuf" or value.shape != shape or not np.isfinite(value).all():
        what = "a number" if n_components is None else f"{n_components} numbers, one per factor"
        raise damaged_record(f"{where}[{name!r}]", f"{reprlib.repr(stored[name])}, not {what}")
    return value


def is_classical_fit(info: dict) -> bool:
    """Whether the fit record ``info`` is of a classical solver (`vbsnmf.classic`), which
    leaves no variational parameters: its solver says so, or its loss trace does."""
    solver = info["params"].get("solver")
    return "loss_trace" in info or (isinstance(solver, str) and solver in CLASSIC_SOLVERS)


def check_variational_entry(info: dict, where: str) -> None:
    """A `KeyError` when the record ``where`` of a variational fit (``info``; not a
    classical one, `is_classical_fit`) has lost its ``variational`` entry (deleted by
    hand, say, to save space), which every variational fit writes: `project` and
    ``warm_start`` said it was "a 'batch' fit without variational parameters" and that
    they needed solver='batch', and ``warm_start`` called 'batch' a classical solver."""
    if "variational" in info or is_classical_fit(info):
        return
    solver = info["params"].get("solver")
    written = f"solver={solver!r}" if isinstance(solver, str) else "variational"
    raise KeyError(
        f"{where} has no 'variational' entry (the prior, which every {written} fit "
        "records beside its Gamma parameters in .obsm and .varm): was it deleted? The "
        "record of the fit is damaged; fit again with vbsnmf.tl.nmf"
    )


def variational_params(adata, key: str, cells: bool = True) -> dict:
    """The Gamma parameters of a variational fit as ``VBNMF``'s ``init`` takes them
    (``gene_shape`` over every gene of the fit's gene holder; zero rows: genes not fitted),
    plus the prior: ``prior_shape`` and ``prior_rate`` of the fixed prior, or under the
    learned prior q of the cell and gene scales (`SCALE_KEYS`) and the hyperparameters
    (`HYPER_KEYS`). ``cells=False``: the gene side and the prior only, for `project`,
    which reads nothing of the fit's cells (an ``anndata.concat`` of the reference with
    projected cells keeps no per-cell array of the fit)."""
    info = fit_info(adata, key)
    check_variational_entry(info, f"adata.uns[{key!r}]")
    if "variational" not in info:
        raise ValueError(
            f"adata.uns[{key!r}] is a {info['params'].get('solver')!r} fit without "
            "variational parameters (fitted by solver='batch' or 'svi' only)"
        )
    keys, stored = FitKeys.of(key), info["variational"]
    where, n_components = f"adata.uns[{key!r}]['variational']", info["params"]["n_components"]
    genes = gene_holder(adata, key)
    gene_side = "varm" if genes is adata else "raw.varm"
    learned = stored.get("prior", "gamma") == "hierarchical"  # as `nmf` reads it
    params = {}
    for name in VARIATIONAL_KEYS + (SCALE_KEYS if learned else ()):
        if not cells and name.startswith("cell"):
            continue
        side = adata.obsm if name.startswith("cell") else genes.varm
        if name in stored:  # one value per factor
            params[name] = _stored_numbers(stored, name, where, n_components)
        elif keys.variational(name) in side:
            where_stored = "obsm" if name.startswith("cell") else gene_side
            params[name] = numeric_fit_array(key, where_stored, side, keys.variational(name))
            if name in SCALE_KEYS:  # one per cell or gene, stored as a column
                params[name] = params[name][:, 0]
        else:
            side_name = ".obsm" if name.startswith("cell") else f".{gene_side}"
            raise KeyError(
                f"the fit {key!r} has no {side_name}[{keys.variational(name)!r}]; was the "
                f"AnnData built anew after the fit{concat_dropped(side_name[1:])}? Fit again "
                "with vbsnmf.tl.nmf"
            )
    names = HYPER_KEYS if learned else ("prior_shape", "prior_rate")
    for name in names:
        per_factor = name.endswith("factor_shape")  # the hyperparameters a_l and c_l
        value = _stored_numbers(stored, name, where, n_components if per_factor else None)
        params[name] = value.astype(np.float64) if per_factor else float(value)
    return params
