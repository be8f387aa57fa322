"""Leftovers of earlier hostile passes, fixed in the twenty-first: ``VBNMF.fit(None)`` was
told "X must be 2-D, got an array of shape ()" (numpy's view of None), and a 10x folder
whose barcodes (or genes) file is a broken symbolic link or a folder was said to hold
"matrix.mtx.gz, features.tsv.gz but not barcodes.tsv.gz", which sent the user looking
for a file that is there by name. On Dask: a zarr array was called "in memory" (the advice
was ``VBNMF.fit``, which would read it whole); ``DaskFitResult.gather()`` after its client
closed failed with distributed's "Client is closed. Can't send update-graph message". And
``tl.nmf`` with the "ipg" or "gd" solver left a cell without counts at factors near zero
(1e-21), whose usages were an arbitrary mix, under a warning that called them the prior's
(a classical solver has none)."""

from __future__ import annotations

import warnings

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from test_dask import local_client
from test_hostile import FIT, _main, tenx

import vbsnmf
from vbsnmf.io import ReadError, UnsafePathError

# short fits on purpose: their ConvergenceWarning says nothing here
pytestmark = pytest.mark.filterwarnings("ignore:(VB|SVI) stopped after")


@pytest.mark.parametrize(
    "estimator",
    [vbsnmf.VBNMF(2), vbsnmf.VBNMF(2, solver="svi"), vbsnmf.NMF(2)],
    ids=["batch", "svi", "classic"],
)
def test_fit_of_none_says_none(estimator):
    # the classical NMF went through scikit-learn's check: "got scalar array ... array=nan"
    with pytest.raises(TypeError, match=r"^X is None: pass a count matrix \(cells x genes\)$"):
        estimator.fit(None)


def test_transform_of_none_says_none():
    counts = sp.csr_matrix(np.random.default_rng(0).poisson(1.5, (20, 8)).astype(np.float64))
    model = vbsnmf.VBNMF(2, max_iter=5, tol=0, random_state=0, n_threads=1).fit(counts)
    with pytest.raises(TypeError, match=r"^X is None"):
        model.transform(None)


@pytest.mark.parametrize("damage", ["broken_link", "folder"])
@pytest.mark.parametrize("name", ["barcodes.tsv.gz", "features.tsv.gz"])
def test_a_name_file_that_is_no_file_is_named_as_such(tmp_path, capfd, damage, name):
    folder = tenx(tmp_path)
    (folder / name).unlink()
    if damage == "broken_link":
        (folder / name).symlink_to(tmp_path / "gone" / name)
        expected = f"{name} is a broken symbolic link (to {tmp_path / 'gone' / name})"
    else:
        (folder / name).mkdir()
        expected = f"{name} is not a file"
    with pytest.raises(ReadError) as raised:
        vbsnmf.io.read(folder)
    assert str(raised.value).endswith(expected), raised.value
    code, _, err, _ = _main(["fit", folder, *FIT, "-o", tmp_path / "out"], capfd, tmp_path)
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fit", ["fit_dask", "fit_svi_dask"])
def test_a_zarr_array_is_told_to_read_as_dask(fit):
    import zarr  # anndata's dependency, so installed wherever vbsnmf is

    counts = np.random.default_rng(0).poisson(1.5, (20, 8)).astype(np.float64)
    stored = zarr.array(counts)
    with local_client(1, processes=False):
        with pytest.raises(TypeError, match=r"X is a zarr array .*dask\.array\.from_zarr\(X\)"):
            getattr(vbsnmf, fit)(stored, 2)
        # the advice fits, as the counts themselves do
        lazy = da.from_zarr(stored).rechunk((10, 8))
        advised = vbsnmf.fit_dask(lazy, 2, max_iter=3, tol=0, random_state=0).gather()
        direct = vbsnmf.fit_dask(da.from_array(counts, chunks=(10, 8)), 2, max_iter=3, tol=0,
                                 random_state=0).gather()  # fmt: skip
    np.testing.assert_array_equal(advised.col_shape, direct.col_shape)


@pytest.mark.parametrize("fit", ["fit_dask", "fit_svi_dask"])
def test_gather_after_the_client_closed_says_so(fit):
    counts = np.random.default_rng(0).poisson(1.5, (20, 8)).astype(np.float64)
    with local_client(1, processes=False) as client:
        passes = {"fit_dask": {"max_iter": 3}, "fit_svi_dask": {"n_epochs": 2}}[fit]
        result = getattr(vbsnmf, fit)(da.from_array(counts, chunks=(10, 8)), 2, random_state=0,
                                      client=client, **passes)  # fmt: skip
        open_gathered = result.gather()
    assert open_gathered.row_shape.shape == (20, 2)  # gathered while open: numpy
    with pytest.raises(ValueError, match=r"client that holds the fit's cells is closed"):
        result.gather()


