"""Inspection after a compile: per-graph records, stage graphs, explain(), DOT and SVG."""

import shutil

import hypothesis
import hypothesis.strategies as st
import pytest
import torch

import kitsune_backend
from kitsune_backend import dot, inspection
from kitsune_backend.models import MLP
from kitsune_backend.record import NodeSnapshot

from tests.helpers import assert_close

STAGES = ["decompose", "cleanup", "seeds", "cse", "constant_fold", "permutes", "batch_split",
          "fusion", "matmul_bias", "streams", "memory_plan", "kernels", "precompile", "arena",
          "streams_code", "capture"]


@pytest.fixture
def trained():
    """A small MLP compiled by kitsune, run forward and backward once; its session."""
    torch.manual_seed(0)
    model = MLP((8, 16, 4))
    x = torch.randn(3, 8)
    out = torch.compile(model, backend="kitsune")(x)
    out.sum().backward()
    assert_close(out, model(x))
    return kitsune_backend.last_compile()


def test_forward_and_backward_are_recorded_separately(trained):
    assert [r.name for r in trained.records] == ["forward", "backward"]
    assert kitsune_backend.history() == [trained]
    for record in (trained.forward, trained.backward):
        assert record.stages == STAGES
        assert list(inspection.graphs(record)) == ["input", *STAGES]
        assert all(0 < p.seconds < 60 for p in record.passes), [p.seconds for p in record.passes]
        stats = record.stats
        for key in ("nodes_in", "nodes_out", "kernels", "fused_regions", "streams_used",
                    "bytes_planned"):
            assert isinstance(stats[key], int), key
        assert stats["nodes_in"] == len(record.input_nodes) > 0
    assert "aten.mm.default" in trained.forward.graph_after("cleanup")
    assert "threshold_backward" in trained.backward.graph_after("memory_plan")


def test_snapshots_carry_layout(trained):
    placeholders = [n for n in trained.forward.input_nodes if n.op == "placeholder"]
    weight = next(n for n in placeholders if n.shape == (16, 8))
    assert (weight.dtype, weight.stride, weight.device) == ("float32", (8, 1), "cpu")


def test_every_decline_has_a_stage_and_a_reason(trained):
    for record in trained.records:
        # on the CPU: library calls and one-op regions, bias adds that cannot be timed
        # against cuBLAS (forward), no streams, no CUDA graphs
        stages = {decline.stage for decline in record.declines}
        bias = {"matmul_bias"} if record.name == "forward" else set()
        assert stages == {"fusion", "streams", "cuda_graphs"} | bias, record.declines
        for decline in record.declines:
            assert isinstance(decline.reason, str) and len(decline.reason) > 10, decline


def test_explain_lists_graphs_passes_and_declines(trained):
    text = kitsune_backend.explain()
    assert text.startswith(f"kitsune compile #{trained.id}")
    for name in ("graph forward:", "graph backward:", *STAGES):
        assert name in text
    for decline in trained.forward.declines:  # grouped by reason, naming the node
        line = next(l for l in text.splitlines() if l.endswith(f": {decline.reason}"))
        assert line.strip().startswith(f"no: {decline.stage}") and decline.node in line
    one = kitsune_backend.explain(trained.backward)
    assert "graph backward:" in one and "graph forward:" not in one


def test_explain_names_the_stage_of_plugin_passes():
    def mark(gm, ctx):
        return kitsune_backend.PassResult(notes=["looked"])

    kitsune_backend.register_pass(mark, stage="post_fusion")
    try:
        torch.compile(MLP((8, 4)), backend="kitsune")(torch.randn(2, 8))
    finally:
        kitsune_backend.unregister_pass("mark")
    assert "post_fusion/mark" in kitsune_backend.explain()


def test_last_compile_without_any_compile_is_a_clear_error():
    with pytest.raises(LookupError, match="compiled nothing"):
        kitsune_backend.last_compile()


def test_networkx_graph_matches_the_recorded_graph(trained):
    record = trained.forward
    graph = inspection.graph_networkx(record, "memory_plan")
    nodes = record.nodes_after("memory_plan")
    assert set(graph.nodes) == {n.name for n in nodes}
    assert graph.number_of_edges() == sum(len(n.inputs) for n in nodes)
    addmm = next(n.name for n in nodes if n.target == "mm.default")
    assert graph.nodes[addmm]["snapshot"].extra["kitsune_stream"] == 0


def test_dot_text_names_every_node_and_edge(trained):
    record = trained.forward
    text = inspection.graph_dot(record, "input")
    assert text.startswith('digraph "forward after input" {') and text.rstrip().endswith("}")
    for node in record.input_nodes:
        assert f'"{node.name}" [label="{node.name}' in text
        for source in node.inputs:
            assert f'"{source}" -> "{node.name}"' in text
    assert "f32" not in text and "float32[3, 8]" in text


