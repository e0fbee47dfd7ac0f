"""GPU proof of the runtime: streams, events, capture, replay, outputs, RNG, training.

Run on the GPU machine with ``KITSUNE_TEST_GPU=1 python -m pytest -m gpu tests/gpu``.
Bitwise comparisons need deterministic libraries: ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` is set
here before CUDA starts, cuDNN is put in deterministic mode and TF32 is off.
"""

import copy
import os
import subprocess
import sys
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import kitsune_backend  # noqa: E402
from kitsune_backend.backend import kitsune  # noqa: E402
from kitsune_backend.models import MLP, BranchyHeads, SmallCNN  # noqa: E402
from tests.helpers import assert_close  # noqa: E402
from tests.helpers_gpu import DEV, compile_with, deterministic  # noqa: E402,F401 (autouse)

pytestmark = pytest.mark.gpu


class BasicConv(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """GoogLeNet's inception block (3a sizes): four branches, concatenated."""

    def __init__(self, cin=192, c1=64, c3r=96, c3=128, c5r=16, c5=32, pool=32):
        super().__init__()
        self.b1 = BasicConv(cin, c1, kernel_size=1)
        self.b2 = nn.Sequential(
            BasicConv(cin, c3r, kernel_size=1), BasicConv(c3r, c3, kernel_size=3, padding=1)
        )
        self.b3 = nn.Sequential(
            BasicConv(cin, c5r, kernel_size=1), BasicConv(c5r, c5, kernel_size=3, padding=1)
        )
        self.b4 = nn.Sequential(
            nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv(cin, pool, kernel_size=1)
        )

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class TwoInceptions(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Inception()
        self.b = Inception(cin=256, c1=128, c3r=128, c3=192, c5r=32, c5=96, pool=64)

    def forward(self, x):
        return self.b(self.a(x))


def forward_record():
    return kitsune_backend.last_compile().forward


MODELS = {
    "branchy": (lambda: BranchyHeads(512, 8, 512), (32, 512)),
    "inception": (lambda: TwoInceptions(), (1, 192, 28, 28)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("captured", [False, True])
def test_streams_bitwise_equal_to_one_stream_under_debug_delays(name, captured):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make().to(DEV).eval()
    inputs = [torch.randn(shape, device=DEV) for _ in range(12)]
    with torch.no_grad():
        single = compile_with(model, num_streams=1, cuda_graphs=captured)
        expected = [single(x).clone() for x in inputs]
        multi = compile_with(model, num_streams=8, cuda_graphs=captured, stream_debug_delays=True,
                             stream_memory_budget=float("inf"))  # every branch on a stream
        for rep in range(3):
            for x, e in zip(inputs, expected):
                out = multi(x)
                assert torch.equal(out, e), f"{name} rep {rep}: differs from one stream"
        record = forward_record()
        assert record.stats["streams_used"] > 1, record.declines
        assert record.stats["executor"] == "streams"
        assert_close(out, model(inputs[-1]))
    if name == "branchy":  # at least the first matmul of every head writes into the arena
        assert record.stats["arena_aten_nodes"] >= 8, record.stats
    if captured:
        assert record.stats["cuda_graph_instances"] >= 1, record.declines
        assert record.stats.get("uncaptured_calls", 0) == 1  # the warm-up only
    print(name, "captured" if captured else "uncaptured", record.stats)


def test_replay_equals_eager_and_outputs_survive_the_next_call():
    torch.manual_seed(0)
    model = BranchyHeads(512, 8, 512).to(DEV).eval()
    compiled = compile_with(model)
    with torch.no_grad():
        x = [torch.randn(32, 512, device=DEV) for _ in range(6)]
        for xi in x[:3]:  # warm-up, capture, replay
            assert_close(compiled(xi), model(xi))
        record = forward_record()
        assert record.stats["cuda_graph_instances"] == 1
        out_a = compiled(x[3])
        out_b = compiled(x[4])  # out_a is still held: must not be overwritten
        torch.cuda.synchronize()
        assert_close(out_a, model(x[3]))
        assert_close(out_b, model(x[4]))
        assert record.stats["cuda_graph_instances"] == 2
        view = out_b[:, :10]  # a view alone also keeps the memory reserved
        del out_a, out_b
        out_c = compiled(x[5])
        assert_close(view, model(x[4])[:, :10])
        assert_close(out_c, model(x[5]))
        del view, out_c
        for _ in range(5):
            compiled(x[0])
        assert record.stats["cuda_graph_instances"] == 2


def test_small_outputs_are_copies_so_held_ones_need_no_second_instance():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10)).to(DEV).eval()
    compiled = compile_with(model)
    x = [torch.randn(8, 64, device=DEV) for _ in range(6)]
    with torch.no_grad():
        held = [compiled(xi) for xi in x]  # every output kept while the next call runs
        torch.cuda.synchronize()
        for out, xi in zip(held, x):
            assert_close(out, model(xi))
    record = forward_record()
    assert record.stats["outputs_copied_out"] == 1
    assert record.stats["cuda_graph_instances"] == 1
    assert record.stats.get("uncaptured_calls", 0) == 1  # the warm-up only


# Run in a child process: before the fix, the replay read freed memory and the illegal
# memory access it raised broke CUDA for the rest of the process.
CUBLAS_WORKSPACES_CLEARED = """
import sys, torch
from kitsune_backend.backend import kitsune
from kitsune_backend.models import BranchyHeads
torch.backends.cuda.matmul.allow_tf32 = False
torch.manual_seed(0)
model = BranchyHeads(512, 8, 512).cuda().eval()
compiled = torch.compile(model, backend=kitsune)
with torch.no_grad():
    for _ in range(3):  # warm-up, capture, replay
        compiled(torch.randn(32, 512, device="cuda"))
    # what Inductor's CUDA graphs do when they record, and then give the memory back
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    x = torch.randn(32, 512, device="cuda")
    got = compiled(x)
    torch.cuda.synchronize()
    print((got - model(x)).abs().max().item())
"""


def test_replay_survives_cublas_workspaces_cleared_by_others():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("CUBLAS_WORKSPACE_CONFIG", None)  # default workspaces: large enough to be unmapped
    done = subprocess.run([sys.executable, "-c", CUBLAS_WORKSPACES_CLEARED], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-4


def test_same_input_object_and_in_place_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU()).to(DEV).eval()
    compiled = compile_with(model)
    x = torch.randn(8, 64, device=DEV)
    with torch.no_grad():
        for _ in range(3):
            assert_close(compiled(x), model(x))
        x.mul_(2)  # same object, new contents: the copy into the static buffer must happen
        assert_close(compiled(x), model(x))
        x2 = x.clone()
        assert_close(compiled(x2), model(x2))


def test_dropout_gives_fresh_masks_each_replay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Dropout(0.5)).to(DEV).train()
    compiled = compile_with(model)
    x = torch.randn(64, 256, device=DEV)
    with torch.no_grad():
        masks = [(compiled(x) == 0).clone() for _ in range(6)]
    record = forward_record()
    assert record.stats.get("cuda_graph_instances", 0) >= 1, record.declines
    for a, b in zip(masks[2:], masks[3:]):
        assert not torch.equal(a, b)
    frac = masks[-1].float().mean().item()
    assert 0.4 < frac < 0.6


def _train(model, compiled_model, make_batch, steps=20):
    opt_e = torch.optim.SGD(model.parameters(), lr=0.05)
    opt_c = torch.optim.SGD(compiled_model.parameters(), lr=0.05)
    compiled = compile_with(compiled_model)
    losses = []
    for step in range(steps):
        x, y = make_batch(step)
        le = F.cross_entropy(model(x), y)
        opt_e.zero_grad()
        le.backward()
        opt_e.step()
        lc = F.cross_entropy(compiled(x), y)
        opt_c.zero_grad()
        lc.backward()
        opt_c.step()
        losses.append((le.item(), lc.item()))
    for le, lc in losses:
        assert abs(le - lc) <= 1e-3 * max(1.0, abs(le)), losses
    return losses


@pytest.mark.parametrize("name", ["mlp", "smallcnn"])
def test_training_through_captured_graphs_matches_eager(name):
    torch.manual_seed(0)
    if name == "mlp":
        model, shape = MLP().to(DEV), (64, 784)
    else:
        model, shape = SmallCNN().to(DEV), (16, 3, 16, 16)
    twin = copy.deepcopy(model)
    gen = torch.Generator(device=DEV).manual_seed(1)

    def batch(step):
        x = torch.randn(shape, device=DEV, generator=gen)
        return x, torch.randint(0, 10, (shape[0],), device=DEV, generator=gen)

    _train(model, twin, batch)
    session = kitsune_backend.last_compile()
    for record in session.records:
        print(name, record.name, record.stats, [str(d) for d in record.other_declines])
    forward = session.forward
    assert forward.stats.get("cuda_graph_instances", 0) >= 1, forward.declines
    backward = session.backward.stats
    assert backward.get("cuda_graph_instances", 0) >= 1, session.backward.declines
    assert backward["inputs_read_in_place"] > 0  # saved activations are not copied
    # _train keeps the last loss while the next step runs: the loss is handed out as a
    # copy, so the forward needs one instance (and the backward reads that one's outputs).
    assert forward.stats["outputs_copied_out"] == 1
    assert forward.stats["cuda_graph_instances"] == 1
    assert backward["cuda_graph_instances"] == 1
    if name == "mlp":  # weights saved for backward (as transposed views) are not copied:
        assert backward["inputs_copied"] <= 3  # only labels, the input and the loss grad
    # the forward and the backward captured their arenas in one shared buffer
    (buffer,) = session.arena_group._buffers.values()
    sizes = [r.stats["arena_bytes"] for r in session.records]
    assert buffer.numel() == max(sizes), sizes
    if name == "smallcnn":
        for a, b in zip(model.buffers(), twin.buffers()):
            assert_close(b, a)


def test_two_forwards_before_backward():
    torch.manual_seed(0)
    model = MLP().to(DEV)
    twin = copy.deepcopy(model)
    compiled = compile_with(twin)
    xs = [torch.randn(16, 784, device=DEV) for _ in range(8)]
    for i in range(0, 8, 2):  # saved tensors of call i are alive during call i+1
        (model(xs[i]).sum() + model(xs[i + 1]).square().sum()).backward()
        (compiled(xs[i]).sum() + compiled(xs[i + 1]).square().sum()).backward()
        for p, q in zip(model.parameters(), twin.parameters()):
            assert_close(q.grad, p.grad)
            p.grad = q.grad = None


def test_the_measured_schedule_of_a_replay_shows_streams_overlapping(tmp_path):
    """``debug_schedule``: the dump gets the profiled third call (a CUDA-graph replay); its
    kernels overlap in time, as four streams let them."""
    import json
    import shutil

    model = TwoInceptions().to(DEV).eval()
    compiled = compile_with(model, num_streams=4, debug_dir=str(tmp_path),
                            debug_schedule=True)
    x = torch.randn(1, 192, 28, 28, device=DEV)
    with torch.no_grad():
        for _ in range(3):
            out = compiled(x)
        assert_close(out, model(x))
    (folder,) = [p for p in tmp_path.iterdir() if (p / "schedule_measured.json").exists()]
    measured = json.loads((folder / "schedule_measured.json").read_text())
    spans = measured["kernels"]
    assert len(spans) >= 20
    overlaps = sum(1 for a, b in zip(spans, spans[1:])
                   if b["start_us"] < a["start_us"] + a["dur_us"])
    assert overlaps > 0, "no two kernels ran at the same time"
    out_dir = os.environ.get("OUT")
    if out_dir and (folder / "schedule_measured.png").exists():
        shutil.copy(folder / "schedule_measured.png",
                    os.path.join(out_dir, "inception_schedule_measured.png"))
    print((folder / "schedule_measured.txt").read_text().splitlines()[1])


def per_call_us(fn, x, iters=300):
    with torch.no_grad():
        for _ in range(20):
            fn(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            fn(x)
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e6


def host_us(fn, x, iters=300):
    """Host time of one call (the device is synchronized between calls, outside the timing)."""
    with torch.no_grad():
        for _ in range(20):
            fn(x)
        torch.cuda.synchronize()
        total = 0.0
        for _ in range(iters):
            t = time.perf_counter()
            fn(x)
            total += time.perf_counter() - t
            torch.cuda.synchronize()
    return total / iters * 1e6


def null_backend():
    """Dynamo + AOTAutograd with a compiled graph that returns fixed outputs: the host cost
    that every AOT backend pays before its own code runs."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    def compiler(gm, example_inputs):
        outs = gm(*example_inputs)
        return make_boxed_func(lambda *args: outs)

    return aot_autograd(fw_compiler=compiler, inference_compiler=compiler)


def replay_host_us(model, x, iters=300):
    """Host time per call spent inside kitsune's CapturedRunner (replay path included)."""
    from kitsune_backend.runtime import capture

    spent = []
    original = capture.CapturedRunner.__call__

    def timed(self, *args):
        t = time.perf_counter()
        out = original(self, *args)
        spent.append(time.perf_counter() - t)
        return out

    capture.CapturedRunner.__call__ = timed
    try:
        torch._dynamo.reset()
        fn = torch.compile(model, backend=kitsune, options={"num_streams": 8})
        host_us(fn, x, iters)
    finally:
        capture.CapturedRunner.__call__ = original
    return sum(spent[-iters:]) / iters * 1e6


def device_us(fn, x, iters=20):
    """Device time of one call: the GPU sleeps while the host enqueues the call, so host
    overhead is hidden and only the kernels' (or the graph's) time is measured."""
    with torch.no_grad():
        for _ in range(5):
            fn(x)
        times = []
        for _ in range(iters):
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(100_000_000)
            start.record()
            fn(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def kitsune_compiled(model, **options):
    """``torch.compile`` with kitsune and ``options`` (no Dynamo reset, unlike compile_with)."""
    return torch.compile(model, backend=kitsune, options=options)


def timing_report():
    """Per-call and host time of kitsune vs eager and Inductor's reduce-overhead."""
    torch.backends.cuda.matmul.allow_tf32 = True
    cases = {"branchy(32,512)x8": (BranchyHeads(512, 8, 512), (32, 512)),
             "inception x2 b1": (TwoInceptions(), (1, 192, 28, 28))}
    for name, (model, shape) in cases.items():
        model = model.cuda().eval()
        x = torch.randn(shape, device="cuda")
        rows = []
        for label, make in [
            ("eager", lambda: model),
            ("inductor reduce-overhead", lambda: torch.compile(model, mode="reduce-overhead")),
            ("kitsune 1 stream + graph", lambda: kitsune_compiled(model, num_streams=1)),
            ("kitsune default (4 streams) + graph", lambda: kitsune_compiled(model)),
            ("kitsune 8 streams + graph", lambda: kitsune_compiled(model, num_streams=8)),
            ("dynamo+aot, null graph", lambda: torch.compile(model, backend=null_backend())),
            ("kitsune 8 streams, no graph",
             lambda: kitsune_compiled(model, num_streams=8, cuda_graphs=False)),
        ]:
            torch._dynamo.reset()
            fn = make()
            try:
                rows.append((label, per_call_us(fn, x), host_us(fn, x), device_us(fn, x)))
            except Exception as exc:  # report and go on
                rows.append((label, float("nan"), float("nan"), float("nan")))
                print(label, "failed:", exc, file=sys.stderr)
        print(f"\n{name}: us per call: throughput (sync every 300) / host / device (median)")
        for label, t, h, d in rows:
            print(f"  {label:36s} {t:9.1f} {h:9.1f} {d:9.1f}")
        print(f"  inside kitsune's CapturedRunner: {replay_host_us(model, x):.1f} us per call")


if __name__ == "__main__":  # timings for the report: python tests/gpu/test_runtime_gpu.py
    timing_report()

