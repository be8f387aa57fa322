"""Fortieth hostile pass, a reread of the code the last session added.

- The classical memory guard (`vbsnmf.classic._memory`) estimated a sparse X with dense
  weights as the sparse route's two copies and exclusion list, but under a loss undefined
  at zero (Itakura-Saito, ...) the fit lists only the entries of weight > 0 (`ClassicData.
  build`): the estimate was 22 to 57 times the peak tracemalloc measures, and refused fits
  that fitted. A sparse X storing every entry under such a loss, listed alike, was
  estimated at 0.7 times its peak. Dense float64 weights in Fortran order were counted as
  copied, which the validation does not do.
- ``VBSNMF_NO_MEMORY_GUARD=false`` (or ``no``, ``off``) turned the guard off.
- `vbsnmf._version.checkout_commit`, run as the package is imported, raised ValueError for
  a NUL byte in HEAD's ref or in a ``.git`` file's gitdir (the import failed), blocked on a
  named pipe in HEAD's place, read a ``.git`` file's gitdir with its later lines, and took
  ``pkg/`` (a trailing separator) for its own parent folder.
- The dense route's row blocks (`_data.dense_row_blocks`) on X of every form numpy and
  scikit-learn hand it (read-only, a read-only memmap, Fortran order, integers, one row,
  a block of one row or larger than X), with dense weights: the textbook update on X
  whole, and X and the weights never written.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import scipy.sparse as sp
from traced import traced_peak

from vbsnmf import _memory, _utils
from vbsnmf.classic import NMF, _data
from vbsnmf.classic._memory import check_classic_fit_memory

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*stopped (after|at) max_iter"),
    pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning"),
]

K = 4


def _counts(n_rows, n_cols, density, seed=0) -> sp.csr_matrix:
    matrix = sp.random(n_rows, n_cols, density=density, format="csr", random_state=seed)
    matrix.data = np.ceil(matrix.data * 5)
    return matrix


def _estimate(X, weights=None, loss="is"):
    """The guard's estimate of a ``solver="mu"`` fit under ``loss``, memory unknown."""
    from vbsnmf.classic.losses import resolve_loss

    spec = resolve_loss(loss, None, None)
    saved = _memory.available_memory
    _memory.available_memory = lambda: None
    try:
        return check_classic_fit_memory(
            X,
            K,
            solver="mu",
            weights=weights,
            # the keyword this pass added; the code before had none
            **({"defined_at_zero": False} if spec.zero_power is None else {}),
        )
    finally:
        _memory.available_memory = saved


def _fit_peak(X, loss, weights=None):
    warm = None if weights is None else weights[:40]
    NMF(K, loss=loss, max_iter=2, random_state=0, weights=warm).fit(X[:40])  # compile first
    model = NMF(K, loss=loss, max_iter=3, random_state=0, weights=weights)
    _, peak = traced_peak(model.fit, X)
    return peak


# -- the memory guard ------------------------------------------------------------------------


def _weights_at_nonzeros(X, seed=0):
    """Dense weights > 0 only at X's nonzeros (a loss undefined at zero needs them so),
    some of them 0 and others not 1."""
    weights = np.zeros(X.shape)
    rows, cols = X.nonzero()
    values = np.random.default_rng(seed).random(rows.size) * 2
    weights[rows, cols] = np.where(values < 0.3, 0.0, values)
    return weights


def test_sparse_x_with_dense_weights_under_a_loss_undefined_at_zero(monkeypatch):
    """The estimate bounds the measured peak within 2x (22x before), and a fit with twice
    its peak available is not refused (it was)."""
    X = _counts(2000, 400, 0.05)
    weights = _weights_at_nonzeros(X)
    peak = _fit_peak(X, "is", weights)
    estimate = _estimate(X, weights)["total"]
    assert peak <= estimate <= 2 * peak, (peak, estimate)
    monkeypatch.setattr(_memory, "available_memory", lambda: 2 * peak)
    model = NMF(K, loss="is", max_iter=2, random_state=0, weights=weights).fit(X)
    assert np.isfinite(model.components_).all()


