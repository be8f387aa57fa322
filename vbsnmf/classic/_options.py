"""The classical solvers' and starts' names, in a module that imports nothing: the command
line and `tl.nmf` list them without loading the solvers (which load scikit-learn)."""

SOLVERS = ("mu", "hals", "als", "pg", "ipg", "gd")
INITS = ("random", "nndsvd", "nndsvda", "nndsvdar", "custom")
