"""A thirty-fifth pass (2026-12-07) over the speed of `VBNTF(solver="svi")`: guards only,
each passing on the code before this pass as after it (no defect was fixed).

A reviewer timed the slices form at ``max_iter=8`` on a 300 x 200 x 50 tensor of 200,000
nonzeros (87-198 s at K = 40-80) against batch VB at ``max_iter=8``. Measured on one thread,
every kernel pass costs the same per nonzero in both solvers and is linear in K; the time is
the number of passes. Under SVI ``max_iter`` bounds each slice batch's local fit, not the
epochs: the default ``n_epochs`` on 300 slices is 427 (the 1,280 steps of the cells form's
rule at 3 steps an epoch), each epoch about 4.6 passes' worth of nonzeros (the minibatches'
local fits and the evaluation's local fit over every slice). Batch VB to its own ``tol``
took 346 passes at K = 40, the slices form 1,409.

The guards pin that structure: a minibatch step visits only its own slices' (or nonzeros')
entries and never the whole tensor, whole-tensor passes come from the epoch's evaluation
alone (at most ``max_iter + 1`` an evaluation, whatever the number of steps), a minibatch's
tensor equals the one numpy builds from its slices' coordinates, and the default number of
epochs is the one the docstring gives.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import vbsnmf
from vbsnmf import _kernels, _tensor


def _tensor_entries(seed: int, shape: tuple[int, ...], nnz: int):
    """``nnz`` distinct random coordinates of ``shape`` with counts 1 + Poisson(2)."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(math.prod(shape), size=nnz, replace=False)
    coords = np.stack(np.unravel_index(flat, shape), axis=1)
    return coords, rng.poisson(2.0, size=nnz) + 1.0


@pytest.fixture
def kernel_calls(monkeypatch):
    """Record the number of nonzeros of every `_kernels.tensor_update_shapes` call."""
    kernel = _kernels.tensor_update_shapes
    sizes: list[int] = []

    def counting(indptr, minor_rows, counts, *rest):
        sizes.append(int(counts.shape[0]))
        return kernel(indptr, minor_rows, counts, *rest)

    monkeypatch.setattr(_kernels, "tensor_update_shapes", counting)
    return sizes


def _fit(model, coords, values, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(coords, values, shape=shape)


@pytest.mark.parametrize("batch_size", [1, 7])
def test_slices_form_steps_do_not_pass_over_the_whole_tensor(kernel_calls, batch_size):
    """Guard (passes before and after): with a batch of 1 or 7 of 40 slices (40 or 6 steps
    an epoch) the whole tensor is passed over only by the evaluations, at most
    ``max_iter + 1`` times each (one more evaluation than epochs at most), and the steps'
    passes visit at most ``max_iter + 1`` times every nonzero an epoch: no step costs a
    whole-tensor pass, whatever the number of steps."""
    shape, max_iter, n_epochs = (40, 12, 9), 3, 3
    coords, values = _tensor_entries(0, shape, 900)
    model = vbsnmf.VBNTF(
        n_components=4,
        solver="svi",
        batch_size=batch_size,
        n_epochs=n_epochs,
        max_iter=max_iter,
        tol=0.0,
        random_state=1,
        n_threads=1,
    )
    _fit(model, coords, values, shape)
    nnz = len(values)
    whole = [size for size in kernel_calls if size == nnz]
    steps = [size for size in kernel_calls if size != nnz]
    assert max(steps) < nnz
    assert len(whole) <= (max_iter + 1) * (n_epochs + 1)
    assert sum(steps) <= (max_iter + 1) * nnz * n_epochs
    # every slice's local fit ran: at least one pass over each nonzero an epoch
    assert sum(steps) >= nnz * n_epochs


def test_nonzeros_form_steps_visit_their_minibatch_only(kernel_calls):
    """Guard (passes before and after): the nonzeros form's steps each pass over their
    ``batch_size`` nonzeros once, and the whole tensor once an epoch (the ELBO)."""
    shape, n_epochs, batch_size = (30, 20, 6), 4, 100
    coords, values = _tensor_entries(2, shape, 800)
    model = vbsnmf.VBNTF(
        n_components=3,
        solver="svi",
        svi_form="nonzeros",
        batch_size=batch_size,
        n_epochs=n_epochs,
        tol=0.0,
        random_state=3,
        n_threads=1,
    )
    _fit(model, coords, values, shape)
    whole = [size for size in kernel_calls if size == len(values)]
    steps = [size for size in kernel_calls if size != len(values)]
    assert steps == [batch_size] * (n_epochs * (len(values) // batch_size))
    assert len(whole) <= n_epochs + 1


def test_a_minibatch_of_slices_is_the_tensor_numpy_builds_from_them():
    """Guard (passes before and after): `TensorData.slices`, the minibatch every slices-form
    step passes over, against `as_tensor_data` of the entries numpy selects by the local
    mode's index (renumbered), bit for bit, log-factorial constant included."""
    shape = (50, 9, 7)
    coords, values = _tensor_entries(4, shape, 700)
    data = _tensor.as_tensor_data(coords, values, shape)
    chosen = np.sort(np.random.default_rng(5).choice(shape[data.major], 13, replace=False))
    batch = data.slices(chosen)
    keep = np.isin(coords[:, data.major], chosen)
    sub_coords = coords[keep].copy()
    sub_coords[:, data.major] = np.searchsorted(chosen, sub_coords[:, data.major])
    sub_shape = list(shape)
    sub_shape[data.major] = len(chosen)
    expected = _tensor.as_tensor_data(sub_coords, values[keep], tuple(sub_shape), data.major)
    assert batch.shape == expected.shape and batch.minor_modes == expected.minor_modes
    np.testing.assert_array_equal(batch.indptr, expected.indptr)
    np.testing.assert_array_equal(batch.counts, expected.counts)
    for got, want in zip(batch.minor_rows, expected.minor_rows, strict=True):
        np.testing.assert_array_equal(got, want)
    assert batch.log_factorial == expected.log_factorial


def test_default_epochs_on_few_slices_make_the_cells_forms_steps():
    """Guard (passes before and after): on 300 slices the default batch is 128 (3 steps an
    epoch) and the default ``n_epochs`` 427 (``ceil(40 * 32 / 3)``), whatever ``max_iter``
    (which bounds the local fits): why the reviewer's ``max_iter=8`` SVI fit takes hundreds
    of epochs where batch VB at ``max_iter=8`` takes eight passes."""
    coords, values = _tensor_entries(6, (300, 20, 5), 3000)
    data = _tensor.as_tensor_data(coords, values, (300, 20, 5))
    assert data.shape[data.major] == 300
    assert _tensor.default_batch_size("slices", data) == 128
    assert _tensor.default_n_epochs("slices", data) == math.ceil(40 * 32 / 3) == 427
    assert _tensor.default_n_epochs("slices", data, batch_given=True) == 40
    assert _tensor.default_n_epochs("nonzeros", data) == 40
