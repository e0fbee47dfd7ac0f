"""Offsets in one arena for buffers whose lifetimes are ordered by happens-before.

Pure functions on plain data, so they can be tested on random DAGs without torch graphs:
a buffer is a name, a size, a producer and the nodes that use it; ``happens_before(a, b)``
is the stream/event order of the schedule (see :class:`kitsune_backend.ir.StreamPlan`).

Two buffers may share bytes only when every use of one (its producer included) happens
before the producer of the other. Being earlier in a topological order is not enough: on two
streams, a "later" kernel may run while an "earlier" one still reads.
"""

from __future__ import annotations

import bisect
from typing import Callable, Hashable, Mapping, Sequence

from ..ir import Buffer, StreamPlan

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


def shared_work(buffers: Sequence[Buffer]) -> tuple[list[int], list[int]]:
    """Two bit masks per buffer ``i`` (bit ``j``: buffer ``j``): the buffers whose producer
    produces or uses ``i``, and the buffers that ``i``'s producer produces or uses. Such
    pairs are never ordered, whatever the schedule: one node's work is in both."""
    produces: dict[Hashable, int] = {}
    touches: dict[Hashable, int] = {}
    for i, b in enumerate(buffers):
        produces[b.producer] = produces.get(b.producer, 0) | 1 << i
        for x in {b.producer, *b.users}:
            touches[x] = touches.get(x, 0) | 1 << i
    rows = []
    for b in buffers:
        mask = 0
        for x in {b.producer, *b.users}:
            mask |= produces.get(x, 0)
        rows.append(mask)
    return rows, [touches[b.producer] for b in buffers]


def _at_least(values: Sequence[int]) -> tuple[list[int], list[int]]:
    """The values sorted, and ``masks[k]``: the indices of the values >= ``sorted[k]``
    (``masks[len]`` = 0); look up with ``bisect_left``."""
    ranked = sorted(range(len(values)), key=values.__getitem__)
    masks = [0] * (len(values) + 1)
    for k in range(len(values) - 1, -1, -1):
        masks[k] = masks[k + 1] | 1 << ranked[k]
    return [values[i] for i in ranked], masks


def _at_most(values: Sequence[int]) -> tuple[list[int], list[int]]:
    """The values sorted, and ``masks[k]``: the indices of the ``k`` smallest values; look
    up with ``bisect_right``."""
    ranked = sorted(range(len(values)), key=values.__getitem__)
    masks = [0] * (len(values) + 1)
    for k, i in enumerate(ranked):
        masks[k + 1] = masks[k] | 1 << i
    return [values[i] for i in ranked], masks


def clash_masks(
    buffers: Sequence[Buffer],
    stream: Mapping[Hashable, int],
    position: Mapping[Hashable, int],
    clock: Mapping[Hashable, Sequence[int]],
    shared: tuple[list[int], list[int]] | None = None,
) -> list[int]:
    """Per buffer, a bit mask of the buffers whose lifetimes a vector-clock happens-before
    (``x`` before ``y`` when ``clock[y][stream[x]] >= position[x]``) does not order with it.
    Buffer ``a`` is before ``b`` when the clock of ``b``'s producer covers the last position
    of ``a``'s work on every stream: per stream, the buffers past a threshold are one mask
    of sorted values. ``shared`` is :func:`shared_work` of ``buffers``, if the caller has it."""
    width = len(next(iter(clock.values()), ()))
    need = [[0] * width for _ in buffers]
    for i, b in enumerate(buffers):
        for x in (b.producer, *b.users):
            need[i][stream[x]] = max(need[i][stream[x]], position[x])
    produced = [clock[b.producer] for b in buffers]
    rows, columns = shared_work(buffers) if shared is None else shared
    everyone = (1 << len(buffers)) - 1
    before = [everyone & ~r for r in rows]  # before[i]: the buffers that may follow i
    after = [everyone & ~c for c in columns]  # after[i]: the buffers that i may follow
    for t in range(width):
        done, done_masks = _at_least([p[t] for p in produced])
        needed, needed_masks = _at_most([n[t] for n in need])
        for i in range(len(buffers)):
            before[i] &= done_masks[bisect.bisect_left(done, need[i][t])]
            after[i] &= needed_masks[bisect.bisect_right(needed, produced[i][t])]
    return [everyone & ~(before[i] | after[i] | 1 << i) for i in range(len(buffers))]


