"""Small timing primitives shared by the benchmark harness and the demo.

* :func:`time_per_call` times calls "from Python": ``rounds`` groups of back-to-back calls,
  each group between two CUDA events (or two ``perf_counter`` reads on the CPU), divided by
  the calls in the group. Host cost counts, because the device waits for the host when the
  host is the slower side. Only one synchronization happens, after the last group.
* :func:`first_call_seconds` is the wall time of one call, synchronized (compile time).
* :func:`count_kernels` runs a function once under ``torch.profiler`` and counts the device
  kernels it ran and the launches the host issued; it can keep the Chrome trace.
* :func:`profile_events` is that profiled run's trace events; :func:`kernel_spans` reads the
  device kernels' streams, starts and durations out of them.

>>> stats = time_per_call(lambda: model(x), iters=100, warmup=10)
>>> stats["median"], stats["p10"], stats["p90"]      # milliseconds per call
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Optional, Union

import torch

Device = Union[str, torch.device, None]

# Host API calls that put work on the device, as the profiler names them.
_LAUNCH_PREFIXES = (
    "cudaLaunchKernel",
    "cuLaunchKernel",
    "cudaLaunchCooperativeKernel",
    "cudaGraphLaunch",
    "cuGraphLaunch",
)
_GRAPH_LAUNCH_PREFIXES = ("cudaGraphLaunch", "cuGraphLaunch")


def resolve_device(device: Device = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` means CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def synchronize(device: Device = None) -> None:
    """Wait for all queued work on ``device`` (nothing to wait for on the CPU)."""
    device = resolve_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0..100) of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def summarize(per_call_ms: list[float]) -> dict[str, float]:
    """Median, p10, p90, min, max and mean of per-call times (milliseconds)."""
    if not per_call_ms:
        raise ValueError("no timings to summarize")
    ordered = sorted(per_call_ms)
    return {
        "median": statistics.median(ordered),
        "p10": _percentile(ordered, 10),
        "p90": _percentile(ordered, 90),
        "min": ordered[0],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def _round_sizes(iters: int, rounds: int) -> list[int]:
    """Split ``iters`` calls into ``rounds`` groups whose sizes differ by at most one."""
    base, extra = divmod(iters, rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds)]


def time_per_call(
    fn: Callable[[], Any],
    iters: int = 100,
    warmup: int = 10,
    rounds: Optional[int] = None,
    device: Device = None,
) -> dict[str, Any]:
    """Milliseconds per call of ``fn()``, measured over back-to-back calls.

    ``warmup`` untimed calls come first. Then ``iters`` calls run in ``rounds`` groups
    (default: ``min(iters, 10)``); each group is timed as a whole and divided by its size,
    giving one sample per group. Returns the :func:`summarize` statistics (``median``,
    ``p10``, ``p90``, ``min``, ``max``, ``mean``, all in ms) plus ``iters``, ``rounds``,
    ``samples`` (the per-group values) and ``clock`` (``"cuda_events"`` or
    ``"perf_counter"``).
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    device = resolve_device(device)
    rounds = min(iters, rounds or 10)
    for _ in range(warmup):
        fn()
    synchronize(device)
    sizes = _round_sizes(iters, rounds)
    if device.type == "cuda":
        samples = _time_rounds_cuda(fn, sizes)
        clock = "cuda_events"
    else:
        samples = _time_rounds_cpu(fn, sizes)
        clock = "perf_counter"
    return {**summarize(samples), "iters": iters, "rounds": rounds, "samples": samples,
            "clock": clock}


def _time_rounds_cuda(fn: Callable[[], Any], sizes: list[int]) -> list[float]:
    """Per-call ms of each group, from CUDA events recorded at the group boundaries."""
    events = [torch.cuda.Event(enable_timing=True) for _ in range(len(sizes) + 1)]
    events[0].record()
    for i, size in enumerate(sizes):
        for _ in range(size):
            fn()
        events[i + 1].record()
    events[-1].synchronize()
    return [events[i].elapsed_time(events[i + 1]) / size for i, size in enumerate(sizes)]


def _time_rounds_cpu(fn: Callable[[], Any], sizes: list[int]) -> list[float]:
    """Per-call ms of each group, from ``perf_counter`` reads at the group boundaries."""
    samples = []
    for size in sizes:
        start = time.perf_counter()
        for _ in range(size):
            fn()
        samples.append((time.perf_counter() - start) * 1e3 / size)
    return samples


