"""Generated source and launches: names, headers, indexing width, looped rows, out=, strides."""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

from kitsune_backend.codegen import heuristics
from kitsune_backend.passes.grouping import find_regions
from kitsune_backend.codegen.source import generate
from kitsune_backend.passes.fusion import kernel_name
from tests.helpers import assert_close, check, rand
from tests.helpers_graphs import fused


def test_kernel_name_says_what_it_does():
    _, (kernel,) = fused(lambda x: F.gelu(x + 1), rand(4, 4))
    assert kernel.__name__ == "kitsune_fused_add_gelu_0"
    assert kernel.__module__ == "kitsune_backend.kernels"
    assert f"def {kernel.__name__}(in0, out0):" in kernel.source


def test_header_lists_nodes_shapes_and_launch():
    _, (kernel,) = fused(lambda x: torch.softmax(x, -1), rand(3, 10))
    source = kernel.source
    assert "# FX nodes: amax, sub, exp, sum_1, div" in source
    assert "# in0: x_1 float32[3, 10] strides (10, 1)" in source
    assert "one pass per row" in source and "RBLOCK=16" in source
    assert "rmask = k < 10" in source


def test_int64_indexing_only_past_two_to_the_31():
    small = make_fx(lambda x: torch.relu(x) + 1, tracing_mode="fake")(rand(8))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        huge_input = torch.empty(2**31 + 16, dtype=torch.float16)
    huge = make_fx(lambda x: torch.relu(x) + 1, tracing_mode="fake")(huge_input)
    sources = []
    for gm in (small, huge):
        grouping = find_regions(gm, torch.device("cpu"))
        (region,) = grouping.regions
        inputs = sorted(region.external, key=grouping.index.__getitem__)
        outputs = [n for n in region.nodes if any(u not in region.context for u in n.users)]
        config = heuristics.pointwise_config(region.numel)
        sources.append(generate(region, "k", inputs, outputs, config).source)
    assert "tl.int64" not in sources[0]
    assert "tl.program_id(0).to(tl.int64)" in sources[1]


def test_long_rows_loop_and_match_eager(monkeypatch):
    monkeypatch.setattr(heuristics, "ONE_PASS_LIMIT", 32)
    monkeypatch.setattr(heuristics, "LOOP_RBLOCK", 16)
    x = rand(3, 101)
    gm, (kernel,) = fused(lambda t: torch.softmax(t, -1), x)
    assert kernel.source.count("for roff in range(0, 101, 16):") == 3
    assert_close(gm(x), torch.softmax(x, -1))
    w, b = rand(101), rand(101)
    gm, kernels = fused(lambda t, w, b: F.layer_norm(t, (101,), w, b), x, w, b)
    assert len(kernels) == 1
    assert_close(gm(x, w, b), F.layer_norm(x, (101,), w, b))


def test_out_keyword_writes_into_given_tensors():
    x = rand(5, 6)
    def fn(t):
        y = t.exp() + 1
        return y, y.sigmoid() * 2

    _, (kernel,) = fused(fn, x)
    outs = (torch.empty(5, 6), torch.empty(5, 6))
    result = kernel(x, out=outs)
    assert result[0] is outs[0] and result[1] is outs[1]
    assert_close(outs, fn(x))


def test_outputs_get_the_strides_eager_gives():
    x = rand(6, 4).t()
    session = check(lambda t: torch.relu(t + 1) * 2, x)
    compiled_out = torch.compile(lambda t: torch.relu(t + 1) * 2, backend="kitsune")(x)
    assert compiled_out.stride() == (torch.relu(x + 1) * 2).stride()
    assert session.forward.kernels


def test_zero_size_launches_nothing():
    x = rand(0, 3)
    _, (kernel,) = fused(lambda t: t.exp() + 1, x)
    assert kernel.generated.grid == 0
    assert kernel(x).shape == (0, 3)


def test_unexpected_strides_run_aten_and_say_why():
    x = rand(4, 6)
    _, (kernel,) = fused(lambda t: t.exp() + 1, x)
    other = rand(6, 4).t()
    assert_close(kernel(other), other.exp() + 1)
    assert kernel.fallback_calls == 1
    assert "generated for" in kernel.last_fallback_reason


def test_multi_output_region_is_one_node_with_getitems():
    def fn(t):
        y = t.exp() + 1
        return y, y.sum(-1)

    gm, (kernel,) = fused(fn, rand(4, 5))
    users = [n for n in gm.graph.nodes if n.target is operator.getitem]
    assert len(users) == 2
    assert isinstance(next(n for n in gm.graph.nodes if n.target is kernel).meta["val"], tuple)


def test_heuristics_scale_with_size():
    assert heuristics.pointwise_config(10) == heuristics.LaunchConfig(16, 0, 1)
    big = heuristics.pointwise_config(1 << 26)
    assert big.xblock == 1024 and big.num_warps == 4
    row = heuristics.reduction_config(8192, 4096)
    assert (row.xblock, row.rblock, row.num_warps) == (1, 4096, 8)
    small_rows = heuristics.reduction_config(8192, 64)
    assert small_rows.xblock == 32 and small_rows.rblock == 64
    looped = heuristics.reduction_config(4, 100000)
    assert looped.rblock == heuristics.LOOP_RBLOCK
    assert heuristics.candidates(big, 0)[0] == big


def test_kernel_name_helper_skips_views():
    gm = make_fx(lambda x: torch.relu(x.view(-1) + 1), tracing_mode="fake")(rand(2, 3))
    grouping = find_regions(gm, torch.device("cpu"))
    assert kernel_name(grouping.regions[0], 7) == "kitsune_fused_add_relu_7"
    assert isinstance(gm, fx.GraphModule)
