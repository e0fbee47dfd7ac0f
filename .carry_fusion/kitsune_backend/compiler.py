"""Compile one AOT graph: run the pipeline, build the runtime, fall back if anything fails."""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Sequence

import torch.fx as fx
from torch._functorch.aot_autograd import make_boxed_func
from torch._guards import TracingContext

from .config import Config
from .debug_dump import dump_record
from .errors import KitsuneConfigError, KitsuneError
from .graph_utils import copy_graph_module
from .passes.base import PassContext
from .pipeline import run_pipeline
from .record import CompileRecord, snapshot
from .runtime import build_runtime
from .session import CompileSession


class FallbackRunner:
    """Runs the untouched ATen graph: correct, unoptimized; ``reason`` says why."""

    def __init__(self, gm: fx.GraphModule, reason: str) -> None:
        gm.recompile()
        self.gm = gm
        self.reason = reason
        self._forward = gm.forward

    def __call__(self, *args: Any) -> Any:
        """Run the original graph on ``args``."""
        return self._forward(*args)


def static_input_indices(kind: str) -> tuple[int, ...]:
    """Inputs AOTAutograd marks as parameters/buffers (stable addresses), if it says."""
    context = TracingContext.try_get()
    metadata = getattr(context, "fw_metadata", None) if context is not None else None
    if kind == "backward" or metadata is None:
        return ()
    return tuple(getattr(metadata, "static_input_indices", ()) or ())


def compile_graph(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    config: Config,
    kind: str,
    session: CompileSession,
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
    ctx = PassContext(
        config=config,
        graph_name=record.name,
        example_inputs=example_inputs,
        static_input_indices=static_input_indices(kind),
    )
    try:
        run_pipeline(gm, ctx, record)
        record.kernels = list(ctx.kernels)
        runner: Callable = build_runtime(gm, ctx, record)
    except KitsuneConfigError:
        raise
    except Exception as exc:
        if config.strict:
            if isinstance(exc, KitsuneError):
                raise
            raise KitsuneError(f"{record.name}: compile failed: {exc}") from exc
        record.fallback_reason = f"{type(exc).__name__}: {exc}"
        record.fallback_traceback = traceback.format_exc()
        runner = FallbackRunner(original, record.fallback_reason)
    record.compile_seconds = time.perf_counter() - start
    if config.debug_dir:
        dump_record(record, original, example_inputs, config.debug_dir)
    return make_boxed_func(runner)
