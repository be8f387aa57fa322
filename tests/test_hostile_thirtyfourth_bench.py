"""The thirty-fourth hostile pass over the benchmark scripts: a peer or an optional data
package that is not installed, a second run over the first one's output, a killed build,
and the figures of the evaluator every tool is scored by."""

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
THREAD_VARIABLES = (
    "NUMBA_NUM_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def _script(monkeypatch, name: str):
    """The benchmark module ``name``, imported from benchmarks/ (and forgotten after)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, name, module)  # dropped again when the test ends
    return module


def _not_installed(monkeypatch, *modules: str) -> None:
    """Make ``modules`` unimportable here, whether or not this environment has them."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def _keep_thread_variables(monkeypatch) -> None:
    """The scripts' loaders set the thread variables; restore them when the test ends."""
    for name in THREAD_VARIABLES:
        monkeypatch.setenv(name, "1")


# -- a peer that is not installed -------------------------------------------------------------
def test_bench_tensor_dense_section_skips_tensorly_when_not_installed(monkeypatch):
    """Section 3 without tensorly (the README: "only for section 3") ran VBNTF's fit, then
    its baseline child imported tensorly and the run ended in a traceback; the section now
    fits VBNTF and names each skipped method with its install advice."""
    bench_tensor = _script(monkeypatch, "bench_tensor")
    _not_installed(monkeypatch, "tensorly", "tlgcp")
    monkeypatch.setattr(bench_tensor, "_set_threads", lambda threads: None)
    fitted = []

    def in_this_process(function, *args):
        if function is bench_tensor.fit_in_child:
            fitted.append(args[0])
            return dict.fromkeys(
                ("seconds", "n_iter", "before_mib", "peak_mib", "growth_mib", "deviance"), 1
            )
        return function(*args)  # the baseline, for real

    monkeypatch.setattr(bench_tensor, "in_fresh_process", in_this_process)
    lines = []
    args = type("Args", (), {"quick": True})()
    bench_tensor.section_dense(args, lines.append)
    assert fitted == ["vbntf", "vbntf"]  # one per density of --quick
    text = "\n".join(lines)
    assert "gcp: skipped, not installed (pip install tensorly tensorly-gcp)" in text
    assert "nncp: skipped, not installed (pip install tensorly)" in text


def test_bench_tensor_keeps_finished_sections_when_a_later_one_fails(monkeypatch, tmp_path):
    """``--out`` was written once, after the last section: a failure (or Ctrl-C) in section
    4 lost sections 1-3's hours from the file. It is now saved after every section."""
    bench_tensor = _script(monkeypatch, "bench_tensor")
    monkeypatch.setattr(bench_tensor, "section_dense", lambda args, say: say("section three"))

    def fails(args, say):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_tensor, "section_svi", fails)
    out = tmp_path / "tensor.md"
    monkeypatch.setattr(sys, "argv", ["bench_tensor.py", "--sections", "3", "4", "--out", str(out)])
    with pytest.raises(KeyboardInterrupt):
        bench_tensor.main()
    assert "section three" in out.read_text()
    assert not (tmp_path / ".tensor.md.tmp").exists()


