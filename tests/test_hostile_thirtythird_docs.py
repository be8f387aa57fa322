"""Thirty-third hostile pass, documentation: docs/architecture.md's account of the imports,
the bundled data sets' loaders against their docstrings and a damaged copy, the tensor
tutorial's results file off a 2-core Unix machine, README's fuzz count, and the defaults the
public docstrings state (vbsnmf.datasets included) against the signatures."""

from __future__ import annotations

import ast
import inspect
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from test_hostile_thirtyfirst_docs import STATED_DEFAULT, _same, _tutorial
from test_hostile_twentyninth_docs import PUBLIC, SECTION

import vbsnmf
import vbsnmf.datasets
from vbsnmf.datasets import _load
from vbsnmf.io import ReadError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vbsnmf"
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
# The bottom layer of docs/architecture.md's map: helpers any layer may import.
BOTTOM_LAYER = {
    "_utils",
    "_validation",
    "_atomic",
    "_checkpoint",
    "_memory",
    "_lazy",
    "_quoting",
    "_data",
    "_kernels",
}


def _imported_modules(path: Path) -> set[str]:
    """The package modules ``path`` imports (relative imports, anywhere in the file), as
    paths inside the package without the suffix (``"io/_paths"``)."""
    here = path.relative_to(PACKAGE).parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(here[: len(here) - (node.level - 1)])
            if node.module:
                found.add("/".join(base + node.module.split(".")))
            else:  # from . import tl, __version__: the names that are modules or packages
                for alias in node.names:
                    name = "/".join([*base, alias.name])
                    if (PACKAGE / f"{name}.py").exists() or (PACKAGE / name).is_dir():
                        found.add(name)
    return found


def _cli_paragraph() -> str:
    return ARCHITECTURE.split("**cli.py**", 1)[1].split("\n\n", 1)[0]


# -- docs/architecture.md -----------------------------------------------------------------
def test_architecture_names_every_private_module_cli_imports():
    """docs/architecture.md said the command line takes from private modules only the
    output file names, the table writer, a checkpoint's record and the stored fit's keys
    (four modules); it imports from fourteen, `pl/_umap.py`'s Leiden check and
    `tl/_nmf.py`'s advice among them. Each is now named in the paragraph."""
    private = sorted(
        name
        for name in _imported_modules(PACKAGE / "cli.py")
        if any(part.startswith("_") for part in name.split("/"))
    )
    assert len(private) >= 10, private  # the walk found the function-level imports
    paragraph = " ".join(_cli_paragraph().split())
    missing = [name for name in private if f"`{name}.py`" not in paragraph]
    assert not missing, missing


def test_architecture_states_what_the_streams_and_path_checks_import():
    """docs/architecture.md said `io/_stream.py` and `io/_paths.py` (the two modules the
    estimators import from a higher layer) import "only the helpers of the bottom layer";
    `io/_stream.py` imports io's readers too (`io/_read.py`, `io/_convert.py`,
    `io/_errors.py`). The page says so now, and nothing else is imported (no cycle
    through the estimators)."""
    imported = _imported_modules(PACKAGE / "io" / "_stream.py")
    imported |= _imported_modules(PACKAGE / "io" / "_paths.py")
    own_io = {name for name in imported if name.startswith("io/")}
    others = imported - own_io
    assert others <= BOTTOM_LAYER, others - BOTTOM_LAYER
    # io's own modules reach no higher than io and the bottom layer either
    for name in own_io:
        reached = _imported_modules(PACKAGE / f"{name}.py")
        assert {m for m in reached if not m.startswith("io/")} <= BOTTOM_LAYER, name
    opening = " ".join(ARCHITECTURE.split("```", 1)[0].split())
    assert own_io and "io's own readers and the helpers of the bottom layer" in opening


def test_architecture_names_every_reader_io_has():
    """The map said `io` reads "10x folders, `.h5ad` and `.mtx`"; `io.read` also reads a
    Cell Ranger `.h5` and a `.zarr` store (README's list), and `pl.elbo`/`pl.select_k`
    draw with matplotlib, not through scanpy's plots."""
    text = " ".join(ARCHITECTURE.split("**tl / pl / io**", 1)[1].split("\n\n", 1)[0].split())
    for reader, suffix in (("read_10x_h5", "`.h5`"), ("read_zarr", "`.zarr`")):
        assert hasattr(vbsnmf.io, reader) and suffix in text, suffix
    assert "`pl.elbo` and `pl.select_k` with matplotlib" in text


