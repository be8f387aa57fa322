"""Thirteenth hostile pass over the scanpy-style tools (`vbsnmf.tl`, and `vbsnmf.pl` where it
reads what they wrote): inputs that are not AnnData, count splits that leave a half empty,
the reason at the edges of the K grid, damaged K-selection records, numpy numbers as
settings, masks of empty genes and callbacks a solver never calls."""

from __future__ import annotations

import re
import warnings

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import pl, tl

FIT = {"max_iter": 5, "n_threads": 1}


def _counts(n_cells=40, n_genes=20, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    return ad.AnnData(sp.csr_matrix(rng.poisson(2.0, (n_cells, n_genes)).astype(np.float64)))


def _quiet(function, *args, **kwargs):
    """Fits of a few passes, where not converging is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return function(*args, **kwargs)


@pytest.fixture(scope="module")
def fitted():
    adata = _counts()
    _quiet(tl.nmf, adata, 2, **FIT)
    return adata


# -- 1: a matrix, a path or a .raw instead of an AnnData -----------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda X, adata: tl.nmf(X, 2),
        lambda X, adata: tl.select_k(X, [1]),
        lambda X, adata: tl.project(X, adata),
        lambda X, adata: tl.project(adata, X, key_added="p"),
        lambda X, adata: tl.top_genes(X),
        lambda X, adata: tl.fit_info(X, "nmf"),
        lambda X, adata: pl.elbo(X),
        lambda X, adata: pl.factors(X),
        lambda X, adata: pl.umap(X),
        lambda X, adata: pl.select_k(X),
    ],
    ids=[
        "nmf",
        "select_k",
        "project_new",
        "project_ref",
        "top_genes",
        "fit_info",
        "pl_elbo",
        "pl_factors",
        "pl_umap",
        "pl_select_k",
    ],
)
def test_tools_given_a_matrix_say_to_pass_an_anndata(fitted, call):
    """Each failed with a bare AttributeError: 'csr_matrix' object has no attribute 'uns'."""
    before = set(fitted.uns)
    with pytest.raises(TypeError, match="must be an AnnData, got csr_matrix"):
        call(fitted.X, fitted)
    assert set(fitted.uns) == before


def test_tools_given_a_path_or_a_raw_say_what_to_pass(fitted):
    with pytest.raises(TypeError, match=r"is a path \('cells.h5ad'\).*read it first"):
        tl.nmf("cells.h5ad", 2)
    with_raw = fitted.copy()
    with_raw.raw = with_raw
    with pytest.raises(TypeError, match=r"adata_new is an AnnData's \.raw.*use_raw=True"):
        tl.project(with_raw.raw, fitted)


# -- 2: a count split that leaves the train half empty --------------------------------------
def test_select_k_says_the_count_split_left_no_train_counts():
    """Seed 2 sends both counts to the test half; the inner fit of the empty train half said
    "adata.X holds no nonzero count", of the user's adata.X, which holds two."""
    adata = ad.AnnData(sp.csr_matrix(np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 0]])))
    train, test = tl.count_split(sp.csr_matrix(adata.X), 0.5, random_state=2)
    assert train.sum() == 0 and test.sum() == 2  # the premise, computed independently
    with pytest.raises(ValueError, match=r"count split left no train counts.*2 in all"):
        tl.select_k(adata, [1], random_state=2, **FIT)
    assert "nmf_k_selection" not in adata.uns


# -- 3: the reason at the edges of the grid -------------------------------------------------
def test_select_k_reason_notes_the_smallest_k_tried_and_a_single_k():
    adata = _counts(60, 25)
    # A tolerance wider than any difference: the smallest K tried is suggested, and a K
    # below the grid might meet the rule too.
    table = _quiet(tl.select_k, adata, [3, 4], tolerance=1.0, **FIT)
    assert table.attrs["suggested_k"] == 3
    assert table.attrs["reason"].endswith(
        "it is the smallest K tried, so a smaller K may do as well"
    )
    assert adata.uns["nmf_k_selection"]["reason"] == table.attrs["reason"]
    # K = 1 is the smallest there is.
    table = _quiet(tl.select_k, adata, [1, 2], tolerance=1.0, **FIT)
    assert table.attrs["suggested_k"] == 1 and "smaller K" not in table.attrs["reason"]
    single = _quiet(tl.select_k, adata, [2], **FIT)
    assert "the only K tried, so nothing was compared" in single.attrs["reason"]


# -- 4: pl.select_k of a damaged record -----------------------------------------------------
@pytest.fixture(scope="module")
def selected():
    adata = _counts()
    _quiet(tl.select_k, adata, [1, 2], **FIT)
    return adata


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (
            lambda r: r.__setitem__("table", r["table"].drop(columns="heldout_se")),
            KeyError,
            "no column 'heldout_se'",
        ),
        (lambda r: r.pop("suggested_k"), KeyError, "no 'suggested_k' entry"),
        (lambda r: r.__setitem__("table", [1, 2]), ValueError, "is a list, not a table"),
        (
            lambda r: r.__setitem__("table", r["table"].set_axis(["a", "b"])),
            ValueError,
            "not indexed by the Ks",
        ),
        (
            lambda r: r["table"].__setitem__("heldout_ll_per_count", np.nan),
            ValueError,
            "other than finite numbers",
        ),
        (lambda r: r.__setitem__("suggested_k", "x"), ValueError, "'x', not one of the Ks"),
        (lambda r: r.__setitem__("suggested_k", 7), ValueError, "7, not one of the Ks"),
    ],
    ids=["column", "suggested_k_gone", "not_a_table", "index", "nan", "text", "not_tried"],
)
def test_pl_select_k_names_a_damaged_record(selected, edit, error, match):
    """Each failed with pandas' bare KeyError ('heldout_se', 'suggested_k'), numpy's
    "invalid literal for int()", or was drawn with NaN as gaps."""
    damaged = selected.copy()
    edit(damaged.uns["nmf_k_selection"])
    with pytest.raises(error, match=match) as raised:
        pl.select_k(damaged, show=False)
    assert "run vbsnmf.tl.select_k again" in str(raised.value)
    plt.close("all")


