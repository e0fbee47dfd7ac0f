"""ATen library calls write their outputs into the planned arena through their out= overloads.

A node ``mm = aten.mm.default(a, b)`` whose output is a planned intermediate becomes a call
of ``aten.mm.out(a, b, out=<arena view>)``: the view has exactly the shape, strides and dtype
of the node's recorded value (``meta["val"]``), at the offset the memory plan gave it.

Only ops whose out= overload writes the result straight into ``out`` are placed. An out=
overload that computes into a temporary and copies adds a copy kernel, which costs more
than the allocation it saves; so an op is placed only when all of these hold:

1. it is on :data:`DIRECT_OUT`, the ops whose CUDA and CPU out= kernels were read and write
   into ``out`` when ``out`` has the layout the functional op would give it, or it is
   tagged ``pointwise`` (its out= kernel is a TensorIterator loop writing ``out``; the
   functional op allocates the same output and runs the same loop);
2. its out= overload (found from the schemas: same arguments plus keyword-only written
   ``Tensor(a!)`` arguments) has its own kernel for the device's dispatch key. Out=
   overloads that PyTorch generates from the functional op (``convolution.out``,
   ``embedding.out``, ``clone.out``...) are registered only as ``CompositeExplicitAutograd``
   and are exactly "functional op plus copy";
3. called on meta tensors with the planned views, the out= overload returns the views
   unchanged (no resize, no restride) and the functional op's layout equals the recorded
   one. Structured kernels copy through a proxy when ``out``'s strides differ from the
   ones they compute; equal strides rule that out;
4. no output's bytes overlap a buffer the node reads (a valid plan never does that; a bad
   one would give wrong results, so it is checked).

Two ops whose out= overload is generated but which are one direct write anyway are run
through stand-ins (:data:`WRITTEN_INTO`): ``clone`` as ``copy_`` into the view, ``embedding``
as ``index_select.out`` into a 2-D view of it (what ATen's embedding itself runs).

On CUDA, arena offsets are multiples of 256 bytes (:data:`kitsune_backend.passes.arena_planning.ALIGNMENT`)
and the arena comes from the caching allocator, so every view is aligned the way cuBLAS
wants; GEMM outputs are contiguous, the layout cuBLAS writes in place.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

aten = torch.ops.aten

# Ops whose out= kernel writes into ``out`` when ``out`` has the functional op's layout.
# Not here: kernels that write through raw pointers in a layout chosen from the run-time
# input (max_pool2d_with_indices(_backward) use the input's suggested memory format): an out=
# laid out from the compile-time value would be written wrongly if the two ever differed.
DIRECT_OUT = frozenset(
    {
        # cuBLAS writes C in place when it is contiguous or transposed-contiguous
        # (addmm_out_cuda_impl / baddbmm_out_cuda_impl copy only for other layouts).
        "mm", "bmm", "addmm", "baddbmm",
        # cat_out writes each input into its slice of ``out``.
        "cat",
        # Structured reductions and softmaxes: TensorIterator or the kernel writes ``out``.
        "sum", "mean", "amax", "amin", "_softmax", "_log_softmax",
        # index_select_out_cuda / _cpu gather rows straight into ``out``.
        "index_select",
    }
)


def _clone_into(
    self: torch.Tensor, *, memory_format: Any = None, out: torch.Tensor
) -> torch.Tensor:
    """``clone`` written into ``out``: one copy kernel, as the functional op runs (the
    layout ``memory_format`` picks is the recorded value's, which ``out`` has)."""
    return out.copy_(self)


def _embedding_into(
    weight: torch.Tensor,
    indices: torch.Tensor,
    padding_idx: int = -1,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    *,
    out: torch.Tensor,
) -> torch.Tensor:
    """``embedding`` written into ``out``: ATen's embedding is ``index_select`` of the
    flattened indices, viewed to shape, so its out= is ``index_select.out`` (padding_idx and
    the other flags only matter for the backward)."""
    aten.index_select.out(weight, 0, indices.reshape(-1), out=out.view(-1, weight.shape[-1]))
    return out


# Ops whose out= overload is functional-plus-copy but which are one direct write into a
# view of the right layout: the callable to run instead, taking the op's arguments and ``out``.
WRITTEN_INTO = {
    aten.clone.default: _clone_into,
    aten.embedding.default: _embedding_into,
}


def op_name(op: torch._ops.OpOverload) -> str:
    """``aten.mm`` for ``aten.mm.default``: how reasons name an op."""
    return f"{op.namespace}.{op.overloadpacket.__name__}"


def out_variant(
    op: torch._ops.OpOverload,
) -> tuple[Optional[torch._ops.OpOverload], tuple[str, ...]]:
    """The out= overload of ``op`` (its arguments, then keyword-only written tensors, one
    per return) and the names of those out arguments; ``(None, ())`` when there is none."""
    schema = op._schema
    want = [(a.name, str(a.type), a.kwarg_only) for a in schema.arguments]
    packet = op.overloadpacket
    for name in packet.overloads():
        candidate = getattr(packet, name)
        args = candidate._schema.arguments
        written = [a.alias_info is not None and a.alias_info.is_write for a in args]
        outs = [a for a, w in zip(args, written) if w]
        rest = [(a.name, str(a.type), a.kwarg_only) for a, w in zip(args, written) if not w]
        if (
            outs
            and all(a.kwarg_only for a in outs)
            and len(outs) == len(schema.returns)
            and rest == want
        ):
            return candidate, tuple(a.name for a in outs)
    return None, ()


def has_device_kernel(op: torch._ops.OpOverload, device: torch.device) -> bool:
    """True when ``op`` has its own kernel for the device (not only a generated composite)."""
    key = "CUDA" if device.type == "cuda" else "CPU"
    return torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), key)


