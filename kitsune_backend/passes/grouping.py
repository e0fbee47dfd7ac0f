"""Region formation: which FX nodes go into which fusion region.

One walk over the graph in order. Constant and index sources join no region: every region
that reads one computes it (:mod:`kitsune_backend.codegen.index_sources`). A fusable node
(pointwise, cat, gather, reduction, identity view) joins the region of one of its inputs
(reduction regions first, then the newest) when the region's shape rule allows it
(:meth:`Region.why_not`), no in-place or random op lies between them, and the join makes
no cycle between regions; otherwise a pointwise or reduction node starts a new region.
Other regions feeding the joined node are then merged in when all their nodes fit
(:func:`_absorb`; a pointwise region's smaller values then feed a cat or a broadcasting op
of it). Every refusal is kept as a reason. The walk is deterministic (graph order only).

Cycle check: joining node ``n`` to region ``G`` adds edges from ``n``'s outside inputs into
``G``; that closes a cycle exactly when one of those inputs depends on ``G``, looking
through other regions as single units. The search only visits nodes and regions that can
come after ``G``'s first node.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Optional

import torch
import torch.fx as fx

from ..graph_utils import is_mutating
from ..ir import Decline
from ..codegen import index_sources, ops
from ..codegen.region import Region, new_region, supported_tensor
from ..codegen.symbolic import DYNAMIC_SHAPES, Undecided

STAGE = "fusion"


@dataclasses.dataclass
class Grouping:
    """The regions found in a graph, and why nodes were kept apart."""

    regions: list[Region]
    region_of: dict[fx.Node, Region]
    index: dict[fx.Node, int]
    segment: dict[fx.Node, int]
    declines: list[Decline]
    next_id: int = 0  # region ids stay unique after merges remove regions


def is_barrier(node: fx.Node) -> bool:
    """In-place and random ops: nothing is reordered across them and no region spans them."""
    if node.op != "call_function":
        return False
    if is_mutating(node):
        return True
    tags = getattr(node.target, "tags", ())
    return torch.Tag.nondeterministic_seeded in tags


def declined(what: str, why: str) -> str:
    """The decline text ``<what>: <why>``; a reason about symbolic sizes keeps its
    :data:`DYNAMIC_SHAPES` prefix first (``dynamic shapes: <what>: ...``)."""
    if why.startswith(DYNAMIC_SHAPES):
        return f"{DYNAMIC_SHAPES}: {what}: {why[len(DYNAMIC_SHAPES) + 2:]}"
    return f"{what}: {why}"


def _tensor_problem(node: fx.Node, device: torch.device) -> Optional[str]:
    for item in (node, *node.all_input_nodes):
        value = item.meta.get("val")
        if isinstance(value, torch.SymInt) and item is not node:
            if ops.is_identity_view(node):
                continue  # a view's target size: folded into the kernel's index math
            if ops.packet(node) in ops.POINTWISE and node.meta["val"].dtype.is_floating_point:
                continue  # computed from the kernel's size arguments
            return f"{DYNAMIC_SHAPES}: {node.name} reads the size {item.name} as a value"
        problem = supported_tensor(value)
        if problem is None and item.meta["val"].device != device:
            problem = f"on {item.meta['val'].device}, the graph on {device}"
        if problem is not None:
            return declined(item.name, problem)
    return None


def find_regions(gm: fx.GraphModule, device: torch.device) -> Grouping:
    """Group the fusable nodes of ``gm`` into regions (see the module docstring)."""
    nodes = list(gm.graph.nodes)
    grouping = Grouping([], {}, {n: i for i, n in enumerate(nodes)}, {}, [])
    segment = 0
    apart: list[tuple[fx.Node, str]] = []
    for node in nodes:
        if is_barrier(node):
            segment += 1
        grouping.segment[node] = segment
        if index_sources.inlinable(node):
            continue  # a source (or a view of one): computed inside each region reading it
        kind, why = ops.classify(node)
        if kind is None:
            if node.op == "call_function" and node.target is not operator.getitem and not (
                    isinstance(node.meta.get("val"), torch.SymInt)):  # size arithmetic
                apart.append((node, why))
            continue
        problem = _tensor_problem(node, device)
        if problem is not None:
            grouping.declines.append(Decline(STAGE, declined("not fused", problem), node.name))
            continue
        if not _join(grouping, node, kind) and kind != "view":
            _start(grouping, node, kind)
    _merge_siblings(grouping)
    for node, why in apart:  # a boundary: it feeds a region or reads one
        if any(n in grouping.region_of for n in (*node.all_input_nodes, *node.users)):
            grouping.declines.append(Decline(STAGE, declined("not fused", why), node.name))
    return grouping


def _join(grouping: Grouping, node: fx.Node, kind: str) -> bool:
    candidates = {grouping.region_of[a] for a in node.all_input_nodes if a in grouping.region_of}
    # Reduction regions first (a small pointwise region is then absorbed into them), then
    # the newest region.
    for region in sorted(candidates, key=lambda r: (r.kind != "reduction", -r.id)):
        if grouping.segment[region.nodes[0]] != grouping.segment[node]:
            reason = "an in-place or random op lies between it and the region"
        else:
            reason, context = _why_not(region, node, kind)
            if reason is None and _makes_cycle(grouping, region, node):
                reason = "joining would make a cycle between kernels"
        if reason is None:
            if region.kind == "pointwise" and kind == "reduction":
                region.make_reduction(node)
            region.add(node, context)
            grouping.region_of[node] = region
            for other in sorted(candidates - {region}, key=lambda r: -r.id):
                _absorb(grouping, region, other)
            return True
        grouping.declines.append(
            Decline(STAGE, declined(f"not fused with region {region.id}", reason), node.name))
    return False


def _why_not(region: Region, node: fx.Node, kind: str,
             merging: bool = False) -> tuple[Optional[str], str]:
    """:meth:`Region.why_not`, with symbolic sizes it cannot order as a reason."""
    try:
        return region.why_not(node, kind, merging)
    except Undecided as exc:
        return f"{DYNAMIC_SHAPES}: {exc}", ""


def _start(grouping: Grouping, node: fx.Node, kind: str) -> None:
    region = new_region(grouping.next_id, node, kind)
    grouping.next_id += 1
    if region.kind == "reduction" and region.columns <= 1 and region.rows > 0:
        grouping.declines.append(
            Decline(STAGE, "not fused: reduces only size-1 dims (a copy)", node.name)
        )
        return
    grouping.regions.append(region)
    grouping.region_of[node] = region


def _absorb(grouping: Grouping, region: Region, other: Region) -> bool:
    """Merge ``other`` (a region feeding the node that just joined ``region``) into
    ``region`` when all its nodes fit ``region``'s shape rule and no cycle forms: the
    small pointwise regions beside a reduction (running-stat updates) then cost no launch."""
    if grouping.segment[other.nodes[0]] != grouping.segment[region.nodes[0]]:
        return False
    trial = _trial_copy(region)
    for member in other.nodes:
        kind, _ = ops.classify(member)
        reason, context = _why_not(trial, member, kind, merging=True)
        if reason is not None or kind == "reduction":
            return False
        trial.add(member, context)
    trial.nodes.sort(key=grouping.index.__getitem__)
    if trial.orphans() or _reaches(grouping, {region, other}, trial.external, trial.nodes[0]):
        return False
    region.nodes, region.context, region.external = trial.nodes, trial.context, trial.external
    for member in other.nodes:
        grouping.region_of[member] = region
    grouping.regions.remove(other)
    return True


def _trial_copy(region: Region) -> Region:
    """A copy of ``region`` to try a merge on (its node lists and sets copied too)."""
    return dataclasses.replace(region, nodes=list(region.nodes), context=dict(region.context),
                               external=set(region.external))


def _merge_siblings(grouping: Grouping) -> None:
    """Merge regions that read a common input and have the same geometry (and do not
    depend on each other): the shared input is then read once, by one kernel."""
    readers: dict[fx.Node, list[Region]] = {}
    for region in grouping.regions:
        for node in sorted(region.external, key=grouping.index.__getitem__):
            if not index_sources.inlinable(node):  # a shared constant saves no read
                readers.setdefault(node, []).append(region)
    merged: set[int] = set()
    for group in readers.values():
        for i, first in enumerate(group):
            if first.id in merged:
                continue
            for other in group[i + 1:]:
                if other.id not in merged and _same_geometry(first, other) and _fold(
                    grouping, first, other
                ):
                    merged.add(other.id)


def _same_geometry(a: Region, b: Region) -> bool:
    if a.kind != b.kind:
        return False
    if a.kind == "pointwise":
        return a.numel == b.numel
    return a.shape == b.shape and a.reduced == b.reduced


def _fold(grouping: Grouping, region: Region, other: Region) -> bool:
    """Merge ``other`` into ``region`` when every node fits and no cycle forms."""
    if grouping.segment[other.nodes[0]] != grouping.segment[region.nodes[0]]:
        return False
    first = min(region.nodes[0], other.nodes[0], key=grouping.index.__getitem__)
    if _reaches(grouping, {region}, other.external, first) or _reaches(
        grouping, {other}, region.external, first
    ):
        return False
    trial = _trial_copy(region)
    for member in other.nodes:
        kind, _ = ops.classify(member)
        reason, context = _why_not(trial, member, kind, merging=True)
        if reason is not None:
            return False
        trial.add(member, context)
    if trial.orphans():
        return False
    trial.nodes.sort(key=grouping.index.__getitem__)
    region.nodes, region.context, region.external = trial.nodes, trial.context, trial.external
    for member in other.nodes:
        grouping.region_of[member] = region
    grouping.regions.remove(other)
    return True


def _makes_cycle(grouping: Grouping, region: Region, node: fx.Node) -> bool:
    starts = [a for a in node.all_input_nodes if a not in region.context]
    return _reaches(grouping, {region}, starts, region.nodes[0])


def _reaches(grouping: Grouping, targets: set, starts, first_node: fx.Node) -> bool:
    """True when a node of a region in ``targets`` is upstream of any of ``starts``
    (looking through other regions as single units)."""
    index = grouping.index
    first = index[first_node]
    stack = list(starts)
    seen: set[object] = set()
    while stack:
        item = stack.pop()
        other = grouping.region_of.get(item)
        if other in targets:
            return True
        if other is not None:
            if other.id in seen or index[other.nodes[-1]] < first:
                continue
            seen.add(other.id)
            stack.extend(other.external)
        else:
            if item in seen or index[item] < first or index_sources.inlinable(item):
                continue  # a kernel computes a source: its template is no input
            seen.add(item)
            stack.extend(item.all_input_nodes)
    return False


def schedule(grouping: Grouping, kept: list[Region], nodes: list[fx.Node]) -> list[object]:
    """A topological order of units (loose nodes and kept regions) that keeps barriers in
    place: units sorted within each barrier segment, earliest original position first."""
    import heapq

    unit_of: dict[fx.Node, object] = {}
    for region in kept:
        for member in region.nodes:
            unit_of[member] = region
    units: list[object] = []
    for node in nodes:
        unit = unit_of.setdefault(node, node)
        if unit is node or node is unit.nodes[0]:
            units.append(unit)

    def inputs(unit: object) -> set[fx.Node]:
        if isinstance(unit, Region):
            return {a for a in unit.external if not index_sources.inlinable(a)}
        return set(unit.all_input_nodes)

    def first(unit: object) -> fx.Node:
        return unit.nodes[0] if isinstance(unit, Region) else unit

    order: list[object] = []
    done: set[int] = set()
    by_segment: dict[int, list[object]] = {}
    for unit in units:
        by_segment.setdefault(grouping.segment[first(unit)], []).append(unit)
    for segment in sorted(by_segment):
        members = by_segment[segment]
        waiting: dict[int, set[int]] = {}
        users: dict[int, list[object]] = {}
        heap: list[tuple[int, int, object]] = []
        for unit in members:
            deps = {id(unit_of[a]) for a in inputs(unit)} - done
            deps.discard(id(unit))
            waiting[id(unit)] = deps
            for dep in deps:
                users.setdefault(dep, []).append(unit)
            if not deps:
                heapq.heappush(heap, (grouping.index[first(unit)], id(unit), unit))
        while heap:
            _, _, unit = heapq.heappop(heap)
            order.append(unit)
            done.add(id(unit))
            for user in users.get(id(unit), ()):
                waiting[id(user)].discard(id(unit))
                if not waiting[id(user)]:
                    heapq.heappush(heap, (grouping.index[first(user)], id(user), user))
        if any(waiting[id(u)] for u in members if id(u) not in done):
            raise RuntimeError("fusion produced a cycle between regions")
    return order
