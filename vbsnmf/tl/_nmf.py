"""`nmf`: the scanpy face of vbsnmf, in the manner of ``scanpy.pp.pca``."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._atomic import held_signals
from .._estimator import SOLVERS as VB_SOLVERS
from .._estimator import VBNMF, _check_no_dask_checkpoint
from .._model import (
    HYPER_KEYS,
    SCALE_KEYS,
    GammaPrior,
    HierarchicalPrior,
    kept_if_failed,
    seed_entropy,
)
from .._quoting import quoted_path
from .._svi import EVAL_BLOCK_ROWS
from .._utils import (
    booleans_as_objects,
    check_anndata,
    check_factor_columns,
    check_n_threads,
    drawn_seed_below_2_32,
    elbo_iterations,
    finite_fit_array,
    is_dask_array,
    is_integer,
    library_versions,
    numba_threads,
    utf8_text,
    warn_user,
)
from .._validation import (
    check_flag,
    check_float_dtype,
    check_n_components,
    check_not_empty,
    native_index_arrays,
)
from ..classic._options import SOLVERS as CLASSIC_SOLVERS
from ..io._stored import anndata_x, in_memory_copy
from ..io._stream import open_source
from ._counts import MASKED, check_count_matrix, check_has_counts, select_counts
from ._stored import (
    CELLS_DIGEST_ENTRY,
    COUNTS_SKETCH_ENTRY,
    GENES_DIGEST_ENTRY,
    LOADING_TOTALS_ENTRY,
    VARIATIONAL_KEYS,
    FitKeys,
    cell_factor_arrays,
    check_key_added,
    check_variational_entry,
    check_writable,
    counts_sketch_differs,
    drop_fit,
    fit_identity,
    fit_info,
    gene_holder,
    index_named_as_totals,
    loading_totals,
    variational_params,
)

SOLVERS = VB_SOLVERS + CLASSIC_SOLVERS


class _EmptyCellsWarning(UserWarning):
    """`warn_empty_cells`' warning: `tl.select_k` gives it once, not from each inner fit."""


class _NoActiveFactorWarning(UserWarning):
    """`nmf`'s warning that no factor is active; `tl.select_k` reports ``n_active``."""


def kept_cells_advice(source: str, mask_var, use_raw: bool) -> str:
    """The line that keeps the cells with counts in the genes ``mask_var`` marks, in the
    matrix ``source`` (`select_counts`' label) that a fit of them reads: scanpy's
    ``sc.pp.filter_cells(adata, min_counts=1)`` sums every gene of ``adata.X``, so it kept
    the cells whose counts lie outside the mask."""
    counts = source.removesuffix(MASKED)
    marked = f"adata.var[{mask_var!r}].to_numpy()" if isinstance(mask_var, str) else "mask"
    # .raw's genes are matched by name, as `gene_mask` matches them
    genes = f"adata.raw.var_names.isin(adata.var_names[{marked}])" if use_raw else marked
    kept = f"adata = adata[np.asarray({counts}[:, {genes}].sum(axis=1)).ravel() > 0].copy()"
    if not isinstance(mask_var, str):
        kept += " (mask: mask_var as a boolean array over adata.var_names)"
    return kept


def warn_empty_cells(
    n_without: int,
    n_cells: int,
    masked: bool | str,
    solver: str,
    stacklevel: int = 2,
    fit_params: dict | None = None,
) -> None:
    """Warn that ``n_without`` of the ``n_cells`` have no counts in the fitted genes (as
    `tl.project` does): nothing in the data places such a cell; the prior does under the
    variational ``solver``s, and a classical one leaves it at zero, or at its lower bound
    ``epsilon`` of ``fit_params`` unless thinned (`_fit_classic`). ``masked``: False for a
    fit of every gene, else the line keeping the cells with counts in the masked genes
    (`kept_cells_advice`), which ``sc.pp.filter_cells`` does not drop."""
    if masked:
        kept = f" with {masked}" if isinstance(masked, str) else ""
        drop = (
            f"keep the other cells{kept} (sc.pp.filter_cells counts every gene, not those of "
            "mask_var), or fit more genes (a wider mask_var)"
        )
    else:
        drop = "drop them with sc.pp.filter_cells(adata, min_counts=1)"
    fit_params = fit_params or {}
    # as given: the solver checks it after this warning (a bad value is its error)
    bound = 0.0 if fit_params.get("thin") is True else fit_params.get("epsilon", 0.0)
    if solver in VB_SOLVERS:
        placed = "their factors are the prior's (the same for each)"
    elif isinstance(bound, (int, float, np.integer, np.floating)) and bound > 0:
        # a factor_mask over W holds its masked factors at zero (`_fit_classic`)
        held = fit_params.get("factor_mask") is not None
        placed = f"their factors are the lower bound epsilon={bound:g}" + (
            " (entries factor_mask holds at zero stay zero)" if held else ""
        )
    else:
        placed = "their factors and usages are zero"
    warnings.warn(
        f"{n_without} of the {n_cells} cells have no counts in the fitted genes; {placed}: {drop}",
        _EmptyCellsWarning,
        stacklevel=stacklevel + 1,
    )


