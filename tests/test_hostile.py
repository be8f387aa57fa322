"""A hostile user's second pass (issue 14): inputs, paths, options, checkpoints and signals
of the kinds issue 14 lists, but other ones.

Each case builds its inputs in a fresh folder and returns what went wrong, or None. A
command that must fail has to give exit code 2, one ``vbsnmf: error:`` line naming the
problem, nothing on stdout, and leave every file in the folder as it was (no OUTDIR, no
temporary file, no checkpoint); a command that must succeed has to write the complete
OUTDIR and change nothing else. A library call that must fail has to raise a typed error
whose message says what is wrong.

The counts (114 cases; 93 went wrong before the fixes, 0 now) are in the README's
"Reliability" section and tests/README.md.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from cli_output import without_compile_notice

import vbsnmf
from vbsnmf import _checkpoint
from vbsnmf.cli import main

FIT = ["-k", "2", "--max-iter", "3", "--threads", "1", "--quiet"]
SVI = ["--solver", "svi", "--batch-size", "20", "--epochs", "1"]
CONVERT = ["--convert-to", "conv.h5ad"]
OUTPUTS = {"result.h5ad", "cell_factors.tsv.gz", "gene_loadings.tsv.gz", "elbo.tsv", "params.json"}
N_CELLS, N_GENES = 40, 25


# -- inputs ------------------------------------------------------------------------------------
def _counts(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix(rng.poisson(1.5, (N_CELLS, N_GENES)).astype(np.float32))


def h5ad(folder: Path, name: str = "small.h5ad", **layers) -> Path:
    path = folder / name
    ad.AnnData(_counts(), layers=layers or None).write_h5ad(path)
    return path


def h5ad_without_x(folder: Path, *, layer: bool = True, raw: bool = False) -> Path:
    path = folder / "nox.h5ad"
    template = ad.AnnData(_counts())
    adata = ad.AnnData(obs=template.obs, var=template.var)
    if layer:
        adata.layers["counts"] = _counts()
    if raw:
        adata.raw = template
    adata.write_h5ad(path)
    return path


def damaged_h5ad(folder: Path, group: str, edit: Callable) -> Path:
    """An .h5ad whose CSR at ``group`` (X, layers/counts, raw/X) was edited on disk."""
    path = folder / "damaged.h5ad"
    adata = ad.AnnData(_counts(), layers={"counts": _counts(1)})
    adata.raw = ad.AnnData(_counts(2))
    adata.write_h5ad(path)
    with h5py.File(path, "r+") as handle:
        edit(handle[group])
    return path


def mtx(folder: Path, body: str, field: str = "integer", size: str = "3 3 3") -> Path:
    path = folder / "m.mtx"
    path.write_text(f"%%MatrixMarket matrix coordinate {field} general\n{size}\n{body}")
    return path


def tenx(folder: Path, entries: list[tuple[int, int, int]] | None = None) -> Path:
    """A 10x folder (Cell Ranger 3 layout) of N_GENES genes x N_CELLS cells (entries: 1-based
    gene, cell, count)."""
    path = folder / "tenx"
    path.mkdir()
    coo = _counts().T.tocoo()
    replaced = {(gene, cell) for gene, cell, _ in entries or []}
    rows = [(r + 1, c + 1, int(v)) for r, c, v in zip(coo.row, coo.col, coo.data)]
    rows = [row for row in rows if row[:2] not in replaced] + (entries or [])
    text = f"%%MatrixMarket matrix coordinate integer general\n{N_GENES} {N_CELLS} {len(rows)}\n"
    text += "".join(f"{r} {c} {v}\n" for r, c, v in rows)
    (path / "matrix.mtx.gz").write_bytes(gzip.compress(text.encode()))
    features = "".join(f"g{i}\tG{i}\tGene Expression\n" for i in range(N_GENES))
    (path / "features.tsv.gz").write_bytes(gzip.compress(features.encode()))
    barcodes = "".join(f"c{i}\n" for i in range(N_CELLS))
    (path / "barcodes.tsv.gz").write_bytes(gzip.compress(barcodes.encode()))
    return path


def notes(folder: Path) -> Path:
    path = folder / "notes.txt"
    path.write_text("the user's only copy\n")
    return path


def checkpoint_of(folder: Path, **settings) -> Path:
    """A vbsnmf checkpoint of a small batch fit (``settings`` as VBNMF's)."""
    path = folder / "fit.ckpt"
    params = {"max_iter": 2, "n_threads": 1, "random_state": 0, "prior": "gamma", **settings}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.VBNMF(2, checkpoint=path, **params).fit(_counts())
    return path


def rewritten(path: Path, *, arrays=None, meta=None) -> Path:
    """The checkpoint at ``path`` with ``arrays(dict)`` / ``meta(dict)`` applied."""
    stored, stored_meta = _checkpoint.load_checkpoint(path)
    if arrays:
        arrays(stored)
    if meta:
        meta(stored_meta)
    _checkpoint.save_checkpoint(path, stored, stored_meta)
    return path


# -- checking ----------------------------------------------------------------------------------
def _tree(folder: Path) -> dict:
    """Every path under ``folder`` (links by their target) with its bytes."""
    tree = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            tree[key] = ("link", os.readlink(path))
        elif path.is_file():
            tree[key] = path.read_bytes()
        else:
            tree[key] = "folder"
    return tree


@contextlib.contextmanager
def _cwd(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _main(argv, capfd, cwd: Path) -> tuple[int, str, str, list]:
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as escaped, _cwd(cwd):
        warnings.simplefilter("always")
        code = main([str(a) for a in argv])
    captured = capfd.readouterr()
    err = without_compile_notice(captured.err)  # as a cold cache adds it, or not
    return code, captured.out, err, [str(w.message)[:80] for w in escaped]


def refused(build: Callable[[Path], list], *messages: str) -> Callable:
    """A command that must fail cleanly, changing nothing in its folder."""

    def run(folder: Path, capfd) -> str | None:
        argv = build(folder)
        before = _tree(folder)
        code, out, err, escaped = _main(argv, capfd, folder)
        problems = []
        if code != 2:
            problems.append(f"exit code {code}")
        lines = err.splitlines()
        if len(lines) != 1 or not lines[0].startswith("vbsnmf: error: "):
            problems.append(f"stderr is not one error line: {err[:300]!r}")
        problems += [f"message lacks {m!r}: {err.strip()[:200]}" for m in messages if m not in err]
        if out:
            problems.append(f"stdout: {out[:100]!r}")
        if escaped:
            problems.append(f"escaped warnings {escaped}")
        after = _tree(folder)
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()), key=str)
            problems.append(f"files changed: {[name for name, _ in changed][:5]}")
        return "; ".join(problems) or None

    return run


