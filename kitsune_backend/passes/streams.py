"""streams: give each kernel a CUDA stream; cross-stream edges get events.

The algorithm lives in :mod:`kitsune_backend.passes.stream_planning` (plain DAGs, testable alone);
this pass builds the kernel DAG of the graph, asks a cost model whether concurrency can pay,
and writes the answer on the nodes and into ``ctx.stream_plan`` for the memory plan and
the runtime.
"""

from __future__ import annotations

import operator

import networkx as nx
import torch
import torch.fx as fx

from ..graph_utils import (alias_base, has_symbolic_shapes, is_collective, is_mutating, is_view,
                           launches_kernel)
from ..ir import META_STREAM, META_WAIT, Decline, PassContext, PassResult, StreamPlan
from . import stream_planning
from .stream_cost import EVENT_US, LAUNCH_US, node_cost_us

MIN_GAIN_US = 5.0  # below this estimated saving, one stream is kept
MIN_GAIN_FRACTION = 0.05


def is_scheduled(node: fx.Node) -> bool:
    """True for nodes that may touch device memory: kernels, and any other call that reads a
    tensor (``_local_scalar_dense``, asserts), but not views or ``getitem``."""
    if launches_kernel(node):
        return True
    if node.op != "call_function" or node.target is operator.getitem or is_view(node):
        return False
    return any(isinstance(n.meta.get("val"), torch.Tensor) for n in node.all_input_nodes)


def kernel_dag(gm: fx.GraphModule) -> tuple[nx.DiGraph, list[fx.Node]]:
    """The DAG of scheduled nodes: an edge where one reads (through aliases) what another
    produced, plus write-after-read and read-after-write edges around in-place writes."""
    order = [n for n in gm.graph.nodes if is_scheduled(n)]
    dag = nx.DiGraph()
    dag.add_nodes_from(order)
    place = {n: i for i, n in enumerate(gm.graph.nodes)}
    producers: dict[fx.Node, set[fx.Node]] = {}
    for node in gm.graph.nodes:
        found: set[fx.Node] = set()
        for i in node.all_input_nodes:
            found |= {i} if is_scheduled(i) else producers.get(i, set())
        producers[node] = found
        if is_scheduled(node):  # sorted: the plan must not depend on hash order
            dag.add_edges_from((p, node) for p in sorted(found, key=place.__getitem__))
    readers: dict[fx.Node, list[fx.Node]] = {}
    writers: dict[fx.Node, list[fx.Node]] = {}
    for node in order:
        bases = dict.fromkeys(alias_base(i) for i in node.all_input_nodes)
        for base in bases:
            for w in writers.get(base, []):
                dag.add_edge(w, node)
        if is_mutating(node):
            for base in bases:
                for r in readers.get(base, []):
                    if r is not node:
                        dag.add_edge(r, node)
                writers.setdefault(base, []).append(node)
        for base in bases:
            readers.setdefault(base, []).append(node)
    return dag, order


def annotate(gm: fx.GraphModule, plan: StreamPlan) -> None:
    """Write ``plan`` on the nodes: each scheduled node's stream and the producers it waits
    for (meta ``kitsune_stream`` / ``kitsune_wait``); no other node keeps either."""
    for node in gm.graph.nodes:
        node.meta.pop(META_STREAM, None)
        node.meta.pop(META_WAIT, None)
    for node in plan.order:
        node.meta[META_STREAM] = plan.stream[node]
        node.meta[META_WAIT] = [u.name for u in plan.waits[node]]


def _decline_reason(ctx: PassContext, symbolic: bool) -> str:
    if not ctx.config.streams:
        return "streams are off (config streams=False)"
    if ctx.config.num_streams < 2:
        return "num_streams=1: one stream"
    if not ctx.on_cuda:
        return "CPU tensors: streams are a CUDA feature"
    if symbolic:
        return "symbolic shapes: the cost model needs static shapes"
    return ""


def _collectives_on_caller_stream(plan: StreamPlan, dag: nx.DiGraph,
                                  order: list[fx.Node]) -> StreamPlan:
    """``plan`` with every collective and its wait on stream 0, where the engine that
    issued it (DDP, FSDP2) expects it, in graph order on every rank; the work that does not
    depend on it stays where the plan put it, and overlaps it."""
    pinned = [n for n in order if is_collective(n) and plan.stream[n] != 0]
    if not pinned:
        return plan
    stream = dict(plan.stream)
    stream.update(dict.fromkeys(pinned, 0))
    return stream_planning.finish_plan(dag, order, stream, plan.chains, plan.num_streams)


def assign_streams(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Put kernels on streams so that independent branches overlap, with few events.

    Before (two independent branches, everything on the caller's stream)::

        a = mm(x, w1); b = gelu(a)      # branch 1
        c = mm(x, w2); d = gelu(c)      # branch 2
        e = cat([b, d])

    After (meta ``kitsune_stream`` / ``kitsune_wait``)::

        a: stream 0; b: stream 0        # the critical path stays on the caller's stream
        c: stream 1; d: stream 1
        e: stream 0, waits for [d]      # one event; the final join has nothing left to do

    Collectives and their waits stay on stream 0 (:func:`_collectives_on_caller_stream`).
    """
    dag, order = kernel_dag(gm)
    symbolic = has_symbolic_shapes(gm)
    cost = {n: 1.0 if symbolic else node_cost_us(n) for n in order}
    single = stream_planning.single_stream_plan(dag, order)
    reason = _decline_reason(ctx, symbolic)
    plan = single
    stats: dict = {"kernel_nodes": len(order)}
    if not reason:
        multi = stream_planning.plan_streams(dag, order, cost, ctx.config.num_streams, EVENT_US)
        t_single = sum(cost.values())
        t_multi = max(
            max((e for _, e in stream_planning.simulate(multi, dag, cost, EVENT_US).values()), default=0),
            sum(c - LAUNCH_US for c in cost.values()),  # bandwidth/compute is shared
        )
        stats.update(est_one_stream_us=round(t_single, 1), est_streams_us=round(t_multi, 1))
        if len(multi.chains) <= 1:
            reason = "one chain: no two kernels are independent"
        elif t_single - t_multi < max(MIN_GAIN_US, MIN_GAIN_FRACTION * t_single):
            reason = (
                f"concurrency cannot pay: estimated {t_single:.1f} us on one stream vs "
                f"{t_multi:.1f} us on {multi.streams_used}"
            )
        else:
            plan = _collectives_on_caller_stream(multi, dag, order)
    annotate(gm, plan)
    ctx.stream_plan = plan
    stats.update(
        streams_used=plan.streams_used,
        events=plan.events,
        join_events=len(plan.joins),
        chains=len(plan.chains),
    )
    declines = [Decline("streams", reason)] if reason else []
    notes = [
        f"{len(order)} kernel node(s) on {plan.streams_used} stream(s), {plan.events} event(s)"
    ]
    return PassResult(declines=declines, stats=stats, notes=notes)

