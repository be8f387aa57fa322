"""The ``vbsnmf`` command line: parse, call `vbsnmf.io` and `vbsnmf.tl`, report.

Commands: ``fit`` (factorise a count matrix into an output folder), ``umap`` (draw the
NMF-based UMAP of a result) and ``demo`` (both, on the bundled pbmc_facs data).

Contract, for people and for scripts: results on stdout, progress and messages on stderr;
any error is one line on stderr and exit code 2 (bad input or options), with nothing
written to the output folder, which appears only once complete (it is built in a
temporary folder beside it and renamed). Nothing else the user owns is written or removed:
OUTDIR may not be, hold or lie inside an input or the checkpoint (nor be the current
folder), and ``--checkpoint`` must name an absent path or a vbsnmf checkpoint; such
mistakes are refused before any work. Ctrl-C exits with 130, SIGTERM (sent by
``timeout``, SLURM, Docker) with 143 and SIGHUP with 129 (128 + the signal's number, as a
shell reports a process killed by it), each with one line and no partial outputs, also
while the command is still starting. Set ``VBSNMF_DEBUG=1`` to see the traceback of an
unexpected error (exit 1; ``0`` or empty: off).

Only the standard library is imported here at start-up; numpy, scipy, Numba and the rest
(seconds to import) load inside `main`, where an interruption is handled.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

from . import __version__
from ._quoting import quoted_path

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# What --version prints (argparse, and `main` without building the parser)
VERSION_LINE = f"vbsnmf {__version__}"
VB_SOLVERS = ("batch", "svi")
DATASETS = ("pbmc_facs", "pbmc_tiny")
# What ``vbsnmf demo`` names in its paths' checks where a fit names its input: the folder
# of its data sets (it takes no input).
_DEMO_PACKAGE = "the vbsnmf package"
# --convert-to's names that `vbsnmf.io.read` reads back as an AnnData (an .h5 holding one
# is read as such, not as Cell Ranger's)
CONVERTED_SUFFIXES = (".h5ad", ".h5")
# --key's default: tl.nmf's default keys (.obsm['X_nmf'], .varm['NMF'], .uns['nmf'])
DEFAULT_KEY = "nmf"
# Seeds up to 2**32 - 1: what every method's generator takes (scikit-learn's RandomState).
MAX_SEED = 2**32 - 1
# Handled like Ctrl-C, exit code 128 + the signal's number.
STOP_SIGNALS = {"SIGTERM": "terminated (SIGTERM)", "SIGHUP": "hung up (SIGHUP)"}


class UsageError(Exception):
    """A command-line mistake, reported as one line and exit code 2."""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwound like Ctrl-C (temporary outputs removed)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so that every error
    is reported the same way: one line on stderr."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")

    def _print_message(self, message: str, file=None) -> None:
        """argparse's, which ignores a failed write: the text of --help or --version lost
        on a full disk (``vbsnmf --version > /dev/full``, where a buffered stream fails
        only as it is flushed) exited 0 without a word. A reader that stopped reading
        (``vbsnmf fit --help | head -3``) is still no error."""
        if not message:
            return
        stream = file or sys.stderr
        try:
            stream.write(message)
            stream.flush()
        except BrokenPipeError:
            pass
        except (OSError, ValueError) as error:  # ValueError: the stream was closed
            raise UsageError(f"cannot print to stdout ({_one_line(error)})") from None


# -- argument types -------------------------------------------------------------------------
def _integer(minimum: int, maximum: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}" + ("" if maximum is None else f" and <= {maximum}")
    return parse


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _path(text: str) -> str:
    """A path argument, as given; an empty one is refused: the operating system takes ""
    for no file, but `pathlib` for the current folder, and the checks then named that
    folder ("OUTDIR lies inside the input ") rather than the empty argument."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def _name(text: str) -> str:
    """A name argument (``--key``, ``--layer``, ``--color``) as the text typed, its bytes
    decoded as UTF-8 (`vbsnmf._utils.utf8_text`): under ``LC_ALL=C`` with ``PYTHONUTF8=0``
    Python holds them as surrogate escapes, so ``--layer c\u00f6unts`` named no layer of a
    file holding it and ``--key \u00e9`` was refused as a lone surrogate."""
    from ._utils import utf8_text

    return utf8_text(text)


def build_parser() -> argparse.ArgumentParser:
    """The parser of all commands (``vbsnmf --help`` shows it)."""
    parser = _Parser(
        prog="vbsnmf",
        description="Sparse variational Bayesian NMF of single-cell RNA-seq counts.",
        epilog="Errors: one line on stderr, exit code 2. Ctrl-C: exit code 130; SIGTERM: "
        "143; SIGHUP: 129; no partial outputs. Run 'vbsnmf COMMAND --help' for each "
        "command's options.",
    )
    parser.add_argument("--version", action="version", version=VERSION_LINE)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    fit = commands.add_parser(
        "fit",
        help="factorise a count matrix; write factors, ELBO trace and result.h5ad",
        description="Fit NMF to a count matrix and write to OUTDIR: result.h5ad (the input "
        "with .obsm['X_nmf'], .varm['NMF'], .uns['nmf'] (or those of --key), as "
        "vbsnmf.tl.nmf leaves it), "
        "cell_factors.tsv.gz and gene_loadings.tsv.gz (posterior means, with names), "
        "top_genes.tsv (the 10 most specific genes of each active factor), elbo.tsv (the "
        "ELBO and its pass; loss.tsv for a classical solver) and params.json (settings and "
        "summary, with the active factors).",
    )
    fit.add_argument(
        "input",
        type=_path,
        metavar="INPUT",
        help="a 10x folder as Cell Ranger or STARsolo writes it, a Cell Ranger .h5, an .h5ad "
        "file or a .zarr store (cells x genes), or an .mtx / .mtx.gz file (then give "
        "--genes-as-rows or --cells-as-rows)",
    )
    _add_fit_options(
        fit,
        outdir_required=True,
        svi_title="stochastic VB (--solver svi; a 10x folder, an .mtx or the X of an .h5ad "
        "stored as CSR or dense is streamed from disk a minibatch of cells at a time, any "
        "other input or --layer/--use-raw read into memory)",
    )
    orientation = fit.add_mutually_exclusive_group()
    orientation.add_argument(
        "--genes-as-rows",
        dest="genes_as_rows",
        action="store_const",
        const=True,
        default=None,
        help=".mtx input: rows are genes, columns cells (the 10x convention)",
    )
    orientation.add_argument(
        "--cells-as-rows",
        dest="genes_as_rows",
        action="store_const",
        const=False,
        help=".mtx input: rows are cells, columns genes",
    )
    fit.add_argument(
        "--row-names",
        type=_path,
        metavar="FILE",
        help=".mtx input: text file (plain or .gz), one name per line for the matrix rows "
        "(first tab-separated field; of a 10x features file as the genes' names, only the "
        "Gene Expression features are fitted when it lists others, as in a 10x folder)",
    )
    fit.add_argument(
        "--col-names",
        type=_path,
        metavar="FILE",
        help=".mtx input: the same for the matrix columns",
    )
    fit.add_argument(
        "--layer",
        type=_name,
        metavar="NAME",
        help=".h5ad or .zarr input: take the counts from .layers[NAME]",
    )
    fit.add_argument(
        "--use-raw", action="store_true", help=".h5ad or .zarr input: take the counts from .raw"
    )
    fit.add_argument(
        "--key",
        type=_name,
        default=DEFAULT_KEY,
        metavar="NAME",
        help="store the fit under NAME: .obsm['X_NAME'], .varm[NAME], .uns[NAME], beside "
        "what the input holds under other keys; 'vbsnmf umap --key NAME' draws it "
        f"(default: {DEFAULT_KEY}, with the loadings in .varm['NMF'])",
    )
    fit.add_argument(
        "--convert-to",
        type=_path,
        metavar="PATH",
        help="--solver svi on a 10x folder or .mtx: the .h5ad the matrix is converted into "
        "once (vbsnmf.io.mtx_to_h5ad), to stream from and to fit again later; it must not "
        "exist, and its name ends with .h5ad (default: OUTDIR/counts.h5ad; a dense, "
        "array-format matrix is read into memory instead)",
    )
    fit.set_defaults(run=_run_fit)

    umap = commands.add_parser(
        "umap",
        help="draw the UMAP of the NMF usages of a result.h5ad",
        description="Build the cell neighbour graph on the NMF usages (scanpy's neighbors "
        "with use_rep='X_nmf_sqrt_usage', the square roots of each cell's share of its fitted "
        "counts from each factor), embed it with UMAP and draw it to a figure.",
    )
    umap.add_argument(
        "result",
        type=_path,
        metavar="RESULT.h5ad",
        help="result.h5ad written by 'vbsnmf fit', or an .h5ad of cells projected onto a fit "
        "(vbsnmf.tl.project); also such an AnnData saved as a .zarr store",
    )
    umap.add_argument(
        "-o",
        "--output",
        type=_path,
        required=True,
        metavar="FILE",
        help="figure to write; the format follows the suffix (.png, .pdf, .svg)",
    )
    umap.add_argument(
        "--color",
        type=_name,
        metavar="COLUMN",
        help="colour cells by this .obs column or gene, or by 'leiden' (Leiden clusters of the "
        "graph, computed when not stored; needs igraph) (default: each cell's dominant factor)",
    )
    umap.add_argument(
        "--key",
        type=_name,
        default=DEFAULT_KEY,
        metavar="NAME",
        help=f"the fit's --key, as given to 'vbsnmf fit' (default: {DEFAULT_KEY})",
    )
    umap.add_argument(
        "--n-neighbors",
        type=_integer(2),
        default=15,
        metavar="N",
        help="neighbours per cell, at least 2 and at most the cells less one (a larger N "
        "is lowered to it) (default: 15)",
    )
    umap.add_argument(
        "--seed",
        type=_integer(0, MAX_SEED),
        default=0,
        help=f"UMAP seed, 0 to {MAX_SEED} (default: 0)",
    )
    # as fit's and demo's: a script quieting its every step was refused at this one
    umap.add_argument("--quiet", action="store_true", help="no messages")
    umap.set_defaults(run=_run_umap)

    demo = commands.add_parser(
        "demo",
        help="fit the bundled pbmc_facs data and draw its UMAP coloured by cell population",
        description="Fit NMF to a bundled data set (default pbmc_facs: 3,774 FACS-sorted "
        "PBMCs x 16,791 genes) and write to OUTDIR everything 'vbsnmf fit' writes, plus "
        "umap.png: the UMAP of the NMF usages' square roots (as 'vbsnmf umap' draws it), "
        "coloured by the sorted population when known.",
    )
    demo.add_argument(
        "--dataset",
        choices=DATASETS,
        default="pbmc_facs",
        help="bundled data set (default: pbmc_facs)",
    )
    _add_fit_options(
        demo,
        outdir_required=False,
        default_k=15,
        svi_title="stochastic VB (--solver svi; the data set is held in memory)",
    )
    demo.set_defaults(run=_run_demo, layer=None, use_raw=False, convert_to=None, key=DEFAULT_KEY)
    return parser


