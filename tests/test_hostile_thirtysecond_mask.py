"""Thirty-second hostile pass: masks of missing entries and the projection of new cells.

Defects, each test failing on the code before its fix: `VBNMF.transform` after a fit with
``mask`` fitted new cells against every gene, those masked in every cell too, whose q the
fit left at the prior's (docs/model.md, "Missing entries": a column masked entirely is the
fit without it); their counts there, fitted against the prior's mean, moved every new
cell's factors (under ``prior_shape=0.3, prior_rate=1e-3`` the mean is 300 and the new
cells' expected counts fell about thirtyfold). And ``mask=`` given with a dask X or a path
under ``solver="batch"`` was refused as "supported by batch VB on a matrix in memory; not
by solver='batch' on this input", batch VB seeming to refuse itself, the dask array or
file in the way not named (and SVI's refusal gave no advice). A mask of ragged lists
leaked numpy's "inhomogeneous shape" message, naming no mask. A COO or CSC mask whose row
index lay beyond its shape crashed the interpreter (scipy's conversion to CSR ran before
the mask's structure was checked).

The other tests are guards that pass on the code before the fixes too; each says so.
"""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
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

UNOBSERVED = 5  # the gene masked in every cell


def _data(seed=0, n_genes=40):
    rng = np.random.default_rng(seed)
    loadings = rng.gamma(0.5, 1, (n_genes, 3))
    X = rng.poisson(rng.gamma(2, 1, (120, 3)) @ loadings.T).astype(float)
    X_new = rng.poisson(rng.gamma(2, 1, (12, 3)) @ loadings.T).astype(float)
    mask = np.zeros(X.shape, bool)
    mask[:, UNOBSERVED] = True
    return X, X_new, mask


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter's ConvergenceWarning
        return call(*args, **kwargs)


def _settings(prior):
    if prior == "gamma":  # a small prior_rate: the unobserved gene's mean is 300
        return dict(prior="gamma", prior_shape=0.3, prior_rate=1e-3)
    return dict(prior="hierarchical")


def _without_gene(model, gene):
    """``model`` with ``gene`` taken out of its fitted gene side, as if never fitted."""
    kept = np.arange(model.n_features_in_) != gene
    reduced = copy.deepcopy(model)
    reduced.gene_shape_ = model.gene_shape_[kept]
    reduced.gene_rate_ = model.gene_rate_[kept]
    reduced.components_ = model.components_[:, kept]
    reduced.n_features_in_ = int(kept.sum())
    reduced.__dict__.pop("_unobserved_genes", None)  # the gene side is whole now
    return reduced, kept


# -- 1: transform leaves out genes a masked fit never observed -------------------------------
@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
@pytest.mark.parametrize("accelerate", [False, True])
def test_transform_leaves_out_genes_masked_in_every_cell(prior, accelerate):
    """A gene masked in every cell entered the new cells' likelihood against the prior's
    mean; the projection now equals that of the same gene side without the gene, bit for
    bit (sparse, dense and DataFrame X alike)."""
    X, X_new, mask = _data()
    model = _quiet(
        VBNMF(3, random_state=0, max_iter=60, accelerate=accelerate, **_settings(prior)).fit,
        X,
        mask=sp.csr_array(mask),
    )
    reduced, kept = _without_gene(model, UNOBSERVED)
    reference = _quiet(reduced.transform, X_new[:, kept])
    for given in (X_new, sp.csc_matrix(X_new), sp.coo_array(X_new)):
        np.testing.assert_array_equal(_quiet(model.transform, given), reference)
    shape, _ = _quiet(model.transform_posterior, X_new)
    np.testing.assert_array_equal(shape, _quiet(reduced.transform_posterior, X_new[:, kept])[0])


