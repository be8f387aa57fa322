"""`transform` against the fit: the training cells projected again, and a batch of cells
projected alone against the same cells projected with all the others.

    python benchmarks/transform_vs_fit.py --ks 10 20 \
        --out benchmarks/results/transform_vs_fit.txt

On pbmc_facs, for each K, a default fit ``VBNMF(K, random_state=0, n_threads=2)``, then:

- ``transform(X)`` against the fit's own cell factors: each cell's usage (its factors over
  their sum) moved by the L1 distance between the two, median and largest over the cells,
  and the number of cells that moved by more than 0.1; at the default ``tol`` and with
  ``tol=1e-9`` (``max_iter=20000``), which shows whether the difference is convergence;
- the cells' share of the ELBO given the fitted genes (`_model.fit_rows`' objective: their
  data term, expected product and KL, the genes and hyperparameters fixed) for the fit's
  cell q and for the q that `transform` reaches from its own start, in total and for the
  40 cells that moved most;
- the first ``n`` cells projected alone against the same cells projected with all of X
  (``transform(X[:n])`` against ``transform(X)[:n]``), at both ``tol``: `fit_rows` stops
  when the ELBO of all the rows it was given changes by less than ``tol``, so a batch's
  cells stop when the batch as a whole does.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_model
from _common import positive_int, report, require_out_file


def usages(factors: np.ndarray) -> np.ndarray:
    return factors / factors.sum(axis=1, keepdims=True)


def moved(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each cell's L1 distance between the usages of two sets of cell factors."""
    return np.abs(usages(a) - usages(b)).sum(axis=1)


def describe(distance: np.ndarray) -> str:
    return (
        f"median {np.median(distance):.3g}, largest {distance.max():.3g}, "
        f"{int((distance > 0.1).sum())} of {distance.size} cells above 0.1"
    )


def rows_objective(matrix, rows, q, col_moments, col_mean_sum, prior) -> float:
    """`_model.fit_rows`' objective for ``rows`` of ``matrix`` with cell q
    ``(shape, rate, scale)``, the genes fixed."""
    from vbsnmf._data import as_count_data
    from vbsnmf._model import ElboTerms, pass_statistics, side_moments, side_terms

    shape, rate, scale = q
    scale = scale.with_q(scale.shape[rows], scale.rate[rows])
    data = as_count_data(matrix[rows])
    _, _, data_term = pass_statistics(data, side_moments(shape[rows], rate[rows]), col_moments, 2)
    mean_sum, kl = side_terms(shape[rows], rate[rows], prior, scale)
    return ElboTerms(data_term, mean_sum, kl, col_mean_sum, 0.0).value()


def compare(matrix, k: int, threads: int, emit) -> None:
    import vbsnmf
    from vbsnmf._data import as_count_data
    from vbsnmf._model import HierarchicalPrior, ScaleState, fit_rows, side_moments

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model = vbsnmf.VBNMF(k, random_state=0, n_threads=threads).fit(matrix)
    fitted = model.cell_shape_ / model.cell_rate_
    emit(f"\nK = {k}: default fit, {model.n_iter_} passes, ELBO {model.elbo_trace_[-1]:.1f}")
    for tol, max_iter in ((model.tol, model.max_iter), (1e-9, 20000)):  # the defaults first
        model.set_params(tol=tol, max_iter=max_iter)
        start = time.perf_counter()
        projected = model.transform(matrix)
        seconds = time.perf_counter() - start
        emit(f"- tol {tol:g}: transform(X) against the fit's cells ({seconds:.1f} s): "
             f"{describe(moved(projected, fitted))}")  # fmt: skip
        for n_cells in (10, 500):
            alone = model.transform(matrix[:n_cells])
            emit(f"  transform(X[:{n_cells}]) against transform(X)[:{n_cells}]: "
                 f"{describe(moved(alone, projected[:n_cells]))}")  # fmt: skip
    hyper, prior = model.hyperparameters_, HierarchicalPrior()

    def scale_of(shape, rate) -> ScaleState:
        return ScaleState(
            shape,
            rate,
            np.asarray(hyper["cell_factor_shape"]),
            float(hyper["cell_scale_prior_shape"]),
            float(hyper["cell_scale_prior_mean"]),
        )

    gene_shape, gene_rate = model.gene_shape_, model.gene_rate_
    col_moments = side_moments(gene_shape, gene_rate)
    col_mean_sum = (gene_shape / gene_rate).sum(axis=0)
    fit_q = (model.cell_shape_, model.cell_rate_,
             scale_of(model.cell_scale_shape_, model.cell_scale_rate_))  # fmt: skip
    local = fit_rows(
        as_count_data(matrix), gene_shape, gene_rate, prior, max_iter=20000, tol=1e-9,
        row_scale=scale_of(np.empty(0), np.empty(0)),
    )  # fmt: skip
    local_q = (local.shape, local.rate, local.scale)
    every = np.arange(matrix.shape[0])
    objective = {name: rows_objective(matrix, every, q, col_moments, col_mean_sum, prior)
                 for name, q in (("fit", fit_q), ("transform", local_q))}  # fmt: skip
    emit(f"- the cells' ELBO given the fitted genes: the fit's q {objective['fit']:.1f}, "
         f"transform's (tol 1e-9, {local.n_passes} passes) {objective['transform']:.1f}, "
         f"difference {objective['transform'] - objective['fit']:+.1f}")  # fmt: skip
    distance = moved(local.shape / local.rate, fitted)
    gains, most = [], np.argsort(distance)[::-1][:40]
    for row in most:
        one = np.array([row])
        gains.append(
            rows_objective(matrix, one, local_q, col_moments, col_mean_sum, prior)
            - rows_objective(matrix, one, fit_q, col_moments, col_mean_sum, prior)
        )
    emit(f"  the 40 cells that moved most (L1 {distance[most[-1]]:.2f} to {distance.max():.2f}): "
         f"transform's q higher for {sum(g > 0 for g in gains)}, by {np.median(gains):+.2f} "
         f"nats (median; {min(gains):+.2f} to {max(gains):+.2f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=positive_int, nargs="+", default=[10, 20])
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--out", help="append the output to this file too")
    args = parser.parse_args()
    require_out_file(parser, out=args.out)
    with report(args.out) as emit:
        matrix, _ = bench_model.load(args.threads, "pbmc_facs")
        for k in args.ks:
            compare(matrix, k, args.threads, emit)


if __name__ == "__main__":
    main()
