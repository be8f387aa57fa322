"""`project`: cell factors of new cells on a reference fit's gene programs."""

from __future__ import annotations

import contextlib
import re
import unicodedata
import warnings

import numpy as np
import pandas as pd

from .._atomic import held_signals
from .._data import as_count_data
from .._model import GammaPrior, HierarchicalPrior, ScaleState, fit_rows
from .._utils import (
    check_anndata,
    check_factor_columns,
    damaged_record,
    is_dask_array,
    library_versions,
    numba_threads,
    record_kind,
)
from .._validation import check_flag, check_iterations, check_not_empty, check_tolerance
from ..io._stored import in_memory_copy
from ._counts import check_count_matrix, select_counts
from ._stored import (
    DOMINANT_FACTOR_ENTRY,
    FitKeys,
    cell_factor_arrays,
    check_key_added,
    check_variational_entry,
    check_writable,
    dominant_factor_column,
    drop_dominant_factors,
    fit_info,
    gene_holder,
    recorded_loading_totals,
    variational_params,
    view_to_actual,
)

# "adata" as a name of its own ("adata.X", "adata.layers[...]"), not adata_new or adata_ref
_ADATA = re.compile(r"\badata\b")


@contextlib.contextmanager
def _as_adata_new():
    """Errors of `select_counts` and `check_count_matrix`, which call the AnnData they
    read "adata", naming it ``adata_new``: beside ``adata_ref``, "adata" said neither; and
    advising a float64 fit of the reference, not "fit with dtype=", which project lacks."""
    try:
        yield
    except (ValueError, TypeError) as error:
        message = _ADATA.sub("adata_new", str(error))
        # a count beyond a float32 reference: project has no dtype, the reference's fit does
        message = message.replace(
            "; fit with dtype=np.float64", "; fit the reference (adata_ref) with dtype=np.float64"
        )
        if type(error) in (ValueError, TypeError):
            raise type(error)(message) from None
        if len(error.args) == 1 and isinstance(error.args[0], str):
            # a subclass (a corrupt matrix, a count beyond the reference's dtype) keeps its
            # type, which callers catch, and is renamed too: it said "adata.X"
            error.args = (message,)
        raise


@contextlib.contextmanager
def _naming(name: str, errors: tuple = (ValueError, TypeError)):
    """Errors of the shared record and key checks (`fit_info`, `variational_params`,
    `check_key_added`), which call the AnnData they read "adata", naming it ``name``
    (``adata_ref`` or ``adata_new``): beside the two, "adata.uns['nmf'] holds no NMF fit;
    run vbsnmf.tl.nmf(adata, ...)" or "delete it from adata first" said neither. The
    error keeps its type (callers catch `KeyError` and the typed subclasses)."""
    try:
        yield
    except errors as error:
        if len(error.args) == 1 and isinstance(error.args[0], str):
            error.args = (_ADATA.sub(name, error.args[0]),)
        raise


def _fitted_genes(adata_ref, key: str, arrays: dict) -> np.ndarray:
    """Which genes of the reference fit ``key``'s gene holder the fit used (nonzero
    shapes), with a `ValueError` naming a per-gene array (``arrays``: ``gene_shape``,
    ``gene_rate`` as read) that no fit writes: not one column per factor (numpy's broadcast
    error), or not finite and positive in a fitted gene, whose NaN went on into every new
    cell's factors. Rows of genes not fitted (zero, or the NaN of
    ``anndata.concat(..., join="outer")``) are left out, as the projection leaves them."""
    n_components = fit_info(adata_ref, key)["params"]["n_components"]
    side = "varm" if gene_holder(adata_ref, key) is adata_ref else "raw.varm"
    # the fixed prior's rates, one per factor, are in the record, checked as they were read
    per_gene = {
        name: values for name, values in arrays.items() if name == "gene_shape" or values.ndim != 1
    }
    for name, values in per_gene.items():
        where = f"adata_ref.{side}[{FitKeys.of(key).variational(name)!r}]"
        check_factor_columns(where, values, n_components)
    fitted = (arrays["gene_shape"] > 0).any(axis=1)
    for name, values in per_gene.items():
        rows = values[fitted]
        if not (np.isfinite(rows).all() and (rows > 0).all()):
            raise damaged_record(
                f"adata_ref.{side}[{FitKeys.of(key).variational(name)!r}]",
                "values of fitted genes that are not finite and positive",
            )
    return fitted