def nmf(
    adata,
    n_components: int = 15,
    *,
    layer: str | None = None,
    use_raw: bool = False,
    mask_var: str | np.ndarray | None = None,
    key_added: str | None = None,
    solver: str = "batch",
    random_state=0,
    warm_start: bool = False,
    min_share: float | None = None,
    callback: Callable | None = None,
    copy: bool = False,
    **fit_params,
):
    """Non-negative matrix factorisation of the raw counts of ``adata``.

    Fits ``counts ~ Poisson(cell_factors @ gene_loadings.T)`` by variational Bayes
    (`vbsnmf.VBNMF`, solvers ``"batch"`` and ``"svi"``) or by a classical solver
    (`vbsnmf.classic.NMF`), and stores the results the way ``scanpy.pp.pca`` stores its
    own. Build the neighbour graph on the square roots of the usages, which do not carry
    library size: ``sc.pp.neighbors(adata, use_rep="X_nmf_sqrt_usage")``, the route that
    clustered pbmc_facs best of those measured (``docs/performance.md``).

    Parameters
    ----------
    adata
        Cells x genes. Sparse, dense, backed or dask ``X`` (never densified). A backed
        AnnData (``anndata.read_h5ad(path, backed="r")``) with ``solver="svi"`` (its
        default ``svi_form="cells"``) is streamed from disk a minibatch of cells at a time
        (its ``X``, stored as CSR or dense; memory does not grow with the nonzeros). A dask ``X``
        is fitted where its chunks are (`vbsnmf.fit_dask`), and only the results come
        into memory (the ``.obsm`` arrays below, cells x K). Otherwise ``X`` is read into
        memory.
    n_components
        Number of factors K. With the Gamma prior, K is an upper bound: factors the data
        do not need are switched off (see ``active`` below).
    layer
        Read the counts from ``adata.layers[layer]`` instead of ``adata.X``.
    use_raw
        Read the counts from ``adata.raw``; the gene side of the fit is then stored in
        ``adata.raw.varm`` and ``adata.raw.var`` (every raw gene), and ``.varm`` holds the
        loadings of the genes in ``adata.var_names`` (zero for those not in ``.raw``).
    mask_var
        Fit only these genes, as ``scanpy.pp.pca``'s ``mask_var``: the name of a boolean
        ``.var`` column (e.g. ``"highly_variable"``; one of objects that are all True or
        False, as pandas leaves a column filled with ``.fillna(False)``, is read as one;
        missing values are refused) or a boolean array over
        ``adata.var_names`` (a pandas Series indexed by those names in another order is
        read by name; one naming some of those genes but not each of them once is
        refused, and one naming none of them is read by position). With ``use_raw=True``
        the raw genes with these names are fitted. The AnnData is not copied; genes
        outside the mask get zero loadings. Unlike ``scanpy.pp.pca``, a
        ``highly_variable`` column is not used unless named.
    key_added
        Store the results under ``.obsm['X_' + key_added]``, ``.varm[key_added]``,
        ``.uns[key_added]`` (and the other keys below with ``key_added`` for ``nmf``)
        instead of ``X_nmf``, ``NMF`` and ``nmf``; no ``/``, NUL character or lone
        surrogate, and no leading ``.`` (an ``.h5ad`` cannot store them); none of the keys
        scanpy's tools store their results under (``"pca"``, ``"umap"``, ``"neighbors"``,
        ``"leiden"``...: their next run would overwrite the fit).
    solver
        ``"batch"`` (batch variational Bayes, default), ``"svi"`` (stochastic variational
        inference), or a classical solver: ``"mu"``, ``"hals"``, ``"als"``, ``"pg"``,
        ``"ipg"``, ``"gd"``.
    random_state
        Seed of the starting values (and of SVI's minibatches): a non-negative integer
        (for a classical solver below 2**32, as scikit-learn takes seeds), a
        `numpy.random.Generator` or ``RandomState`` (advanced by the fit, so a second fit
        with it is another fit), or None (fresh entropy; a classical solver's drawn from
        numpy's global ``RandomState``, as scikit-learn reads None). For a Generator, a
        ``RandomState`` and None ``.uns['nmf']['params']`` records the integer the fit drew
        from it, which as ``random_state`` gives the same fit (with a ``checkpoint``, None
        is passed on and not recorded: the same call resumes it). A seed from 2**63 on,
        beyond what ``.h5ad`` stores as a number, is recorded as its decimal digits, which
        ``random_state`` also takes.
    warm_start
        Continue a previous variational fit stored under the same key (same K, the same
        genes, the same prior: ``prior``, ``prior_shape`` and ``prior_rate`` default to the
        stored fit's, and others are refused): its parameters start the fit, its ELBO
        trace is extended. The fit may have been made on more cells or genes: its cell
        parameters follow the AnnData when it is subset (``adata[:500].copy()``), and its
        gene parameters too (``adata[:, genes].copy()``), but the ELBO of other cells' or
        genes' counts is not comparable with the stored trace: a `UserWarning` says so and
        ``elbo_trace``, ``elbo_iter`` and ``n_iter`` start anew at this fit (also for more
        cells than the fit's, such as an ``anndata.concat`` of its cells with some of them
        again; told by the record's ``n_cells`` and ``n_genes``, which a record written
        before they were kept lacks: its trace is extended). As many cells or genes as the
        fit's but not the same ones (one repeated in place of another, ``adata[[0, 0, 2,
        ...]]``, or renamed) are told by their names (the record's ``cells_digest`` and
        ``genes_digest``) and warned of likewise, as are other counts of the fit's cells and
        genes (another layer copied into X, counts edited, the rows of X reordered without
        ``obs_names``: told by the record's ``counts_sketch`` of their totals, but for a
        change below a relative 1e-10 of it, or one that keeps every cell's and gene's
        total); the fit's own cells and genes in another
        order (``adata[permuted_cells, permuted_genes].copy()``) continue the fit, whose
        parameters anndata reorders with them: the result is the permuted warm start of
        the original, to rounding (for ``solver='svi'``, whose minibatches are drawn by
        position, another draw of them). With
        ``resume=True`` it resumes the checkpoint of a warm-started fit that was
        interrupted; the checkpoint of the stored fit itself is refused (its passes would
        be counted twice).
    min_share
        A factor is *active* when its share of the fitted counts (``factor_share``)
        exceeds this. Default: the share a factor reaches when it explains five typical
        cells' counts (5 x the median cell's fitted count) beyond what the prior gives a
        factor explaining nothing. A factor that adds less than a handful of cells' worth
        cannot describe a population of cells. Of fewer than 20 cells it is a quarter of
        the cells' worth (n_cells / 4 x the median), below what either of two groups holds:
        five of ten cells asked all that a group of five holds, and no factor of two equal
        groups of 6 to 10 cells was active. The cells are those the fit gives any count (a
        classical solver gives a cell without counts none: where those were half the cells,
        the median and the threshold were 0). Where the threshold is all the fitted counts
        or more (the fixed prior's floor most of very few counts), which no factor can
        exceed, the factor of the largest share is active instead (the threshold is the
        next share below it): a K = 1 fit's only factor holds every fitted count. Under
        the learned prior a switched-off factor's gene shapes fall to about 0.002 and its
        fitted count to nearly zero (on pbmc_tiny, K = 15: under 1e-4 of the counts), so
        the floor is zero. Under
        ``prior="gamma"`` a switched-off factor sits at the floor ``prior_floor``, about
        ``min(n_cells, n_genes) * prior_shape`` counts; on pbmc_facs (K = 15, 300
        iterations) such factors held 0.07 % of the fitted counts each, the threshold was
        0.15 % and the smallest active factor 2.3 %. Classical solvers have no prior:
        the share of five typical cells (of fewer than 20, a quarter of the cells).
    callback
        ``callback(n_iter, params, elbo_trace)`` after every iteration, e.g. for a progress
        bar; variational solvers only (refused with a classical one).
    copy
        Return a copy of ``adata`` with the results instead of writing into ``adata``.
        Of a backed AnnData (or a view of one), a copy in memory, all its elements its
        own; the backed AnnData's file stays open, unwritten.
    **fit_params
        Passed to the estimator, e.g. ``max_iter``, ``tol``, ``n_threads``,
        ``prior_shape``, ``prior_rate``; for ``"svi"`` also its minibatch and checkpoint
        parameters.

    Returns
    -------
    None, or the AnnData when ``copy=True``. Sets (with the default ``key_added``):

    ``.obsm['X_nmf']`` : ndarray (n_obs, K)
        Posterior mean cell factors ``E[z]``: a cell's row, each factor weighted by its
        total loading (``.varm['NMF'].sum(axis=0)``), sums to about its library size (its
        fitted count); the plain row sum over the mean total loading does not (on
        pbmc_tiny, K = 10, a median 1.9 times the library size: the learned prior's total
        loadings differ by orders of magnitude). A classical ``loss="poisson"`` fit's are
        its proportions times the cell's total, ``diag(c) W`` (``X ~ diag(c) W H``; the
        estimator returns ``W``), so that ``X_nmf @ varm.T`` is the expected counts as for
        every fit.
    ``.obsm['X_nmf_usage']`` : ndarray (n_obs, K)
        Usages: each cell's share of its fitted counts from each factor,
        ``z_il t_l / sum_k z_ik t_k`` with ``t_l`` the factor's total loading (rows sum
        to one): the cell's mix of programmes without its library size, unchanged when a
        factor is rescaled (fastTopics' topic proportions, cNMF's normalised usages).
    ``.obsm['X_nmf_sqrt_usage']`` : ndarray (n_obs, K)
        The usages' square roots: Euclidean distance between two rows is sqrt(2) times
        the Hellinger distance between the cells' usages. The recommended ``use_rep``.
    ``.varm['NMF']`` : ndarray (n_vars, K)
        Posterior mean gene loadings ``E[w]``; zero for genes not fitted (outside
        ``mask_var``, or not in ``.raw`` with ``use_raw=True``).
    ``.obsm['nmf_cell_shape']`` : ndarray (n_obs, K)
        Variational solvers: shape of each cell factor's Gamma posterior.
    ``.varm['nmf_gene_shape']`` : ndarray (n_vars, K)
        Variational solvers: shape of each gene loading's Gamma posterior; zero rows for
        genes not fitted (in ``.raw.varm`` for ``use_raw=True``, over the raw genes).
        ``.obsm['nmf_cell_rate']`` / ``.varm['nmf_gene_rate']`` likewise under the learned
        prior (the default), which gives each cell and gene its own rates, with q of the
        cell and gene scales in ``.obsm['nmf_cell_scale_shape']``,
        ``.obsm['nmf_cell_scale_rate']``, ``.varm['nmf_gene_scale_shape']`` and
        ``.varm['nmf_gene_scale_rate']`` (n, 1).
    ``.var['nmf_total_counts']`` : float (n_vars,)
        Each fitted gene's total count in the data (zero for genes not fitted);
        `top_genes`' ``min_counts`` reads it (in ``.raw.var`` for ``use_raw=True``).
    ``.uns['nmf']`` : dict
        ``params`` (the settings; ``n_threads``: the Numba threads the fit ran on, capped at
        the machine's, on which its rounding depends; as given for a dask X; ``unrecorded``:
        the names of settings it cannot hold, such as ``weights``, ``factor_mask`` and an
        array ``mask_var``, which a replay, ``nmf(adata, **params)``, refuses until they are
        given again), ``obsm_key``,
        ``usage_key``, ``sqrt_usage_key``, ``varm_key`` (the keys above), ``n_cells`` (the
        cells fitted), ``n_genes`` (the genes fitted: those ``mask_var`` selects, or all),
        ``cells_digest`` and ``genes_digest`` (16 hex digits each: a digest of the names of
        the cells and of the genes fitted that ignores their order, by which ``warm_start``
        tells the same cells and genes in another order from others), ``counts_sketch``
        (two numbers: the cells' and the genes' total counts, each weighed by a number drawn
        from its name's hash and summed, by which ``warm_start`` tells other counts of the
        same cells and genes),
        ``n_iter``, ``converged``;
        ``versions``, those of vbsnmf and of the libraries its bits depend on (numpy, scipy,
        numba, llvmlite, anndata; scikit-learn for a classical solver), and run from a git
        checkout of vbsnmf ``vbsnmf_commit``, the commit checked out;
        ``factor_share`` (K,): each factor's share of the fitted counts,
        ``sum_i E[z_il] * sum_j E[w_jl]`` over its sum over factors; ``loading_totals``
        (K,): each factor's ``sum_j E[w_jl]`` over the fitted genes, by which the usages
        are weighed (`project` weighs those of new cells by it, also once genes were
        dropped from ``adata`` after the fit);
        ``active`` (K,) bool: ``factor_share > min_share``; ``min_share``: the
        threshold used;
        variational solvers: ``elbo_trace``, the ELBO in nats of each kept q (one per iteration of
        plain ascent, fewer with SQUAREM: see `vbsnmf.VBNMF.elbo_trace_`), ``elbo_iter``, the pass
        (SVI: epoch) at which each was taken, counted on from the stored fit's by ``warm_start``
        (`vbsnmf.VBNMF.elbo_iter_`), and ``variational``: ``prior`` (``"hierarchical"`` or
        ``"gamma"``); under the learned prior its hyperparameters ``cell_factor_shape`` (K,),
        ``cell_scale_prior_shape``, ``cell_scale_prior_mean`` and the same for ``gene``; under the
        fixed prior ``cell_rate`` (K,), ``gene_rate`` (K,), ``prior_shape``, ``prior_rate``;
        classical solvers: ``loss_trace``, ``loss`` (the final loss) and ``reconstruction_err`` (as
        scikit-learn's ``NMF.reconstruction_err_``).

    A new fit under the same ``key_added`` replaces the earlier one (its entries that the
    new fit does not write are removed), and the record of cells projected into a copy of
    that fit (``.uns['nmf_projection']``, `project`), whose ``.obsm`` arrays it writes over.

    Raises
    ------
    TypeError
        ``adata`` is not an AnnData (a matrix: wrap it as ``anndata.AnnData(X)``); a
        parameter of the wrong type: ``n_components`` (or ``max_iter``) not an integer,
        ``layer`` not a string, ``use_raw``, ``warm_start`` or ``copy`` not True or False,
        ``min_share`` not a number, ``random_state`` none of the kinds above, ``callback``
        not callable, ``key_added`` neither a string nor None.
    ValueError
        The selected matrix is not non-negative integer counts, or holds no nonzero count
        (the message says where the counts probably are, e.g. ``layer="counts"`` or
        ``use_raw=True``); ``n_components``
        is out of range; an unknown ``solver`` or a parameter it does not take; a missing
        layer, ``.raw`` or mask column; a mask that selects no gene, or is not a boolean
        array over the genes; ``key_added`` that an ``.h5ad`` cannot store (an empty
        string, or one the parameter's entry above rules out) or under which the results
        would overwrite another fit's, a projection's or a K selection's, or what another
        tool stored or stores (scanpy's ``.obsm['X_pca']`` for ``key_added="pca"``);
        ``min_share`` outside [0, 1); a negative ``random_state`` (a classical solver's:
        one of 2**32 or more); ``warm_start``
        without a matching stored fit (a ``mask_var`` that selects other genes than it
        fitted, more or fewer), or with ``resume=True`` on the stored fit's own
        checkpoint, or over cells whose usages are not one fit's (an ``anndata.concat`` of
        AnnData fitted apart); ``warm_start`` or ``callback`` with a classical solver; a
        record's ``params`` passed back with its ``unrecorded`` entry (the settings it
        names must be given again).

    Warns
    -----
    UserWarning
        The gene names repeat (``adata.var_names_make_unique()`` mends it): `top_genes`
        would list those genes under one name, and `project` refuses such a reference.
        Cells have no counts in the fitted genes: their factors are the prior's, the same
        for each (``sc.pp.filter_cells(adata, min_counts=1)`` drops them; it sums every gene,
        so with ``mask_var`` the warning gives the line that drops them).
        The AnnData looks genes x cells (nine in ten of the counts' gene names hold a cell
        barcode, a run of 12 or more bases, or of its cell names are Ensembl gene ids, as
        ``scanpy.read_csv`` reads a table of genes as rows): fit ``adata.T`` if so.
    ConvergenceWarning
        The fit stopped at ``max_iter`` before its stopping rule was met.

    Examples
    --------
    >>> import numpy as np
    >>> import vbsnmf
    >>> adata = vbsnmf.datasets.pbmc_tiny()[:200].copy()
    >>> vbsnmf.tl.nmf(adata, n_components=5, max_iter=50, tol=1e-3, random_state=0)
    >>> adata.obsm["X_nmf"].shape, adata.varm["NMF"].shape
    ((200, 5), (507, 5))
    >>> list(adata.obsm)[:3]
    ['X_nmf', 'X_nmf_usage', 'X_nmf_sqrt_usage']
    >>> np.allclose(adata.obsm["X_nmf_usage"].sum(axis=1), 1)
    True
    >>> adata.uns["nmf"]["active"].shape
    (5,)

    Then, as with scanpy: ``sc.pp.neighbors(adata, use_rep="X_nmf_sqrt_usage")``.
    """
    check_anndata(adata)
    if not isinstance(solver, str) or solver not in SOLVERS:  # an array: numpy's "ambiguous"
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    _check_fit_params(solver, fit_params)
    # "custom" compared as a string: an array compared elementwise (numpy's "ambiguous")
    if (
        solver in CLASSIC_SOLVERS
        and isinstance(fit_params.get("init"), str)
        and (fit_params["init"] == "custom")
    ):
        # the estimator's "needs both W and H" named arguments tl.nmf does not take
        raise ValueError(
            "init='custom' starts from the W and H given to vbsnmf.classic.NMF's "
            "fit_transform(X, W=..., H=...), which tl.nmf does not take: fit the counts with "
            "vbsnmf.classic.NMF, or pass another init"
        )
    if callback is not None and solver not in VB_SOLVERS:
        # the classical solvers take none: it was dropped without a word
        raise ValueError(
            f"callback applies to the variational solvers {VB_SOLVERS}, not {solver!r}"
        )
    check_key_added(key_added, adata)
    copy = check_flag(copy, "copy")
    warm_start = check_flag(warm_start, "warm_start")
    if min_share is not None:
        min_share = check_share(min_share)
    if copy:
        adata = in_memory_copy(adata)
    else:
        check_writable(adata)
    keys = FitKeys.of(key_added)
    if index_named_as_totals(adata, key_added, use_raw):
        where = "adata.raw.var" if use_raw else "adata.var"
        raise ValueError(
            f"{where}'s index is named {keys.total_counts!r}, the column of total counts the "
            "fit adds, which an .h5ad cannot hold beside it: rename the index "
            f"({where}.index.name = None) or pass another key_added"
        )
    # SVI's cells form reads a minibatch of cells at a time; its nonzeros forms, as batch
    # VB, fit counts in memory (they refused a file: "for batch VB read it into memory").
    cells_form = solver == "svi" and fit_params.get("svi_form", "cells") == "cells"
    streamed = cells_form and adata.isbacked and layer is None and not use_raw
    if streamed:
        if anndata_x(adata) is None:  # as select_counts refuses an AnnData in memory
            raise ValueError("adata.X is None; pass layer= to name the counts")
        # an empty file as such (as in memory), not as a K out of range of min(shape) = 0
        check_not_empty(adata.shape, f"{quoted_path(adata.filename)} (X)")
        # before the pass over the file that sums the genes, as in memory before the check
        check_n_components(n_components, adata.shape)
        if mask_var is not None:
            raise ValueError(
                "mask_var subsets the genes of counts in memory; a backed AnnData is "
                "streamed from disk: read it into memory (adata.to_memory()) or store the "
                "genes to fit in their own file"
            )
        matrix, var_names, source = adata, adata.var_names, f"{quoted_path(adata.filename)} (X)"
        gene_totals, cell_totals = _streamed_count_totals(adata, source)
        n_without = int(np.count_nonzero(cell_totals == 0))
    else:
        matrix, var_names, source = select_counts(adata, layer=layer, use_raw=use_raw)
    if use_raw and not var_names.is_unique and not var_names.equals(adata.var_names):
        # the loadings go to adata.varm by gene name too (_align_genes)
        raise ValueError(
            "adata.raw's gene names repeat, so its loadings cannot be matched to adata's "
            "genes; make them unique before keeping them as .raw (adata.var_names_make_unique())"
        )
    if not var_names.is_unique:  # scanpy warns when such an AnnData is made; a fit may not
        repeated = var_names[var_names.duplicated()].unique()
        warnings.warn(
            f"{len(repeated)} gene names repeat (e.g. {repeated[0]!r}): tl.top_genes lists "
            "their genes under one name and tl.project refuses this fit as a reference; "
            "call adata.var_names_make_unique() before fitting",
            UserWarning,
            stacklevel=2,
        )
    warn_if_genes_by_cells(adata.obs_names, var_names)
    fitted_genes = gene_mask(adata, mask_var, var_names)
    if fitted_genes is not None:
        matrix = matrix[:, fitted_genes]
        source += MASKED
    on_dask = is_dask_array(matrix)
    kind = "dask" if on_dask else "stream" if streamed else "checked"
    if on_dask:
        from .._dask._cluster import get_client

        # fitted on the Dask cluster (vbsnmf.fit_dask); its cells' results come into memory
        if solver not in VB_SOLVERS:
            raise ValueError(f"a dask array of counts is fitted by {VB_SOLVERS}, not {solver!r}")
        if warm_start and solver == "svi":
            # the distributed SVI starts at random; refused here, where warm_start is known,
            # rather than by the fit as an init the caller never passed
            raise ValueError(
                "warm_start is not supported for solver='svi' on a dask X: continue the fit "
                "with solver='batch' (which takes warm_start on a dask X), or compute X into "
                "memory (adata.X = adata.X.compute()) to continue it by SVI"
            )
        get_client(None)  # before the count check computes every chunk
        _check_no_dask_checkpoint(fit_params.get("checkpoint"))  # as early
        # by the shape alone, as a backed file's above: the count check computed every chunk
        # of a large X before K was refused (an empty X first, not as K out of range of 0)
        check_not_empty(matrix.shape, source)
        _check_masked_n_components(n_components, matrix.shape, fitted_genes)
    if not streamed:  # streamed counts are checked a block at a time as they are read
        fit_dtype = fit_params.get("dtype", np.float64) if solver in VB_SOLVERS else np.float64
        # a dask array is checked chunk by chunk on its workers: the client never loads it
        matrix = check_count_matrix(adata, matrix, source, check_float_dtype(fit_dtype))
        # Before the memory guard, which would otherwise answer a huge K with its advice.
        _check_masked_n_components(n_components, matrix.shape, fitted_genes)
        gene_totals, cell_totals = _count_totals(matrix)
        n_without = int(np.count_nonzero(cell_totals == 0))
    if n_without:
        # as tl.project warns: nothing in the data places such a cell, the prior does
        masked = fitted_genes is not None and kept_cells_advice(source, mask_var, use_raw)
        warn_empty_cells(n_without, adata.n_obs, masked, solver, fit_params=fit_params)

    # the names of the cells and genes fitted, whatever their order, which the record keeps:
    # a warm start of as many cells (genes) but not the same ones (one repeated in place of
    # another, adata[[0, 0, 2, ...]]) joined its ELBO, over other counts, to the stored trace
    fitted_names = var_names if fitted_genes is None else var_names[fitted_genes]
    # and of their counts: other counts of the same cells' and genes' names (another layer
    # copied into X, the rows of X reordered without obs) were joined likewise
    digests = fit_identity(adata.obs_names, cell_totals, fitted_names, gene_totals)

    # The integer a Generator's (a RandomState's, None's) fit draws, drawn here so that .uns
    # records it: unrecorded, a replay of the record (tl.nmf(adata, **params)) fitted the
    # default seed 0 instead.
    # Left as it was if the fit raises, as VBNMF leaves it (an interrupted fit resumes).
    with kept_if_failed(random_state):
        checkpointed = fit_params.get("checkpoint") is not None
        random_state = _drawn_seed(random_state, solver, fresh=not checkpointed)
        if solver in VB_SOLVERS:
            init, previous_trace, previous_iter, previous_passes = None, np.empty(0), np.empty(0), 0
            if warm_start:
                init, previous_trace, previous_iter, previous_passes = _stored_start(
                    adata, keys, use_raw, layer, fitted_genes, n_components, digests, source
                )
                _check_resumed_after(fit_params, previous_trace)
                stored = fit_info(adata, keys.uns)
                fit_params = {**_stored_prior(stored), **fit_params}
                _check_stored_prior(stored, fit_params)
            fitted = _fit_variational(
                matrix, kind, n_components, solver, random_state, init, callback, fit_params
            )
            fitted[2]["elbo_trace"] = np.concatenate([previous_trace, fitted[2]["elbo_trace"]])
            # the continued fit's passes count on from the stored fit's, as n_iter does
            later_iter = fitted[2]["elbo_iter"] + previous_passes
            fitted[2]["elbo_iter"] = np.concatenate([previous_iter, later_iter]).astype(np.int64)
            fitted[2]["n_iter"] += previous_passes
        else:
            if warm_start:
                raise ValueError("warm_start applies to the variational solvers 'batch' and 'svi'")
            if fitted_genes is not None:
                _check_masked_weights(fit_params.get("weights"), fitted_genes, matrix.shape)
                _check_masked_factor_mask(
                    fit_params.get("factor_mask"), fitted_genes, n_components, matrix.shape
                )
            _check_named_weights(fit_params.get("weights"), adata.obs_names, fitted_names)
            fitted = _fit_classic(matrix, n_components, solver, random_state, fit_params)
    cell_factors, gene_loadings, info = fitted

    # Per-cell arrays in .obsm, per-gene in .varm (over the fit's genes), K-sized in .uns;
    # all computed before any is stored, so that a failure leaves the AnnData as it was.
    cell_arrays = cell_factor_arrays(keys, cell_factors, gene_loadings)
    variational = info.pop("variational", None)
    gene_arrays = {keys.loadings: gene_loadings}
    if variational is not None:
        for name in VARIATIONAL_KEYS + SCALE_KEYS:
            if name not in variational:
                continue
            value = variational[name]
            if name in SCALE_KEYS:  # one per cell or gene, stored as a column
                value = value.reshape(-1, 1)
            if np.ndim(value) == 2 and name.startswith("cell"):
                cell_arrays[keys.variational(name)] = value
                del variational[name]
            elif np.ndim(value) == 2:
                gene_arrays[keys.variational(name)] = value
                del variational[name]
    gene_arrays = {
        name: _scatter_rows(values, fitted_genes, len(var_names))
        for name, values in gene_arrays.items()
    }
    total_counts = _scatter_rows(gene_totals[:, None], fitted_genes, len(var_names))[:, 0]
    if use_raw:
        aligned = _align_genes(gene_arrays[keys.loadings], var_names, adata.var_names)

    prior = None
    if variational is not None and "prior_shape" in variational:
        prior = (variational["prior_shape"], variational["prior_rate"])
    share, threshold = _factor_share(cell_factors, gene_loadings, min_share, prior)
    if not (share > threshold).any():
        # the cells the default counts: those the fit gives any count (`_factor_share`)
        n_fitted = int(np.count_nonzero(_fitted_cell_totals(cell_factors, gene_loadings) > 0))
        _warn_no_active(threshold, min_share is None, n_fitted, float(share.max(initial=0)))
    settings = {"n_components": int(n_components), "solver": solver, "use_raw": bool(use_raw)}
    if layer is not None:
        settings["layer"] = layer
    if isinstance(mask_var, str):
        settings["mask_var"] = mask_var
    if min_share is not None:  # a replay without it drew another threshold: other `active`
        settings["min_share"] = float(min_share)
    if is_integer(random_state):
        settings["random_state"] = _storable_int(int(random_state))
    if warm_start:  # a replay without it was a fit from the start, another fit and no word
        settings["warm_start"] = True
    settings.update(_storable(fit_params))
    # the settings .h5ad cannot hold (values other than numbers, strings and booleans: the
    # arrays weights and mask_var, factor_mask's array or dict) are named, so a replay of the
    # record (tl.nmf(adata, **params)) is refused until they are given again:
    # it fitted without them before, another fit and no word
    unrecorded = sorted(
        [name for name, value in fit_params.items() if value is not None and name not in settings]
        + ([] if mask_var is None or isinstance(mask_var, str) else ["mask_var"])
    )
    if unrecorded:
        settings[UNRECORDED_ENTRY] = np.asarray(unrecorded, dtype=object)
    if not on_dask:
        # the threads the fit ran on, on which its rounding depends (None: all the cores):
        # as given, a rerun on a machine of other cores was another fit and the record did
        # not say so (the command line's params.json records the same count)
        settings["n_threads"] = check_n_threads(fit_params.get("n_threads"))

    # The earlier fit out and the new one in, or none of it: a Ctrl-C (or the command line's
    # SIGTERM) that arrives meanwhile is raised once all is stored. Between the two it left
    # the AnnData with the earlier fit dropped and the new one half stored.
    with held_signals():
        drop_fit(adata, keys)  # makes a view its own AnnData first, with its own .raw
        genes = adata.raw if use_raw else adata
        for name, values in cell_arrays.items():
            adata.obsm[name] = values
        for name, values in gene_arrays.items():
            genes.varm[name] = values
        genes.var[keys.total_counts] = total_counts
        if use_raw:
            adata.varm[keys.loadings] = aligned
        adata.uns[keys.uns] = {
            "params": settings,
            "obsm_key": keys.factors,
            "usage_key": keys.usage,
            "sqrt_usage_key": keys.sqrt_usage,
            "varm_key": keys.loadings,
            # the cells fitted: a warm start of other cells (adata[:500].copy()) is told by
            # it, whose ELBO, over other counts, does not continue the stored trace
            "n_cells": int(np.shape(cell_factors)[0]),
            # the genes fitted, which no gene side of this fit outnumbers (`gene_holder`)
            "n_genes": int(np.shape(gene_loadings)[0]),
            **digests,
            "factor_share": share,
            # t_l over every fitted gene: the usages of cells projected onto this fit
            # (tl.project) are weighed by it, also after genes were dropped from adata
            LOADING_TOTALS_ENTRY: loading_totals(gene_loadings),
            "active": share > threshold,
            "min_share": threshold,
            "versions": library_versions(classic=variational is None),
            **info,
            **({} if variational is None else {"variational": variational}),
        }
    return adata if copy else None


