"""Index spaces of a pointwise kernel: which element of a node each lane computes.

A pointwise kernel walks the flat index ``xindex`` over the region's largest nodes (the
*top* space). A smaller (``sub``) node is computed in the space its consumer reads it in:

* a ``cat`` reads part ``k`` at the cat's index shifted back along the cat dim, in the
  lanes whose position along that dim falls in part ``k``;
* a broadcasting op reads a smaller operand at the index with the broadcast dims dropped
  (every lane holds an element; several lanes hold the same one).

A :class:`Space` names three variables: ``index`` (the element's row-major position in the
node), ``mask`` (lanes that hold an element) and ``unique`` (lanes that own one: a value
computed in a space is stored from these lanes only, once per element). Spaces compose: a
cat of a broadcast of a cat is a space derived three times. Each space is defined once, by
a few lines of index arithmetic, when first asked for.

Before::

    add = aten.add(mm, bias)              # [8, 64]
    cat = aten.cat([add, x], 1)           # [8, 96]

After (the kernel walks cat's 768 elements)::

    p1 = (xindex % 96)                    # position along dim 1
    i2 = (xindex // 96) * 64 + p1         # add's element; lanes with p1 < 64
    i4 = (xindex // 96) * 32 + (p1 - 64)  # x's element; lanes with p1 >= 64
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch.fx as fx

from . import ops
from .indexing import broadcast_strides, collapse, offset_expr
from .region import numel_of, shape_of


@dataclasses.dataclass(frozen=True)
class Space:
    """One index space (see the module docstring); ``''`` masks mean every lane."""

    key: tuple
    index: str
    mask: str
    unique: str


def both(a: str, b: str) -> str:
    """The conjunction of two masks (``''`` is all lanes)."""
    if not a or not b:
        return a or b
    return f"({a} & {b})"


def contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    """Row-major strides of ``shape``."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return list(reversed(strides))


class Spaces:
    """The spaces of one kernel; ``line`` writes a line of the kernel, ``fresh`` names a
    variable."""

    def __init__(self, line: Callable[[str], None], fresh: Callable[[str], str],
                 top_mask: str) -> None:
        self.line = line
        self.fresh = fresh
        self.top = Space(("top",), "xindex", top_mask, top_mask)
        self._made: dict[tuple, object] = {}

    def operand(self, space: Space, consumer: fx.Node, operand: fx.Node) -> list[Space]:
        """The spaces ``operand`` is read in when ``consumer`` is computed in ``space``."""
        if ops.packet(consumer) is ops.aten.cat:
            return [self.cat_part(space, consumer, k)
                    for k, part in enumerate(consumer.args[0]) if part is operand]
        if numel_of(operand) == numel_of(consumer):
            return [space]
        return [self.broadcast(space, shape_of(consumer), shape_of(operand))]

    def _define(self, stem: str, expr: str) -> str:
        var = self.fresh(stem)
        self.line(f"{var} = {expr}")
        return var

    def _index(self, space: Space, expr: str) -> str:
        if expr == "0":  # a size-1 value: every lane reads element 0
            expr = f"{space.index} * 0"
        return self._define("i", expr)

    def broadcast(self, space: Space, target: tuple[int, ...], shape: tuple[int, ...]) -> Space:
        """The space of a ``shape`` operand broadcast to ``target`` (computed in ``space``)."""
        key = (space.key, "broadcast", target, shape)
        if key not in self._made:
            reads = broadcast_strides(shape, contiguous_strides(shape), target)
            index = self._index(space, offset_expr(space.index, collapse(target, reads)))
            padded = (1,) * (len(target) - len(shape)) + tuple(shape)
            # the sum of the lane's positions along the broadcast dims: 0 in one lane per element
            repeat = [1 if have == 1 and size > 1 else 0 for have, size in zip(padded, target)]
            copies = offset_expr(space.index, collapse(target, repeat))
            unique = space.unique
            if copies != "0":
                unique = self._define("u", both(space.unique, f"({copies} == 0)"))
            self._made[key] = Space(key, index, space.mask, unique)
        return self._made[key]

    def position(self, space: Space, cat: fx.Node, dim: int) -> str:
        """The variable holding each lane's position along ``cat``'s dim ``dim``."""
        key = (space.key, "position", cat)
        if key not in self._made:
            shape = shape_of(cat)
            inner = math.prod(shape[dim + 1:])
            term = space.index if inner == 1 else f"({space.index} // {inner})"
            if math.prod(shape[:dim]) > 1:
                term = f"({term} % {shape[dim]})"
            self._made[key] = self._define("p", term)
        return self._made[key]

    def cat_part(self, space: Space, cat: fx.Node, k: int) -> Space:
        """The space of part ``k`` of ``cat`` (computed in ``space``)."""
        key = (space.key, "cat", cat, k)
        if key in self._made:
            return self._made[key]
        dim = ops.cat_dim(cat)
        shape = shape_of(cat)
        sizes = [shape_of(p)[dim] for p in cat.args[0]]
        start, size = sum(sizes[:k]), sizes[k]
        position = self.position(space, cat, dim)
        inner, outer = math.prod(shape[dim + 1:]), math.prod(shape[:dim])
        terms = []
        if outer > 1:
            terms.append(f"({space.index} // {inner * shape[dim]}) * {inner * size}")
        along = position if start == 0 else f"({position} - {start})"
        terms.append(along if inner == 1 else f"{along} * {inner}")
        if inner > 1:
            terms.append(f"({space.index} % {inner})")
        index = self._define("i", " + ".join(terms))
        bounds = []
        if start > 0:
            bounds.append(f"({position} >= {start})")
        if start + size < shape[dim]:
            bounds.append(f"({position} < {start + size})")
        mine = " & ".join(bounds)
        mask = self._define("m", both(space.mask, mine)) if mine else space.mask
        unique = mask if space.unique == space.mask else (
            self._define("u", both(space.unique, mine)) if mine else space.unique)
        made = Space(key, index, mask, unique)
        self._made[key] = made
        return made


def plan(nodes: list[fx.Node], inside: dict, numel: int, spaces: Spaces) -> dict[fx.Node, list[Space]]:
    """For each region node (graph order ``nodes``, membership ``inside``), the spaces it is
    computed in: top for the ``numel``-element nodes, derived spaces for the others."""
    where: dict[fx.Node, list[Space]] = {
        n: ([spaces.top] if numel_of(n) == numel else []) for n in nodes
    }
    for node in reversed(nodes):
        for space in where[node]:
            for operand in dict.fromkeys(node.all_input_nodes):
                if operand not in inside:
                    continue
                for derived in spaces.operand(space, node, operand):
                    if derived not in where[operand]:
                        where[operand].append(derived)
    missing: Optional[fx.Node] = next((n for n in nodes if not where[n]), None)
    if missing is not None:
        raise AssertionError(f"{missing.name} has no index space in its kernel")
    return where
