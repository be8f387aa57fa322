"""A ninth hostile pass (2026-12-05), `VBNTF`'s inputs and settings and the scanpy tools'
records: each test here failed on the code before its fix.

Coordinates in the (D, nnz) layout without values were fitted as a tensor of nnz modes;
timedelta64 counts and indices were taken as integers; ``VBNTF``'s ``dtype`` and
``verbose`` went unchecked; ``select_k`` shared one checkpoint among its fits, found a K
too large for the data after fitting the smaller ones and gave numpy's error for a
``tolerance`` beyond floats; ``project`` onto a float32 reference took counts a float32
fit cannot resolve; and the tools' ``.uns`` records could be overwritten by another
tool's ``key_added``.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import tl

TINY_FIT = {"max_iter": 3, "n_threads": 1, "prior": "gamma"}
COORDS = np.array([[0, 0, 0], [1, 2, 1], [2, 1, 0], [1, 1, 1]])


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return function(*args, **kwargs)


def _counts(n_cells: int = 30, n_genes: int = 10, seed: int = 0) -> ad.AnnData:
    """Small Poisson counts as an AnnData."""
    counts = np.random.default_rng(seed).poisson(1.0, (n_cells, n_genes)).astype(np.float32)
    return ad.AnnData(sp.csr_matrix(counts))


# -- VBNTF ---------------------------------------------------------------------------------


def test_transposed_coords_without_values_are_refused():
    """(D, nnz) coordinates without values (``np.nonzero``'s tuple, a pydata sparse array's
    ``.coords``) were fitted silently as D entries of an nnz-mode tensor: the refusal of
    the eighth pass applied with values only."""
    rng = np.random.default_rng(0)
    tensor = (rng.random((6, 5, 4)) < 0.3).astype(int)
    nonzero = np.nonzero(tensor)
    transposed = {
        r"more columns than rows.*pass coords\.T": (nonzero,),
        r"at most 101 modes.*got D=\d+; if its rows are the modes, pass coords\.T": (
            np.nonzero(rng.random((20, 20, 20)) < 0.05),
        ),
        r"shape has 3 modes but coords have \d+ .*pass coords\.T": (nonzero, None, (6, 5, 4)),
        r"at least 2 modes.*pass coords\.T": (np.array([[0], [1], [2]]),),
    }
    for said, args in transposed.items():
        with pytest.raises(ValueError, match=said):
            vbsnmf.VBNTF(2, max_iter=2).fit(*args)
    # fewer entries than modes, told apart by their values or shape, or a single entry
    few = np.array([[0, 1, 0, 2, 1], [1, 0, 2, 0, 0]])
    shape = tuple(few.max(axis=0) + 1)
    with_values = _quiet(vbsnmf.VBNTF(1, max_iter=2, random_state=0).fit, few, np.ones(2))
    with_shape = _quiet(vbsnmf.VBNTF(1, max_iter=2, random_state=0).fit, few, shape=shape)
    assert with_values.shape_ == with_shape.shape_ == shape
    np.testing.assert_array_equal(with_values.elbo_trace_, with_shape.elbo_trace_)
    assert _quiet(vbsnmf.VBNTF(1, max_iter=2).fit, few[:1]).shape_ == (1, 2, 1, 3, 2)
    fitted = _quiet(vbsnmf.VBNTF(2, max_iter=2, random_state=0).fit, np.transpose(nonzero))
    assert fitted.shape_ == tensor.shape
    sparse = pytest.importorskip("sparse")
    with pytest.raises(ValueError, match=r"more columns than rows.*pass coords\.T"):
        vbsnmf.VBNTF(2, max_iter=2).fit(sparse.COO.from_numpy(tensor).coords)


def test_timedelta_values_and_coords_are_refused():
    """timedelta64 is a subtype of np.integer: durations were fitted as counts and as
    indices, while datetime64 was refused."""
    seconds = np.array([3, 1, 4, 1]).astype("timedelta64[s]")
    with pytest.raises(TypeError, match=r"values must be real numbers, got dtype timedelta64"):
        vbsnmf.VBNTF(2, max_iter=2).fit(COORDS, seconds)
    with pytest.raises(TypeError, match=r"coords must be integer indices, got dtype timedelta"):
        vbsnmf.VBNTF(2, max_iter=2).fit(COORDS.astype("timedelta64[D]"))


@pytest.mark.parametrize("dtype", ["garbage", 3])
def test_vbntf_dtype_that_is_no_dtype_is_named(dtype):
    """VBNTF raised numpy's own "data type 'garbage' not understood" where VBNMF names the
    parameter and its two values."""
    with pytest.raises(ValueError, match=r"dtype must be np\.float32 or np\.float64, got"):
        vbsnmf.VBNTF(2, max_iter=2, dtype=dtype).fit(COORDS)


def test_vbntf_verbose_takes_flags_and_levels_not_text():
    """verbose="no" was taken as true and printed the ELBO at every pass (levels as
    scikit-learn takes them, as `VBNMF` does, still work)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(TypeError, match="verbose must be"):
        vbsnmf.VBNTF(2, max_iter=2, verbose="no").fit(COORDS)
    assert printed.getvalue() == ""
    with contextlib.redirect_stdout(printed):
        _quiet(vbsnmf.VBNTF(2, max_iter=2, verbose=0).fit, COORDS)
    assert printed.getvalue() == ""
    with contextlib.redirect_stdout(printed):
        _quiet(vbsnmf.VBNTF(2, max_iter=2, verbose=1).fit, COORDS)
    assert printed.getvalue()


