"""Thirteenth hostile pass, the estimators: gene names at fit and in warm starts, the
warnings of a resumed fit at or beyond its limit, a learned fit as a fixed prior's start,
`fit_triplets`' shape, and what `transform` reads of later `set_params`."""

import warnings

import numpy as np
import pandas as pd
import pytest

from vbsnmf import VBNMF, fit_triplets
from vbsnmf._model import ConvergenceWarning
from vbsnmf.classic import NMF


@pytest.fixture(scope="module")
def counts():
    return np.random.default_rng(0).poisson(1.0, (40, 6))


def _quiet_fit(model, X, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(X, **kwargs)


def test_mixed_column_names_are_refused_before_the_fit_and_by_transform(counts):
    mixed = pd.DataFrame(counts, columns=[0, "b", "c", "d", "e", "f"])
    passes = []
    with pytest.raises(TypeError, match="only supported if all of them are strings"):
        VBNMF(2, random_state=0, max_iter=5).fit(mixed, callback=lambda *a: passes.append(a))
    assert passes == []  # refused before any pass, as scikit-learn validates X first
    model = _quiet_fit(
        VBNMF(2, random_state=0, max_iter=5), pd.DataFrame(counts, columns=list("abcdef"))
    )
    with pytest.raises(TypeError, match=r"\['int', 'str'\]"):
        model.transform(mixed)
    with pytest.raises(TypeError, match="only supported if all of them are strings"):
        NMF(2, max_iter=5).fit(mixed)  # the classical NMF shares the rule
    # names of one other type only are no names, as scikit-learn has it
    unnamed = _quiet_fit(VBNMF(2, random_state=0, max_iter=5), pd.DataFrame(counts))
    assert not hasattr(unnamed, "feature_names_in_")


def test_a_warm_start_from_other_genes_is_refused_and_from_the_same_taken(counts):
    genes = [f"g{i}" for i in range(6)]
    frame = pd.DataFrame(counts, columns=genes)
    model = _quiet_fit(VBNMF(2, random_state=0, max_iter=20), frame)
    with pytest.raises(ValueError, match="same genes in another order"):
        VBNMF(2, max_iter=1).fit(frame[genes[::-1]], init=model)
    renamed = frame.rename(columns={"g0": "x"})
    with pytest.raises(ValueError, match="1 of X's genes are not init's, 1 of init's not X's"):
        VBNMF(2, max_iter=1).fit(renamed, init=model)
    # X put in init's order continues init: the start is init's q itself
    shuffled = frame[genes[::-1]]
    continued = _quiet_fit(
        VBNMF(2, max_iter=1, accelerate=False), shuffled[model.feature_names_in_], init=model
    )
    same = _quiet_fit(VBNMF(2, max_iter=1, accelerate=False), frame, init=model)
    np.testing.assert_array_equal(continued.components_, same.components_)


@pytest.mark.parametrize(
    "long, short",
    [
        # tol=0 runs each cell's local fit its max_iter passes: few of them
        (dict(solver="svi", max_iter=10, n_epochs=4), dict(solver="svi", max_iter=10, n_epochs=2)),
        (
            dict(solver="svi", svi_form="nonzeros", prior="gamma", n_epochs=4),
            dict(solver="svi", svi_form="nonzeros", prior="gamma", n_epochs=2),
        ),
        (dict(max_iter=8, accelerate=True), dict(max_iter=4, accelerate=True)),
    ],
)
def test_a_resume_beyond_the_limit_is_not_said_to_stop_at_it(counts, tmp_path, long, short):
    path = tmp_path / "fit.npz"
    fitted = _quiet_fit(VBNMF(2, random_state=0, tol=0, checkpoint=path, **long), counts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = VBNMF(2, random_state=0, tol=0, checkpoint=path, resume=True, **short).fit(counts)
    messages = [str(w.message) for w in caught]
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)], messages
    assert any("its fit is returned as it is" in m for m in messages)
    assert resumed.n_iter_ == fitted.n_iter_
    np.testing.assert_array_equal(resumed.components_, fitted.components_)


@pytest.mark.parametrize("accelerate", [False, True])
def test_a_resume_at_the_limit_warns_as_the_fit_did(counts, tmp_path, accelerate):
    options = dict(random_state=0, tol=0, max_iter=4, accelerate=accelerate)
    options["checkpoint"] = tmp_path / "fit.npz"
    with pytest.warns(ConvergenceWarning, match="max_iter=4"):
        VBNMF(2, **options).fit(counts)
    with pytest.warns(ConvergenceWarning, match="max_iter=4"):
        resumed = VBNMF(2, resume=True, **options).fit(counts)
    assert not resumed.converged_ and resumed.n_iter_ == 4


def test_a_learned_fit_as_a_fixed_priors_start_is_refused_for_its_prior(counts):
    learned = _quiet_fit(VBNMF(2, random_state=0, max_iter=5), counts)
    for options in (dict(), dict(solver="svi", svi_form="nonzeros", n_epochs=1)):
        with pytest.raises(ValueError, match="learned prior") as error:
            VBNMF(2, prior="gamma", max_iter=5, **options).fit(counts, init=learned)
        assert "mask" not in str(error.value)
    # a masked fixed-prior fit's start still gets the advice about mask=
    mask = np.zeros(counts.shape, dtype=bool)
    mask[0, 0] = True
    masked = _quiet_fit(VBNMF(2, prior="gamma", random_state=0, max_iter=5), counts, mask=mask)
    with pytest.raises(ValueError, match="mask="):
        VBNMF(2, prior="gamma", max_iter=5).fit(counts, init=masked)


@pytest.mark.parametrize(
    "shape, rows", [((-1, 5), []), ((-1, 5), [0]), ((3, -2), [0]), ((2**63, 5), [0])]
)
def test_fit_triplets_refuses_a_shape_no_matrix_has(shape, rows):
    with pytest.raises(ValueError, match=r"shape must be two integers from 0 to 2\*\*63 - 1"):
        fit_triplets(rows, rows, [1.0] * len(rows), shape, 1)


def test_fit_triplets_names_ragged_arrays():
    with pytest.raises(TypeError, match="rows, cols and counts must be flat sequences"):
        fit_triplets([0, [1]], [0, 1], [1, 1], (3, 5), 1)


def test_transform_reads_only_the_local_fits_settings_of_a_later_set_params(counts, tmp_path):
    model = _quiet_fit(VBNMF(2, random_state=0, max_iter=20), counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = model.transform(counts)
        # the next fit's settings, half set: transform projects onto the model as fitted
        model.set_params(n_init=3, checkpoint=tmp_path / "next.npz")
        np.testing.assert_array_equal(model.transform(counts), expected)
        model.set_params(n_init=1, checkpoint=None, init="nndsvda", prior="gamma", solver="svi")
        np.testing.assert_array_equal(model.transform(counts), expected)
    # the local fit's own settings are still checked
    with pytest.raises(ValueError, match="tol"):
        model.set_params(tol=-1.0).transform(counts)
    with pytest.raises(TypeError, match="n_threads"):
        model.set_params(tol=1e-5, n_threads="2").transform(counts)
