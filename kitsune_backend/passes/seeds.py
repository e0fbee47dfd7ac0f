"""seeds: the graph's random seeds drawn once, at its start.

Each dropout brings its own seed (``aten.randint(0, 2**31 - 1, [])``, see
:mod:`kitsune_backend.passes.dropout_decomposition`). Left where they are, those draws are
random ops in the middle of the graph, which fusion may not move work across; and each is a
kernel launch. This stage replaces them by one ``randint`` of all the seeds, placed after
the inputs, and a ``select`` of each::

    Before:  a = gelu(x); s = randint(0, H, []); u = philox_uniform(s, a); ...
    After:   seeds = randint(0, H, [1]); s = select(seeds, 0, 0); a = gelu(x); ...

The seeds still come from PyTorch's generator, in the same order (one draw of n values
instead of n draws of one).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..codegen.ops import PHILOX
from ..codegen.node_kinds import packet
from ..ir import PassContext, PassResult
from .dropout_decomposition import SEED_HIGH

aten = torch.ops.aten


def gather_seeds(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Replace the graph's seed draws by one draw per device at its start."""
    by_device: dict[torch.device, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if _is_seed(node):
            by_device.setdefault(node.meta["val"].device, []).append(node)
    if not by_device:
        return PassResult()
    start = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for device, seeds in by_device.items():
        _draw_together(gm.graph, start[-1] if start else None, device, seeds)
    total = sum(len(s) for s in by_device.values())
    return PassResult(changed=True, stats={"seeds": total},
                      notes=[f"{total} seed(s) drawn by {len(by_device)} randint call(s)"])


def _draw_together(graph: fx.Graph, after, device: torch.device, seeds: list[fx.Node]) -> None:
    inserting = graph.inserting_after(after) if after is not None else graph.inserting_before()
    with inserting:
        draw = graph.call_function(aten.randint.low, (0, SEED_HIGH, [len(seeds)]),
                                   {"dtype": torch.int64, "device": device})
    draw.meta["val"] = seeds[0].meta["val"].new_empty((len(seeds),))
    point = draw
    for i, seed in enumerate(seeds):
        with graph.inserting_after(point):
            point = graph.call_function(aten.select.int, (draw, 0, i))
        point.meta["val"] = draw.meta["val"][i]
        seed.replace_all_uses_with(point)
        graph.erase_node(seed)


def _is_seed(node: fx.Node) -> bool:
    """A seed draw of the dropout decomposition, read only as philox_uniform's seed."""
    value = node.meta.get("val")
    return (node.target is aten.randint.low and tuple(node.args[:3]) == (0, SEED_HIGH, [])
            and isinstance(value, torch.Tensor) and value.dtype == torch.int64
            and bool(node.users)
            and all(packet(u) is PHILOX and u.args[0] is node for u in node.users))
