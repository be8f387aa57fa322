"""`nmf`: the scanpy face of vbsnmf, in the manner of ``scanpy.pp.pca``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from .._estimator import SOLVERS as VB_SOLVERS
from .._estimator import VBNMF
from .._model import HYPER_KEYS, INIT_KEYS, SCALE_KEYS
from .._utils import is_dask_array, numba_threads
from .._validation import check_float_dtype, check_n_components
from ..classic._nmf import NMF
from ..classic._nmf import SOLVERS as CLASSIC_SOLVERS
from ._counts import check_count_matrix, select_counts

SOLVERS = VB_SOLVERS + CLASSIC_SOLVERS


def result_keys(key_added: str | None) -> tuple[str, str, str]:
    """``(obsm, varm, uns)`` keys, named as ``scanpy.pp.pca`` names its own."""
    if key_added is None:
        return "X_nmf", "NMF", "nmf"
    return f"X_{key_added}", key_added, key_added


def nmf(
    adata,
    n_components: int = 15,
    *,
    layer: str | None = None,
    use_raw: bool = False,
    key_added: str | None = None,
    solver: str = "batch",
    random_state=0,
    warm_start: bool = False,
    callback: Callable | None = None,
    copy: bool = False,
    **fit_params,
):
    """Non-negative matrix factorisation of the raw counts of ``adata``.

    Fits ``counts ~ Poisson(cell_factors @ gene_loadings.T)`` by variational Bayes
    (`vbsnmf.VBNMF`, solvers ``"batch"`` and ``"svi"``) or by a classical solver
    (`vbsnmf.classic.NMF`), and stores the posterior mean factors the way
    ``scanpy.pp.pca`` stores its components, so that
    ``sc.pp.neighbors(adata, use_rep="X_nmf")`` works directly.

    Parameters
    ----------
    adata
        Cells x genes. Sparse, dense or backed ``X`` (never densified).
    n_components
        Number of factors K.
    layer
        Read the counts from ``adata.layers[layer]`` instead of ``adata.X``.
    use_raw
        Read the counts from ``adata.raw`` (gene loadings of genes that are not in
        ``adata.var_names`` are kept only in ``.uns[key]``).
    key_added
        Store the results under ``.obsm['X_' + key_added]``, ``.varm[key_added]`` and
        ``.uns[key_added]`` instead of ``X_nmf``, ``NMF`` and ``nmf``; no ``/`` (not
        allowed in ``.h5ad`` keys).
    solver
        ``"batch"`` (batch variational Bayes, default), ``"svi"`` (stochastic variational
        inference), or a classical solver: ``"mu"``, ``"hals"``, ``"als"``, ``"pg"``,
        ``"ipg"``, ``"gd"``.
    random_state
        Seed of the starting values.
    warm_start
        Continue a previous variational fit stored under the same key (same K and
        cells): its parameters start the fit, its ELBO trace is extended.
    callback
        ``callback(n_iter, params, elbo_trace)`` after every iteration (variational
        solvers), e.g. for a progress bar.
    copy
        Return a copy of ``adata`` with the results instead of writing into ``adata``.
    **fit_params
        Passed to the estimator, e.g. ``max_iter``, ``tol``, ``n_threads``,
        ``prior_shape``, ``prior_rate``; for ``"svi"`` also its minibatch and checkpoint
        parameters.

    Returns
    -------
    None, or the AnnData when ``copy=True``. Sets:

    ``.obsm['X_nmf']`` : ndarray (n_obs, K)
        Posterior mean cell factors ``E[z]``.
    ``.varm['NMF']`` : ndarray (n_vars, K)
        Posterior mean gene loadings ``E[w]`` (zero for genes absent from ``.raw``).
    ``.uns['nmf']`` : dict
        ``params`` (the settings), ``elbo_trace`` (ELBO in nats per iteration),
        ``n_iter``, ``converged``, ``var_names`` (the genes fitted, in order),
        ``obsm_key``, ``varm_key``, and for the variational solvers ``variational``: the
        Gamma parameters ``cell_shape`` (n_obs, K), ``cell_rate`` (K,), ``gene_shape``
        (n_genes fitted, K), ``gene_rate`` (K,) and the prior ``prior_shape``,
        ``prior_rate``, which `project` and ``warm_start`` use; for classical solvers
        ``loss_trace``, ``loss`` (the final loss) and ``reconstruction_err`` (as
        scikit-learn's ``NMF.reconstruction_err_``).

    Raises
    ------
    ValueError
        The selected matrix is not non-negative integer counts (the message says where the
        counts probably are, e.g. ``layer="counts"`` or ``use_raw=True``); ``n_components``
        is out of range; an unknown ``solver`` or a parameter it does not take; a missing
        layer or ``.raw``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    _check_fit_params(solver, fit_params)
    if key_added is not None and (not isinstance(key_added, str) or "/" in key_added):
        # anndata's h5 stores are deprecating "/" in keys: writing the result would fail.
        raise ValueError(f"key_added must be a string without '/', got {key_added!r}")
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    obsm_key, varm_key, uns_key = result_keys(key_added)
    matrix, var_names, source = select_counts(adata, layer=layer, use_raw=use_raw)
    on_dask = is_dask_array(matrix)
    if on_dask:
        # Fitted on the Dask cluster (vbsnmf.fit_dask); each chunk is checked on its worker,
        # so the client never loads the matrix. .obsm holds a dask array.
        if solver not in VB_SOLVERS:
            raise ValueError(f"a dask array of counts is fitted by {VB_SOLVERS}, not {solver!r}")
    else:
        fit_dtype = fit_params.get("dtype", np.float64) if solver in VB_SOLVERS else np.float64
        matrix = check_count_matrix(adata, matrix, source, check_float_dtype(fit_dtype))
        # Before the memory guard, which would otherwise answer a huge K with its advice.
        check_n_components(n_components, matrix.shape)

    previous = adata.uns.get(uns_key) if warm_start else None
    if solver in VB_SOLVERS:
        fitted = _fit_variational(
            matrix, on_dask, n_components, solver, random_state, previous, callback, fit_params
        )
    else:
        if warm_start:
            raise ValueError("warm_start applies to the variational solvers 'batch' and 'svi'")
        fitted = _fit_classic(matrix, n_components, solver, random_state, fit_params)

    cell_factors, gene_loadings, info = fitted
    adata.obsm[obsm_key] = cell_factors
    adata.varm[varm_key] = _align_genes(gene_loadings, var_names, adata.var_names)
    settings = {"n_components": int(n_components), "solver": solver, "use_raw": bool(use_raw)}
    if layer is not None:
        settings["layer"] = layer
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        settings["random_state"] = _storable_int(int(random_state))
    settings.update(_storable(fit_params))
    adata.uns[uns_key] = {
        "params": settings,
        "obsm_key": obsm_key,
        "varm_key": varm_key,
        "var_names": np.asarray(var_names, dtype=str),
        **info,
    }
    return adata if copy else None


def _fit_variational(
    matrix, on_dask, n_components, solver, random_state, previous, callback, fit_params
):
    """`VBNMF` on counts already checked (or a dask array, checked chunk by chunk)."""
    model = VBNMF(n_components, solver=solver, random_state=random_state, **fit_params)
    init, previous_trace = None, np.empty(0)
    if previous is not None:
        if "variational" not in previous:
            raise ValueError("warm_start: the stored fit has no variational parameters")
        stored = previous["variational"]
        init = {name: np.asarray(stored[name]) for name in INIT_KEYS}
        init.update({name: stored[name] for name in SCALE_KEYS + HYPER_KEYS if name in stored})
        previous_trace = np.asarray(previous.get("elbo_trace", []), dtype=np.float64)
    model._fit("dask" if on_dask else "checked", matrix, init, callback)
    cell_factors = model.cell_shape_ / model.cell_rate_
    elbo_trace = np.concatenate([previous_trace, np.asarray(model.elbo_trace_, np.float64)])
    info = {
        "elbo_trace": elbo_trace,
        "n_iter": int(elbo_trace.size),
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
    for name in ("prior_shape", "prior_rate"):
        if getattr(model, name) is not None:
            stored[name] = float(getattr(model, name))
    if model.hyperparameters_ is not None:
        stored.update({name: getattr(model, name + "_") for name in SCALE_KEYS})
        stored.update(model.hyperparameters_)
    return stored


def _fit_classic(matrix, n_components, solver, random_state, fit_params):
    options = dict(fit_params)
    n_threads = options.pop("n_threads", None)
    model = NMF(n_components, solver=solver, random_state=random_state, **options)
    with numba_threads(n_threads):
        cell_factors = model.fit_transform(matrix)
    n_iter = int(model.n_iter_)
    info = {
        "n_iter": n_iter,
        "converged": n_iter < model.max_iter,  # the solvers stop early only on ``tol``
        "loss_trace": np.asarray(model.loss_trace_, dtype=np.float64),
        "loss": float(model.loss_),
        "reconstruction_err": float(model.reconstruction_err_),
    }
    return np.asarray(cell_factors), np.asarray(model.components_).T, info


def _align_genes(gene_loadings: np.ndarray, fitted: pd.Index, target: pd.Index) -> np.ndarray:
    """Loadings in the order of ``target`` (``adata.var_names``); zero where not fitted."""
    if len(fitted) == len(target) and fitted.equals(target):
        return gene_loadings
    positions = fitted.get_indexer(target)
    aligned = np.zeros((len(target), gene_loadings.shape[1]), dtype=gene_loadings.dtype)
    found = positions >= 0
    aligned[found] = gene_loadings[positions[found]]
    return aligned


def _check_fit_params(solver: str, fit_params: dict) -> None:
    """Refuse a parameter the solver's estimator does not take, naming the solver (rather
    than the estimator's ``__init__() got an unexpected keyword argument``)."""
    if solver in VB_SOLVERS:
        accepted = set(VBNMF._get_param_names()) - {"n_components", "random_state", "solver"}
    else:
        accepted = set(NMF._get_param_names()) - {"n_components", "random_state", "solver"}
        accepted.add("n_threads")
    unknown = sorted(set(fit_params) - accepted)
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
        if isinstance(value, (bool, np.bool_)):
            stored[name] = bool(value)
        elif isinstance(value, (int, np.integer)):
            stored[name] = _storable_int(int(value))
        elif isinstance(value, (float, str, np.floating)):
            stored[name] = value.item() if isinstance(value, np.generic) else value
        elif name == "dtype":
            stored[name] = np.dtype(value).name
        elif hasattr(value, "__fspath__"):
            stored[name] = str(value)
    return stored
