"""Stream assignment on a plain DAG: chains, streams, events, happens-before.

These functions know nothing about FX or CUDA: nodes are any hashable objects, the DAG is a
``networkx.DiGraph``, ``order`` is the issue order (a topological order) and ``cost`` a
number per node. :mod:`kitsune_backend.passes.streams` feeds them the kernel DAG of a graph.

The method (Nimble, NeurIPS 2020, plus the critical path on the caller's stream):

1. the longest path by cost is the critical path; it becomes one chain, on stream 0;
2. the other nodes are covered by the fewest chains: a maximum matching on the bipartite
   graph of the transitive closure (``u -> v`` reachable: ``u`` may precede ``v`` in a chain);
3. chains are merged down to ``num_streams`` streams, several ways (a chain goes to the
   stream whose work it overlaps least, to the stream that frees up first, or to the stream
   that gives the shortest simulated schedule); the shortest simulated schedule is kept;
4. each node waits for a cross-stream producer's event only when the vector clocks say that
   no earlier wait already implies it, so there are never more events than cross-stream
   edges of the transitive reduction.

Positions are 1-based per stream; position 0 of every stream is the fork at the start of the
call, when every side stream waits for the caller's stream (the inputs are ready).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping, Sequence

import networkx as nx

from ..ir import StreamPlan

Node = Hashable


def critical_path(dag: nx.DiGraph, order: Sequence[Node], cost: Mapping[Node, float]) -> list[Node]:
    """The path of largest total cost (ties: the earliest in ``order``)."""
    if not order:
        return []
    best: dict[Node, float] = {}
    back: dict[Node, Node | None] = {}
    for v in order:
        preds = list(dag.predecessors(v))
        prev = max(preds, key=lambda u: best[u], default=None)
        best[v] = cost[v] + (best[prev] if prev is not None else 0.0)
        back[v] = prev
    end = max(order, key=lambda v: best[v])
    path = [end]
    while back[path[-1]] is not None:
        path.append(back[path[-1]])
    return path[::-1]


def chain_decomposition(
    dag: nx.DiGraph, order: Sequence[Node], keep: Sequence[Node] = ()
) -> list[list[Node]]:
    """Fewest chains covering the DAG, with ``keep`` (a path) kept as one chain, listed first.

    Consecutive nodes of a chain are ordered by reachability, not necessarily by an edge.
    """
    if not order:
        return []
    closure = nx.transitive_closure_dag(dag)
    index = {v: i for i, v in enumerate(order)}
    n = len(order)
    keep_next = {index[u]: index[v] for u, v in zip(keep, keep[1:])}
    keep_prev = {v: u for u, v in keep_next.items()}
    # integers, not the nodes: the matching must not depend on hash (memory address) order
    bipartite = nx.Graph()
    bipartite.add_nodes_from(range(2 * n))
    # direct edges first: the matching search tries them first, so chains follow the
    # graph's own edges where it can (branches stay whole, which merges better)
    edges = sorted(
        (index[a], not dag.has_edge(a, b), index[b]) for a, b in closure.edges()
    )
    for u, _, v in edges:
        if u in keep_next and keep_next[u] != v:
            continue
        if v in keep_prev and keep_prev[v] != u:
            continue
        bipartite.add_edge(u, n + v)
    matching = nx.bipartite.hopcroft_karp_matching(bipartite, top_nodes=range(n))
    successor = {order[u]: order[matching[u] - n] for u in range(n) if u in matching}
    has_pred = set(successor.values())
    chains = []
    for v in order:
        if v in has_pred:
            continue
        chain = [v]
        while chain[-1] in successor:
            chain.append(successor[chain[-1]])
        chains.append(chain)
    first = keep[0] if keep else None
    chains.sort(key=lambda c: (c[0] != first, index[c[0]]))
    return chains


def earliest_times(
    dag: nx.DiGraph, order: Sequence[Node], cost: Mapping[Node, float]
) -> dict[Node, tuple[float, float]]:
    """(start, end) of every node with unlimited streams: the as-soon-as-possible schedule."""
    times: dict[Node, tuple[float, float]] = {}
    for v in order:
        start = max((times[u][1] for u in dag.predecessors(v)), default=0.0)
        times[v] = (start, start + cost[v])
    return times


def merge_chains(
    chains: Sequence[Sequence[Node]],
    times: Mapping[Node, tuple[float, float]],
    num_streams: int,
) -> dict[Node, int]:
    """A stream per node: chain 0 on stream 0, each other chain (longest first) on the stream
    whose busy intervals it overlaps least (an empty stream if one is left)."""
    busy: list[list[tuple[float, float]]] = [[] for _ in range(max(1, num_streams))]
    stream: dict[Node, int] = {}

    def span(chain: Sequence[Node]) -> list[tuple[float, float]]:
        return [times[v] for v in chain]

    def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
        return sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)

    ranked = [chains[0]] + sorted(
        chains[1:], key=lambda c: -sum(e - s for s, e in span(c))
    ) if chains else []
    for i, chain in enumerate(ranked):
        intervals = span(chain)
        if i == 0:
            target = 0
        else:
            target = min(
                range(len(busy)),
                key=lambda s: (overlap(intervals, busy[s]), bool(busy[s]) and s == 0, s),
            )
        busy[target].extend(intervals)
        for v in chain:
            stream[v] = target
    return stream


def merge_chains_first_free(
    chains: Sequence[Sequence[Node]],
    times: Mapping[Node, tuple[float, float]],
    num_streams: int,
) -> dict[Node, int]:
    """A stream per node: chain 0 on stream 0, the others in order of earliest start, each on
    the stream that frees up first (list scheduling of whole chains, Opara-style)."""
    free = [0.0] * max(1, num_streams)
    stream: dict[Node, int] = {}
    if not chains:
        return stream
    for v in chains[0]:
        stream[v] = 0
    free[0] = times[chains[0][-1]][1]
    for chain in sorted(chains[1:], key=lambda c: times[c[0]][0]):
        start = times[chain[0]][0]
        idle = [s for s in range(len(free)) if free[s] <= start]
        target = min(idle, key=lambda s: (s == 0, s)) if idle else min(
            range(len(free)), key=lambda s: (free[s], s)
        )
        for v in chain:
            stream[v] = target
        free[target] = max(free[target], times[chain[-1]][1])
    return stream


SEARCH_LIMIT = 2_000_000  # chains x streams x nodes above which merge_chains_search is skipped


def _finish_time(
    dag: nx.DiGraph, order: Sequence[Node], cost: Mapping[Node, float], stream: Mapping[Node, Any]
) -> float:
    free: dict[Any, float] = {}
    end: dict[Node, float] = {}
    for v in order:
        s = stream[v]
        start = max([free.get(s, 0.0)] + [end[u] for u in dag.predecessors(v)])
        end[v] = free[s] = start + cost[v]
    return max(end.values(), default=0.0)


def merge_chains_search(
    chains: Sequence[Sequence[Node]],
    dag: nx.DiGraph,
    order: Sequence[Node],
    cost: Mapping[Node, float],
    num_streams: int,
) -> dict[Node, int]:
    """A stream per node: chain 0 on stream 0; each other chain, costliest first, on the
    stream that gives the shortest simulated schedule (chains not placed yet run alone)."""
    stream: dict[Node, Any] = {}
    for i, chain in enumerate(chains):
        for v in chain:
            stream[v] = 0 if i == 0 else ("alone", i)
    ranked = sorted(range(1, len(chains)), key=lambda i: -sum(cost[v] for v in chains[i]))
    for i in ranked:
        best = None
        for target in range(max(1, num_streams)):
            for v in chains[i]:
                stream[v] = target
            score = (_finish_time(dag, order, cost, stream), target)
            if best is None or score < best:
                best = score
        for v in chains[i]:
            stream[v] = best[1]
    return stream


def place_events(
    dag: nx.DiGraph, order: Sequence[Node], stream: Mapping[Node, int], num_streams: int
) -> tuple[dict, dict, dict, list]:
    """Positions, waits, vector clocks and final joins for a stream assignment.

    A producer is waited for only if the consumer's stream does not already know it has
    finished; producers are visited latest first, so that one wait can imply the others.
    """
    width = max(num_streams, max(stream.values(), default=0) + 1)
    known = [[0] * width for _ in range(width)]
    count = [0] * width
    index = {v: i for i, v in enumerate(order)}
    position: dict[Node, int] = {}
    waits: dict[Node, list[Node]] = {}
    clock: dict[Node, tuple[int, ...]] = {}
    for v in order:
        s = stream[v]
        mine = known[s]
        waits[v] = []
        for u in sorted(dag.predecessors(v), key=lambda u: -index[u]):
            if mine[stream[u]] >= position[u]:
                continue
            waits[v].append(u)
            mine[:] = [max(a, b) for a, b in zip(mine, clock[u])]
        count[s] += 1
        position[v] = count[s]
        mine[s] = count[s]
        clock[v] = tuple(mine)
    joins = []
    tails = {stream[v]: v for v in order}
    for t, tail in sorted(tails.items(), key=lambda item: -index[item[1]]):
        if t != 0 and known[0][t] < position[tail]:
            joins.append(tail)
            known[0][:] = [max(a, b) for a, b in zip(known[0], clock[tail])]
    return position, waits, clock, joins


def plan_streams(
    dag: nx.DiGraph,
    order: Sequence[Node],
    cost: Mapping[Node, float],
    num_streams: int,
    event_cost: float = 0.0,
) -> StreamPlan:
    """The whole method: critical path, chains, merge to ``num_streams``, events. Several
    ways of merging are tried; the one with the shorter simulated schedule wins."""
    path = critical_path(dag, order, cost)
    chains = chain_decomposition(dag, order, keep=path)
    times = earliest_times(dag, order, cost)
    assignments = [
        merge(chains, times, num_streams) for merge in (merge_chains, merge_chains_first_free)
    ]
    if len(chains) * num_streams * len(order) <= SEARCH_LIMIT:
        assignments.append(merge_chains_search(chains, dag, order, cost, num_streams))
    candidates = [finish_plan(dag, order, a, chains, num_streams) for a in assignments]
    return min(candidates, key=lambda p: (makespan(p, dag, cost, event_cost), p.events))


def single_stream_plan(dag: nx.DiGraph, order: Sequence[Node]) -> StreamPlan:
    """Everything on the caller's stream, in issue order: no events."""
    stream = {v: 0 for v in order}
    return finish_plan(dag, order, stream, [list(order)] if order else [], 1)


