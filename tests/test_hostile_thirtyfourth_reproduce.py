"""Thirty-fourth hostile pass, second wave: reproducibility across routes.

The same counts and ``random_state`` through `VBNMF.fit`, `tl.nmf`, the command line, the
Dask route, a checkpointed and resumed fit, `tl.select_k`, `tl.count_split` and the
classical solvers.

Two defects, whose tests fail on the code before their fixes. `VBNTF`'s slices form of SVI
under the fixed prior started its local mode at the random start's shapes, where `VBNMF`'s
cells form starts its cells at a + 1 (and `VBNTF`'s own slices form under the learned prior
at `local_start_shape` too), so at D = 2 with ``tol=0`` the two were not the same fit,
although `VBNTF`'s docstring says they agree there. And `classic.NMF` drew its start from a
Generator (or RandomState) before it checked the factor mask and before the solver ran: a
refused or interrupted fit left the generator advanced, so the retry was another fit than a
fresh generator's, where `VBNMF` and `tl.nmf` (with the same classical solver) leave it as
it was.

The other tests are guards that pass on the code before the fixes too (the pass found the
behaviour as documented); each says so.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import VBNMF, VBNTF
from vbsnmf.classic import NMF
from vbsnmf.cli import main as cli_main


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _counts(n_cells=150, n_genes=40, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    rates = rng.gamma(0.5, 1.0, (n_cells, 3)) @ rng.gamma(0.5, 1.0, (3, n_genes))
    return sp.csr_matrix(rng.poisson(rates).astype(dtype))


def _adata(X):
    adata = ad.AnnData(X.copy())
    adata.obs_names = [f"c{i}" for i in range(X.shape[0])]
    adata.var_names = [f"g{j}" for j in range(X.shape[1])]
    return adata


def _tensor_fit(X, **params):
    coo = X.tocoo()
    coords = np.column_stack([coo.row, coo.col])
    return VBNTF(3, svi_mode=0, **params).fit(coords, coo.data, X.shape)


# -- the defect --------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [25, 150])
def test_tensor_svi_at_two_modes_is_the_cells_form_under_the_fixed_prior(batch_size):
    """VBNTF's slices form at D = 2 with tol=0 runs VBNMF's cells form: the same ELBO trace
    and gene side (to rounding: the tensor kernel sums in its own order). Before the fix
    the local mode started at random shapes and the traces differed by 0.6 %."""
    X = _counts()
    params = dict(
        prior="gamma", solver="svi", n_epochs=2, batch_size=batch_size, tol=0, max_iter=15
    )
    matrix = VBNMF(3, random_state=3, n_threads=1, **params).fit(X)
    tensor = _tensor_fit(X, random_state=3, n_threads=1, **params)
    np.testing.assert_allclose(tensor.elbo_trace_, matrix.elbo_trace_, rtol=1e-10)
    np.testing.assert_allclose(tensor.factors_[1].T, matrix.components_, rtol=1e-8)


def test_tensor_svi_starts_its_local_mode_as_the_learned_prior_does():
    """The fixed prior's slices start: the local mode's shapes at a + 1 (the cells form's,
    and the learned prior's slices start's), the other modes the random start's."""
    from vbsnmf import _model, _tensor

    rng = np.random.default_rng(0)
    coords = np.column_stack([rng.integers(0, n, 400) for n in (30, 8, 6)])
    data = _tensor.as_tensor_data(coords, np.ones(400), (30, 8, 6))
    prior = _model.GammaPrior(0.5, 2.0)
    state = _tensor.fixed_slices_start(data, 4, 11, np.float64, prior)
    drawn = _tensor.random_start(data, 4, 11, np.float64)
    local = data.major
    np.testing.assert_array_equal(state.params.shapes[local], np.full((30, 4), 1.5))
    for d in range(3):
        if d != local:
            np.testing.assert_array_equal(state.params.shapes[d], drawn.shapes[d])
            np.testing.assert_array_equal(state.params.rates[d], drawn.rates[d])


def _bad_mask_fit(model, X):
    model.set_params(factor_mask={"W": np.ones((X.shape[0] - 1, 3))})
    with pytest.raises(ValueError, match="factor_mask"):
        model.fit(X)
    model.set_params(factor_mask=None)