def test_bench_model_leaves_out_a_peer_that_is_not_installed(monkeypatch, tmp_path):
    """The default ``--tools`` name hpfrec; without it the run fitted vbsnmf and
    scikit-learn and then stopped at hpfrec's fit in a child's traceback. Now hpfrec is
    left out before any fit, and the output says so."""
    bench_model = _script(monkeypatch, "bench_model")
    _not_installed(monkeypatch, "hpfrec")
    fits = []

    def fake(function, *args):
        if function is bench_model.baseline:
            return {"peak_mib": 1.0}
        tool, k, part = args[:3]
        fits.append(tool)
        return {"tool": tool, "K": k, "part": part, "passes": 1, "converged": True}

    monkeypatch.setattr(bench_model, "in_fresh_process", fake)
    out = tmp_path / "model.txt"
    argv = ["bench_model.py", "--data", "digits", "--ks", "2", "--tools", "hpfrec", "sklearn"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    bench_model.main()
    assert fits == ["sklearn", "sklearn"]
    assert "# hpfrec: skipped, needs the hpfrec package, not installed (pip install hpfrec)" in (
        out.read_text().splitlines()
    )


def test_bench_model_refuses_hpfrec_alone_when_not_installed(monkeypatch, capsys):
    """``--tools hpfrec`` without hpfrec: argparse's usage error (exit 2) with the advice,
    before the baseline child loads the data."""
    bench_model = _script(monkeypatch, "bench_model")
    _not_installed(monkeypatch, "hpfrec")

    def no_work(function, *args):
        raise AssertionError(f"{function.__name__} ran before the usage error")

    monkeypatch.setattr(bench_model, "in_fresh_process", no_work)
    monkeypatch.setattr(sys, "argv", ["bench_model.py", "--tools", "hpfrec"])
    with pytest.raises(SystemExit) as stopped:
        bench_model.main()
    assert stopped.value.code == 2
    assert "pip install hpfrec" in capsys.readouterr().err


def test_bench_model_refuses_reuters_without_lda(monkeypatch, capsys):
    """``--data reuters`` without the `lda` package: a usage error naming it, not the
    baseline child's ModuleNotFoundError."""
    bench_model = _script(monkeypatch, "bench_model")
    _not_installed(monkeypatch, "lda")
    _keep_thread_variables(monkeypatch)
    monkeypatch.setattr(bench_model, "in_fresh_process", lambda function, *args: function(*args))
    monkeypatch.setattr(sys, "argv", ["bench_model.py", "--data", "reuters", "--tools", "sklearn"])
    with pytest.raises(SystemExit) as stopped:
        bench_model.main()
    assert stopped.value.code == 2
    assert "--data: reuters needs the lda package" in capsys.readouterr().err


def test_seed_spread_refuses_hpfrec_when_not_installed(monkeypatch, capsys):
    """``seed_spread.py --tool hpfrec`` without hpfrec: exit 2 before loading pbmc_facs."""
    seed_spread = _script(monkeypatch, "seed_spread")
    _not_installed(monkeypatch, "hpfrec")
    monkeypatch.setattr(seed_spread, "_run", lambda args, emit: None)
    monkeypatch.setattr(sys, "argv", ["seed_spread.py", "--tool", "hpfrec"])
    with pytest.raises(SystemExit) as stopped:
        seed_spread.main()
    assert stopped.value.code == 2
    assert "pip install hpfrec" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("script", "argv"),
    [
        ("svi_default_gap", ["--data", "reuters", "--k", "2"]),
        ("start_compare", ["--data", "Reuters news", "--ks", "2"]),
    ],
)
def test_reuters_without_lda_is_a_usage_error(monkeypatch, capsys, script, argv):
    """Reuters news asked for without `lda`: exit 2 naming the package, not a
    ModuleNotFoundError after the warm-up fit."""
    module = _script(monkeypatch, script)
    _not_installed(monkeypatch, "lda")
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code == 2
    assert "pip install lda" in capsys.readouterr().err


def test_svi_default_gap_default_skips_reuters_without_lda(monkeypatch, capsys):
    """The default data sets without `lda`: the others run and Reuters is named as skipped
    (the loaders are stubbed; only the choice of data sets is checked)."""
    gap = _script(monkeypatch, "svi_default_gap")
    _not_installed(monkeypatch, "lda")
    loaded = []

    def stub(name):
        def load():
            loaded.append(name)
            return gap.model_draw(n_cells=30, n_genes=20)

        return load

    monkeypatch.setattr(
        gap, "DATA", {key: (name, stub(key)) for key, (name, _) in gap.DATA.items()}
    )
    monkeypatch.setattr(gap.vbsnmf, "VBNMF", _StubModel)
    monkeypatch.setattr(sys, "argv", ["svi_default_gap.py", "--k", "2"])
    gap.main()
    assert loaded == [key for key in gap.DATA if key != "reuters"]
    assert "reuters: skipped, needs the lda package" in capsys.readouterr().out


class _StubModel:
    """A stand-in for `VBNMF` with the attributes svi_default_gap prints."""

    def __init__(self, *args, **kwargs):
        self.elbo_trace_, self.n_iter_, self.converged_ = np.array([-1.0]), 1, True

    def fit(self, X):
        return self


# -- a second run over the first one's output, a killed run ------------------------------------
def _fit_line(**row) -> str:
    return "fit " + json.dumps({"tool": "vbsnmf", "K": 2, "part": "full", **row}) + "\n"


