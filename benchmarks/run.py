"""``python benchmarks/run.py ...``: the same as ``python -m benchmarks ...``."""

import os
import sys

# Import the harness as the ``benchmarks`` package from the repository root, not its
# modules as top-level names from this folder.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks.cli import main  # noqa: E402  (after the path is set)

if __name__ == "__main__":
    sys.exit(main())
