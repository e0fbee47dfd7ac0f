"""Which outputs of a fused region are stored straight into the input they replace.

A graph that updates one of its inputs (an optimizer's parameters and moments, a
batch-norm's running statistics) ends, after functionalization, with
``copy_(input, new_value)``. Left as it is, the kernel writes ``new_value`` to fresh memory
and a copy kernel reads it back and writes the input: two extra passes over the data. When
it is safe, the region's kernel stores ``new_value`` into the input's memory itself and the
``copy_`` goes away::

    Before:  fused = kernel(p, g); copy_ = aten.copy_(p, fused)
    After:   kernel(p, g)          # stores into p

Safe means no one can see the input change early or read it at another element:

* the value's only reader outside the region is that ``copy_``, whose result nobody reads;
* the input is a graph input read by nothing else than the region and the ``copy_``;
* the region is elementwise (pointwise ops only: no reduction, cat, gather or view), and the
  input and the value have the same shape (the region's), dtype and strides, so each lane
  loads the input's element and stores the new value at that same element.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..codegen import ops
from ..codegen.region import Region

aten = torch.ops.aten


def stores_into(region: Region, inputs: list[fx.Node],
                outputs: list[fx.Node]) -> tuple[dict[int, int], list[fx.Node]]:
    """``({output position: input position}, the copy_ nodes those make unneeded)``."""
    if not _elementwise(region):
        return {}, []
    found: dict[int, int] = {}
    copies: list[fx.Node] = []
    for position, value in enumerate(outputs):
        outside = [u for u in value.users if u not in region.context]
        if len(outside) != 1 or not _copies_into_input(outside[0], value):
            continue
        target = outside[0].args[0]
        if target not in inputs or not _same_layout(target, value, region):
            continue
        readers = set(target.users) - {outside[0]}
        if not readers <= set(region.nodes):
            continue
        found[position] = inputs.index(target)
        copies.append(outside[0])
    return found, copies


def _elementwise(region: Region) -> bool:
    return region.kind == "pointwise" and all(
        ops.classify(n)[0] == "pointwise" and ops.packet(n) not in (aten.cat, aten.index)
        for n in region.nodes)


def _copies_into_input(node: fx.Node, value: fx.Node) -> bool:
    return (node.target is aten.copy_.default and len(node.args) == 2
            and node.args[1] is value and not node.kwargs and not node.users
            and isinstance(node.args[0], fx.Node) and node.args[0].op == "placeholder")


def _same_layout(target: fx.Node, value: fx.Node, region: Region) -> bool:
    a, b = target.meta.get("val"), value.meta.get("val")
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or any(
            isinstance(d, torch.SymInt) for t in (a, b) for d in (*t.shape, *t.stride())):
        return False  # symbolic sizes: not decided here (comparing them would guard)
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype
            and a.numel() == region.numel)