# -- vbsnmf.datasets ----------------------------------------------------------------------
@pytest.fixture
def facs_test_copy(tmp_path, monkeypatch):
    """A copy of the bundled ``pbmc_facs/test`` folder (100 cells) that `pbmc_facs` reads
    instead of the installed one, to damage."""
    copy = tmp_path / "data"
    shutil.copytree(_load._DATA / "pbmc_facs" / "test", copy / "pbmc_facs" / "test")
    monkeypatch.setattr(_load, "_DATA", copy)
    return copy / "pbmc_facs" / "test" / "cells.csv"


def test_pbmc_facs_with_an_empty_population_field_is_refused(facs_test_copy):
    """A cells.csv whose row lost its gate and group (``barcode,,``) loaded as a cell of no
    population (NaN in ``celltype`` and ``subpop``), though the docstring promises a
    `ReadError` naming the file for a damaged copy; it is now refused, naming the line."""
    lines = facs_test_copy.read_text().splitlines(keepends=True)
    lines[3] = lines[3].split(",")[0] + ",,\n"
    facs_test_copy.write_text("".join(lines))
    with pytest.raises(ReadError, match=r"cells\.csv.*empty celltype, subpop.*line 4"):
        vbsnmf.datasets.pbmc_facs(test=True)


def test_pbmc_facs_with_one_empty_field_names_its_column(facs_test_copy):
    """Only ``subpop`` empty on one row: refused, naming that column alone."""
    lines = facs_test_copy.read_text().splitlines(keepends=True)
    lines[7] = lines[7].rsplit(",", 1)[0] + ",\n"
    facs_test_copy.write_text("".join(lines))
    with pytest.raises(ReadError, match=r"empty subpop fields \(the first on line 8\)"):
        vbsnmf.datasets.pbmc_facs(test=True)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.unlink(), "cells.csv"),
        (lambda path: path.write_text(""), "EmptyDataError"),
        (lambda path: path.write_text("barcode,celltype\nx,y\n"), "lacks columns.*subpop"),
        (lambda path: path.write_bytes(b"\xff\xfe\x00" * 20), "UnicodeDecodeError"),
        (
            lambda path: path.write_text("".join(path.read_text().splitlines(True)[:50])),
            "barcodes disagree",
        ),
    ],
    ids=["missing", "empty", "no-subpop", "binary", "truncated"],
)
def test_pbmc_facs_damaged_cells_file_is_a_read_error(facs_test_copy, damage, message):
    """Guard (passes on the base code too): a missing, empty, binary or truncated
    cells.csv, or one without a column, is a `ReadError` naming the file."""
    damage(facs_test_copy)
    with pytest.raises(ReadError, match=message) as raised:
        vbsnmf.datasets.pbmc_facs(test=True)
    assert "cells.csv" in str(raised.value)


def test_loaders_return_what_their_docstrings_say():
    """Guard (passes on the base code too): `pbmc_tiny` (README: 1,107 cells x 507
    genes, CSR float32) and `pbmc_facs(test=True)` (100 cells, ``celltype`` with 10
    gates and ``subpop`` with the five named groups, as categoricals; unique names; whole
    counts); each call a fresh AnnData (no cache shared between callers)."""
    tiny = vbsnmf.datasets.pbmc_tiny()
    assert tiny.shape == (1107, 507) and tiny.X.format == "csr" and tiny.X.dtype == np.float32
    again = vbsnmf.datasets.pbmc_tiny()
    tiny.X.data[:] = 0
    assert again.X.sum() > 0  # a second call does not share the first one's arrays
    test = vbsnmf.datasets.pbmc_facs(test=True)
    assert test.shape == (100, 16791) and test.X.format == "csr"
    assert test.X.dtype == np.float32 and np.array_equal(test.X.data, np.round(test.X.data))
    assert test.obs_names.is_unique and test.var_names.is_unique
    assert "gene_ids" in test.var
    assert str(test.obs["celltype"].dtype) == "category"
    assert str(test.obs["subpop"].dtype) == "category"
    doc = " ".join(inspect.getdoc(vbsnmf.datasets.pbmc_facs).split())
    groups = re.search(r"\.obs\['subpop'\]`` \(([^)]*)\)", doc).group(1).split(", ")
    assert set(test.obs["subpop"].cat.categories) <= set(groups) and len(groups) == 5
    assert test.obs["celltype"].notna().all() and test.obs["subpop"].notna().all()


