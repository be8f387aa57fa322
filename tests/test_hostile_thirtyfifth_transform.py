"""Thirty-fifth hostile pass: `VBNMF.transform`, `fit_transform` and `tl.project` after
unusual fits (masked, learned prior, each SVI form, warm-started, resumed, float32) and on
new cells whose genes are reordered, a subset, a superset or repeated.

Defects (each test fails on the base code): a DataFrame with the fitted genes and one of
them repeated was told "Feature names must be in the same order as they were in fit" (no
order matches), a warm start from it advised ``X[init.feature_names_in_]`` and a mask frame
``mask[X.columns]``, which take a repeated name's columns each time; the docstrings of
`transform` and `fit_transform` did not say that after SVI's nonzero forms the fit's cell
factors are far from those `transform` fits to the same cells; `tl.project` of new cells
named by Ensembl id onto a reference named by symbol (or the other way round) said only
that no gene names are shared, though a `.var` column of one side held the other's (or
the new genes were the reference's, left out by its `mask_var`). The
other tests are guards (they pass on the base code too, as their docstrings say): the local
fit against an independent numpy coordinate ascent after every kind of fit, `tl.project`
the same after unusual references, and scikit-learn's transform contract.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.special import digamma

from vbsnmf import VBNMF, tl
from vbsnmf._base import NotFittedError

N_CELLS, N_GENES, K = 120, 30, 3
GENES = [f"g{i}" for i in range(N_GENES)]


def _counts(seed: int = 1, n_cells: int = N_CELLS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    loadings = np.random.default_rng(0).gamma(0.5, 1.0, (N_GENES, K))
    return rng.poisson(rng.gamma(1.0, 2.0, (n_cells, K)) @ loadings.T).astype(np.float64)


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _numpy_local_fit(counts, gene_shape, gene_rate, *, prior, hyper=None, a=1.0, b=1.0):
    """Coordinate ascent on q(z) (and q(xi) under the learned prior) of each row of
    ``counts`` with q(w) fixed, written from docs/model.md in numpy, from `transform`'s
    start (shape a + 1; 2 and E[xi] = b' under the learned prior), run to its fixed point."""
    counts = np.asarray(counts, dtype=np.float64)
    gene_shape = np.asarray(gene_shape, dtype=np.float64)
    gene_rate = np.broadcast_to(np.asarray(gene_rate, dtype=np.float64), gene_shape.shape)
    n_rows = counts.shape[0]
    gene_sum = (gene_shape / gene_rate).sum(axis=0)
    gene_log = digamma(gene_shape) - np.log(gene_rate)
    if prior == "gamma":
        shape = np.full((n_rows, K), a + 1.0)
        rate = np.broadcast_to(b + gene_sum, (n_rows, K))
    else:
        factor_shape = np.asarray(hyper["cell_factor_shape"], dtype=np.float64)
        scale_a = float(hyper["cell_scale_prior_shape"])
        scale_b = float(hyper["cell_scale_prior_mean"])
        scale_shape = scale_a + factor_shape.sum()
        scale_rate = np.full(n_rows, scale_shape / scale_b)
        shape = np.full((n_rows, K), 2.0)
        rate = (scale_shape / scale_rate)[:, None] + gene_sum
    for _ in range(3000):
        log_phi = (digamma(shape) - np.log(rate))[:, None, :] + gene_log[None]
        phi = np.exp(log_phi - log_phi.max(axis=2, keepdims=True))
        phi /= phi.sum(axis=2, keepdims=True)
        statistic = (counts[:, :, None] * phi).sum(axis=1)
        if prior == "gamma":
            shape = a + statistic
        else:
            shape = factor_shape + statistic
            rate = (scale_shape / scale_rate)[:, None] + gene_sum
            scale_rate = scale_a / scale_b + (shape / rate).sum(axis=1)
    return shape / rate


def _model_reference(model, counts, observed=None):
    """`_numpy_local_fit` of ``counts`` against a fitted `VBNMF` (``observed``: the genes
    the fit observed, the others left out of the likelihood)."""
    prior = model._fitted_prior
    gene_shape, gene_rate = model.gene_shape_, np.asarray(model.gene_rate_)
    if observed is not None:
        counts, gene_shape = counts[:, observed], gene_shape[observed]
        gene_rate = gene_rate[observed] if gene_rate.ndim == 2 else gene_rate
    learned = model.hyperparameters_ is not None
    return _numpy_local_fit(
        counts,
        gene_shape,
        gene_rate,
        prior="hierarchical" if learned else "gamma",
        hyper=model.hyperparameters_,
        a=1.0 if learned else prior.shape,
        b=1.0 if learned else prior.rate,
    )


def _relative_gap(got, expected) -> float:
    return float(np.max(np.abs(got - expected) / np.abs(expected)))


# -- 1: a repeated gene column is no other order ---------------------------------------------
@pytest.fixture(scope="module")
def named_fit():
    frame = pd.DataFrame(_counts()[:, :5], columns=list("abcde"))
    return _quiet(VBNMF(2, random_state=0, max_iter=20, n_threads=1).fit, frame), frame


def test_transform_names_the_repeated_gene(named_fit):
    """Before: "Feature names must be in the same order as they were in fit." for the fitted
    genes with one gene column twice (an AnnData's ``to_df()`` before
    ``var_names_make_unique``): no order of those columns matches."""
    model, frame = named_fit
    repeated = pd.concat([frame, frame[["a"]]], axis=1)
    with pytest.raises(ValueError) as raised:
        _quiet(model.transform, repeated)
    message = str(raised.value)
    assert "same order" not in message
    assert "repeated another number of times than in fit:\n- a: 2 in X, 1 at fit time" in message
    # both sides' counts, when the fit itself held a name twice
    fitted_twice = _quiet(VBNMF(2, random_state=0, max_iter=5, n_threads=1).fit, repeated)
    with pytest.raises(ValueError, match=r"(?s)- a: 1 in X, 2 at fit time\n- e: 2 in X, 1 at"):
        _quiet(fitted_twice.transform, repeated.set_axis(list("abcdee"), axis=1))


def test_an_other_order_is_still_called_one(named_fit):
    """A guard (passes on both): the same genes reordered keep scikit-learn's message."""
    model, frame = named_fit
    with pytest.raises(ValueError, match="must be in the same order as they were in fit"):
        model.transform(frame[list("edcba")])


def test_a_warm_start_over_a_repeated_gene_gives_advice_that_works(named_fit):
    """Before: "the same genes in another order ... pass X's columns in init's order,
    X[init.feature_names_in_]", which on X holding gene "a" twice selects both again."""
    model, frame = named_fit
    repeated = pd.concat([frame, frame[["a"]]], axis=1)
    with pytest.raises(ValueError) as raised:
        _quiet(VBNMF(2, max_iter=3, n_threads=1).fit, repeated, init=model)
    message = str(raised.value)
    assert "X repeats 'a' another number of times than init" in message
    assert "another order" not in message and "X[init.feature_names_in_]" not in message
    assert repeated[model.feature_names_in_].shape[1] == 6  # what the advice would have given


def test_a_mask_frame_repeating_a_gene_gives_advice_that_works():
    """Before: a mask frame whose columns name X's genes with other repeats was called "the
    same columns in another order" and told ``mask[X.columns]``, which takes a repeated
    name's columns each time X names it (here 5 columns for X's 4)."""
    counts = pd.DataFrame(_counts()[:6, :4], columns=list("abca"), index=list("pqrstu"))
    mask = pd.DataFrame(np.zeros((6, 4)), columns=list("abcc"), index=counts.index)
    with pytest.raises(ValueError) as raised:
        VBNMF(1, max_iter=2, n_threads=1).fit(counts, mask=mask)
    message = str(raised.value)
    assert "mask repeats 'a', 'c' another number of times than X" in message
    assert "make the column names unique in both" in message and "mask[X.columns]" not in message
    assert mask[counts.columns].shape[1] == 5  # what the advice would have given
    # a plain reordering keeps its advice (a guard)
    with pytest.raises(ValueError, match=r"another order.*mask\[X.columns\]"):
        VBNMF(1, max_iter=2, n_threads=1).fit(counts, mask=mask.set_axis(list("cbaa"), axis=1))


# -- 2: fit_transform against transform after SVI's nonzero forms ---------------------------
def test_the_docstrings_say_the_nonzero_forms_factors_are_not_transforms():
    """Before: `transform`'s docstring put the fit's own factors and `transform`'s apart
    only where a cell's optimum is not unique (a few cells, by little); after
    ``svi_form="nonzeros"`` the fit's are its last stochastic step's, measured here 12
    times further from `transform`'s than the cells form's (median usage L1 0.039 against
    0.0032)."""
    counts = _counts(1, 300)

    def usage(factors, model):
        weighted = factors * model.components_.sum(axis=1)
        return weighted / weighted.sum(axis=1, keepdims=True)

    moved = {}
    for form in ("cells", "nonzeros"):
        model = VBNMF(K, prior="gamma", solver="svi", svi_form=form, random_state=0, n_threads=1)
        fitted = _quiet(model.fit_transform, counts)
        projected = _quiet(model.transform, counts)
        moved[form] = np.median(np.abs(usage(fitted, model) - usage(projected, model)).sum(1))
    assert moved["nonzeros"] > 5 * moved["cells"]
    assert "nonzero forms" in VBNMF.transform.__doc__
    assert "nonzero forms" in VBNMF.fit_transform.__doc__


# -- 3: tl.project of genes named by id onto a reference named by symbol ------------------
SYMBOLS = [f"GENE{i}" for i in range(N_GENES)]
IDS = [f"ENSG{i:011d}" for i in range(N_GENES)]


@pytest.fixture(scope="module")
def symbol_reference():
    var = pd.DataFrame({"gene_ids": IDS, "n_cells": np.arange(N_GENES)}, index=SYMBOLS)
    reference = ad.AnnData(sp.csr_matrix(_counts()), var=var)
    _quiet(tl.nmf, reference, K, random_state=0, max_iter=30, n_threads=1)
    return reference


def test_project_by_ids_onto_symbols_names_the_column_that_matches(symbol_reference):
    """Before: "adata_new shares no gene names with the reference fit", nothing more, for
    new cells read by Ensembl id (scanpy's ``read_10x_mtx(var_names="gene_ids")``) whose
    ``.var['gene_symbols']`` holds the reference's names. The renaming it advises
    projects them as the same cells named by symbol."""
    counts = _counts(7, 10)
    new = ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame({"gene_symbols": SYMBOLS}, index=IDS))
    with pytest.raises(ValueError, match="shares no gene names") as raised:
        tl.project(new, symbol_reference, n_threads=1)
    assert f"adata_new.var['gene_symbols'] holds {N_GENES} of the reference's gene names" in str(
        raised.value
    )
    new.var_names = new.var["gene_symbols"].astype(str)  # the advice
    tl.project(new, symbol_reference, n_threads=1)
    by_symbol = ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=SYMBOLS))
    tl.project(by_symbol, symbol_reference, n_threads=1)
    assert np.array_equal(new.obsm["X_nmf"], by_symbol.obsm["X_nmf"])


