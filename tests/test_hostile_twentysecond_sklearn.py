"""Twenty-second hostile pass, the scikit-learn contract of the estimators: each test here
failed on the code before its fix.

- `NMF` returns float32 factors for float32 X, as scikit-learn's ``NMF``, but its tags
  declared that it preserves float64 only: scikit-learn's
  ``check_transformer_preserve_dtypes`` never checked float32, and tools reading the tag
  were told float32 comes back as float64.
- A `VBNMF` fitted on a DataFrame (gene names) warm-started a fit on an array without a
  word: ``init``'s gene side started X's columns by position, unchecked, even the same
  genes in another order. `transform` warns on such X, as scikit-learn does; now the warm
  start does too.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn.decomposition
from sklearn.utils.estimator_checks import check_transformer_preserve_dtypes
from test_hostile_seventeenth_sklearn import GENES, _counts, pytestmark  # noqa: F401

from vbsnmf import VBNMF
from vbsnmf.classic import NMF


def test_nmf_declares_the_float32_it_returns_and_scikit_learn_checks_it():
    tags = NMF().__sklearn_tags__()
    reference = sklearn.decomposition.NMF().__sklearn_tags__()
    assert tags.transformer_tags.preserves_dtype == reference.transformer_tags.preserves_dtype
    assert "float32" in tags.transformer_tags.preserves_dtype
    # the tag is true: float32 in, float32 out of every method that returns factors
    X = _counts().astype(np.float32)
    model = NMF(2, random_state=0, max_iter=50)
    assert model.fit_transform(X).dtype == np.float32
    assert model.transform(X).dtype == np.float32
    assert model.components_.dtype == np.float32
    # and scikit-learn's own check, which now runs float32 too, passes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_transformer_preserve_dtypes("NMF", NMF(2, random_state=0))


def _named_fit() -> VBNMF:
    frame = pd.DataFrame(_counts(), columns=GENES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return VBNMF(2, random_state=0, max_iter=20, n_threads=1).fit(frame)


def _feature_name_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "feature names" in str(w.message)]


def test_a_warm_start_from_named_genes_warns_on_an_unnamed_x_only():
    model = _named_fit()
    reversed_genes = _counts()[:, ::-1]  # the same genes in another order, unnamed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        VBNMF(2, max_iter=2, n_threads=1).fit(reversed_genes, init=model)
    said = _feature_name_warnings(caught)
    assert len(said) == 1 and "init was fitted with feature names" in said[0]
    # transform says the same of such X (scikit-learn's wording, its warning)
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        model.transform(reversed_genes)
    # quiet where the genes are checked (X named) or there are none to check (init unnamed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        VBNMF(2, max_iter=2, n_threads=1).fit(pd.DataFrame(_counts(), columns=GENES), init=model)
        unnamed = VBNMF(2, random_state=0, max_iter=5, n_threads=1).fit(_counts())
        VBNMF(2, max_iter=2, n_threads=1).fit(_counts(), init=unnamed)
    assert _feature_name_warnings(caught) == []
