"""Peak memory of one call, as tracemalloc sees it (numpy's arrays; not Numba's)."""

from __future__ import annotations

import tracemalloc


def traced_peak(function, *args):
    """``(result, peak)``: ``function(*args)`` and the most bytes it held at once beyond
    what was allocated before the call. Call it once before for kernels that compile."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = function(*args)
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
