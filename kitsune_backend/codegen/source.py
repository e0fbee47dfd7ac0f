"""Triton source for one fusion region: the kernel text and what its launch needs.

A pointwise kernel walks one flat index ``xindex`` and computes each value in its index
spaces (:mod:`kitsune_backend.codegen.pointwise`); a reduction kernel walks ``rows`` (one
per kept position, ``XBLOCK`` rows per program) and columns ``k`` (``RBLOCK`` at a time).
When a whole row fits in one block, every value is computed once and kept in registers
(one pass over the input); otherwise each reduction gets its own loop over the row and a
last loop writes the full-size outputs, recomputing what it needs (reads, not writes).

Values compute in fp32 for fp16/bf16 inputs; every load and store casts, and a value of
an fp16/bf16 node is rounded to its dtype where an op of another dtype reads it, as eager
holds it (:func:`kitsune_backend.codegen.ops.held_as_eager`). Static shapes and
strides are constants of the source; a symbolic size is an integer argument of the kernel
(its symbol, ``s0``, after the pointers), and the index math, masks and loop bounds use
it by name: such a kernel indexes in int64, masks every block, and loops over a symbolic
row (:mod:`kitsune_backend.codegen.symbolic`). The launcher checks the tensors it receives
against the shapes and strides, evaluated at the call's sizes for a symbolic kernel.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.fx as fx

from . import index_sources, ops
from .heuristics import LaunchConfig
from .indexing import (broadcast_strides, collapse, max_offset, offset_expr, split_dims,
                       strip_leading, uses)
from .pointwise import PointwiseBody
from .reduction import ReductionBody
from .region import Region, row_split, shape_of, strip_leading_ones
from .spaces import Spaces, contiguous_strides, plan
from .specs import KernelSource, TensorSpec, cdiv, layout_source, symbols_in
from .symbolic import is_size_node, is_symbolic, size

INT32_LIMIT = 2**31 - 1


def generate(
    region: Region, name: str, inputs: list[fx.Node], outputs: list[fx.Node], config: LaunchConfig,
    stores_into: Optional[dict[int, int]] = None,
) -> KernelSource:
    """The Triton source of ``region`` as kernel ``name`` launched with ``config``;
    ``stores_into`` maps output positions to the inputs they are written into, in place."""
    stores_into = stores_into or {}
    writer = _Writer(region, inputs, outputs, config, stores_into)
    body = writer.write()
    in_specs = tuple(TensorSpec.of(n) for n in inputs)
    out_specs = tuple(TensorSpec.of(n) for i, n in enumerate(outputs) if i not in stores_into)
    symbols = symbols_in((*in_specs, *out_specs), region.sizes())
    if region.kind == "pointwise":
        grid = cdiv(region.numel, config.xblock)
        what = f"pointwise over {region.numel} elements"
    else:
        grid = cdiv(region.rows, config.xblock) if region.columns else 0
        passes = "looped rows" if writer.looped else "one pass per row"
        what = (f"row reduction over dims {list(region.reduced)} of {list(region.shape)}: "
                f"{region.rows} rows x {region.columns} columns, {passes}")
    arguments = [f"in{i}" for i in range(len(inputs))] + [f"out{i}" for i in range(len(out_specs))]
    header = [
        f"# kitsune generated kernel {name}",
        f"# FX nodes: {', '.join(n.name for n in region.nodes)}",
        *(f"# in{i}: {s.describe()}" for i, s in enumerate(in_specs)),
        *(f"# out{i}: {s.describe()}" for i, s in enumerate(out_specs)),
        *(f"# {outputs[j].name} is stored into in{k}, in place" for j, k in sorted(stores_into.items())),
        f"# {what}; {config.describe()}; grid ({grid},)",
        *([f"# sizes {', '.join(symbols)}: kernel arguments, given at each launch"]
          if symbols else []),
        "import triton",
        "import triton.language as tl",
        "",
        f"GRID = ({grid},)" if not symbols else f"GRID = lambda {', '.join(symbols)}: ({grid},)",
        f"NUM_WARPS = {config.num_warps}",
        "",
        "",
        "@triton.jit",
        f"def {name}({', '.join([*arguments, *symbols])}):",
    ]
    source = "\n".join(header + body) + "\n"
    columns = region.columns if region.kind == "reduction" else 0
    layout = layout_source(symbols, grid, in_specs, out_specs) if symbols else ""
    return KernelSource(name, source, in_specs, out_specs, grid, config,
                        tuple(n.name for n in region.nodes), columns, symbols, layout,
                        tuple(sorted(stores_into.items())))


class _Writer(PointwiseBody, ReductionBody):
    """Writes the kernel body line by line; one instance per kernel."""

    def __init__(self, region: Region, inputs: list[fx.Node], outputs: list[fx.Node],
                 config: LaunchConfig, stores_into: dict[int, int]) -> None:
        self.region = region
        self.inputs = {n: i for i, n in enumerate(inputs)}
        self.outputs = outputs
        kept = iter(range(len(outputs)))
        self.pointers = [f"in{stores_into[i]}" if i in stores_into else f"out{next(kept)}"
                         for i in range(len(outputs))]  # where each output is stored
        self.config = config
        self.lines: list[str] = []
        self.depth = 1
        self.top: dict[object, str] = {}
        self.values: dict[tuple, str] = {}  # pointwise: (node, space key) -> variable
        self.count = 0
        specs = [TensorSpec.of(n) for n in (*inputs, *outputs)]
        symbolic = any(map(is_symbolic, (region.numel, *(d for s in specs for d in s.shape))))
        columns = region.columns if region.kind == "reduction" else 0
        # a symbolic row loops (its length is unknown); a symbolic size may pass 2**31; the
        # sizes' remainders by the blocks are unknown: every block is masked
        self.looped = region.kind == "reduction" and (
            is_symbolic(columns) or config.rblock < columns)
        work = region.numel if region.kind == "pointwise" else region.rows * max(columns, 1)
        self.int64 = symbolic or work > INT32_LIMIT or any(
            max_offset(s.shape, s.stride) > INT32_LIMIT for s in specs)
        rows = region.numel if region.kind == "pointwise" else region.rows
        self.xmask = is_symbolic(rows) or rows % config.xblock != 0
        self.rmask = region.kind == "reduction" and (
            is_symbolic(columns) or columns % config.rblock != 0)

    # -- plumbing ---------------------------------------------------------------------------
    def line(self, text: str) -> None:
        """Append one line at the current depth."""
        self.lines.append("    " * self.depth + text)

    def fresh(self, stem: str) -> str:
        """A new local variable name."""
        self.count += 1
        return f"{stem}{self.count}"

    def write(self) -> list[str]:
        """The whole kernel body."""
        pid = "tl.program_id(0).to(tl.int64)" if self.int64 else "tl.program_id(0)"
        if self.region.kind == "pointwise":
            self.line(f"xindex = {pid} * {self.config.xblock} + tl.arange(0, {self.config.xblock})")
            if self.xmask:
                self.line(f"xmask = xindex < {self.region.numel}")
            self.spaces = Spaces(self.line, self.fresh, "xmask" if self.xmask else "")
            where = plan(self.region.nodes, self.region.context, self.region.numel, self.spaces)
            for node in self.region.nodes:
                for space in where[node]:
                    self.emit_at(node, space)
            for i, node in enumerate(self.outputs):
                self.store_at(i, node, where[node][0])
            return self.lines
        self.line(f"rows = {pid} * {self.config.xblock} + tl.arange(0, {self.config.xblock})[:, None]")
        if self.xmask:
            self.line(f"xmask = rows < {self.region.rows}")
        if not self.looped:
            self.open_columns("0")
        for node in self.region.nodes:
            if ops.packet(node) in ops.REDUCTIONS:
                self.reduce(node)
        full_outputs = [n for n in self.outputs if self.region.context[n] == "full"]
        if full_outputs:
            scope = self.phase(full_outputs)
            for node in full_outputs:
                self.store(self.outputs.index(node), node, scope)
            self.close_loop()
        for node in self.outputs:
            if self.region.context[node] == "row":
                self.ensure_rows([node])
                self.store(self.outputs.index(node), node, self.top)
        return self.lines

    def open_columns(self, start: str) -> None:
        """Define ``k`` (and the column masks) for a block of columns starting at ``start``."""
        rb = self.config.rblock
        k = f"tl.arange(0, {rb})[None, :]" if start == "0" else f"{start} + tl.arange(0, {rb})[None, :]"
        self.line(f"k = ({k}).to(tl.int64)" if self.int64 else f"k = {k}")
        if self.rmask:
            self.line(f"rmask = k < {self.region.columns}")
        if self.rmask and self.xmask:
            self.line("fmask = xmask & rmask")

    # -- values -----------------------------------------------------------------------------
    def lookup(self, node: fx.Node, scope: dict) -> str:
        """The variable holding an in-region node's value."""
        return scope[node] if node in scope else self.top[node]

    def emit(self, node: fx.Node, scope: dict) -> None:
        """Define ``node``'s value in ``scope`` of a reduction kernel (its in-region inputs
        are defined already; pointwise kernels: :meth:`PointwiseBody.emit_at`)."""
        if node in scope or node in self.top:
            return
        if ops.is_identity_view(node):
            scope[node] = self.lookup(node.args[0], scope)
            return
        if ops.packet(node) is ops.PHILOX:
            expr = self.uniform(node, scope)
        else:
            expr = self.lower(node, lambda a: self.operand(a, node, scope))
        var = self.fresh("v")
        self.line(f"{var} = {expr}  # {node.name}")
        scope[node] = var

    def uniform(self, node: fx.Node, scope: dict) -> str:
        """``kitsune.philox_uniform(seed, like)`` of a full-size value: ``tl.rand`` of the
        seed at each element's row-major index, as a pointwise kernel draws it (the same
        numbers in every pass over the columns)."""
        target = self.full_target(shape_of(node))
        strides = broadcast_strides(shape_of(node), contiguous_strides(shape_of(node)), target)
        index = self.offset("full", target, strides)
        seed = self.load(node.args[0], "full", target, scope)
        return f"tl.rand({seed} + {index} * 0, {index})"

    def lower(self, node: fx.Node, value: Callable[[fx.Node], str]) -> str:
        """The expression of pointwise ``node`` given ``value(arg)`` for its tensor operands,
        each cast to the dtype the op computes in."""
        op = ops.packet(node)
        result = node.meta["val"].dtype
        mode = ops.cast_mode(node)
        tensors = [a for a in node.args if isinstance(a, fx.Node) and not is_size_node(a)]
        if mode == "promote":
            dtypes = [a.meta["val"].dtype for a in tensors]
            target = dtypes[0]
            for dtype in dtypes[1:]:
                target = torch.promote_types(target, dtype)
            if not target.is_floating_point and any(isinstance(a, float) for a in node.args):
                target = torch.float32
            want = ops.compute_dtype(target)
        else:
            want = ops.compute_dtype(result)
        keep_bool = ops.BOOL_OPERANDS.get(op)
        args = []
        for position, arg in enumerate(node.args):
            if isinstance(arg, fx.Node) and is_size_node(arg):  # a size argument's value
                args.append(f"({size(arg.meta['val'])}).to({want})")
            elif isinstance(arg, fx.Node):
                expr = value(arg)
                if arg in self.region.context:
                    expr = ops.held_as_eager(expr, arg.meta["val"].dtype, result)
                have = ops.compute_dtype(arg.meta["val"].dtype)
                if mode != "none" and have != want and position != keep_bool:
                    expr = f"{expr}.to({want})"
                args.append(expr)
            elif isinstance(arg, (bool, int, float)):
                args.append(ops.literal(arg))
            else:
                args.append("None")
        return ops.lower_pointwise(node, args)

    def operand(self, arg: fx.Node, consumer: fx.Node, scope: dict) -> str:
        """An operand of ``consumer``: an in-region value or a load of a kernel input."""
        if arg in self.region.context:
            return self.lookup(arg, scope)
        context = self.region.context[consumer]
        return self.load(arg, context, shape_of(consumer), scope if context == "full" else self.top)

    def load(self, arg: fx.Node, context: str, target: tuple[int, ...], scope: dict) -> str:
        """Load kernel input ``arg`` broadcast to ``target`` (the consumer's shape)."""
        if context == "full":
            target = self.full_target(target)
        key = ("load", arg, context, target)
        if key in scope:
            return scope[key]
        if arg not in self.inputs:  # an inlined constant or index source
            strides = broadcast_strides(shape_of(arg), contiguous_strides(shape_of(arg)), target)
            offset = self.offset(context, target, strides)
            var = self.fresh("x")
            dtype = ops.compute_dtype(arg.meta["val"].dtype)
            self.line(f"{var} = {index_sources.expression(arg, offset, dtype)}  # {arg.name}")
            scope[key] = var
            return var
        spec = TensorSpec.of(arg)
        sizes, strides = strip_leading(spec.shape, spec.stride)
        strides = broadcast_strides(sizes, strides, target)
        offset = self.offset(context, target, strides)
        mask = self.mask_for(offset)
        mask_arg = f", mask={mask}" if mask else ""
        value = f"tl.load(in{self.inputs[arg]} + {offset}{mask_arg})"
        have = ops.TL_DTYPES[spec.dtype]
        want = ops.compute_dtype(spec.dtype)
        if have != want:
            value += f".to({want})"
        var = self.fresh("x")
        self.line(f"{var} = {value}  # {arg.name}")
        scope[key] = var
        return var

    def offset(self, context: str, shape: tuple[int, ...], strides: list[int]) -> str:
        """The offset expression of an element in ``context`` for a tensor of ``strides``."""
        if context == "row":
            parts = [offset_expr("rows", collapse(shape, strides))]
        else:
            reduced = self.region.reduced if tuple(shape) == tuple(self.region.shape) else \
                row_split(tuple(shape), self.region.shape, self.region.reduced)
            kept, red = split_dims(shape, strides, reduced)
            parts = [p for p in (offset_expr("rows", kept), offset_expr("k", red)) if p != "0"]
        # an offset that uses no index is still a block (one element per row), so that a
        # value read from a 0-d tensor has the rank of the others, as in eager broadcasting
        return f"({' + '.join(parts)})" if parts and parts != ["0"] else "(rows * 0)"

    def full_target(self, shape: tuple) -> tuple:
        """The shape a full-size value of ``shape`` is indexed in: its own where it holds
        the region's rows and columns under another shape (:func:`row_split`), else the
        region's."""
        shape = tuple(shape)
        if strip_leading_ones(shape) != strip_leading_ones(tuple(self.region.shape)) and \
                row_split(shape, self.region.shape, self.region.reduced) is not None:
            return shape
        return self.region.shape

    def mask_for(self, offset: str) -> str:
        """The mask matching the index variables an offset uses ('' when none is needed)."""
        rows = uses(offset, "rows") and self.xmask
        cols = uses(offset, "k") and self.rmask
        if rows and cols:
            return "fmask"
        return "xmask" if rows else ("rmask" if cols else "")

    def store(self, index: int, node: fx.Node, scope: dict) -> None:
        """Write output ``index`` (``node``'s value) of a reduction kernel with its
        metadata strides (pointwise kernels: :meth:`PointwiseBody.store_at`)."""
        spec = TensorSpec.of(node)
        value = self.lookup(node, scope)
        if self.region.context[node] == "row":
            offset = self.offset("row", spec.shape, list(spec.stride))
            needed = ["rows"]
        else:
            sizes, strides = strip_leading(spec.shape, spec.stride)
            target = self.full_target(spec.shape)
            offset = self.offset("full", target, broadcast_strides(sizes, strides, target))
            needed = ["rows", "k"]
        for var in needed:
            if not uses(offset, var):
                offset = f"({offset} + {var} * 0)"
        mask = self.mask_for(offset)
        mask_arg = f", mask={mask}" if mask else ""
        dtype = ops.TL_DTYPES[spec.dtype]
        self.line(f"tl.store({self.pointers[index]} + {offset}, {value}.to({dtype}){mask_arg})"
                  f"  # {node.name}")
