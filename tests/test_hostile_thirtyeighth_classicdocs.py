"""The 38th pass: what `vbsnmf.classic.NMF`'s ``loss`` docstring says of sparse X. Each
step visits the stored entries only, except under the AB losses with
``alpha + beta - 1`` outside {0, 1}, which sum over every entry
(`_kernels.classic_dense_power_pass`). Counted by wrapping that kernel."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import _kernels
from vbsnmf.classic import NMF


@pytest.fixture(scope="module")
def counts():
    X = sp.random(60, 40, density=0.2, random_state=0, format="csr")
    X.data = np.ceil(X.data * 5)
    return X


@pytest.fixture
def dense_passes(monkeypatch):
    calls = []
    kernel = _kernels.classic_dense_power_pass

    def counted(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(_kernels, "classic_dense_power_pass", counted)
    return calls


@pytest.mark.parametrize(
    ("loss", "params", "over_every_entry"),
    [
        ("kl", {}, False),
        ("frobenius", {}, False),
        ("poisson", {}, False),
        ("hellinger", {}, False),
        ("pearson", {}, False),
        ("alpha", {"alpha": 2.0}, False),
        ("ab", {"alpha": 0.5, "beta": 0.5}, False),  # alpha + beta - 1 = 0
        ("beta", {"beta": 0.5}, True),
        ("beta", {"beta": 2.0}, True),
        ("ab", {"alpha": 1.0, "beta": 0.5}, True),
    ],
)
def test_sparse_x_sums_over_every_entry_only_where_the_docstring_says(
    counts, dense_passes, loss, params, over_every_entry
):
    NMF(n_components=3, loss=loss, solver="mu", max_iter=3, random_state=0, **params).fit(counts)
    assert bool(dense_passes) is over_every_entry


def test_the_docstring_names_the_exception():
    doc = " ".join(NMF.__doc__.split())
    assert "alpha + beta - 1`` outside {0, 1}" in doc
    assert "O(n m K) time (not memory)" in doc
