"""Fuzzing the readers and the command line with malformed inputs.

Every case runs ``vbsnmf.cli.main(argv)`` in this process (a subprocess per case would
cost seconds) with stdout and stderr captured at the file-descriptor level, so output
written by C libraries (HDF5, zlib) is seen too. A malformed input must give:

- return code 2,
- exactly one line on stderr, ``vbsnmf: error: ...``, and no traceback,
- nothing on stdout and no escaped Python warning (it would be a second stderr line),
- nothing written: OUTDIR absent and no leftover temporary folder beside it.

Cases are generated programmatically: designed variants (header lies, indices out of
range or zero-based, non-numeric fields, real/pattern/array/symmetric variants, empty
files, truncated and corrupt gzip, 10x folders with mismatched name files, ``.h5ad``
files without X or broken, directories and special paths, bad options) and seeded random
byte mutations of a valid ``.mtx`` and ``.mtx.gz``. A random mutation may still be a
valid file; then the run must succeed and write the complete OUTDIR. Valid variants
(real, pattern, array, CRLF, duplicates, gzip) must succeed.

The number of cases run is asserted below and recorded in ``tests/README.md``.
"""

from __future__ import annotations

import gzip
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from cli_output import error_lines

from vbsnmf.cli import main

# A valid 8 genes x 6 cells Matrix Market file (genes as rows, the 10x convention).
BANNER = "%%MatrixMarket matrix coordinate integer general"
ENTRIES = [
    (1, 4, 16), (1, 6, 22), (2, 5, 25), (3, 1, 9), (3, 4, 1), (3, 5, 18), (4, 1, 2),
    (4, 3, 29), (4, 4, 24), (4, 5, 19), (5, 4, 19), (5, 5, 8), (5, 6, 6), (6, 3, 15),
    (7, 3, 17), (7, 5, 15), (8, 3, 19), (8, 4, 3), (8, 6, 27),
]  # fmt: skip
N_GENES, N_CELLS = 8, 6
FIT_OPTIONS = ["-k", "2", "--max-iter", "3", "--threads", "1", "--seed", "0"]
OUTPUTS = {"result.h5ad", "cell_factors.tsv.gz", "gene_loadings.tsv.gz", "elbo.tsv", "params.json"}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def mtx_text(
    banner: str = BANNER,
    size: str | None = None,
    entries: list[tuple] | None = None,
    comments: tuple[str, ...] = ("% written by the fuzz tests",),
) -> str:
    entries = ENTRIES if entries is None else entries
    size = f"{N_GENES} {N_CELLS} {len(entries)}" if size is None else size
    body = "".join(" ".join(str(v) for v in entry) + "\n" for entry in entries)
    return "\n".join([banner, *comments, size]) + "\n" + body


VALID_MTX = mtx_text()


def replace_entry(position: int, text: str) -> str:
    """The valid file with entry ``position`` replaced by the line ``text``."""
    lines = VALID_MTX.splitlines()
    first_entry = lines.index(f"{N_GENES} {N_CELLS} {len(ENTRIES)}") + 1
    lines[first_entry + position] = text
    return "\n".join(lines) + "\n"


@dataclass
class Case:
    """A named input. ``build(folder)`` writes the input files into ``folder`` and returns
    the command-line arguments naming them; ``expect`` is "error", "ok" or "either"."""

    name: str
    build: Callable[[Path], list[str]]
    expect: str = "error"
    options: tuple[str, ...] = tuple(FIT_OPTIONS)


def mtx_case(name, content, expect="error", *, suffix=".mtx", compress=False, extra=()):
    def build(folder: Path) -> list[str]:
        path = folder / f"input{suffix}"
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
        return ["fit", str(path), "--genes-as-rows", *extra]

    return Case(name, build, expect)


