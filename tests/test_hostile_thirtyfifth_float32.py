"""Thirty-fifth hostile pass, area float32: ``dtype=np.float32`` end to end.

Defects, each test failing on the code before its fix: a float32 sparse matrix with
repeated entries (a COO, a CSR not in canonical form) whose sums pass 2**24 had them summed
by scipy in float32, so a float64 fit read rounded counts (2**24 and a thousand repeats of
1 summed to 2**24 + 660) and `tl.count_split` split the rounded sums, while `VBNMF(dtype=
np.float32)` refused the exact sum; the command line resuming the checkpoint of a float32
fit written from Python named ``dtype``, which no option sets, and advised only removing
it (throwing the fit away), not that Python resumes it. float32 local fits of
pseudobulk-scale cells (`transform`, `tl.project`, SVI's cells form, `VBNTF`'s slices
form) stopped on their ELBO's rounding without the warning batch fits give. A float32 warm
start from float64 values beyond float32's range was refused as not "positive and finite",
which it was. ``tl.nmf`` and ``tl.select_k`` recorded ``dtype="f4"`` as ``'f4'``.

The other tests are guards that pass on the code before the fixes too; each says so: the
dtypes every route leaves for a float32 fit (estimator attributes, ``transform``,
``tl.nmf``'s ``.obsm``/``.varm``, ``tl.project``, `fit_dask`, `fit_svi_dask`, `VBNTF`,
warm starts, checkpoints), float32 against float64 and bitwise reproducibility.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf.cli as cli
from vbsnmf import VBNMF, VBNTF, tl


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter's ConvergenceWarning
        return call(*args, **kwargs)


def _counts(n_cells=120, n_genes=30, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    mean = rng.gamma(2, 1, (n_cells, 3)) @ rng.gamma(0.5, 1, (3, n_genes))
    return sp.csr_matrix(rng.poisson(mean).astype(dtype))


# -- 1: float32 repeats summed beyond 2**24 ----------------------------------------------------
def _repeats_beyond_float32(dtype):
    """A COO whose entry (0, 0) is 2**24 and a thousand repeats of 1 (2**24 + 1000 in all,
    beyond the whole numbers float32 holds), beside ordinary counts."""
    base = sp.random(50, 20, density=0.3, random_state=0, format="coo")
    row = np.r_[base.row, np.zeros(1001, int)]
    col = np.r_[base.col, np.zeros(1001, int)]
    data = np.r_[np.ceil(base.data * 5), [2.0**24], np.ones(1000)]
    return sp.coo_matrix((data.astype(dtype), (row, col)), shape=base.shape)


def test_float64_fit_of_float32_repeats_reads_their_exact_sums():
    """Before: scipy summed the float32 repeats in float32 (2**24 + 660), so the fit
    differed from the same COO's in float64."""
    fits = [
        _quiet(VBNMF(2, random_state=0, max_iter=20).fit, _repeats_beyond_float32(dtype))
        for dtype in (np.float32, np.float64)
    ]
    assert np.array_equal(fits[0].components_, fits[1].components_)
    assert fits[0].elbo_trace_[-1] == fits[1].elbo_trace_[-1]


def test_count_split_of_float32_repeats_keeps_their_exact_sums():
    """Before: the halves summed to the rounded 2**24 + 660 (float32); now to the exact
    sum, in float64 as for narrow integers whose repeats pass their dtype."""
    train, test = tl.count_split(_repeats_beyond_float32(np.float32), random_state=3)
    assert train.dtype == np.float64
    assert (train + test)[0, 0] == 2**24 + 1000
    expected = sp.csr_matrix(_repeats_beyond_float32(np.float64))
    assert abs(train + test - expected).max() == 0


def test_count_split_of_float32_repeats_within_its_range_stays_float32():
    """A guard (passes before the fix too): repeats whose sums float32 holds stay float32
    and sum exactly."""
    counts = sp.coo_matrix(
        (np.array([3, 4, 5, 1], np.float32), ([0, 0, 1, 2], [0, 0, 1, 1])), shape=(3, 2)
    )
    train, test = tl.count_split(counts)
    assert train.dtype == test.dtype == np.float32
    assert (train + test).toarray().tolist() == [[7, 0], [0, 5], [0, 1]]


