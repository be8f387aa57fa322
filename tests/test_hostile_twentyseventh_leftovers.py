"""Items the twenty-sixth session's closing note left, fixed in the twenty-seventh.

- ``vbsnmf fit --force`` that found files the user saved into OUTDIR while the fit ran
  left OUTDIR as it was (right) and discarded the finished new output (hours of fit,
  possibly): the new output is now kept beside it, as ``OUTDIR.new`` (``-2``, ... when
  taken), and the error names it.
- ``VBNMF().fit(X, init=VBNMF())``, an unfitted donor, raised a TypeError; scikit-learn
  raises ``NotFittedError`` for an estimator used before ``fit``.
- "holds 1 entries" read as a slip.
- A conversion (``mtx_to_h5ad``, ``--convert-to``) or ``write_result`` killed by SIGKILL
  left its hidden temporary, as large as the file, beside the target for good: the next
  write of the same file removes it (its temporary is locked while it is written).
- A classical `NMF.transform` of zeros under a loss undefined there advised "use weights",
  which transform does not take.
- Counts near 1e-250 under the learned prior let numpy's "divide by zero" RuntimeWarning
  through before the typed FloatingPointError.
- ``write_nmf_tables`` wrote a name holding NUL as it is; readers cut it there.
- ``VBNMF().fit(b"counts.h5ad")`` said "X must be 2-D, got an array of shape ()".
- ``pl.elbo``'s gap panel left out the points of a noisy (SVI) trace above its final value
  without a word (noted by the twenty-eighth pass).
- SVI on counts far below 1 advised only a smaller step or larger minibatches (noted by
  the twenty-eighth pass); the batch path's message names the count scale.
- The command line said "the folder F for out does not exist" of a file F, and "1
  iterations" (both noted by the twenty-eighth pass).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from vbsnmf import VBNMF, io, tl
from vbsnmf._base import NotFittedError
from vbsnmf.io import UnsafePathError
from vbsnmf.io._paths import check_earlier_output, clear_hdf5_leftovers
from vbsnmf.io._write import atomic_hdf5


def _refused_swap(tmp_path, user_files=("notes.txt",)):
    """An atomic_directory whose OUTDIR gains ``user_files`` while the block runs."""
    outdir = tmp_path / "out"
    with pytest.raises(UnsafePathError) as raised:
        with io.atomic_directory(
            outdir,
            overwrite=True,
            replaceable=lambda target: check_earlier_output(target, done=True),
        ) as temporary:
            (temporary / "result.h5ad").write_text("new")
            for name in user_files:
                (outdir / name).write_text("mine")
    return str(raised.value)


def test_a_refused_swap_keeps_the_new_output_under_the_next_free_name(tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "result.h5ad").write_text("earlier")
    (tmp_path / "out.new").mkdir()  # the user's folder of that name, empty: never replaced
    message = _refused_swap(tmp_path)
    assert message.endswith(f"the new output is in {tmp_path / 'out.new-2'}")
    assert os.listdir(tmp_path / "out.new") == []
    assert (tmp_path / "out.new-2" / "result.h5ad").read_text() == "new"
    assert (outdir / "result.h5ad").read_text() == "earlier"
    assert (outdir / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["out", "out.new", "out.new-2"]  # no temporary


def test_a_kept_output_has_the_permissions_of_the_folder_it_would_have_replaced(tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir(mode=0o700)
    (outdir / "result.h5ad").write_text("earlier")
    (outdir / "result.h5ad").chmod(0o600)
    outdir.chmod(0o700)
    _refused_swap(tmp_path)
    assert (tmp_path / "out.new").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "out.new" / "result.h5ad").stat().st_mode & 0o777 == 0o600


def test_one_foreign_entry_is_counted_in_the_singular(tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "result.h5ad").write_text("earlier")
    assert "now holds 1 entry vbsnmf does not write (notes.txt)" in _refused_swap(tmp_path)
    (outdir / "more.txt").write_text("mine")
    with pytest.raises(UnsafePathError, match="holds 2 entries vbsnmf does not write"):
        check_earlier_output(outdir)


def test_an_unfitted_vbnmf_as_init_is_scikit_learns_not_fitted_error():
    counts = sp.random(30, 12, density=0.5, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 10)
    with pytest.raises(NotFittedError, match="This VBNMF instance is not fitted yet"):
        VBNMF(n_components=2).fit(counts, init=VBNMF(n_components=2))
    # anything else that is no start keeps its TypeError, which lists what init takes
    with pytest.raises(TypeError, match="init must be a fitted VBNMF"):
        VBNMF(n_components=2).fit(counts, init=object())


# -- a killed write of an .h5ad left its temporary, as large as the file, for good -----------
_KILLED_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from vbsnmf.io._write import atomic_hdf5

with atomic_hdf5(Path(sys.argv[1])) as (out, check):
    out.create_dataset("x", data=np.arange(100_000.0))
    out.flush()
    print("writing", flush=True)
    time.sleep(120)
"""


