"""The PBMC tutorial runs end to end at its reduced setting and its numbers hold up."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "tutorials" / "pbmc_nmf_umap.py"


@pytest.fixture(scope="module")
def tutorial():
    """The tutorial script as a module (run in this process, so Numba's compiled UMAP and
    VB kernels are shared with the other tests)."""
    spec = importlib.util.spec_from_file_location("pbmc_nmf_umap", TUTORIAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tutorial_quick_run(tutorial, tmp_path, capsys):
    table = tutorial.run(quick=True, outdir=tmp_path)
    out = capsys.readouterr().out

    for name in ("pbmc_nmf_umap.png", "pbmc_nmf_factors.png"):
        image = matplotlib.image.imread(tmp_path / name)
        assert image.shape[1] > 500 and image[..., :3].std() > 0.05

    assert list(table.index) == [
        "NMF (vbsnmf, K=15)",
        "NMF as proportions",
        "PCA (scanpy, 15 PCs)",
    ]
    assert list(table.columns) == ["kNN accuracy (k=15, 5-fold)", "KMeans(5) ARI"]
    assert np.all((table.to_numpy() >= -1) & (table.to_numpy() <= 1))
    # Both embeddings separate the five sorted populations (the bar is 0.9).
    assert table["kNN accuracy (k=15, 5-fold)"].min() >= 0.9
    assert table["KMeans(5) ARI"].min() > 0.3

    results = (tmp_path / "pbmc_nmf_umap_results.md").read_text()
    assert "| NMF (vbsnmf, K=15) |" in results and "| 14 |" in results  # 15 factors listed
    assert "factor 14 (" in out


def test_markdown_table(tutorial):
    import pandas as pd

    table = pd.DataFrame({"a": [0.12345], "b": [1.0]}, index=pd.Index(["x"], name="row"))
    assert tutorial.markdown_table(table) == "| row | a | b |\n|---|---|---|\n| x | 0.123 | 1.000 |"
