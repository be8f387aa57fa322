"""38th hostile pass, examples in docstrings: the main public entry points carry a numpydoc
``Examples`` section (as scanpy's and scikit-learn's functions do), and each runs as written.

The examples are contracts: every ``>>>`` line's printed output must be what the code prints.
They run here, one test per object, from the object's own docstring (``doctest.DocTestFinder``,
not ``--doctest-modules``, whose collection imports every module), in empty globals, so an
example must import what it uses, as a user pasting it would.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
import warnings

import pytest

# The public entry points whose docstrings must hold runnable examples. Removing a name
# here is a decision, not an accident: the tests below are parametrised over this list.
EXAMPLED = (
    "vbsnmf.tl.nmf",
    "vbsnmf.tl.top_genes",
    "vbsnmf.tl.count_split",
    "vbsnmf.tl.project",
    "vbsnmf.tl.select_k",
    "vbsnmf.VBNMF",
    "vbsnmf.VBNTF",
    "vbsnmf.classic.NMF",
    "vbsnmf.pl.elbo",
    "vbsnmf.io.read",
    "vbsnmf.datasets.pbmc_tiny",
)

# The numpydoc sections, in numpydoc's order: ``Examples`` comes last.
SECTIONS = (
    "Parameters",
    "Attributes",
    "Returns",
    "Yields",
    "Raises",
    "Warns",
    "See Also",
    "Notes",
    "References",
    "Examples",
)


def _resolve(dotted: str):
    """The object a dotted public name refers to, through the package's lazy exports."""
    module_name, _, attribute = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def _sections(obj) -> list[str]:
    """The numpydoc section headers of ``obj``'s docstring, in order."""
    doc = inspect.cleandoc(obj.__doc__ or "")
    return re.findall(r"^(\w[\w ]*)\n-{3,}$", doc, flags=re.MULTILINE)


def test_every_listed_entry_point_has_an_examples_section_last():
    """One test over the whole list, so that it cannot shrink silently: each of these
    entry points keeps a numpydoc ``Examples`` section, the last of its sections."""
    assert len(set(EXAMPLED)) == len(EXAMPLED) >= 11
    problems = []
    for dotted in EXAMPLED:
        sections = _sections(_resolve(dotted))
        known = [section for section in sections if section in SECTIONS]
        if "Examples" not in sections:
            problems.append(f"{dotted}: no Examples section (sections: {sections})")
        elif sections[-1] != "Examples" or known != sorted(known, key=SECTIONS.index):
            problems.append(f"{dotted}: sections out of numpydoc's order: {sections}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("dotted", EXAMPLED)
def test_docstring_examples_run_as_written(dotted):
    obj = _resolve(dotted)
    finder = doctest.DocTestFinder(recurse=False)
    # Empty globals: an example imports what it uses, as a user pasting it would.
    tests = finder.find(obj, dotted, globs={})
    assert tests, f"{dotted}: its docstring holds no example (no '>>>' line)"
    (test,) = tests
    assert len(test.examples) >= 3, f"{dotted}: fewer than three example lines"
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = runner.run(test, out=report.append)
    assert results.failed == 0, "".join(report)
    # An example a user pastes must not warn (no fit stopping at max_iter, no advice).
    user_warnings = [
        f"{warning.category.__name__}: {warning.message}"
        for warning in caught
        if issubclass(warning.category, UserWarning)
    ]
    assert not user_warnings, f"{dotted}: the example warns: {user_warnings}"
