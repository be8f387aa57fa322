"""Helpers every layer of vbsnmf may import: thread control, Dask detection, warnings,
a `vbsnmf.tl.nmf` fit's record in an AnnData (`vbsnmf.tl` and `vbsnmf.io` read it).

This module imports nothing else of vbsnmf, so importing it can never close a cycle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import reprlib
import sys
import threading
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
    if sys.modules.get("sklearn") is None:  # not loaded (None: blocked from loading)
        return ours
    from sklearn import exceptions  # the package is loaded: this is a lookup

    return _joint_class(ours, getattr(exceptions, name))


@functools.cache
def _joint_class(ours: type, theirs: type) -> type:
    """The subclass of ``ours`` and scikit-learn's ``theirs``, under ``ours``' name and
    module (as tracebacks show it), its instances picklable (`_flavoured_instance`)."""

    def __reduce__(self):
        # pickle finds a class by its module and name, which give ``ours``, not this class
        # ("not the same object"): a multiprocessing worker's NotFittedError reached its
        # parent as MaybeEncodingError. Rebuilt by (ours, scikit-learn's name) instead.
        return _flavoured_instance, (ours, theirs.__name__, self.args), self.__dict__ or None

    namespace = {"__module__": ours.__module__, "__reduce__": __reduce__}
    return type(ours.__name__, (ours, theirs), namespace)


def _flavoured_instance(ours: type, name: str, args: tuple) -> BaseException:
    """An unpickled `sklearn_flavoured` error or warning: of the joint class again
    (scikit-learn is imported for it, as the process that raised it had it loaded), so
    ``except`` clauses on either class still catch it."""
    try:
        import sklearn.exceptions  # noqa: F401  (loaded for `sklearn_flavoured`)
    except ImportError:  # unpickled where scikit-learn is missing: vbsnmf's class alone
        return ours(*args)
    return sklearn_flavoured(ours, name)(*args)


# The packages to install for the modules whose package is named otherwise: "pip install
# umap" installs another project than the umap-learn that scanpy's UMAP imports as umap.
_PACKAGE_OF_MODULE = {"umap": "umap-learn", "sklearn": "scikit-learn"}


def missing_package_advice(error: ImportError) -> str:
    """``error``'s message, and for a module that is not installed (a `ModuleNotFoundError`
    naming it) the package that holds it and the command that installs it."""
    name = getattr(error, "name", None)
    if not isinstance(error, ModuleNotFoundError) or not name:
        return str(error)
    package = _PACKAGE_OF_MODULE.get(name.partition(".")[0], name.partition(".")[0])
    return (
        f"the Python package {package} is not installed ({error}); install it with "
        f"python -m pip install {package}"
    )


def booleans_as_objects(values: np.ndarray) -> np.ndarray:
    """``values`` as booleans when they are an object array holding only True and False
    (what pandas leaves of a column that held missing values once they are filled:
    ``.fillna(False)`` of anndata.concat's outer join); else as they are."""
    if values.dtype != object or values.size == 0:
        return values
    if all(isinstance(value, (bool, np.bool_)) for value in values.ravel()):
        return values.astype(bool)
    return values


def shape_repr(value) -> str:
    """``repr(value)`` of one field of a printed object, with a numpy array as its class,
    shape and dtype (``<ndarray (200, 4) float64>``): the default repr printed every number,
    hundreds of lines for a small data set. A list or tuple of arrays (or of such objects)
    shows each one so, another long list its first items (`reprlib`); a dask array and
    anything else its own repr."""
    if isinstance(value, np.ndarray):
        return f"<{type(value).__name__} {value.shape} {value.dtype}>"
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, np.ndarray) or dataclasses.is_dataclass(v) for v in value):
            shown = ", ".join(shape_repr(v) for v in value)
            return f"[{shown}]" if isinstance(value, list) else f"({shown})"
        return reprlib.repr(value)
    return repr(value)


