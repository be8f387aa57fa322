"""Thirty-fourth hostile pass: masks of missing entries through every route that takes one.

Defects, each test failing on the code before its fix: under the fixed prior a mask that
left a whole cell (or gene) unobserved switched off, or loosened, the check of the optimum's
range (its observed share was 0, or counted the line masked whole), so a float32 fit at a
tiny ``prior_rate`` ran until its ELBO was -inf (`FloatingPointError`) where the fit
without that line is refused before any pass. A dask masked array given as ``mask`` was
computed and its hidden data read as the mask, where a numpy masked array is refused. A
mask DataFrame given genes x cells was told to reorder its columns by X's genes
(``mask[X.columns]``, a KeyError), and a transposed array only that the shapes differ.
``tl.nmf(solver="mu", mask=...)`` was sent to ``VBNMF.fit``, though the classical solver
leaves entries out itself by ``weights=`` of 0 (and tl.nmf's weights given genes x cells were
told to be reordered by gene). Non-integer values under the mask only, which the fit leaves
out, drew the `NonCountWarning` that the data look normalised.

The other tests are guards that pass on the code before the fixes too; each says so.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.special import digamma, gammaln, logsumexp

import vbsnmf
from vbsnmf import VBNMF
from vbsnmf.classic import NMF

FLOAT32_MAX = float(np.finfo(np.float32).max)


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter's ConvergenceWarning
        return call(*args, **kwargs)


def _counts(n_cells=30, n_genes=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(2, 1, (n_cells, 3)) @ rng.gamma(0.5, 1, (3, n_genes))).astype(
        float
    )


# -- 1: a line masked whole and the fixed prior's range ---------------------------------------
def _wide_counts():
    return np.random.default_rng(0).poisson(1.0, (1000, 10)).astype(float)


def _refused_before_any_pass(X, mask, prior_rate):
    passes = []
    model = VBNMF(2, prior="gamma", prior_rate=prior_rate, dtype=np.float32, max_iter=3)
    with pytest.raises(ValueError, match="beyond float32's range") as error:
        model.fit(X, mask=mask, callback=lambda n_iter, params, trace: passes.append(n_iter))
    assert passes == []
    assert not hasattr(model, "components_")
    return str(error.value)


def test_a_cell_masked_whole_keeps_the_fixed_prior_range_check():
    """One cell masked in every gene made the observed share 0, which switched the check
    off: the fit ran (at max_iter=20000 it ended in a FloatingPointError, its ELBO -inf).
    The bound holds for the other 999 cells, and the message names X's shape."""
    X = _wide_counts()
    mask = np.zeros(X.shape, bool)
    mask[5] = True
    message = _refused_before_any_pass(X, mask, 1e-36)
    assert "shape (1000, 10)" in message


def test_a_gene_masked_whole_is_left_out_of_the_bound():
    """One gene masked in every cell counted as missing in every cell's line: a share of
    0.9 lowered the bound below float32's largest number at prior_rate=2.8e-36, and the fit
    ran (at max_iter=20000 it too ended in a FloatingPointError after 80 s). Without the
    gene the bound, 991 / 2.8e-36, is beyond it."""
    X = _wide_counts()
    mask = np.zeros(X.shape, bool)
    mask[:, 3] = True
    assert 991 / 2.8e-36 > FLOAT32_MAX > 0.9 * 990 / 2.8e-36
    _refused_before_any_pass(X, mask, 2.8e-36)


@pytest.mark.parametrize("seed", range(6))
def test_the_observed_extent_against_a_direct_count(seed):
    """`_model.observed_extent` (new with the fix) against the matrix without its lines
    masked whole, counted directly: its shape, and the least share of its shorter side that
    a line of its longer side observes (which side is shorter may change)."""
    from vbsnmf._model import Mask, observed_extent

    rng = np.random.default_rng(seed)
    missing = rng.random((12, 10)) < 0.3
    missing[rng.choice(12, 3, replace=False)] = True
    missing[:, rng.choice(10, seed % 3, replace=False)] = True
    kept = missing[~missing.all(axis=1)][:, ~missing.all(axis=0)]
    shortest = int(np.argmin(kept.shape))
    share = 1.0 - kept.sum(axis=shortest).max() / kept.shape[shortest]
    extent, observed = observed_extent(missing.shape, Mask.of(sp.csr_array(missing)))
    assert extent == kept.shape
    assert observed == pytest.approx(share, rel=1e-15) and observed > 0


