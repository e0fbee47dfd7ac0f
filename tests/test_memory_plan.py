"""The memory plan pass on FX graphs: what is planned, what never is, and overlap safety."""

import networkx as nx
import torch

from kitsune_backend.passes.memory_plan import find_buffers, plan_memory
from kitsune_backend.passes.streams import assign_streams
from kitsune_backend.passes import arena_planning as arena
from tests.helpers_graphs import branchy, branchy_graph, context, order_graph, trace


def planned(gm, ctx):
    assign_streams(gm, ctx)
    return plan_memory(gm, ctx)


def test_chain_reuses_dead_buffers_and_never_plans_inputs_or_outputs():
    gm, inputs = trace(lambda x: torch.relu(x).exp().neg().sin(), (16, 16))
    result = planned(gm, context(inputs))
    offsets = {n.name: n.meta.get("kitsune_offset") for n in gm.graph.nodes}
    assert sorted([offsets["relu"], offsets["exp"]]) == [0, 1024]  # both live: side by side
    assert offsets["neg"] == offsets["relu"]  # relu died when exp finished
    assert offsets["sin"] is None and offsets["x_1"] is None  # output and input
    assert result.stats["bytes_intermediates"] == 3 * 1024
    assert result.stats["bytes_planned"] == 2 * 1024 == result.stats["bytes_eager_peak"]


def test_multi_stream_plan_respects_happens_before():
    gm, inputs = branchy_graph()
    ctx = context(inputs, num_streams=4, stream_memory_budget=float("inf"))
    result = planned(gm, ctx)
    plan = ctx.stream_plan
    assert plan.streams_used == 4 and result.declines == []
    reach = nx.transitive_closure_dag(order_graph(plan))
    mem = ctx.memory_plan
    assert arena.check_plan(mem.buffers, mem.offsets, lambda a, b: reach.has_edge(a, b)) == []
    assert result.stats["bytes_planned"] <= result.stats["bytes_intermediates"]
    # the four branches run concurrently, so their first buffers cannot share bytes
    mms = [n for n in gm.graph.nodes if n.target == torch.ops.aten.mm.default]
    assert len({n.meta["kitsune_offset"] for n in mms}) == 4


def test_tuple_outputs_are_named_by_their_getitem():
    def fn(x, w, b):
        y = torch.nn.functional.layer_norm(x, (32,), w, b)
        return y.relu() * 2

    gm, inputs = trace(fn, (8, 32), (32,), (32,))
    names = [b.name for b in find_buffers(gm)[0]]
    assert len(names) == len(set(names))
    planned(gm, context(inputs))


def test_declines():
    gm, inputs = trace(lambda x: x.relu().exp(), (4, 4))
    result = planned(gm, context(inputs, memory_pool=False))
    assert "memory_pool=False" in result.declines[0].reason
    assert not any("kitsune_offset" in n.meta for n in gm.graph.nodes)


def wide_heads(x, *ws):
    """Independent heads, each with two 1 MiB intermediates, reduced to one column each."""
    return torch.cat([torch.relu(x @ w).exp().sum(1, keepdim=True) for w in ws], 1)


def test_wide_heads_get_fewer_streams_within_the_budget_and_say_why():
    """The heads' 32 MiB of weights count in the single-stream peak (about 34 MiB, of
    which 2 MiB arena); 8 streams need about 16 MiB of arena."""
    results = {}
    for budget in (0.02, 0.2, float("inf")):
        gm, inputs = trace(wide_heads, (64, 256), *[(256, 4096)] * 8)
        ctx = context(inputs, stream_memory_budget=budget)
        results[budget] = (planned(gm, ctx), ctx)
    free, _ = results[float("inf")]
    single = free.stats["bytes_single_stream"]
    assert free.stats["streams_used"] == 8 and free.stats["bytes_planned"] > 4 * single
    for budget in (0.02, 0.2):
        result, ctx = results[budget]
        stats = result.stats
        assert stats["streams_wanted"] == 8 > stats["streams_used"] == ctx.stream_plan.streams_used
        assert stats["bytes_single_stream"] == single
        assert stats["bytes_streams_unbudgeted"] == free.stats["bytes_planned"]
        resident = stats["bytes_resident"]
        assert resident >= 8 * 256 * 4096 * 4 + 64 * 256 * 4  # weights and x, at least
        assert stats["bytes_planned"] + resident <= (1 + budget) * (single + resident)
        assert stats["bytes_peak_planned"] > stats["bytes_planned"]  # plus the output
        kept = [d for d in result.declines if d.reason.startswith("kept on stream")]
        assert len(kept) == stats["branches_kept_back"] == 8 - stats["streams_used"]
        assert all("past the memory budget" in d.reason and "us of overlap" in d.reason
                   for d in kept)
        assert {d.node for d in kept} <= {n.name for n in ctx.stream_plan.order}
        plan = ctx.stream_plan
        assert all(n.meta["kitsune_stream"] == plan.stream[n] and n.meta["kitsune_wait"]
                   == [u.name for u in plan.waits[n]] for n in plan.order)
        reach = nx.transitive_closure_dag(order_graph(plan))
        mem = ctx.memory_plan
        assert arena.check_plan(mem.buffers, mem.offsets, lambda a, b: reach.has_edge(a, b)) == []
    assert results[0.02][0].stats["streams_used"] < results[0.2][0].stats["streams_used"]


