"""batch_split: decide whether a graph of symbolic sizes may be padded along its batch.

A serving loop calls one compiled graph with many batch sizes; captured as CUDA graphs,
each size would need a capture of its own. Where no op of the graph mixes rows of the batch
(checked op by op, :mod:`kitsune_backend.passes.batch_rules`), the runtime may pad the
batch up to a bucket, run the bucket's capture and slice the outputs back
(:mod:`kitsune_backend.runtime.batch_padding`): the real rows come out as they would
unpadded. The batch is the symbol of the leading size of the first tensor input that is not
a parameter or buffer. Where the graph is not separable, the reason names the node and op.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import sympy
import torch
import torch.fx as fx

from ..graph_utils import has_symbolic_shapes
from ..ir import BatchSplit, Decline, PassContext, PassResult
from .batch_rules import NotSeparable, Rows, batch_dims, expr_of, free_factor, rows_after

STAGE = "batch_split"


def split_batch(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Set ``ctx.batch_split`` (:class:`~kitsune_backend.ir.BatchSplit`); the graph is left
    as it was. A graph of static sizes has nothing to pad; one of symbolic sizes that may
    not be padded gets a decline with the reason.

    Example::

        s0: SymInt; x: f32[s0, 16]; w: f32[16, 8]
        mm = aten.mm(x, w); relu = aten.relu(mm); return (relu,)
        -> BatchSplit(symbol="s0", size_inputs=(0,), inputs=((1, 0),), outputs=((0, 0),))

        ... sum_1 = aten.sum.dim_IntList(x, [0]) ...
        -> reason "node sum_1 (aten.sum.dim_IntList) works across the batch dim 0 of x"
    """
    if not has_symbolic_shapes(gm):
        ctx.batch_split = BatchSplit(reason="static shapes: nothing to pad")
        return PassResult(stats={"batch_split": "static shapes"})
    if ctx.config.batch_buckets == "off":
        split = BatchSplit(reason="batch padding is off (batch_buckets='off')")
    else:
        split = find_batch_split(gm, ctx.static_input_indices)
    ctx.batch_split = split
    if not split.separable:
        return PassResult(declines=[Decline(STAGE, f"batch not padded: {split.reason}")],
                          stats={"batch_split": "not separable"})
    what = (f"{split.symbol}: {len(split.inputs)} input(s) padded, "
            f"{len(split.outputs)} output(s) sliced")
    return PassResult(notes=[f"the batch {what}, where captured"],
                      stats={"batch_split": what})


