"""Fused kernels and ATen library calls write their outputs into the planned arena.

The memory plan gave every intermediate an offset in one arena (``ctx.state["memory_plan"]``),
sharing bytes only between buffers whose lifetimes the stream/event order separates.
Generated kernels take ``out=``, so for every fused-kernel node with planned intermediates
among its outputs, the runtime calls the kernel with views of one arena tensor at those
offsets (and fresh tensors for its other outputs: graph outputs, or ones nothing reads).
ATen nodes with a direct out= overload (matmuls, cat, some reductions: see
:mod:`kitsune_backend.runtime.aten_out`) are called through it with arena views; the others
keep allocating through PyTorch's caching allocator, each with a reason.

The node's target is replaced in place, so the uncaptured schedule, the multi-stream code
(:mod:`~kitsune_backend.runtime.schedule_code`) and CUDA graph capture all run the same calls.

The arena is allocated at the first call (compiles can run under a fake-tensor mode), once
per compiled graph, and lives as long as the graph: replays of captured CUDA graphs, which
run in stream order on the caller's stream, and uncaptured calls all use it in turn.
"""

from __future__ import annotations

import operator
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx

from ..codegen.kernel import FusedKernel
from ..graph_utils import is_mutating, launches_kernel
from ..passes.base import Decline
from .arena import Buffer
from .aten_out import AtenInArena, direct_out, meta_mismatch, op_name


class Arena:
    """One byte buffer on a device, allocated at first use."""

    def __init__(self, nbytes: int, device: torch.device) -> None:
        self.nbytes = nbytes
        self.device = device
        self.tensor: Optional[torch.Tensor] = None

    def view(self, offset: int, shape: Sequence[int], stride: Sequence[int],
             dtype: torch.dtype) -> torch.Tensor:
        """A tensor of ``shape``/``stride``/``dtype`` starting ``offset`` bytes in.

        Made outside inference mode even when the first call runs in it: ATen's out=
        overloads refuse to write an inference tensor outside inference mode, and later
        calls may run there."""
        span = 1 + sum((s - 1) * st for s, st in zip(shape, stride)) if all(shape) else 0
        nbytes = span * dtype.itemsize
        if offset + nbytes > self.nbytes:
            raise ValueError(f"arena placement [{offset}, {offset + nbytes}) past its end")
        with torch.inference_mode(False):
            if self.tensor is None:
                self.tensor = torch.empty(self.nbytes, dtype=torch.uint8, device=self.device)
            raw = self.tensor[offset:offset + max(nbytes, dtype.itemsize)]
            return raw.view(dtype).as_strided(tuple(shape), tuple(stride))


class InArena:
    """A fused kernel called with ``out=`` views of the arena (made once, reused). An output
    without an offset (``None``: a graph output, or one nothing reads) gets a fresh tensor
    each call, as the kernel would allocate it itself."""

    def __init__(self, kernel: FusedKernel, arena: Arena, offsets: list[Optional[int]]) -> None:
        self.kernel = kernel
        self.arena = arena
        self.offsets = offsets
        self.__name__ = self.__qualname__ = kernel.__name__ + "_in_arena"
        self.__module__ = "kitsune_backend.kernels"
        self._views: Optional[tuple[Optional[torch.Tensor], ...]] = None
        self._fresh = [i for i, offset in enumerate(offsets) if offset is None]

    def __call__(self, *args: Any) -> Any:
        """Run the kernel into its arena views (and fresh tensors for unplaced outputs)."""
        if self._views is None:
            self._views = tuple(
                None if offset is None
                else self.arena.view(offset, spec.shape, spec.stride, spec.dtype)
                for offset, spec in zip(self.offsets, self.kernel.generated.outputs)
            )
        if not self._fresh:
            return self.kernel(*args, out=self._views)
        out = list(self._views)
        specs = self.kernel.generated.outputs
        for i in self._fresh:
            s = specs[i]
            out[i] = torch.empty_strided(s.shape, s.stride, dtype=s.dtype, device=self.arena.device)
        return self.kernel(*args, out=out)


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


def bind_arena(
    gm: fx.GraphModule,
    offsets: dict[str, int],
    arena_bytes: int,
    device: torch.device,
    buffers: Sequence[Buffer],
) -> tuple[dict[str, Any], list[Decline]]:
    """Point every node with planned outputs at the arena, in place: fused kernels
    (:class:`InArena`, their unplanned outputs allocated per call) and ATen ops with a
    direct out= overload whose outputs are all planned (:class:`AtenInArena`).

    Returns what it did, for ``record.runtime_info`` (fused kernels and ATen nodes placed,
    ATen nodes left on the allocator counted by op and reason, the arena's size), and one
    decline per ATen node left on the allocator.
    """
    arena = Arena(arena_bytes, device)
    sizes = {b.name: b.size for b in buffers}
    reads = _reads(buffers)
    kernels = aten = 0
    left: dict[str, int] = {}
    declines = []
    for node in gm.graph.nodes:
        target = node.target
        if node.op != "call_function":
            continue
        if isinstance(target, FusedKernel):
            names = _planned_names(node, len(target.generated.outputs), offsets)
            if any(names):
                node.target = InArena(target, arena, [offsets.get(n) for n in names])
                kernels += 1
            continue
        if not isinstance(target, torch._ops.OpOverload) or not launches_kernel(node):
            continue
        value = node.meta.get("val")
        names = _planned_names(node, 1 if isinstance(value, torch.Tensor) else len(value), offsets)
        if is_mutating(node) or not any(names):
            continue
        all_planned = names if all(names) else None
        wrapper, reason = _place_aten(node, all_planned, arena, offsets, sizes, reads)
        if wrapper is not None:
            node.target = wrapper
            aten += 1
            continue
        reason = f"{op_name(target)}: {reason}"
        left[reason] = left.get(reason, 0) + 1
        declines.append(Decline("arena", "left on the allocator: " + reason, node.name))
    if kernels or aten:
        gm.recompile()
    info = {
        "arena_kernels": kernels,
        "arena_aten_nodes": aten,
        "arena_aten_left": left,
        "arena_bytes": arena_bytes if kernels or aten else 0,
    }
    return info, declines
