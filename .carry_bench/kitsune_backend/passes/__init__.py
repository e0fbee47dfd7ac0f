"""kitsune's built-in passes, one per file. The order they run in lives in ``pipeline.py``."""
