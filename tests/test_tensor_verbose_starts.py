"""`VBNTF(n_init > 1, verbose=True)` heads each start's lines and names the start it keeps,
as `VBNMF` does since the thirty-fourth pass (the two share `_model.print_start` and
`print_kept`): its starts' lines ran together, each counting its passes from 1."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import vbsnmf


def _tensor():
    rng = np.random.default_rng(0)
    coords = rng.integers(0, [6, 5, 4], size=(80, 3))
    return coords, (rng.poisson(2, 80) + 1).astype(np.float64)


@pytest.mark.parametrize("accelerate", [True, False])
def test_each_start_headed_and_the_kept_one_named(capsys, accelerate):
    coords, values = _tensor()
    model = vbsnmf.VBNTF(
        2, n_init=3, verbose=True, max_iter=4, random_state=0, n_threads=1, accelerate=accelerate
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(coords, values, shape=(6, 5, 4))
    lines = capsys.readouterr().out.splitlines()
    headers = [line for line in lines if line.startswith("start ")]
    assert headers == ["start 1 of 3", "start 2 of 3", "start 3 of 3"], lines
    (kept,) = [line for line in lines if line.startswith("kept start ")]
    assert lines[-1] == kept
    match = re.fullmatch(r"kept start (\d) of 3  ELBO (\S+)", kept)
    assert match, kept
    # the kept start's last printed ELBO is the model's, and the highest of the starts'
    index = int(match.group(1))
    assert float(match.group(2)) == pytest.approx(model.elbo_trace_[-1], rel=1e-9)
    ends = []
    for start in range(3):
        block = lines[lines.index(headers[start]) + 1 :]
        nxt = next((i for i, line in enumerate(block) if line.startswith(("start ", "kept "))))
        ends.append(float(block[nxt - 1].split("ELBO")[-1]))
    assert int(np.argmax(ends)) + 1 == index, (ends, kept)


def test_one_start_prints_no_headers(capsys):
    """One start: no "start 1 of 1" (guard: as before)."""
    coords, values = _tensor()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNTF(2, verbose=True, max_iter=3, random_state=0, n_threads=1).fit(
            coords, values, shape=(6, 5, 4)
        )
    out = capsys.readouterr().out
    assert "start" not in out and "ELBO" in out
