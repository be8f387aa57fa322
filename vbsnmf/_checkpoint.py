"""Checkpoints of a fit in progress: written atomically, read back for ``resume=True``.

A checkpoint is one ``.npz`` file: the variational parameters, the ELBO trace, the
iteration or epoch counters, the random generator's state (SVI draws a fresh permutation
every epoch) and a ``config`` record of everything that changes the arithmetic (shape,
K, method, priors, thread count, ...). Resuming from it replays exactly the computation an
uninterrupted fit would have done, so the final ELBO trace is bitwise the same; a
checkpoint written under a different configuration is refused rather than silently mixed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .io._atomic import atomic_file


class CheckpointMismatchError(ValueError):
    """The checkpoint on disk was written by a fit with different settings or data."""


def save_checkpoint(path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` and the JSON-able ``meta`` to ``path`` atomically
    (`vbsnmf.io` writes every output so): a fit killed at any moment leaves either the
    previous checkpoint or the new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, __meta__=np.array(json.dumps(meta)), **arrays)


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` as written by `save_checkpoint`."""
    with np.load(Path(path), allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files if name != "__meta__"}
        meta = json.loads(str(stored["__meta__"]))
    return arrays, meta


def check_config(meta: dict, config: dict, path) -> None:
    """Raise `CheckpointMismatchError` unless the checkpoint's config equals ``config``."""
    stored = meta.get("config", {})
    differing = sorted(
        key for key in set(stored) | set(config) if stored.get(key) != config.get(key)
    )
    if differing:
        details = ", ".join(
            f"{key}: checkpoint {stored.get(key)!r} vs now {config.get(key)!r}" for key in differing
        )
        raise CheckpointMismatchError(
            f"checkpoint {path} was written by a different fit ({details}); "
            "remove it or pass resume=False to start over"
        )


class Checkpointer:
    """Where and how often a fit saves itself, and the config it must match on resume.

    ``path=None`` disables saving and loading, so fits without checkpoints share the code.
    """

    def __init__(self, path, every: int, config: dict):
        self.path = None if path is None else Path(path)
        self.every = every
        self.config = config

    def load(self) -> tuple[dict[str, np.ndarray], dict] | None:
        """The stored checkpoint, or None when there is none (a fresh start)."""
        if self.path is None or not self.path.exists():
            return None
        arrays, meta = load_checkpoint(self.path)
        check_config(meta, self.config, self.path)
        return arrays, meta

    def save(self, counter: int, arrays: dict[str, np.ndarray], meta: dict, force=False) -> None:
        """Save when ``counter`` (iterations or epochs done) is a multiple of ``every``, or
        when ``force`` (the end of the fit)."""
        if self.path is not None and (force or counter % self.every == 0):
            save_checkpoint(self.path, arrays, {**meta, "config": self.config})


def rng_state_json(rng: np.random.Generator) -> str:
    """The generator's full state as a JSON string (PCG64 state holds 128-bit integers)."""
    return json.dumps(rng.bit_generator.state)


def rng_from_json(text: str) -> np.random.Generator:
    """A generator in exactly the state `rng_state_json` recorded."""
    state = json.loads(text)
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


__all__ = [
    "CheckpointMismatchError",
    "Checkpointer",
    "check_config",
    "load_checkpoint",
    "rng_from_json",
    "rng_state_json",
    "save_checkpoint",
]
