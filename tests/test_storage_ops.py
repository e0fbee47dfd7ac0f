"""Ops whose result depends on their argument's storage, not only its elements, over the
pooled arena; and kernels that do not compile, which must fall back with the reason."""

from __future__ import annotations

import pytest
import torch
from triton.runtime.errors import InterpreterError

import kitsune_backend
from kitsune_backend.codegen.kernel import FusedKernel
from kitsune_backend.graph_utils import STORAGE_COPYING
from tests.conftest import DEVICES
from tests.helpers import assert_close
from tests.helpers_graphs import build

aten = torch.ops.aten


def _declines(stage: str) -> list[str]:
    return [d.reason for d in kitsune_backend.last_compile().forward.declines
            if d.stage == stage]


@pytest.mark.parametrize("device", DEVICES)
def test_as_strided_copy_of_an_intermediate_reads_its_own_storage(device):
    """The issue's minimal case: with the pool on, the intermediate sat in the arena and
    ``as_strided_copy`` counted its offset from the arena's start (every sign was wrong)."""

    def f(x):
        x = torch.neg(torch.neg(x))
        return torch.neg(torch.neg(torch.as_strided_copy(x, (2, 2), (1, 2), 0)))

    x = torch.randn(3, 3, device=device)
    assert_close(torch.compile(f, backend="kitsune")(x), f(x))
    assert any("keeps a storage of its own" in r and "as_strided_copy" in r
               for r in _declines("memory_plan"))


@pytest.mark.parametrize("device", DEVICES)
def test_as_strided_after_an_in_place_write_through_a_view(device):
    """Functionalization turns the write into ``slice_scatter``, which copies its input's
    whole storage (the arena, when the input was planned there) at the input's offset; the
    ``as_strided`` after it then read another element (found by the random view programs)."""

    def f(x):
        fresh = torch.cos(torch.neg(torch.neg(x)))
        fresh.t()[:1].add_(1.0)
        return torch.neg(torch.neg(torch.as_strided(fresh, (1, 1), (0, 1), 1)))

    x = torch.randn(2, 2, device=device)
    assert_close(torch.compile(f, backend="kitsune")(x), f(x))


@pytest.mark.parametrize("device", DEVICES)
def test_views_of_merged_duplicates_keep_their_buffer_alive(device):
    """Common subexpressions merge the second ``sin(v)`` into the first; the transpose of
    the dropped node kept its storage in its recorded value, so the memory plan missed that
    reader and reused the first's bytes too early (found by the random view programs)."""
    steps = [("unary", 0, (0,)), ("as_strided", 0, ((1, 1), (0, 1), 0)), ("unary", 0, (0,)),
             ("combine", 0, (2,)), ("transpose", 0, ()), ("transpose", 3, ()),
             ("narrow", 4, (0, 1))]
    f = build(steps)
    for options in ({}, {"fusion": False}):
        torch._dynamo.reset()
        x = torch.randn(2, 2, device=device)
        assert_close(torch.compile(f, backend="kitsune", options=options)(x), f(x))


def test_storage_copying_ops_are_the_ones_that_copy_a_whole_storage():
    """The ops in ``STORAGE_COPYING`` return a copy of their input's whole storage at its
    offset (ATen's ``clone_preserve_strides``); the other functional scatters do not. If a
    PyTorch release changes this, the list must change with it."""
    base = torch.zeros(100)
    x = base[40:56].view(4, 4)
    index = torch.zeros(1, 4, dtype=torch.long)
    calls = {
        "slice_scatter": lambda: aten.slice_scatter(x, torch.ones(1, 4), 0, 0, 1),
        "select_scatter": lambda: aten.select_scatter(x, torch.ones(4), 0, 0),
        "diagonal_scatter": lambda: aten.diagonal_scatter(x, torch.ones(4)),
        "as_strided_scatter": lambda: aten.as_strided_scatter(x, torch.ones(2), [2], [1], 40),
        "copy": lambda: aten.copy(x, torch.ones(4, 4)),
        "index_put": lambda: aten.index_put(x, [torch.tensor([0])], torch.ones(4)),
        "scatter": lambda: aten.scatter(x, 0, index, torch.ones(1, 4)),
        "index_copy": lambda: aten.index_copy(x, 0, torch.tensor([0]), torch.ones(1, 4)),
        "clone": lambda: aten.clone(x),
        "masked_fill": lambda: aten.masked_fill(x, x > 0, 1.0),
    }
    copying = {name for name, call in calls.items()
               if call().untyped_storage().nbytes() == base.untyped_storage().nbytes()}
    assert copying == STORAGE_COPYING


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_reads_a_view_at_an_offset_of_a_planned_buffer(device):
    """A generated kernel takes a view (here a row slice, at a storage offset) of an
    intermediate planned into the arena: it reads the view's elements, as eager does."""

    def f(x):
        y = torch.sigmoid(x) * 2
        z = y.sum(0, keepdim=True)  # a library call between keeps y a planned buffer
        return torch.relu(y[2:5, 1:]) + z[:, 1:]

    x = torch.randn(8, 6, device=device)
    assert_close(torch.compile(f, backend="kitsune")(x), f(x))


