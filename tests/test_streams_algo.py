"""Stream planning on plain random DAGs: every dependency is enforced, events are few."""

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from kitsune_backend.passes import stream_planning as chains
from tests.helpers_graphs import dags, order_graph


def check_plan(dag, plan, num_streams):
    hb = order_graph(plan)
    for u, v in dag.edges():
        assert nx.has_path(hb, u, v), f"dependency {u}->{v} not enforced"
    assert plan.streams_used <= num_streams
    reach = nx.transitive_closure_dag(hb)
    for a in plan.order:
        for b in plan.order:
            assert plan.happens_before(a, b) == reach.has_edge(a, b), (a, b)
    chain_of = {v: i for i, c in enumerate(plan.chains) for v in c}
    assert sorted(chain_of) == sorted(plan.order)
    assert plan.events <= chains.transitive_reduction_cross_edges(dag, chain_of.get)
    assert plan.events <= chains.transitive_reduction_cross_edges(dag, plan.stream.get)


@settings(max_examples=150, deadline=None)
@given(dags(), st.integers(1, 5))
def test_every_dependency_enforced_and_events_few(case, num_streams):
    dag, order, cost = case
    plan = chains.plan_streams(dag, order, cost, num_streams)
    check_plan(dag, plan, num_streams)


@settings(max_examples=60, deadline=None)
@given(dags())
def test_chains_are_minimal_and_critical_path_on_stream_zero(case):
    dag, order, cost = case
    plan = chains.plan_streams(dag, order, cost, num_streams=64)
    closure = nx.transitive_closure_dag(dag)
    for chain in plan.chains:
        for u, v in zip(chain, chain[1:]):
            assert closure.has_edge(u, v)
    # Dilworth: fewest chains = largest antichain; compare with an unconstrained cover + 1
    free = chains.chain_decomposition(dag, order)
    assert len(plan.chains) <= len(free) + 1
    path = chains.critical_path(dag, order, cost)
    assert all(plan.stream[v] == 0 for v in path)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6))
def test_single_chain_gets_one_stream(n, num_streams):
    dag = nx.path_graph(n, create_using=nx.DiGraph)
    cost = {v: 1.0 for v in range(n)}
    plan = chains.plan_streams(dag, list(range(n)), cost, num_streams)
    assert plan.streams_used == 1 and plan.events == 0 and plan.joins == []


def test_diamond_needs_one_event_and_one_join_at_most():
    dag = nx.DiGraph([(0, 1), (0, 2), (1, 3), (2, 3)])
    cost = {0: 1.0, 1: 10.0, 2: 5.0, 3: 1.0}
    plan = chains.plan_streams(dag, [0, 1, 2, 3], cost, 4)
    assert plan.streams_used == 2
    assert plan.stream[1] == 0 and plan.stream[2] == 1
    assert plan.waits[2] == [0] and plan.waits[3] == [2]
    assert plan.joins == []  # node 3 on the caller's stream already waited for stream 1
    check_plan(dag, plan, 4)


def test_independent_branches_overlap_in_simulation():
    dag = nx.DiGraph()
    branches = 4
    for b in range(branches):
        nx.add_path(dag, [f"b{b}_{i}" for i in range(3)])
        dag.add_edge(f"b{b}_2", "cat")
    order = [f"b{b}_{i}" for b in range(branches) for i in range(3)] + ["cat"]
    cost = {v: 10.0 for v in order}
    plan = chains.plan_streams(dag, order, cost, branches)
    assert plan.streams_used == branches
    end = max(e for _, e in chains.simulate(plan, dag, cost).values())
    assert end == 40.0  # 3 per branch in parallel, then cat
    single = chains.single_stream_plan(dag, order)
    assert max(e for _, e in chains.simulate(single, dag, cost).values()) == 130.0