def succeeds(build: Callable[[Path], list], check: Callable | None = None) -> Callable:
    """A command that must succeed, write the complete OUTDIR (``-o out`` unless the argv
    names another) and change no file that was there before."""

    def run(folder: Path, capfd) -> str | None:
        argv = build(folder)
        if "-o" not in argv:
            argv = [*argv, "-o", folder / "out"]
        outdir = folder / argv[argv.index("-o") + 1]
        before = _tree(folder)
        code, _, err, _ = _main(argv, capfd, folder)
        if code != 0:
            return f"exit code {code}: {err.strip()[:300]}"
        if argv[0] == "fit" and not OUTPUTS <= {p.name for p in outdir.iterdir()}:
            return f"OUTDIR holds {sorted(p.name for p in outdir.iterdir())}"
        after = _tree(folder)
        changed = [k for k, v in before.items() if after.get(k) != v]
        if changed:
            return f"files changed: {changed[:5]}"
        return check(folder, outdir) if check else None

    return run


def raises(call: Callable[[Path], object], error, *messages: str) -> Callable:
    """A library call that must raise ``error`` whose message holds ``messages``."""

    def run(folder: Path, capfd) -> str | None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
                call(folder)
        except error as caught:
            text = str(caught)
            missing = [m for m in messages if m not in text]
            return f"message lacks {missing}: {text[:200]}" if missing else None
        except BaseException as other:  # what a hostile input must not produce
            return f"{type(other).__name__}: {str(other)[:200]}"
        return "no error"

    return run


def returns(call: Callable[[Path], object], check: Callable[[object], str | None]) -> Callable:
    """A library call that must succeed, its result passing ``check``."""

    def run(folder: Path, capfd) -> str | None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
                result = call(folder)
        except BaseException as error:
            return f"{type(error).__name__}: {str(error)[:200]}"
        return check(result)

    return run


@dataclass
class Case:
    name: str
    run: Callable[[Path, object], str | None]


# -- command line: paths --------------------------------------------------------------------
def _link(folder: Path, name: str, target: Path) -> Path:
    (folder / name).symlink_to(target)
    return folder / name


def _subdir(folder: Path, name: str) -> Path:
    (folder / name).mkdir(parents=True, exist_ok=True)
    return folder / name


def _input_sibling_ok(folder: Path, outdir: Path) -> str | None:
    return None if (folder / "data" / "small.h5ad").is_file() else "the input is gone"