def test_dot_draws_regions_as_clusters_and_events_as_red_edges():
    def snap(name, inputs=(), **extra):
        return NodeSnapshot(name, "call_function", "op", tuple(inputs), (2,), "float32",
                            {"launches": True, **extra})

    nodes = [
        snap("a", kitsune_stream=0),
        snap("b", ["a"], kitsune_region="kitsune_fused_add_mul_0", kitsune_stream=1,
             kitsune_wait=["a"]),
        snap("c", ["b"], kitsune_region="kitsune_fused_add_mul_0", kitsune_stream=1),
    ]
    text = dot.to_dot(nodes)
    assert 'label="kitsune_fused_add_mul_0"; style=dashed;' in text
    assert '"a" -> "b" [color="#d62728", style=dashed, label="event"];' in text
    assert '"b" -> "c";' in text
    assert "stream 1" in text


_NAMES = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
    | st.sampled_from(['"', "\\", "\n", "{", "}", "-", ">"]),
    min_size=1,
    max_size=8,
)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    st.lists(st.tuples(_NAMES, _NAMES), min_size=1, max_size=6, unique_by=lambda t: t[0])
)
def test_dot_escapes_any_names(pairs):
    nodes = []
    for index, (name, target) in enumerate(pairs):
        inputs = (pairs[index - 1][0],) if index else ()
        nodes.append(NodeSnapshot(name, "call_function", target, inputs, None, None, {}))
    text = dot.to_dot(nodes, title=pairs[0][1])
    # every quoted string is closed: outside of escapes, quotes pair up on every line
    for line in text.splitlines():
        unescaped = line.replace("\\\\", "").replace('\\"', "")
        assert unescaped.count('"') % 2 == 0, line
        assert "\n" not in line
    assert len(dot.to_networkx(nodes)) == len(nodes)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_svg_through_graphviz(trained, tmp_path):
    path = tmp_path / "forward.svg"
    svg = inspection.graph_svg(trained.forward, "memory_plan", path=str(path))
    assert "<svg" in svg and path.read_text() == svg
    odd = [NodeSnapshot('q"uote\\back\nline', "call_function", "t", (), None, None, {})]
    assert "<svg" in dot.to_svg(dot.to_dot(odd, title='a "title"'))


def test_svg_without_graphviz_is_a_clear_error(trained, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no dot program
    with pytest.raises(dot.GraphvizNotFoundError, match="Graphviz's 'dot' program"):
        inspection.graph_svg(trained.forward)


def test_unknown_stage_lists_the_stages(trained):
    with pytest.raises(KeyError, match="memory_plan"):
        inspection.graph_dot(trained.forward, "no_such_pass")


def test_explain_shows_each_graphs_memory_plan(trained):
    text = kitsune_backend.explain()
    for record in trained.records:
        stats = record.stats
        assert stats["bytes_single_stream"] == stats["bytes_planned"] > 0  # CPU: one stream
        assert stats["bytes_peak_planned"] > stats["bytes_planned"]
        size = inspection.byte_size
        line = (f"memory: arena {size(stats['bytes_planned'])} (single-stream arena "
                f"{size(stats['bytes_single_stream'])}), peak planned "
                f"{size(stats['bytes_peak_planned'])} with outputs")
        assert line in kitsune_backend.explain(record) and line in text
    assert "streams wanted" not in text
    assert [inspection.byte_size(n) for n in (512, 1536, 3 << 20, 5 << 30)] == [
        "512 B", "1.5 KiB", "3.0 MiB", "5.0 GiB"]


def test_explain_says_which_streams_the_memory_budget_took():
    stats = {"bytes_planned": 2 << 20, "bytes_single_stream": 2 << 20,
             "bytes_peak_planned": 3 << 20, "branches_kept_back": 7, "streams_wanted": 8,
             "streams_used": 1, "bytes_streams_unbudgeted": 16 << 20}
    [line] = inspection._memory_lines(stats)
    assert line.endswith("8 streams wanted, 1 used within the memory budget (arena on 8: "
                         "16.0 MiB)")
    assert inspection._memory_lines({"bytes_planned": 0}) == []
    [line] = inspection._memory_lines({**stats, "bytes_cublas_workspace": 32 << 20,
                                       "side_stream_workspaces": 0,
                                       "side_stream_workspaces_unbudgeted": 7})
    assert line.endswith("; side streams running matmuls hold 0 cuBLAS workspace(s) of "
                         "32.0 MiB (7 before the budget)")
