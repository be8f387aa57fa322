"""Hostile pass 35 (second wave), fitted estimators as people keep and show them: pickled,
dumped by joblib, deep-copied and cloned `VBNMF`, `VBNTF` and `classic.NMF` loaded in a fresh
process with another ``NUMBA_NUM_THREADS``; a pickle taken in a fit's callback; the notebook
display; `set_params` after a fit; a pickled `fit_dask` result or persisted X in a new
session. See each test's docstring; a guard that passes on the code before this pass says
so."""

from __future__ import annotations

import copy
import io
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import dask.array as da
import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.base import BaseEstimator, clone
from test_dask import local_client

import vbsnmf
from vbsnmf import VBNMF, VBNTF
from vbsnmf.classic import NMF

pytestmark = [
    pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]

ROOT = Path(__file__).resolve().parents[1]


def _counts(n_cells: int = 80, n_genes: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rates = rng.gamma(0.5, 2.0, (n_cells, 3)) @ rng.gamma(0.5, 2.0, (3, n_genes))
    counts = rng.poisson(rates).astype(np.float64)
    counts[:, 0] += 1  # no empty cell
    return counts


def _run(code: str, threads: int, tmp_path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with ``NUMBA_NUM_THREADS=threads``, this checkout
    first on its path, in ``tmp_path``."""
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _html_text(html: str) -> str:
    import re

    text = re.sub(r"<style.*?</style>|<script.*?</script>", "", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


# -- 1: the notebook diagram's tables of parameters and fitted attributes --------------------

needs_params_table = pytest.mark.skipif(
    not hasattr(BaseEstimator, "_get_params_html"),
    reason="scikit-learn before 1.7 draws no table of parameters",
)


@needs_params_table
@pytest.mark.parametrize("estimator", [VBNMF(3, tol=1e-3), VBNTF(3, tol=1e-3)])
def test_notebook_diagram_lists_the_parameters(estimator):
    """scikit-learn's HTML diagram (a notebook's display of an estimator) lists every
    parameter in a table under the estimator's name, as it does for `classic.NMF`; for
    `VBNMF` and `VBNTF` the box held the repr only (no "Parameters", no ``max_iter``)."""
    text = _html_text(estimator._repr_html_())
    assert "Parameters" in text, text
    for name in estimator.get_params():
        assert f" {name} " in text, name
    assert " tol 0.001 " in text and " max_iter 1000 " in text


@pytest.mark.skipif(
    not hasattr(BaseEstimator, "_get_fitted_attr_html"),
    reason="scikit-learn before 1.8 draws no table of fitted attributes",
)
def test_notebook_diagram_of_a_fitted_vbnmf_lists_its_attributes():
    """A fitted estimator's diagram lists its fitted attributes (scikit-learn 1.8 on), as
    for `classic.NMF`'s ``components_``; `VBNMF`'s listed none."""
    model = VBNMF(3, random_state=0, max_iter=10).fit(_counts())
    text = _html_text(model._repr_html_())
    assert "Fitted attributes" in text, text
    for name in ("components_", "gene_shape_", "elbo_trace_", "n_iter_", "hyperparameters_"):
        assert f" {name} " in text, name
    assert "_fitted_prior" not in text  # private attributes stay out, as scikit-learn's


@needs_params_table
def test_notebook_diagram_of_odd_parameter_values():
    """Parameters of other types than their defaults (numpy scalars, a Generator, a Path)
    are listed too, and the display under ``display="text"`` is still None (a guard of the
    thirty-third pass's behaviour, with the table)."""
    model = VBNMF(
        np.int64(3),
        tol=np.float32(1e-3),
        random_state=np.random.default_rng(0),
        checkpoint=Path("fit.npz"),
    )
    text = _html_text(model._repr_html_())
    assert "Parameters n_components np.int64(3) tol np.float32(0.001)" in text, text
    assert "Generator(PCG" in text
    assert "PosixPath" in text or "WindowsPath" in text
    with sklearn.config_context(display="text"):
        assert model._repr_html_() is None


# -- 2: a start given where the constructor's init (how to start) goes ----------------------


@pytest.mark.parametrize(
    "start, shown",
    [
        (np.ones((80, 3)), "ndarray of shape (80, 3)"),
        ({"cell_shape": np.ones((80, 3)), "cell_rate": np.ones(3)}, "a dict with keys"),
    ],
)
def test_vbnmf_init_given_a_start_points_to_fit(start, shown):
    """``VBNMF(init=<array or dict of a start>)`` (fit's ``init`` given to the constructor)
    said "init must be one of ('random', 'nndsvda'), got array([[1., 1., 1.], ...])" with
    the whole array, and no word of where a start goes. Now the array's type and shape and
    the advice ``fit(X, init=start)``."""
    with pytest.raises(ValueError) as refused:
        VBNMF(3, init=start).fit(_counts())
    message = str(refused.value)
    assert shown in message and "fit(X, init=start)" in message
    assert "1., 1." not in message and len(message) < 400


def test_vbnmf_init_given_a_fitted_model_points_to_fit():
    """A fitted `VBNMF` given as the constructor's ``init`` is refused with the advice to
    give it to `fit`, which continues it; ``init="nndvsda"`` (a misspelling) keeps the
    plain refusal."""
    fitted = VBNMF(3, random_state=0, max_iter=5).fit(_counts())
    with pytest.raises(ValueError, match=r"fit\(X, init=start\)"):
        VBNMF(3, init=fitted).fit(_counts())
    with pytest.raises(ValueError) as refused:
        VBNMF(3, init="nndvsda").fit(_counts())
    assert "fit(X, init=start)" not in str(refused.value)


def test_classic_init_given_factors_points_to_custom():
    """``NMF(init=W)`` named the array by its shape but not where starting factors go; now
    ``init='custom'`` with ``fit(X, W=W, H=H)``."""
    with pytest.raises(ValueError, match=r"init='custom', fit\(X, W=W, H=H\)"):
        NMF(3, init=np.ones((80, 3))).fit(_counts())


# -- 3: a pickled fit_dask result or persisted X in a new session ----------------------------


def test_pickled_fit_dask_result_gathered_in_a_new_session(tmp_path):
    """A `fit_dask` result pickled (its cells are futures on the cluster) and gathered in a
    new session failed with distributed's bare "AttributeError: 'NoneType' object has no
    attribute 'status'". Now a ValueError saying to gather before pickling; one gathered
    first is pickled and read back whole."""
    with local_client(1, processes=False):
        lazy = da.from_array(_counts(60, 12), chunks=(20, -1))
        result = vbsnmf.fit_dask(lazy, 3, random_state=0, max_iter=5)
        (tmp_path / "result.pkl").write_bytes(pickle.dumps(result))
        gathered = result.gather()
    done = _run(
        """
        import pickle
        result = pickle.load(open("result.pkl", "rb"))
        try:
            result.gather()
        except ValueError as error:
            print("ValueError:", error)
        """,
        1,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "ValueError: " in done.stdout and "before pickling" in done.stdout, done.stdout
    assert "another process or session" in done.stdout
    kept = pickle.loads(pickle.dumps(gathered))
    np.testing.assert_array_equal(kept.row_shape, gathered.row_shape)


def test_pickled_persisted_x_in_a_new_session(tmp_path):
    """A persisted dask X pickled and given to `VBNMF.fit` in a new session with its own
    client failed with the same bare AttributeError; now a ValueError naming X."""
    with local_client(1, processes=False):
        persisted = da.from_array(_counts(60, 12), chunks=(20, -1)).persist()
        (tmp_path / "x.pkl").write_bytes(pickle.dumps(persisted))
    done = _run(
        """
        import pickle, warnings
        from distributed import Client
        import vbsnmf
        warnings.simplefilter("ignore")
        with Client(processes=False, n_workers=1, threads_per_worker=1,
                    dashboard_address=None):
            X = pickle.load(open("x.pkl", "rb"))
            try:
                vbsnmf.VBNMF(3, max_iter=3).fit(X)
            except ValueError as error:
                print("ValueError:", error)
        """,
        1,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "ValueError: X reads chunks persisted" in done.stdout, done.stdout + done.stderr
    assert "another process or session" in done.stdout


# -- 4: a resume refused for a Generator's state -------------------------------------------


def test_resume_with_a_used_generator_says_why(tmp_path):
    """An estimator whose Generator already gave a fit its entropy (a pickle taken inside
    the fit's callback has such a one; so has the estimator after the fit) was refused
    with "random_state: checkpoint 7424841456459477716 vs now 7451938487489940730", numbers
    the user never gave. Now it says a generator resumes in the state it had when the
    checkpoint's fit began, and the resume from a fresh Generator of that seed still
    runs (a guard)."""
    X = _counts(60, 15)
    checkpoint = tmp_path / "fit.npz"
    model = VBNMF(3, random_state=np.random.default_rng(5), max_iter=4, checkpoint=checkpoint)
    model.fit(X)
    used = pickle.loads(pickle.dumps(model)).set_params(max_iter=8, resume=True)
    with pytest.raises(vbsnmf.CheckpointMismatchError) as refused:
        used.fit(X)
    message = str(refused.value)
    assert "the entropy a Generator or RandomState gave" in message, message
    assert "np.random.default_rng(seed)" in message
    fresh = VBNMF(
        3, random_state=np.random.default_rng(5), max_iter=8, checkpoint=checkpoint, resume=True
    )
    assert fresh.fit(X).n_iter_ == 8


def test_resume_with_a_generator_of_an_integer_seeds_fit_names_the_seed(tmp_path):
    """A checkpoint of ``random_state=5`` resumed with a Generator said "checkpoint 5 vs
    now 2716...": now it names the seed to give again."""
    X = _counts(60, 15)
    checkpoint = tmp_path / "fit.npz"
    VBNMF(3, random_state=5, max_iter=4, checkpoint=checkpoint).fit(X)
    again = VBNMF(
        3, random_state=np.random.default_rng(5), max_iter=8, checkpoint=checkpoint, resume=True
    )
    with pytest.raises(vbsnmf.CheckpointMismatchError, match="give random_state=5 again"):
        again.fit(X)


# -- guards (pass on the code before this pass too) -------------------------------------------


def _kept_models(X: np.ndarray) -> dict:
    mask = np.zeros_like(X)
    mask[:, 1] = 1  # a gene masked in every cell: left out of transform too
    models = {
        "learned": VBNMF(3, random_state=0, max_iter=15),
        "gamma": VBNMF(3, prior="gamma", random_state=0, max_iter=15),
        "float32": VBNMF(3, random_state=0, max_iter=15, dtype=np.float32),
        "svi": VBNMF(3, solver="svi", random_state=0, n_epochs=2),
        "nonzeros": VBNMF(3, solver="svi", svi_form="nonzeros", prior="gamma", n_epochs=2),
        "generator": VBNMF(3, random_state=np.random.default_rng(1), max_iter=15),
    }
    for model in models.values():
        model.fit(X)
    models["masked"] = VBNMF(3, prior="gamma", random_state=0, max_iter=15).fit(X, mask=mask)
    for solver in ("mu", "hals", "als", "pg", "ipg", "gd"):
        models[f"nmf-{solver}"] = NMF(3, solver=solver, random_state=0, max_iter=30).fit(X)
    return models


def test_kept_models_transform_bit_for_bit_in_another_process(tmp_path):
    """Guard: every kind of fitted model, pickled, dumped by joblib and deep-copied,
    transforms to the same bits here, and pickled, in a fresh process with another
    ``NUMBA_NUM_THREADS`` (transform's local fits do not depend on the threads); `clone`
    drops the fit and keeps the parameters."""
    X = _counts()
    models = _kept_models(X)
    expected = {name: model.transform(X) for name, model in models.items()}
    for name, model in models.items():
        buffer = io.BytesIO()
        joblib.dump(model, buffer)
        buffer.seek(0)
        for kept in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model), joblib.load(buffer)):
            np.testing.assert_array_equal(kept.transform(X), expected[name], err_msg=name)
        fresh = clone(model)
        assert not hasattr(fresh, "components_")
        for key, value in model.get_params().items():  # a Generator is copied, not shared
            assert type(fresh.get_params()[key]) is type(value)
    (tmp_path / "models.pkl").write_bytes(pickle.dumps((models, expected, X)))
    done = _run(
        """
        import pickle, warnings
        import numpy as np
        warnings.simplefilter("ignore")
        models, expected, X = pickle.load(open("models.pkl", "rb"))
        for name, model in models.items():
            same = np.array_equal(model.transform(X), expected[name])
            print(name, "same" if same else "DIFFERENT")
        """,
        2,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert sum(line.endswith(" same") for line in lines) == len(models), done.stdout


def test_pickled_unfitted_models_fit_the_same_in_another_process(tmp_path):
    """Guard: unfitted models with ``n_threads=1`` (and a Generator), pickled and fitted in
    a fresh process with ``NUMBA_NUM_THREADS=2``, fit to the same bits as here (VBNMF batch
    and SVI, VBNTF, classic NMF with a RandomState)."""
    X = _counts(60, 15)
    coords = np.argwhere(X > 0)
    values = X[X > 0]
    models = {
        "batch": VBNMF(3, random_state=np.random.default_rng(2), max_iter=10, n_threads=1),
        "svi": VBNMF(3, solver="svi", random_state=2, n_epochs=2, n_threads=1),
        "tensor": VBNTF(2, random_state=np.random.default_rng(3), max_iter=10, n_threads=1),
        "nmf": NMF(3, init="random", random_state=np.random.RandomState(1)),
    }
    blob = pickle.dumps(models)
    here = {}
    for name, model in pickle.loads(blob).items():
        if name == "tensor":
            here[name] = np.concatenate([f.ravel() for f in model.fit(coords, values).factors_])
        else:
            here[name] = model.fit_transform(X)
    (tmp_path / "unfitted.pkl").write_bytes(pickle.dumps((blob, here, X, coords, values)))
    done = _run(
        """
        import pickle, warnings
        import numpy as np
        warnings.simplefilter("ignore")
        blob, here, X, coords, values = pickle.load(open("unfitted.pkl", "rb"))
        for name, model in pickle.loads(blob).items():
            if name == "tensor":
                there = np.concatenate([f.ravel() for f in model.fit(coords, values).factors_])
            else:
                there = model.fit_transform(X)
            print(name, "same" if np.array_equal(there, here[name]) else "DIFFERENT")
        """,
        2,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" same") == len(models), done.stdout


def test_pickle_taken_in_a_callback_resumes_a_killed_fit(tmp_path):
    """Guard: an estimator pickled in its own fit's callback (a first fit: not fitted yet),
    the process then killed, resumes from its checkpoint in a new process to the trace and
    factors of an uninterrupted fit (an integer seed; the stale lock file is no obstacle)."""
    X = _counts(60, 15)
    np.save(tmp_path / "X.npy", X)
    killed = _run(
        """
        import os, pickle, signal
        import numpy as np
        from vbsnmf import VBNMF
        X = np.load("X.npy")
        model = VBNMF(3, random_state=5, max_iter=20, tol=0, checkpoint="fit.npz",
                      n_threads=1)
        def keep_and_die(n_iter, params, trace):
            if n_iter == 6:
                pickle.dump(model, open("mid.pkl", "wb"))
                print("fitted" if hasattr(model, "components_") else "unfitted", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        model.fit(X, callback=keep_and_die)
        """,
        1,
        tmp_path,
    )
    assert killed.returncode != 0 and killed.stdout.strip() == "unfitted", killed.stderr
    model = pickle.loads((tmp_path / "mid.pkl").read_bytes())
    assert not hasattr(model, "components_")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the checkpoint's path is relative, as it was given
    try:
        model.set_params(resume=True).fit(X)
    finally:
        os.chdir(cwd)
    whole = VBNMF(3, random_state=5, max_iter=20, tol=0, n_threads=1).fit(X)
    np.testing.assert_array_equal(model.elbo_trace_, whole.elbo_trace_)
    np.testing.assert_array_equal(model.components_, whole.components_)


def test_params_kept_from_callbacks_are_snapshots():
    """Guard: the ``params`` a callback receives and keeps do not change with the later
    passes (each is its own copy), and an estimator pickled there is not fitted."""
    kept, pickled = [], []
    model = VBNMF(3, prior="gamma", random_state=0, max_iter=6, accelerate=False)

    def keep(n_iter, params, trace):
        kept.append((params, params.row_shape.copy(), params.col_shape.copy()))
        pickled.append(pickle.dumps(model))

    model.fit(_counts(), callback=keep)
    assert len(kept) == 6
    for params, row_shape, col_shape in kept:
        np.testing.assert_array_equal(params.row_shape, row_shape)
        np.testing.assert_array_equal(params.col_shape, col_shape)
    assert not hasattr(pickle.loads(pickled[-1]), "components_")


def test_set_params_after_fit_projects_onto_the_fitted_model():
    """Guard of the documented rule: after `set_params`, `transform` projects onto the model
    as fitted; of the changed parameters only ``max_iter``, ``tol`` and ``n_threads``
    apply (a new prior, dtype or K do not), and a pickled copy does the same."""
    X = _counts()
    model = VBNMF(3, random_state=0, max_iter=15).fit(X)
    before = model.transform(X)
    model.set_params(prior="gamma", prior_shape=0.3, prior_rate=2.0, dtype=np.float32)
    model.set_params(n_components=5, solver="svi", n_threads=1)
    np.testing.assert_array_equal(model.transform(X), before)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).transform(X), before)
    model.set_params(max_iter=1)
    assert not np.array_equal(model.transform(X), before)


def test_frame_fit_keeps_feature_names_through_pickle():
    """Guard: a model fitted on a DataFrame keeps ``feature_names_in_`` and its pandas
    output through pickling (`VBNMF`, `classic.NMF`), and refuses the genes reordered."""
    X = _counts()
    frame = pd.DataFrame(
        X, columns=[f"g{j}" for j in range(X.shape[1])], index=[f"c{i}" for i in range(len(X))]
    )
    for model in (VBNMF(3, random_state=0, max_iter=10), NMF(3, random_state=0)):
        model.set_output(transform="pandas").fit(frame)
        kept = pickle.loads(pickle.dumps(model))
        np.testing.assert_array_equal(kept.feature_names_in_, frame.columns)
        pd.testing.assert_frame_equal(kept.transform(frame), model.transform(frame))
        with pytest.raises(ValueError, match="same order"):
            kept.transform(frame[frame.columns[::-1]])


def test_joblib_memory_mapped_models_transform_and_warm_start(tmp_path):
    """Guard: a model loaded by ``joblib.load(mmap_mode="r")`` (read-only memory-mapped
    attributes) transforms, inverse-transforms and starts a warm fit as the model itself,
    and refits."""
    X = _counts()
    model = VBNMF(3, random_state=0, max_iter=10).fit(X)
    joblib.dump(model, tmp_path / "model.joblib")
    mapped = joblib.load(tmp_path / "model.joblib", mmap_mode="r")
    assert not mapped.components_.flags.writeable
    cells = model.transform(X)
    np.testing.assert_array_equal(mapped.transform(X), cells)
    np.testing.assert_array_equal(mapped.inverse_transform(cells), model.inverse_transform(cells))
    warm = VBNMF(3, max_iter=3).fit(X, init=mapped)
    np.testing.assert_array_equal(
        warm.components_, VBNMF(3, max_iter=3).fit(X, init=model).components_
    )
    np.testing.assert_array_equal(mapped.fit_transform(X), model.fit_transform(X))


def test_classic_set_params_after_fit_takes_the_new_loss_as_documented():
    """Guard of `classic.NMF.transform`'s rule, now written in its docstring (it said "same
    solver and loss", which read as the fit's): after `set_params` it projects with the new
    loss, as scikit-learn's `NMF` does, exactly as a model of that loss holding the same
    ``components_``; ``n_components`` and ``thin`` do not apply. The behaviour is the code
    before's; only the docstring's check fails there."""
    X = _counts()
    model = NMF(3, random_state=0).fit(X)
    before = model.transform(X)
    np.testing.assert_array_equal(model.set_params(n_components=5, thin=True).transform(X), before)
    other = NMF(3, loss="frobenius", random_state=0).fit(X)
    other.components_ = model.components_.copy()
    model.set_params(loss="frobenius")
    np.testing.assert_array_equal(model.transform(X), other.transform(X))
    assert not np.array_equal(model.transform(X), before)
    assert "set_params" in NMF.transform.__doc__
