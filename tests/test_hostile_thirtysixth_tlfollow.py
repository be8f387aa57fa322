"""The thirty-sixth pass's second wave over the `vbsnmf.tl` / `vbsnmf.pl` layer: what the
first wave left. Defects, each test failing on the code before its fix:

- `tl.nmf` refitting an AnnData transposed after a fit (``adata.T``, which swaps ``.obsm``
  and ``.varm``, ``.obs`` and ``.var``) dropped the old fit's entries only from their own
  places: its cell factors stayed in ``.varm`` beside the new gene loadings, its loadings
  in ``.obsm`` and its gene totals in ``.obs``; transposed back, the old cell factors
  stood in ``.obsm['X_nmf']`` and were read as the new fit's;
- cells projected onto a fit (`tl.project`) and then transposed were told by `pl.umap`,
  `pl.factors` and ``vbsnmf umap`` that ``.obsm['X_nmf_usage']`` was missing, "project
  again", which does not bring the factors back; now to transpose it back;
- ``adata.raw.to_adata()`` of a fit of ``.raw`` (the raw genes, with the fit's gene side in
  its own ``.varm``) was refused by `tl.top_genes`, `tl.project`, `io.write_nmf_tables` and
  a warm start as "the fit 'nmf' was of adata.raw, which adata no longer has", with no way
  on; now each reads it as the fit (with ``.raw`` deleted, the message says where to read
  the fit);
- `tl.select_k` with ``mask_var`` given as an array recorded no trace of the mask (its
  table read as one over all the genes); now ``params['fitted_genes']``.
"""

from __future__ import annotations

import functools
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from cli_output import without_compile_notice
from simulated import poisson_gamma_adata

import vbsnmf
from vbsnmf import cli, tl
from vbsnmf.tl._stored import cell_factors_record

N_CELLS, N_GENES, K = 40, 12, 3
GENES = [f"G{j}" for j in range(N_GENES)]


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


# shared with the other modules fitting tiny tl.nmf results, at this module's sizes
_adata = functools.partial(poisson_gamma_adata, n_cells=N_CELLS, n_genes=N_GENES, k=K)


def _fit(adata, **kwargs) -> None:
    _quiet(tl.nmf, adata, K, random_state=0, max_iter=30, n_threads=1, **kwargs)


@pytest.fixture(scope="module")
def fitted() -> ad.AnnData:
    adata = _adata()
    _fit(adata)
    return adata


@pytest.fixture(scope="module")
def raw_fitted() -> ad.AnnData:
    """A fit of ``.raw`` (all 12 genes) of an AnnData keeping 8 of them."""
    adata = _adata()
    adata.raw = adata
    adata = adata[:, : N_GENES - 4].copy()
    _fit(adata, use_raw=True)
    return adata


def _cli(argv, capfd, cwd, monkeypatch) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    code = cli.main([str(arg) for arg in argv])
    err = without_compile_notice(capfd.readouterr().err)
    return code, err


# -- 1: a refit of a transposed fitted AnnData ------------------------------------------------
def test_refit_of_a_transposed_fitted_anndata_keeps_no_array_of_the_old_fit(fitted):
    """Before: ``tl.nmf`` of ``fitted.T`` (40 x 12 fitted, refitted as 12 x 40) left the old
    fit's cell factors, usages and loadings in the swapped places (``.varm['X_nmf']``,
    ``.obsm['NMF']``, ``.obs['nmf_total_counts']``) and its dominant factors in ``.var``;
    transposed back, ``.obsm['X_nmf']`` held the old fit's 40 cell rows, read as the new
    fit's. Now only the new fit's entries are left."""
    flipped = fitted.T.copy()
    flipped.var["nmf_dominant_factor"] = pd.Categorical(
        [f"factor {i % K}" for i in range(flipped.n_vars)]
    )
    flipped.uns["nmf"] = {**flipped.uns["nmf"], "dominant_factor_key": "nmf_dominant_factor"}
    flipped.uns["nmf_dominant_factor_colors"] = ["#000000", "#777777", "#ffffff"]
    _fit(flipped)
    written = {
        "X_nmf",
        "X_nmf_usage",
        "X_nmf_sqrt_usage",
        *(f"nmf_cell_{name}" for name in ("shape", "rate", "scale_shape", "scale_rate")),
    }
    assert set(flipped.obsm) == written
    assert set(flipped.varm) == {
        "NMF",
        *(f"nmf_gene_{name}" for name in ("shape", "rate", "scale_shape", "scale_rate")),
    }
    assert "nmf_total_counts" not in flipped.obs.columns
    assert "nmf_dominant_factor" not in flipped.var.columns
    assert "nmf_dominant_factor_colors" not in flipped.uns
    back = flipped.T
    with pytest.raises(ValueError, match="transposed after the fit"):
        tl.fit_info(back)
    assert tl.fit_info(flipped)["params"]["n_components"] == K


