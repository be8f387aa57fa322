"""Thirty-second hostile pass over the K selection and the count split: ``select_k``'s
record of the fits that stopped while they still held their factor shapes (columns
``shapes_held`` and ``heldout_shapes_held``), and its one convergence warning advising
``max_iter`` alone for them (it said "raise max_iter or tol", and no ``tol`` stops a held
fit); ``count_split`` of timedelta64 arrays and ragged lists (numpy's errors leaked), a
numpy ``fraction`` out of range; the counts hint beside a timedelta64 or complex layer;
numpy Ks named as numbers."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import numpy as np
import pytest

import vbsnmf
from vbsnmf import tl


def _counts(n_cells=40, n_genes=30, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.gamma(1.0, 1.0, (n_cells, 3)) @ rng.gamma(0.5, 2.0, (3, n_genes))
    return rng.poisson(means).astype(np.float64)


def _select_k_warnings(adata, ks, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = tl.select_k(adata, ks, n_threads=1, **options)
    stopped = [w for w in caught if issubclass(w.category, vbsnmf.ConvergenceWarning)]
    return table, [str(w.message) for w in stopped]


def _held_sentence(ks: str, limit: str) -> str:
    return (
        f"the fits at K={ks} (all the counts) and K={ks} (train half) stopped at {limit} "
        "while they still held their factor shapes at 1, which they learn once an ELBO change "
        "is at most HOLD_TOL=0.0032 relative, whatever tol (columns shapes_held and "
        f'heldout_shapes_held; docs/model.md, "The hold"); raise {limit}'
    )


# -- 1: fits that stopped while held: recorded, and advised max_iter alone ---------------------
@pytest.mark.parametrize(
    ("options", "limit"),
    [
        ({"max_iter": 3}, "max_iter"),
        ({"max_iter": 3, "accelerate": False}, "max_iter"),
        ({"solver": "svi", "n_epochs": 2}, "n_epochs"),
    ],
)
def test_select_k_records_fits_stopped_while_held_and_advises_their_limit(options, limit):
    """Under the default learned prior, K=2 and 3 stop within 3 passes (SQUAREM's or plain)
    or 2 epochs while they still hold their factor shapes, as each fit's own warning says:
    the grid's warning advised "raise max_iter or tol" (a tol never stops a held fit), and
    the table had no column saying which fits were held."""
    table, messages = _select_k_warnings(ad.AnnData(_counts()), [3, 2], **options)
    assert table["shapes_held"].tolist() == [True, True]
    assert table["heldout_shapes_held"].tolist() == [True, True]
    assert not table["converged"].any() and not table["heldout_converged"].any()
    assert messages == [_held_sentence("2, 3", limit)]


def test_select_k_warns_of_held_and_other_stopped_fits_apart():
    """K=1 releases its shapes within 3 passes and runs out still changing; K=2 and 3 run out
    while held: one warning, a sentence for each, each with its advice."""
    table, messages = _select_k_warnings(ad.AnnData(_counts()), [1, 2, 3], max_iter=3)
    assert table["shapes_held"].tolist() == [False, True, True]
    assert table["heldout_shapes_held"].tolist() == [False, True, True]
    assert messages == [
        "the fits at K=1 (all the counts) and K=1 (train half) stopped at max_iter before the "
        "relative ELBO change fell below tol (columns converged and heldout_converged); raise "
        "max_iter or tol; " + _held_sentence("2, 3", "max_iter")
    ]


def test_select_k_shapes_held_false_for_converged_and_fixed_prior_fits():
    """Converged fits, and fits under the fixed prior (no shapes to hold, though they stop at
    max_iter), are not held; the columns sit beside the converged ones in the table and in
    ``adata.uns``."""
    adata = ad.AnnData(_counts())
    table, messages = _select_k_warnings(adata, [1, 2], max_iter=500)
    assert table["converged"].all() and not table["shapes_held"].any()
    assert not table["heldout_shapes_held"].any() and messages == []
    columns = table.columns.tolist()
    assert columns[columns.index("converged") + 1] == "shapes_held"
    assert columns[columns.index("heldout_converged") + 1] == "heldout_shapes_held"
    assert adata.uns["nmf_k_selection"]["table"]["shapes_held"].tolist() == [False, False]
    table, messages = _select_k_warnings(ad.AnnData(_counts()), [2], prior="gamma", max_iter=2)
    assert not table["converged"].any() and not table["shapes_held"].any()
    assert messages[0].endswith("raise max_iter or tol")


def test_select_k_with_convergence_warnings_as_errors_raises_the_grid_warning():
    """A user's ``error`` filter for `ConvergenceWarning` stops at the grid's one warning,
    after every fit, not at the first inner fit's (which select_k reads). A guard: it passes
    on the code before the fix too."""
    adata = ad.AnnData(_counts())
    with warnings.catch_warnings():
        warnings.simplefilter("error", vbsnmf.ConvergenceWarning)
        with pytest.raises(vbsnmf.ConvergenceWarning, match=r"^the fits at K=2, 3 \(all"):
            tl.select_k(adata, [2, 3], max_iter=3, n_threads=1)


def test_select_k_passes_on_the_fits_other_warnings_with_their_line():
    """The inner fits' other warnings (here the float32 rounding `ConvergenceWarning`) are
    shown, attributed to the caller's line as before. A guard: it passes on the code before
    the fix too."""
    counts = np.random.default_rng(0).poisson(3, (30, 10)).astype(np.float64)
    options = {"prior": "gamma", "dtype": np.float32, "tol": 1e-9, "max_iter": 300}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tl.select_k(ad.AnnData(counts), [1], n_threads=1, **options)
    rounding = [w for w in caught if str(w.message).startswith("float32 holds this fit's ELBO")]
    assert len(rounding) == 2
    assert all(w.filename == __file__ for w in rounding)


# -- 2: count_split of non-numbers by dtype kind -----------------------------------------------
@pytest.mark.parametrize("dtype", ["m8[s]", "M8[D]", "complex128"])
def test_count_split_refuses_timedeltas_dates_and_complex_as_not_numeric(dtype):
    """numpy counts timedelta64 among its numbers: its split failed with numpy's bare
    "ufunc 'remainder' cannot use operands with types dtype('<m8[s]') ...". Dates and
    complex numbers were refused so before (guards)."""
    counts = np.arange(6).reshape(2, 3).astype(dtype)
    expected = re.escape(f"counts must be numeric, got dtype {counts.dtype}")
    with pytest.raises(TypeError, match=rf"^{expected}$"):
        tl.count_split(counts, 0.5)


def test_count_split_keeps_taking_every_numeric_kind():
    """Booleans, signed and unsigned integers and floats still split, each half in the
    input's dtype (a guard of the check by kind: passes before it too)."""
    counts = np.array([[0, 1, 5], [2, 0, 3]])
    for dtype in (bool, np.int8, np.uint16, np.int64, np.float16, np.float32, np.float64):
        given = counts.astype(dtype)
        train, test = tl.count_split(given, 0.5, random_state=1)
        assert train.dtype == test.dtype == given.dtype
        assert np.array_equal(
            train.astype(np.int64) + test.astype(np.int64), given.astype(np.int64)
        )


# -- 3: a repeated K named -------------------------------------------------------------------
def test_select_k_names_the_repeated_k_of_a_numpy_grid():
    """numpy integers were named by their repr ("got [np.int64(2), np.int64(2), ...]") and
    the repeated K was left to find."""
    with pytest.raises(
        ValueError,
        match=r"^ks must be distinct, got \[2, 3, 2, 3, 4\] \(2, 3 repeated\); drop the "
        r"repeated Ks$",
    ):
        tl.select_k(ad.AnnData(_counts()), np.array([2, 3, 2, 3, 4]))


@pytest.mark.parametrize(
    ("fraction", "named"),
    [(np.float64(1.0), "1.0"), (np.int64(0), "0"), (np.float32(2), "2.0"), (10**30, str(10**30))],
)
def test_count_split_names_a_fraction_out_of_range_as_a_number(fraction, named):
    """A numpy fraction was named by its repr ("got np.float64(1.0)"); a Python integer too
    large for a float is named whole (a guard: as before)."""
    with pytest.raises(ValueError, match=rf"^fraction must be in \(0, 1\), got {named}$"):
        tl.count_split(np.ones((2, 2)), fraction)


# -- 4: the hint for normalised X beside a layer that is not counts ---------------------------
@pytest.mark.parametrize("odd", ["m8[s]", "complex128"])
def test_normalised_x_is_named_beside_a_timedelta_or_complex_layer(odd):
    """The hint that looks for the counts among the layers read a timedelta64 or complex
    layer as numbers and failed with numpy's "ufunc 'remainder' ...", in place of the error
    naming X as normalised (tl.nmf's too); a layer of counts beside it is still named."""
    counts = _counts(10, 5)
    adata = ad.AnnData(np.log1p(counts))
    adata.layers["odd"] = counts.astype(odd)
    with pytest.raises(ValueError, match=r"^adata.X holds \d+ non-integer values .*keep the raw"):
        tl.select_k(adata, [1])
    adata.layers["counts"] = counts
    with pytest.raises(ValueError, match=r"the raw counts appear to be in layer='counts'; pass"):
        tl.nmf(adata, 1)


def test_select_k_shows_a_failing_fits_warnings_with_its_error(monkeypatch):
    """A fit that warns and then fails: the warning is shown and the error raised (the
    warnings a fit gives are recorded to read its not-converged one). A guard: before the
    fix they were shown as raised."""
    from vbsnmf.tl import _select_k

    def failing_nmf(*args, **kwargs):
        warnings.warn("a warning from the fit", UserWarning, stacklevel=1)
        raise FloatingPointError("the fit failed")

    monkeypatch.setattr(_select_k, "nmf", failing_nmf)
    adata = ad.AnnData(_counts())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FloatingPointError, match="the fit failed"):
            tl.select_k(adata, [2])
    assert [str(w.message) for w in caught] == ["a warning from the fit"]
    assert "nmf_k_selection" not in adata.uns


def test_count_split_names_ragged_lists_as_not_an_array():
    """numpy's bare ValueError ("setting an array element with a sequence ...") before, as
    VBNMF.fit names them (a TypeError)."""
    with pytest.raises(TypeError, match=r"^counts must be a 2-D array or scipy sparse matrix: "):
        tl.count_split([[1, 2], [3]], 0.5)


@pytest.mark.parametrize(
    ("ks", "named"),
    [(np.linspace(2, 10, 5), "2.0"), ([np.int64(0)], "0"), ([np.bool_(True)], "True")],
)
def test_select_k_names_a_numpy_k_that_is_not_a_positive_integer_as_a_number(ks, named):
    """An np.linspace grid was refused as "got np.float64(2.0)"."""
    with pytest.raises(ValueError, match=rf"^ks must hold positive integers, got {named}$"):
        tl.select_k(ad.AnnData(_counts()), ks)