# the command line, which has no min_share, says its own (`cli._option_names`)
NO_ACTIVE_ADVICE = (
    "pass a smaller min_share, or include_inactive=True to tl.top_genes and pl.factors"
)


# A cell barcode (a run of 12 or more bases: 10x's 16, Drop-seq's 12, with or without a
# "-1" or a sample's prefix) and an Ensembl gene id, by which a genes x cells AnnData is told
_BARCODE = re.compile(r"[ACGTN]{12,}")
_ENSEMBL_GENE = re.compile(r"ENS[A-Z]*G\d{11}")


def warn_if_genes_by_cells(cells: pd.Index, genes: pd.Index) -> None:
    """A `UserWarning` when the AnnData to fit looks genes x cells: nine in ten of its gene
    names (``genes``, the var_names of the counts) hold a cell barcode, or of its cell
    names (``cells``) are Ensembl gene ids. ``scanpy.read_csv`` of a table of genes as
    rows (as GEO and R write counts) gives such an AnnData, which was fitted with its
    genes as cells without a word. Gene symbols and ids hold no run of 12 bases, so
    cells x genes data never warn; filter the warning out to fit such data on purpose."""
    shown = None
    if len(genes) and _share(genes, _BARCODE.search) >= 0.9:
        shown = f"its var_names look like cell barcodes ({str(genes[0])!r}, ...)"
    elif len(cells) and _share(cells, _ENSEMBL_GENE.match) >= 0.9:
        shown = f"its obs_names look like Ensembl gene ids ({str(cells[0])!r}, ...)"
    if shown is not None:
        warnings.warn(
            f"adata may be genes x cells: {shown}; {GENES_BY_CELLS_ADVICE}",
            UserWarning,
            stacklevel=3,
        )


