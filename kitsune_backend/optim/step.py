"""``compile_step``: a whole training step (forward, loss, backward, optimizer update)
replayed as one CUDA graph.

``step = kitsune_backend.compile_step(train_step)`` returns a callable that, for each input
signature (shapes, dtypes, strides and devices of the tensor arguments, the other
arguments' values):

1. runs ``train_step`` itself for ``warmup`` calls (up to :data:`EXTRA_WARMUP_CALLS` more
   while a call still compiles something), on a side stream: Dynamo and kitsune compile,
   the optimizers create their state, libraries set up their per-stream state. kitsune's
   compiled graphs make no CUDA graphs of their own meanwhile
   (:func:`~kitsune_backend.runtime.outer.outer_capture`);
2. captures the next call into one :class:`torch.cuda.CUDAGraph`: every kernel of the
   forward, the loss, the backward and the optimizer update (kitsune's generated kernels,
   cuBLAS and cuDNN calls, eager ops between graph breaks), reading static copies of the
   tensor arguments;
3. from then on copies the tensor arguments in, replays the graph, and returns copies of
   the tensors ``train_step`` returned (the loss, say).

Python code inside ``train_step`` runs only while warming up and capturing; a replay
repeats the device work recorded then. So the step must do the same work at every call,
take its batch as arguments (a step without tensor arguments is not captured), and leave
LR schedulers to the loop. Before each replay the optimizers the step used are checked:
a :class:`~kitsune_backend.KitsuneOptimizer` reads its learning rates on the device, so a
scheduler changing them needs no new capture; any other hyperparameter change, a plain
torch.optim optimizer's learning rate included, or a parameter moved to other memory,
makes a new warm-up call and capture.

A step that cannot be captured (a host synchronization such as ``loss.item()`` or a
data-dependent branch, a torch.optim optimizer without ``capturable=True``, CPU tensors)
runs as ``train_step`` itself from then on, each part still compiled as it was (the
three-part path), with the reason in :meth:`CompiledStep.explain` and in
``get_stats()["reason"]``.
"""

from __future__ import annotations

import collections
import functools
import weakref
from typing import Any, Callable, Optional

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from ..process import PROCESS
from ..runtime.capture import own_cublas_workspaces
from ..runtime.outer import outer_capture

WARMUP_CALLS = 3
"""Calls per input signature that run ``train_step`` itself before the capture (a
:class:`~kitsune_backend.KitsuneOptimizer` runs torch.optim's update for its first two
steps and compiles its own at the third)."""
EXTRA_WARMUP_CALLS = 3
"""Further warm-up calls allowed while each call still compiles something."""
MAX_SIGNATURES = 2
"""Input signatures that keep a captured graph (the least recently used is dropped): a loop
whose last batch of each epoch is smaller needs two."""
TIMED_CALLS = 5
"""Replays timed (CUDA events) for ``get_stats``."""


def compile_step(fn: Optional[Callable] = None, *, warmup: int = WARMUP_CALLS) -> Any:
    """``compile_step(train_step)``, or ``@compile_step`` / ``@compile_step(warmup=...)``:
    a :class:`CompiledStep` (see the module doc)."""
    if fn is None:
        return lambda f: CompiledStep(f, warmup)
    return CompiledStep(fn, warmup)


class _Capture:
    """One captured step: the graph, its static inputs and outputs, and what it assumed of
    the optimizers (their hyperparameters, their parameters' addresses)."""

    def __init__(self, graph: Any, static: list, outputs: Any, optimizers: list) -> None:
        self.graph = graph
        self.static = static
        self.outputs = outputs
        self.optimizers = optimizers
        self.hyper = [_hyperparameters(o) for o in optimizers]
        self.params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
        self.addresses = [p.data_ptr() for p in self.params]

    def still_valid(self) -> bool:
        """Whether the optimizers' hyperparameters and parameter addresses are as captured."""
        if any(_hyperparameters(o) != h for o, h in zip(self.optimizers, self.hyper)):
            return False
        return all(p.data_ptr() == a for p, a in zip(self.params, self.addresses))


