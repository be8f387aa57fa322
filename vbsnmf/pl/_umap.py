"""`umap`: the UMAP of an NMF fit on the recommended route, drawn (``vbsnmf umap``)."""

from __future__ import annotations

import contextlib
import numbers
import os
import warnings
from collections.abc import Sequence

import numpy as np

from .._model import kept_if_failed
from .._utils import counted, drawn_seed_below_2_32, is_integer, missing_package_advice, record_kind
from .._validation import check_iterations
from ..io._stored import anndata_x
from ..tl._stored import (
    DOMINANT_FACTOR_ENTRY,
    active_factors,
    cell_factors_record,
    check_writable,
    dominant_factor_column,
    holds_dominant_factors,
    record_entries,
    view_to_actual,
)
from ._plots import (
    _factor_columns,
    _finish,
    _name_list,
    check_expression_readable,
    check_save,
    closed_on_failure,
    reads_raw_genes,
)

LEIDEN = "leiden"
# UMAP's spectral start needs at least this many cells (3 failed inside scipy's eigh).
MIN_CELLS = 4


def leiden(adata, random_state: int = 0) -> None:
    """Leiden clusters of ``adata``'s neighbour graph into ``.obs['leiden']``, as scanpy's
    igraph flavour finds them; ImportError, saying what to install, without igraph."""
    import scanpy as sc

    try:
        import igraph  # noqa: F401  (scanpy's igraph flavour needs it)
    except ImportError:
        raise ImportError(
            "Leiden clusters need the igraph package: pip install igraph "
            "(or install vbsnmf with its [tutorial] extra)"
        ) from None
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2, directed=False, random_state=random_state)


def _check_umap_installed() -> None:
    """An `ImportError` naming umap-learn, the package scanpy's neighbours and UMAP need,
    before anything is computed: scanpy's own error, "No module named 'umap'" from inside
    ``sc.pp.neighbors``, sent users to ``pip install umap``, another project."""
    try:
        import umap  # noqa: F401
    except ImportError as error:
        raise ImportError(missing_package_advice(error)) from None


