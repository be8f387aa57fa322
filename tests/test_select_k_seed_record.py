"""`tl.select_k` given a Generator records the seed it drew, and the record replays."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import vbsnmf


def _adata():
    rng = np.random.default_rng(11)
    return ad.AnnData(sp.csr_matrix(rng.poisson(1.5, (60, 30)).astype(np.float64)))


def test_a_generators_grid_is_replayed_by_its_recorded_seed():
    adata = _adata()
    table = vbsnmf.tl.select_k(adata, [1, 2], max_iter=10, random_state=np.random.default_rng(5))
    params = adata.uns["nmf_k_selection"]["params"]
    assert "random_state" in params  # the record named no seed before
    replay = _adata()
    again = vbsnmf.tl.select_k(replay, [1, 2], max_iter=10, random_state=params["random_state"])
    pd.testing.assert_frame_equal(table, again)


def test_a_grid_interrupted_after_its_split_leaves_the_generator_as_it_was(monkeypatch):
    """An interruption in the grid (here while the first K is scored) leaves the Generator
    as it found it, as tl.nmf does: rerun, the grid is the one the first attempt began."""
    from vbsnmf.tl import _select_k

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_select_k, "poisson_loglik_per_cell", interrupted)
    generator = np.random.default_rng(5)
    before = generator.bit_generator.state
    with pytest.raises(KeyboardInterrupt):
        vbsnmf.tl.select_k(_adata(), [1, 2], max_iter=10, random_state=generator)
    assert generator.bit_generator.state == before
