"""The memory budget on plain random DAGs: the fitted plan's arena stays within the budget,
buffers live at once never share bytes, and the budget's two ends give the two plans."""

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from kitsune_backend.ir import Buffer
from kitsune_backend.passes import arena_planning as arena, stream_planning as chains
from kitsune_backend.passes import stream_memory
from tests.helpers_graphs import dags, order_graph
from tests.test_streams_algo import check_plan


@st.composite
def planned(draw):
    """A random DAG, a plan on 2-5 streams and a buffer per node, read by its successors."""
    dag, order, cost = draw(dags(max_nodes=14))
    num_streams = draw(st.integers(2, 5))
    plan = chains.plan_streams(dag, order, cost, num_streams)
    buffers = [
        Buffer(f"buf{v}", draw(st.integers(1, 1 << 16)), v, tuple(dag.successors(v)))
        for v in order
    ]
    return dag, cost, plan, buffers, num_streams


def arena_of(buffers, plan):
    """The arena of ``plan``, and the overlaps the happens-before graph the runtime
    enforces (stream order, events) does not order: none expected."""
    offsets, size = arena.plan_arena(buffers, plan)
    reach = nx.transitive_closure_dag(order_graph(plan))
    return size, arena.check_plan(buffers, offsets, lambda a, b: reach.has_edge(a, b))


@settings(max_examples=150, deadline=None)
@given(planned(), st.sampled_from([0.0, 0.05, 0.1, 0.5, 1.0]),
       st.sampled_from([0, 1 << 10, 1 << 20]))
def test_fitted_plan_is_within_budget_and_overlap_safe(case, budget, resident):
    """The peak (arena plus the resident bytes every plan holds) grows by at most the
    budget's fraction of the single-stream peak."""
    dag, cost, plan, buffers, num_streams = case
    fit = stream_memory.fit_memory_budget(dag, plan, cost, buffers, budget, resident)
    single_size, _ = arena_of(buffers, chains.single_stream_plan(dag, plan.order))
    size, problems = arena_of(buffers, fit.plan)
    assert problems == []
    assert fit.single_bytes == single_size and fit.after_bytes == size
    assert size + resident <= (1 + budget) * (single_size + resident)
    check_plan(dag, fit.plan, num_streams)
    assert fit.plan.streams_used <= plan.streams_used
    if fit.moves:
        assert fit.before_bytes + resident > (1 + budget) * (single_size + resident)
        assert all(fit.plan.stream[m.nodes[0]] != plan.stream[m.nodes[0]] for m in fit.moves)
    else:
        assert fit.plan is plan and fit.before_bytes == fit.after_bytes <= fit.limit_bytes


@settings(max_examples=100, deadline=None)
@given(planned())
def test_budget_zero_gives_the_single_stream_arena(case):
    dag, cost, plan, buffers, _ = case
    fit = stream_memory.fit_memory_budget(dag, plan, cost, buffers, 0.0)
    assert fit.after_bytes == fit.single_bytes


@settings(max_examples=60, deadline=None)
@given(planned())
def test_huge_budget_keeps_the_unconstrained_plan(case):
    dag, cost, plan, buffers, _ = case
    for budget in (1e9, float("inf")):
        fit = stream_memory.fit_memory_budget(dag, plan, cost, buffers, budget)
        assert fit.plan is plan and fit.moves == []
        assert fit.before_bytes == fit.after_bytes == arena.plan_arena(buffers, plan)[1]


@settings(max_examples=100, deadline=None)
@given(planned())
def test_moving_every_branch_gives_one_stream_and_ranks_by_bytes_per_us(case):
    dag, cost, plan, buffers, _ = case
    ranked = stream_memory.ranked_moves(plan, dag, cost, buffers)
    side = [v for v in plan.order if plan.stream[v] != 0]
    assert sorted(v for m in ranked for v in m.nodes) == sorted(side)
    rates = [m.held_bytes / m.overlap_us for m in ranked]
    assert rates == sorted(rates, reverse=True)
    moved = stream_memory.moved_plan(plan, dag, ranked)
    assert set(moved.stream.values()) == {0} and moved.events == 0


