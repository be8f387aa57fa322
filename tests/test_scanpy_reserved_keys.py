"""`tl.nmf`, `tl.project` and `tl.select_k` refuse a ``key_added`` under which they would
store their result where scanpy's own tools store theirs (``"umap"``: the cell factors in
``.obsm['X_umap']``, the record in ``.uns['umap']``), even when nothing is there yet: the
next ``sc.tl.umap`` overwrote the fit without a word, and ``sc.pp.neighbors`` read a fit
stored under ``"pca"`` as the PCA."""

import warnings

import numpy as np
import pytest
import scipy.io
from simulated import poisson_adata

from vbsnmf import cli, tl

FIT = {"max_iter": 3, "n_threads": 1}


def _adata(n_cells=60, n_genes=30, seed=0):
    return poisson_adata(n_cells=n_cells, n_genes=n_genes, seed=seed)


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.mark.parametrize(
    "key, tool, entry",
    [
        ("umap", "sc.tl.umap", ".obsm['X_umap']"),
        ("pca", "sc.pp.pca", ".uns['pca']"),
        ("PCs", "sc.pp.pca", ".varm['PCs']"),
        ("neighbors", "sc.pp.neighbors", ".uns['neighbors']"),
        ("leiden", "sc.tl.leiden", ".uns['leiden']"),
        ("tsne", "sc.tl.tsne", ".obsm['X_tsne']"),
        ("draw_graph_fa", "sc.tl.draw_graph", ".obsm['X_draw_graph_fa']"),
        ("spatial", "sc.read_visium", ".uns['spatial']"),
    ],
)
def test_nmf_refuses_a_key_of_scanpys_tools_before_fitting(key, tool, entry):
    """Fails on the code before, which stored the fit there."""
    adata = _adata()
    with pytest.raises(ValueError, match=rf"key_added='{key}' would store the fit where") as e:
        _quiet(tl.nmf, adata, 2, key_added=key, **FIT)
    assert tool in str(e.value) and entry in str(e.value)
    assert "choose another key_added" in str(e.value)
    assert len(adata.obsm) == 0 and len(adata.uns) == 0 and len(adata.varm) == 0


def test_project_and_select_k_refuse_scanpys_keys():
    """Fails on the code before: the projection's cell factors went to .obsm['X_umap'], the
    K selection's record to .uns['pca']."""
    reference = _adata()
    _quiet(tl.nmf, reference, 2, **FIT)
    new = _adata(n_cells=20, seed=1)
    with pytest.raises(ValueError, match=r"store the projection where scanpy's sc.tl.umap"):
        tl.project(new, reference, key_added="umap", n_threads=1)
    assert "X_umap" not in new.obsm
    with pytest.raises(ValueError, match=r"store the K selection where scanpy's sc.pp.pca"):
        _quiet(tl.select_k, _adata(), [1, 2], key_added="pca", **FIT)


def test_keys_beside_scanpys_and_scanpys_own_results_keep_their_handling():
    """Guards (pass before and after): a key that only starts like scanpy's fits, and an
    entry scanpy already stored is named as held "from elsewhere", as before."""
    adata = _adata()
    _quiet(tl.nmf, adata, 2, key_added="umap_nmf", **FIT)
    assert "X_umap_nmf" in adata.obsm and "X_umap" not in adata.obsm
    adata.obsm["X_pca"] = np.zeros((adata.n_obs, 2))
    with pytest.raises(ValueError, match="from elsewhere"):
        _quiet(tl.nmf, adata, 2, key_added="pca", **FIT)


def test_command_line_refuses_key_umap_in_one_line(tmp_path, capsys):
    """Fails on the code before, which wrote a result `vbsnmf umap` cannot draw."""
    matrix = tmp_path / "counts.mtx"
    scipy.io.mmwrite(matrix, _adata().X)
    outdir = tmp_path / "out"
    argv = ["fit", str(matrix), "--cells-as-rows", "-k", "2", "--max-iter", "3", "--quiet"]
    assert cli.main([*argv, "--key", "umap", "-o", str(outdir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sc.tl.umap" in err, err
    assert not outdir.exists()
