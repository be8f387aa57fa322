"""Leftovers of the thirteenth and fourteenth hostile passes, fixed in the fifteenth:
``transform``'s warning named ``max_iter=1`` when the user had set ``max_iter=0``;
``pl.factors(vmax="p0")`` (a percentile at or below every drawn value) drew every cell in
one colour without a word; and the command line's progress bar ran backwards at each of
``--n-init``'s starts (each counts its iterations from 1); and a classical solver's
``params.json`` held no final loss (``final_elbo`` null, nothing in its place); and
`classic.NMF`'s ``factor_mask`` of text failed with numpy's ``could not convert string to
float`` or, of the texts '0' and '1', was taken as numbers; and a float32 fit of
pseudobulk-scale counts met ``tol`` on its ELBO's rounding, 1.3 % below float64's ELBO,
without a word (the thirteenth pass's unfixed defect: now a warning); and
``datasets.pbmc_facs(test="False")`` returned the test cells; and a streamed fit of a 10x
folder refused an out-of-range K only after converting the whole folder (the SVI helper's
"left" list)."""

from __future__ import annotations

import json
import re
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from test_hostile import _counts, _main, h5ad

import vbsnmf
from vbsnmf import pl, tl


def test_transform_warning_names_the_max_iter_the_user_set():
    X = _counts()
    model = vbsnmf.VBNMF(2, max_iter=5, random_state=0, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(X)
    model.set_params(max_iter=0, tol=0.0)  # tol=0: every cell runs to the limit
    with pytest.warns(vbsnmf.ConvergenceWarning) as caught:
        projected = model.transform(X)
    message = str(caught[0].message)
    assert "max_iter=0" in message and "max_iter=1" not in message, message
    assert f"stopped {X.shape[0]} of {X.shape[0]} cells after 1 pass" in message
    # the one pass a projection runs: max_iter=1 gives the same factors
    model.set_params(max_iter=1)
    with pytest.warns(vbsnmf.ConvergenceWarning, match=r"after max_iter=1 passes"):
        np.testing.assert_array_equal(model.transform(X), projected)


@pytest.fixture(scope="module")
def fitted():
    adata = vbsnmf.datasets.pbmc_tiny()[:150, :200].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 10 passes; two cells without counts here
        tl.nmf(adata, 3, max_iter=10, n_threads=1)
    adata.obsm["X_umap"] = np.log1p(adata.obsm["X_nmf"][:, :2])
    return adata


@pytest.mark.parametrize("vmax", ["p0", "p0.0"])
def test_factors_refuses_a_percentile_at_the_smallest_value(fitted, vmax):
    with pytest.raises(ValueError, match=r"smallest drawn value.*one colour"):
        pl.factors(fitted, components=[0, 1], vmax=vmax, show=False)
    plt.close("all")


def test_factors_refuses_a_percentile_of_zeros(fitted):
    adata = fitted.copy()
    usage_key = adata.uns["nmf"]["usage_key"]
    usage = np.array(adata.obsm[usage_key])
    usage[: int(0.6 * adata.n_obs), 0] = 0.0  # 60 % of the cells without factor 0
    adata.obsm[usage_key] = usage
    with pytest.raises(ValueError, match=r"smallest drawn value here \(0\)"):
        pl.factors(adata, components=[0], vmax="p50", show=False)
    # a percentile above the zeros still draws, its scale at that percentile
    axes = pl.factors(adata, components=[0], vmax="p90", show=False)
    scale = axes[0].collections[0].get_clim()
    assert scale == pytest.approx((0.0, np.percentile(usage[:, 0], 90)))
    plt.close("all")


def test_progress_bar_adds_up_the_starts_of_n_init(tmp_path, capfd):
    path = h5ad(tmp_path)
    argv = ["fit", path, "-k", "2", "--max-iter", "4", "--tol", "0", "--threads", "1"]
    code, _, err, _ = _main([*argv, "--n-init", "3", "-o", tmp_path / "out"], capfd, tmp_path)
    assert code == 0, err
    shown = [int(done) for done in re.findall(r"\| *(\d+)/12 \[", err)]
    assert shown and shown[-1] == 12, err  # 3 starts x 4 iterations
    assert shown == sorted(shown), shown  # never backwards
    assert "start 3/3" in err


def test_params_json_of_a_classical_solver_holds_its_final_loss(tmp_path, capfd):
    path = h5ad(tmp_path)
    argv = ["fit", path, "-k", "2", "--max-iter", "6", "--threads", "1", "--solver", "mu"]
    code, out, err, _ = _main([*argv, "-o", tmp_path / "mu"], capfd, tmp_path)
    assert code == 0, err
    summary = json.loads((tmp_path / "mu" / "params.json").read_text())
    losses = pd.read_csv(tmp_path / "mu" / "loss.tsv", sep="\t")["loss"]
    assert summary["final_loss"] == pytest.approx(losses.iloc[-1], rel=1e-8)  # the table: 9 digits
    assert summary["final_elbo"] is None
    assert f"loss {summary['final_loss']:.8g}" in out


@pytest.mark.parametrize(
    "factor_mask",
    [np.array([["a", "b"]] * 6), {"W": [["1", "0"]] * 6}, {"H": np.array([["x"] * 5] * 2)}],
    ids=["text", "text digits", "text H"],
)
def test_classic_factor_mask_of_text_is_refused(factor_mask):
    from vbsnmf.classic import NMF

    X = np.random.default_rng(0).poisson(1.0, (6, 5)).astype(np.float64)
    with pytest.raises(ValueError, match=r"factor_mask\['[WH]'\] must hold 0/1 numbers"):
        NMF(2, factor_mask=factor_mask, max_iter=3).fit(X)
    # the same mask as numbers fits
    numbers = {"W": np.tile([1.0, 0.0], (6, 1))}
    assert NMF(2, factor_mask=numbers, max_iter=3).fit_transform(X)[:, 1].max() == 0.0


def _pseudobulk(scale: float) -> np.ndarray:
    """20 x 200 counts of mean ``scale`` x 0.25: at 1e5, the thirteenth pass's case."""
    rng = np.random.default_rng(4)
    W, H = rng.gamma(0.5, 1, (20, 3)), rng.gamma(0.5, 1, (3, 200))
    return rng.poisson(scale * W @ H).astype(np.float64)


def test_float32_fit_of_pseudobulk_counts_warns_it_may_have_stopped_early():
    X = _pseudobulk(1e5)
    fits = {}
    for dtype in (np.float64, np.float32):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = vbsnmf.VBNMF(3, random_state=0, n_threads=1, dtype=dtype).fit(X)
        fits[dtype] = model
        rounding = [w for w in caught if "float32 holds" in str(w.message)]
        # the premise, computed here: X's counts x 2**-24 against tol x |ELBO|
        expected = dtype == np.float32 and X.sum() * 2.0**-24 > 1e-5 * abs(model.elbo_trace_[-1])
        assert len(rounding) == int(expected), [str(w.message) for w in caught]
    assert fits[np.float32].converged_
    # what the warning is about: float32 stopped well below float64's ELBO
    gap = fits[np.float64].elbo_trace_[-1] - fits[np.float32].elbo_trace_[-1]
    assert gap > 1e-3 * abs(fits[np.float64].elbo_trace_[-1])


def test_float32_fit_of_ordinary_counts_does_not_warn():
    X = _pseudobulk(1e2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = vbsnmf.VBNMF(3, random_state=0, n_threads=1, dtype=np.float32).fit(X)
    assert model.converged_ and X.sum() * 2.0**-24 < 1e-5 * abs(model.elbo_trace_[-1])


def test_float32_tensor_fit_of_pseudobulk_counts_warns_too():
    rng = np.random.default_rng(4)
    factors = [rng.gamma(0.5, 1, (n, 3)) for n in (10, 200, 4)]
    Y = rng.poisson(1e5 * np.einsum("il,jl,kl->ijk", *factors))
    coords = np.argwhere(Y)
    values = Y[tuple(coords.T)].astype(np.float64)
    ends = {}
    for dtype in (np.float64, np.float32):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = vbsnmf.VBNTF(3, random_state=0, n_threads=1, dtype=dtype)
            model.fit(coords, values, shape=Y.shape)
        ends[dtype] = model.elbo_trace_[-1]
        rounding = [w for w in caught if "float32 holds" in str(w.message)]
        expected = dtype == np.float32 and Y.sum() * 2.0**-24 > 1e-5 * abs(ends[dtype])
        assert len(rounding) == int(expected) and model.converged_
    assert ends[np.float64] - ends[np.float32] > 1e-3 * abs(ends[np.float64])


def test_pbmc_facs_takes_only_a_boolean_test_flag():
    with pytest.raises(TypeError, match=r"test must be True or False, got 'False'"):
        vbsnmf.datasets.pbmc_facs(test="False")
    assert vbsnmf.datasets.pbmc_facs(test=np.bool_(True)).n_obs == 100


def test_streamed_fit_of_a_10x_folder_refuses_k_before_converting(monkeypatch, tmp_path):
    from vbsnmf.io import _stream

    folder = vbsnmf.datasets.data_dir("pbmc_tiny_v3")
    converted = []
    real = _stream._converted
    monkeypatch.setattr(_stream, "_converted", lambda *a: converted.append(a) or real(*a))
    with pytest.raises(ValueError, match=r"n_components=600 is out of range.*\(1107, 507\)"):
        vbsnmf.VBNMF(600, solver="svi", n_epochs=1).fit(folder)
    assert converted == []
    # a K in range still converts and fits, and so does a damaged folder's own message
    with pytest.warns(vbsnmf.ConvergenceWarning):  # one epoch
        model = vbsnmf.VBNMF(2, solver="svi", n_epochs=1, n_threads=1, random_state=0)
        model.fit(folder)
    assert len(converted) == 1 and model.components_.shape == (2, 507)
    (tmp_path / "matrix.mtx.gz").write_bytes(b"not gzip")
    for name in ("features.tsv.gz", "barcodes.tsv.gz"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(vbsnmf.io.ReadError):
        vbsnmf.VBNMF(600, solver="svi", n_epochs=1).fit(tmp_path)
