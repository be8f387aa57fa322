"""Thirtieth hostile pass, the tensor extension (`VBNTF`): what a long table of labels,
indices read as floats and `np.nonzero`'s tuple are told, and guards of the model against
an independent numpy computation and against `VBNMF`."""

import io
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.special import digamma, gammaln, logsumexp

import vbsnmf


def _fit(model, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(*args)


def _model(n_components=2, **options):
    return vbsnmf.VBNTF(
        n_components, **{"max_iter": 3, "random_state": 0, "n_threads": 1, **options}
    )


LABELS = pd.DataFrame(
    {
        "cell": ["c1", "c2", "c1", "c3"],
        "gene": ["g1", "g1", "g2", "g2"],
        "day": ["d0", "d1", "d1", "d0"],
    }
)
COUNTS = np.array([1.0, 2.0, 3.0, 4.0])


@pytest.mark.parametrize("kind", ["strings", "categorical", "array"])
def test_labels_as_coordinates_are_told_to_number_them(kind):
    """A long table whose mode columns hold names (strings, categoricals) was told to pass
    ``coords.to_numpy(dtype=np.int64)``, which raises for names (and a numpy array of
    strings was told nothing); the message now says to number each mode's labels, and that
    advice fits."""
    coords = {
        "strings": LABELS,
        "categorical": LABELS.astype("category"),
        "array": LABELS.to_numpy(dtype=str),
    }[kind]
    with pytest.raises(
        TypeError, match=r"labels \(strings\), not indices.*pd\.factorize"
    ) as caught:
        _model().fit(coords, COUNTS)
    assert "to_numpy(dtype=np.int64)" not in str(caught.value)
    codes = [pd.factorize(LABELS[column]) for column in LABELS]
    fitted = _fit(
        _model(),
        np.stack([code for code, _ in codes], axis=1),
        COUNTS,
        tuple(len(names) for _, names in codes),
    )
    assert fitted.shape_ == (3, 2, 2)


def test_indices_read_as_floats_are_told_to_cast_them():
    """(nnz, D) indices read by ``np.loadtxt`` (float64 by default) were told only how to
    pass a dense array of counts; the message now also says to cast indices, and the
    advice fits (a dense array's advice stays: test_hostile_thirteenth_tensor)."""
    table = np.loadtxt(io.StringIO("0 1 2\n1 0 3\n2 2 0\n4 1 1\n"))
    with pytest.raises(TypeError, match=r"pass coords\.astype\(np\.int64\)"):
        _model().fit(table, np.ones(4))
    assert _fit(_model(), table.astype(np.int64), np.ones(4)).shape_ == (5, 3, 4)
    # not whole numbers: only the dense advice
    with pytest.raises(TypeError, match="got dtype float64; for a dense array") as caught:
        _model().fit(table + 0.5, np.ones(4))
    assert "astype" not in str(caught.value)


def test_nonzero_tuple_of_as_many_entries_as_modes_is_refused():
    """``np.nonzero``'s tuple of a tensor with as many nonzeros as modes was read as one
    entry per array: a (4, 4, 4) tensor of 3 nonzeros fitted as a (3, 4, 4) one of other
    entries, without a word (with or without values)."""
    tensor = np.zeros((4, 4, 4))
    tensor[0, 1, 2], tensor[3, 0, 1], tensor[2, 2, 3] = 1, 2, 5
    nonzero = np.nonzero(tensor)
    for args in ((nonzero, tensor[nonzero]), (nonzero,)):
        with pytest.raises(ValueError, match=r"np\.nonzero's layout.*pass np\.transpose\(coords\)"):
            _model().fit(*args)
    fitted = _fit(_model(), np.transpose(nonzero), tensor[nonzero], tensor.shape)
    assert fitted.shape_ == tensor.shape
    # the same arrays as an ndarray are one entry per row, as before
    assert _fit(_model(), np.asarray(nonzero), np.ones(3)).shape_ == (3, 4, 4)


def test_transposing_a_tuple_is_advised_with_np_transpose():
    """A tuple has no ``.T``: "pass coords.T" for ``np.nonzero``'s tuple of another length
    raised AttributeError when followed; the advice now names ``np.transpose(coords)``
    (an array is still told ``coords.T``)."""
    tensor = np.zeros((5, 4, 3))
    tensor[np.unravel_index(np.arange(0, 60, 7), tensor.shape)] = 1
    nonzero = np.nonzero(tensor)
    with pytest.raises(ValueError, match=r"pass coords\.T \(np\.transpose\(coords\) here\)"):
        _model().fit(nonzero, tensor[nonzero])
    with pytest.raises(ValueError, match=r"pass coords\.T$"):
        _model().fit(np.asarray(nonzero), tensor[nonzero])


def test_a_table_of_records_is_told_to_stack_its_fields():
    """``np.genfromtxt(names=True)``'s table (one record per entry, a field per column)
    was told only "got an array of shape (3,)"; the message names its fields and how to
    stack them, and that advice fits."""
    from numpy.lib.recfunctions import structured_to_unstructured

    text = "cell gene day count\n0 1 0 3\n1 0 1 2\n2 2 1 1\n"
    table = np.genfromtxt(io.StringIO(text), names=True, dtype=int)
    with pytest.raises(ValueError, match=r"fields cell, gene, day, count.*structured_to_unstr"):
        _model().fit(table)
    coords = structured_to_unstructured(table[["cell", "gene", "day"]])
    assert _fit(_model(), coords, table["count"]).shape_ == (3, 3, 2)


def test_sets_and_generators_are_named():
    """A set (or dict) of index rows was "an array of shape ()", and values from a
    generator or a set "dtype object": numpy takes them for one object; the messages now
    name what was given and ask for a list or array in order."""
    with pytest.raises(ValueError, match=r"numpy took the set for one object.*list or an array"):
        _model().fit({(0, 1, 0), (1, 0, 1)}, [1.0, 2.0])
    coords = np.array([[0, 1, 0], [1, 0, 1]])
    for values, name in (((v for v in (1.0, 2.0)), "generator"), ({1.0, 2.0}, "set")):
        with pytest.raises(TypeError, match=rf"2 counts at coords, got a {name}; pass a list"):
            _model().fit(coords, values)


@pytest.mark.parametrize("given", ["index", "series"])
def test_a_multiindex_is_told_to_pass_its_codes(given):
    """A groupby's summed Series (or its MultiIndex, one level per mode) given as coords
    was told only "got an array of shape (4,)"; the message now says to pass the index's
    codes and levels, and that advice fits."""
    table = LABELS.assign(count=COUNTS)
    summed = table.groupby(["cell", "gene", "day"])["count"].sum()
    args = (summed.index, summed.to_numpy()) if given == "index" else (summed,)
    with pytest.raises(ValueError, match=r"MultiIndex.*np\.stack\(index\.codes, axis=1\)"):
        _model().fit(*args)
    index = summed.index
    shape = tuple(len(level) for level in index.levels)
    fitted = _fit(_model(), np.stack(index.codes, axis=1), summed.to_numpy(), shape)
    assert fitted.shape_ == (3, 2, 2)


# -- guards: pass on the code before this pass too -----------------------------------------


def _kl_gamma(shape, rate, prior_shape, prior_rate):
    """KL(Gamma(shape, rate) || Gamma(prior_shape, prior_rate)), rates as rates."""
    return (
        (shape - prior_shape) * digamma(shape)
        - gammaln(shape)
        + gammaln(prior_shape)
        + prior_shape * (np.log(rate) - np.log(prior_rate))
        + shape * (prior_rate - rate) / rate
    )


def _numpy_elbo(coords, values, shape, shapes, rates, prior_shape, prior_rate):
    """docs/model.md's ELBO on a dense tensor: repeated coordinates summed by np.add.at,
    the data term over its nonzeros, the total over every entry by einsum."""
    dense = np.zeros(shape)
    np.add.at(dense, tuple(np.asarray(coords).T), values)
    entries = np.argwhere(dense)
    counts = dense[tuple(entries.T)]
    elog = [digamma(s) - np.log(r) for s, r in zip(shapes, rates)]
    summed = sum(elog[d][entries[:, d]] for d in range(len(shape)))
    data = np.sum(counts * logsumexp(summed, axis=1) - gammaln(counts + 1))
    letters = "abcdefgh"[: len(shape)]
    means = [s / r for s, r in zip(shapes, rates)]
    total = np.einsum(",".join(f"{m}z" for m in letters) + "->", *means)
    kl = sum(
        _kl_gamma(s, np.broadcast_to(r, s.shape), prior_shape, prior_rate).sum()
        for s, r in zip(shapes, rates)
    )
    return data - total - kl


@pytest.mark.parametrize("shape", [(4, 3, 2), (3, 1, 4), (2, 2, 2, 2, 2), (3, 2, 2, 2, 2, 2)])
def test_elbo_matches_numpy_with_repeats_zeros_and_a_mode_of_one(shape):
    """Guard: the ELBO of the q a fit returns is the dense numpy ELBO of docs/model.md
    (fixed prior a = 0.3, b = 2) on tensors of 3 to 6 modes, with repeated coordinates
    (summed), explicit zeros (dropped), a mode of size 1 and an all-zero slice; the trace
    never decreases."""
    rng = np.random.default_rng(3)
    dense = rng.poisson(0.8, shape)
    dense[0] = 0  # an all-zero slice of mode 0
    coords = np.argwhere(dense)
    values = dense[tuple(coords.T)].astype(float)
    # the first three entries repeated (their counts doubled), an explicit zero
    coords = np.concatenate([coords, coords[:3], [[0] * len(shape)]])
    values = np.concatenate([values, values[:3], [0.0]])
    model = _fit(
        _model(2, prior_shape=0.3, prior_rate=2.0, max_iter=7, tol=0), coords, values, shape
    )
    expected = _numpy_elbo(coords, values, shape, model.shapes_, model.rates_, 0.3, 2.0)
    assert model.elbo_trace_[-1] == pytest.approx(expected, rel=1e-12)
    assert np.all(np.diff(model.elbo_trace_) >= 0)


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
@pytest.mark.parametrize("matrix_shape", [(20, 9), (9, 20), (1, 6)])
def test_an_order_two_tensor_is_vbnmf(prior, matrix_shape):
    """Guard: a matrix given as a 2-way tensor gives `VBNMF`'s ELBO trace and factors from
    the same seed to 1e-8 (tall, wide, a single row), under both priors."""
    counts = np.random.default_rng(1).poisson(1.0, matrix_shape).astype(float)
    counts[0, 0] = counts[0, 0] or 1.0  # a row of one cell must hold a count
    rank = min(2, *matrix_shape)
    options = {"prior": prior, "max_iter": 25, "tol": 1e-12, "random_state": 5, "n_threads": 1}
    matrix = _fit(vbsnmf.VBNMF(rank, **options), sp.csr_matrix(counts))
    tensor = _fit(
        vbsnmf.VBNTF(rank, **options), np.argwhere(counts), counts[counts != 0], counts.shape
    )
    np.testing.assert_allclose(tensor.elbo_trace_, matrix.elbo_trace_, rtol=1e-8)
    np.testing.assert_allclose(
        tensor.factors_[0], matrix.cell_shape_ / matrix.cell_rate_, rtol=1e-8
    )
    np.testing.assert_allclose(
        tensor.factors_[1], matrix.gene_shape_ / matrix.gene_rate_, rtol=1e-8
    )


def test_threads_pickling_and_clone_keep_the_fit():
    """Guard: two fits with 2 threads are the same bit for bit; a pickled fitted model keeps
    its factors and trace; a clone has the same parameters and fits the same."""
    from sklearn.base import clone

    rng = np.random.default_rng(0)
    shape = (30, 12, 5, 3)
    coords = np.stack([rng.integers(0, n, 400) for n in shape], axis=1)
    values = rng.integers(0, 4, 400).astype(float)
    options = {"max_iter": 15, "random_state": 2, "n_threads": 2}
    first = _fit(vbsnmf.VBNTF(3, **options), coords, values, shape)
    second = _fit(vbsnmf.VBNTF(3, **options), coords, values, shape)
    np.testing.assert_array_equal(first.elbo_trace_, second.elbo_trace_)
    for a, b in zip(first.factors_, second.factors_):
        np.testing.assert_array_equal(a, b)
    restored = pickle.loads(pickle.dumps(first))
    np.testing.assert_array_equal(restored.elbo_trace_, first.elbo_trace_)
    assert restored.shape_ == first.shape_ == shape
    copy = clone(first)
    assert copy.get_params() == first.get_params() and not hasattr(copy, "factors_")
    np.testing.assert_array_equal(_fit(copy, coords, values, shape).elbo_trace_, first.elbo_trace_)


def test_slices_form_at_two_modes_parts_from_the_cells_form_when_tol_stops_local_fits():
    """Guard of the behaviour docs/model.md now states (it said the slices form at D = 2
    gives `VBNMF`'s cells-form trace to 1e-12, which test_tensor.py checks at tol = 0): at
    the default tol a tensor batch's slices stop together and the matrix's cells one by
    one, and the traces part (2.8e-3 relative here)."""
    counts = np.random.default_rng(1).poisson(0.5, (40, 300)).astype(float)
    common = dict(prior="hierarchical", solver="svi", n_epochs=6, random_state=5, n_threads=1)
    cells = _fit(vbsnmf.VBNMF(3, svi_form="cells", **common), sp.csr_matrix(counts))
    slices = _fit(
        vbsnmf.VBNTF(3, svi_mode=0, **common),
        np.argwhere(counts),
        counts[counts != 0],
        counts.shape,
    )
    gap = np.abs(cells.elbo_trace_ - slices.elbo_trace_) / np.abs(cells.elbo_trace_)
    assert 1e-4 < gap.max() < 1e-2
