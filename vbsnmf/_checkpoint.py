"""Checkpoints of a fit in progress: written atomically, read back for ``resume=True``.

A checkpoint is one ``.npz`` file: the variational parameters, the ELBO trace and the
iteration of each of its values, the iteration or epoch counters, the random generator's
state (SVI draws a fresh permutation every epoch) and a ``config`` record of everything
that changes the arithmetic (shape, K, method, priors, thread count, a fingerprint of the
counts, ...). Resuming from it replays exactly the computation an uninterrupted fit would
have done, so the final ELBO trace is bitwise the same; a checkpoint written under a
different configuration or for other data is refused rather than silently mixed (one of
another thread count, as a smaller machine has, is resumed with a warning: the same fit to
rounding), and so is a damaged one (every array is checked for its shape, finiteness and
sign before a kernel sees it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ._atomic import (
    _names,
    atomic_file,
    drop_lock_file,
    link_followed,
    lock_file_of,
    lock_holder,
    take_lock_file,
)
from ._quoting import quoted_path
from ._utils import warn_user

# Written into every checkpoint's metadata: what tells a checkpoint from other .npz files.
FORMAT = "vbsnmf-checkpoint"
# The variational parameters every checkpoint holds (rows x K, K, columns x K, K).
PARAMETERS = ("row_shape", "row_rate", "col_shape", "col_rate")


class CheckpointMismatchError(ValueError):
    """The checkpoint on disk was written by a fit with different settings or data."""

    __module__ = "vbsnmf"  # as tracebacks show it: its public name, not the private module


class CheckpointError(ValueError):
    """A file given as a checkpoint is not a vbsnmf checkpoint, or is damaged; or a file
    of the user's is where the fit would keep its lock file."""

    __module__ = "vbsnmf"  # as tracebacks show it: its public name, not the private module


class CheckpointInUseError(ValueError):
    """Another live fit saves to the same checkpoint: the two would overwrite each other's
    saves, and a resume would continue whichever saved last."""

    __module__ = "vbsnmf"  # as tracebacks show it: its public name, not the private module


def in_use_message(path, lock: Path) -> str:
    """Why a fit may not use checkpoint ``path``: another holds its lock file ``lock``."""
    by = lock_holder(lock) or "another process"
    return (
        f"checkpoint {quoted_path(path)} belongs to a fit running now ({by} holds "
        f"{quoted_path(lock.name)} beside it); wait for it to finish or name another checkpoint"
    )


def foreign_lock_message(path, lock: Path) -> str:
    """Why a fit may not use checkpoint ``path``: a file of the user's is where it keeps its
    lock file, ``lock``."""
    return (
        f"checkpoint {quoted_path(path)} needs the lock file {quoted_path(lock)} beside it, but "
        "something of that name is there that is not a lock file of vbsnmf's; vbsnmf leaves it as "
        "it is: move it, or name another checkpoint"
    )


