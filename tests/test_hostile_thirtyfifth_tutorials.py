"""The thirty-fifth hostile pass over the tutorials and the benchmark scripts as a user runs
them: a damaged data install, an output folder or file that cannot be written, a run
killed mid-write, and a second run appending to the first one's cut-short output."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from test_hostile_thirtyfirst_docs import _tutorial

import vbsnmf
import vbsnmf.datasets
from vbsnmf.datasets import _load
from vbsnmf.io import ReadError

matplotlib.use("Agg")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
TUTORIALS = ("pbmc_nmf_umap", "pbmc_tensor")


def _script(monkeypatch, name: str):
    """The benchmark module ``name``, imported from benchmarks/ (and forgotten after)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def _no_work(*args, **kwargs):
    raise AssertionError("the run started before the usage error")


def _as_run(monkeypatch, name: str):
    """The tutorial module ``name``, its parser named as ``python tutorials/NAME.py`` names it."""
    monkeypatch.setattr(sys, "argv", [f"tutorials/{name}.py"])
    return _tutorial(name)


def _one_error_line(capsys) -> str:
    """The last line of stderr, after checking it is the only one that is not the usage."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert lines and all(line.startswith("usage:") or line[0] == " " for line in lines[:-1])
    return lines[-1]


# -- the tutorials -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_with_damaged_data_is_a_usage_error(monkeypatch, capsys, tmp_path, name):
    """A damaged install (the bundled matrix missing) made the tutorial create its outdir
    and then end in `ReadError`'s traceback (exit code 1); it is now one line naming the
    file, exit code 2, before the outdir is made."""
    module = _as_run(monkeypatch, name)
    monkeypatch.setattr(_load, "_DATA", tmp_path / "no data")
    monkeypatch.setattr(module, "run", _no_work)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        module.main(["--quick", "--outdir", str(out)])
    error = _one_error_line(capsys)
    assert stopped.value.code == 2
    assert error.startswith(f"{name}.py: error: ") and "matrix.mtx.gz" in error
    assert "reinstall vbsnmf" in error and not out.exists()


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_read_error_during_the_run_is_one_line(monkeypatch, capsys, tmp_path, name):
    """A damaged ``cells.csv`` is found only when the run reads the data: its `ReadError`
    was a traceback; it is now one line, exit code 2."""
    module = _as_run(monkeypatch, name)
    damaged = ReadError(tmp_path / "cells.csv", "lacks columns it has when installed: subpop")

    def reads_damaged(**kwargs):
        raise damaged

    monkeypatch.setattr(module, "run", reads_damaged)
    with pytest.raises(SystemExit) as stopped:
        module.main(["--quick", "--outdir", str(tmp_path / "out")])
    assert stopped.value.code == 2
    assert _one_error_line(capsys) == f"{name}.py: error: {damaged}"


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_outdir_that_cannot_be_made_is_a_usage_error(monkeypatch, capsys, tmp_path, name):
    """``--outdir a_file/sub`` passed the "is a file" check and ended in mkdir's
    NotADirectoryError traceback; it is now the usage error, before any work."""
    module = _as_run(monkeypatch, name)
    monkeypatch.setattr(module, "run", _no_work)
    (tmp_path / "a_file").write_text("mine\n")
    with pytest.raises(SystemExit) as stopped:
        module.main(["--quick", "--outdir", str(tmp_path / "a_file" / "sub")])
    assert stopped.value.code == 2
    assert "cannot make the folder" in _one_error_line(capsys)
    assert (tmp_path / "a_file").read_text() == "mine\n"


def _failing_savefig(monkeypatch):
    """Figure.savefig writing half a file and then failing, as a full disk would."""

    def half_then_fail(self, path, *args, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_then_fail)


def test_tensor_tutorial_failed_figure_keeps_the_kept_figure(monkeypatch, tmp_path):
    """`plot` saved straight over ``pbmc_tensor.png``: a run killed or failing mid-write
    left the repository's kept figure cut short. The old figure now stays whole, and no
    temporary is left."""
    module = _tutorial("pbmc_tensor")
    path = tmp_path / "pbmc_tensor.png"
    path.write_bytes(b"the full run's figure")
    _failing_savefig(monkeypatch)
    profile = np.full((4, 3), 0.25)
    with pytest.raises(OSError):
        module.plot(profile, profile, np.ones(3), ["a", "b", "c", "d"], path)
    assert path.read_bytes() == b"the full run's figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pbmc_tensor.png"]


def test_tensor_tutorial_failed_results_leave_no_temporary(monkeypatch, tmp_path):
    """`write_results` replaced the table atomically but left its ``.tmp`` file behind
    when the write failed (a full disk); it now removes it (the old table stays whole)."""
    module = _tutorial("pbmc_tensor")
    path = tmp_path / "pbmc_tensor_results.md"
    path.write_text("the full run's table\n")
    original = Path.write_text

    def half_then_fail(self, text, *args, **kwargs):
        original(self, text[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    table = module.pd.DataFrame({"share of counts": [1.0]}, index=[0])
    model = type("Fitted", (), {"n_iter_": 3, "converged_": True, "elbo_trace_": [-1.0]})()
    with pytest.raises(OSError):
        module.write_results(tmp_path, table, model, "VBNTF(8)", (1, 2, 3), 4, 1.0, 0, 0, True)
    monkeypatch.undo()
    assert path.read_text() == "the full run's table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pbmc_tensor_results.md"]


def test_umap_tutorial_writes_its_figure_and_table_atomically(monkeypatch, tmp_path):
    """`run` of the UMAP tutorial saved ``pbmc_nmf_umap.png`` and wrote
    ``pbmc_nmf_umap_results.md`` straight over the files kept in tutorials/ (the tensor
    tutorial replaced its table atomically): a killed run cut them short. Both go through
    `vbsnmf.io.atomic_file` now, which keeps the old file whole when the write fails."""
    module = _tutorial("pbmc_nmf_umap")
    source = inspect.getsource(module.run)
    assert 'vbsnmf.io.atomic_file(outdir / "pbmc_nmf_umap.png")' in source
    assert 'vbsnmf.io.atomic_file(outdir / "pbmc_nmf_umap_results.md")' in source
    assert ".write_text(" not in source.replace("temporary.write_text(text)", "")
    assert ".savefig(" not in source.replace("figure.savefig(temporary, dpi=110)", "")
    path = tmp_path / "pbmc_nmf_umap.png"
    path.write_bytes(b"the full run's figure")
    _failing_savefig(monkeypatch)
    figure = Figure()
    with pytest.raises(OSError), module.vbsnmf.io.atomic_file(path) as temporary:
        figure.savefig(temporary)
    assert path.read_bytes() == b"the full run's figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pbmc_nmf_umap.png"]


# -- the benchmarks: an output path that cannot be written ---------------------------------------
def _stub(monkeypatch, module, *names):
    for name in names:
        monkeypatch.setattr(module, name, _no_work)


# (script, the options before --out, the functions doing the work, whether it takes argv)
FILE_OUTS = [
    ("seed_spread", [], ("_run", "report"), False),
    ("transform_vs_fit", [], ("report",), False),
    ("bench_model", ["--tools", "sklearn"], ("in_fresh_process",), False),
    ("ab_default_fit", ["HEAD", "HEAD"], ("run", "extract_commit"), False),
    ("bench_tensor", ["--quick", "--sections", "4"], ("section_svi",), False),
    ("neighbour_graph_routes", [], ("run",), True),
]


def _main(monkeypatch, module, argv, takes_argv):
    """``python benchmarks/SCRIPT.py ARGV``: argv given, or in sys.argv (the parser's name)."""
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{module.__name__}.py", *argv])
    return module.main(argv) if takes_argv else module.main()


@pytest.mark.parametrize("where", ["a folder", "in a missing folder"])
@pytest.mark.parametrize(("script", "before", "work", "takes_argv"), FILE_OUTS)
def test_benchmark_out_that_cannot_be_written_is_a_usage_error(
    monkeypatch, capsys, tmp_path, script, before, work, takes_argv, where
):
    """An ``--out`` that is a folder, or in a folder that does not exist, was open's or
    os.replace's traceback: for ``ab_default_fit.py`` and ``neighbour_graph_routes.py``
    after the whole run, for ``bench_tensor.py`` after the first section (leaving its
    temporary). It is now the usage error (exit code 2) before any work."""
    module = _script(monkeypatch, script)
    _stub(monkeypatch, module, *work)
    monkeypatch.setattr(vbsnmf.datasets, "pbmc_facs", _no_work)
    out = tmp_path if where == "a folder" else tmp_path / "missing" / "out.md"
    if script == "bench_tensor" and where != "a folder":
        (tmp_path / "missing").write_text("a file on --out's way\n")
    with pytest.raises(SystemExit) as stopped:
        _main(monkeypatch, module, [*before, "--out", str(out)], takes_argv)
    assert stopped.value.code == 2
    assert _one_error_line(capsys).startswith(f"{script}.py: error: argument --out: ")
    assert not list(tmp_path.glob("**/.*.tmp"))


# (script, its folder option, the other options, the functions doing the work, takes argv)
FOLDER_OUTS = [
    ("seed001_experiment", "--out", ["--quick"], ("run_experiment",), True),
    ("bench_scale", "--workdir", ["series"], ("_series", "in_fresh_process"), False),
    ("make_big", "--out", ["--cells", "10"], ("build",), False),
    ("bench_dask", "--data", [], ("ensure_data", "in_fresh_process"), False),
]


@pytest.mark.parametrize("under", [False, True])
@pytest.mark.parametrize(("script", "option", "before", "work", "takes_argv"), FOLDER_OUTS)
def test_benchmark_folder_that_is_a_file_is_a_usage_error(
    monkeypatch, capsys, tmp_path, script, option, before, work, takes_argv, under
):
    """A results folder given as a file (or under one) was mkdir's traceback, for
    ``seed001_experiment.py`` after its first fit, for ``bench_scale.py series`` in the
    child building its first matrix; it is now the usage error before any work, and the
    file is left alone."""
    module = _script(monkeypatch, script)
    _stub(monkeypatch, module, *work)
    a_file = tmp_path / "a_file"
    a_file.write_text("mine\n")
    folder = a_file / "sub" if under else a_file
    with pytest.raises(SystemExit) as stopped:
        _main(monkeypatch, module, [*before, option, str(folder)], takes_argv)
    assert stopped.value.code == 2
    assert _one_error_line(capsys).startswith(f"{script}.py: error: argument {option}: ")
    assert a_file.read_text() == "mine\n"


def test_benchmark_out_guards_accept_a_new_file_and_a_new_folder(monkeypatch, tmp_path):
    """Guard (passes on the base code too, as the checks are new): the checks accept what
    the scripts can write, a new file in an existing folder and a new folder; the first
    work function then runs."""
    routes = _script(monkeypatch, "neighbour_graph_routes")
    monkeypatch.setattr(routes, "run", _no_work)
    with pytest.raises(AssertionError, match="before the usage error"):
        routes.main(["--out", str(tmp_path / "routes.md")])
    seed001 = _script(monkeypatch, "seed001_experiment")
    monkeypatch.setattr(seed001, "run_experiment", _no_work)
    with pytest.raises(AssertionError, match="before the usage error"):
        seed001.main(["--quick", "--out", str(tmp_path / "new" / "seed001")])


# -- a second run appending to a cut-short output ------------------------------------------------
def test_report_after_a_cut_short_line_starts_its_header_on_a_new_line(monkeypatch, tmp_path):
    """``seed_spread.py`` and ``transform_vs_fit.py`` append their report to ``--out``: after
    a run killed mid-line, the next run's header (its command line) was glued onto that
    line. It now starts on a line of its own."""
    common = _script(monkeypatch, "_common")
    out = tmp_path / "spread.txt"
    out.write_text('# seed_spread.py --ks 2\n{"K": 2, "se')  # killed mid-line
    monkeypatch.setattr(sys, "argv", ["seed_spread.py", "--ks", "3"])
    with common.report(str(out)) as emit:
        emit("row")
    lines = out.read_text().splitlines()
    assert lines[:3] == ["# seed_spread.py --ks 2", '{"K": 2, "se', "# seed_spread.py --ks 3"]
    assert lines[3].startswith("# started ") and lines[4] == "row"


def test_bench_model_resume_after_a_killed_run_keeps_its_header(monkeypatch, tmp_path):
    """``bench_model.py --resume`` after a run killed mid-row appended its header onto the
    cut row (``fit {"tool": ...# bench_model.py --resume ...``): the resumed run's command
    line was lost inside an unreadable line. It now has a line of its own, the cut row is
    fitted again and the earlier whole row kept."""
    bench_model = _script(monkeypatch, "bench_model")
    fits = []

    def fake(function, *args):
        if function is bench_model.baseline:
            return {"peak_mib": 1.0}
        tool, k, part = args[:3]
        fits.append((tool, k, part))
        return {"tool": tool, "K": k, "part": part, "data": "digits", "passes": 1}

    monkeypatch.setattr(bench_model, "in_fresh_process", fake)
    out = tmp_path / "model.txt"
    whole = '{"tool": "sklearn", "K": 2, "part": "full", "data": "digits", "passes": 1}'
    out.write_text(f"# bench_model.py --data digits\nfit {whole}\nfit {whole[:30]}")
    argv = ["bench_model.py", "--data", "digits", "--ks", "2", "--tools", "sklearn"]
    monkeypatch.setattr(sys, "argv", [*argv, "--resume", "--out", str(out)])
    bench_model.main()
    assert fits == [("sklearn", 2, "heldout")]
    lines = out.read_text().splitlines()
    assert lines[2] == f"fit {whole[:30]}"
    assert lines[3] == " ".join([*argv, "--resume", "--out", str(out)]).join(["# ", ""])


def test_bench_model_resume_without_out_is_a_usage_error(monkeypatch, capsys):
    """``--resume`` keeps the fits of ``--out``; without ``--out`` it silently ran every
    fit again. It is now the usage error."""
    bench_model = _script(monkeypatch, "bench_model")
    monkeypatch.setattr(bench_model, "in_fresh_process", _no_work)
    monkeypatch.setattr(sys, "argv", ["bench_model.py", "--tools", "sklearn", "--resume"])
    with pytest.raises(SystemExit) as stopped:
        bench_model.main()
    assert stopped.value.code == 2 and "needs --out" in _one_error_line(capsys)


def test_bench_write_tsv_removes_its_temporary_tables(monkeypatch, tmp_path, capsys):
    """``bench_write_tsv.py`` wrote its two gzip tables into a ``mkdtemp`` folder that it
    never removed (two 100,000 x 20 tables by default, every run); the folder is now
    removed at the end, and the run still compares the two writers' texts."""
    bench = _script(monkeypatch, "bench_write_tsv")
    monkeypatch.setattr(bench.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["bench_write_tsv.py", "--rows", "20", "--repeats", "1"])
    bench.main()
    assert "identical text: True" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["empty", "text", "one array (.npy)", "missing folder"])
