"""Measure one workload under each backend: correctness first, then speed, memory, kernels.

For every backend, in one process and on the same inputs:

1. a fresh deep copy of the seeded model is compiled (Dynamo's caches are reset first, so
   no backend inherits another's graphs or recompile budget);
2. ``check_steps`` calls run from the identical starting weights, each on its own input
   batch: the first one's wall time is the first-call (compile) time, and what each call
   produced is compared with eager's (:mod:`benchmarks.checks`): inference outputs; for
   training, every step's loss and a sample of its gradients. Several calls cover CUDA
   graph warm-up, capture and replay;
3. on the first batch: warm-up, then the plain loop (each call synchronized and timed alone
   by CUDA events: :func:`kitsune_backend.timing.time_each_call`); rows named in
   ``cross_check`` are timed again by the host's clock, and more than 10% apart is a
   failure (``mistimed``);
4. peak memory over the timed calls, relative to what was allocated before the model copy;
5. one more call under the profiler: kernels and launches per iteration.

A failure at any point makes the row ``error`` (with the message) and the run goes on; a
result outside tolerance makes it ``mismatch``. Neither is hidden.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import sys
import time
import traceback
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
from torch.utils._pytree import tree_leaves

import kitsune_backend
from kitsune_backend import timing

from .backends import Backend
from .checks import GRAD_SAMPLE, compare_observations
from .report import COUNT_KEYS
from .workloads import Workload


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How long and how carefully to measure."""

    device: torch.device
    iters: int = 100
    warmup: int = 10
    check_steps: int = 3
    lr: float = 1e-3
    trace_path: Optional[str] = None
    """Where to keep the Chrome trace of the profiled call of ``trace_target``."""
    trace_target: tuple[str, str] = ("branchy", "kitsune")
    kernel_counts: str = "yes"
    """Profile each row for its kernel counts: "yes" (after timing), "no", "only" (no timing)."""
    cross_check: frozenset[str] = frozenset()
    """Models whose rows are also timed call by call (:data:`CROSS_CHECK_TOLERANCE`)."""


CROSS_CHECK_TOLERANCE = 0.10
"""Largest relative difference allowed between a row's time (the plain loop, CUDA events)
and the same loop timed again by the host's clock; a larger one makes the row
``mistimed``."""
CROSS_CHECK_SLACK_MS = 0.02
"""What a synchronize costs the host's clock (about 10-20 us): differences below it are not
counted, so that rows of a few tens of microseconds can be checked at all."""


class TrainStep:
    """One training step: zero grads, compiled forward+loss, backward, Adam step, run as
    the backend's ``update`` says: ``"eager"`` (torch.optim), ``"compiled"``
    (``torch.compile(optimizer.step)``), ``"kitsune"`` (KitsuneOptimizer), ``"step"``
    (KitsuneOptimizer, the whole step under :func:`kitsune_backend.compile_step`) or
    ``"captured"`` (torch.optim's Adam with ``capturable=True``, the whole step under
    ``compile_step``: with an eager model, the step captured in one CUDA graph unfused)."""

    def __init__(self, model: nn.Module, compiled: Callable, inputs: tuple, lr: float,
                 update: str = "eager") -> None:
        self.model, self.compiled, self.inputs = model, compiled, inputs
        if update in ("kitsune", "step"):
            self.optimizer = kitsune_backend.KitsuneOptimizer(
                torch.optim.Adam, model.parameters(), lr=lr)
        else:
            self.optimizer = torch.optim.Adam(model.parameters(), lr=lr,
                                              capturable=update == "captured")
        self.update = (torch.compile(self.optimizer.step) if update == "compiled"
                       else self.optimizer.step)
        self.whole = (kitsune_backend.compile_step(self._step)
                      if update in ("step", "captured") else None)

    def _step(self, *inputs: Any) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.compiled(*inputs)
        loss.backward()
        self.update()
        return loss.detach()

    def __call__(self) -> torch.Tensor:
        """Run one step on ``self.inputs``; returns the (detached) loss."""
        if self.whole is not None:
            return self.whole(*self.inputs)
        return self._step(*self.inputs)

    def snapshot(self, result: torch.Tensor) -> dict[str, torch.Tensor]:
        """The step's loss and a sample of every parameter's gradient, on the CPU (a missing
        gradient counts as zeros, so it shows up as an error)."""
        grads = [torch.zeros_like(p) if p.grad is None else p.grad
                 for p in self.model.parameters()]
        sample = torch.cat([g.detach().flatten()[:GRAD_SAMPLE] for g in grads])
        return {"loss": result.float().cpu(), "grads": sample.float().cpu()}

    @staticmethod
    def observe(snapshots: list[dict]) -> dict[str, Any]:
        """Step 1 (identical starting weights) apart from the later steps."""
        return {
            "step1_loss": snapshots[0]["loss"],
            "step1_grads": snapshots[0]["grads"],
            "later_losses": [s["loss"] for s in snapshots[1:]],
        }


