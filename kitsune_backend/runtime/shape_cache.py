"""Captures per input-shape signature, the least recently used dropped past a limit.

A graph of symbolic sizes serves many shapes, and a CUDA graph fixes every shape: its
captures are kept per *signature* (:func:`signature`: the shape and strides of each input
that is not a parameter or buffer, and the value of each int input, which is where size
symbols arrive). :class:`ShapeCache` keeps at most ``limit`` signatures (the ``capture_shapes``
option); adding one past that drops the least recently used, whose captures are freed once
nothing else refers to them.
"""

from __future__ import annotations

import collections
from typing import Any, Generic, Hashable, Iterator, Optional, Sequence, TypeVar

import torch

T = TypeVar("T")


def signature(args: Sequence[Any], indices: Sequence[int]) -> tuple:
    """The shape signature of a call: for each of ``indices``, a tensor's shape and strides,
    or an int's value."""
    return tuple(
        (tuple(args[i].shape), args[i].stride()) if isinstance(args[i], torch.Tensor)
        else args[i]
        for i in indices
    )


class ShapeCache(Generic[T]):
    """At most ``limit`` entries, signature -> value, in order of last use."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.entries: "collections.OrderedDict[Hashable, T]" = collections.OrderedDict()
        self.evicted = 0

    def get(self, key: Hashable) -> Optional[T]:
        """The entry of ``key`` (now the most recently used), or None."""
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def add(self, key: Hashable, value: T) -> list[T]:
        """Add ``key`` as the most recently used; returns the entries dropped to make room."""
        self.entries[key] = value
        self.entries.move_to_end(key)
        dropped = []
        while len(self.entries) > self.limit:
            dropped.append(self.entries.popitem(last=False)[1])
            self.evicted += 1
        return dropped

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self.entries.values()))