# -- stated defaults ----------------------------------------------------------------------
# A phrasing beyond the thirty-first pass's: "(default ``VALUE``" and "(default: ``VALUE``"
# (a default quoted as code and followed by more text).
MORE_STATED_DEFAULTS = [re.compile(r"\(default:?\s+``([^`]+)``")]
# A value `_same` can compare: a number, a quoted string, None/True/False or a numpy name.
LITERAL = re.compile(r"-?\d[\d,_.]*(?:e-?\d+)?|([\"']).*\1|None|True|False|np\.\w+")


def _public_with_datasets():
    """`PUBLIC` of the twenty-ninth pass, with `vbsnmf.datasets`' functions."""
    extra = [(f"vbsnmf.datasets.{n}", getattr(vbsnmf.datasets, n)) for n in vbsnmf.datasets.__all__]
    return [*PUBLIC, *extra]


def _stated_defaults():
    """(callable's name, parameter, stated text, signature default) for every default a
    public docstring's Parameters section states, with both pattern lists."""
    for name, obj in _public_with_datasets():
        try:
            parameters = inspect.signature(obj).parameters
        except (TypeError, ValueError):  # an exception class
            continue
        for section in SECTION.finditer(inspect.cleandoc(obj.__doc__ or "")):
            for entry in re.split(r"\n(?=\S)", section.group(2)):
                head, _, description = entry.partition("\n")
                names = [n.strip().lstrip("*") for n in head.split(":")[0].split(",")]
                text = " ".join(description.split())
                for pattern in [*STATED_DEFAULT, *MORE_STATED_DEFAULTS]:
                    for match in pattern.finditer(text):
                        if not LITERAL.fullmatch(match.group(1)):
                            continue  # what None means ("``linspace(-2, 3, 21)``"), no value
                        for parameter in names:
                            if parameter not in parameters:
                                continue
                            default = parameters[parameter].default
                            if default is inspect.Parameter.empty:
                                continue
                            if (name, parameter) == ("vbsnmf.VBNMF", "n_threads"):
                                continue  # a dask X's threads per chunk task, not the default
                            yield name, parameter, match.group(1), default


def test_stated_defaults_with_datasets_are_the_signatures():
    """Guard (passes on the base code too): every default a public docstring states,
    `vbsnmf.datasets` included and with one more phrasing, is the signature's; and a
    default another function's docstring quotes ("20 there", "as `VBNMF`'s") is that
    function's."""
    stated = list(_stated_defaults())
    assert len(stated) >= 20
    wrong = [f"{n}({p}): says {s}, is {d!r}" for n, p, s, d in stated if not _same(s, d)]
    assert not wrong, "\n".join(wrong)
    # the datasets' loaders state no default a signature contradicts
    pbmc_facs = inspect.signature(vbsnmf.datasets.pbmc_facs).parameters
    assert pbmc_facs["test"].default is False
    # quoted across functions
    tl_top = inspect.signature(vbsnmf.tl.top_genes).parameters["n_genes"].default
    pl_doc = " ".join(inspect.getdoc(vbsnmf.pl.top_genes).split())
    assert f"({tl_top} there)" in pl_doc
    vbnmf = inspect.signature(vbsnmf.VBNMF).parameters
    vbntf = inspect.signature(vbsnmf.VBNTF).parameters
    assert vbntf["max_iter"].default == vbnmf["max_iter"].default == 1000
    assert "Default 1,000, as `VBNMF`'s" in " ".join(inspect.getdoc(vbsnmf.VBNTF).split())
    triplets = inspect.signature(vbsnmf.fit_triplets).parameters["n_components"].default
    assert triplets == vbnmf["n_components"].default


