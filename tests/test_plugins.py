"""The pass registry from code: ``register_pass``, its refusals, ordering, and what a compile
does with a plugin that raises. (Installed packages: see test_plugins_packaged.py.)"""

import functools

import hypothesis
import hypothesis.strategies as st
import pytest
import torch

import kitsune_backend
from kitsune_backend import KitsunePluginError, PassResult, PluginPass
from kitsune_backend.models import MLP
from kitsune_backend.plugins import PassRegistry

from tests.helpers import assert_close

aten = torch.ops.aten


def _compile_and_check(options=None):
    """Train one step of a small MLP under kitsune and check it against eager."""
    torch.manual_seed(0)
    model = MLP((8, 16, 4))
    x = torch.randn(3, 8)
    out = torch.compile(model, backend="kitsune", options=options)(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected = model(x)
    expected.sum().backward()
    assert_close(out, expected)
    assert_close(grads, [p.grad for p in model.parameters()])
    return kitsune_backend.last_compile()


def _noop(gm, ctx):
    return None


def test_duplicate_name_is_refused(registered):
    registered(_noop, name="same")
    with pytest.raises(KitsunePluginError, match="already registered"):
        kitsune_backend.register_pass(_noop, name="same", stage="post_fusion")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stage": "fusion"}, "unknown stage"),
        ({"order": "first"}, "order must be an int"),
        ({"name": ""}, "non-empty string"),
    ],
)
def test_bad_registrations_are_refused(kwargs, message):
    with pytest.raises(KitsunePluginError, match=message):
        kitsune_backend.register_pass(_noop, **kwargs)


def test_a_callable_without_a_name_needs_one(registered):
    partial = functools.partial(_noop)
    with pytest.raises(KitsunePluginError, match="non-empty string"):
        kitsune_backend.register_pass(partial)
    assert registered(partial, name="partial_pass").name == "partial_pass"


def test_unregister_unknown_name_says_what_exists():
    with pytest.raises(KeyError, match="no pass named 'nope'"):
        kitsune_backend.unregister_pass("nope")


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    st.dictionaries(
        st.text("abcxyz_", min_size=1, max_size=6),
        st.tuples(st.sampled_from(["pre_fusion", "post_fusion"]), st.integers(-3, 3)),
        max_size=8,
    )
)
def test_passes_run_by_order_then_name(specs):
    registry = PassRegistry()
    for name, (stage, order) in specs.items():
        registry.register(PluginPass(name=name, fn=_noop, stage=stage, order=order))
    for stage in ("pre_fusion", "post_fusion"):
        expected = sorted(
            (order, name) for name, (where, order) in specs.items() if where == stage
        )
        assert [(p.order, p.name) for p in registry.passes_for(stage)] == expected


def test_registered_passes_run_in_order_and_rewrite_the_graph(registered):
    seen = []

    def second(gm, ctx):
        seen.append("second")
        count = sum(1 for n in gm.graph.nodes if n.target is aten.clamp_min.default)
        return PassResult(notes=[f"clamp_min: {count}"])

    def first(gm, ctx):
        seen.append("first")
        for node in gm.graph.nodes:
            if node.target is aten.relu.default:
                node.target, node.args = aten.clamp_min.default, (node.args[0], 0.0)
        return PassResult(changed=True)

    def late(gm, ctx):
        seen.append("late")

    registered(second, order=2)
    registered(first, order=-1)
    registered(late, stage="post_fusion")
    session = _compile_and_check()
    forward = session.forward
    assert forward.stages == ["decompose", "cleanup", "seeds", "cse", "constant_fold", "permutes",
                              "first", "second", "batch_split", "fusion", "matmul_bias", "late",
                              "streams", "memory_plan", "kernels", "precompile", "arena",
                              "streams_code", "capture"]
    assert [p.stage for p in forward.passes][6:8] == ["pre_fusion", "pre_fusion"]
    assert forward.passes[7].notes == ["clamp_min: 1"]
    assert "aten.clamp_min.default" in forward.graph_after("first")
    assert "aten.relu.default" not in forward.graph_after("memory_plan")
    assert seen == ["first", "second", "late"] * 2  # forward, then backward


def test_a_raising_plugin_is_skipped_and_leaves_no_trace(registered):
    def half_then_raise(gm, ctx):
        for node in gm.graph.nodes:
            if node.target is aten.relu.default:
                node.target = aten.neg.default  # a wrong rewrite, then a failure
        raise ValueError("half-way failure")

    registered(half_then_raise)
    session = _compile_and_check()  # results still match eager
    for record in session.records:
        assert "half_then_raise" not in record.stages
        reasons = [str(d) for d in record.declines if "half_then_raise" in d.reason]
        assert reasons == [
            "pre_fusion: plugin pass 'half_then_raise' skipped: ValueError: half-way failure"
        ]
    assert "aten.neg.default" not in session.forward.graph_after("memory_plan")


def test_strict_raises_a_plugin_failure(registered):
    def boom(gm, ctx):
        raise RuntimeError("boom")

    registered(boom)
    with pytest.raises(Exception) as info:
        _compile_and_check({"strict": True})
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    plugin_errors = [e for e in chain if isinstance(e, KitsunePluginError)]
    assert plugin_errors and "plugin pass 'boom' failed: RuntimeError: boom" in str(
        plugin_errors[0]
    )


_SCALE = torch.tensor(3.0)  # made outside the pass: tensors made inside one may be fake


def test_attributes_a_plugin_adds_reach_the_compiled_graph(registered):
    def scale_output(gm, ctx):
        gm.register_buffer("plugin_scale", _SCALE)
        output = next(n for n in gm.graph.nodes if n.op == "output")
        result = output.args[0][0]
        with gm.graph.inserting_before(output):
            scale = gm.graph.get_attr("plugin_scale")
            scaled = gm.graph.call_function(aten.mul.Tensor, (result, scale))
        scale.meta["val"] = result.meta["val"].new_empty(())
        scaled.meta["val"] = result.meta["val"]
        output.args = ((scaled, *output.args[0][1:]),)
        return PassResult(changed=True)

    registered(scale_output)
    model, x = MLP((8, 4)), torch.randn(2, 8)
    with torch.no_grad():
        out = torch.compile(model, backend="kitsune")(x)
        assert_close(out, model(x) * 3.0)
    assert "scale_output" in kitsune_backend.last_compile().forward.stages
