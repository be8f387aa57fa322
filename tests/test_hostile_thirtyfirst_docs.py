"""Thirty-first hostile pass, documentation: README.md's table of what `tl.nmf` writes, the
tutorials' output folders, the benchmarks' argument checks, and the defaults the public
docstrings state against the signatures."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import io
import re
import runpy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_hostile_twentyninth_docs import PUBLIC, SECTION

import vbsnmf

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
README = (ROOT / "README.md").read_text()


# -- README's table of what tl.nmf writes -----------------------------------------------
def test_readme_table_names_every_array_the_default_fit_stores(pbmc_tiny):
    """README's table gave only the shapes as what `tl.project` and ``warm_start=True``
    use and put "the Gamma rates" in ``.uns['nmf']``; under the default (learned) prior
    the rates are per cell and per gene in ``.obsm``/``.varm``, beside the scales' q."""
    adata = pbmc_tiny.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(adata, 3, max_iter=3)
    assert adata.uns["nmf"]["variational"]["prior"] == "hierarchical"
    missing = [
        f'.{field}["{key}"]'
        for field in ("obsm", "varm")
        for key in getattr(adata, field)
        if f'.{field}["{key}"]' not in README
    ]
    missing += [f'.var["{k}"]' for k in adata.var if k.startswith("nmf") and k not in README]
    assert not missing, f"README's table leaves out {missing}"


def test_readme_says_where_key_added_stores():
    """It said ``key_added=KEY`` "stores under `X_KEY`, `KEY` and `KEY`", naming no field."""
    sentence = README[README.index("`key_added=KEY`") :][:300]
    for where in ('.obsm["X_KEY"]', '.varm["KEY"]', '.uns["KEY"]'):
        assert where in sentence, where


