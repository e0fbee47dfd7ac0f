"""A stream plan within a memory budget: side-stream branches go back where they cost bytes.

Pure functions on plain data, like :mod:`~kitsune_backend.passes.stream_planning` and
:mod:`~kitsune_backend.passes.arena_planning`: a DAG, a :class:`~kitsune_backend.ir.StreamPlan`,
a cost per node and the :class:`~kitsune_backend.ir.Buffer` list of the graph.

Work on a side stream keeps its buffers alive beside the work of the other streams, and two
buffers share arena bytes only where an event orders them, so a plan with more streams can
need a larger arena. The method:

1. the reference is the peak of the single-stream plan (every node on stream 0, in issue
   order): its arena plus the *resident* bytes that every plan holds alike (the graph's
   inputs and parameters, its outputs, what stays off the arena); a plan's bytes (its
   arena plus its side streams' library workspaces, below) may exceed the single-stream
   arena by ``budget`` times that peak (budget 0.1: the call's peak grows by at most 10%);
2. the side-stream *branches* (a run of one side stream's nodes, each reading the one
   before it) are ranked by bytes per microsecond of overlap: the aligned bytes of the
   buffers they produce, plus a workspace where the branch holds a workspace node, over
   their estimated time;
3. the top-ranked branches go back onto their predecessor's stream (the stream of the
   latest-issued producer of their first node, or stream 0), as many as bisection finds
   bring the arena within the limit with one fewer not doing so; the events and the arena
   are planned again for each count tried. Moving every branch gives the single-stream
   plan, which is within any budget. The arena nearly always shrinks as the count grows,
   but first-fit offsets do not promise it, so the count found may not be the smallest.

Library workspaces: cuBLAS keeps one workspace per (handle, stream) that ran a matmul
(32 MiB on Hopper and Blackwell), and a captured graph allocates its own. Every plan pays
one on stream 0; each side stream that runs a *workspace node* (a matmul) pays one more,
``workspace_bytes``, for as long as the graph lives. On small graphs that is most of what
several streams cost, so it is weighed with the arena.
"""

from __future__ import annotations

import dataclasses
import math
from typing import AbstractSet, Hashable, Mapping, Sequence

import networkx as nx

from ..ir import Buffer, StreamPlan
from .arena_planning import align, plan_arena, shared_work
from .stream_planning import finish_plan, single_stream_plan

Node = Hashable


@dataclasses.dataclass(frozen=True)
class Move:
    """One branch put back on its predecessor's stream: its nodes, the bytes its buffers
    take, and its estimated time (the overlap given up)."""

    nodes: tuple[Node, ...]
    held_bytes: int
    overlap_us: float


@dataclasses.dataclass
class BudgetFit:
    """The plan that fits, the bytes it was weighed by (a plan's arena plus its side-stream
    workspaces; ``limit_bytes``: the most within budget, the single-stream arena plus
    ``budget`` times the single-stream peak), the side-stream workspaces before and after,
    and the branches moved to fit, costliest first."""

    plan: StreamPlan
    single_bytes: int
    limit_bytes: float
    before_bytes: int
    after_bytes: int
    moves: list[Move]
    workspaces_before: int = 0
    workspaces_after: int = 0


def side_branches(plan: StreamPlan, dag: nx.DiGraph) -> list[list[Node]]:
    """The runs of side-stream nodes, in issue order: a node continues the branch of the
    previous node on its stream when it reads that node's output (a DAG edge)."""
    current: dict[int, list[Node]] = {}
    found: list[list[Node]] = []
    for v in plan.order:
        s = plan.stream[v]
        if s == 0:
            continue
        branch = current.get(s)
        if branch and dag.has_edge(branch[-1], v):
            branch.append(v)
        else:
            current[s] = [v]
            found.append(current[s])
    return found


def side_workspaces(plan: StreamPlan, workspace_nodes: AbstractSet[Node]) -> int:
    """The side streams (not stream 0) that run at least one workspace node."""
    return len({plan.stream[v] for v in workspace_nodes if plan.stream.get(v, 0) != 0})