class InferCall:
    """One inference call of the compiled model on ``self.inputs``."""

    def __init__(self, model: nn.Module, compiled: Callable, inputs: tuple) -> None:
        self.compiled, self.inputs = compiled, inputs

    def __call__(self) -> Any:
        """Run the model; returns its output."""
        return self.compiled(*self.inputs)

    @staticmethod
    def snapshot(result: Any) -> list[torch.Tensor]:
        """Copies of the output tensors, on the CPU, before a later call can overwrite them."""
        return [t.detach().clone().cpu() for t in tree_leaves(result)
                if isinstance(t, torch.Tensor)]

    @staticmethod
    def observe(snapshots: list[list[torch.Tensor]]) -> dict[str, Any]:
        """Every check call's outputs."""
        return {"outputs": [t for outputs in snapshots for t in outputs]}


def reset_compile_state(device: torch.device) -> None:
    """Forget every compiled graph and counter; free cached device memory."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    kitsune_backend.clear_history()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        # cuBLAS workspaces live in the caching allocator; CUDA-graph capture frees them.
        # Freeing them here makes every row pay for the workspaces it creates.
        clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear_workspaces is not None:
            clear_workspaces()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def new_row(workload: Workload, backend: Backend) -> dict[str, Any]:
    """A result row with every field present (``None`` until measured)."""
    return {
        "model": workload.name, "kind": workload.kind, "backend": backend.name,
        "ablation": backend.ablation, "status": "pending", "note": "",
        "max_abs_err": None, "tol_ratio": None, "errors": None, "first_call_s": None,
        "median_ms": None, "p10_ms": None, "p90_ms": None, "samples_ms": None,
        "speedup": None, "vs_reduce_overhead": None, "plain_loop_ms": None,
        "peak_mem_mb": None, "graph_pool_idle_mb": None, "kernel_ms": None, "kernels": None, "launches": None,
        "graph_launches": None, "cpu_ops": None, "graphs": None, "graph_breaks": None,
        "kitsune_fallbacks": None, "seconds": None,
    }


def measure_workload(
    workload: Workload,
    backends: list[Backend],
    opts: RunOptions,
    on_row: Callable[[dict], None] = lambda row: None,
    deadline: Optional[float] = None,
) -> list[dict]:
    """Every backend's row for ``workload``; ``backends`` must start with eager.

    ``on_row`` sees each row when it is done (the CLI saves results as it goes). Rows past
    ``deadline`` (a ``time.monotonic()`` value) are skipped with that reason.
    """
    if not backends or backends[0].name != "eager":
        raise ValueError("the backend list must start with eager (the reference)")
    base, inputs = workload.build(opts.device, batches=opts.check_steps)
    reference: Optional[dict] = None
    rows = []
    for backend in backends:
        row = new_row(workload, backend)
        if backend.cuda_only and opts.device.type != "cuda":
            row.update(status="skipped", note="needs CUDA")
        elif backend.train_only and workload.kind != "train":
            row.update(status="skipped", note="a training arrangement")
        elif deadline is not None and time.monotonic() > deadline:
            row.update(status="skipped", note="time budget used up")
        elif backend.name != "eager" and reference is None:
            row.update(status="skipped", note="no eager reference (eager failed)")
        else:
            observation = _measure_guarded(workload, backend, base, inputs, opts, row, reference)
            if backend.name == "eager":
                reference = observation
        rows.append(row)
        on_row(row)
    fill_speedups(rows)
    return rows


def fill_speedups(rows: list[dict]) -> None:
    """``speedup`` = eager median / row median and ``vs_reduce_overhead`` = Inductor
    reduce-overhead's median / row median, for timed rows of the same model."""
    for field, reference in (("speedup", "eager"), ("vs_reduce_overhead", "inductor-ro")):
        base = {r["model"]: r["median_ms"] for r in rows
                if r["backend"] == reference and r["status"] == "ok" and r["median_ms"]}
        for row in rows:
            if row["median_ms"] and row["model"] in base:
                row[field] = base[row["model"]] / row["median_ms"]


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line`` of an exception; for Dynamo's ``BackendCompilerFailed``, of the
    backend's own exception, which is what says what went wrong."""
    inner = getattr(exc, "inner_exception", None)
    prefix = f"{type(exc).__name__} <- " if inner is not None else ""
    exc = inner if inner is not None else exc
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{prefix}{type(exc).__name__}: {lines[0] if lines else ''}"[:limit]


