"""Plots of a `vbsnmf.tl.nmf` fit: ELBO trace, factors on an embedding, top genes; the K
grid of `vbsnmf.tl.select_k`.

Drawn by scanpy where scanpy draws the kind of plot (`factors`: ``sc.pl.embedding``,
`top_genes`: ``sc.pl.dotplot``), so they look, save and show as scanpy's plots do:
``show=None`` follows ``sc.settings.autoshow``; ``save=True`` or a string writes into
``sc.settings.figdir`` by scanpy's rule (a string is appended to the plot's name, its
suffix chooses the format, any that matplotlib writes, where scanpy knows .svg, .pdf and
.png; one holding a path separator, a path meant, is a `ValueError`; a ``figdir`` that
is a file, a `NotADirectoryError` before any work; ``sc.settings.autosave`` saves each
figure once). The formats are those matplotlib's ``savefig`` writes, also under a vector
backend (``MPLBACKEND=pdf``), whose own canvas writes one.
A `pathlib.Path` as ``save`` is the output file itself, written atomically (what the
command line uses; one without a suffix gets matplotlib's default format and its suffix,
``figure.png``, as ``savefig`` names it; an existing folder is a `ValueError`; the figure
is then closed, as scanpy closes a figure it saved); any other ``save`` is a `TypeError`.
The axes are returned when the figure is not shown. Axes given by the user may be of a
subfigure, or of a figure pyplot does not hold (``matplotlib.figure.Figure()``), which
only a `pathlib.Path` as ``save`` can write.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._atomic import atomic_file, check_target, link_followed
from .._quoting import quoted_path
from .._utils import (
    booleans_as_objects,
    counted,
    elbo_iterations,
    fit_info,
    is_dask_array,
    is_integer,
    record_entry,
    stored_record,
    warn_user,
)
from .._validation import check_positive
from ..io._stored import anndata_x, to_memory_advice
from ..tl._stored import (
    active_factors,
    cell_factors_record,
    check_writable,
    is_classical_fit,
    view_to_actual,
)
from ..tl._top_genes import top_genes_table, warn_left_out


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def closed_on_failure() -> Iterator[None]:
    """Close the figures that pyplot opened in the block when it fails (not the user's, of
    axes given): a keyword argument matplotlib refused (``size="big"``), a title it could
    not typeset or a save that failed left the half-drawn figure open in pyplot, drawn
    under the error in a notebook and piling up in a loop, as a refused ``save`` did."""
    plt = _pyplot()
    before = set(plt.get_fignums())
    try:
        yield
    except BaseException:
        for number in sorted(set(plt.get_fignums()) - before):
            plt.close(number)
        raise


def _finish(figure, axes, show: bool | None, save, writekey: str):
    """Save and/or show ``figure`` as scanpy does (see the module docstring); return
    ``axes`` unless the figure was shown. A path as ``save`` is written in the format its
    suffix names, or as matplotlib writes a path without one (`_figure_file`)."""
    import scanpy as sc

    # scanpy's own rule for save=True / a string (figdir, the plot's name, the format).
    from scanpy.plotting._utils import savefig_or_show

    check_save(save, writekey)
    # axes of a subfigure: the figure that holds it is the one saved and shown
    figure = figure.figure
    # no manager: a figure pyplot does not hold (``matplotlib.figure.Figure()``, as an
    # application embedding matplotlib makes), and scanpy saves and shows pyplot's current one
    in_pyplot = figure.canvas.manager is not None
    if not in_pyplot and not isinstance(save, os.PathLike):
        if sc.settings.autosave if save is None else save:
            raise ValueError(
                "the axes are of a figure pyplot does not hold, which scanpy's save cannot "
                "write: pass save as a pathlib.Path naming the output file"
            )
    saved_to_path = isinstance(save, os.PathLike)
    if saved_to_path:
        target, file_format = _figure_file(figure, save)
        with atomic_file(target) as temporary:
            _save_figure(figure, temporary, Path(target).name, file_format)
        save = False
    show = sc.settings.autoshow if show is None else show
    save, extension = _suffix_format(figure, save)
    if in_pyplot:
        _pyplot().figure(figure.number)  # savefig_or_show acts on the current figure
        savefig_or_show(writekey, show=show, save=save, ext=extension)
        if saved_to_path:  # closed once saved, as scanpy closes its saved figures
            _pyplot().close(figure)
    return None if show else axes


def _suffix_format(figure, save):
    """``save`` as scanpy's ``savefig_or_show`` takes it, and the format a string's suffix
    names (else None): scanpy knows ``.svg``, ``.pdf`` and ``.png`` only, in lower case,
    and wrote ``"_name.jpg"`` or ``"_name.PNG"`` as a PDF named ``umap_name.jpg.pdf``. A
    suffix matplotlib writes no format of is kept in the name, as scanpy keeps it."""
    if not isinstance(save, str) or "." not in save:
        return save, None
    # not os.path.splitext, which takes ".jpg" alone for a hidden file's name
    stem, _, extension = save.rpartition(".")
    if extension.lower() not in _writable_formats(figure):
        return save, None
    return stem, extension


def _writable_formats(figure) -> dict[str, str]:
    """The formats matplotlib's ``savefig`` writes ``figure`` in (name -> description):
    every format matplotlib registers, which it writes through that format's backend, and
    those of the figure's own canvas. Not the canvas's alone: under a vector backend
    (``MPLBACKEND=pdf``, ``matplotlib.use("svg")``) that is one format, and a ``.png``
    that ``savefig`` writes was refused once the figure was drawn, or a string's ``.jpg``
    written by scanpy as a PDF named ``elbo_x.jpg.pdf``."""
    from matplotlib.backend_bases import FigureCanvasBase

    return {**FigureCanvasBase.get_supported_filetypes(), **figure.canvas.get_supported_filetypes()}


def _save_figure(figure, temporary: Path, name: str, file_format: str) -> None:
    """``figure`` written to the file ``temporary`` that becomes ``name``, in the format
    ``file_format`` (named, not left to the temporary's suffix: ".tmp" for "figure").

    Through an open file, not the path: matplotlib records the name of a path it writes
    to, which was the hidden temporary's (``%%Title: .umap.eps.x1y2z3w4.tmp.eps`` in
    PostScript, and in the gzip header of an ``.svgz``, which ``gunzip -N`` restores).
    PostScript written through an open file has no ``%%Title`` (an optional comment); an
    ``.svgz`` records ``name``, as matplotlib records the name of a path."""
    import gzip

    with open(temporary, "wb") as handle:
        if file_format == "svgz":  # matplotlib's own svgz writer takes the handle's name
            with gzip.GzipFile(name, "wb", fileobj=handle) as packed:
                figure.savefig(packed, format="svg", dpi=_save_dpi(), bbox_inches="tight")
        else:
            figure.savefig(handle, format=file_format, dpi=_save_dpi(), bbox_inches="tight")


def _save_dpi() -> float:
    """The resolution of a figure saved to a path: ``rcParams["savefig.dpi"]``, which
    scanpy's ``save`` honours and ``sc.set_figure_params(dpi_save=...)`` sets (a fixed 150
    wrote a figure meant for print at half the resolution asked), or 150 while it is
    matplotlib's default, ``"figure"`` (the screen's resolution)."""
    from matplotlib import rcParams

    dpi = rcParams["savefig.dpi"]
    return 150.0 if isinstance(dpi, str) else float(dpi)


def check_save(save, writekey: str) -> None:
    """``save`` as the plots take it (see the module docstring): a `TypeError` for any
    other kind of value, a `ValueError` for a string holding a path separator, a path
    meant, which scanpy would append to ``writekey`` and fail to write for want of the
    folder that makes. A path is checked as its writer will meet it (`_figure_file`'s
    format, `atomic_file`'s missing folder, a folder or a read-only file at the name): now,
    before the work (`umap`'s graph and embedding), not once it is done."""
    if save is not None and not isinstance(save, (bool, np.bool_, str, os.PathLike)):
        # scanpy would take any other value by its truth: a list or 0 as a flag
        raise TypeError(f"save must be True/False, a suffix (str) or a path, got {save!r}")
    if isinstance(save, str) and any(sep and sep in save for sep in (os.sep, os.altsep)):
        raise ValueError(
            f"save={save!r} is a string, which scanpy appends to the plot's name in "
            f"sc.settings.figdir ({writekey}...); to write to that path, pass "
            f"pathlib.Path({save!r})"
        )
    if save is None:
        import scanpy as sc

        scanpy_saves = bool(sc.settings.autosave)
    else:  # a string, even "", is appended to the plot's name; a flag by its truth
        scanpy_saves = isinstance(save, str) or (not isinstance(save, os.PathLike) and bool(save))
    if scanpy_saves:
        _check_figdir(save)
    if not isinstance(save, (str, os.PathLike)):
        return
    from matplotlib.figure import Figure

    figure = Figure()  # its canvas says which formats matplotlib writes
    if isinstance(save, str):
        _, extension = _suffix_format(figure, save)
        if extension is not None:
            check_tex(save, extension.lower())
        return
    target, file_format = _figure_file(figure, save)
    check_tex(target, file_format)
    check_target(link_followed(Path(target)))


def _check_figdir(save) -> None:
    """A `NotADirectoryError` when ``sc.settings.figdir``, where scanpy writes a figure
    saved by ``save`` (True, a string, or None under ``sc.settings.autosave``), is a file
    or a broken link, or lies under one: scanpy's bare "FileExistsError: [Errno 17] File
    exists" came once the figure was drawn (and `umap`'s graph and embedding computed),
    the figure left open in pyplot."""
    import scanpy as sc

    figdir = Path(sc.settings.figdir)
    folder = figdir
    # scanpy makes the missing folders; a broken link it cannot make ("File exists")
    while not (folder.exists() or folder.is_symlink()) and folder != folder.parent:
        folder = folder.parent
    if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
        kind = "a file" if folder.exists() else "a broken link"
        raise NotADirectoryError(
            f"sc.settings.figdir ({quoted_path(figdir)}), where save={save!r} writes the "
            f"figure, is not a folder: {quoted_path(folder)} is {kind}; set "
            "sc.settings.figdir to a folder, or pass save as a pathlib.Path naming the output "
            "file"
        )


def check_tex(path: str, file_format: str) -> None:
    """A `ValueError` for a PGF figure (``file_format``) without the TeX system matplotlib
    writes it through (``rcParams["pgf.texsystem"]``): matplotlib's bare RuntimeError came
    once the figure was drawn, after `umap`'s graph and embedding."""
    import shutil

    from matplotlib import rcParams

    tex = rcParams["pgf.texsystem"]
    if file_format == "pgf" and shutil.which(tex) is None:
        raise ValueError(
            f"{quoted_path(path)}: a .pgf figure needs {tex} (a TeX installation), which is "
            "not on PATH; use .pdf, .svg or .png"
        )


def _figure_file(figure, save: os.PathLike) -> tuple[str, str]:
    """The file ``save`` names and its format, as matplotlib's ``savefig`` picks them: the
    suffix, in any case, names the format; a path without one gets the default format
    (``rcParams["savefig.format"]``, PNG unless set) and its suffix appended, as
    ``savefig("figure")`` writes ``figure.png``. A format matplotlib cannot write is a
    `ValueError` naming ``save``, before anything is written, as is a folder's name
    (``Path("")`` is ``.``, whose figure was the hidden ``.png`` of the current folder; an
    existing folder's, whose figure was written beside it)."""
    path = os.fspath(save)
    # an existing folder without a suffix ("figures", where a scanpy user keeps them) was
    # written beside itself as "figures.png"; with one, `check_target` refuses it
    if Path(path).name in ("", "..") or (not Path(path).suffix and Path(path).is_dir()):
        raise ValueError(
            f"save={save!r} names a folder, not a figure file: name a file, e.g. "
            "pathlib.Path('figure.png')"
        )
    file_format = os.path.splitext(path)[1][1:].lower()
    if not file_format:
        file_format = figure.canvas.get_default_filetype()
        path = f"{path.rstrip('.')}.{file_format}"
    supported = _writable_formats(figure)
    if file_format not in supported:
        suffixes = ", ".join("." + name for name in sorted(supported))
        raise ValueError(
            f"cannot save the figure as {quoted_path(save)}: matplotlib writes no "
            f"{file_format!r} files; end the name in one of {suffixes}"
        )
    return path, file_format


def _writer(info: dict) -> tuple[str, str]:
    """The tool that wrote the cell factors of ``info`` (`cell_factors_record`) and what to
    do when they are damaged."""
    tool = info.get("written_by", "vbsnmf.tl.nmf")
    return tool, "project again" if tool == "vbsnmf.tl.project" else "fit again"


def _finite_obsm(adata, name: str, info: dict) -> np.ndarray:
    """``adata.obsm[name]``, which the fit or projection whose record is ``info``
    (`cell_factors_record`) wrote finite: a `KeyError` if it is gone, a `ValueError` if it
    holds anything but finite numbers (an edited result, not a fit)."""
    tool, again = _writer(info)
    if name not in adata.obsm:
        raise KeyError(f"adata.obsm has no {name!r}, which {tool} writes; {again}")
    values = np.asarray(adata.obsm[name])
    if values.dtype.kind not in "biuf":
        raise ValueError(
            f"adata.obsm[{name!r}] holds {values.dtype} values, not numbers, which {tool} "
            f"never writes; {again}"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"adata.obsm[{name!r}] holds NaN or infinite values, which {tool} never writes; {again}"
        )
    return values


def _factor_columns(adata, name: str, info: dict) -> np.ndarray:
    """``adata.obsm[name]``, finite (`_finite_obsm`) and of one column per factor of the
    fit or projection ``info``: an edited result with fewer columns failed with numpy's
    IndexError when the factors were picked (exit 1 from ``vbsnmf umap``), and `factors`
    drew one with more without a word."""
    values = _finite_obsm(adata, name, info)
    n_factors = len(info["active"])
    if values.ndim != 2 or values.shape[1] != n_factors:
        tool, again = _writer(info)
        raise ValueError(
            f"adata.obsm[{name!r}] has shape {values.shape}, not one column per factor of "
            f"the fit's {n_factors}, which {tool} never writes; {again}"
        )
    return values


def _check_components(components, n_components: int) -> list[int]:
    """``components``: distinct factor indices in [0, K), or a boolean mask of length K."""
    values = np.asarray(components)
    if values.dtype == bool and values.ndim == 1 and values.size == n_components:
        return [int(factor) for factor in np.flatnonzero(values)]
    # ints beyond int64 (2**70) are held as objects: indices all the same, out of range
    whole = np.issubdtype(values.dtype, np.integer) or (
        values.dtype == object
        and all(isinstance(v, int) and not isinstance(v, bool) for v in values.flat)
    )
    if values.ndim != 1 or not (values.size == 0 or whole):
        raise TypeError(
            f"components must be a list of factor indices or a boolean mask of length "
            f"{n_components}, got {components!r}"
        )
    chosen = [int(factor) for factor in values]
    if any(not 0 <= factor < n_components for factor in chosen) or len(set(chosen)) < len(chosen):
        raise ValueError(
            f"components must be distinct factor indices in 0..{n_components - 1}, got {chosen}"
        )
    return chosen


def _cell_mask(values, where: str | None) -> np.ndarray:
    """``mask_obs`` (``where``: its ``.obs`` column, or None for values given) as the array
    scanpy reads: booleans held as objects read as booleans. A `ValueError` for missing
    values among booleans, the ``<NA>`` that ``anndata.concat`` gives the cells of an
    AnnData without the column: scanpy's bare "Mask array must be boolean." named neither
    the column nor them. Other values are left to scanpy, which refuses them."""
    values = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    if values.ndim != 1 or values.dtype != object:  # a nullable column's <NA>: objects
        return values
    missing = pd.isna(values)
    if missing.any() and booleans_as_objects(values[~missing]).dtype == bool:
        fill = f"{where} = {where}.fillna(False)" if where else "with False"
        named = f"{where} (mask_obs=)" if where else "mask_obs"
        raise ValueError(
            f"{named} has {counted(int(missing.sum()), 'cell')} "
            "without a value (anndata.concat gives <NA> to the cells of an AnnData without "
            f"the column), which it neither keeps nor masks: fill them, e.g. {fill}"
        )
    return booleans_as_objects(values)


def _coloured_cells(shown: np.ndarray, mask_obs) -> np.ndarray:
    """The rows of ``shown`` (cells x factors drawn) that `factors` draws in colour: those
    ``mask_obs`` keeps when it is a boolean array of one value per cell (a column's name
    is made one first), else all of them (scanpy refuses any other mask itself)."""
    if mask_obs is None:
        return shown
    mask = np.asarray(mask_obs)
    if mask.dtype != bool or mask.shape != (shown.shape[0],):
        return shown
    return shown[mask]


def _check_passed_on(kwds: dict, set_here: dict[str, str], plot: str) -> None:
    """A `TypeError` for a keyword argument to pass on to scanpy that ``plot`` sets itself
    (``set_here``: its name -> what to pass instead), rather than scanpy's bare "got
    multiple values for keyword argument", or its error about the plot's own AnnData."""
    for name, instead in set_here.items():
        if name in kwds:
            raise TypeError(f"{plot} sets {name!r} itself: {instead}")


def _check_forwarded(
    kwds: dict, plot: str, passed_to: str, targets: Sequence, also: tuple[str, ...] = ()
) -> None:
    """A `TypeError` naming ``plot``, as Python's own for an unexpected keyword argument,
    for a keyword argument in ``kwds`` that none of ``targets`` (the scanpy functions or
    classes ``kwds`` are passed to, ``passed_to`` by name) names and matplotlib's
    ``scatter``, which takes the rest, does not take either (a parameter of its 2-D or 3-D
    ``Axes.scatter``, or a property its ``PathCollection`` sets); ``also``: names a target
    takes without naming them (``sc.pl.dotplot``'s old ``color_map``). ``components=`` to
    `top_genes` (a keyword of `factors`) failed deep in matplotlib with
    "PathCollection.set() got an unexpected keyword argument"."""
    import inspect

    from matplotlib.axes import Axes
    from matplotlib.collections import PathCollection
    from matplotlib.projections import get_projection_class

    named = {*also}
    # the 3-D axes (scanpy's projection="3d") through matplotlib, whose mpl_toolkits it is
    for target in (*targets, Axes.scatter, get_projection_class("3d").scatter):
        for name, parameter in inspect.signature(target).parameters.items():
            if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                named.add(name)
    for name in kwds:
        if name not in named and not callable(getattr(PathCollection, f"set_{name}", None)):
            raise TypeError(
                f"{plot}() got an unexpected keyword argument {name!r}: not one of its own, "
                f"nor of {passed_to} or matplotlib's scatter, to which it passes the others"
            )


# The keyword arguments `factors` sets for sc.pl.embedding and `top_genes` for sc.pl.dotplot.
_FACTORS_SET = {
    "color": "choose the factors to draw with components=",
    "vmin": "the colour scale starts at 0; set its top with vmax=",
    "return_fig": "the panels' axes are returned; their figure is axes[0].figure",
    # scanpy's own refusals named the plot's cmap, vmin and vmax as the user's
    "color_map": "choose the colour map with cmap=",
    "norm": "the colour scale runs from 0 to vmax= on a linear scale",
}
_TOP_GENES_SET = {
    "var_names": "the columns are the fit's top genes; choose them with n_genes=, sort_by= "
    "and min_counts=",
    # scanpy's own refusal said "cannot be set if var_names is a dict", a dict it never saw
    "var_group_labels": "the brackets are the factors, labelled 'factor 0', ...",
    "var_group_positions": "the brackets are the factors, one over each factor's genes",
}


def _panel_axes(axes, count: int, save, figsize: tuple[float, float]):
    """``(figure, axes)`` for a plot of ``count`` panels in a row: a new figure of
    ``figsize``, or None and the user's ``axes`` (checked, `_check_axes`), laid out as they
    chose (a subfigure has no tight_layout)."""
    if axes is None:
        return _pyplot().subplots(1, count, figsize=figsize)
    _check_axes(axes, count, save)
    return None, axes


def _check_axes(axes, count: int, save) -> None:
    """``axes``: a sequence of ``count`` distinct matplotlib axes, of one figure when the
    plot is saved (``save``, or scanpy's autosave): the figure of the first was written
    alone, the other panels left out of the file without a word."""
    import scanpy as sc
    from matplotlib.axes import Axes

    try:
        ok = len(axes) == count and all(isinstance(ax, Axes) for ax in axes)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"axes must be a sequence of {count} matplotlib axes, got {axes!r}")
    # the panels were drawn over each other: `elbo`'s trace on the log scale of its gap,
    # where its negative values have no points, drawn as the gap alone without a word
    if len({id(ax) for ax in axes}) < count:
        raise ValueError(
            f"axes must be {count} distinct axes, one per panel; some are given more than "
            "once, which would draw their panels over each other"
        )
    figures = {id(ax.figure.figure) for ax in axes}  # of a subfigure: the one saved
    if len(figures) > 1 and (sc.settings.autosave if save is None else save):
        raise ValueError(
            f"the axes are of {len(figures)} figures, and save= writes one: draw into axes "
            "of one figure, or save each figure yourself (figure.savefig)"
        )


def elbo(
    adata,
    key: str = "nmf",
    *,
    axes: Sequence | None = None,
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
):
    """The ELBO per iteration and, log-scaled, its gap to the final value (points of a
    noisy SVI trace above the final value have none: the panel's title counts them).

    Parameters
    ----------
    adata
        AnnData after a variational `vbsnmf.tl.nmf` fit.
    key
        ``key_added`` of the fit.
    axes
        Two distinct matplotlib axes to draw into (trace, gap); new ones by default.
    show, save
        As scanpy's (see `vbsnmf.pl`); a `pathlib.Path` is the output file.

    Returns
    -------
    The two axes, unless shown.

    Examples
    --------
    >>> import vbsnmf
    >>> adata = vbsnmf.datasets.pbmc_tiny()[:200].copy()
    >>> vbsnmf.tl.nmf(adata, 5, max_iter=50, tol=1e-3)
    >>> trace_ax, gap_ax = vbsnmf.pl.elbo(adata, show=False)
    >>> trace_ax.get_title()
    'ELBO'
    """
    info = fit_info(adata, key, "the ELBO trace")
    if "elbo_trace" not in info and not is_classical_fit(info):
        # every variational fit records it, empty or not: gone, the entry was deleted (the
        # record's largest, dropped to save space), where the message was that the fit
        # "recorded no ELBO in its N passes" and to fit with a larger max_iter
        raise KeyError(
            f"adata.uns[{key!r}] has no 'elbo_trace' entry, which every variational fit "
            "records: was it deleted? pl.elbo cannot draw the trace without it; fit again "
            "with vbsnmf.tl.nmf to record it"
        )
    trace = np.asarray(info.get("elbo_trace", []), dtype=np.float64)
    if trace.size == 0 and "variational" in info:
        raise ValueError(
            f"the fit adata.uns[{key!r}] recorded no ELBO in its {info.get('n_iter')} pass(es) "
            "(SQUAREM's first pass scores only the start); fit with a larger max_iter"
        )
    if trace.size == 0 and "loss_trace" in info:  # the record says what it is: no question
        solver = info.get("params", {}).get("solver")
        by = f" (solver={solver!r})" if isinstance(solver, str) else ""
        raise ValueError(
            f"adata.uns[{key!r}] is a classical fit{by}, which records its loss per iteration "
            f"(adata.uns[{key!r}]['loss_trace']), not an ELBO; pl.elbo plots a variational "
            "fit's (solver='batch' or 'svi')"
        )
    if trace.size == 0:
        raise ValueError(f"adata.uns[{key!r}] has no ELBO trace (not a variational fit?)")
    if not np.isfinite(trace).all():  # no fit records one; matplotlib drew gaps silently
        raise ValueError(
            f"adata.uns[{key!r}]['elbo_trace'] holds NaN or infinite values, which no fit "
            "records; fit again with vbsnmf.tl.nmf"
        )
    _warn_unplaced_trace(info, key, trace.size)
    check_save(save, "elbo")  # before the figure is drawn, which a refusal left open
    # a save that fails (a full disk, say) closes the figure drawn for it
    with closed_on_failure():
        figure, axes = _panel_axes(axes, 2, save, figsize=(9, 3.5))
        iterations = elbo_iterations(info)  # SQUAREM and SVI record fewer values than passes
        axes[0].plot(iterations, trace, marker=".", markersize=3)
        axes[0].set(xlabel="iteration", ylabel="ELBO (nats)", title="ELBO")
        gap = trace[-1] - trace
        positive = gap > 0  # the final value has no gap; a non-increase would have none either
        axes[1].plot(iterations[positive], gap[positive], marker=".", markersize=3)
        if positive.any():
            axes[1].set_yscale("log")
        # a noisy (SVI) trace passes above its final value: such points have no log gap, and
        # leaving them out without a word read as a monotone trace
        above = int(np.count_nonzero(gap < 0))
        title = "gap to final" + (f" ({above} above it, not drawn)" if above else "")
        axes[1].set(xlabel="iteration", ylabel="final ELBO - ELBO (nats)", title=title)
        if figure is not None:
            figure.tight_layout()
        return _finish(axes[0].figure, axes, show, save, "elbo")


def _warn_unplaced_trace(info: dict, key: str, n_values: int) -> None:
    """Warn when the fit record ``info`` has no ``elbo_iter`` (deleted, or a record of a
    version before it was kept) and its ``n_values`` ELBO values are not one per pass:
    `elbo_iterations` then numbers them 1, 2, ..., which put them at passes they were not
    taken at, without a word."""
    n_iter = info.get("n_iter")
    if "elbo_iter" in info or not is_integer(n_iter) or n_values == n_iter:
        return
    warn_user(
        f"adata.uns[{key!r}] has no 'elbo_iter' entry (the pass of each ELBO value), and "
        f"its {counted(n_values, 'ELBO value')} are not one per pass of its {n_iter}: "
        "they are drawn at 1, 2, ..., not at the passes they were taken at",
        UserWarning,
    )


def factors(
    adata,
    basis: str = "umap",
    key: str = "nmf",
    *,
    components: Sequence[int] | None = None,
    values: str = "usage",
    include_inactive: bool = False,
    vmax: float | str = "p99",
    ncols: int = 4,
    cmap: str = "viridis",
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
    **kwds,
):
    """One panel per factor: the cells on an embedding, coloured by the factor, drawn by
    ``sc.pl.embedding`` on one colour scale shared by all panels.

    Parameters
    ----------
    adata
        AnnData after `vbsnmf.tl.nmf`, or after `vbsnmf.tl.project` (new cells on a
        reference fit), and an embedding (e.g. ``sc.tl.umap``).
    basis
        The embedding: ``.obsm['X_' + basis]`` (or ``.obsm[basis]``).
    key
        ``key_added`` of the fit or projection.
    components
        The factors to draw (default: the active ones, ``.uns['nmf']['active']``; of a
        projection, the reference's as it recorded them).
    values
        ``"usage"`` (default): each cell's share of its fitted counts from each factor
        (``.obsm['X_nmf_usage']``), independent of its library size; ``"factors"``: the
        posterior means ``.obsm['X_nmf']``.
    include_inactive
        With ``components=None``, draw the inactive factors too (switched off by the prior;
        their panels are flat).
    vmax
        Top of the shared colour scale: a number, or ``"pNN"``, the NN-th percentile of
        the values of all drawn panels together (scanpy takes each panel's own, which
        would make a flat, switched-off factor look as bright as a real one), of the
        cells drawn in colour (those ``mask_obs`` keeps, as scanpy takes it). The bottom
        is 0.
    ncols, cmap
        As ``sc.pl.embedding``'s.
    show, save
        As scanpy's (see `vbsnmf.pl`); a `pathlib.Path` is the output file. The writekey
        is the basis, as in ``sc.pl.embedding``.
    **kwds
        Passed to ``sc.pl.embedding`` (e.g. ``size``, ``frameon``, ``wspace``,
        ``mask_obs``: an array or the name of a boolean ``.obs`` column, where True and
        False held as objects are read as booleans and missing values, such as the
        ``<NA>`` of ``anndata.concat``, are refused (a `ValueError`); ``ax``, with one
        factor in ``components``); not ``color``,
        ``vmin``, ``norm``, ``color_map`` (``cmap`` here) or ``return_fig``, which the plot
        sets, nor ``use_raw=True``, nor one that neither ``sc.pl.embedding`` nor
        matplotlib's ``scatter`` takes (each a `TypeError`).

    Returns
    -------
    List of axes, one per factor drawn, unless shown.
    """
    import anndata as ad
    import scanpy as sc

    _check_passed_on(kwds, _FACTORS_SET, "vbsnmf.pl.factors")
    _check_forwarded(kwds, "vbsnmf.pl.factors", "sc.pl.embedding", [sc.pl.embedding])
    if kwds.get("use_raw"):  # scanpy said its frame of the factors "does not have raw"
        raise TypeError(
            "vbsnmf.pl.factors draws the fit's usages or factors, not expression: use_raw "
            "does not apply"
        )
    info = cell_factors_record(adata, key)
    if values not in ("usage", "factors"):
        raise ValueError(f"values must be 'usage' or 'factors', got {values!r}")
    basis_key = basis if basis in adata.obsm else f"X_{basis}"
    if basis_key not in adata.obsm:
        raise KeyError(f"adata.obsm has no {basis_key!r}; compute the embedding first")
    n_components = len(np.asarray(info["active"]))
    chosen = components is not None
    if not chosen:
        components = active_factors(adata, key, include_inactive)
    components = _check_components(components, n_components)
    if not components:
        raise ValueError(
            "components= names no factor: pass at least one"
            if chosen
            else "no factor to draw: none is active; pass include_inactive=True to draw them "
            "all, or components= to choose"
        )
    if kwds.get("ax") is not None and len(components) > 1:
        # scanpy's own refusal named 'color', which the plot sets, not the user
        raise ValueError(
            f"ax= holds one panel, and {len(components)} factors are to be drawn: choose "
            "one with components=[factor], or leave ax out"
        )
    # a TypeError for what is no integer, as n_genes, n_neighbors and n_components give it
    if not is_integer(ncols):
        raise TypeError(f"ncols must be a positive integer, got {ncols!r}")
    if ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    # a sparse matrix reads as one object (anndata's bare IndexError), and matplotlib drew
    # text as categories, one tick per distinct value
    embedding = np.asarray(adata.obsm[basis_key])
    if embedding.ndim != 2 or embedding.shape[1] < 2 or embedding.dtype.kind not in "biuf":
        raise ValueError(
            f"adata.obsm[{basis_key!r}] is not a 2-D embedding of numbers (cells x 2 or more)"
        )
    # matplotlib left such cells out of every panel without a word (all of them: an empty
    # figure); anndata.concat(join="outer") pads an embedding with NaN for cells without it
    unplaced = int((~np.isfinite(embedding)).any(axis=1).sum())
    if unplaced:
        raise ValueError(
            f"adata.obsm[{basis_key!r}] places {unplaced} of the {adata.n_obs} cells at NaN or "
            "infinite coordinates, which would be left out of the panels: compute the "
            "embedding for every cell"
        )
    if adata.n_obs == 0:  # np.percentile of nothing failed with numpy's IndexError
        raise ValueError("adata holds no cells to draw")
    field = info["usage_key"] if values == "usage" else info["obsm_key"]
    # NaN made the percentile scale NaN, and matplotlib drew a broken one silently
    shown = _factor_columns(adata, field, info)[:, components]
    if isinstance(kwds.get("mask_obs"), str):
        # scanpy looked the column up in the panels' frame below, which holds the factors
        # only, and said "Did not find adata.obs['keep']" of a column adata has
        column = kwds["mask_obs"]
        if column not in adata.obs:
            raise KeyError(f"adata.obs has no column {column!r} (mask_obs=) to mask cells by")
        kwds["mask_obs"] = _cell_mask(adata.obs[column], f"adata.obs[{column!r}]")
    elif kwds.get("mask_obs") is not None:
        # scanpy reads the mask's dtype: a list of booleans failed with its bare
        # AttributeError "'list' object has no attribute 'dtype'"
        kwds["mask_obs"] = _cell_mask(kwds["mask_obs"], None)
    coloured = _coloured_cells(shown, kwds.get("mask_obs"))
    if isinstance(vmax, str):
        percent = vmax[1:].replace(".", "", 1)
        if not (vmax.startswith("p") and percent.isdigit() and float(vmax[1:]) <= 100):
            raise ValueError(f"vmax must be a number or 'pNN' (a percentile), got {vmax!r}")
        if coloured.size == 0:  # numpy's bare IndexError
            raise ValueError(
                f"mask_obs= keeps no cell, so vmax={vmax!r} is the percentile of no value: "
                "keep some cells, or give vmax as a number"
            )
        # of the cells drawn in colour, as scanpy takes it: masked cells, drawn grey, set
        # the scale of the subset shown
        percentile = float(np.percentile(coloured, float(vmax[1:])))
        # At or below every drawn value, matplotlib drew each cell in one colour silently;
        # but values that are all one positive number (the usages of a fit with one factor,
        # 1 in every cell) are rightly drawn in one colour, at the top of the scale.
        constant = coloured.min() == coloured.max() and percentile > 0
        if not (percentile > coloured.min() or constant):
            raise ValueError(
                f"vmax={vmax!r} is the smallest drawn value here ({percentile:.3g}), which "
                "draws every cell in one colour: choose a higher percentile or a number"
            )
        vmax = percentile
    elif vmax is None:  # scanpy's automatic scale
        pass
    # real numbers only: a complex one (np.number) lost its imaginary part, or reached
    # matplotlib
    elif not (is_integer(vmax) or isinstance(vmax, (float, np.floating))):
        raise TypeError(f"vmax must be a number or 'pNN' (a percentile), got {vmax!r}")
    else:  # an int beyond floats too, of which numpy's "ufunc 'isfinite' not supported"
        # named nothing
        vmax = check_positive(vmax, "vmax", expected="positive and finite (the scale starts at 0)")
    check_save(save, basis)  # before the figure is drawn, which a refusal left open
    names = [f"factor {factor}" for factor in components]
    # A frame with only what the panels need, so adata itself gains no .obs columns.
    # Stored as X_<name> so that scanpy names the axes as its own (UMAP1, UMAP2).
    name = basis_key.removeprefix("X_")
    panels = ad.AnnData(
        obs=pd.DataFrame(shown, index=adata.obs_names, columns=names),
        obsm={f"X_{name}": embedding},
    )
    # scanpy's figure is closed when matplotlib refuses a keyword argument passed on, or a
    # title it cannot typeset, or the save fails
    with closed_on_failure():
        axes = sc.pl.embedding(
            panels,
            basis=name,
            color=names,
            vmin=0,
            vmax=vmax,
            ncols=ncols,
            cmap=cmap,
            show=False,
            # saved by `_finish`: under sc.settings.autosave scanpy saved and closed the figure
            # here, and `_finish` then refused it as one pyplot does not hold
            save=False,
            **kwds,
        )
        axes = axes if isinstance(axes, list) else [axes]
        return _finish(axes[0].figure, axes, show, save, basis)


def top_genes(
    adata,
    groupby: str | Sequence[str],
    n_genes: int = 5,
    key: str = "nmf",
    *,
    sort_by: str = "specificity",
    min_counts: int = 2,
    include_inactive: bool = False,
    return_fig: bool = False,
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
    **kwds,
):
    """``sc.pl.dotplot`` of each active factor's top genes across the groups of ``groupby``.

    The genes of each factor (`vbsnmf.tl.top_genes`) form one labelled bracket of columns;
    the rows are the groups (e.g. Leiden clusters). As in any scanpy dot plot, dot size is
    the fraction of the group's cells that express the gene and colour its mean
    expression, here scaled to [0, 1] per gene (``standard_scale="var"``) so that genes
    of every depth are comparable.

    Parameters
    ----------
    adata
        AnnData after `vbsnmf.tl.nmf`.
    groupby
        The ``.obs`` column of groups (clusters, cell types), or a list of columns (or an
        array or `pandas.Index`; their combinations are the groups, as in
        ``sc.pl.dotplot``). Categories without cells
        are refused (scanpy's dot plot cannot draw them); so are, of several columns, one
        named twice, one with cells without a value or with values other than text (it
        cannot name their groups), and groups it would name alike (their values joined
        with ``_``: ``("a_b", "c")`` and ``("a", "b_c")``).
    n_genes, sort_by, min_counts, include_inactive
        As in `vbsnmf.tl.top_genes`, but ``n_genes`` is 5 by default here (20 there): a dot
        plot of every active factor's genes stays readable. A factor none of whose genes
        has a positive loading and ``min_counts`` counts is left out, with a warning.
    key
        ``key_added`` of the fit.
    return_fig
        Return the ``sc.pl.DotPlot`` (to style it further) instead of drawing; ``save`` is
        then refused (a `ValueError`): the plot is not drawn yet.
    show, save
        As scanpy's (see `vbsnmf.pl`); a `pathlib.Path` is the output file. The writekey
        is scanpy's ``dotplot_``.
    **kwds
        Passed to ``sc.pl.dotplot`` (e.g. ``layer``, ``use_raw``, ``standard_scale=None``,
        ``cmap``, ``dendrogram``, and matplotlib's ``scatter``'s, such as ``linewidth``);
        not ``var_names``, ``var_group_labels`` or ``var_group_positions``, which the plot
        sets, nor one that neither ``sc.pl.dotplot`` nor ``scatter`` takes, such as
        `factors`' ``components`` (each a `TypeError`).
        ``dendrogram=True`` without a stored one computes scanpy's dendrogram into
        ``adata`` (``.uns['dendrogram_<groupby>']``), on ``.obsm['X_pca']``: where there
        is none and ``adata`` has more than 50 genes (``sc.settings.N_PCS``), scanpy first
        runs ``sc.pp.pca`` of ``X`` into it (``.obsm['X_pca']``, ``.varm['PCs']``,
        ``.uns['pca']``). A view is made its own AnnData first, as anndata does at a write
        (a backed AnnData, or a view of one, is refused: scanpy cannot read its X).
        Scanpy's dot plot also makes ``.obs`` and ``.var`` columns of text categorical in
        ``adata``: a view holding such a column is made its own AnnData first too (a view
        of a backed AnnData is refused, a `ValueError`: it cannot be changed).

    Returns
    -------
    The ``DotPlot`` with ``return_fig=True``; else the dict of axes (as
    ``sc.pl.dotplot``'s), unless shown.
    """
    import scanpy as sc

    _check_passed_on(kwds, _TOP_GENES_SET, "vbsnmf.pl.top_genes")
    from scanpy.plotting import DotPlot

    # sc.pl.dotplot passes the rest on to DotPlot, and takes color_map as its cmap
    _check_forwarded(
        kwds, "vbsnmf.pl.top_genes", "sc.pl.dotplot", [sc.pl.dotplot, DotPlot], ("color_map",)
    )
    info = fit_info(adata, key, "the gene loadings")
    if return_fig and save is not None and save is not False:
        # the DotPlot is returned undrawn, and scanpy drops save then: a path went unwritten
        raise ValueError(
            "return_fig=True returns the DotPlot undrawn, which save= cannot write: drop "
            "return_fig, or save the figure from the DotPlot (dot_plot.savefig(path))"
        )
    if adata.n_obs == 0:
        raise ValueError("adata holds no cells to group")
    columns = _name_list(groupby, "groupby")
    for column in columns:
        _check_group_column(adata, column)
    if len(columns) > 1:
        _check_combinable(adata, columns)
    if kwds.get("use_raw") and adata.raw is None:
        # scanpy's own error was a bare AttributeError: 'NoneType' object has no attribute 'var'
        raise ValueError(
            "use_raw=True shows the expression of adata.raw, and adata has no .raw: drop "
            "use_raw to show adata.X (or layer=)"
        )
    if (
        anndata_x(adata) is None
        and "layer" not in kwds
        and (adata.raw is None or kwds.get("use_raw") is False)
    ):
        # scanpy's dotplot would fail on X with a bare TypeError
        if "layer" not in info["params"]:
            raise ValueError("adata.X is None: pass layer= naming the expression to show")
        kwds["layer"] = info["params"]["layer"]
    if kwds.get("layer") is not None and kwds["layer"] not in adata.layers:
        # anndata's bare KeyError named only the layer
        raise KeyError(
            f"adata.layers has no {kwds['layer']!r} (layer=) to show; it holds: "
            f"{', '.join(map(repr, adata.layers)) or 'none'}"
        )
    # without tl.top_genes' warning of a factor left out of its table: said of the plot below
    table = top_genes_table(adata, n_genes, key, sort_by, min_counts, include_inactive)
    if table.empty:
        # said which of the two it is: "none is active, or min_counts is high"
        if active_factors(adata, key, include_inactive).size == 0:
            raise ValueError(
                "no factor to show: none is active; pass include_inactive=True to show them all"
            )
        raise ValueError(
            f"no gene of the factors shown has a positive loading and min_counts={min_counts} "
            "counts or more; lower min_counts"
        )
    # a factor none of whose genes qualifies had no bracket in the plot, without a word
    warn_left_out(adata, key, table, min_counts, include_inactive, "the dot plot")
    names = table["gene"]
    reads_raw = reads_raw_genes(adata, kwds.get("use_raw"), kwds.get("layer"))
    _check_genes_readable(adata, info, names, kwds, reads_raw)
    genes_read = adata.raw if reads_raw else adata
    layer = None if reads_raw else kwds.get("layer")
    expression = genes_read.X if layer is None else adata.layers[layer]
    where = (
        "adata.raw.X" if reads_raw else "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    )
    check_expression_readable(expression, where, "dot plot")
    _check_sparse_array_readable(expression, where)
    # scanpy refuses them too, but the lookup by gene_symbols below failed first with
    # pandas' "cannot reindex on an axis with duplicate labels"
    _check_unique_gene_names(genes_read.var_names, "adata.raw" if reads_raw else "adata")
    # None is scanpy's default, the var_names: it was looked up as a column named None
    if kwds.get("gene_symbols") is not None:
        # scanpy looks each name up in that column, not in the var_names
        names = _gene_symbols(adata, names, kwds["gene_symbols"], reads_raw)
        gene_names = pd.Index(genes_read.var[kwds["gene_symbols"]])
    else:
        gene_names = genes_read.var_names
        where_genes = f"{'adata.raw' if reads_raw else 'adata'}.var_names"
        _check_names_are_text(names, where_genes, f"{where_genes} = {where_genes}.astype(str)")
    _check_genes_not_columns(adata, names)
    _check_groups_not_genes(columns, gene_names)
    genes = {
        f"factor {factor}": list(listed)
        for factor, listed in names.groupby(level="factor", sort=True)
    }
    kwds.setdefault("standard_scale", "var")
    # before the figure is drawn (which a refusal left open) and a dendrogram computed
    check_save(save, "dotplot_")
    dendrogram = kwds.get("dendrogram")
    # scanpy's key of the dendrogram: named, else of the groupby columns
    stored = dendrogram if isinstance(dendrogram, str) else f"dendrogram_{'_'.join(columns)}"
    if dendrogram and stored not in adata.uns and anndata_x(adata) is None:
        _refuse_dendrogram_without_x(adata, stored, columns, info)
    if dendrogram and adata.is_view and stored not in adata.uns:
        # scanpy stores the dendrogram it computes into adata, which anndata makes its own
        # object, and read it back from the view: a bare KeyError 'dendrogram_<groupby>'
        check_writable(adata, copy=False)
        view_to_actual(adata)
    text = _text_columns(adata) if adata.is_view else []
    if text and adata.isbacked:
        # scanpy's dot plot makes them categorical in adata, which a backed view cannot
        # take: anndata's bare RuntimeError "Please call `.strings_to_categoricals()` on
        # full AnnData, not on this view"
        raise ValueError(
            f"adata is a view of a backed AnnData, and {', '.join(text[:3])} "
            f"hold{'s' if len(text) == 1 else ''} text, which scanpy's dot plot makes "
            "categorical in adata; a backed view cannot be changed: make them categorical "
            "in the AnnData it views (its .strings_to_categoricals()), or "
            f"{to_memory_advice(adata)}"
        )
    if text:  # as anndata does at that write, without its ImplicitModificationWarning
        view_to_actual(adata)
    # the columns checked above (of an array or Index given, scanpy's own list)
    groups = columns[0] if isinstance(groupby, str) else columns
    # scanpy's figure is closed when matplotlib refuses a keyword argument passed on, or
    # the save fails
    with closed_on_failure():
        try:
            dot_plot = sc.pl.dotplot(adata, genes, groups, return_fig=True, show=False, **kwds)
        except NotImplementedError as error:
            if not (dendrogram and adata.isbacked and stored not in adata.uns):
                raise
            # scanpy's dendrogram reads adata.X, and said only "dendrogram is not implemented
            # for matrices of type <class '..._CSRDataset'>"
            raise ValueError(
                f"dendrogram=True computes scanpy's dendrogram ({stored!r}), which cannot read the "
                "X of a backed AnnData: plot adata.to_memory(), or drop dendrogram"
            ) from error
        if return_fig:
            return dot_plot
        dot_plot.make_figure()
        return _finish(dot_plot.fig, dot_plot.get_axes(), show, save, "dotplot_")


def _refuse_dendrogram_without_x(adata, stored: str, columns: list, info: dict) -> None:
    """A `ValueError` for ``dendrogram=True`` of an AnnData without X (the counts in a
    layer): scanpy's dendrogram reads X where no ``use_rep`` is given, which failed with
    pandas' bare "Length mismatch" (h5py's bare KeyError of a backed AnnData, whose file
    it reads X from even with a ``use_rep``). Computed first from the fit's usages, the dot
    plot reads it under ``stored``."""
    groupby = columns[0] if len(columns) == 1 else list(columns)
    compute = f"sc.tl.dendrogram(adata, {groupby!r}, use_rep={info['usage_key']!r}"
    compute += ")" if stored == f"dendrogram_{'_'.join(columns)}" else f", key_added={stored!r})"
    first = f"{to_memory_advice(adata)}, then " if adata.isbacked else ""
    raise ValueError(
        f"dendrogram=True computes scanpy's dendrogram ({stored!r}) from adata.X, which "
        f"adata does not hold: {first}compute it from the fit's usages with {compute} before "
        "the plot, or drop dendrogram"
    )


def _text_columns(adata) -> list[str]:
    """The ``.obs`` and ``.var`` columns of text that scanpy's plots make categorical in
    ``adata`` (``sanitize_anndata``: anndata's ``strings_to_categoricals``, which converts
    a column of text whose values repeat), named as ``adata.obs['name']``."""
    from pandas.api.types import infer_dtype

    found = []
    for side in ("obs", "var"):
        frame = getattr(adata, side)
        for name in frame.columns:
            values = frame[name]
            if infer_dtype(values) != "string":
                continue
            if len(pd.Categorical(values).categories) < len(values):
                found.append(f"adata.{side}[{name!r}]")
    return found


def _check_genes_readable(adata, info: dict, genes: pd.Series, kwds: dict, reads_raw: bool) -> None:
    """A `ValueError` when the dot plot would read the fit's listed ``genes`` where some of
    them are not (scanpy's bare KeyError): ``adata.raw`` when scanpy uses it
    (``reads_raw``, `reads_raw_genes`), else adata's genes, which a ``layer`` shares."""
    readable = adata.raw.var_names if reads_raw else adata.var_names
    absent = pd.Index(genes.unique()).difference(readable, sort=False)
    if absent.empty:
        return
    listed = ", ".join(map(str, absent[:5])) + (", ..." if len(absent) > 5 else "")
    if info["params"].get("use_raw") and not reads_raw:
        raise ValueError(
            f"the fit's genes are adata.raw's (use_raw=True), and the dot plot would read "
            f"adata.X{'' if 'layer' not in kwds else ' (its layer)'}, which lacks "
            f"{len(absent)} of its top genes ({listed}); drop use_raw=False to show .raw"
        )
    where = "adata.raw" if reads_raw else "adata"
    raise ValueError(
        f"the dot plot would read {where}, which lacks {len(absent)} of the fit's top genes "
        f"({listed}); pass use_raw={not reads_raw} to read "
        f"{'adata.X' if reads_raw else 'adata.raw'}"
    )


def _check_genes_not_columns(adata, genes: pd.Series) -> None:
    """A `ValueError` naming the fit's listed ``genes`` that are also ``.obs`` columns,
    which scanpy's dot plot refuses with a bare KeyError ("found in both adata.obs and
    adata.var_names")."""
    both = pd.Index(genes.unique()).intersection(adata.obs.columns, sort=False)
    if len(both):
        raise ValueError(
            f"{', '.join(map(repr, both[:5]))}: among the fit's top genes and a column of "
            "adata.obs, which scanpy's dot plot cannot tell apart; rename the column"
        )


def check_expression_readable(matrix, where: str, plot: str) -> None:
    """A `ValueError` when the expression ``matrix`` (``where``) a scanpy ``plot`` reads
    is a dask array of sparse chunks (``anndata.experimental.read_elem_lazy`` of a sparse
    X, which `vbsnmf.tl.nmf` fits), which scanpy reads as one object: pandas' bare
    TypeError "len() of unsized object", or scipy's "'csr_matrix' object has no attribute
    'item'" after the graph and the UMAP. Dense chunks scanpy reads."""
    import scipy.sparse as sp

    if is_dask_array(matrix) and sp.issparse(getattr(matrix, "_meta", None)):
        raise ValueError(
            f"{where} is a dask array of sparse chunks, which scanpy's {plot} cannot read: "
            "plot an AnnData in memory (adata.to_memory())"
        )


def _check_sparse_array_readable(matrix, where: str) -> None:
    """A `ValueError` when the expression ``matrix`` (``where``) of the dot plot is a scipy
    sparse array (``csr_array``, which anndata holds as it was given) that scanpy's dot plot
    passes on to pandas as it is: its genes, picked out of order, failed with pandas' bare
    "15 columns passed, passed data had 30 columns" (scanpy makes only its sparse matrix
    types dense). A scanpy that makes this type dense is left to draw it."""
    import scipy.sparse as sp

    if not sp.issparse(matrix) or isinstance(matrix, sp.spmatrix):
        return
    try:  # the sparse types scanpy makes dense before pandas sees them
        from scanpy._compat import CSBase
    except ImportError:
        return
    if isinstance(matrix, CSBase):
        return
    advice = (
        "raw = adata.raw.to_adata(); raw.X = scipy.sparse.csr_matrix(raw.X); adata.raw = raw"
        if where == "adata.raw.X"
        else f"{where} = scipy.sparse.csr_matrix({where})"
    )
    raise ValueError(
        f"{where} is a scipy sparse array ({type(matrix).__name__}), which scanpy's dot plot "
        f"cannot read (it hands it to pandas as it is): store it as a sparse matrix, {advice}"
    )


def _check_groups_not_genes(columns: list[str], gene_names: pd.Index) -> None:
    """A `ValueError` naming the groupby ``columns`` that are also names of the genes the
    dot plot reads (``gene_names``), which scanpy's dot plot refuses with a bare KeyError
    ("found in both adata.obs and adata.var_names"), whether the gene is shown or not."""
    both = [column for column in columns if column in gene_names]
    if both:
        raise ValueError(
            f"groupby {', '.join(map(repr, both))}: a column of adata.obs and the name of a "
            "gene, which scanpy's dot plot cannot tell apart; rename the column"
        )


def reads_raw_genes(adata, use_raw: bool | None = None, layer: str | None = None) -> bool:
    """Whether scanpy's plots look gene names up in ``adata.raw``: ``use_raw`` as given,
    else (scanpy's default) whether adata has ``.raw`` and no ``layer`` is named."""
    if use_raw is None:
        return adata.raw is not None and layer is None
    return bool(use_raw)


def _gene_symbols(adata, genes: pd.Series, column: str, reads_raw: bool) -> pd.Series:
    """The fit's ``genes`` (var_names) as their names in the ``.var`` column ``column`` (of
    ``adata.raw`` when scanpy reads it, ``reads_raw``), by which scanpy's dot plot looks
    them up: a `KeyError` without the column, a `ValueError` when a gene has no name there,
    one that other genes share or one that is not text (scanpy's bare KeyErrors and
    AssertionError), a `TypeError` for a ``column`` that is not a name."""
    var, where = (adata.raw.var, "adata.raw.var") if reads_raw else (adata.var, "adata.var")
    if not isinstance(column, str):  # a list failed as Python's "unhashable type"
        raise TypeError(
            f"gene_symbols must be the name of a column of {where}, a string, got {column!r}"
        )
    if column not in var.columns:
        raise KeyError(f"{where} has no column {column!r} (gene_symbols) to name the genes by")
    symbols = var[column]
    names = symbols.reindex(genes.to_numpy())
    unnamed = genes[names.isna().to_numpy()].unique()
    shared = symbols[symbols.isin(names.dropna()) & symbols.duplicated(keep=False)].unique()
    if len(unnamed) or len(shared):
        listed = ", ".join(map(str, [*unnamed, *shared][:5]))
        raise ValueError(
            f"{where}[{column!r}] (gene_symbols) gives some of the fit's top genes no name, "
            f"or one that other genes share ({listed}); drop gene_symbols= to show the "
            "var_names"
        )
    column_name = f"{where}[{column!r}]"
    advice = (
        f"{column_name} = {column_name}.astype(str), or drop gene_symbols= to show the var_names"
    )
    _check_names_are_text(names, f"{column_name} (gene_symbols)", advice)
    return pd.Series(names.to_numpy(), index=genes.index, name=genes.name)


def _check_names_are_text(names, where: str, advice: str) -> None:
    """A `ValueError` when some of the names by which the dot plot shows the fit's top
    genes (``names``, from ``where``) are not text: scanpy looks up text, and numbers
    failed with its bare AssertionError, or a KeyError for the number as text ("Could not
    find keys [np.str_('5')]"). ``advice``: how to store them as text."""
    not_text = [name for name in names if not isinstance(name, str)]
    if not_text:
        listed = ", ".join(map(str, not_text[:5]))
        raise ValueError(
            f"{where}: some of the fit's top genes are named by values that are not text "
            f"({listed}), which scanpy's dot plot cannot look up; store them as text, {advice}"
        )


def _check_unique_gene_names(var_names: pd.Index, where: str) -> None:
    """A `ValueError` naming the genes that ``var_names`` (of ``where``, the genes scanpy's
    dot plot reads) hold more than once, which scanpy refuses."""
    if var_names.is_unique:
        return
    repeated = var_names[var_names.duplicated()].unique()
    listed = ", ".join(map(repr, repeated[:5])) + (", ..." if len(repeated) > 5 else "")
    raise ValueError(
        f"{where}.var_names hold {listed} more than once, which scanpy's dot plot cannot "
        f"look up: make them unique first ({where}.var_names_make_unique())"
    )


def _name_list(value, name: str) -> list[str]:
    """A parameter that takes a name or a non-empty list of names (``groupby``, ``color``)
    as a list: a list, a tuple, or a one-dimensional array or `pandas.Index` of names, as
    scanpy takes them (``color=adata.var_names[:4]`` was a `TypeError`). Not a `Series`:
    one is a column's values (``adata.obs['leiden']``), not names."""
    if isinstance(value, pd.Series):
        raise TypeError(
            f"{name} takes names, not a column's values (a Series): pass the name of the "
            f"column, e.g. {name}={value.name!r}"
        )
    if isinstance(value, str):
        names = [value]
    elif isinstance(value, (list, tuple)):
        names = list(value)
    elif isinstance(value, (np.ndarray, pd.Index)) and np.ndim(value) == 1:
        names = list(np.asarray(value, dtype=object))
    else:
        names = []
    if not names:
        raise TypeError(f"{name} must be a name or a non-empty list of names, got {value!r}")
    for item in names:
        if not isinstance(item, str):
            raise TypeError(f"{name} must be a name or a list of names, got {item!r} in it")
    return [str(item) for item in names]  # not numpy's str_, which prints as np.str_('a')


def _check_group_column(adata, groupby: str) -> None:
    """An ``.obs`` column scanpy's dot plot can group by (its own failures on the others
    are pandas' KeyErrors, or bins it then cannot find)."""
    if groupby not in adata.obs:
        raise KeyError(f"adata.obs has no column {groupby!r} to group the cells by")
    column = adata.obs[groupby]
    if column.isna().all():
        raise ValueError(f"adata.obs[{groupby!r}] puts no cell in a group: every value is missing")
    if not isinstance(column.dtype, pd.CategoricalDtype) and pd.api.types.is_numeric_dtype(column):
        kind = "boolean" if pd.api.types.is_bool_dtype(column) else "numeric"
        raise ValueError(
            f"adata.obs[{groupby!r}] is {kind}; make it categorical to group by it "
            f"(adata.obs[{groupby!r}] = adata.obs[{groupby!r}].astype('category'))"
        )
    if isinstance(column.dtype, pd.CategoricalDtype):
        unused = column.cat.categories.difference(column.unique().dropna())
        if len(unused):
            listed = ", ".join(map(str, unused[:5]))
            raise ValueError(
                f"adata.obs[{groupby!r}] has categories without cells ({listed}), "
                "which scanpy's dot plot cannot draw: drop them with "
                f"adata.obs[{groupby!r}] = adata.obs[{groupby!r}].cat.remove_unused_categories()"
            )


def _check_combinable(adata, columns: list[str]) -> None:
    """A `ValueError` when scanpy's dot plot cannot combine the ``.obs`` ``columns`` (several)
    into groups: it joins each cell's values into its group's name, and failed with bare
    errors on a column named twice (AttributeError: 'DataFrame' object has no attribute
    'cat'), a cell without a value or a value that is not text (TypeError: "sequence item
    0: expected str instance, float found"); one column alone leaves such cells out, and
    takes any values."""
    repeated = [column for column in columns if columns.count(column) > 1]
    if repeated:
        raise ValueError(f"groupby names {repeated[0]!r} more than once; name each column once")
    for column in columns:
        values = adata.obs[column]
        if values.isna().any():
            raise ValueError(
                f"adata.obs[{column!r}] has cells without a value, which scanpy's dot plot "
                f"cannot combine with the other groupby columns ({', '.join(map(repr, columns))}) "
                "into a group: give them a value (e.g. a category 'unknown'), or group by one "
                "column"
            )
        if isinstance(values.dtype, pd.CategoricalDtype):
            values = values.cat.categories
        not_text = [value for value in pd.unique(np.asarray(values)) if not isinstance(value, str)]
        if not_text:
            raise ValueError(
                f"adata.obs[{column!r}] holds values that are not text ({not_text[0]}), "
                "which scanpy's dot plot cannot join with the other groupby columns into a "
                f"group's name: make them text (adata.obs[{column!r}] = "
                f"adata.obs[{column!r}].astype(str).astype('category'))"
            )
    # scanpy names each group by its values joined with "_": two groups of one name, such
    # as ("a_b", "c") and ("a", "b_c"), it drew as one row without a word
    groups = adata.obs[columns].drop_duplicates()
    names = groups.astype(str).agg("_".join, axis=1)
    if names.duplicated().any():
        name = names[names.duplicated()].iloc[0]
        same = [tuple(row) for row in groups[names == name].itertuples(index=False)]
        raise ValueError(
            f"the groups {same[0]!r} and {same[1]!r} of groupby {columns!r} are both named "
            f"{name!r} (their values joined with '_'), which scanpy's dot plot would draw "
            "as one group: rename values so that no '_' makes two groups alike"
        )


def select_k(
    adata,
    key: str = "nmf_k_selection",
    *,
    axes: Sequence | None = None,
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
):
    """The K grid of `vbsnmf.tl.select_k`: held-out log-likelihood per count (with one
    standard error of the difference to the best K, and the line a K must reach when
    ``select_k`` was given a ``tolerance``), final ELBO and active factors against K, the
    suggested K marked, as cNMF's ``k_selection_plot``.

    Parameters
    ----------
    adata
        AnnData after `vbsnmf.tl.select_k`.
    key
        Its ``key_added``.
    axes
        Three distinct matplotlib axes to draw into; new ones by default.
    show, save
        As scanpy's (see `vbsnmf.pl`); a `pathlib.Path` is the output file.

    Returns
    -------
    The three axes, unless shown.
    """
    from matplotlib.ticker import MaxNLocator

    table, ks, suggested = _k_selection(adata, key)
    check_save(save, "select_k")  # before the figure is drawn, which a refusal left open
    # a save that fails (a full disk, say) closes the figure drawn for it
    with closed_on_failure():
        figure, axes = _panel_axes(axes, 3, save, figsize=(12, 3.5))
        axes[0].errorbar(
            ks, table["heldout_ll_per_count"], yerr=table["heldout_se"], marker="o", capsize=3
        )
        axes[0].set(xlabel="K", ylabel="nats per count", title="held-out log-likelihood")
        params = adata.uns[key].get("params")
        tolerance = params.get("tolerance") if isinstance(params, dict) else None
        given = isinstance(tolerance, (int, float, np.number)) and not isinstance(tolerance, bool)
        if given and np.isfinite(tolerance):
            # a given tolerance, not the standard errors drawn, chose the K: drawn too
            best = table["heldout_ll_per_count"].max()
            axes[0].axhline(
                best - tolerance,
                color="0.5",
                linestyle=":",
                label=f"best - tolerance {tolerance:g}",
            )
            axes[0].legend(frameon=False)
        axes[1].plot(ks, table["elbo"], marker="o")
        axes[1].set(xlabel="K", ylabel="nats", title="ELBO")
        axes[2].plot(ks, ks, color="0.7", linestyle=":", label="all K active")
        axes[2].plot(ks, table["n_active"], marker="o", label="active")
        axes[2].set(xlabel="K", ylabel="factors", title="active factors")
        axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))  # not 2.5 factors
        axes[2].legend(frameon=False)
        for ax in axes:
            ax.axvline(suggested, color="tab:red", linestyle="--", linewidth=1)
            ax.set_xticks(ks)
        axes[0].annotate(
            f"suggested K={suggested}",
            xy=(0.02, 0.02),
            xycoords="axes fraction",
            color="tab:red",
        )
        if figure is not None:
            figure.tight_layout()
        return _finish(axes[0].figure, axes, show, save, "select_k")


