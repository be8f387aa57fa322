"""Names and numbers through files and back (thirty-second hostile pass, round trips).

- R1: ``vbsnmf fit OUTDIR`` (an earlier run's output folder given for its
  ``result.h5ad``) was told that its ``top_genes.tsv`` is a 10x file with a GEO prefix
  to rename to ``matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz``; ``vbsnmf umap
  OUTDIR`` only "not a regular file". Both now name ``OUTDIR/result.h5ad`` (and
  ``counts.h5ad`` under ``--solver svi``).
- R2: the factor tables' names read back with `pandas.read_csv`'s defaults as NaN
  (``NA``, ``nan``, an empty name), booleans (``TRUE``/``FALSE``) or integers (the names
  ``0``, ``1``, ... of a matrix read without name files), which no longer match
  ``adata.obs_names``, and no doc said how to read them (the CHANGELOG said every name
  reads back with ``read_csv``) nor to what precision the factors are written. The README
  and `write_nmf_tables` now give the call that reads them as written.
- R3: a Cell Ranger ``.h5`` whose gene or barcode names hold UTF-8 text (a 10x folder of
  the same names reads) was "not a readable Cell Ranger .h5 file (UnicodeDecodeError:
  'ascii' codec ...)": scanpy decodes them as ASCII. They are now read as UTF-8.
- R4: `vbsnmf.io.read` of a 10x folder or Cell Ranger ``.h5`` holding Antibody Capture
  features and a repeated gene symbol (GRCh38 has some) warned "Variable names are not
  unique. To make them unique, call `.var_names_make_unique`", about names it then made
  unique itself.
- R5: ``vbsnmf fit IN.h5ad --use-raw`` of a file whose ``.raw`` repeats a gene name said
  "adata.raw's gene names repeat", a name the command line's user has not met; it now
  names the file's ``.raw``.
- R6: `write_nmf_tables` of a fit whose cell or gene name holds a lone surrogate (text
  decoded with ``errors="surrogateescape"``) failed with a bare `UnicodeEncodeError`
  naming neither the name nor the table; it is now refused by name, as a NUL is.
- R7: a name file with a header line (R's ``write.csv``, pandas' ``to_csv``) was refused
  as "has 16 names but m.mtx has 15 rows", not saying which line is no name; one name too
  many now shows the first line and asks whether it is a header.

Guards (pass on both) say so in their docstrings.
"""

from __future__ import annotations

import gzip
import re
import shutil
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from test_hostile import _main

import vbsnmf
from vbsnmf.io import ReadError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "vbsnmf" / "datasets" / "data" / "pbmc_tiny_v3"
FIT = ["-k", "2", "--max-iter", "3", "--threads", "1", "--quiet"]

# Names pandas, R or a spreadsheet may take for something else: missing values, numbers,
# booleans, comments, white space, quotes, separators of other formats, Unicode.
HOSTILE = [
    "NA",
    "nan",
    "NULL",
    "None",
    "",
    "TRUE",
    "FALSE",
    "1",
    "1e5",
    "001",
    "-",
    "inf",
    " lead",
    "trail ",
    'q"uote',
    "'single'",
    "a,b",
    "#hash",
    "x\ty",
    "line\nbreak",
    "cr\rname",
    "e\u0301",  # a combining accent
    "\u05e9\u05dc\u05d5\u05dd",  # right to left
    "a\u2028b",
    "a\x85b",
    "=1+1",
    "x" * 5000,
]


