"""What a node is, in codegen's terms: its ATen overload packet, whether it is a view that
keeps every element in place, and Python scalars as Triton source. The lowest codegen module:
:mod:`~kitsune_backend.codegen.ops` and :mod:`~kitsune_backend.codegen.index_sources` both
build on it."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.fx as fx

aten = torch.ops.aten


def literal(value: Any) -> str:
    """A Python scalar as Triton source (infinities and NaN included)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value):
            return 'float("nan")'
        if math.isinf(value):
            return 'float("inf")' if value > 0 else '-float("inf")'
        return repr(value)
    if isinstance(value, int):
        return repr(value)
    raise TypeError(f"no Triton literal for {value!r}")


IDENTITY_VIEWS = {
    aten.view, aten.reshape, aten._unsafe_view, aten.squeeze, aten.unsqueeze,
    aten.alias, aten.detach,
}
"""Views that keep the logical (row-major) element order: inside a region they cost nothing."""


def is_identity_view(node: fx.Node) -> bool:
    """A view that keeps every element where it is: the :data:`IDENTITY_VIEWS`, and an
    ``expand`` or ``slice`` that leaves its input's shape as it is."""
    op = packet(node)
    if op in IDENTITY_VIEWS:
        return True
    if op in (aten.expand, aten.slice) and isinstance(node.args[0], fx.Node):
        source = node.args[0].meta.get("val")
        value = node.meta.get("val")
        return (isinstance(source, torch.Tensor) and isinstance(value, torch.Tensor)
                and tuple(source.shape) == tuple(value.shape))
    return False


def packet(node: fx.Node) -> Optional[Any]:
    """The overload packet (``aten.add``) of an ATen/prims call, or ``None``."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return None
    return target.overloadpacket
