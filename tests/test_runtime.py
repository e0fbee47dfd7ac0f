"""The runtime on CPU: generated multi-stream code (with stand-in streams), declines, plot."""

import re

import pytest
import torch
import torch.fx as fx

import kitsune_backend
from tests.helpers import assert_close, random_like_model_input
from kitsune_backend.config import Config
from kitsune_backend.models import BranchyHeads, MLP, RunningStats
from kitsune_backend.passes.streams import assign_streams
from kitsune_backend.record import CompileRecord, PassRecord, snapshot
from kitsune_backend.binding.capture import capture_decline
from kitsune_backend.runtime.capture import COPY_OUT_MAX_BYTES, copy_out_indices
from kitsune_backend.runtime.executor import ScheduleRunner
from kitsune_backend.runtime.schedule_code import cross_stream_values
from tests.schedule_plot import render_schedule, schedule_layout
from tests.helpers_graphs import branchy, branchy_graph, context, trace


class FakeOps:
    """Stands in for StreamOps on CPU: same interface, records what the code asks for."""

    def __init__(self, plan):
        self.plan = plan
        self.events = {v: object() for v in plan.recorded()}
        self.trace = []

    def _fn(self, name, entry):
        def fn():
            self.trace.append(entry)

        fn.__name__ = name
        return fn

    def fork(self):
        self.trace.append(("fork",))

    def join(self):
        self.trace.append(("join",))

    def restore(self):
        self.trace.append(("restore",))

    def switch(self, s):
        return self._fn(f"to_stream_{s}", ("switch", s))

    def record(self, node):
        return self._fn(f"record_{node}", ("record", node.name))

    def wait(self, node, s):
        return self._fn(f"wait_{node}", ("wait", node.name, s))


def multi_stream_runner(num_streams=4):
    gm, inputs = branchy_graph()
    ctx = context(inputs, num_streams=num_streams)
    assign_streams(gm, ctx)
    plan = ctx.stream_plan
    ops = FakeOps(plan)
    return gm, plan, ops, ScheduleRunner(gm, plan, ops)


def test_generated_code_follows_the_plan():
    gm, plan, ops, runner = multi_stream_runner()
    shapes = [(64, 256)] + [(256, 256)] * 4
    args = [random_like_model_input(s, seed=i) for i, s in enumerate(shapes)]
    assert_close(runner(*args), branchy(*args))
    current, seen_waits, lines = 0, [], runner.code.splitlines()
    streams = {n.name: s for n, s in plan.stream.items()}
    for line in lines:
        switch = re.search(r"to_stream_(\d+)\(\)", line)
        if switch:
            current = int(switch.group(1))
        wait = re.search(r"_wait_(\w+?)\(\)", line)
        if wait:
            seen_waits.append(wait.group(1))
        name = line.strip().split(" = ")[0]
        if name in streams and " = torch.ops" in line:
            assert current == streams[name], line
            node = next(n for n in plan.order if n.name == name)
            assert all(u.name in seen_waits for u in plan.waits[node])
    assert ops.trace[0] == ("fork",) and ("join",) in ops.trace
    assert sum(1 for t in ops.trace if t[0] == "wait") == plan.events
    keep = next(line for line in lines if "kitsune_keep_alive(" in line)
    for node in cross_stream_values(gm, plan):
        assert node.name in keep


def test_single_stream_runs_the_graph_code_unchanged():
    gm, inputs = trace(lambda x: x.relu() + 1, (4, 4))
    runner = ScheduleRunner(gm)
    assert "kitsune" not in runner.code
    x = random_like_model_input((4, 4))
    assert_close(runner(x), x.relu() + 1)


@pytest.mark.parametrize("model_fn, shape", [(lambda: BranchyHeads(32, 3, 32), (4, 32)),
                                             (lambda: MLP((16, 8, 4)), (5, 16))])
def test_compiled_on_cpu_matches_eager_and_says_why_not_captured(model_fn, shape):
    torch.manual_seed(0)
    model = model_fn()
    compiled = torch.compile(model, backend="kitsune")
    x = random_like_model_input(shape)
    assert_close(compiled(x), model(x))
    compiled(x).sum().backward()
    session = kitsune_backend.last_compile()
    for record in session.records:
        assert record.stats["executor"] == "graph"
        assert record.stats["capture"].startswith("declined: CPU tensors")
        reasons = [d.reason for d in record.declines]
        assert any("CPU tensors" in r for r in reasons)
        assert not record.fallback_reason


def test_input_mutation_stays_correct_on_cpu():
    torch.manual_seed(0)
    model, reference = RunningStats(16), RunningStats(16)
    reference.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend="kitsune")
    for _ in range(3):
        x = random_like_model_input((4, 16))
        with torch.no_grad():
            assert_close(compiled(x), reference(x))
    assert_close(model.running_mean, reference.running_mean)
    assert int(model.calls) == 3


