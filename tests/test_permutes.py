"""The permutes stage: pointwise ops move into the layout their consumer reads, with the
same results and the same layouts, and the kernels that follow from it."""

import hypothesis
import hypothesis.strategies as st
import torch
import torch.nn as nn

import kitsune_backend
from kitsune_backend.passes.permutes import hoist_permutes
from tests.helpers import assert_close, check
from tests.helpers_graphs import context, trace

aten = torch.ops.aten


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def _hoisted(fn, *shapes):
    """(graph before, graph after, inputs, stats)."""
    before, inputs = trace(fn, *shapes)
    after, _ = trace(fn, *shapes)
    result = hoist_permutes(after, context(inputs))
    return before, after, inputs, result.stats


def _strides(t):
    """The strides that place elements (a size-1 dim's stride places none)."""
    return [s for s, n in zip(t.stride(), t.shape) if n > 1]


def _same_results(before, after, inputs):
    expected, actual = before(*inputs), after(*inputs)
    for e, a in zip(expected if isinstance(expected, (tuple, list)) else [expected],
                    actual if isinstance(actual, (tuple, list)) else [actual]):
        assert (a.shape, _strides(a), a.dtype) == (e.shape, _strides(e), e.dtype)
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def conv_bias_then_channels_last(conv, bias):
    y = (conv + bias.view(1, -1, 1, 1)).permute(0, 2, 3, 1)
    return y.contiguous() * 2


def test_a_bias_add_moves_into_the_channels_last_layout():
    before, after, inputs, stats = _hoisted(conv_bias_then_channels_last, (2, 8, 4, 4), (8,))
    assert stats["permutes_hoisted"] == 1
    adds = [n for n in after.graph.nodes if n.target is aten.add.Tensor]
    assert [tuple(n.meta["val"].shape) for n in adds] == [(2, 4, 4, 8)]
    assert all(a.target is aten.permute.default for a in adds[0].all_input_nodes)
    _same_results(before, after, inputs)


def test_a_chain_of_pointwise_ops_is_climbed_to_its_start():
    def fn(x, s):
        return torch.sigmoid(torch.relu(x) * s).permute(0, 2, 1) + 1

    before, after, inputs, stats = _hoisted(fn, (3, 5, 7), (7,))
    assert stats["permutes_hoisted"] == 3  # sigmoid, mul, relu
    permutes = [n for n in after.graph.nodes if n.target is aten.permute.default]
    assert {p.args[0].name for p in permutes} >= {"x_1"}
    _same_results(before, after, inputs)


def test_nothing_moves_where_work_would_be_duplicated_or_left_alone():
    def shared(x):  # the relu has a second user: moving it would compute it twice
        y = torch.relu(x)
        return y.permute(1, 0) * 2, y

    def into_a_matmul(x, w):  # the consumer is a library call: no kernel to join
        return torch.relu(x).permute(1, 0) @ w

    for fn, shapes in ((shared, [(4, 6)]), (into_a_matmul, [(4, 6), (4, 3)])):
        before, after, inputs, stats = _hoisted(fn, *shapes)
        assert stats["permutes_hoisted"] == 0, fn.__name__
        assert _targets(after) == _targets(before)


def test_random_dropout_is_never_moved():
    def fn(x):
        return torch.ops.aten.native_dropout(x, 0.5, True)[0].permute(1, 0) * 2

    _, after, _, stats = _hoisted(fn, (4, 6))
    assert stats["permutes_hoisted"] == 0


UNARY = [torch.relu, torch.sigmoid, torch.neg, torch.exp, torch.tanh]


@st.composite
def programs(draw):
    """A chain of pointwise ops over a tensor of 2-4 dims (some with a broadcast operand of
    lower rank), a permute, then a pointwise or reducing consumer."""
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))
    ops = draw(st.lists(st.tuples(st.sampled_from(["unary", "binary", "scalar"]),
                                  st.integers(0, len(UNARY) - 1), st.integers(0, rank)),
                        min_size=1, max_size=4))
    dims = draw(st.permutations(list(range(rank))))
    consumer = draw(st.sampled_from(["mul", "sum", "contiguous"]))
    return shape, ops, list(dims), consumer


def _program(shape, ops, dims, consumer):
    def fn(x, *operands):
        y = x
        for (kind, which, _), operand in zip(ops, operands):
            if kind == "unary":
                y = UNARY[which](y)
            elif kind == "binary":
                y = y * operand
            else:
                y = y + 0.5
        y = y.permute(*dims)
        if consumer == "mul":
            return y * 3
        if consumer == "sum":
            return y.sum(-1)
        return y.contiguous()

    operand_shapes = [shape[keep:] or (1,) for _, _, keep in ops]
    return fn, [shape, *operand_shapes]


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(programs())
def test_hoisting_keeps_every_result_and_layout(program):
    fn, shapes = _program(*program)
    before, after, inputs, _ = _hoisted(fn, *shapes)
    _same_results(before, after, inputs)
    for node in after.graph.nodes:  # every moved op has its recorded value
        if node.op == "call_function":
            assert isinstance(node.meta.get("val"), torch.Tensor), node.name


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, channels-last LayerNorm, MLP, layer scale, residual."""

    def __init__(self, dim=16):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(torch.nn.functional.gelu(self.pw1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


def test_a_convnext_block_puts_its_bias_add_in_the_norm_kernel_and_scale_in_the_residual():
    """The conv's bias add joins the LayerNorm's kernel and the layer scale joins the
    residual add: nothing of either is left as an ATen op of its own."""
    torch.manual_seed(0)
    model = ConvNeXtBlock().eval()
    with torch.no_grad():
        session = check(model, torch.randn(2, 16, 6, 6))
    record = session.forward
    assert record.stats["permutes_hoisted"] == 2
    kept = [d for d in record.declines if "kept as ATen" in d.reason]
    assert kept == [], [str(d) for d in kept]
    by_node = {n for k in record.kernels for n in k.nodes}
    assert any(n.startswith("add") for n in by_node)


def test_a_convnext_block_trains_with_eager_gradients():
    torch.manual_seed(0)
    kitsune_backend.clear_history()
    check(ConvNeXtBlock(), torch.randn(2, 16, 6, 6), grad=True)


def test_nothing_moves_with_fusion_off():
    gm, inputs = trace(conv_bias_then_channels_last, (2, 8, 4, 4), (8,))
    before = _targets(gm)
    assert hoist_permutes(gm, context(inputs, fusion=False)).stats["permutes_hoisted"] == 0
    assert _targets(gm) == before
