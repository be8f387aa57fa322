"""Every record of a fit names the versions its bits depend on.

A fit's bits depend on numpy, scipy, Numba and the LLVM that compiles its kernels: a rerun
under other versions can differ in the last digits, and without the versions in the record
nothing told that apart from another fit's settings.
"""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import vbsnmf
from vbsnmf import cli

LIBRARIES = ("numpy", "scipy", "numba", "llvmlite", "anndata")


def _checkout_commit() -> dict[str, str]:
    """``vbsnmf_commit`` when vbsnmf runs from a git checkout, as git itself names it."""
    root = Path(vbsnmf.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return {}
    done = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return {"vbsnmf_commit": done.stdout.strip()} if done.returncode == 0 else {}


def _expected() -> dict[str, str]:
    # read independently of vbsnmf's helper: the installed distributions' own metadata
    versions = {name: version(name) for name in LIBRARIES}
    return {"vbsnmf": vbsnmf.__version__} | _checkout_commit() | versions


@pytest.fixture
def small():
    rng = np.random.default_rng(3)
    counts = sp.csr_matrix(rng.poisson(1.0, (50, 30)).astype(np.float64))
    return ad.AnnData(counts)


def test_tl_nmf_records_the_versions_and_they_survive_h5ad(small, tmp_path):
    vbsnmf.tl.nmf(small, n_components=2, max_iter=5, random_state=0)
    assert small.uns["nmf"]["versions"] == _expected()
    small.write_h5ad(tmp_path / "fit.h5ad")
    back = ad.read_h5ad(tmp_path / "fit.h5ad")
    assert dict(back.uns["nmf"]["versions"]) == _expected()
    # the stored record is still one tl.project and the plots accept
    new = ad.AnnData(small.X[:7].copy())
    vbsnmf.tl.project(new, back)
    assert new.uns["nmf_projection"]["versions"] == _expected()


def test_classic_solver_records_them_too(small):
    # and scikit-learn's, whose randomized SVD and random draws make a classical start
    vbsnmf.tl.nmf(small, n_components=2, solver="mu", max_iter=5, random_state=0)
    assert small.uns["nmf"]["versions"] == _expected() | {"scikit-learn": version("scikit-learn")}


def test_select_k_records_them(small):
    vbsnmf.tl.select_k(small, [1, 2], max_iter=5, random_state=0)
    assert small.uns["nmf_k_selection"]["versions"] == _expected()


def test_params_json_records_them(tmp_path, capsys):
    rng = np.random.default_rng(4)
    small = ad.AnnData(sp.csr_matrix(rng.poisson(1.0, (40, 25)).astype(np.float64)))
    small.write_h5ad(tmp_path / "in.h5ad")
    argv = ["fit", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "out"), "-k", "2"]
    code = cli.main([*argv, "--max-iter", "5"])
    capsys.readouterr()
    assert code == 0
    params = json.loads((tmp_path / "out" / "params.json").read_text())
    assert params["versions"] == _expected()
    assert params["vbsnmf_version"] == vbsnmf.__version__
