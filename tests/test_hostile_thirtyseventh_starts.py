"""Thirty-seventh hostile pass (second wave), starting values given by the user.

A warm start ``VBNMF.fit(X, init=...)`` of text arrays ("1.0", b"1.0", or an object array
of strings) was parsed as numbers, and one of dates (datetime64, timedelta64) taken as
their ticks, where the counts refuse both; a masked array was read with its hidden values
(``np.asarray`` drops the mask), as was a masked ``W`` or ``H`` of `vbsnmf.classic.NMF`'s
``init="custom"`` and of `vbsnmf.classic.factor_loss`; and a start under the fixed prior
whose rates are so small that its means overflow (a subnormal 1e-320) leaked numpy's
"invalid value encountered in scalar add" RuntimeWarning from the first pass, then either
fitted or failed with a `FloatingPointError` by the side it was on. Each test fails on the
code before its fix.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import VBNMF
from vbsnmf._model import ConvergenceWarning
from vbsnmf.classic import NMF, factor_loss


def _counts(n_rows=30, n_cols=12, seed=0):
    rng = np.random.default_rng(seed)
    return sp.csr_matrix(rng.poisson(0.8, (n_rows, n_cols)).astype(float))


def _start(prior="gamma", dtype=np.float64):
    """A fitted start's four arrays (30 cells, 12 genes, K = 3)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = VBNMF(3, prior=prior, max_iter=3, n_threads=1, random_state=0, dtype=dtype)
        model.fit(_counts())
    keys = ("cell_shape", "cell_rate", "gene_shape", "gene_rate")
    return {key: getattr(model, key + "_").copy() for key in keys}


def _fit(init, prior="gamma", dtype=np.float64):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return VBNMF(3, prior=prior, max_iter=2, n_threads=1, random_state=0, dtype=dtype).fit(
            _counts(), init=init
        )


@pytest.mark.parametrize(
    "as_text",
    [
        lambda a: a.astype(str),
        lambda a: a.astype("S32"),
        lambda a: a.astype(str).astype(object),
    ],
    ids=["str", "bytes", "object-str"],
)
@pytest.mark.parametrize("key", ["cell_shape", "gene_rate"])
def test_a_start_of_text_is_refused_naming_its_key(as_text, key):
    """Text ("1.0") was parsed as numbers and fitted; now a TypeError naming the key, as
    the counts refuse text."""
    init = _start()
    init[key] = as_text(init[key])
    with pytest.raises(TypeError, match=f"init {key} must hold"):
        _fit(init)


@pytest.mark.parametrize("dtype", ["datetime64[s]", "timedelta64[s]"])
def test_a_start_of_dates_is_refused(dtype):
    """Dates were fitted as their ticks (seconds since 1970 as shapes); now a TypeError."""
    init = _start()
    init["cell_shape"] = np.ceil(init["cell_shape"]).astype(np.int64).astype(dtype)
    with pytest.raises(TypeError, match=r"init cell_shape must hold real numbers, got dtype"):
        _fit(init)


def test_an_object_start_of_numbers_still_fits_as_the_numbers_do():
    """The object path now reads numbers as float64 (numbers_from_objects) rather than
    parsing: an object array of floats fits exactly as the floats do; its text is refused."""
    init = _start()
    given = dict(init, cell_shape=init["cell_shape"].astype(object))
    np.testing.assert_array_equal(_fit(given).cell_shape_, _fit(init).cell_shape_)
    given["cell_shape"][0, 0] = "2.5"
    with pytest.raises(TypeError, match=r"init cell_shape must hold numbers, not text"):
        _fit(given)


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_a_masked_start_is_refused_not_read_with_its_hidden_values(prior):
    """A masked array's hidden values were the start (np.asarray drops the mask): a hidden
    -5 was refused as "must be positive and finite" for an entry the user had masked, and a
    hidden positive one fitted. Now a TypeError saying it is a masked array; a masked array
    with nothing masked still fits as its values."""
    init = _start(prior)
    masked = np.ma.masked_array(init["cell_shape"].copy(), mask=False)
    masked[0, 0] = np.ma.masked
    for hidden in (-5.0, 7.0):
        masked.data[0, 0] = hidden
        with pytest.raises(TypeError, match=r"init cell_shape is a masked array"):
            _fit(dict(init, cell_shape=masked), prior)
    unmasked = np.ma.masked_array(init["gene_rate"], mask=False)
    np.testing.assert_array_equal(
        _fit(dict(init, gene_rate=unmasked), prior).gene_shape_, _fit(init, prior).gene_shape_
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("key", ["cell_rate", "gene_rate"])
@pytest.mark.parametrize("where", ["all", "one"])
def test_a_start_whose_means_overflow_is_refused_without_numpys_warning(dtype, key, where):
    """Under the fixed prior, rates of 1e-320 (1e-44 in float32) give means of q beyond
    the float range: the first pass leaked numpy's "invalid value encountered in scalar
    add" RuntimeWarning (inf - inf in its data term), then the fit went on (cell_rate) or
    failed with a FloatingPointError (gene_rate). Now a ValueError naming the keys, as
    the learned prior refuses such a start, and no warning."""
    init = _start(dtype=dtype)
    tiny = 1e-320 if dtype == np.float64 else np.float32(1e-44)
    rate = init[key].copy()
    if where == "all":
        rate[:] = tiny
    else:
        rate.flat[1] = tiny
    init[key] = rate
    side = key.split("_")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=f"init {side}_shape / {side}_rate give means"):
            VBNMF(3, prior="gamma", max_iter=2, n_threads=1, dtype=dtype).fit(_counts(), init=init)


def _factors(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((30, 3)) + 0.1, rng.random((3, 12)) + 0.1


@pytest.mark.parametrize("name", ["W", "H"])
def test_a_masked_custom_factor_of_classic_nmf_is_refused(name):
    """NMF(init="custom").fit_transform(X, W=..., H=...) read a masked factor's hidden
    values (a hidden 1e6 fitted without a word), as did factor_loss; now a TypeError."""
    W, H = _factors()
    factors = {"W": W, "H": H}
    masked = np.ma.masked_array(factors[name].copy(), mask=False)
    masked[0, 0] = np.ma.masked
    masked.data[0, 0] = 1e6
    factors[name] = masked
    X = _counts().toarray()
    with pytest.raises(TypeError, match=f"{name} is a masked array"):
        NMF(3, init="custom", max_iter=2).fit_transform(X, **factors)
    with pytest.raises(TypeError, match=f"{name} is a masked array"):
        factor_loss(X, factors["W"], factors["H"])