def path_cases() -> list[Case]:
    def data(f):
        return h5ad(_subdir(f, "data"))

    return [
        Case("OUTDIR empty string", refused(lambda f: ["fit", h5ad(f), *FIT, "-o", ""], "empty")),
        Case(
            "OUTDIR empty string with --force",
            refused(lambda f: ["fit", h5ad(f), *FIT, "-o", "", "--force"], "empty"),
        ),
        Case(
            "OUTDIR ../ from a subfolder",
            refused(lambda f: ["fit", h5ad(f), *FIT, "-o", "data/..", "--force"], "folder"),
        ),
        Case(
            "OUTDIR an existing file with --force",
            refused(lambda f: ["fit", h5ad(f), *FIT, "-o", notes(f), "--force"], "not a folder"),
        ),
        Case(
            "OUTDIR a symlink to the input's folder",
            refused(
                lambda f: ["fit", data(f), *FIT, "-o", _link(f, "l", f / "data"), "--force"],
                "contains the input",
            ),
        ),
        Case(
            "OUTDIR inside a symlink to a 10x input",
            refused(
                lambda f: ["fit", tenx(f), *FIT, "-o", _link(f, "l", f / "tenx") / "out"],
                "inside the input",
            ),
        ),
        Case(
            "OUTDIR a 10x folder spelled with ..",
            refused(
                lambda f: ["fit", tenx(f), *FIT, "-o", f / "tenx" / ".." / "tenx", "--force"],
                "is the input",
            ),
        ),
        Case(
            "OUTDIR the --col-names file",
            refused(
                lambda f: [
                    "fit",
                    mtx(f, "1 1 1\n2 2 2\n3 3 3\n"),
                    "--cells-as-rows",
                    "--col-names",
                    _names(f),
                    *FIT,
                    "-k",
                    "1",
                    "-o",
                    f / "names.txt",
                    "--force",
                ],
                "is the input",
            ),
        ),
        Case(
            "OUTDIR beside the input in its folder",
            succeeds(lambda f: ["fit", data(f), *FIT, "-o", f / "data" / "out"], _input_sibling_ok),
        ),
        Case(
            "checkpoint empty string",
            refused(lambda f: ["fit", h5ad(f), *FIT, "--checkpoint", "", "-o", "o"], "empty"),
        ),
        Case(
            "checkpoint the --row-names file",
            refused(
                lambda f: [
                    "fit",
                    mtx(f, "1 1 1\n2 2 2\n3 3 3\n"),
                    "--cells-as-rows",
                    "--row-names",
                    _names(f),
                    *FIT,
                    "-k",
                    "1",
                    "--checkpoint",
                    f / "names.txt",
                    "-o",
                    "o",
                ],
                "is the input",
            ),
        ),
        Case(
            "checkpoint under a file",
            refused(
                lambda f: ["fit", h5ad(f), *FIT, "--checkpoint", notes(f) / "fit.ckpt", "-o", "o"],
                "not a folder",
            ),
        ),
        Case(
            "checkpoint under /proc",
            refused(
                lambda f: ["fit", h5ad(f), *FIT, "--checkpoint", "/proc/vbsnmf.ckpt", "-o", "o"],
                "/proc",
            ),
        ),
        Case(
            "checkpoint name of 256 characters",
            refused(
                lambda f: ["fit", h5ad(f), *FIT, "--checkpoint", "c" * 256, "-o", "o"], "c" * 20
            ),
        ),
        Case(
            "checkpoint a broken symlink",
            refused(
                lambda f: [
                    "fit",
                    h5ad(f),
                    *FIT,
                    "--checkpoint",
                    _link(f, "l", f / "nowhere"),
                    "-o",
                    "o",
                ],
                "broken",
            ),
        ),
        Case(
            "checkpoint a symlink to the input",
            refused(
                lambda f: [
                    "fit",
                    h5ad(f),
                    *FIT,
                    "--checkpoint",
                    _link(f, "l", f / "small.h5ad"),
                    "-o",
                    "o",
                ],
                "is the input",
            ),
        ),
        Case(
            "checkpoint an empty file",
            refused(
                lambda f: ["fit", h5ad(f), *FIT, "--checkpoint", _touch(f / "e.ckpt"), "-o", "o"],
                "not a vbsnmf checkpoint",
            ),
        ),
        Case(
            "checkpoint a folder holding the input",
            refused(
                lambda f: ["fit", data(f), *FIT, "--checkpoint", f / "data", "-o", "o"], "folder"
            ),
        ),
        Case(
            "checkpoint in OUTDIR spelled with ..",
            refused(
                lambda f: ["fit", h5ad(f), *FIT, "-o", "x", "--checkpoint", "x/../x/fit.ckpt"],
                "checkpoint",
            ),
        ),
        Case(
            "checkpoint of another seed with --resume",
            refused(
                lambda f: [
                    "fit",
                    h5ad(f),
                    *FIT,
                    "--seed",
                    "5",
                    "--checkpoint",
                    checkpoint_of(f),
                    "--resume",
                    "-o",
                    "o",
                ],
                # the command line names the setting by its option (`cli._option_names`)
                "--seed",
                "--resume",
            ),
        ),
        Case(
            "umap figure the result itself (named .png)",
            refused(lambda f: ["umap", _fitted(f, name="r.png"), "-o", "r.png"], "RESULT.h5ad"),
        ),
        Case(
            "OUTDIR under a symlink loop",
            refused(lambda f: ["fit", h5ad(f), *FIT, "-o", _loop(f) / "out"], "loop"),
        ),
        Case(
            "checkpoint under a symlink loop",
            refused(
                lambda f: ["fit", h5ad(f), *FIT, "--checkpoint", _loop(f) / "c.ckpt", "-o", "o"],
                "not a folder",
            ),
        ),
        Case(
            # not /dev/null itself: before the fix the command replaced whatever was there
            "OUTDIR a named pipe with --force",
            refused(lambda f: ["fit", h5ad(f), *FIT, "-o", _fifo(f), "--force"], "not a folder"),
        ),
        Case(
            "demo into the working folder",
            refused(lambda f: ["demo", "--dataset", "pbmc_tiny", "-o", "."], "folder"),
        ),
        Case(
            "demo with a foreign checkpoint",
            refused(
                lambda f: ["demo", "--dataset", "pbmc_tiny", "--checkpoint", notes(f), "-o", "d"],
                "not a vbsnmf checkpoint",
                "not a NumPy .npz archive",  # not numpy's advice to unpickle it
            ),
        ),
        # a third hostile pass (2026-12-02): --convert-to beside the checkpoint, and a
        # failed run's conversion left behind (so that the same command was refused)
        Case(
            "--convert-to and --checkpoint name the same file",
            refused(
                lambda f: _streamed(tenx(f), "--convert-to", "c", "--checkpoint", "c"),
                "both name",
            ),
        ),
        Case(
            "--convert-to of counts the fit refuses",
            refused(
                lambda f: _streamed(
                    mtx(f, "1 1 nan\n2 2 3\n3 3 1\n", "real"), "--genes-as-rows", *CONVERT
                ),
                "NaN",
            ),
        ),
        Case(
            "--convert-to with K beyond the genes",
            refused(
                lambda f: _streamed(
                    mtx(f, "1 1 1\n2 2 3\n3 3 1\n"), "--genes-as-rows", "-k", "5", *CONVERT
                ),
                "out of range",
            ),
        ),
    ]


def _loop(folder: Path) -> Path:
    """A symbolic link that points to itself."""
    (folder / "loop").symlink_to(folder / "loop")
    return folder / "loop"


def _names(folder: Path) -> Path:
    """Three names, one per line: the rows or columns of the 3 x 3 `mtx`."""
    path = folder / "names.txt"
    path.write_text("a\nb\nc\n")
    return path


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "pipe")
    return folder / "pipe"


def _touch(path: Path) -> Path:
    path.touch()
    return path


def _fitted(folder: Path, n_cells: int = N_CELLS, name: str = "r.h5ad") -> Path:
    adata = ad.AnnData(_counts()[:n_cells])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, 2, max_iter=3, n_threads=1)
    adata.write_h5ad(folder / name)
    return folder / name


def _streamed(source: Path, *options) -> list:
    """``fit`` of ``source`` by SVI, streamed from disk, into ``o``."""
    return ["fit", source, *FIT, *SVI, *options, "-o", "o"]


def _edited_fit(folder: Path, key: str, drop: bool = False) -> Path:
    """A result whose ``.obsm[key]`` was deleted, or given a NaN."""
    path = _fitted(folder)
    adata = ad.read_h5ad(path)
    if drop:
        del adata.obsm[key]
    else:
        adata.obsm[key][0, 0] = np.nan
    adata.write_h5ad(path)
    return path


def _empty_x(folder: Path) -> Path:
    path = folder / "empty_x.h5ad"
    empty = sp.csr_matrix((N_CELLS, N_GENES), dtype=np.float32)
    ad.AnnData(empty, layers={"counts": _counts()}).write_h5ad(path)
    return path


# -- command line: options and counts -----------------------------------------------------------
def _seed_stored(folder: Path, outdir: Path) -> str | None:
    stored = ad.read_h5ad(outdir / "result.h5ad").uns["nmf"]["params"]
    return None if stored["max_iter"] == str(2**64) else f"stored {stored['max_iter']!r}"


