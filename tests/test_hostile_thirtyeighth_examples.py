"""Thirty-eighth hostile pass, the examples users copy: the fields a result's docstring
lists against those it holds, and the code that a docstring or an error message gives
the user to run, run as given.

No public docstring has an ``Examples`` section (no ``>>>``), docs/*.md's code blocks are
benchmark commands (parsed by tests/test_hostile_twentyninth_docs.py) and README.md's
blocks run in tests/test_readme.py. What was wrong: `DaskFitResult`, which README's Dask
example reads, put the cells' rates on the client as numpy arrays (under the default,
learned prior they are dask arrays on the cluster, as are the cells' scales) and left
out ``cell_factors`` and ``gene_loadings``, the two fields the example uses; the line
``NMF(loss="poisson").inverse_transform`` gives for the data's expected values failed on
an AnnData's counts (a scipy sparse matrix) and on a DataFrame; and the line
``VBNMF.fit(X, mask=...)`` gives for NaN entries, ``np.nan_to_num(X, nan=0.0)``, returns
a scipy sparse matrix unchanged, so following it gave the same refusal again."""

from __future__ import annotations

import dataclasses
import inspect
import re
import warnings

import dask.array as da
import distributed
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import vbsnmf

# A numpydoc section: its heading, then the text up to the next heading.
_HEADING = re.compile(r"^(\S[^\n]*)\n-{3,}\n", flags=re.M)


def _section(doc: str, name: str) -> str:
    doc = inspect.cleandoc(doc or "")
    headings = list(_HEADING.finditer(doc))
    for here, after in zip(headings, [*headings[1:], None]):
        if here.group(1) == name:
            return doc[here.end() : after.start() if after else len(doc)]
    return ""


def _entries(section: str) -> dict[str, str]:
    """Each entry of a numpydoc section by each name its head line lists (``a, b`` or
    ``name : type`` or ``method()``), with its description flattened to one line."""
    entries = {}
    for entry in re.split(r"\n(?=\S)", section.strip()):
        head, _, description = entry.partition("\n")
        for name in head.split(":")[0].split(","):
            entries[name.strip().removesuffix("()")] = " ".join(description.split())
    return entries


def _dask_fields(params, prefix: str = "params") -> set[str]:
    """The dotted names (``params.row_rate``, ``params.row_scale.shape``) of the dask
    arrays a q holds, its scales' fields included."""
    found = set()
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        name = f"{prefix}.{field.name}"
        if isinstance(value, da.Array):
            found.add(name)
        elif dataclasses.is_dataclass(value):
            found |= _dask_fields(value, name)
    return found


@pytest.fixture(scope="module")
def client():
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
    ) as client:
        yield client


@pytest.fixture(scope="module")
def counts():
    """200 cells of pbmc_tiny in two chunks of cells."""
    return da.from_array(vbsnmf.datasets.pbmc_tiny().X[:200], chunks=(100, -1))


