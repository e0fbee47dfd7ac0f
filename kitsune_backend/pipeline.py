"""THE ordered list of every step of a compile, and :func:`run_pipeline`, which runs it.

Every graph kitsune compiles (forward, backward, inference) goes through these stages in
this order, in three phases: graph passes (decisions on the FX graph), lowering (kernel
plans become compiled kernels), runtime (the graph is bound to what runs per call). The
reason for each position is written beside it. Each stage reads and writes typed fields of
the :class:`~kitsune_backend.ir.PassContext`; ``requires`` and ``ensures`` name them, and
with ``debug=True`` the pipeline checks both around every stage.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Optional

import torch
import torch.fx as fx

from . import log
from .binding.arena import bind_arena
from .binding.capture import capture
from .binding.streams import instrument_streams
from .codegen.lowering import generate_kernels
from .codegen.precompile import precompile_kernels
from .errors import KitsuneError, KitsunePluginError
from .graph_utils import copy_graph_module
from .invariants import check_graph
from .ir import Decline, PassContext, PassFn, PassResult
from .passes.batch_split import split_batch
from .passes.cleanup import cleanup, fold_constants_stage, merge_duplicates
from .passes.decompositions import report_decompositions
from .passes.fusion import fuse
from .passes.matmul_bias import fold_matmul_bias
from .passes.memory_plan import plan_memory
from .passes.permutes import hoist_permutes
from .passes.seeds import gather_seeds
from .passes.streams import assign_streams
from .plugin_check import check_plugin_graph
from .plugins import STAGES
from .record import CompileRecord, PassRecord, snapshot

PHASES = ("graph", "lowering", "runtime")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the pipeline: a built-in stage, or a slot where plugin passes run.

    ``phase`` is one of :data:`PHASES`; ``requires`` and ``ensures`` name the
    :class:`~kitsune_backend.ir.PassContext` fields the stage reads and sets;
    ``annotates`` says that it writes node metadata (:data:`~kitsune_backend.ir.META_KEYS`)
    even when it leaves the graph's code as it was."""

    name: str
    phase: str
    why_here: str
    fn: Optional[PassFn] = None  # None: a plugin slot
    requires: tuple[str, ...] = ()
    ensures: tuple[str, ...] = ()
    annotates: bool = False


PIPELINE: tuple[Stage, ...] = (
    Stage("decompose", "graph",
          "first, inside AOTAutograd's trace (its time is the trace's): kitsune's table turns "
          "composite ops into the ATen ops the later stages know",
          report_decompositions),
    Stage("cleanup", "graph",
          "before every pass that reads the graph: dead code gone, canonical ATen names and "
          "shape/dtype metadata on every node",
          cleanup),
    Stage("seeds", "graph",
          "after cleanup (dead dropouts gone); before fusion, so that no seed draw sits "
          "between a dropout and the ops around it: one draw of every seed, at the start",
          gather_seeds),
    Stage("cse", "graph",
          "after cleanup, whose metadata it compares; before folding, so that duplicates are "
          "folded once",
          merge_duplicates),
    Stage("constant_fold", "graph",
          "after duplicates are merged: values that depend on no input are computed once, "
          "before plugins and fusion see the graph",
          fold_constants_stage),
    Stage("permutes", "graph",
          "after folding (a folded value needs no move) and before plugins and fusion: "
          "pointwise ops move into the layout their consumer reads, so fusion may put them "
          "in its kernel",
          hoist_permutes),
    Stage("pre_fusion", "graph",
          "user passes see plain, clean ATen with metadata, before kitsune groups nodes"),
    Stage("batch_split", "graph",
          "after the pre-fusion plugins, whose ops it must see, and before fusion: it reads "
          "what each ATen op does to the rows of the batch, and fusion replaces ops by kernels",
          split_batch, ensures=("batch_split",)),
    Stage("fusion", "graph",
          "before streams: fusion decides what one kernel is, and streams schedule kernels",
          fuse, ensures=("regions", "lone_ops")),
    Stage("matmul_bias", "graph",
          "after fusion: only a bias add that fused with nothing joins its matmul",
          fold_matmul_bias, requires=("regions", "lone_ops")),
    Stage("post_fusion", "graph",
          "user passes see fused kernels as single nodes, before they are scheduled"),
    Stage("streams", "graph",
          "after fusion and plugins: the kernel DAG is final, so chains and events are final "
          "(memory_plan may yet put branches back onto one stream, within the memory budget)",
          assign_streams, ensures=("stream_plan",), annotates=True),
    Stage("memory_plan", "graph",
          "last graph pass: whether two buffers may share memory depends on the stream/event "
          "order (and where that order would grow the arena past the memory budget, it "
          "moves side-stream branches back first)",
          plan_memory, requires=("stream_plan",), ensures=("memory_plan", "stream_plan"),
          annotates=True),
    Stage("kernels", "lowering",
          "after every graph decision: each kernel plan's layouts and neighbours are final",
          generate_kernels, ensures=("kernels",)),
    Stage("precompile", "lowering",
          "once every kernel of the graph exists: they compile in parallel, not one by one at "
          "their first launch",
          precompile_kernels, requires=("kernels",)),
    Stage("arena", "runtime",
          "after lowering: fused kernels and ATen ops get arena views as outputs",
          bind_arena, requires=("memory_plan",)),
    Stage("streams_code", "runtime",
          "once every node's target is final: the code that switches streams calls them",
          instrument_streams, requires=("stream_plan",), ensures=("runner",)),
    Stage("capture", "runtime",
          "last: a CUDA graph records the finished schedule, streams and arena included",
          capture, requires=("runner", "batch_split"), ensures=("runner",)),
)


