"""A hostile user's fifth pass over the library's scanpy face (`vbsnmf.tl`, `vbsnmf.pl`):
each case says what went wrong before its fix."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import matplotlib
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import pl, tl

matplotlib.use("Agg")

FIT = {"max_iter": 3, "n_threads": 1}


def _fit(adata, k: int = 3, **options) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, k, **{**FIT, **options})


@pytest.fixture(scope="module")
def fitted():
    """200 cells of pbmc_tiny with a K=3 fit under the learned prior."""
    adata = vbsnmf.datasets.pbmc_tiny()[:200].copy()
    _fit(adata)
    return adata


def _layout(adata) -> tuple:
    """What `pl.umap` may add to or change in an AnnData."""
    return (
        adata.obs.copy(),
        sorted(adata.obsm.keys()),
        sorted(adata.obsp.keys()),
        sorted(adata.uns.keys()),
    )


def _assert_unchanged(adata, before: tuple) -> None:
    after = _layout(adata)
    assert after[0].equals(before[0]) and list(after[0].columns) == list(before[0].columns)
    assert after[1:] == before[1:]


# -- 1: tl.nmf refuses on a dask array what it refuses in memory ----------------------------
@pytest.fixture(scope="module")
def client():
    from test_dask import local_client

    with local_client(1, processes=False) as dask_client:
        yield dask_client


def _poisson_counts() -> np.ndarray:
    return np.random.default_rng(0).poisson(2.0, (60, 25)).astype(np.float64)


def _log_normalised(counts):
    return np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)


def _negative_in_third_chunk(counts):
    edited = counts.copy()
    edited[45, 7] = -3.0
    return edited


def _nan_in_second_chunk(counts):
    edited = counts.copy()
    edited[25, 0] = np.nan
    return edited


@pytest.mark.parametrize(
    "edit",
    [_log_normalised, np.zeros_like, _negative_in_third_chunk, _nan_in_second_chunk],
    ids=["log-normalised", "all zeros", "a negative count", "a NaN"],
)
@pytest.mark.parametrize("sparse_chunks", [False, True], ids=["dense chunks", "sparse chunks"])
def test_nmf_refuses_a_dask_x_as_it_refuses_it_in_memory(client, edit, sparse_chunks):
    """A dask X was fitted where the same X in memory was refused: log-normalised values
    with a NonCountWarning only, a matrix of zeros silently. Now the same error, naming the
    layer that holds the counts, and nothing stored."""
    import dask.array as da

    counts = _poisson_counts()
    X = edit(counts)
    with pytest.raises(ValueError) as in_memory:
        _fit(ad.AnnData(X, layers={"counts": counts}))
    lazy = da.from_array(X, chunks=(20, 25))
    if sparse_chunks:
        lazy = lazy.map_blocks(sp.csr_matrix, dtype=X.dtype)
    on_dask = ad.AnnData(lazy, layers={"counts": counts})
    with pytest.raises(type(in_memory.value)) as caught:
        tl.nmf(on_dask, 3, max_iter=3)
    assert str(caught.value) == str(in_memory.value)
    assert "layer='counts'" in str(caught.value) or "no nonzero count" in str(caught.value)
    assert "nmf" not in on_dask.uns and "X_nmf" not in on_dask.obsm


# -- 4: key_added that an .h5ad cannot hold ------------------------------------------------
@pytest.mark.parametrize("key", ["a\x00b", "\x00", "x\udc80"], ids=["NUL", "only NUL", "surrogate"])
@pytest.mark.parametrize("tool", ["nmf", "project", "select_k"])
def test_a_key_added_an_h5ad_cannot_hold_is_refused(fitted, tool, key):
    """A NUL character was accepted; write_h5ad then failed part-way ("VLEN strings do not
    support embedded NULLs"), leaving a partial file (a lone surrogate: UnicodeEncodeError)."""
    adata = fitted[:60].copy()
    before = sorted(adata.uns.keys())
    with pytest.raises(ValueError, match="key_added must be a non-empty string") as caught:
        if tool == "nmf":
            _fit(adata, 2, key_added=key)
        elif tool == "project":
            tl.project(adata, fitted, key_added=key, max_iter=3)
        else:
            tl.select_k(adata, [2, 3], key_added=key, **FIT)
    assert "NUL" in str(caught.value) and repr(key) in str(caught.value)
    assert sorted(adata.uns.keys()) == before


# -- 7: count_split ------------------------------------------------------------------------
COUNTS = np.arange(12).reshape(3, 4)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: tl.count_split(np.ma.masked_array(COUNTS, mask=COUNTS > 5)),
            TypeError,
            "counts is a masked array",
        ),
        (lambda: tl.count_split(COUNTS, random_state=-1), ValueError, "random_state must be"),
        (lambda: tl.count_split(COUNTS, random_state=1.5), TypeError, "random_state must be"),
        (lambda: tl.count_split(COUNTS, random_state="0"), TypeError, "random_state must be"),
        (lambda: tl.count_split(5), ValueError, "counts must be 2-D"),
        (lambda: tl.count_split(np.arange(4)), ValueError, "counts must be 2-D"),
    ],
    ids=[
        "masked array",
        "random_state=-1",
        "random_state=1.5",
        "random_state='0'",
        "scalar",
        "1-D",
    ],
)
def test_count_split_refuses_what_it_cannot_split(call, error, message):
    """A masked array's mask was dropped (its hidden values split as counts); a bad
    random_state gave numpy's messages, a scalar an AttributeError."""
    with pytest.raises(error, match=re.escape(message)):
        call()


