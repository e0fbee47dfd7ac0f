"""A pass plugin: note how many matmuls every graph has, before fusion."""

import torch

import kitsune_backend
from kitsune_backend import Decline, PassResult

aten = torch.ops.aten
MATMULS = {aten.mm.default, aten.addmm.default, aten.bmm.default}


def count_matmuls(gm, ctx):
    """Leaves the graph as it is and records how many matmuls it holds.

    Before and after::

        t = aten.t(w); y = aten.addmm(b, x, t); return y     # notes: "1 matmul(s)"
    """
    found = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in MATMULS]
    declines = [] if found else [Decline("count_matmuls", "the graph has no matmul")]
    return PassResult(
        notes=[f"{len(found)} matmul(s) in {ctx.graph_name}"],
        declines=declines,
        stats={"matmuls": len(found)},
    )


if __name__ == "__main__":
    from kitsune_backend.models import MLP

    kitsune_backend.register_pass(count_matmuls, stage="pre_fusion", order=10)
    model = MLP((16, 32, 4))
    torch.compile(model, backend="kitsune")(torch.randn(8, 16)).sum().backward()
    session = kitsune_backend.last_compile()
    print(session.forward.stats["matmuls"], session.backward.stats["matmuls"])  # 2 3
    kitsune_backend.unregister_pass("count_matmuls")
