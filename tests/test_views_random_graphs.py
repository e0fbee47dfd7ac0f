"""Hypothesis-generated programs that mix views, ``as_strided``, in-place ops on views and
fusable ops, compiled with kitsune (memory pool and streams on), against eager.

Functionalization turns in-place ops on views into ``*_scatter`` ops and ``as_strided``
reads a storage from its start: both must see what eager sees, wherever the memory plan put
their operands."""

from __future__ import annotations

import dataclasses

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from tests.conftest import DEVICES
from tests.helpers import assert_close
from tests.helpers_graphs import build


@dataclasses.dataclass
class Value:
    """What the generator knows of a value: its shape and its storage's size in elements
    (a fresh intermediate's storage holds exactly its elements)."""

    shape: tuple[int, ...]
    storage: int


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


@st.composite
def programs(draw):
    """Steps ``(kind, source index, parameters)``; each appends one value."""
    rows, cols = draw(st.integers(2, 6)), draw(st.integers(2, 9))
    values = [Value((rows, cols), rows * cols)]
    steps = []
    for _ in range(draw(st.integers(2, 9))):
        i = draw(st.integers(0, len(values) - 1))
        v = values[i]
        kind = draw(st.sampled_from(
            ["unary", "unary", "combine", "as_strided", "narrow", "transpose", "inplace",
             "inplace_view", "strided_copy"]))
        if kind in ("as_strided", "strided_copy"):
            a, b = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            s0, s1 = draw(st.integers(0, 3)), draw(st.integers(1, 2))
            reach = (a - 1) * s0 + (b - 1) * s1
            if reach >= v.storage:
                continue
            offset = draw(st.integers(0, v.storage - 1 - reach))
            steps.append((kind, i, ((a, b), (s0, s1), offset)))
            shape = (a, b)
            values.append(Value(shape, v.storage if kind == "as_strided" else _numel(shape)))
        elif kind == "narrow" and len(v.shape) == 2 and v.shape[0] > 1:
            start = draw(st.integers(0, v.shape[0] - 1))
            length = draw(st.integers(1, v.shape[0] - start))
            steps.append((kind, i, (start, length)))
            values.append(Value((length, v.shape[1]), v.storage))
        elif kind == "transpose" and len(v.shape) == 2:
            steps.append((kind, i, ()))
            values.append(Value(v.shape[::-1], v.storage))
        elif kind in ("inplace", "inplace_view") and i > 0:
            steps.append((kind, i, (draw(st.integers(0, 2)),)))
            values.append(Value(v.shape, _numel(v.shape)))
        elif kind == "combine":
            j = draw(st.integers(0, len(values) - 1))
            steps.append((kind, i, (j,)))
            values.append(Value(v.shape, _numel(v.shape)))
        else:
            steps.append(("unary", i, (draw(st.integers(0, 3)),)))
            values.append(Value(v.shape, _numel(v.shape)))
    return (rows, cols), steps


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None)
@given(program=programs())
def test_random_view_programs_match_eager(device, program):
    shape, steps = program
    torch._dynamo.reset()
    f = build(steps)
    x = torch.randn(shape, device=device)
    compiled = torch.compile(f, backend="kitsune", options={"memory_pool": True,
                                                            "streams": True})
    for _ in range(3):  # warm-up, capture, replay on CUDA
        x = torch.randn(shape, device=device)
        assert_close(compiled(x), f(x))
