"""Put a lone bias add back into its matmul.

The decomposition table splits ``addmm`` into ``mm`` plus a pointwise bias add so that the
add fuses into the kernel after the matmul (a ReLU, GELU, residual add or layer norm). When
nothing fusable follows, for instance GPT-2's QKV projection feeding attention, the add
would stay a kernel of its own. ``addmm`` adds the bias inside the GEMM (cuBLASLt's bias
epilogue) instead, so such an add goes back into an ``addmm``: one launch fewer.
"""

from __future__ import annotations

import torch
import torch.fx as fx

aten = torch.ops.aten


def rejoin_bias(gm: fx.GraphModule, add: fx.Node) -> bool:
    """Replace ``add(mm(a, b), bias)`` by ``addmm(bias, a, b)`` when ``bias`` is a 1-D
    tensor over the matmul's columns, of the matmul's dtype, and the add is the matmul's
    only user. Returns whether ``gm`` changed.

    Before::

        mm = aten.mm(x, w); add = aten.add(mm, b); return add

    After::

        addmm = aten.addmm(b, x, w); return addmm
    """
    pair = _mm_and_bias(add)
    if pair is None:
        return False
    mm, bias = pair
    with gm.graph.inserting_before(add):
        addmm = gm.graph.call_function(aten.addmm.default, (bias, *mm.args))
    addmm.meta = dict(add.meta)
    add.replace_all_uses_with(addmm)
    gm.graph.erase_node(add)
    gm.graph.erase_node(mm)
    return True


def _mm_and_bias(add: fx.Node):
    if add.op != "call_function" or add.target != aten.add.Tensor or add.kwargs:
        return None
    if len(add.args) != 2 or not all(isinstance(a, fx.Node) for a in add.args):
        return None
    for mm, bias in (add.args, reversed(add.args)):
        if mm.target == aten.mm.default and len(mm.users) == 1 and _fits(mm, bias, add):
            return mm, bias
    return None


def _fits(mm: fx.Node, bias: fx.Node, add: fx.Node) -> bool:
    out, b, total = (n.meta.get("val") for n in (mm, bias, add))
    if not all(isinstance(t, torch.Tensor) for t in (out, b, total)):
        return False
    return (b.dim() == 1 and out.dim() == 2 and b.shape[0] == out.shape[1]
            and b.dtype == out.dtype == total.dtype and b.device == out.device)