def test_lines_masked_whole_still_fit_inside_the_range():
    """A guard (passes on both): a cell and a gene masked whole at a prior_rate whose bound
    is inside float32's range still fit, every factor finite."""
    X = _wide_counts()
    mask = np.zeros(X.shape, bool)
    mask[5] = True
    mask[:, 3] = True
    model = VBNMF(2, prior="gamma", prior_rate=1e-30, dtype=np.float32, max_iter=5)
    _quiet(model.fit, X, mask=mask)
    assert model.n_iter_ == 5 and np.isfinite(model.components_).all()


# -- 2: a dask masked array as mask -----------------------------------------------------------
def test_a_dask_masked_array_is_refused_as_a_numpy_one():
    """Computed, a dask masked array is a numpy one whose hidden data np.asarray read as
    the mask: every entry here observed, the masked entries' mark lost."""
    rng = np.random.default_rng(0)
    X = rng.poisson(2, (40, 10)).astype(float)
    missing = rng.random(X.shape) < 0.2
    hidden = da.from_array(np.zeros(X.shape, bool), chunks=20)
    mask = da.ma.masked_array(hidden, mask=da.from_array(missing, chunks=20))
    model = VBNMF(2, max_iter=3, random_state=0)
    with pytest.raises(TypeError, match=r"masked array.*da\.ma\.getmaskarray"):
        model.fit(X, mask=mask)
    with pytest.raises(TypeError, match=r"masked array.*np\.ma\.getmaskarray"):
        model.fit(X, mask=np.ma.masked_array(np.zeros(X.shape, bool), mask=missing))
    assert not hasattr(model, "components_")
    # the advised mask fits as the numpy one
    fitted = _quiet(VBNMF(2, max_iter=3, random_state=0).fit, X, mask=da.ma.getmaskarray(mask))
    expected = _quiet(VBNMF(2, max_iter=3, random_state=0).fit, X, mask=missing)
    np.testing.assert_array_equal(fitted.components_, expected.components_)


# -- 3: a transposed mask ---------------------------------------------------------------------
def _named():
    rng = np.random.default_rng(0)
    cells, genes = [f"cell{i}" for i in range(40)], [f"gene{j}" for j in range(10)]
    X = pd.DataFrame(rng.poisson(2, (40, 10)).astype(float), index=cells, columns=genes)
    mask = pd.DataFrame(rng.random(X.shape) < 0.2, index=cells, columns=genes)
    return X, mask


def test_a_genes_by_cells_mask_frame_is_said_to_be_transposed():
    """It was told "pass them in X's order, mask[X.columns]", a KeyError on its columns
    (cells); and the transposed weights of the classical NMF alike. ``mask.T`` fits."""
    X, mask = _named()
    with pytest.raises(ValueError, match=r"mask is X's transpose.*mask\.T") as error:
        VBNMF(2, max_iter=3).fit(X, mask=mask.T)
    assert "mask[X.columns]" not in str(error.value)
    weights = (~mask).astype(float)
    with pytest.raises(ValueError, match=r"weights is X's transpose.*weights\.T"):
        NMF(2, solver="mu", weights=weights.T, max_iter=3).fit(X)
    model = _quiet(VBNMF(2, max_iter=3, random_state=0).fit, X, mask=mask.T.T)
    assert model.n_iter_ == 3


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_a_transposed_mask_array_is_said_to_be_transposed(layout):
    """A mask of X's shape transposed was refused naming the two shapes only."""
    X, mask = _named()
    flipped = mask.to_numpy().T
    flipped = sp.csr_array(flipped) if layout == "csr" else flipped
    with pytest.raises(
        ValueError, match=r"shape \(10, 40\), X has \(40, 10\), transposed.*mask\.T"
    ):
        VBNMF(2, max_iter=3).fit(X.to_numpy(), mask=flipped)


