"""What a plugin pass left in the graph, checked against what its ops compute.

Every later stage reads shapes, strides and dtypes from ``node.meta["val"]``. A plugin that
changes an op but leaves the old value there (``gelu`` replaced by a ``sum`` that keeps one
column, with the ``(N, 16)`` value still attached) would have kitsune plan memory and
generate kernels for the wrong shape: silently wrong results. So after each plugin pass,
:func:`check_plugin_graph` runs, on fake tensors, every node the plugin added or changed, and
every node downstream whose input's value changed as a result, and compares what it gets
with what the plugin left:

* a node without ``meta["val"]`` gets the derived one (the plugin rules allow that);
* a value that disagrees in shape, stride, dtype or device is a :class:`PluginGraphError`
  naming the node (the pipeline then discards the plugin's change with a decline, or
  raises under ``strict``);
* a node that cannot be run on fake tensors (a generated kernel, an op that writes to its
  input) is trusted if it carries a value, and is an error if it carries none;
* a kernel that stores into a graph input in place (``meta["kitsune_stores_into"]``) has
  no users but is not dead: removing it is an error.

Nodes the plugin left as they were (same target, same arguments, same value) are not run
again, so the cost follows the size of the change, not of the graph.
"""

from __future__ import annotations

import operator
from typing import Any, Optional

import torch
import torch.fx as fx
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode

from .errors import KitsunePluginError
from .ir import META_STORES_INTO


class PluginGraphError(KitsunePluginError):
    """A plugin left a node whose ``meta["val"]`` is missing or wrong."""


def check_plugin_graph(before: fx.GraphModule, after: fx.GraphModule) -> None:
    """Raise :class:`PluginGraphError` at the first node of ``after`` whose value the plugin
    got wrong; fill in values the plugin left out. ``before`` is the graph the plugin was
    given (``after`` is the plugin's copy of it)."""
    old = {n.name: n for n in before.graph.nodes}
    kept = {n.name for n in after.graph.nodes}
    for node in before.graph.nodes:
        if node.meta.get(META_STORES_INTO) and node.name not in kept:
            raise PluginGraphError(
                f"node {node.name} stores into {node.meta[META_STORES_INTO]} in place (it has "
                "no users, yet it is not dead code); the plugin removed it")
    mode = _fake_mode(after)
    changed: set[fx.Node] = set()  # nodes whose value differs from the one before
    values: dict[fx.Node, Any] = {}
    for node in after.graph.nodes:
        if node.op == "output":
            continue
        left = node.meta.get("val")
        previous = old.get(node.name)
        if not _dirty(node, previous, changed):
            values[node] = left
            continue
        derived = _derive(node, values, mode, after)
        if derived is _UNKNOWN:
            if left is None:
                raise PluginGraphError(f"node {node.name} ({_target(node)}) has no "
                                       "meta['val'] and kitsune cannot derive one")
            derived = left
        elif left is None:
            node.meta["val"] = derived
        elif _signature(left) != _signature(derived):
            raise PluginGraphError(
                f"node {node.name} ({_target(node)}): meta['val'] says "
                f"{_describe(left)} but the op gives {_describe(derived)}"
            )
        values[node] = derived
        if previous is None or _signature(previous.meta.get("val")) != _signature(derived):
            changed.add(node)


_UNKNOWN = object()


def _dirty(node: fx.Node, previous: Optional[fx.Node], changed: set[fx.Node]) -> bool:
    """Whether ``node`` must be run again: new, changed by the plugin, or fed a new value."""
    if previous is None:
        return True
    if node.op == "placeholder":
        return False
    if node.target != previous.target or node.meta.get("val") is not previous.meta.get("val"):
        return True
    if _names(node.args) != _names(previous.args) or _names(node.kwargs) != _names(previous.kwargs):
        return True
    return any(i in changed for i in node.all_input_nodes)


def _names(value: Any) -> Any:
    return fx.node.map_arg(value, lambda n: ("node", n.name))


def _derive(node: fx.Node, values: dict[fx.Node, Any], mode: FakeTensorMode,
            gm: fx.GraphModule) -> Any:
    """``node``'s value computed on fake tensors, or ``_UNKNOWN`` where it cannot be."""
    if node.op == "get_attr":
        attr = _attribute(gm, node.target)
        return mode.from_tensor(attr) if isinstance(attr, torch.Tensor) else _UNKNOWN
    if node.op != "call_function" or not _runnable(node.target):
        return _UNKNOWN
    if any(values.get(i) is None for i in node.all_input_nodes):
        return _UNKNOWN
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), values.__getitem__)
    try:
        with mode:
            return node.target(*args, **kwargs)
    except Exception as exc:
        raise PluginGraphError(
            f"node {node.name} ({_target(node)}) fails on its inputs: {type(exc).__name__}: {exc}"
        ) from None


def _runnable(target: Any) -> bool:
    """ATen ops that do not write to their inputs, and ``getitem``."""
    if target is operator.getitem:
        return True
    if isinstance(target, torch._ops.OpOverload):
        return not target._schema.is_mutable
    return False


def _attribute(gm: fx.GraphModule, target: str) -> Any:
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part, None)
    return value


def _fake_mode(gm: fx.GraphModule) -> FakeTensorMode:
    """The fake mode the graph's values were made in (a fresh one if they are real)."""
    vals = [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
    return detect_fake_mode(vals) or FakeTensorMode(allow_non_fake_inputs=True)


def _signature(value: Any) -> Any:
    """What later stages read from a value: per tensor, sizes, strides, dtype, device."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(map(str, value.shape)), tuple(map(str, value.stride())),
                value.dtype, value.device.type)
    if isinstance(value, (tuple, list)):
        return tuple(_signature(v) for v in value)
    return (type(value).__name__, str(value))


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        shape = ", ".join(map(str, value.shape))
        stride = ", ".join(map(str, value.stride()))
        return f"({shape}) {str(value.dtype).replace('torch.', '')} stride ({stride})"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    return repr(value)


def _target(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))