def _add_fit_options(
    command, *, outdir_required: bool, svi_title: str, default_k: int | None = None
) -> None:
    """Options shared by ``fit`` and ``demo``; ``svi_title`` heads the SVI options (what
    streams from disk: the demo's data set is in memory, and it has no --layer/--use-raw)."""
    from . import tl
    from ._svi import CELL_STEPS_PER_EPOCH, DEFAULT_EPOCHS, EVAL_BLOCK_ROWS, MIN_CELL_BATCH
    from .classic._options import MAX_ITER as CLASSIC_MAX_ITER
    from .classic._options import TOL as CLASSIC_TOL

    variational = _estimator_defaults()

    command.add_argument(
        "-k",
        "--n-components",
        type=_integer(1),
        required=default_k is None,
        default=default_k,
        metavar="K",
        help="number of factors" + ("" if default_k is None else f" (default: {default_k})"),
    )
    command.add_argument(
        "-o",
        "--outdir",
        type=_path,
        required=outdir_required,
        default=None if outdir_required else "vbsnmf_demo",
        metavar="OUTDIR",
        # "lie inside" the input too (refused), but not the current folder (-o run1 is)
        help="output folder; must not exist unless --force, nor be, hold or lie inside "
        + ("the input" if outdir_required else _DEMO_PACKAGE)
        + ", nor be or hold the checkpoint or the current folder"
        + ("" if outdir_required else " (default: vbsnmf_demo)"),
    )
    command.add_argument(
        "--solver",
        choices=tl.SOLVERS,
        default="batch",
        help="batch (variational Bayes, default), svi (stochastic VB), or a classical "
        "solver: " + ", ".join(s for s in tl.SOLVERS if s not in VB_SOLVERS),
    )
    command.add_argument(
        "--max-iter",
        type=_integer(1),
        metavar="N",
        help=f"maximum iterations (default: {variational['max_iter']}; a classical solver: "
        f"{CLASSIC_MAX_ITER}); svi: passes of each minibatch's local fit, the passes over "
        "the cells being --epochs",
    )
    command.add_argument(
        "--tol",
        type=_tolerance,
        metavar="T",
        help="stop when the relative change of the ELBO (a classical solver: of the loss) "
        f"is below T (default: {variational['tol']}; a classical solver: {CLASSIC_TOL}); "
        "svi: also each minibatch's local fit, which with T = 0 runs --max-iter passes",
    )
    command.add_argument(
        "--seed",
        type=_integer(0, MAX_SEED),
        default=0,
        help=f"random seed, 0 to {MAX_SEED} (default: 0)",
    )
    command.add_argument(
        "--threads",
        type=_integer(1),
        metavar="T",
        # "all cores" was not what ran under NUMBA_NUM_THREADS, which also caps --threads
        help="Numba threads, at most the cores or NUMBA_NUM_THREADS where it is set (a "
        "larger T is lowered to it; params.json records the threads used) (default: all)",
    )
    command.add_argument(
        "--prior",
        choices=("hierarchical", "gamma"),
        help="batch or svi: learned per-cell and per-gene scales (hierarchical, default) or "
        "the fixed Gamma(1, 1) prior (gamma)",
    )
    command.add_argument(
        "--n-init",
        type=_integer(1),
        metavar="N",
        help="batch: random starts; the fit with the best final ELBO is kept (default: "
        f"{variational['n_init']})",
    )
    command.add_argument(
        "--init",
        choices=("random", "nndsvda"),
        help="batch: the start, random (default) or NNDSVDa of the counts (one start, its "
        "truncated SVD drawn from --seed; learned prior only)",
    )
    command.add_argument(
        "--checkpoint",
        type=_path,
        metavar="PATH",
        help="batch or svi: save the variational state to PATH while fitting; PATH must be "
        "absent or a vbsnmf checkpoint, outside "
        + ("the input" if outdir_required else _DEMO_PACKAGE)
        + " and OUTDIR",
    )
    command.add_argument(
        "--resume", action="store_true", help="continue from the state saved at --checkpoint"
    )
    command.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    command.add_argument(
        "--force",
        action="store_true",
        help="replace an existing OUTDIR that holds an earlier output (only files vbsnmf "
        "writes; a folder with anything else is refused, and if such files appear while "
        "the fit runs, the new output is kept beside it as OUTDIR.new)",
    )
    svi = command.add_argument_group(svi_title)
    svi.add_argument(
        "--batch-size",
        type=_integer(1),
        metavar="N",
        help=f"cells per minibatch (default: the cells in {CELL_STEPS_PER_EPOCH} minibatches "
        f"of {MIN_CELL_BATCH:,} to {EVAL_BLOCK_ROWS:,} cells)",
    )
    svi.add_argument(
        "--epochs",
        type=_integer(1),
        metavar="N",
        help=f"passes over the cells (default: {DEFAULT_EPOCHS}; without --batch-size on "
        f"fewer than {MIN_CELL_BATCH * CELL_STEPS_PER_EPOCH:,} cells, as many as make "
        f"{DEFAULT_EPOCHS * CELL_STEPS_PER_EPOCH:,} minibatches)",
    )


# -- output streams -------------------------------------------------------------------------
def _tell(message: str) -> None:
    """``message`` as one line on stderr, if stderr takes it. A closed stderr (then
    ``sys.stderr`` is None, and print would write to stdout instead) or a full one loses
    the message but neither the command's work nor its exit code."""
    if sys.stderr is None:
        return
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # ValueError: the stream was closed
        pass


class _ProgressStream:
    """stderr for the progress bar, a convenience that must not stop the fit: once a
    write fails (stderr closed or full) the bar writes nothing more. Anything else
    (``fileno``, ``isatty``: the bar's width) is stderr's."""

    def __init__(self, stream):
        self._stream = stream
        self._failed = False

    def write(self, text: str) -> None:
        self._attempt(self._stream.write, text)

    def flush(self) -> None:
        self._attempt(self._stream.flush)

    def _attempt(self, call, *args) -> None:
        if self._failed:
            return
        try:
            call(*args)
        except (OSError, ValueError):  # ValueError: the stream was closed
            self._failed = True

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _print_result(line: str, written: Path) -> None:
    """``line`` on stdout once ``written`` (OUTDIR or a figure) is in place. When stdout
    fails (a closed pipe, a full disk) the error carries ``written``, and `main` says
    that it is complete and only its summary was lost. A name that stdout's encoding
    cannot hold (a file name of other bytes than UTF-8 under a strict UTF-8 locale, a
    character beyond a Windows code page) is printed escaped, as on stderr: its error
    said "vbsnmf: error:" with exit code 2 beside a complete output."""
    try:
        try:
            print(line, flush=True)  # flushed now: a failure at exit could not be reported
        except UnicodeEncodeError:  # raised before anything of the line was written
            encoding = sys.stdout.encoding
            print(line.encode(encoding, "backslashreplace").decode(encoding), flush=True)
    except OSError as error:
        error.written = written
        raise


@contextlib.contextmanager
def _doing(what: str) -> Iterator[None]:
    """A MemoryError in the block carries ``what`` was being done, which `main` tells
    (a failed allocation's own MemoryError says nothing). The innermost stage is kept."""
    try:
        yield
    except MemoryError as error:
        if getattr(error, "doing", None) is None:
            error.doing = what
        raise


# -- commands -------------------------------------------------------------------------------
def _fit_params(args) -> dict:
    """Estimator parameters from the options; optional ones only when given."""
    params = {}
    for option, name in (
        ("max_iter", "max_iter"),
        ("tol", "tol"),
        ("threads", "n_threads"),
        ("batch_size", "batch_size"),
        ("epochs", "n_epochs"),
        ("checkpoint", "checkpoint"),
        ("prior", "prior"),
        ("n_init", "n_init"),
        ("init", "init"),
    ):
        value = getattr(args, option)
        if value is not None:
            params[name] = value
    if args.resume:
        params["resume"] = True
    return params


def _key_added(key: str) -> str | None:
    """``tl.nmf``'s ``key_added`` for ``--key``: None, its default keys, for the default
    (``key_added="nmf"`` would name the loadings ``.varm['nmf']``, not ``.varm['NMF']``)."""
    return None if key == DEFAULT_KEY else key


def _estimator_defaults() -> dict:
    """`vbsnmf.VBNMF`'s defaults, read from its signature (not copies of them)."""
    import inspect

    from . import VBNMF

    return {name: p.default for name, p in inspect.signature(VBNMF).parameters.items()}


def _check_options(args) -> None:
    """Options that do not apply to the chosen solver, refused before any work."""
    if args.solver != "svi":
        for option, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
            if value is not None:
                raise UsageError(f"{option} applies to --solver svi, not {args.solver}")
    # --resume too: "--resume needs --checkpoint PATH" sent the user to an option that
    # a classical solver refuses
    for option, given in (
        ("--checkpoint", args.checkpoint is not None),
        ("--resume", args.resume),
        ("--prior", args.prior is not None),
    ):
        if args.solver not in VB_SOLVERS and given:
            raise UsageError(f"{option} applies to --solver batch or svi, not {args.solver}")
    for option, value in (("--n-init", args.n_init), ("--init", args.init)):
        if args.solver != "batch" and value is not None:  # SVI runs one start, at random
            raise UsageError(f"{option} applies to --solver batch, not {args.solver}")
    if (args.n_init or 1) > 1 and args.checkpoint is not None:
        raise UsageError("--checkpoint holds one fit: drop --n-init")
    if (args.n_init or 1) > 1 and args.init == "nndsvda":
        raise UsageError("--init nndsvda is one start: drop --n-init")
    if args.convert_to is not None and args.solver != "svi":
        raise UsageError(f"--convert-to applies to --solver svi, not {args.solver}")
    if args.resume and args.checkpoint is None:
        raise UsageError("--resume needs --checkpoint PATH (the state to resume from)")


def _check_paths(args, inputs) -> Path:
    """The checkpoint and OUTDIR against the inputs (`vbsnmf.io`); returns OUTDIR."""
    from . import io
    from ._utils import utf8_text

    named = "name a folder (./- names one called '-')"
    _check_not_standard_output("-o", args.outdir, "OUTDIR as a folder of files", named)
    named = "name a file (./- names one called '-')"
    _check_not_standard_output(
        "--checkpoint", args.checkpoint, "the checkpoint to a file that --resume reads", named
    )
    _check_not_standard_output(
        "--convert-to",
        args.convert_to,
        "the converted counts to an .h5ad file that the fit streams from",
        "name a file ending in .h5ad",
    )
    if args.checkpoint is not None:
        try:  # result.h5ad records it as text: writing failed after the whole fit
            # its bytes, not Python's text of them: under LC_ALL=C a UTF-8 name is held
            # as surrogate escapes, and "ck_\u00e9.npz" was refused as not UTF-8
            utf8_text(args.checkpoint).encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(
                f"--checkpoint {args.checkpoint!r}: its name is not valid UTF-8, which "
                "result.h5ad records; name another file"
            ) from None
        io.check_checkpoint_path(args.checkpoint, inputs)
        _check_resumed_solver(args)
    return io.check_outdir(args.outdir, force=args.force, inputs=inputs, checkpoint=args.checkpoint)


