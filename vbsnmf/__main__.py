"""``python -m vbsnmf``: the ``vbsnmf`` command line (see `vbsnmf.cli`)."""

from .cli import run

if __name__ == "__main__":
    run()