def find_batch_split(gm: fx.GraphModule, static: Sequence[int] = ()) -> BatchSplit:
    """Whether ``gm`` keeps the rows of its batch apart, and which inputs and outputs
    carry them (``static``: the positions of parameter and buffer inputs)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    s, reason = _batch_symbol(placeholders, static)
    if s is None:
        return BatchSplit(reason=reason)
    try:
        rows = _walk(gm, s)
        inputs, sizes = _inputs(placeholders, rows, s)
        outputs = _outputs(gm, rows, s)
    except NotSeparable as exc:
        return BatchSplit(symbol=str(s), reason=str(exc))
    if not sizes:
        return BatchSplit(symbol=str(s), reason=f"the batch size {s} is no graph input")
    return BatchSplit(str(s), "", tuple(sizes), tuple(inputs), tuple(outputs),
                      _most(placeholders, s))


def _batch_symbol(placeholders: list[fx.Node], static: Sequence[int]
                  ) -> tuple[Optional[sympy.Symbol], str]:
    """The symbol of the leading size of the first tensor input that is not a parameter or
    buffer, when that size is a multiple of one symbol."""
    for i, node in enumerate(placeholders):
        value = node.meta.get("val")
        if i in static or not isinstance(value, torch.Tensor) or value.dim() == 0:
            continue
        expr = expr_of(value.shape[0])
        if not expr.free_symbols:
            continue
        if len(expr.free_symbols) == 1:
            (s,) = expr.free_symbols
            if free_factor(expr / s, s) is not None:
                return s, ""
        return None, f"the leading size {expr} of input {node.name} is no multiple of one size"
    return None, "no input has a symbolic leading size"


def _walk(gm: fx.GraphModule, s: sympy.Symbol) -> dict[fx.Node, Any]:
    """Every node's rows (:class:`~kitsune_backend.passes.batch_rules.Rows`, None, or a
    tuple), in graph order."""
    rows: dict[fx.Node, Any] = {}

    def rows_of(arg: Any) -> Any:
        return rows.get(arg) if isinstance(arg, fx.Node) else None

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            rows[node] = _input_rows(node, s)
        elif node.op in ("call_function", "call_method", "call_module"):
            try:
                rows[node] = rows_after(node, rows_of, s)
            except NotSeparable as exc:
                raise NotSeparable(f"{exc}{_origin(node)}") from None
    return rows


def _origin(node: fx.Node) -> str:
    """Where a node came from, when a decomposition made it (a batch norm's ``sum``)."""
    original = node.meta.get("original_aten")
    if original is None or str(original) == str(node.target):
        return ""
    return f" (part of {original})"


def _input_rows(node: fx.Node, s: sympy.Symbol) -> Optional[Rows]:
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        return None
    dims = batch_dims(value, s)
    if not dims:
        return None
    coefficient = free_factor(expr_of(value.shape[dims[0]]) / s, s)
    if len(dims) > 1 or coefficient is None:
        raise NotSeparable(f"input {node.name} of shape {tuple(value.shape)} carries the "
                           f"batch {s} in more than one dim, or in no multiple of it")
    return Rows(dims[0], sympy.Integer(1), coefficient)


def _inputs(placeholders: list[fx.Node], rows: dict[fx.Node, Any], s: sympy.Symbol
            ) -> tuple[list[tuple[int, int]], list[int]]:
    """The (position, dim) of the tensor inputs that carry the batch, and the positions of
    the int inputs that are the batch size."""
    inputs, sizes = [], []
    for i, node in enumerate(placeholders):
        value = node.meta.get("val")
        if isinstance(value, torch.SymInt) and s in value.node.expr.free_symbols:
            if value.node.expr != s:
                raise NotSeparable(f"input {node.name} is the size {value.node.expr}, "
                                   f"which depends on the batch {s}")
            sizes.append(i)
        elif isinstance(rows.get(node), Rows):
            inputs.append((i, rows[node].dim))
    return inputs, sizes


def _outputs(gm: fx.GraphModule, rows: dict[fx.Node, Any], s: sympy.Symbol
             ) -> list[tuple[int, int]]:
    """The (position, dim) of the outputs that carry the batch; raises for an output that
    cannot be sliced back (the batch interleaved with another size, or a size itself)."""
    returned = next(n for n in reversed(gm.graph.nodes) if n.op == "output").args[0]
    found = []
    for i, value in enumerate(returned if isinstance(returned, (list, tuple)) else [returned]):
        if not isinstance(value, fx.Node):
            continue
        meta, where = value.meta.get("val"), rows.get(value)
        if isinstance(meta, torch.SymInt) and s in meta.node.expr.free_symbols:
            raise NotSeparable(f"output {i} ({value.name}) is the size {meta.node.expr}, "
                               "which padding would change")
        if isinstance(where, Rows):
            if where.outer != 1:
                raise NotSeparable(f"output {i} ({value.name}) interleaves the batch {s} with "
                                   f"other sizes in dim {where.dim}: it cannot be sliced back")
            found.append((i, where.dim))
    return found


def _most(placeholders: list[fx.Node], s: sympy.Symbol) -> int:
    """The largest batch size the graph's guards allow (0: no bound)."""
    for node in placeholders:
        value = node.meta.get("val")
        if isinstance(value, torch.SymInt) and value.node.expr == s:
            upper = value.node.shape_env.var_to_range[s].upper
            return int(upper) if getattr(upper, "is_Integer", False) else 0
    return 0
