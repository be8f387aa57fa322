"""Thirty-second hostile pass, second wave: reproducibility and agreement across entry points.

Three defects, each test of them failing on the code before its fix. `tl.nmf` given a
`numpy.random.Generator` (or a ``RandomState``) as ``random_state`` recorded no seed in
``.uns['nmf']['params']``, so a replay of the record, ``tl.nmf(adata, **params)``, fitted
the default seed 0: another fit, silently. And a fit drew its seed from a Generator before
anything could fail, so a fit that raised (an X refused, a missing Dask client, Ctrl-C)
left the Generator advanced: the same estimator set to ``resume=True`` after an
interrupted fit was refused as "written by a different fit", although the docs say a
Generator in the state it had at the first fit resumes it, and a fit retried after a
refused X was another fit than a fresh Generator's (`VBNMF`, `fit_dask`, `tl.nmf`,
`VBNTF`). And a seed from 2**63 on (numpy's advice for a fresh seed is
``secrets.randbits(128)``), which `tl.nmf` records as its decimal digits, was refused when
the record was replayed.

The other tests are guards that pass on the code before the fixes too (the pass found the
behaviour as documented); each says so. They pin that the same counts and seed give the
same fit bit for bit through `VBNMF.fit` (any sparse format, dense, explicit zeros,
duplicates, unsorted indices, integer seeds of any numpy type), `tl.nmf` in memory and
backed, `fit_triplets` and the command line's `fit` of an ``.mtx``, an ``.h5ad`` and a 10x
folder; that float32 and float64 traces agree to float32's precision; that a fit
recorded by `tl.nmf` (dtype, prior, SVI, a gene mask) replays bit for bit from the record
written to and read back from an ``.h5ad``; and that a seed object numpy would take but
the docs do not name (``SeedSequence``) is refused by name.
"""

from __future__ import annotations

import gzip
import json
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import vbsnmf
from vbsnmf import VBNMF, VBNTF
from vbsnmf.cli import main as cli_main


def _counts(n_cells=60, n_genes=25, seed=0):
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1.0, 1.0, (n_cells, 3)) @ rng.gamma(1.0, 1.0, (3, n_genes))
    return sp.csr_matrix(rng.poisson(rates).astype(np.float64))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _adata(X):
    adata = ad.AnnData(X.copy())
    adata.obs_names = [f"c{i}" for i in range(X.shape[0])]
    adata.var_names = [f"g{j}" for j in range(X.shape[1])]
    return adata


def _interrupt_at(n_stop):
    def callback(n_iter, params, trace):
        if n_iter == n_stop:
            raise KeyboardInterrupt

    return callback


# -- the defects -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("solver", "params", "make_seed"),
    [
        ("batch", {"max_iter": 10}, lambda: np.random.default_rng(4)),
        ("batch", {"max_iter": 10}, lambda: np.random.RandomState(4)),
        ("svi", {"n_epochs": 2}, lambda: np.random.default_rng(4)),
        ("mu", {"max_iter": 20}, lambda: np.random.default_rng(4)),
    ],
)
def test_tl_nmf_records_the_seed_a_generator_gave(solver, params, make_seed):
    """The record of a Generator's (a variational fit's RandomState's) fit replays it."""
    adata = _adata(_counts())
    fitted = adata.copy()
    vbsnmf.tl.nmf(fitted, 3, solver=solver, random_state=make_seed(), n_threads=1, **params)
    recorded = dict(fitted.uns["nmf"]["params"])
    assert isinstance(recorded.get("random_state"), int)
    replayed = adata.copy()
    vbsnmf.tl.nmf(replayed, **recorded)
    np.testing.assert_array_equal(replayed.obsm["X_nmf"], fitted.obsm["X_nmf"])


def test_a_seed_beyond_int64_replays_from_its_record(tmp_path):
    """A 128-bit seed (numpy's advice: ``secrets.randbits(128)``) is recorded as its
    decimal digits, which an .h5ad can store; the record read back replays the fit (it
    was refused as a string). A short string of digits is still refused."""
    adata = _adata(_counts())
    fitted = adata.copy()
    seed = 0x9F3C_5E21_77AB_0C4D_1E2F_3A4B_5C6D_7E8F
    vbsnmf.tl.nmf(fitted, 3, random_state=seed, max_iter=5, n_threads=1)
    fitted.write_h5ad(tmp_path / "fit.h5ad")
    recorded = dict(ad.read_h5ad(tmp_path / "fit.h5ad").uns["nmf"]["params"])
    assert recorded["random_state"] == str(seed)
    replayed = adata.copy()
    vbsnmf.tl.nmf(replayed, **recorded)
    np.testing.assert_array_equal(replayed.obsm["X_nmf"], fitted.obsm["X_nmf"])
    assert replayed.uns["nmf"]["params"]["random_state"] == str(seed)
    with pytest.raises(TypeError, match="random_state must be"):
        vbsnmf.tl.nmf(adata.copy(), 3, random_state="3", max_iter=2)


