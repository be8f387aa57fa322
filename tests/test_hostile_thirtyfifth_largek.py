"""Large and extreme K, found by the thirty-fifth hostile pass: `pl.umap`'s default
colouring with more than 102 dominant factors (every cell grey), and `tl.select_k`'s
held-out score, whose blocks of a fixed 262,144 nonzeros held 4 MiB per factor. Beside
them, guards of what held: the memory guard's estimate against a measured peak at
K = min(shape), n_components given as numpy integers (and refused as bool or float) by
every estimator, K above the number of nonzeros, the tables' widths at K = 200 and the
command line's ``-k``."""

from __future__ import annotations

import tracemalloc
import warnings

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.io
import scipy.sparse as sp
from cli_output import without_compile_notice
from scipy.special import gammaln

import vbsnmf
from vbsnmf import _memory, cli
from vbsnmf.tl import _select_k


@pytest.fixture
def no_umap(monkeypatch):
    """sc.pp.neighbors and sc.tl.umap as a random embedding: the colours, not the layout,
    are tested (the graph alone took half a minute to compile)."""

    def embed(adata, random_state=0, **_):
        adata.obsm["X_umap"] = np.random.default_rng(0).normal(size=(adata.n_obs, 2))

    monkeypatch.setattr(sc.tl, "umap", embed)
    monkeypatch.setattr(sc.pp, "neighbors", lambda *args, **kwds: None)