def fake_cuda(*shapes):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return [torch.empty(s, device="cuda") for s in shapes]


def test_capture_decline_reasons():
    gm, _ = trace(lambda x: x.relu() + 1, (4, 4))
    assert "CPU tensors" in capture_decline(gm, [torch.randn(4, 4)], ())
    assert "makes a cpu tensor" in capture_decline(gm, fake_cuda((4, 4)), ())
    sync, _ = trace(lambda x: torch.nonzero(x.relu()), (4, 4))
    assert "synchronizes with the host" in capture_decline(sync, fake_cuda((4, 4)), ())

    def mutate(x, y):
        x.add_(1)
        return y * 2

    gm, _ = trace(mutate, (4,), (4,))
    assert "writes into input" in capture_decline(gm, fake_cuda((4,), (4,)), ())
    assert "writes into input" not in capture_decline(gm, fake_cuda((4,), (4,)), (0,))
    assert "non-tensor input" in capture_decline(gm, fake_cuda((4,)) + [3.0], ())
    assert "non-tensor input" not in capture_decline(gm, fake_cuda((4,)) + [3], ())  # a size


def test_render_schedule(tmp_path):
    gm, plan, ops, runner = multi_stream_runner()
    record = CompileRecord(name="forward", config=Config())
    code, nodes = snapshot(gm)
    record.passes.append(
        PassRecord("streams", "assign_streams", 0.0, False, [], [], {}, code, nodes)
    )
    record.runtime_info["capture"] = "declined: test"
    layout = schedule_layout(record)
    assert {n["stream"] for n in layout} == {0, 1, 2, 3}
    where = {n["name"]: n for n in layout}
    for n in layout:
        for w in n["waits"]:
            assert where[w]["end"] <= n["start"]
    for suffix in ("png", "svg"):
        path = render_schedule(record, tmp_path / f"schedule.{suffix}")
        assert (tmp_path / f"schedule.{suffix}").stat().st_size > 1000, path


def test_copy_out_picks_small_unshared_caller_outputs():
    loss, logits, saved = torch.randn(()), torch.randn(4, 10), torch.randn(3)
    big = torch.empty(COPY_OUT_MAX_BYTES // 4 + 1)
    base = torch.randn(8, 8)  # two outputs viewing one storage: neither is copied
    outputs = [loss, logits, big, base[0], base[1], saved, 7]
    caller = [0, 1, 2, 3, 4, 6]  # `saved` (5) is not a caller output: backward reads it
    assert copy_out_indices(outputs, caller, set()) == (0, 1)
    # an output living in an input's memory is left alone
    assert copy_out_indices(outputs, caller, {logits.untyped_storage()._cdata}) == (0,)


def test_caller_outputs_are_the_user_outputs(monkeypatch):
    """The forward graph's outputs the caller receives (not the tensors saved for backward),
    and every output of an inference graph: the only ones a replay may hand out as copies."""
    from kitsune_backend import compiler

    seen = {}
    real = compiler.caller_output_indices

    def spy(kind, gm):
        outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        seen[kind] = (real(kind, gm), len(outputs))
        return seen[kind][0]

    monkeypatch.setattr(compiler, "caller_output_indices", spy)
    fn = lambda x: ((x.sin() * 2).sum(), x.cos() * x)  # noqa: E731
    x = torch.randn(8, 4, requires_grad=True)
    loss, other = torch.compile(fn, backend="kitsune")(x)
    (loss + other.sum()).backward()
    indices, count = seen["forward"]
    assert indices == (0, 1) and count > 2  # the rest are saved for backward
    assert seen["backward"][0] == ()
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(fn, backend="kitsune")(x)
    indices, count = seen["inference"]
    assert indices == tuple(range(count))


def test_cpu_constants_do_not_stop_capture_but_cpu_values_of_inputs_do():
    """A CPU tensor that depends on no input (torchvision's Swin builds its shift-window
    mask from ``torch.tensor`` constants) holds the same value at every replay; one made
    from an input would be baked in at capture."""

    class WithConstant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("c", torch.tensor(2.0))

        def forward(self, x):
            return x + self.c, x.cpu()

    gm = fx.symbolic_trace(WithConstant())
    (x,) = fake_cuda((4,))
    values = {"x": x, "c": torch.tensor(2.0), "add": x, "cpu": torch.empty(4)}
    for node in gm.graph.nodes:
        if node.name in values:
            node.meta["val"] = values[node.name]
    reason = capture_decline(gm, [x], ())
    assert "node cpu makes a cpu tensor that depends on the inputs" in reason
    gm.graph.erase_node(next(n for n in gm.graph.nodes if n.op == "output"))
    gm.graph.erase_node(next(n for n in gm.graph.nodes if n.name == "cpu"))
    gm.graph.output(next(n for n in gm.graph.nodes if n.name == "add"))
    assert capture_decline(gm, [x], ()) == ""
