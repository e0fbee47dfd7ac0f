"""Turn the graph the pipeline produced into the callable that AOTAutograd calls.

What it builds, and what the record says about it (``record.runtime_info``)::

    executor   "graph"  : the graph's own code on the caller's stream (CPU, or one stream)
               "streams": generated straight-line code over several CUDA streams
    capture    "replay per input-shape signature after 1 warm-up call", or "declined: why"
    arena_kernels / arena_bytes: fused kernels writing into the planned arena, its size
    arena_aten_nodes / arena_aten_left: ATen nodes writing there through out=; the others,
               counted by "op: reason" (each also a decline of stage "arena")
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx

from ..passes.base import Decline, PassContext
from ..record import CompileRecord
from .arena_binding import bind_arena
from .capture import CapturedRunner, capture_decline
from .executor import ScheduleRunner
from .schedule_code import StreamOps


def _plan_over(gm: fx.GraphModule, ctx: PassContext) -> Any:
    """The stream plan of ``gm``, if the stream pass left one for these very nodes."""
    state = ctx.state.get("streams")
    if state is None:
        return None
    nodes = set(gm.graph.nodes)
    if not all(v in nodes for v in state.plan.order):
        return None  # the graph changed after the stream pass: plan no longer applies
    return state.plan


def _place_in_arena(gm: fx.GraphModule, ctx: PassContext, record: CompileRecord) -> None:
    """Fused kernels and ATen ops with a direct out= write into the planned arena (the
    memory plan pass leaves no plan when ``memory_pool`` is off)."""
    memory = ctx.state.get("memory_plan")
    if memory is None or not memory.arena_bytes:
        return
    info, declines = bind_arena(
        gm, memory.offsets, memory.arena_bytes, torch.device(ctx.device), memory.buffers
    )
    record.runtime_info.update(info)
    record.other_declines.extend(declines)


def build_runtime(gm: fx.GraphModule, ctx: PassContext, record: CompileRecord) -> Callable:
    """The callable for ``gm``: the schedule on its streams, captured when that is safe."""
    plan = _plan_over(gm, ctx)
    device = ctx.device
    _place_in_arena(gm, ctx, record)
    ops = None
    if plan is not None and plan.num_streams > 1 and ctx.on_cuda:
        ops = StreamOps(device, plan, ctx.config.stream_debug_delays)
    runner = ScheduleRunner(gm, plan, ops)
    info = record.runtime_info
    info["executor"] = "streams" if runner.ops is not None else "graph"
    info["streams_used"] = plan.num_streams if runner.ops is not None else 1
    info["events"] = plan.events if runner.ops is not None else 0
    reason = "cuda_graphs=False" if not ctx.config.cuda_graphs else capture_decline(
        gm, ctx.example_inputs, ctx.static_input_indices
    )
    if reason:
        info["capture"] = "declined: " + reason
        record.other_declines.append(Decline("cuda_graphs", reason))
        return runner
    info["capture"] = "replay per input-shape signature after 1 warm-up call"
    info["cuda_graph_instances"] = 0
    return CapturedRunner(runner, ctx.static_input_indices, torch.device(device), record,
                          ctx.caller_output_indices)
