"""A larger CUDA graph being prepared around kitsune's: while :func:`outer_capture` is open,
every :class:`~kitsune_backend.runtime.capture.CapturedRunner` runs its schedule uncaptured.

:func:`kitsune_backend.compile_step` opens it around the warm-up calls and the capture of a
whole training step: the warm-up calls make no CUDA graphs of kitsune's own that the step's
capture would never use, and inside the capture kitsune's kernels become part of the
step's graph.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


class _OuterCapture:
    """How many :func:`outer_capture` blocks are open (a count, not a thread-local: the
    autograd engine runs backward graphs on threads of its own)."""

    depth = 0


@contextlib.contextmanager
def outer_capture() -> Iterator[None]:
    """Hold kitsune's own captures off while open (see the module doc)."""
    _OuterCapture.depth += 1
    try:
        yield
    finally:
        _OuterCapture.depth -= 1


def outer_capture_open() -> bool:
    """Whether an :func:`outer_capture` block is open."""
    return _OuterCapture.depth > 0