def finish_plan(
    dag: nx.DiGraph,
    order: Sequence[Node],
    stream: Mapping[Node, int],
    chains: list[list[Node]],
    num_streams: int,
) -> StreamPlan:
    """Build the :class:`StreamPlan` for a given assignment (streams renumbered densely)."""
    used = sorted(set(stream.values()) | {0})
    dense = {s: i for i, s in enumerate(used)}
    stream = {v: dense[s] for v, s in stream.items()}
    position, waits, clock, joins = place_events(dag, order, stream, len(used))
    return StreamPlan(
        order=list(order),
        stream=dict(stream),
        position=position,
        waits=waits,
        joins=joins,
        clock=clock,
        chains=chains,
        num_streams=len(used),
    )


def simulate(
    plan: StreamPlan, dag: nx.DiGraph, cost: Mapping[Node, float], event_cost: float = 0.0
) -> dict[Node, tuple[float, float]]:
    """(start, end) of every node when each stream runs its nodes in order, each node after
    its DAG producers; a wait adds ``event_cost``. Streams never slow each other down here."""
    free = [0.0] * plan.num_streams
    times: dict[Node, tuple[float, float]] = {}
    for v in plan.order:
        s = plan.stream[v]
        ready = max((times[u][1] for u in dag.predecessors(v)), default=0.0)
        start = max(ready, free[s]) + event_cost * len(plan.waits[v])
        times[v] = (start, start + cost[v])
        free[s] = times[v][1]
    return times


def makespan(
    plan: StreamPlan, dag: nx.DiGraph, cost: Mapping[Node, float], event_cost: float = 0.0
) -> float:
    """When the last node of :func:`simulate` ends."""
    return max((e for _, e in simulate(plan, dag, cost, event_cost).values()), default=0.0)


def transitive_reduction_cross_edges(dag: nx.DiGraph, stream: Callable[[Any], Any]) -> int:
    """Edges of the transitive reduction whose ends ``stream`` puts on different streams."""
    reduced = nx.transitive_reduction(dag)
    return sum(1 for u, v in reduced.edges() if stream(u) != stream(v))
