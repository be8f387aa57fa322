"""Leftovers of the fifteenth and sixteenth hostile passes, fixed in the seventeenth:
``tl.project(adata, adata[:, genes])`` wrote the projection over the fitted cell factors
of ``adata`` (the guard against projecting a fit onto itself compared the objects, and a
view of ``adata`` is another object that holds the same fit); and ``tl.project`` refused new
cells whose gene names repeat outside the reference's genes; and each gzip table recorded
the time of its write, so the same fit's tables differed in bytes; and a plot's ``save`` given
a path as a string (``save="/results/elbo.png"``) failed with a bare FileNotFoundError for
``figures/elbo/results/elbo.png`` (scanpy appends a string to the plot's name), in
``pl.umap`` after the whole neighbour graph and UMAP; and ``VBNTF(n_init=3)`` warned a
`ConvergenceWarning` from each start that stopped at ``max_iter`` (the model helper fixed it
for ``VBNMF`` and left the tensor's)."""

from __future__ import annotations

import gzip
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import vbsnmf
from vbsnmf import pl, tl


def _fitted(adata):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, 3, max_iter=5, random_state=0, n_threads=1)
    return {name: adata.obsm[name].copy() for name in ("X_nmf", "X_nmf_usage")}


def test_projecting_a_fit_onto_a_view_of_itself_keeps_the_fit(pbmc_tiny):
    fitted = _fitted(pbmc_tiny)
    genes = pbmc_tiny.var_names[: pbmc_tiny.n_vars // 2]
    with pytest.raises(ValueError, match="adata_ref is a view of adata_new"):
        tl.project(pbmc_tiny, pbmc_tiny[:, genes], n_threads=1, max_iter=2)
    for name, values in fitted.items():
        np.testing.assert_array_equal(pbmc_tiny.obsm[name], values)
    # under another key, or into a view of it (anndata writes a view's results into its own
    # copy), the fit stays as it was and the projection is written
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        with pytest.warns(UserWarning, match="no counts in the reference's genes"):
            tl.project(pbmc_tiny, pbmc_tiny[:, genes], key_added="half", n_threads=1, max_iter=2)
        cells = pbmc_tiny[:100]
        tl.project(cells, pbmc_tiny, n_threads=1, max_iter=2)
    assert pbmc_tiny.obsm["X_half"].shape == fitted["X_nmf"].shape
    assert cells.obsm["X_nmf"].shape == (100, 3)
    for name, values in fitted.items():
        np.testing.assert_array_equal(pbmc_tiny.obsm[name], values)


def test_gene_names_repeated_outside_the_reference_do_not_stop_a_projection(pbmc_tiny):
    """New cells whose gene names repeat (10x gene symbols do) were refused even when the
    repeats lay outside the reference's genes, which the projection leaves out anyway."""
    reference = pbmc_tiny[:, :300].copy()
    _fitted(reference)
    new = pbmc_tiny[:50].copy()
    names = new.var_names.to_numpy().copy()
    names[-2:] = "REPEATED"  # two genes the reference does not hold
    unique = new.copy()
    new.var_names = names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.project(new, reference, n_threads=1, max_iter=3)
        tl.project(unique, reference, n_threads=1, max_iter=3)
    np.testing.assert_array_equal(new.obsm["X_nmf"], unique.obsm["X_nmf"])
    # a repeat among the reference's genes cannot be matched to one gene: refused by name
    names[1] = names[0]
    new.var_names = names
    with pytest.raises(ValueError, match=f"repeat among the reference's genes \\({names[0]}\\)"):
        tl.project(new, reference, n_threads=1, max_iter=3)


def test_the_same_fit_writes_the_same_table_bytes(tmp_path, monkeypatch):
    """Each gzip table recorded the time of its write in its header: two writes of one fit
    differed in bytes (a checksum, a build cache or a diff saw a change)."""
    adata = vbsnmf.datasets.pbmc_tiny()[:60].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, 2, max_iter=3, n_threads=1)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    written = vbsnmf.io.write_nmf_tables(adata, first)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 3600.0)  # gzip takes its time from here
    vbsnmf.io.write_nmf_tables(adata, second)
    tables = [path.name for path in written if path.name.endswith(".gz")]
    assert len(tables) == 2
    for name in tables:
        stored = (first / name).read_bytes()
        assert stored == (second / name).read_bytes(), name
        assert stored[4:8] == b"\0\0\0\0"  # the header's MTIME: none recorded
        assert gzip.decompress(stored).startswith(name.split("_")[0].encode())


