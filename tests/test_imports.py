"""The package's modules import each other without cycles, and each imports on its own.

Every ``import`` of a vbsnmf module, at module level or inside a function, is an edge from
the importing module to the imported one and to the subpackages on its way (importing
``vbsnmf.io._read`` runs ``vbsnmf/io/__init__.py``), except the packages that hold the
importing module, which are being initialised already when it runs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vbsnmf"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The vbsnmf modules (and subpackages) ``name`` imports, anywhere in its code."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from x import y``: y may be a submodule of x or a name defined in x.
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for end in range(2, len(parts) + 1):  # subpackages on the way, and the module
                prefix = ".".join(parts[:end])
                # A module's own packages are already being initialised when it runs.
                if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                    found.add(prefix)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["vbsnmf._estimator"] >= {"vbsnmf._model", "vbsnmf._batch"}  # edges are seen
    assert "vbsnmf._dask" in _imports(
        "vbsnmf._estimator", modules["vbsnmf._estimator"], modules
    )  # also imports inside functions
    assert _cycles(graph) == []


def test_the_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh interpreter: no module relies on another
    having been imported before it."""
    names = sorted(n for n in _modules() if not n.endswith("__main__"))
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n"
    script += "    for loaded in [m for m in sys.modules if m.startswith('vbsnmf')]:\n"
    script += "        del sys.modules[loaded]\n    importlib.import_module(name)\n"
    result = subprocess.run(
        [sys.executable, "-c", script, *names], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


_LIGHT_FIT = """
import sys, warnings
import numpy as np, scipy.sparse as sp
import vbsnmf
counts = sp.random(60, 40, density=0.3, format="csr", random_state=0)
counts.data = np.ceil(counts.data * 5)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = vbsnmf.VBNMF(3, max_iter=2, random_state=0, n_threads=1).fit(counts)
categories = {w.category for w in caught}
assert categories == {vbsnmf.ConvergenceWarning}, categories
try:
    vbsnmf.VBNMF().transform(counts)
except ValueError as error:
    assert isinstance(error, AttributeError) and "not fitted yet" in str(error), error
else:
    raise AssertionError("transform before fit did not raise")
assert repr(model) == "VBNMF(n_components=3, max_iter=2, random_state=0, n_threads=1)", model
assert model._repr_html_() is None  # the notebook then shows the repr
heavy = sorted(m for m in ("sklearn", "pandas", "anndata", "scipy.stats") if m in sys.modules)
print(",".join(heavy))
"""


def test_a_fit_loads_neither_scikit_learn_nor_pandas():
    """`VBNMF` on a scipy matrix imports neither scikit-learn (1.3 s, 90 MiB) nor pandas:
    its estimator contract, its warning and its not-fitted error need neither loaded."""
    result = subprocess.run(
        [sys.executable, "-c", _LIGHT_FIT], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


_LIGHT_TOOLS = """
import sys, warnings
import anndata as ad, numpy as np, scipy.sparse as sp
from vbsnmf import cli, tl
cli.build_parser().parse_args(["fit", "counts.h5ad", "-k", "3", "-o", "out"])
counts = sp.random(60, 40, density=0.3, format="csr", random_state=0)
counts.data = np.ceil(counts.data * 5)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tl.nmf(ad.AnnData(counts), n_components=3, max_iter=2, random_state=0)
print(",".join(sorted(m for m in ("sklearn", "scanpy", "matplotlib") if m in sys.modules)))
"""


def test_the_command_line_and_tl_nmf_load_no_scikit_learn():
    """The command line's options and `tl.nmf` with a variational solver load neither
    scikit-learn nor scanpy: only a classical solver needs the former, and only the 10x
    readers and the plots the latter (each 1-2 s of a command's start)."""
    result = subprocess.run(
        [sys.executable, "-c", _LIGHT_TOOLS], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