# -- designed Matrix Market cases --------------------------------------------------------------
def matrix_market_cases() -> list[Case]:
    error_texts = {
        "empty file": "",
        "only a newline": "\n",
        "banner only": BANNER + "\n",
        "banner and comments only": BANNER + "\n% one\n% two\n",
        "no banner": mtx_text(banner="").lstrip("\n"),
        "banner misspelled": mtx_text(banner="%%MatrixMarkett matrix coordinate integer general"),
        "banner one percent": mtx_text(banner="%MatrixMarket matrix coordinate integer general"),
        "banner four words": mtx_text(banner="%%MatrixMarket matrix coordinate integer"),
        "banner six words": mtx_text(banner=BANNER + " extra"),
        "object vector": mtx_text(banner="%%MatrixMarket vector coordinate integer general"),
        "format sparse": mtx_text(banner="%%MatrixMarket matrix sparse integer general"),
        "field complex": mtx_text(banner="%%MatrixMarket matrix coordinate complex general"),
        "field text": mtx_text(banner="%%MatrixMarket matrix coordinate text general"),
        "symmetric": mtx_text(banner="%%MatrixMarket matrix coordinate integer symmetric"),
        "skew-symmetric": mtx_text(
            banner="%%MatrixMarket matrix coordinate integer skew-symmetric"
        ),
        "hermitian": mtx_text(banner="%%MatrixMarket matrix coordinate integer hermitian"),
        "binary garbage": "\x00\x01\x02\xff" * 50,
        "comment inside the body": replace_entry(3, "% a comment among entries"),
    }
    size_lies = {
        "declares one entry more": f"{N_GENES} {N_CELLS} {len(ENTRIES) + 1}",
        "declares 100 entries more": f"{N_GENES} {N_CELLS} {len(ENTRIES) + 100}",
        "declares 10**12 entries": f"{N_GENES} {N_CELLS} {10**12}",
        "declares fewer entries": f"{N_GENES} {N_CELLS} {len(ENTRIES) - 5}",
        "declares zero entries": f"{N_GENES} {N_CELLS} 0",
        "declares negative entries": f"{N_GENES} {N_CELLS} -1",
        "fewer rows than indices": f"{N_GENES - 3} {N_CELLS} {len(ENTRIES)}",
        "fewer columns than indices": f"{N_GENES} {N_CELLS - 3} {len(ENTRIES)}",
        "zero rows": f"0 {N_CELLS} {len(ENTRIES)}",
        "zero columns": f"{N_GENES} 0 {len(ENTRIES)}",
        "zero by zero, no entries": "0 0 0",
        "negative rows": f"-{N_GENES} {N_CELLS} {len(ENTRIES)}",
        "two numbers": f"{N_GENES} {N_CELLS}",
        "four numbers": f"{N_GENES} {N_CELLS} {len(ENTRIES)} 1",
        "letters": "a b c",
        "float dimension": f"{N_GENES}.0 {N_CELLS} {len(ENTRIES)}",
        "dimension beyond int32": f"{2**31} {N_CELLS} {len(ENTRIES)}",
        "dimension beyond int64": f"{2**64} {N_CELLS} {len(ENTRIES)}",
        "empty size line": "",
    }
    for name, size in size_lies.items():
        error_texts[f"size line: {name}"] = mtx_text(size=size)
    entry_lines = {
        "zero-based row": f"0 {ENTRIES[0][1]} {ENTRIES[0][2]}",
        "zero-based column": f"{ENTRIES[0][0]} 0 {ENTRIES[0][2]}",
        "row beyond size": f"{N_GENES + 1} 1 5",
        "column beyond size": f"1 {N_CELLS + 1} 5",
        "row far beyond size": "1000000000 1 5",
        "negative row": "-1 1 5",
        "negative column": "1 -2 5",
        "letter row": "a 1 5",
        "letter column": "1 b 5",
        "letter value": "1 1 x",
        "float row": "1.5 1 5",
        "empty value": "1 1",
        "only a row": "1",
        "row beyond int64": f"{2**64} 1 5",
        "value beyond int64": f"1 1 {2**64}",
        "negative count": "1 1 -5",
    }
    for name, line in entry_lines.items():
        error_texts[f"entry: {name}"] = replace_entry(0, line)
    error_texts["entry: all indices zero-based"] = mtx_text(
        entries=[(r - 1, c - 1, v) for r, c, v in ENTRIES]
    )
    real = "%%MatrixMarket matrix coordinate real general"
    for name, value in {"nan": "nan", "inf": "inf", "-inf": "-inf", "overflow": "1e400"}.items():
        error_texts[f"real field: {name} count"] = mtx_text(
            banner=real, entries=[(1, 1, value), *ENTRIES[1:]]
        )
    error_texts["real field: negative count"] = mtx_text(
        banner=real, entries=[(1, 1, "-0.5"), *ENTRIES[1:]]
    )
    # tl.nmf refuses non-integer values: normalised data are not counts.
    error_texts["real field: non-integer count"] = mtx_text(
        banner=real, entries=[(1, 1, "0.5"), *ENTRIES[1:]]
    )
    # scipy 1.17's parser crashes the interpreter on these (the reader refuses NUL bytes).
    error_texts["NUL byte after a count"] = replace_entry(4, "3 4 1\x00")
    error_texts["NUL byte after a pattern entry"] = mtx_text(
        banner="%%MatrixMarket matrix coordinate pattern general",
        entries=[(1, "1\x00"), *[(r, c) for r, c, _ in ENTRIES[1:]]],
    )
    error_texts["NUL byte after an array value"] = (
        "%%MatrixMarket matrix array integer general\n1 1\n1\x00\n"
    )
    error_texts["NUL byte in a comment"] = mtx_text(comments=("% nul \x00 here",))
    error_texts["NUL byte at the end"] = VALID_MTX + "\x00"
    error_texts["array: one value short"] = (
        "%%MatrixMarket matrix array integer general\n2 2\n1\n2\n3\n"
    )
    error_texts["array: one value extra"] = (
        "%%MatrixMarket matrix array integer general\n2 2\n1\n2\n3\n4\n5\n"
    )
    error_texts["array: letter value"] = (
        "%%MatrixMarket matrix array integer general\n2 2\n1\nx\n3\n4\n"
    )
    # Truncations that cut off at least one whole entry line.
    body_start = VALID_MTX.index(f"\n{N_GENES} {N_CELLS} {len(ENTRIES)}\n") + 1
    last_line_start = VALID_MTX.rstrip("\n").rindex("\n") + 1
    for cut in np.linspace(0, last_line_start, 12, dtype=int)[1:]:
        error_texts[f"truncated at byte {cut}"] = VALID_MTX[:cut]
    assert body_start < last_line_start

    cases = [mtx_case(name, text) for name, text in error_texts.items()]
    # The same malformed content, gzip-compressed: the reader must say the same.
    cases += [
        mtx_case(f"gzip of {name}", text, suffix=".mtx.gz", compress=True)
        for name, text in error_texts.items()
    ]

    ok_texts = {
        "valid": VALID_MTX,
        "real field": mtx_text(banner="%%MatrixMarket matrix coordinate real general"),
        "real field written as floats": mtx_text(
            banner="%%MatrixMarket matrix coordinate real general",
            entries=[(r, c, f"{v:.1f}") for r, c, v in ENTRIES],
        ),
        "double field": mtx_text(banner="%%MatrixMarket matrix coordinate double general"),
        "pattern field": mtx_text(
            banner="%%MatrixMarket matrix coordinate pattern general",
            entries=[(r, c) for r, c, _ in ENTRIES],
        ),
        "upper-case banner": mtx_text(
            banner=BANNER.upper().replace("%%MATRIXMARKET", "%%MatrixMarket")
        ),
        "no comment lines": mtx_text(comments=()),
        "many comment lines": mtx_text(comments=tuple(f"% {i}" for i in range(500))),
        "CRLF line ends": VALID_MTX.replace("\n", "\r\n"),
        "tab separated": mtx_text(comments=()).replace(" ", "\t").replace("\t", " ", 4),
        "duplicate coordinates": mtx_text(entries=[*ENTRIES, ENTRIES[0], ENTRIES[5]]),
        "an explicit zero": mtx_text(entries=[*ENTRIES, (2, 1, 0)]),
        "an empty gene and cell": mtx_text(size=f"{N_GENES + 1} {N_CELLS + 1} {len(ENTRIES)}"),
        "dense array format": "%%MatrixMarket matrix array integer general\n3 2\n1\n0\n4\n2\n0\n7\n",  # noqa: E501
        "trailing blank lines": VALID_MTX + "\n\n",
        "no final newline": VALID_MTX.rstrip("\n"),
    }
    cases += [mtx_case(f"valid variant: {name}", text, "ok") for name, text in ok_texts.items()]
    cases.append(mtx_case("valid variant: gzip", VALID_MTX, "ok", suffix=".mtx.gz", compress=True))
    cases.append(
        mtx_case("valid variant: plain text named .mtx.gz", VALID_MTX, "ok", suffix=".mtx.gz")
    )
    return cases


