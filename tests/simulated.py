"""Count matrices drawn from the model itself, for tests that know the truth."""

from __future__ import annotations

import scipy.sparse as sp


def poisson_gamma_counts(rng, n_rows, n_cols, k, shape=0.5):
    """``(X, mean)``: Poisson counts (CSR) with mean ``Z W'`` for Gamma(``shape``) factors."""
    true_rows = rng.gamma(shape, 1.0, (n_rows, k))
    true_cols = rng.gamma(shape, 2.0, (n_cols, k))
    mean = true_rows @ true_cols.T
    return sp.csr_matrix(rng.poisson(mean).astype(float)), mean
