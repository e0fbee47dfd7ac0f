"""Fused kernels write their outputs into the planned arena, and results stay eager's."""

import pytest
import torch

import kitsune_backend
from kitsune_backend.codegen.kernel import FusedKernel
from kitsune_backend.runtime.arena import Arena, InArena
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
