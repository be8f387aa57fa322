"""Leftovers of earlier hostile passes, fixed in the twenty-first: ``VBNMF.fit(None)`` was
told "X must be 2-D, got an array of shape ()" (numpy's view of None), and a 10x folder
whose barcodes (or genes) file is a broken symbolic link or a folder was said to hold
"matrix.mtx.gz, features.tsv.gz but not barcodes.tsv.gz", which sent the user looking
for a file that is there by name."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from test_hostile import FIT, _main, tenx

import vbsnmf
from vbsnmf.io import ReadError


@pytest.mark.parametrize("solver", ["batch", "svi"])
def test_fit_of_none_says_none(solver):
    with pytest.raises(TypeError, match=r"^X is None: pass a count matrix \(cells x genes\)$"):
        vbsnmf.VBNMF(2, solver=solver).fit(None)


@pytest.mark.filterwarnings("ignore:VB stopped after max_iter")
def test_transform_of_none_says_none():
    counts = sp.csr_matrix(np.random.default_rng(0).poisson(1.5, (20, 8)).astype(np.float64))
    model = vbsnmf.VBNMF(2, max_iter=5, tol=0, random_state=0, n_threads=1).fit(counts)
    with pytest.raises(TypeError, match=r"^X is None"):
        model.transform(None)


@pytest.mark.parametrize("damage", ["broken_link", "folder"])
@pytest.mark.parametrize("name", ["barcodes.tsv.gz", "features.tsv.gz"])
def test_a_name_file_that_is_no_file_is_named_as_such(tmp_path, capfd, damage, name):
    folder = tenx(tmp_path)
    (folder / name).unlink()
    if damage == "broken_link":
        (folder / name).symlink_to(tmp_path / "gone" / name)
        expected = f"{name} is a broken symbolic link (to {tmp_path / 'gone' / name})"
    else:
        (folder / name).mkdir()
        expected = f"{name} is not a file"
    with pytest.raises(ReadError) as raised:
        vbsnmf.io.read(folder)
    assert str(raised.value).endswith(expected), raised.value
    code, _, err, _ = _main(["fit", folder, *FIT, "-o", tmp_path / "out"], capfd, tmp_path)
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()
