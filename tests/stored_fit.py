"""Small `tl.nmf` fits and warm starts for the warm-start tests, and a fit's stored
parameters read by hand (`stored_start`), to check a warm start against `VBNMF.fit(X,
init=...)` from the same start."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import scipy.sparse as sp

import vbsnmf
from vbsnmf import tl

# plain coordinate ascent on one thread: traces comparable pass for pass
FIT = {"accelerate": False, "n_threads": 1}


def counts(seed: int = 0, shape=(60, 40)) -> np.ndarray:
    """Poisson(1) counts as float64."""
    return np.random.default_rng(seed).poisson(1.0, size=shape).astype(np.float64)


def fitted_adata(shape=(60, 40), **options) -> ad.AnnData:
    """An AnnData of `counts` (CSR; cells ``c0, c1, ...``, genes ``g0, g1, ...``) fitted by
    `tl.nmf` at K = 3 for 8 passes (``options``: more of its settings)."""
    adata = ad.AnnData(sp.csr_matrix(counts(shape=shape)))
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    adata.var_names = [f"g{i}" for i in range(adata.n_vars)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, 3, random_state=0, max_iter=8, **FIT, **options)
    return adata


def warm_start_warnings(adata, containing: str = "", **options) -> list[str]:
    """The UserWarnings of a five-pass warm start of ``adata`` (in place), as text; only
    those whose text holds ``containing``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, 3, warm_start=True, max_iter=5, **FIT, **options)
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, UserWarning) and containing in str(w.message)
    ]


def stored_start(adata) -> dict:
    """The parameters a warm start of ``adata`` (its fit under the default key ``"nmf"``)
    starts from: q's shapes and rates, the scales' and the hyperparameters."""
    start = {name: np.asarray(adata.obsm[f"nmf_{name}"]) for name in ("cell_shape", "cell_rate")}
    start |= {name: np.asarray(adata.varm[f"nmf_{name}"]) for name in ("gene_shape", "gene_rate")}
    for side, arrays in (("cell", adata.obsm), ("gene", adata.varm)):
        for part in ("shape", "rate"):
            start[f"{side}_scale_{part}"] = np.asarray(arrays[f"nmf_{side}_scale_{part}"])[:, 0]
    variational = adata.uns["nmf"]["variational"]
    return start | {key: value for key, value in variational.items() if key != "prior"}


def fit_from_stored(adata) -> vbsnmf.VBNMF:
    """A five-pass `VBNMF` fit of ``adata.X`` from the fit stored in ``adata``
    (`stored_start`): what a warm start that starts a fresh trace records."""
    model = vbsnmf.VBNMF(3, max_iter=5, **FIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(adata.X, init=stored_start(adata))
    return model


def assert_fresh_trace(adata, before) -> None:
    """The record's trace, its passes and n_iter are those of the fit from the stored start
    (``before``, the AnnData as it was) alone, as `VBNMF.fit(X, init=...)` gives them (its
    elbo_trace_ never holds the start's); the factors are that fit's."""
    model = fit_from_stored(before)
    record = adata.uns["nmf"]
    np.testing.assert_allclose(record["elbo_trace"], model.elbo_trace_, rtol=1e-10)
    np.testing.assert_array_equal(record["elbo_iter"], model.elbo_iter_)
    assert record["n_iter"] == model.n_iter_ == 5
    np.testing.assert_allclose(adata.obsm["X_nmf"], model.cell_shape_ / model.cell_rate_)
