"""The twenty-ninth hostile pass over the tools beside the fit: a fit record in ``.uns``
whose key entry (``varm_key``, ``obsm_key``, ...) was damaged into a list or an array made
every tool writing into that AnnData (``tl.nmf`` under another key, ``tl.project``) fail with
Python's bare "unhashable type", and the refit that the tools reading the record advise was
refused for overwriting arrays "held from elsewhere"; the advice of where the raw counts are
named a layer of zeros (which was then refused as holding no nonzero count) and never
``adata.X``, though the usual slip is a layer of normalised values (or a normalised ``.raw``)
passed beside counts in X. Guards pin what was checked and held: ``tl.project`` against a
numpy coordinate ascent with genes missing, reordered or extra; ``count_split``'s halves
against the Binomial moments; ``tl.top_genes`` against a numpy ranking."""

from __future__ import annotations

import warnings

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from cli_output import without_compile_notice
from scipy.special import digamma

from vbsnmf import cli, tl

FIT = {"max_iter": 30, "n_threads": 1, "random_state": 0}


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


def _counts(n_cells: int = 40, n_genes: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    factors = rng.gamma(1.0, 1.0, (n_cells, 3)) @ rng.gamma(1.0, 1.0, (3, n_genes))
    return rng.poisson(factors).astype(np.float32)


def _anndata(counts: np.ndarray) -> ad.AnnData:
    adata = ad.AnnData(counts)
    adata.var_names = [f"g{j}" for j in range(counts.shape[1])]
    return adata


@pytest.fixture(scope="module")
def reference():
    adata = _anndata(_counts())
    _quiet(tl.nmf, adata, 3, prior="gamma", **FIT)
    return adata


# -- 1: a damaged key entry of a fit record ------------------------------------------------
@pytest.mark.parametrize(
    ("entry", "damage"),
    [("varm_key", ["NMF"]), ("obsm_key", np.array(["X_nmf"])), ("usage_key", {"a": 1})],
    ids=["list", "array", "dict"],
)
def test_a_damaged_key_entry_of_a_record_lets_other_keys_be_written(reference, entry, damage):
    """check_key_added put the entry into a set: "unhashable type: 'list'" from tl.nmf under
    another key and from tl.project, whatever key they wrote under."""
    adata = reference.copy()
    adata.uns["nmf"][entry] = damage
    _quiet(tl.nmf, adata, 2, key_added="other", **FIT)
    _quiet(tl.project, adata, reference, key_added="projected", n_threads=1)
    assert {"X_other", "X_projected"} <= set(adata.obsm)
    with pytest.raises(ValueError, match=rf"adata.uns\['nmf'\]\['{entry}'\] is damaged"):
        tl.top_genes(adata)  # the record itself is still refused, naming the entry


@pytest.mark.parametrize("damage", [["NMF"], None, 3])
def test_the_advised_refit_over_a_damaged_record_replaces_it(reference, damage):
    """The tools reading the record say "fit again with vbsnmf.tl.nmf"; the refit under the
    same key was refused ("unhashable type", or arrays "held from elsewhere")."""
    adata = reference.copy()
    adata.uns["nmf"]["obsm_key"] = damage
    adata.uns["nmf"]["varm_key"] = damage
    with pytest.raises(ValueError, match="is damaged"):
        tl.top_genes(adata)
    _quiet(tl.nmf, adata, 2, **FIT)
    assert adata.uns["nmf"]["obsm_key"] == "X_nmf" and adata.obsm["X_nmf"].shape[1] == 2
    assert tl.top_genes(adata, 2).shape[0] > 0


def test_arrays_of_another_record_are_still_refused_under_a_damaged_entry(reference):
    """A guard (refused before the fix too): the names a fit under the key writes stand for
    its damaged entry, so another tool may still not take them."""
    adata = reference.copy()
    _quiet(tl.nmf, adata, 2, key_added="second", **FIT)
    adata.uns["second"]["obsm_key"] = None
    with pytest.raises(
        ValueError, match=r"would overwrite .* of the fit adata_new.uns\['second'\]"
    ):
        _quiet(tl.project, adata, reference, key_added="second", n_threads=1)


# -- 2: where the raw counts are ------------------------------------------------------------
def _normalised_beside_counts() -> ad.AnnData:
    counts = _counts()
    adata = _anndata(counts.copy())
    adata.layers["lognorm"] = np.log1p(counts)
    adata.raw = _anndata(np.log1p(counts))
    return adata


@pytest.mark.parametrize("options", [{"layer": "lognorm"}, {"use_raw": True}])
def test_counts_in_x_are_named_when_normalised_values_are_passed(reference, options):
    """The advice was "keep the raw counts before normalising ...": X was never named."""
    adata = _normalised_beside_counts()
    with pytest.raises(
        ValueError, match=r"appear to be in adata.X \(no layer= nor use_raw=True\);"
    ):
        tl.nmf(adata, 2, **options, **FIT)
    with pytest.raises(ValueError, match=r"appear to be in adata_new.X \(no layer= nor use_raw"):
        tl.project(adata, reference, key_added="p", **options)
    assert "nmf" not in adata.uns


@pytest.mark.parametrize(
    ("option", "element"), [(["--layer", "lognorm"], "layers['lognorm']"), (["--use-raw"], "raw.X")]
)
def test_the_command_line_names_the_files_x_as_where_the_counts_are(
    tmp_path, capsys, option, element
):
    """The hint in the command line's words: the file's X, without --layer or --use-raw."""
    path = tmp_path / "cells.h5ad"
    _normalised_beside_counts().write_h5ad(path)
    code = cli.main(["fit", str(path), "-k", "2", "-o", str(tmp_path / "out"), *option])
    assert code == cli.EXIT_USAGE
    err = without_compile_notice(capsys.readouterr().err)
    assert err.count("\n") == 1, err
    assert err.startswith(f"vbsnmf: error: {path} ({element}) holds ")
    assert err.endswith(
        f"the raw counts appear to be in {path} (X) (no --layer nor --use-raw); pass that instead\n"
    )


def test_an_empty_layer_is_not_named_as_where_the_counts_are():
    """A layer of zeros was advised ("appear to be in layer='empty'"), then refused as
    holding no nonzero count; a dask one as well."""
    counts = _counts()
    adata = _anndata(np.log1p(counts))
    adata.layers["empty"] = np.zeros_like(counts)
    adata.layers["empty_dask"] = da.zeros(counts.shape, chunks=(10, 5), dtype=np.float32)
    adata.layers["counts"] = da.from_array(sp.csr_matrix(counts), chunks=(10, 5), asarray=False)
    with pytest.raises(ValueError) as raised:
        tl.nmf(adata, 2, **FIT)
    message = str(raised.value)
    assert "appear to be in layer='counts'; pass that" in message
    assert "empty" not in message


def test_x_of_zeros_is_not_named_for_an_empty_layer():
    """X of zeros is no more counts than a layer of them (X is named only when it holds
    some; a guard of the wording once the other hint is given)."""
    counts = _counts()
    adata = _anndata(np.zeros_like(counts))
    adata.layers["empty"] = np.zeros_like(counts)
    adata.layers["counts"] = counts
    with pytest.raises(ValueError, match="holds no nonzero count") as raised:
        tl.nmf(adata, 2, layer="empty", **FIT)
    assert "the counts appear to be in layer='counts'" in str(raised.value)
    assert "adata.X" not in str(raised.value)


# -- 3: a fit's arrays whose record anndata.concat dropped -----------------------------------
def test_cell_arrays_without_their_record_are_named_as_such(reference):
    """anndata.concat drops .uns by default and keeps .obsm: the tools said "run
    vbsnmf.tl.nmf(adata) first", and tl.nmf refused the fit's own arrays as held "from
    elsewhere (not from an earlier vbsnmf.tl.nmf under this key)"."""
    joined = ad.concat([reference[:20], reference[20:]])
    with pytest.raises(
        KeyError, match=r"holds the cell factors that a fit or projection under this key"
    ) as raised:
        tl.top_genes(joined)
    assert "uns_merge='same'" in str(raised.value)
    with pytest.raises(KeyError, match=r"dropped by anndata\.concat"):
        tl.project(reference.copy(), joined, key_added="p")
    with pytest.raises(ValueError, match=r"dropped by anndata\.concat") as raised:
        _quiet(tl.nmf, joined, 2, **FIT)
    assert "from elsewhere" not in str(raised.value)
    # the record kept, the gene side dropped: merge='same' is named
    kept = ad.concat([reference[:20], reference[20:]], uns_merge="same")
    with pytest.raises(KeyError, match=r"anndata.concat keeps .varm only with merge='same'"):
        tl.top_genes(kept)
    with pytest.raises(KeyError, match=r"anndata.concat keeps .varm only with merge='same'"):
        tl.project(reference.copy(), kept, key_added="p")
    both = ad.concat([reference[:20], reference[20:]], uns_merge="same", merge="same")
    assert tl.top_genes(both).equals(tl.top_genes(reference))  # as advised


def test_projected_cells_without_their_record_are_named_as_such(reference):
    """The same for cells projected under key_added="p": their record is p_projection."""
    new = _anndata(_counts())
    tl.project(new, reference, key_added="p", n_threads=1)
    joined = ad.concat([new[:20], new[20:]])
    with pytest.raises(KeyError, match=r"without its record \(adata.uns\['p'\] or \['p_projection"):
        tl.top_genes(joined, key="p")
    with pytest.raises(
        ValueError, match=r"no adata_new.uns\['p'\] nor \['p_projection'\]: dropped"
    ):
        tl.project(joined, reference, key_added="p", n_threads=1)


def test_arrays_of_another_tool_are_still_held_from_elsewhere(reference):
    """A guard: scanpy's X_pca (no usages beside it) is still "from elsewhere"."""
    adata = _anndata(_counts())
    adata.obsm["X_pca"] = np.zeros((adata.n_obs, 2))
    with pytest.raises(ValueError, match="from elsewhere"):
        _quiet(tl.nmf, adata, 2, key_added="pca", **FIT)
    with pytest.raises(KeyError, match=r"holds no NMF fit; run vbsnmf.tl.nmf\(adata, key_added"):
        tl.top_genes(adata, key="pca")


def test_project_advises_a_float64_reference_for_counts_beyond_float32():
    """The advice was "fit with dtype=np.float64", a parameter project does not have."""
    counts = _counts().astype(np.float64)
    reference = _anndata(counts.copy())
    _quiet(tl.nmf, reference, 2, dtype=np.float32, **FIT)
    counts[0, 0] = 2**25
    with pytest.raises(ValueError, match=r"fit the reference \(adata_ref\) with dtype=np.float64"):
        tl.project(_anndata(counts), reference, key_added="p")


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
@pytest.mark.parametrize("dtype", [np.float16, np.longdouble])
def test_project_onto_a_gene_side_stored_in_another_dtype(prior, dtype):
    """A gene side downcast to float16 (to save room) or held as longdouble reached the
    Numba kernels: a bare TypingError. It is projected in float64, as its values hold."""
    reference = _anndata(_counts())
    _quiet(tl.nmf, reference, 2, prior=prior, **FIT)
    expected = _anndata(_counts())
    tl.project(expected, reference, key_added="p", n_threads=1)
    for name in ("nmf_gene_shape", "nmf_gene_rate"):
        if name in reference.varm:
            reference.varm[name] = reference.varm[name].astype(dtype)
    new = _anndata(_counts())
    tl.project(new, reference, key_added="p", n_threads=1)
    assert new.obsm["X_p"].dtype == np.float64
    tolerance = 1e-2 if dtype == np.float16 else 1e-12
    np.testing.assert_allclose(new.obsm["X_p"], expected.obsm["X_p"], rtol=tolerance)


# -- 4: a table of top genes listing none ---------------------------------------------------
@pytest.mark.parametrize("listed_none", ["min_counts", "inactive"])
def test_top_genes_listing_no_gene_keep_the_columns_dtypes(reference, listed_none):
    """Every column of the empty table was an object column (float64 with genes listed)."""
    adata = reference.copy()
    options = {"min_counts": 10**9} if listed_none == "min_counts" else {}
    if listed_none == "inactive":
        adata.uns["nmf"]["active"] = np.zeros(3, dtype=bool)
    empty, full = tl.top_genes(adata, **options), tl.top_genes(reference)
    assert empty.empty and list(empty.columns) == list(full.columns)
    assert empty.dtypes.to_dict() == full.dtypes.to_dict()
    assert [level.dtype for level in empty.index.levels] == [np.int64, np.int64]


# -- 5: a key given as a numpy string -------------------------------------------------------
def test_a_numpy_string_key_is_named_and_recorded_as_text(reference):
    """Keys taken from an array were named "np.str_('zz')" in messages (the advice to run
    ``tl.nmf(adata, key_added=np.str_('zz'))`` too) and stored so as ``reference_key``."""
    with pytest.raises(KeyError, match=r"adata.uns\['zz'\] holds no NMF fit") as raised:
        tl.top_genes(reference, key=np.str_("zz"))
    assert "np.str_" not in str(raised.value)
    with pytest.raises(KeyError) as raised:
        tl.project(_anndata(_counts()), reference, key=np.str_("zz"))
    assert "np.str_" not in str(raised.value)
    new = _anndata(_counts())
    tl.project(new, reference, key=np.str_("nmf"), key_added=np.str_("p"), n_threads=1)
    assert type(new.uns["p_projection"]["reference_key"]) is str
    assert tl.top_genes(reference, key=np.str_("nmf")).equals(tl.top_genes(reference))


# -- guards: results against numpy ---------------------------------------------------------
def _coordinate_ascent(cell, gene_shape, gene_rate, shape, rate, n_passes=3000):
    """One cell's q(z) mean under the fixed prior, q(w) held fixed: numpy's own CAVI."""
    mean_w, log_w = gene_shape / gene_rate, digamma(gene_shape) - np.log(gene_rate)
    cell_shape, cell_rate = np.full(gene_shape.shape[1], shape + 1.0), rate + mean_w.sum(0)
    for _ in range(n_passes):
        log_p = digamma(cell_shape) - np.log(cell_rate) + log_w
        p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
        cell_shape = shape + (cell[:, None] * p / p.sum(axis=1, keepdims=True)).sum(0)
    return cell_shape / cell_rate


def test_project_with_missing_reordered_and_extra_genes_matches_numpy(reference):
    """A guard: genes matched by name, missing ones left out of the likelihood."""
    counts = reference.X
    kept = np.array([j not in (2, 5, 7) for j in range(counts.shape[1])])
    order = np.random.default_rng(1).permutation(np.flatnonzero(kept))
    extra = np.random.default_rng(2).poisson(3.0, (counts.shape[0], 2)).astype(np.float32)
    new = ad.AnnData(sp.csr_matrix(np.hstack([counts[:, order], extra])))
    new.var_names = [*reference.var_names[order], "x0", "x1"]
    tl.project(new, reference, key_added="p", max_iter=3000, tol=0.0, n_threads=1)
    stored = reference.uns["nmf"]["variational"]
    gene_shape = reference.varm["nmf_gene_shape"].astype(np.float64)[kept]
    gene_rate = np.asarray(stored["gene_rate"], dtype=np.float64)
    shape, rate = float(stored["prior_shape"]), float(stored["prior_rate"])
    expected = [
        _coordinate_ascent(counts[i, kept].astype(np.float64), gene_shape, gene_rate, shape, rate)
        for i in range(5)
    ]
    np.testing.assert_allclose(new.obsm["X_p"][:5], expected, rtol=1e-4)
    assert new.uns["p_projection"]["n_genes_missing"] == 3


def test_count_split_halves_follow_the_binomial_moments():
    """A guard: train + test == counts, E[train] = f x, Var[train] = f (1 - f) x."""
    counts = np.full((400, 250), 9, dtype=np.int64)
    counts[:, ::2] = 0
    for storage in (np.asarray, sp.csr_matrix):
        train, test = tl.count_split(storage(counts), 0.3, random_state=0)
        train = train.toarray() if sp.issparse(train) else train
        test = test.toarray() if sp.issparse(test) else test
        assert np.array_equal(train + test, counts) and train.dtype == counts.dtype
        drawn = train[:, 1::2]
        assert abs(drawn.mean() - 2.7) < 0.02 and abs(drawn.var() - 9 * 0.3 * 0.7) < 0.05
        assert not train[:, ::2].any()


def test_top_genes_match_a_numpy_ranking(reference):
    """A guard: each sort_by against an argsort of the stored arrays."""
    loadings = reference.varm["NMF"].astype(np.float64)
    factors = reference.obsm["X_nmf"].astype(np.float64)
    expected_counts = loadings * factors.sum(axis=0)
    share = expected_counts / expected_counts.sum(axis=1, keepdims=True)
    totals = reference.var["nmf_total_counts"].to_numpy()
    for sort_by, key in (("loading", loadings), ("score", loadings * share)):
        table = tl.top_genes(reference, 4, sort_by=sort_by, include_inactive=True)
        for factor in range(3):
            listed = np.flatnonzero((loadings[:, factor] > 0) & (totals >= 2))
            ranked = listed[np.argsort(-key[listed, factor], kind="stable")][:4]
            genes = table.loc[factor, "gene"].tolist()
            assert genes == list(reference.var_names[ranked])