def test_tl_nmf_with_a_generator_is_the_fit_it_was():
    """Guard (passes before the fix too): drawing the seed in tl.nmf keeps the fit that
    VBNMF makes from the same Generator, bit for bit."""
    X = _counts()
    adata = _adata(X)
    vbsnmf.tl.nmf(adata, 3, random_state=np.random.default_rng(4), max_iter=10, n_threads=1)
    model = VBNMF(3, random_state=np.random.default_rng(4), max_iter=10, n_threads=1).fit(X)
    np.testing.assert_array_equal(adata.varm["NMF"], model.components_.T)
    np.testing.assert_array_equal(adata.uns["nmf"]["elbo_trace"], model.elbo_trace_)


@pytest.mark.parametrize("prior", ["hierarchical", "gamma"])
def test_an_interrupted_generator_fit_resumes_by_the_same_estimator(tmp_path, prior):
    """After Ctrl-C, ``set_params(resume=True).fit(X)`` continues the checkpoint (it was
    refused as another fit: the interrupted fit had advanced the Generator) and ends
    where the uninterrupted fit ends, bit for bit."""
    X = _counts()
    kw = dict(max_iter=12, n_threads=1, prior=prior)
    whole = VBNMF(3, random_state=np.random.default_rng(2), **kw).fit(X)
    model = VBNMF(3, random_state=np.random.default_rng(2), checkpoint=tmp_path / "c.npz", **kw)
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, callback=_interrupt_at(5))
    model.set_params(resume=True).fit(X)
    np.testing.assert_array_equal(model.components_, whole.components_)
    np.testing.assert_array_equal(model.elbo_trace_, whole.elbo_trace_)


def test_a_refused_x_leaves_the_generator_as_it_was():
    """A fit retried after its X was refused is the fit of a fresh Generator; a fit that
    succeeds still advances it (a second fit is another fit)."""
    X = _counts()
    negative = X.copy()
    negative.data[0] = -1.0
    generator = np.random.default_rng(2)
    with pytest.raises(ValueError, match="non-negative"):
        VBNMF(3, random_state=generator, max_iter=5, n_threads=1).fit(negative)
    retried = VBNMF(3, random_state=generator, max_iter=5, n_threads=1).fit(X)
    fresh = VBNMF(3, random_state=np.random.default_rng(2), max_iter=5, n_threads=1).fit(X)
    np.testing.assert_array_equal(retried.components_, fresh.components_)
    second = VBNMF(3, random_state=generator, max_iter=5, n_threads=1).fit(X)
    assert not np.array_equal(second.components_, fresh.components_)


def test_a_randomstate_is_left_as_it_was_by_a_failed_fit():
    """The same for a RandomState, through fit_transform."""
    X = _counts()
    state = np.random.RandomState(3)
    before = state.get_state()[1].copy()
    with pytest.raises(ValueError):
        VBNMF(3, random_state=state, max_iter=5).fit_transform(X.toarray() - 1.0)
    np.testing.assert_array_equal(state.get_state()[1], before)


def test_fit_dask_without_a_client_leaves_the_generator():
    """fit_dask refused for want of a client drew nothing that counts."""
    da = pytest.importorskip("dask.array")
    pytest.importorskip("distributed")
    from distributed import default_client

    try:
        default_client()
    except ValueError:
        pass
    else:  # pragma: no cover - another test left a client
        pytest.skip("a default Dask client exists")
    generator = np.random.default_rng(6)
    expected = np.random.default_rng(6).integers(2**63)
    X = da.from_array(_counts().toarray(), chunks=(30, 25))
    with pytest.raises(ValueError, match="client"):
        vbsnmf.fit_dask(X, n_components=3, random_state=generator)
    assert generator.integers(2**63) == expected


def test_tl_nmf_interrupted_leaves_the_generator():
    """tl.nmf draws the seed it records; a fit that raises gives the draw back."""
    adata = _adata(_counts())
    generator = np.random.default_rng(8)
    with pytest.raises(KeyboardInterrupt):
        vbsnmf.tl.nmf(
            adata, 3, random_state=generator, max_iter=10, callback=_interrupt_at(3), n_threads=1
        )
    assert "nmf" not in adata.uns
    vbsnmf.tl.nmf(adata, 3, random_state=generator, max_iter=10, n_threads=1)
    fresh = _adata(_counts())
    vbsnmf.tl.nmf(fresh, 3, random_state=np.random.default_rng(8), max_iter=10, n_threads=1)
    np.testing.assert_array_equal(adata.obsm["X_nmf"], fresh.obsm["X_nmf"])
    assert (
        adata.uns["nmf"]["params"]["random_state"] == (fresh.uns["nmf"]["params"]["random_state"])
    )