def test_bench_model_resume_keeps_only_this_data_sets_fits(monkeypatch, tmp_path):
    """``--resume`` took every ``fit`` row of ``--out`` as done, so a digits run resumed in
    the file of a pbmc_facs run skipped its fits and tabled pbmc_facs' figures as the
    digits'; and a row cut short by a killed run was json's traceback. Rows now name their
    data set (older ones take the ``--data`` of the command heading their run), and a cut
    row is left out, to be fitted again."""
    bench_model = _script(monkeypatch, "bench_model")
    path = tmp_path / "model.txt"
    path.write_text(
        "# benchmarks/bench_model.py --ks 2 --out model.txt\n"
        + _fit_line(train_ll_per_nnz=-3.0)  # pbmc_facs, before rows named their data
        + "# benchmarks/bench_model.py --data digits --ks 2 --out model.txt\n"
        + _fit_line(train_ll_per_nnz=-4.0)  # digits, the same
        + _fit_line(data="pbmc_facs", part="heldout")
        + _fit_line(data="digits", part="heldout")[:40]  # a killed run's last line
    )
    digits = bench_model.previous_rows(str(path), "digits")
    assert [(row["part"], row.get("train_ll_per_nnz")) for row in digits] == [("full", -4.0)]
    pbmc = bench_model.previous_rows(str(path), "pbmc_facs")
    assert [row["part"] for row in pbmc] == ["full", "heldout"]


def test_seed001_has_no_default_out_over_the_published_results(monkeypatch):
    """``--out`` defaulted to ``benchmarks/results/seed001``: ``--quick`` from the
    repository's root replaced the published runs.csv at its first fit. ``--out`` is
    now required."""
    experiment = _script(monkeypatch, "seed001_experiment")
    with pytest.raises(SystemExit) as stopped:
        experiment.parse_args(["--quick"])
    assert stopped.value.code == 2


def test_seed001_refuses_an_out_holding_an_earlier_run(monkeypatch, tmp_path, capsys):
    """A second run into the folder of a first (``--first-rep`` "to add repetitions")
    rewrote runs.csv with its own fits alone; refused unless ``--replace``, and
    ``--plot-only`` still merges into it."""
    experiment = _script(monkeypatch, "seed001_experiment")
    (tmp_path / "runs.csv").write_text("method\nvb\n")
    with pytest.raises(SystemExit) as stopped:
        experiment.parse_args(["--quick", "--first-rep", "3", "--out", str(tmp_path)])
    assert stopped.value.code == 2
    assert "--plot-only" in capsys.readouterr().err
    assert experiment.parse_args(["--quick", "--replace", "--out", str(tmp_path)]).replace
    runs = str(tmp_path / "runs.csv")
    assert experiment.parse_args(["--plot-only", runs, "--out", str(tmp_path)]).plot_only


def test_make_big_killed_build_leaves_no_matrix_to_reuse(monkeypatch, tmp_path):
    """`make_big.build` wrote ``big.h5ad`` in place and ``summary.json`` last over an old
    one: a build stopped after its first block left a partial ``big.h5ad`` that
    ``bench_scale.py series`` reuses by its existence (and ``bench_dask.py`` by the old
    summary). Now both appear only when whole, and the old summary goes first."""
    import anndata as ad
    import pandas as pd

    make_big = _script(monkeypatch, "make_big")
    rng = np.random.default_rng(0)
    source = ad.AnnData(  # a small stand-in for pbmc_facs, so the test takes seconds
        sp.csr_matrix(rng.poisson(1.0, (60, 50)).astype(float)),
        obs=pd.DataFrame({"subpop": np.repeat(["a", "b"], 30)}, index=[str(i) for i in range(60)]),
    )
    monkeypatch.setattr(make_big.vbsnmf.datasets, "pbmc_facs", lambda: source)
    monkeypatch.setattr(make_big, "choose_pool_and_thinning", lambda *args: (1, 0.5))
    real_block, blocks = make_big.make_block, []

    def block_then_stop(*args):
        if blocks:
            raise KeyboardInterrupt
        blocks.append(1)
        return real_block(*args)

    monkeypatch.setattr(make_big, "BLOCK_CELLS", 16)
    monkeypatch.setattr(make_big, "make_block", block_then_stop)
    (tmp_path / "summary.json").write_text(json.dumps({"n_cells": 40}))
    with pytest.raises(KeyboardInterrupt):
        make_big.build(40, 50, 400, tmp_path)
    assert not (tmp_path / "big.h5ad").exists()
    assert not (tmp_path / "summary.json").exists()
    monkeypatch.setattr(make_big, "make_block", real_block)
    summary = make_big.build(40, 50, 400, tmp_path)
    built = ad.read_h5ad(tmp_path / "big.h5ad")
    assert built.shape == (40, 50) and built.X.nnz == summary["nnz"]
    assert json.loads((tmp_path / "summary.json").read_text())["n_cells"] == 40


