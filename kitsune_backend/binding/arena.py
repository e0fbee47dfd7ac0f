"""arena: fused kernels and ATen library calls write their outputs into the planned arena.

The memory plan gave every intermediate an offset in one arena (``ctx.memory_plan``),
sharing bytes only between buffers whose lifetimes the stream/event order separates.
Generated kernels take ``out=``, so for every fused-kernel node with planned intermediates
among its outputs, the runtime calls the kernel with views of one arena tensor at those
offsets (and fresh tensors for its other outputs: graph outputs, or ones nothing reads).
ATen nodes with a direct out= overload (matmuls, cat, some reductions: see
:mod:`kitsune_backend.runtime.aten_out`) are called through it with arena views; the others
keep allocating through PyTorch's caching allocator, each with a reason.

The node's target is replaced in place, so the uncaptured schedule, the multi-stream code
(:mod:`~kitsune_backend.runtime.schedule_code`) and CUDA graph capture all run the same calls.
A first node makes each call take the arena's buffer, which the graphs of one compile share.
The arena itself, and the kernel wrapper, are :mod:`kitsune_backend.runtime.arena`.
"""

from __future__ import annotations

import operator
from typing import Callable, Optional, Sequence

import torch
import torch.fx as fx

from ..codegen.kernel import FusedKernel
from ..graph_utils import is_mutating, launches_kernel
from ..ir import Buffer, Decline, MemoryPlan, PassContext, PassResult
from ..runtime.arena import Arena, InArena
from ..runtime.aten_out import AtenInArena, direct_out, meta_mismatch, op_name


def _output_names(node: fx.Node, count: int) -> list[Optional[str]]:
    """The buffer name of each output of ``node`` (its own name, or its getitems'; ``None``
    for an output nothing reads)."""
    if count == 1 and isinstance(node.meta.get("val"), torch.Tensor):
        return [node.name]
    names: dict[int, str] = {}
    for user in node.users:
        if user.target is operator.getitem and isinstance(user.args[1], int):
            names.setdefault(user.args[1], user.name)
    return [names.get(i) for i in range(count)]


def _reads(buffers: Sequence[Buffer]) -> dict[str, list[Buffer]]:
    """For every node name, the planned buffers it reads (through any alias)."""
    found: dict[str, list[Buffer]] = {}
    for b in buffers:
        for user in b.users:
            found.setdefault(user.name, []).append(b)
    return found


def _overlaps(ranges: Sequence[tuple[int, int]]) -> bool:
    ordered = sorted(ranges)
    return any(b[0] < a[1] for a, b in zip(ordered, ordered[1:]))


def _planned_names(node: fx.Node, count: int, offsets: dict[str, int]) -> list[Optional[str]]:
    """The buffer name of each output of ``node`` that has an offset (else ``None``)."""
    return [n if n in offsets else None for n in _output_names(node, count)]


def _place_aten(
    node: fx.Node,
    names: Optional[list[str]],
    arena: Arena,
    offsets: dict[str, int],
    sizes: dict[str, int],
    reads: dict[str, list[Buffer]],
) -> tuple[Optional[AtenInArena], str]:
    """An :class:`~kitsune_backend.runtime.aten_out.AtenInArena` for an ATen node with a
    planned output, or ``(None, why not)``. ``names``: its outputs' buffers, when all are
    planned."""
    out_op, out_names, reason = direct_out(node.target, arena.device)
    if out_op is None:
        return None, reason
    if names is None:
        return None, "not every output is a planned intermediate"
    value = node.meta.get("val")
    specs = [value] if isinstance(value, torch.Tensor) else list(value)
    if not all(isinstance(s, torch.Tensor) and s.layout == torch.strided for s in specs):
        return None, "an output is not a strided tensor"
    if any(s.device.type != arena.device.type for s in specs):
        return None, "an output is on another device than the arena"
    for name, spec in zip(names, specs):
        span = 1 + sum((n - 1) * st for n, st in zip(spec.shape, spec.stride()))
        if spec.storage_offset() != 0 or span * spec.dtype.itemsize > sizes[name]:
            return None, "an output's layout is larger than its planned buffer"
    written = [(offsets[name], offsets[name] + sizes[name]) for name in names]
    read = [(offsets[b.name], offsets[b.name] + b.size) for b in reads.get(node.name, [])]
    if any(_overlaps([w, r]) for w in written for r in read) or _overlaps(written):
        return None, "its arena view would overlap a buffer it reads (bad memory plan)"
    reason = meta_mismatch(node, out_op, out_names, specs)
    if reason:
        return None, reason
    return AtenInArena(node.name, out_op, out_names, arena, [offsets[n] for n in names], specs), ""


