"""A hostile user's eighteenth pass, the command line's part: an empty string given as a
path (INPUT, ``--row-names``, ``--col-names``, ``--checkpoint``, ``--convert-to``,
``-o``, umap's RESULT.h5ad and ``-o``) was taken for the current folder, as `pathlib`
reads "", so the errors named that folder or OUTDIR ("OUTDIR out lies inside the input
: ...", "checkpoint . is a folder", ". : not a regular file") and never the empty
argument, and ``fit ""`` run inside a 10x folder fitted that folder; and ``fit --help``
said that any .h5ad is streamed by ``--solver svi``, where only an X stored as CSR is;
``fit --key NMF`` of a result holding a default fit named that fit ``adata.uns['nmf']``,
not the input file.
Each case says what went wrong before its fix.

The commands run in this process through `vbsnmf.cli.main`, as tests/test_hostile.py
runs them, on its tiny data (40 cells x 25 genes)."""

from __future__ import annotations

import json
import warnings

import anndata as ad
import pytest
from test_hostile import FIT, SVI, _counts, _main, h5ad, tenx

import vbsnmf
from vbsnmf import cli

# Each command with one empty path argument, and the option the error must name.
EMPTY_PATHS = {
    "fit INPUT": (["fit", "", *FIT, "-o", "out"], "argument INPUT"),
    "fit --row-names": (
        ["fit", "m.mtx", "--genes-as-rows", "--row-names", "", *FIT, "-o", "out"],
        "argument --row-names",
    ),
    "fit --col-names": (
        ["fit", "m.mtx", "--genes-as-rows", "--col-names", "", *FIT, "-o", "out"],
        "argument --col-names",
    ),
    "fit --checkpoint": (
        ["fit", "x.h5ad", *FIT, "-o", "out", "--checkpoint", ""],
        "argument --checkpoint",
    ),
    "fit --convert-to": (
        ["fit", "m.mtx", "--genes-as-rows", *FIT, *SVI, "-o", "out", "--convert-to", ""],
        "argument --convert-to",
    ),
    "fit -o": (["fit", "x.h5ad", *FIT, "-o", ""], "argument -o/--outdir"),
    "demo -o": (["demo", "--dataset", "pbmc_tiny", "-o", ""], "argument -o/--outdir"),
    "umap RESULT": (["umap", "", "-o", "u.png"], "argument RESULT.h5ad"),
    "umap -o": (["umap", "r.h5ad", "-o", ""], "argument -o/--output"),
}


@pytest.mark.parametrize("case", EMPTY_PATHS, ids=list(EMPTY_PATHS))
def test_an_empty_path_is_refused_by_its_option(case, tmp_path, capfd):
    """Before: "OUTDIR out lies inside the input : ..." for an empty INPUT or --row-names,
    "checkpoint . is a folder", ".: not a regular file", ".: unknown figure format ''"."""
    argv, option = EMPTY_PATHS[case]
    code, out, err, _ = _main(argv, capfd, tmp_path)
    assert code == cli.EXIT_USAGE
    assert err == f"vbsnmf: error: {option}: expected a path, got an empty string " + (
        f"(see vbsnmf {argv[0]} --help)\n"
    )
    assert out == ""
    assert list(tmp_path.iterdir()) == []


def test_fit_of_an_empty_input_inside_a_10x_folder_fits_nothing(tmp_path, capfd):
    """Before: the folder the command ran in was read as the input and fitted."""
    folder = tenx(tmp_path)
    before = sorted(path.name for path in folder.iterdir())
    code, _, err, _ = _main(["fit", "", *FIT, "-o", tmp_path / "out"], capfd, folder)
    assert code == cli.EXIT_USAGE
    assert "argument INPUT: expected a path" in err
    assert not (tmp_path / "out").exists()
    assert sorted(path.name for path in folder.iterdir()) == before


def test_svi_help_says_which_h5ad_inputs_stream(tmp_path, capfd):
    """Before: "an .h5ad, a 10x folder or an .mtx is streamed from disk", where an .h5ad
    whose X is CSC (or --layer) is read into memory, as params.json records (a dense X
    was too, until the twenty-ninth session)."""
    dense = ad.AnnData(_counts().toarray())
    dense.write_h5ad(tmp_path / "dense.h5ad")
    for name in ("dense.h5ad", h5ad(tmp_path).name):
        code, _, err, _ = _main(["fit", name, *FIT, *SVI, "-o", f"o_{name}"], capfd, tmp_path)
        assert code == 0, err
    streamed = {
        name: json.loads((tmp_path / f"o_{name}" / "params.json").read_text())["streamed"]
        for name in ("dense.h5ad", "small.h5ad")
    }
    # a dense X streams too since the twenty-ninth session (read a block of rows at a time)
    assert streamed == {"dense.h5ad": True, "small.h5ad": True}
    help_text = " ".join(
        cli.build_parser()._subparsers._group_actions[0].choices["fit"].format_help().split()
    )
    assert "an .h5ad, a 10x folder or an .mtx is streamed" not in help_text
    assert "the X of an .h5ad stored as CSR or dense is streamed from disk" in help_text
    assert "--layer/--use-raw read into memory" in help_text


@pytest.mark.parametrize("route", [[], SVI], ids=["in memory", "streamed"])
def test_a_key_clash_names_the_earlier_fit_by_its_file(route, tmp_path, capfd):
    """Before: "--key NMF would overwrite .varm['NMF'] of the fit adata.uns['nmf']"."""
    adata = ad.AnnData(_counts())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        vbsnmf.tl.nmf(adata, 2, max_iter=2, random_state=0, n_threads=1)
    adata.write_h5ad(tmp_path / "result.h5ad")
    argv = ["fit", "result.h5ad", *FIT, *route, "--key", "NMF", "-o", "out"]
    code, _, err, _ = _main(argv, capfd, tmp_path)
    assert code == cli.EXIT_USAGE
    assert err == (
        "vbsnmf: error: --key NMF would overwrite .varm['NMF'] of the fit result.h5ad "
        "(uns['nmf']); choose another --key\n"
    )
    assert not (tmp_path / "out").exists()