def test_svi_defaults_the_docstring_states_are_the_rule():
    """Guard (passes on the base code too): `VBNMF`'s docstring states SVI's default
    minibatch (the cells in 32 minibatches of 128 to 4,096) and epochs (40, or as many as
    make 1,280 steps; pbmc_tiny's 1,107 cells: 143); the rule gives those numbers."""
    from vbsnmf._svi import default_batch_size, default_n_epochs

    doc = " ".join(inspect.getdoc(vbsnmf.VBNMF).split())
    assert "the cells in 32 minibatches, at least 128 and at most 4,096" in doc
    assert "(pbmc_tiny's 1,107 cells: 143)" in doc and "The default (None) is 40" in doc
    assert default_batch_size("cells", 1107, 0) == 128
    assert default_n_epochs("cells", 1107) == 143
    assert default_n_epochs("cells", 4096) == 40 and default_batch_size("cells", 4096, 0) == 128
    assert default_batch_size("cells", 1_000_000, 0) == 4096
    assert default_batch_size("nonzeros", 100, 800) == 100 and default_n_epochs("nonzeros", 9) == 40


# -- README's numbers ---------------------------------------------------------------------
def test_readme_counts_the_cli_fuzz_cases_generated():
    """README said 660 generated inputs go through the command line; the generators of
    `tests/test_fuzz.py` make 661 (tests/README.md's table says so too)."""
    import test_fuzz

    total = sum(len(list(cases())) for cases in test_fuzz.CATEGORIES.values())
    readme = " ".join((ROOT / "README.md").read_text().split())
    stated = re.search(r"(\d[\d,]*) generated malformed and valid inputs", readme)
    assert stated and int(stated.group(1).replace(",", "")) == total, total
    table = (ROOT / "tests" / "README.md").read_text()
    assert f"| **total** | **{total}** | |" in table


# -- the tensor tutorial's results file ---------------------------------------------------
def _write_tensor_results(module, folder: Path) -> str:
    """The results text `write_results` writes for a made-up two-component fit."""
    table = pd.DataFrame(
        {"share of counts": [0.9, 0.1], "top genes": ["A, B", "C, D"]},
        index=pd.Index([1, 0], name="component"),
    )
    model = SimpleNamespace(n_iter_=12, converged_=True, elbo_trace_=np.array([-5.0, -4.0]))
    module.write_results(folder, table, model, "VBNTF(2)", (3, 4, 4), 40, 1.25, 0.01, 0.02, False)
    return (folder / "pbmc_tensor_results.md").read_text()


def test_tensor_results_without_getloadavg_are_written(monkeypatch, tmp_path):
    """`write_results` called ``os.getloadavg()``, which Windows lacks: a full run there
    fitted, drew its figure and then ended in AttributeError without its results file. The
    file now leaves the load out where it cannot be read."""
    module = _tutorial("pbmc_tensor")
    monkeypatch.delattr(os, "getloadavg", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    text = _write_tensor_results(module, tmp_path)
    assert "in\n1.2 s. The machine has 8 cores. Final ELBO: -4 nats." in text


def test_tensor_results_count_the_cores_of_the_machine_that_ran(monkeypatch, tmp_path):
    """The results file said "The machine has 2 cores shared with other jobs" on every
    machine (the development machine's wording, written as a fact about the user's); it
    now counts the cores and reads the load it reports."""
    module = _tutorial("pbmc_tensor")
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.25, 0.5, 0.5))
    text = _write_tensor_results(module, tmp_path)
    assert "The machine has 16 cores (load average 0.2 at the end)." in text
    assert "2 cores" not in text and "shared with other jobs" not in text
    kept = " ".join((ROOT / "tutorials" / "pbmc_tensor_results.md").read_text().split())
    assert "The machine has 2 cores (load average 1.6 at the end)." in kept


def test_quick_tensor_tutorial_gives_no_convergence_warning(tmp_path, capsys):
    """``pbmc_tensor.py --quick`` (what CI runs) caps the fit at 150 passes and printed
    "VB stopped after max_iter=150 ... raise max_iter or tol" on every run, advice its
    own cap contradicts (`pbmc_nmf_umap.py --quick` keeps that warning quiet); the table
    still says ``converged: False``."""
    module = _tutorial("pbmc_tensor")
    with warnings.catch_warnings():
        warnings.simplefilter("error", vbsnmf.ConvergenceWarning)
        module.run(quick=True, outdir=tmp_path)
    assert "(converged: False)" in (tmp_path / "pbmc_tensor_results.md").read_text()
    assert "converged=False" in capsys.readouterr().out


