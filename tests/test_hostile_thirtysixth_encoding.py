"""Text, encodings and locale in what vbsnmf reads and writes (the thirty-sixth hostile pass,
area encoding). Each test fails on the code before its fix unless its docstring says it
guards a normal case."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from cli_output import without_compile_notice

import vbsnmf
import vbsnmf.cli as cli
from vbsnmf.io import ReadError

REPO = Path(__file__).resolve().parents[1]
# Python under an ASCII locale without its UTF-8 mode: argv and file names of UTF-8 bytes
# are held as lone surrogates ("\u00e9" as "\udcc3\udca9")
C_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
linux_only = pytest.mark.skipif(
    sys.platform != "linux", reason="file names of any bytes, and the C locale's ASCII"
)


def _run(argv, cwd, **environment) -> subprocess.CompletedProcess:
    """``python argv...`` (text or bytes) in ``cwd`` in a process of its own, whose
    environment adds ``environment`` (this clone first on the path)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "NUMBA_NUM_THREADS": "1", **environment}
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, timeout=120
    )


def _counts_h5ad(path: Path, layer: str | None = None) -> None:
    """80 cells x 30 genes of Poisson counts as an .h5ad (the counts also in ``layer``)."""
    counts = sp.csr_matrix(np.random.default_rng(0).poisson(1.0, (80, 30)).astype(np.float32))
    adata = ad.AnnData(X=counts)
    if layer is not None:
        adata.layers[layer] = counts.copy()
    adata.write_h5ad(path)


@pytest.fixture
def small_fit():
    """60 cells x 40 genes with a K=3 fit of 5 passes."""
    rng = np.random.default_rng(0)
    adata = ad.AnnData(X=sp.csr_matrix(rng.poisson(2.0, (60, 40)).astype(np.float32)))
    vbsnmf.tl.nmf(adata, n_components=3, max_iter=5, random_state=0)
    return adata


# -- a long accented output name under the C locale ----------------------------------------
@linux_only
def test_long_accented_result_name_written_under_the_c_locale(tmp_path):
    """Before: under LC_ALL=C PYTHONUTF8=0, `write_result` to a name of 241 bytes of
    UTF-8 (within the 255 a name may have) failed with "'ascii' codec can't encode
    characters in position 3-115": the temporary's name, cut to fit, was decoded as UTF-8
    into text the ASCII file-system encoding could not encode back."""
    name = "\u00e9" * 118 + ".h5ad"
    code = (
        "import sys, anndata as ad, numpy as np, vbsnmf.io as io\n"
        "io.write_result(ad.AnnData(np.ones((2, 2), dtype=np.float32)), sys.argv[1])\n"
    )
    run = _run(["-c", code, name.encode()], tmp_path, **C_LOCALE)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert os.listdir(tmp_path) == [name]
    assert ad.read_h5ad(tmp_path / name).shape == (2, 2)


@linux_only
def test_long_accented_outdir_under_the_c_locale(tmp_path):
    """Before: ``vbsnmf fit -o`` a folder named by 125 accented letters (250 bytes) under
    LC_ALL=C PYTHONUTF8=0 said "vbsnmf: error: 'ascii' codec can't encode characters in
    position 3-118" (exit code 2) before any work."""
    _counts_h5ad(tmp_path / "in.h5ad")
    outdir = "\u00e9" * 125
    argv = ["-m", "vbsnmf", "fit", "in.h5ad", "-k", "2", "--max-iter", "3", "--quiet"]
    run = _run([*argv, "-o", outdir.encode()], tmp_path, **C_LOCALE)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert (tmp_path / outdir / "result.h5ad").is_file()
    assert sorted(os.listdir(tmp_path)) == ["in.h5ad", outdir]  # no temporary left


# -- names typed on the command line under the C locale ------------------------------------
@linux_only
def test_names_typed_in_utf8_under_the_c_locale(tmp_path):
    """Before: under LC_ALL=C PYTHONUTF8=0 (argv's UTF-8 bytes held as lone surrogates),
    ``--checkpoint ck_\u00e9.npz`` was refused as "its name is not valid UTF-8, which
    result.h5ad records" (the check encoded the surrogates, not the name's bytes); ``--key
    \u00e9`` was refused as holding a "lone surrogate character"; ``--layer c\u00f6unts``
    said "in.h5ad has no layer 'c\\udcc3\\udcb6unts' (layers: 'c\u00f6unts')"; and
    params.json recorded the input's name as surrogates. Now the fit runs and result.h5ad
    and params.json record the names as text."""
    _counts_h5ad(tmp_path / "\u00efn.h5ad", layer="c\u00f6unts")
    argv = ["-m", "vbsnmf", "fit", "\u00efn.h5ad", "-k", "2", "--max-iter", "3", "--quiet"]
    argv += ["-o", "out", "--checkpoint", "ck_\u00e9.npz", "--key", "\u00e9"]
    argv += ["--layer", "c\u00f6unts"]
    run = _run([word.encode() for word in argv], tmp_path, **C_LOCALE)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    result = ad.read_h5ad(tmp_path / "out" / "result.h5ad")
    assert "X_\u00e9" in result.obsm
    assert result.uns["\u00e9"]["params"]["checkpoint"] == "ck_\u00e9.npz"
    summary = json.loads((tmp_path / "out" / "params.json").read_text(encoding="utf-8"))
    assert summary["input"] == "\u00efn.h5ad"
    assert summary["key"] == "\u00e9" and summary["layer"] == "c\u00f6unts"
    assert (tmp_path / "ck_\u00e9.npz").is_file()