def _name_column(var, names) -> tuple[str, int] | None:
    """The column of ``var`` (a ``.var`` frame) that holds the most of ``names``, with how
    many it holds; None when none holds any (columns of numbers are not names)."""
    best = None
    for column in var.columns:
        values = var[column]
        if values.dtype.kind in "biufcmM":  # numbers, flags, dates: not gene names
            continue
        shared = len(pd.Index(values.astype(str)).intersection(names))
        if shared and (best is None or shared > best[1]):
            best = (str(column), shared)
    return best


def _same_when_normalized(reference_genes, new_genes) -> list[tuple[str, str]]:
    """(reference name, name in ``new_genes``) for each reference gene that ``new_genes``
    lacks but holds under a name that differs only in Unicode normalization form (an
    accented letter as one code point, NFC, against a letter and a combining accent, NFD,
    as some macOS tools write it) or in surrounding spaces: names that print alike but do
    not match, whose genes `project` would leave out unremarked."""
    missing = reference_genes.difference(new_genes)
    if not len(missing):
        return []

    def normal(name) -> str:
        return unicodedata.normalize("NFC", str(name)).strip()

    new_by_normal = {normal(name): str(name) for name in new_genes}
    return [
        (str(name), new_by_normal[normal(name)])
        for name in missing
        if normal(name) in new_by_normal
    ]


def _normalization_advice(near: list[tuple[str, str]], new_side: str) -> str:
    """The sentence naming the genes of `_same_when_normalized` (ascii(): the two names of
    a pair print alike otherwise) and the renaming that matches them."""
    reference_name, new_name = near[0]
    return (
        f"{len(near)} of the reference's genes are in {new_side} under names that differ "
        f"only in Unicode normalization form or surrounding spaces (e.g. "
        f"{reference_name!a} as {new_name!a}), which do not match; normalize "
        "both AnnData's names alike, e.g. adata.var_names = [unicodedata.normalize('NFC', "
        "name).strip() for name in adata.var_names]"
    )


def _renaming_hint(adata_new, adata_ref, use_raw: bool, new_genes, key: str, fitted) -> str:
    """Where the names of ``adata_new`` and of the reference fit ``key`` (``fitted``: which
    of its gene holder's genes it used) meet, when they share none: genes the fit left out
    (``mask_var``), or a ``.var`` column of one holding the other's names (Ensembl ids
    against gene symbols, as 10x files give both), named with the renaming that lets
    `project` match them; "" when neither."""
    new_side = "adata_new.raw" if use_raw else "adata_new"
    holder = gene_holder(adata_ref, key)
    unfitted = holder.var_names[~fitted].intersection(new_genes)
    if len(unfitted):  # the genes are there, but the fit left them out
        return (
            f" (its {int(fitted.sum())} fitted genes); {len(unfitted)} of {new_side}'s genes "
            "are genes of adata_ref that the fit left out (outside its mask_var), which a "
            "projection cannot use"
        )
    # genes x cells, as sc.read_csv reads a table of genes as rows (GEO's, R's counts): its
    # cells were taken for genes and its genes for cells, which "shares no gene names" hid
    transposed = adata_new.obs_names.intersection(holder.var_names[fitted])
    if len(transposed):
        return (
            f"; adata_new's obs_names hold {len(transposed)} of the reference's genes: it is "
            "genes x cells (as scanpy.read_csv reads a table of genes as rows); project its "
            "transpose, adata_new.T, whose cells are its columns"
        )
    found = _name_column((adata_new.raw if use_raw else adata_new).var, holder.var_names[fitted])
    if found is not None:
        column, shared = found
        return (
            f"; {new_side}.var[{column!r}] holds {shared} of the reference's gene names: name "
            f"its genes by it, "
            f"{new_side}.var_names = {new_side}.var[{column!r}].astype(str) (and "
            f"{new_side}.var_names_make_unique() if they repeat)"
        )
    # a fit of .raw: its names are not renamed through adata_ref.var_names
    found = None if holder is not adata_ref else _name_column(adata_ref.var, new_genes)
    if found is not None:
        column, shared = found
        return (
            f"; {shared} of {new_side}'s var_names are in adata_ref.var[{column!r}]: name the "
            f"reference's genes by it, adata_ref.var_names = "
            f"adata_ref.var[{column!r}].astype(str) (its fit follows its genes)"
        )
    return ""


