"""Reading count matrices and writing NMF results.

`read` picks the reader by the path: a 10x folder (`read_10x`), a Cell Ranger ``.h5``
(`read_10x_h5`), an ``.h5ad`` file (`read_h5ad`), a ``.zarr`` store (`read_zarr`) or a
Matrix Market ``.mtx`` / ``.mtx.gz`` file (`read_mtx`). `mtx_to_h5ad` converts a Matrix
Market file once into an ``.h5ad`` that streams. Every problem with an input file raises
`ReadError` (a `ValueError`) whose message names the file.
`atomic_file` and `atomic_directory` write an output so that it appears only complete;
`check_outdir` and `check_checkpoint_path` refuse, before any work, an output or checkpoint
path that would overwrite or remove what the user owns.
"""

from .._atomic import atomic_directory, atomic_file
from ._convert import mtx_to_h5ad
from ._errors import ReadError
from ._paths import check_checkpoint_path, check_outdir, real_path
from ._read import read, read_10x, read_10x_h5, read_h5ad, read_h5ad_backed, read_mtx, read_zarr
from ._write import write_nmf_tables, write_result

__all__ = [
    "ReadError",
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