@linux_only
def test_checkpoint_name_of_other_bytes_still_refused(tmp_path, capsys):
    """A guard (passes on both): a checkpoint named by bytes that are not UTF-8, which
    result.h5ad cannot record, is still refused before any work."""
    _counts_h5ad(tmp_path / "in.h5ad")
    checkpoint = os.fsdecode(os.fsencode(tmp_path) + b"/ck\xff.npz")
    argv = ["fit", str(tmp_path / "in.h5ad"), "-k", "2", "-o", str(tmp_path / "out")]
    assert cli.main([*argv, "--checkpoint", checkpoint]) == 2
    captured = capsys.readouterr()
    assert "its name is not valid UTF-8" in captured.err
    assert without_compile_notice(captured.err).count("\n") == 1
    assert not (tmp_path / "out").exists()


@linux_only
def test_tl_nmf_records_a_checkpoint_name_held_as_surrogates(tmp_path):
    """Before: a checkpoint path as Python holds a UTF-8 name under an ASCII locale (lone
    surrogates, as ``os.listdir`` or argv give it) was recorded as that text in
    ``.uns['nmf']['params']``, and `write_result` then refused the AnnData ("holds text
    that is not valid Unicode"). Now its bytes decoded as UTF-8 are recorded."""
    rng = np.random.default_rng(0)
    adata = ad.AnnData(X=sp.csr_matrix(rng.poisson(1.0, (60, 20)).astype(np.float32)))
    held = os.fsdecode(os.fsencode(tmp_path) + "/ck_\u00e9.npz".encode())
    escaped = str(tmp_path) + "/ck_\udcc3\udca9.npz"  # as an ASCII locale holds the name
    vbsnmf.tl.nmf(adata, n_components=2, max_iter=3, checkpoint=Path(escaped))
    assert adata.uns["nmf"]["params"]["checkpoint"] == held == str(tmp_path) + "/ck_\u00e9.npz"
    vbsnmf.io.write_result(adata, tmp_path / "result.h5ad")
    stored = ad.read_h5ad(tmp_path / "result.h5ad").uns["nmf"]["params"]["checkpoint"]
    assert stored == held


@linux_only
@pytest.mark.parametrize("option", ["--key", "--layer"])
def test_name_options_take_surrogate_escaped_text(option, tmp_path):
    """Before: the names ``--key`` and ``--layer`` arrive as under an ASCII locale (UTF-8
    bytes as lone surrogates) were parsed as that text; now as the text typed. In this
    process (whose locale may be UTF-8) the surrogates are what the C locale gives."""
    args = cli.build_parser().parse_args(
        ["fit", "in.h5ad", "-k", "2", "-o", "out", option, "c\udcc3\udcb6unts"]
    )
    assert getattr(args, option.removeprefix("--")) == "c\u00f6unts"


@linux_only
def test_umap_color_takes_surrogate_escaped_text():
    """Before: ``vbsnmf umap --color`` of a gene typed in UTF-8 under an ASCII locale kept
    the surrogate escapes, and the gene was unknown; now parsed as the text typed."""
    args = cli.build_parser().parse_args(
        ["umap", "r.h5ad", "-o", "u.png", "--color", "CD\udcce\udcb1", "--key", "\udcc3\udca9"]
    )
    assert args.color == "CD\u03b1" and args.key == "\u00e9"


def test_name_options_keep_text_that_is_not_utf8_bytes():
    """A guard (passes on both): a name that is not UTF-8 bytes keeps its escapes (then
    refused by name, as before), and plain text is kept as typed."""
    parse = cli.build_parser().parse_args
    args = parse(["fit", "in.h5ad", "-k", "2", "-o", "out", "--key", "k\udcff", "--layer", "a b"])
    assert args.key == "k\udcff" and args.layer == "a b"