def _exact_counts(*expected):
    def check(folder: Path, outdir: Path) -> str | None:
        values = set(ad.read_h5ad(outdir / "result.h5ad").X.data.tolist())
        missing = [v for v in expected if v not in values]
        return f"counts {missing} not kept" if missing else None

    return check


def option_cases() -> list[Case]:
    big = 2**64
    return [
        Case(
            "--max-iter beyond int64",
            succeeds(
                lambda f: ["fit", h5ad(f), *FIT, "--max-iter", big, "--tol", "1"], _seed_stored
            ),
        ),
        Case(
            "--epochs beyond int64",
            succeeds(
                lambda f: ["fit", h5ad(f), *FIT, "--solver", "svi", "--epochs", big, "--tol", "1"]
            ),
        ),
        Case(
            "--batch-size beyond int64",
            succeeds(
                lambda f: [
                    "fit",
                    h5ad(f),
                    *FIT,
                    "--solver",
                    "svi",
                    "--batch-size",
                    big,
                    "--epochs",
                    "1",
                ]
            ),
        ),
        Case(
            "K above the genes, classic mu",
            refused(
                lambda f: ["fit", h5ad(f), *FIT, "-k", "30", "--solver", "mu", "-o", "o"],
                "out of range",
            ),
        ),
        Case(
            "K above the genes, classic hals",
            refused(
                lambda f: ["fit", h5ad(f), *FIT, "-k", "30", "--solver", "hals", "-o", "o"],
                "out of range",
            ),
        ),
        Case(
            "--resume with a classic method",
            refused(
                lambda f: [
                    "fit",
                    h5ad(f),
                    *FIT,
                    "--solver",
                    "mu",
                    "--resume",
                    "--checkpoint",
                    "c.ckpt",
                    "-o",
                    "o",
                ],
                "--checkpoint",
            ),
        ),
        Case(
            "--batch-size with batch VB",
            refused(
                lambda f: ["fit", h5ad(f), *FIT, "--batch-size", "4", "-o", "o"], "--batch-size"
            ),
        ),
        Case(
            "--seed -1",
            refused(lambda f: ["fit", h5ad(f), *FIT, "--seed", "-1", "-o", "o"], "--seed"),
        ),
        Case(
            "umap --seed 2**32",
            refused(lambda f: ["umap", _fitted(f), "-o", "u.png", "--seed", 2**32], "--seed"),
        ),
        Case("umap of 3 cells", refused(lambda f: ["umap", _fitted(f, 3), "-o", "u.png"], "cells")),
        Case("umap of 4 cells", succeeds(lambda f: ["umap", _fitted(f, 4), "-o", "u.png"])),
        Case(
            "h5ad with neither X, layers nor raw",
            refused(
                lambda f: ["fit", h5ad_without_x(f, layer=False), *FIT, "-o", "o"], "no X matrix"
            ),
        ),
        Case(
            "h5ad without X, counts in raw, no option",
            refused(
                lambda f: ["fit", h5ad_without_x(f, layer=False, raw=True), *FIT, "-o", "o"],
                "--use-raw",
            ),
        ),
        Case(
            "corrupt layer with --layer",
            refused(
                lambda f: [
                    "fit",
                    damaged_h5ad(f, "layers/counts", lambda g: g["indices"].__setitem__(2, 99)),
                    *FIT,
                    "--layer",
                    "counts",
                    "-o",
                    "o",
                ],
                "layers['counts']",
                "corrupt",
            ),
        ),
        Case(
            "corrupt raw with --use-raw",
            refused(
                lambda f: [
                    "fit",
                    damaged_h5ad(f, "raw/X", lambda g: g["indptr"].__setitem__(4, 0)),
                    *FIT,
                    "--use-raw",
                    "-o",
                    "o",
                ],
                "raw.X",
                "corrupt",
            ),
        ),
        Case(
            "h5ad whose X data is shorter than its indices",
            refused(
                lambda f: ["fit", damaged_h5ad(f, "X", _shorten_data), *FIT, "-o", "o"],
                "damaged.h5ad",
                "corrupt",
            ),
        ),
        Case(
            "dense h5ad with a count of 1e14",
            refused(lambda f: ["fit", _dense_h5ad(f, 1e14), *FIT, "-o", "o"], "above"),
        ),
        Case(
            "dense float16 h5ad", succeeds(lambda f: ["fit", _dense_h5ad(f, 7, np.float16), *FIT])
        ),
        Case("boolean h5ad", succeeds(lambda f: ["fit", _dense_h5ad(f, 1, bool), *FIT])),
        Case(
            "mtx holding the int64 maximum",
            refused(
                lambda f: [
                    "fit",
                    mtx(f, f"1 1 {2**63 - 1}\n2 2 1\n3 3 2\n"),
                    "--cells-as-rows",
                    *FIT,
                    "-k",
                    "1",
                    "-o",
                    "o",
                ],
                "above",
            ),
        ),
        Case(
            "mtx holding a count beyond int64",
            refused(
                lambda f: [
                    "fit",
                    mtx(f, f"1 1 {2**70}\n2 2 1\n3 3 2\n"),
                    "--cells-as-rows",
                    *FIT,
                    "-k",
                    "1",
                    "-o",
                    "o",
                ]
            ),
        ),
        Case(
            "mtx holding a denormal count",
            refused(
                lambda f: [
                    "fit",
                    mtx(f, "1 1 1e-320\n2 2 1\n3 3 2\n", "real"),
                    "--cells-as-rows",
                    *FIT,
                    "-k",
                    "1",
                    "-o",
                    "o",
                ],
                "non-integer",
            ),
        ),
        Case(
            "10x folder holding a count of 1e14",
            refused(lambda f: ["fit", tenx(f, [(2, 3, 10**14)]), *FIT, "-o", "o"], "above"),
        ),
        Case(
            "h5ad with a corrupt CSC X",
            refused(
                lambda f: [
                    "fit",
                    _csc_h5ad(f, lambda g: g["indices"].__setitem__(1, 99)),
                    *FIT,
                    "-o",
                    "o",
                ],
                "csc.h5ad",
                "corrupt",
            ),
        ),
        Case(
            "--threads far above the cores",
            succeeds(lambda f: ["fit", h5ad(f), *FIT, "--threads", 10**6]),
        ),
        Case(
            "10x folder holding 16,777,217",
            succeeds(
                lambda f: ["fit", tenx(f, [(1, 1, 16_777_217)]), *FIT], _exact_counts(16_777_217.0)
            ),
        ),
        # the third hostile pass: no counts at all (X left empty beside a counts layer),
        # and results whose usages were edited
        Case(
            ".mtx without a nonzero count",
            refused(
                lambda f: ["fit", mtx(f, "", size="3 3 0"), "--genes-as-rows", *FIT, "-o", "o"],
                "no nonzero count",
            ),
        ),
        Case(
            "h5ad with an empty X and the counts in a layer",
            refused(lambda f: ["fit", _empty_x(f), *FIT, "-o", "o"], "no nonzero count", "--layer"),
        ),
        Case(
            "streamed h5ad without a nonzero count",
            refused(lambda f: _streamed(_empty_x(f)), "no nonzero count"),
        ),
        Case(
            "umap of a result with NaN usages",
            refused(
                lambda f: ["umap", _edited_fit(f, "X_nmf_sqrt_usage"), "-o", "u.png"],
                "r.h5ad",
                "NaN",
            ),
        ),
        Case(
            "umap of a result without its usages",
            refused(
                lambda f: ["umap", _edited_fit(f, "X_nmf_usage", drop=True), "-o", "u.png"],
                "X_nmf_usage",
            ),
        ),
    ]