def test_an_interrupted_tensor_fit_resumes_by_the_same_estimator(tmp_path):
    """VBNTF's docs promise the same resume with a Generator; it was refused too."""
    rng = np.random.default_rng(0)
    tensor = rng.poisson(0.8, (12, 9, 7)).astype(float)
    coords, values = np.argwhere(tensor), tensor[tensor != 0]
    kw = dict(max_iter=10, n_threads=1, prior="gamma")
    whole = VBNTF(3, random_state=np.random.default_rng(2), **kw).fit(coords, values, tensor.shape)
    model = VBNTF(3, random_state=np.random.default_rng(2), checkpoint=tmp_path / "t.npz", **kw)
    with pytest.raises(KeyboardInterrupt):
        model.fit(coords, values, tensor.shape, callback=_interrupt_at(4))
    model.set_params(resume=True).fit(coords, values, tensor.shape)
    np.testing.assert_array_equal(model.elbo_trace_, whole.elbo_trace_)


# -- guards: agreement across entry points ---------------------------------------------------


def test_the_same_counts_in_any_form_give_the_same_fit_bit_for_bit():
    """Guard (passes before the fixes too): formats, dtypes, explicit zeros, duplicates,
    unsorted indices and numpy integer seeds are the same fit as a CSR of float64."""
    X = _counts()
    kw = dict(max_iter=8, n_threads=1)
    reference = VBNMF(3, random_state=3, **kw).fit(X)
    coo = X.tocoo()
    half = np.floor(coo.data / 2)
    duplicated = sp.coo_matrix(
        (np.r_[half, coo.data - half], (np.r_[coo.row, coo.row], np.r_[coo.col, coo.col])),
        shape=X.shape,
    )
    unsorted = X.copy()
    for i in range(X.shape[0]):
        first, last = unsorted.indptr[i], unsorted.indptr[i + 1]
        unsorted.indices[first:last] = unsorted.indices[first:last][::-1].copy()
        unsorted.data[first:last] = unsorted.data[first:last][::-1].copy()
    unsorted.has_sorted_indices = False
    forms = {
        "csc": X.tocsc(),
        "coo": coo,
        "dense int32": X.toarray().astype(np.int32),
        "csr float32": X.astype(np.float32),
        "csr_array": sp.csr_array(X),
        "duplicates": duplicated,
        "unsorted": unsorted,
    }
    for name, form in forms.items():
        fitted = VBNMF(3, random_state=3, **kw).fit(form)
        assert np.array_equal(fitted.components_, reference.components_), name
        assert np.array_equal(fitted.elbo_trace_, reference.elbo_trace_), name
    thinned = X.copy()
    thinned.data[::5] = 0.0  # explicit zeros, as a filter that zeroes entries leaves them
    pruned = thinned.copy()
    pruned.eliminate_zeros()
    np.testing.assert_array_equal(
        VBNMF(3, random_state=3, **kw).fit(thinned).components_,
        VBNMF(3, random_state=3, **kw).fit(pruned).components_,
    )
    for seed in (np.int64(3), np.uint8(3), np.int16(3)):
        fitted = VBNMF(3, random_state=seed, **kw).fit(X)
        assert np.array_equal(fitted.components_, reference.components_), type(seed)


def test_a_seed_sequence_is_refused_by_name():
    """Guard (passes before the fixes too): the docs name integers, Generators (and
    RandomState); a SeedSequence is refused, not read as something else."""
    with pytest.raises(TypeError, match="random_state must be None"):
        VBNMF(2, random_state=np.random.SeedSequence(3), max_iter=2).fit(_counts())


def test_python_entry_points_agree_bit_for_bit(tmp_path):
    """Guard (passes before the fixes too): VBNMF.fit, tl.nmf in memory and backed and
    fit_triplets give the same loadings and trace, batch and SVI."""
    X = _counts()
    adata = _adata(X)
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    coo = X.tocoo()
    for kw in (dict(max_iter=8), dict(solver="svi", n_epochs=2, batch_size=16)):
        kw = dict(kw, n_threads=1, random_state=5)
        model = VBNMF(3, **kw).fit(X)
        in_memory = adata.copy()
        vbsnmf.tl.nmf(in_memory, 3, **kw)
        backed = ad.read_h5ad(path, backed="r")
        try:
            vbsnmf.tl.nmf(backed, 3, **kw)
            backed_loadings = np.asarray(backed.varm["NMF"])
        finally:
            backed.file.close()
        triplets = vbsnmf.fit_triplets(coo.row, coo.col, coo.data, X.shape, n_components=3, **kw)
        for loadings in (in_memory.varm["NMF"], backed_loadings, triplets.components_.T):
            np.testing.assert_array_equal(loadings, model.components_.T)
        np.testing.assert_array_equal(in_memory.uns["nmf"]["elbo_trace"], model.elbo_trace_)
        np.testing.assert_array_equal(triplets.elbo_trace_, model.elbo_trace_)


