"""``python -m benchmarks timeline TRACE --out PNG``: the measured schedule of one call.

Draws the device kernels of a Chrome trace (``run --trace`` keeps one kitsune iteration of
the branchy model; any ``torch.profiler`` export will do) as bars on one row per CUDA
stream, at the start and for the duration the profiler measured
(:func:`kitsune_backend.timing.kernel_spans`, drawn by
:func:`kitsune_backend.schedule_picture.draw_schedule`): where streams overlap, and where the
device waits. Generated kernels (``kitsune_...``) are green and labelled; library kernels are
grey.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .charts import MISSING_MATPLOTLIB


def add_parser(sub: Any) -> None:
    """The ``timeline`` subcommand's arguments."""
    parser = sub.add_parser("timeline", help="draw the measured per-stream kernel schedule "
                                             "of a Chrome trace")
    parser.add_argument("trace", help="a Chrome trace JSON (torch.profiler export)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", default="", help="the picture's title")


def cmd_timeline(args: argparse.Namespace) -> int:
    """Draw it; exit 1 without matplotlib or without device kernels in the trace."""
    from kitsune_backend.schedule_picture import draw_schedule
    from kitsune_backend.timing import kernel_spans

    with open(args.trace) as f:
        data = json.load(f)
    spans = kernel_spans(data.get("traceEvents", []) if isinstance(data, dict) else data)
    if not spans:
        print(f"timeline: no device kernels in {args.trace}", file=sys.stderr)
        return 1
    if not draw_schedule(spans, args.out, args.title):
        print(MISSING_MATPLOTLIB, file=sys.stderr)
        return 1
    return 0