def test_tl_nmf_weights_given_genes_by_cells_are_said_to_be_transposed():
    """tl.nmf's classical weights (0: missing) as a genes x cells frame were told
    "pass them in adata's order, weights[fitted_gene_names]", a KeyError; as an array,
    only that the shapes differ. ``weights.T`` fits."""
    X, mask = _named()
    adata = ad.AnnData(
        sp.csr_matrix(X.to_numpy(np.float32)),
        obs=pd.DataFrame(index=X.index),
        var=pd.DataFrame(index=X.columns),
    )
    weights = (~mask).astype(float)
    with pytest.raises(ValueError, match=r"weights is genes x cells.*weights\.T") as error:
        vbsnmf.tl.nmf(adata, 2, solver="mu", weights=weights.T, max_iter=3)
    assert "weights[fitted_gene_names]" not in str(error.value)
    with pytest.raises(ValueError, match=r"\(10, 40\), X has shape \(40, 10\), transposed"):
        vbsnmf.tl.nmf(adata, 2, solver="mu", weights=weights.T.to_numpy(), max_iter=3)
    assert "X_nmf" not in adata.obsm
    _quiet(vbsnmf.tl.nmf, adata, 2, solver="mu", weights=weights.T.T, max_iter=3)
    assert adata.obsm["X_nmf"].shape == (40, 2)


def test_other_names_are_still_not_called_a_transpose():
    """A guard (passes on both): a mask of other genes, or of cells in another order, is
    told to be reordered as before; X's and the mask's shapes merely unequal are named."""
    X, mask = _named()
    with pytest.raises(ValueError, match=r"other column names.*mask\[X\.columns\]"):
        VBNMF(2).fit(X, mask=mask.iloc[:, :9])
    with pytest.raises(ValueError, match=r"other row names.*mask\.loc\[X\.index\]"):
        VBNMF(2).fit(X, mask=mask.iloc[::-1])
    with pytest.raises(ValueError, match=r"shape \(39, 10\), X has \(40, 10\)$"):
        VBNMF(2).fit(X.to_numpy(), mask=mask.to_numpy()[:39])
    with pytest.raises(ValueError, match=r"weights' column names.*weights\[fitted_gene_names\]"):
        adata = ad.AnnData(X.to_numpy(np.float32), obs=pd.DataFrame(index=X.index))
        adata.var_names = X.columns
        vbsnmf.tl.nmf(adata, 2, solver="mu", weights=(~mask).iloc[:, ::-1].astype(float))


