"""Memory guard: estimate what a batch fit needs and refuse early when the machine lacks it.

A batch fit holds, at its peak:

- the count matrix as CSR along its longer axis (``nnz`` counts, float32 where exact,
  uint16 in a copy of whole counts up to 65,535, ``nnz`` indices, ``n_major + 1`` row
  pointers), plus a transient second copy when the input is sparse in another layout and
  the COO stage a dense input goes through;
- the factors: the shapes of q before and after an update, their statistics, ``E[log]``
  and its scaled exponential (about four arrays of (rows + columns) x K in the fit's
  dtype) and the float64 temporaries of the KL terms (about four more);
- the per-thread accumulators of the minor-axis statistics, one n_minor x K slab per
  chunk plus their sum.

Swapping to disk makes such a fit crawl and the kernel's OOM killer ends it with no
message, so `check_fit_memory` compares the estimate with the memory the system says is
available (psutil's ``virtual_memory().available`` on every platform, capped by the
cgroup's limit on Linux) and raises `InsufficientMemoryError` first. Where neither can be
read it does nothing.
Set the environment variable ``VBSNMF_NO_MEMORY_GUARD=1`` to skip the check.
"""

from __future__ import annotations

import os
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp

# The arrays of (rows + columns) x K alive at the peak of an iteration, measured with
# tracemalloc (tests/test_numerics.py checks the estimate against a measured peak).
_FACTOR_ARRAYS = 4  # in the fit's dtype
_KL_TEMPORARIES = 4  # float64, whatever the fit's dtype
# The learned prior (the default): rates per entry, and SQUAREM holds up to four q's at once
# (three plus the pass's output; `_batch.fit_batch_accelerated`), beside the pass's tables;
# measured at 93-102 bytes per entry in float64 and 52-61 in float32.
_LEARNED_FACTOR_ARRAYS = 11  # in the fit's dtype
_LEARNED_FLOAT64_ARRAYS = 3  # the statistics, the log rates, the KL's sums
_BEST_FIT_ARRAYS = 2  # n_init > 1 keeps the best fit's shapes while the next one runs
# Counts are stored as float32 where exact (`_validation.exact_float_dtype`; uint16 in a copy
# of whole counts, `_data.as_count_data`): 4 bytes or fewer for inputs held in 4 bytes or
# fewer, 8 (the bound) for the others, which may hold non-integers.
_COUNT_ITEMSIZE = 8
_COO_STAGE_BYTES = 24  # per nonzero: dense input becomes int64 COO before CSR
# The arrays of cells x K (and genes x K) in the fit's dtype that SVI's cells form holds
# at its peak, whatever the size of its minibatches: every cell's q(z), and the q(z) an
# evaluation pass makes beside it. The growth of the resident memory measured 4.1 of them
# under the learned prior and 2.2 under the fixed one (200,000 cells, K=50, float64).
_CELLS_FORM_ARRAYS = {True: 4, False: 2}
_DISABLE_VARIABLE = "VBSNMF_NO_MEMORY_GUARD"


class InsufficientMemoryError(MemoryError):
    """A fit would need more memory than the system has available."""


def _system_available() -> int | None:
    """Memory available without swapping as psutil reports it (``MemAvailable`` on Linux,
    the free and inactive pages on macOS, the available physical memory on Windows), or None
    where psutil cannot tell."""
    import psutil

    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError, AttributeError):
        return None


