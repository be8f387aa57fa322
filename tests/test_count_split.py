"""`vbsnmf.tl.count_split`: the halves are Binomial thinnings that sum to the counts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import tl


# -- count_split ---------------------------------------------------------------------------
def test_count_split_halves_sum_to_the_counts_and_halve_them_in_mean():
    rng = np.random.default_rng(5)
    counts = sp.random(300, 200, density=0.2, format="csr", random_state=6)
    counts.data = rng.integers(1, 60, counts.nnz).astype(np.float64)
    train, test = tl.count_split(counts, random_state=1)
    assert sp.issparse(train) and sp.issparse(test)
    assert (train + test != counts).nnz == 0
    dense_train, dense_test, dense = train.toarray(), test.toarray(), counts.toarray()
    assert dense_train.min() >= 0 and dense_test.min() >= 0
    assert not np.any(dense_train[dense == 0]) and not np.any(dense_test[dense == 0])
    # Binomial(x, 1/2): the mean of train given x is x / 2, its variance x / 4; grouped by x,
    # the group mean lies within 4 standard errors of x / 2.
    for value in (1, 7, 30, 59):
        drawn = dense_train[dense == value]
        assert drawn.size > 100
        assert abs(drawn.mean() - value / 2) < 4 * np.sqrt(value / 4 / drawn.size)
        assert drawn.var() == pytest.approx(value / 4, rel=0.35)
    total = counts.sum()
    assert abs(train.sum() - total / 2) < 4 * np.sqrt(total / 4)
    # Another fraction shifts the mean accordingly; dense input stays dense.
    dense_train, dense_test = tl.count_split(dense, fraction=0.2, random_state=2)
    assert isinstance(dense_train, np.ndarray)
    assert np.array_equal(dense_train + dense_test, dense)
    assert abs(dense_train.sum() - 0.2 * total) < 4 * np.sqrt(total * 0.2 * 0.8)


def test_count_split_is_reproducible_and_refuses_bad_input():
    counts = sp.csr_matrix(np.arange(24).reshape(4, 6))
    first, second = tl.count_split(counts, random_state=3), tl.count_split(counts, random_state=3)
    assert (first[0] != second[0]).nnz == 0
    for fraction in (0, 1, -0.5, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            tl.count_split(counts, fraction=fraction)
    with pytest.raises(TypeError, match="fraction"):
        tl.count_split(counts, fraction="half")
    with pytest.raises(ValueError, match="non-negative"):
        tl.count_split(-counts)
    with pytest.raises(ValueError, match="whole"):
        tl.count_split(counts * 0.5)
