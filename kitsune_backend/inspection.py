"""Look at what kitsune did: per compiled graph, every stage's graph, passes, declines, stats.

A *session* is one graph Dynamo handed to kitsune; it holds one
:class:`~kitsune_backend.record.CompileRecord` per AOT graph (``forward`` and ``backward``
for training, ``inference`` otherwise). A record holds the graph after every pass::

    out = torch.compile(model, backend="kitsune")(x)
    session = kitsune_backend.last_compile()
    print(kitsune_backend.explain(session))          # passes, times, notes, declines, stats
    print(session.forward.graph_after("fusion"))     # readable FX code after one pass
    svg = kitsune_backend.inspection.graph_svg(session.forward, "fusion")
"""

from __future__ import annotations

from typing import Any, Optional, Union

import networkx as nx

from . import dot
from .record import CompileRecord
from .process import PROCESS, clear_history
from .session import CompileSession

__all__ = [
    "clear_history",
    "explain",
    "graph_dot",
    "graph_networkx",
    "graph_svg",
    "graphs",
    "history",
    "last_compile",
]


def last_compile() -> CompileSession:
    """The most recent compile session (one per graph Dynamo handed to kitsune)."""
    sessions = PROCESS.history.sessions()
    if not sessions:
        raise LookupError("kitsune has compiled nothing yet in this process")
    return sessions[-1]


def history() -> list[CompileSession]:
    """Every remembered compile session, oldest first."""
    return PROCESS.history.sessions()


def explain(target: Union[CompileSession, CompileRecord, Any, None] = None) -> str:
    """A readable summary of a session (default: the last) or of one of its records:
    for each graph its summary stats, every stage by phase with its time and notes, and the
    reason behind every decline. Given a step from :func:`kitsune_backend.compile_step`,
    what that step did (its own ``explain()``)."""
    if target is not None and not isinstance(target, (CompileSession, CompileRecord)):
        return target.explain()
    target = target if target is not None else last_compile()
    if isinstance(target, CompileRecord):
        return "\n".join(_explain_record(target))
    lines = [f"kitsune compile #{target.id} (mode {target.mode!r})"]
    for record in target.records:
        lines.extend(_explain_record(record))
    return "\n".join(lines)


def graphs(record: CompileRecord) -> dict[str, str]:
    """The readable code of the graph before all passes (``"input"``) and after each pass,
    keyed by pass name, in the order they ran."""
    found = {"input": record.input_code}
    found.update((p.name, p.graph_code) for p in record.passes)
    return found


def graph_networkx(record: CompileRecord, stage: str = "input") -> nx.DiGraph:
    """The graph after pass ``stage`` (``"input"``: before all) as a networkx ``DiGraph``;
    each vertex carries its :class:`~kitsune_backend.record.NodeSnapshot` as ``snapshot``."""
    return dot.to_networkx(record.nodes_after(stage))


def graph_dot(record: CompileRecord, stage: str = "input") -> str:
    """Graphviz DOT text of the graph after pass ``stage`` (``"input"``: before all)."""
    return dot.to_dot(graph_networkx(record, stage), title=f"{record.name} after {stage}")


def graph_svg(record: CompileRecord, stage: str = "input", path: Optional[str] = None) -> str:
    """SVG of the graph after pass ``stage``, drawn by Graphviz's ``dot`` program (a
    :class:`~kitsune_backend.dot.GraphvizNotFoundError` when it is not installed).
    Returns the SVG text and, given ``path``, also writes it there."""
    svg = dot.to_svg(graph_dot(record, stage))
    if path is not None:
        with open(path, "w") as f:
            f.write(svg)
    return svg


def _explain_record(record: CompileRecord) -> list[str]:
    summary, _, fallback = record.summary().partition("; ")
    lines = [f"  {summary}"]
    if fallback:
        lines.append(f"    {fallback}")
    lines.extend(_memory_lines(record.stats))
    phase = ""
    for p in record.passes:
        if p.phase != phase:
            phase = p.phase
            total = sum(q.seconds for q in record.passes if q.phase == phase)
            lines.append(f"    {phase} phase ({total * 1e3:.1f} ms)")
        where = p.name if p.name == p.stage else f"{p.stage}/{p.name}"
        changed = "changed" if p.changed else "       "
        notes = "; ".join(p.notes)
        lines.append(f"      {where:<26} {p.seconds * 1e3:8.2f} ms  {changed}  {notes}".rstrip())
    lines.extend(_grouped_declines(record))
    return lines


def byte_size(n: int) -> str:
    """``n`` bytes in the largest binary unit it reaches (``"1.5 MiB"``, ``"512 B"``)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _memory_lines(stats: dict) -> list[str]:
    """The memory plan of one graph: its arena, the arena of the same graph on one stream,
    the peak planned (arena, outputs and own-storage intermediates), streams given up to
    the memory budget, and the cuBLAS workspaces of side streams. Nothing when no arena was
    planned."""
    if "bytes_peak_planned" not in stats:
        return []
    line = (f"    memory: arena {byte_size(stats['bytes_planned'])} (single-stream arena "
            f"{byte_size(stats['bytes_single_stream'])}), peak planned "
            f"{byte_size(stats['bytes_peak_planned'])} with outputs")
    if stats.get("branches_kept_back"):
        line += (f"; {stats['streams_wanted']} streams wanted, {stats['streams_used']} used "
                 f"within the memory budget (arena on {stats['streams_wanted']}: "
                 f"{byte_size(stats['bytes_streams_unbudgeted'])})")
    if stats.get("side_stream_workspaces_unbudgeted"):
        line += (f"; side streams running matmuls hold {stats['side_stream_workspaces']} "
                 f"cuBLAS workspace(s) of {byte_size(stats['bytes_cublas_workspace'])} "
                 f"({stats['side_stream_workspaces_unbudgeted']} before the budget)")
    return [line]


def _grouped_declines(record: CompileRecord, shown_nodes: int = 4) -> list[str]:
    """One line per distinct (stage, reason), naming the first few nodes it applies to."""
    groups: dict[tuple[str, str], list[str]] = {}
    for decline in record.declines:
        groups.setdefault((decline.stage, decline.reason), []).append(decline.node)
    lines = []
    for (stage, reason), nodes in groups.items():
        named = [n for n in nodes if n]
        where = ""
        if named:
            more = f", +{len(named) - shown_nodes} more" if len(named) > shown_nodes else ""
            where = f" [{', '.join(named[:shown_nodes])}{more}]"
        lines.append(f"    no: {stage}{where}: {reason}")
    return lines