# `warn_if_genes_by_cells`' advice, which the command line words as its options
GENES_BY_CELLS_ADVICE = (
    "its rows are fitted as cells and its columns as genes: if they are the other way "
    "round (scanpy.read_csv reads a table of genes as rows so), fit its transpose, adata.T"
)


def _share(names: pd.Index, matches, sample: int = 1000) -> float:
    """The share of ``names`` that ``matches`` (a compiled pattern's search or match), of
    at most ``sample`` names spread over them: a million cells' names are not each read."""
    if len(names) > sample:
        names = names[np.linspace(0, len(names) - 1, sample).astype(np.intp)]
    return sum(matches(str(name)) is not None for name in names) / len(names)


def _warn_no_active(threshold: float, default: bool, n_cells: int, largest: float) -> None:
    """Warn that no factor's share exceeds ``threshold``: `top_genes` would list nothing
    and `vbsnmf.pl.factors` draw nothing, without a word. ``largest``: the largest share;
    ``n_cells``: the cells the fit gives any count, whose typical one the default counts."""
    needed = _typical_cells_needed(n_cells)
    handful = "five" if needed == 5 else f"{needed:g}"  # a quarter of fewer than 20 cells
    why = ""
    if default:
        why = f" (the default: {handful} typical cells' counts, of {n_cells} cells with counts)"
    # to three significant digits, or as many more as it takes to show it at or above the
    # largest share: min_share=0.41235 above a share of 0.41234 read "min_share = 0.412",
    # below the share that .uns['nmf']['factor_share'] shows, and 0.999999 read "1", which
    # min_share refuses
    for digits in range(3, 18):
        shown = f"{threshold:.{digits}g}"
        if float(shown) >= largest and (float(shown) < 1 or threshold >= 1):
            break
    warnings.warn(
        f"no factor is active: none holds more than min_share = {shown} of the "
        f"fitted counts{why}; {NO_ACTIVE_ADVICE}",
        _NoActiveFactorWarning,
        stacklevel=3,
    )


def check_share(value) -> float:
    """``min_share``: a number in [0, 1)."""
    if not (is_integer(value) or isinstance(value, (float, np.floating))):
        raise TypeError(f"min_share must be a number, got {type(value).__name__}")
    if not 0 <= value < 1:
        raise ValueError(f"min_share must be in [0, 1), got {value!r}")
    return float(value)


def _check_masked_weights(weights, fitted_genes: np.ndarray, shape: tuple[int, int]) -> None:
    """A `ValueError` for ``weights`` over every gene when ``mask_var`` fits fewer (the
    fit's X has ``shape``): the solver's "X has shape ..." named a matrix the user never
    passed."""
    weights_shape = np.shape(weights) if weights is not None else None
    if weights_shape == (shape[0], fitted_genes.size) and fitted_genes.size != shape[1]:
        raise ValueError(
            f"weights has shape {weights_shape}, over every gene, and mask_var fits "
            f"{shape[1]} of them: pass the weights of the fitted genes, "
            "weights[:, mask] with mask the boolean array of mask_var"
        )


def _check_named_weights(weights, cells: pd.Index, genes: pd.Index) -> None:
    """A DataFrame of ``weights`` against the fitted cells and genes by name
    (`_base.check_entry_columns`): the counts reach the solver without names, and a frame
    in another cell or gene order was matched with them by position."""
    if not hasattr(weights, "columns"):
        return
    from types import SimpleNamespace

    from .._base import _is_transposed, feature_names, names_differ, row_names

    named = SimpleNamespace(columns=genes, index=cells)  # the counts' names, no values
    if _is_transposed(named, weights, "weights"):  # else told to reorder it by the genes
        raise ValueError(
            "weights is genes x cells (its columns are adata.obs_names, its rows the fitted "
            "genes): pass it as cells x genes, weights.T"
        )
    for noun, names, own, order in (
        ("columns", feature_names, "the fitted genes", "weights[fitted_gene_names]"),
        ("rows", row_names, "adata.obs_names", "weights.loc[adata.obs_names]"),
    ):
        detail = names_differ(names(named), names(weights), noun, "weights", own="adata")
        if detail is not None:
            raise ValueError(
                f"weights' {noun[:-1]} names are not those of {own} ({detail}): its entries "
                f"would be matched with the counts by position; pass them in adata's order, "
                f"{order}"
            )


