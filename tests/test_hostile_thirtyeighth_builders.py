"""The thirty-eighth pass (third wave): a restructure, behaviour unchanged. The Poisson-Gamma
test data copied into several modules now come from `simulated.poisson_gamma_array` and
`simulated.poisson_gamma_adata`, and the classical `NMF`'s and `VBNMF`'s messages naming an
array given as ``init`` or ``solver`` from one helper, `vbsnmf._utils.brief_repr`.

Guards: the shared builders give the documented data (shapes, names, integer counts, the
same draw for a seed, the recipe the copies drew), and the messages keep their words. The
builder guards import `simulated` helpers that did not exist before (``poisson_gamma_array``)
or the new `brief_repr`, so they fail on the code before the restructure by an import error.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from simulated import poisson_gamma_adata, poisson_gamma_array

from vbsnmf import VBNMF
from vbsnmf._utils import brief_repr
from vbsnmf.classic import NMF

N_CELLS, N_GENES, K = 20, 7, 2


def _recipe(n_cells, n_genes, k, seed):
    """The recipe the test modules copied, written out once more to pin the builder to it."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1.0, 1.0, (n_cells, k)) @ rng.gamma(0.5, 2.0, (k, n_genes))
    return rng.poisson(rates).astype(np.float64)


# -- the shared builders ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 3])
def test_the_array_is_the_copied_recipe_and_integer_counts(seed):
    counts = poisson_gamma_array(n_cells=N_CELLS, n_genes=N_GENES, k=K, seed=seed)
    assert counts.shape == (N_CELLS, N_GENES) and counts.dtype == np.float64
    assert np.array_equal(counts, _recipe(N_CELLS, N_GENES, K, seed))
    assert (counts >= 0).all() and np.array_equal(counts, np.round(counts))
    assert counts.sum() > 0


def test_a_seed_gives_the_same_draw_and_another_seed_another():
    first = poisson_gamma_array(n_cells=N_CELLS, n_genes=N_GENES, k=K, seed=5)
    again = poisson_gamma_array(n_cells=N_CELLS, n_genes=N_GENES, k=K, seed=5)
    other = poisson_gamma_array(n_cells=N_CELLS, n_genes=N_GENES, k=K, seed=6)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_the_adata_holds_the_array_as_csr_with_the_documented_names():
    adata = poisson_gamma_adata(n_cells=N_CELLS, n_genes=N_GENES, k=K, seed=2)
    assert sp.issparse(adata.X) and adata.X.format == "csr" and adata.X.dtype == np.float64
    assert np.array_equal(
        adata.X.toarray(), poisson_gamma_array(n_cells=N_CELLS, n_genes=N_GENES, k=K, seed=2)
    )
    assert list(adata.obs_names) == [f"c{i}" for i in range(N_CELLS)]
    assert list(adata.var_names) == [f"G{j}" for j in range(N_GENES)]
    assert adata.obs.columns.empty and adata.var.columns.empty


def test_an_empty_prefix_gives_anndatas_default_cell_names():
    """tlmsg's copy built its AnnData without obs: its cells were named "0", "1"..."""
    import anndata as ad

    adata = poisson_gamma_adata(n_cells=N_CELLS, n_genes=N_GENES, k=K, prefix="")
    plain = ad.AnnData(sp.csr_matrix(adata.X.toarray()))
    assert list(adata.obs_names) == list(plain.obs_names)


# -- one helper for an array named in a message ------------------------------------------------
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (np.ones((10, 2)), "ndarray of shape (10, 2)"),
        (np.array(["mu", "hals"]), "ndarray of shape (2,)"),
        (pd.Series([1.0, 2.0]), "Series of shape (2,)"),
        (sp.csr_matrix(np.ones((3, 4))), "csr_matrix of shape (3, 4)"),
        ("nndvsda", "'nndvsda'"),
        (None, "None"),
    ],
)
def test_brief_repr_keeps_the_words_of_the_messages(value, shown):
    assert brief_repr(value) == shown


def test_classic_and_vbnmf_name_an_array_init_alike():
    counts = sp.csr_matrix(_recipe(N_CELLS, N_GENES, K, 0))
    with pytest.raises(ValueError, match=r"unknown init ndarray of shape \(7, 2\); choose one"):
        NMF(K, init=np.ones((N_GENES, K))).fit(counts)
    with pytest.raises(ValueError, match=r"unknown solver ndarray of shape \(2,\); choose one"):
        NMF(K, solver=np.array(["mu", "hals"])).fit(counts)
    with pytest.raises(ValueError, match=r"got ndarray of shape \(7, 2\): a start to continue"):
        VBNMF(K, init=np.ones((N_GENES, K))).fit(counts)
    with pytest.raises(ValueError, match=r"got a dict with keys \['cell_shape'\]: a start"):
        VBNMF(K, init={"cell_shape": np.ones((N_CELLS, K))}).fit(counts)
    with pytest.raises(ValueError, match=r"unknown init 'nndvsda'; choose one"):
        NMF(K, init="nndvsda").fit(counts)
