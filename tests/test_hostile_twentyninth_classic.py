"""Twenty-ninth hostile pass, classical NMF: inputs numpy cannot read (a backed AnnData's
sparse X, a pydata sparse array) and arrays given as ``init`` or ``solver``, named rather
than answered in numpy's words; `tl.nmf`'s storage of a ``loss="poisson"`` fit, whose cell
factors are proportions (now in counts, as every fit's); a factor mask of H over every gene
under ``mask_var``. Each test failed on the code before its fix unless its
docstring says it guards a normal case."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vbsnmf import tl
from vbsnmf.classic import NMF, factor_loss
from vbsnmf.classic.losses import divergence

# the short fits here stop at max_iter by design
pytestmark = pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")


def _counts(n_rows=10, n_cols=6, seed=0):
    return np.random.default_rng(seed).poisson(2, (n_rows, n_cols)).astype(np.float32)


@pytest.mark.parametrize("where", ["fit", "transform", "weights", "factor_loss"])
def test_a_backed_sparse_x_is_named(tmp_path, where):
    """A backed AnnData's sparse X (anndata's CSRDataset) as X or weights: numpy's "setting
    an array element with a sequence" named neither the argument nor what to do."""
    X = _counts()
    ad.AnnData(sp.csr_matrix(X)).write_h5ad(tmp_path / "counts.h5ad")
    backed = ad.read_h5ad(tmp_path / "counts.h5ad", backed="r")
    calls = {
        "fit": lambda: NMF(2, max_iter=5).fit(backed.X),
        "transform": lambda: NMF(2, max_iter=5).fit(X).transform(backed.X),
        "weights": lambda: NMF(2, max_iter=5, weights=backed.X).fit(X),
        "factor_loss": lambda: factor_loss(backed.X, np.ones((10, 2)), np.ones((2, 6))),
    }
    name = "weights" if where == "weights" else "X"
    with pytest.raises(TypeError, match=rf"{name} is a backed AnnData's sparse X .*adata\.X\[:\]"):
        calls[where]()
    # the advice works: the same rows read into memory fit as the matrix does
    fitted = NMF(2, max_iter=5, random_state=0).fit_transform(backed.X[:])
    expected = NMF(2, max_iter=5, random_state=0).fit_transform(sp.csr_matrix(X))
    np.testing.assert_allclose(fitted, expected)
    backed.file.close()


@pytest.mark.parametrize("where", ["X", "weights"])
def test_a_pydata_sparse_array_is_named(where):
    """A pydata `sparse` array as X or weights: sparse's own RuntimeError ("Cannot convert
    a sparse array to dense automatically") leaked, where `VBNMF` names it."""
    sparse = pytest.importorskip("sparse")
    X = _counts().astype(np.float64)
    with pytest.raises(TypeError, match=rf"{where} is a pydata sparse array.*tocsr\(\)"):
        if where == "X":
            NMF(2, max_iter=5).fit(sparse.COO.from_numpy(X))
        else:
            NMF(2, max_iter=5, weights=sparse.COO.from_numpy(np.ones_like(X))).fit(X)


@pytest.mark.parametrize(
    "params, words",
    [
        ({"init": np.ones((10, 2))}, r"unknown init ndarray of shape \(10, 2\); choose one of"),
        ({"solver": np.array(["mu", "hals"])}, r"unknown solver ndarray of shape \(2,\)"),
    ],
)
def test_an_array_as_init_or_solver_is_named(params, words):
    """An array as ``init`` (other NMF libraries take a starting W there) or ``solver``:
    ``in`` compared it elementwise and numpy's "truth value of an array ... is ambiguous"
    named neither the parameter nor the choices."""
    with pytest.raises(ValueError, match=words):
        NMF(2, **params).fit(_counts())