# -- the tutorials' output folders --------------------------------------------------------
def _tutorial(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tutorials" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["pbmc_nmf_umap", "pbmc_tensor"])
def test_quick_tutorial_run_keeps_the_full_runs_results(monkeypatch, name):
    """``python tutorials/NAME.py --quick`` (or ``VBSNMF_TUTORIAL_QUICK=1``), the reduced
    setting the docstring offers, wrote its 30-iteration figures and table into tutorials/
    over the full run's, which README links to; it now writes into tutorials/quick/, and
    the full run still into tutorials/ (that part a guard)."""
    monkeypatch.delenv("VBSNMF_TUTORIAL_QUICK", raising=False)
    module = _tutorial(name)
    run = module.run
    calls = []
    monkeypatch.setattr(module, "run", lambda **kwargs: calls.append(kwargs))
    module.main(["--quick"])
    module.main([])
    monkeypatch.setenv("VBSNMF_TUTORIAL_QUICK", "1")
    module.main([])
    quick, full, by_variable = (call["outdir"] for call in calls)
    kept = module.HERE
    assert full == kept
    for outdir in (quick, by_variable):
        assert outdir != kept and Path(outdir).resolve().parent == kept
    assert "tutorials/quick/" in (ROOT / ".gitignore").read_text().split()
    # called from Python without an outdir, run resolves it the same way
    assert inspect.signature(run).parameters["outdir"].default is None
    assert module.default_outdir(True) == quick and module.default_outdir(False) == kept


# -- the benchmarks' arguments ------------------------------------------------------------
class _Parser(Exception):
    pass


def _parser_of(monkeypatch, script: Path) -> argparse.ArgumentParser:
    """``script``'s own argument parser, running nothing of the script past its creation."""

    def hand_over(self, args=None, namespace=None):
        raise _Parser(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", hand_over)
        patch.setattr(sys, "argv", [script.name])
        patch.syspath_prepend(str(BENCHMARKS))
        with pytest.raises(_Parser) as handed, contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(script), run_name="__main__")
    return handed.value.args[0]


SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_counts_are_checked_by_argparse(monkeypatch, script):
    """``bench_batch.py --iters 0`` ended in an IndexError, ``--components 0`` and
    ``--threads 0`` in a child's traceback, ``count_range.py --seeds 0`` in max() of an
    empty list, ``make_big.py --cells -5`` wrote a matrix of "-5 cells". Every integer
    option is now a positive (or, for seeds and optional repeats, non-negative) count or a
    closed set of choices, so a bad one is argparse's usage error. (engine_traces.py and
    sklearn_heldout_zeros.py have no integer option: their cases pass on the base code too.)"""
    parser = _parser_of(monkeypatch, script)
    bare = [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if action.type is int and action.choices is None
    ]
    assert not bare, f"{script.name}: unchecked integer options {bare}"


@pytest.mark.parametrize(
    ("script", "arguments"),
    [
        ("bench_batch.py", ["--iters", "0"]),
        ("bench_batch.py", ["--components", "0"]),
        ("bench_classic.py", ["--repeats", "0"]),
        ("bench_write_tsv.py", ["--repeats", "0"]),
        ("count_range.py", ["--seeds", "0"]),
        ("make_big.py", ["--cells", "-5", "--out", "unused"]),
        ("bench_scale.py", ["series", "--factors", "1,abc"]),
        ("bench_scale.py", ["series", "--factors", "0"]),
        ("bench_iteration.py", ["--dtypes", "float16"]),
        ("bench_tensor.py", ["--sections", "7"]),
        ("bench_model.py", ["--ks", "-1"]),
        ("seed001_experiment.py", ["--reps", "0"]),
    ],
)
def test_bad_benchmark_argument_is_a_usage_error(monkeypatch, capsys, script, arguments):
    """Each of these ran (or crashed) before; now argparse stops it with exit code 2."""
    parser = _parser_of(monkeypatch, BENCHMARKS / script)
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(arguments)
    assert stopped.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_benchmark_count_types_accept_what_they_should():
    """The shared argparse types (new in `benchmarks/_common.py`) take the counts they are
    for and refuse the rest."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _common
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert _common.positive_int("3") == 3 and _common.non_negative_int("0") == 0
    assert _common.positive_int_list("1, 2,8") == [1, 2, 8]
    for bad in ("0", "-1", "2.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _common.positive_int(bad)


# -- defaults stated in the docstrings ----------------------------------------------------
# "``VALUE`` (default)", "None (default)", "(default 10)", "default: ``VALUE``)",
# "Default 1,000," and "The default, 2,": a default stated in a parameter's description.
STATED_DEFAULT = [
    re.compile(r"``([^`]+)``\s*\((?:[^()]*?,\s*)?default\)"),
    re.compile(r"\b(None|True|False)\s*\(default\)"),
    re.compile(r"\(default:?\s+(-?\d[\d,_.]*(?:e-?\d+)?)\)"),
    re.compile(r"[Dd]efault:?\s+``([^`]+)``\)"),
    re.compile(r"[Dd]efault,?\s+(-?\d[\d,_.]*(?:e-?\d+)?)[,)]"),
]
# Statements about another default than the signature's: VBNMF's threads per chunk task of
# a dask X (its n_threads=None means all threads in memory).
NOT_THE_SIGNATURES = {("vbsnmf.VBNMF", "n_threads")}


def _stated_defaults():
    """(callable's name, parameter, stated text, signature default) for every default a
    public docstring's Parameters section states for a parameter that has one."""
    for name, obj in PUBLIC:
        doc = inspect.cleandoc(obj.__doc__ or "")
        try:
            parameters = inspect.signature(obj).parameters
        except ValueError:  # an exception class: no signature, no parameters
            continue
        for section in SECTION.finditer(doc):
            for entry in re.split(r"\n(?=\S)", section.group(2)):
                head, _, description = entry.partition("\n")
                names = [n.strip().lstrip("*") for n in head.split(":")[0].split(",")]
                text = " ".join(description.split())
                for pattern in STATED_DEFAULT:
                    for match in pattern.finditer(text):
                        for parameter in names:
                            if parameter not in parameters:
                                continue
                            default = parameters[parameter].default
                            if default is inspect.Parameter.empty:
                                continue
                            if (name, parameter) in NOT_THE_SIGNATURES:
                                continue
                            yield name, parameter, match.group(1), default


def _same(stated: str, default) -> bool:
    """Whether the docstring's text ``stated`` is the value ``default``."""
    if stated.startswith("np."):
        return getattr(np, stated[3:], None) is default
    if stated in ("None", "True", "False"):
        return repr(default) == stated
    if stated[0] in "\"'":
        return stated[1:-1] == default
    return float(stated.replace(",", "").replace("_", "")) == default


def test_stated_defaults_are_the_signatures():
    """Guard (passes on the base code too): every default a public docstring states for a
    parameter (``"random"`` (default), (default 10), ...) is the signature's, and the
    statements were found (so the patterns did not quietly stop matching)."""
    stated = list(_stated_defaults())
    assert len(stated) >= 20
    wrong = [f"{n}({p}): says {s}, is {d!r}" for n, p, s, d in stated if not _same(s, d)]
    assert not wrong, "\n".join(wrong)


# -- README's count of scikit-learn's checks ----------------------------------------------
def test_readme_counts_the_estimator_checks_that_run():
    """README said `VBNMF` and `NMF` "each pass all 47" of scikit-learn's checks (and
    tests/README.md's table 47 for `NMF`); `NMF`, whose tags keep float32, gets 48."""
    from sklearn.utils.estimator_checks import estimator_checks_generator
    from test_sklearn_checks import ESTIMATORS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # VBNMF's duck-typed base class
        counts = [
            len(list(estimator_checks_generator(e, legacy=True, mark=None))) for e in ESTIMATORS
        ]
    assert [type(e).__name__ for e in ESTIMATORS] == ["VBNMF", "NMF"]
    stated = re.search(r"estimator checks \((\d+) and (\d+):", " ".join(README.split()))
    assert stated and [int(n) for n in stated.groups()] == counts, counts
    table = (ROOT / "tests" / "README.md").read_text()
    for name, count in zip(("VBNMF(", "vbsnmf.NMF("), counts, strict=True):
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}"))
        assert row.split("|")[2:4] == [f" {count} ", f" **{count}** "], row


# -- the tutorials' --outdir --------------------------------------------------------------
@pytest.mark.parametrize("name", ["pbmc_nmf_umap", "pbmc_tensor"])
def test_tutorial_outdir_that_is_a_file_is_a_usage_error(monkeypatch, tmp_path, capsys, name):
    """``--outdir results.txt`` (an existing file) loaded pbmc_facs, then ended in
    FileExistsError's traceback from ``mkdir``; it is now the parser's error, before any
    work."""
    module = _tutorial(name)
    monkeypatch.setattr(module, "run", lambda **kwargs: pytest.fail("ran"))
    afile = tmp_path / "results.txt"
    afile.write_text("the user's\n")
    with pytest.raises(SystemExit) as stopped:
        module.main(["--quick", "--outdir", str(afile)])
    assert stopped.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err
    assert afile.read_text() == "the user's\n"


def test_datasets_docstring_names_every_export():
    """``help(vbsnmf.datasets)`` named `pbmc_facs` and `pbmc_tiny` but not `data_dir`,
    which README's command-line section calls for the bundled 10x folder."""
    module = vbsnmf.datasets
    missing = [n for n in module.__all__ if not re.search(rf"`{n}`", module.__doc__)]
    assert not missing


@pytest.mark.parametrize(
    ("script", "arguments"),
    [
        ("bench_scale.py", ["atlas"]),
        ("bench_scale.py", ["converge", "--data", "missing.h5ad"]),
        ("engine_traces.py", ["--compare", "missing.npz"]),
        ("ab_engine.py", ["HEAD", "HEAD", "--data", "missing.h5ad"]),
        ("bench_iteration.py", ["--memory", "--threads", "1", "--data", "missing.h5ad"]),
        ("neighbour_graph_routes.py", ["--table-only", "missing.csv"]),
        ("seed001_experiment.py", ["--plot-only", "missing.csv"]),
        ("start_compare.py", ["--data", "no such data"]),
    ],
)
def test_missing_benchmark_input_is_a_usage_error(monkeypatch, tmp_path, capsys, script, arguments):
    """``bench_scale.py atlas`` without ``--data`` ended in a child's TypeError, a missing
    ``--data``, ``--compare``, ``--table-only`` or ``--plot-only`` file in a traceback
    (after fitting, for engine_traces.py), ``start_compare.py --data`` with an unknown name in
    a KeyError; each is now the parser's error before any work."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common

    def no_work(*args, **kwargs):
        raise AssertionError("the benchmark ran instead of refusing its arguments")

    for name in ("in_fresh_process", "extract_commit"):
        monkeypatch.setattr(_common, name, no_work)
    for name in ("pbmc_tiny", "pbmc_facs"):
        monkeypatch.setattr(vbsnmf.datasets, name, no_work)
    monkeypatch.setattr(sys, "argv", [script, *arguments])
    with pytest.raises(SystemExit) as stopped, contextlib.redirect_stdout(io.StringIO()):
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    assert stopped.value.code == 2
    assert "error:" in capsys.readouterr().err


# -- docs/model.md's ELBO, written again from the page ------------------------------------
def _gamma_entropy(shape, rate):
    from scipy.special import digamma, gammaln

    return shape - np.log(rate) + gammaln(shape) + (1 - shape) * digamma(shape)


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
@pytest.mark.parametrize("max_iter", [3, 8])
def test_model_md_elbo_is_the_returned_one(prior, max_iter):
    """Guard (passes on the base code too): the ELBO of docs/model.md (the fixed prior's
    with its Gamma KL, the learned prior's per-side terms and entropies), written in numpy
    from the page alone, is the fit's last trace value for the q the estimator returns; and
    the fixed prior's rates are the page's updateB (beta^w from the new E[z])."""
    from scipy.special import digamma, gammaln

    rng = np.random.default_rng(2)
    X = rng.poisson(rng.gamma(1, 1, (40, 3)) @ rng.gamma(1, 1, (3, 30)) * 0.5).astype(float)
    a, b = (0.7, 1.3) if prior == "gamma" else (None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.VBNMF(
            3, prior=prior, prior_shape=a, prior_rate=b, max_iter=max_iter, tol=0, random_state=0
        ).fit(X)
    az, bz, aw, bw = model.cell_shape_, model.cell_rate_, model.gene_shape_, model.gene_rate_
    log_z, log_w = digamma(az) - np.log(bz), digamma(aw) - np.log(bw)
    rows, cols = np.nonzero(X)
    x = X[rows, cols]
    elbo = np.sum(x * np.log(np.exp(log_z[rows] + log_w[cols]).sum(1)) - gammaln(x + 1))
    elbo -= ((az / bz).sum(0) * (aw / bw).sum(0)).sum()
    if prior == "gamma":

        def kl(al, be):
            return (
                (al - a) * digamma(al)
                - gammaln(al)
                + gammaln(a)
                + a * (np.log(be) - np.log(b))
                + al * (b - be) / be
            )

        elbo -= kl(az, bz).sum() + kl(aw, bw).sum()
        assert np.allclose(bw, b + (az / bz).sum(0), rtol=1e-12)
    else:
        hp = model.hyperparameters_

        def side(al, be, scale_shape, scale_rate, a_l, a1, b1):
            mean, log_mean = al / be, digamma(al) - np.log(be)
            xi, log_xi = scale_shape / scale_rate, digamma(scale_shape) - np.log(scale_rate)
            terms = np.sum(
                a_l * log_xi[:, None] - gammaln(a_l) + (a_l - 1) * log_mean - xi[:, None] * mean
            )
            terms += np.sum(a1 * np.log(a1 / b1) - gammaln(a1) + (a1 - 1) * log_xi - a1 / b1 * xi)
            return (
                terms + _gamma_entropy(al, be).sum() + _gamma_entropy(scale_shape, scale_rate).sum()
            )

        elbo += side(
            az,
            bz,
            model.cell_scale_shape_.ravel(),
            model.cell_scale_rate_.ravel(),
            hp["cell_factor_shape"],
            hp["cell_scale_prior_shape"],
            hp["cell_scale_prior_mean"],
        )
        elbo += side(
            aw,
            bw,
            model.gene_scale_shape_.ravel(),
            model.gene_scale_rate_.ravel(),
            hp["gene_factor_shape"],
            hp["gene_scale_prior_shape"],
            hp["gene_scale_prior_mean"],
        )
    assert elbo == pytest.approx(model.elbo_trace_[-1], rel=1e-12)


def test_pl_top_genes_says_its_own_n_genes_default():
    """`pl.top_genes` documented ``n_genes`` "As in `vbsnmf.tl.top_genes`", whose default is
    20; its own is 5, now stated."""
    own = inspect.signature(vbsnmf.pl.top_genes).parameters["n_genes"].default
    tool = inspect.signature(vbsnmf.tl.top_genes).parameters["n_genes"].default
    assert own != tool
    doc = " ".join(vbsnmf.pl.top_genes.__doc__.split())
    assert f"``n_genes`` is {own} by default here ({tool} there)" in doc
