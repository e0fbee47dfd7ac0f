"""Where the device time of one workload goes, per backend: the top kernels by total time.

    python -m benchmarks.top_kernels gpt2 kitsune inductor-ro [--iters 5] [--top 15]

Each backend's model is compiled, warmed up, then profiled over ``--iters`` calls (a training
workload runs its whole step: forward, backward and the eager Adam update); the table lists
kernels by total device time with their call counts. A diagnostic, not a benchmark.
"""

from __future__ import annotations

import argparse
import collections

import contextlib

import torch

from .backends import BY_NAME as BACKENDS
from .measure import InferCall, TrainStep
from .suite import BY_NAME as WORKLOADS


def top_kernels(workload: str, backend: str, iters: int, top: int) -> None:
    """Print the ``top`` kernels of ``backend`` on ``workload`` over ``iters`` calls."""
    spec = WORKLOADS[workload]
    model, batches = spec.build(torch.device("cuda"))
    training = spec.kind == "train"
    grad = contextlib.nullcontext() if training else torch.no_grad()
    with grad:
        compiled = BACKENDS[backend].wrap(model)
        step = (TrainStep(model, compiled, batches[0], lr=1e-3) if training
                else InferCall(model, compiled, batches[0]))
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                step()
            torch.cuda.synchronize()
    totals: dict[str, list[float]] = collections.defaultdict(list)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name].append(event.device_time)
    ranked = sorted(totals.items(), key=lambda kv: -sum(kv[1]))
    all_us = sum(sum(v) for v in totals.values()) / iters
    print(f"\n{workload} / {backend}: {all_us:.1f} us of kernels per call")
    for name, times in ranked[:top]:
        print(f"  {sum(times) / iters:9.1f} us  x{len(times) // iters:<4d} {name[:160]}")


def main() -> None:
    """Command line: a workload name and one or more backend names."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("backends", nargs="+", choices=sorted(BACKENDS))
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    for backend in args.backends:
        top_kernels(args.workload, backend, args.iters, args.top)


if __name__ == "__main__":
    main()