# -- 8: pl.umap ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cells, options, error, message",
    [
        (200, {"n_neighbors": 1}, ValueError, "n_neighbors must be >= 2, got 1"),
        (200, {"n_neighbors": 0}, ValueError, "n_neighbors must be >= 2, got 0"),
        (200, {"n_neighbors": 2.5}, TypeError, "n_neighbors must be an integer, got 2.5"),
        (200, {"n_neighbors": True}, TypeError, "n_neighbors must be an integer, got True"),
        (3, {}, ValueError, "adata holds 3 cells; a UMAP needs at least 4"),
        (200, {"color": "no such column"}, KeyError, "no such column"),
    ],
    ids=[
        "n_neighbors=1",
        "n_neighbors=0",
        "n_neighbors=2.5",
        "n_neighbors=True",
        "3 cells",
        "color",
    ],
)
def test_umap_refuses_bad_settings_and_leaves_the_anndata_as_it_was(
    fitted, cells, options, error, message
):
    """n_neighbors was not checked (1: "Maximum allowed size exceeded", 0 and 2.5:
    scikit-learn's InvalidParameterError), 3 cells failed in scipy's eigh, and the AnnData
    had gained .obs['nmf_dominant_factor'] (an unknown color: the graph and the UMAP)."""
    adata = fitted[:cells].copy()
    before = _layout(adata)
    with pytest.raises(error, match=re.escape(message)):
        pl.umap(adata, show=False, **options)
    _assert_unchanged(adata, before)


# -- 9: a damaged .uns record of a fit -----------------------------------------------------
def _pop(*path):
    def edit(record):
        for name in path[:-1]:
            record = record[name]
        record.pop(path[-1])

    return edit


def _set(name, value, inside=None):
    def edit(record):
        (record if inside is None else record[inside])[name] = value

    return edit


def _nmf_warm(adata, reference):
    _fit(adata, 3, warm_start=True)


DAMAGED = [
    (
        "'active' removed, top_genes",
        _pop("active"),
        lambda a, r: tl.top_genes(a),
        KeyError,
        "'active'",
    ),
    (
        "'params' removed, top_genes",
        _pop("params"),
        lambda a, r: tl.top_genes(a),
        KeyError,
        "'params'",
    ),
    (
        "'params' removed, project",
        _pop("params"),
        lambda a, r: tl.project(r[:20].copy(), a, max_iter=3),
        KeyError,
        "'params'",
    ),
    ("'params' removed, warm_start", _pop("params"), _nmf_warm, KeyError, "'params'"),
    (
        "cell_factor_shape removed, project",
        _pop("variational", "cell_factor_shape"),
        lambda a, r: tl.project(r[:20].copy(), a, max_iter=3),
        KeyError,
        "'cell_factor_shape'",
    ),
    (
        "cell_factor_shape of length 2, warm_start",
        _set("cell_factor_shape", np.ones(2), inside="variational"),
        _nmf_warm,
        ValueError,
        "['variational']['cell_factor_shape']",
    ),
    (
        "elbo_trace 'x', pl.elbo",
        _set("elbo_trace", "x"),
        lambda a, r: pl.elbo(a, show=False),
        ValueError,
        "['elbo_trace']",
    ),
    (
        "'active' of length 2, top_genes",
        _set("active", np.array([True, False])),
        lambda a, r: tl.top_genes(a),
        ValueError,
        "['active']",
    ),
    (
        "'usage_key' removed, pl.umap",
        _pop("usage_key"),
        lambda a, r: pl.umap(a, show=False),
        KeyError,
        "'usage_key'",
    ),
    (
        "'params' not a dict, top_genes",
        _set("params", "x"),
        lambda a, r: tl.top_genes(a),
        ValueError,
        "['params']",
    ),
]


@pytest.mark.parametrize(
    "edit, call, error, message", [case[1:] for case in DAMAGED], ids=[case[0] for case in DAMAGED]
)
def test_a_damaged_fit_record_is_named(fitted, edit, call, error, message):
    """Bare KeyErrors ('active', 'params', 'prior_shape'), numpy's broadcast error and
    "could not convert string to float: 'x'"; now the record, the entry and 'fit again'."""
    damaged = fitted.copy()
    edit(damaged.uns["nmf"])
    with pytest.raises(error) as caught:
        call(damaged, fitted)
    text = str(caught.value)
    # tl.project names the reference it reads adata_ref (thirty-third pass)
    named = "adata.uns['nmf']" in text or "adata_ref.uns['nmf']" in text
    assert named and message in text and "fit again" in text, text


# -- 11: tl.nmf's layer, use_raw and an AnnData without cells ------------------------------
@pytest.mark.parametrize(
    "cells, options, error, message",
    [
        (50, {"layer": ["counts"]}, TypeError, "layer must be a string or None, got ['counts']"),
        (50, {"use_raw": "no"}, TypeError, "use_raw must be True or False, got 'no'"),
        (50, {"use_raw": 1}, TypeError, "use_raw must be True or False, got 1"),
        (0, {}, ValueError, "adata.X has 0 sample(s)"),
    ],
    ids=["layer=['counts']", "use_raw='no'", "use_raw=1", "0 cells"],
)
def test_nmf_checks_where_the_counts_are(fitted, cells, options, error, message):
    """layer=['counts'] gave anndata's "unhashable type: 'list'", use_raw='no' was taken as
    True, and 0 cells got the advice to keep the raw counts."""
    adata = fitted[:cells].copy()
    with pytest.raises(error, match=re.escape(message)) as caught:
        _fit(adata, 2, **options)
    assert "raw counts" not in str(caught.value)
