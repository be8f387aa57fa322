"""Checkpoints: the thirty-third hostile review's defects, one test each, and guards.

Each test says in its docstring what was wrong; a guard (it passed before the review's
fixes too) says so.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from interrupted import Stop, stop_at

from vbsnmf import VBNMF, VBNTF, cli
from vbsnmf._checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    load_checkpoint,
    read_checkpoint_meta,
    read_checkpoint_trace,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _counts(n_cells=60, n_genes=25, seed=0) -> sp.csr_array:
    return sp.csr_array(np.random.default_rng(seed).poisson(0.5, (n_cells, n_genes)).astype(float))


def _tensor(seed=1):
    counts = np.random.default_rng(seed).poisson(0.8, (12, 10, 5)).astype(float)
    return np.argwhere(counts), counts[counts != 0], counts.shape


def _add_arrays(path, **added) -> None:
    """Rewrite the checkpoint at ``path`` with the arrays ``added`` beside its own."""
    arrays = dict(np.load(path))
    np.savez(path, **{**arrays, **added})


def _claim_rows(path, member: str, rows: int) -> None:
    """Rewrite ``path`` with ``member``'s header claiming ``rows`` x 3 float64 values
    (its data left at 64 bytes)."""
    with zipfile.ZipFile(path) as source:
        members = [(info, source.read(info.filename)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w") as out:
        for info, data in members:
            if info.filename == member:
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    header, {"descr": "<f8", "fortran_order": False, "shape": (rows, 3)}
                )
                data = header.getvalue() + b"\0" * 64
            out.writestr(info, data)


# -- a fixed-prior checkpoint holding the learned prior's arrays ---------------------------
FIXED_MATRIX_CASES = [
    ({"solver": "svi", "batch_size": 20}, "n_epochs", 2, "cell_sums_scale", (2,)),
    ({"solver": "svi", "batch_size": 20}, "n_epochs", 2, "row_scale_shape", (60,)),
    ({"solver": "svi", "svi_form": "nonzeros"}, "n_epochs", 2, "cell_sums_scale", (3,)),
    ({}, "max_iter", 3, "col_scale_shape", (25,)),
    ({"accelerate": True}, "max_iter", 4, "current_row_scale_shape", (60,)),
]


@pytest.mark.parametrize(("options", "limit", "done", "added", "shape"), FIXED_MATRIX_CASES)
def test_fixed_prior_checkpoint_with_learned_prior_arrays_is_refused_as_damaged(
    tmp_path, options, limit, done, added, shape
):
    """A ``prior="gamma"`` checkpoint holding an array only the learned prior saves (SVI's
    sums over cells, a side's scale q) was read as it was: numpy's "not enough values to
    unpack (expected 3, got 2)" ValueError or a KeyError ``'row_scale_prior'`` leaked from
    ``fit(resume=True)`` (or the sums were silently taken in); it is a damaged checkpoint
    (CheckpointError naming the file)."""
    path = tmp_path / "fixed.npz"
    fit = dict(prior="gamma", random_state=0, n_threads=1, checkpoint=path, **options)
    VBNMF(3, **fit, **{limit: done}).fit(_counts())
    _add_arrays(path, **{added: np.ones(shape)})
    with pytest.raises(
        CheckpointError, match=f"damaged: it holds {added}, an array of the learned"
    ):
        VBNMF(3, **fit, **{limit: done + 2}, resume=True).fit(_counts())


@pytest.mark.parametrize("form", ["nonzeros", "slices"])
def test_fixed_prior_tensor_checkpoint_with_sums_over_slices_is_refused_as_damaged(tmp_path, form):
    """A fixed-prior ``VBNTF`` SVI checkpoint holding the learned prior's sums over slices
    (``local_sums``) leaked numpy's unpacking ValueError from ``fit(resume=True)``: the
    tensor's check refused the scale arrays of the learned prior, not its sums."""
    path = tmp_path / "tensor.npz"
    fit = dict(n_components=3, prior="gamma", solver="svi", svi_form=form, random_state=0)
    fit.update(n_threads=1, checkpoint=path, svi_mode=0 if form == "slices" else None)
    VBNTF(**fit, n_epochs=2).fit(*_tensor())
    _add_arrays(path, local_sums=np.ones(2))
    with pytest.raises(CheckpointError, match="damaged: it holds sums over slices"):
        VBNTF(**fit, n_epochs=4, resume=True).fit(*_tensor())


@pytest.mark.parametrize("solver", ["batch", "svi"])
def test_learned_prior_checkpoint_still_resumes_bitwise(tmp_path, solver):
    """Guard (passed before): the learned prior's own checkpoints, which hold these arrays,
    resume bit for bit as the uninterrupted fit (plain ascent and SVI's cells form)."""
    path = tmp_path / "learned.npz"
    limit = "max_iter" if solver == "batch" else "n_epochs"
    fit = dict(random_state=0, n_threads=1, solver=solver, accelerate=None)
    if solver == "batch":
        fit["accelerate"] = False
    else:
        fit["batch_size"] = 20
    whole = VBNMF(3, **fit, **{limit: 6}).fit(_counts())
    VBNMF(3, **fit, **{limit: 3}, checkpoint=path).fit(_counts())
    resumed = VBNMF(3, **fit, **{limit: 6}, checkpoint=path, resume=True).fit(_counts())
    np.testing.assert_array_equal(resumed.elbo_trace_, whole.elbo_trace_)
    np.testing.assert_array_equal(resumed.components_, whole.components_)


# -- an array header claiming more than the file holds -------------------------------------
def test_array_header_claiming_huge_array_is_refused_not_a_memory_error(tmp_path):
    """A checkpoint whose array header claims 6e12 rows (a damaged or hand-made ``.npz``)
    leaked numpy's ``MemoryError`` ("Unable to allocate 131. TiB"): numpy allocates the
    claimed array before reading the member. It is refused as damaged, naming the array."""
    path = tmp_path / "ckpt.npz"
    fit = dict(prior="gamma", random_state=0, n_threads=1, checkpoint=path)
    VBNMF(3, **fit, max_iter=3).fit(_counts())
    _claim_rows(path, "row_shape.npy", 6 * 10**12)
    with pytest.raises(CheckpointError, match="its array row_shape claims 144,000,000,000,000"):
        VBNMF(3, **fit, max_iter=6, resume=True).fit(_counts())
    with pytest.raises(CheckpointError, match="not a vbsnmf checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("member", ["__meta__.npy", "elbo_trace.npy"])
def test_meta_and_trace_headers_claiming_huge_arrays_are_refused(tmp_path, member):
    """The same damage in the metadata or the ELBO trace, which the path check and
    ``tl.nmf``'s warm-start check read alone, leaked the ``MemoryError`` there."""
    path = tmp_path / "ckpt.npz"
    VBNMF(3, prior="gamma", random_state=0, n_threads=1, max_iter=3, checkpoint=path).fit(_counts())
    _claim_rows(path, member, 6 * 10**12)
    read = read_checkpoint_meta if member == "__meta__.npy" else read_checkpoint_trace
    with pytest.raises(CheckpointError, match="claims"):
        read(path)


def test_cli_resume_of_a_header_claiming_huge_array_is_not_out_of_memory(tmp_path, capsys):
    """The command line reported that damaged checkpoint as "out of memory while fitting:
    Unable to allocate 131. TiB", sending the user to a larger machine; it names the
    checkpoint as damaged (one line, exit 2)."""
    matrix = tmp_path / "x.mtx"
    scipy.io.mmwrite(matrix, sp.coo_matrix(_counts()))
    ckpt = tmp_path / "ckpt.npz"
    command = ["fit", str(matrix), "--cells-as-rows", "-k", "3", "--prior", "gamma", "--quiet"]
    command += ["--threads", "1", "--checkpoint", str(ckpt)]
    assert cli.main([*command, "-o", str(tmp_path / "o1"), "--max-iter", "3"]) == 0
    _claim_rows(ckpt, "row_shape.npy", 6 * 10**12)
    capsys.readouterr()
    code = cli.main([*command, "-o", str(tmp_path / "o2"), "--max-iter", "6", "--resume"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1, error
    assert "memory" not in error and "ckpt.npz is not a vbsnmf checkpoint" in error


def test_header_within_the_member_still_reads(tmp_path):
    """Guard (passed before): a checkpoint whose arrays fit their members loads whole,
    through the checked reader (every array as saved)."""
    path = tmp_path / "ckpt.npz"
    VBNMF(3, prior="gamma", random_state=0, n_threads=1, max_iter=3, checkpoint=path).fit(_counts())
    arrays, meta = load_checkpoint(path)
    stored = dict(np.load(path))
    assert sorted(arrays) == sorted(name for name in stored if name != "__meta__")
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, stored[name])
    assert meta["finished"] is True


# -- guards of the promises the docstrings make -----------------------------------------
@pytest.mark.parametrize(
    ("options", "limit"),
    [
        ({"accelerate": False}, "max_iter"),
        ({}, "max_iter"),
        ({"prior": "gamma", "accelerate": True}, "max_iter"),
        ({"solver": "svi", "batch_size": 25}, "n_epochs"),
    ],
)
def test_fit_killed_between_saves_resumes_bitwise(tmp_path, options, limit):
    """Guard (passed before): a fit stopped by an exception at an iteration that is no
    multiple of ``checkpoint_every=3`` resumes from its last save to the uninterrupted
    fit's trace, iterations, loadings, ``n_iter_`` and ``converged_``, bit for bit."""
    X = _counts(80, 30)
    fit = dict(random_state=0, n_threads=1, **options, **{limit: 8 if "solver" in options else 20})
    whole = VBNMF(3, **fit).fit(X)
    path = tmp_path / "ckpt.npz"
    with pytest.raises(Stop):
        VBNMF(3, **fit, checkpoint=path, checkpoint_every=3).fit(X, callback=stop_at(5))
    resumed = VBNMF(3, **fit, checkpoint=path, checkpoint_every=3, resume=True).fit(X)
    np.testing.assert_array_equal(resumed.elbo_trace_, whole.elbo_trace_)
    np.testing.assert_array_equal(resumed.elbo_iter_, whole.elbo_iter_)
    np.testing.assert_array_equal(resumed.components_, whole.components_)
    assert (resumed.n_iter_, resumed.converged_) == (whole.n_iter_, whole.converged_)


def test_svi_checkpoint_resumes_across_input_routes(tmp_path):
    """Guard (passed before): an SVI cells-form checkpoint saved from an ``.h5ad`` path
    resumes on the same counts in memory (and the reverse), the same fit bit for bit: the
    fingerprint is of the entries, not of the route or the storage dtype."""
    import anndata as ad

    X = sp.csr_matrix(_counts(80, 30)).astype(np.float32)
    file = tmp_path / "x.h5ad"
    ad.AnnData(X).write_h5ad(file)
    fit = dict(n_components=3, solver="svi", batch_size=25, random_state=0, n_threads=1)
    whole = VBNMF(**fit, n_epochs=5).fit(X)
    for first, second in ((str(file), X.astype(np.int32)), (X.toarray(), str(file))):
        path = tmp_path / "ckpt.npz"
        path.unlink(missing_ok=True)
        VBNMF(**fit, n_epochs=2, checkpoint=path).fit(first)
        resumed = VBNMF(**fit, n_epochs=5, checkpoint=path, resume=True).fit(second)
        np.testing.assert_array_equal(resumed.elbo_trace_, whole.elbo_trace_)


def test_resume_on_genes_in_another_order_is_refused_naming_genes(tmp_path):
    """The same counts with the genes reversed (same shape, nonzeros and total), refused as
    other data, were explained "such as cells in another order": the genes are named too."""
    X = _counts()
    path = tmp_path / "ckpt.npz"
    fit = dict(prior="gamma", random_state=0, n_threads=1, checkpoint=path)
    VBNMF(3, **fit, max_iter=3).fit(X)
    with pytest.raises(CheckpointMismatchError, match="such as cells or genes in another order"):
        VBNMF(3, **fit, max_iter=6, resume=True).fit(X[:, ::-1])


# -- the command line's mismatch under the other prior -------------------------------------
@pytest.mark.parametrize(
    ("first", "second"), [("hierarchical", "gamma"), ("gamma", "hierarchical")]
)
def test_cli_resume_under_the_other_prior_names_no_python_parameters(
    tmp_path, capsys, first, second
):
    """``vbsnmf fit --resume`` under the other ``--prior`` said "--prior: checkpoint
    'hierarchical' vs now 'gamma' (prior_shape=1.0, prior_rate=1.0)": Python parameters
    of a prior no option changes (the command line's gamma prior is Gamma(1, 1))."""
    matrix = tmp_path / "x.mtx"
    scipy.io.mmwrite(matrix, sp.coo_matrix(_counts()))
    command = ["fit", str(matrix), "--cells-as-rows", "-k", "3", "--quiet", "--max-iter", "3"]
    command += ["--threads", "1", "--checkpoint", str(tmp_path / "ckpt.npz")]
    assert cli.main([*command, "-o", str(tmp_path / "o1"), "--prior", first]) == 0
    capsys.readouterr()
    code = cli.main([*command, "-o", str(tmp_path / "o2"), "--prior", second, "--resume"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1, error
    assert f"(--prior: checkpoint '{first}' vs now '{second}');" in error
    assert "prior_shape" not in error and "prior_rate" not in error


def test_python_resume_under_the_other_prior_still_names_its_parameters(tmp_path):
    """Guard (passed before): the Python API's mismatch keeps the gamma prior's parameters,
    which ``VBNMF`` sets (``prior_shape``, ``prior_rate``)."""
    path = tmp_path / "ckpt.npz"
    fit = dict(random_state=0, n_threads=1, max_iter=3, checkpoint=path)
    VBNMF(3, prior="gamma", **fit).fit(_counts())
    with pytest.raises(CheckpointMismatchError, match=r"'gamma' \(prior_shape=1\.0, prior_rate"):
        VBNMF(3, **fit, resume=True).fit(_counts())
