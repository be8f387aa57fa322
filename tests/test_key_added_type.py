"""A ``key_added`` of another type than a string is a TypeError, as ``key`` is."""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import tl


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    adata = anndata.AnnData(sp.csr_matrix(rng.poisson(1.0, (40, 25)).astype(np.float64)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 2, max_iter=3, random_state=0)
    return adata


@pytest.mark.parametrize("key", [3, b"nmf", ("nmf",), 2.5])
@pytest.mark.parametrize("tool", ["nmf", "project", "select_k"])
def test_a_key_added_not_a_string_is_a_type_error_writing_nothing(fitted, tool, key):
    """It was a ValueError ("must be a non-empty string"), where `fit_info`'s ``key=3``
    and scikit-learn's parameters of the wrong type are TypeErrors."""
    adata = fitted.copy()
    before = (sorted(adata.uns), sorted(adata.obsm), sorted(adata.varm))
    with pytest.raises(TypeError, match=f"key_added must be a string.*got {type(key).__name__}"):
        if tool == "nmf":
            tl.nmf(adata, 2, max_iter=2, key_added=key)
        elif tool == "project":
            tl.project(adata, fitted, key_added=key, max_iter=2)
        else:
            tl.select_k(adata, [2], key_added=key, max_iter=2)
    assert (sorted(adata.uns), sorted(adata.obsm), sorted(adata.varm)) == before


def test_none_is_still_the_default_keys_of_nmf_and_project(fitted):
    """A guard: None is `tl.nmf`'s and `tl.project`'s default, not a wrong type."""
    projected, refitted = anndata.AnnData(fitted.X.copy()), anndata.AnnData(fitted.X.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.project(projected, fitted, key_added=None, max_iter=2)
        tl.nmf(refitted, 2, max_iter=2, key_added=None, random_state=0)
    assert "X_nmf" in projected.obsm and "nmf_projection" in projected.uns
    assert "X_nmf" in refitted.obsm and "nmf" in refitted.uns
