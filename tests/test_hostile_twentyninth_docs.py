"""Twenty-ninth hostile pass, documentation: what README.md, docs/, benchmarks/README.md, the
command line's help and the public API's docstrings promise, against what the code does."""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import io
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import tomllib

import vbsnmf
import vbsnmf.classic
import vbsnmf.classic.losses

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SECTION = re.compile(
    r"^(Parameters|Other Parameters)\n-+\n(.*?)(?=^\S[^\n]*\n-{3,}\n|\Z)", flags=re.S | re.M
)


def _documented(doc: str | None) -> list[str] | None:
    """The names of a numpydoc docstring's Parameters sections (None: it has none)."""
    sections = list(SECTION.finditer(inspect.cleandoc(doc or "")))
    if not sections:
        return None
    names = []
    for section in sections:
        for line in section.group(2).splitlines():
            if line and not line[0].isspace():
                names += [name.strip().lstrip("*") for name in line.split(":")[0].split(",")]
    return names


def _public_callables():
    """Every public function and class of the package's public modules, and the public
    methods their classes define."""
    modules = {
        "vbsnmf": vbsnmf,
        "vbsnmf.tl": vbsnmf.tl,
        "vbsnmf.pl": vbsnmf.pl,
        "vbsnmf.io": vbsnmf.io,
        "vbsnmf.classic": vbsnmf.classic,
        "vbsnmf.classic.losses": vbsnmf.classic.losses,
    }
    for prefix, module in modules.items():
        names = getattr(module, "__all__", None) or [n for n in dir(module) if n[0] != "_"]
        for name in names:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{prefix}.{name}", obj
            if inspect.isclass(obj):
                for method_name, method in vars(obj).items():
                    if method_name[0] != "_" and inspect.isfunction(method):
                        yield f"{prefix}.{name}.{method_name}", method


PUBLIC = sorted(dict(_public_callables()).items())


def test_every_parameters_section_names_exactly_the_accepted_parameters():
    """Guard (passes on the base code too): a public callable with a numpydoc Parameters
    section documents every parameter it accepts, and nothing it does not."""
    wrong = []
    for name, obj in PUBLIC:
        documented = _documented(obj.__doc__)
        if documented is None:
            continue
        accepted = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        if sorted(documented) != sorted(accepted):
            missing = sorted(set(accepted) - set(documented))
            unknown = sorted(set(documented) - set(accepted))
            wrong.append(f"{name}: undocumented {missing}, not accepted {unknown}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "function",
    [
        *(getattr(vbsnmf.tl, name) for name in vbsnmf.tl.__all__ if name != "SOLVERS"),
        *(getattr(vbsnmf.pl, name) for name in vbsnmf.pl.__all__),
        vbsnmf.fit_triplets,
        vbsnmf.fit_dask,
        vbsnmf.fit_svi_dask,
    ],
    ids=lambda function: function.__qualname__,
)
def test_every_tool_and_plot_has_a_parameters_section(function):
    """Every `tl` and `pl` function and the fitting functions have a Parameters section
    (`tl.fit_info`, `tl.gene_specificity` and `fit_triplets`, whose ``n_components`` no
    word of its docstring named, had none)."""
    assert _documented(function.__doc__) is not None


def test_fit_triplets_documents_and_uses_its_default_k():
    """``n_components`` is documented with the default the signature has."""
    default = inspect.signature(vbsnmf.fit_triplets).parameters["n_components"].default
    assert f"(default {default})" in inspect.cleandoc(vbsnmf.fit_triplets.__doc__)


def test_gene_specificity_returns_what_its_docstring_says():
    """Guard: genes x K shares whose rows sum to one, zero for a gene no factor explains,
    from dense and sparse input alike."""
    loadings = np.array([[1.0, 3.0], [0.0, 0.0], [2.0, 0.0]])
    cells = np.array([[1.0, 1.0], [1.0, 0.0]])
    shares = vbsnmf.tl.gene_specificity(loadings, cells)
    expected = loadings * cells.sum(0)
    expected[[0, 2]] /= expected[[0, 2]].sum(1, keepdims=True)
    np.testing.assert_allclose(shares, expected)
    sparse = vbsnmf.tl.gene_specificity(sp.csr_matrix(loadings), sp.csr_matrix(cells))
    np.testing.assert_allclose(sparse, expected)


def _fit_parser():
    from vbsnmf import cli

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices


def _help_of(command: str, option: str) -> str:
    action = next(a for a in _fit_parser()[command]._actions if option in a.option_strings)
    return action.help