def test_one_stream_reports_its_own_arena_as_the_single_stream_arena():
    gm, inputs = trace(lambda x: torch.relu(x).exp().neg().sin(), (16, 16))
    stats = planned(gm, context(inputs)).stats
    assert stats["bytes_single_stream"] == stats["bytes_planned"] == 2 * 1024
    assert stats["bytes_peak_planned"] == 2 * 1024 + 1024  # the returned sin
    assert "streams_wanted" not in stats


def test_without_an_arena_the_budget_moves_nothing():
    gm, inputs = trace(wide_heads, (64, 256), *[(256, 4096)] * 8)
    ctx = context(inputs, memory_pool=False, stream_memory_budget=0.0)
    result = planned(gm, ctx)
    assert ctx.stream_plan.streams_used == 8
    assert [d.reason for d in result.declines] == ["memory pool is off (memory_pool=False)"]


def test_the_default_budget_keeps_the_streams_of_heads_whose_weights_dominate():
    """Four heads of 256x256 weights (1 MiB) over a 16-row batch: their intermediates
    (16 KiB each) add little to the call's peak, so the default budget keeps every head on
    its own stream, though the arena alone grows well past one stream's."""
    gm, inputs = trace(branchy, (16, 256), *[(256, 256)] * 4)
    ctx = context(inputs, num_streams=4)  # stream_memory_budget: the default, 0.10
    stats = planned(gm, ctx).stats
    assert ctx.stream_plan.streams_used == 4 and stats["branches_kept_back"] == 0
    assert stats["bytes_planned"] > 1.5 * stats["bytes_single_stream"]
    assert stats["bytes_planned"] - stats["bytes_single_stream"] <= 0.1 * (
        stats["bytes_single_stream"] + stats["bytes_resident"])


def test_side_streams_that_run_matmuls_pay_a_cublas_workspace(monkeypatch):
    """Four matmul heads: with a 32 MiB workspace per side stream (a Hopper GPU), the
    default budget keeps them on one stream and says why; with no limit they keep four."""
    from kitsune_backend.passes import memory_plan

    monkeypatch.setattr(memory_plan, "cublas_workspace_bytes", lambda device: 32 << 20)
    results = {}
    for budget in (0.1, float("inf")):
        gm, inputs = branchy_graph()
        ctx = context(inputs, num_streams=4, stream_memory_budget=budget)
        results[budget] = (planned(gm, ctx), ctx)
    kept, ctx = results[0.1]
    assert ctx.stream_plan.streams_used == 1 and kept.stats["side_stream_workspaces"] == 0
    assert kept.stats["side_stream_workspaces_unbudgeted"] == 3
    assert kept.stats["bytes_cublas_workspace"] == 32 << 20
    reasons = [d.reason for d in kept.declines if d.reason.startswith("kept on stream")]
    assert reasons and all("cuBLAS workspace" in r for r in reasons)
    free, ctx = results[float("inf")]
    assert ctx.stream_plan.streams_used == 4 and free.stats["side_stream_workspaces"] == 3


def test_the_cublas_workspace_follows_torchs_rule(monkeypatch):
    from kitsune_backend.passes.library_workspace import cublas_workspace_bytes

    assert cublas_workspace_bytes(torch.device("cpu")) == 0
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    assert cublas_workspace_bytes(torch.device("cuda")) == 32 << 20
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:2:16:8")
    assert cublas_workspace_bytes(torch.device("cuda")) == (8 << 20) + (128 << 10)