def project(
    adata_new,
    adata_ref,
    *,
    key: str = "nmf",
    key_added: str | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    max_iter: int = 200,
    tol: float = 1e-5,
    n_threads: int | None = None,
    copy: bool = False,
):
    """Project new cells onto the gene programs of a reference fit.

    Each new cell's q(z) is fitted by coordinate ascent with the reference's gene side
    q(w) held fixed (the local step of `vbsnmf.VBNMF.transform`). Genes are matched by
    name, exactly (``"Actb"`` is not ``"ACTB"``; a warning names reference genes that
    ``adata_new`` holds only under a name differing in Unicode normalization form or
    surrounding spaces): reference genes missing from ``adata_new`` are left out of the
    likelihood (not treated as zero counts); genes only in ``adata_new`` are ignored.

    Parameters
    ----------
    adata_new
        Cells x genes with raw counts (in ``X``, ``layers[layer]`` or ``.raw``). A dask
        ``X`` is computed into memory as a sparse matrix (dense chunks are made CSR where
        they are computed).
    adata_ref
        AnnData after a variational `vbsnmf.tl.nmf` fit (``solver`` ``"batch"`` or
        ``"svi"``).
    key
        ``key_added`` of the reference fit.
    key_added
        Write to ``.obsm['X_' + key_added]`` (and ``..._usage``, ``..._sqrt_usage``);
        default: the reference's keys (``X_nmf``, ...), so the new cells sit in the same
        space. Not a key scanpy's tools store their embeddings under (``"pca"``,
        ``"umap"``...), as `vbsnmf.tl.nmf`.
    layer, use_raw
        Where the counts of ``adata_new`` are, as in `vbsnmf.tl.nmf`.
    max_iter, tol
        Each cell's coordinate ascent stops after ``max_iter`` passes or when its ELBO
        changes by less than ``tol`` relative (`vbsnmf.VBNMF.transform`: a cell's factors
        do not depend on the other new cells, but projecting the reference's own cells
        does not give back all their fitted factors; to compare new cells with the
        reference, project the reference too, under another ``key_added``). Cells stopped
        at ``max_iter`` are counted in a `vbsnmf.ConvergenceWarning`, as are, onto a float32
        reference, cells that stopped on a change below their ELBO's rounding (counts x
        2**-24 nats, pseudobulk depths).
    n_threads
        Numba threads (default: all).
    copy
        Return a copy of ``adata_new`` instead of writing into it. Of a backed AnnData
        (or a view of one), a copy in memory, all its elements its own; the backed
        AnnData's file stays open, unwritten.

    Returns
    -------
    None, or the AnnData when ``copy=True``. Sets

    ``.obsm['X_nmf']`` : ndarray (n_obs, K)
        The posterior mean cell factors.
    ``.obsm['X_nmf_usage']``, ``.obsm['X_nmf_sqrt_usage']`` : ndarray (n_obs, K)
        Their usages (each cell's share of its expected counts from each factor, weighed
        by the reference fit's total loadings over all its genes, its record's
        ``loading_totals``, also when ``adata_ref`` no longer holds some of them) and the
        usages' square roots, as `vbsnmf.tl.nmf` stores them.
    ``.uns['nmf_projection']`` (or ``key_added + '_projection'``) : dict
        ``reference_key``, ``n_genes_used``, ``n_genes_missing``,
        ``n_cells_without_counts`` (cells with no counts in the reference's genes, whose
        factors are the prior's; a warning says so) and ``active`` (K,) bool, the
        reference's active factors, which `vbsnmf.pl.factors` and `vbsnmf.pl.umap` show;
        ``versions``, as `vbsnmf.tl.nmf` records them.

    The ``.obs`` column of dominant factors that `vbsnmf.pl.umap` drew from the cell
    factors replaced (an earlier projection under the same key, or the reference's own
    cells in a copy of it) is removed with its colours, as `vbsnmf.tl.nmf` removes its own.

    Raises
    ------
    KeyError
        ``adata_ref`` holds no fit under ``key``, or its record lacks an entry.
    ValueError
        An entry of the reference's record is damaged; ``adata_new`` is ``adata_ref`` (or
        ``adata_ref`` a view of it) and the projection would write over its fit (same
        ``key_added``, no ``copy``), the reference fit is not variational, no gene names
        are shared (the message names a ``.var`` column of either that holds the other's
        names, such as ``gene_symbols`` beside Ensembl ids, and the renaming that matches
        them, or, when the obs_names of ``adata_new`` are the reference's genes, its
        transpose ``adata_new.T``), the reference fit's gene names repeat or those of
        ``adata_new`` among them, its counts are not raw counts, hold no nonzero count or
        one above what the
        reference's dtype resolves (2**24 in float32, as `vbsnmf.VBNMF.transform`), or
        are in no such layer or ``.raw``; ``max_iter`` < 1 or ``tol`` < 0 (as `vbsnmf.VBNMF`
        refuses them); ``key_added`` that an ``.h5ad`` cannot store, or under which the
        projection would overwrite another fit's or a K selection's entries in
        ``adata_new``, or what another tool stored there (as `vbsnmf.tl.nmf` refuses it).
    TypeError
        ``adata_new`` or ``adata_ref`` is not an AnnData; ``max_iter`` is not an integer or
        ``tol`` not a number; ``key`` or ``layer`` not a string, ``use_raw`` or ``copy``
        not True or False, ``n_threads`` not an integer or None, ``key_added`` neither a
        string nor None.

    Examples
    --------
    >>> import vbsnmf
    >>> adata = vbsnmf.datasets.pbmc_tiny()
    >>> reference, new = adata[:200].copy(), adata[200:300].copy()
    >>> vbsnmf.tl.nmf(reference, 5, max_iter=50, tol=1e-3)
    >>> vbsnmf.tl.project(new, reference)
    >>> new.obsm["X_nmf_usage"].shape
    (100, 5)
    >>> new.uns["nmf_projection"]["n_genes_used"]
    507
    """
    check_anndata(adata_new, "adata_new")
    check_anndata(adata_ref, "adata_ref")
    max_iter = check_iterations(max_iter, "max_iter")
    tol = check_tolerance(tol)
    copy = check_flag(copy, "copy")
    with _naming("adata_ref", (KeyError, ValueError, TypeError)):
        info = fit_info(adata_ref, key)
    key = str(key)  # a numpy string as text in messages and the record (checked a string)
    name = key if key_added is None else key_added
    # A view's writes go to its own copy, but adata_ref a view of adata_new holds the fit
    # whose cell factors a projection into adata_new writes over.
    ref_root = adata_ref._adata_ref if adata_ref.is_view else adata_ref
    if ref_root is adata_new and not copy and name == key:
        which = (
            "adata_new is adata_ref"
            if adata_ref is adata_new
            else "adata_ref is a view of adata_new"
        )
        raise ValueError(
            f"{which}: its projection under key_added={name!r} would write over "
            "the fitted cell factors of the reference; choose another key_added (or copy=True)"
        )
    with _naming("adata_new"):
        check_key_added(name, adata_new, writes="cells", reference=info)
    name = str(name)  # checked a string: a numpy one as text
    keys = FitKeys.of(name)
    check_variational_entry(info, f"adata_ref.uns[{key!r}]")
    if "variational" not in info:
        raise ValueError(
            f"adata_ref.uns[{key!r}] is a {info['params'].get('solver')!r} fit without "
            "variational parameters; project needs solver='batch' or 'svi'"
        )
    # the gene side and the prior: the reference's cells need not be there (anndata.concat
    # of the reference with cells projected onto it drops their per-cell arrays)
    with _naming("adata_ref", (KeyError, ValueError, TypeError)):
        variational = variational_params(adata_ref, key, cells=False)
        # the fit's t_l over all its genes: summed over the genes adata_ref still holds
        # (sc.pp.filter_genes, adata_ref[:, hvg] after the fit), the new cells' usages were
        # weighed otherwise than the reference's own, refused when the two were joined
        totals = recorded_loading_totals(info, f"adata.uns[{key!r}]")
    if copy:
        adata_new = in_memory_copy(adata_new)
    else:
        check_writable(adata_new, "adata_new")
    with _as_adata_new():
        matrix, new_genes, source = select_counts(adata_new, layer=layer, use_raw=use_raw)
    # The reference's genes: those of its gene holder that the fit used (nonzero shapes).
    gene_shape = np.asarray(variational["gene_shape"])
    all_rates = np.asarray(variational["gene_rate"])
    fitted = _fitted_genes(adata_ref, key, {"gene_shape": gene_shape, "gene_rate": all_rates})
    reference_genes = gene_holder(adata_ref, key).var_names[fitted]
    if not reference_genes.is_unique:  # a name matched twice would count its genes twice
        repeated = reference_genes[reference_genes.duplicated()].unique()
        raise ValueError(
            f"the reference fit's gene names repeat ({', '.join(map(str, repeated[:3]))}"
            f"{', ...' if len(repeated) > 3 else ''}): a new cell's counts cannot be matched "
            "to its genes; fit the reference after adata_ref.var_names_make_unique()"
        )
    # The projection computes in the reference's dtype, float32 or float64 as a fit leaves
    # it: a gene side stored in another (float16 to save room, say) reached the Numba
    # kernels, which have no loop for it (a bare TypingError); float64 holds its values.
    fit_dtype = np.float32 if gene_shape.dtype == np.float32 else np.float64
    gene_shape = gene_shape[fitted].astype(fit_dtype, copy=False)
    # E[w] of every fitted reference gene: usages weigh each factor by its total loading,
    # as `tl.nmf`'s do (rates per factor under the fixed prior, per entry under the learned).
    loadings = gene_shape / (all_rates[fitted] if all_rates.ndim == 2 else all_rates)
    # Names that repeat in adata_new matter only among the reference's genes, where a
    # count could not be matched to one gene; elsewhere (10x gene symbols repeat) they are
    # left out as any gene the reference lacks.
    repeated = new_genes[new_genes.duplicated()].unique().intersection(reference_genes)
    if len(repeated):
        raise ValueError(
            f"{_ADATA.sub('adata_new', source)}'s gene names repeat among the reference's "
            f"genes ({', '.join(map(str, repeated[:3]))}{', ...' if len(repeated) > 3 else ''}); "
            "make them unique (adata_new.var_names_make_unique())"
        )
    single = ~new_genes.duplicated(keep=False)
    found = new_genes[single].get_indexer(reference_genes)
    positions = np.full(len(reference_genes), -1, dtype=np.intp)
    positions[found >= 0] = np.flatnonzero(single)[found[found >= 0]]
    shared = positions >= 0
    n_shared = int(shared.sum())
    near = _same_when_normalized(reference_genes, new_genes)
    new_side = "adata_new.raw" if use_raw else "adata_new"
    if n_shared == 0:
        raise ValueError(
            "adata_new shares no gene names with the reference fit"
            + (
                f"; {_normalization_advice(near, new_side)}"
                if near
                else _renaming_hint(adata_new, adata_ref, use_raw, new_genes, key, fitted)
            )
        )
    if near:
        warnings.warn(
            f"{_normalization_advice(near, new_side)}; they are left out", UserWarning, stacklevel=2
        )
    if n_shared < 0.5 * len(reference_genes):
        warnings.warn(
            f"only {n_shared} of the reference's {len(reference_genes)} genes are in "
            "adata_new; the projection rests on those",
            UserWarning,
            stacklevel=2,
        )
    if is_dask_array(matrix):
        # The projection holds the new cells in memory, as its result does, sparse: dense
        # chunks are made CSR where they are computed (the counts are made CSR below
        # anyway). Each block is checked to hold the cells its chunk declares.
        from .._dask._cluster import computed_as_declared

        with _as_adata_new():  # by its shape, as in memory: not after computing every chunk
            check_not_empty(matrix.shape, source)
        matrix = computed_as_declared(matrix, sparse=True)
    # in the reference's dtype: a float32 one resolves counts to 2**24
    with _as_adata_new():
        matrix = check_count_matrix(adata_new, matrix, source, fit_dtype)
    counts = matrix.tocsr()[:, positions[shared]]
    # Cells whose counts all lie in genes the reference lacks: their factors are the prior's.
    without = np.asarray(counts.sum(axis=1)).ravel() == 0
    n_without = int(np.count_nonzero(without))
    if n_without:
        warnings.warn(
            f"{n_without} of the {counts.shape[0]} cells have no counts in the reference's "
            "genes; their factors are the prior's (the same for each)",
            UserWarning,
            stacklevel=2,
        )
    gene_shape = np.ascontiguousarray(gene_shape[shared])
    gene_rate = np.asarray(variational["gene_rate"])
    row_scale = None
    if "cell_factor_shape" in variational:
        # The learned prior: rates per gene and factor, the cells' hyperparameters as fitted.
        prior = HierarchicalPrior()
        gene_rate = np.ascontiguousarray(gene_rate[fitted][shared])
        row_scale = ScaleState(
            np.empty(0),
            np.empty(0),
            np.asarray(variational["cell_factor_shape"], dtype=np.float64),
            float(variational["cell_scale_prior_shape"]),
            float(variational["cell_scale_prior_mean"]),
        )
    else:
        prior = GammaPrior(variational["prior_shape"], variational["prior_rate"])
    with numba_threads(n_threads):
        cells = fit_rows(
            as_count_data(counts, major=0),
            gene_shape,
            gene_rate,
            prior,
            max_iter=max_iter,
            tol=tol,
            row_scale=row_scale,
        )
    cells.warn_unsettled(tol, refit="fit the reference (adata_ref) with dtype=np.float64")
    view_to_actual(adata_new)  # as tl.nmf: anndata's ImplicitModificationWarning otherwise
    # The earlier projection out and the new one in, or none of it: a Ctrl-C (or the command
    # line's SIGTERM) that arrives meanwhile is raised once all is stored (it left the new
    # .obsm['X_nmf'] beside the earlier usages and record).
    # a record written before the totals were kept: those of the genes adata_ref holds
    arrays = cell_factor_arrays(keys, cells.shape / cells.rate, loadings, totals)
    with held_signals():
        replaced = adata_new.uns.get(f"{name}_projection"), adata_new.uns.get(name)
        if record_kind(replaced[0]) == "projection" or record_kind(replaced[1]) == "fit":
            # The dominant factors vbsnmf.pl.umap drew from the cells replaced here (an
            # earlier projection under this key, or the reference's own in its copy) would
            # outlive them.
            drop_dominant_factors(adata_new, {DOMINANT_FACTOR_ENTRY: dominant_factor_column(name)})
        for field, values in arrays.items():
            adata_new.obsm[field] = values
        adata_new.uns[f"{name}_projection"] = {
            "reference_key": key,
            "n_genes_used": n_shared,
            "n_genes_missing": len(reference_genes) - n_shared,
            "n_cells_without_counts": n_without,
            # the reference's switched-off factors are noise here too (`vbsnmf.pl` leaves them
            # out)
            "active": np.array(info["active"], dtype=bool),
            "versions": library_versions(),
        }
    return adata_new if copy else None