@pytest.mark.parametrize(
    "make_seed", [lambda: np.random.default_rng(5), lambda: np.random.RandomState(5)]
)
@pytest.mark.parametrize("init", ["nndsvda", "random"])
def test_classic_nmf_refused_leaves_its_generator_as_it_was(make_seed, init):
    """classic.NMF drew its start from a Generator (a RandomState) before it checked the
    factor mask: the refused fit left it advanced, and the retry was another fit than a
    fresh generator's (VBNMF and tl.nmf leave it as it was)."""
    X = _counts(100, 40)
    model = NMF(3, init=init, random_state=make_seed(), max_iter=20)
    _bad_mask_fit(model, X)
    fresh = NMF(3, init=init, random_state=make_seed(), max_iter=20).fit(X)
    np.testing.assert_array_equal(model.fit(X).components_, fresh.components_)


def test_classic_nmf_interrupted_leaves_its_generator(monkeypatch):
    """Ctrl-C in the solver leaves the Generator as it was: the fit run again is a fresh
    Generator's, as an interrupted tl.nmf with the same solver is."""
    import vbsnmf.classic._nmf as classic_nmf

    X = _counts(100, 40)
    generator = np.random.default_rng(7)
    state = generator.bit_generator.state

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(classic_nmf.NMF, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        NMF(3, random_state=generator, max_iter=20).fit_transform(X)
    assert generator.bit_generator.state == state
    monkeypatch.undo()
    again = NMF(3, random_state=generator, max_iter=20).fit(X).components_
    fresh = NMF(3, random_state=np.random.default_rng(7), max_iter=20).fit(X).components_
    np.testing.assert_array_equal(again, fresh)


def test_a_finished_classic_fit_still_draws_from_its_generator():
    """Guard (passes before the fix too): a fit that ends draws from the Generator, so a
    second fit with it is another fit, as for VBNMF."""
    X = _counts(100, 40)
    generator = np.random.default_rng(7)
    first = NMF(3, init="random", random_state=generator, max_iter=20).fit(X).components_
    second = NMF(3, init="random", random_state=generator, max_iter=20).fit(X).components_
    assert not np.array_equal(first, second)


# -- guards: each passes on the code before the fixes too ---------------------------------


@pytest.mark.parametrize("solver", ["mu", "hals", "als", "pg"])
def test_classic_seeds_of_any_integer_type_and_a_randomstate_agree(solver):
    """Guard (passes before the fixes too): classic.NMF fits the same for 3, np.int64(3),
    np.uint8(3) and RandomState(3) (scikit-learn's reading of a seed)."""
    X = _counts(80, 30)
    reference = NMF(3, solver=solver, random_state=3, max_iter=20).fit(X).components_
    for seed in (np.int64(3), np.uint8(3), np.random.RandomState(3)):
        fitted = NMF(3, solver=solver, random_state=seed, max_iter=20).fit(X).components_
        np.testing.assert_array_equal(fitted, reference)


def test_classic_solvers_do_not_depend_on_the_thread_count():
    """Guard (passes before the fixes too): the classical solvers' kernels sum in fixed
    blocks: one and two Numba threads give the same factors bit for bit."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two Numba threads")
    X = _counts(400, 60)
    before = numba.get_num_threads()
    try:
        for solver, loss in (("mu", "kl"), ("mu", "poisson"), ("hals", "frobenius")):
            fits = []
            for threads in (1, 2):
                numba.set_num_threads(threads)
                fits.append(NMF(3, solver=solver, loss=loss, random_state=0, max_iter=40).fit(X))
            np.testing.assert_array_equal(fits[0].components_, fits[1].components_)
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize(
    "params",
    [
        dict(max_iter=12),
        dict(max_iter=12, prior="gamma"),
        dict(max_iter=12, init="nndsvda"),
        dict(solver="svi", n_epochs=4, batch_size=40),
        dict(solver="svi", svi_form="nonzeros", prior="gamma", n_epochs=4),
    ],
)
@pytest.mark.parametrize("make_seed", [lambda: 3, lambda: np.random.default_rng(3)])
def test_a_resumed_fit_is_the_uninterrupted_one(tmp_path, params, make_seed):
    """Guard (passes before the fixes too): interrupted after its third iteration (epoch)
    and resumed from its checkpoint, with an integer seed or a fresh Generator of the same
    seed, a fit ends with the uninterrupted fit's trace, factors and transform."""
    X = _counts()
    reference = VBNMF(3, random_state=make_seed(), n_threads=1, **params).fit(X)
    checkpoint = tmp_path / "fit.ckpt"

    def interrupt(n_iter, *args):
        if n_iter >= 3:
            raise KeyboardInterrupt

    model = VBNMF(3, random_state=make_seed(), n_threads=1, checkpoint=checkpoint, **params)
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, callback=interrupt)
    resumed = VBNMF(
        3, random_state=make_seed(), n_threads=1, checkpoint=checkpoint, resume=True, **params
    ).fit(X)
    np.testing.assert_array_equal(resumed.elbo_trace_, reference.elbo_trace_)
    np.testing.assert_array_equal(resumed.components_, reference.components_)
    np.testing.assert_array_equal(resumed.transform(X), reference.transform(X))