# -- 4: tl.nmf's advice for a classical solver ------------------------------------------------
def test_tl_nmf_advises_weights_for_a_mask_under_a_classical_solver():
    """``tl.nmf(solver="mu", mask=...)`` was told to use VBNMF.fit; the advice, weights of
    0 at the missing entries, fits without them (the counts there change nothing). Under
    a VB solver the advice stays VBNMF.fit's mask."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(2, (40, 10)).astype(np.float32)
    missing = rng.random(counts.shape) < 0.2
    adata = ad.AnnData(sp.csr_matrix(counts))
    with pytest.raises(ValueError, match=r"weights=.*solver='mu'") as error:
        vbsnmf.tl.nmf(adata, n_components=2, solver="mu", mask=missing)
    assert "VBNMF(...).fit" not in str(error.value)
    with pytest.raises(ValueError, match=r"VBNMF\(\.\.\.\)\.fit\(X, mask=\.\.\.\)"):
        vbsnmf.tl.nmf(adata, n_components=2, mask=missing)
    assert "X_nmf" not in adata.obsm
    fitted = []
    for values in (counts, np.where(missing, 50, counts).astype(np.float32)):
        other = ad.AnnData(sp.csr_matrix(values))
        _quiet(vbsnmf.tl.nmf, other, n_components=2, solver="mu", weights=1 - missing, max_iter=30)
        fitted.append(other.obsm["X_nmf"])
    np.testing.assert_array_equal(*fitted)


# -- 5: the non-integer warning of values under the mask -------------------------------------
def _non_count_warnings(X, mask):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        VBNMF(2, max_iter=3, random_state=0).fit(X, mask=mask)
    return [w for w in caught if issubclass(w.category, vbsnmf.NonCountWarning)]


def test_values_under_the_mask_do_not_draw_the_non_count_warning():
    """An imputed mean at the missing entries (2.5), left out of the fit, drew "X holds
    non-integer values; ... expects raw counts (not normalised or log-transformed
    data)" though every count fitted was whole. Non-integers observed still warn, once."""
    rng = np.random.default_rng(0)
    X = rng.poisson(2, (40, 10)).astype(float)
    missing = rng.random(X.shape) < 0.2
    assert _non_count_warnings(np.where(missing, 2.5, X), missing) == []
    assert _non_count_warnings(np.where(missing, 2.5, X), sp.csr_array(missing)) == []
    assert len(_non_count_warnings(X + 0.5 * ~missing, missing)) == 1
    assert len(_non_count_warnings(np.log1p(X), missing)) == 1
    assert len(_non_count_warnings(np.where(missing, 2.5, X), None)) == 1  # unmasked: fitted


# -- guards: the masked model against numpy and against deletion ------------------------------
def _kl_gamma(shape, rate, a, b):
    return (
        (shape - a) * digamma(shape)
        - gammaln(shape)
        + gammaln(a)
        + a * (np.log(rate) - np.log(b))
        + shape * (b - rate) / rate
    )


def _numpy_masked_fit(X, observed, start, a, b, n_iter):
    """docs/model.md's fixed-prior batch VB with the masked entries left out, dense and
    entry by entry: the q after each step and the ELBO of each q."""
    row_shape, col_shape = start["cell_shape"].copy(), start["gene_shape"].copy()
    row_rate = np.broadcast_to(start["cell_rate"], row_shape.shape).astype(float)
    col_rate = np.broadcast_to(start["gene_rate"], col_shape.shape).astype(float)
    states, elbos = [], []
    for _ in range(n_iter):
        row_log = digamma(row_shape) - np.log(row_rate)
        col_log = digamma(col_shape) - np.log(col_rate)
        row_stat, col_stat = np.zeros_like(row_shape), np.zeros_like(col_shape)
        for i, j in zip(*np.nonzero((X != 0) & observed)):  # the zeros never visited
            logits = row_log[i] + col_log[j]
            phi = np.exp(logits - logsumexp(logits))
            row_stat[i] += X[i, j] * phi
            col_stat[j] += X[i, j] * phi
        old_col_mean = col_shape / col_rate
        row_shape, row_rate = a + row_stat, b + observed @ old_col_mean
        col_shape, col_rate = a + col_stat, b + observed.T @ (row_shape / row_rate)
        states.append((row_shape, row_rate, col_shape, col_rate))
        row_log = digamma(row_shape) - np.log(row_rate)
        col_log = digamma(col_shape) - np.log(col_rate)
        value = 0.0
        for i, j in zip(*np.nonzero((X != 0) & observed)):
            value += X[i, j] * logsumexp(row_log[i] + col_log[j]) - gammaln(X[i, j] + 1)
        value -= np.sum(observed * ((row_shape / row_rate) @ (col_shape / col_rate).T))
        value -= _kl_gamma(row_shape, row_rate, a, b).sum()
        value -= _kl_gamma(col_shape, col_rate, a, b).sum()
        elbos.append(value)
    return states, elbos


