"""Poisson tensor factorisation (`vbsnmf.VBNTF`): kernel cost against the matrix kernel,
linearity in the nonzeros and in D, and dense tensorly alternatives as density falls.

    python benchmarks/bench_tensor.py [--threads 1 2] [--sections 1 2 3 4] [--quick] [--out FILE]

1. **Kernel ratio** (one process, interleaved rounds, best of ``--rounds``): one updateA
   pass of the tensor engine (`_tensor.shape_statistics`: expected logs of every mode plus
   `_kernels.tensor_update_shapes`) against the matrix engine's (`_model.shape_statistics`:
   the same plus `_kernels.update_shapes`), per nonzero per component, on a 3-way tensor and
   a matrix with the same nonzeros and K; also the tensor path on the matrix itself (D = 2).
2. **Linearity**: the tensor pass per nonzero per component as the nonzeros grow (D = 3)
   and as D grows (same nonzeros).
3. **Dense alternatives**, each fit in its own fresh process (time, peak RSS and its growth
   during the fit, one thread): ``VBNTF`` on the nonzeros; tensorly-gcp's
   ``generalized_parafac(loss="poisson_count")`` (Poisson CP by L-BFGS-B on the dense
   tensor: tensorly 0.10 itself has no KL/Poisson loss); tensorly's
   ``non_negative_parafac`` (multiplicative updates, Frobenius loss, for reference). Same
   tensors drawn from the model (K = 5) at falling densities; quality is the Poisson
   deviance of each fitted mean, computed over every entry without densifying.
4. **SVI forms**: final ELBO of both SVI forms after 5, 20 and 100 epochs against batch VB
   on one tensor drawn from the model.
5. **SQUAREM**: batch VB to convergence (tol 1e-6) with plain coordinate ascent and with
   SQUAREM (``accelerate``), both priors, on the tutorial's pbmc_facs pseudobulk tensor
   (gate x gene x replicate, `tutorials/pbmc_tensor.py`), K = 8, 2 threads, one process,
   the two fits of a seed back to back: passes, seconds, final ELBO, and the ratio of
   seconds (plain / SQUAREM) within each pair.
6. **eval_every**: SVI of the same tensor, K = 10, 20 epochs with ``tol=0``, both forms,
   evaluating every epoch and every fifth (``VBNTF(eval_every=5)``), the two fits of a seed
   back to back (2 threads): seconds, final ELBO, and the ratio of seconds within each pair.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
from _common import (
    in_fresh_process,
    non_negative_int,
    peak_rss_mib,
    positive_int,
    require_out_file,
)


def _set_threads(threads: int) -> None:
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)


def _random_coords(shape, nnz, rng):
    coords = np.stack([rng.integers(0, n, nnz) for n in shape], axis=1)
    return coords, rng.integers(1, 6, nnz).astype(np.float64)


# -- 1. kernel ratio ----------------------------------------------------------------------
def _interleaved(functions: dict, rounds: int) -> dict[str, np.ndarray]:
    """Seconds of each function in each of ``rounds`` rounds (one call each, in turn), so
    that a change of load on the shared machine hits every function of a round alike."""
    for function in functions.values():
        function()  # compile / load from cache
    times = {name: np.empty(rounds) for name in functions}
    for r in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name][r] = time.perf_counter() - start
    return times


def kernel_ratio(threads: int, n_components: int, config: dict, rounds: int) -> dict:
    _set_threads(threads)
    import scipy.sparse as sp

    from vbsnmf import _model, _tensor
    from vbsnmf._data import as_count_data

    rng = np.random.default_rng(0)
    coords, values = _random_coords(config["matrix"], config["nnz"], rng)
    matrix = sp.coo_array((values, (coords[:, 0], coords[:, 1])), shape=config["matrix"])
    data = as_count_data(matrix)
    total = float(values.sum())
    params = _model.random_start(matrix.shape, n_components, total, 0, np.float64)
    as_tensor = _tensor.as_tensor_data(coords, values, config["matrix"])
    as_tensor_params = _tensor.random_start(as_tensor, n_components, 0)
    coords, values = _random_coords(config["tensor"], config["nnz"], rng)
    tensor = _tensor.as_tensor_data(coords, values, config["tensor"])
    tensor_params = _tensor.random_start(tensor, n_components, 0)
    times = _interleaved(
        {
            "matrix": lambda: _model.shape_statistics(data, params, threads),
            "tensor": lambda: _tensor.shape_statistics(tensor, tensor_params, threads),
            "tensor_d2": lambda: _tensor.shape_statistics(as_tensor, as_tensor_params, threads),
        },
        rounds,
    )
    nnz = {"matrix": data.nnz, "tensor": tensor.nnz, "tensor_d2": as_tensor.nnz}
    per_unit = {name: times[name] / (nnz[name] * n_components) * 1e9 for name in times}
    result = {name: float(per_unit[name].min()) for name in per_unit}
    for name in ("tensor", "tensor_d2"):  # the ratio within each round, then its median
        result[f"{name}_ratio"] = float(np.median(per_unit[name] / per_unit["matrix"]))
    return result | {"nnz_matrix": data.nnz, "nnz_tensor": tensor.nnz}


# -- 2. linearity -------------------------------------------------------------------------
def linearity(threads: int, n_components: int, cases: list, rounds: int) -> list[dict]:
    _set_threads(threads)
    from vbsnmf import _tensor

    rows = []
    for shape, nnz in cases:
        rng = np.random.default_rng(1)
        tensor = _tensor.as_tensor_data(*_random_coords(shape, nnz, rng), shape)
        params = _tensor.random_start(tensor, n_components, 1)
        best = _interleaved(
            {"pass": lambda t=tensor, p=params: _tensor.shape_statistics(t, p, threads)}, rounds
        )["pass"].min()
        rows.append(
            {
                "shape": shape,
                "nnz": tensor.nnz,
                "seconds": best,
                "ns": best / (tensor.nnz * n_components) * 1e9,
            }
        )
    return rows


# -- 3. dense alternatives ----------------------------------------------------------------
def simulate(shape, n_components, density, seed):
    """Counts from the model: Gamma(1, 1) factors, half their entries zeroed, scaled so
    that about ``density`` of the entries are nonzero. Returns coords, values, factors."""
    rng = np.random.default_rng(seed)
    factors = [
        rng.gamma(1.0, 1.0, (n, n_components)) * (rng.random((n, n_components)) < 0.5)
        for n in shape
    ]
    mean = np.einsum("il,jl,kl->ijk", *factors)
    low, high = 1e-8, 1e8
    for _ in range(100):
        scale = math.sqrt(low * high)
        low, high = (low, scale) if np.mean(-np.expm1(-scale * mean)) > density else (scale, high)
    counts = rng.poisson(scale * mean)
    coords = np.argwhere(counts)
    return coords, counts[tuple(coords.T)].astype(np.float64)


def poisson_deviance(coords, values, factors) -> float:
    """``2 sum_all [y log(y / mu) - y + mu]`` from the nonzeros and the factors' column
    sums (``sum_all mu = sum_l prod_d sum_i factors[d][i, l]``)."""
    mean = np.ones((len(values), factors[0].shape[1]))
    for d, factor in enumerate(factors):
        mean *= factor[coords[:, d]]
    mean = np.maximum(mean.sum(axis=1), 1e-300)
    total = float(np.prod([f.sum(axis=0) for f in factors], axis=0).sum())
    return 2.0 * float(np.sum(values * np.log(values / mean)) - values.sum() + total)


def _load(path):
    with np.load(path) as stored:
        return stored["coords"], stored["values"], tuple(int(n) for n in stored["shape"])


def fit_in_child(method: str, path: str, n_components: int, max_iter: int) -> dict:
    _set_threads(1)
    coords, values, shape = _load(path)
    warnings.simplefilter("ignore")
    if method == "vbntf":
        import vbsnmf

        vbsnmf.VBNTF(n_components, max_iter=1, random_state=0, n_threads=1).fit(
            coords, values, shape
        )  # load the kernels before the measured fit
        before = peak_rss_mib()
        start = time.perf_counter()
        model = vbsnmf.VBNTF(
            n_components, max_iter=max_iter, tol=1e-6, random_state=0, n_threads=1
        ).fit(coords, values, shape)
        seconds = time.perf_counter() - start
        factors, n_iter = model.factors_, model.n_iter_
    else:
        import tensorly as tl

        dense = np.zeros(shape)
        dense[tuple(coords.T)] = values
        before = peak_rss_mib()
        start = time.perf_counter()
        if method == "gcp":
            from tlgcp.generalized_parafac import generalized_parafac

            cp, errors = generalized_parafac(
                dense,
                n_components,
                n_iter_max=max_iter,
                loss="poisson_count",
                random_state=0,
                return_errors=True,
            )
            n_iter = len(errors)
        else:
            from tensorly.decomposition import non_negative_parafac

            cp, errors = non_negative_parafac(
                dense,
                n_components,
                n_iter_max=max_iter,
                init="random",
                tol=1e-6,
                random_state=0,
                return_errors=True,
            )
            n_iter = len(errors)
        seconds = time.perf_counter() - start
        weights, factors = cp
        factors = [tl.to_numpy(f) for f in factors]
        factors[0] = factors[0] * tl.to_numpy(weights)
    peak = peak_rss_mib()
    return {
        "seconds": seconds,
        "n_iter": n_iter,
        "before_mib": before,
        "peak_mib": peak,
        "growth_mib": peak - before,
        "deviance": poisson_deviance(coords, values, factors),
    }


def baseline_in_child(path: str) -> dict:
    _set_threads(1)
    _load(path)
    if _installed("tensorly"):
        import tensorly  # noqa: F401

    import vbsnmf  # noqa: F401

    return {"peak_mib": peak_rss_mib()}


# The optional peers of section 3: each method's modules, and the pip packages that give them.
DENSE_PEERS = {
    "gcp": (("tensorly", "tlgcp"), "tensorly tensorly-gcp"),
    "nncp": (("tensorly",), "tensorly"),
}


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported here (found, not imported)."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def missing_dense_peers() -> dict[str, str]:
    """Section 3's methods whose packages are not installed: method name -> install advice,
    so that the section skips them by name instead of failing after VBNTF's fit."""
    return {
        method: f"pip install {packages}"
        for method, (modules, packages) in DENSE_PEERS.items()
        if not all(_installed(module) for module in modules)
    }


