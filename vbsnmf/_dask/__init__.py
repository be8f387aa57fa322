"""The drivers on Dask: batch VB (`fit_batch_dask`) and cell-minibatch SVI
(`fit_svi_cells_dask`) over a dask array of cells chunked along cells.

- `_cluster`: the client, where chunks live, and the sums over chunks (no model);
- `_batch`: the batch loops (plain and SQUAREM), a pass per chunk on its worker;
- `_svi`: the loop of `_svi.run_cells_epochs` with its steps on the workers.

Both take checked settings; the public `vbsnmf.fit_dask` and `vbsnmf.fit_svi_dask` (in
`_estimator`) check them as `VBNMF` does and call these.
"""

from ._batch import DaskFitResult, fit_batch_dask
from ._cluster import cells_x_genes
from ._svi import fit_svi_cells_dask

__all__ = ["DaskFitResult", "cells_x_genes", "fit_batch_dask", "fit_svi_cells_dask"]
