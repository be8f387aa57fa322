"""A fit stopped part-way, as a crash or Ctrl-C stops it: the callback raises `Stop`."""

from __future__ import annotations


class Stop(Exception):
    """Raised by `stop_at`'s callback: what ends the fit, and nothing else raises it."""


def stop_at(n: int):
    """A callback that stops the fit at its ``n``-th iteration (epoch, for SVI), before
    that one's checkpoint is saved."""

    def callback(n_iter, params, trace):
        if n_iter == n:
            raise Stop

    return callback
