#!/usr/bin/env bash
# Set up .venv if needed, then compile a built-in model with kitsune, check it against eager,
# show what kitsune did and, on a GPU, how fast it is against eager and Inductor.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m kitsune_backend.demo "$@"
