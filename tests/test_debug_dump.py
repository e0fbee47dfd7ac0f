"""``KITSUNE_DEBUG_DIR``: the numbered folders, what is in them, and the runnable repros."""

import importlib.util
import json
import os
import re
import pathlib
import runpy
import subprocess
import sys

import hypothesis
import hypothesis.strategies as st
import pytest
import torch

import kitsune_backend
from kitsune_backend import compiler
from kitsune_backend.models import MLP, RunningStats
from kitsune_backend.repro import InputSpec

from tests.helpers import assert_close

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
aten = torch.ops.aten


def _train_step(model, x):
    out = torch.compile(model, backend="kitsune")(x)
    out.sum().backward()
    assert_close(out, model(x))
    return kitsune_backend.last_compile()


@pytest.fixture
def dumped(tmp_path, monkeypatch):
    """A small MLP trained one step with KITSUNE_DEBUG_DIR set: (session, dump root)."""
    root = tmp_path / "dump"
    monkeypatch.setenv("KITSUNE_DEBUG_DIR", str(root))
    torch.manual_seed(0)
    return _train_step(MLP((8, 16, 4)), torch.randn(3, 8)), root


def _load_repro(folder):
    """The repro script's namespace, without running its ``__main__`` block."""
    return runpy.run_path(str(folder / "repro.py"))


def _run_repro_in_process(folder):
    ns = _load_repro(folder)
    return ns["main"](ns["Repro"], ns["INPUTS"], kind=ns["KIND"], options=ns["OPTIONS"],
                      constants=ns["CONSTANTS"])


def test_one_numbered_folder_per_graph(dumped):
    session, root = dumped
    assert sorted(os.listdir(root)) == [
        f"000_compile{session.id}_forward", f"001_compile{session.id}_backward"
    ]
    for record, folder in zip(session.records, sorted(root.iterdir())):
        files = set(os.listdir(folder))
        stages = ["input", *record.stages]
        for index, stage in enumerate(stages):
            assert f"{index:02d}_{stage}.py" in files and f"{index:02d}_{stage}.dot" in files
        assert {"passes.txt", "declines.txt", "stats.json", "explain.txt", "config.json",
                "repro.py"} <= files
        assert "fallback.txt" not in files
        assert (folder / "00_input.py").read_text().rstrip() == record.input_code.rstrip()
        memory_plan, fusion = stages.index("memory_plan"), stages.index("fusion")
        assert (folder / f"{memory_plan:02d}_memory_plan.py").read_text().rstrip() == \
            record.graph_after("memory_plan").rstrip()
        assert (folder / f"{fusion:02d}_fusion.dot").read_text().startswith(
            f'digraph "{record.name} after fusion"')
        declines = (folder / "declines.txt").read_text()
        assert all(str(d) in declines for d in record.declines)
        stats = json.loads((folder / "stats.json").read_text())
        assert stats["nodes_in"] == record.stats["nodes_in"]
        assert json.loads((folder / "config.json").read_text())["debug_dir"] == str(root)
        assert (folder / "repro.py").read_text() == record.repro_source