# The columns of `vbsnmf.tl.select_k`'s table that `select_k` draws.
_K_SELECTION_COLUMNS = ("heldout_ll_per_count", "heldout_se", "elbo", "n_active")


def _k_selection(adata, key: str) -> tuple[pd.DataFrame, np.ndarray, int]:
    """The table, its Ks and the suggested K of the `vbsnmf.tl.select_k` record
    ``adata.uns[key]``, as the tool writes them: a `KeyError` naming an entry or column that
    is gone, a `ValueError` naming one it never writes (an edited record failed with pandas'
    bare KeyError, or numpy's "invalid literal for int()", or was drawn with gaps for NaN)."""
    stored = stored_record(adata, key, "table", "K selection", "select_k", "nmf_k_selection")
    where = f"adata.uns[{key!r}]"
    again = "run vbsnmf.tl.select_k again"
    table = stored["table"]
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"{where}['table'] is a {type(table).__name__}, not a table; {again}")
    for name in _K_SELECTION_COLUMNS:
        if name not in table.columns:
            raise KeyError(f"{where}['table'] has no column {name!r}; {again}")
    try:  # an index written as text ("2", "3") reads as its numbers
        ks = np.asarray(table.index, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        ks = np.empty(0, dtype=np.int64)
    if table.empty or ks.size == 0:
        raise ValueError(f"{where}['table'] is not indexed by the Ks tried; {again}")
    values = table[list(_K_SELECTION_COLUMNS)]
    numeric = all(pd.api.types.is_numeric_dtype(dtype) for dtype in values.dtypes)
    if not numeric or not np.isfinite(values.to_numpy(dtype=np.float64)).all():
        raise ValueError(f"{where}['table'] holds values other than finite numbers; {again}")
    suggested = record_entry(stored, "suggested_k", where, "k_selection")
    integer = is_integer(suggested)
    if not integer or suggested not in ks:
        raise ValueError(
            f"{where}['suggested_k'] is {suggested!r}, not one of the Ks of its table; {again}"
        )
    return table, ks, int(suggested)
