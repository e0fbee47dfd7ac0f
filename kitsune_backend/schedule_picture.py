"""The measured kernel schedule of one call, as text and as a picture.

Input: kernel spans as :func:`kitsune_backend.timing.kernel_spans` returns them (``name``,
``stream``, ``start_us``, ``dur_us``, times as the profiler measured them). Each span goes on
a row: one row per CUDA stream, in the order the streams first ran a kernel; where kernels
the profiler reports on one stream overlap in time (kernels replayed from a CUDA graph can
be reported on the stream that launched the graph), the stream gets more rows ("lanes"), so
that every bar shows time a kernel really ran beside the others.
"""

from __future__ import annotations

from typing import Any

LABEL_CHARS = 28


def rows(spans: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """``(label, spans)`` per row: each stream's spans, split greedily into lanes where they
    overlap (a span goes to the first lane whose last span has ended)."""
    lanes: dict[Any, list[list[dict[str, Any]]]] = {}
    for span in sorted(spans, key=lambda s: s["start_us"]):
        stream_lanes = lanes.setdefault(span["stream"], [])
        for lane in stream_lanes:
            last = lane[-1]
            if last["start_us"] + last["dur_us"] <= span["start_us"]:
                lane.append(span)
                break
        else:
            stream_lanes.append([span])
    labelled = []
    for stream, stream_lanes in lanes.items():
        for index, lane in enumerate(stream_lanes):
            suffix = f", lane {index + 1}" if len(stream_lanes) > 1 else ""
            labelled.append((f"stream {stream}{suffix}", lane))
    return labelled


def summary(spans: list[dict[str, Any]]) -> str:
    """One line: kernels, streams, time end to end, and kernel time summed."""
    streams = len({s["stream"] for s in spans})
    end = max(s["start_us"] + s["dur_us"] for s in spans)
    busy = sum(s["dur_us"] for s in spans)
    return (f"{len(spans)} kernels on {streams} stream(s): {end:.1f} us end to end, "
            f"{busy:.1f} us of kernel time")


def schedule_text(spans: list[dict[str, Any]]) -> str:
    """The schedule as text: the summary, then each row's kernels with start and duration."""
    if not spans:
        return "no device kernels were measured"
    lines = [summary(spans)]
    for label, row in rows(spans):
        lines.append(f"{label}:")
        lines.extend(f"  {s['start_us']:10.1f} us  {s['dur_us']:8.1f} us  {s['name']}"
                     for s in row)
    return "\n".join(lines)


def draw_schedule(spans: list[dict[str, Any]], path: str, title: str = "") -> bool:
    """Draw one bar per kernel on its row into the PNG ``path``: generated kernels
    (``kitsune...``) green and labelled, library kernels grey. False when matplotlib is not
    installed (nothing drawn)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labelled = rows(spans)
    end = max(s["start_us"] + s["dur_us"] for s in spans)
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.6 * len(labelled)))
    for row, (_, row_spans) in enumerate(labelled):
        for s in row_spans:
            generated = s["name"].startswith("kitsune")
            ax.barh(row, s["dur_us"], left=s["start_us"], height=0.6, edgecolor="black",
                    linewidth=0.3, color="tab:green" if generated else "tab:gray")
            if generated and s["dur_us"] > 0.04 * end:
                ax.text(s["start_us"] + s["dur_us"] / 2, row, s["name"][:LABEL_CHARS],
                        ha="center", va="center", fontsize=6)
    ax.set_yticks(range(len(labelled)), [label for label, _ in labelled])
    ax.invert_yaxis()
    ax.set_xlabel("microseconds from the first kernel (measured by the profiler)")
    ax.set_title(title or summary(spans))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True
