"""Property tests: random graphs of ATen ops keep their results through the whole pipeline."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch.fx.experimental.proxy_tensor import make_fx

from kitsune_backend import pipeline
from kitsune_backend.compiler import compile_graph
from kitsune_backend.config import Config
from kitsune_backend.process import PROCESS
from tests.helpers import assert_close

UNARY = [torch.exp, torch.tanh, torch.sigmoid, torch.relu, torch.neg, torch.abs,
         lambda x: x * 0.5, lambda x: x.clamp(-1, 1), torch.nn.functional.gelu,
         torch.nn.functional.silu]
BINARY = [torch.add, torch.sub, torch.mul, torch.maximum, torch.minimum,
          lambda a, b: torch.where(a > b, a, b)]
REDUCE = [lambda x: x.sum(-1, keepdim=True), lambda x: x.amax(-1, keepdim=True),
          lambda x: x.mean(0, keepdim=True), lambda x: x.softmax(-1),
          lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:])]

# One step: (kind, op index, operand choices); operands index the values made so far.
step = st.tuples(
    st.sampled_from(["unary", "binary", "reduce"]),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
)


def build_program(steps, n_inputs):
    """A function of ``n_inputs`` (R, C) tensors applying ``steps``; returns the last values."""

    def program(*inputs):
        values = list(inputs)
        for kind, op, a, b in steps:
            x, y = values[a % len(values)], values[b % len(values)]
            if kind == "unary":
                values.append(UNARY[op % len(UNARY)](x))
            elif kind == "binary":
                values.append(BINARY[op % len(BINARY)](x, y))
            else:
                values.append(REDUCE[op % len(REDUCE)](x))
        return tuple(values[-2:])

    return program


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(step, min_size=1, max_size=8),
    n_inputs=st.integers(1, 3),
    rows=st.integers(1, 6),
    cols=st.integers(1, 9),
    fusion=st.booleans(),
)
def test_pipeline_preserves_results_of_random_graphs(steps, n_inputs, rows, cols, fusion):
    program = build_program(steps, n_inputs)
    inputs = [torch.randn(rows, cols) for _ in range(n_inputs)]
    gm = make_fx(program)(*inputs)
    config = Config(fusion=fusion, strict=True, debug=True)
    compiled = compile_graph(gm, inputs, config, "inference", PROCESS.history.new(config),
                             PROCESS)
    fresh = [torch.randn(rows, cols) for _ in range(n_inputs)]
    assert_close(tuple(compiled(list(fresh))), program(*fresh))


@pytest.mark.parametrize("fusion", [False, True])
def test_pipeline_records_every_stage_for_a_fixed_graph(fusion):
    program = build_program([("unary", 0, 0, 0), ("binary", 2, 0, 1), ("reduce", 3, 2, 2)], 2)
    inputs = [torch.randn(3, 5), torch.randn(3, 5)]
    gm = make_fx(program)(*inputs)
    config = Config(fusion=fusion, strict=True, debug=True)
    session = PROCESS.history.new(config)
    compile_graph(gm, inputs, config, "inference", session, PROCESS)
    record = session.get("inference")
    assert [(p.phase, p.stage) for p in record.passes if p.stage == p.name] == [
        (s.phase, s.name) for s in pipeline.PIPELINE if s.fn is not None
    ]
    assert record.stats["nodes_in"] == len(record.input_nodes) > 0


def test_debug_mode_names_a_stage_whose_requirement_is_unset(monkeypatch):
    """With ``debug=True`` a stage that runs before the stage setting what it requires
    fails naming both the stage and the missing field, not deep inside the stage."""
    stages = [s for s in pipeline.PIPELINE if s.name != "streams"]  # nothing sets stream_plan
    monkeypatch.setattr(pipeline, "PIPELINE", tuple(stages))
    program = build_program([("unary", 0, 0, 0)], 1)
    inputs = [torch.randn(3, 5)]
    gm = make_fx(program)(*inputs)
    config = Config(strict=True, debug=True)
    with pytest.raises(Exception, match=r"stage 'memory_plan': ctx.stream_plan not set before"):
        compile_graph(gm, inputs, config, "inference", PROCESS.history.new(config), PROCESS)
