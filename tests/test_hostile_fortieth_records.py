"""The fortieth hostile pass over vbsnmf's ``.uns`` records with one entry deleted by hand:
a fit (``tl.nmf``), a projection (``tl.project``) and a K selection (``tl.select_k``),
each read by the tools that read it (``tl.fit_info``, ``tl.top_genes``, ``tl.project``, a
warm start, ``pl.*``, ``vbsnmf umap`` on an .h5ad). Each tool either reads what it needs
or refuses with a typed error naming the missing entry and the tool that makes the record
again, and that advice works; none calls the record "an entry no vbsnmf tool wrote", nor
its own arrays "held from elsewhere", nor says to run the tool it then refuses."""

from __future__ import annotations

import warnings

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest

import vbsnmf
import vbsnmf.cli
from vbsnmf import pl, tl
from vbsnmf._utils import RECORD_MARKERS, record_kind

# Words of the messages that named a record with its marker deleted as someone else's.
_MISREAD = ("no vbsnmf tool wrote", "from elsewhere", "holds no ")
# What each record's message says to do, by kind.
_REMAKE = {
    "fit": "vbsnmf.tl.nmf",
    "projection": "vbsnmf.tl.project",
    "k_selection": "vbsnmf.tl.select_k",
}
_KEYS = {"fit": "nmf", "projection": "nmf_projection", "k_selection": "nmf_k_selection"}


def _quiet(function, *args, **kwargs):
    """``function`` with vbsnmf's convergence and advice warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _with_umap(adata: ad.AnnData) -> ad.AnnData:
    """``adata`` with a stand-in 2-D embedding, for `pl.factors`'s default basis."""
    adata.obsm["X_umap"] = np.random.default_rng(0).normal(size=(adata.n_obs, 2))
    return adata


@pytest.fixture(scope="module")
def new_cells() -> ad.AnnData:
    """Cells of pbmc_tiny that the fit did not see."""
    return vbsnmf.datasets.pbmc_tiny()[200:240].copy()


@pytest.fixture(scope="module")
def records(new_cells) -> dict[str, ad.AnnData]:
    """One small AnnData holding each kind of record, under the default keys; each test
    deletes an entry of a copy."""
    counts = vbsnmf.datasets.pbmc_tiny()[:120].copy()
    fitted = _with_umap(_quiet(tl.nmf, counts, 3, max_iter=5, copy=True))
    projected = _with_umap(_quiet(tl.project, new_cells, fitted, max_iter=3, copy=True))
    selected = counts.copy()
    _quiet(tl.select_k, selected, [2, 3], max_iter=3)
    return {"fit": fitted, "projection": projected, "k_selection": selected}


def _without(records, kind: str, entry: str) -> ad.AnnData:
    """A copy of the AnnData holding the record ``kind``, its ``entry`` deleted."""
    adata = records[kind].copy()
    del adata.uns[_KEYS[kind]][entry]
    return adata


# --- which record it is, one entry gone -----------------------------------------------


@pytest.mark.parametrize("kind", sorted(RECORD_MARKERS))
def test_each_record_keeps_its_kind_with_any_one_entry_deleted(records, kind):
    """Was: a projection without 'reference_key' and a K selection without 'table' were
    no record of vbsnmf's (only a fit's was told by its other entries)."""
    record = records[kind].uns[_KEYS[kind]]
    assert record_kind(record) == kind
    for entry in record:
        kept = {name: value for name, value in record.items() if name != entry}
        assert record_kind(kept) == kind, entry


@pytest.mark.parametrize(
    "entry",
    [
        {"params": {"n_neighbors": 15}, "connectivities_key": "c", "distances_key": "d"},
        {"params": {}, "variance": [1.0], "variance_ratio": [1.0]},
        {"n_cells": 3, "n_genes": 4, "params": {}},  # a user's dict: two names of a fit's
        {"suggested_k": 3, "versions": {}},
        {"n_genes_used": 10, "versions": {}},
    ],
    ids=["neighbors", "pca", "users_counts", "users_k", "users_genes"],
)
def test_other_dicts_are_not_taken_for_a_record(entry):
    """scanpy's records and a user's dict holding a name or two of a record's are no
    record of vbsnmf's: taken for one, a tool would overwrite them as its own."""
    assert record_kind(entry) is None