def brief_repr(value) -> str:
    """``repr(value)`` of a parameter in an error message, or its class and shape for an
    array-like (``ndarray of shape (10, 2)``): a start given as ``init``, where a name is
    meant, filled the message with its numbers. Messages keep these words; a printed
    object's fields take `shape_repr`'s ``<ndarray (10, 2) float64>``."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__} of shape {value.shape}"
    return repr(value)


def fields_repr(instance) -> str:
    """``Name(field=value, ...)`` of a dataclass ``instance`` holding arrays, each value by
    `shape_repr`: the repr of a fitted q or result that a user prints."""
    shown = (
        f"{field.name}={shape_repr(getattr(instance, field.name))}"
        for field in dataclasses.fields(instance)
        if field.repr
    )
    return f"{type(instance).__name__}({', '.join(shown)})"


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 ("1 cell", "3 cells") for messages."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def utf8_text(text: str | os.PathLike) -> str:
    """``text`` from the operating system (a path, a command-line argument) as its bytes
    decoded as UTF-8, the encoding of names on Linux and macOS: the text to record (an
    ``.h5ad``'s ``.uns``, ``params.json``) or to look up by.

    It is ``str(text)`` under a UTF-8 locale; under an ASCII one (``LC_ALL=C`` with
    ``PYTHONUTF8=0``) Python holds UTF-8 bytes as lone surrogates, which an ``.h5ad``
    cannot store and no stored name equals. Bytes that are not UTF-8 stay surrogate
    escapes, as Python holds them."""
    try:
        return os.fsencode(text).decode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:  # text the file system's encoding cannot hold: as given
        return os.fspath(text)


def check_n_threads(n_threads: int | None) -> int:
    """``n_threads`` as the number of Numba threads to use: None means all of them, more
    than there are is capped; anything but a positive integer is refused."""
    available = numba.config.NUMBA_NUM_THREADS
    if n_threads is None:
        return available
    if not is_integer(n_threads):
        raise TypeError(f"n_threads must be an integer or None, got {n_threads!r}")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    return int(min(n_threads, available))


def library_versions(classic: bool = False) -> dict[str, str]:
    """The versions of vbsnmf and of the libraries a fit's bits depend on (Numba and its
    LLVM compile the kernels; numpy and scipy run the rest; a ``classic`` solver's start
    is scikit-learn's randomized SVD and random draws), which a record keeps so that a
    rerun giving other bits can be told apart from another fit. Run from a git checkout of
    vbsnmf, ``"vbsnmf_commit"`` names the commit checked out as vbsnmf was imported
    (`vbsnmf._version.checkout_commit`): the version is the same for every commit."""
    from importlib.metadata import version

    from ._version import CHECKOUT_COMMIT, __version__

    names = ("numpy", "scipy", "numba", "llvmlite", "anndata")
    names += ("scikit-learn",) if classic else ()
    commit = {} if CHECKOUT_COMMIT is None else {"vbsnmf_commit": CHECKOUT_COMMIT}
    return {"vbsnmf": __version__} | commit | {name: version(name) for name in names}


@contextlib.contextmanager
def numba_threads(n_threads: int | None) -> Iterator[int]:
    """Run the block with ``n_threads`` Numba threads (see `check_n_threads`); yields the
    count used."""
    n_threads = check_n_threads(n_threads)
    launch_threading_layer()  # Numba's get_num_threads loads it, failing with a bare error
    previous = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        yield n_threads
    finally:
        numba.set_num_threads(previous)


# Held by tasks that run Numba's parallel kernels where launches must not overlap.
_KERNEL_LAUNCHES = threading.RLock()


def _overlapping_launches_safe() -> bool:
    """Whether threads of this process may launch Numba's parallel kernels at once: not
    under the workqueue threading layer (Numba's fallback when neither TBB nor OpenMP
    loads), which aborts the process when two launches overlap. Unknown until a kernel has
    run (then False: the first task takes the lock)."""
    try:
        return numba.threading_layer() != "workqueue"
    except ValueError:  # no parallel kernel has run in this process yet
        return False


# The threading layer this process inherited when it was forked from a process that had
# loaded one (None otherwise): GNU OpenMP's threads do not survive a fork.
_INHERITED_LAYER: str | None = None


def _note_inherited_layer() -> None:
    """Run in a forked child: which threading layer its parent had loaded, if any."""
    global _INHERITED_LAYER
    try:
        _INHERITED_LAYER = numba.threading_layer()
    except ValueError:  # the parent had run no parallel kernel
        _INHERITED_LAYER = None


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_note_inherited_layer)

FORKED_OPENMP = (
    "vbsnmf cannot run Numba's parallel kernels in this process: it was forked (os.fork, or "
    "multiprocessing's 'fork' start method) from a process that had already run them under "
    "Numba's GNU OpenMP threading layer, which does not survive a fork (Numba would "
    "terminate this process). Start worker processes with multiprocessing's 'spawn' or "
    "'forkserver' method (multiprocessing.get_context('spawn'), or joblib's default loky "
    "backend), fork them before the first fit, or set NUMBA_THREADING_LAYER=workqueue "
    "before the first fit"
)


def _check_not_forked_from_openmp() -> None:
    """A `RuntimeError` (`FORKED_OPENMP`) in a child forked after its parent loaded GNU
    OpenMP: Numba killed such a child with SIGTERM at its first parallel kernel, so a
    ``multiprocessing.Pool`` of them waited forever for results that never came."""
    if _INHERITED_LAYER == "omp":
        from numba.np.ufunc import omppool

        if getattr(omppool, "openmp_vendor", "GNU") == "GNU":  # Intel's OpenMP survives
            raise RuntimeError(FORKED_OPENMP)


def _in_turn(function, args: tuple, kwargs: dict):
    """``function(*args, **kwargs)``, holding the process's launch lock when the threading
    layer needs it (`_overlapping_launches_safe`); a plain call under OpenMP and TBB."""
    if _overlapping_launches_safe():
        return function(*args, **kwargs)
    with _KERNEL_LAUNCHES:
        return function(*args, **kwargs)


def launch_threading_layer() -> None:
    """Load Numba's threading layer now, if no parallel kernel has loaded it yet; a
    `RuntimeError` naming the environment variable when Numba cannot load the layer it
    asks for (``NUMBA_THREADING_LAYER=bogus``, or a ``NUMBA_THREADING_LAYER_PRIORITY``
    that is not an order of Numba's three layers). Loaded by the first kernel, Numba's bare
    ValueError was read as a problem of the counts checked by it ("...; NMF needs raw
    counts: keep the raw counts before normalising")."""
    from numba.np.ufunc import parallel

    # private: a Numba that renamed them reports the failure at the first kernel, as before
    launch = getattr(parallel, "_launch_threads", None)
    if launch is None or getattr(parallel, "_is_initialized", True):
        return
    try:
        launch()
    except ValueError as error:
        raise RuntimeError(threading_layer_failure(error)) from None


def threading_layer_failure(error: ValueError) -> str:
    """What Numba's ``error`` at loading its threading layer means: the environment
    variable that chose the layer, and what to do."""
    reason = " ".join(str(error).split())
    layer = os.environ.get("NUMBA_THREADING_LAYER", "")
    order = os.environ.get("NUMBA_THREADING_LAYER_PRIORITY")
    if "PRIORITY" in reason and order is not None:
        return (
            f"the environment variable NUMBA_THREADING_LAYER_PRIORITY={order!r} is not an "
            f"order of Numba's threading layers tbb, omp and workqueue ({reason}); unset it "
            "or name all three, separated by spaces ('omp tbb workqueue')"
        )
    if layer and layer != "default":
        return (
            f"the environment variable NUMBA_THREADING_LAYER={layer!r} names a threading "
            f"layer that Numba cannot load ({reason}); unset it or name another"
        )
    return f"Numba cannot load a threading layer ({reason})"


class ParallelKernel:
    """A Numba ``parallel=True`` kernel launched as this process allows: one launch at a
    time under the workqueue layer (`_overlapping_launches_safe`), where two threads'
    overlapping launches aborted the interpreter ("Concurrent access has been detected":
    two fits from a ``ThreadPoolExecutor`` or joblib's threading backend), and a clear
    `RuntimeError` in a child forked from a GNU OpenMP process
    (`_check_not_forked_from_openmp`), and one naming the environment variable that asks
    for a threading layer Numba cannot load (`launch_threading_layer`). Every other
    attribute (``signatures``, ``py_func``) is the dispatcher's. Only Python calls it: a
    jitted caller would need the dispatcher itself."""

    def __init__(self, dispatcher) -> None:
        self.dispatcher = dispatcher
        self.__doc__ = dispatcher.__doc__
        self.__name__ = dispatcher.__name__
        self.__qualname__ = dispatcher.__qualname__

    def __call__(self, *args, **kwargs):
        _check_not_forked_from_openmp()
        launch_threading_layer()
        return _in_turn(self.dispatcher, args, kwargs)

    def __getattr__(self, name):
        if name == "dispatcher":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.dispatcher, name)

    def __repr__(self) -> str:
        return f"ParallelKernel({self.dispatcher!r})"


def one_launch_at_a_time(task):
    """``task`` (a Dask task that runs Numba's parallel kernels: a worker runs several at
    once, one per thread) holding a lock of the process when the threading layer needs
    it (`_overlapping_launches_safe`): otherwise two chunks' tasks aborted the worker
    ("Concurrent access has been detected"). Tasks still run side by side under OpenMP
    and TBB."""

    @functools.wraps(task)
    def run(*args, **kwargs):
        return _in_turn(task, args, kwargs)

    return run


def is_dask_array(X) -> bool:
    """Whether ``X`` is a `dask.array.Array`, without importing dask when it is not loaded."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(X, module.Array)


def compute_dask(*arrays) -> list[np.ndarray]:
    """``arrays`` (dask arrays) computed into numpy arrays in one computation, by the
    client holding the futures they read (a distributed fit's cells) when they read any:
    dask's configured scheduler (another client, or ``dask.config.set(scheduler=
    "threads")``) knows none of them and failed with "Missing dependency"."""
    import dask

    # distributed says only "Client is closed" or "lost dependencies"
    scheduler = futures_holder(arrays, CELLS_CLOSED, CELLS_DROPPED, CELLS_ELSEWHERE)
    return [np.asarray(array) for array in dask.compute(*arrays, scheduler=scheduler)]


# What `compute_dask` says of a distributed fit's cells that its cluster no longer holds.
CELLS_CLOSED = (
    "the dask.distributed client that holds the fit's cells is closed, and the cells' "
    "arrays went with it: gather them (DaskFitResult.gather()) before closing the "
    "client, or fit again"
)
CELLS_DROPPED = (
    "the fit's cells were dropped from the dask.distributed cluster since (client.restart() "
    "drops every result it holds): gather them (DaskFitResult.gather()) before restarting "
    "the workers, or fit again"
)
CELLS_ELSEWHERE = (
    "the fit's cells are held by a dask.distributed client of another process or session: "
    "this result was pickled, and a pickle of a dask array keeps the keys of the cluster's "
    "data, not the data: gather them (DaskFitResult.gather()) before pickling, or fit again"
)


def futures_holder(arrays, closed: str, dropped: str, elsewhere: str):
    """The dask.distributed client holding the futures that ``arrays`` (a dask array or a
    tuple of them) read, or None when they read none; a closed one is a `ValueError` saying
    ``closed``, as the arrays' chunks went with it, and so is a cancelled future (by
    ``client.restart()``: distributed's FutureCancelledError "lost dependencies" named
    neither), saying ``dropped``, and futures unpickled in a process that holds none of
    them (a pickled fit result or persisted X, loaded in a new session: distributed binds
    them to no client, and reading them raised a bare AttributeError on None), saying
    ``elsewhere``."""
    if sys.modules.get("distributed") is None:  # futures exist only once it is loaded
        return None
    from distributed import futures_of

    futures = futures_of(arrays)
    if not futures:
        return None
    holder = futures[0].client
    if holder is None:
        raise ValueError(elsewhere)
    if holder.status in ("closing", "closed"):
        raise ValueError(closed)
    if any(future.cancelled() for future in futures):
        raise ValueError(dropped)
    return holder


def check_anndata(adata, name: str = "adata") -> None:
    """A `TypeError` for anything but an AnnData (a matrix of counts, a path, a ``.raw``),
    which the `vbsnmf.tl` and `vbsnmf.pl` functions failed on with a bare AttributeError
    ("'csr_matrix' object has no attribute 'uns'"). Looked up among the loaded modules, as
    `is_dask_array` does: without anndata loaded nothing is an AnnData."""
    module = sys.modules.get("anndata")
    if module is not None and isinstance(adata, module.AnnData):
        return
    if module is not None and isinstance(adata, getattr(module, "Raw", ())):
        raise TypeError(
            f"{name} is an AnnData's .raw, not an AnnData: pass the AnnData itself (use_raw=True "
            "reads its .raw where a tool takes it)"
        )
    if isinstance(adata, (str, bytes, os.PathLike)):
        raise TypeError(
            f"{name} is a path ({os.fsdecode(adata)!r}), not an AnnData: read it first, e.g. "
            "vbsnmf.io.read(path) or anndata.read_h5ad(path)"
        )
    raise TypeError(
        f"{name} must be an AnnData, got {type(adata).__name__}: wrap a matrix of counts as "
        "anndata.AnnData(X), or fit the matrix itself with vbsnmf.VBNMF"
    )


def check_record_key(key, default_key: str = "nmf") -> str:
    """``key`` of a stored record as a plain `str` (a numpy string, from an array of keys,
    was named "np.str_('nmf')" in messages), or a `TypeError` for one that is not a
    string: None was looked up as ``adata.uns[None]`` and the advice was to run the tool
    with ``key_added=None``, which stores its record under ``default_key``; a list failed
    as Python's "unhashable type"."""
    if not isinstance(key, str):
        # tl.select_k's default key_added is its key itself, and it refuses None
        default = "None" if default_key == "nmf" else repr(default_key)
        raise TypeError(
            "key must be the key_added of the stored result, a string (the default "
            f"key_added={default} stores it under {default_key!r}), got {key!r}"
        )
    return str(key)


