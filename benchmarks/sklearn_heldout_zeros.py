"""Why scikit-learn's KL-MU scores -1.86 per held-out count at K = 10 in bench_model.py.

Multiplicative updates cannot move a factor away from exactly 0, and the nndsvda start puts
many there; a held-out count whose ``mu = cell_factors @ gene_loadings.T`` is 0 is scored at
the smallest double (``log`` = -708), as bench_model.py's evaluator does for every tool.
This fits KL-MU on bench_model.py's train half, counts those entries and their share of the
figure, and scores the same factors floored at 1e-10 and 1e-6 for comparison.

    python benchmarks/sklearn_heldout_zeros.py
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_model


def main() -> None:
    from sklearn.decomposition import NMF

    counts, _ = bench_model.load(2)
    train, test = bench_model.count_split(counts)
    train, test = train.tocsr().astype(np.float64), test.tocsr().astype(np.float64)
    model = NMF(
        10, beta_loss="kullback-leibler", solver="mu", init="nndsvda", max_iter=3000,
        random_state=bench_model.MODEL_SEED,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cells = model.fit_transform(train)
    genes = model.components_.T
    print(f"iterations {model.n_iter_}; exact zeros: cell factors {np.mean(cells == 0):.1%}, "
          f"gene loadings {np.mean(genes == 0):.1%}")  # fmt: skip
    test_coo = test.tocoo()
    mu = np.einsum("nk,nk->n", cells[test_coo.row], genes[test_coo.col])
    held_out = float(test_coo.data.sum())
    print(f"held-out ll / count {bench_model.poisson_loglik(test, cells, genes) / held_out:.4f}")
    zero = mu == 0
    share = float(np.sum(test_coo.data[zero]) * np.log(np.finfo(float).tiny)) / held_out
    print(f"held-out entries with mu = 0: {zero.sum()} ({test_coo.data[zero].sum():.0f} counts), "
          f"{share:.4f} of the figure")  # fmt: skip
    for floor in (1e-10, 1e-6):
        floored_cells, floored_genes = np.maximum(cells, floor), np.maximum(genes, floor)
        floored = bench_model.poisson_loglik(test, floored_cells, floored_genes)
        print(f"factors floored at {floor:g}: held-out ll / count {floored / held_out:.4f}")


if __name__ == "__main__":
    # no options, but --help says what the script does instead of running the fit
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    main()
