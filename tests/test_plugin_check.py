"""Plugin safety: what a plugin pass leaves in ``meta["val"]`` is checked against its ops."""

import copy

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch.fx.experimental.proxy_tensor import make_fx

import kitsune_backend
from kitsune_backend import KitsunePluginError, PassResult, PluginPass
from kitsune_backend.compiler import compile_graph
from kitsune_backend.config import Config
from kitsune_backend.process import ProcessState
from tests.helpers import assert_close
from tests.test_pipeline_properties import build_program, step

aten = torch.ops.aten


def gelu_to_sum(gm, ctx):
    """Replace gelu by a sum that keeps one column, leaving gelu's (N, 16) value behind."""
    for node in gm.graph.nodes:
        if node.target == aten.gelu.default:
            node.target = aten.sum.dim_IntList
            node.args = (node.args[0], [1], True)
            return PassResult(changed=True)
    return PassResult()


def times_one_without_meta(gm, ctx):
    """Insert ``x * 1`` after every relu/gelu, with no ``meta["val"]`` on the new node."""
    for node in list(gm.graph.nodes):
        if node.target in (aten.gelu.default, aten.relu.default):
            with gm.graph.inserting_after(node):
                new = gm.graph.call_function(aten.mul.Tensor, (node, 1.0))
            node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    return PassResult(changed=True)


def _linear_gelu_linear():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))


def test_stale_meta_is_caught_and_the_change_discarded(registered):
    registered(gelu_to_sum)
    model = _linear_gelu_linear()
    x = torch.randn(3, 8)
    out = kitsune_backend.compile(model)(x)
    assert_close(out, model(x))
    declines = [str(d) for d in kitsune_backend.last_compile().declines]
    caught = [d for d in declines if "plugin pass 'gelu_to_sum' skipped" in d]
    assert caught and "node gelu (sum.dim_IntList)" in caught[0]
    assert "(3, 16)" in caught[0] and "(3, 1)" in caught[0]


def test_stale_meta_raises_under_strict(registered):
    registered(gelu_to_sum)
    compiled = kitsune_backend.compile(_linear_gelu_linear(), strict=True)
    with pytest.raises(Exception) as caught:
        compiled(torch.randn(3, 8))
    cause = getattr(caught.value, "inner_exception", caught.value)
    assert isinstance(cause, KitsunePluginError)
    assert "gelu_to_sum" in str(cause) and "node gelu" in str(cause)


def test_a_node_added_without_meta_gets_it(registered):
    registered(times_one_without_meta)
    model = _linear_gelu_linear()
    x = torch.randn(3, 8, requires_grad=True)
    out = kitsune_backend.compile(model, debug=True, strict=True)(x)
    assert_close(out, model(x))
    session = kitsune_backend.last_compile()
    assert not [d for d in session.declines if "plugin" in str(d)]
    forward = session.records[0]
    plugin = next(p for p in forward.passes if p.name == "times_one_without_meta")
    assert plugin.changed and "mul" in plugin.graph_code


def _stale(graph_module, inputs) -> bool:
    """Whether any node's ``meta["val"]`` shape differs from the shape running the graph on
    real tensors gives (the oracle, independent of kitsune's fake-tensor check)."""
    shapes = {}

    class Shapes(torch.fx.Interpreter):
        def run_node(self, node):
            value = super().run_node(node)
            shapes[node] = tuple(value.shape) if isinstance(value, torch.Tensor) else None
            return value

    Shapes(graph_module).run(*inputs)
    return any(isinstance(n.meta.get("val"), torch.Tensor)
               and tuple(n.meta["val"].shape) != shapes.get(n) for n in graph_module.graph.nodes
               if n.op != "output")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=6), rows=st.integers(1, 4),
       cols=st.integers(1, 5), pick=st.integers(0, 99), keep_meta=st.booleans())
def test_random_rewrites_are_caught_exactly_when_a_value_is_wrong(steps, rows, cols, pick,
                                                                  keep_meta):
    """A plugin inserts ``sum(x, [-1], keepdim=True)`` after a random node, copying the old
    value onto it or leaving it without one (kitsune derives it). The change is refused
    exactly when a value left in the graph is wrong (running the changed graph on real
    tensors says which); refused, the results are eager's, accepted, the changed graph's."""
    program = build_program(steps, 1)
    inputs = [torch.randn(rows, cols)]
    gm = make_fx(program, tracing_mode="fake")(*inputs)
    seen = {}

    def insert_sum(graph_module, ctx):
        nodes = [n for n in graph_module.graph.nodes if n.op in ("placeholder", "call_function")
                 and isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].dim() == 2
                 and n.meta["val"].is_floating_point()]  # a sum of bools would be int64
        node = nodes[pick % len(nodes)]
        with graph_module.graph.inserting_after(node):
            new = graph_module.graph.call_function(aten.sum.dim_IntList, (node, [-1], True))
        node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
        if keep_meta:
            new.meta["val"] = node.meta["val"]
        seen["changed"] = torch.fx.GraphModule(graph_module, copy.deepcopy(graph_module.graph))
        return PassResult(changed=True)

    process = ProcessState()
    process.plugins.register(PluginPass("insert_sum", insert_sum))
    config = Config(strict=False, debug=True)
    session = process.history.new(config)
    compiled = compile_graph(gm, inputs, config, "inference", session, process)
    refused = [d for d in session.declines if "plugin pass 'insert_sum' skipped" in str(d)]
    try:
        stale = _stale(seen["changed"], [torch.randn(rows, cols)])
    except RuntimeError:  # the changed program cannot run at all (layer_norm of a sum)
        stale = True
    assert bool(refused) == stale
    fresh = [torch.randn(rows, cols)]
    expected = program(*fresh) if refused else tuple(seen["changed"](*fresh))
    assert_close(tuple(compiled(list(fresh))), tuple(expected))
