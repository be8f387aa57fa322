"""The fortieth pass over what a tool leaves of the user's backed AnnData (read with
``anndata.read_h5ad(path, backed="r")`` or ``"r+"``): the object and its file must stay
usable after the call. Defect, each test of it failing on the code before its fix:

- `tl.nmf(..., copy=True)` and `tl.project(..., copy=True)` of a backed AnnData, or of a
  view of one, read it into memory with anndata's ``to_memory``, which closes the user's
  file: ``adata.file.is_open`` was False afterwards, and an X taken before the call
  (``X = adata.X``) raised h5py's bare RuntimeError ("Can't synchronously determine if
  attribute exists by name") at its next read. The copy is now read through the user's
  own handle, left open (a file the user had closed is closed again), with the numbers of
  the same counts in memory, and an ``"r+"`` file is not written to.
- The AnnData those calls returned shared the user's arrays (anndata's ``to_memory``
  copies nothing already in memory): for a backed AnnData, editing the copy's ``.obsm``,
  ``.varm`` or ``.layers`` in place edited the user's; for a view of one, the copy's were
  views of the backed parent, and any such edit raised anndata's ValueError "To copy an
  AnnData object in backed mode, pass a filename". The copy's elements are now its own.

Guards (pass on the code before too): the advice of `to_memory_advice` (and of the refusal
that quotes it) after such a ``copy=True`` call still works when followed; a file without X
(the counts in a layer), which anndata's ``to_memory`` never read, stays open; a file the
user had closed stays closed.
"""

from __future__ import annotations

import functools
import hashlib
import re
import warnings

import anndata
import numpy as np
import pytest
from simulated import poisson_gamma_adata

from vbsnmf import tl
from vbsnmf.io._stored import to_memory_advice

N_CELLS, N_GENES, K = 30, 12, 2
FIT = {"random_state": 0, "max_iter": 8, "n_threads": 1}
VIEW = (slice(3, 25), slice(None))


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@functools.cache
def _fitted_once(with_x: bool) -> anndata.AnnData:
    """Counts with a fit; without X, the counts in ``layers['counts']``."""
    counts = poisson_gamma_adata(n_cells=N_CELLS, n_genes=N_GENES, k=K)
    counts.obs["group"] = np.tile(["a", "b", "c"], N_CELLS // 3)
    if not with_x:
        counts = anndata.AnnData(obs=counts.obs, var=counts.var, layers={"counts": counts.X})
    _quiet(tl.nmf, counts, K, **FIT, **_counts(with_x))
    return counts


def _counts(with_x: bool) -> dict:
    return {} if with_x else {"layer": "counts"}


def _stored(tmp_path, with_x: bool):
    """(path, the same AnnData in memory) of a fitted AnnData written to a file."""
    adata = _fitted_once(with_x).copy()
    path = tmp_path / "fitted.h5ad"
    adata.write_h5ad(path)
    return path, adata


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _nmf_copy(adata, reference, counts):
    return _quiet(tl.nmf, adata, K, copy=True, key_added="again", **FIT, **counts).obsm["X_again"]


def _project_copy(adata, reference, counts):
    return _quiet(tl.project, adata, reference, copy=True, key_added="proj", **counts).obsm[
        "X_proj"
    ]


def _as_dense(matrix) -> np.ndarray:
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)


@pytest.mark.parametrize("tool", [_nmf_copy, _project_copy], ids=["nmf", "project"])
@pytest.mark.parametrize("mode", ["r", "r+"])
@pytest.mark.parametrize("whole", [True, False], ids=["whole", "view"])
def test_a_copy_leaves_the_users_backed_file_open_and_readable(tmp_path, tool, mode, whole):
    path, adata = _stored(tmp_path, with_x=True)
    before = _digest(path)
    backed = anndata.read_h5ad(path, backed=mode)
    taken_x = backed.X  # anndata's sparse dataset on the open file
    source, expected_source = (backed, adata) if whole else (backed[VIEW], adata[VIEW])
    result = tool(source, adata, {})
    # the same numbers as the same counts in memory
    np.testing.assert_array_equal(result, tool(expected_source.copy(), adata, {}))
    # the user's object as it was: backed, its file open in its mode, X readable, an X
    # taken before the call too
    assert backed.isbacked and backed.file.is_open
    assert backed.file["X"].file.mode == mode
    rows = _as_dense(adata.X[:2])
    np.testing.assert_array_equal(_as_dense(taken_x[0:2]), rows)
    np.testing.assert_array_equal(_as_dense(backed.X[0:2]), rows)
    if not whole:
        np.testing.assert_array_equal(_as_dense(source.X[0:2]), _as_dense(adata[VIEW].X[:2]))
    assert "again" not in backed.uns and "X_proj" not in backed.obsm
    backed.file.close()
    assert _digest(path) == before  # not written to, "r+" neither


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_a_copy_of_a_file_without_x_leaves_it_open(tmp_path, mode):
    path, adata = _stored(tmp_path, with_x=False)
    backed = anndata.read_h5ad(path, backed=mode)
    result = _nmf_copy(backed[VIEW], adata, {"layer": "counts"})
    expected = _nmf_copy(adata[VIEW].copy(), adata, {"layer": "counts"})
    np.testing.assert_array_equal(result, expected)
    assert backed.isbacked and backed.file.is_open and "layers" in backed.file
    backed.file.close()


