"""Thirty-fifth hostile pass, docstring truth: what the public docstrings say a function
raises, accepts and writes against what it does. `tl.nmf`'s, `tl.project`'s and
`tl.select_k`'s Raises sections against each refusal triggered; `pl.umap`'s and
`pl.top_genes`' account of what they store in the AnnData against every key they write;
`VBNTF`'s ``random_state`` and ``resume`` (no ``eval_every`` of its own), `tl.count_split`'s
``random_state`` and `DaskFitResult`'s byte counts of an SVI fit on Dask."""

from __future__ import annotations

import inspect
import re
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import vbsnmf
from vbsnmf import pl, tl

# A Raises (or any numpydoc) section: its heading, then the text up to the next heading.
_HEADING = re.compile(r"^(\S[^\n]*)\n-{3,}\n", flags=re.M)


def _section(doc: str, name: str) -> str:
    """The text of the numpydoc section ``name`` of ``doc`` ("" when it has none)."""
    doc = inspect.cleandoc(doc or "")
    headings = list(_HEADING.finditer(doc))
    for here, after in zip(headings, [*headings[1:], None]):
        if here.group(1).strip() == name:
            return doc[here.end() : after.start() if after else len(doc)]
    return ""


def _raises(function) -> dict[str, str]:
    """The Raises section of ``function``'s docstring: each exception's text, by name."""
    entries: dict[str, str] = {}
    current = None
    for line in _section(function.__doc__, "Raises").splitlines():
        if line and not line[0].isspace():
            current = line.strip()
            entries[current] = ""
        elif current is not None:
            entries[current] += " " + line.strip()
    return {name: " ".join(text.split()) for name, text in entries.items()}


def _flat(doc: str) -> str:
    return " ".join(inspect.cleandoc(doc or "").split())


def _refusal_documented(function, call, error: type, words: tuple[str, ...]) -> None:
    """``call()`` raises ``error``, and ``function``'s Raises section says so under that
    exception, naming each of ``words``."""
    with pytest.raises(error):
        call()
    text = _raises(function).get(error.__name__)
    assert text is not None, f"{function.__name__}'s Raises names no {error.__name__}"
    for word in words:
        assert word in text, f"{function.__name__}'s {error.__name__} does not name {word}"


@pytest.fixture(scope="module")
def fitted():
    """pbmc_tiny's first 200 cells with a short default fit (the cells the refusals use)."""
    adata = vbsnmf.datasets.pbmc_tiny()[:200].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.nmf(adata, 2, max_iter=3, random_state=0)
    return adata


FIT = {"max_iter": 2}

# (keyword arguments, exception, words its Raises entry must hold) for tl.nmf
NMF_REFUSALS = {
    "n_components_float": ({"n_components": 2.0}, TypeError, ("n_components",)),
    "layer_int": ({"layer": 3}, TypeError, ("layer",)),
    "use_raw_text": ({"use_raw": "no"}, TypeError, ("use_raw",)),
    "copy_text": ({"copy": "yes"}, TypeError, ("copy",)),
    "warm_start_text": ({"warm_start": "yes"}, TypeError, ("warm_start",)),
    "min_share_text": ({"min_share": "0.1"}, TypeError, ("min_share",)),
    "random_state_text": ({"random_state": "abc"}, TypeError, ("random_state",)),
    "callback_int": ({"callback": 3}, TypeError, ("callback",)),
    "max_iter_text": ({"max_iter": "a"}, TypeError, ("max_iter",)),
    "min_share_negative": ({"min_share": -1}, ValueError, ("min_share",)),
    "random_state_negative": ({"random_state": -1}, ValueError, ("random_state",)),
    "key_added_slash": ({"key_added": "a/b"}, ValueError, ("key_added", "cannot store")),
    "key_added_pca": ({"key_added": "pca"}, ValueError, ("key_added", "X_pca")),
    "mask_of_integers": ({"mask_var": "integers"}, ValueError, ("boolean",)),
}


@pytest.mark.parametrize("case", sorted(NMF_REFUSALS))
def test_nmf_raises_section_names_each_refusal(fitted, case):
    """`tl.nmf`'s Raises named one TypeError (``adata`` not an AnnData) and no refusal of
    ``key_added`` or ``min_share``; the parameters of a wrong type were refused too."""
    kwargs, error, words = NMF_REFUSALS[case]
    adata = fitted.copy()
    adata.obsm["X_pca"] = np.zeros((adata.n_obs, 2))  # scanpy's, for key_added="pca"
    if kwargs.get("mask_var") == "integers":
        kwargs = {"mask_var": np.ones(adata.n_vars, dtype=int)}
    call = lambda: tl.nmf(adata, **{"n_components": 2, **FIT, **kwargs})  # noqa: E731
    _refusal_documented(tl.nmf, call, error, words)


