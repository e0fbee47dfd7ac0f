"""A picture of a compiled graph's schedule: one lane per stream, an arrow per event.

Drawn from the compile record alone (the node snapshots after the last pass carry
``kitsune_stream`` and ``kitsune_wait``), so it works on any record, including one loaded
from a debug dump. Times on the x axis are issue steps, not measured durations: each node
starts after the previous node of its lane and after the nodes it waits for.
"""

from __future__ import annotations

import os
from typing import Any

from kitsune_backend.record import CompileRecord


def schedule_layout(record: CompileRecord) -> list[dict[str, Any]]:
    """One dict per scheduled node: name, target, stream, waits, start and end step."""
    final = record.passes[-1].nodes if record.passes else record.input_nodes
    lane_end: dict[int, int] = {}
    end_of: dict[str, int] = {}
    layout = []
    for node in final:
        if "kitsune_stream" not in node.extra:
            continue
        stream = int(node.extra["kitsune_stream"])
        waits = list(node.extra.get("kitsune_wait", []))
        start = max([lane_end.get(stream, 0)] + [end_of[w] for w in waits if w in end_of])
        end_of[node.name] = lane_end[stream] = start + 1
        layout.append(
            dict(name=node.name, target=node.target, stream=stream, waits=waits,
                 start=start, end=start + 1)
        )
    return layout


def render_schedule(record: CompileRecord, path: str | os.PathLike) -> str:
    """Draw ``record``'s schedule to ``path`` (any format matplotlib writes: .png, .svg, .pdf).

    Returns the path written. Needs matplotlib (``pip install matplotlib``).
    """
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "render_schedule needs matplotlib: pip install matplotlib"
        ) from exc
    layout = schedule_layout(record)
    lanes = max((n["stream"] for n in layout), default=0) + 1
    width = max((n["end"] for n in layout), default=1)
    fig = Figure(figsize=(max(6, width * 0.6), 1.2 + lanes * 0.9))
    ax = fig.add_subplot()
    colors = matplotlib.colormaps["tab10"]
    where = {n["name"]: n for n in layout}
    for n in layout:
        ax.barh(n["stream"], 0.9, left=n["start"], height=0.6, color=colors(n["stream"] % 10))
        label = n["target"].split(".")[0][-14:]
        ax.text(n["start"] + 0.45, n["stream"], label, ha="center", va="center", fontsize=6,
                rotation=90 if width > 12 else 0)
        for w in n["waits"]:
            src = where.get(w)
            if src is not None:
                ax.annotate(
                    "", xy=(n["start"], n["stream"]), xytext=(src["end"] - 0.1, src["stream"]),
                    arrowprops=dict(arrowstyle="->", color="black", lw=0.8),
                )
    ax.set_yticks(range(lanes))
    ax.set_yticklabels([f"stream {s}" + (" (caller)" if s == 0 else "") for s in range(lanes)])
    ax.invert_yaxis()
    ax.set_xlabel("issue step")
    capture = record.stats.get("capture", "")
    ax.set_title(f"{record.name}: {lanes} stream(s); capture: {capture}"[:120], fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    return os.fspath(path)