def test_a_file_the_user_closed_stays_closed(tmp_path):
    path, adata = _stored(tmp_path, with_x=True)
    backed = anndata.read_h5ad(path, backed="r+")
    backed.file.close()
    np.testing.assert_array_equal(_nmf_copy(backed, adata, {}), _nmf_copy(adata.copy(), adata, {}))
    assert not backed.file.is_open
    # anndata reopens it in the user's mode at the next read of X, as before
    np.testing.assert_array_equal(_as_dense(backed.X[0:2]), _as_dense(adata.X[:2]))
    assert backed.file["X"].file.mode == "r+"
    backed.file.close()


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "view"])
def test_the_copy_is_its_own(tmp_path, whole):
    path, adata = _stored(tmp_path, with_x=True)
    adata.layers["counts"] = adata.X.copy()
    adata.write_h5ad(path)
    backed = anndata.read_h5ad(path, backed="r")
    source, expected = (backed, adata) if whole else (backed[VIEW], adata[VIEW])
    copied = _quiet(tl.nmf, source, K, copy=True, key_added="again", **FIT)
    loading = next(iter(copied.varm))
    # edits of the copy, as a user makes them
    copied.obs["group"] = "edited"
    copied.uns["nmf"]["params"]["solver"] = "edited"
    copied.obsm["X_nmf_usage"][:] = -1
    copied.varm[loading][:] = -1
    copied.layers["counts"][0, 0] = -1
    # none of them reached the user's backed AnnData
    assert (source.obs["group"] == expected.obs["group"]).all()
    assert source.uns["nmf"]["params"]["solver"] == adata.uns["nmf"]["params"]["solver"]
    np.testing.assert_array_equal(source.obsm["X_nmf_usage"], expected.obsm["X_nmf_usage"])
    np.testing.assert_array_equal(source.varm[loading], expected.varm[loading])
    np.testing.assert_array_equal(
        _as_dense(source.layers["counts"]), _as_dense(expected.layers["counts"])
    )
    backed.file.close()


def _followed(advice: str, adata) -> anndata.AnnData:
    """What ``advice`` (from `to_memory_advice`) says to do with ``adata``, done."""
    if re.search(r"call \.to_memory\(\) on (the view|adata) first", advice):
        return adata.to_memory()
    expression = re.search(
        r"(anndata\.read_h5ad\(.*?\)(\[adata\.obs_names, adata\.var_names\])?)", advice
    )
    assert expression, advice
    return eval(expression.group(1), {"anndata": anndata, "adata": adata})


@pytest.mark.parametrize("mode", ["r", "r+"])
@pytest.mark.parametrize("with_x", [True, False], ids=["X", "no_X"])
@pytest.mark.parametrize("whole", [True, False], ids=["whole", "view"])
def test_the_advice_after_a_copy_works(tmp_path, mode, with_x, whole):
    path, adata = _stored(tmp_path, with_x)
    counts = _counts(with_x)
    backed = anndata.read_h5ad(path, backed=mode)
    source, expected = (backed, adata) if whole else (backed[VIEW], adata[VIEW])
    _nmf_copy(source, adata, counts)  # a copy=True call first, on the same object
    advice = to_memory_advice(source)
    if not whole:  # the refusal that quotes it, too
        with pytest.raises(ValueError, match="view of a backed AnnData") as refused:
            _quiet(tl.nmf, source, K, **FIT, **counts)
        assert advice in str(refused.value)
    followed = _followed(advice, source)
    assert not followed.isbacked
    np.testing.assert_array_equal(
        _nmf_copy(followed, adata, counts), _nmf_copy(expected.copy(), adata, counts)
    )
    backed.file.close()