# -- neighbour_graph_routes.py's table --------------------------------------------------------
@pytest.fixture(scope="module")
def routes():
    """neighbour_graph_routes (imports scanpy: once for the module's tests)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        sys.modules.pop("neighbour_graph_routes", None)
        yield importlib.import_module("neighbour_graph_routes")
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop("neighbour_graph_routes", None)


def _runs_csv(path: Path, seeds) -> None:
    import pandas as pd

    rows = [
        {"route": route, "seed": seed, "kNN accuracy": 0.9 + 0.01 * seed, "Leiden clusters": 8}
        for seed in seeds
        for route in ("X_nmf", "sqrt(usage)")
    ]
    pd.DataFrame(rows).to_csv(path, index=False)


def test_routes_table_only_names_the_csvs_seeds(routes, tmp_path):
    """``--table-only`` of a one-seed CSV headed its table "seeds 0, 1, 2" (``--seeds``'
    default) and a ``--seeds`` command that did not make it; the header now gives the
    CSV's seeds and the ``--table-only`` command, and the CSV itself is not rewritten."""
    runs = tmp_path / "table.csv"
    _runs_csv(runs, [4])
    before = runs.read_bytes()
    routes.main(["--table-only", str(runs), "--out", str(tmp_path / "table.md")])
    head = (tmp_path / "table.md").read_text().splitlines()
    assert head[0] == "# Neighbour-graph routes on pbmc_facs (K=15, seeds 4; mean (min-max))"
    assert "--table-only" in head[2] and "--seeds" not in head[2]
    assert runs.read_bytes() == before


def test_routes_refuses_a_csv_out(routes, tmp_path, capsys):
    """``--out table.csv``: the runs (written beside it as ``.csv``) replaced the Markdown
    table just written; refused before any work."""
    runs = tmp_path / "runs.csv"
    _runs_csv(runs, [0, 1])
    with pytest.raises(SystemExit) as stopped:
        routes.main(["--table-only", str(runs), "--out", str(tmp_path / "table.csv")])
    assert stopped.value.code == 2
    assert "not a .csv" in capsys.readouterr().err


# -- the evaluator's figures against independent computations (guards) -----------------------
def test_heldout_loglik_equals_scipys_poisson_pmf(monkeypatch):
    """Guard (passes on the base code too): `bench_model.poisson_loglik` (nonzeros in
    blocks, the expected total from the factors' column sums) equals the sum of scipy's
    Poisson log-pmf over every entry of a dense matrix, and a count split's halves add up
    to the counts, the same split on every call."""
    from scipy.stats import poisson

    bench_model = _script(monkeypatch, "bench_model")
    rng = np.random.default_rng(0)
    cells, genes = rng.gamma(1.0, 1.0, (40, 3)), rng.gamma(1.0, 1.0, (30, 3))
    counts = rng.poisson(cells @ genes.T).astype(float)
    matrix = sp.csr_matrix(counts)
    expected = poisson.logpmf(counts, cells @ genes.T).sum()
    assert bench_model.poisson_loglik(matrix, cells, genes) == pytest.approx(expected, rel=1e-12)
    train, test = bench_model.count_split(matrix)
    assert abs(train + test - matrix).sum() == 0
    again, _ = bench_model.count_split(matrix)
    assert abs(train - again).sum() == 0
    assert bench_model.poisson_loglik(test, cells, genes) == pytest.approx(
        poisson.logpmf(test.toarray(), cells @ genes.T).sum(), rel=1e-12
    )


