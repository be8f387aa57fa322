"""docs/model.md's names of the code against the code (37th hostile pass, docs' claims).

docs/model.md is the reference for the model and names, in backticks, the functions and
classes that implement each piece. Two of its sentences named `learned_side_kl`, a
function that no longer exists (the KL of a mode's q(v, xi) under the learned prior is
`_model.side_terms` given the mode's q(xi), with `_prior_terms`): a reader looking for it
found nothing. These tests read the page and check its names against the package.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import vbsnmf

ROOT = Path(__file__).resolve().parents[1]
MODEL_MD = (ROOT / "docs" / "model.md").read_text()
# Backticked names of model.md that are not vbsnmf's code: a package of another project.
OUTSIDE = {"lda"}


def _modules() -> list:
    return [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(vbsnmf.__path__, "vbsnmf.")
    ]


def _parameters() -> set[str]:
    """Every parameter name of the estimators and of the tl and pl functions."""
    callables = [vbsnmf.VBNMF, vbsnmf.VBNTF, vbsnmf.NMF, vbsnmf.fit_dask, vbsnmf.fit_svi_dask]
    callables += [getattr(vbsnmf.tl, n) for n in vbsnmf.tl.__all__]
    callables += [getattr(vbsnmf.pl, n) for n in vbsnmf.pl.__all__]
    callables += [vbsnmf.VBNMF.fit, vbsnmf.VBNTF.fit]
    names = set()
    for function in filter(callable, callables):  # tl.SOLVERS is a tuple
        names |= set(inspect.signature(function).parameters)
    return names


def _source_words() -> set[str]:
    words = set()
    for path in (ROOT / "vbsnmf").rglob("*.py"):
        words |= set(re.findall(r"\w+", path.read_text()))
    return words


def test_model_md_names_only_code_that_exists():
    """Every backticked identifier of docs/model.md is an attribute of a vbsnmf module, a
    parameter, an attribute or method of the estimators, a fitted attribute or checkpoint
    prefix the code spells (``n_iter_``, ``kept_``), or a Python builtin."""
    modules = _modules()
    parameters = _parameters()
    words = _source_words()
    names = set(re.findall(r"`([A-Za-z_]\w*)`", MODEL_MD))
    assert len(names) >= 40  # the pattern still finds the page's names
    unknown = [
        name
        for name in sorted(names - OUTSIDE)
        if not (
            any(hasattr(module, name) for module in modules)
            or name in parameters
            or hasattr(vbsnmf.VBNMF, name)
            or hasattr(builtins, name)
            or (name.endswith("_") and name in words)
        )
    ]
    assert not unknown, f"docs/model.md names what the code does not have: {unknown}"


def test_model_md_dotted_names_resolve():
    """Guard: every `_module.name` of docs/model.md is an attribute of that module."""
    dotted = {pair for pair in re.findall(r"`(_\w+)\.(\w+)`", MODEL_MD) if pair[1] != "py"}
    assert len(dotted) >= 15
    for module, name in sorted(dotted):
        assert hasattr(importlib.import_module(f"vbsnmf.{module}"), name), (module, name)


def test_model_md_tensor_engine_list_is_what_the_tensor_calls():
    """The paragraph saying which of the matrix engine's model functions the tensor engine
    uses lists functions of `_model` that `_tensor.py` calls; it listed `learned_side_kl`,
    which is not one (nor exists)."""
    model = importlib.import_module("vbsnmf._model")
    paragraph = MODEL_MD.split("The tensor engine uses the matrix engine's model code", 1)[1]
    paragraph = paragraph.split("\n\n", 1)[0].split("Only the loops over D modes", 1)[0]
    listed = set(re.findall(r"`([a-z_]\w*)`", paragraph))
    assert {"side_terms", "update_side_learned", "learned_start_scale"} <= listed
    tensor_source = (ROOT / "vbsnmf" / "_tensor.py").read_text()
    called = set(re.findall(r"\b_model\.(\w+)", tensor_source))
    assert all(hasattr(model, name) for name in listed), sorted(listed)
    assert listed <= called, sorted(listed - called)


def test_model_md_names_the_learned_tensor_kl_where_it_is_computed():
    """Under the learned prior the tensor's ELBO takes each mode's KL of q(v, xi) from
    `_model.side_terms` (given the mode's q(xi)); model.md said `learned_side_kl`."""
    tensor = importlib.import_module("vbsnmf._tensor")
    assert "_model.side_terms(" in inspect.getsource(tensor.elbo_rest)
    sentence = MODEL_MD.split("The ELBO replaces each mode's Gamma KL by the KL of", 1)[1]
    sentence = sentence.split(". ", 1)[0]
    assert "`side_terms`" in sentence and "learned_side_kl" not in sentence


# -- README: damaged sparse matrices "are refused at every entry point" -------------------
def _damaged_weights():
    import numpy as np
    import scipy.sparse as sp

    counts = sp.csr_matrix(np.random.default_rng(0).poisson(1.0, (40, 20)).astype(float))
    out_of_range = counts.copy()
    out_of_range.indices = out_of_range.indices.copy()
    out_of_range.indices[3] = 50
    decreasing = counts.copy()
    decreasing.indptr = decreasing.indptr.copy()
    decreasing.indptr[5] = decreasing.indptr[7]
    coo = sp.coo_matrix(counts)
    coo.row = coo.row.copy()
    coo.row[0] = 99
    return counts, {"column out of range": out_of_range, "indptr decreases": decreasing, "coo": coo}


def test_readme_says_damaged_sparse_matrices_are_refused_at_every_entry_point():
    """Guard: the README sentence the weights tests below hold the code to."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "non-monotone `indptr`), which crashed the interpreter, are refused at every entry" in (
        readme
    )


def test_nmf_damaged_sparse_weights_are_refused_naming_weights():
    """``NMF(weights=W)`` with a sparse W whose ``indptr`` decreases ended in scipy's C++
    ``RuntimeError: vector::_M_default_append``, and with a column index out of range in
    scipy's ValueError "axis 1 index 50 exceeds matrix dimension 20", naming no weights; X
    with the same damage is refused as corrupt. W is now refused alike, by name."""
    import pytest

    from vbsnmf._validation import CorruptMatrixError

    counts, damaged = _damaged_weights()
    for case, weights in damaged.items():
        with pytest.raises(CorruptMatrixError, match=r"^weights: corrupt (CSR|COO) matrix"):
            vbsnmf.NMF(2, max_iter=2, weights=weights, random_state=0).fit(counts)
        assert issubclass(CorruptMatrixError, ValueError), case


def test_factor_loss_damaged_sparse_weights_are_refused_naming_weights():
    """`vbsnmf.classic.factor_loss(X, W, H, weights=...)` read the same damaged weights
    through scipy (its C++ RuntimeError, or a message naming no weights)."""
    import numpy as np
    import pytest

    from vbsnmf._validation import CorruptMatrixError
    from vbsnmf.classic import factor_loss

    counts, damaged = _damaged_weights()
    rng = np.random.default_rng(1)
    W, H = rng.random((40, 2)), rng.random((2, 20))
    for weights in damaged.values():
        with pytest.raises(CorruptMatrixError, match=r"^weights: corrupt"):
            factor_loss(counts, W, H, weights=weights)
    # sound sparse weights still weigh the loss as before
    assert np.isfinite(factor_loss(counts, W, H, weights=counts))
