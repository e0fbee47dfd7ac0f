"""Whole models through kitsune with fusion on: forward and backward against eager.

Also imported by ``tests/gpu/test_fusion_gpu.py``, which runs the same checks on CUDA.
"""

from __future__ import annotations

import copy

import pytest
import torch

import kitsune_backend
from kitsune_backend import models


def model_cases(device):
    """(name, model, input) triples small enough for the CPU interpreter."""
    torch.manual_seed(0)
    return {
        "MLP": (models.MLP((64, 32, 16, 10)), torch.randn(4, 64)),
        "SmallCNN": (models.SmallCNN(), torch.randn(2, 3, 8, 8)),
        "TransformerBlock": (models.TransformerBlock(dim=32, heads=4), torch.randn(2, 8, 32)),
        "BranchyHeads": (models.BranchyHeads(dim=32, heads=3, hidden=32), torch.randn(4, 32)),
    }


def _close(actual, expected, name, rtol):
    scale = expected.abs().max().item() + 1e-6
    error = (actual - expected).abs().max().item()
    assert error <= rtol * scale, f"{name}: max error {error:.3g} vs scale {scale:.3g}"


def check_model(model, x, device, rtol=1e-4):
    """Compile ``model`` (strict), compare output, parameter grads and buffers with eager."""
    model = model.to(device)
    x = x.to(device)
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, backend="kitsune", options={"strict": True})
    out, ref = compiled(x), model(x)
    _close(out, ref, "output", rtol)
    weight = torch.randn_like(ref)
    (out * weight).sum().backward()
    (ref * weight).sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        _close(q.grad, p.grad, name, rtol * 10)
    for (name, b), c in zip(model.named_buffers(), twin.buffers()):
        if b.is_floating_point():
            _close(c, b, name, rtol)
    session = kitsune_backend.last_compile()
    assert not any(r.fallback_reason for r in session.records)
    return session


@pytest.mark.parametrize("name", ["MLP", "SmallCNN", "TransformerBlock", "BranchyHeads"])
def test_models_forward_backward_cpu(name):
    model, x = model_cases("cpu")[name]
    session = check_model(model, x, "cpu")
    assert sum(r.stats["fused_regions"] for r in session.records) > 0
    if name != "MLP":  # the MLP forward is linear + relu: nothing to fuse
        assert session.forward.stats["fused_regions"] > 0
