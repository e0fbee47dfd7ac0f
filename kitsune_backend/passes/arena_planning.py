"""Offsets in one arena for buffers whose lifetimes are ordered by happens-before.

Pure functions on plain data, so they can be tested on random DAGs without torch graphs:
a buffer is a name, a size, a producer and the nodes that use it; ``happens_before(a, b)``
is the stream/event order of the schedule (see :class:`kitsune_backend.ir.StreamPlan`).

Two buffers may share bytes only when every use of one (its producer included) happens
before the producer of the other. Being earlier in a topological order is not enough: on two
streams, a "later" kernel may run while an "earlier" one still reads.
"""

from __future__ import annotations

from typing import Callable, Hashable, Mapping, Sequence

from ..ir import Buffer

ALIGNMENT = 256


def align(size: int, alignment: int = ALIGNMENT) -> int:
    """``size`` rounded up to a multiple of ``alignment``."""
    return (size + alignment - 1) // alignment * alignment


def ordered(a: Buffer, b: Buffer, happens_before: Callable[[Hashable, Hashable], bool]) -> bool:
    """True when ``b`` may reuse ``a``'s bytes: all of ``a``'s work finishes before ``b``'s
    producer starts."""
    return all(happens_before(x, b.producer) for x in (a.producer, *a.users))


def conflicts(
    buffers: Sequence[Buffer], happens_before: Callable[[Hashable, Hashable], bool]
) -> dict[Hashable, set[Hashable]]:
    """For every buffer, the buffers whose lifetime it is not ordered with (both ways)."""
    found: dict[Hashable, set[Hashable]] = {b.name: set() for b in buffers}
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if not (ordered(a, b, happens_before) or ordered(b, a, happens_before)):
                found[a.name].add(b.name)
                found[b.name].add(a.name)
    return found


def conflicts_from_clocks(
    buffers: Sequence[Buffer],
    stream: Mapping[Hashable, int],
    position: Mapping[Hashable, int],
    clock: Mapping[Hashable, Sequence[int]],
) -> dict[Hashable, set[Hashable]]:
    """Same answer as :func:`conflicts` for a vector-clock happens-before (``x`` before ``y``
    when ``clock[y][stream[x]] >= position[x]``), in O(buffers^2 x streams)."""
    width = len(next(iter(clock.values()), ()))
    reach = []
    for b in buffers:
        need = [0] * width
        for x in (b.producer, *b.users):
            need[stream[x]] = max(need[stream[x]], position[x])
        reach.append((need, {b.producer, *b.users}))

    def before(i: int, j: int) -> bool:
        need, nodes = reach[i]
        producer = buffers[j].producer
        if producer in nodes:
            return False
        known = clock[producer]
        return all(n <= k for n, k in zip(need, known))

    found: dict[Hashable, set[Hashable]] = {b.name: set() for b in buffers}
    for i, a in enumerate(buffers):
        for j in range(i + 1, len(buffers)):
            if not (before(i, j) or before(j, i)):
                found[a.name].add(buffers[j].name)
                found[buffers[j].name].add(a.name)
    return found


def assign_offsets(
    buffers: Sequence[Buffer],
    clash: Mapping[Hashable, set[Hashable]],
    alignment: int = ALIGNMENT,
) -> tuple[dict[Hashable, int], int]:
    """Greedy by size: each buffer, largest first, takes the lowest aligned gap that no
    clashing buffer already placed occupies. Returns (offsets, arena size)."""
    offsets: dict[Hashable, int] = {}
    sizes = {b.name: align(max(b.size, 1), alignment) for b in buffers}
    arena = 0
    for b in sorted(buffers, key=lambda b: (-sizes[b.name], str(b.name))):
        taken = sorted(
            (offsets[o], offsets[o] + sizes[o]) for o in clash.get(b.name, ()) if o in offsets
        )
        offset = 0
        for start, end in taken:
            if start - offset >= sizes[b.name]:
                break
            offset = max(offset, end)
        offsets[b.name] = offset
        arena = max(arena, offset + sizes[b.name])
    return offsets, arena


def eager_peak(buffers: Sequence[Buffer], order: Sequence[Hashable]) -> int:
    """Peak bytes live when the nodes run one by one in ``order`` and each buffer is freed
    after its last use (what eager PyTorch's allocator holds for the same buffers)."""
    index = {v: i for i, v in enumerate(order)}
    events: list[tuple[int, int, int]] = []
    for b in buffers:
        start = index[b.producer]
        end = max((index[u] for u in b.users), default=start)
        events.append((start, 0, b.size))
        events.append((end, 1, -b.size))
    live = peak = 0
    for _, _, delta in sorted(events):
        live += delta
        peak = max(peak, live)
    return peak


def check_plan(
    buffers: Sequence[Buffer],
    offsets: Mapping[Hashable, int],
    happens_before: Callable[[Hashable, Hashable], bool],
) -> list[str]:
    """Every pair of buffers whose byte ranges overlap without ordered lifetimes (empty: ok)."""
    problems = []
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            a0, b0 = offsets[a.name], offsets[b.name]
            if a0 < b0 + b.size and b0 < a0 + a.size:
                if not (ordered(a, b, happens_before) or ordered(b, a, happens_before)):
                    problems.append(f"{a.name} and {b.name} overlap but may be live together")
    return problems