def time_each_call(
    fn: Callable[[], Any], iters: int = 30, warmup: int = 5, device: Device = None,
    clock: str = "events",
) -> dict[str, Any]:
    """Milliseconds per call of ``fn()``, each call timed alone: the plain loop a user
    writes. Before each call the device is synchronized; ``clock="events"`` (on CUDA) puts
    CUDA events on the current stream around the one call and waits for the second;
    ``clock="wall"`` (and any CPU run) reads ``perf_counter`` around the call and a
    synchronize after it, so work left running on other streams counts too.

    Returns the :func:`summarize` statistics plus ``iters``, ``samples`` and ``clock``.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    if clock not in ("events", "wall"):
        raise ValueError(f"clock must be 'events' or 'wall', not {clock!r}")
    device = resolve_device(device)
    clock = clock if device.type == "cuda" else "wall"
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        synchronize(device)
        if clock == "events":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            fn()
            synchronize(device)
            samples.append((time.perf_counter() - began) * 1e3)
    return {**summarize(samples), "iters": iters, "samples": samples, "clock": clock}


def first_call_seconds(fn: Callable[[], Any], device: Device = None) -> tuple[float, Any]:
    """Wall seconds of one synchronized call of ``fn()`` (its compile, the first time), and
    what it returned."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def profile_events(
    fn: Callable[[], Any], device: Device = None, trace_path: Optional[str] = None
) -> list[dict]:
    """Run ``fn()`` once under ``torch.profiler`` (device activity too on CUDA), synchronized
    before and after; returns the Chrome trace's events (kept at ``trace_path`` if given).

    PyTorch leaves CUPTI attached once a CUDA profile stops: later CUDA calls in the process
    pay for it on the host, so time nothing in a process after profiling it.
    """
    device = resolve_device(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    synchronize(device)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        synchronize(device)
    if trace_path:
        prof.export_chrome_trace(trace_path)
        return _trace_events(trace_path)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        return _trace_events(path)


def count_kernels(
    fn: Callable[[], Any], device: Device = None, trace_path: Optional[str] = None
) -> dict[str, Optional[int]]:
    """Run ``fn()`` once under the profiler; count what it put on the device.

    Returns ``kernels`` (device kernels that ran, those replayed from CUDA graphs included),
    ``kernel_ms`` (the sum of their durations: kernels on concurrent streams count in full),
    ``launches`` (host launch calls: kernel launches plus graph launches),
    ``graph_launches``, ``copies`` (device memcpy/memset) and ``cpu_ops`` (operator events
    on the host). On the CPU the device counts are ``None``. Warm ``fn`` up first: a first
    call would count its compile. ``trace_path`` keeps the Chrome trace there.
    """
    device = resolve_device(device)
    events = profile_events(fn, device, trace_path)
    return count_trace_events(events, on_device=device.type == "cuda")


def _trace_events(path: str) -> list[dict]:
    with open(path) as f:
        data = json.load(f)
    return data.get("traceEvents", []) if isinstance(data, dict) else data


def count_trace_events(events: list[dict], on_device: bool = True) -> dict[str, Optional[int]]:
    """Count kernels (and sum their milliseconds), launches, graph launches, copies and host
    ops in Chrome trace events."""
    counts: dict[str, Any] = {"kernels": 0, "kernel_ms": 0.0, "launches": 0,
                              "graph_launches": 0, "copies": 0, "cpu_ops": 0}
    for event in events:
        if event.get("ph") != "X":
            continue
        cat, name = event.get("cat", ""), event.get("name", "")
        if cat == "kernel":
            counts["kernels"] += 1
            counts["kernel_ms"] += float(event.get("dur", 0.0)) / 1e3
        elif cat in ("gpu_memcpy", "gpu_memset"):
            counts["copies"] += 1
        elif cat in ("cuda_runtime", "cuda_driver"):
            if name.startswith(_LAUNCH_PREFIXES):
                counts["launches"] += 1
            if name.startswith(_GRAPH_LAUNCH_PREFIXES):
                counts["graph_launches"] += 1
        elif cat == "cpu_op":
            counts["cpu_ops"] += 1
    if not on_device:
        for key in ("kernels", "kernel_ms", "launches", "graph_launches", "copies"):
            counts[key] = None
    return counts


def kernel_spans(events: list[dict]) -> list[dict[str, Any]]:
    """The device kernels of Chrome trace ``events`` (``torch.profiler``'s export), in start
    order: ``name``, ``stream`` (the CUDA stream it ran on), ``start_us`` (from the first
    kernel's start) and ``dur_us``, as the profiler measured them."""
    kernels = [e for e in events if e.get("ph") == "X" and e.get("cat") == "kernel"]
    if not kernels:
        return []
    origin = min(float(e["ts"]) for e in kernels)
    spans = [{"name": e.get("name", ""),
              "stream": int(e.get("args", {}).get("stream", e.get("tid", 0))),
              "start_us": float(e["ts"]) - origin, "dur_us": float(e.get("dur", 0.0))}
             for e in kernels]
    return sorted(spans, key=lambda s: (s["start_us"], s["stream"]))
