"""Twenty-third hostile pass over the K selection and the count split: ``select_k``'s
convergence warning given once for the grid, naming the Ks that stopped (it came from each
of the 2 x len(ks) fits, the same text naming no K); ``count_split`` of a dask array of
sparse chunks; ``ks`` given as a 0-d array; ``pl.top_genes`` grouped by several columns,
one of them with cells without a value."""

from __future__ import annotations

import warnings

import anndata as ad
import dask.array as da
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import pl, tl


def _counts(n_cells=40, n_genes=30, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.gamma(1.0, 1.0, (n_cells, 3)) @ rng.gamma(0.5, 2.0, (3, n_genes))
    return rng.poisson(means).astype(np.float64)


def _select_k_warnings(adata, ks, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = tl.select_k(adata, ks, n_threads=1, **options)
    stopped = [w for w in caught if issubclass(w.category, vbsnmf.ConvergenceWarning)]
    return table, [str(w.message) for w in stopped]


# -- 1: one convergence warning for the grid, naming the Ks that stopped ----------------------
@pytest.mark.parametrize(
    ("options", "limit"),
    [({"max_iter": 3}, "max_iter"), ({"solver": "svi", "n_epochs": 2}, "n_epochs")],
)
def test_select_k_warns_once_naming_the_ks_whose_fits_stopped(options, limit):
    """Under the fixed prior (no factor shapes to hold: the thirty-second pass gave the fits
    that stopped while they held them a sentence of their own, advising ``max_iter`` alone;
    `test_hostile_thirtysecond_selectk.py`; K=1 converges within 3 passes under it)."""
    options = {"prior": "gamma", **options}
    table, messages = _select_k_warnings(ad.AnnData(_counts()), [4, 2, 3], **options)
    assert not table["converged"].any() and not table["heldout_converged"].any()
    assert not table["shapes_held"].any() and not table["heldout_shapes_held"].any()
    if limit == "n_epochs":  # 2 evaluations: too few for SVI's rule, whatever tol
        why = (
            "with too few ELBO values for the stopping rule to judge, so no tol could have "
            f"stopped them; raise {limit}"
        )
    else:
        why = (
            "before the relative ELBO change fell below tol (columns converged and "
            f"heldout_converged); raise {limit} or tol"
        )
    assert messages == [
        f"the fits at K=2, 3, 4 (all the counts) and K=2, 3, 4 (train half) stopped at "
        f"{limit} {why}"
    ]


def test_select_k_names_only_the_ks_that_stopped():
    """Small sparse counts under the gamma prior: K=1 and K=8 converge within 20 passes,
    K=4 does not (on the counts and on the train half); the warning names K=4 alone."""
    counts = np.random.default_rng(0).poisson(0.3, (12, 8)).astype(np.float64)
    table, messages = _select_k_warnings(ad.AnnData(counts), [1, 4, 8], prior="gamma", max_iter=20)
    stopped = table.index[~table["converged"]].tolist()
    stopped_half = table.index[~table["heldout_converged"]].tolist()
    assert stopped == stopped_half == [4]  # the data this test relies on
    assert len(messages) == 1
    assert messages[0].startswith(
        "the fits at K=4 (all the counts) and K=4 (train half) stopped at max_iter"
    )


def test_select_k_passes_on_the_fits_other_convergence_warnings():
    """Only the "stopped at max_iter" warning is gathered into one: a float32 fit that met a
    tol finer than its ELBO's rounding still says so (K=1 converges on these counts). A
    guard of the fix above: it passes on the code before it too."""
    counts = np.random.default_rng(0).poisson(3, (30, 10)).astype(np.float64)
    options = {"prior": "gamma", "dtype": np.float32, "tol": 1e-9, "max_iter": 300}
    table, messages = _select_k_warnings(ad.AnnData(counts), [1], **options)
    assert table["converged"].all() and table["heldout_converged"].all()
    assert len(messages) == 2  # the fit on all the counts and the one on the train half
    assert all(message.startswith("float32 holds this fit's ELBO") for message in messages)


# -- 2: count_split of a dask array ----------------------------------------------------------
def test_count_split_of_a_dask_array_of_sparse_chunks_splits_its_counts():
    """A dask X of sparse chunks (tl.nmf and tl.project take one) failed with "counts must
    be 2-D (cells x genes), got shape ()": np.array made a 0-d object array of it."""
    counts = sp.csr_matrix(_counts(30, 20))
    lazy = da.from_array(counts, chunks=(10, 20), asarray=False)
    train, test = tl.count_split(lazy, 0.3, random_state=4)
    expected_train, expected_test = tl.count_split(counts, 0.3, random_state=4)
    assert isinstance(train, sp.csr_matrix) and isinstance(test, sp.csr_matrix)
    assert (train != expected_train).nnz == 0 and (test != expected_test).nnz == 0
    assert (train + test != counts).nnz == 0


# -- 3: ks as a 0-d array --------------------------------------------------------------------
def test_select_k_names_ks_given_as_a_0d_array():
    """numpy's bare "iteration over a 0-d array" before."""
    with pytest.raises(TypeError, match=r"ks must be a sequence of integers, got a 0-d array"):
        tl.select_k(ad.AnnData(_counts()), np.array(2))


# -- 4: pl.top_genes grouped by several columns, one with cells without a value --------------
@pytest.fixture(scope="module")
def fitted():
    adata = ad.AnnData(sp.csr_matrix(_counts()))
    adata.var_names = [f"g{j}" for j in range(adata.n_vars)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, 3, max_iter=30, n_threads=1)
    adata.obs["cell_type"] = pd.Categorical(["a", "b", None, "a"] * 10)
    adata.obs["batch"] = pd.Categorical(["x", "y"] * 20)
    adata.obs["sample"] = pd.Categorical([1, 2] * 20)
    return adata


@pytest.mark.parametrize(
    ("groupby", "message"),
    [
        (["cell_type", "batch"], r"adata.obs\['cell_type'\] has cells without a value"),
        (["batch", "cell_type"], r"adata.obs\['cell_type'\] has cells without a value"),
        (["batch", "sample"], r"adata.obs\['sample'\] holds values that are not text \(1\)"),
        (["batch", "batch"], r"groupby names 'batch' more than once"),
    ],
)
def test_top_genes_plot_names_groupby_columns_scanpy_cannot_combine(fitted, groupby, message):
    """scanpy joins a cell's values of several columns into its group's name, and failed
    with bare errors: "TypeError: sequence item 0: expected str instance, float found" (a
    cell without a value; "int found": integer categories), "AttributeError: 'DataFrame'
    object has no attribute 'cat'" (a column named twice)."""
    with pytest.raises(ValueError, match=message):
        pl.top_genes(fitted, groupby, show=False)
    plt.close("all")


@pytest.mark.parametrize(("groupby", "groups"), [("cell_type", ["a", "b"]), ("sample", ["1", "2"])])
def test_top_genes_plot_still_takes_one_column_of_any_values(fitted, groupby, groups):
    """One column alone: scanpy leaves the cells without a value out and names groups of
    any values (a guard: passes on the code before too)."""
    axes = pl.top_genes(fitted, groupby, show=False)
    assert [label.get_text() for label in axes["mainplot_ax"].get_yticklabels()] == groups
    plt.close("all")
