"""Graphs with torch.distributed collectives (functional collectives, as Dynamo traces them
under FSDP2 or from user code): collectives and their waits stay on the caller's stream,
work that does not depend on them may overlap them, and such graphs are not captured."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fc
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

import kitsune_backend
from kitsune_backend.binding.capture import capture_decline
from kitsune_backend.graph_utils import is_collective
from kitsune_backend.passes.streams import assign_streams
from tests.helpers import assert_close
from tests.helpers_graphs import context


@pytest.fixture(scope="module")
def group():
    """A one-process gloo group (collectives then trace and run on the CPU)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def reduce_beside_heavy_work(x, w1, w2, w3):
    """A light branch through an all-reduce beside a heavier branch of matmuls: the heavy
    one is the critical path (stream 0), so the plan would put the collective aside."""
    reduced = fc.all_reduce(x.relu(), "sum", dist.group.WORLD) * 2
    heavy = ((x @ w1).relu() @ w2).relu() @ w3
    return heavy + reduced


def test_collectives_stay_on_the_callers_stream_and_work_beside_them_overlaps(group):
    inputs = [torch.randn(256, 256) for _ in range(4)]
    gm = make_fx(reduce_beside_heavy_work, tracing_mode="fake")(*inputs)
    ctx = context(inputs, num_streams=4)
    assign_streams(gm, ctx)
    collectives = [n for n in gm.graph.nodes if is_collective(n)]
    assert {n.target.__name__.split(".")[0] for n in collectives} == {"all_reduce",
                                                                      "wait_tensor"}
    plan = ctx.stream_plan
    assert all(plan.stream[n] == 0 for n in collectives)
    assert plan.streams_used > 1  # the other branch still overlaps the collective


def test_a_graph_with_a_collective_is_not_captured(group):
    with FakeTensorMode():
        inputs = [torch.empty(8, 8, device="cuda") for _ in range(4)]
    gm = make_fx(reduce_beside_heavy_work, tracing_mode="fake")(
        *[torch.randn(8, 8) for _ in range(4)])
    reason = capture_decline(gm, inputs, static=())
    assert "is a collective" in reason and "all_reduce" in reason


def test_a_compiled_function_with_a_collective_matches_eager(group):
    args = [torch.randn(16, 16) for _ in range(4)]
    compiled = torch.compile(reduce_beside_heavy_work, backend="kitsune",
                             options={"strict": True})
    assert_close(compiled(*args), reduce_beside_heavy_work(*args))
    record = kitsune_backend.last_compile().forward
    assert any("all_reduce" in line for line in record.input_code.splitlines())