def test_sparse_x_storing_every_entry_under_a_loss_undefined_at_zero():
    """Listed as a pattern of every entry (0.7 times the peak before)."""
    X = sp.csr_matrix(np.random.default_rng(1).poisson(3.0, size=(60, 800)) + 1.0)
    peak = _fit_peak(X, "is")
    estimate = _estimate(X)["total"]
    assert peak <= estimate <= 2 * peak, (peak, estimate)


def test_dense_weights_in_fortran_order_are_not_counted_as_copied():
    """The validation converts dense weights' dtype, not their order: float64 weights in
    Fortran order are estimated as C-ordered ones, float32 ones as copied."""
    X = np.random.default_rng(0).poisson(0.5, size=(600, 300)).astype(np.float64)
    weights = (np.random.default_rng(1).random(X.shape) > 0.1).astype(np.float64)
    by_c = _estimate(X, weights, loss="kl")
    assert _estimate(X, np.asfortranarray(weights), loss="kl") == by_c
    assert _estimate(X, weights.astype(np.float32), loss="kl")["input"] == by_c["input"] + (
        8 * X.size
    )
    peak = _fit_peak(X, "kl", np.asfortranarray(weights))
    assert peak <= by_c["total"] <= 2 * peak, (peak, by_c)


@pytest.mark.parametrize("value", ["0", "", " 0 ", "false", "False", "no", "OFF"])
def test_a_switch_set_to_off_leaves_the_guard_on(value, monkeypatch):
    monkeypatch.setenv("VBSNMF_NO_MEMORY_GUARD", value)
    monkeypatch.setattr(_memory, "available_memory", lambda: 1000)
    with pytest.raises(_memory.InsufficientMemoryError):
        NMF(K, max_iter=2, random_state=0).fit(_counts(200, 50, 0.1))


@pytest.mark.parametrize("value", ["1", "yes", "true", "on"])
def test_a_switch_set_to_on_turns_the_guard_off(value, monkeypatch):
    monkeypatch.setenv("VBSNMF_NO_MEMORY_GUARD", value)
    monkeypatch.setattr(_memory, "available_memory", lambda: 1000)
    model = NMF(K, max_iter=2, random_state=0).fit(_counts(200, 50, 0.1))
    assert model.components_.shape == (K, 50)


@pytest.mark.parametrize("value", ["false", "Off", "no"])
def test_the_command_line_reads_its_debug_switch_alike(value, monkeypatch, capsys):
    """VBSNMF_DEBUG=false keeps an unexpected error's one line, as =0 does (its traceback
    before), by the values that leave the memory guard on."""
    from vbsnmf import cli

    assert tuple(cli._SWITCH_OFF_VALUES) == tuple(_utils.SWITCH_OFF_VALUES)
    monkeypatch.setenv("VBSNMF_DEBUG", value)
    monkeypatch.setattr(cli, "_run_umap", lambda args: 1 / 0)
    assert cli.main(["umap", "r.h5ad", "-o", "u.png"]) == 1
    assert "internal error (ZeroDivisionError" in capsys.readouterr().err


# -- the commit checked out ------------------------------------------------------------------

_SHA = "0123456789abcdef0123456789abcdef01234567"
_OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def _checkout(root) -> tuple[str, object]:
    """A folder laid out as vbsnmf's checkout: (its package folder, its .git path)."""
    (root / "vbsnmf").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\r\nname = "vbsnmf"\r\n')
    return str(root / "vbsnmf"), root / ".git"


def _git(dot_git, head: str):
    (dot_git / "refs" / "heads").mkdir(parents=True)
    (dot_git / "HEAD").write_bytes(head.encode())
    return dot_git