def _csc_h5ad(folder: Path, edit: Callable) -> Path:
    path = folder / "csc.h5ad"
    ad.AnnData(_counts().tocsc()).write_h5ad(path)
    with h5py.File(path, "r+") as handle:
        edit(handle["X"])
    return path


def _shorten_data(group) -> None:
    values = group["data"][:-3]
    del group["data"]
    group["data"] = values


def _dense_h5ad(folder: Path, value, dtype=np.float64) -> Path:
    counts = _counts().toarray()
    counts[3, 4] = value
    path = folder / "dense.h5ad"
    ad.AnnData(counts.astype(dtype)).write_h5ad(path)
    return path


# -- library: readers and streaming ---------------------------------------------------------------
def _svi(path, n_components: int = 2, **settings):
    return vbsnmf.VBNMF(n_components, solver="svi", n_epochs=1, n_threads=1, **settings).fit(path)


def _genes_by_cells(path: Path) -> Path:
    """The .mtx ``path`` converted, as genes x cells, into the .h5ad a streamed fit reads (a
    lone .mtx says nothing of its orientation, and `VBNMF.fit` refuses to guess it)."""
    return vbsnmf.io.mtx_to_h5ad(path, path.with_suffix(".h5ad"), genes_as_rows=True)


def _streamed_total(path: Path) -> float:
    """The total count a streamed fit saw (its checkpoint records it)."""
    checkpoint = path.parent / "fit.ckpt"
    _svi(path, n_components=1, checkpoint=checkpoint)
    return _checkpoint.load_checkpoint(checkpoint)[1]["config"]["total_count"]


def reader_cases() -> list[Case]:
    return [
        Case(
            "read: h5ad layer with an index out of range",
            raises(
                lambda f: vbsnmf.io.read(
                    damaged_h5ad(f, "layers/counts", lambda g: g["indices"].__setitem__(0, 30))
                ),
                vbsnmf.io.ReadError,
                "damaged.h5ad",
                "layers['counts']",
            ),
        ),
        Case(
            "read: h5ad raw with indptr not starting at 0",
            raises(
                lambda f: vbsnmf.io.read(
                    damaged_h5ad(f, "raw/X", lambda g: g["indptr"].__setitem__(0, 1))
                ),
                vbsnmf.io.ReadError,
                "damaged.h5ad",
            ),
        ),
        Case(
            "read: h5ad X data shorter than its indices",
            raises(
                lambda f: vbsnmf.io.read(damaged_h5ad(f, "X", _shorten_data)),
                vbsnmf.io.ReadError,
                "damaged.h5ad",
                "corrupt",
            ),
        ),
        Case(
            "read: sparse float16 h5ad",
            raises(
                lambda f: vbsnmf.io.read(damaged_h5ad(f, "X", _to_float16)),
                vbsnmf.io.ReadError,
                "float16",
                "float32",
            ),
        ),
        Case(
            "read: real mtx 2**24 + 1",
            returns(
                lambda f: vbsnmf.io.read(
                    mtx(f, "1 1 16777217.0\n2 2 1\n3 3 2\n", "real"), genes_as_rows=False
                ),
                lambda a: None if 16777217.0 in a.X.data else f"read {sorted(a.X.data)}",
            ),
        ),
        Case(
            "stream: h5ad without X",
            raises(lambda f: _svi(h5ad_without_x(f)), ValueError, "nox.h5ad", "no X"),
        ),
        Case(
            "stream: h5ad X data shorter than its indices",
            raises(
                lambda f: _svi(damaged_h5ad(f, "X", _shorten_data)),
                ValueError,
                "damaged.h5ad",
                "corrupt",
            ),
        ),
        Case(
            "stream: h5ad indptr of the wrong length",
            raises(
                lambda f: _svi(damaged_h5ad(f, "X", _drop_last_pointer)),
                ValueError,
                "damaged.h5ad",
                "indptr",
            ),
        ),
        Case(
            "stream: h5ad with an index out of range late in the file",
            raises(
                lambda f: _svi(damaged_h5ad(f, "X", lambda g: g["indices"].__setitem__(-1, 10**6))),
                ValueError,
                "damaged.h5ad",
                "corrupt",
            ),
        ),
        Case(
            "stream: mtx count 2**24 + 1 kept exactly",
            returns(
                lambda f: _streamed_total(_genes_by_cells(mtx(f, "1 1 16777217\n2 2 1\n3 3 2\n"))),
                lambda total: None if total == 16777220.0 else f"total {total!r}",
            ),
        ),
        Case(
            "stream: mtx count above the maximum",
            raises(
                lambda f: vbsnmf.VBNMF(1, solver="svi", n_epochs=1, prior="gamma").fit(
                    _genes_by_cells(mtx(f, "1 1 100000000000000\n2 2 1\n3 3 2\n"))
                ),
                ValueError,
                "above",
            ),
        ),
        Case(
            "stream: path given to batch VB",
            raises(
                lambda f: vbsnmf.VBNMF(2, prior="gamma").fit(Path(h5ad(f))),
                TypeError,
                "solver='svi'",
            ),
        ),
        Case(
            "stream: path given to transform",
            raises(
                lambda f: (
                    vbsnmf.VBNMF(2, max_iter=2, prior="gamma")
                    .fit(_counts())
                    .transform(str(h5ad(f)))
                ),
                TypeError,
                "vbsnmf.io.read",
            ),
        ),
    ]