def ranked_moves(
    plan: StreamPlan, dag: nx.DiGraph, cost: Mapping[Node, float], buffers: Sequence[Buffer],
    workspace_bytes: int = 0, workspace_nodes: AbstractSet[Node] = frozenset(),
) -> list[Move]:
    """Every side branch as a :class:`Move`, the most bytes per microsecond first (ties: the
    earliest issued first); a branch holding a workspace node counts ``workspace_bytes``
    more (moving all such branches of a stream frees its workspace)."""
    held: dict[Node, int] = {}
    for b in buffers:
        held[b.producer] = held.get(b.producer, 0) + align(max(b.size, 1))
    moves = []
    for branch in side_branches(plan, dag):
        nbytes = sum(held.get(v, 0) for v in branch)
        if workspace_nodes.intersection(branch):
            nbytes += workspace_bytes
        moves.append(Move(tuple(branch), nbytes, sum(cost[v] for v in branch)))
    index = {v: i for i, v in enumerate(plan.order)}
    return sorted(moves, key=lambda m: (-m.held_bytes / max(m.overlap_us, 1e-9), index[m.nodes[0]]))


def moved_plan(plan: StreamPlan, dag: nx.DiGraph, moves: Sequence[Move]) -> StreamPlan:
    """``plan`` with each moved branch on the stream its first node's latest-issued producer
    is on by then (stream 0 without a producer, or when that producer is on the branch's own
    stream): moving every side branch gives the single-stream assignment."""
    index = {v: i for i, v in enumerate(plan.order)}
    head = {m.nodes[0]: m for m in moves}
    stream = dict(plan.stream)
    for v in plan.order:  # issue order: a producer's new stream is known before its readers'
        if v not in head:
            continue
        preds = list(dag.predecessors(v))
        target = stream[max(preds, key=index.__getitem__)] if preds else 0
        target = 0 if target == plan.stream[v] else target
        for u in head[v].nodes:
            stream[u] = target
    return finish_plan(dag, plan.order, stream, plan.chains, plan.num_streams)


def fit_memory_budget(
    dag: nx.DiGraph,
    plan: StreamPlan,
    cost: Mapping[Node, float],
    buffers: Sequence[Buffer],
    budget: float,
    resident_bytes: int = 0,
    workspace_bytes: int = 0,
    workspace_nodes: AbstractSet[Node] = frozenset(),
) -> BudgetFit:
    """``plan`` if its peak (its arena, ``workspace_bytes`` per side stream running one of
    ``workspace_nodes``, and ``resident_bytes``) is at most ``(1 + budget)`` times the
    single-stream plan's; else ``plan`` with its top-ranked side branches
    (:func:`ranked_moves`) moved back, as many as a bisection finds fit (moving none is over
    the limit, moving all gives the single-stream plan, which is not), or the single-stream
    plan itself."""
    shared = shared_work(buffers)

    def plan_bytes(candidate: StreamPlan) -> int:
        arena_bytes = plan_arena(buffers, candidate, shared=shared)[1]
        return arena_bytes + workspace_bytes * side_workspaces(candidate, workspace_nodes)

    single = single_stream_plan(dag, plan.order)
    single_bytes = plan_bytes(single)
    limit = math.inf if math.isinf(budget) else \
        single_bytes + budget * (single_bytes + resident_bytes)
    before = plan_bytes(plan)
    workspaces = side_workspaces(plan, workspace_nodes)
    if before <= limit:
        return BudgetFit(plan, single_bytes, limit, before, before, [], workspaces, workspaces)
    ranked = ranked_moves(plan, dag, cost, buffers, workspace_bytes, workspace_nodes)
    low, high = 0, len(ranked)
    best, best_bytes = single, single_bytes
    while high - low > 1:
        middle = (low + high) // 2
        candidate = moved_plan(plan, dag, ranked[:middle])
        size = plan_bytes(candidate)
        if size <= limit:
            high, best, best_bytes = middle, candidate, size
        else:
            low = middle
    return BudgetFit(best, single_bytes, limit, before, best_bytes, ranked[:high], workspaces,
                     side_workspaces(best, workspace_nodes))
