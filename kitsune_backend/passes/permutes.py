"""permutes: pointwise work moves into the layout its consumer reads.

A ``permute`` of a pointwise op's result (a convolution's bias add, then a channels-last
LayerNorm; a layer scale, then the residual add back in NCHW) splits the work in two index
spaces: fusion puts the pointwise op in one kernel and the permute's consumer in another,
which reads the first one's output again. Pointwise ops commute with permutes, so
``permute(op(a, b))`` is ``op(permute(a), permute(b))``: the op then works in its
consumer's index space and may join its kernel, and the permutes, now of the op's inputs,
stay views that kernels read through their strides.

The move is made only where it changes nothing but the index space:

- the op is an ATen op tagged ``pointwise``, writes to no input, draws no random numbers,
  and the permute is its only user (no work is duplicated);
- the permute's users are ops a generated kernel can hold (pointwise ops, ``clone``,
  reductions), so the op is not left in the new layout on its own;
- its inputs of lower rank (broadcast along leading dims) get leading size-1 dims first;
- the moved op's result has the permute's shape, strides and dtype (checked on fake
  tensors; otherwise the graph is left as it was). Graphs of symbolic sizes, and every
  graph when fusion is off, are left alone.

The move repeats, so a permute climbs a chain of single-user pointwise ops to its start.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from ..graph_utils import has_symbolic_shapes, op_overload
from ..ir import PassContext, PassResult

aten = torch.ops.aten

FUSABLE_USERS = frozenset({"clone", "sum", "mean", "amax", "amin", "var", "var_mean"})
"""Non-pointwise ops (overload packet names) a permuted pointwise op may feed."""


def hoist_permutes(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Move every permute above the single-user pointwise ops it follows (see the module
    docstring).

    Before::

        add = aten.add(conv, bias_view)             # [2, 32, 8, 8]
        permute = aten.permute(add, [0, 2, 3, 1])   # its only user
        clone = aten.clone(permute)                 # then a LayerNorm over dim 3

    After::

        permute_a = aten.permute(conv, [0, 2, 3, 1])
        permute_b = aten.permute(bias_view, [0, 2, 3, 1])
        add = aten.add(permute_a, permute_b)        # [2, 8, 8, 32], as the permute was
        clone = aten.clone(add)
    """
    if not ctx.config.fusion or has_symbolic_shapes(gm):  # the move only serves fusion
        return PassResult(stats={"permutes_hoisted": 0})
    moved = 0
    changed = True
    while changed:
        changed = False
        for node in list(gm.graph.nodes):
            if _movable(node) and _move(gm, node):
                moved += 1
                changed = True
    if moved:
        gm.graph.lint()
        gm.recompile()
    notes = [f"{moved} permute(s) moved above the pointwise op they followed"] if moved else []
    return PassResult(changed=bool(moved), notes=notes, stats={"permutes_hoisted": moved})


def _pointwise(node: fx.Node) -> Optional[torch._ops.OpOverload]:
    """``node``'s overload when it is a pure, deterministic pointwise ATen op."""
    overload = op_overload(node)
    if overload is None or torch.Tag.pointwise not in overload.tags:
        return None
    if overload._schema.is_mutable or torch.Tag.nondeterministic_seeded in overload.tags:
        return None
    return overload


def _fusable_user(node: fx.Node) -> bool:
    overload = op_overload(node)
    return overload is not None and (
        _pointwise(node) is not None or overload.overloadpacket.__name__ in FUSABLE_USERS)


def _movable(permute: fx.Node) -> bool:
    """A permute of a single-user pointwise op's tensor result, read only by ops a kernel
    can hold."""
    if op_overload(permute) is not aten.permute.default:
        return False
    source = permute.args[0]
    if not isinstance(source, fx.Node) or _pointwise(source) is None:
        return False
    if list(source.users) != [permute] or not permute.users:
        return False
    if not all(_fusable_user(u) for u in permute.users):
        return False
    value = source.meta.get("val")
    return isinstance(value, torch.Tensor) and all(
        isinstance(a.meta.get("val"), torch.Tensor) and a.meta["val"].dim() <= value.dim()
        for a in source.all_input_nodes)


def _move(gm: fx.GraphModule, permute: fx.Node) -> bool:
    """Rewrite ``permute(op(...))`` as ``op(permute(...))``, in place: the op keeps its node
    (name, metadata) with permuted arguments; False (graph unchanged) when its result's
    layout would differ from the permute's."""
    source, dims = permute.args[0], list(permute.args[1])
    rank = source.meta["val"].dim()
    value = source.meta["val"]
    mode = value.fake_mode if isinstance(value, FakeTensor) else FakeTensorMode()
    added: list[fx.Node] = []

    def permuted(arg: Any) -> Any:
        if not isinstance(arg, fx.Node) or arg.meta["val"].dim() == 0:
            return arg  # scalars and 0-d tensors broadcast in any layout
        node = arg
        for _ in range(rank - arg.meta["val"].dim()):
            node = _add(gm, source, aten.unsqueeze.default, (node, 0), mode, added)
        return _add(gm, source, aten.permute.default, (node, dims), mode, added)

    old_args, old_kwargs, old_value = source.args, source.kwargs, source.meta["val"]
    source.args, source.kwargs = fx.node.map_arg((old_args, old_kwargs), permuted)
    source.meta["val"] = _run(source, mode)
    if _layout(source.meta["val"]) != _layout(permute.meta["val"]):
        source.args, source.kwargs, source.meta["val"] = old_args, old_kwargs, old_value
        for node in reversed(added):
            gm.graph.erase_node(node)
        return False
    source.meta.pop("tensor_meta", None)  # make_fx's record of the old layout
    permute.replace_all_uses_with(source)
    gm.graph.erase_node(permute)
    return True


def _add(gm: fx.GraphModule, before: fx.Node, target: Any, args: tuple, mode: FakeTensorMode,
         added: list[fx.Node]) -> fx.Node:
    """A new node calling ``target`` just before ``before``, with its fake value."""
    with gm.graph.inserting_before(before):
        node = gm.graph.call_function(target, tuple(args))
    node.meta["val"] = _run(node, mode)
    added.append(node)
    return node


def _run(node: fx.Node, mode: FakeTensorMode) -> Any:
    """``node``'s value on fake inputs laid out as its inputs' recorded values (made anew
    in ``mode``: a graph's values may come from several fake modes)."""
    def fresh(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype,
                                   device=value.device)

    with mode:
        args, kwargs = fx.node.map_arg((node.args, node.kwargs),
                                       lambda n: fresh(n.meta["val"]))
        return node.target(*args, **kwargs)


def _layout(value: torch.Tensor) -> tuple:
    return tuple(value.shape), tuple(value.stride()), value.dtype, value.device