def test_damaged_git_files_give_none_never_an_error(tmp_path):
    """A NUL byte in HEAD's ref or in the gitdir a ``.git`` file names (ValueError from
    ``open`` before: the package's import failed), an empty gitdir, a gitdir that does not
    exist, a branch that does not exist, HEAD a folder."""
    from vbsnmf._version import checkout_commit

    package, dot_git = _checkout(tmp_path / "nul_ref")
    _git(dot_git, "ref: refs/heads/ma\0in\n")
    assert checkout_commit(package) is None

    for name, pointer in [
        ("nul_gitdir", "gitdir: wor\0ktree\n"),
        ("empty_gitdir", "gitdir:\n"),
        ("nowhere", "gitdir: /no/such/folder/.git\n"),
        ("not_git", "this is no pointer\n"),
    ]:
        package, dot_git = _checkout(tmp_path / name)
        dot_git.write_text(pointer)
        assert checkout_commit(package) is None, name

    package, dot_git = _checkout(tmp_path / "missing_branch")
    _git(dot_git, "ref: refs/heads/gone\n")
    (dot_git / "refs" / "heads" / "main").write_text(_SHA + "\n")
    (dot_git / "packed-refs").write_text(f"{_OTHER} refs/heads/other\n")
    assert checkout_commit(package) is None

    package, dot_git = _checkout(tmp_path / "head_folder")
    (dot_git / "HEAD").mkdir(parents=True)
    assert checkout_commit(package) is None


def test_crlf_peeled_lines_symlinks_and_a_gitdir_of_several_lines(tmp_path):
    from vbsnmf._version import checkout_commit

    package, dot_git = _checkout(tmp_path / "crlf")
    _git(dot_git, "ref: refs/heads/main\r\n")
    (dot_git / "refs" / "heads" / "main").write_bytes((_SHA + "\r\n").encode())
    assert checkout_commit(package) == _SHA
    assert checkout_commit(package + os.sep) == _SHA  # "pkg/": its parent is the checkout

    package, dot_git = _checkout(tmp_path / "peeled")
    _git(dot_git, "ref: refs/tags/v1\r\n")
    (dot_git / "packed-refs").write_bytes(
        (
            "# pack-refs with: peeled fully-peeled sorted\r\n"
            f"{_OTHER} refs/tags/v1\r\n^{_SHA}\r\n{_SHA} refs/heads/main\r\n"
        ).encode()
    )
    assert checkout_commit(package) == _OTHER  # the ref's own object, not the peeled line

    # .git a symbolic link to the git folder; then one to nothing
    package, link = _checkout(tmp_path / "linked")
    target = _git(tmp_path / "elsewhere.git", "ref: refs/heads/main\n")
    (target / "refs" / "heads" / "main").write_text(_SHA + "\n")
    link.symlink_to(target, target_is_directory=True)
    assert checkout_commit(package) == _SHA
    package, link = _checkout(tmp_path / "dangling")
    link.symlink_to(tmp_path / "no_such.git")
    assert checkout_commit(package) is None

    # a .git file whose gitdir is followed by other lines (git reads the first)
    package, dot_git = _checkout(tmp_path / "worktree")
    dot_git.write_text(f"gitdir: {target}\r\nsomething else\n")
    assert checkout_commit(package) == _SHA


def test_a_named_pipe_in_heads_place_does_not_hold_the_import(tmp_path):
    """HEAD a named pipe: the code before blocked in ``open`` until a writer came."""
    from vbsnmf._version import checkout_commit

    package, dot_git = _checkout(tmp_path / "fifo")
    (dot_git / "refs" / "heads").mkdir(parents=True)
    os.mkfifo(dot_git / "HEAD")
    found = []
    reader = threading.Thread(target=lambda: found.append(checkout_commit(package)), daemon=True)
    reader.start()
    reader.join(5)
    blocked = reader.is_alive()
    if blocked:  # release the blocked reader before failing
        with open(os.open(dot_git / "HEAD", os.O_WRONLY | os.O_NONBLOCK), "w") as pipe:
            pipe.write("")
        reader.join(5)
    assert not blocked and found == [None]


# -- the dense route's blocks on every form of dense X ---------------------------------------


def _whole_weighted_iteration(X, weights, W, H, n_iter):
    """``n_iter`` textbook KL multiplicative iterations on X whole with entry weights M:
    ``W <- W ((M X / Q) H^T) / (M H^T)``, then H alike, and the losses
    ``sum M (x log(x / q) - x + q)`` before each iteration and after the last."""

    def loss(W, H):
        Q = W @ H
        return float(np.sum(weights * (X * np.log(X / Q) - X + Q)))

    trace = []
    for _ in range(n_iter):
        trace.append(loss(W, H))
        W = W * ((weights * X / (W @ H)) @ H.T) / (weights @ H.T)
        H = H * (W.T @ (weights * X / (W @ H))) / (W.T @ weights)
    trace.append(loss(W, H))
    return W, H, trace