@pytest.mark.parametrize("device", DEVICES)
def test_logical_ops_with_a_0d_operand_in_a_kernel(device):
    def f(x, z):
        x = torch.neg(torch.neg(x))
        out = [torch.logical_and(x, z), torch.logical_or(x, z), torch.logical_xor(x, z)]
        return [torch.neg(torch.neg(o.float())) for o in out]

    x = torch.randn(5, device=device)
    x[1] = 0.0
    for z in (torch.tensor(0.7, device=device), torch.tensor(0.0, device=device)):
        torch._dynamo.reset()
        kitsune_backend.clear_history()
        assert_close(torch.compile(f, backend="kitsune")(x, z), f(x, z))
        record = kitsune_backend.last_compile().forward
        assert any("logical_and" in k.nodes for k in record.kernels)


@pytest.mark.parametrize("device", DEVICES)
def test_constant_fill_reduced_in_a_kernel_has_the_rows_rank(device):
    """The gradient of ``div(..., rounding_mode="trunc")`` is a ``zeros_like`` summed to a
    0-d tensor: the fill was a 1-d value broadcast to the 2-d reduction block, which Triton
    refuses ("rank mismatch")."""

    def f(x, y):
        return torch.neg(torch.neg(torch.div(torch.neg(torch.neg(x)), y, rounding_mode="trunc")))

    x = torch.randn(5, device=device, requires_grad=True)
    y = torch.tensor(3.6, device=device, requires_grad=True)
    out = torch.compile(f, backend="kitsune")(x, y)
    gx, gy = torch.autograd.grad(out.sum(), (x, y))
    ex, ey = torch.autograd.grad(f(x, y).sum(), (x, y))
    assert_close((out, gx, gy), (f(x, y), ex, ey))


def test_kernel_that_does_not_compile_runs_as_aten_with_the_reason(monkeypatch):
    def failing_launch(*args, **kwargs):
        raise InterpreterError("unsupported operand (made up by the test)")

    monkeypatch.setattr(FusedKernel, "_launch", staticmethod(failing_launch))

    def f(x):
        return torch.sigmoid(x) * 2 + 1

    x = torch.randn(16)
    assert_close(torch.compile(f, backend="kitsune")(x), f(x))
    assert_close(torch.compile(f, backend="kitsune")(x), f(x))  # and again, without retrying
    record = kitsune_backend.last_compile().forward
    (kernel,) = record.kernels
    assert "made up by the test" in kernel.compile_error
    assert kernel.kernel.fallback_calls == 2
    reasons = [d.reason for d in record.declines if d.stage == "kernel"]
    assert len(reasons) == 1 and "did not compile" in reasons[0]
    assert "did not compile" in kitsune_backend.explain()


@pytest.mark.gpu
def test_as_strided_of_an_input_is_not_captured_over_a_copy():
    """Captured graphs read inputs from copies laid out in storages of their own; an op
    that reads an input through its storage must then not be captured."""

    def f(x):
        return torch.as_strided(torch.sigmoid(x), (2,), (2,), 1) * 2 + torch.as_strided(x, (2,), (1,), 1)

    base = torch.randn(12, device="cuda")
    compiled = torch.compile(f, backend="kitsune")
    for start in (2, 2, 2, 5):
        x = base[start:start + 6]
        assert_close(compiled(x), f(x))
    capture = kitsune_backend.last_compile().forward.stats["capture"]
    assert capture.startswith("declined") and "through its storage" in capture