def _check_resumed_solver(args) -> None:
    """--resume of a checkpoint of the other variational solver, refused before any work
    with the option that resumes it: the fit's own check came after the input was read
    (or converted, for svi), listing settings that are no options (kappa, tau) and
    advising to remove the checkpoint, the state the user meant to resume."""
    from ._checkpoint import _estimator_of, read_checkpoint_meta

    if not (args.resume and os.path.exists(args.checkpoint)):
        return
    config = read_checkpoint_meta(args.checkpoint).get("config")
    if isinstance(config, dict) and _estimator_of(config) != _estimator_of({}):
        # a tensor's (VBNTF) fit, which no --solver resumes: "pass --solver svi" sent the
        # user to the fit's own refusal of it
        raise UsageError(
            f"--checkpoint {quoted_path(args.checkpoint)} was written by {_estimator_of(config)}, "
            "which the command line does not fit: name another checkpoint (or drop --resume to "
            "overwrite it)"
        )
    saved = config.get("solver") if isinstance(config, dict) else None
    if saved in VB_SOLVERS and saved != args.solver:
        raise UsageError(
            f"--checkpoint {quoted_path(args.checkpoint)} holds a fit of --solver {saved}, not "
            f"{args.solver}: pass --solver {saved} to resume it"
        )


@_doing("fitting")
def _fit(
    adata,
    args,
    quiet: bool,
    matrix_file: str | None = None,
    anndata_file: str | None = None,
    notes: Sequence[str] = (),
) -> float:
    """`vbsnmf.tl.nmf` with a progress bar on stderr; returns the seconds taken.
    ``matrix_file``: the input, when it holds one matrix and no AnnData; ``anndata_file``:
    the input, when it is an AnnData (`_as_options`), each as messages name it
    (`quoted_path`); ``notes``: lines told once the fit
    runs, as the note below."""
    if not quiet:  # the progress bar's; a --quiet fit shows none and runs without tqdm
        from tqdm.auto import tqdm

    from . import CheckpointMismatchError, tl
    from ._svi import default_n_epochs

    params = _fit_params(args)
    _check_var_index_name(adata, args, anndata_file)
    # resume=True starts afresh without a checkpoint: say so (a mistyped path resumes
    # nothing), at the first iteration (or the end of a fit that reported none): said
    # before, an input the fit then refused left two lines on stderr, the first
    # announcing a fit that never ran
    notes = list(notes)
    if args.resume and not quiet and not os.path.lexists(args.checkpoint):
        notes.append(f"vbsnmf: no checkpoint at {quoted_path(args.checkpoint)} yet: a new fit")
    defaults = _estimator_defaults()
    # The callback runs once per iteration (batch) or per epoch (svi); --n-init's starts
    # each count theirs from 1, so the bar adds them up rather than running backwards.
    n_starts = params.get("n_init", 1) if args.solver == "batch" else 1
    if args.solver == "batch":
        total = n_starts * params.get("max_iter", defaults["max_iter"])
    elif "n_epochs" in params:
        total = params["n_epochs"]
    else:  # VBNMF's default epochs, which depend on the cells (None would hide the end)
        total = default_n_epochs("cells", adata.n_obs, batch_given="batch_size" in params)
    description = f"{args.solver} K={args.n_components}"
    bars = []  # created at the first iteration, so input errors print no bar
    starts = {"index": 1, "before": 0, "last": 0}  # the current start, the iterations before

    def progress(n_iter, params, elbo_trace):
        if quiet:  # no bar, and no notes to show before it
            return
        if n_iter <= starts["last"]:  # the next of --n-init's starts
            starts["index"] += 1
            starts["before"] += starts["last"]
            if bars:
                bars[0].set_description_str(
                    f"{description} start {starts['index']}/{n_starts}", refresh=False
                )
        starts["last"] = n_iter
        if not bars:
            _tell_notes(notes)
            bars.append(
                tqdm(
                    total=total,
                    desc=description if n_starts == 1 else f"{description} start 1/{n_starts}",
                    unit="epoch" if args.solver == "svi" else "it",
                    file=_ProgressStream(sys.stderr),
                    disable=sys.stderr is None,  # None: fd 2 was closed at start
                    dynamic_ncols=True,
                )
            )
        bar = bars[0]
        bar.update(starts["before"] + n_iter - bar.n)
        if len(elbo_trace):
            bar.set_postfix_str(f"ELBO {elbo_trace[-1]:.8g}", refresh=False)

    start = time.perf_counter()
    finished = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tl.nmf(
                adata,
                args.n_components,
                layer=args.layer,
                use_raw=args.use_raw,
                key_added=_key_added(args.key),
                solver=args.solver,
                random_state=args.seed,
                callback=progress if args.solver in VB_SOLVERS else None,
                **params,
            )
            finished = True
        except CheckpointMismatchError as error:
            raise _mismatch_as_usage(error) from None
        except (ValueError, TypeError) as error:  # say the options, not tl.nmf's parameters
            # TypeError too: an X of strings is refused as one, and its message named
            # "adata.X", not the file
            raise UsageError(_as_options(str(error), matrix_file, anndata_file)) from None
        finally:
            for bar in bars:
                if finished and bar.n < bar.total:
                    # a fit that converged before its last iteration (or epoch) is done:
                    # its bar was left at the fraction reached ("22%| 280/1280"), as if cut
                    # short; it ends at 100 % of the iterations run
                    bar.total = bar.n
                    bar.refresh()
                bar.close()
    _tell_notes(notes)
    if not quiet:
        _print_warnings(caught)
    return time.perf_counter() - start


# How a checkpoint's mismatch names the command line's Gamma(1, 1) prior (`_checkpoint`).
DEFAULT_GAMMA = "prior_shape=1.0, prior_rate=1.0"


def _mismatch_as_usage(error: Exception) -> UsageError:
    """A checkpoint's mismatch (`vbsnmf.CheckpointMismatchError`) in the command line's
    words: the settings named as the options that set them (--tol, not tol)."""
    from ._checkpoint import TRANSPOSED_DATA

    message = str(error)
    if "prior: checkpoint " in message:
        # SQUAREM's acceleration follows --prior here, no option sets it: its line
        # ("accelerate: checkpoint True vs now False") named a Python parameter
        message = re.sub(r"\baccelerate: checkpoint \w+ vs now \w+, ", "", message)
        # --prior gamma is Gamma(1, 1), which no option changes: its parameters
        # (prior_shape=1.0, prior_rate=1.0) named Python parameters the user cannot set
        message = message.replace(f"'gamma' ({DEFAULT_GAMMA})", "'gamma'")
    resumed_in_python = ""
    if TRANSPOSED_DATA in message:
        # on the command line only an .mtx can be read the other way round
        message = message.replace(
            TRANSPOSED_DATA,
            f"{TRANSPOSED_DATA}, as an .mtx read with the other of --genes-as-rows and "
            "--cells-as-rows",
        )
    if FLOAT32_CHECKPOINT in message:
        # no option sets dtype: "remove it" alone threw away a float32 fit (of
        # tl.nmf(dtype=np.float32, checkpoint=...)) that only Python can go on with
        message = message.replace(
            FLOAT32_CHECKPOINT, f"{FLOAT32_CHECKPOINT}, the only dtype the command line fits"
        )
        resumed_in_python = (
            "; or resume it in Python with the settings it was written with, e.g. "
            "vbsnmf.tl.nmf(adata, K, dtype=np.float32, checkpoint=PATH, resume=True)"
        )
    return UsageError(f"{_option_names(message)} (drop --resume){resumed_in_python}")


# A checkpoint of a float32 fit (Python's dtype=np.float32) in `check_config`'s words.
FLOAT32_CHECKPOINT = "dtype: checkpoint 'float32' vs now 'float64'"


def _tell_notes(notes: list) -> None:
    """Each of ``notes`` on stderr, once: they are emptied."""
    while notes:
        _tell(notes.pop(0))


def _check_var_index_name(adata, args, anndata_file: str | None) -> None:
    """Refuse, before the fit, genes whose index is named as the column of total counts
    the fit adds: anndata cannot write the two into result.h5ad, which failed after the
    whole fit."""
    from .tl._stored import FitKeys, index_named_as_totals

    key_added = _key_added(args.key)
    if index_named_as_totals(adata, key_added, args.use_raw):
        column = FitKeys.of(key_added).total_counts
        where = "raw.var" if args.use_raw else "var"
        raise UsageError(
            f"{anndata_file}: its {where} index is named {column!r}, the column of total "
            "counts the fit adds, which result.h5ad cannot hold beside it: rename the index "
            "(adata.var.index.name = None) or pass another --key"
        )


def _print_warnings(caught) -> None:
    """Each distinct UserWarning of ``caught`` as one ``vbsnmf: warning:`` line: vbsnmf's
    own (ConvergenceWarning, NonCountWarning) and the readers'; libraries' deprecation
    notices are not for the person running the command."""
    ours = (w for w in caught if issubclass(w.category, UserWarning))
    for message in dict.fromkeys(" ".join(str(w.message).split()) for w in ours):
        _tell(f"vbsnmf: warning: {_option_names(message)}")


# tl.nmf's parameters that the command line sets, by the options that set them
PARAMETER_OPTIONS = {
    "n_components": "-k",
    "max_iter": "--max-iter",
    "n_epochs": "--epochs",
    "tol": "--tol",
    "batch_size": "--batch-size",
    "n_threads": "--threads",
    "random_state": "--seed",
    "n_init": "--n-init",
    "init": "--init",
    "prior": "--prior",
    "checkpoint": "--checkpoint",
    "layer": "--layer",
    "key_added": "--key",
}
_PARAMETER = "|".join(PARAMETER_OPTIONS)
# a setting: max_iter=5, init='nndsvda', layer= (a quoted value's text without its quotes)
_SETTING = re.compile(rf"\b(?P<name>{_PARAMETER})=(?:(?P<quote>['\"])(?P<text>.*?)(?P=quote))?")
# a requirement on the parameter the message opens with: "key_added must be ..." (not
# "checkpoint PATH is damaged", where the word names the file)
_REQUIREMENT = re.compile(rf"^({_PARAMETER})(?= must )")
# a setting a checkpoint was written with: "tol: checkpoint 1e-05 vs now 0.001"
_MISMATCH = re.compile(rf"\b({_PARAMETER})(?=: checkpoint )")
# advice: "raise max_iter or tol", "choose another key_added"
_ADVICE = re.compile(r"\b(raise|choose another) (\w+)(?: or (\w+))?")