# -- gzip damage ---------------------------------------------------------------------------------
def gzip_cases() -> list[Case]:
    compressed = gzip.compress(VALID_MTX.encode(), mtime=0)
    cases = []
    for cut in np.unique(np.linspace(1, len(compressed) - 1, 25, dtype=int)):
        cases.append(mtx_case(f"gzip truncated at byte {cut}", compressed[:cut], suffix=".mtx.gz"))
    for position in np.unique(np.linspace(10, len(compressed) - 9, 15, dtype=int)):
        damaged = bytearray(compressed)
        damaged[position] ^= 0xFF
        # The CRC-32 catches any change to the deflate stream or the data.
        cases.append(mtx_case(f"gzip byte {position} flipped", bytes(damaged), suffix=".mtx.gz"))
    crc = bytearray(compressed)
    crc[-8] ^= 0x01
    cases.append(mtx_case("gzip wrong CRC", bytes(crc), suffix=".mtx.gz"))
    size = bytearray(compressed)
    size[-4] ^= 0x01
    cases.append(mtx_case("gzip wrong length", bytes(size), suffix=".mtx.gz"))
    cases.append(mtx_case("gzip magic only", compressed[:2], suffix=".mtx.gz"))
    cases.append(mtx_case("gzip header only", compressed[:10], suffix=".mtx.gz"))
    cases.append(mtx_case("gzip of nothing", b"", suffix=".mtx.gz", compress=True))
    cases.append(mtx_case("gzip with garbage after it", compressed + b"garbage!", suffix=".mtx.gz"))
    cases.append(mtx_case("gzip twice", gzip.compress(compressed), suffix=".mtx.gz"))
    return cases


