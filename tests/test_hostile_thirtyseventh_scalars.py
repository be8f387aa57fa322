"""Scalar parameters found wrong by the thirty-seventh hostile pass (second wave): ints
beyond the float range (``10**400``) given to `vbsnmf.pl.factors`'s ``vmax`` and to the
classical solvers' parameters (numpy's "ufunc 'isfinite' not supported", naming nothing),
booleans taken as numbers, ``verbose=-1`` a TypeError, an empty ``--key`` unquoted in the
CLI's message, and `classic.NMF.inverse_transform` of no rows refused where scikit-learn's
NMF and `VBNMF` give none back. Guards say so in their docstrings."""

from __future__ import annotations

import warnings

import anndata as ad
import matplotlib
from cli_output import without_compile_notice

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF as SklearnNMF

import vbsnmf
import vbsnmf.cli as cli
from vbsnmf import classic, pl
from vbsnmf.classic import losses

BEYOND_FLOATS = 10**400  # an int no float holds


def _counts(n_rows: int = 30, n_cols: int = 12) -> np.ndarray:
    return np.random.default_rng(0).poisson(2.0, (n_rows, n_cols)).astype(np.float64)


def _factors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.random((30, 2)) + 0.1, rng.random((2, 12)) + 0.1


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.mark.parametrize("big", [BEYOND_FLOATS, -BEYOND_FLOATS], ids=["10**400", "-10**400"])
@pytest.mark.parametrize(
    "call",
    [
        lambda big: losses.alpha_divergence(_counts() + 1, _counts() + 1, big),
        lambda big: losses.beta_divergence(_counts() + 1, _counts() + 1, big),
        lambda big: classic.factor_loss(_counts(), *_factors(), loss="alpha", alpha=big),
        lambda big: classic.NMF(2, loss="alpha", alpha=big, max_iter=2).fit(_counts()),
        lambda big: classic.NMF(2, loss="ab", alpha=1.0, beta=big, max_iter=2).fit(_counts()),
        lambda big: classic.score_matching_objective(_counts(), _counts() + 1, big, 0.5),
    ],
    ids=["alpha_divergence", "beta_divergence", "factor_loss", "NMF-alpha", "NMF-beta", "J"],
)
def test_loss_parameters_beyond_floats_are_refused_by_name(call, big):
    """``losses.check_parameter`` of 10**400 raised numpy's "ufunc 'isfinite' not supported
    for the input types" (score matching: Python's "int too large to convert to float")."""
    with pytest.raises(ValueError, match=r"(alpha|beta) must be finite, got one beyond floats"):
        call(big)


@pytest.mark.parametrize("name", ["epsilon", "tol"])
@pytest.mark.parametrize("big", [BEYOND_FLOATS, -BEYOND_FLOATS], ids=["10**400", "-10**400"])
def test_nmf_epsilon_and_tol_beyond_floats_are_refused_by_name(name, big):
    """NMF(epsilon=10**400) and NMF(tol=10**400) failed with numpy's "ufunc 'isfinite'"."""
    with pytest.raises(ValueError, match=rf"{name} must be a finite number >= 0, got one beyond"):
        classic.NMF(2, max_iter=2, **{name: big}).fit(_counts())


def test_nmf_epsilon_and_tol_keep_ints_floats_hold():
    """Guards the normal case (passes before and after): an int within floats is taken."""
    model = _quiet(classic.NMF(2, max_iter=2, epsilon=0, tol=2**70).fit, _counts())
    assert model.components_.shape == (2, 12)


def test_sum_q_power_refuses_a_power_beyond_floats_and_booleans():
    """sum_q_power(W, H, 10**400) raised numpy's "ufunc 'isfinite'"; power=True was taken
    as 1 (the loss parameters refuse booleans)."""
    W, H = _factors()
    with pytest.raises(ValueError, match="power must be finite, got one beyond floats"):
        losses.sum_q_power(W, H, BEYOND_FLOATS)
    with pytest.raises(TypeError, match="power must be a number, got True"):
        losses.sum_q_power(W, H, True)
    with pytest.raises(ValueError, match="power must be a finite number > 0"):
        losses.sum_q_power(W, H, -1.0)
    assert losses.sum_q_power(W, H, 3) == pytest.approx(np.sum((W @ H) ** 3), rel=1e-12)


@pytest.mark.parametrize(
    ("alpha", "beta", "error", "match"),
    [
        (float("nan"), 0.5, ValueError, "alpha must be finite, got nan"),
        (1.0, float("inf"), ValueError, "beta must be finite, got inf"),
        (True, 0.5, TypeError, "alpha must be a number, got True"),
        (1.0, "0.5", TypeError, "beta must be a number"),
    ],
)
def test_score_matching_objective_checks_alpha_and_beta(alpha, beta, error, match):
    """J at alpha=NaN was inf, as where J overflows (no error), True was taken as 1 and
    text failed with Python's "bad operand type for abs()"."""
    with pytest.raises(error, match=match):
        classic.score_matching_objective(_counts(), _counts() + 1, alpha, beta)


def test_choose_alpha_beta_refuses_a_grid_of_booleans():
    """alphas=[True, False] was scored as the grid [1.0, 0.0]."""
    with pytest.raises(TypeError, match="alphas must be a 1-D grid of real numbers"):
        classic.choose_alpha_beta(_counts(), *_factors(), alphas=[True, False], refine=False)