def bits(mask: int) -> list[int]:
    """The indices of the set bits of ``mask``, lowest first."""
    found = []
    while mask:
        low = mask & -mask
        found.append(low.bit_length() - 1)
        mask ^= low
    return found


def conflicts_from_clocks(
    buffers: Sequence[Buffer],
    stream: Mapping[Hashable, int],
    position: Mapping[Hashable, int],
    clock: Mapping[Hashable, Sequence[int]],
) -> dict[Hashable, set[Hashable]]:
    """Same answer as :func:`conflicts` for a vector-clock happens-before
    (:func:`clash_masks` as sets of names)."""
    masks = clash_masks(buffers, stream, position, clock)
    return {b.name: {buffers[j].name for j in bits(m)} for b, m in zip(buffers, masks)}


def _first_fit(
    buffers: Sequence[Buffer], clash: Sequence[int], alignment: int
) -> tuple[dict[Hashable, int], int]:
    """Greedy by size: each buffer, largest first, takes the lowest aligned gap that none of
    the buffers in its ``clash`` mask already placed occupies. The byte ranges taken are
    read from the clashing buffers one by one, or from the distinct ranges placed so far
    (each with a mask of its buffers), whichever is fewer."""
    offsets: dict[Hashable, int] = {}
    sizes = [align(max(b.size, 1), alignment) for b in buffers]
    placed: dict[int, int] = {}
    spans: dict[tuple[int, int], int] = {}  # (start, end) -> the buffers placed there
    placed_mask = arena = 0
    for i in sorted(range(len(buffers)), key=lambda i: (-sizes[i], str(buffers[i].name))):
        mine = clash[i] & placed_mask
        if mine.bit_count() < len(spans):
            taken = sorted({(placed[o], placed[o] + sizes[o]) for o in bits(mine)})
        else:
            taken = sorted(span for span, there in spans.items() if there & mine)
        offset = 0
        for start, end in taken:
            if start - offset >= sizes[i]:
                break
            offset = max(offset, end)
        placed[i] = offsets[buffers[i].name] = offset
        span = (offset, offset + sizes[i])
        spans[span] = spans.get(span, 0) | 1 << i
        placed_mask |= 1 << i
        arena = max(arena, offset + sizes[i])
    return offsets, arena


def assign_offsets(
    buffers: Sequence[Buffer],
    clash: Mapping[Hashable, set[Hashable]],
    alignment: int = ALIGNMENT,
) -> tuple[dict[Hashable, int], int]:
    """Greedy by size: each buffer, largest first, takes the lowest aligned gap that no
    clashing buffer already placed occupies. Returns (offsets, arena size)."""
    index = {b.name: i for i, b in enumerate(buffers)}
    masks = [sum(1 << index[o] for o in clash.get(b.name, ())) for b in buffers]
    return _first_fit(buffers, masks, alignment)


def plan_arena(
    buffers: Sequence[Buffer],
    plan: StreamPlan,
    alignment: int = ALIGNMENT,
    shared: tuple[list[int], list[int]] | None = None,
) -> tuple[dict[Hashable, int], int]:
    """:func:`assign_offsets` for ``buffers`` under the happens-before of ``plan``
    (``shared``: :func:`shared_work` of ``buffers``, if the caller has it). Returns
    (offsets, arena size)."""
    if not buffers:
        return {}, 0
    masks = clash_masks(buffers, plan.stream, plan.position, plan.clock, shared)
    return _first_fit(buffers, masks, alignment)


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