# -- select_k ------------------------------------------------------------------------------


@pytest.mark.parametrize("resume", [False, True])
def test_select_k_refuses_a_checkpoint(tmp_path, resume):
    """Every fit of the grid shared one checkpoint: a resume met another fit's checkpoint
    (CheckpointMismatchError), and without it the file was overwritten fit after fit."""
    path = tmp_path / "ck.npz"
    with pytest.raises(ValueError, match=r"select_k cannot take 'checkpoint'.*one checkpoint"):
        tl.select_k(_counts(), [1, 2], checkpoint=path, resume=resume, **TINY_FIT)
    with pytest.raises(ValueError, match=r"select_k cannot take 'resume'"):
        tl.select_k(_counts(), [1, 2], resume=False, **TINY_FIT)
    assert not path.exists()


def test_select_k_checks_every_k_before_fitting(monkeypatch):
    """A K above min(n_cells, n_genes) was refused by nmf when its turn came, after every
    smaller K had been fitted twice."""

    def no_fit(*args, **kwargs):
        raise AssertionError("a fit ran before the grid was checked")

    monkeypatch.setattr("vbsnmf.tl._select_k.nmf", no_fit)
    with pytest.raises(ValueError, match=r"ks holds 11, 12, above min\(n_cells, n_genes\) = 10"):
        tl.select_k(_counts(), [1, 2, 11, 12], **TINY_FIT)


def test_select_k_tolerance_beyond_floats_is_named():
    """tolerance=10**400 (an int no float holds) gave numpy's "ufunc 'isfinite' not
    supported" TypeError, not naming the parameter."""
    with pytest.raises(ValueError, match="tolerance must be a finite number"):
        tl.select_k(_counts(), [1, 2], tolerance=10**400, **TINY_FIT)


# -- project -------------------------------------------------------------------------------


def test_project_onto_a_float32_reference_refuses_counts_beyond_it():
    """project checked the new counts against float64's limit whatever the reference's
    dtype, and fitted counts above 2**24 in float32 (transform and tl.nmf refuse them)."""
    reference = _counts()
    _quiet(tl.nmf, reference, 2, dtype=np.float32, random_state=0, **TINY_FIT)
    new = np.ones((2, reference.n_vars))
    new[0, 0] = 2**24 + 2
    with pytest.raises(ValueError, match="above 16,777,216, the largest a float32 fit"):
        tl.project(ad.AnnData(sp.csr_matrix(new)), reference)
    new[0, 0] = 2**24  # the largest a float32 fit takes
    projected = tl.project(ad.AnnData(sp.csr_matrix(new)), reference, copy=True)
    assert projected.obsm["X_nmf"].dtype == np.float32


# -- .uns records --------------------------------------------------------------------------


def test_uns_records_are_not_overwritten_by_another_tool():
    """select_k(key_added="nmf_projection") replaced project's record, tl.nmf(key_added=
    "nmf_k_selection") select_k's table, and project(key_added="k") a table under
    "k_projection", silently; only fits were protected."""
    reference = _counts()
    _quiet(tl.nmf, reference, 2, random_state=0, **TINY_FIT)
    new = _counts(10, seed=1)
    tl.project(new, reference)
    _quiet(tl.select_k, new, [1, 2], **TINY_FIT)
    _quiet(tl.select_k, new, [1, 2], key_added="k_projection", **TINY_FIT)
    records = {key: sorted(record) for key, record in new.uns.items()}
    projection, selection = "the record of a projection", "the record of a K selection"
    with pytest.raises(
        ValueError, match=rf"overwrite adata\.uns\['nmf_projection'\], {projection}"
    ):
        tl.select_k(new, [1, 2], key_added="nmf_projection", **TINY_FIT)
    with pytest.raises(
        ValueError, match=rf"overwrite adata\.uns\['nmf_k_selection'\], {selection}"
    ):
        tl.nmf(new, 2, key_added="nmf_k_selection", **TINY_FIT)
    with pytest.raises(
        ValueError, match=rf"overwrite adata_new\.uns\['k_projection'\], {selection}"
    ):
        tl.project(new, reference, key_added="k")
    assert {key: sorted(record) for key, record in new.uns.items()} == records
    assert "X_k" not in new.obsm
    # each tool still replaces its own record
    tl.project(new, reference)
    _quiet(tl.select_k, new, [1], **TINY_FIT)
    assert list(new.uns["nmf_k_selection"]["table"].index) == [1]


def test_vbntf_refuses_a_prior_mean_beyond_its_dtype():
    """As `VBNMF`: a float32 fit under Gamma(1e3, 2e-38) failed with a NaN ELBO blamed on a
    damaged checkpoint, after SQUAREM's steps overflowed."""
    with pytest.raises(ValueError, match="prior mean"):
        vbsnmf.VBNTF(2, prior_shape=1e3, prior_rate=2e-38, dtype=np.float32, accelerate=True).fit(
            COORDS
        )