@pytest.mark.parametrize("solver", ["ipg", "gd", "mu", "hals", "als"])
def test_classical_fits_leave_cells_without_counts_at_zero(solver):
    """The factors: "mu", "hals" and "als" reached zero before, "ipg" and "gd" did not;
    and all five were told their factors were the prior's."""
    counts = np.random.default_rng(0).poisson(1.5, (30, 12)).astype(np.float32)
    counts[:2] = 0
    adata = ad.AnnData(sp.csr_matrix(counts))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vbsnmf.tl.nmf(adata, 3, solver=solver, random_state=0, max_iter=50)
    (empty,) = [str(w.message) for w in caught if "no counts in the fitted genes" in str(w.message)]
    assert empty.startswith("2 of the 30 cells have no counts in the fitted genes; their "
                            "factors and usages are zero: drop them")  # fmt: skip
    for entry in ("X_nmf", "X_nmf_usage", "X_nmf_sqrt_usage"):
        assert not adata.obsm[entry][:2].any(), entry
    # the cells with counts: usages that sum to one, as before
    np.testing.assert_allclose(adata.obsm["X_nmf_usage"][2:].sum(axis=1), 1.0)


def test_variational_fits_still_call_them_the_priors():
    counts = np.random.default_rng(0).poisson(1.5, (30, 12)).astype(np.float32)
    counts[:2] = 0
    adata = ad.AnnData(sp.csr_matrix(counts))
    with pytest.warns(UserWarning, match=r"their factors are the prior's \(the same for each\)"):
        vbsnmf.tl.nmf(adata, 3, random_state=0, max_iter=20)
    np.testing.assert_array_equal(adata.obsm["X_nmf"][0], adata.obsm["X_nmf"][1])


def _small_counts() -> sp.csr_matrix:
    return sp.csr_matrix(np.random.default_rng(0).poisson(1.5, (30, 12)).astype(np.float64))


@pytest.mark.parametrize("solver", ["batch", "svi"])
def test_a_fresh_fit_over_a_saved_checkpoint_warns_at_the_users_line(tmp_path, solver):
    path = tmp_path / "fit.ckpt"
    settings = dict(solver=solver, max_iter=5, n_epochs=2, random_state=0, checkpoint=path)
    vbsnmf.VBNMF(2, **settings).fit(_small_counts())
    with pytest.warns(
        UserWarning,
        match=r"holds a saved fit, which this fit overwrites \(resume=False\): pass resume=True",
    ) as caught:
        vbsnmf.VBNMF(2, **settings).fit(_small_counts())
    (overwrite,) = [w for w in caught if "holds a saved fit" in str(w.message)]
    assert overwrite.filename == __file__
    # resumed: no such warning, and the fit is the saved one's continuation
    with warnings.catch_warnings(record=True) as resumed:
        warnings.simplefilter("always")
        vbsnmf.VBNMF(2, **settings, resume=True).fit(_small_counts())
    assert not [w for w in resumed if "holds a saved fit" in str(w.message)]


def test_a_fresh_tensor_fit_over_a_saved_checkpoint_warns(tmp_path):
    rng = np.random.default_rng(0)
    coords = np.stack([rng.integers(0, n, 200) for n in (10, 8, 4)], axis=1)
    settings = dict(max_iter=5, random_state=0, checkpoint=tmp_path / "fit.ckpt")
    vbsnmf.VBNTF(2, **settings).fit(coords)
    with pytest.warns(UserWarning, match=r"holds a saved fit, which this fit overwrites"):
        vbsnmf.VBNTF(2, **settings).fit(coords)


def test_the_command_line_names_the_option(tmp_path, capfd):
    folder = tenx(tmp_path)
    fit = ["fit", folder, "-k", "2", "--max-iter", "3", "--threads", "1"]
    checkpoint = ["--checkpoint", tmp_path / "fit.ckpt"]
    code, _, err, _ = _main([*fit, *checkpoint, "-o", tmp_path / "a"], capfd, tmp_path)
    assert code == 0 and "holds a saved fit" not in err, err
    code, _, err, _ = _main([*fit, *checkpoint, "-o", tmp_path / "b"], capfd, tmp_path)
    assert code == 0, err
    assert (
        "vbsnmf: warning: checkpoint " in err
        and "holds a saved fit, which this fit overwrites (without --resume): pass --resume to "
        "continue that fit instead"
        in err
    ), err


def test_a_file_name_ending_with_a_separator_is_refused(tmp_path):
    """``write_result("new/")`` wrote a file ``new`` (pathlib drops the separator)."""
    adata = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    with pytest.raises(UnsafePathError, match=r"names a folder; name a file"):
        vbsnmf.io.write_result(adata, f"{tmp_path}/new/")
    counts = tmp_path / "counts.mtx"
    counts.write_text("%%MatrixMarket matrix coordinate integer general\n2 2 1\n1 1 3\n")
    with pytest.raises(UnsafePathError, match=r"names a folder; name a file"):
        vbsnmf.io.mtx_to_h5ad(counts, f"{tmp_path}/converted/")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts.mtx"]
    # a file's name writes as before
    assert vbsnmf.io.write_result(adata, tmp_path / "new.h5ad").is_file()