def _to_float16(group) -> None:
    values = group["data"][...].astype(np.float16)
    del group["data"]
    group["data"] = values


def _drop_last_pointer(group) -> None:
    pointers = group["indptr"][:-1]
    del group["indptr"]
    group["indptr"] = pointers


# -- library: checkpoints -----------------------------------------------------------------------
def _resume(path: Path, **settings):
    params = {"max_iter": 4, "n_threads": 1, "random_state": 0, "prior": "gamma", **settings}
    return vbsnmf.VBNMF(2, checkpoint=path, resume=True, **params).fit(_counts())


def _svi_checkpoint(folder: Path) -> Path:
    # the cells form's max_iter sets each local fit: the resume's (4) must be the same
    return checkpoint_of(folder, solver="svi", n_epochs=1, max_iter=4)


def checkpoint_cases() -> list[Case]:
    svi = {"solver": "svi", "n_epochs": 3}
    return [
        Case(
            "checkpoint: SVI generator state garbage",
            raises(
                lambda f: _resume(
                    rewritten(_svi_checkpoint(f), meta=lambda m: m.__setitem__("rng", "{}")), **svi
                ),
                ValueError,
                "fit.ckpt",
                "random generator",
            ),
        ),
        Case(
            "checkpoint: negative epoch",
            raises(
                lambda f: _resume(
                    rewritten(_svi_checkpoint(f), meta=lambda m: m.__setitem__("epoch", -1)), **svi
                ),
                ValueError,
                "fit.ckpt",
                "epoch",
            ),
        ),
        Case(
            "checkpoint: more ELBO values than epochs",
            raises(
                lambda f: _resume(
                    rewritten(
                        _svi_checkpoint(f),
                        arrays=lambda a: a.__setitem__("elbo_trace", np.array([-9.0, -8.0, -7.0])),
                    ),
                    **svi,
                ),
                ValueError,
                "fit.ckpt",
                "ELBO values",
            ),
        ),
        Case(
            "checkpoint: 2-D ELBO trace",
            raises(
                lambda f: _resume(
                    rewritten(
                        checkpoint_of(f),
                        arrays=lambda a: a.__setitem__("elbo_trace", a["elbo_trace"][:, None]),
                    )
                ),
                ValueError,
                "fit.ckpt",
                "elbo_trace",
            ),
        ),
        Case(
            "checkpoint: float32 arrays for a float64 fit",
            raises(
                lambda f: _resume(
                    rewritten(
                        checkpoint_of(f),
                        arrays=lambda a: a.__setitem__(
                            "row_shape", a["row_shape"].astype(np.float32)
                        ),
                    )
                ),
                ValueError,
                "fit.ckpt",
                "row_shape",
            ),
        ),
        Case(
            "checkpoint: 'finished' flag missing",
            raises(
                lambda f: _resume(rewritten(checkpoint_of(f), meta=lambda m: m.pop("finished"))),
                ValueError,
                "fit.ckpt",
                "finished",
            ),
        ),
        Case(
            "checkpoint: a .npy array",
            raises(
                lambda f: _resume(_npy(f / "fit.ckpt")),
                ValueError,
                "fit.ckpt",
                "not a vbsnmf checkpoint",
            ),
        ),
        Case(
            "checkpoint: metadata not JSON",
            raises(
                lambda f: _resume(_npz(f / "fit.ckpt", "{not json")),
                ValueError,
                "fit.ckpt",
                "not a vbsnmf checkpoint",
            ),
        ),
        Case(
            "checkpoint: metadata a JSON list",
            raises(
                lambda f: _resume(_npz(f / "fit.ckpt", "[1, 2]")),
                ValueError,
                "fit.ckpt",
                "not a vbsnmf checkpoint",
            ),
        ),
        Case(
            "checkpoint: a folder",
            raises(lambda f: _resume(_subdir(f, "ckpt")), ValueError, "folder"),
        ),
        Case(
            "checkpoint: empty string",
            raises(
                lambda f: vbsnmf.VBNMF(2, checkpoint="", max_iter=2, prior="gamma").fit(_counts()),
                ValueError,
                "folder",
            ),
        ),
        Case(
            "checkpoint: of the same fit, resumed with more iterations",
            returns(
                lambda f: _resume(checkpoint_of(f), max_iter=4).n_iter_,
                lambda n: None if n == 4 else f"n_iter_ {n}",
            ),
        ),
        Case(
            "checkpoint: extra arrays are ignored",
            returns(
                lambda f: (
                    _resume(
                        rewritten(
                            checkpoint_of(f), arrays=lambda a: a.__setitem__("note", np.arange(3))
                        )
                    ).n_iter_
                ),
                lambda n: None if n == 4 else f"n_iter_ {n}",
            ),
        ),
    ]


def _npy(path: Path) -> Path:
    with open(path, "wb") as handle:
        np.save(handle, np.ones(3))
    return path


def _npz(path: Path, meta: str) -> Path:
    with open(path, "wb") as handle:
        np.savez(handle, __meta__=np.array(meta), row_shape=np.ones((N_CELLS, 2)))
    return path


