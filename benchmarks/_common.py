"""Helpers shared by the benchmark scripts: timing in a fresh process, peak memory."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import multiprocessing
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _whole_number(text: str, minimum: int) -> int:
    """``text`` as a whole number of at least ``minimum``, else argparse's usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number of at least 1 (factors, threads, cells, rounds,
    iterations), so that 0 or a negative count is argparse's usage error, not a traceback
    from deep in the benchmark or a result built from nothing."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse ``type``: a whole number of at least 0 (a seed, an optional count)."""
    return _whole_number(text, 0)


def _finite_number(text: str, *, zero: bool) -> float:
    """``text`` as a finite number above 0 (or at least 0 with ``zero``), else argparse's
    usage error: a bare ``type=float`` let "nan", "inf" and negatives through to a
    ValueError traceback after the data were loaded, or into a printed estimate."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = "at least 0" if zero else "above 0"
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number above 0 (a shape, a time in seconds)."""
    return _finite_number(text, zero=False)


def non_negative_float(text: str) -> float:
    """An argparse ``type``: a finite number of at least 0 (a Poisson mean)."""
    return _finite_number(text, zero=True)


def positive_int_list(text: str) -> list[int]:
    """An argparse ``type``: comma-separated whole numbers of at least 1 (``"1,2,4,8"``)."""
    return [positive_int(part.strip()) for part in text.split(",")]


def require_files(parser: argparse.ArgumentParser, **paths) -> None:
    """Stop with ``parser``'s usage error unless each given path (or list of paths) names a
    file that exists: data or saved results to read, checked before any work. Keyed by the
    option's name with ``_`` for ``-`` (``table_only=args.table_only``); None is not given.
    """
    for option, given in paths.items():
        for path in [given] if isinstance(given, (str, Path)) else given or []:
            if not Path(path).is_file():
                parser.error(f"argument --{option.replace('_', '-')}: no such file: {path}")


def require_out_file(parser: argparse.ArgumentParser, *, make_folder: bool = False, **paths):
    """Stop with ``parser``'s usage error unless each given path (keyed as in
    `require_files`; None is not given) can be written as a file, checked before any work:
    an ``--out`` naming a folder, or in a folder that does not exist, was open's or
    os.replace's traceback, for some scripts after the whole run. With ``make_folder`` the
    script makes the path's folder: it is made here, and a folder that cannot be made (a
    file on its way) is the usage error."""
    for option, given in paths.items():
        if given is None:
            continue
        path, argument = Path(given), f"argument --{option.replace('_', '-')}"
        if path.is_dir():
            parser.error(f"{argument}: a folder, not a file: {path}")
        if make_folder:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                parser.error(f"{argument}: cannot make the folder of {path}: {error.strerror}")
        elif not path.parent.is_dir():
            parser.error(f"{argument}: no such folder: {path.parent}")


def require_out_folder(parser: argparse.ArgumentParser, **paths) -> None:
    """Stop with ``parser``'s usage error unless each given path (keyed as in
    `require_files`; None is not given) is a folder or can be made one, made here before any
    work: a file of that name was mkdir's traceback, for some scripts after the first fit."""
    for option, given in paths.items():
        if given is None:
            continue
        path, argument = Path(given), f"argument --{option.replace('_', '-')}"
        if path.exists() and not path.is_dir():
            parser.error(f"{argument}: a file, not a folder: {path}")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            parser.error(f"{argument}: cannot make the folder {path}: {error.strerror}")


