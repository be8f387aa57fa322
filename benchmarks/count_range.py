"""Where the ELBO of a batch fit stops being resolved as one count grows (issue 14).

    python benchmarks/count_range.py [--seeds 4]

The matrix: 60 x 40 Poisson(2) counts with one entry set to c, the widest dynamic range
for a given largest count (its terms, about c log c, cancel down to an ELBO far smaller).
Each fit: K=3, 150 iterations, tol 0, one thread, the fixed Gamma(1, 1) prior, calling the
engine (`_batch.fit_batch`) directly, past `vbsnmf._validation.MAX_COUNT`, which the
estimator enforces.

- float64 factors: is the trace finite, is any value positive (impossible for a lower
  bound of a log-probability), in how many fits does the ELBO ever decrease, and by how
  much at worst (relative to the final ELBO);
- float32 factors: the worst relative difference of the final ELBO from the float64 fit
  from the same start.

`MAX_COUNT` is set from this: float64 stays monotone up to 3e13 and first decreases at
1e14, so its maximum is 1e13; float32 stays within 1e-3 of float64 up to 3e7 and not from
1e8, and 2**24 is where float32 stops holding every integer. Run again on 2026-12-04 with
today's engine (`--seeds 2`): the same float64 boundary (monotone to 3e13, decreasing from
1e14); float32 now within 3.7e-5 of float64 at 1e8 and 4.1e-4 at 1e9 (its sums accumulate
in float64 since issue 18), so its limit rests on 2**24 alone.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import scipy.sparse as sp
from _common import positive_int

from vbsnmf import _batch, _data, _model

FLOAT64_COUNTS = (1e11, 1e12, 3e12, 1e13, 3e13, 1e14, 3e14, 1e15, 1e25, 1e200, 1e300)
FLOAT32_COUNTS = (1e6, 4e6, 2.0**24, 3e7, 1e8, 1e9)


def _trace(count: float, seed: int, dtype) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.poisson(2.0, (60, 40)).astype(np.float64)
    X[rng.integers(60), rng.integers(40)] = count
    data = _data.as_count_data(sp.csr_matrix(X))
    start = _model.random_start(data.shape, 3, float(X.sum()), seed, dtype)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        fit = _batch.fit_batch(data, start, _model.GammaPrior(1.0, 1.0), max_iter=150, tol=0.0)
    return np.asarray(fit.elbo_trace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=positive_int, default=4)
    seeds = range(parser.parse_args().seeds)
    print("float64: count, finite, any ELBO > 0, fits whose ELBO decreased, worst decrease")
    for count in FLOAT64_COUNTS:
        traces = [_trace(count, seed, np.float64) for seed in seeds]
        finite = all(np.all(np.isfinite(t)) for t in traces)
        positive = any(np.any(t > 0) for t in traces)
        with np.errstate(invalid="ignore"):  # inf - inf at 1e300
            drops = [max(0.0, -float(np.diff(t).min())) / abs(t[-1]) for t in traces]
        decreased = sum(d > 0 for d in drops)
        worst = max(drops) if finite else float("nan")
        print(f"{count:9.3g}  {finite!s:5}  {positive!s:5}  {decreased}/{len(traces)}  {worst:.2e}")
    print("float32: count, worst |final ELBO - float64's| / |float64's|")
    for count in FLOAT32_COUNTS:
        worst = max(
            abs(_trace(count, s, np.float32)[-1] - reference) / abs(reference)
            for s in seeds
            for reference in [_trace(count, s, np.float64)[-1]]
        )
        print(f"{count:9.4g}  {worst:.2e}")


if __name__ == "__main__":
    main()