def test_model_md_states_the_tensor_step_size_the_code_takes():
    """docs/model.md gave tensor SVI ``rho_t = (t + tau)^(-kappa)``, which exceeds 1 for
    the first steps at ``tau < 1``; `VBNTF` takes `VBNMF`'s ``min(1, ...)`` with t counting
    epochs (one function, `_svi.learning_rate`), as the page now says."""
    from vbsnmf import _svi, _tensor

    assert _tensor.learning_rate is _svi.learning_rate
    assert _svi.learning_rate(1, 0.0, 0.7, n_steps=8) == 1.0  # (1/8)^-0.7 = 4.3, capped
    text = " ".join((ROOT / "docs" / "model.md").read_text().split())
    line = text.split('SVI for tensors (`VBNTF(solver="svi")`)', 1)[1][:120]
    assert "min(1, (t + tau)^(-kappa))" in line and "t counting epochs" in line


def test_umap_tutorial_without_igraph_is_a_usage_error(monkeypatch, capsys, tmp_path):
    """``python tutorials/pbmc_nmf_umap.py`` without igraph (the ``[tutorial]`` extra the
    docstring names) loaded pbmc_facs, fitted the NMF and drew nothing before scanpy's
    Leiden raised its ImportError traceback; it is now the parser's error before any
    work, naming the extra."""
    module = _tutorial("pbmc_nmf_umap")
    monkeypatch.setattr(module, "run", lambda **kwargs: pytest.fail("ran"))
    monkeypatch.setitem(sys.modules, "igraph", None)  # import igraph raises ImportError
    with pytest.raises(SystemExit) as stopped:
        module.main(["--quick", "--outdir", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and "igraph" in error and "'.[tutorial]'" in error
    assert not (tmp_path / "out").exists()


def test_tensor_tutorial_without_sparse_is_a_usage_error(monkeypatch, capsys, tmp_path):
    """``python tutorials/pbmc_tensor.py`` without pydata sparse ended in
    ModuleNotFoundError's traceback, and its docstring named no extra; it is now the
    parser's error naming ``[tensor]``, which the docstring names too."""
    module = _tutorial("pbmc_tensor")
    monkeypatch.setattr(module, "run", lambda **kwargs: pytest.fail("ran"))
    monkeypatch.setitem(sys.modules, "sparse", None)
    with pytest.raises(SystemExit) as stopped:
        module.main(["--quick", "--outdir", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and "pydata sparse" in error and "'.[tensor]'" in error
    assert "'.[tensor]'" in module.__doc__


# -- docstrings as help() shows them ------------------------------------------------------
def test_no_public_docstring_holds_a_control_character():
    """`write_nmf_tables`' docstring wrote ``sep="\\t"`` in a plain string: the docstring
    held a tab, which ``help()`` (and `inspect.getdoc`) show as spaces, so the example
    read back from help() split on five spaces. No public docstring (functions, classes,
    methods, modules) holds a tab or another control character but the line break."""
    modules = [vbsnmf, vbsnmf.tl, vbsnmf.pl, vbsnmf.io, vbsnmf.classic, vbsnmf.datasets]
    found = [(f"module {m.__name__}", m.__doc__) for m in modules]
    found += [(name, obj.__doc__) for name, obj in _public_with_datasets()]
    bad = [name for name, doc in found if doc and re.search(r"[\x00-\x09\x0b-\x1f]", doc)]
    assert not bad, bad


def test_write_nmf_tables_example_from_help_reads_the_table(tmp_path):
    """The ``pandas.read_csv`` call `write_nmf_tables`' docstring gives, copied as help()
    shows it, reads the table it wrote: the cells as text and K factor columns."""
    import pandas

    adata = vbsnmf.datasets.pbmc_tiny()[:60].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, n_components=2, max_iter=3)
    vbsnmf.io.write_nmf_tables(adata, tmp_path)
    doc = inspect.getdoc(vbsnmf.io.write_nmf_tables)
    call = re.search(r"pandas\.read_csv\(.*?\)(?=\s*#)", doc, flags=re.S).group(0)
    path = tmp_path / "cell_factors.tsv.gz"
    table = eval(call, {"pandas": pandas, "path": path})  # the docstring's code, as copied
    assert table.shape == (60, 2) and list(table.columns) == ["factor_0", "factor_1"]
    assert list(table.index) == list(adata.obs_names)