def stored_record(adata, key: str, marker: str, what: str, tool: str, default_key: str) -> dict:
    """``adata.uns[key]`` as the `vbsnmf.tl` function ``tool`` stores it (a dict holding
    ``marker``), or a `KeyError` (``what``: what the record is) naming the keys of the
    records of that kind that adata holds, and saying to run ``tool`` when ``key`` holds
    nothing, or what it holds instead (another tool's record, which running ``tool`` under
    ``key`` would overwrite, and the tools refuse that); a `TypeError` when ``adata`` is
    not an AnnData (`check_anndata`)."""
    check_anndata(adata)
    key = check_record_key(key, default_key)
    record = adata.uns.get(key)
    if isinstance(record, dict) and marker in record:
        return record
    kind = next(name for name, held in RECORD_MARKERS.items() if held == marker)
    if record_kind(record) == kind:  # the tool's record, its marker deleted (`record_kind`)
        record_entry(record, marker, f"adata.uns[{key!r}]", kind)
    stored = ", ".join(
        repr(name) for name, entry in adata.uns.items() if record_kind(entry) == kind
    )
    if key in adata.uns:
        held = _HELD_RECORDS.get(record_kind(record), "an entry no vbsnmf tool wrote")
        advice = (
            f"pass the key_added of one: {stored}"
            if stored
            else f"adata holds none; run vbsnmf.tl.{tool} under another key_added"
        )
        raise KeyError(f"adata.uns[{key!r}] holds {held}, not the {what} asked for; {advice}")
    run = f"run vbsnmf.tl.{tool}(adata" + ("" if key == default_key else f", key_added={key!r}")
    held_elsewhere = f", or pass the key_added of one adata holds: {stored}" if stored else ""
    raise KeyError(f"adata.uns[{key!r}] holds no {what}; {run}) first{held_elsewhere}")