PROJECT_REFUSALS = {
    "copy_text": ({"copy": "yes"}, TypeError, ("copy",)),
    "use_raw_text": ({"use_raw": "no"}, TypeError, ("use_raw",)),
    "layer_int": ({"layer": 3}, TypeError, ("layer",)),
    "n_threads_text": ({"n_threads": "a"}, TypeError, ("n_threads",)),
    "key_int": ({"key": 3}, TypeError, ("key",)),
    "missing_layer": ({"layer": "counts"}, ValueError, ("layer",)),
    "missing_raw": ({"use_raw": True}, ValueError, (".raw",)),
    "key_added_slash": ({"key_added": "a/b"}, ValueError, ("key_added", "cannot store")),
    "key_added_foreign": ({"key_added": "mine"}, ValueError, ("key_added", "another tool")),
}


@pytest.mark.parametrize("case", sorted(PROJECT_REFUSALS))
def test_project_raises_section_names_each_refusal(fitted, case):
    """`tl.project`'s Raises named neither ``key_added`` nor a missing layer or ``.raw``,
    and of the TypeErrors only ``max_iter`` and ``tol``."""
    kwargs, error, words = PROJECT_REFUSALS[case]
    new = fitted[:50].copy()
    new.obsm["X_mine"] = np.zeros((new.n_obs, 2))  # the user's own, for key_added="mine"
    call = lambda: tl.project(new, fitted, **kwargs)  # noqa: E731
    _refusal_documented(tl.project, call, error, words)


SELECT_K_REFUSALS = {
    "layer_int": ({"layer": 3}, TypeError, ("layer",)),
    "use_raw_text": ({"use_raw": "no"}, TypeError, ("use_raw",)),
    "random_state_text": ({"random_state": "abc"}, TypeError, ("random_state",)),
    "min_share_negative": ({"min_share": -1}, ValueError, ("min_share",)),
    "random_state_negative": ({"random_state": -1}, ValueError, ("random_state",)),
    "key_added_slash": ({"key_added": "a/b"}, ValueError, ("key_added", "cannot store")),
    "key_added_over_fit": ({"key_added": "nmf"}, ValueError, ("key_added",)),
}


@pytest.mark.parametrize("case", sorted(SELECT_K_REFUSALS))
def test_select_k_raises_section_names_each_refusal(fitted, case):
    """`tl.select_k`'s Raises named no refusal of ``key_added``, ``min_share``'s range,
    ``random_state`` or the type of ``layer`` / ``use_raw``."""
    kwargs, error, words = SELECT_K_REFUSALS[case]
    adata = fitted.copy()
    call = lambda: tl.select_k(adata, [2], **{**FIT, **kwargs})  # noqa: E731
    _refusal_documented(tl.select_k, call, error, words)
    assert "nmf_k_selection" not in adata.uns


def _written(after: ad.AnnData, before: ad.AnnData) -> list[str]:
    """Every key ``after`` holds and ``before`` did not, as ``.where['name']``, and the
    entries added to the vbsnmf records of ``.uns`` (``['record']['entry']``)."""
    found = []
    for where in ("obs", "var"):
        new = set(getattr(after, where).columns) - set(getattr(before, where).columns)
        found += [f".{where}['{name}']" for name in new]
    for where in ("obsm", "varm", "obsp", "uns", "layers"):
        new = set(getattr(after, where).keys()) - set(getattr(before, where).keys())
        found += [f".{where}['{name}']" for name in new]
    for name, record in before.uns.items():
        if isinstance(record, dict):
            found += [f"['{name}']['{entry}']" for entry in set(after.uns[name]) - set(record)]
    return sorted(found)


def _named_in(doc: str, written: str, key: str) -> bool:
    """Whether ``doc`` names ``written`` (``.uns['nmf_dominant_factor_colors']``), also as
    the docstrings spell keys made from ``key`` or a column (``key + '_dominant_factor'``,
    ``column + '_colors'``)."""
    flat = _flat(doc).replace("``", "")
    spelled = {written}
    spelled.add(written.replace(f"'{key}_", "key + '_").replace(f"['{key}']", "[key]"))
    for column in (f"{key}_dominant_factor", "leiden"):
        spelled.add(written.replace(f"'{column}_colors'", "column + '_colors'"))
    return any(form in flat for form in spelled)