def test_svi_checkpoints_resume_across_memory_and_file(tmp_path):
    """Guard (passes before the fixes too): SVI's cells form interrupted in memory resumes
    from the .h5ad of the same counts (streamed) and the other way round, each ending as
    the uninterrupted fit bit for bit."""
    X = _counts(dtype=np.float32)
    path = tmp_path / "counts.h5ad"
    ad.AnnData(X).write_h5ad(path)
    params = dict(solver="svi", n_epochs=4, batch_size=40, n_threads=1, random_state=3)
    reference = VBNMF(3, **params).fit(X)

    def interrupt(n_iter, *args):
        if n_iter >= 2:
            raise KeyboardInterrupt

    for first, second in ((X, str(path)), (str(path), X)):
        checkpoint = tmp_path / f"{type(first).__name__}.ckpt"
        with pytest.raises(KeyboardInterrupt):
            VBNMF(3, checkpoint=checkpoint, **params).fit(first, callback=interrupt)
        resumed = VBNMF(3, checkpoint=checkpoint, resume=True, **params).fit(second)
        np.testing.assert_array_equal(resumed.components_, reference.components_)


def test_a_longer_fit_resumed_from_a_shorter_ones_checkpoint(tmp_path):
    """Guard (passes before the fixes too): a fit that stopped at max_iter (n_epochs) and
    is resumed with more is the longer fit, in Python and on the command line."""
    X = _counts(dtype=np.float32)
    adata = _adata(X)
    adata.write_h5ad(tmp_path / "counts.h5ad")
    for name, short, longer, options in (
        ("batch", dict(max_iter=5), dict(max_iter=12), ["--max-iter"]),
        (
            "svi",
            dict(solver="svi", n_epochs=2, batch_size=40),
            dict(solver="svi", n_epochs=4, batch_size=40),
            ["--epochs"],
        ),
    ):
        reference = VBNMF(3, random_state=3, n_threads=1, **longer).fit(X)
        checkpoint = tmp_path / f"{name}.ckpt"
        VBNMF(3, random_state=3, n_threads=1, checkpoint=checkpoint, **short).fit(X)
        resumed = VBNMF(
            3, random_state=3, n_threads=1, checkpoint=checkpoint, resume=True, **longer
        ).fit(X)
        np.testing.assert_array_equal(resumed.elbo_trace_, reference.elbo_trace_)
        cli_checkpoint = tmp_path / f"{name}.cli.ckpt"
        common = ["-k", "3", "--seed", "3", "--threads", "1", "--quiet", "--checkpoint"]
        extra = ["--solver", "svi", "--batch-size", "40"] if name == "svi" else []
        steps = (
            short.get("max_iter", short.get("n_epochs")),
            longer.get("max_iter", longer.get("n_epochs")),
        )
        for run, n_steps in enumerate(steps):
            argv = ["fit", str(tmp_path / "counts.h5ad"), "-o", str(tmp_path / f"{name}{run}")]
            argv += [*common, str(cli_checkpoint), *options, str(n_steps), *extra]
            assert cli_main(argv + (["--resume"] if run else [])) == 0
        result = ad.read_h5ad(tmp_path / f"{name}1" / "result.h5ad")
        np.testing.assert_array_equal(np.asarray(result.varm["NMF"]), reference.components_.T)


