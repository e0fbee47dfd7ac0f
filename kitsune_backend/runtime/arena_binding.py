"""Fused kernels write their outputs into the planned arena.

The memory plan gave every intermediate an offset in one arena (``ctx.state["memory_plan"]``),
sharing bytes only between buffers whose lifetimes the stream/event order separates.
Generated kernels take ``out=``, so for every fused-kernel node whose outputs are all planned
intermediates, the runtime calls the kernel with views of one arena tensor at those offsets.
ATen ops have no general ``out=`` and keep allocating through PyTorch's caching allocator.

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


class Arena:
    """One byte buffer on a device, allocated at first use."""

    def __init__(self, nbytes: int, device: torch.device) -> None:
        self.nbytes = nbytes
        self.device = device
        self.tensor: Optional[torch.Tensor] = None

    def view(self, offset: int, shape: Sequence[int], stride: Sequence[int],
             dtype: torch.dtype) -> torch.Tensor:
        """A tensor of ``shape``/``stride``/``dtype`` starting ``offset`` bytes in."""
        if self.tensor is None:
            self.tensor = torch.empty(self.nbytes, dtype=torch.uint8, device=self.device)
        span = 1 + sum((s - 1) * st for s, st in zip(shape, stride)) if all(shape) else 0
        nbytes = span * dtype.itemsize
        if offset + nbytes > self.nbytes:
            raise ValueError(f"arena placement [{offset}, {offset + nbytes}) past its end")
        raw = self.tensor[offset:offset + max(nbytes, dtype.itemsize)]
        return raw.view(dtype).as_strided(tuple(shape), tuple(stride))


class InArena:
    """A fused kernel called with ``out=`` views of the arena (made once, reused)."""

    def __init__(self, kernel: FusedKernel, arena: Arena, offsets: list[int]) -> None:
        self.kernel = kernel
        self.arena = arena
        self.offsets = offsets
        self.__name__ = self.__qualname__ = kernel.__name__ + "_in_arena"
        self.__module__ = "kitsune_backend.kernels"
        self._views: Optional[tuple[torch.Tensor, ...]] = None

    def __call__(self, *args: Any) -> Any:
        """Run the kernel into its arena views."""
        if self._views is None:
            self._views = tuple(
                self.arena.view(offset, spec.shape, spec.stride, spec.dtype)
                for offset, spec in zip(self.offsets, self.kernel.generated.outputs)
            )
        return self.kernel(*args, out=self._views)


def _output_names(node: fx.Node, count: int) -> Optional[list[str]]:
    """The buffer name of each output of ``node`` (its own name, or its getitems')."""
    if count == 1 and isinstance(node.meta.get("val"), torch.Tensor):
        return [node.name]
    names: dict[int, str] = {}
    for user in node.users:
        if user.target is operator.getitem and isinstance(user.args[1], int):
            names.setdefault(user.args[1], user.name)
    if sorted(names) != list(range(count)):
        return None  # an unused output has no planned buffer
    return [names[i] for i in range(count)]


def bind_arena(gm: fx.GraphModule, offsets: dict[str, int], arena_bytes: int,
               device: torch.device) -> dict[str, int]:
    """Point every fused-kernel node whose outputs are all planned at the arena, in place.

    Returns what it did, for ``record.runtime_info``: kernels placed, the arena's size.
    """
    arena = Arena(arena_bytes, device)
    placed = 0
    for node in gm.graph.nodes:
        kernel = node.target
        if node.op != "call_function" or not isinstance(kernel, FusedKernel):
            continue
        names = _output_names(node, len(kernel.generated.outputs))
        if names is None or any(name not in offsets for name in names):
            continue
        node.target = InArena(kernel, arena, [offsets[name] for name in names])
        placed += 1
    if placed:
        gm.recompile()
    return {"arena_kernels": placed, "arena_bytes": arena_bytes if placed else 0}