def _check_masked_factor_mask(
    factor_mask, fitted_genes: np.ndarray, n_components: int, shape: tuple[int, int]
) -> None:
    """As `_check_masked_weights`, for a ``factor_mask`` of H over every gene when
    ``mask_var`` fits fewer: the solver's "must be a 0/1 array of shape (K, m)" did not say
    that m counts the fitted genes only."""
    h_mask = factor_mask.get("H") if isinstance(factor_mask, dict) else factor_mask
    if h_mask is None:
        return
    try:
        h_shape = np.shape(h_mask)
    except ValueError:  # ragged: the estimator names it
        return
    if h_shape == (n_components, fitted_genes.size) and fitted_genes.size != shape[1]:
        raise ValueError(
            f"factor_mask's H mask has shape {h_shape}, over every gene, and mask_var fits "
            f"{shape[1]} of them: pass the mask of the fitted genes, h_mask[:, mask] with "
            "mask the boolean array of mask_var"
        )


def _check_masked_n_components(n_components, shape: tuple[int, int], fitted_genes) -> None:
    """`check_n_components` on the counts fitted (cells x the genes of ``fitted_genes``, the
    mask_var, when given): a K only the mask puts out of range is said to be so; "a matrix of
    shape (n, 4)" named a matrix the user never passed."""
    try:
        check_n_components(n_components, shape)
    except ValueError as error:
        if fitted_genes is None or n_components > min(fitted_genes.size, shape[0]):
            raise
        raise ValueError(
            f"{error}: the cells x the {shape[1]} genes mask_var selects (of "
            f"{fitted_genes.size}); select more genes or fit fewer factors"
        ) from None


def gene_mask(adata, mask_var, var_names: pd.Index) -> np.ndarray | None:
    """``mask_var`` as a boolean array over ``var_names`` (the genes of the counts: those of
    ``.raw`` for ``use_raw``, matched by name), or None for all genes."""
    if mask_var is None:
        return None
    if isinstance(mask_var, str):
        if mask_var not in adata.var.columns:
            raise ValueError(
                f"mask_var={mask_var!r} is not a column of adata.var (run "
                "sc.pp.highly_variable_genes first, or pass a boolean array)"
            )
        column = adata.var[mask_var]
        _check_no_missing(column, f"adata.var[{mask_var!r}]")
        mask = booleans_as_objects(column.to_numpy())
        if not pd.api.types.is_bool_dtype(mask):
            # the column's dtype: its values' (object for a categorical) named a dtype the
            # user's column does not have
            raise ValueError(f"adata.var[{mask_var!r}] is not boolean (dtype {column.dtype})")
    else:
        if isinstance(mask_var, pd.Series):
            mask_var = _series_over_genes(mask_var, adata)
            _check_no_missing(mask_var, "mask_var")
        mask = booleans_as_objects(np.asarray(mask_var))
        if mask.dtype != bool or mask.shape != (adata.n_vars,):
            raise ValueError(
                f"mask_var must be a boolean array of length n_vars={adata.n_vars}, got "
                f"dtype {mask.dtype} and shape {mask.shape}"
            )
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("mask_var selects no gene")
    if not var_names.equals(adata.var_names):  # .raw: the raw genes of the masked names
        marked = int(np.count_nonzero(mask))
        mask = var_names.isin(adata.var_names[mask])
        if not mask.any():  # "selects no gene" said it marked none
            raise ValueError(
                f"mask_var marks {marked} genes of adata.var_names, none of which is in "
                "adata.raw, whose counts use_raw=True fits; mark genes that adata.raw holds"
            )
    return mask


def _check_no_missing(values: pd.Series, name: str) -> None:
    """Refuse a mask with missing values, which made the array object: "not boolean" did
    not say why. Pandas' nullable "boolean" NA, and the NaN of genes that
    ``anndata.concat(join="outer", merge="first")`` added from an AnnData without the
    column, beside the True and False of the others (an object column)."""
    missing = values.isna().to_numpy()
    if not missing.any():
        return
    given = values.to_numpy()[~missing]
    if pd.api.types.is_bool_dtype(values.dtype) or (
        values.dtype == object and booleans_as_objects(given).dtype == bool
    ):
        joined = (
            " (genes that anndata.concat(join='outer') added from an AnnData without it?)"
            if values.dtype == object and name.startswith("adata.var")
            else ""
        )
        raise ValueError(
            f"{name} has {int(missing.sum())} missing values{joined}; fill them (e.g. "
            ".fillna(False)) to say which genes to use"
        )


def _series_over_genes(mask_var: pd.Series, adata) -> pd.Series:
    """A ``mask_var`` Series in the order of ``adata.var_names``: one indexed by those names
    in another order is read by name, one naming none of them (a RangeIndex, other gene
    ids) by position; one naming some genes of adata but not as ``adata.var_names`` (a mask
    made on another AnnData) is refused: read by position, it marked other genes than it
    names."""
    index = mask_var.index
    if _names_in_other_order(index, adata):
        return mask_var.reindex(adata.var_names)
    if index.equals(adata.var_names) or not index.isin(adata.var_names).any():
        return mask_var
    lacking = int(np.count_nonzero(~index.isin(adata.var_names)))
    missing = int(np.count_nonzero(~adata.var_names.isin(index)))
    stated = "mask_var is a Series whose index names genes of adata but is not adata.var_names"
    if not (lacking or missing):  # by name it cannot be read either
        raise ValueError(f"{stated} (its names or adata's repeat): pass a boolean array")
    raise ValueError(
        f"{stated} ({lacking} of its names are not genes of adata, {missing} genes of adata "
        "are not in it): pass mask_var.reindex(adata.var_names, fill_value=False) to read it "
        "by gene name, or a boolean array"
    )


def _names_in_other_order(index: pd.Index, adata) -> bool:
    """Whether ``index`` holds ``adata.var_names`` (each once) in another order."""
    names = adata.var_names
    if index.equals(names) or not (index.is_unique and names.is_unique):
        return False
    return len(index) == len(names) and bool(names.isin(index).all())


def _stored_start(
    adata,
    keys: FitKeys,
    use_raw: bool,
    layer: str | None,
    fitted_genes,
    n_components: int,
    digests: dict,
    source: str,
) -> tuple[dict, np.ndarray, np.ndarray, int]:
    """The stored fit's parameters as a start for the genes fitted now, its trace, the
    iteration of each value (`elbo_iterations`) and its passes; ``digests``: those of the
    names of the cells and genes fitted now and the sketch of their counts (`fit_identity`),
    against the record's; ``source``: where the counts are, for the
    warning."""
    if keys.uns not in adata.uns:
        raise ValueError(f"warm_start: adata.uns has no fit {keys.uns!r}; fit without first")
    info = fit_info(adata, keys.uns)
    stored_k = int(info["params"]["n_components"])
    if stored_k != n_components:
        raise ValueError(
            f"warm_start: the stored fit has K={stored_k}, not {n_components}; fit without "
            "warm_start to change K"
        )
    # adata.raw.to_adata() of a fit of .raw holds the raw counts as X, the fit's gene side
    # in its own .varm (`gene_holder`): continued from X, as use_raw=True cannot (no .raw)
    raw_as_adata = not use_raw and adata.raw is None and gene_holder(adata, keys.uns) is adata
    if bool(info["params"].get("use_raw")) != use_raw and not raw_as_adata:
        raise ValueError(f"warm_start: the stored fit was made with use_raw={not use_raw}")
    # another layer is other counts: continuing would join two data sets' ELBO traces
    if info["params"].get("layer") != layer:
        raise ValueError(
            f"warm_start: the stored fit was made with layer={info['params'].get('layer')!r}, "
            f"not {layer!r}; fit without warm_start to change the counts"
        )
    try:
        check_variational_entry(info, f"adata.uns[{keys.uns!r}]")
    except KeyError as missing:
        raise ValueError(f"warm_start: {missing.args[0]}") from None
    if "variational" not in info:
        # a classical fit: `variational_params`' "without variational parameters" did not say
        # that warm_start asked for them, nor how to go on
        raise ValueError(
            f"warm_start: the stored fit {keys.uns!r} was made by the classical solver "
            f"{info['params'].get('solver')!r}, which leaves no variational parameters to "
            "continue from; fit without warm_start"
        )
    try:
        stored = variational_params(adata, keys.uns)
    except KeyError as missing:
        raise ValueError(f"warm_start: {missing.args[0]}") from None
    init = {key: stored[key] for key in VARIATIONAL_KEYS + SCALE_KEYS + HYPER_KEYS if key in stored}
    # Cells the stored fit never saw (NaN rows that anndata.concat(join="outer") adds) are
    # named here, not refused by the estimator as an init the caller never passed.
    cell_entries = [keys.variational(name) for name in init if name.startswith("cell")]
    for entry in cell_entries:
        if entry in adata.obsm and not is_dask_array(adata.obsm[entry]):
            try:
                values = finite_fit_array(keys.uns, "obsm", adata.obsm, entry)
            except ValueError as damaged:
                raise ValueError(f"warm_start: {damaged}") from None
            n_columns = 1 if entry.removeprefix(f"{keys.uns}_") in SCALE_KEYS else n_components
            _check_stored_cells(values, entry, keys.uns, n_columns)
    per_gene = [key for key in ("gene_shape", "gene_rate") if np.ndim(init[key]) == 2]
    per_gene += [key for key in ("gene_scale_shape", "gene_scale_rate") if key in init]
    side = "varm" if gene_holder(adata, keys.uns) is adata else "raw.varm"
    for name in ("gene_shape", "gene_rate"):
        # cut to other factors by hand: the estimator's "init gene_rate has shape (n, 1)"
        # named an init never passed
        if name in per_gene:
            where = f"warm_start: adata.{side}[{keys.variational(name)!r}]"
            check_factor_columns(where, np.asarray(init[name]), n_components)
    dropped = _genes_dropped_since(info, np.asarray(init["gene_shape"]))
    if fitted_genes is not None:
        _check_mask_keeps_stored_genes(info, keys.uns, np.asarray(init["gene_shape"]), fitted_genes)
        init.update({key: np.asarray(init[key])[fitted_genes] for key in per_gene})
    gene_shape = np.asarray(init["gene_shape"])
    not_fitted = int(np.count_nonzero(~(gene_shape > 0).any(axis=1)))
    if not_fitted:
        raise ValueError(
            f"warm_start: {not_fitted} of the genes to fit were not fitted before "
            "(another mask_var?); fit without warm_start"
        )
    for name in per_gene:  # gene_shape first (always per gene)
        _check_stored_genes(np.asarray(init[name]), f"{side}[{keys.variational(name)!r}]", keys.uns)
    if not is_dask_array(init["cell_shape"]):
        init = {name: np.asarray(value) for name, value in init.items()}
    changed = _counts_changed_since(info, keys.uns, int(adata.n_obs), dropped, digests, source)
    if changed is not None:
        # the ELBO of other cells' or genes' counts is not comparable with the stored one:
        # joined, the trace (and pl.elbo) showed one fit whose ELBO jumped at the warm start
        warn_user(
            f"warm_start: {changed}: the fit starts from the parameters they hold, but its "
            "ELBO, over other counts, is not comparable with the stored trace, so "
            f".uns[{keys.uns!r}]['elbo_trace'], 'elbo_iter' and 'n_iter' start anew at this fit",
            UserWarning,
        )
        return init, np.empty(0), np.empty(0, dtype=np.int64), 0
    trace = np.asarray(info.get("elbo_trace", []), dtype=np.float64)
    return init, trace, elbo_iterations(info), int(info["n_iter"])


