"""Whole-graph CUDA graph capture: the multi-stream schedule captured once, replayed after.

Calls go like this:

1. the first call runs the schedule uncaptured (warm-up: lazy library init, autotuning);
2. the next call captures it into a :class:`torch.cuda.CUDAGraph` (one *instance*: its own
   memory pool, static input buffers, static outputs) and replays it;
3. later calls replay an instance whose outputs nobody holds any more.

Inputs: parameters and buffers (``static_input_indices``) are read where they are, and so
are inputs that live in another instance's static outputs (the forward activations a
backward graph reads) or in the memory of another instance's parameters (the transposed
weights a backward graph reads): an instance is replayed only when those are at the
captured address.
Other inputs are copied into the instance's buffers, skipped when the same tensor object
comes again with the same version counter (nothing changed it in place since the copy);
inference tensors have no version counter and are always copied.

Outputs are never overwritten while someone holds them: a replay hands out fresh aliases
of the static outputs, and an instance is only replayed when the use count of each of its
output storages is back to its own references. Otherwise another instance is used or
captured (up to ``MAX_INSTANCES``), and past that the call runs uncaptured. This covers the
forward outputs that autograd saves for backward: they stay referenced until backward ran.
Small outputs the caller receives (at most ``COPY_OUT_MAX_BYTES``: a loss, logits) are
handed out as copies instead, so a caller who keeps the last loss while running the next
step does not need a second instance (with a second copy of every activation).

RNG: PyTorch's CUDA generator registers with the graph, so each replay draws fresh numbers.

Inside a CUDA graph that someone else is capturing (a user's ``torch.cuda.graph``, or
:func:`kitsune_backend.compile_step` capturing a whole training step), and while
:func:`outer_capture` says such a capture is being prepared, the schedule runs uncaptured:
its kernels become part of the outer graph, and no graph of its own is made.

A capture that fails (out of memory for the graph's pool included) is not retried: that
call and every later one run the schedule uncaptured (the multi-stream runner), and a
``cuda_graphs`` decline says why.
"""

from __future__ import annotations

import collections
import contextlib
import weakref
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from ..ir import Decline, RuntimeReport

aten = torch.ops.aten

MAX_INSTANCES = 3
COPY_OUT_MAX_BYTES = 64 * 1024


@contextlib.contextmanager
def own_cublas_workspaces() -> Iterator[None]:
    """Make a capture allocate its cuBLAS workspaces in its own private pool.

    cuBLAS keeps one workspace per (handle, stream), made at the first matmul on a stream
    and baked into every matmul captured there. One made by the warm-up lives in the
    caching allocator's normal pool, where anyone may free it: Inductor's CUDA graphs
    (``mode="reduce-overhead"``) clear all workspaces when they record, and
    ``torch.cuda.empty_cache`` then hands the memory back, so the next replay would read
    and write freed memory (seen on the H100 as an illegal memory access). Clearing the
    workspaces before the capture makes its matmuls allocate new ones inside the graph's
    pool, which lives as long as the graph; clearing them after it keeps later uncaptured
    matmuls out of that pool. Inductor's cudagraph trees do the same."""
    torch._C._cuda_clearCublasWorkspaces()
    try:
        yield
    finally:
        torch._C._cuda_clearCublasWorkspaces()


class _OuterCapture:
    """How many :func:`outer_capture` blocks are open (a count, not a thread-local: the
    autograd engine runs backward graphs on threads of its own)."""

    depth = 0


@contextlib.contextmanager
def outer_capture() -> Iterator[None]:
    """While open, every :class:`CapturedRunner` runs its schedule uncaptured: a caller
    warms up and captures a larger graph around kitsune's (its warm-up calls then make no
    graphs of kitsune's own that its capture would never use)."""
    _OuterCapture.depth += 1
    try:
        yield
    finally:
        _OuterCapture.depth -= 1


_DATA_PTRS_EQUAL = getattr(torch._C, "_tensors_data_ptrs_at_indices_equal", None)
"""``f(tensors, data_ptrs, indices)``: whether ``tensors[i].data_ptr() == data_ptrs[i]`` for
every ``i`` in ``indices`` (what Inductor's CUDA graph trees check their inputs with)."""

class CaptureRegistry:
    """What the captured graphs of one process know of each other's memory (one per process,
    in :class:`~kitsune_backend.process.ProcessState`).

    ``pool_outputs``: storage address -> the instance whose static outputs live there. An
    input found here at capture time (a forward output saved for backward, say) is read in
    place, not copied. ``static_storages``: storage address -> a parameter/buffer some
    instance reads in place. While that tensor lives nothing else can sit at its address, so
    an input found here (a view of a weight saved for backward, say) is read in place too.
    """

    def __init__(self) -> None:
        self.pool_outputs: "weakref.WeakValueDictionary[int, _Instance]" = \
            weakref.WeakValueDictionary()
        self.static_storages: "weakref.WeakValueDictionary[int, torch.Tensor]" = \
            weakref.WeakValueDictionary()

    def read_in_place(self, x: torch.Tensor) -> bool:
        """True when ``x`` lives in memory that stays put between calls: another instance's
        static outputs, or a parameter/buffer."""
        address = x.untyped_storage().data_ptr()
        return address in self.pool_outputs or address in self.static_storages