# Each record kind (`record_kind`) as `stored_record` names it.
_HELD_RECORDS = {
    "fit": "an NMF fit (vbsnmf.tl.nmf)",
    "projection": "a projection (vbsnmf.tl.project)",
    "k_selection": "a K selection (vbsnmf.tl.select_k)",
}

# What a record of each tool holds that the others' do not (`vbsnmf.pl` reads them by it).
RECORD_MARKERS = {"fit": "obsm_key", "projection": "reference_key", "k_selection": "table"}


def record_kind(record) -> str | None:
    """Which tool wrote the ``.uns`` entry ``record``: ``"fit"`` (`tl.nmf`),
    ``"projection"`` (`tl.project`), ``"k_selection"`` (`tl.select_k`), or None (not a
    record of theirs). A record whose marker (`RECORD_MARKERS`) was deleted by hand is told
    by the other entries only its kind writes (`RECORD_OWN_ENTRIES`): more than half of
    them."""
    if not isinstance(record, dict):
        return None
    for kind, marker in RECORD_MARKERS.items():
        if marker in record:
            return kind
    # Taken for no record of vbsnmf's, a record whose marker was deleted was called
    # another tool's ("was sc.pp.neighbors given 'nmf'?", "an entry no vbsnmf tool wrote"),
    # its tool's next run under its key was refused as overwriting entries "held from
    # elsewhere", and the advice was to run that tool. More than half, not one: scanpy's
    # records hold none of these entries, but a dict of the user's may hold one or two.
    for kind, entries in RECORD_OWN_ENTRIES.items():
        if 2 * sum(name in record for name in entries) > len(entries):
            return kind
    return None


# The entries that every record of one kind holds and no record of another kind (its
# marker among them; a fit's solver-dependent entries, the ELBO or loss trace, are left
# out), by which `record_kind` tells a record whose marker was deleted.
RECORD_OWN_ENTRIES = {
    "fit": (
        "obsm_key",
        "usage_key",
        "sqrt_usage_key",
        "varm_key",
        "n_cells",
        "n_genes",
        "cells_digest",
        "genes_digest",
        "factor_share",
        "loading_totals",
        "min_share",
        "n_iter",
        "converged",
    ),
    "projection": ("reference_key", "n_genes_used", "n_genes_missing", "n_cells_without_counts"),
    "k_selection": ("table", "suggested_k", "reason"),
}

# What each kind's record with an entry missing says to do (`record_entry`).
RECORD_REMAKE = {
    "fit": ("fit", "fit again with vbsnmf.tl.nmf"),
    "projection": ("projection", "project again with vbsnmf.tl.project"),
    "k_selection": ("K selection", "run vbsnmf.tl.select_k again"),
}


def fit_info(adata, key: str = "nmf", needs: str = "the fit's record and gene loadings") -> dict:
    """``adata.uns[key]`` of a `vbsnmf.tl.nmf` fit (``key``: its ``key_added``, by default
    ``"nmf"`` as the other tools'), or a `KeyError` saying what to run;
    a record without an entry the tools read (a `KeyError`) or with one they cannot read
    (a `ValueError`) is refused naming the entry (`check_fit_record`), as is an AnnData
    transposed after the fit (``adata.T``: its cell factors in ``.varm``, a `ValueError`).
    Cells that hold only a projection under ``key`` (`vbsnmf.tl.project`) get a `KeyError`
    saying that ``needs`` (what the caller reads of the fit, e.g. "the ELBO trace") is the
    reference fit's.

    Parameters
    ----------
    adata
        AnnData after `vbsnmf.tl.nmf`.
    key
        ``key_added`` of the fit.
    needs
        What the caller reads of the fit, named in the error for cells that hold only a
        projection.

    Returns
    -------
    dict
        The fit's record, ``adata.uns[key]``.
    """
    check_anndata(adata)
    key = check_record_key(key)
    projection_key = f"{key}_projection"
    projection = held_projection(adata, key)
    if projection is not None:
        stated = f"adata holds a projection onto a reference fit (adata.uns[{projection_key!r}], "
        stated += f"from vbsnmf.tl.project), not a fit of its own; the reference holds {needs}"
        reference_key = held_reference_key(adata, projection)
        if reference_key is not None:  # the reference projected onto itself, as advised
            raise KeyError(
                f"{stated}, which adata holds under adata.uns[{reference_key!r}] (the "
                f"projection's reference_key): pass key={reference_key!r} instead"
            )
        raise KeyError(f"{stated}: pass the reference AnnData (tl.project's adata_ref) instead")
    orphaned = orphaned_cell_arrays(adata, key)
    if orphaned and key in adata.uns:
        raise KeyError(
            f"adata.uns[{key!r}] holds an entry no vbsnmf tool wrote, beside the cell factors "
            f"that a fit or projection under this key writes ({', '.join(orphaned)}): "
            f"{replaced_record_cause(key)}, and they cannot be read without it. Fit (or project) "
            "again under another key_added, and give scanpy's tools a key_added of their own"
        )
    if orphaned:
        raise KeyError(
            f"adata.uns[{key!r}] holds no NMF fit, but adata.obsm holds the cell factors "
            f"that a fit or projection under this key writes ({', '.join(orphaned)}) "
            f"without its record (adata.uns[{key!r}] or [{key + '_projection'!r}]): was it "
            "dropped by anndata.concat, which keeps .uns only with uns_merge='same' (and "
            f".varm only with merge='same'){_CONCAT_FIRST}? Concatenate keeping them, or "
            "delete those arrays and fit (vbsnmf.tl.nmf) or project (vbsnmf.tl.project) again"
        )
    record = stored_record(adata, key, "obsm_key", "NMF fit", "nmf", "nmf")
    check_fit_record(record, f"adata.uns[{key!r}]")
    check_not_transposed(adata, key, record)
    check_cells_of_one_fit(adata, key, record)
    return record


def transposed_after_fit(adata, cells_key) -> bool:
    """Whether the cell factors ``cells_key`` that a fit or projection wrote into ``.obsm``
    are in ``adata.varm`` and not in ``adata.obsm``: ``adata.T`` (genes x cells) swaps
    ``.obsm`` and ``.varm`` (and ``.obs`` and ``.var``) with the cells and genes, and keeps
    ``.uns``."""
    obsm, varm = getattr(adata, "obsm", None), getattr(adata, "varm", None)
    if obsm is None or varm is None or not isinstance(cells_key, str):
        return False
    return cells_key not in obsm and cells_key in varm


