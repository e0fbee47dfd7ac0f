"""Hypothesis-generated pointwise/reduction graphs (with cats, constants and aranges),
compiled with kitsune, against eager."""

from __future__ import annotations

import hypothesis.strategies as st
import torch
from hypothesis import given, settings

from tests.helpers import assert_close
import kitsune_backend

def cat_mix(a, b, dim):
    """Concatenate two values along ``dim`` and combine the halves again (same shape out)."""
    a, b = torch.broadcast_tensors(a, b)
    dim = dim % a.dim()
    c = torch.cat([a * 1.5, b], dim)
    n = a.shape[dim]
    return c.narrow(dim, 0, n) - c.narrow(dim, n, n)


UNARY = [torch.exp, torch.sigmoid, torch.tanh, torch.relu, torch.neg, torch.abs,
         lambda t: t * 0.5 + 1, lambda t: torch.nn.functional.gelu(t), torch.erf,
         lambda t: torch.where(t > 0, torch.scalar_tensor(0.5), torch.full_like(t, -1.0)),
         lambda t: t + torch.arange(t.shape[-1], dtype=torch.float32) * 0.25]
BINARY = [torch.add, torch.sub, torch.mul, torch.maximum, torch.minimum,
          lambda a, b: torch.where(a > b, a, b * 2),
          lambda a, b: cat_mix(a, b, -1), lambda a, b: cat_mix(a, b, 0)]
REDUCE = [lambda t: t.sum(-1, keepdim=True), lambda t: t.amax(-1, keepdim=True),
          lambda t: t.mean(0, keepdim=True), lambda t: t.amin(-1, keepdim=True),
          lambda t: torch.softmax(t, -1)]


@st.composite
def programs(draw):
    """A list of steps; each reads earlier values by index and appends one value."""
    steps = []
    for _ in range(draw(st.integers(2, 8))):
        kind = draw(st.sampled_from(["unary", "unary", "binary", "binary", "reduce"]))
        table = {"unary": UNARY, "binary": BINARY, "reduce": REDUCE}[kind]
        op = draw(st.integers(0, len(table) - 1))
        args = draw(st.lists(st.integers(0, 100), min_size=2, max_size=2))
        steps.append((kind, op, args))
    rows = draw(st.integers(1, 9))
    cols = draw(st.integers(1, 40))
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float16]))
    layout = draw(st.sampled_from(["same", "row", "column", "transposed"]))
    return steps, rows, cols, dtype, layout


def second_input(rows, cols, dtype, layout):
    """The second input: same shape, broadcast along rows or columns, or transposed."""
    if layout == "row":
        return torch.randn(cols).to(dtype)
    if layout == "column":
        return torch.randn(rows, 1).to(dtype)
    if layout == "transposed":
        return torch.randn(cols, rows).to(dtype).t()
    return torch.randn(rows, cols).to(dtype)


def run_program(steps, x, y):
    """Evaluate a generated program on two inputs; returns its last two values."""
    values = [x, y]
    for kind, op, (a, b) in steps:
        first, second = values[a % len(values)], values[b % len(values)]
        if kind == "unary":
            values.append(UNARY[op](first))
        elif kind == "binary":
            values.append(BINARY[op](first, second))
        else:
            values.append(REDUCE[op](first))
    return values[-1], values[-2]


@settings(max_examples=40, deadline=None)
@given(programs())
def test_random_graphs_match_eager(program):
    steps, rows, cols, dtype, layout = program
    torch._dynamo.reset()
    x = torch.randn(rows, cols).to(dtype)
    y = second_input(rows, cols, dtype, layout)
    compiled = torch.compile(lambda a, b: run_program(steps, a, b), backend="kitsune",
                             options={"strict": True})
    assert_close(compiled(x, y), run_program(steps, x, y))
    assert not kitsune_backend.last_compile().forward.fallback_reason
