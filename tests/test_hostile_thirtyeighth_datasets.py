"""Thirty-eighth pass, `vbsnmf.datasets`: the test suite reads the bundled copies, not the
``../shared/data`` folder beside the repository (a checkout alone lacks it: the tests
that read it failed there, or were skipped); a bundled file out of reach (no permission to
search its folder) is a `ReadError` saying to reinstall, as a missing one is, not a bare
`PermissionError`; and the package data the loaders read is in the built package."""

from __future__ import annotations

import ast
import os
import re
import shutil
from pathlib import Path

import pytest
from cli_output import without_compile_notice

import vbsnmf
from vbsnmf import cli
from vbsnmf.datasets import _load
from vbsnmf.io import ReadError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


# -- the tests read the bundled copies ------------------------------------------------------
# A path to the shared data folder in code: the strings shared and data joined by a slash
# operator, or a path string holding shared/data (its parts joined here, as this module names
# no such path itself).
_SHARED_FOLDER = re.compile(
    "|".join((r"[\"']shared[\"']\s*/\s*[\"']data[\"']", r"[\"'][\w./-]*shared" + "/data"))
)


def _shared_folder_paths(path: Path) -> list[str]:
    """``file:line`` of each place where the test module ``path`` names the shared data
    folder (`_SHARED_FOLDER`)."""
    text = path.read_text(encoding="utf-8")
    return [
        f"{path.name}:{text.count(chr(10), 0, found.start()) + 1}"
        for found in _SHARED_FOLDER.finditer(text)
    ]


def test_no_test_module_reads_the_shared_data_folder():
    """Two modules read pbmc_tiny from ``../shared/data`` beside the repository: in a
    checkout without it (CI's, a contributor's) four tests of the 25th pass errored
    (FileNotFoundError) and one of the 31st was skipped. The bundled copy,
    `vbsnmf.datasets.data_dir`, holds the same files."""
    found = [hit for path in sorted(TESTS.glob("*.py")) for hit in _shared_folder_paths(path)]
    assert found == [], found


# -- a bundled file out of reach --------------------------------------------------------------
@pytest.fixture
def unsearchable(tmp_path, monkeypatch) -> Path:
    """A copy of pbmc_tiny's folder that the loaders read, whose files cannot be looked up,
    as for a user without the permission to search it (mode 0 on the folder; the tests may
    run as root, whom no mode stops, so the lookup's error is raised here)."""
    data = tmp_path / "data"
    shutil.copytree(_load._DATA / "pbmc_tiny_v3", data / "pbmc_tiny_v3")
    monkeypatch.setattr(_load, "_DATA", data)
    folder = data / "pbmc_tiny_v3"
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if Path(path).parent == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    return folder


@pytest.mark.parametrize(
    "load",
    [lambda: vbsnmf.datasets.data_dir("pbmc_tiny_v3"), vbsnmf.datasets.pbmc_tiny],
    ids=["data_dir", "pbmc_tiny"],
)
def test_a_bundled_folder_out_of_reach_is_a_read_error(unsearchable, load):
    """Before: pathlib's lookup raised a bare ``PermissionError`` out of `data_dir` and the
    loaders, whose docstrings promise a `ReadError` (a `ValueError`) for a bundled copy
    that cannot be read; a caller catching those missed it (and from Python 3.13 pathlib
    says such a file is not there: "missing"). Now a `ReadError` names the file, says why
    and to reinstall, as a file of the folder that cannot be read already did."""
    with pytest.raises(ReadError) as raised:
        load()
    assert raised.value.path == unsearchable / "matrix.mtx.gz"
    assert str(raised.value).endswith(
        "matrix.mtx.gz: permission denied: the bundled data set 'pbmc_tiny_v3' is damaged; "
        "reinstall vbsnmf"
    )


def test_demo_on_a_bundled_folder_out_of_reach_says_to_reinstall(unsearchable, tmp_path, capsys):
    """``vbsnmf demo`` on it: one line naming the file and saying to reinstall (before:
    Python's "[Errno 13] Permission denied: ..."), exit code 2, no OUTDIR."""
    outdir = tmp_path / "demo"
    assert cli.main(["demo", "--dataset", "pbmc_tiny", "-k", "2", "-o", str(outdir)]) == 2
    err = without_compile_notice(capsys.readouterr().err)
    assert err.count("\n") == 1 and err.startswith("vbsnmf: error: "), err
    assert "matrix.mtx.gz: permission denied" in err and "reinstall vbsnmf" in err, err
    assert not outdir.exists()


# -- the demo's paths beside the package --------------------------------------------------
def _demo_refused(argv, capsys) -> str:
    """stderr of ``vbsnmf demo`` refusing ``argv`` before it reads any data (one line,
    exit code 2)."""
    assert cli.main(["demo", "--dataset", "pbmc_tiny", "-k", "2", *map(str, argv)]) == 2
    err = without_compile_notice(capsys.readouterr().err)
    assert err.count("\n") == 1 and err.startswith("vbsnmf: error: "), err
    return err


@pytest.mark.parametrize("option", ["-o", "--checkpoint"])
def test_demo_names_its_package_not_an_input(option, tmp_path, capsys, monkeypatch):
    """``vbsnmf demo`` takes no input, yet an OUTDIR or checkpoint in the package whose
    data it reads was refused as lying "inside the input /.../vbsnmf", and its help said
    OUTDIR must not "lie inside the input": both now name the vbsnmf package."""
    monkeypatch.chdir(tmp_path)
    package = Path(vbsnmf.__file__).resolve().parent
    inside = package / "datasets" / "data" / "out"
    argv = ["-o", inside] if option == "-o" else ["-o", tmp_path / "out", option, inside]
    err = _demo_refused(argv, capsys)
    assert f"lies inside the vbsnmf package {package}:" in err and "input" not in err, err
    assert not inside.exists() and not (tmp_path / "out").exists()
    parser = cli.build_parser()
    demo = parser._subparsers._group_actions[0].choices["demo"]
    (action,) = [a for a in demo._actions if option in a.option_strings]
    assert "the vbsnmf package" in action.help and "input" not in action.help, action.help


# -- the package data in the built package ----------------------------------------------------
def _package_data_patterns() -> list[str]:
    """pyproject.toml's ``[tool.setuptools.package-data]`` globs of ``vbsnmf.datasets``."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    line = next(row for row in section.splitlines() if row.startswith('"vbsnmf.datasets"'))
    return ast.literal_eval(line.split("=", 1)[1].strip())


def test_every_bundled_file_is_package_data():
    """Guard (passes on the base code too): setuptools copies into the wheel the files
    that the package-data globs match under ``vbsnmf/datasets`` (its `glob`, as here);
    every file the loaders read must be among them, or a non-editable install (``pip
    install .``) lacks it and every loader says the copy is damaged."""
    package = ROOT / "vbsnmf" / "datasets"
    shipped = {path for pattern in _package_data_patterns() for path in package.glob(pattern)}
    bundled = {path for path in (package / "data").rglob("*") if path.is_file()}
    assert bundled and bundled <= shipped, sorted(map(str, bundled - shipped))
    for name in _load._BUNDLED:
        for file in _load._FILES:
            assert package / "data" / name / file in shipped, (name, file)