def test_masked_fit_follows_numpy_step_by_step():
    """A guard (passes on both): twelve plain steps of a fixed-prior fit whose mask covers
    counts and zeros of X, a whole cell and a whole gene, against a dense numpy
    implementation of docs/model.md: every q after every step to 1e-11, every ELBO of the
    trace to 1e-12 relative, the trace never falling, and the counts under the mask
    changing nothing."""
    X = _counts(9, 7, seed=2)
    rng = np.random.default_rng(5)
    mask = rng.random(X.shape) < 0.25
    mask[2] = True
    mask[:, 4] = True
    assert (X[mask] > 0).any() and (X[mask] == 0).any()
    a, b = 0.7, 0.4
    start = _quiet(VBNMF(3, prior="gamma", random_state=0, max_iter=2).fit, X)
    init = dict(
        cell_shape=start.cell_shape_,
        cell_rate=start.cell_rate_,
        gene_shape=start.gene_shape_,
        gene_rate=start.gene_rate_,
    )
    states, elbos = _numpy_masked_fit(X, ~mask, init, a, b, 12)
    seen = []

    def record(n_iter, params, trace):
        seen.append(tuple(np.array(getattr(params, name)) for name in _PARAMS))

    settings = dict(prior="gamma", prior_shape=a, prior_rate=b, max_iter=12, tol=0.0)
    model = _quiet(VBNMF(3, **settings).fit, X, mask=mask, init=init, callback=record)
    assert len(seen) == 12
    for step, (ours, theirs) in enumerate(zip(seen, states)):
        for name, got, expected in zip(_PARAMS, ours, theirs):
            np.testing.assert_allclose(got, expected, rtol=1e-11, err_msg=f"{name} {step}")
    np.testing.assert_allclose(model.elbo_trace_, elbos, rtol=1e-12)
    assert np.all(np.diff(model.elbo_trace_) >= 0)
    changed = np.where(mask, 1000.0, X)
    again = _quiet(VBNMF(3, **settings).fit, changed, mask=mask, init=init)
    np.testing.assert_array_equal(again.elbo_trace_, model.elbo_trace_)


_PARAMS = ("row_shape", "row_rate", "col_shape", "col_rate")


@pytest.mark.parametrize("line", ["cell", "gene"])
def test_a_line_masked_whole_is_the_fit_without_it(line):
    """A guard (passes on both): under the fixed prior a cell (or gene) masked in every
    entry is, from the same start, the fit of X without it: bit for bit here (factors and
    trace to 1e-13), the masked line's q the prior's."""
    X = _counts()
    start = _quiet(VBNMF(3, prior="gamma", random_state=0, max_iter=3).fit, X)
    keep_cells, keep_genes = np.ones(X.shape[0], bool), np.ones(X.shape[1], bool)
    mask = np.zeros(X.shape, bool)
    if line == "cell":
        mask[4], keep_cells[4] = True, False
    else:
        mask[:, 4], keep_genes[4] = True, False

    def init(cells, genes):
        return dict(
            cell_shape=start.cell_shape_[cells],
            cell_rate=start.cell_rate_,
            gene_shape=start.gene_shape_[genes],
            gene_rate=start.gene_rate_,
        )

    everything = np.ones(X.shape[0], bool), np.ones(X.shape[1], bool)
    masked = _quiet(VBNMF(3, prior="gamma", max_iter=30).fit, X, mask=mask, init=init(*everything))
    reduced = _quiet(
        VBNMF(3, prior="gamma", max_iter=30).fit,
        X[keep_cells][:, keep_genes],
        init=init(keep_cells, keep_genes),
    )
    np.testing.assert_allclose(masked.components_[:, keep_genes], reduced.components_, rtol=1e-13)
    np.testing.assert_allclose(
        (masked.cell_shape_ / masked.cell_rate_)[keep_cells],
        reduced.cell_shape_ / reduced.cell_rate_,
        rtol=1e-13,
    )
    np.testing.assert_allclose(masked.elbo_trace_, reduced.elbo_trace_, rtol=1e-13)
    if line == "cell":  # the prior's q: shape a = 1, rate b = 1
        np.testing.assert_array_equal(masked.cell_shape_[4], 1.0)
        np.testing.assert_array_equal(masked.cell_rate_[4], 1.0)


