"""ATen library calls write their outputs into the planned arena through out= overloads."""

import copy

import hypothesis
import hypothesis.strategies as st
import pytest
import torch
import torch.fx as fx

import kitsune_backend
from kitsune_backend.passes import arena_planning as arena_algo
from kitsune_backend.binding import arena as arena_binding
from kitsune_backend.runtime.arena import Arena, InArena
from kitsune_backend.runtime.aten_out import (
    WRITTEN_INTO,
    AtenInArena,
    direct_out,
    has_device_kernel,
    meta_mismatch,
    out_variant,
)
from tests.helpers import assert_close
from tests.helpers_cases import BmmMlp, matmuls_between_regions, step_matches_eager

aten = torch.ops.aten
CPU = torch.device("cpu")


def fresh_inputs():
    return (
        torch.randn(8, 16), torch.randn(16, 16), torch.randn(2, 16, 16), torch.randn(2, 4, 16)
    )


def test_matmuls_and_cat_write_into_the_arena_and_match_eager():
    compiled = torch.compile(
        matmuls_between_regions, backend="kitsune", options={"strict": True}
    )
    for _ in range(3):  # fresh inputs each call: a stale or clobbered buffer would show
        args = fresh_inputs()
        assert_close(compiled(*args), matmuls_between_regions(*args))
    record = kitsune_backend.last_compile().records[0]
    info = record.stats
    # mm, bmm, baddbmm, cat (twice) and the mm after them are planned intermediates.
    assert info["arena_aten_nodes"] == 6, info
    assert info["arena_aten_left"] == {}, info
    assert info["arena_kernels"] >= 2, info
    assert 0 < info["arena_bytes"] <= record.stats["bytes_intermediates"]


def test_training_forward_and_backward_place_aten_nodes_and_match_eager():
    torch.manual_seed(0)
    model = BmmMlp()
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, backend="kitsune", options={"strict": True})
    for _ in range(2):
        step_matches_eager(model, twin, compiled, torch.randn(8, 16))
    session = kitsune_backend.last_compile()
    assert session.forward.stats["arena_aten_nodes"] >= 2, session.forward.stats
    assert session.backward.stats["arena_aten_nodes"] >= 2, session.backward.stats


def three_matmuls(x, w):
    return ((x @ w) @ w) @ w  # two intermediates, each read by the next matmul


def all_at_zero(buffers, plan, alignment=arena_algo.ALIGNMENT, shared=None):
    """A deliberately bad plan: every buffer at offset 0, clashing or not."""
    sizes = [arena_algo.align(max(b.size, 1), alignment) for b in buffers]
    return {b.name: 0 for b in buffers}, max(sizes, default=0)


def test_bad_plan_is_caught_before_an_op_writes_over_its_own_input(monkeypatch):
    monkeypatch.setattr(arena_algo, "plan_arena", all_at_zero)
    compiled = torch.compile(three_matmuls, backend="kitsune")
    x, w = torch.randn(8, 16), torch.randn(16, 16)
    assert_close(compiled(x, w), three_matmuls(x, w))
    record = kitsune_backend.last_compile().records[0]
    left = record.stats["arena_aten_left"]
    assert left == {"aten.mm: its arena view would overlap a buffer it reads (bad memory plan)": 1}
    declines = [d for d in record.declines if d.stage == "arena"]
    assert [d.node for d in declines] == ["mm_1"]
    assert record.stats["arena_aten_nodes"] == 1  # the first mm reads only inputs


def matmul_then_cat(x, w):
    return torch.cat([x @ w, x], 1) @ torch.cat([w, w], 0)


def test_without_the_overlap_check_the_bad_plan_gives_wrong_results(monkeypatch):
    """The check above is what keeps the result right: with it off, the first cat writes
    over the matmul result it reads. ATen's cat refuses such an ``out=`` (a RuntimeError);
    a matmul may instead give wrong numbers or, in recent CPU builds, copy on its own, so
    the case is a cat."""
    monkeypatch.setattr(arena_algo, "plan_arena", all_at_zero)
    monkeypatch.setattr(arena_binding, "_overlaps", lambda ranges: False)
    compiled = torch.compile(matmul_then_cat, backend="kitsune")
    x, w = torch.randn(8, 16), torch.randn(16, 16)
    with pytest.raises((AssertionError, RuntimeError)):
        assert_close(compiled(x, w), matmul_then_cat(x, w))
    assert kitsune_backend.last_compile().records[0].stats["arena_aten_nodes"] == 3


