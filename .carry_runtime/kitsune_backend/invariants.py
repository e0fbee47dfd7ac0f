"""The invariants of kitsune's IR, checked after every pass when ``debug=True``.

The IR is an FX graph of ATen ops (plus, after fusion, generated kernels). After every pass:

1. ``graph.lint()`` passes: topological order, one output node, valid targets;
2. every node except the output carries ``meta["val"]`` (a fake tensor, a tuple of them,
   or a SymInt/None for shape math and side effects): later passes read shapes from it;
3. no dangling edges: every input of a node and every user of a node is in the graph;
4. the placeholders are exactly the ones the graph started with, in order: the runtime
   binds inputs by position.
"""

from __future__ import annotations

import torch.fx as fx

from .errors import KitsuneInvariantError

# Targets that legitimately produce no value worth describing.
_NO_VALUE_OK = ("_assert", "assert", "print", "record_stream")


def check_graph(gm: fx.GraphModule, placeholders: list[str], after: str) -> None:
    """Raise :class:`KitsuneInvariantError` naming the pass ``after`` that broke ``gm``."""
    try:
        gm.graph.lint()
    except Exception as exc:
        raise KitsuneInvariantError(f"after {after}: graph lint failed: {exc}") from exc
    nodes = set(gm.graph.nodes)
    for node in gm.graph.nodes:
        if node.op not in ("output",) and "val" not in node.meta:
            target = getattr(node.target, "__name__", str(node.target))
            if not any(tag in target for tag in _NO_VALUE_OK):
                raise KitsuneInvariantError(
                    f"after {after}: node {node.name} ({target}) has no meta['val']"
                )
        for other in (*node.all_input_nodes, *node.users):
            if other not in nodes:
                raise KitsuneInvariantError(
                    f"after {after}: node {node.name} is linked to {other.name}, "
                    "which is not in the graph"
                )
    now = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if now != placeholders:
        raise KitsuneInvariantError(
            f"after {after}: placeholders changed from {placeholders} to {now}"
        )
