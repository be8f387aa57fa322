"""The command line's options in combination (the thirty-fourth hostile pass, area cli)."""

from __future__ import annotations

import shutil
from unittest import mock

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from cli_output import error_lines, without_compile_notice

import vbsnmf.cli as cli

# 60 cells x 15 genes
COUNTS = np.random.default_rng(34).poisson(2, (60, 15))
# the settings of the fit whose checkpoint the resumes below name
FIRST = ["-k", "2", "--solver", "svi", "--seed", "3", "--tol", "1e-4", "--max-iter", "50"]


def _mtx(path, counts):
    scipy.io.mmwrite(path, sp.csr_matrix(counts))
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A Matrix Market file of `COUNTS` (cells as rows) and the checkpoint of a one-epoch
    SVI fit of it under `FIRST`."""
    folder = tmp_path_factory.mktemp("fitted")
    matrix = _mtx(folder / "x.mtx", COUNTS)
    checkpoint = folder / "fit.ckpt"
    argv = ["fit", str(matrix), "--cells-as-rows", *FIRST, "--epochs", "1", "--quiet"]
    assert cli.main([*argv, "--checkpoint", str(checkpoint), "-o", str(folder / "o")]) == 0
    return matrix, checkpoint


def _error(capsys) -> str:
    err = without_compile_notice(capsys.readouterr().err)
    assert err.count("\n") == 1, err
    return err


def _with(options: list, **changed) -> list:
    """`options` with the value after each option of ``changed`` (``seed="7"`` for
    ``--seed``) replaced."""
    options = list(options)
    for name, value in changed.items():
        flag = "-k" if name == "k" else "--" + name.replace("_", "-")
        if flag in options:
            options[options.index(flag) + 1] = value
        else:
            options += [flag, value]
    return options


@pytest.mark.parametrize(
    ("changed", "difference"),
    [
        ({"batch_size": "10"}, "--batch-size: checkpoint 60 vs now 10"),
        ({"seed": "7"}, "--seed: checkpoint 3 vs now 7"),
        ({"k": "3"}, "-k: checkpoint 2 vs now 3"),
        ({"prior": "gamma"}, "--prior: checkpoint 'hierarchical' vs now 'gamma'"),
        ({"tol": "0.001"}, "--tol: checkpoint 0.0001 vs now 0.001"),
        ({"max_iter": "20"}, "--max-iter: checkpoint 50 vs now 20"),
    ],
)
def test_svi_resume_of_another_fit_is_refused_before_the_conversion(
    fitted, tmp_path, capsys, changed, difference
):
    """Before: the whole matrix was converted (minutes for a large one) and a line said it
    was converted into OUTDIR/counts.h5ad, an OUTDIR that never appeared, before the fit
    found the checkpoint's settings other than the options'. Now one line, no conversion."""
    matrix, checkpoint = fitted
    outdir = tmp_path / "o"
    argv = ["fit", str(matrix), "--cells-as-rows", *_with(FIRST, **changed), "--epochs", "2"]
    with mock.patch("vbsnmf.io.mtx_to_h5ad", side_effect=AssertionError("converted")) as convert:
        code = cli.main([*argv, "--checkpoint", str(checkpoint), "--resume", "-o", str(outdir)])
    assert code == cli.EXIT_USAGE
    assert not convert.called
    assert _error(capsys) == (
        f"vbsnmf: error: checkpoint {checkpoint} was written by a different fit ({difference}); "
        "remove it, or start over without resuming (drop --resume)\n"
    )
    assert not outdir.exists()


def test_svi_resume_of_other_cells_is_refused_before_the_conversion(fitted, tmp_path, capsys):
    """Before: a matrix of one more cell was converted, then refused by the fit. The cells
    and genes come from the Matrix Market header; --convert-to is left unmade."""
    _, checkpoint = fitted
    other = _mtx(tmp_path / "other.mtx", np.vstack([COUNTS, COUNTS[:1]]))
    outdir, converted = tmp_path / "o", tmp_path / "c.h5ad"
    argv = ["fit", str(other), "--cells-as-rows", *FIRST, "--checkpoint", str(checkpoint)]
    argv += ["--resume", "--batch-size", "60", "-o", str(outdir), "--convert-to", str(converted)]
    with mock.patch("vbsnmf.io.mtx_to_h5ad", side_effect=AssertionError("converted")) as convert:
        assert cli.main(argv) == cli.EXIT_USAGE
    assert not convert.called
    assert _error(capsys) == (
        f"vbsnmf: error: checkpoint {checkpoint} was written for other data (shape: "
        "checkpoint [60, 15] vs now [61, 15]); remove it, or start over without resuming "
        "(drop --resume)\n"
    )
    assert not outdir.exists() and not converted.exists()


@pytest.mark.parametrize("batch", [None, "60", "500"])
def test_svi_resume_of_the_same_fit_still_converts_and_continues(fitted, tmp_path, batch):
    """Guard (passes on both): the same settings, with the default batch (all 60 cells
    here) or a given one of all the cells or more, resume the checkpoint's fit to its
    second epoch."""
    import json

    matrix, saved = fitted
    checkpoint = tmp_path / "fit.ckpt"
    shutil.copyfile(saved, checkpoint)
    outdir = tmp_path / "o"
    argv = ["fit", str(matrix), "--cells-as-rows", *FIRST, "--epochs", "2", "--quiet"]
    argv += ["--checkpoint", str(checkpoint), "--resume", "-o", str(outdir)]
    assert cli.main(argv + ([] if batch is None else ["--batch-size", batch])) == 0
    params = json.loads((outdir / "params.json").read_text())
    assert params["n_iter"] == 2 and params["fit_params"]["resume"] is True
    assert (outdir / "counts.h5ad").is_file()


def test_outdir_help_says_what_is_refused():
    """Before: "nor be or hold the input, the checkpoint or the current folder", leaving
    out an OUTDIR inside the input, which is refused; the README said an OUTDIR "lies
    inside ... the current folder" is refused, which ``-o run1`` is not."""
    from pathlib import Path

    parser = cli.build_parser()
    fit = parser._subparsers._group_actions[0].choices["fit"]
    (outdir,) = [a for a in fit._actions if "--outdir" in a.option_strings]
    assert "be, hold or lie inside the input" in outdir.help
    assert "nor be or hold the checkpoint or the current folder" in outdir.help
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "lies inside the input, or is or holds the checkpoint or the current folder" in readme


