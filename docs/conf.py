"""Sphinx configuration for the kitsune_backend docs.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (warnings fail the build).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Document the checkout these docs sit in, ahead of any installed copy.
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "_ext"))

import kitsune_backend  # noqa: E402

project = "kitsune_backend"
author = "the kitsune_backend authors"
copyright = "the kitsune_backend authors"
release = kitsune_backend.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "kitsune_tables",
]

html_theme = "furo"
html_title = f"kitsune_backend {release}"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
