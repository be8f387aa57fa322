"""A `tl.nmf` fit's stored parameters read by hand from the AnnData, for tests that check a
warm start against `VBNMF.fit(X, init=...)` from the same start."""

from __future__ import annotations

import numpy as np


def stored_start(adata) -> dict:
    """The parameters a warm start of ``adata`` (its fit under the default key ``"nmf"``)
    starts from: q's shapes and rates, the scales' and the hyperparameters."""
    start = {name: np.asarray(adata.obsm[f"nmf_{name}"]) for name in ("cell_shape", "cell_rate")}
    start |= {name: np.asarray(adata.varm[f"nmf_{name}"]) for name in ("gene_shape", "gene_rate")}
    for side, arrays in (("cell", adata.obsm), ("gene", adata.varm)):
        for part in ("shape", "rate"):
            start[f"{side}_scale_{part}"] = np.asarray(arrays[f"nmf_{side}_scale_{part}"])[:, 0]
    variational = adata.uns["nmf"]["variational"]
    return start | {key: value for key, value in variational.items() if key != "prior"}
