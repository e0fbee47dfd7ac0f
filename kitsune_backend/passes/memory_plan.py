"""memory_plan: an offset in one pooled arena for every intermediate.

The offsets come from :mod:`kitsune_backend.passes.arena_planning` (plain data, testable alone); the
order that decides which buffers may share bytes is the stream plan's happens-before, which
this pass reads from ``ctx.stream_plan``.

Buffers are found by storage: every tensor a node produces whose storage no placeholder, no
constant and no graph output holds is an intermediate; views and ``getitem`` share their
base's buffer, so a buffer's users are all the nodes that read any alias of it.

An intermediate whose storage an op depends on (``as_strided`` and its family take a
``storage_offset`` counted from the storage's start; ``slice_scatter`` and its family copy
the whole storage: see :func:`~kitsune_backend.graph_utils.storage_dependent_args`) keeps a
storage of its own, as in eager: in the arena, its storage would be the arena, and the op
would read other buffers, or copy the whole arena.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
import torch.fx as fx

from ..graph_utils import has_symbolic_shapes, is_view, iter_tensors, storage_dependent_args
from . import arena_planning as arena
from ..ir import META_OFFSET, Buffer, Decline, MemoryPlan, PassContext, PassResult
from .streams import is_scheduled


def _raw_storages(value: Any) -> list[tuple[int, int]]:
    """(storage key, storage bytes) of every tensor in ``value``."""
    found = []
    for t in iter_tensors(value):
        try:
            storage = t.untyped_storage()
            found.append((storage._cdata, int(storage.nbytes())))
        except Exception:  # sparse, nested or other tensors without one plain storage
            found.append((id(t), 0))
    return found


class Storages:
    """The storage of every node's value, as one key per buffer.

    The recorded values (``meta["val"]``) share a storage where the traced program did,
    but a pass that merges nodes (common subexpressions) leaves the views of the dropped
    node pointing at a storage that nothing produces any more. So the storage of a view's
    value (and of a ``getitem``'s) is also joined to the storage it aliases by the graph's
    own structure: a view reads its base's buffer, whatever its recorded value says."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self._parent: dict[int, int] = {}
        for node in gm.graph.nodes:
            source = self._aliased(node)
            if source is not None:
                for (a, _), (b, _) in zip(_raw_storages(source), _raw_storages(node.meta.get("val"))):
                    root_a, root_b = self._find(a), self._find(b)
                    if root_a != root_b:
                        self._parent[root_b] = root_a

    @staticmethod
    def _aliased(node: fx.Node) -> Any:
        """The value that ``node``'s value aliases (its first argument's, or the tuple
        element a ``getitem`` takes), or ``None``."""
        if not node.args or not isinstance(node.args[0], fx.Node):
            return None
        value = node.args[0].meta.get("val")
        if node.target is operator.getitem and isinstance(value, (list, tuple)):
            index = node.args[1]
            return value[index] if isinstance(index, int) and index < len(value) else None
        return value if is_view(node) else None

    def _find(self, key: int) -> int:
        while key in self._parent:
            key = self._parent[key]
        return key

    def of(self, value: Any) -> list[tuple[int, int]]:
        """(buffer key, storage bytes) of every tensor in ``value``."""
        return [(self._find(key), nbytes) for key, nbytes in _raw_storages(value)]


def storages_addressed(gm: fx.GraphModule, storages: Storages) -> dict[int, fx.Node]:
    """Storage key -> the first node whose result depends on that storage."""
    found: dict[int, fx.Node] = {}
    for node in gm.graph.nodes:
        for arg in storage_dependent_args(node):
            for key, _ in storages.of(arg.meta.get("val")):
                found.setdefault(key, node)
    return found


@dataclasses.dataclass
class _Scan:
    """What one walk over the graph found, per buffer key (see :class:`Storages`)."""

    outside: set[int] = dataclasses.field(default_factory=set)
    producer: dict[int, fx.Node] = dataclasses.field(default_factory=dict)
    size: dict[int, int] = dataclasses.field(default_factory=dict)
    users: dict[int, list[fx.Node]] = dataclasses.field(default_factory=dict)
    name: dict[int, str] = dataclasses.field(default_factory=dict)


def _scan(gm: fx.GraphModule, storages: Storages) -> _Scan:
    """Every storage's producer, size, readers and name; the storages of inputs, constants
    and outputs (``outside``: never in the arena)."""
    found = _Scan()
    for node in gm.graph.nodes:
        value = node.meta.get("val")
        if node.op in ("placeholder", "get_attr"):
            found.outside |= {key for key, _ in storages.of(value)}
        elif node.op == "output":
            for arg in node.all_input_nodes:
                found.outside |= {key for key, _ in storages.of(arg.meta.get("val"))}
        if not is_scheduled(node):
            if node.op == "call_function" and isinstance(value, torch.Tensor):
                for key, _ in storages.of(value):
                    if key in found.producer and key not in found.name:
                        found.name[key] = node.name  # the getitem (or first view) naming it
            continue
        for i in node.all_input_nodes:
            for key, _ in storages.of(i.meta.get("val")):
                found.users.setdefault(key, []).append(node)
        for key, nbytes in storages.of(value):
            if key not in found.producer:
                found.producer[key], found.size[key] = node, nbytes
                if isinstance(value, torch.Tensor):
                    found.name[key] = node.name
    return found


def find_buffers(gm: fx.GraphModule) -> tuple[list[Buffer], list[Decline]]:
    """The intermediates of ``gm`` (see the module docstring), each named after the node
    that holds it alone: its producer, or the ``getitem`` that takes it out of a tuple;
    and one decline per intermediate kept off the arena because an op depends on its storage."""
    storages = Storages(gm)
    addressed = storages_addressed(gm, storages)
    scan = _scan(gm, storages)
    buffers, declines = [], []
    for index, (key, producer) in enumerate(scan.producer.items()):
        if key in scan.outside or scan.size[key] <= 0:
            continue
        buffer_name = scan.name.get(key, f"{producer.name}.{index}")
        if key in addressed:
            op = addressed[key].target
            declines.append(Decline("memory_plan", (
                f"{buffer_name} keeps a storage of its own, not the arena: {addressed[key].name}"
                f" ({getattr(op, '__name__', op)}) depends on its storage, not only its elements"),
                buffer_name))
            continue
        users = tuple(u for u in dict.fromkeys(scan.users.get(key, [])) if u is not producer)
        buffers.append(Buffer(buffer_name, scan.size[key], producer, users))
    return buffers, declines


def plan_memory(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Give every intermediate an offset in one arena, sharing bytes only between buffers
    whose lifetimes are ordered by the stream/event schedule.

    Before (one stream)::

        a = relu(x)     # 4 KiB
        b = neg(a)      # 4 KiB, a dies here
        c = exp(b)      # 4 KiB, returned

    After (meta ``kitsune_offset``; ``c`` is an output, so it is not in the arena)::

        a: 0; b: 4096   # b is written while a is read, so they cannot share
    """
    ctx.memory_plan = MemoryPlan(buffers=[], offsets={}, arena_bytes=0)  # until planned
    if not ctx.config.memory_pool:
        off = Decline("memory_plan", "memory pool is off (memory_pool=False)")
        return PassResult(declines=[off])
    if has_symbolic_shapes(gm):
        return PassResult(declines=[Decline("memory_plan", "symbolic shapes: sizes unknown")])
    buffers, declines = find_buffers(gm)
    plan = ctx.stream_plan
    clash = arena.conflicts_from_clocks(buffers, plan.stream, plan.position, plan.clock)
    offsets, arena_bytes = arena.assign_offsets(buffers, clash)
    by_name = {n.name: n for n in gm.graph.nodes}
    for node in gm.graph.nodes:
        node.meta.pop(META_OFFSET, None)
    for b in buffers:
        if b.name in by_name:
            by_name[b.name].meta[META_OFFSET] = offsets[b.name]
    ctx.memory_plan = MemoryPlan(buffers, offsets, arena_bytes)
    total = sum(b.size for b in buffers)
    stats = {
        "bytes_planned": arena_bytes,
        "bytes_intermediates": total,
        "bytes_eager_peak": arena.eager_peak(buffers, plan.order),
        "buffers_planned": len(buffers),
    }
    notes = [f"{len(buffers)} intermediate(s): arena {arena_bytes} B for {total} B in total"]
    return PassResult(stats=stats, notes=notes, declines=declines)