def test_transform_of_unobserved_gene_against_numpy():
    """The projection of one new cell under the fixed prior, against an independent numpy
    coordinate ascent whose data term and rate both leave the unobserved gene out; with
    it in (the code before the fix) the factors were far from it."""
    X, X_new, mask = _data(seed=3)
    model = _quiet(VBNMF(3, random_state=0, max_iter=80, **_settings("gamma")).fit, X, mask=mask)
    model.set_params(max_iter=20000, tol=1e-15)
    factors = _quiet(model.transform, X_new[:2])
    a, b = 0.3, 1e-3
    kept = np.arange(X.shape[1]) != UNOBSERVED
    w_shape, w_rate = model.gene_shape_[kept], model.gene_rate_[kept]
    log_w = digamma(w_shape) - np.log(w_rate)
    rate = b + (w_shape / w_rate).sum(axis=0)  # over the observed genes only
    for cell, counts in enumerate(X_new[:2, kept]):
        shape = np.full(3, a + counts.sum() / 3)
        for _ in range(20000):
            log_phi = digamma(shape) - np.log(rate) + log_w
            phi = np.exp(log_phi - log_phi.max(axis=1, keepdims=True))
            phi /= phi.sum(axis=1, keepdims=True)
            updated = a + counts @ phi
            if np.abs(updated - shape).max() < 1e-13 * shape.max():
                shape = updated
                break
            shape = updated
        np.testing.assert_allclose(factors[cell], shape / rate, rtol=1e-6)


def test_transform_unobserved_genes_follow_each_fit():
    """The genes left out are the last fit's: a refit without a mask (or with one that
    observes every gene) projects on every gene again, and a pickled masked model keeps
    leaving its gene out."""
    X, X_new, mask = _data()
    model = VBNMF(3, random_state=0, max_iter=30, **_settings("gamma"))
    _quiet(model.fit, X, mask=mask)
    masked_factors = _quiet(model.transform, X_new)
    reduced, kept = _without_gene(model, UNOBSERVED)
    np.testing.assert_array_equal(masked_factors, _quiet(reduced.transform, X_new[:, kept]))
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(_quiet(restored.transform, X_new), masked_factors)
    partial = mask.copy()
    partial[0, UNOBSERVED] = False  # observed in one cell: fitted, so kept
    _quiet(model.fit, X, mask=partial)
    full = copy.deepcopy(model)
    full.__dict__.pop("_unobserved_genes", None)
    np.testing.assert_array_equal(_quiet(model.transform, X_new), _quiet(full.transform, X_new))
    _quiet(model.fit, X)
    assert getattr(model, "_unobserved_genes", None) is None


def test_fit_transform_with_gene_masked_everywhere_keeps_prior_loadings():
    """Guard (passes on the code before the fix too): the masked gene's q stays the
    prior's (components_ its mean a/b) and the fit's own cells' factors are those of
    the fit; only the projection of new cells changed."""
    X, _, mask = _data()
    model = VBNMF(3, random_state=0, max_iter=30, **_settings("gamma"))
    factors = _quiet(model.fit_transform, X, mask=mask)
    np.testing.assert_allclose(model.components_[:, UNOBSERVED], 0.3 / 1e-3, rtol=1e-12)
    np.testing.assert_array_equal(factors, model.cell_shape_ / model.cell_rate_)


# -- 2: mask= refused by what stands in the way ----------------------------------------------
def test_mask_with_dask_x_names_the_dask_array():
    """A dask X under batch VB was refused as "not by solver='batch' on this input"."""
    X, _, mask = _data(n_genes=8)
    with pytest.raises(ValueError, match="mask=") as refused:
        VBNMF(2).fit(da.from_array(X, chunks=40), mask=mask)
    message = str(refused.value)
    assert "dask X" in message and "X.compute()" in message
    assert "solver='batch'" not in message


