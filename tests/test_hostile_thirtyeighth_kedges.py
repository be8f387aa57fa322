"""Thirty-eighth pass (third wave), the edges of K in the tools used after a fit: the
reason `tl.select_k` gives when its best K is the largest the data allow, and the
threshold `tl.nmf`'s no-active-factor warning shows beside the factors' shares."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from simulated import poisson_adata

import vbsnmf

NO_ACTIVE = "no factor is active"


def _adata(n_cells: int, n_genes: int, seed: int = 0) -> ad.AnnData:
    return poisson_adata(n_cells=n_cells, n_genes=n_genes, seed=seed)


def _fit_warnings(adata, n_components: int, **params) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vbsnmf.tl.nmf(adata, n_components, max_iter=20, random_state=0, **params)
    return [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def selection_at_the_limit():
    """A grid up to K = n_genes (masked to 5 genes), whose best K is that largest one."""
    adata = _adata(40, 12)
    mask = np.zeros(12, dtype=bool)
    mask[:5] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = vbsnmf.tl.select_k(adata, [1, 5], mask_var=mask, max_iter=10)
    return adata, table


def test_select_k_best_at_the_largest_allowed_k_does_not_ask_for_a_larger_one(
    selection_at_the_limit,
):
    adata, table = selection_at_the_limit
    record = adata.uns["nmf_k_selection"]
    assert int(table["heldout_ll_per_count"].to_numpy().argmax()) == 1  # best at K = 5
    reason = record["reason"]
    # K = 5 is min(n_cells, n_genes): `nmf` refuses any larger K
    assert "a larger K may fit better" not in reason
    assert "min(n_cells, n_genes) = 5" in reason and "the largest K they allow" in reason
    assert record["suggested_k"] in table.index


def test_select_k_reason_below_the_limit_still_suggests_a_larger_k():
    from vbsnmf.tl import _select_k

    table = _select_k.pd.DataFrame(
        {
            "heldout_ll_per_count": [-2.0, -1.9],
            "tolerance": [0.01, 0.0],
            "n_active": [1, 2],
        }
    )
    below = _select_k._reason(table, [1, 2], 1, 1, None, max_k=10)
    at = _select_k._reason(table, [1, 2], 1, 1, None, max_k=2)
    assert "a larger K may fit better still" in below
    assert "a larger K may fit better still" not in at


def _threshold_shown(message: str) -> float:
    return float(re.search(r"min_share = ([0-9.e+-]+) of", message).group(1))


def test_no_active_warning_shows_min_share_just_above_the_largest_share():
    adata = _adata(60, 25, seed=2)
    _fit_warnings(adata, 3, min_share=0.0)
    largest = float(np.max(adata.uns["nmf"]["factor_share"]))
    assert float(f"{largest:.3g}") < largest  # to three digits it reads below that share
    again = _adata(60, 25, seed=2)
    messages = _fit_warnings(again, 3, min_share=float(np.nextafter(largest, 1.0)))
    assert float(np.max(again.uns["nmf"]["factor_share"])) == largest  # the same fit
    (warned,) = [m for m in messages if NO_ACTIVE in m]
    # "none holds more than min_share = 0.362" beside a factor_share of 0.36208...
    assert _threshold_shown(warned) >= largest


def test_no_active_warning_never_shows_a_given_min_share_as_one():
    adata = _adata(60, 25)
    messages = _fit_warnings(adata, 3, min_share=0.999999)
    (warned,) = [m for m in messages if NO_ACTIVE in m]
    assert "min_share = 0.999999 " in warned  # "1" read as a value min_share refuses


def test_pl_top_genes_warns_of_a_factor_left_out_of_the_dot_plot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    counts = np.zeros((40, 20), dtype=np.float32)
    counts[:30, :10] = rng.poisson(4, (30, 10))
    counts[30:, 10:] = 1  # a programme of genes with 10 counts each
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"c{i}" for i in range(40)]
    adata.var_names = [f"g{j}" for j in range(20)]
    adata.obs["group"] = pd.Categorical(np.where(np.arange(40) < 30, "a", "b"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, 2, solver="als", max_iter=200, random_state=0, min_share=0.0)
    assert np.asarray(adata.uns["nmf"]["active"]).all()
    # the classical solver's factor 1 holds only the genes below min_counts=11
    assert set(vbsnmf.tl.top_genes(adata, min_counts=11).index.get_level_values(0)) == {0}
    try:
        with pytest.warns(UserWarning, match=r"factor 1 left out of the dot plot") as caught:
            axes = vbsnmf.pl.top_genes(adata, "group", min_counts=11, show=False)
        (warned,) = [str(w.message) for w in caught if "left out" in str(w.message)]
        assert "min_counts=11" in warned
        labels = [text.get_text() for text in axes["gene_group_ax"].texts]
        assert labels == ["factor 0"]
    finally:
        plt.close("all")
