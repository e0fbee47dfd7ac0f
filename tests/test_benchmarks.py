"""The benchmark harness on the CPU: the quick smoke run end to end, and that a wrong or
failing backend shows up in the results instead of being hidden."""

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import charts, checks, cli, measure, report  # noqa: E402  (after the path is set)
from benchmarks.backends import BY_NAME, Backend  # noqa: E402
from benchmarks.measure import RunOptions, measure_workload  # noqa: E402
from benchmarks.workloads import BY_NAME as WORKLOADS  # noqa: E402

KITSUNE_VARIANTS = [name for name, b in BY_NAME.items()
                    if name.startswith("kitsune") and not b.cuda_only]


def test_quick_cpu_smoke_run(tmp_path, capsys):
    """What CI runs: every model that fits, every kitsune variant, all micro-benchmarks."""
    out = tmp_path / "results.json"
    trace = tmp_path / "trace.json"
    code = cli.main(["run", "--device", "cpu", "--quick", "--backends",
                     ",".join(["eager"] + KITSUNE_VARIANTS), "--json", str(out),
                     "--trace", str(trace)])
    printed = capsys.readouterr().out
    assert "NOT A SPEED MEASUREMENT" in printed
    assert code == 0, printed
    results = json.loads(out.read_text())
    assert results["meta"]["quick"] and results["meta"]["device"] == "cpu"
    assert results["meta"]["torch"] == torch.__version__
    measured = {(r["model"], r["backend"]): r for r in results["models"]}
    for model in ("mlp", "lenet5", "branchy"):
        for backend in ["eager"] + KITSUNE_VARIANTS:
            row = measured[(model, backend)]
            if BY_NAME[backend].train_only and model == "branchy":  # an inference model
                assert row["status"] == "skipped" and row["note"] == "a training arrangement"
                continue
            assert row["status"] == "ok", row
            assert row["median_ms"] > 0 and row["first_call_s"] > 0
        assert measured[(model, "kitsune")]["graphs"] >= 1
    skipped = {s["what"]: s["reason"] for s in results["skipped"]}
    assert "too slow" in skipped["resnet18"]
    micro = results["micro"]
    assert micro["copy_gbps"] > 0
    assert {(r["case"], r["backend"]) for r in micro["rows"]} >= {
        ("softmax_bf16", "kitsune"), ("layer_norm_fp32", "eager"), ("pointwise10_fp32",
                                                                   "kitsune")}
    assert all(r["status"] == "ok" for r in micro["rows"])
    assert trace.exists(), "the branchy/kitsune profiler trace was not written"


