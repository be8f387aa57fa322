"""A hostile user's fifth pass, the estimator's part: what a kept callback argument, a
`set_params` after the fit and a float32 model's `transform` did wrong (the pass's `tl`
and `pl` cases are in test_hostile_fifth_api.py)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import vbsnmf


def _counts(n_cells: int = 60, n_genes: int = 25) -> np.ndarray:
    return np.random.default_rng(0).poisson(2.0, (n_cells, n_genes)).astype(float)


def _quiet_fit(model, X, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        return model.fit(X, **kwargs)


def _kept_and_copied(n_iter, params, elbo_trace, kept):
    """What a callback keeps, with the copy it took during the call."""
    copies = [np.array(a, copy=True) for a in params.as_tuple()]
    kept.append((params, copies))


@pytest.mark.parametrize(
    "make",
    [
        lambda: vbsnmf.VBNMF(3, solver="svi", n_epochs=4, batch_size=16),
        lambda: vbsnmf.VBNMF(3, solver="svi", svi_form="nonzeros", n_epochs=4, prior="gamma"),
        lambda: vbsnmf.VBNMF(3, max_iter=4, accelerate=False),
    ],
    ids=["svi-cells", "svi-nonzeros", "batch"],
)
def test_what_a_callback_keeps_stays_as_it_was_given(make):
    """SVI's cells form handed the callback its own q, which it then updated in place: a
    q kept at epoch 1 had changed by the end (neither epoch 1's nor the final one)."""
    kept = []
    model = make().set_params(random_state=0, n_threads=1)
    _quiet_fit(model, _counts(), callback=lambda *a: _kept_and_copied(*a, kept=kept))
    assert len(kept) == 4
    for params, copies in kept:
        for array, copy in zip(params.as_tuple(), copies, strict=True):
            np.testing.assert_array_equal(array, copy)
    last_params = kept[-1][0]
    np.testing.assert_array_equal(last_params.row_shape, model.cell_shape_)


@pytest.mark.parametrize("prior", ["gamma", "hierarchical"])
def test_transform_projects_onto_the_prior_as_fitted(prior):
    """Under the fixed prior `transform` used the current prior_shape / prior_rate: a
    set_params after the fit moved E[z] by 3.6 where the largest E[z] was 2.3; and a change
    of prior kind was refused. It projects onto the fitted model, as `tl.project` does."""
    X = _counts()
    model = _quiet_fit(vbsnmf.VBNMF(3, prior=prior, max_iter=50, random_state=0, n_threads=1), X)
    before = model.transform(X)
    other = "hierarchical" if prior == "gamma" else "gamma"
    for params in ({"prior_shape": 50.0}, {"prior": other, "prior_shape": 0.3}):
        params["prior_rate"] = 0.01 if params.get("prior", prior) == "gamma" else None
        model.set_params(**params)
        np.testing.assert_array_equal(model.transform(X), before)


def test_a_float32_model_refuses_counts_it_cannot_resolve_in_transform():
    """`fit` in float32 refused counts above 2**24; `transform` took any count up to
    1e13."""
    X = _counts()
    model = _quiet_fit(vbsnmf.VBNMF(3, max_iter=20, random_state=0, dtype=np.float32), X)
    X[0, 0] = 2.0**30 + 1
    with pytest.raises(ValueError, match=r"above 16,777,216.*float32"):
        model.transform(X)
    assert np.isfinite(model.transform(X[1:])).all()


def _backed(tmp_path, counts, *, with_raw=False):
    import anndata as ad

    adata = ad.AnnData(counts)
    adata.obs_names = [f"c{i}" for i in range(counts.shape[0])]
    adata.var_names = [f"g{j}" for j in range(counts.shape[1])]
    if with_raw:
        adata.raw = adata.copy()
    adata.write_h5ad(tmp_path / "source.h5ad")
    return ad.read_h5ad(tmp_path / "source.h5ad", backed="r")


def test_write_result_keeps_the_gene_side_of_a_backed_fit_of_raw(tmp_path):
    """A backed AnnData fitted with use_raw=True has its gene side in .raw.varm and
    .raw.var; `write_result` copied .raw from the source file, so the written result lost
    them and its `top_genes` and `project` failed with KeyError."""
    import anndata as ad
    import scipy.sparse as sp

    backed = _backed(tmp_path, sp.csr_matrix(_counts()), with_raw=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(backed, 2, use_raw=True, max_iter=5, n_threads=1, random_state=0)
    vbsnmf.io.write_result(backed, tmp_path / "result.h5ad")
    written = ad.read_h5ad(tmp_path / "result.h5ad")
    for key in backed.raw.varm:
        np.testing.assert_array_equal(written.raw.varm[key], backed.raw.varm[key])
    assert written.raw.var.equals(backed.raw.var)
    np.testing.assert_array_equal(written.raw.X.toarray(), _counts())
    assert vbsnmf.tl.top_genes(written, 3).equals(vbsnmf.tl.top_genes(backed, 3))


def test_write_result_copies_a_backed_dense_x(tmp_path):
    """A backed AnnData with a dense X: `write_result` failed with h5py's "Field names only
    allowed for compound types" (it read X as a CSR group)."""
    import anndata as ad

    backed = _backed(tmp_path, _counts())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(backed, 2, max_iter=3, n_threads=1, random_state=0)
    vbsnmf.io.write_result(backed, tmp_path / "result.h5ad")
    written = ad.read_h5ad(tmp_path / "result.h5ad")
    np.testing.assert_array_equal(written.X, _counts())
    np.testing.assert_array_equal(written.obsm["X_nmf"], backed.obsm["X_nmf"])


# -- a failing environment: permissions, paths, a full disk ------------------------------
def test_a_replaced_file_keeps_its_permissions(tmp_path, monkeypatch):
    """A checkpoint or figure the user had made private (0600) came back 0644 after vbsnmf
    replaced it: the temporary file was given a new file's mode."""
    from vbsnmf._atomic import atomic_file

    monkeypatch.setattr(os, "umask", lambda mask: 0o022)  # the usual umask, whatever CI's
    target = tmp_path / "private.npz"
    target.write_text("old")
    target.chmod(0o600)
    with atomic_file(target) as temporary:
        temporary.write_text("new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with atomic_file(tmp_path / "fresh.png") as temporary:
        temporary.write_text("new")
    assert stat.S_IMODE((tmp_path / "fresh.png").stat().st_mode) == 0o644


def _as_unprivileged(monkeypatch, writable=lambda path: True):
    """What a user who is not root meets (the tests run as root, who may write anything)."""
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode, **kw: (
            real_access(path, mode, **kw) and (not mode & os.W_OK or writable(Path(path)))
        ),
    )
    monkeypatch.setattr(os, "geteuid", lambda: 65534)


def test_a_read_only_file_is_not_replaced(tmp_path, monkeypatch):
    """A checkpoint made read-only (0444) was replaced all the same, by a file of mode
    0644: a rename needs only the folder's permission. It is refused as open() would
    refuse it, before any work on the command line."""
    from vbsnmf._atomic import atomic_file

    target = tmp_path / "kept.npz"
    target.write_text("old")
    _as_unprivileged(monkeypatch, writable=lambda path: path != target)
    with pytest.raises(PermissionError, match="read-only") as raised:
        with atomic_file(target) as temporary:
            temporary.write_text("new")
    assert raised.value.filename == str(target)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.npz"]


def test_a_read_only_checkpoint_is_refused_before_the_fit(tmp_path, monkeypatch):
    X = _counts()
    checkpoint = tmp_path / "fit.npz"
    _quiet_fit(vbsnmf.VBNMF(2, max_iter=3, checkpoint=checkpoint, random_state=0), X)
    _as_unprivileged(monkeypatch, writable=lambda path: path != checkpoint)
    with pytest.raises(vbsnmf.io.UnsafePathError, match="read-only"):
        vbsnmf.io.check_checkpoint_path(checkpoint)


def _earlier_outdir(tmp_path: Path) -> Path:
    outdir = tmp_path / "out"
    outdir.mkdir()
    for name in ("result.h5ad", "elbo.tsv"):
        (outdir / name).write_text("earlier output\n")
    return outdir


def test_force_refuses_an_outdir_it_could_not_move_or_empty(tmp_path, monkeypatch):
    """--force over a read-only OUTDIR, or one in a sticky folder holding another user's
    files, ran the whole fit, then failed to move or empty it (an empty ``.out.XXXX.old``
    left behind) or, worse, succeeded with the old output hidden in ``.out.XXXX.old``."""
    outdir = _earlier_outdir(tmp_path)
    _as_unprivileged(monkeypatch, writable=lambda path: path != outdir)
    with pytest.raises(vbsnmf.io.UnsafePathError, match="not writable"):
        vbsnmf.io.check_outdir(outdir, force=True)
    monkeypatch.undo()
    outdir.chmod(0o1777)  # sticky, and its files are root's, not the user's
    _as_unprivileged(monkeypatch)
    with pytest.raises(vbsnmf.io.UnsafePathError, match="belongs to another user"):
        vbsnmf.io.check_outdir(outdir, force=True)
    monkeypatch.undo()
    assert vbsnmf.io.check_outdir(outdir, force=True) == outdir  # root may


def test_force_leaves_nothing_behind_when_the_old_outdir_cannot_move(tmp_path, monkeypatch):
    """The last line of defence behind `check_outdir`: a failed move left an empty
    ``.out.XXXX.old`` folder, and its error named no file (where two folders cannot be
    swapped in one step, and the old one is moved aside first)."""
    from vbsnmf import _atomic

    monkeypatch.setattr(_atomic, "_exchange", lambda first, second: False, raising=False)
    outdir = _earlier_outdir(tmp_path)
    real_replace = os.replace

    def replace(source, target):
        if Path(source) == outdir:
            raise PermissionError(13, "Permission denied")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(PermissionError, match="cannot move it aside") as raised:
        with vbsnmf.io.atomic_directory(outdir, overwrite=True) as temporary:
            (temporary / "result.h5ad").write_text("new output\n")
    assert raised.value.filename == str(outdir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (outdir / "result.h5ad").read_text() == "earlier output\n"


def test_force_names_an_old_output_it_could_not_delete(tmp_path, monkeypatch):
    """An old OUTDIR that could be moved aside but not emptied was left, whole, in a
    hidden ``.out.XXXX.old`` folder, and the command said nothing (exit 0)."""
    outdir = _earlier_outdir(tmp_path)

    def rmtree(path, ignore_errors=False, **kwargs):  # another user's files: none deleted
        if not ignore_errors:
            raise PermissionError(13, "Permission denied", str(Path(path) / "previous"))

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(OSError, match=r"written in full.*left in") as raised:
        with vbsnmf.io.atomic_directory(outdir, overwrite=True) as temporary:
            (temporary / "result.h5ad").write_text("new output\n")
    assert (outdir / "result.h5ad").read_text() == "new output\n"
    left = Path(raised.value.filename)
    assert left.parent == tmp_path and (left / "previous" / "elbo.tsv").exists()


def test_an_outdir_whose_files_would_exceed_the_longest_path_is_refused(tmp_path):
    """An OUTDIR of 4,073 bytes passed the check (its temporary folder could be made), ran
    the fit, then failed to write result.h5ad in it: "File name too long", naming the
    temporary path."""
    limit = os.pathconf(tmp_path, "PC_PATH_MAX")
    folder = tmp_path
    while len(os.fsencode(str(folder))) < limit - 300:
        folder = folder / ("d" * 200)
        folder.mkdir()
    name = "o" * (limit - 40 - len(os.fsencode(str(folder))))
    outdir = folder / name
    # the temporary folder beside it fits; a file of an output's name in it would not
    assert len(os.fsencode(str(outdir))) + 16 < limit
    with pytest.raises(vbsnmf.io.UnsafePathError, match="too long"):
        vbsnmf.io.check_outdir(outdir)
    assert list(folder.iterdir()) == []


def test_a_full_disk_names_the_file_being_written(tmp_path):
    """numpy's writers into an open file raise ENOSPC / EFBIG without a file name: a
    failed checkpoint save said only "[Errno 27] File too large"."""
    from vbsnmf._atomic import atomic_file

    target = tmp_path / "fit.npz"
    with pytest.raises(OSError, match="File too large") as raised:
        with atomic_file(target):
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    assert raised.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_a_writer_error_after_a_failed_write_names_the_file(tmp_path):
    """matplotlib's PDF writer, once its write failed for a file-size limit, flushed its
    compressor again and raised zlib.error: "internal error (error: Error -2 while
    flushing)" on the command line, and the same from `pl.umap(save="x.pdf")`."""
    import zlib

    from vbsnmf._atomic import atomic_file

    target = tmp_path / "umap.pdf"
    with pytest.raises(OSError, match="File too large") as raised:
        with atomic_file(target):
            try:
                raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
            except OSError:
                raise zlib.error("Error -2 while flushing: buffer error") from None
    assert raised.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(zlib.error):  # a writer's own failure, no write behind it: as it is
        with atomic_file(target):
            raise zlib.error("Error -3 while decompressing")


def test_a_standard_descriptor_closed_at_start_is_not_handed_to_a_file(tmp_path):
    """With stderr closed (``2>&-``) the next file opened took descriptor 2, so what a C
    library wrote to stderr would have gone into it (an output being written)."""
    script = (
        "import os, sys\n"
        "from vbsnmf.cli import _reserve_std_descriptors\n"
        "_reserve_std_descriptors()\n"
        f"print(os.open({str(tmp_path / 'out')!r}, os.O_CREAT | os.O_WRONLY))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=False,
        stdout=subprocess.PIPE,
        preexec_fn=lambda: os.close(2),
        check=True,
    )
    assert int(done.stdout) > 2


def test_a_failed_write_in_outdir_names_outdir_not_its_temporary(tmp_path):
    """A file of OUTDIR that could not be written was named by its place in the
    temporary folder: "No space left on device: '.out.XXXX.tmp/result.h5ad'"."""
    outdir = tmp_path / "out"
    with pytest.raises(OSError, match="No space left") as raised:
        with vbsnmf.io.atomic_directory(outdir) as temporary:
            with vbsnmf.io.atomic_file(temporary / "result.h5ad"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert raised.value.filename == str(outdir / "result.h5ad")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "call",
    [
        lambda: vbsnmf.fit_triplets([0, 1], [0, 1], [1.0, 2.0], None, n_components=1),
        lambda: vbsnmf.fit_triplets([0, 1], [0, 1], ["1", "2"], (2, 2), n_components=1),
    ],
    ids=["shape=None", "string counts"],
)
def test_fit_triplets_names_a_wrong_type(call):
    """`fit_triplets` gave "object of type 'NoneType' has no len()" for ``shape=None`` and
    scipy's list of sparse dtypes for string counts."""
    with pytest.raises(TypeError, match=r"shape must be|counts must be numbers"):
        call()


@pytest.mark.parametrize("save", [["x.png"], b"x.png", 0, 1.0])
def test_a_plot_refuses_a_save_it_would_take_as_a_flag(save, tmp_path, monkeypatch):
    """scanpy takes any ``save`` by its truth: a list, bytes or 0 was taken as a flag."""
    adata = vbsnmf.datasets.pbmc_tiny()[:60].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vbsnmf.tl.nmf(adata, 2, max_iter=3, n_threads=1, random_state=0)
    monkeypatch.chdir(tmp_path)  # where scanpy's relative figdir would have put the file
    with pytest.raises(TypeError, match="save must be"):
        vbsnmf.pl.elbo(adata, show=False, save=save)
    assert list(tmp_path.iterdir()) == []


def test_a_rename_is_synced_to_disk(tmp_path, monkeypatch):
    """The file was synced before its rename, but not the folder after it: a power loss
    could bring back the old file (or no OUTDIR) after the new one was reported written."""
    synced = []
    real_fsync = os.fsync

    def fsync(descriptor):
        synced.append(Path(os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    with vbsnmf.io.atomic_file(tmp_path / "fit.npz") as temporary:
        temporary.write_text("new")
    # the file (under its temporary name, before the rename), then its folder
    assert synced[-2].name.startswith(".fit.npz.") and synced[-1] == tmp_path
    synced.clear()
    with vbsnmf.io.atomic_directory(tmp_path / "out") as temporary:
        (temporary / "elbo.tsv").write_text("new")
    assert synced == [tmp_path]


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("Resource temporarily unavailable"),  # the parser's threads refused
        OSError(errno.EIO, os.strerror(errno.EIO)),
    ],
    ids=["threads refused", "I/O error"],
)
def test_a_machine_that_refuses_the_reader_is_not_a_corrupt_file(failure, tmp_path, monkeypatch):
    """Under a limit on memory or processes the Matrix Market parser could not start its
    threads, and an I/O error of the disk, were both reported as "corrupt or truncated
    Matrix Market file": the user would look for a fault in a sound file."""
    import scipy.io

    path = tmp_path / "counts.mtx"
    scipy.io.mmwrite(path, np.array([[1.0, 2.0], [0.0, 3.0]]), symmetry="general")

    def refused(*args, **kwargs):
        raise failure

    monkeypatch.setattr(scipy.io, "mmread", refused)
    with pytest.raises(vbsnmf.io.ReadError, match="could not be read: the system refused"):
        vbsnmf.io.read_mtx(path, genes_as_rows=True)


def test_force_never_leaves_outdir_missing(tmp_path, monkeypatch):
    """--force moved the old OUTDIR aside, then moved the new one in: a kill -9 between
    the two renames left no OUTDIR at all (both outputs hidden in ``.out.XXXX.old`` and
    ``.out.XXXX.tmp``). The two are swapped in one step, then the old one is removed."""
    from vbsnmf import _atomic

    outdir = _earlier_outdir(tmp_path)
    seen = []
    move_aside = _atomic._move_aside

    def watched(old, target):
        seen.append((outdir / "result.h5ad").read_text())  # what a kill here would leave
        retired, lock = move_aside(old, target)
        assert retired.name.startswith(".out.") and retired.name.endswith(".old")
        return retired, lock

    monkeypatch.setattr(_atomic, "_move_aside", watched)
    with vbsnmf.io.atomic_directory(outdir, overwrite=True) as temporary:
        (temporary / "result.h5ad").write_text("new output\n")
    assert seen == ["new output\n"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_every_file_of_outdir_is_on_disk_before_it_replaces_the_old(tmp_path, monkeypatch):
    """params.json and top_genes.tsv were written with a plain open and no sync, after the
    others: a power loss right after "wrote OUT" could leave them empty, the old OUTDIR
    already gone."""
    from test_hostile import FIT, h5ad

    h5ad(tmp_path)
    synced = []
    real_fsync = os.fsync

    def fsync(descriptor):
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert vbsnmf.cli.main(["fit", "small.h5ad", *FIT, "-o", "out"]) == 0
    written = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert "params.json" in written and "top_genes.tsv" in written
    synced_names = {Path(path).name for path in synced}
    for name in written:  # each synced under its temporary name, ".NAME.XXXXXXXX.tmp..."
        assert any(synced.startswith(f".{name}.") for synced in synced_names), name


def test_leftovers_of_killed_runs_are_reported(tmp_path):
    """A run killed with SIGKILL leaves its temporary folder (a converted counts.h5ad: 34
    MB each on pbmc_facs) or checkpoint; later runs said nothing, and 564 MB piled up
    beside one OUTDIR. Killed between --force's two renames (before they became one
    swap), the old output was left hidden and OUTDIR missing."""
    (tmp_path / ".out.ab12cd34.tmp").mkdir()
    (tmp_path / ".out.ab12cd34.tmp" / "counts.h5ad").write_bytes(b"x" * 2**20)
    (tmp_path / ".out.ef56gh78.old" / "previous").mkdir(parents=True)
    (tmp_path / ".out.notours").mkdir()  # not a name vbsnmf gives
    (tmp_path / ".fit.npz.ij90kl12.tmp.npz").write_bytes(b"PK\x03\x04")  # the start of an .npz
    with pytest.warns(UserWarning, match=r"2 leftovers of interrupted runs.*1\.0 MiB") as seen:
        vbsnmf.io.check_outdir(tmp_path / "out")
    message = str(seen[0].message)
    assert ".out.ab12cd34.tmp" in message and ".out.notours" not in message
    assert "previous holds the output a run was replacing" in message
    with pytest.warns(UserWarning, match=r"1 leftover of.*\.fit\.npz\.ij90kl12\.tmp\.npz"):
        vbsnmf.io.check_checkpoint_path(tmp_path / "fit.npz")
    assert len(list(tmp_path.iterdir())) == 4  # reported, not deleted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vbsnmf.io.check_outdir(tmp_path / "other")  # nothing of its own left: no warning


def test_an_input_changed_during_a_streamed_fit_is_not_fitted(tmp_path, monkeypatch, capfd):
    """An .h5ad truncated while `fit --solver svi` streamed it: the missing bytes were read
    as zeros, and the command wrote a result without a single count (exit 0)."""
    from test_hostile import FIT, SVI, h5ad

    source = h5ad(tmp_path)
    fit = vbsnmf.cli._fit

    def fit_then_change(*args, **kwargs):
        seconds = fit(*args, **kwargs)
        with open(source, "ab") as handle:  # another program writes the input meanwhile
            handle.write(b"\0" * 10)
        return seconds

    monkeypatch.setattr(vbsnmf.cli, "_fit", fit_then_change)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = vbsnmf.cli.main(["fit", "small.h5ad", *FIT, *SVI, "-o", "out"])
    assert code == 2
    assert "small.h5ad changed while it was read" in capfd.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["small.h5ad"]
