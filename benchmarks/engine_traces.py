"""ELBO traces of every engine from one fixed start, to compare two commits bit for bit.

Run on two commits, saving the traces of the first and comparing the second with them:

    python benchmarks/engine_traces.py --save traces_a.npz      # on commit A
    python benchmarks/engine_traces.py --compare traces_a.npz   # on commit B

Each line names an engine and prints the SHA-256 of its trace's float64 bytes, its length
and its last value; with ``--compare``, whether the trace is bitwise the saved one and
otherwise its largest difference in units in the last place (ulp). The start (Gamma shapes
and rates of both sides) is drawn here with numpy, and the SVI drivers get the same start
and the same minibatch generator, so the traces depend only on the engine's arithmetic,
not on how a commit draws its random start.
The script speaks both the engine's interface before the restructure of issue 15 (``_vb``,
``svi_form="seed"``) and after it (``_model``, ``svi_form="abe-shimamura"``).
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from _common import require_files, require_out_file

import vbsnmf

N_COMPONENTS = 6
N_ITER = 25


def _start(shape: tuple[int, int], total: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261201)
    n_rows, n_cols = shape
    rate = 1.5 / np.sqrt(total / (n_rows * n_cols) / N_COMPONENTS)
    return {
        "row_shape": 1.0 + rng.random((n_rows, N_COMPONENTS)),
        "row_rate": np.full(N_COMPONENTS, rate),
        "col_shape": 1.0 + rng.random((n_cols, N_COMPONENTS)),
        "col_rate": np.full(N_COMPONENTS, rate * 1.1),
    }


TRACES: dict[str, np.ndarray] = {}


def _line(name: str, trace) -> str:
    trace = np.ascontiguousarray(trace, dtype=np.float64)
    TRACES[name] = trace
    digest = hashlib.sha256(trace.tobytes()).hexdigest()[:16]
    return f"{name:<28} n={trace.size:<3} sha256={digest} last={float(trace[-1])!r}"


def _compared(name: str, saved) -> str:
    trace = TRACES[name]
    if name not in saved:
        return "not in the saved traces"
    old = saved[name]
    if old.shape != trace.shape:
        return f"length {trace.size} vs {old.size} saved"
    if np.array_equal(old.view(np.uint64), trace.view(np.uint64)):
        return "bitwise equal"
    ulps = np.abs(trace - old) / np.spacing(np.abs(old))
    return f"differs: at most {ulps.max():.0f} ulp ({np.max(np.abs(trace / old - 1)):.1e} relative)"


def _engine():
    """The interface of this commit: ``(new, module of the model)``."""
    try:
        from vbsnmf import _model

        return True, _model
    except ImportError:
        from vbsnmf import _vb

        return False, _vb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", metavar="NPZ", help="save the traces to this file")
    parser.add_argument("--compare", metavar="NPZ", help="compare with traces saved earlier")
    args = parser.parse_args()
    require_files(parser, compare=args.compare)
    require_out_file(parser, save=args.save)
    saved = None
    if args.compare:  # read before the fits: a file that is not saved traces was np.load's
        # traceback after every fit, the traces computed and lost unprinted
        try:
            traces = np.load(args.compare)
        except OSError as error:
            parser.error(f"argument --compare: cannot read {args.compare}: {error.strerror}")
        except (ValueError, EOFError):  # numpy's advice on pickles would mislead here
            traces = None
        if not isinstance(traces, np.lib.npyio.NpzFile):  # not numpy's, or a lone .npy array
            parser.error(f"argument --compare: not traces saved by --save: {args.compare}")
        with traces:
            saved = {name: traces[name] for name in traces.files}
    warnings.simplefilter("ignore")
    counts = sp.csr_matrix(vbsnmf.datasets.pbmc_tiny().X, dtype=np.float64)
    start = _start(counts.shape, float(counts.sum()))
    new, model = _engine()
    lines = []

    # Batch VB through the estimator, with and without checkpoints.
    if new:
        init = {
            "cell_shape": start["row_shape"],
            "cell_rate": start["row_rate"],
            "gene_shape": start["col_shape"],
            "gene_rate": start["col_rate"],
        }
    else:
        init = {
            "obs_shape": start["row_shape"],
            "obs_rate": start["row_rate"],
            "var_shape": start["col_shape"],
            "var_rate": start["col_rate"],
        }
    # The fixed prior where the interface has a choice (the learned prior came later).
    fixed = {"prior": "gamma"} if new else {}
    for threads in (1, 2):
        fit = vbsnmf.VBNMF(N_COMPONENTS, max_iter=N_ITER, tol=0.0, n_threads=threads, **fixed)
        fit.fit(counts, init=init)
        lines.append(_line(f"batch threads={threads}", fit.elbo_trace_))
        lines.append(_line(f"batch threads={threads} E[w]", fit.components_.ravel()))
    with tempfile.TemporaryDirectory() as folder:
        fit = vbsnmf.VBNMF(
            N_COMPONENTS,
            max_iter=N_ITER,
            tol=0.0,
            n_threads=2,
            checkpoint=Path(folder) / "fit.ckpt",
            checkpoint_every=5,
            **fixed,
        )
        fit.fit(counts, init=init)
        lines.append(_line("batch checkpointed", fit.elbo_trace_))

    # The SVI drivers from the same start and the same minibatch generator.
    lines += _svi_traces(new, model, counts, start)
    lines += _dask_traces(new, counts, init)
    if saved is not None:
        lines = [f"{line}  {_compared(line[:28].strip(), saved)}" for line in lines]
    print("\n".join(lines))
    if args.save:
        np.savez(args.save, **TRACES)


def _svi_traces(new: bool, model, counts, start) -> list[str]:
    from vbsnmf import _svi

    params = model.VariationalParams(
        start["row_shape"], start["row_rate"], start["col_shape"], start["col_rate"]
    )
    lines = []
    if new:
        from vbsnmf.io._stream import InMemorySource

        prior = model.GammaPrior(1.0, 1.0)
        forms = (("nonzeros", "textbook"), ("abe-shimamura", "seed"))
    else:
        from vbsnmf._stream import InMemorySource

        forms = (("textbook", "textbook"), ("seed", "seed"))
    if new:
        from vbsnmf._data import as_count_data
    else:
        as_count_data, prior = model.as_count_data, None
    data = as_count_data(counts)
    for form, label in forms:
        settings = _settings(new, prior, batch_size=data.nnz // 4)
        state = _svi.SVIState(params.copy(), np.random.default_rng(7))
        state = _svi.fit_svi_nonzeros(data, state, settings, form=form)
        lines.append(_line(f"svi {label}", state.elbo_trace))
    settings = _settings(new, prior, batch_size=128)
    cells_start = params.copy()
    cells_start.row_shape = np.full_like(start["row_shape"], 2.0)
    state = _svi.SVIState(cells_start, np.random.default_rng(7))
    state = _svi.fit_svi_cells(InMemorySource(counts), state, settings)
    lines.append(_line("svi cells", state.elbo_trace))
    return lines


def _settings(new: bool, prior, batch_size: int):
    from vbsnmf import _svi

    common = {
        "batch_size": batch_size,
        "tau": 1.0,
        "kappa": 0.55,
        "n_epochs": 3,
        "eval_every": 1,
        "tol": 0.0,
        "local_max_iter": 200,
        "local_tol": 1e-5,
    }
    if new:
        return _svi.SVISettings(prior=prior, n_threads=1, **common)
    return _svi.SVISettings(prior_shape=1.0, prior_rate=1.0, n_chunks=1, **common)


def _dask_traces(new: bool, counts, init) -> list[str]:
    import dask.array as da
    from distributed import Client, LocalCluster

    lines = []
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    with Client(cluster) as client:
        for chunk in (300, 1107):
            X = da.from_array(counts, chunks=(chunk, -1), asarray=False)
            fixed = {"prior": "gamma"} if new else {}
            result = vbsnmf.fit_dask(
                X, N_COMPONENTS, init=init, max_iter=N_ITER, tol=0.0, client=client, **fixed
            )
            lines.append(_line(f"dask batch chunks={chunk}", result.elbo_trace))
    cluster.close()
    return lines


if __name__ == "__main__":
    main()
