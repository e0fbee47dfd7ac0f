"""capture: wrap the schedule in CUDA graph capture and replay, where a replay is right.

:func:`capture_decline` says why a graph cannot be captured: CPU tensors, inputs that are
neither tensors nor ints (sizes arrive as ints, and are part of each capture's signature),
ops that synchronize with the host or size outputs from data, in-place writes into (or
storage reads of) inputs that replays would copy, and CPU tensors that depend on the inputs
(a replay would reuse the value seen at capture). Otherwise the runner becomes a
:class:`~kitsune_backend.runtime.capture.CapturedRunner`; a graph of symbolic sizes gets one
capture per input-shape signature (at most ``capture_shapes`` kept), and its batch is padded
to a bucket where the batch_split stage allows (:func:`batch_padder`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.fx as fx

from ..graph_utils import (STORAGE_COPYING, alias_base, has_symbolic_shapes, is_collective,
                           iter_tensors, op_overload, storage_addressed_args, written_inputs)
from ..ir import Decline, PassContext, PassResult
from ..runtime.batch_padding import BatchPadder
from ..runtime.capture import CapturedRunner

# Ops that synchronize with the host or size their output from data: not capturable.
HOST_SYNC = frozenset(
    {
        "_local_scalar_dense", "item", "nonzero", "nonzero_static", "masked_select", "unique",
        "_unique", "_unique2", "unique_consecutive", "unique_dim", "equal", "is_nonzero",
        "bincount", "repeat_interleave", "histc", "_assert_async", "to_sparse",
    }
)


def capture(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Make ``ctx.runner`` a captured runner (warm-up, capture, replay per input signature),
    or say why not.

    Before: ``ctx.runner`` runs the schedule at every call. After: the first call of each
    input-shape signature runs it, the second captures it into a CUDA graph, later calls
    replay (see :mod:`kitsune_backend.runtime.capture`).
    """
    reason = "cuda_graphs=False" if not ctx.config.cuda_graphs else capture_decline(
        gm, ctx.example_inputs, ctx.static_input_indices)
    if reason:
        return PassResult(declines=[Decline("cuda_graphs", reason)],
                          stats={"capture": "declined: " + reason})
    symbolic = has_symbolic_shapes(gm)
    keyed = [i for i in range(len(ctx.example_inputs)) if i not in ctx.static_input_indices]
    padder, declines = batch_padder(ctx) if symbolic else (None, [])
    ctx.runner = CapturedRunner(ctx.runner, ctx.static_input_indices, torch.device(ctx.device),
                                ctx.runtime_report, ctx.process.captures,
                                ctx.caller_output_indices, keyed=keyed if symbolic else (),
                                max_shapes=ctx.config.capture_shapes, padder=padder,
                                before_capture=ctx.arena.refresh if ctx.arena else None)
    how = "replayed as one CUDA graph per input-shape signature, after one warm-up call"
    if padder is not None:
        how += f"; batches padded to powers of two ({ctx.batch_split.symbol})"
    return PassResult(notes=[how], declines=declines,
                      stats={"capture": "replay per input-shape signature after 1 warm-up call",
                             "cuda_graph_instances": 0, "cuda_graph_captures": 0})


def batch_padder(ctx: PassContext) -> tuple[Optional[BatchPadder], list[Decline]]:
    """The padder of a captured graph of symbolic sizes, where the batch_split stage found
    its batch separable and no post-fusion plugin pass ran after that decision (else none,
    with a decline when a plugin is why)."""
    split = ctx.batch_split
    if split is None or not split.separable:
        return None, []  # batch_split said why
    if ctx.process.plugins.passes_for("post_fusion"):
        return None, [Decline("cuda_graphs", "batch not padded: post-fusion plugin passes ran "
                              "after the batch_split stage, which could not check them")]
    return BatchPadder(split), []


def capture_decline(
    gm: fx.GraphModule, example_inputs: Sequence[Any], static: Sequence[int]
) -> str:
    """Why ``gm`` cannot be captured ("" when it can)."""
    if not any(isinstance(x, torch.Tensor) and x.is_cuda for x in example_inputs):
        return "CPU tensors: CUDA graphs need CUDA inputs"
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, example_inputs):
        if not isinstance(value, (torch.Tensor, int, torch.SymInt)) or isinstance(value, bool):
            return f"non-tensor input {node.name} ({type(value).__name__})"
    for node in gm.graph.nodes:
        overload = op_overload(node)
        if overload is not None and overload.overloadpacket.__name__ in HOST_SYNC:
            return f"node {node.name} ({overload}) synchronizes with the host"
        if is_collective(node):
            return (f"node {node.name} ({node.target}) is a collective: kitsune does not "
                    "capture collectives in a CUDA graph (the schedule runs uncaptured)")
    return _copied_input_decline(gm, placeholders, static) or _host_value_decline(gm)


def _copied_input_decline(gm: fx.GraphModule, placeholders: list[fx.Node],
                          static: Sequence[int]) -> str:
    """Why replays reading copies of the inputs (not parameters or buffers) would go wrong:
    a node writes into one, or reads one through its storage ("" when neither)."""
    index = {n: i for i, n in enumerate(placeholders)}
    for node in gm.graph.nodes:
        for value in map(alias_base, written_inputs(node)):
            if value in index and index[value] not in static:
                return (
                    f"node {node.name} writes into input {value.name}, which is not a "
                    "parameter or buffer: a replay would write into a copy"
                )
        for value in map(_storage_root, storage_addressed_args(node)):
            if value in index and index[value] not in static:
                return (
                    f"node {node.name} ({node.target}) reads input {value.name} through "
                    "its storage, and it is not a parameter or buffer: a replay would read "
                    "a copy laid out in a storage of its own"
                )
    return ""


def _host_value_decline(gm: fx.GraphModule) -> str:
    """Why a replay would reuse a host value seen at capture: a CPU tensor that depends on
    the inputs ("" when every CPU tensor is a constant)."""
    varying = _varying(gm)
    for node in gm.graph.nodes:
        for t in iter_tensors(node.meta.get("val")):
            if t.device.type != "cuda" and node in varying:
                return (f"node {node.name} makes a {t.device.type} tensor that depends on the "
                        "inputs: a replay would reuse the value seen at capture")
    return ""


def _varying(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes whose value can change from call to call: inputs, random ops, and what
    depends on them. A CPU tensor outside this set (a constant, ``lift_fresh_copy`` of one,
    a scalar folded from them) holds the same value at capture and at every replay, so the
    value a GPU op took from it at capture stays right."""
    found: set[fx.Node] = set()
    for node in gm.graph.nodes:
        overload = op_overload(node)
        random = overload is not None and torch.Tag.nondeterministic_seeded in overload.tags
        if node.op == "placeholder" or random or any(i in found for i in node.all_input_nodes):
            found.add(node)
    return found


def _storage_root(node: fx.Node) -> fx.Node:
    """The node whose storage ``node``'s value lives in, through views and the ops that
    copy a whole storage (:data:`~kitsune_backend.graph_utils.STORAGE_COPYING`)."""
    node = alias_base(node)
    while (overload := op_overload(node)) is not None and \
            overload.overloadpacket.__name__ in STORAGE_COPYING:
        node = alias_base(node.args[0])
    return node