def test_cli_init_help_does_not_call_nndsvda_deterministic():
    """``--init nndsvda``'s help said "deterministic", but its truncated SVD is drawn from
    the seed: two seeds give two starts."""
    from vbsnmf._nndsvd import nndsvda_means

    for command in ("fit", "demo"):
        assert "deterministic" not in _help_of(command, "--init")
        assert "--seed" in _help_of(command, "--init")
    counts = sp.random(60, 40, density=0.3, random_state=0, format="csr") * 10
    counts.data = np.round(counts.data) + 1
    first = nndsvda_means(counts, 4, np.random.default_rng(0), 1e-3)
    second = nndsvda_means(counts, 4, np.random.default_rng(1), 1e-3)
    assert any(not np.allclose(a, b) for a, b in zip(first, second, strict=True))


def test_cli_umap_help_states_the_smallest_n_neighbors():
    """``--n-neighbors`` refuses 1 (as `pl.umap` does); its help said only the largest."""
    assert "at least 2" in _help_of("umap", "--n-neighbors")
    from vbsnmf.cli import UsageError

    with pytest.raises(UsageError, match="must be >= 2"):
        _fit_parser()["umap"].parse_args(["r.h5ad", "-o", "u.png", "--n-neighbors", "1"])


def test_pl_module_docstring_says_what_show_and_save_do():
    """Every plot's ``show, save`` says "As scanpy's (see `vbsnmf.pl`)", but
    ``help(vbsnmf.pl)`` said nothing about them (the rules sat in a private module)."""
    for name in vbsnmf.pl.__all__:
        assert "see `vbsnmf.pl`" in getattr(vbsnmf.pl, name).__doc__
    doc = vbsnmf.pl.__doc__
    for promise in ("sc.settings.autoshow", "save=True", "sc.settings.figdir", "pathlib.Path"):
        assert promise in doc, promise


def test_pl_elbo_takes_save_true_as_its_signature_now_says(tmp_path):
    """``pl.elbo(save=True)`` writes into scanpy's figdir as the other plots do (that part
    passes on the base code too), and its signature now says so: its annotation left
    ``bool`` out, as if ``save=True`` were not taken."""
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    adata = vbsnmf.datasets.pbmc_tiny()[:200].copy()
    with pytest.warns(vbsnmf.ConvergenceWarning):
        vbsnmf.tl.nmf(adata, n_components=2, max_iter=3, prior="gamma")
    figdir = sc.settings.figdir
    sc.settings.figdir = tmp_path  # a property of scanpy's settings: set and restored
    try:
        vbsnmf.pl.elbo(adata, save=True, show=False)
    finally:
        sc.settings.figdir = figdir
    assert [path.stem for path in tmp_path.iterdir()] == ["elbo"]
    assert "bool" in str(inspect.signature(vbsnmf.pl.elbo).parameters["save"].annotation)


