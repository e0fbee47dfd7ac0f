"""Max-pool forward/backward decompositions (:mod:`kitsune_backend.passes.maxpool_decompositions`):
eager-exact values and indices (ties, NaN, -inf, padding, ceil_mode, 3-D inputs, half
types), gradients, the fused structure in a LeNet-style graph, declines that keep ATen."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import kitsune_backend
from kitsune_backend.passes import maxpool_decompositions as pd
from kitsune_backend.models import LeNet5
from tests.conftest import DEVICES
from tests.helpers import assert_close
from tests.helpers_cases import _pool_and_grad, _same

aten = torch.ops.aten
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@st.composite
def pools(draw, max_size=7):
    """(input, kernel, stride, padding, ceil_mode) for a valid 2-D max pool."""
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    height = draw(st.integers(max(1, kernel[0] - 2 * padding[0]), max_size))
    width = draw(st.integers(max(1, kernel[1] - 2 * padding[1]), max_size))
    lead = draw(st.sampled_from([(2,), (1, 3), (2, 2)]))  # (C,) is a 3-D input
    dtype = draw(st.sampled_from(DTYPES))
    x = torch.randn(*lead, height, width, generator=torch.Generator().manual_seed(
        draw(st.integers(0, 2**16))))
    special = draw(st.sampled_from(["none", "ties", "nan", "-inf"]))
    if special == "ties":
        x = x.round()
    elif special == "nan":
        x[x > 0.8] = float("nan")
    elif special == "-inf":
        x[x < 0.3] = float("-inf")
    return x.to(dtype), kernel, stride, padding, draw(st.booleans())


@settings(max_examples=200, deadline=None)
@given(pools())
def test_decomposition_equals_aten_exactly(case):
    """The decompositions run eagerly (no compile): values and indices bitwise, gradients
    equal (one term per cell without overlap; overlapping windows sum in another order)."""
    x, kernel, stride, padding, ceil_mode = case
    args = (list(kernel), list(stride), list(padding), [1, 1], ceil_mode)
    expected, expected_idx = aten.max_pool2d_with_indices(x, *args)
    values, indices = pd.max_pool2d_with_indices(x, *args)
    _same(values, expected)
    assert torch.equal(indices, expected_idx)
    grad = torch.randn(expected.shape).to(x.dtype)
    expected_grad = aten.max_pool2d_with_indices_backward(grad, x, *args, expected_idx)
    assert_close(pd.max_pool2d_with_indices_backward(grad, x, *args, expected_idx),
                 expected_grad)


@settings(max_examples=10, deadline=None)
@given(pools(max_size=6))
def test_compiled_pool_matches_eager(case):
    """Through torch.compile: generated kernels give eager's values, indices and gradient."""
    x, kernel, stride, padding, ceil_mode = case

    def pool(t):
        return F.max_pool2d(t, kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True)

    compiled = torch.compile(pool, backend="kitsune", dynamic=False)
    grad = torch.randn(pool(x)[0].shape).to(x.dtype)
    values, indices, x_grad = _pool_and_grad(compiled, x, grad)
    e_values, e_indices, e_grad = _pool_and_grad(pool, x, grad)
    _same(values, e_values)
    assert torch.equal(indices, e_indices)
    assert_close(x_grad, e_grad)
    session = kitsune_backend.last_compile()
    for record in session.records:
        assert not record.fallback_reason, record.fallback_reason
        assert not any("max_pool2d" in n.target for n in record.nodes_after("fusion"))


@pytest.mark.parametrize("fill", ["ties", "nan", "-inf"])
def test_compiled_special_values(fill):
    """Ties (first max in window order wins), NaN (the last NaN wins), all -inf windows
    (the first real cell), with padding so padded cells are in play."""
    x = torch.randn(2, 3, 7, 7)
    if fill == "ties":
        x = torch.ones_like(x)
        x[..., 3, 3] = 2.0
    elif fill == "nan":
        x[..., ::2, 1::3] = float("nan")
    else:
        x[..., :4, :] = float("-inf")

    def pool(t):
        return F.max_pool2d(t, 3, 2, 1, return_indices=True)

    grad = torch.randn(2, 3, 4, 4)
    values, indices, x_grad = _pool_and_grad(torch.compile(pool, backend="kitsune"), x, grad)
    e_values, e_indices, e_grad = _pool_and_grad(pool, x, grad)
    _same(values, e_values)
    assert torch.equal(indices, e_indices)
    assert_close(x_grad, e_grad)