def _blocks(n_programmes: int, cells: int = 2, genes: int = 2) -> ad.AnnData:
    """Counts of ``n_programmes`` disjoint programmes, ``cells`` cells and ``genes`` genes
    each: a classical fit at K = n_programmes gives each cell one dominant factor."""
    rng = np.random.default_rng(0)
    usage = np.kron(np.eye(n_programmes), np.ones((cells, 1))) * 30
    loading = np.kron(np.eye(n_programmes), np.ones((genes, 1)))
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(usage @ loading.T).astype(np.float32)))
    adata.obs_names = [f"cell{i}" for i in range(adata.n_obs)]
    adata.var_names = [f"gene{j}" for j in range(adata.n_vars)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # min_share=0: every factor active, so that two cells a programme suffice
        vbsnmf.tl.nmf(adata, n_programmes, solver="hals", max_iter=5, random_state=0, min_share=0.0)
    return adata


def test_umap_colours_more_dominant_factors_than_scanpys_palettes(no_umap):
    # scanpy's largest palette has 102 colours: past it every cell and every legend entry
    # was drawn in one grey (#808080), said only at scanpy's info level
    adata = _blocks(105)
    vbsnmf.pl.umap(adata, show=False)
    column = "nmf_dominant_factor"
    n_dominant = adata.obs[column].cat.categories.size
    assert n_dominant == 105
    colours = list(adata.uns[f"{column}_colors"])
    assert len(colours) == n_dominant
    assert len(set(colours)) == n_dominant


def test_umap_keeps_scanpys_palette_up_to_102_factors(no_umap):
    """Guard (passes on the base code too): with as many dominant factors as scanpy's
    palettes colour, scanpy's own colours are drawn."""
    adata = _blocks(30)
    vbsnmf.pl.umap(adata, show=False)
    colours = list(adata.uns["nmf_dominant_factor_colors"])
    assert colours == [c.lower() for c in sc.plotting.palettes.default_102[:30]]


@pytest.mark.parametrize("count", [103, 150, 256])
def test_spread_colours_are_distinct(count):
    from vbsnmf.pl._umap import _spread_colours  # new with the fix

    colours = _spread_colours(count)
    assert len(colours) == count
    assert len(set(colours)) == count


def test_select_k_scoring_memory_does_not_grow_with_k():
    # blocks of 262,144 nonzeros whatever K: two float64 arrays of block x K, 805 MiB
    # traced here at K=200 (beside the fit, uncounted by the memory guard)
    rng = np.random.default_rng(0)
    n_cells, n_genes, n_components = 3000, 1000, 200
    counts = sp.random(n_cells, n_genes, density=0.1, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 5)
    cell_factors = rng.gamma(1.0, 0.1, (n_cells, n_components))
    gene_loadings = rng.gamma(1.0, 0.1, (n_genes, n_components))
    tracemalloc.start()
    try:
        loglik = _select_k.poisson_loglik_per_cell(counts, cell_factors, gene_loadings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150 * 2**20, f"{peak / 2**20:.0f} MiB"
    dense, mu = counts.toarray(), cell_factors @ gene_loadings.T
    expected = (dense * np.log(mu) - gammaln(dense + 1) - mu).sum(axis=1)
    np.testing.assert_allclose(loglik, expected, rtol=1e-10)


def test_select_k_scoring_in_blocks_of_one_nonzero(monkeypatch):
    """Guard (passes on the base code too, with its own block size): the score is the same
    whatever the block, down to one nonzero a block (K above the entry budget)."""
    rng = np.random.default_rng(1)
    counts = sp.random(40, 30, density=0.2, format="csr", random_state=1)
    counts.data = np.ceil(counts.data * 3)
    cell_factors, gene_loadings = rng.gamma(1.0, 1.0, (40, 7)), rng.gamma(1.0, 1.0, (30, 7))
    whole = _select_k.poisson_loglik_per_cell(counts, cell_factors, gene_loadings)
    monkeypatch.setattr(_select_k, "BLOCK_NONZEROS", 1)
    monkeypatch.setattr(_select_k, "BLOCK_FACTOR_ENTRIES", 3, raising=False)  # new with the fix
    by_one = _select_k.poisson_loglik_per_cell(counts, cell_factors, gene_loadings)
    np.testing.assert_allclose(by_one, whole, rtol=1e-12)


def test_select_k_refuses_the_largest_k_memory_before_any_fit(pbmc_tiny, monkeypatch):
    # the guard spoke only when the largest K's turn came: both fits at K=2 (all the
    # counts and the train half) ran first, hours on a large data set
    n_cells, n_genes = pbmc_tiny.shape
    small = _memory.estimate_fit_memory((n_cells, n_genes), pbmc_tiny.X.nnz, 2)["total"]
    large = _memory.estimate_fit_memory((n_cells, n_genes), pbmc_tiny.X.nnz, 400)["total"]
    monkeypatch.delenv("VBSNMF_NO_MEMORY_GUARD", raising=False)
    monkeypatch.setattr(_memory, "available_memory", lambda: (small + large) // 2)
    fitted = []
    fit_outcome = _select_k._fit_outcome

    def spy(adata, k, *args, **kwds):
        fitted.append(k)
        return fit_outcome(adata, k, *args, **kwds)

    monkeypatch.setattr(_select_k, "_fit_outcome", spy)
    with pytest.raises(_memory.InsufficientMemoryError, match="with K=400"):
        vbsnmf.tl.select_k(pbmc_tiny, [2, 400], max_iter=5, random_state=0)
    assert fitted == []
    assert "select_k" not in pbmc_tiny.uns


def test_select_k_runs_when_the_largest_k_fits(pbmc_tiny, monkeypatch):
    """Guard (passes on the base code too): memory enough for the largest K lets the grid
    run, every K's two fits."""
    n_cells, n_genes = pbmc_tiny.shape
    large = _memory.estimate_fit_memory((n_cells, n_genes), pbmc_tiny.X.nnz, 40)["total"]
    monkeypatch.delenv("VBSNMF_NO_MEMORY_GUARD", raising=False)
    # twice the estimate: its per-thread accumulators grow with the threads the fits use
    monkeypatch.setattr(_memory, "available_memory", lambda: 2 * large)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = vbsnmf.tl.select_k(pbmc_tiny, [2, 40], max_iter=5, random_state=0)
    assert list(table.index) == [2, 40]


@pytest.mark.parametrize(
    "params",
    [
        {"n_components": 500},
        {"n_components": 500, "prior": "gamma"},
        {"n_components": 500, "n_init": 2},
        {"n_components": 500, "dtype": np.float32},
    ],
)
def test_memory_estimate_bounds_the_peak_at_k_equal_to_min_shape(params):
    """Guard (passes on the base code too): at K = min(shape) above the nonzeros the
    factors are all of the peak, and the estimate stays above the traced peak and within
    2.5x of it (measured 1.63 to 2.11; ru_maxrss growth at K=1000 on 4,000 x 1,000: 1.6
    to 2.0)."""
    rng = np.random.default_rng(0)
    X = sp.random(
        600, 500, density=0.002, format="csr", random_state=0,
        data_rvs=lambda n: rng.integers(1, 9, n),
    ).astype(np.float32)  # fmt: skip
    model = lambda: vbsnmf.VBNMF(max_iter=6, tol=0, random_state=0, **params)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model().fit(X)  # the kernels' first-call allocations are not the fit's
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            model().fit(X)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    estimate = _memory.check_fit_memory(
        X,
        params["n_components"],
        n_threads=None,
        dtype=params.get("dtype", np.float64),
        n_init=params.get("n_init", 1),
        learned_prior=params.get("prior", "hierarchical") != "gamma",
    )
    assert estimate is not None
    assert peak <= estimate["total"] <= 2.5 * peak, (peak, estimate)


_COUNTS = sp.csr_matrix(np.random.default_rng(0).poisson(0.5, (30, 20)).astype(float))


@pytest.mark.parametrize("k", [np.int64(3), np.int32(3), np.uint8(3), np.uint16(3)])
@pytest.mark.parametrize("estimator", [vbsnmf.VBNMF, vbsnmf.NMF])
def test_numpy_integer_n_components_accepted(estimator, k):
    """Guard (passes on the base code too): numpy integers are integers, the fit's K a
    Python int where stored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = estimator(n_components=k, max_iter=5, random_state=0).fit(_COUNTS)
    assert model.components_.shape == (3, 20)


@pytest.mark.parametrize("k", [True, np.bool_(True), 10.0, np.float64(3.0), np.array(3), "3"])
def test_non_integer_n_components_refused_alike(k, pbmc_tiny):
    """Guard (passes on the base code too): bool, float, 0-d array and text refused as a
    TypeError by VBNMF, NMF, VBNTF and tl.nmf, which name the value."""
    for fit in (
        lambda: vbsnmf.VBNMF(n_components=k).fit(_COUNTS),
        lambda: vbsnmf.NMF(n_components=k).fit(_COUNTS),
        lambda: vbsnmf.VBNTF(n_components=k).fit(np.array([[0, 0, 0], [1, 1, 1]]), [1.0, 2.0]),
        lambda: vbsnmf.tl.nmf(pbmc_tiny, n_components=k),
    ):
        with pytest.raises(TypeError, match="n_components must be an integer"):
            fit()
    assert "nmf" not in pbmc_tiny.uns


def test_k_above_the_nonzeros_fits_finite():
    """Guard (passes on the base code too): K = min(shape) above the 12 nonzeros, by VB
    (fit and transform) and by every classical solver."""
    X = sp.random(30, 20, density=0.02, format="csr", random_state=1)
    X.data = np.ceil(X.data * 5)
    assert X.nnz < 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vb = vbsnmf.VBNMF(n_components=20, max_iter=20, random_state=0).fit(X)
        assert np.isfinite(vb.transform(X)).all() and np.isfinite(vb.components_).all()
        for solver in ("mu", "hals", "als", "pg", "ipg", "gd"):
            classic = vbsnmf.NMF(n_components=20, solver=solver, max_iter=20, random_state=0)
            W = classic.fit_transform(X)
            assert np.isfinite(W).all() and np.isfinite(classic.components_).all(), solver
            assert np.isfinite(classic.transform(X)).all(), solver


def test_tables_are_k_wide_at_k_200(pbmc_tiny, tmp_path):
    """Guard (passes on the base code too): 200 factor columns, named factor_0 ...
    factor_199, holding the fit's values to 6 digits."""
    adata = pbmc_tiny[:, :250].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, 200, max_iter=3, random_state=0, n_threads=1)
    vbsnmf.io.write_nmf_tables(adata, tmp_path)
    for name, index, values in (
        ("cell_factors.tsv.gz", "cell", adata.obsm["X_nmf"]),
        ("gene_loadings.tsv.gz", "gene", adata.varm["NMF"]),
    ):
        table = pd.read_csv(
            tmp_path / name, sep="\t", index_col=0, keep_default_na=False, dtype={index: str}
        )
        assert list(table.columns) == [f"factor_{factor}" for factor in range(200)]
        np.testing.assert_allclose(table.to_numpy(), values, rtol=5e-6)


@pytest.mark.parametrize(
    ("k", "message"),
    [
        ("10.0", "argument -k/--n-components: expected an integer, got '10.0'"),
        ("0", "argument -k/--n-components: must be >= 1, got 0"),
        ("508", "-k 508 is out of range: it must be between 1 and min(n_rows, n_cols) = 507"),
    ],
)
def test_cli_k_refused_in_one_line(k, message, tmp_path, capsys):
    """Guard (passes on the base code too): a -k that is not an integer, below 1 or above
    min(shape) is one line on stderr, exit 2, no output folder."""
    folder = tmp_path / "data"
    folder.mkdir()
    pbmc = vbsnmf.datasets.pbmc_tiny()
    genes_by_cells = sp.csr_matrix(pbmc.X).T.tocoo()
    scipy.io.mmwrite(folder / "matrix.mtx", genes_by_cells)
    pd.DataFrame({"id": pbmc.var_names, "name": pbmc.var_names}).to_csv(
        folder / "genes.tsv", sep="\t", header=False, index=False
    )
    pd.Series(pbmc.obs_names).to_csv(folder / "barcodes.tsv", header=False, index=False)
    code = cli.main(["fit", str(folder), "-k", k, "-o", str(tmp_path / "o"), "--max-iter", "2"])
    assert code == cli.EXIT_USAGE
    error = without_compile_notice(capsys.readouterr().err)
    assert error.count("\n") == 1 and message in error, error
    assert not (tmp_path / "o").exists()