def _option_names(message: str) -> str:
    """``message`` (an error or warning of `tl.nmf`) with its parameters named by the
    options that set them, where they are parameters: in a setting (``max_iter=5``:
    ``--max-iter 5``), in a requirement that opens the message (``key_added must be``) and
    in advice (``raise max_iter or tol``) and in a checkpoint's mismatch (``tol: checkpoint
    1e-05 vs now 0.001``). Elsewhere such a word ("the prior", "checkpoint PATH") is the
    message's own."""
    from .tl._nmf import GENES_BY_CELLS_ADVICE, NO_ACTIVE_ADVICE

    message = message.replace("key_added=None", f"--key {DEFAULT_KEY}")  # its default keys
    if GENES_BY_CELLS_ADVICE in message:  # "adata.T" is no option
        message = message.replace("adata may be genes x cells", "the input may be genes x cells")
        message = message.replace("its var_names look", "its genes' names look")
        message = message.replace("its obs_names look", "its cells' names look")
        message = message.replace(
            GENES_BY_CELLS_ADVICE,
            "its rows are fitted as cells and its columns as genes: if they are the other way "
            "round, read an .mtx with the other of --genes-as-rows and --cells-as-rows (and "
            "its name files swapped), or write an .h5ad's transpose (adata.T.write_h5ad)",
        )
    message = message.replace(
        NO_ACTIVE_ADVICE,
        "top_genes.tsv lists none; vbsnmf.tl.top_genes(adata, include_inactive=True) on "
        "result.h5ad lists every factor",
    )
    message = message.replace("use_raw=True", "--use-raw")
    message = message.replace("(resume=False)", "(without --resume)")
    message = message.replace("resume=True", "--resume")
    message = _SETTING.sub(_setting_as_option, message)
    message = _REQUIREMENT.sub(lambda match: PARAMETER_OPTIONS[match.group(1)], message)
    message = _MISMATCH.sub(lambda match: PARAMETER_OPTIONS[match.group(1)], message)
    return _ADVICE.sub(_advice_as_options, message)


def _setting_as_option(match: re.Match) -> str:
    """``--max-iter 5`` for ``max_iter=5``, ``--init nndsvda`` for ``init='nndsvda'``, and
    ``--layer`` alone for ``layer=`` followed by nothing (``pass layer= to name ...``)."""
    import shlex

    option = PARAMETER_OPTIONS[match["name"]]
    if match["quote"]:
        return f"{option} {shlex.quote(match['text'])}"
    value_follows = match.string[match.end() : match.end() + 1].strip()
    return f"{option} " if value_follows else option


def _advice_as_options(match: re.Match) -> str:
    """``raise --max-iter or --tol`` for ``raise max_iter or tol``; other words kept."""
    verb, *names = match.groups()
    return f"{verb} " + " or ".join(PARAMETER_OPTIONS.get(name, name) for name in names if name)


def _as_options(
    message: str, matrix_file: str | None = None, anndata_file: str | None = None
) -> str:
    """``tl.nmf``'s error in the command line's words: ``--layer counts``, ``--use-raw``,
    ``-k 5`` (`_option_names`).

    For an input of one matrix (``matrix_file``: a Matrix Market file, a 10x folder or
    .h5, not an AnnData) the matrix is named by that input, not as ``adata.X`` or as the
    .h5ad it was converted into for streaming (removed when the fit fails), and the advice
    about layers, which such an input cannot have, is left out. For an AnnData input
    (``anndata_file``) its element is named with the file, as the streamed route does:
    ``in.h5ad (layers['counts'])``, not ``adata.layers['counts']``, and so is the AnnData
    itself: ``which in.h5ad holds``, not ``which adata holds``; ``in.h5ad holds no .raw``,
    not ``adata.raw is None``."""
    message = message.removeprefix("Negative values in data: ")  # scikit-learn's phrase
    if matrix_file is not None:
        # `tl.nmf` names the matrix "adata.X", a streamed block "<file> (X) (cells i..j)"
        message = re.sub(r"^(adata\.X|.*? \(X\))", lambda _: matrix_file, message)
        message = re.sub(r"; NMF needs raw counts: .*", "; NMF needs raw counts", message)
    if anndata_file is not None:
        from .tl._counts import X_HINT  # loaded with tl, whose error this is

        element = r"^adata\.(X|raw\.X|layers\[[^\]]*\])"
        message = re.sub(element, lambda m: f"{anndata_file} ({m.group(1)})", message)
        message = message.replace("adata.raw is None", f"{anndata_file} holds no .raw")
        message = message.replace(
            "adata.raw's gene names", f"the gene names of {anndata_file}'s .raw"
        )
        # where the counts are: the file's X (the advice's Python code keeps "adata.X")
        message = message.replace(X_HINT, f"{anndata_file} (X) {X_HINT.removeprefix('adata.X ')}")
        message = re.sub(r"\badata\b(?!\.)", lambda _: anndata_file, message)
        # the record of an earlier fit that --key would overwrite: "of the fit in.h5ad
        # (uns['nmf'])", not "of the fit adata.uns['nmf']"
        record = r"\badata\.(uns\[[^\]]*\])"
        message = re.sub(record, lambda m: f"{anndata_file} ({m.group(1)})", message)
    return _option_names(message)


def _write_fit(adata, args, folder: Path, source: str, seconds: float) -> dict:
    """result.h5ad, the factor tables, top_genes.tsv, elbo.tsv and params.json into
    ``folder``."""
    import numpy as np

    from . import io
    from ._utils import check_n_threads, utf8_text
    from .io._paths import PARAMS_FILE, RESULT_FILE, TOP_GENES_FILE
    from .io._write import write_tsv
    from .tl._top_genes import left_out_factors, left_out_messages, top_genes_table

    info = adata.uns[args.key]
    trace = info.get("elbo_trace", [])
    summary = {
        "vbsnmf_version": __version__,
        # the libraries the fit's bits depend on, with vbsnmf (as the fit's record names them)
        "versions": dict(info["versions"]),
        "input": utf8_text(source),  # its name's text, also under LC_ALL=C (`utf8_text`)
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.raw.n_vars if args.use_raw else adata.n_vars),
        "n_components": int(args.n_components),
        "solver": args.solver,
        "seed": int(args.seed),
        "fit_params": {k: v for k, v in _fit_params(args).items() if k != "n_threads"},
        "threads": check_n_threads(args.threads),  # those used: --threads is capped at the cores
        "layer": args.layer,
        "use_raw": bool(args.use_raw),
        "key": args.key,
        "n_iter": int(info["n_iter"]),
        "converged": bool(info["converged"]),
        # the columns of the tables that are programs: the others were switched off (the
        # tables hold every factor, and nothing else in OUTDIR's text files told them apart)
        "active_factors": np.flatnonzero(info["active"]).tolist(),
        "final_elbo": float(trace[-1]) if len(trace) else None,
        "seconds": round(seconds, 3),
        "streamed": bool(adata.isbacked),
    }
    if "loss" in info:  # a classical solver: its final loss, as final_elbo for VB
        summary["final_loss"] = float(info["loss"])
    io.write_result(adata, folder / RESULT_FILE)
    io.write_nmf_tables(adata, folder, key=args.key)
    # Through atomic_file as every output, so that each is on disk before OUTDIR replaces
    # the old one: the active factors' 10 most specific genes, seen twice in the data ...
    # tl.top_genes' table without its warning of an active factor it lists no gene of "in
    # the table", with advice for Python: said here of the file, with advice for this line
    min_counts = 2
    top_genes = top_genes_table(adata, 10, args.key, "specificity", min_counts, False)
    if not args.quiet:
        left_out = left_out_factors(adata, args.key, top_genes, include_inactive=False)
        advice = f"vbsnmf.tl.top_genes(adata, min_counts=1) on {RESULT_FILE} lists genes seen once"
        for message in left_out_messages(left_out, TOP_GENES_FILE, str(min_counts), advice):
            _tell(f"vbsnmf: warning: {message}")
    # counts are integers: as floats, "%.6g" rounded those above 999,999 (1.23457e+06)
    top_genes["total_counts"] = top_genes["total_counts"].astype(np.int64)
    with io.atomic_file(folder / TOP_GENES_FILE) as temporary:
        write_tsv(top_genes, temporary, float_format="%.6g")
    # ... and the settings (allow_nan=False: never Infinity or NaN, which are not JSON).
    with io.atomic_file(folder / PARAMS_FILE) as temporary:
        temporary.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def _report(outdir: Path, summary: dict, quiet: bool) -> None:
    if quiet:
        return
    elbo = summary["final_elbo"]
    state = "converged" if summary["converged"] else "not converged"
    passes = "epoch" if summary["solver"] == "svi" else "iteration"
    passes += "" if summary["n_iter"] == 1 else "s"
    _print_result(
        f"wrote {outdir}: {summary['n_cells']} cells x {summary['n_genes']} genes, "
        f"K={summary['n_components']}, {summary['n_iter']} {passes} ({state})"
        + (f", ELBO {elbo:.8g}" if elbo is not None else "")
        + (f", loss {summary['final_loss']:.8g}" if "final_loss" in summary else "")
        + f", {summary['seconds']:.1f} s",
        outdir,
    )


@contextlib.contextmanager
def _outdir_writer(outdir: Path, force: bool) -> Iterator[Path]:
    """`atomic_directory` for OUTDIR: an earlier OUTDIR that ``--force`` replaces is checked
    again as the new output takes its place (`check_earlier_output`), not only before the
    work: what the user saved there meanwhile was deleted with it. If it is refused then,
    the new output is kept beside OUTDIR (`atomic_directory`). Another run that began
    writing OUTDIR as this one passed its checks is refused now (`check_sole_writer`)."""
    from .io import atomic_directory
    from .io._paths import check_earlier_output, check_sole_writer

    earlier = partial(check_earlier_output, outdir=outdir, done=True)
    with atomic_directory(outdir, overwrite=force, replaceable=earlier) as folder:
        check_sole_writer(outdir, folder)
        yield folder


def _check_not_standard_input(label: str, path: str | None) -> None:
    """Refuse ``-`` (the usual name of the standard input) when no file of that name is
    there: read as a file name, ``vbsnmf fit - < counts.mtx`` said "-: no such file or
    directory", as if the data had not arrived. The readers need a file (its size, a second
    pass, its format by its name or first bytes); a file named ``-`` is still read
    (``./-`` names it in any case)."""
    if path == "-" and not os.path.lexists(path):
        raise UsageError(
            f"-: vbsnmf does not read the standard input ({label} '-'); write the data to a "
            "file and name that file"
        )


def _check_not_standard_output(option: str, path: str | None, written: str, advice: str) -> None:
    """Refuse ``-`` (the usual name of the standard output) as an output path: ``-o -``
    wrote a folder named ``-`` into the current folder, where a Unix user looks for the
    output on the terminal or in a pipe. No output here is one stream stdout could carry
    (OUTDIR is a folder of files; the checkpoint is read back by --resume; the converted
    counts are streamed from again; the figure is replaced whole once drawn, and stdout
    carries the summary line), so each is refused, even where a file named ``-`` exists:
    ``./-`` names it. ``written``: what the option writes; ``advice``: what to pass."""
    if path == "-":
        raise UsageError(
            f"{option} -: vbsnmf writes {written}, not to the standard output; {advice}"
        )


def _run_fit(args) -> int:
    from .io._paths import command_inputs

    _check_not_standard_input("INPUT", args.input)
    _check_not_standard_input("--row-names", args.row_names)
    _check_not_standard_input("--col-names", args.col_names)
    inputs = [p for p in (args.input, args.row_names, args.col_names) if p is not None]
    # protected from every check of the run, the estimator's too, which knows only X
    with command_inputs(inputs):
        return _fit_command(args, inputs)