class _Instance:
    """One captured graph with its static input buffers and static outputs."""

    def __init__(self, run: Callable, args: Sequence[Any], static: Sequence[int], stream: Any,
                 registry: CaptureRegistry, caller_outputs: Sequence[int] = ()):
        self.static = [(i, args[i], args[i].data_ptr()) for i in static if i < len(args)]
        for _, param, _ in self.static:
            registry.static_storages[param.untyped_storage().data_ptr()] = param
        self._static_indices = [i for i, _, _ in self.static]
        self._static_ptrs: list[Optional[int]] = [None] * len(args)
        for i, _, ptr in self.static:
            self._static_ptrs[i] = ptr
        dynamic = [i for i in range(len(args)) if i not in set(static)]
        self.inplace = [(i, args[i].data_ptr()) for i in dynamic if registry.read_in_place(args[i])]
        read_in_place = {i for i, _ in self.inplace}
        self.buffers = [(i, torch.empty_strided(
            args[i].shape, args[i].stride(), dtype=args[i].dtype, device=args[i].device
        )) for i in dynamic if i not in read_in_place]
        self.last: dict[int, Any] = {}
        self.versions: dict[int, int] = {}
        captured = list(args)
        for i, buf in self.buffers:
            captured[i] = buf
        self.graph = torch.cuda.CUDAGraph()
        stream.wait_stream(torch.cuda.current_stream())
        with own_cublas_workspaces():
            with torch.cuda.graph(self.graph, stream=stream):
                result = run(*captured)
        self.structure = type(result) if isinstance(result, (list, tuple)) else None
        outputs = list(result) if self.structure is not None else [result]
        del result
        inputs = {x.untyped_storage()._cdata for x in captured if isinstance(x, torch.Tensor)}
        del captured
        self.copied = copy_out_indices(outputs, caller_outputs, inputs)
        # what each replay hands out: a copy, a fresh alias, or the (non-tensor) value itself
        self.handouts = [
            (t, torch.Tensor.clone if i in self.copied else torch.Tensor.detach)
            if isinstance(t, torch.Tensor) else (t, None)
            for i, t in enumerate(outputs)
        ]
        owned = {}
        for i, t in enumerate(outputs):
            if isinstance(t, torch.Tensor) and i not in self.copied:
                key = t.untyped_storage()._cdata
                if key not in inputs:
                    owned[key] = 0
                    registry.pool_outputs[t.untyped_storage().data_ptr()] = self
        for key in owned:
            owned[key] = torch._C._storage_Use_Count(key)
        self.owned = list(owned.items())

    def inputs_match(self, args: Sequence[Any]) -> bool:
        """True when every input read in place is at the address captured."""
        for i, ptr in self.inplace:
            if args[i].data_ptr() != ptr:
                return False
        return True

    def statics_match(self, args: Sequence[Any]) -> bool:
        """True when every parameter/buffer input is where it was at capture. Addresses are
        compared, not objects: a parameter keeps its identity when its storage changes
        (``p.data = ...``, ``module.to(...)``, an optimizer that flattens parameters)."""
        if _DATA_PTRS_EQUAL is not None:  # the same check in C (CUDA builds of torch)
            return _DATA_PTRS_EQUAL(list(args), self._static_ptrs, self._static_indices)
        return all(args[i].data_ptr() == ptr for i, _, ptr in self.static)

    def outputs_free(self) -> bool:
        """True when nobody outside holds memory of this instance's outputs."""
        use_count = torch._C._storage_Use_Count
        for key, baseline in self.owned:
            if use_count(key) > baseline:
                return False
        return True

    def replay(self, args: Sequence[Any]) -> Any:
        """Copy changed inputs in, replay, hand out fresh aliases of the outputs (copies of
        the small ones the caller receives)."""
        last, versions = self.last, self.versions
        for i, buf in self.buffers:
            x = args[i]
            ref = last.get(i)  # a weak reference: holding inputs would keep them alive
            # Inference tensors (made under inference_mode) have no version counter, so an
            # in-place change cannot be seen: they are copied every time.
            if ref is None or ref() is not x or x.is_inference() or x._version != versions[i]:
                buf.copy_(x)
                last[i] = weakref.ref(x)
                versions[i] = -1 if x.is_inference() else x._version
        self.graph.replay()
        outs = [o if hand_out is None else hand_out(o) for o, hand_out in self.handouts]
        if self.structure is None:
            return outs[0]
        return tuple(outs) if self.structure is tuple else outs


