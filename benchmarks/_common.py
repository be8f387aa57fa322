"""Helpers shared by the benchmark scripts: timing in a fresh process, peak memory."""

from __future__ import annotations

import multiprocessing
import resource
import sys


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux ru_maxrss is KiB)."""
    scale = 1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _child(queue, function, args):
    try:
        queue.put(("ok", function(*args)))
    except BaseException as error:  # report, then let the parent raise
        queue.put(("error", repr(error)))


def in_fresh_process(function, *args):
    """Run ``function(*args)`` in a new spawned interpreter, so its peak memory and JIT
    time are its own; returns what it returns."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, function, args))
    process.start()
    status, value = queue.get()
    process.join()
    if status != "ok":
        raise RuntimeError(f"benchmark child failed: {value}")
    return value