def _fit_command(args, inputs) -> int:
    from ._checkpoint import held_for_fit

    _check_options(args)
    source = Path(args.input)
    outdir = _check_paths(args, inputs)
    # the checkpoint's lock file taken now, and handed to the fit: taken by the fit, after
    # the input was read (or converted), a second run given the same --checkpoint
    # meanwhile passed its checks and was refused only minutes later
    with held_for_fit(args.checkpoint):
        return _fit_checked(args, inputs, source, outdir)


def _fit_checked(args, inputs, source: Path, outdir: Path) -> int:
    """`_fit_command` once the options and paths are checked."""
    from .io import read
    from .io._read import check_read_options

    kind = check_read_options(source, args.genes_as_rows, args.row_names, args.col_names)
    if kind not in ("h5ad", "zarr") and (args.layer is not None or args.use_raw):
        option = "--use-raw" if args.use_raw else "--layer"
        raise UsageError(
            f"{option} applies to an .h5ad or .zarr input; {quoted_path(source)} holds one matrix"
        )
    streamed = args.solver == "svi" and args.layer is None and not args.use_raw
    if args.convert_to is not None and kind not in ("10x", "mtx"):
        raise UsageError("--convert-to converts a 10x folder or an .mtx; the input is neither")
    if streamed and kind in ("10x", "mtx", "h5ad"):
        done = _fit_streamed(args, source, kind, outdir, inputs)
        if done:
            return EXIT_OK
    if args.resume:
        # a checkpoint of another fit refused before the input is read (minutes for a large
        # one), as the streamed route refuses it before converting
        cells_by_genes = _declared_shape(args, source, kind)
        if cells_by_genes is not None:
            _check_resumed_settings(args, cells_by_genes)
    # OUTDIR's temporary folder is made before the input is read and fitted, as the
    # streamed fit makes it: another run given the same OUTDIR meanwhile is refused at its
    # start (made after the read, a second run started while the first read a large .mtx
    # passed its check, and with --force deleted the first's output at its end), and an
    # OUTDIR made while this one fits no longer costs the fit (`atomic_directory`)
    with _outdir_writer(outdir, args.force) as folder:
        with _doing(f"reading {quoted_path(source)}"):
            adata = read(
                source,
                genes_as_rows=args.genes_as_rows,
                row_names=args.row_names,
                col_names=args.col_names,
            )
        if adata.X is None and args.layer is None and not args.use_raw:
            stored = [f"--layer {name}" for name in adata.layers] + (
                ["--use-raw"] if adata.raw is not None else []
            )
            raise UsageError(
                f"{quoted_path(source)} has no X; name the counts with {' or '.join(stored)}"
            )
        if kind in ("h5ad", "zarr"):
            seconds = _fit(adata, args, args.quiet, anndata_file=quoted_path(source))
        else:
            seconds = _fit(adata, args, args.quiet, matrix_file=quoted_path(source))
        with _doing(f"writing {quoted_path(outdir)}"):
            summary = _write_fit(adata, args, folder, str(source), seconds)
    _report(outdir, summary, args.quiet)
    return EXIT_OK


def _fit_streamed(args, source: Path, kind: str, outdir: Path, inputs) -> bool:
    """``fit --solver svi`` streamed from disk: an .h5ad whose X is CSR as it is, a 10x
    folder or .mtx converted once into OUTDIR/counts.h5ad (or --convert-to). False, with
    nothing done, for an .h5ad whose X does not stream, or a Matrix Market file in the
    array format (a dense matrix, which `mtx_to_h5ad` does not convert) when no
    --convert-to asks for its conversion (read into memory instead)."""
    from ._atomic import remove_own
    from .io import read_h5ad_backed

    adata, converted = None, None
    created: list = []  # (device, inode) of the --convert-to file this run made
    if kind == "h5ad":
        adata = read_h5ad_backed(source)
        if adata is None:
            return False
    else:
        header = _matrix_market_header(source, kind)
        if header is not None:
            cells_by_genes = _header_shape(args, header, _genes_kept(args, source, kind, header))
            _check_n_components_fits(args, cells_by_genes)
            if header.fmt == "array":
                if args.convert_to is not None:
                    raise UsageError(
                        "--convert-to converts a sparse (coordinate) Matrix Market file; "
                        f"{quoted_path(source)} holds a dense one (the array format), which "
                        "--solver svi reads into memory: drop --convert-to"
                    )
                return False
            _check_resumed_settings(args, cells_by_genes)
        converted = _check_convert_path(args, outdir, inputs)
    try:
        summary = _convert_and_fit(args, source, kind, outdir, adata, converted, created)
    except BaseException as error:
        # a run that fails leaves nothing new (the same command reconverts); but only the
        # file it made goes: another run given the same --convert-to may have made it. A
        # stop that arrived as OUTDIR took its place (``written``) ends a run that is done.
        if converted is not None and getattr(error, "written", None) is None:
            remove_own(converted, created)
        raise
    _report(outdir, summary, args.quiet)
    return True


def _matrix_market_header(source: Path, kind: str):
    """The header (`vbsnmf.io._read.MtxHeader`) of the matrix of the .mtx or 10x folder
    ``source``, or None for a damaged one."""
    from .io._read import mtx_header, tenx_files

    try:
        return mtx_header(tenx_files(source)[0] if kind == "10x" else source)
    except Exception:  # a damaged file: the reader that reads it next says what is wrong
        return None


def _genes_kept(args, source: Path, kind: str, header) -> int | None:
    """How many genes the conversion of the 10x folder or .mtx ``source`` (of Matrix
    Market ``header``) keeps when its features file names other feature types too
    (`vbsnmf.io._read.read_gene_names`); None for all of the header's, or for a names
    file the conversion refuses (it says why)."""
    from .io import ReadError
    from .io._read import read_gene_names, tenx_files

    genes_as_rows = args.genes_as_rows is not False
    names = args.row_names if genes_as_rows else args.col_names
    if kind == "10x":
        names = tenx_files(source)[1]
    if names is None:
        return None
    n_genes = header.size[0] if genes_as_rows else header.size[1]
    try:
        _, keep = read_gene_names(Path(names), n_genes, source.name, "genes")
    except ReadError:
        return None
    return None if keep is None else int(keep.sum())


def _header_shape(args, header, n_genes_kept: int | None = None) -> tuple[int, int]:
    """(cells, genes) of the matrix that the conversion of a Matrix Market ``header``
    makes: its Gene Expression features, ``n_genes_kept``, when it keeps those alone."""
    n_rows, n_cols = header.size[:2]
    cells_by_genes = (n_cols, n_rows) if args.genes_as_rows is not False else (n_rows, n_cols)
    if n_genes_kept is not None:
        cells_by_genes = (cells_by_genes[0], n_genes_kept)
    return cells_by_genes


def _declared_shape(args, source: Path, kind: str) -> tuple[int, int] | None:
    """(cells, genes) of the matrix the fit reads from ``source``, from a Matrix Market
    header or the shape an ``.h5ad`` stores for the element read (X, --layer or --use-raw),
    without reading the counts; None for a ``.zarr`` or a file that does not say (the
    reader says what is wrong with a damaged one)."""
    if kind in ("10x", "mtx"):
        header = _matrix_market_header(source, kind)
        if header is None:
            return None
        return _header_shape(args, header, _genes_kept(args, source, kind, header))
    if kind != "h5ad":
        return None
    import h5py

    name = "raw/X" if args.use_raw else "X" if args.layer is None else f"layers/{args.layer}"
    try:
        with h5py.File(source, "r") as handle:
            stored = handle.get(name)
            # a sparse matrix is a group that records its shape; a dense one is a dataset
            shape = stored.attrs["shape"] if isinstance(stored, h5py.Group) else stored.shape
            shape = tuple(int(n) for n in shape)
    except Exception:  # h5py raises several types; the reader reports a damaged file
        return None
    return shape if len(shape) == 2 else None


def _check_n_components_fits(args, cells_by_genes: tuple[int, int]) -> None:
    """-k, and the memory of every cell's factors, against the cells and genes that a
    Matrix Market header declares (`_header_shape`), before the conversion: the fit
    refused it only once the whole matrix was converted (minutes for a large one), after
    saying it was converted into an OUTDIR that never appeared."""
    from ._memory import check_cells_form_memory
    from ._validation import check_n_components

    try:
        check_n_components(args.n_components, cells_by_genes)
    except ValueError as error:
        raise UsageError(_option_names(str(error))) from None
    # every cell's factors must fit in memory (the fit checks it after the conversion)
    check_cells_form_memory(
        cells_by_genes, args.n_components, dtype="float64", learned_prior=args.prior != "gamma"
    )


def _check_resumed_settings(args, cells_by_genes: tuple[int, int]) -> None:
    """--resume of a checkpoint written by another fit (-k, --seed, --prior, --batch-size,
    --max-iter or --tol, or a setting only Python sets) or for a matrix of other cells or
    genes than the Matrix Market header declares (``cells_by_genes``, `_header_shape`),
    refused before the conversion: the fit's own check came once the whole matrix was
    converted (minutes for a large one), after a line saying it was converted into an
    OUTDIR that never appeared. What the settings and the header decide is compared here
    (`_estimator.settings_config`, the fit's own record of them); the fit checks the rest
    (the counts themselves and the threads) as it starts."""
    from . import VBNMF, CheckpointMismatchError
    from ._checkpoint import check_config, read_checkpoint_meta
    from ._estimator import settings_config
    from ._svi import default_batch_size

    if not (args.resume and os.path.exists(args.checkpoint)):
        return
    stored = read_checkpoint_meta(args.checkpoint).get("config")
    if not isinstance(stored, dict):
        return  # a damaged record: the fit says what is wrong with it
    model = VBNMF(args.n_components, solver=args.solver, random_state=args.seed)
    try:
        settings = model.set_params(**_fit_params(args))._check_params()
    except (ValueError, TypeError):
        return  # the fit refuses them, in the command line's words
    batch = settings.batch_size or default_batch_size(settings.svi_form, cells_by_genes[0], 0)
    # the fit's own record, less the counts (an integer --seed records itself); a batch
    # past the cells is all of them, as `check_config` compares it (`_batch_as_run`)
    now = settings_config(settings, cells_by_genes, batch, entropy=0)
    then = {key: stored[key] for key in now if key in stored}  # older ones lack local_fit
    try:
        check_config({"config": then}, {key: now[key] for key in then}, args.checkpoint)
    except CheckpointMismatchError as error:
        raise _mismatch_as_usage(error) from None