# -- a Cell Ranger .h5 of names in another encoding ----------------------------------------
def _cell_ranger_h5(path: Path, gene_names: list[bytes], barcodes: list[bytes]) -> None:
    """A Cell Ranger 3 ``.h5`` of 2 genes x 3 cells with these names."""
    counts = sp.csc_matrix(np.array([[1, 0, 2], [0, 3, 1]], dtype=np.int32))
    with h5py.File(path, "w") as handle:
        matrix = handle.create_group("matrix")
        matrix["data"] = counts.data
        matrix["indices"] = counts.indices.astype(np.int64)
        matrix["indptr"] = counts.indptr.astype(np.int64)
        matrix["shape"] = np.array(counts.shape, dtype=np.int32)
        matrix["barcodes"] = np.array(barcodes)
        features = matrix.create_group("features")
        features["id"] = np.array([b"E1", b"E2"])
        features["name"] = np.array(gene_names)
        features["feature_type"] = np.array([b"Gene Expression"] * 2)
        features["genome"] = np.array([b"GRCh38"] * 2)


@pytest.mark.parametrize(
    ("genes", "barcodes", "where", "byte"),
    [
        (
            [b"B", "g\u00e8ne".encode("latin-1")],
            [b"AA-1", b"AC-1", b"AG-1"],
            "features/name[1]",
            "0xe8",
        ),
        ([b"A", b"B"], [b"AA-1", "\u00c7C-1".encode("cp1252"), b"AG-1"], "barcodes[1]", "0xc7"),
    ],
)
def test_h5_names_of_another_encoding_named(tmp_path, genes, barcodes, where, byte):
    """Before: a Cell Ranger ``.h5`` of Latin-1 (or cp1252) names was "not a readable Cell
    Ranger .h5 file (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xe8 in position
    1: invalid continuation byte)", which read as a damaged file and named neither the
    array nor the entry, where a name file's is named by line and byte."""
    path = tmp_path / "names.h5"
    _cell_ranger_h5(path, genes, barcodes)
    with pytest.raises(ReadError) as caught:
        vbsnmf.io.read(path)
    message = str(caught.value)
    assert f"/matrix/{where} is not UTF-8 text (byte {byte}" in message
    assert "UnicodeDecodeError" not in message and "not a readable" not in message


def test_h5_utf8_names_still_read(tmp_path):
    """A guard (passes on both): UTF-8 names beyond ASCII read as text."""
    path = tmp_path / "names.h5"
    _cell_ranger_h5(path, [b"A", "g\u00e8ne".encode()], [b"AA-1", "\u00e9-1".encode(), b"AG-1"])
    adata = vbsnmf.io.read(path)
    assert list(adata.var_names) == ["A", "g\u00e8ne"]
    assert list(adata.obs_names) == ["AA-1", "\u00e9-1", "AG-1"]


# -- the written tables read back ----------------------------------------------------------
# Names that readers split lines at (Unicode line and paragraph separators, NEL, vertical
# tab, form and file separators, CR, CR LF), a leading byte-order mark, white space alone,
# quotes, '#', a formula, and text of several scripts
HOSTILE_NAMES = [
    "\u2028",
    "a\u2029b",
    "nel\x85x",
    "vt\x0bx",
    "ff\x0cx",
    "fs\x1cx",
    "gs\x1dx",
    "rs\x1ex",
    "a\rb",
    "a\r\nb",
    "a\nb",
    "\ufeffbom",
    " ",
    "  x",
    "x  ",
    '"',
    '""',
    "'",
    "#",
    "# x",
    "=SUM(A1)",
    "\t",
    "\ta",
    "a\t",
    "",
    "NA",
    "\u00df",
    "e\u0301",
    "\u00e9",
    "\u65e5\u672c",
    "\U0001f600",
    "\\",
    "a,b",
    "\x7f",
]


