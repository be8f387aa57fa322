"""vbsnmf's version, in a module of its own: the records that name it (`_utils.library_versions`)
sit below the package's face, which would otherwise be imported upwards."""

__version__ = "0.1.0"