def test_umap_names_every_key_it_writes(fitted):
    """`pl.umap` named the graph, the UMAP and the two ``.obs`` columns, not the Leiden
    clustering's ``.uns['leiden']``, the colours scanpy's plot stores for each categorical
    column (``.uns[column + '_colors']``) or the column's name it adds to the fit's record
    (``.uns['nmf']['dominant_factor_key']``)."""
    pytest.importorskip("igraph")
    adata = fitted[:120].copy()
    before = adata.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pl.umap(adata, color=["nmf_dominant_factor", "leiden"], n_neighbors=5, show=False)
    written = _written(adata, before)
    assert ".uns['leiden']" in written and ".uns['nmf_dominant_factor_colors']" in written
    missing = [name for name in written if not _named_in(pl.umap.__doc__, name, "nmf")]
    assert not missing, f"pl.umap's docstring does not name {missing}"


def test_top_genes_dendrogram_names_the_pca_it_writes(fitted):
    """``pl.top_genes(..., dendrogram=True)`` said it computes scanpy's dendrogram into
    ``adata``; on more than 50 genes without a PCA scanpy first ran ``sc.pp.pca`` into it
    (``.obsm['X_pca']``, ``.varm['PCs']``, ``.uns['pca']``), which it did not say."""
    adata = fitted.copy()
    adata.obs["group"] = pd.Categorical(np.arange(adata.n_obs) % 3).astype(str)
    before = adata.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pl.top_genes(adata, "group", dendrogram=True, show=False)
    written = _written(adata, before)
    assert ".obsm['X_pca']" in written and ".uns['dendrogram_group']" in written
    doc = _flat(pl.top_genes.__doc__).replace("``", "")
    missing = [
        name
        for name in written
        if name not in doc and name.replace("_group'", "_<groupby>'") not in doc
    ]
    assert not missing, f"pl.top_genes' docstring does not name {missing}"


def _tensor():
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.0, (4, 5, 30))
    coords = np.argwhere(counts)
    return coords, counts[tuple(coords.T)], counts.shape


def test_vbntf_docstring_names_no_parameter_of_vbnmf_it_lacks():
    """`VBNTF`'s ``resume`` made an exception for "an SVI fit whose ``n_epochs`` is not a
    multiple of ``eval_every``", a `VBNMF` parameter `VBNTF` does not take (its SVI
    evaluates every epoch)."""
    own = set(inspect.signature(vbsnmf.VBNTF).parameters)
    theirs = set(inspect.signature(vbsnmf.VBNMF).parameters) - own
    named = set(re.findall(r"``(\w+)``", vbsnmf.VBNTF.__doc__))
    assert not named & theirs, f"VBNTF's docstring names {sorted(named & theirs)}"


