"""Common-subexpression elimination on ATen graphs (the cse stage).

Two nodes that call the same pure ATen op on the same arguments compute the same value, so
the later one is dropped and its users read the first. GPT-2 is the case that needs it:
every layer rebuilds the same attention mask (``scalar_tensor(0.0)``, ``scalar_tensor(-inf)``,
``where``), three kernels per layer for one value.

A node is merged only when all of this holds:

* it calls an ATen ``OpOverload`` that writes into none of its arguments;
* the op is not random (``nondeterministic_seeded``) and is not a factory whose contents
  are undefined (``empty``-like: two of them are two buffers, not one value);
* nothing in the graph writes into its result (or an alias of it): a later in-place write
  into one copy must not show up in the other;
* its arguments are the same values: a write into an argument (``copy_`` into a buffer,
  say) between the two nodes makes them different, so every argument's key carries the
  number of writes into its memory seen so far.
"""

from __future__ import annotations

from typing import Any, Hashable, Optional

import torch.fx as fx

from ..graph_utils import alias_base, is_pure, written_inputs


def _mergeable(node: fx.Node, written: set[fx.Node]) -> bool:
    return is_pure(node) and alias_base(node) not in written


def _key(value: Any, canonical: dict[fx.Node, fx.Node], writes: dict[fx.Node, int]
         ) -> Optional[Hashable]:
    """A hashable stand-in for an argument, or None when it has none."""
    if isinstance(value, fx.Node):
        node = canonical.get(value, value)
        return ("node", node, writes.get(alias_base(node), 0))
    if isinstance(value, (list, tuple)):
        parts = [_key(v, canonical, writes) for v in value]
        return None if any(p is None for p in parts) else (type(value).__name__, tuple(parts))
    if isinstance(value, float):
        return ("float", repr(value))  # keeps -0.0 apart from 0.0, and nan equal to nan
    try:
        hash(value)
    except TypeError:
        return None
    return (type(value).__name__, value)


def eliminate_common_subexpressions(gm: fx.GraphModule) -> int:
    """Merge duplicate pure ATen nodes of ``gm`` in place; returns how many were removed.

    Before::

        a = aten.scalar_tensor(0.0); b = aten.scalar_tensor(0.0)
        w1 = aten.where(m, a, x); w2 = aten.where(m, b, x); return (w1, w2)

    After::

        a = aten.scalar_tensor(0.0); w1 = aten.where(m, a, x); return (w1, w1)
    """
    graph = gm.graph
    written = {alias_base(target) for node in graph.nodes for target in written_inputs(node)}
    writes: dict[fx.Node, int] = {}
    canonical: dict[fx.Node, fx.Node] = {}
    seen: dict[Hashable, fx.Node] = {}
    for node in list(graph.nodes):
        for target in written_inputs(node):
            base = alias_base(canonical.get(target, target))
            writes[base] = writes.get(base, 0) + 1
        if not _mergeable(node, written):
            continue
        key = _key((node.target, node.args, tuple(sorted(node.kwargs.items()))), canonical, writes)
        if key is None:
            continue
        first = seen.setdefault(key, node)
        if first is not node:
            canonical[node] = first
            node.replace_all_uses_with(first)
    for node in reversed(list(canonical)):
        graph.erase_node(node)
    return len(canonical)
