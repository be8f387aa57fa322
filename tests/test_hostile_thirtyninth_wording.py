"""Thirty-ninth pass, wording: messages that said the wrong thing of the case they met.

``tl.count_split`` of an AnnData read with ``backed='r+'`` called it one read with
``backed='r'``. ``tl.top_genes``, ``pl.top_genes`` and the command line's line on
``top_genes.tsv`` advised lowering ``min_counts`` for a factor left out because none of its
genes has a positive loading at all (its loadings all zero: a classical solver's factor, a
factor switched off to exactly zero), which no ``min_counts`` lists; such a factor is now
named for what it is, apart from one whose genes have too few counts.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import vbsnmf

NO_LOADING = "none of its genes has a positive loading (its loadings are all zero)"


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_count_split_names_the_backed_mode_the_anndata_was_read_in(tmp_path, mode):
    """The X of an AnnData read with backed='r+' was called one read with backed='r'."""
    path = tmp_path / "counts.h5ad"
    counts = np.random.default_rng(0).poisson(1.0, (10, 5)).astype(np.float64)
    ad.AnnData(sp.csr_matrix(counts)).write_h5ad(path)
    adata = ad.read_h5ad(path, backed=mode)
    try:
        with pytest.raises(TypeError, match="counts are stored on disk") as refused:
            vbsnmf.tl.count_split(adata.X, fraction=0.5)
    finally:
        adata.file.close()
    assert f"backed={mode!r}" in str(refused.value)
    assert "to_memory()" in str(refused.value)


def _rank_one_fit() -> ad.AnnData:
    """A HALS fit of K = 2 to counts of rank one: factor 0's loadings are all zero
    (inactive), factor 1 holds every fitted count."""
    rng = np.random.default_rng(0)
    counts = np.outer(rng.integers(1, 4, 30), rng.integers(1, 4, 8)).astype(np.float64)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"c{i}" for i in range(30)]
    adata.var_names = [f"g{j}" for j in range(8)]
    adata.obs["group"] = pd.Categorical(np.where(np.arange(30) < 15, "a", "b"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, 2, solver="hals", max_iter=200, random_state=0, n_threads=1)
    # the case: no gene has a positive loading in factor 0, every gene one in factor 1
    loadings = np.asarray(adata.varm["NMF"])
    assert not (loadings[:, 0] > 0).any() and (loadings[:, 1] > 0).all()
    assert list(np.asarray(adata.uns["nmf"]["active"])) == [False, True]
    return adata


def _left_out(caught) -> list[str]:
    return [str(w.message) for w in caught if "left out of" in str(w.message)]


def test_tl_top_genes_does_not_advise_min_counts_for_a_factor_of_no_positive_loading():
    """ "lower min_counts" for a factor no min_counts can list (min_counts=0 lists no gene
    of it either)."""
    adata = _rank_one_fit()
    for min_counts in (2, 0):
        with pytest.warns(UserWarning, match="factor 0 left out of the table") as caught:
            table = vbsnmf.tl.top_genes(adata, min_counts=min_counts, include_inactive=True)
        assert set(table.index.get_level_values("factor")) == {1}
        (warned,) = _left_out(caught)
        assert NO_LOADING in warned and warned.endswith("so it has no gene to list")
        assert "lower min_counts" not in warned


def test_tl_top_genes_words_each_case_when_both_are_left_out():
    """Factor 0 (no positive loading) and factor 1 (no gene of min_counts counts): one
    warning each, only the second advising a lower min_counts."""
    adata = _rank_one_fit()
    most = float(adata.var["nmf_total_counts"].max())
    with pytest.warns(UserWarning) as caught:
        table = vbsnmf.tl.top_genes(adata, min_counts=most + 1, include_inactive=True)
    assert table.empty
    unloaded, too_few = _left_out(caught)
    assert unloaded.startswith("factor 0 left out of the table: ") and NO_LOADING in unloaded
    assert "lower min_counts" not in unloaded
    assert too_few.startswith("factor 1 left out of the table: no gene of it has a positive")
    assert f"min_counts={most + 1}" in too_few and too_few.endswith("lower min_counts")
    # lowering min_counts lists factor 1, as the advice said, and never factor 0
    with pytest.warns(UserWarning, match="factor 0 left out"):
        lowered = vbsnmf.tl.top_genes(adata, min_counts=0, include_inactive=True)
    assert set(lowered.index.get_level_values("factor")) == {1}


def test_pl_top_genes_does_not_advise_min_counts_for_a_factor_of_no_positive_loading():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adata = _rank_one_fit()
    try:
        with pytest.warns(UserWarning) as caught:
            vbsnmf.pl.top_genes(adata, "group", include_inactive=True, show=False)
        (warned,) = _left_out(caught)
        assert warned.startswith("factor 0 left out of the dot plot: ")
        assert NO_LOADING in warned and "lower min_counts" not in warned
    finally:
        plt.close("all")


def test_cli_line_on_top_genes_tsv_for_an_active_factor_of_no_positive_loading(
    tmp_path, capsys, monkeypatch
):
    """The command line's advice (tl.top_genes with min_counts=1) lists no gene of an
    active factor whose loadings are all zero. A fit marks such a factor inactive (its
    share is zero), so the fit here is one whose factor 1 is made so afterwards."""
    import scipy.io

    from vbsnmf import cli

    fit = vbsnmf.tl.nmf

    def fit_then_zero_factor_one(adata, *args, **kwargs):
        fit(adata, *args, **kwargs)
        adata.varm["NMF"][:, 1] = 0.0  # still listed as active in .uns["nmf"]["active"]

    monkeypatch.setattr(vbsnmf.tl, "nmf", fit_then_zero_factor_one)
    rng = np.random.default_rng(0)
    counts = np.zeros((30, 20))
    counts[:15, :10] = rng.poisson(5, (15, 10))
    counts[15:, 10:] = rng.poisson(5, (15, 10))
    scipy.io.mmwrite(tmp_path / "x.mtx", sp.coo_matrix(counts))
    out = tmp_path / "out"
    argv = ["fit", str(tmp_path / "x.mtx"), "--cells-as-rows", "-k", "2", "-o", str(out)]
    assert cli.main([*argv, "--solver", "hals", "--max-iter", "100"]) == 0
    stderr = capsys.readouterr().err
    table = pd.read_csv(out / "top_genes.tsv", sep="\t")
    assert set(table["factor"]) == {0}
    (line,) = [x for x in stderr.splitlines() if "left out of" in x]
    assert line.startswith("vbsnmf: warning: factor 1 left out of top_genes.tsv: ")
    assert NO_LOADING in line and "min_counts=1" not in line


def test_left_out_messages_word_several_factors_of_each_case():
    """The wording of several factors of each case, one message a case, in the order
    no positive loading, then too few counts."""
    from vbsnmf.tl._top_genes import left_out_messages

    unloaded, too_few = left_out_messages(([0, 2], [1, 3]), "the table", "min_counts=3", "x")
    assert unloaded == (
        "factors 0, 2 left out of the table: none of their genes has a positive loading "
        "(their loadings are all zero), so they have no gene to list"
    )
    assert too_few == (
        "factors 1, 3 left out of the table: no gene of theirs has a positive loading and "
        "min_counts=3 counts or more; x"
    )
    assert left_out_messages(([], []), "the table", "min_counts=3", "x") == []