class ConvReluPool(nn.Module):
    """One LeNet stage: conv (with bias), ReLU, 2x2 max pool."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.conv(x)), 2)


def _kernel_with(record, *names):
    return [k for k in record.kernels if all(any(n.startswith(m) for n in k.nodes) for m in names)]


def test_lenet_stage_structure():
    """The pool is a generated kernel; backward, the pool's gradient and the ReLU's
    threshold_backward are one kernel and no max-pool ATen call is left."""
    torch.manual_seed(0)
    model = ConvReluPool()
    out = torch.compile(model, backend="kitsune")(torch.randn(2, 2, 10, 10))
    out.backward(torch.randn_like(out))
    session = kitsune_backend.last_compile()
    forward, backward = session.forward, session.backward
    targets = [n.target for r in (forward, backward) for n in r.nodes_after("fusion")]
    assert not any("max_pool2d" in t for t in targets), targets
    assert _kernel_with(forward, "where"), [k.nodes for k in forward.kernels]
    assert _kernel_with(backward, "eq", "where", "threshold_backward"), [
        k.nodes for k in backward.kernels]


@pytest.mark.parametrize("device", DEVICES)
def test_lenet5_training_matches_eager(device):
    """LeNet-5 training steps (fresh inputs each): loss and every gradient as eager (on CUDA
    with more steps, past warm-up and capture, on a larger batch)."""
    batch, steps = (16, 4) if device == "cuda" else (4, 2)
    torch.manual_seed(0)
    eager = LeNet5().to(device)
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend="kitsune")
    for step in range(steps):
        x = torch.randn(batch, 1, 28, 28, device=device)
        target = torch.randint(0, 10, (batch,), device=device)
        loss_e = F.cross_entropy(eager(x), target)
        loss_c = F.cross_entropy(compiled(x), target)
        assert_close(loss_c, loss_e, f"loss, step {step}")
        loss_e.backward()
        loss_c.backward()
        for (name, p_e), p_c in zip(eager.named_parameters(), model.parameters()):
            assert_close(p_c.grad, p_e.grad, f"grad of {name}, step {step}")
            with torch.no_grad():
                p_e -= 0.01 * p_e.grad
                p_c -= 0.01 * p_c.grad
            p_e.grad = p_c.grad = None
    for record in kitsune_backend.last_compile().records:
        assert not record.fallback_reason, record.fallback_reason


class GoogLeNetPools(nn.Module):
    """GoogLeNet's two pool kinds: 3x3 stride 2 ceil_mode, and 3x3 stride 1 padding 1."""

    def forward(self, x):
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        return F.max_pool2d(torch.relu(x), 3, 1, 1, ceil_mode=True) + 1.0


def test_googlenet_pools_inference():
    """Inference through both GoogLeNet pool settings, on an odd size, matches eager."""
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        out = torch.compile(GoogLeNetPools(), backend="kitsune")(x)
        expected = GoogLeNetPools()(x)
    assert_close(out, expected)
    record = kitsune_backend.last_compile().forward
    assert not record.fallback_reason
    assert not any("max_pool2d" in n.target for n in record.nodes_after("fusion"))


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2, dilation=2),
                                    dict(kernel_size=5, padding=2)],
                         ids=["dilation", "large_window"])
def test_declined_pools_stay_aten(kwargs):
    """Dilation and windows past MAX_WINDOW_AREA keep the ATen ops, and stay correct."""
    assert pd.max_pool2d_with_indices(torch.randn(1, 1, 8, 8), [5, 5]) is NotImplemented
    x = torch.randn(2, 2, 9, 9)

    def pool(t):
        return F.max_pool2d(t, return_indices=True, **kwargs)

    grad = torch.randn(pool(x)[0].shape)
    values, indices, x_grad = _pool_and_grad(torch.compile(pool, backend="kitsune"), x, grad)
    e_values, e_indices, e_grad = _pool_and_grad(pool, x, grad)
    _same(values, e_values)
    assert torch.equal(indices, e_indices)
    assert_close(x_grad, e_grad)
    session = kitsune_backend.last_compile()
    assert any(n.target == "max_pool2d_with_indices.default"
               for n in session.forward.nodes_after("fusion"))
    assert any(n.target == "max_pool2d_with_indices_backward.default"
               for n in session.backward.nodes_after("fusion"))


def test_integer_input_is_declined():
    """Integer pools stay ATen (the running max compares floats)."""
    x = torch.randint(0, 9, (1, 2, 4, 4))
    assert pd.max_pool2d_with_indices(x, [2, 2]) is NotImplemented


def test_channels_last_pool_is_declined_and_keeps_eager_layout():
    """A channels_last input keeps the ATen pool, whose output stays channels_last as eager's."""
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    assert pd.max_pool2d_with_indices(x, [2, 2]) is NotImplemented
    fn = lambda t: F.max_pool2d(t, 3, 2, 1) + 1  # noqa: E731
    out = torch.compile(fn, backend="kitsune")(x)
    assert_close(out, fn(x))
    assert out.stride() == fn(x).stride()