def test_command_line_inputs_agree_with_tl_nmf_bit_for_bit(tmp_path, capsys):
    """Guard (passes before the fixes too): `vbsnmf fit` of the same counts as .mtx,
    .h5ad and a 10x folder gives tl.nmf's loadings with --seed as random_state, and
    params.json's final ELBO is the trace's last value exactly."""
    X = _counts()
    adata = _adata(X)
    adata.write_h5ad(tmp_path / "counts.h5ad")
    scipy.io.mmwrite(tmp_path / "counts.mtx", X.T.tocoo())
    folder = tmp_path / "tenx"
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as handle:
        scipy.io.mmwrite(handle, X.T.tocoo().astype(np.int64))
    with gzip.open(folder / "features.tsv.gz", "wt") as handle:
        handle.writelines(f"id{g}\t{g}\tGene Expression\n" for g in adata.var_names)
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as handle:
        handle.writelines(f"{c}\n" for c in adata.obs_names)
    expected = adata.copy()
    vbsnmf.tl.nmf(expected, 3, random_state=7, max_iter=8, n_threads=1)
    common = ["-k", "3", "--seed", "7", "--max-iter", "8", "--threads", "1", "--quiet"]
    inputs = {
        "mtx": [str(tmp_path / "counts.mtx"), "--genes-as-rows"],
        "h5ad": [str(tmp_path / "counts.h5ad")],
        "tenx": [str(folder)],
    }
    for name, given in inputs.items():
        out = tmp_path / f"out_{name}"
        assert cli_main(["fit", *given, "-o", str(out), *common]) == 0, capsys.readouterr().err
        result = ad.read_h5ad(out / "result.h5ad")
        np.testing.assert_array_equal(np.asarray(result.varm["NMF"]), expected.varm["NMF"])
        params = json.loads((out / "params.json").read_text())
        assert params["final_elbo"] == expected.uns["nmf"]["elbo_trace"][-1], name
        assert params["seed"] == 7 and params["threads"] == 1


@pytest.mark.parametrize(
    "params",
    [
        dict(max_iter=8, dtype=np.float32),
        dict(max_iter=8, prior="gamma", prior_shape=0.5, prior_rate=2.0),
        dict(solver="svi", n_epochs=2, batch_size=16, max_iter=30, tol=0.0),
        dict(max_iter=8, mask_var="kept", n_init=2, random_state=np.int64(9)),
    ],
)
def test_the_record_replays_the_fit_from_an_h5ad(tmp_path, params):
    """Guard (passes before the fixes too): ``tl.nmf(adata, **params)`` with the params
    read back from the written .h5ad is the same fit bit for bit."""
    adata = _adata(_counts())
    adata.var["kept"] = np.arange(adata.n_vars) % 4 != 0
    fitted = adata.copy()
    vbsnmf.tl.nmf(fitted, 3, **params)
    fitted.write_h5ad(tmp_path / "fit.h5ad")
    recorded = dict(ad.read_h5ad(tmp_path / "fit.h5ad").uns["nmf"]["params"])
    replayed = adata.copy()
    vbsnmf.tl.nmf(replayed, **recorded)
    np.testing.assert_array_equal(replayed.obsm["X_nmf"], fitted.obsm["X_nmf"])


def test_float32_and_float64_traces_agree_to_float32_precision():
    """Guard (passes before the fixes too): the same seed in float32 and float64 gives
    ELBO traces within 1e-5 relative (measured: at most 7e-7 on pbmc_tiny's 300 cells)."""
    X = _counts(120, 40)
    for kw in (dict(max_iter=20), dict(max_iter=20, prior="gamma"), dict(solver="svi", n_epochs=2)):
        wide = VBNMF(3, random_state=1, n_threads=1, **kw).fit(X)
        narrow = VBNMF(3, random_state=1, n_threads=1, dtype=np.float32, **kw).fit(X)
        assert len(wide.elbo_trace_) == len(narrow.elbo_trace_)
        gap = np.abs(narrow.elbo_trace_ - wide.elbo_trace_) / np.abs(wide.elbo_trace_)
        assert gap.max() < 1e-5, (kw, gap.max())