def test_refit_of_an_upright_fit_keeps_a_gene_array_named_as_cell_factors(fitted):
    """Guard (passes on the base code too): the swapped places are cleared only in an
    AnnData whose cell factors are in ``.varm`` and not in ``.obsm``; upright, a
    ``.varm['X_nmf']`` of the user's is left as it was."""
    adata = fitted.copy()
    theirs = np.arange(N_GENES * 2, dtype=float).reshape(N_GENES, 2)
    adata.varm["X_nmf"] = theirs
    _fit(adata)
    np.testing.assert_array_equal(adata.varm["X_nmf"], theirs)
    assert adata.obsm["X_nmf"].shape == (N_CELLS, K)


# -- 2: a projection transposed ----------------------------------------------------------------
def test_a_projection_transposed_is_told_to_transpose_back(fitted, tmp_path, capfd, monkeypatch):
    """Before: cells projected with `tl.project` and then transposed were told
    "adata.obsm has no 'X_nmf_usage', which vbsnmf.tl.project writes; project again" by
    `pl.umap`, `pl.factors` and ``vbsnmf umap`` (a KeyError; `cell_factors_record` itself
    returned the record). Now the transpose is named; transposed back, the record reads."""
    new = _adata(seed=1, n_cells=20, prefix="n")
    _quiet(tl.project, new, fitted, n_threads=1)
    flipped = new.T.copy()
    said = (
        "the cell factors of the projection 'nmf' are in adata.varm['X_nmf'], not in "
        "adata.obsm: the AnnData was transposed after the projection (adata.T, which swaps "
        ".obsm and .varm with the cells and the genes); transpose it back, adata = adata.T"
    )
    calls = {
        "record": lambda: cell_factors_record(flipped, "nmf"),
        "factors": lambda: vbsnmf.pl.factors(flipped, show=False),
        "umap": lambda: vbsnmf.pl.umap(flipped, show=False),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as raised:
            _quiet(call)
        assert str(raised.value) == said, (name, raised.value)
    flipped.write_h5ad(tmp_path / "flipped.h5ad")
    code, err = _cli(["umap", "flipped.h5ad", "-o", "u.png"], capfd, tmp_path, monkeypatch)
    assert code == 2 and err == f"vbsnmf: error: flipped.h5ad: {said}\n", err
    assert not (tmp_path / "u.png").exists()
    assert cell_factors_record(flipped.T, "nmf")["written_by"] == "vbsnmf.tl.project"


# -- 3: adata.raw.to_adata() of a fit of .raw --------------------------------------------------
def test_raw_to_adata_of_a_raw_fit_is_read_as_the_fit(raw_fitted, tmp_path):
    """Before: ``adata.raw.to_adata()`` after a ``use_raw=True`` fit, which holds the raw
    genes with the fit's gene side in its ``.varm``, was refused by `tl.top_genes`,
    `tl.project` and `io.write_nmf_tables` as "the fit 'nmf' was of adata.raw, which adata
    no longer has". Now each reads it: the same top genes, projection and tables as from
    the AnnData with its ``.raw``."""
    raw = raw_fitted.raw.to_adata()
    pd.testing.assert_frame_equal(tl.top_genes(raw), tl.top_genes(raw_fitted))
    new = _adata(seed=3, n_cells=10, prefix="n")
    projected = [
        _quiet(tl.project, new, ref, n_threads=1, copy=True).obsm["X_nmf"]
        for ref in (raw_fitted, raw)
    ]
    np.testing.assert_array_equal(projected[0], projected[1])
    for name, adata in (("with_raw", raw_fitted), ("to_adata", raw)):
        (tmp_path / name).mkdir()
        vbsnmf.io.write_nmf_tables(adata, tmp_path / name)
    for table in ("cell_factors.tsv.gz", "gene_loadings.tsv.gz", "elbo.tsv"):
        with_raw, to_adata = (
            pd.read_csv(tmp_path / name / table, sep="\t", index_col=0)
            for name in ("with_raw", "to_adata")
        )
        pd.testing.assert_frame_equal(with_raw, to_adata)


def test_raw_to_adata_of_a_raw_fit_continues_by_warm_start(raw_fitted):
    """Before: a warm start of ``adata.raw.to_adata()`` was refused: "the stored fit was
    made with use_raw=True" (and ``use_raw=True``: "adata.raw is None"), a dead end. Now
    it continues from the stored fit over X, the raw counts, recorded as a fit of X."""
    raw = raw_fitted.raw.to_adata()
    stored = int(raw.uns["nmf"]["n_iter"])
    _fit(raw, warm_start=True)
    assert raw.uns["nmf"]["n_iter"] > stored
    assert raw.uns["nmf"]["params"]["use_raw"] is False
    assert raw.varm["NMF"].shape == (N_GENES, K) and "nmf_total_counts" in raw.var


def test_a_raw_fit_whose_raw_is_gone_says_where_to_read_it(raw_fitted):
    """Before: with ``.raw`` deleted (no gene side left in adata), "the fit 'nmf' was of
    adata.raw, which adata no longer has" and nothing more. Now the message says where the
    gene side was and the ways on."""
    adata = raw_fitted.copy()
    del adata.raw
    with pytest.raises(ValueError) as raised:
        tl.top_genes(adata)
    message = str(raised.value)
    assert message.startswith("the fit 'nmf' was of adata.raw, which adata no longer has")
    assert "adata.raw.to_adata()" in message and "vbsnmf.tl.nmf" in message


# -- 4: select_k's record of an array mask_var -------------------------------------------------
def test_select_k_records_the_genes_an_array_mask_var_fitted(tmp_path):
    """Before: `tl.select_k` with ``mask_var`` an array (or a boolean Series) recorded
    nothing of it in ``params``, so the stored table read as one over all the genes. Now
    ``params['fitted_genes']`` names the fitted genes, and an ``.h5ad`` keeps them; a
    ``mask_var`` naming a column is recorded by name only, as `tl.nmf` records it."""
    adata = _adata(n_cells=60)
    mask = np.arange(N_GENES) % 3 != 0
    kept = [gene for gene, keep in zip(GENES, mask) if keep]
    run = dict(ks=[1, 2], random_state=0, max_iter=20, n_threads=1)
    _quiet(tl.select_k, adata, mask_var=mask, **run)
    params = adata.uns["nmf_k_selection"]["params"]
    assert list(params["fitted_genes"]) == kept
    adata.write_h5ad(tmp_path / "k.h5ad")
    stored = ad.read_h5ad(tmp_path / "k.h5ad").uns["nmf_k_selection"]["params"]
    assert list(stored["fitted_genes"]) == kept
    adata.var["chosen"] = mask
    _quiet(tl.select_k, adata, mask_var="chosen", key_added="k_named", **run)
    named = adata.uns["k_named"]["params"]
    assert named["mask_var"] == "chosen" and "fitted_genes" not in named
    # the tables agree: the same genes fitted either way
    pd.testing.assert_frame_equal(
        adata.uns["k_named"]["table"], adata.uns["nmf_k_selection"]["table"]
    )