def _forms(X, tmp_path):
    """X as read-only, a read-only memmap, Fortran-ordered and integer arrays."""
    read_only = X.copy()
    read_only.flags.writeable = False
    path = tmp_path / "x.dat"
    stored = np.memmap(path, dtype=np.float64, mode="w+", shape=X.shape)
    stored[:] = X
    stored.flush()
    del stored
    return {
        "read-only": read_only,
        "memmap": np.memmap(path, dtype=np.float64, mode="r", shape=X.shape),
        "fortran": np.asfortranarray(X),
        "int": X.astype(np.int64),
    }


@pytest.mark.parametrize("block_rows", [1, 7, 10**6])
def test_blocked_weighted_fits_of_every_dense_form_are_the_textbook_update(
    block_rows, tmp_path, monkeypatch
):
    """Blocks of one row, of 7 rows (X transposed's last block short) and larger than X:
    W, H and the loss trace agree with the whole-matrix update to 1e-11 relative, and
    neither X nor the (read-only) weights are written."""
    rng = np.random.default_rng(3)
    X = rng.poisson(2.0, size=(30, 23)).astype(np.float64) + 1.0
    weights = rng.random(X.shape) + 0.5
    weights.flags.writeable = False
    W0, H0 = rng.random((30, 3)) + 0.1, rng.random((3, 23)) + 0.1
    expected_W, expected_H, expected_trace = _whole_weighted_iteration(X, weights, W0, H0, 3)
    # a block's bytes for `block_rows` rows of X (X transposed's rows are narrower)
    monkeypatch.setattr(_data, "DENSE_BLOCK_BYTES", 8 * X.shape[1] * block_rows)
    for name, form in _forms(X, tmp_path).items():
        before = np.array(form, copy=True)
        model = NMF(3, solver="mu", loss="kl", init="custom", max_iter=3, tol=0.0, weights=weights)
        W = model.fit_transform(form, W=W0.copy(), H=H0.copy())
        np.testing.assert_allclose(W, expected_W, rtol=1e-11, err_msg=name)
        np.testing.assert_allclose(model.components_, expected_H, rtol=1e-11, err_msg=name)
        np.testing.assert_allclose(model.loss_trace_, expected_trace, rtol=1e-11, err_msg=name)
        assert np.array_equal(np.asarray(form), before), name


def test_one_row_of_x_and_a_matrix_or_non_finite_x_are_told(monkeypatch):
    """X of one row fits (K = 1) in blocks of one row; np.matrix, NaN and inf are typed
    errors that say what is wrong, before any block. An np.matrix X or weights are refused
    as such with little memory available too (the guard's estimate called one out of
    memory before, advice that did not help)."""
    monkeypatch.setattr(_data, "DENSE_BLOCK_BYTES", 8)
    X = np.arange(1.0, 9.0)[None, :]
    model = NMF(1, solver="mu", loss="kl", max_iter=50, random_state=0)
    W = model.fit_transform(X)
    np.testing.assert_allclose(W @ model.components_, X, rtol=1e-6)
    with pytest.raises(TypeError, match=r"np\.matrix"):
        NMF(1, max_iter=2).fit(np.asmatrix(np.ones((3, 4))))
    monkeypatch.setattr(_memory, "available_memory", lambda: 1000)
    with pytest.raises(TypeError, match=r"np\.matrix"):
        NMF(1, max_iter=2).fit(np.asmatrix(np.ones((30, 40))))
    with pytest.raises(TypeError, match=r"np\.matrix"):
        NMF(1, max_iter=2, weights=np.asmatrix(np.ones((30, 40)))).fit(np.ones((30, 40)))
    monkeypatch.undo()
    for value, word in [(np.nan, "NaN"), (np.inf, "infinity")]:
        bad = np.ones((3, 4))
        bad[1, 2] = value
        with pytest.raises(ValueError, match=word):
            NMF(1, max_iter=2).fit(bad)
