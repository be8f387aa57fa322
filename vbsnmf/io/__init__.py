"""Reading count matrices and writing NMF results.

`read` picks the reader by the path: a 10x folder (`read_10x`), an ``.h5ad`` file
(`read_h5ad`) or a Matrix Market ``.mtx`` / ``.mtx.gz`` file (`read_mtx`). Every problem
with an input file raises `ReadError` (a `ValueError`) whose message names the file.
`atomic_file` and `atomic_directory` write an output so that it appears only complete;
`check_outdir` and `check_checkpoint_path` refuse, before any work, an output or checkpoint
path that would overwrite or remove what the user owns.
"""

from .._atomic import atomic_directory, atomic_file
from ._errors import ReadError
from ._paths import check_checkpoint_path, check_outdir, real_path
from ._read import read, read_10x, read_h5ad, read_mtx
from ._write import write_nmf_tables

__all__ = [
    "ReadError",
    "atomic_directory",
    "atomic_file",
    "check_checkpoint_path",
    "check_outdir",
    "read",
    "read_10x",
    "read_h5ad",
    "read_mtx",
    "real_path",
    "write_nmf_tables",
]
