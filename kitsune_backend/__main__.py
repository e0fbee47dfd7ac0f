"""``python -m kitsune_backend ...``: the command line (:mod:`kitsune_backend.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
