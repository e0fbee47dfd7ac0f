"""The Dynamo entry: registration, modes and options, fallback, strictness, CPU declines."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import kitsune_backend
from kitsune_backend.models import MLP
from kitsune_backend import register_pass, unregister_pass
from kitsune_backend.errors import KitsuneConfigError, KitsuneError
from tests.helpers import assert_close


def small_mlp():
    return MLP((16, 32, 8))


def test_entry_point_works_without_importing_the_package():
    script = textwrap.dedent(
        """
        import sys, torch
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 2))
        x = torch.randn(4, 8)
        assert "kitsune_backend" not in sys.modules
        out = torch.compile(m, backend="kitsune")(x)
        torch.testing.assert_close(out, m(x), rtol=1e-4, atol=1e-5)
        import kitsune_backend
        print("graphs:", [r.name for r in kitsune_backend.last_compile().records])
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KITSUNE_")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    assert "graphs: ['forward'" in done.stdout


def test_backend_is_registered_with_dynamo():
    from torch._dynamo import list_backends

    assert "kitsune" in list_backends()


def test_unknown_option_through_torch_compile_is_a_clear_value_error():
    compiled = torch.compile(small_mlp(), backend="kitsune", options={"fusoin": True})
    chain = _errors_raised_by(compiled, torch.randn(2, 16))
    assert any(isinstance(e, ValueError) and "valid options are" in str(e) for e in chain)


def test_unknown_mode_through_torch_compile_is_a_clear_value_error():
    compiled = torch.compile(small_mlp(), backend="kitsune", mode="turbo")
    chain = _errors_raised_by(compiled, torch.randn(2, 16))
    assert any(isinstance(e, KitsuneConfigError) and "valid modes" in str(e) for e in chain)


def test_options_reach_the_config():
    model = small_mlp()
    torch.compile(model, backend="kitsune", options={"num_streams": 3, "fusion": False})(
        torch.randn(2, 16)
    )
    cfg = kitsune_backend.last_compile().config
    assert cfg.num_streams == 3 and cfg.fusion is False


def test_mode_reaches_the_config():
    torch.compile(small_mlp(), backend="kitsune", mode="max-autotune-no-cudagraphs")(
        torch.randn(2, 16)
    )
    session = kitsune_backend.last_compile()
    assert session.mode == "max-autotune-no-cudagraphs"
    assert session.config.autotune and not session.config.cuda_graphs


def _failing_pass_module():
    """A built-in stage that raises, by patching the pipeline's fusion stage."""
    import kitsune_backend.pipeline as pipeline

    def broken(gm, ctx):
        raise RuntimeError("synthetic failure inside a pass")

    stages = tuple(
        dataclasses.replace(s, fn=broken) if s.name == "fusion" else s for s in pipeline.PIPELINE
    )
    return pipeline, stages


def test_internal_failure_falls_back_to_correct_aten_and_says_why(monkeypatch):
    pipeline, stages = _failing_pass_module()
    monkeypatch.setattr(pipeline, "PIPELINE", stages)
    model = small_mlp()
    x = torch.randn(5, 16)
    out = torch.compile(model, backend="kitsune")(x)
    assert_close(out, model(x))
    record = kitsune_backend.last_compile().forward
    assert "synthetic failure inside a pass" in record.fallback_reason
    assert record.stats["fallback"] is True
    assert "FELL BACK" in kitsune_backend.explain()


def test_strict_turns_internal_failure_into_an_exception(monkeypatch):
    pipeline, stages = _failing_pass_module()
    monkeypatch.setattr(pipeline, "PIPELINE", stages)
    compiled = torch.compile(small_mlp(), backend="kitsune", options={"strict": True})
    chain = _errors_raised_by(compiled, torch.randn(5, 16))
    assert any(isinstance(e, KitsuneError) and "synthetic failure" in str(e) for e in chain)


def test_pipeline_ran_and_is_recorded_in_order():
    torch.compile(small_mlp(), backend="kitsune")(torch.randn(3, 16))
    record = kitsune_backend.last_compile().forward
    builtin = [p.name for p in record.passes if p.stage == p.name]
    assert builtin == [s.name for s in kitsune_backend.pipeline.PIPELINE if s.fn is not None]
    assert builtin[:2] == ["decompose", "cleanup"] and builtin[-1] == "capture"
    assert all(0 < p.seconds < 60 for p in record.passes), [p.seconds for p in record.passes]
    assert all("def forward" in p.graph_code for p in record.passes)
    assert not record.fallback_reason


def test_compiled_callable_runs_the_pipeline_output_not_the_input_graph():
    """A post-fusion plugin that rewrites relu into a marker op must change the result:
    proof that what runs is the graph after the pipeline."""
    aten = torch.ops.aten

    def relu_to_neg(gm, ctx):
        for node in gm.graph.nodes:
            if node.target == aten.relu.default:
                node.target = aten.neg.default
        return kitsune_backend.PassResult(changed=True, notes=["relu -> neg"])

    register_pass(relu_to_neg, stage="post_fusion", name="test_relu_to_neg")
    try:
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
        x = torch.randn(3, 4)
        out = torch.compile(model, backend="kitsune", options={"fusion": False})(x)
        expected = -model[0](x)
        assert_close(out, expected)
        assert "test_relu_to_neg" in kitsune_backend.last_compile().forward.stages
    finally:
        unregister_pass("test_relu_to_neg")


def test_debug_mode_checks_invariants_after_each_pass():
    def rename_an_input(gm, ctx):
        next(n for n in gm.graph.nodes if n.op == "placeholder")._rename("renamed_input")
        return None

    register_pass(rename_an_input, stage="pre_fusion", name="test_break_metadata")
    try:
        compiled = torch.compile(
            small_mlp(), backend="kitsune", options={"debug": True, "strict": True}
        )
        with pytest.raises(Exception) as info:
            compiled(torch.randn(2, 16))
        assert "after test_break_metadata: placeholders changed" in str(info.value)
    finally:
        unregister_pass("test_break_metadata")


def test_cpu_tensors_decline_gpu_only_stages_with_reasons():
    torch.compile(small_mlp(), backend="kitsune")(torch.randn(3, 16))
    reasons = [d for d in kitsune_backend.last_compile().forward.declines]
    stages = {d.stage for d in reasons}
    assert "streams" in stages
    assert all(d.reason for d in reasons)


def _errors_raised_by(fn, *args):
    """Call ``fn``, which must raise; the exception and its causes, outermost first."""
    with pytest.raises(Exception) as info:
        fn(*args)
    return _exception_chain(info.value)


def _exception_chain(exc):
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen
