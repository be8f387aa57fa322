"""Default fits from random starts against ``init="nndsvda"``: final ELBO and passes.

For each data set and K: ``VBNMF(K, random_state=s, n_threads=2)`` for seeds 0, 1, 2 (the
random start) and ``VBNMF(K, init="nndsvda", random_state=s)`` for seeds 0 and 1 (the SVD's
test matrix), every other setting the default (learned prior, SQUAREM, the hold). One
JSON line per (data, K): each fit's ``[final ELBO, passes, seconds]`` and the NNDSVDa
start's (seed 0) final ELBO against the random starts' mean and best, in % of the ELBO
(positive: NNDSVDa higher). The data are `svi_default_gap.py`'s (a draw from the learned
model, two pbmc_facs panels, pbmc_tiny, the digits, Reuters news: ``pip install lda``)
and pbmc_facs itself.

    python benchmarks/start_compare.py --data small --ks 5 10 20
    python benchmarks/start_compare.py --data pbmc_facs --ks 10 20
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import scipy.sparse as sp
import svi_default_gap as gap
from _common import positive_int

import vbsnmf

DATA = {
    "model draw": gap.model_draw,
    "pbmc_facs panel 400 x 300": gap.facs_panel,
    "pbmc_facs panel 1,000 x 800": lambda: gap.facs_panel(n_cells=1000, n_genes=800),
    "pbmc_tiny": lambda: sp.csr_array(vbsnmf.datasets.pbmc_tiny().X),
    "digits": gap.digits,
    "Reuters news": gap.reuters,
    "pbmc_facs": lambda: sp.csr_array(vbsnmf.datasets.pbmc_facs().X),
}
RANDOM_SEEDS, SVD_SEEDS = (0, 1, 2), (0, 1)


def fit(X, n_components: int, seed: int, init: str) -> list:
    model = vbsnmf.VBNMF(n_components, random_state=seed, n_threads=2, init=init)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vbsnmf.ConvergenceWarning)
        model.fit(X)
    seconds = time.perf_counter() - start
    return [round(float(model.elbo_trace_[-1]), 1), int(model.n_iter_), round(seconds, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", nargs="+", default=["small"], help="names of DATA, or 'small' (all but pbmc_facs)"
    )
    parser.add_argument("--ks", type=positive_int, nargs="+", default=[5, 10, 20])
    args = parser.parse_args()
    unknown = sorted(set(args.data) - set(DATA) - {"small"})
    if unknown:
        parser.error(f"--data: no data set {', '.join(unknown)} (choose from {', '.join(DATA)})")
    names = [name for name in DATA if name != "pbmc_facs"] if args.data == ["small"] else args.data
    if "Reuters news" in names and gap.lda_missing():
        if args.data != ["small"]:
            parser.error(f"--data: Reuters news {gap.LDA_ADVICE}")
        names.remove("Reuters news")  # the others run, saying so, not a late traceback
        print(f"Reuters news: skipped, {gap.LDA_ADVICE}", flush=True)
    for name in names:
        X = DATA[name]()
        for k in args.ks:
            row = {f"random {s}": fit(X, k, s, "random") for s in RANDOM_SEEDS}
            row.update({f"nndsvda {s}": fit(X, k, s, "nndsvda") for s in SVD_SEEDS})
            random = [row[f"random {s}"][0] for s in RANDOM_SEEDS]
            svd = row["nndsvda 0"][0]
            row["vs random mean %"] = round(100 * (svd - np.mean(random)) / abs(np.mean(random)), 3)
            row["vs random best %"] = round(100 * (svd - max(random)) / abs(max(random)), 3)
            print(json.dumps({"data": name, "K": k, **row}), flush=True)


if __name__ == "__main__":
    main()
