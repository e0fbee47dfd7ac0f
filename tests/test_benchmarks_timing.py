"""kitsune_backend.timing: statistics, call counts, profiler counting (CPU; GPU marked)."""

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kitsune_backend import timing


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.001, 1e3), min_size=1, max_size=50))
def test_summarize_orders_its_statistics(values):
    stats = timing.summarize(values)
    assert stats["min"] <= stats["p10"] <= stats["median"] <= stats["p90"] <= stats["max"]
    slack = 1e-12 * max(abs(stats["max"]), 1.0)  # the mean of equal floats may round by an ulp
    assert stats["min"] - slack <= stats["mean"] <= stats["max"] + slack


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 500), st.integers(1, 50))
def test_round_sizes_split_every_call(iters, rounds):
    rounds = min(rounds, iters)
    sizes = timing._round_sizes(iters, rounds)
    assert sum(sizes) == iters and len(sizes) == rounds
    assert max(sizes) - min(sizes) <= 1


def test_time_per_call_runs_warmup_plus_iters_on_cpu():
    calls = []
    stats = timing.time_per_call(lambda: calls.append(1), iters=7, warmup=3, rounds=3,
                                 device="cpu")
    assert len(calls) == 10
    assert stats["clock"] == "perf_counter" and stats["rounds"] == 3
    assert len(stats["samples"]) == 3
    assert stats["p10"] <= stats["median"] <= stats["p90"]


def test_time_per_call_rejects_no_iterations():
    with pytest.raises(ValueError, match="iters"):
        timing.time_per_call(lambda: None, iters=0, device="cpu")


def test_first_call_seconds_returns_the_result():
    def slow_answer():
        time.sleep(0.05)
        return 42

    seconds, result = timing.first_call_seconds(slow_answer, device="cpu")
    assert result == 42
    assert 0.049 <= seconds < 5  # the call's own time, not more than a loaded machine adds


def test_count_trace_events_classifies_events():
    events = [
        {"ph": "X", "cat": "kernel", "name": "triton_poi_fused_add_0", "dur": 3.5},
        {"ph": "X", "cat": "kernel", "name": "ampere_sgemm", "dur": 10.0},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoD"},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel"},
        {"ph": "X", "cat": "cuda_driver", "name": "cuLaunchKernel"},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch"},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize"},
        {"ph": "X", "cat": "cpu_op", "name": "aten::add"},
        {"ph": "s", "cat": "ac2g", "name": "flow"},
    ]
    counts = timing.count_trace_events(events)
    assert counts == {"kernels": 2, "kernel_ms": 0.0135, "launches": 3, "graph_launches": 1,
                      "copies": 1, "cpu_ops": 1}


def test_count_kernels_on_cpu_counts_host_ops_only(tmp_path):
    x = torch.randn(8, 8)
    trace = tmp_path / "trace.json"
    counts = timing.count_kernels(lambda: (x @ x).relu(), device="cpu", trace_path=str(trace))
    assert counts["kernels"] is None and counts["launches"] is None
    assert counts["cpu_ops"] >= 2
    assert trace.exists()


@pytest.mark.gpu
def test_cuda_timing_and_kernel_counts_including_graph_replay():
    x = torch.randn(1024, 1024, device="cuda")
    stats = timing.time_per_call(lambda: torch.relu(x), iters=20, warmup=2)
    assert stats["clock"] == "cuda_events" and stats["median"] > 0
    eager = timing.count_kernels(lambda: torch.relu(x + 1))
    assert eager["kernels"] == 2 and eager["launches"] >= 2 and eager["graph_launches"] == 0

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.relu(x + 1)  # warm up off the default stream before capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.relu(x + 1)
    replay = timing.count_kernels(graph.replay)
    assert replay["graph_launches"] == 1
    assert replay["kernels"] == 2, "kernels replayed from a CUDA graph are counted one by one"


def test_time_each_call_times_every_call_alone_on_cpu():
    calls = []
    stats = timing.time_each_call(lambda: calls.append(1), iters=5, warmup=2, device="cpu")
    assert len(calls) == 7 and len(stats["samples"]) == 5
    assert stats["clock"] == "wall"
    with pytest.raises(ValueError, match="clock"):
        timing.time_each_call(lambda: None, clock="sundial")
