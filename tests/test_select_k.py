"""`vbsnmf.tl.select_k` and `vbsnmf.pl.select_k`: the held-out figures equal a dense
numpy/scipy computation from independent refits; the suggestion follows the documented
rule; the plot draws the table and writes a file."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import poisson

import vbsnmf
from vbsnmf import pl, tl

KS = (2, 3, 5)
FIT = {"max_iter": 10, "n_threads": 2}


def _quiet(function, *args, **kwargs):
    """Fits at a few iterations, where not converging is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return function(*args, **kwargs)


@pytest.fixture(scope="module")
def selected():
    adata = vbsnmf.datasets.pbmc_tiny()
    table = _quiet(tl.select_k, adata, KS, random_state=0, **FIT)
    return adata, table


# -- select_k ------------------------------------------------------------------------------
def test_select_k_heldout_equals_dense_numpy_from_independent_refits(selected):
    adata, table = selected
    assert list(table.index) == list(KS)
    # The split by hand: Binomial(x, 1/2) over the stored values in CSR order, seed 0.
    counts = sp.csr_matrix(adata.X)
    half = np.random.default_rng(0).binomial(counts.data.astype(np.int64), 0.5)
    train = sp.csr_matrix((half.astype(np.float64), counts.indices, counts.indptr), counts.shape)
    test = counts.toarray() - train.toarray()
    per_cell = {}
    for k in KS:
        refit = ad.AnnData(train)
        _quiet(tl.nmf, refit, k, random_state=0, **FIT)
        mu = refit.obsm["X_nmf"] @ refit.varm["NMF"].T
        per_cell[k] = poisson.logpmf(test, mu).sum(axis=1)
        expected = per_cell[k].sum() / test.sum()
        assert table.loc[k, "heldout_ll_per_count"] == pytest.approx(expected, rel=1e-10)
    # The standard error of the paired difference to the best K, per count.
    best = max(KS, key=lambda k: per_cell[k].sum())
    for k in KS:
        difference = per_cell[best] - per_cell[k]
        se = np.sqrt(difference.size) * difference.std(ddof=1) / test.sum()
        assert table.loc[k, "heldout_se"] == pytest.approx(se, rel=1e-8, abs=1e-15)
    # The ELBO and the active factors are those of a fit on all the counts.
    full = vbsnmf.datasets.pbmc_tiny()
    _quiet(tl.nmf, full, KS[-1], random_state=0, **FIT)
    assert table.loc[KS[-1], "elbo"] == full.uns["nmf"]["elbo_trace"][-1]
    assert table.loc[KS[-1], "n_active"] == np.count_nonzero(full.uns["nmf"]["active"])


def test_select_k_suggests_the_smallest_k_within_one_standard_error(selected, tmp_path):
    adata, table = selected
    heldout = table["heldout_ll_per_count"]
    best = heldout.max()
    assert table.loc[heldout.idxmax(), "heldout_se"] == 0
    within = [k for k in KS if best - heldout[k] <= table.loc[k, "heldout_se"]]
    assert table.index[table["suggested"]].tolist() == [within[0]]
    stored = adata.uns["nmf_k_selection"]
    assert stored["suggested_k"] == table.attrs["suggested_k"] == within[0]
    assert stored["reason"].startswith(f"K={within[0]}: the smallest K")
    assert "one standard error" in stored["reason"]
    # It survives an .h5ad round trip.
    adata.write_h5ad(tmp_path / "selected.h5ad")
    back = ad.read_h5ad(tmp_path / "selected.h5ad").uns["nmf_k_selection"]
    assert back["suggested_k"] == within[0]
    assert np.allclose(back["table"]["heldout_ll_per_count"], heldout)


def test_select_k_with_a_given_tolerance():
    adata = vbsnmf.datasets.pbmc_tiny()
    options = {"max_iter": 3, "n_threads": 2, "random_state": 0}
    loose = _quiet(tl.select_k, adata, [4, 2], tolerance=10.0, **options)
    assert list(loose.index) == [2, 4]
    assert loose.attrs["suggested_k"] == 2  # everything is within 10 nats per count
    assert "tolerance 10" in loose.attrs["reason"]
    strict = _quiet(tl.select_k, adata, [2, 4], tolerance=0.0, key_added="strict", **options)
    assert strict.attrs["suggested_k"] == strict["heldout_ll_per_count"].idxmax()
    assert "strict" in adata.uns


def test_select_k_refuses_bad_arguments():
    adata = vbsnmf.datasets.pbmc_tiny()
    for ks, error in (([], ValueError), ([2, 2], ValueError), ([0, 3], ValueError), (3, TypeError)):
        with pytest.raises(error, match="ks"):
            tl.select_k(adata, ks)
    with pytest.raises(ValueError, match="variational"):
        tl.select_k(adata, [2], solver="mu")
    with pytest.raises(ValueError, match="tolerance"):
        tl.select_k(adata, [2], tolerance=-1.0)
    with pytest.raises(ValueError, match="copy"):
        tl.select_k(adata, [2], copy=True)
    with pytest.raises(ValueError, match="raw counts"):
        tl.select_k(ad.AnnData(np.full((20, 10), 0.5)), [2])


# -- the plot ------------------------------------------------------------------------------
def test_plot_draws_the_table_and_writes_a_file(selected, tmp_path):
    adata, table = selected
    output = tmp_path / "k_selection.png"
    axes = pl.select_k(adata, show=False, save=output)
    assert len(axes) == 3
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    heldout_line = axes[0].get_lines()[0]
    assert np.allclose(heldout_line.get_xdata(), KS)
    assert np.allclose(heldout_line.get_ydata(), table["heldout_ll_per_count"])
    assert np.allclose(axes[1].get_lines()[0].get_ydata(), table["elbo"])
    active_line = next(line for line in axes[2].get_lines() if line.get_label() == "active")
    assert np.allclose(active_line.get_ydata(), table["n_active"])
    suggested = adata.uns["nmf_k_selection"]["suggested_k"]
    assert any(np.allclose(line.get_xdata(), suggested) for line in axes[0].get_lines()[1:])
    plt.close("all")
    with pytest.raises(KeyError, match="select_k"):
        pl.select_k(vbsnmf.datasets.pbmc_tiny(), show=False)
