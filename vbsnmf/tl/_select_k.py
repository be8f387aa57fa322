"""`select_k`: the number of factors by held-out likelihood, as cNMF's ``k_selection_plot``
and fastTopics' likelihood against rank."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import gammaln

from .._estimator import SOLVERS as VB_SOLVERS
from .._estimator import VBNMF, _check_memory
from .._model import (
    HOLD_TOL,
    NOT_CONVERGED_MESSAGE,
    START_FACTOR_SHAPE,
    ConvergenceWarning,
    FitOutcome,
    kept_if_failed,
    recording_outcome,
)
from .._utils import (
    check_anndata,
    check_n_threads,
    is_dask_array,
    is_integer,
    library_versions,
    warn_user,
)
from .._validation import check_tolerance
from ._counts import MASKED, check_count_matrix, select_counts
from ._nmf import (
    _check_fit_params,
    _drawn_seed,
    _EmptyCellsWarning,
    _NoActiveFactorWarning,
    _storable,
    _storable_int,
    check_share,
    gene_mask,
    kept_cells_advice,
    nmf,
    warn_empty_cells,
    warn_if_genes_by_cells,
)
from ._split import count_split
from ._stored import check_key_added, check_writable, view_to_actual

# Nonzeros scored at a time: bounds the block x K temporaries of the held-out score. At
# most BLOCK_NONZEROS, and fewer at large K: a block of a fixed 262,144 nonzeros held two
# float64 arrays of 4 MiB per factor (800 MiB at K=200) beside the fit, which the memory
# guard does not count; BLOCK_FACTOR_ENTRIES keeps each at 32 MiB.
BLOCK_NONZEROS = 1 << 18
BLOCK_FACTOR_ENTRIES = 1 << 22
# Fit parameters its fits cannot take: one path for every fit, and a resume would find
# another K's or half's checkpoint.
_NOT_SHARED = ("checkpoint", "resume")


def select_k(
    adata,
    ks: Iterable[int] = (5, 10, 15, 20, 25, 30),
    *,
    layer: str | None = None,
    use_raw: bool = False,
    mask_var: str | np.ndarray | None = None,
    solver: str = "batch",
    random_state: int = 0,
    tolerance: float | None = None,
    min_share: float | None = None,
    key_added: str = "nmf_k_selection",
    **fit_params,
) -> pd.DataFrame:
    """Fit every K of a grid and suggest one by held-out likelihood.

    For each K, two fits by `nmf` (the same ``solver``, ``random_state`` and
    ``fit_params``): one on all the counts, which gives the final ELBO and the number of
    active factors, and one on a count split: ``train = Binomial(x, 1/2)`` of every count
    (`count_split`), scored on the other half ``test = x - train`` by its Poisson
    log-likelihood under ``mu = cell_factors @ gene_loadings.T`` (posterior means), per
    count of ``test``. By Poisson thinning the halves are independent Poisson draws with
    half the mean each, so the score measures how well K factors predict counts they were
    not fitted to, with no cell or gene left out. Both fits see the same data at every K,
    so the columns compare across K. The ELBO need not peak where the held-out
    likelihood does, nor keep rising with K: on pbmc_tiny (K = 2, 4, 8, 12, 16, 24) it was
    highest at K = 16 and lower again at 24, the held-out likelihood highest at K = 12.

    **The suggestion** is the smallest K whose held-out log-likelihood is within
    ``tolerance`` of the best K's (the simplest model as good as the best). By default
    ``tolerance`` is one standard error of the difference to the best K, paired over
    cells: ``sqrt(n_cells) * std_i(ll_i(best) - ll_i(K))`` over the test total, where
    ``ll_i`` is cell i's held-out log-likelihood (the "one-standard-error rule" of
    cross-validation; Hastie, Tibshirani and Friedman, *Elements of Statistical Learning*,
    7.10). It is derived from the data: a difference smaller than its own noise across
    cells does not favour the larger K.

    Parameters
    ----------
    adata
        Cells x genes with raw counts (in memory: sparse or dense; not dask).
    ks
        The numbers of factors to try (distinct integers between 1 and min(n_cells,
        n_genes) of the fitted counts, checked before the first fit; fitted in ascending
        order).
    layer, use_raw, mask_var
        Which counts and genes to fit, as in `nmf`.
    solver
        ``"batch"`` or ``"svi"`` (variational solvers: the ELBO is one of the columns).
    random_state
        Seed of the count split and of every fit. A `numpy.random.Generator` (or
        ``RandomState``) gives one integer seed, drawn once, which ``params`` records; it
        is left as it was if the grid raises. None: fresh entropy, which ``params``
        records as that seed (as `nmf`).
    tolerance
        How far below the best held-out log-likelihood per count a K may be and still be
        suggested, in nats per count; default: one standard error (above).
    min_share
        Passed to `nmf`: the share of the fitted counts that makes a factor active.
    key_added
        The results go to ``adata.uns[key_added]``; not a key scanpy's tools store their
        results under (``"pca"``, ``"umap"``, ``"neighbors"``...), as `vbsnmf.tl.nmf`.
    **fit_params
        Passed to `nmf` (e.g. ``max_iter``, ``tol``, ``n_threads``, ``prior``; not
        ``checkpoint`` or ``resume``).

    Returns
    -------
    DataFrame indexed by ``n_components`` (K), with columns

    ``elbo``
        Final ELBO of the fit on all the counts (nats).
    ``heldout_ll_per_count``
        Held-out Poisson log-likelihood of the test half per test count (nats).
    ``heldout_se``
        One standard error of the difference to the best K's held-out figure, per count
        (0 at the best K).
    ``tolerance``
        The tolerance applied at this K (``heldout_se``, or the given ``tolerance``).
    ``n_active``
        Active factors of the fit on all the counts (`nmf`'s ``active``).
    ``n_iter``, ``converged``, ``shapes_held``
        Of the fit on all the counts; ``heldout_n_iter``, ``heldout_converged``,
        ``heldout_shapes_held`` of the fit on the train half. ``shapes_held``: the fit
        stopped at ``max_iter`` (``n_epochs``) while it still held its factor shapes at 1,
        as a fit from its own start under the learned prior does for its first passes
        (docs/model.md, "The hold"); no ``tol`` stops such a fit.
    ``suggested``
        True at the suggested K.

    ``DataFrame.attrs`` holds ``suggested_k`` and ``reason`` (a sentence saying why).
    ``adata.uns[key_added]`` holds ``table`` (the DataFrame), ``suggested_k``, ``reason``,
    ``params`` (the settings; ``n_threads``: the Numba threads the fits ran on, capped at the
    machine's, on which their rounding depends; ``fitted_genes``: the names of the genes
    fitted, for a ``mask_var`` given as an array, whose column ``mask_var`` names
    otherwise) and ``versions`` (as `vbsnmf.tl.nmf` records them). `vbsnmf.pl.select_k` plots it.

    Raises
    ------
    TypeError
        ``adata`` is not an AnnData; ``ks`` not a sequence (a number, a string, a 0-d
        array); ``tolerance`` or ``min_share`` not a number; ``layer``, ``use_raw`` or
        ``random_state`` of the wrong type (as `nmf`); ``key_added`` not a string.
    ValueError
        ``ks`` empty, not distinct positive integers or out of range for the data;
        ``solver`` not variational; ``tolerance`` negative or not finite; ``checkpoint``
        or ``resume`` given (the fits cannot share a checkpoint); dask counts; bad counts,
        layer or mask (as `nmf`); ``min_share`` outside [0, 1) or a negative
        ``random_state`` (as `nmf`); ``key_added`` that an ``.h5ad`` cannot store, or
        naming another tool's record (a fit's, a projection's); too few counts for the
        count split to leave some in each half.
    vbsnmf._memory.InsufficientMemoryError (a MemoryError)
        The fit at the largest K would need more memory than is available (`nmf`'s guard),
        before any fit runs.

    Warns
    -----
    UserWarning
        Once, not from each fit: cells have no counts in the fitted genes (their factors
        are the prior's; ``sc.pp.filter_cells(adata, min_counts=1)`` drops them, and with
        ``mask_var`` the line the warning gives). The AnnData looks genes x cells, as
        `nmf` warns.
    ConvergenceWarning
        Once, naming the Ks whose fit on all the counts or on the train half stopped at
        ``max_iter`` (``n_epochs`` for SVI) before converging, those that still held their
        factor shapes apart (raising ``max_iter`` is the advice for them, not ``tol``).

    Examples
    --------
    >>> import vbsnmf
    >>> adata = vbsnmf.datasets.pbmc_tiny()[:200].copy()
    >>> table = vbsnmf.tl.select_k(adata, ks=[2, 4], max_iter=50, tol=1e-3)
    >>> list(table.index)
    [2, 4]
    >>> table.attrs["suggested_k"] in (2, 4), int(table["suggested"].sum())
    (True, 1)
    >>> adata.uns["nmf_k_selection"]["suggested_k"] == table.attrs["suggested_k"]
    True
    """
    check_anndata(adata)
    ks = _check_ks(ks)
    if not isinstance(solver, str) or solver not in VB_SOLVERS:  # an array: numpy's "ambiguous"
        raise ValueError(f"select_k needs a variational solver ({VB_SOLVERS}), got {solver!r}")
    if tolerance is not None:
        check_tolerance(tolerance, "tolerance")
    if min_share is not None:  # a float, so that the record's params keep any number given
        min_share = check_share(min_share)
    check_key_added(key_added, adata, writes="uns")
    check_writable(adata, copy=False)
    for name in ("copy", "key_added", "warm_start", "callback", "n_components"):
        if name in fit_params:
            raise ValueError(f"select_k sets {name!r} itself; it cannot be passed")
    for name in _NOT_SHARED:
        if name in fit_params:
            raise ValueError(
                f"select_k cannot take {name!r}: its {2 * len(ks)} fits (all the counts and a "
                "train half at each K) cannot share one checkpoint; fit a single K with "
                "vbsnmf.tl.nmf to checkpoint it"
            )

    fit_dtype = _check_scored(solver, fit_params)

    matrix, var_names, source = select_counts(adata, layer=layer, use_raw=use_raw)
    warn_if_genes_by_cells(adata.obs_names, var_names)
    fitted_genes = gene_mask(adata, mask_var, var_names)
    if fitted_genes is not None:
        matrix = matrix[:, fitted_genes]
        source += MASKED
    if is_dask_array(matrix):
        raise ValueError(
            f"select_k needs the counts in memory, not a dask array ({source}): compute "
            "them first, e.g. adata.X = adata.X.compute()"
        )
    # Checked for the fits' dtype, naming the user's matrix (the inner fits know it only as
    # "adata.X"), then in float64, which holds every count a fit takes: booleans and float32
    # counts above 2**24, which `nmf` fits, were refused by the count split.
    counts = sp.csr_matrix(check_count_matrix(adata, matrix, source, fit_dtype))
    counts = counts.astype(np.float64, copy=False)
    _check_ks_fit(ks, counts.shape, source)
    # The largest K's fit needs the most memory: refused now, not when its turn came after
    # the smaller Ks' fits (both halves of each, hours on a large data set) had run
    _check_memory(VBNMF(max(ks), solver=solver, **fit_params)._check_params(), counts, None)
    # A Generator (or RandomState, or None's fresh entropy) gives the split and every fit
    # one integer seed, drawn here, as an integer random_state does, and the record names
    # it: each fit drew its own before, and the record named none, so the table could not
    # be replayed. Left as it was if the grid raises, as tl.nmf leaves it.
    with kept_if_failed(random_state):
        random_state = _drawn_seed(random_state, solver)
        train, test = count_split(counts, 0.5, random_state=random_state)
        test_total = float(test.sum())
        # an empty train half failed in the first inner fit, as if adata's own counts were none
        for half, total in (("test", test_total), ("train", float(train.sum()))):
            if total == 0:
                raise ValueError(
                    f"{source}: the count split left no {half} counts (too few counts: "
                    f"{float(counts.sum()):g} in all)"
                )

        n_without = int(np.count_nonzero(np.asarray(counts.sum(axis=1)).ravel() == 0))
        if n_without:  # once here; the 2 x len(ks) inner fits would each give it again
            masked = fitted_genes is not None and kept_cells_advice(source, mask_var, use_raw)
            warn_empty_cells(n_without, counts.shape[0], masked, solver, fit_params=fit_params)

        rows, per_cell = [], []
        untestable: dict[str, list[int]] = {}  # the Ks whose fit no tol could have stopped
        options = {"solver": solver, "random_state": random_state, "min_share": min_share}
        for k in ks:
            full, half = ad.AnnData(counts), ad.AnnData(train)
            with warnings.catch_warnings():
                # the train half leaves more cells empty: a property of the split, not the data
                warnings.simplefilter("ignore", _EmptyCellsWarning)
                warnings.simplefilter("ignore", _NoActiveFactorWarning)  # its n_active says it
                # one warning for the grid (`_warn_not_converged`), not the same one from each of
                # the 2 x len(ks) fits without saying which
                warnings.filterwarnings(
                    "ignore", message=NOT_CONVERGED_MESSAGE, category=ConvergenceWarning
                )
                full_outcome, half_outcome = (
                    _fit_outcome(fitted, k, options, fit_params) for fitted in (full, half)
                )
            for outcome, fitted in ((full_outcome, "all the counts"), (half_outcome, "train half")):
                if outcome.untestable:
                    untestable.setdefault(fitted, []).append(k)
            cell_ll = poisson_loglik_per_cell(test, half.obsm["X_nmf"], half.varm["NMF"])
            per_cell.append(cell_ll)
            info, half_info = full.uns["nmf"], half.uns["nmf"]
            if len(info["elbo_trace"]) == 0:  # `_check_scored` should have refused the settings
                raise ValueError(
                    f"the fit at K={k} recorded no ELBO in its {info['n_iter']} pass(es); raise "
                    "max_iter"
                )
            rows.append(
                {
                    "elbo": float(info["elbo_trace"][-1]),
                    "heldout_ll_per_count": float(cell_ll.sum()) / test_total,
                    "n_active": int(np.count_nonzero(info["active"])),
                    "n_iter": int(info["n_iter"]),
                    "converged": bool(info["converged"]),
                    "shapes_held": full_outcome.held,
                    "heldout_n_iter": int(half_info["n_iter"]),
                    "heldout_converged": bool(half_info["converged"]),
                    "heldout_shapes_held": half_outcome.held,
                }
            )
        table = pd.DataFrame(rows, index=pd.Index(ks, name="n_components"))
        _warn_not_converged(table, solver, untestable)
        best = int(np.argmax(table["heldout_ll_per_count"].to_numpy()))
        differences = [per_cell[best] - cell_ll for cell_ll in per_cell]
        n_cells = counts.shape[0]
        table["heldout_se"] = [
            float(np.sqrt(n_cells) * np.std(diff, ddof=1)) / test_total if n_cells > 1 else 0.0
            for diff in differences
        ]
        table["tolerance"] = table["heldout_se"] if tolerance is None else float(tolerance)
        gap = table["heldout_ll_per_count"].iloc[best] - table["heldout_ll_per_count"]
        within = (gap <= table["tolerance"]).to_numpy()
        chosen = int(np.flatnonzero(within)[0])  # the best K itself is always within
        table["suggested"] = np.arange(len(ks)) == chosen
        reason = _reason(table, ks, chosen, best, tolerance, min_share, max_k=min(counts.shape))
        suggested_k = ks[chosen]
        table = table[
            [
                "elbo",
                "heldout_ll_per_count",
                "heldout_se",
                "tolerance",
                "n_active",
                "n_iter",
                "converged",
                "shapes_held",
                "heldout_n_iter",
                "heldout_converged",
                "heldout_shapes_held",
                "suggested",
            ]
        ]
        params = {"ks": np.asarray(ks), "solver": solver}
        if is_integer(random_state):
            params["random_state"] = _storable_int(int(random_state))
        if tolerance is not None:
            params["tolerance"] = float(tolerance)
        for name, value in (("layer", layer), ("mask_var", mask_var), ("min_share", min_share)):
            if isinstance(value, (str, float, int)):
                params[name] = value
        if fitted_genes is not None and not isinstance(mask_var, str):
            # an array mask leaves no trace of its own (tl.nmf's leaves zero loading rows
            # for the genes it kept out): without it the record read as a table over all
            # the genes
            params["fitted_genes"] = np.asarray(var_names[fitted_genes].astype(str), dtype=object)
        params["use_raw"] = bool(use_raw)
        params.update(_storable(fit_params))
        # the threads the fits ran on, on which their rounding depends, as tl.nmf records
        # them: as given (or missing for the default, all the cores), a rerun on a machine of
        # other cores gave another table and the record did not say so
        params["n_threads"] = check_n_threads(fit_params.get("n_threads"))
        view_to_actual(adata)  # as tl.nmf: anndata's ImplicitModificationWarning otherwise
        adata.uns[key_added] = {
            "table": table.copy(),
            "suggested_k": int(suggested_k),
            "reason": reason,
            "params": params,
            "versions": library_versions(),
        }
        table.attrs = {"suggested_k": int(suggested_k), "reason": reason}
        return table


def poisson_loglik_per_cell(counts, cell_factors, gene_loadings) -> np.ndarray:
    """Each cell's Poisson log-likelihood ``sum_j x_ij log mu_ij - lgamma(x_ij + 1) - mu_ij``
    under ``mu = cell_factors @ gene_loadings.T``, visiting only the stored counts (in blocks)
    and taking ``sum_j mu_ij`` from the loadings' column sums. ``mu`` is floored at the
    smallest positive double where a count is, so a count the fit gives no mass scores a
    very low but finite value."""
    counts = sp.coo_matrix(counts)
    cell_factors = np.asarray(cell_factors, dtype=np.float64)
    gene_loadings = np.asarray(gene_loadings, dtype=np.float64)
    loglik = -(cell_factors @ gene_loadings.sum(axis=0))
    tiny = np.finfo(np.float64).tiny
    block_size = max(1, min(BLOCK_NONZEROS, BLOCK_FACTOR_ENTRIES // max(1, cell_factors.shape[1])))
    for start in range(0, counts.nnz, block_size):
        block = slice(start, start + block_size)
        rows, cols = counts.row[block], counts.col[block]
        values = counts.data[block].astype(np.float64)
        mu = np.einsum("nk,nk->n", cell_factors[rows], gene_loadings[cols])
        terms = values * np.log(np.maximum(mu, tiny)) - gammaln(values + 1.0)
        loglik += np.bincount(rows, weights=terms, minlength=loglik.size)
    return loglik


def _fit_outcome(adata, k: int, options: dict, fit_params: dict) -> FitOutcome:
    """`nmf` of ``adata`` at ``k``; its `FitOutcome` (`_model.warn_not_converged`): whether
    it stopped at ``max_iter`` (``n_epochs``) while it still held its factor shapes at 1
    (docs/model.md, "The hold"), or with too few ELBO values for the stopping rule."""
    with recording_outcome() as outcome:
        nmf(adata, k, **options, **fit_params)
    return outcome


def _check_scored(solver: str, fit_params: dict) -> np.dtype:
    """Refuse, before the first fit, settings under which a batch fit records no ELBO to
    compare: ``max_iter=0`` runs no pass, and SQUAREM's first pass scores only its start,
    so an accelerated fit needs two (SVI evaluates at its last epoch, and `VBNMF` refuses
    ``n_epochs=0``). Returns the fits' dtype."""
    _check_fit_params(solver, fit_params, refused=_NOT_SHARED)
    settings = VBNMF(1, solver=solver, **fit_params)._check_params()
    if solver == "svi":
        return settings.dtype
    needed = 2 if settings.accelerate else 1
    if settings.max_iter < needed:
        why = (
            "runs no pass"
            if settings.max_iter == 0
            else "is SQUAREM's first pass, which scores only its start"
        )
        raise ValueError(
            f"max_iter={settings.max_iter} {why}, so no fit has an ELBO to compare; "
            f"select_k needs max_iter >= {needed}"
        )
    return settings.dtype


def _warn_not_converged(
    table: pd.DataFrame, solver: str, untestable: dict[str, list[int]] | None = None
) -> None:
    """One `ConvergenceWarning` naming the Ks whose fit on all the counts or on the train
    half stopped at ``max_iter`` (``n_epochs``) before converging, if any: those that still
    held their factor shapes apart (columns ``shapes_held``, ``heldout_shapes_held``), and
    those with too few ELBO values for the stopping rule (``untestable``: the Ks per fit),
    as no ``tol`` stops either (`_model.warn_not_converged`): raising ``tol`` was no
    advice for them."""
    limit = "n_epochs" if solver == "svi" else "max_iter"
    untestable = untestable or {}
    fits = (
        ("converged", "shapes_held", "all the counts"),
        ("heldout_converged", "heldout_shapes_held", "train half"),
    )
    stopped, held, too_few = [], [], []
    for converged, shapes_held, fitted in fits:
        few = table.index.isin(untestable.get(fitted, []))
        for named, ks in (
            (stopped, table.index[~table[converged] & ~table[shapes_held] & ~few]),
            (held, table.index[~table[converged] & table[shapes_held]]),
            (too_few, table.index[~table[converged] & ~table[shapes_held] & few]),
        ):
            if len(ks):
                named.append(f"K={', '.join(map(str, ks))} ({fitted})")
    sentences = []
    if too_few:
        sentences.append(
            f"the fits at {' and '.join(too_few)} stopped at {limit} with too few ELBO values "
            f"for the stopping rule to judge, so no tol could have stopped them; raise {limit}"
        )
    if stopped:
        sentences.append(
            f"the fits at {' and '.join(stopped)} stopped at {limit} before the relative ELBO "
            f"change fell below tol (columns converged and heldout_converged); raise {limit} "
            "or tol"
        )
    if held:
        sentences.append(
            f"the fits at {' and '.join(held)} stopped at {limit} while they still held their "
            f"factor shapes at {START_FACTOR_SHAPE:g}, which they learn once an ELBO change is "
            f"at most HOLD_TOL={HOLD_TOL:.2g} relative, whatever tol (columns shapes_held and "
            f'heldout_shapes_held; docs/model.md, "The hold"); raise {limit}'
        )
    if sentences:
        warn_user("; ".join(sentences), ConvergenceWarning)


def _check_ks(ks) -> list[int]:
    """``ks`` as a sorted list of distinct positive integers."""
    # a 0-d array is an Iterable whose iteration fails ("iteration over a 0-d array")
    zero_d = isinstance(ks, np.ndarray) and ks.ndim == 0
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Iterable) or zero_d:
        given = f"a 0-d array ({ks!r})" if zero_d else type(ks).__name__
        raise TypeError(f"ks must be a sequence of integers, got {given}")
    ks = list(ks)
    if not ks:
        raise ValueError("ks is empty; give the numbers of factors to try")
    for k in ks:
        if not is_integer(k) or k < 1:
            # a numpy number as a Python one: np.linspace's grid was named "np.float64(2.0)"
            shown = k.item() if isinstance(k, np.generic) else k
            raise ValueError(f"ks must hold positive integers, got {shown!r}")
    # as Python integers: numpy's were named "[np.int64(2), np.int64(2), np.int64(3)]"
    ks = [int(k) for k in ks]
    repeated = sorted({k for k in ks if ks.count(k) > 1})
    if repeated:
        raise ValueError(
            f"ks must be distinct, got {ks} ({', '.join(map(str, repeated))} repeated); "
            "drop the repeated Ks"
        )
    return sorted(ks)


def _check_ks_fit(ks: list[int], shape: tuple[int, int], source: str) -> None:
    """Every K of the sorted ``ks`` at most min(n_cells, n_genes), as `nmf` requires
    (`vbsnmf._validation.check_n_components`): checked before the first fit, not when the
    K's turn comes after the smaller Ks' fits."""
    largest = min(shape)
    above = [k for k in ks if k > largest]
    if above:
        raise ValueError(
            f"ks holds {', '.join(map(str, above))}, above min(n_cells, n_genes) = {largest} "
            f"of {source} (shape {tuple(shape)}): K must be between 1 and {largest}; drop "
            "the larger Ks"
        )


def _reason(
    table: pd.DataFrame,
    ks: list[int],
    chosen: int,
    best: int,
    tolerance,
    min_share=None,
    *,
    max_k: int | None = None,
) -> str:
    """The sentence that says why ``ks[chosen]`` is suggested (``min_share``: as given to
    `select_k`, None for `nmf`'s default; ``max_k``: min(n_cells, n_genes) of the fitted
    counts, the largest K a fit takes)."""
    heldout = table["heldout_ll_per_count"].to_numpy()
    rule = (
        "one standard error (paired over cells)"
        if tolerance is None
        else f"the given tolerance {tolerance:g}"
    )
    tolerances = table["tolerance"].to_numpy()
    # the best's own standard error is 0, which said nothing of the rule ("tolerance 0")
    applied = ""
    if chosen != best:
        # the gap itself: the two figures at :.5f could differ by more than the tolerance
        # shown (0.00033 against 0.000325) while the gap was within it
        gap, within = _compared(heldout[best] - heldout[chosen], tolerances[chosen], False)
        applied = f"; {gap} below it, tolerance {within}"
    elif tolerance is not None:
        applied = f"; tolerance {tolerances[chosen]:.3g}"
    text = (
        f"K={ks[chosen]}: the smallest K whose held-out log-likelihood per count "
        f"({heldout[chosen]:.5f}) is within {rule} of the best ({heldout[best]:.5f} at "
        f"K={ks[best]}{applied})"  # :.3g, not :.5f: a tolerance may be ~1e-5
    )
    if chosen > 0:  # why the next smaller K was not suggested
        below = chosen - 1
        gap, beyond = _compared(heldout[best] - heldout[below], tolerances[below], True)
        text += f"; K={ks[below]} is {gap} below the best, beyond its tolerance {beyond}"
    n_active = int(table["n_active"].iloc[chosen])
    if n_active == 0:  # "the others switched off" said so of factors the threshold missed
        # the default's meaning said only of the default: a given min_share is named
        threshold = (
            "(by default five typical cells' counts; of fewer than 20 cells, a quarter of theirs)"
            if min_share is None
            else f"(min_share={min_share:g})"
        )
        text += (
            f"; none of its {ks[chosen]} factors is active: none holds more than min_share of "
            f"the fitted counts {threshold}"
        )
    elif n_active < ks[chosen]:  # the K to fit is not the number of programmes it finds
        text += f"; {n_active} of its {ks[chosen]} factors are active (the others switched off)"
    if len(ks) == 1:
        text += "; the only K tried, so nothing was compared: pass a grid of K"
    if best == len(ks) - 1 and len(ks) > 1:
        if max_k is not None and ks[-1] >= max_k:
            # "a larger K may fit better still" sent the user to a K that `nmf` refuses
            text += (
                f"; the best is the largest K tried, min(n_cells, n_genes) = {max_k} of the "
                "fitted counts, the largest K they allow"
            )
        else:
            text += "; the best is the largest K tried, so a larger K may fit better still"
    if chosen == 0 and len(ks) > 1 and ks[0] > 1:
        # the rule asks for the smallest K within tolerance, which the grid may not reach
        text += "; it is the smallest K tried, so a smaller K may do as well"
    return text


def _compared(gap: float, tolerance: float, beyond: bool) -> tuple[str, str]:
    """``gap`` and ``tolerance`` as the reason shows them: to three significant digits, or
    as many more as it takes for the figures shown to say what the rule found (``gap``
    above ``tolerance`` when ``beyond``). At three, a gap just beyond its tolerance read
    "0.00187 below the best, beyond its tolerance 0.00187"; rounding to a number of
    digits keeps a gap within its tolerance within it."""
    for digits in range(3, 18):
        shown = f"{gap:.{digits}g}", f"{tolerance:.{digits}g}"
        if not beyond or float(shown[0]) > float(shown[1]):
            return shown
    return shown
