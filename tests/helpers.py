"""Shared test helpers: compiled results against eager with tolerances that fit the dtype,
kitsune's compile-and-compare check for functions and for whole models, random inputs."""

from __future__ import annotations

import copy

import torch

import kitsune_backend
from kitsune_backend import models

# (rtol, atol) per dtype: fp32 allows for reordered sums and fused math; half types for
# their 8/11-bit mantissas.
TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


def assert_close(actual, expected, msg: str = "") -> None:
    """Assert two (nested) results match; tensors by dtype tolerance, others exactly."""
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), msg
        for a, e in zip(actual, expected):
            assert_close(a, e, msg)
        return
    if not isinstance(expected, torch.Tensor):
        assert actual == expected, msg
        return
    rtol, atol = TOLERANCES.get(expected.dtype, (0, 0))
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=msg or None)


def random_like_model_input(shape, device="cpu", dtype=torch.float32, seed=None) -> torch.Tensor:
    """Fresh standard-normal input (never zeros), optionally from a fixed seed."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device, dtype)


HALF_TYPES = [torch.float32, torch.float16, torch.bfloat16]


def check(fn, *inputs, grad=False, min_regions=1, options=None, frozen=()):
    """Compile ``fn`` with kitsune (strict), compare outputs (and input grads) with eager.

    Returns the compile session; asserts the forward graph has at least ``min_regions``
    fused regions. Inputs at positions in ``frozen`` never require grad.
    """
    compiled = torch.compile(fn, backend="kitsune", options={"strict": True, **(options or {})})
    def copies():
        return [x.detach().clone().requires_grad_(grad and x.is_floating_point() and i not in frozen)
                if isinstance(x, torch.Tensor) else x for i, x in enumerate(inputs)]

    eager_in, comp_in = copies(), copies()
    expected = fn(*eager_in)
    actual = compiled(*comp_in)
    assert_close(actual, expected)
    session = kitsune_backend.last_compile()
    assert session.forward.stats["fused_regions"] >= min_regions, session.forward.declines
    assert not session.forward.fallback_reason
    if grad:
        outs = expected if isinstance(expected, (tuple, list)) else (expected,)
        weights = [torch.randn_like(o) for o in outs]
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        outs = actual if isinstance(actual, (tuple, list)) else (actual,)
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        for a, e in zip(comp_in, eager_in):
            if isinstance(e, torch.Tensor) and e.grad is not None:
                assert_close(a.grad, e.grad)
    return session


def rand(*shape, device="cpu", dtype=torch.float32):
    """Standard-normal values (never zeros)."""
    return torch.randn(shape, dtype=torch.float32).to(device, dtype)


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


def encoder_layer_args(layer, x, use_gelu=False):
    """The arguments of ``aten._transformer_encoder_layer_fwd`` for ``layer`` (an
    ``nn.TransformerEncoderLayer``) on ``x``, without a mask."""
    attn = layer.self_attn
    return [x, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias,
            attn.out_proj.weight, attn.out_proj.bias, use_gelu, layer.norm_first,
            layer.norm1.eps, layer.norm1.weight, layer.norm1.bias, layer.norm2.weight,
            layer.norm2.bias, layer.linear1.weight, layer.linear1.bias, layer.linear2.weight,
            layer.linear2.bias]
