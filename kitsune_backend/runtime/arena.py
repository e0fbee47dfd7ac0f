"""The arena at run time: one byte buffer per compiled graph, and fused kernels writing there.

The arena is allocated at the first call (compiles can run under a fake-tensor mode), once
per compiled graph, and lives as long as the graph: replays of captured CUDA graphs, which
run in stream order on the caller's stream, and uncaptured calls all use it in turn.
:mod:`kitsune_backend.binding.arena` decides which nodes write here.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch


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

    def __init__(self, kernel: Any, arena: Arena, offsets: list[Optional[int]]) -> None:
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