def test_mask_with_path_names_the_file(tmp_path):
    """A path under batch VB (and under SVI) is refused naming the file and the way to
    read it into memory; under SVI the solver too."""
    X, _, mask = _data(n_genes=8)
    path = tmp_path / "counts.h5ad"
    ad.AnnData(sp.csr_matrix(X)).write_h5ad(path)
    with pytest.raises(ValueError, match="mask=") as refused:
        VBNMF(2).fit(path, mask=mask)
    message = str(refused.value)
    assert str(path) in message and "vbsnmf.io.read" in message
    assert "solver='batch'" not in message
    with pytest.raises(ValueError, match="mask=") as refused:
        VBNMF(2, solver="svi").fit(path, mask=mask)
    message = str(refused.value)
    assert str(path) in message and "solver='svi'" in message


def test_mask_under_svi_in_memory_names_the_solver():
    """SVI on a matrix in memory is refused naming the solver (as before) and now
    advising batch VB, which the message did not say."""
    X, _, mask = _data(n_genes=8)
    with pytest.raises(ValueError, match="not by solver='svi': fit with solver='batch'"):
        VBNMF(2, solver="svi").fit(X, mask=mask)


# -- guards: mask formats, checkpoints, projection by name ------------------------------------
def test_mask_formats_fit_alike():
    """Guard (passes on the code before the fixes too): the same missing entries as a dense
    bool, np.matrix, CSR, CSC, COO with repeated entries, DIA, LIL and DOK, a sparse
    DataFrame, and nullable booleans give one fit, bit for bit."""
    rng = np.random.default_rng(1)
    X = rng.poisson(1.5, (30, 8)).astype(float)
    mask = rng.random(X.shape) < 0.15
    rows, cols = np.nonzero(mask)

    def last_elbo(given):
        return _quiet(VBNMF(2, random_state=0, max_iter=15).fit, X, mask=given).elbo_trace_[-1]

    expected = last_elbo(mask)
    repeated = sp.coo_array(
        (np.ones(2 * rows.size), (np.r_[rows, rows], np.r_[cols, cols])), shape=X.shape
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # numpy's on np.matrix
        as_matrix = np.matrix(mask)
    for given in (
        as_matrix,
        sp.csr_matrix(mask),
        sp.csc_array(mask),
        repeated,
        sp.dia_matrix(mask),
        sp.lil_matrix(mask),
        sp.dok_matrix(mask),
        pd.DataFrame(mask).astype(pd.SparseDtype(bool, False)),
        pd.DataFrame(mask).astype("boolean"),
    ):
        assert last_elbo(given) == expected, type(given)


def test_masked_values_of_x_do_not_matter():
    """Guard: a masked entry's count (here 50 in place of X's) changes nothing, in float32
    and float64, and a repeated (non-canonical) X gives the same fit."""
    rng = np.random.default_rng(2)
    X = rng.poisson(2, (30, 8)).astype(float)
    mask = rng.random(X.shape) < 0.2
    for dtype in (np.float64, np.float32):
        fit = VBNMF(2, random_state=0, max_iter=15, dtype=dtype).fit
        expected = _quiet(fit, X, mask=mask).elbo_trace_[-1]
        assert _quiet(fit, np.where(mask, 50.0, X), mask=mask).elbo_trace_[-1] == expected
    rows, cols = np.nonzero(X)
    values = X[rows, cols]
    split = sp.coo_matrix(
        (np.r_[values - 1, np.ones(rows.size)], (np.r_[rows, rows], np.r_[cols, cols])),
        shape=X.shape,
    )
    fit = VBNMF(2, random_state=0, max_iter=15).fit
    assert (
        _quiet(fit, split, mask=mask).elbo_trace_[-1] == _quiet(fit, X, mask=mask).elbo_trace_[-1]
    )


@pytest.mark.parametrize("accelerate", [False, True])
def test_resume_refuses_a_checkpoint_of_another_mask(tmp_path, accelerate):
    """Guard: a checkpoint of an unmasked fit resumed with a mask, a masked one without
    or with other entries, is refused in words; the same entries in another format
    resume it."""
    rng = np.random.default_rng(3)
    X = rng.poisson(2, (40, 10)).astype(float)
    mask = rng.random(X.shape) < 0.1
    other = rng.random(X.shape) < 0.1
    settings = dict(random_state=0, max_iter=4, accelerate=accelerate)
    plain, masked = tmp_path / "plain.npz", tmp_path / "masked.npz"
    _quiet(VBNMF(2, checkpoint=plain, **settings).fit, X)
    _quiet(VBNMF(2, checkpoint=masked, **settings).fit, X, mask=mask)
    resumed = dict(resume=True, **settings)
    with pytest.raises(ValueError, match="ran without one, this fit with"):
        VBNMF(2, checkpoint=plain, **resumed).fit(X, mask=mask)
    with pytest.raises(ValueError, match="ran with one, this fit without"):
        VBNMF(2, checkpoint=masked, **resumed).fit(X)
    with pytest.raises(ValueError, match="other missing entries"):
        VBNMF(2, checkpoint=masked, **resumed).fit(X, mask=other)
    longer = {**resumed, "max_iter": 6}
    model = _quiet(VBNMF(2, checkpoint=masked, **longer).fit, X, mask=sp.csc_array(mask))
    assert model.n_iter_ == 6


def test_project_matches_genes_by_name():
    """Guard: `tl.project` of new cells whose genes come in another order, with extra genes
    (some repeated) beside the reference's, equals the projection in the reference's order,
    bit for bit; missing reference genes are counted and the result moves; a cell
    without counts is warned about."""
    rng = np.random.default_rng(4)
    loadings = rng.gamma(0.5, 1, (30, 3))
    genes = [f"g{i}" for i in range(30)]
    reference = ad.AnnData(
        sp.csr_matrix(rng.poisson(rng.gamma(2, 1, (80, 3)) @ loadings.T).astype(np.float32)),
        var=pd.DataFrame(index=genes),
    )
    _quiet(vbsnmf.tl.nmf, reference, 3, random_state=0, max_iter=30)
    counts = rng.poisson(rng.gamma(2, 1, (10, 3)) @ loadings.T).astype(np.float32)
    new = ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=genes))
    vbsnmf.tl.project(new, reference, key_added="p")
    expected = new.obsm["X_p"]
    order = rng.permutation(30)
    wider = np.hstack([counts[:, order], rng.poisson(3, (10, 3))]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata's on the repeated "x"
        shuffled = ad.AnnData(
            sp.csr_matrix(wider),
            var=pd.DataFrame(index=[genes[i] for i in order] + ["x", "x", "y"]),
        )
    vbsnmf.tl.project(shuffled, reference, key_added="p")
    np.testing.assert_array_equal(shuffled.obsm["X_p"], expected)
    fewer = ad.AnnData(sp.csr_matrix(counts[:, 5:]), var=pd.DataFrame(index=genes[5:]))
    vbsnmf.tl.project(fewer, reference, key_added="p")
    assert fewer.uns["p_projection"]["n_genes_missing"] == 5
    assert not np.array_equal(fewer.obsm["X_p"], expected)
    counts[0] = 0
    empty = ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=genes))
    with pytest.warns(UserWarning, match="1 of the 10 cells have no counts"):
        vbsnmf.tl.project(empty, reference, key_added="p")
    assert empty.uns["p_projection"]["n_cells_without_counts"] == 1


