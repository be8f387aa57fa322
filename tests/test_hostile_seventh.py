"""A seventh hostile pass (2026-12-05), over the command line's inputs and signals and the
Python API's: each test here failed on the code before its fix.

A stop signal or Ctrl-C that arrived while an `.h5ad` was being written (`result.h5ad`,
the conversion of an `.mtx` or 10x folder) had its handler run inside the Python methods
HDF5 calls to write (`io._write._Sink`); h5py printed the exception and dropped it with
the block, and the command went on to publish a file with rows of zeros, print "wrote",
and exit 0 (or die with a segmentation fault, or exit 1 with "driver write request
failed"). With `--force` it replaced a good output by the damaged one.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from test_hostile import FIT, SVI, _main, _tree, tenx

import vbsnmf
from vbsnmf.io import _write

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# What HDF5 calls in the sink, in the order of their calls' counts.
_SINK_METHODS = ("seek", "write")
_ROUTES = {
    "result": [*FIT, "-o", "out"],
    "conversion": [*FIT, *SVI, "--convert-to", "conv.h5ad", "-o", "out"],
}
_SAID = {
    signal.SIGTERM: (143, "vbsnmf: terminated (SIGTERM); no output written\n"),
    signal.SIGINT: (130, "vbsnmf: interrupted; no output written\n"),
}


def _hook(monkeypatch, method: str, at: int, signum: int) -> list[int]:
    """Send ``signum`` to this process from inside the sink's ``method`` at its ``at``-th
    call; returns the count of calls (a list of one)."""
    calls = [0]
    original = getattr(_write._Sink, method)

    def hooked(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_write._Sink, method, hooked)
    return calls


@pytest.mark.parametrize("route", list(_ROUTES))
@pytest.mark.parametrize("method", _SINK_METHODS)
def test_a_signal_while_an_h5ad_is_written_leaves_nothing(
    route, method, tmp_path, capfd, monkeypatch
):
    source = tenx(tmp_path)
    argv = ["fit", source, *_ROUTES[route]]
    with monkeypatch.context() as counting:
        calls = _hook(counting, method, 0, signal.SIGTERM)
        code, _, err, _ = _main(argv, capfd, tmp_path)
        assert code == 0, err
    total = calls[0]
    assert total > 10  # the sink was used
    clean = _tree(tmp_path)
    shutil.rmtree(tmp_path / "out")
    (tmp_path / "conv.h5ad").unlink(missing_ok=True)
    before = _tree(tmp_path)
    for at, signum in (
        (1, signal.SIGTERM),
        (total // 2, signal.SIGINT),
        (total - 1, signal.SIGTERM),
    ):
        with monkeypatch.context() as patched:
            _hook(patched, method, at, signum)
            code, _, err, _ = _main(argv, capfd, tmp_path)
        assert (code, err) == _SAID[signum], (at, code, err[-300:])
        assert _tree(tmp_path) == before, at
    assert set(clean) > set(before)


def test_a_signal_while_force_replaces_an_output_keeps_the_old_one(tmp_path, capfd, monkeypatch):
    source = tenx(tmp_path)
    argv = ["fit", source, *FIT, "-o", "out", "--force"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 0, err
    before = _tree(tmp_path)
    with monkeypatch.context() as patched:
        _hook(patched, "write", 5, signal.SIGTERM)
        code, _, err, _ = _main(argv, capfd, tmp_path)
    assert (code, err) == _SAID[signal.SIGTERM]
    assert _tree(tmp_path) == before


def test_ctrl_c_while_the_api_writes_a_result_raises_and_writes_nothing(tmp_path, monkeypatch):
    counts = sp.random(60, 40, density=0.3, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 5)
    adata = ad.AnnData(counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, n_components=2, max_iter=3, random_state=0)
    _hook(monkeypatch, "write", 3, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        vbsnmf.io.write_result(adata, tmp_path / "result.h5ad")
    assert list(Path(tmp_path).iterdir()) == []
    monkeypatch.undo()
    vbsnmf.io.write_result(adata, tmp_path / "result.h5ad")  # and the handlers are back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