def _fitted(cells: list[str], genes: list[str] | None = None, **fit) -> ad.AnnData:
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(8)] if genes is None else genes
    counts = sp.csr_matrix(rng.poisson(2.0, (len(cells), len(genes))).astype(np.float32))
    adata = ad.AnnData(counts, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged in a few iterations
        vbsnmf.tl.nmf(adata, n_components=2, random_state=0, max_iter=5, **fit)
    return adata


def _documented_read(side: str):
    """The README's call that reads a table back, as a function of the path."""
    readme = (ROOT / "README.md").read_text()
    calls = re.findall(r"`(pd\.read_csv\(path, [^`]*\))`", readme)
    assert calls, "the README gives no call that reads the tables back"
    call = calls[0].replace('{"cell": str}', f"{{{side!r}: str}}")
    return lambda path: eval(call, {"pd": pd, "path": path})


# -- R1: an output folder given as the input ---------------------------------------------
@pytest.fixture(scope="module")
def outdir(tmp_path_factory) -> Path:
    """A ``vbsnmf fit --solver svi`` OUTDIR of pbmc_tiny (result.h5ad and counts.h5ad)."""
    base = tmp_path_factory.mktemp("outdir")
    shutil.copytree(TINY, base / "tiny")
    code, _, err, _ = _main(
        ["fit", "tiny", "-o", "run", "--solver", "svi", "--epochs", "1", *FIT],
        _NoCapture(),
        base,
    )
    assert code == 0, err
    return base / "run"


class _NoCapture:
    """A stand-in for pytest's ``capfd`` in a module fixture (which cannot take it)."""

    @staticmethod
    def readouterr():
        return type("Captured", (), {"out": "", "err": ""})()


def test_fit_of_an_output_folder_names_its_result(outdir, capfd, tmp_path):
    """R1: the message names OUTDIR's result.h5ad and counts.h5ad, not a GEO prefix."""
    code, out, err, _ = _main(["fit", outdir, *FIT, "-o", tmp_path / "o"], capfd, tmp_path)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "GEO" not in err and "top_genes" not in err, err
    assert f"{outdir / 'result.h5ad'}" in err and f"{outdir / 'counts.h5ad'}" in err, err
    assert not (tmp_path / "o").exists()


def test_umap_of_an_output_folder_names_its_result(outdir, capfd, tmp_path):
    """R1: ``vbsnmf umap OUTDIR`` names OUTDIR/result.h5ad."""
    code, out, err, _ = _main(["umap", outdir, "-o", tmp_path / "u.png"], capfd, tmp_path)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert f"give {outdir / 'result.h5ad'}" in err, err
    assert not (tmp_path / "u.png").exists()


def test_an_output_folder_named_in_python_too(outdir):
    """R1: `vbsnmf.io.read` and the streamed estimator name it alike."""
    with pytest.raises(ReadError, match=r"output of a vbsnmf fit: give its .*result\.h5ad"):
        vbsnmf.io.read(outdir)
    with pytest.raises(ReadError, match=r"result\.h5ad"):
        vbsnmf.VBNMF(2, solver="svi").fit(outdir)


def test_a_folder_of_tables_alone_is_not_an_output_folder(tmp_path):
    """R1: a folder holding a ``top_genes.tsv`` beside a GEO sample's prefixed files is
    still told of the prefix, but no longer lists ``top_genes.tsv`` among them."""
    (tmp_path / "top_genes.tsv").write_text("gene\n")
    (tmp_path / "GSM1_matrix.mtx.gz").write_bytes(b"")
    with pytest.raises(ReadError, match=r"holds GSM1_matrix.mtx.gz, whose names have a prefix"):
        vbsnmf.io.read(tmp_path)


# -- R2: the tables read back as documented ----------------------------------------------
def test_readme_reads_every_hostile_name_back(tmp_path):
    """R2: cell and gene names that pandas' defaults read as NaN, booleans or numbers come
    back as written, in their order, through the README's call; the factors to the 6
    significant digits documented."""
    genes = [f"{name}_g" if name in ("",) else name for name in HOSTILE]
    adata = _fitted(HOSTILE, genes=genes)
    vbsnmf.io.write_nmf_tables(adata, tmp_path)
    cells = _documented_read("cell")(tmp_path / "cell_factors.tsv.gz")
    loadings = _documented_read("gene")(tmp_path / "gene_loadings.tsv.gz")
    assert cells.index.tolist() == HOSTILE
    assert loadings.index.tolist() == genes
    assert cells.index.name == "cell" and loadings.index.name == "gene"
    assert cells.columns.tolist() == ["factor_0", "factor_1"]
    np.testing.assert_allclose(cells.to_numpy(), adata.obsm["X_nmf"], rtol=5e-6, atol=0)
    np.testing.assert_allclose(
        loadings.to_numpy(), adata.varm[adata.uns["nmf"]["varm_key"]], rtol=5e-6, atol=0
    )


@pytest.mark.parametrize(
    "genes",
    [[str(i) for i in range(8)], ["TRUE", "FALSE"], ["NA"] + [f"g{i}" for i in range(7)]],
    ids=["numbers", "booleans", "NA"],
)
def test_readme_call_keeps_names_pandas_defaults_change(tmp_path, genes):
    """R2: gene names all numbers (a matrix read without name files) or booleans, and a
    name ``NA``, stay text."""
    adata = _fitted([f"c{i}" for i in range(12)], genes=genes)
    vbsnmf.io.write_nmf_tables(adata, tmp_path)
    path = tmp_path / "gene_loadings.tsv.gz"
    default = pd.read_csv(path, sep="\t", index_col=0).index.tolist()
    assert default != genes  # what the README warns of
    assert _documented_read("gene")(path).index.tolist() == genes


def test_write_nmf_tables_documents_the_read_and_precision():
    """R2: the docstring gives the call and the digits."""
    doc = vbsnmf.io.write_nmf_tables.__doc__
    assert "keep_default_na=False" in doc and "6 significant digits" in doc


def test_cli_outputs_read_back_with_hostile_names(tmp_path, capfd):
    """A guard: a 10x folder of hostile gene and barcode names through ``vbsnmf fit`` in
    memory and streamed: result.h5ad (anndata and scanpy), counts.h5ad and the tables (read
    with ``keep_default_na=False``) keep every name, in order; top_genes.tsv's genes are
    among them."""
    import scanpy as sc

    genes = [name for name in HOSTILE if not re.search("[\t\n\r\x85\u2028]", name) and name]
    genes += [f"g{i}" for i in range(20 - len(genes))] if len(genes) < 20 else []
    cells = [name for name in genes if name.strip()] + [f"c{i}" for i in range(30)]
    rng = np.random.default_rng(1)
    folder = tmp_path / "tenx"
    folder.mkdir()
    counts = sp.csc_matrix(rng.poisson(2.0, (len(genes), len(cells))))
    with gzip.open(folder / "matrix.mtx.gz", "wb") as handle:
        scipy.io.mmwrite(handle, counts, field="integer")
    with gzip.open(folder / "features.tsv.gz", "wt", encoding="utf-8", newline="") as handle:
        handle.writelines(f"ID{i}\t{name}\tGene Expression\n" for i, name in enumerate(genes))
    with gzip.open(folder / "barcodes.tsv.gz", "wt", encoding="utf-8", newline="") as handle:
        handle.writelines(f"{name}\n" for name in cells)
    for run, extra in (("mem", []), ("svi", ["--solver", "svi", "--epochs", "2"])):
        code, _, err, _ = _main(["fit", folder, *FIT, "-o", run, *extra], capfd, tmp_path)
        assert code == 0, err
        out = tmp_path / run
        for reader in (ad.read_h5ad, sc.read_h5ad):
            result = reader(out / "result.h5ad")
            assert result.var_names.tolist() == genes and result.obs_names.tolist() == cells
        if run == "svi":
            stored = ad.read_h5ad(out / "counts.h5ad")
            assert stored.var_names.tolist() == genes and stored.obs_names.tolist() == cells
        for table, side, names in (
            ("cell_factors", "cell", cells),
            ("gene_loadings", "gene", genes),
        ):
            read = pd.read_csv(
                out / f"{table}.tsv.gz",
                sep="\t",
                index_col=0,
                keep_default_na=False,
                dtype={side: str},
            )
            assert read.index.tolist() == names
        top = pd.read_csv(
            out / "top_genes.tsv", sep="\t", keep_default_na=False, dtype={"gene": str}
        )
        assert set(top["gene"]) <= set(genes) and len(top)


def test_result_h5ad_holds_the_fit_exactly(tmp_path):
    """A guard: result.h5ad read back (anndata) holds the factors, loadings and the ELBO
    trace bit for bit, with hostile names."""
    adata = _fitted(HOSTILE[:20] + [f"c{i}" for i in range(10)])
    vbsnmf.io.write_result(adata, tmp_path / "r.h5ad")
    back = ad.read_h5ad(tmp_path / "r.h5ad")
    assert back.obs_names.tolist() == adata.obs_names.tolist()
    for key in adata.obsm:
        np.testing.assert_array_equal(back.obsm[key], adata.obsm[key])
    for key in adata.varm:
        np.testing.assert_array_equal(back.varm[key], adata.varm[key])
    np.testing.assert_array_equal(back.uns["nmf"]["elbo_trace"], adata.uns["nmf"]["elbo_trace"])


# -- R3: a Cell Ranger .h5 of UTF-8 names ------------------------------------------------
def _cell_ranger_h5(path: Path, genes, cells, *, version=3, probes=False) -> sp.csc_matrix:
    counts = sp.csc_matrix(np.arange(len(genes) * len(cells)).reshape(len(genes), -1) % 5)
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix" if version == 3 else "GRCh38")
        group["barcodes"] = np.array([name.encode() for name in cells])
        group["data"] = counts.data.astype(np.int32)
        group["indices"], group["indptr"] = counts.indices, counts.indptr
        group["shape"] = np.array(counts.shape, dtype=np.int32)
        ids = np.array([f"ID{i}".encode() for i in range(len(genes))])
        names = np.array([name.encode() for name in genes])
        if version == 2:
            group["genes"], group["gene_names"] = ids, names
            return counts
        features = group.create_group("features")
        features["id"], features["name"] = ids, names
        types = [b"Antibody Capture"] + [b"Gene Expression"] * (len(genes) - 1)
        features["feature_type"] = np.array(types)
        features["genome"] = np.array([b"GRCh38"] * len(genes))
        features["_all_tag_keys"] = np.array([b"genome"])
        if probes:
            features["gene_id"] = np.array([f"GID{i}".encode() for i in range(len(genes))])
            features["filtered_probes"] = np.ones(len(genes), dtype=bool)
            group["filtered_barcodes"] = np.arange(len(cells)) % 2 == 0
    return counts


@pytest.mark.parametrize("version", [2, 3])
def test_cell_ranger_h5_of_utf8_names(tmp_path, version):
    """R3: UTF-8 gene and barcode names read as stored, with the counts (version 3: the
    Antibody Capture feature dropped, as for ASCII names)."""
    genes = ["ABC", "G\u00e8ne", "\u05e9\u05dc\u05d5\u05dd", "e\u0301", "G\u00e8ne"]
    cells = ["AAAC-1", "caf\u00e9-2", "c3"]
    counts = _cell_ranger_h5(tmp_path / "m.h5", genes, cells, version=version)
    adata = vbsnmf.io.read(tmp_path / "m.h5")
    kept = slice(1, None) if version == 3 else slice(None)
    unique = ["G\u00e8ne", "\u05e9\u05dc\u05d5\u05dd", "e\u0301", "G\u00e8ne-1"]
    assert adata.var_names.tolist() == (unique if version == 3 else ["ABC", *unique])
    assert adata.obs_names.tolist() == cells
    np.testing.assert_array_equal(adata.X.toarray(), counts.T.toarray()[:, kept])
    assert adata.var["gene_ids"].tolist() == [f"ID{i}" for i in range(5)][kept]


@pytest.mark.parametrize("kind", ["v2", "v3", "probes", "large"])
def test_utf8_route_reads_ascii_files_as_scanpy(tmp_path, kind, monkeypatch):
    """R3: the UTF-8 reader gives what the scanpy route gives on ASCII files: the same
    counts and dtype (float64 for a count beyond float32's exact range), obs and var."""
    import scanpy as sc

    genes, cells = [f"g{i % 3}" for i in range(6)], [f"c{i}" for i in range(4)]
    _cell_ranger_h5(
        tmp_path / "m.h5", genes, cells, version=2 if kind == "v2" else 3, probes=kind == "probes"
    )
    if kind == "large":
        with h5py.File(tmp_path / "m.h5", "r+") as handle:
            handle["matrix/data"][0] = 2**25 + 1
    expected = vbsnmf.io.read_10x_h5(tmp_path / "m.h5")

    def ascii_only(*args, **kwargs):
        raise ValueError("scanpy's reader") from UnicodeDecodeError("ascii", b"\xc3", 0, 1, "")

    monkeypatch.setattr(sc, "read_10x_h5", ascii_only)
    adata = vbsnmf.io.read_10x_h5(tmp_path / "m.h5")
    assert adata.X.dtype == expected.X.dtype == (np.float64 if kind == "large" else np.float32)
    assert (adata.X != expected.X).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, expected.obs)
    pd.testing.assert_frame_equal(adata.var, expected.var)