@pytest.fixture(scope="module")
def results(client, counts):
    """A fit of each kind whose result a `DaskFitResult` describes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return {
            "batch, learned prior": vbsnmf.fit_dask(counts, 3, max_iter=3, random_state=0),
            "batch, fixed prior": vbsnmf.fit_dask(
                counts, 3, prior="gamma", max_iter=3, random_state=0
            ),
            "svi, learned prior": vbsnmf.fit_svi_dask(counts, 3, n_epochs=1, random_state=0),
        }


ATTRIBUTES = _entries(_section(vbsnmf.DaskFitResult.__doc__, "Attributes"))


@pytest.mark.parametrize(
    "kind", ["batch, learned prior", "batch, fixed prior", "svi, learned prior"]
)
def test_dask_result_names_every_dask_array_of_its_q(results, kind):
    """It said that ``params.row_shape`` is a dask array and "the gene side and both rates
    are numpy arrays on the client"; under the default (learned) prior the cells' rates
    and scales are dask arrays on the cluster too (`DaskFitResult.gather` computes them),
    which a user who took ``params.row_rate`` for a numpy array found out late."""
    params = results[kind].params
    described = ATTRIBUTES["params"]
    on_cluster = _dask_fields(params)
    assert "params.row_shape" in on_cluster
    for name in on_cluster:
        assert f"``{name}``" in described, (kind, name)
    # the rest of q is numpy on the client, as the entry says
    assert isinstance(params.col_shape, np.ndarray) and isinstance(params.col_rate, np.ndarray)
    if kind == "batch, fixed prior":
        assert isinstance(params.row_rate, np.ndarray) and params.row_rate.shape == (3,)
        assert "fixed prior's K rates of the cells" in described


def test_dask_result_documents_every_public_attribute():
    """README's Dask example reads ``result.cell_factors.compute()`` and
    ``result.gene_loadings``, which the Attributes section did not list (nor the
    ``gather`` method); every public field, property and method is now documented."""
    fields = {field.name for field in dataclasses.fields(vbsnmf.DaskFitResult)}
    members = dict(inspect.getmembers(vbsnmf.DaskFitResult))
    properties = {n for n, v in members.items() if isinstance(v, property)}
    methods = {n for n, v in vars(vbsnmf.DaskFitResult).items() if inspect.isfunction(v)} - {
        n for n in members if n.startswith("_")
    }
    assert properties >= {"cell_factors", "gene_loadings"} and "gather" in methods
    missing = (fields | properties) - set(ATTRIBUTES)
    assert not missing, f"Attributes leaves out {sorted(missing)}"
    listed = _entries(_section(vbsnmf.DaskFitResult.__doc__, "Methods"))
    assert methods <= set(listed), f"Methods leaves out {sorted(methods - set(listed))}"


def test_dask_result_properties_are_what_their_entries_say(results):
    """``cell_factors`` is a dask array of cells x K in the input's order (README:
    ``.compute()``), ``gene_loadings`` a numpy array of genes x K; both the posterior
    means of the q in ``params`` (`gather`'s numpy copy of it)."""
    assert "dask array" in ATTRIBUTES["cell_factors"]
    assert "numpy array" in ATTRIBUTES["gene_loadings"]
    for kind, result in results.items():
        cell_factors = result.cell_factors
        assert isinstance(cell_factors, da.Array) and cell_factors.shape == (200, 3), kind
        assert isinstance(result.gene_loadings, np.ndarray), kind
        assert result.gene_loadings.shape == (507, 3), kind
        gathered = result.gather()
        np.testing.assert_allclose(
            cell_factors.compute(), gathered.row_shape / gathered.row_rate, rtol=1e-12
        )
        assert not _dask_fields(gathered), kind


# -- NMF(loss="poisson").inverse_transform's advice ----------------------------------------
def _advised_expression(text: str) -> str:
    """The expression the refusal (or the docstring) gives for the data's expected values:
    from ``np.asarray(`` or ``X.sum(`` to ``components_)``."""
    flat = " ".join(text.split())
    found = re.search(r"((?:np\.asarray\()?X\.sum\(axis=1\).*?components_\))", flat)
    assert found, flat
    return found.group(1)


@pytest.fixture(scope="module")
def poisson_fit():
    counts = vbsnmf.datasets.pbmc_tiny().X[:80]
    model = vbsnmf.NMF(3, loss="poisson", max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W = model.fit_transform(counts)
    with pytest.raises(ValueError, match="row totals") as refused:
        model.inverse_transform(W)
    return counts, model, W, str(refused.value)


@pytest.mark.parametrize("kind", ["csr_matrix", "csr_array", "ndarray", "DataFrame"])
def test_poisson_inverse_transform_advice_runs_on_the_data_as_given(poisson_fit, kind):
    """The refusal said the data back are ``X.sum(axis=1)[:, None] * (W @
    model.components_)``: for the counts of an AnnData (a scipy ``csr_matrix``, whose
    ``sum`` is a 2-D ``np.matrix``) that raised numpy's "shapes (80,1,1) and (80,507) not
    aligned", and for a DataFrame pandas' multi-dimensional indexing error. The advised
    line now gives each row's total times its proportions for every kind of X the model
    fits."""
    counts, model, W, message = poisson_fit
    X = {
        "csr_matrix": counts,
        "csr_array": sp.csr_array(counts),
        "ndarray": counts.toarray(),
        "DataFrame": pd.DataFrame(counts.toarray()),
    }[kind]
    totals = np.asarray(counts.sum(axis=1)).ravel()
    expected = totals[:, None] * (W @ model.components_)
    docstring = _section(vbsnmf.NMF.inverse_transform.__doc__, "Raises")
    for text, names in ((message, {"model": model}), (docstring, {})):
        expression = _advised_expression(text)
        scope = {"np": np, "X": X, "W": W, "components_": model.components_, **names}
        back = eval(expression, scope)  # the advice, run as a user runs it
        assert np.shape(back) == expected.shape, (expression, kind)
        np.testing.assert_allclose(np.asarray(back), expected, rtol=1e-12)


# -- VBNMF.fit(X, mask=...)'s advice on missing entries -----------------------------------
def _with_missing(kind: str):
    """80 cells of pbmc_tiny with five missing (NaN) entries, as ``kind``, and the mask
    that marks them."""
    dense = vbsnmf.datasets.pbmc_tiny().X[:80].toarray().astype(np.float64)
    dense[0, :5] = np.nan
    make = {
        "ndarray": lambda: dense,
        "csr_matrix": lambda: sp.csr_matrix(dense),
        "csc_array": lambda: sp.csc_array(dense),
        "coo_matrix": lambda: sp.coo_matrix(dense),
        "DataFrame": lambda: pd.DataFrame(dense),
    }
    return make[kind](), np.isnan(dense)


@pytest.mark.parametrize("kind", ["csr_matrix", "csc_array", "coo_matrix", "ndarray", "DataFrame"])
def test_mask_advice_on_missing_entries_mends_the_counts(kind):
    """``fit(X, mask=np.isnan(X))`` with NaN in X is refused with advice to write 0 there,
    "e.g. np.nan_to_num(X, nan=0.0)": numpy returns a scipy sparse matrix as it is, NaN and
    all, so the advice gave the same refusal again. The advice now names the sparse
    matrix's stored values, and the fit runs once it is followed."""
    X, mask = _with_missing(kind)
    model = vbsnmf.VBNMF(2, max_iter=2, random_state=0)
    with pytest.raises(ValueError, match="mask says they are missing") as refused:
        model.fit(X, mask=mask)
    advice = re.search(r"write 0 there \(e\.g\. (.*?)\), the mask", str(refused.value))
    assert advice, str(refused.value)
    line = advice.group(1)
    line = line if re.match(r"X\s*=|.*;", line) else f"X = {line}"  # an expression: its value
    scope = {"np": np, "X": X}
    exec(line, scope)  # the advice, run as a user runs it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(scope["X"], mask=mask)
    assert np.all(np.isfinite(model.components_))