def require_commits(parser: argparse.ArgumentParser, **commits: str) -> None:
    """Stop with ``parser``'s usage error unless each given name (``a="HEAD~1"``, keyed by
    the argument's name) is a commit of this repository, checked before any work: a typo
    was git's CalledProcessError traceback, after the data had been loaded."""
    for argument, commit in commits.items():
        try:
            found = (
                subprocess.run(
                    ["git", "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                    cwd=ROOT,
                    capture_output=True,
                ).returncode
                == 0
            )
        except OSError as error:  # no git: the commit cannot be read either
            parser.error(f"argument {argument}: cannot run git to read {commit!r}: {error}")
        if not found:
            parser.error(f"argument {argument}: not a commit of {ROOT}: {commit!r}")


def require_numba_threads(parser: argparse.ArgumentParser, threads: int) -> None:
    """Stop with ``parser``'s usage error when ``--threads`` asks for more threads than
    Numba has (NUMBA_NUM_THREADS, by default the cores): ``numba.set_num_threads`` raised
    a ValueError traceback instead."""
    import numba

    if threads > numba.config.NUMBA_NUM_THREADS:
        parser.error(
            f"argument --threads: {threads} above the {numba.config.NUMBA_NUM_THREADS} "
            "Numba has (NUMBA_NUM_THREADS)"
        )


def extract_commit(commit: str, directory: Path) -> Path:
    """The ``vbsnmf`` package of ``commit`` (``git archive``) written into ``directory``
    (created), as ``directory / "vbsnmf"``; returns that path."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "vbsnmf"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as handle:
        handle.write(archive)
        handle.seek(0)
        with tarfile.open(fileobj=handle) as tar:
            tar.extractall(directory, filter="data")
    return directory / "vbsnmf"


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process image.
    Not ``ru_maxrss``: Linux carries that over ``exec``, so a child that multiprocessing's
    "spawn" forks from a large parent would report the parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    scale = 1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _child(queue, function, args):
    try:
        queue.put(("ok", function(*args)))
    except BaseException as error:  # report, then let the parent raise
        queue.put(("error", repr(error)))


def in_fresh_process(function, *args):
    """Run ``function(*args)`` in a new spawned interpreter, so its peak memory and JIT
    time are its own; returns what it returns."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, function, args))
    process.start()
    status, value = queue.get()
    process.join()
    if status != "ok":
        raise RuntimeError(f"benchmark child failed: {value}")
    return value


class Timers:
    """Time inside wrapped functions (by ``clock``), inclusive and exclusive of wrapped
    callees."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.inclusive = defaultdict(float)
        self.exclusive = defaultdict(float)
        self.calls = defaultdict(int)
        self.stack: list[list] = []

    def wrap(self, name, function):
        def timed(*args, **kwargs):
            frame = [name, 0.0]
            self.stack.append(frame)
            begin = self.clock()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = self.clock() - begin
                self.stack.pop()
                self.inclusive[name] += elapsed
                self.exclusive[name] += elapsed - frame[1]
                self.calls[name] += 1
                if self.stack:
                    self.stack[-1][1] += elapsed

        return timed

    def per_call_ms(self, n_iterations: int) -> dict[str, tuple[float, float, float]]:
        """name: (calls, inclusive ms, exclusive ms), each per iteration."""
        per = 1e3 / n_iterations
        return {
            name: (self.calls[name] / n_iterations, self.inclusive[name] * per,
                   self.exclusive[name] * per)
            for name in self.calls
        }  # fmt: skip


# The model's functions an iteration calls (as far as they exist in a given version).
MODEL_FUNCTIONS = (
    "scored_statistics",
    "moments_and_terms",
    "side_moments_and_terms",
    "shape_statistics",
    "side_moments",
    "pass_statistics",
    "elbo_terms",
    "side_terms",
    "gamma_kl",
    "global_step",
)


@contextlib.contextmanager
def timed_functions(package, clock=time.perf_counter):
    """Every Numba kernel of ``package._kernels`` and the model functions of
    ``package._model`` (also where ``package._batch`` imported them by name) wrapped in
    `Timers` for the duration of the block."""
    from numba.core.registry import CPUDispatcher

    modules = {name: importlib.import_module(f"{package.__name__}.{name}") for name in
               ("_model", "_batch", "_kernels")}  # fmt: skip
    kernels = [n for n, v in vars(modules["_kernels"]).items() if isinstance(v, CPUDispatcher)]
    timers = Timers(clock)
    saved, wrapped = [], {}
    for module, names in (
        (modules["_model"], MODEL_FUNCTIONS),
        (modules["_batch"], MODEL_FUNCTIONS),
        (modules["_kernels"], kernels),
    ):
        for name in names:
            if hasattr(module, name):
                function = getattr(module, name)
                saved.append((module, name, function))
                if function not in wrapped:
                    wrapped[function] = timers.wrap(name, function)
                setattr(module, name, wrapped[function])
    try:
        yield timers
    finally:
        for module, name, function in saved:
            setattr(module, name, function)


def load_average() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def open_to_append(path):
    """``path`` opened to append text lines, a newline written first when its last line has
    none: a run killed mid-line (or a full disk) left such a line, and the next run's
    header, its command line, was glued onto it, unreadable as a header (``--resume``)."""
    handle = open(path, "a")
    try:
        if handle.tell() > 0:
            with open(path, "rb") as existing:
                existing.seek(-1, 2)
                if existing.read(1) != b"\n":
                    handle.write("\n")
    except BaseException:
        handle.close()
        raise
    return handle


def emit(line: str, out) -> None:
    """Print ``line`` and append it to the open file ``out`` (when not None)."""
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")
        out.flush()


@contextlib.contextmanager
def report(path: str | None):
    """An ``emit(line)`` (`emit` to ``path``, when given) between a header (the command,
    the start time and load average) and a footer."""
    out = open_to_append(path) if path else None

    def stamp(word: str) -> str:
        now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        return f"# {word} {now}, load average {load_average()}"

    try:
        emit(f"# {' '.join(sys.argv)}", out)
        emit(stamp("started"), out)
        yield lambda line: emit(line, out)
        emit(stamp("finished"), out)
    finally:
        if out is not None:
            out.close()