def test_vbntf_svi_resumed_with_more_epochs_is_the_longer_fit(tmp_path):
    """Guard (passes on the base code too): a `VBNTF` SVI fit checkpointed at 3 epochs and
    resumed to 5 ends with the ELBO trace of a fit of 5 epochs, as its docstring now states
    for any ``n_epochs`` (every epoch is evaluated)."""
    coords, values, shape = _tensor()
    checkpoint = tmp_path / "fit.ckpt"
    settings = dict(solver="svi", random_state=0, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.VBNTF(2, n_epochs=3, checkpoint=checkpoint, **settings).fit(coords, values, shape)
        resumed = vbsnmf.VBNTF(2, n_epochs=5, checkpoint=checkpoint, resume=True, **settings)
        resumed.fit(coords, values, shape)
        longer = vbsnmf.VBNTF(2, n_epochs=5, **settings).fit(coords, values, shape)
    np.testing.assert_array_equal(resumed.elbo_trace_, longer.elbo_trace_)
    np.testing.assert_array_equal(resumed.elbo_iter_, [1, 2, 3, 4, 5])


def test_vbntf_random_state_doc_states_its_default_and_kinds():
    """`VBNTF`'s ``random_state`` said "Seed or Generator": not what its default, None,
    does (fresh entropy: two fits differ), nor that a RandomState is taken."""
    doc = _flat(_section(vbsnmf.VBNTF.__doc__, "Parameters"))
    text = doc[doc.index("random_state ") : doc.index("n_threads ")]
    assert "None (default)" in text and "RandomState" in text and "fresh entropy" in text
    coords, values, shape = _tensor()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, second = (vbsnmf.VBNTF(2, max_iter=5).fit(coords, values, shape) for _ in "ab")
        state = np.random.RandomState(0)
        drawn = vbsnmf.VBNTF(2, max_iter=5, random_state=state).fit(coords, values, shape)
        again = vbsnmf.VBNTF(2, max_iter=5, random_state=np.random.RandomState(0))
        again.fit(coords, values, shape)
    assert not np.array_equal(first.elbo_trace_, second.elbo_trace_)
    np.testing.assert_array_equal(drawn.elbo_trace_, again.elbo_trace_)


def test_count_split_random_state_doc_names_randomstate():
    """`tl.count_split` takes a ``RandomState`` (its TypeError lists it) and advances it as
    a Generator, but its docstring named only an integer, None or a Generator."""
    doc = _flat(_section(tl.count_split.__doc__, "Parameters"))
    assert "RandomState" in doc[doc.index("random_state ") :]
    counts = np.random.default_rng(0).poisson(3, (20, 10))
    for source in (np.random.RandomState(0), np.random.default_rng(0)):
        first, _ = tl.count_split(counts, random_state=source)
        second, _ = tl.count_split(counts, random_state=source)
        assert not np.array_equal(first, second)  # advanced: another split


def test_svi_dask_byte_counts_as_documented(client):
    """`DaskFitResult` said its byte counts were per pass and "Both are O(genes x K),
    independent of nonzeros"; `fit_svi_dask`'s are per minibatch step (and evaluation)
    and gather every cell's arrays at an evaluation."""
    import dask.array as da
    import scipy.sparse as sp

    counts = sp.csr_matrix(np.random.default_rng(0).poisson(1.0, (200, 30)).astype(float))
    cells = da.from_array(counts, chunks=(100, 30), asarray=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = vbsnmf.fit_svi_dask(cells, 3, n_epochs=3, random_state=0, client=client)
    steps = 2  # 200 cells in minibatches of 128
    assert len(result.sent_bytes) == 3 * steps
    assert len(result.gathered_bytes) == 3 * (steps + 1)
    evaluations = result.gathered_bytes[steps :: steps + 1]
    assert min(evaluations) >= 2 * 200 * 3 * 8  # every cell's shapes and rates, float64
    doc = _flat(vbsnmf.DaskFitResult.__doc__)
    assert "O(cells x K)" in doc and "minibatch step" in doc


@pytest.mark.parametrize("given", ["matrix", "path", "raw"])
def test_write_result_refuses_what_is_not_an_anndata(tmp_path, given):
    """`io.write_result` of a matrix failed with a bare AttributeError ("'numpy.ndarray'
    object has no attribute 'isbacked'"); now the `TypeError` its Raises names, as
    `write_nmf_tables` gives, and nothing is written."""
    adata = vbsnmf.datasets.pbmc_tiny()[:20].copy()
    adata.raw = adata
    value = {"matrix": np.zeros((2, 2)), "path": str(tmp_path / "in.h5ad"), "raw": adata.raw}
    target = tmp_path / "out.h5ad"
    with pytest.raises(TypeError, match="AnnData"):
        vbsnmf.io.write_result(value[given], target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    assert "not an AnnData" in _raises(vbsnmf.io.write_result)["TypeError"]


FACTOR_LOSS_REFUSALS = {
    "negative_x": ({"X": -1}, ("negative",)),
    "one_d_x": ({"X": "1-D"}, ("2-D",)),
    "nan_w": ({"W": np.nan}, ("W or H",)),
    "negative_weights": ({"weights": -1}, ("weights",)),
    "unknown_loss": ({"loss": "zz"}, ("unknown loss",)),
    "alpha_for_kl": ({"loss": "kl", "alpha": 1.0}, ("given where",)),
}


@pytest.mark.parametrize("case", sorted(FACTOR_LOSS_REFUSALS))
def test_factor_loss_raises_section_names_each_refusal(case):
    """`classic.factor_loss`'s Raises named a loss undefined at zeros, past the float range
    and mismatched shapes; X, the factors, the weights and the loss's name and parameters
    were refused too (each a `ValueError`), unsaid."""
    from vbsnmf.classic import factor_loss

    given, words = FACTOR_LOSS_REFUSALS[case]
    X, W, H = np.ones((4, 3)), np.ones((4, 2)), np.ones((2, 3))
    kwargs = {key: value for key, value in given.items() if key in ("loss", "alpha")}
    if "X" in given:
        X = X[0] if given["X"] == "1-D" else X * given["X"]
    if "W" in given:
        W = W * given["W"]
    if "weights" in given:
        kwargs["weights"] = np.ones((4, 3)) * given["weights"]
    call = lambda: factor_loss(X, W, H, **kwargs)  # noqa: E731
    _refusal_documented(factor_loss, call, ValueError, words)


@pytest.mark.parametrize("given", [{"loss": "zz"}, {"loss": "kl", "alpha": 1.0}])
def test_total_divergence_raises_section_names_the_loss_refusals(given):
    """`classic.losses.total_divergence` refused an unknown loss and a parameter the loss
    has none of (`resolve_loss`'s ValueError), which its Raises did not name."""
    from vbsnmf.classic.losses import total_divergence

    call = lambda: total_divergence(np.ones((2, 2)), np.ones((2, 2)), **given)  # noqa: E731
    _refusal_documented(total_divergence, call, ValueError, ("unknown loss", "given where"))
