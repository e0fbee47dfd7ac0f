"""kitsune's benchmark harness: every backend side by side in one process.

Run ``python -m benchmarks run --help`` (or ``python benchmarks/run.py``) from the repository
root; see ``benchmarks/README.md``.
"""
