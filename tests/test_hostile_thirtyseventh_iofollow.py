"""Thirty-seventh hostile pass (second wave): the `vbsnmf.io` writers on AnnData views and
edited objects, and the caller's objects after a write.

Defects, each test of them failing on the code before its fix:

- `io.write_result` of a view (``adata[mask]``) whose ``.obs`` or ``.var`` holds a column
  of text gave anndata's ``ImplicitModificationWarning`` and turned the caller's view into
  an AnnData of its own: it converted the text to categoricals in place
  (``strings_to_categoricals``), as ``AnnData.write_h5ad`` does. It also changed the dtypes
  of a whole AnnData's ``.obs``, ``.var`` and ``.raw.var``. The conversion is now made on
  copies of the tables: the file holds the same categoricals, the caller's objects are left
  as they were.
- `io.write_result` of a backed AnnData wrote the text of its ``.raw.var`` as strings, where
  that of one in memory is written as categoricals (as ``write_h5ad`` writes both).

- `io.write_result` of an AnnData whose ``.obs`` index name was also the name of a column of
  other values (``adata.obs.index.name = "cell"``), or a table with a column named
  ``_index`` or a column name twice, failed with anndata's ValueError naming no table (its
  location only in a note, which printing the error does not show). It now names the table
  (``/obs``, ``/var``, ``/obsm/...``) and what to rename; nothing is written.

The other tests are guards that pass on the code before the fixes too; each says so.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vbsnmf import io, tl


def _counts(n_cells: int = 60, n_genes: int = 20, seed: int = 0) -> ad.AnnData:
    """Poisson counts with a text column of three values in ``.obs`` and two in ``.var``."""
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(1.0, (n_cells, n_genes)).astype(np.float32)))
    adata.obs["sample"] = ["a", "b", "c"] * (n_cells // 3)
    adata.var["kind"] = ["gene", "other"] * (n_genes // 2)
    return adata


def _dtypes(frame: pd.DataFrame) -> dict:
    return {column: str(dtype) for column, dtype in frame.dtypes.items()}


def test_write_result_leaves_a_view_a_view(tmp_path):
    """Defect: the view with text in .obs and .var became an AnnData of its own, with
    anndata's ImplicitModificationWarning, and its parent's columns were left as text."""
    adata = _counts()
    adata.raw = adata.copy()
    adata.layers["counts"] = adata.X.copy()
    view = adata[adata.obs["sample"] != "a", :12]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ad.ImplicitModificationWarning)
        io.write_result(view, tmp_path / "view.h5ad")
    assert view.is_view
    assert _dtypes(view.obs) == _dtypes(adata.obs) == {"sample": "object"}
    back = ad.read_h5ad(tmp_path / "view.h5ad")
    assert back.shape == (40, 12) and list(back.layers) == ["counts"]
    assert back.obs["sample"].dtype == "category"
    assert list(back.obs["sample"].cat.categories) == ["b", "c"]
    assert back.var["kind"].dtype == "category" and back.raw.var["kind"].dtype == "category"
    assert back.raw.shape == (40, 20)
    np.testing.assert_array_equal(back.X.toarray(), view.X.toarray())


def test_write_result_leaves_the_callers_tables_as_they_were(tmp_path):
    """Defect: the text columns of the AnnData written became categoricals in the caller's
    .obs, .var and .raw.var."""
    adata = _counts()
    adata.raw = adata.copy()
    io.write_result(adata, tmp_path / "result.h5ad")
    assert adata.obs["sample"].dtype == object and adata.var["kind"].dtype == object
    assert adata.raw.var["kind"].dtype == object
    back = ad.read_h5ad(tmp_path / "result.h5ad")
    assert back.obs["sample"].dtype == "category" and back.raw.var["kind"].dtype == "category"


def test_write_result_of_a_backed_anndata_keeps_its_edited_obs(tmp_path):
    """Defect: the text of a backed AnnData's .raw.var was written as strings, not as the
    categoricals an AnnData in memory writes. Its .obs edited in memory was left as it was
    before too (a guard)."""
    adata = _counts()
    adata.raw = adata.copy()
    adata.write_h5ad(tmp_path / "input.h5ad")
    backed = ad.read_h5ad(tmp_path / "input.h5ad", backed="r")
    backed.obs["batch"] = ["x", "y"] * 30
    backed.raw.var["note"] = ["p", "q"] * 10
    try:
        io.write_result(backed, tmp_path / "result.h5ad")
        assert backed.obs["batch"].dtype == object and backed.raw.var["note"].dtype == object
    finally:
        backed.file.close()
    back = ad.read_h5ad(tmp_path / "result.h5ad")
    assert back.obs["batch"].dtype == "category"
    assert back.raw.var["note"].dtype == "category"
    np.testing.assert_array_equal(back.X.toarray(), adata.X.toarray())


def test_write_nmf_tables_of_a_view_leaves_it_a_view(tmp_path):
    """Guard (passes before): the tables of a view of a fitted AnnData with text in .obs."""
    adata = _counts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter's ConvergenceWarning
        tl.nmf(adata, n_components=2, max_iter=5, random_state=0)
    view = adata[adata.obs["sample"] == "a"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ad.ImplicitModificationWarning)
        io.write_nmf_tables(view, tmp_path)
    assert view.is_view and adata.obs["sample"].dtype == object
    table = pd.read_csv(
        tmp_path / "cell_factors.tsv.gz", sep="\t", index_col=0, dtype={"cell": str}
    )
    assert list(table.index) == list(view.obs_names)


def test_write_result_still_refuses_a_column_of_numbers_and_text(tmp_path):
    """Guard (passes before): a mixed object column is a TypeError naming it, nothing
    written, the caller's column left as it was."""
    adata = _counts()
    adata.obs["mixed"] = [1, "two", 3.0] * 20
    with pytest.raises(TypeError, match="mixed"):
        io.write_result(adata[:30], tmp_path / "result.h5ad")
    assert not (tmp_path / "result.h5ad").exists()
    assert adata.obs["mixed"].tolist()[:3] == [1, "two", 3.0]