def test_the_checkpoint_records_only_the_observed_nonzeros():
    """A guard (passes on both): the zeros are never visited and masked counts leave the
    data: a masked fit's checkpoint records the observed nonzeros and their total, not X's,
    and a resume with the mask in another format (duplicates, explicit zeros) continues it
    bit for bit as an uninterrupted fit."""
    X = _counts()
    rng = np.random.default_rng(1)
    mask = rng.random(X.shape) < 0.3
    mask[3] = True
    observed_nonzero = (X != 0) & ~mask
    rows, cols = np.nonzero(mask)
    repeated = sp.coo_array(
        (
            np.r_[np.ones(len(rows)), np.ones(len(rows)), 0.0],
            (np.r_[rows, rows, 0], np.r_[cols, cols, 0]),
        ),
        shape=X.shape,
    )
    if mask[0, 0]:  # the explicit zero must sit on an observed entry
        repeated = sp.coo_array(
            (repeated.data[:-1], (repeated.row[:-1], repeated.col[:-1])), X.shape
        )
    settings = dict(prior="gamma", random_state=0, tol=0.0)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "masked.npz")
        _quiet(VBNMF(3, checkpoint=path, max_iter=4, **settings).fit, X, mask=mask)
        with np.load(path, allow_pickle=False) as stored:
            text = " ".join(
                str(stored[name]) for name in stored.files if stored[name].dtype.kind == "U"
            )
        assert f"'nnz': {int(observed_nonzero.sum())}" in text.replace('"', "'")
        resumed = _quiet(
            VBNMF(3, checkpoint=path, resume=True, max_iter=10, **settings).fit, X, mask=repeated
        )
    whole = _quiet(VBNMF(3, max_iter=10, **settings).fit, X, mask=mask)
    np.testing.assert_array_equal(resumed.elbo_trace_, whole.elbo_trace_)
    np.testing.assert_array_equal(resumed.components_, whole.components_)


def test_mask_formats_from_anndata_views_and_dask_fit_alike():
    """A guard (passes on both): a mask read from an AnnData view's X and layer (dense and
    sparse), as a 0/1 float, int8 with a stored zero, a dask array of sparse chunks, and a
    pandas frame of nullable booleans, fits as the boolean array; the AnnData itself is
    refused by name."""
    X = _counts(40, 12)
    rng = np.random.default_rng(2)
    missing = rng.random(X.shape) < 0.2
    holder = ad.AnnData(
        X=sp.csr_matrix(np.vstack([missing, missing]).astype(np.float32)),
        layers={"missing": np.vstack([missing, missing])},
    )
    view = holder[:40]
    assert view.is_view
    int8 = sp.csr_array(missing.astype(np.int8))
    int8.data[0] = 0  # a stored zero: observed
    kept = missing.copy()
    kept[tuple(np.argwhere(missing)[0])] = False
    forms = {
        "view X": (view.X, missing),
        "view layer": (view.layers["missing"], missing),
        "0/1 float": (missing.astype(float), missing),
        "int8 with a stored zero": (int8, kept),
        "dask sparse chunks": (
            da.from_array(missing, chunks=(16, 12)).map_blocks(sp.csr_matrix),
            missing,
        ),
        "nullable frame": (pd.DataFrame(missing).astype("boolean"), missing),
    }
    for name, (mask, expected_mask) in forms.items():
        fitted = _quiet(VBNMF(3, random_state=0, max_iter=5).fit, X, mask=mask)
        expected = _quiet(VBNMF(3, random_state=0, max_iter=5).fit, X, mask=expected_mask)
        np.testing.assert_array_equal(fitted.components_, expected.components_, err_msg=name)
    with pytest.raises(TypeError, match="mask is an AnnData"):
        VBNMF(3).fit(X, mask=view)