def test_tl_nmf_names_an_array_as_init_or_solver():
    """`tl.nmf` compared ``init`` with "custom" and ``solver`` with its list elementwise:
    numpy's "ambiguous" before the fit."""
    adata = ad.AnnData(sp.csr_matrix(_counts()))
    with pytest.raises(ValueError, match="unknown init ndarray"):
        tl.nmf(adata, 2, solver="mu", init=np.ones((10, 2)))
    with pytest.raises(ValueError, match="unknown solver"):
        tl.nmf(adata, 2, solver=np.array(["mu", "hals"]))
    assert "nmf" not in adata.uns


def _depth_contrast(seed=0):
    """50 deep cells (about 1,000 counts) of one program and 50 shallow ones (about 10) of
    another, on disjoint genes."""
    rng = np.random.default_rng(seed)
    deep = np.r_[rng.random(20) * 5, np.zeros(20)] + 0.01
    shallow = np.r_[np.zeros(20), rng.random(20) * 5] + 0.01
    deep, shallow = deep / deep.sum(), shallow / shallow.sum()
    rows = [rng.poisson(1000 * deep, (50, 40)), rng.poisson(10 * shallow, (50, 40))]
    return np.vstack(rows).astype(float)


@pytest.mark.parametrize("weighted", [False, True])
def test_tl_nmf_stores_a_poisson_fit_in_counts(weighted):
    """Under ``loss="poisson"`` the estimator's cell factors are proportions
    (X ~ diag(c) W H), and `tl.nmf` stored them as they were: every cell weighed alike in
    ``factor_share`` (0.50/0.50, both factors active, where the same model fitted as
    ``loss="kl"`` gives 0.988/0.012 and one). ``X_nmf`` is now ``diag(c) W`` (c over the
    entries of weight > 0 with weights, as the fit takes it), as every fit's: in counts,
    its row summing to the library size over the mean loadings."""
    X = _depth_contrast()
    weights = (np.random.default_rng(1).random(X.shape) > 0.1).astype(float)
    params = {"weights": weights} if weighted else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.AnnData(sp.csr_matrix(X))
        tl.nmf(adata, 2, solver="mu", loss="poisson", max_iter=500, random_state=0, **params)
        kl = ad.AnnData(sp.csr_matrix(X))
        tl.nmf(kl, 2, solver="mu", loss="kl", max_iter=500, **params)
        model = NMF(2, loss="poisson", max_iter=500, random_state=0, **params)
        proportions = model.fit_transform(sp.csr_matrix(X))
    counted = np.where(weights > 0, X, 0.0) if weighted else X
    totals = counted.sum(axis=1)
    np.testing.assert_allclose(adata.obsm["X_nmf"], totals[:, None] * proportions, rtol=1e-12)
    W, H = adata.obsm["X_nmf"], adata.varm["NMF"].T
    fitted = W * H.sum(axis=1)  # each cell's expected counts from each factor
    info = adata.uns["nmf"]
    np.testing.assert_allclose(info["factor_share"], fitted.sum(0) / fitted.sum(), rtol=1e-9)
    assert info["active"].sum() == 1
    # the same model as KL (W in counts) agrees on the shares and the threshold
    order = np.argsort(-info["factor_share"])
    kl_order = np.argsort(-kl.uns["nmf"]["factor_share"])
    np.testing.assert_allclose(
        info["factor_share"][order], kl.uns["nmf"]["factor_share"][kl_order], atol=1e-3
    )
    np.testing.assert_allclose(info["min_share"], kl.uns["nmf"]["min_share"], rtol=1e-3)
    # the usages (each cell's mix) are those of the proportions
    usage = proportions * H.sum(axis=1)
    usage /= np.maximum(usage.sum(axis=1, keepdims=True), 1e-300)
    np.testing.assert_allclose(adata.obsm["X_nmf_usage"], usage, atol=1e-12)


