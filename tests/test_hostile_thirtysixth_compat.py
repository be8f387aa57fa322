"""Thirty-sixth hostile pass, artifacts of earlier versions: checkpoints, ``.uns`` records of
``tl.nmf`` and pickled models written by older vbsnmf (checked out from the history and run
with today's packages), read by this one. Each artifact is rebuilt here in the old layout
from a fit of this version (the old checkouts are not needed at test time).

Each test of a fix failed on the code before it; guards that pass on both say so."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import vbsnmf
import vbsnmf.cli


def _counts() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    return sp.csr_matrix(rng.poisson(1.0, (60, 30)).astype(np.float64))


def _rewrite_config(path: Path, edit) -> None:
    """Rewrite the checkpoint at ``path`` with its config passed through ``edit``."""
    with np.load(path) as stored:
        arrays = {name: stored[name] for name in stored.files}
    meta = json.loads(str(arrays.pop("__meta__")))
    edit(meta["config"])
    np.savez(path, __meta__=np.array(json.dumps(meta)), **arrays)


def _as_first_release(config: dict) -> None:
    """A checkpoint's config as the version of 2026-12-01 (b4f8407) recorded it: the solver
    as ``method``, the fixed prior as ``prior_shape`` and ``prior_rate``, none of the
    settings added since."""
    config["method"] = config.pop("solver")
    for name in ("prior", "init", "accelerate", "local_fit", "eval_every", "warm_start"):
        config.pop(name, None)
    config.update(prior_shape=1.0, prior_rate=1.0)


# -- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_of_the_first_release_told_as_an_earlier_version(tmp_path):
    """A checkpoint written before ``solver`` and ``prior`` (it records ``method``, and the
    prior as ``prior_shape`` / ``prior_rate``) was refused as "written by a different fit
    (accelerate: ..., method: checkpoint 'batch' vs now None, ..., solver: checkpoint None
    vs now 'batch')", six settings the user never changed."""
    X, path = _counts(), tmp_path / "fit.npz"
    settings = dict(prior="gamma", tol=0, random_state=0, n_threads=1, checkpoint=path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(3, max_iter=3, **settings).fit(X)
    _rewrite_config(path, _as_first_release)
    with pytest.raises(vbsnmf.CheckpointMismatchError) as caught:
        vbsnmf.VBNMF(3, max_iter=6, resume=True, **settings).fit(X)
    message = str(caught.value)
    assert "written by an earlier version of vbsnmf" in message, message
    assert "method='batch'" in message and "different fit" not in message, message
    assert "remove it, or start over without resuming" in message


def test_checkpoint_of_the_first_release_told_so_by_the_command_line(tmp_path, capsys):
    """The command line's --resume says the same in its one line (exit 2)."""
    source = tmp_path / "in.h5ad"
    adata = ad.AnnData(_counts())
    adata.write_h5ad(source)
    checkpoint = tmp_path / "fit.npz"
    argv = [
        "fit", str(source), "-k", "3", "--prior", "gamma", "--max-iter", "3", "--tol", "0",
        "--quiet", "--checkpoint", str(checkpoint),
    ]  # fmt: skip
    assert vbsnmf.cli.main([*argv, "-o", str(tmp_path / "first")]) == 0
    _rewrite_config(checkpoint, _as_first_release)
    capsys.readouterr()
    assert vbsnmf.cli.main([*argv, "--resume", "-o", str(tmp_path / "second")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "written by an earlier version of vbsnmf" in err, err
    assert not (tmp_path / "second").exists()


def test_checkpoint_before_later_settings_still_resumes(tmp_path):
    """Guard (passes on both versions): a checkpoint of the versions before ``init``,
    ``local_fit``, ``eval_every``, ``warm_start`` and ``elbo_iter`` were recorded (those of
    2026-12-02 to 12-06) continues the same fit: its trace kept, not a fresh start."""
    X, path = _counts(), tmp_path / "fit.npz"
    settings = dict(tol=0, random_state=0, n_threads=1, checkpoint=path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        first = vbsnmf.VBNMF(3, max_iter=4, **settings).fit(X)

    def before_later_settings(config):
        for name in ("init", "local_fit", "eval_every", "warm_start"):
            del config[name]

    _rewrite_config(path, before_later_settings)
    with np.load(path) as stored:
        arrays = {name: stored[name] for name in stored.files if name != "elbo_iter"}
    np.savez(path, **arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        resumed = vbsnmf.VBNMF(3, max_iter=8, resume=True, **settings).fit(X)
        fresh = vbsnmf.VBNMF(3, max_iter=8, tol=0, random_state=0, n_threads=1).fit(X)
    assert np.array_equal(resumed.elbo_trace_[: first.elbo_trace_.size], first.elbo_trace_)
    np.testing.assert_array_equal(resumed.elbo_trace_, fresh.elbo_trace_)


def test_svi_checkpoint_of_the_old_step_decay_names_kappa(tmp_path):
    """Guard (passes on both versions): an SVI checkpoint of the versions whose default
    ``kappa`` was 0.55 (before 2026-12-02) is refused naming kappa and both values, which
    the user can give again to resume it."""
    X, path = _counts(), tmp_path / "svi.npz"
    settings = dict(solver="svi", batch_size=20, random_state=0, n_threads=1, checkpoint=path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.VBNMF(3, n_epochs=2, kappa=0.55, **settings).fit(X)
        with pytest.raises(
            vbsnmf.CheckpointMismatchError, match=r"kappa: checkpoint 0\.55 vs now 0\.7"
        ):
            vbsnmf.VBNMF(3, n_epochs=3, resume=True, **settings).fit(X)
        resumed = vbsnmf.VBNMF(3, n_epochs=3, kappa=0.55, resume=True, **settings).fit(X)
    assert resumed.n_iter_ == 3


# -- .uns records of tl.nmf ----------------------------------------------------------------


def _first_release_adata() -> ad.AnnData:
    """An AnnData as tl.nmf of the version of 2026-12-01 (b4f8407) left it: the record
    names ``obsm_key`` and ``varm_key``, keeps ``var_names``, and has no usages, active
    factors nor factor shares."""
    rng = np.random.default_rng(0)
    adata = ad.AnnData(_counts())
    adata.obsm["X_nmf"] = rng.gamma(1.0, 1.0, (60, 3))
    adata.varm["NMF"] = rng.gamma(1.0, 1.0, (30, 3))
    adata.uns["nmf"] = {
        "params": {"n_components": 3, "method": "batch", "use_raw": False, "max_iter": 30},
        "obsm_key": "X_nmf",
        "varm_key": "NMF",
        "var_names": np.asarray(adata.var_names),
        "elbo_trace": -np.arange(30.0, 0.0, -1.0),
        "n_iter": 30,
        "converged": False,
        "variational": {"prior_shape": 1.0, "prior_rate": 1.0},
    }
    return adata


@pytest.mark.parametrize(
    "tool",
    [
        lambda adata: vbsnmf.tl.top_genes(adata),
        lambda adata: vbsnmf.tl.nmf(adata, 3, warm_start=True, max_iter=2),
        lambda adata: vbsnmf.tl.project(ad.AnnData(_counts()[:10]), adata),
    ],
    ids=["top_genes", "warm_start", "project"],
)
def test_record_of_the_first_release_told_as_an_earlier_version(tool):
    """Its record was called damaged ("has no 'usage_key' entry, so the record of the fit
    is damaged") by every tool reading it."""
    with pytest.raises(KeyError) as caught:
        tool(_first_release_adata())
    message = str(caught.value)
    assert "written by an earlier version of vbsnmf" in message, message
    assert "damaged" not in message and "fit again with vbsnmf.tl.nmf" in message


def test_record_of_the_first_release_replaced_by_a_new_fit():
    """Guard (passes on both versions): tl.nmf under the same key replaces the earlier
    version's fit, its arrays and record, and the tools read the new one."""
    adata = _first_release_adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(adata, 3, max_iter=5)
    assert "var_names" not in adata.uns["nmf"]
    assert vbsnmf.tl.top_genes(adata).shape[0] > 0


def test_damaged_record_still_called_damaged():
    """Guard (passes on both versions): a record of this version missing one entry is
    damaged, not an earlier version's."""
    adata = ad.AnnData(_counts())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(adata, 3, max_iter=5)
    del adata.uns["nmf"]["usage_key"]
    with pytest.raises(
        KeyError, match="has no 'usage_key' entry, so the record of the fit is damaged"
    ):
        vbsnmf.tl.top_genes(adata)


# -- pickled models ------------------------------------------------------------------------


def _unpickled_as_first_release(model: vbsnmf.VBNMF) -> vbsnmf.VBNMF:
    """``model`` pickled as the version of 2026-12-01 (b4f8407) pickled it: parameter
    ``method`` for ``solver``, no ``prior``, ``accelerate`` nor ``init``, and fitted
    attributes (if any) named ``obs_*_`` and ``var_*_``; then unpickled by this version."""
    state = dict(vars(model))
    state["method"] = state.pop("solver")
    for name in ("prior", "accelerate", "init"):
        del state[name]
    for new, old in (("cell_", "obs_"), ("gene_", "var_")):
        for what in ("shape_", "rate_"):
            if new + what in state:
                state[old + what] = state.pop(new + what)
    for name in [name for name in state if name.startswith(("cell_scale", "gene_scale", "_"))]:
        del state[name]
    copy = vbsnmf.VBNMF.__new__(vbsnmf.VBNMF)
    copy.__dict__.update(state)  # as the old class's pickle holds it
    return pickle.loads(pickle.dumps(copy))


def test_model_pickled_before_later_parameters_gets_them():
    """An unfitted model of the version before ``solver``, ``prior``, ``accelerate`` and
    ``init`` failed with an AttributeError on get_params, clone, repr and fit; it now takes
    the values its version ran (its ``method`` as ``solver``, the fixed Gamma prior, plain
    ascent, a random start) and fits as that model made now."""
    X = _counts()
    model = vbsnmf.VBNMF(3, prior="gamma", max_iter=3, random_state=0, n_threads=1)
    unpickled = _unpickled_as_first_release(model)
    params = unpickled.get_params()
    assert (params["solver"], params["prior"], params["accelerate"], params["init"]) == (
        "batch",
        "gamma",
        False,
        "random",
    )
    assert "method" not in params and "prior='gamma'" in repr(unpickled)
    assert clone(unpickled).get_params() == params
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        fitted = unpickled.fit(X)
        fresh = vbsnmf.VBNMF(3, prior="gamma", max_iter=3, random_state=0, n_threads=1).fit(X)
    np.testing.assert_array_equal(fitted.elbo_trace_, fresh.elbo_trace_)


def test_model_fitted_by_the_first_release_not_called_unfitted():
    """A model fitted by the version that named its fitted attributes ``obs_shape_``,
    ``var_shape_``, ... said "This VBNMF instance is not fitted yet" on transform and as a
    warm start: it is told as an earlier version's fit, to fit again. Its components_
    stay readable."""
    X = _counts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.VBNMF(3, prior="gamma", max_iter=3, random_state=0, n_threads=1).fit(X)
    unpickled = _unpickled_as_first_release(model)
    np.testing.assert_array_equal(unpickled.components_, model.components_)
    for use in (unpickled.transform, lambda X: vbsnmf.VBNMF(3).fit(X, init=unpickled)):
        with pytest.raises(NotFittedError) as caught:
            use(X)
        message = str(caught.value)
        assert "fitted by an earlier version of vbsnmf" in message, message
        assert "not fitted yet" not in message


def test_model_pickled_now_unpickles_as_it_was():
    """Guard (passes on both versions): a model pickled by this version keeps its own
    parameters (none replaced by an earlier version's values) and transforms alike."""
    X = _counts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.VBNMF(3, max_iter=3, random_state=0, n_threads=1).fit(X)
        unpickled = pickle.loads(pickle.dumps(model))
        assert unpickled.get_params() == model.get_params()
        np.testing.assert_array_equal(unpickled.transform(X), model.transform(X))