# -- 3: a ragged mask -------------------------------------------------------------------------
def test_ragged_mask_is_named():
    """A mask of ragged lists leaked numpy's "inhomogeneous shape" naming no mask; it is
    refused as a ragged X is (a TypeError naming the argument and X's shape)."""
    X = np.random.default_rng(0).poisson(2, (2, 3)).astype(float)
    with pytest.raises(TypeError, match=r"^mask must be a matrix of X's shape \(2, 3\)"):
        VBNMF(1, max_iter=2).fit(X, mask=[[True, False, False], [False]])


# -- guard: the masked ELBO against numpy -------------------------------------------------------
@pytest.mark.parametrize("accelerate", [False, True])
def test_masked_elbo_against_numpy_with_repeats_and_counts_under_the_mask(accelerate):
    """Guard (passes on the code before the fixes too): the trace's last value is the
    fixed prior's ELBO of the returned q written in numpy from docs/model.md, the masked
    entries out of both the data term and the expected product, for a COO mask with
    repeated entries, a whole row and a whole column masked, over nonzero counts."""
    X = np.random.default_rng(5).poisson(2, (7, 6)).astype(float)
    rows = np.array([0, 0, 2, 2, 4, 1, 1, 1, 1, 1, 1, 3, 5, 6])
    cols = np.array([1, 1, 3, 3, 0, 0, 1, 2, 3, 4, 5, 5, 5, 5])
    mask = sp.coo_array((np.ones(rows.size), (rows, cols)), shape=X.shape)
    observed = mask.toarray() == 0
    assert (X[~observed] > 0).any()  # counts under the mask, left out
    a, b = 0.7, 0.4
    model = VBNMF(
        2,
        prior="gamma",
        prior_shape=a,
        prior_rate=b,
        random_state=0,
        max_iter=7,
        accelerate=accelerate,
    )
    _quiet(model.fit, X, mask=mask)
    sides = []
    for shape, rate in (
        (model.cell_shape_, model.cell_rate_),
        (model.gene_shape_, model.gene_rate_),
    ):
        rate = np.broadcast_to(rate, shape.shape)
        sides.append((shape, rate, shape / rate, digamma(shape) - np.log(rate)))
    (_, _, cell_mean, cell_log), (_, _, gene_mean, gene_log) = sides
    data = sum(
        X[i, j] * logsumexp(cell_log[i] + gene_log[j]) - gammaln(X[i, j] + 1)
        for i, j in zip(*np.nonzero((X > 0) & observed))
    )
    product = (cell_mean @ gene_mean.T)[observed].sum()
    prior_terms = sum(
        np.sum(
            a * np.log(b)
            - gammaln(a)
            + (a - 1) * log_mean
            - b * mean
            - (shape * np.log(rate) - gammaln(shape) + (shape - 1) * log_mean - rate * mean)
        )
        for shape, rate, mean, log_mean in sides
    )
    np.testing.assert_allclose(model.elbo_trace_[-1], data - product + prior_terms, rtol=1e-13)


