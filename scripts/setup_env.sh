#!/usr/bin/env bash
# Create .venv (once) with torch, triton and kitsune_backend installed in place.
# On a machine without a GPU, torch 2.13.0's CPU build is installed; where python3 already
# has torch and triton (the GPU machine), the venv reuses them.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    if python3 -c "import torch, triton" 2>/dev/null; then
        python3 -m venv --system-site-packages .venv
    else
        python3 -m venv .venv
    fi
fi
PY=.venv/bin/python
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q "torch==2.13.0"
fi
if ! "$PY" -c "import triton" 2>/dev/null; then
    "$PY" -m pip install -q "triton==3.6.0"
fi
"$PY" -m pip install -q --no-build-isolation -e ".[test,docs,charts]" 2>&1 \
    | grep -v "^WARNING: Location" || true
"$PY" -c "import kitsune_backend, torch; print('kitsune_backend', kitsune_backend.__version__, 'on torch', torch.__version__)"