def test_engine_traces_bad_compare_or_save_is_a_usage_error(monkeypatch, capsys, tmp_path, kind):
    """``engine_traces.py --compare FILE`` opened FILE only after every fit: a file that is
    not saved traces was np.load's traceback (for a text file, numpy's advice to unpickle
    it) and the computed traces were lost unprinted; ``--save`` into a missing folder
    failed likewise at the end. Both are now usage errors before any fit."""
    traces = _script(monkeypatch, "engine_traces")
    monkeypatch.setattr(vbsnmf.datasets, "pbmc_tiny", _no_work)
    path = tmp_path / "traces.npz"
    option = "--compare"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("batch threads=1  -123.4\n")
    elif kind == "one array (.npy)":
        path = tmp_path / "traces.npy"
        np.save(path, np.arange(3.0))
    else:
        option, path = "--save", tmp_path / "missing" / "traces.npz"
    monkeypatch.setattr(sys, "argv", ["benchmarks/engine_traces.py", option, str(path)])
    with pytest.raises(SystemExit) as stopped:
        traces.main()
    assert stopped.value.code == 2
    error = _one_error_line(capsys)
    assert error.startswith(f"engine_traces.py: error: argument {option}: ")
    assert "pickle" not in error


def test_engine_traces_reads_saved_traces_before_the_fits(monkeypatch, tmp_path):
    """Saved traces are read before the fits (the fits then start) and compared from
    memory: equal traces are "bitwise equal", others say by how much."""
    traces = _script(monkeypatch, "engine_traces")
    path = tmp_path / "traces.npz"
    np.savez(path, **{"batch threads=1": np.array([-3.0, -2.0])})
    monkeypatch.setattr(vbsnmf.datasets, "pbmc_tiny", _no_work)
    monkeypatch.setattr(sys, "argv", ["benchmarks/engine_traces.py", "--compare", str(path)])
    with pytest.raises(AssertionError, match="before the usage error"):
        traces.main()
    monkeypatch.setitem(traces.TRACES, "batch threads=1", np.array([-3.0, -2.0]))
    monkeypatch.setitem(traces.TRACES, "batch threads=2", np.array([-3.0, -2.5]))
    saved = {"batch threads=1": np.array([-3.0, -2.0]), "batch threads=2": np.array([-3.0, -2.0])}
    assert traces._compared("batch threads=1", saved) == "bitwise equal"
    assert traces._compared("batch threads=2", saved).startswith("differs: ")