# -- 4. SVI forms against batch VB --------------------------------------------------------
def svi_forms(shape, density: float, n_components: int) -> list[dict]:
    """Final ELBO of batch VB and of both SVI forms (several epoch budgets) on one tensor
    drawn from the model; 1 thread."""
    _set_threads(1)
    import vbsnmf

    warnings.simplefilter("ignore")
    coords, values = simulate(shape, n_components, density, seed=1)
    start = time.perf_counter()
    batch = vbsnmf.VBNTF(n_components, max_iter=2000, tol=1e-8, random_state=0, n_threads=1)
    batch.fit(coords, values, shape)
    rows = [
        {
            "fit": "batch",
            "epochs": batch.n_iter_,
            "elbo": batch.elbo_trace_[-1],
            "seconds": time.perf_counter() - start,
        }
    ]
    for form, batch_size in (("slices", max(1, shape[0] // 8)), ("nonzeros", len(values) // 8)):
        for n_epochs in (5, 20, 100):
            start = time.perf_counter()
            model = vbsnmf.VBNTF(
                n_components,
                solver="svi",
                svi_form=form,
                batch_size=batch_size,
                n_epochs=n_epochs,
                tol=0.0,
                max_iter=100,
                random_state=0,
                n_threads=1,
            ).fit(coords, values, shape)
            rows.append(
                {
                    "fit": f"svi {form}, batch_size {batch_size}",
                    "epochs": model.n_iter_,
                    "elbo": model.elbo_trace_[-1],
                    "seconds": time.perf_counter() - start,
                }
            )
    for row in rows:
        row["gap"] = (rows[0]["elbo"] - row["elbo"]) / abs(rows[0]["elbo"])
    return rows


# -- 5. SQUAREM against plain coordinate ascent --------------------------------------------
def squarem_pairs(seeds, n_components: int, quick: bool) -> list[dict]:
    """Plain and SQUAREM fits of the tutorial tensor, seed by seed and prior by prior, in
    pairs (2 threads)."""
    _set_threads(2)
    import vbsnmf

    coords, counts, shape = _tutorial_tensor(quick)
    warnings.simplefilter("ignore")
    vbsnmf.VBNTF(n_components, max_iter=2, accelerate=True).fit(coords, counts, shape)  # compile
    rows = []
    for seed in seeds:
        for prior in ("gamma", "hierarchical"):
            for accelerate in (False, True):
                model = vbsnmf.VBNTF(
                    n_components,
                    prior=prior,
                    accelerate=accelerate,
                    max_iter=5000,
                    tol=1e-6,
                    random_state=seed,
                    n_threads=2,
                )
                row = _timed_fit(model, coords, counts, shape)
                rows.append(
                    {
                        **row,
                        "seed": seed,
                        "prior": prior,
                        "accelerate": accelerate,
                        "passes": model.n_iter_,
                        "converged": model.converged_,
                    }
                )
    return rows


# -- 6. evaluating every fifth epoch ------------------------------------------------------
def eval_every_pairs(seeds, n_components: int, quick: bool) -> list[dict]:
    """SVI fits of the tutorial tensor evaluating every epoch and every fifth, seed by seed
    and form by form, in pairs (2 threads)."""
    _set_threads(2)
    import vbsnmf

    coords, counts, shape = _tutorial_tensor(quick)
    warnings.simplefilter("ignore")
    rows = []
    for form in ("nonzeros", "slices"):
        common = dict(solver="svi", svi_form=form, n_epochs=20, tol=0.0, n_threads=2)
        vbsnmf.VBNTF(n_components, **{**common, "n_epochs": 1}).fit(coords, counts, shape)
        for seed in seeds:
            for eval_every in (1, 5):
                model = vbsnmf.VBNTF(
                    n_components, eval_every=eval_every, random_state=seed, **common
                )
                row = _timed_fit(model, coords, counts, shape)
                rows.append({**row, "form": form, "seed": seed, "eval_every": eval_every})
    return rows


def _timed_fit(model, coords, counts, shape) -> dict:
    """Fit ``model`` to the tensor: its shape and nonzeros, final ELBO and seconds."""
    start = time.perf_counter()
    model.fit(coords, counts, shape)
    seconds = time.perf_counter() - start
    return {"shape": shape, "nnz": len(counts), "elbo": model.elbo_trace_[-1], "seconds": seconds}


def _tutorial_tensor(quick: bool):
    """The tutorial's gate x gene x replicate tensor of pbmc_facs (``quick``: its 2,000
    genes with the most counts, as the tutorial's --quick)."""
    import vbsnmf

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tutorials"))
    from pbmc_tensor import pseudobulk_tensor

    adata = vbsnmf.datasets.pbmc_facs()
    if quick:
        totals = np.asarray(adata.X.sum(axis=0)).ravel()
        adata = adata[:, np.sort(np.argsort(-totals)[:2000])].copy()
    coords, counts, shape, *_ = pseudobulk_tensor(adata)
    return coords, counts, shape


# -- report -------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2])
    parser.add_argument("--components", type=positive_int, nargs="+", default=[10, 16])
    parser.add_argument("--rounds", type=positive_int, default=30)
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument(
        "--sections",
        type=int,
        choices=[1, 2, 3, 4, 5, 6],
        nargs="+",
        default=[1, 2, 3, 4, 5, 6],
        help="which parts to run",
    )
    parser.add_argument(
        "--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2], help="sections 5, 6"
    )
    args = parser.parse_args()
    require_out_file(parser, make_folder=True, out=args.out)  # saved after each section
    scale = 10 if args.quick else 1
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"# bench_tensor.py {' '.join(sys.argv[1:])}")
    say(f"load average at start: {os.getloadavg()[0]:.2f} (2-core machine shared with others)")
    configs = {
        "L2-sized tables": {
            "matrix": (2000, 1000),
            "tensor": (2000, 500, 200),
            "nnz": 1_000_000 // scale,
        },
        "large tables": {
            "matrix": (20000, 16000),
            "tensor": (20000, 8000, 8000),
            "nnz": 3_000_000 // scale,
        },
        "large tables, third mode short": {
            "matrix": (20000, 16000),
            "tensor": (20000, 16000, 8),
            "nnz": 3_000_000 // scale,
        },
    }
    sections = {
        1: lambda: section_kernel_ratio(args, configs, say),
        2: lambda: section_linearity(args, scale, say),
        3: lambda: section_dense(args, say),
        4: lambda: section_svi(args, say),
        5: lambda: section_squarem(args, say),
        6: lambda: section_eval_every(args, say),
    }
    for number, section in sections.items():
        if number in args.sections:
            section()
            # Saved after every section, so that a later section's failure (or Ctrl-C)
            # keeps the hours of the ones before it in --out, not only on the screen.
            save(args.out, lines)


def save(out: Path | None, lines: list[str]) -> None:
    """Replace ``out`` (when given) by ``lines``, atomically."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    temporary.write_text("\n".join(lines) + "\n")
    os.replace(temporary, out)


def section_kernel_ratio(args, configs, say) -> None:
    say(
        f"\n## 1. updateA pass, ns per nonzero per component: best of {args.rounds} interleaved "
        "rounds; ratio = median over rounds of the ratio within a round"
    )
    say(
        "| tables | threads | K | matrix (update_shapes) | tensor D=3 | ratio D=3 / matrix "
        "| tensor path on the matrix (D=2) | ratio D=2 / matrix |"
    )
    say("|---|---|---|---|---|---|---|---|")
    for name, config in configs.items():
        for threads in args.threads:
            for n_components in args.components:
                r = in_fresh_process(kernel_ratio, threads, n_components, config, args.rounds)
                say(
                    f"| {name}: matrix {config['matrix']}, tensor {config['tensor']}, "
                    f"nnz {r['nnz_matrix']:,} / {r['nnz_tensor']:,} | {threads} | {n_components} "
                    f"| {r['matrix']:.3f} | {r['tensor']:.3f} | **{r['tensor_ratio']:.2f}** "
                    f"| {r['tensor_d2']:.3f} | {r['tensor_d2_ratio']:.2f} |"
                )


def section_linearity(args, scale, say) -> None:
    say("\n## 2. linearity (tensor pass, 1 thread, K=16)")
    nnz_cases = [((2000, 500, 200), n // scale) for n in (100_000, 300_000, 1_000_000, 3_000_000)]
    modes = (4000, 1000, 200, 50, 20, 10)
    mode_cases = [(modes[:d], 1_000_000 // scale) for d in range(2, 7)]
    say(
        "| shape | nnz | s per pass | ns per nonzero per component "
        "| ns per nonzero per component per mode |"
    )
    say("|---|---|---|---|---|")
    rows = in_fresh_process(linearity, 1, 16, nnz_cases + mode_cases, args.rounds)
    for row in rows:
        say(
            f"| {row['shape']} | {row['nnz']:,} | {row['seconds']:.4f} | {row['ns']:.3f} "
            f"| {row['ns'] / len(row['shape']):.3f} |"
        )
    for label, part, x in (
        ("nonzeros (D=3)", rows[: len(nnz_cases)], [r["nnz"] for r in rows[: len(nnz_cases)]]),
        (
            "D (same nonzeros)",
            rows[len(nnz_cases) :],
            [len(r["shape"]) for r in rows[len(nnz_cases) :]],
        ),
    ):
        slope = np.polyfit(np.log(x), np.log([r["seconds"] for r in part]), 1)[0]
        say(f"log-log slope of seconds per pass against {label}: {slope:.3f}")


def section_dense(args, say) -> None:
    say("\n## 3. against dense tensorly fits (each in a fresh process, 1 thread, K=5)")
    shape = (150, 120, 100) if not args.quick else (50, 40, 30)
    densities = (0.3, 0.1, 0.01, 0.001) if not args.quick else (0.1, 0.01)
    say(
        f"tensor {shape} ({math.prod(shape):,} entries, dense float64 "
        f"{math.prod(shape) * 8 / 2**20:.1f} MiB) drawn from the model with K=5"
    )
    say(
        "VBNTF: batch VB, tol=1e-6, max_iter=500 | gcp: tlgcp generalized_parafac "
        "(poisson_count, L-BFGS-B, n_iter_max=500) | nncp: tensorly non_negative_parafac "
        "(Frobenius MU, tol=1e-6, n_iter_max=500)"
    )
    say(
        "| density | nnz | method | seconds | iterations | RSS before fit MiB | peak RSS MiB "
        "| growth in fit MiB | Poisson deviance |"
    )
    say("|---|---|---|---|---|---|---|---|---|")
    missing = missing_dense_peers()
    methods = [method for method in ("vbntf", "gcp", "nncp") if method not in missing]
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for density in densities:
            coords, values = simulate(shape, 5, density, seed=0)
            path = os.path.join(tmp, f"tensor_{density}.npz")
            np.savez(path, coords=coords, values=values, shape=np.array(shape))
            if base is None:
                base = in_fresh_process(baseline_in_child, path)
            for method in methods:
                r = in_fresh_process(fit_in_child, method, path, 5, 500)
                say(
                    f"| {density} | {len(values):,} | {method} | {r['seconds']:.2f} "
                    f"| {r['n_iter']} | {r['before_mib']:.0f} | {r['peak_mib']:.0f} "
                    f"| {r['growth_mib']:.1f} "
                    f"| {r['deviance']:.6g} |"
                )
        say(
            "baseline peak RSS (Python, numpy, vbsnmf, tensorly, the data): "
            f"{base['peak_mib']:.0f} MiB"
            + ("" if _installed("tensorly") else " (tensorly not installed: not counted)")
        )
    for method, advice in missing.items():
        say(f"{method}: skipped, not installed ({advice})")


def section_svi(args, say) -> None:
    shape = (60, 40, 30) if args.quick else (120, 80, 60)
    say(f"\n## 4. SVI forms against batch VB (tensor {shape} from the model, density 0.1, K=3)")
    say("gap = (batch ELBO - ELBO) / |batch ELBO|; SVI with tol=0 runs all its epochs")
    say("| fit | epochs | final ELBO | gap | seconds |")
    say("|---|---|---|---|---|")
    for row in in_fresh_process(svi_forms, shape, 0.1, 3):
        say(
            f"| {row['fit']} | {row['epochs']} | {row['elbo']:.8g} | {row['gap']:.2%} "
            f"| {row['seconds']:.2f} |"
        )


def section_squarem(args, say) -> None:
    rows = in_fresh_process(squarem_pairs, args.seeds, 8, args.quick)
    say(
        f"\n## 5. SQUAREM against plain coordinate ascent: tutorial tensor {rows[0]['shape']}, "
        f"{rows[0]['nnz']:,} nonzeros, K=8, tol=1e-6, 2 threads"
    )
    say(
        "| seed | prior | plain: passes | s | ELBO | SQUAREM: passes | s | ELBO "
        "| ELBO gain | seconds plain / SQUAREM |"
    )
    say("|---|---|---|---|---|---|---|---|---|---|")
    ratios = {"gamma": [], "hierarchical": []}
    for plain, fast in zip(rows[0::2], rows[1::2]):
        ratio = plain["seconds"] / fast["seconds"]
        ratios[plain["prior"]].append(ratio)
        marks = ["" if r["converged"] else " (not converged)" for r in (plain, fast)]
        say(
            f"| {plain['seed']} | {plain['prior']} | {plain['passes']}{marks[0]} "
            f"| {plain['seconds']:.1f} | {plain['elbo']:.2f} | {fast['passes']}{marks[1]} "
            f"| {fast['seconds']:.1f} | {fast['elbo']:.2f} | {fast['elbo'] - plain['elbo']:+.2f} "
            f"| **{ratio:.2f}** |"
        )
    for prior, values in ratios.items():
        say(f"{prior}: median seconds plain / SQUAREM {np.median(values):.2f}")


def section_eval_every(args, say) -> None:
    rows = in_fresh_process(eval_every_pairs, args.seeds, 10, args.quick)
    say(
        f"\n## 6. eval_every: tutorial tensor {rows[0]['shape']}, {rows[0]['nnz']:,} nonzeros, "
        "K=10, SVI 20 epochs with tol=0, 2 threads"
    )
    say("| form | seed | every epoch: s | ELBO | every fifth: s | ELBO | seconds 1 / 5 |")
    say("|---|---|---|---|---|---|---|")
    ratios = {"nonzeros": [], "slices": []}
    for every, fifth in zip(rows[0::2], rows[1::2]):
        ratio = every["seconds"] / fifth["seconds"]
        ratios[every["form"]].append(ratio)
        say(
            f"| {every['form']} | {every['seed']} | {every['seconds']:.2f} | {every['elbo']:.2f} "
            f"| {fifth['seconds']:.2f} | {fifth['elbo']:.2f} | **{ratio:.2f}** |"
        )
    for form, values in ratios.items():
        say(f"{form}: median seconds every epoch / every fifth {np.median(values):.2f}")


if __name__ == "__main__":
    main()