# --- every reading tool, every entry of every record ---------------------------------


def _fit_tools(new_cells):
    return {
        "fit_info": lambda adata: tl.fit_info(adata),
        "top_genes": lambda adata: tl.top_genes(adata),
        "project": lambda adata: tl.project(new_cells.copy(), adata, max_iter=2),
        "warm_start": lambda adata: tl.nmf(adata, 3, warm_start=True, max_iter=2),
        "pl.elbo": lambda adata: pl.elbo(adata, show=False),
        "pl.factors": lambda adata: pl.factors(adata, show=False),
    }


def _projection_tools(reference):
    return {
        "fit_info": lambda adata: tl.fit_info(adata),
        "top_genes": lambda adata: tl.top_genes(adata),
        "pl.elbo": lambda adata: pl.elbo(adata, show=False),
        "pl.factors": lambda adata: pl.factors(adata, show=False),
        "project_again": lambda adata: tl.project(adata, reference, max_iter=2),
        "nmf": lambda adata: tl.nmf(adata, 3, max_iter=2),
    }


_K_TOOLS = {
    "pl.select_k": lambda adata: pl.select_k(adata, show=False),
    "select_k_again": lambda adata: tl.select_k(adata, [2], max_iter=2),
}


def _outcome(tool, adata) -> str | None:
    """None when ``tool`` reads ``adata``; else its message (a KeyError or ValueError:
    anything else, a crash from deep inside, fails the test)."""
    try:
        _quiet(tool, adata)
    except (KeyError, ValueError) as error:
        return str(error.args[0])
    finally:
        plt.close("all")
    return None


def _check_messages(outcomes: dict[str, str | None]) -> None:
    """No message calls the record someone else's (`_MISREAD`)."""
    for tool, message in outcomes.items():
        if message is None:
            continue
        for misread in _MISREAD:
            assert misread not in message, (tool, message)


@pytest.mark.parametrize("entry", ["obsm_key", "usage_key", "varm_key", "active", "params"])
def test_a_fit_record_without_an_entry_is_named_as_damaged(records, new_cells, entry):
    """Every tool reads these entries: each names the one deleted and says to fit again,
    and the advice works."""
    outcomes = {
        tool: _outcome(function, _without(records, "fit", entry))
        for tool, function in _fit_tools(new_cells).items()
    }
    _check_messages(outcomes)
    for tool, message in outcomes.items():
        assert message is not None, tool  # every one of these reads the entry
        assert f"has no {entry!r} entry" in message, (tool, message)
        assert _REMAKE["fit"] in message, (tool, message)
    adata = _without(records, "fit", entry)
    _quiet(tl.nmf, adata, 3, max_iter=2)  # the advice: fit again
    assert set(adata.uns["nmf"]) == set(records["fit"].uns["nmf"])
    assert len(tl.top_genes(adata)) > 0


def test_every_fit_entry_deleted_gives_no_misreading_message(records, new_cells):
    """Any single entry of a fit's record: each tool reads on or names the entry, never
    a crash from deep inside nor a message calling the record someone else's."""
    for entry in records["fit"].uns["nmf"]:
        outcomes = {
            tool: _outcome(function, _without(records, "fit", entry))
            for tool, function in _fit_tools(new_cells).items()
            if tool in ("top_genes", "pl.elbo", "warm_start")
        }
        _check_messages(outcomes)
        for tool, message in outcomes.items():
            if message is not None:
                assert repr(entry) in message, (entry, tool, message)