def check_not_transposed(adata, key: str, record: dict, what: str = "fit") -> None:
    """A `ValueError` when the cell factors of the fit (or, ``what="projection"``, of the
    cells projected, `vbsnmf.tl.project`) ``key`` are in ``adata.varm`` and not in
    ``adata.obsm`` (`transposed_after_fit`). Each tool then said an entry was missing,
    "was it removed, or the AnnData built anew after the fit? Fit again" (a projection's:
    "project again"), though every array was there."""
    cells_key = record["obsm_key"]
    if not transposed_after_fit(adata, cells_key):
        return
    raise ValueError(
        f"the cell factors of the {what} {key!r} are in adata.varm[{cells_key!r}], not in "
        f"adata.obsm: the AnnData was transposed after the {what} (adata.T, which swaps "
        ".obsm and .varm with the cells and the genes); transpose it back, adata = adata.T"
    )


# How far (relative) a cell's factor totals read from its usages may lie from another
# cell's and still be of the same fit: float32 usages round to about 1e-7 relative (arrays
# stored in a coarser dtype get 64 of its epsilons).
_SAME_TOTALS = 1e-4


def check_cells_of_one_fit(adata, key: str, record: dict, projection: bool = False) -> None:
    """A `ValueError` when the cells of ``adata`` hold the factors of more than one fit under
    ``key``. A fit stores each cell's usages as ``z_il t_l / sum_k z_ik t_k`` from its
    factors ``z`` and the fit's factor totals ``t``, so ``usage / z`` is the same vector up
    to a factor for every cell of one fit (of any subset of its cells or genes, and of
    cells projected onto it); ``anndata.concat(..., uns_merge='first', merge='first')`` of
    AnnData fitted apart keeps the first fit's record and gene side over the cells of
    both, which the tools read as one fit without a word. Arrays the other checks refuse
    (missing, of another shape, not finite) are left to them. ``projection``: ``record``
    is that of cells projected onto a reference (`vbsnmf.tl._stored.cell_factors_record`),
    whose totals ``t`` are the reference's: cells projected onto different references and
    joined so were drawn as one projection."""
    factors = adata.obsm.get(record["obsm_key"]) if hasattr(adata, "obsm") else None
    usages = adata.obsm.get(record["usage_key"]) if hasattr(adata, "obsm") else None
    if factors is None or usages is None or is_dask_array(factors) or is_dask_array(usages):
        return
    factors, usages = stored_array(factors), stored_array(usages)
    if (
        factors.shape != usages.shape
        or factors.ndim != 2
        or factors.shape[1] < 2
        or factors.dtype.kind not in "iuf"
        or usages.dtype.kind not in "iuf"
    ):
        return
    # the coarser of the two dtypes sets how closely one fit's cells agree, and how far from
    # underflow a value keeps that precision (arrays stored in float16 to save room, say)
    coarse = max(
        (np.finfo(a.dtype if a.dtype.kind == "f" else np.float64) for a in (factors, usages)),
        key=lambda info: info.eps,
    )
    tolerance = max(_SAME_TOTALS, 64 * float(coarse.eps))
    floor = max(1e-30, 1024 * float(coarse.tiny))
    with np.errstate(all="ignore"):
        kept = (factors > floor) & (usages > floor) & np.isfinite(factors) & np.isfinite(usages)
        totals = np.divide(usages, factors, out=np.zeros(usages.shape), where=kept)
    # each cell's totals t_l / sum_k z_ik t_k over one factor's (the one read for the most
    # cells), which cancels the cell's own sum, against those of the cell read the widest
    anchor = int(np.argmax(kept.sum(axis=0)))
    rows = np.flatnonzero(kept[:, anchor])
    if rows.size < 2:
        return
    if rows.size < len(kept):  # a copy only when some cells are left out
        totals, kept = totals[rows], kept[rows]
    with np.errstate(all="ignore"):  # in place: n_obs x K temporaries are the cost
        totals /= totals[:, anchor : anchor + 1]
        widest = int(np.argmax(kept.sum(axis=1)))
        totals /= totals[widest].copy()
        totals -= 1
        np.abs(totals, out=totals)
    totals[~(kept & kept[widest])] = 0.0
    off = totals.max(axis=1)
    n_other = int(np.count_nonzero(off > tolerance))
    if n_other and projection:
        raise ValueError(
            f"adata's cell factors under {key!r} are not those of one projection: in "
            f"{n_other} of the {counted(rows.size, 'cell')} the usages "
            f"(adata.obsm[{record['usage_key']!r}]) weigh the factors "
            f"(adata.obsm[{record['obsm_key']!r}]) otherwise than in cell "
            f"{adata.obs_names[rows[widest]]!r}, which cells projected onto one reference "
            "fit never do. Is adata an anndata.concat of cells projected onto different "
            "reference fits with uns_merge='first' (which keeps the first projection's "
            "record over the cells of every one), or were these arrays edited? Project the "
            "cells onto one reference with vbsnmf.tl.project (a new projection under this "
            "key replaces them)"
        )
    if n_other:
        raise ValueError(
            f"adata's cell factors under {key!r} are not those of one fit: in "
            f"{n_other} of the {counted(rows.size, 'cell')} the usages "
            f"(adata.obsm[{record['usage_key']!r}]) weigh the factors "
            f"(adata.obsm[{record['obsm_key']!r}]) otherwise than in cell "
            f"{adata.obs_names[rows[widest]]!r}, which no single fit (nor cells projected onto "
            "it) leaves. Is adata an anndata.concat of AnnData fitted apart with "
            "uns_merge='first' (which keeps the first fit's record over the cells of every "
            "fit), or were these arrays edited? Fit the AnnData again with vbsnmf.tl.nmf (a "
            "new fit under this key replaces them), or fit one AnnData and project the "
            "others onto it with vbsnmf.tl.project"
        )


def orphaned_cell_arrays(adata, key: str) -> list[str]:
    """The ``.obsm`` arrays that a `vbsnmf.tl.nmf` fit or `vbsnmf.tl.project` under ``key``
    writes (``X_<key>``, its usages, ``<key>_cell_shape``, ...), when ``adata.uns`` holds
    no record under ``key`` (nor ``key + '_projection'``) but both usage arrays are there:
    no other tool names them so. ``anndata.concat`` drops ``.uns`` by default and keeps
    ``.obsm``; the tools then advised running `vbsnmf.tl.nmf`, which refused the arrays as
    "held from elsewhere". Also when ``adata.uns[key]`` holds an entry no vbsnmf tool
    wrote: scanpy's tools store their own record under ``key_added``
    (`replaced_record_cause`), and ``sc.pp.neighbors(adata, key_added="nmf")`` replaced the
    fit's; the arrays were then called "held from elsewhere" too."""
    if record_kind(adata.uns.get(key)) is not None or f"{key}_projection" in adata.uns:
        return []
    usages = (f"X_{key}_usage", f"X_{key}_sqrt_usage")
    if not all(name in adata.obsm for name in usages):
        return []
    return sorted(
        f".obsm[{name!r}]"
        for name in adata.obsm
        if name in (f"X_{key}", *usages) or name.startswith(f"{key}_cell_")
    )


