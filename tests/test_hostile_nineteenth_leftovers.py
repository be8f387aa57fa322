"""Leftovers of earlier hostile passes, fixed in the nineteenth: ``classic.NMF`` returned
float64 factors for float32 data (scikit-learn's ``NMF`` returns float32, and a pipeline
that swaps one for the other saw its dtype change); and ``tl.select_k`` with a parameter its
fits do not take listed ``checkpoint`` and ``resume`` among those they take, which it refuses;
and ``pl.top_genes`` of a backed AnnData whose file holds no X failed with h5py's KeyError;
and a bad ``random_state`` was told to be None, an integer or a Generator, omitting the
``RandomState`` a fit takes too."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF as ScikitNMF

from vbsnmf import tl
from vbsnmf.classic import NMF


def _counts(dtype) -> np.ndarray:
    return np.random.default_rng(0).poisson(1.5, size=(30, 12)).astype(dtype)


def _quiet_fit(estimator, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter
        return estimator.fit_transform(X)


@pytest.mark.parametrize("as_input", [np.asarray, sp.csr_matrix, pd.DataFrame])
def test_classic_nmf_keeps_float32_as_scikit_learn(as_input):
    X = as_input(_counts(np.float32))
    reference = ScikitNMF(3, max_iter=20, random_state=0)
    reference_factors = _quiet_fit(reference, X)
    model = NMF(3, max_iter=20, random_state=0)
    cell_factors = _quiet_fit(model, X)
    assert cell_factors.dtype == reference_factors.dtype == np.float32
    assert model.components_.dtype == reference.components_.dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert model.transform(X).dtype == reference.transform(X).dtype == np.float32
    assert model.inverse_transform(cell_factors).dtype == np.float32


def test_classic_nmf_in_float32_is_its_float64_fit_rounded():
    """The solvers work in float64: the float32 factors are the float64 fit's, rounded."""
    wide = NMF(3, max_iter=20, random_state=0)
    wide_factors = _quiet_fit(wide, _counts(np.float64))
    narrow = NMF(3, max_iter=20, random_state=0)
    narrow_factors = _quiet_fit(narrow, _counts(np.float32))
    assert wide_factors.dtype == wide.components_.dtype == np.float64
    np.testing.assert_array_equal(narrow_factors, wide_factors.astype(np.float32))
    np.testing.assert_array_equal(narrow.components_, wide.components_.astype(np.float32))


def test_classic_nmf_gives_float64_for_integer_data():
    model = NMF(3, max_iter=5, random_state=0)
    assert _quiet_fit(model, _counts(np.int64)).dtype == np.float64
    assert model.components_.dtype == np.float64


def test_tl_nmf_stores_a_classical_fit_of_float32_counts_in_float64():
    adata = ad.AnnData(_counts(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 3, solver="mu", max_iter=5, random_state=0, n_threads=1)
    assert adata.obsm["X_nmf"].dtype == np.float64
    assert adata.varm["NMF"].dtype == np.float64


def test_select_k_does_not_offer_the_parameters_it_refuses():
    adata = ad.AnnData(_counts(np.float64))
    with pytest.raises(ValueError, match="does not apply") as refused:
        tl.select_k(adata, [2, 3], no_such_parameter=1)
    taken = str(refused.value).split("it takes ", 1)[1].split(", ")
    assert "max_iter" in taken
    assert "checkpoint" not in taken
    assert "resume" not in taken


def test_top_genes_plot_of_a_backed_anndata_without_x_draws_the_fits_layer(tmp_path):
    """A backed AnnData whose file holds no X: ``adata.X`` raised h5py's bare KeyError in
    `pl.top_genes`' check for a missing X (the SVI helper's `anndata_x` case, in the plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vbsnmf import pl

    counts = sp.csr_matrix(_counts(np.float64))
    adata = ad.AnnData(
        obs=pd.DataFrame(
            {"group": pd.Categorical(["a", "b"] * 15)}, index=[f"c{i}" for i in range(30)]
        ),
        var=pd.DataFrame(index=[f"g{i}" for i in range(12)]),
        layers={"counts": counts},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 2, layer="counts", max_iter=5, random_state=0, n_threads=1)
    adata.write_h5ad(tmp_path / "no_x.h5ad")
    backed = ad.read_h5ad(tmp_path / "no_x.h5ad", backed="r")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pl.top_genes(backed, "group", show=False)
        assert plt.get_fignums()  # drawn
    finally:
        backed.file.close()
        plt.close("all")


def test_the_random_state_message_names_every_kind_a_fit_takes():
    """The refusal listed None, integers and Generators, not the RandomState it takes."""
    from vbsnmf import VBNMF

    counts = _counts(np.float64)
    with pytest.raises(TypeError, match="RandomState") as refused:
        VBNMF(2, max_iter=2, random_state="seed").fit(counts)
    assert "Generator" in str(refused.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = [
            VBNMF(2, max_iter=2, random_state=np.random.RandomState(3)).fit_transform(counts)
            for _ in range(2)
        ]
    np.testing.assert_array_equal(fitted[0], fitted[1])  # as the message says: taken