@pytest.mark.parametrize(
    ("solver", "options", "params"),
    [
        ("svi", ["--epochs", "2", "--batch-size", "40"], dict(n_epochs=2, batch_size=40)),
        ("mu", ["--max-iter", "20"], dict(max_iter=20)),
        ("hals", ["--max-iter", "20"], dict(max_iter=20)),
        ("batch", ["--max-iter", "6", "--init", "nndsvda"], dict(max_iter=6, init="nndsvda")),
    ],
)
def test_command_line_solvers_agree_with_tl_nmf_and_replay(tmp_path, solver, options, params):
    """Guard (passes before the fixes too): `vbsnmf fit` of an .h5ad with SVI (streamed),
    a classical solver or the NNDSVDa start gives tl.nmf's loadings and cell factors bit
    for bit, and its result's record replays through tl.nmf to the same fit."""
    X = _counts(dtype=np.float32)
    adata = _adata(X)
    adata.write_h5ad(tmp_path / "counts.h5ad")
    expected = adata.copy()
    vbsnmf.tl.nmf(expected, 3, solver=solver, random_state=7, n_threads=1, **params)
    out = tmp_path / "out"
    argv = ["fit", str(tmp_path / "counts.h5ad"), "-o", str(out), "-k", "3", "--seed", "7"]
    assert cli_main([*argv, "--threads", "1", "--quiet", "--solver", solver, *options]) == 0
    result = ad.read_h5ad(out / "result.h5ad")
    np.testing.assert_array_equal(np.asarray(result.varm["NMF"]), np.asarray(expected.varm["NMF"]))
    np.testing.assert_array_equal(result.obsm["X_nmf"], expected.obsm["X_nmf"])
    replayed = adata.copy()
    vbsnmf.tl.nmf(replayed, **dict(result.uns["nmf"]["params"]))
    np.testing.assert_array_equal(
        np.asarray(replayed.varm["NMF"]), np.asarray(expected.varm["NMF"])
    )


def test_select_k_seeds_and_its_fits_are_tl_nmfs():
    """Guard (passes before the fixes too): tl.select_k gives the same table for 5,
    np.int64(5) and np.uint16(5), for dense and sparse counts and for a gene mask against
    the subset of those genes; its ELBO column is tl.nmf's final ELBO, its held-out column
    the score of tl.nmf's fit on count_split's train half; a Generator's recorded seed
    replays the table."""
    X = _counts(dtype=np.float32)
    adata = ad.AnnData(X)
    params = dict(max_iter=10, n_threads=1)
    table = vbsnmf.tl.select_k(adata.copy(), [2, 3], random_state=5, **params)
    for seed in (np.int64(5), np.uint16(5)):
        assert vbsnmf.tl.select_k(adata.copy(), [2, 3], random_state=seed, **params).equals(table)
    dense = ad.AnnData(X.toarray())
    assert vbsnmf.tl.select_k(dense, [2, 3], random_state=5, **params).equals(table)
    full = adata.copy()
    vbsnmf.tl.nmf(full, 3, random_state=5, **params)
    assert full.uns["nmf"]["elbo_trace"][-1] == table.loc[3, "elbo"]
    train, test = vbsnmf.tl.count_split(X, 0.5, random_state=5)
    half = ad.AnnData(train)
    vbsnmf.tl.nmf(half, 3, random_state=5, **params)
    from vbsnmf.tl._select_k import poisson_loglik_per_cell

    score = poisson_loglik_per_cell(
        sp.csr_matrix(test, dtype=np.float64), half.obsm["X_nmf"], half.varm["NMF"]
    )
    assert score.sum() / test.sum() == table.loc[3, "heldout_ll_per_count"]
    keep = np.arange(X.shape[1]) % 3 != 0
    masked = vbsnmf.tl.select_k(adata.copy(), [2, 3], mask_var=keep, random_state=5, **params)
    subset = vbsnmf.tl.select_k(adata[:, keep].copy(), [2, 3], random_state=5, **params)
    assert masked.equals(subset)
    recorded = adata.copy()
    drawn = vbsnmf.tl.select_k(recorded, [2, 3], random_state=np.random.default_rng(11), **params)
    replay = dict(recorded.uns["nmf_k_selection"]["params"])
    ks = list(replay.pop("ks"))
    assert vbsnmf.tl.select_k(adata.copy(), ks, **replay).equals(drawn)


