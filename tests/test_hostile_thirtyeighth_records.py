"""Thirty-eighth hostile pass, second wave: records that claim to replay a fit.

`tl.nmf` records its settings in ``.uns['nmf']['params']``, and the documented replay is
``tl.nmf(adata, **params)``. Six defects, each test of them failing on the code before
its fix (one guard, which says so, passes before too). A classical solver given a
``RandomState`` (and any solver given None) recorded no seed, so a replay fitted the
default seed 0: another fit, silently (a Generator's, and a variational fit's
``RandomState``, were recorded since the 32nd pass; now the integer drawn from each is,
also None's fresh entropy). `tl.select_k(random_state=None)` likewise recorded no seed for
its split and fits. Settings an ``.h5ad`` cannot hold (``weights``, ``factor_mask``, an
array ``mask_var``) were left out of the record without a trace, and the replay fitted
without them; now the record names them (``unrecorded``) and a replay is refused until
they are given again. ``warm_start`` and ``min_share`` were left out too (a replay fitted
from the start, or marked other factors active). And the versions a classical fit records
left out scikit-learn, whose randomized SVD and random draws make its start.
"""

from __future__ import annotations

import json
import warnings
from importlib.metadata import version

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from test_library_versions import _checkout_commit

import vbsnmf
from vbsnmf import cli


def _counts(n_cells=50, n_genes=20, seed=0):
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1.0, 1.0, (n_cells, 3)) @ rng.gamma(1.0, 1.0, (3, n_genes))
    return sp.csr_matrix(rng.poisson(rates).astype(np.float64))


COUNTS = _counts()


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _adata():
    adata = ad.AnnData(COUNTS.copy())
    adata.obs_names = [f"c{i}" for i in range(COUNTS.shape[0])]
    adata.var_names = [f"g{j}" for j in range(COUNTS.shape[1])]
    return adata


def _replayed(params: dict) -> ad.AnnData:
    replayed = _adata()
    vbsnmf.tl.nmf(replayed, **params)
    return replayed


@pytest.mark.parametrize(
    ("solver", "params", "seed"),
    [
        ("mu", {"max_iter": 20}, lambda: np.random.RandomState(4)),
        ("hals", {"max_iter": 20, "init": "random"}, lambda: np.random.RandomState(4)),
        ("mu", {"max_iter": 20}, lambda: None),
        ("batch", {"max_iter": 5}, lambda: None),
        ("svi", {"n_epochs": 2}, lambda: None),
    ],
)
def test_tl_nmf_records_the_seed_it_drew_and_the_record_replays(solver, params, seed, tmp_path):
    """The record of a fit seeded by a RandomState (a classical solver's) or None holds the
    integer drawn, and the record read back from an .h5ad replays the fit bit for bit (it
    held no seed, and the replay fitted seed 0)."""
    fitted, state = _adata(), seed()
    if state is not None:  # the seed drawn from it is put back when the fit is refused
        before = state.get_state()[1].copy()
        with pytest.raises(ValueError):
            vbsnmf.tl.nmf(_adata(), 3, solver=solver, random_state=state, max_iter=-1)
        np.testing.assert_array_equal(state.get_state()[1], before)
    vbsnmf.tl.nmf(fitted, 3, solver=solver, random_state=state, n_threads=1, **params)
    assert "random_state" in fitted.uns["nmf"]["params"]
    fitted.write_h5ad(tmp_path / "fit.h5ad")
    recorded = dict(ad.read_h5ad(tmp_path / "fit.h5ad").uns["nmf"]["params"])
    replayed = _replayed(recorded)
    np.testing.assert_array_equal(replayed.obsm["X_nmf"], fitted.obsm["X_nmf"])
    np.testing.assert_array_equal(replayed.varm["NMF"], fitted.varm["NMF"])


def test_two_fits_of_none_are_two_fits_each_recorded():
    """None is still fresh entropy (two fits differ), and each fit records its own."""
    first, second = _adata(), _adata()
    for adata in (first, second):
        vbsnmf.tl.nmf(adata, 3, solver="mu", random_state=None, max_iter=10)
    seeds = [adata.uns["nmf"]["params"]["random_state"] for adata in (first, second)]
    assert seeds[0] != seeds[1]
    # a fit of settings the record holds names none unrecorded
    assert "unrecorded" not in first.uns["nmf"]["params"]
    assert not np.array_equal(first.obsm["X_nmf"], second.obsm["X_nmf"])


def test_a_checkpointed_none_fit_resumes_by_the_same_call(tmp_path):
    """Guard (passes on the code before too): with a checkpoint, None is passed on (not
    drawn in tl.nmf), so the same call with resume=True continues the checkpoint rather
    than being refused as another fit's."""
    checkpoint = tmp_path / "fit.npz"

    def interrupt(n_iter, params, trace):
        if n_iter == 3:
            raise KeyboardInterrupt

    kw = dict(random_state=None, max_iter=6, n_threads=1, checkpoint=checkpoint)
    with pytest.raises(KeyboardInterrupt):
        vbsnmf.tl.nmf(_adata(), 3, callback=interrupt, **kw)
    resumed = _adata()
    vbsnmf.tl.nmf(resumed, 3, resume=True, **kw)
    assert resumed.uns["nmf"]["n_iter"] == 6