def test_project_by_symbols_onto_ids_names_the_reference_column(symbol_reference):
    """Before: the same bare message the other way round: the reference named by id, its
    ``.var`` holding the symbols of the new cells. Renaming the reference as advised
    keeps its fit (the loadings follow their genes)."""
    reference = symbol_reference.copy()
    reference.var["symbol"] = reference.var_names.copy()
    reference.var_names = IDS
    new = ad.AnnData(sp.csr_matrix(_counts(7, 10)), var=pd.DataFrame(index=SYMBOLS))
    with pytest.raises(ValueError) as raised:
        tl.project(new, reference, n_threads=1)
    assert f"{N_GENES} of adata_new's var_names are in adata_ref.var['symbol']" in str(raised.value)
    reference.var_names = reference.var["symbol"].astype(str)  # the advice
    tl.project(new, reference, n_threads=1)
    expected = tl.project(new, symbol_reference, key_added="again", copy=True, n_threads=1)
    assert np.array_equal(new.obsm["X_nmf"], expected.obsm["X_again"])


def test_project_of_genes_outside_the_references_mask_var_says_so():
    """Before: "adata_new shares no gene names with the reference fit" for new cells holding
    only genes of ``adata_ref`` that its ``mask_var`` left out, whose names the user sees in
    ``adata_ref.var_names``."""
    reference = ad.AnnData(sp.csr_matrix(_counts()), var=pd.DataFrame(index=GENES))
    _quiet(tl.nmf, reference, K, mask_var=np.arange(N_GENES) < 20, max_iter=30, n_threads=1)
    new = ad.AnnData(sp.csr_matrix(_counts(7, 10)[:, 20:]), var=pd.DataFrame(index=GENES[20:]))
    with pytest.raises(ValueError, match=r"shares no gene names with the reference fit \(its 20 "):
        tl.project(new, reference, n_threads=1)
    with pytest.raises(ValueError, match="10 of adata_new's genes are genes of adata_ref that the"):
        tl.project(new, reference, n_threads=1)