@pytest.mark.parametrize("graph", ["forward", "backward"])
def test_repro_runs_in_a_subprocess(dumped, graph):
    session, root = dumped
    folder = next(root.glob(f"*_{graph}"))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("KITSUNE_DEBUG_DIR", None)
    env.pop("TRITON_INTERPRET", None)  # a CPU repro turns the interpreter on itself
    done = subprocess.run([sys.executable, "repro.py"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"OK: kitsune matches eager \(\d+ output tensors, [1-9]\d* generated "
                     r"kernel\(s\) ran\)", done.stdout), done.stdout
    assert not (folder / "dump").exists()  # the repro itself dumps nothing


def test_repro_inputs_follow_the_recorded_layout(dumped):
    session, root = dumped
    ns = _load_repro(next(root.glob("*_backward")))
    placeholders = [n for n in session.backward.input_nodes if n.op == "placeholder"]
    assert len(ns["INPUTS"]) == len(placeholders)
    for spec, node in zip(ns["INPUTS"], placeholders):
        assert (spec.shape, spec.stride, spec.dtype, spec.device) == (
            node.shape, node.stride, node.dtype, node.device)
        made = spec.make(torch.Generator().manual_seed(0))
        assert made.stride() == node.stride and bool(made.abs().sum() > 0)


def test_repro_detects_a_wrong_result(dumped, capsys):
    session, root = dumped

    def relu_to_neg(gm, ctx):  # a broken "optimization"
        for node in gm.graph.nodes:
            if node.target is aten.relu.default:
                node.target = aten.neg.default
        return kitsune_backend.PassResult(changed=True)

    kitsune_backend.register_pass(relu_to_neg)
    try:
        status = _run_repro_in_process(next(root.glob("*_forward")))
    finally:
        kitsune_backend.unregister_pass("relu_to_neg")
    assert status == 1
    assert "MISMATCH between kitsune and eager" in capsys.readouterr().out


def test_a_fallback_is_dumped_and_the_repro_reports_it(tmp_path, monkeypatch, capsys):
    def broken_pipeline(gm, ctx, record):
        raise RuntimeError("runtime build exploded")

    monkeypatch.setattr(compiler, "run_pipeline", broken_pipeline)
    root = tmp_path / "dump"
    with kitsune_backend.config.patch(debug_dir=str(root)):
        torch.compile(MLP((8, 4)), backend="kitsune")(torch.randn(2, 8))
    (folder,) = root.iterdir()
    assert "runtime build exploded" in (folder / "fallback.txt").read_text()
    assert "FELL BACK" in (folder / "explain.txt").read_text()
    assert _run_repro_in_process(folder) == 1
    assert "FELL BACK to the ATen graph: RuntimeError: runtime build exploded" in (
        capsys.readouterr().out)


def test_constants_and_mutated_integer_buffers_reproduce(tmp_path, capsys):
    class WithConstant(torch.nn.Module):
        def forward(self, x):
            return x * torch.tensor([1.5, -2.0, 3.0])

    root = tmp_path / "dump"
    with kitsune_backend.config.patch(debug_dir=str(root)), torch.no_grad():
        torch.compile(WithConstant(), backend="kitsune")(torch.randn(2, 3))
        torch._dynamo.reset()
        torch.compile(RunningStats(8), backend="kitsune")(torch.randn(4, 8))
    constant_folder, stats_folder = sorted(root.iterdir())
    assert (constant_folder / "constants.pt").exists()
    assert _run_repro_in_process(constant_folder) == 0
    ns = _load_repro(stats_folder)
    assert "int64" in [getattr(s, "dtype", None) for s in ns["INPUTS"]]
    assert "aten.copy_.default" in (stats_folder / "00_input.py").read_text()
    assert _run_repro_in_process(stats_folder) == 0
    assert capsys.readouterr().out.count("OK: kitsune matches eager") == 2


def test_numbering_continues_after_existing_folders(tmp_path):
    root = tmp_path / "dump"
    (root / "007_old").mkdir(parents=True)
    with kitsune_backend.config.patch(debug_dir=str(root)):
        torch.compile(MLP((8, 4)), backend="kitsune")(torch.randn(2, 8))
    assert sorted(os.listdir(root))[-1].startswith("008_compile")


def test_an_unwritable_dump_warns_and_the_compile_still_works(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    model, x = MLP((8, 4)), torch.randn(2, 8)
    with kitsune_backend.config.patch(debug_dir=str(blocker / "dump")):
        with pytest.warns(RuntimeWarning, match="could not write the debug dump"):
            out = torch.compile(model, backend="kitsune")(x)
    assert_close(out, model(x))
    (record,) = kitsune_backend.last_compile().records
    assert any(d.stage == "debug_dump" for d in record.declines)


def test_dynamic_shapes_reproduce_with_size_hints(tmp_path, capsys):
    root = tmp_path / "dump"
    with kitsune_backend.config.patch(debug_dir=str(root)):
        compiled = torch.compile(MLP((8, 16, 4)), backend="kitsune", dynamic=True)
        compiled(torch.randn(5, 8)).sum().backward()
    forward = kitsune_backend.last_compile().forward
    sizes = [n for n in forward.input_nodes if n.op == "placeholder" and n.shape is None]
    assert [n.value for n in sizes] == [5]  # the symbolic batch size, by its hint
    folders = sorted(root.iterdir())
    assert len(folders) == 2
    assert [_run_repro_in_process(folder) for folder in folders] == [0, 0]
    assert capsys.readouterr().out.count("OK: kitsune matches eager") == 2


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    shape=st.lists(st.integers(0, 4), max_size=4),
    dtype=st.sampled_from(["float32", "float16", "bfloat16", "float64", "int64", "bool",
                           "complex64", "float8_e4m3fn"]),
    data=st.data(),
)
def test_input_specs_make_exactly_their_layout(shape, dtype, data):
    stride = data.draw(st.lists(st.integers(0, 6), min_size=len(shape), max_size=len(shape)))
    spec = InputSpec(tuple(shape), tuple(stride), dtype, "cpu")
    made = spec.make(torch.Generator().manual_seed(0))
    assert tuple(made.shape) == spec.shape
    assert str(made.dtype) == f"torch.{dtype}"
    if made.numel():
        assert made.stride() == spec.stride
    if made.numel() > 4 and made.is_floating_point():
        assert made.float().abs().sum() > 0  # random, never all zeros


def test_debug_schedule_profiles_the_third_call_into_the_dump(tmp_path):
    """``debug_schedule``: nothing measured before the third call, the measured schedule
    after it; every call's results are the model's."""
    from kitsune_backend import schedule_probe

    torch.manual_seed(0)
    model = MLP((8, 16, 4))
    with kitsune_backend.config.patch(debug_dir=str(tmp_path), debug_schedule=True):
        compiled = torch.compile(model, backend="kitsune")
        with torch.no_grad():
            for call in range(1, 5):
                x = torch.randn(3, 8)
                assert_close(compiled(x), model(x))
                (folder,) = list(tmp_path.iterdir())
                written = (folder / "schedule_measured.txt").exists()
                assert written == (call >= schedule_probe.PROFILED_CALL)
    text = (folder / "schedule_measured.txt").read_text()
    assert text.startswith("call 3, measured by torch.profiler")
    assert "the profiler measures CUDA kernels only" in text
    assert json.loads((folder / "schedule_measured.json").read_text())["kernels"] == []


def test_the_measured_schedule_files_hold_every_kernel(tmp_path):
    from kitsune_backend.schedule_probe import write_schedule

    events = [
        {"ph": "X", "cat": "kernel", "name": "kitsune_fused_relu_0", "ts": 100.0, "dur": 5.0,
         "args": {"stream": 7}},
        {"ph": "X", "cat": "kernel", "name": "sm90_gemm", "ts": 102.0, "dur": 9.0,
         "args": {"stream": 13}},
        {"ph": "X", "cat": "cpu_op", "name": "aten::add", "ts": 90.0, "dur": 3.0},
    ]
    write_schedule(events, str(tmp_path), torch.device("cuda"))
    kernels = json.loads((tmp_path / "schedule_measured.json").read_text())["kernels"]
    assert [(k["name"], k["stream"], k["start_us"]) for k in kernels] == [
        ("kitsune_fused_relu_0", 7, 0.0), ("sm90_gemm", 13, 2.0)]
    text = (tmp_path / "schedule_measured.txt").read_text()
    assert "2 kernels on 2 stream(s): 11.0 us end to end" in text
    assert "stream 13:" in text
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "schedule_measured.png").stat().st_size > 0


@hypothesis.given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 50), st.integers(0, 20)),
                           max_size=30))
def test_schedule_rows_hold_each_span_once_and_never_overlap(raw):
    """Rows (streams, split into lanes) of the measured picture: no two spans of a row
    overlap in time, every span is on a row of its own stream exactly once."""
    from kitsune_backend.schedule_picture import rows

    spans = [{"name": f"k{i}", "stream": s, "start_us": float(t), "dur_us": float(d)}
             for i, (s, t, d) in enumerate(raw)]
    placed = []
    for label, row in rows(spans):
        assert all(label.startswith(f"stream {s['stream']}") for s in row)
        for a, b in zip(row, row[1:]):
            assert a["start_us"] + a["dur_us"] <= b["start_us"]
        placed.extend(s["name"] for s in row)
    assert sorted(placed) == sorted(s["name"] for s in spans)
