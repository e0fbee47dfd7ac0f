"""The compile record: what every stage of one compiled graph produced, kept for inspection.

Users (through :mod:`kitsune_backend.inspection`), the debug dump and the tests all read
these same objects. A record holds snapshots, not live graphs: a snapshot is the readable
code of the graph plus one :class:`NodeSnapshot` per node, cheap to keep and enough to draw.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
import torch.fx as fx

from .graph_utils import launches_kernel
from .ir import META_KEYS, Decline, KernelRecord


@dataclasses.dataclass(frozen=True)
class NodeSnapshot:
    """One FX node as it stood after a pass: enough to print, diff and draw the graph."""

    name: str
    op: str
    target: str
    inputs: tuple[str, ...]
    shape: Optional[tuple[Any, ...]]
    dtype: Optional[str]
    extra: dict[str, Any]
    stride: Optional[tuple[Any, ...]] = None
    """The strides of a tensor value (``None`` for anything else)."""
    device: Optional[str] = None
    """The device of a tensor value, as a string (``"cpu"``, ``"cuda:0"``)."""
    value: Any = None
    """A plain number the node produces (an ``int``/``float``/``bool``; for a symbolic size
    its current hint), else ``None``: what a repro feeds a scalar input."""


@dataclasses.dataclass
class PassRecord:
    """One stage (or plugin pass) run: its stage and phase, how long it took, what it said,
    and the graph after it."""

    stage: str
    name: str
    seconds: float
    changed: bool
    notes: list[str]
    declines: list[Decline]
    stats: dict[str, Any]
    graph_code: str
    nodes: list[NodeSnapshot]
    phase: str = "graph"


@dataclasses.dataclass
class CompileRecord:
    """Everything kitsune did to one graph (a forward, a backward, or an inference graph)."""

    name: str
    config: Any
    input_code: str = ""
    input_nodes: list[NodeSnapshot] = dataclasses.field(default_factory=list)
    passes: list[PassRecord] = dataclasses.field(default_factory=list)
    kernels: list[KernelRecord] = dataclasses.field(default_factory=list)
    other_declines: list[Decline] = dataclasses.field(default_factory=list)  # plugins, runtime
    runtime_info: dict[str, Any] = dataclasses.field(default_factory=dict)  # live, per call
    fallback_reason: str = ""
    fallback_traceback: str = ""
    compile_seconds: float = 0.0
    repro_source: str = ""

    @property
    def declines(self) -> list[Decline]:
        """Every "no": from the passes, then from plugins and the runtime, then kernels
        that did not compile at their first launch."""
        found = [d for p in self.passes for d in p.declines]
        broken = [
            Decline("kernel", f"{k.name} did not compile, its region runs as ATen ops: "
                    f"{k.compile_error}", k.nodes[0] if k.nodes else "")
            for k in self.kernels if k.compile_error
        ]
        return found + list(self.other_declines) + broken

    def summary(self) -> str:
        """One line: what the graph became and how long its compile took."""
        stats = self.stats
        return (f"graph {self.name}: {stats['nodes_in']} nodes in, {stats['nodes_out']} out, "
                f"{stats['kernels']} kernels, {stats['fused_regions']} fused regions, "
                f"{stats['streams_used']} stream(s), {stats['bytes_planned']} bytes planned, "
                f"compiled in {self.compile_seconds * 1e3:.1f} ms"
                + (f"; FELL BACK to the ATen graph: {self.fallback_reason}"
                   if self.fallback_reason else ""))

    @property
    def stages(self) -> list[str]:
        """The names of the passes that ran, in order (plugin passes by their own name)."""
        return [p.name for p in self.passes]

    def graph_after(self, pass_name: str) -> str:
        """The readable code of the graph after the named pass (``"input"`` for before all)."""
        return self.input_code if pass_name == "input" else self._pass(pass_name).graph_code

    def nodes_after(self, pass_name: str) -> list[NodeSnapshot]:
        """The node snapshots after the named pass (``"input"`` for before all)."""
        return self.input_nodes if pass_name == "input" else self._pass(pass_name).nodes

    def _pass(self, name: str) -> PassRecord:
        for p in self.passes:
            if p.name == name:
                return p
        raise KeyError(f"no pass named {name!r} ran; passes: {self.stages}")

    @property
    def stats(self) -> dict[str, Any]:
        """Summary numbers: nodes in and out, kernels, regions, streams, bytes planned."""
        merged: dict[str, Any] = {}
        for p in self.passes:
            merged.update(p.stats)
        final = self.passes[-1].nodes if self.passes else self.input_nodes
        merged["nodes_in"] = len(self.input_nodes)
        merged["nodes_out"] = len(final)
        merged.setdefault("kernels", sum(1 for n in final if n.extra.get("launches")))
        merged.setdefault("fused_regions", len(self.kernels))
        merged.setdefault("streams_used", 1)
        merged.setdefault("bytes_planned", 0)
        merged["fallback"] = bool(self.fallback_reason)
        merged["compile_seconds"] = round(self.compile_seconds, 4)
        merged.update(self.runtime_info)
        return merged


def _describe_target(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, str):
        return target
    return getattr(target, "__name__", None) or str(target)


def _shape_and_dtype(value: Any) -> tuple[Optional[tuple[Any, ...]], Optional[str]]:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), str(value.dtype).replace("torch.", "")
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return tuple(tuple(v.shape) for v in value if isinstance(v, torch.Tensor)), "tuple"
    return None, None


def _layout_and_value(value: Any) -> tuple[Optional[tuple[Any, ...]], Optional[str], Any]:
    if isinstance(value, torch.Tensor):
        stride = tuple(value.stride()) if value.layout == torch.strided else None
        return stride, str(value.device), None
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return None, None, getattr(value.node, "hint", None)
    if isinstance(value, (bool, int, float)):
        return None, None, value
    return None, None, None


def snapshot(gm: fx.GraphModule) -> tuple[str, list[NodeSnapshot]]:
    """The readable code and node snapshots of ``gm`` as it stands now."""
    nodes = []
    for node in gm.graph.nodes:
        shape, dtype = _shape_and_dtype(node.meta.get("val"))
        extra = {key: node.meta[key] for key in META_KEYS if key in node.meta}
        extra["launches"] = launches_kernel(node)
        stride, device, plain = _layout_and_value(node.meta.get("val"))
        nodes.append(
            NodeSnapshot(
                name=node.name,
                op=node.op,
                target=_describe_target(node),
                inputs=tuple(n.name for n in node.all_input_nodes),
                shape=shape,
                dtype=dtype,
                extra=extra,
                stride=stride,
                device=device,
                value=plain,
            )
        )
    code = gm.print_readable(print_output=False, include_stride=True, include_device=True)
    return code, nodes