def heads(count, size):
    """``count`` independent branches a -> b -> c joined by one node: every branch's
    buffers are ``size`` bytes."""
    dag = nx.DiGraph()
    for h in range(count):
        nx.add_path(dag, [(h, 0), (h, 1), (h, 2), "join"])
    order = [(h, i) for h in range(count) for i in range(3)] + ["join"]
    buffers = [Buffer(v, size, v, tuple(dag.successors(v))) for v in order[:-1]]
    return dag, order, {v: 10.0 for v in order}, buffers


def test_wide_heads_get_fewer_streams_and_the_cheapest_overlap_stays():
    dag, order, cost, buffers = heads(8, 1 << 20)
    plan = chains.plan_streams(dag, order, cost, 8)
    assert plan.streams_used == 8
    fit = stream_memory.fit_memory_budget(dag, plan, cost, buffers, 0.5)
    assert fit.before_bytes > 1.5 * fit.single_bytes >= fit.after_bytes
    assert 1 < fit.plan.streams_used < 8 and len(fit.moves) == 8 - fit.plan.streams_used
    assert all(len(m.nodes) == 3 and m.held_bytes == 3 << 20 for m in fit.moves)
    # parameters far larger than the arena leave room for every stream
    roomy = stream_memory.fit_memory_budget(dag, plan, cost, buffers, 0.5, 64 << 20)
    assert roomy.plan is plan and roomy.moves == []
    # a head with small buffers costs fewer bytes per microsecond: it is the last to go back
    light = [Buffer(b.name, 256, b.producer, b.users) if b.producer[0] == 7 else b
             for b in buffers]
    ranked = stream_memory.ranked_moves(plan, dag, cost, light)
    assert ranked[-1].nodes[0] == (7, 0)


@settings(max_examples=120, deadline=None)
@given(planned(), st.sampled_from([0.0, 0.1, 0.5]), st.sampled_from([1 << 12, 1 << 18]),
       st.data())
def test_side_stream_workspaces_count_toward_the_budget(case, budget, workspace, data):
    """With some nodes paying a library workspace per side stream that runs one, the fitted
    plan's arena plus those workspaces stays within the budget."""
    dag, cost, plan, buffers, _ = case
    gemms = frozenset(data.draw(st.sets(st.sampled_from(plan.order))))
    fit = stream_memory.fit_memory_budget(dag, plan, cost, buffers, budget, 1 << 10,
                                          workspace, gemms)
    size, problems = arena_of(buffers, fit.plan)
    assert problems == []
    side = stream_memory.side_workspaces(fit.plan, gemms)
    assert fit.workspaces_after == side and fit.after_bytes == size + workspace * side
    assert fit.after_bytes <= fit.limit_bytes or fit.plan.streams_used == 1
    assert fit.single_bytes == arena_of(buffers, chains.single_stream_plan(dag, plan.order))[0]


def test_heads_whose_workspaces_outweigh_the_budget_go_back_to_one_stream():
    """Eight small heads, each with a matmul: a 32 MiB workspace per side stream dwarfs the
    17 MiB the call holds anyway, so the default budget keeps one stream; without
    workspace nodes the same heads keep all eight."""
    dag, order, cost, buffers = heads(8, 1 << 10)
    plan = chains.plan_streams(dag, order, cost, 8)
    gemms = frozenset((h, 0) for h in range(8))
    fit = stream_memory.fit_memory_budget(dag, plan, cost, buffers, 0.1, 17 << 20, 32 << 20,
                                          gemms)
    assert fit.workspaces_before == 7 and fit.workspaces_after == 0
    assert fit.plan.streams_used == 1 and fit.before_bytes > 7 * (32 << 20)
    free = stream_memory.fit_memory_budget(dag, plan, cost, buffers, 0.1, 17 << 20)
    assert free.plan is plan and free.moves == []
    roomy = stream_memory.fit_memory_budget(dag, plan, cost, buffers, 0.1, 4 << 30, 32 << 20,
                                            gemms)
    assert roomy.plan is plan and roomy.workspaces_after == 7