def _measure_guarded(workload, backend, base, inputs, opts, row, reference) -> Optional[dict]:
    start = time.perf_counter()
    print(f"[bench] {workload.name} / {backend.name} ...", file=sys.stderr, flush=True)
    try:
        reset_compile_state(opts.device)
        return _measure(workload, backend, base, inputs, opts, row, reference)
    except Exception as exc:  # a backend failing is a result, not the end of the run
        row.update(status="error", note=describe_error(exc))
        print(f"[bench] {workload.name} / {backend.name} FAILED", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return None
    finally:
        row["seconds"] = round(time.perf_counter() - start, 3)
        reset_compile_state(opts.device)


def _measure(workload, backend, base, inputs, opts, row, reference) -> dict:
    device = opts.device
    on_cuda = device.type == "cuda"
    mem_before = torch.cuda.memory_allocated(device) if on_cuda else 0
    pools_before = set(idle_graph_pool_bytes(device)) if on_cuda else set()
    model = copy.deepcopy(base)
    grad = torch.no_grad() if workload.kind == "infer" else contextlib.nullcontext()
    with grad:
        compiled = backend.wrap(model)
        if workload.kind == "train":
            call = TrainStep(model, compiled, inputs[0], opts.lr, backend.update)
        else:
            call = InferCall(model, compiled, inputs[0])
        snapshots = []
        for step, batch in enumerate(inputs):
            call.inputs = batch
            seconds, result = timing.first_call_seconds(call, device)
            if step == 0:
                row["first_call_s"] = seconds
            snapshots.append(call.snapshot(result))
        observation = call.observe(snapshots)
        _check(row, backend, observation, reference, dict(workload.check_rules))

        call.inputs = inputs[0]
        if opts.kernel_counts != "only":
            _time(row, call, opts, mem_before, pools_before)
        else:
            for _ in range(opts.warmup):  # what timing's warm-up would have done: replays
                call()
        if opts.kernel_counts != "no":
            traced = (workload.name, backend.name) == opts.trace_target
            counts = timing.count_kernels(call, device, opts.trace_path if traced else None)
            row.update({k: counts[k] for k in COUNT_KEYS})
    _compile_stats(row, backend)
    return observation


def idle_graph_pool_bytes(device: torch.device) -> dict[tuple, int]:
    """Private memory pool id -> the bytes its segments hold but no tensor occupies: the
    pools of captured CUDA graphs keep the memory their replays write (intermediates)
    reserved for them, which ``max_memory_allocated`` does not count."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    idle: dict[tuple, int] = {}
    for segment in torch.cuda.memory_snapshot():
        pool = tuple(segment.get("segment_pool_id", (0, 0)))
        if segment.get("device") == index and pool != (0, 0):
            idle[pool] = idle.get(pool, 0) + segment["total_size"] - segment["allocated_size"]
    return idle


def _time(row: dict, call: Callable, opts: RunOptions, mem_before: int,
          pools_before: set) -> None:
    """Per-call time (and, on CUDA, peak memory) of ``call`` into ``row``: the plain loop,
    each call synchronized and timed alone by CUDA events
    (:func:`kitsune_backend.timing.time_each_call`), as a user measures latency. Peak
    memory: the allocator's peak over the calls less what was allocated before the row,
    plus what the row's CUDA-graph pools hold unoccupied (``graph_pool_idle_mb``)."""
    on_cuda = opts.device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(opts.device)
    stats = timing.time_each_call(call, opts.iters, opts.warmup, opts.device)
    row.update(median_ms=stats["median"], p10_ms=stats["p10"], p90_ms=stats["p90"],
               samples_ms=stats["samples"])
    if on_cuda:
        idle = sum(b for pool, b in idle_graph_pool_bytes(opts.device).items()
                   if pool not in pools_before)
        row["graph_pool_idle_mb"] = idle / 2**20
        row["peak_mem_mb"] = (torch.cuda.max_memory_allocated(opts.device) - mem_before
                              + idle) / 2**20
    if row["model"] in opts.cross_check:
        _cross_check(row, call, opts)


def _cross_check(row: dict, call: Callable, opts: RunOptions) -> None:
    """Time ``call`` again by the host's clock (``perf_counter`` around the call and a
    synchronize: work on any stream counts); a row whose time differs by more than
    :data:`CROSS_CHECK_TOLERANCE` (beyond :data:`CROSS_CHECK_SLACK_MS`) is ``mistimed``,
    unless the host clock's median lies within the row's own p10-p90 spread (a noisy row,
    an eager training step say, is not a mistimed one)."""
    wall = timing.time_each_call(call, min(opts.iters, 30), min(opts.warmup, 3), opts.device,
                                 clock="wall")
    row["plain_loop_ms"] = wall["median"]
    gap = abs(row["median_ms"] - wall["median"]) - CROSS_CHECK_SLACK_MS
    within_spread = row["p10_ms"] <= wall["median"] <= row["p90_ms"]
    if gap > CROSS_CHECK_TOLERANCE * wall["median"] and not within_spread \
            and row["status"] == "ok":
        off = row["median_ms"] / wall["median"] - 1.0
        row["status"] = "mistimed"
        row["note"] = "; ".join(filter(None, [
            "" if row["note"] == "reference" else row["note"],
            f"timed {row['median_ms']:.3f} ms, {100 * off:+.0f}% off the host clock's "
            f"{wall['median']:.3f} ms"]))


def _check(row: dict, backend: Backend, observation: dict, reference: Optional[dict],
           rules: dict[str, tuple]) -> None:
    if backend.name == "eager":
        row["status"] = "ok"
        row["note"] = "reference"
        return
    ok, max_abs, ratio, detail, per_key = compare_observations(observation, reference, rules)
    row.update(status="ok" if ok else "mismatch", max_abs_err=max_abs, tol_ratio=ratio,
               errors=per_key)
    if not ok:
        row["note"] = f"differs from eager: {detail}"


def _compile_stats(row: dict, backend: Backend) -> None:
    """Graphs Dynamo compiled, graph breaks, and kitsune graphs that fell back to ATen."""
    counters = torch._dynamo.utils.counters
    row["graphs"] = int(counters["stats"].get("unique_graphs", 0))
    row["graph_breaks"] = int(sum(counters["graph_break"].values()))
    if backend.is_kitsune:
        fallbacks = [
            f"{record.name}: {record.fallback_reason}"
            for session in kitsune_backend.history()
            for record in session.records
            if record.fallback_reason
        ]
        row["kitsune_fallbacks"] = len(fallbacks)
        if fallbacks:
            extra = f"kitsune fell back on {len(fallbacks)} graph(s): {fallbacks[0]}"
            row["note"] = "; ".join(filter(None, [row["note"], extra]))[:300]