def test_float64_fit_of_a_float32_csr_with_sorted_repeats_reads_exact_sums():
    """Before: a CSR of sorted indices holding repeats (not canonical) was summed in
    float32 too."""
    counts = sp.csr_matrix(_repeats_beyond_float32(np.float64))  # summed, canonical
    repeats = sp.csr_matrix(
        (
            np.r_[2.0**24, np.ones(1000), counts.data[1:]].astype(np.float32),
            np.r_[np.zeros(1001, counts.indices.dtype), counts.indices[1:]],
            np.r_[0, counts.indptr[1:] + 1000],
        ),
        shape=counts.shape,
    )
    assert repeats.has_sorted_indices and repeats.nnz == counts.nnz + 1000
    fits = [
        _quiet(VBNMF(2, random_state=0, max_iter=20).fit, matrix) for matrix in (repeats, counts)
    ]
    assert np.array_equal(fits[0].components_, fits[1].components_)


def test_sorted_float32_csr_without_repeats_is_not_copied_to_sum():
    """A guard (passes before the fix too): a float32 CSR of sorted indices and no repeats,
    whatever its total, is not widened (a float64 copy of the atlas's 240M nonzeros is
    1.8 GiB), nor is a CSR that is canonical."""
    from vbsnmf._validation import widen_to_sum

    counts = sp.csr_matrix(_repeats_beyond_float32(np.float32))
    assert widen_to_sum(counts) is counts
    zeros = counts.copy()
    zeros.data[1] = 0  # a stored zero: still canonical to scipy, nothing to sum
    assert widen_to_sum(zeros) is zeros


def test_float32_fit_still_refuses_repeats_summed_beyond_its_range():
    """A guard (passes before the fix too): the float32 fit refuses the exact sum."""
    with pytest.raises(ValueError, match="16,777,216"):
        VBNMF(2, dtype=np.float32).fit(_repeats_beyond_float32(np.float32))


# -- 2: the command line and a float32 checkpoint ----------------------------------------------
@pytest.mark.parametrize(
    ("solver", "extra"), [("batch", {"max_iter": 3}), ("svi", {"n_epochs": 1})]
)
def test_cli_resume_of_a_float32_checkpoint_says_python_resumes_it(tmp_path, capsys, solver, extra):
    """Before: "dtype: checkpoint 'float32' vs now 'float64'; remove it, or start over":
    a parameter no option sets, and the only advice threw the fit away."""
    counts = _counts()
    path = tmp_path / "in.h5ad"
    ad.AnnData(counts).write_h5ad(path)
    checkpoint = tmp_path / "fit.npz"
    model = VBNMF(3, solver=solver, dtype=np.float32, random_state=0, checkpoint=str(checkpoint))
    _quiet(model.set_params(**extra).fit, counts)
    argv = ["fit", str(path), "-k", "3", "--solver", solver, "--quiet", "-o", str(tmp_path / "o")]
    code = cli.main([*argv, "--checkpoint", str(checkpoint), "--resume"])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "the only dtype the command line fits" in err
    assert "dtype=np.float32, checkpoint=PATH, resume=True" in err
    assert checkpoint.exists() and not (tmp_path / "o").exists()


# -- guards: dtypes through every route --------------------------------------------------------
FLOAT32_ATTRIBUTES = ("components_", "cell_shape_", "cell_rate_", "gene_shape_", "gene_rate_")


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"prior": "gamma"},
        {"solver": "svi", "n_epochs": 2},
        {"solver": "svi", "svi_form": "nonzeros", "prior": "gamma", "n_epochs": 2},
        {"solver": "svi", "svi_form": "abe-shimamura", "prior": "gamma", "n_epochs": 2},
    ],
)
def test_float32_fit_leaves_float32_factors_and_transform(params):
    """A guard (passes before the fixes too): q and transform's factors in float32 (of
    float32, float64 and int64 X), the ELBO trace in float64, all finite."""
    counts = _counts()
    model = _quiet(VBNMF(3, dtype=np.float32, random_state=0, max_iter=30, **params).fit, counts)
    for name in FLOAT32_ATTRIBUTES:
        assert getattr(model, name).dtype == np.float32, name
        assert np.isfinite(getattr(model, name)).all(), name
    assert model.elbo_trace_.dtype == np.float64
    for given in (counts, counts.astype(np.float64), counts.astype(np.int64)):
        factors = _quiet(model.transform, given)
        assert factors.dtype == np.float32 and np.isfinite(factors).all()