def test_a_projection_without_its_reference_key_is_still_a_projection(records):
    """Was: "adata.uns['nmf'] holds no NMF fit; run vbsnmf.tl.nmf(adata) first" from every
    reader, and tl.nmf (as advised) and tl.project refused the projection's own arrays as
    "held from elsewhere". Now read as the projection it is, by every tool."""
    reference = records["fit"]
    intact = {
        tool: _outcome(function, records["projection"].copy())
        for tool, function in _projection_tools(reference).items()
    }
    without = {
        tool: _outcome(function, _without(records, "projection", "reference_key"))
        for tool, function in _projection_tools(reference).items()
    }
    _check_messages(without)
    assert without == intact  # the entry is not read: the same answers as with it
    assert (
        without["fit_info"] is not None
        and "a projection onto a reference fit" in without["fit_info"]
    )
    assert without["pl.factors"] is None and without["project_again"] is None
    assert "of the projection adata.uns['nmf_projection']" in without["nmf"]
    adata = _without(records, "projection", "reference_key")
    _quiet(tl.project, adata, reference, max_iter=2)  # projected again: the record whole
    assert adata.uns["nmf_projection"]["reference_key"] == "nmf"


@pytest.mark.parametrize("entry", ["n_genes_used", "n_genes_missing", "active", "versions"])
def test_a_projection_without_another_entry_reads_on(records, entry):
    """The projection's other entries are not needed by its readers: no error, no misreading."""
    outcomes = {
        tool: _outcome(function, _without(records, "projection", entry))
        for tool, function in _projection_tools(records["fit"]).items()
    }
    _check_messages(outcomes)
    assert outcomes["pl.factors"] is None and outcomes["project_again"] is None


@pytest.mark.parametrize("entry", ["table", "suggested_k", "reason", "params", "versions"])
def test_a_k_selection_without_an_entry(records, entry):
    """Was, for 'table': "adata.uns['nmf_k_selection'] holds an entry no vbsnmf tool wrote
    ... run vbsnmf.tl.select_k under another key_added", and tl.select_k under its own key
    refused it as "held from elsewhere". Now named, and select_k again replaces it."""
    drawn = _outcome(_K_TOOLS["pl.select_k"], _without(records, "k_selection", entry))
    if entry in ("table", "suggested_k"):  # what pl.select_k draws
        assert drawn is not None
        assert f"adata.uns['nmf_k_selection'] has no {entry!r} entry" in drawn
        assert "run vbsnmf.tl.select_k again" in drawn
        assert "fit again" not in drawn
    else:
        assert drawn is None
    adata = _without(records, "k_selection", entry)
    assert _outcome(_K_TOOLS["select_k_again"], adata) is None
    assert {"table", "suggested_k", "reason"} <= set(adata.uns["nmf_k_selection"])
    assert _outcome(_K_TOOLS["pl.select_k"], adata) is None


# --- the command line on an .h5ad with such a record ----------------------------------


@pytest.mark.parametrize(
    ("kind", "entry"), [("fit", "obsm_key"), ("fit", "usage_key"), ("projection", "reference_key")]
)
def test_cli_umap_on_a_file_with_an_entry_deleted(
    records, kind, entry, tmp_path, monkeypatch, capsys
):
    """``vbsnmf umap``: a fit's deleted entry is named (exit 2, one line), a projection
    without 'reference_key' is drawn (was: "holds no NMF fit or projection under --key
    nmf; make one with 'vbsnmf fit'")."""
    drawn = []
    monkeypatch.setattr(
        vbsnmf.cli, "_draw_umap", lambda adata, output, **options: drawn.append(output)
    )
    path = tmp_path / "result.h5ad"
    _without(records, kind, entry).write_h5ad(path)
    code = vbsnmf.cli.main(["umap", str(path), "-o", str(tmp_path / "umap.png")])
    error = capsys.readouterr().err
    if kind == "projection":
        assert code == 0 and len(drawn) == 1, error
        return
    assert code == 2 and not drawn
    assert f"has no {entry!r} entry" in error and "vbsnmf.tl.nmf" in error
    assert "holds no" not in error
