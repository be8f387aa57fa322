"""The batch route of ``vbsnmf fit --resume`` compares a checkpoint's settings with the
command line's before it reads the input, as the streamed route does before converting."""

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import vbsnmf.io
from vbsnmf.cli import main


def _counts(n_cells=40, n_genes=15, seed=0):
    rng = np.random.default_rng(seed)
    return sp.csr_matrix(rng.poisson(1.0, (n_cells, n_genes)).astype(np.float64))


def _inputs(tmp_path):
    """The same counts as an .mtx (genes as rows, as 10x writes it) and as an .h5ad."""
    import anndata as ad

    counts = _counts()
    mtx = tmp_path / "counts.mtx"
    scipy.io.mmwrite(mtx, counts.T.tocoo())
    h5ad = tmp_path / "counts.h5ad"
    ad.AnnData(counts).write_h5ad(h5ad)
    return {"mtx": mtx, "h5ad": h5ad}


def _fit(source, outdir, checkpoint, k, *extra):
    argv = ["fit", str(source), "-k", str(k), "-o", str(outdir), "--max-iter", "3"]
    if str(source).endswith(".mtx"):
        argv.append("--genes-as-rows")
    return main([*argv, "--checkpoint", str(checkpoint), "--quiet", *extra])


@pytest.mark.parametrize("kind", ["mtx", "h5ad"])
def test_batch_resume_of_another_fit_refused_before_the_input_is_read(
    tmp_path, monkeypatch, capsys, kind
):
    """Fails on the code before: the input was read whole first (``io.read`` called)."""
    source = _inputs(tmp_path)[kind]
    checkpoint = tmp_path / "fit.ckpt.npz"
    assert _fit(source, tmp_path / "first", checkpoint, 3) == 0
    capsys.readouterr()

    def no_read(*args, **kwargs):
        raise AssertionError("the input was read before the checkpoint was compared")

    monkeypatch.setattr(vbsnmf.io, "read", no_read)
    assert _fit(source, tmp_path / "second", checkpoint, 4, "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "-k: checkpoint 3 vs now 4" in err and "drop --resume" in err
    assert not (tmp_path / "second").exists()


def test_batch_resume_of_a_layer_compares_that_layers_shape(tmp_path, monkeypatch, capsys):
    """The shape compared is the --use-raw element's (here of more genes than X), before
    the input is read; fails on the code before, which read it first."""
    import anndata as ad

    counts = _counts()
    adata = ad.AnnData(counts[:, :10])
    adata.raw = ad.AnnData(counts)
    source = tmp_path / "raw.h5ad"
    adata.write_h5ad(source)
    checkpoint = tmp_path / "fit.ckpt.npz"
    assert _fit(source, tmp_path / "first", checkpoint, 3) == 0  # X: 40 x 10
    capsys.readouterr()
    monkeypatch.setattr(vbsnmf.io, "read", lambda *a, **k: pytest.fail("read"))
    assert _fit(source, tmp_path / "second", checkpoint, 3, "--resume", "--use-raw") == 2
    err = capsys.readouterr().err
    assert "15" in err and "10" in err and "drop --resume" in err


def test_batch_resume_of_the_same_fit_reads_and_continues(tmp_path):
    """Guard (passes before and after): a matching checkpoint still resumes."""
    source = _inputs(tmp_path)["h5ad"]
    checkpoint = tmp_path / "fit.ckpt.npz"
    assert _fit(source, tmp_path / "first", checkpoint, 3) == 0
    assert _fit(source, tmp_path / "second", checkpoint, 3, "--resume", "--max-iter", "5") == 0
    assert (tmp_path / "second" / "result.h5ad").exists()
