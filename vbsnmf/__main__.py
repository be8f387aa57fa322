"""``python -m vbsnmf``: the ``vbsnmf`` command line (see `vbsnmf.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
