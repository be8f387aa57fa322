"""A hostile user's twenty-first pass, the command line's part: ``fit --force`` on a
private OUTDIR (chmod 700, its files 600) left the new output 755 with 644 files,
readable by every user of the machine, and in the user's group, not the lab's it was
given (so was a figure or checkpoint replaced); a new OUTDIR in a shared set-group-ID
folder lost the set-group-ID bit that ``mkdir`` gives; and ``umap -o fig.eps`` (or
``.ps``, ``.svgz``) recorded the hidden temporary the figure was written as
(``%%Title: .fig.eps.x1y2z3w4.tmp.eps``, the gzip header of an ``.svgz``, which
``gunzip -N`` restores as that hidden file).
Each case says what went wrong before its fix.

The commands run in this process through `vbsnmf.cli.main`, as tests/test_hostile.py
runs them, on its tiny data (40 cells x 25 genes)."""

from __future__ import annotations

import gzip
import os
import stat

import anndata as ad
import pytest
from test_hostile import FIT, _main, h5ad

import vbsnmf
from vbsnmf import cli


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_force_keeps_a_private_outdir_and_its_files_private(tmp_path, capfd):
    """Before: 0o755 and 0o644 after the replacement, whatever the old output's modes,
    and the user's group, not the one the old output was given (a lab's)."""
    counts = h5ad(tmp_path)
    argv = ["fit", counts, *FIT, "-o", "out"]
    assert _main(argv, capfd, tmp_path)[0] == cli.EXIT_OK
    out = tmp_path / "out"
    out.chmod(0o700)
    modes = {file.name: 0o600 for file in out.iterdir()}
    modes["params.json"] = 0o640  # each file keeps its own
    for name, mode in modes.items():
        (out / name).chmod(mode)
    # any group for root, who may give it (the tests run as root); else the user's own
    lab = os.stat(out).st_gid + 4242 if os.geteuid() == 0 else os.getgid()
    os.chown(out, -1, lab)
    os.chown(out / "params.json", -1, lab)
    assert _main([*argv, "--force"], capfd, tmp_path)[0] == cli.EXIT_OK
    assert _mode(out) == 0o700
    assert {file.name: _mode(file) for file in out.iterdir()} == modes
    assert os.stat(out).st_gid == os.stat(out / "params.json").st_gid == lab
    assert ad.read_h5ad(out / "result.h5ad").n_obs == 40  # and it is the new output


def test_a_new_outdir_gets_the_set_group_id_bit_mkdir_gives(tmp_path, capfd):
    """Before: 0o755 in a 0o2775 folder, where ``mkdir`` makes 0o2755 (so that files made
    in it later belong to the shared folder's group)."""
    counts = h5ad(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o2775)
    (shared / "made").mkdir()
    expected = _mode(shared / "made")
    assert expected & stat.S_ISGID
    assert _main(["fit", counts, *FIT, "-o", shared / "out"], capfd, tmp_path)[0] == cli.EXIT_OK
    assert _mode(shared / "out") == expected
    # and outside such a folder, the default mode as before: no set-group-ID bit
    assert _main(["fit", counts, *FIT, "-o", "plain"], capfd, tmp_path)[0] == cli.EXIT_OK
    assert _mode(tmp_path / "plain") == 0o777 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fitted")
    adata = vbsnmf.datasets.pbmc_tiny()[:60].copy()
    with pytest.warns(vbsnmf.ConvergenceWarning):
        vbsnmf.tl.nmf(adata, 2, max_iter=3, n_threads=1)
    adata.write_h5ad(folder / "result.h5ad")
    return folder / "result.h5ad"


@pytest.mark.parametrize("name", ["fig.eps", "fig.ps"])
def test_a_postscript_figure_does_not_name_the_temporary(fitted, name, tmp_path, capfd):
    """Before: ``%%Title: .fig.eps.x1y2z3w4.tmp.eps``, the hidden name it was written as."""
    code, out, _, _ = _main(["umap", fitted, "-o", name], capfd, tmp_path)
    assert code == cli.EXIT_OK and out == f"wrote {name}\n"
    text = (tmp_path / name).read_bytes()
    assert text.startswith(b"%!PS-Adobe-3.0")
    assert b".tmp" not in text and b"\nshowpage\n" in text  # complete
    assert os.listdir(tmp_path) == [name]


def test_an_svgz_figure_records_its_own_name(fitted, tmp_path, capfd):
    """Before: the gzip header named ``.fig.svgz.x1y2z3w4.tmp.svgz``, which ``gunzip -N``
    and archive tools restore as a hidden file."""
    code, _, _, _ = _main(["umap", fitted, "-o", "fig.svgz"], capfd, tmp_path)
    assert code == cli.EXIT_OK
    data = (tmp_path / "fig.svgz").read_bytes()
    assert data[3] & 0x08  # FLG.FNAME: a name follows the 10-byte header
    assert data[10 : data.index(b"\0", 10)] == b"fig.svgz"
    svg = gzip.decompress(data)
    assert svg.startswith(b"<?xml") and svg.rstrip().endswith(b"</svg>")


def test_a_replaced_figure_keeps_its_group(fitted, tmp_path, capfd):
    """Before: the mode of the figure it replaced (tests/test_hostile_fifth.py), but the
    user's group, not the one the figure was given (a lab's)."""
    figure = tmp_path / "fig.png"
    figure.write_bytes(b"old")
    figure.chmod(0o640)
    lab = os.stat(figure).st_gid + 4242 if os.geteuid() == 0 else os.getgid()
    os.chown(figure, -1, lab)
    assert _main(["umap", fitted, "-o", figure.name], capfd, tmp_path)[0] == cli.EXIT_OK
    assert figure.read_bytes().startswith(b"\x89PNG")
    assert os.stat(figure).st_gid == lab and _mode(figure) == 0o640
