"""Fifteenth hostile pass, the first things a user touches: the command line's help texts
and what ``vbsnmf demo`` says it wrote, and the gzip tables ``vbsnmf fit`` writes."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pandas as pd
import pytest

import vbsnmf
from vbsnmf import cli

TINY = str(vbsnmf.datasets.data_dir("pbmc_tiny_v3"))
QUICK = ["-k", "2", "--max-iter", "3"]


def _help(command: str) -> dict:
    """``vbsnmf COMMAND --help`` as ``{"": description, dest: the option's help}``, each
    with its whitespace folded (argparse wraps lines)."""
    parser = cli.build_parser()
    subparser = parser._subparsers._group_actions[0].choices[command]
    texts = {action.dest: " ".join(action.help.split()) for action in subparser._actions}
    texts[""] = " ".join(subparser.description.split())
    return texts


def _gzip_stored_name(path) -> str | None:
    """The FNAME field of a gzip file's header (RFC 1952, section 2.3.1), or None."""
    with open(path, "rb") as file:
        header = file.read(10)
        assert header[:2] == b"\x1f\x8b"
        flags = header[3]
        if flags & 0x04:  # FEXTRA: a length, then that many bytes
            file.read(int.from_bytes(file.read(2), "little"))
        if not flags & 0x08:  # FNAME
            return None
        name = b""
        while (byte := file.read(1)) not in (b"", b"\0"):
            name += byte
        return name.decode("latin-1")


@pytest.fixture(scope="module")
def fit_outdir(tmp_path_factory):
    """OUTDIR of a quick ``vbsnmf fit`` of the bundled 10x folder."""
    outdir = tmp_path_factory.mktemp("fit") / "out"
    assert cli.main(["fit", TINY, *QUICK, "-o", str(outdir), "--quiet"]) == 0
    return outdir


def test_demo_says_its_umap_is_of_the_usages_not_the_cell_factors(tmp_path, monkeypatch, capsys):
    """The demo's help and its last line called umap.png the UMAP of the cell factors; it is
    drawn on the usages' square roots (`vbsnmf.pl.umap`), and the README warns that a graph
    on the raw factors splits T cells by sequencing depth."""
    description = _help("demo")[""]
    assert "UMAP of the cell factors" not in description
    assert "usages' square roots" in description
    monkeypatch.chdir(tmp_path)
    # the figure itself is tested in test_io_cli.py; here only what the demo says of it
    monkeypatch.setattr(cli, "_draw_umap", lambda adata, output, **_: output.write_bytes(b""))
    assert cli.main(["demo", "--dataset", "pbmc_tiny", *QUICK, "-o", "demo"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"UMAP of the NMF usages: {os.path.join('demo', 'umap.png')}"


def test_fit_help_names_every_file_fit_writes(fit_outdir):
    """``fit --help`` listed the files fit writes but not top_genes.tsv; ``demo --help`` said
    demo adds top_genes.tsv, of "each factor" (fit writes it too, of the active factors)."""
    written = sorted(os.listdir(fit_outdir))
    assert "top_genes.tsv" in written
    description = _help("fit")[""]
    assert [name for name in written if name not in description] == []
    assert "each active factor" in description
    demo = _help("demo")[""]
    assert "top_genes.tsv" not in demo and "of each factor" not in demo


def test_help_says_what_max_iter_and_tol_do_under_svi():
    """``--max-iter`` said "maximum iterations" and ``--tol`` "stop when the relative change
    of the ELBO is below T"; under ``--solver svi`` they run each minibatch's local fit (the
    passes over the cells are ``--epochs``), so ``--solver svi --max-iter 5`` is no short run
    and ``--tol 0`` runs every local fit to ``--max-iter``."""
    texts = _help("fit")
    assert "svi: passes of each minibatch's local fit" in texts["max_iter"]
    assert "--epochs" in texts["max_iter"]
    assert "svi: also each minibatch's local fit" in texts["tol"]
    # the same options, the same words, in the demo
    demo = _help("demo")
    assert (demo["max_iter"], demo["tol"]) == (texts["max_iter"], texts["tol"])


def test_umap_help_says_a_large_n_neighbors_is_lowered():
    """``umap --n-neighbors 5000`` on 1,107 cells drew the graph of 1,106 neighbours without a
    word; `vbsnmf.pl.umap`'s docstring says so, the command's help now does too."""
    assert "a larger N is lowered" in _help("umap")["n_neighbors"]


@pytest.mark.parametrize("table", ["cell_factors.tsv.gz", "gene_loadings.tsv.gz"])
def test_gzip_tables_record_their_own_name_not_the_temporarys(fit_outdir, table):
    """The header of each table named the temporary it was written as
    (``.cell_factors.tsv.gz.b970q9v8.tmp``): ``gunzip -N`` and archive tools that take the
    stored name extracted a hidden ``.tmp`` file. The content is unchanged."""
    assert _gzip_stored_name(fit_outdir / table) == table.removesuffix(".gz")
    with gzip.open(fit_outdir / table, "rt") as file:
        first = file.readline().rstrip("\n").split("\t")
    assert first == [table.split("_")[0], "factor_0", "factor_1"]  # "cell" or "gene"


@pytest.mark.filterwarnings("ignore::vbsnmf.ConvergenceWarning")
def test_write_nmf_tables_records_the_names_and_reads_back(tmp_path):
    """Through the API too, and the values read back as written (to the 6 digits written)."""
    adata = vbsnmf.datasets.pbmc_tiny()[:60].copy()
    vbsnmf.tl.nmf(adata, 2, max_iter=3, n_threads=1)
    for path in vbsnmf.io.write_nmf_tables(adata, tmp_path):
        if path.name.endswith(".gz"):
            assert _gzip_stored_name(path) == path.name.removesuffix(".gz")
    cells = pd.read_csv(tmp_path / "cell_factors.tsv.gz", sep="\t", index_col=0)
    assert list(cells.index) == list(adata.obs_names)
    np.testing.assert_allclose(cells.to_numpy(), adata.obsm["X_nmf"], rtol=1e-5)


def test_svi_options_give_their_defaults():
    """Every option said its default but ``--batch-size`` and ``--epochs`` (VBNMF's rules)."""
    texts = _help("fit")
    assert "(default: the cells in 32 minibatches of 128 to 4,096 cells)" in texts["batch_size"]
    assert "(default: 40;" in texts["epochs"] and "1,280 minibatches" in texts["epochs"]


def test_svi_progress_bar_counts_to_the_epochs_the_fit_runs(tmp_path, monkeypatch):
    """Without ``--epochs`` the SVI bar had no total (VBNMF's default is None until the
    fit resolves it), so it showed no end and no time left."""
    import tqdm.auto

    totals = []
    real_tqdm, real_nmf = tqdm.auto.tqdm, vbsnmf.tl.nmf

    def recording(*args, **kwargs):
        totals.append(kwargs["total"])
        return real_tqdm(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", recording)
    # one epoch, once the bar's total is set from the options (which give none)
    monkeypatch.setattr(vbsnmf.tl, "nmf", lambda *a, **k: real_nmf(*a, **{**k, "n_epochs": 1}))
    monkeypatch.chdir(tmp_path)
    # not --quiet, which shows no bar (and since the thirty-fourth pass makes none)
    argv = ["fit", TINY, "-k", "2", "--solver", "svi", "-o", "out"]
    assert cli.main(argv) == 0
    # pbmc_tiny's 1,107 cells: minibatches of max(128, ceil(1107 / 32)) = 128 cells, 9 an
    # epoch, and max(40, ceil(40 * 32 / 9)) = 143 epochs
    n_cells = 1107
    steps = -(-n_cells // max(128, -(-n_cells // 32)))
    assert totals == [max(40, -(-40 * 32 // steps))] == [143]
