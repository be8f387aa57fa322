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

from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp

from ._utils import counted, is_integer, switch_is_on

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
# What to do instead, in the Python API's words (the command line says it with its options).
BATCH_ADVICE = (
    'Use the streaming stochastic fit (solver="svi" reading from a file: a backed .h5ad or a '
    "10x folder), which holds only a minibatch of cells in memory, or lower n_components or "
    "n_threads"
)
# The classical solvers' (`vbsnmf.classic._memory`), which hold a sparse X twice and a
# dense one whole in float64 (for which the first advice comes before it)
CLASSIC_ADVICE = (
    "Lower n_components, or fit counts with vbsnmf.VBNMF (solver='svi' reads a backed .h5ad "
    "or a 10x folder a minibatch of cells at a time)"
)
CLASSIC_DENSE_ADVICE = "Pass X as a scipy.sparse matrix (a dense X is held whole, as float64). "
CELLS_FORM_ADVICE = (
    "Lower n_components, fit in float32 (dtype='float32'), or fit a subset of the cells"
)


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


def _membership_paths(membership: Path) -> tuple[str | None, str | None]:
    """This process's cgroup paths, v2's and v1's memory controller's, as
    ``/proc/self/cgroup`` lists them (``0::/path`` and ``N:...memory...:/path``); None
    for one it does not list or that leads outside the mounted tree (``/..``)."""
    v2_path = v1_path = None
    try:
        lines = membership.read_text().splitlines()
    except (OSError, ValueError):
        return None, None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path.startswith("/") or ".." in path.split("/"):
            continue
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    return v2_path, v1_path


def _enclosing_folders(base: Path, own: str | None) -> list[Path]:
    """``base`` joined with the cgroup path ``own`` and each folder above it up to
    ``base`` itself, deepest first: a limit set on any of them binds this process."""
    parts = [] if own is None else [part for part in own.split("/") if part]
    return [base.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _read_limit(text: str) -> int | None:
    """A cgroup memory limit's text as bytes, or None for no limit (``max``, v1's
    near-2**63 or ``-1``) and for text that is not a number (an emulated or damaged file,
    which must not stop every fit)."""
    try:
        limit = int(text)
    except ValueError:
        return None
    return None if limit < 0 or limit >= 1 << 60 else limit


def _cgroup_headroom(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> int | None:
    """The smallest memory limit minus usage (reclaimable page cache not counted as used)
    of this process's cgroup (named in ``membership``) and of each cgroup above it, or None
    without a limit. cgroup v2 first, then v1. A batch scheduler's or a systemd unit's limit
    is set on a cgroup below the root (Slurm's ``job_N``), which the root's files do not
    show."""
    v2_path, v1_path = _membership_paths(membership)
    layouts = (
        (root, v2_path, "memory.max", "memory.current", "inactive_file"),
        (
            root / "memory",
            v1_path,
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "total_inactive_file",
        ),
    )
    for base, own, limit_name, usage_name, cache_key in layouts:
        headrooms, found = [], False
        for directory in _enclosing_folders(base, own):
            try:
                limit_text = (directory / limit_name).read_text().strip()
                usage = int((directory / usage_name).read_text().strip())
            except (OSError, ValueError):
                continue
            found = True
            limit = _read_limit(limit_text)
            if limit is None:
                continue
            reclaimable = 0
            try:
                for line in (directory / "memory.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == cache_key:
                        reclaimable = int(value)
            except (OSError, ValueError):
                pass
            headrooms.append(max(limit - usage + reclaimable, 0))
        if found:
            return min(headrooms) if headrooms else None
    return None


def guard_disabled() -> bool:
    """True when the environment variable ``VBSNMF_NO_MEMORY_GUARD`` turns the checks off
    (`_utils.switch_is_on`: ``0``, ``false``, ``no`` and ``off`` leave them on)."""
    return switch_is_on(_DISABLE_VARIABLE)


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
    # Python integers: numpy's int64 (a matrix's .nnz) wraps past 2**63 without a word
    n_rows, n_cols = (int(n) for n in shape)
    nnz, n_components = int(nnz), int(n_components)
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
    if guard_disabled() or not is_integer(n_components):
        return
    n_arrays = _CELLS_FORM_ARRAYS[bool(learned_prior)]
    needed = (int(shape[0]) + int(shape[1])) * int(n_components) * n_arrays
    needed *= np.dtype(dtype).itemsize
    available = available_memory()
    if available is None or needed <= available:
        return
    raise InsufficientMemoryError(
        f"this fit needs about {format_bytes(needed)} of memory for the factors of "
        f"{shape[0]} cells x {shape[1]} genes with K={n_components} (SVI reads a minibatch of "
        f"cells at a time, but holds every cell's factors) but only {format_bytes(available)} "
        f"is available. {CELLS_FORM_ADVICE}; set VBSNMF_NO_MEMORY_GUARD=1 to fit anyway."
    )


def _is_numeric_frame(X) -> bool:
    """True for a dense pandas DataFrame of numpy numbers (bool, integer, float) alone;
    sparse and nullable columns, text and others are left to the validation."""
    if type(X).__name__ != "DataFrame" or not hasattr(X, "dtypes") or X.ndim != 2:
        return False
    return len(X.dtypes) > 0 and all(
        isinstance(dtype, np.dtype) and dtype.kind in "biuf" for dtype in X.dtypes
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

    Inputs that are not a 2-D array, sparse matrix or numeric pandas DataFrame, or an
    ``n_components`` that is not an integer between 1 and min(X.shape), are left to the
    validation that follows, which explains them.
    """
    if guard_disabled():
        return None
    if not is_integer(n_components):
        return None
    if sp.issparse(X) and X.ndim == 2:
        major_layout = "csr" if X.shape[0] >= X.shape[1] else "csc"
        nnz, input_kind = int(X.nnz), ("csr" if X.format == major_layout else "sparse")
        count_itemsize = X.dtype.itemsize
    elif isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype != object:
        nnz, input_kind = int(np.count_nonzero(X)), "dense"
        count_itemsize = X.dtype.itemsize
    elif _is_numeric_frame(X):  # a table of counts read with pandas (read_csv)
        # column by column: no copy of the whole table before the guard has spoken
        nnz = sum(int(np.count_nonzero(column.to_numpy())) for _, column in X.items())
        input_kind, count_itemsize = "dense", max(dtype.itemsize for dtype in X.dtypes)
    else:
        return None
    shape = tuple(int(n) for n in X.shape)
    if not 1 <= n_components <= min(shape):  # the K-range error says it better
        return None
    threads = numba.config.NUMBA_NUM_THREADS if n_threads is None else n_threads
    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    estimate = estimate_fit_memory(
        shape,
        nnz,
        int(n_components),
        n_threads=threads,
        dtype=dtype,
        n_init=n_init,
        input_kind=input_kind,
        count_itemsize=4 if count_itemsize <= 4 else _COUNT_ITEMSIZE,
        learned_prior=learned_prior,
    )
    available = available_memory()
    if available is None or estimate["total"] <= available:
        return estimate
    raise InsufficientMemoryError(
        f"this fit needs about {format_bytes(estimate['total'])} of memory (count matrix "
        f"{format_bytes(estimate['counts'])}, factors {format_bytes(estimate['factors'])} for "
        f"{shape[0]} x {shape[1]} with K={n_components}, per-thread accumulators "
        f"{format_bytes(estimate['accumulators'])} for {counted(threads, 'thread')}) but only "
        f"{format_bytes(available)} is "
        f"available. {BATCH_ADVICE}; set VBSNMF_NO_MEMORY_GUARD=1 to fit anyway."
    )
