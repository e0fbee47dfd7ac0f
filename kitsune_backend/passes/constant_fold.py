"""Constant folding (the constant_fold stage): values that depend on no input are computed
once, at compile time, and read from a buffer.

GPT-2 is the case that needs it: its attention mask is built from ``arange``s on every call
(position ids, a ``cat``, a ``cumsum``, gathers, comparisons, a ``where``): six kernels for
a value that never changes. Folded, the mask is one constant the attention reads.

A node is folded when all of this holds:

* it is a pure ATen call (:func:`kitsune_backend.graph_utils.is_pure`: no writes into its
  arguments, not random, not ``empty``-like) with a single tensor result, and every input
  node is folded too (so the chain starts at factories such as ``arange`` and ``full``);
* its result has at most :data:`FOLD_MAX_ELEMENTS` elements (a constant costs memory for
  the life of the compiled graph, and its compile-time computation must stay quick);
* nothing writes into its memory, and no graph output is (a view of) it: the caller may
  change an output in place, and the next call must not see that.

Only the values something unfolded reads are kept, and only at non-view nodes (a view of a
folded value stays a view node of the buffer, with its strides). A bare factory or a
reshape of one (``arange``, ``full``) is never replaced: fusion computes those inside the
kernels that read them, which is cheaper than a load.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import unset_fake_temporarily

from ..codegen import index_sources
from ..graph_utils import alias_base, is_pure, is_view, written_inputs

FOLD_MAX_ELEMENTS = 1 << 18
"""Largest value (in elements) folded into a constant: 1 MiB of fp32."""

ATTR_PREFIX = "_kitsune_constant_"


def fold_constants(gm: fx.GraphModule) -> int:
    """Replace each input-independent value of ``gm`` that an input-dependent node reads by
    a ``get_attr`` of a buffer computed now; returns how many buffers were made.

    Before::

        a = aten.arange(8); p = aten.add(a, 1); c = aten.cumsum(p, 0)
        y = aten.mul(x, c); return y

    After::

        _kitsune_constant_0 = self._kitsune_constant_0   # [1, 3, 6, ..., 36]
        y = aten.mul(x, _kitsune_constant_0); return y
    """
    values = _fold_values(gm)
    kept = _kept(gm, values)
    names = (f"{ATTR_PREFIX}{i}" for i in itertools.count())
    for node in kept:
        name = next(n for n in names if not hasattr(gm, n))
        gm.register_buffer(name, values[node])
        with gm.graph.inserting_before(node):
            attr = gm.graph.get_attr(name)
        attr.meta = dict(node.meta)
        node.replace_all_uses_with(attr)
    if kept:
        gm.graph.eliminate_dead_code()
    return len(kept)


def _fold_values(gm: fx.GraphModule) -> dict[fx.Node, torch.Tensor]:
    """The compile-time value of every foldable node, in graph order."""
    protected = _protected(gm)
    values: dict[fx.Node, torch.Tensor] = {}
    with unset_fake_temporarily(), torch.no_grad():
        for node in gm.graph.nodes:
            if node in protected or not _foldable(node, values):
                continue
            try:
                value = node.target(*_real(node.args, values), **_real(node.kwargs, values))
            except Exception:  # an op that cannot run here simply stays in the graph
                continue
            if isinstance(value, torch.Tensor):
                values[node] = value
    return values


def _foldable(node: fx.Node, values: dict) -> bool:
    expected = node.meta.get("val")
    return (is_pure(node) and isinstance(expected, torch.Tensor)
            and expected.numel() <= FOLD_MAX_ELEMENTS
            and all(arg in values for arg in node.all_input_nodes))


def _protected(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose memory an output aliases or a write changes (never folded)."""
    bases = {alias_base(t) for node in gm.graph.nodes for t in written_inputs(node)}
    for node in gm.graph.nodes:
        if node.op == "output":
            bases |= {alias_base(a) for a in node.all_input_nodes}
    return {n for n in gm.graph.nodes if alias_base(n) in bases}


def _kept(gm: fx.GraphModule, values: dict[fx.Node, torch.Tensor]) -> list[fx.Node]:
    """Folded non-view nodes some unfolded node reads (directly or through views)."""
    kept: list[fx.Node] = []
    for node in values:
        if any(user not in values for user in node.users):
            base = node
            while is_view(base) and base.args[0] in values:
                base = base.args[0]
            if base not in kept and not index_sources.inlinable(base):
                kept.append(base)
    return kept


def _real(value: Any, values: dict[fx.Node, torch.Tensor]) -> Any:
    if isinstance(value, fx.Node):
        return values[value]
    if isinstance(value, (list, tuple)):
        return type(value)(_real(v, values) for v in value)
    if isinstance(value, dict):
        return {k: _real(v, values) for k, v in value.items()}
    return value