def replaced_record_cause(key: str) -> str:
    """Why ``adata.uns[key]`` holds another tool's entry beside the cell factors a fit or
    projection under ``key`` wrote (`orphaned_cell_arrays`): scanpy's tools store a record
    of their own under ``.uns[key_added]``, over whatever was there."""
    return (
        f"another tool stored its record in adata.uns[{key!r}] over the one they came from "
        "(scanpy's sc.pp.neighbors, sc.tl.umap and sc.tl.leiden store theirs in .uns under "
        f"the key_added they are given: was one of them given {key!r}?)"
    )


def held_projection(adata, key: str) -> dict | None:
    """``adata.uns[key + '_projection']`` when ``adata`` holds only cells projected under
    ``key`` by `vbsnmf.tl.project` (no fit of its own under ``key``); else None."""
    projection = adata.uns.get(f"{key}_projection")
    if record_kind(adata.uns.get(key)) is None and record_kind(projection) == "projection":
        return projection
    return None


def held_reference_key(adata, projection: dict) -> str | None:
    """The projection record ``projection``'s ``reference_key`` when ``adata`` holds a fit
    under it with the reference's factors (as many, the same ones active: the projection
    records no more of its reference), as when the reference was projected onto itself;
    else None."""
    reference_key = projection.get("reference_key")
    if not isinstance(reference_key, str):
        return None
    reference = adata.uns.get(reference_key)
    if record_kind(reference) != "fit" or "active" not in reference or "active" not in projection:
        return None
    reference_active = np.asarray(reference["active"])
    projected_active = np.asarray(projection["active"])
    same_factors = reference_active.shape == projected_active.shape and bool(
        np.array_equal(reference_active, projected_active)
    )
    return reference_key if same_factors else None


def gene_holder(adata, key: str):
    """``adata.raw`` for a fit of ``.raw`` (its genes, ``.varm`` and ``.var``), else
    ``adata``; a `ValueError` when the fit was of a ``.raw`` that ``adata`` no longer has.
    ``adata.raw.to_adata()`` of a fit of ``.raw`` (its genes, ``.var`` and ``.varm`` with
    the fit's gene side, and the cells' ``.obsm`` and ``.uns``) is its own gene holder:
    it was refused as a ``.raw`` gone, with no way on. Told by the column of the fit's
    gene totals in ``adata.var``, which a fit of ``.raw`` writes into ``.raw.var`` only.
    Here, not in `vbsnmf.tl`, so that `vbsnmf.io` refuses such a fit as the tools do."""
    record = fit_info(adata, key)
    if not record["params"].get("use_raw"):
        check_genes_of_one_fit(adata, key, record, "varm")
        return adata
    if adata.raw is not None:
        check_genes_of_one_fit(adata.raw, key, record, "raw.varm")
        return adata.raw
    # `vbsnmf.tl._stored.FitKeys.total_counts` (that module imports this one)
    if f"{key}_total_counts" in adata.var.columns and record["varm_key"] in adata.varm:
        check_genes_of_one_fit(adata, key, record, "varm")
        return adata
    raise ValueError(
        f"the fit {key!r} was of adata.raw, which adata no longer has: its gene side was in "
        "adata.raw.varm. Read the fit from the AnnData that still has its .raw (or from "
        "adata.raw.to_adata(), which holds the raw genes with it), or fit adata again with "
        "vbsnmf.tl.nmf"
    )


def check_genes_of_one_fit(genes, key: str, record: dict, where: str) -> None:
    """A `ValueError` when more genes of ``genes`` (the fit's gene holder, `gene_holder`;
    its ``.varm`` is ``adata.<where>``) hold loadings of the fit ``key`` than the fit
    fitted (its record's ``n_genes``). Any subset of the fit's genes holds at most as many
    (genes outside ``mask_var`` hold zero rows, and the NaN rows ``anndata.concat(...,
    join="outer")`` pads in are not counted); ``anndata.concat([a, b], axis=1,
    uns_merge='first')`` of AnnData fitted apart keeps the first fit's record over the
    loadings and Gamma parameters of every fit's genes, which `project`, `top_genes` and
    ``warm_start`` read as the first fit's without a word. A record without ``n_genes``
    (written before it was kept) and loadings the other checks refuse (missing, not
    numbers, a dask array) are left as they were."""
    n_genes = record.get("n_genes")
    if n_genes is None:
        return
    if not is_integer(n_genes) or n_genes < 1:
        raise damaged_record(f"adata.uns[{key!r}]['n_genes']", reprlib.repr(n_genes))
    loadings = genes.varm.get(record["varm_key"])
    if loadings is None or is_dask_array(loadings):
        return
    loadings = stored_array(loadings)
    if loadings.ndim != 2 or loadings.dtype.kind not in "biuf":
        return
    with np.errstate(invalid="ignore"):
        held = int(np.count_nonzero((loadings > 0).any(axis=1)))
    if held <= n_genes:
        return
    raise ValueError(
        f"adata's genes under the fit {key!r} are not those of one fit: "
        f"{held} genes hold its loadings (adata.{where}[{record['varm_key']!r}]), and the "
        f"fit fitted {counted(int(n_genes), 'gene')} (adata.uns[{key!r}]['n_genes']). Is "
        "adata an anndata.concat along the genes (axis=1) of AnnData fitted apart, with "
        "uns_merge='first' (which keeps the first fit's record over the genes of every "
        "fit), or were these arrays edited? Fit the AnnData again with vbsnmf.tl.nmf "
        "(without warm_start: a new fit under this key replaces them)"
    )


# The entries a fit's record has held since usages were stored (2026-12-01): a record of
# none of them is of an earlier version's fit.
_ENTRIES_SINCE_USAGES = ("usage_key", "sqrt_usage_key", "active", "factor_share")


_HEX_DIGITS = frozenset("0123456789abcdef")


