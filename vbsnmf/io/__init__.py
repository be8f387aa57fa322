"""Reading count matrices and writing NMF results.

`read` picks the reader by the path: a 10x folder (`read_10x`), a Cell Ranger ``.h5``
(`read_10x_h5`), an ``.h5ad`` file (`read_h5ad`), a ``.zarr`` store (`read_zarr`) or a
Matrix Market ``.mtx`` / ``.mtx.gz`` file (`read_mtx`). `mtx_to_h5ad` converts a Matrix
Market file once into an ``.h5ad`` that streams, and `read_h5ad_backed` opens one whose X
streams by cells. Every problem with an input file raises `ReadError` (a `ValueError`)
whose message names the file.
`write_result` writes an AnnData with its fit as a compressed ``.h5ad`` and
`write_nmf_tables` the fit's tables, both atomically; `atomic_file` and
`atomic_directory` write any output so that it appears only complete; `check_outdir` and
`check_checkpoint_path` refuse, before any work, an output or checkpoint path that would
overwrite or remove what the user owns (`UnsafePathError`; `real_path` resolves the
symbolic links they follow).

The names are imported on first use (PEP 562), as in the package's ``__init__``: the
estimator needs `check_checkpoint_path` and the streamed sources, not the readers (which
load pandas).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# name -> module that defines it
_LAZY = {
    "atomic_directory": "vbsnmf._atomic",
    "atomic_file": "vbsnmf._atomic",
    "mtx_to_h5ad": "._convert",
    "ReadError": "._errors",
    "UnsafePathError": "._paths",
    "check_checkpoint_path": "._paths",
    "check_outdir": "._paths",
    "real_path": "._paths",
    "read": "._read",
    "read_10x": "._read",
    "read_10x_h5": "._read",
    "read_h5ad": "._read",
    "read_h5ad_backed": "._stream",
    "read_mtx": "._read",
    "read_zarr": "._read",
    "write_nmf_tables": "._write",
    "write_result": "._write",
}

__all__ = [
    "ReadError",
    "UnsafePathError",
    "atomic_directory",
    "atomic_file",
    "check_checkpoint_path",
    "check_outdir",
    "mtx_to_h5ad",
    "read",
    "read_10x",
    "read_10x_h5",
    "read_h5ad",
    "read_h5ad_backed",
    "read_mtx",
    "read_zarr",
    "real_path",
    "write_nmf_tables",
    "write_result",
]

if TYPE_CHECKING:  # what static tools see
    from .._atomic import atomic_directory, atomic_file
    from ._convert import mtx_to_h5ad
    from ._errors import ReadError
    from ._paths import UnsafePathError, check_checkpoint_path, check_outdir, real_path
    from ._read import (
        read,
        read_10x,
        read_10x_h5,
        read_h5ad,
        read_mtx,
        read_zarr,
    )
    from ._stream import read_h5ad_backed
    from ._write import write_nmf_tables, write_result


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
