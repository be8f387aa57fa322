"""`vbsnmf.io._write.write_tsv` (which quotes a name holding a carriage return, as Python's
csv writer before 3.11.9 does not) against pandas' ``to_csv`` on a cells x factors table
like ``cell_factors.tsv.gz``: seconds per write, alternating pair by pair in one process,
the decompressed bytes compared, and each writer's peak of Python allocations
(tracemalloc, in a separate untimed write).

    python benchmarks/bench_write_tsv.py [--rows 100000] [--factors 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
from _common import positive_int

from vbsnmf.io._write import write_tsv


def _ours(table: pd.DataFrame, path: Path) -> None:
    write_tsv(table, path, float_format="%.6g", compressed_name=path.name)


def _pandas(table: pd.DataFrame, path: Path) -> None:
    table.to_csv(path, sep="\t", float_format="%.6g", compression="gzip")


def _peak_mib(write, table: pd.DataFrame, path: Path) -> float:
    tracemalloc.start()
    write(table, path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=positive_int, default=100_000)
    parser.add_argument("--factors", type=positive_int, default=20)
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        rng.gamma(1.0, 1.0, (args.rows, args.factors)),
        index=[f"AAACCTGAGA{i:08d}-1" for i in range(args.rows)],
        columns=[f"factor_{k}" for k in range(args.factors)],
    )
    # removed after the run: mkdtemp left the two tables (13 MiB by default) in /tmp every run
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        ours, theirs = folder / "ours.tsv.gz", folder / "pandas.tsv.gz"
        seconds = {"write_tsv": [], "to_csv": []}
        for _ in range(args.repeats):
            for name, write, path in (("write_tsv", _ours, ours), ("to_csv", _pandas, theirs)):
                start = time.perf_counter()
                write(table, path)
                seconds[name].append(time.perf_counter() - start)
        with gzip.open(ours) as left, gzip.open(theirs) as right:
            same = left.read() == right.read()
        medians = {name: float(np.median(values)) for name, values in seconds.items()}
        print(f"{args.rows} x {args.factors} table, gzip, {args.repeats} pairs")
        for name, write, path in (("write_tsv", _ours, ours), ("to_csv", _pandas, theirs)):
            print(
                f"{name:9s} median {medians[name]:.2f} s  "
                f"peak Python allocations {_peak_mib(write, table, path):.0f} MiB"
            )
        print(f"ratio write_tsv / to_csv: {medians['write_tsv'] / medians['to_csv']:.2f}")
        print(f"identical text: {same}")


if __name__ == "__main__":
    main()