@pytest.mark.parametrize("convert_to", [False, True])
@pytest.mark.parametrize("bad", ["negative", "halves"])
def test_svi_counts_refused_after_the_conversion_are_one_line(tmp_path, capsys, bad, convert_to):
    """Before: "vbsnmf: converted x.mtx into OUTDIR/counts.h5ad" (an OUTDIR that never
    appeared; or the --convert-to file, removed with the failed run) stood above the error
    of a negative or non-integer count, which the fit finds once the matrix is converted:
    two lines on stderr. The line is now told once the fit runs."""
    counts = COUNTS.astype(float)
    if bad == "negative":
        counts[3, 4] = -1
    else:
        counts = counts * 0.5
    matrix, outdir = _mtx(tmp_path / "x.mtx", counts), tmp_path / "o"
    argv = ["fit", str(matrix), "--cells-as-rows", "-k", "2", "--solver", "svi", "--epochs", "1"]
    argv += ["-o", str(outdir)] + (["--convert-to", str(tmp_path / "c.h5ad")] if convert_to else [])
    assert cli.main(argv) == cli.EXIT_USAGE
    error = _error(capsys)
    assert error.startswith(f"vbsnmf: error: {matrix} (cells 0..59) ")
    assert ("negative" if bad == "negative" else "non-integer") in error
    assert not outdir.exists() and not (tmp_path / "c.h5ad").exists()


def test_svi_conversion_is_still_told_once_the_fit_runs(fitted, tmp_path, capsys):
    """Guard (passes on both): a fit that runs says where the matrix was converted, above
    the note that --resume found no checkpoint and the summary."""
    matrix, _ = fitted
    outdir, checkpoint = tmp_path / "o", tmp_path / "new.ckpt"
    argv = ["fit", str(matrix), "--cells-as-rows", *FIRST, "--epochs", "1", "-o", str(outdir)]
    assert cli.main([*argv, "--checkpoint", str(checkpoint), "--resume"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in error_lines(captured.err) if line.startswith("vbsnmf: ")]
    assert lines[:2] == [
        f"vbsnmf: converted {matrix} into {outdir / 'counts.h5ad'}",
        f"vbsnmf: no checkpoint at {checkpoint} yet: a new fit",
    ]
    assert captured.out.startswith(f"wrote {outdir}: 60 cells x 15 genes")


def test_svi_resume_of_a_python_setting_is_refused_before_the_conversion(fitted, tmp_path, capsys):
    """A checkpoint written from Python with a setting no option sets (``tau``) is refused
    before the conversion too (the check compares the fit's own record of its settings,
    `_estimator.settings_config`); it was refused only after converting the matrix."""
    import vbsnmf

    matrix, _ = fitted
    checkpoint = tmp_path / "python.ckpt"
    model = vbsnmf.VBNMF(
        2,
        solver="svi",
        random_state=3,
        tol=1e-4,
        max_iter=50,
        tau=2.0,
        n_epochs=1,
        checkpoint=str(checkpoint),
        n_threads=1,
    )
    with pytest.warns(vbsnmf.ConvergenceWarning):
        model.fit(sp.csr_matrix(COUNTS))
    argv = ["fit", str(matrix), "--cells-as-rows", *FIRST, "--epochs", "2", "--quiet"]
    with mock.patch("vbsnmf.io.mtx_to_h5ad", side_effect=AssertionError("converted")) as convert:
        code = cli.main(
            [*argv, "--checkpoint", str(checkpoint), "--resume", "-o", str(tmp_path / "o")]
        )
    assert code == cli.EXIT_USAGE
    assert not convert.called
    err = _error(capsys)
    assert "tau: checkpoint 2.0 vs now 1.0" in err and "(drop --resume)" in err, err
    assert not (tmp_path / "o").exists()
