"""The cleanup stages: dead code out and canonical ATen names with shape/dtype metadata on
every node (``cleanup``), duplicate computations merged (``cse``), input-independent values
computed once (``constant_fold``)."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from ..ir import PassContext, PassResult
from .constant_fold import fold_constants
from .cse import eliminate_common_subexpressions

aten = torch.ops.aten

# Overloads with the same result as a plainer one; later passes only need to know the plain one.
CANONICAL = {
    aten._unsafe_view.default: aten.view.default,
}


def cleanup(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Remove dead nodes, rename aliases of ATen ops to one canonical overload, use the
    source of a functional ``copy`` that changes nothing (functionalized ``p.addcmul_``
    leaves ``copy(p, new)``: the value is ``new`` when it has ``p``'s shape, strides, dtype
    and device), and fill in ``meta["val"]`` where a node lacks it (by fake propagation).

    Before::

        a = aten.add(x, 1); b = aten.mul(x, 2)       # b has no users
        v = aten._unsafe_view(a, [4]); c = aten.copy(x, v); return c

    After::

        a = aten.add(x, 1); v = aten.view(a, [4]); return v
    """
    result = PassResult()
    renamed = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in CANONICAL:
            node.target = CANONICAL[node.target]
            renamed += 1
    renamed += _drop_plain_copies(gm)
    removed = _remove_dead_code(gm)
    missing = [n for n in gm.graph.nodes if n.op != "output" and "val" not in n.meta]
    if missing:
        _propagate_fake_values(gm, ctx)
        result.notes.append(f"filled metadata of {len(missing)} node(s) by fake propagation")
    result.changed = bool(renamed or removed or missing)
    result.notes.append(f"removed {removed} dead node(s), renamed {renamed} alias op(s)")
    result.stats.update(dead_nodes_removed=removed)
    return result


def merge_duplicates(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Merge duplicate pure computations (:mod:`kitsune_backend.passes.cse`), then remove
    the nodes left dead.

    Before::

        a = aten.add(x, 1); c = aten.add(x, 1); return (a, c)

    After::

        a = aten.add(x, 1); return (a, a)
    """
    merged = eliminate_common_subexpressions(gm)
    removed = _remove_dead_code(gm) if merged else 0
    return PassResult(changed=bool(merged), stats={"duplicates_merged": merged},
                      notes=[f"merged {merged} duplicate(s), removed {removed} dead node(s)"])


def fold_constants_stage(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Compute values that depend on no input once, into buffers
    (:mod:`kitsune_backend.passes.constant_fold`), unless ``constant_folding`` is off.

    Before::

        r = aten.arange(4); m = aten.lt(r, 2); y = aten.where(m, x, 0)

    After::

        m = self._kitsune_constant_0; y = aten.where(m, x, 0)
    """
    if not ctx.config.constant_folding:
        return PassResult(notes=["constant folding is off (constant_folding=False)"])
    folded = fold_constants(gm)
    return PassResult(changed=bool(folded), stats={"constants_folded": folded},
                      notes=[f"folded {folded} constant(s)"])


def _drop_plain_copies(gm: fx.GraphModule) -> int:
    """Replace each ``aten.copy(dst, src)`` whose ``src`` has the result's layout by ``src``."""
    dropped = 0
    for node in list(gm.graph.nodes):
        if node.target is not aten.copy.default or len(node.args) != 2 or node.kwargs:
            continue
        src = node.args[1]
        result = node.meta.get("val")
        value = src.meta.get("val") if isinstance(src, fx.Node) else None
        if isinstance(result, torch.Tensor) and isinstance(value, torch.Tensor) and (
                result.shape, result.stride(), result.dtype, result.device) == (
                value.shape, value.stride(), value.dtype, value.device):
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            dropped += 1
    return dropped


def _remove_dead_code(gm: fx.GraphModule) -> int:
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code()
    return before - len(gm.graph.nodes)


def _propagate_fake_values(gm: fx.GraphModule, ctx: PassContext) -> None:
    mode = detect_fake_mode(ctx.example_inputs)
    if mode is not None:
        FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*ctx.example_inputs)
    else:
        FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(
            *ctx.example_inputs
        )
