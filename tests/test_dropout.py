"""Dropout inside generated kernels: Philox numbers from one seed draw per graph."""

import pytest
import torch
import torch.nn.functional as F

import kitsune_backend
from kitsune_backend.philox import PHILOX_UNIFORM, uniform
from tests.conftest import DEVICES


def _compiled(fn, **options):
    return kitsune_backend.compile(fn, **options)


@pytest.mark.parametrize("device", DEVICES)
def test_keep_ratio_and_scaling(device):
    p, n = 0.3, 200_000
    out = _compiled(lambda x: F.dropout(x, p, training=True))(torch.ones(n, device=device))
    dropped = float((out == 0).float().mean())
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_drops_exactly_what_the_forward_dropped(device):
    x = (torch.rand(64, 33, device=device) + 0.5).requires_grad_()
    y = _compiled(lambda x: F.dropout(x * 2, 0.5, training=True))(x)
    y.sum().backward()
    kept = y != 0
    assert kept.any() and (~kept).any()
    torch.testing.assert_close(x.grad, torch.where(kept, 4.0, 0.0))


def test_each_call_draws_fresh_numbers_and_a_seed_reproduces():
    fn = _compiled(lambda x: F.dropout(x, 0.5, training=True))
    x = torch.ones(4096)
    torch.manual_seed(7)
    first, second = fn(x), fn(x)
    assert not torch.equal(first, second)
    torch.manual_seed(7)
    assert torch.equal(fn(x), first)


def test_the_region_around_a_dropout_is_one_kernel():
    def block(x, w):
        return F.dropout(F.gelu(x @ w + 1.0), 0.1, training=True) * 3

    _compiled(block)(torch.randn(16, 32), torch.randn(32, 32))
    record = kitsune_backend.last_compile().forward
    assert len(record.kernels) == 1
    assert "tl.rand(" in record.kernels[0].source
    assert not [d for d in record.declines if "random op" in d.reason]
    assert record.stats["seeds"] == 1


def test_kernels_and_aten_draw_the_same_numbers():
    """The ATen implementation of philox_uniform is Triton's tl.rand bit for bit: the
    same seed gives the same mask whether fusion is on or off."""
    fn = lambda x: F.dropout(torch.tanh(x), 0.4, training=True)  # noqa: E731
    x = torch.randn(3000)
    outs = []
    for fusion in (True, False):
        torch._dynamo.reset()
        torch.manual_seed(11)
        outs.append(_compiled(fn, fusion=fusion)(x))
    assert torch.equal(outs[0] != 0, outs[1] != 0)
    torch.testing.assert_close(outs[0], outs[1])


def test_philox_reference_values():
    """``uniform`` is in [0, 1), spread evenly, and the op is its reshape."""
    values = uniform(12345, 100_000, torch.device("cpu"))
    assert float(values.min()) >= 0 and float(values.max()) < 1
    assert abs(float(values.mean()) - 0.5) < 0.01
    like = torch.empty(10, 10)
    torch.testing.assert_close(PHILOX_UNIFORM(torch.tensor(12345), like),
                               values[:100].reshape(10, 10))


def test_eval_mode_draws_nothing():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5)).eval()
    x = torch.randn(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(_compiled(model)(x), model(x))
    assert "seeds" not in kitsune_backend.last_compile().forward.stats


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("columns", [40, 20000])  # one pass over the columns; 5 passes of 4096
def test_a_dropout_joins_the_layer_norm_after_it_with_the_same_numbers(columns, device):
    """The residual add, its dropout and the LayerNorm after them are one reduction kernel
    drawing ``tl.rand`` at each element's row-major index: the same mask (and so the same
    values and gradients) as with fusion off."""
    def block(x, y, w, b):
        return F.layer_norm(x + F.dropout(y, 0.3, training=True), (columns,), w, b)

    inputs = [torch.randn(s, device=device) for s in
              ((2, columns), (2, columns), (columns,), (columns,))]
    results = []
    for fusion in (True, False):
        torch._dynamo.reset()
        torch.manual_seed(3)
        args = [t.clone().requires_grad_() for t in inputs]
        out = _compiled(block, fusion=fusion)(*args)
        (out * torch.linspace(-1, 1, columns, device=device)).sum().backward()
        results.append([out, *[a.grad for a in args]])
        if fusion:
            forward = kitsune_backend.last_compile().forward
            (kernel,) = [k for k in forward.kernels if "tl.rand(" in k.source]
            assert {"sum", "rsqrt"} & {n.split("_")[0] for n in kernel.nodes}
            assert not [d for d in forward.declines if "random" in d.reason]
    for fused, plain in zip(*results):
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)
