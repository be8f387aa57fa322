"""The classical solvers' and starts' names, and `NMF`'s stopping defaults, in a module that
imports nothing: the command line and `tl.nmf` list them without loading the solvers
(which load scikit-learn)."""

SOLVERS = ("mu", "hals", "als", "pg", "ipg", "gd")
INITS = ("random", "nndsvd", "nndsvda", "nndsvdar", "custom")

# `NMF`'s defaults (scikit-learn's NMF's), which the command line's help states
MAX_ITER = 200
TOL = 1e-4
