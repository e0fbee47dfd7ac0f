"""THE ordered list of passes, and :func:`run_pipeline`, which runs it on one graph.

Every graph kitsune compiles (forward, backward, inference) goes through these stages in
this order. The reason for each position is written beside it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import torch
import torch.fx as fx

from .errors import KitsunePluginError
from .graph_utils import copy_graph_module
from .invariants import check_graph
from .passes.base import Decline, PassContext, PassFn, PassResult
from .passes.cleanup import cleanup
from .passes.fusion import fuse
from .passes.memory_plan import plan_memory
from .passes.streams import assign_streams
from .plugins import REGISTRY, STAGES
from .record import CompileRecord, PassRecord, snapshot


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the pipeline: a built-in pass, or a slot where plugin passes run."""

    name: str
    why_here: str
    fn: Optional[PassFn] = None  # None: a plugin slot


PIPELINE: tuple[Stage, ...] = (
    Stage(
        "cleanup",
        "first: every later pass relies on dead code being gone, canonical ATen names and "
        "shape/dtype metadata on every node",
        cleanup,
    ),
    Stage(
        "pre_fusion",
        "user passes see plain, clean ATen with metadata, before kitsune groups nodes",
    ),
    Stage(
        "fusion",
        "before streams: fusion decides what one kernel is, and streams schedule kernels",
        fuse,
    ),
    Stage(
        "post_fusion",
        "user passes see fused kernels as single nodes, before they are scheduled",
    ),
    Stage(
        "streams",
        "after fusion and plugins: the kernel DAG is final, so chains and events are final",
        assign_streams,
    ),
    Stage(
        "memory_plan",
        "last: whether two buffers may share memory depends on the stream/event order",
        plan_memory,
    ),
)


def run_pipeline(gm: fx.GraphModule, ctx: PassContext, record: CompileRecord) -> None:
    """Run every stage on ``gm`` in place, appending one :class:`PassRecord` per pass.

    A built-in pass that raises propagates (the caller decides between strict failure and
    fallback). A plugin pass that raises is skipped with a decline naming it, unless
    ``ctx.config.strict``. With ``ctx.config.debug`` the IR invariants are checked after
    every pass.
    """
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    for stage in PIPELINE:
        if stage.fn is not None:
            _run_one(gm, ctx, record, stage.name, stage.name, stage.fn, placeholders)
            continue
        if stage.name == STAGES[0]:  # once per graph, at the first plugin slot
            for broken in REGISTRY.broken():
                _report_plugin_failure(ctx, record, stage.name, broken.name, broken.error)
        for plugin in REGISTRY.passes_for(stage.name):
            # A plugin works on a copy, so one that fails half-way leaves no trace.
            work = copy_graph_module(gm)
            try:
                _run_one(work, ctx, record, stage.name, plugin.name, plugin.fn, placeholders)
            except Exception as exc:
                _report_plugin_failure(
                    ctx, record, stage.name, plugin.name, f"{type(exc).__name__}: {exc}"
                )
            else:
                _adopt(gm, work)


def _run_one(
    gm: fx.GraphModule,
    ctx: PassContext,
    record: CompileRecord,
    stage: str,
    name: str,
    fn: PassFn,
    placeholders: list[str],
) -> None:
    start = time.perf_counter()
    result = fn(gm, ctx) or PassResult()
    seconds = time.perf_counter() - start
    if result.changed:
        gm.recompile()
    if ctx.config.debug:
        check_graph(gm, placeholders, after=name)
    code, nodes = snapshot(gm)
    record.passes.append(
        PassRecord(
            stage=stage,
            name=name,
            seconds=seconds,
            changed=result.changed,
            notes=list(result.notes),
            declines=list(result.declines),
            stats=dict(result.stats),
            graph_code=code,
            nodes=nodes,
        )
    )


def _adopt(gm: fx.GraphModule, work: fx.GraphModule) -> None:
    """Give ``gm`` the graph a plugin left in ``work``, with any attributes or submodules
    the plugin added there (its ``get_attr``/``call_module`` targets)."""
    for node in work.graph.nodes:
        if node.op not in ("get_attr", "call_module"):
            continue
        *path, leaf = node.target.split(".")
        source, dest = work, gm
        for part in path:
            source = getattr(source, part)
            if not hasattr(dest, part):
                dest.add_module(part, torch.nn.Module())
            dest = getattr(dest, part)
        setattr(dest, leaf, getattr(source, leaf))
    gm.graph = work.graph  # the setter recompiles


def _report_plugin_failure(
    ctx: PassContext, record: CompileRecord, stage: str, name: str, error: str
) -> None:
    if ctx.config.strict:
        raise KitsunePluginError(f"plugin pass {name!r} failed: {error}")
    decline = Decline(stage=stage, reason=f"plugin pass {name!r} skipped: {error}")
    record.other_declines.append(decline)
