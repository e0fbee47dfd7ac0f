"""Hypothesis-generated pointwise/reduction graphs (with cats, constants and aranges),
compiled with kitsune, against eager."""

from __future__ import annotations

import torch
from hypothesis import given, settings

import kitsune_backend
from tests.helpers_programs import (assert_close_or_as_accurate, programs, run_program,
                                    second_input)


@settings(max_examples=40, deadline=None)
@given(programs())
def test_random_graphs_match_eager(program):
    steps, rows, cols, dtype, layout, seed = program
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=generator).to(dtype)
    y = second_input(rows, cols, dtype, layout, generator)
    compiled = torch.compile(lambda a, b: run_program(steps, a, b), backend="kitsune",
                             options={"strict": True})
    assert_close_or_as_accurate(compiled(x, y), run_program(steps, x, y),
                                run_program(steps, x.double(), y.double()), dtype)
    assert not kitsune_backend.last_compile().forward.fallback_reason
