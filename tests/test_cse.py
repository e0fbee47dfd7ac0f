"""Common-subexpression elimination (part of the cleanup pass): what merges, what must not."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F

import kitsune_backend
from kitsune_backend.passes.cse import eliminate_common_subexpressions
from tests.helpers import assert_close

aten = torch.ops.aten


def _graph(build) -> fx.GraphModule:
    graph = fx.Graph()
    x = graph.placeholder("x")
    m = graph.placeholder("m")
    graph.output(build(graph, x, m))
    return fx.GraphModule(torch.nn.Module(), graph)


def _ops(gm: fx.GraphModule) -> list[str]:
    return [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"]


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(4, 5), torch.randn(4, 5) > 0


def _check_same_results(gm: fx.GraphModule, build) -> None:
    """The merged graph computes what the original computes, on random inputs."""
    reference = _graph(build)
    x, m = _inputs()
    for got, want in zip(gm(x.clone(), m), reference(x.clone(), m)):
        assert_close(got, want)


def test_repeated_mask_construction_is_computed_once():
    def build(g, x, m):
        outs = []
        for _ in range(3):  # what each GPT-2 layer does with the attention mask
            zero = g.call_function(aten.scalar_tensor.default, (0.0,))
            ninf = g.call_function(aten.scalar_tensor.default, (float("-inf"),))
            mask = g.call_function(aten.where.self, (m, zero, ninf))
            outs.append(g.call_function(aten.add.Tensor, (x, mask)))
        return tuple(outs)

    gm = _graph(build)
    merged = eliminate_common_subexpressions(gm)
    assert merged == 2 * 3 + 2  # two scalar_tensors, one where, one add per extra layer
    assert sorted(_ops(gm)) == ["add.Tensor", "scalar_tensor.default", "scalar_tensor.default",
                                "where.self"]
    _check_same_results(gm, build)


def test_different_constants_stay_apart():
    def build(g, x, m):
        a = g.call_function(aten.mul.Tensor, (x, 0.0))
        b = g.call_function(aten.mul.Tensor, (x, -0.0))
        c = g.call_function(aten.mul.Tensor, (x, 2))
        d = g.call_function(aten.mul.Tensor, (x, 2.0))
        return (a, b, c, d)

    gm = _graph(build)
    assert eliminate_common_subexpressions(gm) == 0
    _check_same_results(gm, build)


def test_random_ops_are_never_merged():
    def build(g, x, m):
        a = g.call_function(aten.rand_like.default, (x,))
        b = g.call_function(aten.rand_like.default, (x,))
        return (a, b)

    gm = _graph(build)
    assert eliminate_common_subexpressions(gm) == 0
    a, b = gm(*_inputs())
    assert not torch.equal(a, b)


def test_buffers_with_undefined_contents_are_never_merged():
    def build(g, x, m):
        a = g.call_function(aten.empty_like.default, (x,))
        b = g.call_function(aten.empty_like.default, (x,))
        g.call_function(aten.fill_.Scalar, (a, 1.0))
        g.call_function(aten.fill_.Scalar, (b, 2.0))
        return (a, b)

    gm = _graph(build)
    assert eliminate_common_subexpressions(gm) == 0
    a, b = gm(*_inputs())
    assert torch.all(a == 1) and torch.all(b == 2)


def test_a_write_between_two_reads_keeps_them_apart():
    def build(g, x, m):
        before = g.call_function(aten.mul.Tensor, (x, 3))
        g.call_function(aten.add_.Tensor, (x, 1))  # x changes here
        after = g.call_function(aten.mul.Tensor, (x, 3))
        return (before, after)

    gm = _graph(build)
    assert eliminate_common_subexpressions(gm) == 0
    x, m = _inputs()
    before, after = gm(x.clone(), m)
    assert_close(after - before, torch.full_like(x, 3.0))


def test_results_written_in_place_later_are_not_shared():
    def build(g, x, m):
        a = g.call_function(aten.mul.Tensor, (x, 3))
        b = g.call_function(aten.mul.Tensor, (x, 3))
        g.call_function(aten.add_.Tensor, (b, 1))  # only b changes
        return (a, b)

    gm = _graph(build)
    assert eliminate_common_subexpressions(gm) == 0
    x, m = _inputs()
    a, b = gm(x.clone(), m)
    assert_close(b - a, torch.ones_like(x))


class _RepeatedMask(torch.nn.Module):
    """Each of three blocks builds the same additive mask from a boolean one (as HF does)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(3))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            mask = torch.where(keep, torch.scalar_tensor(0.0), torch.scalar_tensor(float("-inf")))
            x = F.softmax(block(x) + mask, dim=-1)
        return x


def test_cleanup_merges_duplicates_in_a_compiled_model_and_results_match():
    torch.manual_seed(0)
    model = _RepeatedMask()
    x = torch.randn(4, 8)
    keep = torch.rand(4, 8) > 0.2
    keep[:, 0] = True  # no fully masked rows (softmax of all -inf is nan in both)
    kitsune_backend.clear_history()
    compiled = torch.compile(model, backend="kitsune")
    with torch.no_grad():
        assert_close(compiled(x, keep), model(x, keep))
    stats = kitsune_backend.last_compile().forward.stats
    assert stats["duplicates_merged"] >= 4  # two layers' where (+ their constants)