def test_cell_ranger_h5_of_two_genomes_still_refused(tmp_path):
    """A guard: a version 2 file of two genomes with UTF-8 names is refused by name."""
    _cell_ranger_h5(tmp_path / "m.h5", ["G\u00e8ne", "b"], ["c1", "c2"], version=2)
    with h5py.File(tmp_path / "m.h5", "r+") as handle:
        handle.copy("GRCh38", "mm10")
    with pytest.raises(ReadError, match=r"m\.h5: .*more than one genome"):
        vbsnmf.io.read(tmp_path / "m.h5")


# -- R4: no advice to make unique what is returned unique ----------------------------------
@pytest.mark.parametrize("layout", ["folder", "h5"])
def test_cite_seq_with_repeated_symbols_reads_without_warning(tmp_path, layout):
    """R4: repeated gene symbols beside Antibody Capture features: unique names, no
    warning telling the user to make them unique."""
    genes = ["TBCE", "TBCE", "CD3E", "CD3-ADT"]
    types = ["Gene Expression"] * 3 + ["Antibody Capture"]
    counts = sp.csc_matrix(np.arange(12).reshape(4, 3) % 4)
    if layout == "folder":
        path = tmp_path
        with gzip.open(path / "matrix.mtx.gz", "wb") as handle:
            scipy.io.mmwrite(handle, counts, field="integer")
        with gzip.open(path / "features.tsv.gz", "wt") as handle:
            handle.writelines(f"ID{i}\t{g}\t{t}\n" for i, (g, t) in enumerate(zip(genes, types)))
        with gzip.open(path / "barcodes.tsv.gz", "wt") as handle:
            handle.writelines(f"c{i}\n" for i in range(3))
    else:
        path = tmp_path / "m.h5"
        _cell_ranger_h5(path, genes[::-1], ["c0", "c1", "c2"])  # the first is the antibody
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adata = vbsnmf.io.read(path)
    assert sorted(adata.var_names) == ["CD3E", "TBCE", "TBCE-1"]


