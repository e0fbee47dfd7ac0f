"""``python -m benchmarks {run,compare,merge,charts} ...``"""

import sys

from .cli import main

sys.exit(main())
