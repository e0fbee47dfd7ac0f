"""The stream pass on real FX graphs (traced with fake tensors; CUDA pretended where needed)."""

import torch

from kitsune_backend.ir import PassContext
from kitsune_backend.passes.streams import assign_streams, kernel_dag
from tests.helpers_graphs import branchy_graph, context, trace


def test_branches_go_to_separate_streams_with_events():
    gm, inputs = branchy_graph()
    ctx = context(inputs, num_streams=4)
    result = assign_streams(gm, ctx)
    assert result.declines == []
    assert result.stats["streams_used"] == 4
    streams = {n.name: n.meta.get("kitsune_stream") for n in gm.graph.nodes}
    by_branch = {}
    for node in gm.graph.nodes:
        if node.target == torch.ops.aten.mm.default:
            by_branch[node.name] = streams[node.name]
    assert sorted(by_branch.values()) == [0, 1, 2, 3]
    cat = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.cat.default)
    assert cat.meta["kitsune_stream"] == 0 and len(cat.meta["kitsune_wait"]) == 3
    assert result.stats["events"] == 3  # side streams start after the fork: only cat waits
    assert ctx.stream_plan.joins == []


def test_merged_down_to_num_streams():
    gm, inputs = branchy_graph()
    result = assign_streams(gm, context(inputs, num_streams=2))
    assert result.stats["streams_used"] == 2


def test_declines_with_reasons():
    gm, inputs = branchy_graph()
    cpu = assign_streams(gm, context(inputs, cls=PassContext))
    assert "CPU tensors" in cpu.declines[0].reason and cpu.stats["streams_used"] == 1
    off = assign_streams(gm, context(inputs, streams=False))
    assert "streams=False" in off.declines[0].reason
    chain, inputs = trace(lambda x: torch.relu(x).exp().neg(), (8, 8))
    one = assign_streams(chain, context(inputs))
    assert "one chain" in one.declines[0].reason and one.stats["streams_used"] == 1
    tiny, inputs = trace(lambda x: torch.cat([x.relu(), x.exp()]), (8, 8))
    small = assign_streams(tiny, context(inputs))
    assert "cannot pay" in small.declines[0].reason
    for node in tiny.graph.nodes:
        if "kitsune_stream" in node.meta:
            assert node.meta["kitsune_stream"] == 0 and node.meta["kitsune_wait"] == []


def test_views_launch_nothing_and_writes_are_ordered():
    def fn(x, buf):
        y = x.t().relu()      # t() is a view: no node of its own in the DAG
        z = buf.exp()         # reads buf before the write below
        buf.copy_(y)          # an in-place write into an input
        return z + 1, buf.sum()

    gm, _ = trace(fn, (8, 8), (8, 8))
    dag, order = kernel_dag(gm)
    names = {n.name: n for n in order}
    assert not any(n.target == torch.ops.aten.t.default for n in order)
    copy = next(n for n in order if n.target == torch.ops.aten.copy_.default)
    exp = next(n for n in order if n.target == torch.ops.aten.exp.default)
    total = next(n for n in order if n.target == torch.ops.aten.sum.default)
    assert dag.has_edge(exp, copy)  # write after read
    assert dag.has_edge(copy, total) or any(dag.has_edge(copy, s) for s in dag.successors(copy))
    # every node that launches work, in graph order; the view t() is not one
    assert list(names) == ["relu", "exp", "copy_", "add", "sum_1"]


def test_plan_is_the_same_for_the_same_graph():
    plans = []
    for _ in range(3):
        gm, inputs = branchy_graph()
        assign_streams(gm, context(inputs, num_streams=3))
        plans.append({n.name: (n.meta.get("kitsune_stream"), tuple(n.meta.get("kitsune_wait", ())))
                      for n in gm.graph.nodes})
    assert plans[0] == plans[1] == plans[2]


def test_cost_model_counts_matmul_and_conv_flops():
    from kitsune_backend.passes.stream_cost import LAUNCH_US, node_bytes, node_cost_us, node_flops

    mm, _ = trace(lambda a, b: a @ b, (64, 128), (128, 32))
    node = next(n for n in mm.graph.nodes if n.target == torch.ops.aten.mm.default)
    assert node_flops(node) == 2 * 64 * 128 * 32
    assert node_bytes(node) == 4 * (64 * 128 + 128 * 32 + 64 * 32)
    assert node_cost_us(node) > LAUNCH_US
    conv, _ = trace(lambda x, w: torch.nn.functional.conv2d(x, w, padding=1), (1, 8, 16, 16),
                    (4, 8, 3, 3))
    node = next(n for n in conv.graph.nodes if n.target == torch.ops.aten.convolution.default)
    assert node_flops(node) == 2 * (1 * 4 * 16 * 16) * (8 * 3 * 3)
