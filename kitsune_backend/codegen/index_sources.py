"""Constant and index sources: ops whose values need no memory read.

``scalar_tensor``, ``full``, ``full_like``, ``new_ones``/``new_zeros``/``new_full``,
``ones``/``zeros`` (and ``*_like``) fill a tensor with one value; ``arange`` is its own
index. Inside a region they are never loaded: a kernel computes them where they are used
(a literal of the right dtype, or ``start + step * index``), so they launch nothing.
They belong to no region; every region that reads one inlines it
(see :func:`kitsune_backend.passes.grouping.find_regions`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import unset_fake_temporarily

from ..graph_utils import is_view
from .node_kinds import is_identity_view, literal
from .symbolic import DYNAMIC_SHAPES

aten = torch.ops.aten

_FILL = {
    aten.scalar_tensor: lambda n: n.args[0],
    aten.full: lambda n: n.args[1],
    aten.full_like: lambda n: n.args[1],
    aten.new_full: lambda n: n.args[2],
    aten.new_ones: lambda n: 1,
    aten.ones: lambda n: 1,
    aten.ones_like: lambda n: 1,
    aten.new_zeros: lambda n: 0,
    aten.zeros: lambda n: 0,
    aten.zeros_like: lambda n: 0,
}
"""Fill ops: overload packet -> the fill value of a node."""

SOURCES = {*_FILL, aten.arange}
"""Ops a kernel computes in place of a load."""

_EXACT_FLOAT_ARANGE = {torch.float32: 2**24, torch.float64: 2**53}
"""Largest |value| a float ``arange`` may reach and still be exact in that dtype."""


def is_source(node: fx.Node) -> bool:
    """True for a call of a constant or index source op (whether or not it can be inlined)."""
    target = node.target
    return (node.op == "call_function" and isinstance(target, torch._ops.OpOverload)
            and target.overloadpacket in SOURCES)


def inlinable(node: fx.Node) -> bool:
    """True for a source op a kernel can compute in place of reading it, a reshape of one,
    or any view of a fill (every element of it holds the same value)."""
    root, reordered = _root(node)
    if root is None or not is_source(root) or problem(root) is not None:
        return False
    return not reordered or root.target.overloadpacket is not aten.arange


def _root(node: fx.Node) -> tuple[Optional[fx.Node], bool]:
    """The node a view chain starting at ``node`` views, and whether a view that moves
    elements (not a reshape) lies on the way."""

    reordered = False
    while node.op == "call_function" and (is_identity_view(node) or is_view(node)):
        if not node.args or not isinstance(node.args[0], fx.Node):
            return None, reordered
        reordered = reordered or not is_identity_view(node)
        node = node.args[0]
    return node, reordered


def problem(node: fx.Node) -> Optional[str]:
    """Why source ``node`` cannot be computed inside a kernel, or ``None`` when it can."""
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        return "result is not a single tensor"
    if node.kwargs.get("device") not in (None, value.device):
        return "made on another device"
    if any(isinstance(s, torch.SymInt) for s in value.shape):
        return f"{DYNAMIC_SHAPES}: a source of symbolic size is made by its ATen op"
    if node.target.overloadpacket is aten.arange:
        start, step = _arange_args(node)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, step)):
            return "arange with non-integer start or step (its float rounding is eager's)"
        if value.dtype.is_floating_point:
            limit = _EXACT_FLOAT_ARANGE.get(value.dtype)
            if limit is None:
                return f"arange of {value.dtype} (kernels compute integer, fp32 and fp64 ones)"
            last = start + step * max(value.numel() - 1, 0)
            if max(abs(start), abs(last)) >= limit:
                return f"arange of {value.dtype} past the exactly representable integers"
        return None
    fill = _FILL[node.target.overloadpacket](node)
    if not isinstance(fill, (bool, int, float)):
        return "fill value is not a Python number"
    return None


def fill_value(node: fx.Node) -> Any:
    """The fill value of a fill op, converted to its dtype as eager converts it."""
    dtype = node.meta["val"].dtype
    with unset_fake_temporarily():  # the compiler may run under a fake-tensor mode
        return torch.full((), _FILL[node.target.overloadpacket](node), dtype=dtype).item()


def _arange_args(node: fx.Node) -> tuple[Any, Any]:
    """(start, step) of an ``arange`` call in any of its overloads."""
    args = list(node.args)
    if len(args) == 1:
        return node.kwargs.get("start", 0), node.kwargs.get("step", 1)
    start = args[0]
    step = args[2] if len(args) > 2 else node.kwargs.get("step", 1)
    return start, step


def expression(node: fx.Node, offset: str, tl_dtype: str) -> str:
    """Triton source for source ``node``'s value at element ``offset`` (an index
    expression over the node's own contiguous layout, a block of the kernel's lanes), as
    ``tl_dtype``: a block of the same shape."""
    node, _ = _root(node)  # a reshape keeps every element's flat position; a fill is one value
    if node.target.overloadpacket is aten.arange:
        start, step = _arange_args(node)
        value = f"({offset}).to(tl.int64)"
        value = value if step == 1 else f"{value} * {step}"
        value = value if start == 0 else f"({value} + {start})"
        return value if tl_dtype == "tl.int64" else f"{value}.to({tl_dtype})"

    return f"tl.full(({offset}).shape, {literal(fill_value(node))}, {tl_dtype})"


def value_range(node: Any) -> Optional[tuple[int, int]]:
    """The smallest and largest integer ``node`` can hold, known at compile time, or
    ``None`` when its values come from data (or from ops this does not follow).

    Followed: integer ``arange``s and fills, views of them (a view moves values, it makes
    none), integer casts, ``neg``, and ``add``/``sub``/``rsub``/``mul`` of such values and
    Python ints.
    Gathers use it: an index a kernel cannot prove in range stays an ATen ``index``, which
    raises on a bad index as eager does (a masked load would silently read nothing)."""

    if isinstance(node, bool) or not isinstance(node, (int, fx.Node)):
        return None
    if isinstance(node, int):
        return node, node
    value = node.meta.get("val")
    if node.op != "call_function" or not isinstance(value, torch.Tensor) or (
            value.dtype.is_floating_point or value.dtype.is_complex):
        return None
    if is_view(node) and node.args and isinstance(node.args[0], fx.Node):
        return value_range(node.args[0])
    packet = getattr(node.target, "overloadpacket", None)
    if is_source(node) and problem(node) is None:
        if packet is aten.arange:
            start, step = _arange_args(node)
            last = start + step * max(value.numel() - 1, 0)
            return min(start, last), max(start, last)
        fill = fill_value(node)
        return (int(fill), int(fill)) if isinstance(fill, (bool, int)) else None
    if packet is aten._to_copy or (packet is not None and packet.__name__ == "convert_element_type"):
        return value_range(node.args[0])
    if packet is aten.neg:
        a = value_range(node.args[0])
        return None if a is None else (-a[1], -a[0])
    if packet in (aten.add, aten.sub, aten.rsub, aten.mul) and len(node.args) == 2 and (
            not node.kwargs):
        a, b = value_range(node.args[0]), value_range(node.args[1])
        if a is None or b is None:
            return None
        if packet is aten.rsub:  # rsub(a, b) = b - a
            a, b, packet = b, a, aten.sub
        if packet is aten.add:
            return a[0] + b[0], a[1] + b[1]
        if packet is aten.sub:
            return a[0] - b[1], a[1] - b[0]
        products = [x * y for x in a for y in b]
        return min(products), max(products)
    return None


def aten_equivalent(graph: fx.Graph, node: fx.Node) -> fx.Node:
    """A node of ``graph`` computing ``node``'s value without tensor arguments (for the
    ATen fallback of a kernel that inlined ``node``)."""
    value = node.meta["val"]
    options = {"dtype": value.dtype, "device": value.device}
    root, _ = _root(node)
    if root.target.overloadpacket is aten.arange:
        start, step = _arange_args(root)
        end = start + step * value.numel()
        made = graph.call_function(aten.arange.start_step, (start, end, step), options)
        made = graph.call_function(aten.view.default, (made, list(value.shape)))
    else:
        made = graph.call_function(aten.full.default, (list(value.shape), fill_value(root)),
                                   options)
    made.meta = dict(node.meta)
    return made
