"""The thirty-ninth pass over AnnData read ``backed="r"`` through every public tool, with
the counts in X, only in a layer (no X) or in ``.raw``. Defects, each test failing on the
code before its fix:

- A view of a backed AnnData whose file holds no X (``adata[:40]``) refused by
  `tl.select_k`, `tl.nmf` (without ``copy``), `pl.umap` and `pl.top_genes(dendrogram=True)`
  said "call .to_memory() on the view first", which raised anndata's bare KeyError (h5py's
  "Unable to synchronously open object (object 'X' doesn't exist)"): the message now names
  what works, ``anndata.read_h5ad('<file>')[adata.obs_names, adata.var_names]``, and the
  tests follow it. `vbsnmf.io.write_result` of such a view gave the same advice; it now
  gives the working one.
- `pl.top_genes(..., dendrogram=True)` of an AnnData without X raised pandas' bare
  ValueError "Length mismatch" (in memory) or that bare KeyError (backed) from scanpy's
  dendrogram, which reads X: it is now a `ValueError` saying to compute the dendrogram
  from the fit's usages first (``sc.tl.dendrogram(adata, 'group', use_rep='X_nmf_usage')``,
  after reading a backed AnnData into memory as above), or drop dendrogram.

Guards (pass on the code before too): the advice for a view of a file with X
(``.to_memory()``) works, and no tool changes the bytes or the time of a file read with
``backed="r"``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
import warnings
from pathlib import Path

import anndata
import matplotlib
import numpy as np
import pytest
import scanpy as sc
from simulated import poisson_gamma_adata

import vbsnmf
from vbsnmf import pl, tl

matplotlib.use("Agg")

N_CELLS, N_GENES, K = 60, 24, 3
FIT = {"random_state": 0, "max_iter": 30, "n_threads": 1}
SELECT = {"ks": [2], "max_iter": 10, "n_threads": 1, "key_added": "sk"}

_counts = functools.partial(poisson_gamma_adata, n_cells=N_CELLS, n_genes=N_GENES, k=K)


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _fitted(with_x: bool) -> anndata.AnnData:
    return _fitted_once(with_x).copy()


@functools.cache
def _fitted_once(with_x: bool) -> anndata.AnnData:
    """Counts with a fit and a group column; without X, the counts in ``layers['counts']``."""
    counts = _counts()
    counts.obs["group"] = np.tile(["a", "b", "c"], N_CELLS // 3)
    counts.obs["group"] = counts.obs["group"].astype("category")
    if with_x:
        _quiet(tl.nmf, counts, K, **FIT)
        return counts
    layered = anndata.AnnData(obs=counts.obs, var=counts.var, layers={"counts": counts.X})
    _quiet(tl.nmf, layered, K, layer="counts", **FIT)
    return layered


def _state(path) -> tuple:
    return os.stat(path).st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(params=[False, True], ids=["no_X", "X"])
def stored(request, tmp_path):
    return _stored(request.param, tmp_path)


@pytest.fixture
def stored_without_x(tmp_path):
    return _stored(False, tmp_path)


def _stored(with_x, tmp_path):
    """(path, in-memory AnnData, counts keywords) of a fitted AnnData written to a file."""
    adata = _fitted(with_x)
    path = tmp_path / "fitted.h5ad"
    adata.write_h5ad(path)
    return path, adata, ({} if with_x else {"layer": "counts"})


def _select_k(adata, counts):
    return _quiet(tl.select_k, adata, **SELECT, **counts)


def _nmf(adata, counts):
    _quiet(tl.nmf, adata, K, key_added="again", **FIT, **counts)
    return adata.obsm["X_again"]


def _write_result(adata, counts):
    with tempfile.TemporaryDirectory() as folder:
        vbsnmf.io.write_result(adata, Path(folder) / "result.h5ad")
        return anndata.read_h5ad(Path(folder) / "result.h5ad").obsm["X_nmf"]


def _umap(adata, counts):
    _quiet(pl.umap, adata, n_neighbors=5, show=False)
    return adata.obsm["X_umap"]


def _dendrogram(adata, counts):
    _quiet(pl.top_genes, adata, "group", dendrogram=True, show=False)
    matplotlib.pyplot.close("all")
    return adata.uns["dendrogram_group"]["linkage"]


def _followed(message: str, adata) -> anndata.AnnData:
    """What the message says to do with ``adata``, done."""
    if ".to_memory() on the view first" in message:  # a file with X
        return adata.to_memory()
    expression = re.search(
        r"(anndata\.read_h5ad\(.*?\)(\[adata\.obs_names, adata\.var_names\])?)", message
    )
    assert expression, message
    return eval(expression.group(1), {"anndata": anndata, "adata": adata})


@pytest.mark.parametrize("tool", [_select_k, _nmf, _umap, _write_result])
@pytest.mark.parametrize(
    "view", [slice(0, 40), (slice(None), slice(0, 20))], ids=["cells", "genes"]
)
def test_the_advice_for_a_backed_view_without_x_works(stored_without_x, tool, view):
    _check_advice_works(stored_without_x, tool, view)


def test_the_advice_for_a_backed_view_with_x_works(tmp_path):
    _check_advice_works(_stored(True, tmp_path), _select_k, slice(0, 40))


def _check_advice_works(stored, tool, view):
    path, adata, counts = stored
    before = _state(path)
    backed = anndata.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match="view of a backed AnnData") as refused:
        tool(backed[view], counts)
    # follow the advice: the tool runs, with the numbers of the same view in memory
    result = tool(_followed(str(refused.value), backed[view]), counts)
    expected = tool(adata[view].copy(), counts)
    if isinstance(result, np.ndarray):
        np.testing.assert_array_equal(result, expected)
    else:
        assert result.equals(expected)
    backed.file.close()
    assert _state(path) == before


@pytest.mark.parametrize("where", ["memory", "backed", "backed_view"])
def test_a_dendrogram_without_x_is_refused_with_advice_that_works(tmp_path, where):
    path, adata, _ = _stored(False, tmp_path)
    before = _state(path)
    backed = anndata.read_h5ad(path, backed="r")
    source = {"memory": adata, "backed": backed, "backed_view": backed[:45]}[where]
    with pytest.raises(ValueError, match="dendrogram") as refused:
        _dendrogram(source, {})
    assert "dendrogram_group" not in source.uns and not matplotlib.pyplot.get_fignums()
    # the advice followed: read into memory where backed, the dendrogram computed from the
    # usages, then the plot, with the dendrogram of an independent in-memory computation
    message = str(refused.value)
    followed = _followed(message, source) if where != "memory" else source
    compute = re.search(r"(sc\.tl\.dendrogram\(.*?\))", message)
    assert compute, message
    _quiet(eval, compute.group(1), {"sc": sc, "adata": followed})
    expected = adata[:45].copy() if where == "backed_view" else adata.copy()
    sc.tl.dendrogram(expected, "group", use_rep="X_nmf_usage")
    np.testing.assert_array_equal(
        _dendrogram(followed, {}), expected.uns["dendrogram_group"]["linkage"]
    )
    backed.file.close()
    assert _state(path) == before


def test_read_only_tools_leave_a_backed_file_as_it_was(stored):
    path, adata, counts = stored
    before = _state(path)
    backed = anndata.read_h5ad(path, backed="r")
    assert tl.top_genes(backed, 5).equals(tl.top_genes(adata, 5))
    projected = _quiet(tl.project, backed[:40], adata, copy=True, **counts)
    expected = _quiet(tl.project, adata[:40].copy(), adata, copy=True, **counts)
    np.testing.assert_array_equal(projected.obsm["X_nmf"], expected.obsm["X_nmf"])
    _quiet(pl.factors, backed, basis="nmf_usage", show=False)
    _quiet(pl.elbo, backed, show=False)
    _quiet(pl.top_genes, backed[:40], "group", show=False)
    matplotlib.pyplot.close("all")
    assert backed.isbacked and backed.file.is_open
    backed.file.close()
    assert _state(path) == before