def test_knn_and_ari_equal_a_numpy_computation(monkeypatch):
    """Guard (passes on the base code too): `bench_model.clustering_scores`' kNN accuracy
    equals a brute-force 15-nearest-neighbour vote on the same folds, and its ARI equals
    the pair-counting formula on KMeans' labels, both on the usages (rows summing to 1)."""
    from scipy.special import comb
    from sklearn.cluster import KMeans
    from sklearn.model_selection import StratifiedKFold

    bench_model = _script(monkeypatch, "bench_model")
    rng = np.random.default_rng(1)
    labels = np.repeat(np.array(["a", "b", "c"]), 40)
    centres = rng.gamma(1.0, 1.0, (3, 4))
    cells = rng.gamma(5.0, centres[np.repeat(np.arange(3), 40)] / 5.0) * rng.uniform(1, 9, (120, 1))
    scores = bench_model.clustering_scores(cells, labels)
    usage = cells / cells.sum(axis=1, keepdims=True)
    accuracies = []
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(usage, labels):
        distance = ((usage[test, None, :] - usage[None, train, :]) ** 2).sum(axis=2)
        nearest = np.argsort(distance, axis=1, kind="stable")[:, :15]
        votes = [np.unique(labels[train][row], return_counts=True) for row in nearest]
        predicted = np.array([names[np.argmax(counts)] for names, counts in votes])
        accuracies.append(np.mean(predicted == labels[test]))
    assert scores["knn"] == pytest.approx(np.mean(accuracies), abs=1e-12)
    clusters = KMeans(3, n_init=10, random_state=0).fit_predict(usage)
    table = np.array([[np.sum((labels == a) & (clusters == c)) for c in range(3)] for a in "abc"])
    pairs = comb(table, 2).sum()
    rows, columns, total = comb(table.sum(1), 2).sum(), comb(table.sum(0), 2).sum(), comb(120, 2)
    expected = rows * columns / total
    ari = (pairs - expected) / ((rows + columns) / 2 - expected)
    assert scores["ari"] == pytest.approx(ari, abs=1e-12)


# -- commits and threads checked before any work ----------------------------------------------
@pytest.mark.parametrize(
    ("script", "argv", "argument"),
    [
        ("ab_default_fit", ["no-such-commit", "HEAD", "--pairs", "1"], "argument a"),
        ("ab_engine", ["HEAD", "no-such-commit"], "argument b"),
        ("bench_compile", ["no-such-commit", "HEAD"], "argument a"),
        ("ab_divergence_speed", ["--old", "no-such-commit"], "argument --old"),
    ],
)
def test_a_commit_that_does_not_exist_is_a_usage_error(monkeypatch, capsys, script, argv, argument):
    """A mistyped commit was git's CalledProcessError traceback (`ab_default_fit.py`'s
    rev-parse, the others' ``git archive``/``git show``); now exit 2 naming the argument."""
    module = _script(monkeypatch, script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code == 2
    assert f"{argument}: not a commit of" in capsys.readouterr().err


def test_ab_divergence_speed_skips_two_threads_when_numba_has_one(monkeypatch, capsys):
    """On one core (or under NUMBA_NUM_THREADS=1) the default run timed one thread, then
    ``numba.set_num_threads(2)`` ended it in a ValueError traceback; the two-thread part is
    now skipped by name."""
    import numba

    module = _script(monkeypatch, "ab_divergence_speed")
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    monkeypatch.setattr(sys, "argv", ["ab_divergence_speed.py", "--entries", "200"])
    module.main()
    out = capsys.readouterr().out
    assert out.count("threads=1 alpha=") == 3
    assert "threads=2: skipped, Numba has 1" in out


@pytest.mark.parametrize("script", ["ab_engine", "seed001_experiment"])
def test_threads_above_numbas_are_a_usage_error(monkeypatch, capsys, tmp_path, script):
    """``--threads 2`` where Numba has one thread: ``numba.set_num_threads``' ValueError
    traceback (seed001's after it had started the grid); now exit 2 before any work, as
    `bench_iteration.py` already did."""
    import numba

    module = _script(monkeypatch, script)
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    argv = ["HEAD", "HEAD"] if script == "ab_engine" else ["--quick", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv, "--threads", "2"])
    with pytest.raises(SystemExit) as stopped:
        module.main() if script == "ab_engine" else module.parse_args(sys.argv[1:])
    assert stopped.value.code == 2
    assert "--threads: 2 above the 1 Numba has" in capsys.readouterr().err


def test_bench_scale_series_removes_its_temporary_matrices(monkeypatch, tmp_path):
    """``bench_scale.py series`` without ``--workdir`` built its matrices (some 300 MB at
    the default factors) in a ``mkdtemp`` folder it never removed; now a temporary folder
    removed at the end (the matrix building and the timing are stubbed here)."""
    import tempfile

    bench_scale = _script(monkeypatch, "bench_scale")
    make_big = _script(monkeypatch, "make_big")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def build(n_cells, n_genes, nnz, out, seed=0):
        out.mkdir(parents=True)
        (out / "big.h5ad").write_bytes(b"stand-in")

    timing = {"nnz": 10, "s_per_iter": 1.0, "cpu_s_per_iter": 1.0, "n_cells": 3}
    monkeypatch.setattr(make_big, "build", build)
    monkeypatch.setattr(
        bench_scale, "in_fresh_process", lambda *args: {**timing, "peak_mib": 1, "loaded_mib": 1}
    )
    args = type("Args", (), {"workdir": None, "factors": [1], "k": 2, "iters": 1, "threads": 1})
    bench_scale.series(args())
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "kept"
    args.workdir = str(kept)
    bench_scale.series(args())
    assert (kept / "x1" / "big.h5ad").exists()  # --workdir's matrices stay for reuse


