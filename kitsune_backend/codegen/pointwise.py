"""The pointwise kernel body: every region value computed in its index spaces.

A pointwise kernel computes each region node in the spaces :func:`spaces.plan` gives it
(the top space for the region's largest nodes, derived spaces for the values a ``cat``, a
broadcasting op or a gather reads), loads kernel inputs at each space's index, computes
constant and index sources in place, and stores each output from the lanes that own its
elements. :class:`PointwiseBody` is mixed into the kernel writer of
:mod:`kitsune_backend.codegen.source`, which supplies ``line``, ``fresh``, ``lower``,
``inputs``, ``region``, ``values`` and ``spaces``.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch.fx as fx

from . import index_sources, ops
from .indexing import broadcast_strides, collapse, offset_expr, strip_leading, uses
from .region import shape_of
from .spaces import Space, contiguous_strides
from .symbolic import size


def _spec(node: fx.Node) -> SimpleNamespace:
    value = node.meta["val"]
    return SimpleNamespace(shape=tuple(size(s) for s in value.shape),
                           stride=tuple(size(s) for s in value.stride()), dtype=value.dtype)


class PointwiseBody:
    """Pointwise-kernel methods of the kernel writer (see the module docstring)."""

    def emit_at(self, node: fx.Node, space: Space) -> None:
        """Define ``node``'s value in ``space`` (its operands' values are defined already)."""
        if ops.is_identity_view(node):
            self.values[(node, space.key)] = self.value_at(node.args[0], node, space)
            return
        if ops.packet(node) is ops.aten.cat:
            expr = self.cat_expr(node, space)
        elif ops.packet(node) is ops.aten.index:
            expr = self.gather_expr(node, space)
        elif ops.packet(node) is ops.PHILOX:
            expr = self.uniform_expr(node, space)
        else:
            expr = self.lower(node, lambda a: self.value_at(a, node, space))
        var = self.fresh("v")
        self.line(f"{var} = {expr}  # {node.name}")
        self.values[(node, space.key)] = var

    def value_at(self, arg: fx.Node, consumer: fx.Node, space: Space) -> str:
        """Operand ``arg`` of ``consumer`` (computed in ``space``): a value or a load."""
        if arg in self.region.context:
            (inner,) = self.spaces.operand(space, consumer, arg)
            return self.values[(arg, inner.key)]
        return self.load_at(arg, space, shape_of(consumer))

    def cat_expr(self, node: fx.Node, space: Space) -> str:
        """A ``tl.where`` chain picking, per lane, the cat part its position falls in."""
        want = ops.compute_dtype(node.meta["val"].dtype)
        dim = ops.cat_dim(node)
        position = self.spaces.position(space, node, dim)
        parts, ends, end = [], [], 0
        for k, part in enumerate(node.args[0]):
            inner = self.spaces.cat_part(space, node, k)
            if part in self.region.context:
                value = ops.held_as_eager(self.values[(part, inner.key)],
                                          part.meta["val"].dtype, node.meta["val"].dtype)
            else:
                value = self.load_at(part, inner, shape_of(part))
            if ops.compute_dtype(part.meta["val"].dtype) != want:
                value = f"{value}.to({want})"
            end += shape_of(part)[dim]
            parts.append(value)
            ends.append(end)
        expr = parts[-1]
        for value, end in zip(reversed(parts[:-1]), reversed(ends[:-1])):
            expr = f"tl.where({position} < {end}, {value}, {expr})"
        return expr

    def uniform_expr(self, node: fx.Node, space: Space) -> str:
        """``kitsune.philox_uniform(seed, like)``: Triton's ``tl.rand`` of the seed at each
        lane's row-major element index (what :mod:`kitsune_backend.philox` computes)."""
        seed = self.load_at(node.args[0], space, shape_of(node))
        shape = shape_of(node)
        index = self.block_offset(space, collapse(shape, contiguous_strides(shape)))
        return f"tl.rand({seed}, {index})"

    def load_at(self, arg: fx.Node, space: Space, target: tuple[int, ...]) -> str:
        """Kernel input (or inlined source) ``arg`` broadcast to ``target``, in ``space``."""
        key = ("load", arg, space.key, target)
        if key in self.values:
            return self.values[key]
        if arg not in self.inputs:
            strides = broadcast_strides(shape_of(arg), contiguous_strides(shape_of(arg)), target)
            offset = self.block_offset(space, collapse(target, strides))
            value = index_sources.expression(arg, offset, ops.compute_dtype(arg.meta["val"].dtype))
        else:
            spec = _spec(arg)
            strides = broadcast_strides(*strip_leading(spec.shape, spec.stride), target)
            offset = self.block_offset(space, collapse(target, strides))
            mask = f", mask={space.mask}" if space.mask and uses(offset, space.index) else ""
            value = f"tl.load(in{self.inputs[arg]} + ({offset}){mask})"
            if ops.TL_DTYPES[spec.dtype] != ops.compute_dtype(spec.dtype):
                value += f".to({ops.compute_dtype(spec.dtype)})"
        var = self.fresh("x")
        self.line(f"{var} = {value}  # {arg.name}")
        self.values[key] = var
        return var

    @staticmethod
    def block_offset(space: Space, dims: list[tuple[int, int]]) -> str:
        """The offset of each lane's element over ``dims``: a block even when it uses no
        index (a 0-d or fully broadcast tensor), so every value has the lanes' rank."""
        offset = offset_expr(space.index, dims)
        return offset if uses(offset, space.index) else f"{offset} + {space.index} * 0"

    def store_at(self, index: int, node: fx.Node, space: Space) -> None:
        """Write output ``index`` (``node``'s value in ``space``) from the lanes owning it."""
        spec = _spec(node)
        strides = broadcast_strides(*strip_leading(spec.shape, spec.stride), spec.shape)
        offset = self.block_offset(space, collapse(spec.shape, strides))
        mask = f", mask={space.unique}" if space.unique else ""
        value = self.values[(node, space.key)]
        dtype = ops.TL_DTYPES[spec.dtype]
        self.line(f"tl.store({self.pointers[index]} + ({offset}), {value}.to({dtype}){mask})"
                  f"  # {node.name}")

    def gather_expr(self, node: fx.Node, space: Space) -> str:
        """``aten.index(base, indices)``: a load of kernel input ``base`` at the offsets the
        index values (broadcast to the result) give; negative indices count from the end.
        Fusion only takes gathers whose indices are proven in range at compile time
        (:func:`kitsune_backend.codegen.index_sources.value_range`); the mask is a guard."""
        base = node.args[0]
        spec = _spec(base)
        computed = base not in self.inputs  # an inlined source: its own contiguous layout
        if computed:
            spec.stride = tuple(contiguous_strides(spec.shape))
        terms, bounds = [], [space.mask] if space.mask else []
        for dim, index in enumerate(node.args[1]):
            value = self.value_at(index, node, space)
            size = spec.shape[dim]
            wrapped = self.fresh("j")
            self.line(f"{wrapped} = {value}.to(tl.int64)")
            self.line(f"{wrapped} = tl.where({wrapped} < 0, {wrapped} + {size}, {wrapped})")
            bounds.append(f"({wrapped} >= 0) & ({wrapped} < {size})")
            if spec.stride[dim] != 0 and size != 1:
                terms.append(f"{wrapped} * {spec.stride[dim]}")
        offset = " + ".join(terms) or f"{space.index} * 0"  # a block, like the mask
        if computed:
            return index_sources.expression(base, offset, ops.compute_dtype(spec.dtype))
        mask = " & ".join(bounds)
        value = f"tl.load(in{self.inputs[base]} + ({offset}), mask={mask})"
        if ops.TL_DTYPES[spec.dtype] != ops.compute_dtype(spec.dtype):
            value += f".to({ops.compute_dtype(spec.dtype)})"
        return value
