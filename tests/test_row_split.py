"""Reduction kernels whose values come in another shape holding the same rows and columns:
a linear's 2-D bias add before a 3-D LayerNorm, a 2-D epilogue after it."""

import math

import hypothesis
import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F

import kitsune_backend
from kitsune_backend.codegen.region import row_split
from tests.conftest import DEVICES
from tests.helpers import assert_close


@st.composite
def splits(draw):
    """A region shape reduced over its trailing dims, and a reshape of it."""
    kept = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
    red = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))
    total = math.prod(kept + red)
    factors = [f for f in range(1, total + 1) if total % f == 0]
    head = draw(st.sampled_from(factors))
    other = (head, total // head) if draw(st.booleans()) else (total,)
    return tuple(kept + red), tuple(range(len(kept), len(kept) + len(red))), other


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(splits())
def test_row_split_keeps_every_element_in_its_row_and_column(case):
    """Where a split is found, every element sits in the same row and column in both
    shapes; where none is, the shapes' rows do not line up."""
    region, reduced, other = case
    columns = math.prod(region[d] for d in reduced)
    found = row_split(other, region, reduced)
    linear = torch.arange(math.prod(region))
    if found is None:
        assert not any(math.prod(other[i:]) == columns for i in range(len(other) + 1))
        return
    assert math.prod(other[d] for d in found) == columns
    assert found == tuple(range(len(other) - len(found), len(other)))
    as_region = linear.reshape(region).reshape(-1, columns)
    as_other = linear.reshape(other).reshape(-1, columns)
    assert torch.equal(as_region, as_other)


def test_no_split_for_a_region_that_reduces_a_leading_dim():
    assert row_split((12, 32), (2, 6, 32), (0,)) is None
    assert row_split((12, 32), (2, 6, 32), (2,)) == (1,)
    assert row_split((2, 192), (2, 6, 32), (2,)) is None  # 192 is no row's column count


def linear_then_norm(a, w, b, r, g, beta):
    """A linear in 2-D, its result viewed back to 3-D, a residual and a LayerNorm."""
    y = (a @ w + b).view(r.shape)
    return F.layer_norm(y + r, (r.shape[-1],), g, beta)


def norm_then_2d(x, g, beta, c):
    """A LayerNorm in 3-D, then pointwise work on its 2-D view."""
    return (F.layer_norm(x, (x.shape[-1],), g, beta).view(c.shape) * 2 + c).relu()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad", [False, True])
def test_bias_add_before_and_pointwise_work_after_a_norm_join_its_kernel(device, grad):
    def rand(*shape):
        return torch.randn(*shape, device=device)

    for fn, inputs in ((linear_then_norm, (rand(12, 16), rand(16, 32), rand(32),
                                          rand(2, 6, 32), rand(32), rand(32))),
                       (norm_then_2d, (rand(2, 6, 32), rand(32), rand(32), rand(12, 32)))):
        torch._dynamo.reset()
        kitsune_backend.clear_history()
        args = [t.clone().requires_grad_(grad) for t in inputs]
        out = kitsune_backend.compile(fn, strict=True)(*args)
        assert_close(out, fn(*inputs))
        forward = kitsune_backend.last_compile().forward
        norm = [k for k in forward.kernels if "sum_1" in k.nodes]
        assert len(norm) == 1, [k.nodes for k in forward.kernels]
        names = {n.split("_")[0] for n in norm[0].nodes}
        assert {"add", "view"} <= names, fn.__name__
        if grad:
            eager = [t.clone().requires_grad_() for t in inputs]
            weight = torch.randn_like(out)
            (out * weight).sum().backward()
            (fn(*eager) * weight).sum().backward()
            for a, e in zip(args, eager):
                assert_close(a.grad, e.grad)