# -- 10x folders -------------------------------------------------------------------------------
FEATURES = [f"ENSG{i:05d}\tGENE{i}\tGene Expression" for i in range(N_GENES)]
BARCODES = [f"CELL{i}-1" for i in range(N_CELLS)]


def tenx_case(name, expect="error", *, matrix=VALID_MTX, features=FEATURES, barcodes=BARCODES,
              features_name="features.tsv.gz", drop=(), raw=None, extra=()):  # fmt: skip
    def build(folder: Path) -> list[str]:
        tenx = folder / "filtered_feature_bc_matrix"
        tenx.mkdir()
        files = {
            "matrix.mtx.gz": gzip.compress(matrix.encode(), mtime=0),
            features_name: gzip.compress("".join(f"{f}\n" for f in features).encode(), mtime=0),
            "barcodes.tsv.gz": gzip.compress("".join(f"{b}\n" for b in barcodes).encode(), mtime=0),
        }
        files.update(raw or {})
        for file_name, content in files.items():
            if file_name not in drop:
                (tenx / file_name).write_bytes(content)
        return ["fit", str(tenx), *extra]

    return Case(name, build, expect)


def tenx_cases() -> list[Case]:
    cases = [
        tenx_case("10x: valid", "ok"),
        tenx_case(
            "10x: valid Cell Ranger 2 layout (plain matrix.mtx, genes.tsv, barcodes.tsv)",
            "ok",
            drop=("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"),
            raw={
                "matrix.mtx": VALID_MTX.encode(),
                "genes.tsv": "".join(f"ENSG{i}\tG{i}\n" for i in range(N_GENES)).encode(),
                "barcodes.tsv": "".join(f"{b}\n" for b in BARCODES).encode(),
            },
        ),
        tenx_case(  # neither Cell Ranger layout: refused with the way to read it
            "10x: genes.tsv.gz beside matrix.mtx.gz",
            features=[f"ENSG{i}\tG{i}" for i in range(N_GENES)],
            features_name="genes.tsv.gz",
        ),
        tenx_case("10x: one feature short", features=FEATURES[:-1]),
        tenx_case("10x: one feature extra", features=[*FEATURES, "ENSGX\tX\tGene Expression"]),
        tenx_case("10x: one barcode short", barcodes=BARCODES[:-1]),
        tenx_case("10x: one barcode extra", barcodes=[*BARCODES, "EXTRA-1"]),
        tenx_case("10x: no features", features=[]),
        tenx_case("10x: no barcodes", barcodes=[]),
        tenx_case("10x: features missing", drop=("features.tsv.gz",)),
        tenx_case("10x: barcodes missing", drop=("barcodes.tsv.gz",)),
        tenx_case("10x: matrix missing", drop=("matrix.mtx.gz",)),
        tenx_case(
            "10x: empty folder", drop=("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz")
        ),
        tenx_case(
            "10x: features corrupt gzip", raw={"features.tsv.gz": b"\x1f\x8b\x08\x00garbage"}
        ),
        tenx_case(
            "10x: barcodes truncated gzip",
            raw={"barcodes.tsv.gz": gzip.compress(b"A\nB\nC\n")[:15]},
        ),
        tenx_case(
            "10x: matrix truncated gzip",
            raw={"matrix.mtx.gz": gzip.compress(VALID_MTX.encode())[:-20]},
        ),
        tenx_case(
            "10x: features binary", raw={"features.tsv.gz": gzip.compress(bytes(range(256)) * 4)}
        ),
        tenx_case("10x: --cells-as-rows on a folder", extra=("--cells-as-rows",)),
        tenx_case("10x: --row-names on a folder", extra=("--row-names", "/dev/null")),
    ]
    sizes = {
        "more genes than features": f"{N_GENES + 2} {N_CELLS} {len(ENTRIES)}",
        "more cells than barcodes": f"{N_GENES} {N_CELLS + 2} {len(ENTRIES)}",
    }
    for name, size in sizes.items():
        cases.append(tenx_case(f"10x: {name}", matrix=mtx_text(size=size)))
    entries = {"zero-based index": "0 1 5", "letter value": "1 1 x", "row beyond": "99 1 5"}
    for name, line in entries.items():
        cases.append(tenx_case(f"10x: matrix entry {name}", matrix=replace_entry(2, line)))
    return cases


