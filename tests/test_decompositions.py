"""kitsune's own decompositions: ``nll_loss_backward`` as a ``where`` that fuses with the
``log_softmax`` backward, and ``cumsum`` of integers as a masked sum."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
import torch
import torch.nn.functional as F

import kitsune_backend
from tests.conftest import DEVICES
from tests.helpers import assert_close

IGNORED = 3


def _loss(x, target, weight, reduction):
    return F.cross_entropy(x * 1.5, target, weight=weight, reduction=reduction,
                           ignore_index=IGNORED)


def _run(x, target, weight, reduction):
    """Gradient of the loss by eager and by kitsune (strict); returns the session."""
    eager_x, kitsune_x = (x.detach().clone().requires_grad_() for _ in range(2))
    compiled = torch.compile(_loss, backend="kitsune", options={"strict": True})
    expected = _loss(eager_x, target, weight, reduction)
    actual = compiled(kitsune_x, target, weight, reduction)
    torch.testing.assert_close(actual, expected, equal_nan=True)  # all ignored: 0/0
    upstream = torch.rand_like(expected) + 0.5
    (expected * upstream).sum().backward()
    (actual * upstream).sum().backward()
    assert_close(kitsune_x.grad, eager_x.grad)
    return kitsune_backend.last_compile()


def _backward_launches(session):
    return [n.target for n in session.backward.nodes_after("fusion") if n.extra.get("launches")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_backward_is_one_kernel(reduction, weighted, device):
    target = torch.randint(0, 7, (13,), device=device)
    target[[0, 5]] = IGNORED
    weight = torch.rand(7, device=device) + 0.5 if weighted else None
    session = _run(torch.randn(13, 7, device=device), target, weight, reduction)
    launches = _backward_launches(session)
    assert len(launches) == 1 and launches[0].startswith("kitsune_fused_"), launches
    assert not any("nll_loss_backward" in t for t in launches)


def test_every_target_ignored_gives_zero_gradient_like_eager():
    session = _run(torch.randn(4, 5), torch.full((4,), IGNORED), None, "mean")
    assert len(_backward_launches(session)) == 1


def test_unbatched_input_keeps_the_aten_op():
    session = _run(torch.randn(6), torch.tensor(2), None, "mean")
    assert any("nll_loss_backward" in t for t in _backward_launches(session))


def _launches(session):
    return [n.target for n in session.forward.nodes_after("fusion") if n.extra.get("launches")]


@settings(max_examples=12, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), data=st.data())
def test_integer_cumsum_equals_eager_bitwise(shape, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = torch.randint(-3, 4, shape)
    fn = lambda x: torch.cumsum(x != 1, dim) * 3  # noqa: E731
    out = torch.compile(fn, backend="kitsune", options={"strict": True})(x)
    assert out.dtype == torch.int64 and torch.equal(out, fn(x))
    assert not any("cumsum" in t for t in _launches(kitsune_backend.last_compile()))


@pytest.mark.parametrize("device", DEVICES)
def test_gpt2_mask_cumsum_equals_eager(device):
    x = torch.randint(0, 3, (1, 128), device=device)
    fn = lambda x: torch.cumsum(x != 1, -1)  # noqa: E731
    out = torch.compile(fn, backend="kitsune", options={"strict": True})(x)
    assert torch.equal(out, fn(x))


@pytest.mark.parametrize("device", DEVICES)
def test_cumsum_with_dtype_keeps_it(device):
    x = torch.randint(-5, 5, (4, 6), dtype=torch.int32, device=device)
    fn = lambda x: torch.cumsum(x, 1, dtype=torch.int32) + 1  # noqa: E731
    out = torch.compile(fn, backend="kitsune", options={"strict": True})(x)
    assert out.dtype == torch.int32 and torch.equal(out, fn(x))


@pytest.mark.parametrize("device", DEVICES)
def test_integer_sum_is_a_generated_kernel(device):
    fn = lambda x: ((x * 3) != 2).sum(-1) + 1  # noqa: E731
    x = torch.randint(-2, 3, (5, 37), device=device)
    out = torch.compile(fn, backend="kitsune", options={"strict": True})(x)
    assert torch.equal(out, fn(x))
    (launch,) = _launches(kitsune_backend.last_compile())
    assert launch.startswith("kitsune_fused_")


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_float_or_long_cumsum_stays_aten(dtype):
    x = torch.randn(3, 8).to(dtype) if dtype.is_floating_point else torch.randint(0, 5, (2, 2000))
    fn = lambda x: torch.cumsum(x, -1) * 2  # noqa: E731
    out = torch.compile(fn, backend="kitsune", options={"strict": True})(x)
    assert_close(out, fn(x))
    assert any("cumsum" in t for t in _launches(kitsune_backend.last_compile()))


def test_integer_cumsum_into_float_stays_aten():
    x = torch.randint(0, 5, (3, 7))
    fn = lambda x: torch.cumsum(x, -1, dtype=torch.float32) * 2  # noqa: E731
    out = torch.compile(fn, backend="kitsune", options={"strict": True})(x)
    assert torch.equal(out, fn(x))
    assert any("cumsum" in t for t in _launches(kitsune_backend.last_compile()))
