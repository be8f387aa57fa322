"""The twenty-seventh hostile review's defects of the Dask path, each against what the
same call does in memory, on an in-process cluster."""

from __future__ import annotations

import warnings

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest

import vbsnmf
from vbsnmf import tl

pytestmark = pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")

GENES = [f"g{i}" for i in range(12)]


def _counts(n_cells: int = 40, seed: int = 0) -> np.ndarray:
    counts = np.random.default_rng(seed).poisson(0.8, (n_cells, len(GENES))).astype(np.float64)
    counts[:, 0] += 1  # no empty cell
    return counts


@pytest.fixture(scope="module")
def named_model():
    """A fit of a DataFrame: its genes have names."""
    frame = pd.DataFrame(_counts(), columns=GENES)
    return vbsnmf.VBNMF(3, max_iter=2, random_state=0).fit(frame)


# -- 1: fit_dask's warm start never checked its genes ---------------------------------------
def test_fit_dask_refuses_a_start_whose_genes_are_in_another_order(client, named_model):
    """fit_dask(adata, init=model), adata's genes those of the model in another order,
    started every gene from another's loadings without a word; VBNMF.fit refuses that
    start by the genes' names, and fit_dask now does so by the AnnData's var_names."""
    counts = _counts()[:, ::-1]
    reordered = ad.AnnData(
        X=da.from_array(counts, chunks=(20, -1)), var=pd.DataFrame(index=GENES[::-1])
    )
    with pytest.raises(ValueError, match="other feature names than X's"):
        vbsnmf.fit_dask(reordered, 3, init=named_model, max_iter=1, client=client)
    # in the model's order the same start is taken, and is the fit in memory
    ordered = ad.AnnData(X=da.from_array(_counts(), chunks=(20, -1)), var=pd.DataFrame(index=GENES))
    result = vbsnmf.fit_dask(
        ordered, 3, init=named_model, max_iter=2, tol=0.0, client=client, random_state=0
    )
    in_memory = vbsnmf.VBNMF(3, max_iter=2, tol=0.0, random_state=0).fit(
        pd.DataFrame(_counts(), columns=GENES), init=named_model
    )
    np.testing.assert_allclose(result.elbo_trace, in_memory.elbo_trace_, rtol=1e-12)


def test_fit_dask_warns_as_vbnmf_on_a_named_start_for_a_dask_x(client, named_model):
    """VBNMF.fit(dask_X, init=model) warns that the named start's genes go by position,
    unchecked; fit_dask (and fit_svi_dask's refusal aside) said nothing."""
    X = da.from_array(_counts(), chunks=(20, -1))
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        vbsnmf.fit_dask(X, 3, init=named_model, max_iter=1, client=client)
    unnamed = vbsnmf.VBNMF(3, max_iter=2, random_state=0).fit(_counts())
    with warnings.catch_warnings(record=True) as caught:  # a start without names: no word
        warnings.simplefilter("always")
        vbsnmf.fit_dask(X, 3, init=unnamed, max_iter=1, client=client)
    assert not [w for w in caught if "feature names" in str(w.message)]


# -- 2: tl.nmf's advice for a dask X of masked chunks ----------------------------------------
def test_tl_nmf_of_masked_dask_chunks_gives_advice_a_dask_x_can_take(client):
    """tl.nmf refused such an X with the in-memory advice "pass the counts as X.filled(0)
    ... give them to VBNMF.fit(X, mask=...)": a dask array has no filled method, and
    VBNMF.fit takes no mask with a dask X. The advice now is dask's own, which fits."""
    counts = _counts()
    masked = np.ma.masked_array(counts, mask=np.zeros(counts.shape, dtype=bool))
    masked.mask[3, 4] = True
    adata = ad.AnnData(X=da.from_array(masked, chunks=(20, -1), asarray=False))
    with pytest.raises(TypeError, match="masked array") as refused:
        tl.nmf(adata, 3, max_iter=2)
    message = str(refused.value)
    assert "mask=" not in message and "X.filled" not in message
    assert "dask.array.ma.filled(adata.X, 0)" in message
    # the advice taken, the fit runs
    adata.X = da.ma.filled(adata.X, 0)
    tl.nmf(adata, 3, max_iter=2, random_state=0)
    assert np.all(np.isfinite(adata.obsm["X_nmf"]))


# -- 3: fit_dask(mask=...) ----------------------------------------------------------------------
@pytest.mark.parametrize("fit", [vbsnmf.fit_dask, vbsnmf.fit_svi_dask])
def test_fit_dask_refuses_a_mask_by_what_takes_one(fit):
    """VBNMF.fit's mask= given to fit_dask failed as "VBNMF.__init__() got an unexpected
    keyword argument 'mask'", naming neither the call nor where masks are fitted; it is
    refused as VBNMF.fit refuses it for a dask X, before any client is needed."""
    counts = _counts()
    X = da.from_array(counts, chunks=(20, -1))
    with pytest.raises(ValueError, match="batch VB on a matrix in memory") as refused:
        fit(X, 2, mask=counts == 0)
    assert "__init__" not in str(refused.value)


# -- 4: persisted chunks or a fit's cells the cluster dropped (client.restart()) -------------
def _dropped(client, array):
    """``array`` (persisted) with its futures cancelled, as ``client.restart()`` leaves
    them (a restart needs nannies; cancelling is the same state, in-process)."""
    from distributed import futures_of

    client.cancel(futures_of(array))
    return array


@pytest.mark.parametrize(
    "call",
    [
        lambda X: vbsnmf.fit_dask(X, 2, max_iter=2),
        lambda X: vbsnmf.fit_svi_dask(X, 2, n_epochs=1),
        lambda X: vbsnmf.VBNMF(2, max_iter=2).fit(X),
        lambda X: tl.nmf(ad.AnnData(X=X), 2, max_iter=2),
        lambda X: vbsnmf.VBNMF(2, max_iter=2).fit(_counts()).transform(X),
    ],
    ids=["fit_dask", "fit_svi_dask", "VBNMF.fit", "tl.nmf", "transform"],
)
def test_chunks_the_cluster_dropped_are_named(client, call):
    """X persisted, then the workers restarted: every use of X raised distributed's
    FutureCancelledError "vbsnmf-...-info-1 cancelled for reason: lost dependencies"."""
    # name=False: keys of their own (the scheduler's news of a cancelled key reaches the
    # client after a while, and would cancel an array of the same key persisted since)
    X = _dropped(client, da.from_array(_counts(), chunks=(20, -1), name=False).persist())
    with pytest.raises(ValueError, match=r"dropped them since \(client.restart\(\)"):
        call(X)
    # built again from its source, as the message says, the same call runs
    call(da.from_array(_counts(), chunks=(20, -1), name=False).persist())


def test_a_results_cells_the_cluster_dropped_are_named(client):
    """result.gather(), and fit_dask(X, init=result), after the workers restarted raised
    FutureCancelledError (the start's: in the middle of the fit's first sums)."""
    X = da.from_array(_counts(), chunks=(20, -1))
    result = vbsnmf.fit_dask(X, 2, max_iter=2, client=client)
    _dropped(client, result.params.row_shape)
    with pytest.raises(ValueError, match="cells were dropped"):
        result.gather()
    with pytest.raises(ValueError, match="cells were dropped"):
        vbsnmf.fit_dask(X, 2, init=result, max_iter=2, client=client)
