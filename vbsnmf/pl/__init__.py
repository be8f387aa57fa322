"""Plots of an NMF fit, drawn by scanpy where scanpy has the plot: `elbo`, `factors`
(`sc.pl.embedding`), `top_genes` (`sc.pl.dotplot`), `umap` (`sc.pl.umap`); `select_k`
(the K grid of `vbsnmf.tl.select_k`).

Every plot's ``show`` and ``save`` work as scanpy's: ``show=None`` follows
``sc.settings.autoshow``; ``save=True`` or a string writes into ``sc.settings.figdir`` by
scanpy's rule (a string is appended to the plot's name, its suffix chooses the format, any
that matplotlib writes, where scanpy knows .svg, .pdf and .png; one holding a path
separator, a path meant, is a `ValueError`; a ``figdir`` that is a file, a
`NotADirectoryError` before any work; ``sc.settings.autosave`` saves each figure once).
A `pathlib.Path` as ``save`` is the output file itself, written atomically (one without a
suffix gets matplotlib's default format and its suffix, ``figure.png``; an existing folder
is a `ValueError`; the figure is then closed, as scanpy closes a figure it saved); any
other ``save`` is a `TypeError`. The axes are returned when the figure is not shown.
"""

from ._plots import elbo, factors, select_k, top_genes
from ._umap import umap

__all__ = ["elbo", "factors", "select_k", "top_genes", "umap"]