def umap(
    adata,
    *,
    key: str = "nmf",
    color: str | Sequence[str] | None = None,
    n_neighbors: int = 15,
    random_state: int = 0,
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
):
    """Neighbour graph on the NMF usages, UMAP, and ``sc.pl.umap`` of it.

    Runs ``sc.pp.neighbors(adata, use_rep="X_nmf_sqrt_usage")`` (the square roots of the
    fit's usages: the recommended route, see `vbsnmf.tl.nmf`) and ``sc.tl.umap``, so
    ``adata`` gains what they set (``.obsp['distances']``, ``.obsp['connectivities']``,
    ``.obsm['X_umap']``, ``.uns['neighbors']``, ``.uns['umap']``), replacing a graph or
    UMAP stored there before (of PCs, say: copy them first to keep them), and draws
    ``sc.pl.umap`` coloured by ``color``.

    Parameters
    ----------
    adata
        AnnData after `vbsnmf.tl.nmf`, or after `vbsnmf.tl.project` (new cells on a
        reference fit, whose usages are in the same space).
    key
        ``key_added`` of the fit or projection.
    color
        An ``.obs`` column or a gene, or a list of them (or an array or `pandas.Index`; one
        panel each, as in ``sc.pl.umap``); default: each cell's dominant active factor,
        stored as ``.obs[key + '_dominant_factor']`` (also when named in ``color`` and
        absent; a new fit under ``key`` drops it, which a fit's record names for it,
        ``.uns[key]['dominant_factor_key']``), whose categories are the factors that
        dominate some cell; missing for a cell without usage in any active factor (no
        counts, under a classical solver; or, where a classical solver leaves exact zeros, a
        cell of a switched-off factor alone). ``"leiden"`` without such a column: Leiden
        clusters of the same graph (``sc.tl.leiden(flavor="igraph")``, which needs the
        igraph package), stored as ``.obs['leiden']`` with its parameters in
        ``.uns['leiden']``. Checked before any work, as ``sc.pl.umap`` looks the names up
        (a gene of ``.raw`` when adata has one). ``sc.pl.umap`` stores the colours of each
        categorical column it draws in ``.uns[column + '_colors']`` (the dominant factor's
        and Leiden's too), unless colours for its categories are there already.
    n_neighbors
        Neighbours per cell, at least 2; more than the number of cells minus one is
        lowered to it.
    random_state
        Seed of the neighbour search, of UMAP and of Leiden clusters. A ``RandomState``
        (advanced by the call; left as it was if the call raises) gives them one integer
        seed drawn from it, which their parameters in ``.uns`` record as scanpy records an
        integer one (the RandomState itself, recorded there, could not be written to
        ``.h5ad``).
    show, save
        As scanpy's (see `vbsnmf.pl`); a `pathlib.Path` is the output file.

    Returns
    -------
    The matplotlib axes (a list of them for several colours, as ``sc.pl.umap``
    returns them: one for a list of one), unless shown.

    Raises
    ------
    KeyError
        No fit or projection under ``key``, or its usages are gone from ``.obsm``; a
        ``color`` that is neither an ``.obs`` column nor a gene where scanpy looks.
    ValueError
        The usages hold NaN or infinite values, or not one column per factor of the fit
        (an edited result: no fit writes them);
        ``n_neighbors`` is below 2; ``random_state`` is outside [0, 2**32 - 1];
        ``adata`` holds fewer than 4 cells; ``adata`` is a view of a backed AnnData,
        which cannot store the graph; a ``color`` is both an ``.obs`` column and a gene
        of ``adata.var_names``, a gene of ``adata.X`` when that is None or a dask array
        of sparse chunks, a gene whose name other genes share, or an ``.obs`` column of
        values scanpy colours by neither as groups nor as numbers (objects of text beside
        numbers, a None among booleans or numbers; nullable booleans, dates: make it
        categorical), or one whose stored colours, ``.uns[column + '_colors']``, are one
        value, not a list of them; the graph, the UMAP
        or the Leiden clusters would be stored over a fit, projection or K selection in
        ``adata`` (one made with ``key_added="umap"``, ``"neighbors"`` or ``"leiden"``);
        ``.obs[key + '_dominant_factor']``, to be written, holds values it did not write.
    TypeError
        ``n_neighbors`` is not an integer; ``random_state`` is not None, an integer or a
        numpy RandomState; ``color`` is not a name or a list of names.
    ImportError
        umap-learn, which scanpy's neighbours and UMAP need, is not installed (igraph, for
        Leiden clusters): the message says what to install.

    Any failure leaves ``adata`` as it was; a view stays a view when a check fails, and
    is made its own AnnData (as anndata does at a write) only once they all passed.
    """
    import pandas as pd
    import scanpy as sc

    _check_umap_installed()
    info = cell_factors_record(adata, key)
    n_neighbors = check_iterations(n_neighbors, "n_neighbors", minimum=2)
    _check_seed(random_state)
    colors = None if color is None else _name_list(color, "color")
    check_save(save, "umap")  # before the graph and the UMAP, not after them
    check_writable(adata, copy=False)
    if adata.n_obs < MIN_CELLS:
        raise ValueError(
            f"adata holds {counted(adata.n_obs, 'cell')}; a UMAP needs at least {MIN_CELLS}"
        )
    usages = _factor_columns(adata, info["usage_key"], info)
    _factor_columns(adata, info["sqrt_usage_key"], info)
    if usages.shape[1] == 1:
        warnings.warn(
            "the fit has one factor, so every cell's usage is 1: the neighbour graph and "
            "the UMAP hold no structure of the data; fit two or more factors",
            UserWarning,
            stacklevel=2,
        )
    dominant_column = dominant_factor_column(key)
    named = colors is not None and dominant_column in colors and dominant_column not in adata.obs
    write_dominant = color is None or named
    if write_dominant and dominant_column in adata.obs:
        _check_dominant_column(adata, dominant_column)
    colors = [dominant_column] if colors is None else colors
    # before the graph and the UMAP, which scanpy's refusal of a colour came after
    _check_colors(adata, colors, addable={dominant_column, LEIDEN})
    computes_leiden = LEIDEN in colors and LEIDEN not in adata.obs and LEIDEN not in adata.var_names
    _check_records_kept(adata, computes_leiden)
    # only now, every check passed: the graph and UMAP are stored into its own AnnData
    view_to_actual(adata)
    # the RandomState left as it was by a failure, as `vbsnmf.tl.nmf` leaves it
    with kept_if_failed(random_state), _unchanged_on_failure(adata):
        random_state = _integer_seed(random_state)
        if write_dominant:
            active = active_factors(adata, key)
            if active.size == 0:
                active = active_factors(adata, key, include_inactive=True)
            shown = usages[:, active]
            # -1 (missing) where no active factor has usage (a cell without counts under a
            # classical solver), which argmax named factor 0
            dominant = np.where(shown.max(axis=1) > 0, shown.argmax(axis=1), -1)
            names = [f"factor {factor}" for factor in active]
            # only the factors that dominate some cell: the legend listed colours no cell
            # has, and scanpy's rank_genes_groups and pl.top_genes refused to group by them
            adata.obs[dominant_column] = pd.Categorical.from_codes(
                dominant, categories=names
            ).remove_unused_categories()
            n_dominant = adata.obs[dominant_column].cat.categories.size
            if n_dominant > len(sc.plotting.palettes.default_102):
                # past scanpy's largest palette (102 colours) it drew every cell and every
                # legend entry in one grey, and said so only at its info level
                adata.uns[f"{dominant_column}_colors"] = _spread_colours(n_dominant)
            if "written_by" not in info:  # a fit's record (a projection's is not replaced)
                # named in the fit's record, so that a new fit under the key drops it
                # (`drop_fit`); a new record, not an edit of it, which a failure puts back
                adata.uns[key] = {**adata.uns[key], DOMINANT_FACTOR_ENTRY: dominant_column}
        # replaced by the graph below; scanpy reads a stored one first, and one without
        # its parameters (an edited file) failed with a bare KeyError: 'n_neighbors'
        adata.uns.pop("neighbors", None)
        sc.pp.neighbors(
            adata,
            n_neighbors=min(n_neighbors, adata.n_obs - 1),
            use_rep=info["sqrt_usage_key"],
            random_state=random_state,
        )
        if computes_leiden:
            leiden(adata, random_state)
        sc.tl.umap(adata, random_state=random_state)
        titles = [f"UMAP of NMF usages: {name}" for name in colors]
        one = isinstance(color, str) or color is None
        # scanpy's figure is closed when it fails to draw (colours of a column it cannot
        # read) or the save fails, as the graph and the UMAP are put back
        with closed_on_failure():
            axes = sc.pl.umap(
                adata,
                color=colors[0] if one else colors,
                show=False,
                # saved by `_finish`, not autosaved and closed here (sc.settings.autosave)
                save=False,
                title=titles[0] if one else titles,
            )
            # a list of axes for several panels, as scanpy returns them
            first = axes[0] if isinstance(axes, list) else axes
            return _finish(first.figure, axes, show, save, "umap")


