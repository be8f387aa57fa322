"""A seventh hostile pass (2026-12-05), over the command line's inputs and signals and the
Python API's: each test here failed on the code before its fix.

A stop signal or Ctrl-C that arrived while an `.h5ad` was being written (`result.h5ad`,
the conversion of an `.mtx` or 10x folder) had its handler run inside the Python methods
HDF5 calls to write (`io._write._Sink`); h5py printed the exception and dropped it with
the block, and the command went on to publish a file with rows of zeros, print "wrote",
and exit 0 (or die with a segmentation fault, or exit 1 with "driver write request
failed"). With `--force` it replaced a good output by the damaged one.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from test_hostile import FIT, N_CELLS, SVI, _counts, _main, _tree, tenx

import vbsnmf
from vbsnmf.io import _write

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# What HDF5 calls in the sink, in the order of their calls' counts.
_SINK_METHODS = ("seek", "write")
_ROUTES = {
    "result": [*FIT, "-o", "out"],
    "conversion": [*FIT, *SVI, "--convert-to", "conv.h5ad", "-o", "out"],
}
_SAID = {
    signal.SIGTERM: (143, "vbsnmf: terminated (SIGTERM); no output written\n"),
    signal.SIGINT: (130, "vbsnmf: interrupted; no output written\n"),
}


def _hook(monkeypatch, method: str, at: int, signum: int) -> list[int]:
    """Send ``signum`` to this process from inside the sink's ``method`` at its ``at``-th
    call; returns the count of calls (a list of one)."""
    calls = [0]
    original = getattr(_write._Sink, method)

    def hooked(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_write._Sink, method, hooked)
    return calls


@pytest.mark.parametrize("route", list(_ROUTES))
@pytest.mark.parametrize("method", _SINK_METHODS)
def test_a_signal_while_an_h5ad_is_written_leaves_nothing(
    route, method, tmp_path, capfd, monkeypatch
):
    source = tenx(tmp_path)
    argv = ["fit", source, *_ROUTES[route]]
    with monkeypatch.context() as counting:
        calls = _hook(counting, method, 0, signal.SIGTERM)
        code, _, err, _ = _main(argv, capfd, tmp_path)
        assert code == 0, err
    total = calls[0]
    assert total > 10  # the sink was used
    clean = _tree(tmp_path)
    shutil.rmtree(tmp_path / "out")
    (tmp_path / "conv.h5ad").unlink(missing_ok=True)
    before = _tree(tmp_path)
    for at, signum in (
        (1, signal.SIGTERM),
        (total // 2, signal.SIGINT),
        (total - 1, signal.SIGTERM),
    ):
        with monkeypatch.context() as patched:
            _hook(patched, method, at, signum)
            code, _, err, _ = _main(argv, capfd, tmp_path)
        assert (code, err) == _SAID[signum], (at, code, err[-300:])
        assert _tree(tmp_path) == before, at
    assert set(clean) > set(before)


def test_a_signal_while_force_replaces_an_output_keeps_the_old_one(tmp_path, capfd, monkeypatch):
    source = tenx(tmp_path)
    argv = ["fit", source, *FIT, "-o", "out", "--force"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == 0, err
    before = _tree(tmp_path)
    with monkeypatch.context() as patched:
        _hook(patched, "write", 5, signal.SIGTERM)
        code, _, err, _ = _main(argv, capfd, tmp_path)
    assert (code, err) == _SAID[signal.SIGTERM]
    assert _tree(tmp_path) == before


def test_ctrl_c_while_the_api_writes_a_result_raises_and_writes_nothing(tmp_path, monkeypatch):
    counts = sp.random(60, 40, density=0.3, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 5)
    adata = ad.AnnData(counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, n_components=2, max_iter=3, random_state=0)
    _hook(monkeypatch, "write", 3, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        vbsnmf.io.write_result(adata, tmp_path / "result.h5ad")
    assert list(Path(tmp_path).iterdir()) == []
    monkeypatch.undo()
    vbsnmf.io.write_result(adata, tmp_path / "result.h5ad")  # and the handlers are back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- smaller defects of the same pass: what the command line says -------------------------
def test_params_json_records_the_threads_used_not_those_asked(tmp_path, capfd):
    import json

    import numba

    code, _, err, _ = _main(
        ["fit", tenx(tmp_path), *FIT[:-3], "--threads", "100000", "--quiet", "-o", "out"],
        capfd,
        tmp_path,
    )
    assert code == 0, err
    params = json.loads((tmp_path / "out" / "params.json").read_text())
    assert params["threads"] == numba.config.NUMBA_NUM_THREADS  # capped at the cores


def test_a_loop_of_links_is_named_as_such_not_as_missing(tmp_path, capfd):
    (tmp_path / "loop.h5ad").symlink_to("loop.h5ad")
    with pytest.raises(vbsnmf.io.ReadError, match="too many levels of symbolic links"):
        vbsnmf.io.read(tmp_path / "loop.h5ad")
    for solver in ("batch", "svi"):
        argv = ["fit", "loop.h5ad", "-k", "2", "--solver", solver, "-o", "out"]
        code, _, err, _ = _main(argv, capfd, tmp_path)
        assert (code, err) == (2, "vbsnmf: error: loop.h5ad: too many levels of symbolic links\n")


def test_a_blank_line_in_a_name_file_is_not_counted_as_a_name(tmp_path):
    import gzip

    folder = tenx(tmp_path)
    barcodes = folder / "barcodes.tsv.gz"
    names = gzip.decompress(barcodes.read_bytes()).decode().splitlines()
    names[N_CELLS // 2] = ""  # one of the lines blank: N_CELLS lines, N_CELLS - 1 names
    barcodes.write_bytes(gzip.compress(("\n".join(names) + "\n").encode()))
    said = f"has {N_CELLS - 1} names but the matrix has {N_CELLS} cells"
    with pytest.raises(vbsnmf.io.ReadError, match=said):
        vbsnmf.io.read(folder)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (
            ["--layer", "counts"],
            "--layer applies to an .h5ad or .zarr input; tenx holds one matrix",
        ),
        (["--use-raw"], "--use-raw applies to an .h5ad or .zarr input; tenx holds one matrix"),
    ],
)
def test_anndata_options_on_a_matrix_input_are_refused_in_the_options_words(
    options, said, tmp_path, capfd
):
    tenx(tmp_path)
    code, _, err, _ = _main(["fit", "tenx", *FIT, *options, "-o", "out"], capfd, tmp_path)
    assert (code, err) == (2, f"vbsnmf: error: {said}\n")


def test_errors_of_an_h5ad_read_into_memory_name_the_file_and_the_options(tmp_path, capfd):
    counts = sp.random(30, 20, density=0.3, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 5)
    counts.data[0] = -1
    adata = ad.AnnData(counts, layers={"counts": counts.copy()})
    adata.write_h5ad(tmp_path / "neg.h5ad")
    for options, element in (([], "X"), (["--layer", "counts"], "layers['counts']")):
        code, _, err, _ = _main(["fit", "neg.h5ad", *FIT, *options, "-o", "o"], capfd, tmp_path)
        assert code == 2 and err.startswith(f"vbsnmf: error: neg.h5ad ({element}) must hold"), err
    argv = ["fit", "neg.h5ad", *FIT, "--layer", "counts", "--use-raw", "-o", "o"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert (code, err) == (2, "vbsnmf: error: pass either --layer or --use-raw, not both\n")


def test_umap_of_a_file_without_a_fit_names_the_file_and_the_command(tmp_path, capfd):
    ad.AnnData(_counts()).write_h5ad(tmp_path / "plain.h5ad")
    code, _, err, _ = _main(["umap", "plain.h5ad", "-o", "u.png"], capfd, tmp_path)
    assert (code, err) == (
        2,
        "vbsnmf: error: plain.h5ad holds no NMF fit or projection under --key nmf; make "
        "one with 'vbsnmf fit' (OUTDIR/result.h5ad)\n",
    )


def test_umap_replaces_a_stored_neighbour_graph_without_its_parameters():
    adata = ad.AnnData(_counts())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, n_components=2, max_iter=5, random_state=0)
    adata.uns["neighbors"] = {"params": {"method": "umap"}}  # an edited or older file
    import matplotlib

    matplotlib.use("Agg")
    vbsnmf.pl.umap(adata, show=False)
    assert adata.uns["neighbors"]["params"]["n_neighbors"] == 15
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2)


# -- the Python API -----------------------------------------------------------------------
def _poisson(shape=(30, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(3.0, shape).astype(float)


def test_the_classical_nmf_matches_genes_by_their_names_as_scikit_learn():
    import pandas as pd

    columns = [f"g{i}" for i in range(8)]
    frame = pd.DataFrame(_poisson(), columns=columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.NMF(2, max_iter=50, random_state=0).fit(frame)
    assert list(model.feature_names_in_) == columns
    with pytest.raises(ValueError, match="Feature names must be in the same order"):
        model.transform(frame[columns[::-1]])  # before, factors of the columns as they lay
    with pytest.raises(ValueError, match="Feature names unseen at fit time"):
        model.transform(frame.rename(columns={"g0": "other"}))
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        model.transform(frame.to_numpy())


def test_masked_arrays_are_refused_by_the_classical_nmf_and_the_tensor_model():
    counts = np.ma.masked_array(_poisson(), mask=np.zeros((30, 8), bool))
    counts.data[0, :4], counts.mask[0, :4] = 1e6, True  # hidden values, fitted before
    with pytest.raises(TypeError, match=r"masked array: pass the values as X\.filled"):
        vbsnmf.NMF(2, max_iter=5).fit(counts)
    values = np.ma.masked_array([1.0, 2.0, 1e6], mask=[False, False, True])
    with pytest.raises(TypeError, match="values is a masked array"):
        vbsnmf.VBNTF(2).fit(np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2]]), values, (3, 3, 3))


def test_a_large_fixed_prior_rate_is_stored_not_an_overflow():
    from vbsnmf.tl._nmf import prior_floor

    adata = ad.AnnData(_poisson((40, 20)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(adata, 3, prior="gamma", prior_rate=1e100, max_iter=5)
    assert np.all(np.isfinite(adata.obsm["X_nmf"]))
    # the floor's closed form, where the plain one does not overflow
    n, m, a, b = 3774, 16791, 1.0, 3.0
    B = (n + m) * a + b**2
    assert prior_floor(n, m, (a, b)) == pytest.approx((B - np.sqrt(B**2 - 4 * n * m * a**2)) / 2)
    assert prior_floor(n, m, (a, 1e300)) == 0.0


def test_top_genes_by_a_column_without_groups_says_so(pbmc_tiny):
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(pbmc_tiny, 3, max_iter=5, random_state=0)
    pbmc_tiny.obs["g"] = pd.Categorical([np.nan] * pbmc_tiny.n_obs, categories=["x"])
    with pytest.raises(ValueError, match=r"adata.obs\['g'\] puts no cell in a group"):
        vbsnmf.pl.top_genes(pbmc_tiny, "g", show=False)


def test_count_split_of_a_backed_x_says_to_load_it(tmp_path):
    ad.AnnData(sp.csr_matrix(_poisson())).write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    with pytest.raises(TypeError, match="counts are stored on disk"):
        vbsnmf.tl.count_split(backed.X)
    backed.file.close()


def test_tl_nmf_given_a_mask_points_to_the_estimator():
    adata = ad.AnnData(_poisson())
    with pytest.raises(ValueError, match=r"tl.nmf takes no mask .*VBNMF\(\.\.\.\)\.fit\(X, mask"):
        vbsnmf.tl.nmf(adata, 2, mask=np.zeros((30, 8)))
    assert "nmf" not in adata.uns


def test_count_split_keeps_a_sparse_arrays_kind_and_takes_float16_quietly():
    counts = _poisson()
    train, test = vbsnmf.tl.count_split(sp.csr_array(counts), random_state=0)
    assert isinstance(train, sp.csr_array) and isinstance(test, sp.csr_array)
    np.testing.assert_array_equal((train + test).toarray(), counts)
    train, _ = vbsnmf.tl.count_split(sp.csr_matrix(counts), random_state=0)
    assert isinstance(train, sp.csr_matrix) and not isinstance(train, sp.sparray)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "overflow encountered in cast" before
        train, test = vbsnmf.tl.count_split(counts.astype(np.float16), random_state=0)
    assert train.dtype == np.float16 and np.array_equal(train + test, counts)


@pytest.mark.parametrize("grid", [[], [0.5, np.nan], [[0.5]]])
def test_choose_alpha_beta_refuses_an_empty_or_non_finite_grid(grid):
    from vbsnmf.classic import choose_alpha_beta

    counts = _poisson() + 1.0
    with pytest.raises(ValueError, match="alphas must be a non-empty 1-D grid of finite"):
        choose_alpha_beta(counts, Q=counts, alphas=grid)


def test_data_dir_names_a_name_that_is_not_a_string():
    with pytest.raises(TypeError, match="name must be a data set's name"):
        vbsnmf.datasets.data_dir(5)
