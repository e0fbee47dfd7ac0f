"""memory_plan: an offset in one pooled arena for every intermediate.

The offsets come from :mod:`kitsune_backend.passes.arena_planning` (plain data, testable alone); the
order that decides which buffers may share bytes is the stream plan's happens-before, which
this pass reads from ``ctx.stream_plan``. Where that plan's arena, with a cuBLAS workspace
for each side stream that runs a matmul, would exceed the arena of the same graph on one
stream by more than ``stream_memory_budget`` of that graph's single-stream peak (the arena
plus inputs, parameters and outputs), this pass first moves
side-stream branches back (:mod:`kitsune_backend.passes.stream_memory`) and writes the
plan that fits on the nodes and into ``ctx.stream_plan``.

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
from . import arena_planning as arena, stream_memory
from .library_workspace import cublas_workspace_bytes, workspace_nodes
from ..ir import META_OFFSET, Buffer, Decline, MemoryPlan, PassContext, PassResult
from .stream_cost import node_cost_us
from .streams import annotate, is_scheduled, kernel_dag


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
    inputs: set[int] = dataclasses.field(default_factory=set)
    producer: dict[int, fx.Node] = dataclasses.field(default_factory=dict)
    size: dict[int, int] = dataclasses.field(default_factory=dict)
    users: dict[int, list[fx.Node]] = dataclasses.field(default_factory=dict)
    name: dict[int, str] = dataclasses.field(default_factory=dict)


def _scan(gm: fx.GraphModule, storages: Storages) -> _Scan:
    """Every storage's producer, size, readers and name; the storages of inputs, constants
    and outputs (``outside``: never in the arena), and of inputs and constants alone
    (``inputs``)."""
    found = _Scan()
    for node in gm.graph.nodes:
        value = node.meta.get("val")
        if node.op in ("placeholder", "get_attr"):
            found.inputs |= {key for key, _ in storages.of(value)}
            found.outside |= found.inputs
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


def find_buffers(gm: fx.GraphModule) -> tuple[list[Buffer], list[Decline], int]:
    """The intermediates of ``gm`` (see the module docstring), each named after the node
    that holds it alone: its producer, or the ``getitem`` that takes it out of a tuple;
    one decline per intermediate kept off the arena because an op depends on its storage;
    and the bytes that the graph's nodes allocate outside the arena (those intermediates,
    and the outputs that are not inputs or constants)."""
    storages = Storages(gm)
    addressed = storages_addressed(gm, storages)
    scan = _scan(gm, storages)
    buffers, declines, outside_bytes = [], [], 0
    for index, (key, producer) in enumerate(scan.producer.items()):
        if key in scan.outside or scan.size[key] <= 0:
            outside_bytes += scan.size[key] if key not in scan.inputs else 0
            continue
        buffer_name = scan.name.get(key, f"{producer.name}.{index}")
        if key in addressed:
            op = addressed[key].target
            declines.append(Decline("memory_plan", (
                f"{buffer_name} keeps a storage of its own, not the arena: {addressed[key].name}"
                f" ({getattr(op, '__name__', op)}) depends on its storage, not only its elements"),
                buffer_name))
            outside_bytes += scan.size[key]
            continue
        users = tuple(u for u in dict.fromkeys(scan.users.get(key, [])) if u is not producer)
        buffers.append(Buffer(buffer_name, scan.size[key], producer, users))
    return buffers, declines, outside_bytes


def input_bytes(gm: fx.GraphModule) -> int:
    """The bytes of the storages of the graph's inputs and constants (parameters included)."""
    storages = {}
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            storages.update(_raw_storages(node.meta.get("val")))
    return sum(storages.values())