def _aged(path: Path) -> None:
    """``path`` last changed two minutes ago: leftovers younger than a minute are kept."""
    old = time.time() - 120
    os.utime(path, (old, old))


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("write", ["mtx_to_h5ad", "write_result"])
def test_the_next_write_removes_a_killed_writes_temporary(tmp_path, write):
    target = tmp_path / "counts.h5ad"
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
    finally:
        writer.kill()
        writer.communicate()
    (left,) = _temporaries(tmp_path)
    assert left.startswith(".counts.h5ad.") and left.endswith(".tmp.h5ad")
    _aged(tmp_path / left)
    matrix = sp.random(5, 4, density=0.5, format="csc", random_state=0)
    matrix.data = np.ceil(matrix.data * 10)
    with pytest.warns(UserWarning, match=rf"removed 1 leftover of killed runs .*{left}"):
        if write == "mtx_to_h5ad":
            scipy.io.mmwrite(tmp_path / "m.mtx", matrix)
            io.mtx_to_h5ad(tmp_path / "m.mtx", target)
        else:
            io.write_result(ad.AnnData(matrix.T.tocsr()), target)
    assert _temporaries(tmp_path) == []
    assert ad.read_h5ad(target).shape == (4, 5)


def test_a_live_writes_temporary_and_a_users_file_of_that_name_are_left(tmp_path):
    target = tmp_path / "counts.h5ad"
    users = tmp_path / ".counts.h5ad.abcdefgh.tmp.h5ad"
    users.write_text("the user's notes")
    _aged(users)
    with atomic_hdf5(target) as (out, _):
        out.create_dataset("x", data=np.arange(10.0))
        (live,) = set(_temporaries(tmp_path)) - {users.name}
        _aged(tmp_path / live)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # neither is reported as a leftover
            clear_hdf5_leftovers(target)
        assert sorted(_temporaries(tmp_path)) == sorted([live, users.name])
    assert users.read_text() == "the user's notes"
    assert _temporaries(tmp_path) == [users.name]


