"""Thirty-eighth hostile pass, memory of the tools around the fit: no route may hold more
cells x genes arrays than its result needs (nor anything nonzeros x K).

Peaks are tracemalloc's (numpy's arrays; Numba's compiled code is warmed up first on a few
cells, so compilation is not the route's).

- M1: `VBNMF.inverse_transform` computed the whole product in float64 and then copied it
  into the fitted dtype (``astype`` copies even to the same dtype): its peak was twice its
  float64 result, three times a float32 model's. It now fills the result a block of rows
  at a time: the result and one block.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from traced import traced_peak

import vbsnmf

# the fits run a few passes only: their peaks, not their convergence, are tested
pytestmark = pytest.mark.filterwarnings("ignore:.*stopped (after|at) max_iter")

N_GENES, K = 3000, 3


def _counts(n_cells: int, seed: int = 0, density: float = 0.01) -> sp.csr_matrix:
    """Sparse counts with every cell and gene holding at least one."""
    rng = np.random.default_rng(seed)
    X = sp.random(
        n_cells,
        N_GENES,
        density=density,
        format="csr",
        random_state=rng,
        data_rvs=lambda n: rng.integers(1, 20, n).astype(np.float64),
    )
    band = np.arange(max(n_cells, N_GENES))
    X = X + sp.csr_matrix((np.ones(band.size), (band % n_cells, band % N_GENES)), shape=X.shape)
    return sp.csr_matrix(X)


@pytest.fixture(scope="module", params=[np.float64, np.float32], ids=["float64", "float32"])
def model(request):
    return vbsnmf.VBNMF(K, max_iter=2, random_state=0, dtype=request.param).fit(_counts(200))


# -- M1: VBNMF.inverse_transform ---------------------------------------------------------


def test_inverse_transform_holds_its_result_and_a_block(model):
    """2,000 cells x 3,000 genes: a float64 result of 48 MB, float32 of 24 MB. The peak was
    2x (float64) and 3x (float32) the result; it is now the result and a block (8 MiB).
    The product's range, checked a block at a time now, is still refused by name."""
    factors = np.random.default_rng(1).gamma(1.0, 1.0, size=(2000, K))
    dtype = model.components_.dtype
    expected = (factors @ model.components_.astype(np.float64)).astype(dtype)
    result, peak = traced_peak(model.inverse_transform, factors)
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == dtype
    assert peak < 1.5 * result.nbytes, (peak, result.nbytes)
    factors[1500] = np.finfo(dtype).max
    with pytest.raises(ValueError, match=rf"X @ components_ passes the largest {dtype}"):
        model.inverse_transform(factors)