def test_inductor_rows_run_on_cpu(tmp_path, capsys):
    """The comparison baseline works too (one small model, one micro case)."""
    code = cli.main(["run", "--device", "cpu", "--quick", "--models", "branchy",
                     "--micro", "softmax_fp32", "--backends", "inductor,cudagraphs"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    lines = [line for line in printed.splitlines() if line.startswith("branchy")]
    assert any("inductor" in line and " ok " in line for line in lines)
    assert any("cudagraphs" in line and "needs CUDA" in line for line in lines)


def test_tf32_is_off_during_a_run_and_restored_after(tmp_path):
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default
    try:
        out = tmp_path / "results.json"
        assert cli.main(["run", "--device", "cpu", "--quick", "--models", "none",
                         "--micro", "none", "--json", str(out)]) == 0
        meta = json.loads(out.read_text())["meta"]
        assert meta["allow_tf32"] == {"matmul": False, "cudnn": False}
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32 = before


class _WrongBackend(Backend):
    """Compiles with kitsune, then adds 1e-2 to every output: a silently wrong result."""

    def wrap(self, module):
        compiled = torch.compile(module, backend="kitsune")
        return lambda *args: compiled(*args) + 1e-2


class _BrokenBackend(Backend):
    """Fails the way a backend bug would."""

    def wrap(self, module):
        def call(*args):
            raise RuntimeError("kernel exploded")

        return call


def test_wrong_and_failing_backends_are_reported_not_hidden(capsys):
    rows = measure_workload(
        WORKLOADS["branchy"],
        [BY_NAME["eager"], _WrongBackend("wrong", "test"), _BrokenBackend("broken", "test")],
        RunOptions(device=torch.device("cpu"), iters=2, warmup=1),
    )
    status = {r["backend"]: r for r in rows}
    assert status["eager"]["status"] == "ok"
    assert status["wrong"]["status"] == "mismatch"
    assert "differs from eager" in status["wrong"]["note"]
    assert status["wrong"]["tol_ratio"] > 1.0
    assert status["broken"]["status"] == "error"
    assert "RuntimeError: kernel exploded" in status["broken"]["note"]
    results = report.new_results({"date": "x", "device": "cpu", "torch": "t", "triton": "t"})
    results["models"] = rows
    table = report.format_results(results)
    assert "MISMATCH" in table and "ERROR" in table
    assert "2 row(s) failed or mismatched eager" in table


def test_the_plain_loop_cross_check_flags_a_mistimed_backend(monkeypatch):
    """The host clock's loop (run after the timed one) sees 1 s more per call than the
    timed loop did, the way a timing that misses work on another stream would: the row is
    'mistimed'. (The extra second is added to the clock's result, not slept, so a loaded
    machine's noise cannot hide it.)"""
    from kitsune_backend import timing

    real = timing.time_each_call

    def host_clock_sees_more(fn, iters=30, warmup=5, device=None, clock="events"):
        found = real(fn, iters, warmup, device, clock)
        if clock == "wall":
            found = {k: v + 1000.0 if k in ("median", "p10", "p90", "mean", "min", "max")
                     else v for k, v in found.items()}
        return found

    monkeypatch.setattr(timing, "time_each_call", host_clock_sees_more)
    options = RunOptions(device=torch.device("cpu"), iters=6, warmup=1,
                         kernel_counts="no", cross_check=frozenset({"branchy"}))
    rows = measure_workload(WORKLOADS["branchy"], [BY_NAME["eager"], Backend("mistimed", "test")],
                            options)
    status = {r["backend"]: r for r in rows}
    assert status["mistimed"]["status"] == "mistimed"
    assert "off the host clock" in status["mistimed"]["note"]
    assert status["mistimed"]["plain_loop_ms"] > status["mistimed"]["median_ms"] + 500
    results = report.new_results({"date": "x", "device": "cpu", "torch": "t", "triton": "t"})
    results["models"] = rows
    assert any("mistimed" in line for line in report.failures(results))


class _StaleBackend(Backend):
    """Returns the first call's output again and again, as a bad CUDA-graph replay would."""

    def wrap(self, module):
        compiled = torch.compile(module, backend="kitsune")
        first = []

        def call(*args):
            if not first:
                first.append(compiled(*args).clone())
            return first[0]

        return call


def test_stale_outputs_are_caught_because_every_check_call_gets_new_inputs():
    rows = measure_workload(WORKLOADS["branchy"], [BY_NAME["eager"], _StaleBackend("stale", "t")],
                            RunOptions(device=torch.device("cpu"), iters=1, warmup=0))
    assert rows[1]["status"] == "mismatch"
    assert "outputs[" in rows[1]["note"]


def test_relative_l2_and_elementwise_checks():
    expected = torch.randn(1000, dtype=torch.float64)
    assert checks.relative_l2_error(expected * (1 + 1e-4), expected, 1e-2)[1] < 1.0
    assert checks.relative_l2_error(expected * 3, expected, 1e-2)[1] > 100
    assert checks.relative_l2_error(expected[:10], expected, 1e-2)[1] == float("inf")
    nan = expected.clone()
    nan[3] = float("nan")
    assert checks.elementwise_error(nan, expected, 1e-3, 1e-4)[1] == float("inf")
    assert checks.elementwise_error(nan, nan, 1e-3, 1e-4)[1] == 0.0
    ok, _, ratio, _, per_key = checks.compare_observations(
        {"step1_grads": expected * 1.001, "outputs": [expected.float()]},
        {"step1_grads": expected, "outputs": [expected.float()]})
    assert ok and ratio < 1.0 and set(per_key) == {"step1_grads", "outputs"}


def test_training_check_catches_a_wrong_gradient():
    """A backend whose loss is right but whose gradient is scaled fails the parameter check."""

    class _ScaledGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * 3.0

    class _WrongGrad(Backend):
        def wrap(self, module):
            return lambda x, y: _ScaledGrad.apply(module(x, y))

    rows = measure_workload(WORKLOADS["mlp"], [BY_NAME["eager"], _WrongGrad("wrong", "t")],
                            RunOptions(device=torch.device("cpu"), iters=1, warmup=0))
    assert rows[1]["status"] == "mismatch", rows[1]
    assert rows[1]["errors"]["step1_grads"] > 100 and rows[1]["errors"]["step1_loss"] < 1.0


def test_budget_skips_rows_with_a_reason():
    rows = measure_workload(WORKLOADS["branchy"], [BY_NAME["eager"], BY_NAME["kitsune"]],
                            RunOptions(device=torch.device("cpu"), iters=1, warmup=0), deadline=0.0)
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    assert rows[0]["note"] == "time budget used up"


def test_charts_are_drawn_or_explained(tmp_path, monkeypatch, capsys):
    results = report.new_results({"date": "2026-11-22", "device": "cuda", "gpu": "G",
                                  "torch": "t", "quick": False})
    results["models"] = [
        {"model": "branchy", "backend": b, "status": "ok", "speedup": s, "first_call_s": 1.0,
         "peak_mem_mb": 10.0, "kernels": 5}
        for b, s in (("eager", 1.0), ("kitsune", 3.0), ("kitsune-no-streams", 2.0))
    ]
    pytest.importorskip("matplotlib")
    path = tmp_path / "charts.png"
    assert charts.make_charts(results, str(path)) and path.stat().st_size > 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not charts.make_charts(results, str(tmp_path / "none.png"))
    assert "matplotlib is not installed" in capsys.readouterr().err


@pytest.mark.gpu
def test_quick_cuda_run_every_backend(tmp_path, capsys):
    """On the GPU: every backend, CUDA-graph ones included, runs and agrees with eager."""
    out = tmp_path / "results.json"
    code = cli.main(["run", "--device", "cuda", "--quick", "--models", "branchy,mlp",
                     "--micro", "softmax_bf16", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = json.loads(out.read_text())["models"]
    assert {r["backend"] for r in rows} == set(BY_NAME)
    graphed = [r for r in rows if r["backend"] in ("inductor-ro", "cudagraphs")]
    assert all(r["graph_launches"] >= 1 and r["kernels"] > r["launches"] for r in graphed)


def test_timing_and_kernel_counts_in_two_runs_are_joined(tmp_path, capsys):
    """`--kernel-counts no` times without the profiler, `only` counts without timing, and
    `merge --counts` puts the counts into the timed rows (what the GPU check does)."""
    timed, counted, joined = (tmp_path / f"{n}.json" for n in ("timed", "counted", "joined"))
    common = ["run", "--device", "cpu", "--quick", "--models", "mlp", "--micro", "softmax_fp32",
              "--backends", "kitsune"]
    assert cli.main(common + ["--kernel-counts", "no", "--json", str(timed)]) == 0
    assert cli.main(common + ["--kernel-counts", "only", "--json", str(counted)]) == 0
    timed_rows = json.loads(timed.read_text())["models"]
    counted_rows = json.loads(counted.read_text())["models"]
    assert all(r["median_ms"] > 0 and r["kernels"] is None for r in timed_rows)
    assert all(r["median_ms"] is None and r["cpu_ops"] > 0 for r in counted_rows)
    assert cli.main(["merge", str(timed), "--counts", str(counted), "--out", str(joined)]) == 0
    capsys.readouterr()
    joined_results = json.loads(joined.read_text())
    for row in joined_results["models"] + joined_results["micro"]["rows"]:
        assert row["median_ms"] > 0, row
    assert all(r["cpu_ops"] > 0 for r in joined_results["models"])
    assert joined_results["meta"]["kernel_counts_from"]["kernel_counts"] == "only"


def test_the_broad_suite_has_thirty_workloads_of_every_kind():
    from benchmarks import suite, zoo

    broad = [w for w in suite.ALL if w.group == "broad"]
    assert len(broad) >= 30 and len(suite.BY_NAME) == len(suite.ALL)
    assert {w.kind for w in broad} == {"infer", "train"}
    assert {"torchvision", "timm", "transformers"} == {r for w in broad for r in w.requires}
    assert all(w.quick_skip for w in broad)
    assert cli._models("core")[0] == [w for w in suite.ALL if w.group == "core"]
    assert cli._models("broad,mlp") == (broad + [suite.BY_NAME["mlp"]], False)
    assert cli._models("mlp,branchy")[1] is True
    with pytest.raises(SystemExit, match="unknown model"):
        cli._models("resnet1000")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5),
                                torch.nn.Dropout2d(0.2))
    assert all(m.p == 0.0 for m in zoo.without_randomness(model)[1:])


def test_reduce_overhead_rows_mark_a_step_before_every_call(monkeypatch):
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)
    wrapped = BY_NAME["inductor-ro"].wrap(torch.nn.Identity())
    for _ in range(3):
        wrapped(torch.ones(1))
    assert len(marks) == 3
    assert not BY_NAME["inductor"].marks_steps and not BY_NAME["kitsune"].marks_steps


def test_idle_graph_pool_bytes_counts_private_pools_only(monkeypatch):
    """CUDA-graph pools hold their replays' memory unallocated; the default pool's cached
    blocks and other devices' segments are not a graph's."""
    segments = [
        {"device": 0, "segment_pool_id": (0, 0), "total_size": 8 << 20, "allocated_size": 0},
        {"device": 0, "segment_pool_id": (1, 2), "total_size": 2 << 20, "allocated_size": 1 << 20},
        {"device": 0, "segment_pool_id": (1, 2), "total_size": 2 << 20, "allocated_size": 0},
        {"device": 0, "segment_pool_id": (1, 5), "total_size": 20 << 20, "allocated_size": 4 << 20},
        {"device": 1, "segment_pool_id": (1, 7), "total_size": 2 << 20, "allocated_size": 0},
    ]
    monkeypatch.setattr(torch.cuda, "memory_snapshot", lambda: segments)
    idle = measure.idle_graph_pool_bytes(torch.device("cuda", 0))
    assert idle == {(1, 2): 3 << 20, (1, 5): 16 << 20}


def test_the_serving_loop_smoke_run_checks_every_output(tmp_path, capsys):
    """``serving --quick`` on the CPU: eager and kitsune over changing batch sizes, every
    output against eager's, one row each with the loop's times and kitsune's graphs."""
    path = tmp_path / "serving.json"
    code = cli.main(["serving", "--quick", "--device", "cpu", "--backends", "eager,kitsune",
                     "--calls", "6", "--json", str(path)])
    assert code == 0, capsys.readouterr().out
    results = json.loads(path.read_text())
    rows = {r["backend"]: r for r in results["rows"]}
    assert set(rows) == {"eager", "kitsune"} and all(r["matches_eager"] for r in rows.values())
    assert rows["kitsune"]["graphs"] >= 1 and rows["kitsune"]["p50_ms"] > 0
    assert len(rows["eager"]["samples_ms"]) == 6
    assert "first loop s" in capsys.readouterr().out


def _trace(tmp_path, events):
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    return str(path)


def test_the_timeline_draws_measured_kernels_per_stream(tmp_path):
    """Kernels at the times and on the streams the trace gives; host events ignored."""
    from kitsune_backend.timing import kernel_spans

    events = [
        {"ph": "X", "cat": "kernel", "name": "kitsune_fused_relu_0", "ts": 1000.0, "dur": 5.0,
         "tid": 7, "args": {"stream": 7}},
        {"ph": "X", "cat": "kernel", "name": "ampere_sgemm", "ts": 1002.0, "dur": 9.0,
         "tid": 13, "args": {"stream": 13}},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 990.0, "dur": 3.0},
    ]
    spans = kernel_spans(events)
    assert [(s["stream"], s["start_us"], s["dur_us"]) for s in spans] == [(7, 0.0, 5.0),
                                                                          (13, 2.0, 9.0)]
    pytest.importorskip("matplotlib")
    out = tmp_path / "schedule.png"
    assert cli.main(["timeline", _trace(tmp_path, events), "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_a_trace_without_device_kernels_draws_nothing(tmp_path, capsys):
    trace = _trace(tmp_path, [{"ph": "X", "cat": "cpu_op", "name": "aten::add", "ts": 1.0}])
    assert cli.main(["timeline", trace, "--out", str(tmp_path / "x.png")]) == 1
    assert "no device kernels" in capsys.readouterr().err