def _convert_and_fit(args, source: Path, kind: str, outdir: Path, adata, converted, created):
    """`_fit_streamed`'s conversion (unless the input is an .h5ad, ``adata``), fit and
    OUTDIR; the summary. --convert-to (``converted``) is made as a new file, never
    replacing one, its identity appended to ``created``."""
    from .io import mtx_to_h5ad, read_h5ad_backed
    from .io._paths import COUNTS_FILE

    notes = []
    # An .h5ad is read as the fit goes, and again when result.h5ad copies its X: a file
    # truncated or overwritten meanwhile read as zeros and gave a result of no counts.
    before = _file_state(source) if kind == "h5ad" else None
    with _outdir_writer(outdir, args.force) as folder:
        if kind != "h5ad":
            target = folder / COUNTS_FILE if converted is None else converted
            try:
                with _doing(f"converting {quoted_path(source)}"):
                    mtx_to_h5ad(
                        source,
                        target,
                        genes_as_rows=args.genes_as_rows is not False,
                        row_names=args.row_names,
                        col_names=args.col_names,
                        created=None if converted is None else created,
                    )
            except FileExistsError:
                if converted is None:
                    raise
                # another run given the same --convert-to made it first: its file, kept
                raise UsageError(
                    f"--convert-to {converted} was made by another process while this run "
                    "converted; vbsnmf leaves it as it is: name a new file"
                ) from None
            # told once the fit runs (`_fit`): said now, counts the fit then refused (a
            # negative or non-integer one) left it above the error, naming an OUTDIR that
            # never appeared, or a --convert-to file removed with the failed run
            if not args.quiet:
                notes.append(
                    f"vbsnmf: converted {quoted_path(source)} into "
                    f"{quoted_path(_shown(target, folder, outdir))}"
                )
            adata = read_h5ad_backed(target)
        try:
            input_file = {"anndata_file" if kind == "h5ad" else "matrix_file": str(source)}
            seconds = _fit(adata, args, args.quiet, notes=notes, **input_file)
            with _doing(f"writing {quoted_path(outdir)}"):
                summary = _write_fit(adata, args, folder, str(source), seconds)
            if before is not None and _file_state(source) != before:
                raise UsageError(
                    f"{quoted_path(source)} changed while it was read (its size or modification "
                    "time moved); no output written: run again once it is complete"
                )
            return summary
        finally:
            adata.file.close()


def _file_state(path: Path) -> tuple[int, int, int]:
    """What changes when a file is replaced, truncated or written: inode, size, time."""
    state = os.stat(path)
    return state.st_ino, state.st_size, state.st_mtime_ns


def _check_convert_path(args, outdir: Path, inputs) -> Path | None:
    """--convert-to: a new file in an existing folder, not inside OUTDIR or an input."""
    from ._atomic import lock_file_of
    from .io import real_path
    from .io._paths import check_output_file, not_a_folder

    if args.convert_to is None:
        return None
    path = Path(args.convert_to)
    # the fit's lock file there was then "held by another process": this run's file; told
    # before "exists", as the lock file is there from the run's start (`held_for_fit`)
    if args.checkpoint is not None and real_path(path) == real_path(
        lock_file_of(Path(args.checkpoint))
    ):
        raise UsageError(
            f"--convert-to {quoted_path(path)} is the name of --checkpoint's lock file; name "
            "another file"
        )
    exists = os.path.lexists(path)  # a link too; a name too long is told below
    if exists and args.resume:
        # likely the conversion of the run being resumed, but nothing here proves it: say
        # how to resume (the checkpoint's fingerprint then checks the counts)
        raise UsageError(
            f"--convert-to {quoted_path(path)} exists; to resume, give {quoted_path(path)} as the "
            "input instead (without --convert-to and the .mtx options: orientation, --row-names, "
            "--col-names), or drop --convert-to to convert again into OUTDIR"
        )
    if exists:
        raise UsageError(f"--convert-to {quoted_path(path)} exists; name a new file")
    if not path.parent.is_dir():
        raise UsageError(
            f"the folder {quoted_path(path.parent)} for --convert-to {not_a_folder(path.parent)}"
        )
    # a folder that cannot be written or a name too long: met now, not by the conversion
    check_output_file("--convert-to", args.convert_to)
    inside = real_path(path.parent)
    for holder in [outdir, *inputs]:
        held = real_path(holder)
        if inside == held or held in inside.parents:
            raise UsageError(
                f"--convert-to {quoted_path(path)} lies inside {quoted_path(holder)}; name a file "
                "elsewhere"
            )
    if args.checkpoint is not None:
        checkpoint = Path(args.checkpoint)
        if real_path(path) == real_path(checkpoint):
            raise UsageError(
                f"--convert-to and --checkpoint both name {quoted_path(path)}; name two files"
            )
    if real_path(path) == real_path(outdir):
        raise UsageError(
            f"--convert-to and -o both name {quoted_path(path)}; name a file beside OUTDIR"
        )
    if not path.name.lower().endswith(CONVERTED_SUFFIXES):
        # the file is an .h5ad whatever its name, and the readers tell an input's kind by
        # its name: one named conv.txt was converted, then refused as input by 'vbsnmf fit'
        raise UsageError(
            f"--convert-to {quoted_path(path)}: name an .h5ad file, which 'vbsnmf fit' can read "
            "again (the matrix is written as one)"
        )
    return path


def _shown(path: Path, folder: Path, outdir: Path) -> Path:
    """``path`` as it will be named once the temporary ``folder`` becomes OUTDIR."""
    return outdir / path.relative_to(folder) if folder in path.parents else path


def _run_demo(args) -> int:
    from . import datasets
    from ._checkpoint import held_for_fit
    from .io._paths import UMAP_FILE

    _check_options(args)
    # the demo reads its data set from the package's folder, which OUTDIR must not replace
    package = Path(datasets.__file__).resolve().parents[1]
    outdir = _check_paths(args, [(_DEMO_PACKAGE, package)])
    with held_for_fit(args.checkpoint):  # from the start, as `_fit_command`
        with _doing(f"loading {args.dataset}"):
            adata = datasets.pbmc_facs() if args.dataset == "pbmc_facs" else datasets.pbmc_tiny()
        if not args.quiet:
            _tell(
                f"{args.dataset}: {adata.n_obs} cells x {adata.n_vars} genes, "
                f"{adata.X.nnz} nonzeros"
            )
        color = "subpop" if "subpop" in adata.obs else None
        with _outdir_writer(outdir, args.force) as folder:  # before the fit, as `_fit_command`
            seconds = _fit(adata, args, args.quiet)
            with _doing(f"writing {quoted_path(outdir)}"):
                summary = _write_fit(
                    adata, args, folder, f"vbsnmf.datasets.{args.dataset}", seconds
                )
                _draw_umap(adata, folder / UMAP_FILE, color=color, seed=args.seed)
    _report(outdir, summary, args.quiet)
    if not args.quiet:
        _print_result(f"UMAP of the NMF usages: {outdir / UMAP_FILE}", outdir)
    return EXIT_OK


def _run_umap(args) -> int:
    from ._utils import counted, missing_package_advice, record_kind
    from .io import read_h5ad, read_zarr, real_path
    from .io._read import input_kind
    from .pl._umap import LEIDEN, MIN_CELLS
    from .tl._stored import cell_factors_record

    _check_not_standard_input("RESULT.h5ad", args.result)
    _check_not_standard_output(
        "-o", args.output, "the figure to a file", "name a figure file, e.g. umap.png"
    )
    output = Path(args.output)
    _check_figure_path(args.output)
    if real_path(output) == real_path(args.result):
        raise UsageError(f"-o {quoted_path(output)} is RESULT.h5ad itself; name another file")
    with _doing(f"reading {quoted_path(args.result)}"):
        # a fit saved with adata.write_zarr, as 'vbsnmf fit' reads its inputs: refused as
        # "not a regular file", which named no format
        if Path(args.result).is_dir() and input_kind(args.result) == "zarr":
            adata = read_zarr(args.result)
        else:
            adata = read_h5ad(args.result)
    try:
        # a fit, or cells projected onto one (vbsnmf.tl.project), as vbsnmf.pl.umap takes
        cell_factors_record(adata, args.key)
    except KeyError as error:
        if record_kind(adata.uns.get(args.key)) == "projection":
            # the key of the projection's record, not its key_added, under which it is read
            raise UsageError(
                f"{quoted_path(args.result)}: --key {shlex.quote(args.key)} names the record of "
                "a projection (vbsnmf.tl.project); pass its key_added, --key "
                f"{shlex.quote(args.key.removesuffix('_projection'))}"
            ) from None
        projection = adata.uns.get(f"{args.key}_projection")
        if record_kind(adata.uns.get(args.key)) == "fit" or record_kind(projection):
            # a damaged record (an entry deleted): its message names what is missing, where
            # "holds no NMF fit" sent the user to fit again a file that holds one
            raise UsageError(f"{quoted_path(args.result)}: {_one_line(error)}") from None
        stored = _stored_keys(adata)
        # quoted for the shell where a name needs it: an empty --key was "under --key ,"
        key = shlex.quote(args.key)
        if stored:  # a fit of 'vbsnmf fit --key NAME', drawn without --key
            named = ", ".join(f"--key {shlex.quote(name)}" for name in stored)
            raise UsageError(
                f"{quoted_path(args.result)} holds no NMF fit or projection under --key "
                f"{key}, but {'one' if len(stored) == 1 else 'some'} under {named}: pass "
                f"{'it' if len(stored) == 1 else 'one of them'}"
            ) from None
        raise UsageError(
            f"{quoted_path(args.result)} holds no NMF fit or projection under --key {key}; "
            "make one with 'vbsnmf fit' (OUTDIR/result.h5ad)"
        ) from None
    except ValueError as error:  # an edited record: name the file
        raise UsageError(f"{quoted_path(args.result)}: {_one_line(error)}") from None
    # scanpy colours by a gene of .raw when the result has one (use_raw's default), and
    # looks for it nowhere else; .raw holds every gene that 'fit --use-raw' fitted
    genes = adata if adata.raw is None else adata.raw
    known = args.color is None or args.color in adata.obs or args.color in genes.var_names
    if not known and args.color != LEIDEN:
        columns = ", ".join(map(str, adata.obs.columns)) or "none"
        gene = "a gene" if adata.raw is None else "a gene of .raw"
        raise UsageError(
            f"--color {args.color!r} is neither an .obs column ({columns}), {gene}, nor "
            f"{LEIDEN!r} (Leiden clusters of the graph)"
        )
    if adata.n_obs < MIN_CELLS:
        raise UsageError(
            f"{quoted_path(args.result)} holds {counted(adata.n_obs, 'cell')}; a UMAP needs at "
            f"least {MIN_CELLS}"
        )
    try:
        _draw_umap(
            adata,
            output,
            color=args.color,
            key=args.key,
            n_neighbors=args.n_neighbors,
            seed=args.seed,
        )
    except ImportError as error:  # igraph, for --color leiden; umap-learn
        raise UsageError(missing_package_advice(error)) from None
    except (KeyError, ValueError) as error:  # an edited result: name the file
        raise UsageError(f"{quoted_path(args.result)}: {_umap_options(_one_line(error))}") from None
    if not args.quiet:
        _print_result(f"wrote {output}", output)
    return EXIT_OK


def _umap_options(message: str) -> str:
    """`vbsnmf.pl.umap`'s ``message`` in the command line's words: its advice named the
    parameters ``key_added`` (``vbsnmf fit --key``) and ``color=`` (``--color``, also
    where a message begins with the colour refused: "color 'x': ..."), which
    the command has not ("make it again under another key_added" of a result that
    ``vbsnmf fit --key umap`` wrote)."""
    import shlex

    message = re.sub(r"\(key_added='([^']*)'\)", lambda match: f"(--key {match[1]})", message)
    # "color 'x': ...", where the user typed --color x (as the command's own refusals say)
    message = re.sub(r"^color (?=['\"])", "--color ", message)
    message = message.replace(
        "make it again under another key_added", "fit it again under another --key"
    )
    column = re.search(r"adata\.obs\['([^']*)'\] holds values", message)
    named = shlex.quote(column[1]) if column else "COLUMN"
    return message.replace("pass color= to", f"pass --color {named} to")