def test_tl_top_genes_specificity_of_a_poisson_fit_weighs_cells_by_counts():
    """`tl.top_genes`' specificity (each factor's share of a gene's expected counts) read
    a Poisson fit's proportions as the cell factors: a gene 97 % of whose expected counts
    came from the deep cells' factor was given 32 % to it."""
    X = _depth_contrast()
    X[:50, 20:23] = np.random.default_rng(2).poisson(40, (50, 3))  # shared genes
    adata = ad.AnnData(sp.csr_matrix(X))
    adata.var_names = [f"g{i}" for i in range(X.shape[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 2, solver="mu", loss="poisson", max_iter=1000, tol=1e-10, min_share=0.0)
        model = NMF(2, loss="poisson", max_iter=1000, tol=1e-10, random_state=0)
        proportions = model.fit_transform(sp.csr_matrix(X))
    # the model's expected counts per factor and gene: sum_i c_i W_il H_lj
    expected = (X.sum(axis=1)[:, None] * proportions).sum(axis=0)[:, None] * model.components_
    shares = (expected / expected.sum(axis=0)).T
    table = tl.top_genes(adata, 40, sort_by="specificity", include_inactive=True)
    listed = table.reset_index().set_index(["factor", "gene"])["specificity"]
    checked = 0
    for gene in ("g20", "g21", "g22"):
        for factor in range(2):
            if (factor, gene) in listed.index:
                assert listed[(factor, gene)] == pytest.approx(shares[int(gene[1:]), factor])
                checked += 1
    assert checked >= 3


def test_tl_nmf_kl_factor_share_is_unchanged():
    """Guard (passes on both): a fit whose cell factors are in counts (``loss="kl"``) keeps
    its shares of ``W H``."""
    X = _depth_contrast()
    adata = ad.AnnData(sp.csr_matrix(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 2, solver="mu", loss="kl", max_iter=500)
    W, H = adata.obsm["X_nmf"], adata.varm["NMF"].T
    fitted = W * H.sum(axis=1)
    np.testing.assert_allclose(
        adata.uns["nmf"]["factor_share"], fitted.sum(0) / fitted.sum(), rtol=1e-9
    )


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_factor_loss_poisson_with_weights_uses_the_counted_totals(layout):
    """Guard (passes on both; its docstring was fixed): `factor_loss` of ``"poisson"`` with
    weights scales ``W H`` by the totals over the entries of weight > 0, as `NMF` fits it
    (its docstring said ``sum(X, axis=1)``), so it is the fit's ``loss_``."""
    rng = np.random.default_rng(7)
    X = rng.poisson(1.0, (12, 9)).astype(float)
    W, H = rng.random((12, 3)), rng.random((3, 9))
    weights = (rng.random((12, 9)) > 0.3).astype(float)
    data = sp.csr_matrix(X) if layout == "sparse" else X
    counted = np.where(weights > 0, X, 0.0).sum(axis=1)
    expected = np.sum(weights * divergence(X, counted[:, None] * (W @ H), "kl"))
    assert factor_loss(data, W, H, "poisson", weights=weights) == pytest.approx(expected)
    model = NMF(3, loss="poisson", weights=weights, max_iter=20, random_state=0)
    fitted = model.fit_transform(data)
    loss = factor_loss(data, fitted, model.components_, "poisson", weights=weights)
    assert loss == pytest.approx(model.loss_, rel=1e-10)


@pytest.mark.parametrize("dict_form", [True, False])
def test_tl_nmf_names_a_factor_mask_of_h_over_every_gene_under_mask_var(dict_form):
    """``factor_mask`` of H over every gene with ``mask_var``: the solver's
    "factor_mask['H'] must be a 0/1 array of shape (3, 15)" did not say that 15 counts the
    fitted genes only (weights over every gene were told so); the fitted genes' mask fits."""
    adata = ad.AnnData(sp.csr_matrix(_counts(60, 30)))
    adata.var["hv"] = np.arange(30) % 2 == 0
    h_mask = np.ones((3, 30))
    h_mask[0, 1::2] = 0  # zero over genes mask_var leaves out: the fitted genes' mask is all 1
    factor_mask = {"H": h_mask} if dict_form else h_mask
    with pytest.raises(ValueError, match=r"over every gene, and mask_var fits 15 of them"):
        tl.nmf(adata, 3, solver="mu", mask_var="hv", factor_mask=factor_mask)
    assert "nmf" not in adata.uns
    fitted = h_mask[:, adata.var["hv"].to_numpy()]
    tl.nmf(adata, 3, solver="mu", mask_var="hv", factor_mask={"H": fitted}, max_iter=20)
    assert adata.varm["NMF"].shape == (30, 3)


def _named_counts():
    cells = [f"c{i}" for i in range(6)]
    counts = np.random.default_rng(0).poisson(2, (6, 4)).astype(float)
    X = pd.DataFrame(counts, index=cells, columns=list("abcd"))
    weights = pd.DataFrame(np.ones((6, 4)), index=cells, columns=X.columns)
    weights.loc["c0"] = 0.0  # cell c0 left out
    return X, weights


@pytest.mark.parametrize("rows", ["reversed", "renamed"])
def test_a_frame_of_weights_in_another_cell_order_is_refused(rows):
    """A DataFrame of weights (`NMF`) or mask (`VBNMF`) whose rows are X's cells in another
    order was matched by position: cell c0's weights of 0 fell on c5 (its columns in another
    order were refused). Rows named otherwise are refused too; the advised reorder fits as
    the frame in X's order."""
    import vbsnmf

    X, weights = _named_counts()
    moved = weights.iloc[::-1]
    if rows == "renamed":
        moved = weights.set_axis([f"d{i}" for i in range(6)], axis=0)
    with pytest.raises(ValueError, match=r"weights has other row names than X .*loc\[X\.index\]"):
        NMF(2, weights=moved, max_iter=20).fit(X)
    with pytest.raises(ValueError, match="mask has other row names than X"):
        vbsnmf.VBNMF(2, max_iter=3).fit(X, mask=moved == 0)
    if rows == "reversed":
        advised = NMF(2, weights=moved.loc[X.index], max_iter=20, random_state=0).fit(X)
        expected = NMF(2, weights=weights, max_iter=20, random_state=0).fit(X)
        np.testing.assert_array_equal(advised.components_, expected.components_)


def test_weights_without_cell_names_still_fit_a_named_x():
    """Guard (passes on both): weights from an array, or a frame of a default (numbered)
    index, carry no cell names to match, and fit as the array."""
    X, weights = _named_counts()
    as_array = NMF(2, weights=weights.to_numpy(), max_iter=20, random_state=0).fit(X)
    unnamed = NMF(2, weights=weights.reset_index(drop=True), max_iter=20, random_state=0).fit(X)
    np.testing.assert_array_equal(as_array.components_, unnamed.components_)


@pytest.mark.parametrize("moved", ["cells", "genes"])
def test_tl_nmf_matches_a_frame_of_weights_by_name(moved):
    """`tl.nmf` hands the solver the counts without names: a DataFrame of weights in another
    cell or gene order than the AnnData's was matched by position. It is now refused; the
    frame in the AnnData's order (within mask_var) fits."""
    adata = ad.AnnData(sp.csr_matrix(_counts(12, 5)))
    adata.obs_names = [f"cell{i}" for i in range(12)]
    adata.var_names = [f"gene{i}" for i in range(5)]
    adata.var["hv"] = [True, True, False, True, True]
    weights = pd.DataFrame(1.0, index=adata.obs_names, columns=adata.var_names)
    weights.loc["cell0"] = 0.0
    other = weights.iloc[::-1] if moved == "cells" else weights.iloc[:, ::-1]
    noun = "row" if moved == "cells" else "column"
    with pytest.raises(ValueError, match=rf"weights' {noun} names are not those of"):
        tl.nmf(adata, 2, solver="mu", weights=other, max_iter=5)
    assert "nmf" not in adata.uns
    tl.nmf(adata, 2, solver="mu", weights=weights, max_iter=5)
    fitted = weights.loc[:, adata.var["hv"].to_numpy()]
    tl.nmf(adata, 2, solver="mu", weights=fitted, mask_var="hv", max_iter=5)
    assert adata.uns["nmf"]["params"]["mask_var"] == "hv"