@pytest.mark.parametrize("text", ["", "a,b\n1,2\n"], ids=["empty", "another table"])
def test_seed001_plot_only_refuses_a_csv_that_is_not_runs(monkeypatch, capsys, tmp_path, text):
    """``seed001_experiment.py --plot-only FILE`` with an empty CSV or another table ended in
    pandas' EmptyDataError or KeyError traceback; it is now one line naming the file and
    what it lacks, exit code 2, and nothing is written."""
    seed001 = _script(monkeypatch, "seed001_experiment")
    runs = tmp_path / "runs_other.csv"
    runs.write_text(text)
    out = tmp_path / "merged"
    code = seed001.main(["--plot-only", str(runs), "--out", str(out)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error and str(runs) in error
    assert not list(out.glob("*"))


@pytest.mark.parametrize("text", ["", "a,b\n1,2\n"], ids=["empty", "another table"])
def test_routes_table_only_refuses_a_csv_that_is_not_runs(monkeypatch, capsys, tmp_path, text):
    """``neighbour_graph_routes.py --table-only FILE`` with an empty CSV or another table
    ended in pandas' EmptyDataError or KeyError('route') traceback; it is now the usage
    error naming the file."""
    routes = _script(monkeypatch, "neighbour_graph_routes")
    monkeypatch.setattr(routes, "run", _no_work)
    runs = tmp_path / "other.csv"
    runs.write_text(text)
    monkeypatch.setattr(sys, "argv", ["benchmarks/neighbour_graph_routes.py"])
    with pytest.raises(SystemExit) as stopped:
        routes.main(["--table-only", str(runs)])
    assert stopped.value.code == 2
    error = _one_error_line(capsys)
    assert error.startswith("neighbour_graph_routes.py: error: argument --table-only: ")
    assert str(runs) in error


def test_ab_engine_data_that_is_not_h5ad_is_a_usage_error(monkeypatch, capsys, tmp_path):
    """``ab_engine.py A B --data FILE`` with a file that is not an .h5ad ended in h5py's
    OSError traceback after both commits were extracted; it is now the usage error naming
    the file."""
    import numba

    ab_engine = _script(monkeypatch, "ab_engine")
    monkeypatch.setattr(numba, "set_num_threads", lambda threads: None)  # the session's kept
    monkeypatch.setattr(ab_engine, "load_commit", lambda commit, name, folder: vbsnmf)
    data = tmp_path / "counts.h5ad"
    data.write_text("cell,gene,count\n")
    monkeypatch.setattr(
        sys, "argv", ["benchmarks/ab_engine.py", "HEAD", "HEAD", "--data", str(data)]
    )
    with pytest.raises(SystemExit) as stopped:
        ab_engine.main()
    assert stopped.value.code == 2
    error = _one_error_line(capsys)
    assert error.startswith("ab_engine.py: error: argument --data: ") and str(data) in error


@pytest.mark.parametrize("part", ["atlas", "converge"])
def test_bench_scale_data_that_is_not_h5ad_is_a_usage_error(monkeypatch, capsys, tmp_path, part):
    """``bench_scale.py atlas|converge --data FILE`` with a file that is not an .h5ad
    ended in "benchmark child failed" with h5py's OSError, in a traceback after a child
    started; it is now the usage error before any child."""
    bench_scale = _script(monkeypatch, "bench_scale")
    monkeypatch.setattr(bench_scale, "in_fresh_process", _no_work)
    data = tmp_path / "big.h5ad"
    data.write_text("cell,gene,count\n")
    monkeypatch.setattr(sys, "argv", ["benchmarks/bench_scale.py", part, "--data", str(data)])
    with pytest.raises(SystemExit) as stopped:
        bench_scale.main()
    assert stopped.value.code == 2
    assert _one_error_line(capsys) == (
        f"bench_scale.py: error: argument --data: not an .h5ad (HDF5) file: {data}"
    )


@pytest.mark.parametrize("name", ["counts.h5ad", "counts.npz"])
def test_bench_iteration_memory_data_unreadable_is_a_usage_error(
    monkeypatch, capsys, tmp_path, name
):
    """``bench_iteration.py --memory --data FILE`` read FILE only in the memory children,
    after every timing round: a file that is not an .h5ad (or a scipy .npz) ended in
    "benchmark child failed" there. It is now the usage error before any work."""
    import numba

    bench = _script(monkeypatch, "bench_iteration")
    monkeypatch.setattr(numba, "set_num_threads", lambda threads: None)
    monkeypatch.setattr(vbsnmf.datasets, "pbmc_facs", _no_work)
    monkeypatch.setattr(bench, "in_fresh_process", _no_work)
    data = tmp_path / name
    data.write_text("cell,gene,count\n")
    argv = ["benchmarks/bench_iteration.py", "--threads", "1", "--memory", "--data", str(data)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as stopped:
        bench.main()
    assert stopped.value.code == 2
    error = _one_error_line(capsys)
    assert (
        error.startswith("bench_iteration.py: error: argument --data: not ") and str(data) in error
    )


def _readme_tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of ``text``, each a list of rows of cells (no separator row)."""
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_seed001_readme_tables_are_the_published_summary(monkeypatch):
    """Guard (passes on the base code too): benchmarks/README.md's four seed001 tables (the
    dense / sparse CPU-time ratios against VB and MU-KL, CPU seconds and traced peak at
    L = 10) are what ``results/seed001/summary.csv`` gives, to their two or one digits."""
    seed001 = _script(monkeypatch, "seed001_experiment")
    readme = (BENCHMARKS / "README.md").read_text()
    section = readme.split("### Results (3 repetitions", 1)[1].split("### What matches", 1)[0]
    tables = _readme_tables(section)
    assert len(tables) == 4
    summary = seed001.pd.read_csv(BENCHMARKS / "results" / "seed001" / "summary.csv")
    densities = [float(d) for d in tables[0][0][2:]]
    for table, sparse in zip(tables[:2], ("vb", "mu_kl")):
        ratios = seed001.time_ratios(summary, sparse=sparse)
        for rows, rank, *cells in table[1:]:
            expected = ratios.loc[(int(rows), int(rank)), densities].to_numpy()
            assert [float(c) for c in cells] == pytest.approx(expected, abs=0.0051), (rows, rank)
    at_ten = summary[summary["rank"] == 10]
    for table, column, digits in (
        (tables[2], "cpu_seconds_median", 0.0051),
        (tables[3], "peak_traced_mib_median", 0.051),
    ):
        for method, rows, *cells in table[1:]:
            chosen = at_ten[(at_ten["method"] == method.strip("`")) & (at_ten["rows"] == int(rows))]
            expected = chosen.set_index("density").loc[densities, column].to_numpy()
            assert [float(c) for c in cells] == pytest.approx(expected, abs=digits), (method, rows)
