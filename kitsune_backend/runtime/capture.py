"""Whole-graph CUDA graph capture: the multi-stream schedule captured once, replayed after.

Calls go like this:

1. the first call runs the schedule uncaptured (warm-up: lazy library init, autotuning);
2. the next call captures it into a :class:`torch.cuda.CUDAGraph` (one *instance*: its own
   memory pool, static input buffers, static outputs) and replays it;
3. later calls replay an instance whose outputs nobody holds any more.

Shapes: a graph of symbolic sizes keeps its instances per input-shape *signature* (the
shapes and strides of its inputs that are not parameters or buffers, and the values of its
int inputs, where the sizes arrive): each signature has its own warm-up and captures, and
at most ``capture_shapes`` signatures keep theirs, the least recently used dropped first
(:mod:`~kitsune_backend.runtime.shape_cache`). Where the batch_split stage found that the
graph keeps the rows of its batch apart, each call first moves to its batch's bucket (the
next power of two, ``batch_buckets``): replays copy the real rows into the front of the
padded input buffers and zero the rest, and the outputs are sliced back to the real rows
(:mod:`~kitsune_backend.runtime.batch_padding`), so a serving loop needs one signature per
bucket. ``runtime_info`` counts the captures (``cuda_graph_captures``), the instances held,
the signatures held and dropped, and the padded calls.

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
captured (up to ``MAX_INSTANCES`` per signature), and past that the call runs uncaptured.
This covers the forward outputs that autograd saves for backward: they stay referenced
until backward ran. Small outputs the caller receives (at most ``COPY_OUT_MAX_BYTES``: a loss, logits) are
handed out as copies instead, so a caller who keeps the last loss while running the next
step does not need a second instance (with a second copy of every activation).

RNG: PyTorch's CUDA generator registers with the graph, so each replay draws fresh numbers.

Inside a CUDA graph that someone else is capturing (a user's ``torch.cuda.graph``, or
:func:`kitsune_backend.compile_step` capturing a whole training step), and while
:func:`~kitsune_backend.runtime.outer.outer_capture` says such a capture is being prepared, the schedule runs uncaptured:
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
from .batch_padding import BatchPadder, copy_rows
from .capture_registry import CaptureRegistry
from .outer import outer_capture_open
from .shape_cache import ShapeCache, signature

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


_DATA_PTRS_EQUAL = getattr(torch._C, "_tensors_data_ptrs_at_indices_equal", None)
"""``f(tensors, data_ptrs, indices)``: whether ``tensors[i].data_ptr() == data_ptrs[i]`` for
every ``i`` in ``indices`` (what Inductor's CUDA graph trees check their inputs with)."""

class _Instance:
    """One captured graph with its static input buffers and static outputs."""

    def __init__(self, run: Callable, args: Sequence[Any], static: Sequence[int], stream: Any,
                 registry: CaptureRegistry, caller_outputs: Sequence[int] = (),
                 pads: Optional[dict[int, int]] = None):
        self.static = [(i, args[i], args[i].data_ptr()) for i in static if i < len(args)]
        for _, param, _ in self.static:
            registry.static_storages[param.untyped_storage().data_ptr()] = param
        self._static_indices = [i for i, _, _ in self.static]
        self._static_ptrs: list[Optional[int]] = [None] * len(args)
        for i, _, ptr in self.static:
            self._static_ptrs[i] = ptr
        dynamic = [i for i in range(len(args))
                   if i not in set(static) and isinstance(args[i], torch.Tensor)]
        self.inplace = [(i, args[i].data_ptr()) for i in dynamic if registry.read_in_place(args[i])]
        read_in_place = {i for i, _ in self.inplace}
        self.buffers = [(i, torch.empty_strided(
            args[i].shape, args[i].stride(), dtype=args[i].dtype, device=args[i].device
        )) for i in dynamic if i not in read_in_place]
        self.pads = pads or {}  # input -> the dim whose rows it fills (the rest are zeroed)
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
        """Copy changed inputs in (the first rows of a padded one), replay, hand out fresh
        aliases of the outputs (copies of the small ones the caller receives)."""
        last, versions, pads = self.last, self.versions, self.pads
        for i, buf in self.buffers:
            x = args[i]
            ref = last.get(i)  # a weak reference: holding inputs would keep them alive
            # Inference tensors (made under inference_mode) have no version counter, so an
            # in-place change cannot be seen: they are copied every time.
            if ref is None or ref() is not x or x.is_inference() or x._version != versions[i]:
                if i in pads:
                    copy_rows(buf, x, pads[i])
                else:
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


class _Shape:
    """The captures of one input-shape signature: its calls so far, its instances."""

    def __init__(self) -> None:
        self.calls = 0
        self.instances: list[_Instance] = []


def _free_instance(shape: Optional[_Shape], args: Sequence[Any]) -> Optional[_Instance]:
    """An instance of ``shape`` that ``args`` may replay: nobody holds its outputs, and its
    parameters and in-place inputs are where they were captured."""
    for inst in shape.instances if shape is not None else ():
        if inst.outputs_free() and inst.statics_match(args) and inst.inputs_match(args):
            return inst
    return None


class CapturedRunner:
    """Warm-up, capture and replay of one compiled graph's schedule (see the module doc).

    ``keyed``: the inputs whose shape or value may change from call to call (a graph of
    symbolic sizes: every input but parameters and buffers; none: one signature), whose
    signatures keep captures of their own, at most ``max_shapes`` of them
    (:class:`~kitsune_backend.runtime.shape_cache.ShapeCache`); ``padder``: pads each call's
    batch to its bucket first (:mod:`~kitsune_backend.runtime.batch_padding`);
    ``before_capture``: called just before each capture, outside it (the arena takes its
    buffer there: :meth:`~kitsune_backend.runtime.arena.Arena.refresh`)."""

    def __init__(
        self,
        run: Callable,
        static: Sequence[int],
        device: torch.device,
        record: RuntimeReport,
        registry: CaptureRegistry,
        caller_outputs: Sequence[int] = (),
        keyed: Sequence[int] = (),
        max_shapes: int = 1,
        padder: Optional[BatchPadder] = None,
        before_capture: Optional[Callable[[], None]] = None,
    ) -> None:
        self.run = run
        self.before_capture = before_capture
        self.registry = registry
        self.static = tuple(static)
        self.caller_outputs = tuple(caller_outputs)
        self.keyed = tuple(keyed)
        self.padder = padder
        self.stream = torch.cuda.Stream(device)
        self.record = record
        self.shapes: ShapeCache[_Shape] = ShapeCache(max_shapes)
        self.captures = 0
        self.disabled = ""
        self.uncaptured_calls = 0
        self.padded_calls = 0
        self._stream_capturing: Callable[[], bool] = (
            torch.cuda.is_current_stream_capturing if torch.cuda.is_available()
            else lambda: False)

    def __call__(self, *args: Any) -> Any:
        """Replay a free instance of the call's signature, or take the slow path (warm-up,
        capture, uncaptured); a padded graph's call goes through :meth:`_padded`. Inside a
        graph someone else captures, the schedule runs as part of it."""
        if outer_capture_open() or self._stream_capturing():
            return self.run(*args)
        if self.padder is not None:
            return self._padded(args)
        shape = self.shapes.get(signature(args, self.keyed) if self.keyed else None)
        inst = _free_instance(shape, args)
        return inst.replay(args) if inst is not None else self._slow(args, shape, None)

    def _padded(self, args: Sequence[Any]) -> Any:
        """Run the call at its batch's bucket: replay (copying the real rows into the padded
        buffers) or take the slow path with padded inputs; slice the outputs back."""
        n, padded = self.padder.batch(args)
        if n != padded:
            self.padded_calls += 1
            self.record.runtime_info["padded_calls"] = self.padded_calls
        args = self.padder.with_size(args, padded)
        shape = self.shapes.get(self.padder.key(args, self.keyed, n, padded))
        inst = _free_instance(shape, args)
        result = inst.replay(args) if inst is not None else self._slow(args, shape, (n, padded))
        return self.padder.unpad(result, n, padded)

    def _slow(self, args: Sequence[Any], shape: Optional[_Shape],
              padding: Optional[tuple[int, int]]) -> Any:
        if shape is None:
            shape = self._new_shape(args, padding)
        shape.calls += 1
        run_args = self.padder.pad(args, *padding) if padding else args
        if self.disabled:
            return self._uncaptured(run_args)
        if shape.calls == 1:
            return self._warm_up(run_args)
        if any(not inst.statics_match(args) for inst in shape.instances):
            shape.instances = [i for i in shape.instances if i.statics_match(args)]
            self._note("a parameter/buffer input moved: its captured graphs were dropped")
        if len(shape.instances) >= MAX_INSTANCES:
            self._note(
                f"none of the {MAX_INSTANCES} captured instances fits (outputs still "
                "referenced, or inputs read in place have moved): this call runs uncaptured"
            )
            return self._uncaptured(run_args)
        inst = self._capture(run_args, self.padder.inputs if padding else None)
        if inst is None:
            return self._uncaptured(run_args)
        shape.instances.append(inst)
        self.captures += 1
        self._count()
        info = self.record.runtime_info
        info["inputs_read_in_place"] = len(inst.inplace)
        info["inputs_copied"] = len(inst.buffers)
        info["outputs_copied_out"] = len(inst.copied)
        return inst.replay(args)

    def _new_shape(self, args: Sequence[Any], padding: Optional[tuple[int, int]]) -> _Shape:
        """Start the signature of ``args``; past ``max_shapes``, the least recently used
        one's captures are dropped (their memory goes back once no output is held)."""
        if not self.keyed:
            key = None
        elif padding:
            key = self.padder.key(args, self.keyed, *padding)
        else:
            key = signature(args, self.keyed)
        shape = _Shape()
        for dropped in self.shapes.add(key, shape):
            dropped.instances.clear()
        self._count()
        return shape

    def _count(self) -> None:
        info = self.record.runtime_info
        info["cuda_graph_instances"] = sum(len(s.instances) for s in self.shapes)
        info["cuda_graph_captures"] = self.captures
        info["shape_signatures"] = len(self.shapes)
        info["shape_signatures_dropped"] = self.shapes.evicted

    def _capture(self, args: Sequence[Any], pads: Optional[dict[int, int]]
                 ) -> Optional[_Instance]:
        """A new instance captured from ``args``, or None when the capture failed (then
        every later call runs uncaptured, and a decline says why)."""
        caller = torch.cuda.current_stream()
        if self.before_capture is not None:
            self.before_capture()
        try:
            return _Instance(self.run, args, self.static, self.stream, self.registry,
                             self.caller_outputs, pads)
        except Exception as exc:  # capture is an optimization: run uncaptured from now on
            # (out of memory included: the uncaptured runner needs no graph pool). A capture
            # that failed to begin leaves its stream current (torch.cuda.graph's __exit__
            # does not run then): the caller's stream comes back first.
            torch.cuda.set_stream(caller)
            said = (str(exc).strip().splitlines() or [""])[0][:300]
            self.disabled = f"capture failed: {type(exc).__name__}: {said}"
            self.record.other_declines.append(Decline("cuda_graphs", self.disabled))
            self.record.runtime_info["capture"] = "declined: " + self.disabled
            return None

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
