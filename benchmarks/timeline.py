"""``python -m benchmarks timeline TRACE --out PNG``: the measured schedule of one call.

Draws the device kernels of a Chrome trace (``run --trace`` keeps one kitsune iteration of
the branchy model; any ``torch.profiler`` export will do) as bars on one row per CUDA
stream, at the start and for the duration the profiler measured
(:func:`kitsune_backend.timing.kernel_spans`): where streams overlap, and where the device
waits. Generated kernels (``kitsune_...``) are green and labelled; library kernels are grey.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .charts import MISSING_MATPLOTLIB

LABEL_CHARS = 28


def add_parser(sub: Any) -> None:
    """The ``timeline`` subcommand's arguments."""
    parser = sub.add_parser("timeline", help="draw the measured per-stream kernel schedule "
                                             "of a Chrome trace")
    parser.add_argument("trace", help="a Chrome trace JSON (torch.profiler export)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", default="", help="the picture's title")


def cmd_timeline(args: argparse.Namespace) -> int:
    """Draw it; exit 1 without matplotlib or without device kernels in the trace."""
    from kitsune_backend.timing import kernel_spans

    with open(args.trace) as f:
        data = json.load(f)
    spans = kernel_spans(data.get("traceEvents", []) if isinstance(data, dict) else data)
    if not spans:
        print(f"timeline: no device kernels in {args.trace}", file=sys.stderr)
        return 1
    return 0 if draw_timeline(spans, args.out, args.title) else 1


def draw_timeline(spans: list[dict], path: str, title: str = "") -> bool:
    """One row per stream (in the order streams first ran a kernel), a bar per kernel."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(MISSING_MATPLOTLIB, file=sys.stderr)
        return False
    streams = list(dict.fromkeys(s["stream"] for s in spans))
    end = max(s["start_us"] + s["dur_us"] for s in spans)
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.6 * len(streams)))
    for s in spans:
        row = streams.index(s["stream"])
        generated = s["name"].startswith("kitsune")
        ax.barh(row, s["dur_us"], left=s["start_us"], height=0.6, edgecolor="black",
                linewidth=0.3, color="tab:green" if generated else "tab:gray")
        if generated and s["dur_us"] > 0.04 * end:
            ax.text(s["start_us"] + s["dur_us"] / 2, row, s["name"][:LABEL_CHARS],
                    ha="center", va="center", fontsize=6)
    ax.set_yticks(range(len(streams)), [f"stream {s}" for s in streams])
    ax.invert_yaxis()
    ax.set_xlabel("microseconds from the first kernel (measured by the profiler)")
    busy = sum(s["dur_us"] for s in spans)
    ax.set_title(title or f"{len(spans)} kernels on {len(streams)} stream(s): "
                          f"{end:.0f} us end to end, {busy:.0f} us of kernel time")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True
