"""Helpers every layer of vbsnmf may import: thread control, Dask detection, warnings,
a `vbsnmf.tl.nmf` fit's record in an AnnData (`vbsnmf.tl` and `vbsnmf.io` read it).

This module imports nothing else of vbsnmf, so importing it can never close a cycle.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Iterator

import numba
import numpy as np

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _internal_dirs() -> tuple[str, ...]:
    """Folders whose frames a warning skips: vbsnmf's own, and scikit-learn's when it is
    loaded (its set_output wrapper sits between the user and fit_transform). Not imported
    here: scikit-learn costs 1.3 s and 90 MiB to load (`_base`)."""
    sklearn = sys.modules.get("sklearn")
    if sklearn is None or getattr(sklearn, "__file__", None) is None:
        return (_PACKAGE_DIR,)
    return _PACKAGE_DIR, os.path.dirname(os.path.abspath(sklearn.__file__)) + os.sep


def warn_user(message: str, category: type[Warning]) -> None:
    """`warnings.warn` attributed to the first frame outside vbsnmf and scikit-learn, so
    the warning names the user's line however deep in the library it was raised. A
    category with a ``_sklearn_name`` is issued as `sklearn_flavoured`."""
    internal = _internal_dirs()
    frame, stacklevel = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        frame, stacklevel = frame.f_back, stacklevel + 1
    name = getattr(category, "_sklearn_name", None)
    if name is not None:
        category = sklearn_flavoured(category, name)
    warnings.warn(message, category, stacklevel=stacklevel)


def sklearn_flavoured(ours: type, name: str) -> type:
    """``ours``, or when scikit-learn is loaded a subclass of ``ours`` and of
    ``sklearn.exceptions.<name>`` (one per pair, so warnings registries see one class)."""
    if "sklearn" not in sys.modules:
        return ours
    from sklearn import exceptions  # the package is loaded: this is a lookup

    return _joint_class(ours, getattr(exceptions, name))


@functools.cache
def _joint_class(ours: type, theirs: type) -> type:
    return type(ours.__name__, (ours, theirs), {"__module__": ours.__module__})


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


def stored_record(adata, key: str, marker: str, what: str, tool: str, default_key: str) -> dict:
    """``adata.uns[key]`` as the `vbsnmf.tl` function ``tool`` stores it (a dict holding
    ``marker``), or a `KeyError` saying to run ``tool`` (``what``: what the record is)."""
    record = adata.uns.get(key)
    if not isinstance(record, dict) or marker not in record:
        raise KeyError(
            f"adata.uns[{key!r}] holds no {what}; run vbsnmf.tl.{tool}(adata"
            + ("" if key == default_key else f", key_added={key!r}")
            + ") first"
        )
    return record


def fit_info(adata, key: str) -> dict:
    """``adata.uns[key]`` of a `vbsnmf.tl.nmf` fit, or a `KeyError` saying what to run."""
    return stored_record(adata, key, "obsm_key", "NMF fit", "nmf", "nmf")
