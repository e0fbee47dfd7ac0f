"""Arena offsets on random DAGs and schedules: shared bytes only for ordered lifetimes."""

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from kitsune_backend.passes import arena_planning as arena, stream_planning as chains
from tests.helpers_graphs import dags, order_graph


@st.composite
def planned_buffers(draw):
    dag, order, cost = draw(dags(max_nodes=12))
    plan = chains.plan_streams(dag, order, cost, draw(st.integers(1, 4)))
    buffers = [
        arena.Buffer(
            name=f"buf{v}",
            size=draw(st.integers(1, 4096)),
            producer=v,
            users=tuple(dag.successors(v)),
        )
        for v in order
    ]
    return dag, plan, buffers


def reachable(plan):
    reach = nx.transitive_closure_dag(order_graph(plan))
    return lambda a, b: reach.has_edge(a, b)


@settings(max_examples=120, deadline=None)
@given(planned_buffers())
def test_overlapping_ranges_have_ordered_lifetimes(case):
    dag, plan, buffers = case
    clash = arena.conflicts(buffers, plan.happens_before)
    assert clash == arena.conflicts_from_clocks(buffers, plan.stream, plan.position, plan.clock)
    offsets, size = arena.assign_offsets(buffers, clash)
    assert arena.plan_arena(buffers, plan) == (offsets, size)
    assert arena.check_plan(buffers, offsets, reachable(plan)) == []
    assert all(offsets[b.name] % arena.ALIGNMENT == 0 for b in buffers)
    assert size <= sum(arena.align(b.size) for b in buffers)
    assert size >= max(arena.align(b.size) for b in buffers)


@settings(max_examples=60, deadline=None)
@given(planned_buffers())
def test_one_stream_arena_close_to_eager_peak(case):
    dag, plan, buffers = case
    single = chains.single_stream_plan(dag, plan.order)
    clash = arena.conflicts(buffers, single.happens_before)
    offsets, size = arena.assign_offsets(buffers, clash)
    assert arena.check_plan(buffers, offsets, reachable(single)) == []
    # the arena can never be smaller than what is live at once in that order
    peak = arena.eager_peak(buffers, single.order)
    assert size >= peak


def test_topological_order_is_not_enough_across_streams():
    # a -> b on stream 0, c independent on stream 1: c is "later" in the order but may run
    # while b still reads a, so a and c must not share bytes.
    dag = nx.DiGraph([("a", "b")])
    dag.add_node("c")
    order = ["a", "b", "c"]
    plan = chains.finish_plan(dag, order, {"a": 0, "b": 0, "c": 1}, [["a", "b"], ["c"]], 2)
    bufs = [arena.Buffer("A", 1024, "a", ("b",)), arena.Buffer("C", 1024, "c", ())]
    clash = arena.conflicts(bufs, plan.happens_before)
    offsets, size = arena.assign_offsets(bufs, clash)
    assert offsets["A"] != offsets["C"] and size == 2048
    single = chains.single_stream_plan(dag, order)
    offsets, size = arena.assign_offsets(bufs, arena.conflicts(bufs, single.happens_before))
    assert size == 1024  # on one stream, c runs after b: the bytes can be shared
