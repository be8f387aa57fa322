"""Thirty-sixth pass, tiny and degenerate data in every route: guards.

The pass fitted 1 to 5 cells and genes, K = 1 and min(shape), a single nonzero, all counts in
one cell or one gene, identical duplicate cells and one huge count through batch VB, SQUAREM,
every SVI form, the learned prior, Dask (chunks of one row), the classical solvers, VBNTF with
modes of size 1, `count_split`, `select_k`, the `tl` and `pl` functions and the command line,
and found no defect. These tests pin what it checked against independent numpy computations;
they pass on the base code too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from cli_output import without_compile_notice
from scipy.special import digamma, gammaln

import vbsnmf

ROOT = Path(__file__).resolve().parents[1]
# the fixed point of K = 1, Gamma(1, 1) priors, one count of 3: both shapes 1 + 3 = 4 and
# both rates r = 1 + 4 / r, so r = (1 + sqrt(17)) / 2
ONE_COUNT_RATE = (1 + np.sqrt(17.0)) / 2


def _tiny_matrices() -> dict[str, np.ndarray]:
    single = np.zeros((4, 3))
    single[2, 1] = 7
    one_cell = np.zeros((4, 3))
    one_cell[1] = [3, 5, 2]
    one_gene = np.zeros((4, 3))
    one_gene[:, 2] = [3, 5, 2, 1]
    huge = np.ones((4, 3))
    huge[0] = 0
    huge[0, 0] = 1e6
    return {
        "1x1": np.array([[3.0]]),
        "1x5": np.array([[1, 0, 2, 0, 5.0]]),
        "5x1": np.array([[1], [0], [2], [0], [5.0]]),
        "single": single,
        "one_cell": one_cell,
        "one_gene": one_gene,
        "duplicates": np.array([[1, 2, 0], [1, 2, 0], [1, 2, 0.0]]),
        "huge": huge,
    }


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"accelerate": True},
        {"solver": "svi", "n_epochs": 200},
    ],
    ids=["batch", "squarem", "svi-cells"],
)
def test_one_count_reaches_the_closed_form_fixed_point(params):
    """Guard: a 1 x 1 matrix under the fixed prior, K = 1, against its closed form."""
    model = vbsnmf.VBNMF(1, prior="gamma", random_state=0, tol=1e-12, max_iter=5000, **params).fit(
        np.array([[3.0]])
    )
    np.testing.assert_allclose(model.cell_shape_, [[4.0]], rtol=1e-9)
    np.testing.assert_allclose(model.gene_shape_, [[4.0]], rtol=1e-9)
    np.testing.assert_allclose(model.cell_rate_, [ONE_COUNT_RATE], rtol=1e-5)
    np.testing.assert_allclose(model.gene_rate_, [ONE_COUNT_RATE], rtol=1e-5)


def test_transform_of_one_cell_is_the_closed_form():
    """Guard: under the fixed prior at K = 1 a new cell's factor is (a + its counts) / (b +
    the summed loadings), whatever the fit's few cells."""
    counts = np.array([[1, 2, 0], [0, 3, 1.0]])
    model = vbsnmf.VBNMF(1, prior="gamma", random_state=0, tol=1e-14, max_iter=10000)
    model.fit(counts)
    new = np.array([[2, 0, 5.0]])
    loadings = (model.gene_shape_ / model.gene_rate_).ravel()
    expected = (1 + new.sum()) / (1 + loadings.sum())
    np.testing.assert_allclose(model.transform(new), [[expected]], rtol=1e-9)


def test_tensor_of_one_entry_matches_its_closed_form():
    """Guard: a 1 x 1 x 1 tensor holding 3, K = 1, Gamma(1, 1): each factor's mean m solves
    m**3 + m = 4 (shape 4, rate 1 + m**2), and the ELBO is model.md's closed form."""
    model = vbsnmf.VBNTF(1, random_state=0, tol=1e-12, max_iter=5000, prior="gamma")
    model.fit(np.array([[0, 0, 0]]), np.array([3.0]), (1, 1, 1))
    mean = np.roots([1, 0, 1, -4]).real[np.abs(np.roots([1, 0, 1, -4]).imag) < 1e-12][0]
    for factor in model.factors_:
        np.testing.assert_allclose(factor, [[mean]], rtol=1e-5)
    shape, rate = 4.0, 4.0 / mean
    expected_log = digamma(shape) - np.log(rate)
    likelihood = 3 * 3 * expected_log - mean**3 - gammaln(4)
    entropy = shape - np.log(rate) + gammaln(shape) + (1 - shape) * digamma(shape)
    elbo = likelihood + 3 * (-mean + entropy)
    assert model.elbo_trace_[-1] == pytest.approx(elbo, rel=1e-8)