def _spread_colours(count: int) -> list[str]:
    """``count`` colours as hex strings, evenly spaced along matplotlib's ``turbo`` colour
    map and taken in an order that puts colours far apart on it next to each other (a
    stride near ``count`` / 2.6, coprime to it), so that factors listed together in the
    legend are told apart: for more categories than scanpy's palettes hold. Distinct up to
    256, the colour map's entries."""
    from math import gcd

    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    shades = colormaps["turbo"](np.linspace(0.0, 1.0, count))
    stride = max(1, round(count / 2.6))
    while gcd(stride, count) != 1:
        stride += 1
    return [to_hex(shades[(index * stride) % count]) for index in range(count)]


def _check_seed(random_state) -> None:
    """``random_state`` as scanpy's neighbours, UMAP and Leiden take it: None, an integer
    in [0, 2**32 - 1] or a numpy RandomState. Checked before any work: numpy's or
    scikit-learn's bare error came from inside ``sc.pp.neighbors``, once a view had been
    made its own AnnData."""
    if random_state is None or isinstance(random_state, np.random.RandomState):
        return
    if not is_integer(random_state):
        raise TypeError(
            "random_state must be None, an integer or a numpy RandomState (scanpy's seeds), "
            f"got {random_state!r}"
        )
    if not 0 <= random_state < 2**32:
        raise ValueError(f"random_state must be an integer in [0, 2**32 - 1], got {random_state}")


def _integer_seed(random_state):
    """``random_state`` as the seed given to scanpy's neighbours, Leiden and UMAP: for a
    ``RandomState`` one integer drawn from it, below 2**32 (as scanpy's seeds); anything else
    as it is. scanpy records its ``random_state`` in ``.uns['neighbors']``, ``['umap']`` and
    ``['leiden']``, and a RandomState there made ``write_h5ad`` fail (anndata's
    ``IORegistryError``) after the work was done."""
    if isinstance(random_state, np.random.RandomState):
        return drawn_seed_below_2_32(random_state)
    return random_state


