"""vbsnmf in its environment (the thirty-fourth hostile pass, area env): libraries missing
(set to None in ``sys.modules`` before vbsnmf is imported, in a process of its own), no
writable cache folder for Numba, Numba's threading-layer variables, and what importing
vbsnmf does. Each test fails on the code before its fix unless its docstring says it
guards a normal case."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import tomllib
from cli_output import without_compile_notice

REPO = Path(__file__).resolve().parents[1]
# 20 cells x 12 genes
COUNTS = np.random.default_rng(0).poisson(2, (20, 12))
CLI = "from vbsnmf.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"


def _python(code: str, *args, blocked=(), **environment) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (this clone first on the path) whose ``blocked``
    modules are None in ``sys.modules``, as if not installed, and whose environment adds
    ``environment``."""
    block = f"import sys\nfor name in {list(blocked)!r}:\n    sys.modules[name] = None\n"
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "NUMBA_NUM_THREADS": "1", **environment}
    return subprocess.run(
        [sys.executable, "-c", block + code, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def cells_mtx(tmp_path):
    """A Matrix Market file of `COUNTS`, cells as rows."""
    path = tmp_path / "x.mtx"
    scipy.io.mmwrite(path, sp.csr_matrix(COUNTS))
    return path


def test_kernels_import_without_a_writable_numba_cache():
    """Before: where Numba can write its cache neither beside vbsnmf nor in the user's cache
    folder (a read-only install, HOME read-only, as in a container run as another user),
    importing the kernels (every fit) failed with Numba's "cannot cache function
    '_shifted': no locator available". Now the kernels are compiled uncached, and the
    command line's compile notice says so and how to keep them."""
    code = (
        "import numba.core.caching as caching\n"
        "caching.CacheImpl._locator_classes = []  # no folder Numba may write to\n"
        "import vbsnmf._kernels as kernels\n"
        "from numba.core.caching import NullCache\n"
        "print(kernels.DISK_CACHE, isinstance(kernels.csr_is_canonical._cache, NullCache))\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr[-800:]
    assert result.stdout.split() == ["False", "True"]


def test_kernels_use_the_disk_cache_where_numba_can_write_it():
    """A guard (passes on both): with a writable cache folder the kernels are cached."""
    code = "import vbsnmf._kernels as kernels\nprint(kernels.csr_is_canonical._cache)\n"
    result = _python(code)
    assert result.returncode == 0, result.stderr[-800:]
    assert "NullCache" not in result.stdout and "FunctionCache" in result.stdout


def test_cli_names_the_package_to_install(cells_mtx, tmp_path):
    """Before: a library not installed (h5py here, under anndata) made the command line say
    "internal error (ModuleNotFoundError: ...); rerun with VBSNMF_DEBUG=1", exit code 1.
    Now one line naming the package and the command that installs it, exit code 2."""
    outdir = tmp_path / "o"
    argv = ["fit", cells_mtx, "--cells-as-rows", "-k", "2", "-o", outdir]
    result = _python(CLI, *argv, blocked=["h5py"])
    err = without_compile_notice(result.stderr)
    assert result.returncode == 2, err
    assert err.count("\n") == 1, err
    assert err.startswith("vbsnmf: error: the Python package h5py is not installed")
    assert err.endswith("; install it with python -m pip install h5py\n")
    assert not outdir.exists()


def test_pl_umap_names_umap_learn():
    """Before: `vbsnmf.pl.umap` without umap-learn failed inside scanpy's neighbours with
    "No module named 'umap'" (``pip install umap`` installs another project), after its
    checks. Now an ImportError naming umap-learn before any work (the AnnData here holds no
    fit: the KeyError about that came first)."""
    code = (
        "import anndata as ad, numpy as np, vbsnmf\n"
        "try:\n"
        "    vbsnmf.pl.umap(ad.AnnData(np.ones((6, 3))))\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = _python(code, blocked=["umap"])
    assert result.returncode == 0, result.stderr[-800:]
    assert "the Python package umap-learn is not installed" in result.stdout
    assert result.stdout.rstrip().endswith("python -m pip install umap-learn")


def test_quiet_fit_runs_without_tqdm(cells_mtx, tmp_path):
    """Before: ``vbsnmf fit --quiet``, which shows no progress bar, failed without tqdm
    (the progress bar's library) as an internal error. Now it fits; without --quiet the
    missing tqdm is one line naming it."""
    argv = ["fit", cells_mtx, "--cells-as-rows", "-k", "2", "--max-iter", "2"]
    result = _python(CLI, *argv, "--quiet", "-o", tmp_path / "q", blocked=["tqdm"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and (tmp_path / "q" / "result.h5ad").is_file()
    result = _python(CLI, *argv, "-o", tmp_path / "loud", blocked=["tqdm"])
    assert result.returncode == 2 and "python -m pip install tqdm" in result.stderr
    assert not (tmp_path / "loud").exists()


def test_threading_layer_priority_is_named_not_taken_for_counts():
    """Before: a NUMBA_THREADING_LAYER_PRIORITY Numba refuses failed `vbsnmf.tl.nmf` with
    "THREADING_LAYER_PRIORITY invalid ...; NMF needs raw counts: keep the raw counts
    before normalising" (Numba loads its layer at the first kernel, which checks the
    counts). Now a RuntimeError naming the variable and its value, and how to write it."""
    code = (
        "import anndata as ad, numpy as np, scipy.sparse as sp, vbsnmf\n"
        "adata = ad.AnnData(sp.csr_matrix(np.ones((6, 4), dtype=np.float32)))\n"
        "try:\n"
        "    vbsnmf.tl.nmf(adata, 2, max_iter=2)\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    result = _python(code, NUMBA_THREADING_LAYER_PRIORITY="omp,tbb,workqueue")
    assert result.returncode == 0, result.stderr[-800:]
    assert "raw counts" not in result.stdout
    assert result.stdout.startswith(
        "the environment variable NUMBA_THREADING_LAYER_PRIORITY='omp,tbb,workqueue' is not "
        "an order of Numba's threading layers"
    )
    assert "separated by spaces ('omp tbb workqueue')" in result.stdout


def test_threading_layer_of_a_python_fit_is_named():
    """Before: a NUMBA_THREADING_LAYER Numba cannot load failed `VBNMF.fit` with Numba's
    bare ValueError "The threading layer requested 'bogus' is unknown to Numba.". Now a
    RuntimeError naming the variable, as the command line's."""
    code = (
        "import numpy as np, scipy.sparse as sp, vbsnmf\n"
        "try:\n"
        "    vbsnmf.VBNMF(2, max_iter=2).fit(sp.csr_matrix(np.ones((6, 4))))\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    result = _python(code, NUMBA_THREADING_LAYER="bogus")
    assert result.returncode == 0, result.stderr[-800:]
    assert result.stdout.startswith(
        "the environment variable NUMBA_THREADING_LAYER='bogus' names a threading layer "
        "that Numba cannot load"
    )


def test_cli_names_the_threading_layer_priority(cells_mtx, tmp_path):
    """Before: ``vbsnmf fit`` under NUMBA_THREADING_LAYER_PRIORITY=bogus said "vbsnmf:
    error: THREADING_LAYER_PRIORITY invalid: ['bogus']. ...; NMF needs raw counts". Now
    the variable is named, before the input is read."""
    argv = ["fit", cells_mtx, "--cells-as-rows", "-k", "2", "-o", tmp_path / "o"]
    result = _python(CLI, *argv, NUMBA_THREADING_LAYER_PRIORITY="bogus")
    err = without_compile_notice(result.stderr)
    assert result.returncode == 2, err
    assert err.count("\n") == 1 and "raw counts" not in err
    assert err.startswith(
        "vbsnmf: error: the environment variable NUMBA_THREADING_LAYER_PRIORITY='bogus' "
    )


def test_a_blocked_distributed_gives_the_install_advice():
    """Before: with distributed blocked (None in sys.modules) `VBNMF.fit` of a Dask array
    failed with "import of distributed halted" from a check that took the None entry for
    the loaded module. Now the ImportError that says how to install it."""
    code = (
        "import numpy as np, dask.array as da, vbsnmf\n"
        "try:\n"
        "    vbsnmf.VBNMF(2, max_iter=2).fit(da.from_array(np.ones((6, 4)), chunks=(3, 4)))\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    result = _python(code, blocked=["distributed"])
    assert result.returncode == 0, result.stderr[-800:]
    assert result.stdout.startswith("ImportError the distributed fit needs dask.distributed")
    assert "python -m pip install" in result.stdout


def test_a_fit_warns_with_scikit_learn_blocked():
    """Before: with scikit-learn blocked (None in sys.modules) a `VBNMF` fit on a scipy
    matrix, which needs no scikit-learn, failed at its ConvergenceWarning. Now it warns."""
    code = (
        "import warnings, numpy as np, scipy.sparse as sp, vbsnmf\n"
        "counts = sp.csr_matrix(np.random.default_rng(0).poisson(2, (30, 20)))\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    model = vbsnmf.VBNMF(2, max_iter=2, random_state=0).fit(counts)\n"
        "print(sorted({w.category.__name__ for w in caught}), model.transform(counts).shape)\n"
    )
    result = _python(code, blocked=["sklearn"])
    assert result.returncode == 0, result.stderr[-800:]
    assert result.stdout.strip() == "['ConvergenceWarning'] (30, 2)"


@pytest.mark.parametrize("blocked", ["dask", "distributed", "matplotlib", "scanpy", "umap"])
def test_fits_and_tables_need_no_optional_library(blocked, tmp_path):
    """A guard (passes on both): without dask, distributed, matplotlib, scanpy or umap-learn
    a fit in memory, `tl.nmf`, `tl.top_genes` and the written result and tables work."""
    code = (
        "import warnings, anndata as ad, numpy as np, scipy.sparse as sp, vbsnmf\n"
        "warnings.simplefilter('ignore')\n"
        "counts = sp.csr_matrix(np.random.default_rng(0).poisson(2, (30, 20)))\n"
        "adata = ad.AnnData(counts.astype(np.float32))\n"
        "vbsnmf.tl.nmf(adata, 2, max_iter=3, random_state=0)\n"
        "table = vbsnmf.tl.top_genes(adata, n_genes=2)\n"
        "vbsnmf.io.write_result(adata, sys.argv[1] + '/r.h5ad')\n"
        "vbsnmf.io.write_nmf_tables(adata, sys.argv[1])\n"
        "print(adata.obsm['X_nmf'].shape, len(table) > 0)\n"
    )
    result = _python(code, tmp_path, blocked=[blocked])
    assert result.returncode == 0, result.stderr[-800:]
    assert result.stdout.strip() == "(30, 2) True"
    assert (tmp_path / "r.h5ad").is_file() and (tmp_path / "gene_loadings.tsv.gz").is_file()


def test_import_starts_no_thread_compiles_nothing_and_warns_nothing(tmp_path):
    """A guard (passes on both): importing vbsnmf and its subpackages in a fresh process
    prints no warning, starts no thread, loads no Numba threading layer, compiles no
    kernel and writes no file in the current folder or HOME."""
    code = (
        "import threading, warnings\n"
        "warnings.simplefilter('always')\n"
        "import vbsnmf, vbsnmf.tl, vbsnmf.io, vbsnmf.pl, vbsnmf.classic, vbsnmf._kernels\n"
        "from vbsnmf import VBNMF, VBNTF, NMF\n"
        "from numba.core.registry import CPUDispatcher\n"
        "from numba.np.ufunc import parallel\n"
        "kernels = [v for v in vars(vbsnmf._kernels).values() if isinstance(v, CPUDispatcher)]\n"
        "print(threading.active_count(), parallel._is_initialized,\n"
        "      sum(bool(kernel.signatures) for kernel in kernels), len(kernels) > 10)\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "MPLCONFIGDIR": str(home / "mpl"), "PYTHONWARNINGS": "always"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, **env, "PYTHONPATH": str(REPO), "NUMBA_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-800:]
    assert result.stderr == ""
    assert result.stdout.split() == ["1", "False", "0", "True"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    assert list(home.iterdir()) == []


def test_version_and_help_under_the_c_locale():
    """A guard (passes on both): ``python -m vbsnmf --version`` and ``--help`` under LANG=C
    and LC_ALL=C print the version of pyproject.toml and the commands, exit code 0."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    env = {**os.environ, "LANG": "C", "LC_ALL": "C", "PYTHONPATH": str(REPO)}
    for option, expected in (("--version", f"vbsnmf {version}\n"), ("--help", "fit")):
        result = subprocess.run(
            [sys.executable, "-m", "vbsnmf", option], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert expected in result.stdout


def _third_party_modules() -> set[str]:
    """The top-level modules vbsnmf's code imports (anywhere in it), but the standard
    library's and its own."""
    found = set()
    for path in (REPO / "vbsnmf").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.partition(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names} - {"vbsnmf"}


def test_every_imported_library_is_declared():
    """A guard (passes on both): each library vbsnmf's code imports is a dependency or in
    an extra of pyproject.toml (llvmlite comes with numba, umap-learn with scanpy), and
    requires-python is the version ruff checks against."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = project["project"]["dependencies"] + [
        requirement
        for extra in project["project"]["optional-dependencies"].values()
        for requirement in extra
    ]
    names = {
        requirement.split(">")[0].split("[")[0].split("=")[0].strip().lower()
        for requirement in declared
    }
    module_to_package = {"sklearn": "scikit-learn", "umap": "umap-learn"}
    missing = {
        module
        for module in _third_party_modules()
        if module_to_package.get(module, module) not in names
    }
    # numba's own dependency, and scanpy's (vbsnmf imports it to name it when missing)
    assert missing <= {"llvmlite", "umap"}, missing
    assert project["project"]["requires-python"] == ">=3.10"
    assert project["tool"]["ruff"]["target-version"] == "py310"
    assert project["project"]["scripts"] == {"vbsnmf": "vbsnmf.cli:run"}