def test_select_k_records_none_s_seed_and_replays(tmp_path):
    """select_k(random_state=None) records the seed its split and fits took: the record
    read back replays the table (it held none)."""
    adata = _adata()
    table = vbsnmf.tl.select_k(adata, [1, 2], random_state=None, max_iter=5, n_threads=1)
    adata.write_h5ad(tmp_path / "k.h5ad")
    params = dict(ad.read_h5ad(tmp_path / "k.h5ad").uns["nmf_k_selection"]["params"])
    assert "random_state" in params
    params["ks"] = [int(k) for k in params["ks"]]
    again = vbsnmf.tl.select_k(_adata(), **params)
    np.testing.assert_array_equal(
        again["heldout_ll_per_count"].to_numpy(), table["heldout_ll_per_count"].to_numpy()
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("weights", np.random.default_rng(1).uniform(0.2, 1.0, COUNTS.shape)),
        ("factor_mask", {"H": np.tile([1.0, 1.0, 0.0], (COUNTS.shape[1], 1)).T}),
        ("mask_var", np.arange(COUNTS.shape[1]) % 3 != 0),
    ],
)
def test_a_record_without_its_arrays_says_so_and_its_replay_is_refused(name, value, tmp_path):
    """weights, factor_mask and an array mask_var, which the record cannot hold, are named
    in it; a replay that does not give them again is refused by name (it fitted without
    them, silently: all the genes for a mask_var); given again, the replay is the fit."""
    fitted = _adata()
    vbsnmf.tl.nmf(fitted, 3, solver="mu", max_iter=20, n_threads=1, **{name: value})
    fitted.write_h5ad(tmp_path / "fit.h5ad")
    recorded = dict(ad.read_h5ad(tmp_path / "fit.h5ad").uns["nmf"]["params"])
    assert list(recorded["unrecorded"]) == [name]
    with pytest.raises(ValueError, match=f"given {name}.*pass {name} again"):
        _replayed(recorded)
    del recorded["unrecorded"]
    replayed = _replayed({**recorded, name: value})
    np.testing.assert_array_equal(replayed.obsm["X_nmf"], fitted.obsm["X_nmf"])
    assert list(replayed.uns["nmf"]["params"]["unrecorded"]) == [name]  # named again


def _versions(classic: bool) -> dict[str, str]:
    names = ["numpy", "scipy", "numba", "llvmlite", "anndata"]
    names += ["scikit-learn"] if classic else []
    # run from a git checkout, the commit too (as git names it: test_library_versions)
    commit = _checkout_commit()
    return {"vbsnmf": vbsnmf.__version__} | commit | {name: version(name) for name in names}


def test_a_classical_fit_records_scikit_learn_s_version():
    """A classical fit's start is scikit-learn's (randomized SVD, random draws): its record
    names scikit-learn's version; a variational fit's does not depend on it."""
    classic, variational = _adata(), _adata()
    vbsnmf.tl.nmf(classic, 2, solver="mu", max_iter=5)
    vbsnmf.tl.nmf(variational, 2, max_iter=3)
    assert classic.uns["nmf"]["versions"] == _versions(classic=True)
    assert variational.uns["nmf"]["versions"] == _versions(classic=False)


def test_params_json_of_a_classical_fit_names_scikit_learn(tmp_path, capsys):
    """The command line's params.json records the versions the fit's record names."""
    _adata().write_h5ad(tmp_path / "in.h5ad")
    argv = ["fit", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "out"), "-k", "2"]
    code = cli.main([*argv, "--solver", "mu", "--max-iter", "5"])
    capsys.readouterr()
    assert code == 0
    params = json.loads((tmp_path / "out" / "params.json").read_text())
    assert params["versions"] == _versions(classic=True)


def test_a_warm_started_fit_s_record_says_so():
    """The record of a warm-started fit holds warm_start=True: its replay on the counts
    alone is refused for want of the fit it continued (it fitted from the start: another
    fit, no word), and on the AnnData that held that fit it is that fit again."""
    start = _adata()
    vbsnmf.tl.nmf(start, 3, max_iter=3, n_threads=1)
    before = start.copy()
    vbsnmf.tl.nmf(start, 3, max_iter=3, n_threads=1, warm_start=True)
    recorded = dict(start.uns["nmf"]["params"])
    assert recorded["warm_start"] is True
    with pytest.raises(ValueError, match=r"warm_start: adata\.uns has no fit"):
        _replayed(recorded)
    vbsnmf.tl.nmf(before, **recorded)
    np.testing.assert_array_equal(before.obsm["X_nmf"], start.obsm["X_nmf"])


def test_min_share_is_recorded_and_replays_the_active_factors():
    """min_share is a setting of the record (it was not: a replay drew the default
    threshold and marked other factors active)."""
    fitted = _adata()
    vbsnmf.tl.nmf(fitted, 3, max_iter=5, n_threads=1, min_share=0.45)
    recorded = dict(fitted.uns["nmf"]["params"])
    assert recorded["min_share"] == 0.45
    replayed = _replayed(recorded)
    assert replayed.uns["nmf"]["min_share"] == fitted.uns["nmf"]["min_share"] == 0.45
    np.testing.assert_array_equal(replayed.uns["nmf"]["active"], fitted.uns["nmf"]["active"])
