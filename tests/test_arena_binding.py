"""Fused kernels write their outputs into the planned arena, and results stay eager's."""

import pytest
import torch

import kitsune_backend
from kitsune_backend.codegen.kernel import FusedKernel
from kitsune_backend.runtime.arena import Arena, ArenaGroup, InArena
from tests.conftest import DEVICES
from tests.helpers import assert_close


def chain_of_regions(x, w):
    """Regions separated by matmuls (library calls), so several intermediates are live
    at different times and the plan can share bytes between them."""
    a = torch.softmax(x * 2 + 1, dim=-1)
    b = torch.tanh(a @ w) * 3 - 1
    c = torch.sigmoid(b @ w) + a
    return torch.relu(c @ w).sum(-1)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_outputs_live_in_the_arena_and_match_eager(device):
    compiled = torch.compile(chain_of_regions, backend="kitsune", options={"strict": True})
    for _ in range(3):  # fresh inputs each call: a stale or clobbered buffer would show
        x, w = torch.randn(8, 16, device=device), torch.randn(16, 16, device=device)
        assert_close(compiled(x, w), chain_of_regions(x, w))
    record = kitsune_backend.last_compile().forward
    info = record.stats
    assert info["arena_kernels"] >= 2, info
    assert 0 < info["arena_bytes"] <= record.stats["bytes_intermediates"]
    placed = [n for n in record.nodes_after("memory_plan") if "kitsune_offset" in n.extra]
    assert placed


def test_memory_pool_off_places_nothing():
    compiled = torch.compile(chain_of_regions, backend="kitsune", options={"memory_pool": False})
    x, w = torch.randn(8, 16), torch.randn(16, 16)
    assert_close(compiled(x, w), chain_of_regions(x, w))
    assert kitsune_backend.last_compile().forward.stats.get("arena_kernels", 0) == 0


def test_arena_views_are_where_the_plan_says():
    arena = Arena(4096, torch.device("cpu"))
    a = arena.view(0, (4, 8), (8, 1), torch.float32)
    b = arena.view(256, (8, 4), (1, 8), torch.float32)  # transposed layout
    assert a.data_ptr() == arena.tensor.data_ptr()
    assert b.data_ptr() == arena.tensor.data_ptr() + 256
    assert b.stride() == (1, 8)
    with pytest.raises(ValueError, match="past its end"):
        arena.view(4000, (64,), (1,), torch.float32)


def test_in_arena_wrapper_passes_views_as_out():
    calls = []

    class FakeKernel(FusedKernel):
        def __init__(self):  # no generated source needed for this check
            self.__name__ = "k"

            class Spec:
                shape, stride, dtype = (2, 3), (3, 1), torch.float32

            self.generated = type("G", (), {"outputs": [Spec]})()

        def __call__(self, *args, out=None):
            calls.append(out)
            out[0].fill_(7.0)
            return out[0]

    arena = Arena(1024, torch.device("cpu"))
    wrapped = InArena(FakeKernel(), arena, [512])
    first, second = wrapped(), wrapped()
    assert first.data_ptr() == arena.tensor.data_ptr() + 512
    assert calls[0][0] is calls[1][0]  # views made once
    assert torch.equal(second, torch.full((2, 3), 7.0))


def test_a_forward_and_its_backward_share_one_arena_buffer():
    """Training steps on the CPU: both graphs write their intermediates into the one buffer
    of the session's group, as large as the larger arena, and every step matches eager
    (two forwards before a backward included)."""
    import copy

    from kitsune_backend.models import MLP

    torch.manual_seed(0)
    model = MLP((32, 64, 64, 8))
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, backend="kitsune")
    for step in range(4):
        x = torch.randn(16, 32)
        if step == 2:
            compiled(torch.randn(16, 32))  # a forward whose backward never runs
        out, expected = compiled(x), reference(x)
        assert_close(out, expected)
        out.square().sum().backward()
        expected.square().sum().backward()
        for p, q in zip(model.parameters(), reference.parameters()):
            assert_close(p.grad, q.grad)
            p.grad = q.grad = None
    session = kitsune_backend.last_compile()
    sizes = [r.stats["arena_bytes"] for r in session.records]
    assert len(sizes) == 2 and min(sizes) > 0
    (buffer,) = session.arena_group._buffers.values()
    assert buffer.numel() == max(sizes)


def test_a_pinned_arena_keeps_its_buffer_when_the_group_grows():
    """A capture pins the buffer it baked in; unpinned arenas follow the group's buffer,
    and the views kernels made of the old one are dropped."""
    group = ArenaGroup()
    small = Arena(256, torch.device("cpu"), group)
    small.refresh()
    first = small.tensor
    small._capturing = lambda: True  # as inside a CUDA-graph capture
    small.refresh()
    assert small.pinned and small.tensor is first
    large = Arena(4096, torch.device("cpu"), group)
    large.refresh()
    assert large.tensor.numel() == 4096 and large.tensor is not first
    small.refresh()
    assert small.tensor is first  # pinned: the captured address stays valid
    follower = Arena(128, torch.device("cpu"), group)
    owner = object()
    make = lambda: follower.view(0, (4,), (1,), torch.float32)  # noqa: E731
    view = follower.views(owner, make)
    assert view.data_ptr() == large.tensor.data_ptr() and follower.views(owner, make) is view
    grown = Arena(8192, torch.device("cpu"), group)
    grown.refresh()
    follower.refresh()
    assert follower.tensor is grown.tensor
    assert follower.views(owner, make).data_ptr() == grown.tensor.data_ptr()


def test_inside_a_capture_an_arena_keeps_the_buffer_it_holds():
    """The group grew, but a refresh inside a capture must not free or synchronize: the
    arena keeps (and pins) its buffer."""
    group = ArenaGroup()
    arena = Arena(256, torch.device("cpu"), group)
    arena.refresh()
    held = arena.tensor
    Arena(4096, torch.device("cpu"), group).refresh()
    arena._capturing = lambda: True
    arena.refresh()
    assert arena.pinned and arena.tensor is held