def check_fit_record(record: dict, where: str) -> None:
    """Refuse a `vbsnmf.tl.nmf` record ``where`` whose entries the tools cannot read: one
    missing (a `KeyError`) or not as the fit writes it (a `ValueError`), saying to fit
    again. The ``variational`` entry's parameters are checked where they are read
    (`vbsnmf.tl._stored.variational_params`)."""
    if not any(name in record for name in _ENTRIES_SINCE_USAGES):
        # a fit of the versions before usages (2026-12-01), which the tools called damaged
        raise KeyError(
            f"{where} was written by an earlier version of vbsnmf, which stored no usages, "
            "active factors nor factor shares ('usage_key', 'active', 'factor_share'): this "
            "version cannot read it; fit again with vbsnmf.tl.nmf"
        )
    for name in ("params", "usage_key", "sqrt_usage_key", "varm_key", "active", "n_iter"):
        record_entry(record, name, where)
    if "factor_share" not in record:
        # Every fit writes it, and two fits never share it: anndata.concat(uns_merge="same")
        # of AnnData fitted apart keeps the entries their records share and drops it, which
        # left a record that passed as one fit over the cell factors of two.
        raise KeyError(
            f"{where} has no 'factor_share' entry, which every fit writes: was it deleted, "
            "or is the AnnData an anndata.concat of AnnData fitted apart? uns_merge='same' "
            "keeps the entries their fits share, but their cell factors are of different "
            "fits; fit the AnnData again with vbsnmf.tl.nmf"
        )
    params = record["params"]
    if not isinstance(params, dict):
        raise damaged_record(
            f"{where}['params']", f"{reprlib.repr(params)}, not a dict of settings"
        )
    n_components = record_entry(params, "n_components", f"{where}['params']")
    if not is_integer(n_components) or n_components < 1:
        raise damaged_record(f"{where}['params']['n_components']", reprlib.repr(n_components))
    for name in ("obsm_key", "usage_key", "sqrt_usage_key", "varm_key"):
        if not isinstance(record[name], str):
            raise damaged_record(f"{where}[{name!r}]", f"{reprlib.repr(record[name])}, not a key")
    active = np.asarray(record["active"])
    if active.dtype != bool or active.shape != (n_components,):
        raise damaged_record(
            f"{where}['active']",
            f"not {n_components} booleans, one per factor: {reprlib.repr(active)}",
        )
    if not is_integer(record["n_iter"]):
        raise damaged_record(
            f"{where}['n_iter']", f"{reprlib.repr(record['n_iter'])}, not an integer"
        )
    # the cells fitted, by which a warm start tells other cells (kept since 2026-12-07)
    n_cells = record.get("n_cells")
    if n_cells is not None and not (is_integer(n_cells) and n_cells >= 1):
        raise damaged_record(f"{where}['n_cells']", reprlib.repr(n_cells))
    # the digests of the names of the cells and genes fitted (`tl._stored.fit_identity`),
    # by which a warm start tells other cells from the fit's own (kept since 2026-12-07):
    # another value would tell every warm start that its cells were swapped
    for name in ("cells_digest", "genes_digest"):
        digest = record.get(name)
        if digest is not None and not (
            isinstance(digest, str) and len(digest) == 16 and _HEX_DIGITS.issuperset(digest)
        ):
            raise damaged_record(
                f"{where}[{name!r}]", f"{reprlib.repr(digest)}, not 16 hexadecimal digits"
            )
    # the sketch of the counts fitted (`tl._stored.fit_identity`), by which a warm start
    # tells other counts in cells and genes of the same names (kept since 2026-12-07)
    if "counts_sketch" in record:
        try:
            sketch = np.asarray(record["counts_sketch"], dtype=np.float64)
        except (TypeError, ValueError):
            sketch = None
        if sketch is None or sketch.shape != (2,) or not (np.isfinite(sketch).all()):
            raise damaged_record(
                f"{where}['counts_sketch']",
                f"{reprlib.repr(record['counts_sketch'])}, not two finite numbers",
            )
    for name in ("elbo_trace", "loss_trace", "factor_share"):
        if name in record:
            values = np.asarray(record[name])
            if values.ndim != 1 or values.dtype.kind not in "biuf":
                raise damaged_record(
                    f"{where}[{name!r}]", f"{reprlib.repr(record[name])}, not a list of numbers"
                )
    # the iteration of each ELBO value (`elbo_iterations`): text failed there with numpy's
    # "invalid literal for int()", fractions and NaN were cast to other ones
    elbo_iter = np.asarray(record["elbo_iter"]) if "elbo_iter" in record else None
    if elbo_iter is not None and not (
        elbo_iter.ndim == 1 and elbo_iter.dtype.kind in "iuf" and whole_numbers(elbo_iter)
    ):
        raise damaged_record(
            f"{where}['elbo_iter']",
            f"{reprlib.repr(record['elbo_iter'])}, not a list of iteration numbers",
        )
    if "variational" in record and not isinstance(record["variational"], dict):
        raise damaged_record(f"{where}['variational']", "not a dict of parameters")


def whole_numbers(values: np.ndarray) -> bool:
    """Whether every value of the numeric array ``values`` is a finite whole number."""
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))


def float_indices_hint(index: np.ndarray, name: str) -> str:
    """Advice for indices ``name`` that arrived as whole, non-negative floats (np.loadtxt,
    a pandas column with a missing value read them so): cast them; empty otherwise (NaN
    and inf are no indices)."""
    # whole_numbers first: min() then compares numbers
    if index.dtype.kind == "f" and index.size and whole_numbers(index) and index.min() >= 0:
        return f"; if they are indices read as floats, pass {name}.astype(np.int64)"
    return ""


def record_entry(record: dict, name: str, where: str, kind: str = "fit"):
    """``record[name]``, or a `KeyError` saying that the record ``where`` (of the kind
    ``kind`` of `record_kind`) lacks it and how to make it again."""
    if name not in record:
        what, remake = RECORD_REMAKE[kind]
        raise KeyError(
            f"{where} has no {name!r} entry, so the record of the {what} is damaged; {remake}"
        )
    return record[name]


def damaged_record(where: str, problem: str) -> ValueError:
    """The `ValueError` for an entry ``where`` of a stored fit that no fit writes."""
    return ValueError(f"{where} is damaged ({problem}); fit again with vbsnmf.tl.nmf")


def check_factor_columns(where: str, values: np.ndarray, n_components: int) -> None:
    """`damaged_record` for the stored array ``where`` unless it is 2-D with one column per
    factor of the fit's ``n_components`` (an array cut by hand to fewer factors: numpy's
    IndexError or broadcast error when a factor's column was picked)."""
    if values.ndim != 2 or values.shape[1] != n_components:
        raise damaged_record(
            where, f"shape {values.shape}, not one column per factor of the fit's {n_components}"
        )