def save_checkpoint(path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` and the JSON-able ``meta`` to ``path`` atomically
    (`vbsnmf.io.atomic_file`, as every output): a fit killed at any moment leaves either
    the previous checkpoint or the new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # locked: a later run removes the temporary of a save killed midway (`check_checkpoint_path`)
    with atomic_file(path, lock=True) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, __meta__=np.array(json.dumps({**meta, "format": FORMAT})), **arrays)


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` as written by `save_checkpoint`.

    Raises
    ------
    CheckpointError
        The file cannot be read, or is not a checkpoint written by `save_checkpoint`
        (empty, truncated, random bytes, an ``.npz`` without vbsnmf's metadata).
    """
    with _reading(path) as stored:
        meta = _meta(stored, path)
        arrays = {name: _array(stored, name, path) for name in stored.files if name != "__meta__"}
    return arrays, meta


def read_checkpoint_meta(path) -> dict:
    """The metadata of the checkpoint at ``path``, reading none of its arrays (a check
    that a file is a vbsnmf checkpoint before it is overwritten). `CheckpointError` if
    it is not one."""
    with _reading(path) as stored:
        return _meta(stored, path)


def read_checkpoint_trace(path) -> np.ndarray | None:
    """The ELBO trace of the checkpoint at ``path`` (None when it holds none), reading no
    other array (a check of which fit a checkpoint holds, before the fit loads it).
    `CheckpointError` if it is not a checkpoint."""
    with _reading(path) as stored:
        _meta(stored, path)
        return _array(stored, "elbo_trace", path) if "elbo_trace" in stored.files else None


@contextlib.contextmanager
def _reading(path):
    """``np.load`` of ``path`` with every way it fails on a foreign or damaged file
    turned into a `CheckpointError` naming it."""
    path = Path(path)
    if path.exists() and not (path.is_file() or path.is_dir()):
        # np.load of a FIFO waits for a writer for ever; a device streams for ever
        raise CheckpointError(
            f"checkpoint {quoted_path(path)} is not a regular file (a pipe, device or socket)"
        )
    try:
        # opened here, not by np.load: a truncated archive left numpy's handle open (the
        # error's traceback held it) on the file the message asks the user to remove
        with open(path, "rb") as handle:
            stored = np.load(handle, allow_pickle=False)
            if not isinstance(stored, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an archive")
            with stored:
                yield stored
    except CheckpointError:
        raise
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {quoted_path(path)} is a folder, not a file") from None
    except PermissionError:
        raise CheckpointError(
            f"checkpoint {quoted_path(path)} cannot be read (permission denied)"
        ) from None
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        if "allow_pickle" in reason:  # numpy's advice to unpickle is not for this file
            reason = "not a NumPy .npz archive"
        elif len(reason) > 120:
            reason = reason[:120].rsplit(" ", 1)[0] + " ..."
        raise CheckpointError(
            f"{quoted_path(path)} is not a vbsnmf checkpoint (unreadable, empty, truncated or "
            f"another kind of file: {reason}); name another path or remove it"
        ) from None


def _array(stored, name: str, path) -> np.ndarray:
    """Member ``name`` of the open archive ``stored``, read; `CheckpointError` when its
    header claims more values than the member holds (numpy allocates the claimed array
    before reading: a damaged header of 10**13 rows raised numpy's MemoryError, which the
    command line reported as the machine's memory running out)."""
    try:
        return stored[name]
    except MemoryError:
        member = name if name in stored.zip.namelist() else f"{name}.npy"
        with stored.zip.open(member) as handle:
            version = np.lib.format.read_magic(handle)
            if version not in ((1, 0), (2, 0)):  # np.savez writes these
                raise
            read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
            shape, _, dtype = read_header(handle)
        claimed = math.prod(shape) * dtype.itemsize
        stored_bytes = stored.zip.getinfo(member).file_size
        if claimed <= stored_bytes:  # a real array too large for this machine
            raise
        raise CheckpointError(
            f"{quoted_path(path)} is not a vbsnmf checkpoint (damaged: its array {name} claims "
            f"{claimed:,} bytes, and the file holds {stored_bytes:,} for it); name another path or "
            "remove it"
        ) from None


def _meta(stored, path) -> dict:
    if "__meta__" not in stored.files:
        raise CheckpointError(
            f"{quoted_path(path)} is not a vbsnmf checkpoint (an archive without vbsnmf's "
            "metadata); name another path or remove it"
        )
    try:
        meta = json.loads(str(_array(stored, "__meta__", path)))
    except RecursionError:  # JSON nested deeper than Python's stack: damaged, not a crash
        raise CheckpointError(
            f"{quoted_path(path)} is not a vbsnmf checkpoint (its metadata nests deeper than any "
            "checkpoint's); name another path or remove it"
        ) from None
    if not isinstance(meta, dict) or meta.pop("format", None) != FORMAT:
        raise CheckpointError(
            f"{quoted_path(path)} is not a vbsnmf checkpoint (its metadata is not vbsnmf's); name "
            "another path or remove it"
        )
    return meta


# Settings recorded from 2026-12-02 on: a checkpoint written before holds none of them and
# is taken to match (its fit ran with the settings the resume gives, or the user changed
# them unrecorded, as that version allowed).
# ``warm_start`` (`VBNMF.fit` given ``init``) from 2026-12-07 on: that version resumed a
# checkpoint whatever the start.
LATER_KEYS = frozenset({"local_fit", "eval_every", "warm_start"})
# Settings recorded since, with the value a checkpoint written before meant: every start
# was random until NNDSVDa came.
LATER_KEY_VALUES = {"init": "random"}
# Settings a solver does not use (SVI never accelerates, batch VB draws no minibatches),
# which checkpoints written before recorded whatever they were set to: not compared for a
# fit of that solver.
UNUSED_BY_SOLVER = {"accelerate": "svi", "batch_size": "batch"}
# Config keys that record the data, not a setting: a checkpoint differing in these alone was
# written for other data.
DATA_KEYS = frozenset({"shape", "nnz", "total_count", "data_fingerprint"})
# Config keys that record several parameters, by the parameters' names (as the user sets
# them), so that a mismatch names the parameter: the local fits' [max_iter, tol].
COMBINED_KEYS = {"local_fit": ("max_iter", "tol")}


def recorded_seed(random_state, entropy: int) -> int | None:
    """What a checkpoint records of ``random_state``: an integer as it is; for a
    Generator or RandomState the ``entropy`` the fit drew from it (`_model.seed_entropy`), which
    the same generator in the same state gives again and another does not; None for None
    (fresh entropy, which the checkpoint's generator state carries on)."""
    if random_state is None:
        return None
    if isinstance(random_state, (int, np.integer)):
        return int(random_state)
    return int(entropy)


def warn_if_beyond(estimator, n_done: int, limit: int | None = None) -> None:
    """Warn when a resumed fit of ``estimator`` (`VBNMF`, `VBNTF`) returns a checkpoint of
    more iterations (batch) or epochs (SVI) than its ``max_iter`` or ``n_epochs`` ask for
    (the checkpoint's fit is returned as it is); ``limit``: the epochs the fit ran to when
    ``n_epochs`` is None (its default, which depends on the data)."""
    if not estimator.resume:
        return
    batch = estimator.solver == "batch"
    unit = "iterations" if batch else "epochs"
    if limit is None:
        limit = estimator.max_iter if batch else estimator.n_epochs
    if limit is not None and n_done > limit:
        warnings.warn(
            f"the checkpoint {estimator.checkpoint} already holds {n_done} {unit}, more than "
            f"the {limit} asked for: its fit is returned as it is",
            UserWarning,
            stacklevel=4,
        )


def check_config(meta: dict, config: dict, path) -> None:
    """Raise `CheckpointMismatchError` unless the checkpoint's config equals ``config``
    (`CheckpointError` when it has none that can be read); warn when only the thread count
    differs, which changes the order of sums, not the fit."""
    stored = meta.get("config", {})
    if not isinstance(stored, dict):
        raise CheckpointError(
            f"checkpoint {quoted_path(path)} is damaged: its settings are {stored!r}; remove it to "
            "start over"
        )
    start_over = "remove it, or start over without resuming"
    if _recorded_before_solver(stored):
        # its settings under their first names: compared key by key, the same fit was
        # refused as "a different fit (method: checkpoint 'batch' vs now None, ...)"
        raise CheckpointMismatchError(
            f"checkpoint {quoted_path(path)} was written by an earlier version of vbsnmf, which "
            f"recorded the fit's settings under other names (method={stored['method']!r}, where "
            "this version records solver, and the prior as prior_shape and prior_rate): this "
            f"version cannot resume it; {start_over}"
        )
    written_by, fitting = _estimator_of(stored), _estimator_of(config)
    # the two estimators record some settings by other names: say whose checkpoint it is
    if stored and written_by != fitting:
        raise CheckpointMismatchError(
            f"checkpoint {quoted_path(path)} was written by {written_by}, and this is a {fitting} "
            f"fit; {start_over}"
        )
    stored = {**{k: v for k, v in LATER_KEY_VALUES.items() if k in config}, **stored}
    stored, config = _batch_as_run(stored), _batch_as_run(config)
    differing = sorted(
        key
        for key in set(stored) | set(config)
        if stored.get(key) != config.get(key)
        and not (key in LATER_KEYS and key not in stored)
        and UNUSED_BY_SOLVER.get(key, "") != config.get("solver")
    )
    threads = "n_threads" in differing
    differing = [key for key in differing if key != "n_threads"]
    if not differing:
        if threads:  # a resume on a machine of fewer cores was refused: hours of fit lost
            warn_user(
                f"checkpoint {quoted_path(path)} was written with "
                f"n_threads={stored.get('n_threads')!r}; this fit runs "
                f"n_threads={config.get('n_threads')!r}: it continues, the same fit to rounding, "
                "not bit for bit the uninterrupted one",
                UserWarning,
            )
        return
    if differing == ["data_fingerprint"]:
        raise CheckpointMismatchError(
            f"checkpoint {quoted_path(path)} was written for other data (the same shape, nonzeros "
            "and total count, but other counts or counts at other positions, such as cells or "
            f"genes in another order); {start_over}"
        )
    # the fingerprint is a hash, which says nothing a user can check: other counts are
    # told by the shape, nonzeros and total that differ, or in words
    data_keys = [key for key in differing if key in DATA_KEYS]
    shown = [key for key in differing if key != "data_fingerprint" or data_keys == [key]]
    details = ", ".join(
        _difference(key, name, then, now)
        for key in shown
        for name, then, now in _by_parameter(key, stored.get(key), config.get(key))
    )
    written = "for other data" if data_keys == differing else "by a different fit"
    if "shape" in data_keys and _transposed(stored.get("shape"), config.get("shape")):
        # the same cells and genes read the other way round (X.T, an .mtx read with the
        # other orientation): "remove it" alone threw away a fit the data as first read
        # resume
        details += f"; {TRANSPOSED_DATA}"
        start_over = f"pass the data as the checkpoint's fit read them, or {start_over}"
    raise CheckpointMismatchError(
        f"checkpoint {quoted_path(path)} was written {written} ({details}); {start_over}"
    )


# How `check_config` says that the data are the transpose of the checkpoint's.
TRANSPOSED_DATA = "the data now have the shape of its transpose, cells and genes swapped"


def _transposed(stored_shape, shape) -> bool:
    """Whether the checkpoint's recorded ``stored_shape`` is ``shape`` (the data now)
    transposed, and not square (where the transpose has the same shape)."""
    try:
        stored_shape, shape = [int(n) for n in stored_shape], [int(n) for n in shape]
    except (TypeError, ValueError):  # a damaged record: the shapes are shown as they are
        return False
    return len(shape) == 2 and shape[0] != shape[1] and stored_shape == shape[::-1]


def _difference(key: str, name: str, then, now) -> str:
    """One setting (or record of the data) ``name`` of config ``key`` in which a checkpoint
    (``then``) differs from the fit (``now``), in words where the record is a hash (of
    the counts, of ``mask``'s entries), whose hex digits say nothing a user can check."""
    if key == "data_fingerprint":
        return "counts: other counts or counts at other positions (the same shape and total)"
    if key == "warm_start":
        warm = "a warm start (VBNMF.fit's init, tl.nmf's warm_start)"
        if then:
            return (
                f"start: the checkpoint's fit began at {warm}, this fit at its own start: "
                "give the same start to resume it"
            )
        return (
            f"start: the checkpoint's fit began at its own start, this fit at {warm}, which "
            "resuming it would drop"
        )
    if key == "mask":
        if then is None or now is None:
            then_words, now_words = ("without", "with") if then is None else ("with", "without")
            return f"mask: the checkpoint's fit ran {then_words} one, this fit {now_words}"
        return "mask: other missing entries than the checkpoint's fit"
    if key == "random_state":
        # A Generator's or RandomState's record is the entropy its fit drew from it (no seed
        # the user gave; below 2**32 only by a chance of 2**-31): a generator drawn from
        # since (by another fit, or pickled inside the fit's callback) was refused with two
        # numbers of no meaning to its user.
        drawn = [isinstance(seed, int) and seed >= 2**32 for seed in (then, now)]
        if drawn == [False, True]:
            return (
                f"random_state: the checkpoint's fit was given random_state={then!r}, this "
                f"fit a Generator or RandomState (which gave it the entropy {now!r}): give "
                f"random_state={then!r} again to resume it"
            )
        if drawn[0]:
            return (
                f"random_state: checkpoint {then!r} vs now {now!r}, the entropy a "
                "Generator or RandomState gave the checkpoint's fit: such a generator "
                "resumes only in the state it had when that fit began (a fresh "
                "np.random.default_rng(seed) of that fit's seed), not once it gave a fit "
                "its entropy"
            )
    return f"{name}: checkpoint {then!r} vs now {now!r}"


def _recorded_before_solver(config: dict) -> bool:
    """Whether a matrix checkpoint's ``config`` is of the versions before 2026-12-01's
    ``solver`` and ``prior``, which recorded the solver as ``method`` (`VBNTF`'s records
    have always named it ``solver``)."""
    return "method" in config and "solver" not in config and "svi_mode" not in config


def _estimator_of(config: dict) -> str:
    """The estimator whose fit ``config`` records: `VBNTF`'s records its ``svi_mode``
    (since its first checkpoint), `VBNMF`'s never does."""
    return "VBNTF (a tensor)" if "svi_mode" in config else "VBNMF (a matrix)"


def _batch_as_run(config: dict) -> dict:
    """``config`` with its SVI ``batch_size`` as the fit runs it: one past the items it
    draws from (cells or slices of ``svi_mode``, or nonzeros) is all of them, the same fit
    (`_svi.fit_svi_cells`, `_tensor.fit_svi`), whichever larger size was given."""
    batch, shape, nnz = config.get("batch_size"), config.get("shape"), config.get("nnz")
    form, mode = config.get("svi_form"), config.get("svi_mode") or 0
    if not (isinstance(batch, int) and isinstance(shape, list)):
        return config  # batch fits, and damaged records, which compare as they are
    sliced = form in ("cells", "slices") and isinstance(mode, int) and mode < len(shape)
    # the items drawn from: a form of cells or slices needs no nnz (the command line's
    # check before a conversion has none), the nonzero forms do
    whole = shape[mode] if sliced else nnz
    return {**config, "batch_size": min(batch, max(whole, 1))} if isinstance(whole, int) else config


_RECORDED_PRIOR = re.compile(
    r"HierarchicalPrior\(factor_shape=(?P<factor>[^)]*)\)"
    r"|GammaPrior\(shape=(?P<shape>[^,]*), rate=(?P<rate>[^)]*)\)"
)


def _prior_words(recorded):
    """A prior as a checkpoint records it (``repr`` of `_model.GammaPrior` or
    `_model.HierarchicalPrior`) in the parameters that set it: ``'gamma' (prior_shape=1.0,
    prior_rate=1.0)``, ``'hierarchical'``; anything else as it is."""
    match = _RECORDED_PRIOR.fullmatch(recorded) if isinstance(recorded, str) else None
    if match is None:
        return recorded
    if match["shape"] is not None:
        return _Words(f"'gamma' (prior_shape={match['shape']}, prior_rate={match['rate']})")
    factor = match["factor"]
    return _Words("'hierarchical'" + ("" if factor == "None" else f" (prior_shape={factor})"))


class _Words(str):
    """Text shown as it is in a mismatch's ``{value!r}``."""

    def __repr__(self) -> str:
        return str(self)


def _by_parameter(key: str, then, now) -> list[tuple[str, object, object]]:
    """``(name, checkpoint's value, current value)`` of config ``key``, split into the
    parameters it records (`COMBINED_KEYS`) where both values hold one each, so that the
    differing ones are named as the user sets them (``tol``, not ``local_fit``)."""
    if key == "prior":  # recorded as the prior's repr: named as the user sets it
        return [("prior", _prior_words(then), _prior_words(now))]
    names = COMBINED_KEYS.get(key)
    split = names is not None and all(
        isinstance(value, list) and len(value) == len(names) for value in (then, now)
    )
    if not split:
        return [(key, then, now)]
    return [(name, a, b) for name, a, b in zip(names, then, now) if a != b]


def check_accelerated_progress(meta: dict, trace: np.ndarray, damaged) -> None:
    """Raise ``damaged(what)`` unless an accelerated fit's counters
    (`_batch.AcceleratedState.to_arrays`) are whole and consistent with its ELBO trace."""
    passes, step_max, previous = (meta.get(n) for n in ("n_passes", "step_max", "previous"))
    if not (isinstance(passes, int) and not isinstance(passes, bool) and passes >= 0):
        raise damaged(f"its pass counter is {passes!r}")
    if not (_finite_number(step_max) and step_max >= 1):
        raise damaged(f"its SQUAREM step bound is {step_max!r}")
    if "previous" not in meta or not (previous is None or _finite_number(previous)):
        raise damaged(f"its last ELBO is {previous!r}")
    # Every pass but the first (the start's) keeps its q, bar the refused candidates, at
    # most one per SQUAREM cycle of two kept plain passes: T + 1 <= passes <= 1.5 (T + 1).
    n_kept = trace.size
    plausible = passes == n_kept == 0 or n_kept + 1 <= passes <= 1.5 * (n_kept + 1)
    if not plausible or not isinstance(meta.get("converged"), bool):
        raise damaged(f"{n_kept} ELBO values for {passes} passes")
    check_hold_flag(meta, "holding", damaged)
    # the max_iter of a fit saved at the start of the cycle it cut short
    # (`_batch.AcceleratedSaves`): one or two passes on, as a cycle takes up to three
    stopped_at = meta.get("max_iter", passes + 1)
    if isinstance(stopped_at, bool) or not isinstance(stopped_at, int):
        raise damaged(f"its max_iter is {stopped_at!r}")
    if not passes < stopped_at <= passes + 2:
        raise damaged(f"its max_iter {stopped_at} is not one or two passes after {passes}")


def check_hold_flag(meta: dict, name: str, damaged, can_hold: bool = True) -> None:
    """Raise ``damaged(what)`` unless the checkpoint's hold flag ``name`` (plain batch's
    ``hold_shapes``, SQUAREM's ``holding``, SVI's ``held``: whether the fit holds a random
    start's factor shapes, docs/model.md "The hold") is a bool or absent (checkpoints saved
    before the hold), and false unless the fit's prior learns factor shapes (``can_hold``).
    Read with ``bool()``, a hand-edited ``"false"`` would hold the fit; a true flag under
    a prior without shapes to learn failed with an AttributeError, or kept the fit from
    stopping (the fixed prior)."""
    flag = meta.get(name, False)
    if not isinstance(flag, bool):
        raise damaged(f"its hold flag is {flag!r} ({name!r}), not true or false")
    if flag and not can_hold:
        raise damaged(
            f"its hold flag is true ({name!r}), but its prior has no factor shapes to learn"
        )


def learns_factor_shapes(recorded_prior) -> bool:
    """Whether the prior a matrix checkpoint's config records (``repr`` of
    `_model.HierarchicalPrior` or `_model.GammaPrior`) learns its factor shapes, which
    only then a fit holds (`_model.held_prior`)."""
    recorded = str(recorded_prior)
    return recorded.startswith("HierarchicalPrior(") and "factor_shape=None" in recorded


def _finite_number(value) -> bool:
    """A real number (not a bool) that a float holds finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond any float
        return False


# Names of the arrays only a learned prior's checkpoint holds (with or without SQUAREM's
# ``current_`` / ``kept_``): each side's scales and hyperparameters, SVI's sums over cells.
_LEARNED_ONLY = re.compile(
    r"(?:row|col)_(?:scale_shape|scale_rate|factor_shape|scale_prior)$|^cell_sums_"
)


def check_state(arrays: dict[str, np.ndarray], meta: dict, config: dict, path) -> None:
    """Raise `CheckpointError` unless the checkpoint's arrays and counters are a state the
    fit of ``config`` could have saved: every parameter array present with its shape and
    dtype, finite and positive (under the learned prior also the scales' q and the
    hyperparameters, under the fixed prior none of them nor SVI's sums over cells, which
    read when present failed with a KeyError or numpy's unpacking error; an accelerated
    fit holds two such sets, ``current_`` and ``kept_``);
    a finite ELBO trace and the iterations of its values; whole counters. Its config is
    checked first (`check_config`), so a damaged file that kept its settings is caught
    here, before a kernel reads out of bounds or a fit runs on NaN."""
    n_rows, n_cols = config["shape"]
    k = config["n_components"]
    learned = "Hierarchical" in str(config.get("prior"))
    per_entry = learned or config.get("mask") is not None  # rates per entry

    def damaged(what: str):
        return CheckpointError(
            f"checkpoint {quoted_path(path)} is damaged: {what}; remove it to start over"
        )

    def check_array(name: str, shapes, dtype) -> None:
        if name not in arrays:
            raise damaged(f"{name} is missing")
        array = arrays[name]
        if array.shape not in shapes or array.dtype != np.dtype(dtype):
            raise damaged(
                f"{name} is {array.dtype} of shape {array.shape}, expected {np.dtype(dtype)} "
                f"of shape {' or '.join(map(str, shapes))}"
            )
        if not np.all(np.isfinite(array)) or not np.all(array > 0):
            raise damaged(f"{name} holds values that are not positive and finite")

    # the fit's config says what it saved (its arrays may be damaged)
    accelerated = config.get("accelerate") is True and config["solver"] == "batch"
    if not learned:  # read when present (`params_from_arrays`, `_svi.progress_from_arrays`)
        foreign = sorted(name for name in arrays if _LEARNED_ONLY.search(name))
        if foreign:
            raise damaged(
                f"it holds {foreign[0]}, an array of the learned prior, which the fixed "
                "prior has not"
            )
    for prefix in ("current_", "kept_") if accelerated else ("",):
        for name, side in zip(PARAMETERS, (n_rows, n_rows, n_cols, n_cols)):
            shapes = [(side, k)]
            if name.endswith("rate"):
                shapes = [(k,), (side, k)] if per_entry else [(k,)]
            check_array(prefix + name, shapes, config["dtype"])
        if learned:
            for side, n in (("row", n_rows), ("col", n_cols)):
                check_array(f"{prefix}{side}_scale_shape", [(n,)], np.float64)
                check_array(f"{prefix}{side}_scale_rate", [(n,)], np.float64)
                check_array(f"{prefix}{side}_factor_shape", [(k,)], np.float64)
                check_array(f"{prefix}{side}_scale_prior", [(2,)], np.float64)
    batch = config["solver"] == "batch"
    trace = checked_trace(arrays, meta, damaged, batch, rounding_of_elbo(config))
    if accelerated:
        check_accelerated_progress(meta, trace, damaged)
    elif batch:
        check_hold_flag(meta, "hold_shapes", damaged, learns_factor_shapes(config.get("prior")))
    if config["solver"] == "svi":
        check_svi_progress(meta, trace, damaged, learns_factor_shapes(config.get("prior")))
    last = last_iteration(meta, trace, accelerated, config["solver"] == "svi")
    check_elbo_iter(arrays, trace, last, damaged)
    if config["solver"] == "svi":
        check_step_statistics(
            arrays,
            "gene_step_",
            {"gene_step_stat": (n_cols, k), "gene_step_cell_mean_sum": (k,)},
            damaged,
        )
        if learned:
            sums = arrays.get("cell_sums_scale")
            factor_log = arrays.get("cell_sums_factor_log")
            if sums is None or sums.shape != (3,) or factor_log is None or factor_log.shape != (k,):
                raise damaged("the sums over cells of the learned prior are missing")
            if not (np.all(np.isfinite(sums)) and np.all(np.isfinite(factor_log))):
                raise damaged("the sums over cells of the learned prior are not finite")
            check_scale_sums(sums, n_rows, "cells", damaged)


def check_scale_sums(sums: np.ndarray, n_local: int, rows: str, damaged) -> None:
    """Raise ``damaged(what)`` unless the stored sums over the local rows of the learned
    prior (`_model.ScaleSums`: their number, sum E[xi], sum E[log xi]), finite, are over
    all ``n_local`` of them and their scales' means sum above 0: the hyperparameters'
    update divides by both, and damaged ones made the next step's q non-finite, reported
    as a step too long."""
    if sums[0] != n_local or not sums[1] > 0:
        raise damaged(
            f"the sums over {rows} of the learned prior are over {sums[0]:g} {rows} with "
            f"scales' means summing to {sums[1]:g}, expected {n_local} {rows} and a sum above 0"
        )


# A batch fit's trace never decreases; by more than this (relative) it is not the fit's:
# float32's rounding moves an entry by some 1e-8.
BATCH_TRACE_SLACK = 1e-6


def rounding_of_elbo(config: dict) -> float:
    """How far rounding alone can move a batch fit's ELBO (nats), from the checkpoint's
    ``config``: its data term and log(x!) are each about ``total log(total / nnz)``, held
    to the precision of the fit's dtype. Counts near the dtype's limit (one count of 1e13
    in float64, of 2**24 in float32) make that larger than the ELBO's changes, and the
    fit's own trace decreased by more than `BATCH_TRACE_SLACK`: its checkpoint was then
    refused as damaged."""
    total, nnz = config.get("total_count"), config.get("nnz")
    if not (_finite_number(total) and isinstance(nnz, int) and total > 0 and nnz > 0):
        return 0.0
    epsilon = float(np.finfo(np.dtype(config.get("dtype", "float64"))).eps)
    return 64.0 * epsilon * total * (1.0 + math.log1p(total / nnz))


def checked_trace(
    arrays: dict[str, np.ndarray], meta: dict, damaged, batch: bool = False, rounding=0.0
) -> np.ndarray:
    """A loaded checkpoint's ELBO trace (1-D, float, finite; for a ``batch`` fit never
    decreasing, beyond `BATCH_TRACE_SLACK` and ``rounding``, `rounding_of_elbo`) after
    checking it and the 'finished' flag; ``damaged(what)`` builds the error raised."""
    trace = arrays.get("elbo_trace")
    if trace is None or trace.ndim != 1 or not np.issubdtype(trace.dtype, np.floating):
        raise damaged("elbo_trace is missing or not a 1-D float array")
    if not np.all(np.isfinite(trace)):
        raise damaged("elbo_trace holds values that are not finite")
    if np.any(trace > 0):  # the ELBO bounds log p(x) <= 0, the log-probability of counts
        raise damaged("elbo_trace holds positive values, which no ELBO of counts takes")
    if batch and np.any(np.diff(trace) < -(BATCH_TRACE_SLACK * np.abs(trace[1:]) + rounding)):
        raise damaged("its ELBO trace decreases, which coordinate ascent's never does")
    if not isinstance(meta.get("finished"), bool):
        raise damaged("its 'finished' flag is missing")
    return trace


def last_iteration(meta: dict, trace: np.ndarray, accelerated: bool, svi: bool) -> int:
    """The iteration a checkpoint's fit had reached, from its checked counters: the
    passes of an accelerated fit, the epochs of SVI, else (plain ascent, one ELBO value
    per iteration) the trace's length."""
    if accelerated:
        return meta["n_passes"]
    return meta["epoch"] if svi else trace.size


def check_elbo_iter(arrays: dict[str, np.ndarray], trace: np.ndarray, last: int, damaged) -> None:
    """Raise ``damaged(what)`` unless the checkpoint's ``elbo_iter`` (the iteration of each
    ELBO value) is one integer per value of ``trace``, strictly increasing from at least 1
    to at most ``last`` (`last_iteration`). Checkpoints written before it was recorded
    hold none (`restored_elbo_iter` derives it)."""
    iters = arrays.get("elbo_iter")
    if iters is None:
        return
    if iters.shape != trace.shape or not np.issubdtype(iters.dtype, np.integer):
        raise damaged(f"elbo_iter is not {trace.size} integers, one per ELBO value")
    if iters.size and not (iters[0] >= 1 and np.all(np.diff(iters) > 0) and iters[-1] <= last):
        raise damaged(f"elbo_iter does not increase strictly from 1 to at most {last}")


def restored_elbo_iter(
    arrays: dict[str, np.ndarray], last: int, eval_every: int | None = None
) -> list[int]:
    """The iteration (pass or epoch) of each ELBO value of a checked checkpoint whose fit
    had reached iteration ``last`` (`last_iteration`): as stored.

    A checkpoint written before they were recorded holds the values only; then the
    iterations are derived, exact where they are determined. SVI (``eval_every``)
    evaluated every ``eval_every``-th epoch and at the last one of a run: the values
    take those epochs in order (exact unless an earlier run ended between two multiples
    and was resumed). A batch fit (no ``eval_every``), and SVI when the trace holds more
    values than that schedule, puts them at the latest iterations up to ``last``: plain
    ascent's 1..n (exact), SQUAREM's passes (exact unless an extrapolation was refused:
    its pass kept no q, and the values before it are then placed a pass or more late)."""
    stored = arrays.get("elbo_iter")
    if stored is not None:
        return [int(i) for i in stored]
    n_values = arrays["elbo_trace"].size
    if eval_every is not None:
        schedule = list(range(eval_every, last + 1, eval_every))
        if last % eval_every:
            schedule.append(last)
        if n_values <= len(schedule):
            return schedule[:n_values]
    return list(range(last - n_values + 1, last + 1))


def check_step_statistics(
    arrays: dict[str, np.ndarray], prefix: str, expected: dict[str, tuple[int, ...]], damaged
) -> None:
    """An SVI fit saved at an evaluation (or that ended at ``n_epochs``) keeps the
    statistics of the exact step it is still to take (`_svi.SVIState.gene_statistics`,
    `_tensor.TensorSVIState.step_statistics`), the arrays whose names start with
    ``prefix``: none, or every one of ``expected`` (name: shape) and no other, each finite
    and >= 0 (sums of counts and means)."""
    present = sorted(name for name in arrays if name.startswith(prefix))
    if not present:
        return
    if present != sorted(expected):
        raise damaged(f"the statistics of its next step are {present}, expected {sorted(expected)}")
    for name, shape in expected.items():
        values = arrays[name]
        if values.shape != shape or not (np.all(np.isfinite(values)) and np.all(values >= 0)):
            raise damaged(
                f"{name}, a statistic of its next step, is not finite >= 0 of shape {shape}"
            )


def check_svi_progress(meta: dict, trace: np.ndarray, damaged, can_hold: bool = True) -> None:
    """An SVI checkpoint's step and epoch counters, converged and hold flags (``can_hold``:
    its prior learns factor shapes, `check_hold_flag`) and generator state."""
    check_hold_flag(meta, "held", damaged, can_hold)
    counters = [meta.get(name) for name in ("step", "epoch")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counters):
        raise damaged(f"its step and epoch counters are {counters}")
    if trace.size > counters[1] or not isinstance(meta.get("converged"), bool):
        raise damaged(f"{trace.size} ELBO values for {counters[1]} epochs")
    try:
        rng_from_json(meta["rng"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
        raise damaged(f"its random generator state is unreadable ({error})") from None


# Lock files that this process took before its fit began (`held_for_fit`, the command
# line's, at its start), keyed by the lock file's absolute path: the fit's `Checkpointer`
# adopts the one of its checkpoint rather than take it again, which the lock already held
# refused as in use.
_HANDED_LOCKS: dict[Path, int] = {}


def holds_handed_lock(lock: Path) -> bool:
    """Whether ``lock`` is a lock file this process holds for a fit about to begin
    (`held_for_fit`), which the fit's checks must not take for another fit's."""
    descriptor = _HANDED_LOCKS.get(Path(lock).absolute())
    return descriptor is not None and _names(descriptor, lock)


@contextlib.contextmanager
def held_for_fit(path):
    """Hold the lock file of checkpoint ``path`` (None: nothing) from now to the end of the
    block, and hand it to the first fit of that checkpoint begun in the block. The command
    line takes it at its start: taken by the fit only once the input was read (or
    converted, minutes for a large .mtx), a second run given the same checkpoint meanwhile
    passed its checks and was refused only then. Nothing is held where the fit would hold
    nothing at its start (the checkpoint's folder does not exist yet, no locks there).

    Raises
    ------
    CheckpointInUseError
        Another live fit holds the lock file.
    CheckpointError
        A file of the user's is where the lock file goes.
    """
    if path is None:
        yield
        return
    path = link_followed(Path(path).absolute())
    lock = lock_file_of(path)
    descriptor = None
    if path.parent.is_dir():
        descriptor = _take(path, lock)
    if descriptor is not None:
        _HANDED_LOCKS[lock] = descriptor
    try:
        yield
    finally:
        # not taken by a fit (the run failed before it began): released here
        if descriptor is not None and _HANDED_LOCKS.get(lock) == descriptor:
            del _HANDED_LOCKS[lock]
            drop_lock_file(lock, descriptor)


def _take(path: Path, lock: Path) -> int | None:
    """`take_lock_file` of checkpoint ``path``'s ``lock``, its refusals said as a fit's."""
    try:
        return take_lock_file(lock)
    except BlockingIOError:
        raise CheckpointInUseError(in_use_message(path, lock)) from None
    except FileExistsError:  # a file of the user's: never truncated nor removed
        raise CheckpointError(foreign_lock_message(path, lock)) from None


class Checkpointer:
    """Where and how often a fit saves itself, and the config it must match on resume.

    ``path=None`` disables saving and loading, so fits without checkpoints share the code.
    ``check(arrays, meta, config, path)`` vets a loaded state (default `check_state`, the
    matrix engine's; the tensor engine passes its own).

    Used as a context manager around the whole fit: it holds a lock file beside the
    checkpoint (`_atomic.take_lock_file`) from the start, or from the first save if the
    folder does not exist yet, to the end, so that a second fit given the same path is
    refused (`CheckpointInUseError`) instead of overwriting the first's saves. A symbolic
    link as ``path`` is followed once, here: the saves go where it points, and so does
    the lock file, which a fit given the link would otherwise take beside the link while
    saving into the file another fit holds. A relative ``path`` is taken from the current
    folder at the start, once: a fit run in a thread of a notebook whose folder changed
    (``%cd``, ``os.chdir``) meanwhile saved its later iterations into the new folder,
    leaving the checkpoint named at the start behind, and its lock file with it.
    """

    def __init__(self, path, every: int, config: dict, check=None):
        # absolute() keeps '..' as given (a link's parent is the kernel's, not the text's)
        self.path = None if path is None else link_followed(Path(path).absolute())
        self.every = every
        self.config = config
        self.check = check_state if check is None else check
        self._lock = None
        self._saved = None  # `_identity` of this fit's last save
        self._found = None  # `_identity` of the file at the path when the fit began

    def __enter__(self) -> Checkpointer:
        if self.path is not None:
            self._found = _identity(self.path)
            if self.path.parent.is_dir():
                self._hold()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._lock is not None:
            drop_lock_file(lock_file_of(self.path), self._lock)
            self._lock = None

    def _hold(self) -> None:
        lock = lock_file_of(self.path)
        handed = _HANDED_LOCKS.pop(lock, None)  # taken for this fit at the command's start
        if handed is not None:
            if _names(handed, lock):
                self._lock = handed
                return
            os.close(handed)  # removed meanwhile (with its folder?): taken again below
        self._lock = _take(self.path, lock)

    def load(self, resume: bool) -> tuple[dict[str, np.ndarray], dict] | None:
        """The stored checkpoint, or None when there is none or not ``resume`` (a fresh
        start, which warns that it overwrites the checkpoint found: a fit run again without
        ``resume`` lost the saved one's hours silently)."""
        if self.path is None or not self.path.exists():
            return None
        if not resume:
            warn_user(
                f"checkpoint {quoted_path(self.path)} holds a saved fit, which this fit "
                "overwrites (resume=False): pass resume=True to continue that fit instead",
                UserWarning,
            )
            return None
        arrays, meta = load_checkpoint(self.path)
        check_config(meta, self.config, self.path)
        self.check(arrays, meta, self.config, self.path)
        return arrays, meta

    def save(self, counter: int, arrays: dict[str, np.ndarray], meta: dict, force=False) -> None:
        """Save when ``counter`` (iterations or epochs done) is a multiple of ``every``, or
        when ``force`` (the end of the fit).

        The lock of a fit whose checkpoint's folder did not exist at its start is taken at
        its first save, which another fit's checkpoint saved there meanwhile stops
        (`CheckpointError`) rather than be overwritten. A lock file removed during the fit
        (with the checkpoint's folder, say) is taken again when nothing was saved at the
        path since this fit's last save; another fit's checkpoint there, or its lock, stops
        this one (`CheckpointError`, `CheckpointInUseError`) rather than overwrite it."""
        if self.path is not None and (force or counter % self.every == 0):
            if self._lock is not None and not _names(self._lock, lock_file_of(self.path)):
                self._lock_lost()
            if self._lock is None:  # its folder made by this save, or no locks there
                self._make_folder()
                self._hold()
                self._refuse_foreign_save()
            save_checkpoint(self.path, arrays, {**meta, "config": self.config})
            self._saved = _identity(self.path)

    def _refuse_foreign_save(self) -> None:
        """Raise `CheckpointError` if the file at the path is neither the one there when the
        fit began nor its last save: another fit given the path saved there while this one
        held no lock (its folder did not exist yet), and would be overwritten."""
        if _identity(self.path) not in (None, self._found, self._saved):
            raise CheckpointError(
                f"checkpoint {quoted_path(self.path)} was saved by another fit while this one ran "
                "(its folder did not exist yet when this fit began, so it held no lock there); "
                "this fit stops rather than overwrite it: name another checkpoint"
            )

    def _lock_lost(self) -> None:
        """The lock file this fit holds no longer names the file it holds: released, and
        refused if another fit may have saved at the path since (its checkpoint would be
        overwritten)."""
        lock = lock_file_of(self.path)
        os.close(self._lock)  # a file no name reaches any more: nothing to remove
        self._lock = None
        if _identity(self.path) not in (None, self._saved):
            raise CheckpointError(
                f"the lock file {quoted_path(lock)} of checkpoint {quoted_path(self.path)} was "
                "removed during the fit (with the checkpoint's folder?), and the checkpoint there "
                "now is not this fit's last save: another fit may be saving there; this fit stops "
                "rather than overwrite it"
            )

    def _make_folder(self) -> None:
        """The checkpoint's folder, made if it is not there (removed during the fit, say);
        `CheckpointError` naming it when something else has its name."""
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise CheckpointError(
                f"checkpoint {quoted_path(self.path)} cannot be saved: {quoted_path(folder)} is "
                "not a folder (was the checkpoint's folder replaced by a file during the fit?); "
                "move that file, or name another checkpoint"
            ) from None


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file at ``path`` is replaced or rewritten (None: no file)."""
    try:
        state = os.stat(path)
    except OSError:
        return None
    return state.st_dev, state.st_ino, state.st_mtime_ns


def rng_state_json(rng: np.random.Generator) -> str:
    """The generator's full state as a JSON string (PCG64 state holds 128-bit integers)."""
    return json.dumps(rng.bit_generator.state)


def rng_from_json(text: str) -> np.random.Generator:
    """A generator in exactly the state `rng_state_json` recorded."""
    state = json.loads(text)
    if state["bit_generator"] != "PCG64":  # numpy's default_rng, the one every fit uses
        raise ValueError(f"a {state['bit_generator']!r} state, not PCG64's")
    bit_generator = np.random.PCG64()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


__all__ = [
    "CheckpointError",
    "CheckpointInUseError",
    "CheckpointMismatchError",
    "Checkpointer",
    "check_config",
    "check_scale_sums",
    "check_state",
    "load_checkpoint",
    "read_checkpoint_meta",
    "read_checkpoint_trace",
    "recorded_seed",
    "rng_from_json",
    "rng_state_json",
    "save_checkpoint",
]