def test_count_split_depends_on_the_counts_and_seed_only():
    """Guard (passes before the fixes too): count_split draws the same halves for dense
    (C or Fortran order), a DataFrame, CSR, CSC, COO, a csr_array, unsorted indices,
    duplicates, explicit zeros, uint8 and float counts, a dask array, and for 4 and
    np.int64(4); a Generator gives the split select_k makes from it."""
    import dask.array as da

    rng = np.random.default_rng(1)
    dense = rng.poisson(0.8, (40, 30)).astype(np.int64)
    expected, _ = vbsnmf.tl.count_split(dense, random_state=4)
    csr = sp.csr_matrix(dense)
    unsorted = csr.copy()
    for i in range(unsorted.shape[0]):
        row = slice(unsorted.indptr[i], unsorted.indptr[i + 1])
        unsorted.indices[row], unsorted.data[row] = (
            unsorted.indices[row][::-1].copy(),
            unsorted.data[row][::-1].copy(),
        )
    unsorted.has_sorted_indices = False
    coo = csr.tocoo()
    halves = coo.data // 2
    duplicates = sp.coo_matrix(
        (np.r_[halves, coo.data - halves], (np.r_[coo.row, coo.row], np.r_[coo.col, coo.col])),
        shape=dense.shape,
    )
    with_zeros = sp.csr_matrix(dense)
    with_zeros.data[::4] = 0  # explicit zeros; their counts are the dense ones below
    zeros_dense = with_zeros.toarray()
    with_zeros_expected, _ = vbsnmf.tl.count_split(zeros_dense, random_state=4)
    for counts in (
        np.asfortranarray(dense),
        pd.DataFrame(dense),
        csr,
        sp.csc_matrix(dense),
        coo,
        sp.csr_array(dense),
        unsorted,
        duplicates,
        dense.astype(np.uint8),
        dense.astype(np.float64),
        da.from_array(dense, chunks=(15, 10)),
    ):
        train, _ = vbsnmf.tl.count_split(counts, random_state=4)
        train = train.toarray() if sp.issparse(train) else np.asarray(train)
        np.testing.assert_array_equal(train, expected)
    train, _ = vbsnmf.tl.count_split(with_zeros, random_state=np.int64(4))
    np.testing.assert_array_equal(train.toarray(), with_zeros_expected)
    from vbsnmf._model import seed_entropy

    drawn = seed_entropy(np.random.default_rng(9))
    by_generator, _ = vbsnmf.tl.count_split(dense, random_state=np.random.default_rng(9))
    by_seed, _ = vbsnmf.tl.count_split(dense, random_state=drawn)
    np.testing.assert_array_equal(by_generator, by_seed)


def test_tensor_at_two_modes_is_the_matrix_fit_from_any_seed_type():
    """Guard (passes before the fixes too): VBNTF's batch fit at D = 2 gives VBNMF's trace
    for 3, np.int64(3) and a Generator, under both priors (to rounding)."""
    X = _counts()
    for params in (dict(prior="gamma", max_iter=12), dict(prior="hierarchical", max_iter=12)):
        for make_seed in (lambda: 3, lambda: np.int64(3), lambda: np.random.default_rng(3)):
            matrix = VBNMF(3, random_state=make_seed(), n_threads=1, **params).fit(X)
            tensor = _tensor_fit(X, random_state=make_seed(), n_threads=1, **params)
            np.testing.assert_allclose(tensor.elbo_trace_, matrix.elbo_trace_, rtol=1e-12)


def test_dask_route_is_the_memory_fit_for_any_seed_type():
    """Guard (passes before the fixes too): VBNMF.fit of a dask array (batch under both
    priors, SVI's cells form) is the in-memory fit to 1e-12 relative for np.int64(3) and a
    fresh Generator, as fit_svi_dask is for 3."""
    import dask.array as da
    from distributed import Client, LocalCluster

    X = _counts(300, 40)
    chunked = da.from_array(X, chunks=(100, -1))
    cases = (
        dict(max_iter=10),
        dict(max_iter=10, prior="gamma"),
        dict(solver="svi", n_epochs=2, batch_size=50),
    )
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        for params in cases:
            for make_seed in (lambda: np.int64(3), lambda: np.random.default_rng(3)):
                memory = VBNMF(3, random_state=make_seed(), n_threads=1, **params).fit(X)
                on_dask = VBNMF(3, random_state=make_seed(), n_threads=1, **params).fit(chunked)
                np.testing.assert_allclose(on_dask.components_, memory.components_, rtol=1e-12)
                np.testing.assert_allclose(on_dask.elbo_trace_, memory.elbo_trace_, rtol=1e-12)
        svi = dict(n_epochs=2, batch_size=50, n_threads=1)
        distributed = vbsnmf.fit_svi_dask(chunked, n_components=3, random_state=3, **svi)
        memory = VBNMF(3, solver="svi", random_state=3, **svi).fit(X)
        np.testing.assert_allclose(distributed.gene_loadings.T, memory.components_, rtol=1e-12)