def run_pipeline(gm: fx.GraphModule, ctx: PassContext, record: CompileRecord) -> Callable:
    """Run every stage on ``gm`` in place, appending one :class:`PassRecord` per stage or
    plugin pass; returns the compiled callable (``ctx.runner``).

    A built-in stage that raises propagates (the caller decides between strict failure and
    fallback). A plugin pass that raises is skipped with a decline naming it, unless
    ``ctx.config.strict``. With ``ctx.config.debug`` the IR invariants are checked after
    every stage, and each stage's ``requires``/``ensures`` around it.
    """
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    for stage in PIPELINE:
        if stage.fn is not None:
            _run_one(gm, ctx, record, stage, stage.name, stage.fn, placeholders)
            continue
        if stage.name == STAGES[0]:  # once per graph, at the first plugin slot
            for broken in ctx.process.plugins.broken():
                _report_plugin_failure(ctx, record, stage.name, broken.name, broken.error)
        for plugin in ctx.process.plugins.passes_for(stage.name):
            # A plugin works on a copy, so one that fails half-way leaves no trace.
            work = copy_graph_module(gm)
            try:
                _run_one(work, ctx, record, stage, plugin.name, plugin.fn, placeholders,
                         given=gm)
            except Exception as exc:
                _report_plugin_failure(
                    ctx, record, stage.name, plugin.name, f"{type(exc).__name__}: {exc}"
                )
            else:
                _adopt(gm, work)
    return ctx.runner


def _check_fields(ctx: PassContext, stage: Stage, fields: tuple[str, ...], when: str) -> None:
    missing = [f for f in fields if getattr(ctx, f) is None]
    if missing:
        raise KitsuneError(f"stage {stage.name!r}: ctx.{', ctx.'.join(missing)} not set {when}")


def _run_one(gm: fx.GraphModule, ctx: PassContext, record: CompileRecord, stage: Stage,
             name: str, fn: PassFn, placeholders: list[str],
             given: Optional[fx.GraphModule] = None) -> None:
    """Run one stage or plugin pass on ``gm`` and record it. For a plugin, ``given`` is the
    graph it was handed a copy of: what it left is checked against it (node values)."""
    if ctx.config.debug:
        _check_fields(ctx, stage, stage.requires, "before it (an earlier stage must set it)")
    start = time.perf_counter()
    result = fn(gm, ctx) or PassResult()
    if given is not None:
        check_plugin_graph(given, gm)
    seconds = time.perf_counter() - start
    if result.changed:
        gm.recompile()
    if ctx.config.debug:
        check_graph(gm, placeholders, after=name)
        _check_fields(ctx, stage, stage.ensures, "after it")
    if result.changed or stage.annotates or stage.fn is None:  # a plugin may not say
        code, nodes = snapshot(gm)
    elif record.passes:
        code, nodes = record.passes[-1].graph_code, record.passes[-1].nodes
    else:
        code, nodes = record.input_code, record.input_nodes
    record.passes.append(PassRecord(
        stage=stage.name, name=name, seconds=seconds, changed=result.changed,
        notes=list(result.notes), declines=list(result.declines), stats=dict(result.stats),
        graph_code=code, nodes=nodes, phase=stage.phase))
    _log_stage(ctx, stage, name, seconds, result)


def _log_stage(ctx: PassContext, stage: Stage, name: str, seconds: float,
               result: PassResult) -> None:
    logger = log.get(stage.phase)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s %s: %.2f ms%s%s", ctx.graph_name, name, seconds * 1e3,
                     " (changed)" if result.changed else "",
                     "".join(f"; {note}" for note in result.notes))
        for decline in result.declines:
            logger.debug("%s no: %s", ctx.graph_name, decline)
    if ctx.progress is not None:
        ctx.progress.report(f"stage {name} done")


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