# -- library: estimator parameters ----------------------------------------------------------------
def estimator_cases() -> list[Case]:
    X = _counts()

    def fit(**params):
        return lambda f: vbsnmf.VBNMF(2, max_iter=2, **params).fit(X)

    return [
        Case("VBNMF tol='abc'", raises(fit(tol="abc"), (TypeError, ValueError), "tol")),
        Case("VBNMF tol=None", raises(fit(tol=None), (TypeError, ValueError), "tol")),
        Case("VBNMF tau='x'", raises(fit(solver="svi", tau="x"), (TypeError, ValueError), "tau")),
        Case(
            "VBNMF kappa=None",
            raises(fit(solver="svi", kappa=None), (TypeError, ValueError), "kappa"),
        ),
        Case(
            "VBNMF dtype='garbage'", raises(fit(dtype="garbage"), (TypeError, ValueError), "dtype")
        ),
        Case(
            "VBNMF n_components=2.0",
            raises(lambda f: vbsnmf.VBNMF(2.0, prior="gamma").fit(X), TypeError, "n_components"),
        ),
        Case(
            "VBNMF float32 with a count of 2**25",
            raises(
                lambda f: vbsnmf.VBNMF(2, dtype=np.float32, prior="gamma").fit(_with(X, 2.0**25)),
                ValueError,
                "above 16,777,216",
            ),
        ),
        Case(
            "VBNMF dense count of 1e14",
            raises(
                lambda f: vbsnmf.VBNMF(2, prior="gamma").fit(_with(X, 1e14).toarray()),
                ValueError,
                "above",
            ),
        ),
        Case(
            "VBNMF svi textbook count of 1e14",
            raises(
                lambda f: vbsnmf.VBNMF(2, solver="svi", svi_form="nonzeros", prior="gamma").fit(
                    _with(X, 1e14)
                ),
                ValueError,
                "above",
            ),
        ),
        Case(
            "VBNMF transform with a count of 1e14",
            raises(
                lambda f: (
                    vbsnmf.VBNMF(2, max_iter=2, prior="gamma").fit(X).transform(_with(X, 1e14))
                ),
                ValueError,
                "above",
            ),
        ),
        Case(
            "VBNMF BSR with an index out of range",
            raises(
                lambda f: vbsnmf.VBNMF(2, max_iter=2, prior="gamma").fit(_bsr_out_of_range(X)),
                ValueError,
                "corrupt",
            ),
        ),
        Case(
            "VBNMF CSR with indices and data of different lengths",
            raises(
                lambda f: vbsnmf.VBNMF(2, max_iter=2, prior="gamma").fit(_short_data(X)),
                ValueError,
                "corrupt",
            ),
        ),
        Case(
            "VBNMF K above min(shape), memory guard on",
            raises(lambda f: vbsnmf.VBNMF(10**6, prior="gamma").fit(X), ValueError, "out of range"),
        ),
        Case(
            "NMF K = 10**9", raises(lambda f: vbsnmf.NMF(10**9).fit(X), ValueError, "out of range")
        ),
        Case(
            "NMF K above the genes, nndsvda",
            raises(
                lambda f: vbsnmf.NMF(N_GENES + 5, max_iter=2).fit(X), ValueError, "out of range"
            ),
        ),
        Case(
            "NMF K above the genes, random init",
            raises(
                lambda f: vbsnmf.NMF(N_GENES + 5, init="random", max_iter=2).fit(X),
                ValueError,
                "out of range",
            ),
        ),
        Case(
            "NMF CSR with an index out of range",
            raises(
                lambda f: vbsnmf.NMF(2, max_iter=2).fit(_out_of_range(X)), ValueError, "corrupt"
            ),
        ),
        Case(
            "fit_triplets shape (2.5, 3)",
            raises(
                lambda f: vbsnmf.fit_triplets([0, 1], [0, 2], [1, 2], (2.5, 3), 1),
                (TypeError, ValueError),
                "shape",
            ),
        ),
        Case(
            "fit_triplets shape (0, 3)",
            raises(lambda f: vbsnmf.fit_triplets([], [], [], (0, 3), 1), ValueError, "row"),
        ),
        Case(
            "fit_triplets count of 1e300",
            raises(
                lambda f: vbsnmf.fit_triplets([0, 1], [0, 2], [1e300, 2], (2, 3), 1),
                ValueError,
                "above",
            ),
        ),
    ]


def _with(X, value) -> sp.csr_matrix:
    X = X.astype(np.float64)
    X[1, 2] = value
    return X


def _out_of_range(X) -> sp.csr_matrix:
    X = X.copy()
    X.indices[5] = N_GENES + 3
    return X


def _short_data(X) -> sp.csr_matrix:
    X = X.copy()
    X.data = X.data[:-1]
    return X


def _bsr_out_of_range(X):
    bsr = sp.bsr_matrix(X, blocksize=(1, 1))
    bsr.indices[5] = N_GENES + 3
    return bsr


# -- tl ------------------------------------------------------------------------------------------
def _adata():
    return ad.AnnData(_counts())


