"""Every example in README.md runs as written, on the data the package bundles.

Python blocks run as ``__main__`` scripts in this process (so that the JIT-compiled UMAP
and kernels are shared with the other tests), shell blocks under ``bash -euo pipefail``
with this checkout first on ``PYTHONPATH`` and the ``vbsnmf`` console script of this
interpreter on ``PATH``; each in its own temporary folder. The first shell block holds the
README's two commands: they install the package this test runs on, and the second runs
this test suite, so the test checks that they are the commands ``.ci/run`` runs, and runs
the demo that the first one ends with.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(python|bash)\n(.*?)^```", README, flags=re.S | re.M)
INSTALL = (
    "python -m pip install -e . && vbsnmf demo -o pbmc_demo --force",
    "python -m pip install -e '.[dev]' && python -m pytest",
)


def _environment() -> dict:
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _run(command: list[str], folder: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, cwd=folder, env=_environment(), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"{shlex.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _commands(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_the_two_commands():
    language, block = BLOCKS[0]
    assert language == "bash" and tuple(_commands(block)) == INSTALL
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pip install" in ci and "-e '.[dev]'" in ci and "python -m pytest" in ci
    assert shutil.which("vbsnmf", path=_environment()["PATH"]), "the vbsnmf script is missing"


def test_readme_demo_command(tmp_path):
    demo = INSTALL[0].split(" && ", 1)[1]
    _run(["bash", "-euo", "pipefail", "-c", demo], tmp_path)
    folder = tmp_path / "pbmc_demo"
    for name in ("result.h5ad", "cell_factors.tsv.gz", "gene_loadings.tsv.gz", "umap.png"):
        assert (folder / name).stat().st_size > 0
    summary = json.loads((folder / "params.json").read_text())
    assert (summary["n_cells"], summary["n_genes"], summary["n_components"]) == (3774, 16791, 15)
    # the defaults' fit reaches the stopping rule, not an iteration cap (issue 16)
    assert summary["converged"]


EXAMPLES = [(language, block) for language, block in BLOCKS[1:]]


@pytest.mark.parametrize(
    ("language", "block"),
    EXAMPLES,
    ids=[f"{language}-{n}" for n, (language, _) in enumerate(EXAMPLES, start=1)],
)
def test_readme_example_runs(language, block, tmp_path, monkeypatch):
    if language == "python":
        script = tmp_path / "example.py"
        script.write_text(block)
        monkeypatch.chdir(tmp_path)
        try:
            runpy.run_path(str(script), run_name="__main__")
        finally:
            plt.close("all")
    else:
        _run(["bash", "-euo", "pipefail", "-c", block], tmp_path)


def test_every_example_is_collected():
    """The parser finds every fenced block (an unlabelled one would go untested)."""
    fences = re.findall(r"^```(\w*)$", README, flags=re.M)
    opening = fences[::2]
    assert opening == [language for language, _ in BLOCKS]
    assert len(EXAMPLES) >= 6 and {"python", "bash"} == {language for language, _ in EXAMPLES}
