"""Hostile pass 21 on the tensor model's input (`vbsnmf.VBNTF`, `check_tensor`): masked
coordinates, whose hidden entries were fitted, and scipy's n-D ``coo_array``, refused as "a
scipy.sparse matrix" with advice for a matrix."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf

COORDS = np.array([[0, 1, 0], [1, 2, 0], [1, 0, 1], [0, 2, 1], [1, 2, 0]])
VALUES = np.array([1.0, 2.0, 3.0, 1.0, 4.0])
SHAPE = (2, 3, 3)


def _fit(*args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return vbsnmf.VBNTF(2, random_state=0, max_iter=5, n_threads=1).fit(*args)


def test_masked_coordinates_are_refused():
    """np.asarray dropped the mask of a masked coordinate array and the masked entries were
    fitted as counts (masked values were refused; masked coordinates were not)."""
    coords = np.ma.masked_array(COORDS, mask=np.zeros_like(COORDS, dtype=bool))
    coords[2] = np.ma.masked
    with pytest.raises(TypeError, match="coords is a masked array"):
        _fit(coords, VALUES, SHAPE)


def test_a_scipy_nd_coo_array_is_fitted_as_its_entries():
    """scipy 1.15 and later hold an n-D tensor in ``coo_array``: it was refused as "a
    scipy.sparse matrix" with the advice to fit "the matrix" with VBNMF. Its repeated
    coordinates are summed, its explicit zeros dropped and its shape kept, as for the
    coordinates, values and shape it holds."""
    if not hasattr(sp.coo_array((np.ones(1), (np.zeros(1, int),) * 3), shape=(1, 1, 1)), "coords"):
        pytest.skip("this scipy has no n-D coo_array")
    values = VALUES.copy()
    values[0] = 0.0  # an explicit zero
    tensor = sp.coo_array((values, tuple(COORDS.T)), shape=SHAPE)
    fitted = _fit(tensor)
    expected = _fit(COORDS, values, SHAPE)
    assert fitted.shape_ == SHAPE
    np.testing.assert_array_equal(fitted.elbo_trace_, expected.elbo_trace_)
    for mine, theirs in zip(fitted.factors_, expected.factors_):
        np.testing.assert_array_equal(mine, theirs)


def test_a_scipy_nd_coo_array_is_checked_as_coordinates_and_values():
    """Its values are checked as counts, its dimensions as modes, and it carries its own
    values and shape, as a pydata sparse array does."""
    negative = sp.coo_array((-VALUES, tuple(COORDS.T)), shape=SHAPE)
    with pytest.raises(ValueError, match=r"5 negative values at \(0, 1, 0\)"):
        _fit(negative)
    with pytest.raises(TypeError, match="values and shape go with a coordinate array"):
        _fit(sp.coo_array((VALUES, tuple(COORDS.T)), shape=SHAPE), None, SHAPE)
    with pytest.raises(ValueError, match="at least 2 modes"):
        _fit(sp.coo_array(np.array([0.0, 1.0, 2.0])))


def test_a_scipy_matrix_is_still_refused_with_how_to_give_it():
    """Passes before the fix too: a 2-D scipy matrix is a cells x genes matrix (VBNMF's)."""
    with pytest.raises(TypeError, match=r"scipy\.sparse matrix.*VBNMF"):
        _fit(sp.coo_array(np.eye(3)))


@pytest.mark.parametrize("kind", ["pydata", "scipy"])
def test_sparse_values_are_refused_by_name(kind):
    """A sparse vector of values: pydata's own refusal to densify (a bare RuntimeError)
    came through, and a scipy one was called values "of dtype object"."""
    import sparse

    dense = VALUES.copy()
    values = sparse.COO.from_numpy(dense) if kind == "pydata" else sp.coo_array(dense)
    with pytest.raises(TypeError, match=r"values must be a dense array.*got a sparse array"):
        _fit(COORDS, values, SHAPE)