def _check_dominant_column(adata, column: str) -> None:
    """A `ValueError` when the ``.obs`` column ``column``, which `umap` (re)writes with
    each cell's dominant factor, holds something else: a column of the user's of that
    name was replaced without a word (one an earlier `umap` wrote is written anew)."""
    if not holds_dominant_factors(adata.obs[column]):
        raise ValueError(
            f"adata.obs[{column!r}] holds values that vbsnmf.pl.umap did not write (it "
            "writes there each cell's dominant factor, as categories 'factor 0', ...): "
            "rename that column, or pass color= to colour by it"
        )


# Where scanpy's neighbours and UMAP store their results in `umap` (``(where, name)``, as
# `vbsnmf.tl._stored.record_entries` names a record's entries), and its Leiden clusters.
_SCANPY_ENTRIES = frozenset(
    {
        ("obsm", "X_umap"),
        ("uns", "umap"),
        ("uns", "neighbors"),
        ("obsp", "distances"),
        ("obsp", "connectivities"),
    }
)
_LEIDEN_ENTRIES = frozenset({("obs", LEIDEN), ("uns", LEIDEN)})


def _check_records_kept(adata, computes_leiden: bool) -> None:
    """A `ValueError`, before any work, when scanpy's steps would store their results over
    a fit, projection or K selection of vbsnmf's in ``adata``: one made with
    ``key_added="umap"`` keeps its cell factors in ``.obsm['X_umap']`` and its record in
    ``.uns['umap']``, which the UMAP replaced without a word (``"neighbors"``: its record
    was dropped for the graph's; ``"leiden"`` with ``computes_leiden``)."""
    written = _SCANPY_ENTRIES | (_LEIDEN_ENTRIES if computes_leiden else frozenset())
    for name, record in adata.uns.items():
        if record_kind(record) is None:
            continue
        clash = sorted(
            f".{where}[{entry!r}]" for where, entry in written & record_entries(name, record)
        )
        if clash:
            raise ValueError(
                f"the UMAP would overwrite {', '.join(clash)}, which hold the vbsnmf result "
                f"adata.uns[{name!r}] (key_added={name.removesuffix('_projection')!r}); make "
                "it again under another key_added"
            )


def _check_colors(adata, colors: list[str], addable: set[str]) -> None:
    """A `KeyError` naming the ``colors`` that ``sc.pl.umap`` would not find, as it looks
    them up: an ``.obs`` column, else a gene of ``adata.raw`` when adata has one (scanpy's
    default ``use_raw`` without a layer), else of ``adata``; ``addable``: the columns
    `umap` adds itself (the dominant factors, Leiden clusters). A `ValueError` naming those
    that are both an ``.obs`` column and a gene of ``adata``, which anndata refuses, and
    the genes to read from an ``adata.X`` that is None, and genes whose name other genes
    share."""
    genes, where = (
        (adata.raw.var_names, "adata.raw.var_names")
        if reads_raw_genes(adata)
        else (adata.var_names, "adata.var_names")
    )
    # anndata refuses to pick one (its ValueError came after the graph and the UMAP)
    ambiguous = [name for name in colors if name in adata.obs.columns and name in adata.var_names]
    if ambiguous:
        raise ValueError(
            f"color {', '.join(map(repr, ambiguous))}: both a column of adata.obs and a gene "
            "of adata.var_names, which scanpy cannot tell apart; rename the column"
        )
    for name in colors:
        if name in adata.obs.columns:
            _check_colourable_column(adata.obs[name], name)
        if name in addable or name in adata.obs.columns:
            _check_stored_colours(adata, name)
    missing = [
        name
        for name in colors
        if name not in adata.obs.columns and name not in addable and name not in genes
    ]
    from_x = [
        name
        for name in colors
        if name not in adata.obs.columns and name not in addable and name not in missing
    ]
    # a name two genes share (anndata warns, and keeps them) gave scanpy a colour per cell
    # per gene, and its bare IndexError came after the graph and the UMAP
    shared = [name for name in from_x if np.count_nonzero(genes == name) > 1]
    if shared:
        raise ValueError(
            f"color {', '.join(map(repr, shared))}: a name several genes of {where} share, "
            "which scanpy cannot colour by; make the names unique ("
            + (
                "raw = adata.raw.to_adata(); raw.var_names_make_unique(); adata.raw = raw)"
                if where.startswith("adata.raw")
                else "adata.var_names_make_unique())"
            )
        )
    if from_x and reads_raw_genes(adata):
        check_expression_readable(adata.raw.X, "adata.raw.X", "UMAP coloured by a gene")
    elif from_x:
        check_expression_readable(anndata_x(adata), "adata.X", "UMAP coloured by a gene")
    if from_x and not reads_raw_genes(adata) and anndata_x(adata) is None:
        # anndata's bare TypeError ("'NoneType' object is not subscriptable") came after
        # the graph and the UMAP
        raise ValueError(
            f"color {', '.join(map(repr, from_x))}: a gene, which scanpy colours by its "
            "expression in adata.X, and adata.X is None: colour by an .obs column, or set "
            "adata.X (e.g. adata.X = adata.layers[name])"
        )
    if not missing:
        return
    in_x = [name for name in missing if adata.raw is not None and name in adata.var_names]
    note = (
        f" ({', '.join(map(repr, in_x))} in adata.var_names, but scanpy colours by the genes "
        "of adata.raw when adata has it)"
        if in_x
        else ""
    )
    raise KeyError(
        f"color {', '.join(map(repr, missing))}: neither a column of adata.obs nor a gene of "
        f"{where}{note}"
    )


