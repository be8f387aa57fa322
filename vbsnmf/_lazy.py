"""Names a package imports on first use (PEP 562), for vbsnmf and its subpackages.

``import vbsnmf`` loads nothing heavy, and a subpackage loads only the module of the name
asked for: numpy, scipy, Numba, pandas and scikit-learn take seconds and tens of MiB to
load, and a command or a fit should pay only for what it uses. This module imports
nothing of vbsnmf.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping


def lazy_exports(
    package: str, names: Mapping[str, str | tuple[str, str | None]], exported: Iterable[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__``. ``names[name]`` is the module that
    defines ``name`` (relative to ``package`` or absolute), or ``(module, attribute)``,
    the attribute None for the module itself."""
    exported = sorted(exported)

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        spec = names[name]
        module_name, attribute = spec if isinstance(spec, tuple) else (spec, name)
        module = importlib.import_module(module_name, package)
        value = module if attribute is None else getattr(module, attribute)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exported))

    return __getattr__, __dir__