@pytest.mark.parametrize(
    ("script", "argv"),
    [
        ("seed_spread", ["--prior-shape", "-1"]),
        ("seed_spread", ["--prior-shape", "nan"]),
        ("ab_default_fit", ["HEAD", "HEAD", "--reference-seconds", "inf"]),
        ("ab_default_fit", ["HEAD", "HEAD", "--reference-seconds", "-20.5"]),
        ("seed001_experiment", ["--quick", "--out", "unused", "--poisson-mean", "nan"]),
    ],
)
def test_bad_float_options_are_usage_errors(monkeypatch, capsys, script, argv):
    """``--prior-shape -1`` or ``nan`` reached VBNMF's ValueError traceback after the data
    and the count split were made; ``--reference-seconds -20.5`` printed a negative
    estimate after the whole run; ``--poisson-mean nan`` was numpy's error. Each is now
    argparse's usage error (exit 2) before any work."""
    module = _script(monkeypatch, script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])

    def no_work(*args, **kwargs):
        raise AssertionError("the benchmark started its work")

    for name in ("_run", "extract_commit"):  # the work of seed_spread, ab_default_fit
        if hasattr(module, name):
            monkeypatch.setattr(module, name, no_work)
    with pytest.raises(SystemExit) as stopped:
        module.main() if script != "seed001_experiment" else module.parse_args(argv)
    assert stopped.value.code == 2
    assert "must be a finite number" in capsys.readouterr().err


def test_bench_model_baseline_warm_up_prints_no_convergence_warning(monkeypatch, recwarn):
    """The baseline's three-iteration warm-up fits (which only load the kernels) printed
    two ConvergenceWarnings advising "raise max_iter or tol" at the head of every run."""
    import vbsnmf

    bench_model = _script(monkeypatch, "bench_model")
    _keep_thread_variables(monkeypatch)
    base = bench_model.baseline(1, "digits")
    assert base["shape"] == [1797, 64]
    assert not [w for w in recwarn if issubclass(w.category, vbsnmf.ConvergenceWarning)]


def test_bench_dask_fits_the_local_runs_model_on_the_cluster(monkeypatch, tmp_path, pbmc_tiny):
    """``bench_dask.py`` timed the local `_batch.fit_batch` under the fixed Gamma(1, 1)
    prior by plain ascent against ``fit_dask`` at its defaults (the learned prior with
    SQUAREM): another fit, so "max relative ELBO difference, dask vs local" compared two
    models, and at ``--iters 3`` the traces' lengths differed (2 against 3) and the run
    ended in numpy's broadcast ValueError. The cluster now runs the local run's fit (the
    cluster and ``fit_dask`` are stubbed here; the arguments are checked)."""
    import types

    import distributed

    import vbsnmf

    bench_dask = _script(monkeypatch, "bench_dask")
    path = tmp_path / "tiny.h5ad"
    pbmc_tiny.write_h5ad(path)
    given = {}

    class Cluster:
        def __init__(self, **kwargs):
            pass

        def close(self):
            pass

    class Client:
        def __init__(self, cluster):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def run(self, function):
            return {}

    def fit_dask(X, n_components, **params):
        given.update(params)
        return types.SimpleNamespace(
            elbo_trace=np.array([-3.0, -2.0, -1.0]), gathered_bytes=[1], sent_bytes=[1]
        )

    monkeypatch.setattr(distributed, "LocalCluster", Cluster)
    monkeypatch.setattr(distributed, "Client", Client)
    monkeypatch.setattr(vbsnmf, "fit_dask", fit_dask)
    bench_dask.run_dask(str(path), 2, 3, 3, init=None)
    assert given["prior"] == "gamma" and given["accelerate"] is False
    assert (given["prior_shape"], given["prior_rate"]) == (1.0, 1.0)