# -- R5: repeated names in a file's .raw, in the command line's words -----------------------
def test_cli_names_the_files_raw_with_repeated_gene_names(tmp_path, capfd):
    """R5: the message names the file's .raw, not ``adata.raw``; nothing is written."""
    rng = np.random.default_rng(0)
    genes = ["NA", "NA", "G", "G"] + [f"g{i}" for i in range(8)]
    counts = sp.csr_matrix(rng.poisson(2.0, (30, len(genes))).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata: names not unique
        adata = ad.AnnData(counts, var=pd.DataFrame(index=genes))
        adata.obs_names = [f"c{i}" for i in range(30)]
        adata.raw = adata.copy()
        adata = adata[:, 4:].copy()
    adata.write_h5ad(tmp_path / "in.h5ad")
    for extra in ([], ["--solver", "svi", "--epochs", "1"]):
        argv = ["fit", "in.h5ad", "--use-raw", *FIT, "-o", "o", *extra]
        code, out, err, _ = _main(argv, capfd, tmp_path)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert "adata.raw" not in err and "gene names of in.h5ad's .raw repeat" in err, err
        assert not (tmp_path / "o").exists()


# -- R6: a name UTF-8 cannot encode ---------------------------------------------------------
@pytest.mark.parametrize("side", ["cell", "gene"])
def test_tables_refuse_a_lone_surrogate_by_name(tmp_path, side):
    """R6: a ValueError naming the name (not a bare UnicodeEncodeError); the folder's
    earlier tables kept."""
    names = ["bad\udc80"] + [f"n{i}" for i in range(11)]
    adata = _fitted(
        names if side == "cell" else [f"c{i}" for i in range(12)],
        genes=names if side == "gene" else None,
    )
    (tmp_path / "elbo.tsv").write_text("earlier\n")
    with pytest.raises(ValueError, match=r"'bad\\udc80' holds a lone surrogate") as caught:
        vbsnmf.io.write_nmf_tables(adata, tmp_path)
    assert not isinstance(caught.value, UnicodeEncodeError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elbo.tsv"]
    assert (tmp_path / "elbo.tsv").read_text() == "earlier\n"


# -- R7: a header line in a name file -------------------------------------------------------
def test_a_name_file_with_a_header_line_is_told_so(tmp_path, capfd):
    """R7: in Python and on the command line, in memory and streamed; a name file short of
    one name keeps the plain message."""
    scipy.io.mmwrite(tmp_path / "m.mtx", sp.coo_matrix(np.ones((15, 4))), field="integer")
    (tmp_path / "genes.txt").write_text('"x"\n' + "".join(f"g{i}\n" for i in range(15)))
    (tmp_path / "short.txt").write_text("".join(f"g{i}\n" for i in range(14)))
    said = "has 16 names but m.mtx has 15 rows (is its first line, '\"x\"', a header?"
    with pytest.raises(ReadError, match=re.escape(said)):
        vbsnmf.io.read_mtx(tmp_path / "m.mtx", genes_as_rows=True, row_names=tmp_path / "genes.txt")
    with pytest.raises(ReadError, match=r"has 14 names but m\.mtx has 15 rows$"):
        vbsnmf.io.read_mtx(tmp_path / "m.mtx", genes_as_rows=True, row_names=tmp_path / "short.txt")
    for extra in ([], ["--solver", "svi", "--epochs", "1"]):
        argv = ["fit", "m.mtx", "--genes-as-rows", "--row-names", "genes.txt", *FIT, "-o", "o"]
        code, out, err, _ = _main([*argv, *extra], capfd, tmp_path)
        assert code == 2 and out == "" and err.count("\n") == 1 and said in err, err
        assert not (tmp_path / "o").exists()