def _cgroup_headroom(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The cgroup's memory limit minus its usage (reclaimable page cache not counted as
    used), or None without a limit. cgroup v2 first, then v1."""
    layouts = (
        (root, "memory.max", "memory.current", "inactive_file"),
        (root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
    )
    for directory, limit_name, usage_name, cache_key in layouts:
        try:
            limit_text = (directory / limit_name).read_text().strip()
            usage = int((directory / usage_name).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 1 << 60:  # unlimited
            return None
        reclaimable = 0
        try:
            for line in (directory / "memory.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == cache_key:
                    reclaimable = int(value)
        except (OSError, ValueError):
            pass
        return max(int(limit_text) - usage + reclaimable, 0)
    return None


def guard_disabled() -> bool:
    """True when the environment variable ``VBSNMF_NO_MEMORY_GUARD`` turns the checks off."""
    return os.environ.get(_DISABLE_VARIABLE, "").strip() not in ("", "0")


def available_memory() -> int | None:
    """Bytes a new allocation can take without swapping, or None where unknown."""
    known = [value for value in (_system_available(), _cgroup_headroom()) if value is not None]
    return min(known) if known else None


def estimate_fit_memory(
    shape: tuple[int, int],
    nnz: int,
    n_components: int,
    *,
    n_threads: int = 1,
    dtype=np.float64,
    n_init: int = 1,
    input_kind: str = "csr",
    count_itemsize: int = _COUNT_ITEMSIZE,
    learned_prior: bool = True,
) -> dict[str, int]:
    """Bytes a batch `VBNMF` fit needs at its peak, by part.

    Parameters
    ----------
    shape
        (rows, columns) of the count matrix.
    nnz
        Number of stored nonzeros (an upper bound is fine: duplicates, explicit zeros).
    n_components
        K.
    n_threads
        Threads of the fit; one accumulator slab per thread (at most one per major row).
    dtype
        The fit's float dtype (float32 or float64).
    n_init
        Random starts; more than one keeps the best fit alive beside the running one.
    count_itemsize
        Bytes per stored count inside the engine (4 where float32 is exact, else 8).
    input_kind
        ``"csr"``: X is CSR along its longer axis (CSC when it has more columns), used as
        it is; ``"sparse"``: another sparse layout, converted (a transient second copy);
        ``"dense"``: a dense array, which passes through COO.
    learned_prior
        The learned (hierarchical) prior, `VBNMF`'s default; False for the fixed Gamma
        prior, whose rates are per component and whose fit is plain coordinate ascent.

    Returns
    -------
    dict
        ``counts``, ``factors``, ``accumulators`` and their ``total``, in bytes.
    """
    n_rows, n_cols = (int(n) for n in shape)
    n_major, n_minor = max(n_rows, n_cols), min(n_rows, n_cols)
    itemsize = np.dtype(dtype).itemsize
    index_itemsize = 4 if max(nnz, n_major) < 2**31 else 8
    counts = nnz * (count_itemsize + index_itemsize) + (n_major + 1) * index_itemsize
    if input_kind not in ("csr", "sparse", "dense"):
        raise ValueError(f"input_kind must be 'csr', 'sparse' or 'dense', got {input_kind!r}")
    if input_kind == "sparse":
        counts += nnz * (count_itemsize + index_itemsize)
    elif input_kind == "dense":
        counts += nnz * _COO_STAGE_BYTES
    factor_entries = (n_rows + n_cols) * n_components
    if learned_prior:
        factor_arrays_bytes = _LEARNED_FACTOR_ARRAYS * itemsize + _LEARNED_FLOAT64_ARRAYS * 8
    else:
        factor_arrays_bytes = _FACTOR_ARRAYS * itemsize + _KL_TEMPORARIES * 8
    if n_init > 1:
        factor_arrays_bytes += _BEST_FIT_ARRAYS * itemsize
    factors = factor_entries * factor_arrays_bytes
    n_chunks = max(1, min(int(n_threads), n_major))
    accumulators = (n_chunks + 1) * n_minor * n_components * itemsize
    return {
        "counts": counts,
        "factors": factors,
        "accumulators": accumulators,
        "total": counts + factors + accumulators,
    }


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def format_bytes(n_bytes: int) -> str:
    """``n_bytes`` in the largest binary unit that keeps it at least 1 (B to TiB)."""
    value, unit = float(n_bytes), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"


def check_cells_form_memory(
    shape: tuple[int, int], n_components, *, dtype, learned_prior: bool = True
) -> None:
    """Raise `InsufficientMemoryError` if the factors of an SVI fit of the cells form
    (streamed from a file, or in memory), which holds every cell's q(z) however few cells
    it reads at a time, need more memory than is available: before the pass over the
    file, which the OOM killer ended with no message. An ``n_components`` that is not an
    integer is left to the validation that follows."""
    if guard_disabled() or isinstance(n_components, bool):
        return
    if not isinstance(n_components, (int, np.integer)):
        return
    n_arrays = _CELLS_FORM_ARRAYS[bool(learned_prior)]
    needed = (int(shape[0]) + int(shape[1])) * int(n_components) * n_arrays
    needed *= np.dtype(dtype).itemsize
    available = available_memory()
    if available is None or needed <= available:
        return
    raise InsufficientMemoryError(
        f"this fit needs about {_gib(needed)} of memory for the factors of {shape[0]} cells "
        f"x {shape[1]} genes with K={n_components} (SVI reads a minibatch of cells at a "
        f"time, but holds every cell's factors) but only {_gib(available)} is available. "
        "Lower n_components, fit in float32 (dtype='float32'), or fit a subset of the "
        "cells; set VBSNMF_NO_MEMORY_GUARD=1 to fit anyway."
    )


def check_fit_memory(
    X,
    n_components,
    *,
    n_threads: int | None,
    dtype,
    n_init: int = 1,
    learned_prior: bool = True,
) -> dict[str, int] | None:
    """Raise `InsufficientMemoryError` if a batch fit of ``X`` needs more memory than is
    available; return the estimate (None when it was not checked). ``learned_prior`` as
    `estimate_fit_memory`'s.

    Inputs that are not a 2-D array or sparse matrix, or an ``n_components`` that is not
    an integer between 1 and min(X.shape), are left to the validation that follows, which
    explains them.
    """
    if guard_disabled():
        return None
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)):
        return None
    if sp.issparse(X) and X.ndim == 2:
        major_layout = "csr" if X.shape[0] >= X.shape[1] else "csc"
        nnz, input_kind = int(X.nnz), ("csr" if X.format == major_layout else "sparse")
    elif isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype != object:
        nnz, input_kind = int(np.count_nonzero(X)), "dense"
    else:
        return None
    if not 1 <= n_components <= min(X.shape):  # the K-range error says it better
        return None
    threads = numba.config.NUMBA_NUM_THREADS if n_threads is None else n_threads
    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    estimate = estimate_fit_memory(
        X.shape,
        nnz,
        int(n_components),
        n_threads=threads,
        dtype=dtype,
        n_init=n_init,
        input_kind=input_kind,
        count_itemsize=4 if X.dtype.itemsize <= 4 else _COUNT_ITEMSIZE,
        learned_prior=learned_prior,
    )
    available = available_memory()
    if available is None or estimate["total"] <= available:
        return estimate
    raise InsufficientMemoryError(
        f"this fit needs about {_gib(estimate['total'])} of memory (count matrix "
        f"{_gib(estimate['counts'])}, factors {_gib(estimate['factors'])} for "
        f"{X.shape[0]} x {X.shape[1]} with K={n_components}, per-thread accumulators "
        f"{_gib(estimate['accumulators'])} for {threads} threads) but only "
        f"{_gib(available)} is available. Use the streaming stochastic fit "
        '(solver="svi" reading from a file: a backed .h5ad or a 10x folder), '
        "which holds only a minibatch of cells in memory, or lower n_components or "
        "n_threads; set VBSNMF_NO_MEMORY_GUARD=1 to fit anyway."
    )