def tl_cases() -> list[Case]:
    def nmf(*args, **kwargs):
        def call(folder):
            adata = _adata()
            vbsnmf.tl.nmf(adata, *args, **kwargs)
            adata.write_h5ad(folder / "w.h5ad")  # everything stored must be writable
            return adata

        return call

    return [
        Case(
            "tl.nmf max_iter=2**70 written to h5ad",
            returns(nmf(2, max_iter=2**70, tol=1.0), lambda a: None),
        ),
        Case(
            "tl.nmf n_epochs=uint64 max written to h5ad",
            returns(nmf(2, solver="svi", n_epochs=np.uint64(2**64 - 1), tol=1.0), lambda a: None),
        ),
        Case(
            # anndata 0.12 warns that h5 stores will refuse it: refused before the fit
            "tl.nmf key_added with a slash",
            raises(nmf(2, key_added="a/b", max_iter=2), ValueError, "key_added", "/"),
        ),
        Case(
            "tl.nmf svi batch_size=2**62",
            returns(nmf(2, solver="svi", batch_size=np.int64(2**62), n_epochs=1), lambda a: None),
        ),
        Case(
            "tl.nmf K=np.int64(30) above the genes",
            raises(nmf(np.int64(30)), ValueError, "out of range"),
        ),
        Case(
            "tl.nmf classic K above the genes",
            raises(nmf(30, solver="hals"), ValueError, "out of range"),
        ),
        Case(
            "tl.nmf checkpoint= with a classic method",
            raises(nmf(2, solver="mu", checkpoint="c.ckpt"), ValueError, "checkpoint", "'mu'"),
        ),
        Case(
            "tl.nmf checkpoint= a foreign file",
            raises(
                lambda f: vbsnmf.tl.nmf(_adata(), 2, max_iter=2, checkpoint=notes(f)),
                ValueError,
                "not a vbsnmf checkpoint",
            ),
        ),
        Case(
            "tl.nmf float32 dtype with a count of 2**25",
            raises(
                lambda f: vbsnmf.tl.nmf(ad.AnnData(_with(_counts(), 2.0**25)), 2, dtype=np.float32),
                ValueError,
                "above",
            ),
        ),
        Case(
            "tl.project max_iter=0",
            raises(
                lambda f: vbsnmf.tl.project(_adata(), _reference(), max_iter=0),
                ValueError,
                "max_iter",
            ),
        ),
        Case(
            "tl.project tol=nan",
            raises(
                lambda f: vbsnmf.tl.project(_adata(), _reference(), tol=float("nan")),
                ValueError,
                "tol",
            ),
        ),
        Case(
            "tl.project max_iter=True",
            raises(
                lambda f: vbsnmf.tl.project(_adata(), _reference(), max_iter=True),
                TypeError,
                "max_iter",
            ),
        ),
    ]


def _reference():
    adata = _adata()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, 2, max_iter=3, n_threads=1)
    return adata


# -- signals -------------------------------------------------------------------------------------
ENTRY_POINT = "import sys; from vbsnmf.cli import main; sys.exit(main())"


def _signal_during_fit(signum: int, code: int, line: str) -> Callable:
    def run(folder: Path, capfd) -> str | None:
        data = folder / "small.h5ad"  # pbmc_tiny: at tol 0 it runs for minutes
        vbsnmf.datasets.pbmc_tiny().write_h5ad(data)
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                ENTRY_POINT,
                "fit",
                str(data),
                "-k",
                "2",
                "--tol",
                "0",
                "--max-iter",
                "1000000",
                "--threads",
                "1",
                "-o",
                str(folder / "out"),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        seen = ""
        deadline = time.monotonic() + 120
        while "ELBO" not in seen and time.monotonic() < deadline:
            seen += process.stderr.read(1)
        process.send_signal(signum)
        _, rest = process.communicate(timeout=60)
        problems = []
        if process.returncode != code:
            problems.append(f"exit code {process.returncode}")
        if not rest.strip().endswith(line):
            problems.append(f"last line {rest.strip()[-200:]!r}")
        left = sorted(p.name for p in folder.iterdir())
        if left != ["small.h5ad"]:
            problems.append(f"files left behind: {left}")
        return "; ".join(problems) or None

    return run


def _signal_in_process(patch: Callable, argv: Callable[[Path], list]) -> Callable:
    """SIGTERM sent from inside the command (where ``patch`` hooks), then checked: exit
    143, one line, no file left behind."""

    def run(folder: Path, capfd) -> str | None:
        args = argv(folder)
        before = _tree(folder)

        def terminate(*_, **__):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            return "SIGTERM not handled"

        with patch(terminate):
            code, _, err, _ = _main(args, capfd, folder)
        problems = [] if code == 143 else [f"exit code {code}: {err[:200]!r}"]
        if err != "vbsnmf: terminated (SIGTERM); no output written\n":
            problems.append(f"stderr {err[:200]!r}")
        if _tree(folder) != before:
            problems.append(f"files changed: {sorted(set(_tree(folder)) ^ set(before))[:5]}")
        return "; ".join(problems) or None

    return run


@contextlib.contextmanager
def _patched(owner, name: str, replacement):
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def signal_cases() -> list[Case]:
    import matplotlib.figure

    return [
        Case(
            "SIGHUP during the fit",
            _signal_during_fit(signal.SIGHUP, 129, "hung up (SIGHUP); no output written"),
        ),
        Case(
            "SIGTERM while the UMAP figure is saved",
            _signal_in_process(
                lambda hook: _patched(matplotlib.figure.Figure, "savefig", hook),
                lambda f: ["umap", _fitted(f), "-o", "u.png"],
            ),
        ),
        Case(
            "SIGTERM while a checkpoint is saved",
            _signal_in_process(
                lambda hook: _patched(np, "savez", hook),
                lambda f: ["fit", h5ad(f), *FIT, "--checkpoint", "c.ckpt", "-o", "o"],
            ),
        ),
        Case(
            "SIGTERM while the input is read",
            _signal_in_process(
                lambda hook: _patched(vbsnmf.io._read, "_probe_hdf5", hook),
                lambda f: ["fit", h5ad(f), *FIT, "-o", "o"],
            ),
        ),
    ]


CATEGORIES = {
    "command-line paths": path_cases,
    "command-line options and counts": option_cases,
    "readers and streaming": reader_cases,
    "checkpoints": checkpoint_cases,
    "estimator parameters": estimator_cases,
    "tl functions": tl_cases,
    "signals": signal_cases,
}


def all_cases() -> dict[str, list[Case]]:
    return {category: build() for category, build in CATEGORIES.items()}


def check_cases(cases: list[Case], tmp_path: Path, capfd) -> None:
    """Run each case in a folder of its own; fail with every case that went wrong."""
    assert len({case.name for case in cases}) == len(cases)
    failures = []
    for index, case in enumerate(cases):
        folder = tmp_path / f"case{index}"
        folder.mkdir()
        problem = case.run(folder, capfd)
        if problem:
            failures.append(f"{case.name}: {problem}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_hostile_inputs_are_handled(category, tmp_path, capfd):
    check_cases(CATEGORIES[category](), tmp_path, capfd)


def test_case_count_matches_the_readme():
    """tests/README.md and the README state this count (and how many went wrong before
    the fixes): keep them in step."""
    assert sum(len(cases) for cases in all_cases().values()) == 122
