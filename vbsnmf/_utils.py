"""Helpers every layer of vbsnmf may import: thread control, Dask detection, warnings.

This module imports nothing else of vbsnmf, so importing it can never close a cycle.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator

import numba
import numpy as np
import sklearn

# Frames in these folders are skipped when a warning is attributed: vbsnmf's own, and
# scikit-learn's (its set_output wrapper sits between the user and fit_transform).
_INTERNAL_DIRS = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(sklearn.__file__)) + os.sep,
)


def warn_user(message: str, category: type[Warning]) -> None:
    """`warnings.warn` attributed to the first frame outside vbsnmf and scikit-learn, so
    the warning names the user's line however deep in the library it was raised."""
    frame, stacklevel = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, stacklevel = frame.f_back, stacklevel + 1
    warnings.warn(message, category, stacklevel=stacklevel)


def check_n_threads(n_threads: int | None) -> int:
    """``n_threads`` as the number of Numba threads to use: None means all of them, more
    than there are is capped; anything but a positive integer is refused."""
    available = numba.config.NUMBA_NUM_THREADS
    if n_threads is None:
        return available
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)):
        raise TypeError(f"n_threads must be an integer or None, got {n_threads!r}")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    return int(min(n_threads, available))


@contextlib.contextmanager
def numba_threads(n_threads: int | None) -> Iterator[int]:
    """Run the block with ``n_threads`` Numba threads (see `check_n_threads`); yields the
    count used."""
    n_threads = check_n_threads(n_threads)
    previous = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        yield n_threads
    finally:
        numba.set_num_threads(previous)


def is_dask_array(X) -> bool:
    """Whether ``X`` is a `dask.array.Array`, without importing dask when it is not loaded."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(X, module.Array)