def test_memory_pool_off_places_no_aten_node():
    compiled = torch.compile(three_matmuls, backend="kitsune", options={"memory_pool": False})
    x, w = torch.randn(8, 16), torch.randn(16, 16)
    assert_close(compiled(x, w), three_matmuls(x, w))
    info = kitsune_backend.last_compile().records[0].stats
    assert info.get("arena_aten_nodes", 0) == 0


def test_out_variants_come_from_the_schemas():
    assert out_variant(aten.mm.default) == (aten.mm.out, ("out",))
    assert out_variant(aten.sum.dim_IntList) == (aten.sum.IntList_out, ("out",))
    assert out_variant(aten.mean.default) == (aten.mean.dtype_out, ("out",))
    assert out_variant(aten.max_pool2d_with_indices.default) == (
        aten.max_pool2d_with_indices.out, ("out", "indices"),
    )
    assert out_variant(aten.convolution_backward.default)[1] == ("out0", "out1", "out2")


def test_generated_out_overloads_are_not_direct():
    assert has_device_kernel(aten.mm.out, CPU)
    assert not has_device_kernel(aten.convolution.out, CPU)  # functional op + copy
    assert direct_out(aten.mm.default, CPU) == (aten.mm.out, ("out",), "")
    assert direct_out(aten.convolution.default, CPU)[2].startswith("no direct out= variant")
    assert not has_device_kernel(aten.embedding.out, CPU)  # hence the stand-in
    assert direct_out(aten.embedding.default, CPU)[0] is WRITTEN_INTO[aten.embedding.default]
    assert direct_out(aten.convolution_backward.default, CPU)[2].startswith("no direct out=")
    assert direct_out(aten.tanh.default, CPU)[0] is aten.tanh.out  # pointwise
    assert "not pointwise" in direct_out(aten.max_pool2d_with_indices.default, CPU)[2]


def mm_node(out_stride):
    """A one-mm graph whose recorded value has ``out_stride`` (a lie when not (4, 1))."""
    graph = fx.Graph()
    a, b = graph.placeholder("a"), graph.placeholder("b")
    a.meta["val"], b.meta["val"] = torch.empty(3, 5), torch.empty(5, 4)
    node = graph.call_function(aten.mm.default, (a, b))
    node.meta["val"] = torch.empty_strided((3, 4), out_stride)
    return node


def test_meta_check_refuses_a_layout_the_op_would_not_produce():
    good = mm_node((4, 1))
    assert meta_mismatch(good, aten.mm.out, ("out",), [good.meta["val"]]) == ""
    odd = mm_node((1, 3))
    reason = meta_mismatch(odd, aten.mm.out, ("out",), [odd.meta["val"]])
    assert reason == "the op's layout differs from the recorded value"
    wrong_shape = torch.empty(3, 5)
    assert meta_mismatch(mm_node((4, 1)), aten.mm.out, ("out",), [wrong_shape])


def test_wrapper_calls_the_out_overload_with_views_made_once():
    arena = Arena(4096, CPU)
    spec = torch.empty(3, 4)
    wrapped = AtenInArena("mm", aten.mm.out, ("out",), arena, [512], [spec])
    a, b = torch.randn(3, 5), torch.randn(5, 4)
    first = wrapped(a, b)
    assert first.data_ptr() == arena.tensor.data_ptr() + 512
    assert_close(first, a @ b)
    c = torch.randn(3, 5)
    second = wrapped(c, b)
    assert second.data_ptr() == first.data_ptr() and second.stride() == (4, 1)
    assert_close(second, c @ b)
    assert wrapped.__name__ == "mm_out_in_arena"


def lookup_and_transpose(idx, table, w):
    """embedding and clone (``.contiguous()`` of a transpose), each feeding a matmul."""
    e = torch.nn.functional.embedding(idx, table)  # (4, 6, 16)
    t = (e.view(24, 16) @ w).t().contiguous()  # clone of a transposed view
    return torch.tanh(t @ t.t() / 64).sum(0)


def test_embedding_and_clone_are_written_into_the_arena():
    compiled = torch.compile(lookup_and_transpose, backend="kitsune", options={"strict": True})
    for _ in range(3):
        idx = torch.randint(0, 10, (4, 6))
        table, w = torch.randn(10, 16), torch.randn(16, 16)
        assert_close(compiled(idx, table, w), lookup_and_transpose(idx, table, w))
    record = kitsune_backend.last_compile().records[0]
    code = record.graph_after("memory_plan")
    assert "aten.embedding.default" in code and "aten.clone.default" in code
    info = record.stats
    assert info["arena_aten_nodes"] >= 4, info  # embedding, mm, clone, mm
    assert info["arena_aten_left"] == {}, info