def _counts_changed_since(
    info: dict, key: str, n_cells: int, dropped_genes: int, digests: dict, source: str
) -> str | None:
    """What a warm start's counts lost or gained since the stored fit ``key`` (its record's
    ``n_cells`` and ``n_genes``), worded for its warning, or None when they are the fit's
    cells and genes: ``n_cells``, the cells of adata now; ``dropped_genes``, the fitted
    genes it no longer holds (`_genes_dropped_since`). More cells than fitted are those of
    an ``anndata.concat`` (of the fit with its own cells, whose parameters it holds; cells
    it never saw are refused for their NaN rows). A record without ``n_cells`` (written
    before it was kept) tells nothing of the cells. As many cells and genes as fitted are
    told from the fit's own (in any order) by the digests of their names (``digests``,
    against the record's `CELLS_DIGEST_ENTRY` and `GENES_DIGEST_ENTRY`, which a record
    written before they were kept lacks): one repeated in place of another
    (``adata[[0, 0, 2, ...]]``) holds other counts. The fit's own cells and genes are told
    holding other counts (``source``, where they are, replaced or edited since) by the sketch
    of their totals (`fit_identity`, against the record's `COUNTS_SKETCH_ENTRY`, which a
    record written before it was kept lacks)."""
    fitted_cells = info.get("n_cells")
    cells_changed = fitted_cells is not None and n_cells != int(fitted_cells)
    fit = f"the stored fit {key!r} fitted"
    if not (cells_changed or dropped_genes):
        counted_cells = None if fitted_cells is None else n_cells
        renamed = _names_changed_since(info, fit, counted_cells, digests)
        if renamed is not None or fitted_cells is None:
            return renamed
        if counts_sketch_differs(info.get(COUNTS_SKETCH_ENTRY), digests[COUNTS_SKETCH_ENTRY]):
            return (
                f"{source} holds other counts than {fit} in cells and genes of the same "
                "names: their total counts differ (the counts were replaced, edited or "
                "their rows reordered without obs_names since)"
            )
        return None
    n_genes = int(info["n_genes"]) if dropped_genes else 0
    genes = f"{n_genes - dropped_genes} of the {n_genes} genes"
    if not cells_changed:
        return f"adata holds {genes} {fit} (genes were dropped since)"
    fitted_cells = int(fitted_cells)
    if n_cells < fitted_cells:
        held = f"{n_cells} of the {fitted_cells} cells"
        if not dropped_genes:
            return f"adata holds {held} {fit} (cells were dropped since)"
        return f"adata holds {held} and {genes} {fit} (cells and genes were dropped since)"
    # more cells: an anndata.concat of the fit with (some of) its own cells
    held = f"{n_cells} cells, {n_cells - fitted_cells} more than the {fitted_cells} {fit}"
    if not dropped_genes:
        return f"adata holds {held} (cells were added since, as anndata.concat adds them)"
    genes = genes.replace(" of the ", " of its ")
    return f"adata holds {held}, and {genes} (cells were added and genes dropped since)"


def _names_changed_since(
    info: dict, fit: str, n_cells: int | None, digests: dict[str, str]
) -> str | None:
    """`_counts_changed_since`'s words for as many cells and genes as the stored fit
    (``fit``: it, named) fitted whose names are not all those it fitted (their digests
    differ from the record's), or None. ``n_cells``: the cells of adata, None when the
    record keeps no ``n_cells``."""
    what = []
    for entry, axis, side, count in (
        (CELLS_DIGEST_ENTRY, "cells", "obs_names", n_cells),
        (GENES_DIGEST_ENTRY, "genes", "var_names", info.get("n_genes")),
    ):
        recorded = info.get(entry)
        # read with the count beside it (n_cells, n_genes), as the fit writes them: a
        # record without the count tells nothing of that side
        if recorded is not None and count is not None and recorded != digests[entry]:
            what.append((axis, side, count))
    if not what:
        return None
    held = " and ".join(f"{count} {axis}" for axis, _, count in what)
    sides = " and ".join(side for _, side, _ in what)
    axes = " and ".join(axis for axis, _, _ in what)
    return (
        f"adata holds {held}, as many as {fit}, but not the same ones: their {sides} "
        f"differ from those fitted ({axes} were swapped, repeated or renamed since; the same "
        "ones in another order continue the fit)"
    )


def _genes_dropped_since(info: dict, gene_shape: np.ndarray) -> int:
    """How many of the genes the stored fit fitted (its record's ``n_genes``) the AnnData no
    longer holds: ``gene_shape``, the stored shapes over its genes now, is zero in the rows
    of genes the fit did not fit (outside its ``mask_var``). A record without ``n_genes``
    (written before it was kept) tells nothing: 0. `gene_holder` refused a damaged one."""
    n_genes = info.get("n_genes")
    if n_genes is None:
        return 0
    with np.errstate(invalid="ignore"):  # NaN rows of an outer join are no fitted genes
        held = int(np.count_nonzero((gene_shape > 0).any(axis=1)))
    return max(int(n_genes) - held, 0)


def _check_mask_keeps_stored_genes(
    info: dict, key: str, gene_shape: np.ndarray, fitted_genes: np.ndarray
) -> None:
    """A `ValueError` when ``warm_start``'s ``mask_var`` (``fitted_genes``) leaves out genes
    the stored fit ``key`` fitted (the rows of its ``gene_shape`` that are not zero): the
    continued fit's ELBO, over fewer genes' counts, was joined to the stored trace without a
    word, as another layer's would be (a mask with genes the stored fit did not fit is
    refused after this)."""
    stored_fitted = (gene_shape > 0).any(axis=1)
    left_out = int(np.count_nonzero(stored_fitted & ~fitted_genes))
    if not left_out:
        return
    stored_mask = info["params"].get("mask_var")
    made = f" (made with mask_var={stored_mask!r})" if isinstance(stored_mask, str) else ""
    raise ValueError(
        f"warm_start: mask_var leaves out {left_out} of the {int(stored_fitted.sum())} genes "
        f"the stored fit {key!r} fitted{made}, whose ELBO trace would be joined to one over "
        "other counts; pass the stored fit's mask_var, or fit without warm_start"
    )


def _check_stored_cells(values: np.ndarray, entry: str, key: str, n_columns: int) -> None:
    """A `ValueError` naming ``adata.obsm[entry]``, a stored Gamma parameter of the fit
    ``key`` that ``warm_start`` starts from, when it is not what a fit writes: ``n_columns``
    columns (K, or one for a scale) of positive numbers. ``anndata.concat(..., join="outer",
    fill_value=0)`` pads the rows of the cells it joins with zeros, and the estimator's
    "init cell_shape must be positive and finite" named an ``init`` never passed."""
    if values.ndim != 2 or values.shape[1] != n_columns:
        raise ValueError(
            f"warm_start: adata.obsm[{entry!r}] of the fit {key!r} has shape {values.shape}, "
            f"not (n_obs, {n_columns}), which vbsnmf.tl.nmf never writes; fit again without "
            "warm_start"
        )
    not_positive = ~(values > 0).all(axis=1)
    if not_positive.any():
        raise ValueError(
            f"warm_start: adata.obsm[{entry!r}] of the fit {key!r} holds zero or negative "
            f"values in {np.count_nonzero(not_positive)} of its {len(values)} rows, which "
            "vbsnmf.tl.nmf never writes: cells the fit did not see (anndata.concat(..., "
            "join='outer', fill_value=0) pads their rows with zeros)? Keep the fitted cells, "
            "project new cells with vbsnmf.tl.project, or fit again without warm_start"
        )


def _check_stored_genes(values: np.ndarray, entry: str, key: str) -> None:
    """A `ValueError` naming ``adata.<entry>``, a stored per-gene Gamma parameter of the fit
    ``key`` (its rows of the genes fitted now) that ``warm_start`` starts from, when it holds
    a value that is not finite and positive, which a fit never writes: the estimator's "init
    gene_shape must be positive and finite" named an ``init`` never passed, as
    `_check_stored_cells` says of the cells."""
    bad = ~(np.isfinite(values) & (values > 0)).all(axis=tuple(range(1, values.ndim)))
    if bad.any():
        raise ValueError(
            f"warm_start: adata.{entry} of the fit {key!r} holds values that are not finite "
            f"and positive in {np.count_nonzero(bad)} of the {len(values)} genes to fit, which "
            "vbsnmf.tl.nmf never writes; fit again without warm_start"
        )


def _check_resumed_after(fit_params: dict, stored_trace: np.ndarray) -> None:
    """``warm_start`` with ``resume=True`` continues the checkpoint of a fit that began at
    the stored fit (and was interrupted), whose trace the stored one's precedes. A
    checkpoint of the stored fit itself (the checkpoint of the call that stored it, its
    trace a part of the stored trace) holds the stored passes already: they were counted
    twice (the trace repeated, ``n_iter`` and ``elbo_iter`` beyond the passes run), so it
    is refused. A checkpoint that cannot be read is left to the fit to report."""
    from .._checkpoint import CheckpointError, read_checkpoint_trace

    checkpoint = fit_params.get("checkpoint")
    if not fit_params.get("resume") or checkpoint is None:
        return
    try:
        trace = read_checkpoint_trace(checkpoint)
    except (CheckpointError, OSError, TypeError):
        return
    if trace is None or trace.ndim != 1 or not 0 < trace.size <= stored_trace.size:
        return
    # a part of the stored trace, bit for bit (an accelerated fit's last save can be the
    # start of the cycle its max_iter cut short, some values before the stored end)
    starts = np.flatnonzero(stored_trace[: stored_trace.size - trace.size + 1] == trace[0])
    if any(np.array_equal(stored_trace[i : i + trace.size], trace) for i in starts):
        raise ValueError(
            f"warm_start with resume=True: checkpoint {quoted_path(checkpoint)} holds the stored "
            "fit itself (its ELBO trace is a part of the stored fit's), whose passes the warm "
            "start would count twice; continue the stored fit with warm_start=True and without "
            "resume (the checkpoint is overwritten), or resume the checkpoint without warm_start"
        )