# -- .h5ad files -------------------------------------------------------------------------------
def _counts_anndata(changes: dict | None = None) -> ad.AnnData:
    """The valid matrix as cells x genes AnnData, with ``{(cell, gene): value}`` set."""
    dense = np.zeros((N_CELLS, N_GENES), dtype=np.float32)
    for r, c, v in ENTRIES:
        dense[c - 1, r - 1] = v
    for position, value in (changes or {}).items():
        dense[position] = value
    return ad.AnnData(
        X=sp.csr_matrix(dense),
        obs=pd.DataFrame(index=BARCODES),
        var=pd.DataFrame(index=[f"GENE{i}" for i in range(N_GENES)]),
    )


def h5ad_case(name, make, expect="error", extra=()):
    def build(folder: Path) -> list[str]:
        path = folder / "input.h5ad"
        content = make(path)
        if content is not None:
            path.write_bytes(content)
        return ["fit", str(path), *extra]

    return Case(name, build, expect)


def h5ad_cases() -> list[Case]:
    def write(adata):
        def make(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                adata.write_h5ad(path)

        return make

    def valid_bytes(path):
        write(_counts_anndata())(path)
        return None

    def truncated(fraction):
        def make(path):
            write(_counts_anndata())(path)
            content = path.read_bytes()
            return content[: int(len(content) * fraction)]

        return make

    no_x = ad.AnnData(
        obs=pd.DataFrame(index=BARCODES), var=pd.DataFrame(index=[f"G{i}" for i in range(N_GENES)])
    )
    negative = _counts_anndata({(0, 3): -2})
    with_nan = _counts_anndata({(1, 2): np.nan})
    with_inf = _counts_anndata({(1, 3): np.inf})
    no_cells = ad.AnnData(X=sp.csr_matrix((0, N_GENES), dtype=np.float32))
    no_genes = ad.AnnData(X=sp.csr_matrix((N_CELLS, 0), dtype=np.float32))
    cases = [
        h5ad_case("h5ad: valid", valid_bytes, "ok"),
        h5ad_case("h5ad: without X", write(no_x)),
        h5ad_case("h5ad: zero cells", write(no_cells)),
        h5ad_case("h5ad: zero genes", write(no_genes)),
        h5ad_case("h5ad: a negative count", write(negative)),
        h5ad_case("h5ad: a NaN count", write(with_nan)),
        h5ad_case("h5ad: an infinite count", write(with_inf)),
        h5ad_case("h5ad: empty file", lambda path: b""),
        h5ad_case("h5ad: text file", lambda path: VALID_MTX.encode()),
        h5ad_case(
            "h5ad: HDF5 signature then garbage", lambda path: b"\x89HDF\r\n\x1a\n" + b"\x00" * 600
        ),
        h5ad_case("h5ad: K larger than the genes", valid_bytes, extra=("-k", "50")),
        h5ad_case("h5ad: --layer that does not exist", valid_bytes, extra=("--layer", "counts")),
        h5ad_case("h5ad: --use-raw without .raw", valid_bytes, extra=("--use-raw",)),
        h5ad_case("h5ad: --genes-as-rows", valid_bytes, extra=("--genes-as-rows",)),
    ]
    for fraction in (0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 0.99):
        cases.append(h5ad_case(f"h5ad: truncated to {fraction:.0%}", truncated(fraction)))
    return cases


# -- paths and options ---------------------------------------------------------------------------
def path_and_option_cases() -> list[Case]:
    def valid_mtx(folder: Path) -> Path:
        path = folder / "input.mtx"
        path.write_text(VALID_MTX)
        return path

    def argv(builder):
        return builder

    def directory_named_mtx(folder):
        (folder / "input.mtx").mkdir()
        return ["fit", str(folder / "input.mtx"), "--genes-as-rows"]

    def fifo(folder):
        os.mkfifo(folder / "input.mtx")
        return ["fit", str(folder / "input.mtx"), "--genes-as-rows"]

    def broken_symlink(folder):
        (folder / "input.mtx").symlink_to(folder / "gone.mtx")
        return ["fit", str(folder / "input.mtx"), "--genes-as-rows"]

    def unreadable(folder):
        path = valid_mtx(folder)
        path.chmod(0)
        return ["fit", str(path), "--genes-as-rows"]

    def options(*extra, with_input=True):
        def build(folder):
            head = ["fit", str(valid_mtx(folder))] if with_input else ["fit"]
            return [*head, *extra]

        return build

    def name_file(lines, which="--row-names"):
        def build(folder):
            names = folder / "names.txt"
            names.write_text("".join(f"{line}\n" for line in lines))
            return ["fit", str(valid_mtx(folder)), "--genes-as-rows", which, str(names)]

        return build

    no_options: tuple[str, ...] = ()
    cases = [
        Case("path: missing file", lambda f: ["fit", str(f / "missing.mtx"), "--genes-as-rows"]),
        Case("path: empty folder", lambda f: ["fit", str(f)]),
        Case("path: folder named .mtx", directory_named_mtx),
        Case("path: named pipe", fifo),
        Case("path: broken symlink", broken_symlink),
        Case(
            "path: file inside a file",
            lambda f: ["fit", str(valid_mtx(f) / "x.mtx"), "--genes-as-rows"],
        ),
        Case(
            "path: name too long",
            lambda f: ["fit", str(f / ("x" * 300 + ".mtx")), "--genes-as-rows"],
        ),
        Case("path: NUL byte", lambda f: ["fit", str(f / "in\x00put.mtx"), "--genes-as-rows"]),
        Case("path: unknown suffix", lambda f: ["fit", str(valid_mtx(f).rename(f / "input.csv"))]),
        Case("path: /dev/null as .mtx", lambda f: ["fit", "/dev/null", "--genes-as-rows"]),
        # root reads a mode-000 file like any other, so there it is a valid input.
        Case("path: unreadable file", unreadable, "ok" if IS_ROOT else "error"),
        Case("option: .mtx without orientation", options()),
        Case("option: both orientations", options("--genes-as-rows", "--cells-as-rows")),
        Case("option: -k 0", options("--genes-as-rows", "-k", "0")),
        Case("option: -k larger than min(shape)", options("--genes-as-rows", "-k", "7")),
        Case("option: -k not a number", options("--genes-as-rows", "-k", "two")),
        Case("option: --max-iter 0", options("--genes-as-rows", "--max-iter", "0")),
        Case("option: --tol -1", options("--genes-as-rows", "--tol", "-1")),
        Case("option: --tol nan", options("--genes-as-rows", "--tol", "nan")),
        Case("option: --threads 0", options("--genes-as-rows", "--threads", "0")),
        Case("option: unknown method", options("--genes-as-rows", "--solver", "magic")),
        Case("option: unknown option", options("--genes-as-rows", "--frobnicate")),
        Case("option: --layer on .mtx input", options("--genes-as-rows", "--layer", "counts")),
        Case("option: no input", options(with_input=False)),
        Case("option: no command", lambda f: [], options=no_options),
        Case("option: unknown command", lambda f: ["frobnicate"], options=no_options),
        Case("option: --row-names one short", name_file([f"GENE{i}" for i in range(N_GENES - 1)])),
        Case("option: --col-names one extra", name_file([*BARCODES, "X"], "--col-names")),
        Case("option: --row-names empty", name_file([])),
        Case(
            "option: --row-names missing",
            lambda f: [
                "fit",
                str(valid_mtx(f)),
                "--genes-as-rows",
                "--row-names",
                str(f / "nope.txt"),
            ],
        ),
        Case(
            "option: umap of a missing result",
            lambda f: ["umap", str(f / "r.h5ad"), "-o", str(f / "u.png")],
            options=no_options,
        ),
        Case(
            "option: umap of a result without a fit",
            lambda f: ["umap", str(_written_h5ad(f)), "-o", str(f / "u.png")],
            options=no_options,
        ),
        Case(
            "option: umap to an unknown format",
            lambda f: ["umap", str(_written_h5ad(f)), "-o", str(f / "u.xyz")],
            options=no_options,
        ),
    ]
    return cases


def _written_h5ad(folder: Path) -> Path:
    path = folder / "plain.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _counts_anndata().write_h5ad(path)
    return path


# -- random mutations ----------------------------------------------------------------------------
def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three random edits: flip, delete, insert or duplicate bytes or lines."""
    data = bytearray(data)
    for _ in range(rng.integers(1, 4)):
        kind = rng.integers(0, 6)
        position = int(rng.integers(0, max(len(data), 1)))
        if kind == 0 and data:
            data[position] = int(rng.integers(0, 256))
        elif kind == 1 and data:
            del data[position : position + int(rng.integers(1, 8))]
        elif kind == 2:
            data[position:position] = bytes(
                rng.choice(
                    np.frombuffer(b"0123456789 -.eE%\n\tax\x00", np.uint8), rng.integers(1, 6)
                )
            )
        elif kind == 3:
            lines = bytes(data).split(b"\n")
            index = int(rng.integers(0, len(lines)))
            lines.insert(index, lines[index])
            data = bytearray(b"\n".join(lines))
        elif kind == 4:
            lines = bytes(data).split(b"\n")
            del lines[int(rng.integers(0, len(lines)))]
            data = bytearray(b"\n".join(lines))
        else:
            data = data[:position]
    return bytes(data)


def random_mutation_cases(n_plain: int = 300, n_gzip: int = 60) -> list[Case]:
    rng = np.random.default_rng(20261123)
    cases = []
    for i in range(n_plain):
        cases.append(mtx_case(f"random mutation {i}", _mutate(VALID_MTX.encode(), rng), "either"))
    compressed = gzip.compress(VALID_MTX.encode(), mtime=0)
    for i in range(n_gzip):
        cases.append(
            mtx_case(
                f"random gzip mutation {i}", _mutate(compressed, rng), "either", suffix=".mtx.gz"
            )
        )
    return cases


# -- the runner ----------------------------------------------------------------------------------
def run_case(case: Case, folder: Path, capfd) -> str | None:
    """Run one case; return a description of what went wrong, or None."""
    inputs = folder / "inputs"
    inputs.mkdir(parents=True)
    outdir = folder / "out"
    argv = case.build(inputs)
    if case.options:
        options = list(case.options)
        if "-k" in argv:  # the case sets K itself
            del options[options.index("-k") : options.index("-k") + 2]
        argv = [*argv, "-o", str(outdir), *options]
    before = set(folder.iterdir())
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        try:
            code = main(argv)
        except BaseException as error:
            return f"main raised {type(error).__name__}: {error}"
    captured = capfd.readouterr()
    stderr_lines = error_lines(captured.err)  # a cold cache's compile notice is no error line
    succeeded = code == 0
    if case.expect == "ok" and not succeeded:
        return f"expected success, got code {code}: {captured.err.strip()[:300]}"
    if case.expect == "error" and succeeded:
        return "expected an error, but the run succeeded"
    if succeeded:
        written = {path.name for path in outdir.iterdir()} if outdir.is_dir() else set()
        if case.options and not OUTPUTS <= written:
            return f"succeeded but OUTDIR holds {sorted(written)}"
        leftovers = set(folder.iterdir()) - before - {outdir}
        return f"temporary files left: {sorted(map(str, leftovers))}" if leftovers else None
    problems = []
    if code != 2:
        problems.append(f"exit code {code}")
    if len(stderr_lines) != 1 or not stderr_lines[0].startswith("vbsnmf: error: "):
        problems.append(f"stderr is not one error line: {captured.err[:500]!r}")
    if "Traceback" in captured.err:
        problems.append("traceback on stderr")
    if captured.out:
        problems.append(f"stdout not empty: {captured.out[:200]!r}")
    if escaped:
        problems.append(f"escaped warnings: {[str(w.message)[:100] for w in escaped]}")
    if outdir.exists():
        problems.append("OUTDIR was written")
    leftovers = set(folder.iterdir()) - before
    if leftovers:
        problems.append(f"left behind: {sorted(p.name for p in leftovers)}")
    return "; ".join(problems) or None


CATEGORIES = {
    "matrix market": matrix_market_cases,
    "gzip": gzip_cases,
    "10x folders": tenx_cases,
    "h5ad": h5ad_cases,
    "paths and options": path_and_option_cases,
    "random mutations": random_mutation_cases,
}
# Lower bounds on the cases generated per category (the totals are in tests/README.md).
MINIMUM_CASES = {
    "matrix market": 176,
    "gzip": 47,
    "10x folders": 23,
    "h5ad": 21,
    "paths and options": 33,
    "random mutations": 360,
}


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_malformed_inputs_fail_cleanly(category, tmp_path, capfd):
    cases = CATEGORIES[category]()
    assert len(cases) >= MINIMUM_CASES[category]
    assert len({case.name for case in cases}) == len(cases)
    failures = []
    outcomes = {"error": 0, "ok": 0}
    for index, case in enumerate(cases):
        problem = run_case(case, tmp_path / f"case{index}", capfd)
        if problem:
            failures.append(f"{case.name}: {problem}")
        else:
            outcomes["ok" if (tmp_path / f"case{index}" / "out").is_dir() else "error"] += 1
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
    if category == "random mutations":
        # Most random edits must break the file; a few leave it valid (a digit changed).
        assert outcomes["error"] > len(cases) // 3, outcomes


# Malformed entry lines that scipy's Matrix Market parser (fast_matrix_market) would
# read silently wrong: it stops a number at the first character that cannot continue it
# and ignores the rest of the line. vbsnmf.io checks the entry lines as they stream past.
SILENTLY_ACCEPTED_BY_SCIPY = {
    "fraction in an integer field (1.5 read as 1)": replace_entry(0, "1 4 1.5"),
    "exponent in an integer field (1e3 read as 1)": replace_entry(0, "1 4 1e3"),
    "letters after a count (16abc read as 16)": replace_entry(0, "1 4 16abc"),
    "a fourth field on an entry line": replace_entry(0, "1 4 16 99"),
}


@pytest.mark.parametrize("name", list(SILENTLY_ACCEPTED_BY_SCIPY))
def test_trailing_garbage_in_entries_is_refused(name, tmp_path, capfd):
    case = mtx_case(name, SILENTLY_ACCEPTED_BY_SCIPY[name])
    assert run_case(case, tmp_path, capfd) is None


def test_memory_guard_is_one_line_and_exit_2(tmp_path, capfd, monkeypatch):
    """Too little memory for a batch fit: the guard's advice is the one error line."""
    from vbsnmf import _memory

    monkeypatch.setattr(_memory, "available_memory", lambda: 1024)
    from vbsnmf.io import _read

    monkeypatch.setattr(_read, "_INDEX_BYTES", 0)  # the reader's own check is tested elsewhere
    case = mtx_case("valid input, no memory", VALID_MTX)
    assert run_case(case, tmp_path, capfd) is None
    case = mtx_case("valid input, no memory, repeated", VALID_MTX)
    folder = tmp_path / "again"
    (folder / "inputs").mkdir(parents=True)
    argv = [*case.build(folder / "inputs"), "-o", str(folder / "out"), *FIT_OPTIONS]
    capfd.readouterr()
    assert main(argv) == 2
    error = capfd.readouterr().err
    assert "--solver svi" in error or 'solver="svi"' in error
    assert "available" in error


def test_header_declaring_two_billion_cells_fails_cleanly(tmp_path):
    """A 19-entry file whose size line claims 2e9 cells: the reader's default names alone
    would need 15 GiB. Under a 6 GiB address-space limit (so the test cannot hurt the
    machine) the CLI must still answer with one line and exit 2, not an internal error."""
    import resource
    import subprocess
    import sys

    path = tmp_path / "huge.mtx"
    path.write_text(mtx_text(size=f"{N_GENES} 2000000000 {len(ENTRIES)}"))
    outdir = tmp_path / "out"

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "vbsnmf",
            "fit",
            str(path),
            "--genes-as-rows",
            "-o",
            str(outdir),
            *FIT_OPTIONS,
        ],
        capture_output=True,
        text=True,
        preexec_fn=limit_memory,
        timeout=300,
    )
    assert completed.returncode == 2, completed.stderr[-2000:]
    lines = error_lines(completed.stderr)
    assert len(lines) == 1 and lines[0].startswith("vbsnmf: error: "), completed.stderr
    assert not outdir.exists()