@pytest.fixture
def fitted(plotted_fit):
    return plotted_fit.copy()


def test_factors_vmax_beyond_floats_is_refused_by_name(fitted):
    """pl.factors(vmax=10**400) raised numpy's "ufunc 'isfinite' not supported"; so did
    vmax=2**70, which a float holds, and which now draws. A complex vmax (a numpy number)
    was passed on to scanpy."""
    plt.close("all")
    with pytest.raises(ValueError, match=r"vmax must be positive and finite .*beyond floats"):
        pl.factors(fitted, vmax=BEYOND_FLOATS, show=False)
    with pytest.raises(ValueError, match=r"vmax must be positive and finite .*beyond floats"):
        pl.factors(fitted, vmax=-BEYOND_FLOATS, show=False)
    assert plt.get_fignums() == []
    with pytest.raises(TypeError, match="vmax must be a number or 'pNN'"):
        pl.factors(fitted, vmax=np.complex128(2 + 1j), show=False)
    axes = _quiet(pl.factors, fitted, vmax=2**70, show=False)
    assert len(axes) == int(np.count_nonzero(fitted.uns["nmf"]["active"]))
    plt.close("all")


def test_factors_component_beyond_int64_is_out_of_range(fitted):
    """components=[2**70] was "components must be a list of factor indices or a boolean
    mask", though it is one: its index is out of range, as [5] is."""
    with pytest.raises(ValueError, match=r"distinct factor indices in 0\.\.2, got \[1180"):
        pl.factors(fitted, components=[2**70], show=False)
    with pytest.raises(TypeError, match="a list of factor indices"):
        pl.factors(fitted, components=[True], show=False)
    plt.close("all")


@pytest.mark.parametrize("ncols", [True, 2.0, np.array(2)], ids=["True", "2.0", "0-d"])
def test_factors_ncols_not_an_integer_is_a_type_error(fitted, ncols):
    """ncols=True (or 2.0, a 0-d array) was a ValueError, where n_genes, n_neighbors and
    n_components refuse what is no integer with a TypeError; ncols=0 stays a ValueError."""
    with pytest.raises(TypeError, match="ncols must be a positive integer"):
        pl.factors(fitted, ncols=ncols, show=False)
    with pytest.raises(ValueError, match="ncols must be a positive integer, got 0"):
        pl.factors(fitted, ncols=0, show=False)
    plt.close("all")


@pytest.mark.parametrize("estimator", [vbsnmf.VBNMF, vbsnmf.VBNTF])
def test_negative_verbose_is_a_value_error(estimator):
    """verbose=-1 was a TypeError, where every other integer below its minimum
    (max_iter=0, n_components=0) is a ValueError; text stays a TypeError."""
    data = _counts() if estimator is vbsnmf.VBNMF else _counts()[None, :, :].repeat(2, axis=0)
    with pytest.raises(ValueError, match=r"verbose must be True, False or an int >= 0, got -1"):
        estimator(2, max_iter=2, verbose=-1).fit(data)
    with pytest.raises(TypeError, match="verbose must be True, False or an int"):
        estimator(2, max_iter=2, verbose="no").fit(data)


def test_classic_inverse_transform_of_no_rows_gives_no_rows():
    """classic.NMF.inverse_transform of a (0, K) array was "Found array with 0 sample(s)",
    where scikit-learn's NMF and VBNMF return a (0, n_features) array."""
    X = _counts()
    model = _quiet(classic.NMF(2, max_iter=5).fit, X)
    reference = _quiet(SklearnNMF(2, max_iter=5).fit, X)
    expected = reference.inverse_transform(np.zeros((0, 2)))
    for rows in (np.zeros((0, 2)), sp.csr_matrix((0, 2))):
        back = model.inverse_transform(rows)
        assert isinstance(back, np.ndarray)
        assert back.shape == expected.shape == (0, 12)
    # no columns: the count of components named, as VBNMF names it
    with pytest.raises(ValueError, match="X has 0 columns, but NMF has 2 components"):
        model.inverse_transform(np.zeros((3, 0)))


def _result(path) -> None:
    rng = np.random.default_rng(0)
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(1.0, (40, 12)).astype(np.float32)))
    _quiet(vbsnmf.tl.nmf, adata, n_components=2, max_iter=5, random_state=0)
    adata.write_h5ad(path)


def _error(capsys) -> str:
    captured = capsys.readouterr()
    err = without_compile_notice(captured.err)
    assert captured.out == "" and err.count("\n") == 1, captured
    return err


@pytest.mark.parametrize(("key", "shown"), [("", "''"), ("my fit", "'my fit'")])
def test_umap_names_an_empty_or_spaced_key_quoted(tmp_path, monkeypatch, capsys, key, shown):
    """'vbsnmf umap --key ""' said "holds no NMF fit ... under --key , but one under --key
    nmf": the empty name vanished from the message. Now it is quoted as the shell takes it;
    plain names stay as typed."""
    monkeypatch.chdir(tmp_path)
    _result("result.h5ad")
    assert cli.main(["umap", "result.h5ad", "-o", "x.png", "--key", key]) == 2
    err = _error(capsys)
    assert f"under --key {shown}, but one under --key nmf: pass it" in err, err
    assert not (tmp_path / "x.png").exists()