def _stored_prior(info: dict) -> dict:
    """The prior settings of a stored fit, which a warm start keeps unless given anew."""
    settings = {"prior": info["variational"].get("prior", "gamma")}
    settings.update(
        {key: info["params"][key] for key in ("prior_shape", "prior_rate") if key in info["params"]}
    )
    return settings


def _check_stored_prior(info: dict, fit_params: dict) -> None:
    """A warm start continues the stored fit's model: another prior, or the same with
    another ``prior_shape`` or ``prior_rate``, is refused (the continued ELBO trace would
    join the traces of two models, and fall where they meet)."""
    stored = info["variational"].get("prior", "gamma")
    if fit_params["prior"] != stored:
        raise ValueError(
            f"warm_start: the stored fit used prior={stored!r}, not "
            f"{fit_params['prior']!r}; fit without warm_start to change the prior"
        )
    names = ("prior", "prior_shape", "prior_rate")
    wanted = VBNMF(**{name: fit_params.get(name) for name in names})._prior()
    if stored == "gamma":
        variational = info["variational"]
        fitted = GammaPrior(float(variational["prior_shape"]), float(variational["prior_rate"]))
    else:  # the learned prior: its factor shapes fixed by prior_shape, or learned
        shape = info["params"].get("prior_shape")
        fitted = HierarchicalPrior(factor_shape=None if shape is None else float(shape))
    if wanted != fitted:
        raise ValueError(
            f"warm_start: the stored fit's prior is {_described(fitted)}, not "
            f"{_described(wanted)}; fit without warm_start to change the prior"
        )


def _described(prior) -> str:
    """A prior as `VBNMF`'s parameters give it."""
    if isinstance(prior, GammaPrior):
        return f"Gamma(prior_shape={prior.shape:g}, prior_rate={prior.rate:g})"
    if prior.factor_shape is None:
        return "the learned prior with learned factor shapes (no prior_shape)"
    return f"the learned prior with prior_shape={prior.factor_shape:g}"


def _drawn_seed(random_state, solver: str, *, fresh: bool = True):
    """``random_state`` as the integer seed the fit takes from it, which as
    ``random_state`` gives the same fit: for a `numpy.random.Generator` or ``RandomState``
    the integer `VBNMF` (`vbsnmf.classic.NMF`, for a Generator) would draw from it, and for
    None fresh entropy (`VBNMF`'s; a classical solver's from numpy's global
    ``RandomState``, as scikit-learn reads None), unless ``fresh`` is False (a checkpointed
    fit, resumed by None again: the entropy it draws is not the checkpoint's). Unrecorded,
    a replay of the record (``tl.nmf(adata, **params)``) fitted the default seed 0. A
    classical solver draws a ``RandomState`` many times (scikit-learn's manner): one seed
    drawn from it stands for them. The decimal digits of a seed from 2**63 on, as ``.uns``
    records one (`_storable_int`), are that seed: the record replays (numpy's own advice
    for a fresh seed, ``secrets.randbits(128)``, and fresh entropy give such seeds)."""
    if isinstance(random_state, str) and random_state.isascii() and random_state.isdecimal():
        if int(random_state) >= 2**63:  # what `_storable_int` writes; "3" stays refused
            return int(random_state)
    if solver in VB_SOLVERS:
        if isinstance(random_state, (np.random.Generator, np.random.RandomState)):
            return seed_entropy(random_state)
        if random_state is None and fresh:
            return seed_entropy(None)
        return random_state
    if random_state is None:  # numpy's global RandomState, as scikit-learn reads None
        from sklearn.utils import check_random_state  # only for a classical solver

        random_state = check_random_state(None)
    if isinstance(random_state, (np.random.Generator, np.random.RandomState)):
        # below 2**32, as scikit-learn takes seeds (`classic._nmf._check_seed`)
        return drawn_seed_below_2_32(random_state)
    return random_state


def _fit_variational(matrix, kind, n_components, solver, random_state, init, callback, params):
    """`VBNMF` on counts already checked (``kind="checked"``), a dask array (``"dask"``,
    checked chunk by chunk) or a backed AnnData (``"stream"``, checked block by block)."""
    model = VBNMF(n_components, solver=solver, random_state=random_state, **params)
    model._fit(kind, matrix, init, callback)
    cell_factors = model.cell_shape_ / model.cell_rate_
    info = {
        "elbo_trace": np.asarray(model.elbo_trace_, np.float64),
        "elbo_iter": np.asarray(model.elbo_iter_, np.int64),
        "n_iter": int(model.n_iter_),
        "converged": bool(model.converged_),
        "variational": _variational(model),
    }
    return cell_factors, model.components_.T, info


def _variational(model: VBNMF) -> dict:
    """The fitted q and prior that `project` and ``warm_start`` need, as ``.h5ad`` stores
    them: the Gamma parameters, the prior, and under the learned prior the scales' q and
    the hyperparameters."""
    stored = {
        "cell_shape": model.cell_shape_,
        "cell_rate": model.cell_rate_,
        "gene_shape": model.gene_shape_,
        "gene_rate": model.gene_rate_,
        "prior": model.prior,
    }
    prior = model._prior()
    if isinstance(prior, GammaPrior):
        stored.update(prior_shape=float(prior.shape), prior_rate=float(prior.rate))
    if model.hyperparameters_ is not None:
        stored.update({name: getattr(model, name + "_") for name in SCALE_KEYS})
        stored.update(model.hyperparameters_)
    return stored


def _fit_classic(matrix, n_components, solver, random_state, fit_params):
    from ..classic import NMF  # scikit-learn: loaded only for a classical solver
    from ..classic._mu import converged

    options = dict(fit_params)
    n_threads = options.pop("n_threads", None)
    model = NMF(n_components, solver=solver, random_state=random_state, **options)
    with numba_threads(n_threads):
        cell_factors = model.fit_transform(matrix)
    n_iter = int(model.n_iter_)
    info = {
        "n_iter": n_iter,
        # the losses the stopping rule saw (the trace's last is the final loss): a fit may
        # meet it at its last allowed iteration, n_iter == max_iter
        "converged": converged(list(model.loss_trace_[:n_iter]), model.tol),
        "loss_trace": np.asarray(model.loss_trace_, dtype=np.float64),
        "loss": float(model.loss_),
        "reconstruction_err": float(model.reconstruction_err_),
    }
    # stored in float64 whatever the counts' dtype: a classical fit has no dtype setting (the
    # estimator returns float32 factors for float32 counts, as scikit-learn's NMF)
    cell_factors = np.asarray(cell_factors, dtype=np.float64)
    if model._check_params().name == "poisson":
        # X ~ diag(c) W H with W the cells' proportions: stored in counts, c W, as every
        # other fit's, so that X_nmf @ varm.T is the expected counts. As proportions a
        # cell of 10 counts weighed as much as one of 10,000 in factor_share, `active` and
        # tl.top_genes' specificity.
        cell_factors *= _poisson_totals(matrix, options.get("weights"))[:, None]
    # A cell without counts fits best at zero factors, where "mu", "hals" and "als" leave
    # it; "ipg" and "gd" stop near it (1e-21), and its usages were an arbitrary mix. With a
    # lower bound epsilon the best is the bound (zero once thinned), not below it.
    # Entries a factor_mask over W holds at zero stay there: the bound is of the others.
    floor = 0.0 if model.thin else float(model.epsilon)
    empty = np.asarray(matrix.sum(axis=1)).ravel() == 0
    w_mask, _ = model._factor_masks(*matrix.shape, model.n_components_)
    cell_factors[empty] = floor if w_mask is None else floor * w_mask[empty]
    return cell_factors, np.asarray(model.components_, dtype=np.float64).T, info


def _poisson_totals(matrix, weights) -> np.ndarray:
    """The per-cell totals ``c`` of a ``loss="poisson"`` fit as the fit takes them
    (`classic.NMF`): added in float64 (scipy adds float32 counts in float32), over the
    entries of weight > 0 when ``weights`` are given."""
    from ..classic._data import ClassicData

    return ClassicData.build(matrix, weights).row_totals


def _count_totals(matrix) -> tuple[np.ndarray, np.ndarray]:
    """Each gene's total count and each cell's (as `_streamed_count_totals` gives them);
    a dask array is summed chunk by chunk on its
    workers (its chunks may be sparse, whose ``sum`` dask's own reduction cannot call), both
    sums in one computation, which reads each chunk once. The gene totals are added in
    float64 (`_gene_sums`), the cell totals too (`fit_identity` weighs them)."""
    if is_dask_array(matrix):
        import dask

        from .._dask._cluster import futures_holder

        # module functions, not lambdas: pickle refuses a lambda, and distributed's
        # fallback, cloudpickle, then met an h5py dataset in the graph (from_array of an
        # open file), which only distributed's own serialiser sends
        gene_parts = matrix.map_blocks(
            _gene_sums_row,
            dtype=np.float64,
            chunks=((1,) * matrix.numblocks[0], matrix.chunks[1]),
        )
        cell_parts = matrix.map_blocks(
            _cell_sums_column,
            dtype=np.float64,
            chunks=(matrix.chunks[0], (1,) * matrix.numblocks[1]),
        )
        gene_totals, cell_totals = dask.compute(  # by the client of persisted chunks
            gene_parts.sum(axis=0), cell_parts.sum(axis=1), scheduler=futures_holder(matrix)
        )
    else:
        gene_totals = _gene_sums(matrix)
        cell_totals = matrix.sum(axis=1, dtype=np.float64)
    gene_totals = np.asarray(gene_totals, dtype=np.float64).ravel()
    return gene_totals, np.asarray(cell_totals, dtype=np.float64).ravel()


def _gene_sums_row(block) -> np.ndarray:
    """`_gene_sums` of a dask chunk as a 1 x genes block (`_count_totals`' task)."""
    return _gene_sums(block).reshape(1, -1)


def _cell_sums_column(block) -> np.ndarray:
    """A dask chunk's cell totals as a cells x 1 block (`_count_totals`' task)."""
    block = _signed_chunk(block)
    return np.asarray(block.sum(axis=1, dtype=np.float64)).reshape(-1, 1)


