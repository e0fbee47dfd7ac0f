"""Small facts about FX nodes and graphs that several passes need."""

from __future__ import annotations

import operator
from typing import Any, Iterator

import torch
import torch.fx as fx


def op_overload(node: fx.Node) -> torch._ops.OpOverload | None:
    """The ATen overload a node calls, or ``None`` when it calls something else."""
    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        return node.target
    return None


def is_view(node: fx.Node) -> bool:
    """True when the node returns an alias of an input (a view), which launches nothing."""
    overload = op_overload(node)
    if overload is None:
        return False
    returns = overload._schema.returns
    return bool(returns) and all(
        r.alias_info is not None and not r.alias_info.is_write for r in returns
    )


def written_inputs(node: fx.Node) -> list[fx.Node]:
    """The input nodes the node writes into (``copy_``'s first argument, ...)."""
    overload = op_overload(node)
    if overload is None:
        return []
    return [
        value
        for arg, value in zip(overload._schema.arguments, node.args)
        if arg.alias_info is not None and arg.alias_info.is_write and isinstance(value, fx.Node)
    ]


UNDEFINED_CONTENTS = frozenset({"empty", "empty_like", "empty_strided", "new_empty",
                                "new_empty_strided", "empty_permuted"})
"""Factory ops whose result holds no defined values: two calls give two buffers, not one value."""


def is_pure(node: fx.Node) -> bool:
    """True for an ATen call whose result depends only on its arguments: it writes into
    none of them, is not random (``nondeterministic_seeded``) and is not an ``empty``-like
    factory."""
    overload = op_overload(node)
    if overload is None or written_inputs(node):
        return False
    if torch.Tag.nondeterministic_seeded in overload.tags:
        return False
    return overload.overloadpacket.__name__ not in UNDEFINED_CONTENTS


STORAGE_COPYING = frozenset({"slice_scatter", "select_scatter", "diagonal_scatter",
                             "as_strided_scatter", "copy"})
"""Ops whose result is a copy of their first argument's whole storage, at the argument's
storage offset (ATen's ``clone_preserve_strides``), not a tensor of their own."""


def storage_addressed_args(node: fx.Node) -> list[fx.Node]:
    """The arguments a node reads through their storage rather than their elements: the
    first argument of ops that take a ``storage_offset`` or a storage (the ``as_strided``
    family, ``set_``) or that read it (``sym_storage_offset``)."""
    overload = op_overload(node)
    if overload is None:
        return []
    takes_storage = any(
        a.name == "storage_offset" or "Storage" in str(a.type)
        for a in overload._schema.arguments
    )
    if takes_storage or overload.overloadpacket.__name__ in ("sym_storage_offset", "set_"):
        return _first_node_arg(node)
    return []


def storage_dependent_args(node: fx.Node) -> list[fx.Node]:
    """The arguments whose storage, not only their elements, the node's result depends on:
    :func:`storage_addressed_args`, and the first argument of the :data:`STORAGE_COPYING`
    ops. Moved into another storage, such an argument would give another result (other
    memory read, or a copy of the other storage)."""
    overload = op_overload(node)
    if overload is not None and overload.overloadpacket.__name__ in STORAGE_COPYING:
        return _first_node_arg(node)
    return storage_addressed_args(node)


def _first_node_arg(node: fx.Node) -> list[fx.Node]:
    first = node.args[0] if node.args else None
    return [first] if isinstance(first, fx.Node) else []


def is_mutating(node: fx.Node) -> bool:
    """True when the node writes into one of its arguments (``copy_``, ``add_``, ...)."""
    return bool(written_inputs(node))


def alias_base(node: fx.Node) -> fx.Node:
    """The node whose memory ``node`` aliases (through views and getitem)."""
    while (is_view(node) or node.target is operator.getitem) and node.args:
        first = node.args[0]
        if not isinstance(first, fx.Node):
            break
        node = first
    return node


def launches_kernel(node: fx.Node) -> bool:
    """True when running the node does device work: not a view, a getitem or shape math."""
    if node.op != "call_function":
        return False
    if node.target is operator.getitem or is_view(node):
        return False
    if not isinstance(node.meta.get("val"), (torch.Tensor, list, tuple)):
        return False  # shape arithmetic on SymInts, asserts, ...
    return True


def has_symbolic_shapes(gm: fx.GraphModule) -> bool:
    """True when any node's shape depends on a symbolic size (dynamic shapes)."""
    for node in gm.graph.nodes:
        value = node.meta.get("val")
        if isinstance(value, torch.SymInt):
            return True
        if isinstance(value, torch.Tensor) and any(
            isinstance(s, torch.SymInt) for s in (*value.shape, *value.stride())
        ):
            return True
    return False


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` with its own graph (node metadata is copied shallowly)."""
    graph = fx.Graph()
    graph._codegen = gm.graph._codegen
    output = graph.graph_copy(gm.graph, {})
    graph.output(output)
    copied = fx.GraphModule(gm, graph)
    return copied


def iter_tensors(values: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a (possibly nested) list/tuple of values."""
    if isinstance(values, torch.Tensor):
        yield values
    elif isinstance(values, (list, tuple)):
        for value in values:
            yield from iter_tensors(value)


COLLECTIVE_NAMESPACES = frozenset({"_c10d_functional", "c10d_functional",
                                   "_c10d_functional_autograd", "c10d", "_dtensor"})
"""Op namespaces of torch.distributed's collectives (and their waits) in traced graphs."""


def is_collective(node: fx.Node) -> bool:
    """True for a collective or its wait (``_c10d_functional.all_reduce``, ``wait_tensor``)."""
    overload = op_overload(node)
    return overload is not None and overload.namespace in COLLECTIVE_NAMESPACES
