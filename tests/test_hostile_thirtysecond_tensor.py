"""Thirty-second hostile pass, the tensor extension (`VBNTF`): a long table with its
counts given whole as coordinates, values whose pandas index is in another order, an empty
list of entries, values given as one column or as a column's name; and guards of the final
q of every solver against an independent numpy ELBO and of a fit killed mid-run and
resumed."""

import os
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.special import digamma, gammaln, logsumexp

import vbsnmf


def _fit(model, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(*args, **kwargs)


def _model(n_components=2, **options):
    return vbsnmf.VBNTF(
        n_components, **{"max_iter": 3, "random_state": 0, "n_threads": 1, **options}
    )


TABLE = pd.DataFrame(
    {
        "donor": [0, 1, 1, 2, 0],
        "cell_type": [0, 0, 1, 1, 1],
        "gene": [3, 1, 2, 0, 3],
        "count": [5, 2, 7, 1, 4],
    }
)


@pytest.mark.parametrize("with_values", [False, True])
@pytest.mark.parametrize("name", ["count", "UMI_counts", "value"])
def test_a_table_with_its_count_column_is_told_to_pass_the_counts_as_values(name, with_values):
    """A long table (donor, cell type, gene, count) given whole as coords was fitted as a
    4-mode tensor whose fourth mode was the counts (every entry a count of 1; with
    ``values`` the counts twice), without a word."""
    table = TABLE.rename(columns={"count": name})
    values = table[name] if with_values else None
    with pytest.raises(ValueError, match=f"column named '{name}'") as caught:
        _fit(_model(), table, values)
    message = str(caught.value)
    assert "coords=table[['donor', 'cell_type', 'gene']]" in message
    assert f"values=table['{name}']" in message
    # the advice fits the tensor of the table's entries
    model = _fit(_model(), table[["donor", "cell_type", "gene"]], table[name])
    reference = _fit(_model(), TABLE.to_numpy()[:, :3], TABLE["count"].to_numpy())
    assert model.shape_ == (3, 2, 4)
    assert np.array_equal(model.elbo_trace_, reference.elbo_trace_)


def test_a_table_of_indices_alone_still_fits():
    """A guard (passes on both): a table whose columns are all modes fits as before, its
    entries counts of 1."""
    modes = TABLE[["donor", "cell_type", "gene"]]
    model = _fit(_model(), modes)
    reference = _fit(_model(), modes.to_numpy(), np.ones(len(modes)))
    assert model.shape_ == (3, 2, 4)
    assert np.array_equal(model.elbo_trace_, reference.elbo_trace_)


@pytest.mark.parametrize("values", [[], None, np.array([])])
def test_an_empty_list_of_entries_with_a_shape_fits_as_the_empty_tensor(values):
    """An empty list of coordinates (a subset without counts) with the tensor's shape was
    refused as "an array of shape (0,)", though the same tensor given as
    ``np.empty((0, 3))`` fits (as `VBNMF` fits a matrix of zeros)."""
    shape = (3, 4, 5)
    reference = _fit(_model(), np.empty((0, 3), dtype=np.int64), np.empty(0), shape)
    model = _fit(_model(), [], values, shape)
    assert model.shape_ == shape
    assert np.array_equal(model.elbo_trace_, reference.elbo_trace_)
    assert [f.shape for f in model.factors_] == [(3, 2), (4, 2), (5, 2)]


def test_an_empty_list_of_entries_without_a_shape_is_told_to_give_it():
    with pytest.raises(ValueError, match="for a tensor without entries pass its shape"):
        _fit(_model(), [])


@pytest.mark.parametrize(
    "values",
    [pd.DataFrame({"count": [1, 2, 3]}), np.array([[1.0], [2.0], [3.0]]), np.ones((1, 3))],
)
def test_values_given_as_one_column_are_told_to_ravel(values):
    """A one-column DataFrame of counts (``table[["count"]]``) or a column cut as
    ``X[:, [j]]`` was refused with a bare shape message."""
    coords = np.array([[0, 0, 0], [1, 2, 1], [2, 1, 3]])
    with pytest.raises(ValueError, match=r"values.ravel\(\)"):
        _fit(_model(), coords, values)
    # the advice fits
    _fit(_model(), coords, np.asarray(values).ravel())


def test_a_column_name_given_as_values_is_told_to_pass_the_column():
    """``values="count"`` (a column's name, as plotting libraries take it) was refused as
    "values must be real numbers, got dtype <U5"."""
    with pytest.raises(TypeError, match=r"pass the counts themselves, .*table\['count'\]"):
        _fit(_model(), TABLE[["donor", "cell_type", "gene"]], "count")


def test_values_of_another_length_keep_their_message():
    """A guard (passes on both): values of another length are refused as before, without
    the column advice."""
    coords = np.array([[0, 0, 0], [1, 2, 1], [2, 1, 3]])
    with pytest.raises(ValueError, match=r"got \(4, 1\)$"):
        _fit(_model(), coords, np.ones((4, 1)))


def test_values_whose_index_is_in_another_order_are_refused():
    """coords sorted by one column and values the unsorted table's count column (a Series
    of the same labels in another order) were paired by position: every count went to
    another entry without a word."""
    coords = TABLE[["donor", "cell_type", "gene"]].sort_values("gene")
    with pytest.raises(ValueError, match=r"values.loc\[coords.index\]"):
        _fit(_model(), coords, TABLE["count"])
    model = _fit(_model(), coords, TABLE["count"].loc[coords.index])
    order = coords.index.to_numpy()
    reference = _fit(_model(), TABLE.to_numpy()[order, :3], TABLE["count"].to_numpy()[order])
    assert np.array_equal(model.elbo_trace_, reference.elbo_trace_)


@pytest.mark.parametrize(
    "values",
    [
        TABLE["count"],  # the same index: paired by label and position alike
        TABLE["count"].reset_index(drop=True).set_axis(range(10, 15)),  # other labels
        TABLE["count"].to_numpy(),  # an array: by position
    ],
)
def test_values_in_order_or_of_other_labels_still_fit(values):
    """A guard (passes on both): values of coords' index, of other labels (a reset index,
    which may well be in order) or without one fit by position as before."""
    coords = TABLE[["donor", "cell_type", "gene"]]
    model = _fit(_model(), coords, values)
    reference = _fit(_model(), TABLE.to_numpy()[:, :3], TABLE["count"].to_numpy())
    assert np.array_equal(model.elbo_trace_, reference.elbo_trace_)


def _dense_elbo(tensor, shapes, rates, a, b):
    """The fixed prior's ELBO of q written from docs/model.md on the dense tensor:
    log-sum-exp over the nonzeros, the means summed over every entry, the Gamma KL."""
    shapes = [np.asarray(s, np.float64) for s in shapes]
    rates = [np.broadcast_to(np.asarray(r, np.float64), s.shape) for s, r in zip(shapes, rates)]
    means = [s / r for s, r in zip(shapes, rates)]
    logs = [digamma(s) - np.log(r) for s, r in zip(shapes, rates)]
    letters = "abcdefg"[: tensor.ndim]
    total = np.einsum(",".join(f"{x}z" for x in letters) + "->" + letters, *means).sum()
    value = -total
    for index in np.argwhere(tensor):
        y = tensor[tuple(index)]
        value += y * logsumexp(sum(log[i] for log, i in zip(logs, index))) - gammaln(y + 1)
    for s, r in zip(shapes, rates):
        kl = (s - a) * digamma(s) - gammaln(s) + gammaln(a) + a * np.log(r / b) + s * (b - r) / r
        value -= kl.sum()
    return value


@pytest.mark.parametrize("shape", [(4, 3, 5), (3, 2, 2, 4), (5, 1, 3)])
@pytest.mark.parametrize(
    "options",
    [
        {"accelerate": True},
        {"solver": "svi", "n_epochs": 4},
        {"solver": "svi", "svi_form": "nonzeros", "n_epochs": 4},
        {"dtype": np.float32, "prior_shape": 0.3, "prior_rate": 2.0},
        {"solver": "svi", "n_epochs": 4, "dtype": np.float32, "svi_mode": 0},
    ],
)
def test_every_solvers_last_elbo_is_the_numpy_elbo_of_its_q(shape, options):
    """A guard (passes on both): the last value of the trace of SQUAREM, both SVI forms and
    float32 fits is the dense numpy ELBO of the q returned (the thirtieth pass checked plain
    batch fits)."""
    tensor = np.random.default_rng(3).poisson(1.5, shape)
    coords = np.argwhere(tensor)
    model = _fit(_model(3, max_iter=40, **options), coords, tensor[tuple(coords.T)], shape)
    a, b = options.get("prior_shape", 1.0), options.get("prior_rate", 1.0)
    expected = _dense_elbo(tensor, model.shapes_, model.rates_, a, b)
    rtol = 1e-6 if options.get("dtype") is np.float32 else 1e-11
    assert model.elbo_trace_[-1] == pytest.approx(expected, rel=rtol)


class _Killed(Exception):
    pass


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"prior": "hierarchical"},
        {"solver": "svi", "n_epochs": 6, "prior": "hierarchical"},
        {"solver": "svi", "n_epochs": 6, "svi_mode": 2, "batch_size": 3},
        {"solver": "svi", "svi_form": "nonzeros", "n_epochs": 6, "dtype": np.float32},
    ],
)
def test_a_fit_killed_mid_run_resumes_bit_for_bit(tmp_path, options):
    """A guard (passes on both): a fit stopped by an exception at its third iteration or
    epoch (the checkpoint holds the second) and resumed ends with the uninterrupted fit's
    trace, iterations and factors, bit for bit."""
    tensor = np.random.default_rng(1).poisson(0.7, (12, 9, 7))
    coords = np.argwhere(tensor)
    args = (coords, tensor[tuple(coords.T)], tensor.shape)
    settings = {"n_components": 3, "max_iter": 30, "n_threads": 2, **options}
    whole = _fit(_model(**settings), *args)

    def kill(n_iter, params, trace):
        if n_iter == 3:
            raise _Killed

    checkpoint = os.fspath(tmp_path / "fit.npz")
    with pytest.raises(_Killed):
        _fit(_model(checkpoint=checkpoint, **settings), *args, callback=kill)
    resumed = _fit(_model(checkpoint=checkpoint, resume=True, **settings), *args)
    assert resumed.n_iter_ == whole.n_iter_
    assert np.array_equal(resumed.elbo_trace_, whole.elbo_trace_)
    assert np.array_equal(resumed.elbo_iter_, whole.elbo_iter_)
    for fitted, reference in zip(resumed.factors_, whole.factors_):
        assert np.array_equal(fitted, reference)