def _stored_keys(adata) -> list[str]:
    """The --key of each fit (`vbsnmf.tl.nmf`) and projection (`vbsnmf.tl.project`, whose
    record is ``.uns[key + '_projection']``) that ``adata`` holds, sorted."""
    from ._utils import record_kind

    keys = set()
    for name, record in adata.uns.items():
        kind = record_kind(record)
        if kind == "fit":
            keys.add(str(name))
        elif kind == "projection":
            keys.add(str(name).removesuffix("_projection"))
    return sorted(keys)


def _check_figure_path(name: str) -> None:
    from matplotlib.figure import Figure

    from .io._paths import check_output_file, not_a_folder
    from .pl._plots import check_tex

    output = Path(name)
    supported = Figure().canvas.get_supported_filetypes()
    formats = ", ".join(f".{name}" for name in sorted(supported))
    if os.path.isdir(name):  # "-o figures", where one keeps them: not a name without suffix
        raise UsageError(
            f"-o {quoted_path(name)} is a folder; name a figure file in it, e.g. "
            f"{quoted_path(os.path.join(name, 'umap.png'))}"
        )
    if not output.suffix:
        # matplotlib's savefig would write such a name as a PNG under another name
        # (figure.png); "unknown figure format ''" said neither that nor what to type
        raise UsageError(
            f"-o {quoted_path(name)} names no figure format: end the name in the suffix of one "
            f"matplotlib writes ({formats}), e.g. {quoted_path(name.rstrip('.') + '.png')}"
        )
    if output.suffix.lstrip(".").lower() not in supported:
        raise UsageError(
            f"-o {quoted_path(name)}: unknown figure format {output.suffix!r}; use one of "
            + formats
        )
    try:  # matplotlib writes PGF through a TeX system
        check_tex(name, output.suffix.lstrip(".").lower())
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not output.parent.is_dir():
        raise UsageError(
            f"the folder {quoted_path(output.parent)} for {quoted_path(output.name)} "
            f"{not_a_folder(output.parent)}"
        )
    # a folder that cannot be written, a name too long or a pipe at the name: met now,
    # not once the graph and the embedding are computed
    check_output_file("-o", name)


