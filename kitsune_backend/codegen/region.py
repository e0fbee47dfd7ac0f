"""A fusion region: which nodes one generated kernel computes, and the shape rule it keeps.

A region has one of two geometries:

* ``pointwise``: the kernel walks one flat (row-major) index over ``numel`` elements. A
  ``full`` node has ``numel`` elements, its value at that index is one element. A ``sub``
  node has fewer: it feeds a ``cat`` or a broadcasting op of the region, and is computed
  at the index that consumer reads (:mod:`kitsune_backend.codegen.spaces`). A pointwise
  region grows to a larger node when every node without a reader in the region feeds it.
* ``reduction``: a reduced shape ``shape`` and reduced dims ``reduced``. The kernel walks
  rows (positions over the kept dims) and, within a row, columns (positions over the
  reduced dims). Each node is either ``full`` (one value per row and column: the shape of
  ``shape``, or, where the region reduces its trailing dims, any shape holding the same
  rows and columns in the same order, :func:`row_split`) or ``row`` (one value per row: the
  reductions and what is computed from them).

:meth:`Region.why_not` answers whether a node can join while keeping that rule; the answer
is the reason string recorded when it cannot.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.fx as fx

from . import ops
from .symbolic import Size, Undecided, size, why_not_arguments


def shape_of(node: fx.Node) -> tuple[int | Size, ...]:
    """The shape of a node's (fake) tensor value: ints, and a :class:`Size` for each
    symbolic size."""
    return tuple(size(s) for s in node.meta["val"].shape)


def numel_of(node: fx.Node) -> int | Size:
    """The element count of a node's (fake) tensor value."""
    return size(node.meta["val"].numel())


