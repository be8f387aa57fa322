"""Messages count in the singular when there is one ("1 non-integer value", "1 cell")."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf


@pytest.mark.parametrize(
    ("n_fractional", "said"), [(1, "1 non-integer value "), (2, "2 non-integer values ")]
)
def test_fractional_counts_are_counted_in_the_right_number(n_fractional, said):
    counts = np.ones((6, 5))
    counts[0, :n_fractional] = 0.5
    adata = ad.AnnData(sp.csr_matrix(counts))
    with pytest.raises(ValueError, match=f"adata.X holds {said}"):
        vbsnmf.tl.nmf(adata, n_components=2)


def test_a_umap_of_one_cell_says_one_cell():
    rng = np.random.default_rng(0)
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(2.0, (30, 12)).astype(np.float64)))
    vbsnmf.tl.nmf(adata, n_components=2, max_iter=5)
    with pytest.raises(ValueError, match=r"adata holds 1 cell; a UMAP needs"):
        vbsnmf.pl.umap(adata[:1].copy(), show=False)