class CompiledStep:
    """The callable :func:`compile_step` returns (see the module doc)."""

    def __init__(self, fn: Callable, warmup: int) -> None:
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"compile_step: warmup is a positive int, got {warmup!r}")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.warmup = warmup
        self.reason = ""
        self.captures: "collections.OrderedDict[Any, _Capture]" = collections.OrderedDict()
        self.warm_calls: collections.Counter = collections.Counter()
        self.still_compiling: dict[Any, bool] = {}
        self.counts = collections.Counter()
        self._stream: Any = None
        self._events: dict[str, list] = {"uncaptured": [], "captured": []}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """One training step (see the module doc)."""
        self.counts["calls"] += 1
        leaves, _ = tree_flatten((args, kwargs))
        key = None if self.reason else self._signature(leaves)
        if key is None:
            self.counts["uncaptured"] += 1
            return self.fn(*args, **kwargs)
        capture = self.captures.get(key)
        if capture is not None:
            if capture.still_valid():
                self.captures.move_to_end(key)
                return self._replay(capture, leaves)
            del self.captures[key]
            self.warm_calls[key] = self.warmup - 1
        seen = self.warm_calls[key]
        if seen < self.warmup or (self.still_compiling.get(key)
                                  and seen < self.warmup + EXTRA_WARMUP_CALLS):
            self.warm_calls[key] += 1
            return self._warm_up(key, args, kwargs)
        return self._capture(key, args, kwargs, leaves)

    def _signature(self, leaves: list) -> Any:
        """The input signature, or None (with :attr:`reason` set) when the step cannot be
        captured for what it is given."""
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        if not tensors:
            self.reason = ("no tensor arguments: a replay reads only its arguments' memory, "
                           "so the batch must be passed to the step")
        elif not all(t.is_cuda for t in tensors):
            self.reason = "a tensor argument not on a CUDA device: CUDA graphs need CUDA tensors"
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            self.reason = ("torch.distributed is initialized: the collectives that DDP or FSDP "
                           "issue during a step would be captured too, which kitsune does not do")
        else:
            try:
                return tuple(
                    (tuple(x.shape), x.stride(), x.dtype, x.device, x.requires_grad)
                    if isinstance(x, torch.Tensor) else (type(x), hash(x), x)
                    for x in leaves)
            except TypeError as exc:
                self.reason = f"an argument that cannot be compared between calls ({exc})"
        return None

    def _warm_up(self, key: Any, args: tuple, kwargs: dict) -> Any:
        """``train_step`` itself on a side stream, kitsune's graphs uncaptured; the call is
        timed (CUDA events) and whether it compiled anything noted."""
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        caller = torch.cuda.current_stream()
        self._stream.wait_stream(caller)
        compiles = PROCESS.history.started
        with torch.cuda.stream(self._stream), outer_capture():
            start, end = _event(), _event()
            start.record()
            result = self.fn(*args, **kwargs)
            end.record()
        caller.wait_stream(self._stream)
        self.still_compiling[key] = PROCESS.history.started != compiles
        if not self.still_compiling[key]:
            self._events["uncaptured"] = [(start, end)]
        self.counts["warm_up"] += 1
        return result

    def _capture(self, key: Any, args: tuple, kwargs: dict, leaves: list) -> Any:
        """Capture the step, then run it by replaying; or record why not and run it."""
        static = [x.detach().clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        _, spec = tree_flatten((args, kwargs))
        static_args, static_kwargs = tree_unflatten(static, spec)  # the static tensors
        graph = torch.cuda.CUDAGraph()
        caller = torch.cuda.current_stream()
        optimizers = _OptimizerLog()
        try:
            with optimizers, outer_capture(), own_cublas_workspaces():
                with torch.cuda.graph(graph, stream=self._stream):
                    outputs = self.fn(*static_args, **static_kwargs)
        except Exception as exc:  # not capturable: the step runs as itself from now on
            torch.cuda.set_stream(caller)
            said = (str(exc).strip().splitlines() or [""])[0][:300]
            self.reason = f"capture failed: {type(exc).__name__}: {said}"
            self.captures.clear()
            self.counts["uncaptured"] += 1
            return self.fn(*args, **kwargs)
        if len(self.captures) >= MAX_SIGNATURES:
            self.captures.popitem(last=False)
        capture = _Capture(graph, [s for s in static if isinstance(s, torch.Tensor)],
                           outputs, optimizers.used())
        self.captures[key] = capture
        self.counts["captures"] += 1
        return self._replay(capture, leaves, counted=True)

    def _replay(self, capture: _Capture, leaves: list, counted: bool = False) -> Any:
        """Copy the tensor arguments in, replay, hand out copies of the outputs.
        ``counted``: the optimizers counted this step already (while it was captured)."""
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        for buffer, x in zip(capture.static, tensors):
            buffer.copy_(x)
        for optimizer in capture.optimizers:
            if hasattr(optimizer, "before_replay"):
                optimizer.before_replay(count=not counted)
        timed = len(self._events["captured"]) < TIMED_CALLS
        if timed:
            start, end = _event(), _event()
            start.record()
        capture.graph.replay()
        if timed:
            end.record()
            self._events["captured"].append((start, end))
        self.counts["replays"] += 1
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t,
                        capture.outputs)

    def get_stats(self) -> dict[str, Any]:
        """What the step did and what it measured: calls, warm-up calls, captures, replays,
        uncaptured calls, the reason it runs uncaptured ('' when captured), and the time of
        one step uncaptured (the last warm-up call that compiled nothing) and replayed (the
        median of the first replays), in ms, None where not measured."""
        times = {kind: sorted(s.elapsed_time(e) for s, e in pairs)
                 for kind, pairs in self._events.items() if pairs}
        stats: dict[str, Any] = {name: self.counts[name] for name in
                                 ("calls", "warm_up", "captures", "replays", "uncaptured")}
        stats["reason"] = self.reason
        stats["uncaptured_step_ms"] = times["uncaptured"][0] if "uncaptured" in times else None
        stats["captured_step_ms"] = (times["captured"][len(times["captured"]) // 2]
                                     if "captured" in times else None)
        stats["speedup"] = (stats["uncaptured_step_ms"] / stats["captured_step_ms"]
                            if stats["uncaptured_step_ms"] and stats["captured_step_ms"] else None)
        return stats

    def explain(self) -> str:
        """What :meth:`get_stats` says, as text."""
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        stats = self.get_stats()
        how = (f"runs as {name} itself (three-part path): {self.reason}" if self.reason
               else f"captured whole: {stats['captures']} capture(s), {stats['replays']} replays")
        return (f"compile_step({name}): {stats['calls']} calls, {stats['warm_up']} warm-up; "
                f"{how}")


class _OptimizerLog:
    """While open, the optimizers whose ``step()`` runs (torch.optim's global step hook);
    :meth:`used` leaves out the torch.optim optimizer a KitsuneOptimizer wraps."""

    def __enter__(self) -> "_OptimizerLog":
        self.seen: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self.handle = register_optimizer_step_pre_hook(
            lambda optimizer, args, kwargs: self.seen.add(optimizer))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()

    def used(self) -> list:
        inner = {id(getattr(o, "optimizer", None)) for o in self.seen}
        return [o for o in self.seen if id(o) not in inner]


def _hyperparameters(optimizer: Any) -> list:
    """Each param group's settings that a captured step bakes in (all but the parameters,
    and but a KitsuneOptimizer's float learning rate, which it reads on the device)."""
    on_device = hasattr(optimizer, "before_replay")
    return [{k: ("tensor", id(v)) if isinstance(v, torch.Tensor) else v
             for k, v in group.items()
             if k != "params" and not (on_device and k == "lr" and not isinstance(v, torch.Tensor))}
            for group in optimizer.param_groups]


def _event() -> Any:
    return torch.cuda.Event(enable_timing=True)