def test_a_path_as_a_string_is_refused_before_the_plot_and_a_suffix_saves(tmp_path):
    import scanpy as sc

    adata = vbsnmf.datasets.pbmc_tiny()[:120].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        tl.nmf(adata, 2, max_iter=3, n_threads=1)
    stored = set(adata.obsm)
    wanted = tmp_path / "out" / "elbo.png"
    wanted.parent.mkdir()
    figures = tmp_path / "figures"
    old_figdir = sc.settings.figdir
    sc.settings.figdir = figures
    try:
        with pytest.raises(ValueError, match=r"pass pathlib\.Path\("):
            pl.elbo(adata, show=False, save=str(wanted))
        with pytest.raises(ValueError, match=r"sc\.settings\.figdir \(umap\.\.\.\)"):
            pl.umap(adata, show=False, save=str(tmp_path / "out" / "umap.png"))
        assert len(adata.obsp) == 0 and set(adata.obsm) == stored  # nothing computed
        assert not wanted.exists() and not figures.exists()
        # scanpy's rule for a suffix, and a Path, as before
        pl.elbo(adata, show=False, save="_fit.png")
        assert (figures / "elbo_fit.png").stat().st_size > 0
        pl.elbo(adata, show=False, save=Path(wanted))
        assert wanted.stat().st_size > 0
    finally:
        sc.settings.figdir = old_figdir


@pytest.mark.parametrize("accelerate", [True, False])
def test_a_tensor_fit_of_several_starts_warns_once_for_the_start_kept(accelerate):
    rng = np.random.default_rng(0)
    dense = rng.poisson(2.0, size=(8, 7, 6)).astype(float)
    coords, values = np.argwhere(dense), dense[dense != 0]
    options = {"random_state": 0, "n_threads": 1, "accelerate": accelerate}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = vbsnmf.VBNTF(2, n_init=3, max_iter=3, **options).fit(coords, values, dense.shape)
    warned = [w for w in caught if issubclass(w.category, vbsnmf.ConvergenceWarning)]
    assert not kept.converged_ and len(warned) == 1, [str(w.message) for w in warned]
    assert "max_iter=3" in str(warned[0].message) and warned[0].filename == __file__
    # a kept start that converged: no warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = vbsnmf.VBNTF(2, n_init=3, max_iter=4000, tol=1e-4, **options).fit(
            coords, values, dense.shape
        )
    assert kept.converged_
    assert not [w for w in caught if issubclass(w.category, vbsnmf.ConvergenceWarning)]


@pytest.mark.parametrize("form", ["dense", "csr", "mask"])
def test_longdouble_counts_beyond_float64_are_refused_without_numpy_s_warning(form):
    """The cast of longdouble counts (or a mask) to float64 warned numpy's "overflow
    encountered in cast" before vbsnmf's own error: under warnings as errors the user got
    numpy's RuntimeWarning in its place (the tensor helper found it in VBNTF's reader)."""
    import scipy.sparse as sp

    huge = np.longdouble(1e308) * 100  # beyond float64
    X = np.zeros((5, 4), dtype=np.longdouble)
    X[1, 1], X[2, 3] = 3, 1
    kwargs = {}
    if form == "mask":
        mask = np.zeros_like(X)
        mask[0, 0] = huge
        kwargs["mask"] = mask
    else:
        X[0, 0] = huge
    data = sp.csr_matrix(X) if form == "csr" else X
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="finite"):
            vbsnmf.VBNMF(2, max_iter=3, n_threads=1).fit(data, **kwargs)


def test_nullable_integer_coordinates_are_told_how_to_convert():
    """A DataFrame of pandas' nullable Int64 indices reaches numpy as objects: "got dtype
    object" said nothing of how to pass them; the advice given works."""
    import pandas as pd

    coords = pd.DataFrame([[0, 0, 0], [1, 2, 1], [2, 1, 3]]).astype("Int64")
    values, shape = np.array([1.0, 2.0, 3.0]), (3, 3, 4)
    with pytest.raises(TypeError, match=r"pass coords\.to_numpy\(dtype=np\.int64\)"):
        vbsnmf.VBNTF(2, max_iter=3, n_threads=1).fit(coords, values, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        fitted = vbsnmf.VBNTF(2, max_iter=3, n_threads=1).fit(
            coords.to_numpy(dtype=np.int64), values, shape
        )
    assert all(np.all(np.isfinite(factor)) for factor in fitted.factors_)


@pytest.mark.parametrize("form", ["nonzeros", "abe-shimamura"])
def test_svi_over_nonzeros_refuses_counts_without_one(form):
    """The SVI forms that sample minibatches of nonzeros took no step on a matrix of zeros
    and reported their random start as converged (ELBO -290 on 6 x 5, where batch VB reaches
    -16); refused now, as for a tensor, and batch VB still fits such data."""
    import scipy.sparse as sp

    zeros = sp.csr_matrix((6, 5))
    model = vbsnmf.VBNMF(2, solver="svi", svi_form=form, prior="gamma", n_threads=1)
    with pytest.raises(ValueError, match=f"no nonzero, which svi_form='{form}' samples"):
        model.fit(zeros)
    coords = np.zeros((0, 3), dtype=np.int64)
    tensor = vbsnmf.VBNTF(2, solver="svi", svi_form="nonzeros", prior="gamma", n_threads=1)
    with pytest.raises(ValueError, match="or svi_form='slices'"):
        tensor.fit(coords, np.zeros(0), shape=(4, 3, 2))
    fitted = vbsnmf.VBNMF(2, prior="gamma", n_threads=1).fit(zeros)
    assert fitted.converged_ and np.all(np.isfinite(fitted.components_))