def test_cli_fit_writes_text_and_categoricals_with_missing_values(tmp_path):
    """Guard (passes before): `vbsnmf fit` of an .h5ad whose .obs holds text, a categorical
    with NaN and columns named as the fit's .uns and .obsm keys; .var a column named as
    its .varm key."""
    adata = _counts()
    adata.obs["label"] = pd.Categorical(["x", None, "y"] * 20)
    adata.obs["nmf"] = 1.0
    adata.obs["X_nmf"] = "q"
    adata.var["NMF"] = np.arange(20)
    adata.write_h5ad(tmp_path / "input.h5ad")
    command = [sys.executable, "-m", "vbsnmf", "fit", str(tmp_path / "input.h5ad"), "-k", "2"]
    done = subprocess.run(
        [*command, "-o", str(tmp_path / "out"), "--max-iter", "5", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr
    back = ad.read_h5ad(tmp_path / "out" / "result.h5ad")
    assert back.obs["label"].isna().sum() == 20 and list(back.obs["label"].cat.categories) == [
        "x",
        "y",
    ]
    assert back.obs["nmf"].dtype == np.float64 and back.obsm["X_nmf"].shape == (60, 2)
    assert back.var["NMF"].tolist() == list(range(20)) and back.varm["NMF"].shape == (20, 2)
    assert "nmf" in back.uns


@pytest.mark.parametrize(
    ("table", "edit", "said"),
    [
        ("/obs", lambda adata: setattr(adata.obs.index, "name", "sample"), "index name 'sample'"),
        ("/var", lambda adata: adata.var.insert(1, "_index", 1), "column named '_index'"),
        (
            "/obsm/meta",
            lambda adata: adata.obsm.__setitem__(
                "meta", pd.DataFrame([[1, 2]] * 60, index=adata.obs_names, columns=["a", "a"])
            ),
            "column names ['a'] more than once",
        ),
    ],
)
def test_write_result_names_the_table_anndata_refuses(tmp_path, table, edit, said):
    """Defect: anndata's ValueError named the index name or column but not the table."""
    adata = _counts()
    edit(adata)
    with pytest.raises(
        ValueError, match=rf"^the table at {table} has (the |a )?{re.escape(said)}"
    ) as caught:
        io.write_result(adata, tmp_path / "result.h5ad")
    assert "rename" in str(caught.value)
    assert not (tmp_path / "result.h5ad").exists()


def test_write_result_keeps_an_index_name_that_repeats_its_column(tmp_path):
    """Guard (passes before): an index name naming a column of the same values is written."""
    adata = _counts()
    adata.obs["cell"] = adata.obs_names
    adata.obs.index.name = "cell"
    io.write_result(adata, tmp_path / "result.h5ad")
    assert ad.read_h5ad(tmp_path / "result.h5ad").obs_names.tolist() == adata.obs_names.tolist()