def test_project_sharing_no_name_anywhere_keeps_the_bare_message(symbol_reference):
    """A guard (passes on both): no ``.var`` column (numbers are not names) holds the
    other side's names: the message is the one it was."""
    new = ad.AnnData(
        sp.csr_matrix(_counts(7, 10)), var=pd.DataFrame(index=[f"x{i}" for i in range(N_GENES)])
    )
    new.var["n_cells"] = np.arange(N_GENES)
    with pytest.raises(
        ValueError, match=r"^adata_new shares no gene names with the reference fit$"
    ):
        tl.project(new, symbol_reference, n_threads=1)


# -- guards: the local fit against numpy after every kind of fit ----------------------------
def _fits():
    """(label, fitting function, genes observed or None): one per unusual fit."""
    counts = _counts()
    mask = np.zeros_like(counts)
    mask[:, 5] = 1  # gene 5 never observed: left out of transform's likelihood
    mask[:40, 7] = 1  # gene 7 masked in some cells only: still used
    observed = np.arange(N_GENES) != 5
    fits = []
    for prior in ("gamma", "hierarchical"):
        common = dict(prior=prior, random_state=0, n_threads=1)
        fits += [
            (f"{prior} masked", lambda c=common: VBNMF(K, **c).fit(counts, mask=mask), observed),
            (
                f"{prior} sparse mask",
                lambda c=common: VBNMF(K, **c).fit(sp.csr_matrix(counts), mask=sp.csr_matrix(mask)),
                observed,
            ),
            (
                f"{prior} float32",
                lambda c=common: VBNMF(K, dtype=np.float32, **c).fit(counts),
                None,
            ),
            (
                f"{prior} svi cells",
                lambda c=common: VBNMF(K, solver="svi", n_epochs=5, **c).fit(counts),
                None,
            ),
            (
                f"{prior} warm start",
                lambda c=common: VBNMF(K, max_iter=20, **c).fit(
                    counts, init=VBNMF(K, max_iter=4, **c).fit(counts)
                ),
                None,
            ),
            (
                f"{prior} prior_shape",
                lambda c=common: VBNMF(K, prior_shape=0.3, **c).fit(counts),
                None,
            ),
        ]
    for form in ("nonzeros", "abe-shimamura"):
        fits.append(
            (
                f"gamma svi {form}",
                lambda f=form: VBNMF(
                    K,
                    prior="gamma",
                    solver="svi",
                    svi_form=f,
                    n_epochs=5,
                    random_state=0,
                    n_threads=1,
                ).fit(counts),
                None,
            )
        )
    return fits


