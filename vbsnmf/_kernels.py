"""Numba kernels: every loop over nonzeros or matrix entries in vbsnmf lives here.

Notation of ``docs/model.md``. The variational-Bayes kernels see the count matrix as
compressed sparse rows along a *major* axis (``indptr``, ``indices``, ``counts``); the
other axis is the *minor* one. Which of cells and genes is major is the caller's choice
(`_vb.py` takes the longer axis, so the per-chunk accumulators are on the shorter one).

Race-free parallel scatter-add: the major axis is cut into ``n_chunks`` contiguous ranges
of about equal nonzeros; one chunk owns its major rows outright and writes its minor-side
statistics into its own slab ``minor_partial[chunk]``, summed afterwards in chunk order.
The result therefore depends on the number of chunks (normally the thread count) but not
on how the threads are scheduled: a fixed ``random_state`` and thread count give
bitwise-identical fits.

Log-space safety: rows of ``exp(E[log z])`` are stored divided by their maximum
(``*_scaled`` times ``exp(*_logmax)``), so the fast path multiplies numbers in (0, 1].
When the normaliser of one nonzero still falls below ``tiny`` (the two rows peak on
different components and everything else underflowed, which happens for prior shapes
near 1e-3), that nonzero is redone by log-sum-exp from ``E[log]`` itself.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _exp_shifted_log_rho(major_elog_row, minor_elog_row, phi):
    """Slow path of one nonzero: ``phi_l = exp(log rho_l - max_l log rho_l)`` with
    ``log rho_l = E[log z_il] + E[log w_jl]``; returns (max, sum_l phi_l)."""
    n_components = phi.shape[0]
    peak = -np.inf
    for l in range(n_components):
        value = float(major_elog_row[l]) + float(minor_elog_row[l])
        phi[l] = value
        peak = max(peak, value)
    total = 0.0
    for l in range(n_components):
        phi[l] = math.exp(phi[l] - peak)
        total += phi[l]
    return peak, total


# Reassociation lets LLVM vectorise the K-long sums; no flag assumes away NaN or inf.
_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def update_shapes(
    indptr,
    indices,
    counts,
    chunk_bounds,
    major_scaled,
    major_logmax,
    major_elog,
    minor_scaled,
    minor_logmax,
    minor_elog,
    tiny,
    major_stat,
    minor_partial,
    data_term_partial,
):
    """updateA in one pass over the nonzeros.

    For each nonzero (i, j, x): responsibilities ``phi_l`` proportional to
    ``exp(E[log z_il] + E[log w_jl])``; ``x * phi`` is added to ``major_stat[i]`` and to
    ``minor_partial[chunk, j]``; ``x * log(sum_l exp(...))`` to ``data_term_partial[chunk]``.

    Parameters
    ----------
    indptr, indices, counts
        CSR arrays along the major axis.
    chunk_bounds
        ``n_chunks + 1`` major-row boundaries; chunk ``c`` owns rows
        ``chunk_bounds[c]:chunk_bounds[c + 1]``.
    major_scaled, major_logmax, major_elog
        ``exp(E[log]) / exp(max_l E[log])`` (n_major x K), the row maxima (n_major,) and
        ``E[log]`` (n_major x K) of the major-side factors; likewise ``minor_*``.
    tiny
        Normalisers below this take the log-sum-exp path.
    major_stat
        Output, n_major x K, overwritten: ``sum_j x_ij phi_ijl``.
    minor_partial
        Output, n_chunks x n_minor x K, overwritten: per-chunk ``sum_i x_ij phi_ijl``.
    data_term_partial
        Output, n_chunks: per-chunk ``sum x log(sum_l exp(E[log z] + E[log w]))``.

    Returns
    -------
    int
        Number of nonzeros that took the log-sum-exp path.
    """
    n_chunks = chunk_bounds.shape[0] - 1
    n_components = major_scaled.shape[1]
    fallbacks = np.zeros(n_chunks, dtype=np.int64)
    for chunk in prange(n_chunks):
        phi = np.empty(n_components, dtype=np.float64)
        row_acc = np.empty(n_components, dtype=np.float64)
        minor_acc = minor_partial[chunk]
        minor_acc[:] = 0.0
        data_term = 0.0
        n_fallback = 0
        for i in range(chunk_bounds[chunk], chunk_bounds[chunk + 1]):
            row_acc[:] = 0.0
            row_logmax = float(major_logmax[i])
            row_data = 0.0  # sum x (log normaliser - row_logmax) over the row
            row_count = 0.0
            for n in range(indptr[i], indptr[i + 1]):
                j = indices[n]
                x = float(counts[n])
                total = 0.0
                for l in range(n_components):
                    value = float(major_scaled[i, l]) * float(minor_scaled[j, l])
                    phi[l] = value
                    total += value
                if total > tiny:
                    log_norm = math.log(total) + float(minor_logmax[j])
                else:
                    n_fallback += 1
                    peak, total = _exp_shifted_log_rho(major_elog[i], minor_elog[j], phi)
                    log_norm = math.log(total) + peak - row_logmax
                row_data += x * log_norm
                row_count += x
                scale = x / total
                for l in range(n_components):
                    contribution = phi[l] * scale
                    row_acc[l] += contribution
                    minor_acc[j, l] += contribution
            for l in range(n_components):
                major_stat[i, l] = row_acc[l]
            data_term += row_data + row_logmax * row_count
        data_term_partial[chunk] = data_term
        fallbacks[chunk] = n_fallback
    return fallbacks.sum()


@njit(parallel=True, cache=True)
def log_factorial_sum(counts, chunk_size):
    """``sum_n lgamma(x_n + 1)``, the constant part of the ELBO's data term.

    Summed in fixed chunks so the result does not depend on thread scheduling.
    """
    n = counts.shape[0]
    n_chunks = (n + chunk_size - 1) // chunk_size
    partial = np.zeros(max(n_chunks, 1), dtype=np.float64)
    for chunk in prange(n_chunks):
        total = 0.0
        for k in range(chunk * chunk_size, min(n, (chunk + 1) * chunk_size)):
            total += math.lgamma(float(counts[k]) + 1.0)
        partial[chunk] = total
    return partial.sum()
