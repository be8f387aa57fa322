"""Defects found by the eleventh hostile pass: `transform` and `tl.project` stopping cells
at ``max_iter`` in silence, `tl.select_k` fitting before refusing settings that record no
ELBO (and blaming SQUAREM for them), `tl.select_k` and `tl.project` writing into views,
and `fit --force` deleting a symbolic link given as OUTDIR."""

from __future__ import annotations

import contextlib
import io
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from anndata import ImplicitModificationWarning

import vbsnmf
from vbsnmf import cli, tl


def _counts(n_cells: int = 60, n_genes: int = 40) -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    matrix = sp.random(
        n_cells, n_genes, density=0.3, random_state=0, data_rvs=lambda n: rng.integers(1, 9, n)
    )
    return matrix.tocsr().astype(float)


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return function(*args, **kwargs)


def _convergence_messages(function, *args, **kwargs) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args, **kwargs)
    found = [str(w.message) for w in caught if issubclass(w.category, vbsnmf.ConvergenceWarning)]
    return result, found


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_transform_warns_for_the_cells_stopped_at_max_iter(prior):
    """VBNMF's docstring promised a ConvergenceWarning when a cell's local fit stops at
    max_iter; none came, and one pass left factors up to 7.9x off their converged values.
    A batch warns exactly when one of its cells, transformed alone, would, and counts
    them."""
    X = _counts()
    model = _quiet(vbsnmf.VBNMF(4, prior=prior, max_iter=300, random_state=0, n_threads=1).fit, X)
    _, messages = _convergence_messages(model.transform, X)
    assert messages == []  # the default max_iter: every cell settles
    model.set_params(max_iter=6)
    alone = [_convergence_messages(model.transform, X[i : i + 1]) for i in range(X.shape[0])]
    n_unsettled = sum(bool(found) for _, found in alone)
    assert 0 < n_unsettled < X.shape[0]  # the case that tells a count from a flag
    batch, messages = _convergence_messages(model.transform, X)
    assert messages == [
        f"the local fit stopped {n_unsettled} of {X.shape[0]} cells after max_iter=6 passes "
        f"before their relative ELBO change fell below tol={model.tol}; raise max_iter or tol."
    ]
    np.testing.assert_array_equal(batch, np.vstack([factors for factors, _ in alone]))


def test_project_warns_for_the_cells_stopped_at_max_iter():
    X = _counts()
    reference = ad.AnnData(X.copy())
    reference.var_names = [f"g{j}" for j in range(X.shape[1])]
    _quiet(tl.nmf, reference, 3, max_iter=50, random_state=0, n_threads=1)
    new = ad.AnnData(X[:20].copy(), var=reference.var[[]])
    _, messages = _convergence_messages(tl.project, new, reference, max_iter=1, n_threads=1)
    assert len(messages) == 1 and "stopped 20 of 20 cells after max_iter=1" in messages[0]
    assert "X_nmf" in new.obsm  # written all the same, as a fit at max_iter is
    _, messages = _convergence_messages(tl.project, new, reference, n_threads=1)
    assert messages == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"prior": "gamma", "max_iter": 0}, r"max_iter=0 runs no pass"),
        ({"prior": "hierarchical", "accelerate": True, "max_iter": 1}, r"SQUAREM's first pass"),
    ],
)
def test_select_k_refuses_settings_that_record_no_elbo_before_fitting(settings, message):
    """select_k(max_iter=0) fitted all the counts and the train half at the first K, then
    said "SQUAREM's first pass scores only the start", under a prior SQUAREM was off for.
    Such settings are refused before any fit, with their own reason."""
    adata = ad.AnnData(_counts())
    with pytest.raises(ValueError, match=message):
        tl.select_k(adata, [2, 3], random_state=0, n_threads=1, **settings)
    assert not adata.uns


def test_select_k_takes_one_pass_of_plain_ascent():
    adata = ad.AnnData(_counts())
    table = _quiet(tl.select_k, adata, [2], prior="gamma", max_iter=1, n_threads=1)
    assert table["n_iter"].tolist() == [1] and np.isfinite(table["elbo"]).all()


def test_select_k_and_project_write_into_views_without_anndata_warnings():
    """tl.nmf makes a view its own AnnData before writing (as scanpy's tools do);
    tl.select_k and tl.project wrote into the view, and anndata's
    ImplicitModificationWarning reached the user."""
    adata = ad.AnnData(_counts(120))
    adata.var_names = [f"g{j}" for j in range(adata.n_vars)]
    _quiet(tl.nmf, adata, 2, max_iter=20, random_state=0, n_threads=1)

    def implicit(call):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        return [w for w in caught if issubclass(w.category, ImplicitModificationWarning)]

    selected = adata[:60]
    assert implicit(lambda: _quiet(tl.select_k, selected, [1, 2], max_iter=5, n_threads=1)) == []
    assert not selected.is_view and "nmf_k_selection" in selected.uns
    projected = adata[60:]
    assert implicit(lambda: tl.project(projected, adata, key_added="proj", n_threads=1)) == []
    assert not projected.is_view and "X_proj" in projected.obsm
    assert "X_proj" not in adata.obsm  # the parent is left alone


def _fit_into(folder, outdir, *options) -> int:
    """`vbsnmf fit` of a small .h5ad in ``folder`` into ``outdir``; its exit code."""
    matrix = folder / "in.h5ad"
    if not matrix.exists():
        ad.AnnData(_counts(30, 20)).write_h5ad(matrix)
    arguments = ["fit", str(matrix), "-k", "2", "--max-iter", "2", "--quiet", "-o", str(outdir)]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return cli.main([*arguments, *options])


def test_fit_force_writes_through_a_symlinked_outdir(tmp_path):
    """`fit -o LINK --force`, LINK a symbolic link to an earlier output on another disk:
    the folder swap replaced the link itself, so the link was deleted, a new folder made
    in its place, and the old output left stale where it pointed, while the command said
    it succeeded. The output is now written where the link points, as `atomic_file`
    writes through a link to a file."""
    target = tmp_path / "bigdisk" / "out"
    target.mkdir(parents=True)
    (target / "params.json").write_text('{"old": true}\n')
    link = tmp_path / "out"
    link.symlink_to(target)
    assert _fit_into(tmp_path, link, "--force") == 0
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert "old" not in (target / "params.json").read_text()
    assert (target / "result.h5ad").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bigdisk", "in.h5ad", "out"]


def test_fit_into_a_dangling_symlink_makes_its_target(tmp_path):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "made")
    assert _fit_into(tmp_path, link) == 0
    assert link.is_symlink() and (tmp_path / "made" / "result.h5ad").is_file()