def _defaults_table() -> dict[str, tuple[str, str]]:
    text = (ROOT / "docs" / "model.md").read_text()
    section = text.split("## Defaults, and where each comes from", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and not set(cells[0]) <= set("-"):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_model_md_defaults_table_holds_the_code_defaults():
    """Guard: each value in docs/model.md's table of defaults is the code's."""
    from vbsnmf import _svi

    table = _defaults_table()
    signature = inspect.signature(vbsnmf.VBNMF).parameters
    assert table["`prior`"][0] == f'`"{signature["prior"].default}"`'
    assert table["`init`"][0] == f'`"{signature["init"].default}"`'
    assert table["`tol`"][0].startswith(f"{signature['tol'].default:.0e}".replace("e-0", "e-"))
    assert table["`max_iter`"][0] == f"{signature['max_iter'].default:,} passes"
    assert table["`n_init`"][0] == str(signature["n_init"].default)
    assert signature["dtype"].default is np.float64 and table["`dtype`"][0] == "float64"
    tau, kappa = signature["tau"].default, signature["kappa"].default
    assert table["SVI `tau`, `kappa`"][0] == f"{tau:g}, {kappa:g}"
    batch = table["SVI batch (cells form)"][0]
    assert f"max({_svi.MIN_CELL_BATCH}, ceil(C / {_svi.CELL_STEPS_PER_EPOCH}))" in batch
    assert f"{_svi.EVAL_BLOCK_ROWS:,}" in batch
    epochs = table["SVI `n_epochs`"][0]
    steps = _svi.DEFAULT_EPOCHS * _svi.CELL_STEPS_PER_EPOCH
    assert epochs.startswith(f"{_svi.DEFAULT_EPOCHS} epochs of {_svi.CELL_STEPS_PER_EPOCH}")
    assert f"{steps:,} steps" in epochs
    assert _svi.default_n_epochs("cells", 1107) == -(-steps // 9) == 143
    assert _svi.default_n_epochs("nonzeros", 1107) == _svi.DEFAULT_EPOCHS


def test_model_md_hold_threshold_is_the_fixed_one_the_code_uses():
    """The table gave the hold's threshold as sqrt(tol), but it is sqrt(1e-5) whatever
    ``tol`` (`_model.HOLD_TOL`), as the text above it says."""
    from vbsnmf import _model

    value, _origin = _defaults_table()["the hold"]
    assert "sqrt(tol)" not in value and "sqrt(1e-5)" in value
    assert _model.HOLD_TOL == 1e-5**0.5
    # a change of 1e-3 releases the hold whatever tol the fit runs with
    assert _model.hold_released([-1000.0, -999.0])
    assert not _model.hold_released([-1000.0, -990.0])


def test_nndsvda_start_is_held_as_the_docs_now_say():
    """docs/model.md and `VBNMF`'s docstring said a batch fit "from a random start" holds
    the factor shapes; an NNDSVDa start is held too (a warm start is not)."""
    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(rng.gamma(1.0, 1.0, (80, 3)) @ rng.gamma(1, 1, (3, 30))))
    model = vbsnmf.VBNMF(3, init="nndsvda", random_state=0, max_iter=2, accelerate=False)
    with pytest.warns(vbsnmf.ConvergenceWarning):
        model.fit(counts)
    assert np.all(model.hyperparameters_["cell_factor_shape"] == 1.0)
    text = (ROOT / "docs" / "model.md").read_text()
    hold = text.split("**The hold.**", 1)[1].split("\n\n", 1)[0]
    assert "NNDSVDa" in hold and "warm start" in hold
    prior_doc = inspect.cleandoc(vbsnmf.VBNMF.__doc__).split("prior_shape, prior_rate")[0]
    assert "NNDSVDa" in prior_doc.split("The hold")[0].split("holds the factor shapes")[0][-120:]


def _architecture() -> str:
    return (ROOT / "docs" / "architecture.md").read_text()


def test_architecture_names_every_top_level_module():
    """docs/architecture.md's map left out `_tensor.py`, `_tensor_estimator.py` and
    `datasets/`."""
    text = _architecture()
    package = ROOT / "vbsnmf"
    names = [p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    names += [f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").exists()]
    missing = [name for name in sorted(names) if name not in text]
    assert not missing


def test_architecture_names_resolve():
    """Guard: every `_module.name` and every function of the model table that
    docs/architecture.md names exists."""
    text = _architecture()
    for module, name in re.findall(r"`(_\w+)\.(\w+)`", text):
        if name == "py":  # a file's name
            continue
        assert hasattr(importlib.import_module(f"vbsnmf.{module}"), name), (module, name)
    table = text.split("**The model**", 1)[1].split("\n\n", 2)[1]
    model = importlib.import_module("vbsnmf._model")
    for name in re.findall(r"`(\w+)`", table):
        assert hasattr(model, name), name


def _relative_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.add(node.module or "")
    return found


def test_architecture_states_the_imports_the_code_has():
    """It said cli.py "imports no private module" (it imports several), and that each layer
    imports only from those below (the estimators import io's streams and path checks)."""
    text = _architecture()
    private = {m for m in _relative_imports(ROOT / "vbsnmf" / "cli.py") if "_" in m[:1] + m}
    assert any(part.startswith("_") for m in private for part in m.split("."))
    assert "imports no private module" not in text
    estimator_io = {
        m for m in _relative_imports(ROOT / "vbsnmf" / "_estimator.py") if m.startswith("io")
    }
    assert estimator_io and all(f"`{m.replace('.', '/')}.py`" in text for m in estimator_io)


def test_dask_install_advice_does_not_name_a_pypi_package(monkeypatch):
    """vbsnmf is not on PyPI: the advice ``pip install 'vbsnmf[dask]'`` would install
    whatever PyPI holds under that name. It names dask's packages now."""
    from vbsnmf._dask import _cluster

    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError) as caught:
        _cluster.dask_array_module()
    message = str(caught.value)
    assert "vbsnmf[" not in message.replace("-e '.[dask]'", "")
    assert "distributed" in message and "dask[array]" in message
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match="dask\\[array\\]") as caught:
        _cluster.get_client(None)
    assert "pip install 'vbsnmf" not in str(caught.value)


def test_readme_lists_every_extra_and_installs_only_from_the_repository():
    """README named the extras [dask], [tutorial] and [dev] but not [tensor], and its
    tensor example said ``pip install 'vbsnmf[tensor]'`` for a package not on PyPI."""
    readme = (ROOT / "README.md").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    sentence = readme.split("The extras are", 1)[1].split("\n\n", 1)[0]
    assert all(f"`[{extra}]`" in sentence for extra in extras)
    assert not re.search(r"pip install '?vbsnmf", readme)


class _Parsed(Exception):
    pass


def _parse_only(monkeypatch, script: Path, arguments: list[str]) -> argparse.Namespace:
    """Parse ``arguments`` with ``script``'s own parser, running nothing else of it."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [script.name, *arguments])
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    with pytest.raises(_Parsed) as parsed:
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(script), run_name="__main__")
    return parsed.value.args[0]


def _documented_commands() -> list[tuple[str, list[str]]]:
    """The ``python benchmarks/NAME.py ...`` lines of benchmarks/README.md's and
    docs/performance.md's code blocks (fenced or indented), continuations joined."""
    commands = []
    for doc in ("benchmarks/README.md", "docs/performance.md"):
        text = re.sub(r"\\\n\s*", " ", (ROOT / doc).read_text())
        blocks = re.findall(r"^```\w*\n(.*?)^```", text, flags=re.S | re.M)
        lines = [line for block in blocks for line in block.splitlines()]
        lines += [line for line in text.splitlines() if line.startswith("    python ")]
        for line in lines:
            match = re.match(r"\s*python benchmarks/(\w+\.py)((?: [^#]*)?)", line)
            if match:
                commands.append((match.group(1), match.group(2).split()))
    return commands


def test_benchmark_commands_in_the_docs_parse(monkeypatch):
    """Guard: every benchmark command line of the docs' code blocks names a script that
    exists and that its parser accepts, as written."""
    commands = _documented_commands()
    assert len(commands) >= 8
    for name, arguments in commands:
        script = BENCHMARKS / name
        assert script.exists(), name
        with monkeypatch.context() as patch:
            _parse_only(patch, script, arguments)


def test_every_benchmark_answers_help_without_running(monkeypatch):
    """``sklearn_heldout_zeros.py --help`` ignored the option and ran its whole fit of
    pbmc_facs; every script now prints its usage and stops."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    importlib.import_module("bench_model")  # so that the patch below reaches its load

    def no_data(*args, **kwargs):
        raise AssertionError("the benchmark ran instead of printing its help")

    for script in sorted(BENCHMARKS.glob("*.py")):
        if script.name.startswith("_"):
            continue
        with monkeypatch.context() as patch:
            patch.syspath_prepend(str(BENCHMARKS))
            patch.setattr(sys, "argv", [script.name, "--help"])
            if "bench_model" in sys.modules:
                patch.setattr(sys.modules["bench_model"], "load", no_data)
            out = io.StringIO()
            with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stopped:
                runpy.run_path(str(script), run_name="__main__")
            assert stopped.value.code == 0 and "usage:" in out.getvalue(), script.name


def _new_keys(adata, before: dict) -> dict[str, list[str]]:
    return {
        field: sorted(set(getattr(adata, field).keys()) - keys) for field, keys in before.items()
    }


def _keys_of(adata) -> dict:
    fields = ("obs", "obsm", "obsp", "var", "varm", "uns")
    return {field: set(getattr(adata, field).keys()) for field in fields}


def test_tl_nmf_docstring_names_every_key_a_fit_sets():
    """Guard: every ``.obsm``/``.varm``/``.var``/``.uns`` key and ``.uns['nmf']`` entry
    that `tl.nmf` sets (learned prior, fixed prior, classical) is named in its docstring,
    and it sets nothing in ``.obs``/``.obsp``."""
    doc = vbsnmf.tl.nmf.__doc__
    base = vbsnmf.datasets.pbmc_tiny()[:300].copy()
    for settings in ({}, {"prior": "gamma"}, {"solver": "mu", "max_iter": 5}):
        adata = base.copy()
        before = _keys_of(adata)
        with pytest.warns(vbsnmf.ConvergenceWarning):
            vbsnmf.tl.nmf(adata, n_components=3, **{"max_iter": 3, **settings})
        new = _new_keys(adata, before)
        assert not new["obs"] and not new["obsp"]
        for field in ("obsm", "varm", "var", "uns"):
            for key in new[field]:
                assert f".{field}['{key}']" in doc, (settings, field, key)
        record = adata.uns["nmf"]
        for entry in [*record, *record.get("variational", {})]:
            # the learned prior's gene entries: "and the same for ``gene``"
            named = (
                entry.replace("gene_", "cell_")
                if "_prior_" in entry or "_factor_" in entry
                else entry
            )
            assert f"``{named}``" in doc, (settings, entry)


def test_pl_umap_docstring_names_what_it_sets_and_replaces():
    """`pl.umap` said ``adata`` "gains" the graph and ``X_umap``; it also sets
    ``.uns['neighbors']`` and ``.uns['umap']``, and replaces a graph or UMAP stored
    before (of the PCs, say) without a word."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adata = vbsnmf.datasets.pbmc_tiny()[:300].copy()
    with pytest.warns(vbsnmf.ConvergenceWarning):
        vbsnmf.tl.nmf(adata, n_components=3, max_iter=3)
    adata.obsm["X_umap"] = np.zeros((adata.n_obs, 2))
    before = _keys_of(adata)
    before["obsm"].discard("X_umap")  # replaced: counted as set
    try:
        vbsnmf.pl.umap(adata, show=False, n_neighbors=5)
    finally:
        plt.close("all")
    assert np.any(adata.obsm["X_umap"] != 0)
    doc = " ".join(inspect.cleandoc(vbsnmf.pl.umap.__doc__).split())
    for field, keys in _new_keys(adata, before).items():
        for key in keys:
            named = f".{field}['{key}']" in doc or (
                key.startswith("nmf_dominant_factor") and "_dominant_factor" in doc
            )
            assert named, (field, key)
    assert "replacing" in doc


def _documented_attributes(cls) -> set[str]:
    doc = inspect.cleandoc(cls.__doc__)
    section = re.split(r"\n\S[^\n]*\n-{3,}\n", doc.split("Attributes\n----------\n", 1)[1])[0]
    names = set()
    for line in section.splitlines():
        if line and not line[0].isspace():
            names |= {name.strip() for name in line.split(":")[0].split(",")}
    return names


@pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")
def test_estimators_document_every_fitted_attribute():
    """Guard: every fitted attribute (``name_``) that `VBNMF` (both priors, SVI), `NMF` and
    `VBNTF` set is listed under Attributes, and each listed one is set (bar
    ``feature_names_in_``, set for a DataFrame only, as its entry says)."""
    counts = vbsnmf.datasets.pbmc_tiny().X[:200]
    rng = np.random.default_rng(0)
    tensor = rng.poisson(1.0, (4, 5, 30))
    coords = np.argwhere(tensor)
    fits = [
        vbsnmf.VBNMF(3, max_iter=3).fit(counts),
        vbsnmf.VBNMF(3, prior="gamma", max_iter=3).fit(counts),
        vbsnmf.VBNMF(3, solver="svi", n_epochs=1).fit(counts),
        vbsnmf.NMF(3, max_iter=3).fit(counts),
        vbsnmf.VBNTF(2, max_iter=3).fit(coords, tensor[tuple(coords.T)], tensor.shape),
    ]
    for model in fits:
        documented = _documented_attributes(type(model))
        fitted = {k for k in vars(model) if k.endswith("_") and not k.startswith("_")}
        assert fitted <= documented, (type(model).__name__, fitted - documented)
        for name in documented - fitted - {"feature_names_in_"}:
            assert hasattr(model, name), (type(model).__name__, name)


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_both_tutorials_read_the_quick_variable_alike(monkeypatch, value):
    """``VBSNMF_TUTORIAL_QUICK=true`` made pbmc_nmf_umap.py quick (any value but "" or "0")
    but pbmc_tensor.py ran its full fit (only "1"); both now read it alike (and both
    ``main`` take ``argv``, which pbmc_tensor.py's did not: "1" fails on the base code for
    that reason)."""
    monkeypatch.setenv("VBSNMF_TUTORIAL_QUICK", value)
    for name in ("pbmc_nmf_umap", "pbmc_tensor"):
        spec = importlib.util.spec_from_file_location(name, ROOT / "tutorials" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        calls = []
        monkeypatch.setattr(module, "run", lambda calls=calls, **kwargs: calls.append(kwargs))
        module.main([])
        # quick runs write apart from the kept full results (thirty-first pass)
        assert calls == [{"quick": True, "outdir": module.QUICK_OUTDIR}], name


@pytest.mark.parametrize("module", [vbsnmf.tl, vbsnmf.io, vbsnmf.pl], ids=lambda m: m.__name__)
def test_subpackage_docstring_names_every_export(module):
    """``help(vbsnmf.tl)`` and ``help(vbsnmf.io)`` list their tools, but left out
    `gene_specificity` and five of io's (`write_result`, `write_nmf_tables`,
    `read_h5ad_backed`, `real_path`, `UnsafePathError`)."""
    missing = [n for n in module.__all__ if not re.search(rf"`{n}`", module.__doc__)]
    assert not missing
