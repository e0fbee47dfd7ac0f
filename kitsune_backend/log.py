"""kitsune's loggers, ``KITSUNE_LOG``, and progress lines for long compiles.

One hierarchy under ``kitsune_backend``:

* ``kitsune_backend.compile``: one INFO line per compiled graph (what it became and how
  long it took); a WARNING, once per function, when symbolic sizes keep regions of a
  graph from fusing;
* ``kitsune_backend.graph``, ``kitsune_backend.lowering``, ``kitsune_backend.runtime``: a
  DEBUG line per stage of that phase (its time and notes) and one per decline.

Nothing is printed unless asked: the package's logger has a ``NullHandler``, so only
warnings reach stderr (through Python's last-resort handler) until a handler is set up.
Two ways to ask, besides ``logging`` itself:

* ``KITSUNE_LOG=info`` (or ``debug``, ``warning``), or per logger
  ``KITSUNE_LOG=compile=info,lowering=debug``: read when the package is imported; kitsune
  then adds one stderr handler to ``kitsune_backend``;
* ``TORCH_LOGS="+kitsune_backend"`` (DEBUG) or ``TORCH_LOGS="kitsune_backend"`` (INFO):
  torch's own logging setup takes any importable module's name.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Mapping, Optional

from .errors import KitsuneConfigError

ROOT = "kitsune_backend"
CHILDREN = ("compile", "graph", "lowering", "runtime")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
PROGRESS_AFTER_S = 2.0
"""A compile still running after this long prints progress lines (on a terminal only)."""

logging.getLogger(ROOT).addHandler(logging.NullHandler())


def get(name: str) -> logging.Logger:
    """The logger ``kitsune_backend.<name>`` (one of :data:`CHILDREN`)."""
    return logging.getLogger(f"{ROOT}.{name}")


def parse_setting(value: str) -> dict[str, int]:
    """``KITSUNE_LOG``'s value as {logger name: level}; a bad value is a
    :class:`KitsuneConfigError` listing what is valid."""
    levels: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, _, level = part.rpartition("=")
        if name and name not in CHILDREN:
            raise KitsuneConfigError(
                f"KITSUNE_LOG: unknown logger {name!r}; loggers are {', '.join(CHILDREN)}"
            )
        if level.lower() not in LEVELS:
            raise KitsuneConfigError(
                f"KITSUNE_LOG: unknown level {level!r}; levels are {', '.join(LEVELS)}"
            )
        levels[f"{ROOT}.{name}" if name else ROOT] = LEVELS[level.lower()]
    return levels


def configure_from_env(environ: Optional[Mapping[str, str]] = None) -> None:
    """Apply ``KITSUNE_LOG`` (if set): levels, and one stderr handler on the root logger."""
    environ = os.environ if environ is None else environ
    value = environ.get("KITSUNE_LOG", "")
    if not value:
        return
    levels = parse_setting(value)
    root = logging.getLogger(ROOT)
    if not any(getattr(h, "kitsune_env", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))
        handler.kitsune_env = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def warn_dynamic(where: str) -> None:
    """Warn that the graph of the function at ``where`` has symbolic sizes and that some of
    its regions were not fused because of them (the compiler calls this once per
    function)."""
    get("compile").warning(
        "%s was recompiled with symbolic sizes (its input shapes changed between calls): "
        "kitsune's kernels take the sizes as arguments, but some regions of this graph "
        "need static sizes and run as ATen ops (kitsune_backend.explain() lists them, "
        "under 'dynamic shapes'). To fuse them, compile with dynamic=False (one compile "
        "per shape) or pad inputs to a few fixed shapes.", where)


class Progress:
    """Progress lines for one compile, on stderr when it is a terminal, once the compile
    has run for :data:`PROGRESS_AFTER_S`; at most one line per half second."""

    def __init__(self, graph_name: str, stream=None) -> None:
        self.graph_name = graph_name
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self._last = 0.0
        self._shown = False

    def report(self, what: str) -> None:
        """Say ``what`` the compile is doing now, if it has been slow enough to say."""
        now = time.perf_counter()
        if now - self.start < PROGRESS_AFTER_S or now - self._last < 0.5:
            return
        if not getattr(self.stream, "isatty", lambda: False)():
            return
        self._last = now
        self._shown = True
        self.stream.write(f"\rkitsune: compiling {self.graph_name}: {what} "
                          f"({now - self.start:.0f} s)\033[K")
        self.stream.flush()

    def done(self) -> None:
        """End the progress line, if one was shown."""
        if self._shown:
            self.stream.write(f"\rkitsune: compiled {self.graph_name} in "
                              f"{time.perf_counter() - self.start:.1f} s\033[K\n")
            self.stream.flush()
