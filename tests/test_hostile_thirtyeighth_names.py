"""38th hostile pass (names): odd gene and cell names in tl.project.

Names that print alike but are other strings (NFC "é" against NFD "e" + combining accent,
a name with a space around it) did not match in `vbsnmf.tl.project`, which left those
genes out without a word, or said only "shares no gene names" when all differed so.
"""

from __future__ import annotations

import unicodedata
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import vbsnmf

NFC_CAFE = unicodedata.normalize("NFC", "Café")
NFD_CAFE = unicodedata.normalize("NFD", "Café")
# every kind of odd name at once: non-ASCII, CSV/TSV specials, spaces, empty, numeric,
# very long, names alike after case folding, a scanpy-style "-1" suffix
ODD_GENES = [
    "α-gene",
    "基因",
    NFC_CAFE,
    "a,b",
    "a\tb",
    'q"uote',
    "new\nline",
    "cr\rx",
    " lead",
    "trail ",
    "a/b",
    "",
    "1",
    "01",
    "L" * 10_000,
    "Actb",
    "ACTB",
    "G",
    "G-1",
    "NA",
]
ODD_CELLS = ["cell,1", "cell\t2", "cell\n3", "", "1", "01", "β", " sp ", "NA", "nan"]


def _adata(genes, n_cells=40, seed=0):
    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(rng.poisson(2.0, (n_cells, len(genes))).astype(np.float32))
    cells = ODD_CELLS + [f"c{i}" for i in range(n_cells - len(ODD_CELLS))]
    return ad.AnnData(counts, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes))


@pytest.fixture(scope="module")
def reference():
    adata = _adata(ODD_GENES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(adata, n_components=2, max_iter=5, random_state=0)
    return adata


def test_project_warns_of_genes_differing_only_in_unicode_form(reference):
    genes = [NFD_CAFE if name == NFC_CAFE else name for name in ODD_GENES]
    new = _adata(genes, seed=1)
    with pytest.warns(UserWarning, match="Unicode normalization form") as caught:
        vbsnmf.tl.project(new, reference)
    message = next(str(w.message) for w in caught if "Unicode" in str(w.message))
    # the two names, told apart (they print alike)
    assert ascii(NFC_CAFE) in message and ascii(NFD_CAFE) in message
    assert message.startswith("1 of the reference's genes")
    assert new.uns["nmf_projection"]["n_genes_missing"] == 1


def test_project_warns_of_genes_differing_only_in_surrounding_spaces(reference):
    new = _adata([name.strip() for name in ODD_GENES], seed=1)
    with pytest.warns(UserWarning, match=r"2 of the reference's genes .* surrounding spaces"):
        vbsnmf.tl.project(new, reference)


def test_project_sharing_no_name_but_in_another_unicode_form_says_so():
    reference = _adata([unicodedata.normalize("NFC", f"é{i}") for i in range(12)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(reference, n_components=2, max_iter=3, random_state=0)
    new = _adata([unicodedata.normalize("NFD", f"é{i}") for i in range(12)], seed=1)
    with pytest.raises(ValueError, match=r"shares no gene names .*; 12 of the reference's genes"):
        vbsnmf.tl.project(new, reference)