def strip_leading_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without its leading size-1 dims (they do not change the element order)."""
    start = 0
    while start < len(shape) and shape[start] == 1:
        start += 1
    return shape[start:]


def _no_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s for s in shape if s != 1)


def row_split(shape: tuple, region_shape: tuple, reduced: tuple) -> Optional[tuple[int, ...]]:
    """The dims of ``shape`` a row reduction over ``region_shape``'s ``reduced`` dims
    reduces, when ``shape`` holds the region's rows and columns in the same order under
    another shape (``[12, 32]`` for ``[2, 6, 32]`` reduced over its last dim): the region
    reduces its trailing dims, and ``shape`` splits at a dim into leading dims holding the
    rows and trailing dims holding the columns. ``None`` otherwise, and for symbolic sizes."""
    n = len(region_shape)
    if not reduced or tuple(reduced) != tuple(range(n - len(reduced), n)):
        return None
    if not all(isinstance(s, int) for s in (*shape, *region_shape)):
        return None
    columns = math.prod(region_shape[d] for d in reduced)
    if columns == 0 or math.prod(shape) != math.prod(region_shape):
        return None
    for split in range(len(shape) + 1):  # equal totals: the leading dims hold the rows
        if math.prod(shape[split:]) == columns:
            return tuple(range(split, len(shape)))
    return None


@dataclasses.dataclass(eq=False)
class Region:
    """One future kernel: its nodes in graph order and its geometry."""

    id: int
    kind: str  # "pointwise" or "reduction"
    numel: int
    nodes: list[fx.Node] = dataclasses.field(default_factory=list)
    context: dict[fx.Node, str] = dataclasses.field(default_factory=dict)  # full/sub/row
    shape: tuple[int, ...] = ()
    reduced: tuple[int, ...] = ()
    external: set[fx.Node] = dataclasses.field(default_factory=set)

    @property
    def rows(self) -> int:
        """Rows of a reduction region (positions over the kept dims)."""
        return math.prod(s for d, s in enumerate(self.shape) if d not in self.reduced)

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The kept dims' sizes of a reduction region, in order."""
        return tuple(s for d, s in enumerate(self.shape) if d not in self.reduced)

    @property
    def columns(self) -> int:
        """Elements reduced per row in a reduction region."""
        return math.prod(self.shape[d] for d in self.reduced)

    def add(self, node: fx.Node, context: str) -> None:
        """Put ``node`` in the region (the caller has checked :meth:`why_not`).

        A pointwise region grows to a larger node's element count: what it held before
        becomes ``sub`` (computed where the larger node needs it)."""
        numel = numel_of(node)
        if self.kind == "pointwise" and numel > self.numel:
            self.numel = numel
            self.context = {n: "sub" for n in self.context}
        self.nodes.append(node)
        self.context[node] = context
        self.external.discard(node)
        for arg in node.all_input_nodes:
            if arg not in self.context:
                self.external.add(arg)

    def why_not(self, node: fx.Node, kind: str, merging: bool = False) -> tuple[Optional[str], str]:
        """``(None, context)`` when ``node`` (a ``kind`` node) may join, else ``(reason, "")``.

        ``merging``: ``node`` comes with a whole region being merged in, so a smaller node
        may join as ``sub`` (the caller then checks :meth:`orphans`)."""
        inside = [a for a in node.all_input_nodes if a in self.context]
        if self.kind == "pointwise":
            if kind == "reduction":
                return self._why_not_first_reduction(node)
            return self._why_not_pointwise(node, merging)
        if ops.packet(node) in ops.NOT_IN_REDUCTIONS:
            return f"{ops.packet(node).__name__} inside a reduction kernel", ""
        if kind == "reduction":
            source = node.args[0]
            if self.context.get(source, "full") != "full":
                return "reduces a per-row value of the region", ""
            if ops.reduced_dims(node) != self.reduced or shape_of(source) != self.shape:
                return "reduces over other dims than the region's reductions", ""
            return None, "row"
        shape = shape_of(node)
        if strip_leading_ones(shape) == strip_leading_ones(self.shape) and self.columns > 1:
            for arg in inside:
                if self.context[arg] == "row" and not self._row_broadcasts(shape_of(arg)):
                    return f"{arg.name} does not broadcast along the reduced dims", ""
            if kind == "view" and self.context[inside[0]] == "row":
                return "view turns a per-row value into a full-size one", ""
            return None, "full"
        if _no_ones(shape) == _no_ones(self.row_shape):
            if any(self.context[arg] == "full" for arg in inside):
                return "mixes full-size values into a per-row value", ""
            return None, "row"
        if self.columns > 1 and row_split(shape, self.shape, self.reduced) is not None:
            if any(self.context[arg] == "row" for arg in inside):
                return f"reads a per-row value in shape {list(shape)}, not the region's", ""
            return None, "full"  # the region's rows and columns, viewed in another shape
        return f"shape {list(shape)} fits neither the region's rows nor its full shape", ""

    def _why_not_pointwise(self, node: fx.Node, merging: bool) -> tuple[Optional[str], str]:
        if ops.packet(node) is ops.aten.index and node.args[0] in self.context:
            return "gathers from a value of the region (a kernel gathers from its inputs)", ""
        numel = numel_of(node)
        if numel == self.numel:
            return None, "full"
        if numel < self.numel:
            if merging:
                return None, "sub"
            return f"has {numel} elements, the region's ops {self.numel}", ""
        if not numel > self.numel:  # neither equal nor smaller by structure: undecided
            raise Undecided(f"{numel} and {self.numel} elements are not ordered by structure")
        if merging:
            return f"has {numel} elements, more than the region's {self.numel}", ""
        operands = set(node.all_input_nodes)
        for sink in self.sinks():
            if sink not in operands:
                return (f"has {numel} elements, the region's ops {self.numel}, and the "
                        f"region's {sink.name} does not feed it"), ""
        return None, "full"

    def sizes(self) -> list[tuple]:
        """The shape of each node, and each size a node reads as a value: what the
        kernel's size symbols are drawn from."""
        read = [(size(a.meta["val"]),) for n in self.nodes for a in n.all_input_nodes
                if isinstance(a.meta.get("val"), torch.SymInt)]
        return [shape_of(n) for n in self.nodes] + read

    def sinks(self) -> list[fx.Node]:
        """The region's nodes that no node of the region reads."""
        return [n for n in self.nodes if not any(u in self.context for u in n.users)]

    def orphans(self) -> list[fx.Node]:
        """``sub`` nodes no node of the region reads: nothing says where to compute them;
        and gathers whose source a merge brought into the region."""
        return [n for n in self.sinks() if self.context[n] == "sub"] + [
            n for n in self.nodes if ops.packet(n) is ops.aten.index and n.args[0] in self.context
        ]

    def _why_not_first_reduction(self, node: fx.Node) -> tuple[Optional[str], str]:
        source = node.args[0]
        if source not in self.context:
            return "reduces a value from outside the region", ""
        if any(self.context[n] == "sub" or ops.packet(n) in ops.NOT_IN_REDUCTIONS
               for n in self.nodes):
            return "the region holds a cat, a gather or values of other sizes", ""
        shape, reduced = shape_of(source), ops.reduced_dims(node)
        if math.prod(shape[d] for d in reduced) <= 1:
            return "reduces only size-1 dims (a copy)", ""
        for member in self.nodes:
            if strip_leading_ones(shape_of(member)) != strip_leading_ones(shape) and \
                    row_split(shape_of(member), shape, reduced) is None:
                return f"{member.name} has another shape than the reduced input", ""
        return None, "row"

    def make_reduction(self, node: fx.Node) -> None:
        """Turn a pointwise region into a reduction region around ``node``'s geometry."""
        self.kind = "reduction"
        self.shape = shape_of(node.args[0])
        self.reduced = ops.reduced_dims(node)
        self.numel = math.prod(self.shape)

    def _row_broadcasts(self, shape: tuple[int, ...]) -> bool:
        padded = (1,) * (len(self.shape) - len(shape)) + shape
        if len(padded) != len(self.shape):
            return False
        return all(
            (p == 1) if d in self.reduced else (p == s)
            for d, (p, s) in enumerate(zip(padded, self.shape))
        )


def new_region(region_id: int, node: fx.Node, kind: str) -> Region:
    """A region that starts at ``node`` (pointwise or reduction)."""
    if kind == "reduction":
        region = Region(region_id, "pointwise", 0)
        region.make_reduction(node)
        region.add(node, "row")
        return region
    region = Region(region_id, "pointwise", numel_of(node))
    region.add(node, "full")
    return region


def supported_tensor(value: object) -> Optional[str]:
    """Why a tensor value cannot be read or written by a kernel, or ``None`` when it can
    (of symbolic sizes and strides too, when the sizes can be kernel arguments)."""
    if not isinstance(value, torch.Tensor):
        return "not a tensor"
    if value.dtype not in ops.TL_DTYPES:
        return f"dtype {value.dtype} has no Triton type"
    if value.device.type not in ("cuda", "cpu"):
        return f"device {value.device.type}"
    return why_not_arguments(value) or None