def drawn_seed_below_2_32(random_state: np.random.Generator | np.random.RandomState) -> int:
    """One integer seed in [0, 2**32 - 1], the range of scikit-learn's and scanpy's seeds,
    drawn from a numpy ``Generator`` or ``RandomState``: where vbsnmf hands one of those on
    to a library that takes, or records, only an integer seed (`classic.NMF`'s start,
    `pl.umap`'s scanpy calls, the seed a classical `tl.nmf` fit records)."""
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**32))
    return int(random_state.randint(0, 2**32, dtype=np.int64))


# Values of a switch variable (VBSNMF_NO_MEMORY_GUARD, VBSNMF_DEBUG) that leave it off, in
# any case: a job's settings that wrote "false" or "off" turned the memory guard off
SWITCH_OFF_VALUES = ("", "0", "false", "no", "off")


def switch_is_on(variable: str) -> bool:
    """Whether the environment variable ``variable`` is set to turn its switch on: any
    value but unset, empty, ``0``, ``false``, ``no`` or ``off`` (`SWITCH_OFF_VALUES`)."""
    return os.environ.get(variable, "").strip().lower() not in SWITCH_OFF_VALUES


def is_integer(value) -> bool:
    """``value`` is a whole number where a count is expected: an int or numpy integer, not
    a bool nor a duration (numpy makes ``np.timedelta64`` a subclass of ``np.integer``, so
    ``np.timedelta64(3)`` passed every integer check as 3)."""
    return isinstance(value, (int, np.integer)) and not isinstance(
        value, (bool, np.bool_, np.timedelta64)
    )


def elbo_iterations(info: dict) -> np.ndarray:
    """The iteration (pass, or SVI's epoch) of each ``elbo_trace`` value of the fit record
    ``info``: its ``elbo_iter``; a record written before it was kept numbers its values
    1, 2, ... (right for plain ascent, not for SQUAREM or SVI, which record fewer)."""
    trace = np.asarray(info.get("elbo_trace", []))
    iterations = np.asarray(info.get("elbo_iter", []), dtype=np.int64)
    if iterations.shape != trace.shape:
        return np.arange(1, trace.size + 1)
    return iterations


def check_fit_entries(key: str, *entries: tuple) -> None:
    """A `KeyError` naming the first of ``entries`` that is gone from the AnnData of the fit
    ``key`` (removed, or the AnnData built anew after the fit), saying to fit again; each is
    ``(where, mapping, name)``, e.g. ``("obsm", adata.obsm, "X_nmf")``."""
    for where, mapping, name in entries:
        if name not in mapping:
            raise KeyError(
                f"the fit {key!r} has no .{where}[{name!r}]; was it removed, or the AnnData "
                f"built anew after the fit{concat_dropped(where)}? Fit again with vbsnmf.tl.nmf"
            )


def concat_dropped(where: str) -> str:
    """For a message about a fit's entry missing from ``adata.<where>``: that
    ``anndata.concat`` of cells keeps ``.varm`` and ``.var`` columns only with
    ``merge='same'`` (it keeps the record itself with ``uns_merge='same'``, and the first
    AnnData's ``.raw``), where the message advised only a refit; empty for other places."""
    if where in ("varm", "var"):
        return f" (anndata.concat keeps .{where} only with merge='same'{_CONCAT_FIRST})"
    return ""


# How `anndata.concat` keeps a fit beside cells projected onto it, which hold no record of
# the fit nor gene side: the "same" merges drop what only one AnnData holds, and advising
# them alone sent the user who had passed them round again.
_CONCAT_FIRST = (
    " when every AnnData holds the same; of the reference and cells projected onto it "
    "(vbsnmf.tl.project), with uns_merge='first' and merge='first', the reference first"
)


def stored_array(values) -> np.ndarray:
    """An array a fit stored in ``.obsm`` or ``.varm`` as a numpy array: one kept as a
    scipy sparse matrix (anndata stores and reads it back so) made dense, whose numbers
    ``np.asarray`` wrapped in a 0-d object array (refused as "object values" or "shape
    ()", though it held the fit's numbers)."""
    import scipy.sparse as sp  # scipy: loaded by the tools that read a fit anyway

    return values.toarray() if sp.issparse(values) else np.asarray(values)


def numeric_fit_array(key: str, where: str, mapping, name: str) -> np.ndarray:
    """``mapping[name]``, an array the fit ``key`` stored in ``adata.<where>``, or a
    `ValueError` naming it if it does not hold real numbers (text, objects, complex), which
    a fit never writes: numpy's "ufunc 'greater' did not contain a loop" or "'isfinite' not
    supported" said nothing of where the values came from."""
    values = stored_array(mapping[name])
    if values.dtype.kind not in "biuf":
        raise ValueError(
            f"adata.{where}[{name!r}] of the fit {key!r} holds {values.dtype} values, not "
            "numbers, which vbsnmf.tl.nmf never writes; fit again"
        )
    return values


def finite_fit_array(
    key: str, where: str, mapping, name: str, *, non_negative: bool = False
) -> np.ndarray:
    """``mapping[name]``, an array the fit ``key`` stored in ``adata.<where>`` (``"obsm"``,
    ``"varm"``, ``"raw.varm"``), or a `ValueError` naming it if it holds anything but finite
    numbers (or, with ``non_negative``, a negative one). A fit writes none;
    ``anndata.concat(..., join="outer")`` pads the fit's arrays with NaN rows for the cells
    or genes it joins that the fit never saw, which the tables and tools would otherwise
    carry on as empty fields or a bare "must be finite"."""
    values = numeric_fit_array(key, where, mapping, name)
    finite = np.isfinite(values).all(axis=tuple(range(1, values.ndim)))  # per row
    if not finite.all():
        side = "cells" if where == "obsm" else "genes"
        raise ValueError(
            f"adata.{where}[{name!r}] of the fit {key!r} holds NaN or infinite values in "
            f"{np.count_nonzero(~finite)} of its {len(values)} rows, which vbsnmf.tl.nmf never "
            f"writes: {side} the fit did not see (anndata.concat(..., join='outer') pads "
            f"their rows with NaN)? Keep the fitted {side}"
            + (", project new cells with vbsnmf.tl.project," if side == "cells" else "")
            + " or fit again"
        )
    # an array edited by hand: named, not as the arguments of the function reading it
    # (tl.top_genes said "cell_factors must be finite and non-negative")
    if non_negative and values.min(initial=0) < 0:
        raise ValueError(
            f"adata.{where}[{name!r}] of the fit {key!r} holds negative values, which "
            "vbsnmf.tl.nmf never writes (factors and loadings are non-negative); fit again"
        )
    return values
