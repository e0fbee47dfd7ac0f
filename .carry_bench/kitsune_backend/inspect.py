"""Look at what kitsune did: per compiled graph, every stage's graph, passes, declines, stats."""

from __future__ import annotations

from .record import CompileRecord
from .session import HISTORY, CompileSession, clear_history

__all__ = ["last_compile", "history", "explain", "clear_history"]


def last_compile() -> CompileSession:
    """The most recent compile session (one per graph Dynamo handed to kitsune)."""
    if not HISTORY:
        raise LookupError("kitsune has compiled nothing yet in this process")
    return HISTORY[-1]


def history() -> list[CompileSession]:
    """Every remembered compile session, oldest first."""
    return list(HISTORY)


def explain(session: CompileSession | None = None) -> str:
    """A readable summary of one session (default: the last): passes, stats, declines."""
    session = session or last_compile()
    lines = [f"kitsune compile #{session.id}"]
    for record in session.records:
        lines.extend(_explain_record(record))
    return "\n".join(lines)


def _explain_record(record: CompileRecord) -> list[str]:
    stats = record.stats
    lines = [
        f"  graph {record.name}: {stats['nodes_in']} nodes in, {stats['nodes_out']} out, "
        f"{stats['kernels']} kernels, {stats['fused_regions']} fused regions, "
        f"{stats['streams_used']} stream(s), {stats['bytes_planned']} bytes planned, "
        f"compiled in {record.compile_seconds * 1e3:.1f} ms"
    ]
    if record.fallback_reason:
        lines.append(f"    FELL BACK to the ATen graph: {record.fallback_reason}")
    for p in record.passes:
        notes = "; ".join(p.notes)
        lines.append(f"    {p.name:<14} {p.seconds * 1e3:7.2f} ms  {notes}")
    for decline in record.declines:
        lines.append(f"    no: {decline}")
    return lines