# -- 4: a sparse mask whose index lies beyond its shape ---------------------------------------
_OUT_OF_SHAPE = {
    "coo": "m = sp.coo_array((np.ones(1), (np.array([0]), np.array([0]))), shape=(4, 3)); "
    "m.coords = (np.array([9]), np.array([0]))",
    "csc": "m = sp.csc_array((np.ones(2), np.array([0, 9]), np.array([0, 1, 2, 2])), shape=(4, 3))",
}


@pytest.mark.parametrize("layout", sorted(_OUT_OF_SHAPE))
def test_mask_with_index_beyond_its_shape_is_refused(layout):
    """A COO or CSC mask whose row index lies beyond its shape (index arrays edited by hand,
    a damaged file) crashed the interpreter in scipy's conversion to CSR, which ran before
    the mask's structure was checked; it is refused by name as such an X is. Run in a
    process of its own: on the code before the fix it ends by a segmentation fault."""
    code = (
        "import numpy as np, scipy.sparse as sp\n"
        "from vbsnmf import VBNMF\n"
        f"{_OUT_OF_SHAPE[layout]}\n"
        "X = np.random.default_rng(0).poisson(2, (4, 3)).astype(float)\n"
        "try:\n"
        "    VBNMF(1, max_iter=2).fit(X, mask=m)\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-500:])
    assert run.stdout.startswith(f"mask: corrupt {layout.upper()} matrix"), run.stdout
