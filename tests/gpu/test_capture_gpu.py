"""Capture decisions on real models' patterns, on the GPU."""

import pytest
import torch

import kitsune_backend
from tests.helpers import assert_close


@pytest.mark.gpu
def test_a_window_mask_built_from_cpu_constants_is_captured():
    """torchvision's Swin builds its shifted-window mask from ``torch.tensor`` constants
    and in-place fills: CPU tensors whose values never change, so the graph is captured."""

    def masked_attention(x):
        mask = x.new_zeros(8, 8)
        for i, (a, b) in enumerate(((0, 3), (3, 6), (6, 8))):
            mask[a:b, :] = torch.tensor(float(i))
        scores = x @ x.transpose(-1, -2) + (mask - mask.t()).abs() * -100.0
        return torch.softmax(scores, -1) @ x

    compiled = torch.compile(masked_attention, backend="kitsune")
    for _ in range(4):
        x = torch.randn(2, 8, 16, device="cuda")
        assert_close(compiled(x), masked_attention(x))
    info = kitsune_backend.last_compile().forward.stats
    assert info["capture"].startswith("replay"), info["capture"]
    assert info["cuda_graph_instances"] >= 1


@pytest.mark.gpu
@pytest.mark.parametrize("move", ["data", "to"])
def test_a_parameter_whose_storage_moves_is_read_from_its_new_place(move):
    """``p.data = ...`` and ``module.to(...)`` keep the Parameter object but give it new
    memory: a captured graph must not replay the old address (it would read stale weights)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU()).cuda()
    compiled = torch.compile(model, backend="kitsune")
    x = torch.randn(4, 16, device="cuda")
    with torch.no_grad():
        for _ in range(3):  # warm-up, capture, replay
            assert_close(compiled(x), model(x))
        weight = model[0].weight
        if move == "data":
            weight.data = weight.data * 2
        else:
            model.to(torch.float64).to(torch.float32)  # new storage, same objects
        assert model[0].weight is weight
        for _ in range(2):
            assert_close(compiled(x), model(x))
