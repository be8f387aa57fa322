"""A hostile user's fifth pass, the HDF5 writers' part: a write of ``result.h5ad`` or of the
SVI route's converted ``.h5ad`` that fails (disk full, a file-size limit) crashed the process
(SIGSEGV, at exit or at the next garbage collection) after a dozen h5py tracebacks, and the
conversion left its temporary file; a Matrix Market header declaring 10^9 cells made the
conversion allocate 86 GB of cell names before failing.

A full disk is reproduced with a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored, so writes
fail with EFBIG as on a full disk with ENOSPC), in a subprocess: mounting a small tmpfs needs
privileges a CI runner may lack.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import anndata as ad
import pytest
from cli_output import error_lines
from test_hostile import FIT, SVI, _tree, h5ad, mtx, tenx

import vbsnmf

pytestmark = pytest.mark.skipif(
    not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE (POSIX)"
)

# Bytes a limited process may write to one file: more than the tables of a small fit,
# less than its result.h5ad or a converted .h5ad.
LIMIT = 8192


def _limited(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``args`` run in ``cwd`` with files limited to LIMIT bytes."""

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return subprocess.run(
        args, cwd=cwd, preexec_fn=limit_files, capture_output=True, text=True, timeout=300
    )


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return _limited([sys.executable, "-c", textwrap.dedent(code)], cwd)


def _cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return _limited([sys.executable, "-m", "vbsnmf", *argv], cwd)


def _fitted(folder: Path) -> Path:
    """A small fit, written to be read back (backed or not) by the limited process."""
    adata = ad.read_h5ad(h5ad(folder, "counts.h5ad"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, 2, max_iter=3, n_threads=1, random_state=0)
    return vbsnmf.io.write_result(adata, folder / "fitted.h5ad")


def _one_clean_error(done: subprocess.CompletedProcess) -> str | None:
    """What the CLI's failed run did wrong: a crash, no error line, or more than one line."""
    if done.returncode != 2:
        return f"exit {done.returncode}: {done.stderr[-2000:]}"
    lines = error_lines(done.stderr)
    if len(lines) != 1 or not lines[0].startswith("vbsnmf: error: "):
        return f"stderr: {done.stderr[-2000:]}"
    return None


def _assert_one_oserror(code: str, target: Path) -> None:
    """``code`` (``vbsnmf.io`` imported as ``io``), run in a process under the size limit
    in ``target``'s folder, raises one OSError naming ``target``, and the process lives."""
    code = textwrap.indent(textwrap.dedent(code).strip(), "    ")
    done = _python(
        "import vbsnmf.io as io\n"
        f"try:\n{code}\n"
        "except OSError as error:\n"
        "    print(type(error).__name__, error.filename, error.strerror, flush=True)\n",
        target.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["OSError", str(target), "File", "too", "large"]
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr


@pytest.mark.parametrize("backed", [False, True], ids=["in_memory", "backed"])
def test_write_result_on_a_full_disk_raises_one_oserror_and_keeps_the_old_file(tmp_path, backed):
    """`write_result` past a size limit: h5py's "Can't decrement id ref count" tracebacks,
    an OSError naming the temporary file, then SIGSEGV when the process ended."""
    fitted = _fitted(tmp_path)
    target = tmp_path / "result.h5ad"
    target.write_bytes(b"the old result")
    before = _tree(tmp_path)
    _assert_one_oserror(
        f"""
        import anndata as ad
        # backed: X in the file, the fit in memory, as a streamed fit leaves it
        adata = ad.read_h5ad({str(fitted)!r}, backed={"'r'" if backed else None})
        io.write_result(adata, {str(target)!r})
        """,
        target,
    )
    assert _tree(tmp_path) == before


def test_fit_with_force_on_a_full_disk_gives_one_error_line_and_keeps_the_old_outdir(tmp_path):
    """`vbsnmf fit ... --force` whose result.h5ad met a size limit: twelve tracebacks, a
    "vbsnmf: error" line naming the temporary file, then SIGSEGV (exit -11)."""
    h5ad(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "result.h5ad").write_bytes(b"the old result")
    before = _tree(tmp_path)
    done = _cli(["fit", "small.h5ad", *FIT, "-o", "out", "--force"], tmp_path)
    assert _one_clean_error(done) is None, _one_clean_error(done)
    assert "result.h5ad" in done.stderr and "File too large" in done.stderr
    assert _tree(tmp_path) == before


def test_svi_fit_whose_conversion_meets_a_full_disk_gives_one_error_line(tmp_path):
    """`vbsnmf fit TENX --solver svi` converting past a size limit: SIGSEGV, no error line,
    and the temporary folder left."""
    tenx(tmp_path)
    before = _tree(tmp_path)
    done = _cli(["fit", "tenx", *FIT, *SVI, "-o", "out"], tmp_path)
    assert _one_clean_error(done) is None, _one_clean_error(done)
    assert "counts.h5ad" in done.stderr and "File too large" in done.stderr
    assert _tree(tmp_path) == before


def test_mtx_to_h5ad_on_a_full_disk_raises_one_oserror_and_leaves_nothing(tmp_path):
    """`vbsnmf.io.mtx_to_h5ad` past a size limit: SIGSEGV, and its temporary
    ``.counts.h5ad.XXXX.tmp.h5ad`` left beside the target."""
    tenx(tmp_path)
    target = tmp_path / "counts.h5ad"
    before = _tree(tmp_path)
    _assert_one_oserror(f'io.mtx_to_h5ad("tenx", {str(target)!r})', target)
    assert _tree(tmp_path) == before


def test_mtx_to_h5ad_counts_the_names_it_would_make_before_making_them(tmp_path, monkeypatch):
    """A header declaring 10^9 cells passed the conversion's memory check (16 bytes a cell
    assumed), then `np.arange(n).astype(str)` allocated 84 bytes a name (86 GB) before
    numpy failed without naming the file. Here 10^7 cells with 1 GB available: the check
    must count the names and refuse before making them."""
    from vbsnmf import _memory

    monkeypatch.delenv("VBSNMF_NO_MEMORY_GUARD", raising=False)
    monkeypatch.setattr(_memory, "available_memory", lambda: 2**30)
    tall = mtx(tmp_path, "1 1 5\n2 2 3\n3 3 7\n", size="10000000 5 3")
    with pytest.raises(vbsnmf.io.ReadError, match=r"m\.mtx.*10000000 x 5"):
        vbsnmf.io.mtx_to_h5ad(tall, tmp_path / "c.h5ad", genes_as_rows=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mtx"]
