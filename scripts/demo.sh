#!/usr/bin/env bash
# Set up .venv if needed, then compile a built-in model with kitsune, check it against eager,
# show what kitsune did and, on a GPU, how fast it is against eager and Inductor.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if ! command -v nvidia-smi >/dev/null 2>&1; then
    # No GPU: run kitsune's generated Triton kernels in Triton's CPU interpreter, so the
    # demo shows (and checks) the fused kernels rather than their ATen fallback.
    export TRITON_INTERPRET=1
fi
exec .venv/bin/python -m kitsune_backend.demo "$@"