def test_tl_nmf_and_project_of_float32_store_float32_factors():
    """A guard (passes before the fixes too): `tl.nmf(dtype=np.float32)` stores its
    factors in float32 (the scales, one per cell or gene, in float64), and `tl.project`
    onto it computes in the reference's dtype."""
    adata = ad.AnnData(_counts())
    _quiet(tl.nmf, adata, 3, dtype=np.float32, max_iter=30)
    for key in ("X_nmf", "X_nmf_usage", "X_nmf_sqrt_usage", "nmf_cell_shape", "nmf_cell_rate"):
        assert adata.obsm[key].dtype == np.float32, key
    for key in ("NMF", "nmf_gene_shape", "nmf_gene_rate"):
        assert adata.varm[key].dtype == np.float32, key
    assert adata.obsm["nmf_cell_scale_shape"].dtype == np.float64
    assert adata.uns["nmf"]["params"]["dtype"] == "float32"
    query = ad.AnnData(_counts(40, seed=1, dtype=np.float64))
    _quiet(tl.project, query, adata)
    assert query.obsm["X_nmf"].dtype == np.float32
    assert np.allclose(query.obsm["X_nmf_usage"].sum(axis=1), 1, atol=1e-5)


def test_float32_against_float64_to_float32_precision():
    """A guard (passes before the fixes too): batch fits of both priors in float32 end
    within 1e-6 of float64's ELBO (plain ascent, the same iterations), with monotone
    traces, and the same seed gives the same bits."""
    counts = _counts()
    for prior in ("gamma", "hierarchical"):
        fits = [
            _quiet(
                VBNMF(
                    3, prior=prior, accelerate=False, dtype=dtype, random_state=0, max_iter=60
                ).fit,
                counts,
            )
            for dtype in (np.float32, np.float64, np.float32)
        ]
        trace = fits[0].elbo_trace_
        assert np.all(np.diff(trace) >= 0)
        assert abs(trace[-1] - fits[1].elbo_trace_[-1]) <= 1e-6 * abs(fits[1].elbo_trace_[-1])
        assert np.array_equal(fits[0].components_, fits[2].components_)
        assert np.array_equal(trace, fits[2].elbo_trace_)


def test_float32_checkpoint_resume_and_warm_start_keep_float32(tmp_path):
    """A guard (passes before the fixes too): a float32 fit interrupted and resumed ends
    with the uninterrupted fit's bits; a warm start from a float64 fit fits in float32."""

    class Stop(Exception):
        pass

    def stop_at_five(n_iter, params, trace):
        if n_iter == 5:
            raise Stop

    counts = _counts()
    checkpoint = str(tmp_path / "fit.npz")
    settings = {"dtype": np.float32, "random_state": 0, "checkpoint_every": 2}
    with pytest.raises(Stop):
        VBNMF(3, checkpoint=checkpoint, **settings).fit(counts, callback=stop_at_five)
    resumed = _quiet(VBNMF(3, checkpoint=checkpoint, resume=True, **settings).fit, counts)
    whole = _quiet(VBNMF(3, **settings).fit, counts)
    assert resumed.components_.dtype == np.float32
    assert np.array_equal(resumed.components_, whole.components_)
    assert np.array_equal(resumed.elbo_trace_, whole.elbo_trace_)
    start = _quiet(VBNMF(3, random_state=0, max_iter=10).fit, counts)
    warm = _quiet(VBNMF(3, dtype=np.float32, max_iter=10).fit, counts, init=start)
    for name in FLOAT32_ATTRIBUTES:
        assert getattr(warm, name).dtype == np.float32, name


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_float32_tensor_fit_keeps_float32(prior):
    """A guard (passes before the fixes too): `VBNTF(dtype=np.float32)` leaves float32
    factors, finite, within 1e-5 of float64's ELBO."""
    rng = np.random.default_rng(0)
    factors = [rng.gamma(1, 1, (n, 3)) for n in (12, 9, 4)]
    tensor = rng.poisson(np.einsum("il,jl,kl->ijk", *factors) * 2)
    coords = np.argwhere(tensor > 0)
    values = tensor[tensor > 0].astype(np.float32)
    fits = [
        _quiet(
            VBNTF(3, prior=prior, dtype=dtype, random_state=0, max_iter=50).fit,
            coords,
            values,
            shape=tensor.shape,
        )
        for dtype in (np.float32, np.float64)
    ]
    assert all(f.dtype == np.float32 and np.isfinite(f).all() for f in fits[0].factors_)
    last32, last64 = fits[0].elbo_trace_[-1], fits[1].elbo_trace_[-1]
    assert abs(last32 - last64) <= 1e-5 * abs(last64)


