"""The twenty-second hostile pass over what vbsnmf writes and converts: `io.mtx_to_h5ad`
(and so ``vbsnmf fit --solver svi``) refused a *pattern* Matrix Market file, which
`io.read_mtx` and the batch solver read as counts of 1; `io.write_result` of a backed
AnnData whose file holds no X (its counts in a layer, the fit of that layer) raised h5py's
bare "object 'X' doesn't exist"; a dict keyed by numbers in ``.uns`` met anndata's bare
"'int' object has no attribute 'rsplit'"; and a key holding ``/`` (``.obsm['CD4/CD8']``)
wrote a result.h5ad that anndata cannot read back (``.uns['a/b']`` came back as
``.uns['a']['b']``)."""

from __future__ import annotations

import os
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vbsnmf import io, tl
from vbsnmf.cli import main

PATTERN = (
    "%%MatrixMarket matrix coordinate pattern general\n"
    "% genes x cells, one entry repeated\n"
    "4 3 6\n1 1\n2 1\n2 1\n4 2\n1 3\n3 3\n"
)
# the counts of PATTERN as cells x genes: each entry 1, the repeated one summed
PATTERN_COUNTS = np.array([[1, 2, 0, 0], [0, 0, 0, 1], [1, 0, 1, 0]], dtype=np.float64)


def test_a_pattern_file_converts_to_the_counts_read_mtx_reads(tmp_path):
    src = tmp_path / "p.mtx"
    src.write_text(PATTERN)
    io.mtx_to_h5ad(src, tmp_path / "p.h5ad")
    converted = ad.read_h5ad(tmp_path / "p.h5ad").X.toarray()
    np.testing.assert_array_equal(converted, PATTERN_COUNTS)
    np.testing.assert_array_equal(converted, io.read_mtx(src, genes_as_rows=True).X.toarray())


def test_a_pattern_line_holding_a_value_is_still_refused_by_the_converter(tmp_path):
    src = tmp_path / "p.mtx"
    src.write_text("%%MatrixMarket matrix coordinate pattern general\n4 3 3\n1 1\n2 1 5\n3 3\n")
    with pytest.raises(io.ReadError, match="line 4 holds 3"):
        io.mtx_to_h5ad(src, tmp_path / "p.h5ad")
    assert not (tmp_path / "p.h5ad").exists()


def test_svi_fits_a_pattern_file_from_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.mtx").write_text(PATTERN)
    argv = ["fit", "p.mtx", "--genes-as-rows", "-k", "1", "--solver", "svi", "-o", "out"]
    code = main([*argv, "--epochs", "2", "--max-iter", "3", "--threads", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    counts = ad.read_h5ad(tmp_path / "out" / "counts.h5ad").X.toarray()
    np.testing.assert_array_equal(counts, PATTERN_COUNTS)


def _counts_in_a_layer(n_cells: int = 10, n_genes: int = 5) -> ad.AnnData:
    rng = np.random.default_rng(0)
    adata = ad.AnnData(
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]),
    )
    adata.layers["counts"] = sp.csr_matrix(rng.poisson(2, (n_cells, n_genes)).astype(np.float32))
    return adata


def test_write_result_of_a_backed_anndata_without_x(tmp_path):
    adata = _counts_in_a_layer()
    adata.write_h5ad(tmp_path / "in.h5ad")
    backed = ad.read_h5ad(tmp_path / "in.h5ad", backed="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few passes: not converged
        tl.nmf(backed, 2, max_iter=3, n_threads=1, layer="counts")
    io.write_result(backed, tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    assert back.X is None
    assert (back.layers["counts"] != adata.layers["counts"]).nnz == 0
    np.testing.assert_array_equal(back.obsm["X_nmf"], backed.obsm["X_nmf"])
    backed.file.close()


def _small() -> ad.AnnData:
    adata = ad.AnnData(sp.csr_matrix(np.ones((6, 4), dtype=np.float32)))
    adata.obs_names = [f"c{i}" for i in range(6)]
    adata.var_names = [f"g{j}" for j in range(4)]
    return adata


def test_a_dict_keyed_by_numbers_in_uns_is_refused_naming_it(tmp_path):
    adata = _small()
    adata.uns["meta"] = {"factor_names": {0: "T cells", 1: "B cells"}}
    with pytest.raises(TypeError, match=r"/uns/meta/factor_names has the key 0 \(int\)"):
        io.write_result(adata, tmp_path / "x.h5ad")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where", ["obsm", "uns", "layers"])
def test_a_key_holding_a_slash_is_refused_not_written_as_nested_groups(tmp_path, where):
    adata = _small()
    getattr(adata, where)["CD4/CD8"] = sp.csr_matrix(np.ones((6, 4), dtype=np.float32))
    with pytest.raises(TypeError, match=rf"/{where} has the key 'CD4/CD8'"):
        io.write_result(adata, tmp_path / "x.h5ad")
    assert os.listdir(tmp_path) == []


def test_a_dict_keyed_by_strings_of_numbers_is_still_written(tmp_path):
    adata = _small()
    adata.uns["names"] = {"0": "T cells", "1": {"CD4 CD8": 2}}
    io.write_result(adata, tmp_path / "x.h5ad")
    assert ad.read_h5ad(tmp_path / "x.h5ad").uns["names"] == {"0": "T cells", "1": {"CD4 CD8": 2}}