@pytest.mark.parametrize("label, fit, observed", _fits(), ids=[f[0] for f in _fits()])
def test_transform_after_an_unusual_fit_is_the_numpy_local_fit(label, fit, observed):
    """A guard (passes on both): after a masked fit (a gene never observed left out), a
    float32 fit, each SVI form, a warm start and a fixed factor shape, `transform` run to
    its fixed point (``tol=0``) gives the factors of a numpy coordinate ascent of q(z)."""
    model = _quiet(fit)
    new = _counts(7, 10)
    new[:, 5] = 1000.0  # counts in the gene the masked fits never observed: not read there
    model.set_params(tol=0, max_iter=3000)
    got = _quiet(model.transform, new)
    expected = _model_reference(model, new, observed)
    tolerance = 1e-5 if model.gene_shape_.dtype == np.float32 else 1e-10
    assert got.dtype == model.gene_shape_.dtype
    assert _relative_gap(got, expected) < tolerance


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_transform_after_a_resumed_masked_fit_is_the_numpy_local_fit(prior, tmp_path):
    """A guard (passes on both): a masked fit interrupted at pass 7 and resumed from its
    checkpoint still leaves the never-observed gene out of `transform`."""
    counts, checkpoint = _counts(), tmp_path / "fit.ckpt"
    mask = np.zeros_like(counts)
    mask[:, 5] = 1
    settings = dict(prior=prior, random_state=0, n_threads=1, checkpoint=checkpoint)
    _quiet(VBNMF(K, max_iter=7, checkpoint_every=2, **settings).fit, counts, mask=mask)
    model = _quiet(VBNMF(K, max_iter=40, resume=True, **settings).fit, counts, mask=mask)
    new = _counts(7, 10)
    model.set_params(tol=0, max_iter=3000)
    expected = _model_reference(model, new, np.arange(N_GENES) != 5)
    assert _relative_gap(_quiet(model.transform, new), expected) < 1e-10


