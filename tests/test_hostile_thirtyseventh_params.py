"""37th hostile pass, parameter types: numbers of every kind given to the classical
estimator, its losses and the score-matching objective.

`vbsnmf.VBNMF` checks ``tol`` with `_validation.check_tolerance`, which takes an int beyond
int64 (``2**70``: a finite number) and names one beyond floats (``10**400``).
`vbsnmf.classic.NMF` checked ``tol`` and ``epsilon`` with ``np.isfinite``, and the losses
``alpha`` and ``beta`` likewise: both failed with numpy's "ufunc 'isfinite' not supported
for the input types", naming no parameter. `classic.score_matching_objective` took any
``alpha`` and ``beta``: text failed in numpy's power, True was 1, NaN gave inf.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf.classic import NMF, losses, score_matching_objective


def _counts(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix(rng.poisson(1.5, (40, 20)).astype(np.float64))


@pytest.mark.parametrize("name", ["tol", "epsilon"])
def test_classic_nmf_names_a_number_beyond_floats(name):
    """``NMF(tol=10**400)`` (also ``epsilon``) failed with numpy's TypeError naming
    nothing; now the ValueError VBNMF gives, naming the parameter."""
    model = NMF(2, max_iter=3, random_state=0, **{name: 10**400})
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        model.fit(_counts())


def test_classic_nmf_takes_a_large_integer_tol_as_vbnmf_does():
    """``tol=2**70`` is a finite number, which VBNMF takes: NMF failed in np.isfinite; now
    it fits, stopping at its first check as any tol above every relative change does."""
    X = _counts()
    large = NMF(2, max_iter=20, tol=2**70, random_state=0).fit(X)
    as_float = NMF(2, max_iter=20, tol=float(2**70), random_state=0).fit(X)
    assert large.n_iter_ == as_float.n_iter_ < 20
    np.testing.assert_array_equal(large.components_, as_float.components_)


def test_tl_nmf_with_a_classical_solver_names_tol_beyond_floats():
    """`tl.nmf` passes ``tol`` to `classic.NMF`: the same numpy TypeError, now named."""
    adata = ad.AnnData(_counts())
    with pytest.raises(ValueError, match="tol must be a finite number >= 0"):
        vbsnmf.tl.nmf(adata, 2, solver="mu", max_iter=3, tol=10**400)
    assert "nmf" not in adata.uns


@pytest.mark.parametrize("loss, name", [("beta", "beta"), ("alpha", "alpha")])
def test_a_loss_parameter_beyond_floats_is_named(loss, name):
    """``NMF(loss="beta", beta=10**400)`` (and the losses' functions) failed with numpy's
    TypeError from np.isfinite; now a ValueError naming the parameter."""
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        losses.resolve_loss(loss, **{name: 10**400})
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        NMF(2, loss=loss, max_iter=3, random_state=0, **{name: 10**400}).fit(_counts())


def test_a_large_integer_loss_parameter_is_a_number():
    """``beta=2**70`` is finite: taken as the float it is, not refused by numpy."""
    spec = losses.resolve_loss("beta", beta=2**70)
    assert spec.beta == float(2**70)


@pytest.mark.parametrize(
    "alpha, beta, error, name",
    [
        ("0.5", 0.0, TypeError, "alpha"),
        (True, 0.0, TypeError, "alpha"),
        (1.0, None, TypeError, "beta"),
        (np.nan, 0.0, ValueError, "alpha"),
        (1.0, np.inf, ValueError, "beta"),
    ],
)
def test_score_matching_objective_checks_alpha_and_beta(alpha, beta, error, name):
    """``alpha="0.5"`` failed in numpy's power naming neither parameter, ``alpha=True`` was
    taken as 1, and NaN returned inf, the value of a real pair whose J is past the
    floats; now each names the parameter, as the losses do."""
    p = np.array([1.0, 2.0, 3.0])
    with pytest.raises(error, match=name):
        score_matching_objective(p, p, alpha, beta)


def test_score_matching_objective_takes_numpy_scalars_as_floats():
    """Guard: numpy scalars of either width give the Python floats' value."""
    p, q = np.array([1.0, 2.0, 5.0]), np.array([1.5, 2.0, 4.0])
    expected = score_matching_objective(p, q, 0.5, 1.0)
    assert score_matching_objective(p, q, np.float32(0.5), np.int64(1)) == expected


# ---- enumerated options given as numpy arrays ------------------------------------------


@pytest.mark.parametrize(
    "name, value",
    [
        ("prior", np.array(["gamma"])),
        ("solver", np.array(["batch"])),
        ("svi_form", np.array(["cells"])),
        ("prior", np.array(["gamma", "gamma"])),
        ("solver", np.array(["batch", "svi"])),
    ],
)
def test_vbnmf_refuses_an_array_for_an_option(name, value):
    """``VBNMF(prior=np.array(["gamma"]))`` equalled "gamma" and was fitted; an array of two
    raised numpy's "truth value of an array ... is ambiguous", naming no parameter. Now
    the ValueError a wrong string gets, naming it."""
    with pytest.raises(ValueError, match=f"{name} must be one of"):
        vbsnmf.VBNMF(2, max_iter=2, random_state=0, **{name: value}).fit(_counts())


@pytest.mark.parametrize("name", ["prior", "solver", "svi_form"])
def test_vbntf_refuses_an_array_for_an_option(name):
    """The same in `VBNTF`: the array's option was fitted."""
    option = {"prior": "gamma", "solver": "batch", "svi_form": "slices"}[name]
    coords = np.array([[0, 0, 0], [1, 1, 1], [2, 0, 1]])
    model = vbsnmf.VBNTF(2, max_iter=2, random_state=0, **{name: np.array([option])})
    with pytest.raises(ValueError, match=name):
        model.fit(coords, np.array([1.0, 2.0, 3.0]), (3, 2, 2))


def test_tl_nmf_refuses_an_array_prior_before_it_records_none():
    """`tl.nmf(adata, prior=np.array(["gamma"]))` fitted the fixed prior and recorded no
    ``prior`` in ``.uns['nmf']['params']`` (an array is not stored), so the record read as
    the default learned prior's fit; now refused, nothing stored."""
    adata = ad.AnnData(_counts())
    with pytest.raises(ValueError, match="prior must be one of"):
        vbsnmf.tl.nmf(adata, 2, max_iter=2, prior=np.array(["gamma"]))
    assert "nmf" not in adata.uns and "X_nmf" not in adata.obsm


@pytest.mark.parametrize("value", [np.array(["loading"]), np.array(["loading", "score"])])
def test_top_genes_refuses_an_array_sort_by(value):
    """``tl.top_genes(sort_by=np.array(["loading"]))`` passed the check (an array of two:
    numpy's "ambiguous"); now the ValueError a wrong name gets, before anything is read."""
    with pytest.raises(ValueError, match="sort_by must be"):
        vbsnmf.tl.top_genes(ad.AnnData(_counts()), sort_by=value)


@pytest.mark.filterwarnings("ignore:VB stopped")
@pytest.mark.parametrize(
    "params",
    [
        {"prior": np.str_("gamma")},
        {"solver": np.str_("batch"), "svi_form": np.str_("cells")},
        {"n_components": np.int64(2), "max_iter": np.int32(3), "tol": np.float32(1e-4)},
    ],
)
def test_vbnmf_numpy_scalars_fit_as_python_values(params):
    """Guard: numpy strings and numbers are the Python values they hold, bit for bit."""
    X = _counts()
    python = {name: value.item() for name, value in params.items()}
    base = {"n_components": 2, "max_iter": 3, "random_state": 0}
    first = vbsnmf.VBNMF(**{**base, **params}).fit(X)
    second = vbsnmf.VBNMF(**{**base, **python}).fit(X)
    np.testing.assert_array_equal(first.elbo_trace_, second.elbo_trace_)


@pytest.mark.parametrize("value", [np.array(["batch"]), np.array(["batch", "svi"])])
def test_select_k_refuses_an_array_solver_by_name(value):
    """``tl.select_k(solver=np.array(["batch", "svi"]))`` raised numpy's "truth value of an
    array ... is ambiguous", and an array of one option ran the grid with it; now
    select_k's own message, naming the solvers it takes, before any work."""
    with pytest.raises(ValueError, match="select_k needs a variational solver"):
        vbsnmf.tl.select_k(ad.AnnData(_counts()), ks=[2], solver=value, max_iter=2)


def test_tl_nmf_documents_the_classical_solvers_seed_range():
    """`tl.nmf` documented ``random_state`` as any non-negative integer, but a classical
    solver refuses seeds from 2**32 on (scikit-learn's); the docstring now says so, and
    the refusal names the parameter and its range."""
    doc = " ".join(vbsnmf.tl.nmf.__doc__.split())
    assert "for a classical solver below 2**32" in doc
    with pytest.raises(ValueError, match=r"random_state must be an integer in \[0, 2\*\*32 - 1\]"):
        vbsnmf.tl.nmf(ad.AnnData(_counts()), 2, solver="mu", max_iter=2, random_state=2**32)