@pytest.mark.parametrize("solver", ["mu", "hals", "als", "pg", "gd"])
def test_classical_solvers_factorise_duplicate_cells_exactly(solver):
    """Guard: three identical cells are rank 1; every solver at K = 1 reconstructs them."""
    counts = np.array([[1, 2, 0], [1, 2, 0], [1, 2, 0.0]])
    model = vbsnmf.NMF(1, solver=solver, random_state=0, max_iter=2000, tol=1e-12)
    cell_factors = model.fit_transform(counts)
    np.testing.assert_allclose(cell_factors @ model.components_, counts, atol=1e-7)


@pytest.mark.parametrize("solver", ["batch", "svi", "mu"])
@pytest.mark.parametrize("name", list(_tiny_matrices()))
def test_tl_nmf_of_tiny_data_stores_what_numpy_computes(name, solver):
    """Guard: the usages, their square roots, the factor shares and the gene totals that
    `tl.nmf` stores, against numpy on the stored factors, K = min(shape), all finite."""
    counts = _tiny_matrices()[name]
    adata = ad.AnnData(sp.csr_matrix(counts))
    params = {"n_epochs": 3} if solver == "svi" else {}
    n_components = min(counts.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no active factor, iteration caps: not the point
        vbsnmf.tl.nmf(adata, n_components, solver=solver, random_state=0, **params)
    cell_factors, gene_loadings = adata.obsm["X_nmf"], adata.varm["NMF"]
    assert np.isfinite(cell_factors).all() and np.isfinite(gene_loadings).all()
    fitted = cell_factors * gene_loadings.sum(axis=0)
    counted = fitted.sum(axis=1) > 0
    usage = adata.obsm["X_nmf_usage"]
    np.testing.assert_allclose(
        usage[counted], fitted[counted] / fitted[counted].sum(axis=1, keepdims=True), rtol=1e-9
    )
    np.testing.assert_allclose(adata.obsm["X_nmf_sqrt_usage"], np.sqrt(usage), rtol=1e-12)
    np.testing.assert_allclose(
        adata.uns["nmf"]["factor_share"], fitted.sum(axis=0) / fitted.sum(), rtol=1e-9
    )
    np.testing.assert_array_equal(adata.var["nmf_total_counts"], counts.sum(axis=0))


@pytest.mark.parametrize("name", ["1x1", "single", "one_gene", "duplicates"])
def test_count_split_of_tiny_data_adds_up(name):
    """Guard: the two halves of a count split add up to the counts (dense and CSR)."""
    counts = _tiny_matrices()[name]
    for given in (counts, sp.csr_matrix(counts)):
        train, test = vbsnmf.tl.count_split(given, random_state=0)
        total = train + test
        total = total.toarray() if sp.issparse(total) else total
        np.testing.assert_array_equal(total, counts)


@pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")  # 3 epochs: not the point
@pytest.mark.parametrize("name", ["1x1", "single", "one_cell", "huge"])
def test_streamed_svi_of_tiny_files_equals_memory(tmp_path, name):
    """Guard: SVI streamed from an .h5ad of a few cells (one a minibatch) is the same fit as
    from the matrix in memory."""
    counts = _tiny_matrices()[name]
    path = tmp_path / "tiny.h5ad"
    ad.AnnData(sp.csr_matrix(counts)).write_h5ad(path)
    params = dict(solver="svi", n_epochs=3, batch_size=1, random_state=0, n_threads=1)
    n_components = min(counts.shape)
    streamed = vbsnmf.VBNMF(n_components, **params).fit(str(path))
    in_memory = vbsnmf.VBNMF(n_components, **params).fit(sp.csr_matrix(counts))
    assert np.isfinite(streamed.components_).all()
    np.testing.assert_allclose(streamed.components_, in_memory.components_, rtol=1e-12)


def _cli(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "vbsnmf", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)


def test_cli_fits_a_two_by_two_mtx_and_refuses_its_umap(tmp_path):
    """Guard: `fit` of a 2 x 2 Matrix Market file at K = 2 writes finite tables; `umap` of
    its two cells is one line on stderr, exit code 2."""
    scipy.io.mmwrite(
        tmp_path / "m.mtx",
        sp.coo_matrix(np.array([[1, 0], [0, 1]])),
        field="integer",
        symmetry="general",
    )
    fitted = _cli(
        "fit", "m.mtx", "--cells-as-rows", "-k", "2", "-o", "out", "--quiet", cwd=tmp_path
    )
    assert fitted.returncode == 0, fitted.stderr
    table = pd.read_csv(tmp_path / "out" / "cell_factors.tsv.gz", sep="\t", index_col=0)
    assert table.shape == (2, 2) and np.isfinite(table.to_numpy()).all()
    drawn = _cli("umap", "out/result.h5ad", "-o", "u.png", cwd=tmp_path)
    assert drawn.returncode == 2
    assert (
        without_compile_notice(drawn.stderr).count("\n") == 1
        and "holds 2 cells; a UMAP needs at least 4" in drawn.stderr
    )
    assert not (tmp_path / "u.png").exists()