def _on_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(
            value.shape, value.stride(), dtype=value.dtype, device="meta"
        )
    return value


def _layout(t: torch.Tensor) -> tuple:
    return tuple(t.shape), tuple(t.stride()), t.dtype


def meta_mismatch(
    node: fx.Node,
    out_op: Callable,
    out_names: Sequence[str],
    specs: Sequence[torch.Tensor],
) -> str:
    """Why the out= call with views laid out like ``specs`` would not simply write them
    ("" when it would), checked by running both overloads on meta tensors."""
    args, kwargs = fx.node.map_arg(
        (node.args, node.kwargs), lambda n: _on_meta(n.meta.get("val"))
    )
    outs = {name: _on_meta(spec) for name, spec in zip(out_names, specs)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resize warns; the layout check below sees it
            functional = node.target(*args, **kwargs)
            returned = out_op(*args, **kwargs, **outs)
    except Exception as exc:
        return f"out= call fails on meta tensors ({type(exc).__name__})"
    functional = [functional] if isinstance(functional, torch.Tensor) else list(functional)
    returned = [returned] if isinstance(returned, torch.Tensor) else list(returned)
    for spec, made, out, back in zip(specs, functional, outs.values(), returned):
        if _layout(made) != _layout(spec):
            return "the op's layout differs from the recorded value"
        if _layout(out) != _layout(spec) or back is not out:
            return "out= would resize or replace the planned view"
    return ""


class AtenInArena:
    """An ATen op called through its out= overload (or :data:`WRITTEN_INTO` stand-in) with
    arena views (made once per buffer the arena takes, reused)."""

    def __init__(
        self,
        node_name: str,
        out_op: Callable,
        out_names: Sequence[str],
        arena: Any,
        offsets: Sequence[int],
        specs: Sequence[torch.Tensor],
    ) -> None:
        self.out_op = out_op
        self.arena = arena
        self.placements = [
            (name, offset, tuple(s.shape), tuple(s.stride()), s.dtype)
            for name, offset, s in zip(out_names, offsets, specs)
        ]
        self.__name__ = self.__qualname__ = f"{node_name}_out_in_arena"
        self.__module__ = "kitsune_backend.kernels"

    def _make_views(self) -> dict[str, torch.Tensor]:
        return {name: self.arena.view(offset, shape, stride, dtype)
                for name, offset, shape, stride, dtype in self.placements}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the op into its arena views."""
        return self.out_op(*args, **kwargs, **self.arena.views(self, self._make_views))


def direct_out(
    op: torch._ops.OpOverload, device: torch.device
) -> tuple[Optional[Callable], tuple[str, ...], str]:
    """The out= overload to place ``op``'s outputs with and its out argument names, or
    ``(None, (), reason)`` (rules 1 and 2 of the module docstring; or the
    :data:`WRITTEN_INTO` stand-in)."""
    if op in WRITTEN_INTO:
        return WRITTEN_INTO[op], ("out",), ""
    if op.namespace != "aten":
        return None, (), "not an ATen op"
    out_op, names = out_variant(op)
    if out_op is None:
        return None, (), "no out= overload"
    if not has_device_kernel(out_op, device):
        return None, (), "no direct out= variant (the out= overload is functional op + copy)"
    if op.overloadpacket.__name__ not in DIRECT_OUT and torch.Tag.pointwise not in op.tags:
        return None, (), "out= not known to write directly (not pointwise, not in DIRECT_OUT)"
    return out_op, names, ""
