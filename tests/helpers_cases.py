"""Functions, small models and checks shared by a CPU test module and its GPU counterpart:
matmul-plus-bias, ATen calls in the arena, max-pool comparisons."""

from __future__ import annotations

import torch
import torch.nn as nn

from tests.helpers import assert_close


def qkv(x, w, b):
    """GPT-2's QKV projection: ``addmm`` whose output only attention's views read."""
    return torch.addmm(b, x, w).view(x.shape[0], 3, w.shape[1] // 3).unbind(1)


def _mm_bias_kernels(session):
    return [k for k in session.forward.kernels if k.name.startswith("kitsune_mm_bias")]


def matmuls_between_regions(x, w, b3, bias):
    """mm, bmm, baddbmm and cat between fused regions, every result an intermediate."""
    a = torch.softmax(x * 2 + 1, dim=-1)
    b = torch.tanh(a @ w) * 3 - 1
    c = torch.bmm(b.view(2, 4, 16), b3)
    d = torch.baddbmm(bias, torch.sigmoid(c) + 1, b3)
    e = torch.cat([d.view(8, 16), a], dim=1)
    return torch.relu(e @ torch.cat([w, w], dim=0)).sum(-1)


class BmmMlp(nn.Module):
    """Linear layers and a batched matmul: the backward graph has mm/bmm of its own."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.mix = nn.Parameter(torch.randn(4, 16, 16) / 4)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.fc1(x))
        h = torch.tanh(self.fc2(h))
        h = torch.bmm(h.view(4, -1, 16), self.mix).view(-1, 16)
        return torch.log_softmax(h * 2, dim=-1)


def step_matches_eager(model, twin, compiled, x, msg=""):
    """One forward and backward of ``model`` and of ``compiled`` (the compiled ``twin``) on
    ``x`` with the same random output gradient: the outputs and the parameter gradients
    match. The gradients are cleared after."""
    expected, actual = model(x), compiled(x)
    assert_close(actual, expected, msg)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    actual.backward(grad)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert_close(q.grad, p.grad, msg)
        p.grad = q.grad = None


def _same(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.equal(actual.isnan(), expected.isnan())
    assert torch.equal(torch.nan_to_num(actual, nan=0.0), torch.nan_to_num(expected, nan=0.0))


def _pool_and_grad(fn, x, grad):
    x = x.detach().clone().requires_grad_(True)
    values, indices = fn(x)
    values.backward(grad)
    return values.detach(), indices, x.grad