def _read_back(path: Path, column: str) -> tuple[list[list[str]], pd.DataFrame, pd.DataFrame]:
    """A table as Python's csv reader, pandas' C and its Python engine read it."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    tables = [
        pd.read_csv(
            path, sep="\t", index_col=0, keep_default_na=False, dtype={column: str}, engine=engine
        )
        for engine in ("c", "python")
    ]
    return rows, *tables


def test_tables_of_hostile_names_read_back_exactly(small_fit, tmp_path):
    """A guard (passes on both): cell and gene names holding the characters that readers
    might take for line ends, separators, quotes or comments read back from
    `write_nmf_tables`' tables by Python's csv reader and by pandas (both engines) as they
    are, in order, with their factors to 6 digits."""
    adata = small_fit
    n = len(HOSTILE_NAMES)
    adata.obs_names = HOSTILE_NAMES + [f"c{i}" for i in range(adata.n_obs - n)]
    adata.var_names = HOSTILE_NAMES[::-1] + [f"g{i}" for i in range(adata.n_vars - n)]
    vbsnmf.io.write_nmf_tables(adata, tmp_path)
    info = adata.uns["nmf"]
    for name, column, names, values in (
        ("cell_factors.tsv.gz", "cell", adata.obs_names, adata.obsm[info["obsm_key"]]),
        ("gene_loadings.tsv.gz", "gene", adata.var_names, adata.varm[info["varm_key"]]),
    ):
        rows, *tables = _read_back(tmp_path / name, column)
        assert rows[0] == [column, "factor_0", "factor_1", "factor_2"]
        assert [row[0] for row in rows[1:]] == list(names)
        read = np.array([[float(field) for field in row[1:]] for row in rows[1:]])
        np.testing.assert_allclose(read, values, rtol=5e-6)
        for table in tables:
            assert list(table.index) == list(names)
            np.testing.assert_array_equal(table.to_numpy(), read)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tables_keep_extreme_floats(dtype, tmp_path):
    """A guard (passes on both): the table writer (`write_tsv`, as `write_nmf_tables`
    calls it) writes -0.0, subnormals, the normal limits and the largest values of float32
    and float64 columns to 6 significant digits, and pandas and Python's float read back
    those digits (-0.0 with its sign), in order."""
    from vbsnmf.io._write import write_tsv

    info = np.finfo(dtype)
    extremes = np.array(
        [-0.0, info.smallest_subnormal, info.tiny, info.max, 1e-30, 123456789.0, 0.1, 1 / 3],
        dtype=dtype,
    )
    table = pd.DataFrame(
        {"factor_0": extremes}, index=pd.Index([f"c{i}" for i in range(extremes.size)], name="cell")
    )
    path = tmp_path / "cell_factors.tsv.gz"
    write_tsv(table, path, float_format="%.6g", compressed_name=path.name)
    rows, read, _ = _read_back(path, "cell")
    written = [row[1] for row in rows[1:]]
    assert written == [f"{float(value):.6g}" for value in extremes]
    expected = np.array([float(text) for text in written])
    # pandas' default parser may be a unit in the last place away (its own, 2.2250700000000003e-308)
    np.testing.assert_allclose(read["factor_0"].to_numpy(), expected, rtol=1e-15, atol=0)
    np.testing.assert_allclose(expected, extremes.astype(np.float64), rtol=5e-6)
    assert np.signbit(expected[0]) and np.signbit(read["factor_0"].to_numpy()[0])


@linux_only
def test_cli_tables_under_the_c_locale_are_utf8(tmp_path):
    """Under LC_ALL=C PYTHONUTF8=0 and an ASCII stdout, a 10x folder of UTF-8 names with
    a byte-order mark and CR LF line ends is fitted, and its tables and top_genes.tsv are
    UTF-8 with the names as the folder holds them (a guard: that part passed before).
    Before: params.json recorded the folder's UTF-8 name as lone surrogates
    ("d\\udcc3\\udca4t..."), not as its text."""
    folder = tmp_path / "d\u00e4t\u00e4"
    folder.mkdir()
    genes = ["G\u00e8ne\u2028x", "#h", " lead", "a,b", "NA", "\u65e5"] + [
        f"G{i}" for i in range(24)
    ]
    cells = [f"\u00e7ell-{i}" for i in range(80)]
    counts = np.random.default_rng(1).poisson(1.5, (30, 80))
    with gzip.open(folder / "features.tsv.gz", "wb") as handle:
        lines = "".join(f"E{i}\t{g}\tGene Expression\r\n" for i, g in enumerate(genes))
        handle.write(("\ufeff" + lines).encode())
    with gzip.open(folder / "barcodes.tsv.gz", "wb") as handle:
        handle.write(("\ufeff" + "".join(f"{c}\r\n" for c in cells)).encode())
    import scipy.io

    with gzip.open(folder / "matrix.mtx.gz", "wb") as handle:
        scipy.io.mmwrite(handle, sp.csc_matrix(counts))
    argv = ["-m", "vbsnmf", "fit", folder.name, "-k", "2", "--max-iter", "3", "-o", "out"]
    run = _run([word.encode() for word in argv], tmp_path, PYTHONIOENCODING="ascii", **C_LOCALE)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert run.stdout.startswith(b"wrote out: 80 cells x 30 genes")
    rows, table, _ = _read_back(tmp_path / "out" / "gene_loadings.tsv.gz", "gene")
    assert list(table.index) == genes == [row[0] for row in rows[1:]]
    rows, table, _ = _read_back(tmp_path / "out" / "cell_factors.tsv.gz", "cell")
    assert list(table.index) == cells == [row[0] for row in rows[1:]]
    top = pd.read_csv(
        tmp_path / "out" / "top_genes.tsv", sep="\t", keep_default_na=False, dtype={"gene": str}
    )
    assert set(top["gene"]) <= set(genes)
    summary = json.loads((tmp_path / "out" / "params.json").read_text(encoding="utf-8"))
    assert summary["input"] == folder.name