# -- 3: float32 local fits stopped on rounding -------------------------------------------------
def _pseudobulk(scale=1e5):
    """40 pseudobulk rows x 30 genes, counts near ``scale`` x 3 (up to about 2e6 at 1e5)."""
    rng = np.random.default_rng(0)
    mean = rng.gamma(1, 1, (40, 3)) @ rng.gamma(1, 1, (3, 30)) * scale
    return sp.csr_matrix(rng.poisson(mean).astype(np.float32))


def _rounding_warnings(call, *args, **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call(*args, **kwargs)
    return [str(w.message) for w in caught if str(w.message).startswith("float32 ")]


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_float32_transform_of_pseudobulk_rows_warns_of_rounding(prior):
    """Before: quiet, though the rows' local fits stopped on their ELBO's rounding (a
    float32 transform about twice as far from the optimum as float64's, at tol=1e-5)."""
    counts = _pseudobulk()
    fitted = {
        dtype: _quiet(VBNMF(3, prior=prior, dtype=dtype, random_state=0, max_iter=100).fit, counts)
        for dtype in (np.float32, np.float64)
    }
    messages = _rounding_warnings(fitted[np.float32].transform, counts)
    assert len(messages) == 1, messages
    assert "local fits may have stopped early: fit with dtype=np.float64" in messages[0]
    assert _rounding_warnings(fitted[np.float64].transform, counts) == []


def test_float32_project_onto_pseudobulk_reference_warns_of_rounding():
    """Before: quiet. The advice names the reference, whose fit sets the dtype."""
    reference = ad.AnnData(_pseudobulk())
    _quiet(tl.nmf, reference, 3, dtype=np.float32, max_iter=100)
    messages = _rounding_warnings(tl.project, ad.AnnData(_pseudobulk()), reference)
    assert len(messages) == 1, messages
    assert "fit the reference (adata_ref) with dtype=np.float64" in messages[0]


def test_float32_svi_cells_form_of_pseudobulk_warns_of_rounding():
    """Before: quiet, though the float32 fit's local fits stopped on rounding (after 300
    epochs its ELBO was 0.5 % below float64's, where at tol=0 the two agree to 4e-6)."""
    counts = _pseudobulk()
    model = VBNMF(3, solver="svi", dtype=np.float32, random_state=0, n_epochs=5)
    messages = _rounding_warnings(model.fit, counts)
    assert len(messages) == 1 and "local fits of its cells" in messages[0], messages
    model64 = VBNMF(3, solver="svi", random_state=0, n_epochs=5)
    assert _rounding_warnings(model64.fit, counts) == []
    # tol=0 runs every local fit max_iter passes: nothing stops on rounding
    tol0 = VBNMF(3, solver="svi", dtype=np.float32, random_state=0, n_epochs=1, tol=0, max_iter=5)
    assert _rounding_warnings(tol0.fit, counts) == []


def test_float32_of_ordinary_counts_gives_no_rounding_warning():
    """A guard (passes before the fix too): single-cell depths in float32 stay quiet
    (transform, project, SVI)."""
    counts = _counts(200, 40)
    model = _quiet(VBNMF(3, dtype=np.float32, random_state=0, max_iter=50).fit, counts)
    assert _rounding_warnings(model.transform, counts) == []
    svi = VBNMF(3, solver="svi", dtype=np.float32, random_state=0, n_epochs=2)
    assert _rounding_warnings(svi.fit, counts) == []


def test_float32_tensor_svi_slices_of_pseudobulk_warn_of_rounding():
    """Before: quiet, though the slices' local fits stopped on rounding (60 epochs: 1.4 %
    below float64's ELBO, 2.5e-5 at tol=0). float64 stays quiet."""
    rng = np.random.default_rng(0)
    factors = [rng.gamma(1, 1, (n, 3)) for n in (30, 15, 6)]
    tensor = rng.poisson(np.einsum("il,jl,kl->ijk", *factors) * 1e5)
    coords, values = np.argwhere(tensor > 0), tensor[tensor > 0].astype(float)
    messages = {
        dtype: _rounding_warnings(
            VBNTF(3, solver="svi", dtype=dtype, random_state=0, n_epochs=20).fit,
            coords,
            values,
            shape=tensor.shape,
        )
        for dtype in (np.float32, np.float64)
    }
    assert len(messages[np.float32]) == 1, messages
    assert "local fits of its slices" in messages[np.float32][0]
    assert messages[np.float64] == []


# -- 4: a float32 warm start from values beyond float32 ---------------------------------------
@pytest.mark.parametrize(("key", "value"), [("gene_rate", 1e-50), ("cell_shape", 1e40)])
def test_float32_warm_start_beyond_float32_is_named_as_such(key, value):
    """Before: "init gene_rate must be positive and finite", of values that were (1e-50 in
    float64): only their float32 copy was 0 or inf."""
    counts = _counts()
    fitted = _quiet(VBNMF(3, prior="gamma", random_state=0, max_iter=5).fit, counts)
    start = {name: getattr(fitted, name + "_") for name in FLOAT32_START_KEYS}
    start[key] = np.full_like(start[key], value)
    with pytest.raises(ValueError, match=r"beyond what dtype=np.float32 holds") as caught:
        VBNMF(3, prior="gamma", dtype=np.float32, max_iter=5).fit(counts, init=start)
    assert f"{value:.3g}" in str(caught.value) and "dtype=np.float64" in str(caught.value)
    # in float64 the same start is taken
    _quiet(VBNMF(3, prior="gamma", max_iter=2).fit, counts, init=start)


def test_float32_warm_start_not_positive_is_still_refused_as_such():
    """A guard (passes before the fix too): a start that is not positive in any dtype is
    refused as not positive and finite."""
    counts = _counts()
    fitted = _quiet(VBNMF(3, prior="gamma", random_state=0, max_iter=5).fit, counts)
    start = {name: getattr(fitted, name + "_") for name in FLOAT32_START_KEYS}
    start["gene_rate"] = -start["gene_rate"]
    with pytest.raises(ValueError, match="must be positive and finite"):
        VBNMF(3, prior="gamma", dtype=np.float32, max_iter=5).fit(counts, init=start)


FLOAT32_START_KEYS = ("cell_shape", "cell_rate", "gene_shape", "gene_rate")


# -- 5: the record of a dtype given by another name -----------------------------------------
@pytest.mark.parametrize("given", ["f4", "single", np.dtype("float32"), np.float32])
def test_tl_nmf_and_select_k_record_the_dtype_by_its_name(given):
    """Before: 'f4' and 'single' were recorded as given, np.float32 as 'float32': one
    dtype, three records."""
    adata = ad.AnnData(_counts(60, 20))
    _quiet(tl.nmf, adata, 2, dtype=given, max_iter=3)
    assert adata.uns["nmf"]["params"]["dtype"] == "float32"
    _quiet(tl.select_k, adata, [2], dtype=given, max_iter=3)
    assert adata.uns["nmf_k_selection"]["params"]["dtype"] == "float32"
