"""cleanup: dead code and duplicate computations out, canonical ATen names, shape/dtype
metadata on every node, input-independent values computed once (constant folding)."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from .base import PassContext, PassResult
from .constant_fold import fold_constants
from .cse import eliminate_common_subexpressions

aten = torch.ops.aten

# Overloads with the same result as a plainer one; later passes only need to know the plain one.
CANONICAL = {
    aten._unsafe_view.default: aten.view.default,
}


def cleanup(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Remove dead nodes, rename aliases of ATen ops to one canonical overload, merge
    duplicate pure computations (:mod:`kitsune_backend.passes.cse`), fill in
    ``meta["val"]`` where a node lacks it (by fake-tensor propagation), and compute values
    that depend on no input once, into buffers (:mod:`kitsune_backend.passes.constant_fold`).

    Before::

        a = aten.add(x, 1); b = aten.mul(x, 2)       # b has no users
        c = aten.add(x, 1)                           # the same value as a
        v = aten._unsafe_view(a, [4]); return (v, c)

    After::

        a = aten.add(x, 1); v = aten.view(a, [4]); return (v, a)
    """
    result = PassResult()
    renamed = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in CANONICAL:
            node.target = CANONICAL[node.target]
            renamed += 1
    merged = eliminate_common_subexpressions(gm)
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code()
    removed = before - len(gm.graph.nodes)
    missing = [n for n in gm.graph.nodes if n.op != "output" and "val" not in n.meta]
    if missing:
        _propagate_fake_values(gm, ctx)
        result.notes.append(f"filled metadata of {len(missing)} node(s) by fake propagation")
    folded = fold_constants(gm) if ctx.config.constant_folding else 0
    result.changed = bool(renamed or removed or merged or missing or folded)
    result.notes.append(f"removed {removed} dead node(s), merged {merged} duplicate(s), "
                        f"renamed {renamed} alias op(s), folded {folded} constant(s)")
    result.stats.update(dead_nodes_removed=removed, duplicates_merged=merged,
                        constants_folded=folded)
    return result


def _propagate_fake_values(gm: fx.GraphModule, ctx: PassContext) -> None:
    mode = detect_fake_mode(ctx.example_inputs)
    if mode is not None:
        FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*ctx.example_inputs)
    else:
        FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(
            *ctx.example_inputs
        )