def copy_out_indices(outputs: list, caller_outputs: Sequence[int], inputs: set) -> tuple[int, ...]:
    """Caller outputs small enough to hand out as copies: tensors of at most
    ``COPY_OUT_MAX_BYTES`` whose storage no other output and no input shares."""
    storages = collections.Counter(
        t.untyped_storage()._cdata for t in outputs if isinstance(t, torch.Tensor))
    return tuple(
        i for i in caller_outputs
        if i < len(outputs) and isinstance(outputs[i], torch.Tensor)
        and outputs[i].untyped_storage().nbytes() <= COPY_OUT_MAX_BYTES
        and storages[outputs[i].untyped_storage()._cdata] == 1
        and outputs[i].untyped_storage()._cdata not in inputs
    )


class CapturedRunner:
    """Warm-up, capture and replay of one compiled graph's schedule (see the module doc)."""

    def __init__(
        self,
        run: Callable,
        static: Sequence[int],
        device: torch.device,
        record: RuntimeReport,
        registry: CaptureRegistry,
        caller_outputs: Sequence[int] = (),
    ) -> None:
        self.run = run
        self.registry = registry
        self.static = tuple(static)
        self.caller_outputs = tuple(caller_outputs)
        self.stream = torch.cuda.Stream(device)
        self.record = record
        self.instances: list[_Instance] = []
        self.calls = 0
        self.disabled = ""
        self.uncaptured_calls = 0
        self._stream_capturing: Callable[[], bool] = (
            torch.cuda.is_current_stream_capturing if torch.cuda.is_available()
            else lambda: False)

    def __call__(self, *args: Any) -> Any:
        """Replay a free instance, or take the slow path (warm-up, capture, uncaptured)."""
        if _OuterCapture.depth or self._stream_capturing():
            return self.run(*args)  # part of a graph someone else captures
        for inst in self.instances:
            if inst.outputs_free() and inst.statics_match(args) and inst.inputs_match(args):
                return inst.replay(args)
        return self._slow(args)

    def _slow(self, args: Sequence[Any]) -> Any:
        self.calls += 1
        if self.disabled:
            return self._uncaptured(args)
        if self.calls == 1:
            return self._warm_up(args)
        if any(not inst.statics_match(args) for inst in self.instances):
            self.instances = [i for i in self.instances if i.statics_match(args)]
            self._note("a parameter/buffer input moved: its captured graphs were dropped")
        if len(self.instances) >= MAX_INSTANCES:
            self._note(
                f"none of the {MAX_INSTANCES} captured instances fits (outputs still "
                "referenced, or inputs read in place have moved): this call runs uncaptured"
            )
            return self._uncaptured(args)
        caller = torch.cuda.current_stream()
        try:
            inst = _Instance(self.run, args, self.static, self.stream, self.registry,
                             self.caller_outputs)
        except Exception as exc:  # capture is an optimization: run uncaptured from now on
            # (out of memory included: the uncaptured runner needs no graph pool). A capture
            # that failed to begin leaves its stream current (torch.cuda.graph's __exit__
            # does not run then): the caller's stream comes back first.
            torch.cuda.set_stream(caller)
            said = (str(exc).strip().splitlines() or [""])[0][:300]
            self.disabled = f"capture failed: {type(exc).__name__}: {said}"
            self.record.other_declines.append(Decline("cuda_graphs", self.disabled))
            self.record.runtime_info["capture"] = "declined: " + self.disabled
            return self._uncaptured(args)
        self.instances.append(inst)
        info = self.record.runtime_info
        info["cuda_graph_instances"] = len(self.instances)
        info["inputs_read_in_place"] = len(inst.inplace)
        info["inputs_copied"] = len(inst.buffers)
        info["outputs_copied_out"] = len(inst.copied)
        return inst.replay(args)

    def _warm_up(self, args: Sequence[Any]) -> Any:
        """The first call, uncaptured, on the capture stream: libraries set up their
        per-stream state (cuBLAS handles) here rather than inside the capture; the capture
        then makes its own cuBLAS workspaces (:func:`own_cublas_workspaces`)."""
        caller = torch.cuda.current_stream()
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            result = self._uncaptured(args)
        caller.wait_stream(self.stream)
        return result

    def _uncaptured(self, args: Sequence[Any]) -> Any:
        self.uncaptured_calls += 1
        self.record.runtime_info["uncaptured_calls"] = self.uncaptured_calls
        return self.run(*args)

    def _note(self, text: str) -> None:
        declines = self.record.other_declines
        if not any(d.reason == text for d in declines):
            declines.append(Decline("cuda_graphs", text))
