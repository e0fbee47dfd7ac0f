"""Random pointwise/reduction programs (with cats, constants and aranges) for the fuzz tests,
and how their results are compared with eager's."""

from __future__ import annotations

import hypothesis.strategies as st
import torch

from tests.helpers import TOLERANCES


def cat_mix(a, b, dim):
    """Concatenate two values along ``dim`` and combine the halves again (same shape out)."""
    a, b = torch.broadcast_tensors(a, b)
    dim = dim % a.dim()
    c = torch.cat([a * 1.5, b], dim)
    n = a.shape[dim]
    return c.narrow(dim, 0, n) - c.narrow(dim, n, n)


def _through_permute(t):
    """Pointwise work between two permutes, then more after them (what the permutes stage
    moves); 1-d values have nothing to permute."""
    if t.dim() != 2:
        return torch.sigmoid(t)
    return torch.sigmoid((t.permute(1, 0) * 1.5 - 0.25).permute(1, 0))


UNARY = [torch.exp, torch.sigmoid, torch.tanh, torch.relu, torch.neg, torch.abs,
         lambda t: t * 0.5 + 1, lambda t: torch.nn.functional.gelu(t), torch.erf,
         lambda t: torch.where(t > 0, torch.scalar_tensor(0.5), torch.full_like(t, -1.0)),
         lambda t: t + torch.arange(t.shape[-1], dtype=torch.float32) * 0.25,
         lambda t: _through_permute(t)]
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
    seed = draw(st.integers(0, 2**31 - 1))
    return steps, rows, cols, dtype, layout, seed


def second_input(rows, cols, dtype, layout, generator):
    """The second input: same shape, broadcast along rows or columns, or transposed."""
    if layout == "row":
        return torch.randn(cols, generator=generator).to(dtype)
    if layout == "column":
        return torch.randn(rows, 1, generator=generator).to(dtype)
    if layout == "transposed":
        return torch.randn(cols, rows, generator=generator).to(dtype).t()
    return torch.randn(rows, cols, generator=generator).to(dtype)


def assert_close_or_as_accurate(actual, expected, reference, inputs_dtype=torch.float32):
    """Close to eager within the tolerance of the output's dtype or of the inputs'
    (``inputs_dtype``), the looser (a float16 program whose last steps promote to float32
    still rounded its values to float16 on the way, where kernels keep float32), or, where
    not (a chain of ``exp`` turns a one-ulp difference into a large one), at least as close
    as eager to a float64 evaluation of the same program."""
    for a, e, r in zip(actual, expected, reference):
        rtol, atol = map(max, zip(TOLERANCES[e.dtype], TOLERANCES[inputs_dtype]))
        a, e, r = a.double(), e.double(), r.double()
        close = torch.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
        as_accurate = (a - r).abs() <= 2 * (e - r).abs() + atol + rtol * r.abs()
        assert bool((close | as_accurate).all()), (a, e, r)


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