def _draw_umap(adata, output: Path, *, seed: int, **options) -> None:
    """`vbsnmf.pl.umap` into a file, never a window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import pl

    # scanpy's, umap's and matplotlib's notices are not for the person running the command;
    # vbsnmf's own (a one-factor fit's) are, attributed to this module by their stacklevel.
    with warnings.catch_warnings(), _doing(f"drawing {quoted_path(output)}"):
        warnings.simplefilter("ignore")
        warnings.filterwarnings("always", category=UserWarning, module=__name__)
        axes = pl.umap(adata, random_state=seed, show=False, save=output, **options)
    plt.close(axes.figure)


# -- entry point ----------------------------------------------------------------------------
COMPILING = (
    "vbsnmf: compiling numerical kernels (Numba): up to a minute the first time after "
    "installing that a kind of run needs them; later runs load them from Numba's cache"
)
# Where Numba finds no writable cache folder (`vbsnmf._kernels.DISK_CACHE`).
COMPILING_UNCACHED = (
    "vbsnmf: compiling numerical kernels (Numba): up to a minute, in every run, as Numba "
    "can write its cache neither beside vbsnmf nor in ~/.cache; set NUMBA_CACHE_DIR to a "
    "writable folder to keep them"
)


@contextlib.contextmanager
def _compile_notice(quiet: bool) -> Iterator[None]:
    """`COMPILING` on stderr once, when Numba starts compiling one of vbsnmf's kernels in
    the block (a miss of its cache, not a load from it): the first fit of a kind after
    installing otherwise sat silent for up to a minute before its progress bar appeared.
    Other packages' kernels are not counted: umap-learn compiles some in every process."""
    if quiet:
        yield
        return
    from numba.core import event

    class Notice(event.Listener):
        told = False

        def on_start(self, compiling):
            # Read with care: an exception here would fail the compile it announces.
            data = compiling.data if isinstance(compiling.data, dict) else {}
            module = getattr(getattr(data.get("dispatcher"), "py_func", None), "__module__", None)
            if not self.told and isinstance(module, str) and module.startswith("vbsnmf."):
                self.told = True
                from ._kernels import DISK_CACHE  # loaded: its kernels are compiling

                _tell(COMPILING if DISK_CACHE else COMPILING_UNCACHED)

        def on_end(self, _):
            pass

    with event.install_listener("numba:compile", Notice()):
        yield


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` names now (a link followed), or None."""
    try:
        details = os.stat(path)
    except OSError:
        return None
    return details.st_dev, details.st_ino


@contextlib.contextmanager
def _telling_if_written(output: Path) -> Iterator[None]:
    """A stop (Ctrl-C, SIGTERM, SIGHUP) in the block that arrives once ``output`` (OUTDIR
    or the figure) has taken its place carries ``written``, so that `main` says the output
    is complete: one arriving as the summary line was printed said "no output written"
    beside a complete OUTDIR. The output is written as a new folder or file that replaces
    what was there, so its identity tells it from an earlier one."""
    before = _identity(output)
    try:
        yield
    except KeyboardInterrupt as stop:
        now = _identity(output)
        if getattr(stop, "written", None) is None and now is not None and now != before:
            stop.written = output
        raise


def _run_reporting_warnings(args) -> int:
    """``args.run(args)``, the warnings of the libraries it calls (a reader's "names are
    not unique") shown after a success as one ``vbsnmf: warning:`` line each, not in
    Python's two-line form; none with --quiet, none beside an error's one line. The fit's
    own warnings are shown by `_fit`, where they happen."""
    output = Path(args.outdir if args.command in ("fit", "demo") else args.output)
    quiet = getattr(args, "quiet", False)
    # the warnings are printed inside _telling_if_written too: a stop while they were
    # (a full stderr pipe blocks) said "no output written" beside a complete output
    with _telling_if_written(output):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _compile_notice(quiet):
                code = args.run(args)
        if not quiet:
            _print_warnings(caught)
    return code


def _with_dashed_path_advice(
    message: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> str:
    """``message``, argparse's error, with advice when an argument begins with '-' but
    is no option of any command: argparse reads it as an option, so a file named so
    (``-r.h5ad``) was "required" though given ("the following arguments are required:
    RESULT.h5ad"), and ``-o -x.png`` "expected one argument"."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if "--" in arguments:  # what follows is taken as given
        arguments = arguments[: arguments.index("--")]
    known = set()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            known.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    long_options = [name for name in known if name.startswith("--")]
    dashed = []
    for argument in map(str, arguments):
        if not argument.startswith("-") or argument in ("-", "--"):
            continue
        if re.fullmatch(r"-\d+|-\d*\.\d+", argument):  # a negative number: an argument
            continue
        name = argument.split("=", 1)[0]
        if argument.startswith("--") and any(o.startswith(name) for o in long_options):
            continue  # argparse takes an unambiguous prefix of an option
        if not argument.startswith("--") and argument[:2] in known:
            continue  # a short option with its value attached (-k5)
        # a mistyped option (--colour, -K) is told no more than argparse tells it: only
        # what exists, or has a suffix or a folder as a path has, is advised as one
        if os.path.lexists(argument) or re.search(r"[./]", argument[1:]):
            dashed.append(argument)
    if not dashed:
        return message
    core, see, rest = message.rpartition(" (see ")
    if not see:
        core, rest = message, ""
    advice = (
        f"; {dashed[0]} was read as an option: write a path that begins with '-' as ./{dashed[0]}"
    )
    return core + advice + (f" (see {rest}" if see else "")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = " ".join(str(error.args[0]).split())
    return text or type(error).__name__


def _memory_advice_as_options(message: str) -> str:
    """The memory guard's ``message`` with its advice in this command line's options: the
    Python API's told to set ``solver="svi"``, ``dtype='float32'`` (no option here) and
    ``n_threads``, and the classical solvers' told to pass a sparse X or use `VBNMF`."""
    from ._memory import BATCH_ADVICE, CELLS_FORM_ADVICE, CLASSIC_ADVICE, CLASSIC_DENSE_ADVICE

    message = message.replace(
        BATCH_ADVICE,
        "Use the streaming stochastic fit (--solver svi), which reads a minibatch of cells "
        "at a time from the file, or lower -k or --threads",
    )
    # the file's counts are what they are: the advice on a dense X is for Python callers
    message = message.replace(CLASSIC_DENSE_ADVICE, "")
    message = message.replace(
        CLASSIC_ADVICE,
        "Lower -k, or fit with a variational solver (--solver batch; --solver svi reads a "
        "minibatch of cells at a time from the file)",
    )
    return message.replace(CELLS_FORM_ADVICE, "Lower -k, or fit a subset of the cells")


def _open_files_limit(error: BaseException) -> int | None:
    """The limit on this process's open files (``ulimit -n``) when ``error``, or an error
    it was raised from or while handling, is "Too many open files" (EMFILE); else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.EMFILE:
            try:
                import resource
            except ImportError:  # not on Windows, where no ulimit advice applies
                return None
            return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        error = error.__cause__ or error.__context__
    return None


def _error_message(error: BaseException) -> str:
    """What `main` says of an error it reports with exit code 2."""
    written = getattr(error, "written", None)
    if written is not None:  # `_print_result`: the output is complete, only stdout failed
        return (
            f"cannot print the summary ({_one_line(error)}); {quoted_path(written)} was written in "
            "full"
        )
    limit = _open_files_limit(error)
    if limit is not None:
        # a pipe, a library's file or a child process: "[Errno 24] Too many open files"
        # alone said neither which limit nor what to change
        return (
            f"{_one_line(error)}; this command may hold at most {limit} files open at once "
            f"(the limit 'ulimit -n' shows): raise it (e.g. 'ulimit -n {max(1024, 4 * limit)}') "
            "and run again"
        )
    if isinstance(error, MemoryError):  # a failed allocation's says nothing; the guard's does
        doing = getattr(error, "doing", None)
        message = _memory_advice_as_options(" ".join(str(error).split()))
        return (
            "out of memory"
            + (f" while {doing}" if doing else "")
            + (f": {message}" if message else "")
        )
    return _one_line(error)


def _check_numba_threads_variable() -> None:
    """Refuse a NUMBA_NUM_THREADS that Numba cannot use, naming it, before Numba loads: 0
    or less failed every command with Numba's "Number of threads specified must be > 0."
    (naming neither the variable nor anything --threads could change), and text printed
    Numba's warning with a traceback in it."""
    text = os.environ.get("NUMBA_NUM_THREADS")
    if text is None:
        return
    try:
        threads = int(text)  # as Numba reads it
    except ValueError:
        threads = None
    if threads is None or threads < 1:
        raise UsageError(
            f"the environment variable NUMBA_NUM_THREADS={text!r} is not a whole number "
            ">= 1 (the most threads Numba starts); unset it, and choose a run's threads "
            "with --threads"
        )


def _check_working_folder() -> None:
    """Refuse to run from a current folder that was deleted (by another shell, while this
    one was in it): every path check asks for it, and its error was "vbsnmf: error:
    [Errno 2] No such file or directory", naming nothing, also with absolute paths."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise UsageError(
            "the current folder no longer exists (deleted or moved away while this shell "
            "was in it); change to an existing folder and run again"
        ) from None


def _check_numba_threading_layer() -> None:
    """Load the threading layer that NUMBA_THREADING_LAYER or
    NUMBA_THREADING_LAYER_PRIORITY asks for now, before any input is read: loaded at the
    first parallel kernel, which checks a sparse input as it is read, its failure was
    reported as the input's ("in.h5ad: The threading layer requested 'bogus' is unknown
    to Numba.", or "THREADING_LAYER_PRIORITY invalid ...; NMF needs raw counts")."""
    from ._utils import launch_threading_layer

    variables = ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY")
    if not any(name in os.environ for name in variables):  # Numba's own choice
        return
    try:
        launch_threading_layer()
    except RuntimeError as error:
        raise UsageError(str(error)) from None


def _stop(signum, frame) -> None:
    raise Stopped(signum)


class _KeptStops:
    """`sys.unraisablehook` while the command runs. A KeyboardInterrupt (Ctrl-C, or a stop
    signal's `Stopped`) raised where Python cannot raise it, in a finalizer (a ``__del__``
    or weakref callback: importlib's while the libraries load, llvmlite's while Numba
    compiles, h5py's, the garbage collector's), is kept and its signal sent to the main
    thread again once the hook has returned, so that it stops the command where it runs.
    Only the start-up code used to raise what was kept: a SIGTERM whose handler ran in a
    finalizer later was lost, and the fit ran on to its end and exited 0. Any other
    unraisable exception goes to the ``default`` hook. Where `main` runs in another thread
    (a test runner's) no signal is sent: what is kept is raised by `settle`."""

    def __init__(self, default) -> None:
        self.default = default
        self.send = threading.current_thread() is threading.main_thread()
        self.kept: list[KeyboardInterrupt] = []
        self.in_hook = False  # the thread waits: the handler would run inside the hook,
        # where its exception is printed as "Exception ignored" and dropped
        self.closed = False  # `main` is restoring the handlers: a late stop is not sent
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def __call__(self, unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            self.default(unraisable)
            return
        self.in_hook = True
        self.kept.append(unraisable.exc_value)
        if self.send and (self.thread is None or not self.thread.is_alive()):
            self.thread = threading.Thread(target=self._send_again, daemon=True)
            self.thread.start()
        self.in_hook = False  # an assignment, then the return: no handler runs here

    def _send_again(self) -> None:
        while self.in_hook:
            time.sleep(0.001)
        with self.lock:
            while self.kept and not self.closed:
                stop = self.kept.pop(0)
                number = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
                if hasattr(signal, "pthread_kill"):  # also ends a wait in a system call
                    signal.pthread_kill(threading.main_thread().ident, number)
                else:
                    import _thread

                    _thread.interrupt_main(number)

    def settle(self) -> None:
        """Send what is kept now: its stop is raised in the caller's next steps (raised
        here where no signal is sent)."""
        if self.thread is not None:
            self.thread.join()
        elif self.kept:
            raise self.kept.pop(0)

    def close(self) -> None:
        """Send nothing more (the handlers are about to be restored)."""
        with self.lock:
            self.closed = True


def _handle_stop_signals() -> dict:
    """SIGTERM and SIGHUP raise `Stopped` (a KeyboardInterrupt, so everything that cleans
    up after Ctrl-C cleans up after them); returns the handlers to restore. Only the main
    thread may set handlers; elsewhere (a test runner's thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
            previous[number] = signal.signal(number, _stop)
    return previous


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    0 success, 2 bad input or options or a library not installed (one line on stderr),
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP), 1 an
    unexpected internal error.
    """
    # Numba's OpenMP threads spin while they wait for work: on a machine shared with other
    # jobs they take the cores the fit's own threads need (pbmc_facs, K = 10, 2 threads at
    # load ~9: 41.5 s spinning, 12.3 s passive; idle: the same to the noise, docs/
    # performance.md). Read by OpenMP when Numba first starts its threads, which is later.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    backend = _draw_into_files()
    previous = {}
    unraisable_hook = sys.unraisablehook
    kept_stops = sys.unraisablehook = _KeptStops(unraisable_hook)
    try:
        previous = _handle_stop_signals()
        _check_numba_threads_variable()
        if (sys.argv[1:] if argv is None else list(argv)) == ["--version"]:
            # argparse's text, without building the parser: its choices import numpy,
            # scipy, Numba and scikit-learn (1 to 4 s, to print one line)
            _Parser(prog="vbsnmf")._print_message(f"{VERSION_LINE}\n", sys.stdout)
            return EXIT_OK
        with _doing("loading numpy, scipy and Numba"):
            parser = build_parser()  # imports vbsnmf.tl: numpy, scipy, Numba, scikit-learn
        kept_stops.settle()  # Ctrl-C or a stop signal that the imports could not raise
        # parse_args said a command's stray arguments with the top level's help ("see
        # vbsnmf --help"), which does not list the options of the command
        try:
            args, stray = parser.parse_known_args(argv)
            if stray:
                help_of = "vbsnmf" if args.command is None else f"vbsnmf {args.command}"
                raise UsageError(
                    f"unrecognized arguments: {' '.join(stray)} (see {help_of} --help)"
                )
        except UsageError as error:
            raise UsageError(_with_dashed_path_advice(str(error), parser, argv)) from None
        if args.command is None:
            raise UsageError("choose a command: fit, umap or demo (see vbsnmf --help)")
        _check_working_folder()
        _check_numba_threading_layer()
        code = _run_reporting_warnings(args)
        kept_stops.settle()  # raised here, in this block, not once it is left
        return code
    except SystemExit as done:  # --help and --version
        return done.code if isinstance(done.code, int) else EXIT_OK
    except KeyboardInterrupt as stop:
        what, code = "interrupted", EXIT_INTERRUPTED
        if isinstance(stop, Stopped):
            what = STOP_SIGNALS[signal.Signals(stop.signum).name]
            code = 128 + stop.signum
        written = getattr(stop, "written", None)  # arrived as the output took its place
        outcome = f"{quoted_path(written)} was written in full" if written else "no output written"
        _tell(f"vbsnmf: {what}; {outcome}")
        return code
    # MemoryError: an input too large for this machine, e.g. the memory guard's advice
    # (--solver svi) or a header declaring billions of cells; not an internal error.
    # ValueError includes vbsnmf.io.ReadError and the checkpoint and path errors;
    # FloatingPointError: a fit whose numbers left the float range (an SVI step too long,
    # a damaged checkpoint), which the settings or the files explain.
    except (
        UsageError,
        ValueError,
        TypeError,
        KeyError,
        OSError,
        MemoryError,
        FloatingPointError,
    ) as error:
        _tell(f"vbsnmf: error: {_error_message(error)}")
        return EXIT_USAGE
    except Exception as error:
        if _library_missing(error):  # the install's fault, not ours
            from ._utils import missing_package_advice

            _tell(f"vbsnmf: error: {' '.join(missing_package_advice(error).split())}")
            return EXIT_USAGE
        # "0" (or "false", "no", "off": `_SWITCH_OFF_VALUES`) is off, as for
        # VBSNMF_NO_MEMORY_GUARD: any value printed the traceback, and VBSNMF_DEBUG=0 in a
        # job's settings broke the one line a script reads
        if os.environ.get("VBSNMF_DEBUG", "").strip().lower() not in _SWITCH_OFF_VALUES:
            raise
        _tell(
            f"vbsnmf: internal error ({type(error).__name__}: {_one_line(error)}); "
            "rerun with VBSNMF_DEBUG=1 for the traceback"
        )
        return EXIT_INTERNAL
    finally:
        kept_stops.close()
        sys.unraisablehook = unraisable_hook
        for number, handler in previous.items():
            signal.signal(number, handler)
        _restore_variable("MPLBACKEND", backend)


# Values of VBSNMF_DEBUG that leave it off, as `_utils.SWITCH_OFF_VALUES` leave
# VBSNMF_NO_MEMORY_GUARD (not imported from there: `main`'s last handler must not fail)
_SWITCH_OFF_VALUES = ("", "0", "false", "no", "off")


def _draw_into_files() -> str | None:
    """Set MPLBACKEND to Agg for the command; returns the value it had (None: unset). The
    command line draws into files only (`_draw_umap`), never a window, but matplotlib
    reads the variable as it loads and refuses a name it does not know: ``vbsnmf demo``
    under ``MPLBACKEND=bogus`` failed after its whole fit, writing nothing, with "Key
    backend: 'bogus' is not a valid value for backend", which named no variable."""
    backend = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "agg"
    return backend


def _restore_variable(name: str, value: str | None) -> None:
    """The environment variable ``name`` back to ``value`` (None: unset)."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _library_missing(error: Exception) -> bool:
    """Whether ``error`` is a library that is not installed (or one a tool says to install,
    `_utils.missing_package_advice`), not vbsnmf's own import failing: that stays an
    internal error."""
    if not isinstance(error, ImportError):
        return False
    name = getattr(error, "name", None) or ""
    return not (name == "vbsnmf" or name.startswith("vbsnmf."))


def run() -> None:
    """The ``vbsnmf`` command: `main`, then exit with its code. Once `main` has returned,
    every output is complete and its code decided, but the interpreter's teardown takes
    about a second more; a stop signal or Ctrl-C then killed the process without a word
    (exit 143 for a finished run), so they are ignored from there on."""
    _reserve_std_descriptors()
    code = main()
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGINT", *STOP_SIGNALS):
            number = getattr(signal, name, None)
            if number is not None:
                signal.signal(number, signal.SIG_IGN)
    _settle_std_streams()
    sys.exit(code)


def _reserve_std_descriptors() -> None:
    """Point a standard descriptor closed at start (``2>&-``) at os.devnull: the next file
    opened would otherwise take its number, and what a C library writes to stderr would
    land in that file, an output being written say."""
    for descriptor in (0, 1, 2):
        try:
            os.fstat(descriptor)
        except OSError:
            devnull = os.open(os.devnull, os.O_RDWR)
            if devnull != descriptor:
                os.dup2(devnull, descriptor)
                os.close(devnull)


def _settle_std_streams() -> None:
    """Flush stdout and stderr before the interpreter does; one that cannot take what it
    holds (a closed pipe, a full disk: `main` has said so, or could not) is pointed at
    os.devnull, as the Python docs advise after a BrokenPipeError. The interpreter's own
    flush would fail again, print "Exception ignored ..." and exit with 120."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # its descriptor was closed at start
            continue
        try:
            stream.flush()
        except OSError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)


if __name__ == "__main__":
    run()