class _Placer:
    """What points one node at the arena: ``(wrapper, "")``, or ``(None, reason)`` for an ATen
    op left on the allocator, or ``(None, "")`` for a node with nothing planned."""

    def __init__(self, arena: Arena, plan: MemoryPlan) -> None:
        self.arena = arena
        self.offsets = plan.offsets
        self.sizes = {b.name: b.size for b in plan.buffers}
        self.reads = _reads(plan.buffers)

    def __call__(self, node: fx.Node) -> tuple[Optional[Callable], str]:
        target, offsets = node.target, self.offsets
        if node.op != "call_function":
            return None, ""
        if isinstance(target, FusedKernel):
            names = _planned_names(node, len(target.generated.outputs), offsets)
            if not any(names):
                return None, ""
            return InArena(target, self.arena, [offsets.get(n) for n in names]), ""
        if not isinstance(target, torch._ops.OpOverload) or not launches_kernel(node):
            return None, ""
        value = node.meta.get("val")
        names = _planned_names(node, 1 if isinstance(value, torch.Tensor) else len(value), offsets)
        if is_mutating(node) or not any(names):
            return None, ""
        wrapper, reason = _place_aten(node, names if all(names) else None, self.arena, offsets,
                                      self.sizes, self.reads)
        return wrapper, "" if wrapper is not None else f"{op_name(target)}: {reason}"


def _refresh_first(gm: fx.GraphModule, arena: Arena) -> None:
    """Make every call of the graph start by taking its arena's buffer
    (:meth:`~kitsune_backend.runtime.arena.Arena.refresh`): a node after the inputs."""
    def arena_refresh() -> None:
        arena.refresh()

    arena_refresh.__module__ = "kitsune"
    first = next(n for n in gm.graph.nodes if n.op != "placeholder")
    with gm.graph.inserting_before(first):
        node = gm.graph.call_function(arena_refresh)
    node.meta["val"] = None  # a side effect, no value
    gm.recompile()


def bind_arena(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Point every node with planned outputs at the arena, in place: fused kernels
    (:class:`~kitsune_backend.runtime.arena.InArena`, their unplanned outputs allocated per
    call) and ATen ops with a direct out= overload whose outputs are all planned
    (:class:`~kitsune_backend.runtime.aten_out.AtenInArena`). The memory plan stage leaves an
    empty plan when ``memory_pool`` is off: then nothing changes.

    Its stats: the fused kernels and ATen nodes placed, the ATen nodes left on the allocator
    (counted by "op: reason"; each also a decline), the arena's size.

    Before::

        kitsune_fused_relu_neg_0 = kitsune_fused_relu_neg_0(x)     # meta kitsune_offset 0

    After::

        kitsune_fused_relu_neg_0 = kitsune_fused_relu_neg_0_in_arena(x)
    """
    plan = ctx.memory_plan
    if not plan.arena_bytes:
        return PassResult()
    arena = Arena(plan.arena_bytes, torch.device(ctx.device), ctx.arena_group)
    place = _Placer(arena, plan)
    kernels = aten = 0
    left: dict[str, int] = {}
    declines = []
    for node in gm.graph.nodes:
        wrapper, reason = place(node)
        if wrapper is not None:
            node.target = wrapper
            kernels += isinstance(wrapper, InArena)
            aten += not isinstance(wrapper, InArena)
        elif reason:
            left[reason] = left.get(reason, 0) + 1
            declines.append(Decline("arena", "left on the allocator: " + reason, node.name))
    if kernels or aten:
        _refresh_first(gm, arena)
        ctx.arena = arena
    stats = {
        "arena_kernels": kernels,
        "arena_aten_nodes": aten,
        "arena_aten_left": left,
        "arena_bytes": plan.arena_bytes if kernels or aten else 0,
    }
    notes = [f"{kernels} fused kernel(s) and {aten} ATen node(s) write into the arena"]
    return PassResult(changed=bool(kernels or aten), notes=notes, declines=declines, stats=stats)
