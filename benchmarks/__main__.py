"""``python -m benchmarks {run,compare,charts} ...``"""

import sys

from .cli import main

sys.exit(main())
