"""The twenty-first hostile pass over the tools a biologist uses after a fit: ``tl.nmf``'s
``.var['nmf_total_counts']`` (``tl.top_genes``' ``total_counts`` and ``min_counts``) of
float32 counts, anndata's usual X, was summed in float32 and rounded a gene's total above
2**24, and a dask X of sparse chunks likewise, though it asked scipy for float64;
``mask_var`` given as a pandas Series indexed by the genes in another order was read by
position, fitting other genes than it marks; ``pl.factors(vmin=...)`` / ``color=`` and
``pl.top_genes(var_names=...)`` failed with a bare "got multiple values for keyword
argument", ``pl.factors(use_raw=True)`` with scanpy's "does not have raw" about the plot's
own frame; ``use_highly_variable`` / ``n_comps`` (scanpy.pp.pca's names) were refused as
parameters of another solver; a tool given the key of another tool's record advised
running the tool under that key, which it then refuses, and one given a key holding
nothing advised running the tool again, not naming the records adata holds."""

from __future__ import annotations

import re
import warnings

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vbsnmf import pl, tl
from vbsnmf.tl._nmf import _count_totals


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


def _counts(n_cells: int = 40, n_genes: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(1.5, (n_cells, n_genes)).astype(np.float32)


@pytest.fixture(scope="module")
def _fitted():
    rng = np.random.default_rng(1)
    adata = ad.AnnData(_counts())
    adata.raw = adata.copy()
    adata.obsm["X_umap"] = rng.normal(size=(adata.n_obs, 2))
    adata.obs["cluster"] = pd.Categorical(rng.choice(["A", "B"], adata.n_obs))
    _quiet(tl.nmf, adata, 2, max_iter=10, min_share=0)
    _quiet(tl.select_k, adata, [1, 2], max_iter=5)
    return adata


@pytest.fixture
def fitted(_fitted):
    return _fitted.copy()


# A gene whose total, 17,000,017, float32 cannot hold (its spacing there is 2); each count can.
_BIG = np.ones((17, 3))
_BIG[:, 0] = 1_000_001


@pytest.mark.parametrize("storage", [np.asarray, sp.csr_matrix, sp.csc_matrix])
def test_total_counts_of_float32_counts_are_exact(storage):
    adata = ad.AnnData(storage(_BIG.astype(np.float32)))
    _quiet(tl.nmf, adata, 1, max_iter=5, min_share=0)
    np.testing.assert_array_equal(adata.var["nmf_total_counts"], _BIG.sum(axis=0))
    table = tl.top_genes(adata, 3, min_counts=17_000_017)
    assert list(table["gene"]) == ["0"]
    assert table["total_counts"].iloc[0] == 17_000_017


def test_total_counts_of_a_dask_x_of_sparse_float32_chunks_are_exact():
    da = pytest.importorskip("dask.array")
    chunked = da.from_array(_BIG.astype(np.float32), chunks=(17, 3)).map_blocks(sp.csr_matrix)
    totals, cell_totals = _count_totals(chunked)
    np.testing.assert_array_equal(totals, _BIG.sum(axis=0))
    np.testing.assert_array_equal(cell_totals, _BIG.sum(axis=1))


def test_a_mask_var_series_in_another_gene_order_is_read_by_gene_name():
    adata = ad.AnnData(_counts(30, 6))
    adata.var_names = [f"g{i}" for i in range(6)]
    marked = pd.Series([True, True, True, False, False, False], index=adata.var_names)
    _quiet(tl.nmf, adata, 2, mask_var=marked.iloc[::-1], max_iter=5)
    fitted = adata.var_names[adata.var["nmf_total_counts"] > 0]
    assert list(fitted) == ["g0", "g1", "g2"]
    expected = adata.X[:, :3].sum(axis=0)
    np.testing.assert_array_equal(adata.var["nmf_total_counts"].to_numpy()[:3], expected)
    assert not adata.varm["NMF"][3:].any()


def test_select_k_reads_a_mask_var_series_by_gene_name_too():
    adata = ad.AnnData(_counts(30, 6))
    adata.var_names = [f"g{i}" for i in range(6)]
    marked = pd.Series([True, True, True, False, False, False], index=adata.var_names)
    by_name = _quiet(tl.select_k, adata, [1, 2], mask_var=marked.iloc[::-1], max_iter=5)
    by_position = _quiet(tl.select_k, adata, [1, 2], mask_var=marked.to_numpy(), max_iter=5)
    pd.testing.assert_frame_equal(by_name, by_position)


@pytest.mark.parametrize(
    ("plot", "passed"),
    [
        ("factors", {"vmin": 0.1}),
        ("factors", {"color": "cluster"}),
        ("top_genes", {"var_names": ["0"]}),
    ],
)
def test_plots_name_a_keyword_they_set_themselves(fitted, plot, passed):
    (name,) = passed
    args = (fitted,) if plot == "factors" else (fitted, "cluster")
    with pytest.raises(
        TypeError, match=re.escape(f"vbsnmf.pl.{plot} sets '{name}' itself")
    ) as raised:
        getattr(pl, plot)(*args, show=False, **passed)
    assert "multiple values" not in str(raised.value)


def test_factors_says_use_raw_does_not_apply_not_that_adata_lacks_raw(fitted):
    with pytest.raises(TypeError, match="use_raw does not apply") as raised:
        pl.factors(fitted, use_raw=True, show=False)
    assert "does not have raw" not in str(raised.value)


def test_plots_still_pass_other_keywords_on(fitted):
    axes = pl.factors(fitted, size=30, use_raw=False, show=False)
    assert len(axes) == 2
    dot_plot = pl.top_genes(fitted, "cluster", return_fig=True, cmap="Reds")
    assert dot_plot.cmap == "Reds"


@pytest.mark.parametrize(
    ("tool", "args", "passed", "named"),
    [
        ("nmf", (2,), {"use_highly_variable": True}, "mask_var='highly_variable'"),
        ("nmf", (), {"n_comps": 3}, "n_components"),
        ("select_k", ([1, 2],), {"use_highly_variable": True}, "mask_var='highly_variable'"),
    ],
)
def test_scanpy_pca_parameter_names_say_what_to_pass(tool, args, passed, named):
    adata = ad.AnnData(_counts(20, 8))
    with pytest.raises(ValueError, match=r"scanpy\.pp\.pca's parameter") as raised:
        getattr(tl, tool)(adata, *args, **passed)
    assert named in str(raised.value)
    assert "does not apply to solver" not in str(raised.value)
    assert not adata.uns


@pytest.mark.parametrize(
    ("call", "holds", "keys"),
    [
        (lambda adata: tl.top_genes(adata, key="nmf_k_selection"), "a K selection", "'nmf'"),
        (
            lambda adata: pl.factors(adata, key="nmf_k_selection", show=False),
            "a K selection",
            "'nmf'",
        ),
        (lambda adata: pl.elbo(adata, key="nmf_k_selection", show=False), "a K selection", "'nmf'"),
        (
            lambda adata: pl.select_k(adata, key="nmf", show=False),
            "an NMF fit",
            "'nmf_k_selection'",
        ),
    ],
)
def test_the_key_of_another_tools_record_is_named_not_advised_to_refit(fitted, call, holds, keys):
    with pytest.raises(KeyError) as raised:
        call(fitted)
    message = str(raised.value)
    assert f"holds {holds}" in message and f"pass the key_added of one: {keys}" in message
    assert "run vbsnmf.tl" not in message


def test_a_key_holding_anothers_entry_with_no_fit_in_adata_says_so(fitted):
    adata = ad.AnnData(_counts(10, 4))
    adata.uns["pca"] = {"variance": np.ones(2)}  # scanpy's, which tl.nmf refuses to replace
    with pytest.raises(KeyError, match=r"holds an entry no vbsnmf tool wrote.*holds none"):
        tl.top_genes(adata, key="pca")
    with pytest.raises(KeyError, match=r"holds no NMF fit; run vbsnmf.tl.nmf\(adata, key_added"):
        tl.top_genes(adata, key="absent")


def test_a_default_key_without_a_record_names_the_keys_adata_holds(fitted):
    fitted.uns["mine"] = fitted.uns.pop("nmf_k_selection")
    with pytest.raises(KeyError, match=r"run vbsnmf.tl.select_k\(adata\) first, or pass") as raised:
        pl.select_k(fitted, show=False)
    assert "the key_added of one adata holds: 'mine'" in str(raised.value)
