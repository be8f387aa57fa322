"""`nmf`: the scanpy face of vbsnmf, in the manner of ``scanpy.pp.pca``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from .._dask import is_dask_array
from .._estimator import VBNMF, numba_threads
from .._validation import check_n_components
from ._counts import check_count_matrix, select_counts

VB_METHODS = ("batch", "svi")
CLASSIC_METHODS = ("mu", "hals", "als", "pg", "ipg", "gd")
VARIATIONAL_KEYS = ("obs_shape", "obs_rate", "var_shape", "var_rate")


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
    method: str = "batch",
    random_state=0,
    warm_start: bool = False,
    callback: Callable | None = None,
    copy: bool = False,
    **fit_params,
):
    """Non-negative matrix factorisation of the raw counts of ``adata``.

    Fits ``counts ~ Poisson(cell_factors @ gene_loadings.T)`` by variational Bayes
    (`vbsnmf.VBNMF`, methods ``"batch"`` and ``"svi"``) or by a classical solver
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
    method
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
        methods), e.g. for a progress bar.
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
        ``obsm_key``, ``varm_key``, and for variational methods ``variational``: the
        Gamma parameters ``obs_shape`` (n_obs, K), ``obs_rate`` (K,), ``var_shape``
        (n_genes fitted, K), ``var_rate`` (K,) and the prior ``prior_shape``,
        ``prior_rate``, which `project` and ``warm_start`` use; for classical solvers
        ``loss_trace``, ``loss`` (the final loss) and ``reconstruction_err`` (as
        scikit-learn's ``NMF.reconstruction_err_``).

    Raises
    ------
    ValueError
        The selected matrix is not non-negative integer counts (the message says where the
        counts probably are, e.g. ``layer="counts"`` or ``use_raw=True``); ``n_components``
        is out of range; an unknown ``method`` or a parameter it does not take; a missing
        layer or ``.raw``.
    """
    if method not in VB_METHODS + CLASSIC_METHODS:
        raise ValueError(
            f"unknown method {method!r}; choose one of {', '.join(VB_METHODS + CLASSIC_METHODS)}"
        )
    _check_fit_params(method, fit_params)
    if key_added is not None and (not isinstance(key_added, str) or "/" in key_added):
        # anndata's h5 stores are deprecating "/" in keys: writing the result would fail.
        raise ValueError(f"key_added must be a string without '/', got {key_added!r}")
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    obsm_key, varm_key, uns_key = result_keys(key_added)
    matrix, var_names, source = select_counts(adata, layer=layer, use_raw=use_raw)
    if is_dask_array(matrix):
        # Fitted on the Dask cluster (vbsnmf.fit_dask); each chunk is checked on its worker,
        # so the client never loads the matrix. .obsm holds a dask array.
        if method not in VB_METHODS:
            raise ValueError(f"a dask array of counts is fitted by {VB_METHODS}, not {method!r}")
    else:
        matrix = check_count_matrix(adata, matrix, source)
        # Before the memory guard, which would otherwise answer a huge K with its advice.
        check_n_components(n_components, matrix.shape)

    previous = adata.uns.get(uns_key) if warm_start else None
    if method in VB_METHODS:
        fitted = _fit_variational(
            matrix, n_components, method, random_state, previous, callback, fit_params
        )
    else:
        if warm_start:
            raise ValueError("warm_start applies to the variational methods 'batch' and 'svi'")
        fitted = _fit_classic(matrix, n_components, method, random_state, fit_params)

    cell_factors, gene_loadings, info = fitted
    adata.obsm[obsm_key] = cell_factors
    adata.varm[varm_key] = _align_genes(gene_loadings, var_names, adata.var_names)
    settings = {"n_components": int(n_components), "method": method, "use_raw": bool(use_raw)}
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


def _fit_variational(matrix, n_components, method, random_state, previous, callback, fit_params):
    options = dict(fit_params)
    if method != "batch":
        options["method"] = method
    model = VBNMF(n_components, random_state=random_state, **options)
    init, previous_trace = None, np.empty(0)
    if previous is not None:
        if "variational" not in previous:
            raise ValueError("warm_start: the stored fit has no variational parameters")
        stored = previous["variational"]
        init = {name: np.asarray(stored[name]) for name in VARIATIONAL_KEYS}
        previous_trace = np.asarray(previous.get("elbo_trace", []), dtype=np.float64)
    model.fit(matrix, init=init, callback=callback)
    cell_factors = model.obs_shape_ / model.obs_rate_
    elbo_trace = np.concatenate([previous_trace, np.asarray(model.elbo_trace_, np.float64)])
    info = {
        "elbo_trace": elbo_trace,
        "n_iter": int(elbo_trace.size),
        "converged": bool(model.converged_),
        "variational": {
            "obs_shape": model.obs_shape_,
            "obs_rate": model.obs_rate_,
            "var_shape": model.var_shape_,
            "var_rate": model.var_rate_,
            "prior_shape": float(model.prior_shape),
            "prior_rate": float(model.prior_rate),
        },
    }
    return cell_factors, model.components_.T, info


def _fit_classic(matrix, n_components, method, random_state, fit_params):
    from ..classic import NMF  # imported on use: the classical solvers are optional here

    options = dict(fit_params)
    n_threads = options.pop("n_threads", None)
    model = NMF(n_components, solver=method, random_state=random_state, **options)
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


def _check_fit_params(method: str, fit_params: dict) -> None:
    """Refuse a parameter the method's estimator does not take, naming the method (rather
    than the estimator's ``__init__() got an unexpected keyword argument``)."""
    if method in VB_METHODS:
        accepted = set(VBNMF._get_param_names()) - {"n_components", "random_state", "method"}
    else:
        from ..classic import NMF

        accepted = set(NMF._get_param_names()) - {"n_components", "random_state", "solver"}
        accepted.add("n_threads")
    unknown = sorted(set(fit_params) - accepted)
    if unknown:
        raise ValueError(
            f"fit parameter {unknown[0]!r} does not apply to method {method!r}; it takes "
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
