"""Compile one AOT graph: run the pipeline (:mod:`kitsune_backend.pipeline`), fall back to the
input graph if anything fails."""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
from torch._functorch.aot_autograd import make_boxed_func
from torch._guards import CompileContext, TracingContext

from . import log
from .config import Config
from .debug_dump import dump_record
from .errors import KitsuneConfigError, KitsuneError
from .graph_utils import copy_graph_module
from .ir import Decline, PassContext, RuntimeReport
from .passes.fusion import DYNAMIC_SHAPES
from .pipeline import run_pipeline
from .record import CompileRecord, snapshot
from .runtime.arena import ArenaGroup
from .runtime.executor import ScheduleRunner
from .process import ProcessState
from .schedule_probe import ScheduleProbe
from .session import CompileSession


def _fw_metadata() -> Any:
    """AOTAutograd's metadata of the graph being compiled (``None`` outside a trace)."""
    context = TracingContext.try_get()
    return getattr(context, "fw_metadata", None) if context is not None else None


def static_input_indices(kind: str) -> tuple[int, ...]:
    """Inputs AOTAutograd marks as parameters/buffers (stable addresses), if it says."""
    metadata = _fw_metadata()
    if kind == "backward" or metadata is None:
        return ()
    return tuple(getattr(metadata, "static_input_indices", ()) or ())


def caller_output_indices(kind: str, gm: fx.GraphModule) -> tuple[int, ...]:
    """Outputs of ``gm`` that the caller receives: all of an inference graph's, the user
    outputs of a forward graph (AOTAutograd's metadata says which; the rest are saved for
    backward), none of a backward graph's (gradients go to ``.grad``)."""
    outputs = next(n for n in reversed(gm.graph.nodes) if n.op == "output").args[0]
    count = len(outputs) if isinstance(outputs, (list, tuple)) else 1
    if kind == "inference":
        return tuple(range(count))
    metadata = _fw_metadata()
    if kind != "forward" or metadata is None:
        return ()
    first = getattr(metadata, "num_mutated_inp_runtime_indices", None)
    users = getattr(metadata, "num_outputs", None)
    if not isinstance(first, int) or not isinstance(users, int):
        return ()
    return tuple(range(first, min(first + users, count)))


def _optimize(
    gm: fx.GraphModule, ctx: PassContext, record: CompileRecord, original: fx.GraphModule
) -> Callable:
    """The pipeline's callable; on failure the original graph (unless strict, then raise)."""
    try:
        runner = run_pipeline(gm, ctx, record)
        record.kernels = list(ctx.kernels)
        return runner
    except KitsuneConfigError:
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        record.fallback_traceback = traceback.format_exc()
        if ctx.config.strict:
            record.other_declines.append(Decline("compile", f"failed, raised (strict): {reason}"))
            if isinstance(exc, KitsuneError):
                raise
            raise KitsuneError(f"{record.name}: compile failed: {exc}") from exc
        record.fallback_reason = reason
        return ScheduleRunner(original)  # the untouched ATen graph, on the caller's stream


def compile_graph(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    config: Config,
    kind: str,
    session: CompileSession,
    process: ProcessState,
) -> Callable:
    """Compile one forward/backward/inference graph into a boxed callable.

    The pipeline rewrites ``gm`` in place; a copy of the input graph is kept so that, when
    a pass or the runtime build fails and ``config.strict`` is off, the copy runs instead
    and the record says why. Under ``strict`` the failure is raised.
    """
    start = time.perf_counter()
    record = CompileRecord(name=session.next_name(kind), config=config)
    session.records.append(record)
    record.input_code, record.input_nodes = snapshot(gm)
    original = copy_graph_module(gm)
    if session.arena_group is None:
        session.arena_group = ArenaGroup()
    ctx = PassContext(
        config=config,
        graph_name=record.name,
        example_inputs=example_inputs,
        static_input_indices=static_input_indices(kind),
        caller_output_indices=caller_output_indices(kind, gm),
        runtime_report=RuntimeReport(record.runtime_info, record.other_declines),
        process=process,
        progress=log.Progress(record.name),
        arena_group=session.arena_group,
    )
    folder = ""
    try:
        runner = _optimize(gm, ctx, record, original)
    finally:
        record.compile_seconds = time.perf_counter() - start
        ctx.progress.done()
        if config.debug_dir:  # also when strict raised: the dump shows how far it got
            folder = dump_record(record, original, example_inputs, config.debug_dir, session.id)
    if folder and config.debug_schedule:
        runner = ScheduleProbe(runner, folder, torch.device(ctx.device or "cpu"))
    log.get("compile").info("%s", record.summary())
    if any(d.reason.startswith(DYNAMIC_SHAPES) for d in record.declines):
        where = _user_location(original)
        compile_id = CompileContext.current_compile_id()
        key = (compile_id.frame_id if compile_id else None, where)
        if key not in process.warned_dynamic:  # once per function
            process.warned_dynamic.add(key)
            log.warn_dynamic(where)
    return make_boxed_func(runner)


def _user_location(gm: fx.GraphModule) -> str:
    """Where the user function this graph came from is: the innermost line of the first
    traced node's stack."""
    for node in gm.graph.nodes:
        trace = node.meta.get("stack_trace") or ""
        lines = [line.strip() for line in trace.splitlines() if line.strip().startswith("File")]
        if lines:
            return lines[-1]
    return "a compiled function"
