"""Real single-cell count data shipped with vbsnmf (no download).

- `pbmc_facs`: Zheng et al. (2017), *Massively parallel digital transcriptional profiling
  of single cells*, Nature Communications 8:14049; FACS-purified PBMC populations as
  prepared for the fastTopics R package (data set ``pbmc_facs``, GPL-3). 3,774 cells x
  16,791 genes, with ``celltype`` (10 FACS gates) and ``subpop`` (5 groups) in ``.obs``;
  ``pbmc_facs(test=True)`` gives 100 further cells of the same populations.
- `pbmc_tiny`: a tiny 10x v3 example (1,107 cells x 507 genes) from the scanpy test data
  (BSD-3).

`data_dir` gives a bundled data set's 10x folder (``"pbmc_facs"``, ``"pbmc_facs/test"``,
``"pbmc_tiny_v3"``), to pass to the command line or `vbsnmf.io.read_10x`.
"""

from ._load import data_dir, pbmc_facs, pbmc_tiny

__all__ = ["data_dir", "pbmc_facs", "pbmc_tiny"]
