"""NNDSVDa (Boutsidis and Gallopoulos 2008), scikit-learn's default start of `NMF`, as the
means a batch fit can start from (`_model.svd_start`): non-negative factors built from the
counts' leading singular vectors, here from a truncated SVD by randomized subspace
iteration (Halko, Martinsson and Tropp 2011). Only sparse products with the counts and
arrays of (cells + genes) x (K + 10); nothing of the size of cells x genes."""

from __future__ import annotations

import numpy as np

# Halko et al.'s oversampling, and the power iterations scikit-learn's `randomized_svd`
# takes for K below a tenth of the smaller dimension (a start needs the leading
# subspace, not its last digits).
_OVERSAMPLES = 10
_POWER_ITERATIONS = 4


def truncated_svd(matrix, rank: int, rng: np.random.Generator):
    """The ``rank`` leading singular triplets ``(left, values, right)`` of a scipy sparse
    ``matrix`` (counts in any dtype: the products are float64), left ``n x r``, right
    ``r x m``, ``r = min(rank, n, m)``."""
    n_rows, n_cols = matrix.shape
    width = min(rank + _OVERSAMPLES, n_rows, n_cols)
    basis, _ = np.linalg.qr(matrix @ rng.standard_normal((n_cols, width)))
    for _ in range(_POWER_ITERATIONS):  # orthonormalised each time: no loss of the tail
        basis, _ = np.linalg.qr(matrix.T @ basis)
        basis, _ = np.linalg.qr(matrix @ basis)
    left, values, right = np.linalg.svd(np.asarray((matrix.T @ basis).T), full_matrices=False)
    rank = min(rank, width)
    return basis @ left[:, :rank], values[:rank], right[:rank]


def nonnegative_factors(left, values, right, n_components: int):
    """Boutsidis and Gallopoulos' non-negative factors ``(W n x K, H K x m)`` of singular
    triplets (``left`` n x r, ``right`` r x m): the first pair's absolute values, then for
    each further pair the larger (by the product of norms) of its positive and its negative
    parts, normalised and scaled by the square root of the singular value times that
    product; components past ``r`` (or whose parts vanish) are zero."""
    rows, cols = np.zeros((left.shape[0], n_components)), np.zeros((n_components, right.shape[1]))
    rows[:, 0] = np.sqrt(values[0]) * np.abs(left[:, 0])
    cols[0] = np.sqrt(values[0]) * np.abs(right[0])
    for component in range(1, min(n_components, len(values))):
        parts = []
        for sign in (1.0, -1.0):
            u = np.maximum(sign * left[:, component], 0.0)
            v = np.maximum(sign * right[component], 0.0)
            norm_u, norm_v = np.linalg.norm(u), np.linalg.norm(v)
            parts.append((norm_u * norm_v, u, v, norm_u, norm_v))
        mass, u, v, norm_u, norm_v = max(parts, key=lambda part: part[0])
        if mass > 0:
            weight = np.sqrt(values[component] * mass)
            rows[:, component] = weight * u / norm_u
            cols[component] = weight * v / norm_v
    return rows, cols


def nndsvda_means(matrix, n_components: int, rng: np.random.Generator, floor: float):
    """NNDSVDa's ``(row_factors n x K, col_factors m x K)`` of ``matrix``
    (`nonnegative_factors` of its `truncated_svd`), exact zeros filled with the mean
    count (the "a"; scikit-learn's ``init="nndsvda"`` first zeroes entries below 1e-6,
    a threshold of the data's scale that this start does not need), every entry at least
    ``floor``."""
    n_rows, n_cols = matrix.shape
    rows, cols = nonnegative_factors(*truncated_svd(matrix, n_components, rng), n_components)
    cols = np.ascontiguousarray(cols.T)
    mean_count = float(matrix.sum()) / (n_rows * n_cols)
    for factors in (rows, cols):
        factors[factors == 0.0] = mean_count
        np.maximum(factors, floor, out=factors)
    return rows, cols