def test_arena_made_in_inference_mode_is_written_outside_it():
    """The first call under inference_mode must not leave an inference-tensor arena that
    out= overloads refuse to write later (outside inference mode)."""
    arena = Arena(4096, CPU)
    wrapped = AtenInArena("mm", aten.mm.out, ("out",), arena, [0], [torch.empty(3, 4)])
    a, b = torch.randn(3, 5), torch.randn(5, 4)
    with torch.inference_mode():
        assert_close(wrapped(a, b), a @ b)
    c = torch.randn(3, 5)
    assert_close(wrapped(c, b), c @ b)


def test_compiled_graph_called_in_and_out_of_inference_mode():
    compiled = torch.compile(three_matmuls, backend="kitsune")
    for mode in (torch.inference_mode, torch.no_grad, torch.inference_mode, torch.no_grad):
        x, w = torch.randn(8, 16), torch.randn(16, 16)
        with mode():
            assert_close(compiled(x, w), three_matmuls(x, w))


def test_cnn_training_matches_eager_with_library_calls_left_on_the_allocator():
    from kitsune_backend.models import LeNet5

    torch.manual_seed(0)
    model = LeNet5()
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, backend="kitsune", options={"strict": True})
    step_matches_eager(model, twin, compiled, torch.randn(2, 1, 28, 28))
    session = kitsune_backend.last_compile()
    backward = session.backward.stats
    assert backward["arena_aten_nodes"] >= 2, backward  # the matmuls of the fc layers
    # fused kernels with a gradient (graph output) and an intermediate among their outputs
    assert backward["arena_kernels"] >= 1, backward
    left = backward["arena_aten_left"]
    assert any(r.startswith("aten.convolution_backward: no direct out=") for r in left), left


def test_fused_kernel_with_an_unplanned_output_gets_a_fresh_tensor_for_it():
    from kitsune_backend.codegen.kernel import FusedKernel

    class Spec:
        shape, stride, dtype = (2, 3), (3, 1), torch.float32

    class TwoOutputs(FusedKernel):
        def __init__(self):  # no generated source needed for this check
            self.__name__ = "k"
            self.generated = type("G", (), {"outputs": [Spec, Spec]})()

        def __call__(self, *args, out=None):
            out[0].fill_(1.0)
            out[1].fill_(2.0)
            return tuple(out)

    arena = Arena(1024, CPU)
    wrapped = InArena(TwoOutputs(), arena, [None, 256])
    (a0, a1), (b0, b1) = wrapped(), wrapped()
    assert a1.data_ptr() == b1.data_ptr() == arena.tensor.data_ptr() + 256
    assert a0.data_ptr() != b0.data_ptr()  # a graph output: never shared between calls
    assert not (arena.tensor.data_ptr() <= a0.data_ptr() < arena.tensor.data_ptr() + 1024)
    assert torch.equal(a0, torch.ones(2, 3)) and torch.equal(b1, torch.full((2, 3), 2.0))


@hypothesis.settings(max_examples=6, deadline=None)
@hypothesis.given(
    rows=st.integers(1, 9),
    width=st.sampled_from([4, 8, 12]),
    steps=st.lists(st.sampled_from(["mm", "tanh", "cat", "bmm", "sum"]), min_size=2, max_size=6),
)
def test_random_chains_of_library_calls_match_eager(rows, width, steps):
    def chain(x, w):
        y = x
        for step in steps:
            if step == "mm":
                y = y @ w
            elif step == "tanh":
                y = torch.tanh(y)
            elif step == "cat":
                y = torch.cat([y, y * 2], dim=1)[:, :width] + 1
            elif step == "bmm":
                y = torch.bmm(y.view(1, rows, width), w.view(1, width, width)).view(rows, width)
            else:
                y = y - y.sum(dim=1, keepdim=True)
        return y * 3

    torch._dynamo.reset()
    compiled = torch.compile(chain, backend="kitsune", options={"strict": True})
    for _ in range(2):
        x, w = torch.randn(rows, width), torch.randn(width, width) / width
        assert_close(compiled(x, w), chain(x, w))