def _fit_budget(gm: fx.GraphModule, ctx: PassContext, buffers: list[Buffer],
                resident_bytes: int) -> PassResult:
    """Bring the stream plan within the memory budget (config ``stream_memory_budget``, a
    fraction of the single-stream peak: the arena plus ``resident_bytes``, what every plan
    holds alike; a side stream that runs a matmul also costs a cuBLAS workspace,
    :mod:`~kitsune_backend.passes.library_workspace`; method in
    :mod:`~kitsune_backend.passes.stream_memory`): side-stream
    branches that cost the most bytes per microsecond of overlap go back onto their
    predecessor's stream, on the nodes and in ``ctx.stream_plan``; one decline per branch
    moved."""
    plan = ctx.stream_plan
    dag, _ = kernel_dag(gm)
    cost = {n: node_cost_us(n) for n in plan.order}
    budget = ctx.config.stream_memory_budget
    gemms, device = workspace_nodes(gm)
    workspace = cublas_workspace_bytes(device)
    fit = stream_memory.fit_memory_budget(dag, plan, cost, buffers, budget, resident_bytes,
                                          workspace, gemms)
    if fit.moves:
        annotate(gm, fit.plan)
        ctx.stream_plan = fit.plan
    declines = [Decline("memory_plan", (
        f"kept on stream {fit.plan.stream[m.nodes[0]]}: a side stream would keep its "
        f"{m.held_bytes} B of buffers{' and cuBLAS workspace' if gemms & set(m.nodes) else ''}"
        f" live beside other work, past the memory budget (arena and side-stream workspaces "
        f"{fit.before_bytes} B > {int(fit.limit_bytes)} B), for {m.overlap_us:.1f} us of "
        "overlap"), m.nodes[0].name) for m in fit.moves]
    stats = {
        "streams_wanted": plan.streams_used,
        "streams_used": fit.plan.streams_used,
        "events": fit.plan.events,
        "join_events": len(fit.plan.joins),
        "branches_kept_back": len(fit.moves),
        "bytes_single_stream": fit.single_bytes,
        "bytes_streams_unbudgeted": fit.before_bytes,
        "bytes_resident": resident_bytes,
        "bytes_cublas_workspace": workspace,
        "side_stream_workspaces": fit.workspaces_after,
        "side_stream_workspaces_unbudgeted": fit.workspaces_before,
    }
    notes = [f"memory budget {budget:.0%} over one stream's peak (arena {fit.single_bytes} B "
             f"+ {resident_bytes} B of inputs, parameters and outputs): "
             f"{plan.streams_used} -> {fit.plan.streams_used} stream(s), arena and side-stream "
             f"workspaces {fit.before_bytes} -> {fit.after_bytes} B"] if fit.moves else []
    return PassResult(stats=stats, notes=notes, declines=declines)


def plan_memory(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Give every intermediate an offset in one arena, sharing bytes only between buffers
    whose lifetimes are ordered by the stream/event schedule.

    Before (one stream)::

        a = relu(x)     # 4 KiB
        b = neg(a)      # 4 KiB, a dies here
        c = exp(b)      # 4 KiB, returned

    After (meta ``kitsune_offset``; ``c`` is an output, so it is not in the arena)::

        a: 0; b: 4096   # b is written while a is read, so they cannot share

    With several streams, branches whose buffers would push the arena past the memory
    budget are first moved back onto their predecessor's stream (see :func:`_fit_budget`).
    """
    ctx.memory_plan = MemoryPlan(buffers=[], offsets={}, arena_bytes=0)  # until planned
    if not ctx.config.memory_pool:
        off = Decline("memory_plan", "memory pool is off (memory_pool=False)")
        return PassResult(declines=[off])
    if has_symbolic_shapes(gm):
        return PassResult(declines=[Decline("memory_plan", "symbolic shapes: sizes unknown")])
    buffers, declines, outside_bytes = find_buffers(gm)
    fitted = PassResult()
    if ctx.stream_plan.streams_used > 1:
        fitted = _fit_budget(gm, ctx, buffers, input_bytes(gm) + outside_bytes)
    offsets, arena_bytes = arena.plan_arena(buffers, ctx.stream_plan)
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
        "bytes_single_stream": arena_bytes,
        "bytes_peak_planned": arena_bytes + outside_bytes,
        "bytes_intermediates": total,
        "bytes_eager_peak": arena.eager_peak(buffers, ctx.stream_plan.order),
        "buffers_planned": len(buffers),
        **fitted.stats,
    }
    notes = [f"{len(buffers)} intermediate(s): arena {arena_bytes} B for {total} B in total",
             *fitted.notes]
    return PassResult(stats=stats, notes=notes, declines=declines + fitted.declines)