# -- guards: tl.project after unusual references --------------------------------------------
@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
@pytest.mark.parametrize(
    "fit_params",
    [
        {"mask_var": np.arange(N_GENES) % 2 == 0},
        {"solver": "svi", "n_epochs": 5, "mask_var": np.arange(N_GENES) % 2 == 0},
        {"dtype": np.float32, "mask_var": np.arange(N_GENES) % 3 != 0},
    ],
    ids=["mask_var", "svi mask_var", "float32 mask_var"],
)
def test_project_onto_an_unusual_reference_is_the_numpy_local_fit(prior, fit_params):
    """A guard (passes on both): new cells whose genes come reversed, as a subset (one
    outside the reference's mask) and with an extra gene, projected onto a ``mask_var`` fit
    (batch, SVI, float32), give a numpy coordinate ascent over the fitted genes they hold."""
    reference = ad.AnnData(sp.csr_matrix(_counts()), var=pd.DataFrame(index=GENES))
    _quiet(tl.nmf, reference, K, prior=prior, random_state=0, n_threads=1, **fit_params)
    record = reference.uns["nmf"]["variational"]
    gene_shape = reference.varm["nmf_gene_shape"]
    fitted = (gene_shape > 0).any(axis=1)
    counts = _counts(7, 10)
    held = [i for i in range(N_GENES - 1, -1, -1) if i % 4 != 1]  # reversed, a subset
    new = ad.AnnData(
        sp.csr_matrix(np.c_[counts[:, held], np.full(10, 50.0)]),
        var=pd.DataFrame(index=[GENES[i] for i in held] + ["not_in_reference"]),
    )
    _quiet(tl.project, new, reference, tol=0, max_iter=3000, n_threads=1)
    used = np.array([i for i in range(N_GENES) if fitted[i] and i in held])
    learned = prior == "hierarchical"
    gene_rate = reference.varm["nmf_gene_rate"][used] if learned else record["gene_rate"]
    expected = _numpy_local_fit(
        counts[:, used],
        gene_shape[used],
        gene_rate,
        prior=prior,
        hyper=record if learned else None,
        a=1.0 if learned else record["prior_shape"],
        b=1.0 if learned else record["prior_rate"],
    )
    got = new.obsm["X_nmf"]
    assert new.uns["nmf_projection"]["n_genes_used"] == used.size
    assert _relative_gap(got, expected) < (1e-5 if got.dtype == np.float32 else 1e-10)


# -- guards: scikit-learn's transform contract ----------------------------------------------
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix, on purpose
def test_the_transform_contract():
    """A guard (passes on both): before `fit` every method that needs one raises
    `NotFittedError`; zero rows are refused in scikit-learn's wording; all-zero rows get
    the same (the start's) factors; every sparse format and np.matrix transform to the
    same bits; the pandas container keeps a DataFrame's index."""
    counts = _counts()
    with pytest.raises(NotFittedError):
        VBNMF(K).transform(counts)
    with pytest.raises(NotFittedError):
        VBNMF(K).transform_posterior(counts)
    model = _quiet(VBNMF(K, random_state=0, n_threads=1).fit, counts)
    with pytest.raises(ValueError, match=r"X has 0 sample\(s\) \(shape=\(0, 30\)\)"):
        model.transform(counts[:0])
    zeros = model.transform(np.zeros((3, N_GENES)))
    assert np.isfinite(zeros).all() and (zeros == zeros[0]).all()
    expected = model.transform(counts[:5])
    for fmt in ("csr", "csc", "coo", "bsr", "dia", "lil", "dok"):
        for kind in (sp.csr_matrix, sp.csr_array):
            assert np.array_equal(model.transform(kind(counts[:5]).asformat(fmt)), expected)
    assert np.array_equal(model.transform(np.matrix(counts[:5])), expected)
    frame = pd.DataFrame(counts[:5], index=[f"c{i}" for i in range(5)])
    output = model.set_output(transform="pandas").transform(frame)
    assert list(output.index) == list(frame.index)
    assert list(output.columns) == [f"vbnmf{k}" for k in range(K)]
    assert np.array_equal(output.to_numpy(), expected)
