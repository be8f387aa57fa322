"""Items the twenty-sixth session's closing note left, fixed in the twenty-seventh.

- ``vbsnmf fit --force`` that found files the user saved into OUTDIR while the fit ran
  left OUTDIR as it was (right) and discarded the finished new output (hours of fit,
  possibly): the new output is now kept beside it, as ``OUTDIR.new`` (``-2``, ... when
  taken), and the error names it.
- ``VBNMF().fit(X, init=VBNMF())``, an unfitted donor, raised a TypeError; scikit-learn
  raises ``NotFittedError`` for an estimator used before ``fit``.
- "holds 1 entries" read as a slip.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp

from vbsnmf import VBNMF, io
from vbsnmf._base import NotFittedError
from vbsnmf.io import UnsafePathError
from vbsnmf.io._paths import check_earlier_output


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
