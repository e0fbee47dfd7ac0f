"""Draw a recorded graph: a networkx ``DiGraph`` from node snapshots, Graphviz DOT text
written here (no pydot needed), and SVG through the ``dot`` program when it is installed.

A node's box shows its name, its target and its ``dtype[shape]``. Nodes of one fused region
sit in one dashed cluster; a kernel's fill colour is its stream; an edge the streams pass
turned into an event wait is drawn red and dashed.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Iterable, Union

import networkx as nx

from .errors import KitsuneError
from .record import NodeSnapshot

# Fill colours: one per stream (cycled), and fixed ones for what launches nothing.
_STREAM_COLOURS = ("#9ecae1", "#fdae6b", "#a1d99b", "#bcbddc", "#fc9272", "#c7e9c0",
                   "#fdd0a2", "#dadaeb")
_OP_COLOURS = {"placeholder": "#ffffcc", "output": "#d9d9d9", "get_attr": "#ffffcc"}


class GraphvizNotFoundError(KitsuneError, FileNotFoundError):
    """SVG was asked for but Graphviz's ``dot`` program is not on ``PATH``."""


def to_networkx(nodes: Iterable[NodeSnapshot]) -> nx.DiGraph:
    """A ``DiGraph`` with one vertex per snapshot (attribute ``snapshot``) and an edge from
    every input to its user (attribute ``event``: the user waits for it on another stream)."""
    graph = nx.DiGraph()
    nodes = list(nodes)
    for node in nodes:
        graph.add_node(node.name, snapshot=node)
    for node in nodes:
        waits = set(node.extra.get("kitsune_wait") or ())
        for source in node.inputs:
            graph.add_edge(source, node.name, event=source in waits)
    return graph


def to_dot(graph: Union[nx.DiGraph, Iterable[NodeSnapshot]], title: str = "") -> str:
    """Graphviz DOT text for a graph from :func:`to_networkx` (or the snapshots themselves)."""
    if not isinstance(graph, nx.DiGraph):
        graph = to_networkx(graph)
    lines = [f"digraph {_quote(title or 'kitsune')} {{"]
    if title:
        lines.append(f"  label={_quote(title)}; labelloc=t;")
    lines.append('  node [shape=box, style=filled, fontname="monospace", fontsize=10];')
    clusters: dict[str, list[str]] = {}
    for name, data in graph.nodes(data=True):
        snap = data.get("snapshot")
        if snap is None:  # an input named by an edge but not snapshotted
            lines.append(f"  {_quote(name)};")
            continue
        lines.append(f"  {_quote(name)} [{_node_attributes(snap)}];")
        region = snap.extra.get("kitsune_region")
        if region:
            clusters.setdefault(str(region), []).append(name)
    for index, (region, members) in enumerate(clusters.items()):
        lines.append(f"  subgraph cluster_{index} {{")
        lines.append(f"    label={_quote(region)}; style=dashed;")
        lines.extend(f"    {_quote(member)};" for member in members)
        lines.append("  }")
    for source, target, data in graph.edges(data=True):
        style = ' [color="#d62728", style=dashed, label="event"]' if data.get("event") else ""
        lines.append(f"  {_quote(source)} -> {_quote(target)}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_svg(dot_source: str, timeout: float = 60.0) -> str:
    """Render DOT text to SVG with Graphviz's ``dot``; :class:`GraphvizNotFoundError` when
    ``dot`` is not installed, :class:`KitsuneError` when it fails."""
    program = shutil.which("dot")
    if program is None:
        raise GraphvizNotFoundError(
            "SVG needs Graphviz's 'dot' program, which is not on PATH; install Graphviz "
            "(e.g. 'apt install graphviz' or 'conda install graphviz'), or write the DOT "
            "text from to_dot() and render it elsewhere"
        )
    done = subprocess.run(
        [program, "-Tsvg"], input=dot_source, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise KitsuneError(f"Graphviz 'dot' failed (exit {done.returncode}): {done.stderr}")
    return done.stdout


def describe(node: NodeSnapshot) -> str:
    """``dtype[shape]`` of a node's value (``f32[3, 8]``), or ``""`` when it has none."""
    if node.shape is None:
        return "" if node.value is None else f"= {node.value}"
    if node.dtype == "tuple":
        return "(" + ", ".join(f"[{_dims(s)}]" for s in node.shape) + ")"
    return f"{node.dtype}[{_dims(node.shape)}]"


def _dims(shape: Iterable[object]) -> str:
    return ", ".join(str(s) for s in shape)


def _node_attributes(node: NodeSnapshot) -> str:
    lines = [node.name]
    if node.op not in ("placeholder", "output") and node.target != node.name:
        lines.append(node.target)
    shape = describe(node)
    if shape:
        lines.append(shape)
    stream = node.extra.get("kitsune_stream")
    if stream is not None and node.extra.get("launches"):
        lines.append(f"stream {stream}")
        colour = _STREAM_COLOURS[int(stream) % len(_STREAM_COLOURS)]
    else:
        colour = _OP_COLOURS.get(node.op, "#ffffff")
    label = "\\n".join(_escape(line) for line in lines)
    return f'label="{label}", fillcolor="{colour}"'


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _quote(text: str) -> str:
    return f'"{_escape(text)}"'
