"""The arena at run time: the byte buffer a compiled graph's intermediates live in, and
fused kernels writing there.

The graphs of one compile (a forward and its backward) take turns in one buffer, their
:class:`ArenaGroup`'s: an arena holds only intermediates, dead once its graph's call ends,
and the forward and the backward of a model run one after the other in stream order (the
backward on the forward's stream), so the backward reuses the bytes of the forward's
intermediates instead of adding its own. The buffer is as large as the largest arena asked
for so far: allocated at a graph's first call (compiles can run under a fake-tensor mode),
replaced by a larger one when a later graph (the backward, compiled at the first backward
call) needs more.

Each call that is not a CUDA-graph replay starts with :meth:`Arena.refresh`: the arena takes
its group's current buffer, and drops the views its kernels made of the old one. A call
inside a CUDA-graph capture *pins* the arena: the capture bakes the buffer's address into
the graph, so the arena keeps that buffer (and its memory) for as long as it lives. The
capture runner refreshes the arena just before it captures, so that a buffer given up is
freed outside the capture. In training, the backward is compiled and run before the
forward's second call, where the forward's capture happens, so both pin the one buffer of
the larger size.

Graphs of one compile must not run concurrently: two calls on different streams with no
order between them (a forward on one stream beside its backward on another) would write
the same bytes. Calls from one stream, the way autograd runs a backward, are ordered.
:mod:`kitsune_backend.binding.arena` decides which nodes write here.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Sequence

import torch


class ArenaGroup:
    """The buffer, per device, that the arenas of one compile share: as large as the
    largest arena asked for so far."""

    def __init__(self) -> None:
        self._buffers: dict[torch.device, torch.Tensor] = {}
        self._lock = threading.Lock()

    def buffer(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """The current buffer of ``device``; a new one of ``nbytes`` first when it is
        smaller (arenas that pinned the old one keep it alive). The lock is taken only to
        replace it."""
        current = self._buffers.get(device)
        if current is not None and current.numel() >= nbytes:
            return current
        with self._lock:
            current = self._buffers.get(device)
            if current is None or current.numel() < nbytes:
                with torch.inference_mode(False):
                    current = torch.empty(nbytes, dtype=torch.uint8, device=device)
                self._buffers[device] = current
            return current


class Arena:
    """A graph's arena: ``nbytes`` of its group's buffer (or of a buffer of its own, without
    a group), taken at the start of each call that is not a replay, and the views of it
    that the graph's kernels write into (dropped when it takes another buffer)."""

    def __init__(self, nbytes: int, device: torch.device,
                 group: Optional[ArenaGroup] = None) -> None:
        self.nbytes = nbytes
        self.device = device
        self.group = group or ArenaGroup()
        self.tensor: Optional[torch.Tensor] = None
        self.pinned = False
        self._views: dict[int, Any] = {}
        self._capturing = (torch.cuda.is_current_stream_capturing
                           if device.type == "cuda" else lambda: False)

    def refresh(self) -> None:
        """Take the group's current buffer, unless a CUDA-graph capture pinned this one;
        pin it when this call is being captured (inside a capture, keep the buffer held:
        it stays valid, and nothing may be freed or synchronized there). Before a capture,
        the capture runner calls this outside it, so that a buffer given up is freed there.
        Giving a buffer up on CUDA synchronizes the device first: calls may have used it
        from other streams than the one it was allocated on, which the caching allocator
        does not know."""
        if self.pinned:
            return
        capturing = self._capturing()
        if self.tensor is None or not capturing:
            buffer = self.group.buffer(self.nbytes, self.device)
            if buffer is not self.tensor:
                if self.tensor is not None and self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.tensor = buffer
                self._views.clear()  # the old buffer goes once no view holds it
        if capturing:
            self.pinned = True

    def views(self, owner: object, make: Callable[[], Any]) -> Any:
        """``owner``'s views of the current buffer: ``make()``'s result, kept until the
        arena takes another buffer (``make`` takes the first buffer, through :meth:`view`)."""
        made = self._views.get(id(owner))
        if made is None:
            made = self._views[id(owner)] = make()
        return made

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
        if self.tensor is None:
            self.refresh()
        with torch.inference_mode(False):
            raw = self.tensor[offset:offset + max(nbytes, dtype.itemsize)]
            return raw.view(dtype).as_strided(tuple(shape), tuple(stride))


class InArena:
    """A fused kernel called with ``out=`` views of the arena (made once per buffer the
    arena takes, reused). An output without an offset (``None``: a graph output, or one
    nothing reads) gets a fresh tensor each call, as the kernel would allocate it itself."""

    def __init__(self, kernel: Any, arena: Arena, offsets: list[Optional[int]]) -> None:
        self.kernel = kernel
        self.arena = arena
        self.offsets = offsets
        self.__name__ = self.__qualname__ = kernel.__name__ + "_in_arena"
        self.__module__ = "kitsune_backend.kernels"
        self._fresh = [i for i, offset in enumerate(offsets) if offset is None]

    def _make_views(self) -> tuple[Optional[torch.Tensor], ...]:
        return tuple(
            None if offset is None else self.arena.view(offset, spec.shape, spec.stride, spec.dtype)
            for offset, spec in zip(self.offsets, self.kernel.generated.outputs)
        )

    def __call__(self, *args: Any) -> Any:
        """Run the kernel into its arena views (and fresh tensors for unplaced outputs)."""
        views = self.arena.views(self, self._make_views)
        if not self._fresh:
            return self.kernel(*args, out=views)
        out = list(views)
        specs = self.kernel.generated.outputs
        for i in self._fresh:
            s = specs[i]
            out[i] = torch.empty_strided(s.shape, s.stride, dtype=s.dtype, device=self.arena.device)
        return self.kernel(*args, out=out)