# -- transform under a loss undefined at zero advised weights, which it does not take -------
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_transform_of_zeros_under_itakura_saito_does_not_advise_weights(kind):
    from vbsnmf import NMF

    rows = np.random.default_rng(0).uniform(1.0, 2.0, (20, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged in 20 iterations
        model = NMF(2, loss="itakura-saito", max_iter=20, random_state=0).fit(rows)
    rows[0, 0] = 0.0
    new = rows if kind == "dense" else sp.csr_matrix(rows)
    with pytest.raises(ValueError, match="transform takes no weights") as raised:
        model.transform(new)
    assert "use weights" not in str(raised.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rows not converged in 20 iterations
        assert model.transform(rows[1:]).shape == (19, 2)  # rows without zeros: transformed


def test_counts_near_1e_250_are_one_typed_error_without_numpys_warning():
    counts = sp.random(30, 12, density=0.5, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 10) * 1e-250
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # not counts; not converged
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "divide by zero in log"
        with pytest.raises(FloatingPointError, match="counts on an extreme scale"):
            VBNMF(2, max_iter=5).fit(counts)


def test_tables_refuse_a_name_with_a_nul_that_would_be_read_back_cut(tmp_path):
    counts = sp.random(30, 12, density=0.5, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 10)
    adata = ad.AnnData(counts)
    names = [f"c{i}" for i in range(30)]
    names[1] = 'x\ny\tz"'  # quoted, and read back as it was: a guard
    adata.obs_names = names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged in 3 iterations
        tl.nmf(adata, 2, max_iter=3)
    io.write_nmf_tables(adata, tmp_path)
    table = pd.read_csv(tmp_path / "cell_factors.tsv.gz", sep="\t", index_col=0)
    assert table.index.tolist() == names
    (tmp_path / "tables").mkdir()
    adata.obs_names = ["a\x00b", *names[1:]]  # pandas read it back as "a"
    with pytest.raises(ValueError, match="holds a NUL character"):
        io.write_nmf_tables(adata, tmp_path / "tables")
    assert os.listdir(tmp_path / "tables") == []


@pytest.mark.parametrize("solver", ["batch", "svi"])
def test_a_path_given_as_bytes_is_named_not_read_as_a_0d_array(solver):
    with pytest.raises(TypeError, match=r"X is bytes .*a path is given as a str"):
        VBNMF(2, solver=solver).fit(b"counts.h5ad")


def test_pl_elbo_says_how_many_points_above_the_final_value_it_leaves_out():
    import matplotlib

    matplotlib.use("Agg")
    from vbsnmf import pl

    counts = sp.random(30, 12, density=0.5, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 10)
    adata = ad.AnnData(counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged in 6 iterations
        tl.nmf(adata, 2, max_iter=6, accelerate=False)
    trace = np.asarray(adata.uns["nmf"]["elbo_trace"], dtype=float)
    assert np.all(np.diff(trace) > 0)
    axes = pl.elbo(adata, show=False)
    assert axes[1].get_title() == "gap to final"  # a monotone trace: every point drawn
    assert len(axes[1].lines[0].get_xdata()) == trace.size - 1
    # an SVI-like trace that passes above its final value twice
    adata.uns["nmf"]["elbo_trace"] = trace[[0, 1, 5, 2, 5, 3]] + np.array([0, 0, 1, 0, 2, 0])
    axes = pl.elbo(adata, show=False)
    assert axes[1].get_title() == "gap to final (2 above it, not drawn)"
    assert len(axes[1].lines[0].get_xdata()) == 3
    matplotlib.pyplot.close("all")


def test_svi_on_counts_far_below_one_names_the_scale_not_only_the_step():
    counts = sp.random(60, 12, density=0.5, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 10) * 1e-180
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not counts
        with pytest.raises(FloatingPointError, match="counts on an extreme scale, far below 1"):
            VBNMF(2, solver="svi", n_epochs=3).fit(counts)


def test_cli_names_a_file_where_a_folder_should_be_and_counts_one_iteration(
    tmp_path, monkeypatch, capsys
):
    from vbsnmf import cli

    monkeypatch.chdir(tmp_path)
    counts = sp.random(40, 20, density=0.5, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 10)
    ad.AnnData(counts).write_h5ad("in.h5ad")
    (tmp_path / "afile").write_text("the user's")
    for argv in (
        ["fit", "in.h5ad", "-k", "2", "-o", "afile/out"],
        ["umap", "in.h5ad", "-o", "afile/u.png"],
    ):
        assert cli.main(argv) == 2
        name = "out" if argv[0] == "fit" else "u.png"
        assert (
            capsys.readouterr()
            .err.strip()
            .endswith(f"the folder afile for {name} is a file, not a folder")
        )
    assert cli.main(["fit", "in.h5ad", "-k", "2", "-o", "nodir/out"]) == 2
    assert capsys.readouterr().err.strip().endswith("the folder nodir for out does not exist")
    assert cli.main(["fit", "in.h5ad", "-k", "2", "-o", "out", "--max-iter", "1"]) == 0
    assert ", 1 iteration (not converged)" in capsys.readouterr().out