def _check_colourable_column(column, name: str) -> None:
    """A `ValueError` for an ``.obs`` ``column`` that scanpy can colour by neither as
    groups nor as numbers: scanpy makes a column of text (and missing values)
    categorical, and draws one of numbers on a colour scale; others (objects of text
    beside numbers, a None among booleans or numbers, bytes; pandas' nullable booleans,
    dates, periods) failed with its bare TypeError ("bad operand type for unary -:
    'str'", "The numpy boolean negative, the `-` operator, is not supported") after the
    graph and the UMAP."""
    import pandas as pd

    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return
    if pd.api.types.is_object_dtype(dtype):
        if pd.api.types.infer_dtype(column, skipna=True) == "string":
            return
        if all(isinstance(value, numbers.Real) for value in column):  # NaN is a float
            return
        kinds = ", ".join(sorted({type(value).__name__ for value in column}))
        held = f"objects ({kinds})"
        numbers_and_none = all(isinstance(value, numbers.Real) for value in column.dropna())
        numeric = numbers_and_none and column.notna().any()
    elif isinstance(dtype, pd.BooleanDtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        held, numeric = f"{dtype} values", False
    elif isinstance(dtype, pd.PeriodDtype):
        held, numeric = f"{dtype} values", False
    else:
        return
    raise ValueError(
        f"color {name!r}: adata.obs[{name!r}] holds {held} that scanpy can colour by "
        f"neither as groups nor as numbers: make it categorical (adata.obs[{name!r}] = "
        f"adata.obs[{name!r}].astype('category'))"
        + (
            f", or numbers with NaN where one is missing (pd.to_numeric(adata.obs[{name!r}]))"
            if numeric
            else ""
        )
    )


def _check_stored_colours(adata, name: str) -> None:
    """A `ValueError` when the colours scanpy reads for the categories of the ``.obs``
    column ``name`` (``.uns[name + '_colors']``, which it writes) are one value, not a list
    of them (an edited or converted file): scanpy's bare TypeError "object of type 'int'
    has no len()" came after the graph and the UMAP. A list of colours it cannot read, or
    too few, it replaces by its own, with a warning; a column of numbers has none."""
    import pandas as pd

    key = f"{name}_colors"
    if key not in adata.uns:
        return
    stored = adata.uns[key]
    # what len() fails on, as scanpy takes it: a number, None, a 0-d array (which has a
    # __len__ that fails); text, a dict, a list it reads, and replaces what is no colour
    unsized = not hasattr(stored, "__len__") or (
        isinstance(stored, np.ndarray) and stored.ndim == 0
    )
    if not unsized:
        return
    column = adata.obs.get(name)
    if column is not None and (
        pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    ):
        return  # drawn on a colour scale: scanpy does not read them
    raise ValueError(
        f"color {name!r}: adata.uns[{key!r}] is {stored!r}, not a list of colours, "
        "one per category, which scanpy reads for the column: delete it "
        f"(del adata.uns[{key!r}]) for scanpy's own colours"
    )


@contextlib.contextmanager
def _unchanged_on_failure(adata):
    """Put back what scanpy's steps store in ``adata`` as they go (.obs, .var, .obsm,
    .obsp, .uns) when the block fails, so that a failed UMAP leaves it as it was."""
    saved = {name: getattr(adata, name).copy() for name in ("obs", "var")}
    saved |= {name: dict(getattr(adata, name)) for name in ("obsm", "obsp", "uns")}
    try:
        yield
    except BaseException:
        for name, value in saved.items():
            setattr(adata, name, value)
        raise