def _signed_chunk(block):
    """A dask chunk as scipy's routines read it: a sparse one with unsigned index arrays
    (BPCells writes ``indptr`` as uint64) with signed copies of them (`native_index_arrays`;
    its ``sum`` and conversion to CSR refused them, "unsupported data types in input" or
    numpy's "Cannot cast array data from dtype('uint64')"), any other as it is. The chunks
    were checked (`check_count_matrix`) before the sums read them."""
    if sp.issparse(block) and block.format in ("csr", "csc", "coo", "bsr"):
        return native_index_arrays(block)
    return block


def _gene_sums(block) -> np.ndarray:
    """The column sums of ``block`` (cells x genes), added in float64: in the block's own
    dtype float16 counts rounded totals above 2048 and float32 counts, anndata's usual X,
    above 2**24. A scipy sparse block is summed by `numpy.bincount`: its ``sum`` adds in the
    block's dtype even when asked for float64."""
    if sp.issparse(block):
        block = _signed_chunk(block)
        stored = block if block.format == "csr" else sp.csr_matrix(block)
        return np.bincount(stored.indices, weights=stored.data, minlength=block.shape[1])
    return np.asarray(block.sum(axis=0, dtype=np.float64)).ravel()


def _streamed_count_totals(adata, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Each gene's total count of a backed AnnData's X, read a block of cells at a time,
    and each cell's; the counts are checked as `check_count_matrix` checks them in
    memory."""
    totals = np.zeros(adata.n_vars)
    cell_totals = []
    for start, block in open_source(adata).iter_blocks(EVAL_BLOCK_ROWS):
        name = f"{source} (cells {start}..{start + block.shape[0] - 1})"
        block = check_count_matrix(adata, block, name, require_counts=False, first_row=start)
        totals += np.bincount(block.indices, block.data, minlength=adata.n_vars)
        cell_totals.append(np.asarray(block.sum(axis=1, dtype=np.float64)).ravel())
    check_has_counts(adata, float(totals.sum()), source)
    return totals, np.concatenate(cell_totals) if cell_totals else np.zeros(0)


def _scatter_rows(values, fitted_genes, n_genes: int):
    """``values`` (fitted genes x K) as rows of all ``n_genes``, zero where not fitted."""
    if fitted_genes is None:
        return values
    values = np.asarray(values)
    full = np.zeros((n_genes, values.shape[1]), dtype=values.dtype)
    full[fitted_genes] = values
    return full


def _typical_cells_needed(n_cells: int) -> float:
    """How many typical cells' fitted counts the default ``min_share`` asks of a factor:
    five, or a quarter of the cells where that is fewer (under 20 cells). Five of up to ten
    cells asked more than any group of two could hold (none active at 6 to 10 cells of
    two equal groups); half of them asked exactly what an equal group holds (none at 10);
    a quarter stays below the share of either of two groups, ``floor(n / 2) / n >= 1 / 3``
    from three cells up, and from 20 cells up it is five (the same threshold as before)."""
    return min(5, n_cells / 4)


def _fitted_cell_totals(cell_factors, gene_loadings) -> np.ndarray:
    """Each cell's fitted count, ``cell_factors @ gene_loadings.sum(axis=0)`` (the latter
    added in float64): of these the default ``min_share`` counts the positive ones."""
    return cell_factors @ np.asarray(gene_loadings, dtype=np.float64).sum(axis=0)


def _factor_share(cell_factors, gene_loadings, min_share, prior) -> tuple[np.ndarray, float]:
    """Each factor's share of the fitted counts and the ``active`` threshold (see `nmf`);
    ``prior`` is ``(shape, rate)`` of the fixed Gamma prior, or None (the learned prior,
    whose switched-off factors fit nearly nothing, and the classical solvers)."""
    gene_sums = np.asarray(gene_loadings, dtype=np.float64).sum(axis=0)
    cell_totals = _fitted_cell_totals(cell_factors, gene_loadings)
    cell_sums = cell_factors.sum(axis=0)
    expected = np.asarray(cell_sums, dtype=np.float64) * gene_sums
    total = float(expected.sum())
    share = expected / total if total > 0 else np.zeros_like(expected)
    if min_share is None:
        n_cells, n_genes = cell_factors.shape[0], np.shape(gene_loadings)[0]
        floor = 0.0 if prior is None else prior_floor(n_cells, n_genes, prior)
        # The typical cell of those the fit gives any count: a classical solver gives a
        # cell without counts none, and where those were half the cells or more the median,
        # and the threshold, was 0 (a factor of 1e-17 of the counts active).
        counted = cell_totals[cell_totals > 0]
        handful = 0.0
        if len(counted):
            handful = _typical_cells_needed(len(counted)) * float(np.median(counted))
        min_share = (floor + handful) / total if total > 0 else 0.0
        if min_share >= 1:
            # No factor can hold more than all the fitted counts (where the prior's floor is
            # most of the few counts): the rule asks the impossible, and capped at 1 it
            # called a K = 1 fit's only factor, which holds them all, inactive. The largest
            # share is active instead: the threshold is the next share below it (0 when
            # there is none).
            below = share[share < share.max()]
            min_share = float(below.max(initial=0.0))
    return share, float(min_share)


def prior_floor(n_cells: int, n_genes: int, prior: tuple[float, float]) -> float:
    """The fitted count ``Z * W`` of a factor that explains no data, ``Z = sum_i E[z_il]``,
    ``W = sum_j E[w_jl]``: with no counts attributed, the updates of model.md reduce to
    ``Z (b + W) = n a`` and ``W (b + Z) = m a``, so ``P = Z W`` solves
    ``P^2 - ((n + m) a + b^2) P + n m a^2 = 0``; its smaller root (``P < min(n, m) a``)."""
    shape, rate = prior
    with np.errstate(over="ignore"):  # a rate past 1e154: B is inf and the floor 0
        linear = (n_cells + n_genes) * shape + np.square(np.float64(rate))
    # The smaller root in the form that does not cancel, 2c / (B + sqrt(B^2 - 4c)), with
    # B factored out so that B^2 cannot overflow (a Python float raised OverflowError).
    constant = n_cells * n_genes * shape**2
    return float(2 * constant / linear / (1 + np.sqrt(1 - 4 * (constant / linear) / linear)))


def _align_genes(gene_loadings: np.ndarray, fitted: pd.Index, target: pd.Index) -> np.ndarray:
    """Loadings in the order of ``target`` (``adata.var_names``); zero where not fitted."""
    if len(fitted) == len(target) and fitted.equals(target):
        return gene_loadings
    positions = fitted.get_indexer(target)
    aligned = np.zeros((len(target), gene_loadings.shape[1]), dtype=gene_loadings.dtype)
    found = positions >= 0
    aligned[found] = gene_loadings[positions[found]]
    return aligned


# The entry of a record's params naming the fit's settings it does not hold (values other
# than numbers, strings and booleans, which .h5ad cannot store)
UNRECORDED_ENTRY = "unrecorded"

# scanpy.pp.pca's parameters that the tools take under another name
_SCANPY_PCA_NAMES = {
    "use_highly_variable": "mask_var='highly_variable' (as scanpy.pp.pca's mask_var)",
    "n_comps": "n_components (tl.nmf) or ks (tl.select_k)",
}


def _check_fit_params(solver: str, fit_params: dict, refused: tuple[str, ...] = ()) -> None:
    """Refuse a parameter the solver's estimator does not take, naming the solver (rather
    than the estimator's ``__init__() got an unexpected keyword argument``); the message
    lists what it takes, less ``refused`` (parameters the caller refuses itself)."""
    if solver in VB_SOLVERS:
        accepted = set(VBNMF._get_param_names()) - {"n_components", "random_state", "solver"}
    else:
        from ..classic import NMF

        accepted = set(NMF._get_param_names()) - {"n_components", "random_state", "solver"}
        accepted.add("n_threads")
    accepted -= set(refused)
    if UNRECORDED_ENTRY in fit_params:  # a record's params passed back (`nmf`)
        names = ", ".join(map(str, np.ravel(fit_params[UNRECORDED_ENTRY])))
        raise ValueError(
            # the record names them, not what they were: an array, a dict (factor_mask's)...
            f"the recorded fit was also given {names}, which its params do not hold (they "
            "keep numbers, strings and booleans, which an .h5ad stores): pass "
            f"{names} again and leave out {UNRECORDED_ENTRY!r} to replay it"
        )
    unknown = sorted(set(fit_params) - accepted)
    if "mask" in unknown:  # VBNMF.fit's argument, not a parameter of any estimator
        if solver in VB_SOLVERS:
            how = "fit them with vbsnmf.VBNMF(...).fit(X, mask=...)"
        else:  # a classical fit leaves entries out by weight: tl.nmf passes weights on
            how = (
                "a classical fit leaves them out by weights= of 0 there (1 elsewhere, e.g. "
                "weights=1 - mask, the opposite of VBNMF.fit's mask), which solver='mu' takes"
            )
        raise ValueError(
            f"tl.nmf takes no mask of missing entries: {how}; to fit a subset of genes, "
            "pass mask_var"
        )
    for name in unknown:  # not another solver's: said as the tools say it
        if name in _SCANPY_PCA_NAMES:
            raise ValueError(
                f"{name!r} is scanpy.pp.pca's parameter; here pass {_SCANPY_PCA_NAMES[name]}"
            )
    if unknown:
        raise ValueError(
            f"fit parameter {unknown[0]!r} does not apply to solver {solver!r}; it takes "
            + ", ".join(sorted(accepted))
        )


def _storable_int(value: int) -> int | str:
    """``value``, or its decimal digits where it does not fit the int64 that ``.h5ad``
    stores (a seed of 2**64 is valid for numpy but cannot be written as a number)."""
    return value if -(2**63) <= value < 2**63 else str(value)


def _storable(params: dict) -> dict:
    """The fit parameters that ``.h5ad`` can store (numbers, strings, booleans)."""
    stored = {}
    for name, value in params.items():
        if name == "dtype":  # by its name: 'f4', 'single' or np.float32 were three records
            stored[name] = np.dtype(value).name
        elif isinstance(value, (bool, np.bool_)):
            stored[name] = bool(value)
        elif isinstance(value, (int, np.integer)):
            stored[name] = _storable_int(int(value))
        elif name == "checkpoint" and isinstance(value, (str, os.PathLike)):
            # its name's text: str() of a name from the command line under LC_ALL=C held
            # lone surrogates, which write_result refused once the fit was done
            stored[name] = utf8_text(value)
        elif isinstance(value, (float, str, np.floating)):
            stored[name] = value.item() if isinstance(value, np.generic) else value
        elif hasattr(value, "__fspath__"):
            stored[name] = str(value)
    return stored
