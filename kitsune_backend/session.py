"""Compile sessions: one per graph Dynamo hands kitsune, holding its forward/backward records.

The history of sessions is explicit and bounded (the last ``HISTORY_LIMIT``), read through
:mod:`kitsune_backend.inspection` and emptied by :func:`clear_history`.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any

from .config import Config
from .ir import Decline
from .record import CompileRecord

HISTORY_LIMIT = 64

@dataclasses.dataclass
class CompileSession:
    """One Dynamo graph compiled by kitsune: its config and a record per AOT graph."""

    id: int
    config: Config
    mode: Any = None
    records: list[CompileRecord] = dataclasses.field(default_factory=list)
    arena_group: Any = None
    """The arena buffer its graphs share (a :class:`kitsune_backend.runtime.arena.ArenaGroup`,
    made by the compiler for the session's first graph)."""

    def next_name(self, kind: str) -> str:
        """A name for the next graph of ``kind``: ``forward``, ``backward``, ``inference``."""
        count = sum(1 for r in self.records if r.name.startswith(kind))
        suffix = f"_{count}" if count else ""
        return f"{kind}{suffix}"

    def get(self, name: str) -> CompileRecord:
        """The record called ``name`` (``forward``, ``backward``, ``inference``, ...)."""
        for record in self.records:
            if record.name == name:
                return record
        raise KeyError(f"no graph named {name!r}; graphs: {[r.name for r in self.records]}")

    @property
    def declines(self) -> list[Decline]:
        """Every reason for a "no" in any graph of this compile."""
        return [decline for record in self.records for decline in record.declines]

    @property
    def forward(self) -> CompileRecord:
        """The forward (training) or inference graph's record."""
        for record in self.records:
            if record.name.startswith(("forward", "inference")):
                return record
        raise KeyError("no forward or inference graph was compiled")

    @property
    def backward(self) -> CompileRecord:
        """The backward graph's record (compiled at the first backward call)."""
        return self.get("backward")


class History:
    """The last ``limit`` compile sessions, oldest first."""

    def __init__(self, limit: int = HISTORY_LIMIT) -> None:
        self._sessions: collections.deque[CompileSession] = collections.deque(maxlen=limit)
        self._started = 0
        self._lock = threading.Lock()

    def new(self, config: Config, mode: Any = None) -> CompileSession:
        """Start and remember a session for one Dynamo graph."""
        with self._lock:
            session = CompileSession(id=self._started, config=config, mode=mode)
            self._started += 1
            self._sessions.append(session)
        return session

    @property
    def started(self) -> int:
        """How many sessions were ever started: the next session's id (:meth:`clear` and
        the limit forget sessions, not this count)."""
        return self._started

    def sessions(self) -> list[CompileSession]:
        """Every remembered session, oldest first."""
        return list(self._sessions)

    def clear(self) -> None:
        """Forget every recorded compile."""
        self._sessions.clear()