def test_pl_select_k_still_draws_the_record_as_written_and_read_back(selected, tmp_path):
    """A guard for the checks above (it passes before them too)."""
    selected.write_h5ad(tmp_path / "selected.h5ad")
    back = ad.read_h5ad(tmp_path / "selected.h5ad")
    axes = pl.select_k(back, show=False)
    table = selected.uns["nmf_k_selection"]["table"]
    assert np.allclose(axes[0].get_lines()[0].get_ydata(), table["heldout_ll_per_count"])
    # a table whose Ks were written as text (as some writers store an index) still draws
    back.uns["nmf_k_selection"]["table"] = table.set_axis(table.index.astype(str))
    axes = pl.select_k(back, show=False)
    assert np.allclose(axes[0].get_lines()[0].get_xdata(), [1, 2])
    plt.close("all")


# -- 5: numpy floats as settings ------------------------------------------------------------
def test_numpy_floats_are_taken_as_min_counts_and_recorded_as_min_share(fitted):
    expected = tl.top_genes(fitted, min_counts=2.0)
    assert tl.top_genes(fitted, min_counts=np.float32(2)).equals(expected)
    assert tl.top_genes(fitted, min_counts=np.float16(2)).equals(expected)
    with pytest.raises(TypeError, match="min_counts must be a number"):
        tl.top_genes(fitted, min_counts=np.complex64(2))
    adata = _counts()
    table = _quiet(tl.select_k, adata, [1], min_share=np.float32(0.25), **FIT)
    assert adata.uns["nmf_k_selection"]["params"]["min_share"] == float(np.float32(0.25))
    # the threshold recorded is the one the fit counted its active factors by
    reference = adata.copy()
    _quiet(tl.nmf, reference, 1, min_share=float(np.float32(0.25)), **FIT)
    assert table.loc[1, "n_active"] == np.count_nonzero(reference.uns["nmf"]["active"])


# -- 6: a mask of genes without counts ------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "matrix"),
    [
        ({"layer": "counts"}, "adata.layers['counts']"),
        ({"use_raw": True}, "adata.raw.X"),
        ({}, "adata.X"),
    ],
    ids=["layer", "raw", "X"],
)
def test_a_mask_of_genes_without_counts_is_named_not_the_matrix(options, matrix):
    """The error said "the counts appear to be in layer='counts' or use_raw=True", naming
    the very layer or .raw passed (or layers whose masked genes are as empty)."""
    adata = _counts()
    counts = adata.X.toarray()
    counts[:, :5] = 0
    adata.X = sp.csr_matrix(counts)
    adata.layers["counts"] = adata.X.copy()
    adata.raw = adata.copy()
    empty = np.arange(adata.n_vars) < 5
    assert adata.X[:, empty].sum() == 0  # the premise
    expected = re.escape(f"{matrix} (genes in mask_var) holds no nonzero count: the genes")
    for tool in (
        lambda: tl.nmf(adata, 2, mask_var=empty, **options, **FIT),
        lambda: tl.select_k(adata, [1], mask_var=empty, **options, **FIT),
    ):
        with pytest.raises(ValueError, match=expected) as raised:
            tool()
        assert "appear to be in" not in str(raised.value)
    assert "nmf" not in adata.uns and "nmf_total_counts" not in adata.var


# -- 7: a callback that a classical solver never calls --------------------------------------
def test_a_callback_with_a_classical_solver_is_refused_before_the_fit():
    adata = _counts()
    seen = []
    with pytest.raises(ValueError, match="callback applies to the variational solvers"):
        tl.nmf(adata, 2, solver="mu", callback=lambda *args: seen.append(args[0]), max_iter=5)
    assert not seen and "nmf" not in adata.uns
    # a variational fit calls it, as before
    _quiet(tl.nmf, adata, 2, callback=lambda *args: seen.append(args[0]), **FIT)
    assert seen and seen[-1] == FIT["max_iter"]


# -- warm_start on another layer: two data sets' traces joined --------------------------------
def test_warm_start_on_another_layer_is_refused():
    adata = _counts()
    adata.layers["spliced"] = adata.X.copy()
    adata.layers["unspliced"] = _counts(seed=1).X
    _quiet(tl.nmf, adata, 2, layer="spliced", **FIT)
    trace = adata.uns["nmf"]["elbo_trace"].copy()
    for layer in ("unspliced", None):
        with pytest.raises(ValueError, match="stored fit was made with layer='spliced'"):
            _quiet(tl.nmf, adata, 2, layer=layer, warm_start=True, **FIT)
    np.testing.assert_array_equal(adata.uns["nmf"]["elbo_trace"], trace)
    # the same layer continues the fit, as before
    _quiet(tl.nmf, adata, 2, layer="spliced", warm_start=True, **FIT)
    assert len(adata.uns["nmf"]["elbo_trace"]) > len(trace)
